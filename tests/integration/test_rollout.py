# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""opskit.runbook.rollout through ansible-playbook: a real Docker Engine and a Kubernetes stand-in."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid

import pytest

from harness import COLLECTIONS, VENV_BIN, Poller, free_port, http_get
from rollout_fixtures import K8sStandIn, SlowDockerProxy, build_images, run_web, settings_view, wait_http

RECORD_LABEL = "opskit.runbook.last-known-good"


@pytest.fixture(scope="module")
def images(api):
    return build_images(api)


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
    # issue 14 item 8: an unnamed check whose URL carries userinfo and a (short) token
    secret_url = "http://opsuser:Pw-s3cret-9@127.0.0.1:%d/cgi-bin/health?token=abc" % port
    secret_check = {"type": "http", "url": secret_url, "body_contains": "ok", "retries": 2, "interval": 0.2}
    up = dict(base, image=images["v2"], health_checks=_web_check(port, "ok v2") + [secret_check])
    run = run_playbook(_play([
        {"name": "plan", "opskit.runbook.rollout": up, "check_mode": True},
        {"name": "upgrade", "opskit.runbook.rollout": up},
        {"name": "again", "opskit.runbook.rollout": up},
        {"name": "probe", "opskit.runbook.health_check": {"checks": [secret_check]}},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    shown = json.dumps(run.results) + run.stdout + run.stderr
    for secret in ("opsuser", "Pw-s3cret-9", "token=abc"):
        assert secret not in shown, secret
    safe_name = "http http://***@127.0.0.1:%d/cgi-bin/health?token=***" % port
    assert safe_name in json.dumps(run.task("upgrade")["health"]) and safe_name in json.dumps(run.task("probe"))
    assert run.task("upgrade")["invocation"]["module_args"]["health_checks"][1]["url"] == safe_name[5:]
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
    # exited, restarting, or (caught running again between two observations) restarted: all say "crash"
    assert any(w in by_kind["exit"]["reason"] for w in ("container exited with code 3", "restarting", "restarted")), \
        by_kind["exit"]["reason"]
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


def test_crash_after_ready_ends_the_gate_while_checks_retry(api, images, prefix, run_playbook):
    """Issue 14 item 17: ready at once, crashes after 1 s, restarts (unless-stopped); the check would
    retry for 20 s. The gate watches the container between the attempts and rolls back at once."""
    port = free_port()
    name = prefix + "-web"
    run_web(api, name, images["plain"], port)
    wait_http("http://127.0.0.1:%d/version" % port, "plain")
    run = run_playbook(_play([
        {"name": "late crash", "ignore_errors": True,
         "opskit.runbook.rollout": {"target": "docker_container", "name": name, "image": images["late"],
                                    "pull": "never", "monitor": 2, "timeout": 60, "rollback_timeout": 30,
                                    "health_checks": _web_check(port, "ok", retries=40, interval=0.5)}},
    ]))
    res = run.task("late crash")
    assert res["outcome"] == "rolled_back", res
    assert "while the health checks ran" in res["reason"], res["reason"]
    assert "restart" in res["reason"] or "exited" in res["reason"], res["reason"]
    assert res["timings"]["upgrade"] < 8, res["timings"]       # not the checks' 20 s of retries
    assert any("lost the database" in line for line in res["logs"]), res["logs"]
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "plain")
    assert [c["Names"] for c in api.containers(all=True, filters={"name": prefix})] == [["/" + name]]


def _exec(api, name, cmd):
    return api.exec_start(api.exec_create(name, ["sh", "-c", cmd])["Id"]).decode().strip()


def test_autoremove_container_rolls_back_to_a_running_old_one(api, images, prefix, run_playbook):
    """Issue 14 item 11a: `docker run --rm` (AutoRemove) is deleted by the daemon when its old copy
    stops; the rollback re-creates it, every setting and its anonymous volume's data kept."""
    port = free_port()
    name = prefix + "-web"
    host = api.create_host_config(port_bindings={8080: ("127.0.0.1", port)}, auto_remove=True)
    api.start(api.create_container(images["plain"], name=name, host_config=host, volumes=["/data"],
                                   labels={"team": "ops"}, environment={"APP_MODE": "prod"})["Id"])
    wait_http("http://127.0.0.1:%d/version" % port, "plain")
    _exec(api, name, "echo keep > /data/marker")
    base = {"target": "docker_container", "name": name, "pull": "never", "monitor": 0.5, "timeout": 20,
            "rollback_timeout": 20, "fail_on_rollback": False, "health_checks": _web_check(port, "ok plain", retries=1)}
    run = run_playbook(_play([
        {"name": "503", "opskit.runbook.rollout": dict(base, image=images["503"])},
        {"name": "exit", "opskit.runbook.rollout": dict(base, image=images["exit"])},
        {"name": "good", "opskit.runbook.rollout": dict(base, image=images["v2"], health_checks=_web_check(port, "ok v2"))},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    for task in ("503", "exit"):
        res = run.task(task)
        assert res["outcome"] == "rolled_back", (task, res["reason"])
    assert run.task("good")["outcome"] == "deployed", run.task("good")["reason"]
    after = api.inspect_container(name)
    assert after["State"]["Running"] and after["HostConfig"]["AutoRemove"]
    assert "APP_MODE=prod" in after["Config"]["Env"] and after["Config"]["Labels"]["team"] == "ops"
    assert _exec(api, name, "cat /data/marker") == "keep"          # the anonymous volume survived
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v2")
    assert [c["Names"] for c in api.containers(all=True, filters={"name": prefix})] == [["/" + name]]


def _kill_group(proc):
    """SIGKILL the module (Ansible starts it in a session of its own), then ansible-playbook and its
    process group: no cleanup code can run."""
    for pid in _module_pids(proc.pid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait(10)


def _module_pids(ancestor):
    """Pids of the rollout module's processes under ``ancestor`` (this test's ansible-playbook)."""
    parent, cmdlines = {}, {}
    for entry in os.listdir("/proc"):
        try:
            with open("/proc/%s/stat" % entry) as fh:
                parent[int(entry)] = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open("/proc/%s/cmdline" % entry, "rb") as fh:
                cmdlines[int(entry)] = fh.read()
        except (OSError, IndexError, ValueError):
            continue

    def under(pid):
        while pid > 1:
            pid = parent.get(pid, 0)
            if pid == ancestor:
                return True
        return False
    return [pid for pid, cmd in cmdlines.items()
            if b"AnsiballZ_rollout" in cmd and not cmd.startswith(b"/bin/sh") and under(pid)]


def _gating(api, images, name, port, tmp_path):
    """ansible-playbook running a rollout to the 503 image, once the new container serves (the
    gate's check then retries for 100 s)."""
    play = tmp_path / "play.json"
    play.write_text(json.dumps(_play([{"name": "slow gate", "opskit.runbook.rollout": {
        "target": "docker_container", "name": name, "image": images["503"], "pull": "never", "timeout": 120,
        "health_checks": _web_check(port, "ok plain", retries=200, interval=0.5)}}])))
    (tmp_path / "inventory").write_text("localhost ansible_connection=local\n")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_PYTHON_INTERPRETER=os.path.join(VENV_BIN, "python"))
    proc = subprocess.Popen([os.path.join(VENV_BIN, "ansible-playbook"), "-i", str(tmp_path / "inventory"), str(play)],
                            env=env, cwd=str(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while http_get("http://127.0.0.1:%d/version" % port) != (200, "503"):
        if proc.poll() is not None or time.monotonic() > deadline:
            _kill_group(proc)
            raise AssertionError("the new container never served: %s" % proc.stdout.read().decode()[-3000:])
        time.sleep(0.1)
    time.sleep(1.0)
    return proc


def _leftovers(api, prefix):
    return [c for c in api.containers(all=True, filters={"name": prefix}) if "_opskit_" in c["Names"][0]]


def test_sigterm_during_the_gate_reverts_before_the_module_exits(api, images, prefix, tmp_path, run_playbook):
    """Issue 14 item 11c: SIGTERM (an Ansible timeout, a cancelled job) while the gate runs; a
    second run meanwhile does not mistake the live run's parked container for a leftover."""
    port = free_port()
    name = prefix + "-web"
    run_web(api, name, images["plain"], port)
    wait_http("http://127.0.0.1:%d/version" % port, "plain")
    proc = _gating(api, images, name, port, tmp_path)
    try:
        second = run_playbook(_play([{"name": "second", "ignore_errors": True, "opskit.runbook.rollout": {
            "target": "docker_container", "name": name, "image": images["plain"], "pull": "never"}}])).task("second")
        assert _failed(second) and "another rollout (process" in second["msg"], second
        assert http_get("http://127.0.0.1:%d/version" % port) == (200, "503")   # still gating, untouched
        pids = _module_pids(proc.pid)
        assert pids, "no module process found"
        for pid in pids:
            os.kill(pid, signal.SIGTERM)
        output = proc.communicate(timeout=60)[0].decode()
    finally:
        _kill_group(proc)
    assert "rollout rolled back" in output and "SIGTERM" in output, output[-3000:]
    assert "Traceback" not in output
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "plain")
    assert _leftovers(api, prefix) == []


def test_sigkill_during_the_gate_is_repaired_by_the_next_run(api, images, prefix, run_playbook, tmp_path):
    """Issue 14 item 11c: killed while it gates a broken upgrade, rollout leaves the old container
    parked and stopped; the next run puts it back (and says so) before it does anything else."""
    port = free_port()
    name = prefix + "-web"
    run_web(api, name, images["plain"], port, volume=prefix + "-data")
    wait_http("http://127.0.0.1:%d/version" % port, "plain")
    proc = _gating(api, images, name, port, tmp_path)
    _kill_group(proc)  # SIGKILL: no cleanup code of the module can run
    parked = _leftovers(api, prefix)
    assert len(parked) == 1 and "_opskit_prev_" in parked[0]["Names"][0] and parked[0]["State"] != "running"
    run = run_playbook(_play([
        {"name": "next run", "opskit.runbook.rollout": {"target": "docker_container", "name": name,
                                                        "image": images["plain"], "pull": "never", "monitor": 0.5}},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    res = run.task("next run")
    assert res["repaired"] and "renamed it back and started it" in res["repaired"][0], res
    assert "removed the unverified container" in res["repaired"][0]
    assert res["outcome"] == "unchanged", res                   # the old version runs again
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "plain")
    assert [c["Names"] for c in api.containers(all=True, filters={"name": prefix})] == [["/" + name]]
    assert "interrupted rollout" in run.stdout + run.stderr     # the warning


def test_lost_docker_answers_in_the_switch_and_the_revert_still_roll_back(api, images, prefix, run_playbook):
    """Issue 14 item 11b: a request whose answer is lost (requests' ReadTimeout) while creating the
    new container, while stopping the old one, or while stopping the failed one in the revert, is a
    one-line error and the old container is serving again."""
    port = free_port()
    name = prefix + "-web"
    run_web(api, name, images["plain"], port)
    wait_http("http://127.0.0.1:%d/version" % port, "plain")
    proxy = SlowDockerProxy([r"^POST /v[0-9.]+/containers/create", r"^POST /v[0-9.]+/containers/[0-9a-f]+/stop\?t=0",
                             r"^POST /v[0-9.]+/containers/[0-9a-f]+/stop\?t=1 "], delay=5)
    base = {"target": "docker_container", "name": name, "pull": "never", "monitor": 0.5, "timeout": 20,
            "rollback_timeout": 20, "docker_host": proxy.docker_host, "docker_timeout": 2, "fail_on_rollback": False,
            "health_checks": _web_check(port, "ok plain", retries=1)}
    try:
        run = run_playbook(_play([
            {"name": "create", "opskit.runbook.rollout": dict(base, image=images["v2"])},
            {"name": "revert", "opskit.runbook.rollout": dict(base, image=images["503"])},
            {"name": "stop", "opskit.runbook.rollout": dict(base, image=images["v2"], stop_timeout=1)},
        ]))
    finally:
        proxy.close()
    assert run.rc == 0, run.stdout[-3000:]
    assert len(proxy.hits) == 3, proxy.hits
    create, revert, stop = run.task("create"), run.task("revert"), run.task("stop")
    assert stop["outcome"] == "rolled_back" and "stopping the old container" in stop["reason"], stop["reason"]
    assert create["outcome"] == "rolled_back" and "creating the new container" in create["reason"], create["reason"]
    assert "timed out" in create["reason"] and "\n" not in create["reason"]
    assert revert["outcome"] == "rolled_back", revert["reason"]
    assert "Traceback" not in run.stdout + run.stderr
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


def test_compose_leftovers_of_a_killed_run_are_put_back(api, images, prefix, run_playbook):
    """Issue 14 item 11c for Compose: the state a run killed between its rename and its create
    leaves (web-2 only parked, nothing under its name), plus a parked failed copy of web-1."""
    ports = [free_port(), free_port()]
    labels = {"com.docker.compose.project": prefix, "com.docker.compose.service": "web",
              "com.docker.compose.oneoff": "False"}
    for i, port in enumerate(ports, 1):
        run_web(api, "%s-web-%d" % (prefix, i), images["v1"], port,
                extra_labels=dict(labels, **{"com.docker.compose.container-number": str(i)}))
    for port in ports:
        wait_http("http://127.0.0.1:%d/version" % port, "v1")
    api.rename("%s-web-2" % prefix, "%s-web-2_opskit_prev_1764581234567" % prefix)
    api.stop("%s-web-2_opskit_prev_1764581234567" % prefix, timeout=5)
    api.create_container(images["v2"], name="%s-web-1_opskit_failed_1764581234999" % prefix,
                         labels=dict(labels, **{"com.docker.compose.container-number": "1"}))
    base = {"target": "compose_service", "project": prefix, "name": "web", "monitor": 0.5, "pull": "never"}
    run = run_playbook(_play([
        {"name": "plan", "opskit.runbook.rollout": dict(base, image=images["v1"]), "check_mode": True},
        {"name": "next run", "opskit.runbook.rollout": dict(base, image=images["v1"])},
    ]))
    assert run.rc == 0, run.stdout[-3000:]
    plan, res = run.task("plan"), run.task("next run")
    assert [t.split(":")[0] for t in plan["repaired"]] == ["container %s-web-1" % prefix, "container %s-web-2" % prefix]
    assert all(" would " in t for t in plan["repaired"]), plan["repaired"]
    assert len(res["repaired"]) == 2 and "renamed it back and started it" in res["repaired"][1], res["repaired"]
    assert res["outcome"] == "unchanged" and len(res["units"]) == 2, res
    for port in ports:
        assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v1")
    names = sorted(c["Names"][0] for c in api.containers(all=True, filters={"name": prefix}))
    assert names == ["/%s-web-1" % prefix, "/%s-web-2" % prefix]


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
