# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The service operation playbooks (issue 16, item 5): triage, rotate_secret, restart."""

from __future__ import annotations

import hashlib
import json
import socket
import threading
import time
import uuid

import psycopg2
import pytest

from harness import BUSYBOX_IMAGE, free_port, http_get
from roles_fixtures import VERBOSE_BECOME, CmdlineWatcher, conn, playbook, reports
from rollout_fixtures import K8sStandIn, build_images, run_web, wait_http


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
    standin = K8sStandIn()                                           # and two Deployments, one crashing
    standin.add_deployment("shop", "checkout", "registry.example.com/checkout:1", replicas=2)
    standin.add_deployment("shop", "payments", "registry.example.com/payments:crash", replicas=2)
    standin.events.append({"type": "Normal", "reason": "ScalingReplicaSet", "message": "Scaled up replica set payments-r1 to 2",
                           "involvedObject": {"kind": "Deployment", "name": "payments", "namespace": "shop"},
                           "lastTimestamp": "2026-01-01T00:00:00Z", "metadata": {"name": "payments.scaled"}})
    time.sleep(1.5)
    extra = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_postgres": conn(pg), "opskit_log_lines": 5,
             "opskit_kube": {"kubeconfig": standin.kubeconfig(str(tmp_path / "kubeconfig"))},
             "opskit_services": [{"name": prefix + "-web"}, {"name": prefix + "-api"},
                                 {"name": "checkout", "target": "k8s_deployment", "namespace": "shop"},
                                 {"name": "payments", "target": "k8s_deployment", "namespace": "shop"}],
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
        standin.close()
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
    # the pods of each Deployment: status, restarts, recent events, the logs of those not ready
    deployments = {d["name"]: d for d in triage["deployments"]}
    checkout, payments = deployments["checkout"], deployments["payments"]
    assert checkout["summary"] == "2 of 2 pods ready, 0 restarts" and all(not p["logs"] for p in checkout["pods"])
    assert payments["summary"] == "0 of 2 pods ready, 4 restarts" and payments["error"] is None, payments
    pod = payments["pods"][0]
    (app,) = [c for c in pod["containers"] if c["name"] == "app"]
    assert app["state"] == "waiting" and app["reason"] == "CrashLoopBackOff" and app["last_terminated"]["exit_code"] == 3
    assert "app: fatal: cannot read config" in pod["logs"]
    reasons = [(e["reason"], e["object"]) for e in payments["events"]]
    assert reasons[0] == ("ScalingReplicaSet", "Deployment/payments") and ("BackOff", "Pod/" + pod["name"]) in reasons
    assert not any("checkout" in o for _r, o in reasons)


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


def _pod_configs(standin, ns, name):
    """{pod: the resourceVersion of the ConfigMap it read} and whether all its containers are ready."""
    entry = standin.deployments[(ns, name)]
    with standin.lock:
        standin._advance(entry)   # pylint: disable=protected-access
        pods = list(entry["pods"])
    return ({p["metadata"]["name"]: json.loads(p["metadata"]["annotations"]["standin/configmaps"]) for p in pods},
            all(c["ready"] for p in pods for c in p["status"]["containerStatuses"]))


