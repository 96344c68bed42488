# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention decision as tables, and the apply step on a real directory."""

from __future__ import annotations

import datetime
import os

import pytest
import yaml

from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._retention import apply
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation
from ansible_collections.opskit.runbook.plugins.module_utils._errors import (
    ConfigError, NotFoundError, StorageError)
from ansible_collections.opskit.runbook.plugins.module_utils._retention.plan import Backup, plan_rotation
from ansible_collections.opskit.runbook.plugins.module_utils._retention.policy import parse_policy

UTC = datetime.timezone.utc


def T(text):
    """'2026-11-20 02:00' (UTC) -> aware datetime."""
    return datetime.datetime.strptime(text, "%Y-%m-%d %H:%M").replace(tzinfo=UTC)


def backups_at(*texts):
    return [Backup("%s-%08x" % (T(t).strftime("%Y%m%dT%H%M%SZ"), i), T(t)) for i, t in enumerate(texts)]


def daily(start, days, hour="02:00"):
    first = T("%s %s" % (start, hour))
    return [first + datetime.timedelta(days=i) for i in range(days)]


def as_backups(times):
    return [Backup("%s-%08x" % (t.strftime("%Y%m%dT%H%M%SZ"), i), t) for i, t in enumerate(times)]


def kept_times(plan):
    return [b.created_at.strftime("%Y-%m-%d %H:%M") for b, _why in plan["kept"]]


def reasons_of(plan):
    return {b.created_at.strftime("%Y-%m-%d %H:%M"): why for b, why in plan["kept"]}


NOW = T("2030-01-01 00:00")


def _table():
    """The cases of retention_table.yml as (name, times, options, now, expected kept times)."""
    with open(os.path.join(os.path.dirname(__file__), "retention_table.yml")) as fh:
        cases = yaml.safe_load(fh)
    rows = []
    for case in cases:
        times = case.get("times") or [t.strftime("%Y-%m-%d %H:%M") for t in daily(*case["daily"])]
        now = T(case["now"]) if "now" in case else NOW
        rows.append((case["name"], times, case["policy"], now, case["kept"]))
    return rows


TABLE = _table()


@pytest.mark.parametrize("name, times, options, now, expected", TABLE, ids=[row[0] for row in TABLE])
def test_plan_table(name, times, options, now, expected):
    plan = plan_rotation(backups_at(*times), parse_policy(**options), now)
    assert kept_times(plan) == expected
    deleted = sorted(b.created_at.strftime("%Y-%m-%d %H:%M") for b in plan["deleted"])
    assert deleted == sorted(set(times) - set(expected))
    assert all(why for _b, why in plan["kept"])


def test_reasons_name_rule_and_bucket():
    times = [t.strftime("%Y-%m-%d %H:%M") for t in daily("2026-09-22", 60)]
    plan = plan_rotation(backups_at(*times), parse_policy(keep_last=1, keep_daily=2, keep_weekly=2,
                                                          keep_monthly=2), T("2026-11-21 03:00"))
    why = reasons_of(plan)
    assert why["2026-11-20 02:00"] == ["last 1", "daily 2026-11-20", "weekly 2026-W47", "monthly 2026-11"]
    assert why["2026-11-19 02:00"] == ["daily 2026-11-19"]
    assert why["2026-11-15 02:00"] == ["weekly 2026-W46"]
    assert why["2026-10-31 02:00"] == ["monthly 2026-10"]
    assert set(why) == {"2026-11-20 02:00", "2026-11-19 02:00", "2026-11-15 02:00", "2026-10-31 02:00"}


