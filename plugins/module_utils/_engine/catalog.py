# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What is stored at a location: series, backup ids, keys and manifests.

Layout at a location::

    <series>/<YYYYmmddTHHMMSSZ>-<8 hex>.<ext>[.zst|.gz]      the artifact
    <series>/<YYYYmmddTHHMMSSZ>-<8 hex>.<name>.<ext>[...]    companion artifacts (e.g. globals)
    <series>/<YYYYmmddTHHMMSSZ>-<8 hex>.manifest.json        written last: the backup exists

A backup exists only once its manifest exists (``session.BackupSession`` writes it last).
``scan`` is one listing grouped by series and backup; ``list_backups`` and ``resolve_backup``
read the manifests; ``update_verification`` records a restore test in one.
"""

from __future__ import annotations

import json
import re
import secrets
from concurrent.futures import ThreadPoolExecutor

from .._errors import ConfigError, IntegrityError, NotFoundError
from .._timeutil import parse_rfc3339, parse_stamp, rfc3339, stamp, utcnow

MANIFEST_FORMAT = "opskit.runbook/backup"
MANIFEST_VERSION = 1
MANIFEST_SUFFIX = "manifest.json"
SERIES_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
ID_RE = re.compile(r"^\d{8}T\d{6}Z-[0-9a-f]{8}$")
KEY_RE = re.compile(r"^(?P<series>[A-Za-z0-9][A-Za-z0-9._-]*)/(?P<id>\d{8}T\d{6}Z-[0-9a-f]{8})\.(?P<suffix>.+)$")


def validate_series(series):
    if not isinstance(series, str) or not SERIES_RE.match(series):
        raise ConfigError("series %r is not valid: use letters, digits, '.', '_' and '-' (max 128,"
                          " starting with a letter or digit)" % (series,))
    return series


def sanitize_series(text):
    """Turn a free text (host-database) into a valid series name."""
    value = re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-._")[:128]
    return value or "backup"


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


def write_manifest(location, manifest):
    data = json.dumps(manifest, indent=2, sort_keys=True).encode("utf-8") + b"\n"
    location.write_bytes(manifest_key(manifest["series"], manifest["id"]), data,
                         content_type="application/json")


def parse_manifest(data, key):
    try:
        manifest = json.loads(data.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise IntegrityError("manifest %s is not valid JSON: %s" % (key, exc)) from exc
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        raise IntegrityError("manifest %s is not an opskit.runbook backup manifest" % key)
    if int(manifest.get("version", 0)) > MANIFEST_VERSION:
        raise IntegrityError("manifest %s has version %s; this collection reads up to %s"
                             % (key, manifest.get("version"), MANIFEST_VERSION))
    return manifest


def read_manifest(location, series, backup_id):
    key = manifest_key(series, backup_id)
    return parse_manifest(location.read_bytes(key), key)


def update_verification(location, manifest, method, result, details=None, now=None):
    """Record the outcome of a restore test in the manifest (rewritten atomically)."""
    updated = dict(manifest)
    updated["verification"] = {"verified_at": rfc3339(now or utcnow()), "method": method,
                               "result": result, "details": details or {}}
    write_manifest(location, updated)
    return updated


def is_verified(manifest):
    return (manifest.get("verification") or {}).get("result") == "passed"


def created_at(manifest):
    return parse_rfc3339(manifest["created_at"])


# --------------------------------------------------------------------- listing

def scan(location, series=None):
    """One listing, grouped: {series: {"manifests": {id: info}, "artifacts": {id: [info]}}}.

    Keys that do not follow the layout are left out (ignored, never deleted).
    """
    prefix = (validate_series(series) + "/") if series else ""
    grouped = {}
    for info in location.list_objects(prefix):
        parsed = parse_key(info.key)
        if parsed is None:
            continue
        name, backup_id, suffix = parsed
        entry = grouped.setdefault(name, {"manifests": {}, "artifacts": {}})
        if suffix == MANIFEST_SUFFIX:
            entry["manifests"][backup_id] = info
        else:
            entry["artifacts"].setdefault(backup_id, []).append(info)
    return grouped


def list_backups(location, series=None, workers=16):
    """Manifests of the published backups, newest first, grouped by series."""
    grouped = scan(location, series)
    if series and series not in grouped:
        return {series: []}
    jobs = [(name, backup_id) for name, entry in grouped.items() for backup_id in entry["manifests"]]

    def load(job):
        return read_manifest(location, *job)

    if len(jobs) > 1 and location.scheme == "s3":
        with ThreadPoolExecutor(max_workers=workers) as pool:
            manifests = list(pool.map(load, jobs))
    else:
        manifests = [load(job) for job in jobs]
    out = {name: [] for name in grouped}
    for manifest in manifests:
        out[manifest["series"]].append(manifest)
    for items in out.values():
        items.sort(key=lambda m: (m["created_at"], m["id"]), reverse=True)
    return out


def resolve_backup(location, series, backup="latest"):
    """The manifest of ``backup`` (an id, or ``latest``) in ``series``."""
    validate_series(series)
    if backup in (None, "", "latest"):
        backups = list_backups(location, series).get(series) or []
        if not backups:
            raise NotFoundError("series %s has no backups at %s" % (series, location.url))
        return backups[0]
    if not ID_RE.match(str(backup)):
        raise ConfigError("backup %r is not a backup id (YYYYmmddTHHMMSSZ-xxxxxxxx) or 'latest'" % (backup,))
    try:
        return read_manifest(location, series, backup)
    except NotFoundError as exc:
        raise NotFoundError("backup %s of series %s not found at %s" % (backup, series, location.url)) from exc


def summarize(manifest, location, now=None):
    """The record modules return for one backup."""
    now = now or utcnow()
    verification = manifest.get("verification") or {}
    return {
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
