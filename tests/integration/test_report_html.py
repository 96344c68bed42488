# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The HTML pages of the report role, rendered through ansible-playbook (tasks_from: finish) from
a weekly, a monthly and a daily document built from a fixed clock: every section the JSON
carries is on the page, the charts have one mark per value, and the scales fit the values (a
12 s restore against a 4 h target is a visible bar). Then the same pages in Debian's headless
chromium (selenium + chromedriver): no console error, the same DOM counts, a screenshot kept.
The history page (index.html) of the same reports directory, from the JSON reports kept there
(prepared ones of the last 130 days, the last 90 shown) and those of this run: one mark per
value in each chart over time, scales that fit, labelled targets, links to every run's page."""

from __future__ import annotations

import datetime
import glob
import json
import os
import shutil
from html.parser import HTMLParser

import pytest

from ansible_collections.opskit.runbook.plugins.filter.review import backup_trends, capacity_figures, report_review

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
NOW = datetime.datetime(2026, 3, 1, 3, 0, tzinfo=datetime.timezone.utc)  # a Sunday, 03:00 UTC
GIB = 1 << 30


def _at(days_before, hours=0):
    return (NOW - datetime.timedelta(days=days_before, hours=hours)).strftime("%Y-%m-%dT%H:%M:%SZ")


def _daily(days_before, failed=False, errors=0):
    """A kept daily report: a check with measures, an error-log entry, two assets."""
    return {
        "report": "daily", "host": "localhost", "generated_at": _at(days_before, 1), "check_mode": False,
        "status": "failed" if failed else "passed", "health_status": "WARNING" if failed else "OK",
        "failure": {"task": "backup", "msg": "volume uploads: no such volume"} if failed else {},
        "checks": [{"name": "api", "type": "http", "status": "WARNING" if failed else "OK", "message": "p95 240 ms",
                    "measures": {"p95_ms": 240 if failed else 120}},
                   {"name": "disk /", "type": "disk", "status": "OK", "message": "ok",
                    "measures": {"total_bytes": 100 * GIB, "free_bytes": (60 - 7 + days_before) * GIB, "used_pct": 47.0 - days_before}},
                   {"name": "app", "files": 2, "matches": errors, "status": "WARNING" if errors > 10 else "OK", "message": "app"}],
        "assets": [{"name": "app", "kind": "postgres", "series": "pg-app", "outcome": "written", "size_bytes": 5 << 20,
                    "duration_seconds": 3.5},
                   {"name": "uploads", "kind": "volume", "series": "vol-uploads",
                    "outcome": "failed" if failed else "written", "error": "no such volume" if failed else None,
                    "size_bytes": None if failed else 40 << 20, "duration_seconds": None if failed else 8.0}],
    }


def _weekly_document():
    dailies = [_daily(d, failed=(d == 3), errors=(14 if d == 3 else 2)) for d in (0, 1, 3, 4, 5, 6)]  # no run 2 days ago
    earlier = {"report": "weekly", "host": "localhost", "generated_at": _at(7), "check_mode": False, "trends": {"series": [
        {"series": "pg-app", "count": 20, "total_size_bytes": 90 << 20, "size_bytes": 4 << 20, "duration_seconds": 3.0},
        {"series": "vol-uploads", "count": 20, "total_size_bytes": 700 << 20, "size_bytes": 35 << 20, "duration_seconds": 7.0},
        {"series": "dir-etc-old", "count": 5, "total_size_bytes": 1 << 20, "size_bytes": 1 << 18, "duration_seconds": 0.5}]}}
    rows = [{"series": "pg-app", "kind": "postgres", "count": 27, "total_size_bytes": 130 << 20, "size_bytes": 5 << 20},
            {"series": "vol-uploads", "kind": "volume", "count": 26, "total_size_bytes": 1000 << 20, "size_bytes": 40 << 20}]
    return {"review": report_review(dailies, NOW), "trends": backup_trends(rows, NOW, daily=dailies, weekly=[earlier]),
            "phases": [{"name": "restore pg-app", "seconds": 14.2}, {"name": "restore vol-uploads", "seconds": 31.0}]}


