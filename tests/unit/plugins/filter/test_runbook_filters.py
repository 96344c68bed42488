# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runbook filters: duration_seconds, elapsed, health_failing, health_worst,
connection_options, backup_rows, svg_bars, secret_env."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import xml.etree.ElementTree as ET

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.filter.runbook import (  # noqa: I001
    asset_outcomes, failure_lines, run_failure,
    FilterModule, backup_rows, connection_options, duration_seconds, elapsed, health_failing, health_worst,
    secret_env, svg_bars)

SVG = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize("value, seconds", [
    ("4h", 14400.0),
    ("24h", 86400.0),
    ("1d12h", 129600.0),
    ("90min", 5400.0),
    ("2w", 1209600.0),
    ("30s", 30.0),
    (42, 42.0),
    (1.5, 1.5),
])
def test_duration_seconds(value, seconds):
    assert duration_seconds(value) == seconds


def test_duration_seconds_months_are_calendar_months():
    assert 28 * 86400 <= duration_seconds("1m") <= 31 * 86400


@pytest.mark.parametrize("value", ["", "4 hours", "h4", "4x", True, None, "-1h"])
def test_duration_seconds_rejects(value):
    with pytest.raises(AnsibleFilterError):
        duration_seconds(value)


SERIES = {
    "web1-pg-app": {"count": 3, "total_size_bytes": 300, "newest_age_seconds": 60, "stale": False,
                    "newest": {"id": "20261123T020000Z-aaaaaaaa", "kind": "postgres", "size_bytes": 100,
                               "created_at": "2026-11-23T02:00:00Z"},
                    "newest_verified": {"id": "20261122T020000Z-bbbbbbbb"}, "newest_verified_age_seconds": 86460},
    "web1-vol-data": {"count": 1, "total_size_bytes": 7, "newest_age_seconds": 99999, "stale": True,
                      "newest": {"id": "20261121T020000Z-cccccccc", "kind": "volume", "size_bytes": 7,
                                 "created_at": "2026-11-21T02:00:00Z"},
                      "newest_verified": None, "newest_verified_age_seconds": None},
}


def test_backup_rows_flattens_sorted():
    rows = backup_rows(SERIES)
    assert [r["series"] for r in rows] == ["web1-pg-app", "web1-vol-data"]
    assert rows[0] == {"series": "web1-pg-app", "kind": "postgres", "id": "20261123T020000Z-aaaaaaaa",
                       "created_at": "2026-11-23T02:00:00Z", "age_seconds": 60, "size_bytes": 100, "count": 3,
                       "total_size_bytes": 300, "verified_id": "20261122T020000Z-bbbbbbbb",
                       "verified_age_seconds": 86460, "stale": False}
    assert rows[1]["verified_id"] is None and rows[1]["stale"] is True


@pytest.mark.parametrize("only, expected", [
    (None, ["web1-pg-app", "web1-vol-data"]),
    (["web1-vol-data"], ["web1-vol-data"]),
    ([], []),
    (["other"], []),
])
def test_backup_rows_only(only, expected):
    assert [r["series"] for r in backup_rows(SERIES, only)] == expected


def test_backup_rows_rejects_a_list():
    with pytest.raises(AnsibleFilterError, match="series dict"):
        backup_rows([1, 2])


def _bars(svg):
    root = ET.fromstring(svg)
    return root, list(root.iter(SVG + "rect"))


def test_svg_bars_scales_to_the_largest_value():
    svg = svg_bars([{"name": "a", "seconds": 10}, {"name": "b", "seconds": 5}, {"name": "c", "seconds": 0}])
    root, rects = _bars(svg)
    widths = [float(r.get("width")) for r in rects]
    assert widths[0] == pytest.approx(2 * widths[1]) and widths[2] == 0
    assert root.get("width") == "640"
    assert not list(root.iter(SVG + "line"))  # no limit, no target line
    assert {r.get("fill") for r in rects} == {"#1565c0"}


@pytest.mark.parametrize("limit, colours", [
    ("4h", ["#2e7d32", "#c62828"]),
    (14400, ["#2e7d32", "#c62828"]),
    ("10h", ["#2e7d32", "#2e7d32"]),
])
def test_svg_bars_limit_colours_and_line(limit, colours):
    svg = svg_bars([{"name": "db", "rto_seconds": 600}, {"name": "vol", "rto_seconds": 5 * 3600}],
                   value="rto_seconds", limit=limit, title="RTO")
    root, rects = _bars(svg)
    assert [r.get("fill") for r in rects] == colours
    assert len(list(root.iter(SVG + "line"))) == 1
    assert "RTO" in svg


