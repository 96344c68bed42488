# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run lock of a series (_engine/lock.py) and the storage primitives under it.

On a real directory (FileLocation), with a fake clock; the races run real processes. The S3
primitives' error mapping is checked against a fake client (moto is in the integration tests).
"""

from __future__ import annotations

import datetime
import json
import multiprocessing
import os
import time

import pytest
from botocore.exceptions import ClientError

from ansible_collections.opskit.runbook.plugins.module_utils._engine import lock as run_lock
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, NotFoundError, StorageError
from ansible_collections.opskit.runbook.plugins.module_utils._storage import s3 as s3_backend
from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import ChangedError, ExistsError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation

UTC = datetime.timezone.utc
T0 = datetime.datetime(2026, 11, 10, 3, 0, tzinfo=UTC)
KEY = "db1/.opskit-lock"


class Clock:
    def __init__(self, now=T0):
        self.now, self.mono, self.sleeps = now, 0.0, []

    def __call__(self):
        return self.now

    def monotonic(self):
        return self.mono

    def sleep(self, seconds, then=None):
        self.sleeps.append(seconds)
        self.mono += seconds
        self.now += datetime.timedelta(seconds=seconds)


def make(loc, clock, module="s3_rotate", timeout=0, **kwargs):
    return run_lock.SeriesLock(loc, "db1", module, timeout, clock=clock, sleep=clock.sleep,
                               monotonic=clock.monotonic, **kwargs)


def plant(loc, **fields):
    holder = dict(format=run_lock.LOCK_FORMAT, version=1, series="db1", module="pg_backup", host="db9",
                  pid=4242, started="2026-11-10T02:00:00Z", expires="2026-11-10T02:15:00Z", nonce="x" * 32)
    holder.update(fields)
    loc.write_bytes(KEY, json.dumps(holder).encode())


@pytest.fixture
def loc(tmp_path):
    return FileLocation(str(tmp_path / "store"))


def test_held_while_in_the_block_with_its_holder_and_gone_after(loc):
    clock = Clock()
    with make(loc, clock, module="pg_backup") as held:
        record = json.loads(loc.read_bytes(KEY))
        assert {k: record[k] for k in ("module", "pid", "started", "expires", "series")} == {
            "module": "pg_backup", "pid": os.getpid(), "started": "2026-11-10T03:00:00Z",
            "expires": "2026-11-10T03:15:00Z", "series": "db1"}
        assert record["host"] and len(record["nonce"]) == 32
    assert loc.head(KEY) is None
    assert held.report() == {"key": KEY, "waited_seconds": 0.0, "attempts": 1, "taken_over": None}


def test_a_live_holder_times_out_with_one_line_naming_it(loc):
    plant(loc, expires="2026-11-10T03:10:00Z")
    clock = Clock()
    with pytest.raises(run_lock.LockTimeout) as err:
        make(loc, clock, timeout=30).acquire()
    assert err.value.msg == ("series db1 at %s is locked by pg_backup (pid 4242 on db9, since 2026-11-10T02:00:00Z,"
                             " expires 2026-11-10T03:10:00Z); gave up after 30 s (lock_timeout)" % loc.url)
    assert "\n" not in err.value.msg and "nonce" not in json.dumps(err.value.result)
    assert err.value.result["lock"]["holder"]["pid"] == 4242
    assert sum(clock.sleeps) == pytest.approx(30) and max(clock.sleeps) <= run_lock.POLL_MAX
    assert json.loads(loc.read_bytes(KEY))["nonce"] == "x" * 32  # untouched


def test_waits_until_the_holder_releases(loc):
    clock = Clock()
    first = make(loc, clock, module="pg_backup").acquire()
    second = make(loc, clock, timeout=60)
    released = []

    def sleep(seconds):
        clock.sleep(seconds)
        if len(clock.sleeps) == 3:
            first.release()
            released.append(clock.mono)
    second.sleep = sleep
    with second:
        assert json.loads(loc.read_bytes(KEY))["module"] == "s3_rotate"
    assert second.report()["attempts"] == 4 and second.report()["waited_seconds"] == pytest.approx(released[0])


def test_an_expired_lock_of_a_dead_holder_is_taken_over_and_reported(loc):
    plant(loc)  # expired 45 minutes ago
    clock = Clock()
    with make(loc, clock) as held:
        assert json.loads(loc.read_bytes(KEY))["nonce"] == held.nonce
    report = held.report()
    assert report["taken_over"] == {"module": "pg_backup", "host": "db9", "pid": 4242,
                                    "started": "2026-11-10T02:00:00Z", "expires": "2026-11-10T02:15:00Z"}
    assert report["warnings"] == ["took over the lock of series db1 left by pg_backup (pid 4242 on db9, since"
                                  " 2026-11-10T02:00:00Z, expires 2026-11-10T02:15:00Z), which expired"]
    assert loc.head(KEY) is None


def test_an_unreadable_lock_counts_as_held_until_ttl_after_it_was_written(loc):
    loc.write_bytes(KEY, b"")  # a torn write of a killed holder
    written = loc.head(KEY).modified
    clock = Clock(written + datetime.timedelta(seconds=60))
    with pytest.raises(run_lock.LockTimeout, match="locked by an unreadable lock record"):
        make(loc, clock).acquire()
    clock.now = written + datetime.timedelta(seconds=run_lock.LOCK_TTL + 1)
    with make(loc, clock) as held:
        pass
    assert held.report()["taken_over"] == {"unreadable": True}


def test_our_own_lock_whose_create_response_was_lost_is_ours(loc):
    clock = Clock()
    mine = make(loc, clock)
    plant(loc, nonce=mine.nonce, expires="2026-11-10T03:15:00Z")
    with mine:
        pass
    assert mine.report()["attempts"] == 1 and mine.report()["taken_over"] is None and loc.head(KEY) is None


def test_renewal_pushes_expires_and_a_lock_taken_over_meanwhile_is_left_to_its_new_holder(loc):
    clock = Clock()
    held = make(loc, clock).acquire()
    clock.now += datetime.timedelta(minutes=5)
    assert held.renew() is True
    assert json.loads(loc.read_bytes(KEY))["expires"] == "2026-11-10T03:20:00Z"
    assert json.loads(loc.read_bytes(KEY))["started"] == "2026-11-10T03:00:00Z"
    time.sleep(0.01)  # a new mtime for the overwrite below
    plant(loc, module="volume_backup", nonce="y" * 32)  # someone took it over (our clock was stopped)
    assert held.renew() is False
    held.release()
    assert json.loads(loc.read_bytes(KEY))["nonce"] == "y" * 32
    assert held.report()["warnings"] == ["the lock of series db1 was taken over by another run meanwhile"]


def test_release_never_deletes_a_lock_that_is_not_ours(loc):
    clock = Clock()
    held = make(loc, clock).acquire()
    time.sleep(0.01)
    plant(loc, nonce="z" * 32)
    held.release()
    assert json.loads(loc.read_bytes(KEY))["nonce"] == "z" * 32
    assert "taken over" in held.report()["warnings"][0]


def test_a_signal_while_waiting_leaves_no_lock(loc):
    clock = Clock()
    plant(loc, expires="2026-11-10T03:10:00Z")
    waiting = make(loc, clock, timeout=60)

    def interrupted(_seconds):
        raise KeyboardInterrupt
    waiting.sleep = interrupted
    with pytest.raises(KeyboardInterrupt):
        waiting.acquire()
    assert json.loads(loc.read_bytes(KEY))["nonce"] == "x" * 32


@pytest.mark.parametrize("value", [-1, 86401, 1.5, True, "10m"])
def test_lock_timeout_is_validated(value):
    with pytest.raises(ConfigError, match="lock_timeout"):
        run_lock.check_timeout(value)


def test_lock_timeout_default_and_bounds():
    assert run_lock.check_timeout(None) == run_lock.DEFAULT_LOCK_TIMEOUT == 600
    assert run_lock.check_timeout(0) == 0 and run_lock.check_timeout(86400) == 86400


def test_series_locks_are_taken_in_name_order_and_all_released(loc):
    order = []

    class Recording(FileLocation):
        def create_exclusive(self, key, data, content_type=None):
            order.append(key)
            return super().create_exclusive(key, data, content_type)
    rec = Recording(loc.root)
    with run_lock.series_locks(rec, ["b", "a", "c", "a"], "s3_rotate") as locks:
        assert sorted(locks) == ["a", "b", "c"]
    assert order == ["a/.opskit-lock", "b/.opskit-lock", "c/.opskit-lock"]
    assert rec.list_objects() == []


# ----------------------------------------------------------- the file primitives

def test_file_create_exclusive_and_conditional_delete(loc):
    token = loc.create_exclusive("s/k", b"one")
    with pytest.raises(ExistsError):
        loc.create_exclusive("s/k", b"two")
    assert loc.read_bytes("s/k") == b"one"
    data, read_token = loc.read_versioned("s/k")
    assert read_token == token
    new_token = loc.replace_bytes("s/k", b"three", token)
    assert new_token != token and loc.read_versioned("s/k") == (b"three", new_token)
    with pytest.raises(ChangedError):
        loc.delete_if("s/k", token)
    assert loc.delete_if("s/k", new_token) is True
    assert loc.delete_if("s/k", new_token) is False
    assert [i.key for i in loc.list_objects()] == []  # the guard lives in a hidden directory


def _contender(root, series, rounds, inside, log):
    """A process that takes the lock ``rounds`` times and checks nobody else is inside."""
    location = FileLocation(root)
    for _round in range(rounds):
        with run_lock.SeriesLock(location, series, "proc", 120, sleep=lambda s: time.sleep(min(s, 0.01))):
            fd = os.open(inside, os.O_CREAT | os.O_EXCL | os.O_WRONLY)  # fails if another one is inside
            os.close(fd)
            with open(log, "a") as fh:
                fh.write("%d\n" % os.getpid())
            time.sleep(0.002)
            os.unlink(inside)


def _run_contenders(root, tmp_path, count=6, rounds=5):
    ctx = multiprocessing.get_context("fork")
    inside, log = str(tmp_path / "inside"), str(tmp_path / "log")
    procs = [ctx.Process(target=_contender, args=(root, "db1", rounds, inside, log)) for _i in range(count)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join(120)
    assert [proc.exitcode for proc in procs] == [0] * count
    with open(log) as fh:
        assert len(fh.read().split()) == count * rounds


def test_processes_racing_for_the_lock_never_overlap(loc, tmp_path):
    _run_contenders(loc.root, tmp_path)
    assert loc.head(KEY) is None


def test_processes_racing_to_take_over_an_expired_lock_never_overlap(loc, tmp_path):
    plant(loc, expires="2000-01-01T00:00:00Z")
    _run_contenders(loc.root, tmp_path, count=6, rounds=1)
    assert loc.head(KEY) is None


# ------------------------------------------------------------- the S3 primitives

def _err(code, status):
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


class FakeS3:
    """Answers put_object / delete_object / head_object with the errors given, in order."""

    def __init__(self, *answers):
        self.answers, self.calls = list(answers), []

    def _answer(self, name, kwargs):
        self.calls.append((name, {k: v for k, v in kwargs.items() if k != "Body"}))
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    def put_object(self, **kwargs):
        return self._answer("put_object", kwargs)

    def delete_object(self, **kwargs):
        return self._answer("delete_object", kwargs)

    def head_object(self, **kwargs):
        return self._answer("head_object", kwargs)

    def list_object_versions(self, **kwargs):
        return self._answer("list_object_versions", kwargs)


def _s3(*answers):
    fake = FakeS3(*answers)
    return s3_backend.S3Location("bucket", "p", client=fake), fake


def test_s3_create_exclusive_sends_if_none_match_and_maps_412():
    loc, fake = _s3({"ETag": '"a"'}, _err("PreconditionFailed", 412))
    assert loc.create_exclusive("s/k", b"x") == '"a"'
    assert fake.calls[0] == ("put_object", {"Bucket": "bucket", "Key": "p/s/k", "IfNoneMatch": "*"})
    with pytest.raises(ExistsError):
        loc.create_exclusive("s/k", b"x")
    assert loc.conditional_writes is True


def test_s3_without_conditional_writes_falls_back_and_says_so():
    loc, fake = _s3(_err("NotImplemented", 501), _err("404", 404), {"ETag": '"b"'})
    assert loc.create_exclusive("s/k", b"x") == '"b"'
    assert [c[0] for c in fake.calls] == ["put_object", "head_object", "put_object"]
    assert "IfNoneMatch" not in fake.calls[2][1] and loc.conditional_writes is False
    loc, fake = _s3(_err("NotImplemented", 501), {"ContentLength": 1, "LastModified": T0})
    with pytest.raises(ExistsError):
        loc.create_exclusive("s/k", b"x")


def test_s3_delete_if_compares_the_etag_then_sends_if_match_and_maps_the_answers():
    A = {"ETag": '"a"'}
    loc, fake = _s3(A, {}, A, _err("PreconditionFailed", 412), A, _err("NoSuchKey", 404), A, _err("AccessDenied", 403))
    assert loc.delete_if("s/k", '"a"') is True
    assert fake.calls[:2] == [("head_object", {"Bucket": "bucket", "Key": "p/s/k"}),
                              ("delete_object", {"Bucket": "bucket", "Key": "p/s/k", "IfMatch": '"a"'})]
    with pytest.raises(ChangedError):
        loc.delete_if("s/k", '"a"')
    assert loc.delete_if("s/k", '"a"') is False
    with pytest.raises(StorageError, match="access denied"):
        loc.delete_if("s/k", '"a"')


def test_s3_delete_if_never_sends_a_delete_for_a_changed_or_missing_object():
    """Ceph RGW 16 ignores If-Match on DeleteObject: a run whose lock was taken over must not
    delete the new holder's lock, so the ETag is compared before any delete is sent."""
    loc, fake = _s3({"ETag": '"theirs"'}, _err("404", 404))
    with pytest.raises(ChangedError):
        loc.delete_if("s/k", '"mine"')
    assert loc.delete_if("s/k", '"mine"') is False
    assert [c[0] for c in fake.calls] == ["head_object", "head_object"]