def _monthly_document():
    dailies = [_daily(d) for d in (28, 14, 1)]
    disk = {"total_bytes": 100 * GIB, "free_bytes": 52 * GIB, "used_pct": 48.0}
    current = {"checks": [{"name": "disk /", "type": "disk", "measures": disk}],
               "database_sizes": [{"name": "app", "size_bytes": 300 << 20}, {"name": "audit", "size_bytes": 2 * GIB}]}
    return {
        "updates": {"method": "apt-get upgrade --with-new-pkgs, security archive only", "applied": True, "planned": [
            {"name": "openssl", "from": "3.0.15-1~deb12u1", "to": "3.0.16-1~deb12u1", "origin": "Debian-Security:12/stable-security"},
            {"name": "libssl3", "from": "3.0.15-1~deb12u1", "to": "3.0.16-1~deb12u1", "origin": "Debian-Security:12/stable-security"},
            {"name": "linux-image-amd64", "from": None, "to": "6.1.129-1", "origin": "Debian-Security:12/stable-security"}]},
        "reboot": {"required": True, "known": True, "planned": True, "reason": ["linux-image-amd64"], "rebooted": True,
                   "elapsed_seconds": 48},
        "images": [{"name": "app_web", "outcome": "deployed", "from": {"image": "registry.example.com/app/web:1.4"},
                    "to": {"image": "registry.example.com/app/web:1.5"}, "final": "registry.example.com/app/web:1.5",
                    "reason": "app_web: deployed"},
                   {"name": "worker", "outcome": "rolled_back", "from": {"image": "registry.example.com/app/worker:2.0"},
                    "to": {"image": "registry.example.com/app/worker:2.1"}, "final": "registry.example.com/app/worker:2.0",
                    "reason": "worker: health gate failed"}],
        "capacity": capacity_figures(dailies, NOW, current=current),
        "database_sizes": current["database_sizes"],
        "checks": current["checks"],
    }


def _daily_document():
    return {
        "health_status": "WARNING",
        "phases": [{"name": "health", "seconds": 2.1}, {"name": "postgres", "seconds": 4.0}, {"name": "volumes", "seconds": 9.0}],
        "checks": [
            {"name": "api p95", "type": "http", "status": "OK", "message": "p95 142 ms",
             "measures": {"p95_ms": 142.4, "error_pct": 0.5, "samples": 20}},
            {"name": "app memory", "type": "docker_container", "status": "WARNING", "message": "memory 83 %",
             "measures": {"memory_pct": 83.2, "cpu_pct": 12.0, "restart_count": 0}},
            {"name": "tls", "type": "tls", "status": "OK", "message": "61 days left", "measures": {"days_left": 61}},
            {"name": "app", "files": 3, "matches": 4, "status": "OK", "message": "app: 4 lines match ERROR in 3 files"}],
        "assets": [{"name": "app", "kind": "postgres", "series": "pg-app", "outcome": "written", "backup_id": "20260301T020000Z",
                    "rto_seconds": 12.0, "rto_met": True, "rpo_seconds": 3600.0, "rpo_met": True},
                   {"name": "uploads", "kind": "volume", "series": "vol-uploads", "outcome": "written", "backup_id": "b2",
                    "rto_seconds": 30.0, "rto_met": True, "rpo_seconds": 7200.0, "rpo_met": True}],
        "backups": [{"series": "pg-app", "kind": "postgres", "id": "20260301T020000Z", "age_seconds": 3600, "size_bytes": 5 << 20,
                     "count": 27}],
    }


def _finish(name, data):
    return {"name": "report " + name, "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "finish " + name, "ansible.builtin.include_role": {"name": "opskit.runbook.report", "tasks_from": "finish"},
         "vars": {"report_name": name, "report_data": data, "report_failure": {}}}]}


DAILY_DAYS = (88, 60, 30, 10, 3, 100)     # kept daily reports; 100 days ago is outside the 90-day window
DRILL_DAYS = (80, 45, 12, 130)            # kept DR drill reports


def _kept(path, doc):
    """A kept report as the report role writes it: its JSON and a page beside it."""
    name = "%s-%s-%s" % (doc["report"], doc["host"], doc["generated_at"].replace("-", "").replace(":", ""))
    with open(os.path.join(path, name + ".json"), "w") as fh:
        json.dump(doc, fh)
    with open(os.path.join(path, name + ".html"), "w") as fh:
        fh.write("<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>%s</title></head><body></body></html>" % name)


