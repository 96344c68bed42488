# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the roles and their reports: durations in seconds, phase timings, the health
verdict, connection options for module_defaults, backup rows and inline SVG bar charts.

Documentation: the sidecar files here, one per filter (duration_seconds.yml, elapsed.yml,
health_failing.yml, health_worst.yml, connection_options.yml, svg_bars.yml, backup_rows.yml,
secret_env.yml, asset_outcomes.yml, failure_lines.yml,
run_failure.yml).
"""

from __future__ import annotations

import re
import time
from html import escape

from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.module_utils._docker import DOCKER_OPTION_NAMES
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._health.ranges import SEVERITY, failing, worst
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.connection import PG_OPTION_NAMES
from ansible_collections.opskit.runbook.plugins.module_utils._timeutil import Duration

BAR_HEIGHT = 18
GAP = 6
LABEL_WIDTH = 190
VALUE_WIDTH = 90
CHART_WIDTH = 640
PALETTE = {"ok": "#2e7d32", "bad": "#c62828", "neutral": "#1565c0"}
OFF_SCALE = 4  # a target beyond 4 times the largest value is marked, not drawn to scale


def duration_seconds(value):
    """'4h' -> 14400.0; numbers are seconds already. Months and years count back from now."""
    if isinstance(value, bool):
        raise AnsibleFilterError("duration_seconds: %r is not a duration" % (value,))
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(Duration.parse(value, option="duration_seconds").seconds())
    except ConfigError as exc:
        raise AnsibleFilterError(str(exc)) from None


def elapsed(started):
    """Seconds since ``started`` (a Unix timestamp such as ``now().timestamp()``), to the ms."""
    if isinstance(started, bool):
        raise AnsibleFilterError("elapsed: %r is not a timestamp" % (started,))
    try:
        return round(time.time() - float(started), 3)
    except (TypeError, ValueError):
        raise AnsibleFilterError("elapsed: %r is not a timestamp" % (started,)) from None


def _state(value, name):
    if not isinstance(value, str) or value not in SEVERITY:
        raise AnsibleFilterError("%s: %r is not a state (%s)" % (name, value, ", ".join(SEVERITY)))
    return value


def health_failing(status, fail_on):
    """The ``fail_on`` verdict of health_check for an overall ``status`` (True: the run fails)."""
    try:
        return failing(_state(status, "health_failing"), fail_on)
    except KeyError:
        raise AnsibleFilterError("health_failing: fail_on must be one of critical, warning, never, not %r"
                                 % (fail_on,)) from None


def health_worst(states):
    """The most severe of a list of states (OK for none), as health_check combines them."""
    if not isinstance(states, (list, tuple)):
        raise AnsibleFilterError("health_worst: expected a list of states, got %s" % type(states).__name__)
    return worst(_state(state, "health_worst") for state in states)


CONNECTION_OPTIONS = {"postgres": PG_OPTION_NAMES, "docker": DOCKER_OPTION_NAMES}


def connection_options(value, kind):
    """The PostgreSQL or Docker connection options of a dict (kind: postgres, docker), for the
    action group of that name: module_defaults of a group may hold only options every member knows."""
    if kind not in CONNECTION_OPTIONS:
        raise AnsibleFilterError("connection_options: kind must be one of %s, not %r"
                                 % (", ".join(sorted(CONNECTION_OPTIONS)), kind))
    if not isinstance(value, dict):
        raise AnsibleFilterError("connection_options: expected a dict, got %s" % type(value).__name__)
    return {name: value[name] for name in CONNECTION_OPTIONS[kind] if name in value}


def _number(item, key, index):
    value = item.get(key)
    if isinstance(value, bool) or value is None:
        raise AnsibleFilterError("svg_bars: item %d has no numeric %r" % (index, key))
    try:
        return float(value)
    except (TypeError, ValueError):
        raise AnsibleFilterError("svg_bars: item %d: %r is not a number (%r)" % (index, key, value)) from None


def _fmt(value, unit):
    if unit == "s":
        if value >= 7200:
            return "%.1f h" % (value / 3600)
        if value >= 120:
            return "%.1f min" % (value / 60)
        return "%.2f s" % value
    if unit == "B":
        for factor, name in ((1 << 40, "TiB"), (1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
            if abs(value) >= factor:
                return "%.1f %s" % (value / factor, name)
        return "%d B" % value
    return "%g %s" % (round(value, 2), unit) if unit else "%g" % round(value, 2)


def _scale(values, limit):
    """(the value at the right end of the plot, whether the target lies beyond it). The scale
    fits the values: a target more than OFF_SCALE times the largest value is not drawn to scale
    (12 s on a 4 h axis would be an invisible bar), it is marked at the right edge instead."""
    largest = max(values + [0.0])
    if limit is None:
        return max(largest, 1e-9), False
    if largest > 0 and limit > OFF_SCALE * largest:
        return largest * 1.25, True
    return max(largest, limit, 1e-9), False


def _target(limit, x, top, height, unit, off_scale):
    """The labelled target line (dashed; solid with an arrow at the right edge when off scale)."""
    label = "target %s%s" % (_fmt(limit, unit), " \u2192 off scale" if off_scale else "")
    dash = "" if off_scale else ' stroke-dasharray="4 3"'
    anchor = "end" if x > LABEL_WIDTH + (CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH) / 2 else "start"
    return ('<line class="target" x1="%.1f" y1="%d" x2="%.1f" y2="%d" stroke="#555"%s><title>%s</title></line>\n'
            '<text class="target-label" x="%.1f" y="%d" text-anchor="%s" fill="#555">%s</text>'
            % (x, top - 2, x, height - 2, dash, escape(label), x, top - 5, anchor, escape(label)))


def svg_bars(items, label="name", value="seconds", unit="s", limit=None, title=""):
    """A horizontal bar chart as an inline <svg> element (no scripts, no external assets).

    items: list of dicts; label/value: their keys. limit: a target drawn as a labelled line; bars
    beyond it are red, the others green (without a limit every bar is blue). The scale fits the
    values (see _scale). unit: s (durations), B (bytes) or any suffix.
    """
    if not isinstance(items, (list, tuple)):
        raise AnsibleFilterError("svg_bars: expected a list of dicts, got %s" % type(items).__name__)
    rows = []
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            raise AnsibleFilterError("svg_bars: item %d is not a dict" % index)
        rows.append((str(item.get(label, "")), _number(item, value, index)))
    limit = None if limit in (None, "") else duration_seconds(limit) if unit == "s" else float(limit)
    scale_max, off_scale = _scale([row[1] for row in rows], limit)
    plot = CHART_WIDTH - LABEL_WIDTH - VALUE_WIDTH
    top = (22 if title else 4) + (14 if limit is not None else 0)
    height = top + len(rows) * (BAR_HEIGHT + GAP) + 4
    out = ['<svg xmlns="http://www.w3.org/2000/svg" role="img" aria-label="%s" width="%d" height="%d" viewBox="0 0 %d %d"'
           ' font-family="sans-serif" font-size="12">' % (escape(str(title)), CHART_WIDTH, height, CHART_WIDTH, height)]
    if title:
        out.append('<text x="0" y="14" font-weight="bold">%s</text>' % escape(str(title)))
    for row, (name, number) in enumerate(rows):
        y = top + row * (BAR_HEIGHT + GAP)
        width = min(plot, max(1.0, plot * number / scale_max)) if number > 0 else 0.0
        colour = PALETTE["neutral"] if limit is None else PALETTE["ok" if number <= limit else "bad"]
        out.append('<text x="0" y="%d">%s</text>' % (y + 13, escape(name[:32])))
        out.append('<rect x="%d" y="%d" width="%.1f" height="%d" fill="%s"><title>%s: %s</title></rect>'
                   % (LABEL_WIDTH, y, width, BAR_HEIGHT, colour, escape(name), escape(_fmt(number, unit))))
        out.append('<text x="%.1f" y="%d">%s</text>' % (LABEL_WIDTH + width + 4, y + 13, escape(_fmt(number, unit))))
    if limit is not None:
        x = LABEL_WIDTH + (plot if off_scale else plot * limit / scale_max)
        out.append(_target(limit, x, top, height, unit, off_scale))
    out.append("</svg>")
    return "\n".join(out)


def backup_rows(series, only=None):
    """backup_info's ``series`` dict -> one flat row per series (sorted), optionally only some."""
    if not isinstance(series, dict):
        raise AnsibleFilterError("backup_rows: expected the series dict of backup_info, got %s"
                                 % type(series).__name__)
    rows = []
    for name in sorted(series):
        if only is not None and name not in only:
            continue
        entry = series[name] or {}
        newest = entry.get("newest") or {}
        rows.append({
            "series": name,
            "kind": newest.get("kind"),
            "id": newest.get("id"),
            "created_at": newest.get("created_at"),
            "age_seconds": entry.get("newest_age_seconds"),
            "size_bytes": newest.get("size_bytes"),
            "count": entry.get("count"),
            "total_size_bytes": entry.get("total_size_bytes"),
            "verified_id": (entry.get("newest_verified") or {}).get("id"),
            "verified_age_seconds": entry.get("newest_verified_age_seconds"),
            "stale": bool(entry.get("stale")),
        })
    return rows


