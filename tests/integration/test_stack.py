# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Whole-stack upgrades, start-first rollouts behind nginx, and the compose file that follows
(issue 16 items 2, 3 and 4): ansible-playbook against a real Docker Engine and PostgreSQL."""

from __future__ import annotations

import os
import threading
import time
import uuid

import pytest
import yaml

from harness import Poller, free_port, http_get
from roles_fixtures import conn, playbook, reports
from rollout_fixtures import build_images, run_web, wait_http
from stack_fixtures import ComposeStack, ServiceDNS, nginx_proxy


@pytest.fixture(scope="module")
def images(api):
    return build_images(api, tags=("v1", "v2", "exit", "503"))


def _check(port, want="ok"):
    return [{"name": "web", "type": "http", "url": "http://127.0.0.1:%d/cgi-bin/health" % port,
             "status_codes": [200], "body_contains": want, "retries": 4, "interval": 0.25, "timeout": 2}]


def _play(tasks):
    return [{"hosts": "localhost", "gather_facts": False, "tasks": tasks}]


class Events:
    """The die/start events of the containers named ``names``, watched live for a with-block
    (the daemon keeps only a short backlog): ``seen`` = [(time ns, name, action)]."""

    def __init__(self, api, names):
        self.api, self.names, self.seen = api, set(names), []

    def __enter__(self):
        self.stream = self.api.events(decode=True, filters={"type": "container", "event": ["die", "start"]})
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()
        return self

    def _read(self):
        try:
            for ev in self.stream:
                name = ((ev.get("Actor") or {}).get("Attributes") or {}).get("name")
                if name in self.names:
                    self.seen.append((ev["timeNano"], name, ev["Action"]))
        except Exception:  # pylint: disable=broad-except
            return  # the stream was closed

    def __exit__(self, *exc):
        time.sleep(0.5)
        self.stream.close()


def test_third_service_broken_the_stack_ends_on_its_old_images(api, images, prefix, pg, tmp_path, run_playbook):
    """Three services; the third goes to an image that exits: the third rolls back, then the
    second and the first (newest first); the database is restored with every writer stopped,
    the writers start again behind their gates; all three serve v1; the run exits 2."""
    db = "shop_%s" % uuid.uuid4().hex[:8]
    pg.createdb(db)
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 50);", db=db)
    names = ["%s-%s" % (prefix, n) for n in ("api", "web", "worker")]
    ports = [free_port() for _name in names]
    for name, port in zip(names, ports):
        run_web(api, name, images["v1"], port)
    for port in ports:
        wait_http("http://127.0.0.1:%d/version" % port, "v1")
    services = [{"name": n, "image": images["v1"], "timeout": 20, "monitor": 0.2, "rollback_timeout": 20,
                 "pull": "never", "health_checks": _check(p)} for n, p in zip(names, ports)]
    extra = {"opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(tmp_path / "reports"),
             "opskit_series_prefix": "t-", "opskit_postgres": conn(pg), "opskit_databases": [{"name": db}],
             "opskit_lock_dir": str(tmp_path / "locks"), "opskit_services": services,
             "opskit_upgrade_images": {names[0]: images["v2"], names[1]: images["v2"], names[2]: images["exit"]},
             "opskit_upgrade_restore_db_on_rollback": True}
    with Events(api, names) as watched:
        run = run_playbook(playbook("upgrade"), extra)
    assert run.rc == 2, run.stdout[-4000:]   # a rollback is a failed run, CI sees it
    doc = reports(tmp_path / "reports", "upgrade")[-1]
    assert doc["status"] == "failed" and doc["rolled_back"] == [names[2]]
    by_name = {s["name"]: s for s in doc["services"]}
    assert [s["name"] for s in doc["services"]] == names                     # in the declared order
    assert [by_name[n]["outcome"] for n in names] == ["reverted", "reverted", "rolled_back"]
    assert doc["final"] == {n: images["v1"] for n in names}, doc["final"]
    assert [r["name"] for r in doc["reverted"]] == [names[1], names[0]]     # newest first
    assert all(r["outcome"] == "rolled_back" for r in doc["reverted"])
    (restored,) = doc["restored"]
    assert restored["name"] == db and restored["verification"] == "passed"
    phases = [p["name"] for p in doc["phases"]]
    tail = phases[phases.index("rollout %s" % names[2]):]
    assert tail == ["rollout %s" % names[2], "rollback %s" % names[1], "rollback %s" % names[0],
                    "stop writers", "restore", "start writers"], phases
    # every writer stopped before any started again: the restore ran with none of them running
    events = watched.seen
    last_die = max(t for t, _n, a in events if a == "die")
    restarts = [(t, n) for t, n, a in events if a == "start" and t > last_die]
    assert sorted(n for _t, n in restarts) == sorted(names), events
    assert "each service now runs" in doc["failure"]["msg"] and "rolled back as well" in doc["failure"]["msg"]
    for port in ports:
        assert http_get("http://127.0.0.1:%d/version" % port) == (200, "v1")
    assert pg.psql("SELECT count(*) FROM orders", db=db).strip() == "50"


def _compose_image(stack):
    """The image ``docker compose up -d`` would run for the service: the file, then .env."""
    with open(stack.file) as fh:
        value = yaml.safe_load(fh)["services"][stack.service]["image"]
    if value.startswith("${"):
        name = value[2:-1].split(":-")[0]
        env = {}
        if os.path.exists(stack.env):
            with open(stack.env) as fh:
                env = dict(line.strip().split("=", 1) for line in fh if "=" in line)
        value = env.get(name) or value[2:-1].split(":-", 1)[1]
    return value


def test_start_first_behind_nginx_drops_nothing_and_the_compose_file_follows(api, images, prefix, tmp_path,
                                                                             run_playbook):
    """A Compose service behind nginx goes v1 -> v2 start-first while a request every 20 ms goes
    through the proxy: every one answers 200, both versions answer, the old container goes only
    after the new one passed (the proxy check reached v2 through nginx while v1 still ran). The compose file then names v2; a project whose .env names the
    image gets the new one there; a project that pins a third tag is refused, untouched. A
    container that holds a host port says that start-first was impossible and stops first.
    The proxy check's Authorization header never shows in the -vvv output (issue 14 item 8)."""
    web = ComposeStack(api, prefix, str(tmp_path / "web"))
    web.write(images["v1"])
    web.up(images["v1"])
    api_stack = ComposeStack(api, prefix + "b", str(tmp_path / "api"), service="api")
    api_stack.write("${API_IMAGE}", env="# images\nAPI_IMAGE=%s\n" % images["v1"])
    api_stack.up(images["v1"])
    port = free_port()
    run_web(api, prefix + "-ported", images["v1"], port)
    token = "tok-%s" % uuid.uuid4().hex
    dns = ServiceDNS(api, web.network)
    try:
        with nginx_proxy(dns.port, "web", str(tmp_path / "nginx")) as proxy:
            wait_http(proxy + "/version", "v1")
            proxy_check = [{"name": "through nginx", "type": "http", "url": proxy + "/cgi-bin/health",
                            "headers": {"Authorization": "Bearer " + token}, "status_codes": [200],
                            "body_contains": "ok v2",  # only the new version: the proxy reaches it
                            "retries": 20, "interval": 0.25, "timeout": 2}]
            base = {"target": "compose_service", "pull": "never", "monitor": 0.5, "timeout": 20,
                    "rollback_timeout": 20}
            with Poller(proxy + "/version", every=0.02, timeout=3) as poller:
                run = run_playbook(_play([
                    {"name": "start-first", "opskit.runbook.rollout": dict(
                        base, project=web.project, name="web", image=images["v2"], order="start-first",
                        proxy_checks=proxy_check)},
                    {"name": "env", "opskit.runbook.rollout": dict(base, project=api_stack.project, name="api",
                                                                   image=images["v2"])},
                    {"name": "pin a third tag", "ansible.builtin.lineinfile": {
                        "path": api_stack.env, "regexp": "^API_IMAGE=", "line": "API_IMAGE=" + images["503"]}},
                    {"name": "pinned", "ignore_errors": True, "opskit.runbook.rollout": dict(
                        base, project=api_stack.project, name="api", image=images["v1"])},
                    {"name": "host port", "opskit.runbook.rollout": {
                        "target": "docker_container", "name": prefix + "-ported", "image": images["v2"],
                        "order": "start-first", "pull": "never", "monitor": 0.2, "health_checks": _check(port, "v2")}},
                ]), env={"ANSIBLE_VERBOSITY": "3"})
    finally:
        dns.close()
    assert run.rc == 0, run.stdout[-4000:]
    first, env, pinned, ported = run.task("start-first"), run.task("env"), run.task("pinned"), run.task("host port")
    assert first["outcome"] == "deployed" and first["order"] == "start-first", first
    assert first["proxy"]["status"] == "OK"
    answers = [(status, body) for _t, status, body in poller.samples]
    failed = [a for a in answers if a[0] != 200]
    print("start-first behind nginx: %d requests, %d failed" % (len(answers), len(failed)))
    runs = [[answers[0][1], 0]]
    for _status, body in answers:
        if body != runs[-1][0]:
            runs.append([body, 0])
        runs[-1][1] += 1
    assert len(answers) > 50 and failed == [], runs
    bodies = [b for _s, b in answers]
    assert "v1" in bodies and "v2" in bodies and bodies[-1] == "v2"
    # nginx re-resolves the service name on its own schedule, so the client may see one clean
    # switch or an interleave: neither proves the overlap. The proxy check does: it reached v2
    # through nginx before the old container was stopped (it runs while both are up).
    assert bodies.index("v2") > 0
    names = [c["Names"][0] for c in api.containers(all=True, filters={"label": "com.docker.compose.project=" + prefix})]
    assert names == ["/%s-web-1" % prefix]                       # the new one took the name, the old is gone
    assert first["compose_file"] == {"path": web.file, "from": images["v1"], "to": images["v2"], "changed": True}
    assert _compose_image(web) == images["v2"]                   # docker compose up -d keeps v2
    with open(web.file) as fh:
        assert "image: %s   # the app" % images["v2"] in fh.read()  # only the value changed, the comment stays
    assert env["compose_file"]["path"] == api_stack.env and env["compose_file"]["changed"]
    assert (pinned.get("failed") or pinned.get("_status") == "failed") and images["503"] in pinned["msg"] and api_stack.env in pinned["msg"], pinned
    assert "refusing" in pinned["msg"] and pinned["msg"].count("\n") == 0
    assert http_get("http://127.0.0.1:%d/version" % port)[1] == "v2"
    assert ported["order"] == "stop-first" and "host port %d" % port in ported["order_notes"][0], ported
    assert token not in run.stdout + run.stderr                   # the header is a secret
    (invoked,) = [r for r in run.results if r.get("_task") == "start-first"]
    assert invoked["invocation"]["module_args"]["proxy_checks"][0]["headers"] == {
        "Authorization": "VALUE_SPECIFIED_IN_NO_LOG_PARAMETER"}
    running = api.inspect_container("%sb-api-1" % prefix)["Config"]["Image"]
    assert running == images["v2"]                                # the refused rollout changed nothing
