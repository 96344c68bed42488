# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The event loop of the http checks (issue 17 item 7): a loopback server that answers each path
with scripted bytes (keep-alive, chunked, 100 Continue, short bodies, garbage, silence), and the
same answers read by the loop (run_checks) and by the blocking path (net.probe_http) must agree."""

from __future__ import annotations

import socket
import threading

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._health import aio, engine, net
from ansible_collections.opskit.runbook.plugins.module_utils._health.engine import run_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.outcome import PROBE_ERRORS, exception_state
from ansible_collections.opskit.runbook.plugins.module_utils._health.probe import Observation
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import validate_checks

JSON = b'{"status": "UP"}'
ANSWERS = {   # path -> (bytes sent, close after sending)
    "/length": (b"HTTP/1.1 200 OK\r\nContent-Length: 16\r\nContent-Type: application/json\r\n\r\n" + JSON, False),
    "/chunked": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"sta\r\nb\r\ntus\": \"UP\"}\r\n0\r\n\r\n", False),
    "/continue": (b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 16\r\n\r\n" + JSON, False),
    "/close": (b"HTTP/1.0 503 Service Unavailable\r\n\r\ndown", True),
    "/lf": (b"HTTP/1.1 200 OK\nContent-Length: 16\n\n" + JSON, False),
    "/folded": (b"HTTP/1.1 200 OK\r\nX-Long: a\r\n b\r\nContent-Length: 16\r\n\r\n" + JSON, False),
    "/head": (b"HTTP/1.1 204 No Content\r\nContent-Length: 99\r\n\r\n", False),
    "/short": (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", True),
    "/garbage": (b"SSH-2.0-OpenSSH_9.2\r\n\r\n", True),
    "/empty": (b"", True),
    "/silent": (b"", False),
}


class ScriptServer:
    """Reads a request head, answers ANSWERS[path]; keeps the connection open unless told to close."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.open, self.requests = [], []
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while True:
            try:
                conn, _addr = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self.answer, args=(conn,), daemon=True).start()

    def answer(self, conn):
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = conn.recv(4096)
            if not chunk:
                conn.close()
                return
            data += chunk
        self.requests.append(data)
        path = data.split(b" ")[1].decode()
        payload, close = ANSWERS[path.split("?")[0]]
        conn.sendall(payload)
        if close:
            conn.close()
        else:
            self.open.append(conn)   # as a server ignoring "Connection: close"

    def stop(self):
        self.sock.close()
        for conn in self.open:
            conn.close()


@pytest.fixture(scope="module")
def server():
    srv = ScriptServer()
    yield srv
    srv.stop()


EXPECTED = [   # path, extra options, status, fragment of the message
    ("/length", {"json_conditions": ['status == "UP"']}, "OK", "1 of 1 conditions passed"),
    ("/chunked", {"json_conditions": ['status == "UP"']}, "OK", "1 of 1 conditions passed"),
    ("/continue", {"body_contains": "UP"}, "OK", "HTTP 200 in"),
    ("/close", {"body_contains": "down"}, "CRITICAL", "status (503) not in 200-299"),
    ("/lf", {"json_conditions": ['status == "UP"']}, "OK", "1 of 1 conditions passed"),
    ("/folded", {"body_contains": "UP"}, "OK", "HTTP 200 in"),
    ("/head", {"status_codes": [204]}, "OK", "HTTP 204 in"),
    ("/short", {"body_contains": "abc"}, "OK", "HTTP 200 in"),   # http.client's read(amt) keeps a short body, as before
    ("/garbage", {}, "CRITICAL", "no valid HTTP answer from 127.0.0.1:%(port)d: "),
    ("/empty", {}, "CRITICAL", "no valid HTTP answer from 127.0.0.1:%(port)d: Remote end closed connection without response"),
    ("/silent", {"timeout": 0.3}, "CRITICAL", "timed out after 0.3s while waiting for the first byte"),
]


def _check(server, path, extra, host="127.0.0.1"):
    return dict({"name": path, "type": "http", "url": "http://%s:%d%s" % (host, server.port, path), "timeout": 5}, **extra)


def _blocking(check):
    """The check through the blocking path (the probe the thread workers call), judged as the engine does."""
    [valid] = validate_checks([check])
    obs = Observation()
    try:
        net.probe_http(valid, obs, valid["timeout"])
    except PROBE_ERRORS as exc:
        return exception_state(exc, valid["timeout"])[0], exception_state(exc, valid["timeout"])[1], obs.measures
    states = [state for state, _msg in obs.problems] or ["OK"]
    return max(states, key=["OK", "WARNING", "UNKNOWN", "CRITICAL"].index), "; ".join(obs.notes + [m for _s, m in obs.problems]), obs.measures