def _asset_outcome(result, kind, series):
    item = result.get("item") or {}
    name = item.get("name") if isinstance(item, dict) else str(item)
    row = {"name": name, "kind": kind, "series": series.replace("{name}", str(name)),
           "outcome": "written", "backup_id": None, "error": None}
    backup = result.get("backup") or (result.get("backups") or [None])[0]
    if result.get("failed"):
        row.update(outcome="failed", error=" ".join(str(result.get("msg") or "failed").split())[:500])
    elif result.get("skipped"):
        row["outcome"] = "skipped"
    elif not backup:
        row["outcome"] = "planned"  # check mode: the plan only
    else:
        row.update(backup_id=backup.get("id"), size_bytes=backup.get("size_bytes"),
                   duration_seconds=backup.get("duration_seconds"))
    return row


def asset_outcomes(registered, kind, series):
    """A registered loop of pg_backup or volume_backup (one asset per item, ignore_errors) -> one
    row per asset: name, kind, series (``{name}`` replaced), outcome (written, failed, planned,
    skipped), backup_id, size_bytes, duration_seconds, error."""
    if not isinstance(registered, dict):
        raise AnsibleFilterError("asset_outcomes: expected a registered loop result, got %s" % type(registered).__name__)
    results = registered.get("results")
    if results is None:
        return []
    if not isinstance(results, list) or not all(isinstance(r, dict) for r in results):
        raise AnsibleFilterError("asset_outcomes: the results of the registered loop must be dicts")
    return [_asset_outcome(result, str(kind), str(series)) for result in results]


