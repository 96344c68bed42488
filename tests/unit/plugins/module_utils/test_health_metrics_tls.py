# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain logic of the metrics, prometheus and tls probes: quantiles from buckets, sample
selection, PromQL answers, series judgement, host name matching, STARTTLS exchanges."""

from __future__ import annotations

import json
import math
import socket
import threading

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._health import metrics, pods, tls
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import validate_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.net import _Clock
from ansible_collections.opskit.runbook.plugins.module_utils._health.probe import Observation, ProbeFailed

INF = math.inf


@pytest.mark.parametrize("fraction, buckets, expected", [
    (0.95, [(0.05, 600), (0.1, 800), (0.25, 900), (0.5, 980), (INF, 1000)], 0.40625),
    (0.5, [(1, 0), (2, 10), (INF, 10)], 1.5),
    (0.99, [(1, 5), (INF, 10)], 1),          # in +Inf: the highest finite bound
    (0.5, [(1, 0), (INF, 0)], None),         # no observations
    (0.5, [(INF, 3)], None),                 # no finite bucket
    (0.1, [(-1, 5), (INF, 10)], -1),
])
def test_histogram_quantile(fraction, buckets, expected):
    value = metrics.histogram_quantile(fraction, buckets)
    assert math.isnan(value) if expected is None else value == pytest.approx(expected)


TEXT = """# TYPE g gauge
g{a="1",b="x"} 5
g{a="2",b="x"} 7
# TYPE h histogram
h_bucket{le="1",p="a"} 1
h_bucket{le="+Inf",p="a"} 2
h_bucket{le="1",p="b"} 1
h_bucket{le="+Inf",p="b"} 2
h_sum 3
h_count 4
# TYPE s summary
s{quantile="0.5"} 0.2
s{quantile="0.9"} 0.7
s_count 3
s_sum 1
"""


@pytest.mark.parametrize("check, expected", [
    ({"metric": "g"}, [({"a": "1", "b": "x"}, 5), ({"a": "2", "b": "x"}, 7)]),
    ({"metric": "g", "labels": {"a": 2}}, [({"a": "2", "b": "x"}, 7)]),
    ({"metric": "g", "labels": {"c": "1"}}, []),
    ({"metric": "h", "quantile": 0.5}, [({"quantile": "0.5"}, 1.0)]),          # buckets summed by le: 2 of 4 at le=1
    ({"metric": "h_bucket", "quantile": 0.75, "labels": {"p": "a"}}, [({"quantile": "0.75"}, 1.0)]),
    ({"metric": "s", "quantile": 0.9}, [({"quantile": "0.9"}, 0.7)]),
    ({"metric": "nope", "quantile": 0.9}, []),
])
def test_select_samples(check, expected):
    parser = metrics.PROMETHEUS_PARSER.load()
    assert metrics.select_samples(list(parser.text_string_to_metric_families(TEXT)), check) == expected


def test_quantile_of_a_gauge_is_unknown():
    parser = metrics.PROMETHEUS_PARSER.load()
    with pytest.raises(ProbeFailed, match="g is a gauge, quantile needs a histogram or a summary"):
        metrics.select_samples(list(parser.text_string_to_metric_families(TEXT)), {"metric": "g", "quantile": 0.5})


def _answer(**data):
    return json.dumps(dict({"status": "success"}, data=data)).encode()


@pytest.mark.parametrize("status, body, expected", [
    (200, _answer(resultType="vector", result=[{"metric": {"a": "1"}, "value": [1, "0.5"]}]), [({"a": "1"}, 0.5)]),
    (200, _answer(resultType="scalar", result=[1, "+Inf"]), [({}, INF)]),
    (200, _answer(resultType="vector", result=[]), []),
])
def test_parse_query_answer(status, body, expected):
    assert metrics.parse_query_answer(status, body) == expected


@pytest.mark.parametrize("status, body, state, fragment", [
    (400, b'{"status": "error", "errorType": "bad_data", "error": "parse error"}', "UNKNOWN",
     "Prometheus query failed (HTTP 400, bad_data): parse error"),
    (503, b"<html>down</html>", "CRITICAL", "Prometheus answered HTTP 503 with no JSON"),
    (200, b"[1, 2]", "UNKNOWN", "no status success in the answer"),
    (200, _answer(resultType="matrix", result=[]), "UNKNOWN", "answered a matrix"),
    (200, _answer(resultType="vector", result=[{"metric": {}, "value": [1, "abc"]}]), "UNKNOWN", "a vector that does not parse"),
    (401, b'{"status": "error", "error": "unauthorized"}', "CRITICAL", "HTTP 401"),
])
def test_bad_query_answers(status, body, state, fragment):
    with pytest.raises(ProbeFailed) as err:
        metrics.parse_query_answer(status, body)
    assert err.value.state == state and fragment in err.value.msg and "\n" not in err.value.msg


def test_query_url_keeps_the_path_prefix():
    assert metrics.query_url("https://u:p@h/prom/", 'up{a="b"}') == "https://u:p@h/prom/api/v1/query?query=up%7Ba%3D%22b%22%7D"


def _judged(series, **options):
    check, = validate_checks([dict({"type": "prometheus", "name": "p", "url": "http://h", "query": "q"}, **options)])
    obs = Observation()
    metrics.judge_series(check, obs, series, "query")
    return obs


def test_judge_series():
    series = [({"i": "a"}, 1.0), ({"i": "b"}, 9.0), ({"i": "c"}, math.nan)]
    obs = _judged(series, critical=5)
    assert obs.measures["value"] == 9 and obs.measures["series"] == 2 and obs.measures["sum"] == 10
    assert obs.details["series"][0] == {"labels": {"i": "b"}, "value": 9.0, "status": "CRITICAL"}
    assert any("1 series with value NaN left out" in n for n in obs.notes)
    assert _judged(series, aggregate="avg").measures["value"] == 5
    assert _judged(series, aggregate="count").measures["value"] == 2
    empty = _judged([], empty="warning")
    assert empty.problems == [("WARNING", "query returned no series (empty: warning)")]
    assert _judged([]).problems[0][0] == "UNKNOWN" and not _judged([], empty="ok").problems


@pytest.mark.parametrize("names, ips, host, matches", [
    (["api.example.com"], [], "API.example.com.", True),
    (["*.example.com"], [], "api.example.com", True),
    (["*.example.com"], [], "a.b.example.com", False),
    (["*.example.com"], [], "example.com", False),
    (["example.com"], ["127.0.0.1"], "127.0.0.1", True),
    (["127.0.0.1"], [], "127.0.0.1", False),           # an address matches only an IP SAN
    ([], ["::1"], "0:0::1", True),
])
def test_hostname_matches(names, ips, host, matches):
    assert tls.hostname_matches(names, ips, host) is matches


def _server(script):
    """A socket pair whose far end sends/expects the ``script`` lines: [(expect, send)]."""
    near, far = socket.socketpair()

    def run():
        buffer = b""
        for expect, send in script:
            while expect and expect not in buffer:
                buffer += far.recv(100)
            buffer = b""
            if send:
                far.sendall(send)
    threading.Thread(target=run, daemon=True).start()
    return near


@pytest.mark.parametrize("kind, script, error", [
    ("smtp", [(None, b"220-hello\r\n220 there\r\n"), (b"EHLO", b"250-x\r\n250 STARTTLS\r\n"), (b"STARTTLS", b"220 go\r\n")], None),
    ("smtp", [(None, b"220 hi\r\n"), (b"EHLO", b"250 x\r\n"), (b"STARTTLS", b"454 TLS not available\r\n")],
     "STARTTLS refused by the SMTP server: '454 TLS not available'"),
    ("imap", [(None, b"* OK ready\r\n"), (b"a1 STARTTLS", b"* BYE no\r\na1 OK begin\r\n")], None),
    ("imap", [(None, b"* OK ready\r\n"), (b"a1 STARTTLS", b"a1 BAD no\r\n")], "STARTTLS refused by the IMAP server"),
    ("postgres", [(b"\x04\xd2\x16\x2f", b"N")], "PostgreSQL refused SSL (answered b'N' to SSLRequest"),
    ("postgres", [(b"\x04\xd2\x16\x2f", b"S")], None),
    ("smtp", [(None, b"554 go away\r\n")], "STARTTLS refused (greeting): '554 go away'"),
])
def test_starttls(kind, script, error):
    sock = _server(script)
    try:
        if error is None:
            tls.starttls(sock, kind, _Clock(5))
        else:
            with pytest.raises(ProbeFailed) as err:
                tls.starttls(sock, kind, _Clock(5))
            assert error in err.value.msg
    finally:
        sock.close()


# --------------------------------------------------------------------------- pods

@pytest.mark.parametrize("text, value", [
    ("128Mi", 128 * 2 ** 20), ("1Gi", 2 ** 30), ("500M", 5e8), ("250m", 0.25), ("1e3", 1000.0), ("12345", 12345.0),
    ("", None), ("12Qi", None), (None, None),
])
def test_parse_quantity(text, value):
    assert pods.parse_quantity(text) == value


def _pod(name, ready=True, restarts=0, waiting=None, last=None, limit="100Mi"):
    return {"metadata": {"name": name},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"memory": limit}} if limit else {}}]},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                       "containerStatuses": [{"name": "c", "restartCount": restarts,
                                              "state": {"waiting": {"reason": waiting}} if waiting else {},
                                              "lastState": {"terminated": {"reason": last}} if last else {}}]}}


@pytest.mark.parametrize("items, usage, problems, measures", [
    ([], None, [("CRITICAL", "no pod matches None")], {"pods": 0}),
    ([_pod("a"), _pod("b", restarts=3)], {"a": 50 * 2 ** 20, "b": 90 * 2 ** 20}, [],
     {"pods": 2, "ready_pct": 100.0, "restarts": 3, "max_restarts": 3, "memory_pct": 90.0}),
    ([_pod("a", ready=False, waiting="CrashLoopBackOff")], None,
     [("CRITICAL", "no pod ready (1 pods)"), ("CRITICAL", "CrashLoopBackOff: a/c")], {"crashloop": 1}),
    ([_pod("a"), _pod("b", ready=False, last="OOMKilled")], {}, [("WARNING", "1 of 2 pods not ready: b"), ("WARNING", "OOMKilled: b/c")],
     {"oom_killed": 1, "ready_pct": 50.0}),
    ([_pod("a", limit=None)], {"a": 1}, [], {"pods": 1}),
])
def test_judge_pods(items, usage, problems, measures):
    obs = Observation()
    pods.judge_pods(items, usage, obs)
    assert obs.problems == problems
    assert {k: obs.measures[k] for k in measures} == measures
    assert ("memory_pct" in obs.measures) is ("memory_pct" in measures)
