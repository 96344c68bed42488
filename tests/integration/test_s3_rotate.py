# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""s3_rotate through ansible-playbook on a real directory and a real S3 endpoint (moto)."""

from __future__ import annotations

import datetime
import functools
import json
import os
import signal
import subprocess
import sys

import pytest

from harness import COLLECTIONS

from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._retention.plan import Backup, plan_rotation
from ansible_collections.opskit.runbook.plugins.module_utils._retention.policy import parse_policy

UTC = datetime.timezone.utc
# The fixed clock of every playbook here (see run_playbook's clock), a Thursday. The history is
# built from it, so the plan is the same on every day of the week, and the verified backup (10
# days old, a Monday) is kept by the verified guard alone, not by a weekly rule. The clock lies
# in the future so that what S3 stamps with the real time (the orphan's LastModified) is older
# than the orphan grace, as the leftovers of crashed runs would be. (moto dates every multipart
# upload's Initiated 2010-11-10, so the incomplete upload is old on any clock.)
NOW = datetime.datetime(2100, 3, 11, 12, 0, 0, tzinfo=UTC)
SECRET = "s3cr3t-Rotate-never-shown-9876543210"
POLICY = dict(keep_daily=7, keep_weekly=4, timezone="Europe/Berlin")   # orphan_grace: the default 24h

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: rotate
      opskit.runbook.s3_rotate: "{{ rotate_args }}"
      diff: true
