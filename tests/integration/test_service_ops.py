# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service operation playbooks (issue 16, item 5): triage, rotate_secret, restart."""

from __future__ import annotations

import threading
import time
import uuid

import psycopg2
import pytest

from harness import free_port, http_get
from roles_fixtures import conn, playbook, reports
from rollout_fixtures import build_images, run_web, wait_http


@pytest.fixture(scope="module")
def images(api):
    return build_images(api, tags=("v1", "exit"))


def _connect(pg, db, **kw):
    args = dict(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=db)
    args.update(kw)
    return psycopg2.connect(**args)


def _background(pg, db, sql):
    """Run ``sql`` in its own session in a thread (it blocks); returns (connection, thread)."""
    c = _connect(pg, db)

    def run():
        try:
            with c.cursor() as cur:
                cur.execute(sql)
        except psycopg2.Error:
            pass  # cancelled at the end of the test
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return c, t


def test_triage_reports_while_the_app_is_failing(api, images, prefix, pg, tmp_path, run_playbook):
    db = "shop_%s" % uuid.uuid4().hex[:8]
    pg.createdb(db)
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders VALUES (1);", db=db)
    good_port, bad_port = free_port(), free_port()
    run_web(api, prefix + "-web", images["v1"], good_port)
    run_web(api, prefix + "-api", images["exit"], bad_port)     # crash loop (restart unless-stopped)
    wait_http("http://127.0.0.1:%d/version" % good_port, "v1")
    holder = _connect(pg, db)
    holder.autocommit = False
    with holder.cursor() as cur:
        cur.execute("LOCK TABLE orders IN ACCESS EXCLUSIVE MODE")   # held until the end of the test
    sessions = [_background(pg, db, "SELECT count(*) FROM orders"),  # waits for the lock
                _background(pg, db, "SELECT pg_sleep(60)")]          # a long-running query
    time.sleep(1.5)
    extra = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_postgres": conn(pg), "opskit_log_lines": 5,
             "opskit_services": [{"name": prefix + "-web"}, {"name": prefix + "-api"}],
             "opskit_health_checks": [{"name": "api", "type": "http", "url": "http://127.0.0.1:%d/version" % bad_port,
                                       "timeout": 1}],
             "service_long_query_seconds": 1}
    try:
        run = run_playbook(playbook("triage"), extra)
    finally:
        holder.rollback()
        for c, _t in sessions:
            c.cancel()
        holder.close()
    assert run.rc == 0, [(r.get("_task"), [x.get("msg") for x in r.get("results") or [r]][:1]) for r in run.results
                         if r.get("failed") or r.get("_status") == "failed"][:2]
    assert pg.password not in run.stdout
    doc = reports(tmp_path / "reports", "triage")[-1]
    triage = doc["triage"]
    by_name = {c["name"]: c for c in triage["containers"]}
    assert set(by_name) == {prefix + "-web", prefix + "-api"}
    web, bad = by_name[prefix + "-web"], by_name[prefix + "-api"]
    assert web["status"] == "running" and web["resources"]["memory"] and "web v1 starting" in " ".join(web["logs"])
    assert bad["status"] in ("restarting", "exited", "running") and (bad["restarts"] >= 1 or bad["exit_code"] == 3), bad
    assert any("cannot read config" in line for line in bad["logs"]) and len(bad["logs"]) <= 10
    activity = triage["postgres"]
    assert any("pg_sleep(60)" in q["query"] for q in activity["long_running"]), activity
    (waiting,) = [w for w in activity["waiting_locks"] if "FROM orders" in w["query"]]
    assert waiting["blocked_by"] and waiting["database"] == db
    assert triage["health"]["status"] == "CRITICAL" and doc["checks"][0]["name"] == "api"
    assert web["last_rollout"] is None


def _authenticates(pg, user, password):
    try:
        _connect(pg, "postgres", user=user, password=password).close()
        return True
    except psycopg2.OperationalError:
        return False


def test_rotate_secret_in_two_steps_and_a_rolling_restart(api, images, prefix, pg, tmp_path, run_playbook):
    """The app's login goes from blue (old password) to green (new password) in two steps; the app
    restarts behind its gate and serves; the old password no longer authenticates, the new one
    does; neither shows in the output. Then restart.yml restarts the app behind its gate."""
    tag = uuid.uuid4().hex[:6]
    owner, blue, green = "app_%s" % tag, "app_%s_blue" % tag, "app_%s_green" % tag
    old, new = "old-Pw-%s" % uuid.uuid4().hex, "new-Pw-%s'x" % uuid.uuid4().hex   # a quote, escaped in SQL
    pg.psql("CREATE ROLE %s NOLOGIN; CREATE ROLE %s LOGIN PASSWORD '%s' IN ROLE %s; CREATE ROLE %s LOGIN IN ROLE %s;"
            % (owner, blue, old, owner, green, owner))
    env_file = tmp_path / "app.env"
    env_file.write_text("APP_MODE=prod\nDB_USER=%s\nDB_PASSWORD=%s\n" % (blue, old))
    env_file.chmod(0o600)
    port = free_port()
    name = prefix + "-app"
    run_web(api, name, images["v1"], port)
    wait_http("http://127.0.0.1:%d/version" % port, "v1")
    started = api.inspect_container(name)["State"]["StartedAt"]
    check = [{"name": "app", "type": "http", "url": "http://127.0.0.1:%d/cgi-bin/health" % port,
              "status_codes": [200], "retries": 10, "interval": 0.25, "timeout": 2}]
    extra = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_postgres": conn(pg), "opskit_services": [{"name": name, "health_checks": check, "monitor": 0.5}],
             "service_rotate_logins": [blue, green], "service_rotate_env_file": str(env_file),
             "service_rotate_password": new}
    run = run_playbook(playbook("rotate_secret"), extra)
    assert run.rc == 0, [(r.get("_task"), r.get("msg")) for r in run.results if r.get("failed") or r.get("_status") == "failed"][:3]
    assert old not in run.stdout + run.stderr and new not in run.stdout + run.stderr
    assert env_file.read_text() == "APP_MODE=prod\nDB_USER=%s\nDB_PASSWORD=%s\n" % (green, new)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert not _authenticates(pg, blue, old)       # the old password no longer authenticates
    assert _authenticates(pg, green, new)          # the new one does
    app = api.inspect_container(name)["State"]
    assert app["Running"] and app["StartedAt"] != started       # restarted, behind its gate
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v1")
    doc = reports(tmp_path / "reports", "rotate_secret")[-1]
    assert doc["status"] == "passed" and doc["rotated"] == {"login": green, "invalidated": blue, "env_file": str(env_file)}

    run = run_playbook(playbook("restart"), extra)
    assert run.rc == 0, run.stdout[-3000:]
    assert reports(tmp_path / "reports", "restart")[-1]["restarted"] == ["restarted"]
    assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v1")


