# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the report history (the index.html of the reports directory): the kept JSON
reports of every run turned into time series (per backup series: size, duration and age; per
drilled asset: RTO and RPO; per check: its state; the runs and their outcome), and the inline
SVG charts that draw them over a time axis.

Every filter takes the clock as an argument (``now``, ``since``, ``until``): the result depends
on the reports and on those instants only, never on the machine's clock.

Documentation: the sidecar files here (report_history.yml, svg_timeline.yml, svg_states.yml).
"""

from __future__ import annotations

import datetime
import json
import os
from html import escape

from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.filter.review import _instant, _number
from ansible_collections.opskit.runbook.plugins.filter.runbook import OFF_SCALE, PALETTE, _fmt, duration_seconds
from ansible_collections.opskit.runbook.plugins.module_utils._timeutil import rfc3339

DEFAULT_DAYS = 90
DEFAULT_RUNS = 500
WIDTH = 640
LEFT = 74
RIGHT = 12
STATE_COLOURS = {"OK": PALETTE["ok"], "passed": PALETTE["ok"], "WARNING": "#ef6c00", "CRITICAL": PALETTE["bad"],
                 "failed": PALETTE["bad"], "UNKNOWN": "#757575"}


def _count(value, name, what):
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise AnsibleFilterError("%s: %s must be a positive whole number, got %r" % (name, what, value))
    return value


# ------------------------------------------------------------------ report_history


def _kept(contents, paths, now, days, limit):
    """(instant, document, page) of the readable reports of the window, oldest first, the newest
    ``limit``; and how many readable reports the window held in all."""
    if not isinstance(contents, (list, tuple)):
        raise AnsibleFilterError("report_history: expected a list of file contents, got %s" % type(contents).__name__)
    paths = list(paths or [])
    since = now - datetime.timedelta(days=days)
    found = []
    for index, text in enumerate(contents):
        try:
            doc = json.loads(text) if isinstance(text, str) else text
            at = _instant(doc.get("generated_at"), "report_history")
        except (ValueError, AttributeError, AnsibleFilterError):
            continue  # one damaged file never stops the history
        if not isinstance(doc, dict) or not since < at <= now:
            continue
        path = paths[index] if index < len(paths) else None
        page = os.path.basename(path)[:-len(".json")] + ".html" if path and path.endswith(".json") else None
        found.append((at, doc, page))
    found.sort(key=lambda entry: entry[0])
    return found[-limit:], len(found)


def _run(at, doc, page):
    failure = doc.get("failure") if isinstance(doc.get("failure"), dict) else {}
    return {"at": rfc3339(at), "report": str(doc.get("report", "")), "host": str(doc.get("host", "")),
            "status": str(doc.get("status", "")), "check_mode": bool(doc.get("check_mode")),
            "health_status": doc.get("health_status"), "page": page,
            "failure": " ".join(("%s: %s" % (failure.get("task", ""), failure.get("msg", ""))).split())[:300]
            if failure else ""}


def _point(table, key, label, at, fields):
    entry = table.setdefault(key, dict(label, points=[]))
    entry["points"].append(dict(fields, at=rfc3339(at)))


def _series_points(series, at, doc):
    host = str(doc.get("host", ""))
    rows = {}
    for row in doc.get("backups") or []:
        if isinstance(row, dict) and row.get("series"):
            rows[row["series"]] = {"kind": row.get("kind"), "size_bytes": _number(row.get("size_bytes")),
                                   "age_seconds": _number(row.get("age_seconds")), "duration_seconds": None}
    for asset in doc.get("assets") or []:
        if isinstance(asset, dict) and asset.get("series") and asset.get("outcome") == "written":
            row = rows.setdefault(asset["series"], {"kind": asset.get("kind"), "size_bytes": None, "age_seconds": None})
            row["duration_seconds"] = _number(asset.get("duration_seconds"))
            if _number(asset.get("size_bytes")) is not None:
                row["size_bytes"] = asset["size_bytes"]
    for name, row in rows.items():
        kind = row.pop("kind")
        _point(series, (host, name), {"name": name, "host": host, "kind": kind}, at, row)


def _asset_points(assets, at, doc):
    host = str(doc.get("host", ""))
    for asset in doc.get("assets") or []:
        if not isinstance(asset, dict) or _number(asset.get("rto_seconds")) is None and _number(asset.get("rpo_seconds")) is None:
            continue  # a backup, not a restore
        name = str(asset.get("name", ""))
        _point(assets, (host, name, str(asset.get("kind", ""))), {"name": name, "host": host, "kind": asset.get("kind")}, at,
               {"rto_seconds": _number(asset.get("rto_seconds")), "rpo_seconds": _number(asset.get("rpo_seconds")),
                "ok": asset.get("ok"), "report": doc.get("report")})


def _check_points(checks, at, doc):
    host = str(doc.get("host", ""))
    for check in doc.get("checks") or []:
        if isinstance(check, dict) and check.get("name") and check.get("status"):
            kind = check.get("type") or ("logs" if "matches" in check else "")
            _point(checks, (host, str(check["name"])), {"name": str(check["name"]), "host": host, "kind": kind}, at,
                   {"state": str(check["status"]), "report": doc.get("report")})


def _listed(table, several_hosts):
    out = []
    for key in sorted(table, key=lambda k: tuple(str(part) for part in k)):
        entry = table[key]
        entry["label"] = ("%s: %s" % (entry["host"], entry["name"])) if several_hosts else entry["name"]
        entry["latest"] = {}  # the newest value of each field
        for point in entry["points"]:
            entry["latest"].update({k: v for k, v in point.items() if v is not None})
        out.append(entry)
    return out


def report_history(contents, now, paths=None, days=DEFAULT_DAYS, limit=DEFAULT_RUNS):
    """The kept JSON reports (file contents; ``paths`` their file names, for the links to their
    pages) -> the history of the last ``days`` days before ``now``, at most the newest ``limit``
    runs: the runs (newest first), and per backup series, drilled asset and check, its points in
    time (oldest first)."""
    now = _instant(now, "report_history")
    days, limit = _count(days, "report_history", "days"), _count(limit, "report_history", "limit")
    kept, total = _kept(contents, paths, now, days, limit)
    series, assets, checks = {}, {}, {}
    for at, doc, _page in kept:
        _series_points(series, at, doc)
        _asset_points(assets, at, doc)
        _check_points(checks, at, doc)
    several = len({str(doc.get("host", "")) for _at, doc, _page in kept}) > 1
    newest = kept[-1][1] if kept else {}
    targets = newest.get("targets") if isinstance(newest.get("targets"), dict) else {}
    return {
        "window": {"from": rfc3339(now - datetime.timedelta(days=days)), "to": rfc3339(now), "days": days,
                   "limit": limit, "runs": len(kept), "left_out": total - len(kept),
                   "first": rfc3339(kept[0][0]) if kept else None},
        "targets": {"rto_seconds": _number(targets.get("rto_seconds")), "rpo_seconds": _number(targets.get("rpo_seconds")),
                    "rto": targets.get("rto"), "rpo": targets.get("rpo")},
        "runs": [_run(at, doc, page) for at, doc, page in reversed(kept)],
        "series": _listed(series, several), "assets": _listed(assets, several), "checks": _listed(checks, several),
    }


# ------------------------------------------------------------------ charts over time


def _axis(since, until, name):
    start, end = _instant(since, name), _instant(until, name)
    if end <= start:
        raise AnsibleFilterError("%s: until (%s) must be after since (%s)" % (name, rfc3339(end), rfc3339(start)))
    span = (end - start).total_seconds()
    plot = WIDTH - LEFT - RIGHT
    return start, end, lambda at: LEFT + plot * min(1.0, max(0.0, (_instant(at, name) - start).total_seconds() / span))


def _frame(title, height, bottom, start, end):
    """The opening of a chart: the title and the time axis with its two dates."""
    return ['<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="%s" width="%d" height="%d" viewBox="0 0 %d %d"'
            ' font-family="sans-serif" font-size="11">' % (escape(str(title)), WIDTH, height, WIDTH, height),
            '<text x="0" y="13" font-weight="bold" font-size="12">%s</text>' % escape(str(title)),
            '<path class="axis" d="M%d %d H%d" stroke="#999" fill="none"/>' % (LEFT, bottom, WIDTH - RIGHT),
            '<text x="%d" y="%d" fill="#555">%s</text>' % (LEFT, bottom + 13, start.strftime("%Y-%m-%d")),
            '<text x="%d" y="%d" text-anchor="end" fill="#555">%s</text>' % (WIDTH - RIGHT, bottom + 13, end.strftime("%Y-%m-%d"))]


def _timeline_scale(values, limit):
    """(the value at the top of the plot, whether the target lies beyond it): the scale fits the
    values; a target more than OFF_SCALE times the largest value is marked at the top instead."""
    largest = max(values + [0.0])
    if limit is None:
        return max(largest * 1.1, 1e-9), False
    if largest > 0 and limit > OFF_SCALE * largest:
        return largest * 1.25, True
    return max(largest, limit, 1e-9) * 1.1, False


def _timeline_target(limit, unit, y, off_scale):
    label = "target %s%s" % (_fmt(limit, unit), " \u2191 off scale" if off_scale else "")
    dash = "" if off_scale else ' stroke-dasharray="4 3"'
    return ('<path class="target" d="M%d %.1f H%d" stroke="#555"%s fill="none"><title>%s</title></path>\n'
            '<text class="target-label" x="%d" y="%.1f" text-anchor="end" fill="#555">%s</text>'
            % (LEFT, y, WIDTH - RIGHT, dash, escape(label), WIDTH - RIGHT, y - 3, escape(label)))


def svg_timeline(points, value, since, until, unit="s", limit=None, title=""):
    """A chart of ``points`` (dicts with ``at`` and a numeric ``value`` key; others are left out)
    over the time axis since..until, as inline <svg>: one circle per point, joined by a line.
    The scale fits the values; ``limit`` is a labelled target line (points beyond it are red)."""
    if not isinstance(points, (list, tuple)):
        raise AnsibleFilterError("svg_timeline: expected a list of points, got %s" % type(points).__name__)
    start, end, x_of = _axis(since, until, "svg_timeline")
    drawn = [(x_of(p.get("at")), float(p[value]), str(p.get("at"))) for p in points
             if isinstance(p, dict) and _number(p.get(value)) is not None]
    limit = None if limit in (None, "") else duration_seconds(limit) if unit == "s" else float(limit)
    top, bottom, height = 30, 112, 130
    scale_max, off_scale = _timeline_scale([v for _x, v, _at in drawn], limit)

    def y_of(number):
        return bottom - (bottom - top) * min(1.0, number / scale_max)

    out = _frame(title, height, bottom, start, end)
    out.append('<text x="%d" y="%d" text-anchor="end" fill="#555">%s</text>' % (LEFT - 4, top + 4, escape(_fmt(scale_max, unit))))
    out.append('<text x="%d" y="%d" text-anchor="end" fill="#555">0</text>' % (LEFT - 4, bottom))
    if limit is not None:
        out.append(_timeline_target(limit, unit, top if off_scale else y_of(limit), off_scale))
    if len(drawn) > 1:
        out.append('<polyline class="trend" fill="none" stroke="%s" points="%s"/>' % (
            PALETTE["neutral"], " ".join("%.1f,%.1f" % (x, y_of(v)) for x, v, _at in drawn)))
    for x, number, at in drawn:
        colour = PALETTE["neutral"] if limit is None else PALETTE["ok" if number <= limit else "bad"]
        out.append('<circle cx="%.1f" cy="%.1f" r="3" fill="%s"><title>%s: %s</title></circle>'
                   % (x, y_of(number), colour, escape(at), escape(_fmt(number, unit))))
    if not drawn:
        out.append('<text x="%d" y="%d" fill="#777">no value in the window</text>' % (LEFT + 8, (top + bottom) // 2))
    out.append("</svg>")
    return "\n".join(out)


def svg_states(points, since, until, key="state", title=""):
    """A state timeline of ``points`` (dicts with ``at`` and a ``key`` such as OK, WARNING,
    CRITICAL, UNKNOWN, passed or failed) over since..until: one coloured mark per point."""
    if not isinstance(points, (list, tuple)):
        raise AnsibleFilterError("svg_states: expected a list of points, got %s" % type(points).__name__)
    start, end, x_of = _axis(since, until, "svg_states")
    top, bottom, height = 22, 46, 64
    out = _frame(title, height, bottom, start, end)
    for point in points:
        if not isinstance(point, dict) or point.get(key) in (None, ""):
            continue
        state = str(point[key])
        out.append('<rect class="state-%s" x="%.1f" y="%d" width="5" height="%d" fill="%s"><title>%s: %s</title></rect>'
                   % (escape(state), x_of(point.get("at")) - 2.5, top, bottom - top - 2,
                      STATE_COLOURS.get(state, STATE_COLOURS["UNKNOWN"]), escape(str(point.get("at"))), escape(state)))
    out.append("</svg>")
    return "\n".join(out)


class FilterModule:
    def filters(self):
        return {"report_history": report_history, "svg_timeline": svg_timeline, "svg_states": svg_states}
