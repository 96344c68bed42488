# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tar stream logic of volume_backup: names, member checks, header scanning, re-emission."""

from __future__ import annotations

import io
import os
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import IntegrityError
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar import headers as _headers, rewrite as _tar_rewrite
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.headers import (
    MemberChecker, TarScanner, UnsafeArchiveError, clean_name, rebase)
from tar_oracle import SafeTarStream


# ----------------------------------------------------------------------- helpers

def _info(name, kind=tarfile.REGTYPE, data=b"", linkname="", mode=0o644, **attrs):
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = linkname
    info.mode = mode
    info.mtime = attrs.pop("mtime", 1700000000)
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


def _tar(members, fmt=tarfile.PAX_FORMAT):
    """Build a tar in memory from (TarInfo, data) pairs."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt, encoding="utf-8",
                      errors="surrogateescape") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return buf.getvalue()


def _reg(name, data=b"x", **attrs):
    return _info(name, data=data, **attrs), data


def _dir(name, **attrs):
    attrs.setdefault("mode", 0o755)
    return _info(name, tarfile.DIRTYPE, **attrs), b""


def _sym(name, target):
    return _info(name, tarfile.SYMTYPE, linkname=target, mode=0o777), b""


def _lnk(name, target):
    return _info(name, tarfile.LNKTYPE, linkname=target), b""


def _read(data):
    with tarfile.open(fileobj=io.BytesIO(data), encoding="utf-8", errors="surrogateescape") as tar:
        return [(m.name, m.type, m.linkname, m.mode, m.uid, m.gid, m.mtime,
                 tar.extractfile(m).read() if m.isreg() else None) for m in tar.getmembers()]


# ----------------------------------------------------------------------- names

@pytest.mark.parametrize("name, expected", [
    (".", ""),
    ("./", ""),
    ("a", "a"),
    ("./a", "a"),
    ("./a//b/", "a/b"),
    ("a/./b", "a/b"),
    ("./caf\u00e9", "caf\u00e9"),
    ("./bad\udcff", "bad\udcff"),
    ("..a/b..", "..a/b.."),
])
def test_clean_name_accepts(name, expected):
    assert clean_name(name) == expected


@pytest.mark.parametrize("name, why", [
    ("/etc/passwd", "absolute"),
    ("//x", "absolute"),
    ("../x", "'..'"),
    ("./a/../../x", "'..'"),
    ("a/..", "'..'"),
    ("a\0b", "invalid"),
])
def test_clean_name_refuses(name, why):
    with pytest.raises(UnsafeArchiveError, match=why):
        clean_name(name)


@pytest.mark.parametrize("rel, root, expected", [
    ("", ".opskit-volume", ".opskit-volume"),
    ("a/b", ".opskit-volume", ".opskit-volume/a/b"),
    ("", ".", "."),
    ("a", ".", "a"),
])
def test_rebase(rel, root, expected):
    assert rebase(rel, root) == expected


# ----------------------------------------------------------------------- checker

def _check_all(members):
    checker = MemberChecker()
    return [checker.check(info) for info, _data in members]


def test_checker_accepts_a_normal_tree():
    members = [_dir("."), _dir("./etc"), _reg("./etc/a"), _lnk("./etc/b", "./etc/a"),
               _sym("./etc/c", "/usr/share/elsewhere"), _sym("./up", "../outside"),
               _info("./fifo", tarfile.FIFOTYPE), b""]
    members = [m if isinstance(m, tuple) else (m, b"") for m in members if m != b""]
    assert _check_all(members) == ["", "etc", "etc/a", "etc/b", "etc/c", "up", "fifo"]


@pytest.mark.parametrize("members, message", [
    ([_dir("."), _reg("/etc/passwd")], "absolute paths"),
    ([_dir("."), _reg("./a/../../evil")], "'..'"),
    ([_dir("."), (_info("./null", tarfile.CHRTYPE), b"")], "device files"),
    ([_dir("."), (_info("./sda", tarfile.BLKTYPE), b"")], "device files"),
    ([_reg(".")], "root"),
    ([_dir("."), _sym("./link", "/etc"), _reg("./link/passwd")], "through the symlink ./link|symlink link"),
    ([_dir("."), _sym("./d", "/"), _dir("./d/x")], "symlink"),
    ([_dir("."), _lnk("./h", "/etc/shadow")], "absolute"),
    ([_dir("."), _lnk("./h", "../../etc/shadow")], "'..'"),
    ([_dir("."), _lnk("./h", ".")], "root"),
    ([_dir("."), _sym("./s", "/etc"), _lnk("./h", "./s/shadow")], "link target goes through"),
])
def test_checker_refuses(members, message):
    with pytest.raises(UnsafeArchiveError, match=message):
        _check_all(members)


def test_a_symlink_replaced_by_a_directory_is_no_longer_a_symlink():
    members = [_dir("."), _sym("./a", "/etc"), _dir("./a"), _reg("./a/file")]
    assert _check_all(members)[-1] == "a/file"


def test_unsupported_member_type_is_refused():
    odd = _info("./odd", b"V")  # GNU volume header: not something a volume holds
    with pytest.raises(UnsafeArchiveError, match="unsupported member type"):
        MemberChecker().check(odd)


# ----------------------------------------------------------------------- scanner

def _scan(data, chunk):
    scanner = TarScanner("test")
    for pos in range(0, len(data), chunk):
        scanner.feed(data[pos:pos + chunk])
    return scanner


TREE = [_dir("."), _dir("./d"), _reg("./d/a", b"a" * 1000), _reg("./b", b""),
        _lnk("./d/h", "./d/a"), _sym("./s", "d/a"), _reg("./" + "n" * 150, b"long name"),
        _reg("./caf\u00e9", b"utf8"), _reg("./bad\udcff\udcfe", b"not utf8"),
        (_info("./f", tarfile.FIFOTYPE), b"")]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("chunk", [1, 7, 511, 512, 513, 4096, 1 << 20])
def test_scanner_counts_entries_whatever_the_chunking(fmt, chunk):
    data = _tar(TREE, fmt)
    scanner = _scan(data, chunk)
    assert scanner.finish() == {"entries": 10, "files": 6, "directories": 2, "symlinks": 1,
                                "hardlinks": 1, "file_bytes": 1021}


def test_scanner_uses_the_pax_size_record():
    # A PAX 'size' record overrides the header's size field (files over 8 GiB); emulate with a
    # member whose ustar size field is zeroed after the fact.
    info, data = _reg("./big", b"z" * 3000)
    info.pax_headers = {"size": "3000"}
    raw = bytearray(_tar([_dir("."), (info, data), _reg("./after", b"1")]))
    # locate the ustar header of ./big (after the PAX header of the root and of ./big) and zero
    # its size field (recomputing the checksum)
    pos = 0
    while pos < len(raw):
        block = raw[pos:pos + 512]
        if block[156:157] == b"0" and block[:5] == b"./big":
            block[124:136] = b"00000000000\0"
            block[148:156] = b"        "
            block[148:156] = b"%06o\0 " % sum(block)
            raw[pos:pos + 512] = block
            break
        size = _headers._number(block[124:136])
        pos += 512 + (size + 511) // 512 * 512
    assert _scan(bytes(raw), 1000).finish()["entries"] == 3


@pytest.mark.parametrize("cut", [100, 512, 1536, "last header", "mid data"])
def test_scanner_detects_a_truncated_stream(cut):
    data = _tar(TREE)
    content_end = (len(data.rstrip(b"\0")) + 511) // 512 * 512  # end of the last header
    if cut == "last header":
        cut = content_end  # every member complete, but no end-of-archive block
    elif cut == "mid data":
        cut = data.index(b"a" * 1000) + 10
    scanner = _scan(data[:cut], 4096)
    with pytest.raises(IntegrityError, match="ended early|incomplete"):
        scanner.finish()


def test_scanner_rejects_garbage():
    with pytest.raises(IntegrityError, match="not a valid tar"):
        _scan(os.urandom(2048), 512)


@pytest.mark.parametrize("field, value", [
    (b"0000644\0", 0o644),
    (b"      12 ", 0o12),
    (b"\0" * 8, 0),
    (b"\x80" + (2 ** 40).to_bytes(11, "big"), 2 ** 40),
    (b"\xff" * 12, -1),
])
def test_numeric_fields(field, value):
    assert _headers._number(field) == value


# ----------------------------------------------------------------------- re-emission

def test_safe_stream_renames_under_the_root_and_keeps_everything():
    attrs = dict(uid=1000, gid=1001, mode=0o600, mtime=1600000000)
    members = [_dir(".", uid=999, mode=0o750), _dir("./sub"), _reg("./sub/secret", b"s" * 5000, **attrs),
               _lnk("./hard", "./sub/secret"), _sym("./sub/link", "secret"),
               _reg("./bad\udcff", b"raw"), _reg("./" + "x" * 200, b"long"), _dir("./empty")]
    stream = SafeTarStream(io.BytesIO(_tar(members)), ".opskit-volume", chunk=1000, out_chunk=2048)
    out = b"".join(stream)
    got = _read(out)
    names = [g[0] for g in got]
    assert names == [".opskit-volume", ".opskit-volume/sub", ".opskit-volume/sub/secret",
                     ".opskit-volume/hard", ".opskit-volume/sub/link", ".opskit-volume/bad\udcff",
                     ".opskit-volume/" + "x" * 200, ".opskit-volume/empty"]
    by_name = {g[0]: g for g in got}
    secret = by_name[".opskit-volume/sub/secret"]
    assert secret[3:] == (0o600, 1000, 1001, 1600000000, b"s" * 5000)
    assert by_name[".opskit-volume"][3:5] == (0o750, 999)
    assert by_name[".opskit-volume/hard"][1:3] == (tarfile.LNKTYPE, ".opskit-volume/sub/secret")
    assert by_name[".opskit-volume/sub/link"][1:3] == (tarfile.SYMTYPE, "secret")
    assert stream.summary() == {"entries": 8, "files": 4, "directories": 3, "symlinks": 1, "hardlinks": 1,
                                "file_bytes": 5007}


def test_safe_stream_keeps_non_utf8_names_byte_for_byte():
    out = b"".join(SafeTarStream(io.BytesIO(_tar([_dir("."), _reg("./d\udce9j\u00e0", b"1")])), "r"))
    with tarfile.open(fileobj=io.BytesIO(out), encoding="utf-8", errors="surrogateescape") as tar:
        name = tar.getmembers()[1].name
    assert os.fsencode(name) == b"r/d\xe9j\xc3\xa0"


def test_safe_stream_stops_at_the_first_unsafe_member_without_emitting_it():
    members = [_dir("."), _reg("./ok", b"fine"), _reg("../../etc/cron.d/evil", b"pwn"), _reg("./never")]
    stream = SafeTarStream(io.BytesIO(_tar(members)), "root", out_chunk=1)
    emitted = []
    with pytest.raises(UnsafeArchiveError, match="'..'"):
        for chunk in stream:
            emitted.append(chunk)
    blob = b"".join(emitted)
    assert b"pwn" not in blob and b"evil" not in blob and b"fine" in blob


def test_safe_stream_converts_a_gnu_sparse_member_to_plain_data(tmp_path):
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 20)
        fh.seek(1 << 19)
        fh.write(b"middle")
    import subprocess
    tarball = tmp_path / "s.tar"
    proc = subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(tmp_path), "-cf", str(tarball),
                           "./sparse"], capture_output=True, check=False)
    if proc.returncode:
        pytest.fail("GNU tar (which the harness itself needs) could not build a sparse archive: %s" % proc.stderr)
    with open(tarball, "rb") as fh:
        out = b"".join(SafeTarStream(fh, "r"))
    got = _read(out)
    assert got[0][1] == tarfile.REGTYPE
    assert got[0][-1] == sparse.read_bytes()


def test_safe_stream_rejects_a_corrupt_archive():
    with pytest.raises(IntegrityError, match="not a valid tar"):
        b"".join(SafeTarStream(io.BytesIO(b"\1" * 4096), "r"))


def test_safe_stream_reports_a_truncated_member():
    data = _tar([_dir("."), _reg("./big", b"b" * 100000)])
    with pytest.raises(IntegrityError):
        b"".join(SafeTarStream(io.BytesIO(data[:20000]), "r"))


# ----------------------------------------------------------------------- header-level rewriter

def _rewrite(data, root=".opskit-volume", chunk=1000):
    stream = io.BytesIO(data)
    gen = _tar_rewrite.rewrite_stream(stream, root, chunk=chunk)
    out = []
    while True:
        try:
            out.append(next(gen))
        except StopIteration as stop:
            return b"".join(out), stop.value


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT, tarfile.USTAR_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 4096, 1 << 20])
def test_rewriter_matches_the_tarfile_path(fmt, chunk):
    """Same members, attributes and data as SafeTarStream, whatever the header format."""
    attrs = dict(uid=1000, gid=1001, mode=0o600, mtime=1600000000)
    members = [_dir(".", uid=999, mode=0o750), _dir("./sub"), _reg("./sub/secret", b"s" * 5000, **attrs),
               _lnk("./hard", "./sub/secret"), _sym("./sub/link", "secret"), _reg("./empty-file", b""),
               _dir("./" + "d" * 90), _reg("./" + "d" * 90 + "/file", b"deep"),
               (_info("./fifo", tarfile.FIFOTYPE), b"")]
    if fmt != tarfile.USTAR_FORMAT:
        members += [_reg("./bad\udcff", b"raw"), _reg("./" + "x" * 200, b"long"),
                    _lnk("./" + "h" * 150, "./sub/secret")]
    data = _tar(members, fmt)
    out, rewriter = _rewrite(data, chunk=chunk)
    slow_stream = SafeTarStream(io.BytesIO(data), ".opskit-volume")
    slow = b"".join(slow_stream)
    assert _read(out) == _read(slow)
    assert rewriter.summary() == slow_stream.summary()
    assert rewriter.entries == len(members)


@pytest.mark.parametrize("members, message", [
    ([_dir("."), _reg("/etc/passwd")], "absolute paths"),
    ([_dir("."), _reg("./a/../../evil")], "'..'"),
    ([_dir("."), (_info("./null", tarfile.CHRTYPE), b"")], "device files"),
    ([_dir("."), _sym("./link", "/etc"), _reg("./link/passwd")], "symlink"),
    ([_dir("."), _lnk("./h", "../../etc/shadow")], "'..'"),
    ([_dir("."), _reg("./" + "y" * 120 + "/../../../escape")], "'..'"),
])
def test_rewriter_refuses_unsafe_members(members, message):
    with pytest.raises(UnsafeArchiveError, match=message):
        _rewrite(_tar(members, tarfile.GNU_FORMAT))
    with pytest.raises(UnsafeArchiveError, match=message):
        _rewrite(_tar(members, tarfile.PAX_FORMAT))


def test_rewriter_refuses_gnu_sparse_members(tmp_path):
    import subprocess
    sparse = tmp_path / "sparse"
    with open(sparse, "wb") as fh:
        fh.truncate(1 << 20)
    tarball = tmp_path / "s.tar"
    proc = subprocess.run(["tar", "--sparse", "--format=gnu", "-C", str(tmp_path), "-cf", str(tarball),
                           "./sparse"], capture_output=True, check=False)
    if proc.returncode:
        pytest.fail("GNU tar (which the harness itself needs) could not build a sparse archive: %s" % proc.stderr)
    with pytest.raises(UnsafeArchiveError, match="sparse"):
        _rewrite(tarball.read_bytes())


@pytest.mark.parametrize("cut", ["mid data", "last header"])
def test_rewriter_detects_truncation(cut):
    data = _tar(TREE)
    content_end = (len(data.rstrip(b"\0")) + 511) // 512 * 512
    at = content_end if cut == "last header" else data.index(b"a" * 1000) + 10
    with pytest.raises(IntegrityError, match="ended early|incomplete"):
        _rewrite(data[:at])


def test_rewriter_emits_nothing_of_an_unsafe_member():
    data = _tar([_dir("."), _reg("./ok", b"fine"), _reg("../../etc/cron.d/evil", b"pwn")])
    rewriter = _tar_rewrite.TarRewriter("root")
    with pytest.raises(UnsafeArchiveError):
        for pos in range(0, len(data), 700):
            rewriter.feed(data[pos:pos + 700])
    blob = b"".join(bytes(c) for c in rewriter.out)
    assert b"pwn" not in blob and b"evil" not in blob and b"fine" in blob
