# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What volume_backup backs up and restores into: a Docker named volume or a host directory.

Both targets offer the same operations (load, require, choose_image, size, describe,
is_empty, backup_to, create, restore, remove), so ``action.VolumeBackup`` does not care which
one it has, and both produce the same archive layout (see ``_engine/tar/headers.py``).

* ``VolumeTarget`` goes through the Docker Engine API: a helper container is created (never
  started) with the volume mounted, ``GET /containers/{id}/archive`` streams its content out
  and ``PUT /containers/{id}/archive`` streams it back (``_engine/tar/rewrite.py``); no tar binary and
  no particular image are needed. With ``volume_access=auto`` a backup reads (``write_tree``)
  and a restore writes the volume's mountpoint directly when that is proven safe
  (``_local_root``), and says so in a warning when it could not.
* ``DirectoryTarget`` reads host directories with ``write_tree`` (``tree.TreeWriter``).
* ``staged_restore`` is the restore of both into a directory descriptor: extracted
  (``_engine/tar/extract.py``) into a staging directory, then renamed into place.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import secrets
import signal
import socket
import stat
import struct
import tarfile

from .._engine.artifacts import ArtifactReader
from .._engine.streams import Prefetch, read_chunks
from .._engine.tar.extract import DIR_FLAGS, NEW_FILE_FLAGS, TarExtractor, extract_chunks
from .._engine.tar.headers import CHUNK, TAR_ENCODING, TAR_ERRORS, DeviceFilter, MemberScan, TarScanner, summary
from .._engine.tar.rewrite import rewrite_stream
from .._docker import DOCKER, docker_error
from .._errors import ConfigError, IntegrityError, NotFoundError, OpsError, ServiceError
from .quiesce import HELPER_LABEL, api_errors, uses
from .tree import TarSink, TreeWriter

MOUNT = "/.opskit-volume"          # where helper containers mount the volume
NEVER_RUN = ["/.opskit-helper-never-started"]
LAYOUT = "tar; member names relative to the root: '.', './a', './a/b'"


class SourceError(OpsError):
    """The volume or directory to back up or restore into cannot be used."""


def _os_error(label, exc):
    return SourceError("restoring into %s failed: %s%s" % (
        label, exc.strerror or exc, (" (%s)" % exc.filename) if getattr(exc, "filename", None) else ""))