"""


@pytest.fixture
def run_playbook(run_playbook):
    """Every playbook of this file runs on the fixed clock NOW."""
    return functools.partial(run_playbook, clock=NOW)


def _write(location, series, when, verified=False):
    with BackupSession(location, series, "generic", compression="none", now=when) as session:
        with session.artifact("bin") as out:
            out.write(b"payload " + when.isoformat().encode())
        manifest = session.publish()
    if verified:
        manifest = catalog.update_verification(location, manifest, "restore", "passed")
    return manifest


def _days_ago(days):
    return (NOW - datetime.timedelta(days=days)).replace(hour=2, minute=0, second=0)


def _s3_location(s3, bucket_args=None):
    bucket = "opskit-rot-%s" % os.urandom(6).hex()
    s3.client.create_bucket(Bucket=bucket, **(bucket_args or {}))
    args = {"location": "s3://%s/prod" % bucket, "endpoint_url": s3.endpoint_url,
            "access_key": s3.access_key, "secret_key": s3.secret_key}
    return args, open_location(args["location"], **{k: v for k, v in args.items() if k != "location"})


@pytest.fixture(params=["file", "s3"])
def history(request, tmp_path):
    """db: one backup a day for 40 days (the 10-day-old one verified); cfg: 3 backups;
    an orphan artifact and a partial write (S3: an incomplete multipart upload) in db."""
    if request.param == "file":
        args = {"location": "file://%s/backups" % tmp_path}
        location = open_location(args["location"])
    else:
        args, location = _s3_location(request.getfixturevalue("s3"))
    made = [_write(location, "db", _days_ago(d), verified=(d == 10)) for d in range(1, 41)]
    for d in (1, 2, 3):
        _write(location, "cfg", _days_ago(d))
    orphan = "db/%s.bin" % catalog.new_backup_id(_days_ago(50))
    location.write_bytes(orphan, b"half a backup")
    if location.scheme == "s3":
        location.client.create_multipart_upload(Bucket=location.bucket, Key=location.full_key(
            "db/%s.bin" % catalog.new_backup_id(_days_ago(45))))
        partial = None
    else:
        partial = "db/.%s.bin.partial-0badc0de" % catalog.new_backup_id(_days_ago(45))
        with open(location.path(partial), "wb") as fh:
            fh.write(b"partial")
    if location.scheme == "file":
        # leftovers of crashed runs weeks ago: old modification times
        for key, days in ((orphan, 50), (partial, 45)):
            stamp = _days_ago(days).timestamp()
            os.utime(location.path(key), (stamp, stamp))
    return args, location, made, orphan, partial


def _keys(location):
    return sorted(i.key for i in location.list_objects())


def test_check_mode_then_rotate_then_nothing_to_do(run_playbook, history):
    args, location, made, orphan, partial = history
    rotate_args = dict(args, **POLICY)
    before = _keys(location)
    expected = plan_rotation([Backup(m["id"], catalog.backup_time(m["id"])) for m in made],
                             parse_policy(keep_daily=7, keep_weekly=4, timezone="Europe/Berlin"),
                             NOW, newest_verified=made[9]["id"])
    expected_deleted = [b.id for b in expected["deleted"]]
    assert len(expected_deleted) == 28   # of the 40, on this clock

    checked = run_playbook(PLAY, {"rotate_args": rotate_args}, check=True)
    res = checked.task("rotate")
    assert checked.rc == 0, checked.stdout[-3000:]
    assert res["changed"] is True
    assert _keys(location) == before, "check mode deleted something"
    db = res["series"]["db"]
    assert [d["id"] for d in db["deleted"]] == expected_deleted
    assert db["newest_verified"] == made[9]["id"]
    kept = {k["id"]: k["reasons"] for k in db["kept"]}
    assert kept[made[9]["id"]] == ["newest verified"]
    assert kept[made[8]["id"]] == ["newer than the newest verified"]
    assert any(r.startswith("weekly ") for r in kept[made[0]["id"]])
    assert res["series"]["cfg"]["counts"] == dict(backups=3, kept=3, deleted=0, locked=0, orphans_deleted=0,
                                                  orphans_kept=0, uploads_aborted=0, anomalies=0)
    assert sorted(o["key"] for o in db["orphans"] if o["action"] == "deleted") == \
        sorted([orphan] + ([partial] if partial else []))
    if location.scheme == "s3":
        assert [u["action"] for u in db["uploads"]] == ["aborted"]
        assert len(location.list_multipart_uploads()) == 1
    assert res["diff"]["before"].count("\n") == 43
    assert res["diff"]["after"].count("\n") == 43 - len(expected_deleted)
    assert res["requests"]["delete_calls"] == 0

    applied = run_playbook(PLAY, {"rotate_args": rotate_args})
    res2 = applied.task("rotate")
    assert applied.rc == 0 and res2["changed"] is True
    assert res2["series"]["db"]["deleted"] == db["deleted"]
    after = _keys(location)
    for backup_id in expected_deleted:
        assert not any(backup_id in key for key in after)
    assert orphan not in after
    assert len(after) == len(before) - 2 * len(expected_deleted) - 1 - (1 if partial else 0)
    if location.scheme == "s3":
        assert location.list_multipart_uploads() == []
        assert res2["requests"]["delete_calls"] == 2   # artifacts + orphan, then manifests
    else:
        assert not os.path.exists(location.path(partial))
    survivors = catalog.list_backups(location, "db")["db"]
    assert [m["id"] for m in survivors] == [k["id"] for k in db["kept"]]

    again = run_playbook(PLAY, {"rotate_args": rotate_args})
    res3 = again.task("rotate")
    assert again.rc == 0 and res3["changed"] is False
    assert res3["series"]["db"]["deleted"] == []
    # the 3 backups kept only by the verified guard are candidates again: one batch of reads
    assert 10 <= res3["series"]["db"]["manifests_read"] <= 16
    assert res3["series"]["cfg"]["manifests_read"] == 0
    assert _keys(location) == after


def test_object_lock_and_legal_hold_are_never_deleted(run_playbook, s3):
    args, location = _s3_location(s3, {"ObjectLockEnabledForBucket": True})
    made = [_write(location, "db", _days_ago(d)) for d in range(1, 6)]
    oldest, second = made[-1], made[-2]
    s3.client.put_object_legal_hold(Bucket=location.bucket, Key=location.full_key("db/" + oldest["artifact"]),
                                    LegalHold={"Status": "ON"})
    until = NOW + datetime.timedelta(days=30)
    s3.client.put_object_retention(Bucket=location.bucket,
                                   Key=location.full_key(catalog.manifest_key("db", second["id"])),
                                   Retention={"Mode": "GOVERNANCE", "RetainUntilDate": until})
    run = run_playbook(PLAY, {"rotate_args": dict(args, keep_last=1)})
    res = run.task("rotate")
    assert run.rc == 0, run.stdout[-3000:]
    db = res["series"]["db"]
    assert {x["id"]: x["reason"] for x in db["locked"]} == {
        oldest["id"]: "legal hold",
        second["id"]: "object lock GOVERNANCE until %s" % until.strftime("%Y-%m-%dT%H:%M:%SZ")}
    assert [d["id"] for d in db["deleted"]] == [m["id"] for m in made[1:3]]
    assert res["requests"]["lock_checks"] == 1 + 2 * 4   # configuration + one HEAD per key of 4 candidates
    listed = [m["id"] for m in catalog.list_backups(location, "db")["db"]]
    assert listed == [made[0]["id"], second["id"], oldest["id"]]
    again = run_playbook(PLAY, {"rotate_args": dict(args, keep_last=1)})
    assert again.task("rotate")["changed"] is False


BAD = """
- hosts: localhost
  gather_facts: false
  tasks:
