# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""health_check's own conversion of the ``checks`` sub-options (params.py), the docs held to
CHECK_ARGSPEC (validate-modules cannot compare sub-options the argument spec does not declare),
and the module run in-process: types converted, one-line errors, secrets masked in the result
and in the module's log line, the summary-only result."""

from __future__ import annotations

import json
import os
import re

import pytest
import yaml

from ansible.module_utils import basic

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._health.checks import CHECK_ARGSPEC, validate_checks
from ansible_collections.opskit.runbook.plugins.module_utils._health.params import convert_checks, secret_values
from ansible_collections.opskit.runbook.plugins.modules import health_check


def test_the_docs_document_every_sub_option_as_the_spec_declares_it():
    docs = yaml.safe_load(health_check.DOCUMENTATION)["options"]["checks"]["suboptions"]
    assert sorted(docs) == sorted(CHECK_ARGSPEC)
    for name, spec in CHECK_ARGSPEC.items():
        doc = docs[name]
        assert doc.get("type", "str") == spec.get("type", "str"), name
        assert doc.get("elements") == spec.get("elements"), name
        assert doc.get("default") == spec.get("default"), name
        assert sorted(doc.get("aliases") or []) == sorted(spec.get("aliases") or []), name
        assert doc.get("choices") == spec.get("choices"), name
        assert doc.get("description"), name


def test_secret_looking_sub_options_set_no_log_as_validate_modules_asks():
    """validate-modules' no-log-needed rule, which it no longer applies to sub-options it cannot see."""
    looks_secret = re.compile(r"(?:pass(?!ive)|secret|token|key)", re.I)   # its NO_LOG_REGEX
    for name, spec in CHECK_ARGSPEC.items():
        if looks_secret.search(name) or name == "headers":
            assert spec.get("no_log") in (True, False), name
    assert [n for n, s in CHECK_ARGSPEC.items() if s.get("no_log")] == ["headers", "bearer_token", "password"]


@pytest.mark.parametrize("given, expect", [
    ({"timeout": "5"}, {"timeout": 5.0}),
    ({"retries": "3", "consecutive": 2.0}, {"retries": 3, "consecutive": 2}),
    ({"validate_certs": "no", "resources": "yes"}, {"validate_certs": False, "resources": True}),
    ({"status_codes": ["200", 201]}, {"status_codes": [200, 201]}),
    ({"json_conditions": "status == 1"}, {"json_conditions": ["status == 1"]}),   # a string is a list of one
    ({"port": "5432", "login_password": 1234}, {"port": 5432, "login_password": "1234"}),
    ({"headers": "X-Token=abc"}, {"headers": {"X-Token": "abc"}}),
    ({"path": "~/data", "kubeconfig": None}, {"path": os.path.expanduser("~/data"), "kubeconfig": None}),
    ({"aggregate": "max", "warning": 5, "since": "15min"}, {"aggregate": "max", "warning": 5, "since": "15min"}),
    ({"nonsense": "kept"}, {"nonsense": "kept"}),                                 # refused by validate_checks
])
def test_set_sub_options_are_converted_as_ansible_does(given, expect):
    assert convert_checks([dict(given, type="http")]) == [dict(expect, type="http")]


@pytest.mark.parametrize("given, message", [
    ({"name": "api", "timeout": "soon"},
     "check 'api' (checks[0]): argument 'timeout' is of type str and we were unable to convert to float"),
    ({"port": [1]}, "checks[0]: argument 'port' is of type list and we were unable to convert to int"),
    ({"status_codes": ["ok"]},
     "checks[0]: elements value for option 'status_codes' is of type str and we were unable to convert to int"),
    ({"aggregate": "median"}, "checks[0]: value of aggregate must be one of: none, sum, min, max, avg, count, got: median"),
    ({"validate_certs": "maybe"}, "checks[0]: argument 'validate_certs' is of type str and we were unable to convert to bool"),
])
def test_a_wrong_type_is_a_one_line_error_naming_the_check(given, message):
    with pytest.raises(ConfigError) as err:
        convert_checks([dict(given, type="http")])
    assert err.value.msg.startswith(message) and "\n" not in err.value.msg


def test_unknown_options_and_aliases_still_go_through_validate_checks():
    with pytest.raises(ConfigError, match=r"checks\[0\]: unsupported option\(s\) nonsense"):
        validate_checks(convert_checks([{"type": "disk", "nonsense": 1}]))
    check = validate_checks(convert_checks([{"type": "postgres", "login_host": "db", "login_password": 5}]))[0]
    assert (check["host"], check["password"]) == ("db", "5")


def test_secret_values_are_the_no_log_sub_options_and_url_credentials():
    checks = [
        {"type": "http", "url": "https://bob:hunter22@h/x?token=abcdef123&page=2", "headers": {"Authorization": "Bearer t0k3n"}},
        {"type": "postgres", "login_password": "pgpass", "user": "postgres", "port": 5432},
        {"type": "prometheus", "url": "http://p:9090", "bearer_token": "prom-token", "password": 99},
        "not a mapping",
    ]
    assert secret_values(checks) == {"hunter22", "abcdef123", "Bearer t0k3n", "pgpass", "prom-token", "99"}
    assert secret_values(None) == set()


