# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-runner as the client, as AWX runs a job: the built collection installed from its
tarball into a clean virtualenv with only its declared requirements, the runbooks run through
``ansible_runner.run()`` with a private data directory (inventory, env/extravars, env/envvars,
env/passwords answering the vault prompt), and the job events, the ``set_stats`` artifact, the
exit status and the size of the results read back from the artifacts."""

from __future__ import annotations

import datetime
import glob
import json
import os
import sys
import time
import uuid
from unittest import mock

import pytest
import yaml
from ansible.parsing.vault import VaultLib, VaultSecret

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

from collection_fixtures import ROOT, build_collection, clean_env, install_collection, make_venv, pinned, run

# ansible-runner's awx_display callback replaces a task result larger than this (len(str(res)),
# the MAX_EVENT_RES default) by {} in the job event: AWX then shows nothing of it.
MAX_EVENT_RES = 700000
VAULT_PASSWORD = "vault-Pw-%s" % uuid.uuid4().hex[:10]
UTC = datetime.timezone.utc

DRIVER = """
import json, sys
import ansible_runner
r = ansible_runner.run(private_data_dir=sys.argv[1], playbook=sys.argv[2], ident=sys.argv[3], quiet=True)
print(json.dumps({"rc": r.rc, "status": r.status}))
"""


@pytest.fixture(scope="module")
def awx(tmp_path_factory):
    """The collection from its tarball in a clean virtualenv: ansible-core, ansible-runner (what
    an EE has) and the collection's declared requirements.txt, nothing else."""
    base = tmp_path_factory.mktemp("awx")
    started = time.monotonic()
    collections = base / "collections"
    installed = install_collection(build_collection(base / "dist"), collections, base / "home")
    venv = make_venv(base / "venv", pinned("ansible-core"), pinned("ansible-runner"),
                     "-r", os.path.join(installed, "requirements.txt"))
    # nothing of the checkout or of .venv is visible from the clean virtualenv
    probe = run([str(venv / "bin" / "python"), "-c", "import sys, ansible; print(ansible.__file__); print(sys.path)"])
    assert str(venv) in probe.splitlines()[0] and ROOT not in probe and ".venv" not in probe
    sys.stderr.write("clean virtualenv ready in %.1f s\n" % (time.monotonic() - started))
    return {"base": base, "venv": venv, "collections": collections}


def _vault(value):
    """The value encrypted as an inline !vault scalar (what AWX stores for a vaulted extra var)."""
    data = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))]).encrypt(value).decode()
    return "!vault |\n" + "".join("    %s\n" % line for line in data.splitlines())


def _private_data_dir(awx, name, extravars, vaulted, envvars):
    """inventory/hosts, env/{extravars,envvars,passwords,cmdline}, project/<playbook>.yml."""
    pdd = awx["base"] / name
    for sub in ("inventory", "env", "project"):
        (pdd / sub).mkdir(parents=True)
    python = awx["venv"] / "bin" / "python"
    (pdd / "inventory" / "hosts").write_text("localhost ansible_connection=local ansible_python_interpreter=%s\n" % python)
    text = yaml.safe_dump(extravars, default_flow_style=False)
    for key, (parent, value) in vaulted.items():  # parent: {other keys..., key: !vault ...}
        plain = {k: v for k, v in value.items() if k != key}
        text += "%s:\n" % parent + "".join("  %s: %s\n" % (k, json.dumps(v)) for k, v in plain.items())
        text += "  %s: %s" % (key, _vault(value[key]))
    (pdd / "env" / "extravars").write_text(text)
    (pdd / "env" / "envvars").write_text(yaml.safe_dump(dict(envvars, ANSIBLE_COLLECTIONS_PATH=str(awx["collections"]))))
    (pdd / "env" / "passwords").write_text(yaml.safe_dump({r"^Vault password:\s*?$": VAULT_PASSWORD}))
    (pdd / "env" / "cmdline").write_text("--ask-vault-pass")
    return pdd