def _keep_history(path):
    targets = {"rto": "4h", "rto_seconds": 14400.0, "rpo": "24h", "rpo_seconds": 86400.0}
    for d in DAILY_DAYS:
        _kept(path, {"report": "daily", "host": "localhost", "generated_at": _at(d, 1), "status": "failed" if d == 30 else "passed",
                     "check_mode": False, "health_status": "CRITICAL" if d == 30 else "OK", "targets": targets,
                     "failure": {"task": "health", "msg": "api down"} if d == 30 else {},
                     "checks": [{"name": "api", "type": "http", "status": "CRITICAL" if d == 30 else "OK"}],
                     "backups": [{"series": "pg-app", "kind": "postgres", "size_bytes": (100 - d) << 20, "age_seconds": 3600 + d}],
                     "assets": [{"name": "app", "kind": "postgres", "series": "pg-app", "outcome": "written",
                                 "size_bytes": (100 - d) << 20, "duration_seconds": 2.0 + d / 10}]})
    for d in DRILL_DAYS:
        _kept(path, {"report": "dr_drill", "host": "localhost", "generated_at": _at(d, 1), "status": "passed", "check_mode": False,
                     "targets": targets, "assets": [
                         {"name": "app", "kind": "postgres", "series": "pg-app", "rto_seconds": 10.0 + d, "rpo_seconds": 4000.0 + d,
                          "ok": True},
                         {"name": "uploads", "kind": "volume", "series": "vol-uploads", "rto_seconds": 30.0,
                          "rpo_seconds": {80: 30000.0, 45: 95000.0}.get(d, 60000.0), "ok": d != 45}]})


class Page(HTMLParser):
    """Sections (by id), tables (by id: their data rows), charts (by aria-label: the rects and the
    target lines with their attributes) and the text of the page."""

    def __init__(self, text):
        super().__init__()
        self.sections, self.tables, self.charts, self.text, self.links = [], {}, {}, [], []
        self._table = self._chart = None
        self._label = False
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs.get("id"))
        elif tag == "table" and attrs.get("id"):
            self._table = self.tables.setdefault(attrs["id"], [])
        elif tag == "tr" and self._table is not None:
            self._table.append([])
        elif tag == "svg":
            self._chart = self.charts.setdefault(attrs.get("aria-label"), {"rect": [], "line": [], "circle": [], "path": [],
                                                                           "labels": []})
        elif tag in ("rect", "line", "circle", "path") and self._chart is not None:
            self._chart[tag].append(attrs)
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])
        self._label = tag == "text" and attrs.get("class") == "target-label"

    def handle_endtag(self, tag):
        self._label = False
        if tag == "table":
            self._table = None
        elif tag == "svg":
            self._chart = None

    def handle_data(self, data):
        self.text.append(data)
        if self._table and self._table[-1] is not None and data.strip():
            self._table[-1].append(data.strip())
        if self._chart is not None and self._label:
            self._chart["labels"].append(data)  # the visible label of the target line

    def flat(self):
        return " ".join("".join(self.text).split())

    def rows(self, table):
        return len(self.tables[table]) - 1  # the header row


@pytest.fixture(scope="module")
def pages(run_playbook, tmp_path_factory):
    reports = tmp_path_factory.mktemp("reports")
    _keep_history(reports)
    plays = [_finish("weekly", _weekly_document()), _finish("monthly", _monthly_document()), _finish("daily", _daily_document())]
    run = run_playbook(plays, {"opskit_report_dir": str(reports)}, clock=NOW)
    assert run.rc == 0, run.stdout[-3000:] + run.stderr[-2000:]
    found = {}
    for name in ("weekly", "monthly", "daily"):
        (path,) = glob.glob(str(reports / ("%s-localhost-20260301T*.html" % name)))  # not the kept ones
        with open(path) as fh:
            found[name] = (path, Page(fh.read()))
        with open(path[:-5] + ".json") as fh:
            assert json.load(fh)["generated_at"].startswith("2026-03-01T03:0"), path  # the fixed clock
    path = str(reports / "index.html")
    with open(path) as fh:
        found["index"] = (path, Page(fh.read()))
    return found


def test_weekly_page_shows_the_review_and_the_trends(pages):
    _path, page = pages["weekly"]
    assert {"review", "trends", "phases"} <= set(page.sections)
    assert not {"updates", "reboot", "images", "capacity", "database-sizes", "checks"} & set(page.sections)
    text = page.flat()
    assert "7 days): 6 runs, 5 passed, 1 failed, 1 days without a run. Status: WARNING" in text, text
    assert page.rows("review-failed-runs") == 1 and page.rows("review-gaps") == 1
    assert page.tables["review-failed-assets"][1][:4] == ["uploads", "volume", "vol-uploads", "1"]
    assert [r[0] for r in page.tables["review-health"][1:]] == ["api", "disk /"]
    assert page.tables["review-logs"][1][:3] == ["app", "6", "24"]  # 5 x 2 + 14 lines
    series = {r[0]: r for r in page.tables["trends-series"][1:]}
    assert set(series) == {"pg-app", "vol-uploads", "dir-etc-old"}
    assert series["vol-uploads"][2:6] == ["26", "+6", "1000.0 MiB", "+42.9 %"], series["vol-uploads"]
    assert "53 backups, 1.1 GiB in total (+8 backups, +339.0 MiB since 2026-02-22T03:00:00Z)" in text
    assert "Gone since the earlier reports (no backup now): dir-etc-old" in text
    chart = page.charts["total size per series"]
    assert len(chart["rect"]) == 2  # the gone series has no size: no bar
    widths = sorted(float(r["width"]) for r in chart["rect"])
    assert widths[1] == pytest.approx(widths[0] * 1000 / 130, rel=0.01)
    assert len(page.charts["seconds per phase"]["rect"]) == 2


