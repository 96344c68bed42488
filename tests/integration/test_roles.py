# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The roles and runbook playbooks through ansible-playbook against real services."""

from __future__ import annotations

import glob
import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import uuid

import psycopg2
import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine.catalog import list_backups
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

from harness import free_port, http_get
from roles_fixtures import (ROOT, VERBOSE_BECOME, CmdlineWatcher, PasswordRedis, SyslogCapture, Webhook, conn, playbook,
                            reports)

ROLES = ["backup", "restore", "upgrade", "maintenance", "health", "report"]

# One wrong-typed input per role, and the words the message must contain.
WRONG_TYPES = {
    "backup": ({"backup_retention": "7 days"}, "backup_retention"),
    "restore": ({"restore_volumes": {"name": "x"}}, "restore_volumes"),
    "upgrade": ({"upgrade_images": "web:2"}, "upgrade_images"),
    "maintenance": ({"maintenance_idle_minutes": "ten"}, "maintenance_idle_minutes"),
    "health": ({"health_fail_on": "sometimes"}, "health_fail_on"),
    "report": ({"report_data": ["not", "a", "dict"]}, "report_data"),
}


def test_argument_specs_reject_wrong_types(run_playbook):
    tasks = []
    for role, (bad, _word) in WRONG_TYPES.items():
        tasks.append({"name": "wrong " + role, "block": [
            {"name": "include " + role, "ansible.builtin.include_role": {"name": "opskit.runbook." + role},
             "vars": bad}],
            "rescue": [{"name": "caught " + role, "ansible.builtin.set_fact": {
                "caught_" + role: "{{ ansible_failed_result.msg }}"}}]})
    tasks.append({"name": "messages", "ansible.builtin.debug": {
        "msg": {role: "{{ caught_%s | default('NOT REJECTED') }}" % role for role in WRONG_TYPES}}})
    run = run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}])
    msgs = run.task("messages")["msg"]
    for role, (_bad, word) in WRONG_TYPES.items():
        msg = msgs[role]
        assert msg != "NOT REJECTED", role
        assert "Validation of arguments failed" in msg and word in msg, (role, msg)
        assert "Traceback" not in msg
    assert "backup_retention' is of type str and we were unable to convert to dict" in msgs["backup"]
    assert "restore_volumes' is of type dict and we were unable to convert to list" in msgs["restore"]
    assert "value of health_fail_on must be one of: critical, warning, never" in msgs["health"]
    assert "maintenance_idle_minutes" in msgs["maintenance"] and "float" in msgs["maintenance"]


@pytest.fixture
def shop(pg):
    name = "shop_%s" % uuid.uuid4().hex[:8]
    pg.createdb(name)
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY, total numeric); "
            "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 300) g;", db=name)
    return name