def test_the_loop_reads_every_answer_as_the_blocking_path_does(server, monkeypatch):
    monkeypatch.setattr(engine, "_LOOPS", 2)        # two loops (a thread beside this one), whatever the machine
    monkeypatch.setattr(engine, "_PER_LOOP", 1)
    report = run_checks([_check(server, path, extra) for path, extra, _status, _fragment in EXPECTED])
    for (path, extra, status, fragment), result in zip(EXPECTED, report["checks"]):
        assert (result["name"], result["status"]) == (path, status), result
        assert fragment % {"port": server.port} in result["message"], result["message"]
        blocking = _blocking(_check(server, path, extra))
        assert blocking[0] == status and fragment % {"port": server.port} in blocking[1], (path, blocking)
        assert set(blocking[2]) == set(result["measures"]), (path, blocking[2], result["measures"])
    assert report["checks"][0]["measures"]["status_code"] == 200 and report["checks"][0]["measures"]["body_bytes"] == 16


def test_names_are_resolved_once_on_a_thread_and_refusals_and_samples_run_on_the_loop(server, monkeypatch):
    monkeypatch.setattr(engine, "_LOOPS", 1)        # one loop: one lookup per name
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    checks = [_check(server, "/length", {"name": "n%d" % i}, host="localhost") for i in range(3)]
    checks += [{"name": "refused", "type": "http", "url": "http://127.0.0.1:%d/" % closed},
               {"name": "nxdomain", "type": "http", "url": "http://no-such-host.invalid/"},
               _check(server, "/length", {"name": "sampled", "samples": 4, "sample_interval": 0.01})]
    started = []
    real = aio.Loop._resolve

    def resolve(self, found, host, port):
        started.append(host)
        real(self, found, host, port)
    aio.Loop._resolve = resolve
    try:
        report = run_checks(checks)
    finally:
        aio.Loop._resolve = real
    got = {c["name"]: c for c in report["checks"]}
    assert sorted(started) == ["localhost", "no-such-host.invalid"]       # one lookup per name, none for addresses
    assert all(got["n%d" % i]["status"] == "OK" for i in range(3)), report["summary"]
    assert got["refused"]["message"] == "connection to 127.0.0.1:%d refused" % closed
    assert got["nxdomain"]["status"] == "CRITICAL" and got["nxdomain"]["message"].startswith("DNS lookup of no-such-host.invalid failed")
    assert got["sampled"]["status"] == "OK" and got["sampled"]["measures"]["samples"] == 4, got["sampled"]


def test_a_bug_in_a_loop_probe_ends_that_check_only_and_threads_run_beside_the_loop(server, monkeypatch):
    def broken(check, obs, timeout, ctx=None):
        if check["name"] == "bug":
            raise RuntimeError("bug\nin a loop probe")
        yield from net.probe_http_steps(check, obs, timeout, ctx)
    run_checks([{"type": "load"}])                     # the probe files are imported
    monkeypatch.setitem(engine._STEPS, "http", broken)
    report = run_checks([_check(server, "/length", {"name": "bug"}), _check(server, "/length", {"name": "fine"}),
                         {"type": "load", "name": "threaded"}], concurrency=2)
    got = {c["name"]: c for c in report["checks"]}
    assert (got["bug"]["status"], got["bug"]["message"]) == ("UNKNOWN", "probe error: RuntimeError: bug in a loop probe")
    assert got["fine"]["status"] == "OK" and got["threaded"]["type"] == "load" and got["threaded"]["attempts"] == 1
    assert engine._shares(2, 2, 1) == (1, 1) and engine._shares(256, 200, 0) == (200, 0) and engine._shares(8, 0, 3) == (0, 3)


def test_the_request_is_what_http_client_sends(server):
    before = len(server.requests)
    run_checks([_check(server, "/length", {"method": "POST", "body": {"a": 1}, "headers": {"X-Token": "t0k"}})])
    head = server.requests[before]
    assert head.startswith(b"POST /length HTTP/1.1\r\n")
    for field in (b"Host: 127.0.0.1:%d" % server.port, b"Accept-Encoding: identity", b"Content-Length: 8",
                  b"Content-Type: application/json", b"X-Token: t0k", b"Connection: close",
                  b"User-Agent: opskit.runbook-health_check"):
        assert field in head, head
