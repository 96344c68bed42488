# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The integration harness as a plain module: real services, ansible-playbook runs, HTTP helpers.

tests/integration/conftest.py wraps it in session fixtures; scripts/demo.py and bench/ import it
directly (with tests/integration on ``sys.path``). Nothing here needs pytest.

- ``Postgres``, ``S3`` (moto), ``Redis``: ``start()`` on 127.0.0.1 and a free port in a temporary
  directory, ``stop()``; ``DockerEngine``: reuse or start the engine through
  scripts/docker-engine.sh and build the local busybox image. Whatever ``start()`` starts is
  also stopped at interpreter exit (``register_cleanup``/``cleanup``, an ``atexit`` net), and
  the processes die with their parent even on SIGKILL.
- ``run_playbook_in(base_dir, playbook, ...)`` -> ``PlaybookRun``; ``faketime_args(clock)``.
- ``free_port()``, ``http_get(url)``, ``Poller`` (GET a URL every 50 ms in a thread),
  ``Background`` (a daemon thread for the length of a with-block).
"""

from __future__ import annotations

import atexit
import ctypes
import datetime
import http.client
import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
VENV_BIN = os.path.dirname(sys.executable)  # the running interpreter's: the pinned venv
CALLBACK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callback_plugins")
DOCKER_SCRIPT = os.path.join(ROOT, "scripts", "docker-engine.sh")
PG_BIN = os.environ.get("OPSKIT_PG_BIN", "/usr/lib/postgresql/15/bin")
PG_SYSTEM_USER = "opskit-test"
BUSYBOX_IMAGE = "opskit-test/busybox:1"
S3_ACCESS_KEY = "opskit-test-access-key"
S3_SECRET_KEY = "opskit-test-secret-key"
S3_REGION = "us-east-1"


# ------------------------------------------------------------------ cleanup and processes

_CLEANUPS = {}


def register_cleanup(key, func):
    """Run func at session end; atexit is the safety net when the fixture teardown never ran."""
    _CLEANUPS[key] = func


def cleanup(key):
    func = _CLEANUPS.pop(key, None)
    if func is not None:
        func()


@atexit.register
def _cleanup_all():
    for key in list(_CLEANUPS)[::-1]:
        try:
            cleanup(key)
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:  # the net itself must not raise
            sys.stderr.write("harness cleanup of %s failed: %s\n" % (key, exc))


def _die_with_parent():
    """preexec_fn: the child gets SIGTERM when its parent dies, even from SIGKILL (Linux)."""
    os.setsid()  # out of the terminal's process group: Ctrl-C goes to the parent, which stops us
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass


# Run argv (then remove a directory) when the parent dies, even from SIGKILL: for services that
# detach from it (pg_ctl starts the postmaster in the background).
_WATCHDOG = """
import shutil, signal, subprocess, sys
def cleanup(*_):
    subprocess.run(sys.argv[2:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False)
    shutil.rmtree(sys.argv[1], ignore_errors=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, cleanup)
while True:
    signal.pause()
"""


def _watchdog(remove_dir, argv):
    return subprocess.Popen([sys.executable, "-c", _WATCHDOG, remove_dir] + argv, stdin=subprocess.DEVNULL,
                            preexec_fn=_die_with_parent)


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _tail(path, lines=30):
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError:
        return ""


def _wait_for(check, what, proc=None, log=None, timeout=60.0):
    """Poll check() until it returns true; fail with the service log when it never does."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            break
        try:
            if check():
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.1)
    state = "exited with %s" % proc.returncode if proc is not None and proc.poll() is not None else \
        "did not answer within %.0f s" % timeout
    raise RuntimeError("%s %s\n%s" % (what, state, _tail(log) if log else ""))


def _stop_process(proc, timeout=15):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _service_dir(name):
    return tempfile.mkdtemp(prefix="opskit-%s-" % name)


# ------------------------------------------------------------------ PostgreSQL


def _pg_system_user():
    """initdb and postgres refuse to run as root: as root, use (and create) a system user."""
    if os.getuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
                        "--shell", "/usr/sbin/nologin", PG_SYSTEM_USER], capture_output=True, check=False)
        return pwd.getpwnam(PG_SYSTEM_USER)  # KeyError (with the name) if useradd failed