def _base_vars(tmp_path, pg, db, **extra):
    out = {
        "opskit_location": "file://%s/backups" % tmp_path,
        "opskit_report_dir": str(tmp_path / "reports"),
        "opskit_series_prefix": "t-",
        "opskit_postgres": conn(pg),
        "opskit_databases": [{"name": db, "verify_queries": [
            {"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "300"}]}],
        "opskit_disk_paths": [str(tmp_path)],
        "opskit_lock_dir": str(tmp_path / "locks"),  # not the host's: other test sessions run playbooks too
    }
    out.update(extra)
    return out


def test_backup_daily_then_drill(run_playbook, pg, redis, shop, tmp_path):
    conf = tmp_path / "etc-app"
    conf.mkdir()
    (conf / "app.conf").write_text("listen 8080\n")
    (conf / "secrets.env").write_text("TOKEN=x\n")
    metrics = tmp_path / "metrics"
    metrics.mkdir()
    redis_dir = pathlib.Path(redis.root)  # the harness's redis-server --dir (protected config in Redis 7)
    rdb = redis_dir / "dump.rdb"
    if rdb.exists():
        rdb.unlink()
    subprocess.run(["redis-cli", "-h", redis.host, "-p", str(redis.port), "SET", "greeting", "hello"],
                   check=True, capture_output=True)
    extra = _base_vars(tmp_path, pg, shop,
                       opskit_directories=[{"name": "etc-app", "path": str(conf)}],
                       opskit_redis=[{"name": "cache", "host": redis.host, "port": redis.port, "path": str(redis_dir)}],
                       opskit_metrics_dir=str(metrics),
                       opskit_health_checks=[{"name": "shop db", "type": "postgres", "database": shop}])

    # check mode: the plan, nothing written anywhere
    planned = run_playbook(playbook("daily"), extra, check=True)
    assert planned.rc == 0, planned.stdout[-3000:]
    assert not (tmp_path / "backups").exists()
    assert not (metrics / "opskit_backup.prom").exists()
    assert planned.task("PostgreSQL | dump the databases")["results"][0]["plan"][0]["database"] == shop
    planned_doc = reports(tmp_path / "reports", "daily")[-1]
    assert {a["name"]: a["outcome"] for a in planned_doc["assets"]} == {shop: "planned", "etc-app": "planned", "cache": "planned"}

    run = run_playbook(playbook("daily"), extra)
    assert run.rc == 0, run.stdout[-3000:]
    assert pg.password not in json.dumps(run.results) + run.stdout  # no secret in any task result
    series = sorted(os.listdir(tmp_path / "backups"))
    assert series == ["t-dir-etc-app", "t-pg-%s" % shop, "t-redis-cache"]
    assert rdb.exists()  # BGSAVE finished before the copy
    daily = reports(tmp_path / "reports", "daily")[-1]
    assert daily["status"] == "passed" and daily["health_status"] == "OK"
    assert {b["series"] for b in daily["backups"]} == set(series)
    outcomes = {a["name"]: (a["kind"], a["series"], a["outcome"]) for a in daily["assets"]}
    assert outcomes == {shop: ("postgres", "t-pg-%s" % shop, "written"), "etc-app": ("directory", "t-dir-etc-app", "written"),
                        "cache": ("redis", "t-redis-cache", "written")}
    assert all(a["backup_id"] and a["error"] is None for a in daily["assets"])
    outcomes_ids = {a["name"]: a["backup_id"] for a in daily["assets"]}
    redis_asset = [a for a in daily["assets"] if a["kind"] == "redis"][0]
    assert redis_asset["keys"] >= 1 and len(redis_asset["digest"]) == 40  # recorded at backup time
    assert daily["stale"] == [] and daily["missing"] == []
    assert [p["name"] for p in daily["phases"]][:2] == ["health", "redis cache"]
    prom = (metrics / "opskit_backup.prom").read_text()
    for name in series:
        assert 'opskit_backup_last_success_timestamp_seconds{host="localhost",series="%s"' % name in prom
    assert 'opskit_backup_stale{host="localhost",series="t-pg-%s",kind="postgres",rpo="24h"} 0' % shop in prom
    assert 'opskit_health_status{host="localhost",check="shop db",type="postgres"} 0' in (metrics / "opskit_health.prom").read_text()
    assert not [n for n in os.listdir(metrics) if n.endswith(".prom") and n.startswith(".")]

    drill = run_playbook(playbook("dr_drill"), extra)
    assert drill.rc == 0, drill.stdout[-3000:]
    doc = reports(tmp_path / "reports", "dr_drill")[-1]
    assert doc["status"] == "passed" and doc["rto_met"] is True and doc["rpo_met"] is True
    assert isinstance(doc["rto_seconds"], float) and isinstance(doc["rpo_seconds"], float)
    assets = {a["name"]: a for a in doc["assets"]}
    assert set(assets) == {shop, "etc-app", "cache"}  # every series, Redis included
    assert all(a["verification"] == "passed" and a["rto_seconds"] > 0 for a in assets.values())
    assert assets["cache"]["kind"] == "redis" and assets["cache"]["backup_id"] == outcomes_ids["cache"]
    # the database restore test is recorded in the manifest
    location = open_location("file://%s/backups" % tmp_path)
    newest = list_backups(location, "t-pg-%s" % shop)["t-pg-%s" % shop][0]
    assert newest["verification"]["result"] == "passed" and newest["id"] == assets[shop]["backup_id"]
    # scratch databases and directories are gone
    assert pg.psql("SELECT count(*) FROM pg_database WHERE datname LIKE '%%scratch%%' OR datname LIKE '%%opskit%%'").strip() == "0"
    assert not [p for p in os.listdir("/tmp") if p.startswith("opskit-drill-etc-app-")]


def test_failure_alerts_the_webhook_and_reports(run_playbook, pg, shop, tmp_path):
    bad = dict(conn(pg), password="wrong-password-Zq93")
    with Webhook() as hook:
        extra = _base_vars(tmp_path, pg, shop, opskit_postgres=bad, opskit_webhook_url=hook.url)
        run = run_playbook(playbook("daily"), extra)
    assert run.rc != 0
    assert len(hook.posts) == 1
    text = hook.posts[0]["json"]["text"]
    assert "daily FAILED on localhost" in text and "postgres %s: " % shop in text
    assert "password authentication failed" in text
    assert "RPO check of t-pg-%s: cannot list" % shop in text, text  # nothing was ever written: no location
    assert "wrong-password-Zq93" not in json.dumps(hook.posts) and "secret-token" not in run.stdout
    doc = reports(tmp_path / "reports", "daily")[-1]
    assert doc["status"] == "failed" and doc["failure"]["task"].startswith("Verdict | every asset backed up")
    (asset,) = doc["assets"]
    assert asset["outcome"] == "failed" and "password authentication failed" in asset["error"]
    assert "wrong-password-Zq93" not in json.dumps(doc)


def test_raw_webhook_and_unreachable_webhook(run_playbook, tmp_path):
    with Webhook(status=500) as hook:
        play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
            {"name": "alert", "ansible.builtin.include_role": {"name": "opskit.runbook.report", "tasks_from": "alert"},
             "vars": {"report_name": "weekly", "report_webhook_url": hook.url, "report_webhook_format": "raw",
                      "report_failure": {"task": "Verify | x", "msg": "it broke"}}}]}]
        run = run_playbook(play)
    assert run.rc == 0  # a webhook answering 500 is a warning, never a second failure
    body = hook.posts[0]["json"]
    assert body["event"] == "opskit.runbook.failure" and body["task"] == "Verify | x" and body["msg"] == "it broke"
    assert body["host"] == "localhost" and body["report"] == "weekly"
    assert "could not be posted" in run.stdout


def test_dr_restore_needs_the_confirmation_then_recovers(run_playbook, pg, shop, tmp_path):
    extra = _base_vars(tmp_path, pg, shop)
    assert run_playbook(os.path.join(ROOT, "playbooks", "daily.yml"), extra).rc == 0
    pg.psql("DELETE FROM orders WHERE id > 100", db=shop)

    refused = run_playbook(playbook("dr_restore"), dict(extra, opskit_dr_confirm="yes"))
    assert refused.rc != 0 and "opskit_dr_confirm=overwrite-production" in refused.stdout
    assert pg.psql("SELECT count(*) FROM orders", db=shop).strip() == "100"

    run = run_playbook(playbook("dr_restore"), dict(extra, opskit_dr_confirm="overwrite-production"))
    assert run.rc == 0, run.stdout[-3000:]
    assert pg.psql("SELECT count(*) FROM orders", db=shop).strip() == "300"
    doc = reports(tmp_path / "reports", "dr_restore")[-1]
    assert doc["assets"][0]["mode"] == "recover" and doc["assets"][0]["target"] == shop


def test_maintenance_plans_then_cleans(run_playbook, pg, shop, tmp_path):
    logs = tmp_path / "logs"
    logs.mkdir()
    old = logs / "app.log.1.gz"
    old.write_text("old")
    month_ago = time.time() - 40 * 86400
    os.utime(old, (month_ago, month_ago))
    fresh = logs / "app.log.2.gz"
    fresh.write_text("new")
    idle = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=shop,
                            application_name="opskit-idle-test")
    idle.autocommit = True
    idle.cursor().execute("SELECT 1")
    time.sleep(1.5)
    extra = _base_vars(tmp_path, pg, shop,
                       opskit_log_cleanup=[{"paths": [str(logs)], "patterns": ["*.gz"], "max_age_days": 30}],
                       opskit_idle_connection_minutes=0.02)
    try:
        plan = run_playbook(playbook("monthly"), extra, check=True)
        assert plan.rc == 0, plan.stdout[-3000:]
        assert old.exists()
        assert plan.task("Logs | find files older than the limit")["results"][0]["matched"] == 1
        assert idle.closed == 0 and pg.psql(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opskit-idle-test'").strip() == "1"

        run = run_playbook(playbook("monthly"), extra)
        assert run.rc == 0, run.stdout[-3000:]
        assert not old.exists() and fresh.exists()
        assert pg.psql("SELECT count(*) FROM pg_stat_activity WHERE application_name = 'opskit-idle-test'").strip() == "0"
        doc = reports(tmp_path / "reports", "monthly")[-1]
        assert doc["maintenance"]["terminated"] >= 1 and doc["maintenance"]["old_logs"] == [str(old)]
        assert doc["maintenance"]["vacuumed"] == [shop]
    finally:
        idle.close()


def test_maintenance_docker_prune_respects_the_keep_label(run_playbook, docker_engine, tmp_path):
    client = docker_engine.client
    select = "opskit-test-prune-%s" % uuid.uuid4().hex[:8]
    made = {}
    for kind, labels in (("drop", {select: "1"}), ("keep", {select: "1", "opskit.keep": "1"})):
        container = client.containers.create(docker_engine.busybox_image, command=["true"], labels=labels,
                                             name="%s-%s" % (select, kind))
        made[kind] = container
    time.sleep(1.2)
    extra = {"opskit_docker_prune": True, "opskit_docker_prune_until": "1s", "opskit_disk_paths": [str(tmp_path)],
             "opskit_report_dir": str(tmp_path / "reports"),
             "maintenance_docker_select_label": select, "maintenance_docker_images": "none",
             "opskit_databases": []}
    play = [{"hosts": "localhost", "gather_facts": False, "roles": [
        {"role": "opskit.runbook.maintenance", "maintenance_docker_select_label": select,
         "maintenance_docker_images": "none"}]}]
    try:
        plan = run_playbook(play, extra, check=True)
        assert plan.rc == 0, plan.stdout[-3000:]
        planned = plan.task("Docker | plan")["ansible_facts"]["__maintenance_stale_containers"]
        assert [c["Names"][0] for c in planned] == ["/%s-drop" % select]
        assert len(client.containers.list(all=True, filters={"label": select})) == 2

        run = run_playbook(play, extra)
        assert run.rc == 0, run.stdout[-3000:]
        left = [c.name for c in client.containers.list(all=True, filters={"label": select})]
        assert left == ["%s-keep" % select]
        assert run.task("Docker | remove the stopped containers")["changed"] is True
    finally:
        for container in made.values():
            try:
                container.remove(force=True)
            except Exception:  # pylint: disable=broad-except
                pass


def test_upgrade_rolls_back_and_restores_the_database(run_playbook, pg, shop, docker_engine, tmp_path):
    import rollout_fixtures  # pylint: disable=import-outside-toplevel
    refs = rollout_fixtures.build_images(docker_engine.client.api, tags=("v1", "exit"))
    name = "opskit-upg-%s" % uuid.uuid4().hex[:8]
    port = free_port()
    rollout_fixtures.run_web(docker_engine.client.api, name, refs["v1"], port)
    extra = _base_vars(tmp_path, pg, shop, opskit_services=[{"name": name, "image": refs["v1"], "timeout": 30,
                                                             "monitor": 1, "pull": "never"}],
                       opskit_upgrade_images={name: refs["exit"]}, opskit_upgrade_restore_db_on_rollback=True)
    try:
        with Webhook() as hook:
            run = run_playbook(playbook("upgrade"), dict(extra, opskit_webhook_url=hook.url))
        assert run.rc == 2, run.stdout[-3000:]  # a rollback is a failed run: CI sees it
        doc = reports(tmp_path / "reports", "upgrade")[-1]
        assert doc["status"] == "failed" and doc["rolled_back"] == [name]
        (service,) = doc["services"]
        assert service["outcome"] == "rolled_back" and service["to"]["image"] == refs["exit"]
        (restored,) = doc["restored"]
        assert restored["name"] == shop and restored["mode"] == "recover" and restored["verification"] == "passed"
        assert restored["backup_id"] == doc["pre_upgrade_backups"][0]
        assert "upgrade rolled back" in hook.posts[0]["json"]["text"]
        assert http_get("http://127.0.0.1:%d/version" % port)[1] == "v1"
        assert pg.psql("SELECT count(*) FROM orders", db=shop).strip() == "300"
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


# ------------------------------------------------------------------ secrets never on a command line


def _secret_files():
    return {n for n in os.listdir("/tmp") if n.startswith("opskit-secret-")}


def _assert_secret_free(run, watcher, *secrets):
    assert watcher.scans > 20, "the /proc watcher hardly ran (%d scans)" % watcher.scans
    assert watcher.hits == [], "a secret on a command line: %s" % watcher.hits[:3]
    text = json.dumps(run.results) + run.stdout + run.stderr
    for secret in secrets:
        where = text.find(secret)
        assert where < 0, "a secret in the task results or the -vvv output, after: %s" % text[max(0, where - 600):where]


def test_daily_secrets_never_reach_a_command_line(run_playbook, pg, shop, tmp_path):
    redis_password = "redis-Pw-%s" % uuid.uuid4().hex
    before = _secret_files()
    with PasswordRedis(redis_password) as redis:
        redis.cli("SET", "greeting", "hello")
        extra = _base_vars(tmp_path, pg, shop,
                           opskit_redis=[{"name": "cache", "host": redis.host, "port": redis.port,
                                          "password": redis_password, "path": redis.root}],
                           opskit_health_checks=[{"name": "shop db", "type": "postgres", "database": shop,
                                                  "password": pg.password},  # a check's own password
                                                 {"name": "cache", "type": "redis", "host": redis.host,
                                                  "port": redis.port, "password": redis_password}])
        with CmdlineWatcher([pg.password, redis_password]) as watcher:
            run = run_playbook(playbook("daily"), extra, env=VERBOSE_BECOME)
        assert run.rc == 0, run.stdout[-3000:]
        assert os.path.exists(os.path.join(redis.root, "dump.rdb"))  # BGSAVE authenticated and ran
    _assert_secret_free(run, watcher, pg.password, redis_password)
    assert "<localhost> EXEC" in run.stdout  # -vvv really showed the remote commands
    assert sorted(os.listdir(tmp_path / "backups")) == ["t-pg-%s" % shop, "t-redis-cache"]
    assert _secret_files() - before == set()  # the 0600 secret files are removed afterwards


def test_maintenance_secrets_never_reach_a_command_line(run_playbook, pg, shop, tmp_path):
    extra = _base_vars(tmp_path, pg, shop, opskit_idle_connection_minutes=60)
    before = _secret_files()
    with CmdlineWatcher([pg.password]) as watcher:
        run = run_playbook(playbook("monthly"), extra, env=VERBOSE_BECOME)
    assert run.rc == 0, run.stdout[-3000:]
    _assert_secret_free(run, watcher, pg.password)
    assert run.task("PostgreSQL | VACUUM (ANALYZE) each database")["changed"] is True
    assert reports(tmp_path / "reports", "monthly")[-1]["maintenance"]["vacuumed"] == [shop]
    assert _secret_files() - before == set()

    # a password with a line break is refused, with a message that does not show it
    first_line = "line1-%s" % uuid.uuid4().hex
    broken = first_line + "\nline2"
    run = run_playbook(playbook("monthly"), dict(extra, opskit_postgres=dict(conn(pg), password=broken)))
    assert run.rc != 0
    doc = reports(tmp_path / "reports", "monthly")[-1]
    assert "line break" in doc["failure"]["msg"] and "Traceback" not in run.stdout
    assert first_line not in json.dumps(run.results) + run.stdout


def test_upgrade_health_check_password_is_masked(run_playbook, pg, shop, docker_engine, tmp_path):
    import rollout_fixtures  # pylint: disable=import-outside-toplevel
    refs = rollout_fixtures.build_images(docker_engine.client.api, tags=("v1", "v2"))
    name = "opskit-upg-%s" % uuid.uuid4().hex[:8]
    port = free_port()
    rollout_fixtures.run_web(docker_engine.client.api, name, refs["v1"], port)
    check = {"name": "shop db", "type": "postgres", "host": pg.host, "port": pg.port, "user": pg.user,
             "password": pg.password, "database": shop}
    extra = _base_vars(tmp_path, pg, shop, opskit_services=[{"name": name, "image": refs["v1"], "timeout": 30,
                                                             "monitor": 1, "pull": "never", "health_checks": [check]}],
                       opskit_upgrade_images={name: refs["v2"]}, upgrade_pre_backup=False)
    try:
        with CmdlineWatcher([pg.password]) as watcher, SyslogCapture() as syslog:
            run = run_playbook(playbook("upgrade"), extra, env=VERBOSE_BECOME)
        assert run.rc == 0, run.stdout[-3000:]
        if syslog.active:  # what the journal (or syslog) gets: the same masked invocation
            # this run's invocation only (another test may run a rollout while /dev/log is ours)
            invoked = [m for m in syslog.messages if "ansible-opskit.runbook.rollout: Invoked with" in m and name in m]
            assert len(invoked) == 1 and "health_checks" in invoked[0] and "'password': '********'" in invoked[0]
            assert not [m for m in syslog.messages if pg.password in m]
        (rollout,) = [r for r in run.results if "health_checks" in r.get("invocation", {}).get("module_args", {})]
        assert rollout["outcome"] == "deployed" and rollout["health"]["status"] == "OK"
        (masked,) = rollout["invocation"]["module_args"]["health_checks"]
        assert masked["password"] == "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER" and masked["database"] == shop
        _assert_secret_free(run, watcher, pg.password)
        assert http_get("http://127.0.0.1:%d/version" % port)[1] == "v2"
    finally:
        for container in docker_engine.client.containers.list(all=True, filters={"name": name}):
            container.remove(force=True)


# ------------------------------------------------------------------ the run lock


def _locked(path):
    """True when another process holds the flock on path."""
    return subprocess.run(["flock", "-n", str(path), "true"], check=False).returncode != 0


def test_run_lock_names_the_holder_and_leaves_the_series_alone(run_playbook, pg, shop, tmp_path):
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    lock = locks / "localhost.lock"
    (locks / "localhost.lock.holder").write_text("weekly run (AWX job 41) from awx-1 as awx, since 2026-12-01T03:00:00Z\n")
    holder = subprocess.Popen(["flock", str(lock), "sleep", "120"], start_new_session=True)  # a run still going
    try:
        deadline = time.monotonic() + 10
        while not _locked(lock) and time.monotonic() < deadline:
            time.sleep(0.05)
        extra = _base_vars(tmp_path, pg, shop, opskit_lock_timeout=2)
        started = time.monotonic()
        run = run_playbook(playbook("daily"), extra)
        assert run.rc != 0
        assert time.monotonic() - started < 60
        msg = reports(tmp_path / "reports", "daily")[-1]["failure"]["msg"]
        assert msg == ("run lock %s is held by weekly run (AWX job 41) from awx-1 as awx, since 2026-12-01T03:00:00Z;"
                       " waited 2 s" % lock), msg
        assert not (tmp_path / "backups").exists()  # nothing was backed up, rotated or verified
    finally:
        os.killpg(holder.pid, signal.SIGKILL)  # flock and its sleep, which holds the lock too
        holder.wait()

    run = run_playbook(playbook("daily"), extra)
    assert run.rc == 0, run.stdout[-3000:]
    assert os.listdir(tmp_path / "backups") == ["t-pg-%s" % shop]
    time.sleep(2.5)  # the holder ends within a second of the release
    assert not _locked(lock)
    assert sorted(os.listdir(locks)) == ["localhost.lock", "localhost.lock.holder"]  # no token left
    assert "daily run from " in (locks / "localhost.lock.holder").read_text()


def test_run_lock_serializes_two_overlapping_runs(run_playbook, tmp_path):
    journal = tmp_path / "journal"

    def play(tag):
        return _lock_play(tag, {"name": "work", "ansible.builtin.shell": "echo start %s >> %s; sleep 2; echo end %s >> %s"
                                % (tag, journal, tag, journal)})

    extra = {"opskit_lock_dir": str(tmp_path / "locks"), "opskit_lock_timeout": 60}
    runs = {}
    threads = [threading.Thread(target=lambda tag=tag: runs.__setitem__(tag, run_playbook(play(tag), extra)))
               for tag in ("cron", "awx")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(run.rc == 0 for run in runs.values()), {tag: run.stdout[-2000:] for tag, run in runs.items()}
    lines = journal.read_text().split()
    first, second = lines[1], lines[5]
    assert lines == ["start", first, "end", first, "start", second, "end", second], lines  # never interleaved


def _lock_play(tag, step):
    lock = {"name": "lock", "ansible.builtin.include_role": {"name": "opskit.runbook.report", "tasks_from": "lock"},
            "vars": {"report_name": tag}}
    unlock = {"name": "unlock", "ansible.builtin.include_role": {"name": "opskit.runbook.report", "tasks_from": "unlock"}}
    return [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "locked", "block": [lock, step], "always": [unlock]}]}]


