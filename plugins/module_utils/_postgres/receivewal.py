# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""opskit-wal receive: pg_receivewal streaming from a replication slot, each finished file pushed.

    python3 opskit-wal --config /etc/opskit/wal.json receive

The config's ``receive`` object: ``directory`` (pg_receivewal's, owned by the server's user),
``slot``, ``synchronous`` (pg_receivewal --synchronous: each write flushed and acknowledged at
once, so that a server whose ``synchronous_standby_names`` names ``application_name`` returns
no commit before it is on this host's disk), ``application_name``, ``bin_dir`` and ``pg``: the
connection ``{host, port, user}`` with ``passfile`` (a 0600 file) or ``password`` (written to
a 0600 passfile in the directory): PGPASSFILE, never a command line.

Each finished file in the directory (a segment, a ``.history``) goes through the same ``push``
as archive_command, then is removed; the segment being written stays ``<name>.partial``. The
slot is created when missing. A restart (after a kill) pushes what the directory holds first,
then pg_receivewal continues from its ``.partial`` or, in an empty directory, from the slot.
At SIGTERM the ``.partial`` is pushed as ``<name>.partial`` (kept for an operator; restores use
finished segments only) and stays in the directory for the next start.
"""

from __future__ import annotations

import ctypes
import os
import signal
import stat
import subprocess
import time

from .._errors import ConfigError, IntegrityError, OpsError
from .wal import SEGMENT_RE, push

HISTORY_SUFFIX = ".history"
PARTIAL_SUFFIX = ".partial"
PASSFILE = ".opskit-pgpass"
DEFAULT_APPLICATION_NAME = "opskit_wal_receive"
DEFAULT_SLOT = "opskit_wal"
POLL_SECONDS = 0.2
RETRY_SECONDS = 1.0


# ------------------------------------------------------------------ settings (plain data)

def settings(config):
    """The receive settings of a loaded config, with defaults; ConfigError for bad ones."""
    receive = config.get("receive")
    if not isinstance(receive, dict) or not isinstance(receive.get("directory"), str) or not receive["directory"]:
        raise ConfigError("config: receive.directory is missing (the directory pg_receivewal writes into)")
    slot = receive.get("slot") or DEFAULT_SLOT
    if not all(c.isalnum() and c.isascii() or c == "_" for c in slot) or slot.lower() != slot:
        raise ConfigError("config: receive.slot %r is not a slot name (lower case letters, digits, _)" % (slot,))
    pg = receive.get("pg") or {}
    if not isinstance(pg, dict):
        raise ConfigError("config: receive.pg must be an object {host, port, user, password | passfile}")
    return {"directory": receive["directory"], "slot": slot, "synchronous": bool(receive.get("synchronous")),
            "application_name": receive.get("application_name") or DEFAULT_APPLICATION_NAME,
            "bin_dir": receive.get("bin_dir") or "", "pg": pg,
            "compression": config.get("compression") or "zstd", "level": config.get("compression_level")}


def receivewal_argv(conf, create_slot=False):
    """pg_receivewal's arguments: no connection secret among them (libpq reads the environment)."""
    binary = os.path.join(conf["bin_dir"], "pg_receivewal") if conf["bin_dir"] else "pg_receivewal"
    argv = [binary, "--slot", conf["slot"], "--no-password"]
    if create_slot:
        return argv + ["--create-slot", "--if-not-exists"]
    argv += ["--directory", conf["directory"], "--no-loop"]
    return argv + ["--synchronous"] if conf["synchronous"] else argv


def finished_files(names):
    """The files of the directory to push, oldest first: finished segments and .history files
    (a .history first: recovery needs it before the segments of its timeline)."""
    history = sorted(n for n in names if len(n) == 16 and n.endswith(HISTORY_SUFFIX) and _hex(n[:8]))
    return history + sorted(n for n in names if SEGMENT_RE.match(n))


def partial_files(names):
    return sorted(n for n in names if n.endswith(PARTIAL_SUFFIX) and SEGMENT_RE.match(n[:-len(PARTIAL_SUFFIX)]))


def _hex(text):
    return all(c in "0123456789ABCDEF" for c in text)


# ------------------------------------------------------------------ the environment

def passfile(conf):
    """The passfile pg_receivewal reads: ``pg.passfile`` (checked 0600) or one written from
    ``pg.password`` into the directory, 0600."""
    pg = conf["pg"]
    if pg.get("passfile"):
        mode = stat.S_IMODE(os.stat(pg["passfile"]).st_mode)
        if mode & 0o077:
            raise ConfigError("passfile %s is readable by other users (mode %04o): make it 0600" % (pg["passfile"], mode))
        return pg["passfile"]
    path = os.path.join(conf["directory"], PASSFILE)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    os.fchmod(fd, 0o600)
    with os.fdopen(fd, "w") as fh:
        password = str(pg.get("password") or "").replace("\\", "\\\\").replace(":", "\\:")
        fh.write("*:*:*:*:%s\n" % password)
    return path


def environment(conf, pgpass):
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env.update(PGPASSFILE=pgpass, PGAPPNAME=conf["application_name"])
    for key, name in (("host", "PGHOST"), ("port", "PGPORT"), ("user", "PGUSER")):
        if conf["pg"].get(key) not in (None, ""):
            env[name] = str(conf["pg"][key])
    return env


def _die_with_parent():
    """pg_receivewal gets SIGTERM when the receiver dies (even by SIGKILL): a restart never finds
    the slot held by an orphan."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# ------------------------------------------------------------------ pushing

class Receiver:
    """One receive run: pushes, the pg_receivewal child, the stop request."""

    def __init__(self, location, series, conf, err):
        self.location, self.series, self.conf, self.err = location, series, conf, err
        self.stopping = False
        self.failed = {}  # name -> the last message written (each failure is said once)

    def _say(self, text):
        self.err.write("opskit-wal receive: %s\n" % text)
        self.err.flush()

    def push_one(self, name, remove=True):
        path = os.path.join(self.conf["directory"], name)
        try:
            outcome = push(self.location, self.series, path, name, self.conf["compression"], self.conf["level"])
        except (OpsError, OSError) as exc:
            msg = getattr(exc, "msg", None) or getattr(exc, "strerror", None) or str(exc)
            if self.failed.get(name) != msg:
                self._say("%s not pushed, kept in %s to retry: %s" % (name, self.conf["directory"], msg))
                self.failed[name] = msg
            return False
        self.failed.pop(name, None)
        if remove:
            os.unlink(path)
        return outcome

    def push_finished(self):
        """Push every finished file of the directory, oldest first; stop at the first failure (the
        archive stays without a gap). Returns the names pushed."""
        done = []
        for name in finished_files(os.listdir(self.conf["directory"])):
            if not self.push_one(name):
                break
            done.append(name)
        return done

    def push_partial(self):
        """At stop: the segment being written, as ``<name>.partial`` (left in the directory)."""
        for name in partial_files(os.listdir(self.conf["directory"])):
            try:
                push(self.location, self.series, os.path.join(self.conf["directory"], name), name,
                     self.conf["compression"], self.conf["level"])
            except IntegrityError:
                self._say("an earlier %s is archived already; this one stays in %s" % (name, self.conf["directory"]))
            except (OpsError, OSError) as exc:
                self._say("%s not pushed: %s" % (name, getattr(exc, "msg", None) or exc))

    # -------------------------------------------------------------- the child

    def _spawn(self, argv, env):
        # a long-running child supervised here: run_command cannot do that (and this is no module)
        return subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                                preexec_fn=_die_with_parent)  # noqa: PLW1509

    def create_slot(self, env):
        proc = self._spawn(receivewal_argv(self.conf, create_slot=True), env)
        if proc.wait() != 0:
            raise OpsError("pg_receivewal could not create the replication slot %s (exit %d)"
                           % (self.conf["slot"], proc.returncode))

    def _stream_once(self, env):
        """One pg_receivewal session, pushing while it runs; returns its exit code (None: stopped)."""
        proc = self._spawn(receivewal_argv(self.conf), env)
        try:
            while proc.poll() is None:
                if self.stopping:
                    proc.terminate()
                    proc.wait()
                    return None
                self.push_finished()
                time.sleep(POLL_SECONDS)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return proc.returncode

    def run(self):
        """Until SIGTERM: leftovers first, the slot, then pg_receivewal again whenever it exits."""
        os.makedirs(self.conf["directory"], mode=0o700, exist_ok=True)
        env = environment(self.conf, passfile(self.conf))
        self.push_finished()
        while not self.stopping:
            try:
                self.create_slot(env)
            except OpsError as exc:
                self._say(exc.msg)
            else:
                code = self._stream_once(env)
                if code is not None:
                    self._say("pg_receivewal exited with %d; restarting" % code)
            self.push_finished()
            deadline = time.monotonic() + RETRY_SECONDS
            while not self.stopping and time.monotonic() < deadline:
                time.sleep(POLL_SECONDS / 2)
        self.push_finished()
        self.push_partial()
        return 0

    def stop(self, _signum=None, _frame=None):
        self.stopping = True


def receive(config, location, err):
    """The receive command: run until SIGTERM or SIGINT; 0 after a clean stop."""
    receiver = Receiver(location, config["series"], settings(config), err)
    signal.signal(signal.SIGTERM, receiver.stop)
    signal.signal(signal.SIGINT, receiver.stop)
    return receiver.run()
