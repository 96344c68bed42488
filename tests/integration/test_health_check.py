# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""opskit.runbook.health_check through ansible-playbook against real targets.

Targets: an HTTP(S) server started here (JSON, slow, failing, flaky endpoints; TLS with a
self-signed certificate that expires in a few days), a socket that never answers, the harness's
PostgreSQL, Redis and Docker Engine, and a stand-in of the Kubernetes Deployment endpoint
(plus a real cluster when KUBECONFIG points at a reachable one).
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid

import docker.errors
import pytest

from health_fixtures import AUTH_PASSWORD, AUTH_USER, CERT_DAYS, PLAY_HEADER, SPIKE_MS, closed_port, deployment, expecter, wait_for
from health_fixtures import health_targets, kube_stand_in, pg_replica, redis_auth  # noqa: F401  pylint: disable=unused-import

HEADER = PLAY_HEADER
_closed_port, _expecter, _wait = closed_port, expecter, wait_for


def _by_name(result):
    return {check["name"]: check for check in result["checks"]}


def _assert_no_crash(run):
    text = run.stdout + run.stderr
    assert "Traceback" not in text and "MODULE FAILURE" not in text, text[-3000:]


# --------------------------------------------------------------------------- http, tcp, host checks

def test_http_tcp_and_host_checks(run_playbook, health_targets):  # noqa: F811
    t = health_targets
    key = uuid.uuid4().hex[:8]
    play = HEADER + """
    - name: probes
      opskit.runbook.health_check:
        fail_on: never
        concurrency: 8
        checks:
          - {name: json_ok, type: http, url: "{{ http }}/health", thresholds: {time_ms: {warning: 5000}},
             json_conditions: ['status == "UP"', 'checks.db.status == "ok"', 'checks.db.latency < 20', 'pool.used <= 80']}
          - {name: down, type: http, url: "{{ http }}/down", json_conditions: ['status == "UP"']}
          - {name: not_a_number, type: http, url: "{{ http }}/health", json_conditions: ['word > 3']}
          - {name: not_json, type: http, url: "{{ http }}/text", json_conditions: ['status == "UP"']}
          - {name: body, type: http, url: "{{ http }}/text", body_contains: "hello from"}
          - {name: body_missing, type: http, url: "{{ http }}/text", body_contains: "goodbye"}
          - {name: slow_warning, type: http, url: "{{ http }}/slow?ms=300", warning: 100, critical: 5000}
          - {name: slow_timeout, type: http, url: "{{ http }}/slow?ms=3000", timeout: 0.5}
          - {name: refused, type: http, url: "http://127.0.0.1:{{ closed }}/"}
          - {name: dns, type: http, url: "http://no-such-host.invalid/health"}
          - {name: tls_untrusted, type: http, url: "{{ https }}/health"}
          - {name: tls_expiring, type: http, url: "{{ https }}/health", validate_certs: false,
             thresholds: {cert_days: {warning: "14:", critical: "2:"}}}
          - {name: tls_trusted, type: http, url: "{{ https }}/health", ca_path: "{{ cert }}",
             thresholds: {cert_days: {critical: "2:"}}, json_conditions: ['status == "UP"']}
          - {name: mtls, type: http, url: "{{ mtls }}/health", ca_path: "{{ cert }}", client_cert: "{{ cert }}",
             client_key: "{{ key_file }}"}
          - {name: mtls_without_cert, type: http, url: "{{ mtls }}/health", ca_path: "{{ cert }}"}
          - {name: tls_on_plain_port, type: http, url: "{{ http | replace('http:', 'https:') }}/health"}
          - {name: tls_handshake_timeout, type: http, url: "https://127.0.0.1:{{ silent }}/", timeout: 0.5}
          - {name: post, type: http, url: "{{ http }}/echo", method: POST, body: {a: 1}, headers: {X-Token: t0k},
             json_conditions: ['content_type == "application/json"', 'token == "t0k"', 'body == "{\\"a\\": 1}"']}
          - {name: flaky, type: http, url: "{{ http }}/flaky/{{ key }}/2", retries: 3, interval: 0.1, consecutive: 2}
          - {name: status_codes, type: http, url: "{{ http }}/down", status_codes: [503]}
          - {name: tcp_expect, type: tcp, host: 127.0.0.1, port: "{{ http_port }}",
             send: "GET /health HTTP/1.0\\r\\n\\r\\n", expect: "200 OK"}
          - {name: tcp_refused, type: tcp, host: 127.0.0.1, port: "{{ closed }}"}
          - {name: tcp_timeout, type: tcp, host: 127.0.0.1, port: "{{ silent }}", send: "x", expect: "y", timeout: 0.5}
          - {name: disk, type: disk, path: /, thresholds: {free_pct: {critical: "@0:100"}, inodes_free_pct: {warning: "101:"}}}
          - {name: memory, type: memory, warning: 100}
          - {name: load, type: load, critical: "~:"}
      register: report
    - name: same checks in check mode
      opskit.runbook.health_check:
        checks:
          - {name: json_ok, type: http, url: "{{ http }}/health"}
          - {type: disk}
      check_mode: true
    - name: overall deadline
      opskit.runbook.health_check:
        fail_on: never
        deadline: 1
        checks:
          - {name: slow, type: http, url: "{{ http }}/slow?ms=3000", timeout: 10}
          - {name: flapping, type: http, url: "{{ http }}/down", retries: 100, interval: 0.2}
    - name: fail on critical
      opskit.runbook.health_check:
        checks:
          - {name: down, type: http, url: "{{ http }}/down"}
          - {name: up, type: http, url: "{{ http }}/health"}
      ignore_errors: true
    - name: summary only
      opskit.runbook.health_check:
        summary: true
        checks:
          - {name: up, type: http, url: "{{ http }}/health"}
          - {name: down, type: http, url: "{{ http }}/down"}
          - {name: port, type: tcp, host: 127.0.0.1, port: "{{ http_port }}"}
      ignore_errors: true
    - name: fail on warning
      opskit.runbook.health_check:
        fail_on: warning
        checks:
          - {name: slow, type: http, url: "{{ http }}/slow?ms=150", warning: 50}
      ignore_errors: true
    - name: warning passes by default
      opskit.runbook.health_check:
        checks:
          - {name: slow, type: http, url: "{{ http }}/slow?ms=150", warning: 50}
"""
    run = run_playbook(play, extra_vars={
        "http": t.http_url, "https": t.https_url, "cert": t.cert_path, "mtls": t.mtls_url, "key_file": t.key_path, "silent": t.silent_port,
        "closed": _closed_port(), "key": key, "http_port": t.http.server_address[1]})
    _assert_no_crash(run)
    assert run.rc == 0, run.stdout[-3000:]
    report = run.task("probes")
    checks = _by_name(report)
    assert report["changed"] is False and report["_status"] == "ok"
    assert report["status"] == "CRITICAL"
    assert sum(report["counts"].values()) == len(report["checks"]) == 26
    assert [c["name"] for c in report["checks"]][:3] == ["json_ok", "down", "not_a_number"]
    expect = _expecter(checks)

    ok = expect("json_ok", "OK", "HTTP 200 in ", "4 of 4 conditions passed")
    assert {"dns_ms", "connect_ms", "first_byte_ms", "time_ms"} <= set(ok["measures"]) and "tls_ms" not in ok["measures"]
    assert ok["measures"]["status_code"] == 200 and ok["attempts"] == 1
    assert "'time_ms'=" in ok["perfdata"] and ";5000;;0" in ok["perfdata"]
    expect("down", "CRITICAL", "status (503) not in 200-299", 'condition failed: status ("DOWN") == "UP"')
    expect("not_a_number", "UNKNOWN", 'word ("abc") > 3: "abc" is not a number')
    expect("not_json", "UNKNOWN", "body is not JSON")
    expect("body", "OK")
    expect("body_missing", "CRITICAL", "body does not contain 'goodbye'")
    slow = expect("slow_warning", "WARNING", "> 100 (warning)")
    assert slow["measures"]["time_ms"] >= 300 and slow["measures"]["first_byte_ms"] >= 300
    assert ";100;5000;0" in slow["perfdata"]
    expect("slow_timeout", "CRITICAL", "timed out after 0.5s while waiting for the first byte")
    expect("refused", "CRITICAL", "connection to 127.0.0.1:", "refused")
    expect("dns", "CRITICAL", "DNS lookup of no-such-host.invalid failed")
    expect("tls_untrusted", "CRITICAL", "TLS certificate verification failed for 127.0.0.1", "self")
    expiring = expect("tls_expiring", "WARNING", "< 14 (warning)")
    assert CERT_DAYS - 1 < expiring["measures"]["cert_days"] <= CERT_DAYS
    assert expiring["details"]["cert_not_after"].endswith("Z") and expiring["measures"]["tls_ms"] > 0
    trusted = expect("tls_trusted", "OK", "1 of 1 conditions passed")
    assert CERT_DAYS - 1 < trusted["measures"]["cert_days"] <= CERT_DAYS
    expect("mtls", "OK", "HTTP 200")
    no_cert = expect("mtls_without_cert", "CRITICAL")
    assert "TLS" in no_cert["message"] or "CERTIFICATE" in no_cert["message"].upper(), no_cert
    expect("tls_on_plain_port", "CRITICAL", "TLS handshake with 127.0.0.1:")
    expect("tls_handshake_timeout", "CRITICAL", "timed out after 0.5s while in the TLS handshake")
    expect("post", "OK", "3 of 3 conditions passed")
    flaky = expect("flaky", "OK", "2 consecutive OK")
    assert flaky["history"] == ["CRITICAL", "CRITICAL", "OK", "OK"] and flaky["attempts"] == 4
    expect("status_codes", "OK", "HTTP 503")
    expect("tcp_expect", "OK", "answered in")
    expect("tcp_refused", "CRITICAL", "refused")
    expect("tcp_timeout", "CRITICAL", "timed out after 0.5s while waiting for 'y'")
    disk = expect("disk", "CRITICAL", "free_pct (", "inside @0:100 (critical)", "inodes_free_pct (", "< 101 (warning)")
    assert 0 <= disk["measures"]["free_pct"] <= 100 and disk["measures"]["total_bytes"] > 0
    expect("memory", "OK", "memory ")
    load = expect("load", "OK", "cores")
    assert load["measures"]["cores"] >= 1
    for check in report["checks"]:     # every failure is a structured result, with a message
        assert check["message"] and check["duration_ms"] is not None

    in_check_mode = run.task("same checks in check mode")
    assert in_check_mode["changed"] is False and in_check_mode["status"] == "OK"
    assert len(in_check_mode["checks"]) == 2

    bounded = _by_name(run.task("overall deadline"))
    assert bounded["slow"]["status"] == "CRITICAL"
    assert bounded["slow"]["message"].startswith("timed out after "), bounded["slow"]    # clipped to what was left
    assert bounded["slow"]["message"].endswith("s while waiting for the first byte"), bounded["slow"]
    assert float(bounded["slow"]["message"].split()[3][:-1]) <= 1
    assert bounded["flapping"]["status"] == "CRITICAL" and bounded["flapping"]["message"].startswith("deadline reached after")
    assert 1 < bounded["flapping"]["attempts"] < 100
    failed = run.task("fail on critical")
    assert failed["_status"] == "failed" and failed["status"] == "CRITICAL"
    assert failed["msg"].startswith("CRITICAL: 2 checks, 1 OK, 1 CRITICAL; CRITICAL down: HTTP 503")
    assert [c["status"] for c in failed["checks"]] == ["CRITICAL", "OK"]      # the whole report comes back
    short = run.task("summary only")     # the verdict and only the checks that are not OK, still a failed task
    assert short["_status"] == "failed" and short["status"] == "CRITICAL"
    assert short["counts"] == {"OK": 2, "WARNING": 0, "CRITICAL": 1, "UNKNOWN": 0}
    assert [c["name"] for c in short["checks"]] == ["down"] and short["checks"][0]["measures"]["status_code"] == 503
    assert short["msg"].startswith("CRITICAL: 3 checks, 2 OK, 1 CRITICAL; CRITICAL down: HTTP 503")
    assert "checks" not in short.get("invocation", {}).get("module_args", {})
    warned = run.task("fail on warning")
    assert warned["_status"] == "failed" and warned["status"] == "WARNING"
    passed = run.task("warning passes by default")
    assert passed["_status"] == "ok" and passed["status"] == "WARNING"


