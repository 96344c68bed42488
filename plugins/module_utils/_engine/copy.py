# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""copy_to: each new backup copied to a second location once it is published (3-2-1).

``copy_published(source, manifest)`` is called by ``BackupSession.publish`` after the manifest
is written at the primary location. The second location (the storage option ``copy_to``, with
its own endpoint and credentials, opened by ``_storage.options.open_copy_location``) receives:

1. an in-flight marker (``<series>/.inflight/<id>.json``), so its own rotation keeps the
   partial copy;
2. each artifact, streamed (a chunk at a time, never spooled whole): the bytes read from the
   primary are hashed and must match the manifest's sha256 and size, then the copy is read
   back from the second location and hashed again (the check on arrival);
3. the manifest, byte for byte as published (a signature stays valid), last: the copy exists
   once its manifest exists, as at the primary;
4. the Object Lock retention of ``copy_to.object_lock`` on each object (its own days, or
   ``auto`` from ``copy_to.retention``).

A failed copy never touches the primary backup: what was copied is removed again (what Object
Lock keeps stays as orphans, which rotation removes after its grace) and the outcome is returned
as ``{"location", "result": "failed", "error"}``. ``copy_to.on_failure`` says what the module
does then: ``fail`` (default) raises StorageError naming the published backup; ``warn`` adds a
warning and the task succeeds.
"""

from __future__ import annotations

import hashlib
import time

from .._errors import OpsError, StorageError
from .._storage.options import open_copy_location
from .._timeutil import utcnow
from .catalog import created_at, inflight_key, manifest_artifacts, manifest_key, write_inflight, write_manifest
from .lock import this_process
from .protection import protection_for
from .report import backup_report
from .streams import CHUNK, Prefetch, read_chunks

COPY_INFLIGHT_TIMEOUT = 24 * 3600


def copy_target(location):
    """The copy_to location of ``location`` (opened once), or None without copy_to."""
    options = getattr(location, "copy_to_options", None)
    if not options:
        return None
    found = getattr(location, "_copy_target", None)
    if found is None:
        found = open_copy_location(options)
        # a bad object_lock fails here
        protection_for(found).object_lock  # pylint: disable=expression-not-assigned
        location._copy_target = found  # pylint: disable=protected-access
    return found


def check_copy_target(location):
    """Before a backup is written: the copy_to location is writable, and lockable if asked."""
    target = copy_target(location)
    if target is not None:
        if target.url == location.url and getattr(target, "endpoint_url", None) == getattr(location, "endpoint_url", None):
            raise StorageError("copy_to: %s is the location itself; give a second location" % target.url)
        target.check_writable()
        protection_for(target).check_lock_target(target)
    return target


def copy_published(source, manifest, warnings):
    """Copy the published backup ``manifest`` to the copy_to location of ``source``.

    Returns [the outcome] (empty without copy_to). On failure, with ``on_failure: fail``, raises
    StorageError (the primary backup stays published); with ``warn``, appends to ``warnings``.
    """
    target = copy_target(source)
    if target is None:
        return []
    started = time.monotonic()
    outcome = {"location": target.url, "result": "copied", "objects": 0, "copied_bytes": 0, "object_lock": None}
    try:
        _copy(source, target, manifest, outcome)
    except OpsError as exc:
        outcome.update(result="failed", error=exc.msg)
    outcome["duration_seconds"] = round(time.monotonic() - started, 3)
    if outcome["result"] == "failed":
        message = ("backup %s of series %s is published at %s, but its copy to %s failed: %s"
                   % (manifest["id"], manifest["series"], source.url, target.url, outcome["error"]))
        if (source.copy_to_options.get("on_failure") or "fail") == "fail":
            raise StorageError(message, copies=[outcome])
        warnings.append(message)
    return [outcome]


def _copy(source, target, manifest, outcome):
    series, backup_id = manifest["series"], manifest["id"]
    protection = protection_for(target)
    created = created_at(manifest)
    write_inflight(target, series, backup_id, utcnow(), COPY_INFLIGHT_TIMEOUT, this_process())
    written, done = [], False
    try:
        for name, size in manifest_artifacts(manifest):
            key = "%s/%s" % (series, name)
            written.append(key)
            outcome["copied_bytes"] += copy_object(source, target, key, size, _sha256_of(manifest, name))
            outcome["object_lock"] = protection.lock(target, key, created)
            outcome["objects"] += 1
        written.append(manifest_key(series, backup_id))
        write_manifest(target, manifest)
        protection.lock(target, manifest_key(series, backup_id), created)
        outcome["objects"] += 1
        done = True
    finally:
        if not done and written:
            _remove(target, written)
        _remove(target, [inflight_key(series, backup_id)])


def _sha256_of(manifest, name):
    if name == manifest["artifact"]:
        return manifest["sha256"]
    return next(c.get("sha256") for c in manifest.get("companions") or [] if c.get("key") == name)


def copy_object(source, target, key, size, sha256):
    """Stream ``key`` from ``source`` to ``target`` (read-ahead in a second thread); the bytes
    read must match ``sha256`` and ``size``, and so must the copy read back. Returns the size."""
    digest, count = hashlib.sha256(), 0
    writer = target.open_write(key, size_hint=size)
    committed = False
    try:
        with source.open_read(key) as stream:
            chunks = Prefetch(read_chunks(stream, CHUNK), depth=4)
            try:
                for data in chunks:
                    digest.update(data)
                    count += len(data)
                    writer.write(data)
            finally:
                chunks.stop()
        _compare("%s at %s" % (key, source.url), digest.hexdigest(), count, sha256, size)
        writer.commit()
        committed = True
    finally:
        if not committed:
            writer.abort()
    arrived, arrived_size = stored_sha256(target, key)
    _compare("the copy %s" % target.url_for(key), arrived, arrived_size, sha256, size)
    return count


def stored_sha256(location, key):
    """(sha256 hex, size) of the stored bytes of ``key``, read a chunk at a time."""
    digest, count = hashlib.sha256(), 0
    with location.open_read(key) as stream:
        for data in read_chunks(stream, CHUNK):
            digest.update(data)
            count += len(data)
    return digest.hexdigest(), count


def _compare(what, sha, size, expected_sha, expected_size):
    if sha != expected_sha or (expected_size is not None and size != expected_size):
        raise StorageError("%s has sha256 %s (%d bytes), not the manifest's %s (%s bytes)"
                           % (what, sha, size, expected_sha, expected_size))


def _remove(location, keys):
    try:
        location.delete(keys)
    except StorageError:
        pass  # rotation removes orphans after its grace; an expired marker is ignored


def copy_report(location, primary, series=None, max_age=None, summary=False):
    """backup_info's ``copy``: the report of the copy_to location (report.backup_report), with an
    entry for every series of the ``primary`` report (one the copy lacks: no backups, stale when
    ``max_age`` is set). A copy location that cannot be listed gives ``error`` and every series
    stale, never a failure of the listing of the primary."""
    target = copy_target(location)
    if target is None:
        return None
    try:
        report = backup_report(target, None, max_age)
        error = None
    except OpsError as exc:
        report = {"series": {}, "backups": [], "stale_series": [], "anomalies": [], "location": target.url,
                  "checked_at": primary.get("checked_at")}
        error = exc.msg
    wanted = [series] if series else list(primary.get("series") or {})
    report["series"] = {name: entry for name, entry in report["series"].items() if not series or name == series}
    report["backups"] = [] if summary else [b for b in report["backups"] if not series or b["series"] == series]
    for name in wanted:
        if name not in report["series"]:
            report["series"][name] = dict(_MISSING, stale=max_age is not None, **({"max_age": max_age} if max_age else {}))
    report["stale_series"] = sorted(name for name, entry in report["series"].items() if entry.get("stale"))
    report["error"] = error
    return report


_MISSING = {"count": 0, "total_size_bytes": 0, "newest": None, "newest_age_seconds": None, "newest_verified": None,
            "newest_verified_age_seconds": None}
