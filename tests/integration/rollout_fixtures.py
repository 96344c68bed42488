# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the rollout tests: local test images and a Kubernetes apps/v1 stand-in.

Images (built FROM the harness's busybox image, tag prefix ``opskit-test/rollout-web``):
  v1, v2   good: busybox httpd on 8080 serving /version and /cgi-bin/health (200), a
           HEALTHCHECK, and a shell PID 1 that exits on SIGTERM (fast docker stop)
  plain    good, without a HEALTHCHECK
  exit     exits with code 3 at start
  unhealthy  serves, but its HEALTHCHECK fails
  503      serves /version, but /cgi-bin/health answers 503 (no HEALTHCHECK)
  port     listens on 8081 instead of 8080 (no HEALTHCHECK)
  late     runs for one second, then exits with code 1 (no HEALTHCHECK: "ready" at once)
  (nope    is never built: the missing tag)
"""

from __future__ import annotations

import copy
import io
import json
import re
import socket
import tarfile
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

from harness import http_get

BASE_IMAGE = "opskit-test/busybox:1"
REPO = "opskit-test/rollout-web"

_HEALTH_OK = '#!/bin/sh\necho "Content-Type: text/plain"\necho\necho "ok %s"\n'
_HEALTH_503 = '#!/bin/sh\necho "Status: 503 Service Unavailable"\necho "Content-Type: text/plain"\necho\necho down\n'
_RUN = ('#!/bin/sh\ntrap "exit 0" TERM INT\necho "web %s starting on port %s"\n'
        'httpd -f -p %s -h /www &\nwait $!\n')
_HEALTHCHECK = "HEALTHCHECK --interval=500ms --timeout=2s --retries=%d CMD wget -q -O- http://127.0.0.1:8080%s || exit 1\n"

VARIANTS = {
    # tag: (version text, port, healthcheck path or None, health cgi, start script override)
    "v1": ("v1", 8080, "/version", _HEALTH_OK, None),
    "v2": ("v2", 8080, "/version", _HEALTH_OK, None),
    "plain": ("plain", 8080, None, _HEALTH_OK, None),
    "exit": ("exit", 8080, None, _HEALTH_OK, '#!/bin/sh\necho "fatal: cannot read config /etc/app.conf" >&2\nexit 3\n'),
    "unhealthy": ("unhealthy", 8080, "/missing", _HEALTH_OK, None),
    "503": ("503", 8080, None, _HEALTH_503, None),
    "port": ("port", 8081, None, _HEALTH_OK, None),
    "late": ("late", 8080, None, _HEALTH_OK,
             '#!/bin/sh\necho "web late starting"\nsleep 1\necho "fatal: lost the database" >&2\nexit 1\n'),
}


def _context(tag):
    version, port, hc_path, health, run = VARIANTS[tag]
    files = {
        "version": version + "\n",
        "health": health % version if "%s" in health else health,
        "run.sh": run or _RUN % (version, port, port),
    }
    dockerfile = (
        "FROM %s\n" % BASE_IMAGE
        + "COPY version /www/version\nCOPY health /www/cgi-bin/health\nCOPY run.sh /run.sh\n"
        + "RUN chmod 755 /www/cgi-bin/health /run.sh\n"
        + "ENV APP_VERSION=%s\nLABEL org.opencontainers.image.version=%s\nEXPOSE %d\n" % (version, version, port)
        + (_HEALTHCHECK % (2, hc_path) if hc_path else "")
        + 'CMD ["/run.sh"]\n')
    files["Dockerfile"] = dockerfile
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, text in files.items():
            data = text.encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o755
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def build_images(client, tags=tuple(VARIANTS)):
    """Build the test images (docker.APIClient); returns {tag: image reference}. Idempotent."""
    refs = {}
    for tag in tags:
        ref = "%s:%s" % (REPO, tag)
        for _line in client.build(fileobj=_context(tag), custom_context=True, tag=ref, rm=True, decode=True):
            pass
        client.inspect_image(ref)  # raises when the build failed
        refs[tag] = ref
    refs["nope"] = "%s:nope-%s" % (REPO, uuid.uuid4().hex[:6])
    return refs


class SlowDockerProxy:
    """A TCP front of the Docker Engine socket that holds back the answer to chosen requests.

    ``rules``: a list of regular expressions on request lines ("POST /v1.41/containers/create...");
    each delays the answer to the first request it matches by ``delay`` s (the daemon does the
    work, the client times out: a lost answer, as on a loaded host). ``docker_host`` is the
    address to give the module; ``hits`` the request lines that were held back.
    """

    def __init__(self, rules, delay, unix_path="/var/run/docker.sock"):
        self.rules, self.delay, self.unix_path = [re.compile(r) for r in rules], delay, unix_path
        self.used, self.hits = set(), []
        self.server = socket.socket()
        self.server.bind(("127.0.0.1", 0))
        self.server.listen(16)
        self.docker_host = "tcp://127.0.0.1:%d" % self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self):
        self.server.close()

    def _accept(self):
        while True:
            try:
                client, _addr = self.server.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX)
            upstream.connect(self.unix_path)
            held = threading.Event()
            threading.Thread(target=self._pump, args=(client, upstream, held, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, held, False), daemon=True).start()

    def _match(self, data):
        line = data.split(b"\r\n", 1)[0].decode("latin-1")
        for index, rule in enumerate(self.rules):
            if index not in self.used and rule.search(line):
                self.used.add(index)
                self.hits.append(line)
                return True
        return False

    def _pump(self, src, dst, held, requests):
        try:
            while True:
                data = src.recv(65536)
                if not data:
                    break
                if requests and self._match(data):
                    held.set()
                elif not requests and held.is_set():
                    time.sleep(self.delay)  # the client gave up meanwhile
                    held.clear()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass


def wait_http(url, want, timeout=15.0):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = http_get(url)
        if last[1] == want:
            return last
        time.sleep(0.1)
    raise AssertionError("%s did not answer %r within %ss (last: %r)" % (url, want, timeout, last))


def run_web(client, name, image, port, network=None, alias=None, extra_labels=None, volume=None, **host):
    """Start a web container with a broad set of settings to check they survive."""
    host_config = client.create_host_config(
        port_bindings={8080: ("127.0.0.1", port)}, restart_policy={"Name": "unless-stopped"},
        binds={volume: {"bind": "/data", "mode": "rw"}} if volume else None,
        extra_hosts={"db.internal": "10.1.2.3"}, cap_drop=["NET_RAW"], mem_limit="64m",
        dns_search=["example.internal"], **host)
    networking = None
    if network:
        networking = client.create_networking_config({network: client.create_endpoint_config(aliases=[alias] if alias else None)})
    labels = {"team": "ops", "tier": "web"}
    labels.update(extra_labels or {})
    created = client.create_container(
        image, name=name, environment={"APP_MODE": "prod", "GREETING": "hello world"}, labels=labels,
        host_config=host_config, networking_config=networking, working_dir="/www", hostname="web-host",
        volumes=["/data", "/cache"], stop_signal="SIGTERM")
    client.start(created["Id"])
    return created["Id"]


def settings_view(inspect):
    """The settings that must survive a rollout (inspect output, normalised)."""
    cfg, host = inspect["Config"], inspect["HostConfig"]
    nets = inspect["NetworkSettings"]["Networks"]
    short = inspect["Id"][:12]
    return {
        "env": sorted(e for e in cfg["Env"] if not e.startswith("APP_VERSION=")),
        "labels": {k: v for k, v in (cfg.get("Labels") or {}).items()
                   if not k.startswith("opskit.runbook") and k != "org.opencontainers.image.version"},
        "hostname": cfg.get("Hostname"), "workdir": cfg.get("WorkingDir"), "cmd": cfg.get("Cmd"),
        "entrypoint": cfg.get("Entrypoint"), "user": cfg.get("User"), "stop_signal": cfg.get("StopSignal"),
        "port_bindings": host.get("PortBindings"), "restart": host.get("RestartPolicy"),
        "mounts": sorted((m["Type"], m.get("Name"), m["Destination"]) for m in inspect["Mounts"]),
        "extra_hosts": host.get("ExtraHosts"), "cap_drop": host.get("CapDrop"), "memory": host.get("Memory"),
        "dns_search": host.get("DnsSearch"), "network_mode": host.get("NetworkMode"),
        "networks": {n: sorted(a for a in (ep.get("Aliases") or []) if a not in (short, cfg.get("Hostname")))
                     for n, ep in nets.items()},
    }


# --------------------------------------------------------------------------- Kubernetes stand-in

def send_json(handler, code, obj):
    """Answer ``obj`` as JSON with HTTP status ``code`` (the Kubernetes stand-ins' answers)."""
    data = json.dumps(obj).encode()
    handler.send_response(code)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", str(len(data)))
    handler.end_headers()
    handler.wfile.write(data)


def not_found_status(message):
    """The Status object the Kubernetes API answers a 404 with."""
    return {"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "message": message,
            "code": 404}


class K8sStandIn:
    """A tiny apps/v1 + core/v1 API: one Deployment controller simulation over HTTP.

    Implements GET/PATCH (strategic-merge, merge and JSON patch) of deployments, GET pods
    (label selector) and pod logs. The controller advances one step every ``step`` seconds
    after a template change: observedGeneration catches up, then the new pods come up.
    What a new pod does depends on its image tag: ``:crash`` -> CrashLoopBackOff,
    ``:pullfail`` -> ErrImagePull then ImagePullBackOff, ``:oom`` -> OOMKilled,
    ``:stuck`` -> never ready (ProgressDeadlineExceeded after ``deadline`` s), ``:flaky`` ->
    ready, then restarts after 1 s; any other tag becomes available.

    ConfigMaps (``add_configmap``; GET, PATCH and PUT of core/v1 configmaps): a pod reads the
    ConfigMaps its template names (``envFrom[].configMapRef``, ``volumes[].configMap``) when it
    is created, and records their resourceVersions in its annotation ``standin/configmaps``; a
    value ``crash`` in one of them makes its app container crash as the ``:crash`` tag does.
    Events (GET core/v1 events of a namespace): ``self.events`` plus a BackOff Warning for each
    container in CrashLoopBackOff.
    """

    def __init__(self, step=0.15, deadline=3.0):
        self.step, self.deadline = step, deadline
        self.lock = threading.Lock()
        self.deployments = {}
        self.configmaps = {}
        self.events = []
        self.requests = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.port = self.server.server_address[1]
        self.url = "http://127.0.0.1:%d" % self.port
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()

    def kubeconfig(self, path):
        with open(path, "w") as fh:
            json.dump({"apiVersion": "v1", "kind": "Config", "current-context": "standin",
                       "clusters": [{"name": "standin", "cluster": {"server": self.url}}],
                       "users": [{"name": "u", "user": {"token": "standin-token"}}],
                       "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "u"}}]}, fh)
        return path

    # -- state
    def add_deployment(self, namespace, name, image, replicas=2, annotations=None, container="app", config_map=None):
        """A Deployment and its pods; with ``config_map``, its app container reads that ConfigMap (envFrom)."""
        dep = {
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": name, "namespace": namespace, "generation": 1, "uid": str(uuid.uuid4()),
                         "annotations": dict(annotations or {"deployment.kubernetes.io/revision": "1",
                                                             "team": "payments"}),
                         "labels": {"app": name}},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"app": name}},
                     "progressDeadlineSeconds": 600,
                     "template": {"metadata": {"labels": {"app": name}, "annotations": {"prometheus.io/scrape": "true"}},
                                  "spec": {"containers": [
                                      {"name": container, "image": image, "env": [{"name": "MODE", "value": "prod"}],
                                       "ports": [{"containerPort": 8080}]},
                                      {"name": "sidecar", "image": "opskit-test/sidecar:1"}]}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "readyReplicas": replicas, "availableReplicas": replicas,
                       "conditions": [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]},
        }
        if config_map:
            dep["spec"]["template"]["spec"]["containers"][0]["envFrom"] = [{"configMapRef": {"name": config_map}}]
        with self.lock:
            self.deployments[(namespace, name)] = {"dep": dep, "changed_at": None, "rev": 1,
                                                   "pods": self._pods(dep, 1, "running", time.monotonic())}
        return dep

    def add_configmap(self, namespace, name, data):
        with self.lock:
            self.configmaps[(namespace, name)] = {
                "apiVersion": "v1", "kind": "ConfigMap", "data": dict(data),
                "metadata": {"name": name, "namespace": namespace, "resourceVersion": "1", "uid": str(uuid.uuid4())}}

    def _read_config(self, dep):
        """({configmap: resourceVersion} read by a new pod of ``dep``, whether one holds ``crash``)."""
        spec = dep["spec"]["template"]["spec"]
        names = [(e.get("configMapRef") or {}).get("name") for c in spec["containers"] for e in c.get("envFrom") or []]
        names += [(v.get("configMap") or {}).get("name") for v in spec.get("volumes") or []]
        maps = [self.configmaps.get((dep["metadata"]["namespace"], n)) for n in names if n]
        read = {m["metadata"]["name"]: m["metadata"]["resourceVersion"] for m in maps if m}
        return read, any("crash" in (m.get("data") or {}).values() for m in maps if m)

    def _pods(self, dep, rev, mode, since):
        pods = []
        tmpl = dep["spec"]["template"]
        config, crash = self._read_config(dep)
        for i in range(dep["spec"]["replicas"]):
            statuses = []
            for c in tmpl["spec"]["containers"]:
                statuses.append(self._status(c, mode, since, crash))
            annotations = dict(tmpl["metadata"].get("annotations") or {})
            if config:
                annotations["standin/configmaps"] = json.dumps(config, sort_keys=True)
            if crash:
                annotations["standin/config-crash"] = "true"
            pods.append({"metadata": {"name": "%s-r%d-%d" % (dep["metadata"]["name"], rev, i),
                                      "namespace": dep["metadata"]["namespace"],
                                      "labels": dict(tmpl["metadata"].get("labels") or {}, **{"pod-template-hash": "r%d" % rev}),
                                      "annotations": annotations},
                         "spec": copy.deepcopy(tmpl["spec"]),
                         "status": {"phase": "Running", "containerStatuses": statuses}})
        return pods

    @staticmethod
    def _status(container, mode, since, crash=False):
        image = container["image"]
        tag = image.rsplit(":", 1)[-1]
        st = {"name": container["name"], "image": image, "restartCount": 0, "ready": True,
              "imageID": "docker-pullable://%s@sha256:%s" % (image.rsplit(":", 1)[0], (tag * 64)[:64].encode().hex()[:64]),
              "state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}
        age = time.monotonic() - since
        if mode != "running" or container["name"] == "sidecar":
            return st
        if tag == "crash" or crash:
            st.update(ready=False, restartCount=2, state={"waiting": {"reason": "CrashLoopBackOff",
                      "message": "back-off 10s restarting failed container"}},
                      lastState={"terminated": {"exitCode": 3, "reason": "Error"}})
        elif tag == "pullfail":
            st.update(ready=False, imageID="", state={"waiting": {"reason": "ErrImagePull" if age < 0.5 else "ImagePullBackOff",
                                                                  "message": "manifest unknown"}})
        elif tag == "oom":
            st.update(ready=False, restartCount=1, state={"waiting": {"reason": "ContainerCreating"}},
                      lastState={"terminated": {"exitCode": 137, "reason": "OOMKilled"}})
        elif tag == "stuck":
            st.update(ready=False)
        elif tag == "flaky" and age > 1.0:
            st.update(restartCount=1, lastState={"terminated": {"exitCode": 1, "reason": "Error"}})
        return st

    def _advance(self, entry):
        """Recompute the status from the number of controller steps since the last change."""
        dep = entry["dep"]
        if entry["changed_at"] is None:
            return
        age = time.monotonic() - entry["changed_at"]
        k = int(age / self.step)
        if k < 1:
            return  # the controller has not observed the new generation yet
        spec, status = dep["spec"], dep["status"]
        replicas = spec["replicas"]
        tags = [c["image"].rsplit(":", 1)[-1] for c in spec["template"]["spec"]["containers"]]
        bad = any(t in ("crash", "pullfail", "oom", "stuck") for t in tags)
        crashes = {p["metadata"]["name"]: "standin/config-crash" in p["metadata"]["annotations"] for p in entry["new_pods"]}
        bad = bad or any(crashes.values())
        status["observedGeneration"] = dep["metadata"]["generation"]
        for pod in entry["new_pods"]:
            pod["status"]["containerStatuses"] = [self._status(c, "running", entry["changed_at"],
                                                               crashes[pod["metadata"]["name"]])
                                                  for c in pod["spec"]["containers"]]
        if bad:
            old = entry["old_pods"]
            status.update(updatedReplicas=1, replicas=1 + len(old), availableReplicas=len(old), readyReplicas=len(old))
            entry["pods"] = entry["new_pods"][:1] + old
            if age > self.deadline:
                status["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded"}]
            return
        updated = min(replicas, k)
        new_ready = min(replicas, k - 1)
        old = [] if k > replicas else entry["old_pods"][:max(0, replicas - new_ready)]
        status.update(updatedReplicas=updated, replicas=updated + len(old), availableReplicas=new_ready + len(old),
                      readyReplicas=new_ready + len(old))
        entry["pods"] = entry["new_pods"][:updated] + old
        if k > replicas:
            status["conditions"] = [{"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]

    def _patched(self, entry, new_dep):
        old = entry["dep"]
        if new_dep["spec"]["template"] != old["spec"]["template"] or new_dep["spec"].get("replicas") != old["spec"].get("replicas"):
            new_dep["metadata"]["generation"] = old["metadata"]["generation"] + 1
            entry["rev"] += 1
            new_dep["metadata"].setdefault("annotations", {})["deployment.kubernetes.io/revision"] = str(entry["rev"])
            entry["changed_at"] = time.monotonic()
            entry["old_pods"] = [p for p in entry["pods"]
                                 if p["status"]["containerStatuses"] and all(c.get("ready") for c in p["status"]["containerStatuses"])]
            entry["new_pods"] = self._pods(new_dep, entry["rev"], "running", entry["changed_at"])
            new_dep["status"]["conditions"] = [{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]
        entry["dep"] = new_dep

    def _configmap(self, method, seg, body=None, ctype=None):
        """(status, object) of a core/v1 configmap request, None for other paths (callers hold the lock)."""
        if not (seg[:3] == ["api", "v1", "namespaces"] and len(seg) == 6 and seg[4] == "configmaps"):
            return None
        item = self.configmaps.get((seg[3], seg[5]))
        if item is None:
            return 404, not_found_status('configmaps "%s" not found' % seg[5])
        if method == "GET":
            return 200, item
        if method == "PUT":
            new = copy.deepcopy(body)
        elif ctype in ("application/merge-patch+json", "application/strategic-merge-patch+json"):
            new = merge_patch(item, body)
        else:
            return 415, {"kind": "Status", "status": "Failure", "code": 415, "message": "unsupported patch type %s" % ctype}
        version = str(int(item["metadata"]["resourceVersion"]) + 1)
        new.setdefault("metadata", {}).update(name=seg[5], namespace=seg[3], resourceVersion=version)
        self.configmaps[(seg[3], seg[5])] = new
        return 200, new

    def _events(self, namespace):
        """self.events of ``namespace`` and a BackOff Warning per container in CrashLoopBackOff."""
        items = [e for e in self.events if (e.get("involvedObject") or {}).get("namespace", namespace) == namespace]
        for (ns, _name), entry in self.deployments.items():
            if ns != namespace:
                continue
            self._advance(entry)
            for pod in entry["pods"]:
                for cs in pod["status"]["containerStatuses"]:
                    if (cs["state"].get("waiting") or {}).get("reason") == "CrashLoopBackOff":
                        items.append({"type": "Warning", "reason": "BackOff", "count": cs["restartCount"],
                                      "message": "Back-off restarting failed container %s in pod %s" % (cs["name"], pod["metadata"]["name"]),
                                      "involvedObject": {"kind": "Pod", "name": pod["metadata"]["name"], "namespace": ns},
                                      "lastTimestamp": "2026-01-01T00:10:00Z", "metadata": {"name": pod["metadata"]["name"] + ".backoff"}})
        return 200, {"kind": "EventList", "apiVersion": "v1", "metadata": {}, "items": items}

    # -- HTTP
    def _handler(self):
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def _send(self, code, obj):
                send_json(self, code, obj)

            def _not_found(self, what):
                self._send(404, not_found_status("%s not found" % what))

            def _route(self):
                parts = urlsplit(self.path)
                seg = [s for s in parts.path.split("/") if s]
                standin.requests.append((self.command, parts.path, self.headers.get("Content-Type")))
                return seg, parse_qs(parts.query)

            def do_GET(self):  # noqa: N802
                seg, query = self._route()
                with standin.lock:
                    answer = standin._configmap("GET", seg)
                    if answer is None and seg[:3] == ["api", "v1", "namespaces"] and seg[4:] == ["events"]:
                        answer = standin._events(seg[3])
                    if answer is not None:
                        return self._send(*answer)
                    if seg[:3] == ["apis", "apps", "v1"] and len(seg) == 7 and seg[5] == "deployments":
                        entry = standin.deployments.get((seg[4], seg[6]))
                        if not entry:
                            return self._not_found('deployments.apps "%s"' % seg[6])
                        standin._advance(entry)
                        return self._send(200, entry["dep"])
                    if seg[:2] == ["api", "v1"] and len(seg) >= 5 and seg[4] == "pods":
                        pods = []
                        for (ns, _name), entry in standin.deployments.items():
                            if ns == seg[3]:
                                standin._advance(entry)
                                pods.extend(entry["pods"])
                        if len(seg) == 7 and seg[6] == "log":
                            pod = next((p for p in pods if p["metadata"]["name"] == seg[5]), None)
                            if not pod:
                                return self._not_found('pods "%s"' % seg[5])
                            text = "starting %s\nfatal: cannot read config\n" % pod["spec"]["containers"][0]["image"]
                            data = text.encode()
                            self.send_response(200)
                            self.send_header("Content-Type", "text/plain")
                            self.send_header("Content-Length", str(len(data)))
                            self.end_headers()
                            self.wfile.write(data)
                            return None
                        selector = (query.get("labelSelector") or [""])[0]
                        want = dict(kv.split("=", 1) for kv in selector.split(",") if "=" in kv)
                        pods = [p for p in pods if all(p["metadata"]["labels"].get(k) == v for k, v in want.items())]
                        return self._send(200, {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": pods})
                return self._not_found(self.path)

            def do_PATCH(self):  # noqa: N802
                seg, _query = self._route()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                ctype = (self.headers.get("Content-Type") or "").split(";")[0]
                with standin.lock:
                    answer = standin._configmap("PATCH", seg, body, ctype)
                    if answer is not None:
                        return self._send(*answer)
                    if not (seg[:3] == ["apis", "apps", "v1"] and len(seg) == 7 and seg[5] == "deployments"):
                        return self._not_found(self.path)
                    entry = standin.deployments.get((seg[4], seg[6]))
                    if not entry:
                        return self._not_found('deployments.apps "%s"' % seg[6])
                    standin._advance(entry)
                    dep = copy.deepcopy(entry["dep"])
                    if ctype == "application/json-patch+json":
                        dep = json_patch(dep, body)
                    elif ctype == "application/strategic-merge-patch+json":
                        dep = strategic_merge(dep, body)
                    elif ctype == "application/merge-patch+json":
                        dep = merge_patch(dep, body)
                    else:
                        return self._send(415, {"kind": "Status", "status": "Failure", "code": 415,
                                                "message": "unsupported patch type %s" % ctype})
                    standin._patched(entry, dep)
                    return self._send(200, entry["dep"])

            def do_PUT(self):  # noqa: N802
                seg, _query = self._route()
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"null")
                with standin.lock:
                    answer = standin._configmap("PUT", seg, body)
                return self._send(*(answer or (404, not_found_status("%s not found" % self.path))))

        return Handler


def merge_patch(target, patch):
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = merge_patch(out.get(key), value)
    return out


def strategic_merge(target, patch):
    """Strategic merge for what rollout sends: maps merge, ``containers`` merge by name."""
    if not isinstance(patch, dict) or not isinstance(target, dict):
        return copy.deepcopy(patch)
    out = dict(target)
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        elif key in ("containers", "initContainers") and isinstance(value, list):
            merged = [copy.deepcopy(c) for c in out.get(key) or []]
            for item in value:
                match = next((c for c in merged if c.get("name") == item.get("name")), None)
                if match is None:
                    merged.append(copy.deepcopy(item))
                else:
                    match.update(strategic_merge(match, item))
            out[key] = merged
        else:
            out[key] = strategic_merge(out.get(key), value)
    return out


def json_patch(doc, ops):
    for op in ops:
        path = [p.replace("~1", "/").replace("~0", "~") for p in op["path"].split("/")[1:]]
        parent = doc
        for part in path[:-1]:
            parent = parent[int(part)] if isinstance(parent, list) else parent[part]
        last = path[-1]
        if op["op"] in ("replace", "add"):
            if isinstance(parent, list):
                parent[int(last)] = copy.deepcopy(op["value"])
            else:
                parent[last] = copy.deepcopy(op["value"])
        elif op["op"] == "remove":
            del parent[int(last) if isinstance(parent, list) else last]
        elif op["op"] == "test":
            cur = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if cur != op["value"]:
                raise ValueError("test failed at %s" % op["path"])
    return doc