def test_reasons_of_oldest_within_min_keep_and_week_53():
    plan = plan_rotation(backups_at("2026-12-29 00:00", "2027-01-02 00:00"),
                         parse_policy(keep_weekly=5), NOW)
    assert reasons_of(plan) == {"2027-01-02 00:00": ["weekly 2026-W53"],
                                "2026-12-29 00:00": ["oldest weekly"]}
    plan = plan_rotation(backups_at("2026-11-18 00:00", "2026-11-19 00:00", "2026-11-20 00:00"),
                         parse_policy(keep_within="30h", min_keep=3), NOW)
    assert reasons_of(plan) == {"2026-11-20 00:00": ["within 30h"], "2026-11-19 00:00": ["within 30h"],
                                "2026-11-18 00:00": ["min_keep 3"]}


# Daylight saving in Europe/Berlin. 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC).
# A job at 22:30 UTC runs at 00:30 local in summer and 23:30 local in winter: around the change
# two backups fall on the same local day (10-25) and none on 10-24.
DST_TIMES = ["2026-10-22 22:30", "2026-10-23 22:30", "2026-10-24 22:30", "2026-10-25 22:30"]


@pytest.mark.parametrize("tz, expected, reason", [
    ("UTC", ["2026-10-25 22:30", "2026-10-24 22:30"], "daily 2026-10-25"),
    ("Europe/Berlin", ["2026-10-25 22:30", "2026-10-23 22:30"], "daily 2026-10-25"),
    ("America/New_York", ["2026-10-25 22:30", "2026-10-24 22:30"], "daily 2026-10-25"),
])
def test_daily_buckets_follow_the_timezone_across_dst(tz, expected, reason):
    plan = plan_rotation(backups_at(*DST_TIMES), parse_policy(keep_daily=2, timezone=tz), NOW)
    assert kept_times(plan) == expected
    assert plan["kept"][0][1] == [reason]


def test_dst_fall_back_repeats_a_local_hour():
    # 00:30 UTC = 02:30 CEST and 01:30 UTC = 02:30 CET: one local hour bucket in Berlin.
    times = ["2026-10-25 00:30", "2026-10-25 01:30", "2026-10-25 02:30"]
    berlin = plan_rotation(backups_at(*times), parse_policy(keep_hourly=2, timezone="Europe/Berlin"), NOW)
    assert reasons_of(berlin) == {"2026-10-25 02:30": ["hourly 2026-10-25 03"],
                                  "2026-10-25 01:30": ["hourly 2026-10-25 02"]}
    utc = plan_rotation(backups_at(*times), parse_policy(keep_hourly=3), NOW)
    assert len(utc["kept"]) == 3


def test_spring_forward_week_and_day_keys_in_local_time():
    # 2026-03-29 02:00 CET -> 03:00 CEST; 2026-03-29 is a Sunday (end of ISO week 13).
    # 22:30 UTC on Sunday is 00:30 CEST on Monday: week 14 in Berlin, week 13 in UTC.
    plan = plan_rotation(backups_at("2026-03-29 22:30"), parse_policy(keep_weekly=1, keep_daily=1,
                                                                      timezone="Europe/Berlin"), NOW)
    assert plan["kept"][0][1] == ["daily 2026-03-30", "weekly 2026-W14"]
    plan = plan_rotation(backups_at("2026-03-29 22:30"), parse_policy(keep_weekly=1, keep_daily=1), NOW)
    assert plan["kept"][0][1] == ["daily 2026-03-29", "weekly 2026-W13"]


def test_future_dated_backups_are_anomalies():
    plan = plan_rotation(backups_at("2026-11-19 00:00", "2026-11-20 00:00", "2031-01-01 00:00"),
                         parse_policy(keep_last=1), T("2026-11-20 06:00"))
    assert [a["id"][:15] for a in plan["anomalies"]] == ["20310101T000000"]
    assert "future" in plan["anomalies"][0]["problem"]
    assert reasons_of(plan)["2031-01-01 00:00"] == ["future-dated"]
    assert reasons_of(plan)["2026-11-20 00:00"] == ["last 1"]


