# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What volume_backup backs up and restores into: a Docker named volume or a host directory.

Both targets offer the same operations (load, require, choose_image, size, describe,
is_empty, backup_to, create, restore, remove), so ``action.VolumeBackup`` does not care which
one it has, and both produce the same archive layout (see ``tar/headers.py``).

* ``VolumeTarget`` goes through the Docker Engine API: a helper container is created (never
  started) with the volume mounted, ``GET /containers/{id}/archive`` streams its content out
  and ``PUT /containers/{id}/archive`` streams it back (``tar/rewrite.py``); no tar binary and
  no particular image are needed. With ``volume_access=auto`` a restore writes the volume's
  mountpoint directly when that is proven safe (``_local_root``), and says so in a warning
  when it could not.
* ``DirectoryTarget`` reads host directories with Python's tarfile.
* ``staged_restore`` is the restore of both into a directory descriptor: extracted
  (``tar/extract.py``) into a staging directory, then renamed into place.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import socket
import tarfile

from .._engine.artifacts import ArtifactReader, verify_stored
from .._engine.streams import Prefetch, read_chunks
from .._docker import docker_error
from .._errors import ConfigError, IntegrityError, NotFoundError, OpsError, ServiceError
from .quiesce import DOCKER, HELPER_LABEL, api_errors, uses
from .tar.extract import DIR_FLAGS, NEW_FILE_FLAGS, TarExtractor, extract_chunks
from .tar.headers import CHUNK, TAR_ENCODING, TAR_ERRORS, TarScanner, kind_of, summary
from .tar.rewrite import rewrite_stream

MOUNT = "/.opskit-volume"          # where helper containers mount the volume
NEVER_RUN = ["/.opskit-helper-never-started"]
LAYOUT = "tar; member names relative to the root: '.', './a', './a/b'"


class SourceError(OpsError):
    """The volume or directory to back up or restore into cannot be used."""


def _os_error(label, exc):
    return SourceError("restoring into %s failed: %s%s" % (
        label, exc.strerror or exc, (" (%s)" % exc.filename) if getattr(exc, "filename", None) else ""))


def _remove_at(dir_fd, name):
    """Remove ``name`` under ``dir_fd``, recursively, never following a symlink."""
    try:
        os.unlink(name, dir_fd=dir_fd)
        return
    except IsADirectoryError:
        pass
    fd = os.open(name, DIR_FLAGS, dir_fd=dir_fd)
    try:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o700)  # a read-only directory of the archive, when not root
        for child in os.listdir(fd):
            _remove_at(fd, child)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dir_fd)


def staged_restore(root_fd, location, manifest, replace, label):
    """Restore the backup into the directory open as ``root_fd`` in one pass, nothing visible
    changing until the archive is complete and its sha256 verified.

    The archive is extracted (TarExtractor) into a fresh 0700 staging directory inside the
    target, while it is downloaded, checked and decompressed in a second thread. Only then
    is the target's old content deleted (``replace``), the staged entries renamed into place
    and the root's own attributes applied. On any error the staging directory is removed and
    the target is as it was. Returns the entry counts.
    """
    staging = ".opskit-restore-%s" % secrets.token_hex(6)
    sfd = None
    before = os.fstat(root_fd)
    try:
        os.mkdir(staging, 0o700, dir_fd=root_fd)
        sfd = os.open(staging, DIR_FLAGS, dir_fd=root_fd)
        extractor = TarExtractor(sfd, "backup archive", defer_root=True)
        with ArtifactReader(location, manifest) as reader:
            chunks = Prefetch(read_chunks(reader), depth=4)  # to the very end: the sha256 is checked there
            try:
                stats = extract_chunks(chunks, extractor)
            finally:
                chunks.stop()
        if replace:
            for name in os.listdir(root_fd):
                if name != staging:
                    _remove_at(root_fd, name)
        for name in os.listdir(sfd):
            os.rename(name, name, src_dir_fd=sfd, dst_dir_fd=root_fd)
        os.close(sfd)
        sfd = None
        os.rmdir(staging, dir_fd=root_fd)
        if extractor.root_attrs is not None:
            extractor.apply_attrs(root_fd, extractor.root_attrs)
        return stats
    except BaseException as exc:
        if sfd is not None:
            os.close(sfd)
        with contextlib.suppress(OSError):
            _remove_at(root_fd, staging)
            os.utime(root_fd, ns=(before.st_atime_ns, before.st_mtime_ns))  # as it was
        if isinstance(exc, OSError):
            raise _os_error(label, exc) from exc
        raise


