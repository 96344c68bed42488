# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The retention decision as tables, and the apply step on a real directory."""

from __future__ import annotations

import datetime
import json
import os

import pytest
import yaml

from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog, lock
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


def test_min_keep_means_the_n_newest_are_always_kept():
    # issue 14 item 22: the second newest was deleted because "oldest daily" counted toward min_keep
    plan = plan_rotation(backups_at("2026-11-20 01:00", "2026-11-20 09:00", "2026-11-20 17:00"),
                         parse_policy(keep_daily=2, min_keep=2), NOW)
    assert reasons_of(plan) == {"2026-11-20 17:00": ["daily 2026-11-20"],
                                "2026-11-20 09:00": ["min_keep 2"],
                                "2026-11-20 01:00": ["oldest daily"]}
    assert plan["deleted"] == []
    # future-dated backups are kept anyway and do not take the place of the newest normal ones
    plan = plan_rotation(backups_at("2026-11-19 01:00", "2026-11-20 01:00", "2031-01-01 00:00"),
                         parse_policy(keep_last=1, min_keep=2), T("2026-11-20 06:00"))
    assert reasons_of(plan) == {"2031-01-01 00:00": ["future-dated"], "2026-11-20 01:00": ["last 1"],
                                "2026-11-19 01:00": ["min_keep 2"]}


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
        self.read_fail = {}   # key -> the StorageError reading it raises

    def delete(self, keys):
        keys = list(keys)
        if keys and all("/.inflight/" in k for k in keys):  # a BackupSession removing its in-flight marker
            return super().delete(keys)
        self.deletes.append(keys)
        failed = [(k, "Permission denied") for k in keys if k in self.fail]
        return failed + super().delete([k for k in keys if k not in self.fail])

    def read_bytes(self, key):
        self.reads.append(key)
        if key in self.read_fail:
            raise self.read_fail[key]
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
    if isinstance(location, Recording):  # count only what rotation does (not the in-flight marker)
        del location.deletes[:], location.reads[:]
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
    locks = {name: res.pop("lock") for name, res in applied["series"].items()}
    assert applied["series"] == checked["series"]
    assert {name: (lock["key"], lock["attempts"], lock["taken_over"]) for name, lock in locks.items()} == {
        "db1": ("db1/.opskit-lock", 1, None), "db2": ("db2/.opskit-lock", 1, None)}
    assert not any(k.endswith(".opskit-lock") for k in keys_of(store))  # released
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


def _partial(loc, series, when, ext="bin"):
    """A hidden partial file as a killed writer leaves it, last written at ``when``."""
    key = "%s/.%s.%s.partial-0badc0de" % (series, catalog.new_backup_id(when), ext)
    os.makedirs(os.path.dirname(loc.path(key)), exist_ok=True)
    with open(loc.path(key), "wb") as fh:
        fh.write(b"half")
    age(loc, key, when)
    return key


@pytest.mark.parametrize("series", [None, "fresh"])
def test_a_series_with_only_an_interrupted_backup_is_cleaned_up(tmp_path, series):
    """Issue 14 item 21: the first backup of a new series was killed; rotation (of that series or
    of the whole location) finds the series from its partial file and removes it after the grace."""
    loc = Recording(str(tmp_path / "b"))
    write_backup(loc, "db", T("2026-11-01 02:00"))
    partial = _partial(loc, "fresh", T("2026-11-05 02:00"))
    young = _partial(loc, "young", T("2026-11-09 23:30"))
    res = apply.rotate(loc, parse_policy(keep_last=3), series=series, now=T("2026-11-10 00:00"))
    fresh = res["series"]["fresh"]
    assert [(o["key"], o["action"]) for o in fresh["orphans"]] == [(partial, "deleted")]
    assert fresh["kept"] == [] and fresh["counts"]["orphans_deleted"] == 1
    assert res["changed"] is True and not os.path.exists(loc.path(partial))
    if series is None:
        assert sorted(res["series"]) == ["db", "fresh", "young"]
        assert [o["action"] for o in res["series"]["young"]["orphans"]] == ["kept"]
    assert os.path.exists(loc.path(young))


def test_the_pieces_of_one_backup_go_together(tmp_path):
    """A running backup's finished companion is old, its main artifact is still being written
    (a young partial): both stay. A killed one (both old) goes."""
    loc = Recording(str(tmp_path / "b"))
    write_backup(loc, "db", T("2026-11-01 02:00"))
    running = catalog.new_backup_id(T("2026-11-08 02:00"))
    companion = "db/%s.globals.txt" % running
    loc.write_bytes(companion, b"globals")
    age(loc, companion, T("2026-11-08 02:00"))
    main = "db/.%s.bin.partial-0badc0de" % running
    with open(loc.path(main), "wb") as fh:
        fh.write(b"dump so far")
    age(loc, main, T("2026-11-09 23:59"))
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))
    assert {o["key"]: o["action"] for o in res["series"]["db"]["orphans"]} == {companion: "kept", main: "kept"}
    age(loc, main, T("2026-11-08 03:00"))
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))
    assert {o["key"]: o["action"] for o in res["series"]["db"]["orphans"]} == {companion: "deleted", main: "deleted"}


