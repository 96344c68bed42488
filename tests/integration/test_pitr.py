# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery through ansible-playbook: pg_backup method=physical against a real
PostgreSQL 15 cluster whose archive_command is the collection's opskit-wal helper."""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import tempfile

import pytest

from harness import free_port
from pitr_fixtures import ArchivingCluster
from test_pg_backup import failed, ok, play  # the result helpers of the pg_backup tests

PG_BACKUP = "opskit.runbook.pg_backup"
BACKUP_INFO = "opskit.runbook.backup_info"
SERIES = "pitr-main"


@pytest.fixture(scope="module")
def archiving():
    store = tempfile.mkdtemp(prefix="opskit-pitr-store-")
    cluster = ArchivingCluster(store, SERIES).start()
    cluster.psql("CREATE TABLE events (id serial PRIMARY KEY, tag text NOT NULL, at timestamptz DEFAULT clock_timestamp());"
                 " INSERT INTO events (tag) SELECT 'before' FROM generate_series(1, 500);"
                 " CREATE ROLE norepl LOGIN PASSWORD 'norepl-pw'")
    cluster.base = cluster.base_backup()  # in-process: each test can restore on its own (-k)
    yield cluster
    cluster.stop()
    shutil.rmtree(store, ignore_errors=True)


def task(name, module=PG_BACKUP, check_mode=False, **args):
    out = {"name": name, module: args, "ignore_errors": True}
    if check_mode:
        out["check_mode"] = True
    return out


def common(cluster, **extra):
    args = dict(cluster.conn(), destination="file://" + cluster.store, series=SERIES, method="physical",
                wal_helper=cluster.helper, data_owner=cluster.account.pw_name if cluster.account else None)
    args.update(extra)
    return args


def counts(tag):
    return {"name": tag, "query": "SELECT count(*) FROM events WHERE tag = '%s'" % tag}


def drill(name, cluster, marker, later, **target):
    return task(name, **common(cluster, state="verified", recovery_timeout=60, verify_queries=[
        dict(counts("marker"), expect=str(marker)), dict(counts("later"), expect=str(later)),
        dict(counts("before"), expect="500")], **target))