def _tree_size(root):
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


# ------------------------------------------------------------------ Docker volumes

class VolumeTarget:
    kind = "volume"

    def __init__(self, client, name, helper_image=None, guardian=None, access="auto"):
        self.client, self.name, self.helper_image = client, name, helper_image
        self.guardian = guardian
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
                self.client.remove_container(cid, force=True)
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
        """Stream the volume's tar into ``out``; return the entry counts."""
        scanner = TarScanner("the archive of volume %s" % self.name)
        with self.helper(read_only=True) as cid:
            try:
                with self.archive(cid, CHUNK) as stream:
                    for chunk in stream:
                        scanner.feed(chunk)
                        out.write(chunk)
            except api_errors() as exc:  # the scanner's and the storage's OpsErrors pass as they are
                raise docker_error(exc, "reading volume %s" % self.name) from exc
        return scanner.finish()

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

    def access_warning(self):
        """The warning for a restore that fell back from the mountpoint to the API, or None."""
        if not self.fallback:
            return None
        return ("volume %s was restored through the Docker Engine API, not directly through its"
                " mountpoint (volume_access=auto): %s" % (self.name, self.fallback))

    def restore(self, location, manifest, replace):
        """Restore the backup into the volume (emptied first when ``replace``).

        Directly through its mountpoint when possible (see _local_root): a staged restore in
        one pass. Else through the Engine API: the stored sha256 is verified first, then the
        volume is emptied and the checked archive goes through ``PUT /containers/{id}/archive``
        of the helper's root, the names rebased onto the mount point. The volume root gets the
        archive root's attributes either way.
        """
        with self.helper(read_only=False) as cid:
            root_fd = self._local_root(cid)
            if root_fd is not None:
                self.used_access = "mountpoint"
                try:
                    return staged_restore(root_fd, location, manifest, replace, self.label)
                finally:
                    os.close(root_fd)
            self.used_access = "api"
            verify_stored(location, manifest)  # before anything is written
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
        root = os.path.realpath(self.path)
        counts, entries, skipped = collections.Counter(), 0, 0
        tar = tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT, bufsize=CHUNK,
                           encoding=TAR_ENCODING, errors=TAR_ERRORS)
        try:
            for abspath, arcname in directory_members(root):
                info = tar.gettarinfo(abspath, arcname)
                if info is None or info.ischr() or info.isblk():
                    skipped += 1  # sockets and device files
                    continue
                info.mtime = int(info.mtime)
                if info.isreg():
                    with open(abspath, "rb") as data:
                        tar.addfile(info, data)
                else:
                    tar.addfile(info)
                counts[kind_of(info)] += 1
                entries += 1
            tar.close()
        except OSError as exc:
            raise SourceError("reading %s failed: %s%s" % (
                self.path, exc.strerror or exc, (" (%s)" % exc.filename) if getattr(exc, "filename", None) else "")) from exc
        result = summary(counts, entries)
        result["skipped_files"] = skipped
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
        if replace and self.path == "/":
            raise ConfigError("refusing to empty / (force=true)")
        try:
            root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError("cannot open %s: %s" % (self.path, exc.strerror)) from exc
        try:
            return staged_restore(root_fd, location, manifest, replace, self.path)
        finally:
            os.close(root_fd)

    def access_warning(self):
        return None

    def remove(self):
        """Remove the directory (one this restore created, after a failure), if empty."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


# ------------------------------------------------------------------------ the action


def directory_members(root):
    """(absolute path, arcname) pairs of a directory tree, parents before children, root first.

    Names are sorted within a directory; symlinks are listed, never followed.
    """
    yield root, "."
    stack = [(root, ".")]
    while stack:
        path, arc = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise IntegrityError("cannot list %s: %s" % (path, exc.strerror)) from exc
        subdirs = []
        for entry in entries:
            child_arc = "%s/%s" % (arc, entry.name)
            yield entry.path, child_arc
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, child_arc))
            except OSError:
                pass
        stack.extend(reversed(subdirs))
