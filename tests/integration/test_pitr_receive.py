# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""WAL archiving with ``opskit-wal receive`` (pg_receivewal from a replication slot) against a real
PostgreSQL 15 cluster: segments at the location with their sha256, a SIGKILL of the receiver loses
nothing acknowledged (a drill to latest through pg_backup holds every row), and in synchronous mode
a commit does not return while the receiver is stopped; the backup role's pitr_receive, and its
per-cluster path (pitr_setup with backup_pitr_setup receive), whose unit's command archives a
segment. PostgreSQL in a Docker container: a base backup over a replication connection to its
published port, WAL received from it, a drill to a time on the host, and the restore role's marker
drill of it, which fails at once with one line (its wait needs archive_command)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid

from harness import PG_BIN, _pg_system_user, _tail, free_port
from pg_fixtures import build_postgres_image
from pitr_fixtures import SYSTEM_PYTHON, ArchivingCluster, install_helper
from test_pg_backup import ok, play

SERIES = "pitr-recv"
APP = "opskit_wal_receive"


class Receiver:
    """``opskit-wal receive`` as a process of the server's user (the role runs it under systemd)."""

    def __init__(self, cluster, synchronous, argv=None):
        """``argv``: a command of its own (the role's unit's ExecStart), else a helper installed here."""
        self.cluster = cluster
        self.directory = os.path.join(cluster.root, "receive")
        self.log = os.path.join(cluster.root, "receive.log")
        receive = dict(directory=self.directory, slot="opskit_test", synchronous=synchronous, bin_dir=PG_BIN,
                       pg=dict(host=cluster.host, port=cluster.port, user=cluster.user, password=cluster.password))
        self.argv = argv or install_helper(os.path.join(cluster.root, "rhelper"), "file://" + cluster.store, SERIES,
                                           cluster.account, receive=receive) + ["receive"]
        self.proc = None

    def start(self):
        account = self.cluster.account
        ids = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[]) if account else {}
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=open(self.log, "a"),
                                     stderr=subprocess.STDOUT, cwd="/", **ids)
        self.wait_streaming()

    def wait_streaming(self, timeout=30):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.cluster.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = '%s'"
                                 " AND state = 'streaming'" % APP) == "1":
                return
            assert self.proc.poll() is None, _tail(self.log)
            time.sleep(0.05)
        raise AssertionError("the receiver is not streaming\n" + _tail(self.log))

    def signal(self, signum):
        self.proc.send_signal(signum)
        assert self.proc.wait(timeout=30) == (0 if signum == signal.SIGTERM else -signum), _tail(self.log)
        deadline = time.monotonic() + 30  # its pg_receivewal child goes with it (PR_SET_PDEATHSIG)
        while self.cluster.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = '%s'" % APP) != "0":
            assert time.monotonic() < deadline, "pg_receivewal outlived the receiver"
            time.sleep(0.05)


def archived(cluster, name, timeout=30, series=SERIES):
    """The stored object of ``name``, waited for; its key's sha256 is the sha256 of its bytes."""
    pattern = os.path.join(cluster.store, series, "wal", name[:8], name + "-*")
    deadline = time.monotonic() + timeout
    while not glob.glob(pattern):
        assert time.monotonic() < deadline, "%s was not archived" % name
        time.sleep(0.05)
    (path,) = glob.glob(pattern)
    with open(path, "rb") as fh:
        assert hashlib.sha256(fh.read()).hexdigest() == os.path.basename(path)[len(name) + 1:].split(".")[0]
    return path


def switch(cluster):
    return cluster.psql("SELECT pg_walfile_name(pg_switch_wal())")


