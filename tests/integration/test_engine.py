# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage engine on both backends: a real directory and a real S3 HTTP endpoint (moto)."""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine import artifacts, catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import ChangedError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._errors import (
    IntegrityError, NotFoundError, StorageError)

MiB = 1024 * 1024
COLLECTIONS = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           ".build", "collections")


def _s3_options(s3):
    return dict(endpoint_url=s3.endpoint_url, access_key=s3.access_key, secret_key=s3.secret_key,
                region=s3.region)


@pytest.fixture(params=["file", "s3"])
def location(request, tmp_path):
    if request.param == "file":
        loc = open_location("file://%s/backups" % tmp_path)
        loc.test_options = {}
        return loc
    s3 = request.getfixturevalue("s3")
    loc = open_location("s3://%s/team/prod" % s3.new_bucket(), **_s3_options(s3))
    loc.test_options = _s3_options(s3)
    return loc


def _payload(size):
    """Half random (incompressible), half repetitive."""
    return os.urandom(size // 2) + b"opskit runbook " * (size // 2 // 15 + 1)


def _write(location, series, data, compression="zstd", companions=None, size_hint=None):
    with BackupSession(location, series, "generic", compression=compression,
                       size_hint=size_hint) as session:
        with session.artifact("bin") as out:
            out.copy_from(io.BytesIO(data))
        for name, payload in (companions or {}).items():
            with session.artifact("txt", name=name) as out:
                out.write(payload)
        return session.publish(source={"test": True}, tools={"python": sys.version.split()[0]})


def _uploads(location):
    return location.list_multipart_uploads() if location.scheme == "s3" else []


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_round_trip(location, compression):
    data = _payload(20 * MiB + 12345)  # more than two 5 MiB parts: a real multipart upload on S3
    manifest = _write(location, "db1", data, compression, companions={"globals": b"CREATE ROLE app;"},
                      size_hint=len(data))
    assert manifest["raw_bytes"] == len(data)
    assert manifest["compression"] == compression
    assert manifest["created_at"].replace("-", "").replace(":", "")[:15] == manifest["id"][:15]
    listed = catalog.list_backups(location)
    assert [m["id"] for m in listed["db1"]] == [manifest["id"]]
    with artifacts.ArtifactReader(location, listed["db1"][0]) as reader:
        assert reader.read(-1) == data
    with artifacts.ArtifactReader(location, listed["db1"][0], "globals") as reader:
        assert reader.read(-1) == b"CREATE ROLE app;"
    assert artifacts.verify_stored(location, manifest) == manifest["size_bytes"]
    assert _uploads(location) == []


def test_listing_newest_first_and_resolve(location):
    first = _write(location, "app", b"one")
    time.sleep(1.1)
    second = _write(location, "app", b"two")
    _write(location, "other", b"x")
    listed = catalog.list_backups(location)
    assert sorted(listed) == ["app", "other"]
    assert [m["id"] for m in listed["app"]] == [second["id"], first["id"]]
    assert catalog.resolve_backup(location, "app")["id"] == second["id"]
    assert catalog.resolve_backup(location, "app", first["id"])["id"] == first["id"]
    with pytest.raises(NotFoundError, match="series nope has no backups"):
        catalog.resolve_backup(location, "nope")
    with pytest.raises(NotFoundError, match="not found"):
        catalog.resolve_backup(location, "app", "20200101T000000Z-00000000")


def test_verification_record_is_updated(location):
    manifest = _write(location, "app", b"data")
    updated = catalog.update_verification(location, manifest, "restore", "passed", {"rows": 3})
    again = catalog.read_manifest(location, "app", manifest["id"])
    assert again["verification"]["result"] == "passed" and again["verification"]["details"] == {"rows": 3}
    assert again == updated and catalog.is_verified(again)


def _corrupt(location, key, how):
    if location.scheme == "file":
        path = location.path(key)
        with open(path, "rb") as fh:
            data = fh.read()
    else:
        data = location.read_bytes(key)
    if how == "flip":
        data = data[:100] + bytes([data[100] ^ 0x01]) + data[101:]
    else:
        data = data[: len(data) // 2]
    if location.scheme == "file":
        with open(location.path(key), "wb") as fh:
            fh.write(data)
    else:
        location.client.put_object(Bucket=location.bucket, Key=location.full_key(key), Body=data)


@pytest.mark.parametrize("how", ["flip", "truncate"])
def test_corruption_is_detected_on_read(location, how):
    manifest = _write(location, "app", _payload(3 * MiB))
    _corrupt(location, "app/" + manifest["artifact"], how)
    with pytest.raises(IntegrityError, match="is corrupt: sha256"):
        artifacts.verify_stored(location, manifest)
    with pytest.raises(IntegrityError, match="is corrupt: sha256"):  # also when zstd fails first
        with artifacts.ArtifactReader(location, manifest) as reader:
            while reader.read(MiB):
                pass


def test_failing_producer_publishes_nothing(location):
    class Broken(io.RawIOBase):
        def __init__(self):
            super().__init__()
            self.sent = 0

        def read(self, size=-1):
            if self.sent > 20 * MiB:
                raise OSError("producer died")
            self.sent += MiB
            return os.urandom(MiB)

    with pytest.raises(OSError, match="producer died"):
        with BackupSession(location, "app", "generic") as session:
            with session.artifact("txt", name="globals") as out:
                out.write(b"written before the failure")
            with session.artifact("bin") as out:
                out.copy_from(Broken())
    assert catalog.list_backups(location) in ({}, {"app": []})
    assert location.list_objects() == []  # the companion already written was removed too
    assert _uploads(location) == []


def test_failed_s3_upload_is_aborted(s3):
    location = open_location("s3://%s/x" % s3.new_bucket(), **_s3_options(s3))
    calls = []

    def fail_third_part(**kwargs):
        calls.append(kwargs["params"]["PartNumber"])
        if kwargs["params"]["PartNumber"] == 3:
            raise ConnectionAbortedError("injected failure on part 3")

    location.client.meta.events.register("before-parameter-build.s3.UploadPart", fail_third_part)
    with pytest.raises(StorageError, match="injected failure"):
        _write(location, "app", os.urandom(40 * MiB), compression="none", size_hint=40 * MiB)
    assert calls.count(3) == 5  # retried with backoff, then given up
    assert location.list_multipart_uploads() == []
    assert location.list_objects() == []


def _hold_parts(location, count):
    """The first ``count`` UploadParts wait until ``count`` of them are in flight together (a
    writer with fewer in flight breaks the barrier: the upload, and the test, fail)."""
    barrier = threading.Barrier(count, timeout=30)

    def hold(params, **_kwargs):
        if params["PartNumber"] <= count:
            barrier.wait()
    location.client.meta.events.register("before-parameter-build.s3.UploadPart", hold)


def test_s3_upload_with_several_parts_in_flight_restores_identical(s3):
    location = open_location("s3://%s/x" % s3.new_bucket(), **_s3_options(s3))
    _hold_parts(location, 3)  # 5 MiB parts (a 41 MiB hint): 3 in flight, 4 buffers: 20 MiB
    data = _payload(41 * MiB + 4321)
    manifest = _write(location, "app", data, compression="none", size_hint=len(data))
    stored = location.head("app/" + manifest["artifact"])
    assert stored.size == len(data) and manifest["size_bytes"] == len(data)
    with artifacts.ArtifactReader(location, catalog.resolve_backup(location, "app")) as reader:
        assert reader.read(-1) == data
    assert location.list_multipart_uploads() == []


class _Raw:
    def __init__(self, body):
        self.body = body

    def stream(self, **_kwargs):
        yield self.body


def test_a_lying_endpoint_fails_one_part_of_several_in_flight(s3):
    """The endpoint answers HTTP 500 to every attempt of part 6, after parts 1-3 were in flight
    together: the upload is aborted, nothing is stored and no backup is listed."""
    from botocore.awsrequest import AWSResponse

    location = open_location("s3://%s/x" % s3.new_bucket(), **_s3_options(s3))
    _hold_parts(location, 3)
    refused = []

    def lie(request, **_kwargs):
        if request.method == "PUT" and "partNumber=6&" in request.url + "&":
            refused.append(request.url)
            return AWSResponse(request.url, 500, {}, _Raw(
                b"<Error><Code>InternalError</Code><Message>injected</Message></Error>"))
        return None
    location.client.meta.events.register("before-send.s3.UploadPart", lie)
    with pytest.raises(StorageError, match=r"writing s3://.*: S3 error InternalError \(HTTP 500\)"):
        _write(location, "app", os.urandom(60 * MiB), compression="none", size_hint=60 * MiB)
    assert len(refused) == 5  # retried, then given up
    assert location.list_multipart_uploads() == []
    assert location.list_objects() == [] and catalog.list_backups(location) in ({}, {"app": []})


_RSS_SCRIPT = textwrap.dedent("""
    import json, os, sys
    sys.path.insert(0, %(collections)r)
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
    from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

    def rss(field):
        with open("/proc/self/status") as fh:
            return [int(line.split()[1]) * 1024 for line in fh if line.startswith(field + ":")][0]
    loc = open_location(%(url)r, **%(options)r)
    block = os.urandom(1024 * 1024)
    loc.list_objects()  # boto3 loaded, a connection made: what the upload adds is measured
    base = rss("VmRSS")
    with BackupSession(loc, "app", "generic", compression="none", size_hint=1024 ** 3) as session:
        with session.artifact("bin") as out:
            for _i in range(120):
                out.write(block)
        session.publish()
    print(json.dumps({"growth": rss("VmHWM") - base, "peak": rss("VmHWM")}))
""")


def test_s3_upload_memory_stays_bounded(s3):
    """120 MiB with the part size of a 1 GiB hint (5 MiB): 3 parts in flight, and the upload
    adds at most its 20 MiB of part buffers and 20 MiB more to the process (a bound, not a
    timing: the figures of a 1 GiB upload are bench/storage_engine.py's)."""
    location = open_location("s3://%s/x" % s3.new_bucket(), **_s3_options(s3))
    script = _RSS_SCRIPT % dict(collections=COLLECTIONS, url=location.url, options=_s3_options(s3))
    out = subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, text=True, timeout=120)
    measured = json.loads(out.stdout.strip().splitlines()[-1])
    assert measured["growth"] <= 40 * MiB, measured
    assert measured["peak"] <= 128 * MiB, measured
    assert len(catalog.list_backups(location)["app"]) == 1


_KILL_SCRIPT = textwrap.dedent("""
    import os, sys, time
    sys.path.insert(0, %(collections)r)
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
    from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
    loc = open_location(%(url)r, **%(options)r)
    with BackupSession(loc, "app", "generic", compression="none") as session:
        with session.artifact("bin") as out:
            while True:
                out.write(os.urandom(1024 * 1024))
                sys.stdout.write("."); sys.stdout.flush()
        session.publish()
""")


def test_killed_writer_leaves_no_backup(location):
    script = _KILL_SCRIPT % dict(collections=COLLECTIONS, url=location.url, options=location.test_options)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    received = proc.stdout.read(20)  # 20 MiB written: several parts in flight on S3
    assert len(received) == 20
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert catalog.list_backups(location) in ({}, {"app": []})
    assert [m["series"] for m in catalog.inflight(location)] == ["app"]  # rotation keeps its parts
    names = [info.key for info in location.list_objects()]
    assert not any(name.endswith(".manifest.json") for name in names)
    if location.scheme == "file":
        # only a hidden partial file remains; it never looks like a backup
        assert names == [] or all(os.path.basename(n).startswith(".") for n in names)
        assert location.list_temporary()


def test_listing_paginates_beyond_1000_objects(location):
    """1001 artifacts without manifests plus one published backup: 1003 objects, two pages."""
    published = _write(location, "bulk", b"x")

    def put(index):
        location.write_bytes("bulk/2025%04dT000000Z-%08x.bin.zst" % (101 + index % 28, index), b"")

    with ThreadPoolExecutor(32) as pool:
        list(pool.map(put, range(1001)))
    assert len(location.list_objects()) == 1003
    grouped = catalog.scan(location)
    assert len(grouped["bulk"]["artifacts"]) == 1002 and list(grouped["bulk"]["manifests"]) == [published["id"]]
    assert [m["id"] for m in catalog.list_backups(location)["bulk"]] == [published["id"]]


def test_file_artifacts_are_private(tmp_path):
    location = open_location("file://%s/b" % tmp_path)
    manifest = _write(location, "app", b"secret data")
    for key in ("app/" + manifest["artifact"], catalog.manifest_key("app", manifest["id"])):
        assert os.stat(location.path(key)).st_mode & 0o777 == 0o600


def _manifests(location):
    return [info.key for info in location.list_objects() if info.key.endswith(".manifest.json")]


def _ambiguous_manifest_write(location, monkeypatch):
    """The manifest write stores the object, then fails: on S3 every PutObject response of the
    manifest is lost (read timeout after the server stored it); on file:// the directory fsync
    after the rename fails (EIO)."""
    if location.scheme == "s3":
        from botocore.exceptions import ReadTimeoutError

        keys = []

        def lose_response(**_kwargs):
            if keys[-1].endswith(".manifest.json"):
                raise ReadTimeoutError(endpoint_url="injected")
        location.client.meta.events.register("before-parameter-build.s3.PutObject",
                                             lambda params, **_kw: keys.append(params["Key"]))
        location.client.meta.events.register("after-call.s3.PutObject", lose_response)
        return
    renamed = []
    real_rename, real_fsync = os.rename, os.fsync

    def rename(src, dst):
        real_rename(src, dst)
        renamed.append(dst)

    def fsync(fd):
        if renamed and renamed[-1].endswith(".manifest.json") and os.path.isdir("/proc/self/fd/%d" % fd):
            raise OSError(errno.EIO, "Input/output error")
        real_fsync(fd)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "fsync", fsync)