@pytest.mark.parametrize("verified_index, kept", [
    (None, 2),   # no verified backup: the policy alone
    (0, 2),      # the newest is verified: nothing to add
    (1, 2),      # kept by the policy anyway
    (3, 4),      # the 4th newest is verified: it and the two between are kept
    (5, 6),      # the oldest is verified: everything is kept
])
def test_newest_verified_and_every_newer_backup_are_kept(verified_index, kept):
    items = as_backups(daily("2026-11-01", 6))
    ordered = sorted(items, key=lambda b: b.created_at, reverse=True)
    verified = None if verified_index is None else ordered[verified_index].id
    plan = plan_rotation(items, parse_policy(keep_last=2), NOW, newest_verified=verified)
    assert [b.id for b, _w in plan["kept"]] == [b.id for b in ordered[:kept]]
    if verified_index == 3:
        assert plan["kept"][3][1] == ["newest verified"]
        assert plan["kept"][2][1] == ["newer than the newest verified"]


def test_holds_are_kept_with_their_reason():
    items = as_backups(daily("2026-11-01", 4))
    oldest = min(items, key=lambda b: b.created_at)
    plan = plan_rotation(items, parse_policy(keep_last=1), NOW,
                         holds={oldest.id: "legal hold", "unknown-id": "ignored"})
    assert [why for b, why in plan["kept"] if b.id == oldest.id] == [["legal hold"]]
    assert len(plan["deleted"]) == 2


def test_empty_series_plans_nothing():
    plan = plan_rotation([], parse_policy(keep_last=3), NOW)
    assert plan == {"kept": [], "deleted": [], "anomalies": []}


# ----------------------------------------------------------------- bad input

@pytest.mark.parametrize("options, message", [
    ({}, "empty retention policy"),
    (dict(keep_last=0, keep_daily=0), "empty retention policy"),
    (dict(keep_within=""), "empty retention policy"),
    (dict(keep_daily=-2), "keep_daily: -2 is not valid"),
    (dict(keep_last=-5, keep_daily=3), "keep_last: -5 is not valid"),
    (dict(keep_weekly=True), "keep_weekly: True is not a count"),
    (dict(keep_within="30 days"), "keep_within: cannot parse duration '30 days'"),
    (dict(keep_within="abc"), "keep_within: cannot parse duration"),
    (dict(keep_within="0d"), "keep_within: cannot parse duration"),
    (dict(keep_daily=7, timezone="Mars/Olympus_Mons"), "timezone 'Mars/Olympus_Mons' is unknown"),
    (dict(keep_daily=7, timezone="../../etc/passwd"), "is unknown"),
    (dict(keep_daily=7, min_keep=-1), "min_keep: -1 is not valid"),
])
def test_bad_policies_are_one_line_errors(options, message):
    with pytest.raises(ConfigError) as exc:
        parse_policy(**options)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_timezones_parse():
    assert parse_policy(keep_daily=1).tz is UTC
    assert str(parse_policy(keep_daily=1, timezone="Europe/Berlin").tz) == "Europe/Berlin"


# ------------------------------------------------- apply step on a real directory

class Recording(FileLocation):
    """A real directory that records delete calls and manifest reads (and can fail deletes)."""

    def __init__(self, root, fail=()):
        super().__init__(root)
        self.deletes, self.reads, self.fail = [], [], set(fail)

    def delete(self, keys):
        keys = list(keys)
        self.deletes.append(keys)
        failed = [(k, "Permission denied") for k in keys if k in self.fail]
        return failed + super().delete([k for k in keys if k not in self.fail])

    def read_bytes(self, key):
        self.reads.append(key)
        return super().read_bytes(key)


def write_backup(location, series, when, verified=False):
    with BackupSession(location, series, "generic", compression="none", now=when) as session:
        with session.artifact("bin") as out:
            out.write(b"data " + when.isoformat().encode())
        with session.artifact("txt", name="globals") as out:
            out.write(b"globals")
        manifest = session.publish()
    if verified:
        manifest = catalog.update_verification(location, manifest, "restore", "passed")
    return manifest


