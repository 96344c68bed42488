# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where pg_dump, pg_restore, psql and pg_dumpall run: the managed host or a container.

Both runners offer the same four operations, always from argument lists (never a shell):

- ``run(argv)`` -> (rc, stdout, stderr) for small outputs (queries, versions);
- ``reader(argv)`` a context manager yielding a file-like stdout of a long-running tool, which
  raises ServiceError on exit when the tool failed or was killed;
- ``feed(argv, source)`` streams a file-like ``source`` into the tool's stdin and returns
  (exit code, stderr);
- ``path(tool)`` the program to run.

Locally the password reaches the tools through the 0600 passfile of ``connection.libpq_env``;
in a container it travels in the exec's environment. Neither puts it on a command line.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import glob
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import threading

from .._docker import docker_errors
from .._errors import ConfigError, ServiceError

CHUNK = 1024 * 1024
STDERR_KEEP = 64 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def conninfo_quote(value):
    """A libpq connection-string value: always quoted, so a name can never carry options."""
    return "'%s'" % str(value).replace("\\", "\\\\").replace("'", "\\'")


def db_arg(dbname):
    """``--dbname`` as a connection string: a database named ``host=evil`` stays a name."""
    return "--dbname=dbname=%s" % conninfo_quote(dbname)


def quote_ident(name):
    return '"%s"' % str(name).replace('"', '""')


def quote_literal(value):
    """SQL literal that is correct whatever standard_conforming_strings says."""
    text = str(value)
    if "\\" in text:
        return "E'%s'" % text.replace("\\", "\\\\").replace("'", "''")
    return "'%s'" % text.replace("'", "''")


_PREFIX_RE = re.compile(r"^(pg_dump|pg_restore|pg_dumpall|psql)(:[^:]*:\d+)?: (error: |fatal: |warning: )?")


def tool_message(stderr, secret=None):
    """The one line of a tool's stderr that says what went wrong (tool prefix removed)."""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = [" ".join(line.split()) for line in stderr.splitlines() if line.strip()]
    lines = [line for line in lines if not line.startswith(("NOTICE:", "WARNING:", "HINT:"))]
    picked = next((line for line in lines if re.search(r"\b(error|ERROR|FATAL|fatal)\b", line)), None)
    text = picked or (lines[-1] if lines else "")
    text = _PREFIX_RE.sub("", text)
    if secret:
        text = text.replace(secret, "********")
    return text[:500]


def failure(tool, rc, stderr, secret=None, where=""):
    """ServiceError for a tool that exited with ``rc`` (negative: killed by a signal)."""
    where = (" " + where) if where else ""
    if rc is not None and rc < 0:
        return ServiceError("%s%s was killed by signal %d" % (tool, where, -rc))
    if rc in (137, 143) and not tool_message(stderr, secret):  # killed inside a container
        return ServiceError("%s%s was killed by signal %d" % (tool, where, rc - 128))
    detail = tool_message(stderr, secret) or "no error output"
    return ServiceError("%s%s failed (exit %s): %s" % (tool, where, rc, detail))


def find_bin_dir(explicit=None, server_major=None, isdir=os.path.isdir, which=shutil.which,
                 globber=glob.glob):
    """Directory of the client tools on the managed host, or None to use PATH.

    An explicit ``bin_dir`` wins; then Debian's /usr/lib/postgresql/<server major>/bin so the
    tools match the server; then PATH when psql is on it; then the newest installed version.
    """
    if explicit:
        if not isdir(explicit):
            raise ConfigError("bin_dir %s is not a directory" % explicit)
        return explicit
    if server_major and isdir("/usr/lib/postgresql/%s/bin" % server_major):
        return "/usr/lib/postgresql/%s/bin" % server_major
    if which("pg_dump"):
        return None
    found = sorted(globber("/usr/lib/postgresql/*/bin"),
                   key=lambda p: int(re.sub(r"\D", "", p.split("/")[-2]) or 0))
    if found:
        return found[-1]
    raise ConfigError("PostgreSQL client tools (pg_dump, psql) not found on the managed host:"
                      " install them or set bin_dir")


