# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Directory backups under attack: symlinks swapped in while the tree is read, files that
shrink or vanish while they are read."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
import time

import pytest

from test_volume_directory import _backup

SECRET = b"TOPSECRET root-only content"


def _members(data):
    out = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for member in tar:
            out[member.name] = (member.type, tar.extractfile(member).read() if member.isreg() else b"")
    return out


# The attacker: another process (so it truly runs alongside) that swaps ``tree/d/f`` between a
# file and a symlink to a secret file, and ``tree/dd`` between a directory and a symlink to a
# secret directory, as fast as it can, counting its rounds in ``count``.
SWAPPER = r"""
import os, sys, time
b = sys.argv[1]
j = lambda *p: os.path.join(b, *p)
n = 0
open(j("started"), "w").close()
while not os.path.exists(j("stop")):
    os.symlink(j("secret", "key"), j("prep", "link"))
    os.rename(j("prep", "link"), j("tree", "d", "f"))
    time.sleep(0.0003)
    with open(j("prep", "file"), "w") as fh:
        fh.write("harmless")
    os.rename(j("prep", "file"), j("tree", "d", "f"))
    os.rename(j("tree", "dd"), j("prep", "dd"))
    os.symlink(j("secret"), j("tree", "dd"))
    time.sleep(0.0003)
    os.unlink(j("tree", "dd"))
    os.rename(j("prep", "dd"), j("tree", "dd"))
    n += 1
with open(j("count"), "w") as fh:
    fh.write(str(n))
"""


def test_a_symlink_swap_loop_never_gets_a_link_target_into_the_backup(tmp_path):
    base = str(tmp_path)
    for d in ("secret", "prep", "tree/d", "tree/dd"):
        os.makedirs(os.path.join(base, d))
    with open(os.path.join(base, "secret", "key"), "wb") as fh:
        fh.write(SECRET)
    os.chmod(os.path.join(base, "secret", "key"), 0o600)
    with open(os.path.join(base, "tree", "d", "f"), "w") as fh:
        fh.write("harmless")
    with open(os.path.join(base, "tree", "dd", "inner"), "w") as fh:
        fh.write("harmless inner")
    for i in range(30):  # something to read while the swaps go on
        with open(os.path.join(base, "tree", "d", "pad-%02d" % i), "wb") as fh:
            fh.write(os.urandom(2000))
    swapper = subprocess.Popen([sys.executable, "-c", SWAPPER, base])
    while not os.path.exists(os.path.join(base, "started")):
        assert swapper.poll() is None
        time.sleep(0.01)
    try:
        kinds, rounds = set(), 0
        # at least 150 backups, and on until both sides of the swap were seen (a loaded machine
        # schedules the swapper less often): the race really ran, whatever the load
        while rounds < 150 or not {tarfile.REGTYPE, tarfile.SYMTYPE} <= kinds:
            assert rounds < 20000, "the swapper never got to run: %s" % sorted(kinds)
            data, stats = _backup(os.path.join(base, "tree"))
            members = _members(data)
            assert not any(SECRET in data for _type, data in members.values()), "secret leaked"
            assert "./dd/key" not in members
            kinds.add(members.get("./d/f", ("left out",))[0])
            assert stats["entries"] == len(members)
            rounds += 1
    finally:
        open(os.path.join(base, "stop"), "w").close()
        swapper.wait(30)
    with open(os.path.join(base, "count")) as fh:
        assert int(fh.read()) > 0


def test_a_file_that_shrinks_while_it_is_read_is_padded_and_reported(tmp_path, monkeypatch):
    from ansible_collections.opskit.runbook.plugins.module_utils._volume import tree
    (tmp_path / "tree").mkdir()
    (tmp_path / "tree" / "app.log").write_bytes(b"L" * 100000)
    (tmp_path / "tree" / "other").write_bytes(b"o")
    real_read = os.read

    def truncating_read(fd, size):  # copytruncate right after the first read
        data = real_read(fd, min(size, 4096))
        if data.startswith(b"L"):
            os.truncate(tmp_path / "tree" / "app.log", 0)
        return data
    monkeypatch.setattr(tree.os, "read", truncating_read)
    data, stats = _backup(tmp_path / "tree")
    members = _members(data)
    assert members["./app.log"][1] == b"L" * 4096 + b"\0" * (100000 - 4096)
    assert members["./other"][1] == b"o"
    assert stats["warnings"] == ["1 file(s) shrank while being read and were padded with zeros to their size at"
                                 " the start: ./app.log"]