def _children_named(word):
    """PIDs of this process's children whose command line contains word."""
    out = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(stat[:-4] + "cmdline", "rb") as fh:
                line = fh.read()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == os.getpid() and word.encode() in line:
            out.append(int(stat.split("/")[2]))
    return out


def test_run_lock_of_a_killed_run_names_its_release(run_playbook, tmp_path):
    locks = tmp_path / "locks"
    extra = {"opskit_lock_dir": str(locks), "opskit_lock_timeout": 1, "opskit_lock_ttl": 600}
    killed = {}
    thread = threading.Thread(target=lambda: killed.setdefault("run", run_playbook(
        _lock_play("cron", {"name": "work", "ansible.builtin.command": "sleep 6"}), extra)))
    thread.start()
    deadline = time.monotonic() + 60
    while not [n for n in os.listdir(locks) if n.startswith("localhost.lock.")] if locks.exists() else True:
        assert time.monotonic() < deadline, "the first run never took the lock"
        time.sleep(0.05)
    (pid,) = _children_named("ansible-playbook")
    os.kill(pid, signal.SIGKILL)  # cron's run killed in the middle: it never releases the lock
    thread.join()
    assert killed["run"].rc == -signal.SIGKILL

    waiting = run_playbook(_lock_play("awx", {"name": "work", "ansible.builtin.command": "true"}), extra)
    assert waiting.rc != 0
    msg = waiting.task("report : Lock | it is ours")["msg"]
    assert msg.startswith("run lock %s/localhost.lock is held by cron run from " % locks) and msg.endswith("; waited 1 s")
    token = msg.split("release by hand: rm ", 1)[1].split(")", 1)[0]
    assert os.path.exists(token)
    os.unlink(token)  # what the message tells the operator to do
    time.sleep(1.5)
    again = run_playbook(_lock_play("awx", {"name": "work", "ansible.builtin.command": "true"}), extra)
    assert again.rc == 0, again.stdout[-2000:]