def test_config_update_of_a_configmap(tmp_path, run_playbook):
    """A ConfigMap change rolls the Deployment that reads it (its pods read the new data); a change
    that crashes the new pods puts the old data back and rolls again onto it (the run fails)."""
    standin = K8sStandIn()
    try:
        standin.add_configmap("shop", "checkout-config", {"MODE": "prod", "LEVEL": "info"})
        standin.add_deployment("shop", "checkout", "registry.example.com/checkout:1", replicas=2, config_map="checkout-config")
        base = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks"),
                "opskit_kube": {"kubeconfig": standin.kubeconfig(str(tmp_path / "kubeconfig"))},
                "opskit_services": [{"name": "checkout", "target": "k8s_deployment", "namespace": "shop", "container": "app",
                                     "monitor": 0.3, "timeout": 20}],
                "service_config_configmap": "checkout-config", "service_config_namespace": "shop"}
        good = run_playbook(playbook("config_update"), dict(base, service_config_set={"LEVEL": "debug"}))
        assert good.rc == 0, good.stdout[-3000:]
        config = standin.configmaps[("shop", "checkout-config")]
        assert config["data"] == {"MODE": "prod", "LEVEL": "debug"} and config["metadata"]["resourceVersion"] == "2"
        read, ready = _pod_configs(standin, "shop", "checkout")
        assert len(read) == 2 and set(map(json.dumps, read.values())) == {'{"checkout-config": "2"}'} and ready, read
        assert reports(tmp_path / "reports", "config_update")[-1]["restarted"] == ["restarted"]

        bad = run_playbook(playbook("config_update"), dict(base, service_config_set={"MODE": "crash"}))
        assert bad.rc == 2, bad.stdout[-3000:]
        config = standin.configmaps[("shop", "checkout-config")]
        assert config["data"] == {"MODE": "prod", "LEVEL": "debug"}            # the old data, exactly
        assert config["metadata"]["resourceVersion"] == "4"                    # changed, then put back
        read, ready = _pod_configs(standin, "shop", "checkout")
        assert set(map(json.dumps, read.values())) == {'{"checkout-config": "4"}'} and ready, read   # rolled onto it
        doc = reports(tmp_path / "reports", "config_update")[-1]
        msg = " ".join(doc["failure"]["msg"].split())
        assert doc["status"] == "failed" and "CrashLoopBackOff" in msg, msg
        assert "the old data of ConfigMap shop/checkout-config was put back and the Deployments rolled onto it" in msg

    finally:
        standin.close()


REDIS_APP = """#!/bin/sh
cp /conf/app.env /tmp/env                      # the app reads its configuration when it starts
trap 'kill $HTTPD 2>/dev/null; exit 0' TERM INT
httpd -f -p 127.0.0.1:$1 -h /www & HTTPD=$!
wait $HTTPD
"""

REDIS_CGI = """#!/bin/sh
. /tmp/env
reply=$(printf 'AUTH %s %s\\r\\nPING\\r\\nQUIT\\r\\n' "$REDIS_USER" "$REDIS_PASSWORD" | nc -w 1 127.0.0.1 "$REDIS_PORT" | tr -d '\\r')
case "$reply" in
  +OK*PONG*) echo "Content-Type: text/plain"; echo; echo "redis ok" ;;
  *) echo "Status: 503 Service Unavailable"; echo; echo "redis: $reply" ;;
esac
"""


def _redis(redis, *commands):
    """The replies of inline commands sent to the harness's redis-server (no auth) in one connection."""
    with socket.create_connection((redis.host, redis.port), timeout=5) as sock:
        sock.sendall("".join(c + "\r\n" for c in commands + ("QUIT",)).encode())
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                return data.decode()
            data += chunk


