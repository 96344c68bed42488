# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""opskit.runbook.rollout through ansible-playbook: a real Docker Engine and a Kubernetes stand-in."""

from __future__ import annotations

import json
import os
import uuid

import pytest

from harness import Poller, free_port, http_get
from rollout_fixtures import K8sStandIn, build_images, run_web, settings_view, wait_http

RECORD_LABEL = "opskit.runbook.last-known-good"


@pytest.fixture(scope="module")
def api(docker_engine):
    return docker_engine.client.api


@pytest.fixture(scope="module")
def images(api):
    return build_images(api)


@pytest.fixture
def prefix(api):
    name = "rlt%s" % uuid.uuid4().hex[:8]
    yield name
    for c in api.containers(all=True, filters={"name": name}):
        api.remove_container(c["Id"], force=True, v=True)
    for net in api.networks(names=[name + "-net"]):
        api.remove_network(net["Id"])
    for vol in (api.volumes(filters={"name": name}) or {}).get("Volumes") or []:
        api.remove_volume(vol["Name"], force=True)


def _failed(result):
    return bool(result.get("failed")) or result.get("_status") == "failed"


def _play(tasks):
    return [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]


def _web_check(port, want="ok", retries=2, interval=0.2):
    return [{"name": "web", "type": "http", "url": "http://127.0.0.1:%d/cgi-bin/health" % port,
             "status_codes": [200], "body_contains": want, "retries": retries, "interval": interval, "timeout": 2}]


