# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is stored at a location: series, backup ids, keys and manifests.

Layout at a location::

    <series>/<YYYYmmddTHHMMSSZ>-<8 hex>.<ext>[.zst|.gz]      the artifact
    <series>/<YYYYmmddTHHMMSSZ>-<8 hex>.<name>.<ext>[...]    companion artifacts (e.g. globals)
    <series>/<YYYYmmddTHHMMSSZ>-<8 hex>.manifest.json        written last: the backup exists
    <series>/.inflight/<YYYYmmddTHHMMSSZ>-<8 hex>.json       while a backup is being written

A backup exists only once its manifest exists (``session.BackupSession`` writes it last).
``scan`` is one listing grouped by series and backup; ``list_backups`` and ``resolve_backup``
read the manifests; ``update_verification`` records a restore test in one; ``inflight`` lists
the markers of backups being written (never part of ``scan``).

A backup dated more than FUTURE_SKEW after now (a clock ahead on the host that made it) is an
anomaly: it is never ``latest`` and never counts as fresh.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from .._errors import ConfigError, IntegrityError, NotFoundError, StorageError
from .._storage.base import ChangedError
from .._timeutil import parse_rfc3339, parse_stamp, rfc3339, stamp, utcnow
from .protection import protection_for, protection_summary, relock

MANIFEST_FORMAT = "opskit.runbook/backup"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = "manifest.json"
MANIFEST_FIELDS = (("series", str), ("id", str), ("created_at", str), ("artifact", str),
                   ("size_bytes", int), ("sha256", str))
VERIFICATION_RESULTS = ("passed", "failed", "error")
FUTURE_SKEW = datetime.timedelta(minutes=5)
INFLIGHT_DIR = ".inflight"
DEFAULT_INFLIGHT_TIMEOUT = 24 * 3600
SERIES_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
KEY_RE = re.compile(r"^(?P<series>[A-Za-z0-9][A-Za-z0-9._-]*)/(?P<id>\d{8}T\d{6}Z-[0-9a-f]{8})\.(?P<suffix>.+)$")


def validate_series(series):
    if not isinstance(series, str) or not SERIES_RE.fullmatch(series):
        raise ConfigError("series %r is not valid: use letters, digits, '.', '_' and '-' (max 128,"
                          " starting with a letter or digit)" % (series,))
    return series


def sanitize_series(text):
    """Turn a free text (host-database) into a valid series name, distinct texts into distinct names.

    A text that is a valid series name already is returned as it is. Any other text is cleaned
    (runs of other characters become '-') and gets the first 8 hex digits of the sha256 of the
    original text appended: ``app db``, ``app-db`` and ``app/db`` are three series
    (``app-db-<hash>``, ``app-db``, ``app-db-<hash>``), never one.
    """
    text = str(text)
    if SERIES_RE.fullmatch(text):
        return text
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("-._")[:119].rstrip("-._")
    digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return "%s-%s" % (value or "backup", digest)


def new_backup_id(now):
    return "%s-%s" % (stamp(now), secrets.token_hex(4))


def backup_time(backup_id):
    return parse_stamp(backup_id.split("-", 1)[0])


def parse_key(key):
    """Split ``series/id.suffix`` into (series, id, suffix) or None for foreign keys."""
    match = KEY_RE.match(key)
    if not match:
        return None
    return match.group("series"), match.group("id"), match.group("suffix")


# ------------------------------------------------------------------- manifests

def new_manifest(series, backup_id, kind, created, main, companions, source, tools, duration,
                 encryption=None):
    return {
        "format": MANIFEST_FORMAT,
        "version": MANIFEST_VERSION,
        "series": series,
        "id": backup_id,
        "kind": kind,
        "created_at": rfc3339(created),
        "completed_at": rfc3339(utcnow()),
        "duration_seconds": round(duration, 3),
        "artifact": main["key"].rsplit("/", 1)[-1],
        "size_bytes": main["size_bytes"],
        "raw_bytes": main["raw_bytes"],
        "sha256": main["sha256"],
        "compression": main["compression"],
        "encryption": {"at_rest": encryption or "none", "client_side": "none"},
        "companions": [dict(c, key=c["key"].rsplit("/", 1)[-1]) for c in companions],
        "source": source or {},
        "tools": tools or {},
        "verification": {"verified_at": None, "method": None, "result": "unverified", "details": {}},
    }


def manifest_key(series, backup_id):
    return "%s/%s.%s" % (series, backup_id, MANIFEST_SUFFIX)


def _manifest_bytes(manifest):
    return json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"


def write_manifest(location, manifest):
    location.write_bytes(manifest_key(manifest["series"], manifest["id"]), _manifest_bytes(manifest),
                         content_type="application/json")


