# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Durations, timeouts and counts from user input: bad values are one-line ConfigErrors."""

from __future__ import annotations

import datetime

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._timeutil import (
    UTC, Duration, int_option, seconds_option)

AT = datetime.datetime(2026, 8, 31, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize("value, message", [
    (float("nan"), "orphan_grace: cannot parse duration nan"),
    (float("inf"), "orphan_grace: cannot parse duration inf"),
    (-5, "orphan_grace: cannot parse duration -5"),
    ("-5d", "orphan_grace: cannot parse duration '-5d'"),
    ("1x", "orphan_grace: cannot parse duration '1x'"),
    ("", "orphan_grace: cannot parse duration ''"),
    ("0d", "orphan_grace: cannot parse duration '0d'"),
    ("99999999999999999999d", "orphan_grace: duration '99999999999999999999d' is too long (at most 200 years)"),
    ("3000y", "orphan_grace: duration '3000y' is too long"),
    ("100000000m", "orphan_grace: duration '100000000m' is too long"),
    (10 ** 30, "orphan_grace: duration '1000000000000000000000000000000s' is too long"),
    ("x" * 500, "orphan_grace: cannot parse duration 'xxxx"),
])
def test_bad_durations_are_one_line_config_errors(value, message):
    with pytest.raises(ConfigError) as err:
        Duration.parse(value, "orphan_grace")
    assert str(err.value).startswith(message)
    assert "\n" not in str(err.value) and len(str(err.value)) < 300


@pytest.mark.parametrize("text", ["200y", "2400m", "10400w", "72000d", "1y6m", "36h", "90min", 3600, 1.5])
def test_long_but_sane_durations_compute(text):
    duration = Duration.parse(text, "keep_within")
    assert duration.before(AT) < AT
    assert duration.seconds(AT) > 0


@pytest.mark.parametrize("value, kwargs, message", [
    (float("nan"), {}, "timeout must be a number of seconds >= 0 and <= 604800, got nan"),
    (float("inf"), {}, "timeout must be a number of seconds >= 0 and <= 604800, got inf"),
    (float("-inf"), {}, "got -inf"),
    (-1, {}, "got -1"),
    (1e400, {}, "got inf"),
    (10 ** 400, {}, "got 1000"),
    (604801, {}, "got 604801"),
    ("1x", {}, "got '1x'"),
    ("", {}, "got ''"),
    (None, {}, "got None"),
    (True, {}, "got True"),
    (0, {"exclusive": True}, "timeout must be a number of seconds > 0 and <= 604800, got 0"),
])
def test_bad_seconds_are_refused(value, kwargs, message):
    with pytest.raises(ConfigError) as err:
        seconds_option(value, "timeout", **kwargs)
    assert message in str(err.value) and str(err.value).startswith("timeout ")


@pytest.mark.parametrize("value, expected", [(0, 0.0), ("2.5", 2.5), (604800, 604800.0)])
def test_good_seconds(value, expected):
    assert seconds_option(value, "timeout") == expected


@pytest.mark.parametrize("value", [0, 65, -1, 1.5, float("nan"), float("inf"), 10 ** 400, "many", "", None, True])
def test_bad_counts_are_refused(value):
    with pytest.raises(ConfigError, match=r"^jobs must be an integer from 1 to 64, got "):
        int_option(value, "jobs", 1, 64)


@pytest.mark.parametrize("value, expected", [(1, 1), (64, 64), ("8", 8), (4.0, 4)])
def test_good_counts(value, expected):
    assert int_option(value, "jobs", 1, 64) == expected
