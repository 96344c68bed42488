# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The run lock of a series: rotation, verification and quiesced backups/restores one at a time.

The lock is one object, ``<series>/.opskit-lock``, created atomically (``create_exclusive``:
S3 PutObject with If-None-Match, O_CREAT|O_EXCL on file://). It holds who holds it (host, pid,
module, started, expires) and a random nonce. While it is held, a thread renews ``expires``
every LOCK_TTL / 3 by a conditional overwrite (If-Match / compare-and-rename), so a lock whose
``expires`` has passed belongs to a dead holder (SIGKILL, a lost host): the next run takes it
over, by the same conditional overwrite (two runs that race for a stale lock: one wins), and
reports whose lock it took. A lock whose holder ran on this very machine (same host name, boot
id and PID namespace) and whose process is gone (no such pid, or a pid reused by a process
started at another time) is stale at once: the run after a SIGKILL does not wait for expiry. A run that finds a live lock waits up to ``lock_timeout`` seconds,
then fails with one line naming the holder. Leaving the block deletes the lock conditionally
(only if it is still ours).

Clocks: ``expires`` is written with the holder's clock and compared with the waiter's; clocks
more than LOCK_TTL * 2/3 apart could take over a live lock. Check mode never takes the lock.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import secrets
import socket
import threading
import time

from .._errors import ConfigError, NotFoundError, OpsError, StorageError
from .._storage.base import ChangedError, ExistsError
from .._timeutil import parse_rfc3339, rfc3339, utcnow
from .catalog import validate_series

LOCK_NAME = ".opskit-lock"
LOCK_FORMAT = "opskit.runbook/lock"
DEFAULT_LOCK_TIMEOUT = 600
MAX_LOCK_TIMEOUT = 86400
LOCK_TTL = 900
POLL_MAX = 2.0


def _read(path):
    try:
        with open(path) as fh:
            return fh.read().strip()
    except OSError:
        return None


def _start_time(pid):
    """The start time of process ``pid`` (clock ticks since boot, /proc/<pid>/stat), or None."""
    stat = _read("/proc/%d/stat" % pid)
    if not stat:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else None


