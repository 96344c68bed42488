#!/usr/bin/env bash
# ansible-test sanity on a snapshot of the working tree (tracked + untracked, non-ignored files)
# in .build/sanity/run.*/ansible_collections/opskit/runbook, a git work tree as ansible-test
# wants; one directory per run, so runs in parallel do not collide, removed at the end.
# Extra arguments go to ansible-test (e.g. --test pylint). No ignore entries: fix findings.
# SANITY_RESULTS=<dir>: copy ansible-test's junit files (with --junit) there.
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

PY_VERSION=${OPSKIT_SANITY_PYTHON:-3.11}

# ------------------------------------------------------------------ snapshot
mkdir -p "$BUILD/sanity"
find "$BUILD/sanity" -mindepth 1 -maxdepth 1 -name 'run.*' -mmin +240 -exec rm -rf {} +  # killed runs
RUN=$(mktemp -d "$BUILD/sanity/run.XXXXXX")
trap 'rm -rf "$RUN"' EXIT
DEST="$RUN/ansible_collections/opskit/runbook"
mkdir -p "$DEST"
git ls-files -z -co --exclude-standard |
    while IFS= read -r -d '' f; do
        [ -e "$f" ] || [ -L "$f" ] || continue   # tracked but deleted in the working tree
        printf '%s\0' "$f"
    done | xargs -0 -r cp -P --parents -t "$DEST"
(
    cd "$DEST"
    git init -q
    git add -A
    git -c user.name=sanity -c user.email=sanity@localhost -c commit.gpgsign=false commit -q -m snapshot
)

# ------------------------------------------------------------------ pip bootstrap script
# ansible-test bootstraps pip in its virtual environments with a get-pip script it downloads
# once into ~/.ansible/test/cache. Where that host is unreachable (these build machines,
# air-gapped sites), put a stand-in there: ensurepip, then pip install with the caller's
# arguments, trusting the system CA bundle (ansible-test clears the pip environment).
pip_version=$("$VENV/bin/python" - <<'PY'
import inspect, re
from ansible_test._internal import python_requirements
m = re.search(r"pip='([0-9.]+)'", inspect.getsource(python_requirements.get_venv_packages))
print(m.group(1) if m else "24.2")
PY
)
cache="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
if [ ! -s "$cache" ]; then
    mkdir -p "$(dirname "$cache")"
    url="https://ci-files.testing.ansible.com/ansible-test/get-pip-$pip_version.py"
    if "$VENV/bin/python" - "$url" "$cache.download" <<'PY' 2>/dev/null; then
import sys, urllib.request
with urllib.request.urlopen(sys.argv[1], timeout=15) as r, open(sys.argv[2], "wb") as f:
    f.write(r.read())
PY
        mv "$cache.download" "$cache"
    else
        rm -f "$cache.download"
        ca=${PIP_CERT:-${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}}
        echo "sanity: $url is unreachable; using an ensurepip stand-in ($cache)"
        cat >"$cache" <<PY
# Stand-in for get-pip-$pip_version.py written by opskit.runbook scripts/sanity.sh: the real
# script could not be downloaded. Bootstraps pip with ensurepip, then installs the requested
# packages with the system CA bundle, and makes pip in this environment keep using it.
import ensurepip
import os
import subprocess
import sys
import sysconfig

CA = "$ca"
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
ensurepip.bootstrap()
env = dict(os.environ, PIP_CERT=CA) if os.path.exists(CA) else dict(os.environ)
subprocess.check_call([sys.executable, "-m", "pip", "install"] + args, env=env)
if os.path.exists(CA):
    with open(os.path.join(sysconfig.get_paths()["purelib"], "opskit_pip_cert.pth"), "w") as fh:
        fh.write("import os; os.environ.setdefault('PIP_CERT', %r)\n" % CA)
PY
    fi
fi

# ------------------------------------------------------------------ run
cd "$DEST"
rc=0
"$VENV/bin/ansible-test" sanity --python "$PY_VERSION" --requirements --color no "$@" || rc=$?
if [ -n "${SANITY_RESULTS:-}" ]; then
    mkdir -p "$SANITY_RESULTS"
    cp tests/output/junit/*.xml "$SANITY_RESULTS/" 2>/dev/null || true
fi
exit "$rc"
