# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the role and playbook tests: a webhook receiver, report readers, a /proc/*/cmdline
watcher, a syslog receiver and a password-protected redis-server."""

from __future__ import annotations

import glob
import json
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from harness import Background, free_port

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PLAYBOOKS = os.path.join(ROOT, "playbooks")


class Webhook(Background):
    """A local HTTP receiver for the length of a with-block: every POST body (parsed JSON) lands in ``posts``."""

    def __init__(self, status=200):
        self.posts = []
        self.status = status
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server API)
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                outer.posts.append({"path": self.path, "headers": dict(self.headers),
                                    "json": json.loads(body or b"null")})
                self.send_response(outer.status)
                self.end_headers()

            def log_message(self, *args):  # keep pytest output clean
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = "http://127.0.0.1:%d/hooks/T000/B000/secret-token" % self.server.server_address[1]
        super().__init__(self.server.serve_forever)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


def reports(report_dir, name):
    """The JSON reports named ``name`` in report_dir, oldest first, parsed."""
    paths = sorted(glob.glob(os.path.join(report_dir, "%s-*.json" % name)), key=os.path.getmtime)
    out = []
    for path in paths:
        with open(path) as fh:
            out.append(json.load(fh))
        assert os.path.exists(path[:-5] + ".html"), "no HTML report next to %s" % path
    return out


def playbook(name):
    return os.path.join(PLAYBOOKS, "%s.yml" % name)


def conn(pg):
    return {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password, "bin_dir": pg.bin_dir}


class CmdlineWatcher(Background):
    """Reads every /proc/*/cmdline in a loop for the length of a with-block; ``hits`` lists the
    command lines (secrets masked) that contained one of ``secrets``, ``scans`` counts the passes."""

    def __init__(self, secrets, every=0.005):
        self.secrets = [s.encode() for s in secrets if s]
        self.hits, self.scans, self.every = [], 0, every
        self._done = threading.Event()
        super().__init__(self._run)

    def _scan(self):
        for path in glob.glob("/proc/[0-9]*/cmdline"):
            try:
                with open(path, "rb") as fh:
                    line = fh.read()
            except OSError:  # the process ended meanwhile
                continue
            found = [s for s in self.secrets if s in line]
            if found:
                masked = line
                for secret in found:
                    masked = masked.replace(secret, b"<SECRET>")
                self.hits.append(masked.replace(b"\0", b" ").decode(errors="replace")[:300])
        self.scans += 1

    def _run(self):
        while not self._done.is_set():
            self._scan()
            self._done.wait(self.every)

    def stop(self):
        self._done.set()


class PasswordRedis:
    """A private redis-server with requirepass, set in its config file (never on a command line)."""

    host = "127.0.0.1"

    def __init__(self, password):
        self.password = password
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="opskit-redis-auth-")
        self.proc = None

    def cli(self, *args):
        env = dict(os.environ, REDISCLI_AUTH=self.password)
        return subprocess.run(["redis-cli", "--no-auth-warning", "-h", self.host, "-p", str(self.port)] + list(args),
                              env=env, capture_output=True, text=True, check=True, timeout=10).stdout

    def __enter__(self):
        conf = os.path.join(self.root, "redis.conf")
        with open(os.open(conf, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write("port %d\nbind 127.0.0.1\nsave \"\"\nappendonly no\ndir %s\nrequirepass \"%s\"\n"
                     % (self.port, self.root, self.password))
        log = open(os.path.join(self.root, "redis.log"), "wb")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(["redis-server", conf], stdout=log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 30
        while True:
            try:
                if self.cli("PING").strip() == "PONG":
                    return self
            except subprocess.CalledProcessError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                self.__exit__()
                raise AssertionError("the password-protected redis-server did not start")
            time.sleep(0.1)

    def __exit__(self, *exc):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=15)
        shutil.rmtree(self.root, ignore_errors=True)


# ansible-playbook at -vvv, every task through become (su to root): what an operator debugging a run sees
VERBOSE_BECOME = {"ANSIBLE_VERBOSITY": "3", "ANSIBLE_BECOME": "true", "ANSIBLE_BECOME_METHOD": "su",
                  "ANSIBLE_BECOME_USER": "root"}


class SyslogCapture(Background):
    """Receives what modules log to syslog (/dev/log, where journald also listens) for the length
    of a with-block, when no syslog daemon or journald owns /dev/log on this machine; ``active``
    says whether it could listen, ``messages`` holds what arrived."""

    PATH = "/dev/log"

    def __init__(self):
        self.messages, self.active = [], False
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            if not os.path.exists(self.PATH):
                self._sock.bind(self.PATH)
                self.active = True
        except OSError:
            pass
        self._sock.settimeout(0.2)
        self._done = threading.Event()
        super().__init__(self._run)

    def _run(self):
        while not self._done.is_set() and self.active:
            try:
                self.messages.append(self._sock.recv(65536).decode(errors="replace"))
            except socket.timeout:
                continue
            except OSError:
                break

    def stop(self):
        self._done.set()

    def __exit__(self, *exc):
        super().__exit__(*exc)
        self._sock.close()
        if self.active:
            os.unlink(self.PATH)
