# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Host-directory backups of volume_backup: tarfile in and out, without any service."""

from __future__ import annotations

import importlib.util
import io
import os
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._errors import (
    ConfigError, IntegrityError, NotFoundError, ServiceError)
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.headers import UnsafeArchiveError
from ansible_collections.opskit.runbook.plugins.module_utils._volume.action import VolumeBackup
from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import DirectoryTarget, SourceError

_SPEC = importlib.util.spec_from_file_location(
    "volume_fixtures", os.path.join(os.path.dirname(__file__), "..", "..", "..", "integration",
                                    "volume_fixtures.py"))
fixtures = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(fixtures)

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to other users needs root")


class Sink:
    def __init__(self):
        self.buf = io.BytesIO()

    def write(self, data):
        return self.buf.write(data)


def _backup(path):
    sink = Sink()
    stats = DirectoryTarget(str(path)).backup_to(sink)
    return sink.buf.getvalue(), stats


def _published(tmp_path, data):
    """(location, manifest) of ``data`` published as a directory backup in a file:// store."""
    location = open_location("file://%s" % (tmp_path / "store"))
    with BackupSession(location, "dir", "directory") as session:
        with session.artifact("tar") as out:
            out.write(data)
        return location, session.publish(source={"path": "test"})


@needs_root
def test_round_trip_keeps_everything(tmp_path):
    src = fixtures.make_tricky_tree(tmp_path / "src")
    data, stats = _backup(tmp_path / "src")
    assert stats["skipped_files"] == 0
    assert stats["hardlinks"] == 1 and stats["symlinks"] == 3
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names[0] == "." and all(n.startswith("./") for n in names[1:])
    dst = DirectoryTarget(str(tmp_path / "dst"))
    dst.create()
    restored = dst.restore(*_published(tmp_path, data), replace=False)
    assert restored["entries"] == stats["entries"]
    assert fixtures.listing(tmp_path / "dst") == fixtures.listing(src)


def test_sockets_are_skipped(tmp_path):
    import socket
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f").write_text("x")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tmp_path / "d" / "sock"))
        _data, stats = _backup(tmp_path / "d")
    assert stats["skipped_files"] == 1 and stats["files"] == 1


def test_a_symlinked_root_is_followed(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "f").write_text("x")
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    data, stats = _backup(tmp_path / "alias")
    assert stats["files"] == 1 and stats["directories"] == 1


