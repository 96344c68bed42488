# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The molecule scenario of each role (syntax, converge, idempotence, check, verify), run with
the delegated driver against the harness's real services (`make molecule` runs only these)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid

from harness import free_port, http_get
from roles_fixtures import ROOT, conn

VENV_BIN = os.path.dirname(sys.executable)


def _molecule(scenario, tmp_path, variables):
    vars_file = tmp_path / "molecule-vars.json"
    vars_file.write_text(json.dumps(variables))
    vars_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(PATH=VENV_BIN + os.pathsep + env.get("PATH", ""), OPSKIT_MOLECULE_VARS=str(vars_file),
               OPSKIT_PYTHON=sys.executable, TMPDIR=str(tmp_path / "tmp"), NO_COLOR="1", ANSIBLE_NOCOLOR="1",
               # fresh molecule state per run: with the delegated driver nothing resets "prepared"
               MOLECULE_EPHEMERAL_DIRECTORY=str(tmp_path / "molecule-state"))
    (tmp_path / "tmp").mkdir()
    proc = subprocess.run([os.path.join(VENV_BIN, "molecule"), "test", "-s", scenario], cwd=ROOT, env=env,
                          check=False, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, "molecule test -s %s failed\n%s\n%s" % (scenario, proc.stdout[-6000:], proc.stderr[-6000:])
    out = proc.stdout + proc.stderr
    for step in ("converge", "idempotence", "check", "verify"):
        assert step in out, (step, out[-2000:])
    return out


def _db(pg, rows=200):
    name = "mol_%s" % uuid.uuid4().hex[:8]
    pg.createdb(name)
    pg.psql("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items SELECT generate_series(1, %d);" % rows, db=name)
    return name


def _common(tmp_path, pg, db):
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "app.conf").write_text("port 8080\n")
    (tmp_path / "metrics").mkdir()
    return {
        "opskit_location": "file://%s/backups" % tmp_path,
        "opskit_series_prefix": "m-",
        "opskit_postgres": conn(pg),
        "opskit_databases": [{"name": db, "verify_queries": [{"query": "SELECT count(*) FROM items", "expect": "200"}]}],
        "opskit_directories": [{"name": "conf", "path": str(conf)}],
        "opskit_metrics_dir": str(tmp_path / "metrics"),
        "opskit_retention": {"keep_last": 3},
        "opskit_disk_paths": [str(tmp_path)],
    }


def test_molecule_backup(pg, tmp_path):
    _molecule("backup", tmp_path, _common(tmp_path, pg, _db(pg)))


def test_molecule_restore(pg, tmp_path):
    _molecule("restore", tmp_path, _common(tmp_path, pg, _db(pg)))


def test_molecule_maintenance(pg, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    old, recent = logs / "old.log.1.gz", logs / "recent.log.1.gz"
    old.write_text("x")
    recent.write_text("y")
    past = time.time() - 60 * 86400
    os.utime(old, (past, past))
    db = _db(pg)
    _molecule("maintenance", tmp_path, {
        "opskit_postgres": conn(pg), "opskit_vacuum_databases": [db],
        "opskit_log_cleanup": [{"paths": [str(logs)], "patterns": ["*.gz"], "max_age_days": 30}],
        "opskit_disk_paths": [str(tmp_path)]})
    assert not old.exists() and recent.exists()


def test_molecule_upgrade(pg, docker_engine, tmp_path):
    import rollout_fixtures  # pylint: disable=import-outside-toplevel
    refs = rollout_fixtures.build_images(docker_engine.client.api, tags=("v1", "v2"))
    name = "opskit-mol-%s" % uuid.uuid4().hex[:8]
    port = free_port()
    rollout_fixtures.run_web(docker_engine.client.api, name, refs["v1"], port)
    try:
        variables = _common(tmp_path, pg, _db(pg))
        variables.update(opskit_directories=[], opskit_services=[{
            "name": name, "image": refs["v2"], "timeout": 60, "monitor": 1, "pull": "never",
            "health_checks": [{"type": "http", "url": "http://127.0.0.1:%d/cgi-bin/health" % port,
                               "retries": 20, "interval": 0.5}]}])
        _molecule("upgrade", tmp_path, variables)
        assert http_get("http://127.0.0.1:%d/version" % port)[1] == "v2"
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)