def test_base_backup_and_restore_to_time_lsn_latest(archiving, run_playbook, tmp_path):
    cluster = archiving
    run = run_playbook(play(
        task("client-side", **common(cluster, server_compression=False)),
        task("base", **common(cluster)),
        task("base check", check_mode=True, **common(cluster)),
        task("no replication", **common(cluster, user="norepl", password="norepl-pw")),
    ))
    base = cluster.base = ok(run.task("base"))["backup"]
    assert base["method"] == "physical" and base["kind"] == "postgres-physical"
    assert base["timeline"] == 1 and base["start_wal"] <= base["stop_wal"] and base["start_lsn"] != base["stop_lsn"]
    manifest = json.load(open(os.path.join(cluster.store, SERIES, base["id"] + ".manifest.json")))
    assert "START WAL LOCATION: %s" % base["start_lsn"] in manifest["source"]["backup_label"]
    assert manifest["source"]["stop_lsn"] == base["stop_lsn"] and manifest["sha256"] == base["sha256"]
    # the server compressed (no second compression in the module), the tar holds the WAL start..stop,
    # and the module returned only once the stop segment was archived (pg_basebackup -X fetch does not wait)
    assert base["server_compression"].startswith("server-zstd:level=3") and manifest["source"]["wal_included"]
    assert base["raw_bytes"] is None and manifest["compression"] == "zstd"
    # opskit-wal runs under the system python, without zstandard: zstd through Debian's zstd command
    assert _archived(cluster, base["stop_wal"]).endswith(".zst")
    client = ok(run.task("client-side"))["backup"]  # -X none, compressed in the module, stop LSN from backup_manifest
    assert client["server_compression"] is None and client["raw_bytes"] > client["size_bytes"] > 0
    assert client["stop_wal"] < base["start_wal"] and client["start_lsn"] != client["stop_lsn"]
    checked = ok(run.task("base check"))
    assert checked["changed"] and not checked["backups"]
    assert len(glob.glob(os.path.join(cluster.store, SERIES, "*.manifest.json"))) == 3  # fixture's, client-side, base: check mode wrote nothing
    assert "has no REPLICATION permission" in failed(run.task("no replication"))

    cluster.psql("INSERT INTO events (tag) VALUES ('after-base')")
    cluster.psql("INSERT INTO events (tag) VALUES ('marker')")
    marker_time = cluster.psql("SELECT clock_timestamp()")
    marker_lsn = cluster.psql("SELECT pg_current_wal_insert_lsn()")
    cluster.psql("INSERT INTO events (tag) VALUES ('later')")  # acknowledged, then the archiver is killed
    segment = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    cluster.kill_archiver()
    cluster.wait_archived(segment)  # archiving resumed after the crash restart; "latest" below finds 'later'

    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "keep.txt").write_text("x")
    restored = "/tmp/opskit-pitr-restored-%d" % os.getpid()
    run = run_playbook(play(
        drill("by time", cluster, 1, 0, target_time=marker_time),
        drill("by lsn", cluster, 1, 0, target_lsn=marker_lsn),
        drill("latest", cluster, 1, 1),
        drill("immediate", cluster, 1, 0, target="immediate"),  # the marker came after the base backup: fails
        task("restore check", check_mode=True,
             **common(cluster, state="restored", data_directory=restored, target_time=marker_time)),
        task("restore", **common(cluster, state="restored", data_directory=restored, target_time=marker_time)),
        task("non-empty", **common(cluster, state="restored", data_directory=str(busy))),
        task("too early", **common(cluster, state="restored", data_directory=restored + "-x",
                                   target_time="2001-01-01T00:00:00Z")),
    ))
    try:
        for name in ("by time", "by lsn", "latest"):
            result = ok(run.task(name))
            assert result["verification"]["result"] == "passed", result["msg"]
            assert result["recovery"]["rto_seconds"] > 0 and result["recovery"]["recovered_lsn"]
        assert ok(run.task("by time"))["recovery"]["recovered_time"] <= marker_time
        msg = failed(run.task("immediate"))
        assert "FAILED" in msg and "marker: returned '0', expected '1'" in msg
        manifest = json.load(open(os.path.join(cluster.store, SERIES, base["id"] + ".manifest.json")))
        assert manifest["verification"]["result"] == "failed" and manifest["verification"]["method"] == "pitr-drill"
        assert ok(run.task("restore check"))["plan"]["steps"] == ["create"]
        result = ok(run.task("restore"))
        assert result["recovery"]["data_directory"] == restored
        assert os.path.exists(os.path.join(restored, "recovery.signal"))
        conf = open(os.path.join(restored, "postgresql.auto.conf")).read()
        assert "fetch %f %p" in conf and "recovery_target_time" in conf and "pitr-test-pw" not in conf
        # the WAL recovery needs is prefetched (checked) into the spool, removed when recovery ends
        spool = os.listdir(os.path.join(restored, "opskit_wal_spool"))
        assert result["recovery"]["wal_prefetched"] == len(spool) >= 2 and base["start_wal"] in spool
        assert "recovery_end_command = 'rm -rf -- opskit_wal_spool'" in conf
        assert "not empty" in failed(run.task("non-empty")) and (busy / "keep.txt").exists()
        assert "before the end of the oldest base backup" in failed(run.task("too early"))
        assert not os.path.exists(restored + "-x")
        assert not glob.glob("/tmp/opskit-pgrestore-*/data")  # the drills removed their clusters
    finally:
        shutil.rmtree(restored, ignore_errors=True)


def _archived(cluster, name):
    found = glob.glob(os.path.join(cluster.store, SERIES, "wal", name[:8], name + "-*"))
    assert len(found) == 1, (name, found)
    return found[0]


