# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info's report: what is stored at a location, per series, with RPO assessment.

A manifest that cannot be read (corrupt, a newer version, a renamed series directory) and a
backup dated in the future (beyond catalog.FUTURE_SKEW: a clock ahead) are anomalies: reported
in ``anomalies``, never the newest backup of a series and never fresh.
"""

from __future__ import annotations

from .._errors import NotFoundError
from .._timeutil import Duration, rfc3339, utcnow
from .catalog import FUTURE_SKEW, created_at, is_future, is_verified, list_backups, summarize, validate_series


def _future_anomaly(manifest, now):
    return {"series": manifest["series"], "id": manifest["id"], "key": manifest["artifact"],
            "reason": "dated %s, more than %d minutes in the future (clock skew on the host that made it?)"
            % (manifest["created_at"], FUTURE_SKEW.total_seconds() // 60)}


def _series_entry(location, manifests, now, limit):
    items = [summarize(m, location, now) for m in manifests]
    newest = items[0] if items else None
    verified = next((s for s, m in zip(items, manifests) if is_verified(m)), None)
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
        entry["max_age"] = str(limit)
        entry["stale"] = newest is None or created_at(manifests[0]) < limit.before(now)
    return items, entry


def backup_report(location, series=None, max_age=None, now=None):
    """Return {"series": {...}, "backups": [...], "stale_series": [...], "anomalies": [...]}."""
    now = now or utcnow()
    if series:
        validate_series(series)
    limit = Duration.parse(max_age, "max_age") if max_age else None
    location.check_readable()
    anomalies = []
    grouped = list_backups(location, series, anomalies=anomalies)
    if series and not grouped.get(series) and not anomalies:
        raise NotFoundError("series %s has no backups at %s" % (series, location.url))
    report, backups, stale = {}, [], []
    for name in sorted(grouped):
        future = [m for m in grouped[name] if is_future(m, now)]
        anomalies.extend(_future_anomaly(m, now) for m in future)
        items, report[name] = _series_entry(location, [m for m in grouped[name] if m not in future], now, limit)
        backups.extend(items)
        if report[name]["stale"]:
            stale.append(name)
    for name in {a["series"] for a in anomalies} - set(report):
        report[name] = _series_entry(location, [], now, limit)[1]
        if limit is not None:
            stale.append(name)
    anomalies.sort(key=lambda a: (a["series"], a["id"]))
    return {"series": report, "backups": backups, "stale_series": sorted(stale), "anomalies": anomalies,
            "location": location.url, "checked_at": rfc3339(now)}