# --------------------------------------------------------------------------- samples, secrets in URLs and headers

def test_http_samples_and_secrets(run_playbook, health_targets):  # noqa: F811
    t = health_targets
    key = uuid.uuid4().hex[:8]
    token, header_secret = "qt-%s" % uuid.uuid4().hex[:10], "hs-%s" % uuid.uuid4().hex[:10]
    play = HEADER + """
    - name: sampled
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: spiky, type: http, url: "{{ http }}/spiky/s{{ key }}/10", samples: 20,
             thresholds: {p95_ms: {warning: 500}, p50_ms: {critical: 500}, max_ms: {critical: "~:100000"}}}
          - {name: ratio_warn, type: http, url: "{{ http }}/ratio/a{{ key }}/5", samples: 20, sample_interval: 0.01,
             thresholds: {error_pct: {warning: 10, critical: 25}}}
          - {name: ratio_boundary, type: http, url: "{{ http }}/ratio/b{{ key }}/5", samples: 20,
             thresholds: {error_pct: {critical: 20}, errors: {critical: "@5:"}}}
          - {name: ratio_over, type: http, url: "{{ http }}/ratio/c{{ key }}/5", samples: 20,
             thresholds: {error_ratio: {critical: 0.1999}}}
          - {name: ratio_unjudged, type: http, url: "{{ http }}/ratio/d{{ key }}/5", samples: 20}
          - {name: all_refused, type: http, url: "http://127.0.0.1:{{ closed }}/", samples: 3,
             thresholds: {p95_ms: {critical: 100}}}
          - {type: http, url: "{{ auth_url }}?token={{ token }}&page=2"}
          - {type: http, url: "{{ bad_auth_url }}?token={{ token }}"}
          - {name: "api {{ auth_url }}", type: http, url: "http://127.0.0.1:{{ closed }}/x?access_token={{ token }}"}
          - {name: header, type: http, url: "{{ http }}/echo", method: POST, body: "x", headers: {X-Token: "{{ header_secret }}"},
             json_conditions: ['token == "{{ header_secret }}"']}
      register: report
    - name: bad url
      opskit.runbook.health_check:
        checks: [{type: http, url: "ftp://{{ auth_user }}:{{ auth_password }}@x/?token={{ token }}"}]
      ignore_errors: true
"""
    base = t.http_url.replace("http://", "http://%s:%s@" % (AUTH_USER, AUTH_PASSWORD))
    run = run_playbook(play, extra_vars={
        "http": t.http_url, "key": key, "closed": _closed_port(), "token": token, "header_secret": header_secret,
        "auth_url": base + "/auth", "bad_auth_url": base.replace(AUTH_PASSWORD, "wrong-" + AUTH_PASSWORD) + "/auth",
        "auth_user": AUTH_USER, "auth_password": AUTH_PASSWORD})
    _assert_no_crash(run)
    assert run.rc == 0, run.stdout[-3000:]
    everything = run.stdout + run.stderr + json.dumps(run.results)
    for secret in (AUTH_PASSWORD, token, header_secret):
        assert secret not in everything, secret
    report = run.task("sampled")
    checks = _by_name(report)
    expect = _expecter(checks)
    spiky = expect("spiky", "WARNING", "20 samples: p50 ", "p95_ms (", "> 500 (warning)")
    m = spiky["measures"]
    assert m["samples"] == 20 and m["errors"] == 0 and m["error_ratio"] == 0
    assert m["p95_ms"] >= SPIKE_MS and m["max_ms"] >= SPIKE_MS and m["p50_ms"] < SPIKE_MS <= m["p99_ms"]
    assert m["min_ms"] <= m["p50_ms"] == m["time_ms"] <= m["mean_ms"] <= m["max_ms"]
    assert "'p95_ms'=" in spiky["perfdata"] and ";500;;0" in spiky["perfdata"] and "'error_pct'=0%" in spiky["perfdata"]
    ratio = expect("ratio_warn", "WARNING", "error_pct (20) > 10 (warning)", "4 of 20 failed (20%), first: status (503)")
    assert ratio["measures"]["errors"] == 4 and ratio["measures"]["error_ratio"] == 0.2
    expect("ratio_boundary", "OK", "4 of 20 failed")                      # 20 is inside 0:20; 4 is outside @5:
    expect("ratio_over", "CRITICAL", "error_ratio (0.2) > 0.1999 (critical)")
    expect("ratio_unjudged", "CRITICAL", "4 of 20 failed (20%)")
    refused = expect("all_refused", "CRITICAL", "3 samples, none answered", "3 of 3 failed", "refused")
    assert refused["measures"]["error_ratio"] == 1 and "p95_ms" not in refused["measures"]
    port = t.http.server_address[1]
    auth = expect("http http://***@127.0.0.1:%d/auth?token=***&page=***" % port, "OK", "HTTP 200")
    assert auth["measures"]["status_code"] == 200
    expect("http http://***@127.0.0.1:%d/auth?token=***" % port, "CRITICAL", "status (401)")
    expect("api http://***@127.0.0.1:%d/auth" % port, "CRITICAL", "refused")
    expect("header", "OK", "1 of 1 conditions passed")
    assert AUTH_USER not in report["summary"]
    bad = run.task("bad url")
    assert bad["_status"] == "failed" and "url must be http:// or https:// with a host, got 'ftp://***@x/?token=***'" in bad["msg"]


