# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The runner of the health engine (health_check, and the gate of rollout).

    run_checks(checks, concurrency=256, deadline=None, clients=None) -> report dict
    build_report(results, duration_ms=None) -> report dict (status, counts, checks, summary)
    summary_only(report) -> the report with only the checks that are not OK

The checks are validated by checks.py and probed by sampling.py and net.py (http, with or
without samples; tcp, redis), metrics.py (metrics, prometheus), tls.py (tls), containers.py
(logs; resources and Compose services of docker_container), pods.py (pod) and services.py
(postgres, docker_container, k8s_deployment, disk, memory, load), which hand back a
probe.Observation or raise probe.ProbeFailed (outcome.py maps other errors to states); only the
probe files of the types in a run are imported (``_probe``). The ``fail_on`` verdict is
ranges.failing.

Where a check runs is chosen per check by its type: a type with a steps probe (``_STEPS``: http,
with or without samples) runs on an event loop (aio.Loop: non-blocking sockets, TLS on them,
names resolved on a thread once per run per loop; one loop per core at most, the first in the
calling thread, see ``_run_loops``), the others on worker threads.
A check's retries, intervals and consecutive OKs are the same generator (``_run_check_steps``) on
both: a worker thread drives it with aio.run_blocking, the loop with its selector.

States are those of Nagios plugins. The overall status is the worst check by the order
OK < WARNING < UNKNOWN < CRITICAL (UNKNOWN: the probe could not tell whether the service works).
A probe never crashes the run ("report rather than crash"): every error a probe can meet becomes
its check's state, and a bug still ends as an UNKNOWN check result (see ``_run_pool``).
"""

from __future__ import annotations

import os
import queue
import threading
import time

from .._errors import ConfigError
from .aio import Loop, run_blocking, sleep
from .checks import validate_checks
from .outcome import PROBE_ERRORS, exception_state, unexpected
from .probe import Observation, redact
from .ranges import CRITICAL, OK, SEVERITY, STATES, UNKNOWN, evaluate, format_number, perfdata_item, worst

# kind -> probe, filled on first use by _probe(): a run imports only the probe files of its
# types (under AnsiballZ every imported file is compiled again on each run).
_PROBES = {}
_STEPS = {}   # kind -> the probe as steps (aio.py): its checks run on one event-loop thread, not on threads
_PROBES_LOCK = threading.Lock()
_GRACE = 2.0  # seconds a running probe gets past the deadline before it is reported as hung
_LOOPS = min(4, os.cpu_count() or 1)   # event loops at most: one per core (measured: TLS handshakes, a loaded machine)
_PER_LOOP = 16   # checks at least per loop: a small run stays on one


# --------------------------------------------------------------------------- running

def _import_probes(kind):
    """{kind: probe} of the file that holds ``kind``'s probe (explicit imports, so that the
    architecture test and Ansible's module packer see them)."""
    if kind == "http":
        from .sampling import probe_http_sampled, probe_http_sampled_steps
        _STEPS.setdefault("http", probe_http_sampled_steps)
        return {"http": probe_http_sampled}
    if kind in ("tcp", "redis"):
        from .net import probe_redis, probe_tcp
        return {"tcp": probe_tcp, "redis": probe_redis}
    if kind in ("metrics", "prometheus"):
        from .metrics import probe_metrics, probe_prometheus
        return {"metrics": probe_metrics, "prometheus": probe_prometheus}
    if kind == "tls":
        from .tls import probe_tls
        return {"tls": probe_tls}
    if kind == "logs":
        from .containers import probe_logs
        return {"logs": probe_logs}
    if kind == "pod":
        from .pods import probe_pods
        return {"pod": probe_pods}
    from .services import probe_disk, probe_docker, probe_k8s, probe_load, probe_memory, probe_postgres
    return {"postgres": probe_postgres, "docker_container": probe_docker, "k8s_deployment": probe_k8s,
            "disk": probe_disk, "memory": probe_memory, "load": probe_load}


def _probe(kind):
    probe = _PROBES.get(kind)
    if probe is None:
        with _PROBES_LOCK:   # one import per file, also when many threads start at once
            for name, func in _import_probes(kind).items():
                _PROBES.setdefault(name, func)
        probe = _PROBES[kind]
    return probe


class Context:
    """Per-run shared state: a deadline and a cache of clients (Docker, Kubernetes) per connection."""

    def __init__(self, deadline_at, clients=None):
        self.deadline_at = deadline_at
        self.factories = dict(clients or {})
        self._cache, self._lock = {}, threading.Lock()
        self.resolver = None   # no event loop's name lookup: the probes resolve in their own thread (_LoopContext)

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


def _attempt_steps(check, ctx, probing, on_loop):
    """One probe attempt -> (state, message, measures, details). ``probing[0]`` is the probe type
    while the probe runs (an unexpected error escaping it leaves it set: _crashed)."""
    timeout = max(0.001, min(check["timeout"], ctx.remaining()))
    obs, started = Observation(), time.perf_counter()
    probing[0] = check["type"]
    try:
        if on_loop:
            yield from _STEPS[check["type"]](check, obs, timeout, ctx)
        else:
            _probe(check["type"])(check, obs, timeout, ctx)
        failure = None
    except PROBE_ERRORS as exc:
        failure = exception_state(exc, timeout)
    probing[0] = None
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
    return worst(states), redact("; ".join(p for p in parts if p)), obs.measures, obs.details


def _run_check_steps(check, ctx, probing, on_loop):
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
        state, message, measures, details = yield from _attempt_steps(check, ctx, probing, on_loop)
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
            yield from sleep(pause)
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