class Postgres:
    """A throwaway PostgreSQL cluster with scram-sha-256 password auth on 127.0.0.1."""

    user = "postgres"
    host = "127.0.0.1"

    def __init__(self):
        self.bin_dir = PG_BIN
        self.port = free_port()
        self.password = secrets.token_urlsafe(18)
        self.root = _service_dir("pg")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self.env = {"PGHOST": self.host, "PGPORT": str(self.port), "PGUSER": self.user,
                    "PGPASSWORD": self.password}
        self._account = _pg_system_user()
        self._watchdog = None

    def _as_owner(self, args):
        if self._account is None:
            return args
        return ["runuser", "-u", self._account.pw_name, "--"] + args

    def _stop_args(self):
        return [os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop"]

    def _run_as_owner(self, args, **kwargs):
        tool = os.path.basename(args[0])
        proc = subprocess.run(self._as_owner(args), capture_output=True, text=True, cwd=self.root, check=False, **kwargs)
        if proc.returncode:
            raise RuntimeError("%s failed (exit %d): %s\n%s" % (
                tool, proc.returncode, proc.stderr.strip(), _tail(self.log)))
        return proc

    def start(self):
        register_cleanup("pg", self.stop)
        if not os.path.exists(os.path.join(self.bin_dir, "initdb")):
            raise RuntimeError("no PostgreSQL binaries in %s (run scripts/bootstrap.sh)" % self.bin_dir)
        pwfile = os.path.join(self.root, "pwfile")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(self.password + "\n")
        if self._account is not None:
            for path in (self.root, pwfile):
                os.chown(path, self._account.pw_uid, self._account.pw_gid)
        self._run_as_owner([os.path.join(self.bin_dir, "initdb"), "-D", self.data, "-U", self.user,
                            "--auth=scram-sha-256", "--pwfile=" + pwfile, "-E", "UTF8", "--locale=C",
                            "--no-sync"])
        os.unlink(pwfile)
        options = "-p %d -k %s -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off " \
                  "-c full_page_writes=off" % (self.port, self.root)
        self._watchdog = _watchdog(self.root, self._as_owner(self._stop_args()))
        self._run_as_owner([os.path.join(self.bin_dir, "pg_ctl"), "-D", self.data, "-l", self.log, "-w",
                            "-t", "60", "-o", options, "start"], start_new_session=True)
        return self

    def stop(self):
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self._run_as_owner(self._stop_args())
            except RuntimeError as exc:
                sys.stderr.write("stopping PostgreSQL: %s\n" % exc)
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql, db="postgres"):
        """Run SQL with ON_ERROR_STOP; return psql's unaligned, tuples-only stdout."""
        proc = subprocess.run([os.path.join(self.bin_dir, "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db,
                               "-c", sql], env=dict(os.environ, **self.env), capture_output=True, text=True,
                              check=False)
        if proc.returncode:
            raise RuntimeError("psql failed on %s: %s" % (db, proc.stderr.strip()))
        return proc.stdout

    def createdb(self, name):
        proc = subprocess.run([os.path.join(self.bin_dir, "createdb"), name], env=dict(os.environ, **self.env),
                              capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError("createdb %s failed: %s" % (name, proc.stderr.strip()))
        return name


# ------------------------------------------------------------------ S3 (moto)


class S3:
    """moto's S3 server, a real HTTP endpoint for boto3."""

    access_key = S3_ACCESS_KEY
    secret_key = S3_SECRET_KEY
    region = S3_REGION

    def __init__(self):
        self.root = _service_dir("s3")
        self.port = free_port()
        self.endpoint_url = "http://127.0.0.1:%d" % self.port
        self.log = os.path.join(self.root, "moto.log")
        self.proc = None
        self.client = None

    def start(self):
        import boto3  # pylint: disable=import-outside-toplevel
        import botocore.exceptions  # pylint: disable=import-outside-toplevel
        register_cleanup("s3", self.stop)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", "127.0.0.1", "-p",
                                          str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, cwd=self.root, preexec_fn=_die_with_parent)
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                   aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key)
        _wait_for(lambda: socket.create_connection(("127.0.0.1", self.port), timeout=1).close() or True,
                  "moto_server", self.proc, self.log)
        try:
            self.client.list_buckets()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise RuntimeError(str(exc)) from exc
        return self

    def stop(self):
        if self.proc is not None:
            _stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)

    def new_bucket(self, prefix="opskit-test"):
        name = "%s-%s" % (prefix, uuid.uuid4().hex[:12])
        self.client.create_bucket(Bucket=name)
        return name


# ------------------------------------------------------------------ Docker Engine


class EngineScriptError(RuntimeError):
    """scripts/docker-engine.sh failed; ``output`` is its stderr (or stdout), stripped."""

    def __init__(self, action, output):
        super().__init__("scripts/docker-engine.sh %s: %s" % (action, output))
        self.action, self.output = action, output


