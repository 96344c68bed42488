# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of the health engine: validation, JSON conditions, rollout rules, the scheduler.

Probes are replaced by scripted fakes only where the scheduler itself is under test; the real
probes are exercised against real services in tests/integration/test_health_check.py.
"""

from __future__ import annotations

import datetime
import threading
import time

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._health import checks as _checks
from ansible_collections.opskit.runbook.plugins.module_utils._health import engine as _health
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, ServiceError
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import (
    CHECK_ARGSPEC, CHECK_TYPES, MEASURES, validate_checks)
from ansible_collections.opskit.runbook.plugins.module_utils._health.engine import run_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.probe import Observation, ProbeFailed
from ansible_collections.opskit.runbook.plugins.module_utils._health.ranges import (
    CRITICAL, OK, UNKNOWN, WARNING, failing)
from ansible_collections.opskit.runbook.plugins.module_utils._health.net import (
    cert_days_left, cert_not_after, evaluate_condition, parse_condition, parse_info, parse_path)
from ansible_collections.opskit.runbook.plugins.module_utils._health.services import (
    deployment_status, judge_container, judge_deployment, read_meminfo)


# --------------------------------------------------------------------------- validation

@pytest.mark.parametrize("concurrency, deadline, message", [
    (0, 10, "concurrency must be an integer from 1 to 256, got 0"),
    (100000, 10, "concurrency must be an integer from 1 to 256, got 100000"),
    (4, float("nan"), "deadline must be a number of seconds > 0 and <= 604800, got nan"),
    (4, float("inf"), "deadline must be a number of seconds > 0 and <= 604800, got inf"),
    (4, 0, "deadline must be a number of seconds > 0"),
    (4, -1, "deadline must be a number of seconds > 0"),
    (4, 1e12, "deadline must be a number of seconds > 0 and <= 604800"),
])
def test_run_options_rejects(concurrency, deadline, message):
    with pytest.raises(ConfigError) as err:
        _checks.run_options(concurrency, deadline)
    assert str(err.value) == message or str(err.value).startswith(message)


def test_run_options_accepts():
    assert _checks.run_options(32, 120.0) == (32, 120.0)
    assert _checks.run_options(1, None) == (1, None)


@pytest.mark.parametrize("checks, message", [
    ([{"type": "htp", "name": "api"}], "check 'api' (checks[0]): unknown type 'htp' (expected one of http, tcp"),
    ([{"name": "api"}], "check 'api' (checks[0]): missing type"),
    ([{"type": "disk"}, {"type": "http", "name": "web"}], "check 'web' (checks[1]): type http requires url"),
    ([{"type": "tcp", "host": "h"}], "checks[0]: type tcp requires port"),
    ([{"type": "docker_container"}], "checks[0]: type docker_container requires container"),
    ([{"type": "k8s_deployment", "name": "k"}], "check 'k' (checks[0]): type k8s_deployment requires deployment"),
    ([{"type": "http", "name": "a", "url": "http://x", "warning": "10:5"}],
     "check 'a' (checks[0]): time_ms warning: range '10:5' has start 10 greater than end 5"),
    ([{"type": "disk", "name": "d", "critical": "ten"}], "check 'd' (checks[0]): free_pct critical: cannot parse range 'ten'"),
    ([{"type": "disk", "name": "d", "thresholds": {"free": {"warning": 1}}}],
     "check 'd' (checks[0]): unknown measure 'free' for type disk"),
    ([{"type": "disk", "name": "d", "thresholds": {"free_pct": {"warn": 1}}}],
     "check 'd' (checks[0]): thresholds.free_pct must be a mapping with warning and/or critical"),
    ([{"type": "disk", "name": "d", "warning": 1, "thresholds": {"free_pct": {"warning": 1}}}],
     "set either warning/critical or thresholds.free_pct, not both"),
    ([{"type": "http", "name": "h", "url": "http://x", "host": "y"}],
     "check 'h' (checks[0]): option(s) host do not apply to type http"),
    ([{"type": "memory", "name": "m", "path": "/"}], "option(s) path do not apply to type memory"),
    ([{"type": "http", "name": "h", "url": "ftp://x"}], "url must be http:// or https:// with a host"),
    ([{"type": "http", "name": "h", "url": "http://x:99999/"}], "url has an invalid port"),
    ([{"type": "http", "name": "h", "url": "http://x", "status_codes": [700]}], "status_codes must be HTTP status codes"),
    ([{"type": "http", "name": "h", "url": "http://x", "json_conditions": ["status = 'UP'"]}],
     "check 'h' (checks[0]): json_conditions[0]: cannot parse condition"),
    ([{"type": "http", "name": "h", "url": "http://x", "json_conditions": ["status == UP"]}],
     "json_conditions[0]: the value in 'status == UP' is not JSON"),
    ([{"type": "http", "name": "h", "url": "http://x", "json_conditions": ["n < \"5\""]}],
     "< needs a number on the right"),
    ([{"type": "tcp", "name": "t", "host": "h", "port": 70000}], "port must be 1..65535"),
    ([{"type": "tcp", "name": "t", "host": "h", "port": 1, "timeout": 0}], "timeout must be a number >= 0.001"),
    ([{"type": "disk", "name": "d", "consecutive": 0}], "consecutive must be an integer >= 1"),
    ([{"type": "disk", "name": "d", "retries": -1}], "retries must be an integer >= 0"),
    ([{"type": "disk", "name": "d", "timeout": float("nan")}], "check 'd' (checks[0]): timeout must be a number >= 0.001 and <= 604800, got nan"),
    ([{"type": "disk", "name": "d", "timeout": float("inf")}], "timeout must be a number >= 0.001 and <= 604800, got inf"),
    ([{"type": "disk", "name": "d", "timeout": 1e9}], "timeout must be a number >= 0.001 and <= 604800"),
    ([{"type": "disk", "name": "d", "interval": float("nan")}], "interval must be a number >= 0 and <= 604800, got nan"),
    ([{"type": "disk", "name": "d", "interval": "1x"}], "interval must be a number >= 0 and <= 604800, got '1x'"),
    ([{"type": "disk", "name": "d", "retries": float("inf")}], "retries must be an integer >= 0 and <= 10000, got inf"),
    ([{"type": "disk", "name": "d", "retries": 10 ** 400}], "retries must be an integer >= 0 and <= 10000"),
    ([{"type": "disk", "name": "d", "consecutive": 1e300}], "consecutive must be an integer >= 1 and <= 10000"),
    ([{"type": "postgres", "name": "p", "database": "x", "long_query_seconds": float("nan")}],
     "long_query_seconds must be a number >= 0"),
    ([{"type": "disk", "name": "d", "bogus": 1}], "check 'd' (checks[0]): unsupported option(s) bogus"),
    ([{"type": "disk", "name": "d"}, {"type": "memory", "name": "d"}], "check 'd' (checks[1]): duplicate check name 'd'"),
    (["disk"], "checks[0]: each check must be a mapping"),
    ([], "checks is empty"),
    ("disk", "checks must be a list"),
])
def test_bad_checks_name_the_check(checks, message):
    with pytest.raises(ConfigError) as err:
        validate_checks(checks)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_fills_defaults_inherits_connection_options_and_names():
    checks = validate_checks(
        [{"type": "redis"}, {"type": "postgres", "port": 6000},
         {"type": "docker_container", "container": "web"}, {"type": "disk"}, {"type": "disk"},
         {"type": "http", "url": "http://a/h", "warning": 200, "critical": "1000"}],
        defaults={"host": "db1", "port": 5433, "password": "s3cret", "docker_host": "tcp://d:2375", "tls": False})
    redis, pg, dock, disk1, disk2, http = checks
    assert (redis["host"], redis["port"], redis["name"]) == ("127.0.0.1", 6379, "redis 127.0.0.1:6379")
    assert (pg["host"], pg["port"], pg["password"], pg["database"]) == ("db1", 6000, "s3cret", "postgres")
    assert pg["name"] == "postgres db1:6000/postgres"
    assert redis.get("password") is None        # module-level PostgreSQL options do not leak into redis
    assert dock["docker_host"] == "tcp://d:2375"
    assert (disk1["name"], disk2["name"]) == ("disk /", "disk / #2")
    assert http["method"] == "GET" and http["validate_certs"] is True
    warn, crit = http["_ranges"]["time_ms"]
    assert (warn.end, crit.end) == (200, 1000)
    assert validate_checks(checks) == checks    # already validated checks pass through


def test_every_type_has_measures_and_argspec_is_consistent():
    assert set(MEASURES) == set(CHECK_TYPES)
    for name, spec in CHECK_ARGSPEC.items():
        assert "required" not in spec, name          # requirements are checked per type, naming the check
        if "password" in name:
            assert spec.get("no_log") is True
    assert all(opt in CHECK_ARGSPEC for opts in _checks.APPLIES.values() for opt in opts)


@pytest.mark.parametrize("status, fail_on, fails", [
    (OK, "critical", False), (WARNING, "critical", False), (UNKNOWN, "critical", True), (CRITICAL, "critical", True),
    (OK, "warning", False), (WARNING, "warning", True), (UNKNOWN, "warning", True),
    (CRITICAL, "never", False),
])
def test_failing(status, fail_on, fails):
    assert failing(status, fail_on) is fails


# --------------------------------------------------------------------------- JSON conditions

DOC = {"status": "UP", "checks": {"db": {"status": "ok", "latency": "12.5"}}, "count": 3, "ok": True,
       "items": [{"name": "a", "lag": 1}, {"name": "b", "lag": 9}], "none": None, "text": "abc", "code": 200}


@pytest.mark.parametrize("condition, passed, text", [
    ('status == "UP"', True, 'status ("UP") == "UP"'),
    ('status != "UP"', False, 'status ("UP") != "UP"'),
    ('checks.db.status == "ok"', True, 'checks.db.status ("ok") == "ok"'),
    ('checks.db.latency < 20', True, 'checks.db.latency ("12.5") < 20'),      # numeric string is a number
    ('checks.db.latency >= 13', False, None),
    ('count == 3', True, "count (3) == 3"),
    ('count > 3', False, "count (3) > 3"),
    ('count <= 3.0', True, None),
    ('items[1].lag > 5', True, "items[1].lag (9) > 5"),
    ('items.0.name == "a"', True, None),
    ('$.items[0].lag == 1', True, None),
    ('ok == true', True, "ok (true) == true"),
    ('ok != false', True, None),
    ('none == null', True, None),
    ('code == "200"', True, None),                  # a string compares with the JSON form of the value
    ('code == 503', False, "code (200) == 503"),
    ('text > 1', None, 'text ("abc") > 1: "abc" is not a number'),   # never silently 0 (the Gatus pitfall)
    ('ok == 1', None, None),                                         # a boolean is not a number
    ('missing.key == "x"', None, 'missing.key (missing) == "x"'),
    ('items[5].lag < 1', None, None),
])
def test_conditions(condition, passed, text):
    ok, shown = evaluate_condition(parse_condition(condition), DOC)
    assert ok is passed
    if text:
        assert shown == text


@pytest.mark.parametrize("path, keys", [
    ("status", ["status"]), ("a.b.c", ["a", "b", "c"]), ("items[0].name", ["items", 0, "name"]),
    ("m[1][2]", ["m", 1, 2]), ("$", []), ("$.a", ["a"]),
])
def test_parse_path(path, keys):
    assert parse_path(path) == keys


# --------------------------------------------------------------------------- kubectl rollout status

def _dep(generation=2, observed=2, replicas=3, updated=3, total=3, available=3, conditions=()):
    return {"metadata": {"name": "web", "generation": generation},
            "spec": {"replicas": replicas},
            "status": {"observedGeneration": observed, "updatedReplicas": updated, "replicas": total,
                       "availableReplicas": available, "conditions": list(conditions)}}


DEADLINE = {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
            "message": 'ReplicaSet "web-5d" has timed out progressing.'}


@pytest.mark.parametrize("dep, state, fragment", [
    (_dep(), "success", "successfully rolled out (3 of 3 available)"),
    (_dep(generation=3, observed=2), "waiting", "spec update to be observed (generation 3, observed 2)"),
    # rule order: an unobserved generation wins over a stale ProgressDeadlineExceeded
    (_dep(generation=3, observed=2, conditions=[DEADLINE]), "waiting", "spec update"),
    (_dep(updated=1, conditions=[DEADLINE]), "failed", "exceeded its progress deadline"),
    (_dep(updated=1, total=4), "waiting", "1 out of 3 new replicas have been updated"),
    (_dep(total=5), "waiting", "2 old replicas are pending termination"),
    (_dep(available=2), "waiting", "2 of 3 updated replicas are available"),
    (_dep(replicas=0, updated=0, total=0, available=0), "success", "0 of 0"),
    ({"metadata": {"name": "x"}, "spec": {}, "status": {}}, "waiting", "0 out of 1 new replicas"),  # replicas defaults to 1
])
def test_deployment_status(dep, state, fragment):
    got_state, message = deployment_status(dep)
    assert got_state == state
    assert fragment in message


@pytest.mark.parametrize("dep, problems", [
    (_dep(), []),
    (_dep(available=2), [WARNING]),
    (_dep(available=0), [CRITICAL]),                 # waiting with nothing available is down
    (_dep(updated=1, conditions=[DEADLINE]), [CRITICAL]),
    (_dep(replicas=0, updated=0, total=0, available=0), []),
])
def test_judge_deployment(dep, problems):
    obs = Observation()
    judge_deployment(dep, obs)
    assert [state for state, _msg in obs.problems] == problems
    assert obs.measures["desired_replicas"] == dep["spec"]["replicas"]


# --------------------------------------------------------------------------- docker inspect mapping

def _container(status="running", health=None, restarts=0, oom=False, exit_code=0, paused=False):
    state = {"Status": status, "Running": status == "running", "Paused": paused, "OOMKilled": oom,
             "ExitCode": exit_code, "StartedAt": "2026-01-01T00:00:00Z"}
    if health:
        state["Health"] = {"Status": health, "FailingStreak": 3, "Log": [{"Output": "curl: (7) refused\n"}]}
    return {"Name": "/app", "State": state, "RestartCount": restarts, "Config": {"Image": "app:1"}}


@pytest.mark.parametrize("info, problems, fragment", [
    (_container(), [], "container app running, 0 restarts"),
    (_container(health="healthy"), [], "running, healthy"),
    (_container(health="starting"), [WARNING], "health is starting"),
    (_container(health="unhealthy"), [CRITICAL], "unhealthy (3 failing streak: curl: (7) refused)"),
    (_container(status="restarting", restarts=5), [WARNING], "restarting (restart count 5)"),
    (_container(status="exited", exit_code=137, oom=True), [CRITICAL], "exited (exit code 137, OOMKilled)"),
    (_container(paused=True), [CRITICAL], "is paused"),
    (_container(status="created"), [CRITICAL], "is created"),
])
def test_judge_container(info, problems, fragment):
    obs = Observation()
    judge_container(info, obs)
    assert [state for state, _msg in obs.problems] == problems
    assert fragment in " ".join([m for _s, m in obs.problems] + obs.notes)


# --------------------------------------------------------------------------- parsers

def _der_cert(not_after):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "t")])
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(1).not_valid_before(datetime.datetime(1990, 1, 1))
            .not_valid_after(not_after).sign(key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.DER)


@pytest.mark.parametrize("not_after", [
    datetime.datetime(2031, 5, 6, 7, 8, 9),     # UTCTime
    datetime.datetime(2051, 1, 2, 3, 4, 5),     # GeneralizedTime (>= 2050)
    datetime.datetime(1999, 12, 31, 23, 59, 59),
])
def test_cert_not_after(not_after):
    der = _der_cert(not_after)
    assert cert_not_after(der) == not_after.replace(tzinfo=datetime.timezone.utc)
    now = not_after.replace(tzinfo=datetime.timezone.utc) - datetime.timedelta(days=3, hours=12)
    assert cert_days_left(der, now) == pytest.approx(3.5)


def test_parse_info_and_meminfo():
    info = parse_info("# Server\r\nredis_version:7.0.15\r\nrole:master\r\n\r\n# Memory\r\nused_memory:1024\r\n")
    assert info == {"redis_version": "7.0.15", "role": "master", "used_memory": "1024"}
    mem = read_meminfo("MemTotal:       1000 kB\nMemAvailable:    250 kB\nHugePages_Total:       0\n")
    assert mem == {"MemTotal": 1024000, "MemAvailable": 256000, "HugePages_Total": 0}


def test_memory_probe_reads_meminfo(tmp_path):
    from ansible_collections.opskit.runbook.plugins.module_utils._health.services import probe_memory
    path = tmp_path / "meminfo"
    path.write_text("MemTotal: 1000 kB\nMemAvailable: 250 kB\nSwapTotal: 100 kB\nSwapFree: 50 kB\n")
    obs = Observation()
    probe_memory({}, obs, meminfo=str(path))
    assert obs.measures["used_pct"] == 75.0 and obs.measures["swap_used_pct"] == 50.0


# --------------------------------------------------------------------------- the scheduler

@pytest.fixture
def scripted(monkeypatch):
    """Replace the memory probe by one that plays a per-check script of outcomes."""
    scripts, calls = {}, {}
    lock = threading.Lock()

    def probe(check, obs, timeout, ctx):
        with lock:
            calls[check["name"]] = calls.get(check["name"], 0) + 1
            step = scripts[check["name"]].pop(0) if len(scripts[check["name"]]) > 1 else scripts[check["name"]][0]
        if callable(step):
            return step(check, obs, timeout, ctx)
        if isinstance(step, Exception):
            raise step
        obs.measure("used_pct", step)
    monkeypatch.setitem(_health._PROBES, "memory", probe)
    return scripts, calls


def _mem(name, **extra):
    return dict({"type": "memory", "name": name, "critical": 90, "interval": 0}, **extra)


def test_retries_until_ok(scripted):
    scripts, calls = scripted
    scripts["m"] = [95, 95, 50]
    report = run_checks([_mem("m", retries=5)])
    check = report["checks"][0]
    assert (check["status"], check["attempts"], check["history"]) == (OK, 3, [CRITICAL, CRITICAL, OK])
    assert report["status"] == OK and report["counts"][OK] == 1


def test_retries_exhausted_keeps_last_state_and_measures(scripted):
    scripts, _calls = scripted
    scripts["m"] = [95, 97]
    check = run_checks([_mem("m", retries=1)])["checks"][0]
    assert (check["status"], check["attempts"], check["measures"]["used_pct"]) == (CRITICAL, 2, 97)
    assert check["message"].endswith("used_pct (97) > 90 (critical)")
    assert check["perfdata"] == "'used_pct'=97%;;90;0;100"


def test_consecutive_resets_on_failure(scripted):
    scripts, _calls = scripted
    scripts["m"] = [50, 95, 50, 50, 50]
    check = run_checks([_mem("m", retries=3, consecutive=3)])["checks"][0]
    assert check["history"] == [OK, CRITICAL, OK, OK, OK]
    assert check["status"] == OK and "3 consecutive OK" in check["message"]


def test_flapping_fails_when_retries_run_out(scripted):
    scripts, _calls = scripted
    scripts["m"] = [50, 95, 50, 95]
    check = run_checks([_mem("m", retries=1, consecutive=2)])["checks"][0]
    assert check["history"] == [OK, CRITICAL, OK, CRITICAL] and check["status"] == CRITICAL


def test_probe_errors_become_results(scripted):
    scripts, _calls = scripted
    scripts["boom"] = [RuntimeError("bug\nin probe")]
    scripts["down"] = [ServiceError("cannot connect to X: refused")]
    scripts["refused"] = [ConnectionRefusedError(111, "Connection refused")]
    scripts["slow"] = [TimeoutError()]
    scripts["failed"] = [ProbeFailed(WARNING, "degraded")]
    scripts["conf"] = [ConfigError("bad kubeconfig")]
    report = run_checks([_mem(n) for n in ("boom", "down", "refused", "slow", "failed", "conf")])
    got = {c["name"]: (c["status"], c["message"]) for c in report["checks"]}
    assert got["boom"] == (UNKNOWN, "probe error: RuntimeError: bug in probe")
    assert got["down"] == (CRITICAL, "cannot connect to X: refused")
    assert got["refused"][0] == CRITICAL and "refused" in got["refused"][1]
    assert got["slow"] == (CRITICAL, "timed out after 10s")
    assert got["failed"] == (WARNING, "degraded")
    assert got["conf"] == (UNKNOWN, "bad kubeconfig")
    assert report["status"] == CRITICAL
    assert report["counts"] == {OK: 0, WARNING: 1, CRITICAL: 3, UNKNOWN: 2}


def test_thresholded_measure_missing_is_unknown(scripted):
    scripts, _calls = scripted
    scripts["m"] = [lambda check, obs, timeout, ctx: obs.note("nothing measured")]
    check = run_checks([_mem("m")])["checks"][0]
    assert (check["status"], check["message"]) == (UNKNOWN, "nothing measured; used_pct was not measured")


def test_concurrency_is_bounded(scripted):
    scripts, _calls = scripted
    active, peak, lock = [0], [0], threading.Lock()

    def probe(check, obs, timeout, ctx):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        time.sleep(0.05)
        with lock:
            active[0] -= 1
        obs.measure("used_pct", 1)
    for i in range(12):
        scripts["m%d" % i] = [probe]
    report = run_checks([_mem("m%d" % i) for i in range(12)], concurrency=4)
    assert peak[0] == 4
    assert [c["name"] for c in report["checks"]] == ["m%d" % i for i in range(12)]   # input order kept


def test_deadline_stops_retries_and_reports_unstarted_and_hung(scripted, monkeypatch):
    scripts, calls = scripted
    monkeypatch.setattr(_health, "_GRACE", 0.05)
    release = threading.Event()

    def hang(check, obs, timeout, ctx):
        release.wait(5)
        obs.measure("used_pct", 1)
    scripts["hung"] = [hang]
    scripts["flaky"] = [95]
    scripts["queued"] = [50]
    try:
        report = run_checks([_mem("hung"), _mem("flaky", retries=1000, interval=0.05), _mem("queued")],
                            concurrency=2, deadline=0.3)
    finally:
        release.set()
    got = {c["name"]: c for c in report["checks"]}
    assert got["hung"]["status"] == CRITICAL and "did not finish before the overall deadline" in got["hung"]["message"]
    assert got["flaky"]["status"] == CRITICAL and got["flaky"]["message"].startswith("deadline reached after")
    assert 1 < got["flaky"]["attempts"] < 1000
    assert got["queued"]["status"] == UNKNOWN and got["queued"]["message"].startswith("not run")


def test_run_checks_rejects_bad_run_options():
    with pytest.raises(ConfigError, match="concurrency"):
        run_checks([{"type": "load"}], concurrency=0)
    with pytest.raises(ConfigError, match="deadline"):
        run_checks([{"type": "load"}], deadline=-1)


def test_clients_are_built_once_per_connection_and_injectable():
    built = []
    ctx = _health.Context(None, clients={"docker": lambda: built.append("injected") or "fake"})
    results = []
    threads = [threading.Thread(target=lambda: results.append(ctx.client("docker", ("a",), lambda: "real")))
               for _i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == ["fake"] * 8 and built == ["injected"]


def test_a_bug_outside_the_probe_is_a_result_not_a_crash(scripted, monkeypatch):
    scripts, _calls = scripted
    scripts["m"] = [50]
    scripts["n"] = [50]

    def broken(measures, ranges):
        if "used_pct" in measures:
            raise KeyError("perfdata bug")
        return ""
    monkeypatch.setattr(_health, "_perfdata", broken)
    report = run_checks([_mem("m"), _mem("n")])
    assert [c["status"] for c in report["checks"]] == [UNKNOWN, UNKNOWN]
    assert report["checks"][0]["message"] == "internal error: KeyError: 'perfdata bug'"


HANG = """
import sys, time
sys.path.insert(0, %r)
from ansible_collections.opskit.runbook.plugins.module_utils._health import engine as _health
_health._GRACE = 0.05
_health._PROBES["memory"] = lambda check, obs, timeout, ctx: time.sleep(300)
report = _health.run_checks([{"type": "memory"}], deadline=0.2)
print(report["checks"][0]["status"], report["checks"][0]["message"])
"""


def test_a_hung_probe_does_not_keep_the_process_alive():
    """The workers are daemon threads: the module exits at the deadline, not when a stuck probe returns."""
    import subprocess
    import sys
    collections = [p for p in sys.path if p.endswith(".build/collections")][0]
    proc = subprocess.run([sys.executable, "-c", HANG % collections], capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "CRITICAL did not finish before the overall deadline"


@pytest.mark.parametrize("kind, extra", [("http", {}), ("metrics", {"metric": "up"})])
def test_names_made_from_urls_never_carry_userinfo_or_query_values(kind, extra):
    """Issue 14 item 8: the name of an unnamed check is shown in results, logs and reports."""
    url = "https://user:pw@host/x?token=abc&sig=Zk9"
    named = _checks.validate_checks([dict(type=kind, url=url, **extra), dict(type=kind, url=url, **extra)],
                                    defaults=None)
    names = [c["name"] for c in named]
    assert names[0].startswith("%s https://***@host/x?token=***&sig=***" % kind) and names[1] == names[0] + " #2"
    for name in names:
        for secret in ("user", "pw", "abc", "Zk9"):
            assert secret not in name
