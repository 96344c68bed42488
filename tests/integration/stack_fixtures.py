# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the stack tests and of bench/rollout.py: a Compose-like stack, nginx in front of it.

- ``ServiceDNS(api, network)``: the Docker embedded DNS as a proxy on the host sees it. Docker's
  own DNS (127.0.0.11) answers only inside containers; this UDP server on loopback answers an A
  query for a name with the addresses of the running containers that carry that alias on
  ``network`` (the same rule: a container is in the answer from its start until it stops).
- ``nginx_proxy(dns_port, upstream, port, workdir)``: Debian's /usr/sbin/nginx, not daemonised,
  on 127.0.0.1:port, resolving ``upstream`` (a service name) through the DNS above at every
  request (``resolver ... valid=1s``), retrying the next address on an error, as seed 004's
  nginx in front of the app. Stopped at the end of the with-block.
- ``ComposeStack``: containers with the labels ``docker compose up`` gives them (project,
  service, container number, config files, working directory), on the project network with the
  service name as alias, and the compose file and .env of the project in a directory.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import threading
import time

from harness import free_port

NGINX = "/usr/sbin/nginx"


class ServiceDNS:
    """A UDP DNS server on 127.0.0.1 answering A queries from the Docker network's aliases."""

    def __init__(self, api, network):
        self.api, self.network = api, network
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.queries = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self):
        self.sock.close()

    def addresses(self, name):
        out = []
        for c in self.api.containers(filters={"network": self.network, "status": "running"}):
            ep = ((c.get("NetworkSettings") or {}).get("Networks") or {}).get(self.network) or {}
            inspect = self.api.inspect_container(c["Id"])
            aliases = ((inspect["NetworkSettings"]["Networks"].get(self.network) or {}).get("Aliases") or [])
            if name in aliases and ep.get("IPAddress"):
                out.append(ep["IPAddress"])
        return out

    def _serve(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(512)
            except OSError:
                return
            try:
                self.sock.sendto(self._answer(data), addr)
            except (OSError, ValueError, struct.error):
                continue

    def _answer(self, data):
        self.queries += 1
        (ident,) = struct.unpack("!H", data[:2])
        labels, pos = [], 12
        while data[pos]:
            labels.append(data[pos + 1:pos + 1 + data[pos]].decode())
            pos += 1 + data[pos]
        qtype, _qclass = struct.unpack("!HH", data[pos + 1:pos + 5])
        question = data[12:pos + 5]
        ips = self.addresses(".".join(labels)) if qtype == 1 else []
        flags = 0x8180 if ips or qtype != 1 else 0x8183
        head = struct.pack("!HHHHHH", ident, flags, 1, len(ips), 0, 0)
        answers = b"".join(struct.pack("!HHHIH", 0xC00C, 1, 1, 0, 4) + socket.inet_aton(ip) for ip in ips)
        return head + question + answers


_NGINX_CONF = """
worker_processes 1;
pid %(dir)s/nginx.pid;
error_log %(dir)s/error.log warn;
events { worker_connections 512; }
http {
    log_format up '$msec $status $upstream_addr $upstream_status';
    access_log %(dir)s/access.log up;
    client_body_temp_path %(dir)s/body; proxy_temp_path %(dir)s/proxy; fastcgi_temp_path %(dir)s/fcgi;
    uwsgi_temp_path %(dir)s/uwsgi; scgi_temp_path %(dir)s/scgi;
    resolver 127.0.0.1:%(dns)d valid=1s ipv6=off;
    resolver_timeout 2s;
    server {
        listen 127.0.0.1:%(port)d;
        location / {
            set $app %(upstream)s;
            proxy_pass http://$app:8080;
            proxy_connect_timeout 1s;
            proxy_next_upstream error timeout http_502 http_503 http_504;
            proxy_next_upstream_tries 4;
        }
    }
}
"""


@contextlib.contextmanager
def nginx_proxy(dns_port, upstream, workdir, port=None):
    """nginx on 127.0.0.1:``port`` in front of the service ``upstream``; yields its base URL."""
    port = port or free_port()
    os.makedirs(workdir, exist_ok=True)
    conf = os.path.join(workdir, "nginx.conf")
    with open(conf, "w") as fh:
        fh.write(_NGINX_CONF % {"dir": workdir, "dns": dns_port, "port": port, "upstream": upstream})
    proc = subprocess.Popen([NGINX, "-e", os.path.join(workdir, "error.log"), "-c", conf, "-p", workdir,
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("nginx did not start: %s" % proc.stderr.read().decode(errors="replace")[-500:])
            time.sleep(0.05)
        yield "http://127.0.0.1:%d" % port
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


COMPOSE_FILE = """\
# the shop stack (seed 004): nginx in front of the app
name: %(project)s
services:
  proxy:
    image: nginx:1.25
    ports:
      - "80:80"
  %(service)s:
    image: %(image)s   # the app
    restart: unless-stopped
    environment:
      APP_MODE: prod
"""


class ComposeStack:
    """A Compose project as ``docker compose up -d`` leaves it, without the compose plugin."""

    def __init__(self, api, project, workdir, service="web"):
        self.api, self.project, self.workdir, self.service = api, project, workdir, service
        self.network = project
        self.file = os.path.join(workdir, "compose.yaml")
        self.env = os.path.join(workdir, ".env")
        os.makedirs(workdir, exist_ok=True)
        if not api.networks(names=[project]):
            api.create_network(project, labels={"com.docker.compose.project": project})

    def write(self, image_field, env=None):
        with open(self.file, "w") as fh:
            fh.write(COMPOSE_FILE % {"project": self.project, "service": self.service, "image": image_field})
        if env is not None:
            with open(self.env, "w") as fh:
                fh.write(env)

    def up(self, image, number=1, binds=None, command=None):
        """One container of the service, as Compose names and labels it (no published port);
        ``binds`` (docker-py's form: a named volume or host path -> bind) and ``command`` as the
        service's ``volumes:`` and ``command:`` would give it."""
        name = "%s-%s-%d" % (self.project, self.service, number)
        labels = {"com.docker.compose.project": self.project, "com.docker.compose.service": self.service,
                  "com.docker.compose.container-number": str(number), "com.docker.compose.oneoff": "False",
                  "com.docker.compose.project.working_dir": self.workdir,
                  "com.docker.compose.project.config_files": self.file}
        networking = self.api.create_networking_config(
            {self.network: self.api.create_endpoint_config(aliases=[self.service, name])})
        created = self.api.create_container(
            image, name=name, labels=labels, environment={"APP_MODE": "prod"}, networking_config=networking, command=command,
            host_config=self.api.create_host_config(restart_policy={"Name": "unless-stopped"}, binds=binds))
        self.api.start(created["Id"])
        return name
