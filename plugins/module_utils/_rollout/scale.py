# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's state=scaled: a Compose service or a Deployment to ``replicas``, behind the gate.

Compose (``scale_compose``): new containers are copies of the highest-numbered one (every setting,
its image, the next container numbers, Compose's names), started and gated one after the other;
the first that fails is removed with every copy this run made (what ran before never stopped).
Scaling down stops and removes the highest-numbered containers. A service whose container holds
a host port cannot run twice: scaling it up is refused before anything changes.
Kubernetes (``scale_deployment``): spec.replicas patched, gated by the rollout-status rules,
and patched back when the gate fails.
"""

from __future__ import annotations

import copy
import re

from .._docker import DOCKER, docker_error
from .._errors import ConfigError
from .docker import COMPOSE_NUMBER, DockerContainer, _failures, start_first_blocker


def _copy_spec(unit, number):
    """The create request of container ``number`` of the service, from the highest-numbered one."""
    # the driver's own re-creation spec
    spec = unit._own_spec()     # pylint: disable=protected-access
    body = spec["body"]
    body.setdefault("Labels", {})[COMPOSE_NUMBER] = str(number)
    match = re.match(r"^(?P<base>.*?)(?P<num>[0-9]+)$", unit.name)
    name = "%s%d" % (match.group("base"), number) if match else "%s-%d" % (unit.name, number)
    nets = body.get("NetworkingConfig", {}).get("EndpointsConfig", {})
    for ep in list(nets.values()) + spec.get("networks", []):
        key = "Aliases" if "Aliases" in ep else "aliases"
        if ep.get(key):
            ep[key] = [a for a in ep[key] if a != unit.name]
    return name, spec


def plan_compose(units, replicas):
    """(containers to add as numbers, units to remove); ConfigError when it cannot be done."""
    if replicas < 0:
        raise ConfigError("replicas must be >= 0, got %r" % replicas)
    have = len(units)
    if replicas > have:
        why = start_first_blocker(units[-1].inspect)
        if why and have:
            raise ConfigError("%s cannot run more than once: %s" % (units[-1].label(), why))
        last = max(int((u.inspect.get("Config", {}).get("Labels") or {}).get(COMPOSE_NUMBER) or 0) for u in units)
        return list(range(last + 1, last + 1 + replicas - have)), []
    return [], units[replicas:]


def scale_compose(client, units, replicas, gate_unit, check_mode=False):
    """Scale the Compose service of ``units`` (DockerContainer, in number order); returns the result.

    ``gate_unit(unit)`` -> GateResult of a new container. A new container that fails is removed,
    and so is every copy made before it; the result then says rolled_back.
    """
    add, remove = plan_compose(units, replicas)
    result = {"changed": bool(add or remove), "outcome": "scaled" if add or remove else "unchanged",
              "replicas": {"from": len(units), "to": replicas}, "logs": [],
              "reason": "%s: %d -> %d container(s)" % (units[0].label() if units else "service", len(units), replicas)}
    if check_mode or not result["changed"]:
        return result
    made = []
    for number in add:
        name, spec = _copy_spec(units[-1], number)
        created = units[-1]._call(client.create_container_from_config, "creating %s" % name,  # pylint: disable=protected-access
                                  copy.deepcopy(spec["body"]), name=name)["Id"]
        made.append(created)
        unit = DockerContainer(client, created, kind="compose_service", repaired=[])
        unit._connect(created, spec.get("networks"))  # pylint: disable=protected-access
        unit.start()
        res = gate_unit(unit)
        if not res.ok:
            result["logs"] = unit.logs(20)
            _remove_all(client, made)
            result.update(outcome="rolled_back", reason="container %s: %s; removed the %d new container(s), the "
                          "service runs %d as before" % (name, res.reason, len(made), len(units)))
            return result
    for unit in reversed(remove):
        unit.stop()
        _remove_all(client, [unit.watch])
    return result


def _remove_all(client, containers):
    for cid in containers:
        try:
            client.remove_container(cid, v=False, force=True)
        except DOCKER.load().errors.NotFound:
            pass
        except _failures() as exc:
            raise docker_error(exc, "removing container %s" % cid[:12]) from exc


def scale_deployment(unit, replicas, gate_unit, check_mode=False):
    """Patch a Deployment's replicas; gate it; patch back when the gate fails."""
    if replicas < 0:
        raise ConfigError("replicas must be >= 0, got %r" % replicas)
    before = int((unit.dep.get("spec") or {}).get("replicas") or 0)
    result = {"changed": before != replicas, "outcome": "scaled" if before != replicas else "unchanged",
              "replicas": {"from": before, "to": replicas}, "logs": [],
              "reason": "%s: %d -> %d replica(s)" % (unit.label(), before, replicas)}
    if check_mode or before == replicas:
        return result
    unit.set_replicas(replicas)
    res = gate_unit(unit)
    if not res.ok:
        result["logs"] = unit.logs(20)
        unit.set_replicas(before)
        result.update(outcome="rolled_back", reason="%s: %s; back to %d replica(s)" % (unit.label(), res.reason, before))
    return result
