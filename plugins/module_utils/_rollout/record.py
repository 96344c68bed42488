# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's record and states: what the drivers (docker.py, k8s.py) and the gate share.

- the gate states READY, WAITING, FAILED, and the pure observations that produce them:
  ``docker_state`` (a container's inspect), ``pod_failure`` and ``rollout_status`` (a Deployment);
- the last-known-good record: ``make_record`` / ``record_text`` write it, ``read_record`` /
  ``check_record`` read it back from the label (Docker, RECORD_LABEL) or annotation
  (Kubernetes, RECORD_KEY) where it travels with the unit;
- ImageMissing: the target image does not exist, nothing was changed.

This file imports no other file of _rollout.
"""

from __future__ import annotations

import json

from .._errors import OpsError, ServiceError
from .._health.services import ROLLOUT_FAILED, ROLLOUT_SUCCESS, deployment_status
from .._timeutil import rfc3339, utcnow

READY, WAITING, FAILED = "ready", "waiting", "failed"
RECORD_KEY = "opskit.runbook/last-known-good"   # annotation key (Kubernetes)
RECORD_LABEL = "opskit.runbook.last-known-good"  # label key (Docker)
RECORD_FORMAT = 1


class ImageMissing(OpsError):
    """The target image does not exist (or cannot be pulled): nothing was changed."""


def make_record(image, digest, spec, image_id=None):
    """The last-known-good record stored with the target (JSON-serialisable)."""
    return {"format": RECORD_FORMAT, "image": image, "digest": digest, "id": image_id,
            "recorded_at": rfc3339(utcnow()), "spec": spec}


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
    """What the result shows of a record: image, digest, recorded_at (None without a record)."""
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
    """The kubectl rollout-status rules on a Deployment (API JSON), as a gate state.

    The rules live in the health engine (``_health.services.deployment_status``); this maps its
    states. Returns (READY|WAITING|FAILED, message).
    """
    state, message = deployment_status(dep)
    return {ROLLOUT_SUCCESS: READY, ROLLOUT_FAILED: FAILED}.get(state, WAITING), message
