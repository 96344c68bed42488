# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention of a physical series' WAL archive (``<series>/wal/<timeline>/<file>-<sha256>...``,
written by opskit-wal, see _postgres/wal.py).

The WAL a kept base backup needs is never deleted: everything from the start segment of the
oldest kept base backup on, on every timeline. WAL older than that start is deleted, ``.history``
files never are (a restore follows them across timelines), and a series without a kept base
backup keeps all its WAL (fail closed). ``wal_plan`` is pure; ``wal_listing`` and
``kept_starts`` read the location.
"""

from __future__ import annotations

import re

from .._engine.catalog import read_manifest
from .._errors import StorageError

PHYSICAL_KIND = "postgres-physical"
WAL_KEY_RE = re.compile(r"^[^/]+/wal/(?P<tli>[0-9A-F]{8})/(?P<file>[0-9A-F]{8}(?P<pos>[0-9A-F]{16})"
                        r"(?:\.partial|\.[0-9A-F]{8}\.backup)?|[0-9A-F]{8}\.history)-[0-9a-f]{64}(?:\.[a-z]+)*$")


def wal_listing(location, series):
    """[(key, file name, position or None for .history)] of the series' archived WAL."""
    out = []
    for info in location.list_objects("%s/wal/" % series):
        match = WAL_KEY_RE.match(info.key)
        if match:
            out.append((info.key, match.group("file"), match.group("pos")))
    return out


def kept_starts(location, series, kept_ids):
    """(start positions of the kept base backups, problem or None). A kept manifest that cannot
    be read is a problem: then nothing of the WAL is deleted."""
    starts = []
    for backup_id in kept_ids:
        try:
            manifest = read_manifest(location, series, backup_id)
        except StorageError as exc:
            return starts, "manifest of kept backup %s unreadable (%s): WAL kept" % (backup_id, exc.msg)
        source = manifest.get("source") or {}
        if manifest.get("kind") == PHYSICAL_KIND and isinstance(source.get("start_wal"), str):
            starts.append(source["start_wal"][8:24])
    return starts, None


def wal_plan(listing, starts, problem=None):
    """{"deleted": [keys], "kept": n, "oldest_needed": position or None, "reason": text}."""
    if problem or not starts:
        return {"deleted": [], "kept": len(listing), "oldest_needed": None,
                "reason": problem or "no kept base backup: all WAL kept"}
    oldest = min(starts)
    deleted = [key for key, _name, pos in listing if pos is not None and pos < oldest]
    return {"deleted": deleted, "kept": len(listing) - len(deleted), "oldest_needed": oldest,
            "reason": "WAL before the start of the oldest kept base backup deleted"}


def prune_wal(location, series, kept_ids):
    """The plan for one series (empty when it has no WAL: no manifest is read)."""
    listing = wal_listing(location, series)
    if not listing:
        return None
    starts, problem = kept_starts(location, series, kept_ids)
    return wal_plan(listing, starts, problem)