def test_wal_gap_and_corrupt_segment_refused(archiving, run_playbook, tmp_path):
    cluster = archiving
    base = cluster.base  # the newest base backup: the fixture's, or the one test_base_backup_... took
    segments = []
    cluster.psql("INSERT INTO events (tag) VALUES ('gap-1')")
    segments.append(cluster.switch_and_wait())
    cluster.psql("INSERT INTO events (tag) VALUES ('gap-2')")
    lsn = cluster.psql("SELECT pg_current_wal_insert_lsn()")
    for tag in ("gap-3", "gap-4", "gap-5"):
        segments.append(cluster.switch_and_wait())
        cluster.psql("INSERT INTO events (tag) VALUES ('%s')" % tag)
    segments.append(cluster.switch_and_wait())
    assert segments[0] > base["stop_wal"]
    corrupt = _archived(cluster, segments[0])  # needed by both restores below
    with open(corrupt, "r+b") as fh:
        fh.seek(os.path.getsize(corrupt) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0xFF]))
    os.unlink(_archived(cluster, segments[2]))  # a gap after the target LSN
    out = tmp_path / "segment"
    fetched = subprocess.run(cluster.helper + ["fetch", segments[0], str(out)], capture_output=True, text=True,
                             check=False)
    assert fetched.returncode == 126 and "corrupt" in fetched.stderr and not out.exists()
    target = "/tmp/opskit-pitr-gap-%d" % os.getpid()
    run = run_playbook(play(
        task("past the gap", **common(cluster, state="restored", data_directory=target)),
        task("corrupt", **common(cluster, state="restored", data_directory=target, target_lsn=lsn)),
        task("info", module=BACKUP_INFO, destination="file://" + cluster.store, series=SERIES),
    ))
    report = ok(run.task("info"))["series"][SERIES]["wal"]
    assert [(g["timeline"], g["first_missing"], g["missing"]) for g in report["gaps"]] == [("00000001", segments[2], 1)]
    assert report["last_segment"] == segments[4] and report["rpo_seconds"] >= 0
    assert report["newest_base_backup_age_seconds"] >= 0 and report["timelines"] == ["00000001"]
    msg = failed(run.task("past the gap"))
    assert "%s of series %s is missing" % (segments[2], SERIES) in msg and "gap" in msg
    msg = failed(run.task("corrupt"))
    assert segments[0] in msg and "corrupt" in msg and "refused before replay" in msg
    assert not os.path.exists(target)


