# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property-based tests of plan_rotation against a deliberately simple reference."""

from __future__ import annotations

import datetime
import zoneinfo

from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ansible_collections.opskit.runbook.plugins.module_utils._retention.plan import Backup, plan_rotation
from ansible_collections.opskit.runbook.plugins.module_utils._retention.policy import parse_policy
from ansible_collections.opskit.runbook.plugins.module_utils._timeutil import Duration

UTC = datetime.timezone.utc
START = datetime.datetime(2024, 12, 20, tzinfo=UTC)
SKEW = datetime.timedelta(minutes=5)
ZONES = ["UTC", "Europe/Berlin", "America/New_York"]


# ------------------------------------------------------- the simple reference

def _group_key(rule, when, tz):
    """Bucket identity as a tuple, computed independently of the module's string keys."""
    local = when.astimezone(tz)
    return {
        "hourly": (local.year, local.month, local.day, local.hour),
        "daily": (local.year, local.month, local.day),
        "weekly": tuple(local.isocalendar())[:2],
        "monthly": (local.year, local.month),
        "yearly": (local.year,),
    }[rule]


def reference(backups, options, now, verified=None, unreadable=None):
    """Which ids to keep, written as plainly as possible (set operations, no counters)."""
    tz = UTC if options.get("timezone", "UTC") == "UTC" else zoneinfo.ZoneInfo(options["timezone"])
    newest_first = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    future = [b for b in newest_first if b.created_at > now + SKEW]
    normal = [b for b in newest_first if b.created_at <= now + SKEW]
    keep = {b.id for b in future}
    for rule in ("last", "hourly", "daily", "weekly", "monthly", "yearly"):
        n = options.get("keep_" + rule) or 0
        if n == 0:
            continue
        if rule == "last":
            groups = [[b] for b in normal]
        else:
            by_key = {}
            for b in normal:
                by_key.setdefault(_group_key(rule, b.created_at, tz), []).append(b)
            groups = sorted(by_key.values(), key=lambda g: max(b.created_at for b in g), reverse=True)
        chosen = groups if n == -1 else groups[:n]
        keep |= {max(g, key=lambda b: (b.created_at, b.id)).id for g in chosen}
        if n > 0 and len(groups) < n and normal:
            keep.add(normal[-1].id)
    if options.get("keep_within") and normal:
        start = Duration.parse(options["keep_within"]).before(normal[0].created_at)
        keep |= {b.id for b in normal if b.created_at > start}
    keep |= {b.id for b in normal[:options.get("min_keep", 1)]}
    if verified is not None:
        position = [b.id for b in newest_first].index(verified)
        keep |= {b.id for b in newest_first[:position + 1]}
    if unreadable is not None:  # fail closed: the whole series
        keep |= {b.id for b in newest_first}
    return keep


# ------------------------------------------------------------------ strategies

# Mostly absent, so that sparse policies (one or two rules) are common.
counts = st.sampled_from([None] * 8 + [0, -1, 1, 2, 3, 4, 5, 7])
# Times on a grid (10 minutes to a week apart) so buckets hold several backups, rules run out
# or keep count left, and keep_within boundaries are hit exactly.
UNITS = {datetime.timedelta(minutes=10): "%dmin", datetime.timedelta(hours=1): "%dh",
         datetime.timedelta(hours=6): "%dh", datetime.timedelta(days=1): "%dd",
         datetime.timedelta(days=7): "%dw"}
# Starts near year turns (ISO week 53 / week 1) and daylight-saving changes, or anywhere.
ANCHORS = [datetime.datetime(2026, 12, 24, tzinfo=UTC), datetime.datetime(2024, 12, 27, tzinfo=UTC),
           datetime.datetime(2026, 3, 27, tzinfo=UTC), datetime.datetime(2026, 10, 23, tzinfo=UTC),
           datetime.datetime(2026, 10, 30, tzinfo=UTC)]


@st.composite
def histories(draw):
    unit = draw(st.sampled_from(sorted(UNITS)))
    start = draw(st.one_of(st.sampled_from(ANCHORS),
                           st.integers(0, 2 * 366 * 24).map(lambda h: START + datetime.timedelta(hours=h))))
    steps = draw(st.lists(st.integers(0, 120), min_size=0, max_size=40, unique=True))
    times = [start + unit * k for k in steps]
    return [Backup("%s-%08x" % (t.strftime("%Y%m%dT%H%M%SZ"), i), t) for i, t in enumerate(times)], unit


