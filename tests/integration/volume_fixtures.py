# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the volume_backup tests: a tricky file tree, a full listing of a tree, Docker
volumes and containers with random names, cleaned up at the end."""

from __future__ import annotations

import hashlib
import os
import stat
import uuid

import pytest

TRICKY_FILES = 60


def make_tricky_tree(root, seed=7):
    """Symlinks (relative, absolute, dangling), hard links, a sparse file, 0600 files owned by
    uid 1000, unicode and non-UTF-8 names, empty directories, odd modes and old mtimes."""
    root = os.fsencode(root)

    def j(*parts):
        return os.path.join(root, *parts)
    os.makedirs(j(b"etc", b"conf.d"), exist_ok=True)
    os.makedirs(j(b"empty", b"nested-empty"), exist_ok=True)
    os.makedirs(j(b"caf\xc3\xa9 \xe2\x98\x95"), exist_ok=True)        # unicode directory
    os.makedirs(j(b"latin1-\xe9t\xe9"), exist_ok=True)                 # not UTF-8
    with open(j(b"etc", b"secret.key"), "wb") as fh:
        fh.write(b"-----BEGIN KEY-----\n" + bytes(range(256)) * 4)
    os.chmod(j(b"etc", b"secret.key"), 0o600)
    os.chown(j(b"etc", b"secret.key"), 1000, 1000)
    with open(j(b"latin1-\xe9t\xe9", b"\xff\xfe-raw-bytes"), "wb") as fh:
        fh.write(b"non-utf8 name\n")
    with open(j(b"caf\xc3\xa9 \xe2\x98\x95", b"m\xc3\xa9nu.txt"), "wb") as fh:
        fh.write("espresso, caf\u00e9 cr\u00e8me\n".encode("utf-8"))
    rnd = __import__("random").Random(seed)
    for i in range(TRICKY_FILES):
        with open(j(b"etc", b"conf.d", b"%02d.conf" % i), "wb") as fh:
            fh.write(rnd.randbytes(rnd.randint(0, 3000)))
    with open(j(b"sparse.img"), "wb") as fh:                           # 8 MiB, two data islands
        fh.write(b"head")
        fh.seek(4 << 20)
        fh.write(b"middle")
        fh.truncate(8 << 20)
    os.link(j(b"etc", b"secret.key"), j(b"hardlink-to-secret"))        # hard link
    os.symlink(b"etc/secret.key", j(b"relative-link"))
    os.symlink(b"/etc/hostname", j(b"absolute-link"))
    os.symlink(b"does/not/exist", j(b"dangling-link"))
    os.mkfifo(j(b"a-fifo"))
    os.chmod(j(b"empty"), 0o1777)                                      # sticky, world-writable
    os.chown(j(b"empty", b"nested-empty"), 1000, 1000)
    with open(j(b"setgid-script"), "wb") as fh:
        fh.write(b"#!/bin/sh\necho hi\n")
    os.chmod(j(b"setgid-script"), 0o2755)
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            os.utime(path, (1500000000, 1500000000 + len(name)), follow_symlinks=False)
    os.chmod(root, 0o750)
    os.chown(root, 999, 999)
    os.utime(root, (1500000000, 1500000000))
    return root


def listing(root):
    """Every entry below root (root included): type, mode, owner, mtime, size, sha256, link
    target, hard-link group. Paths are bytes (non-UTF-8 names compare exactly)."""
    root = os.fsencode(root)
    paths = [root]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        paths.extend(os.path.join(dirpath, name) for name in sorted(dirnames + filenames))
    out, inodes = {}, {}
    for path in paths:
        rel = os.path.relpath(path, root)
        st = os.lstat(path)
        entry = {"mode": oct(st.st_mode), "uid": st.st_uid, "gid": st.st_gid}
        if stat.S_ISLNK(st.st_mode):
            entry["target"] = os.readlink(path)
        else:
            entry["mtime"] = int(st.st_mtime)
        if stat.S_ISREG(st.st_mode):
            entry["size"] = st.st_size
            with open(path, "rb") as fh:
                entry["sha256"] = hashlib.sha256(fh.read()).hexdigest()
            if st.st_nlink > 1:
                entry["hardlink_group"] = inodes.setdefault((st.st_dev, st.st_ino), rel)
        out[rel] = entry
    return out


def short(name="vb"):
    return "%s-%s" % (name, uuid.uuid4().hex[:10])


class DockerThings:
    """Volumes and containers created by a test, removed at its end."""

    def __init__(self, client):
        self.client = client
        self.volumes, self.containers = [], []

    def volume(self, prefix="vbtest"):
        vol = self.client.volumes.create(short(prefix))
        self.volumes.append(vol.name)
        return vol.name

    def mountpoint(self, volume):
        path = self.client.api.inspect_volume(volume)["Mountpoint"]
        if not os.path.isdir(path):
            pytest.fail("volume %s: its mountpoint %s is not reachable from the test (the tests run"
                        " as root on the Docker host)" % (volume, path), pytrace=False)
        return path

    def container(self, image, volume=None, command=("sleep", "3600"), labels=None, mounts=None,
                  start=True, name=None):
        from docker.types import Mount
        all_mounts = list(mounts or [])
        if volume:
            all_mounts.append(Mount("/data", volume, type="volume"))
        ctr = self.client.containers.create(image, list(command), name=name or short("vbctr"),
                                            labels=labels or {}, mounts=all_mounts,
                                            network_mode="none")
        self.containers.append(ctr.id)
        if start:
            ctr.start()
        return ctr

    def state(self, container):
        return self.client.api.inspect_container(container.id)["State"]

    def started_at(self, container):
        return self.state(container)["StartedAt"]

    def cleanup(self):
        for cid in self.containers:
            try:
                self.client.api.remove_container(cid, force=True)
            except Exception:  # pylint: disable=broad-except
                pass
        for name in self.volumes:
            try:
                self.client.api.remove_volume(name, force=True)
            except Exception:  # pylint: disable=broad-except
                pass


@pytest.fixture
def dockerthings(docker_engine):
    things = DockerThings(docker_engine.client)
    yield things
    things.cleanup()


def write_harmless_tree(root):
    """``prep/`` and ``tree/`` under ``root``, the stage of the symlink swap loops: 20 files and 20
    directories with one file each, and 1000 padding files that leave time between listing a
    directory and entering its subdirectories."""
    for d in ["prep"] + ["tree/d%02d" % i for i in range(20)]:
        os.makedirs(os.path.join(root, d))
    for i in range(20):
        with open(os.path.join(root, "tree", "f%02d" % i), "w") as fh:
            fh.write("harmless")
        with open(os.path.join(root, "tree", "d%02d" % i, "inner"), "w") as fh:
            fh.write("harmless")
        for k in range(50):
            with open(os.path.join(root, "tree", "pad-%02d-%02d" % (i, k)), "wb") as fh:
                fh.write(os.urandom(4000))
