#!/usr/bin/env python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""200 HTTP checks against a local server that answers after 100 ms, side by side:

  health_check (playbook)   one opskit.runbook.health_check task with the N checks (default concurrency);
                            the task's wall time (a callback times task start -> result) and the
                            whole ansible-playbook run
  health_check (module)     the module alone: python -m ...health_check args.json (interpreter start,
                            imports, probes, JSON out), as Ansible runs it on the target minus transport
  uri loop                  ansible.builtin.uri with loop over the same N URLs (what runbooks do today)
  ping task                 ansible.builtin.ping: the fixed cost of any one task on this machine, for scale
  new types (module)        the module alone with N/4 checks of each of: http with samples: 5, metrics
                            (a histogram quantile from the same server's /metrics), tls (handshake
                            and chain of a TLS listener with a generated certificate), and http
                            over TLS (one SSL context for all of them)
  closed port (module)      the module alone with the N checks against a port nobody listens on: what
                            the module costs without any server time
  where the time goes       the AnsiballZ payloads of ping and of health_check (N checks), built as the
                            controller builds them and run as the target runs them, wall and CPU
  baseline (--baseline)     the task and module-alone rows of another version of the collection
                            (e.g. `git archive HEAD` unpacked as ansible_collections/opskit/runbook),
                            measured in the same loop, so that before and after share the load

The plain-http server answers each request 100 ms (--delay-ms) after its head arrived, from one
selectors thread in this process (--server loop, the default), or from a ThreadingHTTPServer, a
thread per connection (--server threads: at 200 connections at once it adds its own accept and
thread-start queue, tens of milliseconds on a loaded machine, to what the checks measure). Both
time each request from accept() to its last byte (their own share of a probe). The TLS listener
of the new-types row is a ThreadingHTTPServer. The health_check variants run --repeat times
(median reported); the uri loop runs once (it takes minutes).

Usage: .venv/bin/python bench/health_check.py [--checks 200] [--delay-ms 100] [--repeat 3] [--skip-uri]
                                              [--server loop|threads] [--baseline DIR] [--out bench/results/health_check.md]
