# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Service and host probes of the health engine: postgres, docker_container, k8s_deployment,
disk, memory, load; and the kubectl rollout-status judgement ``deployment_status``.

The clients come from the shared factories (_postgres.connection.connect, _docker.docker_client,
_kube.kube_client); each probe turns its SDK's errors into ProbeFailed or an OpsError.
"""

from __future__ import annotations

import json
import math
import os
import time

from .._docker import docker_error, docker_errors
from .._errors import ServiceError
from .._kube import KUBERNETES, api_exception, kube_client, unreachable_errors
from .._postgres.connection import PSYCOPG2, connect, pg_message
from .containers import docker_for, measure_resources, merge_containers, target_containers
from .probe import Observation, ProbeFailed, one_line
from .ranges import CRITICAL, UNKNOWN, WARNING, format_number

ROLLOUT_SUCCESS, ROLLOUT_WAITING, ROLLOUT_FAILED = "success", "waiting", "failed"


def _ms(start):
    return (time.perf_counter() - start) * 1000.0


# --------------------------------------------------------------------------- postgres

_PG_QUERY = """
SELECT current_setting('server_version'),
       current_setting('max_connections')::int,
       (SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'),
       (SELECT count(*) FROM pg_stat_activity
         WHERE backend_type = 'client backend' AND state IS NOT NULL AND state <> 'idle'
           AND pid <> pg_backend_pid() AND now() - query_start > make_interval(secs => %s)),
       pg_is_in_recovery(),
       CASE WHEN NOT pg_is_in_recovery() THEN NULL
            WHEN pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0
            ELSE EXTRACT(epoch FROM now() - pg_last_xact_replay_timestamp()) END
"""


def probe_postgres(check, obs, timeout, ctx=None):
    params = dict(check)
    limit = min(timeout, check.get("connect_timeout") or timeout)
    params["connect_timeout"] = max(2, int(math.ceil(limit)))
    start = time.perf_counter()
    conn = connect(params, dbname=check["database"])  # MissingLibraryError when psycopg2 is absent
    obs.measure("connect_ms", _ms(start))
    psycopg2 = PSYCOPG2.load()  # loaded by connect() already
    try:
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("SET statement_timeout = %s", (max(1, int(timeout * 1000)),))
            start = time.perf_counter()
            cur.execute("SELECT 1")
            cur.fetchone()
            obs.measure("query_ms", _ms(start))
            cur.execute(_PG_QUERY, (float(check["long_query_seconds"]),))
            version, max_conn, used, long_queries, replica, lag = cur.fetchone()
    except psycopg2.Error as exc:
        # pg_message hides the password; the cause is dropped because its text could carry it
        raise ServiceError("PostgreSQL query failed: %s" % pg_message(exc, check.get("password"))) from None
    finally:
        conn.close()
    obs.measure("max_connections", max_conn)
    obs.measure("connections", used)
    obs.measure("connections_pct", 100.0 * used / max_conn if max_conn else None, 2)
    obs.measure("long_queries", long_queries)
    obs.measure("replication_lag_seconds", float(lag) if lag is not None else None)
    obs.details.update({"server_version": version, "role": "replica" if replica else "primary"})
    note = "PostgreSQL %s %s, SELECT 1 in %s ms, %d of %d connections, %d queries over %ss" % (
        version, "replica" if replica else "primary", format_number(round(obs.measures["query_ms"], 2)),
        used, max_conn, long_queries, format_number(check["long_query_seconds"]))
    if replica:
        note += ", replication lag %s" % ("unknown (nothing replayed yet)" if lag is None else "%ss" % format_number(round(float(lag), 3)))
    obs.note(note)


# --------------------------------------------------------------------------- docker_container

def probe_docker(check, obs, timeout, ctx):
    client = docker_for(check, timeout, ctx)
    targets = target_containers(client, check)
    parts = []
    for cid, name in targets:
        part = obs if len(targets) == 1 else Observation()
        try:
            info = client.inspect_container(cid)
        except docker_errors() as exc:  # NotFound, APIError, connection errors
            raise ProbeFailed(CRITICAL, docker_error(exc, "container %s" % name).msg) from exc
        judge_container(info, part)
        if check.get("_resources") and (info.get("State") or {}).get("Running"):
            measure_resources(client, cid, info, check, part)
        parts.append((name, part))
    if len(targets) > 1:
        merge_containers(obs, parts)


def judge_container(info, obs):
    """Map ``docker inspect`` output to problems and measures (monitoring-tool conventions)."""
    state = info.get("State") or {}
    status = state.get("Status") or "unknown"
    health = (state.get("Health") or {}).get("Status")
    obs.measure("running", int(bool(state.get("Running")) and not state.get("Paused")))
    obs.measure("restart_count", info.get("RestartCount") or 0)
    obs.measure("oom_killed", int(bool(state.get("OOMKilled"))))
    name = (info.get("Name") or "").lstrip("/") or info.get("Id", "")[:12]
    obs.details.update({"status": status, "health": health, "image": (info.get("Config") or {}).get("Image"),
                        "started_at": state.get("StartedAt")})
    if status == "restarting":
        obs.problem(WARNING, "container %s is restarting (restart count %s)" % (name, info.get("RestartCount")))
    elif status != "running" or state.get("Paused"):
        obs.measure("exit_code", state.get("ExitCode"))
        obs.problem(CRITICAL, "container %s is %s (exit code %s%s)" % (
            name, "paused" if state.get("Paused") else status, state.get("ExitCode"),
            ", OOMKilled" if state.get("OOMKilled") else ""))
    elif health == "unhealthy":
        log = ((state.get("Health") or {}).get("Log") or [{}])[-1]
        output = " ".join(str(log.get("Output") or "").split())[:120]
        obs.problem(CRITICAL, "container %s is unhealthy (%s failing streak%s)" % (
            name, (state.get("Health") or {}).get("FailingStreak"), ": %s" % output if output else ""))
    elif health == "starting":
        obs.problem(WARNING, "container %s health is starting" % name)
    obs.note("container %s %s%s, %s restarts" % (name, status, ", %s" % health if health else "",
                                                 info.get("RestartCount") or 0))


# --------------------------------------------------------------------------- k8s_deployment

def deployment_status(deployment):
    """kubectl rollout-status judgement of an apps/v1 Deployment (a dict in API form).

    Returns (state, message) with state ROLLOUT_SUCCESS, ROLLOUT_WAITING or ROLLOUT_FAILED;
    the rules are checked in kubectl's order.
    """
    meta = deployment.get("metadata") or {}
    spec = deployment.get("spec") or {}
    status = deployment.get("status") or {}
    name = meta.get("name") or "deployment"
    generation, observed = meta.get("generation") or 0, status.get("observedGeneration") or 0
    if generation > observed:
        return ROLLOUT_WAITING, "waiting for deployment %s spec update to be observed (generation %s, observed %s)" % (
            name, generation, observed)
    for cond in status.get("conditions") or ():
        if cond.get("type") == "Progressing" and cond.get("reason") == "ProgressDeadlineExceeded":
            return ROLLOUT_FAILED, "deployment %s exceeded its progress deadline%s" % (
                name, ": %s" % cond["message"] if cond.get("message") else "")
    desired = spec.get("replicas", 1)
    desired = 1 if desired is None else desired
    updated, replicas = status.get("updatedReplicas") or 0, status.get("replicas") or 0
    available = status.get("availableReplicas") or 0
    if updated < desired:
        return ROLLOUT_WAITING, "waiting for deployment %s rollout to finish: %d out of %d new replicas have been updated" % (
            name, updated, desired)
    if replicas > updated:
        return ROLLOUT_WAITING, "waiting for deployment %s rollout to finish: %d old replicas are pending termination" % (
            name, replicas - updated)
    if available < updated:
        return ROLLOUT_WAITING, "waiting for deployment %s rollout to finish: %d of %d updated replicas are available" % (
            name, available, updated)
    return ROLLOUT_SUCCESS, "deployment %s successfully rolled out (%d of %d available)" % (name, available, desired)


def probe_k8s(check, obs, timeout, ctx):
    key = (check.get("kubeconfig"), check.get("context"), bool(check.get("in_cluster")))
    kubernetes = KUBERNETES.load()
    api = ctx.client("k8s", key, lambda: kube_client(check.get("kubeconfig"), check.get("context"),
                                                     bool(check.get("in_cluster"))))
    ns, name = check["namespace"], check["deployment"]
    try:
        response = kubernetes.client.AppsV1Api(api).read_namespaced_deployment(
            name, ns, _preload_content=False, _request_timeout=timeout)
        deployment = json.loads(response.data)
    except api_exception() as exc:
        if exc.status == 404:
            raise ProbeFailed(CRITICAL, "deployment %s/%s not found" % (ns, name)) from exc
        reason = exc.reason or ""
        state = UNKNOWN if exc.status in (401, 403) else CRITICAL
        raise ProbeFailed(state, "Kubernetes API answered %s %s for deployment %s/%s" % (exc.status, reason, ns, name)) from exc
    except ValueError as exc:
        raise ProbeFailed(UNKNOWN, "Kubernetes API answer is not JSON: %s" % exc) from exc
    except unreachable_errors() as exc:  # urllib3 connection / timeout errors
        text = one_line(getattr(exc, "reason", None) or exc, 200)
        raise ProbeFailed(CRITICAL, "cannot reach the Kubernetes API for deployment %s/%s: %s" % (ns, name, text)) from exc
    judge_deployment(deployment, obs)


def judge_deployment(deployment, obs):
    spec, status, meta = deployment.get("spec") or {}, deployment.get("status") or {}, deployment.get("metadata") or {}
    desired = spec.get("replicas", 1)
    desired = 1 if desired is None else desired
    available = status.get("availableReplicas") or 0
    obs.measure("desired_replicas", desired)
    obs.measure("updated_replicas", status.get("updatedReplicas") or 0)
    obs.measure("ready_replicas", status.get("readyReplicas") or 0)
    obs.measure("available_replicas", available)
    obs.measure("unavailable_replicas", status.get("unavailableReplicas") or 0)
    obs.measure("available_pct", 100.0 * available / desired if desired else 100.0, 2)
    obs.measure("generation", meta.get("generation") or 0)
    obs.measure("observed_generation", status.get("observedGeneration") or 0)
    state, message = deployment_status(deployment)
    obs.details["rollout"] = state
    if state == ROLLOUT_FAILED or (desired and not available):
        obs.problem(CRITICAL, message if state == ROLLOUT_FAILED else "%s; no replica available" % message)
    elif state == ROLLOUT_WAITING:
        obs.problem(WARNING, message)
    else:
        obs.note(message)


# --------------------------------------------------------------------------- host: disk, memory, load

def probe_disk(check, obs, timeout=None, ctx=None):
    path = check["path"]
    try:
        st = os.statvfs(path)
    except OSError as exc:
        raise ProbeFailed(UNKNOWN, "cannot stat %s: %s" % (path, exc.strerror or exc)) from exc
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    usable = used + avail
    obs.measure("total_bytes", st.f_blocks * st.f_frsize)
    obs.measure("free_bytes", avail)
    if usable:
        obs.measure("used_pct", 100.0 * used / usable, 2)
        obs.measure("free_pct", 100.0 * avail / usable, 2)
    if st.f_files:
        obs.measure("inodes_free", st.f_favail)
        obs.measure("inodes_free_pct", 100.0 * st.f_favail / st.f_files, 2)
    obs.note("%s: %s%% free (%s of %s bytes)%s" % (
        path, format_number(round(obs.measures.get("free_pct", 0), 1)), avail, st.f_blocks * st.f_frsize,
        ", inodes %s%% free" % format_number(round(obs.measures["inodes_free_pct"], 1)) if st.f_files else ""))


def read_meminfo(text):
    """/proc/meminfo text -> {key: bytes}."""
    out = {}
    for line in text.splitlines():
        parts = line.replace(":", " ").split()
        if len(parts) >= 2 and parts[1].isdigit():
            out[parts[0]] = int(parts[1]) * (1024 if len(parts) > 2 and parts[2] == "kB" else 1)
    return out


def probe_memory(check, obs, timeout=None, ctx=None, meminfo="/proc/meminfo"):
    try:
        with open(meminfo) as handle:
            info = read_meminfo(handle.read())
    except OSError as exc:
        raise ProbeFailed(UNKNOWN, "cannot read %s: %s" % (meminfo, exc.strerror or exc)) from exc
    total = info.get("MemTotal")
    available = info.get("MemAvailable", info.get("MemFree", 0) + info.get("Buffers", 0) + info.get("Cached", 0))
    if not total:
        raise ProbeFailed(UNKNOWN, "no MemTotal in %s" % meminfo)
    obs.measure("total_bytes", total)
    obs.measure("available_bytes", available)
    obs.measure("used_pct", 100.0 * (total - available) / total, 2)
    if info.get("SwapTotal"):
        obs.measure("swap_used_pct", 100.0 * (info["SwapTotal"] - info.get("SwapFree", 0)) / info["SwapTotal"], 2)
    obs.note("memory %s%% used (%s of %s bytes available)" % (
        format_number(round(obs.measures["used_pct"], 1)), available, total))


def probe_load(check, obs, timeout=None, ctx=None):
    try:
        loads = os.getloadavg()
    except OSError as exc:
        raise ProbeFailed(UNKNOWN, "the load average is not available on this system") from exc
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    obs.measure("cores", cores)
    for minutes, value in zip((1, 5, 15), loads):
        obs.measure("load%d" % minutes, round(value, 2), 2)
        obs.measure("load%d_per_core" % minutes, round(value / cores, 3))
    obs.note("load %s / %s / %s on %d cores" % (
        format_number(round(loads[0], 2)), format_number(round(loads[1], 2)), format_number(round(loads[2], 2)), cores))