# --------------------------------------------------------------------------- services

@pytest.fixture
def containers(docker_engine):
    """Containers in the states a docker_container check must tell apart (random names, removed after)."""
    client, image, prefix = docker_engine.client, docker_engine.busybox_image, "opskit-hc-%s" % uuid.uuid4().hex[:8]
    created = []

    def run(suffix, command, **kwargs):
        container = client.containers.run(image, command, name="%s-%s" % (prefix, suffix), detach=True, **kwargs)
        created.append(container)
        return container

    def health(cmd):
        return {"test": ["CMD-SHELL", cmd], "interval": 200_000_000, "timeout": 1_000_000_000, "retries": 1}
    try:
        run("plain", "sleep 300")
        healthy = run("healthy", "sleep 300", healthcheck=health("exit 0"))
        unhealthy = run("unhealthy", "sleep 300", healthcheck=health("echo db down; exit 1"))
        exited = run("exited", "sh -c 'exit 3'")

        def status(container, path):
            container.reload()
            node = container.attrs
            for key in path:
                node = (node or {}).get(key)
            return node
        _wait(lambda: status(healthy, ("State", "Health", "Status")) == "healthy", "a healthy container")
        _wait(lambda: status(unhealthy, ("State", "Health", "Status")) == "unhealthy", "an unhealthy container")
        _wait(lambda: status(exited, ("State", "Status")) == "exited", "an exited container")
        yield prefix
    finally:
        for container in created:
            try:
                container.remove(force=True)
            except (docker.errors.DockerException, OSError):  # already gone, or the engine is: nothing to clean
                pass


