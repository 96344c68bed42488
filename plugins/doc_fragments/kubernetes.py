# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Kubernetes API connection options of the modules that only talk to Kubernetes
    # (k8s_configmap, k8s_triage); the spec is _kube.KUBE_ARGSPEC.
    DOCUMENTATION = r"""
options:
  kubeconfig:
    description: Path to the kubeconfig file; default E(KUBECONFIG), then C(~/.kube/config).
    type: path
  context:
    description: The kubeconfig context to use; default the current context.
    type: str
  in_cluster:
    description: Use the service account of the pod the module runs in (O(kubeconfig) and O(context) are then ignored).
    type: bool
    default: false
  request_timeout:
    description: Seconds an API call may take.
    type: float
    default: 30
requirements:
  - kubernetes (the Python client)
"""
