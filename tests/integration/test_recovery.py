# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Recovery that ends healthy (issue 16 item 1): dr_restore.yml with the writers of the
database declared, against a real Docker Engine and PostgreSQL.

The app is a busybox container on the host network that writes to PostgreSQL (an INSERT every
100 ms) and answers ``/cgi-bin/orders`` with the number of orders it reads there (503 when it
cannot). It runs the host's own psql through ``chroot /host`` (the host's root bind-mounted
read-only), so no client has to be built into an image.
"""

from __future__ import annotations

import datetime
import io
import os
import stat
import tarfile
import time
import uuid

import pytest

from harness import BUSYBOX_IMAGE, free_port, http_get
from roles_fixtures import conn, playbook, reports
from rollout_fixtures import K8sStandIn, build_images, wait_http
from stack_fixtures import ComposeStack, ServiceDNS, nginx_proxy
from test_stack import Events

RUN = """#!/bin/sh
. /app/env
trap 'kill $HTTPD 2>/dev/null; exit 0' TERM INT
httpd -f -p 127.0.0.1:$APP_PORT -h /app/www & HTTPD=$!
while :; do
  chroot /host "$PSQL" -qtAc "INSERT INTO events (at) VALUES (clock_timestamp())" >/dev/null 2>&1
  sleep 0.1 & wait $!