def test_monthly_page_shows_updates_reboot_images_and_capacity(pages):
    _path, page = pages["monthly"]
    assert {"updates", "reboot", "images", "capacity", "database-sizes", "checks"} <= set(page.sections)
    assert not {"review", "trends"} & set(page.sections)
    assert page.tables["updates-planned"][1] == ["openssl", "3.0.15-1~deb12u1", "3.0.16-1~deb12u1", "Debian-Security:12/stable-security"]
    assert page.tables["updates-planned"][3][:2] == ["linux-image-amd64", "new"]
    text = page.flat()
    assert "3 packages planned; applied." in text and "rebooted in 48.00 s" in text
    assert "applied" in text and "reboot required" in text and "linux-image-amd64" in text and "48.00 s" in text
    assert [r[:2] for r in page.tables["images-table"][1:]] == [["app_web", "deployed"], ["worker", "rolled_back"]]
    disk = page.tables["capacity-disks"][1]
    assert disk[0] == "disk /" and disk[1] == "48.0 GiB" and disk[-1] == "4", disk  # 3 kept daily reports + this run
    assert [r[0] for r in page.tables["capacity-databases"][1:]] == ["app", "audit"]
    assert page.tables["checks-table"][1][2:] == ["free_bytes=52.0 GiB", "total_bytes=100.0 GiB", "used_pct=48"]
    assert page.rows("database-sizes-table") == 2 and len(page.charts["size per database"]["rect"]) == 2
    assert len(page.charts["disk used (%)"]["rect"]) == 1 and page.charts["disk used (%)"]["labels"] == ["target 100 %"]


def test_daily_page_shows_the_measures_and_scales_rto_to_the_values(pages):
    _path, page = pages["daily"]
    assert {"objectives", "phases", "assets", "backups", "checks"} <= set(page.sections)
    assert not {"review", "trends", "updates", "reboot", "images", "capacity"} & set(page.sections)
    measured = {r[0]: " ".join(r[3:]) for r in page.tables["checks-table"][1:]}
    assert measured == {"api p95": "error_pct=0.5 p95_ms=142.4 samples=20 p95 142 ms",
                        "app memory": "cpu_pct=12 memory_pct=83.2 restart_count=0 memory 83 %",
                        "tls": "days_left=61 61 days left",
                        "app": "matches=4 files=3 app: 4 lines match ERROR in 3 files"}, measured
    rto = page.charts["restore + verify time (RTO) per asset"]
    assert len(rto["rect"]) == 2 and len(rto["line"]) == 1
    widths = [float(r["width"]) for r in rto["rect"]]
    # 12 s and 30 s against a 4 h target: on a 4 h scale 12 s would be 0.3 px; the scale fits the values
    assert widths[0] > 100 and widths[1] == pytest.approx(widths[0] * 30 / 12, rel=0.01), widths
    assert rto["labels"] == ["target 4.0 h \u2192 off scale"]
    rpo = page.charts["age of the newest verified backup (RPO) per asset"]
    assert len(rpo["rect"]) == 2 and rpo["labels"] == ["target 24.0 h \u2192 off scale"]
    assert len(page.charts["age of the newest backup per series"]["rect"]) == 1
    assert len(page.charts["seconds per phase"]["rect"]) == 3


