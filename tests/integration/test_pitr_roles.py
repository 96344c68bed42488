# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The PITR runbooks through ansible-playbook: weekly.yml takes a base backup of a PITR cluster
(the backup role's pitr_base) and runs its marker drill (the restore role: a marker committed at
T, its WAL archived, a restore to T on a scratch port holding the marker and not the row written
after T), and reports the RPO measured by the marker. The cluster is a real PostgreSQL
15 (pitr_fixtures.ArchivingCluster, archive_mode on) whose archive_command (opskit-wal) and
archive_timeout 1 s weekly.yml sets up first (opskit_pitr_setup), into a file:// location.

dr_drill.yml runs the same restore role and report (test_demo.py drives it with a PITR cluster).
The checks of the drill are proven able to fail by a lie at the tool boundary: a psql wrapper in
restore_pitr_bin_dir runs the real psql and then reports another T, before the marker (the
marker must be missing) or after the row written after T (that row must be present)."""

from __future__ import annotations

import datetime
import glob
import json
import os
import re
import shutil
import stat
import tempfile
import time

import pytest

from harness import PG_BIN
from pitr_fixtures import ArchivingCluster
from roles_fixtures import playbook, reports

SERIES = "t-pg-main-physical"  # the role's default series of the cluster "main" with the prefix t-

# A psql that lies about T. It runs the real psql with the same arguments and stdin; in the
# databases named "early" and "late" it then rewrites marker_time of the drill's JSON line:
# early: 1 ms before the marker row was inserted (so before its commit); late: after the segment
# holding the row after T was archived, with one more commit after it, archived too (so recovery
# to that T replays the row after T and stops at that commit). In the database "postgres" (main's
# marker) it fails the pruning of old marker rows after the drill, which must only warn.
LYING_PSQL = r'''#!/usr/bin/python3
import json, os, subprocess, sys, time
REAL = %(real)r
args = sys.argv[1:]
db = args[args.index("-d") + 1] if "-d" in args else ""
run = [a.split("=", 1)[1] for a in args if a.startswith("run=")]
script = sys.stdin.read()
if db == "postgres" and "DELETE FROM opskit_drill_marker" in script:  # main's pruning fails, not its drill
    sys.stderr.write("psql:<stdin>:3: ERROR:  permission denied for table opskit_drill_marker\n")
    sys.exit(3)
proc = subprocess.run([REAL] + args, input=script, capture_output=True, text=True)
sys.stderr.write(proc.stderr)
if proc.returncode or db not in ("early", "late") or not run or not any(a.startswith("timeout=") for a in args):
    sys.stdout.write(proc.stdout)
    sys.exit(proc.returncode)

def sql(query):
    return subprocess.run([REAL, "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", "SET TimeZone = 'UTC'", "-c", query],
                          capture_output=True, text=True, check=True).stdout.strip()

doc = json.loads(proc.stdout.strip().splitlines()[-1])
if db == "early":
    doc["marker_time"] = sql("SELECT (at - interval '1 millisecond')::text FROM opskit_drill_marker"
                             " WHERE run = '%%s' AND phase = 'marker'" %% run[0])
else:
    doc["marker_time"] = doc["archived_at"]
    sql("INSERT INTO opskit_drill_marker (run, phase) VALUES ('%%s', 'filler')" %% run[0])
    segment = sql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while sql("SELECT last_archived_wal >= '%%s' FROM pg_stat_archiver" %% segment) != "t":
        assert time.monotonic() < deadline, "the filler's segment was not archived"
        time.sleep(0.05)
print(json.dumps(doc))
'''


MARKER_TABLE = ("CREATE TABLE IF NOT EXISTS opskit_drill_marker (run text NOT NULL, phase text NOT NULL,"
                " at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (run, phase))")


@pytest.fixture(scope="module")
def cluster():
    """archive_mode on, no archive_command: weekly.yml sets it up (opskit_pitr_setup)."""
    store = tempfile.mkdtemp(prefix="opskit-pitr-roles-")
    os.chmod(store, 0o755)
    pg = ArchivingCluster(store, SERIES, archive=False).start()
    for db in ("app", "early", "late"):
        pg.psql("CREATE DATABASE %s" % db)
    for db in ("early", "late"):  # no CREATE TABLE of the drill commits between the lie's T and the marker
        pg.psql(MARKER_TABLE, db=db)
    pg.home = tempfile.mkdtemp(prefix="opskit-pitr-home-")  # the role's helper and config, which the server's user reaches
    os.chmod(pg.home, 0o755)
    yield pg
    pg.stop()
    shutil.rmtree(store, ignore_errors=True)
    shutil.rmtree(pg.home, ignore_errors=True)


def _extra(cluster, tmp_path, clusters):
    return {
        "opskit_location": "file://" + cluster.store, "opskit_report_dir": str(tmp_path / "reports"),
        "opskit_lock_dir": str(tmp_path / "locks"), "opskit_series_prefix": "t-", "opskit_disk_paths": [str(tmp_path)],
        # the role installs opskit-wal and sets archive_command and archive_timeout 1 s before the base backup;
        # the restore role's restore_command is built from the same variables
        "opskit_pitr_setup": "archive_command", "opskit_pitr_archive_timeout": 1,
        "opskit_pitr_dir": cluster.home + "/lib", "opskit_pitr_config": cluster.home + "/wal.json",
        "backup_pitr_storage_options": {"compression_level": 1},
        "opskit_pitr_clusters": clusters, "opskit_pitr_os_user": cluster.account.pw_name if cluster.account else os.getlogin(),
        "opskit_pitr_rpo": "2min", "restore_pitr_recovery_timeout": 120, "restore_pitr_marker_timeout": 60,
        "opskit_retention": {"keep_last": 2},
    }


def _main(cluster):
    return {"name": "main", "postgres": cluster.conn(), "verify_queries": [
        {"name": "the app database", "query": "SELECT count(*) FROM pg_database WHERE datname = 'app'", "expect": "1"}]}


def _marker_rows(cluster, run, db="postgres"):
    return cluster.psql("SELECT string_agg(phase, ',' ORDER BY phase) FROM opskit_drill_marker WHERE run = '%s'" % run, db=db)


def test_weekly_base_backup_and_marker_drill_whose_checks_can_fail(cluster, run_playbook, tmp_path):
    """weekly.yml with three entries of one real cluster: "main" tells the truth, "early" and "late"
    lie about T through the psql wrapper. One base backup, three drills: main passes with
    its marker RPO, early fails on the missing marker, late on the row after T that is present."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "psql"
    wrapper.write_text(LYING_PSQL % {"real": os.path.join(PG_BIN, "psql")})
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    clusters = [_main(cluster)] + [{"name": db, "series": SERIES, "postgres": cluster.conn(), "marker_database": db}
                                   for db in ("early", "late")]
    # the backup role's list is its own variable: one base backup of the one real cluster
    extra = dict(_extra(cluster, tmp_path, clusters), restore_pitr_bin_dir=str(bin_dir), backup_pitr_clusters=clusters[:1])
    # marker rows of earlier drills at fixed times: 2001 is older than restore_pitr_marker_keep_days (30, the default)
    # on any date this test runs, 'infinity' never is. "late" fails its drill and is pruned all the same; main's
    # pruning fails (the wrapper) and its drill passes all the same
    cluster.psql(MARKER_TABLE)
    for db in ("postgres", "late"):
        cluster.psql("INSERT INTO opskit_drill_marker VALUES ('old-run', 'marker', '2001-01-01 00:00:00+00'),"
                     " ('old-run', 'after', '2001-01-01 00:00:01+00'), ('kept-run', 'marker', 'infinity')", db=db)
    run = run_playbook(playbook("weekly"), extra)
    assert run.rc != 0, run.stdout[-4000:]  # two drills failed
    assert run.task("PITR | set them (ALTER SYSTEM, reload)").get("changed")
    assert cluster.psql("SELECT setting FROM pg_settings WHERE name = 'archive_timeout'") == "1"
    assert oct(os.stat(cluster.home + "/wal.json").st_mode & 0o777) == "0o600"
    doc = reports(str(tmp_path / "reports"), "weekly")[-1]
    assert doc["status"] == "failed" and "restore failed for early, late" in doc["failure"]["msg"], doc["failure"]

    # the base backup of the week, in the default series of "main", through the backup role
    (base,) = doc["base_backups"]
    assert base["name"] == "main" and base["series"] == SERIES and base["outcome"] == "written", base
    manifest = json.load(open(os.path.join(cluster.store, SERIES, base["backup_id"] + ".manifest.json")))
    assert manifest["kind"] == "postgres-physical"
    assert any(p["name"] == "base backups" for p in doc["phases"])

    # main: restored to T from the newest base backup, the marker there, the row after T not
    assets = {a["name"]: a for a in doc["assets"]}
    assert sorted(assets) == ["early", "late", "main"]
    main = assets["main"]
    assert main["kind"] == "postgres-pitr" and main["verification"] == "passed" and main["ok"], main
    assert main["backup_id"] == base["backup_id"] and main["rpo_measured_by"] == "marker"
    marker = main["marker"]
    assert marker["segment"] <= marker["archived_segment"] and marker["marker_time"] < marker["archived_at"]
    assert main["rpo_seconds"] == pytest.approx(marker["rpo_seconds"]) and main["rpo_seconds"] >= 0
    assert main["rpo_met"] is True and main["rto_seconds"] > 0 and main["recovery"]["target"]
    assert _marker_rows(cluster, marker["run"]) == "after,marker"  # both rows are on the real cluster
    # main's pruning failed: a warning naming the cluster and the error, the drill passed (above), nothing deleted
    (warning,) = [r for r in run.results if r["_task"] == "PITR | pruning failed (the drill's verdict stands)" and "msg" in r]
    assert warning["msg"].startswith("WARNING: the marker rows of main older than 30 days were not pruned"), warning["msg"]
    assert warning["msg"].endswith(": permission denied for table opskit_drill_marker"), warning["msg"]
    assert _marker_rows(cluster, "old-run") == "after,marker"
    manifest = json.load(open(os.path.join(cluster.store, SERIES, base["backup_id"] + ".manifest.json")))
    assert manifest["verification"]["method"] == "pitr-drill"  # the last drill's verdict (late: failed)

    # early: T 1 ms before the marker's insert: the marker is missing after the restore
    early = assets["early"]
    assert early["verification"] == "failed" and not early["ok"] and early["rpo_met"] is False
    assert "the marker written at T: returned '0', expected '1'" in early["error"], early["error"]
    assert _marker_rows(cluster, early["marker"]["run"], db="early") == "after,marker"  # written, not restored

    # late: T after the row written after T: that row is present after the restore
    late = assets["late"]
    assert late["verification"] == "failed" and not late["ok"]
    assert "no row written after T: returned '1', expected '0'" in late["error"], late["error"]
    assert "the marker written at T" not in late["error"]  # the marker itself was restored
    # pruned after the (failed) drill: the rows older than 30 days, not this run's nor the younger ones
    runs = cluster.psql("SELECT string_agg(DISTINCT run, ',') FROM opskit_drill_marker", db="late").split(",")
    assert sorted(runs) == sorted(["kept-run", late["marker"]["run"]]), runs
    assert _marker_rows(cluster, late["marker"]["run"], db="late") == "after,filler,marker"

    # the report: the RPO by marker next to the RTO, judged (two drills failed: not met)
    assert doc["pitr_rpo_seconds"] == max(a["rpo_seconds"] for a in assets.values())
    assert doc["pitr_rpo_met"] is False and doc["pitr_rpo_target"] == "2min" and isinstance(doc["rto_seconds"], float)
    html = open(sorted((tmp_path / "reports").glob("weekly-*.html"))[-1]).read()
    assert "RPO by marker" in html

    # the weekly RPO check covers the cluster's WAL archive: fresh (archive_timeout 1 s), no gap, a new base backup
    (wal_check,) = [r for r in run.results if r["_task"].startswith("Verify | the WAL archive of each PITR cluster")]
    assert wal_check["_status"] == "ok" and wal_check["ansible_facts"]["backup_pitr_stale"] == [], wal_check
    assert "RPO breach" not in doc["failure"]["msg"], doc["failure"]


