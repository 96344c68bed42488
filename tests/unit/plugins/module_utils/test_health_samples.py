# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain logic of the health engine added by issue 17: URL redaction, alias keys, percentiles,
the judgement of sampled http checks."""

from __future__ import annotations

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._health import sampling
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import CHECK_ARGSPEC, validate_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.probe import ProbeFailed, redact, url_secrets
from ansible_collections.opskit.runbook.plugins.module_utils._health.engine import run_checks


@pytest.mark.parametrize("text, shown", [
    ("http https://u:pw@h:8/x?token=abc&page=2#f", "http https://***@h:8/x?token=***&page=***#f"),
    ("GET http://h/x?abc and http://a@b/", "GET http://h/x?*** and http://***@b/"),
    ("http://h/p", "http://h/p"),
    ("no url here ?a=b", "no url here ?a=b"),
    (None, None),
])
def test_redact(text, shown):
    assert redact(text) == shown


def test_url_secrets():
    assert url_secrets("http://u:p%40ss@h/x?access_token=zz0123&ms=300000&api_key=k12345&sig=s") == {"p%40ss", "zz0123", "k12345"}
    assert url_secrets("http://u@h/") == {"u"}
    assert url_secrets("http://h/x?page=2") == set() and url_secrets(None) == set()


def test_headers_are_no_log_and_aliases_are_accepted():
    assert CHECK_ARGSPEC["headers"]["no_log"] is True
    pg, = validate_checks([{"type": "postgres", "name": "p", "login_password": "s", "login_user": "u", "login_host": "h"}])
    assert (pg["password"], pg["user"], pg["host"]) == ("s", "u", "h")
    both, = validate_checks([{"type": "postgres", "name": "p", "password": "s", "login_password": "s"}])  # as Ansible passes them
    assert both["password"] == "s" and "login_password" not in both
    with pytest.raises(ConfigError, match=r"^check 'p' \(checks\[0\]\): password and its alias login_password are both set"):
        validate_checks([{"type": "postgres", "name": "p", "password": "a", "login_password": "b"}])


def test_names_and_errors_are_redacted():
    http, = validate_checks([{"type": "http", "url": "https://u:pw@h/x?token=t"}])
    assert http["name"] == "http https://***@h/x?token=***"
    named, = validate_checks([{"type": "http", "name": "api https://u:pw@h/", "url": "http://h/"}])
    assert named["name"] == "api https://***@h/"
    with pytest.raises(ConfigError) as err:
        validate_checks([{"type": "http", "url": "http://u:pw@h:99999/?token=t"}])
    assert "pw" not in str(err.value) and "token=***" in str(err.value)


@pytest.mark.parametrize("values, fraction, expected", [
    ([5], 0.95, 5), ([1, 2, 3, 4], 0.5, 2), ([4, 3, 2, 1], 0.75, 3),
    (list(range(1, 21)), 0.95, 19), (list(range(1, 21)), 0.99, 20), (list(range(1, 101)), 0.95, 95),
])
def test_percentile_nearest_rank(values, fraction, expected):
    assert sampling.percentile(values, fraction) == expected


@pytest.mark.parametrize("extra, message", [
    ({"thresholds": {"p95_ms": {"warning": 1}}}, "thresholds on p95_ms need samples > 1"),
    ({"samples": 0}, "samples must be an integer >= 1 and <= 10000"),
    ({"samples": 2, "sample_interval": -1}, "sample_interval must be a number >= 0"),
])
def test_sample_options_are_checked(extra, message):
    with pytest.raises(ConfigError, match=message):
        validate_checks([dict({"type": "http", "name": "h", "url": "http://h/"}, **extra)])


def _scripted(monkeypatch, outcomes):
    """probe_http_steps (one request, as steps of the event loop) replaced by a script: a number is
    an answer after that many ms, a string a failure."""
    calls = list(outcomes)

    def fake(check, obs, timeout, ctx=None):
        outcome = calls.pop(0)
        yield None, 0, 0.0      # one turn of the loop, as a request would take
        if isinstance(outcome, str):
            raise ProbeFailed("CRITICAL", outcome)
        obs.measure("time_ms", float(outcome))
        obs.measure("status_code", 200)
    monkeypatch.setattr(sampling, "probe_http_steps", fake)


@pytest.mark.parametrize("outcomes, thresholds, status, fragment", [
    ([10] * 19 + [900], {"p95_ms": {"warning": 500}}, "OK", "20 samples: p50 10 ms, p95 10 ms, p99 900 ms, max 900 ms"),
    ([10] * 18 + [900, 900], {"p95_ms": {"warning": 500}}, "WARNING", "p95_ms (900) > 500 (warning)"),
    ([10] * 18 + [900, 900], {"max_ms": {"critical": 899}}, "CRITICAL", "max_ms (900) > 899 (critical)"),
    ([10] * 9 + ["boom"], {}, "CRITICAL", "1 of 10 failed (10%), first: boom"),
    ([10] * 9 + ["boom"], {"error_pct": {"critical": 10}}, "OK", "1 of 10 failed (10%)"),
    ([10] * 8 + ["a", "b"], {"error_pct": {"critical": 10}}, "CRITICAL", "error_pct (20) > 10 (critical)"),
    (["a", "b"], {"error_ratio": {"critical": 0.5}}, "CRITICAL", "2 samples, none answered"),
])
def test_sampled_http_judgement(monkeypatch, outcomes, thresholds, status, fragment):
    _scripted(monkeypatch, outcomes)
    check = {"type": "http", "name": "h", "url": "http://h/", "samples": len(outcomes), "thresholds": thresholds}
    result = run_checks([check])["checks"][0]
    assert result["status"] == status, result
    assert fragment in result["message"], result["message"]
    assert result["measures"]["samples"] == len(outcomes)


@pytest.mark.parametrize("check, message", [
    ({"type": "pod", "deployment": "web", "selector": "app=web"}, "check 'c' (checks[0]): type pod requires deployment or selector (one of them)"),
    ({"type": "pod"}, "type pod requires deployment or selector"),
    ({"type": "logs", "container": "x", "since": "ten minutes"}, "check 'c' (checks[0]): since: cannot parse duration 'ten minutes'"),
    ({"type": "logs", "container": "x", "patterns": ["ERROR("]}, "check 'c' (checks[0]): patterns[0]: bad regular expression 'ERROR(': missing )"),
    ({"type": "logs", "container": "x", "mask": ["[a-"]}, "mask[0]: bad regular expression '[a-'"),
    ({"type": "logs", "container": "x", "compose_service": "y"}, "type logs requires container or compose_service (one of them)"),
    ({"type": "docker_container"}, "type docker_container requires container or compose_service"),
    ({"type": "logs", "container": "x", "excerpt": 51}, "excerpt must be an integer >= 0 and <= 50"),
    ({"type": "tls", "host": "h", "port": 1, "starttls": "ftp"}, "starttls must be one of none, smtp, imap, postgres, got 'ftp'"),
    ({"type": "tls", "host": "h"}, "type tls requires port"),
    ({"type": "prometheus", "url": "http://h", "query": "up", "aggregate": "median"}, "aggregate must be one of none, sum, min, max, avg, count"),
    ({"type": "prometheus", "url": "http://h"}, "type prometheus requires query"),
    ({"type": "metrics", "url": "http://h", "metric": "m", "quantile": 1.5}, "quantile must be a number >= 0 and <= 1"),
    ({"type": "metrics", "url": "http://h", "metric": "m", "labels": {"a": [1]}}, "labels must be a mapping of label name to value"),
    ({"type": "metrics", "url": "ftp://h", "metric": "m"}, "url must be http:// or https:// with a host"),
    ({"type": "docker_container", "container": "c", "cpu_window": 61}, "cpu_window must be a number >= 0 and <= 60"),
])
def test_new_types_bad_input_is_one_line(check, message):
    with pytest.raises(ConfigError) as err:
        validate_checks([dict(check, name="c")])
    assert message in str(err.value) and "\n" not in str(err.value)