def role_task(cluster, receiver):
    """The backup role's pitr_receive (the unit written and verified, not started: no systemd here)."""
    home = os.path.join(cluster.root, "role")
    os.makedirs(home, mode=0o755)
    rvars = {"backup_pitr_dir": home + "/lib", "backup_pitr_config": home + "/etc/wal.json",
             "backup_pitr_location": "file://" + cluster.store, "backup_pitr_series": SERIES,
             "backup_pitr_storage_options": {"compression_level": 1}, "backup_pitr_bin_dir": PG_BIN,
             "backup_pitr_os_user": cluster.account.pw_name if cluster.account else os.getlogin(),
             "backup_pitr_pg": cluster.conn(), "backup_pitr_receive_directory": receiver.directory,
             "backup_pitr_receive_slot": "opskit_test", "backup_pitr_receive_synchronous": True,
             "backup_pitr_receive_set_standby_names": True, "backup_pitr_receive_config": home + "/etc/wal-receive.json",
             "backup_pitr_receive_unit_dir": home}
    include = {"name": "opskit.runbook.backup", "tasks_from": "pitr_receive"}
    return home, {"name": "receive role", "ansible.builtin.include_role": include, "vars": rvars}


def check_role(run, cluster, receiver, home):
    assert run.task("PITR receive | ALTER SYSTEM SET synchronous_standby_names").get("changed")
    assert cluster.psql("SHOW synchronous_standby_names") == '"%s"' % APP
    with open(os.path.join(cluster.data, "postgresql.auto.conf")) as fh:
        assert "opskit-wal" not in fh.read()  # pitr_archive's helper only, not its archive_command
    with open(home + "/opskit-wal-receive.service") as fh:
        unit = fh.read()
    assert "Restart=always" in unit and '"%s/etc/wal-receive.json" receive\n' % home in unit
    assert oct(os.stat(home + "/etc/wal-receive.json").st_mode & 0o777) == "0o600"
    with open(home + "/etc/wal-receive.json") as fh:
        receive = json.load(fh)["receive"]
    assert (receive["directory"], receive["slot"], receive["synchronous"]) == (receiver.directory, "opskit_test", True)
    assert cluster.password not in run.stdout + unit


def test_receive_kill_resume_and_synchronous_commit(run_playbook):
    store = tempfile.mkdtemp(prefix="opskit-pitr-recv-")
    cluster = ArchivingCluster(store, SERIES, archive=False).start()
    receiver = Receiver(cluster, synchronous=True)
    try:
        cluster.psql("ALTER SYSTEM SET archive_mode = off")  # WAL comes through the slot only
        cluster.pg_ctl("stop")
        cluster.pg_ctl("start")
        cluster.psql("CREATE TABLE events (id serial PRIMARY KEY, tag text NOT NULL)")
        receiver.start()
        assert cluster.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'opskit_test'") == "1"
        cluster.base_backup()
        cluster.psql("INSERT INTO events (tag) SELECT 'before' FROM generate_series(1, 100)")
        archived(cluster, switch(cluster))
        assert not [n for n in os.listdir(receiver.directory) if len(n) == 24]  # pushed, then removed locally

        receiver.signal(signal.SIGKILL)
        cluster.psql("INSERT INTO events (tag) VALUES ('while-killed')")  # acknowledged: the slot keeps its WAL
        receiver.start()
        cluster.psql("INSERT INTO events (tag) VALUES ('after-restart')")
        archived(cluster, switch(cluster))

        cluster.psql("ALTER SYSTEM SET synchronous_standby_names = '%s'" % APP)
        cluster.psql("SELECT pg_reload_conf()")
        cluster.psql("INSERT INTO events (tag) VALUES ('sync-up')")  # the receiver is up: it returns
        receiver.signal(signal.SIGTERM)
        partial = [n for n in os.listdir(receiver.directory) if n.endswith(".partial")]
        assert partial and glob.glob(os.path.join(store, SERIES, "wal", "00000001", partial[0] + "-*")), partial

        done = {}
        writer = threading.Thread(target=lambda: done.setdefault("out", cluster.psql(
            "SET statement_timeout = '60s'; INSERT INTO events (tag) VALUES ('sync-down') RETURNING 'committed'")))
        writer.start()
        deadline = time.monotonic() + 30
        while cluster.psql("SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'SyncRep'") != "1":
            assert time.monotonic() < deadline and writer.is_alive(), "the commit did not wait for the receiver"
            time.sleep(0.05)
        assert writer.is_alive() and "out" not in done  # blocked: not acknowledged while nothing received it
        receiver.start()
        writer.join(timeout=60)
        assert done.get("out") == "committed"
        last = switch(cluster)
        archived(cluster, last)
        cluster.psql("ALTER SYSTEM RESET synchronous_standby_names")  # the role sets it again
        cluster.psql("SELECT pg_reload_conf()")
        home, include = role_task(cluster, receiver)

        run = run_playbook(play(include, {"name": "drill", "ignore_errors": True, "opskit.runbook.pg_backup": dict(
            cluster.conn(), destination="file://" + store, series=SERIES, method="physical", state="verified",
            wal_helper=[SYSTEM_PYTHON, home + "/lib/opskit-wal", "--config", home + "/etc/wal.json"],
            data_owner=cluster.account.pw_name if cluster.account else None,
            recovery_timeout=60, verify_queries=[
                {"name": tag, "query": "SELECT count(*) FROM events WHERE tag = '%s'" % tag, "expect": expect}
                for tag, expect in (("before", "100"), ("while-killed", "1"), ("after-restart", "1"),
                                    ("sync-up", "1"), ("sync-down", "1"))])}))
        check_role(run, cluster, receiver, home)
        result = ok(run.task("drill"))  # restore_command is the role's helper (lib.zip, wal.json)
        assert result["verification"]["result"] == "passed", result["msg"]
        assert result["plan"]["last_wal"] >= last, result["plan"]
        assert "pitr-test-pw" not in json.dumps(result)
        cluster_path(run_playbook, cluster, receiver)
    finally:
        if receiver.proc is not None and receiver.proc.poll() is None:
            receiver.proc.kill()
            receiver.proc.wait()
        cluster.stop()
        shutil.rmtree(store, ignore_errors=True)