@st.composite
def policies(draw, unit):
    options = {name: draw(counts) for name in ("keep_last", "keep_hourly", "keep_daily", "keep_weekly",
                                               "keep_monthly", "keep_yearly")}
    multiple = UNITS[unit] % (draw(st.integers(1, 12)) * (6 if unit == datetime.timedelta(hours=6) else 1))
    options["keep_within"] = draw(st.sampled_from([None, multiple, multiple, "36h", "2w", "1m", "1y6m"]))
    options["timezone"] = draw(st.sampled_from(ZONES))
    options["min_keep"] = draw(st.integers(0, 6))
    assume(any(v for k, v in options.items() if k.startswith("keep_")))
    return options


@st.composite
def cases(draw):
    backups, unit = draw(histories())
    options = draw(policies(unit))
    if backups:
        newest = max(b.created_at for b in backups)
        now = newest + unit * draw(st.integers(-5, 3)) + datetime.timedelta(minutes=draw(st.sampled_from([0, -4, -6, 4])))
    else:
        now = START
    verified = draw(st.one_of(st.none(), st.sampled_from([b.id for b in backups]))) if backups else None
    return backups, options, now, verified


@st.composite
def single_rule_cases(draw):
    """One rule only (plus min_keep 0..1): every boundary of that rule is visible."""
    backups, unit = draw(histories())
    rule = draw(st.sampled_from(["keep_last", "keep_hourly", "keep_daily", "keep_weekly", "keep_monthly",
                                 "keep_yearly", "keep_within"]))
    if rule == "keep_within":
        value = UNITS[unit] % (draw(st.integers(1, 12)) * (6 if unit == datetime.timedelta(hours=6) else 1))
    else:
        value = draw(st.sampled_from([-1, 1, 2, 3, 5, 8]))
    options = {rule: value, "timezone": draw(st.sampled_from(ZONES)), "min_keep": draw(st.integers(0, 1))}
    now = max(b.created_at for b in backups) if backups else START
    return backups, options, now, None


SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REFERENCE_SETTINGS = settings(SETTINGS, max_examples=600)


@REFERENCE_SETTINGS
@given(st.one_of(cases(), single_rule_cases()))
def test_plan_equals_the_reference(case):
    backups, options, now, verified = case
    plan = plan_rotation(backups, parse_policy(**options), now, newest_verified=verified)
    kept = {b.id for b, _why in plan["kept"]}
    assert kept == reference(backups, options, now, verified)
    assert kept.isdisjoint(b.id for b in plan["deleted"])
    assert len(kept) + len(plan["deleted"]) == len(backups)


@SETTINGS
@given(cases())
def test_safety_properties(case):
    backups, options, now, verified = case
    plan = plan_rotation(backups, parse_policy(**options), now, newest_verified=verified)
    kept = [b for b, _why in plan["kept"]]
    ids = {b.id for b in kept}
    newest_first = sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)
    if backups:
        assert newest_first[0].id in ids
        normal = [b for b in newest_first if b.created_at <= now + SKEW]
        if normal:
            assert normal[0].id in ids, "the newest backup that is not future-dated is kept"
    assert len(ids) >= min(options["min_keep"], len(backups))
    normal = [b for b in newest_first if b.created_at <= now + SKEW]
    assert {b.id for b in normal[:options["min_keep"]]} <= ids, "the min_keep newest are always kept"
    if verified is not None:
        for b in newest_first:
            assert b.id in ids
            if b.id == verified:
                break
    assert all(why for _b, why in plan["kept"]), "every kept backup has a reason"
    assert [b.created_at for b in kept] == sorted((b.created_at for b in kept), reverse=True)


@SETTINGS
@given(cases())
def test_a_second_run_deletes_nothing(case):
    backups, options, now, verified = case
    policy = parse_policy(**options)
    first = plan_rotation(backups, policy, now, newest_verified=verified)
    survivors = [b for b, _why in first["kept"]]
    second = plan_rotation(survivors, policy, now, newest_verified=verified)
    assert second["deleted"] == []


@SETTINGS
@given(cases(), st.integers(0, 39))
def test_an_unreadable_manifest_keeps_the_whole_series(case, index):
    backups, options, now, verified = case
    assume(backups)
    unreadable = sorted(b.id for b in backups)[index % len(backups)]
    plan = plan_rotation(backups, parse_policy(**options), now, unreadable=unreadable)
    assert plan["deleted"] == []
    assert "manifest unreadable" in dict((b.id, why) for b, why in plan["kept"])[unreadable]
    assert {b.id for b, _why in plan["kept"]} == reference(backups, options, now, None, unreadable)