def _remove_at(dir_fd, name, dev):
    """Remove ``name`` under ``dir_fd``, recursively, never following a symlink and never
    entering a directory of another device than ``dev`` (a mount point)."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        if os.fstat(fd).st_dev != dev:
            raise OSError(errno.EXDEV, "a mount point, not removed", name)
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)  # a read-only directory of the archive, when not root
        for child in os.listdir(fd):
            _remove_at(fd, child, dev)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


FS_IOC_GETFLAGS = 0x80086601
FS_IMMUTABLE_FL, FS_APPEND_FL = 0x10, 0x20
ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC


def _fs_flags(fd):
    """The inode flags (chattr) of an open file, 0 where the file system has none."""
    try:
        return struct.unpack("i", fcntl.ioctl(fd, FS_IOC_GETFLAGS, b"\0" * 8)[:4])[0]
    except OSError:
        return 0


def _mount_points_below(root_fd):
    """Mount points strictly inside the directory open as ``root_fd`` (/proc/self/mountinfo)."""
    try:
        root = os.readlink("/proc/self/fd/%d" % root_fd)
        with open("/proc/self/mountinfo", "rb") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split(b" ")
        if len(fields) > 4:
            point = re.sub(rb"\\([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), fields[4])
            point = os.fsdecode(point)
            if point != root and point.startswith(root.rstrip("/") + "/"):
                out.append(point)
    return out


def _unmovable(dfd, name, dev, rel):
    """Why ``name`` under ``dfd`` (or something in it) cannot be moved and deleted, or None."""
    st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
    if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)):
        return None
    try:
        fd = os.open(name, ENTRY_FLAGS, dir_fd=dfd)
    except OSError:
        return None  # unreadable here: a rename or delete error rolls the replace back
    try:
        st = os.fstat(fd)
        if st.st_dev != dev:
            return "%s is on another file system (a mount point)" % rel
        if _fs_flags(fd) & (FS_IMMUTABLE_FL | FS_APPEND_FL):
            return "%s is immutable or append-only (chattr +i / +a)" % rel
        if stat.S_ISDIR(st.st_mode):
            for child in sorted(os.listdir(fd)):
                why = _unmovable(fd, child, dev, "%s/%s" % (rel, child))
                if why:
                    return why
    finally:
        os.close(fd)
    return None


def check_replaceable(root_fd, label, skip=()):
    """Refuse a forced restore, before anything changes, whose old content cannot be deleted:
    a mount point inside the target, an immutable or append-only entry."""
    mounts = _mount_points_below(root_fd)
    why = ("%s is a mount point" % mounts[0]) if mounts else None
    dev = os.fstat(root_fd).st_dev
    for name in sorted(os.listdir(root_fd)):
        if why is None and name not in skip:
            why = _unmovable(root_fd, name, dev, name)
    if why:
        raise SourceError("refusing to replace the content of %s (force=true): %s; nothing was"
                          " changed" % (label, why))


def _marker(target):
    """``mark(dirty)`` for staged_restore: sets ``target.dirty`` and tells the watchdog to hold
    the stopped containers while the target is neither the old nor the new content."""
    def mark(dirty):
        target.dirty = dirty
        if target.guardian:
            target.guardian.note("hold" if dirty else "release", "")
    return mark


def _swap(root_fd, sfd, replace, token, mark):
    """Move the old entries into a hidden directory, then the staged ones into the root: all or
    nothing (on any error, what moved goes back). Returns the hidden directory's name (None
    without ``replace``), whose old content the caller deletes."""
    aside = ".opskit-old-%s" % token if replace else None
    staging = ".opskit-restore-%s" % token
    moved, placed, afd, swapped = [], [], None, False
    try:
        if aside:
            os.mkdir(aside, 0o700, dir_fd=root_fd)
            afd = os.open(aside, DIR_FLAGS, dir_fd=root_fd)
            for name in os.listdir(root_fd):
                if name not in (staging, aside):
                    os.rename(name, name, src_dir_fd=root_fd, dst_dir_fd=afd)
                    moved.append(name)
        for name in os.listdir(sfd):
            os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=root_fd)
            placed.append(name)
        swapped = True
    finally:
        if not swapped:
            _swap_back(root_fd, sfd, afd, aside, moved, placed, mark)
        if afd is not None:
            os.close(afd)
    return aside


def _swap_back(root_fd, sfd, afd, aside, moved, placed, mark):
    """Undo a partial _swap: the staged entries go back, the old ones return."""
    for name in reversed(placed):
        os.rename(name, name, src_dir_fd=root_fd, dst_dir_fd=sfd)
    for name in reversed(moved):
        os.rename(name, name, src_dir_fd=afd, dst_dir_fd=root_fd)
    if aside:
        os.rmdir(aside, dir_fd=root_fd)
    mark(False)  # the old content is back, whole


SWAP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


def staged_restore(root_fd, location, manifest, replace, label, mark=lambda dirty: None):
    """Restore the backup into the directory open as ``root_fd`` in one pass, nothing visible
    changing until the archive is complete and its sha256 verified.

    With ``replace`` (force), ``check_replaceable`` first refuses old content that could not be
    deleted. The archive is extracted (TarExtractor) into a fresh 0700 staging directory inside
    the target, while it is downloaded, checked and decompressed in a second thread. Then, with
    SIGTERM, SIGINT and SIGHUP held, the old entries are moved into a hidden ``.opskit-old-*``
    directory and the staged ones renamed into place (``_swap``: on any error, everything moves
    back); only then is the old content deleted (a kill before that leaves it in the hidden
    directory), and the root gets its attributes. ``mark(True)``
    is called before the swap and ``mark(False)`` once the target holds the old or the new
    content whole (a failed rollback leaves it marked). Returns the entry counts, with
    ``warnings`` when old content could not be deleted.
    """
    token = secrets.token_hex(6)
    staging = ".opskit-restore-%s" % token
    sfd, done = None, False
    before = os.fstat(root_fd)
    try:
        if replace:
            check_replaceable(root_fd, label)
        os.mkdir(staging, 0o700, dir_fd=root_fd)
        sfd = os.open(staging, DIR_FLAGS, dir_fd=root_fd)
        extractor = TarExtractor(sfd, "backup archive", defer_root=True)
        with ArtifactReader(location, manifest) as reader:
            chunks = Prefetch(read_chunks(reader), depth=4)  # to the very end: the sha256 is checked there
            try:
                stats = extract_chunks(chunks, extractor)
            finally:
                chunks.stop()
        mark(True)
        held = signal.pthread_sigmask(signal.SIG_BLOCK, SWAP_SIGNALS)
        try:
            aside = _swap(root_fd, sfd, replace, token, mark)
            mark(False)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        os.close(sfd)
        sfd = None
        os.rmdir(staging, dir_fd=root_fd)
        warnings = _drop_old(root_fd, aside, before.st_dev, label)
        if extractor.root_attrs is not None:
            extractor.apply_attrs(root_fd, extractor.root_attrs)
            stats = extractor.summary()  # with an xattr of the root the filesystem refused
        _count_restored(root_fd, label, stats)
        done = True
    except OSError as exc:
        raise _os_error(label, exc) from exc
    finally:
        if not done:
            if sfd is not None:
                os.close(sfd)
            with contextlib.suppress(OSError):
                _remove_at(root_fd, staging, before.st_dev)
                os.utime(root_fd, ns=(before.st_atime_ns, before.st_mtime_ns))  # as it was
    if warnings:
        stats["warnings"] = stats.get("warnings", []) + warnings
    return stats


def _count_restored(root_fd, label, stats):
    """``stats["on_disk"]``: measure_tree of the restored target; the restore itself is
    complete, so a failure to count is a warning, never a failed restore."""
    try:
        stats["on_disk"] = measure_tree(root_fd)
    except OSError as exc:
        stats.setdefault("warnings", []).append("counting the restored files of %s failed: %s"
                                                % (label, exc.strerror or exc))


def _scan_dir(fd, top, counts, seen):
    """Count the regular files of the directory open as ``fd`` into ``counts``; its
    subdirectories' names (without the ``.opskit-old-*`` leftover at the ``top``)."""
    subdirs = []
    with os.scandir(fd) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False):
                if not (top and entry.name.startswith(".opskit-old-")):
                    subdirs.append(entry.name)
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                counts[0] += 1
                if st.st_nlink > 1:
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                counts[1] += st.st_size
    return subdirs


