# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The header and table of contents of a custom-format archive, kept aside as it streams by.

``pg_restore --jobs`` needs a seekable file, but the post-data section (indexes, constraints,
triggers, materialized view data) lives entirely in the TOC: its entries carry their SQL and
no data. A file that holds the archive's header and TOC only is therefore enough for
``pg_restore --section=post-data --jobs=N``, and a few KiB to MiB instead of the whole dump.

``toc_end(data)`` walks the header and the TOC the way pg_restore's ReadHead and ReadToc do
(archive versions 1.12 to 1.16: pg_dump 9.0 to 17) and returns where the TOC ends, None while
``data`` is too short. ``toc_layout(toc)`` gives what ``staged_split`` needs to cut the data
blocks that follow: the integer size, whether the data is compressed, and the dump ids of the
entries whose data is COPY text (TABLE DATA with a COPY statement). ``TocTap`` passes a stream
through unchanged and keeps its first bytes until the TOC is complete.
"""

from __future__ import annotations

from .._errors import ConfigError

MAGIC = b"PGDMP"
FORMAT_CUSTOM = 1
MIN_VERSION, MAX_VERSION = (1, 12), (1, 16)
MAX_TOC_BYTES = 64 * 1024 * 1024  # kept in memory: a larger TOC (~200k objects) needs staged=false


class UnsupportedArchive(ConfigError):
    """Not a custom-format archive this code can read the TOC of."""


class _Short(Exception):
    """The data ends before the TOC does."""


class _Cursor:
    def __init__(self, data):
        self.data, self.pos = data, 0
        self.int_size = self.off_size = 4
        self.compressed = True

    def take(self, count):
        end = self.pos + count
        if end > len(self.data):
            raise _Short()
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def byte(self):
        return self.take(1)[0]

    def int(self):
        """pg_dump's WriteInt: a sign byte, then ``int_size`` bytes, least significant first."""
        sign = self.byte()
        value = int.from_bytes(self.take(self.int_size), "little")
        return -value if sign else value

    def skip_str(self):
        """WriteStr: a length (-1 for NULL) and that many bytes; returns whether it was NULL."""
        return self.str() is None

    def str(self):
        """WriteStr's bytes, None for NULL."""
        length = self.int()
        if length < 0:
            return None
        return bytes(self.take(length))


def _header(cur):
    """The archive version (major, minor) after ReadHead's fields have been skipped; sets
    ``cur.compressed``."""
    if bytes(cur.take(5)) != MAGIC:
        raise UnsupportedArchive("the backup is not a pg_dump custom-format archive (no PGDMP header)")
    version = (cur.byte(), cur.byte())
    cur.byte()  # revision
    if not MIN_VERSION <= version <= MAX_VERSION:
        raise UnsupportedArchive("custom-format archive version %d.%d is not supported by the staged restore"
                                 " (%d.%d to %d.%d): restore with jobs=1 or staged=false" % (version + MIN_VERSION + MAX_VERSION))
    cur.int_size, cur.off_size = cur.byte(), cur.byte()
    if cur.byte() != FORMAT_CUSTOM:
        raise UnsupportedArchive("the backup is a pg_dump archive, but not of the custom format")
    if version >= (1, 15):
        cur.compressed = cur.byte() != 0  # compression algorithm, 0: none
    else:
        cur.compressed = cur.int() != 0  # compression level (-1: zlib's default)
    for _field in range(7):  # creation time: sec, min, hour, mday, mon, year, isdst
        cur.int()
    for _field in range(3):  # database name, server version, pg_dump version
        cur.skip_str()
    return version


def _entry(cur, version):
    """One TOC entry (ReadToc), then the custom format's data offset (a flag byte and an offset);
    returns (dump id, whether its data is COPY text)."""
    dump_id = cur.int()
    cur.int()  # had a data dumper
    strings = 10 if version >= (1, 14) else 9  # tableoid, oid, tag, desc, defn .. tablespace[, tableam]
    values = []
    for index in range(strings):
        if index == 4:
            cur.int()  # section, between desc and defn
        values.append(cur.str() if index in (3, 6) else cur.skip_str())  # desc, copyStmt
    if version >= (1, 16):
        cur.int()  # relkind
    cur.skip_str()  # owner
    cur.skip_str()  # "false" (WITH OIDS)
    while not cur.skip_str():  # dependencies, up to a NULL
        pass
    cur.take(1 + cur.off_size)
    return dump_id, values[3] == b"TABLE DATA" and bool(values[6]) and values[6].startswith(b"COPY ")


def _walk(data):
    """(the cursor after the TOC, the entries) of the archive at the start of ``data``."""
    cur = _Cursor(memoryview(data))
    version = _header(cur)
    count = cur.int()
    if count < 0:
        raise UnsupportedArchive("the archive's TOC is damaged (negative entry count)")
    return cur, [_entry(cur, version) for _index in range(count)]


def toc_end(data):
    """Offset just after the TOC of the custom-format archive at the start of ``data``, or None
    when ``data`` ends before it; UnsupportedArchive for what pg_restore's TOC reader is not."""
    try:
        return _walk(data)[0].pos
    except _Short:
        return None


def toc_layout(toc):
    """(integer size, whether the data blocks are compressed, the dump ids whose data is COPY
    text) of a complete header and TOC."""
    cur, entries = _walk(toc)
    return cur.int_size, cur.compressed, frozenset(dump_id for dump_id, copy in entries if copy)


class TocTap:
    """File-like: passes ``source`` through, keeping its first bytes until they hold the whole
    TOC (``toc`` is then those bytes, header and TOC, nothing after)."""

    def __init__(self, source, limit=MAX_TOC_BYTES):
        self.source, self.limit = source, limit
        self.buf, self.toc, self.checked = bytearray(), None, 0

    def read(self, size=-1):
        data = self.source.read(size)
        if self.toc is None and data:
            self.buf += data
            if len(self.buf) >= 2 * self.checked or len(self.buf) >= self.limit:  # parse again as it doubles
                self._try()
        return data

    def _try(self):
        self.checked = max(len(self.buf), 4096)
        end = toc_end(self.buf)
        if end is not None:
            self.toc, self.buf = bytes(self.buf[:end]), bytearray()
        elif len(self.buf) >= self.limit:
            raise UnsupportedArchive("the archive's TOC is larger than %d MiB: restore with staged=false"
                                     % (self.limit // (1024 * 1024)))

    def finish(self):
        """The header and TOC (after the stream was read to its end)."""
        if self.toc is None and self.buf:
            self._try()
        if self.toc is None:
            raise UnsupportedArchive("the archive ends before its TOC does")
        return self.toc
