# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of the storage engine: URLs, part sizes, keys, durations, retries, compression."""

from __future__ import annotations

import datetime
import io
import itertools
import json
import os
import subprocess

import pytest
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError

from ansible_collections.opskit.runbook.plugins.module_utils import _retry, _timeutil
from ansible_collections.opskit.runbook.plugins.module_utils._engine import artifacts, catalog, report, streams
from ansible_collections.opskit.runbook.plugins.module_utils._engine.compression import (
    make_compressor, make_decompressor, validate_compression, zstd_threads)
from ansible_collections.opskit.runbook.plugins.module_utils._engine import lock
from ansible_collections.opskit.runbook.plugins.module_utils._engine.lock import this_process
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage import s3 as s3_backend
from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import grown_part_size, part_size_for
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._errors import (
    ConfigError, IntegrityError, NotFoundError, StorageError)

MiB = 1024 * 1024
UTC = datetime.timezone.utc


@pytest.mark.parametrize("url, message", [
    ("ftp://host/dir", "unknown URL scheme 'ftp'"),
    ("backups/dir", "is not a URL"),
    ("file://relative/dir", "file URLs take an absolute path"),
    ("s3:///prefix", "missing bucket name"),
    ("s3://ab/prefix", "at least 3 characters"),
    ("", "a URL is required"),
])
def test_bad_location_urls_are_one_line_errors(url, message):
    with pytest.raises(ConfigError) as exc:
        open_location(url)
    assert message in exc.value.msg
    assert "\n" not in exc.value.msg


def test_location_urls_parse():
    loc = open_location("file:///srv/backups/")
    assert loc.url == "file:///srv/backups" and loc.scheme == "file"
    s3 = open_location("s3://bucket/a/b/", endpoint_url="http://127.0.0.1:1", access_key="k", secret_key="s")
    assert (s3.bucket, s3.prefix, s3.url) == ("bucket", "a/b", "s3://bucket/a/b")
    assert s3.full_key("x/y") == "a/b/x/y" and s3.rel_key("a/b/x/y") == "x/y"


@pytest.mark.parametrize("hint, expected", [
    (None, 105 * MiB),                 # default: 10,000 parts cover at least 1 TiB
    (1024 * MiB, 5 * MiB),             # small hint: the 5 MiB floor (S3 minimum)
    (100 * 1024 ** 3, 21 * MiB),       # 100 GiB with 2x headroom
    (30 * 1024 ** 4, 5 * 1024 * MiB),  # capped at S3's 5 GiB part limit
])
def test_part_size_for(hint, expected):
    size = part_size_for(hint)
    assert size == expected
    covered = 2 * hint if hint else 1024 ** 4
    assert size * 10000 >= min(covered, 10000 * 5 * 1024 * MiB)


@pytest.mark.parametrize("key, expected", [
    ("db1/20261120T020000Z-0a1b2c3d.dump.zst", ("db1", "20261120T020000Z-0a1b2c3d", "dump.zst")),
    ("db1/20261120T020000Z-0a1b2c3d.manifest.json", ("db1", "20261120T020000Z-0a1b2c3d", "manifest.json")),
    ("db1/notes.txt", None),
    ("20261120T020000Z-0a1b2c3d.dump", None),
    ("a/b/20261120T020000Z-0a1b2c3d.dump", None),
])
def test_parse_key(key, expected):
    assert catalog.parse_key(key) == expected


@pytest.mark.parametrize("series", ["", "-x", "a/b", "a b", "x" * 129, None])
def test_invalid_series(series):
    with pytest.raises(ConfigError):
        catalog.validate_series(series)


def test_sanitize_series():
    assert catalog.sanitize_series("db.example.com-app/main") == "db.example.com-app-main-%s" % _sha8("db.example.com-app/main")
    assert catalog.sanitize_series("///") == "backup-%s" % _sha8("///")
    assert catalog.sanitize_series("db.example.com-app") == "db.example.com-app"  # valid names stay as they are


def _sha8(text):
    return __import__("hashlib").sha256(text.encode()).hexdigest()[:8]


def test_backup_id_carries_created_at():
    now = datetime.datetime(2026, 11, 20, 2, 0, 5, tzinfo=UTC)
    backup_id = catalog.new_backup_id(now)
    assert backup_id.startswith("20261120T020005Z-") and catalog.ID_RE.match(backup_id)
    assert catalog.backup_time(backup_id) == now


