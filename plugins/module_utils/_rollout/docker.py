# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's Docker driver: re-create a container with another image, every setting preserved.

The create request is derived from ``inspect`` (``create_spec``, a pure function): the
settings the user gave (those that differ from the old image's defaults, so the new image's
own ENV, CMD, HEALTHCHECK... apply), the whole HostConfig, anonymous volumes re-attached by
name, and every network with its aliases and static addresses. The old container is renamed
and stopped, kept until the new one passed the gate (revert = remove new, rename + start old),
then removed. A container with AutoRemove (``docker run --rm``) is deleted by the daemon when it
stops: its revert re-creates it from its own inspect with the same image. What a killed run
left behind (``<name>_opskit_prev_*`` stopped, the unverified new container under the name)
is found by the next run (``repair_leftovers``) and put back as it was before that run. The
last-known-good (image, digest, create spec; record.py) travels as a label on the new container.
The docker SDK is loaded through _docker.DOCKER when a unit is built.
"""

from __future__ import annotations

import copy
import os
import re
import socket
import time

from .._docker import DOCKER, docker_error
from .._errors import ServiceError
from .record import RECORD_LABEL, ImageMissing, docker_state, make_record, read_record, record_text

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_NUMBER = "com.docker.compose.container-number"
_BUILTIN_NETWORKS = ("default", "bridge", "host", "none")
# The run that created a container and is still gating it: "<host>/<pid>/<process start time>".
RUN_LABEL = "opskit.runbook.rollout-run"
_PARKED = re.compile(r"^/?(?P<base>.+)_opskit_(?P<kind>prev|failed|old|next)_(?P<ms>[0-9]+)$")
ORDERS = ("stop-first", "start-first")
# Config keys carried when they differ from the old image's (None: no image default).
_IMAGE_DEFAULTED = ("User", "WorkingDir", "Entrypoint", "Cmd", "Healthcheck", "StopSignal", "Shell", "OnBuild")
_ALWAYS = ("Domainname", "Tty", "OpenStdin", "StdinOnce", "AttachStdin", "AttachStdout", "AttachStderr",
           "StopTimeout", "MacAddress", "NetworkDisabled", "ArgsEscaped")


# --------------------------------------------------------------------------- pure spec logic

def create_spec(inspect, image_config=None):
    """The create request that re-creates the container of ``inspect`` (minus its Image).

    ``image_config`` is the ``Config`` of the container's image; settings equal to the image's
    defaults are left out so that another image's defaults apply. Returns
    ``{"body": <create body>, "networks": [{"name", "aliases", "ipv4", "ipv6", "links"}]}``:
    the first network goes into the body, the others are connected after create.
    """
    body = _config_body(inspect, image_config)
    host = copy.deepcopy(inspect.get("HostConfig") or {})
    host["Binds"] = _binds_with_anonymous(host, inspect.get("Mounts") or [])
    if host.get("Links"):
        host["Links"] = [_link(entry) for entry in host["Links"]]
    body["HostConfig"] = host
    mode = host.get("NetworkMode") or "default"
    if mode in ("host", "none") or mode.startswith("container:"):
        return {"body": body, "networks": []}
    networks = _networks(inspect)
    # the network given at create: the mode's own when attached, else the first attached one
    # (a container created with NetworkMode "default" and an EndpointsConfig is only on that one)
    mode_net = "bridge" if mode == "default" else mode
    names = [n["name"] for n in networks]
    primary = mode_net if mode_net in names else (names[0] if names else None)
    if primary and primary != "bridge":
        body["NetworkingConfig"] = {"EndpointsConfig": {primary: _endpoint(networks[names.index(primary)])}}
    extra = [n for n in networks if n["name"] != primary]
    return {"body": body, "networks": extra}


def _config_body(inspect, image_config):
    """The Config part of the create body: what the user set, minus the image's defaults."""
    cfg = inspect.get("Config") or {}
    img = image_config or {}
    have_image = image_config is not None
    short_id = (inspect.get("Id") or "")[:12]
    body = {}
    if cfg.get("Hostname") and cfg["Hostname"] != short_id:
        body["Hostname"] = cfg["Hostname"]
    for key in _ALWAYS:
        if cfg.get(key) not in (None, "", False):
            body[key] = copy.deepcopy(cfg[key])
    entry_custom = not have_image or cfg.get("Entrypoint") != img.get("Entrypoint")
    for key in _IMAGE_DEFAULTED:
        value = cfg.get(key)
        if key in ("Entrypoint", "Cmd") and entry_custom:
            # a custom entrypoint resets the image's CMD: keep both as the container has them
            if value is not None:
                body[key] = copy.deepcopy(value)
            elif key == "Entrypoint" and img.get("Entrypoint"):
                body[key] = [""]  # the image's entrypoint was switched off
            continue
        if value is not None and (not have_image or value != img.get(key)):
            body[key] = copy.deepcopy(value)
    image_env = set(img.get("Env") or [])
    env = [e for e in cfg.get("Env") or [] if e not in image_env]
    if env:
        body["Env"] = env
    image_labels = img.get("Labels") or {}
    labels = {k: v for k, v in (cfg.get("Labels") or {}).items()
              if k not in (RECORD_LABEL, RUN_LABEL) and image_labels.get(k) != v}
    if labels:
        body["Labels"] = labels
    for key in ("ExposedPorts", "Volumes"):
        extra = {k: {} for k in (cfg.get(key) or {}) if k not in (img.get(key) or {})}
        if extra:
            body[key] = extra
    return body