"""

from __future__ import annotations

import argparse
import heapq
import http.server
import json
import os
import platform
import resource
import selectors
import socket
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time

from collect import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
VENV_BIN = os.path.dirname(sys.executable)
HC_PATH = os.path.join(COLLECTIONS, "ansible_collections", "opskit", "runbook", "plugins", "modules", "health_check.py")
PING_PATH = os.path.join(sysconfig.get_paths()["purelib"], "ansible", "modules", "ping.py")

CALLBACK = '''
from __future__ import annotations
import json, os, time
from ansible.plugins.callback import CallbackBase

class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "bench_timer"
    CALLBACK_NEEDS_ENABLED = True

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._start = time.perf_counter()

    def _done(self, result):
        with open(os.environ["BENCH_TIMER_FILE"], "a") as fh:
            fh.write(json.dumps({"task": result._task.get_name(), "seconds": time.perf_counter() - self._start,
                                 "failed": result.is_failed()}) + "\\n")

    v2_runner_on_ok = v2_runner_on_failed = _done
'''


METRICS = b"""# TYPE api_request_duration_seconds histogram
api_request_duration_seconds_bucket{le="0.1"} 900
api_request_duration_seconds_bucket{le="0.5"} 990
api_request_duration_seconds_bucket{le="+Inf"} 1000
api_request_duration_seconds_sum 80
api_request_duration_seconds_count 1000
"""


class SlowHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    delay = 0.1

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        time.sleep(self.delay)
        body = METRICS if self.path == "/metrics" else b'{"status": "UP"}'
        self.send_response(200)
        self.send_header("Content-Type", "text/plain" if self.path == "/metrics" else "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.server.answered(self.client_address)


class Server(http.server.ThreadingHTTPServer):
    """Also times each request from its accept() to its last byte sent (the server's own share of a probe)."""
    daemon_threads = True
    request_queue_size = 1024

    def __init__(self, *args):
        super().__init__(*args)
        self.accepted, self.answer_ms, self.lock = {}, [], threading.Lock()

    def process_request(self, request, client_address):
        self.accepted[client_address] = time.perf_counter()
        super().process_request(request, client_address)

    def answered(self, client_address):
        with self.lock:
            self.answer_ms.append((time.perf_counter() - self.accepted.pop(client_address, time.perf_counter())) * 1000)

    def take_answer_ms(self):
        with self.lock:
            times, self.answer_ms = sorted(self.answer_ms), []
        return {"server_median_ms": round(statistics.median(times), 1), "server_max_ms": round(times[-1], 1)} if times else {}


class LoopServer:
    """The same answers as SlowHandler from one selectors thread: each request is answered ``delay``
    after its head arrived, whatever the number of connections (a thread-per-connection server
    spends milliseconds per accept on a loaded machine, which the checks would wait for in its
    backlog). Times each request from accept() to its last byte, as Server does."""

    def __init__(self, address, delay):
        self.delay, self.lock, self.answer_ms, self.stopping = delay, threading.Lock(), [], False
        self.listener = socket.create_server(address, backlog=1024)
        self.listener.setblocking(False)
        self.server_address = self.listener.getsockname()
        self.selector = selectors.DefaultSelector()
        self.selector.register(self.listener, selectors.EVENT_READ, None)
        self.timers, self.conns = [], {}
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while not self.stopping:
            timeout = max(0.0, self.timers[0][0] - time.perf_counter()) if self.timers else 0.2
            for key, _events in self.selector.select(min(timeout, 0.2)):
                if key.data is None:
                    self._accept()
                else:
                    self._read(key.fileobj)
            while self.timers and self.timers[0][0] <= time.perf_counter():
                self._answer(heapq.heappop(self.timers)[2])

    def _accept(self):
        while True:
            try:
                conn, _addr = self.listener.accept()
            except BlockingIOError:
                return
            conn.setblocking(False)
            self.conns[conn] = [time.perf_counter(), b""]
            self.selector.register(conn, selectors.EVENT_READ, conn)

    def _read(self, conn):
        try:
            data = conn.recv(65536)
        except OSError:
            data = b""
        entry = self.conns[conn]
        entry[1] += data
        if not data or b"\r\n\r\n" in entry[1]:
            self.selector.unregister(conn)
            if data:
                heapq.heappush(self.timers, (time.perf_counter() + self.delay, id(conn), conn))
            else:
                conn.close()
                del self.conns[conn]

    def _answer(self, conn):
        accepted, head = self.conns.pop(conn)
        path = head.split(b" ", 2)[1] if head.count(b" ") >= 2 else b"/"
        body = METRICS if path == b"/metrics" else b'{"status": "UP"}'
        conn.setblocking(True)
        try:
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: %s\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (
                b"text/plain" if path == b"/metrics" else b"application/json", len(body), body))
        except OSError:
            pass
        conn.close()
        with self.lock:
            self.answer_ms.append((time.perf_counter() - accepted) * 1000)

    def take_answer_ms(self):
        with self.lock:
            times, self.answer_ms = sorted(self.answer_ms), []
        return {"server_median_ms": round(statistics.median(times), 1), "server_max_ms": round(times[-1], 1)} if times else {}

    def shutdown(self):
        self.stopping = True


def _env(workdir, collections=COLLECTIONS):
    env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
    env.update(ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
               ANSIBLE_CALLBACK_PLUGINS=workdir, ANSIBLE_CALLBACKS_ENABLED="bench_timer",
               BENCH_TIMER_FILE=os.path.join(workdir, "timer.jsonl"), ANSIBLE_NOCOLOR="1",
               ANSIBLE_DISPLAY_OK_HOSTS="false", ANSIBLE_DISPLAY_SKIPPED_HOSTS="false")
    return env


def run_playbook(workdir, play, task_name, collections=COLLECTIONS):
    path = os.path.join(workdir, "play.yml")
    with open(path, "w") as fh:
        fh.write(play)
    timer = os.path.join(workdir, "timer.jsonl")
    if os.path.exists(timer):
        os.unlink(timer)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", path],
                          env=_env(workdir, collections), capture_output=True, text=True, cwd=workdir, check=False)
    wall, cpu = time.perf_counter() - start, _cpu_since(before)
    if proc.returncode:
        raise SystemExit("playbook failed:\n%s\n%s" % (proc.stdout[-3000:], proc.stderr[-3000:]))
    with open(timer) as fh:
        rows = [json.loads(line) for line in fh]
    task = [r for r in rows if r["task"] == task_name]
    return {"task_s": round(task[-1]["seconds"], 3), "playbook_s": round(wall, 3), "playbook_cpu_s": round(cpu, 3)}


