# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters that read the kept JSON reports back: the weekly review of the daily runs, the backup
trends per series against the earlier weekly reports, and the monthly capacity figures (disk
growth, database sizes).

Every filter takes the clock as an argument (``now``): the result depends on the reports and on
that instant only, never on the machine's clock.

Documentation: the sidecar files here, one per filter (parse_reports.yml, report_review.yml,
backup_trends.yml, capacity_figures.yml).
"""

from __future__ import annotations

import datetime
import json

from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.module_utils._timeutil import parse_rfc3339, rfc3339

DAY = datetime.timedelta(days=1)
STATES = ("OK", "WARNING", "CRITICAL", "UNKNOWN")
TREND_KEYS = ("count", "total_size_bytes", "size_bytes", "duration_seconds")


# ------------------------------------------------------------------ shared ground


def _instant(value, name):
    """An aware UTC datetime from RFC 3339 text, a Unix timestamp or a datetime."""
    if isinstance(value, datetime.datetime):
        return value if value.tzinfo else value.replace(tzinfo=datetime.timezone.utc)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return datetime.datetime.fromtimestamp(value, datetime.timezone.utc)
    if isinstance(value, str):
        try:
            return parse_rfc3339(value.strip())
        except ValueError:
            pass
    raise AnsibleFilterError("%s: %r is not an instant (RFC 3339 text or a Unix timestamp)" % (name, value))


def _positive(value, name, what):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise AnsibleFilterError("%s: %s must be a positive number, got %r" % (name, what, value))
    return value


def _documents(reports, name):
    if not isinstance(reports, (list, tuple)):
        raise AnsibleFilterError("%s: expected a list of report documents, got %s" % (name, type(reports).__name__))
    return [r for r in reports if isinstance(r, dict)]


def _dated(reports, name, since, until, kind=None):
    """(instant, document) of the reports generated in (since, until], oldest first; documents
    without a readable generated_at are left out."""
    out = []
    for doc in _documents(reports, name):
        if kind is not None and doc.get("report") != kind:
            continue
        try:
            at = _instant(doc.get("generated_at"), name)
        except AnsibleFilterError:
            continue
        if (since is None or at > since) and at <= until:
            out.append((at, doc))
    out.sort(key=lambda pair: pair[0])
    return out


def _number(value):
    return value if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def _mean(values):
    values = [v for v in values if _number(v) is not None]
    return round(sum(values) / len(values), 3) if values else None


def _pct(new, old):
    if _number(new) is None or not _number(old):
        return None
    return round(100.0 * (new - old) / old, 2)


def _delta(new, old):
    if _number(new) is None or _number(old) is None:
        return None
    return round(new - old, 3)


# ------------------------------------------------------------------ parse_reports


def parse_reports(contents, host=None, names=None):
    """The texts of kept JSON report files (``query('ansible.builtin.file', ...)``) -> the parsed
    documents, oldest first. Texts that are not a JSON object, and the reports of other hosts or
    other names, are left out: one damaged file never stops a review."""
    if not isinstance(contents, (list, tuple)):
        raise AnsibleFilterError("parse_reports: expected a list of file contents, got %s" % type(contents).__name__)
    docs = []
    for text in contents:
        try:
            doc = json.loads(text) if isinstance(text, str) else text
        except ValueError:
            continue
        if not isinstance(doc, dict):
            continue
        if host is not None and doc.get("host") != host:
            continue
        if names is not None and doc.get("report") not in names:
            continue
        docs.append(doc)
    return sorted(docs, key=lambda d: str(d.get("generated_at") or ""))


# ------------------------------------------------------------------ report_review


def _failed_assets(dated):
    """Each asset that failed at least once: how often, when last, with which error."""
    found = {}
    for at, doc in dated:
        for asset in doc.get("assets") or []:
            if not isinstance(asset, dict) or asset.get("outcome") != "failed":
                continue
            key = (asset.get("kind"), asset.get("name"))
            row = found.setdefault(key, {"name": asset.get("name"), "kind": asset.get("kind"),
                                         "series": asset.get("series"), "failures": 0})
            row.update(failures=row["failures"] + 1, last_failed_at=rfc3339(at), last_error=asset.get("error"))
    return sorted(found.values(), key=lambda r: (-r["failures"], str(r["kind"]), str(r["name"])))


def _health(dated):
    """Runs per overall health state, and per check: runs, runs not OK, the worst state seen."""
    by_state = {}
    checks = {}
    for at, doc in dated:
        state = doc.get("health_status")
        if isinstance(state, str):
            by_state[state] = by_state.get(state, 0) + 1
        for check in doc.get("checks") or []:
            if not isinstance(check, dict) or "matches" in check or not check.get("name"):
                continue  # error-log entries are counted by _logs
            status = check.get("status") if check.get("status") in STATES else "UNKNOWN"
            row = checks.setdefault(check["name"], {"name": check["name"], "type": check.get("type"), "runs": 0,
                                                    "not_ok": 0, "worst": "OK", "last_message": None})
            row["runs"] += 1
            if status != "OK":
                row.update(not_ok=row["not_ok"] + 1, last_message=check.get("message"), last_not_ok_at=rfc3339(at))
            if _severity(status) > _severity(row["worst"]):
                row["worst"] = status
    return {"runs_by_state": by_state,
            "checks": sorted(checks.values(), key=lambda r: (-_severity(r["worst"]), -r["not_ok"], r["name"]))}


def _severity(state):
    return {"OK": 0, "WARNING": 1, "UNKNOWN": 2, "CRITICAL": 3}.get(state, 2)


def _logs(dated):
    """Per error-log entry of the health role: the matching lines summed over the runs."""
    logs = {}
    for _at, doc in dated:
        for entry in doc.get("checks") or []:
            if not isinstance(entry, dict) or "matches" not in entry:
                continue
            matches = _number(entry.get("matches")) or 0
            row = logs.setdefault(entry.get("name"), {"name": entry.get("name"), "runs": 0, "matches": 0,
                                                      "max_per_run": 0, "runs_with_matches": 0, "runs_warning": 0})
            row["runs"] += 1
            row["matches"] += matches
            row["max_per_run"] = max(row["max_per_run"], matches)
            row["runs_with_matches"] += 1 if matches else 0
            row["runs_warning"] += 1 if entry.get("status") == "WARNING" else 0
    return sorted(logs.values(), key=lambda r: (-r["matches"], str(r["name"])))


def _gaps(dated, since, days):
    """The 24-hour slots of the window, counted back from its end, without any run."""
    gaps = []
    for index in range(int(days)):
        start = since + index * DAY
        end = start + DAY
        if not any(start < at <= end for at, _doc in dated):
            gaps.append({"from": rfc3339(start), "to": rfc3339(end)})
    return gaps


def _failed_runs(dated):
    runs = []
    for at, doc in dated:
        if doc.get("status") == "passed":
            continue
        failure = doc.get("failure") or {}
        runs.append({"generated_at": rfc3339(at), "msg": failure.get("msg") if isinstance(failure, dict) else str(failure),
                     "phases": [f.get("phase") for f in (failure.get("failures") or []) if isinstance(f, dict)]
                     if isinstance(failure, dict) else []})
    return runs


def report_review(reports, now, days=7, kind="daily"):
    """The review of the runs named ``kind`` generated in the ``days`` before ``now``: runs,
    failed runs, slots without a run, failed assets, health states, error-log counts, and the
    series reported stale or missing. ``status`` is WARNING when any of them needs a look."""
    name = "report_review"
    until = _instant(now, name)
    days = _positive(days, name, "days")
    since = until - days * DAY
    dated = _dated(reports, name, since, until, kind)
    real = [(at, doc) for at, doc in dated if not doc.get("check_mode")]
    failed_runs = _failed_runs(real)
    gaps = _gaps(real, since, days)
    assets = _failed_assets(real)
    health = _health(real)
    logs = _logs(real)
    stale = sorted({s for _at, doc in real for s in doc.get("stale") or [] if isinstance(s, str)})
    missing = sorted({s for _at, doc in real for s in doc.get("missing") or [] if isinstance(s, str)})
    attention = (failed_runs or gaps or assets or stale or missing
                 or any(c["worst"] != "OK" for c in health["checks"]) or any(r["matches"] for r in logs))
    return {
        "kind": kind, "window": {"from": rfc3339(since), "to": rfc3339(until), "days": days},
        "runs": len(real), "check_mode_runs": len(dated) - len(real),
        "passed": sum(1 for _at, doc in real if doc.get("status") == "passed"), "failed": len(failed_runs),
        "failed_runs": failed_runs, "gaps": gaps, "failed_assets": assets, "health": health, "logs": logs,
        "stale": stale, "missing": missing, "status": "WARNING" if attention else "OK",
    }


# ------------------------------------------------------------------ backup_trends


def _week_of_assets(dated):
    """Per series, what the daily runs of the window did: written, failed, durations, sizes."""
    week = {}
    for _at, doc in dated:
        for asset in doc.get("assets") or []:
            if not isinstance(asset, dict) or not asset.get("series"):
                continue
            row = week.setdefault(asset["series"], {"kind": asset.get("kind"), "written": 0, "failed": 0,
                                                    "durations": [], "sizes": []})
            if asset.get("outcome") == "written":
                row["written"] += 1
                row["durations"].append(asset.get("duration_seconds"))
                row["sizes"].append(asset.get("size_bytes"))
            elif asset.get("outcome") == "failed":
                row["failed"] += 1
    return week


def _earlier_weeks(weekly, until, weeks):
    """{series: [point, ...]} of the earlier weekly reports (oldest first, at most ``weeks``)."""
    dated = [(at, doc) for at, doc in _dated(weekly, "backup_trends", None, until, "weekly")
             if at < until and not doc.get("check_mode") and isinstance(doc.get("trends"), dict)]
    dated = dated[-int(weeks):] if weeks else []
    history = {}
    for at, doc in dated:
        for point in doc["trends"].get("series") or []:
            if isinstance(point, dict) and point.get("series"):
                history.setdefault(point["series"], []).append(
                    dict({k: point.get(k) for k in TREND_KEYS}, generated_at=rfc3339(at)))
    return history, (rfc3339(dated[-1][0]) if dated else None), len(dated)


def _backups_of_week(backups, since, until):
    """Per series, the durations and sizes of the backups created in (since, until], from the
    backup records of backup_info (completed_at - created_at: every kind of backup has them)."""
    week = {}
    for record in backups or []:
        if not isinstance(record, dict) or not record.get("series"):
            continue
        try:
            created = _instant(record.get("created_at"), "backup_trends")
            completed = _instant(record.get("completed_at"), "backup_trends")
        except AnsibleFilterError:
            continue
        if since < created <= until:
            row = week.setdefault(record["series"], {"durations": [], "sizes": []})
            row["durations"].append(round(max(0.0, (completed - created).total_seconds()), 3))
            row["sizes"].append(record.get("size_bytes"))
    return week


def _trend(series, row, done, history, until):
    durations = [d for d in done.get("durations", []) if _number(d) is not None]
    point = {
        "count": row.get("count"), "total_size_bytes": row.get("total_size_bytes"), "size_bytes": row.get("size_bytes"),
        "duration_seconds": _mean(durations),
    }
    previous = history[-1] if history else None
    return dict(point, series=series, kind=row.get("kind") or done.get("kind"), present=bool(row),
                written=done.get("written", 0), failed=done.get("failed", 0),
                duration_max_seconds=max(durations) if durations else None,
                mean_size_bytes=_mean(done.get("sizes", [])), previous=previous,
                change={k: _delta(point[k], previous.get(k)) for k in TREND_KEYS} if previous else None,
                change_pct={k: _pct(point[k], previous.get(k)) for k in TREND_KEYS} if previous else None,
                history=history + [dict(point, generated_at=rfc3339(until))])


def backup_trends(rows, now, daily=None, weekly=None, days=7, weeks=8, backups=None):
    """Per series: the count and sizes now (``rows``, as backup_rows gives them), what the daily
    runs of the last ``days`` wrote (how many, mean duration and size), compared with the newest
    earlier weekly report and with up to ``weeks`` of them (``history``, oldest first). With
    ``backups`` (the backup records of backup_info), the durations and sizes of the week are
    those of the backups created in it, whatever their kind; else the daily reports' figures."""
    name = "backup_trends"
    until = _instant(now, name)
    days = _positive(days, name, "days")
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise AnsibleFilterError("%s: expected the rows of backup_rows (a list of dicts)" % name)
    current = {r["series"]: r for r in rows if r.get("series")}
    week = _week_of_assets([(at, doc) for at, doc in _dated(daily or [], name, until - days * DAY, until, "daily")
                            if not doc.get("check_mode")])
    if backups is not None:
        if not isinstance(backups, (list, tuple)):
            raise AnsibleFilterError("%s: backups must be the list of backup records of backup_info" % name)
        made = _backups_of_week(backups, until - days * DAY, until)
        for series in set(week) | set(made):
            week.setdefault(series, {"written": 0, "failed": 0}).update(made.get(series, {"durations": [], "sizes": []}))
    history, previous_at, used = _earlier_weeks(weekly or [], until, weeks)
    names = sorted(set(current) | set(week) | set(history))
    series = [_trend(s, current.get(s, {}), week.get(s, {}), history.get(s, []), until) for s in names]
    total = sum(r.get("total_size_bytes") or 0 for r in current.values())
    count = sum(r.get("count") or 0 for r in current.values())
    before = {"total_size_bytes": sum(h[-1].get("total_size_bytes") or 0 for h in history.values()),
              "backups": sum(h[-1].get("count") or 0 for h in history.values())} if history else None
    return {
        "window": {"from": rfc3339(until - days * DAY), "to": rfc3339(until), "days": days},
        "previous_report": previous_at, "weeks_compared": used, "series": series,
        "total_size_bytes": total, "backups": count,
        "change": {"total_size_bytes": total - before["total_size_bytes"], "backups": count - before["backups"]} if before else None,
        "gone": [s["series"] for s in series if not s["present"]],
    }


