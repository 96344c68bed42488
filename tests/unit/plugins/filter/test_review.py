# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The review filters: parse_reports, report_review, backup_trends, capacity_figures, on report
documents built from a fixed clock (Sunday 2026-11-29 03:00 UTC, the seeds' weekly slot)."""

from __future__ import annotations

import datetime
import json

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.filter.review import (
    FilterModule, backup_trends, capacity_figures, parse_reports, report_review)

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
GiB = 1024 ** 3


def at(days_ago, hour=2):
    """The instant ``days_ago`` days before NOW's date, at ``hour`` UTC, as the reports write it."""
    day = (NOW - datetime.timedelta(days=days_ago)).replace(hour=hour, minute=0, second=0)
    return day.strftime("%Y-%m-%dT%H:%M:%SZ")


def daily(days_ago, status="passed", health="OK", assets=None, checks=None, errors=0, **extra):
    doc = {
        "report": "daily", "host": "web1", "status": status, "generated_at": at(days_ago), "check_mode": False,
        "health_status": health,
        "checks": (checks if checks is not None else [
            {"name": "api", "type": "http", "status": health, "message": "HTTP 200" if health == "OK" else "HTTP 503"},
            {"name": "disk /", "type": "disk", "status": "OK", "message": "",
             "measures": {"total_bytes": 100 * GiB, "free_bytes": (60 - days_ago) * GiB, "used_pct": 40.0 + days_ago}},
        ]) + [{"name": "app logs", "files": 2, "matches": errors, "status": "WARNING" if errors > 5 else "OK",
               "message": "app logs: %d lines match" % errors}],
        "assets": assets if assets is not None else [
            {"name": "app", "kind": "postgres", "series": "web1-pg-app", "outcome": "written", "backup_id": "b%d" % days_ago,
             "size_bytes": 1000 - days_ago * 10, "duration_seconds": 10.0 + days_ago, "error": None}],
        "stale": [], "missing": [],
    }
    if status == "failed":
        doc["failure"] = {"task": "Backups | back up", "msg": "postgres app: connection refused",
                          "failures": [{"phase": "backup", "task": "Backups | back up", "msg": "postgres app: connection refused"}]}
    doc.update(extra)
    return doc


def week_of_dailies():
    """Seven daily runs Mon..Sun 02:00 with one failed backup (Thursday) and one run missing (Friday)."""
    docs = []
    for days_ago in range(7):
        if days_ago == 2:
            continue  # Friday 2026-11-27: the scheduler did not run
        if days_ago == 3:
            docs.append(daily(3, status="failed", health="CRITICAL", errors=12, assets=[
                {"name": "app", "kind": "postgres", "series": "web1-pg-app", "outcome": "failed", "backup_id": None,
                 "error": "connection refused"}], stale=["web1-pg-app"]))
            continue
        docs.append(daily(days_ago, errors=1 if days_ago == 0 else 0))
    return docs


def test_parse_reports_keeps_this_hosts_documents_oldest_first_and_skips_damaged_files():
    texts = [json.dumps(daily(1)), "{not json", json.dumps(daily(3)), json.dumps(["a list"]),
             json.dumps(dict(daily(2), host="web2")), json.dumps({"report": "weekly", "host": "web1", "generated_at": at(0)})]
    docs = parse_reports(texts, host="web1", names=["daily"])
    assert [d["generated_at"] for d in docs] == [at(3), at(1)]
    assert len(parse_reports(texts)) == 4
    with pytest.raises(AnsibleFilterError, match="expected a list of file contents"):
        parse_reports("text")


def test_review_of_a_week_names_failures_gaps_health_and_error_counts():
    docs = week_of_dailies() + [daily(9, status="failed"), dict(daily(1), check_mode=True)]
    review = report_review(docs, NOW.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert review["window"] == {"from": "2026-11-22T03:00:00Z", "to": "2026-11-29T03:00:00Z", "days": 7}
    assert (review["runs"], review["passed"], review["failed"], review["check_mode_runs"]) == (6, 5, 1, 1)
    assert review["failed_runs"] == [{"generated_at": at(3), "msg": "postgres app: connection refused", "phases": ["backup"]}]
    assert review["gaps"] == [{"from": "2026-11-26T03:00:00Z", "to": "2026-11-27T03:00:00Z"}]  # the Friday 02:00 slot
    assert review["failed_assets"] == [{"name": "app", "kind": "postgres", "series": "web1-pg-app", "failures": 1,
                                        "last_failed_at": at(3), "last_error": "connection refused"}]
    assert review["health"]["runs_by_state"] == {"OK": 5, "CRITICAL": 1}
    api = review["health"]["checks"][0]
    assert (api["name"], api["worst"], api["runs"], api["not_ok"], api["last_message"]) == ("api", "CRITICAL", 6, 1, "HTTP 503")
    assert [c["name"] for c in review["health"]["checks"]] == ["api", "disk /"]
    assert review["logs"] == [{"name": "app logs", "runs": 6, "matches": 13, "max_per_run": 12, "runs_with_matches": 2,
                               "runs_warning": 1}]
    assert review["stale"] == ["web1-pg-app"] and review["missing"] == []
    assert review["status"] == "WARNING"


def test_review_of_a_quiet_week_is_ok_and_takes_a_timestamp_clock():
    docs = [daily(d) for d in range(7)]
    review = report_review(docs, NOW.timestamp())
    assert review["status"] == "OK" and review["runs"] == 7 and review["gaps"] == []
    assert review["failed_runs"] == [] and review["failed_assets"] == []


def test_review_of_no_reports_is_seven_gaps():
    review = report_review([], NOW, days=7)
    assert review["runs"] == 0 and len(review["gaps"]) == 7 and review["status"] == "WARNING"


@pytest.mark.parametrize("now, days, message", [
    ("yesterday", 7, "is not an instant"),
    (NOW, 0, "days must be a positive number"),
    (NOW, True, "days must be a positive number"),
])
def test_review_rejects_bad_arguments(now, days, message):
    with pytest.raises(AnsibleFilterError, match=message):
        report_review([], now, days=days)


def weekly(weeks_ago, series):
    return {"report": "weekly", "host": "web1", "status": "passed", "check_mode": False,
            "generated_at": (NOW - datetime.timedelta(weeks=weeks_ago)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "trends": {"series": series}}


def test_trends_compare_with_the_newest_earlier_weekly_report():
    rows = [{"series": "web1-pg-app", "kind": "postgres", "count": 30, "total_size_bytes": 30000, "size_bytes": 1000},
            {"series": "web1-vol-uploads", "kind": "volume", "count": 10, "total_size_bytes": 5000, "size_bytes": 500}]
    earlier = [
        weekly(2, [{"series": "web1-pg-app", "count": 26, "total_size_bytes": 24000, "size_bytes": 900, "duration_seconds": 10.0}]),
        weekly(1, [{"series": "web1-pg-app", "count": 28, "total_size_bytes": 25000, "size_bytes": 950, "duration_seconds": 12.0},
                   {"series": "web1-redis-cache", "count": 7, "total_size_bytes": 700, "size_bytes": 100, "duration_seconds": 1.0}]),
        dict(weekly(0, []), generated_at=NOW.strftime("%Y-%m-%dT%H:%M:%SZ")),  # this instant: not an earlier week
        dict(weekly(1, [{"series": "web1-pg-app", "count": 1}]), check_mode=True),
    ]
    trends = backup_trends(rows, NOW, daily=week_of_dailies(), weekly=earlier)
    assert trends["previous_report"] == "2026-11-22T03:00:00Z" and trends["weeks_compared"] == 2
    pg, redis, volume = trends["series"]
    assert pg["series"] == "web1-pg-app" and pg["written"] == 5 and pg["failed"] == 1
    assert pg["duration_seconds"] == pytest.approx((10 + 11 + 14 + 15 + 16) / 5.0)
    assert pg["duration_max_seconds"] == 16.0
    assert pg["previous"]["count"] == 28 and pg["change"]["count"] == 2 and pg["change"]["total_size_bytes"] == 5000
    assert pg["change_pct"]["total_size_bytes"] == 20.0 and pg["change_pct"]["size_bytes"] == pytest.approx(5.26, abs=0.01)
    assert [h["count"] for h in pg["history"]] == [26, 28, 30]
    assert pg["history"][-1]["generated_at"] == "2026-11-29T03:00:00Z"
    assert redis["series"] == "web1-redis-cache" and redis["present"] is False and redis["count"] is None
    assert volume["previous"] is None and volume["change"] is None and volume["written"] == 0
    assert trends["gone"] == ["web1-redis-cache"]
    assert trends["total_size_bytes"] == 35000 and trends["backups"] == 40
    assert trends["change"] == {"total_size_bytes": 35000 - 25700, "backups": 40 - 35}


def test_trends_without_history_have_no_change():
    trends = backup_trends([], NOW)
    assert trends["series"] == [] and trends["change"] is None and trends["previous_report"] is None
    with pytest.raises(AnsibleFilterError, match="rows of backup_rows"):
        backup_trends({"web1-pg-app": {}}, NOW)


def monthly(days_ago, sizes, free_gib):
    return {"report": "monthly", "host": "web1", "status": "passed", "check_mode": False, "generated_at": at(days_ago, 3),
            "checks": [{"name": "disk /", "type": "disk", "status": "OK",
                        "measures": {"total_bytes": 100 * GiB, "free_bytes": free_gib * GiB, "used_pct": 100 - free_gib}}],
            "database_sizes": [{"name": n, "size_bytes": s} for n, s in sizes.items()]}


def test_capacity_figures_give_disk_growth_and_database_sizes():
    reports = [monthly(28, {"app": 800 * 1024 ** 2}, free_gib=70)] + [daily(d) for d in range(7)] + [
        monthly(60, {"app": 1}, free_gib=99)]  # outside the 31-day window
    current = {"checks": [{"name": "disk /", "type": "disk", "measures": {"total_bytes": 100 * GiB, "free_bytes": 56 * GiB,
                                                                          "used_pct": 44.0}}],
               "database_sizes": [{"name": "app", "size_bytes": 1000 * 1024 ** 2}, {"name": "new", "size_bytes": 10}]}
    figures = capacity_figures(reports, NOW, current=current)
    assert figures["reports"] == 8 and figures["window"]["days"] == 31
    disk, = figures["disks"]
    assert disk["name"] == "disk /" and disk["samples"] == 9 and disk["first_at"] == at(28, 3)
    assert disk["growth_bytes"] == 14 * GiB  # 30 GiB used four weeks ago, 44 GiB now
    assert disk["growth_bytes_per_day"] == pytest.approx(14 * GiB / 28.0)
    assert disk["days_until_full"] == pytest.approx(56 * GiB / disk["growth_bytes_per_day"], abs=0.1)
    app, new = figures["databases"]
    assert app["size_bytes"] == 1000 * 1024 ** 2 and app["size_growth_bytes"] == 200 * 1024 ** 2 and app["size_growth_pct"] == 25.0
    assert app["backup_size_bytes"] == 1000 and app["backup_size_growth_bytes"] == 60 and app["backup_size_samples"] == 7
    assert new["size_bytes"] == 10 and new["size_growth_bytes"] == 0 and new["backup_size_bytes"] is None


def test_capacity_of_a_shrinking_disk_has_no_days_until_full():
    figures = capacity_figures([monthly(20, {}, free_gib=10), monthly(1, {}, free_gib=30)], NOW)
    disk, = figures["disks"]
    assert disk["growth_bytes"] == -20 * GiB and disk["days_until_full"] is None
    with pytest.raises(AnsibleFilterError, match="current must be a dict"):
        capacity_figures([], NOW, current=["x"])


def test_filter_module_names():
    assert set(FilterModule().filters()) == {"parse_reports", "report_review", "backup_trends", "capacity_figures"}


def test_trends_take_the_durations_of_the_backups_created_in_the_week():
    def record(series, created, seconds, size):
        start = datetime.datetime.strptime(at(created), "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC)
        return {"series": series, "created_at": at(created), "size_bytes": size,
                "completed_at": (start + datetime.timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")}
    backups = [record("web1-dir-etc", 0, 4, 100), record("web1-dir-etc", 1, 6, 300), record("web1-dir-etc", 8, 100, 1),
               {"series": "web1-dir-etc", "created_at": "garbage"}]
    rows = [{"series": "web1-dir-etc", "kind": "directory", "count": 3, "total_size_bytes": 401, "size_bytes": 100}]
    trends = backup_trends(rows, NOW, daily=week_of_dailies(), backups=backups)
    etc, pg = trends["series"]
    assert etc["duration_seconds"] == 5.0 and etc["duration_max_seconds"] == 6.0 and etc["mean_size_bytes"] == 200.0
    assert pg["series"] == "web1-pg-app" and pg["written"] == 5 and pg["duration_seconds"] is None  # no record of its backups
    with pytest.raises(AnsibleFilterError, match="backups must be the list"):
        backup_trends(rows, NOW, backups={"x": 1})
