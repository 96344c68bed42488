# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volume and directory verification records (issue 21, item 3): the DR drill (the restore
role as dr_drill.yml runs it, through volume_backup state=verified) records its outcome in the manifests of a Docker volume's
and a directory's backups on a real S3 endpoint (moto), as pg_backup does for databases; a
backup whose manifest lies about its files gets a ``failed`` record. The drill report shows the
verified age. An hour later (fixed clocks), s3_rotate with keep_last=1 deletes the older backups
by policy but keeps the newest verified one and the newer one, and the backup role's metric
opskit_backup_last_verified_timestamp_seconds carries the verified backup's creation time."""

from __future__ import annotations

import datetime
import json
import os
import re

from volume_fixtures import dockerthings  # noqa: F401  pylint: disable=unused-import

from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import DirectoryTarget

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 6, 10, 3, 0, 0, tzinfo=UTC)
LATER = T0 + datetime.timedelta(hours=1)


def _seed(location, series, kind, when):
    """An older backup of the series, written through the engine (rotation deletes it)."""
    with BackupSession(location, series, kind, compression="none", now=when) as session:
        with session.artifact("tar", content_type="application/x-tar") as out:
            out.write(b"\0" * 1024)
        return session.publish()["id"]


def _manifest(location, series, backup_id):
    return catalog.read_manifest(location, series, backup_id)


class _Sink:
    def __init__(self):
        self.data = bytearray()

    def write(self, chunk):
        self.data += chunk
        return len(chunk)


def _lying_backup(location, series, path, when):
    """A directory backup whose manifest says one more file than its (intact) archive holds."""
    sink = _Sink()
    stats = DirectoryTarget(str(path)).backup_to(sink)
    stats.pop("warnings", None)
    with BackupSession(location, series, "directory", compression="none", now=when) as session:
        with session.artifact("tar", content_type="application/x-tar") as out:
            out.write(bytes(sink.data))
        return session.publish(source=dict(stats, files=stats["files"] + 1, path=str(path)))["id"]


BACKUP = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/opskit.runbook.storage: "{{ storage }}"
  tasks:
    - name: backup
      opskit.runbook.volume_backup: "{{ item }}"
      loop: "{{ sources }}"
"""

DRILL = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: drill
      ansible.builtin.include_role: {name: opskit.runbook.restore}
      vars: {restore_mode: drill, restore_fail_on_missed_target: false}
    - name: report
      ansible.builtin.include_role: {name: opskit.runbook.report}
      vars:
        report_name: dr_drill
        report_data: {mode: drill, assets: "{{ restore_assets }}", backups: "{{ restore_backups }}"}
"""

ROTATE = BACKUP + """
    - name: rotate
      opskit.runbook.s3_rotate: {keep_last: 1, orphan_grace: 24h}
    - name: info
      opskit.runbook.backup_info: {max_age: 24h}
      register: info
    - name: metrics
      ansible.builtin.include_role: {name: opskit.runbook.backup, tasks_from: metrics}
      vars:
        backup_metrics_dir: "{{ metrics_dir }}"
        backup_rpo: 24h
        backup_written: []
        backup_summary: {series: "{{ info.series }}", missing: []}
"""