def _cpu_since(before):
    """CPU seconds (user + system) of the children waited for since ``before`` (their own children included)."""
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime


def health_play(urls):
    checks = "\n".join('          - {name: "c%03d", type: http, url: "%s"}' % (i, u) for i, u in enumerate(urls))
    return """- hosts: localhost
  gather_facts: false
  tasks:
    - name: probe
      opskit.runbook.health_check:
        checks:
%s
""" % checks


def uri_play(urls):
    return """- hosts: localhost
  gather_facts: false
  tasks:
    - name: probe
      ansible.builtin.uri:
        url: "{{ item }}"
        return_content: false
      loop: %s
""" % json.dumps(urls)


def tls_server(workdir):
    """The slow handler behind TLS, with a self-signed certificate for 127.0.0.1: (port, CA file)."""
    import datetime
    import ipaddress
    import ssl
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True).sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(workdir, "cert.pem"), os.path.join(workdir, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    server = TLSServer(("127.0.0.1", 0), SlowHandler)
    server.tls = ctx
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, cert_path


class TLSServer(Server):
    """Server with each connection's TLS handshake in its own thread (a listening socket wrapped in
    TLS would make every handshake in the accept loop, one after the other, each as slow as its client)."""
    tls = None

    def finish_request(self, request, client_address):
        try:
            request = self.tls.wrap_socket(request, server_side=True)
        except (OSError, ValueError):    # a client that gave up, or the tls probe's unverified second handshake
            return
        try:
            super().finish_request(request, client_address)
        finally:
            request.close()


BUILDER = r'''
import json, os, sys, tempfile, time
from ansible.executor import module_common
from ansible.parsing.dataloader import DataLoader
from ansible.plugins.loader import init_plugin_loader
from ansible.template import Templar
import ansible.constants as C
collections, name, path, args, out = sys.argv[1:6]
init_plugin_loader([collections])
C.DEFAULT_LOCAL_TMP = tempfile.mkdtemp()
wall, cpu = time.perf_counter(), time.process_time()
built = module_common.modify_module(module_name=name, module_path=path, module_args=json.loads(args),
                                    templar=Templar(loader=DataLoader()), task_vars={"ansible_python_interpreter": sys.executable},
                                    module_compression="ZIP_DEFLATED")
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
with open(out, "wb") as fh:
    fh.write(built.b_module_data)
print(json.dumps({"build_s": round(wall, 3), "build_cpu_s": round(cpu, 3), "payload_kb": round(len(built.b_module_data) / 1024)}))
'''


def ansiballz(workdir, name, path, args, collections=COLLECTIONS):
    """What Ansible does with a module, without the playbook around it: build the AnsiballZ payload
    (the controller's side: finding and parsing every module_util it imports, zipping them), then
    run it (the target's side: unzip, import - compiling every shipped file it imports, as there is
    no .pyc in the zip - and run). Wall and CPU seconds of both."""
    out = os.path.join(workdir, "AnsiballZ_%s.py" % name.split(".")[-1])
    env = dict(os.environ, PYTHONPATH=collections)
    proc = subprocess.run([sys.executable, "-c", BUILDER, collections, name, path, json.dumps(args), out],
                          env=env, capture_output=True, text=True, check=True)
    row = json.loads(proc.stdout.splitlines()[-1])
    before, wall = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, out], capture_output=True, text=True, check=False, cwd=workdir)
    wall, after = time.perf_counter() - wall, resource.getrusage(resource.RUSAGE_CHILDREN)
    result = json.loads(proc.stdout)
    if result.get("failed") or result.get("status", "OK") != "OK":
        raise SystemExit("AnsiballZ run of %s failed: %s" % (name, result.get("msg") or result.get("summary")))
    row.update(run_s=round(wall, 3), run_cpu_s=round(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime, 3))
    return row