def test_s3_delete_if_without_conditional_deletes_compares_the_etag_first():
    loc, fake = _s3({"ETag": '"a"'}, _err("NotImplemented", 501), {"ETag": '"other"'})
    with pytest.raises(ChangedError):
        loc.delete_if("s/k", '"a"')
    loc, fake = _s3({"ETag": '"a"'}, _err("NotImplemented", 501), {"ETag": '"a"'}, {})
    assert loc.delete_if("s/k", '"a"') is True
    assert [c[0] for c in fake.calls] == ["head_object", "delete_object", "head_object", "delete_object"]


def _versions(*entries):
    """A ListObjectVersions answer for p/s/k, newest first: ("v", id, second) or ("m", id, second)."""
    out = {"Versions": [], "DeleteMarkers": []}
    for kind, vid, second in entries:
        out["Versions" if kind == "v" else "DeleteMarkers"].append(
            {"Key": "p/s/k", "VersionId": vid, "LastModified": T0 + datetime.timedelta(seconds=second)})
    return out


@pytest.mark.parametrize("history, won", [
    ((("v", "ours", 9),), True),                                    # the first version of the key
    ((("v", "ours", 9), ("m", "m1", 5), ("v", "old", 3)), True),    # the previous lock was released
    ((("v", "ours", 9), ("v", "held", 5)), False),                  # someone holds it: ours overwrote
    ((("v", "ours", 9), ("v", "held", 5), ("m", "m1", 4), ("v", "old", 2)), False),
    ((("v", "other", 9), ("v", "ours", 8), ("m", "m1", 5)), True),  # a racer wrote above us: it withdraws
])
def test_s3_create_exclusive_on_a_versioned_bucket_that_ignores_if_none_match(history, won):
    """Ceph RGW 16 accepts If-None-Match: * on a versioned (Object Lock) bucket and overwrites:
    the version right below ours decides. Where it is a live object, ours is withdrawn by its
    version id and the caller sees ExistsError; of two racers the older version wins."""
    answers = [{"ETag": '"e"', "VersionId": "ours"}, _versions(*history)]
    loc, fake = _s3(*answers + ([] if won else [{}]))
    if won:
        assert loc.create_exclusive("s/k", b"x") == '"e"'
        assert [c[0] for c in fake.calls] == ["put_object", "list_object_versions"]
    else:
        with pytest.raises(ExistsError):
            loc.create_exclusive("s/k", b"x")
        assert fake.calls[-1] == ("delete_object", {"Bucket": "bucket", "Key": "p/s/k", "VersionId": "ours"})


