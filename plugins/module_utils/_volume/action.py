# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup: Docker named volumes and host directories, backed up and restored as tar.

Docker volumes go through the Engine API only: a helper container is created (never started)
with the volume mounted, ``GET /containers/{id}/archive`` streams its content out and
``PUT /containers/{id}/archive`` streams it back; no tar binary and no particular image are
needed. Host directories are read and written with Python's tarfile. Both produce the same
archive layout (see ``_tarsafe``) and the same manifest, so either restores into the other.
"""

from __future__ import annotations

import collections
import contextlib
import os
import platform
import secrets
import socket
import tarfile

from .._engine.backup import (ArtifactReader, BackupSession, Prefetch, read_chunks, resolve_backup, sanitize_series, summarize,
                      validate_series, verify_stored)
from .._docker import DEFAULT_DOCKER_HOST, docker_client, docker_error
from .._errors import ConfigError, NotFoundError, OpsError, ServiceError
from .quiesce import (HELPER_LABEL, Guardian, Quiescer, container_view, normalize_selection,
                       select_containers, uses)
from .tar import (CHUNK, DIR_FLAGS, NEW_FILE_FLAGS, TAR_ENCODING, TAR_ERRORS, TarExtractor, TarScanner,
                       directory_members, extract_chunks, kind_of, rewrite_stream, summary)

MOUNT = "/.opskit-volume"          # where helper containers mount the volume
NEVER_RUN = ["/.opskit-helper-never-started"]
LAYOUT = "tar; member names relative to the root: '.', './a', './a/b'"
RESTORABLE_KINDS = ("volume", "directory")


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
            raise _os_error(label, exc) from None
        raise


def _api_error(exc, what):
    if isinstance(exc, OpsError):
        return exc
    return docker_error(exc, what)


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
        self.info = None
        self.image = None

    @property
    def label(self):
        return "volume %s" % self.name

    def load(self):
        try:
            self.info = self.client.inspect_volume(self.name)
        except Exception as exc:  # pylint: disable=broad-except
            err = docker_error(exc, "volume %s" % self.name)
            if getattr(exc, "status_code", None) == 404 or "not found" in err.msg:
                self.info = None
            else:
                raise err from None
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
            except Exception as exc:  # pylint: disable=broad-except
                raise ConfigError("helper_image %s is not present on the Docker host (images are"
                                  " never pulled): %s" % (self.helper_image,
                                                          docker_error(exc, "inspect").msg)) from None
            return self.image
        users = [c for c in containers if uses(c, volume=self.name) and c["image"]]
        if users:
            self.image = users[0]["image"]
            return self.image
        try:
            images = self.client.images()
        except Exception as exc:  # pylint: disable=broad-except
            raise docker_error(exc, "listing images") from None
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
        except Exception:  # pylint: disable=broad-except
            return None
        return None

    def describe(self):
        info = self.info or {}
        return {"volume": self.name, "driver": info.get("Driver"),
                "labels": info.get("Labels") or {}, "layout": LAYOUT}

    @contextlib.contextmanager
    def helper(self, read_only, entrypoint=None):
        from docker.types import Mount  # imported here: _docker guards the import
        host_config = self.client.create_host_config(
            mounts=[Mount(MOUNT, self.name, type="volume", read_only=read_only, no_copy=True)],
            network_mode="none")
        name = "opskit-volume-%s-%s" % (self.name[:40], secrets.token_hex(4))
        try:
            cid = self.client.create_container(
                self.image, entrypoint=entrypoint or NEVER_RUN, host_config=host_config,
                labels={HELPER_LABEL: "volume_backup"}, network_disabled=True, user="0:0",
                name=name)["Id"]
        except Exception as exc:  # pylint: disable=broad-except
            raise docker_error(exc, "creating the helper container for volume %s" % self.name) from None
        if self.guardian:
            self.guardian.note("helper", cid)
        try:
            yield cid
        finally:
            try:
                self.client.remove_container(cid, force=True)
                if self.guardian:
                    self.guardian.note("removed", cid)
            except Exception:  # pylint: disable=broad-except
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
            except Exception as exc:  # pylint: disable=broad-except
                raise _api_error(exc, "reading volume %s" % self.name) from None
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
            except Exception as exc:  # pylint: disable=broad-except
                raise _api_error(exc, "reading volume %s" % self.name) from None
        return scanner.finish()

    def create(self):
        if self.info is None:
            try:
                self.info = self.client.create_volume(self.name)
            except Exception as exc:  # pylint: disable=broad-except
                raise docker_error(exc, "creating volume %s" % self.name) from None

    def empty(self):
        command = ["find", MOUNT, "-mindepth", "1", "-maxdepth", "1", "-exec", "rm", "-rf", "--",
                   "{}", "+"]
        with self.helper(read_only=False, entrypoint=command) as cid:
            try:
                self.client.start(cid)
                status = self.client.wait(cid, timeout=None).get("StatusCode")
            except Exception as exc:  # pylint: disable=broad-except
                raise docker_error(exc, "emptying volume %s (force=true)" % self.name) from None
            if status != 0:
                try:
                    logs = self.client.logs(cid, tail=3).decode("utf-8", "replace")
                except Exception:  # pylint: disable=broad-except
                    logs = ""
                raise ServiceError("emptying volume %s (force=true) failed with exit code %s: %s"
                                   " (the helper image needs find and rm: set helper_image)"
                                   % (self.name, status, " ".join(logs.split())[:300]))

    def _local_root(self, cid):
        """An fd of the volume's mountpoint when this process can write the volume directly
        (access ``auto``, ``local`` driver, running as root, and a probe file created through
        the mountpoint is seen by the helper container ``cid``, which proves the mountpoint is
        this volume's on this very host); else None."""
        info = self.info or {}
        mountpoint = info.get("Mountpoint")
        if self.access != "auto" or info.get("Driver") != "local" or not mountpoint \
                or os.geteuid() != 0:
            return None
        try:
            fd = os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            return None
        probe = ".opskit-probe-%s" % secrets.token_hex(8)
        seen = False
        try:
            before = os.fstat(fd)
            os.close(os.open(probe, NEW_FILE_FLAGS, 0o600, dir_fd=fd))
            try:
                client = self.client
                res = client.head(client._url("/containers/{0}/archive", cid),  # pylint: disable=protected-access
                                  params={"path": "%s/%s" % (MOUNT, probe)}, timeout=client.timeout)
                seen = res.status_code == 200
            finally:
                os.unlink(probe, dir_fd=fd)
                os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        except Exception:  # pylint: disable=broad-except
            seen = False
        if not seen:
            os.close(fd)
            return None
        return fd

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
                except Exception as exc:  # pylint: disable=broad-except
                    chunks.stop()
                    if chunks.error is not None:
                        raise chunks.error from None  # the archive's fault, not the daemon's
                    raise _api_error(exc, "writing volume %s" % self.name) from None
        return chunks.value.summary()

    def remove(self):
        """Remove the volume (one this restore created, after a failure)."""
        with contextlib.suppress(Exception):
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
                self.path, exc.strerror or exc, (" (%s)" % exc.filename) if getattr(exc, "filename", None) else "")) from None
        result = summary(counts, entries)
        result["skipped_files"] = skipped
        return result

    def create(self):
        if not self.load():
            try:
                os.makedirs(self.path, mode=0o700)
            except OSError as exc:
                raise SourceError("cannot create %s: %s" % (self.path, exc.strerror)) from None
            self.info = True

    def restore(self, location, manifest, replace):
        """A staged restore into the directory (see staged_restore)."""
        if replace and self.path == "/":
            raise ConfigError("refusing to empty / (force=true)")
        try:
            root_fd = os.open(self.path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError as exc:
            raise SourceError("cannot open %s: %s" % (self.path, exc.strerror)) from None
        try:
            return staged_restore(root_fd, location, manifest, replace, self.path)
        finally:
            os.close(root_fd)

    def remove(self):
        """Remove the directory (one this restore created, after a failure), if empty."""
        with contextlib.suppress(OSError):
            os.rmdir(self.path)


# ------------------------------------------------------------------------ the action

def _docker_wanted(params):
    """Docker is needed for volumes; for a path only to stop containers, when reachable."""
    if params.get("volume"):
        return True
    mode, _names = normalize_selection(params.get("stop_containers"))
    if mode == "list":
        return True
    if mode == "auto":
        host = params.get("docker_host") or DEFAULT_DOCKER_HOST
        return not host.startswith("unix://") or os.path.exists(host[len("unix://"):])
    return False


def _list_containers(client):
    try:
        return [container_view(c) for c in client.containers(all=True)]
    except Exception as exc:  # pylint: disable=broad-except
        raise docker_error(exc, "listing containers") from None


def default_series(params, client):
    if params.get("series"):
        return validate_series(params["series"])
    if params.get("volume"):
        try:
            host = client.info().get("Name") or "docker"
        except Exception as exc:  # pylint: disable=broad-except
            raise docker_error(exc, "docker info") from None
        return sanitize_series("%s-%s" % (host, params["volume"]))
    return sanitize_series("%s-%s" % (socket.gethostname(), params["path"]))


def _tools(client):
    tools = {"python": platform.python_version()}
    if client is not None:
        try:
            import docker
            version = client.version()
            tools.update(docker_engine=version.get("Version"), docker_api=version.get("ApiVersion"),
                         docker_sdk=docker.__version__)
        except Exception:  # pylint: disable=broad-except
            pass
    return tools


class VolumeBackup:
    """One run of the volume_backup module: plan, then (unless check mode) apply."""

    def __init__(self, params, location, check_mode=False, client_factory=None):
        self.params, self.location, self.check_mode = params, location, check_mode
        self.client_factory = client_factory or (lambda: docker_client(params))
        self.client = None
        if _docker_wanted(params):
            try:
                self.client = self.client_factory()
            except ServiceError:
                if params.get("volume") or normalize_selection(params.get("stop_containers"))[0] != "auto":
                    raise
                # a host directory with stop_containers=auto: no reachable Docker, nothing to stop
        if params.get("volume"):
            self.target = VolumeTarget(self.client, params["volume"], params.get("helper_image"),
                                       access=params.get("volume_access") or "auto")
        else:
            self.target = DirectoryTarget(params["path"])
        self.series = default_series(params, self.client)
        self.mode, self.names = normalize_selection(params.get("stop_containers"))

    def _plan_stop(self):
        containers = _list_containers(self.client) if self.client is not None else []
        if self.mode == "list" and self.client is None:
            raise ConfigError("stop_containers lists containers but Docker is not reachable")
        to_stop, _considered = select_containers(
            containers, self.mode, self.names, volume=self.params.get("volume"),
            path=self.target.path if self.target.kind == "directory" else None)
        return containers, to_stop

    def _base(self):
        out = {"state": self.params["state"], "series": self.series, "location": self.location.url,
               "kind": self.target.kind, "stopped": [], "restarted": [], "downtime_seconds": 0.0}
        out["volume" if self.target.kind == "volume" else "path"] = \
            self.params.get("volume") or self.target.path
        return out

    def _quiesced(self, to_stop, work):
        """Run ``work(quiescer)`` with ``to_stop`` stopped; containers restart in any case."""
        guardian = Guardian(self.client_factory) if self.client is not None else None
        self.target.guardian = guardian
        quiescer = Quiescer(self.client, to_stop, self.params.get("stop_timeout", 30), guardian,
                            docker_error)
        error, value = None, None
        try:
            quiescer.stop()
            value = work(quiescer)
        except OpsError as exc:
            error = exc
        finally:
            quiescer.resume()
            if guardian is not None:
                guardian.done()
        return value, error, quiescer

    @staticmethod
    def _finish(result, error, quiescer, what):
        result.update(quiescer.report())
        if quiescer.failures:
            msg = quiescer.failure_message()
            msg += ("; %s failed as well: %s" % (what, error.msg)) if error else \
                   ("; the %s itself completed" % what)
            raise ServiceError(msg, **result)
        if error is not None:
            error.result.update({k: v for k, v in result.items() if k not in error.result})
            raise error
        return result

    # ---------------------------------------------------------------- backed_up
    def backup(self):
        self.target.require()
        containers, to_stop = self._plan_stop()
        result = self._base()
        result.update(changed=True, would_stop=[c["name"] for c in to_stop], backup=None)
        self.target.choose_image(containers)
        self.location.check_writable()
        if self.check_mode:
            return result
        size_hint = self.target.size()
        source = self.target.describe()
        params = self.params

        def work(quiescer):
            with BackupSession(self.location, self.series, self.target.kind,
                               compression=params.get("compression") or "zstd",
                               level=params.get("compression_level"),
                               threads=params.get("compression_threads", -1),
                               size_hint=size_hint) as session:
                with session.artifact("tar", content_type="application/x-tar") as out:
                    stats = self.target.backup_to(out)
                    quiescer.resume()  # the source is read: restart while the upload finishes
                source.update(stats, size_estimate_bytes=size_hint,
                              stopped=[c["name"] for c in quiescer.stopped],
                              downtime_seconds=quiescer.downtime)
                return session.publish(source=source, tools=_tools(self.client)), stats

        value, error, quiescer = self._quiesced(to_stop, work)
        if value is not None:
            manifest, stats = value
            result["backup"] = summarize(manifest, self.location)
            result.update(stats)
            result["raw_bytes"] = manifest["raw_bytes"]
            result["size_bytes"] = manifest["size_bytes"]
        return self._finish(result, error, quiescer, "backup")

    # ----------------------------------------------------------------- restored
    def restore(self):
        exists = self.target.load()
        manifest = resolve_backup(self.location, self.series, self.params.get("backup") or "latest")
        if manifest.get("kind") not in RESTORABLE_KINDS:
            raise ConfigError("backup %s of series %s is a %s backup, not a volume or directory"
                              " archive" % (manifest["id"], self.series, manifest.get("kind")))
        containers, to_stop = self._plan_stop()
        self.target.choose_image(containers)  # the helper that checks the volume needs one
        empty = self.target.is_empty() if exists else True
        force = bool(self.params.get("force"))
        result = self._base()
        result.update(changed=True, would_stop=[c["name"] for c in to_stop],
                      backup=summarize(manifest, self.location), created=not exists,
                      emptied=bool(not empty and force))
        if not empty and not force:
            result["changed"] = False
            raise ConfigError(
                "%s is not empty: refusing to restore backup %s into it (a second restore of the"
                " same backup is refused too); set force=true to delete its content first"
                % (self.target.label, manifest["id"]), **result)
        if self.check_mode:
            return result

        def work(_quiescer):
            self.target.create()
            try:
                return self.target.restore(self.location, manifest, replace=not empty)
            except OpsError:
                if not exists:
                    self.target.remove()  # it did not exist: leave nothing behind
                raise

        stats, error, quiescer = self._quiesced(to_stop, work)
        if stats is not None:
            result.update(stats)
            result["raw_bytes"] = manifest.get("raw_bytes")
            if self.target.kind == "volume":
                result["access"] = self.target.used_access
        return self._finish(result, error, quiescer, "restore")

    def run(self):
        if self.params["state"] == "restored":
            return self.restore()
        return self.backup()


def run(params, location, check_mode=False):
    return VolumeBackup(params, location, check_mode).run()
