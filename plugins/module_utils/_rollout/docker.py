# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's Docker driver: re-create a container with another image, every setting preserved.

The create request is derived from ``inspect`` (``create_spec``, a pure function): the
settings the user gave (those that differ from the old image's defaults, so the new image's
own ENV, CMD, HEALTHCHECK... apply), the whole HostConfig, anonymous volumes re-attached by
name, and every network with its aliases and static addresses. The old container is renamed
and stopped, kept until the new one passed the gate (revert = remove new, rename + start old),
then removed. The last-known-good (image, digest, create spec; record.py) travels as a label
on the new container. The docker SDK is loaded through _docker.DOCKER when a unit is built.
"""

from __future__ import annotations

import copy
import time

from .._docker import DOCKER, docker_error
from .._errors import ServiceError
from .record import RECORD_LABEL, ImageMissing, docker_state, make_record, read_record, record_text

COMPOSE_PROJECT = "com.docker.compose.project"
COMPOSE_SERVICE = "com.docker.compose.service"
COMPOSE_NUMBER = "com.docker.compose.container-number"
_BUILTIN_NETWORKS = ("default", "bridge", "host", "none")
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
              if k != RECORD_LABEL and image_labels.get(k) != v}
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

class DockerContainer:
    """One container replaced as a whole (see the unit interface in _rollout)."""

    def __init__(self, client, name, pull="missing", stop_timeout=10, kind="docker_container"):
        self.client, self.pull, self.stop_timeout, self.kind = client, pull, stop_timeout, kind
        self.errors = DOCKER.load().errors   # NotFound < APIError < DockerException
        self.inspect = self._call(client.inspect_container, "container %s" % name, name)
        self.name = (self.inspect.get("Name") or name).lstrip("/")
        self.watch = self.inspect["Id"]      # the container the gate observes
        self.prev = None                     # the old container kept for revert
        self.new = None
        self.baseline = int(self.inspect.get("RestartCount") or 0)
        self._digest = None
        self._record = None                  # the record the new container carries

    # -- helpers
    def _call(self, func, what, *args, **kwargs):
        try:
            return func(*args, **kwargs)
        except self.errors.DockerException as exc:
            raise docker_error(exc, what) from exc
        except OSError as exc:
            raise ServiceError("%s: %s" % (what, exc)) from exc

    def _image(self, ref):
        try:
            return self.client.inspect_image(ref)
        except self.errors.NotFound:
            return None
        except self.errors.DockerException as exc:
            raise docker_error(exc, "image %s" % ref) from exc

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
            except (self.errors.DockerException, OSError) as exc:
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

    def _switch(self, spec, image, record):
        body = copy.deepcopy(spec["body"])
        body["Image"] = image
        body.setdefault("Labels", {})[RECORD_LABEL] = record_text(record)
        old_id = self.inspect["Id"]
        parked = "%s_opskit_prev_%d" % (self.name, int(time.time() * 1000))
        self._call(self.client.rename, self.label(), old_id, parked)
        self.prev = old_id
        self.watch = old_id
        try:
            created = self.client.create_container_from_config(body, name=self.name)
        except self.errors.DockerException as exc:
            raise docker_error(exc, "creating the new container") from exc
        self.new = self.watch = created["Id"]
        self._record = record
        for net in spec.get("networks") or []:
            self._call(self.client.connect_container_to_network, "connecting network %s" % net["name"],
                       self.new, net["name"], aliases=net["aliases"] or None, links=net["links"] or None,
                       ipv4_address=net["ipv4"], ipv6_address=net["ipv6"])
        self._call(self.client.stop, "stopping the old container", old_id, timeout=self.stop_timeout)
        self.baseline = 0
        self._call(self.client.start, "starting the new container", self.new)

    def restart(self):
        self.baseline = int(self._call(self.client.inspect_container, self.label(), self.watch).get("RestartCount") or 0)
        self._call(self.client.restart, "restarting %s" % self.label(), self.watch, timeout=self.stop_timeout)

    def observe(self):
        try:
            inspect = self.client.inspect_container(self.watch)
        except self.errors.NotFound:
            return "failed", "the container disappeared"
        except (self.errors.DockerException, OSError) as exc:
            return "waiting", "cannot inspect the container: %s" % docker_error(exc, self.label()).msg
        return docker_state(inspect, self.baseline)

    def revert(self):
        """Stop the new container at once, put the old one back under its name and start it;
        the failed container is removed only once the old one runs (off the critical path)."""
        if self.prev is None:
            return
        failed = self.new
        if failed is not None:
            try:
                self.client.stop(failed, timeout=0)
                self.client.rename(failed, "%s_opskit_failed_%d" % (self.name, int(time.time() * 1000)))
            except self.errors.NotFound:
                failed = None
            except self.errors.DockerException:
                self._remove(failed)  # e.g. a restarting container that refuses stop
                failed = None
        self._call(self.client.rename, "renaming the old container back", self.prev, self.name)
        self.watch, self.new = self.prev, None
        self.baseline = int(self.inspect.get("RestartCount") or 0)
        self._call(self.client.start, "starting the old container", self.prev)
        self.prev = None
        if failed is not None:
            self._remove(failed)

    def _remove(self, container):
        try:
            self.client.remove_container(container, force=True)
        except self.errors.NotFound:
            pass
        except self.errors.DockerException as exc:
            raise docker_error(exc, "removing the failed container") from exc

    def commit(self):
        if self.prev is not None:
            self._call(self.client.remove_container, "removing the old container", self.prev, v=False, force=True)
            self.prev = None

    def logs(self, lines):
        target = self.new or self.watch
        raw = self._call(self.client.logs, "the logs of %s" % self.label(), target, stdout=True, stderr=True,
                         tail=lines, timestamps=False)
        text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        return text.splitlines()[-lines:]


def compose_units(client, project, service, **kwargs):
    """The containers of a Compose service, by their compose labels, in container-number order."""
    filters = {"label": ["%s=%s" % (COMPOSE_PROJECT, project), "%s=%s" % (COMPOSE_SERVICE, service)]}
    try:
        found = client.containers(all=True, filters=filters)
    except DOCKER.load().errors.DockerException as exc:
        raise docker_error(exc, "listing the containers of %s/%s" % (project, service)) from exc
    found = [c for c in found if not any(m in ",".join(c.get("Names") or []) for m in ("_opskit_prev_", "_opskit_failed_"))]
    if not found:
        raise ServiceError("compose service %s of project %s: no containers carry the labels %s=%s, %s=%s"
                           % (service, project, COMPOSE_PROJECT, project, COMPOSE_SERVICE, service))

    def number(c):
        try:
            return int((c.get("Labels") or {}).get(COMPOSE_NUMBER) or 0)
        except ValueError:
            return 0
    found.sort(key=lambda c: (number(c), (c.get("Names") or [""])[0]))
    return [DockerContainer(client, c["Id"], kind="compose_service", **kwargs) for c in found]