def closed_port():
    """A loopback port nobody listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def new_type_checks(base, tls_port, ca, count):
    """``count`` checks of each new type (and https), all against the local servers."""
    checks = []
    for i in range(count):
        checks += [
            {"name": "samples%03d" % i, "type": "http", "url": "%s/health/s%d" % (base, i), "samples": 5,
             "thresholds": {"p95_ms": {"critical": 5000}, "error_pct": {"critical": 0}}},
            {"name": "metrics%03d" % i, "type": "metrics", "url": base + "/metrics", "metric": "api_request_duration_seconds",
             "quantile": 0.95, "critical": 1},
            {"name": "tls%03d" % i, "type": "tls", "host": "127.0.0.1", "port": tls_port, "ca_path": ca, "critical": "7:"},
            {"name": "https%03d" % i, "type": "http", "url": "https://127.0.0.1:%d/health/%d" % (tls_port, i), "ca_path": ca},
        ]
    return checks


def module_alone(workdir, urls, checks=None, collections=COLLECTIONS, expect="OK"):
    args = os.path.join(workdir, "args.json")
    with open(args, "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": {"checks": checks or [{"name": "c%03d" % i, "type": "http", "url": u}
                                                                for i, u in enumerate(urls)]}}, fh)
    env = dict(os.environ, PYTHONPATH=collections)
    before, start = resource.getrusage(resource.RUSAGE_CHILDREN), time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ansible_collections.opskit.runbook.plugins.modules.health_check", args],
                          env=env, capture_output=True, text=True, cwd=workdir, check=False)
    wall, cpu = time.perf_counter() - start, _cpu_since(before)
    report = json.loads(proc.stdout)
    if report.get("status") != expect:
        print([c["message"] for c in report["checks"] if c["status"] != "OK"][:3])
        raise SystemExit("module run not OK: %s" % report.get("summary"))
    durations = [c["duration_ms"] for c in report["checks"]]
    return {"wall_s": round(wall, 3), "cpu_s": round(cpu, 3), "run_ms": report["duration_ms"],
            "check_median_ms": statistics.median(durations), "check_max_ms": max(durations), "result_kb": round(len(proc.stdout) / 1024)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200)
    parser.add_argument("--delay-ms", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-uri", action="store_true", help="do not run the (slow) uri loop")
    parser.add_argument("--baseline", help="a collections directory (holding ansible_collections/opskit/runbook) of another"
                        " version, e.g. from `git archive`: its task and module-alone rows are measured in the same loop")
    parser.add_argument("--server", choices=("loop", "threads"), default="loop",
                        help="the plain-http server: one selectors thread (default), or ThreadingHTTPServer (a thread per connection)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "health_check.md"))
    opts = parser.parse_args()

    SlowHandler.delay = opts.delay_ms / 1000.0
    if opts.server == "loop":
        server = LoopServer(("127.0.0.1", 0), SlowHandler.delay)
    else:
        server = Server(("127.0.0.1", 0), SlowHandler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
    base = "http://127.0.0.1:%d" % server.server_address[1]
    urls = ["%s/health/%d" % (base, i) for i in range(opts.checks)]
    workdir = tempfile.mkdtemp(prefix="bench-health-")
    with open(os.path.join(workdir, "bench_timer.py"), "w") as fh:
        fh.write(CALLBACK)
    load_before = os.getloadavg()

    tls, ca = tls_server(workdir)
    mixed = new_type_checks(base, tls.server_address[1], ca, max(1, opts.checks // 4))
    ping_play = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - name: probe\n      ansible.builtin.ping:\n"
    playbook_runs, module_runs, ping_runs, new_runs, base_play, base_mod, refused_runs, zip_runs = [], [], [], [], [], [], [], []
    refused = ["http://127.0.0.1:%d/health/%d" % (closed_port(), i) for i in range(opts.checks)]
    zip_args = {"checks": [{"name": "c%03d" % j, "type": "http", "url": u} for j, u in enumerate(urls)]}
    base_new, base_zip = [], []
    for i in range(opts.repeat):
        if opts.baseline:
            base_play.append(run_playbook(workdir, health_play(urls), "probe", collections=opts.baseline))
            base_mod.append(module_alone(workdir, urls, collections=opts.baseline))
            base_new.append(module_alone(workdir, urls, mixed, collections=opts.baseline))
            base_zip.append(ansiballz(workdir, "opskit.runbook.health_check", os.path.join(
                opts.baseline, "ansible_collections", "opskit", "runbook", "plugins", "modules", "health_check.py"), zip_args,
                collections=opts.baseline))
            print("baseline task %.2f s, module alone %.2f s;" % (base_play[-1]["task_s"], base_mod[-1]["wall_s"]), end=" ")
        ping_runs.append(run_playbook(workdir, ping_play, "probe"))
        playbook_runs.append(run_playbook(workdir, health_play(urls), "probe"))
        server.take_answer_ms()
        module_runs.append(module_alone(workdir, urls))
        module_runs[-1].update(server.take_answer_ms())
        new_runs.append(module_alone(workdir, urls, mixed))
        refused_runs.append(module_alone(workdir, refused, expect="CRITICAL"))
        zip_runs.append({"ping": ansiballz(workdir, "ping", PING_PATH, {}),
                         "health_check": ansiballz(workdir, "opskit.runbook.health_check", HC_PATH, zip_args)})
        print("ping task %.2f s;" % ping_runs[-1]["task_s"], end=" ")
        print("health_check run %d: task %.2f s, playbook %.2f s; module alone %.2f s (probes %.0f ms)" % (
            i + 1, playbook_runs[-1]["task_s"], playbook_runs[-1]["playbook_s"], module_runs[-1]["wall_s"],
            module_runs[-1]["run_ms"]), flush=True)
    uri = None
    if not opts.skip_uri:
        uri = run_playbook(workdir, uri_play(urls), "probe")
        print("uri loop: task %.1f s, playbook %.1f s" % (uri["task_s"], uri["playbook_s"]), flush=True)
    load_after = os.getloadavg()
    server.shutdown()
    tls.shutdown()

    def med(rows, key):
        return statistics.median(r[key] for r in rows)
    hc_task, hc_play = med(playbook_runs, "task_s"), med(playbook_runs, "playbook_s")
    mod_wall, mod_run = med(module_runs, "wall_s"), med(module_runs, "run_ms")
    lines = [
        "# health_check benchmark: %d HTTP checks, server answers after %d ms" % (opts.checks, opts.delay_ms),
        "",
        "Command: `.venv/bin/python bench/health_check.py %s`" % " ".join(sys.argv[1:]),
        "",
        "Machine: %s, %d CPUs, Python %s; load average %.2f before, %.2f after (1-minute averages on 2 cores: above 2 means other work competed for the CPUs)."
        % (platform.platform(), os.cpu_count(), platform.python_version(), load_before[0], load_after[0]),
        "Measured %s." % time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "",
        "| variant | wall time | notes |",
        "|---|---|---|",
        "| health_check task (ansible-playbook, median of %d) | %.2f s | playbook total %.2f s, CPU %.2f s |" % (
            len(playbook_runs), hc_task, hc_play, med(playbook_runs, "playbook_cpu_s")),
        "| health_check module alone (median of %d) | %.2f s | CPU %.0f ms; probes %.0f ms; per-check latency median %.0f ms, max %.0f ms;"
        " the server's accept-to-answer median %.0f ms, max %.0f ms; result %d KB |" % (
            len(module_runs), mod_wall, med(module_runs, "cpu_s") * 1000, mod_run, med(module_runs, "check_median_ms"),
            med(module_runs, "check_max_ms"), med(module_runs, "server_median_ms"), med(module_runs, "server_max_ms"),
            med(module_runs, "result_kb")),
        "| module alone, the same checks to a closed port (median of %d) | %.2f s | no server time: interpreter, imports,"
        " validation, the event loop, report; probes %.0f ms |" % (len(refused_runs), med(refused_runs, "wall_s"), med(refused_runs, "run_ms")),
        "| ansible.builtin.ping task (median of %d) | %.2f s | the fixed cost of one task here, for scale; playbook total %.2f s,"
        " CPU %.2f s |" % (len(ping_runs), med(ping_runs, "task_s"), med(ping_runs, "playbook_s"), med(ping_runs, "playbook_cpu_s")),
        "| new types, module alone (median of %d) | %.2f s | %d checks: http samples 5, metrics quantile, tls, https; CPU %.0f ms;"
        " probes %.0f ms; per-check median %.0f ms, max %.0f ms |" % (
            len(new_runs), med(new_runs, "wall_s"), len(mixed), med(new_runs, "cpu_s") * 1000, med(new_runs, "run_ms"),
            med(new_runs, "check_median_ms"), med(new_runs, "check_max_ms")),
    ]
    if opts.baseline:
        lines += [
            "| baseline (%s): health_check task (median of %d) | %.2f s | playbook total %.2f s, CPU %.2f s |" % (
                opts.baseline, len(base_play), med(base_play, "task_s"), med(base_play, "playbook_s"), med(base_play, "playbook_cpu_s")),
            "| baseline: module alone (median of %d) | %.2f s | CPU %.0f ms; probes %.0f ms; per-check latency median %.0f ms,"
            " max %.0f ms; result %d KB |" % (
                len(base_mod), med(base_mod, "wall_s"), med(base_mod, "cpu_s") * 1000, med(base_mod, "run_ms"),
                med(base_mod, "check_median_ms"), med(base_mod, "check_max_ms"), med(base_mod, "result_kb")),
            "| baseline: new types, module alone (median of %d) | %.2f s | CPU %.0f ms; probes %.0f ms; per-check median %.0f ms,"
            " max %.0f ms |" % (len(base_new), med(base_new, "wall_s"), med(base_new, "cpu_s") * 1000, med(base_new, "run_ms"),
                                med(base_new, "check_median_ms"), med(base_new, "check_max_ms"))]
    lines += ["", "Where the time goes - the AnsiballZ payload of each module, built and run as Ansible does (median of %d;"
              " CPU seconds hold better than wall seconds on a loaded machine):" % len(zip_runs), "",
              "| module | build (controller) wall / CPU | payload | run (target) wall / CPU |", "|---|---|---|---|"]
    if base_zip:
        zip_runs = [dict(run, baseline=row) for run, row in zip(zip_runs, base_zip)]
    for key in ("ping", "health_check") + (("baseline",) if base_zip else ()):
        rows = [r[key] for r in zip_runs]
        lines.append("| %s | %.0f / %.0f ms | %d KB | %.0f / %.0f ms |" % (
            "health_check (baseline)" if key == "baseline" else key, med(rows, "build_s") * 1000, med(rows, "build_cpu_s") * 1000, med(rows, "payload_kb"),
            med(rows, "run_s") * 1000, med(rows, "run_cpu_s") * 1000))
    floor = med(ping_runs, "task_s") + opts.delay_ms / 1000.0
    ping_cpu = med(ping_runs, "playbook_cpu_s")
    lines += ["", "Task / (ping task + slowest probe): **%.2fx** (goal at most 1.2x)." % (hc_task / floor),
              "Playbook CPU over the ping playbook's: **+%.0f ms**." % ((med(playbook_runs, "playbook_cpu_s") - ping_cpu) * 1000)]
    if opts.baseline:
        lines += ["Baseline task / (ping task + slowest probe), same run: **%.2fx**; its playbook CPU over the ping playbook's:"
                  " **+%.0f ms**." % (med(base_play, "task_s") / floor, (med(base_play, "playbook_cpu_s") - ping_cpu) * 1000)]
    if uri:
        lines += ["| ansible.builtin.uri loop (1 run) | %.1f s | playbook total %.1f s |" % (uri["task_s"], uri["playbook_s"]),
                  "", "Speed-up of the task: **%.0fx** (uri loop task / health_check task)." % (uri["task_s"] / hc_task)]
    runs = {"health_check_playbook": playbook_runs, "module_alone": module_runs, "ping": ping_runs, "new_types": new_runs,
            "uri": uri, "closed_port": refused_runs, "ansiballz": zip_runs,
            "baseline_playbook": base_play, "baseline_module_alone": base_mod, "baseline_new_types": base_new}
    lines += ["", "Every run: %s" % json.dumps(runs)]
    text = "\n".join(lines) + "\n"
    print(text)
    if opts.out:
        write_results(opts.out, text)


if __name__ == "__main__":
    main()