@pytest.mark.parametrize("text, parts", [
    ("36h", {"hours": 36}), ("30d", {"days": 30}), ("2w", {"weeks": 2}),
    ("1y6m", {"years": 1, "months": 6}), ("90min", {"minutes": 90}), ("45s", {"seconds": 45}),
    (3600, {"seconds": 3600}),
])
def test_duration_parse(text, parts):
    assert _timeutil.Duration.parse(text).parts == parts


@pytest.mark.parametrize("text", ["", "10", "h", "1x", "5d5d", "-3d", "0d", "1.5h", "3 days"])
def test_duration_rejects(text):
    with pytest.raises(ConfigError) as exc:
        _timeutil.Duration.parse(text, "keep_within")
    assert exc.value.msg.startswith("keep_within: cannot parse duration")


def test_duration_calendar_months():
    at = datetime.datetime(2026, 8, 31, 12, 0, tzinfo=UTC)
    assert _timeutil.Duration.parse("1y6m").before(at) == datetime.datetime(2025, 2, 28, 12, 0, tzinfo=UTC)
    assert _timeutil.Duration.parse("1m").before(at) == datetime.datetime(2026, 7, 31, 12, 0, tzinfo=UTC)
    assert _timeutil.Duration.parse("1d12h").seconds(at) == 36 * 3600


def _Err(code, status):
    """The typed error botocore raises for an S3 error response."""
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "PutObject")


@pytest.mark.parametrize("exc, retryable", [
    (_Err("SlowDown", 503), True), (_Err("InternalError", 500), True),
    (_Err("Throttling", 400), True), (_Err("AccessDenied", 403), False),
    (_Err("NoSuchKey", 404), False), (ConnectionResetError(), True), (ValueError("x"), False),
])
def test_retry_classification(exc, retryable):
    assert _retry.is_retryable(exc) is retryable


def test_call_with_retry_retries_then_succeeds_and_gives_up():
    calls, sleeps = [], []

    def flaky():
        calls.append(1)
        if len(calls) < 3:
            raise _Err("SlowDown", 503)
        return "ok"

    assert _retry.call_with_retry(flaky, sleep=sleeps.append) == "ok"
    assert len(calls) == 3 and len(sleeps) == 2 and all(0 <= s <= 8 for s in sleeps)

    def denied():
        calls.append(1)
        raise _Err("AccessDenied", 403)

    calls.clear()
    with pytest.raises(ClientError):
        _retry.call_with_retry(denied, sleep=sleeps.append)
    assert len(calls) == 1

    def always():
        calls.append(1)
        raise ConnectionResetError()

    calls.clear()
    with pytest.raises(ConnectionResetError):
        _retry.call_with_retry(always, attempts=4, sleep=lambda s: None)
    assert len(calls) == 4


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_compressors_round_trip(compression):
    data = os.urandom(100000) + b"abc" * 300000
    out = io.BytesIO()
    comp = make_compressor(compression, out, None, -1)
    for start in range(0, len(data), 65536):
        comp.write(data[start:start + 65536])
    comp.finish()
    stored = out.getvalue()
    dec = make_decompressor(compression)
    assert dec.decompress(stored) + (dec.flush() if hasattr(dec, "flush") else b"") == data
    if compression != "none":
        assert len(stored) < len(data)


@pytest.mark.parametrize("compression, level", [("zstd", 23), ("gzip", 10), ("lz4", None)])
def test_bad_compression_options(compression, level):
    with pytest.raises(ConfigError):
        validate_compression(compression, level)


def test_manifest_parsing_refuses_foreign_and_newer():
    with pytest.raises(IntegrityError, match="not valid JSON"):
        catalog.parse_manifest(b"{", "k")
    with pytest.raises(IntegrityError, match="not an opskit.runbook backup manifest"):
        catalog.parse_manifest(b'{"format": "other"}', "k")
    with pytest.raises(IntegrityError, match="version 99"):
        catalog.parse_manifest(b'{"format": "opskit.runbook/backup", "version": 99}', "k")