class DockerEngine:
    """The Docker Engine (reused, or started by scripts/docker-engine.sh) and the local busybox image."""

    busybox_image = BUSYBOX_IMAGE

    def __init__(self):
        self.docker_host = os.environ.get("DOCKER_HOST", "unix:///var/run/docker.sock")
        self.client = None

    @staticmethod
    def script(action, timeout=None):
        """Run scripts/docker-engine.sh up|image|down; its stdout (EngineScriptError on failure)."""
        proc = subprocess.run([DOCKER_SCRIPT, action], capture_output=True, text=True, check=False, timeout=timeout)
        if proc.returncode:
            raise EngineScriptError(action, (proc.stderr or proc.stdout).strip())
        return proc.stdout.strip()

    def start(self):
        import docker  # pylint: disable=import-outside-toplevel
        # An engine this session started is stopped at its end, except in a pytest-xdist worker:
        # the other workers may still use it (scripts/test.sh starts it before the workers).
        if self.script("up") == "started" and "PYTEST_XDIST_WORKER" not in os.environ:
            register_cleanup("docker", lambda: self.script("down"))
        self.script("image")
        try:
            self.client = docker.DockerClient(base_url=self.docker_host)
        except docker.errors.DockerException as exc:
            raise RuntimeError(str(exc)) from exc
        return self


# ------------------------------------------------------------------ Redis


class Redis:
    host = "127.0.0.1"

    def __init__(self):
        self.port = free_port()
        self.root = _service_dir("redis")
        self.log = os.path.join(self.root, "redis.log")
        self.proc = None

    def ping(self):
        with socket.create_connection((self.host, self.port), timeout=2) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64) == b"+PONG\r\n"

    def start(self):
        register_cleanup("redis", self.stop)
        server = shutil.which("redis-server")
        if server is None:
            raise RuntimeError("redis-server is not installed (run scripts/bootstrap.sh)")
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen([server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                                          "--appendonly", "no", "--daemonize", "no", "--dir", self.root],
                                         stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         preexec_fn=_die_with_parent)
        _wait_for(self.ping, "redis-server", self.proc, self.log, timeout=30)
        return self

    def stop(self):
        if self.proc is not None:
            _stop_process(self.proc)
        shutil.rmtree(self.root, ignore_errors=True)


# ------------------------------------------------------------------ ansible-playbook


class PlaybookRun:
    """The outcome of one ansible-playbook run."""

    def __init__(self, rc, stdout, stderr, results):
        self.rc, self.stdout, self.stderr, self.results = rc, stdout, stderr, results

    def task(self, name):
        """The last result of the task with this name (a role task also answers to "role : name")."""
        for result in reversed(self.results):
            if name in (result["_task"], "%s : %s" % (result.get("_role"), result["_task"])):
                return result
        raise AssertionError("no result for task %r; tasks run: %s\nrc=%s\n--- stdout\n%s\n--- stderr\n%s" % (
            name, [r["_task"] for r in self.results], self.rc, self.stdout[-4000:], self.stderr[-4000:]))

    def __repr__(self):
        return "PlaybookRun(rc=%s, tasks=%s)" % (self.rc, [r["_task"] for r in self.results])


INVENTORY = "localhost ansible_connection=local\n"


def _playbook_file(playbook, workdir):
    if isinstance(playbook, (list, dict)):
        playbook = json.dumps(playbook if isinstance(playbook, list) else [playbook])  # YAML is a superset
    elif isinstance(playbook, os.PathLike) or ("\n" not in playbook and os.path.isfile(playbook)):
        return os.path.abspath(playbook)
    elif "\n" not in playbook and playbook.endswith((".yml", ".yaml")):
        raise FileNotFoundError("playbook %s does not exist" % playbook)
    path = os.path.join(workdir, "playbook.yml")
    with open(path, "w") as fh:
        fh.write(playbook)
    return path


def faketime_args(clock):
    """The argument prefix that runs a command with its clock starting at ``clock`` (libfaketime;
    scripts/bootstrap.sh installs it). The instant is given in UTC, whatever the machine's TZ."""
    binary = shutil.which("faketime")
    if binary is None:
        raise AssertionError("faketime is not installed: run scripts/bootstrap.sh")
    utc = clock.astimezone(datetime.timezone.utc)
    # The wrapper shares its clock with its children through /dev/shm/sem.faketime_sem_<pid> and
    # /dev/shm/faketime_shm_<pid>, and fails ("sem_open: File exists") when a killed wrapper left
    # them for a pid it gets again. A shell removes those of its own pid, then becomes the wrapper
    # (exec keeps the pid): they can only be stale.
    return ["env", "TZ=UTC", "/bin/sh", "-c", 'rm -f "/dev/shm/sem.faketime_sem_$$" "/dev/shm/faketime_shm_$$"; exec "$0" "$@"',
            binary, "-f", "@" + utc.strftime("%Y-%m-%d %H:%M:%S")]


