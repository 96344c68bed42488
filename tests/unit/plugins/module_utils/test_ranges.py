# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nagios ranges, state evaluation and perfdata: tables from the plugin guidelines."""

from __future__ import annotations

import math

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._health.ranges import (
    CRITICAL, OK, UNKNOWN, WARNING, evaluate, format_number, parse_range, perfdata_item, worst)


@pytest.mark.parametrize("text, start, end, inside", [
    ("10", 0, 10, False),
    (10, 0, 10, False),
    (0.5, 0, 0.5, False),
    ("10:", 10, math.inf, False),
    ("~:10", -math.inf, 10, False),
    ("10:20", 10, 20, False),
    ("@10:20", 10, 20, True),
    ("@10", 0, 10, True),
    (":10", 0, 10, False),
    ("-5:5", -5, 5, False),
    ("~:", -math.inf, math.inf, False),
    ("1.5:2.5e1", 1.5, 25, False),
    (" 20: ", 20, math.inf, False),
])
def test_parse_range(text, start, end, inside):
    rng = parse_range(text)
    assert (rng.start, rng.end, rng.inside) == (start, end, inside)


@pytest.mark.parametrize("text", ["", "@", ":", "abc", "10:5", "10::20", "1,5", "~", "@~", "10ms", "5:~",
                                  None, True, [1], "--5"])
def test_bad_ranges_name_the_option(text):
    with pytest.raises(ConfigError) as err:
        parse_range(text, "check 'api' time_ms warning")
    assert "check 'api' time_ms warning" in str(err.value)


@pytest.mark.parametrize("text, value, alerts", [
    # the guideline table: "10" alerts if < 0 or > 10
    ("10", -1, True), ("10", 0, False), ("10", 10, False), ("10", 10.01, True),
    ("10:", 9.99, True), ("10:", 10, False), ("10:", 1e9, False),
    ("~:10", -1e9, False), ("~:10", 10, False), ("~:10", 11, True),
    ("10:20", 9, True), ("10:20", 10, False), ("10:20", 20, False), ("10:20", 21, True),
    ("@10:20", 9, False), ("@10:20", 10, True), ("@10:20", 15, True), ("@10:20", 20, True), ("@10:20", 20.5, False),
    ("~:", -1e300, False), ("@~:", 0, True),
])
def test_alerts(text, value, alerts):
    assert parse_range(text).alerts(value) is alerts


@pytest.mark.parametrize("value, warning, critical, state", [
    (50, "80", "95", OK),
    (85, "80", "95", WARNING),
    (99, "80", "95", CRITICAL),
    (15, "20:", "10:", WARNING),          # disk free %: warn under 20, crit under 10
    (5, "20:", "10:", CRITICAL),
    (25, "20:", "10:", OK),
    (99, None, None, OK),
    (99, "80", None, WARNING),
    (99, None, "80", CRITICAL),
    (5, "@0:10", "@0:3", WARNING),
    (2, "@0:10", "@0:3", CRITICAL),       # critical is evaluated first
])
def test_evaluate(value, warning, critical, state):
    rng = [parse_range(r) if r is not None else None for r in (warning, critical)]
    assert evaluate(value, *rng) == state


def test_worst_order():
    assert worst([]) == OK
    assert worst([OK, WARNING]) == WARNING
    assert worst([WARNING, UNKNOWN]) == UNKNOWN
    assert worst([UNKNOWN, CRITICAL, OK]) == CRITICAL


@pytest.mark.parametrize("args, expected", [
    (("time", 0.123, "s", parse_range("0.2"), parse_range("0.5"), 0), "'time'=0.123s;0.2;0.5;0"),
    (("disk_free", 23, "%", parse_range("20:"), parse_range("10:"), 0, 100), "'disk_free'=23%;20:;10:;0;100"),
    (("clients", 7), "'clients'=7"),
    (("it's", 1.0), "'it''s'=1"),
    (("x", 5, "", None, parse_range("10")), "'x'=5;;10"),
])
def test_perfdata(args, expected):
    assert perfdata_item(*args) == expected


@pytest.mark.parametrize("number, text", [(1, "1"), (1.0, "1"), (0.1234567, "0.123457"), (-2.5, "-2.5"),
                                          (-math.inf, "~"), (1e20, "100000000000000000000")])
def test_format_number(number, text):
    assert format_number(number) == text
