# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Extra PostgreSQL fixtures of the pg_backup tests: a throwaway second cluster and a locally
built PostgreSQL image for docker_container mode (no registry needed)."""

from __future__ import annotations

import hashlib
import io
import os
import pwd
import shutil
import socket
import subprocess
import tarfile
import tempfile
import time

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

BIN = "/usr/lib/postgresql/15/bin"
IMAGE = "opskit-test/postgres:15"


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _demote():
    """initdb and postgres refuse to run as root: run them as the postgres system user."""
    if os.getuid() != 0:
        return None
    entry = pwd.getpwnam("postgres")

    def change():
        os.setgid(entry.pw_gid)
        os.setuid(entry.pw_uid)
    return change


class Cluster:
    """A PostgreSQL 15 cluster in a temporary directory with scram password auth on loopback."""

    def __init__(self, password):
        self.password = password
        self.host, self.port, self.user = "127.0.0.1", free_port(), "postgres"
        self.bin_dir = BIN
        self.root = tempfile.mkdtemp(prefix="opskit-pgtest-")
        self.data = os.path.join(self.root, "data")
        if os.getuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
        self.env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                        PGPASSWORD=password)

    def start(self):
        pwfile = os.path.join(self.root, "pw")
        with open(pwfile, "w") as fh:
            fh.write(self.password + "\n")
        if os.getuid() == 0:
            entry = pwd.getpwnam("postgres")
            os.chown(pwfile, entry.pw_uid, entry.pw_gid)
        subprocess.run([os.path.join(BIN, "initdb"), "-D", self.data, "-U", self.user, "-A", "scram-sha-256",
                        "--pwfile", pwfile, "-E", "UTF8", "--locale=C.UTF-8"], check=True,
                       preexec_fn=_demote(), capture_output=True)
        os.unlink(pwfile)
        opts = "-c listen_addresses=127.0.0.1 -p %d -k %s -c fsync=off" % (self.port, self.root)
        subprocess.run([os.path.join(BIN, "pg_ctl"), "-D", self.data, "-o", opts, "-l",
                        os.path.join(self.root, "log"), "-w", "start"], check=True,
                       preexec_fn=_demote(), capture_output=True)
        return self

    def stop(self):
        subprocess.run([os.path.join(BIN, "pg_ctl"), "-D", self.data, "-m", "immediate", "stop"],
                       preexec_fn=_demote(), capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql, db="postgres"):
        out = subprocess.run([os.path.join(BIN, "psql"), "-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-d", db,
                              "-c", sql], env=self.env, check=True, capture_output=True)
        return out.stdout.decode()

    def createdb(self, name):
        self.psql('CREATE DATABASE "%s"' % name)

    def conn_vars(self):
        return dict(host=self.host, port=self.port, user=self.user, password=self.password)


# ------------------------------------------------------------ PostgreSQL image

ENTRYPOINT = """#!/bin/sh
set -e
if [ ! -s /var/lib/postgresql/data/PG_VERSION ]; then
  echo "$POSTGRES_PASSWORD" | initdb -D /var/lib/postgresql/data -U postgres -E UTF8 --locale=C \\
    --auth-local=trust --auth-host=scram-sha-256 --pwfile=/dev/stdin >/dev/null
fi
exec postgres -D /var/lib/postgresql/data -c listen_addresses=127.0.0.1 \\
  -c unix_socket_directories=/var/run/postgresql -c fsync=off
