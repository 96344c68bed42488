# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Receivers of the alert tests, on loopback and free ports, for the length of a with-block:
an HTTP receiver (Slack-style and JSON webhooks, PagerDuty Events v2, the heartbeat) and an
SMTP server (aiosmtpd) that requires a login; promtool helpers for the shipped alert rules
(roles/report/files/prometheus) and their check against the metrics of a real run."""

from __future__ import annotations

import email
import email.policy
import json
import os
import re
import shutil
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from harness import free_port
from roles_fixtures import ROOT


class HttpReceiver:
    """Records every request (method, path, headers, body, json); answers ``status`` (a path
    starting with /broken answers 500)."""

    def __init__(self, status=202):
        self.requests = []
        self.status = status
        self._lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                with outer._lock:
                    outer.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                           "body": body.decode("utf-8", "replace"), "json": parsed})
                self.send_response(500 if self.path.startswith("/broken") else outer.status)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            do_POST = _record  # noqa: N815 (http.server API)
            do_GET = _record  # noqa: N815

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = "http://127.0.0.1:%d" % self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, path):
        return self.base + path

    def at(self, path):
        """The requests to ``path`` (exact, the query string included), in arrival order."""
        return [r for r in self.requests if r["path"] == path]

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5)


class SmtpReceiver:
    """An aiosmtpd server that requires AUTH LOGIN/PLAIN with ``username``/``password`` (without TLS,
    on loopback); ``messages`` holds the parsed mails, ``logins`` the credentials it was given."""

    def __init__(self, username="opskit", password="smtp-Pa55-Xq81"):
        from aiosmtpd.controller import Controller  # pylint: disable=import-outside-toplevel
        from aiosmtpd.smtp import AuthResult  # pylint: disable=import-outside-toplevel
        self.username, self.password = username, password
        self.messages, self.logins = [], []
        outer = self

        class Handler:
            async def handle_DATA(self, server, session, envelope):  # noqa: N802 (aiosmtpd API)
                msg = email.message_from_bytes(envelope.original_content or envelope.content, policy=email.policy.default)
                outer.messages.append({"from": envelope.mail_from, "to": list(envelope.rcpt_tos), "message": msg,
                                       "subject": str(msg["Subject"]), "body": msg.get_content()})
                return "250 OK"

        def authenticator(server, session, envelope, mechanism, auth_data):  # pylint: disable=unused-argument
            login = auth_data.login.decode() if isinstance(auth_data.login, bytes) else auth_data.login
            password = auth_data.password.decode() if isinstance(auth_data.password, bytes) else auth_data.password
            outer.logins.append((login, password))
            return AuthResult(success=(login, password) == (outer.username, outer.password))

        self.port = free_port()
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, authenticator=authenticator,
                                     auth_required=True, auth_require_tls=False)

    def channel(self, **extra):
        out = {"name": "mail", "type": "email", "smtp_host": "127.0.0.1", "smtp_port": self.port, "security": "none",
               "username": self.username, "password": self.password, "from": "opskit@test.invalid",
               "to": ["ops@test.invalid"]}
        out.update(extra)
        return out

    def __enter__(self):
        self.controller.start()
        return self

    def __exit__(self, *exc):
        self.controller.stop()


# ------------------------------------------------------------------ the Prometheus alert rules


RULES_DIR = os.path.join(ROOT, "roles", "report", "files", "prometheus")
RULES = os.path.join(RULES_DIR, "opskit-alerts.rules.yml")
PROMTOOL = shutil.which("promtool")
SAMPLE = re.compile(r'^(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>.*)\})? (?P<value>\S+)$')
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def promtool(*args, cwd=RULES_DIR):
    if PROMTOOL is None:
        pytest.fail("promtool is not installed: run scripts/bootstrap.sh", pytrace=False)
    return subprocess.run([PROMTOOL] + list(args), cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def rules():
    with open(RULES) as fh:
        return [r for g in yaml.safe_load(fh)["groups"] for r in g["rules"]]


def samples(metrics_dir):
    """[(name, {label: value}, value)] of every .prom file of the directory."""
    out = []
    for name in sorted(os.listdir(metrics_dir)):
        if not name.endswith(".prom"):
            continue
        with open(os.path.join(metrics_dir, name)) as fh:
            for line in fh:
                match = SAMPLE.match(line.strip())
                if match and not line.startswith("#"):
                    out.append((match["name"], dict(LABEL.findall(match["labels"] or "")), match["value"]))
    return out


def check_rules_against_exported(metrics, workdir):
    """Every metric and label the rules read is in the .prom files of ``metrics`` (written by a
    real run), and the rules fire on those very series: the missing series t-dir-gone-app (its
    kind="" is no label at all for Prometheus) and the failed daily run; the drill passed."""
    exported = samples(metrics)
    labels_of = {}
    for name, labels, _value in exported:
        labels_of.setdefault(name, set()).update(labels)

    # every metric the rules read is exported, with every label they group or match by
    for rule in rules():
        expr = rule["expr"]
        used = set(re.findall(r"\b(opskit_[a-z_]+)\b", expr))
        assert used, rule["alert"]
        for metric in used:
            assert metric in labels_of, "%s reads %s, which no role exports" % (rule["alert"], metric)
        by = {label.strip() for group in re.findall(r"\b(?:by|on) \(([^)]*)\)", expr) for label in group.split(",")}
        matchers = set(re.findall(r"\{([a-z_]+)(?:=|!=|=~)", expr))
        for label in by | matchers:
            assert any(label in labels_of[m] for m in used), "%s uses the label %s, absent from %s" % (rule["alert"], label, used)

    # the rules fire on the series exactly as exported
    def series(name, labels):
        return "%s{%s}" % (name, ",".join('%s="%s"' % kv for kv in sorted(labels.items())))
    test = {"rule_files": [RULES], "evaluation_interval": "1m", "tests": [{
        "interval": "1m",
        "input_series": [{"series": series(n, lab), "values": "%sx20" % v} for n, lab, v in exported],
        "alert_rule_test": [
            {"eval_time": "10m", "alertname": "OpskitBackupStale", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "host": "localhost", "series": "t-dir-gone-app", "rpo": "24h"},
                 "exp_annotations": annotations("OpskitBackupStale", series="t-dir-gone-app", host="localhost", rpo="24h")}]},
            {"eval_time": "10m", "alertname": "OpskitRunFailed", "exp_alerts": [
                {"exp_labels": {"severity": "critical", "host": "localhost", "report": "daily"},
                 "exp_annotations": annotations("OpskitRunFailed", report="daily", host="localhost")}]},
            {"eval_time": "10m", "alertname": "OpskitDrillFailed", "exp_alerts": []},
        ]}]}
    path = workdir / "exported.test.yml"
    path.write_text(yaml.safe_dump(test))
    tested = promtool("test", "rules", str(path), cwd=str(workdir))
    assert tested.returncode == 0, tested.stdout + tested.stderr


def annotations(alert, **labels):
    """The annotations of ``alert`` with {{ $labels.x }} filled in (no $value in these)."""
    (rule,) = [r for r in rules() if r.get("alert") == alert]
    return {k: re.sub(r"\{\{ \$labels\.([a-z_]+) \}\}", lambda m: labels[m.group(1)], v)
            for k, v in rule["annotations"].items()}
