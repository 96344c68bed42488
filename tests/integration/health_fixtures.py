# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Targets for the health_check tests: an HTTP(S) server with slow, failing, JSON and flaky
endpoints (TLS with a self-signed certificate that expires in a few days), a socket that
accepts and never speaks, and a stand-in of the Kubernetes apps/v1 Deployment endpoint.
"""

from __future__ import annotations

import base64
import datetime
import http.server
import ipaddress
import json
import os
import pwd
import re
import shutil
import socket
import socketserver
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from urllib.parse import parse_qs, urlsplit

import pytest

from rollout_fixtures import not_found_status, send_json

CERT_DAYS = 5  # the test certificate expires this many days from now
SPIKE_MS = 600  # /spiky/KEY/N: every Nth call answers after this many ms
AUTH_USER, AUTH_PASSWORD = "probe-user", "pw-%s" % os.urandom(6).hex()   # /auth wants these (basic auth)


def _self_signed(directory, days=CERT_DAYS):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opskit-health-test")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
    with open(cert_path, "wb") as fh:
        fh.write(cert.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as fh:
        fh.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                   serialization.NoEncryption()))
    return cert_path, key_path


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    counters = {}
    lock = threading.Lock()

    def log_message(self, *args):  # quiet
        pass

    def _send(self, status, body, ctype="application/json"):
        data = body if isinstance(body, bytes) else (json.dumps(body) if ctype == "application/json" else body).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):  # noqa: N802
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        if url.path == "/health":
            return self._send(200, {"status": "UP", "checks": {"db": {"status": "ok", "latency": "12.5"}},
                                    "word": "abc", "pool": {"used": 42}})
        if url.path == "/down":
            return self._send(503, {"status": "DOWN", "checks": {"db": {"status": "timeout"}}})
        if url.path == "/slow":
            time.sleep(int(query.get("ms", ["100"])[0]) / 1000.0)
            return self._send(200, {"status": "UP"})
        if url.path == "/text":
            return self._send(200, "hello from the test server\n", "text/plain")
        if url.path == "/auth":  # basic authentication with AUTH_USER / AUTH_PASSWORD
            expected = "Basic " + base64.b64encode(("%s:%s" % (AUTH_USER, AUTH_PASSWORD)).encode()).decode()
            if self.headers.get("Authorization") != expected:
                return self._send(401, {"error": "unauthorized"})
            return self._send(200, {"status": "UP"})
        match = re.match(r"^/(ratio|spiky)/(\w+)/(\d+)$", url.path)  # every Nth call of a key: 503, or slow
        if match:
            with self.lock:
                count = self.counters[match.group(2)] = self.counters.get(match.group(2), 0) + 1
            nth = count % int(match.group(3)) == 0
            if match.group(1) == "spiky" and nth:
                time.sleep(SPIKE_MS / 1000.0)
            return self._send(503 if match.group(1) == "ratio" and nth else 200, {"call": count})
        match = re.match(r"^/flaky/(\w+)/(\d+)$", url.path)  # 503 for the first N calls of a key, then 200
        if match:
            with self.lock:
                count = self.counters[match.group(1)] = self.counters.get(match.group(1), 0) + 1
            return self._send(503 if count <= int(match.group(2)) else 200, {"call": count})
        return self._send(404, {"error": "not found"})

    def do_POST(self):  # noqa: N802
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size).decode()
        return self._send(200, {"method": "POST", "content_type": self.headers.get("Content-Type"), "body": body,
                                "token": self.headers.get("X-Token")})


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def handle_error(self, request, client_address):
        pass  # clients that time out on purpose hang up mid-answer


def _serve(server):
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    return server


class HealthTargets:
    """http_url, https_url (self-signed, expires in CERT_DAYS days), mtls_url (wants a client
    certificate: cert_path/key_path), cert_path, silent_port."""

    def __init__(self, directory):
        self.cert_path, key_path = _self_signed(directory)
        self.http = _serve(_Server(("127.0.0.1", 0), _Handler))
        self.https = _tls_server(self.cert_path, key_path)
        mtls = _Server(("127.0.0.1", 0), _Handler)  # demands a client certificate signed by the test CA
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, key_path)
        ctx.verify_mode = ssl.CERT_REQUIRED
        ctx.load_verify_locations(self.cert_path)
        mtls.socket = ctx.wrap_socket(mtls.socket, server_side=True)
        self.mtls = _serve(mtls)
        self.key_path = key_path
        self.silent = socket.socket()
        self.silent.bind(("127.0.0.1", 0))
        self.silent.listen(64)  # accepts (backlog) and never answers
        self.http_url = "http://127.0.0.1:%d" % self.http.server_address[1]
        self.https_url = "https://127.0.0.1:%d" % self.https.server_address[1]
        self.mtls_url = "https://127.0.0.1:%d" % self.mtls.server_address[1]
        self.silent_port = self.silent.getsockname()[1]

    def close(self):
        for server in (self.http, self.https, self.mtls):
            server.shutdown()
            server.server_close()
        self.silent.close()


def _closing(cls, tmp_path_factory, name):
    """A ``cls`` built in a fresh temporary directory, closed when the fixture ends."""
    thing = cls(str(tmp_path_factory.mktemp(name)))
    yield thing
    thing.close()


@pytest.fixture(scope="module")
def health_targets(tmp_path_factory):
    yield from _closing(HealthTargets, tmp_path_factory, "health-targets")


# --------------------------------------------------------------------------- Kubernetes stand-in

def deployment(name, namespace="default", replicas=3, updated=3, total=3, available=3, ready=None,
               generation=1, observed=1, conditions=(), match_labels=None):
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "generation": generation},
            "spec": {"replicas": replicas, "selector": {"matchLabels": match_labels or {"app": name}}},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "readyReplicas": available if ready is None else ready, "availableReplicas": available,
                       "unavailableReplicas": max(0, replicas - available), "conditions": list(conditions)}}


def pod(name, namespace, labels, ready=True, restarts=0, waiting=None, last_terminated=None, limit="64Mi"):
    """A core/v1 Pod with one container ``app``."""
    status = {"name": "app", "restartCount": restarts, "ready": ready,
              "state": {"waiting": {"reason": waiting}} if waiting else {"running": {"startedAt": "2026-01-01T00:00:00Z"}},
              "lastState": {"terminated": {"reason": last_terminated, "exitCode": 137}} if last_terminated else {}}
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"containers": [{"name": "app", "resources": {"limits": {"memory": limit}} if limit else {}}]},
            "status": {"phase": "Running", "containerStatuses": [status],
                       "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


def send_text(handler, status, text):
    body = text.encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "text/plain" if status == 200 else "application/json")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _selected(items, path):
    """The items whose labels match the labelSelector (a=b,c=d) of the request ``path``."""
    query = parse_qs(urlsplit(path).query)
    wanted = dict(part.split("=", 1) for part in (query.get("labelSelector") or [""])[0].split(",") if "=" in part)
    return [i for i in items if all((i["metadata"].get("labels") or {}).get(k) == v for k, v in wanted.items())]


class KubeStandIn:
    """GET /apis/apps/v1/namespaces/{ns}/deployments/{name} from ``self.deployments``, the pods of a
    namespace (``self.pods``) by label selector, their metrics-server usage (``self.usage``:
    {(ns, pod): "32Mi"}; a namespace without any answers 404, as without metrics-server), their
    containers' logs (``self.logs``, see ``log``); a kubeconfig."""

    def __init__(self, directory):
        self.deployments, self.pods, self.usage, self.logs = {}, {}, {}, {}
        self.requests = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                stand_in.requests.append(self.path)
                log = stand_in.log(self.path)
                if log is not None:
                    return send_text(self, *log)
                listing = stand_in.listing(self.path)
                if listing is not None:
                    return send_json(self, *listing)
                match = re.match(r"^/apis/apps/v1/namespaces/([^/]+)/deployments/([^/?]+)", self.path)
                item = stand_in.deployments.get((match.group(1), match.group(2))) if match else None
                if item is None:
                    send_json(self, 404, not_found_status(
                        "deployments.apps %r not found" % (match.group(2) if match else "")))
                else:
                    send_json(self, 200, item)

        self.server = _serve(_Server(("127.0.0.1", 0), Handler))
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        self.kubeconfig = os.path.join(directory, "kubeconfig")
        with open(self.kubeconfig, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "stand-in",
                       "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
                       "users": [{"name": "tester", "user": {"token": "stand-in-token"}}],
                       "contexts": [{"name": "stand-in", "context": {"cluster": "stand-in", "user": "tester"}}]}, fh)

    def add(self, item):
        key = (item["metadata"]["namespace"], item["metadata"]["name"])
        (self.pods if item["kind"] == "Pod" else self.deployments)[key] = item

    def log(self, path):
        """(status, text) of GET /api/v1/namespaces/{ns}/pods/{pod}/log?container=&tailLines= from
        ``self.logs`` ({(ns, pod, container): text}); 400 for a pod's container without logs (one
        waiting to start), 404 for a pod that is not there; None for other paths."""
        match = re.match(r"^/api/v1/namespaces/([^/]+)/pods/([^/]+)/log(\?|$)", path)
        if not match:
            return None
        query = parse_qs(urlsplit(path).query)
        ns, name, container = match.group(1), match.group(2), (query.get("container") or ["app"])[0]
        if (ns, name) not in self.pods:
            return 404, json.dumps(not_found_status("pods %r not found" % name))
        text = self.logs.get((ns, name, container))
        if text is None:
            return 400, json.dumps({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "BadRequest", "code": 400,
                                    "message": "container %r in pod %r is waiting to start: ContainerCreating" % (container, name)})
        lines = text.splitlines(True)
        if query.get("tailLines"):
            lines = lines[-int(query["tailLines"][0]):]
        return 200, "".join(lines)

    def listing(self, path):
        """(status, body) for the pod and pod-metrics lists, None for other paths."""
        match = re.match(r"^/api/v1/namespaces/([^/]+)/pods(\?|$)", path)
        if match:
            items = [p for (ns, _name), p in sorted(self.pods.items()) if ns == match.group(1)]
            return 200, {"apiVersion": "v1", "kind": "PodList", "items": _selected(items, path)}
        match = re.match(r"^/apis/metrics.k8s.io/v1beta1/namespaces/([^/]+)/pods(\?|$)", path)
        if not match:
            return None
        ns = match.group(1)
        if not any(key[0] == ns for key in self.usage):
            return 404, not_found_status("the server could not find the requested resource")
        items = [{"metadata": {"name": name, "namespace": ns, "labels": self.pods[(ns, name)]["metadata"]["labels"]},
                  "containers": [{"name": "app", "usage": {"memory": memory, "cpu": "10m"}}]}
                 for (space, name), memory in sorted(self.usage.items()) if space == ns]
        return 200, {"kind": "PodMetricsList", "apiVersion": "metrics.k8s.io/v1beta1", "items": _selected(items, path)}

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def kube_stand_in(tmp_path_factory):
    yield from _closing(KubeStandIn, tmp_path_factory, "kube")