def _run_module(monkeypatch, capsys, args):
    logged = []
    monkeypatch.setattr(basic, "_ANSIBLE_ARGS", json.dumps({"ANSIBLE_MODULE_ARGS": args}).encode())
    monkeypatch.setattr(basic, "_ANSIBLE_PROFILE", "legacy")
    monkeypatch.setattr(basic.AnsibleModule, "log", lambda self, msg, log_args=None: logged.append(msg))
    with pytest.raises(SystemExit):
        health_check.main()
    return json.loads(capsys.readouterr().out), " ".join(logged)


def test_the_module_converts_masks_and_logs_nothing_secret(monkeypatch, capsys, tmp_path):
    args = {"checks": [
        {"name": "root", "type": "disk", "path": str(tmp_path), "timeout": "5", "retries": "0", "critical": "0:"},
        {"name": "local api", "type": "http", "url": "http://127.0.0.1:9/?token=s3cr3tvalue", "timeout": 2,
         "headers": {"Authorization": "Bearer very-secret-header"}, "validate_certs": "no"},
    ], "fail_on": "never"}
    result, log = _run_module(monkeypatch, capsys, args)
    assert [c["status"] for c in result["checks"]] == ["OK", "CRITICAL"]
    text = json.dumps(result)
    for secret in ("very-secret-header", "s3cr3tvalue"):
        assert secret not in text and secret not in log
    assert "Invoked with" in log and "local api" in log
    if "invocation" in result:  # the module returns it up to ansible-core 2.20; 2.21 leaves it to the controller
        shown = result["invocation"]["module_args"]["checks"]
        assert shown[0]["timeout"] == 5.0 and "path" in shown[0] and "kubeconfig" not in shown[0]


def test_the_module_fails_in_one_line_on_a_bad_type(monkeypatch, capsys):
    result, _log = _run_module(monkeypatch, capsys, {"checks": [{"name": "db", "type": "tcp", "host": "h", "port": "x"}]})
    assert result["failed"] is True
    assert result["msg"].startswith("check 'db' (checks[0]): argument 'port' is of type str and we were unable to convert to int")
    assert "\n" not in result["msg"]


def test_summary_only_keeps_the_checks_that_are_not_ok(monkeypatch, capsys, tmp_path):
    checks = [{"name": "disk %d" % i, "type": "disk", "path": str(tmp_path)} for i in range(5)]
    checks.append({"name": "full", "type": "disk", "path": str(tmp_path), "critical": "101:"})
    result, _log = _run_module(monkeypatch, capsys, {"checks": checks, "fail_on": "never", "summary": True})
    assert result["status"] == "CRITICAL" and result["counts"] == {"OK": 5, "WARNING": 0, "CRITICAL": 1, "UNKNOWN": 0}
    assert [c["name"] for c in result["checks"]] == ["full"]
    assert result["summary"].startswith("CRITICAL: 6 checks, 5 OK, 1 CRITICAL; CRITICAL full:")
    assert "invocation" not in result or "checks" not in result["invocation"]["module_args"]
    full, _log = _run_module(monkeypatch, capsys, {"checks": checks, "fail_on": "never"})
    assert len(json.dumps(result)) * 3 < len(json.dumps(full))


# --------------------------------------------------------------------------- logs of pods (validation, window)

@pytest.mark.parametrize("given, message", [
    ({"deployment": "web", "selector": "app=web"}, "checks[0]: type logs takes deployment or selector, not both"),
    ({"deployment": "web", "compose_service": "web"},
     "checks[0]: type logs reads a compose service or Kubernetes pods (deployment, selector), not both"),
    ({"container": "app", "namespace": "shop"},
     "checks[0]: namespace, kubeconfig, context and in_cluster apply to the logs of pods (deployment or selector)"),
    ({}, "checks[0]: type logs requires container or compose_service (one of them), or deployment or selector (pods)"),
])
def test_logs_of_pods_refuse_mixed_targets(given, message):
    with pytest.raises(ConfigError) as err:
        validate_checks([dict(given, type="logs")])
    assert err.value.msg == message


def test_logs_of_pods_are_named_and_windowed():
    from ansible_collections.opskit.runbook.plugins.module_utils._health.pods import _log_options
    check = validate_checks([{"type": "logs", "selector": "app=api", "container": "app", "since": "15min", "tail": 50}])[0]
    assert check["name"] == "logs pods default/app=api app" and check["namespace"] == "default"
    assert _log_options(check) == {"since_seconds": 900, "tail_lines": 50}
    assert _log_options(validate_checks([{"type": "logs", "deployment": "web"}])[0]) == {}
