# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``pod`` probe: the pods of a Deployment or of a label selector (Kubernetes core/v1 API).

    probe_pods(check, obs, timeout, ctx)   list the pods (and their metrics-server usage), judge
    pod_logs(check, obs, timeout, ctx)     [(pod/container, lines)] for the ``logs`` probe (containers.py)
    judge_pods(pods, usage, obs)           plain judgement of pod dicts in API form
    parse_quantity(text)                   a Kubernetes quantity ("128Mi", "1G", "250m") as a number

Measures: pods, ready_pods, ready_pct, restarts (all containers), max_restarts (one container),
crashloop (containers waiting in CrashLoopBackOff), oom_killed (containers whose current or last
termination was OOMKilled), memory_pct (the highest pod's usage against the sum of its containers'
memory limits; only where metrics-server answers and every container has a limit).
No pod, or no pod ready, is CRITICAL; a container in CrashLoopBackOff is CRITICAL; a pod not ready
is WARNING; an OOM kill is WARNING (the restarts and thresholds tell more).
"""

from __future__ import annotations

import json
import math
import re

from .._kube import KUBERNETES, api_exception, kube_client, unreachable_errors
from .._timeutil import Duration, utcnow
from .probe import ProbeFailed, one_line
from .ranges import CRITICAL, UNKNOWN, WARNING, format_number

_SUFFIX = {"Ki": 2 ** 10, "Mi": 2 ** 20, "Gi": 2 ** 30, "Ti": 2 ** 40, "Pi": 2 ** 50, "Ei": 2 ** 60,
           "n": 1e-9, "u": 1e-6, "m": 1e-3, "": 1, "k": 1e3, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18}
_QUANTITY_RE = re.compile(r"^([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)(Ki|Mi|Gi|Ti|Pi|Ei|n|u|m|k|K|M|G|T|P|E)?$")
MAX_SHOWN = 5


def parse_quantity(text):
    """A Kubernetes resource quantity as a float (None when it does not parse)."""
    match = _QUANTITY_RE.match(str(text or "").strip())
    if not match:
        return None
    return float(match.group(1)) * _SUFFIX[match.group(2) or ""]


def _api(check, ctx):
    key = (check.get("kubeconfig"), check.get("context"), bool(check.get("in_cluster")))
    return ctx.client("k8s", key, lambda: kube_client(check.get("kubeconfig"), check.get("context"),
                                                      bool(check.get("in_cluster"))))


def _request(what, func, *args, tolerate=(), **kwargs):
    """The body (bytes) of one API call, None for an answer whose status is in ``tolerate``; its
    errors as ProbeFailed naming ``what``."""
    try:
        return func(*args, _preload_content=False, **kwargs).data
    except api_exception() as exc:
        if exc.status in tolerate:
            return None
        if exc.status == 404:
            raise ProbeFailed(CRITICAL, "%s not found" % what) from None
        state = UNKNOWN if exc.status in (401, 403) else CRITICAL
        raise ProbeFailed(state, "Kubernetes API answered %s %s for %s" % (exc.status, exc.reason or "", what)) from None
    except unreachable_errors() as exc:
        text = one_line(getattr(exc, "reason", None) or exc, 200)
        raise ProbeFailed(CRITICAL, "cannot reach the Kubernetes API for %s: %s" % (what, text)) from None


def _call(what, func, *args, **kwargs):
    """JSON of one API call; its errors as ProbeFailed naming ``what``."""
    body = _request(what, func, *args, **kwargs)
    try:
        return json.loads(body)
    except ValueError:
        raise ProbeFailed(UNKNOWN, "Kubernetes API answer for %s is not JSON" % what) from None


def _selector(check, api, kubernetes, timeout):
    if check.get("selector"):
        return check["selector"]
    ns, name = check["namespace"], check["deployment"]
    deployment = _call("deployment %s/%s" % (ns, name), kubernetes.client.AppsV1Api(api).read_namespaced_deployment,
                       name, ns, _request_timeout=timeout)
    labels = (((deployment.get("spec") or {}).get("selector") or {}).get("matchLabels") or {})
    if not labels:
        raise ProbeFailed(UNKNOWN, "deployment %s/%s has no matchLabels selector" % (ns, name))
    return ",".join("%s=%s" % item for item in sorted(labels.items()))


def _usage(api, kubernetes, ns, selector, timeout):
    """{pod name: memory bytes} from metrics-server, or None when it does not answer."""
    try:
        listing = _call("pod metrics", kubernetes.client.CustomObjectsApi(api).list_namespaced_custom_object,
                        "metrics.k8s.io", "v1beta1", ns, "pods", label_selector=selector, _request_timeout=timeout)
    except ProbeFailed:
        return None
    usage = {}
    for item in listing.get("items") or ():
        values = [parse_quantity((c.get("usage") or {}).get("memory")) for c in item.get("containers") or ()]
        if values and None not in values:
            usage[(item.get("metadata") or {}).get("name")] = sum(values)
    return usage


def probe_pods(check, obs, timeout, ctx):
    kubernetes = KUBERNETES.load()
    api = _api(check, ctx)
    ns = check["namespace"]
    selector = _selector(check, api, kubernetes, timeout)
    pods = _call("pods %s in %s" % (selector, ns), kubernetes.client.CoreV1Api(api).list_namespaced_pod,
                 ns, label_selector=selector, _request_timeout=timeout)
    obs.details["selector"] = selector
    usage = _usage(api, kubernetes, ns, selector, timeout)
    judge_pods(pods.get("items") or [], usage, obs)


def _log_options(check):
    """``read_namespaced_pod_log`` arguments of the check's window: since_seconds, tail_lines."""
    options = {}
    if check.get("since") not in (None, ""):
        options["since_seconds"] = max(1, int(math.ceil(Duration.parse(check["since"], "since").seconds(utcnow()))))
    if check.get("tail"):
        options["tail_lines"] = check["tail"]
    return options


