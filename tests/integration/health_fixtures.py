# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Targets for the health_check tests: an HTTP(S) server with slow, failing, JSON and flaky
endpoints (TLS with a self-signed certificate that expires in a few days), a socket that
accepts and never speaks, and a stand-in of the Kubernetes apps/v1 Deployment endpoint.
"""

from __future__ import annotations

import datetime
import http.server
import ipaddress
import json
import os
import pwd
import re
import shutil
import socket
import ssl
import subprocess
import tempfile
import threading
import time
from urllib.parse import parse_qs, urlsplit

import pytest

from rollout_fixtures import not_found_status, send_json

CERT_DAYS = 5  # the test certificate expires this many days from now


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
        tls = _Server(("127.0.0.1", 0), _Handler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_path, key_path)
        tls.socket = ctx.wrap_socket(tls.socket, server_side=True)
        self.https = _serve(tls)
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
               generation=1, observed=1, conditions=()):
    return {"apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "replicas": total, "updatedReplicas": updated,
                       "readyReplicas": available if ready is None else ready, "availableReplicas": available,
                       "unavailableReplicas": max(0, replicas - available), "conditions": list(conditions)}}


class KubeStandIn:
    """GET /apis/apps/v1/namespaces/{ns}/deployments/{name} from ``self.deployments``; a kubeconfig."""

    def __init__(self, directory):
        self.deployments = {}
        self.requests = []
        stand_in = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):  # noqa: N802
                stand_in.requests.append(self.path)
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
        self.deployments[(item["metadata"]["namespace"], item["metadata"]["name"])] = item

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
