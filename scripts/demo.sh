#!/usr/bin/env bash
# make demo: on a fresh machine, back up a sample PostgreSQL database (and a Docker volume when
# a Docker Engine can run here), then run a measured DR drill and print RTO, RPO and the report.
#   1. scripts/bootstrap.sh: system packages, .venv, the collection symlink
#   2. scripts/demo.py: embedded PostgreSQL (+ Docker volume), playbooks/daily.yml then
#      playbooks/dr_drill.yml against inventories/local, file:// storage under demo/
# Everything it starts is stopped again. OPSKIT_DEMO_DIR overrides demo/ (the tests use it).
set -euo pipefail
# shellcheck source=scripts/lib.sh
. "$(dirname "$0")/lib.sh"
cd "$ROOT"
echo "demo: preparing the machine (scripts/bootstrap.sh)"
scripts/bootstrap.sh
exec "$VENV/bin/python" scripts/demo.py "$@"
