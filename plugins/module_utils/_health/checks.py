# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks of the health engine: their types, measures, argument spec and validation.

    CHECK_TYPES                       the probe types
    CHECK_ARGSPEC                     argument spec of one element of ``checks`` (suboptions)
    MEASURES / PRIMARY_MEASURE        numeric measures per type, and the one O(warning)/O(critical) apply to
    APPLIES / REQUIRED / TYPE_DEFAULTS / INHERITED   which options a type takes, needs, defaults, inherits
    validate_checks(checks, defaults=None) -> list of normalised check dicts (ConfigError names the check)
    run_options(concurrency, deadline) -> the two module-level options, checked (finite, bounded)

Running the checks is engine.py's job; this file only turns user input into check dicts.
"""

from __future__ import annotations

import copy
import math
from urllib.parse import urlsplit

from .._docker import DOCKER_ARGSPEC
from .._errors import ConfigError
from .._timeutil import MAX_TIMEOUT, int_option, seconds_option
from .._postgres.connection import PG_ARGSPEC
from .net import parse_condition
from .ranges import parse_range

MAX_ATTEMPTS = 10000  # retries and consecutive: more is a typo, and the deadline ends them anyway
MAX_CONCURRENCY = 256

CHECK_TYPES = ("http", "tcp", "postgres", "redis", "docker_container", "k8s_deployment", "disk", "memory", "load")

# Numeric measures of each type; the first one is the primary measure (O(warning)/O(critical)).
MEASURES = {
    "http": ("time_ms", "dns_ms", "connect_ms", "tls_ms", "first_byte_ms", "status_code", "body_bytes", "cert_days"),
    "tcp": ("time_ms", "dns_ms", "connect_ms"),
    "postgres": ("connections_pct", "connect_ms", "query_ms", "connections", "max_connections", "long_queries",
                 "replication_lag_seconds"),
    "redis": ("memory_pct", "connect_ms", "ping_ms", "used_memory_bytes", "maxmemory_bytes", "connected_clients"),
    "docker_container": ("restart_count", "running", "oom_killed", "exit_code"),
    "k8s_deployment": ("available_pct", "desired_replicas", "updated_replicas", "ready_replicas",
                       "available_replicas", "unavailable_replicas", "generation", "observed_generation"),
    "disk": ("free_pct", "used_pct", "free_bytes", "total_bytes", "inodes_free_pct", "inodes_free"),
    "memory": ("used_pct", "available_bytes", "total_bytes", "swap_used_pct"),
    "load": ("load1_per_core", "load5_per_core", "load15_per_core", "load1", "load5", "load15", "cores"),
}
PRIMARY_MEASURE = {kind: measures[0] for kind, measures in MEASURES.items()}


def _per_check(spec, drop=()):
    """Connection options as check suboptions: no defaults/fallbacks, so None means "inherit"."""
    out = {}
    for name, opt in spec.items():
        if name not in drop:
            out[name] = {k: v for k, v in copy.deepcopy(opt).items() if k not in ("default", "fallback")}
    return out


CHECK_ARGSPEC = dict(
    name=dict(type="str"),
    type=dict(type="str"),
    timeout=dict(type="float", default=10.0),
    retries=dict(type="int", default=0),
    interval=dict(type="float", default=1.0),
    consecutive=dict(type="int", default=1),
    warning=dict(type="raw"),
    critical=dict(type="raw"),
    thresholds=dict(type="dict"),
    # http
    url=dict(type="str"),
    method=dict(type="str"),
    headers=dict(type="dict"),
    body=dict(type="raw"),
    status_codes=dict(type="list", elements="int"),
    body_contains=dict(type="str"),
    json_conditions=dict(type="list", elements="str"),
    validate_certs=dict(type="bool"),
    # tcp (host and port also serve postgres and redis)
    send=dict(type="str"),
    expect=dict(type="str"),
    # postgres
    database=dict(type="str"),
    long_query_seconds=dict(type="float"),
    # docker_container
    container=dict(type="str"),
    # k8s_deployment
    namespace=dict(type="str"),
    deployment=dict(type="str"),
    kubeconfig=dict(type="path"),
    context=dict(type="str"),
    in_cluster=dict(type="bool"),
    # disk
    path=dict(type="path"),
)
CHECK_ARGSPEC.update(_per_check(PG_ARGSPEC, drop=("connect_timeout",)))
CHECK_ARGSPEC.update(_per_check(DOCKER_ARGSPEC))  # ca_path/client_cert/client_key also serve http

_COMMON = ("name", "type", "timeout", "retries", "interval", "consecutive", "warning", "critical", "thresholds")
_PG_OPTS = tuple(n for n in PG_ARGSPEC if n != "connect_timeout")
_DOCKER_OPTS = tuple(DOCKER_ARGSPEC)
APPLIES = {
    "http": ("url", "method", "headers", "body", "status_codes", "body_contains", "json_conditions",
             "validate_certs", "ca_path", "client_cert", "client_key"),
    "tcp": ("host", "port", "send", "expect"),
    "postgres": _PG_OPTS + ("database", "long_query_seconds"),
    "redis": ("host", "port", "user", "password"),
    "docker_container": ("container",) + _DOCKER_OPTS,
    "k8s_deployment": ("namespace", "deployment", "kubeconfig", "context", "in_cluster"),
    "disk": ("path",),
    "memory": (),
    "load": (),
}
REQUIRED = {"http": ("url",), "tcp": ("host", "port"), "docker_container": ("container",),
            "k8s_deployment": ("deployment",)}
TYPE_DEFAULTS = {
    "http": dict(method="GET", validate_certs=True, headers={}, json_conditions=[]),
    "redis": dict(host="127.0.0.1", port=6379),
    "postgres": dict(database="postgres", long_query_seconds=60.0),
    "k8s_deployment": dict(namespace="default", in_cluster=False),
    "disk": dict(path="/"),
}
# Module-level connection options that fill in a check's unset ones.
INHERITED = {"postgres": _PG_OPTS + ("connect_timeout",), "docker_container": _DOCKER_OPTS}


# --------------------------------------------------------------------------- validation

def _label(index, check):
    name = check.get("name") if isinstance(check, dict) else None
    return "check %r (checks[%d])" % (name, index) if name else "checks[%d]" % index


def _auto_name(check):
    kind = check["type"]
    if kind == "http":
        return "http %s" % check["url"]
    if kind in ("tcp", "redis"):
        return "%s %s:%s" % (kind, check["host"], check["port"])
    if kind == "postgres":
        return "postgres %s:%s/%s" % (check.get("host") or "local", check.get("port") or 5432, check["database"])
    if kind == "docker_container":
        return "docker_container %s" % check["container"]
    if kind == "k8s_deployment":
        return "k8s_deployment %s/%s" % (check["namespace"], check["deployment"])
    if kind == "disk":
        return "disk %s" % check["path"]
    return kind


def _number(label, check, key, minimum, integer=False, maximum=MAX_TIMEOUT):
    """A finite number in [minimum, maximum] (NaN, inf, 1e400 and text refused in one line)."""
    value = check.get(key)
    try:
        number = float(value) if not isinstance(value, bool) else None
        ok = number is not None and math.isfinite(number) and minimum <= number <= maximum
        ok = ok and (not integer or number == int(number))
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError("%s: %s must be %s >= %s and <= %s, got %r"
                          % (label, key, "an integer" if integer else "a number", minimum, maximum, value))
    return int(number) if integer else number


def _thresholds(label, check):
    kind, out = check["type"], {}
    raw = check.get("thresholds") or {}
    if not isinstance(raw, dict):
        raise ConfigError("%s: thresholds must be a mapping of measure name to {warning, critical}" % label)
    primary = PRIMARY_MEASURE[kind]
    if (check.get("warning") is not None or check.get("critical") is not None) and primary in raw:
        raise ConfigError("%s: set either warning/critical or thresholds.%s, not both" % (label, primary))
    if check.get("warning") is not None or check.get("critical") is not None:
        raw = dict(raw, **{primary: {"warning": check.get("warning"), "critical": check.get("critical")}})
    for measure, levels in raw.items():
        if measure not in MEASURES[kind]:
            raise ConfigError("%s: unknown measure %r for type %s in thresholds (known: %s)"
                              % (label, measure, kind, ", ".join(MEASURES[kind])))
        if not isinstance(levels, dict) or set(levels) - {"warning", "critical"}:
            raise ConfigError("%s: thresholds.%s must be a mapping with warning and/or critical" % (label, measure))
        ranges = tuple(
            None if levels.get(level) is None else
            parse_range(levels[level], "%s: %s %s" % (label, measure, level)) for level in ("warning", "critical"))
        if ranges != (None, None):
            out[measure] = ranges
    return out


def _validate_one(index, raw, defaults):
    if not isinstance(raw, dict):
        raise ConfigError("checks[%d]: each check must be a mapping, got %s" % (index, type(raw).__name__))
    label = _label(index, raw)
    unknown = sorted(set(raw) - set(CHECK_ARGSPEC))
    if unknown:
        raise ConfigError("%s: unsupported option(s) %s" % (label, ", ".join(unknown)))
    kind = raw.get("type")
    if kind not in CHECK_TYPES:
        raise ConfigError("%s: %s (expected one of %s)" % (
            label, "missing type" if kind is None else "unknown type %r" % (kind,), ", ".join(CHECK_TYPES)))
    check = {key: raw.get(key, spec.get("default")) for key, spec in CHECK_ARGSPEC.items()}
    wrong = sorted(k for k in CHECK_ARGSPEC if k not in _COMMON and k not in APPLIES[kind]
                   and raw.get(k) not in (None, [], {}))
    if wrong:
        raise ConfigError("%s: option(s) %s do not apply to type %s" % (label, ", ".join(wrong), kind))
    for key, value in TYPE_DEFAULTS.get(kind, {}).items():
        if check.get(key) is None:
            check[key] = copy.deepcopy(value)
    for key in INHERITED.get(kind, ()):
        if check.get(key) is None and defaults and defaults.get(key) is not None:
            check[key] = defaults[key]
    missing = [key for key in REQUIRED.get(kind, ()) if check.get(key) in (None, "")]
    if missing:
        raise ConfigError("%s: type %s requires %s" % (label, kind, " and ".join(missing)))
    check["timeout"] = _number(label, check, "timeout", 0.001)
    check["interval"] = _number(label, check, "interval", 0)
    check["retries"] = _number(label, check, "retries", 0, integer=True, maximum=MAX_ATTEMPTS)
    check["consecutive"] = _number(label, check, "consecutive", 1, integer=True, maximum=MAX_ATTEMPTS)
    if check.get("port") is not None:
        check["port"] = _number(label, check, "port", 1, integer=True)
        if check["port"] > 65535:
            raise ConfigError("%s: port must be 1..65535, got %s" % (label, check["port"]))
    if kind == "http":
        _validate_http(label, check)
    if kind == "postgres":
        check["long_query_seconds"] = _number(label, check, "long_query_seconds", 0)
    check["_ranges"] = _thresholds(label, check)
    check["_auto_name"] = not check.get("name")
    check["name"] = check.get("name") or _auto_name(check)
    check["_label"] = label
    return check


def _validate_http(label, check):
    parts = urlsplit(check["url"])
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("%s: url must be http:// or https:// with a host, got %r" % (label, check["url"]))
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError as exc:
        raise ConfigError("%s: url has an invalid port: %r" % (label, check["url"])) from exc
    check["method"] = str(check["method"]).upper()
    codes = []
    for code in check.get("status_codes") or ():
        if isinstance(code, str) and code.strip().isdigit():
            code = int(code)  # raw dicts (rollout's health_checks) may carry templated strings
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ConfigError("%s: status_codes must be HTTP status codes (100-599), got %r" % (label, code))
        codes.append(code)
    check["status_codes"] = codes or None
    check["_conditions"] = [parse_condition(text, "%s: json_conditions[%d]" % (label, i))
                            for i, text in enumerate(check.get("json_conditions") or ())]
    if check.get("client_key") and not check.get("client_cert"):
        raise ConfigError("%s: client_key needs client_cert" % label)


def run_options(concurrency, deadline):
    """``concurrency`` 1..MAX_CONCURRENCY and ``deadline`` > 0 s and <= MAX_TIMEOUT (None: no deadline)."""
    concurrency = int_option(concurrency, "concurrency", 1, MAX_CONCURRENCY)
    if deadline is not None:
        deadline = seconds_option(deadline, "deadline", 0.0, MAX_TIMEOUT, exclusive=True)
    return concurrency, deadline


def validate_checks(checks, defaults=None):
    """Normalise and validate ``checks``; raise ConfigError naming the first bad check.

    ``defaults`` holds module-level connection options (PostgreSQL, Docker) that fill in the
    unset ones of postgres and docker_container checks.
    """
    if checks is None or not isinstance(checks, (list, tuple)):
        raise ConfigError("checks must be a list of checks")
    if not checks:
        raise ConfigError("checks is empty: give at least one check")
    out, seen = [], {}
    for index, raw in enumerate(checks):
        if isinstance(raw, dict) and raw.get("_validated"):
            check = raw
        else:
            check = _validate_one(index, raw, defaults)
            check["_validated"] = True
        name = check["name"]
        if name in seen:
            if not check["_auto_name"]:
                raise ConfigError("%s: duplicate check name %r (also checks[%d])" % (check["_label"], name, seen[name]))
            suffix = 2
            while "%s #%d" % (name, suffix) in seen:
                suffix += 1
            check = dict(check, name="%s #%d" % (name, suffix))
        seen[check["name"]] = index
        out.append(check)
    return out