# ------------------------------------------------------------------ capacity_figures


def _growth(samples, value_key):
    """First and last sample of a series of (instant, dict), the growth between them, per day."""
    first_at, first = samples[0]
    last_at, last = samples[-1]
    span = (last_at - first_at).total_seconds() / 86400.0
    growth = _delta(last.get(value_key), first.get(value_key))
    return {
        "samples": len(samples), "first_at": rfc3339(first_at), "last_at": rfc3339(last_at),
        "span_days": round(span, 3), "first": first.get(value_key), "last": last.get(value_key),
        "growth": growth, "growth_pct": _pct(last.get(value_key), first.get(value_key)),
        "growth_per_day": round(growth / span, 3) if growth is not None and span > 0 else None,
    }


def _disk_samples(dated):
    disks = {}
    for at, doc in dated:
        for check in doc.get("checks") or []:
            if not isinstance(check, dict) or check.get("type") != "disk":
                continue
            measures = check.get("measures") or {}
            total, free = _number(measures.get("total_bytes")), _number(measures.get("free_bytes"))
            if total is None or free is None:
                continue
            disks.setdefault(check.get("name"), []).append(
                (at, {"used_bytes": total - free, "free_bytes": free, "total_bytes": total, "used_pct": measures.get("used_pct")}))
    return disks