def parse_manifest(data, key):
    """The manifest stored at ``key``; IntegrityError for anything that is not one we can read."""
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError("manifest %s is not valid JSON: %s" % (key, exc)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError("manifest %s is not an opskit.runbook backup manifest" % key)
    version = manifest.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise IntegrityError("manifest %s has version %r, not an integer" % (key, version))
    if version > MANIFEST_VERSION:
        raise IntegrityError("manifest %s has version %s; this collection reads up to %s"
                             % (key, version, MANIFEST_VERSION))
    for field, kind in MANIFEST_FIELDS:
        if not isinstance(manifest.get(field), kind):
            raise IntegrityError("manifest %s: field %s is missing or not a %s" % (key, field, kind.__name__))
    try:
        created_at(manifest)
    except ValueError as exc:
        raise IntegrityError("manifest %s: created_at %r is not an RFC 3339 time" % (key, manifest["created_at"])) from exc
    return manifest


def read_manifest(location, series, backup_id):
    """The manifest of ``backup_id``; IntegrityError when it names another series or id (a
    renamed or copied directory)."""
    key = manifest_key(series, backup_id)
    return _owned(parse_manifest(location.read_bytes(key), key), series, backup_id, key)


def _owned(manifest, series, backup_id, key):
    if (manifest["series"], manifest["id"]) != (series, backup_id):
        raise IntegrityError("manifest %s describes backup %s of series %s (a renamed or copied series?)"
                             % (key, manifest["id"], manifest["series"]))
    return manifest


# --------------------------------------------------------------- verification

def _with_verification(manifest, method, result, details, now):
    updated = dict(manifest)
    record = {"verified_at": rfc3339(now or utcnow()), "method": method, "result": result,
              "details": details or {}}
    previous = manifest.get("verification") or {}
    if result == "error" and previous.get("result") in ("passed", "failed"):
        # an infrastructure problem says nothing about the backup: keep the earlier verdict
        record = dict(previous, last_error={"at": record["verified_at"], "method": method,
                                            "details": details or {}})
    updated["verification"] = record
    return updated


def missing_artifacts(location, series, records):
    """The problems of ``records`` ([(key relative to the series, size)]): gone or resized."""
    problems = []
    for name, size in records:
        info = location.head("%s/%s" % (series, name))
        if info is None:
            problems.append("%s/%s is missing" % (series, name))
        elif size is not None and info.size != size:
            problems.append("%s/%s has %d bytes, not %d" % (series, name, info.size, size))
    return problems


def manifest_artifacts(manifest):
    """[(key relative to the series, stored size)] of every artifact of a backup."""
    return [(manifest["artifact"], manifest["size_bytes"])] + [
        (c["key"], c.get("size_bytes")) for c in manifest.get("companions") or []]


def update_verification(location, manifest, method, result, details=None, now=None):
    """Record the outcome of a restore test in the manifest, conditionally.

    ``result``: ``passed`` and ``failed`` are verdicts on the backup; ``error`` is an
    infrastructure problem (connection refused, CREATE DATABASE denied, a full disk) that says
    nothing about it: over an earlier verdict it is kept as ``last_error`` and the verdict stays.
    The manifest is read again first; if it or any artifact is gone (rotation deleted the backup
    meanwhile), NotFoundError and nothing is written. A backup that recorded an Object Lock
    retention gets it on the manifest version written here too (protection.relock). The write is conditional (If-Match on the
    ETag on S3, compare-and-rename on file://), so a deleted backup is never brought back.
    """
    if result not in VERIFICATION_RESULTS:
        raise ConfigError("verification result %r is not one of %s" % (result, ", ".join(VERIFICATION_RESULTS)))
    series, backup_id = manifest["series"], manifest["id"]
    key = manifest_key(series, backup_id)
    gone = "backup %s of series %s was deleted meanwhile: its verification is not recorded" % (backup_id, series)
    for _attempt in range(3):
        try:
            data, token = location.read_versioned(key)
        except NotFoundError as exc:
            raise NotFoundError(gone) from exc
        current = _owned(parse_manifest(data, key), series, backup_id, key)
        if missing_artifacts(location, series, manifest_artifacts(current)):
            raise NotFoundError(gone)
        updated = _with_verification(current, method, result, details, now)
        payload = _manifest_bytes(updated)
        try:
            location.replace_bytes(key, payload, token, content_type="application/json")
            relock(location, key, current.get("object_lock"))  # the new version is retained as the first
            return updated
        except NotFoundError as exc:
            raise NotFoundError(gone) from exc
        except ChangedError:
            if _stored_is(location, key, payload, gone):  # our own write, its response lost
                return updated
    raise StorageError("manifest %s keeps changing: verification not recorded" % key)


def _stored_is(location, key, payload, gone):
    try:
        return location.read_versioned(key)[0] == payload
    except NotFoundError as exc:
        raise NotFoundError(gone) from exc


def is_verified(manifest):
    return (manifest.get("verification") or {}).get("result") == "passed"


def created_at(manifest):
    return parse_rfc3339(manifest["created_at"])


# --------------------------------------------------------------------- listing

def scan(location, series=None, markers=None):
    """One listing, grouped: {series: {"manifests": {id: info}, "artifacts": {id: [info]}}}.

    Keys that do not follow the layout are left out (ignored, never deleted). ``markers``, a
    list, receives the ObjectInfo of the in-flight markers in the listing (S3 lists them, file://
    hides them), for ``inflight(..., infos=markers)``.
    """
    prefix = (validate_series(series) + "/") if series else ""
    grouped = {}
    for info in location.list_objects(prefix):
        parsed = parse_key(info.key)
        if parsed is None:
            if markers is not None and _marker_id(info.key):
                markers.append(info)
            continue
        name, backup_id, suffix = parsed
        entry = grouped.setdefault(name, {"manifests": {}, "artifacts": {}})
        if suffix == MANIFEST_SUFFIX:
            entry["manifests"][backup_id] = info
        else:
            entry["artifacts"].setdefault(backup_id, []).append(info)
    return grouped


def list_backups(location, series=None, workers=16, anomalies=None):
    """Manifests of the published backups, newest first, grouped by series.

    A manifest that cannot be read or does not belong where it is stored raises, unless
    ``anomalies`` is a list: then it is left out and {"series", "id", "key", "reason"} is appended.
    """
    grouped = scan(location, series)
    if series and series not in grouped:
        return {series: []}
    jobs = [(name, backup_id) for name, entry in grouped.items() for backup_id in entry["manifests"]]

    def load(job):
        try:
            return read_manifest(location, *job)
        except StorageError as exc:
            if anomalies is None:
                raise
            if type(exc) is NotFoundError:  # pylint: disable=unidiomatic-typecheck
                return {}  # deleted since the listing: no longer a backup
            return {"anomaly": {"series": job[0], "id": job[1], "key": manifest_key(*job), "reason": exc.msg}}

    if len(jobs) > 1 and location.scheme == "s3":
        with ThreadPoolExecutor(max_workers=workers) as pool:
            manifests = list(pool.map(load, jobs))
    else:
        manifests = [load(job) for job in jobs]
    out = {name: [] for name in grouped}
    for manifest in manifests:
        if "anomaly" in manifest:
            anomalies.append(manifest["anomaly"])
        elif manifest:
            out[manifest["series"]].append(manifest)
    for items in out.values():
        items.sort(key=lambda m: (m["created_at"], m["id"]), reverse=True)
    return out


def is_future(manifest, now=None):
    """True when the backup is dated more than FUTURE_SKEW after ``now`` (clock skew)."""
    return created_at(manifest) > (now or utcnow()) + FUTURE_SKEW


def resolve_backup(location, series, backup="latest", now=None):
    """The manifest of ``backup`` (an id, or ``latest``) in ``series``, admitted for a restore.

    ``latest`` is the newest backup not dated in the future (see FUTURE_SKEW). With
    ``trusted_signing_keys`` a backup not signed by one of them is refused (IntegrityError
    naming series and id, even when it is ``latest``: a planted backup is never skipped
    silently); an encrypted backup that the identities given cannot open is refused
    (ConfigError). Both happen before the caller touches any target.
    """
    protection = protection_for(location)  # bad keys: refused before the listing
    manifest = _resolve(location, series, backup, now)
    protection.admit(location, manifest)
    return manifest


def _resolve(location, series, backup, now):
    validate_series(series)
    if backup in (None, "", "latest"):
        backups = list_backups(location, series).get(series) or []
        if not backups:
            raise NotFoundError("series %s has no backups at %s" % (series, location.url))
        current = [m for m in backups if not is_future(m, now)]
        if not current:
            raise NotFoundError("series %s at %s has only backups dated in the future (newest %s): check the"
                                " clocks, or name the backup by id" % (series, location.url, backups[0]["created_at"]))
        return current[0]
    if not ID_RE.match(str(backup)):
        raise ConfigError("backup %r is not a backup id (YYYYmmddTHHMMSSZ-xxxxxxxx) or 'latest'" % (backup,))
    try:
        return read_manifest(location, series, backup)
    except NotFoundError as exc:
        raise NotFoundError("backup %s of series %s not found at %s" % (backup, series, location.url)) from exc


# ------------------------------------------------------------ in-flight markers

def inflight_key(series, backup_id):
    return "%s/%s/%s.json" % (series, INFLIGHT_DIR, backup_id)


def write_inflight(location, series, backup_id, started, timeout=DEFAULT_INFLIGHT_TIMEOUT, holder=None):
    """``holder`` (host, pid, boot id, PID namespace, process start; see lock.holder_is_dead)
    lets a later run on the same machine tell a killed writer's marker before it expires."""
    marker = {"format": MANIFEST_FORMAT + "-inflight", "series": series, "id": backup_id,
              "started_at": rfc3339(started),
              "expires_at": rfc3339(started + datetime.timedelta(seconds=timeout))}
    if holder:
        marker["holder"] = holder
    location.write_bytes(inflight_key(series, backup_id), _manifest_bytes(marker), content_type="application/json")


def _marker_id(key):
    """The backup id of an in-flight marker's key ``<series>/.inflight/<id>.json``, or None."""
    parts = key.split("/")
    if len(parts) != 3 or parts[1] != INFLIGHT_DIR or not parts[2].endswith(".json"):
        return None
    backup_id = parts[2][:-len(".json")]
    return backup_id if ID_RE.match(backup_id) else None


def inflight(location, series=None, now=None, expired=False, dead=None, infos=None):
    """The live in-flight markers: backups being written now, which rotation must not touch.

    ``BackupSession`` writes ``<series>/.inflight/<id>.json`` before its first artifact and
    removes it once the manifest is published or the backup is aborted. A killed backup leaves
    its marker, which stays live until its ``expires_at`` (start + the session's timeout,
    24 hours by default). ``scan()`` never returns markers.

    Returns [{"series", "id", "key", "started_at", "expires_at"}] (datetimes, UTC), live
    markers only (expires_at > now), for one series or every series. Every artifact key
    ``<series>/<id>.*``, partial file and multipart upload of a listed (series, id) belongs to a
    backup in progress: keep it. An unreadable marker is returned with the listing time as its
    start and expires_at None (treat it as live, fail closed).

    ``expired=True`` returns the expired markers instead (left by killed backups): their keys
    may be deleted with ``location.delete``. ``dead(holder)``, when given, also counts a marker
    whose holder is known to be gone (lock.holder_is_dead) as expired; the marker's ``reason``
    says which ("expired" or "holder gone"). ``infos`` is a listing that holds the markers
    already (``scan(..., markers=)``); without it the markers are listed here.
    """
    now = now or utcnow()
    prefix = "%s/%s/" % (validate_series(series), INFLIGHT_DIR) if series else ""
    out = []
    for info in location.list_objects(prefix, hidden=True) if infos is None else infos:
        backup_id = _marker_id(info.key)
        if not backup_id or not info.key.startswith(prefix):
            continue
        marker = _read_marker(location, info, backup_id)
        if marker is None:
            continue  # finished since the listing
        live = marker["expires_at"] is None or marker["expires_at"] > now
        marker["reason"] = None if live else "expired"
        if live and marker["expires_at"] is not None and dead is not None \
                and isinstance(marker["holder"], dict) and dead(marker["holder"]):
            live, marker["reason"] = False, "holder gone"
        if live != expired:
            out.append(marker)
    return out


def _read_marker(location, info, backup_id):
    """One marker as inflight() returns it, None when it is gone; unreadable: no expiry."""
    marker = {"series": info.key.split("/")[0], "id": backup_id, "key": info.key, "started_at": info.modified,
              "expires_at": None, "holder": None, "modified": info.modified, "size_bytes": info.size}
    try:
        data = json.loads(location.read_bytes(info.key).decode("utf-8"))
        marker.update(started_at=parse_rfc3339(data["started_at"]), expires_at=parse_rfc3339(data["expires_at"]),
                      holder=data.get("holder"))
    except NotFoundError:
        return None
    except (StorageError, ValueError, KeyError, TypeError, AttributeError):
        pass
    return marker


def summarize(manifest, location, now=None):
    """The record modules return for one backup."""
    now = now or utcnow()
    verification = manifest.get("verification") or {}
    record = {
        "id": manifest["id"],
        "series": manifest["series"],
        "kind": manifest.get("kind"),
        "created_at": manifest["created_at"],
        "completed_at": manifest.get("completed_at"),
        "age_seconds": int((now - created_at(manifest)).total_seconds()),
        "size_bytes": manifest["size_bytes"],
        "raw_bytes": manifest.get("raw_bytes"),
        "sha256": manifest["sha256"],
        "compression": manifest.get("compression"),
        "url": location.url_for("%s/%s" % (manifest["series"], manifest["artifact"])),
        "manifest_url": location.url_for(manifest_key(manifest["series"], manifest["id"])),
        "verification": verification.get("result", "unverified"),
        "verified_at": verification.get("verified_at"),
    }
    record.update(protection_summary(location, manifest))
    if manifest.get("copies"):  # the outcome of copy_to, on a manifest just published (never stored)
        record["copies"] = manifest["copies"]
    return record