def _run_job(awx, pdd, playbook, ident):
    """ansible_runner.run() in the clean virtualenv; (status dict, job events in order)."""
    env = clean_env(awx["base"] / "home", PATH="%s:%s" % (awx["venv"] / "bin", os.environ.get("PATH", "")))
    for key in [k for k in env if k.startswith(("AWS_", "PG"))]:
        del env[key]
    out = run([str(awx["venv"] / "bin" / "python"), "-c", DRIVER, str(pdd), playbook, ident], env=env,
              cwd=str(pdd))
    status = json.loads(out.strip().splitlines()[-1])
    events = []
    for path in glob.glob(str(pdd / "artifacts" / ident / "job_events" / "*.json")):
        with open(path) as fh:
            events.append(json.load(fh))
    events.sort(key=lambda e: e["counter"])
    assert events, "no job events in %s" % pdd
    return status, events


def _task_names(events):
    return [e["event_data"].get("task") for e in events if e["event"] == "playbook_on_task_start"]


def _custom_stats(events):
    (stats,) = [e for e in events if e["event"] == "playbook_on_stats"]
    return stats["event_data"].get("artifact_data") or {}


def _largest_result(events):
    results = [e for e in events if e["event"] in ("runner_on_ok", "runner_on_failed")]
    return max(len(str(e["event_data"].get("res", {}))) for e in results)


def _assert_no_secret(events, pdd, secrets):
    dumped = json.dumps(events)
    for secret in secrets:
        assert secret not in dumped, "a secret is in a job event"
    with open(str(pdd / "artifacts" / os.listdir(str(pdd / "artifacts"))[0] / "stdout"), errors="replace") as fh:
        stdout = fh.read()
    for secret in secrets:
        assert secret not in stdout, "a secret is in the job's stdout"


