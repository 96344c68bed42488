# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cut of a streamed custom-format archive's data between several loaders (staged_split):
each loader must read a valid archive, and together they must load every row once."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._postgres.staged_split import Splitter
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.staged_toc import UnsupportedArchive, toc_end
from test_pg_staged_logic import _int, _str


def _entry(dump_id, desc, copy):
    out = _int(dump_id) + _int(1) + _str("0") + _str("0") + _str("t%d" % dump_id) + _str(desc) + _int(3)
    out += _str("") + _str("") + _str(copy) + _str("public") + _str("") + _str("heap")
    return out + _str("postgres") + _str("false") + _str(None) + bytes([3]) + bytes(8)


def dump(tables, level=0, blobs=False):
    """(the archive, its TOC's end) of ``tables`` {dump id: [rows]}, each row written as one
    chunk, as pg_dump --compress=0 writes COPY data; ``blobs`` adds a large-object block."""
    out = b"PGDMP" + bytes([1, 14, 0, 4, 8, 1]) + _int(level) + b"".join(_int(v) for v in (1, 2, 3, 4, 5, 126, 0))
    out += _str("db") + _str("15.13") + _str("15.13") + _int(len(tables) + blobs)
    for dump_id in tables:
        out += _entry(dump_id, "TABLE DATA", "COPY public.t%d (v) FROM stdin;\n" % dump_id)
    if blobs:
        out += _entry(99, "BLOBS", None)
    end = len(out)
    for dump_id, rows in tables.items():
        out += bytes([1]) + _int(dump_id) + b"".join(_int(len(row)) + row for row in rows) + _int(0)
    if blobs:
        out += bytes([3]) + _int(99) + _int(16400) + _int(3) + b"\n\x00\n" + _int(0) + _int(0)
    return out, end


def blocks(stream):
    """{dump id: rows} of a loader's stream, which must be a complete, valid archive."""
    pos, found = toc_end(stream), {}
    while pos < len(stream):
        kind, dump_id = stream[pos], int.from_bytes(stream[pos + 2:pos + 6], "little")
        assert kind == 1 and stream[pos + 1] == 0
        pos, rows = pos + 6, []
        while True:
            length = int.from_bytes(stream[pos + 1:pos + 5], "little")
            assert stream[pos] == 0
            pos += 5
            if not length:
                break
            rows.append(stream[pos:pos + length])
            pos += length
        found[dump_id] = rows
    return found


class Fake:
    def __init__(self, dump_id):
        self.dump_id, self.data, self.closed, self.waiting = dump_id, bytearray(), False, 0

    def put(self, data):
        assert not self.closed
        self.data += data

    def backlog(self):
        self.waiting = (self.waiting + 1) % 3  # unequal queues: the choice moves around
        return self.waiting

    def close(self):
        self.closed = True


def split(stream, end, ways=2, split_after=8000, segment=256, seed=1, at=None):
    """The loaders a Splitter started for ``stream`` fed in random pieces (or cut ``at``)."""
    loaders = []

    def spawn(dump_id):
        loaders.append(Fake(dump_id))
        return loaders[-1]
    splitter = Splitter(stream[:end], spawn, ways, split_after=split_after, segment=segment)
    rng, pos = random.Random(seed), end
    while pos < len(stream):  # pieces of 1 byte to several segments
        size = rng.choice([1, 7, 100, 300, 1000, 5000])
        if at is not None and pos + size > at - 400:  # then one piece that ends ``at``
            size = at - pos if pos < at else len(stream)
        splitter.feed(stream[pos:pos + size])
        pos += size
    splitter.finish()
    assert all(loader.closed for loader in loaders)
    return loaders


def tricky_rows(count, seed):
    """Rows whose lengths have newline bytes (10, 266, 2570), an empty row, random text."""
    rng = random.Random(seed)
    rows = [b"x" * 9 + b"\n", b"\n", b"y" * 265 + b"\n", b"z" * 2569 + b"\n", b"a\\nb\tc\\\\\n"]
    rows += [bytes(rng.choice(b"abc\t\\ 0123456789") for _i in range(rng.randint(0, 40))) + b"\n" for _i in range(count)]
    rng.shuffle(rows)
    return rows


@pytest.mark.parametrize("seed", range(6))
def test_every_row_once_and_every_loader_a_valid_archive(seed):
    tables = {1: tricky_rows(3000, seed), 2: [], 3: tricky_rows(50, seed + 10), 4: tricky_rows(2000, seed + 20)}
    stream, end = dump(tables)
    loaders = split(stream, end, seed=seed)
    main, sides = loaders[0], loaders[1:]
    assert main.dump_id is None and sorted(s.dump_id for s in sides) == [1, 4]  # the two large tables
    got = blocks(bytes(main.data))
    assert list(got) == [1, 2, 3, 4] and got[2] == [] and got[3] == tables[3]
    for side in sides:
        theirs = blocks(bytes(side.data))
        assert list(theirs) == [side.dump_id] and theirs[side.dump_id]
        assert bytes(side.data[:end]) == stream[:end]
        got[side.dump_id] = got[side.dump_id] + theirs[side.dump_id]
    for dump_id, rows in tables.items():
        assert Counter(got[dump_id]) == Counter(rows), dump_id
    assert got[1][:10] == tables[1][:10]  # the main loader's part comes first, in order


@pytest.mark.parametrize("case", ["one way", "compressed", "small", "blobs"])
def test_what_is_not_shared_reaches_the_main_loader_unchanged(case):
    tables = {1: tricky_rows(2000, 3), 2: tricky_rows(10, 4)}
    stream, end = dump(tables, level=-1 if case == "compressed" else 0, blobs=case == "blobs")
    loaders = split(stream, end, ways=1 if case == "one way" else 2, split_after=10 ** 9 if case == "small" else 8000)
    if case == "blobs":  # the tables before the large objects are shared, the large objects pass as they are
        assert [loader.dump_id for loader in loaders] == [None, 1]
        assert loaders[0].data.endswith(stream[stream.rindex(bytes([3]) + _int(99)):])
        return
    assert [loader.dump_id for loader in loaders] == [None] and bytes(loaders[0].data) == stream


def test_rows_not_framed_as_copy_are_passed_then_refused_once_shared():
    rows = tricky_rows(2000, 5)
    stream, end = dump({1: [b"INSERT INTO t VALUES (1);"] + rows})  # a chunk without its newline
    loaders = split(stream, end)
    assert [loader.dump_id for loader in loaders] == [None] and bytes(loaders[0].data) == stream
    half = len(rows) // 2
    bad = b"two\n" + b"x" * 100 + b"\n"  # a newline inside a chunk: a cut there is seen, once rows are shared
    stream, end = dump({1: rows[:half] + [b"no newline", bad] + rows[half:]})
    loaders = split(stream, end)  # cuts elsewhere: every loader still gets whole chunks
    got = blocks(bytes(loaders[0].data))[1] + blocks(bytes(loaders[1].data))[1]
    assert Counter(got) == Counter(rows[:half] + [b"no newline", bad] + rows[half:])
    with pytest.raises(UnsupportedArchive, match="not framed the way pg_dump writes COPY rows"):
        split(stream, end, at=stream.index(bad) + 50)
