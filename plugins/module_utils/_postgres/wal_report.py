# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info's view of a physical series: its WAL archive (``wal`` of the series entry).

For every series whose newest backup is a base backup (kind postgres-physical): the last
archived segment and when it was archived, the gaps of each timeline, the RPO and the age of
the newest base backup. The RPO is now minus the archive time of the newest segment: commits
after its last record are not in the archive yet, so it is the least that would be lost now.
"""

from __future__ import annotations

from .._timeutil import rfc3339, utcnow
from .physical import KIND
from .wal import SEGMENT_RE, gaps, wal_index


def series_wal(location, name, entry, now):
    index = wal_index(location, name)
    segments = [e for files in index.values() for e in files.values() if SEGMENT_RE.match(e["file"])]
    last = max(segments, key=lambda e: e["file"][8:] + e["file"][:8]) if segments else None
    found = {tli: gaps(files) for tli, files in sorted(index.items())}
    newest = entry.get("newest") or {}
    return {
        "timelines": sorted(index),
        "segments": len(segments),
        "last_segment": last["file"] if last else None,
        "last_archived_at": rfc3339(last["archived_at"]) if last else None,
        "gaps": [dict(g, timeline=tli) for tli, items in found.items() for g in items],
        "rpo_seconds": int((now - last["archived_at"]).total_seconds()) if last else None,
        "newest_base_backup_age_seconds": newest.get("age_seconds"),
        "history_files": sorted(e["file"] for files in index.values() for e in files.values()
                                if e["file"].endswith(".history")),
    }


def add_wal_report(location, report, now=None):
    """Add ``wal`` to the series entries of a backup_report whose newest backup is physical."""
    now = now or utcnow()
    for name, entry in report.get("series", {}).items():
        if (entry.get("newest") or {}).get("kind") == KIND:
            entry["wal"] = series_wal(location, name, entry, now)
    return report
