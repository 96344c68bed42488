# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""TarExtractor: checked members written under a directory fd, nothing outside it reached."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._errors import IntegrityError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.extract import ExtractError, TarExtractor, extract_chunks
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.headers import UnsafeArchiveError
from ansible_collections.opskit.runbook.plugins.module_utils._volume.action import VolumeBackup
from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import VolumeTarget

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")
MTIME = 1700000000


def _tar(members, fmt=tarfile.PAX_FORMAT):
    """members: (name, type, payload or link target, extra TarInfo attributes)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for name, kind, payload, attrs in members:
            info = tarfile.TarInfo(name)
            info.type, info.mtime = kind, MTIME
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE):
                info.linkname = payload
                payload = b""
            info.size = len(payload) if kind == tarfile.REGTYPE else 0
            for key, value in attrs.items():
                setattr(info, key, value)
            tar.addfile(info, io.BytesIO(payload) if payload else None)
    return buf.getvalue()


def _extract(data, root, chunk=1 << 20, **kw):
    """Extract ``data`` under ``root``, fed in pieces of ``chunk`` bytes."""
    fd = os.open(str(root), os.O_RDONLY | os.O_DIRECTORY)
    try:
        pieces = (data[pos:pos + chunk] for pos in range(0, len(data), chunk))
        return extract_chunks(pieces, TarExtractor(fd, **kw))
    finally:
        os.close(fd)


def _d(name, **attrs):
    return (name, tarfile.DIRTYPE, b"", attrs)


def _f(name, data=b"x", **attrs):
    return (name, tarfile.REGTYPE, data, attrs)


TREE = [
    _d(".", mode=0o750, mtime=MTIME - 100),
    _d("./ro", mode=0o555, mtime=MTIME - 50),
    _f("./ro/inside", b"in a read-only directory", mode=0o400),
    _d("./d"),
    _f("./d/" + "long-name-" * 15, b"a long name"),
    ("./d/link", tarfile.SYMTYPE, "../ro/inside", {}),
    ("./d/hard", tarfile.LNKTYPE, "./ro/inside", {}),
    ("./fifo", tarfile.FIFOTYPE, b"", {"mode": 0o620}),
    _f("./setuid", b"#!/bin/sh\n", mode=0o4755),
    _f("./empty", b""),
    _f("./ns", b"nanoseconds", pax_headers={"mtime": "1700000000.123456789"}),
]


@pytest.mark.parametrize("fmt", [tarfile.PAX_FORMAT, tarfile.GNU_FORMAT])
@pytest.mark.parametrize("chunk", [1, 511, 513, 1 << 20])
def test_everything_is_written_whatever_the_chunking(tmp_path, fmt, chunk):
    tree = TREE if fmt == tarfile.PAX_FORMAT else TREE[:-1]
    summary = _extract(_tar(tree, fmt), tmp_path, chunk)
    assert summary == {"entries": len(tree), "files": 5 + (fmt == tarfile.PAX_FORMAT),
                       "directories": 3, "symlinks": 1, "hardlinks": 1,
                       "file_bytes": 45 + 11 * (fmt == tarfile.PAX_FORMAT)}
    root = os.lstat(tmp_path)
    assert stat.S_IMODE(root.st_mode) == 0o750 and root.st_mtime == MTIME - 100
    ro = os.lstat(tmp_path / "ro")
    assert stat.S_IMODE(ro.st_mode) == 0o555 and ro.st_mtime == MTIME - 50
    inside = os.lstat(tmp_path / "ro" / "inside")
    assert stat.S_IMODE(inside.st_mode) == 0o400 and inside.st_mtime == MTIME and inside.st_nlink == 2
    assert (tmp_path / "ro" / "inside").read_bytes() == b"in a read-only directory"
    assert os.path.samefile(tmp_path / "d" / "hard", tmp_path / "ro" / "inside")
    assert os.readlink(tmp_path / "d" / "link") == "../ro/inside"
    assert os.lstat(tmp_path / "d" / "link").st_mtime == MTIME
    assert (tmp_path / "d" / ("long-name-" * 15)).read_bytes() == b"a long name"
    fifo = os.lstat(tmp_path / "fifo")
    assert stat.S_ISFIFO(fifo.st_mode) and stat.S_IMODE(fifo.st_mode) == 0o620
    assert stat.S_IMODE(os.lstat(tmp_path / "setuid").st_mode) == 0o4755
    assert (tmp_path / "empty").read_bytes() == b""
    if fmt == tarfile.PAX_FORMAT:
        assert os.lstat(tmp_path / "ns").st_mtime_ns == 1700000000123456789


@needs_root
def test_owners_are_restored_as_root_only_when_asked(tmp_path):
    data = _tar([_d(".", uid=1000, gid=1001), _f("./owned", uid=1000, gid=1001),
                 ("./sym", tarfile.SYMTYPE, "owned", {"uid": 1002, "gid": 1003})])
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    _extract(data, tmp_path / "a")
    assert (os.lstat(tmp_path / "a").st_uid, os.lstat(tmp_path / "a").st_gid) == (1000, 1001)
    assert (os.lstat(tmp_path / "a" / "owned").st_uid, os.lstat(tmp_path / "a" / "owned").st_gid) == (1000, 1001)
    assert (os.lstat(tmp_path / "a" / "sym").st_uid, os.lstat(tmp_path / "a" / "sym").st_gid) == (1002, 1003)
    _extract(data, tmp_path / "b", same_owner=False)
    assert os.lstat(tmp_path / "b" / "owned").st_uid == os.geteuid()


def test_a_parent_missing_from_the_archive_is_created(tmp_path):
    _extract(_tar([_d("."), _f("./a/b/c", b"deep")]), tmp_path)
    assert (tmp_path / "a" / "b" / "c").read_bytes() == b"deep"


@pytest.mark.parametrize("listed", [False, True])
def test_a_symlink_planted_in_the_way_is_never_followed(tmp_path, listed):
    """A symlink the archive did not create (one a running container could plant while the
    restore runs) is never followed: in the way of a path it stops the restore; where the
    archive lists a directory of that name, it is replaced by the directory."""
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "d")
    data = _tar([_d(".")] + ([_d("./d")] if listed else []) + [_f("./d/x", b"not escaped")])
    if listed:
        _extract(data, root)
        assert not os.path.islink(root / "d") and (root / "d" / "x").read_bytes() == b"not escaped"
    else:
        with pytest.raises(ExtractError, match="'d' is in the way of 'd/x'"):
            _extract(data, root)
    assert os.listdir(outside) == []


def test_a_planted_symlink_to_a_file_is_replaced_not_written_through(tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"untouched")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(secret), root / "f")
    _extract(_tar([_d("."), _f("./f", b"from the archive")]), root)
    assert secret.read_bytes() == b"untouched"
    assert not os.path.islink(root / "f") and (root / "f").read_bytes() == b"from the archive"


def test_a_hard_link_through_a_planted_symlink_is_refused(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_bytes(b"root:x:0:0")
    root = tmp_path / "root"
    root.mkdir()
    os.symlink(str(outside), root / "etc")
    with pytest.raises(ExtractError, match="in the way"):
        _extract(_tar([_d("."), ("./copy", tarfile.LNKTYPE, "./etc/passwd", {})]), root)
    assert not os.path.exists(root / "copy") and os.stat(outside / "passwd").st_nlink == 1


def test_archive_symlinks_are_checked_before_anything_is_written_through_them(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    with pytest.raises(UnsafeArchiveError, match="through the symlink"):
        _extract(_tar([_d("."), ("./up", tarfile.SYMTYPE, str(tmp_path), {}),
                       _f("./up/escaped", b"no")]), root)
    assert not (tmp_path / "escaped").exists()


def test_a_name_listed_twice_keeps_the_last_member_but_never_replaces_a_directory(tmp_path):
    _extract(_tar([_d("."), _f("./f", b"first"), _f("./f", b"second")]), tmp_path)
    assert (tmp_path / "f").read_bytes() == b"second"
    with pytest.raises(ExtractError, match="would replace a directory"):
        _extract(_tar([_d("."), _d("./sub"), _f("./sub", b"file")]), tmp_path)


@pytest.mark.parametrize("cut", [700, 1200, 3072])
def test_a_truncated_archive_is_reported(tmp_path, cut):
    data = _tar([_d("."), _f("./big", b"y" * 2000)])
    with pytest.raises(IntegrityError, match="ended early"):
        _extract(data[:cut], tmp_path)


def test_garbage_is_not_a_tar(tmp_path):
    with pytest.raises(IntegrityError, match="not a valid tar stream"):
        _extract(b"\x01" * 4096, tmp_path)


# ---------------------------------------------------------------- VolumeTarget._local_root

class Response:
    def __init__(self, status_code):
        self.status_code = status_code


class FakeClient:
    """What _local_root asks of the Docker client: HEAD of a path in the helper."""

    timeout = 5

    def __init__(self, mountpoint, visible):
        self.mountpoint, self.visible, self.asked = mountpoint, visible, []

    @staticmethod
    def _url(template, *args):
        return template.format(*args)

    def head(self, url, params, timeout):
        name = params["path"].rsplit("/", 1)[1]
        self.asked.append((url, name, os.path.exists(os.path.join(self.mountpoint, name))))
        return Response(200 if self.visible else 404)


def _target(tmp_path, visible, driver="local", access="auto"):
    client = FakeClient(str(tmp_path), visible)
    target = VolumeTarget(client, "vol", access=access)
    target.info = {"Driver": driver, "Mountpoint": str(tmp_path)}
    return target, client


@needs_root
def test_the_mountpoint_is_used_only_when_the_helper_sees_the_probe(tmp_path):
    target, client = _target(tmp_path, visible=True)
    fd = target._local_root("cid")
    assert fd is not None
    os.close(fd)
    [(url, probe, existed)] = client.asked
    assert url == "/containers/cid/archive" and probe.startswith(".opskit-probe-") and existed
    assert os.listdir(tmp_path) == []  # the probe is removed

    target, client = _target(tmp_path, visible=False)
    assert target._local_root("cid") is None and len(client.asked) == 1
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("driver, access", [("nfs-plugin", "auto"), ("local", "api")])
def test_the_mountpoint_is_never_used_for_other_drivers_or_access_api(tmp_path, driver, access):
    target, client = _target(tmp_path, visible=True, driver=driver, access=access)
    assert target._local_root("cid") is None and client.asked == []


def test_the_fallback_to_the_api_is_a_warning(tmp_path):
    target, _client = _target(tmp_path, visible=False)
    assert target._local_root("cid") is None
    warning = target.access_warning()
    assert warning.startswith("volume vol was restored through the Docker Engine API, not directly"
                              " through its mountpoint (volume_access=auto): ")
    assert ("is not seen in the helper container" if os.geteuid() == 0 else "does not run as root") in warning

    target, _client = _target(tmp_path, visible=True, driver="nfs-plugin")
    target._local_root("cid")
    assert target.access_warning().endswith(": its driver is nfs-plugin, not local")

    target, _client = _target(tmp_path, visible=True, access="api")  # asked for: no warning
    target._local_root("cid")
    assert target.access_warning() is None


class RestoreClient(FakeClient):
    """Enough of the Docker API for VolumeBackup to restore into a volume of another driver."""

    def __init__(self, mountpoint):
        super().__init__(mountpoint, visible=False)
        self.written = b""

    def inspect_volume(self, name):
        return {"Name": name, "Driver": "nfs-plugin", "Mountpoint": self.mountpoint}

    def inspect_image(self, name):
        return {"Id": "sha256:helper"}

    def containers(self, all=False):
        return []

    def put_archive(self, cid, path, chunks):
        self.written = b"".join(chunks)
        return True


def test_a_restore_through_the_api_returns_the_warning(tmp_path, monkeypatch):
    location = open_location("file://%s" % (tmp_path / "store"))
    with BackupSession(location, "vol", "volume") as session:
        with session.artifact("tar") as out:
            out.write(_tar([(".", tarfile.DIRTYPE, b"", {}), ("./a", tarfile.REGTYPE, b"hello", {})]))
        session.publish(source={"volume": "vol"})
    monkeypatch.setattr(VolumeTarget, "is_empty", lambda self: True)
    monkeypatch.setattr(VolumeTarget, "helper", lambda self, read_only, entrypoint=None: _cid())
    client = RestoreClient(str(tmp_path))
    params = {"state": "restored", "volume": "vol", "series": "vol", "stop_containers": ["none"],
              "helper_image": "busybox", "force": False}
    result = VolumeBackup(params, location, client_factory=lambda: client).run()
    assert result["access"] == "api" and result["entries"] == 2
    assert result["warnings"] == ["volume vol was restored through the Docker Engine API, not directly"
                                  " through its mountpoint (volume_access=auto): its driver is"
                                  " nfs-plugin, not local"]
    assert b"opskit-volume/a" in client.written


@contextlib.contextmanager
def _cid():
    yield "cid"


# ------------------------------------------------------------------ recorded attributes (issue 14, item 20)
def _pax_file(name, data, pax):
    return (name, tarfile.REGTYPE, data, {"pax_headers": pax})


@pytest.mark.parametrize("mtime, ns", [("1500000000.123456789", 1500000000123456789),
                                       ("-1000000.25", -1000000250000000),
                                       ("-1", -1000000000)])
def test_a_pax_mtime_is_applied_to_the_nanosecond(tmp_path, mtime, ns):
    _extract(_tar([_d("."), _pax_file("./f", b"x", {"mtime": mtime})]), tmp_path)
    assert os.stat(tmp_path / "f").st_mtime_ns == ns


def test_user_xattrs_are_applied_and_other_namespaces_ignored(tmp_path):
    pax = {"SCHILY.xattr.user.opskit": "kept \x00\udcff", "SCHILY.xattr.trusted.evil": "no",
           "LIBARCHIVE.xattr.user.b64%20name": "YmluYXJ5"}
    _extract(_tar([_d("."), _pax_file("./f", b"x", pax), _d("./d", pax_headers=pax)]), tmp_path)
    for path in (tmp_path / "f", tmp_path / "d"):
        assert os.getxattr(path, "user.opskit") == b"kept \x00\xff"
        assert os.getxattr(path, "user.b64 name") == b"binary"
        assert not [n for n in os.listxattr(path) if n.startswith("trusted.")]


def test_an_xattr_the_filesystem_refuses_is_a_warning(tmp_path, monkeypatch):
    import errno

    def refuse(*_args):
        raise OSError(errno.ENOTSUP, "Operation not supported")
    monkeypatch.setattr(os, "setxattr", refuse)
    stats = _extract(_tar([_d("."), _pax_file("./f", b"x", {"SCHILY.xattr.user.a": "1"})]), tmp_path)
    assert stats["warnings"] == ["1 extended attribute(s) of the archive were not restored (the filesystem"
                                 " refused them): f: user.a"]
    assert (tmp_path / "f").read_bytes() == b"x"


@pytest.mark.parametrize("chunk", [1 << 20, 4096, 1000, 513])
def test_runs_of_zero_blocks_become_holes_whatever_the_chunks(tmp_path, chunk):
    data = b"head" + bytes((1 << 20) - 4) + b"midl" + bytes((1 << 20) - 8) + b"tail"
    ends_in_hole = b"x" + bytes((1 << 20) - 1)
    _extract(_tar([_d("."), _f("./sparse", data), _f("./hole-at-end", ends_in_hole), _f("./tiny", b"\0\0")]),
             tmp_path, chunk=chunk)
    assert (tmp_path / "sparse").read_bytes() == data
    assert (tmp_path / "hole-at-end").read_bytes() == ends_in_hole
    assert (tmp_path / "tiny").read_bytes() == b"\0\0"
    assert os.stat(tmp_path / "sparse").st_blocks * 512 <= 64 << 10
    assert os.stat(tmp_path / "hole-at-end").st_blocks * 512 <= 16 << 10


@pytest.mark.parametrize("writers", [0, 2])
def test_a_new_file_gets_its_mode_despite_the_umask_and_only_the_inode_changes_it_needs(tmp_path, monkeypatch, writers):
    """Created with its permission bits: no fchmod where the umask left them, no ftruncate unless
    the file ends in a hole, no fchown where the owner is already right; the result is the same."""
    module = TarExtractor.__module__
    calls = []
    for name in ("ftruncate", "fchmod", "fchown"):
        real = getattr(os, name)
        monkeypatch.setattr("%s.os.%s" % (module, name), lambda *a, _n=name, _r=real: (calls.append(_n), _r(*a))[1])
    old = os.umask(0o022)
    try:
        _extract(_tar([_d("."), _f("./plain", b"x" * 5000), _f("./shared", b"y", mode=0o666),
                       _f("./setgid", b"z", mode=0o2755), _f("./hole", b"x" + bytes((1 << 16) - 1))]),
                 tmp_path, writers=writers, same_owner=os.geteuid() == 0)
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.lstat(tmp_path / name).st_mode) for name in ("plain", "shared", "setgid", "hole")}
    assert modes == {"plain": 0o644, "shared": 0o666, "setgid": 0o2755, "hole": 0o644}
    assert (tmp_path / "hole").read_bytes() == b"x" + bytes((1 << 16) - 1)
    assert calls.count("ftruncate") == 1                    # the file that ends in a hole only
    assert calls.count("fchmod") == 1 + 1 + 1               # shared (the umask), setgid, and the root directory
    if os.geteuid() == 0:
        assert calls.count("fchown") == 1                   # the root directory only: the files are root's already
