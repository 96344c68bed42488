# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info's report: what is stored at a location, per series, with RPO assessment."""

from __future__ import annotations

from .._errors import NotFoundError
from .._timeutil import Duration, rfc3339, utcnow
from .catalog import created_at, is_verified, list_backups, summarize, validate_series


def backup_report(location, series=None, max_age=None, now=None):
    """Return {"series": {...}, "backups": [...], "stale": [...]} for ``location``."""
    now = now or utcnow()
    if series:
        validate_series(series)
    limit = Duration.parse(max_age, "max_age") if max_age else None
    location.check_readable()
    grouped = list_backups(location, series)
    if series and not grouped.get(series):
        raise NotFoundError("series %s has no backups at %s" % (series, location.url))
    report, backups, stale = {}, [], []
    for name in sorted(grouped):
        items = [summarize(m, location, now) for m in grouped[name]]
        backups.extend(items)
        newest = items[0] if items else None
        verified = next((s for s, m in zip(items, grouped[name]) if is_verified(m)), None)
        entry = {
            "count": len(items),
            "total_size_bytes": sum(i["size_bytes"] for i in items),
            "newest": newest,
            "newest_age_seconds": newest["age_seconds"] if newest else None,
            "newest_verified": verified,
            "newest_verified_age_seconds": verified["age_seconds"] if verified else None,
            "stale": False,
        }
        if limit is not None:
            threshold = limit.before(now)
            entry["max_age"] = str(limit)
            entry["stale"] = newest is None or created_at(grouped[name][0]) < threshold
            if entry["stale"]:
                stale.append(name)
        report[name] = entry
    return {"series": report, "backups": backups, "stale_series": stale,
            "location": location.url, "checked_at": rfc3339(now)}