def age(location, key, when):
    stamp = when.timestamp()
    os.utime(location.path(key), (stamp, stamp))


@pytest.fixture
def store(tmp_path):
    loc = Recording(str(tmp_path / "backups"))
    for when in daily("2026-11-01", 10):
        write_backup(loc, "db1", when)
    for when in daily("2026-11-01", 3):
        write_backup(loc, "db2", when)
    return loc


def keys_of(location):
    return sorted(i.key for i in location.list_objects())


def test_rotate_check_mode_then_apply_then_nothing(store):
    policy = parse_policy(keep_last=3)
    now = T("2026-11-10 06:00")
    before = keys_of(store)
    checked = apply.rotate(store, policy, check_mode=True, now=now)
    assert checked["changed"] is True
    assert store.deletes == [] and keys_of(store) == before
    assert checked["series"]["db1"]["counts"]["deleted"] == 7
    assert checked["series"]["db2"]["counts"]["deleted"] == 0
    applied = apply.rotate(store, policy, now=now)
    assert applied["series"] == checked["series"]
    # artifacts first (2 per backup), then the manifests in a separate later call
    assert len(store.deletes) == 2
    assert all(not k.endswith(".manifest.json") for k in store.deletes[0]) and len(store.deletes[0]) == 14
    assert all(k.endswith(".manifest.json") for k in store.deletes[1]) and len(store.deletes[1]) == 7
    assert len(keys_of(store)) == len(before) - 21
    again = apply.rotate(store, policy, now=now)
    assert again["changed"] is False
    assert again["series"]["db1"]["counts"] == dict(backups=3, kept=3, deleted=0, locked=0, orphans_deleted=0,
                                                    orphans_kept=0, uploads_aborted=0, anomalies=0)
    diff = apply.diff_lists(checked)
    assert diff["before"].count("\n") == 13 and diff["after"].count("\n") == 6
    assert "db1/20261110T020000Z-" in diff["after"]


