# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The data section of a streamed custom-format archive, loaded by several pg_restore at once.

A table's data is one block of the stream, so a single ``pg_restore`` loads a large table with
one COPY on one backend, however many jobs were asked for. Here the stream's data blocks are
cut at row boundaries and the rows of a large table are shared between ``ways`` loaders, each a
``pg_restore --section=data`` reading a valid archive from its stdin:

- the main loader gets the header and TOC, then every block (of a shared table, its part);
- a side loader (``--use-list`` naming one entry) gets the header and TOC, the block's header,
  its part of the rows and the block's end.

The cut needs no parsing of each row: ``pg_dump --compress=0`` writes each row of a COPY (text
format, which has no NUL and no newline but the one that ends a row) as one chunk, a length
(a sign byte and ``int_size`` bytes) then the row. So a newline is either the end of a row or
one of the 4 bytes of a length that follows the end of a row: a newline with no newline 2 to 5
bytes before it ends a row, and a newline followed by an int 0 (the end of a block) can only be
the end of the last row. Each cut is checked against the chunk that follows it. A block that
is not COPY text (large objects, ``--inserts`` data, a compressed archive) and all that follows
it go to the main loader unchanged.

Rows of a shared table land in the table in another order than the dump's (physical order is
not part of what a restore keeps). ``single_transaction`` needs jobs=1: nothing is shared then.
"""

from __future__ import annotations

import queue
import threading

from .._engine.streams import CHUNK
from .._errors import OpsError
from .staged_toc import TocTap, UnsupportedArchive, toc_layout

BLK_DATA = 1
SPLIT_AFTER = 8 * 1024 * 1024   # a table's rows beyond this are shared with side loaders
SEGMENT = 1024 * 1024           # rows are handed out in pieces of about this size
QUEUE_DEPTH = 4                 # pieces waiting per loader


class _Aborted(Exception):
    """The stream failed: the loader stops its pg_restore."""


class Loader:
    """A pg_restore fed from a queue by ``tools.feed`` in a thread of its own."""

    def __init__(self, tools, argv):
        self.queue = queue.Queue(QUEUE_DEPTH)
        self.aborted = threading.Event()
        self.ended = False
        self.result = None  # (rc, stderr) of feed, or the OpsError it raised
        self.thread = threading.Thread(target=self._run, args=(tools, argv), daemon=True)
        self.thread.start()

    def _run(self, tools, argv):
        try:
            self.result = tools.feed(argv, self, check=False)
        except _Aborted:
            self.result = None
        except OpsError as exc:
            self.result = exc
        finally:
            while not self.ended and not self.aborted.is_set():  # pg_restore stopped early: take the rest
                try:
                    self.ended = self.queue.get(timeout=1) is None
                except queue.Empty:
                    continue

    def read(self, _size=None):
        """The tool's stdin (for ``tools.feed``)."""
        item = self.queue.get()
        if self.aborted.is_set():
            raise _Aborted()
        if item is None:
            self.ended = True
            return b""
        return item

    def put(self, data):
        self.queue.put(data)

    def backlog(self):
        return self.queue.qsize()

    def close(self):
        self.queue.put(None)

    def abort(self):
        self.aborted.set()
        try:
            self.queue.put_nowait(None)  # wakes a read() that waits
        except queue.Full:
            pass

    def join(self, timeout=None):
        self.thread.join(timeout)
        return self.result


class _Block:
    def __init__(self, dump_id, header):
        self.dump_id, self.header = dump_id, header
        self.size, self.sides, self.turn, self.started = 0, [], 0, False


