# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Writing one backup: its artifacts first, its manifest last (see catalog for the layout)."""

from __future__ import annotations

import time

from .._errors import IntegrityError, OpsError, StorageError
from .._timeutil import utcnow
from .artifacts import ArtifactWriter
from .catalog import (DEFAULT_INFLIGHT_TIMEOUT, inflight, inflight_key, manifest_key, missing_artifacts, new_backup_id,
                      new_manifest, validate_series, write_inflight, write_manifest)
from .compression import COMPRESSION_EXT, validate_compression
from .copy import check_copy_target, copy_published
from .lock import holder_is_dead, this_process
from .protection import AGE_SUFFIX, protection_for
from .streams import CHUNK


class BackupSession:
    """One backup: artifacts written first, the manifest published last.

    Use as a context manager. Leaving the block with an exception aborts open writers and
    deletes artifacts already written, so a failed backup never looks like a backup.
    Before its first artifact the session writes an in-flight marker (``catalog.inflight``)
    that rotation respects; publishing or aborting removes it. Before writing its own, it removes
    the markers of the series that a killed backup left (expired, or their holder process gone on
    this machine): ``removed_markers`` lists them, ``warnings`` says so. ``publish`` checks that every
    artifact is still there with its size before it writes the manifest::

        with BackupSession(loc, "db1", "postgres") as session:
            with session.artifact("dump") as out:
                out.copy_from(pipe)
            manifest = session.publish(source={...}, tools={...})
    """

    def __init__(self, location, series, kind, compression="zstd", level=None, threads=-1,
                 size_hint=None, now=None, inflight_timeout=DEFAULT_INFLIGHT_TIMEOUT):
        validate_series(series)
        validate_compression(compression, level)
        self.location, self.series, self.kind = location, series, kind
        self.protection = protection_for(location)  # bad recipients or signing key: fail here
        self.compression, self.level, self.threads = compression, level, threads
        self.size_hint = size_hint
        self.created = now or utcnow()
        self.started = time.monotonic()
        self.id = new_backup_id(self.created)
        self.main = None
        self.companions = []
        self._open = []
        self._written = []
        self.published = None
        self.inflight_timeout = inflight_timeout
        self.marker = None
        self.removed_markers = []
        self.manifest_tried = False
        self.locked = None  # the Object Lock retention of the artifacts (object_lock)
        self.copies = []  # the outcome of copy_to (copy.copy_published)
        self.warnings = []

    def key(self, ext, name=None):
        parts = [self.id] + ([name] if name else []) + [ext]
        suffix = COMPRESSION_EXT[self.compression] + (AGE_SUFFIX if self.protection.encrypting else "")
        return "%s/%s%s" % (self.series, ".".join(parts), suffix)

    def artifact(self, ext, name=None, content_type=None):
        """A writer for the main artifact (name=None) or a named companion."""
        if name is None and self.main is not None:
            raise OpsError("a backup has one main artifact")
        key = self.key(ext, name)
        if self.marker is None:
            self.protection.check_lock_target(self.location)  # before anything is written
            check_copy_target(self.location)  # copy_to: writable (and lockable) before anything is written
            self._remove_stale_markers()
            write_inflight(self.location, self.series, self.id, utcnow(), self.inflight_timeout, this_process())
            self.marker = inflight_key(self.series, self.id)
        raw = self.location.open_write(key, size_hint=self.size_hint if name is None else None,
                                       content_type=content_type)
        writer = _ManagedWriter(self, ArtifactWriter(raw, key, self.compression, self.level, self.threads,
                                                     self.protection.recipients), name)
        self._open.append(writer)
        return writer

    def _closed(self, writer, record):
        self._open.remove(writer)
        self._written.append(record["key"])
        self.locked = self.protection.lock(self.location, record["key"], self.created)
        if writer.name is None:
            self.main = record
        else:
            record["name"] = writer.name
            self.companions.append(record)

    def publish(self, source=None, tools=None, extra=None):
        """Write the manifest; then copy the backup to copy_to, if set. Returns the manifest, with
        ``copies`` (not stored: the outcome of each copy) when there is a copy_to."""
        if self.main is None:
            raise OpsError("no artifact was written")
        records = [self.main] + self.companions
        problems = missing_artifacts(self.location, self.series,
                                     [(r["key"].split("/", 1)[1], r["size_bytes"]) for r in records])
        if problems:
            raise IntegrityError("backup %s of series %s not published: %s (deleted meanwhile, by a rotation"
                                 " with a short orphan_grace?)" % (self.id, self.series, "; ".join(problems)))
        manifest = new_manifest(self.series, self.id, self.kind, self.created, self.main,
                                self.companions, source, tools, time.monotonic() - self.started,
                                encryption=getattr(self.location, "sse", None))
        manifest["encryption"].update(self.protection.encryption_fields())
        if self.locked:
            manifest["object_lock"] = self.locked
        if extra:
            manifest.update(extra)
        manifest = self.protection.sign(manifest)  # last: the signature covers everything else
        self.manifest_tried = True
        write_manifest(self.location, manifest)
        self.protection.lock(self.location, manifest_key(self.series, self.id), self.created)
        self.published = manifest
        self._remove_marker()
        self.copies = copy_published(self.location, manifest, self.warnings)  # fail: raises, still published
        return dict(manifest, copies=self.copies) if self.copies else manifest

    def abort(self):
        """Abort open writers; remove the manifest if its write was tried (an ambiguous write may
        have stored it), then the artifacts, then the in-flight marker. If the manifest cannot be
        removed, the artifacts are kept: never a manifest without its artifacts."""
        try:
            for writer in list(self._open):
                writer.inner.abort()
            self._open = []
            if self.published is None and self._written:
                if self.manifest_tried and not self._delete([manifest_key(self.series, self.id)]):
                    self.warnings.append("backup %s: its manifest could not be removed after a failed publish;"
                                         " its artifacts are kept" % self.id)
                elif not self._delete(self._written):
                    self.warnings.append("backup %s: artifacts of the failed backup could not all be removed;"
                                         " rotation removes them as orphans" % self.id)
                self._written = []
        finally:
            self._remove_marker()

    def _delete(self, keys):
        try:
            return not self.location.delete(keys)
        except StorageError:
            return False

    def _remove_stale_markers(self):
        """Markers of this series left by killed backups (never fails the backup)."""
        try:
            stale = inflight(self.location, self.series, expired=True, dead=holder_is_dead)
        except StorageError as exc:
            self.warnings.append("in-flight markers of series %s could not be listed: %s" % (self.series, exc.msg))
            return
        for marker in stale:
            if self._delete([marker["key"]]):
                self.removed_markers.append(marker["key"])
        if self.removed_markers:
            self.warnings.append("removed %d in-flight marker(s) left by interrupted backups (%s): %s; rotation"
                                 " removes their partial artifacts after orphan_grace"
                                 % (len(self.removed_markers), ", ".join(sorted({m["reason"] for m in stale})),
                                    ", ".join(self.removed_markers)))

    def _remove_marker(self):
        if self.marker is not None and not self._delete([self.marker]):
            self.warnings.append("in-flight marker %s could not be removed; it expires by itself" % self.marker)
        self.marker = None

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None or self.published is None:
            self.abort()
        return False


class _ManagedWriter:
    def __init__(self, session, inner, name):
        self.session, self.inner, self.name = session, inner, name
        self.record = None

    def write(self, data):
        return self.inner.write(data)

    def copy_from(self, stream, chunk=CHUNK):
        self.inner.copy_from(stream, chunk)

    def close(self):
        if self.record is None:
            self.record = self.inner.close()
            self.session._closed(self, self.record)
        return self.record

    def abort(self):
        self.inner.abort()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.inner.abort()
        return False