def pod_logs(check, obs, timeout, ctx):
    """[("pod/container", lines)]: the logs of every container (or of O(container)) of the pods of
    the check's Deployment or selector, as ``kubectl logs`` reads them. A container without logs
    yet (the API answers 400 while it waits to start) is named in a note and counts no line."""
    kubernetes = KUBERNETES.load()
    api = _api(check, ctx)
    ns = check["namespace"]
    selector = obs.details["selector"] = _selector(check, api, kubernetes, timeout)
    core = kubernetes.client.CoreV1Api(api)
    pods = _call("pods %s in %s" % (selector, ns), core.list_namespaced_pod, ns, label_selector=selector,
                 _request_timeout=timeout).get("items") or []
    if not pods:
        raise ProbeFailed(CRITICAL, "no pod matches %s in %s" % (selector, ns))
    options, parts, waiting = _log_options(check), [], []
    for pod in sorted(pods, key=lambda p: p["metadata"]["name"]):
        name = pod["metadata"]["name"]
        names = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or ()]
        if check.get("container"):
            if check["container"] not in names:
                raise ProbeFailed(CRITICAL, "pod %s has no container %s (it has %s)" % (name, check["container"], ", ".join(names)))
            names = [check["container"]]
        for container in names:
            shown = "%s/%s" % (name, container)
            body = _request("logs of %s in %s" % (shown, ns), core.read_namespaced_pod_log, name, ns, container=container,
                            tolerate=(400,), _request_timeout=timeout, **options)
            if body is None:
                waiting.append(shown)
            parts.append((shown, (body or b"").decode("utf-8", "replace").splitlines()))
    if waiting:
        obs.note("no logs yet (waiting to start): %s" % ", ".join(waiting[:MAX_SHOWN]))
    return parts


def _limit(pod):
    limits = [parse_quantity(((c.get("resources") or {}).get("limits") or {}).get("memory"))
              for c in (pod.get("spec") or {}).get("containers") or ()]
    return sum(limits) if limits and None not in limits else None


def _container_facts(pod):
    """(restarts, max restarts, [crashlooping containers], [OOM-killed containers]) of a pod."""
    total, most, loops, ooms = 0, 0, [], []
    for status in (pod.get("status") or {}).get("containerStatuses") or ():
        restarts = status.get("restartCount") or 0
        total, most = total + restarts, max(most, restarts)
        state, last = status.get("state") or {}, status.get("lastState") or {}
        if (state.get("waiting") or {}).get("reason") == "CrashLoopBackOff":
            loops.append(status.get("name"))
        if "OOMKilled" in ((state.get("terminated") or {}).get("reason"), (last.get("terminated") or {}).get("reason")):
            ooms.append(status.get("name"))
    return total, most, loops, ooms


def _ready(pod):
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in (pod.get("status") or {}).get("conditions") or ())


def judge_pods(pods, usage, obs):
    """Measures and problems of ``pods`` (core/v1 Pod dicts) and ``usage`` ({name: memory bytes} or None)."""
    obs.measure("pods", len(pods))
    if not pods:
        obs.problem(CRITICAL, "no pod matches %s" % obs.details.get("selector"))
        return
    ready = [p for p in pods if _ready(p)]
    totals = [(p, _container_facts(p)) for p in pods]
    loops = ["%s/%s" % (p["metadata"]["name"], c) for p, facts in totals for c in facts[2]]
    ooms = ["%s/%s" % (p["metadata"]["name"], c) for p, facts in totals for c in facts[3]]
    obs.measure("ready_pods", len(ready))
    obs.measure("ready_pct", 100.0 * len(ready) / len(pods), 2)
    obs.measure("restarts", sum(facts[0] for _p, facts in totals))
    obs.measure("max_restarts", max(facts[1] for _p, facts in totals))
    obs.measure("crashloop", len(loops))
    obs.measure("oom_killed", len(ooms))
    _memory(pods, usage, obs)
    if not ready:
        obs.problem(CRITICAL, "no pod ready (%d pods)" % len(pods))
    elif len(ready) < len(pods):
        names = [p["metadata"]["name"] for p in pods if p not in ready]
        obs.problem(WARNING, "%d of %d pods not ready: %s" % (len(names), len(pods), ", ".join(names[:MAX_SHOWN])))
    if loops:
        obs.problem(CRITICAL, "CrashLoopBackOff: %s" % ", ".join(loops[:MAX_SHOWN]))
    if ooms:
        obs.problem(WARNING, "OOMKilled: %s" % ", ".join(ooms[:MAX_SHOWN]))
    obs.note("%d of %d pods ready, %d restarts%s" % (len(ready), len(pods), obs.measures["restarts"], (
        ", memory up to %s%% of the limit" % format_number(round(obs.measures["memory_pct"], 1))) if "memory_pct" in obs.measures else ""))


def _memory(pods, usage, obs):
    if usage is None:
        obs.details["metrics"] = "metrics-server did not answer"
        return
    shares = []
    for pod in pods:
        limit, used = _limit(pod), usage.get(pod["metadata"]["name"])
        if limit and used is not None:
            shares.append(100.0 * used / limit)
    if shares:
        obs.measure("memory_pct", max(shares), 2)
    obs.details["metrics"] = "%d of %d pods with usage and limits" % (len(shares), len(pods))
