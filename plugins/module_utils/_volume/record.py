# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup state=verified: a volume or directory backup restored into a scratch target,
what was restored compared with what the backup recorded, the outcome recorded in its manifest.

The record goes through the engine's record API, as pg_backup state=verified writes it
(``catalog.update_verification``): the manifest is read again and written conditionally
(If-Match on S3, compare-and-rename on file://), so a backup that rotation deleted meanwhile is
never brought back (NotFoundError, nothing written). It is written inside the restore, under the
run lock of the series that the restore holds, so rotation never deletes the backup between the
restore and its record. ``passed`` and ``failed`` are verdicts on the backup (its archive, the
counts it recorded); ``error`` (Docker, the store, the scratch target) says nothing about it and
keeps an earlier verdict (as ``last_error``).
"""

from __future__ import annotations

import time

from .._engine.catalog import summarize, update_verification
from .._errors import ConfigError, IntegrityError, NotFoundError, OpsError

METHOD = "restore"
FORCE_HINT = "set force=true to delete its content first"   # the end of the restore's refusal of a non-empty target


def restored_counts(stats):
    """(files, file_bytes, where they were counted) of a restore's result: on disk when the
    restore wrote the target directly, else in the archive the Engine API was given."""
    if isinstance(stats.get("on_disk"), dict):
        return stats["on_disk"].get("files", 0), stats["on_disk"].get("file_bytes"), "on disk"
    return stats.get("files", 0), stats.get("file_bytes"), "in the archive"


def judge(stats, recorded, min_files):
    """(why it failed, or None when it passed; the details to record) of a restore's ``stats``
    against the counts the backup ``recorded``: the files and bytes restored are those recorded
    (each when recorded; backups made before file_bytes was recorded compare the files only),
    and at least ``min_files`` files."""
    files, file_bytes, where = restored_counts(stats)
    details = {"files": files, "file_bytes": file_bytes, "counted": where, "recorded": dict(recorded),
               "min_files": min_files}
    if ("files" in recorded and files != recorded["files"]) or \
            ("file_bytes" in recorded and file_bytes != recorded["file_bytes"]):
        return ("restored %s files (%s bytes), the backup recorded %s files (%s bytes)"
                % (files, file_bytes, recorded.get("files", "?"), recorded.get("file_bytes", "?"))), details
    if files < min_files:
        return "restored %s files, expected at least %s" % (files, min_files), details
    return None, details


def outcome_of(exc):
    """``failed`` when the restore says the backup is bad (a corrupt, refused or missing
    artifact), ``error`` when the restore itself could not run (Docker, the store, the target)."""
    return "failed" if isinstance(exc, (IntegrityError, NotFoundError)) else "error"


class Verification:
    """The verification of one restore: ``around(work, ...)`` wraps the restore's work (run
    under the series' run lock) so that the outcome is recorded before the lock is released."""

    def __init__(self, location, min_files):
        if isinstance(min_files, bool) or not isinstance(min_files, int) or min_files < 0:
            raise ConfigError("min_files: %r is not valid: use a count of 0 or more" % (min_files,))
        self.location, self.min_files = location, min_files
        self.manifest = None    # the manifest with its new record, once written
        self.error = None       # why the restored content does not match the backup

    def around(self, work, manifest, recorded):
        def verified(quiescer):
            started = time.monotonic()
            try:
                stats = work(quiescer)
            except OpsError as exc:
                details = {"error": exc.msg, "duration_seconds": round(time.monotonic() - started, 3)}
                try:
                    self._write(manifest, outcome_of(exc), details)
                except OpsError as record_exc:
                    exc.msg = "%s; the verification is not recorded: %s" % (exc.msg, record_exc.msg)
                raise
            self.error, details = judge(stats, recorded, self.min_files)
            details["duration_seconds"] = round(time.monotonic() - started, 3)
            if self.error:
                details["error"] = self.error
            self._write(manifest, "failed" if self.error else "passed", details)
            return stats
        return verified

    def _write(self, manifest, outcome, details):
        self.manifest = update_verification(self.location, manifest, METHOD, outcome, details)

    def attach(self, result):
        """The backup with its new record and the record itself, in a module result."""
        if self.manifest is not None:
            result["backup"] = summarize(self.manifest, self.location)
            result["verification"] = self.manifest["verification"]
        return result


def verify(backup):
    """volume_backup state=verified: ``backup`` (a VolumeBackup) restores into its target, which
    must be empty or absent (a drill's scratch volume or directory), and the outcome is recorded
    in the backup's manifest. A restored content that differs from the recorded counts fails."""
    params = backup.params
    if params.get("force"):
        raise ConfigError("state=verified restores into an empty or new scratch target: force=true is not allowed")
    verification = Verification(backup.location, params.get("min_files", 1))
    backup.verification = verification
    try:
        result = backup.restore()
    except OpsError as exc:
        verification.attach(exc.result)
        if isinstance(exc, ConfigError) and exc.msg.endswith(FORCE_HINT):
            exc.msg = exc.msg[:-len(FORCE_HINT)] + "state=verified restores only into an empty or new scratch target"
        raise
    if backup.check_mode:
        result["verification"] = {"result": "unverified"}
        return result
    verification.attach(result)
    backup_id = result["backup"]["id"]
    if verification.error:
        raise OpsError("verification of backup %s failed: %s" % (backup_id, verification.error), **result)
    result["msg"] = "backup %s verified: restored into %s, the files and bytes it recorded" % (
        backup_id, backup.target.label)
    return result