def measure_tree(root_fd):
    """What the directory open as ``root_fd`` holds, counted on disk after a restore, never
    following a link: ``files`` (regular file names, hard links included) and ``file_bytes``
    (the size of each file once, as a tar stores it). The hidden ``.opskit-old-*`` leftover of
    a failed deletion is not counted. One ``scandir`` per directory (the entry types) and one
    ``fstatat`` per regular file; directories are opened with O_NOFOLLOW, and only those from
    the root to the one being read are open."""
    counts, seen = [0, 0], set()
    stack = [(os.dup(root_fd), None)]
    try:
        while stack:
            fd, names = stack[-1]
            if names is None:
                names = _scan_dir(fd, len(stack) == 1, counts, seen)
                stack[-1] = (fd, names)
            if not names:
                os.close(stack.pop()[0])
                continue
            stack.append((os.open(names.pop(), DIR_FLAGS, dir_fd=fd), None))
    finally:
        for fd, _names in stack:
            os.close(fd)
    return {"files": counts[0], "file_bytes": counts[1]}


def _drop_old(root_fd, aside, dev, label):
    """Delete the old content moved into ``aside`` (if any); the warnings if that failed."""
    if not aside:
        return []
    try:
        _remove_at(root_fd, aside, dev)
    except OSError as exc:
        return ["%s holds the new content, but deleting its old content failed: %s; what is left"
                " of it is in %s" % (label, exc.strerror or exc, aside)]
    return []


