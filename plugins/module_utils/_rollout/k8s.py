# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's Kubernetes driver: one container image of a Deployment, through the official client.

Before the change the pod template (and the image and digest it ran) is recorded in the
annotation ``opskit.runbook/last-known-good`` by a strategic-merge patch that touches only that
annotation. A rollback replaces ``/spec/template`` with the recorded template (JSON patch), so
it is exactly what ran, whatever revision numbers the controller assigned in between.
Readiness follows the kubectl rollout-status rules; pods of the new template that are in
CrashLoopBackOff, ImagePullBackOff, ErrImagePull, ... or were OOMKilled fail the gate at once
(record.py: ``rollout_status``, ``pod_failure``). The API client comes from _kube.kube_client.
"""

from __future__ import annotations

import json

from .._errors import ConfigError, ServiceError
from .._kube import KUBERNETES, api_exception, unreachable_errors
from .._timeutil import rfc3339, utcnow
from .record import FAILED, RECORD_KEY, WAITING, make_record, pod_failure, read_record, record_text, rollout_status

RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
STOPPED_KEY = "opskit.runbook/replicas-before-stop"   # state=stopped: the replicas to come back to
SMP = "application/strategic-merge-patch+json"


def api_error(exc, what):
    """One-line ServiceError for an ApiException or a connection error."""
    if isinstance(exc, api_exception()):
        message = ""
        try:
            message = json.loads(exc.body or "{}").get("message") or ""
        except (ValueError, AttributeError):
            message = ""
        if exc.status == 404:
            return ServiceError("%s: not found%s" % (what, (" (%s)" % message) if message else ""))
        return ServiceError("%s: HTTP %s %s%s" % (what, exc.status, exc.reason or "",
                                                  (": %s" % message) if message else ""))
    return ServiceError("%s: cannot reach the Kubernetes API: %s" % (what, " ".join(str(exc).split())[:300]))


def template_images(template):
    return [(c.get("name"), c.get("image")) for c in (template.get("spec") or {}).get("containers") or []]


def pod_matches_template(pod, template):
    """True when ``pod`` was created from ``template`` (same container images and restartedAt)."""
    if template_images(pod) != template_images(template):
        return False
    want = ((template.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
    have = ((pod.get("metadata") or {}).get("annotations") or {}).get(RESTARTED_AT)
    return want == have


def surge_order(dep, wanted, label):
    """(order, note): a Deployment rolls by its own strategy; ``start-first`` is its surge with
    maxUnavailable 0, and a strategy that takes pods down first is named in the note."""
    strategy = (dep.get("spec") or {}).get("strategy") or {}
    if strategy.get("type") == "Recreate":
        order = "recreate"
    else:
        rolling = strategy.get("rollingUpdate") or {}
        order = "rolling (maxSurge %s, maxUnavailable %s)" % (rolling.get("maxSurge", "25%"),
                                                              rolling.get("maxUnavailable", "25%"))
    unavailable = str(((strategy.get("rollingUpdate") or {}).get("maxUnavailable", "25%")))
    note = None
    if wanted == "start-first" and (order == "recreate" or unavailable not in ("0", "0%")):
        note = ("%s: start-first is the Deployment's own surge; its strategy (%s) may stop pods before new ones "
                "are ready: set strategy.rollingUpdate.maxUnavailable to 0" % (label, order))
    return order, note


class K8sDeployment:
    """One Deployment (one of its containers) replaced as a whole (see the unit interface in _rollout)."""

    def __init__(self, api_client, namespace, name, container=None, request_timeout=30, order="stop-first"):
        kubernetes = KUBERNETES.load()
        self.api = api_client
        self.apps = kubernetes.client.AppsV1Api(api_client)
        self.core = kubernetes.client.CoreV1Api(api_client)
        self.namespace, self.name, self.timeout = namespace, name, request_timeout
        self.dep = self._get()
        names = [n for n, _image in template_images(self.dep["spec"]["template"])]
        if container is None:
            if len(names) != 1:
                raise ConfigError("%s has %d containers (%s): set container to the one to upgrade"
                                  % (self.label(), len(names), ", ".join(names)))
            container = names[0]
        elif container not in names:
            raise ConfigError("%s has no container %r (it has %s)" % (self.label(), container, ", ".join(names)))
        self.container = container
        self.order, self.order_note = surge_order(self.dep, order, self.label())
        self.before = None
        self.restart_baseline = {}
        self.failing_pod = None

    # -- API
    def _call(self, func, what, *args, **kwargs):
        try:
            resp = func(*args, _preload_content=False, _request_timeout=self.timeout, **kwargs)
        except (api_exception(),) + unreachable_errors() as exc:  # an answer, or no connection
            raise api_error(exc, what) from exc
        data = resp.data
        return json.loads(data) if data else None

    def _get(self):
        return self._call(self.apps.read_namespaced_deployment, self.label(), self.name, self.namespace)

    def _patch(self, body, content_type=SMP):
        self.dep = self._call(self.apps.patch_namespaced_deployment, self.label(), self.name, self.namespace,
                              body, _content_type=content_type)
        return self.dep

    def _pods(self):
        labels = ((self.dep.get("spec") or {}).get("selector") or {}).get("matchLabels") or {}
        selector = ",".join("%s=%s" % kv for kv in sorted(labels.items()))
        data = self._call(self.core.list_namespaced_pod, "pods of %s" % self.label(), self.namespace,
                          label_selector=selector)
        return (data or {}).get("items") or []

    # -- the unit interface
    def label(self):
        return "deployment %s/%s" % (self.namespace, self.name)

    def describe(self):
        return {"kind": "k8s_deployment", "namespace": self.namespace, "name": self.name,
                "container": self.container}

    def _template(self):
        return self.dep["spec"]["template"]

    def _image(self, template=None):
        return dict(template_images(template or self._template())).get(self.container)

    def current(self):
        image = self._image()
        return {"image": image, "digest": self._digest(image)}

    def _digest(self, image):
        try:
            pods = self._pods()
        except ServiceError:
            return None
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                image_id = cs.get("imageID") or ""
                if cs.get("name") == self.container and cs.get("image") == image and "@" in image_id:
                    return image_id.rsplit("@", 1)[1]
        return None

    def digest_now(self, target):
        return self._digest(target["image"])

    def resolve(self, image, check_mode=False):
        return {"image": image, "digest": None}

    def same(self, target):
        return self._image() == target["image"]

    def recorded(self):
        text = ((self.dep.get("metadata") or {}).get("annotations") or {}).get(RECORD_KEY)
        return read_record(text, self.label())

    def matches(self, record):
        return _normal(self._template()) == _normal((record.get("spec") or {}).get("template") or {})

    def replace(self, target, keep_record=False):
        self.before = self._template()
        if not (keep_record and self.recorded()):
            cur = self.current()
            record = make_record(cur["image"], cur["digest"], {"template": self._template()})
            self._patch({"metadata": {"annotations": {RECORD_KEY: record_text(record)}}})
        self._patch({"spec": {"template": {"spec": {"containers": [{"name": self.container,
                                                                    "image": target["image"]}]}}}})

    def restore(self, record):
        self.before = self._template()
        template = (record.get("spec") or {}).get("template")
        if not isinstance(template, dict) or not template.get("spec"):
            raise ServiceError("%s: the recorded last-known-good has no pod template" % self.label())
        self._patch([{"op": "replace", "path": "/spec/template", "value": template}],
                    "application/json-patch+json")

    def restart(self):
        self.before = None
        self._patch({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: rfc3339(utcnow())}}}}})

    # -- stop and start (state=stopped / state=started): replicas 0, then back to what they were
    def running(self):
        return int((self.dep.get("spec") or {}).get("replicas") or 0) > 0

    def cannot_stop(self):
        return None

    def stop(self):
        replicas = int((self.dep.get("spec") or {}).get("replicas") or 0)
        self._patch({"metadata": {"annotations": {STOPPED_KEY: str(replicas)}}, "spec": {"replicas": 0}})

    def set_replicas(self, replicas):
        self._patch({"spec": {"replicas": int(replicas)}})

    def stopped(self):
        """True once no pod of the Deployment is left (status.replicas 0)."""
        self.dep = self._get()
        return int((self.dep.get("status") or {}).get("replicas") or 0) == 0

    def start(self):
        annotations = (self.dep.get("metadata") or {}).get("annotations") or {}
        try:
            replicas = max(1, int(annotations.get(STOPPED_KEY) or 1))
        except ValueError:
            replicas = 1
        self._patch({"metadata": {"annotations": {STOPPED_KEY: None}}, "spec": {"replicas": replicas}})

    def observe(self):
        try:
            self.dep = self._get()
            pods = self._pods()
        except ServiceError as exc:
            return WAITING, exc.msg
        template = self._template()
        for pod in pods:
            if not pod_matches_template(pod, template):
                continue
            why = pod_failure(pod, self.restart_baseline)
            if why:
                self.failing_pod = (pod.get("metadata") or {}).get("name")
                return FAILED, why
        return rollout_status(self.dep)

    def revert(self):
        if self.before is None:
            return
        self.restart_baseline = {}
        self._patch([{"op": "replace", "path": "/spec/template", "value": self.before}],
                    "application/json-patch+json")
        self.before = None

    def commit(self):
        self.before = None

    def logs(self, lines):
        if not self.failing_pod:
            return []
        try:
            resp = self.core.read_namespaced_pod_log(self.failing_pod, self.namespace, container=self.container,
                                                     tail_lines=lines, _preload_content=False,
                                                     _request_timeout=self.timeout)
        except (api_exception(),) + unreachable_errors():
            return []  # logs are a courtesy of the failure report
        return ["%s: %s" % (self.failing_pod, line)
                for line in resp.data.decode("utf-8", "replace").splitlines()[-lines:]]


def _normal(template):
    return json.dumps(template, sort_keys=True)


__all__ = ["K8sDeployment", "api_error", "pod_matches_template", "template_images"]