def test_svg_bars_escapes_labels():
    svg = svg_bars([{"name": "<script>alert(1)</script>", "seconds": 1}], title="a & b")
    assert "<script>" not in svg and "&lt;script&gt;" in svg and "a &amp; b" in svg
    ET.fromstring(svg)


def test_svg_bars_formats_seconds():
    svg = svg_bars([{"name": "a", "seconds": 1.234}, {"name": "b", "seconds": 600}, {"name": "c", "seconds": 10800}])
    texts = re.findall(r">([0-9.]+ (?:s|min|h))<", svg)
    assert texts == ["1.23 s", "10.0 min", "3.0 h"]


def test_svg_bars_empty_list():
    root, rects = _bars(svg_bars([]))
    assert rects == []


@pytest.mark.parametrize("items, message", [
    ("nope", "expected a list"),
    ([1], "item 0 is not a dict"),
    ([{"name": "a"}], "no numeric 'seconds'"),
    ([{"name": "a", "seconds": "fast"}], "not a number"),
    ([{"name": "a", "seconds": True}], "no numeric"),
])
def test_svg_bars_rejects_bad_items(items, message):
    with pytest.raises(AnsibleFilterError, match=message):
        svg_bars(items)


def test_filter_module_exports():
    assert set(FilterModule().filters()) == {"duration_seconds", "elapsed", "health_failing", "health_worst",
                                             "connection_options", "svg_bars", "backup_rows", "secret_env",
                                             "asset_outcomes", "failure_lines", "run_failure"}


@pytest.mark.parametrize("started", [lambda now: now - 2.5, lambda now: str(now - 2.5)])
def test_elapsed_counts_from_a_timestamp_or_its_string(started):
    seconds = elapsed(started(time.time()))
    assert 2.5 <= seconds < 5 and seconds == round(seconds, 3)


@pytest.mark.parametrize("value", [None, "", "yesterday", True, [1]])
def test_elapsed_rejects(value):
    with pytest.raises(AnsibleFilterError, match="elapsed"):
        elapsed(value)


# the verdict of health_check's fail_on, as the roles' asserts used to spell it in Jinja
@pytest.mark.parametrize("status, fail_on, fails", [
    ("OK", "critical", False), ("WARNING", "critical", False), ("UNKNOWN", "critical", True), ("CRITICAL", "critical", True),
    ("OK", "warning", False), ("WARNING", "warning", True), ("UNKNOWN", "warning", True), ("CRITICAL", "warning", True),
    ("OK", "never", False), ("WARNING", "never", False), ("UNKNOWN", "never", False), ("CRITICAL", "never", False),
])
def test_health_failing(status, fail_on, fails):
    assert health_failing(status, fail_on) is fails


@pytest.mark.parametrize("status, fail_on, message", [
    ("FINE", "critical", "'FINE' is not a state"),
    ("OK", "sometimes", "fail_on must be one of critical, warning, never"),
])
def test_health_failing_rejects(status, fail_on, message):
    with pytest.raises(AnsibleFilterError, match=message):
        health_failing(status, fail_on)


@pytest.mark.parametrize("states, expected", [
    ([], "OK"),
    (["OK", "WARNING"], "WARNING"),
    (["WARNING", "UNKNOWN", "OK"], "UNKNOWN"),
    (["UNKNOWN", "CRITICAL"], "CRITICAL"),
])
def test_health_worst(states, expected):
    assert health_worst(states) == expected


@pytest.mark.parametrize("states", ["OK", ["OK", "BAD"], [["OK"]]])
def test_health_worst_rejects(states):
    with pytest.raises(AnsibleFilterError, match="health_worst"):
        health_worst(states)


def test_connection_options_keep_the_fragment_options_only():
    pg = {"host": "db", "port": 5433, "user": "backup", "password": "pw", "sslmode": "require",
          "bin_dir": "/usr/lib/postgresql/16/bin", "docker_container": "pg", "docker_user": "postgres"}
    assert connection_options(pg, "postgres") == {"host": "db", "port": 5433, "user": "backup", "password": "pw",
                                                  "sslmode": "require"}
    docker = {"docker_host": "tcp://d:2376", "tls": True, "client_cert": "/c.pem", "other": 1}
    assert connection_options(docker, "docker") == {"docker_host": "tcp://d:2376", "tls": True, "client_cert": "/c.pem"}
    assert connection_options({}, "docker") == {}


