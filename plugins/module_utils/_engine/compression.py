# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Compressors and decompressors of artifacts: zstd (the zstandard library, imported on first
use), gzip (zlib) and none."""

from __future__ import annotations

import os
import zlib

from .._errors import ConfigError, IntegrityError
from .._imports import Library

ZSTD = Library("zstandard")
COMPRESSION_EXT = {"zstd": ".zst", "gzip": ".gz", "none": ""}
LEVEL_LIMITS = {"zstd": (-7, 22), "gzip": (0, 9), "none": (None, None)}
PRECOMPRESSED = "precompressed"  # a threads value: see make_compressor
# zstd workers of threads=-1 (the default): one per core, at most this many. Each worker holds its
# jobs' buffers: a 1 GiB S3 volume backup peaked at 122 MiB RSS with 2, 128 MiB with 4 and 150 to
# 156 MiB with 6 to 8 (bench/RESULTS.md, "Peak memory after the parts-in-flight change"), over the
# 128 MiB every module keeps to; a larger count is still taken when given explicitly.
AUTO_THREADS = 2


class _Identity:
    def decompress(self, data):
        return data

    def flush(self):
        return b""


class _Passthrough:
    def __init__(self, sink):
        self.sink = sink

    def write(self, data):
        self.sink.write(data)

    def finish(self):
        pass


class _Zlib:
    def __init__(self, sink, level):
        self.sink = sink
        self.comp = zlib.compressobj(level, zlib.DEFLATED, 31)

    def write(self, data):
        out = self.comp.compress(data)
        if out:
            self.sink.write(out)

    def finish(self):
        self.sink.write(self.comp.flush())


class _Zstd:
    """zstd pushing its output straight into the sink (no intermediate copies).

    The jobs of multithreaded zstd are capped at 1 MiB with a full-window overlap, which keeps
    the compressor's memory near 20 MiB with two threads (the default job size uses over
    100 MiB) at the same speed and about 1 % larger output than single-threaded zstd.
    """

    JOB_SIZE = 1024 * 1024

    def __init__(self, sink, level, threads):
        zstandard = ZSTD.load()
        if threads:
            params = zstandard.ZstdCompressionParameters.from_level(
                level, threads=threads, job_size=self.JOB_SIZE, overlap_log=9)
            cctx = zstandard.ZstdCompressor(compression_params=params)
        else:
            cctx = zstandard.ZstdCompressor(level=level)
        self.flush_frame = zstandard.FLUSH_FRAME
        self.writer = cctx.stream_writer(sink, closefd=False, write_return_read=True)

    def write(self, data):
        self.writer.write(data)

    def finish(self):
        self.writer.flush(self.flush_frame)


def zstd_threads(threads, cores=None):
    """The zstd worker count for the ``compression_threads`` option: a negative value is one per
    core, at most AUTO_THREADS; 0 compresses in the calling thread; a positive count is taken."""
    if threads is None or threads < 0:
        return max(1, min(cores or os.cpu_count() or 1, AUTO_THREADS))
    return int(threads)


def make_compressor(name, sink, level=None, threads=-1):
    """A compressor writing into ``sink`` (an object with write(bytes-like)); with ``threads``
    PRECOMPRESSED the producer already compressed the bytes with ``name`` (pg_basebackup
    --compress=server-zstd): they pass unchanged."""
    if threads == PRECOMPRESSED and name in COMPRESSION_EXT:
        return _Passthrough(sink)
    if name == "zstd":
        return _Zstd(sink, 3 if level is None else level, zstd_threads(threads))
    if name == "gzip":
        return _Zlib(sink, 6 if level is None else level)
    if name == "none":
        return _Passthrough(sink)
    raise ConfigError("compression %r is not supported (zstd, gzip, none)" % (name,))


def make_decompressor(name):
    if name == "zstd":
        return ZSTD.load().ZstdDecompressor().decompressobj()
    if name == "gzip":
        return zlib.decompressobj(31)
    if name == "none":
        return _Identity()
    raise IntegrityError("unknown compression %r in manifest" % (name,))


def decompression_errors():
    """The errors a damaged compressed stream raises (zstd's only where zstandard is loaded)."""
    return (zlib.error, ZSTD.load().ZstdError) if ZSTD.available else (zlib.error,)


def validate_compression(name, level):
    if name not in COMPRESSION_EXT:
        raise ConfigError("compression %r is not supported (zstd, gzip, none)" % (name,))
    if level is not None:
        low, high = LEVEL_LIMITS[name]
        if low is not None and not low <= level <= high:
            raise ConfigError("compression_level %s is out of range for %s (%s..%s)"
                              % (level, name, low, high))