def test_config_update_that_breaks_the_app_is_put_back(api, images, prefix, tmp_path, run_playbook):
    """The app serves its config file; the gate wants MODE=good. config_update sets MODE=bad: the
    restarted app fails its gate, the old file is put back, the app restarts on it and serves, the
    run fails with one line."""
    conf = tmp_path / "conf"
    conf.mkdir()
    env_file = conf / "app.env"
    env_file.write_text("# app\nMODE=good\nLEVEL=info\n")
    port = free_port()
    name = prefix + "-app"
    host = api.create_host_config(port_bindings={8080: ("127.0.0.1", port)}, binds={str(conf): {"bind": "/www/conf", "mode": "ro"}})
    api.start(api.create_container(images["v1"], name=name, host_config=host)["Id"])
    wait_http("http://127.0.0.1:%d/version" % port, "v1")
    check = [{"name": "config", "type": "http", "url": "http://127.0.0.1:%d/conf/app.env" % port,
              "body_contains": "MODE=good", "retries": 4, "interval": 0.25, "timeout": 2}]
    extra = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_services": [{"name": name, "health_checks": check, "monitor": 0.3}],
             "service_config_file": str(env_file), "service_config_set": {"MODE": "bad"}}
    run = run_playbook(playbook("config_update"), extra)
    assert run.rc == 2, run.stdout[-3000:]
    doc = reports(tmp_path / "reports", "config_update")[-1]
    msg = " ".join(doc["failure"]["msg"].split())
    assert doc["status"] == "failed" and "the old %s was put back" % env_file in msg, msg
    assert "check config CRITICAL" in msg
    assert env_file.read_text() == "# app\nMODE=good\nLEVEL=info\n"
    assert "MODE=good" in http_get("http://127.0.0.1:%d/conf/app.env" % port)[1]
    assert api.inspect_container(name)["RestartCount"] == 0 and api.inspect_container(name)["State"]["Running"]


def test_scale_compose_up_and_down_and_a_deployment(api, images, prefix, tmp_path, run_playbook):
    from rollout_fixtures import K8sStandIn  # pylint: disable=import-outside-toplevel
    from stack_fixtures import ComposeStack  # pylint: disable=import-outside-toplevel
    stack = ComposeStack(api, prefix, str(tmp_path / "web"))
    stack.write(images["v1"])
    stack.up(images["v1"])
    standin = K8sStandIn()
    standin.add_deployment("shop", "checkout", "registry.example.com/checkout:1", replicas=2)
    kubeconfig = standin.kubeconfig(str(tmp_path / "kubeconfig"))
    base = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks")}
    web = {"name": "web", "project": prefix, "monitor": 0.3, "timeout": 20}
    dep = {"name": "checkout", "target": "k8s_deployment", "namespace": "shop", "container": "app",
           "kubeconfig": kubeconfig, "replicas": 4, "monitor": 0.3, "timeout": 20}
    try:
        up = run_playbook(playbook("scale"), dict(base, opskit_services=[dict(web, replicas=3), dep]))
        assert up.rc == 0, up.stdout[-3000:]
        running = sorted(c["Names"][0] for c in api.containers(filters={"label": "com.docker.compose.project=" + prefix}))
        assert running == ["/%s-web-%d" % (prefix, n) for n in (1, 2, 3)]
        for n in (2, 3):
            inspect = api.inspect_container("%s-web-%d" % (prefix, n))
            assert inspect["Config"]["Labels"]["com.docker.compose.container-number"] == str(n)
            assert inspect["Config"]["Image"] == images["v1"]
            assert "web" in inspect["NetworkSettings"]["Networks"][prefix]["Aliases"]
        assert standin.deployments[("shop", "checkout")]["dep"]["spec"]["replicas"] == 4
        assert reports(tmp_path / "reports", "scale")[-1]["scaled"] == [{"from": 1, "to": 3}, {"from": 2, "to": 4}]
        down = run_playbook(playbook("scale"), dict(base, opskit_services=[dict(web, replicas=1)]))
        assert down.rc == 0, down.stdout[-3000:]
        running = [c["Names"][0] for c in api.containers(all=True, filters={"label": "com.docker.compose.project=" + prefix})]
        assert running == ["/%s-web-1" % prefix]
    finally:
        standin.close()
        for net in api.networks(names=[prefix]):
            for c in api.containers(all=True, filters={"network": prefix}):
                api.remove_container(c["Id"], force=True)
            api.remove_network(net["Id"])
