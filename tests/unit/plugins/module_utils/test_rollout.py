# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of rollout: observations, the gate, orchestration (fake units), Docker create spec."""

from __future__ import annotations

import json

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._rollout import action as R
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import gate as G
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import record as REC
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import docker as D
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import k8s as K
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, OpsError, ServiceError


# --------------------------------------------------------------------------- docker_state

def _c(status="running", health=None, restarts=0, oom=False, code=0, restarting=False, log=None, streak=0):
    state = {"Status": status, "ExitCode": code, "OOMKilled": oom, "Restarting": restarting, "Error": ""}
    if health:
        state["Health"] = {"Status": health, "FailingStreak": streak, "Log": [{"Output": log}] if log else []}
    return {"State": state, "RestartCount": restarts}


@pytest.mark.parametrize("inspect, baseline, state, words", [
    (_c(), 0, REC.READY, "no healthcheck"),
    (_c(health="healthy"), 0, REC.READY, "healthy"),
    (_c(health="starting"), 0, REC.WAITING, "starting"),
    (_c(health="unhealthy", streak=3, log="HTTP 404"), 0, REC.FAILED, "healthcheck failed 3 time(s): HTTP 404"),
    (_c(status="exited", code=3), 0, REC.FAILED, "exited with code 3"),
    (_c(status="dead", code=137), 0, REC.FAILED, "dead"),
    (_c(status="restarting", code=1, restarts=2, restarting=True), 0, REC.FAILED, "crash loop"),
    (_c(restarts=1), 0, REC.FAILED, "restarted 1 time(s)"),
    (_c(restarts=4), 4, REC.READY, "running"),              # restarts before the baseline do not count
    (_c(status="exited", oom=True, code=137), 0, REC.FAILED, "OOMKilled"),
    (_c(oom=True), 0, REC.FAILED, "OOMKilled"),
    (_c(status="created"), 0, REC.WAITING, "created"),
    (_c(status="paused"), 0, REC.FAILED, "paused"),
    (_c(health="none"), 0, REC.READY, "no healthcheck"),
])
def test_docker_state(inspect, baseline, state, words):
    got, reason = REC.docker_state(inspect, baseline)
    assert got == state
    assert words in reason


# --------------------------------------------------------------------------- pods and deployments

def _pod(waiting=None, last=None, restarts=0, phase="Running", name="web-1", cname="app", term=None):
    cs = {"name": cname, "restartCount": restarts, "state": {}}
    if waiting:
        cs["state"] = {"waiting": {"reason": waiting, "message": "msg of %s" % waiting}}
    if term:
        cs["state"] = {"terminated": {"reason": term}}
    if last:
        cs["lastState"] = {"terminated": {"reason": last, "exitCode": 137}}
    return {"metadata": {"name": name}, "status": {"phase": phase, "containerStatuses": [cs]}}


@pytest.mark.parametrize("pod, expect", [
    (_pod(), None),
    (_pod(waiting="ContainerCreating"), None),
    (_pod(waiting="CrashLoopBackOff"), "web-1 container app: CrashLoopBackOff (msg of CrashLoopBackOff)"),
    (_pod(waiting="ImagePullBackOff"), "ImagePullBackOff"),
    (_pod(waiting="ErrImagePull"), "ErrImagePull"),
    (_pod(waiting="CreateContainerConfigError"), "CreateContainerConfigError"),
    (_pod(last="OOMKilled", restarts=1), "OOMKilled"),
    (_pod(term="OOMKilled"), "OOMKilled"),
    (_pod(phase="Failed"), "failed"),
])
def test_pod_failure(pod, expect):
    got = REC.pod_failure(pod)
    if expect is None:
        assert got is None
    else:
        assert expect in got


def test_pod_failure_counts_restarts_from_the_first_observation():
    baseline = {}
    assert REC.pod_failure(_pod(restarts=2), baseline) is None    # first seen with 2 restarts
    assert REC.pod_failure(_pod(restarts=2), baseline) is None
    assert "restarted" in REC.pod_failure(_pod(restarts=3, last="Error"), baseline)


