# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A recovery drill: the restored cluster started on a scratch port, watched until recovery
reached its target and promoted, checked with the verify queries, and stopped.

The scratch cluster listens on 127.0.0.1 only, with ``archive_mode = off`` so that its new
timeline never reaches the archive of the real cluster. ``postgres`` runs as the data owner,
in its own process group, and dies with the module (PDEATHSIG); the caller removes its
directory whatever happens.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time

from .._errors import ConfigError, ServiceError
from .cleanup import Interrupted
from .connection import libpq_env
from .server import Server
from .tools import LocalTools, _PRCTL, PR_SET_PDEATHSIG, find_bin_dir
from .verify import evaluate_query

POINT_SQL = "SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn(), pg_last_xact_replay_timestamp()"
DEFAULT_RECOVERY_TIMEOUT = 3600


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def drill_settings(port, socket_dir):
    return ["port = %d" % port, "listen_addresses = '127.0.0.1'", "unix_socket_directories = '%s'"
            % socket_dir.replace("'", "''"), "archive_mode = off", "hot_standby = on"]


def _demote(owner):
    def setup():
        os.setpgid(0, 0)
        if os.geteuid() == 0:
            os.setgroups([])
            os.setgid(owner.pw_gid)
            os.setuid(owner.pw_uid)
        if _PRCTL is not None:  # after setuid, which clears it
            _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL))
    return setup


def server_major(path):
    try:
        with open(os.path.join(path, "PG_VERSION")) as fh:
            return int(fh.read().strip().split(".")[0])
    except (OSError, ValueError) as exc:
        raise ConfigError("the restored directory %s has no readable PG_VERSION" % path) from exc


def log_reason(log):
    """The line of the scratch cluster's log that says why it stopped (opskit-wal's first)."""
    try:
        with open(log, errors="replace") as fh:
            lines = [" ".join(line.split()) for line in fh if line.strip()]
    except OSError:
        return "no log"
    ours = [line for line in lines if line.startswith("opskit-wal:")]
    fatal = [line.split("FATAL:", 1)[1].strip() for line in lines if "FATAL:" in line]
    return (ours[-1] if ours else "") or (fatal[-1] if fatal else "") or (lines[-1] if lines else "no log")


@contextlib.contextmanager
def scratch_cluster(params, path, owner, scratch):
    """(process, Server) of the restored cluster on a scratch port; stopped on exit."""
    port = free_port()
    with open(os.path.join(path, "postgresql.auto.conf"), "a") as fh:
        fh.write("# opskit.runbook drill\n%s\n" % "\n".join(drill_settings(port, path)))
    bin_dir = params.get("bin_dir") or find_bin_dir(None, server_major(path))
    postgres = os.path.join(bin_dir, "postgres") if bin_dir else "postgres"
    log = os.path.join(scratch, "drill.log")
    with open(log, "ab") as out:
        try:
            # a server that runs while the drill queries it: run_command cannot start one in the background
            proc = subprocess.Popen([postgres, "-D", path], stdin=subprocess.DEVNULL,  # pylint: disable=ansible-bad-function
                                    stdout=out, stderr=out, close_fds=True, cwd=scratch,
                                    preexec_fn=_demote(owner))  # noqa: PLW1509
        except OSError as exc:
            raise ServiceError("cannot start %s for the drill: %s" % (postgres, exc.strerror)) from exc
    try:
        with libpq_env(dict(params, host="127.0.0.1", port=port)) as env:
            conn = {"host": "127.0.0.1", "port": port, "user": params.get("user") or "postgres",
                    "password": params.get("password")}
            yield proc, Server(LocalTools(env, bin_dir, params.get("password")), conn), log
    finally:
        _stop(proc)


def _stop(proc):
    if proc.poll() is None:
        with contextlib.suppress(OSError):
            proc.send_signal(signal.SIGINT)  # fast shutdown
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(OSError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def wait_promoted(proc, server, log, timeout):
    """Poll until recovery ended and the cluster promoted; ServiceError when postgres stopped."""
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise ServiceError("recovery failed, the scratch cluster stopped: %s" % log_reason(log))
        try:
            row = server.query(POINT_SQL)[0]
            if row[0] == "f":
                return row
            last = "in recovery, replayed up to %s" % row[1]
        except Interrupted:
            raise
        except ServiceError as exc:
            last = exc.msg
        if time.monotonic() > deadline:
            raise ServiceError("recovery did not reach its target within %d s (%s; log: %s)"
                               % (timeout, last, log_reason(log)))
        time.sleep(0.1)


def run_drill(params, path, owner, scratch, target, started):
    """(recovery facts, query checks) of one drill."""
    timeout = params.get("recovery_timeout") or DEFAULT_RECOVERY_TIMEOUT
    database = (params.get("database") or ["postgres"])[0]
    with scratch_cluster(params, path, owner, scratch) as (proc, server, log):
        row = wait_promoted(proc, server, log, timeout)
        rto = round(time.monotonic() - started, 3)
        checks = []
        for number, spec in enumerate(params.get("verify_queries") or [], 1):
            label = spec.get("name") or "query %d" % number
            try:
                passed, value, message = evaluate_query(spec, server.query(spec["query"], database))
            except ServiceError as exc:
                passed, value, message = False, None, exc.msg
            checks.append({"name": label, "passed": passed, "value": value, "message": "%s: %s" % (label, message)})
    recovery = {"target": target["text"], "recovered_lsn": row[1] or None, "recovered_time": row[2] or None,
                "rto_seconds": rto}
    return recovery, checks