# ------------------------------------------------------------------ daily: independent phases, the stale-backup alarm


def test_daily_health_down_and_redis_unreachable_still_back_up_the_rest(run_playbook, pg, shop, docker_engine, tmp_path):
    conf = tmp_path / "etc-app"
    conf.mkdir()
    (conf / "app.conf").write_text("listen 8080\n")
    volume = docker_engine.client.volumes.create("opskit-t-%s" % uuid.uuid4().hex[:8]).name
    down = free_port()  # nothing listens: the health endpoint and Redis are down
    try:
        with Webhook() as hook:
            extra = _base_vars(tmp_path, pg, shop, opskit_webhook_url=hook.url, opskit_docker={"docker_host": docker_engine.docker_host},
                               opskit_volumes=[{"name": volume, "stop_containers": ["none"]}],
                               opskit_directories=[{"name": "etc-app", "path": str(conf)}],
                               opskit_redis=[{"name": "cache", "host": "127.0.0.1", "port": down, "path": str(tmp_path)}],
                               opskit_health_checks=[{"name": "api health", "type": "http",
                                                      "url": "http://127.0.0.1:%d/health" % down}])
            run = run_playbook(playbook("daily"), extra)
    finally:
        docker_engine.client.volumes.get(volume).remove(force=True)
    assert run.rc != 0
    # every other backup written: the database, the Docker volume, the directory
    assert sorted(os.listdir(tmp_path / "backups")) == ["t-dir-etc-app", "t-pg-%s" % shop, "t-vol-%s" % volume]
    doc = reports(tmp_path / "reports", "daily")[-1]
    outcomes = {a["name"]: a["outcome"] for a in doc["assets"]}
    assert outcomes == {shop: "written", volume: "written", "etc-app": "written", "cache": "failed"}
    msg = doc["failure"]["msg"]
    assert "CRITICAL api health" in msg and "redis cache: Redis | LASTSAVE before the snapshot" in msg, msg
    assert "Could not connect to Redis at 127.0.0.1:%d" % down in msg, msg
    assert "RPO check" in msg or "t-redis-cache has no backup" in msg, msg  # the Redis series has none at all
    assert [f["phase"] for f in doc["failure"]["failures"]] == ["health", "backup"]
    (post,) = hook.posts
    assert "api health" in post["json"]["text"] and "redis cache" in post["json"]["text"]
    assert "Traceback" not in run.stdout


