# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""health_check's ``pod`` type through ansible-playbook, against the stand-in of the Kubernetes
API (pods by label selector, a Deployment's selector, metrics-server's pod metrics): ready and
not ready pods, CrashLoopBackOff, an OOM kill, memory against the limit, no metrics-server.
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
"""
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
