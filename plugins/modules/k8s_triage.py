#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_triage
short_description: What the pods of a Deployment do now, for the first steps of an incident
version_added: 0.2.0
description:
  - Lists the pods of a Deployment (by its selector) or of a label selector, with each pod's
    phase, readiness, restarts, and each container's state, reason and last termination.
  - For each pod that is not ready, the last O(log_lines) log lines of its containers that are not
    ready (the previous instance's, for a container that terminated and waits to restart).
  - The last O(events) events of the namespace about those pods, their ReplicaSets and the
    Deployment, oldest first.
  - Read-only, and it reports what it finds rather than failing on it (roles/service
    C(tasks_from=triage) runs it while the service is failing); an API that cannot be reached
    fails the task.
author:
  - opskit.runbook developers (@opskit-runbook)
attributes:
  check_mode:
    support: full
    description: Changes nothing in any mode.
  diff_mode:
    support: none
    description: Changes nothing, so there is no diff.
extends_documentation_fragment:
  - opskit.runbook.kubernetes
options:
  namespace:
    description: The namespace.
    type: str
    default: default
  deployment:
    description: The Deployment whose pods (by its C(spec.selector.matchLabels)) are reported.
    type: str
  selector:
    description: A label selector (C(app=checkout,tier=web)) instead of O(deployment).
    type: str
  log_lines:
    description: How many of the last log lines of each container that is not ready (V(0) for none).
    type: int
    default: 50
  events:
    description: How many of the newest events (V(0) for none).
    type: int
    default: 20
"""

EXAMPLES = r"""
- name: The pods of the checkout Deployment
  opskit.runbook.k8s_triage:
    namespace: shop
    deployment: checkout
    log_lines: 100
  register: pods
"""

RETURN = r"""
pods:
  description:
    - One entry per pod - name, phase, ready, restarts (all containers), containers (name, ready,
      restarts, state V(running)/V(waiting)/V(terminated), reason, message, last_terminated with
      reason and exit_code), logs (lines prefixed with the container's name; empty for a ready pod).
  returned: always
  type: list
  elements: dict
events:
  description: The newest events about these pods and the Deployment (type, reason, message, count, object, at), oldest first.
  returned: always
  type: list
  elements: dict
selector:
  description: The label selector the pods were listed with.
  returned: always
  type: str
  sample: app=checkout
ready:
  description: How many pods are ready.
  returned: always
  type: int
restarts:
  description: Container restarts of all pods.
  returned: always
  type: int
summary:
  description: One line, C(<ready> of <pods> pods ready, <n> restarts).
  returned: always
  type: str
  sample: 1 of 2 pods ready, 2 restarts
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._kube import kube_argspec, kube_client
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._rollout.k8s_service import pods_triage


def main():
    module = AnsibleModule(
        argument_spec=kube_argspec(
            namespace=dict(type="str", default="default"),
            deployment=dict(type="str"),
            selector=dict(type="str"),
            log_lines=dict(type="int", default=50),
            events=dict(type="int", default=20),
        ),
        required_one_of=[("deployment", "selector")],
        supports_check_mode=True,
    )

    def action():
        p = module.params
        api = kube_client(p["kubeconfig"], p["context"], p["in_cluster"])
        result = pods_triage(api, p["namespace"], p["deployment"], p["selector"], max(0, p["log_lines"]),
                             max(0, p["events"]), p["request_timeout"])
        result["changed"] = False
        return result

    run_module(module, action)


if __name__ == "__main__":
    main()
