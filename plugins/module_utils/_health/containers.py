# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Container resources and logs for the health engine (Docker Engine API, docker.APIClient).

    target_containers(client, check)      the container, or every container of a Compose service
    measure_resources(client, cid, info, check, obs)   memory % of the limit, CPU % over a window
    merge_containers(obs, parts)          one Observation from several containers (worst values)
    probe_logs(check, obs, timeout, ctx)  matching lines within ``since`` or the last ``tail`` lines (of
                                          containers, or of a Deployment's pods through pods.pod_logs)

Memory is counted as ``docker stats`` counts it: usage minus inactive file cache (cgroup v1
``total_inactive_file``, v2 ``inactive_file``), against the container's limit (the host memory
when it has none, said in details.memory_limit). CPU is the container's share of all CPUs
between two one-shot stats readings at least ``cpu_window`` seconds apart (the daemon samples once a second, so at least about one second),
times the online CPUs (100 % is one busy core), as ``docker stats`` reports it.
"""

from __future__ import annotations

import math
import time


from .._docker import DOCKER_OPTION_NAMES, docker_client, docker_error, docker_errors
from .._timeutil import Duration, utcnow
from .probe import ProbeFailed
from .ranges import CRITICAL, format_number
from .pods import pod_logs
from .textmatch import count_matches


# --------------------------------------------------------------------------- which containers

def docker_for(check, timeout, ctx):
    """The run's Docker client for the check's connection options (built once per connection)."""
    params = {k: check.get(k) for k in DOCKER_OPTION_NAMES}
    params["docker_timeout"] = params["docker_timeout"] or max(1, int(math.ceil(timeout)))
    return ctx.client("docker", tuple(sorted(params.items())), lambda: docker_client(params))


def target_containers(client, check):
    """[(id or name, shown name)]: the check's container, or the containers of its Compose service."""
    if check.get("container"):
        return [(check["container"], check["container"])]
    labels = ["com.docker.compose.service=%s" % check["compose_service"]]
    if check.get("compose_project"):
        labels.append("com.docker.compose.project=%s" % check["compose_project"])
    try:
        found = client.containers(all=True, filters={"label": labels})
    except docker_errors() as exc:
        raise ProbeFailed(CRITICAL, docker_error(exc, "compose service %s" % check["compose_service"]).msg) from exc
    if not found:
        raise ProbeFailed(CRITICAL, "no container of compose service %s%s" % (
            check["compose_service"], " in project %s" % check["compose_project"] if check.get("compose_project") else ""))
    return sorted((c["Id"], ((c.get("Names") or ["/" + c["Id"][:12]])[0]).lstrip("/")) for c in found)


def merge_containers(obs, parts):
    """Fold per-container observations into ``obs``: every problem and note, the worst value of
    each measure (the lowest ``running``, the highest of the others)."""
    for name, part in parts:
        obs.problems.extend(part.problems)
        obs.notes.extend(part.notes)
        for measure, value in part.measures.items():
            old = obs.measures.get(measure)
            if old is None or (value < old if measure == "running" else value > old):
                obs.measures[measure] = value
    obs.details["containers"] = [dict(part.details, name=name) for name, part in parts]
    obs.measure("containers", len(parts))


# --------------------------------------------------------------------------- resources

def _stats(client, cid):
    try:
        return client.stats(cid, stream=False, one_shot=True)
    except TypeError:  # an SDK without one_shot: the daemon waits for a second sample (about 1 s)
        return client.stats(cid, stream=False)


def _memory(stats):
    memory = stats.get("memory_stats") or {}
    usage, limit = memory.get("usage"), memory.get("limit")
    if usage is None or not limit:
        return None, None
    inner = memory.get("stats") or {}
    cache = inner.get("total_inactive_file", inner.get("inactive_file", 0)) or 0
    return max(0, usage - cache), limit