def test_daily_alarms_on_a_series_backdated_two_days(run_playbook, pg, shop, tmp_path):
    import datetime  # pylint: disable=import-outside-toplevel
    old = tmp_path / "old-app"
    old.mkdir()
    (old / "app.conf").write_text("old\n")
    extra = _base_vars(tmp_path, pg, shop, opskit_directories=[{"name": "old-app", "path": str(old)}])
    two_days_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=2)
    first = run_playbook(playbook("daily"), extra, clock=two_days_ago)
    assert first.rc == 0, first.stdout[-3000:]
    weekly = run_playbook(playbook("weekly"), extra)  # weekly checks the declared series too
    assert weekly.rc != 0
    week = reports(tmp_path / "reports", "weekly")[-1]
    assert sorted(week["stale"]) == sorted(["t-pg-%s" % shop, "t-dir-old-app"]), week
    assert "RPO breach (24h): " in week["failure"]["msg"] and "t-dir-old-app is stale" in week["failure"]["msg"]
    old.rename(tmp_path / "moved-away")  # from now on its backup fails: the series stops getting new backups
    with Webhook() as hook:
        run = run_playbook(playbook("daily"), dict(extra, opskit_webhook_url=hook.url))
    assert run.rc != 0
    doc = reports(tmp_path / "reports", "daily")[-1]
    assert doc["stale"] == ["t-dir-old-app"] and doc["missing"] == []
    assert "RPO breach (24h): t-dir-old-app is stale" in doc["failure"]["msg"], doc["failure"]["msg"]
    assert {a["name"]: a["outcome"] for a in doc["assets"]} == {shop: "written", "old-app": "failed"}
    assert "t-dir-old-app is stale" in hook.posts[0]["json"]["text"]
    stale = {b["series"]: b["stale"] for b in doc["backups"]}
    assert stale == {"t-pg-%s" % shop: False, "t-dir-old-app": True}


