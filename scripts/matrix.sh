#!/usr/bin/env bash
# make test-matrix: the second version leg, outside `make test`. ansible-test sanity, the unit
# tests and ansible-lint (production profile) on the newest ansible-core for Python 3.12, in a
# virtualenv of its own (.build/matrix/<leg>, rebuilt when the pins below change).
#   OPSKIT_MATRIX_PYTHON   the Python 3.12 interpreter (default: pyenv's 3.12.x)
#   OPSKIT_MATRIX_STAGES   which stages to run (default: "sanity unit lint")
# Extra arguments go to ansible-test sanity (e.g. --test pylint).
# Prints each stage's duration and result, then one line "matrix <leg>: N passed, N failed".
set -uo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT" || exit 1

PY_VERSION=3.12
ANSIBLE_CORE=ansible-core==2.21.5   # the newest release; 2.20 and later need Python 3.12+
ANSIBLE_LINT=ansible-lint==26.10.1  # the newest release (also pinned in tests/requirements.txt)
# Everything else the main leg pins (the unit tests' libraries), but its ansible-core, its
# ansible-lint and molecule (not run here, and tied to the main leg's ansible-core).
UNIT_PINS=$(grep -E '^[A-Za-z]' tests/requirements.txt | grep -vE '^(ansible-core|ansible-lint|molecule)==' | tr '\n' ' ')
STAGES=${OPSKIT_MATRIX_STAGES:-sanity unit lint}

# ------------------------------------------------------------------ Python 3.12
find_python() {
    if [ -n "${OPSKIT_MATRIX_PYTHON:-}" ]; then
        echo "$OPSKIT_MATRIX_PYTHON"
        return
    fi
    local root candidate
    if command -v pyenv >/dev/null 2>&1; then
        root=$(pyenv root)
        # the newest installed 3.12.x; pyenv install needs python.org, which may be unreachable
        candidate=$(find "$root/versions" -maxdepth 1 -name "$PY_VERSION.*" 2>/dev/null | sort -V | tail -n 1)
        if [ -z "$candidate" ]; then
            quiet "pyenv install $PY_VERSION" pyenv install -s "$PY_VERSION"
            candidate=$(find "$root/versions" -maxdepth 1 -name "$PY_VERSION.*" | sort -V | tail -n 1)
        fi
        [ -n "$candidate" ] && { echo "$candidate/bin/python$PY_VERSION"; return; }
    fi
    command -v "python$PY_VERSION" || die "no Python $PY_VERSION: install it (pyenv install $PY_VERSION) or set OPSKIT_MATRIX_PYTHON"
}
PYTHON=$(find_python)
"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' 2>/dev/null ||
    die "$PYTHON is not Python $PY_VERSION"

# ------------------------------------------------------------------ the leg's virtualenv
LEG="py$PY_VERSION-${ANSIBLE_CORE#ansible-core==}"
MVENV="$BUILD/matrix/$LEG"
want=$(printf '%s\n' "$PYTHON" "$ANSIBLE_CORE" "$ANSIBLE_LINT" "$UNIT_PINS" | sha256sum | cut -d' ' -f1)
if [ "$(cat "$MVENV/.pins.sha256" 2>/dev/null || true)" != "$want" ]; then
    echo "matrix: building $MVENV"
    rm -rf "$MVENV"
    quiet "creating $MVENV" "$PYTHON" -m venv "$MVENV"
    quiet "pip install -U pip" "$MVENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
    # shellcheck disable=SC2086  # UNIT_PINS is a list of requirements
    quiet "pip install the $LEG leg" "$MVENV/bin/python" -m pip install -q --disable-pip-version-check \
        "$ANSIBLE_CORE" "$ANSIBLE_LINT" $UNIT_PINS
    echo "$want" >"$MVENV/.pins.sha256"
fi
# read the whole output first: a pipe closed early (head, grep -q) makes ansible fail with EPIPE
version=$("$MVENV/bin/ansible" --version 2>&1 | sed -n 1p)
case "$version" in
    *"core ${ANSIBLE_CORE#ansible-core==}"*) ;;
    *) die "$MVENV does not run $ANSIBLE_CORE ($version)" ;;
esac
[ -f "$BUILD/collections/ansible_collections/opskit/runbook/galaxy.yml" ] || die "run scripts/bootstrap.sh first"

# ------------------------------------------------------------------ stages
passed=0 failed=0
stage() {  # stage <name> <command...>: timed, its output kept in .build/matrix/<leg>-<name>.log
    local name=$1 log="$BUILD/matrix/$LEG-$1.log" t0=$SECONDS rc=0
    shift
    case " $STAGES " in *" $name "*) ;; *) return 0 ;; esac
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -eq 0 ]; then
        passed=$((passed + 1))
        printf 'matrix %s %-7s passed in %ds\n' "$LEG" "$name" $((SECONDS - t0))
    else
        failed=$((failed + 1))
        printf 'matrix %s %-7s FAILED (exit %d) in %ds; last lines of %s:\n' "$LEG" "$name" "$rc" $((SECONDS - t0)) "$log"
        grep -E '^(ERROR|FATAL|FAILED|E  )' "$log" | head -n 40 || true
        tail -n 15 "$log"
    fi
}

export PATH="$MVENV/bin:$PATH"   # ansible-test finds python3.12 here; ansible-lint its ansible
export OPSKIT_VENV="$MVENV"      # scripts/sanity.sh: the leg's ansible-test
stage sanity env OPSKIT_SANITY_PYTHON="$PY_VERSION" "$ROOT/scripts/sanity.sh" "$@"
stage unit "$MVENV/bin/pytest" -p no:cacheprovider -q tests/unit
stage lint env NO_COLOR=1 "$MVENV/bin/ansible-lint" -f pep8 --nocolor roles playbooks molecule inventories
echo "matrix $LEG: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
