#!/usr/bin/env bash
# make test: bootstrap, sanity, unit, integration (and the molecule hook) on a fresh machine.
# Prints each stage's duration, then ONE summary line for the whole run as its last line:
# "N passed, N failed[, N skipped]"; exits non-zero if anything failed.
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

RESULTS="$BUILD/test-results"
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
STAGES="$RESULTS/stages.tsv"
: >"$STAGES"
PYTEST=("$VENV/bin/pytest" -p no:cacheprovider -q)

# Stop a Docker Engine that this run started (scripts/docker-engine.sh keeps its pid file); an
# engine that was already running, or that another session started, is left alone.
dockerd_preexisting=no
[ -f "$BUILD/dockerd.pid" ] && dockerd_preexisting=yes
finish() {
    if [ "$dockerd_preexisting" = no ] && [ -f "$BUILD/dockerd.pid" ]; then
        "$ROOT/scripts/docker-engine.sh" down >/dev/null || true
    fi
}
trap finish EXIT
trap 'echo "interrupted" >&2; exit 130' INT TERM

# run_stage <name> <junit file or dir> <command...>: time the command, record its exit status.
run_stage() {
    local name=$1 junit=$2 start ms rc=0
    shift 2
    echo "=== $name"
    start=$(date +%s%N)
    "$@" || rc=$?
    ms=$((($(date +%s%N) - start) / 1000000))
    printf '%s\t%s\t%d.%03d\t%s\n' "$name" "$rc" $((ms / 1000)) $((ms % 1000)) "$junit" >>"$STAGES"
    return "$rc"
}

sanity_stage() {
    local log="$RESULTS/sanity.log" rc t0=$SECONDS
    # Every log line stamped with the seconds since the stage began: where the time goes.
    SANITY_RESULTS="$RESULTS/sanity" "$ROOT/scripts/sanity.sh" --junit 2>&1 |
        while IFS= read -r line; do printf '%5ds %s\n' "$((SECONDS - t0))" "$line"; done >"$log"
    rc=${PIPESTATUS[0]}
    # The findings, without ansible-test's pip chatter; the whole log stays in $log.
    sed -E 's/^ *[0-9]+s //' "$log" | grep -E '^(ERROR|FATAL|WARNING): ' |
        grep -vE 'Location .* is ignored|Using locale' || true
    [ "$rc" -eq 0 ] || echo "sanity: full log in $log"
    return "$rc"
}

# Integration tests in pytest-xdist workers, one test file per worker at a time (module
# fixtures stay together); each worker starts its own services. The Docker Engine is
# started here, before the workers, so that no worker stops it under another.
integration_stage() {
    "$ROOT/scripts/docker-engine.sh" up >/dev/null && "$ROOT/scripts/docker-engine.sh" image ||
        echo "integration: no Docker Engine; the tests that need it will fail"
    "${PYTEST[@]}" -n "${OPSKIT_TEST_WORKERS:-2}" --dist loadfile tests/integration \
        --junitxml="$RESULTS/integration.xml"
}

summary() {
    "$VENV/bin/python" "$ROOT/scripts/junit_summary.py" "$STAGES"
}

# ------------------------------------------------------------------ stages
main() {
    if ! run_stage bootstrap "" "$ROOT/scripts/bootstrap.sh"; then
        if [ -x "$VENV/bin/python" ]; then summary; else echo "0 passed, 1 failed"; fi
        exit 1
    fi
    run_stage sanity "$RESULTS/sanity" sanity_stage
    run_stage unit "$RESULTS/unit.xml" "${PYTEST[@]}" tests/unit --junitxml="$RESULTS/unit.xml"
    run_stage integration "$RESULTS/integration.xml" integration_stage

    # The molecule scenarios (one per role) run inside the integration stage, from
    # tests/integration/test_roles_molecule.py; `make molecule` runs only those.
    # ------------------------------------------------------------------

    summary
}

# Parsed completely before it runs: editing this file during a run does not break the run.
main "$@"