def cluster_path(run_playbook, cluster, first):
    """The per-cluster path of weekly.yml and the main tasks: tasks_from pitr_setup with backup_pitr_setup
    receive and one entry of backup_pitr_clusters (its own connection, config and default series). The
    receiver it configures (the unit's ExecStart, run as the server's user: no systemd here) pushes a
    segment into that series."""
    first.signal(signal.SIGTERM)  # one receiver per host: the unit's name and application_name are fixed
    cluster.psql("ALTER SYSTEM RESET synchronous_standby_names")
    cluster.psql("SELECT pg_reload_conf()")
    home = os.path.join(cluster.root, "setup")
    os.makedirs(home, mode=0o755)
    entry = {"name": "recv", "postgres": cluster.conn(), "config": home + "/etc/wal.json"}
    rvars = {"backup_pitr_setup": "receive", "backup_pitr_clusters": [entry], "backup_series_prefix": "t-",
             "backup_pitr_pg": {"host": "192.0.2.1", "port": 1}, "backup_pitr_dir": home + "/lib",
             "backup_pitr_location": "file://" + cluster.store, "backup_pitr_storage_options": {"compression_level": 1},
             "backup_pitr_bin_dir": PG_BIN, "backup_pitr_os_user": cluster.account.pw_name if cluster.account else os.getlogin(),
             "backup_pitr_receive_directory": home + "/receive", "backup_pitr_receive_slot": "opskit_setup",
             "backup_pitr_receive_config": home + "/etc/wal-receive.json", "backup_pitr_receive_unit_dir": home}
    include = {"name": "opskit.runbook.backup", "tasks_from": "pitr_setup"}
    run = run_playbook(play({"name": "setup", "ansible.builtin.include_role": include, "vars": rvars}))
    assert run.rc == 0, run.stdout[-4000:]
    assert cluster.password not in run.stdout
    with open(home + "/etc/wal-receive.json") as fh:
        config = json.load(fh)
    assert config["series"] == "t-pg-recv-physical" and config["location"] == "file://" + cluster.store, config
    assert {k: config["receive"]["pg"][k] for k in ("host", "port")} == {"host": cluster.host, "port": cluster.port}
    assert (config["receive"]["slot"], config["receive"]["synchronous"]) == ("opskit_setup", False), config["receive"]
    for path in (home + "/etc/wal-receive.json", entry["config"]):  # the entry's config: restore_command's
        assert oct(os.stat(path).st_mode & 0o777) == "0o600", path
    with open(entry["config"]) as fh:
        assert json.load(fh)["series"] == "t-pg-recv-physical"
    with open(home + "/opskit-wal-receive.service") as fh:
        (exec_start,) = [line[len("ExecStart="):] for line in fh.read().splitlines() if line.startswith("ExecStart=")]
    assert shlex.split(exec_start) == [SYSTEM_PYTHON, home + "/lib/opskit-wal", "--config", home + "/etc/wal-receive.json",
                                       "receive"], exec_start
    receiver = Receiver(cluster, synchronous=False, argv=shlex.split(exec_start))
    try:
        receiver.start()
        assert cluster.psql("SELECT count(*) FROM pg_replication_slots WHERE slot_name = 'opskit_setup'") == "1"
        cluster.psql("INSERT INTO events (tag) VALUES ('cluster-path')")
        archived(cluster, switch(cluster), series="t-pg-recv-physical")
        receiver.signal(signal.SIGTERM)
    finally:
        if receiver.proc is not None and receiver.proc.poll() is None:
            receiver.proc.kill()
            receiver.proc.wait()


