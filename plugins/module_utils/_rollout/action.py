# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's action: plan, switch, gate and roll back units, as plain functions over units.

A *unit* is one thing that is replaced as a whole: a Docker container, or a Kubernetes
Deployment. The drivers (docker.py ``DockerContainer``, k8s.py ``K8sDeployment``) implement the
unit interface:

    label() -> str                           the unit in words ("container web")
    describe() -> dict                       what the unit is (for the result)
    current() -> {"image", "digest"}         what runs now
    resolve(image, check_mode) -> {"image", "digest", "id"}   the target image (may raise ImageMissing)
    same(target) -> bool                     the target already runs
    recorded() -> record or None             the last-known-good stored with the unit
    matches(record) -> bool                  the recorded last-known-good already runs
    replace(target, keep_record)             record the last-known-good (or keep the recorded
                                             one when ``keep_record``), then switch
    restore(record)                          switch to a recorded last-known-good
    restart()                                restart without changing the image
    observe() -> (state, reason)             READY, WAITING or FAILED, in words
    revert()                                 undo replace/restore/restart's switch (fast path)
    commit()                                 drop what revert() needed (after the gate passed)
    logs(lines) -> [str]                     last log lines of the new container / failing pod
    digest_now(target) -> digest or None     (optional) the digest the target runs with