"""
DOCKERFILE = """FROM {base}
COPY rootfs/ /
COPY --chown=101:104 pgdirs/ /var/
ENV TZ=UTC PATH=/usr/lib/postgresql/15/bin:/bin
USER 101:104
ENTRYPOINT ["/entrypoint.sh"]
"""


def _libraries(paths):
    libs = set()
    for path in paths:
        out = subprocess.run(["ldd", path], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                libs.add(parts[2])
            elif parts and parts[0].startswith("/"):
                libs.add(parts[0])  # the dynamic loader
    return libs


def build_postgres_image(client, base_image):
    """FROM the harness's busybox image (only its /bin/sh is used): the host's PostgreSQL 15
    binaries and the shared libraries they link, a postgres user and a small entrypoint.

    No RUN step (nothing but sh is assumed in the base). The tag carries a hash of the recipe
    and the base image id, so the image is built once per machine (about 5 s) and rebuilt
    when either changes.
    """
    base_id = client.images.get(base_image).id
    recipe = hashlib.sha256((DOCKERFILE + ENTRYPOINT + base_id).encode()).hexdigest()[:12]
    tag = "%s-%s" % (IMAGE, recipe)
    try:
        client.images.get(tag)
        return tag
    except Exception:  # pylint: disable=broad-except
        pass
    tools = ("postgres", "initdb", "pg_ctl", "pg_dump", "pg_dumpall", "pg_restore", "psql", "pg_isready")
    binaries = [os.path.join(BIN, n) for n in tools]
    lib_dir = "/usr/lib/postgresql/15/lib"
    sos = [os.path.join(lib_dir, n) for n in os.listdir(lib_dir) if n.endswith(".so")]
    files = set(binaries) | _libraries(binaries + sos)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        _add_bytes(tar, "Dockerfile", DOCKERFILE.format(base=base_image).encode())
        _add_bytes(tar, "rootfs/entrypoint.sh", ENTRYPOINT.encode(), 0o755)
        _add_bytes(tar, "rootfs/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n"
                                             b"postgres:x:101:104::/var/lib/postgresql:/bin/sh\n")
        _add_bytes(tar, "rootfs/etc/group", b"root:x:0:\npostgres:x:104:\n")
        for path, mode in (("pgdirs/run/postgresql", 0o775), ("pgdirs/lib/postgresql", 0o755),
                           ("pgdirs/lib/postgresql/data", 0o700)):
            info = tarfile.TarInfo(path)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, mode, int(time.time())
            tar.addfile(info)
        tar.add("/usr/lib/postgresql/15", arcname="rootfs/usr/lib/postgresql/15",
                filter=lambda info: None if "/bitcode" in info.name else info)
        tar.add("/usr/share/postgresql/15", arcname="rootfs/usr/share/postgresql/15")
        for zone in ("UTC", "Etc/UTC"):
            if os.path.exists("/usr/share/zoneinfo/" + zone):
                tar.add(os.path.realpath("/usr/share/zoneinfo/" + zone), arcname="rootfs/usr/share/zoneinfo/" + zone)
        for path in sorted(files):
            if not path.startswith("/usr/lib/postgresql/"):
                tar.add(os.path.realpath(path), arcname="rootfs" + path)
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True)
    return tag


def _add_bytes(tar, name, data, mode=0o644):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), mode, int(time.time())
    tar.addfile(info, io.BytesIO(data))


def plant_backup(store_dir, series, fmt, data, globals_sql=None, tables=1):
    """Write a backup of kind postgres with any bytes as its dump (what an attacker with write
    access to the bucket could put there), published by the engine like a real one."""
    ext = {"custom": "dump", "plain": "sql", "directory": "tar"}[fmt]
    with BackupSession(open_location("file://" + store_dir), series, "postgres") as session:
        if globals_sql is not None:
            with session.artifact("sql", name="globals") as out:
                out.write(globals_sql)
        with session.artifact(ext) as out:
            out.write(data)
        return session.publish(source={"database": "planted", "format": fmt, "tables": tables,
                                       "globals": globals_sql is not None})


class FaultProxy:
    """An HTTP proxy on loopback in front of the S3 endpoint (moto) that injects faults into the
    GETs of chosen paths: ``rules[path]`` is a list, one rule per GET in order (``{}`` passes
    it). ``before`` runs before the request is forwarded (an overwrite between a HEAD and the
    GET), ``cut`` sends only that many bytes of the body, then drops the connection. ``seen``
    lists (method, path, Range header, status) of every request."""

    def __init__(self, upstream_port):
        self.upstream_port = upstream_port
        self.rules = {}
        self.seen = []
        self.server = None

    def start(self):
        import http.server  # pylint: disable=import-outside-toplevel
        import threading  # pylint: disable=import-outside-toplevel
        proxy = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_args):
                pass

            def _any(self):
                proxy.forward(self)
            do_GET = do_HEAD = do_PUT = do_POST = do_DELETE = _any

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.server.server_address[1]

    def forward(self, handler):
        import http.client  # pylint: disable=import-outside-toplevel
        body = handler.rfile.read(int(handler.headers.get("Content-Length") or 0))
        path = handler.path.split("?", 1)[0]
        pending = self.rules.get(path) if handler.command == "GET" else None
        rule = pending.pop(0) if pending else None
        if rule and rule.get("before"):
            rule["before"]()
        upstream = http.client.HTTPConnection("127.0.0.1", self.upstream_port, timeout=60)
        upstream.request(handler.command, handler.path, body=body, headers=dict(handler.headers.items()))
        resp = upstream.getresponse()
        data = resp.read()
        upstream.close()
        self.seen.append((handler.command, path, handler.headers.get("Range"), resp.status))
        handler.send_response(resp.status)
        for key, value in resp.getheaders():
            if key.lower() not in ("transfer-encoding", "connection", "content-length", "server", "date"):
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        if handler.command == "HEAD":
            return
        if rule and rule.get("cut") is not None:
            handler.wfile.write(data[:rule["cut"]])
            handler.wfile.flush()
            handler.close_connection = True
            return
        handler.wfile.write(data)
        handler.wfile.flush()

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