def _networks(inspect):
    """The attached networks, by name, with the aliases, static addresses and links to restore."""
    cfg = inspect.get("Config") or {}
    short_id = (inspect.get("Id") or "")[:12]
    networks = []
    attached = ((inspect.get("NetworkSettings") or {}).get("Networks") or {})
    for name in sorted(attached):
        ep = attached[name] or {}
        # the daemon adds the hostname (by default the short id) itself
        aliases = [a for a in ep.get("Aliases") or [] if a not in (short_id, inspect.get("Id"), cfg.get("Hostname"))]
        ipam = ep.get("IPAMConfig") or {}
        networks.append({"name": name, "aliases": aliases, "ipv4": ipam.get("IPv4Address") or None,
                         "ipv6": ipam.get("IPv6Address") or None,
                         "links": [_link(x) for x in ep.get("Links") or []]})
    return networks


def _endpoint(net):
    ep = {}
    if net["aliases"]:
        ep["Aliases"] = list(net["aliases"])
    ipam = {k: v for k, v in (("IPv4Address", net["ipv4"]), ("IPv6Address", net["ipv6"])) if v}
    if ipam:
        ep["IPAMConfig"] = ipam
    if net["links"]:
        ep["Links"] = list(net["links"])
    return ep


def _link(entry):
    """'/db:/web/database' (inspect form) -> 'db:database' (create form)."""
    if ":" not in entry:
        return entry.lstrip("/")
    src, dst = entry.split(":", 1)
    return "%s:%s" % (src.lstrip("/"), dst.rsplit("/", 1)[-1])


def _binds_with_anonymous(host, mounts):
    """HostConfig.Binds plus the anonymous volumes, re-attached by name (their data stays)."""
    binds = list(host.get("Binds") or [])
    covered = set()
    for bind in binds:
        parts = bind.split(":")
        if len(parts) >= 2:
            covered.add(parts[1])
    for mount in host.get("Mounts") or []:
        covered.add(mount.get("Target"))
    for mount in mounts:
        if mount.get("Type") == "volume" and mount.get("Name") and mount.get("Destination") not in covered:
            binds.append("%s:%s%s" % (mount["Name"], mount["Destination"], "" if mount.get("RW", True) else ":ro"))
    return binds or None