def process_identity(pid):
    """What tells a live holder from a dead one on this machine: boot id, PID namespace and the
    process' start time (so that a reused pid is not taken for the holder)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns, "proc_start": _start_time(pid)}


def this_process():
    """The holder fields of the running process, as holder_is_dead() reads them."""
    out = {"host": socket.gethostname(), "pid": os.getpid()}
    out.update(process_identity(os.getpid()))
    return out


def holder_is_dead(holder):
    """True only when the holder ran here (same host, boot and PID namespace, all known) and its
    process is gone; anything unknown counts as alive (its lock then waits for its expiry)."""
    here = process_identity(os.getpid())
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int) \
            or not here["boot_id"] or not here["pid_ns"] or holder.get("proc_start") is None:
        return False
    if (holder.get("boot_id"), holder.get("pid_ns")) != (here["boot_id"], here["pid_ns"]):
        return False
    return _start_time(holder["pid"]) != holder["proc_start"]


class LockTimeout(OpsError):
    """The series stayed locked by another run for longer than lock_timeout."""


def lock_key(series):
    return "%s/%s" % (validate_series(series), LOCK_NAME)


def check_timeout(value):
    """``lock_timeout`` in seconds: 0 (do not wait) to MAX_LOCK_TIMEOUT; None is the default."""
    if value is None:
        return DEFAULT_LOCK_TIMEOUT
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_LOCK_TIMEOUT:
        raise ConfigError("lock_timeout: %r is not valid: use a number of seconds from 0 (do not wait)"
                          " to %d" % (value, MAX_LOCK_TIMEOUT))
    return value


def parse_holder(data):
    """The holder record of a lock object, or None when it cannot be read (a torn write)."""
    try:
        holder = json.loads(data.decode("utf-8"))
        if not isinstance(holder, dict) or holder.get("format") != LOCK_FORMAT:
            return None
        holder["expires_dt"] = parse_rfc3339(holder["expires"])
        return holder
    except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
        return None


def describe(holder):
    """One line: who holds the lock."""
    if holder is None:
        return "an unreadable lock record"
    return "%s (pid %s on %s, since %s, expires %s)" % (
        holder.get("module") or "?", holder.get("pid"), holder.get("host") or "?",
        holder.get("started") or "?", holder.get("expires") or "?")


def public(holder):
    """The holder fields a result shows (never the nonce)."""
    if holder is None:
        return {"unreadable": True}
    return {k: holder.get(k) for k in ("module", "host", "pid", "started", "expires")}


class SeriesLock:
    """``with SeriesLock(location, series, "s3_rotate", timeout):`` runs the block holding the lock.

    ``report()`` is the ``lock`` entry of a result: key, waited seconds, attempts, the dead
    holder taken over (if any), and ``warnings`` (a lock lost meanwhile, an endpoint without
    conditional writes).
    """

    def __init__(self, location, series, module, timeout=None, ttl=LOCK_TTL, clock=utcnow,
                 sleep=time.sleep, monotonic=time.monotonic):
        self.location, self.series, self.module = location, series, module
        self.key = lock_key(series)
        self.timeout = check_timeout(timeout)
        self.ttl, self.clock, self.sleep, self.monotonic = ttl, clock, sleep, monotonic
        self.nonce = secrets.token_hex(16)
        self.started = None
        self.token = None
        self.attempts = 0
        self.waited = 0.0
        self.taken_over = None
        self.warnings = []
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._thread = None

    def _payload(self):
        now = self.clock()
        self.started = self.started or now
        record = {
            "format": LOCK_FORMAT, "version": 1, "series": self.series, "module": self.module,
            "host": socket.gethostname(), "pid": os.getpid(), "started": rfc3339(self.started),
            "expires": rfc3339(now + datetime.timedelta(seconds=self.ttl)), "nonce": self.nonce,
        }
        record.update(process_identity(os.getpid()))
        return (json.dumps(record, indent=2, sort_keys=True) + "\n").encode("utf-8")

    # ----------------------------------------------------------------- acquire
    def acquire(self):
        """Wait for the lock (up to the timeout); a signal meanwhile leaves no lock behind."""
        acquired = False
        try:
            self._wait()
            acquired = True
        finally:
            if not acquired:
                self.release()
        return self

    def _wait(self):
        begin = self.monotonic()
        delay = 0.2
        while True:
            self.attempts += 1
            holder = self._try_once()
            if holder is True:
                self.waited = round(self.monotonic() - begin, 3)
                self._start_renewal()
                return
            left = self.timeout - (self.monotonic() - begin)
            if left <= 0:
                raise LockTimeout("series %s at %s is locked by %s; gave up after %s s (lock_timeout)"
                                  % (self.series, self.location.url, describe(holder), self.timeout),
                                  lock={"key": self.key, "holder": public(holder)})
            self.sleep(min(delay, left))
            delay = min(POLL_MAX, delay * 2)

    def _try_once(self):
        """True when the lock is ours now, else the live holder (None: unreadable)."""
        try:
            self.token = self.location.create_exclusive(self.key, self._payload(), content_type="application/json")
            return True
        except ExistsError:
            pass
        try:
            data, token = self.location.read_versioned(self.key)
        except NotFoundError:  # released since: try again at once
            return self._try_create_again()
        holder = parse_holder(data)
        if holder is not None and holder.get("nonce") == self.nonce:
            self.token = token  # our own create, its response lost and retried
            return True
        if not self._expired(holder):
            return holder
        try:
            self.token = self.location.replace_bytes(self.key, self._payload(), token,
                                                     content_type="application/json")
        except (ChangedError, NotFoundError):
            return holder  # another run took it over (or released it) first: try again
        self.taken_over = public(holder)
        self.warnings.append("took over the lock of series %s left by %s, %s"
                             % (self.series, describe(holder), "whose process is gone"
                                if holder is not None and holder_is_dead(holder) else "which expired"))
        return True

    def _try_create_again(self):
        try:
            self.token = self.location.create_exclusive(self.key, self._payload(), content_type="application/json")
            return True
        except ExistsError:
            return None  # taken again meanwhile: the next attempt reads the new holder

    def _expired(self, holder):
        """A holder's lock is stale once its expires has passed; an unreadable record (a torn
        write) is not stale before LOCK_TTL after its creation."""
        if holder is not None:
            return holder["expires_dt"] <= self.clock() or holder_is_dead(holder)
        info = self.location.head(self.key)
        return info is None or info.modified + datetime.timedelta(seconds=self.ttl) <= self.clock()

    # ------------------------------------------------------------------ renew
    def _start_renewal(self):
        if not getattr(self.location, "conditional_writes", True):
            self.warnings.append("the S3 endpoint has no conditional writes (If-None-Match): the run lock of"
                                 " series %s is best effort" % self.series)
        self._thread = threading.Thread(target=self._renew_loop, name="opskit-lock", daemon=True)
        self._thread.start()

    def _renew_loop(self):
        while not self._stop.wait(self.ttl / 3.0):
            if not self.renew():
                return

    def renew(self):
        """Push ``expires`` forward; False (and a warning) when the lock is no longer ours."""
        with self._mutex:
            if self.token is None:
                return False
            try:
                self.token = self.location.replace_bytes(self.key, self._payload(), self.token,
                                                         content_type="application/json")
                return True
            except (ChangedError, NotFoundError):
                self.token = None
                self.warnings.append("the lock of series %s was taken over by another run meanwhile"
                                     % self.series)
            except StorageError as exc:
                self.warnings.append("renewing the lock of series %s failed: %s" % (self.series, exc.msg))
                return True  # the next renewal may pass; the lock stays ours until it expires
        return False

    # ---------------------------------------------------------------- release
    def release(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        with self._mutex:
            token, self.token = self.token, None
        if token is None:
            return
        try:
            if not self.location.delete_if(self.key, token):
                self.warnings.append("the lock of series %s was gone when released" % self.series)
        except ChangedError:
            self.warnings.append("the lock of series %s was taken over by another run meanwhile" % self.series)
        except StorageError as exc:
            self.warnings.append("releasing the lock of series %s failed (it expires by itself): %s"
                                 % (self.series, exc.msg))

    def report(self):
        out = {"key": self.key, "waited_seconds": self.waited, "attempts": self.attempts,
               "taken_over": self.taken_over}
        if self.warnings:
            out["warnings"] = list(self.warnings)
        return out

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()


@contextlib.contextmanager
def series_locks(location, names, module, timeout=None):
    """Hold the locks of several series, {name: SeriesLock}, taken in sorted order so that two
    runs that want overlapping sets never wait for each other in a circle."""
    with contextlib.ExitStack() as stack:
        yield {name: stack.enter_context(SeriesLock(location, name, module, timeout)) for name in sorted(set(names))}


def attach(result, lock):
    """Put ``lock.report()`` in ``result["lock"]`` and its warnings in ``result["warnings"]``."""
    report = lock.report()
    warnings = report.pop("warnings", [])
    result["lock"] = report
    if warnings:
        result.setdefault("warnings", []).extend(warnings)
    return result