done
"""

ORDERS_CGI = """#!/bin/sh
. /app/env
n=$(chroot /host "$PSQL" -qtAc "SELECT count(*) FROM orders" 2>/dev/null)
if [ -n "$n" ]; then echo "Content-Type: text/plain"; echo; echo "orders $n"
else echo "Status: 503 Service Unavailable"; echo; echo down; fi
"""


@pytest.fixture
def shop(pg):
    name = "shop_%s" % uuid.uuid4().hex[:8]
    pg.createdb(name)
    pg.psql("CREATE TABLE orders (id int PRIMARY KEY, total numeric); "
            "INSERT INTO orders SELECT g, g * 1.5 FROM generate_series(1, 300) g; "
            "CREATE TABLE events (id serial PRIMARY KEY, at timestamptz NOT NULL);", db=name)
    return name


def _app(api, pg, db, name, workdir):
    """Start the app container; returns its base URL once it answers."""
    port = free_port()
    www = os.path.join(workdir, "www", "cgi-bin")
    os.makedirs(www)
    files = {os.path.join(workdir, "run.sh"): RUN, os.path.join(www, "orders"): ORDERS_CGI,
             os.path.join(workdir, "env"): "export PGHOST=%s PGPORT=%d PGUSER=%s PGPASSWORD='%s' PGDATABASE=%s "
                                           "PSQL=%s APP_PORT=%d\n" % (pg.host, pg.port, pg.user, pg.password, db,
                                                                      os.path.join(pg.bin_dir, "psql"), port)}
    for path, text in files.items():
        with open(path, "w") as fh:
            fh.write(text)
        os.chmod(path, stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    os.chmod(workdir, 0o755)
    # The host's psql runs in a chroot of /usr and /etc only. Binding all of "/" would make the
    # app a user of every path: the directory backups of tests running alongside would quiesce
    # (stop and start) it, as volume_backup must for a container that mounts the backed-up path.
    root = os.path.join(workdir, "root")
    for mountpoint in ("usr", "etc"):
        os.makedirs(os.path.join(root, mountpoint))
    for link in ("bin", "lib", "lib64", "sbin"):
        if os.path.islink("/" + link):
            os.symlink(os.readlink("/" + link), os.path.join(root, link))
    os.chmod(root, 0o755)
    host_config = api.create_host_config(network_mode="host", binds={
        root: {"bind": "/host", "mode": "ro"}, "/usr": {"bind": "/host/usr", "mode": "ro"},
        "/etc": {"bind": "/host/etc", "mode": "ro"}, workdir: {"bind": "/app", "mode": "ro"}})
    created = api.create_container(BUSYBOX_IMAGE, name=name, command=["/bin/sh", "/app/run.sh"],
                                   host_config=host_config, stop_signal="SIGTERM")
    api.start(created["Id"])
    url = "http://127.0.0.1:%d/cgi-bin/orders" % port
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        status, body = http_get(url)
        if status == 200:
            return url
        time.sleep(0.1)
    raise AssertionError("the app did not answer: %s %s; logs: %s" % (status, body, api.logs(name)[-500:]))


def _backup(run_playbook, tmp_path, pg, db, volume=None):
    """One pg_backup state=dumped into the series dr_restore reads (<prefix>pg-<name>), and of
    ``volume`` one volume_backup into <prefix>vol-<name>, in the same run."""
    location = "file://%s/backups" % tmp_path
    task = dict(conn(pg), state="dumped", database=[db], series="t-pg-" + db, location=location)
    tasks = [{"name": "backup", "opskit.runbook.pg_backup": task}]
    if volume:
        tasks.append({"name": "backup the volume", "opskit.runbook.volume_backup": {
            "state": "backed_up", "volume": volume, "series": "t-vol-" + volume, "location": location}})
    run = run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}])
    assert run.rc == 0, run.stdout[-3000:]


# The web writer of the volume: httpd serves /www (the volume at /www/data), and a line with the
# next number is appended to /www/data/writes every 100 ms, counting on from the file's last line
# at start, from memory after. A writer still running during the restore, or started before it,
# would leave a gap in the numbers (or the restore would wipe what it wrote).
VOLUME_WRITER = ('trap "exit 0" TERM INT; httpd -f -p 8080 -h /www & n=$(tail -n 1 /www/data/writes 2>/dev/null); '
                 'n=${n:-0}; while :; do n=$((n + 1)); echo $n >> /www/data/writes; sleep 0.1 & wait $!; done')


def _volume_files(api, container):
    """{relative path: bytes} of the regular files under /www/data (the container may be stopped)."""
    stream, _stat = api.get_archive(container, "/www/data")
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        return {m.name.split("/", 1)[1]: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def _put_files(api, container, files):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    assert api.put_archive(container, "/www/data", buf.getvalue())


def _numbers(data):
    return [int(line) for line in data.decode().split()]


def _process_created_at(pid):
    """When the process ``pid`` was forked, in epoch seconds, rounded down to the kernel's clock
    tick (its start time counts in ticks since boot)."""
    with open("/proc/%d/stat" % pid) as fh:
        ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
    booted = time.time() - time.clock_gettime(time.CLOCK_BOOTTIME)
    return booted + ticks / os.sysconf("SC_CLK_TCK")


def _count(pg, db, sql):
    return int(pg.psql(sql, db=db).strip())


def test_recovery_stops_the_writer_restores_starts_it_and_ends_healthy(api, pg, shop, prefix, tmp_path, run_playbook):
    app = prefix + "-app"
    url = _app(api, pg, shop, app, str(tmp_path / "app"))
    deadline = time.monotonic() + 10
    while _count(pg, shop, "SELECT count(*) FROM events") < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(pg, shop, "SELECT count(*) FROM events") >= 3   # the app writes to the database
    writer = {"name": app, "timeout": 30, "health_checks": [
        {"name": "app", "type": "http", "url": url, "status_codes": [200], "body_contains": "orders 300",
         "retries": 10, "interval": 0.2, "timeout": 2}]}
    database = {"name": shop, "writers": [writer],
                "verify_queries": [{"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "300"}]}
    extra = {"opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(tmp_path / "reports"),
             "opskit_series_prefix": "t-", "opskit_postgres": conn(pg), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_databases": [database], "opskit_dr_confirm": "overwrite-production",
             "opskit_restore_health_checks": [{"name": "app serves the restored orders", "type": "http", "url": url,
                                               "status_codes": [200], "body_contains": "orders 300"}]}
    _backup(run_playbook, tmp_path, pg, shop)
    pg.psql("DELETE FROM orders WHERE id > 100", db=shop)            # the incident
    assert http_get(url)[1].strip() == "orders 100"

    # 0. one writer declared differently under two assets: refused before anything is touched
    twice = dict(database, name=shop + "_copy", writers=[dict(writer, timeout=5)])
    with Events(api, [app]) as watched:
        conflicting = run_playbook(playbook("dr_restore"), dict(extra, opskit_databases=[database, twice]))
    assert conflicting.rc != 0 and watched.seen == []
    assert "writers declared differently under several assets: docker_container///%s;" % app in conflicting.stdout

    # 1. a writer that cannot be stopped: a container started with --rm, and a missing one
    rm = prefix + "-rm"
    api.start(api.create_container(BUSYBOX_IMAGE, name=rm, command=["sleep", "600"],
                                   host_config=api.create_host_config(auto_remove=True))["Id"])
    refused_db = dict(database, writers=[writer, {"name": rm}, {"name": prefix + "-missing"}])
    with Events(api, [app, rm]) as watched:
        refused = run_playbook(playbook("dr_restore"), dict(extra, opskit_databases=[refused_db]))
    assert refused.rc != 0
    assert "recovery refused before anything was stopped or restored" in refused.stdout
    assert "writer %s:" % rm in refused.stdout and "writer %s-missing:" % prefix in refused.stdout
    assert "writer %s:" % app not in refused.stdout                   # the stoppable one is not blamed
    assert watched.seen == []                                         # nothing was stopped
    assert _count(pg, shop, "SELECT count(*) FROM orders") == 100     # nothing was restored
    doc = reports(tmp_path / "reports", "dr_restore")[-1]
    assert doc["status"] == "failed" and doc["failed_step"] == "check writers"
    assert [w["state"] for w in doc["writers"]] == ["running (untouched)"] * 3
    assert api.inspect_container(app)["State"]["Running"] and api.inspect_container(rm)["State"]["Running"]

    # 2. the recovery: stop, restore, verify, start behind the gate, health gate
    with Events(api, [app]) as watched:
        run = run_playbook(playbook("dr_restore"), extra)
    assert run.rc == 0, run.stdout[-4000:]
    actions = [(a, t) for t, _n, a in watched.seen]
    assert [a for a, _t in actions] == ["die", "start"], watched.seen  # stopped once, started once
    died, started = actions[0][1], actions[1][1]
    assert _count(pg, shop, "SELECT count(*) FROM orders") == 300     # the backup's data
    status, body = http_get(url)
    assert status == 200 and body.strip() == "orders 300"            # the app serves it
    # no write landed while the writer was stopped (the restored table would keep it). The window
    # ends when the new writer's process was created: Docker logs "start" only after the process
    # runs, and its first INSERT can commit before that event.
    created = _process_created_at(api.inspect_container(app)["State"]["Pid"])
    assert died / 1e9 < created <= started / 1e9 + 0.01, (died, created, started)
    window = [datetime.datetime.fromtimestamp(t, datetime.timezone.utc).isoformat()
              for t in (died / 1e9, min(created, started / 1e9))]
    assert _count(pg, shop, "SELECT count(*) FROM events WHERE at > '%s' AND at < '%s'" % tuple(window)) == 0
    deadline = time.monotonic() + 10                                   # and the writer writes again
    while _count(pg, shop, "SELECT count(*) FROM events WHERE at > '%s'" % window[1]) == 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _count(pg, shop, "SELECT count(*) FROM events WHERE at > '%s'" % window[1]) > 0
    doc = reports(tmp_path / "reports", "dr_restore")[-1]
    assert doc["status"] == "passed" and doc["failed_step"] is None, doc
    assert doc["writers"] == [{"name": app, "target": "docker_container", "state": "running, passed its gate",
                               "ready_at": doc["writers"][0]["ready_at"]}]
    (asset,) = doc["assets"]
    assert asset["verification"] == "passed" and asset["writers"] == [app]
    # the RTO runs from the first stop to healthy: it covers the writer's downtime, the asset's
    # restore + checks, and the asset's own RTO (until its writer passed its gate)
    assert doc["stack_rto_seconds"] >= (started - died) / 1e9
    assert doc["stack_rto_seconds"] >= asset["rto_seconds"] == doc["rto_seconds"] >= asset["restore_seconds"] > 0
    assert asset["rto_seconds"] >= (started - died) / 1e9
    assert [p["name"] for p in doc["phases"]] == ["stop writers", "postgres " + shop, "start writers and health gate"]


def test_recovery_that_fails_says_where_and_in_which_state_the_writer_is(api, pg, shop, prefix, tmp_path, run_playbook):
    """A restore whose checks fail leaves the writer stopped; a failed health gate after the
    start leaves it running, and both runs say so."""
    app = prefix + "-app"
    url = _app(api, pg, shop, app, str(tmp_path / "app"))
    database = {"name": shop, "writers": [{"name": app, "timeout": 30}],
                "verify_queries": [{"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "301"}]}
    extra = {"opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(tmp_path / "reports"),
             "opskit_series_prefix": "t-", "opskit_postgres": conn(pg), "opskit_lock_dir": str(tmp_path / "locks"),
             "opskit_databases": [database], "opskit_dr_confirm": "overwrite-production"}
    _backup(run_playbook, tmp_path, pg, shop)
    run = run_playbook(playbook("dr_restore"), extra)
    assert run.rc != 0
    assert "THE WRITERS ARE LEFT STOPPED: %s" % app in run.stdout
    assert not api.inspect_container(app)["State"]["Running"]
    assert http_get(url)[0] != 200
    doc = reports(tmp_path / "reports", "dr_restore")[-1]
    assert doc["status"] == "failed" and doc["failed_step"] == "verify", doc
    assert doc["writers"][0]["state"] == "stopped (left stopped: the restore failed)"
    assert "returned '300', expected '301'" in doc["assets"][0]["error"]
    assert doc["stack_rto_seconds"] is None and doc["rto_seconds"] is None, doc   # not recovered: no RTO
    assert doc["assets"][0]["restore_seconds"] > 0

    # the same recovery with the right checks, whose health gate fails after the writer started
    closed = free_port()
    gate = [{"name": "stack", "type": "http", "url": "http://127.0.0.1:%d/" % closed, "timeout": 1}]
    database["verify_queries"][0]["expect"] = "300"
    run = run_playbook(playbook("dr_restore"), dict(extra, opskit_restore_health_checks=gate))
    assert run.rc != 0
    assert "the data is restored and the writers started, but the health gate failed" in run.stdout
    assert api.inspect_container(app)["State"]["Running"] and http_get(url)[0] == 200
    doc = reports(tmp_path / "reports", "dr_restore")[-1]
    assert doc["status"] == "failed" and doc["failed_step"] == "health gate", doc
    assert doc["writers"][0]["state"] == "running, passed its gate"
    assert doc["assets"][0]["verification"] == "passed" and doc["stack_rto_seconds"] is None


def test_recovery_of_compose_and_deployment_writers_behind_nginx(api, pg, shop, prefix, tmp_path, run_playbook):
    """Writers declared as a Compose service (behind nginx) and a Deployment (the Kubernetes
    stand-in). A first recovery whose Compose writer fails its own gate at start fails loudly:
    the failed step, each writer's state (the Deployment is left stopped, and said to be), no
    RTO. The same recovery with the right gate brings both back, and the proxy check passes.
    The Compose service also writes to a named volume (an opskit_volumes asset with that writer):
    it is restored between the stop and the start, to exactly the backed-up content, and the
    proxy serves the restored page from it."""
    images = build_images(api, tags=("v1",))
    stack = ComposeStack(api, prefix, str(tmp_path / "web"))
    stack.write(images["v1"])
    uploads = prefix + "-uploads"
    web = stack.up(images["v1"], binds={uploads: {"bind": "/www/data", "mode": "rw"}},
                   command=["/bin/sh", "-c", VOLUME_WRITER])
    page = ("catalogue %s\n" % uuid.uuid4().hex).encode()
    _put_files(api, web, {"page.html": page, "img/logo.txt": b"logo\n"})
    standin = K8sStandIn()
    standin.add_deployment("shop", "checkout", "registry.example.com/checkout:1", replicas=2)
    dns = ServiceDNS(api, stack.network)
    try:
        with nginx_proxy(dns.port, "web", str(tmp_path / "nginx")) as proxy:
            wait_http(proxy + "/version", "v1")

            def through_proxy(want, retries):
                return [{"name": "web through the proxy", "type": "http", "url": proxy + "/version", "status_codes": [200],
                         "body_contains": want, "retries": retries, "interval": 0.25, "timeout": 2}]
            compose = {"name": "web", "target": "compose_service", "project": prefix, "timeout": 20, "monitor": 0.3}
            deployment = {"name": "checkout", "target": "k8s_deployment", "namespace": "shop", "container": "app",
                          "kubeconfig": standin.kubeconfig(str(tmp_path / "kubeconfig")), "timeout": 20, "monitor": 0.3}
            database = {"name": shop, "writers": [dict(compose, health_checks=through_proxy("v2", 2)), deployment],
                        "verify_queries": [{"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "300"}]}
            volume = {"name": uploads, "writers": database["writers"][:1], "min_files": 3}  # the same writer: one stop, one start
            page_check = {"name": "the restored page through the proxy", "type": "http", "url": proxy + "/data/page.html",
                          "status_codes": [200], "body_contains": page.decode().strip()}
            extra = {"opskit_location": "file://%s/backups" % tmp_path, "opskit_report_dir": str(tmp_path / "reports"),
                     "opskit_series_prefix": "t-", "opskit_postgres": conn(pg), "opskit_lock_dir": str(tmp_path / "locks"),
                     "opskit_databases": [database], "opskit_dr_confirm": "overwrite-production",
                     "opskit_restore_health_checks": through_proxy("v1", 10)}
            deadline = time.monotonic() + 10
            while len(_numbers(_volume_files(api, web).get("writes", b""))) < 3 and time.monotonic() < deadline:
                time.sleep(0.1)
            api.stop(web, timeout=10)           # a known content to back up (and to compare with)
            backed_up = _volume_files(api, web)
            assert _numbers(backed_up["writes"]) == list(range(1, len(_numbers(backed_up["writes"])) + 1)) != [], backed_up
            _backup(run_playbook, tmp_path, pg, shop, volume=uploads)
            api.start(web)
            pg.psql("DELETE FROM orders WHERE id > 100", db=shop)
            _put_files(api, web, {"page.html": b"defaced\n", "junk.bin": b"x" * 100})   # the incident
            wait_http(proxy + "/data/page.html", "defaced")

            # 1. the Compose writer fails its own gate at start (it answers v1, its gate wants v2)
            with Events(api, [web]) as watched:
                failed = run_playbook(playbook("dr_restore"), extra)
            assert failed.rc != 0
            assert "the data is restored, but a writer failed its gate after the start" in failed.stdout
            assert "writers: web started, failed its gate" in " ".join(failed.stdout.split())
            assert [a for _t, _n, a in watched.seen] == ["die", "start"], watched.seen
            assert _count(pg, shop, "SELECT count(*) FROM orders") == 300            # restored, verified
            doc = reports(tmp_path / "reports", "dr_restore")[-1]
            assert doc["status"] == "failed" and doc["failed_step"] == "start writers", doc
            states = {w["name"]: (w["target"], w["state"]) for w in doc["writers"]}
            assert states["web"][0] == "compose_service" and states["web"][1].startswith("started, failed its gate ("), states
            assert states["checkout"] == ("k8s_deployment", "stopped (not started: an earlier writer failed its gate)")
            assert standin.deployments[("shop", "checkout")]["dep"]["spec"]["replicas"] == 0   # as reported
            assert doc["stack_rto_seconds"] is None and doc["rto_seconds"] is None

            # 2. the right gate, and the volume too: both writers back behind their gates, then the
            # proxy checks (the app, and the restored page)
            database["writers"][0] = volume["writers"][0] = dict(compose, health_checks=through_proxy("v1", 10))
            with Events(api, [web]) as watched:
                run = run_playbook(playbook("dr_restore"), dict(extra, opskit_volumes=[volume], opskit_restore_health_checks=(
                    through_proxy("v1", 10) + [page_check])))
                after = _volume_files(api, web)
            assert run.rc == 0, run.stdout[-4000:]
            assert [a for _t, _n, a in watched.seen] == ["die", "start"], watched.seen   # stopped once, started once
            # exactly the backed-up files; the writes log is the backed-up one, then counted on
            # from its last line without a gap: nothing was written between the stop and the
            # restore, nor wiped by a restore after the start
            assert {k: v for k, v in after.items() if k != "writes"} == {k: v for k, v in backed_up.items() if k != "writes"}
            written = _numbers(after["writes"])
            assert written[:len(_numbers(backed_up["writes"]))] == _numbers(backed_up["writes"])
            assert written == list(range(1, len(written) + 1)), written
            assert http_get(proxy + "/data/page.html") == (200, page.decode().strip())
            doc = reports(tmp_path / "reports", "dr_restore")[-1]
            assert doc["status"] == "passed" and doc["failed_step"] is None, doc
            assert [(w["name"], w["target"], w["state"]) for w in doc["writers"]] == [
                ("web", "compose_service", "running, passed its gate"), ("checkout", "k8s_deployment", "running, passed its gate")]
            assert standin.deployments[("shop", "checkout")]["dep"]["spec"]["replicas"] == 2
            assert http_get(proxy + "/version") == (200, "v1") and api.inspect_container(web)["State"]["Running"]
            assert doc["stack_rto_seconds"] >= doc["assets"][0]["restore_seconds"] > 0
            assert [(a["name"], a["ok"], a["writers"]) for a in doc["assets"]] == [(shop, True, ["web", "checkout"]), (uploads, True, ["web"])]
            assert [p["name"] for p in doc["phases"]] == ["stop writers", "postgres " + shop, "volume " + uploads,
                                                          "start writers and health gate"]
            stops = [(m, p) for m, p, _c in standin.requests if m == "PATCH" and p.endswith("/deployments/checkout")]
            assert len(stops) == 2    # stopped (replicas 0) by the first run, left stopped, started by the second
    finally:
        standin.close()
        dns.close()
