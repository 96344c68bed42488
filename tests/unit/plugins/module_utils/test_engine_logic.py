# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of the storage engine: URLs, part sizes, keys, durations, retries, compression."""

from __future__ import annotations

import datetime
import io
import itertools
import os

import pytest
from botocore.exceptions import ClientError

from ansible_collections.opskit.runbook.plugins.module_utils import _retry, _timeutil
from ansible_collections.opskit.runbook.plugins.module_utils._engine import artifacts, catalog, streams
from ansible_collections.opskit.runbook.plugins.module_utils._engine.compression import (
    make_compressor, make_decompressor, validate_compression)
from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import part_size_for
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, IntegrityError

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
    assert catalog.sanitize_series("db.example.com-app/main") == "db.example.com-app-main"
    assert catalog.sanitize_series("///") == "backup"


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
