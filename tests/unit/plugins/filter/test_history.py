# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The history filters of the report role (plugins/filter/history.py): the window and its bound,
the time series per series, asset and check, and the charts over time."""

from __future__ import annotations

import json
import re

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.filter.history import report_history, svg_states, svg_timeline

NOW = "2026-03-01T03:00:00Z"


def _doc(day, report="daily", host="h1", **extra):
    return dict({"report": report, "host": host, "generated_at": "2026-%s" % day, "status": "passed"}, **extra)


def _texts(docs):
    return [json.dumps(d) for d in docs]


def test_the_window_the_bound_and_the_pages():
    docs = [_doc("02-%02dT02:00:00Z" % d) for d in range(1, 29)] + [_doc("03-01T03:00:01Z")]  # one after now
    texts = _texts(docs) + ["{not json", "[1, 2]"]
    paths = ["/r/daily-h1-%d.json" % i for i in range(len(texts))]
    history = report_history(texts, NOW, paths=paths, days=20, limit=10)
    window = history["window"]
    assert window["from"] == "2026-02-09T03:00:00Z" and window["to"] == NOW
    assert window["runs"] == 10 and window["left_out"] == 9   # Feb 10..28 (02:00) lie in the window: 19 runs
    assert [r["at"] for r in history["runs"]][:2] == ["2026-02-28T02:00:00Z", "2026-02-27T02:00:00Z"]
    assert history["runs"][0]["page"] == "daily-h1-27.html"


def test_series_assets_and_checks_over_time():
    docs = [
        _doc("02-01T02:00:00Z", backups=[{"series": "s1", "kind": "volume", "size_bytes": 10, "age_seconds": 60}],
             assets=[{"name": "v", "kind": "volume", "series": "s1", "outcome": "written", "duration_seconds": 2.5}],
             checks=[{"name": "api", "type": "http", "status": "OK"}, {"name": "log", "matches": 3, "status": "WARNING"}]),
        _doc("02-02T02:00:00Z", report="dr_drill", host="h2", failure={"task": "t", "msg": "m"}, status="failed",
             assets=[{"name": "v", "kind": "volume", "rto_seconds": 12.0, "rpo_seconds": None, "ok": False}]),
        _doc("02-03T02:00:00Z", assets=[{"name": "v", "kind": "volume", "series": "s1", "outcome": "failed"}],
             checks=[{"name": "api", "type": "http", "status": "CRITICAL"}]),
    ]
    history = report_history(_texts(docs), NOW)
    (series,) = history["series"]
    assert series["label"] == "h1: s1" and [p["size_bytes"] for p in series["points"]] == [10]
    assert series["latest"]["duration_seconds"] == 2.5
    (asset,) = history["assets"]
    assert asset["label"] == "h2: v" and asset["points"][0]["rto_seconds"] == 12.0 and asset["points"][0]["ok"] is False
    checks = {c["label"]: c for c in history["checks"]}
    assert [p["state"] for p in checks["h1: api"]["points"]] == ["OK", "CRITICAL"] and checks["h1: log"]["kind"] == "logs"
    assert history["runs"][1]["failure"] == "t: m" and history["runs"][1]["page"] is None


@pytest.mark.parametrize("values, limit, label, marked_at_top", [
    ([12.0, 30.0], 14400.0, "target 4.0 h \u2191 off scale", True),   # seconds drawn on seconds
    ([30000.0, 95000.0], 86400.0, "target 24.0 h", False),
])
def test_timeline_scales_to_the_values(values, limit, label, marked_at_top):
    points = [{"at": "2026-02-%02dT00:00:00Z" % (i + 1), "v": v} for i, v in enumerate(values)] + [{"at": "2026-02-20T00:00:00Z", "v": None}]
    svg = svg_timeline(points, "v", "2026-02-01T00:00:00Z", NOW, limit=limit, title="t")
    circles = [float(y) for y in re.findall(r'<circle cx="[\d.]+" cy="([\d.]+)"', svg)]
    assert len(circles) == 2 and 112 - max(circles) > 5 and 112 - min(circles) > 60
    assert re.search(r'class="target-label"[^>]*>%s<' % re.escape(label), svg)
    target_y = float(re.search(r'class="target" d="M\d+ ([\d.]+)', svg).group(1))
    assert (target_y == 30) is marked_at_top
    assert "<script" not in svg


def test_states_and_bad_input():
    svg = svg_states([{"at": "2026-02-02T00:00:00Z", "state": "OK"}, {"at": "2026-02-03T00:00:00Z", "state": "failed"},
                      {"at": "2026-02-04T00:00:00Z", "state": ""}], "2026-02-01T00:00:00Z", NOW)
    assert re.findall(r'class="state-(\w+)"', svg) == ["OK", "failed"]
    with pytest.raises(AnsibleFilterError, match="until .* must be after since"):
        svg_states([], NOW, NOW)
    with pytest.raises(AnsibleFilterError, match="limit must be a positive whole number"):
        report_history([], NOW, limit=0)
    with pytest.raises(AnsibleFilterError, match="expected a list of file contents"):
        report_history("x", NOW)