def _playbook_env(capture, env):
    run_env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
    run_env.update(
        ANSIBLE_COLLECTIONS_PATH=COLLECTIONS,
        ANSIBLE_PYTHON_INTERPRETER=sys.executable,
        ANSIBLE_CALLBACK_PLUGINS=CALLBACK_DIR,
        ANSIBLE_CALLBACKS_ENABLED="opskit_capture",
        OPSKIT_CAPTURE_FILE=capture,
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_RETRY_FILES_ENABLED="0",
        ANSIBLE_HOST_KEY_CHECKING="0",
    )
    run_env.update(env or {})
    return run_env


def _communicate(proc, timeout):
    """(stdout, stderr) of the playbook; killed (AssertionError) after timeout s, or on Ctrl-C."""
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        raise AssertionError("ansible-playbook did not finish within %s s\n--- stdout\n%s\n--- stderr\n%s"
                             % (timeout, stdout[-4000:], stderr[-4000:])) from None
    except BaseException:  # Ctrl-C: do not leave the playbook running
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise


def run_playbook_in(base_dir, playbook, extra_vars=None, check=False, env=None, timeout=600, clock=None):
    """Run ansible-playbook on localhost; every task result is captured by the opskit_capture callback.

    ``clock`` (an aware datetime) runs the playbook, and so the modules, under libfaketime with
    a clock that starts at that instant and then ticks: tests that build a history of backups
    build it from a fixed clock, so no result depends on the day or the weekday of the run."""
    workdir = tempfile.mkdtemp(prefix="play-", dir=base_dir)
    path = _playbook_file(playbook, workdir)
    capture = os.path.join(workdir, "results.jsonl")
    inventory = os.path.join(workdir, "inventory.ini")
    with open(inventory, "w") as fh:
        fh.write(INVENTORY)
    args = [os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, path]
    if clock is not None:
        args = faketime_args(clock) + args
    if extra_vars:
        vars_file = os.path.join(workdir, "extra_vars.json")
        with open(os.open(vars_file, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            json.dump(extra_vars, fh)
        args += ["-e", "@" + vars_file]
    if check:
        args.append("--check")
    proc = subprocess.Popen(args, cwd=workdir, env=_playbook_env(capture, env), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True)
    stdout, stderr = _communicate(proc, timeout)
    results = []
    if os.path.exists(capture):
        with open(capture) as fh:
            results = [json.loads(line) for line in fh if line.strip()]
    shutil.rmtree(workdir, ignore_errors=True)
    return PlaybookRun(proc.returncode, stdout, stderr, results)


# ------------------------------------------------------------------ HTTP and background threads


def http_get(url, timeout=1.0):
    """(status, body) or (None, error) — never raises."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read().decode().strip()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts, resets, bad bodies
        return None, str(exc)


class Background:
    """``target`` in a daemon thread for the length of a with-block; ``stop()`` makes it return."""

    def __init__(self, target):
        self._thread = threading.Thread(target=target, daemon=True)

    def stop(self):
        raise NotImplementedError

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self.stop()
        self._thread.join()


class Poller(Background):
    """GET ``url`` every ``every`` s in a thread (each request starts ``every`` s after the last one
    started). ``samples``: (monotonic time, status or None, body or the error's text)."""

    def __init__(self, url, every=0.05, timeout=0.5):
        super().__init__(self._run)
        self.url, self.every, self.timeout, self.samples = url, every, timeout, []
        self._stop = threading.Event()

    def _run(self):
        while not self._stop.is_set():
            t = time.monotonic()
            self.samples.append((t,) + http_get(self.url, timeout=self.timeout))
            self._stop.wait(max(0.0, self.every - (time.monotonic() - t)))

    def stop(self):
        self._stop.set()

    @property
    def answers(self):
        """The bodies, in order (the error's text for requests that got no HTTP answer)."""
        return [text for _t, _status, text in self.samples]

    def runs_of(self, text):
        """How many separate periods the answer was ``text``."""
        runs, prev = 0, None
        for answer in self.answers:
            if answer == text and prev != text:
                runs += 1
            prev = answer
        return runs

    def summary(self):
        return "%d answers, %d runs of plain, distinct: %s" % (
            len(self.answers), self.runs_of("plain"), sorted(set(a[:40] for a in self.answers))[:10])

    def first_serving_after(self, since, body):
        """The time of the first 200 answer ``body`` at or after ``since`` (None if there is none)."""
        for t, status, text in self.samples:
            if t >= since and status == 200 and text == body:
                return t
        return None

    def longest_gap(self):
        """Longest time from a 200 answer to the next 200 answer, and the failed requests in it."""
        best, failed, last_ok, run = 0.0, 0, None, 0
        for t, status, _text in self.samples:
            if status == 200:
                if last_ok is not None and t - last_ok > best:
                    best, failed = t - last_ok, run
                last_ok, run = t, 0
            else:
                run += 1
        return best, failed