def verify_archive(location, manifest):
    """Read the stored archive once, to the end, before anything is written: its sha256 and
    size (checked at the end, so a damaged archive is reported as corrupt) and every member
    (``MemberScan``: what the restore would refuse is refused now)."""
    scan, refused = MemberScan("backup archive"), None
    with ArtifactReader(location, manifest) as reader:
        for data in read_chunks(reader):
            if refused is None and not scan.ended:
                try:
                    scan.feed(data)
                except IntegrityError as exc:
                    refused = exc  # reported once the stored bytes are known to be intact
    if refused is not None:
        raise refused
    return scan.finish()


def _tree_size(root):
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def write_tree(root_fd, out, label):
    """Write the tree open as ``root_fd`` into ``out`` as tar (``tree.TreeWriter``: directory
    fds, O_NOFOLLOW, no symlink ever followed below the root); return the entry counts with
    ``skipped_files`` and ``warnings``, and the names of the device files left out."""
    sink = TarSink(out)
    tar = tarfile.open(fileobj=sink, mode="w", format=tarfile.PAX_FORMAT, encoding=TAR_ENCODING, errors=TAR_ERRORS)
    tar.copybufsize = CHUNK  # file data in 1 MiB reads (tarfile's default is 16 KiB)
    writer = TreeWriter(tar)
    try:
        writer.write(root_fd)
        tar.close()
        sink.flush()
    except OSError as exc:
        raise SourceError("reading %s failed: %s%s" % (
            label, exc.strerror or exc, (" (%s)" % exc.filename) if getattr(exc, "filename", None) else "")) from exc
    result = summary(writer.counts, writer.entries)
    result["skipped_files"] = writer.skipped
    if writer.warnings():
        result["warnings"] = writer.warnings()
    return result, writer.devices


def _devices_warning(result, devices, name):
    if devices:
        result.setdefault("warnings", []).append(
            "%d device file(s) of volume %s are left out of the backup (a restore refuses device"
            " files): %s" % (len(devices), name, ", ".join(devices[:5])))


# ------------------------------------------------------------------ Docker volumes