def _metrics(path):
    with open(path) as fh:
        return [line for line in fh.read().splitlines() if line and not line.startswith("#")]


def test_daily_wal_rpo_check_asks_a_quiet_cluster_before_calling_it_stale(cluster, run_playbook, tmp_path):
    """A cluster that writes nothing archives nothing, and its archive's age grows with the clock:
    a day later (faketime), the newest archived segment is a day old, past the RPO of 2min. The
    daily run asks the server (pg_switch_wal) and finds everything it wrote already archived (or
    archives what was waiting, in the seconds the probe waits): the run passes, the series is not
    stale. Without the probe this run fails (the stalled-archive test below is the same check
    with archiving stopped)."""
    manifests = glob.glob(os.path.join(cluster.store, SERIES, "*.manifest.json"))
    assert manifests, "no base backup in %s: this test starts from the weekly test's (run the whole file)" % SERIES
    # quiet: what the earlier tests wrote is switched out and archived
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    deadline = time.monotonic() + 60
    while cluster.psql("SELECT coalesce(last_archived_wal >= '%s', false) FROM pg_stat_archiver" % segment) != "t":
        assert time.monotonic() < deadline, "segment %s was not archived" % segment
        time.sleep(0.1)
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    extra = dict(_extra(cluster, tmp_path, [_main(cluster)]), opskit_pitr_setup="none", opskit_metrics_dir=str(metrics),
                 backup_pitr_probe_wait="20s")
    later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=1)
    run = run_playbook(playbook("daily"), extra, clock=later)
    assert run.rc == 0, run.stdout[-4000:]
    doc = reports(str(tmp_path / "reports"), "daily")[-1]
    assert doc["pitr_stale"] == [] and doc["status"] != "failed", doc
    wal = doc["pitr_series"][SERIES]["wal"]
    assert wal["rpo_seconds"] > 3600, wal  # the archive's age is still reported as it is
    prom = _metrics(metrics / "opskit_backup.prom")
    assert 'opskit_backup_stale{host="localhost",series="%s",kind="postgres-physical",rpo="2min"} 0' % SERIES in prom, prom