def start_first_blocker(inspect):
    """Why the container cannot run next to its new copy (order start-first), or None: a host port
    it holds, a network mode it shares, or a static address."""
    host = inspect.get("HostConfig") or {}
    for port, bindings in sorted((host.get("PortBindings") or {}).items()):
        held = [b.get("HostPort") for b in bindings or [] if (b or {}).get("HostPort") not in (None, "", "0")]
        if held:
            return "it publishes host port %s (%s)" % (held[0], port)
    mode = host.get("NetworkMode") or "default"
    if mode == "host" or mode.startswith("container:"):
        return "it uses network mode %s" % mode
    for name, ep in sorted(((inspect.get("NetworkSettings") or {}).get("Networks") or {}).items()):
        ipam = (ep or {}).get("IPAMConfig") or {}
        if ipam.get("IPv4Address") or ipam.get("IPv6Address"):
            return "it has a static address on network %s" % name
    return None


def image_digest(image_inspect, ref=None):
    """The resolved digest: the registry digest of ``ref``'s repository when known, else the image id."""
    digests = image_inspect.get("RepoDigests") or []
    repo = ref.rsplit("@", 1)[0] if ref else None
    if repo and ":" in repo.rsplit("/", 1)[-1]:
        repo = repo.rsplit(":", 1)[0]
    for item in digests:
        if repo and item.split("@", 1)[0] == repo:
            return item.split("@", 1)[1]
    if digests:
        return digests[0].split("@", 1)[1]
    return image_inspect.get("Id")


def split_ref(ref):
    """(repository, tag) for docker pull; a digest reference keeps its digest as the tag."""
    if "@" in ref:
        repo, digest = ref.split("@", 1)
        return repo, digest
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        repo, tag = ref.rsplit(":", 1)
        return repo, tag
    return ref, "latest"


# --------------------------------------------------------------------------- the unit

def _failures():
    """What a docker SDK call can raise: DockerException, and the OSErrors of requests (ReadTimeout,
    ConnectionError: requests' exceptions are IOErrors) and of the socket."""
    return (DOCKER.load().errors.DockerException, OSError)


def _ms():
    return int(time.time() * 1000)


def _proc_start(pid):
    """The start time of process ``pid`` (clock ticks since boot), None when it does not exist."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError, ValueError):
        return None


def run_token():
    """Names this run in RUN_LABEL: host, pid and the process' start time (a reused pid differs)."""
    return "%s/%d/%s" % (socket.gethostname(), os.getpid(), _proc_start(os.getpid()))


def run_alive(token):
    """True when the run named by ``token`` is a live process on this host."""
    parts = (token or "").split("/")
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    return parts[2] != "None" and _proc_start(int(parts[1])) == parts[2]


def _running(client, container):
    state = (client.inspect_container(container).get("State") or {})
    return bool(state.get("Running") or state.get("Restarting"))


def _wait_stopped(client, container, seconds):
    """Wait until ``container`` no longer runs (a stop whose request timed out goes on in the daemon)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if not (client.inspect_container(container).get("State") or {}).get("Running"):
                return
        except DOCKER.load().errors.NotFound:
            return
        except OSError:
            pass
        time.sleep(0.2)


def _wait_gone(client, container, seconds):
    """Wait until the daemon removed ``container`` (AutoRemove happens just after the stop)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            client.inspect_container(container)
        except DOCKER.load().errors.NotFound:
            return True
        except OSError:
            pass
        time.sleep(0.2)
    return False


def start_checked(client, container, what, attempts=3):
    """Start ``container`` and check that it runs; a start whose answer was lost (a timeout) or
    that was a no-op is retried. ServiceError when it does not run after ``attempts``."""
    errors, last = DOCKER.load().errors, None
    for attempt in range(attempts):
        try:
            client.start(container)
        except errors.NotFound as exc:
            raise docker_error(exc, what) from exc
        except _failures() as exc:
            last = exc
        try:
            if _running(client, container):
                return
        except _failures() as exc:
            last = exc
        if attempt + 1 < attempts:
            time.sleep(0.5)
    raise ServiceError("%s: it does not run after %d start attempts%s" % (
        what, attempts, (" (%s)" % docker_error(last, "start").msg) if last is not None else ""))


