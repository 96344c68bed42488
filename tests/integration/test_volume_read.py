# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Volume backups read directly through the mountpoint (volume_access=auto, as root on the
Docker host) against the Engine API's archive of the same volume, through ansible-playbook
against the real Docker Engine."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
import time

import zstandard

from test_volume_backup import SWAP_LOOP
from volume_fixtures import dockerthings, listing, make_tricky_tree, write_harmless_tree  # noqa: F401  pylint: disable=unused-import

PLAY_HEAD = """
- hosts: localhost
  gather_facts: false
  tasks:
"""


def _archive(store, series):
    """The members of the one backup of ``series`` in the file:// store ``store``, by name:
    type, mode, owner, whole-second mtime, size, sha256 of the data, link target."""
    [path] = [os.path.join(store, series, n) for n in os.listdir(os.path.join(store, series)) if n.endswith(".tar.zst")]
    with open(path, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    members, data = {}, {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", encoding="utf-8", errors="surrogateescape") as tar:
        for member in tar:
            name = "/".join(p for p in member.name.split("/") if p not in ("", "."))
            # the Engine (Go's archive/tar) also writes the file type bits into the mode field
            entry = {"type": member.type, "mode": member.mode & 0o7777, "uid": member.uid, "gid": member.gid,
                     "mtime": int(member.mtime), "size": member.size}
            if member.issym():
                entry["target"] = member.linkname
            if member.isreg():
                data[name] = hashlib.sha256(tar.extractfile(member).read()).hexdigest()
            members[name] = entry
            if member.islnk():
                entry["link"] = "/".join(p for p in member.linkname.split("/") if p not in ("", "."))
    return _hard_links_resolved(members, data)


def _hard_links_resolved(members, data):
    """Hard links made comparable: the walks meet a hard-link group's names in different orders
    (the Engine depth-first, tree.py a directory's entries before its subdirectories), so which
    name holds the data differs. Each name of a group becomes a regular file with the group's
    data and the list of the group's names."""
    groups = {}
    for name, entry in members.items():
        if "link" in entry:
            groups.setdefault(entry["link"], {entry["link"]}).add(name)
    for first, names in groups.items():
        for name in names:
            entry = members[name]
            entry.pop("link", None)
            entry.update(type=tarfile.REGTYPE, size=members[first]["size"], sha256=data[first],
                         group=sorted(names))
    for name, sha in data.items():
        members[name].setdefault("sha256", sha)
    return members


def test_a_mountpoint_backup_equals_the_api_archive_member_by_member(run_playbook, tmp_path, docker_engine,
                                                                     dockerthings):
    """Hard links, a sparse file, symlinks (relative, absolute, dangling), a FIFO, non-UTF-8 and
    unicode names, odd modes and owners: the backup read through the mountpoint holds the same
    members as the Engine API's archive, and restores to the same tree."""
    vol = dockerthings.volume()
    mountpoint = dockerthings.mountpoint(vol)
    make_tricky_tree(mountpoint)
    with open(os.path.join(mountpoint, "big.bin"), "wb") as fh:  # several 1 MiB reads, two parts
        fh.write(os.urandom(3 << 20) + bytes(2 << 20) + os.urandom(12345))
    expected = listing(mountpoint)
    store = str(tmp_path / "store")
    run = run_playbook(PLAY_HEAD + """
    - name: through the api
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "file://{{ store }}", series: api,
                                     volume_access: api, helper_image: "{{ image }}"}
    - name: through the mountpoint
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "file://{{ store }}", series: mp,
                                     helper_image: "{{ image }}"}
    - name: restore
      opskit.runbook.volume_backup: {state: restored, path: "{{ out }}", location: "file://{{ store }}", series: mp,
                                     stop_containers: none}
""", extra_vars={"vol": vol, "store": store, "image": docker_engine.busybox_image, "out": str(tmp_path / "out")})
    assert run.rc == 0, run.stdout[-3000:]
    api, direct = run.task("through the api"), run.task("through the mountpoint")
    assert api["access"] == "api" and direct["access"] == "mountpoint", (api, direct)
    assert "warnings" not in direct and "warnings" not in api, (api.get("warnings"), direct.get("warnings"))
    counts = ("entries", "files", "directories", "symlinks", "hardlinks", "file_bytes", "skipped_files")
    assert {k: direct[k] for k in counts} == {k: api[k] for k in counts}
    via_api, via_mountpoint = _archive(store, "api"), _archive(store, "mp")
    assert sorted(via_mountpoint) == sorted(via_api)
    for name in sorted(via_api):
        assert via_mountpoint[name] == via_api[name], name
    assert any(e.get("group") for e in via_api.values())
    assert listing(str(tmp_path / "out")) == expected
    assert listing(mountpoint) == expected  # the probe left nothing behind


# The swap loop of the directory backup's test (test_volume_backup.SWAP_LOOP), run in the volume:
# its ``secret`` is a symlink out of the volume, to a root-only directory.
def _swap_tree(vol_root, secret_dir, secret):
    os.makedirs(secret_dir)
    with open(os.path.join(secret_dir, "key"), "wb") as fh:
        fh.write(secret)
    os.chmod(secret_dir, 0o700)
    os.symlink(secret_dir, os.path.join(vol_root, "secret"))
    write_harmless_tree(vol_root)


def test_a_symlink_swapped_in_during_a_mountpoint_backup_leaks_nothing(run_playbook, tmp_path, docker_engine,
                                                                       dockerthings):
    """While the volume is read through its mountpoint, files and directories keep being
    swapped for symlinks to a root-only directory outside the volume: no backup holds the
    secret or a member below a swapped-in symlink; the swaps are recorded as symlinks."""
    vol = dockerthings.volume()
    mountpoint = dockerthings.mountpoint(vol)
    secret = b"TOPSECRET outside the volume"
    _swap_tree(mountpoint, str(tmp_path / "secret"), secret)
    swapper = subprocess.Popen([sys.executable, "-c", SWAP_LOOP, mountpoint])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(mountpoint, "started")):
            assert swapper.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "file://{{ store }}", series: "swap{{ item }}",
                                     helper_image: "{{ image }}", stop_containers: none}
      loop: [1, 2, 3]
""", extra_vars={"vol": vol, "store": str(tmp_path / "store"), "image": docker_engine.busybox_image})
    finally:
        open(os.path.join(mountpoint, "stop"), "w").close()
        swapper.wait(30)
    assert run.rc == 0, run.stdout[-3000:]
    for result in run.task("backup")["results"]:
        assert result["access"] == "mountpoint", result
    swapped = 0
    for series in ("swap1", "swap2", "swap3"):
        path = [os.path.join(tmp_path, "store", series, n) for n in os.listdir(tmp_path / "store" / series)
                if n.endswith(".tar.zst")][0]
        with open(path, "rb") as fh:
            raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
        assert secret not in raw, series
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
            members = tar.getmembers()
        assert not [m.name for m in members if m.name.endswith("/key")], series
        swapped += sum(1 for m in members if m.issym() and m.name.startswith("./tree/"))
    assert swapped, "the swaps were never seen: the race was not exercised"
