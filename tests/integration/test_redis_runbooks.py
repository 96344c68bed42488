# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Redis in the runbooks, against the harness's real redis-server, through ansible-playbook:
daily copies the new snapshot also when an AOF rewrite runs, the drill loads it into a scratch
redis-server and compares the key count and DEBUG DIGEST recorded at backup time, and a
corrupted or substituted RDB fails the drill."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import threading
import time
import uuid

import pytest

from roles_fixtures import playbook, reports


def _cli(redis, *args):
    return subprocess.run(["redis-cli", "-h", redis.host, "-p", str(redis.port)] + [str(a) for a in args],
                          capture_output=True, text=True, check=True, timeout=30).stdout.strip()


def _info(redis, section):
    return dict(line.split(":", 1) for line in _cli(redis, "INFO", section).splitlines() if ":" in line)


def _wait(what, probe, timeout=60):
    """Poll probe() until it is true; the timeout only bounds a broken run, nothing is timed."""
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, "never happened: %s" % what
        time.sleep(0.05)


def _keys(redis):
    return sum(int(v.split(",")[0].split("=")[1]) for k, v in _info(redis, "keyspace").items() if k.startswith("db"))


def _children(pid):
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(stat.split("/")[2]))
        except (OSError, ValueError, IndexError):
            continue
    return out


def _bgsave_calls(redis):
    stats = _info(redis, "commandstats").get("cmdstat_bgsave", "calls=0")
    return int(stats.split(",")[0].split("=")[1])


class _ScratchServer:
    """A redis-server of the test on a unix socket in ``root``, to read or write an RDB file."""

    def __init__(self, root):
        self.root = root
        self.sock = os.path.join(root, "t.sock")

    def __enter__(self):
        subprocess.run(["redis-server", "--port", "0", "--unixsocket", self.sock, "--dir", self.root, "--save", "",
                        "--appendonly", "no", "--daemonize", "yes", "--pidfile", os.path.join(self.root, "t.pid"),
                        "--logfile", os.path.join(self.root, "t.log")], check=True)
        _wait("the test's redis-server answers", lambda: os.path.exists(self.sock) and self.cli("PING") == "PONG")
        return self

    def cli(self, *args):
        return subprocess.run(["redis-cli", "-s", self.sock] + list(args), capture_output=True, text=True,
                              check=False, timeout=30).stdout.strip()

    def __exit__(self, *exc):
        self.cli("SHUTDOWN", "NOSAVE")
        for name in ("t.sock", "t.pid", "t.log"):
            if os.path.exists(os.path.join(self.root, name)):
                os.unlink(os.path.join(self.root, name))


@pytest.fixture
def aof_redis(redis):
    """The harness's redis-server with appendonly yes for the test (an AOF rewrite needs it), and
    the keys of the test removed afterwards."""
    prefix = "t-%s-" % uuid.uuid4().hex[:8]
    _cli(redis, "CONFIG", "SET", "appendonly", "yes")  # starts a rewrite of its own: wait for it
    _wait("the first AOF rewrite ends", lambda: _info(redis, "persistence")["aof_rewrite_in_progress"] == "0")
    stopped = []
    yield redis, prefix, stopped
    for pid in stopped:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    _wait("the AOF rewrite ends", lambda: _info(redis, "persistence")["aof_rewrite_in_progress"] == "0")
    _cli(redis, "CONFIG", "SET", "rdb-key-save-delay", "0")
    _cli(redis, "CONFIG", "SET", "appendonly", "no")
    for key in _cli(redis, "--scan", "--pattern", prefix + "*").split():
        _cli(redis, "DEL", key)


def _stopped_rewrite(redis, stopped):
    """Start an AOF rewrite and freeze its child (SIGSTOP): the rewrite stays in progress until
    SIGCONT, so a BGSAVE SCHEDULE sent meanwhile only schedules the save."""
    _cli(redis, "CONFIG", "SET", "rdb-key-save-delay", "50000")  # 50 ms per key: the child is caught before it ends
    before = set(_children(redis.proc.pid))
    assert "rewriting started" in _cli(redis, "BGREWRITEAOF")
    _cli(redis, "CONFIG", "SET", "rdb-key-save-delay", "0")  # later forks (the backup's BGSAVE) run at full speed
    _wait("the rewrite child exists", lambda: set(_children(redis.proc.pid)) - before)
    (child,) = set(_children(redis.proc.pid)) - before
    os.kill(child, signal.SIGSTOP)
    stopped.append(child)
    assert _info(redis, "persistence")["aof_rewrite_in_progress"] == "1"
    return child


