# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The probe engine of health_check (also the gate of rollout).

Public API (stable):
    CHECK_TYPES                       the probe types
    CHECK_ARGSPEC                     argument spec of one element of ``checks`` (suboptions)
    MEASURES / PRIMARY_MEASURE        numeric measures per type, and the one O(warning)/O(critical) apply to
    validate_checks(checks, defaults=None) -> list of normalised check dicts (ConfigError names the check)
    run_checks(checks, concurrency=32, deadline=None, clients=None) -> report dict
    deployment_status(deployment) -> (state, message)   kubectl rollout-status rules

States are those of Nagios plugins. The overall status is the worst check by the order
OK < WARNING < UNKNOWN < CRITICAL (UNKNOWN: the probe could not tell whether the service works).
"""

from __future__ import annotations

import copy
import queue
import socket
import ssl
import threading
import time

from .._docker import DOCKER_ARGSPEC
from .._errors import ConfigError, MissingLibraryError, OpsError, ServiceError
from .net import parse_condition, probe_http, probe_redis, probe_tcp
from .services import (ROLLOUT_FAILED, ROLLOUT_SUCCESS, ROLLOUT_WAITING, deployment_status,
                          probe_disk, probe_docker, probe_k8s, probe_load, probe_memory, probe_postgres)
from .._postgres.connection import PG_ARGSPEC
from .ranges import (CRITICAL, OK, SEVERITY, STATES, UNKNOWN, WARNING, evaluate, format_number,
                      parse_range, perfdata_item, worst)

__all__ = ["CHECK_TYPES", "CHECK_ARGSPEC", "MEASURES", "PRIMARY_MEASURE", "validate_checks", "run_checks",
           "deployment_status", "ROLLOUT_SUCCESS", "ROLLOUT_WAITING", "ROLLOUT_FAILED", "ProbeFailed",
           "OK", "WARNING", "CRITICAL", "UNKNOWN", "STATES", "SEVERITY", "FAIL_ON", "failing"]

CHECK_TYPES = ("http", "tcp", "postgres", "redis", "docker_container", "k8s_deployment", "disk", "memory", "load")

# Numeric measures of each type; the first one is the primary measure (O(warning)/O(critical)).
MEASURES = {
    "http": ("time_ms", "dns_ms", "connect_ms", "tls_ms", "first_byte_ms", "status_code", "body_bytes", "cert_days"),
    "tcp": ("time_ms", "dns_ms", "connect_ms"),
    "postgres": ("connections_pct", "connect_ms", "query_ms", "connections", "max_connections", "long_queries",
                 "replication_lag_seconds"),
    "redis": ("memory_pct", "connect_ms", "ping_ms", "used_memory_bytes", "maxmemory_bytes", "connected_clients"),
    "docker_container": ("restart_count", "running", "oom_killed", "exit_code"),
    "k8s_deployment": ("available_pct", "desired_replicas", "updated_replicas", "ready_replicas",
                       "available_replicas", "unavailable_replicas", "generation", "observed_generation"),
    "disk": ("free_pct", "used_pct", "free_bytes", "total_bytes", "inodes_free_pct", "inodes_free"),
    "memory": ("used_pct", "available_bytes", "total_bytes", "swap_used_pct"),
    "load": ("load1_per_core", "load5_per_core", "load15_per_core", "load1", "load5", "load15", "cores"),
}
PRIMARY_MEASURE = {kind: measures[0] for kind, measures in MEASURES.items()}

_PROBES = {
    "http": probe_http, "tcp": probe_tcp, "postgres": probe_postgres, "redis": probe_redis,
    "docker_container": probe_docker, "k8s_deployment": probe_k8s, "disk": probe_disk,
    "memory": probe_memory, "load": probe_load,
}


def _per_check(spec, drop=()):
    """Connection options as check suboptions: no defaults/fallbacks, so None means "inherit"."""
    out = {}
    for name, opt in spec.items():
        if name not in drop:
            out[name] = {k: v for k, v in copy.deepcopy(opt).items() if k not in ("default", "fallback")}
    return out


CHECK_ARGSPEC = dict(
    name=dict(type="str"),
    type=dict(type="str"),
    timeout=dict(type="float", default=10.0),
    retries=dict(type="int", default=0),
    interval=dict(type="float", default=1.0),
    consecutive=dict(type="int", default=1),
    warning=dict(type="raw"),
    critical=dict(type="raw"),
    thresholds=dict(type="dict"),
    # http
    url=dict(type="str"),
    method=dict(type="str"),
    headers=dict(type="dict"),
    body=dict(type="raw"),
    status_codes=dict(type="list", elements="int"),
    body_contains=dict(type="str"),
    json_conditions=dict(type="list", elements="str"),
    validate_certs=dict(type="bool"),
    # tcp (host and port also serve postgres and redis)
    send=dict(type="str"),
    expect=dict(type="str"),
    # postgres
    database=dict(type="str"),
    long_query_seconds=dict(type="float"),
    # docker_container
    container=dict(type="str"),
    # k8s_deployment
    namespace=dict(type="str"),
    deployment=dict(type="str"),
    kubeconfig=dict(type="path"),
    context=dict(type="str"),
    in_cluster=dict(type="bool"),
    # disk
    path=dict(type="path"),
)
CHECK_ARGSPEC.update(_per_check(PG_ARGSPEC, drop=("connect_timeout",)))
CHECK_ARGSPEC.update(_per_check(DOCKER_ARGSPEC))  # ca_path/client_cert/client_key also serve http

_COMMON = ("name", "type", "timeout", "retries", "interval", "consecutive", "warning", "critical", "thresholds")
_PG_OPTS = tuple(n for n in PG_ARGSPEC if n != "connect_timeout")
_DOCKER_OPTS = tuple(DOCKER_ARGSPEC)
APPLIES = {
    "http": ("url", "method", "headers", "body", "status_codes", "body_contains", "json_conditions",
             "validate_certs", "ca_path", "client_cert", "client_key"),
    "tcp": ("host", "port", "send", "expect"),
    "postgres": _PG_OPTS + ("database", "long_query_seconds"),
    "redis": ("host", "port", "user", "password"),
    "docker_container": ("container",) + _DOCKER_OPTS,
    "k8s_deployment": ("namespace", "deployment", "kubeconfig", "context", "in_cluster"),
    "disk": ("path",),
    "memory": (),
    "load": (),
}
REQUIRED = {"http": ("url",), "tcp": ("host", "port"), "docker_container": ("container",),
            "k8s_deployment": ("deployment",)}
TYPE_DEFAULTS = {
    "http": dict(method="GET", validate_certs=True, headers={}, json_conditions=[]),
    "redis": dict(host="127.0.0.1", port=6379),
    "postgres": dict(database="postgres", long_query_seconds=60.0),
    "k8s_deployment": dict(namespace="default", in_cluster=False),
    "disk": dict(path="/"),
}
# Module-level connection options that fill in a check's unset ones.
INHERITED = {"postgres": _PG_OPTS + ("connect_timeout",), "docker_container": _DOCKER_OPTS}

FAIL_ON = {"critical": SEVERITY[UNKNOWN], "warning": SEVERITY[WARNING], "never": None}
_GRACE = 2.0  # seconds a running probe gets past the deadline before it is reported as hung


class ProbeFailed(Exception):
    """Raised by a probe: the check ends in ``state`` with ``msg`` (measures so far are kept)."""

    def __init__(self, state, msg):
        super().__init__(msg)
        self.state, self.msg = state, " ".join(str(msg).split())


def failing(status, fail_on):
    """True when the overall ``status`` fails the task for ``fail_on`` (critical, warning, never).

    ``critical`` fails on CRITICAL and UNKNOWN, ``warning`` on anything but OK.
    """
    limit = FAIL_ON[fail_on]
    return limit is not None and SEVERITY[status] >= limit


# --------------------------------------------------------------------------- validation

def _label(index, check):
    name = check.get("name") if isinstance(check, dict) else None
    return "check %r (checks[%d])" % (name, index) if name else "checks[%d]" % index


def _auto_name(check):
    kind = check["type"]
    if kind == "http":
        return "http %s" % check["url"]
    if kind in ("tcp", "redis"):
        return "%s %s:%s" % (kind, check["host"], check["port"])
    if kind == "postgres":
        return "postgres %s:%s/%s" % (check.get("host") or "local", check.get("port") or 5432, check["database"])
    if kind == "docker_container":
        return "docker_container %s" % check["container"]
    if kind == "k8s_deployment":
        return "k8s_deployment %s/%s" % (check["namespace"], check["deployment"])
    if kind == "disk":
        return "disk %s" % check["path"]
    return kind


def _number(label, check, key, minimum, integer=False):
    value = check.get(key)
    try:
        ok = not isinstance(value, bool) and float(value) >= minimum
    except (TypeError, ValueError):
        ok = False
    if not ok or (integer and float(value) != int(float(value))):
        raise ConfigError("%s: %s must be %s >= %s, got %r"
                          % (label, key, "an integer" if integer else "a number", minimum, value))
    return int(float(value)) if integer else float(value)


def _thresholds(label, check):
    kind, out = check["type"], {}
    raw = check.get("thresholds") or {}
    if not isinstance(raw, dict):
        raise ConfigError("%s: thresholds must be a mapping of measure name to {warning, critical}" % label)
    primary = PRIMARY_MEASURE[kind]
    if (check.get("warning") is not None or check.get("critical") is not None) and primary in raw:
        raise ConfigError("%s: set either warning/critical or thresholds.%s, not both" % (label, primary))
    if check.get("warning") is not None or check.get("critical") is not None:
        raw = dict(raw, **{primary: {"warning": check.get("warning"), "critical": check.get("critical")}})
    for measure, levels in raw.items():
        if measure not in MEASURES[kind]:
            raise ConfigError("%s: unknown measure %r for type %s in thresholds (known: %s)"
                              % (label, measure, kind, ", ".join(MEASURES[kind])))
        if not isinstance(levels, dict) or set(levels) - {"warning", "critical"}:
            raise ConfigError("%s: thresholds.%s must be a mapping with warning and/or critical" % (label, measure))
        ranges = tuple(
            None if levels.get(level) is None else
            parse_range(levels[level], "%s: %s %s" % (label, measure, level)) for level in ("warning", "critical"))
        if ranges != (None, None):
            out[measure] = ranges
    return out


def _validate_one(index, raw, defaults):
    if not isinstance(raw, dict):
        raise ConfigError("checks[%d]: each check must be a mapping, got %s" % (index, type(raw).__name__))
    label = _label(index, raw)
    unknown = sorted(set(raw) - set(CHECK_ARGSPEC))
    if unknown:
        raise ConfigError("%s: unsupported option(s) %s" % (label, ", ".join(unknown)))
    kind = raw.get("type")
    if kind not in CHECK_TYPES:
        raise ConfigError("%s: %s (expected one of %s)" % (
            label, "missing type" if kind is None else "unknown type %r" % (kind,), ", ".join(CHECK_TYPES)))
    check = {key: raw.get(key, spec.get("default")) for key, spec in CHECK_ARGSPEC.items()}
    wrong = sorted(k for k in CHECK_ARGSPEC if k not in _COMMON and k not in APPLIES[kind]
                   and raw.get(k) not in (None, [], {}))
    if wrong:
        raise ConfigError("%s: option(s) %s do not apply to type %s" % (label, ", ".join(wrong), kind))
    for key, value in TYPE_DEFAULTS.get(kind, {}).items():
        if check.get(key) is None:
            check[key] = copy.deepcopy(value)
    for key in INHERITED.get(kind, ()):
        if check.get(key) is None and defaults and defaults.get(key) is not None:
            check[key] = defaults[key]
    missing = [key for key in REQUIRED.get(kind, ()) if check.get(key) in (None, "")]
    if missing:
        raise ConfigError("%s: type %s requires %s" % (label, kind, " and ".join(missing)))
    check["timeout"] = _number(label, check, "timeout", 0.001)
    check["interval"] = _number(label, check, "interval", 0)
    check["retries"] = _number(label, check, "retries", 0, integer=True)
    check["consecutive"] = _number(label, check, "consecutive", 1, integer=True)
    if check.get("port") is not None:
        check["port"] = _number(label, check, "port", 1, integer=True)
        if check["port"] > 65535:
            raise ConfigError("%s: port must be 1..65535, got %s" % (label, check["port"]))
    if kind == "http":
        _validate_http(label, check)
    if kind == "postgres":
        check["long_query_seconds"] = _number(label, check, "long_query_seconds", 0)
    check["_ranges"] = _thresholds(label, check)
    check["_auto_name"] = not check.get("name")
    check["name"] = check.get("name") or _auto_name(check)
    check["_label"] = label
    return check


def _validate_http(label, check):
    from urllib.parse import urlsplit
    parts = urlsplit(check["url"])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("%s: url must be http:// or https:// with a host, got %r" % (label, check["url"]))
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError("%s: url has an invalid port: %r" % (label, check["url"])) from None
    check["method"] = str(check["method"]).upper()
    codes = []
    for code in check.get("status_codes") or ():
        if isinstance(code, str) and code.strip().isdigit():
            code = int(code)  # raw dicts (rollout's health_checks) may carry templated strings
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ConfigError("%s: status_codes must be HTTP status codes (100-599), got %r" % (label, code))
        codes.append(code)
    check["status_codes"] = codes or None
    check["_conditions"] = [parse_condition(text, "%s: json_conditions[%d]" % (label, i))
                            for i, text in enumerate(check.get("json_conditions") or ())]
    if check.get("client_key") and not check.get("client_cert"):
        raise ConfigError("%s: client_key needs client_cert" % label)


def validate_checks(checks, defaults=None):
    """Normalise and validate ``checks``; raise ConfigError naming the first bad check.

    ``defaults`` holds module-level connection options (PostgreSQL, Docker) that fill in the
    unset ones of postgres and docker_container checks.
    """
    if checks is None or not isinstance(checks, (list, tuple)):
        raise ConfigError("checks must be a list of checks")
    if not checks:
        raise ConfigError("checks is empty: give at least one check")
    out, seen = [], {}
    for index, raw in enumerate(checks):
        if isinstance(raw, dict) and raw.get("_validated"):
            check = raw
        else:
            check = _validate_one(index, raw, defaults)
            check["_validated"] = True
        name = check["name"]
        if name in seen:
            if not check["_auto_name"]:
                raise ConfigError("%s: duplicate check name %r (also checks[%d])" % (check["_label"], name, seen[name]))
            suffix = 2
            while "%s #%d" % (name, suffix) in seen:
                suffix += 1
            check = dict(check, name="%s #%d" % (name, suffix))
        seen[check["name"]] = index
        out.append(check)
    return out


# --------------------------------------------------------------------------- running

class Observation:
    """What one probe attempt saw: numeric measures, details, problems and summary notes."""

    def __init__(self):
        self.measures, self.details, self.problems, self.notes = {}, {}, [], []

    def measure(self, name, value, ndigits=3):
        if value is not None:
            self.measures[name] = round(value, ndigits) if isinstance(value, float) else value

    def problem(self, state, msg):
        self.problems.append((state, msg))

    def note(self, text):
        self.notes.append(text)


class Context:
    """Per-run shared state: a deadline and a cache of clients (Docker, Kubernetes) per connection."""

    def __init__(self, deadline_at, clients=None):
        self.deadline_at = deadline_at
        self.factories = dict(clients or {})
        self._cache, self._lock = {}, threading.Lock()

    def remaining(self):
        return self.deadline_at - time.monotonic() if self.deadline_at is not None else float("inf")

    def client(self, kind, key, factory):
        """The client of ``kind`` for connection ``key``; built once per run by ``factory``
        (or by the caller's ``clients[kind]`` when given)."""
        with self._lock:
            entry = self._cache.get((kind, key))
            if entry is None:
                entry = self._cache[(kind, key)] = [threading.Lock(), None]
        with entry[0]:
            if entry[1] is None:
                entry[1] = (self.factories.get(kind) or factory)()
            return entry[1]


def _exception_state(exc, timeout):
    """(state, message) for an exception escaping a probe; never raises."""
    if isinstance(exc, ProbeFailed):
        return exc.state, exc.msg
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return CRITICAL, "timed out after %ss" % format_number(round(timeout, 3))
    if isinstance(exc, socket.gaierror):
        return CRITICAL, "DNS lookup failed: %s" % (exc.strerror or exc)
    if isinstance(exc, ssl.SSLCertVerificationError):
        return CRITICAL, "TLS certificate verification failed: %s" % (exc.verify_message or exc.reason or exc)
    if isinstance(exc, ssl.SSLError):
        return CRITICAL, "TLS error: %s" % (exc.reason or exc)
    if isinstance(exc, ConnectionRefusedError):
        return CRITICAL, "connection refused"
    if isinstance(exc, OSError):
        return CRITICAL, "%s" % (exc.strerror or exc or type(exc).__name__)
    if isinstance(exc, MissingLibraryError):
        return UNKNOWN, exc.msg
    if isinstance(exc, ServiceError):
        return CRITICAL, exc.msg
    if isinstance(exc, OpsError):
        return UNKNOWN, exc.msg
    return UNKNOWN, "probe error: %s: %s" % (type(exc).__name__, " ".join(str(exc).split())[:300])


def _violation(measure, value, rng, level):
    shown = format_number(value)
    if rng.inside:
        return "%s (%s) inside %s (%s)" % (measure, shown, rng.text, level)
    if value < rng.start:
        return "%s (%s) < %s (%s)" % (measure, shown, format_number(rng.start), level)
    return "%s (%s) > %s (%s)" % (measure, shown, format_number(rng.end), level)


_UOM = (("_ms", "ms"), ("_pct", "%"), ("_bytes", "B"), ("_seconds", "s"))


def _perfdata(measures, ranges):
    items = []
    for name, value in measures.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        uom = next((u for suffix, u in _UOM if name.endswith(suffix)), "")
        warn, crit = ranges.get(name, (None, None))
        items.append(perfdata_item(name, value, uom, warn, crit,
                                   0 if uom in ("%", "ms", "B", "s") else None, 100 if uom == "%" else None))
    return " ".join(items)


def _attempt(check, ctx):
    """One probe attempt -> (state, message, measures, details)."""
    timeout = max(0.001, min(check["timeout"], ctx.remaining()))
    obs, started = Observation(), time.perf_counter()
    try:
        _PROBES[check["type"]](check, obs, timeout, ctx)
        failure = None
    except Exception as exc:  # pylint: disable=broad-except
        # a probe never crashes the run: whatever escaped becomes this check's state
        failure = _exception_state(exc, timeout)
    obs.details["probe_ms"] = round((time.perf_counter() - started) * 1000, 3)
    states, parts = [], list(obs.notes)
    if failure:
        states.append(failure[0])
        parts.insert(0, failure[1])
    for state, msg in obs.problems:
        states.append(state)
        parts.append(msg)
    for measure, (warn, crit) in check["_ranges"].items():
        value = obs.measures.get(measure)
        if value is None:
            if not failure:
                states.append(UNKNOWN)
                parts.append("%s was not measured" % measure)
            continue
        state = evaluate(value, warn, crit)
        if state != OK:
            states.append(state)
            parts.append(_violation(measure, value, crit if state == CRITICAL else warn, state.lower()))
    return worst(states), "; ".join(p for p in parts if p), obs.measures, obs.details


def _run_check(check, ctx):
    started = time.perf_counter()
    attempts, streak, failures, history = 0, 0, 0, []
    state, message, measures, details = UNKNOWN, "not run", {}, {}
    while True:
        if ctx.remaining() <= 0:
            if attempts == 0:
                state, message = UNKNOWN, "not run: the overall deadline passed first"
            elif state == OK:
                state = UNKNOWN
                message = "only %d of %d consecutive OK results before the deadline; %s" % (
                    streak, check["consecutive"], message)
            else:
                message = "deadline reached after %d attempt(s); %s" % (attempts, message)
            break
        state, message, measures, details = _attempt(check, ctx)
        attempts += 1
        history.append(state)
        if state == OK:
            streak += 1
            if streak >= check["consecutive"]:
                break
        else:
            streak = 0
            failures += 1
            if failures > check["retries"]:
                break
        pause = min(check["interval"], ctx.remaining())
        if pause > 0:
            time.sleep(pause)
    if check["consecutive"] > 1 and state == OK:
        message = "%s (%d consecutive OK)" % (message, streak) if message else "%d consecutive OK" % streak
    return {
        "name": check["name"], "type": check["type"], "status": state, "message": message,
        "duration_ms": round((time.perf_counter() - started) * 1000, 3), "measures": measures,
        "perfdata": _perfdata(measures, check["_ranges"]), "attempts": attempts, "history": history,
        "details": details,
    }


def _not_finished(check, why):
    return {"name": check["name"], "type": check["type"], "status": CRITICAL if why == "hung" else UNKNOWN,
            "message": ("did not finish before the overall deadline" if why == "hung"
                        else "not run: the overall deadline passed first"),
            "duration_ms": None, "measures": {}, "perfdata": "", "attempts": 0 if why != "hung" else 1,
            "history": [], "details": {}}


def run_checks(checks, concurrency=32, deadline=None, clients=None):
    """Run ``checks`` concurrently (at most ``concurrency`` at once) within ``deadline`` seconds.

    ``checks`` are raw or already validated check dicts. ``clients`` optionally maps a client kind
    (``docker``, ``k8s``) to a zero-argument factory used instead of the built-in one (tests, reuse).
    Returns the report: status, counts per state, the checks in input order, summary, duration_ms.
    """
    checks = validate_checks(checks)
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ConfigError("concurrency must be an integer >= 1, got %r" % (concurrency,))
    if deadline is not None and (isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or deadline <= 0):
        raise ConfigError("deadline must be a positive number of seconds, got %r" % (deadline,))
    started = time.perf_counter()
    ctx = Context(time.monotonic() + deadline if deadline else None, clients)
    wait = None if deadline is None else max(0.0, ctx.remaining()) + _GRACE
    results = _run_pool(checks, ctx, min(concurrency, len(checks)), wait)
    return build_report(results, duration_ms=round((time.perf_counter() - started) * 1000, 3))


def _run_pool(checks, ctx, workers, wait):
    """Run the checks on ``workers`` daemon threads; return the results after at most ``wait`` s.

    Daemon threads (not concurrent.futures, whose workers are joined at interpreter exit) so that a
    probe stuck past the deadline, e.g. in a DNS lookup, cannot hold the module process open.
    """
    todo = queue.SimpleQueue()
    for index in range(len(checks)):
        todo.put(index)
    results, started = [None] * len(checks), [False] * len(checks)
    lock, left, finished = threading.Lock(), [len(checks)], threading.Event()

    def worker():
        while True:
            try:
                index = todo.get_nowait()
            except queue.Empty:
                return
            started[index] = True
            try:
                results[index] = _run_check(checks[index], ctx)
            except Exception as exc:  # pylint: disable=broad-except
                # a bug outside the probes still ends as this check's result, not a crash
                results[index] = dict(_not_finished(checks[index], "hung"), status=UNKNOWN, attempts=1,
                                      message="internal error: %s: %s" % (type(exc).__name__, exc))
            with lock:
                left[0] -= 1
                if not left[0]:
                    finished.set()

    for number in range(workers):
        threading.Thread(target=worker, name="opskit-health-%d" % number, daemon=True).start()
    finished.wait(wait)
    snapshot = list(results)
    return [result if result is not None else _not_finished(checks[i], "hung" if started[i] else "not started")
            for i, result in enumerate(snapshot)]


def build_report(results, duration_ms=None):
    counts = {state: 0 for state in STATES}
    for result in results:
        counts[result["status"]] += 1
    status = worst(r["status"] for r in results)
    bad = [r for r in results if r["status"] != OK]
    bad.sort(key=lambda r: -SEVERITY[r["status"]])
    summary = "%s: %d checks, %s" % (status, len(results), ", ".join("%d %s" % (counts[s], s) for s in STATES if counts[s]))
    if bad:
        summary += "; " + "; ".join("%s %s: %s" % (r["status"], r["name"], r["message"]) for r in bad[:10])
        if len(bad) > 10:
            summary += "; and %d more" % (len(bad) - 10)
    return {"status": status, "counts": counts, "checks": results, "summary": summary, "duration_ms": duration_ms}