def failure_lines(rows):
    """The rows of asset_outcomes (or of the roles' asset facts) that failed, one line each:
    "<kind> <name>: <error>"."""
    if not isinstance(rows, (list, tuple)) or not all(isinstance(r, dict) for r in rows):
        raise AnsibleFilterError("failure_lines: expected a list of asset rows (dicts)")
    return ["%s %s: %s" % (r.get("kind") or "asset", r.get("name"), r.get("error") or "failed")
            for r in rows if r.get("outcome") == "failed"]


def run_failure(failures):
    """A list of {task, msg} (one per failed phase) -> the one failure of the run for the report
    role: {} when the list is empty, else {task, msg, failures} with every task and message."""
    if not isinstance(failures, (list, tuple)) or not all(isinstance(f, dict) for f in failures):
        raise AnsibleFilterError("run_failure: expected a list of {task, msg} dicts")
    if not failures:
        return {}
    tasks = []
    for failure in failures:
        task = str(failure.get("task") or "")
        if task and task not in tasks:
            tasks.append(task)
    msg = "; ".join(" ".join(str(f.get("msg") or "failed").split()) for f in failures)
    return {"task": ", ".join(tasks), "msg": msg, "failures": [dict(f) for f in failures]}


# Reads the secret file named by $2 into the variable named by $1, then runs the rest of the
# arguments with it in their environment: the secret is never part of any command line.
SECRET_ENV_SCRIPT = 'secret=$(cat -- "$2") || exit 125; export "$1=$secret"; unset secret; shift 2; exec "$@"'
_ENV_NAME = re.compile(r"\A[A-Za-z_][A-Za-z0-9_]*\Z")


def secret_env(argv, name, path):
    """argv run with the content of the file ``path`` in its environment variable ``name``
    (through /bin/sh, never on a command line); argv unchanged when path is empty."""
    if not isinstance(argv, (list, tuple)) or not all(isinstance(a, str) for a in argv) or not argv:
        raise AnsibleFilterError("secret_env: expected a non-empty list of strings (the command), got %r"
                                 % type(argv).__name__)
    if not isinstance(name, str) or not _ENV_NAME.match(name):
        raise AnsibleFilterError("secret_env: %r is not an environment variable name" % (name,))
    if path is None or path == "":
        return list(argv)
    if not isinstance(path, str) or not path.startswith("/"):
        raise AnsibleFilterError("secret_env: the secret file must be an absolute path, got %r" % (path,))
    return ["/bin/sh", "-c", SECRET_ENV_SCRIPT, "opskit-secret-env", name, path] + list(argv)


class FilterModule:
    def filters(self):
        return {"duration_seconds": duration_seconds, "elapsed": elapsed, "health_failing": health_failing,
                "health_worst": health_worst, "connection_options": connection_options,
                "svg_bars": svg_bars, "backup_rows": backup_rows, "secret_env": secret_env,
                "asset_outcomes": asset_outcomes, "failure_lines": failure_lines, "run_failure": run_failure}