def test_ambiguous_manifest_write_leaves_no_manifest(location, monkeypatch):
    _ambiguous_manifest_write(location, monkeypatch)
    with pytest.raises(StorageError):
        _write(location, "app", b"data", companions={"globals": b"CREATE ROLE app;"})
    monkeypatch.undo()
    assert _manifests(location) == []  # no manifest whose artifacts were deleted
    assert location.list_objects() == [] and catalog.inflight(location) == []
    assert catalog.list_backups(location) in ({}, {"app": []})


def test_inflight_marker_during_a_backup(location):
    with BackupSession(location, "app", "generic") as session:
        with session.artifact("txt", name="globals") as out:
            out.write(b"first companion")
        live = catalog.inflight(location)
        assert [(m["series"], m["id"]) for m in live] == [("app", session.id)]
        assert catalog.inflight(location, "app") == live and catalog.inflight(location, "other") == []
        assert catalog.scan(location)["app"]["manifests"] == {}
        with session.artifact("bin") as out:
            out.write(b"main")
        session.publish()
    assert catalog.inflight(location) == [] and len(catalog.list_backups(location)["app"]) == 1
    with pytest.raises(OSError):
        with BackupSession(location, "app", "generic") as session:
            with session.artifact("bin") as out:
                out.write(b"x")
                assert len(catalog.inflight(location, "app")) == 1
                raise OSError("producer died")
    assert catalog.inflight(location) == []