def test_history_page_draws_every_kept_run_of_the_window(pages):
    path, page = pages["index"]
    assert page.sections == ["runs", "series", "assets", "checks"]
    text = page.flat()
    assert ("The runs of the 90 days from 2025-12-01T03:0" in text and "at most the newest 500 (report_history_days,"
            " report_history_runs): 11 runs on this page." in text), text[:600]
    runs = page.tables["history-runs"][1:]
    assert len(runs) == 11 and [r[1] for r in runs[-3:]] == ["daily", "dr_drill", "daily"]   # newest first: 12 and 10 days ago, 3 days
    assert [r[3] for r in runs if r[1] == "daily" and r[0].startswith("2026-01-30")] == ["failed"]
    assert len(page.links) == 11 and all(os.path.isfile(os.path.join(os.path.dirname(path), link)) for link in page.links)
    for name, marks in (("daily", 6), ("dr_drill", 3), ("weekly", 1), ("monthly", 1)):
        assert len(page.charts["outcome of %s runs" % name]["rect"]) == marks, name
    failed = [r for r in page.charts["outcome of daily runs"]["rect"] if r["class"] == "state-failed"]
    assert len(failed) == 1
    assert [r[0] for r in page.tables["history-series"][1:]] == ["pg-app", "vol-uploads"]
    for title, marks in (("backup size", 6), ("backup duration", 5), ("age of the newest backup", 6)):
        assert len(page.charts["pg-app: " + title]["circle"]) == marks, title
        assert "vol-uploads: " + title not in page.charts, title  # no value: no chart
    assert page.charts["pg-app: age of the newest backup"]["labels"] == ["target 24.0 h \u2191 off scale"]
    rto = page.charts["app: RTO (restore + verify)"]
    assert len(rto["circle"]) == 4 and rto["labels"] == ["target 4.0 h \u2191 off scale"]
    heights = sorted(112 - float(c["cy"]) for c in rto["circle"])   # above the time axis (y 112)
    assert heights[-1] > 60 and heights[0] > 5, heights   # 12 s to 90 s fill the plot: on a 4 h scale all would be < 1 px
    rpo = page.charts["uploads: RPO (age of the data restored)"]
    assert len(rpo["circle"]) == 4 and rpo["labels"] == ["target 24.0 h"]   # 95000 s: the target is drawn to scale
    assert [c["fill"] for c in rpo["circle"]].count("#c62828") == 1          # the one beyond it
    target_y = float(rpo["path"][-1]["d"].split()[1])
    over = [c for c in rpo["circle"] if c["fill"] == "#c62828"][0]
    assert float(over["cy"]) < target_y < min(float(c["cy"]) for c in rpo["circle"] if c is not over)
    states = page.charts["api (http): state per run"]["rect"]
    assert [r["class"] for r in states] == ["state-OK", "state-OK", "state-CRITICAL", "state-OK", "state-OK"]
    assert len(page.charts["app (logs): state per run"]["rect"]) == 1
    assert os.path.getsize(path) < 200000


@pytest.fixture(scope="module")
def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    for binary in ("/usr/bin/chromium", "/usr/bin/chromedriver"):
        assert os.access(binary, os.X_OK), "%s is missing: run scripts/bootstrap.sh" % binary
    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1280,2400"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service("/usr/bin/chromedriver"), options=options)
    try:
        yield driver
    finally:
        driver.quit()


CHART_COUNTS = {
    "weekly": {"total size per series": 2, "seconds per phase": 2},
    "monthly": {"size per database": 2, "disk used (%)": 1},
    "daily": {"restore + verify time (RTO) per asset": 2, "age of the newest verified backup (RPO) per asset": 2,
              "seconds per phase": 3},
    "index": {"outcome of daily runs": 6, "outcome of dr_drill runs": 3, "pg-app: backup size": 6, "pg-app: backup duration": 5,
              "app: RTO (restore + verify)": 4, "uploads: RPO (age of the data restored)": 4, "api (http): state per run": 5},
}


def test_pages_in_headless_chromium(pages, browser, tmp_path):
    from selenium.webdriver.common.by import By
    artifacts = os.path.join(ROOT, ".build", "test-results")
    for name, (path, page) in pages.items():
        browser.get("file://" + path)
        errors = [e for e in browser.get_log("browser") if e.get("level") in ("SEVERE", "ERROR")]
        assert errors == [], (name, errors)
        sections = [s.get_attribute("id") for s in browser.find_elements(By.CSS_SELECTOR, "section")]
        assert sections == page.sections, name
        for label, marks in CHART_COUNTS[name].items():
            rects = browser.find_elements(By.CSS_SELECTOR, 'svg[aria-label="%s"] rect, svg[aria-label="%s"] circle' % (label, label))
            assert len(rects) == marks, (name, label)
            assert all(r.size["width"] > 0 for r in rects), (name, label)  # drawn, visibly non-zero
        assert browser.find_elements(By.CSS_SELECTOR, "script") == []
        shot = str(tmp_path / ("report-%s.png" % name))
        assert browser.save_screenshot(shot) and os.path.getsize(shot) > 10000, name
        if os.path.isdir(artifacts):  # make test keeps them with the JUnit files
            shutil.copy(shot, artifacts)