def test_a_live_in_flight_marker_protects_old_leftovers(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    now = T("2026-11-10 00:00")
    partial = _partial(loc, "db", T("2026-11-05 02:00"))
    backup_id = partial.split("/.")[1].split(".")[0]
    catalog.write_inflight(loc, "db", backup_id, T("2026-11-05 02:00"), timeout=7 * 86400)
    res = apply.rotate(loc, parse_policy(keep_last=3), now=now)
    assert res["series"]["db"]["orphans"] == [dict(key=partial, size_bytes=4, last_modified="2026-11-05T02:00:00Z",
                                                   action="kept", in_flight=True)]
    assert res["changed"] is False and os.path.exists(loc.path(partial))
    # the marker of a killed backup expires: its leftovers go, and so does the marker
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-12 02:01"))
    assert [o["action"] for o in res["series"]["db"]["orphans"]] == ["deleted"]
    assert not os.path.exists(loc.path(partial))
    assert not os.path.exists(loc.path(catalog.inflight_key("db", backup_id)))
    assert apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-12 02:01"))["changed"] is False


def test_a_lone_stale_marker_is_removed_and_reported(tmp_path):
    """A backup killed before its first artifact was stored leaves only its marker, in a series
    that has nothing else: rotation over the whole location finds it and removes it once it
    expired (or at once when its holder is gone from this machine), a live one stays."""
    loc = Recording(str(tmp_path / "b"))
    catalog.write_inflight(loc, "lone", "20261105T020000Z-0000dead", T("2026-11-05 02:00"), timeout=3600)
    catalog.write_inflight(loc, "busy", "20261109T230000Z-000a11fe", T("2026-11-09 23:00"), timeout=7 * 86400,
                           holder=lock.this_process())
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))
    key = catalog.inflight_key("lone", "20261105T020000Z-0000dead")
    assert [(o["key"], o["action"], o["inflight_marker"]) for o in res["series"]["lone"]["orphans"]] \
        == [(key, "deleted", "expired")]
    assert res["changed"] is True and not os.path.exists(loc.path(key))
    assert any("in-flight marker of backup 20261105T020000Z-0000dead" in w for w in res["warnings"])
    assert "busy" not in res["series"]  # only a live marker: nothing to rotate there
    assert os.path.exists(loc.path(catalog.inflight_key("busy", "20261109T230000Z-000a11fe")))
    assert apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))["changed"] is False


class PublishesAfterListing(Recording):
    """A backup that publishes (manifest written, marker removed) right after rotation listed
    under the run lock (the second listing: the first one finds the series to lock)."""

    publish = None
    listings = 0

    def list_temporary(self):
        found = super().list_temporary()
        self.listings += 1
        if self.publish and self.listings == 2:
            self.write_bytes(self.publish, b"{}")
        return found


def test_an_old_partial_of_a_published_backup_goes(tmp_path):
    """A killed rewrite of a manifest (recording a verification) leaves a partial beside it."""
    loc = Recording(str(tmp_path / "b"))
    manifest = write_backup(loc, "db", T("2026-11-01 02:00"))
    partial = "db/.%s.manifest.json.partial-0badc0de" % manifest["id"]
    with open(loc.path(partial), "wb") as fh:
        fh.write(b"{")
    age(loc, partial, T("2026-11-02 02:00"))
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))
    assert [(o["key"], o["action"]) for o in res["series"]["db"]["orphans"]] == [(partial, "deleted")]
    assert res["series"]["db"]["counts"]["kept"] == 1 and not os.path.exists(loc.path(partial))


def test_a_backup_published_after_the_listing_is_not_taken_for_an_orphan(tmp_path):
    loc = PublishesAfterListing(str(tmp_path / "b"))
    backup_id = catalog.new_backup_id(T("2026-11-08 02:00"))
    pieces = ["db/%s.bin" % backup_id, "db/%s.globals.txt" % backup_id]
    for key in pieces:
        loc.write_bytes(key, b"x")
        age(loc, key, T("2026-11-08 02:00"))
    loc.publish = catalog.manifest_key("db", backup_id)
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))
    assert [(o["key"], o["action"], o.get("in_flight")) for o in res["series"]["db"]["orphans"]] == \
        [(key, "kept", True) for key in pieces]
    assert all(os.path.exists(loc.path(key)) for key in pieces)


class DeniesHead(Recording):
    def head(self, key):
        raise StorageError("reading %s: access denied by the S3 endpoint (AccessDenied)" % key)


