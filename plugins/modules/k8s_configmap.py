#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: k8s_configmap
short_description: Set keys of a Kubernetes ConfigMap, or put its whole data back
version_added: 0.2.0
description:
  - Merges O(data) into the data of an existing ConfigMap (the other keys are kept), or with
    O(replace=true) makes O(data) its whole data (keys not in O(data) are removed), in one merge
    patch of the core/v1 API.
  - Returns the data as it was before (RV(previous)), so a playbook can put it back exactly with
    O(replace=true) when the change fails its gate (roles/service C(tasks_from=config_update)).
  - Pods read a ConfigMap when they start; restart the Deployment that uses it
    (M(opskit.runbook.rollout) O(opskit.runbook.rollout#module:state=restarted)) for them to pick it up.
  - Does not create a ConfigMap, and does not write Secrets.
author:
  - opskit.runbook developers (@opskit-runbook)
attributes:
  check_mode:
    support: full
    description: Reads the ConfigMap and returns what would change, without writing it.
  diff_mode:
    support: full
    description: The data before and after.
extends_documentation_fragment:
  - opskit.runbook.kubernetes
options:
  name:
    description: Name of the ConfigMap.
    type: str
    required: true
  namespace:
    description: Its namespace.
    type: str
    default: default
  data:
    description: Keys to set, each to a string value.
    type: dict
    required: true
  replace:
    description: Make O(data) the whole data of the ConfigMap (the keys not in it are removed).
    type: bool
    default: false
"""

EXAMPLES = r"""
- name: The new log level
  opskit.runbook.k8s_configmap:
    namespace: shop
    name: checkout-config
    data:
      LOG_LEVEL: debug
  register: config

- name: Put the old data back
  opskit.runbook.k8s_configmap:
    namespace: shop
    name: checkout-config
    data: "{{ config.previous }}"
    replace: true
"""

RETURN = r"""
previous:
  description: The data of the ConfigMap before this task.
  returned: always
  type: dict
  sample: {LOG_LEVEL: info, MODE: prod}
data:
  description: Its data after this task (in check mode, what it would be).
  returned: always
  type: dict
  sample: {LOG_LEVEL: debug, MODE: prod}
resource_version:
  description: The ConfigMap's metadata.resourceVersion after this task.
  returned: always
  type: str
  sample: "4711"
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._kube import kube_argspec, kube_client
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._rollout.k8s_service import configmap_update


def main():
    module = AnsibleModule(
        argument_spec=kube_argspec(
            name=dict(type="str", required=True),
            namespace=dict(type="str", default="default"),
            data=dict(type="dict", required=True),
            replace=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )

    def action():
        p = module.params
        api = kube_client(p["kubeconfig"], p["context"], p["in_cluster"])
        result = configmap_update(api, p["namespace"], p["name"], p["data"], p["replace"], module.check_mode,
                                  p["request_timeout"])
        if not module._diff:
            result.pop("diff")
        return result

    run_module(module, action)


if __name__ == "__main__":
    main()
