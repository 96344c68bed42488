# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The checks of the health engine: their types, measures, argument spec and validation.

    CHECK_TYPES                       the probe types
    CHECK_ARGSPEC                     argument spec of one element of ``checks`` (suboptions)
    MEASURES / PRIMARY_MEASURE        numeric measures per type, and the one O(warning)/O(critical) apply to
    APPLIES / REQUIRED / TYPE_DEFAULTS / INHERITED   which options a type takes, needs, defaults, inherits
    validate_checks(checks, defaults=None) -> list of normalised check dicts (ConfigError names the check)
    label_of(index, check)            how errors name a check
    run_options(concurrency, deadline) -> the two module-level options, checked (finite, bounded)
    ALIASES                           alias -> option (login_password, ...), resolved in raw check dicts

Names, labels and errors show URLs through probe.redact (no user information, no query values).
Running the checks is engine.py's job; this file only turns user input into check dicts.
"""

from __future__ import annotations

import copy
import math
from urllib.parse import urlsplit

from .._docker import DOCKER_ARGSPEC
from .._errors import ConfigError
from .._timeutil import MAX_TIMEOUT, Duration, int_option, seconds_option
from .._postgres.connection import PG_ARGSPEC
from .net import parse_condition
from .probe import redact
from .ranges import parse_range
from .textmatch import compile_patterns

# Choices and limits of the newer types' options (their probe files import them from here, so that
# validating checks does not import the probes of types a run does not use).
AGGREGATES = ("none", "sum", "min", "max", "avg", "count")        # metrics, prometheus
EMPTY_STATES = ("ok", "warning", "critical", "unknown")          # metrics, prometheus
STARTTLS = ("none", "smtp", "imap", "postgres")                   # tls
RESOURCE_MEASURES = ("memory_pct", "memory_bytes", "memory_limit_bytes", "cpu_pct")   # docker_container
MAX_EXCERPT = 50                                                  # logs
MAX_ATTEMPTS = 10000  # retries and consecutive: more is a typo, and the deadline ends them anyway
MAX_CONCURRENCY = 256

CHECK_TYPES = ("http", "tcp", "postgres", "redis", "docker_container", "k8s_deployment", "disk", "memory", "load",
               "metrics", "prometheus", "tls", "logs", "pod")
_SERIES_MEASURES = ("value", "series", "min", "max", "sum", "avg", "time_ms", "status_code")

# Numeric measures of each type; the first one is the primary measure (O(warning)/O(critical)).
MEASURES = {
    "http": ("time_ms", "dns_ms", "connect_ms", "tls_ms", "first_byte_ms", "status_code", "body_bytes", "cert_days",
             "p50_ms", "p95_ms", "p99_ms", "max_ms", "min_ms", "mean_ms", "error_ratio", "error_pct", "errors", "samples"),
    "tcp": ("time_ms", "dns_ms", "connect_ms"),
    "postgres": ("connections_pct", "connect_ms", "query_ms", "connections", "max_connections", "long_queries",
                 "replication_lag_seconds"),
    "redis": ("memory_pct", "connect_ms", "ping_ms", "used_memory_bytes", "maxmemory_bytes", "connected_clients"),
    "docker_container": ("restart_count", "running", "oom_killed", "exit_code") + RESOURCE_MEASURES + ("containers",),
    "logs": ("matches", "lines", "containers"),
    "pod": ("ready_pct", "pods", "ready_pods", "restarts", "max_restarts", "crashloop", "oom_killed", "memory_pct"),
    "k8s_deployment": ("available_pct", "desired_replicas", "updated_replicas", "ready_replicas",
                       "available_replicas", "unavailable_replicas", "generation", "observed_generation"),
    "disk": ("free_pct", "used_pct", "free_bytes", "total_bytes", "inodes_free_pct", "inodes_free"),
    "memory": ("used_pct", "available_bytes", "total_bytes", "swap_used_pct"),
    "load": ("load1_per_core", "load5_per_core", "load15_per_core", "load1", "load5", "load15", "cores"),
    "metrics": _SERIES_MEASURES,
    "prometheus": _SERIES_MEASURES,
    "tls": ("days_left", "leaf_days", "chain_certs", "verified", "hostname_ok", "tls_ms", "connect_ms", "dns_ms", "time_ms"),
}
SAMPLE_MEASURES = MEASURES["http"][8:]   # http with samples > 1 only
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
    headers=dict(type="dict", no_log=True),   # credentials travel in headers: never echoed
    body=dict(type="raw"),
    status_codes=dict(type="list", elements="int"),
    body_contains=dict(type="str"),
    json_conditions=dict(type="list", elements="str"),
    validate_certs=dict(type="bool"),
    samples=dict(type="int"),
    sample_interval=dict(type="float"),
    # metrics, prometheus (url, headers and the TLS options of http; user and password: basic auth)
    metric=dict(type="str"),
    labels=dict(type="dict"),
    quantile=dict(type="float"),
    query=dict(type="str"),
    aggregate=dict(type="str", choices=list(AGGREGATES)),
    empty=dict(type="str", choices=list(EMPTY_STATES)),
    bearer_token=dict(type="str", no_log=True),
    # tls (host and port; validate_certs, ca_path, client_cert, client_key of http)
    starttls=dict(type="str", choices=list(STARTTLS)),
    server_name=dict(type="str"),
    protocols=dict(type="list", elements="str"),
    # tcp (host and port also serve postgres and redis)
    send=dict(type="str"),
    expect=dict(type="str"),
    # postgres
    database=dict(type="str"),
    long_query_seconds=dict(type="float"),
    # docker_container, logs
    container=dict(type="str"),
    compose_service=dict(type="str"),
    compose_project=dict(type="str"),
    resources=dict(type="bool"),
    cpu_window=dict(type="float"),
    patterns=dict(type="list", elements="str"),
    mask=dict(type="list", elements="str"),
    ignore_case=dict(type="bool"),
    since=dict(type="raw"),
    tail=dict(type="int"),
    excerpt=dict(type="int"),
    # k8s_deployment
    namespace=dict(type="str"),
    deployment=dict(type="str"),
    selector=dict(type="str"),
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
_HTTP_CLIENT = ("url", "headers", "validate_certs", "ca_path", "client_cert", "client_key", "user", "password", "bearer_token")
_KUBE_OPTS = ("namespace", "deployment", "selector", "kubeconfig", "context", "in_cluster")
APPLIES = {
    "http": ("url", "method", "headers", "body", "status_codes", "body_contains", "json_conditions",
             "validate_certs", "ca_path", "client_cert", "client_key", "samples", "sample_interval"),
    "tcp": ("host", "port", "send", "expect"),
    "postgres": _PG_OPTS + ("database", "long_query_seconds"),
    "redis": ("host", "port", "user", "password"),
    "docker_container": ("container", "compose_service", "compose_project", "resources", "cpu_window") + _DOCKER_OPTS,
    "logs": ("container", "compose_service", "compose_project", "patterns", "mask", "ignore_case", "since", "tail",
             "excerpt") + _DOCKER_OPTS + _KUBE_OPTS,
    "k8s_deployment": ("namespace", "deployment", "kubeconfig", "context", "in_cluster"),
    "pod": _KUBE_OPTS,
    "disk": ("path",),
    "memory": (),
    "load": (),
    "metrics": _HTTP_CLIENT + ("metric", "labels", "quantile", "aggregate", "empty"),
    "prometheus": _HTTP_CLIENT + ("query", "aggregate", "empty"),
    "tls": ("host", "port", "starttls", "server_name", "protocols", "validate_certs", "ca_path", "client_cert", "client_key"),
}
REQUIRED = {"http": ("url",), "tcp": ("host", "port"),
            "k8s_deployment": ("deployment",), "metrics": ("url", "metric"), "prometheus": ("url", "query"),
            "tls": ("host", "port")}
TYPE_DEFAULTS = {
    "http": dict(method="GET", validate_certs=True, headers={}, json_conditions=[], samples=1, sample_interval=0.0),
    "redis": dict(host="127.0.0.1", port=6379),
    "postgres": dict(database="postgres", long_query_seconds=60.0),
    "k8s_deployment": dict(namespace="default", in_cluster=False),
    "pod": dict(namespace="default", in_cluster=False),
    "disk": dict(path="/"),
    "metrics": dict(validate_certs=True, headers={}, labels={}, aggregate="none", empty="unknown"),
    "prometheus": dict(validate_certs=True, headers={}, aggregate="none", empty="unknown"),
    "tls": dict(validate_certs=True, starttls="none"),
    "docker_container": dict(resources=False, cpu_window=1.0),
    "logs": dict(excerpt=5, ignore_case=False),
}
# Module-level connection options that fill in a check's unset ones.
INHERITED = {"postgres": _PG_OPTS + ("connect_timeout",), "docker_container": _DOCKER_OPTS, "logs": _DOCKER_OPTS}
_DEFAULTS = {key: spec.get("default") for key, spec in CHECK_ARGSPEC.items()}
_ALLOWED = {kind: frozenset(_COMMON + options) for kind, options in APPLIES.items()}
# alias -> option name, for raw check dicts (rollout's health_checks) that Ansible did not resolve
ALIASES = {alias: name for name, spec in CHECK_ARGSPEC.items() for alias in spec.get("aliases") or ()}
MAX_SAMPLES = 10000


# --------------------------------------------------------------------------- validation

def label_of(index, check):
    """How errors name check ``index``: its name and index, or the index alone."""
    name = check.get("name") if isinstance(check, dict) else None
    return "check %r (checks[%d])" % (redact(name), index) if name else "checks[%d]" % index


def _auto_name(check):
    kind = check["type"]
    if kind == "http":
        return "http %s" % redact(check["url"])
    if kind == "tls":
        return "tls %s:%s%s" % (check["host"], check["port"], "" if check["starttls"] == "none" else " " + check["starttls"])
    if kind in ("tcp", "redis"):
        return "%s %s:%s" % (kind, check["host"], check["port"])
    if kind == "postgres":
        return "postgres %s:%s/%s" % (check.get("host") or "local", check.get("port") or 5432, check["database"])
    if kind == "logs" and (check.get("deployment") or check.get("selector")):
        return "logs pods %s/%s%s" % (check["namespace"] or "default", check["deployment"] or check["selector"],
                                      " " + check["container"] if check.get("container") else "")
    if kind in ("docker_container", "logs"):
        return "%s %s" % (kind, check["container"] or "compose %s%s" % (
            check["compose_project"] + "/" if check.get("compose_project") else "", check["compose_service"]))
    if kind == "k8s_deployment":
        return "k8s_deployment %s/%s" % (check["namespace"], check["deployment"])
    if kind == "pod":
        return "pod %s/%s" % (check["namespace"], check["deployment"] or check["selector"])
    if kind == "disk":
        return "disk %s" % check["path"]
    if kind == "metrics":
        return "metrics %s %s%s" % (redact(check["url"]), check["metric"], "".join(
            ' %s="%s"' % item for item in sorted((check.get("labels") or {}).items())))
    if kind == "prometheus":
        return "prometheus %s" % check["query"]
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
    label = label_of(index, raw)
    raw = _resolve_aliases(label, raw)
    unknown = sorted(set(raw) - set(CHECK_ARGSPEC))
    if unknown:
        raise ConfigError("%s: unsupported option(s) %s" % (label, ", ".join(unknown)))
    kind = raw.get("type")
    if kind not in CHECK_TYPES:
        raise ConfigError("%s: %s (expected one of %s)" % (
            label, "missing type" if kind is None else "unknown type %r" % (kind,), ", ".join(CHECK_TYPES)))
    check = dict(_DEFAULTS)
    check.update(raw)
    wrong = sorted(k for k, v in raw.items() if k not in _ALLOWED[kind] and v is not None and v != [] and v != {})
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
    if kind in ("http", "metrics", "prometheus"):
        _validate_url(label, check)
    if kind == "http":
        _validate_http(label, check)
    if kind in ("metrics", "prometheus"):
        _validate_series(label, check)
    if kind in ("docker_container", "logs"):
        _validate_containers(label, check)
    if kind == "pod" and bool(check.get("deployment")) == bool(check.get("selector")):
        raise ConfigError("%s: type pod requires deployment or selector (one of them)" % label)
    if kind == "tls" and check["starttls"] not in STARTTLS:
        raise ConfigError("%s: starttls must be one of %s, got %r" % (label, ", ".join(STARTTLS), check["starttls"]))
    if kind == "postgres":
        check["long_query_seconds"] = _number(label, check, "long_query_seconds", 0)
    check["_ranges"] = _thresholds(label, check)
    check["_resources"] = bool(check.get("resources")) or any(m in check["_ranges"] for m in RESOURCE_MEASURES)
    if kind == "http" and check["samples"] == 1:
        needs = sorted(set(check["_ranges"]) & set(SAMPLE_MEASURES))
        if needs:
            raise ConfigError("%s: thresholds on %s need samples > 1" % (label, ", ".join(needs)))
    check["_auto_name"] = not check.get("name")
    check["name"] = redact(check.get("name")) or _auto_name(check)
    check["_label"] = label
    return check


def _resolve_aliases(label, raw):
    """``raw`` with alias keys (login_password, login_host, login_user) under their option names.

    Ansible's suboption handling keeps the alias key beside the resolved one, so both may be there
    with the same value; two different values are an error."""
    if not any(alias in raw for alias in ALIASES):
        return raw
    out = dict(raw)
    for alias, name in ALIASES.items():
        if alias not in out:
            continue
        value = out.pop(alias)
        if out.get(name) is not None and value is not None and out[name] != value:
            raise ConfigError("%s: %s and its alias %s are both set, to different values" % (label, name, alias))
        if out.get(name) is None:
            out[name] = value
    return out


def _validate_url(label, check):
    try:
        parts = urlsplit(check["url"])
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise ConfigError("%s: url has an invalid port or host: %r" % (label, redact(check["url"]))) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError("%s: url must be http:// or https:// with a host, got %r" % (label, redact(check["url"])))
    if check.get("client_key") and not check.get("client_cert"):
        raise ConfigError("%s: client_key needs client_cert" % label)


def _validate_containers(label, check):
    pods = check["type"] == "logs" and (check.get("deployment") or check.get("selector"))
    if pods:   # a Deployment's or a selector's pods; ``container`` then names a container in them
        if check.get("deployment") and check.get("selector"):
            raise ConfigError("%s: type logs takes deployment or selector, not both" % label)
        if check.get("compose_service") or check.get("compose_project"):
            raise ConfigError("%s: type logs reads a compose service or Kubernetes pods (deployment, selector), not both" % label)
        check["namespace"] = check.get("namespace") or "default"
    elif check["type"] == "logs" and any(check.get(k) not in (None, False) for k in ("namespace", "kubeconfig", "context", "in_cluster")):
        raise ConfigError("%s: namespace, kubeconfig, context and in_cluster apply to the logs of pods (deployment or selector)" % label)
    elif bool(check.get("container")) == bool(check.get("compose_service")):
        raise ConfigError("%s: type %s requires container or compose_service (one of them)%s" % (
            label, check["type"], ", or deployment or selector (pods)" if check["type"] == "logs" else ""))
    if check["type"] == "docker_container":
        check["cpu_window"] = _number(label, check, "cpu_window", 0, maximum=60)
        return
    check["_patterns"] = compile_patterns(label, check)
    if check.get("since") not in (None, ""):
        try:
            Duration.parse(check["since"], "since")
        except ConfigError as exc:
            raise ConfigError("%s: %s" % (label, exc.msg)) from None
    if check.get("tail") is not None:
        check["tail"] = _number(label, check, "tail", 1, integer=True, maximum=10 ** 7)
    check["excerpt"] = _number(label, check, "excerpt", 0, integer=True, maximum=MAX_EXCERPT)


def _validate_series(label, check):
    for key, choices in (("aggregate", AGGREGATES), ("empty", EMPTY_STATES)):
        if check.get(key) not in choices:
            raise ConfigError("%s: %s must be one of %s, got %r" % (label, key, ", ".join(choices), check.get(key)))
    if check.get("quantile") is not None:
        check["quantile"] = _number(label, check, "quantile", 0, maximum=1)
    labels = check.get("labels") or {}
    if not isinstance(labels, dict) or any(isinstance(v, (dict, list)) for v in labels.values()):
        raise ConfigError("%s: labels must be a mapping of label name to value" % label)


def _validate_http(label, check):
    check["samples"] = _number(label, check, "samples", 1, integer=True, maximum=MAX_SAMPLES)
    check["sample_interval"] = _number(label, check, "sample_interval", 0)
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
