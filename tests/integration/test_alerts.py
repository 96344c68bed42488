# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Alerts by severity and channel (issue 15, item 6), through ansible-playbook: a local HTTP
receiver (Slack-style and JSON webhooks, PagerDuty Events v2, the heartbeat) and a local SMTP
server get the documented payloads; broken channels are warnings; no secret reaches the output,
even at -vvv."""

from __future__ import annotations

import json
import os

import pytest

from alert_fixtures import HttpReceiver, SmtpReceiver, check_rules_against_exported
from harness import free_port
from roles_fixtures import playbook

SECRETS = ["slack-secret-S1", "json-secret-J1", "hdr-secret-H1", "pd-routing-R1xyz", "broken-secret-B1", "beat-secret-U1"]
VERBOSE = {"ANSIBLE_VERBOSITY": "3"}
pytestmark = pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS")


def _channels(http, smtp, **mins):
    return [
        {"name": "slack", "type": "slack", "url": http.url("/hooks/slack-secret-S1"), "min_severity": mins.get("slack", "warning")},
        {"name": "siem", "type": "webhook", "url": http.url("/hooks/json-secret-J1"),
         "headers": {"Authorization": "Bearer hdr-secret-H1"}, "min_severity": mins.get("siem", "info")},
        {"name": "oncall", "type": "pagerduty", "url": http.url("/v2/enqueue"), "routing_key": "pd-routing-R1xyz"},
        smtp.channel(min_severity=mins.get("mail", "warning")),
        {"name": "broken", "type": "webhook", "url": http.url("/broken-secret-B1"), "min_severity": "info"},
        {"name": "nobody", "type": "slack", "url": "http://127.0.0.1:%d/x" % free_port(), "min_severity": "info"},
    ]


def _no_secret(run, smtp):
    seen = run.stdout + run.stderr + json.dumps(run.results)
    for secret in SECRETS + [smtp.password]:
        assert secret not in seen, secret


def test_test_alert_sends_each_severity_to_every_channel(run_playbook, tmp_path):
    with HttpReceiver() as http, SmtpReceiver() as smtp:
        channels = [c for c in _channels(http, smtp) if c["name"] != "broken"]  # "nobody": nothing listens
        extra = {"opskit_alert_channels": channels, "opskit_report_dir": str(tmp_path)}
        run = run_playbook(playbook("test_alert"), extra, env=VERBOSE)
    assert run.rc == 0, run.stdout[-3000:]
    slack = [r["json"] for r in http.at("/hooks/slack-secret-S1")]
    assert [t["text"].split(" ")[0] for t in slack] == [":rotating_light:", ":warning:", ":information_source:"]
    assert all("[TEST] opskit.runbook test_alert" in t["text"] for t in slack), slack
    assert 'FAILED on localhost: task "Test | a failed task": test failure event' in slack[0]["text"]
    siem = http.at("/hooks/json-secret-J1")
    assert [r["json"]["severity"] for r in siem] == ["failure", "warning", "info"]
    assert all(r["headers"]["Authorization"] == "Bearer hdr-secret-H1" for r in siem)
    body = siem[1]["json"]
    assert body["event"] == "opskit.runbook.warning" and body["test"] is True and body["host"] == "localhost"
    assert body["warnings"] == ["WARNING test check: nothing is wrong"] and body["report"] == "test_alert"
    pd = [r["json"] for r in http.at("/v2/enqueue")]
    assert [(p["event_action"], p["payload"]["severity"]) for p in pd] == [
        ("trigger", "critical"), ("trigger", "warning"), ("trigger", "info")]
    assert pd[0]["routing_key"] == "pd-routing-R1xyz" and pd[0]["dedup_key"] == "opskit.runbook/test/failure/localhost"
    assert pd[0]["payload"]["source"] == "localhost" and pd[0]["payload"]["custom_details"]["severity"] == "failure"
    assert [m["subject"].split(" ")[:2] for m in smtp.messages] == [["[opskit.runbook]", "[TEST]"]] * 3
    assert smtp.messages[0]["to"] == ["ops@test.invalid"] and "Severity: failure" in smtp.messages[0]["body"]
    assert smtp.logins == [("opskit", smtp.password)] * 3  # the password reached the server, and only the server
    warnings = [line for line in run.stdout.splitlines() if "could not be posted" in line]
    assert len(warnings) == 3 and all(w.endswith("could not be posted to nobody (HTTP -1)\"") for w in warnings), warnings
    _no_secret(run, smtp)


def _finish_play(name, data, failure=None):
    return {"name": "finish " + name, "hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "finish " + name, "ansible.builtin.include_role": {"name": "opskit.runbook.report", "tasks_from": "finish"},
         "vars": {"report_name": name, "report_data": data, "report_failure": failure or {}}}]}


def _prom(path):
    """{metric{labels}: value} of a textfile-collector file."""
    out = {}
    with open(path) as fh:
        for line in fh:
            if line.strip() and not line.startswith("#"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
    return out


def test_severities_heartbeat_and_metrics_then_a_failing_daily(run_playbook, tmp_path):
    """A drill that passed (info, PagerDuty resolve), a daily whose health check is in WARNING
    (posted, the run passes), then a real daily.yml run (at -vvv) whose directory asset fails:
    the failure reaches every channel and the old webhook, the heartbeat gets /fail, the metrics
    say so, and the shipped Prometheus rules match the metrics the roles exported."""
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    conf = tmp_path / "etc-app"
    conf.mkdir()
    (conf / "app.conf").write_text("listen 8080\n")
    with HttpReceiver() as http, SmtpReceiver() as smtp:
        beats = {"dr_drill": http.url("/ping/beat-secret-U1/drill"), "daily": http.url("/ping/beat-secret-U1/daily/")}
        extra = {"opskit_alert_channels": _channels(http, smtp)[:5],  # "broken" answers 500 "opskit_report_dir": str(tmp_path / "reports"),
                 "opskit_heartbeat_urls": beats, "opskit_metrics_dir": str(metrics),
                 "opskit_webhook_url": http.url("/hooks/legacy-secret-L1")}
        drill = {"assets": [{"name": "shop", "rto_seconds": 12.5, "rpo_seconds": 3600, "rto_met": True, "rpo_met": True}]}
        checks = {"checks": [{"name": "api", "type": "http", "status": "OK", "message": "200"},
                             {"name": "disk /", "type": "disk", "status": "WARNING", "message": "15% free"}]}
        first = run_playbook([_finish_play("dr_drill", drill), _finish_play("daily", checks)], extra)
        assert first.rc == 0, first.stdout[-3000:]  # a broken channel is a warning, never a failed run
        assert "WARNING: the warning alert could not be posted to broken (HTTP 500)" in first.stdout
        assert {r["path"] for r in http.requests} == {
            "/hooks/json-secret-J1", "/v2/enqueue", "/hooks/slack-secret-S1", "/broken-secret-B1",
            "/ping/beat-secret-U1/drill", "/ping/beat-secret-U1/daily"}
        info, warning = [r["json"] for r in http.at("/hooks/json-secret-J1")]
        assert info["severity"] == "info" and info["report"] == "dr_drill" and info["warnings"] == []
        assert info["msg"] == "drill passed: RTO 12.5 s, RPO 3600 s", info
        assert warning["severity"] == "warning" and warning["warnings"] == ["WARNING disk /: 15% free"]
        (slack,) = http.at("/hooks/slack-secret-S1")  # min_severity warning: no info event
        assert slack["json"]["text"].startswith(":warning: opskit.runbook daily WARNING on localhost: WARNING disk /: 15% free")
        resolves = [r["json"] for r in http.at("/v2/enqueue")]  # below the PagerDuty channel's min_severity: resolve
        assert [(p["event_action"], p["dedup_key"]) for p in resolves] == [
            ("resolve", "opskit.runbook/dr_drill/localhost"), ("resolve", "opskit.runbook/daily/localhost")]
        assert "WARNING disk /: 15% free" in smtp.messages[0]["body"] and smtp.messages[0]["subject"].startswith("[opskit.runbook] daily WARNING on localhost")
        assert http.at("/ping/beat-secret-U1/daily")[0]["body"].startswith("opskit.runbook daily WARNING on localhost")
        passed = _prom(metrics / "opskit_report_daily_success.prom")
        success_at = passed['opskit_run_last_success_timestamp_seconds{host="localhost",report="daily"}']
        assert _prom(metrics / "opskit_report_daily.prom")['opskit_run_warnings{host="localhost",report="daily"}'] == 1

        del http.requests[:], smtp.messages[:]
        daily = dict(extra, opskit_location="file://%s/backups" % tmp_path, opskit_series_prefix="t-",
                     opskit_lock_dir=str(tmp_path / "locks"), opskit_disk_paths=[str(tmp_path)],
                     opskit_directories=[{"name": "etc-app", "path": str(conf)},
                                         {"name": "gone-app", "path": str(tmp_path / "gone-app")}],
                     opskit_copy_to={"location": "file://%s/copy" % tmp_path})  # the rules read its location="copy" series too
        run = run_playbook(playbook("daily"), daily, env=VERBOSE)
    assert run.rc != 0
    assert "daily run failed on localhost: backups of localhost failed: directory gone-app: " in run.stdout, run.stdout[-3000:]
    assert sorted(os.listdir(tmp_path / "backups")) == ["t-dir-etc-app"]
    (fail,) = [r["json"] for r in http.at("/hooks/json-secret-J1")]
    assert fail["event"] == "opskit.runbook.failure" and "gone-app" in fail["msg"] and fail["report_path"], fail
    (slack,) = http.at("/hooks/slack-secret-S1")
    assert slack["json"]["text"].startswith(":rotating_light: opskit.runbook daily FAILED on localhost: task ")
    assert slack["json"]["text"].endswith("\nReport: %s.html" % fail["report_path"])  # a line break, not "\\n"
    (legacy,) = http.at("/hooks/legacy-secret-L1")  # report_webhook_url still works, failures only
    assert "daily FAILED on localhost" in legacy["json"]["text"] and "gone-app" in legacy["json"]["text"]
    (trigger,) = [r["json"] for r in http.at("/v2/enqueue")]
    assert trigger["event_action"] == "trigger" and trigger["dedup_key"] == "opskit.runbook/daily/localhost"
    assert trigger["payload"]["severity"] == "critical" and "gone-app" in trigger["payload"]["summary"]
    (mail,) = smtp.messages
    assert "FAILED" in mail["subject"] and "gone-app" in mail["body"]
    (beat,) = http.requests[-1:]
    assert beat["path"] == "/ping/beat-secret-U1/daily/fail" and "gone-app" in beat["body"]
    assert not http.at("/ping/beat-secret-U1/daily")
    ran = _prom(metrics / "opskit_report_daily.prom")
    assert ran['opskit_run_failed{host="localhost",report="daily"}'] == 1
    assert _prom(metrics / "opskit_report_daily_success.prom") == passed  # the last success is kept
    assert ran['opskit_run_timestamp_seconds{host="localhost",report="daily"}'] >= success_at
    assert sorted(n for n in os.listdir(metrics) if n.endswith(".prom")) == [
        "opskit_backup.prom", "opskit_health.prom", "opskit_report_daily.prom", "opskit_report_daily_success.prom",
        "opskit_report_dr_drill.prom", "opskit_report_dr_drill_success.prom"]
    check_rules_against_exported(metrics, tmp_path)
    for done in (first, run):
        _no_secret(done, smtp)
        assert "legacy-secret-L1" not in done.stdout + done.stderr