CONTAINER_START = """set -e
echo "$POSTGRES_PASSWORD" | initdb -D /var/lib/postgresql/data -U postgres -E UTF8 --locale=C \\
  --auth-local=trust --auth-host=scram-sha-256 --pwfile=/dev/stdin >/dev/null
printf 'host all all 0.0.0.0/0 scram-sha-256\\nhost replication all 0.0.0.0/0 scram-sha-256\\n' \\
  >> /var/lib/postgresql/data/pg_hba.conf
exec postgres -D /var/lib/postgresql/data -c listen_addresses='*' -c unix_socket_directories=/var/run/postgresql \\
  -c fsync=off -c wal_level=replica
"""


class ContainerCluster:
    """PostgreSQL 15 in a container of the harness's image, its 5432 published on 127.0.0.1 (what
    the Receiver needs of a cluster: connection, psql, a root and a store on the host)."""

    user, host, password = "postgres", "127.0.0.1", "ctr-pitr-pw"

    def __init__(self, client, image):
        self.account = _pg_system_user()
        self.root = tempfile.mkdtemp(prefix="opskit-pitr-ctr-")
        self.store = os.path.join(self.root, "store")
        os.makedirs(os.path.join(self.store, SERIES, "wal"))
        if self.account is not None:
            for base, dirs, _files in os.walk(self.root):
                for path in [base] + [os.path.join(base, d) for d in dirs]:
                    os.chown(path, self.account.pw_uid, self.account.pw_gid)
        self.port = free_port()
        self.env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user, PGPASSWORD=self.password)
        self.container = client.containers.run(
            image, detach=True, name="pitr-ctr-" + uuid.uuid4().hex[:8], entrypoint=["/bin/sh", "-c", CONTAINER_START],
            environment={"POSTGRES_PASSWORD": self.password}, ports={"5432/tcp": ("127.0.0.1", self.port)})
        deadline = time.monotonic() + 60
        while subprocess.run([os.path.join(PG_BIN, "psql"), "-XAtqc", "SELECT 1"], env=self.env, capture_output=True,
                             check=False).returncode:
            assert time.monotonic() < deadline, "the container did not start: %s" % self.container.logs()[-2000:]
            time.sleep(0.2)

    def psql(self, sql):
        proc = subprocess.run([os.path.join(PG_BIN, "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-c", sql], env=self.env,
                              capture_output=True, text=True, check=False)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def conn(self):
        return dict(host=self.host, port=self.port, user=self.user, password=self.password)

    def stop(self):
        self.container.remove(force=True)
        shutil.rmtree(self.root, ignore_errors=True)


def test_container_base_backup_over_published_port_and_drill_on_host(docker_engine, run_playbook):
    """pg_backup on the host takes the base backup of PostgreSQL in a container through its published
    port (pg_basebackup's replication connection, server-side zstd), opskit-wal receive streams its WAL
    the same way, and a drill restores on the host to a time between a marker and a later row. The restore
    role's marker drill of it works on streamed WAL: no pg_stat_archiver to wait on, so the server closes the
    marker's segment (pg_switch_wal) and the role waits for it at the location, then restores to T."""
    ctr = ContainerCluster(docker_engine.client, build_postgres_image(docker_engine.client, docker_engine.busybox_image))
    receiver = Receiver(ctr, synchronous=False)
    try:
        ctr.psql("CREATE TABLE events (id serial PRIMARY KEY, tag text NOT NULL)")
        ctr.psql("INSERT INTO events (tag) SELECT 'before' FROM generate_series(1, 1000)")
        receiver.start()
        args = dict(ctr.conn(), destination="file://" + ctr.store, series=SERIES, method="physical",
                    wal_helper=receiver.argv[:-1], data_owner=ctr.account.pw_name if ctr.account else None)
        base = ok(run_playbook(play({"name": "base", "opskit.runbook.pg_backup": args})).task("base"))["backup"]
        assert base["server_compression"].startswith("server-zstd") and base["timeline"] == 1
        assert base["server_version"].startswith("15") and base["size_bytes"] > 0
        ctr.psql("INSERT INTO events (tag) VALUES ('marker')")
        marker_time = ctr.psql("SELECT clock_timestamp()")
        ctr.psql("INSERT INTO events (tag) VALUES ('later')")
        archived(ctr, switch(ctr))
        checks = [{"name": tag, "query": "SELECT count(*) FROM events WHERE tag = '%s'" % tag, "expect": expect}
                  for tag, expect in (("before", "1000"), ("marker", "1"), ("later", "0"))]
        run = run_playbook(play({"name": "drill", "ignore_errors": True, "opskit.runbook.pg_backup": dict(
            args, state="verified", target_time=marker_time, recovery_timeout=60, verify_queries=checks)}))
        result = ok(run.task("drill"))
        assert result["verification"]["result"] == "passed", result["msg"]
        assert result["backup"]["id"] == base["id"] and result["recovery"]["recovered_time"] <= marker_time
        assert ctr.password not in json.dumps(result)

        # the restore role's marker drill of the same cluster (its connection: the published port; the restore on
        # the host): pg_stat_archiver, where the drill waits for an archiving server, counts nothing here (the WAL
        # comes through pg_receivewal), so the server closes the marker's segment and the role waits for it at
        # the location; the drill then restores to T with the marker and without the row after it
        rvars = {"restore_pitr_clusters": [{"name": "ctr", "series": SERIES, "postgres": ctr.conn()}],
                 "restore_location": "file://" + ctr.store, "restore_pitr_bin_dir": PG_BIN,
                 "restore_pitr_wal_helper": receiver.argv[:-1], "restore_pitr_data_owner": args["data_owner"] or os.getlogin(),
                 "restore_pitr_marker_timeout": 60, "restore_fail_on_error": False}
        run = run_playbook(play({"name": "marker drill", "ansible.builtin.include_role": {"name": "opskit.runbook.restore"},
                                 "vars": rvars}, {"name": "assets", "ansible.builtin.debug": {"var": "restore_assets"}}))
        (asset,) = run.task("assets")["restore_assets"]
        assert asset["verification"] == "passed" and asset["ok"], asset
        assert asset["marker"]["wait"] == "location" and asset["rpo_measured_by"] == "marker", asset
        assert 0 < asset["rpo_seconds"] < 60, asset
        segment = asset["marker"]["segment"]
        assert asset["marker"]["archived_segment"][8:] >= segment[8:], asset["marker"]  # the segment was seen there
        assert glob.glob(os.path.join(ctr.store, SERIES, "wal", "*", segment + "*")), segment
        assert ctr.psql("SELECT string_agg(phase, ',' ORDER BY phase) FROM opskit_drill_marker") == "after,marker"
        assert ctr.password not in run.stdout
    finally:
        if receiver.proc is not None and receiver.proc.poll() is None:
            receiver.proc.kill()
            receiver.proc.wait()
        ctr.stop()