def run_checks(checks, concurrency=256, deadline=None, clients=None):
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
    for kind in sorted({check["type"] for check in checks}):
        _probe(kind)     # imported here, not in a check's thread where it would count in its latency
    started = time.perf_counter()
    ctx = Context(time.monotonic() + deadline if deadline else None, clients)
    wait = None if deadline is None else max(0.0, ctx.remaining()) + _GRACE
    results = _run_pool(checks, ctx, concurrency, wait)
    return build_report(results, duration_ms=round((time.perf_counter() - started) * 1000, 3))


class _Pool:
    """The checks of a run: the ones with a steps probe (_STEPS) on an event loop in the calling
    thread, the others on ``workers`` daemon threads started as a tree: each worker starts two more.

    Thread.start() waits until the new thread runs, so 200 starts in a row from one thread delay
    the last checks (milliseconds each on a loaded machine); in a tree the starts overlap the
    probes. Daemon threads (not concurrent.futures, whose workers are joined at interpreter exit)
    so that a probe stuck past the deadline, e.g. in a DNS lookup, cannot hold the process open.
    """

    def __init__(self, checks, ctx, threaded, workers):
        self.checks, self.ctx, self.workers = checks, ctx, workers
        self.todo = queue.SimpleQueue()
        for index in threaded:
            self.todo.put(index)
        self.results, self.started = [None] * len(checks), [False] * len(checks)
        self.lock, self.left, self.finished = threading.Lock(), len(threaded), threading.Event()
        if not threaded:
            self.finished.set()

    def spawn(self, number):
        try:
            threading.Thread(target=self.work, args=(number,), name="opskit-health-%d" % number, daemon=True).start()
        except RuntimeError:  # no more threads: the running workers take the remaining checks
            pass

    def work(self, number):
        for child in (2 * number + 1, 2 * number + 2):
            if child < self.workers:
                self.spawn(child)
        while True:
            try:
                index = self.todo.get_nowait()
            except queue.Empty:
                return
            run_blocking(self.steps(index, False))
            with self.lock:
                self.left -= 1
                if not self.left:
                    self.finished.set()

    def steps(self, index, on_loop, ctx=None):
        """The steps of check ``index``, its result in ``results``."""
        self.started[index] = True
        probing = [None]
        try:
            self.results[index] = yield from _run_check_steps(self.checks[index], ctx or self.ctx, probing, on_loop)
        except Exception as exc:  # pylint: disable=broad-except
            # The one broad catch of the health engine, at its thread and loop boundary: an exception
            # nobody expected (a bug, in a probe or in the engine) ends as this check's UNKNOWN
            # result instead of killing the worker (or the loop) and losing every other check of the run.
            self.results[index] = _crashed(self.checks[index], exc, probing[0])


def _shares(concurrency, looped, threaded):
    """(loop slots, worker threads): ``concurrency`` split between the two in proportion."""
    if not threaded:
        return min(concurrency, looped), 0
    if not looped:
        return 0, min(concurrency, threaded)
    slots = max(1, min(looped, concurrency * looped // (looped + threaded)))
    return slots, max(1, min(threaded, concurrency - slots))


def _run_pool(checks, ctx, concurrency, wait):
    """Run the checks (at most ``concurrency`` at once); return the results after at most ``wait`` s."""
    looped = [i for i, check in enumerate(checks) if check["type"] in _STEPS]
    threaded = [i for i, check in enumerate(checks) if check["type"] not in _STEPS]
    slots, workers = _shares(concurrency, len(looped), len(threaded))
    pool = _Pool(checks, ctx, threaded, workers)
    end = time.perf_counter() + (wait if wait is not None else float("inf"))
    if threaded:
        pool.spawn(0)
    if looped:
        _run_loops(pool, looped, slots, end)
    pool.finished.wait(None if wait is None else max(0.0, end - time.perf_counter()))
    snapshot = list(pool.results)
    return [result if result is not None else _not_finished(checks[i], "hung" if pool.started[i] else "not started")
            for i, result in enumerate(snapshot)]


class _LoopContext:
    """The run's Context as the probes of one event loop see it: with that loop's name lookup."""

    def __init__(self, ctx, resolver):
        self._ctx, self.resolver = ctx, resolver

    def __getattr__(self, name):
        return getattr(self._ctx, name)


def _run_loops(pool, looped, slots, end):
    """The checks ``looped`` on up to _LOOPS event loops, one in this thread and the others on
    daemon threads, until ``end``. TLS handshakes and socket calls release the GIL: on a loop per
    core they use the cores that 200 threads would use, without 200 threads."""
    count = max(1, min(_LOOPS, len(looped) // _PER_LOOP))
    runs = []
    for number in range(count):
        loop = Loop()
        share = looped[number::count]
        runs.append((loop, [pool.steps(i, True, _LoopContext(pool.ctx, loop.lookup)) for i in share],
                     max(1, slots * len(share) // len(looped))))
    threads = [threading.Thread(target=loop.run, args=(gens, share, end), name="opskit-health-loop-%d" % number, daemon=True)
               for number, (loop, gens, share) in enumerate(runs[1:], 1)]
    for thread in threads:
        thread.start()
    runs[0][0].run(runs[0][1], runs[0][2], end)
    for thread in threads:
        thread.join(None if end == float("inf") else max(0.0, end - time.perf_counter()))


def _crashed(check, exc, probing):
    """The result of a check whose run raised ``exc``, an error no probe is expected to raise
    (``probing``: the probe type it escaped from, else None)."""
    if probing:
        message = unexpected("probe error", exc)  # escaped the probe itself
    else:
        message = redact("internal error: %s: %s" % (type(exc).__name__, exc))
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


def summary_only(report):
    """``report`` with only the checks that are not OK in ``checks`` (status, counts and the summary
    line still cover every check): a result that grows with the failures, not with the checks."""
    return dict(report, checks=[result for result in report["checks"] if result["status"] != OK])