def _pump(source, write, stopped_reading):
    """Copy the file-like ``source`` to ``write`` in chunks, to its end or until the tool stops
    reading (``write`` raises ``stopped_reading``): then the tool's exit code says why."""
    while True:
        data = source.read(CHUNK)
        if not data:
            return
        try:
            write(data)
        except stopped_reading:
            return


class _StderrDrain(threading.Thread):
    """Reads a stream to its end in the background, keeping the last 64 KiB."""

    def __init__(self, stream):
        super().__init__(daemon=True)
        self.stream, self.data = stream, b""

    def run(self):
        while True:
            chunk = self.stream.read(65536)
            if not chunk:
                return
            self.data = (self.data + chunk)[-STDERR_KEEP:]


def _load_prctl():
    """libc's prctl, looked up in the parent (never between fork and exec), or None."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _load_prctl()
PR_SET_PDEATHSIG = 1


def _child_setup():
    """preexec_fn: the tool leads its own process group (pg_dump -j / pg_restore -j workers are
    stopped with it) and gets SIGKILL when the module dies, even from SIGKILL (Linux)."""
    os.setpgid(0, 0)
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, int(signal.SIGKILL))


def stop(proc):
    """Kill a tool and its workers (its process group) and reap it."""
    with contextlib.suppress(OSError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(OSError):
        proc.kill()
    proc.wait()


def _wait(proc):
    rc = None
    try:
        rc = proc.wait()
    finally:
        if rc is None:  # a signal while waiting: the tool must not outlive the module
            stop(proc)
    return rc


class LocalTools:
    """The tools as child processes of the module on the managed host. An exception (a
    SIGTERM of the module, see ``cleanup.terminable``) stops the tool that is running."""

    where = "on the managed host"
    local = True

    def __init__(self, env, bin_dir=None, secret=None):
        self.env, self.bin_dir, self.secret = env, bin_dir, secret

    def path(self, tool):
        return os.path.join(self.bin_dir, tool) if self.bin_dir else tool

    def _popen(self, argv, **kwargs):
        try:
            # streamed pipes between tools, which AnsibleModule.run_command cannot do (and module_utils never sees the module)
            return subprocess.Popen(argv, env=self.env, close_fds=True,  # pylint: disable=ansible-bad-function
                                    preexec_fn=_child_setup, **kwargs)  # noqa: PLW1509
        except OSError as exc:
            raise ServiceError("cannot run %s on the managed host: %s" % (argv[0], exc.strerror)) from exc

    def run(self, argv, timeout=None):
        proc = self._popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        finished = False
        try:
            out, err = proc.communicate(timeout=timeout)
            finished = True
        except subprocess.TimeoutExpired as exc:
            raise ServiceError("%s timed out after %s s" % (os.path.basename(argv[0]), timeout)) from exc
        finally:
            if not finished:
                stop(proc)
        return proc.returncode, out, err

    @contextlib.contextmanager
    def reader(self, argv, stderr=None):
        """The tool's stdout; on success ``stderr`` (a list), if given, gets its stderr (the last 64 KiB)."""
        tool = os.path.basename(argv[0])
        proc = self._popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        with contextlib.suppress(OSError):
            fcntl.fcntl(proc.stdout.fileno(), F_SETPIPE_SZ, CHUNK)  # fewer, larger reads
        drain = _StderrDrain(proc.stderr)
        drain.start()
        read = False
        try:
            yield proc.stdout
            read = True
        finally:
            if not read:
                stop(proc)
            proc.stdout.close()
            rc = _wait(proc)
            drain.join()
            proc.stderr.close()
        if rc != 0:
            raise failure(tool, rc, drain.data, self.secret)
        if stderr is not None:
            stderr.append(drain.data)

    def feed(self, argv, source, check=True):
        tool = os.path.basename(argv[0])
        proc = self._popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        drain = _StderrDrain(proc.stderr)
        drain.start()
        fed = False
        try:
            _pump(source, proc.stdin.write, BrokenPipeError)
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
            fed = True
        finally:
            if not fed:
                stop(proc)
        rc = _wait(proc)
        drain.join()
        if check and rc != 0:
            raise failure(tool, rc, drain.data, self.secret)
        return rc, drain.data


