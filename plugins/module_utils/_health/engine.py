# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of the health engine (health_check, and the gate of rollout).

    run_checks(checks, concurrency=32, deadline=None, clients=None) -> report dict
    build_report(results, duration_ms=None) -> report dict (status, counts, checks, summary)

The checks are validated by checks.py, probed by net.py (http, tcp, redis) and services.py
(postgres, docker_container, k8s_deployment, disk, memory, load), which hand back a
probe.Observation or raise probe.ProbeFailed; the ``fail_on`` verdict is ranges.failing.

States are those of Nagios plugins. The overall status is the worst check by the order
OK < WARNING < UNKNOWN < CRITICAL (UNKNOWN: the probe could not tell whether the service works).
A probe never crashes the run ("report rather than crash"): every error a probe can meet becomes
its check's state, and a bug still ends as an UNKNOWN check result (see ``_run_pool``).
"""

from __future__ import annotations

import http.client
import queue
import socket
import ssl
import threading
import time

from .._errors import ConfigError, MissingLibraryError, OpsError, ServiceError
from .checks import validate_checks
from .net import probe_http, probe_redis, probe_tcp
from .probe import Observation, ProbeFailed, one_line
from .ranges import CRITICAL, OK, SEVERITY, STATES, UNKNOWN, evaluate, format_number, perfdata_item, worst
from .services import probe_disk, probe_docker, probe_k8s, probe_load, probe_memory, probe_postgres

_PROBES = {
    "http": probe_http, "tcp": probe_tcp, "postgres": probe_postgres, "redis": probe_redis,
    "docker_container": probe_docker, "k8s_deployment": probe_k8s, "disk": probe_disk,
    "memory": probe_memory, "load": probe_load,
}
# What a probe can raise besides ProbeFailed: socket, DNS, TLS and file errors (OSError: socket.timeout,
# socket.gaierror, ssl.SSLError are OSErrors), an HTTP answer that is no HTTP, a value that does not
# parse (ValueError, UnicodeError), and the OpsErrors of the shared clients (docker, kubernetes,
# PostgreSQL connections; the probes translate the SDKs' own errors into these or into ProbeFailed).
PROBE_ERRORS = (ProbeFailed, OpsError, OSError, http.client.HTTPException, ValueError)
_GRACE = 2.0  # seconds a running probe gets past the deadline before it is reported as hung
_PROBING = threading.local()  # .kind: the probe type a worker thread is inside, else None


# --------------------------------------------------------------------------- running

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
    return UNKNOWN, _unexpected("probe error", exc)


def _unexpected(what, exc):
    return "%s: %s: %s" % (what, type(exc).__name__, one_line(exc, 300))


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
    _PROBING.kind = check["type"]   # an unexpected error escaping the probe leaves it set (_run_pool)
    try:
        _PROBES[check["type"]](check, obs, timeout, ctx)
        failure = None
    except PROBE_ERRORS as exc:
        failure = _exception_state(exc, timeout)
    _PROBING.kind = None
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
            _PROBING.kind = None
            try:
                results[index] = _run_check(checks[index], ctx)
            except Exception as exc:  # pylint: disable=broad-except
                # The one broad catch of the health engine, at its thread boundary: an exception
                # nobody expected (a bug, in a probe or in the engine) ends as this check's UNKNOWN
                # result instead of killing the worker and losing every other check of the run.
                results[index] = _crashed(checks[index], exc)
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


def _crashed(check, exc):
    """The result of a check whose run raised ``exc``, an error no probe is expected to raise."""
    if getattr(_PROBING, "kind", None):
        message = _unexpected("probe error", exc)  # escaped the probe itself
    else:
        message = "internal error: %s: %s" % (type(exc).__name__, exc)
    return dict(_not_finished(check, "hung"), status=UNKNOWN, attempts=1, message=message)


def build_report(results, duration_ms=None):
    """The report of ``results`` (one dict per check, in input order): the worst status, counts
    per state, and a one-line summary naming at most ten checks that are not OK, worst first."""
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
