#!/usr/bin/env bash
# Prepare a fresh build machine for the tests; idempotent, quiet on success, loud on failure.
#   1. system packages the tests need (docker.io, redis-server, busybox-static, postgresql-15,
#      git, shellcheck, faketime, and the real peers: prometheus/promtool, age, restic,
#      pgbackrest, nginx, chromium + chromium-driver, radosgw + ceph-mon + ceph-osd), installed only
#      when missing
#   2. .venv with tests/requirements.txt (skipped while its sha256 matches the stamp)
#   3. .build/collections/ansible_collections/opskit/runbook -> the checkout
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT"

PG_BIN=${OPSKIT_PG_BIN:-/usr/lib/postgresql/15/bin}

# ------------------------------------------------------------------ system packages
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
[ -x /bin/busybox ] || missing+=(busybox-static)
[ -x "$PG_BIN/initdb" ] || missing+=(postgresql-15)
command -v git >/dev/null 2>&1 || missing+=(git)
command -v shellcheck >/dev/null 2>&1 || missing+=(shellcheck)   # else ansible-test skips that test
command -v faketime >/dev/null 2>&1 || missing+=(faketime)       # fixed clocks for history-based tests
command -v promtool >/dev/null 2>&1 || missing+=(prometheus)     # alert rules tests, a real Prometheus to query
command -v age >/dev/null 2>&1 || missing+=(age)                 # interoperability of client-side encryption
command -v restic >/dev/null 2>&1 || missing+=(restic)           # the peer of volume backups (bench/peers.py)
command -v pgbackrest >/dev/null 2>&1 || missing+=(pgbackrest)   # the peer of physical backups
command -v zstd >/dev/null 2>&1 || missing+=(zstd)               # opskit-wal's zstd where python has no zstandard
command -v nginx >/dev/null 2>&1 || missing+=(nginx-light)       # the reverse proxy of start-first rollouts
command -v chromium >/dev/null 2>&1 || missing+=(chromium)       # the reports, opened in a real browser
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
for ceph in radosgw ceph-mon ceph-osd; do                          # Ceph RGW: the second S3 implementation
    command -v "$ceph" >/dev/null 2>&1 || missing+=("$ceph")        # (tests/integration/ceph_fixtures.py)
done
if [ ${#missing[@]} -gt 0 ]; then
    echo "bootstrap: installing ${missing[*]}"
    # Keep the packages' init scripts from starting daemons (redis on 6379, a "main" cluster,
    # dockerd): the harness starts its own on free ports. Only when no policy is in place.
    policy=""
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        policy=/usr/sbin/policy-rc.d
        as_root sh -c 'printf "#!/bin/sh\nexit 101\n" > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d'
        trap 'as_root rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    quiet "apt-get update" as_root apt-get update -q
    quiet "apt-get install ${missing[*]}" as_root env DEBIAN_FRONTEND=noninteractive \
        apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ -n "$policy" ]; then
        as_root rm -f "$policy"
        trap - EXIT
    fi
fi

# ------------------------------------------------------------------ Python environment
PYTHON=${PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    quiet "creating .venv" "$PYTHON" -m venv "$VENV"
fi
stamp="$VENV/.requirements.sha256"
want=$(sha256sum tests/requirements.txt | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null || true)" != "$want" ]; then
    echo "bootstrap: installing tests/requirements.txt into .venv"
    quiet "pip install -U pip" "$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
    quiet "pip install -r tests/requirements.txt" "$VENV/bin/python" -m pip install -q \
        --disable-pip-version-check -r tests/requirements.txt
    echo "$want" >"$stamp"
fi

# ------------------------------------------------------------------ collection symlink
link="$BUILD/collections/ansible_collections/opskit/runbook"
if [ "$(readlink "$link" 2>/dev/null || true)" != "../../../.." ]; then
    mkdir -p "$(dirname "$link")"
    ln -sfn ../../../.. "$link.tmp.$$"
    mv -T "$link.tmp.$$" "$link"   # atomic replace: other runs may be using the link
fi
[ -f "$link/galaxy.yml" ] || die "$link does not resolve to the collection root"