def test_publish_checks_every_artifact(location):
    with pytest.raises(IntegrityError, match=r"not published: .*globals\.txt\.zst is missing"):
        with BackupSession(location, "app", "generic") as session:
            with session.artifact("txt", name="globals") as out:
                out.write(b"globals")
            location.delete([session.companions[0]["key"]])  # what a concurrent rotation did
            with session.artifact("bin") as out:
                out.write(b"main")
            session.publish()
    assert location.list_objects() == [] and catalog.inflight(location) == []


def test_verification_never_resurrects_a_deleted_backup(location):
    manifest = _write(location, "app", b"data")
    rotated = [info.key for info in location.list_objects()]
    assert len(rotated) == 2
    location.delete([k for k in rotated if not k.endswith(".manifest.json")])  # artifacts first
    with pytest.raises(NotFoundError, match="deleted meanwhile: its verification is not recorded"):
        catalog.update_verification(location, manifest, "restore", "passed")
    location.delete(rotated)
    with pytest.raises(NotFoundError, match="deleted meanwhile"):
        catalog.update_verification(location, manifest, "restore", "passed")
    assert location.list_objects() == []


def test_conditional_write_refuses_a_changed_object(location):
    location.write_bytes("app/k.json", b"one")
    _data, token = location.read_versioned("app/k.json")
    time.sleep(0.01)
    location.write_bytes("app/k.json", b"two")
    with pytest.raises(ChangedError):
        location.replace_bytes("app/k.json", b"three", token)
    assert location.read_bytes("app/k.json") == b"two"
    data, token = location.read_versioned("app/k.json")
    location.replace_bytes("app/k.json", b"three", token)
    assert location.read_bytes("app/k.json") == b"three"
    location.delete(["app/k.json"])
    with pytest.raises(NotFoundError):
        location.replace_bytes("app/k.json", b"four", token)
    assert location.list_objects() == []


def test_compatible_store_gets_checksums_only_where_required(s3):
    """boto3 >= 1.36 adds CRC32 checksums to every PutObject and UploadPart by default; several
    S3-compatible stores reject them. With an endpoint_url they are sent only where required."""
    location = open_location("s3://%s/x" % s3.new_bucket(), **_s3_options(s3))
    sent = []

    def record(request, **_kwargs):
        sent.append((request.method, sorted(h.lower() for h in request.headers if "checksum" in h.lower())))
    location.client.meta.events.register("before-send.s3", record)
    _write(location, "app", os.urandom(12 * MiB), compression="none", size_hint=12 * MiB)
    puts = [headers for method, headers in sent if method == "PUT"]
    assert len(puts) >= 4 and all(headers == [] for headers in puts), puts  # 3 parts, marker, manifest
    assert location.delete([info.key for info in location.list_objects()]) == []
    assert location.list_objects() == []