# --------------------------------------------------------------------------- a PostgreSQL streaming replica

def _as_cluster_owner(args, account, **kwargs):
    tool = os.path.basename(args[0])
    if account is not None:
        args = ["runuser", "-u", account.pw_name, "--"] + args
    proc = subprocess.run(args, capture_output=True, text=True, check=False, **kwargs)
    if proc.returncode:
        raise RuntimeError("%s failed: %s" % (tool, proc.stderr.strip()[-500:]))
    return proc


@pytest.fixture(scope="module")
def pg_replica(pg):
    """A hot standby of the harness cluster (pg_basebackup -R), for the replication-lag measure."""
    account = None
    if os.getuid() == 0:
        account = pwd.getpwnam("opskit-test")  # the harness runs its cluster as this user
    root = tempfile.mkdtemp(prefix="opskit-replica-")
    data = os.path.join(root, "data")
    if account is not None:
        os.chown(root, account.pw_uid, account.pw_gid)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, PGPASSWORD=pg.password)
    pg_ctl = os.path.join(pg.bin_dir, "pg_ctl")
    try:
        _as_cluster_owner([os.path.join(pg.bin_dir, "pg_basebackup"), "-h", pg.host, "-p", str(pg.port), "-U", pg.user,
                           "-D", data, "-R", "-X", "stream", "--no-sync"], account, env=env, cwd=root)
        _as_cluster_owner([pg_ctl, "-D", data, "-l", os.path.join(root, "replica.log"), "-w", "-t", "60", "-o",
                           "-p %d -k %s -c listen_addresses=127.0.0.1 -c hot_standby=on" % (port, root), "start"],
                          account, cwd=root, start_new_session=True)
        yield port
    finally:
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run((["runuser", "-u", account.pw_name, "--"] if account else []) +
                           [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"], capture_output=True, check=False, cwd=root)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def redis_auth(tmp_path_factory):
    """A redis-server with requirepass (the harness's has none): (port, password)."""
    password = "redis-%s" % os.urandom(8).hex()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    directory = str(tmp_path_factory.mktemp("redis-auth"))
    proc = subprocess.Popen([shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind", "127.0.0.1",
                             "--save", "", "--appendonly", "no", "--dir", directory, "--requirepass", password],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("redis-server with requirepass did not start") from None
                time.sleep(0.05)
        yield port, password
    finally:
        proc.terminate()
        proc.wait(10)


# --------------------------------------------------------------------------- an exporter, Prometheus, a TLS proxy with auth

EXPOSITION = """# HELP opskit_api_rate_limit_remaining Requests left in the window.
# TYPE opskit_api_rate_limit_remaining gauge
opskit_api_rate_limit_remaining{api="gitlab"} 150
opskit_api_rate_limit_remaining{api="github"} 50
# HELP opskit_requests_total Requests served.
# TYPE opskit_requests_total counter
opskit_requests_total{code="200"} 950
opskit_requests_total{code="500"} 50
# HELP opskit_request_duration_seconds Request latency.
# TYPE opskit_request_duration_seconds histogram
opskit_request_duration_seconds_bucket{le="0.05"} 600
opskit_request_duration_seconds_bucket{le="0.1"} 800
opskit_request_duration_seconds_bucket{le="0.25"} 900
opskit_request_duration_seconds_bucket{le="0.5"} 980
opskit_request_duration_seconds_bucket{le="+Inf"} 1000
opskit_request_duration_seconds_sum 95.0
opskit_request_duration_seconds_count 1000
"""
EXPORTER_TOKEN, PROM_USER, PROM_PASSWORD = "bt-%s" % os.urandom(8).hex(), "prom-user", "pp-%s" % os.urandom(8).hex()


def _free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Exporter(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        text = {"/metrics": EXPOSITION, "/garbage": "this is { not the text format\n"}.get(self.path)
        data = (text or "not found\n").encode()
        self.send_response(200 if text else 404)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class _AuthProxy(http.server.BaseHTTPRequestHandler):
    """TLS in front of Prometheus: basic PROM_USER/PROM_PASSWORD or bearer EXPORTER_TOKEN, else 401."""
    protocol_version = "HTTP/1.1"
    upstream = None

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802
        allowed = ("Basic " + base64.b64encode(("%s:%s" % (PROM_USER, PROM_PASSWORD)).encode()).decode(),
                   "Bearer " + EXPORTER_TOKEN)
        status, data = 401, b'{"status": "error", "errorType": "unauthorized", "error": "no valid credentials"}'
        if self.headers.get("Authorization") in allowed:
            try:
                with urllib.request.urlopen(self.upstream + self.path, timeout=10) as resp:
                    status, data = resp.status, resp.read()
            except urllib.error.HTTPError as exc:
                status, data = exc.code, exc.read()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class PrometheusStack:
    """exporter_url (/metrics, /garbage), prom_url (a real Prometheus scraping the exporter every
    second), tls_url (TLS + auth proxy in front of it, cert_path its CA)."""

    def __init__(self, directory):
        self.exporter = _serve(_Server(("127.0.0.1", 0), _Exporter))
        self.exporter_url = "http://127.0.0.1:%d" % self.exporter.server_address[1]
        port = _free_port()
        config = os.path.join(directory, "prometheus.yml")
        with open(config, "w") as fh:
            json.dump({"global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                       "scrape_configs": [{"job_name": "opskit", "static_configs": [
                           {"targets": ["127.0.0.1:%d" % self.exporter.server_address[1]]}]}]}, fh)
        self.log = open(os.path.join(directory, "prometheus.log"), "wb")
        self.proc = subprocess.Popen(
            [shutil.which("prometheus") or "/usr/bin/prometheus", "--config.file", config,
             "--storage.tsdb.path", os.path.join(directory, "data"), "--web.listen-address", "127.0.0.1:%d" % port],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        self.prom_url = "http://127.0.0.1:%d" % port
        self.cert_path, key_path = _self_signed(directory, days=30)
        self.proxy = _tls_server(self.cert_path, key_path, type("Proxy", (_AuthProxy,), {"upstream": self.prom_url}))
        self.tls_url = "https://localhost:%d" % self.proxy.server_address[1]
        self._wait_for_scrape()

    def _wait_for_scrape(self, timeout=60):
        url = self.prom_url + "/api/v1/query?query=" + urllib.parse.quote('count(opskit_requests_total)')
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if json.load(resp)["data"]["result"]:
                        return
            except (OSError, ValueError, KeyError):
                pass
            time.sleep(0.2)
        self.close()
        raise RuntimeError("Prometheus did not scrape the exporter in %ss (exit %s)" % (timeout, self.proc.poll()))

    def close(self):
        for server in (self.exporter, getattr(self, "proxy", None)):
            if server is not None:
                server.shutdown()
                server.server_close()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def prometheus_stack(tmp_path_factory):
    yield from _closing(PrometheusStack, tmp_path_factory, "prometheus")


# --------------------------------------------------------------------------- TLS chains and servers

def _cert(subject, issuer_name, issuer_key, key, days, ca, names=(), not_before_days=30):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.x509.oid import NameOID
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
               .issuer_name(issuer_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(days=not_before_days))
               .not_valid_after(now + datetime.timedelta(days=days))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), True))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(n)) if n[0].isdigit() else x509.DNSName(n) for n in names]), False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_chain(directory, label, intermediate_days, leaf_days=90, names=("localhost", "127.0.0.1")):
    """root CA -> intermediate (expires in ``intermediate_days``, negative: expired) -> leaf.
    Returns (chain file with leaf + intermediate, key file, root CA file)."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography import x509
    from cryptography.x509.oid import NameOID
    keys = [ec.generate_private_key(ec.SECP256R1()) for _i in range(3)]
    root_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "opskit root %s" % label)])
    root = _cert("opskit root %s" % label, root_name, keys[0], keys[0], 3650, True)
    inter = _cert("opskit intermediate %s" % label, root.subject, keys[0], keys[1], intermediate_days, True,
                  not_before_days=max(30, 1 - intermediate_days))
    leaf = _cert("opskit leaf %s" % label, inter.subject, keys[1], keys[2], leaf_days, False, names)
    pem = serialization.Encoding.PEM
    paths = [os.path.join(directory, "%s-%s.pem" % (label, kind)) for kind in ("chain", "key", "ca")]
    with open(paths[0], "wb") as fh:
        fh.write(leaf.public_bytes(pem) + inter.public_bytes(pem))
    with open(paths[1], "wb") as fh:
        fh.write(keys[2].private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    with open(paths[2], "wb") as fh:
        fh.write(root.public_bytes(pem))
    return paths


def _tls_server(chain, key, handler=None):
    """An HTTP server (``handler``, default the test endpoints) behind TLS with ``chain``/``key``."""
    server = _Server(("127.0.0.1", 0), handler or _Handler)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(chain, key)
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    return _serve(server)


class _ImapHandler(socketserver.StreamRequestHandler):
    """The IMAP4rev1 of RFC 3501 that a STARTTLS client meets: the greeting, CAPABILITY, STARTTLS
    (then the TLS handshake with the server's context), NOOP and LOGOUT; anything else is BAD.
    ``server.refuse_starttls``: STARTTLS answers NO, as a server without TLS configured does."""

    def handle(self):
        srv, conn = self.server, self.connection
        caps = "IMAP4rev1 LOGINDISABLED" + ("" if srv.refuse_starttls else " STARTTLS")
        conn.sendall(b"* OK [CAPABILITY %s] opskit test IMAP ready\r\n" % caps.encode())
        reader = conn.makefile("rb")
        while True:
            line = reader.readline(8192)
            if not line:
                return
            tag, _sep, command = line.decode("ascii", "replace").strip().partition(" ")
            command = command.upper()
            if command == "CAPABILITY":
                conn.sendall(b"* CAPABILITY %s\r\n%s OK CAPABILITY completed\r\n" % (caps.encode(), tag.encode()))
            elif command == "STARTTLS" and srv.refuse_starttls:
                conn.sendall(b"%s NO STARTTLS is not available\r\n" % tag.encode())
            elif command == "STARTTLS":
                conn.sendall(b"%s OK Begin TLS negotiation now\r\n" % tag.encode())
                srv.starttls_seen.append(tag)
                try:
                    conn = srv.tls_context.wrap_socket(conn, server_side=True)
                except (ssl.SSLError, OSError):
                    return
                reader = conn.makefile("rb")
            elif command == "LOGOUT":
                conn.sendall(b"* BYE logging out\r\n%s OK LOGOUT completed\r\n" % tag.encode())
                return
            elif command == "NOOP":
                conn.sendall(b"%s OK NOOP completed\r\n" % tag.encode())
            else:
                conn.sendall(b"%s BAD unknown command\r\n" % tag.encode())


def _imap_server(tls_context, refuse_starttls=False):
    server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), _ImapHandler)
    server.daemon_threads = True
    server.tls_context, server.refuse_starttls, server.starttls_seen = tls_context, refuse_starttls, []
    return _serve(server)


class TlsTargets:
    """good (intermediate expires in 40 days, leaf in 90), expired (intermediate expired 3 days
    ago), wrong_name (leaf for wrong.example only): TLS servers with their root CA files; smtp: an
    aiosmtpd server with STARTTLS (good chain); imap and imap_plain: IMAP servers (RFC 3501) with
    STARTTLS (good chain) and with STARTTLS refused."""

    def __init__(self, directory):
        self.good_chain, self.good_key, self.good_ca = make_chain(directory, "good", 40)
        expired = make_chain(directory, "expired", -3)
        wrong = make_chain(directory, "wrong", 40, names=("wrong.example",))
        self.expired_ca, self.wrong_ca = expired[2], wrong[2]
        self.servers = [_tls_server(self.good_chain, self.good_key), _tls_server(*expired[:2]), _tls_server(*wrong[:2])]
        self.good_port, self.expired_port, self.wrong_port = (server.server_address[1] for server in self.servers)
        from aiosmtpd.controller import Controller
        from aiosmtpd.handlers import Sink
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.good_chain, self.good_key)
        self.smtp_port = _free_port()
        self.smtp = Controller(Sink(), hostname="127.0.0.1", port=self.smtp_port, tls_context=ctx, require_starttls=True)
        self.smtp.start()
        self.imap, self.imap_plain = _imap_server(ctx), _imap_server(ctx, refuse_starttls=True)
        self.servers += [self.imap, self.imap_plain]
        self.imap_port, self.imap_plain_port = self.imap.server_address[1], self.imap_plain.server_address[1]

    def close(self):
        for server in self.servers:
            server.shutdown()
            server.server_close()
        self.smtp.stop()


@pytest.fixture(scope="module")
def tls_targets(tmp_path_factory):
    yield from _closing(TlsTargets, tmp_path_factory, "tls")


@pytest.fixture(scope="module")
def pg_ssl(pg, tls_targets):
    """The harness cluster with ssl=on (the good chain) for the module; ssl back off afterwards."""
    for name, source in (("opskit-server.crt", tls_targets.good_chain), ("opskit-server.key", tls_targets.good_key)):
        target = os.path.join(pg.data, name)
        shutil.copyfile(source, target)
        os.chmod(target, 0o600)
        if os.getuid() == 0:
            account = pwd.getpwnam("opskit-test")
            os.chown(target, account.pw_uid, account.pw_gid)
    pg.psql("ALTER SYSTEM SET ssl_cert_file = 'opskit-server.crt'")
    pg.psql("ALTER SYSTEM SET ssl_key_file = 'opskit-server.key'")
    pg.psql("ALTER SYSTEM SET ssl = on")
    pg.psql("SELECT pg_reload_conf()")
    try:
        deadline = time.monotonic() + 10
        while pg.psql("SHOW ssl").strip() != "on" and time.monotonic() < deadline:
            time.sleep(0.1)
        yield pg
    finally:
        for setting in ("ssl", "ssl_cert_file", "ssl_key_file"):
            pg.psql("ALTER SYSTEM RESET %s" % setting)
        pg.psql("SELECT pg_reload_conf()")


# --------------------------------------------------------------------------- helpers of the health_check tests

PLAY_HEADER = """
- hosts: localhost
  gather_facts: false
  tasks:
"""


def closed_port():
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def expecter(checks):
    """``expect(name, status, *fragments)``: the check ``name`` (in ``checks``, a list of results or
    a mapping of name to result) has ``status`` and its message contains every fragment; returns it."""
    if isinstance(checks, list):
        checks = {check["name"]: check for check in checks}

    def expect(name, status, *fragments):
        check = checks[name]
        assert check["status"] == status, (name, check)
        for fragment in fragments:
            assert fragment in check["message"], (name, fragment, check["message"])
        return check
    return expect


def wait_for(predicate, what, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("timed out waiting for %s" % what)


def assert_no_crash(run):
    """No traceback and no module failure in an ansible-playbook run, and it ended with rc 0."""
    text = run.stdout + run.stderr
    assert "Traceback" not in text and "MODULE FAILURE" not in text, text[-3000:]
    assert run.rc == 0, run.stdout[-3000:]
