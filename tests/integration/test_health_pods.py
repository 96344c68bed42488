# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""health_check's ``pod`` type through ansible-playbook, against the stand-in of the Kubernetes
API (pods by label selector, a Deployment's selector, metrics-server's pod metrics): ready and
not ready pods, CrashLoopBackOff, an OOM kill, memory against the limit, no metrics-server; and
the ``logs`` type on the pods of a Deployment or selector (their containers' logs through the same
stand-in: patterns, tail, since, masked excerpt, a container waiting to start, bad targets).
"""

from __future__ import annotations

from health_fixtures import PLAY_HEADER, assert_no_crash, deployment, expecter, pod
from health_fixtures import kube_stand_in  # noqa: F401  pylint: disable=unused-import


def test_pods(run_playbook, kube_stand_in):  # noqa: F811
    k = kube_stand_in
    k.add(deployment("web", "shop"))
    for item in (pod("api-1", "shop", {"app": "api"}), pod("api-2", "shop", {"app": "api"}, restarts=1),
                 pod("web-1", "shop", {"app": "web"}, ready=False, restarts=7, waiting="CrashLoopBackOff"),
                 pod("web-2", "shop", {"app": "web"}, restarts=2, last_terminated="OOMKilled"),
                 pod("hog-1", "shop", {"app": "hog"}), pod("free-1", "shop", {"app": "free"}, limit=None),
                 pod("batch-1", "jobs", {"app": "batch"})):
        k.add(item)
    k.usage.update({("shop", "api-1"): "32Mi", ("shop", "api-2"): "16Mi", ("shop", "web-1"): "1Mi",
                    ("shop", "web-2"): "50Mi", ("shop", "hog-1"): "60Mi", ("shop", "free-1"): "100Mi"})
    play = PLAY_HEADER + """
    - name: pods
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: api, type: pod, kubeconfig: "{{ kc }}", namespace: shop, selector: app=api,
             thresholds: {memory_pct: {warning: 80}, max_restarts: {warning: 1}}}
          - {name: web, type: pod, kubeconfig: "{{ kc }}", namespace: shop, deployment: web}
          - {name: hog, type: pod, kubeconfig: "{{ kc }}", namespace: shop, selector: app=hog,
             thresholds: {memory_pct: {warning: 80, critical: 95}}}
          - {name: no_limit, type: pod, kubeconfig: "{{ kc }}", namespace: shop, selector: app=free}
          - {name: no_metrics_server, type: pod, kubeconfig: "{{ kc }}", namespace: jobs, selector: app=batch}
          - {name: none, type: pod, kubeconfig: "{{ kc }}", namespace: shop, selector: app=nothing}
          - {name: no_deployment, type: pod, kubeconfig: "{{ kc }}", namespace: shop, deployment: nope}
      register: report
    - name: pod logs
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: web, type: logs, kubeconfig: "{{ kc }}", namespace: shop, deployment: web, warning: 0, critical: 5}
          - {name: api_tail, type: logs, kubeconfig: "{{ kc }}", namespace: shop, selector: app=api, container: app,
             tail: 2, critical: 0}
          - {name: api_since, type: logs, kubeconfig: "{{ kc }}", namespace: shop, selector: app=api, since: 15min,
             critical: 0, patterns: [ERROR]}
          - {name: waiting, type: logs, kubeconfig: "{{ kc }}", namespace: shop, selector: app=hog}
          - {name: none, type: logs, kubeconfig: "{{ kc }}", namespace: shop, selector: app=nothing}
          - {name: sidecar, type: logs, kubeconfig: "{{ kc }}", namespace: shop, selector: app=api, container: sidecar}
          - {name: no_deployment, type: logs, kubeconfig: "{{ kc }}", namespace: shop, deployment: nope}
    - name: pod logs and a compose service
      opskit.runbook.health_check:
        checks:
          - {type: logs, deployment: web, compose_service: web}
      ignore_errors: true