def _cpu_times(stats):
    cpu = stats.get("cpu_stats") or {}
    online = cpu.get("online_cpus") or len((cpu.get("cpu_usage") or {}).get("percpu_usage") or ()) or 1
    return (cpu.get("cpu_usage") or {}).get("total_usage"), cpu.get("system_cpu_usage"), online


def measure_resources(client, cid, info, check, obs):
    """memory_pct, memory_bytes, memory_limit_bytes and cpu_pct of a running container."""
    try:
        first = _stats(client, cid)
        mark, window, second = time.perf_counter(), check.get("cpu_window") or 0.0, None
        if window > 0:
            # the daemon samples every second: a reading waits for the next sample, so the
            # window is at least that second; longer windows sleep the rest
            time.sleep(max(0.0, window - 1.0))
            second = _stats(client, cid)
            window = time.perf_counter() - mark
    except docker_errors() as exc:
        raise ProbeFailed(CRITICAL, docker_error(exc, "stats of container %s" % cid).msg) from exc
    used, limit = _memory(second or first)
    limited = bool((info.get("HostConfig") or {}).get("Memory"))
    if used is not None:
        obs.measure("memory_bytes", used)
        obs.measure("memory_limit_bytes", limit)
        obs.measure("memory_pct", 100.0 * used / limit, 2)
        obs.details["memory_limit"] = "container" if limited else "host"
    if second is not None:
        cpu1, sys1 = _cpu_times(first)[:2]
        cpu2, sys2, online = _cpu_times(second)
        if None not in (cpu1, sys1, cpu2, sys2) and sys2 > sys1:
            obs.measure("cpu_pct", 100.0 * (cpu2 - cpu1) / (sys2 - sys1) * online, 2)
    shown = []
    if used is not None:
        pct, mib = format_number(round(obs.measures["memory_pct"], 1)), format_number(round(used / 1048576.0, 1))
        shown.append("memory %s%% of %s (%s MiB)" % (pct, "its limit" if limited else "the host", mib))
    if "cpu_pct" in obs.measures:
        shown.append("CPU %s%% over %ss" % (format_number(round(obs.measures["cpu_pct"], 1)), format_number(round(window, 1))))
    if shown:
        obs.note(", ".join(shown))


# --------------------------------------------------------------------------- logs

def _since(check):
    if check.get("since") in (None, ""):
        return None
    moment = Duration.parse(check["since"], "since").before(utcnow())
    return int(moment.timestamp())


def _read_logs(client, cid, check):
    tail = check.get("tail")
    try:
        data = client.logs(cid, stdout=True, stderr=True, timestamps=False, since=_since(check),
                           tail=tail if tail else "all")
    except docker_errors() as exc:
        raise ProbeFailed(CRITICAL, docker_error(exc, "logs of container %s" % cid).msg) from exc
    return data.decode("utf-8", "replace").splitlines()


def probe_logs(check, obs, timeout, ctx):
    """The lines of the check's container, Compose service or Kubernetes pods (pods.pod_logs)."""
    patterns, masks = check["_patterns"]
    if check.get("deployment") or check.get("selector"):
        parts = pod_logs(check, obs, timeout, ctx)
    else:
        client = docker_for(check, timeout, ctx)
        parts = [(name, _read_logs(client, cid, check)) for cid, name in target_containers(client, check)]
    total = sum(len(lines) for _name, lines in parts)
    matches, per, excerpt = count_matches([line for _name, lines in parts for line in lines], patterns, masks, check["excerpt"])
    obs.measure("matches", matches)
    obs.measure("lines", total)
    obs.measure("containers", len(parts))
    obs.details.update({"excerpt": excerpt, "containers": [name for name, _lines in parts],
                        "matches_by_pattern": {p.pattern: n for p, n in zip(patterns, per)}})
    window = "since %s" % check["since"] if check.get("since") else ("last %d lines" % check["tail"] if check.get("tail") else "all lines")
    obs.note("%d of %d lines (%s) match %s%s" % (
        matches, total, window, "|".join(p.pattern for p in patterns), "; last: %s" % excerpt[-1] if excerpt else ""))