@pytest.mark.parametrize("value, kind, message", [
    ({}, "storage", "kind must be one of docker, postgres"),
    ("host=db", "postgres", "expected a dict, got str"),
])
def test_connection_options_rejects(value, kind, message):
    with pytest.raises(AnsibleFilterError, match=message):
        connection_options(value, kind)


def test_secret_env_passes_the_file_content_through_the_environment_only(tmp_path):
    secret = "p@ss w'o\"rd:$(id)`x`\\;*"
    path = tmp_path / "secret"
    path.write_text(secret)
    probe = [sys.executable, "-c", "import os, sys; sys.stdout.write(os.environ['PGPASSWORD'] + '|' + repr(sys.argv[1:]))", "a b"]
    argv = secret_env(probe, "PGPASSWORD", str(path))
    assert secret not in " ".join(argv) and str(path) in argv
    out = subprocess.run(argv, capture_output=True, text=True, check=True, env=dict(os.environ, PGPASSWORD="")).stdout
    assert out == secret + "|['a b']"  # the exact secret (no shell expansion), the arguments untouched


def test_secret_env_fails_when_the_file_is_gone(tmp_path):
    argv = secret_env(["true"], "REDISCLI_AUTH", str(tmp_path / "missing"))
    assert subprocess.run(argv, capture_output=True, check=False).returncode == 125  # the command never runs


def test_secret_env_without_a_file_keeps_the_command():
    assert secret_env(["redis-cli", "PING"], "REDISCLI_AUTH", "") == ["redis-cli", "PING"]
    assert secret_env(("psql",), "PGPASSWORD", None) == ["psql"]


@pytest.mark.parametrize("argv, name, path, words", [
    ("psql -c 'SELECT 1'", "PGPASSWORD", "/tmp/x", "list of strings"),
    ([], "PGPASSWORD", "/tmp/x", "list of strings"),
    (["psql", 5], "PGPASSWORD", "/tmp/x", "list of strings"),
    (["psql"], "PG PASSWORD", "/tmp/x", "not an environment variable name"),
    (["psql"], "X=1", "/tmp/x", "not an environment variable name"),
    (["psql"], None, "/tmp/x", "not an environment variable name"),
    (["psql"], "PGPASSWORD", "relative/file", "absolute path"),
    (["psql"], "PGPASSWORD", 42, "absolute path"),
])
def test_secret_env_refuses_bad_input(argv, name, path, words):
    with pytest.raises(AnsibleFilterError, match=words):
        secret_env(argv, name, path)


# ------------------------------------------------------------------ asset_outcomes, failure_lines, run_failure


def test_asset_outcomes_one_row_per_asset():
    registered = {"results": [
        {"item": {"name": "app"}, "backups": [{"id": "b1", "size_bytes": 3}]},
        {"item": {"name": "crm"}, "failed": True, "msg": "cannot\nconnect"},
        {"item": {"name": "dry"}, "plan": [{}]},
        {"item": {"name": "off"}, "skipped": True}]}
    rows = asset_outcomes(registered, "postgres", "h-pg-{name}")
    assert [(r["name"], r["series"], r["outcome"]) for r in rows] == [
        ("app", "h-pg-app", "written"), ("crm", "h-pg-crm", "failed"), ("dry", "h-pg-dry", "planned"),
        ("off", "h-pg-off", "skipped")]
    assert rows[0]["backup_id"] == "b1" and rows[1]["error"] == "cannot connect"
    assert failure_lines(rows) == ["postgres crm: cannot connect"]
    assert asset_outcomes({}, "volume", "{name}") == []


@pytest.mark.parametrize("bad", [None, [], {"results": "x"}, {"results": [1]}])
def test_asset_outcomes_rejects_what_is_not_a_loop(bad):
    with pytest.raises(AnsibleFilterError):
        asset_outcomes(bad, "volume", "{name}")


def test_run_failure_combines_every_phase():
    assert run_failure([]) == {}
    one = run_failure([{"task": "Lock | it is ours", "msg": "run lock x is held"}])
    assert one["task"] == "Lock | it is ours" and one["msg"] == "run lock x is held"
    two = run_failure([{"phase": "health", "task": "Verdict", "msg": "health: CRITICAL api"},
                       {"phase": "backup", "task": "Verdict", "msg": "redis cache: down"}])
    assert two["task"] == "Verdict" and two["msg"] == "health: CRITICAL api; redis cache: down"
    assert len(two["failures"]) == 2
    with pytest.raises(AnsibleFilterError):
        run_failure("x")
