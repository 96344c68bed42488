# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The demo behind `make demo` (run by scripts/demo.sh after the bootstrap).

Starts a throwaway PostgreSQL with a sample database (the Postgres class of the integration
harness, tests/integration/harness.py: initdb as an unprivileged user, scram auth on 127.0.0.1),
and, when a Docker Engine answers or can be started (the harness's DockerEngine.script, that is
scripts/docker-engine.sh), a sample volume; turns on WAL archiving of the PostgreSQL (archive_mode,
archive_command = opskit-wal, archive_timeout 1 s, a restart; the daily run's backup role takes a
base backup); runs playbooks/daily.yml then playbooks/dr_drill.yml against
inventories/local with file:// storage under demo/; prints the measured RTO and RPO (for the
point-in-time recovery, the RPO measured by a marker) and where the report is; stops what it started.
"""

from __future__ import annotations

import getpass
import glob
import io
import json
import os
import shlex
import subprocess
import sys
import tarfile
import time
import uuid

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))

import harness  # noqa: E402  (tests/integration/harness.py: one implementation of "start PostgreSQL")
import pitr_fixtures  # noqa: E402  (tests/integration/pitr_fixtures.py: opskit-wal installed beside a cluster)

DEMO = os.path.abspath(os.environ.get("OPSKIT_DEMO_DIR") or os.path.join(ROOT, "demo"))
ORDERS = 5000


def say(msg):
    print("demo: %s" % msg, flush=True)


def sample_database(pg):
    pg.createdb("shop")
    pg.psql("""
        CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL);
        CREATE TABLE orders (id int PRIMARY KEY, customer_id int REFERENCES customers, total numeric(10,2));
        INSERT INTO customers SELECT g, 'customer ' || g FROM generate_series(1, 500) g;
        INSERT INTO orders SELECT g, 1 + g %% 500, (g * 7 %% 1000) / 10.0 FROM generate_series(1, %d) g;
    """ % ORDERS, db="shop")
    checksum = pg.psql("SELECT md5(string_agg(id || ':' || customer_id || ':' || total, ',' ORDER BY id)) FROM orders",
                       db="shop").strip()
    return checksum


PITR_CLUSTER = "main"  # its series: demo-pg-main-physical


def archiving_on(pg):
    """archive_mode = on, archive_command = opskit-wal (in DEMO/pitr), archive_timeout 1 s, and a
    restart; the server's user must reach DEMO to archive into it. Returns (its user name, None),
    or (None, why not)."""
    # the user the harness runs the server as
    account = harness._pg_system_user()  # pylint: disable=protected-access
    user = account.pw_name if account else getpass.getuser()
    if account is not None:
        path = DEMO
        while path != os.path.dirname(path):
            path = os.path.dirname(path)
            if not os.stat(path).st_mode & 0o001:
                return None, "the server's user %s cannot reach %s (no o+x on %s)" % (user, DEMO, path)
        os.chmod(DEMO, 0o755)
        series = os.path.join(DEMO, "backups", "demo-pg-%s-physical" % PITR_CLUSTER)
        for sub in (os.path.join(DEMO, "backups"), series, os.path.join(series, "wal")):
            os.makedirs(sub, exist_ok=True)
        for sub in (series, os.path.join(series, "wal")):
            os.chown(sub, account.pw_uid, account.pw_gid)
    # opskit-wal with its lib (the built collection) and its 0600 config, as the backup role's
    # tasks_from=pitr_archive installs it (tests/integration/pitr_fixtures.py; faster for a demo)
    helper = pitr_fixtures.install_helper(os.path.join(DEMO, "pitr"), "file://%s/backups" % DEMO,
                                          "demo-pg-%s-physical" % PITR_CLUSTER, account)
    pg.psql("ALTER SYSTEM SET archive_mode = on")
    pg.psql("ALTER SYSTEM SET archive_timeout = 1")
    pg.psql("ALTER SYSTEM SET archive_command = '%s push %%p %%f'" % " ".join(shlex.quote(a) for a in helper).replace("'", "''"))
    pg._run_as_owner([os.path.join(pg.bin_dir, "pg_ctl"), "-D", pg.data, "-l", pg.log, "-w", "-t", "60",  # pylint: disable=protected-access
                      "-m", "fast", "restart"], start_new_session=True)
    return user, None


def pitr_vars(pg, user):
    return {
        "opskit_pitr_clusters": [{"name": PITR_CLUSTER, "marker_database": "shop", "verify_queries": [
            {"name": "all orders recovered", "query": "SELECT count(*) FROM orders", "expect": str(ORDERS)}]}],
        "opskit_pitr_base_daily": True,  # the daily run takes the base backup (weekly.yml does, by default)
        "opskit_pitr_dir": os.path.join(DEMO, "pitr"), "opskit_pitr_config": os.path.join(DEMO, "pitr", "wal.json"),
        "opskit_pitr_os_user": user, "opskit_pitr_rpo": "1min",
    }


def _first_line(exc):
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def engine_up():
    """Reuse or start the Docker Engine and build the local image; return (started, why not)."""
    try:
        started = harness.DockerEngine.script("up", timeout=120) == "started"
    except harness.EngineScriptError as exc:
        return False, (exc.output.splitlines() or [str(exc)])[-1]
    except (subprocess.SubprocessError, OSError) as exc:
        return False, _first_line(exc)
    try:
        harness.DockerEngine.script("image", timeout=120)
    except harness.EngineScriptError as exc:
        return started, "cannot build the local image: %s" % exc.output
    except (subprocess.SubprocessError, OSError) as exc:
        return started, _first_line(exc)
    return started, None


def fill_volume(client):
    """Create a sample volume with 20 files; return (name, files)."""
    name = "opskit-demo-%s-uploads" % uuid.uuid4().hex[:8]
    client.volumes.create(name, labels={"opskit.demo": "true"})
    # fill it through the archive API of a created (never started) container
    helper = client.containers.create(harness.BUSYBOX_IMAGE, command=["true"],
                                      volumes={name: {"bind": "/data", "mode": "rw"}}, labels={"opskit.demo": "true"})
    buf = io.BytesIO()
    files = 0
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for i in range(20):
            data = ("upload %d\n" % i).encode() * (50 + i)
            info = tarfile.TarInfo("uploads/file-%02d.txt" % i)
            info.size, info.mtime, info.mode = len(data), int(time.time()), 0o644
            tar.addfile(info, io.BytesIO(data))
            files += 1
    helper.put_archive("/data", buf.getvalue())
    helper.remove()
    return name, files


def docker_volume():
    """Start (or reuse) the Docker Engine and create a sample volume; return (name, files, started, why)."""
    started, why = engine_up()
    if why:
        return None, 0, started, why
    try:
        import docker  # pylint: disable=import-outside-toplevel
        import requests  # pylint: disable=import-outside-toplevel
    except ImportError as exc:
        return None, 0, started, _first_line(exc)
    try:
        client = docker.from_env()
        try:
            name, files = fill_volume(client)
        finally:
            client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        return None, 0, started, _first_line(exc)
    return name, files, started, None


def remove_volume(name):
    import docker  # pylint: disable=import-outside-toplevel
    import requests  # pylint: disable=import-outside-toplevel
    try:
        client = docker.from_env()
        client.volumes.get(name).remove(force=True)
        client.close()
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        say("could not remove the sample volume %s: %s" % (name, exc))


def stop_engine():
    """Stop the Docker Engine this demo started."""
    try:
        harness.DockerEngine.script("down")
    except (harness.EngineScriptError, subprocess.SubprocessError, OSError) as exc:
        say("could not stop the Docker Engine: %s" % exc)


def playbook(name, extra_vars_file):
    env = dict(os.environ,
               ANSIBLE_COLLECTIONS_PATH=harness.COLLECTIONS,
               ANSIBLE_DISPLAY_SKIPPED_HOSTS="false",
               ANSIBLE_RETRY_FILES_ENABLED="0",
               ANSIBLE_PIPELINING="1",
               ANSIBLE_FORCE_COLOR=os.environ.get("ANSIBLE_FORCE_COLOR", "0"))
    env.pop("ANSIBLE_CONFIG", None)
    log = os.path.join(DEMO, "logs", "%s.log" % name)
    say("running playbooks/%s.yml (output in %s)" % (name, os.path.relpath(log)))
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.run([os.path.join(harness.VENV_BIN, "ansible-playbook"), "-i", os.path.join(ROOT, "inventories", "local"),
                               os.path.join(ROOT, "playbooks", "%s.yml" % name), "-e", "@" + extra_vars_file],
                              cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                              check=False)
    took = time.monotonic() - t0
    if proc.returncode:
        with open(log) as fh:
            sys.stdout.write("".join(fh.readlines()[-40:]))
        raise SystemExit("demo: playbooks/%s.yml failed (exit %d); full output in %s" % (name, proc.returncode, log))
    say("playbooks/%s.yml passed in %.1f s" % (name, took))


def newest(pattern):
    paths = sorted(glob.glob(pattern), key=os.path.getmtime)
    return paths[-1] if paths else None


def fmt(seconds):
    if seconds is None:
        return "not measured"
    return "%.1f s" % seconds if seconds < 120 else "%.1f min" % (seconds / 60)


def main():
    t_start = time.monotonic()
    for sub in ("backups", "reports", "logs"):
        os.makedirs(os.path.join(DEMO, sub), exist_ok=True)
    pg = harness.Postgres()
    volume, docker_started = None, False
    try:
        say("starting an embedded PostgreSQL 15 on 127.0.0.1 (initdb as an unprivileged user)")
        pg.start()
        checksum = sample_database(pg)
        say("sample database 'shop' on port %d: 500 customers, %d orders (md5 %s)" % (pg.port, ORDERS, checksum[:12]))

        pitr_user, pitr_why = archiving_on(pg)
        if pitr_user:
            say("WAL archiving on: archive_command = opskit-wal, archive_timeout 1 s")
        else:
            say("SKIPPING the point-in-time recovery part: %s" % pitr_why)

        volume, files, docker_started, why = docker_volume()
        if volume:
            say("sample Docker volume %s with %d files" % (volume, files))
        else:
            say("SKIPPING the Docker volume part: no Docker Engine can run here (%s)" % why)

        extra = {
            "opskit_location": "file://%s/backups" % DEMO,
            "opskit_report_dir": "%s/reports" % DEMO,
            "opskit_series_prefix": "demo-",
            "opskit_postgres": {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password,
                                "bin_dir": pg.bin_dir},
            "opskit_databases": [{"name": "shop", "verify_queries": [
                {"name": "all orders restored", "query": "SELECT count(*) FROM orders", "expect": str(ORDERS)},
                {"name": "orders identical", "expect": checksum,
                 "query": "SELECT md5(string_agg(id || ':' || customer_id || ':' || total, ',' ORDER BY id)) FROM orders"},
            ]}],
            "opskit_volumes": [{"name": volume, "stop_containers": ["none"], "min_files": files}] if volume else [],
            "opskit_health_checks": [{"name": "shop database", "type": "postgres", "database": "shop"}],
            "opskit_disk_paths": [DEMO],
        }
        if pitr_user:
            extra.update(pitr_vars(pg, pitr_user))
        vars_file = os.path.join(DEMO, "vars.json")
        with open(os.open(vars_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            json.dump(extra, fh, indent=2)

        playbook("daily", vars_file)
        playbook("dr_drill", vars_file)

        report = newest(os.path.join(DEMO, "reports", "dr_drill-*.json"))
        with open(report) as fh:
            doc = json.load(fh)
        print()
        print("DR drill %s on %s (targets: RTO %s, RPO %s)"
              % (doc["status"].upper(), doc["host"], doc["targets"]["rto"], doc["targets"]["rpo"]))
        for asset in doc["assets"]:
            print("  %-8s %-34s restored + verified in %-9s RPO %-9s (%s, backup %s)" % (
                asset["kind"], asset["name"], fmt(asset["rto_seconds"]), fmt(asset["rpo_seconds"]),
                asset["verification"], asset["backup_id"]))
        print("  measured RTO %s (%s), RPO %s (%s)" % (
            fmt(doc["rto_seconds"]), "met" if doc["rto_met"] else "MISSED",
            fmt(doc["rpo_seconds"]), "met" if doc["rpo_met"] else "MISSED"))
        if doc.get("pitr_rpo_seconds") is not None:
            rpo = doc["pitr_rpo_seconds"]
            print("  point-in-time recovery: RPO by marker %s (a commit until its WAL was archived; goal < 5 s: %s),"
                  " restored to that second and verified" % (fmt(rpo), "met" if rpo < 5 else "MISSED"))
        if not pitr_user:
            print("  (point-in-time recovery part skipped: %s)" % pitr_why)
        if not volume:
            print("  (Docker volume part skipped: %s)" % why)
        print("  report: %s" % report[:-5] + ".html")
        print("  JSON:   %s" % report)
        print("  daily report: %s" % newest(os.path.join(DEMO, "reports", "daily-*.html")))
        print("  backups: %s/backups" % DEMO)
        print()
        say("done in %.0f s" % (time.monotonic() - t_start))
    finally:
        if volume:
            remove_volume(volume)
        pg.stop()
        if docker_started:
            stop_engine()


if __name__ == "__main__":
    main()