def test_docker_upgrade_keeps_settings_and_rolls_back_by_hand(api, images, prefix, run_playbook):
    port = free_port()
    net = api.create_network(prefix + "-net")["Id"]
    name = prefix + "-web"
    run_web(api, name, images["v1"], port, network=prefix + "-net", alias="webalias", volume=prefix + "-data")
    wait_http("http://127.0.0.1:%d/version" % port, "v1")
    before = settings_view(api.inspect_container(name))
    assert before["networks"] == {prefix + "-net": ["webalias"]} and net
    base = {"target": "docker_container", "name": name, "monitor": 1, "timeout": 30, "rollback_timeout": 30}
    up = dict(base, image=images["v2"], health_checks=_web_check(port, "ok v2"))
    run = run_playbook(_play([
        {"name": "plan", "opskit.runbook.rollout": up, "check_mode": True},
        {"name": "upgrade", "opskit.runbook.rollout": up},
        {"name": "again", "opskit.runbook.rollout": up},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    plan, upgrade, again = run.task("plan"), run.task("upgrade"), run.task("again")
    assert plan["changed"] and plan["from"]["image"] == images["v1"] and plan["to"]["image"] == images["v2"]
    assert plan["reason"].startswith("check mode")
    assert upgrade["changed"] and upgrade["outcome"] == "deployed", upgrade
    assert upgrade["to"]["digest"].startswith("sha256:") and upgrade["from"]["digest"] != upgrade["to"]["digest"]
    assert upgrade["last_known_good"]["image"] == images["v1"]
    assert upgrade["health"]["status"] == "OK"
    assert set(upgrade["timings"]) >= {"upgrade", "ready", "checks", "monitor", "rollback", "total"}
    assert not again["changed"] and again["outcome"] == "unchanged"
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v2")
    after = api.inspect_container(name)
    assert settings_view(after) == before                      # every setting survived the upgrade
    record = json.loads(after["Config"]["Labels"][RECORD_LABEL])
    assert record["image"] == images["v1"] and record["digest"] == upgrade["from"]["digest"]
    assert after["Config"]["Env"].count("APP_VERSION=v2") == 1  # the new image's own ENV applies
    assert [c["Names"] for c in api.containers(all=True, filters={"name": prefix})] == [["/" + name]]  # old removed

    run = run_playbook(_play([
        {"name": "by hand", "opskit.runbook.rollout": dict(base, state="rolled_back")},
        {"name": "again", "opskit.runbook.rollout": dict(base, state="rolled_back")},
        {"name": "restart", "opskit.runbook.rollout": dict(base, state="restarted", monitor=0.5)},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    hand, again, restart = run.task("by hand"), run.task("again"), run.task("restart")
    assert hand["changed"] and hand["outcome"] == "rolled_back" and hand["to"]["image"] == images["v1"]
    assert not again["changed"] and again["outcome"] == "unchanged"
    assert restart["changed"] and restart["outcome"] == "restarted" and restart["healthy"] is True
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v1")
    assert settings_view(api.inspect_container(name)) == before  # and the rollback restored them exactly


def test_twenty_broken_rollouts_end_in_twenty_rollbacks(api, images, prefix, run_playbook):
    """Every broken kind, four times each, in a row; the old version serves again after each one.

    Besides the module's own verification (its rollback gate requires the health check to answer
    "ok plain", which only the old version does), a poller asks /version every 50 ms throughout:
    every rollout that stopped the old container must be followed by a period where it serves.
    """
    port = free_port()
    name = prefix + "-web"
    run_web(api, name, images["plain"], port)
    wait_http("http://127.0.0.1:%d/version" % port, "plain")
    kinds = ["exit", "unhealthy", "503", "port", "nope"] * 4
    with Poller("http://127.0.0.1:%d/version" % port) as poller:
        run = run_playbook(_play([
            {"name": "broken rollout", "ignore_errors": True, "loop": [images[k] for k in kinds],
             "opskit.runbook.rollout": {"target": "docker_container", "name": name, "image": "{{ item }}",
                                        "pull": "never", "monitor": 0.2, "timeout": 20, "rollback_timeout": 20,
                                        "log_lines": 5, "health_checks": _web_check(port, "ok plain", retries=1)}},
        ]), timeout=300)
    assert run.rc == 0, run.stdout[-4000:]
    results = [r for r in run.results if r["_task"] == "broken rollout"]
    results = results[0]["results"] if len(results) == 1 and "results" in results[0] else results
    assert len(results) == 20
    print("per rollout (s):", [(k, r["timings"]["total"]) for k, r in zip(kinds, results)])
    assert [r["outcome"] for r in results] == ["rolled_back"] * 20
    by_kind = dict(zip(kinds, results))
    assert "container exited with code 3" in by_kind["exit"]["reason"] or "restarting" in by_kind["exit"]["reason"]
    assert any("cannot read config" in line for line in by_kind["exit"]["logs"])
    assert "healthcheck failed" in by_kind["unhealthy"]["reason"]
    assert "503" in by_kind["503"]["reason"] and "on 2 attempts" in by_kind["503"]["reason"]
    assert "check web CRITICAL: connection" in by_kind["port"]["reason"]
    assert "nothing was changed" in by_kind["nope"]["reason"] and not by_kind["nope"]["changed"]
    for kind, r in zip(kinds, results):
        assert _failed(r) and r["msg"].startswith("rollout rolled back:"), r["msg"]
        assert r["changed"] == (kind != "nope") and r["timings"]["rollback"] is not None
    # independent evidence: 16 outages (the 4 missing-image rollouts stop nothing), each followed by
    # the old version serving again, and it serves at the end
    assert poller.runs_of("plain") >= 17, poller.summary()
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "plain")
    assert [c["Names"] for c in api.containers(all=True, filters={"name": prefix})] == [["/" + name]]


def test_compose_service_replaced_container_by_container(api, images, prefix, run_playbook):
    ports = [free_port(), free_port()]
    for i, port in enumerate(ports, 1):
        run_web(api, "%s-web-%d" % (prefix, i), images["v1"], port, extra_labels={
            "com.docker.compose.project": prefix, "com.docker.compose.service": "web",
            "com.docker.compose.container-number": str(i), "com.docker.compose.oneoff": "False"})
    for port in ports:
        wait_http("http://127.0.0.1:%d/version" % port, "v1")
    base = {"target": "compose_service", "project": prefix, "name": "web", "monitor": 0.5, "timeout": 30,
            "rollback_timeout": 30, "pull": "never"}
    run = run_playbook(_play([
        {"name": "upgrade", "opskit.runbook.rollout": dict(base, image=images["v2"])},
        {"name": "broken", "opskit.runbook.rollout": dict(base, image=images["unhealthy"], fail_on_rollback=False)},
        {"name": "missing project", "ignore_errors": True,
         "opskit.runbook.rollout": dict(base, project=prefix + "-none", image=images["v2"])},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    upgrade, broken, missing = run.task("upgrade"), run.task("broken"), run.task("missing project")
    assert upgrade["outcome"] == "deployed" and len(upgrade["units"]) == 2
    assert [u["target"]["name"] for u in upgrade["units"]] == ["%s-web-1" % prefix, "%s-web-2" % prefix]
    assert broken["outcome"] == "rolled_back" and not _failed(broken)
    assert "healthcheck failed" in broken["reason"]
    for port in ports:
        assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v2")
    assert _failed(missing) and "no containers carry the labels" in missing["msg"]


def test_bad_input_is_one_line(api, run_playbook, tmp_path):
    run = run_playbook(_play([
        {"name": "no container", "ignore_errors": True,
         "opskit.runbook.rollout": {"target": "docker_container", "name": "rlt-does-not-exist", "image": "x:1"}},
        {"name": "no image", "ignore_errors": True,
         "opskit.runbook.rollout": {"target": "docker_container", "name": "x"}},
        {"name": "bad check", "ignore_errors": True,
         "opskit.runbook.rollout": {"target": "docker_container", "name": "x", "image": "x:1",
                                    "health_checks": [{"type": "http", "url": "ftp://x"}]}},
        {"name": "bad kubeconfig", "ignore_errors": True,
         "opskit.runbook.rollout": {"target": "k8s_deployment", "name": "x", "image": "x:1",
                                    "kubeconfig": str(tmp_path / "missing.yml")}},
    ]))
    msgs = {name: run.task(name)["msg"] for name in ("no container", "no image", "bad check", "bad kubeconfig")}
    assert "container rlt-does-not-exist: not found" in msgs["no container"]
    assert "image" in msgs["no image"]
    assert "url must be http:// or https://" in msgs["bad check"]
    assert "kubernetes configuration" in msgs["bad kubeconfig"]
    for msg in msgs.values():
        assert "\n" not in msg and "Traceback" not in msg


# --------------------------------------------------------------------------- Kubernetes

@pytest.fixture
def standin(tmp_path):
    server = K8sStandIn(step=0.1, deadline=2.0)
    server.kubeconfig_path = server.kubeconfig(str(tmp_path / "kubeconfig.json"))
    yield server
    server.close()


def test_k8s_deployment_against_the_standin(standin, run_playbook):
    standin.add_deployment("shop", "web", "reg.example/web:1.0", replicas=2)
    base = {"target": "k8s_deployment", "namespace": "shop", "name": "web", "container": "app",
            "kubeconfig": standin.kubeconfig_path, "monitor": 0.5, "timeout": 20, "rollback_timeout": 20,
            "fail_on_rollback": False}
    run = run_playbook(_play([
        {"name": "plan", "opskit.runbook.rollout": dict(base, image="reg.example/web:1.1"), "check_mode": True},
        {"name": "crash", "opskit.runbook.rollout": dict(base, image="reg.example/web:crash")},
        {"name": "pull", "opskit.runbook.rollout": dict(base, image="reg.example/web:pullfail")},
        {"name": "stuck", "opskit.runbook.rollout": dict(base, image="reg.example/web:stuck")},
        {"name": "good", "opskit.runbook.rollout": dict(base, image="reg.example/web:1.1")},
        {"name": "again", "opskit.runbook.rollout": dict(base, image="reg.example/web:1.1")},
        {"name": "by hand", "opskit.runbook.rollout": dict(base, state="rolled_back")},
        {"name": "restart", "opskit.runbook.rollout": dict(base, state="restarted")},
        {"name": "fails the task", "ignore_errors": True,
         "opskit.runbook.rollout": dict(base, image="reg.example/web:oom", fail_on_rollback=True)},
        {"name": "two containers", "ignore_errors": True,
         "opskit.runbook.rollout": dict({k: v for k, v in base.items() if k != "container"}, image="a:1")},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    plan = run.task("plan")
    assert plan["changed"] and plan["to"]["image"] == "reg.example/web:1.1"
    for task, words in (("crash", "CrashLoopBackOff"), ("pull", "ErrImagePull"), ("stuck", "progress deadline")):
        res = run.task(task)
        assert res["outcome"] == "rolled_back" and words in res["reason"], res
        assert res["last_known_good"]["image"] == "reg.example/web:1.0"
    assert run.task("crash")["logs"] and run.task("crash")["timings"]["total"] < 10  # fail fast, not at the deadline
    good, again = run.task("good"), run.task("again")
    assert good["outcome"] == "deployed" and good["to"]["digest"].startswith("sha256:")
    assert good["from"]["image"] == "reg.example/web:1.0" and good["last_known_good"]["image"] == "reg.example/web:1.0"
    assert not again["changed"] and again["outcome"] == "unchanged"
    hand = run.task("by hand")
    assert hand["outcome"] == "rolled_back" and hand["to"]["image"] == "reg.example/web:1.0"
    assert run.task("restart")["healthy"] is True
    failed = run.task("fails the task")
    assert _failed(failed) and "OOMKilled" in failed["msg"] and failed["outcome"] == "rolled_back"
    assert "has 2 containers (app, sidecar)" in run.task("two containers")["msg"]
    dep = standin.deployments[("shop", "web")]["dep"]
    annotations = dep["metadata"]["annotations"]
    assert annotations["team"] == "payments"                     # other annotations untouched
    assert json.loads(annotations["opskit.runbook/last-known-good"])["image"] == "reg.example/web:1.0"
    assert dep["spec"]["template"]["spec"]["containers"][0]["image"] == "reg.example/web:1.0"
    assert dep["spec"]["template"]["spec"]["containers"][0]["env"] == [{"name": "MODE", "value": "prod"}]
    assert dep["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    kinds = {ctype for method, _path, ctype in standin.requests if method == "PATCH"}
    assert kinds == {"application/strategic-merge-patch+json", "application/json-patch+json"}


def test_k8s_real_cluster(run_playbook, real_kubeconfig):
    """Runs only when KUBECONFIG points at a reachable cluster (none can run on the build machines)."""
    from kubernetes import client, config
    api = config.new_client_from_config(config_file=real_kubeconfig)
    apps, core = client.AppsV1Api(api), client.CoreV1Api(api)
    ns = "rlt-%s" % uuid.uuid4().hex[:6]
    image = os.environ.get("OPSKIT_K8S_TEST_IMAGE", "registry.k8s.io/pause:3.9")
    image2 = os.environ.get("OPSKIT_K8S_TEST_IMAGE2", "registry.k8s.io/pause:3.10")
    core.create_namespace({"metadata": {"name": ns}})
    try:
        apps.create_namespaced_deployment(ns, {
            "metadata": {"name": "web", "annotations": {"team": "payments"}},
            "spec": {"replicas": 1, "selector": {"matchLabels": {"app": "web"}},
                     "template": {"metadata": {"labels": {"app": "web"}},
                                  "spec": {"containers": [{"name": "app", "image": image}]}}}})
        base = {"target": "k8s_deployment", "namespace": ns, "name": "web", "monitor": 3, "timeout": 180,
                "rollback_timeout": 180, "fail_on_rollback": False}
        run = run_playbook(_play([
            {"name": "good", "opskit.runbook.rollout": dict(base, image=image2)},
            {"name": "missing tag", "opskit.runbook.rollout": dict(base, image=image2 + "-does-not-exist")},
        ]), timeout=600)
        assert run.rc == 0, run.stdout[-3000:]
        assert run.task("good")["outcome"] == "deployed"
        missing = run.task("missing tag")
        assert missing["outcome"] == "rolled_back" and ("ImagePull" in missing["reason"] or "ErrImage" in missing["reason"])
        dep = apps.read_namespaced_deployment("web", ns)
        assert dep.spec.template.spec.containers[0].image == image2
        assert dep.metadata.annotations["team"] == "payments"
    finally:
        core.delete_namespace(ns)
