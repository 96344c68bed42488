# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run lock of a series (issue 14, item 15) through ansible-playbook, on moto and on a directory.

A verification (pg_backup state=verified) is held in the middle of its restore, without any
timing: the planted plain dump it restores runs ``COMMENT ON ROLE``, whose shared-object lock
the test holds in an open transaction. While it is held:
- a rotation of the same series with lock_timeout 0 fails at once with one line naming it;
- (moto) a rotation with a long lock_timeout waits (moto's log shows its refused
  If-None-Match PUT) and, once the verification recorded ``passed``, keeps the backup it
  verified (without the lock it would have deleted it under the verification);
- (moto) the same rotation, over the whole location, also takes over the expired lock of
  another series left by a holder on another host;
- (directory) the verifying module is SIGKILLed: its lock stays, and the next rotation takes it
  over at once (its holder's process is gone, on this machine) and names the dead holder.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import signal
import threading
import time

import psycopg2
import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

UTC = datetime.timezone.utc
LOCK = ".opskit-lock"


def _playbook(*tasks):
    return json.dumps([{"hosts": "localhost", "gather_facts": False,
                        "tasks": [dict(t, ignore_errors=True) for t in tasks]}])


def _result(run, name):
    res = run.task(name)
    assert res is not None, run.stdout[-3000:]
    return res


def _failed(res):
    return bool(res.get("failed")) or res.get("_status") == "failed"


def _failed_msg(res):
    assert _failed(res), res.get("msg")
    assert "\n" not in res["msg"] and "Traceback" not in res["msg"], res["msg"]
    return res["msg"]


def _plant(location, series, role, when):
    """A plain-format pg backup whose restore blocks on COMMENT ON ROLE while the test holds it."""
    sql = ("CREATE TABLE items (id int);\nINSERT INTO items VALUES (1), (2), (3);\n"
           "COMMENT ON ROLE %s IS 'restored';\n" % role).encode()
    with BackupSession(location, series, "postgres", compression="none", now=when) as session:
        with session.artifact("sql") as out:
            out.write(sql)
        return session.publish(source={"database": "lockdb", "format": "plain", "tables": 1, "globals": False})


class Blocker:
    """COMMENT ON ROLE in an open transaction: the restore's own COMMENT waits until release()."""

    def __init__(self, pg, role):
        self.pg, self.role = pg, role
        self.conn = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password,
                                     dbname="postgres")
        self.conn.cursor().execute("COMMENT ON ROLE %s IS 'held by the test'" % role)

    def wait_for_waiter(self, deadline=180):
        """Until a backend waits on a lock running the restore's COMMENT (the verification is inside)."""
        end = time.monotonic() + deadline
        probe = psycopg2.connect(host=self.pg.host, port=self.pg.port, user=self.pg.user, password=self.pg.password,
                                 dbname="postgres")
        probe.autocommit = True
        try:
            while time.monotonic() < end:
                cur = probe.cursor()
                cur.execute("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                            " AND query LIKE %s", ("%%COMMENT ON ROLE %s IS 'restored'%%" % self.role,))
                if cur.fetchone()[0]:
                    return
                time.sleep(0.05)
        finally:
            probe.close()
        raise AssertionError("the verification never reached its restore")

    def release(self):
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


@pytest.fixture
def role(pg):
    name = "lk_%s" % secrets.token_hex(4)
    pg.psql("CREATE ROLE %s" % name)
    yield name
    pg.psql("DROP ROLE IF EXISTS %s" % name)


def _store(kind, request, tmp_path):
    if kind == "file":
        args = {"location": "file://%s/backups" % tmp_path}
        return args, open_location(args["location"])
    s3 = request.getfixturevalue("s3")
    bucket = s3.new_bucket("opskit-lock")
    args = {"location": "s3://%s/prod" % bucket, "endpoint_url": s3.endpoint_url,
            "access_key": s3.access_key, "secret_key": s3.secret_key, "region": s3.region}
    return args, open_location(args["location"], **{k: v for k, v in args.items() if k != "location"})


def _background(run_playbook, *args, **kwargs):
    out = {}
    thread = threading.Thread(target=lambda: out.update(run=run_playbook(*args, **kwargs)), daemon=True)
    thread.start()
    return thread, out


def _holder(location, series):
    return json.loads(location.read_bytes("%s/%s" % (series, LOCK)))


def _moto_refusals(s3, bucket, series, since):
    """How many If-None-Match PUTs of the lock moto refused (412) after byte ``since`` of its log."""
    with open(s3.log, "rb") as fh:
        fh.seek(since)
        text = fh.read().decode("utf-8", "replace")
    wanted = "PUT /%s/prod/%s/%s " % (bucket, series, LOCK)
    return sum(1 for line in text.splitlines() if wanted in line and '" 412' in line)  # 4xx lines are coloured


def _log_size(s3):
    return os.path.getsize(s3.log)


@pytest.mark.parametrize("kind", ["s3", "file"])
def test_rotation_and_verification_of_one_series_take_turns(kind, request, tmp_path, pg, role, run_playbook):
    args, location = _store(kind, request, tmp_path)
    series = "lk-%s" % secrets.token_hex(3)
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    made = [_plant(location, series, role, now - datetime.timedelta(days=d)) for d in (3, 2, 1)]
    oldest = made[0]["id"]
    pg_conn = dict(host=pg.host, port=pg.port, user=pg.user, password=pg.password)
    verify = {"name": "verify", "opskit.runbook.pg_backup": dict(
        args, state="verified", series=series, backup=oldest, **pg_conn)}

    def rotate(name, **extra):
        options = dict(args, series=series, keep_last=1)
        options.update(extra)
        return {"name": name, "opskit.runbook.s3_rotate": {k: v for k, v in options.items() if v is not None}}

    blocker = Blocker(pg, role)
    try:
        spool = tmp_path / "tmp"  # what the killed verifier leaves (passfile, download) stays in the test's tree
        spool.mkdir()
        verifier, verified = _background(run_playbook, _playbook(verify), env={"TMPDIR": str(spool)})
        blocker.wait_for_waiter()
        holder = _holder(location, series)
        assert holder["module"] == "pg_backup"
        msg = _failed_msg(_result(run_playbook(_playbook(rotate("at once", lock_timeout=0))), "at once"))
        assert msg.startswith("series %s at %s is locked by pg_backup (pid %d on %s, since %s"
                              % (series, location.url, holder["pid"], holder["host"], holder["started"])), msg
        assert msg.endswith("; gave up after 0 s (lock_timeout)"), msg
        assert len(location.list_objects(series + "/")) == 7  # nothing was deleted
        if kind == "s3":
            _race_on_s3(request.getfixturevalue("s3"), location, series, oldest, blocker, verifier, verified,
                        run_playbook, rotate)
        else:
            _kill_and_take_over(location, series, holder, blocker, verifier, run_playbook, rotate, pg)
    finally:
        blocker.release()


def _race_on_s3(s3, location, series, oldest, blocker, verifier, verified, run_playbook, rotate):
    other = series + "-other"
    for days in (2, 1):
        _plant(location, other, "nobody", datetime.datetime.now(UTC) - datetime.timedelta(days=days))
    foreign = {"format": "opskit.runbook/lock", "version": 1, "series": other, "module": "volume_backup",
               "host": "elsewhere", "pid": 4242, "started": "2000-01-01T00:00:00Z",
               "expires": "2000-01-01T00:15:00Z", "nonce": "f" * 32}
    location.write_bytes("%s/%s" % (other, LOCK), json.dumps(foreign).encode())
    since = _log_size(s3)
    # the whole location: both series' locks, in name order
    rotator, rotated = _background(run_playbook, _playbook(rotate("waits", lock_timeout=300, series=None)))
    end = time.monotonic() + 180
    while not _moto_refusals(s3, location.bucket, series, since) and time.monotonic() < end:
        time.sleep(0.05)
    assert _moto_refusals(s3, location.bucket, series, since), "the waiting rotation never tried the lock"
    blocker.release()
    verifier.join(300)
    rotator.join(300)
    res = _result(verified["run"], "verify")
    assert not _failed(res), res.get("msg")
    assert res["verification"]["result"] == "passed" and res["lock"]["taken_over"] is None
    res = _result(rotated["run"], "waits")
    assert not _failed(res), res.get("msg")
    mine = res["series"][series]
    assert mine["lock"]["attempts"] >= 2 and mine["lock"]["taken_over"] is None
    # the verification finished first: its backup is the newest verified one and is kept
    assert mine["newest_verified"] == oldest and mine["deleted"] == []
    theirs = res["series"][other]
    assert theirs["lock"]["taken_over"] == {k: foreign[k] for k in ("module", "host", "pid", "started", "expires")}
    assert len(theirs["deleted"]) == 1
    assert any(w.startswith("took over the lock of series %s left by volume_backup (pid 4242 on elsewhere" % other)
               and w.endswith("which expired") for w in res["warnings"]), res["warnings"]
    assert location.head("%s/%s" % (series, LOCK)) is None and location.head("%s/%s" % (other, LOCK)) is None


def _kill_and_take_over(location, series, holder, blocker, verifier, run_playbook, rotate, pg):
    os.kill(holder["pid"], signal.SIGKILL)   # the verifying module dies holding the lock
    verifier.join(300)
    blocker.release()
    assert _holder(location, series)["pid"] == holder["pid"]
    run = run_playbook(_playbook(rotate("takes over", lock_timeout=0)))  # long before its expiry
    res = _result(run, "takes over")
    assert not _failed(res), res.get("msg")
    mine = res["series"][series]
    assert mine["lock"]["taken_over"] == {k: holder[k] for k in ("module", "host", "pid", "started", "expires")}
    assert any(w.startswith("took over the lock of series %s left by pg_backup (pid %d" % (series, holder["pid"]))
               and w.endswith("whose process is gone") for w in res.get("warnings", [])), res.get("warnings")
    assert [d["id"] for d in mine["deleted"]] and location.head("%s/%s" % (series, LOCK)) is None
    with contextlib.suppress(Exception):
        for name in pg.psql("SELECT datname FROM pg_database WHERE datname LIKE 'opskit_verify_%'").split():
            pg.psql('DROP DATABASE IF EXISTS "%s" WITH (FORCE)' % name)