def _vars(tmp_path, redis, prefix):
    item = {"host": redis.host, "port": redis.port, "path": redis.root}
    return {
        "opskit_location": "file://%s/backups" % tmp_path,
        "opskit_report_dir": str(tmp_path / "reports"),
        "opskit_series_prefix": prefix,
        "opskit_databases": [],
        "opskit_redis": [dict(item, name="cache"), dict(item, name="sessions")],
        "opskit_disk_paths": [str(tmp_path)],
        "opskit_lock_dir": str(tmp_path / "locks"),
        "backup_redis_staging_dir": str(tmp_path / "staging"),
        "restore_scratch_dir": str(tmp_path / "staging"),
    }


def _publish(extra, sources):
    """A play: volume_backup of the directories in sources ({name: dir}) as new backups of the Redis series."""
    tasks = [{"name": "publish %s" % name, "opskit.runbook.volume_backup": {
        "path": str(src), "series": extra["opskit_series_prefix"] + "redis-" + name, "location": extra["opskit_location"],
        "stop_containers": ["none"]}} for name, src in sources.items()]
    return {"hosts": "localhost", "gather_facts": False, "tasks": tasks}


def _drills(extra, genuine, lies):
    """One ansible-playbook run: publish the genuine backups, dr_drill.yml, publish the lies,
    dr_drill.yml again."""
    drill = {"ansible.builtin.import_playbook": playbook("dr_drill")}
    return [_publish(extra, genuine), drill, _publish(extra, lies), drill]


def _daily_during_a_rewrite(run_playbook, redis, prefix, stopped, extra):
    """daily.yml while a frozen AOF rewrite runs; the key written just before it must be backed up."""
    for i in range(40):
        _cli(redis, "SET", "%sk%d" % (prefix, i), "v%d" % i)
    last = _info(redis, "persistence")["rdb_last_save_time"]
    _cli(redis, "BGSAVE")  # the previous snapshot, without the key written below
    _wait("the previous snapshot", lambda: _info(redis, "persistence")["rdb_last_save_time"] != last
          and _info(redis, "persistence")["rdb_bgsave_in_progress"] == "0")
    _stopped_rewrite(redis, stopped)
    _cli(redis, "SET", prefix + "fresh", "written just before the backup")
    expected = _keys(redis)
    calls = _bgsave_calls(redis)
    runs = {}
    daily_vars = dict(extra, opskit_redis=extra["opskit_redis"][:1])  # cache; the test publishes sessions itself
    thread = threading.Thread(target=lambda: runs.setdefault("daily", run_playbook(playbook("daily"), daily_vars)))
    thread.start()
    try:
        _wait("daily sends BGSAVE SCHEDULE", lambda: _bgsave_calls(redis) > calls, timeout=300)
        assert _info(redis, "persistence")["aof_rewrite_in_progress"] == "1"  # the save was only scheduled
    finally:
        os.kill(stopped[-1], signal.SIGCONT)  # the rewrite ends, then the scheduled save runs
        thread.join()
    return runs["daily"], expected


def _fabricate(tmp_path, snapshot, keys, digest):
    """Backup directories as the role writes them (dump.rdb and the genuine record of the
    snapshot): sessions, a second series of the genuine snapshot, and the lies, each with the
    genuine record: a corrupted RDB file (its CRC64 no longer matches) for cache and a valid RDB
    file of other data for sessions."""
    def backup_dir(name, rdb):
        path = tmp_path / name
        path.mkdir()
        (path / "dump.rdb").write_bytes(rdb)
        (path / "opskit-redis.json").write_text(json.dumps({"format": 1, "name": name, "rdb_file": "dump.rdb",
                                                            "keys": keys, "digest": digest}))
        return path

    rdb = bytearray(snapshot)
    middle = len(rdb) // 2
    rdb[middle:middle + 8] = bytes(b ^ 0x5A for b in rdb[middle:middle + 8])
    other = tmp_path / "other"
    other.mkdir()
    with _ScratchServer(str(other)) as server:
        server.cli("SET", "someone-else", "1")
        server.cli("SAVE")
    return ({"sessions": backup_dir("genuine-sessions", snapshot)},
            {"cache": backup_dir("corrupted", bytes(rdb)), "sessions": backup_dir("other-data", (other / "dump.rdb").read_bytes())})


