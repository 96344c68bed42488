# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's state=stopped / state=started and the start-first proxy check, over fake units."""

from __future__ import annotations

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ServiceError
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import action as R
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import k8s as K
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import record as REC

from test_rollout import Clock  # the fake clock of the rollout unit tests


class Unit:
    def __init__(self, name, running=True, refuse=None, fail_stop=None, comes_up=True, order="stop-first"):
        self.name, self.is_running, self.refuse, self.fail_stop = name, running, refuse, fail_stop
        self.comes_up, self.order, self.events = comes_up, order, []

    def label(self):
        return "container %s" % self.name

    def describe(self):
        return {"kind": "fake", "name": self.name}

    def current(self):
        return {"image": "app:1", "digest": "d1"}

    def running(self):
        return self.is_running

    def cannot_stop(self):
        return self.refuse

    def stop(self):
        self.events.append("stop")
        if self.fail_stop:
            raise ServiceError(self.fail_stop)
        self.is_running = False

    def stopped(self):
        return not self.is_running

    def start(self):
        self.events.append("start")
        self.is_running = True

    def observe(self):
        return (REC.READY, "ok") if self.comes_up else (REC.FAILED, "container exited with code 1")

    def logs(self, lines):
        return []

    # deploy
    def resolve(self, image, check_mode=False):
        return {"image": image, "digest": "d2", "id": image}

    def same(self, target):
        return False

    def recorded(self):
        return None

    def replace(self, target, keep_record=False):
        self.events.append("replace")

    def revert(self):
        self.events.append("revert")

    def commit(self):
        self.events.append("commit")


def _stop(units, check_mode=False):
    clock = Clock()
    return R.stop_units(units, check_mode, timeout=5, clock=clock, sleep=clock.sleep)


def test_stop_units_stops_the_running_ones():
    a, b = Unit("a"), Unit("b", running=False)
    res = _stop([a, b])
    assert res["outcome"] == "stopped" and res["changed"] and a.events == ["stop"] and b.events == []
    assert res["reason"] == "stopped container a"
    again = _stop([a, b])
    assert not again["changed"] and "already stopped" in again["reason"]


def test_stop_units_refuses_before_stopping_anything():
    a, b = Unit("a"), Unit("b", refuse="container b runs with --rm (AutoRemove): stopping it would delete it")
    with pytest.raises(ServiceError, match="refusing to stop anything: container b runs with --rm"):
        _stop([a, b])
    assert a.events == [] and b.events == []


def test_stop_units_names_what_was_stopped_when_one_fails():
    a, b = Unit("a"), Unit("b", fail_stop="container b still runs after docker stop")
    with pytest.raises(ServiceError, match="still runs after docker stop; already stopped: container a"):
        _stop([a, b])


def test_stop_units_check_mode_changes_nothing():
    a = Unit("a")
    res = _stop([a], check_mode=True)
    assert res["changed"] and a.events == [] and res["reason"] == "would stop container a"


def _execute(units, action, image=None, proxy=None):
    clock = Clock()
    settings = R.Settings(timeout=5, monitor=0.5, rollback_timeout=5, log_lines=5, proxy=proxy)
    return R.execute(units, action, image, settings, False, clock=clock, sleep=clock.sleep)


def test_start_gates_a_stopped_unit():
    a, b = Unit("a", running=False), Unit("b")
    res = _execute([a, b], "start")
    assert res["outcome"] == "started" and res["healthy"] is True and a.events == ["start", "commit"] and b.events == []
    broken = Unit("c", running=False, comes_up=False)
    res = _execute([broken], "start")
    assert res["outcome"] == "started" and res["healthy"] is False and "exited with code 1" in res["reason"]


def test_start_first_proxy_check_failing_rolls_back():
    calls = []

    def proxy(deadline):
        calls.append(deadline)
        return False, "check through nginx CRITICAL: HTTP 502", {"status": "CRITICAL"}
    beside, plain = Unit("a", order="start-first"), Unit("b")
    res = _execute([beside], "deploy", "app:2", proxy=proxy)
    assert res["outcome"] == "rolled_back" and "through the proxy: check through nginx" in res["reason"]
    assert beside.events == ["replace", "revert"] and res["proxy"] == {"status": "CRITICAL"}
    res = _execute([plain], "deploy", "app:2", proxy=proxy)        # stop-first: no proxy check
    assert res["outcome"] == "deployed" and len(calls) == 1


@pytest.mark.parametrize("strategy, wanted, order, noted", [
    ({"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}, "start-first",
     "rolling (maxSurge 1, maxUnavailable 0)", False),
    ({}, "start-first", "rolling (maxSurge 25%, maxUnavailable 25%)", True),
    ({"type": "Recreate"}, "start-first", "recreate", True),
    ({"type": "Recreate"}, "stop-first", "recreate", False),
])
def test_k8s_surge_order(strategy, wanted, order, noted):
    got, note = K.surge_order({"spec": {"strategy": strategy}}, wanted, "deployment a/b")
    assert got == order and bool(note) == noted


class _Inspected:
    def __init__(self, number, ports=None):
        self.inspect = {"Config": {"Labels": {"com.docker.compose.container-number": str(number)}},
                        "HostConfig": {"PortBindings": ports or {}}, "NetworkSettings": {"Networks": {}}}

    def label(self):
        return "container web-%s" % self.inspect["Config"]["Labels"]["com.docker.compose.container-number"]


def test_plan_compose_scale():
    from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
    from ansible_collections.opskit.runbook.plugins.module_utils._rollout import scale as S
    units = [_Inspected(1), _Inspected(4)]
    assert S.plan_compose(units, 4) == ([5, 6], [])
    assert S.plan_compose(units, 1) == ([], units[1:]) and S.plan_compose(units, 2) == ([], [])
    ported = [_Inspected(1, {"8080/tcp": [{"HostIp": "", "HostPort": "8080"}]})]
    with pytest.raises(ConfigError, match="container web-1 cannot run more than once: it publishes host port 8080"):
        S.plan_compose(ported, 2)
    with pytest.raises(ConfigError, match="replicas must be >= 0"):
        S.plan_compose(units, -1)
