# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""weekly.yml (the review of the daily reports, the backup trends against the earlier weekly
reports) and monthly.yml (the maintenance window) through ansible-playbook, on a fixed clock.

The report history is built from a fixed clock: one real daily run at Sunday 2026-11-29 02:00
UTC writes a real report and a real backup; the days before are copies of that report moved back
in time (generated_at and file name), with the faults of the week put in: a failed run, a
failed asset, a CRITICAL health check, error-log lines, a day without any run."""

from __future__ import annotations

import copy
import datetime
import glob
import json
import os

import pytest

from roles_fixtures import playbook

UTC = datetime.timezone.utc
SUNDAY_DAILY = datetime.datetime(2026, 11, 29, 2, 0, tzinfo=UTC)
SUNDAY_WEEKLY = datetime.datetime(2026, 11, 29, 3, 0, tzinfo=UTC)
STAMP = "%Y%m%dT%H%M%SZ"
RFC3339 = "%Y-%m-%dT%H:%M:%SZ"


def _docs(report_dir, name, host="localhost"):
    """The JSON reports of ``name`` in report_dir, oldest first by the stamp in their name."""
    out = []
    for path in sorted(glob.glob(os.path.join(str(report_dir), "%s-%s-*.json" % (name, host)))):
        with open(path) as fh:
            out.append(json.load(fh))
    return out


def _write(report_dir, doc, when, host="localhost"):
    doc = dict(doc, generated_at=when.strftime(RFC3339), host=host)
    path = os.path.join(str(report_dir), "%s-%s-%s.json" % (doc["report"], host, when.strftime(STAMP)))
    with open(path, "w") as fh:
        json.dump(doc, fh)
    return path


def _backdate_the_week(report_dir, real):
    """Copies of the real Sunday report for Mon..Sat 02:00 (Friday missing), with Thursday's run failed."""
    for days_ago in (1, 3, 4, 5, 6):
        doc = copy.deepcopy(real)
        for entry in doc["checks"]:
            if "matches" in entry:
                entry["matches"] = 0
        if days_ago == 3:  # Thursday: the directory backup failed, the health check was CRITICAL, 12 error lines
            doc["status"] = "failed"
            doc["health_status"] = "CRITICAL"
            doc["failure"] = {"task": "Backups | back up, rotate, check the RPO", "msg": "directory etc-app: No such file",
                              "failures": [{"phase": "backup", "task": "Backups | back up", "msg": "directory etc-app: No such file"}]}
            for asset in doc["assets"]:
                asset.update(outcome="failed", backup_id=None, error="No such file or directory")
            for entry in doc["checks"]:
                if "matches" in entry:
                    entry.update(matches=12, status="WARNING")
                elif entry.get("type") == "disk":
                    entry.update(status="CRITICAL", message="disk: 3% free")
        _write(report_dir, doc, SUNDAY_DAILY - datetime.timedelta(days=days_ago))
    # noise the review must leave out: another host's failed run, a damaged file, a check-mode run
    _write(report_dir, dict(real, status="failed"), SUNDAY_DAILY - datetime.timedelta(days=2), host="localhost-2")
    with open(os.path.join(str(report_dir), "daily-localhost-20261127T020000Z.json"), "w") as fh:
        fh.write('{"report": "daily", "generated_at": "2026-11-27T02:00:00Z", "status": "pass')  # cut short
    _write(report_dir, dict(real, check_mode=True), SUNDAY_DAILY - datetime.timedelta(days=2, hours=-1))


