# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A retention policy: the keep_* counts, keep_within, the timezone of the buckets, min_keep.

``parse_policy`` validates the module options and refuses an empty policy; ``bucket_key`` is
the bucket of a backup for one rule (plan.py describes how the rules use them).
"""

from __future__ import annotations

import datetime

from .._errors import ConfigError
from .._imports import Library
from .._timeutil import Duration

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
UTC = datetime.timezone.utc
ZONEINFO = Library("zoneinfo")  # the standard library from Python 3.9 on


class Policy:
    """A validated retention policy. Build it with ``parse_policy``."""

    def __init__(self, counts, within=None, tz=None, tz_name="UTC", min_keep=1):
        self.counts = counts
        self.within = within
        self.tz = tz or UTC
        self.tz_name = tz_name
        self.min_keep = min_keep

    def describe(self):
        out = {"keep_%s" % rule: n for rule, n in self.counts.items()}
        out.update(keep_within=str(self.within) if self.within else None,
                   timezone=self.tz_name, min_keep=self.min_keep)
        return out


def load_timezone(name):
    if name in (None, "", "UTC", "utc", "Z"):
        return UTC
    if not ZONEINFO.available:  # pragma: no cover
        raise ConfigError("timezone %s needs Python 3.9+ (zoneinfo); use UTC" % name)
    zoneinfo = ZONEINFO.load()
    try:
        return zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError) as exc:
        raise ConfigError("timezone %r is unknown: use an IANA name such as Europe/Berlin or"
                          " America/New_York (default UTC)" % (name,)) from exc


def _count(rule, value):
    """A keep_<rule> option's value, checked: None, 0 or more, or -1 (unlimited)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError("keep_%s: %r is not a count" % (rule, value))
    if value < -1:
        raise ConfigError("keep_%s: %d is not valid: use a count of 0 or more, or -1 for"
                          " unlimited" % (rule, value))
    return value


def parse_policy(keep_last=None, keep_hourly=None, keep_daily=None, keep_weekly=None,
                 keep_monthly=None, keep_yearly=None, keep_within=None, timezone="UTC",
                 min_keep=1):
    """Validate the options and return a Policy; an empty policy is refused."""
    given = dict(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                 monthly=keep_monthly, yearly=keep_yearly)
    counts = {rule: given[rule] for rule in RULES
              if given[rule] is not None and _count(rule, given[rule])}
    within = Duration.parse(keep_within, "keep_within") if keep_within not in (None, "") else None
    if not counts and within is None:
        raise ConfigError("empty retention policy: set at least one of keep_last, keep_hourly,"
                          " keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within"
                          " (an empty policy is never read as 'delete everything')")
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
        raise ConfigError("min_keep: %r is not valid: use a count of 0 or more" % (min_keep,))
    return Policy(counts, within, load_timezone(timezone), timezone or "UTC", min_keep)


def bucket_key(rule, when, tz, position):
    """The bucket of a backup for ``rule``, in ``tz`` (position: index newest first)."""
    if rule == "last":
        return str(position + 1)
    local = when.astimezone(tz)
    if rule == "hourly":
        return local.strftime("%Y-%m-%d %H")
    if rule == "daily":
        return local.strftime("%Y-%m-%d")
    if rule == "weekly":
        year, week, _day = local.isocalendar()
        return "%04d-W%02d" % (year, week)
    if rule == "monthly":
        return local.strftime("%Y-%m")
    if rule == "yearly":
        return local.strftime("%Y")
    raise ValueError(rule)