def test_manifest_reads_stop_at_the_newest_verified(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    times = daily("2026-09-01", 60)
    ids = [write_backup(loc, "db", when, verified=(i == 40))["id"] for i, when in enumerate(times)]
    now = T("2026-11-01 00:00")
    res = apply.rotate(loc, parse_policy(keep_last=2), check_mode=True, now=now)
    series = res["series"]["db"]
    assert series["newest_verified"] == ids[40]
    assert series["counts"]["kept"] == 20  # the verified one (20th newest) and the 19 newer
    assert series["manifests_read"] == 32  # two batches of 16, not 60
    assert len(loc.reads) == 32
    # nothing to delete: no manifest is read at all
    loc.reads.clear()
    res = apply.rotate(loc, parse_policy(keep_last=-1), check_mode=True, now=now)
    assert loc.reads == [] and res["series"]["db"]["manifests_read"] == 0
    # a bounded lookback that does not reach the verified backup leaves the guard out
    res = apply.rotate(loc, parse_policy(keep_last=2), check_mode=True, now=now, verified_lookback=10)
    assert res["series"]["db"]["newest_verified"] is None
    assert res["series"]["db"]["manifests_read"] == 10
    assert res["series"]["db"]["counts"]["kept"] == 2


def test_orphans_respect_the_grace_and_partial_files(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    for when in daily("2026-11-01", 3):
        write_backup(loc, "db", when)
    now = T("2026-11-10 00:00")
    old = "db/20261105T020000Z-0000abcd.bin"
    loc.write_bytes(old, b"x")
    young = "db/20261109T230000Z-0000ef01.bin"
    loc.write_bytes(young, b"y")
    partial = "db/.20261105T030000Z-00001234.bin.partial-deadbeef"
    with open(loc.path(partial), "wb") as fh:
        fh.write(b"z")
    age(loc, old, T("2026-11-05 02:00"))
    age(loc, partial, T("2026-11-05 03:00"))
    age(loc, young, T("2026-11-09 23:00"))
    res = apply.rotate(loc, parse_policy(keep_last=10), now=now)
    actions = {o["key"]: o["action"] for o in res["series"]["db"]["orphans"]}
    assert actions == {old: "deleted", young: "kept", partial: "deleted"}
    assert res["changed"] is True
    assert not os.path.exists(loc.path(old)) and not os.path.exists(loc.path(partial))
    assert os.path.exists(loc.path(young))
    assert apply.rotate(loc, parse_policy(keep_last=10), now=now)["changed"] is False


def test_failed_artifact_delete_keeps_the_manifest_and_fails(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    manifests = [write_backup(loc, "db", when) for when in daily("2026-11-01", 3)]
    oldest = manifests[0]
    loc.fail = {"db/" + oldest["artifact"]}
    with pytest.raises(StorageError) as exc:
        apply.rotate(loc, parse_policy(keep_last=1), now=T("2026-11-10 00:00"))
    assert "1 object(s) could not be deleted" in exc.value.msg
    assert exc.value.result["failed"][0]["key"] == "db/" + oldest["artifact"]
    names = keys_of(loc)
    assert catalog.manifest_key("db", oldest["id"]) in names        # still a whole backup
    assert catalog.manifest_key("db", manifests[1]["id"]) not in names


def test_manifest_without_artifacts_is_an_anomaly(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    manifest = write_backup(loc, "db", T("2026-11-01 02:00"))
    loc.delete(["db/" + manifest["artifact"], "db/" + manifest["companions"][0]["key"]])
    res = apply.rotate(loc, parse_policy(keep_last=1), now=T("2026-11-10 00:00"))
    assert "manifest without artifacts" in res["series"]["db"]["anomalies"][0]["problem"]


@pytest.mark.parametrize("kwargs, error, message", [
    (dict(series="nope"), NotFoundError, "series nope not found"),
    (dict(series="bad/name"), ConfigError, "series 'bad/name' is not valid"),
    (dict(orphan_grace="soon"), ConfigError, "orphan_grace: cannot parse duration"),
    (dict(verified_lookback=-2), ConfigError, "verified_lookback: -2 is not valid"),
])
def test_rotate_bad_input(store, kwargs, error, message):
    with pytest.raises(error) as exc:
        apply.rotate(store, parse_policy(keep_last=1), **kwargs)
    assert message in exc.value.msg
    assert store.deletes == []


def test_rotate_missing_location(tmp_path):
    with pytest.raises(NotFoundError):
        apply.rotate(FileLocation(str(tmp_path / "absent")), parse_policy(keep_last=1))


def test_unreadable_manifest_is_reported_and_counts_as_unverified(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    manifests = [write_backup(loc, "db", when) for when in daily("2026-11-01", 3)]
    with open(loc.path(catalog.manifest_key("db", manifests[-1]["id"])), "wb") as fh:
        fh.write(b"{not json")
    res = apply.rotate(loc, parse_policy(keep_last=1), check_mode=True, now=T("2026-11-10 00:00"))
    problems = [a["problem"] for a in res["series"]["db"]["anomalies"]]
    assert any("manifest unreadable" in p for p in problems)
    assert res["series"]["db"]["counts"]["deleted"] == 2


def test_copying_a_backup_does_not_change_its_time(store, tmp_path):
    # LastModified is ignored: touching every object to "now" changes nothing in the plan.
    now = T("2026-11-10 06:00")
    plan_before = apply.rotate(store, parse_policy(keep_daily=3), check_mode=True, now=now)
    for key in keys_of(store):
        age(store, key, now)
    plan_after = apply.rotate(store, parse_policy(keep_daily=3), check_mode=True, now=now)
    assert plan_after["series"] == plan_before["series"]


def test_object_lock_lookups_cost_nothing_on_files():
    assert apply.find_locked(FileLocation("/tmp"), ["a"], NOW) == ({}, 0)
