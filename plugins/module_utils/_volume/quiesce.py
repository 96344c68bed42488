# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Quiescing Docker containers around a backup or restore.

* ``select_containers`` (pure): which containers to stop for a volume or host path.
* ``Quiescer``: stops exactly the selected running containers and starts exactly those again,
  also when the work in between fails or is interrupted (``start_stopped`` waits for a
  container still stopping); reports failures to restart by container name. A restore that
  left its target half-written holds them stopped instead (``hold``).
* ``Guardian``: a small detached process that restarts the stopped containers (and removes
  helper containers) if the module process dies before it could (SIGKILL, OOM killer, a lost
  SSH session). It is told about every stop and restart through a pipe; the pipe closing
  without a final ``done`` is the signal that the module died. Between ``hold`` and
  ``release`` events (a restore's destructive phase) it leaves the containers stopped.
* ``api_errors()``: the exceptions a Docker API call can raise, for the ``except`` clauses of
  this package (the ground floor's ``_docker.docker_errors``).
"""

from __future__ import annotations

import json
import os
import signal
import time

from .._errors import ConfigError, ServiceError
from .._docker import docker_errors as api_errors

STOP_LABEL = "opskit.runbook.stop-during-backup"
HELPER_LABEL = "opskit.runbook.helper"
AUTO, NONE = "auto", "none"
STOP_GRACE = 45.0   # seconds a container still stopping is waited for (stop_timeout + 15 by default)
START_ATTEMPTS = 3


def container_view(summary):
    """The fields used here of a container from ``GET /containers/json`` or an inspect."""
    if "Names" in summary:  # list API
        names = summary.get("Names") or []
        name = names[0].lstrip("/") if names else summary["Id"][:12]
        running = summary.get("State") == "running"
        labels = summary.get("Labels") or {}
        mounts = summary.get("Mounts") or []
        image = summary.get("ImageID") or summary.get("Image")
    else:  # inspect API
        name = (summary.get("Name") or summary["Id"][:12]).lstrip("/")
        running = bool((summary.get("State") or {}).get("Running"))
        labels = (summary.get("Config") or {}).get("Labels") or {}
        mounts = summary.get("Mounts") or []
        image = summary.get("Image")
    return {"id": summary["Id"], "name": name, "running": running, "labels": labels,
            "mounts": [{"type": m.get("Type"), "name": m.get("Name"), "source": m.get("Source"),
                        "destination": m.get("Destination")} for m in mounts],
            "image": image}


def _path_related(a, b):
    a, b = os.path.normpath(a), os.path.normpath(b)
    try:
        common = os.path.commonpath([a, b])
    except ValueError:
        return False
    return common in (a, b)


def uses(container, volume=None, path=None):
    """Whether ``container`` mounts ``volume``, or bind-mounts ``path`` (or a path in or above it)."""
    for mount in container["mounts"]:
        if volume is not None and mount["type"] == "volume" and mount["name"] == volume:
            return True
        if path is not None and mount["type"] == "bind" and mount["source"] \
                and _path_related(mount["source"], path):
            return True
    return False


def normalize_selection(value):
    """``stop_containers`` -> ("auto"|"none"|"list", [names])."""
    items = [str(v).strip() for v in (value or []) if str(v).strip()]
    if not items or items == [NONE]:
        return NONE, []
    if items == [AUTO]:
        return AUTO, []
    if AUTO in items or NONE in items:
        raise ConfigError("stop_containers: 'auto' and 'none' cannot be combined with container"
                          " names (got %s)" % ", ".join(items))
    return "list", items


def select_containers(containers, mode, names=(), volume=None, path=None):
    """The containers to stop, in order, as container views (running ones only).

    ``containers``: views of every container of the daemon (``container_view``).
    ``auto``: those using the volume/path; if any of them carries the label
    ``opskit.runbook.stop-during-backup=true``, only the labelled ones. Helper containers of
    this collection are never selected. A list names containers (names or id prefixes) that
    must exist. Returns (to_stop, considered): ``considered`` also holds the stopped ones.
    """
    candidates = [c for c in containers if c["labels"].get(HELPER_LABEL) is None]
    if mode == NONE:
        return [], []
    if mode == AUTO:
        users = [c for c in candidates if uses(c, volume, path)]
        labelled = [c for c in users
                    if str(c["labels"].get(STOP_LABEL, "")).strip().lower() == "true"]
        chosen = labelled or users
    else:
        chosen, missing = [], []
        for name in names:
            match = [c for c in candidates if c["name"] == name.lstrip("/")] or \
                    [c for c in candidates if len(name) >= 6 and c["id"].startswith(name)]
            if len(match) != 1:
                missing.append(name)
            elif match[0] not in chosen:
                chosen.append(match[0])
        if missing:
            raise ConfigError("stop_containers: no such container: %s" % ", ".join(missing))
    return [c for c in chosen if c["running"]], chosen


class Guardian:
    """A detached watchdog process; see the module docstring. ``client_factory`` is called in
    the child to get a fresh Docker API client."""

    def __init__(self, client_factory, stop_wait=STOP_GRACE):
        self.fd = None
        read_fd, write_fd = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, exercised by integration tests
            try:
                os.close(write_fd)
                os.setsid()  # survive a kill of the module's process group
                if os.fork() == 0:  # double fork: not a descendant of the module any more
                    _detach(read_fd)
                    _watch(read_fd, client_factory, stop_wait)
            finally:
                os._exit(0)
        os.close(read_fd)
        try:
            os.waitpid(pid, 0)  # the intermediate child exits at once
        except ChildProcessError:
            pass
        self.fd = write_fd

    def note(self, event, container_id):
        if self.fd is not None:
            try:
                os.write(self.fd, (json.dumps([event, container_id]) + "\n").encode())
            except OSError:
                pass

    def done(self):
        """Everything is restarted and removed: let the watchdog exit without acting."""
        if self.fd is None:
            return
        self.note("done", "")
        os.close(self.fd)
        self.fd = None


def _detach(keep_fd):  # pragma: no cover - child process
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)  # never hold the module's stdout open
    os.closerange(3, keep_fd)
    os.closerange(keep_fd + 1, 65536)


def _watch(read_fd, client_factory, stop_wait):  # pragma: no cover - child process
    stopped, helpers, buf, held = [], [], b"", False
    while True:
        data = os.read(read_fd, 65536)
        if not data:
            break
        buf += data
        while b"\n" in buf:
            line, buf = buf.split(b"\n", 1)
            event, cid = json.loads(line.decode())
            if event == "done":
                return
            if event == "stopped" and cid not in stopped:
                stopped.append(cid)
            elif event == "started" and cid in stopped:
                stopped.remove(cid)
            elif event == "helper":
                helpers.append(cid)
            elif event == "removed" and cid in helpers:
                helpers.remove(cid)
            elif event in ("hold", "release"):
                held = event == "hold"
    # The module died before it could clean up: the services first, then the helpers (whose
    # removal may wait until the daemon notices that the archive stream lost its reader).
    client = client_factory()
    if not held:  # a restore that was not all or nothing: the services stay stopped
        for cid in reversed(stopped):
            try:
                start_stopped(client, cid, stop_wait)
            except ServiceError:
                pass  # nobody to tell: the next run finds it stopped
    for cid in helpers:
        try:
            client.remove_container(cid, force=True, v=True)  # and its anonymous volumes
        except api_errors():
            pass


def _state(client, cid):
    return client.inspect_container(cid).get("State") or {}


def _exit_reason(state):
    return "exited at once with code %s%s" % (
        state.get("ExitCode"), (": %s" % state["Error"]) if state.get("Error") else "")


def start_stopped(client, cid, stop_wait=STOP_GRACE, attempts=START_ATTEMPTS, clock=time.monotonic,
                  sleep=time.sleep):
    """Start container ``cid`` again after a stop, and make sure that it runs.

    A container that is still stopping (the module was killed or interrupted during its stop)
    answers ``start`` with 304, which docker-py takes for success, and exits a moment later.
    So: wait until it is not running (at most ``stop_wait`` seconds: the daemon kills it after
    its stop timeout), start it, check that it runs with a new StartedAt; up to ``attempts``
    times. A container that never stopped (its stop failed) is left running. Raises
    ServiceError, or the Docker error of the last attempt, when it does not run.
    """
    deadline = clock() + stop_wait
    why = "did not start"
    for attempt in range(attempts):
        if attempt:
            sleep(1)
        try:
            state = _state(client, cid)
            while state.get("Running") and clock() < deadline:
                sleep(0.2)
                state = _state(client, cid)
            if state.get("Running"):
                return
            before = state.get("StartedAt")
            client.start(cid)
            state = _state(client, cid)
        except api_errors():
            if attempt + 1 == attempts:
                raise
            continue
        if state.get("Running") and state.get("StartedAt") != before:
            return
        why = _exit_reason(state)
    raise ServiceError(why)


class Quiescer:
    """Stop the selected containers, start exactly those again (``resume``), once.

    ``hold(reason)`` before ``resume`` keeps them stopped (a restore that left the target
    half-written): ``left_stopped`` then names them and ``failure_message`` says why.
    """

    def __init__(self, client, to_stop, stop_timeout=30, guardian=None, docker_error=None,
                 clock=time.monotonic, sleep=time.sleep, wait_clock=time.monotonic):
        self.client, self.to_stop, self.stop_timeout = client, list(to_stop), stop_timeout
        self.guardian, self.clock, self.sleep, self.wait_clock = guardian, clock, sleep, wait_clock
        self.docker_error = docker_error or (lambda exc, what: ServiceError("%s: %s" % (what, exc)))
        self.stopped, self.restarted, self.failures, self.left_stopped = [], [], [], []
        self.started_at = self.resumed_at = None
        self.held = None
        self._resumed = False
        self._old_term = None

    @property
    def downtime(self):
        if self.started_at is None:
            return 0.0
        end = self.resumed_at if self.resumed_at is not None else self.clock()
        return round(end - self.started_at, 3)

    def _on_term(self, signum, _frame):
        raise ServiceError("interrupted by signal %d" % signum)

    def stop(self):
        if not self.to_stop:
            return
        try:
            self._old_term = signal.signal(signal.SIGTERM, self._on_term)
        except ValueError:  # not the main thread
            self._old_term = None
        self.started_at = self.clock()
        for container in self.to_stop:
            if self.guardian:
                self.guardian.note("stopped", container["id"])
            self.stopped.append(container)  # maybe stopped, also when interrupted: resume starts it
            try:
                self.client.stop(container["id"], timeout=self.stop_timeout)
            except api_errors() as exc:
                raise self.docker_error(exc, "stopping container %s" % container["name"]) from exc

    def hold(self, reason):
        """Keep the stopped containers stopped: ``reason`` says why (the target's state)."""
        self.held = reason

    def resume(self):
        """Start the stopped containers (reverse order), once each has really stopped; or,
        when held, leave them stopped. Returns the failures; never raises."""
        if self._resumed:
            return self.failures
        self._resumed = True
        if self.held is not None:
            self.left_stopped = [c["name"] for c in self.stopped]
        for container in [] if self.held is not None else reversed(self.stopped):
            try:
                start_stopped(self.client, container["id"], self.stop_timeout + 15, clock=self.wait_clock,
                              sleep=self.sleep)
                self.restarted.append(container)
                if self.guardian:
                    self.guardian.note("started", container["id"])
            except ServiceError as exc:
                self.failures.append((container["name"], exc.msg))
            except api_errors() as exc:  # resume never raises: the failure is reported by name
                self.failures.append((container["name"], self.docker_error(exc, "start").msg))
        if self.started_at is not None:
            self.resumed_at = self.clock()
        if self._old_term is not None:
            try:
                signal.signal(signal.SIGTERM, self._old_term)
            except ValueError:
                pass
            self._old_term = None
        return self.failures

    def report(self):
        out = {"stopped": [c["name"] for c in self.stopped],
               "restarted": [c["name"] for c in self.restarted],
               "downtime_seconds": self.downtime}
        if self.left_stopped:
            out["left_stopped"] = list(self.left_stopped)
        return out

    def failure_message(self):
        msgs = ["container %s failed to restart: %s" % (name, msg) for name, msg in self.failures]
        if self.left_stopped:
            msgs.insert(0, "containers %s are LEFT STOPPED: %s; start them once it is repaired"
                        % (", ".join(self.left_stopped), self.held))
        return "; ".join(msgs)