def test_weekly_reviews_the_daily_reports_and_compares_the_trends_with_last_week(run_playbook, tmp_path):
    conf = tmp_path / "etc-app"
    conf.mkdir()
    (conf / "app.conf").write_text("listen 8080\n" * 200)
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "app.log").write_text("INFO start\nERROR disk full\nERROR retry\n")
    report_dir = tmp_path / "reports"
    extra = {
        "opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(report_dir),
        "opskit_series_prefix": "t-", "opskit_directories": [{"name": "etc-app", "path": str(conf)}],
        "opskit_disk_paths": [str(tmp_path)], "opskit_lock_dir": str(tmp_path / "locks"),
        "opskit_error_logs": [{"name": "app logs", "paths": [str(logs)], "max_matches": 5}],
    }
    day = run_playbook(playbook("daily"), extra, clock=SUNDAY_DAILY)
    assert day.rc == 0, day.stdout[-3000:]
    real, = _docs(report_dir, "daily")
    assert real["generated_at"].startswith("2026-11-29T02:00")
    _backdate_the_week(report_dir, real)
    series = "t-dir-etc-app"
    size = real["assets"][0]["size_bytes"]
    # last week's report: one backup of a quarter of today's size, taking an hour; two weeks ago: none of it yet
    _write(report_dir, {"report": "weekly", "status": "passed", "check_mode": False, "trends": {"series": [
        {"series": series, "count": 1, "total_size_bytes": size // 4, "size_bytes": size // 4, "duration_seconds": 3600.0},
        {"series": "t-dir-retired", "count": 3, "total_size_bytes": 300, "size_bytes": 100, "duration_seconds": 1.0}]}},
        SUNDAY_WEEKLY - datetime.timedelta(weeks=1))
    _write(report_dir, {"report": "weekly", "status": "passed", "check_mode": False, "trends": {"series": []}},
           SUNDAY_WEEKLY - datetime.timedelta(weeks=2))

    # a week that needs a look fails the run when the operator asks for it, naming what to look at;
    # the review and the trends are in the report all the same
    week = run_playbook(playbook("weekly"), dict(extra, opskit_weekly_fail_on_review=True), clock=SUNDAY_WEEKLY)
    assert week.rc != 0, week.stdout[-3000:]
    doc = _docs(report_dir, "weekly")[-1]
    assert doc["generated_at"].startswith("2026-11-29T03:0") and doc["status"] == "failed"
    assert "review of the last 7.0 days: 1 failed runs, 1 days without a run" in doc["failure"]["msg"], doc["failure"]
    assert "failed assets etc-app" in doc["failure"]["msg"] and [f["phase"] for f in doc["failure"]["failures"]] == ["review"]
    assert week.task("Verify | restore the latest backups into scratch targets")  # the restore test ran first
    review = doc["review"]
    window_end = datetime.datetime.strptime(review["window"]["to"], RFC3339).replace(tzinfo=UTC)
    assert review["window"]["from"] == (window_end - datetime.timedelta(days=7)).strftime(RFC3339)
    assert (review["runs"], review["passed"], review["failed"], review["check_mode_runs"]) == (6, 5, 1, 1)
    assert review["failed_runs"] == [{"generated_at": "2026-11-26T02:00:00Z", "msg": "directory etc-app: No such file",
                                      "phases": ["backup"]}]
    assert [g["from"][:10] for g in review["gaps"]] == ["2026-11-26"]  # the slot of Friday 02:00: no run
    assert review["failed_assets"] == [{"name": "etc-app", "kind": "directory", "series": series, "failures": 1,
                                        "last_failed_at": "2026-11-26T02:00:00Z", "last_error": "No such file or directory"}]
    assert review["health"]["runs_by_state"] == {"OK": 5, "CRITICAL": 1}
    disk = {c["name"]: c for c in review["health"]["checks"]}["disk %s" % tmp_path]
    assert (disk["worst"], disk["not_ok"], disk["runs"]) == ("CRITICAL", 1, 6)
    assert review["logs"] == [{"name": "app logs", "runs": 6, "matches": 12 + 2, "max_per_run": 12,
                               "runs_with_matches": 2, "runs_warning": 1}]
    assert review["status"] == "WARNING"

    trends = doc["trends"]
    assert trends["previous_report"] == "2026-11-22T03:00:00Z" and trends["weeks_compared"] == 2
    rows = {r["series"]: r for r in trends["series"]}
    row = rows[series]
    assert (row["count"], row["written"], row["failed"]) == (1, 5, 1)
    assert row["size_bytes"] == size and row["previous"]["size_bytes"] == size // 4
    assert row["change"]["size_bytes"] == size - size // 4 and row["change_pct"]["size_bytes"] > 290
    # the duration of the week's backup, from its backup record (directories record none in the daily report)
    assert isinstance(row["duration_seconds"], float) and row["duration_seconds"] >= 0
    assert row["change"]["duration_seconds"] == round(row["duration_seconds"] - 3600.0, 3)
    assert [h["size_bytes"] for h in row["history"]] == [size // 4, size]
    assert rows["t-dir-retired"]["present"] is False and trends["gone"] == ["t-dir-retired"]
    assert trends["backups"] == 1 and trends["total_size_bytes"] == size


# ------------------------------------------------------------------ monthly

THIRD_SATURDAY = datetime.datetime(2026, 12, 19, 2, 0, tzinfo=UTC)  # the seeds' window: third Saturday, 02:00 UTC
PACKAGE = """Package: opskit-dummy
Version: {version}
Architecture: all
Maintainer: opskit tests <tests@example.org>
Filename: opskit-dummy_{version}_all.deb
Size: 1000
SHA256: {zeros}
Description: a package that only exists in this test's archives

"""


def _archive(root, name, version, origin, label, suite):
    """A flat apt archive (Packages + Release with its SHA256) holding opskit-dummy at ``version``."""
    import hashlib  # pylint: disable=import-outside-toplevel
    path = root / name
    path.mkdir(parents=True)
    packages = PACKAGE.format(version=version, zeros="0" * 64).encode()
    (path / "Packages").write_bytes(packages)
    (path / "Release").write_text(
        "Origin: %s\nLabel: %s\nSuite: %s\nCodename: %s\nDate: Sat, 19 Dec 2026 00:00:00 UTC\nArchitectures: amd64 all\n"
        "SHA256:\n %s %d Packages\n" % (origin, label, suite, suite, hashlib.sha256(packages).hexdigest(), len(packages)))
    return path


def _fake_apt(root):
    """An apt universe of its own (sources, indexes, dpkg status, caches under ``root``): opskit-dummy 1.0
    installed; 1.1 in a security archive (Debian-Security), 1.2 in an ordinary one. Returns the apt-get options."""
    import subprocess  # pylint: disable=import-outside-toplevel
    security = _archive(root, "security", "1.1", "Debian", "Debian-Security", "bookworm-security")
    updates = _archive(root, "updates", "1.2", "Debian", "Debian", "bookworm-updates")
    for sub in ("parts", "lists/partial", "cache", "state"):
        (root / sub).mkdir(parents=True)
    (root / "state" / "status").write_text(
        "Package: opskit-dummy\nStatus: install ok installed\nPriority: optional\nSection: misc\nInstalled-Size: 1\n"
        "Maintainer: opskit tests <tests@example.org>\nArchitecture: all\nVersion: 1.0\nDescription: dummy\n\n")
    (root / "sources.list").write_text("# the test's archives\ndeb [trusted=yes] file:%s ./\ndeb [trusted=yes] file:%s ./\n"
                                       % (security, updates))
    options = []
    for key, value in (("Dir::Etc::SourceList", root / "sources.list"), ("Dir::Etc::SourceParts", root / "parts"),
                       ("Dir::State::Lists", root / "lists"), ("Dir::State::status", root / "state" / "status"),
                       ("Dir::Cache", root / "cache"), ("Dir::Etc::Preferences", "/dev/null"),
                       ("Dir::Etc::PreferencesParts", root / "parts"),
                       # the archives lie under pytest's 0700 directory, which apt's _apt download user cannot read
                       ("APT::Sandbox::User", "root")):
        options += ["-o", "%s=%s" % (key, value)]
    subprocess.run(["apt-get"] + options + ["-q", "update"], check=True, capture_output=True)
    everything = subprocess.run(["apt-get"] + options + ["--simulate", "-q", "upgrade"], check=True, capture_output=True, text=True)
    assert "Inst opskit-dummy [1.0] (1.2 Debian:bookworm-updates" in everything.stdout  # unrestricted, apt takes 1.2
    return options


def _tree(path):
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in path.rglob("*"))


def test_monthly_in_check_mode_shows_the_plan_and_changes_nothing(run_playbook, pg, tmp_path):
    db = "shop_monthly"
    pg.psql("DROP DATABASE IF EXISTS %s" % db)
    pg.createdb(db)
    pg.psql("CREATE TABLE orders AS SELECT g AS id, repeat('x', 200) AS note FROM generate_series(1, 2000) g", db=db)
    apt = _fake_apt(tmp_path / "apt")
    status_before, lists_before = (tmp_path / "apt" / "state" / "status").read_bytes(), _tree(tmp_path / "apt" / "lists")
    leftovers_before = set(glob.glob("/tmp/opskit-security-*"))
    logs, old = tmp_path / "logs", tmp_path / "logs" / "app.log.1.gz"
    logs.mkdir()
    old.write_text("old")
    os.utime(old, (THIRD_SATURDAY.timestamp() - 40 * 86400,) * 2)  # 40 days before the window
    reboot_required = tmp_path / "reboot-required"
    reboot_required.write_text("*** System restart required ***\n")
    (tmp_path / "reboot-required.pkgs").write_text("linux-image-amd64\nlibc6\nlinux-image-amd64\n")

    # the kept reports: last month's window and two daily runs since, from the fixed clock
    report_dir = tmp_path / "reports"
    report_dir.mkdir()
    disk_name = "disk %s" % tmp_path
    stat = os.statvfs(str(tmp_path))
    total = stat.f_blocks * stat.f_frsize
    first_used = 1000 * 1024 ** 2
    for days_ago, used, kind in ((30, first_used, "monthly"), (20, first_used + 50, "daily"), (10, first_used + 100, "daily")):
        doc = {"report": kind, "status": "passed", "check_mode": False,
               "checks": [{"name": disk_name, "type": "disk", "status": "OK",
                           "measures": {"total_bytes": total, "free_bytes": total - used, "used_pct": 1.0}}]}
        if kind == "monthly":
            doc["database_sizes"] = [{"name": db, "size_bytes": 1024}]
        else:
            doc["assets"] = [{"name": db, "kind": "postgres", "series": "t-pg-" + db, "outcome": "written", "size_bytes": 1000 + days_ago}]
        _write(report_dir, doc, THIRD_SATURDAY - datetime.timedelta(days=days_ago))
    _write(report_dir, {"report": "monthly", "check_mode": False, "database_sizes": [{"name": db, "size_bytes": 1}]},
           THIRD_SATURDAY - datetime.timedelta(days=45))  # older than the 31-day window

    extra = {
        "opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(report_dir), "opskit_series_prefix": "t-",
        "opskit_postgres": {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password, "bin_dir": pg.bin_dir},
        "opskit_databases": [{"name": db}], "opskit_disk_paths": [str(tmp_path)], "opskit_lock_dir": str(tmp_path / "locks"),
        "opskit_log_cleanup": [{"paths": [str(logs)], "patterns": ["*.gz"], "max_age_days": 30}],
        "opskit_security_updates": True, "opskit_reboot": True,
        "maintenance_apt_options": apt, "maintenance_reboot_required_file": str(reboot_required),
    }
    become = {"ANSIBLE_BECOME_METHOD": "su", "ANSIBLE_BECOME_USER": "root"}  # become: true, as root without sudo
    plan = run_playbook(playbook("monthly"), extra, check=True, clock=THIRD_SATURDAY, env=become)
    assert plan.rc == 0, plan.stdout[-3000:]
    doc = _docs(report_dir, "monthly")[-1]
    assert doc["check_mode"] is True and doc["status"] == "passed" and doc["generated_at"].startswith("2026-12-19T02:")

    # 1. the pre-maintenance backup: planned, nothing written
    assert {a["name"]: a["outcome"] for a in doc["assets"]} == {db: "planned"}
    assert not (tmp_path / "backups").exists()
    # 2. upkeep: the old log is found, not removed; the database sizes are measured (read-only)
    assert doc["maintenance"]["old_logs"] == [str(old)] and old.exists()
    assert doc["maintenance"]["would_vacuum"] == [db] and doc["maintenance"]["vacuumed"] == []
    size = int(pg.psql("SELECT pg_database_size('%s')" % db).strip())
    assert {r["name"]: r["size_bytes"] for r in doc["database_sizes"]}[db] == pytest.approx(size, rel=0.05)
    # 3. security updates: only the security archive's 1.1, never the ordinary archive's 1.2; nothing installed
    updates = doc["updates"]
    assert updates["planned"] == [{"name": "opskit-dummy", "from": "1.0", "to": "1.1", "origin": "Debian-Security:bookworm-security"}]
    assert updates["applied"] is False and updates["method"].startswith("apt-get upgrade --with-new-pkgs, security archive only")
    assert any("URIs: file:%s" % (tmp_path / "apt" / "security") in s for s in updates["sources"])
    assert not any("updates" in s for s in updates["sources"] if s.startswith("URIs: "))
    assert (tmp_path / "apt" / "state" / "status").read_bytes() == status_before
    assert _tree(tmp_path / "apt" / "lists") == lists_before  # the host's own indexes are left alone
    assert set(glob.glob("/tmp/opskit-security-*")) == leftovers_before  # the private directory is gone
    assert plan.task("Updates | install the security updates (apt-get upgrade from the security archive only)")["_status"] == "skipped"
    # 4. reboot: required (and why), planned, not done
    assert doc["reboot"]["required"] is True and doc["reboot"]["planned"] is True and doc["reboot"]["rebooted"] is False
    assert sorted(doc["reboot"]["reason"]) == ["libc6", "linux-image-amd64"]
    # 6. health afterwards
    assert doc["health_status"] == "OK" and any(c["name"] == disk_name for c in doc["checks"])
    # 7. capacity from the kept reports, this run's measurements the newest sample
    capacity = doc["capacity"]
    assert capacity["reports"] == 3 and capacity["window"]["days"] == 31.0
    disk = {d["name"]: d for d in capacity["disks"]}[disk_name]
    assert disk["samples"] == 3 + 1 and disk["first_at"] == "2026-11-19T02:00:00Z"  # and this run's disk check
    assert disk["growth_bytes"] == disk["used_bytes"] - first_used
    shop = {d["name"]: d for d in capacity["databases"]}[db]
    assert shop["size_samples"] == 2 and shop["size_growth_bytes"] == shop["size_bytes"] - 1024
    assert shop["backup_size_bytes"] == 1010 and shop["backup_size_growth_bytes"] == -10 and shop["backup_size_samples"] == 2