def test_daily_wal_rpo_check_fails_on_a_stalled_archive(cluster, run_playbook, tmp_path):
    """The daily run's RPO check of a PITR cluster (the fresh case passes in the weekly test above,
    whose base backup and archiving this test starts from). Archiving is stalled for real
    (archive_command false, a segment switched that cannot be archived), one archived segment is
    taken out of the store (a gap) and the clock moves 9 days on: the run fails with one line
    naming the cluster and all three (WAL too old, the gap, the base backup too old), and
    opskit_backup_stale of the series is 1 (rpo="2min"), so OpskitBackupStale fires."""
    manifests = glob.glob(os.path.join(cluster.store, SERIES, "*.manifest.json"))
    assert manifests, "no base backup in %s: this test starts from the weekly test's (run the whole file)" % SERIES
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    # the probe (pg_switch_wal, then a wait for the segment it names) waits 2 s here: archiving is stalled
    extra = dict(_extra(cluster, tmp_path, [_main(cluster)]), opskit_pitr_setup="none", opskit_metrics_dir=str(metrics),
                 backup_pitr_probe_wait="2s")
    command = cluster.psql("SHOW archive_command")
    segments = sorted(p for p in glob.glob(os.path.join(cluster.store, SERIES, "wal", "*", "*"))
                      if re.match(r"[0-9A-F]{24}-", os.path.basename(p)))
    assert len(segments) >= 3, segments
    hidden = segments[len(segments) // 2]
    os.rename(hidden, str(tmp_path / "hidden-segment"))
    try:
        cluster.psql("ALTER SYSTEM SET archive_command = 'false'")
        cluster.psql("SELECT pg_reload_conf()")
        cluster.psql("CREATE TABLE IF NOT EXISTS stalled (n int); INSERT INTO stalled VALUES (1)", db="app")
        stuck = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=9)
        run = run_playbook(playbook("daily"), extra, clock=later)
        assert cluster.psql("SELECT last_archived_wal < '%s' FROM pg_stat_archiver" % stuck) == "t"  # still stalled
    finally:
        os.rename(str(tmp_path / "hidden-segment"), hidden)
        cluster.psql("ALTER SYSTEM SET archive_command = '%s'" % command.replace("'", "''"))
        cluster.psql("SELECT pg_reload_conf()")
    assert run.rc != 0, run.stdout[-4000:]
    doc = reports(str(tmp_path / "reports"), "daily")[-1]
    (line,) = doc["pitr_stale"]
    assert line.startswith("RPO breach of the PITR cluster main (%s): WAL archive " % SERIES), line
    assert "RPO 2min" in line and "gap in the WAL of timeline 00000001: 1 segment(s) missing from %s" % os.path.basename(hidden)[:24] in line, line
    assert "newest base backup " in line and "(max 8d)" in line, line
    assert " not archived within 2 s of pg_switch_wal()" in line, line  # the probe asked, and the archive is stuck
    assert doc["status"] == "failed" and line in doc["failure"]["msg"], doc["failure"]
    wal = doc["pitr_series"][SERIES]["wal"]
    assert wal["rpo_seconds"] > 8 * 86400 and wal["gaps"][0]["first_missing"] == os.path.basename(hidden)[:24], wal
    prom = _metrics(metrics / "opskit_backup.prom")
    assert 'opskit_backup_stale{host="localhost",series="%s",kind="postgres-physical",rpo="2min"} 1' % SERIES in prom, prom
    assert 'opskit_backup_wal_gap_segments{host="localhost",series="%s"} 1' % SERIES in prom, prom
    assert 'opskit_backup_wal_rpo_seconds{host="localhost",series="%s"} %d' % (SERIES, wal["rpo_seconds"]) in prom, prom