def test_tablespace_companion_backup_and_restore(archiving, run_playbook):
    """A cluster with a tablespace: BASE_BACKUP over psycopg2 stores its tar as a companion; a drill to a time
    restores it into a scratch directory, a restore into a mapped one; a damaged companion is refused."""
    cluster = archiving
    space = os.path.join(cluster.root, "space")
    os.mkdir(space, 0o700)
    if cluster.account:
        os.chown(space, cluster.account.pw_uid, cluster.account.pw_gid)
    cluster.psql("CREATE TABLESPACE space LOCATION '%s'" % space)
    restored = "/tmp/opskit-pitr-ts-%d" % os.getpid()
    try:
        cluster.psql("CREATE TABLE spaced (id int PRIMARY KEY, tag text NOT NULL) TABLESPACE space;"
                     " INSERT INTO spaced SELECT g, 'before' FROM generate_series(1, 300) g")
        oid = int(cluster.psql("SELECT oid FROM pg_tablespace WHERE spcname = 'space'"))
        run = run_playbook(play(task("base", **common(cluster))))
        base = ok(run.task("base"))["backup"]
        assert [(t["oid"], t["name"], t["location"], t["artifact"]) for t in base["tablespaces"]] == [
            (oid, "space", space, "tablespace-%d" % oid)]
        assert base["server_compression"].startswith("server-zstd:level=3") and base["pg_basebackup_version"] is None
        manifest = json.load(open(os.path.join(cluster.store, SERIES, base["id"] + ".manifest.json")))
        companion = os.path.join(cluster.store, SERIES, "%s.tablespace-%d.tar.zst" % (base["id"], oid))
        assert [(c["name"], c["sha256"]) for c in manifest["companions"]] == [("tablespace-%d" % oid,
                                                                              base["tablespaces"][0]["sha256"])]
        assert os.path.getsize(companion) == manifest["companions"][0]["size_bytes"] > 0
        assert "START WAL LOCATION: %s" % base["start_lsn"] in manifest["source"]["backup_label"]
        assert manifest["source"]["stop_lsn"] == base["stop_lsn"] > base["start_lsn"]
        _archived(cluster, base["stop_wal"])  # WAIT false: the module awaited the stop segment itself

        cluster.psql("INSERT INTO spaced SELECT g, 'after-base' FROM generate_series(301, 350) g")
        marker_time = cluster.psql("SELECT clock_timestamp()")
        cluster.psql("INSERT INTO spaced SELECT g, 'later' FROM generate_series(351, 360) g")
        cluster.switch_and_wait()
        rows = {"name": "rows", "expect": "350 350 0",
                "query": "SELECT count(*) || ' ' || max(id) || ' ' || count(*) FILTER (WHERE tag = 'later') FROM spaced"}
        mapped = restored + "-space"
        run = run_playbook(play(
            task("drill", **common(cluster, state="verified", target_time=marker_time, recovery_timeout=60,
                                   verify_queries=[rows])),
            task("original occupied", **common(cluster, state="restored", data_directory=restored, force=True)),
            task("unknown key", **common(cluster, state="restored", data_directory=restored,
                                         tablespace_mapping={"nospace": mapped})),
            task("restore", **common(cluster, state="restored", data_directory=restored, target_time=marker_time,
                                     tablespace_mapping={"space": mapped})),
        ))
        result = ok(run.task("drill"))
        assert result["verification"]["result"] == "passed", result["msg"]
        assert result["plan"]["tablespaces"][0]["directory"].endswith("/tablespace-%d" % oid)
        assert not os.path.exists(result["plan"]["tablespaces"][0]["directory"])  # removed with the scratch cluster
        assert "tablespace directory %s belongs to a running cluster" % space in failed(run.task("original occupied"))
        assert "names no tablespace of the backup" in failed(run.task("unknown key"))
        result = ok(run.task("restore"))
        assert result["recovery"]["tablespaces"] == {str(oid): mapped}
        assert open(os.path.join(restored, "tablespace_map")).read() == "%d %s\n" % (oid, mapped)
        assert os.readlink(os.path.join(restored, "pg_tblspc", str(oid))) == mapped
        assert [n for n in os.listdir(mapped) if n.startswith("PG_15_")]

        with open(companion, "r+b") as fh:  # damage the companion: refused before the cluster starts
            fh.seek(os.path.getsize(companion) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0xFF]))
        other = restored + "-other"
        run = run_playbook(play(
            task("corrupt drill", **common(cluster, state="verified", target_time=marker_time, recovery_timeout=60,
                                           verify_queries=[rows])),
            task("corrupt restore", **common(cluster, state="restored", data_directory=restored + "-c",
                                             tablespace_mapping={str(oid): other})),
        ))
        for name in ("corrupt drill", "corrupt restore"):
            msg = failed(run.task(name))
            assert "tablespace %d (space) of base backup %s" % (oid, base["id"]) in msg and "corrupt" in msg, msg
            assert "refused before replay" in msg
        assert not os.path.exists(restored + "-c") and not os.path.exists(other)
        manifest = json.load(open(os.path.join(cluster.store, SERIES, base["id"] + ".manifest.json")))
        assert manifest["verification"]["result"] == "passed"  # the first drill's: the corrupt one started no cluster
    finally:
        cluster.psql("DROP TABLE IF EXISTS spaced")
        cluster.psql("DROP TABLESPACE IF EXISTS space")
        for path in (restored, restored + "-space", restored + "-c", restored + "-other"):
            shutil.rmtree(path, ignore_errors=True)