def test_file_download_is_pinned_to_the_version_read(loc, tmp_path):
    loc.write_bytes("s/a", b"first")
    token = loc.pin("s/a")
    out = tmp_path / "copy"
    with open(out, "wb") as fh:
        assert loc.download("s/a", fh.fileno(), token) == 5
    assert out.read_bytes() == b"first"
    time.sleep(0.01)
    loc.write_bytes("s/a", b"other")  # overwritten by rename, as every writer does
    with open(out, "wb") as fh, pytest.raises(ChangedError, match="changed since it was pinned"):
        loc.download("s/a", fh.fileno(), token)
    with pytest.raises(NotFoundError):
        loc.pin("s/missing")


def test_a_lock_of_a_dead_process_of_this_machine_is_taken_over_before_it_expires(loc):
    import socket
    import subprocess
    child = subprocess.Popen(["sleep", "60"])
    identity = run_lock.process_identity(child.pid)
    plant(loc, host=socket.gethostname(), pid=child.pid, expires="2026-11-10T03:10:00Z", **identity)
    clock = Clock()
    with pytest.raises(run_lock.LockTimeout):  # alive: its lock holds
        make(loc, clock).acquire()
    child.kill()
    child.wait()
    with make(loc, clock) as held:
        pass
    assert held.report()["taken_over"]["pid"] == child.pid
    assert held.report()["warnings"][0].endswith("whose process is gone")


@pytest.mark.parametrize("change", [{"host": "elsewhere"}, {"boot_id": "other-boot"}, {"pid_ns": "pid:[1]"},
                                    {"proc_start": None}])
def test_a_holder_that_may_live_elsewhere_is_never_taken_for_dead(change):
    import socket
    holder = dict(host=socket.gethostname(), pid=2 ** 22 + 7, **run_lock.process_identity(os.getpid()))
    assert run_lock.holder_is_dead(holder) is True  # that pid does not exist here
    holder.update(change)
    assert run_lock.holder_is_dead(holder) is False
