# shellcheck shell=bash
# Helpers sourced by the scripts in this directory. Quiet on success, loud on failure.

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BUILD="$ROOT/.build"
# shellcheck disable=SC2034  # used by the scripts that source this file
VENV=${OPSKIT_VENV:-"$ROOT/.venv"}   # scripts/matrix.sh points scripts/sanity.sh at its own
mkdir -p "$BUILD"

die() {
    echo "ERROR: $*" >&2
    exit 1
}

# quiet <description> <command...>: run a command with its output captured; print the output
# only when it fails (then exit 1).
quiet() {
    local what=$1 log rc=0
    shift
    log=$(mktemp "$BUILD/log.XXXXXX")
    "$@" >"$log" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        echo "ERROR: $what failed (exit $rc): $*" >&2
        tail -n 60 "$log" >&2
        rm -f "$log"
        exit 1
    fi
    rm -f "$log"
}

# as_root <command...>: run as root (directly, or through sudo when available).
as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $* (run as root or install sudo)"
    fi
}
