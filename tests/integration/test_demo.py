# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""`make demo` end to end: scripts/demo.sh into a temporary demo directory."""

from __future__ import annotations

import glob
import io
import json
import os
import pathlib
import shutil
import subprocess
import tarfile
import tempfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine.artifacts import ArtifactReader
from ansible_collections.opskit.runbook.plugins.module_utils._engine.catalog import list_backups
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _newest(pattern):
    paths = sorted(glob.glob(pattern), key=os.path.getmtime)
    assert paths, "nothing matches %s" % pattern
    return paths[-1]


@pytest.fixture
def demo_dir():
    """The demo directory, where the PostgreSQL server's user can reach it (its archive_command
    writes the WAL there): pytest's tmp_path is private to root."""
    path = tempfile.mkdtemp(prefix="opskit-demo-")
    os.chmod(path, 0o755)
    yield pathlib.Path(path) / "demo"
    shutil.rmtree(path, ignore_errors=True)


def test_demo_runs_and_reports_measured_rto_rpo(demo_dir, docker_engine):  # docker_engine: the volume part runs
    demo = demo_dir
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env["OPSKIT_DEMO_DIR"] = str(demo)
    proc = subprocess.run([os.path.join(ROOT, "scripts", "demo.sh")], cwd=ROOT, env=env, check=False, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    out = proc.stdout
    assert "DR drill PASSED" in out and "measured RTO" in out and "SKIPPING" not in out

    report = _newest(str(demo / "reports" / "dr_drill-*.json"))
    assert "report: %s.html" % report[:-5] in out
    with open(report) as fh:
        doc = json.load(fh)
    for key in ("rto_seconds", "rpo_seconds"):
        assert isinstance(doc[key], (int, float)) and not isinstance(doc[key], bool) and doc[key] >= 0, key
    assert doc["rto_met"] is True and doc["rpo_met"] is True and doc["status"] == "passed"
    assert doc["targets"] == {"rto": "4h", "rto_seconds": 14400.0, "rpo": "24h", "rpo_seconds": 86400.0}
    kinds = sorted(a["kind"] for a in doc["assets"])
    assert kinds == ["postgres", "postgres-pitr", "volume"]
    # point-in-time recovery: WAL archived by archive_command (archive_timeout 1 s), a base backup
    # by the daily run, and the drill's RPO measured by a marker, restored to its second
    assert "point-in-time recovery: RPO by marker" in out and "restored to that second and verified" in out
    (pitr,) = [a for a in doc["assets"] if a["kind"] == "postgres-pitr"]
    assert pitr["rpo_measured_by"] == "marker" and pitr["rpo_seconds"] == doc["pitr_rpo_seconds"] >= 0
    assert pitr["marker"]["database"] == "shop" and pitr["series"] == "demo-pg-main-physical"
    assert doc["pitr_rpo_met"] is True
    for asset in doc["assets"]:
        assert isinstance(asset["rto_seconds"], float) and isinstance(asset["rpo_seconds"], float)
        assert asset["verification"] == "passed"
    with open(report[:-5] + ".html") as fh:
        html = fh.read()
    assert html.count("<svg") >= 3 and "http" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")

    location = open_location("file://%s/backups" % demo)
    backups = list_backups(location)
    # the database: the drill restored it into a scratch database where the md5 of every order
    # row equals the md5 taken from the source before the backup (recorded in the manifest)
    (db,) = [m for name, items in backups.items() if name == "demo-pg-shop" for m in items[:1]]
    verification = db["verification"]
    assert verification["result"] == "passed"
    queries = {q["name"]: q for q in verification["details"]["queries"]}
    assert queries["orders identical"]["passed"] is True and queries["all orders restored"]["value"] == "5000"
    # the volume: the archive holds exactly the 20 files the demo wrote, byte for byte
    (vol_series,) = [name for name in backups if name.startswith("demo-vol-")]
    manifest = backups[vol_series][0]
    with ArtifactReader(location, manifest) as reader:
        data = reader.read()
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            if member.isfile():
                files[member.name] = tar.extractfile(member).read()
    expected = {"./uploads/file-%02d.txt" % i: ("upload %d\n" % i).encode() * (50 + i) for i in range(20)}
    assert files == expected
    # and it cleaned up: no demo volume left behind
    assert not docker_engine.client.volumes.list(filters={"label": "opskit.demo"})