# ------------------------------------------------------------------ retention: the seeds' 30 days, group overrides merged


def test_retention_keeps_30_days_and_a_group_override_keeps_the_other_keys(run_playbook, tmp_path):
    conf = tmp_path / "etc-app"
    conf.mkdir()
    (conf / "app.conf").write_text("listen 8080\n")
    play = [{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "backup %s" % group, "ansible.builtin.include_role": {"name": "opskit.runbook.backup"},
         "vars": dict({"opskit_location": "file://%s/backups" % tmp_path, "opskit_series_prefix": group + "-",
                       "opskit_databases": [], "opskit_directories": [{"name": "etc-app", "path": str(conf)}]},
                      **overrides)}
        for group, overrides in (("production", {}), ("staging", {"opskit_retention": {"keep_daily": 7}}))]}]
    run = run_playbook(play)
    assert run.rc == 0, run.stdout[-3000:]
    rotated = [r["results"][0] for r in run.results if r["_task"] == "Rotate | apply the retention policy to this host's series"]
    policies = {r["item"]: {k: v for k, v in r["policy"].items() if k.startswith("keep_") and v} for r in rotated}
    assert policies["production-dir-etc-app"] == {"keep_daily": 30, "keep_weekly": 12, "keep_monthly": 12}, policies
    assert policies["staging-dir-etc-app"] == {"keep_daily": 7, "keep_weekly": 12, "keep_monthly": 12}, policies