def _evil(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload, link in members:
            info = tarfile.TarInfo(name)
            info.type, info.linkname = kind, link
            info.size = len(payload) if kind == tarfile.REGTYPE else 0
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tar.addfile(info, io.BytesIO(payload) if payload else None)
    return buf.getvalue()


@pytest.mark.parametrize("members, message", [
    ([(".", tarfile.DIRTYPE, b"", ""), ("./../escaped", tarfile.REGTYPE, b"x", "")], "'..'"),
    ([(".", tarfile.DIRTYPE, b"", ""), ("/abs-escaped", tarfile.REGTYPE, b"x", "")], "absolute"),
    ([(".", tarfile.DIRTYPE, b"", ""), ("./link", tarfile.SYMTYPE, b"", ".."),
      ("./link/escaped", tarfile.REGTYPE, b"x", "")], "through the symlink"),
    ([(".", tarfile.DIRTYPE, b"", ""), ("./zero", tarfile.CHRTYPE, b"", "")], "device"),
])
def test_unsafe_members_are_refused_and_nothing_escapes(tmp_path, members, message):
    target = tmp_path / "restore" / "here"
    dst = DirectoryTarget(str(target))
    dst.create()
    location, manifest = _published(tmp_path / "backups", _evil(members))
    with pytest.raises(UnsafeArchiveError, match=message):
        dst.restore(location, manifest, replace=False)
    assert sorted(os.listdir(tmp_path)) == ["backups", "restore"]
    assert sorted(os.listdir(tmp_path / "restore")) == ["here"]
    assert os.listdir(target) == []  # the staging directory is gone, nothing was moved in


def _old_content(target, tmp_path):
    (target / "sub" / "deeper").mkdir(parents=True)
    (target / "sub" / "deeper" / "ro").mkdir(mode=0o555)
    (target / "f").write_text("old")
    (target / "l").symlink_to(tmp_path)  # never followed when emptying
    (tmp_path / "outside").write_text("keep")


def test_is_empty_and_a_replacing_restore(tmp_path):
    src = tmp_path / "src"
    (src / "new").mkdir(parents=True)
    (src / "new" / "file").write_text("new")
    os.chmod(src, 0o751)
    location, manifest = _published(tmp_path / "backups", _backup(src)[0])
    target = tmp_path / "t"
    dst = DirectoryTarget(str(target))
    assert dst.is_empty()  # missing counts as empty
    _old_content(target, tmp_path)
    assert not dst.is_empty()
    dst.restore(location, manifest, replace=True)
    assert sorted(os.listdir(target)) == ["new"] and (target / "new" / "file").read_text() == "new"
    assert oct(os.stat(target).st_mode & 0o7777) == oct(0o751)  # the archive root's attributes
    assert (tmp_path / "outside").read_text() == "keep"


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_a_corrupt_artifact_leaves_the_old_content_as_it_was(tmp_path, damage):
    src = tmp_path / "src"
    src.mkdir()
    (src / "data").write_bytes(os.urandom(300000))
    location, manifest = _published(tmp_path / "backups", _backup(src)[0])
    [stored] = [os.path.join(d, n) for d, _s, names in os.walk(tmp_path / "backups")
                for n in names if not n.endswith(".json")]
    with open(stored, "r+b") as fh:
        if damage == "truncate":
            fh.truncate(os.path.getsize(stored) // 2)
        else:
            fh.seek(os.path.getsize(stored) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x40]))
    target = tmp_path / "t"
    _old_content(target, tmp_path)
    before = fixtures.listing(target)
    with pytest.raises(IntegrityError, match="corrupt"):
        DirectoryTarget(str(target)).restore(location, manifest, replace=True)
    assert fixtures.listing(target) == before  # nothing deleted, no staging directory left


@pytest.mark.parametrize("path, error, message", [
    ("relative/dir", ConfigError, "absolute"),
    ("", ConfigError, "absolute"),
])
def test_bad_paths(path, error, message):
    with pytest.raises(error, match=message):
        DirectoryTarget(path)


def test_missing_and_non_directory_sources(tmp_path):
    with pytest.raises(NotFoundError, match="does not exist"):
        DirectoryTarget(str(tmp_path / "missing")).require()
    (tmp_path / "file").write_text("x")
    with pytest.raises(SourceError, match="not a directory"):
        DirectoryTarget(str(tmp_path / "file")).require()


def test_refuses_to_empty_the_root(tmp_path):
    with pytest.raises(ConfigError, match="refusing to empty /"):
        DirectoryTarget("/").restore(*_published(tmp_path, b""), replace=True)


def test_an_unreachable_docker_with_stop_containers_auto_is_a_warning(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "docker.sock").write_text("")

    def unreachable():
        raise ServiceError("cannot connect to the Docker daemon at unix://%s: refused" % (tmp_path / "docker.sock"))

    params = {"state": "backed_up", "path": str(tmp_path / "src"), "series": "dir", "stop_containers": ["auto"],
              "docker_host": "unix://%s" % (tmp_path / "docker.sock")}
    location = open_location("file://%s" % (tmp_path / "store"))
    result = VolumeBackup(params, location, check_mode=True, client_factory=unreachable).run()
    assert result["would_stop"] == []
    assert result["warnings"] == ["stop_containers=auto: no container is stopped, Docker is not reachable:"
                                  " cannot connect to the Docker daemon at unix://%s: refused" % (tmp_path / "docker.sock")]
