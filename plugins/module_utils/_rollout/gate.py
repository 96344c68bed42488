# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's gate: is a switched unit good? A plain function over observations and checks.

    gate(observe, timeout, monitor, checks=None, ...) -> GateResult
    checks_runner(checks, run_checks, failing) -> the ``checks`` callable of the gate
    checks_reason(report) -> words for a failed health report

The gate waits for the platform to call the unit ready, runs the health checks, then watches
it for the monitor window; ``clock`` and ``sleep`` are parameters so that tests drive it with a
fake clock. The health checks run in a daemon thread while the gate keeps observing the unit
every ``interval`` s: a unit that crashes, restarts or is OOM-killed while a check is still
retrying ends the gate at once (the abandoned checks end by their own retries, off the gate).
"""

from __future__ import annotations

import threading
import time

from .record import FAILED, READY


def checks_reason(report):
    """Words for a failed health report: 'check api: HTTP 503 ... on 3 attempts'."""
    bad = [c for c in report.get("checks") or [] if c.get("status") != "OK"]
    if not bad:
        return "health checks %s" % report.get("status")
    parts = []
    for c in bad[:3]:
        attempts = c.get("attempts") or 0
        parts.append("check %s %s: %s%s" % (c.get("name"), c.get("status"), c.get("message") or "failed",
                                            (" on %d attempt%s" % (attempts, "" if attempts == 1 else "s"))
                                            if attempts else ""))
    return "; ".join(parts)


class GateResult:
    def __init__(self, ok, phase, reason, timings, report=None):
        self.ok, self.phase, self.reason, self.timings, self.report = ok, phase, reason, timings, report

    def as_dict(self):
        return {"passed": self.ok, "phase": self.phase, "reason": self.reason, "timings": self.timings}


class _Run:
    """One run of the gate: its inputs, clock and the timings so far."""

    def __init__(self, observe, checks, interval, check_every, clock, sleep):
        self.observe, self.checks, self.interval, self.check_every = observe, checks, interval, check_every
        self.clock, self.sleep = clock, sleep
        self.timings = {"ready": None, "checks": None, "monitor": None}
        self.report = None
        self.checked = (True, None)  # (ok, reason) of the last finished run of the checks

    def took(self, since):
        return round(self.clock() - since, 3)

    def fail(self, phase, reason):
        return GateResult(False, phase, reason, self.timings, self.report)


def gate(observe, timeout, monitor, checks=None, interval=0.25, check_every=1.0,
         clock=time.monotonic, sleep=time.sleep):
    """Wait for the platform to be ready, run the health checks, then watch for ``monitor`` s.

    ``observe()`` -> (READY|WAITING|FAILED, reason). ``checks(deadline)`` -> (ok, reason, report)
    or None when there are no health checks; a check's own retries/interval decide how long it
    may fail before it counts. FAILED ends the gate at once (fail fast), also while a check is still
    retrying; WAITING past ``timeout``
    fails it; anything but READY inside the monitor window fails it.
    Returns a GateResult with timings in seconds per phase (ready, checks, monitor).
    """
    run = _Run(observe, checks, interval, check_every, clock, sleep)
    start = clock()
    failed = _ready(run, start, timeout) or _first_checks(run, start, timeout) or _monitor(run, monitor)
    return failed or GateResult(True, "passed", None, run.timings, run.report)


def _ready(run, start, timeout):
    """1. platform readiness, within the timeout budget; a GateResult when it fails."""
    while True:
        state, reason = run.observe()
        if state == FAILED:
            run.timings["ready"] = run.took(start)
            return run.fail("ready", reason)
        if state == READY:
            break
        if run.clock() - start >= timeout:
            run.timings["ready"] = run.took(start)
            return run.fail("ready", "not ready within the %ss timeout: %s" % (_num(timeout), reason))
        run.sleep(max(0.0, min(run.interval, timeout - (run.clock() - start))))
    run.timings["ready"] = run.took(start)
    return None


def _first_checks(run, start, timeout):
    """2. health checks, with what is left of the timeout; a GateResult when they fail."""
    if run.checks is None:
        return None
    cstart = run.clock()
    crash = _watched_checks(run, max(1.0, timeout - (run.clock() - start)))
    run.timings["checks"] = run.took(cstart)
    if crash is not None:
        return run.fail("checks", "%s while the health checks ran" % crash)
    ok, creason = run.checked
    if ok:
        return None
    state, reason = run.observe()  # a crashed container explains a failed check better
    return run.fail("checks", creason if state == READY else reason)


def _monitor(run, monitor):
    """3. monitor window: must stay ready (and the checks passing) throughout."""
    mstart = run.clock()
    last_checks = mstart
    while True:
        elapsed = run.clock() - mstart
        if elapsed >= monitor:
            break
        run.sleep(min(run.interval, monitor - elapsed))
        state, reason = run.observe()
        if state != READY:
            run.timings["monitor"] = run.took(mstart)
            return run.fail("monitor", "within the %ss monitor window: %s" % (_num(monitor), reason))
        final = run.clock() - mstart >= monitor
        if run.checks is not None and (final or run.clock() - last_checks >= run.check_every):
            crash = _watched_checks(run, max(1.0, monitor - (run.clock() - mstart)))
            last_checks = run.clock()
            ok, creason = run.checked if crash is None else (False, "%s while the health checks ran" % crash)
            if not ok:
                run.timings["monitor"] = run.took(mstart)
                return run.fail("monitor", "within the %ss monitor window: %s" % (_num(monitor), creason))
    run.timings["monitor"] = run.took(mstart)
    return None


def _watched_checks(run, deadline):
    """Run the checks in a daemon thread and observe the unit every ``interval`` s meanwhile.

    Returns None when the checks finished (``run.checked`` = (ok, reason), ``run.report`` set),
    or the reason the unit FAILED while they ran (the checks are then abandoned: a crashed unit
    fails the gate whatever they would say, and their retries could last far longer).
    """
    box, done = {}, threading.Event()

    def work():
        try:
            box["out"] = run.checks(deadline)
        except BaseException as exc:  # pylint: disable=broad-except
            box["exc"] = exc          # re-raised in the gate's thread below
        finally:
            done.set()
    threading.Thread(target=work, name="opskit-gate-checks", daemon=True).start()
    while not done.wait(max(0.01, run.interval)):
        state, reason = run.observe()
        if state == FAILED:
            return reason
    if "exc" in box:
        raise box["exc"]
    ok, reason, run.report = box["out"]
    run.checked = (ok, reason)
    return None


def _num(value):
    return ("%g" % value) if isinstance(value, float) else str(value)


def checks_runner(checks, run_checks, failing):
    """Adapt the health engine to the gate: (deadline) -> (ok, reason, report)."""
    if not checks:
        return None

    def run(deadline):
        report = run_checks(checks, deadline=deadline)
        ok = not failing(report["status"], "critical")
        return ok, (None if ok else checks_reason(report)), report
    return run