class _DemuxReader:
    """File-like stdout of a non-TTY exec; stderr frames are kept aside."""

    def __init__(self, frames):
        self.frames, self.buf, self.stderr, self.eof = frames, bytearray(), b"", False

    def read(self, size=CHUNK):
        while len(self.buf) < size and not self.eof:
            try:
                out, err = next(self.frames)
            except StopIteration:
                self.eof = True
                break
            if err:
                self.stderr = (self.stderr + err)[-STDERR_KEEP:]
            if out:
                self.buf += out
        data = bytes(self.buf[:size])
        del self.buf[:size]
        return data


class _SocketStderr(threading.Thread):
    """Reads the multiplexed frames of an exec's attach socket, keeping stderr."""

    def __init__(self, sock):
        super().__init__(daemon=True)
        self.sock, self.stderr = sock, b""

    def _recv(self, size):
        data = b""
        while len(data) < size:
            chunk = self.sock.recv(size - len(data))
            if not chunk:
                return None
            data += chunk
        return data

    def run(self):
        with contextlib.suppress(OSError):
            while True:
                header = self._recv(8)
                if header is None:
                    return
                stream, length = struct.unpack(">BxxxL", header)
                payload = self._recv(length) if length else b""
                if payload is None:
                    return
                if stream == 2:
                    self.stderr = (self.stderr + payload)[-STDERR_KEEP:]


def _cmdline(pid):
    """The argument list of process ``pid`` on this machine, or None."""
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return [part.decode("utf-8", "surrogateescape") for part in fh.read().split(b"\0")[:-1]]
    except (OSError, ValueError):
        return None


def _ns_pid(pid):
    """The pid of process ``pid`` inside its own PID namespace (the container's)."""
    try:
        with open("/proc/%d/status" % pid) as fh:
            for line in fh:
                if line.startswith("NSpid:"):
                    return int(line.split()[-1])
    except (OSError, ValueError):
        pass
    return pid


OWNER_ENV = "OPSKIT_PG_BACKUP_OWNER"  # in the environment of every exec: which module process ran it


def _machine():
    """Host name, boot id and PID namespace: where a pid means this process."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as fh:
            boot = fh.read().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        boot = namespace = "?"
    return "%s|%s|%s" % (socket.gethostname(), boot, namespace)


def owner_tag(pid):
    """``<machine>|<pid>|<start time>`` of a process of this machine ("?" when /proc does not say)."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            start = fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        start = "?"
    return "%s|%d|%s" % (_machine(), pid, start)


def owner_gone(tag):
    """Whether the module process named by an exec's owner ``tag`` ran on this machine and is gone
    (a tag of another machine or namespace, or unreadable: never gone)."""
    parts = (tag or "").split("|")
    if len(parts) != 5 or not parts[3].isdigit() or "?" in parts[:3] or "|".join(parts[:3]) != _machine():
        return False
    return owner_tag(int(parts[3])) != tag


def exec_owner(pid):
    """The owner tag in the environment of process ``pid`` (an exec's), or None."""
    try:
        with open("/proc/%d/environ" % pid, "rb") as fh:
            for item in fh.read().split(b"\0"):
                if item.startswith(OWNER_ENV.encode() + b"="):
                    return item.split(b"=", 1)[1].decode("ascii", "replace")
    except OSError:
        pass
    return None


def _raw_socket(sock):
    """The socket.socket behind what docker's exec_start(socket=True) returns."""
    return getattr(sock, "_sock", sock)