def _psql(env, sql):
    return subprocess.run(["/usr/lib/postgresql/15/bin/psql", "-XAtqc", sql], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


def test_timeline_switch(archiving, run_playbook):
    """Restore, promote (timeline 2, archived into the same series), then a drill to a time on timeline 2."""
    cluster = archiving
    cluster.base = cluster.base_backup()  # after whatever gap an earlier test made
    restored = "/tmp/opskit-pitr-tl-%d" % os.getpid()
    run = run_playbook(play(task("restore", **common(cluster, state="restored", data_directory=restored))))
    ok(run.task("restore"))
    try:
        env = cluster.start_restored(restored, free_port())
        assert _psql(env, "SELECT timeline_id FROM pg_control_checkpoint()") in ("1", "2")
        _psql(env, "INSERT INTO events (tag) VALUES ('tl2-marker')")
        marker_time = _psql(env, "SELECT clock_timestamp()")
        _psql(env, "INSERT INTO events (tag) VALUES ('tl2-later')")
        segment = _psql(env, "SELECT pg_walfile_name(pg_switch_wal())")
        assert segment.startswith("00000002")
        cluster.wait_archived(segment)
        assert glob.glob(os.path.join(cluster.store, SERIES, "wal", "00000002", "00000002.history-*"))
    finally:
        cluster.stop_restored(restored)
        shutil.rmtree(restored, ignore_errors=True)
    run = run_playbook(play(task("drill", **common(cluster, state="verified", target_time=marker_time, verify_queries=[
        dict(counts("tl2-marker"), expect="1"), dict(counts("tl2-later"), expect="0")]))))
    result = ok(run.task("drill"))
    assert result["plan"]["last_wal"].startswith("00000002"), result["plan"]


def test_backup_role_sets_up_archiving(run_playbook):
    store = tempfile.mkdtemp(prefix="opskit-pitr-store-")
    cluster = ArchivingCluster(store, "pitr-role", archive=False).start()
    home = tempfile.mkdtemp(prefix="opskit-pitr-role-")
    os.chmod(home, 0o755)
    try:
        role = {"ansible.builtin.include_role": {"name": "opskit.runbook.backup", "tasks_from": "pitr_archive"},
                "vars": {"backup_pitr_dir": home + "/lib/opskit", "backup_pitr_config": home + "/etc/wal.json",
                         "backup_pitr_location": "file://" + store, "backup_pitr_series": "pitr-role",
                         "backup_pitr_storage_options": {"compression_level": 1},
                         "backup_pitr_os_user": cluster.account.pw_name if cluster.account else os.getlogin(),
                         "backup_pitr_pg": cluster.conn()}}
        run = run_playbook(play(dict(role, name="archiving")))
        assert run.rc == 0, run.stdout[-3000:]
        assert run.task("PITR | set them (ALTER SYSTEM, reload)").get("changed")
        config = os.stat(home + "/etc/wal.json")
        assert oct(config.st_mode & 0o777) == "0o600"
        assert cluster.psql("SELECT setting FROM pg_settings WHERE name = 'archive_command'").startswith("/usr/bin/python3")
        cluster.wait_archived(cluster.psql("SELECT pg_walfile_name(pg_switch_wal())"))  # through the role's helper
    finally:
        cluster.stop()
        shutil.rmtree(store, ignore_errors=True)
        shutil.rmtree(home, ignore_errors=True)


def test_the_stop_segment_wait_on_the_real_server(archiving):
    """The base backup's wait for its stop segment against the real server (archive_timeout 0: nothing
    else closes a segment). As the superuser: an archived segment is seen (status directory and
    pg_stat_archiver), the open one is not and is not switched. As a role without pg_monitor nor
    EXECUTE on pg_switch_wal: the same answers through pg_stat_archiver alone, the switch refused
    quietly. With EXECUTE granted: the one switch closes the open segment, which then is archived."""
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres import physical
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres.server import open_server

    cluster = archiving
    cluster.psql("INSERT INTO events (tag) VALUES ('stop-wait')")
    archived = cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")
    cluster.wait_archived(archived)
    cluster.psql("INSERT INTO events (tag) VALUES ('stop-wait')")
    open_segment = cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
    assert open_segment > archived
    bin_dir = "/usr/lib/postgresql/15/bin"
    with open_server(dict(cluster.conn(), bin_dir=bin_dir)) as server:
        assert server.value(physical.archived_query(archived)) == "t"
        assert physical.wait_archived(server, archived, timeout=5)
        assert not physical.wait_archived(server, open_segment, timeout=1, nudge_after=0, slow_interval=0.05)
    assert cluster.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())") == open_segment  # not switched
    norepl = dict(cluster.conn(), user="norepl", password="norepl-pw", bin_dir=bin_dir)
    with open_server(norepl) as server:
        assert physical.wait_archived(server, archived, timeout=5)  # pg_ls_archive_statusdir refused: the fallback
        assert not physical.wait_archived(server, open_segment, timeout=1, nudge_after=0, slow_interval=0.05)
        assert not physical.switch_wal(server)
        cluster.psql("GRANT EXECUTE ON FUNCTION pg_switch_wal() TO norepl")
        try:
            assert physical.wait_archived(server, open_segment, timeout=60, nudge_after=0, slow_interval=0.05)
        finally:
            cluster.psql("REVOKE EXECUTE ON FUNCTION pg_switch_wal() FROM norepl")
    assert glob.glob(os.path.join(cluster.store, SERIES, "wal", open_segment[:8], open_segment + "-*"))