def test_daily_and_drill_as_awx_runs_them(awx, pg, s3, tmp_path):
    shop = pg.createdb("awx_%s" % uuid.uuid4().hex[:8])
    pg.psql("CREATE TABLE orders AS SELECT g AS id, g * 1.5 AS total FROM generate_series(1, 200) g", db=shop)
    bucket = s3.new_bucket()
    extravars = {
        "opskit_location": "s3://%s/awx" % bucket,
        "opskit_report_dir": str(tmp_path / "reports"),
        "opskit_series_prefix": "awx-",
        "opskit_databases": [{"name": shop, "verify_queries": [
            {"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "200"}]}],
        "opskit_disk_paths": [str(tmp_path)],
        "opskit_lock_dir": str(tmp_path / "locks"),
        "opskit_health_checks": [{"name": "shop db", "type": "postgres", "database": shop}],
    }
    vaulted = {"password": ("opskit_postgres", {"host": pg.host, "port": pg.port, "user": pg.user,
                                                "bin_dir": pg.bin_dir, "password": pg.password})}
    # the S3 credential as AWX injects a cloud credential: environment variables
    envvars = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
               "AWS_ENDPOINT_URL_S3": s3.endpoint_url, "AWS_REGION": s3.region}
    pdd = _private_data_dir(awx, "job", extravars, vaulted, envvars)
    for name in ("daily", "dr_drill"):
        (pdd / "project" / ("%s.yml" % name)).write_text("- ansible.builtin.import_playbook: opskit.runbook.%s\n" % name)

    started = time.monotonic()
    status, events = _run_job(awx, pdd, "daily.yml", "1")
    sys.stderr.write("daily: %.1f s\n" % (time.monotonic() - started))
    assert status == {"rc": 0, "status": "successful"}, [e.get("stdout") for e in events][-30:]
    names = _task_names(events)
    assert "Backups | back up, rotate, check the RPO" in names and "Health | services, disk space, error logs" in names
    assert "Report | publish the summary (AWX/Tower artifacts)" in names
    summary = _custom_stats(events)["opskit_reports"]["localhost"]
    assert summary["report"] == "daily" and summary["status"] == "passed"
    assert os.path.exists(summary["json"]) and os.path.exists(summary["html"])
    assert _largest_result(events) < MAX_EVENT_RES // 10
    assert not [e for e in events if e["event"] == "runner_on_ok" and e["event_data"].get("res") == {}]
    _assert_no_secret(events, pdd, [pg.password, s3.secret_key, VAULT_PASSWORD])
    stored = s3.client.list_objects_v2(Bucket=bucket, Prefix="awx/awx-pg-%s/" % shop)["Contents"]
    assert any(o["Key"].endswith(".manifest.json") for o in stored)

    started = time.monotonic()
    status, events = _run_job(awx, pdd, "dr_drill.yml", "2")
    sys.stderr.write("dr_drill: %.1f s\n" % (time.monotonic() - started))
    assert status == {"rc": 0, "status": "successful"}, [e.get("stdout") for e in events][-30:]
    assert "Drill | restore and verify every asset into scratch targets" in _task_names(events)
    summary = _custom_stats(events)["opskit_reports"]["localhost"]
    assert summary["report"] == "dr_drill" and summary["status"] == "passed"
    assert isinstance(summary["rto_seconds"], float) and isinstance(summary["rpo_seconds"], float)
    assert _largest_result(events) < MAX_EVENT_RES // 10
    _assert_no_secret(events, pdd, [pg.password, s3.secret_key, VAULT_PASSWORD])


def _seed_large(location, series, per_series):
    """series x per_series published backups, hourly up to an hour ago, through the engine
    (fsync off: a seed). Only ages relative to now are asserted: no date dependence."""
    now = datetime.datetime.now(UTC).replace(microsecond=0)
    with mock.patch("os.fsync"):
        for i in range(series * per_series):
            with BackupSession(location, "big-%03d" % (i % series), "generic", compression="none",
                               now=now - datetime.timedelta(hours=1 + i // series)) as session:
                with session.artifact("bin") as out:
                    out.write(b"x")
                session.publish()


def test_backup_info_summary_fits_the_event_limit(awx, tmp_path):
    store = tmp_path / "store"
    _seed_large(open_location("file://%s" % store), series=40, per_series=40)
    pdd = _private_data_dir(awx, "large", {"where": "file://%s" % store}, {}, {})
    (pdd / "env" / "cmdline").write_text("")
    (pdd / "project" / "info.yml").write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - name: full\n      opskit.runbook.backup_info: {location: '{{ where }}', max_age: 26h}\n"
        "    - name: summary\n      opskit.runbook.backup_info: {location: '{{ where }}', max_age: 26h, summary: true}\n"
        "    - name: breach\n      opskit.runbook.backup_info: {location: '{{ where }}', max_age: 30min, summary: true,"
        " fail_on_stale: true}\n")
    status, events = _run_job(awx, pdd, "info.yml", "1")
    # a failed task fails the job: AWX shows it failed, with the result of the failed task
    assert status == {"rc": 2, "status": "failed"}
    res = {e["event_data"]["task"]: e["event_data"]["res"] for e in events
           if e["event"] in ("runner_on_ok", "runner_on_failed")}
    assert res["breach"]["msg"].startswith("RPO breach: newest backup older than 30min in series big-000, ")
    assert len(res["breach"]["stale_series"]) == 40 and res["breach"]["backups"] == []
    assert res["full"] == {}  # 1600 backups: more than ansible-runner passes on, AWX would show nothing
    summary = res["summary"]
    assert len(str(summary)) < MAX_EVENT_RES // 10 and summary["backups"] == []
    assert len(summary["series"]) == 40 and summary["stale_series"] == []
    assert {s["count"] for s in summary["series"].values()} == {40}
    assert all(s["newest_age_seconds"] < 2 * 3600 for s in summary["series"].values())