class DockerContainer:
    """One container replaced as a whole (see the unit interface in _rollout).

    ``repaired``: what the leftovers of an interrupted earlier run were (see repair_leftovers);
    computed here unless the caller did it already.
    """

    def __init__(self, client, name, pull="missing", stop_timeout=10, kind="docker_container", repaired=None,
                 check_mode=False, order="stop-first"):
        self.client, self.pull, self.stop_timeout, self.kind = client, pull, stop_timeout, kind
        self.errors = DOCKER.load().errors   # NotFound < APIError < DockerException
        self.failures = _failures()
        self.repaired = repaired if repaired is not None else repair_leftovers(client, name, check_mode)
        self.inspect = self._call(client.inspect_container, "container %s" % name, name)
        self.name = (self.inspect.get("Name") or name).lstrip("/")
        blocker = start_first_blocker(self.inspect) if order == "start-first" else None
        self.order = "stop-first" if blocker else order
        self.order_note = ("start-first is impossible for %s: %s; stopped it first" % (self.label(), blocker)
                           if blocker else None)
        self._beside = False                 # start-first: the new container runs beside the old one
        self.watch = self.inspect["Id"]      # the container the gate observes
        self.prev = None                     # the old container kept for revert
        self.new = None
        self.baseline = int(self.inspect.get("RestartCount") or 0)
        self._digest = None
        self._record = None                  # the record the new container carries
        self._stop_sent = False              # the old container was (being) stopped
        self._old_spec = None                # AutoRemove: how to re-create the old container

    # -- helpers
    def _call(self, func, what, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except self.failures as exc:
            raise docker_error(exc, what) from exc

    def _image(self, ref):
        try:
            return self.client.inspect_image(ref)
        except self.errors.NotFound:
            return None
        except self.failures as exc:
            raise docker_error(exc, "image %s" % ref) from exc

    # -- the unit
    def label(self):
        return "container %s" % self.name

    def describe(self):
        return {"kind": self.kind, "name": self.name, "id": self.inspect["Id"][:12]}

    def current(self):
        if self._digest is None:
            img = self._image(self.inspect["Image"])
            self._digest = image_digest(img, self.inspect["Config"].get("Image")) if img else self.inspect["Image"]
        return {"image": self.inspect["Config"].get("Image"), "digest": self._digest}

    def resolve(self, image, check_mode=False):
        img = None if self.pull == "always" else self._image(image)
        if img is None and self.pull != "never" and not check_mode:
            repo, tag = split_ref(image)
            try:
                self.client.pull(repo, tag=tag)
            except self.failures as exc:
                explanation = getattr(exc, "explanation", None) or exc
                if self.pull == "always" and self._image(image):
                    img = self._image(image)
                else:
                    raise ImageMissing("image %s is not present and could not be pulled: %s"
                                       % (image, " ".join(str(explanation).split())[:300])) from exc
            img = img or self._image(image)
        if img is None:
            if check_mode and self.pull != "never":
                return {"image": image, "digest": None, "id": None}
            raise ImageMissing("image %s is not present on the Docker host (pull: %s)" % (image, self.pull))
        return {"image": image, "digest": image_digest(img, image), "id": img["Id"]}

    def digest_now(self, target):
        return target.get("digest")

    def same(self, target):
        return target.get("id") is not None and target["id"] == self.inspect["Image"]

    def recorded(self):
        if self.new is not None and self._record is not None:
            return self._record
        inspect = self.inspect if self.new is None else self._call(
            self.client.inspect_container, self.label(), self.new)
        text = ((inspect.get("Config") or {}).get("Labels") or {}).get(RECORD_LABEL)
        return read_record(text, self.label())

    def matches(self, record):
        return record.get("id") == self.inspect["Image"]

    # -- switching
    def replace(self, target, keep_record=False):
        old_img = self._image(self.inspect["Image"])
        spec = create_spec(self.inspect, old_img.get("Config") if old_img else None)
        record = self.recorded() if keep_record else None
        if record is None:
            cur = self.current()
            record = make_record(cur["image"], cur["digest"], spec, self.inspect["Image"])
        self._switch(spec, target["image"], record)

    def restore(self, record):
        spec = record["spec"]
        image = record["image"]
        img = self._image(image)
        if img is None or (record.get("id") and img["Id"] != record["id"]):
            image = record.get("id")
            if not image or self._image(image) is None:
                raise ImageMissing("%s: the recorded image %s (%s) is no longer present"
                                   % (self.label(), record["image"], record.get("digest")))
        self._switch(spec, image, record)

    def _own_spec(self):
        """How to re-create this very container: every setting as inspect shows it, the same image
        (by its reference while that still names the same image id), its own record label."""
        spec = create_spec(self.inspect, None)
        ref = (self.inspect.get("Config") or {}).get("Image")
        img = self._image(ref) if ref else None
        spec["body"]["Image"] = ref if img and img["Id"] == self.inspect["Image"] else self.inspect["Image"]
        label = ((self.inspect.get("Config") or {}).get("Labels") or {}).get(RECORD_LABEL)
        if label:
            spec["body"].setdefault("Labels", {})[RECORD_LABEL] = label
        return spec

    def _switch(self, spec, image, record):
        body = copy.deepcopy(spec["body"])
        body["Image"] = image
        body.setdefault("Labels", {})[RECORD_LABEL] = record_text(record)
        body["Labels"][RUN_LABEL] = run_token()
        if self.order == "start-first":
            self._switch_beside(spec, body, record)
            return
        old_id = self.inspect["Id"]
        if (self.inspect.get("HostConfig") or {}).get("AutoRemove"):
            # docker run --rm: the daemon deletes the old container when it stops
            self._old_spec = self._own_spec()
        self.prev = self.watch = old_id      # before the rename: its answer may be lost
        self._call(self.client.rename, self.label(), old_id, "%s_opskit_prev_%d" % (self.name, _ms()))
        created = self._call(self.client.create_container_from_config, "creating the new container", body,
                             name=self.name)
        self.new = self.watch = created["Id"]
        self._record = record
        self._connect(self.new, spec.get("networks"))
        self._stop_sent = True
        self._call(self.client.stop, "stopping the old container", old_id, timeout=self.stop_timeout)
        self.baseline = 0
        self._call(self.client.start, "starting the new container", self.new)

    def _switch_beside(self, spec, body, record):
        """start-first: the new container starts next to the old one (same networks and aliases, so
        a proxy that resolves the service name sees both); the old one is removed in commit()."""
        self.prev, self._beside = self.inspect["Id"], True
        created = self._call(self.client.create_container_from_config, "creating the new container", body,
                             name="%s_opskit_next_%d" % (self.name, _ms()))
        self.new = self.watch = created["Id"]
        self._record = record
        self._connect(self.new, spec.get("networks"))
        self.baseline = 0
        self._call(self.client.start, "starting the new container", self.new)

    def _connect(self, container, networks):
        for net in networks or []:
            self._call(self.client.connect_container_to_network, "connecting network %s" % net["name"],
                       container, net["name"], aliases=net["aliases"] or None, links=net["links"] or None,
                       ipv4_address=net["ipv4"], ipv6_address=net["ipv6"])

    def restart(self):
        self.baseline = int(self._call(self.client.inspect_container, self.label(), self.watch).get("RestartCount") or 0)
        self._call(self.client.restart, "restarting %s" % self.label(), self.watch, timeout=self.stop_timeout)

    # -- stop and start (the writers of a restore, state=stopped / state=started)
    def running(self):
        return self._call(_running, self.label(), self.client, self.watch)

    def cannot_stop(self):
        """Why this container cannot be stopped and started again, or None."""
        if (self.inspect.get("HostConfig") or {}).get("AutoRemove"):
            return "%s runs with --rm (AutoRemove): stopping it would delete it" % self.label()
        return None

    def stop(self):
        self._call(self.client.stop, "stopping %s" % self.label(), self.watch, timeout=self.stop_timeout)
        _wait_stopped(self.client, self.watch, 15)
        if self.running():
            raise ServiceError("%s still runs after docker stop" % self.label())

    def stopped(self):
        return not self.running()

    def start(self):
        inspect = self._call(self.client.inspect_container, self.label(), self.watch)
        self.baseline = int(inspect.get("RestartCount") or 0)
        start_checked(self.client, self.watch, "starting %s" % self.label())

    def observe(self):
        try:
            inspect = self.client.inspect_container(self.watch)
        except self.errors.NotFound:
            return "failed", "the container disappeared"
        except self.failures as exc:
            return "waiting", "cannot inspect the container: %s" % docker_error(exc, self.label()).msg
        return docker_state(inspect, self.baseline)

    def revert(self):
        """Stop the new container at once, put the old one back under its name and start it;
        the failed container is removed only once the old one runs (off the critical path)."""
        if self.prev is None:
            return
        if self._beside:   # start-first: the old one never stopped
            failed, self.new, self.watch, self._beside = self.new, None, self.prev, False
            self.baseline, self.prev = int(self.inspect.get("RestartCount") or 0), None
            if failed is not None:
                self._remove(failed)
            return
        failed, self.new = self.new or self._orphan(), None
        if self._old_spec is not None and self._stop_sent:
            self.watch = self._recreate_old(failed)
            failed = None
        else:
            failed = self._park_failed(failed)
            self.watch = self._put_back(self.prev)
        self.baseline = int(self.inspect.get("RestartCount") or 0) if self.watch == self.prev else 0
        self.prev = None
        if failed is not None:
            self._remove(failed)

    def _orphan(self):
        """The container under the name when it is not the old one: a create whose answer was lost."""
        try:
            found = self.client.inspect_container(self.name)
        except self.failures:
            return None
        return found["Id"] if found["Id"] != self.prev else None

    def _park_failed(self, failed):
        """Stop the failed container at once and move it off the name; None when it is gone."""
        if failed is None:
            return None
        try:
            self.client.stop(failed, timeout=0)
            self.client.rename(failed, "%s_opskit_failed_%d" % (self.name, _ms()))
        except self.errors.NotFound:
            return None
        except self.failures:
            self._remove(failed)  # e.g. a restarting container that refuses stop, or a timeout
            return None
        return failed

    def _put_back(self, prev):
        """The old container under its name again, running; returns the id the gate watches."""
        name = (self._call(self.client.inspect_container, "the old container", prev).get("Name") or "").lstrip("/")
        if name != self.name:
            self._call(self.client.rename, "renaming the old container back", prev, self.name)
        if self._stop_sent:
            _wait_stopped(self.client, prev, self.stop_timeout + 15)
        start_checked(self.client, prev, "starting the old container")
        return prev

    def _recreate_old(self, failed):
        """AutoRemove: the daemon removed the old container (and its writable layer) when it stopped.
        Re-create it from its own inspect: created before the failed one stops, so that the
        anonymous volumes both use stay in use (the daemon removes them with an AutoRemove container)."""
        if failed is not None:
            try:
                self.client.rename(failed, "%s_opskit_failed_%d" % (self.name, _ms()))
            except self.errors.NotFound:
                failed = None
            except self.failures:
                self._remove(failed)
                failed = None
        if not _wait_gone(self.client, self.prev, self.stop_timeout + 15):
            raise ServiceError("%s: the old container (AutoRemove) was neither removed nor kept" % self.label())
        created = self._call(self.client.create_container_from_config, "re-creating the old container",
                             copy.deepcopy(self._old_spec["body"]), name=self.name)["Id"]
        self._connect(created, self._old_spec.get("networks"))
        if failed is not None:
            self._remove(failed)        # frees the host ports; the volumes stay (in use)
        start_checked(self.client, created, "starting the re-created old container")
        return created

    def _remove(self, container):
        try:
            self.client.remove_container(container, force=True)
        except self.errors.NotFound:
            pass
        except self.failures as exc:
            raise docker_error(exc, "removing the failed container") from exc

    def commit(self):
        """Remove the old container (already gone with AutoRemove). When that fails, park it as
        ``_opskit_old_`` so that the next run removes it instead of mistaking it for a killed run."""
        prev, self.prev = self.prev, None
        if prev is None:
            return
        if self._beside:
            self._retire_beside(prev)
            return
        try:
            self.client.remove_container(prev, v=False, force=True)
        except self.errors.NotFound:
            return
        except self.failures as exc:
            try:
                self.client.rename(prev, "%s_opskit_old_%d" % (self.name, _ms()))
            except self.failures:
                pass
            raise docker_error(exc, "removing the old container") from exc

    def _retire_beside(self, prev):
        """start-first, the new container passed: stop the old one (its own stop signal and timeout,
        so it finishes what it serves), remove it, and give the new one the name."""
        self._beside = False
        self._call(self.client.stop, "stopping the old container", prev, timeout=self.stop_timeout)
        try:
            self.client.remove_container(prev, v=False, force=True)
        except self.errors.NotFound:
            pass
        except self.failures as exc:
            raise docker_error(exc, "removing the old container") from exc
        self._call(self.client.rename, "renaming the new container to %s" % self.name, self.new, self.name)

    def logs(self, lines):
        target = self.new or self.watch
        raw = self._call(self.client.logs, "the logs of %s" % self.label(), target, stdout=True, stderr=True,
                         tail=lines, timestamps=False)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return text.splitlines()[-lines:]


# --------------------------------------------------------------------------- leftovers of a killed run

def _parked(client, base):
    """The containers parked by earlier runs for the container named ``base``: [(ms, kind, name, id)]."""
    try:
        listed = client.containers(all=True, filters={"name": base + "_opskit_"})
    except _failures() as exc:
        raise docker_error(exc, "listing the leftovers of container %s" % base) from exc
    found = []
    for c in listed:
        for n in c.get("Names") or []:
            m = _PARKED.match(n)
            if m and m.group("base") == base:
                found.append((int(m.group("ms")), m.group("kind"), n.lstrip("/"), c["Id"]))
    return sorted(found)


def _inspect_or_none(client, name):
    try:
        return client.inspect_container(name)
    except DOCKER.load().errors.NotFound:
        return None
    except _failures() as exc:
        raise docker_error(exc, "container %s" % name) from exc


def repair_leftovers(client, name, check_mode=False):
    """Put back what a killed run left for the container ``name``; returns what it did, in words.

    A run killed while it gated an upgrade leaves the old container as ``<name>_opskit_prev_<ms>``
    (stopped) and the unverified new one under the name: the new one is removed and the old one
    renamed back and started, as before that run. ``_opskit_failed_`` and ``_opskit_old_`` copies
    are removed. A run still alive on this host (RUN_LABEL) is left alone: ServiceError.
    """
    current = _inspect_or_none(client, name)
    base = ((current or {}).get("Name") or name).lstrip("/")
    if _PARKED.match("/" + base):
        return []
    parked = _parked(client, base)
    if not parked:
        return []
    prevs = [p for p in parked if p[1] == "prev"]
    _refuse_live_beside(client, base, parked)
    token = (((current or {}).get("Config") or {}).get("Labels") or {}).get(RUN_LABEL)
    if prevs and run_alive(token):
        raise ServiceError("container %s: another rollout (process %s) is still switching it; run again when it "
                           "has finished" % (base, token.split("/")[1]))
    if check_mode:
        return ["container %s: would restore %s, left by an interrupted rollout" % (base, prevs[-1][2]) if prevs
                else "container %s: would remove %d leftover container(s) of an interrupted rollout" % (base, len(parked))]
    done = []
    if prevs:
        done.append(_restore_parked(client, base, current, prevs[-1]))
    rest = [p for p in parked if not prevs or p is not prevs[-1]]
    for _ms_, _kind, pname, cid in rest:
        try:
            client.remove_container(cid, v=False, force=True)
        except DOCKER.load().errors.NotFound:
            pass
        except _failures() as exc:
            raise docker_error(exc, "removing the leftover container %s" % pname) from exc
    if rest:
        done.append("container %s: removed %d leftover container(s) of an interrupted rollout (%s)"
                    % (base, len(rest), ", ".join(p[2] for p in rest)))
    return done


def _refuse_live_beside(client, base, parked):
    """A start-first copy (``_opskit_next_``) of a run that is still alive is left alone."""
    for _ms_, kind, _pname, cid in parked:
        if kind != "next":
            continue
        labels = (((_inspect_or_none(client, cid) or {}).get("Config") or {}).get("Labels") or {})
        if run_alive(labels.get(RUN_LABEL)):
            raise ServiceError("container %s: another rollout (process %s) is still gating its new copy; run again "
                               "when it has finished" % (base, labels[RUN_LABEL].split("/")[1]))


def _restore_parked(client, base, current, prev):
    """The old container ``prev`` back under the name ``base``, running; the unverified one removed."""
    _ms_, _kind, pname, pid = prev
    removed = ""
    if current is not None and current["Id"] != pid:
        try:
            client.remove_container(current["Id"], v=False, force=True)
        except DOCKER.load().errors.NotFound:
            pass
        except _failures() as exc:
            raise docker_error(exc, "removing the unverified container %s" % base) from exc
        removed = " and removed the unverified container %s (%s)" % (
            current["Id"][:12], (current.get("Config") or {}).get("Image"))
    try:
        client.rename(pid, base)
    except _failures() as exc:
        raise docker_error(exc, "renaming %s back to %s" % (pname, base)) from exc
    start_checked(client, pid, "starting the restored container %s" % base)
    return ("container %s: an interrupted rollout had left the old container parked as %s; renamed it back and "
            "started it%s" % (base, pname, removed))


def _compose_containers(client, project, service):
    filters = {"label": ["%s=%s" % (COMPOSE_PROJECT, project), "%s=%s" % (COMPOSE_SERVICE, service)]}
    try:
        return client.containers(all=True, filters=filters)
    except _failures() as exc:
        raise docker_error(exc, "listing the containers of %s/%s" % (project, service)) from exc


def compose_units(client, project, service, check_mode=False, **kwargs):
    """The containers of a Compose service, by their compose labels, in container-number order.

    Leftovers of an interrupted run (parked copies, which carry the compose labels too) are
    repaired first, also for a container that is missing under its own name.
    """
    found = _compose_containers(client, project, service)
    bases = sorted({m.group("base") for c in found for m in map(_PARKED.match, c.get("Names") or []) if m})
    repaired = [text for base in bases for text in repair_leftovers(client, base, check_mode)]
    if repaired and not check_mode:
        found = _compose_containers(client, project, service)
    found = [c for c in found if not any(_PARKED.match(n) for n in c.get("Names") or [])]
    if not found:
        raise ServiceError("compose service %s of project %s: no containers carry the labels %s=%s, %s=%s"
                           % (service, project, COMPOSE_PROJECT, project, COMPOSE_SERVICE, service))

    def number(c):
        try:
            return int((c.get("Labels") or {}).get(COMPOSE_NUMBER) or 0)
        except ValueError:
            return 0
    found.sort(key=lambda c: (number(c), (c.get("Names") or [""])[0]))
    units = [DockerContainer(client, c["Id"], kind="compose_service", repaired=[], **kwargs) for c in found]
    units[0].repaired = repaired
    return units