class VolumeTarget:
    kind = "volume"

    def __init__(self, client, name, helper_image=None, guardian=None, access="auto"):
        self.client, self.name, self.helper_image = client, name, helper_image
        self.guardian = guardian
        self.dirty = False              # a restore left neither the old nor the new content
        self.access = access
        self.used_access = None
        self.fallback = None            # why access auto did not use the mountpoint
        self.info = None
        self.image = None

    @property
    def label(self):
        return "volume %s" % self.name

    def load(self):
        try:
            self.info = self.client.inspect_volume(self.name)
        except api_errors() as exc:
            err = docker_error(exc, "volume %s" % self.name)
            if getattr(exc, "status_code", None) == 404 or "not found" in err.msg:
                self.info = None
            else:
                raise err from exc
        return self.info is not None

    def require(self):
        if not self.load():
            raise NotFoundError("volume %s does not exist on the Docker host" % self.name)

    def choose_image(self, containers):
        """The helper image: helper_image, else the image of a container using the volume,
        else the smallest image present locally. Nothing is ever pulled."""
        if self.helper_image:
            try:
                self.image = self.client.inspect_image(self.helper_image)["Id"]
            except api_errors() as exc:
                raise ConfigError("helper_image %s is not present on the Docker host (images are"
                                  " never pulled): %s" % (self.helper_image,
                                                          docker_error(exc, "inspect").msg)) from exc
            return self.image
        users = [c for c in containers if uses(c, volume=self.name) and c["image"]]
        if users:
            self.image = users[0]["image"]
            return self.image
        try:
            images = self.client.images()
        except api_errors() as exc:
            raise docker_error(exc, "listing images") from exc
        if not images:
            raise ConfigError("no image is present on the Docker host to create the helper"
                              " container from: set helper_image to a local image")
        self.image = min(images, key=lambda i: (i.get("Size") or 0, i["Id"]))["Id"]
        return self.image

    def size(self):
        """Bytes in the volume (for the S3 part size): walked through its mountpoint when the
        daemon is local and it is readable, else as ``docker system df`` reports it (which
        walks every volume of the host), else None."""
        mountpoint = (self.info or {}).get("Mountpoint")
        if mountpoint and (self.info or {}).get("Driver") == "local" and os.path.isdir(mountpoint) \
                and os.access(mountpoint, os.R_OK | os.X_OK):
            return _tree_size(mountpoint)
        try:
            for vol in self.client.df().get("Volumes") or []:
                if vol.get("Name") == self.name:
                    size = (vol.get("UsageData") or {}).get("Size")
                    return size if size is not None and size >= 0 else None
        except api_errors():
            return None  # only a hint for the S3 part size
        return None

    def describe(self):
        info = self.info or {}
        return {"volume": self.name, "driver": info.get("Driver"),
                "labels": info.get("Labels") or {}, "layout": LAYOUT}

    @contextlib.contextmanager
    def helper(self, read_only, entrypoint=None):
        host_config = self.client.create_host_config(
            mounts=[DOCKER.load().types.Mount(MOUNT, self.name, type="volume", read_only=read_only, no_copy=True)],
            network_mode="none")
        name = "opskit-volume-%s-%s" % (self.name[:40], secrets.token_hex(4))
        try:
            cid = self.client.create_container(
                self.image, entrypoint=entrypoint or NEVER_RUN, host_config=host_config,
                labels={HELPER_LABEL: "volume_backup"}, network_disabled=True, user="0:0",
                name=name)["Id"]
        except api_errors() as exc:
            raise docker_error(exc, "creating the helper container for volume %s" % self.name) from exc
        if self.guardian:
            self.guardian.note("helper", cid)
        try:
            yield cid
        finally:
            try:
                self.client.remove_container(cid, force=True, v=True)  # and its anonymous volumes
                if self.guardian:
                    self.guardian.note("removed", cid)
            except api_errors():
                pass  # the guardian removes it when it can

    def is_empty(self):
        if self.info is None:
            return True
        with self.helper(read_only=True) as cid:
            scanner = TarScanner("volume %s" % self.name)
            try:
                with self.archive(cid, 64 * 1024) as stream:
                    for chunk in stream:
                        scanner.feed(chunk)
                        if scanner.entries > 1 or scanner.ended:
                            break
            except api_errors() as exc:  # the scanner's and the storage's OpsErrors pass as they are
                raise docker_error(exc, "reading volume %s" % self.name) from exc
            return scanner.entries <= 1

    @contextlib.contextmanager
    def archive(self, cid, chunk_size):
        """The chunks of ``GET /containers/{cid}/archive`` of the volume's content.

        Like APIClient.get_archive, but the response is closed on leaving the block: an
        unfinished archive stream otherwise keeps the daemon from removing the helper container
        until the client times out.
        """
        client = self.client
        res = client._get(client._url("/containers/{0}/archive", cid),  # pylint: disable=protected-access
                          params={"path": MOUNT + "/."}, stream=True,
                          headers={"Accept-Encoding": "identity"})
        try:
            client._raise_for_status(res)  # pylint: disable=protected-access
            yield res.iter_content(chunk_size, False)
        finally:
            res.close()

    def backup_to(self, out):
        """Write the volume's tar into ``out``; return the entry counts, ``skipped_files`` and
        ``warnings`` (device files are left out: no restore would accept them).

        Read directly through the mountpoint when ``_local_root`` proves it is this volume's
        (``write_tree``, the directory backup's walk), else through the Engine API
        (``_backup_api``), with a warning saying why when ``volume_access`` is ``auto``."""
        with self.helper(read_only=True) as cid:
            root_fd = self._local_root(cid)
            if root_fd is None:
                self.used_access = "api"
                result, devices = self._backup_api(cid, out)
            else:
                self.used_access = "mountpoint"
                try:
                    result, devices = write_tree(root_fd, out, self.label)
                finally:
                    os.close(root_fd)
        _devices_warning(result, devices, self.name)
        warning = self.access_warning("read")
        if warning:
            result.setdefault("warnings", []).append(warning)
        result["access"] = self.used_access
        return result

    def _backup_api(self, cid, out):
        """Stream ``GET /containers/{cid}/archive`` into ``out``, device files left out
        (``DeviceFilter``); the counts and the names of the devices left out."""
        scanner = TarScanner("the archive of volume %s" % self.name)
        devices = DeviceFilter()
        try:
            with self.archive(cid, CHUNK) as stream:
                for chunk in stream:
                    chunk = devices.feed(chunk)
                    scanner.feed(chunk)
                    out.write(chunk)
        except api_errors() as exc:  # the scanner's and the storage's OpsErrors pass as they are
            raise docker_error(exc, "reading volume %s" % self.name) from exc
        result = scanner.finish()
        result["skipped_files"] = len(devices.dropped)
        return result, devices.dropped

    def create(self):
        if self.info is None:
            try:
                self.info = self.client.create_volume(self.name)
            except api_errors() as exc:
                raise docker_error(exc, "creating volume %s" % self.name) from exc

    def empty(self):
        command = ["find", MOUNT, "-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "--",
                   "{}", "+"]
        with self.helper(read_only=False, entrypoint=command) as cid:
            try:
                self.client.start(cid)
                status = self.client.wait(cid, timeout=None).get("StatusCode")
            except api_errors() as exc:
                raise docker_error(exc, "emptying volume %s (force=true)" % self.name) from exc
            if status != 0:
                try:
                    logs = self.client.logs(cid, tail=3).decode("utf-8", "replace")
                except api_errors():
                    logs = ""
                raise ServiceError("emptying volume %s (force=true) failed with exit code %s: %s"
                                   " (the helper image needs find and rm: set helper_image)"
                                   % (self.name, status, " ".join(logs.split())[:300]))

    def _local_root(self, cid):
        """An fd of the volume's mountpoint when this process can write the volume directly
        (access ``auto``, ``local`` driver, running as root, and a probe file created through
        the mountpoint is seen by the helper container ``cid``, which proves the mountpoint is
        this volume's on this very host); else None, with the reason in ``fallback`` when
        access is ``auto`` (see access_warning)."""
        self.fallback = None
        if self.access != "auto":
            return None
        info = self.info or {}
        mountpoint = info.get("Mountpoint")
        if info.get("Driver") != "local":
            self.fallback = "its driver is %s, not local" % info.get("Driver")
        elif not mountpoint:
            self.fallback = "the daemon reports no mountpoint"
        elif os.geteuid() != 0:
            self.fallback = "the module does not run as root"
        if self.fallback is not None:
            return None
        try:
            fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            self.fallback = "cannot open its mountpoint %s: %s" % (mountpoint, exc.strerror or exc)
            return None
        self.fallback = self._probe(fd, cid, mountpoint)
        if self.fallback is not None:
            os.close(fd)
            return None
        return fd

    def _probe(self, fd, cid, mountpoint):
        """None when a probe file created in the directory ``fd`` is seen in the helper
        container ``cid`` at the mount point; else why not."""
        probe = ".opskit-probe-%s" % secrets.token_hex(8)
        try:
            before = os.fstat(fd)
            os.close(os.open(probe, NEW_FILE_FLAGS, 0o600, dir_fd=fd))
            try:
                client = self.client
                res = client.head(client._url("/containers/{0}/archive", cid),  # pylint: disable=protected-access
                                  params={"path": "%s/%s" % (MOUNT, probe)}, timeout=client.timeout)
            finally:
                os.unlink(probe, dir_fd=fd)
                os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        except OSError as exc:  # the file system's, or the requests errors of the HEAD
            return "probing its mountpoint %s failed: %s" % (mountpoint, getattr(exc, "strerror", None) or exc)
        if res.status_code != 200:
            return ("a probe file created through its mountpoint %s is not seen in the helper"
                    " container (a daemon on another host or in a VM?)" % mountpoint)
        return None

    def access_warning(self, done="restored"):
        """The warning for a backup (``done="read"``) or restore that fell back from the
        mountpoint to the API, or None."""
        if not self.fallback:
            return None
        return ("volume %s was %s through the Docker Engine API, not directly through its"
                " mountpoint (volume_access=auto): %s" % (self.name, done, self.fallback))

    def restore(self, location, manifest, replace):
        """Restore the backup into the volume (emptied first when ``replace``).

        Directly through its mountpoint when possible (see _local_root): a staged restore in
        one pass. Else through the Engine API: the stored archive is read once first
        (``verify_archive``: sha256 and every member's checks), then the volume is emptied and
        the checked archive goes through ``PUT /containers/{id}/archive`` of the helper's root,
        the names rebased onto the mount point; in between, the target is marked dirty. The volume root gets the
        archive root's attributes either way.
        """
        with self.helper(read_only=False) as cid:
            root_fd = self._local_root(cid)
            if root_fd is not None:
                self.used_access = "mountpoint"
                try:
                    return staged_restore(root_fd, location, manifest, replace, self.label, _marker(self))
                finally:
                    os.close(root_fd)
            self.used_access = "api"
            verify_archive(location, manifest)  # before anything is written
            mark = _marker(self)
            mark(True)  # neither the old nor the new content until the new one is all written
            if replace:
                self.empty()
            with ArtifactReader(location, manifest) as reader:
                chunks = Prefetch(rewrite_stream(reader, MOUNT.lstrip("/"), what="backup archive"))
                try:
                    self.client.put_archive(cid, "/", iter(chunks))
                except (OpsError,) + api_errors() as exc:
                    chunks.stop()
                    if chunks.error is not None:
                        raise chunks.error  # the archive's fault, not the daemon's
                    if isinstance(exc, OpsError):
                        raise
                    raise docker_error(exc, "writing volume %s" % self.name) from exc
        mark(False)
        return chunks.value.summary()

    def remove(self):
        """Remove the volume (one this restore created, after a failure)."""
        with contextlib.suppress(*api_errors()):
            self.client.remove_volume(self.name)


