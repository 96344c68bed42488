# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The plain logic of _rollout/k8s_service.py: the ConfigMap patch and the pod summary."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import k8s_service as S


class FakeCore:
    """read/patch of one ConfigMap, as the kubernetes client answers with _preload_content=False."""

    def __init__(self, data):
        self.item = {"metadata": {"name": "cfg", "namespace": "ns", "resourceVersion": "7"}, "data": dict(data)}
        self.patches = []

    def read_namespaced_config_map(self, name, namespace, **_kw):
        return SimpleNamespace(data=json.dumps(self.item).encode())

    def patch_namespaced_config_map(self, name, namespace, body, **kw):
        self.patches.append((body, kw.get("_content_type")))
        data = {k: v for k, v in dict(self.item["data"], **body["data"]).items() if v is not None}
        self.item = dict(copy.deepcopy(self.item), data=data)
        self.item["metadata"]["resourceVersion"] = "8"
        return SimpleNamespace(data=json.dumps(self.item).encode())


@pytest.fixture
def core(monkeypatch):
    holder = {}

    def make(data):
        holder["core"] = FakeCore(data)
        return holder["core"]
    fake = SimpleNamespace(client=SimpleNamespace(CoreV1Api=lambda _api: holder["core"]))
    monkeypatch.setattr(S, "KUBERNETES", SimpleNamespace(load=lambda: fake))
    return make


@pytest.mark.parametrize("before, data, replace, check, after, patch", [
    ({"A": "1", "B": "2"}, {"B": "3"}, False, False, {"A": "1", "B": "3"}, {"A": "1", "B": "3"}),
    ({"A": "1", "B": "2"}, {"C": "x"}, False, False, {"A": "1", "B": "2", "C": "x"}, {"A": "1", "B": "2", "C": "x"}),
    ({"A": "1", "B": "2"}, {"A": "1"}, True, False, {"A": "1"}, {"A": "1", "B": None}),      # replace removes B
    ({"A": "1"}, {"A": "1"}, False, False, {"A": "1"}, None),                                # nothing to change
    ({"A": "1"}, {"A": "2"}, False, True, {"A": "2"}, None),                                 # check mode: no write
])
def test_configmap_update(core, before, data, replace, check, after, patch):
    fake = core(before)
    result = S.configmap_update(object(), "ns", "cfg", data, replace=replace, check_mode=check)
    assert result["previous"] == before and result["data"] == after and result["changed"] == (after != before)
    assert result["diff"] == {"before": before, "after": after}
    if patch is None:
        assert fake.patches == [] and result["resource_version"] == "7"
    else:
        assert fake.patches == [({"data": patch}, "application/merge-patch+json")] and result["resource_version"] == "8"
        assert fake.item["data"] == after


def test_configmap_values_must_be_strings(core):
    core({})
    with pytest.raises(ConfigError, match="the values of N must be strings"):
        S.configmap_update(object(), "ns", "cfg", {"N": 3, "S": "s"})


def test_pod_summary_of_a_crashing_pod():
    pod = {"metadata": {"name": "p-1"}, "status": {"phase": "Running", "containerStatuses": [
        {"name": "app", "ready": False, "restartCount": 4,
         "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
         "lastState": {"terminated": {"reason": "Error", "exitCode": 3}}},
        {"name": "sidecar", "ready": True, "restartCount": 0, "state": {"running": {"startedAt": "x"}}}]}}
    entry = S._pod(pod)  # pylint: disable=protected-access
    assert entry["ready"] is False and entry["restarts"] == 4 and entry["phase"] == "Running"
    app, sidecar = entry["containers"]
    assert app == {"name": "app", "ready": False, "restarts": 4, "state": "waiting", "reason": "CrashLoopBackOff",
                   "message": "back-off", "last_terminated": {"reason": "Error", "exit_code": 3}}
    assert sidecar["state"] == "running" and sidecar["last_terminated"] is None
    assert S._pod({"metadata": {"name": "p-2"}, "status": {"phase": "Pending"}})["ready"] is False  # pylint: disable=protected-access