def test_redis_new_snapshot_during_aof_rewrite_drill_and_corrupted_rdb(run_playbook, aof_redis, tmp_path):
    redis, prefix, stopped = aof_redis
    extra = _vars(tmp_path, redis, prefix)
    (tmp_path / "staging").mkdir()
    daily, expected = _daily_during_a_rewrite(run_playbook, redis, prefix, stopped, extra)
    assert daily.rc == 0, daily.stdout[-3000:]
    (cache_bgsave,) = [r for r in daily.results if r["_task"].startswith("Redis | start a background save")]
    assert cache_bgsave["stdout"] == "Background saving scheduled", cache_bgsave  # behind the AOF rewrite
    doc = reports(tmp_path / "reports", "daily")[-1]
    assets = {a["name"]: a for a in doc["assets"]}
    assert assets["cache"]["outcome"] == "written" and assets["cache"]["keys"] == expected, assets["cache"]
    assert len(assets["cache"]["digest"]) == 40 and set(assets) == {"cache"}

    # The snapshot on disk now (nothing was written since) holds the key written just before the
    # backup; sessions is published from it with cache's recorded digest, so the first drill below
    # passing for sessions proves it is the snapshot daily copied (the previous one lacks the key).
    shutil.copy(os.path.join(redis.root, "dump.rdb"), str(tmp_path / "dump.rdb"))
    with _ScratchServer(str(tmp_path)) as server:
        assert server.cli("GET", prefix + "fresh") == "written just before the backup"

    # one more run: the drill passes, then the lies are published as new backups whose sha256
    # is right, and the drill fails for each
    genuine, lies = _fabricate(tmp_path, (tmp_path / "dump.rdb").read_bytes(), expected, assets["cache"]["digest"])
    run = run_playbook(_drills(extra, genuine, lies), extra)
    assert run.rc != 0
    drill_reports = reports(tmp_path / "reports", "dr_drill")
    assert len(drill_reports) == 2, run.stdout[-3000:]
    drilled = {a["name"]: a for a in drill_reports[0]["assets"]}
    assert drill_reports[0]["status"] == "passed" and set(drilled) == {"cache", "sessions"}, run.stdout[-3000:]
    for asset in drilled.values():
        assert asset["kind"] == "redis" and asset["verification"] == "passed" and asset["ok"] is True, asset
        assert asset["rto_seconds"] > 0 and asset["rpo_met"] is True and asset["target"] == "scratch redis-server"
    assert drilled["cache"]["backup_id"] == assets["cache"]["backup_id"]
    # the drill recorded its verdict in the manifests of the backups it passed, and only in those
    verdicts = {}
    for manifest in (tmp_path / "backups").rglob("*.json"):
        doc = json.loads(manifest.read_text())
        if doc.get("format") == "opskit.runbook/backup" and "redis-" in doc.get("series", ""):
            verdicts[doc["id"]] = doc.get("verification", {}).get("result")
    passed_ids = {a["backup_id"] for a in drilled.values()}
    assert {i for i, v in verdicts.items() if v == "passed"} == passed_ids, verdicts

    doc = drill_reports[1]
    assert doc["status"] == "failed"
    bad = {a["name"]: a for a in doc["assets"]}
    assert all(a["verification"] == "failed" and a["ok"] is False for a in bad.values()), bad
    assert "redis-check-rdb" in bad["cache"]["error"], bad["cache"]["error"]
    assert "the scratch server loaded 1 keys" in bad["sessions"]["error"], bad["sessions"]["error"]
    assert "recorded at backup time %d keys" % expected in bad["sessions"]["error"]
    assert "cache" in doc["failure"]["msg"] and "sessions" in doc["failure"]["msg"]
    assert os.listdir(tmp_path / "staging") == []