def test_service_checks(run_playbook, pg, pg_replica, redis, redis_auth, docker_engine, containers, kube_stand_in,  # noqa: F811
                        tmp_path):
    kube_stand_in.add(deployment("web", "shop"))
    kube_stand_in.add(deployment("rolling", "shop", updated=3, total=4, available=2))
    kube_stand_in.add(deployment("down", "shop", available=0))
    kube_stand_in.add(deployment("stuck", "shop", updated=1, available=2, conditions=[
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "stuck-7d" has timed out progressing.'}]))
    kube_stand_in.add(deployment("unobserved", "shop", generation=5, observed=4))
    unreachable = tmp_path / "unreachable-kubeconfig"
    unreachable.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "x",
        "clusters": [{"name": "x", "cluster": {"server": "http://127.0.0.1:%d" % _closed_port()}}],
        "users": [{"name": "x", "user": {}}], "contexts": [{"name": "x", "context": {"cluster": "x", "user": "x"}}]}))
    wrong_password = "wrong-%s" % uuid.uuid4().hex
    # a long-running query for the long_queries measure
    sleeper = subprocess.Popen([os.path.join(pg.bin_dir, "psql"), "-XAtq", "-c", "SELECT pg_sleep(60)"],
                               env=dict(os.environ, **pg.env), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait(lambda: pg.psql("SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep(60)%'"
                              " AND now() - query_start > interval '0.6 s'").strip() == "1", "the sleeping query")
        play = HEADER.replace("  tasks:", """  module_defaults:      # the Docker connection through the action group
    group/opskit.runbook.docker:
      docker_host: "{{ docker_host }}"
  tasks:""") + """
    - name: services
      opskit.runbook.health_check:
        fail_on: never
        host: 127.0.0.1
        port: "{{ pg_port }}"
        password: "{{ pg_password }}"
        checks:
          - {name: pg, type: postgres, warning: 80, critical: 95}
          - {name: pg_long_queries, type: postgres, long_query_seconds: 0.5, thresholds: {long_queries: {critical: 0}}}
          - {name: pg_wrong_password, type: postgres, password: "{{ wrong_password }}"}
          - {name: pg_aliases, type: postgres, login_host: 127.0.0.1, login_user: postgres, login_password: "{{ pg_password }}"}
          - {name: pg_no_server, type: postgres, port: "{{ closed }}"}
          - {name: pg_replica, type: postgres, port: "{{ replica_port }}", thresholds: {replication_lag_seconds: {critical: 60}}}
          - {name: redis, type: redis, host: 127.0.0.1, port: "{{ redis_port }}",
             thresholds: {connected_clients: {critical: "1:"}, memory_pct: {critical: 99}}}
          - {name: redis_down, type: redis, host: 127.0.0.1, port: "{{ closed }}"}
          - {name: redis_auth, type: redis, port: "{{ redis_auth_port }}", password: "{{ redis_password }}"}
          - {name: redis_wrong_password, type: redis, port: "{{ redis_auth_port }}", password: "{{ wrong_password }}"}
          - {name: redis_no_password, type: redis, port: "{{ redis_auth_port }}"}
          - {name: plain, type: docker_container, container: "{{ prefix }}-plain", thresholds: {restart_count: {critical: 0}}}
          - {name: healthy, type: docker_container, container: "{{ prefix }}-healthy"}
          - {name: unhealthy, type: docker_container, container: "{{ prefix }}-unhealthy"}
          - {name: exited, type: docker_container, container: "{{ prefix }}-exited"}
          - {name: missing, type: docker_container, container: "{{ prefix }}-missing"}
          - {name: k8s_web, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop, deployment: web}
          - {name: k8s_rolling, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop, deployment: rolling}
          - {name: k8s_down, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop, deployment: down}
          - {name: k8s_stuck, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop, deployment: stuck}
          - {name: k8s_unobserved, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop,
             deployment: unobserved}
          - {name: k8s_missing, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop, deployment: nope}
          - {name: k8s_pct, type: k8s_deployment, kubeconfig: "{{ kubeconfig }}", namespace: shop,
             deployment: rolling, critical: "100:"}
          - {name: k8s_unreachable, type: k8s_deployment, kubeconfig: "{{ unreachable }}", deployment: web, timeout: 3}
      register: report
    - module_defaults:
        group/opskit.runbook.docker:
          docker_host: unix:///nonexistent/docker.sock
      block:
        - name: daemon from the group defaults
          opskit.runbook.health_check:
            fail_on: never
            checks: [{name: c, type: docker_container, container: "{{ prefix }}-plain"}]
"""
        run = run_playbook(play, extra_vars={
            "pg_port": pg.port, "pg_password": pg.password, "wrong_password": wrong_password,
            "closed": _closed_port(), "redis_port": redis.port, "replica_port": pg_replica,
            "redis_auth_port": redis_auth[0], "redis_password": redis_auth[1], "docker_host": docker_engine.docker_host,
            "prefix": containers, "kubeconfig": kube_stand_in.kubeconfig, "unreachable": str(unreachable)})
    finally:
        sleeper.kill()
        sleeper.wait()
    _assert_no_crash(run)
    assert run.rc == 0, run.stdout[-3000:]
    assert wrong_password not in run.stdout + run.stderr and pg.password not in run.stdout + run.stderr
    report = run.task("services")
    checks = _by_name(report)
    expect = _expecter(checks)

    pgc = expect("pg", "OK", "PostgreSQL 15", "primary", "SELECT 1 in")
    assert pgc["measures"]["max_connections"] >= pgc["measures"]["connections"] >= 1
    assert 0 < pgc["measures"]["connections_pct"] < 80 and pgc["details"]["server_version"].startswith("15")
    assert "replication_lag_seconds" not in pgc["measures"] and ";80;95;0;100" in pgc["perfdata"]
    long_q = expect("pg_long_queries", "CRITICAL", "long_queries (1) > 0 (critical)")
    assert long_q["measures"]["long_queries"] == 1
    expect("pg_aliases", "OK", "PostgreSQL 15")
    expect("pg_wrong_password", "CRITICAL", "cannot connect to PostgreSQL", "password authentication failed")
    expect("pg_no_server", "CRITICAL", "cannot connect to PostgreSQL")
    replica = expect("pg_replica", "OK", "replica", "replication lag")
    assert replica["details"]["role"] == "replica" and 0 <= replica["measures"]["replication_lag_seconds"] < 60
    red = expect("redis", "OK", "PONG in")
    assert red["measures"]["connected_clients"] >= 1 and red["measures"]["used_memory_bytes"] > 0
    assert red["details"]["memory_limit"] == "system memory" and 0 <= red["measures"]["memory_pct"] < 99
    expect("redis_down", "CRITICAL", "refused")
    expect("redis_auth", "OK", "PONG in")
    expect("redis_wrong_password", "CRITICAL", "answered an error", "WRONGPASS")
    expect("redis_no_password", "CRITICAL", "NOAUTH")
    assert redis_auth[1] not in run.stdout + run.stderr
    plain = expect("plain", "OK", "running, 0 restarts")
    assert plain["measures"] == {"running": 1, "restart_count": 0, "oom_killed": 0}
    expect("healthy", "OK", "running, healthy")
    expect("unhealthy", "CRITICAL", "is unhealthy", "db down")
    exited = expect("exited", "CRITICAL", "is exited (exit code 3)")
    assert exited["measures"]["running"] == 0 and exited["measures"]["exit_code"] == 3
    expect("missing", "CRITICAL", "not found")
    web = expect("k8s_web", "OK", "successfully rolled out (3 of 3 available)")
    assert web["measures"]["available_pct"] == 100 and web["details"]["rollout"] == "success"
    expect("k8s_rolling", "WARNING", "1 old replicas are pending termination")
    expect("k8s_down", "CRITICAL", "no replica available")
    expect("k8s_stuck", "CRITICAL", "exceeded its progress deadline", "timed out progressing")
    expect("k8s_unobserved", "WARNING", "generation 5, observed 4")
    expect("k8s_missing", "CRITICAL", "deployment shop/nope not found")
    expect("k8s_pct", "CRITICAL", "available_pct (66.67) < 100 (critical)")
    expect("k8s_unreachable", "CRITICAL", "cannot reach the Kubernetes API")
    assert any(path.startswith("/apis/apps/v1/namespaces/shop/deployments/web") for path in kube_stand_in.requests)
    via_group = run.task("daemon from the group defaults")["checks"][0]
    assert via_group["status"] == "CRITICAL"
    assert "cannot connect to the Docker daemon at unix:///nonexistent/docker.sock" in via_group["message"]


# --------------------------------------------------------------------------- bad input

def test_bad_input_names_the_check(run_playbook):
    play = HEADER + """
    - name: bad input
      opskit.runbook.health_check:
        checks: "{{ item }}"
      loop:
        - [{type: disk}, {name: api, type: htpp, url: "http://x"}]
        - [{name: db-port, type: tcp, host: db1}]
        - [{name: root, type: disk, warning: "20:10"}]
      ignore_errors: true
"""
    run = run_playbook(play)
    _assert_no_crash(run)
    result = run.task("bad input")
    assert [r.get("failed") for r in result["results"]] == [True] * 3
    messages = [r["msg"] for r in result["results"]]
    assert messages[0].startswith("check 'api' (checks[1]): unknown type 'htpp' (expected one of http, tcp,")
    assert messages[1] == "check 'db-port' (checks[0]): type tcp requires port"
    assert messages[2] == "check 'root' (checks[0]): free_pct warning: range '20:10' has start 20 greater than end 10"
    assert all("\n" not in m for m in messages)


# --------------------------------------------------------------------------- a real cluster, when there is one

def test_k8s_deployment_on_a_real_cluster(run_playbook, real_kubeconfig):
    namespace, _sep, name = os.environ.get("OPSKIT_K8S_DEPLOYMENT", "kube-system/coredns").rpartition("/")
    namespace = namespace or "default"
    play = HEADER + """
    - name: real
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: dep, type: k8s_deployment, kubeconfig: "%s", namespace: "%s", deployment: "%s"}
""" % (real_kubeconfig, namespace, name)
    run = run_playbook(play)
    _assert_no_crash(run)
    check = run.task("real")["checks"][0]
    assert check["status"] in ("OK", "WARNING", "CRITICAL"), check
    assert "desired_replicas" in check["measures"] or "not found" in check["message"], check