def test_a_drill_records_volume_and_directory_verifications_that_rotation_keeps(run_playbook, s3, docker_engine,
                                                                                dockerthings, tmp_path):
    storage = {"location": "s3://%s/dr" % s3.new_bucket(), "endpoint_url": s3.endpoint_url,
               "access_key": s3.access_key, "secret_key": s3.secret_key, "region": s3.region}
    location = open_location(storage["location"], **{k: v for k, v in storage.items() if k != "location"})
    volume = dockerthings.volume("vvol")
    data = dockerthings.mountpoint(volume)
    for name, size in (("a.bin", 3000), ("b.txt", 12)):
        with open(os.path.join(data, name), "wb") as fh:
            fh.write(os.urandom(size))
    src = tmp_path / "etc"
    (src / "sub").mkdir(parents=True)
    (src / "app.conf").write_text("listen 8080\n")
    (src / "sub" / "key").write_bytes(os.urandom(100))
    series = {"vol": "vver-" + volume, "dir": "vver-dir", "liar": "vver-liar"}
    seeded = {k: [_seed(location, series[k], kind, T0 - datetime.timedelta(days=d)) for d in (2, 1)]
              for k, kind in (("vol", "volume"), ("dir", "directory"))}
    liar = _lying_backup(location, series["liar"], src, T0 - datetime.timedelta(hours=1))
    sources = [{"volume": volume, "series": series["vol"], "stop_containers": ["none"]},
               {"path": str(src), "series": series["dir"], "stop_containers": ["none"]}]

    # one run: the backups, then the drill (the restore role, as dr_drill.yml runs it, and its
    # report) verifies the newest backup of each series
    reports = tmp_path / "reports"
    drill = run_playbook(BACKUP + DRILL, {
        "storage": storage, "sources": sources, "opskit_location": storage["location"],
        "opskit_storage_options": {k: v for k, v in storage.items() if k != "location"},
        "opskit_series_prefix": "", "opskit_report_dir": str(reports),
        "restore_fail_on_error": False, "restore_scratch_dir": str(tmp_path),
        "opskit_volumes": [{"name": volume, "series": series["vol"]}],
        "opskit_directories": [{"name": "etc", "path": str(src), "series": series["dir"]},
                               {"name": "liar", "path": str(src), "series": series["liar"]}]}, clock=T0)
    assert drill.rc == 0, drill.stdout[-4000:]
    verified = {k: r["backup"]["id"] for k, r in zip(("vol", "dir"), drill.task("backup")["results"])}
    verified["liar"] = liar

    record = _manifest(location, series["vol"], verified["vol"])["verification"]
    assert record["result"] == "passed" and record["method"] == "restore", record
    assert record["details"]["files"] == 2 and record["details"]["file_bytes"] == 3012, record
    assert record["details"]["recorded"]["files"] == 2 and record["verified_at"].startswith("2026-06-10T03:0")
    assert _manifest(location, series["dir"], verified["dir"])["verification"]["result"] == "passed"
    lied = _manifest(location, series["liar"], verified["liar"])["verification"]
    assert lied["result"] == "failed" and lied["details"]["error"] == (
        "restored 2 files (112 bytes), the backup recorded 3 files (112 bytes)"), lied
    for seed in seeded["vol"]:
        assert _manifest(location, series["vol"], seed)["verification"]["result"] == "unverified"

    (json_path,) = [p for p in reports.iterdir() if p.name.startswith("dr_drill-localhost-") and p.suffix == ".json"]
    document = json.loads(json_path.read_text())
    assets = {a["name"]: a for a in document["assets"]}
    assert assets[volume]["ok"] is True, assets[volume]
    assert assets[volume]["verification"] == "passed" and assets["etc"]["ok"] is True
    assert assets["liar"]["ok"] is False and assets["liar"]["error"] == (
        "verification failed: restored 2 files (112 bytes), the backup recorded 3 files (112 bytes)")
    rows = {b["series"]: b for b in document["backups"]}
    # a number, no longer null ("-"); each module process starts its faked clock at the run's
    # clock, so backup_info may find the backup made seconds before it a few seconds "in the future"
    assert -60 < rows[series["vol"]]["verified_age_seconds"] < 3600, rows
    html = json_path.with_suffix(".html").read_text()
    row = re.search(r"<tr><td>%s</td>.*?</tr>" % re.escape(series["vol"]), html, re.S).group(0)
    assert re.search(r"<td>-?\d+\.\d\d s</td>\s*</tr>$|<td>\d+\.\d min</td>\s*</tr>$", row), row
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith("opskit-drill-")]
    assert not [v for v in (docker_engine.client.api.volumes() or {}).get("Volumes") or [] if "-opskit-drill-" in v["Name"]
                and v["Name"].startswith(volume)]

    metrics = tmp_path / "metrics"
    metrics.mkdir()
    later = run_playbook(ROTATE, {"storage": storage, "sources": sources[:2], "metrics_dir": str(metrics)}, clock=LATER)
    assert later.rc == 0, later.stdout[-3000:]
    newer = {k: r["backup"]["id"] for k, r in zip(("vol", "dir"), later.task("backup")["results"])}
    rotated = later.task("rotate")["series"]
    for key in ("vol", "dir"):
        result = rotated[series[key]]
        assert result["newest_verified"] == verified[key], result
        assert sorted(d["id"] for d in result["deleted"]) == sorted(seeded[key]), result  # by policy
        assert {k["id"] for k in result["kept"]} == {verified[key], newer[key]}, result
        assert sorted(b["id"] for b in catalog.list_backups(location, series[key])[series[key]]) == sorted([verified[key], newer[key]])
    assert rotated[series["liar"]]["newest_verified"] is None
    text = (metrics / "opskit_backup.prom").read_text()
    stamp = int(catalog.created_at(_manifest(location, series["vol"], verified["vol"])).timestamp())
    assert ('opskit_backup_last_verified_timestamp_seconds{host="localhost",series="%s",kind="volume"} %d'
            % (series["vol"], stamp)) in text, text
    assert 'opskit_backup_last_verified_timestamp_seconds{host="localhost",series="vver-liar",kind="directory"} 0' in text
