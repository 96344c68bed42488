# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore's parallel file writers (tar/writers.py, TarExtractor with writers) and the
fast decoding of PAX headers (tar/headers.py): the same tree as the sequential extractor and
as tarfile, whatever the order of the members."""

from __future__ import annotations

import io
import os
import stat
import tarfile
import threading

import pytest
from test_volume_extract import _extract as _extract_into

from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar import headers
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.extract import ExtractError, TarExtractor, extract_chunks
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.writers import FileWriters

MTIME = 1700000000


def _info(name, kind=tarfile.REGTYPE, data=b"", **attrs):
    info = tarfile.TarInfo(name)
    info.type, info.mtime, info.mode = kind, MTIME, 0o755 if kind == tarfile.DIRTYPE else 0o640
    info.pax_headers = {"mtime": "%d.123456789" % MTIME}  # as tree.py writes: a PAX header each
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    for key, value in attrs.items():
        setattr(info, key, value)
    return info, data


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if info.size else None)
    return buf.getvalue()


def _many():
    """Files in several directories, names listed twice, hard links to files just written, a
    file replaced by a symlink, a hole, a read-only directory, a large (inline) file."""
    members = [_info(".", tarfile.DIRTYPE), _info("./ro", tarfile.DIRTYPE, mode=0o555)]
    members += [_info("./d%d" % index, tarfile.DIRTYPE) for index in range(7)]
    for index in range(300):
        members.append(_info("./d%d/f%03d" % (index % 7, index), data=os.urandom(index * 37 % 5000)))
        if index % 50 == 0:
            members.append(_info("./ro/h%d" % index, tarfile.LNKTYPE, linkname="./d%d/f%03d" % (index % 7, index)))
    members += [_info("./d1/f001", data=b"listed twice: the last one wins"),
                _info("./d2/f002", tarfile.SYMTYPE, linkname="f009"),
                _info("./d3/sparse", data=b"a" * 10 + bytes(3 * 4096) + b"z", mode=0o600),
                _info("./big", data=os.urandom(headers.CHUNK + 3000), mode=0o400),
                _info("./d4/f004", tarfile.LNKTYPE, linkname="./big"),
                _info("./ro/last", data=b"written before ro/ turns read-only")]
    return members


def _tree(root):
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in sorted(dirnames + filenames) + ([] if dirpath != str(root) else ["."]):
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            entry = (oct(st.st_mode), st.st_mtime_ns, st.st_nlink)
            if stat.S_ISREG(st.st_mode):
                with open(path, "rb") as fh:
                    entry += (fh.read(), st.st_blocks * 512 < st.st_size)
            elif stat.S_ISLNK(st.st_mode):
                entry += (os.readlink(path),)
            out[os.path.relpath(path, root)] = entry
    return out


def _extract(data, root, chunk, **kw):
    root.mkdir()
    return _extract_into(data, root, chunk, **kw)


def _writer_threads():
    return [t for t in threading.enumerate() if t.name == "opskit-restore-writer"]


@pytest.mark.parametrize("chunk", [511, 65536, 1 << 20])
def test_the_writer_pool_gives_the_tree_of_the_sequential_extractor(tmp_path, chunk):
    data = _tar(_many())
    one = _extract(data, tmp_path / "one", chunk, writers=0)
    pooled = _extract(data, tmp_path / "pool", chunk, writers=3)
    assert one == pooled and one["files"] == 300 + 6 + 5  # the hard links count as files
    assert _tree(tmp_path / "one") == _tree(tmp_path / "pool")
    assert (tmp_path / "pool" / "d1" / "f001").read_bytes() == b"listed twice: the last one wins"
    assert os.stat(tmp_path / "pool" / "ro" / "h50").st_nlink == 2
    assert stat.S_IMODE(os.stat(tmp_path / "pool" / "ro").st_mode) == 0o555
    assert os.lstat(tmp_path / "pool" / "d3" / "sparse").st_blocks * 512 < 3 * 4096
    assert not _writer_threads()


def test_a_writer_error_fails_the_extraction_and_stops_every_writer(tmp_path):
    """A directory planted where a pooled file goes: the writer's error is raised in the
    parsing thread, the queued files are not written, no thread or descriptor is left."""
    data = _tar([_info(".", tarfile.DIRTYPE)] + [_info("./f%04d" % i, data=b"x" * 100) for i in range(2000)])
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f0100").mkdir()
    fds = len(os.listdir("/proc/self/fd"))
    fd = os.open(str(tmp_path / "t"), os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(ExtractError, match="f0100 would replace a directory"):
            extract_chunks([data], TarExtractor(fd, writers=2))
    finally:
        os.close(fd)
    assert not _writer_threads()
    assert len(os.listdir("/proc/self/fd")) == fds
    assert len(os.listdir(tmp_path / "t")) < 2000


def test_the_queued_bytes_stay_under_the_limit():
    seen, lock = [], threading.Lock()
    pool = None

    def write(job):
        with lock:
            seen.append((pool.queued, pool.busy))

    pool = FileWriters(write, lambda job: None, threads=2, limit=1000)
    try:
        for index in range(200):
            pool.submit("f%d" % index, index, 300)
        pool.submit("huge", "huge", 5000)  # larger than the limit: let through alone
        pool.drain()
    finally:
        pool.close()
    assert len(seen) == 201
    assert max(queued for queued, busy in seen if busy > 1) <= 1000
    assert (5000, 1) in seen and pool.queued == 0 and not pool.pending


NAMES = ["./plain", "./ünïcödé", "./" + "long/" * 30 + "deep", "./dir/", "./tab\tand space"]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("extra", [
    {}, {"pax_headers": {"mtime": "-12.5"}}, {"uid": 8 ** 8 + 1, "gid": 2 ** 30, "uname": "ü", "gname": "g"},
    {"pax_headers": {"SCHILY.xattr.user.k": "v=1\n2", "LIBARCHIVE.xattr.user.b": "AAE"}},
    {"type": tarfile.SYMTYPE, "linkname": "t/" * 80}, {"type": tarfile.DIRTYPE},
])
def test_fast_pax_headers_decode_as_tarfile_does(name, extra):
    info = tarfile.TarInfo(name)
    info.mtime, info.size = MTIME, 0
    for key, value in extra.items():
        setattr(info, key, value)
    blocks = info.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
    fast = headers._fast_pax_member(blocks)
    slow = tarfile.open(fileobj=io.BytesIO(blocks + bytes(1024)), mode="r:", encoding="utf-8",
                        errors="surrogateescape").next()
    if blocks[156:157] != b"x" or len(blocks) < 3 * 512:
        assert fast is None  # no PAX header: the walker decodes the ustar block itself
        return
    assert fast is not None
    for field in ("name", "linkname", "size", "mtime", "uid", "gid", "uname", "gname", "type", "mode",
                  "pax_headers"):
        assert getattr(fast, field) == getattr(slow, field), field


@pytest.mark.parametrize("blocks", [
    b"bad", tarfile.TarInfo("./n\udcff").tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape"),
    tarfile.TarInfo("./" + "x" * 120).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape"),
])
def test_what_the_fast_path_does_not_know_goes_to_tarfile(blocks):
    """Non-UTF-8 names (hdrcharset), GNU long names, anything malformed: tarfile decodes it."""
    assert headers._fast_pax_member(blocks) is None