def _disk_figures(disks):
    out = []
    for name in sorted(disks, key=str):
        samples = sorted(disks[name], key=lambda pair: pair[0])
        figure = _growth(samples, "used_bytes")
        last = samples[-1][1]
        per_day = figure["growth_per_day"]
        out.append({
            "name": name, "used_bytes": last["used_bytes"], "free_bytes": last["free_bytes"],
            "total_bytes": last["total_bytes"], "used_pct": last["used_pct"],
            "samples": figure["samples"], "first_at": figure["first_at"], "last_at": figure["last_at"],
            "span_days": figure["span_days"], "growth_bytes": figure["growth"], "growth_pct": figure["growth_pct"],
            "growth_bytes_per_day": per_day,
            "days_until_full": round(last["free_bytes"] / per_day, 1) if per_day and per_day > 0 else None,
        })
    return out


def _database_samples(dated):
    sizes, dumps = {}, {}
    for at, doc in dated:
        for row in doc.get("database_sizes") or []:
            if isinstance(row, dict) and _number(row.get("size_bytes")) is not None:
                sizes.setdefault(row.get("name"), []).append((at, {"size_bytes": row["size_bytes"]}))
        for asset in doc.get("assets") or []:
            if (isinstance(asset, dict) and asset.get("kind") == "postgres" and asset.get("outcome") == "written"
                    and _number(asset.get("size_bytes")) is not None):
                dumps.setdefault(asset.get("name"), []).append((at, {"size_bytes": asset["size_bytes"]}))
    return sizes, dumps


