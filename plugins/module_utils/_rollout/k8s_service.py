# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Kubernetes side of the service operations (roles/service): a ConfigMap changed and put
back (k8s_configmap), and what the first steps of an incident ask about the pods of a
Deployment (k8s_triage). Plain functions over a kubernetes ApiClient (from _kube.kube_client).

    configmap_update(api, namespace, name, data, replace, check_mode, timeout)
        data merged into the ConfigMap's (replace: the ConfigMap's data becomes exactly data);
        returns changed, previous (the data before), data (after), resource_version.
    pods_triage(api, namespace, deployment, selector, log_lines, events, timeout)
        every pod of the Deployment (or label selector): phase, readiness, restarts, each
        container's state and last termination, the last log lines of the pods that are not
        ready, and the namespace's recent events about them (newest last).
"""

from __future__ import annotations

import json

from .._errors import ConfigError, ServiceError
from .._kube import KUBERNETES, api_exception, unreachable_errors
from .k8s import api_error

MERGE = "application/merge-patch+json"


def _call(func, what, timeout, *args, **kwargs):
    try:
        resp = func(*args, _preload_content=False, _request_timeout=timeout, **kwargs)
    except (api_exception(),) + unreachable_errors() as exc:
        raise api_error(exc, what) from exc
    return resp.data


def _json(func, what, timeout, *args, **kwargs):
    data = _call(func, what, timeout, *args, **kwargs)
    return json.loads(data) if data else {}


def configmap_update(api, namespace, name, data, replace=False, check_mode=False, timeout=30):
    """Merge ``data`` into (or, with ``replace``, make it) the data of ConfigMap namespace/name."""
    bad = [k for k, v in data.items() if not isinstance(v, str)]
    if bad:
        raise ConfigError("configmap %s/%s: the values of %s must be strings" % (namespace, name, ", ".join(sorted(bad))))
    core = KUBERNETES.load().client.CoreV1Api(api)
    what = "configmap %s/%s" % (namespace, name)
    item = _json(core.read_namespaced_config_map, what, timeout, name, namespace)
    before = dict(item.get("data") or {})
    after = dict(data) if replace else dict(before, **data)
    result = {"changed": after != before, "previous": before, "data": after,
              "resource_version": (item.get("metadata") or {}).get("resourceVersion"),
              "diff": {"before": before, "after": after}}
    if result["changed"] and not check_mode:
        patch = {"data": dict({k: None for k in before if k not in after}, **after)}
        item = _json(core.patch_namespaced_config_map, what, timeout, name, namespace, patch, _content_type=MERGE)
        result["resource_version"] = (item.get("metadata") or {}).get("resourceVersion")
    return result


def _container(cs):
    state = cs.get("state") or {}
    kind = next(iter(state), None)
    detail = state.get(kind) or {}
    last = (cs.get("lastState") or {}).get("terminated")
    return {"name": cs.get("name"), "ready": bool(cs.get("ready")), "restarts": int(cs.get("restartCount") or 0),
            "state": kind, "reason": detail.get("reason"), "message": detail.get("message"),
            "last_terminated": {"reason": last.get("reason"), "exit_code": last.get("exitCode")} if last else None}


def _pod(pod):
    status = pod.get("status") or {}
    containers = [_container(cs) for cs in status.get("containerStatuses") or []]
    return {"name": (pod.get("metadata") or {}).get("name"), "phase": status.get("phase"),
            "ready": bool(containers) and all(c["ready"] for c in containers),
            "restarts": sum(c["restarts"] for c in containers), "containers": containers, "logs": []}


def _selector(api, namespace, deployment, selector, timeout):
    if selector:
        return selector
    if not deployment:
        raise ConfigError("k8s_triage needs deployment or selector")
    apps = KUBERNETES.load().client.AppsV1Api(api)
    dep = _json(apps.read_namespaced_deployment, "deployment %s/%s" % (namespace, deployment), timeout,
                deployment, namespace)
    labels = ((dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
    return ",".join("%s=%s" % kv for kv in sorted(labels.items()))


def _logs(core, namespace, entry, lines, timeout):
    """The last ``lines`` log lines of each container of a pod that is not ready (the previous
    instance's of a container that terminated and waits to restart); one line per failed read."""
    out = []
    for c in entry["containers"]:
        if c["ready"]:
            continue
        previous = bool(c["last_terminated"]) and c["state"] != "running"
        try:
            text = _call(core.read_namespaced_pod_log, "logs of %s" % entry["name"], timeout, entry["name"], namespace,
                         container=c["name"], tail_lines=lines, previous=previous).decode("utf-8", "replace")
        except ServiceError as exc:  # logs are a courtesy of the report: the read error is shown instead
            out.append("%s: (no logs: %s)" % (c["name"], exc.msg))
            continue
        out.extend("%s: %s" % (c["name"], line) for line in text.splitlines()[-lines:])
    return out


def _event_time(event):
    return event.get("lastTimestamp") or event.get("eventTime") or (event.get("metadata") or {}).get("creationTimestamp") or ""


def _events(core, namespace, names, deployment, limit, timeout):
    items = _json(core.list_namespaced_event, "events in %s" % namespace, timeout, namespace).get("items") or []
    prefix = (deployment + "-") if deployment else None
    about = [e for e in items if (e.get("involvedObject") or {}).get("name") in names
             or (deployment and (e.get("involvedObject") or {}).get("name", "").startswith(prefix))
             or (e.get("involvedObject") or {}).get("name") == deployment]
    about.sort(key=_event_time)
    return [{"type": e.get("type"), "reason": e.get("reason"), "message": e.get("message"), "count": e.get("count"),
             "object": "%s/%s" % ((e.get("involvedObject") or {}).get("kind"), (e.get("involvedObject") or {}).get("name")),
             "at": _event_time(e) or None} for e in about[-limit:]] if limit else []


def pods_triage(api, namespace, deployment=None, selector=None, log_lines=50, events=20, timeout=30):
    """What the pods of a Deployment (or label selector) do now; read-only."""
    core = KUBERNETES.load().client.CoreV1Api(api)
    selector = _selector(api, namespace, deployment, selector, timeout)
    listing = _json(core.list_namespaced_pod, "pods %s in %s" % (selector, namespace), timeout, namespace,
                    label_selector=selector)
    pods = [_pod(p) for p in listing.get("items") or []]
    for entry in pods:
        if not entry["ready"] and log_lines:
            entry["logs"] = _logs(core, namespace, entry, log_lines, timeout)
    ready = sum(1 for p in pods if p["ready"])
    return {"namespace": namespace, "deployment": deployment, "selector": selector, "pods": pods,
            "events": _events(core, namespace, {p["name"] for p in pods}, deployment, events, timeout),
            "ready": ready, "restarts": sum(p["restarts"] for p in pods),
            "summary": "%d of %d pods ready, %d restarts" % (ready, len(pods), sum(p["restarts"] for p in pods))}


__all__ = ["configmap_update", "pods_triage"]
