# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The replace phase of a forced restore: all or nothing, never the root directory."""

from __future__ import annotations

import errno
import io
import os
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._volume import targets
from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import DirectoryTarget, SourceError


def _tree(root, names, text):
    os.makedirs(root)
    for name in names:
        with open(os.path.join(root, name), "w") as fh:
            fh.write("%s %s" % (text, name))


def _snapshot(root):
    out = {}
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            with open(path) as fh:
                out[os.path.relpath(path, root)] = fh.read()
    return out


def _published(tmp_path, names):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        root = tarfile.TarInfo(".")
        root.type, root.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(root)
        for name in names:
            data = ("new %s" % name).encode()
            info = tarfile.TarInfo("./" + name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    location = open_location("file://%s" % (tmp_path / "store"))
    with BackupSession(location, "dir", "directory") as session:
        with session.artifact("tar") as out:
            out.write(buf.getvalue())
        return location, session.publish(source={"path": "test"})


def _flaky_rename(monkeypatch, fail_at, fail_after=False):
    """os.rename fails (EBUSY) at its ``fail_at``-th call, and every later one with ``fail_after``."""
    real, calls = os.rename, [0]

    def rename(*args, **kwargs):
        calls[0] += 1
        if calls[0] == fail_at or (fail_after and calls[0] > fail_at):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), args[0])
        return real(*args, **kwargs)
    monkeypatch.setattr(os, "rename", rename)


@pytest.mark.parametrize("fail_at", [1, 3, 5, 7, 9])  # moving the old aside (1-5), the new in (6-9)
def test_an_error_in_the_replace_phase_puts_the_old_content_back(tmp_path, monkeypatch, fail_at):
    location, manifest = _published(tmp_path, ["n1", "n2", "n3", "n4"])
    dst = str(tmp_path / "dst")
    _tree(dst, ["o1", "o2", "o3", "o4", "o5"], "old")
    before = _snapshot(dst)
    _flaky_rename(monkeypatch, fail_at)
    target = DirectoryTarget(dst)
    with pytest.raises(SourceError, match="Device or resource busy"):
        target.restore(location, manifest, replace=True)
    assert _snapshot(dst) == before and sorted(os.listdir(dst)) == sorted(before)
    assert target.dirty is False


def test_a_failed_rollback_leaves_the_target_marked_dirty(tmp_path, monkeypatch):
    location, manifest = _published(tmp_path, ["n1", "n2"])
    dst = str(tmp_path / "dst")
    _tree(dst, ["o1", "o2"], "old")
    _flaky_rename(monkeypatch, 4, fail_after=True)
    target = DirectoryTarget(dst)
    with pytest.raises(SourceError):
        target.restore(location, manifest, replace=True)
    assert target.dirty is True
    # the old content is not lost: it waits in the hidden directory
    [aside] = [n for n in os.listdir(dst) if n.startswith(".opskit-old-")]
    assert sorted(os.listdir(os.path.join(dst, aside))) == ["o1", "o2"]


def test_a_successful_replace_leaves_only_the_new_content(tmp_path):
    location, manifest = _published(tmp_path, ["n1", "n2"])
    dst = str(tmp_path / "dst")
    _tree(dst, ["o1", "o2"], "old")
    os.makedirs(os.path.join(dst, "d", "e"))
    target = DirectoryTarget(dst)
    stats = target.restore(location, manifest, replace=True)
    assert _snapshot(dst) == {"n1": "new n1", "n2": "new n2"} and sorted(os.listdir(dst)) == ["n1", "n2"]
    assert "warnings" not in stats and target.dirty is False


@pytest.mark.parametrize("how", ["//", "///", "a symlink to /", "a path through a symlink to /"])
def test_force_never_empties_the_root_directory(tmp_path, monkeypatch, how):
    os.symlink("/", tmp_path / "root-link")
    path = {"//": "//", "///": "///", "a symlink to /": str(tmp_path / "root-link"),
            "a path through a symlink to /": str(tmp_path / "root-link") + "/."}[how]

    def never(*_args, **_kwargs):
        pytest.fail("a restore into / was started")
    monkeypatch.setattr(targets, "staged_restore", never)
    with pytest.raises(ConfigError, match="refusing to empty /"):
        DirectoryTarget(path).restore(None, {}, replace=True)


def test_old_content_that_cannot_be_deleted_after_the_swap_is_a_warning(tmp_path, monkeypatch):
    location, manifest = _published(tmp_path, ["n1"])
    dst = str(tmp_path / "dst")
    _tree(dst, ["o1"], "old")
    real = targets._remove_at

    def remove_at(dir_fd, name, dev):
        if name.startswith(".opskit-old-"):
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), name)
        return real(dir_fd, name, dev)
    monkeypatch.setattr(targets, "_remove_at", remove_at)
    target = DirectoryTarget(dst)
    stats = target.restore(location, manifest, replace=True)
    [warning] = stats["warnings"]
    assert "holds the new content, but deleting its old content failed: Device or resource busy" in warning
    assert _snapshot(dst)["n1"] == "new n1" and target.dirty is False