def test_example_inventory_has_the_seeds_objectives():
    inventory = os.path.join(os.path.dirname(sys.executable), "ansible-inventory")
    out = subprocess.run([inventory, "-i", os.path.join(ROOT, "inventories", "example"), "--list"],
                         capture_output=True, text=True, check=True, timeout=120).stdout
    hostvars = json.loads(out)["_meta"]["hostvars"]
    for host in ("app1.prod.example.com", "app1.staging.example.com"):
        assert (hostvars[host]["opskit_rto"], hostvars[host]["opskit_rpo"]) == ("4h", "24h"), host
    assert "opskit_retention" not in hostvars["app1.prod.example.com"]  # the roles' 30 / 12 / 12
    assert hostvars["app1.staging.example.com"]["opskit_retention"] == {"keep_daily": 7}  # merged into them


def test_example_inventory_health_checks_parse_and_carry_the_seeds_targets(run_playbook):
    """The example inventory's checks (group_vars all + production, then + staging) through the
    real health_check module: its argument spec and check validation accept them (a deadline of
    1 ms ends every probe at once: nothing is measured, every option is checked), the seeds'
    targets are the thresholds; the same list with one misspelled option is refused in one line."""
    group_vars = os.path.join(ROOT, "inventories", "example", "group_vars")

    def run_checks(name, checks):
        return {"name": name, "opskit.runbook.health_check": {"checks": checks, "deadline": 0.001, "fail_on": "never"},
                "register": "__" + name.replace(" ", "_")}
    tasks = []
    for group in ("production", "staging"):
        tasks += [{"name": "vars " + group, "ansible.builtin.include_vars": os.path.join(group_vars, f)}
                  for f in ("all.yml", group + ".yml")]
        tasks.append(run_checks("checks " + group, "{{ opskit_health_checks }}"))
    tasks.append(dict(run_checks("misspelled", "{{ opskit_health_checks[:1] + [opskit_health_checks[1] | combine({'metirc': 'x'})] }}"),
                      ignore_errors=True))
    tasks.append(dict(run_checks("one sample", "{{ [opskit_health_checks[0] | combine({'samples': 1})] }}"), ignore_errors=True))
    run = run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}])
    assert run.rc == 0, run.stdout[-3000:]
    for group in ("production", "staging"):
        result = run.task("checks " + group)
        assert not result.get("failed"), result.get("msg")
        checks = {c["name"]: c for c in result["invocation"]["module_args"]["checks"]}
        assert {c["type"] for c in checks.values()} >= {"http", "metrics", "docker_container", "logs", "tls"}, group
        api, rate, app = checks["api"], checks["gitlab rate limit"], checks["app container"]
        assert api["samples"] > 1 and api["url"] == "https://localhost/health"
        assert (api["thresholds"]["p95_ms"]["warning"], api["thresholds"]["error_pct"]["warning"]) == (200, 5)
        assert (rate["metric"], rate["thresholds"]["value"]["warning"]) == ("gitlab_api_rate_limit_remaining", "100:")
        assert (app["thresholds"]["memory_pct"]["warning"], app["thresholds"]["cpu_pct"]["warning"]) == (80, 70)
        assert checks["app errors"]["thresholds"]["matches"]["warning"] == 0
        assert checks["tls"]["thresholds"]["days_left"]["warning"] == "30:"
        assert [c["name"] for c in result["checks"]] == list(checks), group  # every check was run and reported
    for task, words in (("misspelled", ["checks[1]", "gitlab rate limit", "metirc"]), ("one sample", ["api", "p95_ms", "samples"])):
        bad = run.task(task)
        assert bad["_status"] == "failed" and "\n" not in bad["msg"].strip(), bad.get("msg")
        assert all(word in bad["msg"] for word in words), bad["msg"]