The record and the gate states are in record.py, the gate in gate.py. ``execute`` takes units
and plain callables, never AnsibleModule, so it is unit tested with fakes; the drivers are
tested against a real Docker Engine and a Kubernetes stand-in. ``run`` is the module's action.
"""

from __future__ import annotations

import contextlib
import signal
import threading
import time

from .._docker import DOCKER_OPTION_NAMES, docker_client
from .._errors import ConfigError, OpsError, ServiceError
from .._health.checks import validate_checks
from .._health.engine import run_checks
from .._health.ranges import failing
from .._kube import kube_client
from . import compose, scale
from .docker import DockerContainer, compose_units
from .gate import checks_runner, gate
from .k8s import K8sDeployment
from .record import READY, ImageMissing, record_summary


class Settings:
    """Budgets and switches of one rollout (plain values, from the module's params)."""

    def __init__(self, timeout=300.0, monitor=10.0, rollback_timeout=120.0, log_lines=20,
                 interval=0.25, checks=None, proxy=None):
        self.timeout, self.monitor, self.rollback_timeout = timeout, monitor, rollback_timeout
        self.log_lines, self.interval, self.checks = log_lines, interval, checks
        self.proxy = proxy   # start-first: (deadline) -> (ok, reason, report), before the old unit goes


# --------------------------------------------------------------------------- the actions

def _plan_deploy(unit, plan, image, check_mode):
    plan["to"] = unit.resolve(image, check_mode)
    plan["switch"] = not unit.same(plan["to"])
    if not plan["switch"] and not plan["to"].get("digest"):
        plan["to"]["digest"] = plan["from"].get("digest")


def _plan_rollback(unit, plan, image, check_mode):
    record = unit.recorded()
    if record is None:
        raise ServiceError("%s: no last-known-good is recorded on it (it was never changed by rollout)"
                           % unit.label())
    plan["record"] = record
    plan["to"] = {"image": record.get("image"), "digest": record.get("digest")}
    plan["switch"] = not unit.matches(record)


def _plan_restart(unit, plan, image, check_mode):
    plan["to"] = dict(plan["from"])
    plan["switch"] = True


def _plan_start(unit, plan, image, check_mode):
    plan["to"] = dict(plan["from"])
    plan["switch"] = not unit.running()


def _switch_deploy(unit, plan):
    # a target that is not healthy now is no "known good": keep the older record
    unit.replace(plan["to"], keep_record=unit.observe()[0] != READY)


def _switch_rollback(unit, plan):
    unit.restore(plan["record"])


def _switch_restart(unit, plan):
    unit.restart()


def _switch_start(unit, plan):
    unit.start()


class Action:
    """One entry of ACTIONS: how an action plans and switches a unit, and how it is reported."""

    def __init__(self, plan, switch, outcome, verb, success, takes_image=False, revertible=True,
                 reverted_outcome="rollback_failed", reverted_note=""):
        self.plan, self.switch = plan, switch              # (unit, plan, image, check_mode), (unit, plan)
        self.outcome, self.verb, self.success = outcome, verb, success
        self.takes_image = takes_image                     # deploy: needs an image, may find it missing
        self.revertible = revertible                       # restart has nothing to go back to
        self.reverted_outcome, self.reverted_note = reverted_outcome, reverted_note


ACTIONS = {
    "deploy": Action(_plan_deploy, _switch_deploy, "deployed", "upgrade", "%s upgraded and passed the gate",
                     takes_image=True, reverted_outcome="rolled_back"),
    "rollback": Action(_plan_rollback, _switch_rollback, "rolled_back", "roll back",
                       "%s restored to the recorded last-known-good and passed the gate",
                       reverted_note="; restored what ran before"),
    "restart": Action(_plan_restart, _switch_restart, "restarted", "restart", "%s restarted and passed the gate",
                      revertible=False),
    "start": Action(_plan_start, _switch_start, "started", "start", "%s started and passed the gate",
                    revertible=False),
}
# module state -> action (state=stopped is stop_units: no gate, nothing to revert)
STATES = {"deployed": "deploy", "rolled_back": "rollback", "restarted": "restart", "started": "start"}


# --------------------------------------------------------------------------- execute

def _gate(unit, settings, timeout, clock, sleep):
    return gate(unit.observe, timeout, settings.monitor, settings.checks, interval=settings.interval,
                clock=clock, sleep=sleep)


def _safe_logs(unit, lines):
    """The unit's last log lines; none when they cannot be read (the failure is reported anyway)."""
    try:
        return unit.logs(lines) if lines else []
    except OpsError:
        return []


def _labels(switching):
    return ", ".join(u.label() for u, _plan in switching)


def execute(units, action, image=None, settings=None, check_mode=False,
            clock=time.monotonic, sleep=time.sleep):
    """Run ``action`` (deploy, rollback, restart) over ``units`` in turn; return the result dict.

    A unit that fails the gate is reverted, and so are the units already switched (newest
    first); each reverted unit is verified by the same gate within ``rollback_timeout``.
    The old state is only dropped (commit) once every unit passed.
    """
    spec, settings, t0 = ACTIONS[action], settings or Settings(), clock()
    result = {"changed": False, "outcome": "unchanged", "reason": None, "logs": [], "units": [],
              "timings": {"upgrade": None, "ready": None, "checks": None, "monitor": None,
                          "rollback": None, "rollback_monitor": None, "total": None}}
    plans = [_plan(unit, spec, image, check_mode) for unit in units]
    _publish(result, plans)
    switching = [(u, p) for u, p in zip(units, plans) if p["switch"]]
    if not switching:
        result["last_known_good"] = _recorded_summary(units[0]) if units else None
        result["reason"] = ("%s already runs %s" % (units[0].label(), plans[0]["to"]["image"]) if units
                            else "no containers")
        return _finish(result, t0, clock)
    result["changed"], result["outcome"] = True, spec.outcome
    if check_mode:
        result["reason"] = "check mode: would %s %s" % (spec.verb, _labels(switching))
        return _finish(result, t0, clock)
    done, failure = _switch_all(result, spec, switching, settings, clock, sleep)
    for unit, plan in switching:
        plan["last_known_good"] = _recorded_summary(unit) if unit in done else None
    result["last_known_good"] = next((p["last_known_good"] for _unit, p in switching if p["last_known_good"]), None)
    if failure is None:
        _commit(result, done, switching)
        _publish(result, plans)
        result["reason"] = spec.success % _labels(switching)
    else:
        _fail(result, spec, done, failure, settings, clock, sleep)
    return _finish(result, t0, clock)


def _plan(unit, spec, image, check_mode):
    plan = {"target": unit.describe(), "from": unit.current(), "to": None, "last_known_good": None}
    spec.plan(unit, plan, image, check_mode)
    return plan


def _switch_all(result, spec, switching, settings, clock, sleep):
    """Switch the units in turn, each through the gate; stop at the first that fails.

    Returns (the units switched, None or (failed unit, reason)); ImageMissing propagates.
    """
    done, failure = [], None
    upgrade_start = clock()
    for unit, plan in switching:
        try:
            spec.switch(unit, plan)
        except ImageMissing:
            raise
        except OpsError as exc:
            done.append(unit)
            failure = (unit, "%s: %s" % (unit.label(), exc.msg))
            break
        done.append(unit)
        try:
            res = _gate(unit, settings, settings.timeout, clock, sleep)
        except Interrupted as exc:
            failure = (unit, "%s: %s" % (unit.label(), exc.msg))
            break
        _merge(result["timings"], res.timings)
        if res.report is not None:
            result["health"] = res.report
        if not res.ok:
            failure = (unit, "%s: %s" % (unit.label(), res.reason))
            break
        failure = _through_proxy(result, unit, settings)
        if failure is not None:
            break
    result["timings"]["upgrade"] = round(clock() - upgrade_start, 3)
    return done, failure


def _through_proxy(result, unit, settings):
    """start-first: the proxy's upstream answers while the old and the new unit both run."""
    if settings.proxy is None or getattr(unit, "order", None) != "start-first":
        return None
    ok, reason, report = settings.proxy(settings.timeout)
    result["proxy"] = report
    return None if ok else (unit, "%s: through the proxy: %s" % (unit.label(), reason))


def _commit(result, done, switching):
    """Every unit passed: drop what revert() needed, and fill in digests known only now. A unit
    whose old copy cannot be dropped is still upgraded: a warning says what is left."""
    for unit in done:
        try:
            unit.commit()
        except OpsError as exc:
            result.setdefault("warnings", []).append("%s passed the gate, but %s" % (unit.label(), exc.msg))
    for unit, plan in switching:
        if plan["to"].get("digest") is None and hasattr(unit, "digest_now"):
            plan["to"]["digest"] = unit.digest_now(plan["to"])


def _fail(result, spec, done, failure, settings, clock, sleep):
    """A unit failed: revert it and every unit switched before it, newest first."""
    failed_unit, reason = failure
    result["logs"] = _safe_logs(failed_unit, settings.log_lines)
    if not spec.revertible:
        # a restart has nothing to go back to: report whether it came back
        result["outcome"], result["healthy"], result["reason"] = spec.outcome, False, reason
        return
    rb_start, rb_monitor, rb_failures = clock(), 0.0, []
    for unit in reversed(done):
        try:
            unit.revert()
        except OpsError as exc:
            rb_failures.append("%s: %s" % (unit.label(), exc.msg))
            continue
        try:
            res = _gate(unit, settings, settings.rollback_timeout, clock, sleep)
        except Interrupted as exc:
            rb_failures.append("%s: %s" % (unit.label(), exc.msg))
            continue
        rb_monitor += res.timings.get("monitor") or 0.0
        if not res.ok:
            rb_failures.append("%s: %s" % (unit.label(), res.reason))
    result["timings"]["rollback"] = round(clock() - rb_start - rb_monitor, 3)
    result["timings"]["rollback_monitor"] = round(rb_monitor, 3)
    if rb_failures:
        result["outcome"] = "rollback_failed"
        result["reason"] = "%s; the rollback failed too: %s" % (reason, "; ".join(rb_failures))
    else:
        result["outcome"] = spec.reverted_outcome
        result["reason"] = reason + spec.reverted_note


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


def _finish(result, t0, clock):
    result["timings"]["total"] = round(clock() - t0, 3)
    if result["outcome"] in ("restarted", "started"):
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


def stop_units(units, check_mode=False, timeout=120.0, clock=time.monotonic, sleep=time.sleep):
    """state=stopped: stop every unit (the writers of a restore). Refuses before stopping any when
    one cannot be stopped (cannot_stop); a stop that fails names the units already stopped."""
    t0 = clock()
    refusals = [why for why in (u.cannot_stop() for u in units) if why]
    if refusals:
        raise ServiceError("refusing to stop anything: %s" % "; ".join(refusals))
    result = {"changed": False, "outcome": "stopped", "logs": [],
              "units": [{"target": u.describe(), "from": _ref(u.current()), "to": None} for u in units]}
    result.update(result["units"][0] if units else {})
    running = [u for u in units if u.running()]
    result["changed"] = bool(running)
    done = []
    for unit in [] if check_mode else running:
        try:
            unit.stop()
            _wait(unit.stopped, max(0.0, timeout - (clock() - t0)), clock, sleep)
        except OpsError as exc:
            raise ServiceError("%s%s" % (exc.msg, "; already stopped: %s" % ", ".join(u.label() for u in done)
                                         if done else ""), **result) from exc
        done.append(unit)
    verb = "would stop" if check_mode else "stopped"
    result["reason"] = ("%s %s" % (verb, ", ".join(u.label() for u in running)) if running
                        else "%s already stopped" % ", ".join(u.label() for u in units))
    result["timings"] = {"total": round(clock() - t0, 3)}
    return result


def _wait(done, seconds, clock, sleep):
    deadline = clock() + seconds
    while not done():
        if clock() >= deadline:
            raise ServiceError("still not stopped after %gs" % seconds)
        sleep(0.25)


def _scaled(params, settings, check_mode):
    """state=scaled: a Compose service or a Deployment to ``replicas``, each new unit gated."""
    if params.get("target") == "docker_container" or params.get("replicas") is None:
        raise ConfigError("state=scaled needs target=compose_service or k8s_deployment, and replicas")
    units = build_units(params, check_mode)

    def gate_unit(unit):
        return _gate(unit, settings, settings.timeout, time.monotonic, time.sleep)
    if params["target"] == "k8s_deployment":
        result = scale.scale_deployment(units[0], int(params["replicas"]), gate_unit, check_mode)
    else:
        result = scale.scale_compose(units[0].client, units, int(params["replicas"]), gate_unit, check_mode)
    result["repaired"] = [text for unit in units for text in getattr(unit, "repaired", None) or []]
    if result["outcome"] == "rolled_back":
        raise OpsError("scale rolled back: %s" % result["reason"], **result)
    return result


# --------------------------------------------------------------------------- the compose file follows

def _compose_plan(params, units, action):
    """The edit of the compose project that records the image this run puts in place (None when
    there is nothing to do); refuses (ConfigError) before anything changes when the project names
    a third image. Only for target=compose_service with compose_file=update."""
    if params.get("target") != "compose_service" or (params.get("compose_file") or "update") != "update" \
            or action not in ("deploy", "rollback") or not units:
        return None
    unit = units[0]
    running = unit.current()["image"]
    if action == "deploy":
        new = params["image"]
    else:
        record = unit.recorded()
        new = record.get("image") if record else running
    labels = (unit.inspect.get("Config") or {}).get("Labels") or {}
    try:
        edit = compose.plan_project(labels, params["name"], running, new)
    except compose.NotHere as exc:
        return {"warning": "%s: the compose file cannot follow (%s); the next docker compose up -d may bring back "
                           "what the project says" % (unit.label(), exc.msg)}
    return edit and dict(edit, image=new, running=running)


def _compose_follow(result, edit, spec, check_mode):
    """After the gate passed, write the edit; a rolled-back run leaves the file as it was."""
    if edit is None:
        return
    if "warning" in edit:
        result.setdefault("warnings", []).append(edit["warning"])
        return
    done = result.get("outcome") == spec.outcome and result.get("changed") and not check_mode
    result["compose_file"] = {"path": edit["path"], "from": edit["was"], "to": edit["image"], "changed": False}
    if done:
        compose.apply_edit(edit)
        result["compose_file"]["changed"] = True
    elif check_mode and result.get("changed"):
        result["compose_file"]["changed"] = True


def _order_notes(result, units):
    orders = [getattr(u, "order", None) for u in units]
    result["order"] = orders[0] if orders and len(set(orders)) == 1 else (orders or [None])[0]
    notes = [u.order_note for u in units if getattr(u, "order_note", None)]
    if notes:
        result["order_notes"] = notes
        result.setdefault("warnings", []).extend(notes)


# --------------------------------------------------------------------------- module entry point

class Interrupted(ServiceError):
    """SIGTERM arrived while a unit was switched or gated: it is reverted like a failed gate."""


@contextlib.contextmanager
def reverting_on_sigterm():
    """While switching and gating, SIGTERM (an Ansible timeout, a cancelled AWX job) raises
    Interrupted in the module's thread, so the switched units are reverted before it exits; a
    second SIGTERM is ignored until then (SIGKILL leaves the repair to the next run)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def on_term(signum, _frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Interrupted("interrupted by signal %d (SIGTERM) before the gate passed" % signum)
    previous = signal.signal(signal.SIGTERM, on_term)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _positive(params, key, allow_zero=False):
    value = params.get(key)
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError("%s must be a %s number of seconds, got %r"
                          % (key, "non-negative" if allow_zero else "positive", value))
    return float(value)


def build_units(params, check_mode=False):
    """The units of ``params['target']`` (connects to Docker or Kubernetes). The Docker units put
    back what an interrupted earlier run left (their ``repaired``; only reported in check mode)."""
    target = params["target"]
    if target in ("docker_container", "compose_service"):
        client = docker_client(params)
        opts = dict(pull=params.get("pull") or "missing", stop_timeout=params.get("stop_timeout") or 10,
                    check_mode=check_mode, order=params.get("order") or "stop-first")
        if target == "docker_container":
            return [DockerContainer(client, params["name"], **opts)]
        return compose_units(client, params["project"], params["name"], **opts)
    api = kube_client(params.get("kubeconfig"), params.get("context"), bool(params.get("in_cluster")))
    return [K8sDeployment(api, params.get("namespace") or "default", params["name"], params.get("container"),
                          order=params.get("order") or "stop-first")]


def _settings(params):
    settings = Settings(timeout=_positive(params, "timeout"), monitor=_positive(params, "monitor", True),
                        rollback_timeout=_positive(params, "rollback_timeout"),
                        log_lines=max(0, int(params.get("log_lines") or 0)))
    if params.get("stop_timeout") is not None and params["stop_timeout"] < 0:
        raise ConfigError("stop_timeout must be >= 0, got %r" % params["stop_timeout"])
    defaults = {k: params.get(k) for k in DOCKER_OPTION_NAMES}
    if params.get("health_checks"):
        settings.checks = checks_runner(validate_checks(params["health_checks"], defaults=defaults), run_checks, failing)
    if params.get("proxy_checks"):
        settings.proxy = checks_runner(validate_checks(params["proxy_checks"], defaults=defaults), run_checks, failing)
    return settings


def run(params, check_mode=False):
    """The module's action: validate, build the units, execute, decide whether the task fails."""
    settings = _settings(params)
    if params.get("state") == "stopped":
        units = build_units(params, check_mode)
        return stop_units(units, check_mode, timeout=settings.timeout)
    if params.get("state") == "scaled":
        return _scaled(params, settings, check_mode)
    action = STATES[params.get("state") or "deployed"]
    spec = ACTIONS[action]
    if spec.takes_image and not params.get("image"):
        raise ConfigError("image is required for state=deployed")
    units = build_units(params, check_mode)
    edit = _compose_plan(params, units, action)
    try:
        with reverting_on_sigterm():
            result = execute(units, action, params.get("image"), settings, check_mode)
    except ImageMissing as exc:
        if not spec.takes_image:
            raise
        result = missing_image_result(units, params.get("image"), exc)
    _compose_follow(result, edit, spec, check_mode)
    _order_notes(result, units)
    result["repaired"] = [text for unit in units for text in getattr(unit, "repaired", None) or []]
    result.setdefault("warnings", []).extend(result["repaired"])
    outcome = result["outcome"]
    if outcome == "rollback_failed" or (outcome == "rolled_back" and spec.takes_image and params.get("fail_on_rollback", True)):
        raise OpsError("rollout %s: %s" % (outcome.replace("_", " "), result["reason"]), **result)
    if outcome in ("restarted", "started") and result.get("healthy") is False:
        raise OpsError("%s did not pass the gate: %s" % (spec.verb, result["reason"]), **result)
    return result
