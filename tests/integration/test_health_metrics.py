# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""health_check's ``metrics`` and ``prometheus`` types through ansible-playbook.

Targets: an exporter started here (a gauge with two series, a counter, a histogram; and an
endpoint that is not the text format), a real Prometheus (/usr/bin/prometheus on loopback)
scraping it every second, and a TLS proxy in front of that Prometheus that wants basic or
bearer authentication.
"""

from __future__ import annotations

import json
import subprocess
import uuid

import pytest

from health_fixtures import EXPORTER_TOKEN, PLAY_HEADER as HEADER, PROM_PASSWORD, PROM_USER, assert_no_crash, closed_port, expecter
from ansible_collections.opskit.runbook.plugins.module_utils._health.metrics import PROMETHEUS_PARSER
from health_fixtures import prometheus_stack  # noqa: F401  pylint: disable=unused-import

Q95 = 0.25 + 0.25 * 50 / 80   # rank 950 of 1000 falls in the (0.25, 0.5] bucket, 900 -> 980


def test_metrics_and_prometheus(run_playbook, prometheus_stack, tmp_path):  # noqa: F811
    p = prometheus_stack
    wrong = "wrong-%s" % uuid.uuid4().hex
    play = HEADER + """
    - name: metrics and prometheus
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: gitlab, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_api_rate_limit_remaining,
             labels: {api: gitlab}, critical: "100:"}
          - {name: github, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_api_rate_limit_remaining,
             labels: {api: github}, critical: "100:"}
          - {name: per_series, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_api_rate_limit_remaining,
             critical: "100:"}
          - {name: min_boundary, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_api_rate_limit_remaining,
             aggregate: min, warning: "51:", critical: "50:"}
          - {name: errors_500, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_requests_total,
             labels: {code: "500"}, critical: 49}
          - {name: requests_sum, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_requests_total,
             aggregate: sum, thresholds: {value: {critical: 1000}, series: {critical: "2:2"}}}
          - {name: q95_ok, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_request_duration_seconds,
             quantile: 0.95, critical: 0.41}
          - {name: q95_crit, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_request_duration_seconds_bucket,
             quantile: 0.95, critical: 0.4}
          - {name: missing, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_nope}
          - {name: missing_ok, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_nope, empty: ok}
          - {name: garbage, type: metrics, url: "{{ exporter }}/garbage", metric: x}
          - {name: quantile_of_gauge, type: metrics, url: "{{ exporter }}/metrics", metric: opskit_api_rate_limit_remaining,
             quantile: 0.5}
          - {name: not_found, type: metrics, url: "{{ exporter }}/nothing", metric: x}
          - {name: refused, type: metrics, url: "http://127.0.0.1:{{ closed }}/metrics", metric: x}
          - {name: p_gitlab, type: prometheus, url: "{{ prom }}", query: 'opskit_api_rate_limit_remaining{api="gitlab"}',
             critical: "100:"}
          - {name: p_per_series, type: prometheus, url: "{{ prom }}", query: opskit_api_rate_limit_remaining, critical: "100:"}
          - {name: p_sum_boundary, type: prometheus, url: "{{ prom }}", query: opskit_api_rate_limit_remaining,
             aggregate: sum, critical: 200}
          - {name: p_sum_over, type: prometheus, url: "{{ prom }}", query: opskit_api_rate_limit_remaining,
             aggregate: sum, critical: 199.9}
          - {name: p_error_ratio, type: prometheus, url: "{{ prom }}", critical: 0.05, warning: 0.0499,
             query: 'sum(opskit_requests_total{code=~"5.."}) / sum(opskit_requests_total)'}
          - {name: p_p95, type: prometheus, url: "{{ prom }}", critical: 0.4,
             query: 'histogram_quantile(0.95, sum by (le) (opskit_request_duration_seconds_bucket))'}
          - {name: p_scalar, type: prometheus, url: "{{ prom }}/", query: 'scalar(sum(opskit_requests_total))', critical: "1000:1000"}
          - {name: p_empty, type: prometheus, url: "{{ prom }}", query: opskit_nope}
          - {name: p_empty_ok, type: prometheus, url: "{{ prom }}", query: 'opskit_requests_total{code="404"}', empty: ok}
          - {name: p_empty_critical, type: prometheus, url: "{{ prom }}", query: 'opskit_nope', empty: critical}
          - {name: p_bad_promql, type: prometheus, url: "{{ prom }}", query: 'sum('}
          - {name: p_matrix, type: prometheus, url: "{{ prom }}", query: 'opskit_requests_total[1m]'}
          - {name: p_not_prometheus, type: prometheus, url: "{{ exporter }}", query: up}
          - {name: p_down, type: prometheus, url: "http://127.0.0.1:{{ closed }}", query: up}
          - {name: p_tls_basic, type: prometheus, url: "{{ tls }}", query: 'sum(up)', ca_path: "{{ ca }}",
             user: "{{ prom_user }}", password: "{{ prom_password }}", critical: "1:"}
          - {name: p_tls_bearer, type: prometheus, url: "{{ tls }}", query: 'sum(up)', ca_path: "{{ ca }}",
             bearer_token: "{{ token }}", critical: "1:"}
          - {name: p_tls_wrong_password, type: prometheus, url: "{{ tls }}", query: up, ca_path: "{{ ca }}",
             user: "{{ prom_user }}", password: "{{ wrong }}"}
          - {name: p_tls_untrusted, type: prometheus, url: "{{ tls }}", query: up, bearer_token: "{{ token }}"}
      register: report
    - name: the health role exports the measured values
      ansible.builtin.include_role:
        name: opskit.runbook.health
      vars:
        health_checks:
          - {name: p95 "quoted", type: metrics, url: "{{ exporter }}/metrics", metric: opskit_request_duration_seconds,
             quantile: 0.95}
          - {name: ratio, type: prometheus, url: "{{ prom }}", query: 'sum(opskit_requests_total{code=~"5.."}) / sum(opskit_requests_total)'}
        health_disk_paths: []
        health_fail_on: never
        health_metrics_dir: "{{ metrics_dir }}"