# ----------------------------------------------------------------- host directories

class DirectoryTarget:
    kind = "directory"

    def __init__(self, path):
        if not path or not os.path.isabs(path):
            raise ConfigError("path %r must be an absolute path" % (path,))
        self.path = os.path.normpath(path)
        self.info = None
        self.guardian = None
        self.dirty = False              # a restore left neither the old nor the new content

    @property
    def label(self):
        return "directory %s" % self.path

    def load(self):
        self.info = os.path.isdir(self.path) or None
        if self.info is None and os.path.lexists(self.path):
            raise SourceError("path %s exists and is not a directory" % self.path)
        return self.info is not None

    def require(self):
        if not self.load():
            raise NotFoundError("path %s does not exist" % self.path)

    def choose_image(self, containers):
        return None

    def size(self):
        return _tree_size(self.path)

    def describe(self):
        return {"path": self.path, "host": socket.gethostname(), "layout": LAYOUT}

    def is_empty(self):
        if not self.load():
            return True
        with os.scandir(self.path) as it:
            return next(it, None) is None

    def backup_to(self, out):
        """Write the directory's tar into ``out`` (``write_tree``); return the entry counts,
        with ``warnings``."""
        try:
            root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)  # a root symlink is followed
        except OSError as exc:
            raise SourceError("reading %s failed: %s" % (self.path, exc.strerror or exc)) from exc
        try:
            result, _devices = write_tree(root_fd, out, self.path)
        finally:
            os.close(root_fd)
        return result

    def create(self):
        if not self.load():
            try:
                os.makedirs(self.path, mode=0o700)
            except OSError as exc:
                raise SourceError("cannot create %s: %s" % (self.path, exc.strerror)) from exc
            self.info = True

    def restore(self, location, manifest, replace):
        """A staged restore into the directory (see staged_restore)."""
        try:
            root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError("cannot open %s: %s" % (self.path, exc.strerror)) from exc
        try:
            st, top = os.fstat(root_fd), os.stat("/")
            if replace and (st.st_dev, st.st_ino) == (top.st_dev, top.st_ino):  # "//", a link to /
                raise ConfigError("refusing to empty / (force=true): path %s is the root directory"
                                  % self.path)
            return staged_restore(root_fd, location, manifest, replace, self.path, _marker(self))
        finally:
            os.close(root_fd)

    def access_warning(self):
        return None

    def remove(self):
        """Remove the directory (one this restore created, after a failure), if empty."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)