def test_rotate_secret_of_a_redis_acl_user(api, prefix, redis, tmp_path, run_playbook):
    """The app's Redis ACL user gets the new password next to the old one, the app restarts on it
    behind its gate and keeps working, then the old one is removed: it no longer authenticates,
    the new one does, neither shows in the output, and the user is left with one password.
    First, a new password the app mangles (a ``$`` that its shell-sourced config expands) fails
    the gate: the old env file is put back, the app restarted on it, the new password removed
    from the user, the old one still authenticates, and the run fails."""
    user = "app_%s" % uuid.uuid4().hex[:6]
    old, new = "old-Rd-%s" % uuid.uuid4().hex, "new-Rd-%s" % uuid.uuid4().hex
    assert _redis(redis, "ACL SETUSER %s on >%s ~* &* +@all" % (user, old)).startswith("+OK")
    work = tmp_path / "app"
    for sub in ("conf", "www/cgi-bin"):
        (work / sub).mkdir(parents=True)
    env_file = work / "conf" / "app.env"
    env_file.write_text("APP_MODE=prod\nREDIS_USER=%s\nREDIS_PORT=%d\nREDIS_PASSWORD=%s\n" % (user, redis.port, old))
    env_file.chmod(0o644)   # read by the app's user in the container; rotate_secret writes it 0600
    (work / "run.sh").write_text(REDIS_APP)
    (work / "www" / "cgi-bin" / "health").write_text(REDIS_CGI)
    for path in (work, work / "run.sh", work / "www", work / "www" / "cgi-bin", work / "www" / "cgi-bin" / "health"):
        path.chmod(0o755)
    port = free_port()
    name = prefix + "-app"
    host = api.create_host_config(network_mode="host", binds={str(work / "conf"): {"bind": "/conf", "mode": "ro"},
                                                              str(work / "www"): {"bind": "/www", "mode": "ro"},
                                                              str(work / "run.sh"): {"bind": "/run.sh", "mode": "ro"}})
    api.start(api.create_container(BUSYBOX_IMAGE, name=name, command=["/bin/sh", "/run.sh", str(port)], host_config=host,
                                   stop_signal="SIGTERM")["Id"])
    url = "http://127.0.0.1:%d/cgi-bin/health" % port
    wait_http(url, "redis ok")
    started = api.inspect_container(name)["State"]["StartedAt"]
    check = [{"name": "app", "type": "http", "url": url, "status_codes": [200], "body_contains": "redis ok",
              "retries": 10, "interval": 0.25, "timeout": 3}]
    extra = {"opskit_report_dir": str(tmp_path / "reports"), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_services": [{"name": name, "health_checks": check, "monitor": 0.5}],
             "service_rotate_kind": "redis_acl", "service_redis": {"host": redis.host, "port": redis.port},
             "service_rotate_redis_user": user, "service_rotate_env_file": str(env_file), "service_rotate_password": new}
    env_before = env_file.read_text()

    # 1. the gate fails on the new password: everything goes back to the old one
    mangled = "bad-Rd-$PATH-%s" % uuid.uuid4().hex
    quick = [dict(check[0], retries=3)]                # fewer retries on the gate that is to fail
    failed = run_playbook(playbook("rotate_secret"), dict(extra, service_rotate_password=mangled,
                                                          opskit_services=[dict(extra["opskit_services"][0], health_checks=quick)]))
    assert failed.rc != 0
    assert "did not pass their gate on the new password of Redis user %s" % user in " ".join(failed.stdout.split())
    assert env_file.read_text() == env_before                                  # the old env file is back
    state = api.inspect_container(name)["State"]
    assert state["Running"] and state["StartedAt"] != started                 # restarted on it
    assert http_get(url) == (200, "redis ok")
    assert _redis(redis, "AUTH %s %s" % (user, mangled)).startswith("-WRONGPASS")   # the new password was removed
    assert _redis(redis, "AUTH %s %s" % (user, old)).startswith("+OK")             # the old one still works
    acl = _redis(redis, "ACL GETUSER %s" % user)
    assert hashlib.sha256(mangled.encode()).hexdigest() not in acl and acl.count(hashlib.sha256(old.encode()).hexdigest()) == 1
    assert mangled not in failed.stdout + failed.stderr + json.dumps(failed.results)
    doc = reports(tmp_path / "reports", "rotate_secret")[-1]
    assert doc["status"] == "failed", doc
    started = state["StartedAt"]

    # 2. the rotation that passes
    with CmdlineWatcher([old, new]) as watcher:       # -vvv, through su: the remote command lines are shown
        run = run_playbook(playbook("rotate_secret"), extra, env=VERBOSE_BECOME)
    assert run.rc == 0, [(r.get("_task"), r.get("msg")) for r in run.results if r.get("failed") or r.get("_status") == "failed"][:3]
    assert watcher.scans > 20 and watcher.hits == [], watcher.hits[:3]     # never on a command line
    text = json.dumps(run.results) + run.stdout + run.stderr
    assert old not in text and new not in text and "<localhost> EXEC" in run.stdout   # nor in the output
    assert env_file.read_text() == "APP_MODE=prod\nREDIS_USER=%s\nREDIS_PORT=%d\nREDIS_PASSWORD=%s\n" % (user, redis.port, new)
    assert oct(env_file.stat().st_mode & 0o777) == "0o600"
    assert _redis(redis, "AUTH %s %s" % (user, old)).startswith("-WRONGPASS")   # the old password no longer authenticates
    assert _redis(redis, "AUTH %s %s" % (user, new)).startswith("+OK")         # the new one does
    acl = _redis(redis, "ACL GETUSER %s" % user)
    assert acl.count(hashlib.sha256(new.encode()).hexdigest()) == 1 and hashlib.sha256(old.encode()).hexdigest() not in acl
    state = api.inspect_container(name)["State"]
    assert state["Running"] and state["StartedAt"] != started                 # restarted, behind its gate
    assert http_get(url) == (200, "redis ok")
    doc = reports(tmp_path / "reports", "rotate_secret")[-1]
    assert doc["status"] == "passed" and doc["rotated"] == {"redis_user": user, "invalidated": "the old password",
                                                            "env_file": str(env_file)}