"""
    run = run_playbook(play, extra_vars={
        "metrics_dir": str(tmp_path), "exporter": p.exporter_url, "prom": p.prom_url, "tls": p.tls_url, "ca": p.cert_path, "closed": closed_port(),
        "prom_user": PROM_USER, "prom_password": PROM_PASSWORD, "token": EXPORTER_TOKEN, "wrong": wrong})
    assert_no_crash(run)
    everything = run.stdout + run.stderr + json.dumps(run.results)
    for secret in (PROM_PASSWORD, EXPORTER_TOKEN, wrong):
        assert secret not in everything

    expect = expecter(run.task("metrics and prometheus")["checks"])
    gitlab = expect("gitlab", "OK", 'opskit_api_rate_limit_remaining{api="gitlab"} = 150')
    assert gitlab["measures"]["value"] == 150 and gitlab["measures"]["series"] == 1 and "'value'=150;;100:" in gitlab["perfdata"]
    expect("github", "CRITICAL", "value (50) < 100 (critical)")
    per = expect("per_series", "CRITICAL", '2 series, 1 not OK; worst {api="github"} = 50', "value (50) < 100 (critical)")
    assert [(s["labels"]["api"], s["status"]) for s in per["details"]["series"]] == [("github", "CRITICAL"), ("gitlab", "OK")]
    assert per["measures"]["min"] == 50 and per["measures"]["max"] == 150 and per["measures"]["sum"] == 200
    expect("min_boundary", "WARNING", "min of 2 series = 50", "value (50) < 51 (warning)")
    expect("errors_500", "CRITICAL", "value (50) > 49 (critical)")
    expect("requests_sum", "OK", "sum of 2 series = 1000")
    q95 = expect("q95_ok", "OK", "opskit_request_duration_seconds q0.95")
    assert q95["measures"]["value"] == pytest.approx(Q95)
    expect("q95_crit", "CRITICAL", "value (0.40625) > 0.4 (critical)")
    expect("missing", "UNKNOWN", "opskit_nope returned no series (empty: unknown)")
    expect("missing_ok", "OK", "opskit_nope: no series")
    expect("garbage", "UNKNOWN", "cannot parse the metrics of 127.0.0.1:")
    expect("quantile_of_gauge", "UNKNOWN", "is a gauge, quantile needs a histogram or a summary")
    expect("not_found", "CRITICAL", "answered HTTP 404")
    expect("refused", "CRITICAL", "refused")

    expect("p_gitlab", "OK", 'query{__name__="opskit_api_rate_limit_remaining"', "= 150")
    per = expect("p_per_series", "CRITICAL", "2 series, 1 not OK", 'api="github"', "value (50) < 100 (critical)")
    assert {s["labels"]["api"]: s["status"] for s in per["details"]["series"]} == {"github": "CRITICAL", "gitlab": "OK"}
    expect("p_sum_boundary", "OK", "sum of 2 series = 200")
    expect("p_sum_over", "CRITICAL", "value (200) > 199.9 (critical)")
    expect("p_error_ratio", "WARNING", "query = 0.05", "value (0.05) > 0.0499 (warning)")
    p95 = expect("p_p95", "CRITICAL", "value (0.40625) > 0.4 (critical)")
    assert p95["measures"]["value"] == pytest.approx(q95["measures"]["value"])   # PromQL and the bucket estimate agree
    expect("p_scalar", "OK", "query = 1000")
    expect("p_empty", "UNKNOWN", "query returned no series (empty: unknown)")
    expect("p_empty_ok", "OK", "query: no series")
    expect("p_empty_critical", "CRITICAL", "query returned no series (empty: critical)")
    expect("p_bad_promql", "UNKNOWN", "Prometheus query failed (HTTP 400, bad_data)")
    expect("p_matrix", "UNKNOWN", "Prometheus answered a matrix; the query must give an instant vector or a scalar")
    expect("p_not_prometheus", "UNKNOWN", "Prometheus answered HTTP 404 with no JSON")
    expect("p_down", "CRITICAL", "refused")
    basic = expect("p_tls_basic", "OK", "query = 1")
    assert basic["measures"]["tls_ms"] > 0 and basic["measures"]["cert_days"] > 29
    expect("p_tls_bearer", "OK", "query = 1")
    expect("p_tls_wrong_password", "CRITICAL", "Prometheus query failed (HTTP 401, unauthorized)")
    expect("p_tls_untrusted", "CRITICAL", "TLS certificate verification failed for localhost")
    exported = (tmp_path / "opskit_health.prom").read_text()
    parser = PROMETHEUS_PARSER.load()
    values = {(s.labels["check"], s.labels["measure"]): s.value for f in parser.text_string_to_metric_families(exported)
              if f.name == "opskit_health_check_value" for s in f.samples}
    assert values[('p95 "quoted"', "value")] == pytest.approx(Q95) and values[("ratio", "value")] == pytest.approx(0.05)
    assert values[("ratio", "series")] == 1 and ("ratio", "time_ms") in values
    promtool = subprocess.run(["promtool", "check", "metrics"], input=exported, capture_output=True, text=True, check=False)
    assert promtool.returncode == 0, promtool.stdout + promtool.stderr      # parses, and passes promtool's lint
