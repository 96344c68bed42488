# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3 writer's parts in flight: how many (plain logic), their order, their memory, and the
abort on a failed part, against a fake client (the real endpoint: tests/integration/test_engine.py)."""

from __future__ import annotations

import threading
import tracemalloc
import types

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._storage import s3 as s3_backend
from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import MAX_PARTS_IN_FLIGHT, parts_in_flight
from ansible_collections.opskit.runbook.plugins.module_utils._errors import StorageError

MiB = 1024 * 1024


@pytest.mark.parametrize("part_size, memory, limit, expected", [
    (5 * MiB, 20 * MiB, 8, 3),     # a backup up to 20 GiB: 3 parts in flight, 4 buffers (20 MiB)
    (5 * MiB, 19 * MiB, 8, 2),
    (5 * MiB, 32 * MiB, 8, 5),
    (5 * MiB, 30 * MiB, 8, 5),     # exactly 6 buffers
    (8 * MiB, 32 * MiB, 8, 3),
    (6 * MiB, 20 * MiB, 8, 2),     # a 25 GiB hint: 2, as before
    (105 * MiB, 20 * MiB, 8, 2),   # no hint: 2, as before, never more
    (105 * MiB, 20 * MiB, 1, 1),   # a fixed count below the floor wins
    (1 * MiB, 32 * MiB, 8, 8),     # at most the threads
    (5 * MiB, 32 * MiB, 3, 3),
])
def test_parts_in_flight_fit_the_memory(part_size, memory, limit, expected):
    assert parts_in_flight(part_size, memory, limit) == expected
    if expected > 2:
        assert (expected + 1) * part_size <= memory
    assert parts_in_flight(part_size, memory, limit, floor=1) == max(1, min(limit, memory // part_size - 1))


class _FakeS3:
    """Records the parts and how many uploads run at once; ``hold`` parts wait until that many
    run together (a broken barrier, when fewer ever do, fails the upload and the test);
    ``fail`` is a part number whose upload fails."""

    def __init__(self, hold=0, fail=None, keep=True):
        self.keep = keep  # False: only the sizes of the parts, no copy of them
        self.lock = threading.Lock()
        self.running = self.peak = 0
        self.parts, self.completed, self.put, self.aborted = {}, None, None, False
        self.barrier = threading.Barrier(hold, timeout=10) if hold else None
        self.hold, self.fail = hold, fail
        self.after_abort = []

    def create_multipart_upload(self, **_kw):
        return {"UploadId": "u1"}

    def upload_part(self, **kw):
        assert isinstance(kw["Body"], (bytes, bytearray))
        with self.lock:
            self.running += 1
            self.peak = max(self.peak, self.running)
            if self.aborted:
                self.after_abort.append(kw["PartNumber"])
        try:
            if self.barrier is not None and kw["PartNumber"] <= self.hold:
                self.barrier.wait()
            if kw["PartNumber"] == self.fail:
                raise ConnectionAbortedError("injected failure on part %d" % self.fail)
            with self.lock:
                self.parts[kw["PartNumber"]] = bytes(kw["Body"]) if self.keep else len(kw["Body"])
            return {"ETag": "e%d" % kw["PartNumber"]}
        finally:
            with self.lock:
                self.running -= 1

    def complete_multipart_upload(self, **kw):
        self.completed = kw["MultipartUpload"]["Parts"]
        return {}

    def put_object(self, **kw):
        self.put = bytes(kw["Body"])
        return {}

    def abort_multipart_upload(self, **_kw):
        self.aborted = True
        return {}


def _blocks(count, size=MiB):
    for index in range(count):
        yield bytes([index % 251]) * size


def test_several_parts_in_flight_completed_in_order(monkeypatch):
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    fake = _FakeS3(hold=3)
    location = s3_backend.S3Location("bucket", "p", client=fake)
    writer = location.open_write("app/k", size_hint=MiB)  # 5 MiB parts: 3 in flight
    data = b"".join(_blocks(48))
    for block in _blocks(48):
        writer.write(block)
    writer.commit()
    assert fake.peak == 3 and writer.peak_inflight == 3  # the barrier: 3 ran at once, never more
    assert [p["PartNumber"] for p in fake.completed] == list(range(1, 11))
    assert [p["ETag"] for p in fake.completed] == ["e%d" % n for n in range(1, 11)]
    assert b"".join(fake.parts[n] for n in range(1, 11)) == data and len(fake.parts[10]) == 3 * MiB


def test_a_fixed_count_of_parts_in_flight(monkeypatch):
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    fake = _FakeS3(hold=2)
    location = s3_backend.S3Location("bucket", "p", client=fake, max_inflight_parts=2)
    writer = location.open_write("app/k", size_hint=MiB)
    for block in _blocks(30):
        writer.write(block)
    writer.commit()
    assert fake.peak == 2 and len(fake.completed) == 6


def _traced_peak(write):
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        write()
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("memory, in_flight", [(20 * MiB, 3), (32 * MiB, 5), (16 * MiB, 2)])
def test_the_part_buffers_stay_within_the_memory(monkeypatch, memory, in_flight):
    """60 MiB in 12 parts: the writer's allocations reach (in flight + 1) parts, and stay within
    them and a little (the bytes bodies of the writer before, copied once more by botocore, took more)."""
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    fake = _FakeS3(hold=in_flight, keep=False)  # all the parts in flight at once, once
    location = s3_backend.S3Location("bucket", "p", client=fake, upload_memory=memory)
    block = b"x" * MiB

    def write():
        writer = location.open_write("app/k", size_hint=MiB)
        for _i in range(60):
            writer.write(block)
        writer.commit()
        assert writer.limit == in_flight and len(fake.completed) == 12
    peak = _traced_peak(write)
    # the first buffer grows with the data (bytearray over-allocates by 1/8), the 1 MiB block written
    assert (in_flight + 1) * 5 * MiB <= peak <= (in_flight + 1) * 5 * MiB + 5 * MiB // 8 + 2 * MiB


def test_a_small_object_costs_its_size_not_a_part(monkeypatch):
    """Without a size hint a part is 105 MiB; a 100 KiB companion allocates about 100 KiB."""
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    fake = _FakeS3()
    location = s3_backend.S3Location("bucket", "p", client=fake)

    def write():
        writer = location.open_write("app/globals")
        for _i in range(10):
            writer.write(b"y" * 10240)
        writer.commit()
    assert _traced_peak(write) < 2 * 102400 + 64 * 1024  # the buffer and the fake's copy
    assert fake.put == b"y" * 102400 and fake.completed is None


def test_a_failed_part_aborts_the_upload_after_the_parts_in_flight(monkeypatch):
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    fake = _FakeS3(hold=3, fail=6)
    location = s3_backend.S3Location("bucket", "p", client=fake)
    writer = location.open_write("app/k", size_hint=MiB)
    with pytest.raises(StorageError, match="injected failure on part 6"):
        try:
            for block in _blocks(100):
                writer.write(block)
            writer.commit()
        finally:
            writer.abort()  # what the session does when a write raises
    assert fake.aborted and fake.completed is None
    assert fake.after_abort == [] and fake.running == 0  # every part ended before the abort
    assert 6 not in fake.parts
    with pytest.raises(StorageError, match="the upload was aborted"):
        writer.commit()  # never a CompleteMultipartUpload after the abort
    assert fake.completed is None


def test_the_parts_outgrow_their_count_with_several_in_flight(monkeypatch):
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    monkeypatch.setattr(s3_backend._S3Writer, "max_parts", 4)
    fake = _FakeS3()
    location = s3_backend.S3Location("bucket", "p", client=fake)
    writer = location.open_write("app/k", size_hint=MiB)
    for _i in range(50):
        writer.write(b"x" * MiB)
    writer.commit()
    assert [len(fake.parts[n]) for n in range(1, 5)] == [5 * MiB, 5 * MiB, 20 * MiB, 20 * MiB]
    assert writer.limit == 2  # 20 MiB parts: the floor of 2
    assert MAX_PARTS_IN_FLIGHT >= 5


def test_a_failed_small_put_raises_one_line(monkeypatch):
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))

    class Failing(_FakeS3):
        def put_object(self, **kw):
            raise StorageError("writing s3://bucket/p/app/k: S3 error InternalError (HTTP 500)")
    location = s3_backend.S3Location("bucket", "p", client=Failing())
    writer = location.open_write("app/k")
    writer.write(b"z")
    with pytest.raises(StorageError, match="HTTP 500"):
        writer.commit()


class _AwsFake(_FakeS3):
    """A client whose checksums are computed whenever supported, as boto3 >= 1.36 does for AWS S3."""

    meta = types.SimpleNamespace(config=types.SimpleNamespace(request_checksum_calculation="when_supported"))


def test_aws_s3_gets_bytes_parts_within_the_same_memory(monkeypatch):
    """On AWS S3 botocore wraps an https body in io.BytesIO (a copy of a bytearray, not of bytes):
    there the parts are bytes copies of one reused buffer, still (in flight + 1) parts of memory."""
    monkeypatch.setattr(s3_backend, "call_with_retry", lambda func, **kw: func(**kw))
    fake = _AwsFake(hold=3, keep=False)
    bodies = []
    real = fake.upload_part

    def upload_part(**kw):
        bodies.append(type(kw["Body"]))
        return real(**kw)
    fake.upload_part = upload_part
    location = s3_backend.S3Location("bucket", "p", client=fake)
    assert location.bytes_bodies
    block = b"x" * MiB

    def write():
        writer = location.open_write("app/k", size_hint=MiB)
        for _i in range(62):
            writer.write(block)
        writer.commit()
        assert writer.limit == 3 and len(fake.completed) == 13
    peak = _traced_peak(write)
    assert set(bodies) == {bytes} and len(bodies) == 13
    assert 4 * 5 * MiB <= peak <= 4 * 5 * MiB + 5 * MiB // 8 + 2 * MiB
    assert not s3_backend.S3Location("bucket", "p", client=_FakeS3()).bytes_bodies
