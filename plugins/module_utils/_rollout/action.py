# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout: plan, gate and rollback as plain functions over observations.

A *unit* is one thing that is replaced as a whole: a Docker container, or a Kubernetes
Deployment. The drivers (``_rollout_docker``, ``_rollout_k8s``) implement the unit interface:

    describe() -> dict                       what the unit is (for the result)
    current() -> {"image", "digest"}         what runs now
    resolve(image) -> {"image", "digest", "id"}   the target image (may raise ImageMissing)
    same(target) -> bool                     the target already runs
    recorded() -> record or None             the last-known-good stored with the unit
    replace(target, keep_record)             record the last-known-good (or keep the recorded
                                             one when ``keep_record``), then switch
    restore(record)                          switch to a recorded last-known-good
    restart()                                restart without changing the image
    observe() -> (state, reason)             READY, WAITING or FAILED, in words
    revert()                                 undo replace/restore/restart's switch (fast path)
    commit()                                 drop what revert() needed (after the gate passed)
    logs(lines) -> [str]                     last log lines of the new container / failing pod

Everything here takes those units and plain callables, never AnsibleModule, so it is unit
tested with fakes; the drivers are tested against a real Docker Engine and a Kubernetes stand-in.
"""

from __future__ import annotations

import json
import time

from .._errors import OpsError, ServiceError

READY, WAITING, FAILED = "ready", "waiting", "failed"
OUTCOMES = ("deployed", "rolled_back", "rollback_failed", "unchanged", "restarted")
RECORD_KEY = "opskit.runbook/last-known-good"   # annotation key (Kubernetes)
RECORD_LABEL = "opskit.runbook.last-known-good"  # label key (Docker)
RECORD_FORMAT = 1


class ImageMissing(OpsError):
    """The target image does not exist (or cannot be pulled): nothing was changed."""


class RollbackFailed(OpsError):
    """Used by drivers when the fast revert path itself fails."""


def now_rfc3339():
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def make_record(image, digest, spec, image_id=None):
    """The last-known-good record stored with the target (JSON-serialisable)."""
    return {"format": RECORD_FORMAT, "image": image, "digest": digest, "id": image_id,
            "recorded_at": now_rfc3339(), "spec": spec}


def check_record(record, where):
    """Validate a record read back from a label/annotation; ServiceError when unusable."""
    if not isinstance(record, dict) or not record.get("image") or "spec" not in record:
        raise ServiceError("%s: the recorded last-known-good is not readable" % where)
    if int(record.get("format") or 0) > RECORD_FORMAT:
        raise ServiceError("%s: the recorded last-known-good has a newer format (%s) than this module knows (%s)"
                           % (where, record.get("format"), RECORD_FORMAT))
    return record


def record_text(record):
    """A record as the compact JSON stored in a label/annotation."""
    return json.dumps(record, separators=(",", ":"), sort_keys=True)


def read_record(text, where):
    """The record stored as JSON ``text`` in a label/annotation (None when there is none)."""
    if not text:
        return None
    try:
        record = json.loads(text)
    except ValueError:
        record = None
    return check_record(record, where)


def record_summary(record):
    if not record:
        return None
    return {k: record.get(k) for k in ("image", "digest", "recorded_at")}


# --------------------------------------------------------------------------- observations

def docker_state(inspect, baseline_restarts=0):
    """(state, reason) of a container from its ``inspect`` output (the monitoring-tool mapping).

    FAILED at once for exited, dead, paused, restarting, OOMKilled, unhealthy and for a restart
    counter above ``baseline_restarts`` (a crash loop between two observations); WAITING while
    created or health "starting"; READY when healthy, or running without a healthcheck.
    """
    st = inspect.get("State") or {}
    status = st.get("Status") or "unknown"
    code = st.get("ExitCode")
    restarts = int(inspect.get("RestartCount") or 0)
    if st.get("OOMKilled"):
        return FAILED, "container was OOMKilled (exit code %s)" % code
    if status == "restarting" or st.get("Restarting"):
        return FAILED, "container is restarting: crash loop (exit code %s, %d restart(s))" % (code, restarts)
    if restarts > baseline_restarts:
        return FAILED, "container restarted %d time(s) (last exit code %s)" % (restarts - baseline_restarts, code)
    if status in ("exited", "dead"):
        err = (st.get("Error") or "").strip()
        what = "exited" if status == "exited" else "is dead"
        return FAILED, "container %s with code %s%s" % (what, code, (": %s" % err) if err else "")
    if status == "paused":
        return FAILED, "container is paused"
    if status in ("created", "unknown"):
        return WAITING, "container %s, not running yet" % status
    if status != "running":
        return WAITING, "container is %s" % status
    health = st.get("Health")
    if health and health.get("Status") and health.get("Status") != "none":
        hs = health["Status"]
        if hs == "healthy":
            return READY, "running and healthy"
        log = health.get("Log") or []
        last = " ".join(str((log[-1] or {}).get("Output") or "").split())[:200] if log else ""
        if hs == "unhealthy":
            return FAILED, "healthcheck failed %s time(s)%s" % (
                health.get("FailingStreak"), (": %s" % last) if last else "")
        return WAITING, "health is %s%s" % (hs, (" (last: %s)" % last) if last else "")
    return READY, "running (no healthcheck)"


POD_FAIL_WAITING = ("CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "CreateContainerConfigError",
                    "CreateContainerError", "InvalidImageName", "ErrImageNeverPull", "RunContainerError")


def pod_failure(pod, baseline_restarts=None):
    """Reason why ``pod`` (API JSON) will not become ready by itself, or None.

    ``baseline_restarts`` maps container name to the restart count first seen; an increase
    counts as a crash.
    """
    name = (pod.get("metadata") or {}).get("name", "?")
    status = pod.get("status") or {}
    if status.get("phase") == "Failed":
        return "pod %s failed: %s" % (name, status.get("reason") or status.get("message") or "phase Failed")
    for cs in (status.get("initContainerStatuses") or []) + (status.get("containerStatuses") or []):
        cname = cs.get("name", "?")
        waiting = (cs.get("state") or {}).get("waiting") or {}
        if waiting.get("reason") in POD_FAIL_WAITING:
            msg = " ".join(str(waiting.get("message") or "").split())[:200]
            return "pod %s container %s: %s%s" % (name, cname, waiting["reason"], (" (%s)" % msg) if msg else "")
        for key in ("state", "lastState"):
            term = (cs.get(key) or {}).get("terminated") or {}
            if term.get("reason") == "OOMKilled":
                return "pod %s container %s: OOMKilled" % (name, cname)
        if baseline_restarts is not None:
            base = baseline_restarts.setdefault(cname + "@" + name, int(cs.get("restartCount") or 0))
            if int(cs.get("restartCount") or 0) > base:
                term = (cs.get("lastState") or {}).get("terminated") or {}
                return "pod %s container %s restarted (exit code %s%s)" % (
                    name, cname, term.get("exitCode"), (", %s" % term["reason"]) if term.get("reason") else "")
    return None


def rollout_status(dep):
    """kubectl rollout-status rules (reference rollout.md) on a Deployment (API JSON), as a gate state.

    The rules live in the health engine (``_health.deployment_status``); this maps its states.
    Returns (READY|WAITING|FAILED, message).
    """
    from .._health.engine import ROLLOUT_FAILED, ROLLOUT_SUCCESS, deployment_status
    state, message = deployment_status(dep)
    return {ROLLOUT_SUCCESS: READY, ROLLOUT_FAILED: FAILED}.get(state, WAITING), message


# --------------------------------------------------------------------------- the gate

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


def gate(observe, timeout, monitor, checks=None, interval=0.25, check_every=1.0,
         clock=time.monotonic, sleep=time.sleep):
    """Wait for the platform to be ready, run the health checks, then watch for ``monitor`` s.

    ``observe()`` -> (READY|WAITING|FAILED, reason). ``checks(deadline)`` -> (ok, reason, report)
    or None when there are no health checks; a check's own retries/interval decide how long it
    may fail before it counts. FAILED ends the gate at once (fail fast); WAITING past ``timeout``
    fails it; anything but READY inside the monitor window fails it.
    Returns a GateResult with timings in seconds per phase (ready, checks, monitor).
    """
    timings = {"ready": None, "checks": None, "monitor": None}
    start = clock()
    report = None

    def took(since):
        return round(clock() - since, 3)

    # 1. platform readiness, within the timeout budget
    while True:
        state, reason = observe()
        if state == FAILED:
            timings["ready"] = took(start)
            return GateResult(False, "ready", reason, timings)
        if state == READY:
            break
        if clock() - start >= timeout:
            timings["ready"] = took(start)
            return GateResult(False, "ready", "not ready within the %ss timeout: %s" % (_num(timeout), reason),
                              timings)
        sleep(max(0.0, min(interval, timeout - (clock() - start))))
    timings["ready"] = took(start)
    # 2. health checks, with what is left of the timeout
    if checks is not None:
        cstart = clock()
        ok, creason, report = checks(max(1.0, timeout - (clock() - start)))
        timings["checks"] = took(cstart)
        if not ok:
            state, reason = observe()  # a crashed container explains a failed check better
            return GateResult(False, "checks", creason if state == READY else reason, timings, report)
    # 3. monitor window: must stay ready (and the checks passing) throughout
    mstart = clock()
    last_checks = mstart
    while True:
        elapsed = clock() - mstart
        if elapsed >= monitor:
            break
        sleep(min(interval, monitor - elapsed))
        state, reason = observe()
        if state != READY:
            timings["monitor"] = took(mstart)
            return GateResult(False, "monitor", "within the %ss monitor window: %s" % (_num(monitor), reason),
                              timings, report)
        final = clock() - mstart >= monitor
        if checks is not None and (final or clock() - last_checks >= check_every):
            ok, creason, report = checks(max(1.0, monitor - (clock() - mstart)))
            last_checks = clock()
            if not ok:
                timings["monitor"] = took(mstart)
                return GateResult(False, "monitor", "within the %ss monitor window: %s" % (_num(monitor), creason),
                                  timings, report)
    timings["monitor"] = took(mstart)
    return GateResult(True, "passed", None, timings, report)


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


# --------------------------------------------------------------------------- orchestration

class Settings:
    """Budgets and switches of one rollout (plain values, from the module's params)."""

    def __init__(self, timeout=300.0, monitor=10.0, rollback_timeout=120.0, log_lines=20,
                 interval=0.25, checks=None):
        self.timeout, self.monitor, self.rollback_timeout = timeout, monitor, rollback_timeout
        self.log_lines, self.interval, self.checks = log_lines, interval, checks


def _gate(unit, settings, timeout, clock, sleep):
    return gate(unit.observe, timeout, settings.monitor, settings.checks, interval=settings.interval,
                clock=clock, sleep=sleep)


def _safe_logs(unit, lines):
    try:
        return unit.logs(lines) if lines else []
    except Exception:  # pylint: disable=broad-except
        return []


def execute(units, action, image=None, settings=None, check_mode=False,
            clock=time.monotonic, sleep=time.sleep):
    """Run ``action`` (deploy, rollback, restart) over ``units`` in turn; return the result dict.

    A unit that fails the gate is reverted, and so are the units already switched (newest
    first); each reverted unit is verified by the same gate within ``rollback_timeout``.
    The old state is only dropped (commit) once every unit passed.
    """
    settings = settings or Settings()
    t0 = clock()
    result = {"changed": False, "outcome": "unchanged", "reason": None, "logs": [], "units": [],
              "timings": {"upgrade": None, "ready": None, "checks": None, "monitor": None,
                          "rollback": None, "rollback_monitor": None, "total": None}}
    plans = []
    for unit in units:
        plan = {"target": unit.describe(), "from": unit.current(), "to": None, "last_known_good": None}
        if action == "deploy":
            plan["to"] = unit.resolve(image, check_mode)
            plan["switch"] = not unit.same(plan["to"])
            if not plan["switch"] and not plan["to"].get("digest"):
                plan["to"]["digest"] = plan["from"].get("digest")
        elif action == "rollback":
            record = unit.recorded()
            if record is None:
                raise ServiceError("%s: no last-known-good is recorded on it (it was never changed by rollout)"
                                   % unit.label())
            plan["record"] = record
            plan["to"] = {"image": record.get("image"), "digest": record.get("digest")}
            plan["switch"] = not unit.matches(record)
        else:  # restart
            plan["to"] = dict(plan["from"])
            plan["switch"] = True
        plans.append(plan)
    _publish(result, plans)
    first = plans[0] if plans else {}
    switching = [(u, p) for u, p in zip(units, plans) if p["switch"]]
    if not switching:
        result["last_known_good"] = _recorded_summary(units[0]) if units else None
        result["reason"] = ("%s already runs %s" % (units[0].label(), first["to"]["image"]) if units
                            else "no containers")
        return _finish(result, t0, clock)
    result["changed"] = True
    result["outcome"] = {"deploy": "deployed", "rollback": "rolled_back", "restart": "restarted"}[action]
    if check_mode:
        result["reason"] = "check mode: would %s %s" % (
            {"deploy": "upgrade", "rollback": "roll back", "restart": "restart"}[action],
            ", ".join(u.label() for u, _plan in switching))
        return _finish(result, t0, clock)

    done, failure = [], None
    upgrade_start = clock()
    for unit, plan in switching:
        try:
            if action == "deploy":
                # a target that is not healthy now is no "known good": keep the older record
                unit.replace(plan["to"], keep_record=unit.observe()[0] != READY)
            elif action == "rollback":
                unit.restore(plan["record"])
            else:
                unit.restart()
        except ImageMissing:
            raise
        except OpsError as exc:
            done.append(unit)
            failure = (unit, "%s: %s" % (unit.label(), exc.msg), None)
            break
        done.append(unit)
        res = _gate(unit, settings, settings.timeout, clock, sleep)
        _merge(result["timings"], res.timings)
        if res.report is not None:
            result["health"] = res.report
        if not res.ok:
            failure = (unit, "%s: %s" % (unit.label(), res.reason), res)
            break
    result["timings"]["upgrade"] = round(clock() - upgrade_start, 3)
    for unit, plan in switching:
        plan["last_known_good"] = _recorded_summary(unit) if unit in done else None
    result["last_known_good"] = next((p["last_known_good"] for _unit, p in switching if p["last_known_good"]), None)

    if failure is None:
        for unit in done:
            unit.commit()
        for unit, plan in switching:
            if plan["to"].get("digest") is None and hasattr(unit, "digest_now"):
                plan["to"]["digest"] = unit.digest_now(plan["to"])
        _publish(result, plans)
        result["reason"] = _success_reason(action, switching)
        return _finish(result, t0, clock)

    # a unit failed: revert it and every unit switched before it, newest first
    failed_unit, reason, _res = failure
    result["logs"] = _safe_logs(failed_unit, settings.log_lines)
    rb_start = clock()
    rb_failures = []
    if action == "restart":
        # a restart has nothing to go back to: report whether it came back
        result["outcome"] = "restarted"
        result["healthy"] = False
        result["reason"] = reason
        return _finish(result, t0, clock)
    rb_monitor = 0.0
    for unit in reversed(done):
        try:
            unit.revert()
        except OpsError as exc:
            rb_failures.append("%s: %s" % (unit.label(), exc.msg))
            continue
        res = gate(unit.observe, settings.rollback_timeout, settings.monitor, settings.checks,
                   interval=settings.interval, clock=clock, sleep=sleep)
        rb_monitor += res.timings.get("monitor") or 0.0
        if not res.ok:
            rb_failures.append("%s: %s" % (unit.label(), res.reason))
    result["timings"]["rollback"] = round(clock() - rb_start - rb_monitor, 3)
    result["timings"]["rollback_monitor"] = round(rb_monitor, 3)
    if rb_failures:
        result["outcome"] = "rollback_failed"
        result["reason"] = "%s; the rollback failed too: %s" % (reason, "; ".join(rb_failures))
    else:
        result["outcome"] = "rolled_back" if action == "deploy" else "rollback_failed"
        result["reason"] = reason + ("" if action == "deploy" else "; restored what ran before")
    return _finish(result, t0, clock)


def _recorded_summary(unit):
    try:
        return record_summary(unit.recorded())
    except OpsError:
        return None


def _publish(result, plans):
    """Per-unit target/from/to, and the first unit's at the top level."""
    result["units"] = [{"target": p["target"], "from": _ref(p["from"]), "to": _ref(p["to"])} for p in plans]
    if result["units"]:
        result.update(result["units"][0])


def _ref(image):
    return {"image": (image or {}).get("image"), "digest": (image or {}).get("digest")}


def _merge(total, part):
    for key, value in part.items():
        if value is not None:
            total[key] = round((total.get(key) or 0.0) + value, 3)


def _success_reason(action, switching):
    labels = ", ".join(u.label() for u, _plan in switching)
    return {"deploy": "%s upgraded and passed the gate" % labels,
            "rollback": "%s restored to the recorded last-known-good and passed the gate" % labels,
            "restart": "%s restarted and passed the gate" % labels}[action]


def _finish(result, t0, clock):
    result["timings"]["total"] = round(clock() - t0, 3)
    if result["outcome"] == "restarted":
        result.setdefault("healthy", True)
    return result


def missing_image_result(units, image, exc):
    """The result when the target image cannot be found: nothing was touched."""
    unit = units[0]
    result = {"changed": False, "outcome": "rolled_back", "target": unit.describe(), "from": unit.current(),
              "to": {"image": image, "digest": None}, "logs": [], "last_known_good": None,
              "reason": "%s; nothing was changed, %s keeps running %s" % (
                  exc.msg, unit.label(), unit.current().get("image")),
              "timings": {"upgrade": 0.0, "ready": None, "checks": None, "monitor": None, "rollback": 0.0,
                          "rollback_monitor": None, "total": 0.0}}
    result["units"] = [{"target": u.describe(), "from": u.current(), "to": result["to"]} for u in units]
    return result


# --------------------------------------------------------------------------- module entry point

def _positive(params, key, allow_zero=False):
    value = params.get(key)
    if value is None or value < 0 or (value == 0 and not allow_zero):
        from .._errors import ConfigError
        raise ConfigError("%s must be a %s number of seconds, got %r"
                          % (key, "non-negative" if allow_zero else "positive", value))
    return float(value)


def build_units(params):
    """The units of ``params['target']`` (connects to Docker or Kubernetes)."""
    target = params["target"]
    if target in ("docker_container", "compose_service"):
        from .._docker import docker_client
        from .docker import DockerContainer, compose_units
        client = docker_client(params)
        opts = dict(pull=params.get("pull") or "missing", stop_timeout=params.get("stop_timeout") or 10)
        if target == "docker_container":
            return [DockerContainer(client, params["name"], **opts)]
        return compose_units(client, params["project"], params["name"], **opts)
    from .k8s import K8sDeployment, k8s_api_client
    api = k8s_api_client(params.get("kubeconfig"), params.get("context"), bool(params.get("in_cluster")))
    return [K8sDeployment(api, params.get("namespace") or "default", params["name"], params.get("container"))]


def run(params, check_mode=False):
    """The module's action: validate, build the units, execute, decide whether the task fails."""
    from .._errors import ConfigError
    settings = Settings(timeout=_positive(params, "timeout"), monitor=_positive(params, "monitor", True),
                        rollback_timeout=_positive(params, "rollback_timeout"),
                        log_lines=max(0, int(params.get("log_lines") or 0)))
    if params.get("stop_timeout") is not None and params["stop_timeout"] < 0:
        raise ConfigError("stop_timeout must be >= 0, got %r" % params["stop_timeout"])
    if params.get("health_checks"):
        from .._docker import DOCKER_OPTION_NAMES
        from .._health.engine import failing, run_checks, validate_checks
        checks = validate_checks(params["health_checks"],
                                 defaults={k: params.get(k) for k in DOCKER_OPTION_NAMES})
        settings.checks = checks_runner(checks, run_checks, failing)
    action = {"deployed": "deploy", "rolled_back": "rollback", "restarted": "restart"}[params.get("state") or "deployed"]
    if action == "deploy" and not params.get("image"):
        raise ConfigError("image is required for state=deployed")
    units = build_units(params)
    try:
        result = execute(units, action, params.get("image"), settings, check_mode)
    except ImageMissing as exc:
        if action != "deploy":
            raise
        result = missing_image_result(units, params.get("image"), exc)
    outcome = result["outcome"]
    if outcome == "rollback_failed" or (outcome == "rolled_back" and action == "deploy" and params.get("fail_on_rollback", True)):
        raise OpsError("rollout %s: %s" % (outcome.replace("_", " "), result["reason"]), **result)
    if outcome == "restarted" and result.get("healthy") is False:
        raise OpsError("restart did not pass the gate: %s" % result["reason"], **result)
    return result