class DockerTools:
    """The tools inside a running container, through the Docker API (exec, no TTY)."""

    local = False

    def __init__(self, client, container, env, user=None, bin_dir=None, secret=None):
        self.client, self.container, self.user = client, container, user
        self.env = ["%s=%s" % item for item in sorted(env.items())] + ["%s=%s" % (OWNER_ENV, owner_tag(os.getpid()))]
        self.bin_dir, self.secret = bin_dir, secret
        self.where = "in container %s" % container
        self.warnings = []

    def path(self, tool):
        return "%s/%s" % (self.bin_dir.rstrip("/"), tool) if self.bin_dir else tool

    def _exec(self, argv, stdin=False, stdout=True):
        from .._docker import docker_error
        try:
            return self.client.exec_create(self.container, argv, stdin=stdin, stdout=stdout,
                                           stderr=True, tty=False, environment=self.env,
                                           user=self.user or "")["Id"]
        except docker_errors() as exc:
            raise docker_error(exc, "container %s" % self.container) from exc

    def _exit_code(self, exec_id):
        info = self.client.exec_inspect(exec_id)
        return info.get("ExitCode")

    def _check(self, argv, exec_id, stderr):
        rc = self._exit_code(exec_id)
        if rc == 126 or rc == 127:
            raise ServiceError("cannot run %s in container %s (exit %s): %s" % (
                argv[0], self.container, rc, tool_message(stderr, self.secret) or "not found"))
        if rc != 0:
            raise failure(os.path.basename(argv[0]), rc, stderr, self.secret, self.where)

    def stop(self, exec_id):
        """Kill the exec's process: closing its stream does not end it (a SIGTERM of the module,
        a failed upload). Exec inspect gives its pid on the Engine's host; it is killed only when
        that is this machine (the pid's command line is the exec's), else a warning says so."""
        try:
            info = self.client.exec_inspect(exec_id)
        except docker_errors():
            info = {}
        pid, config = info.get("Pid"), info.get("ProcessConfig") or {}
        if not info.get("Running") or not pid:
            return
        argv = [config.get("entrypoint") or ""] + list(config.get("arguments") or [])
        if _cmdline(pid) != argv:
            self.warnings.append("%s %s may still be running: the Docker Engine is not on this machine"
                                 % (os.path.basename(argv[0]), self.where))
            return
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        except PermissionError:  # a module without the right: the container's root kills it
            with contextlib.suppress(*docker_errors()):
                kill = self.client.exec_create(self.container, ["kill", "-9", str(_ns_pid(pid))], user="0")["Id"]
                self.client.exec_start(kill)

    def orphans(self):
        """[(exec id, tool, pid)] of the execs in the container that a killed run of the module
        left running (its owner tag names a process of this machine that is gone)."""
        try:
            exec_ids = self.client.inspect_container(self.container).get("ExecIDs") or []
        except docker_errors():
            return []
        out = []
        for exec_id in exec_ids:
            try:
                info = self.client.exec_inspect(exec_id)
            except docker_errors():
                continue
            if info.get("Running") and owner_gone(exec_owner(info.get("Pid") or 0)):
                tool = os.path.basename((info.get("ProcessConfig") or {}).get("entrypoint") or "?")
                out.append((exec_id, tool, info["Pid"]))
        return out

    def run(self, argv, timeout=None):
        exec_id = self._exec(argv)
        done = False
        try:
            out, err = self.client.exec_start(exec_id, demux=True)
            done = True
        finally:
            if not done:
                self.stop(exec_id)
        return self._exit_code(exec_id), out or b"", err or b""

    @contextlib.contextmanager
    def reader(self, argv, stderr=None):
        exec_id = self._exec(argv)
        frames = self.client.exec_start(exec_id, stream=True, demux=True)
        reader = _DemuxReader(iter(frames))
        done = False
        try:
            yield reader
            while reader.read(CHUNK):  # drain to the end so the exit code is final
                pass
            done = True
        finally:
            if not done:
                self.stop(exec_id)
            with contextlib.suppress(*docker_errors()):
                frames.close()
        self._check(argv, exec_id, reader.stderr)
        if stderr is not None:
            stderr.append(reader.stderr)

    def feed(self, argv, source, check=True):
        exec_id = self._exec(argv, stdin=True, stdout=False)
        sock = self.client.exec_start(exec_id, socket=True)
        raw = _raw_socket(sock)
        drain = _SocketStderr(raw)
        drain.start()
        done = False
        try:
            _pump(source, raw.sendall, OSError)
            with contextlib.suppress(OSError):
                raw.shutdown(socket.SHUT_WR)
            drain.join()
            done = True
        finally:
            if not done:
                self.stop(exec_id)
            with contextlib.suppress(OSError):
                sock.close()
        if check:
            self._check(argv, exec_id, drain.stderr)
        return self._exit_code(exec_id), drain.stderr