def test_artifact_writer_counts_and_hashes():
    class Sink:
        def __init__(self):
            self.buf = io.BytesIO()
            self.committed = False

        def write(self, data):
            self.buf.write(data)

        def commit(self):
            self.committed = True

        def abort(self):
            raise AssertionError("not aborted")

    import hashlib
    sink = Sink()
    writer = artifacts.ArtifactWriter(sink, "s/k", "gzip", 1, -1)
    writer.copy_from(io.BytesIO(b"x" * 3000000), chunk=65536)
    record = writer.close()
    assert sink.committed and record["raw_bytes"] == 3000000
    assert record["size_bytes"] == len(sink.buf.getvalue())
    assert record["sha256"] == hashlib.sha256(sink.buf.getvalue()).hexdigest()


class _Chunks:
    """A reader that returns the given chunks, then raises ``error`` if one is given."""

    def __init__(self, chunks, error=None):
        self.chunks, self.error = list(chunks), error

    def read(self, _size):
        if self.chunks:
            return self.chunks.pop(0)
        if self.error is not None:
            raise self.error
        return b""


def test_copy_to_fd_writes_everything_in_order(tmp_path):
    chunks = [os.urandom(n) for n in (1, 4096, 3 * MiB, 7, 5 * MiB)]
    path = tmp_path / "out"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        assert streams.copy_to_fd(_Chunks(chunks), fd, depth=2) == sum(len(c) for c in chunks)
    finally:
        os.close(fd)
    assert path.read_bytes() == b"".join(chunks)


def test_copy_to_fd_raises_the_write_error():
    fd = os.open("/dev/full", os.O_WRONLY)  # every write fails with ENOSPC
    try:
        with pytest.raises(OSError) as exc:
            streams.copy_to_fd(_Chunks([b"x" * 1000] * 50), fd, depth=2)
    finally:
        os.close(fd)
    assert exc.value.errno == 28