def _dep(gen=2, observed=2, replicas=3, updated=3, total=3, available=3, deadline=False):
    conds = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded" if deadline else "NewReplicaSetAvailable"}]
    return {"metadata": {"name": "web", "generation": gen}, "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available, "conditions": conds}}


@pytest.mark.parametrize("dep, state", [
    (_dep(gen=3, observed=2), REC.WAITING),
    (_dep(deadline=True), REC.FAILED),
    (_dep(updated=1, total=4, available=3), REC.WAITING),
    (_dep(total=4), REC.WAITING),
    (_dep(available=2), REC.WAITING),
    (_dep(), REC.READY),
])
def test_rollout_status_maps_the_kubectl_rules(dep, state):
    assert REC.rollout_status(dep)[0] == state


def test_pod_matches_template():
    tmpl = {"metadata": {"annotations": {K.RESTARTED_AT: "t1"}},
            "spec": {"containers": [{"name": "app", "image": "a:2"}, {"name": "side", "image": "s:1"}]}}
    pod = {"metadata": {"annotations": {K.RESTARTED_AT: "t1"}}, "spec": json.loads(json.dumps(tmpl["spec"]))}
    assert K.pod_matches_template(pod, tmpl)
    pod["metadata"]["annotations"][K.RESTARTED_AT] = "t0"
    assert not K.pod_matches_template(pod, tmpl)
    pod["metadata"]["annotations"][K.RESTARTED_AT] = "t1"
    pod["spec"]["containers"][0]["image"] = "a:1"
    assert not K.pod_matches_template(pod, tmpl)


# --------------------------------------------------------------------------- the gate (fake clock)

class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t

    def sleep(self, seconds):
        self.t += max(seconds, 0.01)


def _observer(clock, script):
    """``script``: list of (until_time, state, reason); the last one holds forever."""
    def observe():
        for until, state, reason in script:
            if clock.t < until:
                return state, reason
        return script[-1][1], script[-1][2]
    return observe


def _gate(script, timeout=10, monitor=3, checks=None):
    clock = Clock()
    res = G.gate(_observer(clock, script), timeout, monitor, checks, interval=0.25, clock=clock, sleep=clock.sleep)
    return res, clock


def test_gate_passes_after_ready_and_monitor():
    res, clock = _gate([(1.0, REC.WAITING, "starting"), (99, REC.READY, "ok")])
    assert res.ok and res.phase == "passed"
    assert res.timings["ready"] == pytest.approx(1.0, abs=0.3)
    assert res.timings["monitor"] == pytest.approx(3.0, abs=0.3)


def test_gate_fails_fast_on_failed():
    res, clock = _gate([(0.5, REC.WAITING, "starting"), (99, REC.FAILED, "container exited with code 3")], timeout=300)
    assert not res.ok and res.phase == "ready" and "exited" in res.reason
    assert clock.t < 1.0  # not at the 300 s deadline


def test_gate_times_out_waiting():
    res, clock = _gate([(99, REC.WAITING, "health is starting")], timeout=5)
    assert not res.ok and res.phase == "ready"
    assert "not ready within the 5s timeout: health is starting" == res.reason
    assert 5.0 <= clock.t < 5.6


def test_gate_fails_inside_the_monitor_window():
    res, clock = _gate([(1.0, REC.READY, "ok"), (99, REC.FAILED, "container is restarting")], monitor=10)
    assert not res.ok and res.phase == "monitor"
    assert res.reason.startswith("within the 10s monitor window: container is restarting")
    assert clock.t < 2.0


def test_gate_monitor_zero_skips_the_window():
    res, clock = _gate([(99, REC.READY, "ok")], monitor=0)
    assert res.ok and clock.t == 0.0


def test_gate_runs_checks_first_and_during_the_window():
    calls = []

    def checks(deadline):
        calls.append(deadline)
        return True, None, {"status": "OK", "checks": []}
    res, _clock = _gate([(99, REC.READY, "ok")], monitor=3, checks=checks)
    assert res.ok
    assert len(calls) >= 3  # once before the window, about once a second in it, once at its end


def test_gate_fails_when_checks_fail_before_the_window():
    def checks(deadline):
        return False, "check api CRITICAL: HTTP 503 on 3 attempts", {"status": "CRITICAL", "checks": []}
    res, _clock = _gate([(99, REC.READY, "ok")], checks=checks)
    assert not res.ok and res.phase == "checks" and "503" in res.reason


def test_gate_fails_when_checks_start_failing_in_the_window():
    state = {"n": 0}

    def checks(deadline):
        state["n"] += 1
        ok = state["n"] < 3
        return ok, None if ok else "check api CRITICAL: connection refused on 1 attempt", {"status": "OK"}
    res, _clock = _gate([(99, REC.READY, "ok")], monitor=10, checks=checks)
    assert not res.ok and res.phase == "monitor" and "connection refused" in res.reason


@pytest.mark.parametrize("phase_monitor", [False, True])
def test_gate_ends_at_once_when_the_unit_crashes_while_checks_retry(phase_monitor):
    """Issue 14 item 17: a check still retrying (here: blocked) must not hold up a crashed unit."""
    import threading
    import time as _time
    release, calls, blocked = threading.Event(), [], []

    def checks(deadline):
        calls.append(deadline)
        if phase_monitor and len(calls) == 1:
            return True, None, {"status": "OK", "checks": []}
        blocked.append(1)
        release.wait(30)  # a check with many retries against a service that never answers
        return False, "check api CRITICAL: connection refused on 41 attempts", {"status": "CRITICAL"}

    def observe():  # the container crashes while the check retries
        if not blocked:
            return REC.READY, "running (no healthcheck)"
        return REC.FAILED, "container restarted 1 time(s) (last exit code 1)"
    clock = Clock()
    t0 = _time.monotonic()
    try:
        res = G.gate(observe, 300, 10, checks, interval=0.02, clock=clock, sleep=clock.sleep)
    finally:
        release.set()
    assert _time.monotonic() - t0 < 5  # not the checks' 30 s
    assert not res.ok and res.phase == ("monitor" if phase_monitor else "checks")
    assert "restarted 1 time(s)" in res.reason and "while the health checks ran" in res.reason


def test_gate_reraises_a_bug_in_the_checks():
    def checks(deadline):
        raise ConfigError("bad check")
    with pytest.raises(ConfigError):
        _gate([(99, REC.READY, "ok")], checks=checks)


def test_checks_reason_words():
    report = {"status": "CRITICAL", "checks": [
        {"name": "api", "status": "CRITICAL", "message": "HTTP 503 Service Unavailable", "attempts": 3},
        {"name": "db", "status": "OK", "message": "", "attempts": 1}]}
    assert G.checks_reason(report) == "check api CRITICAL: HTTP 503 Service Unavailable on 3 attempts"


def test_checks_runner_uses_the_engine():
    seen = {}

    def run_checks(checks, deadline=None):
        seen["deadline"] = deadline
        return {"status": "WARNING", "checks": [{"name": "x", "status": "WARNING", "message": "slow", "attempts": 1}]}

    def failing(status, fail_on):
        return status in ("CRITICAL", "UNKNOWN")
    run = G.checks_runner([{"name": "x"}], run_checks, failing)
    ok, reason, _report = run(7.0)
    assert ok and reason is None and seen["deadline"] == 7.0   # WARNING passes the gate
    assert G.checks_runner([], run_checks, failing) is None


# --------------------------------------------------------------------------- orchestration (fake units)

class FakeUnit:
    """Scripted unit: ``new_script``/``old_script`` are the observe() answers after a switch / revert."""

    def __init__(self, name="web", image="app:1", ready_after_switch=True, ready_after_revert=True,
                 fail_switch=None, record=None, healthy_now=True):
        self.name, self.image = name, image
        self.ok_new, self.ok_old, self.fail_switch = ready_after_switch, ready_after_revert, fail_switch
        self.events = []
        self.record = record
        self.state = "old" if healthy_now else "broken"

    def label(self):
        return "container %s" % self.name

    def describe(self):
        return {"kind": "fake", "name": self.name}

    def current(self):
        return {"image": self.image, "digest": "sha256:" + self.image}

    def resolve(self, image, check_mode=False):
        if image.endswith(":nope"):
            raise REC.ImageMissing("image %s is not present" % image)
        return {"image": image, "digest": "sha256:" + image, "id": image}

    def same(self, target):
        return target["image"] == self.image

    def recorded(self):
        return self.record

    def matches(self, record):
        return record["image"] == self.image

    def replace(self, target, keep_record=False):
        self.events.append(("replace", target["image"], keep_record))
        if not keep_record or not self.record:
            self.record = {"image": self.image, "digest": "d", "recorded_at": "t", "spec": {}}
        self.state = "new"
        if self.fail_switch:
            raise ServiceError(self.fail_switch)

    def restore(self, record):
        self.events.append(("restore", record["image"]))
        self.state = "new"

    def restart(self):
        self.events.append(("restart",))
        self.state = "new"

    def observe(self):
        ok = {"new": self.ok_new, "old": self.ok_old, "broken": False}[self.state]
        return (REC.READY, "ok") if ok else (REC.FAILED, "container exited with code 3")

    def revert(self):
        self.events.append(("revert",))
        self.state = "old"

    def commit(self):
        self.events.append(("commit",))

    def logs(self, lines):
        return ["boom"] if self.state == "new" else []


def _run(units, action="deploy", image="app:2", check_mode=False, monitor=1.0):
    clock = Clock()
    settings = R.Settings(timeout=5, monitor=monitor, rollback_timeout=5, log_lines=5)
    return R.execute(units, action, image, settings, check_mode, clock=clock, sleep=clock.sleep)


def test_execute_deploys_and_commits():
    unit = FakeUnit()
    res = _run([unit])
    assert res["outcome"] == "deployed" and res["changed"]
    assert res["from"] == {"image": "app:1", "digest": "sha256:app:1"}
    assert res["to"] == {"image": "app:2", "digest": "sha256:app:2"}
    assert unit.events == [("replace", "app:2", False), ("commit",)]
    assert res["last_known_good"]["image"] == "app:1"
    assert res["timings"]["monitor"] == pytest.approx(1.0, abs=0.3)


def test_execute_a_commit_that_fails_is_a_warning_not_a_failed_upgrade():
    unit = FakeUnit()

    def commit():
        raise ServiceError("removing the old container: read timed out")
    unit.commit = commit
    res = _run([unit])
    assert res["outcome"] == "deployed"
    assert res["warnings"] == ["container web passed the gate, but removing the old container: read timed out"]


@pytest.mark.parametrize("name, expect", [
    ("/web_opskit_prev_1764581234567", ("web", "prev")),
    ("/my_web_opskit_failed_12", ("my_web", "failed")),
    ("web_opskit_old_1", ("web", "old")),
    ("/web_opskit_prev_x", None),
    ("/web", None),
    ("/web_opskit_prev_", None),
])
def test_parked_names(name, expect):
    m = D._PARKED.match(name)
    assert (m and (m.group("base"), m.group("kind"))) == (expect or None) if expect else m is None


def test_run_token_names_a_live_run_only():
    import os
    token = D.run_token()
    assert D.run_alive(token)
    host, pid, start = token.split("/")
    assert not D.run_alive("%s/%s/%s" % (host, pid, int(start) + 1))   # a reused pid
    assert not D.run_alive("%s/%d/1" % (host, 2 ** 22 + os.getpid()))  # no such process
    assert not D.run_alive("other-host/%s/%s" % (pid, start)) and not D.run_alive(None) and not D.run_alive("x")


def test_execute_same_image_is_unchanged():
    unit = FakeUnit(image="app:2")
    res = _run([unit])
    assert res["outcome"] == "unchanged" and not res["changed"] and unit.events == []


def test_execute_rolls_back_a_failing_upgrade_and_returns_logs():
    unit = FakeUnit(ready_after_switch=False)
    res = _run([unit])
    assert res["outcome"] == "rolled_back" and res["changed"]
    assert "exited with code 3" in res["reason"]
    assert res["logs"] == ["boom"]
    assert unit.events == [("replace", "app:2", False), ("revert",)]
    assert res["timings"]["rollback"] is not None and res["timings"]["rollback_monitor"] is not None


def test_execute_reports_a_failed_rollback():
    unit = FakeUnit(ready_after_switch=False, ready_after_revert=False)
    res = _run([unit])
    assert res["outcome"] == "rollback_failed"
    assert "the rollback failed too" in res["reason"]


def test_execute_switch_error_is_rolled_back():
    unit = FakeUnit(fail_switch="starting the new container: port is already allocated")
    res = _run([unit])
    assert res["outcome"] == "rolled_back" and "port is already allocated" in res["reason"]
    assert ("revert",) in unit.events


def test_execute_compose_failure_reverts_every_switched_unit_newest_first():
    order = []
    a, b = FakeUnit("svc-1"), FakeUnit("svc-2", ready_after_switch=False)
    for u in (a, b):
        u.revert = (lambda u=u: (order.append(u.name), setattr(u, "state", "old")))
    res = _run([a, b])
    assert res["outcome"] == "rolled_back"
    assert order == ["svc-2", "svc-1"]
    assert ("commit",) not in a.events     # nothing dropped before every unit passed


def test_execute_check_mode_changes_nothing():
    unit = FakeUnit()
    res = _run([unit], check_mode=True)
    assert res["changed"] and res["outcome"] == "deployed" and res["reason"].startswith("check mode")
    assert res["to"]["image"] == "app:2" and unit.events == []


def test_execute_keeps_the_older_record_when_the_current_version_is_broken():
    unit = FakeUnit(healthy_now=False, record={"image": "app:0", "digest": "d0", "recorded_at": "t", "spec": {}})
    res = _run([unit])
    assert unit.events[0] == ("replace", "app:2", True)
    assert res["last_known_good"]["image"] == "app:0"


def test_execute_manual_rollback():
    unit = FakeUnit(image="app:2", record={"image": "app:1", "digest": "d", "recorded_at": "t", "spec": {}})
    res = _run([unit], action="rollback", image=None)
    assert res["outcome"] == "rolled_back" and unit.events[0] == ("restore", "app:1")
    unit2 = FakeUnit(image="app:1", record={"image": "app:1", "digest": "d", "recorded_at": "t", "spec": {}})
    assert _run([unit2], action="rollback", image=None)["outcome"] == "unchanged"
    with pytest.raises(ServiceError, match="no last-known-good is recorded"):
        _run([FakeUnit()], action="rollback", image=None)


def test_execute_manual_rollback_that_fails_puts_back_what_ran():
    unit = FakeUnit(image="app:2", ready_after_switch=False,
                    record={"image": "app:1", "digest": "d", "recorded_at": "t", "spec": {}})
    res = _run([unit], action="rollback", image=None)
    assert res["outcome"] == "rollback_failed" and ("revert",) in unit.events


def test_execute_restart_reports_health():
    assert _run([FakeUnit()], action="restart", image=None)["healthy"] is True
    res = _run([FakeUnit(ready_after_switch=False)], action="restart", image=None)
    assert res["outcome"] == "restarted" and res["healthy"] is False


def test_missing_image_result_changes_nothing():
    unit = FakeUnit()
    with pytest.raises(REC.ImageMissing) as info:
        _run([unit], image="app:nope")
    res = R.missing_image_result([unit], "app:nope", info.value)
    assert res["outcome"] == "rolled_back" and not res["changed"] and unit.events == []
    assert "nothing was changed" in res["reason"]


@pytest.mark.parametrize("params, match", [
    (dict(timeout=0), "timeout must be a positive"),
    (dict(monitor=-1), "monitor must be a non-negative"),
    (dict(rollback_timeout=-5), "rollback_timeout must be a positive"),
    (dict(state="deployed", image=None), "image is required"),
    (dict(health_checks=[{"type": "http"}]), "requires url"),
    (dict(health_checks=[{"type": "nope"}]), "unknown type"),
])
def test_run_rejects_bad_input_before_connecting(params, match):
    base = dict(target="docker_container", name="x", image="a:1", state="deployed", timeout=10.0, monitor=1.0,
                rollback_timeout=10.0, log_lines=5, docker_host="unix:///nonexistent.sock")
    base.update(params)
    with pytest.raises(ConfigError, match=match):
        R.run(base)


def test_record_checks():
    assert REC.check_record({"image": "a", "spec": {}, "format": 1}, "x")
    with pytest.raises(ServiceError, match="not readable"):
        REC.check_record({"spec": {}}, "x")
    with pytest.raises(ServiceError, match="newer format"):
        REC.check_record({"image": "a", "spec": {}, "format": 99}, "x")
    assert isinstance(ServiceError("x"), OpsError)


# --------------------------------------------------------------------------- Docker create spec

IMAGE_CFG = {"Env": ["PATH=/bin", "APP_VERSION=v1"], "Cmd": ["/run.sh"], "Entrypoint": None, "WorkingDir": "",
             "User": "", "Labels": {"org.opencontainers.image.version": "v1"}, "ExposedPorts": {"8080/tcp": {}},
             "Healthcheck": {"Test": ["CMD-SHELL", "wget ..."], "Interval": 500000000}, "Volumes": None}


def _inspect(**over):
    cfg = {"Hostname": "0123456789ab", "Env": ["PATH=/bin", "APP_VERSION=v1", "APP_MODE=prod"],
           "Cmd": ["/run.sh"], "Entrypoint": None, "WorkingDir": "/www", "User": "",
           "Labels": {"org.opencontainers.image.version": "v1", "team": "ops", REC.RECORD_LABEL: "{}"},
           "ExposedPorts": {"8080/tcp": {}, "9090/tcp": {}}, "Healthcheck": IMAGE_CFG["Healthcheck"],
           "Volumes": {"/cache": {}}, "Tty": False, "StopSignal": "SIGTERM", "Image": "web:v1"}
    cfg.update(over.pop("config", {}))
    data = {
        "Id": "0123456789abcdef" * 4, "Config": cfg,
        "HostConfig": {"Binds": ["data:/data:rw"], "NetworkMode": "appnet", "RestartPolicy": {"Name": "always"},
                       "PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]},
                       "Links": ["/db:/web/database"]},
        "Mounts": [{"Type": "volume", "Name": "data", "Destination": "/data", "RW": True},
                   {"Type": "volume", "Name": "f00d" * 16, "Destination": "/cache", "RW": True},
                   {"Type": "bind", "Source": "/etc/x", "Destination": "/etc/x", "RW": False}],
        "NetworkSettings": {"Networks": {
            "appnet": {"Aliases": ["0123456789ab", "web"], "IPAMConfig": {"IPv4Address": "172.30.0.9"}, "Links": None},
            "backend": {"Aliases": ["0123456789ab", "web-backend"], "IPAMConfig": None, "Links": None}}},
    }
    data.update(over)
    return data


def test_create_spec_keeps_user_settings_and_leaves_image_defaults():
    spec = D.create_spec(_inspect(), IMAGE_CFG)
    body = spec["body"]
    assert body["Env"] == ["APP_MODE=prod"]                 # image ENV left to the new image
    assert body["Labels"] == {"team": "ops"}                # image label and our record label dropped
    assert "Cmd" not in body and "Healthcheck" not in body  # equal to the image's: new image decides
    assert "Hostname" not in body                           # the automatic one (short id)
    assert body["WorkingDir"] == "/www" and body["StopSignal"] == "SIGTERM"
    assert body["ExposedPorts"] == {"9090/tcp": {}}
    assert body["Volumes"] == {"/cache": {}}
    host = body["HostConfig"]
    assert host["RestartPolicy"] == {"Name": "always"} and host["PortBindings"]["8080/tcp"][0]["HostPort"] == "8080"
    assert host["Binds"] == ["data:/data:rw", "%s:/cache" % ("f00d" * 16)]  # anonymous volume re-attached
    assert host["Links"] == ["db:database"]
    assert body["NetworkingConfig"] == {"EndpointsConfig": {"appnet": {"Aliases": ["web"],
                                                                       "IPAMConfig": {"IPv4Address": "172.30.0.9"}}}}
    assert spec["networks"] == [{"name": "backend", "aliases": ["web-backend"], "ipv4": None, "ipv6": None,
                                 "links": []}]


def test_create_spec_custom_command_entrypoint_and_healthcheck():
    spec = D.create_spec(_inspect(config={"Cmd": ["httpd", "-p", "9090"], "Hostname": "web-host",
                                          "Healthcheck": {"Test": ["NONE"]}}), IMAGE_CFG)
    body = spec["body"]
    assert body["Cmd"] == ["httpd", "-p", "9090"] and body["Hostname"] == "web-host"
    assert body["Healthcheck"] == {"Test": ["NONE"]}
    spec = D.create_spec(_inspect(config={"Entrypoint": ["/bin/sh", "-c"], "Cmd": None}), IMAGE_CFG)
    assert spec["body"]["Entrypoint"] == ["/bin/sh", "-c"] and "Cmd" not in spec["body"]
    spec = D.create_spec(_inspect(), dict(IMAGE_CFG, Entrypoint=["/entry"]))
    assert spec["body"]["Entrypoint"] == [""]                # the image's entrypoint was switched off


def test_create_spec_without_image_keeps_everything():
    body = D.create_spec(_inspect(), None)["body"]
    assert body["Env"] == ["PATH=/bin", "APP_VERSION=v1", "APP_MODE=prod"]
    assert body["Cmd"] == ["/run.sh"] and "Healthcheck" in body


def test_create_spec_default_bridge_and_host_network():
    data = _inspect()
    data["HostConfig"]["NetworkMode"] = "default"
    data["NetworkSettings"]["Networks"] = {"bridge": {"Aliases": None}}
    spec = D.create_spec(data, IMAGE_CFG)
    assert "NetworkingConfig" not in spec["body"] and spec["networks"] == []
    data["HostConfig"]["NetworkMode"] = "host"
    data["NetworkSettings"]["Networks"] = {"host": {}}
    assert D.create_spec(data, IMAGE_CFG)["networks"] == []


@pytest.mark.parametrize("ref, expect", [
    ("web:v1", ("web", "v1")),
    ("web", ("web", "latest")),
    ("registry:5000/team/web", ("registry:5000/team/web", "latest")),
    ("registry:5000/team/web:2.1", ("registry:5000/team/web", "2.1")),
    ("web@sha256:abc", ("web", "sha256:abc")),
])
def test_split_ref(ref, expect):
    assert D.split_ref(ref) == expect


@pytest.mark.parametrize("img, ref, expect", [
    ({"Id": "sha256:local", "RepoDigests": []}, "web:v1", "sha256:local"),
    ({"Id": "sha256:x", "RepoDigests": ["other@sha256:o", "reg/web@sha256:w"]}, "reg/web:v1", "sha256:w"),
    ({"Id": "sha256:x", "RepoDigests": ["other@sha256:o"]}, "reg/web:v1", "sha256:o"),
])
def test_image_digest(img, ref, expect):
    assert D.image_digest(img, ref) == expect


def test_create_spec_network_given_at_create_with_default_mode():
    # created with NetworkMode "default" and an EndpointsConfig: only on that network, not on bridge
    data = _inspect()
    data["HostConfig"]["NetworkMode"] = "default"
    data["NetworkSettings"]["Networks"] = {"appnet": {"Aliases": ["0123456789ab", "web"]}}
    spec = D.create_spec(data, IMAGE_CFG)
    assert spec["body"]["NetworkingConfig"] == {"EndpointsConfig": {"appnet": {"Aliases": ["web"]}}}
    assert spec["networks"] == []