"""
    k.logs.update({
        ("shop", "web-1", "app"): "INFO start\nERROR db failed password=hunter2\nINFO ok\n",
        ("shop", "web-2", "app"): "ERROR timeout token: abcdef123456\nFATAL crash\n",
        ("shop", "api-1", "app"): "line 1\nline 2\nERROR old\nINFO a\nINFO b\n",
        ("shop", "api-2", "app"): "INFO only\n"})
    run = run_playbook(play, extra_vars={"kc": k.kubeconfig})
    assert_no_crash(run)
    expect = expecter(run.task("pods")["checks"])
    api = expect("api", "OK", "2 of 2 pods ready, 1 restarts, memory up to 50% of the limit")
    assert api["measures"]["ready_pct"] == 100 and api["measures"]["memory_pct"] == 50 and api["measures"]["max_restarts"] == 1
    assert api["details"]["selector"] == "app=api"
    web = expect("web", "CRITICAL", "CrashLoopBackOff: web-1/app", "OOMKilled: web-2/app", "1 of 2 pods not ready: web-1")
    m = web["measures"]
    assert (m["pods"], m["ready_pods"], m["restarts"], m["max_restarts"], m["crashloop"], m["oom_killed"]) == (2, 1, 9, 7, 1, 1)
    assert web["details"]["selector"] == "app=web"          # from the Deployment's matchLabels
    hog = expect("hog", "WARNING", "memory_pct (93.75) > 80 (warning)")
    assert ";80;95;0;100" in hog["perfdata"]
    free = expect("no_limit", "OK")
    assert "memory_pct" not in free["measures"] and free["details"]["metrics"] == "0 of 1 pods with usage and limits"
    quiet = expect("no_metrics_server", "OK")
    assert "memory_pct" not in quiet["measures"] and quiet["details"]["metrics"] == "metrics-server did not answer"
    expect("none", "CRITICAL", "no pod matches app=nothing")
    expect("no_deployment", "CRITICAL", "deployment shop/nope not found")

    logs = expecter(run.task("pod logs")["checks"])
    web = logs("web", "WARNING", "3 of 5 lines (all lines) match ERROR|FATAL|panic|Traceback", "matches (3) > 0 (warning)")
    assert web["details"]["containers"] == ["web-1/app", "web-2/app"] and web["details"]["selector"] == "app=web"
    assert web["details"]["excerpt"] == ["ERROR db failed password=***", "ERROR timeout token: ***", "FATAL crash"]
    assert (web["measures"]["matches"], web["measures"]["lines"], web["measures"]["containers"]) == (3, 5, 2)
    tail = logs("api_tail", "OK", "0 of 3 lines (last 2 lines)")                       # the API cut each log to 2 lines
    assert any(p.startswith("/api/v1/namespaces/shop/pods/api-1/log?") and "tailLines=2" in p for p in k.requests)
    logs("api_since", "CRITICAL", "1 of 6 lines (since 15min) match ERROR", "matches (1) > 0 (critical)")
    assert any("/pods/api-2/log?" in p and "sinceSeconds=900" in p for p in k.requests)
    assert tail["details"]["containers"] == ["api-1/app", "api-2/app"]
    waiting = logs("waiting", "OK", "no logs yet (waiting to start): hog-1/app", "0 of 0 lines")
    assert waiting["measures"]["lines"] == 0
    logs("none", "CRITICAL", "no pod matches app=nothing in shop")
    logs("sidecar", "CRITICAL", "pod api-1 has no container sidecar (it has app)")
    logs("no_deployment", "CRITICAL", "deployment shop/nope not found")
    both = run.task("pod logs and a compose service")
    assert both["_status"] == "failed" and both["msg"] == (
        "checks[0]: type logs reads a compose service or Kubernetes pods (deployment, selector), not both")
    assert "hunter2" not in run.stdout and "abcdef123456" not in run.stdout