def test_an_entry_that_vanishes_is_left_out_and_reported(tmp_path, monkeypatch):
    from ansible_collections.opskit.runbook.plugins.module_utils._volume import tree
    (tmp_path / "tree" / "sub").mkdir(parents=True)
    for name in ("a", "b", "sub/c"):
        (tmp_path / "tree" / name).write_text(name)
    real_open = os.open

    def vanishing_open(path, flags, *args, **kwargs):
        if path == "b":
            os.unlink(tmp_path / "tree" / "b")
        return real_open(path, flags, *args, **kwargs)
    monkeypatch.setattr(tree.os, "open", vanishing_open)
    data, stats = _backup(tmp_path / "tree")
    assert sorted(_members(data)) == [".", "./a", "./sub", "./sub/c"]
    assert "./b" in stats["warnings"][0] and "left out" in stats["warnings"][0]


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(payload)
            info.pax_headers = {"opskit.test": "x" * 50} if len(name) < 100 else {}
            tar.addfile(info, io.BytesIO(payload) if payload else None)
    return buf.getvalue()


@pytest.mark.parametrize("chunk", [1, 7, 512, 1000, 1 << 20])
def test_device_members_are_dropped_from_a_volume_stream(chunk):
    """Volume backups keep no device file (every restore refuses them): the filter drops them
    with their PAX headers, long names included, and passes the rest byte for byte."""
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.headers import DeviceFilter, TarScanner
    long_dev = "./" + "d" * 150
    data = _tar([(".", tarfile.DIRTYPE, b""), ("./a", tarfile.REGTYPE, b"A" * 700),
                 ("./null", tarfile.CHRTYPE, b""), (long_dev, tarfile.BLKTYPE, b""),
                 ("./" + "f" * 120, tarfile.REGTYPE, b"F" * 3000), ("./b", tarfile.REGTYPE, b"B")])
    devices, out = DeviceFilter(), []
    for pos in range(0, len(data), chunk):
        out.append(devices.feed(data[pos:pos + chunk]))
    filtered = b"".join(out)
    scanner = TarScanner()
    scanner.feed(filtered)
    assert scanner.finish()["entries"] == 4
    members = _members(filtered)
    assert sorted(members) == [".", "./a", "./b", "./" + "f" * 120]
    assert members["./a"][1] == b"A" * 700 and members["./" + "f" * 120][1] == b"F" * 3000
    assert len(devices.dropped) == 2 and devices.dropped[0] == "./null"


def test_a_directory_backup_records_exact_mtimes_and_user_xattrs(tmp_path):
    """Issue 14, item 20: nanoseconds and pre-1970 mtimes as PAX records, user.* xattrs as
    SCHILY.xattr records (binary values byte for byte)."""
    tree = tmp_path / "tree"
    (tree / "d").mkdir(parents=True)
    (tree / "precise").write_bytes(b"x")
    (tree / "whole").write_bytes(b"y")
    (tree / "old").write_bytes(b"z")
    os.setxattr(tree / "precise", "user.opskit", b"kept \x00\xff")
    os.setxattr(tree / "d", "user.dir", b"1")
    os.utime(tree / "precise", ns=(1, 1500000000123456789))
    os.utime(tree / "whole", ns=(1, 1500000000000000000))
    os.utime(tree / "old", ns=(1, -1000000250000000))
    data, _stats = _backup(tree)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        members = {m.name: m for m in tar}
    assert members["./precise"].pax_headers["mtime"] == "1500000000.123456789"
    assert members["./old"].pax_headers["mtime"] == "-1000000.250000000"
    assert "mtime" not in members["./whole"].pax_headers and members["./whole"].mtime == 1500000000
    value = members["./precise"].pax_headers["SCHILY.xattr.user.opskit"]
    assert value.encode("utf-8", "surrogateescape") == b"kept \x00\xff"
    assert members["./d"].pax_headers["SCHILY.xattr.user.dir"] == "1"