def test_leftovers_wait_when_their_backup_cannot_be_checked(tmp_path):
    loc = DeniesHead(str(tmp_path / "b"))
    partial = _partial(loc, "db", T("2026-11-05 02:00"))
    res = apply.rotate(loc, parse_policy(keep_last=3), now=T("2026-11-10 00:00"))
    assert [(o["key"], o["action"], o["in_flight"]) for o in res["series"]["db"]["orphans"]] == [(partial, "kept", True)]
    assert res["changed"] is False and os.path.exists(loc.path(partial))


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
    (dict(orphan_grace="1s"), ConfigError, "orphan_grace: 1s is too short: use at least 1h"),
    (dict(orphan_grace="59min"), ConfigError, "orphan_grace: 59min is too short: use at least 1h"),
    (dict(series=""), ConfigError, "series: an empty name is not valid; leave series out (null)"),
])
def test_rotate_bad_input(store, kwargs, error, message):
    with pytest.raises(error) as exc:
        apply.rotate(store, parse_policy(keep_last=1), **kwargs)
    assert message in exc.value.msg
    assert store.deletes == []


def test_rotate_missing_location(tmp_path):
    with pytest.raises(NotFoundError):
        apply.rotate(FileLocation(str(tmp_path / "absent")), parse_policy(keep_last=1))


def _corrupt(loc, key):
    with open(loc.path(key), "wb") as fh:
        fh.write(b"{not json")


def _rewrite(loc, key, **fields):
    with open(loc.path(key)) as fh:
        manifest = json.load(fh)
    manifest.update(fields)
    with open(loc.path(key), "w") as fh:
        json.dump(manifest, fh)


def _deny(loc, key, text):
    loc.read_fail[key] = StorageError(text)


UNREADABLE = [
    ("corrupt", _corrupt, "is not valid JSON"),
    ("newer-version", lambda loc, key: _rewrite(loc, key, version=2), "has version 2"),
    ("non-integer-version", lambda loc, key: _rewrite(loc, key, version="2.x"), "version '2.x'|cannot be parsed"),
    ("odd-verification", lambda loc, key: _rewrite(loc, key, verification="passed"), "cannot be parsed"),
    ("access-denied", lambda loc, key: _deny(loc, key, "reading %s: access denied by the S3 endpoint"
                                                       " (AccessDenied)" % key), "AccessDenied"),
    ("kms", lambda loc, key: _deny(loc, key, "reading %s: S3 error KMS.DisabledException (HTTP 400)" % key),
     "KMS.DisabledException"),
    ("5xx-after-retries", lambda loc, key: _deny(loc, key, "reading %s: S3 error InternalError (HTTP 500)" % key),
     "HTTP 500"),
]


@pytest.mark.parametrize("position", [0, 2])
@pytest.mark.parametrize("name, spoil, problem", UNREADABLE, ids=[row[0] for row in UNREADABLE])
def test_unreadable_manifest_fails_closed(tmp_path, name, spoil, problem, position):
    """The guard cannot tell whether an unreadable manifest is the newest verified backup: that
    backup and every other one of the series are kept, and the reason is reported."""
    loc = Recording(str(tmp_path / "b"))
    manifests = [write_backup(loc, "db", when) for when in daily("2026-11-01", 5)]
    write_backup(loc, "other", T("2026-11-01 02:00"))
    write_backup(loc, "other", T("2026-11-02 02:00"))
    newest_first = manifests[::-1]
    spoiled = newest_first[position]["id"]
    spoil(loc, catalog.manifest_key("db", spoiled))
    before = keys_of(loc)
    res = apply.rotate(loc, parse_policy(keep_last=1), now=T("2026-11-10 00:00"))
    db = res["series"]["db"]
    assert db["deleted"] == [] and db["counts"]["kept"] == 5
    reasons = {k["id"]: k["reasons"] for k in db["kept"]}
    assert "manifest unreadable" in reasons[spoiled]
    for older in newest_first[position + 1:]:
        assert reasons[older["id"]] == ["older than an unreadable manifest"]
    for newer in newest_first[1:position]:
        assert reasons[newer["id"]] == ["newer than an unreadable manifest"]
    assert db["newest_verified"] is None
    assert [a["id"] for a in db["anomalies"]] == [spoiled]
    assert any(p in db["anomalies"][0]["problem"] for p in problem.split("|"))
    assert "fail closed" in db["anomalies"][0]["problem"]
    assert len(res["warnings"]) == 1 and spoiled in res["warnings"][0] and "\n" not in res["warnings"][0]
    # the other series is rotated as usual
    assert res["series"]["other"]["counts"]["deleted"] == 1
    assert set(before) - set(keys_of(loc)) == {k for k in before if k.startswith("other/20261101")}


def test_unreadable_manifest_older_than_the_newest_verified_is_not_read(tmp_path):
    loc = Recording(str(tmp_path / "b"))
    manifests = [write_backup(loc, "db", when, verified=(i == 3)) for i, when in enumerate(daily("2026-11-01", 5))]
    _corrupt(loc, catalog.manifest_key("db", manifests[1]["id"]))
    res = apply.rotate(loc, parse_policy(keep_last=1), check_mode=True, now=T("2026-11-10 00:00"))
    db = res["series"]["db"]
    assert db["newest_verified"] == manifests[3]["id"]
    assert [d["id"] for d in db["deleted"]] == [manifests[2]["id"], manifests[1]["id"], manifests[0]["id"]]
    assert db["anomalies"] == [] and "warnings" not in res


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
