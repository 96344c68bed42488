# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fixtures of the point-in-time recovery tests: a PostgreSQL 15 cluster whose archive_command
is the collection's real opskit-wal helper (roles/backup/files/opskit-wal), pushing into a
file:// location, run as the harness's unprivileged system user."""

from __future__ import annotations

import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from harness import COLLECTIONS, PG_BIN, ROOT, _pg_system_user, _tail, _watchdog, free_port

SYSTEM_PYTHON = "/usr/bin/python3"
HELPER = os.path.join(ROOT, "roles", "backup", "files", "opskit-wal")


def install_helper(directory, location, series, owner=None, **options):
    """opskit-wal in ``directory`` with its lib (the built collection) and a 0600 config; returns
    the argv prefix. The system python runs it (the server's user cannot reach the test venv under
    /root); it has no zstandard, so zstd (level 3) goes through Debian's zstd command."""
    os.makedirs(directory, exist_ok=True)
    script = os.path.join(directory, "opskit-wal")
    shutil.copy(HELPER, script)
    lib = os.path.join(directory, "lib")
    if not os.path.exists(lib):
        os.symlink(COLLECTIONS, lib)
    config = os.path.join(directory, "wal.json")
    with open(os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump(dict(dict(compression="zstd"), location=location, series=series, **options), fh)
    if owner is not None:
        for path in (directory, config):
            os.chown(path, owner.pw_uid, owner.pw_gid)
    return [SYSTEM_PYTHON, script, "--config", config]


BASE_BACKUP = """
import json, sys
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.pitr_apply import run_physical
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
print(json.dumps(run_physical(json.load(sys.stdin), open_location(sys.argv[2]))["backup"]))
"""


class ArchivingCluster:
    """A cluster with archive_mode=on and ``opskit-wal push`` as its archive_command."""

    user = "postgres"
    host = "127.0.0.1"

    def __init__(self, store, series, password="pitr-test-pw", archive=True):
        self.archive = archive  # False: archive_mode on, archive_command empty (the role sets it)
        self.password = password
        self.port = free_port()
        self.root = tempfile.mkdtemp(prefix="opskit-pitr-")
        self.data = os.path.join(self.root, "data")
        self.log = os.path.join(self.root, "postgres.log")
        self.store, self.series = store, series
        self.account = _pg_system_user()
        self.env = dict(os.environ, PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user,
                        PGPASSWORD=password)
        self.helper = None
        self._watchdog = None

    def _as_owner(self, args):
        return args if self.account is None else ["runuser", "-u", self.account.pw_name, "--"] + args

    def _run(self, args):
        proc = subprocess.run(self._as_owner(args), capture_output=True, text=True, cwd=self.root, check=False,
                              start_new_session=True)
        if proc.returncode:
            raise RuntimeError("%s failed: %s\n%s" % (args[0], proc.stderr.strip(), _tail(self.log)))

    def start(self):
        wal = os.path.join(self.store, self.series, "wal")
        os.makedirs(wal, exist_ok=True)  # the archiver (server user) and the module (root) share the store
        if self.account is not None:
            for path in (self.root, self.store, os.path.dirname(wal), wal):
                os.chown(path, self.account.pw_uid, self.account.pw_gid)
        self.helper = install_helper(os.path.join(self.root, "helper"), "file://" + self.store, self.series,
                                     self.account)
        pwfile = os.path.join(self.root, "pwfile")
        with open(os.open(pwfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write(self.password + "\n")
        if self.account is not None:
            os.chown(pwfile, self.account.pw_uid, self.account.pw_gid)
        self._run([os.path.join(PG_BIN, "initdb"), "-D", self.data, "-U", self.user, "--auth=scram-sha-256",
                   "--pwfile=" + pwfile, "-E", "UTF8", "--locale=C", "--no-sync"])
        os.unlink(pwfile)
        archive = " ".join(shlex.quote(a) for a in self.helper) + " push %p %f" if self.archive else ""
        with open(os.path.join(self.data, "postgresql.auto.conf"), "a") as fh:
            fh.write("port = %d\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '%s'\n"
                     "fsync = off\narchive_mode = on\narchive_command = '%s'\nwal_level = replica\n"
                     % (self.port, self.root, archive.replace("'", "''")))
        self._watchdog = _watchdog(self.root, self._as_owner(self._stop_args()))
        self.pg_ctl("start")
        return self

    def _stop_args(self, mode="immediate"):
        return [os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-m", mode, "-w", "stop"]

    def pg_ctl(self, action):
        if action == "start":
            self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", self.data, "-l", self.log, "-w", "-t", "60", "start"])
        else:
            self._run(self._stop_args("fast"))

    def stop(self):
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            subprocess.run(self._as_owner(self._stop_args()), capture_output=True, check=False)
        shutil.rmtree(self.root, ignore_errors=True)

    def psql(self, sql, db="postgres"):
        proc = subprocess.run([os.path.join(PG_BIN, "psql"), "-XAtq", "-v", "ON_ERROR_STOP=1", "-d", db, "-c", sql],
                              env=self.env, capture_output=True, text=True, check=False)
        if proc.returncode:
            raise RuntimeError("psql failed: %s" % proc.stderr.strip())
        return proc.stdout.strip()

    def switch_and_wait(self, timeout=30):
        """Close the current segment and wait until the archiver has pushed it; returns its name."""
        segment = self.psql("SELECT pg_walfile_name(pg_switch_wal())")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.psql("SELECT last_archived_wal >= '%s' FROM pg_stat_archiver" % segment)
            if done == "t":
                return segment
            time.sleep(0.05)
        raise AssertionError("segment %s was not archived within %s s\n%s" % (segment, timeout, _tail(self.log)))

    def kill_archiver(self):
        """SIGKILL the cluster's archiver process (the postmaster then restarts the cluster)."""
        with open(os.path.join(self.data, "postmaster.pid")) as fh:
            postmaster = fh.readline().strip()
        out = subprocess.run(["pgrep", "-P", postmaster, "-f", "archiver"], capture_output=True, text=True,
                             check=False).stdout.split()
        assert out, "no archiver process under postmaster %s" % postmaster
        os.kill(int(out[0]), signal.SIGKILL)
        return int(out[0])

    def wait_archived(self, segment, timeout=60):
        """Wait until ``segment`` is in the store (whatever the archiver's statistics say after a crash)."""
        pattern = os.path.join(self.store, self.series, "wal", segment[:8], segment + "-*")
        deadline = time.monotonic() + timeout
        while not glob.glob(pattern):
            if time.monotonic() > deadline:
                raise AssertionError("segment %s was not archived within %s s\n%s" % (segment, timeout, _tail(self.log)))
            time.sleep(0.05)

    def base_backup(self):
        """A base backup through the engine, without ansible-playbook (setup only: the tests take theirs
        through it); returns its record. It runs in a child whose command line names pg_backup, so that a
        concurrent pg_backup run does not take its passfile for a leftover of a dead run (cleanup.py)."""
        params = dict(self.conn(), state="dumped", series=self.series, compression="zstd", compression_level=None,
                      compression_threads=-1, bin_dir=None, tmp_dir=None, docker_container=None)
        proc = subprocess.run([sys.executable, "-c", BASE_BACKUP, "pg_backup-fixture", "file://" + self.store],
                              input=json.dumps(params), capture_output=True, text=True, check=False,
                              env=dict(os.environ, PYTHONPATH=COLLECTIONS))
        if proc.returncode:
            raise RuntimeError("base backup failed: %s" % proc.stderr.strip()[-2000:])
        return json.loads(proc.stdout)

    def start_restored(self, data, port):
        """Start a restored data directory (its recovery settings written by pg_backup) on ``port``;
        wait until it promoted. Returns the psql env of it; ``stop_restored(data)`` stops it."""
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as fh:
            fh.write("port = %d\nunix_socket_directories = '%s'\n" % (port, data))
        self._run([os.path.join(PG_BIN, "pg_ctl"), "-D", data, "-l", os.path.join(data, "log"), "-w", "-t", "60",
                   "start"])
        env = dict(self.env, PGPORT=str(port))
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            proc = subprocess.run([os.path.join(PG_BIN, "psql"), "-XAtqc", "SELECT pg_is_in_recovery()"], env=env,
                                  capture_output=True, text=True, check=False)
            if proc.stdout.strip() == "f":
                return env
            time.sleep(0.1)
        raise AssertionError("the restored cluster did not promote\n%s" % _tail(os.path.join(data, "log")))

    def stop_restored(self, data):
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(self._as_owner([os.path.join(PG_BIN, "pg_ctl"), "-D", data, "-m", "immediate", "-w",
                                           "stop"]), capture_output=True, check=False)

    def conn(self):
        return dict(host=self.host, port=self.port, user=self.user, password=self.password)