class Splitter:
    """Cuts the stream after the TOC into what each loader reads (see the module docstring).
    ``spawn(dump_id)`` starts a loader (``None``: the main one) with ``put``, ``backlog`` and
    ``close``; ``feed`` takes the stream's bytes in order, ``finish`` its end. The loaders get
    memoryviews of the bytes fed: one copy of the stream, where what a cut left joins the next
    bytes."""

    def __init__(self, toc, spawn, ways, split_after=None, segment=SEGMENT):
        int_size, compressed, copy_ids = toc_layout(toc)
        self.toc, self.spawn, self.ways = toc, spawn, ways
        self.split_after = SPLIT_AFTER if split_after is None else split_after
        self.segment = segment
        self.copy_ids = frozenset() if compressed or ways < 2 else copy_ids
        self.int_size = int_size
        self.head_size = 2 + int_size  # block type, the dump id (a sign byte and int_size bytes)
        self.zero = bytes(1 + int_size)  # an int 0: the end of a block's chunks
        self.term = b"\n" + self.zero
        self.main = spawn(None)
        self.main.put(toc)
        self.buf, self.state, self.block, self.scanned = b"", "head", None, 0

    def feed(self, data):
        if self.state == "pass":
            if data:
                self.main.put(data)
            return
        buf = self.buf + data if self.buf else bytes(data)
        view, pos = memoryview(buf), 0
        while self.state != "pass":
            step = self._head(buf, pos) if self.state == "head" else self._body(buf, view, pos)
            if step is None:
                break
            pos = step
        if self.state == "pass":
            if pos < len(buf):
                self.main.put(view[pos:])
            self.buf = b""
        else:
            self.buf = buf[pos:]
            self.scanned = max(0, self.scanned - pos)

    def finish(self):
        """The end of the stream: what is left goes to the main loader (a stream cut short
        fails there, as it would have without sharing), then every loader's input ends."""
        if self.buf:
            self.main.put(self.buf)
            self.buf = b""
        if self.block is not None:
            for side in self.block.sides:
                side.close()
        self.main.close()

    def _pass(self, pos):
        """From ``pos`` on, the stream goes to the main loader as it is."""
        if self.block is not None and self.block.sides:
            raise UnsupportedArchive("the data of dump entry %d is not framed the way pg_dump writes COPY rows:"
                                     " restore with jobs=1" % self.block.dump_id)
        self.state = "pass"
        return pos

    def _head(self, buf, pos):
        if len(buf) - pos < self.head_size:
            return None
        kind, sign = buf[pos], buf[pos + 1]
        dump_id = int.from_bytes(buf[pos + 2:pos + self.head_size], "little")
        if kind != BLK_DATA or sign or dump_id not in self.copy_ids:
            return self._pass(pos)
        header = buf[pos:pos + self.head_size]
        self.main.put(header)
        self.block, self.state, self.scanned = _Block(dump_id, header), "body", pos + self.head_size
        return pos + self.head_size

    def _body(self, buf, view, pos):
        block = self.block
        if not block.started:  # the first chunk: the end of an empty table's data, or a row
            if len(buf) - pos < len(self.zero):
                return None
            if buf.startswith(self.zero, pos):
                return self._end(view, pos, pos)
            if not self._framed(buf, pos):
                return self._pass(pos)
            block.started = True
        end = buf.find(self.term, max(pos, self.scanned))
        if end >= 0:
            return self._end(view, pos, end + 1)
        self.scanned = max(pos, len(buf) - len(self.term) + 1)
        if len(buf) - pos < self.segment:
            return None
        cut = self._cut(buf, pos)
        if cut is None:
            return None
        self._send(view[pos:cut])
        if not self._framed(buf, cut):  # what follows a cut is a row too
            return self._pass(cut)
        return cut

    def _framed(self, buf, pos):
        """Whether the chunk at ``pos`` is a row (a positive length, a newline at its end); True
        when the buffer ends before its end."""
        size = self.int_size
        if len(buf) < pos + 1 + size:
            return True
        length = int.from_bytes(buf[pos + 1:pos + 1 + size], "little")
        last = pos + size + length
        return buf[pos] == 0 and length > 0 and (last >= len(buf) or buf[last] == 10)

    def _cut(self, buf, pos):
        """Where the longest run of whole rows from ``pos`` ends, None if none is found: after a
        newline that has no newline 2 to 5 bytes before it (so it is not a byte of a length),
        and that the search for the block's end has passed."""
        back = 1 + self.int_size
        end = len(buf) - len(self.term) + 1
        while True:
            end = buf.rfind(b"\n", pos, end)
            if end <= pos + back:
                return None
            if buf.find(b"\n", end - back, end - 1) < 0:
                return end + 1
            end -= 1

    def _send(self, rows):
        """Whole rows of the block to a loader: the main one for its first ``split_after``
        bytes, then the one with the fewest pieces waiting."""
        block = self.block
        loader = self.main
        if block.size >= self.split_after:
            if not block.sides:
                for _index in range(self.ways - 1):
                    side = self.spawn(block.dump_id)
                    side.put(self.toc + block.header)
                    block.sides.append(side)
            loaders = [self.main] + block.sides
            block.turn = (block.turn + 1) % len(loaders)
            loader = min(loaders[block.turn:] + loaders[:block.turn], key=lambda each: each.backlog())
        block.size += len(rows)
        loader.put(rows)

    def _end(self, view, pos, end):
        """The block's rows end at ``end``: the rest of them to a loader, the block's end to
        every loader of it."""
        if end > pos:
            self._send(view[pos:end])
        self.main.put(self.zero)
        for side in self.block.sides:
            side.put(self.zero)
            side.close()
        self.block, self.state = None, "head"
        return end + len(self.zero)


def read_toc(reader):
    """(the header and TOC, the bytes read after them) from the start of ``reader``."""
    tap, head = TocTap(reader), bytearray()
    while tap.toc is None:
        data = tap.read(CHUNK)
        if not data:
            break
        head += data
    toc = tap.finish()
    return toc, bytes(head[len(toc):])


def load_split(tools, reader, toc, rest, argv_for, ways):
    """The rest of ``reader`` (``rest`` first) loaded by the loaders of a Splitter; returns each
    loader's result, the main one first. The stream is read to its end whatever happens to the
    loaders, so its sha256 is checked (a corrupt stream is reported as such)."""
    loaders = []

    def spawn(dump_id):
        loader = Loader(tools, argv_for(dump_id))
        loaders.append(loader)
        return loader
    done = False
    try:
        splitter = Splitter(toc, spawn, ways)
        try:
            splitter.feed(rest)
            for data in iter(lambda: reader.read(CHUNK), b""):
                splitter.feed(data)
        except UnsupportedArchive:
            for _data in iter(lambda: reader.read(CHUNK), b""):
                pass
            raise
        splitter.finish()
        done = True
    finally:
        if not done:
            for loader in loaders:
                loader.abort()
    return [loader.join() for loader in loaders]