def test_copy_to_fd_raises_the_read_error_and_stops_the_writer(tmp_path):
    fd = os.open(tmp_path / "out", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        with pytest.raises(IntegrityError, match="corrupt"):
            streams.copy_to_fd(_Chunks([b"a" * 10] * 3, IntegrityError("corrupt")), fd)
    finally:
        os.close(fd)
    assert (tmp_path / "out").read_bytes() == b"a" * 30


# ----------------------------------------------------------------------- Prefetch

def test_prefetch_yields_everything_and_the_return_value():

    def gen():
        for i in range(100):
            yield b"%d" % i
        return "summary"
    pre = streams.Prefetch(gen(), depth=2)
    assert list(pre) == [b"%d" % i for i in range(100)]
    assert pre.value == "summary" and pre.error is None


def test_prefetch_reraises_the_generators_error_in_the_consumer():

    def gen():
        yield b"first"
        raise IntegrityError("archive member ../x: '..' components are refused")
    pre = streams.Prefetch(gen())
    got = []
    with pytest.raises(IntegrityError, match="refused"):
        for item in pre:
            got.append(item)
    assert got == [b"first"] and isinstance(pre.error, IntegrityError)


def test_prefetch_stop_releases_a_blocked_producer():
    pre = streams.Prefetch((b"x" for _i in itertools.count()), depth=1)
    assert next(iter(pre)) == b"x"
    pre.stop()  # the consumer gave up (the writer failed): the thread must end
    assert not pre.thread.is_alive()


# ------------------------------------------------ publish, abort, markers (issue 14)

class _AmbiguousManifest(FileLocation):
    """A real directory whose manifest write stores the object and then fails (response lost)."""

    def __init__(self, root, manifest_delete_fails=False):
        super().__init__(root)
        self.manifest_delete_fails = manifest_delete_fails

    def write_bytes(self, key, data, content_type=None):
        super().write_bytes(key, data, content_type)
        if key.endswith(".manifest.json"):
            raise StorageError("writing %s: cannot reach the S3 endpoint (ReadTimeoutError)" % key)

    def delete(self, keys):
        if self.manifest_delete_fails and any(k.endswith(".manifest.json") for k in keys):
            raise StorageError("deleting: access denied")
        return super().delete(keys)


def _files(location):
    return sorted(i.key for i in location.list_objects(hidden=True))


def _session_write(location, series="app", publish=True):
    with BackupSession(location, series, "generic", compression="none") as session:
        with session.artifact("txt", name="globals") as out:
            out.write(b"globals")
        with session.artifact("bin") as out:
            out.write(b"main data")
        if publish:
            return session.publish()
    return None


def test_ambiguous_manifest_write_leaves_no_manifest(tmp_path):
    location = _AmbiguousManifest(str(tmp_path / "b"))
    with pytest.raises(StorageError, match="ReadTimeoutError"):
        _session_write(location)
    assert _files(location) == []  # neither the manifest nor its artifacts nor the marker


def test_manifest_that_cannot_be_removed_keeps_its_artifacts(tmp_path):
    location = _AmbiguousManifest(str(tmp_path / "b"), manifest_delete_fails=True)
    with pytest.raises(StorageError, match="ReadTimeoutError"):
        _session_write(location)
    names = [k for k in _files(location) if "/.inflight/" not in k]
    assert len(names) == 3 and catalog.list_backups(location)["app"]  # a complete backup, not a broken one


def test_inflight_marker_lives_while_the_session_writes(tmp_path):
    location = FileLocation(str(tmp_path / "b"))
    with BackupSession(location, "app", "generic", compression="none", inflight_timeout=3600) as session:
        with session.artifact("bin") as out:
            out.write(b"x")
        live = catalog.inflight(location, "app")
        assert [(m["series"], m["id"]) for m in live] == [("app", session.id)]
        assert catalog.inflight(location) == live
        assert live[0]["expires_at"] - live[0]["started_at"] == datetime.timedelta(hours=1)
        assert catalog.inflight(location, now=live[0]["expires_at"]) == []  # expired
        assert catalog.inflight(location, now=live[0]["expires_at"], expired=True) == [dict(live[0], reason="expired")]
        assert catalog.inflight(location, expired=True) == []
        assert "app" in catalog.scan(location) and not catalog.scan(location)["app"]["manifests"]
        session.publish()
    assert catalog.inflight(location) == []
    with pytest.raises(OSError):
        with BackupSession(location, "app", "generic", compression="none") as session:
            with session.artifact("bin") as out:
                out.write(b"x")
                assert len(catalog.inflight(location, "app")) == 1
                raise OSError("producer died")
    assert catalog.inflight(location) == [] and len(catalog.list_backups(location)["app"]) == 1


def _dead_holder():
    """The holder fields of a process of this machine that has exited."""
    child = subprocess.Popen(["true"])
    child.wait()
    return dict(this_process(), pid=child.pid, proc_start="1")


def test_next_backup_removes_the_marker_a_killed_one_left(tmp_path):
    """A backup SIGKILLed before its first artifact was stored leaves only its marker: the next
    backup of the series removes it (its holder is gone), reports it, and keeps a live one."""
    location = FileLocation(str(tmp_path / "b"))
    now = datetime.datetime.now(datetime.timezone.utc)
    catalog.write_inflight(location, "app", "20261101T000000Z-0000dead", now, holder=_dead_holder())
    catalog.write_inflight(location, "app", "20261101T000000Z-000a11fe", now, holder=this_process())
    catalog.write_inflight(location, "app", "20261101T000000Z-0000e4ed", now - datetime.timedelta(days=2))
    catalog.write_inflight(location, "other", "20261101T000000Z-0000dead", now, holder=_dead_holder())
    live = {m["id"]: m for m in catalog.inflight(location, dead=lock.holder_is_dead)}
    assert sorted(live) == ["20261101T000000Z-000a11fe"]
    with BackupSession(location, "app", "generic", compression="none") as session:
        with session.artifact("bin") as out:
            out.write(b"x")
        session.publish()
    assert sorted(session.removed_markers) == ["app/.inflight/20261101T000000Z-0000dead.json",
                                               "app/.inflight/20261101T000000Z-0000e4ed.json"]
    assert any("removed 2 in-flight marker(s)" in w and "holder gone" in w and "expired" in w for w in session.warnings)
    assert sorted((m["series"], m["id"]) for m in catalog.inflight(location, expired=True, now=now + datetime.timedelta(days=9))) \
        == [("app", "20261101T000000Z-000a11fe"), ("other", "20261101T000000Z-0000dead")]


def test_listing_never_walks_into_a_linked_series(tmp_path):
    location = FileLocation(str(tmp_path / "b"))
    _session_write(location, "app")
    os.symlink(location.path("app"), location.path("linked"))
    assert location.list_objects("linked/") == [] and location.list_objects("linked/.inflight/") == []
    assert sorted(catalog.scan(location)) == ["app"]


def test_publish_refuses_when_an_artifact_vanished(tmp_path):
    location = FileLocation(str(tmp_path / "b"))
    with pytest.raises(IntegrityError, match=r"not published: app/.*\.globals\.txt is missing"):
        with BackupSession(location, "app", "generic", compression="none") as session:
            with session.artifact("txt", name="globals") as out:
                out.write(b"globals")
            os.unlink(location.path(session.companions[0]["key"]))  # a concurrent rotation
            with session.artifact("bin") as out:
                out.write(b"main")
            session.publish()
    assert _files(location) == []


# ----------------------------------------------------------- verification records

def test_verification_is_not_recorded_on_a_deleted_backup(tmp_path):
    location = FileLocation(str(tmp_path / "b"))
    manifest = _session_write(location)
    location.delete(["app/" + manifest["artifact"]])  # rotation deletes artifacts first
    with pytest.raises(NotFoundError, match="deleted meanwhile"):
        catalog.update_verification(location, manifest, "restore", "passed")
    location.delete([catalog.manifest_key("app", manifest["id"])])
    with pytest.raises(NotFoundError, match="deleted meanwhile"):
        catalog.update_verification(location, manifest, "restore", "passed")
    assert catalog.list_backups(location)["app"] == []


def test_error_result_keeps_an_earlier_verdict(tmp_path):
    location = FileLocation(str(tmp_path / "b"))
    manifest = _session_write(location)
    first = catalog.update_verification(location, manifest, "restore", "error", {"error": "connection refused"})
    assert first["verification"]["result"] == "error" and not catalog.is_verified(first)
    passed = catalog.update_verification(location, first, "restore", "passed")
    again = catalog.update_verification(location, passed, "restore", "error", {"error": "disk full"})
    assert again["verification"]["result"] == "passed" and catalog.is_verified(again)
    assert again["verification"]["last_error"]["details"] == {"error": "disk full"}
    assert catalog.read_manifest(location, "app", manifest["id"]) == again
    with pytest.raises(ConfigError, match="not one of passed, failed, error"):
        catalog.update_verification(location, manifest, "restore", "ok")


# ------------------------------------------------------------ clock skew, anomalies

def test_future_backup_is_never_latest_and_is_an_anomaly(tmp_path):
    location = FileLocation(str(tmp_path / "b"))
    now = datetime.datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
    with BackupSession(location, "app", "generic", compression="none", now=now - datetime.timedelta(hours=1)) as s:
        with s.artifact("bin") as out:
            out.write(b"x")
        current = s.publish()
    with BackupSession(location, "app", "generic", compression="none",
                       now=now + datetime.timedelta(days=3 * 365)) as s:
        with s.artifact("bin") as out:
            out.write(b"x")
        future = s.publish()
    assert catalog.resolve_backup(location, "app", now=now)["id"] == current["id"]
    assert catalog.resolve_backup(location, "app", future["id"], now=now)["id"] == future["id"]
    rep = report.backup_report(location, max_age="2h", now=now)
    entry = rep["series"]["app"]
    assert entry["newest"]["id"] == current["id"] and entry["newest_age_seconds"] == 3600
    assert [a["id"] for a in rep["anomalies"]] == [future["id"]] and "in the future" in rep["anomalies"][0]["reason"]
    assert entry["stale"] is False
    rep = report.backup_report(location, max_age="30min", now=now)
    assert rep["stale_series"] == ["app"]  # the future backup does not count as fresh
    location.delete([catalog.manifest_key("app", current["id"])])
    with pytest.raises(NotFoundError, match="only backups dated in the future"):
        catalog.resolve_backup(location, "app", now=now)


@pytest.mark.parametrize("mangle, reason", [
    (lambda m: dict(m, version="1"), "version '1', not an integer"),
    (lambda m: dict(m, series="old-name"), "describes backup"),
    (lambda m: dict(m, size_bytes=None), "field size_bytes is missing"),
    (lambda m: dict(m, created_at="yesterday"), "not an RFC 3339 time"),
])
def test_one_odd_manifest_is_an_anomaly_of_the_report(tmp_path, mangle, reason):
    location = FileLocation(str(tmp_path / "b"))
    good = _session_write(location, "app")
    odd = _session_write(location, "other")
    location.write_bytes(catalog.manifest_key("other", odd["id"]), json.dumps(mangle(odd)).encode())
    rep = report.backup_report(location)
    assert rep["series"]["app"]["newest"]["id"] == good["id"]
    assert rep["series"]["other"]["count"] == 0
    assert len(rep["anomalies"]) == 1 and reason in rep["anomalies"][0]["reason"]
    assert rep["anomalies"][0]["series"] == "other" and rep["anomalies"][0]["id"] == odd["id"]
    with pytest.raises(IntegrityError, match=reason):
        catalog.list_backups(location, "other")


# -------------------------------------------------------------- S3 part sizes, client

class _FakeS3:
    def __init__(self):
        self.parts = []

    def create_multipart_upload(self, **_kw):
        return {"UploadId": "u1"}

    def upload_part(self, **kw):
        self.parts.append(len(kw["Body"]))
        return {"ETag": "e%d" % kw["PartNumber"]}

    def complete_multipart_upload(self, **_kw):
        return {}

    def abort_multipart_upload(self, **_kw):
        self.aborted = True
        return {}


def test_part_size_grows_when_the_stream_outgrows_its_hint():
    covered, size = 0, part_size_for(1024 * MiB)
    for number in range(1, 10001):
        covered += size
        size = grown_part_size(number, size)
    assert covered > 600 * 1024 ** 3 and size == 512 * MiB  # 5 MiB parts alone: 48 GiB


def test_s3_writer_grows_parts_then_fails_clearly_before_the_last_part(monkeypatch):
    monkeypatch.setattr(s3_backend._S3Writer, "max_parts", 4)
    fake = _FakeS3()
    location = s3_backend.S3Location("bucket", "p", client=fake)
    writer = location.open_write("app/k", size_hint=MiB)
    for _i in range(50):
        writer.write(b"x" * MiB)
    writer.commit()
    assert fake.parts == [5 * MiB, 5 * MiB, 20 * MiB, 20 * MiB]  # grown after half the parts
    writer = location.open_write("app/k2", size_hint=MiB)
    with pytest.raises(StorageError, match="outgrew the 4 parts of an S3 multipart upload") as exc:
        for _i in range(5 + 5 + 20 + 80 + 1):  # parts grow at 2 and 3 used parts
            writer.write(b"x" * MiB)
        writer.commit()
    assert "\n" not in exc.value.msg and fake.aborted


@pytest.mark.parametrize("endpoint, style, expected_style, checksums", [
    ("http://127.0.0.1:9000", None, "path", "when_required"),
    ("https://s3.example.net", "virtual", "virtual", "when_required"),
    (None, None, "auto", None),
])
def test_s3_client_settings_for_compatible_stores(endpoint, style, expected_style, checksums):
    location = open_location("s3://bucket/p", endpoint_url=endpoint, access_key="k", secret_key="s",
                             addressing_style=style)
    config = location.client.meta.config
    assert config.s3["addressing_style"] == expected_style
    if checksums:
        assert config.request_checksum_calculation == checksums
        assert config.response_checksum_validation == checksums
    else:
        assert config.request_checksum_calculation == "when_supported"


class _Raw:
    def stream(self, **_kwargs):
        return iter([b""])


@pytest.mark.parametrize("style, url", [
    ("virtual", "http://bucket-abc.s3.example.net:9000/k"),
    ("path", "http://s3.example.net:9000/bucket-abc/k"),
    (None, "http://s3.example.net:9000/bucket-abc/k"),
])
def test_addressing_style_builds_the_urls(style, url):
    location = open_location("s3://bucket-abc", endpoint_url="http://s3.example.net:9000", access_key="k",
                             secret_key="s", addressing_style=style)
    sent = []

    def answer(request, **_kwargs):
        sent.append(request.url)
        return AWSResponse(request.url, 200, {}, _Raw())
    location.client.meta.events.register("before-send.s3", answer)
    location.client.head_object(Bucket="bucket-abc", Key="k")
    assert sent == [url]


def test_bad_addressing_style():
    with pytest.raises(ConfigError, match="addressing_style 'dns' is not one of path, virtual, auto"):
        open_location("s3://bucket/p", endpoint_url="http://127.0.0.1:1", addressing_style="dns")


@pytest.mark.parametrize("threads, cores, expected", [(-1, 1, 1), (-1, 2, 2), (-1, 8, 2), (-1, 64, 2), (None, 16, 2),
                                                      (0, 8, 0), (1, 8, 1), (6, 8, 6)])
def test_the_default_zstd_workers_are_one_per_core_but_at_most_two(threads, cores, expected):
    """-1 on a 64-core host must not start 64 workers (each holds its buffers: 128 MiB is passed at 4)."""
    assert zstd_threads(threads, cores) == expected