""" + "".join("""
    - name: {name}
      opskit.runbook.s3_rotate: "{{{{ base | combine({options}) }}}}"
      ignore_errors: true
""".format(name=name, options=options) for name, options in [
    ("negative", "{'keep_daily': -3}"),
    ("duration", "{'keep_daily': 7, 'keep_within': '30 days'}"),
    ("timezone", "{'keep_daily': 7, 'timezone': 'Mars/Olympus_Mons'}"),
    ("series", "{'keep_daily': 7, 'series': 'no-such-series'}"),
    ("empty", "{}"),
    ("grace", "{'keep_daily': 7, 'orphan_grace': 'a while'}"),
    ("short_grace", "{'keep_daily': 7, 'orphan_grace': '1s'}"),
    ("empty_series", "{'keep_daily': 7, 'series': ''}"),
])


def test_bad_input_fails_with_one_line_errors(run_playbook, s3):
    bucket = s3.new_bucket("opskit-rot")
    location = open_location("s3://%s" % bucket, endpoint_url=s3.endpoint_url,
                             access_key=s3.access_key, secret_key=s3.secret_key)
    _write(location, "db", _days_ago(1))
    # moto accepts any secret: a distinctive one shows that no error or log line carries it
    base = {"location": "s3://%s" % bucket, "endpoint_url": s3.endpoint_url,
            "access_key": s3.access_key, "secret_key": SECRET}
    run = run_playbook(BAD, {"base": base})
    expected = {
        "negative": "keep_daily: -3 is not valid: use a count of 0 or more, or -1 for unlimited",
        "duration": "keep_within: cannot parse duration '30 days'",
        "timezone": "timezone 'Mars/Olympus_Mons' is unknown",
        "series": "series no-such-series not found at s3://%s" % bucket,
        "empty": "empty retention policy",
        "grace": "orphan_grace: cannot parse duration 'a while'",
        "short_grace": "orphan_grace: 1s is too short: use at least 1h",
        "empty_series": "series: an empty name is not valid; leave series out (null) to rotate every series",
    }
    for name, message in expected.items():
        result = run.task(name)
        assert result["_status"] == "failed", name
        assert message in result["msg"], (name, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result.get("module_stderr", "")
    assert len(catalog.list_backups(location, "db")["db"]) == 1
    assert SECRET not in run.stdout and SECRET not in run.stderr


@pytest.fixture(params=["file", "s3"])
def store(request, tmp_path):
    """An empty location (file:// or s3:// on moto): (module args, Location)."""
    if request.param == "file":
        args = {"location": "file://%s/backups" % tmp_path}
        return args, open_location(args["location"])
    return _s3_location(request.getfixturevalue("s3"))


def _spoil(location, key, how):
    if how == "corrupt":
        location.write_bytes(key, b'{"format": "opskit.runbook/backup", "vers\x00\xff')
    else:  # written by a newer version of the collection
        manifest = json.loads(location.read_bytes(key).decode())
        manifest.update(version=catalog.MANIFEST_VERSION + 1, verification={"result": "passed", "v2": {}})
        location.write_bytes(key, json.dumps(manifest).encode())


@pytest.mark.parametrize("how", ["corrupt", "newer-version"])
def test_an_unreadable_manifest_fails_closed(run_playbook, store, how):
    """Issue 14 item 1: the third newest manifest cannot be read, so it may be the newest verified
    backup: rotation keeps it and every older backup (and the newer ones), warns, and rotates the
    other series as usual."""
    args, location = store
    made = [_write(location, "db", _days_ago(d)) for d in range(1, 7)]
    others = [_write(location, "cfg", _days_ago(d)) for d in range(1, 4)]
    spoiled = made[2]["id"]
    _spoil(location, catalog.manifest_key("db", spoiled), how)
    before = [k for k in _keys(location) if k.startswith("db/")]
    run = run_playbook(PLAY, {"rotate_args": dict(args, keep_last=1)})
    res = run.task("rotate")
    assert run.rc == 0, run.stdout[-3000:]
    db = res["series"]["db"]
    assert db["deleted"] == [] and [k for k in _keys(location) if k.startswith("db/")] == before
    reasons = {k["id"]: k["reasons"] for k in db["kept"]}
    assert "manifest unreadable" in reasons[spoiled]
    assert all(reasons[m["id"]] == ["older than an unreadable manifest"] for m in made[3:])
    assert reasons[made[1]["id"]] == ["newer than an unreadable manifest"]
    assert [a["id"] for a in db["anomalies"]] == [spoiled] and "fail closed" in db["anomalies"][0]["problem"]
    assert any(spoiled in w and "fail closed" in w for w in res.get("warnings", [])), res.get("warnings")
    assert "[WARNING]" in run.stdout + run.stderr
    assert [d["id"] for d in res["series"]["cfg"]["deleted"]] == [m["id"] for m in others[1:]]


# A backup writer in its own process: a finished companion (with "globals"), then the main artifact, large enough
# that S3 has started a multipart upload (5 MiB parts). It says WRITING and waits for a line on
# stdin (then finishes and publishes) or for its kill.
WRITER = """
import json, os, sys
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
args = json.loads(os.environ["WRITER_ARGS"])
location = open_location(args.pop("location"), **args)
with BackupSession(location, sys.argv[1], "generic", compression="none", size_hint=1) as session:
    if "globals" in sys.argv[2:]:
        with session.artifact("sql", name="globals") as out:
            out.write(b"CREATE ROLE app;")
    with session.artifact("bin") as out:
        out.write(b"x" * (6 * 1024 * 1024))
        print("WRITING", session.id, flush=True)
        sys.stdin.readline()
        out.write(b"the end")
    session.publish()
print("PUBLISHED", flush=True)
"""


def _start_writer(args, series, *options):
    env = dict(os.environ, WRITER_ARGS=json.dumps(args), PYTHONPATH=COLLECTIONS)
    proc = subprocess.Popen([sys.executable, "-c", WRITER, series] + list(options), env=env, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline().split()
    if line[:1] != ["WRITING"]:
        proc.kill()
        raise AssertionError("the writer did not start: %s %s" % (line, proc.stderr.read()[-2000:]))
    return proc, line[1]


def _leftovers(location, series):
    """(keys of the listing, partial files or multipart uploads) of a series."""
    keys = [k for k in _keys(location) if k.startswith(series + "/") and catalog.parse_key(k)]
    if location.scheme == "s3":
        return keys, sorted(k for k, _u, _i in location.list_multipart_uploads() if k.startswith(series + "/"))
    return keys, sorted(i.key for i in location.list_temporary() if i.key.startswith(series + "/"))


@pytest.mark.parametrize("scope", ["location", "series"])
def test_a_killed_first_backup_of_a_new_series_is_cleaned_up(run_playbook, store, scope):
    """Issue 14 item 21: the first backup of a new series is killed (SIGKILL) while its main
    artifact is being written. The series' only content is then a partial file (file://) or an
    incomplete multipart upload (s3://), and its in-flight marker. On the clock of the next day,
    rotation over the whole location (or of that series) finds the series and removes them."""
    args, location = store
    _write(location, "db", _days_ago(3))
    proc, backup_id = _start_writer(args, "fresh")
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert _leftovers(location, "fresh")[0] == []
    partial = _leftovers(location, "fresh")[1]
    assert len(partial) == 1 and backup_id in partial[0], partial
    assert location.head(catalog.inflight_key("fresh", backup_id)) is not None, "the session wrote no marker"
    later = datetime.datetime.now(UTC) + datetime.timedelta(hours=25)   # the marker expired
    rotate_args = dict(args, keep_last=3, **({"series": "fresh"} if scope == "series" else {}))
    run = run_playbook(PLAY, {"rotate_args": rotate_args}, clock=later)
    res = run.task("rotate")
    assert run.rc == 0, run.stdout[-3000:]
    fresh = res["series"]["fresh"]
    assert res["changed"] is True and fresh["kept"] == [] and fresh["deleted"] == []
    if location.scheme == "s3":
        assert [(u["key"], u["action"]) for u in fresh["uploads"]] == [(partial[0], "aborted")]
    else:
        assert [(o["key"], o["action"]) for o in fresh["orphans"]] == [(partial[0], "deleted")]
    assert _leftovers(location, "fresh") == ([], [])
    assert location.head(catalog.inflight_key("fresh", backup_id)) is None, "the expired marker stays"
    if scope == "location":
        assert res["series"]["db"]["counts"]["kept"] == 1
    again = run_playbook(PLAY, {"rotate_args": dict(args, keep_last=3)}, clock=later)
    assert again.rc == 0 and again.task("rotate")["changed"] is False


def test_rotation_during_a_backup_leaves_it_whole(run_playbook, store):
    """Issue 14 items 5 and 21: rotation runs while a backup is writing its main artifact, on a
    clock where its pieces are older than the grace (and moto dates every multipart upload
    2010-11-10 anyway), so only its in-flight marker protects them: nothing of it is touched,
    and the backup then publishes with its companion."""
    args, location = store
    _write(location, "db", _days_ago(3))
    proc, backup_id = _start_writer(args, "db", "globals")
    try:
        keys, partial = _leftovers(location, "db")
        companion = "db/%s.globals.sql" % backup_id
        assert companion in keys and len(partial) == 1
        # two hours later, with the shortest grace: every piece is older than the grace, but the
        # marker (24 hours) is live
        later = datetime.datetime.now(UTC) + datetime.timedelta(hours=2)
        run = run_playbook(PLAY, {"rotate_args": dict(args, keep_last=1, orphan_grace="1h")}, clock=later)
        res = run.task("rotate")
        assert run.rc == 0, run.stdout[-3000:]
        db = res["series"]["db"]
        pieces = db["orphans"] + db["uploads"]
        assert pieces and all(p["action"] == "kept" and p.get("in_flight") for p in pieces), pieces
        assert res["changed"] is False
        assert _leftovers(location, "db") == (keys, partial)
        out, err = proc.communicate("go\n", timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0 and "PUBLISHED" in out, err[-2000:]
    manifest = catalog.read_manifest(location, "db", backup_id)
    assert [c["key"] for c in manifest["companions"]] == [companion.split("/")[1]]
    assert location.read_bytes(companion) == b"CREATE ROLE app;"
