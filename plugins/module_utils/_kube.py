# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kubernetes API connection: the one client factory (health_check's k8s_deployment probe and
rollout's Kubernetes driver both use it), the errors an API call can raise, and the connection
options (``KUBE_ARGSPEC``, doc fragment opskit.runbook.kubernetes) of the modules that only talk
to Kubernetes (k8s_configmap, k8s_triage).

``kube_client(kubeconfig, context, in_cluster)`` supports what the two former factories did,
together:
- a kubeconfig file (default: $KUBECONFIG, then ~/.kube/config) and one of its contexts (default:
  the current context);
- in-cluster configuration (the pod's service account), loaded into a Configuration of its own,
  not into the process-wide default, so concurrent probes with different connections do not
  share it; ``kubeconfig`` and ``context`` are then ignored;
- the kubeconfig is only read: refreshed credentials are never written back to it
  (``persist_config=False``).
A configuration that cannot be loaded is a ConfigError naming where it was looked for.

The kubernetes package takes seconds to import: it is imported on first use (``KUBERNETES``).
"""

from __future__ import annotations

import copy

from ._errors import ConfigError
from ._imports import Library

KUBERNETES = Library("kubernetes", "kubernetes", "kubernetes.client", "kubernetes.config")
_URLLIB3 = Library("urllib3", "urllib3", "urllib3.exceptions")  # the HTTP client of kubernetes

# The connection options of the modules that only talk to Kubernetes (doc fragment opskit.runbook.kubernetes).
KUBE_ARGSPEC = dict(
    kubeconfig=dict(type="path"),
    context=dict(type="str"),
    in_cluster=dict(type="bool", default=False),
    request_timeout=dict(type="float", default=30),
)


def kube_argspec(**extra):
    spec = copy.deepcopy(KUBE_ARGSPEC)
    spec.update(extra)
    return spec


def kube_client(kubeconfig=None, context=None, in_cluster=False):
    """A kubernetes ApiClient for a kubeconfig file and context, or for the in-cluster service account."""
    kubernetes = KUBERNETES.load()
    try:
        if in_cluster:
            config = kubernetes.client.Configuration()
            kubernetes.config.load_incluster_config(client_configuration=config)
            return kubernetes.client.ApiClient(config)
        return kubernetes.config.new_client_from_config(config_file=kubeconfig, context=context,
                                                        persist_config=False)
    except (kubernetes.config.ConfigException, OSError, ValueError, TypeError) as exc:
        where = " (in-cluster)" if in_cluster else (" from %s" % kubeconfig if kubeconfig else "")
        raise ConfigError("cannot load the kubernetes configuration%s: %s"
                          % (where, " ".join(str(exc).split())[:300])) from exc


def api_exception():
    """The class of the errors the API answers with (kubernetes.client.ApiException)."""
    return KUBERNETES.load().client.ApiException


def unreachable_errors():
    """The errors of an API call that never got an answer: urllib3's (connection refused, timeouts,
    protocol and TLS errors all derive from urllib3.exceptions.HTTPError) and OSError."""
    return (_URLLIB3.load().exceptions.HTTPError, OSError)