def _database_figures(sizes, dumps):
    out = []
    for name in sorted(set(sizes) | set(dumps), key=str):
        row = {"name": name, "size_bytes": None, "backup_size_bytes": None}
        for key, samples in (("size", sizes.get(name)), ("backup_size", dumps.get(name))):
            if not samples:
                continue
            figure = _growth(sorted(samples, key=lambda pair: pair[0]), "size_bytes")
            row.update({key + "_bytes": figure["last"], key + "_growth_bytes": figure["growth"],
                        key + "_growth_pct": figure["growth_pct"], key + "_growth_bytes_per_day": figure["growth_per_day"],
                        key + "_samples": figure["samples"], key + "_first_at": figure["first_at"]})
        out.append(row)
    return out


def capacity_figures(reports, now, days=31, current=None):
    """Capacity figures of the last ``days`` before ``now`` from the kept reports (and from
    ``current``, this run's measurements, a dict with ``checks`` and ``database_sizes``): per disk,
    the used bytes first and last, the growth per day and the days until full at that pace; per
    database, its size (``database_sizes`` of the monthly reports) and its backup size (the
    PostgreSQL assets of the daily reports), first and last, and their growth."""
    name = "capacity_figures"
    until = _instant(now, name)
    days = _positive(days, name, "days")
    docs = list(_documents(reports, name))
    if current is not None:
        if not isinstance(current, dict):
            raise AnsibleFilterError("%s: current must be a dict (checks, database_sizes), got %s" % (name, type(current).__name__))
        docs.append(dict(current, generated_at=rfc3339(until), check_mode=False))
    dated = [(at, doc) for at, doc in _dated(docs, name, until - days * DAY, until) if not doc.get("check_mode")]
    sizes, dumps = _database_samples(dated)
    return {
        "window": {"from": rfc3339(until - days * DAY), "to": rfc3339(until), "days": days},
        "reports": len(dated) - (1 if current is not None else 0),
        "disks": _disk_figures(_disk_samples(dated)),
        "databases": _database_figures(sizes, dumps),
    }


class FilterModule:
    def filters(self):
        return {"parse_reports": parse_reports, "report_review": report_review, "backup_trends": backup_trends,
                "capacity_figures": capacity_figures}
