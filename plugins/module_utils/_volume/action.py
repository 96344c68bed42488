# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup: one run of the module, a Docker named volume or a host directory backed up
or restored as tar, with the containers that use it stopped in between.

``VolumeBackup`` plans (what to stop, whether the target is empty), returns the plan in check
mode and applies it otherwise, through a target of ``targets.py`` (a volume or a directory)
and the ``Quiescer`` of ``quiesce.py``. ``run(params, location, check_mode)`` is what the
module's main() calls.
"""

from __future__ import annotations

import os
import platform
import socket

from .._engine.catalog import resolve_backup, sanitize_series, summarize, validate_series
from .._engine.lock import SeriesLock, attach
from .._engine.session import BackupSession
from .._docker import DEFAULT_DOCKER_HOST, DOCKER, docker_client, docker_error
from .._errors import ConfigError, OpsError, ServiceError
from .quiesce import Guardian, Quiescer, api_errors, container_view, normalize_selection, select_containers
from .record import verify
from .targets import DirectoryTarget, VolumeTarget

RESTORABLE_KINDS = ("volume", "directory")


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
    except api_errors() as exc:
        raise docker_error(exc, "listing containers") from exc


def default_series(params, client):
    if params.get("series"):
        return validate_series(params["series"])
    if params.get("volume"):
        try:
            host = client.info().get("Name") or "docker"
        except api_errors() as exc:
            raise docker_error(exc, "docker info") from exc
        return sanitize_series("%s-%s" % (host, params["volume"]))
    return sanitize_series("%s-%s" % (socket.gethostname(), params["path"]))


def _tools(client):
    tools = {"python": platform.python_version()}
    if client is not None:
        try:
            version = client.version()
            tools.update(docker_engine=version.get("Version"), docker_api=version.get("ApiVersion"),
                         docker_sdk=DOCKER.load().__version__)
        except api_errors():
            pass  # the versions are informational: the backup does not depend on them
    return tools


COUNT_FIELDS = ("entries", "files", "directories", "symlinks", "hardlinks", "file_bytes")


def recorded_counts(manifest):
    """The counts the backup recorded in its manifest (``file_bytes`` since this collection
    records it), for a drill to compare with what was restored."""
    source = manifest.get("source") or {}
    return {k: source[k] for k in COUNT_FIELDS if isinstance(source.get(k), int) and not isinstance(source.get(k), bool)}


class VolumeBackup:
    """One run of the volume_backup module: plan, then (unless check mode) apply."""

    def __init__(self, params, location, check_mode=False, client_factory=None):
        self.params, self.location, self.check_mode = params, location, check_mode
        self.client_factory = client_factory or (lambda: docker_client(params))
        self.client = None
        self.lock = None
        self.verification = None  # state=verified: record.Verification
        self.warnings = []  # returned under "warnings" for module.warn()
        if _docker_wanted(params):
            try:
                self.client = self.client_factory()
            except ServiceError as exc:
                if params.get("volume") or normalize_selection(params.get("stop_containers"))[0] != "auto":
                    raise
                # a host directory with stop_containers=auto: no reachable Docker, nothing to stop
                self.warnings.append("stop_containers=auto: no container is stopped, Docker is not"
                                     " reachable: %s" % exc.msg)
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
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def _quiesced(self, to_stop, work):
        """Run ``work(quiescer)`` holding the series' run lock, with ``to_stop`` stopped;
        containers restart in any case. A series locked for longer than lock_timeout fails
        (LockTimeout) before anything is stopped."""
        self.lock = SeriesLock(self.location, self.series, "volume_backup", self.params.get("lock_timeout"))
        with self.lock:
            return self._quiesced_locked(to_stop, work)

    def _quiesced_locked(self, to_stop, work):
        stop_timeout = self.params.get("stop_timeout", 30)
        guardian = Guardian(self.client_factory, stop_timeout + 15) if self.client is not None else None
        self.target.guardian = guardian
        quiescer = Quiescer(self.client, to_stop, stop_timeout, guardian, docker_error)
        error, value = None, None
        try:
            quiescer.stop()
            value = work(quiescer)
        except OpsError as exc:
            error = exc
        finally:
            if self.target.dirty:  # a failed restore left neither the old nor the new content
                quiescer.hold("%s is half-restored, its old content is not intact" % self.target.label)
            quiescer.resume()
            if guardian is not None:
                guardian.done()
        return value, error, quiescer

    def _finish(self, result, error, quiescer, what):
        result.update(quiescer.report())
        if self.lock is not None:
            attach(result, self.lock)
        if quiescer.failures or quiescer.left_stopped:
            msg = quiescer.failure_message()
            if error is None:
                msg += "; the %s itself completed" % what
            else:
                msg += "; the %s failed%s: %s" % (what, "" if quiescer.left_stopped else " as well", error.msg)
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
                self.warnings.extend(stats.pop("warnings", []))
                source.update(stats, size_estimate_bytes=size_hint,
                              stopped=[c["name"] for c in quiescer.stopped],
                              downtime_seconds=quiescer.downtime)
                published = session.publish(source=source, tools=_tools(self.client))
                self.warnings.extend(session.warnings)  # stale markers removed, a copy_to that failed (warn)
                return published, stats

        value, error, quiescer = self._quiesced(to_stop, work)
        if self.warnings:  # also those of reading the source
            result["warnings"] = list(self.warnings)
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
                    self._remove_created()
                raise

        if self.verification is not None:  # the outcome recorded under the run lock
            work = self.verification.around(work, manifest, recorded_counts(manifest))
        stats, error, quiescer = self._quiesced(to_stop, work)
        if stats is not None:
            result["warnings"] = result.get("warnings", []) + stats.pop("warnings", [])
            result.update(stats)
            result["raw_bytes"] = manifest.get("raw_bytes")
            result["recorded"] = recorded_counts(manifest)
            if self.target.kind == "volume":
                result["access"] = self.target.used_access
        warning = self.target.access_warning()
        if warning:  # emitted with module.warn(), also with a failure
            result["warnings"] = result.get("warnings", []) + [warning]
        if not result.get("warnings"):
            result.pop("warnings", None)
        return self._finish(result, error, quiescer, "restore")

    def _remove_created(self):
        """Remove the target a failed restore created; once it is gone, nothing is half-restored."""
        self.target.remove()
        try:
            gone = not self.target.load()
        except OpsError:
            gone = False
        if gone:
            self.target.dirty = False

    def run(self):
        if self.params["state"] == "verified":
            return verify(self)
        if self.params["state"] == "restored":
            return self.restore()
        return self.backup()


def run(params, location, check_mode=False):
    return VolumeBackup(params, location, check_mode).run()
