#!/usr/bin/env python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery side by side with pgBackRest, on one throwaway PostgreSQL 15 cluster.

The cluster (pgbench -i -s SCALE) archives every WAL file twice, from one archive_command: a small
sh wrapper runs `opskit-wal push` (the collection's helper, the system python: it has no
zstandard, so zstd level 3 through the zstd command) and `pgbackrest archive-push` (posix
repository, compress-type=zst) at the same time and fails when either fails. archive_timeout is 1 s.

Each round, alternately:
  base backup  pg_backup method=physical (one ansible-playbook run, its wall time) vs
               `pgbackrest backup --type=full` (start-fast, process-max=2); also the CPU seconds of
               each: its processes (waited for) plus the server's exited backends and walsenders
               (the postmaster's cutime + cstime)
  marker       a row at time T, a later row, the segment switched and archived by both
  restore      pg_backup state=restored target_time=T (ansible-playbook) + pg_ctl start + wait
               until the cluster promoted, vs `pgbackrest restore --type=time --target=T
               --target-action=promote` + the same start and wait; each restored cluster must
               hold the marker and not the later row; the module's restore first in odd rounds,
               pgBackRest's in even ones (the first large write after a pause is slower on these VMs)
  sizes        the base backup objects of the series vs the backup's directory in the repository
RPO (after the rounds, SAMPLES times): commit a row, then the time until the segment holding it is
in each archive (opskit: <series>/wal/<tl>/<segment>-*; pgBackRest: archive/<stanza>/15-1/...).

RPO by archiving mode (--modes archive_command,receive,receive-sync; --rpo-only: those alone, no rounds,
no bench/results/pitr.md, only the "RPO by archiving mode" subsection of RESULTS.md's PITR section), the
modes one after the other on the same cluster, each with its own setup and teardown:
  archive_command  as above (archive_mode on, archive_timeout 1 s), SAMPLES times;
  receive          archive_mode off, archive_timeout 0, `opskit-wal receive` (pg_receivewal from its own
                   slot, its own series) as the server's user; per sample: a commit to write_lsn and to
                   flush_lsn >= its LSN in pg_stat_replication (application_name opskit_wal_receive), then
                   another commit + pg_switch_wal() (the restore role's receive-mode marker drill) to its
                   segment at the location;
  receive-sync     the same with receive.synchronous true and synchronous_standby_names naming it.
  Lost commits, KILLS rounds per mode: COMMITS commits one by one (--commit-gap apart), SIGKILL of the
  server's process group right after the last returned, the receiver stopped (SIGTERM), and pg_waldump
  over the WAL held outside the server (location, receiver's .partial, pgBackRest's archive) tells which
  acknowledged commits have no COMMIT record there.

Everything it starts (clusters, receivers, store, repository) is removed at the end, also on failure.

Usage: .venv/bin/python bench/pitr.py [--scale 100] [--rounds 3] [--samples 5]
       [--out bench/results/pitr.md] [--rpo-only] [--modes archive_command,receive,receive-sync]
       [--kills 1] [--commits 60] [--commit-gap 0.05]
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import resource
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

from collect import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
MiB = 1024 * 1024
BIN = "/usr/lib/postgresql/15/bin"
SERIES = "bench-pitr"
STANZA = "bench"
APP = "opskit_wal_receive"
RECEIVE_WAIT = 12  # s: pg_receivewal answers every 10 s (--status-interval) unless --synchronous
MODES = ("archive_command", "receive", "receive-sync")


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def cpu_of(pid):
    """utime + stime + cutime + cstime of a process, in seconds."""
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return sum(int(x) for x in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def du(paths):
    total = 0
    for path in paths:
        for base, _dirs, files in os.walk(path):
            total += sum(os.path.getsize(os.path.join(base, f)) for f in files)
    return total


class Bench:
    def __init__(self, args):
        from pitr_fixtures import ArchivingCluster
        self.args = args
        self.store = tempfile.mkdtemp(prefix="opskit-bench-pitr-store-")
        self.pgbr = tempfile.mkdtemp(prefix="opskit-bench-pgbr-")
        self.cluster = ArchivingCluster(self.store, SERIES, archive=False)
        self.account = self.cluster.account
        self.restored = []
        self.receivers = []

    # ------------------------------------------------------------ setup

    def as_owner(self, argv):
        return argv if self.account is None else ["runuser", "-u", self.account.pw_name, "--"] + argv

    def pgbackrest(self, *argv, check=True):
        cmd = self.as_owner(["env", "PGPASSFILE=" + self.passfile, "pgbackrest", "--config=" + self.conf,
                             "--stanza=" + STANZA] + list(argv))
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False, cwd=self.pgbr)
        if check and proc.returncode:
            raise RuntimeError("pgbackrest %s failed: %s %s" % (argv[-1], proc.stdout[-2000:], proc.stderr[-2000:]))
        return proc

    def setup(self):
        c = self.cluster.start()
        print("cluster on port %d, %s" % (c.port, c.root), flush=True)
        c.psql("ALTER SYSTEM SET archive_command = '/bin/true'")
        c.psql("SELECT pg_reload_conf()")
        start = time.monotonic()
        subprocess.run([os.path.join(BIN, "pgbench"), "-i", "-q", "-s", str(self.args.scale), "postgres"],
                       env=c.env, check=True, capture_output=True)
        self.init_seconds = time.monotonic() - start
        c.psql("CREATE TABLE markers (id serial PRIMARY KEY, tag text NOT NULL, at timestamptz DEFAULT clock_timestamp())")
        c.psql("CHECKPOINT")
        self.db_size = int(c.psql("SELECT pg_database_size('postgres')"))
        print("pgbench -i -s %d: %.1f s, %.0f MiB" % (self.args.scale, self.init_seconds, self.db_size / MiB), flush=True)
        for sub in ("repo", "log", "lock", "spool"):
            os.makedirs(os.path.join(self.pgbr, sub), exist_ok=True)
        self.conf = os.path.join(self.pgbr, "pgbackrest.conf")
        with open(self.conf, "w") as fh:
            fh.write("[global]\nrepo1-type=posix\nrepo1-path=%s/repo\ncompress-type=zst\nstart-fast=y\n"
                     "process-max=2\nlog-path=%s/log\nlock-path=%s/lock\nspool-path=%s/spool\nlog-level-console=warn\n"
                     "log-level-file=info\n\n[%s]\npg1-path=%s\npg1-port=%d\npg1-socket-path=%s\npg1-user=%s\n"
                     % (self.pgbr, self.pgbr, self.pgbr, self.pgbr, STANZA, c.data, c.port, c.root, c.user))
        self.passfile = os.path.join(self.pgbr, "pgpass")
        with open(os.open(self.passfile, os.O_WRONLY | os.O_CREAT, 0o600), "w") as fh:
            fh.write("*:*:*:%s:%s\n" % (c.user, c.password))
        wrapper = os.path.join(self.pgbr, "opskit-wal-and-pgbackrest.sh")
        opskit = " ".join(shlex.quote(a) for a in c.helper)
        with open(wrapper, "w") as fh:
            fh.write('#!/bin/sh\n# $1 = %%p, $2 = %%f: both archivers at once, fails if either fails\n'
                     '%s push "$1" "$2" & pid=$!\n'
                     'pgbackrest --config=%s --stanza=%s archive-push "$1"; b=$?\n'
                     'wait $pid; a=$?\n[ "$a" = 0 ] && [ "$b" = 0 ]\n' % (opskit, self.conf, STANZA))
        os.chmod(wrapper, 0o755)
        if self.account is not None:
            for base, dirs, files in os.walk(self.pgbr):
                for name in dirs + files + [""]:
                    os.chown(os.path.join(base, name), self.account.pw_uid, self.account.pw_gid)
        self.pgbackrest("stanza-create")
        c.psql("ALTER SYSTEM SET archive_command = '%s %%p %%f'" % wrapper)
        c.psql("ALTER SYSTEM SET archive_timeout = '1s'")
        c.psql("SELECT pg_reload_conf()")
        c.switch_and_wait(timeout=120)
        self.pgbackrest("check")

    # ------------------------------------------------------------ module

    def module_args(self, **extra):
        c = self.cluster
        args = dict(c.conn(), destination="file://" + self.store, series=SERIES, method="physical",
                    wal_helper=c.helper, data_owner=self.account.pw_name if self.account else None)
        args.update(extra)
        return args

    def playbook(self, name, args, module="opskit.runbook.pg_backup"):
        from harness import run_playbook_in
        playbook = json.dumps([{"hosts": "localhost", "gather_facts": False,
                                "tasks": [{"name": name, module: args}]}])
        start = time.monotonic()
        run = run_playbook_in(self.pgbr, playbook, timeout=1800)
        seconds = time.monotonic() - start
        result = run.task(name)
        if result.get("failed") or (module.endswith("pg_backup") and not ("backup" in result or "recovery" in result)):
            raise RuntimeError("pg_backup %s failed: %s %s" % (name, result.get("msg"), json.dumps(result)[-3000:]))
        return seconds, result

    # ------------------------------------------------------------ steps

    def cpu(self):
        with open(os.path.join(self.cluster.data, "postmaster.pid")) as fh:
            return children_cpu() + cpu_of(int(fh.readline()))

    def floor(self, *extra):
        start = time.monotonic()
        with open(os.devnull, "wb") as null:
            subprocess.run([os.path.join(BIN, "pg_basebackup"), "--no-password", "--pgdata=-", "--format=tar",
                            "--checkpoint=fast"] + list(extra), env=self.cluster.env, stdout=null, stderr=null, check=True)
        return time.monotonic() - start

    def base_backups(self):
        cpu = self.cpu()  # first the client-side way (the module's before server compression), then the default
        seconds, result = self.playbook("base", self.module_args(server_compression=False))
        client = dict(seconds=seconds, cpu=self.cpu() - cpu, in_module=result["backup"].get("duration_seconds"),
                      stored=sum(os.path.getsize(p) for p in glob.glob(os.path.join(
                          self.store, SERIES, result["backup"]["id"] + "*"))))
        cpu, failed = self.cpu(), self.archive_failures()
        seconds, result = self.playbook("base", self.module_args())
        cpu = self.cpu() - cpu
        backup = result["backup"]
        objects = glob.glob(os.path.join(self.store, SERIES, backup["id"] + "*"))
        module = dict(seconds=seconds, stored=sum(os.path.getsize(p) for p in objects), cpu=cpu,
                      archive_failures=self.archive_failures() - failed, last_failed_wal=self.last_failed_wal(),
                      objects=[os.path.basename(p) for p in objects], in_module=backup.get("duration_seconds"),
                      compress=backup.get("server_compression"),
                      noop=self.playbook("noop", {"msg": "x"}, module="ansible.builtin.debug")[0])
        module["floor"] = self.floor("--wal-method=none")
        if module["compress"]:
            module["floor_server"] = self.floor("--compress=" + module["compress"], "--wal-method=fetch", "--no-manifest")
        before = set(os.listdir(os.path.join(self.pgbr, "repo", "backup", STANZA)))
        cpu = self.cpu()
        start = time.monotonic()
        self.pgbackrest("--type=full", "backup")
        pgbr_seconds = time.monotonic() - start
        cpu = self.cpu() - cpu
        label = sorted(set(os.listdir(os.path.join(self.pgbr, "repo", "backup", STANZA))) - before
                       - {"backup.info", "backup.info.copy", "backup.history", "latest"})[-1]
        pgbr = dict(seconds=pgbr_seconds, stored=du([os.path.join(self.pgbr, "repo", "backup", STANZA, label)]),
                    label=label, cpu=cpu)
        module["client"] = client
        return module, pgbr

    def archive_failures(self):
        """pg_stat_archiver's failed_count: a base backup waits for its stop segment to be archived."""
        return int(self.cluster.psql("SELECT failed_count FROM pg_stat_archiver"))

    def last_failed_wal(self):
        return self.cluster.psql("SELECT coalesce(last_failed_wal, '') || ' ' || coalesce(last_failed_time::text, '')"
                                 " FROM pg_stat_archiver").strip()

    def marker(self, round_no):
        c = self.cluster
        time.sleep(1.5)  # pgBackRest keeps backup stop times in whole seconds and wants one before the target
        c.psql("INSERT INTO markers (tag) VALUES ('marker-%d')" % round_no)
        target = c.psql("SELECT clock_timestamp()")
        time.sleep(0.2)
        c.psql("INSERT INTO markers (tag) VALUES ('later-%d')" % round_no)
        c.switch_and_wait(timeout=120)
        return target

    def start_and_wait(self, data):
        """Start a restored directory on a free port (archive_mode off) and wait until it promoted."""
        from harness import free_port
        with open(os.path.join(data, "postgresql.auto.conf"), "a") as fh:
            fh.write("archive_mode = off\n")
        self.restored.append(data)
        return self.cluster.start_restored(data, free_port())

    def check_and_stop(self, data, env, round_no):
        sql = "SELECT string_agg(tag, ',' ORDER BY id) FROM markers WHERE tag LIKE '%%-%d'" % round_no
        got = subprocess.run([os.path.join(BIN, "psql"), "-XAtqc", sql], env=env, capture_output=True, text=True,
                             check=True).stdout.strip()
        self.stop_restored(data)
        if got != "marker-%d" % round_no:
            raise RuntimeError("%s recovered %r, expected only marker-%d" % (data, got, round_no))

    def stop_restored(self, data):
        if os.path.exists(os.path.join(data, "postmaster.pid")):
            subprocess.run(self.as_owner([os.path.join(BIN, "pg_ctl"), "-D", data, "-m", "immediate", "-w", "stop"]),
                           capture_output=True, check=False)
        shutil.rmtree(data, ignore_errors=True)

    def restores(self, target, round_no):
        """Both restores of a round, the module's first in odd rounds and pgBackRest's first in even
        ones: on these VMs the first 1.5 GiB written after a pause is slower (memory the host takes
        back while idle is faulted in again), and the second restore reuses what the first freed."""
        order = ("module", "pgbackrest") if round_no % 2 else ("pgbackrest", "module")
        got = {}
        for way in order:
            got[way] = (self.restore_module if way == "module" else self.restore_pgbackrest)(target, round_no)
            got[way]["first"] = way == order[0]
        return got["module"], got["pgbackrest"]

    def restore_module(self, target, round_no):
        data = os.path.join(self.cluster.root, "restored-module-%d" % round_no)
        start = time.monotonic()
        seconds, result = self.playbook("restore", self.module_args(state="restored", data_directory=data,
                                                                    target_time=target))
        env = self.start_and_wait(data)
        module = dict(seconds=time.monotonic() - start, playbook=seconds,
                      in_module=result.get("recovery", {}).get("restore_seconds"),
                      prefetched=result.get("recovery", {}).get("wal_prefetched"), restored=restored_files(data))
        module["start"] = module["seconds"] - seconds
        self.check_and_stop(data, env, round_no)
        return module

    def restore_pgbackrest(self, target, round_no):
        data = os.path.join(self.cluster.root, "restored-pgbr-%d" % round_no)
        os.mkdir(data, 0o700)
        if self.account is not None:
            os.chown(data, self.account.pw_uid, self.account.pw_gid)
        start = time.monotonic()
        self.pgbackrest("--pg1-path=" + data, "--type=time", "--target=" + target, "--target-action=promote",
                        "restore")
        restore_seconds = time.monotonic() - start
        env = self.start_and_wait(data)
        pgbr = dict(seconds=time.monotonic() - start, restore=restore_seconds, restored=restored_files(data))
        pgbr["start"] = pgbr["seconds"] - restore_seconds
        self.check_and_stop(data, env, round_no)
        return pgbr

    def rpo(self):
        """Commit a row; seconds until the segment holding it is in each archive."""
        c = self.cluster
        time.sleep(1.5)
        c.psql("INSERT INTO markers (tag) VALUES ('rpo')")
        committed = time.monotonic()
        segment = c.psql("SELECT pg_walfile_name(pg_current_wal_lsn())")
        where = {"module": os.path.join(self.store, SERIES, "wal", segment[:8], segment + "-*"),
                 "pgbackrest": os.path.join(self.pgbr, "repo", "archive", STANZA, "15-1", segment[:16],
                                            segment + "-*")}
        got = {}
        while len(got) < 2:
            for key, pattern in where.items():
                if key not in got and glob.glob(pattern):
                    got[key] = time.monotonic() - committed
            if time.monotonic() - committed > 120:
                raise RuntimeError("segment %s not archived within 120 s: %s" % (segment, got))
            time.sleep(0.01)
        return got

    # ------------------------------------------------------------ RPO by archiving mode

    def set_archive_mode(self, on):
        """archive_mode on (archive_command mode) or off (WAL through the slot only); a restart when it changes."""
        c = self.cluster
        c.psql("ALTER SYSTEM SET archive_timeout = '%s'" % ("1s" if on else "0"))  # receive: no forced switches
        c.psql("SELECT pg_reload_conf()")
        if (c.psql("SHOW archive_mode") == "on") != on:
            c.psql("ALTER SYSTEM SET archive_mode = %s" % ("on" if on else "off"))
            c.pg_ctl("stop")
            c.pg_ctl("start")

    def connect(self):
        import psycopg2
        c = self.cluster
        return psycopg2.connect(host=c.host, port=c.port, user=c.user, password=c.password, dbname="postgres",
                                application_name="bench-pitr-writer")

    def commit_marker(self, conn, tag):
        """One marker row committed; (the monotonic time the commit returned, its xid, the insert LSN after it,
        the segment holding the end of the commit)."""
        with conn.cursor() as cur:
            cur.execute("INSERT INTO markers (tag) VALUES (%s) RETURNING pg_current_xact_id()::text", (tag,))
            xid = cur.fetchone()[0]
            conn.commit()
            committed = time.monotonic()
            cur.execute("SELECT pg_current_wal_insert_lsn()::text, pg_walfile_name(pg_current_wal_insert_lsn() - 1)")
            lsn, segment = cur.fetchone()
            conn.commit()
        return committed, xid, lsn, segment

    def rpo_receive(self, conn, recv, mode):
        """Two samples on the receiver: (a) commit to write_lsn / flush_lsn of its application_name >= the
        commit's LSN in pg_stat_replication (no switch; None when not seen within RECEIVE_WAIT s); (b) another
        commit, pg_switch_wal() at once (the receive-mode marker drill), until its segment is at the location."""
        out = {}
        time.sleep(0.5)
        committed, _xid, lsn, _segment = self.commit_marker(conn, "rpo-" + mode)
        with conn.cursor() as cur:
            while ("write" not in out or "flush" not in out) and time.monotonic() - committed < RECEIVE_WAIT:
                cur.execute("SELECT coalesce(write_lsn >= %s::pg_lsn, false), coalesce(flush_lsn >= %s::pg_lsn, false)"
                            " FROM pg_stat_replication WHERE application_name = %s", (lsn, lsn, APP))
                row = cur.fetchone() or (False, False)
                conn.commit()
                now = time.monotonic() - committed
                for key, seen in zip(("write", "flush"), row):
                    if seen and key not in out:
                        out[key] = now
                time.sleep(0.005)
        out.setdefault("write", None)
        out.setdefault("flush", None)
        time.sleep(0.5)
        committed, _xid, lsn, segment = self.commit_marker(conn, "rpo-switch-" + mode)
        with conn.cursor() as cur:
            cur.execute("SELECT pg_switch_wal()")
            conn.commit()
        pattern = os.path.join(self.store, recv.series, "wal", segment[:8], segment + "-*")
        while not glob.glob(pattern):
            if time.monotonic() - committed > 120:
                raise RuntimeError("segment %s not at the location within 120 s\n%s" % (segment, recv.tail()))
            time.sleep(0.005)
        out["location"] = time.monotonic() - committed
        return out

    def kill_round(self, mode, recv):
        """Commit COMMITS rows one by one (COMMIT_GAP s apart), SIGKILL the whole server (its process group:
        postmaster, backends, walsenders, archiver and its archive_command) right after the last commit
        returned, stop the receiver (SIGTERM: it pushes what it finished and keeps its .partial), and count
        the acknowledged commits whose COMMIT record is in no WAL an operator holds: the location's segments
        (and, for receive, the receiver's .partial; for archive_command, pgBackRest's archive too), read by
        pg_waldump. Then the server is started again (crash recovery) and the receiver too."""
        c = self.cluster
        conn = self.connect()
        with open(os.path.join(c.data, "postmaster.pid")) as fh:
            postmaster = int(fh.readline())
        group = os.getpgid(postmaster)
        if group == os.getpgrp():
            raise RuntimeError("the server shares this process group: refusing to SIGKILL it")
        steady = None
        if recv is None:  # wait until archive_timeout switches segments (after a crash restart it may not for long);
            steady = self.probe_switch(wait=30)  # None: not within 30 s, the round runs all the same
        archiver = "SELECT concat_ws(' ', last_archived_wal, failed_count, last_failed_wal) FROM pg_stat_archiver"
        with conn.cursor() as cur:
            cur.execute("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
            first = cur.fetchone()[0]
            conn.commit()
        before = c.psql(archiver) if recv is None else None
        xids = []
        start = time.monotonic()
        for i in range(self.args.commits):
            if i:
                time.sleep(self.args.commit_gap)
            xids.append(self.commit_marker_fast(conn, "kill-%s-%d" % (mode, i)))
        span = time.monotonic() - start
        os.killpg(group, signal.SIGKILL)
        killed = time.monotonic()
        conn.close()
        while os.path.exists("/proc/%d" % postmaster):
            time.sleep(0.01)
        row = dict(commits=len(xids), span=span, first=first)
        if recv is None:
            row["archiver"] = before  # pg_stat_archiver at the round's start: last archived, failures, last failed
            row["waited_for_switch"] = steady  # s until archive_timeout switched a segment before the round
        if recv is not None:
            recv.stop()
        sources = {"module": self.gather_module(recv.series if recv else SERIES, recv, first,
                                                recv.helper if recv else c.helper)}
        if recv is None:
            sources["pgbackrest"] = self.gather_pgbackrest(first)
        for key, directory in sources.items():
            found = waldump_commits(directory, first)
            row["lost_" + key] = sum(1 for x in xids if x not in found)
            row["files_" + key] = len(os.listdir(directory))
            row["waldump_" + key] = found.end
            shutil.rmtree(directory, ignore_errors=True)
        row["kill_to_counted"] = time.monotonic() - killed
        c.pg_ctl("start")
        if recv is not None:
            recv.start()
        else:  # does archive_timeout switch segments within 8 s of the crash recovery? (None: it did not)
            row["switch_after_crash"] = self.probe_switch()
        return row

    def probe_switch(self, wait=8.0):
        """Seconds until the current segment changes while a row is written every 0.2 s (None: not in ``wait``)."""
        c = self.cluster
        start = time.monotonic()
        first = c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())")
        while time.monotonic() - start < wait:
            c.psql("INSERT INTO markers (tag) VALUES ('probe')")
            if c.psql("SELECT pg_walfile_name(pg_current_wal_insert_lsn())") != first:
                return time.monotonic() - start
            time.sleep(0.2)
        return None

    def commit_marker_fast(self, conn, tag):
        with conn.cursor() as cur:
            cur.execute("INSERT INTO markers (tag) VALUES (%s) RETURNING pg_current_xact_id()::text", (tag,))
            xid = cur.fetchone()[0]
        conn.commit()
        return xid

    def gather_module(self, series, recv, first, helper):
        """The location's segments from ``first`` on, fetched through opskit-wal (sha256 checked), and the
        receiver's .partial (as the segment it is, where the location has no finished one)."""
        out = tempfile.mkdtemp(prefix="waldump-", dir=self.cluster.root)  # removed with the cluster
        tl_dir = os.path.join(self.store, series, "wal", first[:8])
        names = sorted({n.split("-", 1)[0] for n in os.listdir(tl_dir) if len(n.split("-", 1)[0]) == 24}) if os.path.isdir(tl_dir) else []
        for name in names:
            if name >= first:
                subprocess.run(helper + ["fetch", name, os.path.join(out, name)], check=True, capture_output=True)
        if recv is not None:
            for name in os.listdir(recv.directory):
                if name.endswith(".partial") and name[:24] >= first and not os.path.exists(os.path.join(out, name[:24])):
                    shutil.copy(os.path.join(recv.directory, name), os.path.join(out, name[:24]))
        return out

    def gather_pgbackrest(self, first):
        out = tempfile.mkdtemp(prefix="waldump-", dir=self.cluster.root)  # removed with the cluster
        for path in glob.glob(os.path.join(self.pgbr, "repo", "archive", STANZA, "15-1", "*", "*")):
            name = os.path.basename(path)[:24]
            if len(name) == 24 and "." not in name and name >= first:
                with open(os.path.join(out, name), "wb") as fh:
                    subprocess.run(["zstd", "-dcq", path], stdout=fh, check=True)
        return out

    def rpo_modes(self):
        """Each mode of --modes: its setup, SAMPLES RPO samples, KILLS lost-commit rounds, its teardown."""
        results = {}
        for mode in self.args.modes:
            row = results[mode] = dict(samples=[], kills=[])
            if mode == "archive_command":
                self.set_archive_mode(True)
                self.cluster.psql("ALTER SYSTEM SET synchronous_standby_names = ''")
                self.cluster.psql("SELECT pg_reload_conf()")
                for _sample in range(self.args.samples):
                    row["samples"].append(self.rpo())
                    print(mode, json.dumps(row["samples"][-1]), flush=True)
                for _kill in range(self.args.kills):
                    row["kills"].append(self.kill_round(mode, None))
                    print(mode, json.dumps(row["kills"][-1]), flush=True)
                continue
            self.set_archive_mode(False)
            recv = WalReceiver(self, mode, synchronous=mode == "receive-sync")
            self.receivers.append(recv)
            recv.start()
            if mode == "receive-sync":
                self.cluster.psql("ALTER SYSTEM SET synchronous_standby_names = '\"%s\"'" % APP)
                self.cluster.psql("SELECT pg_reload_conf()")
            conn = self.connect()
            try:
                for _sample in range(self.args.samples):
                    row["samples"].append(self.rpo_receive(conn, recv, mode))
                    print(mode, json.dumps(row["samples"][-1]), flush=True)
            finally:
                conn.close()
            for _kill in range(self.args.kills):
                row["kills"].append(self.kill_round(mode, recv))
                print(mode, json.dumps(row["kills"][-1]), flush=True)
            self.cluster.psql("ALTER SYSTEM RESET synchronous_standby_names")  # before the receiver goes
            self.cluster.psql("SELECT pg_reload_conf()")
            recv.stop()
            self.cluster.psql("SELECT pg_drop_replication_slot('%s')" % recv.slot)
        return results

    def close(self):
        for recv in self.receivers:
            recv.kill()
        for data in self.restored:
            self.stop_restored(data)
        self.cluster.stop()
        shutil.rmtree(self.store, ignore_errors=True)
        shutil.rmtree(self.pgbr, ignore_errors=True)


class WalReceiver:
    """``opskit-wal receive`` (pg_receivewal from its own slot, finished segments pushed into its own series),
    as the server's user, the way tests/integration/test_pitr_receive.py's Receiver runs it."""

    def __init__(self, bench, mode, synchronous):
        from pitr_fixtures import install_helper
        c = bench.cluster
        self.cluster = c
        self.series = SERIES + "-" + mode
        self.slot = "bench_" + mode.replace("-", "_")
        self.directory = os.path.join(c.root, mode + "-receive")
        self.log = os.path.join(c.root, mode + "-receive.log")
        wal = os.path.join(bench.store, self.series, "wal")
        os.makedirs(wal, exist_ok=True)
        if c.account is not None:
            for path in (os.path.dirname(wal), wal):
                os.chown(path, c.account.pw_uid, c.account.pw_gid)
        receive = dict(directory=self.directory, slot=self.slot, synchronous=synchronous, bin_dir=BIN,
                       application_name=APP, pg=dict(host=c.host, port=c.port, user=c.user, password=c.password))
        self.helper = install_helper(os.path.join(c.root, mode + "-helper"), "file://" + bench.store, self.series,
                                     c.account, receive=receive)
        self.proc = None

    def tail(self):
        with open(self.log, errors="replace") as fh:
            return fh.read()[-2000:]

    def start(self):
        account = self.cluster.account
        ids = dict(user=account.pw_uid, group=account.pw_gid, extra_groups=[]) if account else {}
        with open(self.log, "a") as log:
            self.proc = subprocess.Popen(self.helper + ["receive"], stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=subprocess.STDOUT, cwd="/", start_new_session=True, **ids)
        deadline = time.monotonic() + 30
        while self.cluster.psql("SELECT count(*) FROM pg_stat_replication WHERE application_name = '%s'"
                                " AND state = 'streaming'" % APP) != "1":
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the receiver is not streaming\n" + self.tail())
            time.sleep(0.05)

    def stop(self):
        """SIGTERM: it pushes what it finished and its .partial (kept in the directory); waits for it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class Found(set):
    """xids, and ``end``: pg_waldump's last line (where and why it stopped)."""

    end = ""


def waldump_commits(directory, first):
    """The xids of the COMMIT records pg_waldump reads in ``directory`` from segment ``first`` on (it stops at
    the end of the valid WAL, with an error line that is expected here)."""
    if not os.path.exists(os.path.join(directory, first)):
        return Found()
    last = max(os.listdir(directory))  # without an end segment pg_waldump reads only the first one
    proc = subprocess.run([os.path.join(BIN, "pg_waldump"), "--path=" + directory, "--rmgr=Transaction", first, last],
                          capture_output=True, text=True, check=False)
    found = Found()
    for line in proc.stdout.splitlines():
        if "desc: COMMIT" in line:
            found.add(line.split("tx:", 1)[1].split(",", 1)[0].strip())
    found.end = (proc.stderr.strip().splitlines() or [""])[-1]
    return found


def restored_files(data):
    """How many files the recovery got through restore_command (the server log's "restored log file")."""
    with open(os.path.join(data, "log"), errors="replace") as fh:
        return sum(1 for line in fh if "restored log file" in line)


# -------------------------------------------------------------------- report

def report(args, bench, rounds, rpos, up_start, up_end):
    def med(key, side, field="seconds"):
        return statistics.median(r[key][side][field] for r in rounds)

    def all_of(key, side, field="seconds"):
        return ", ".join("%.2f" % r[key][side][field] for r in rounds)

    def all_of_int(key, side, field):
        return ", ".join(str(r[key][side].get(field)) for r in rounds)

    lines = ["# PITR: pg_backup method=physical and opskit-wal side by side with pgBackRest 2.45", "",
             "Command: `%s`" % args.command, "",
             "Machine: %s, %d cores, Python %s, PostgreSQL 15 and pgBackRest %s on the same machine (one throwaway "
             "cluster, fsync off). `uptime` before: `%s`; after: `%s`."
             % (platform.machine(), os.cpu_count(), platform.python_version(), bench.pgbr_version, up_start, up_end),
             "",
             "Database: `pgbench -i -s %d` (%.0f MiB, built in %.0f s). One archive_command runs `opskit-wal push` "
             "(system python: no zstandard, so zstd level 3 through the zstd command) and `pgbackrest archive-push` (zst) at once; "
             "archive_timeout 1 s. Module runs: one ansible-playbook process each, its wall time. pgBackRest: "
             "posix repository, compress-type=zst (level 3), start-fast=y, process-max=2. Restores include "
             "`pg_ctl start` and the wait until the cluster promoted at the target (both checked: the marker "
             "present, the row 0.2 s later absent). Medians of %d interleaved round(s) (every run listed)."
             % (args.scale, bench.db_size / MiB, bench.init_seconds, len(rounds)), "",
             "| measure | pg_backup / opskit-wal | pgBackRest | ratio (module / pgBackRest) | all runs (module; pgBackRest) |",
             "| --- | ---: | ---: | ---: | --- |"]
    for title, key, field in (("base backup s", "base", "seconds"),
                              ("base backup CPU s (its processes + the server's)", "base", "cpu"),
                              ("base backup stored MiB", "base", "stored"),
                              ("restore to time + recovery s (RTO)", "restore", "seconds")):
        m, p = med(key, "module", field), med(key, "pgbackrest", field)
        div = MiB if field == "stored" else 1
        lines.append("| %s | %.2f | %.2f | %.2f | %s; %s |" % (
            title, m / div, p / div, m / p, all_of(key, "module", field) if div == 1 else
            ", ".join("%.1f" % (r[key]["module"][field] / MiB) for r in rounds),
            all_of(key, "pgbackrest", field) if div == 1 else
            ", ".join("%.1f" % (r[key]["pgbackrest"][field] / MiB) for r in rounds)))
    for title, field, div in (("base backup s", "seconds", 1), ("base backup CPU s", "cpu", 1),
                              ("base backup stored MiB", "stored", MiB)):
        runs = [r["base"]["module"]["client"][field] / div for r in rounds]
        p = med("base", "pgbackrest", field) / div
        lines.append("| %s, client-side (`server_compression: false`, the way before) | %.2f | %.2f | %.2f | %s |" % (
            title, statistics.median(runs), p, statistics.median(runs) / p, ", ".join("%.2f" % v for v in runs)))
    m = statistics.median(r["module"] for r in rpos)
    p = statistics.median(r["pgbackrest"] for r in rpos)
    lines.append("| RPO, archive_command, commit to segment archived s | %.2f | %.2f | %.2f | %s; %s |" % (
        m, p, m / p, ", ".join("%.2f" % r["module"] for r in rpos), ", ".join("%.2f" % r["pgbackrest"] for r in rpos)))
    server = [r["base"]["module"] for r in rounds if r["base"]["module"].get("floor_server")]
    lines += ["", "Floors of the base backup: `pg_basebackup -D - -Ft -X none --checkpoint=fast > /dev/null` (the "
              "client-side way, without compression, sha256 or storage) %s s" % all_of("base", "module", "floor")
              + ("; `pg_basebackup -D - -Ft --checkpoint=fast --compress=%s -X fetch --no-manifest > /dev/null` "
                 "(what the module runs, without sha256 or storage) %s s." % (
                     server[0]["compress"], ", ".join("%.2f" % m["floor_server"] for m in server)) if server else "."),
              "", "Split: an ansible-playbook run of one `ansible.builtin.debug` task takes %s s here (the playbook "
              "overhead inside the module figures). Base backup inside the module (`duration_seconds`): %s s. "
              "Restore: the module's ansible-playbook run (fetch + extract + settings) %s s, of which %s s inside "
              "the module (`restore_seconds`); `pgbackrest restore` %s s; the rest of each is start + recovery."
              % (all_of("base", "module", "noop"), all_of("base", "module", "in_module"),
                 all_of("restore", "module", "playbook"), all_of("restore", "module", "in_module"),
                 all_of("restore", "pgbackrest", "restore")),
              "", "Order of the restores: the module's first in odd rounds, pgBackRest's first in even ones. "
              "RTO when first: module %s s, pgBackRest %s s; when second: module %s s, pgBackRest %s s."
              % tuple(by_position(rounds, side, first) for first in (True, False) for side in ("module", "pgbackrest")),
              "", "Start + recovery (the rest of each restore figure): module %s s, pgBackRest %s s. Files the "
              "recovery got through restore_command: module %s (prefetched into the spool by the restore: %s), "
              "pgBackRest %s." % (all_of("restore", "module", "start"), all_of("restore", "pgbackrest", "start"),
                                  all_of_int("restore", "module", "restored"), all_of_int("restore", "module", "prefetched"),
                                  all_of_int("restore", "pgbackrest", "restored")),
              "", "WAL archived during the run: opskit-wal %.1f MiB (zstd 3), pgBackRest %.1f MiB (zst)."
              % (bench.wal_sizes[0] / MiB, bench.wal_sizes[1] / MiB),
              "", "Goal (issue 19): faster than pgBackRest on base backup and restore, at no larger size.", "",
              "Every figure: `%s`" % json.dumps(dict(rounds=rounds, rpo=rpos))]
    return "\n".join(lines) + "\n"


def by_position(rounds, side, first):
    """The RTOs of ``side`` in the rounds where its restore ran first (or second), or "-"."""
    runs = ["%.2f" % r["restore"][side]["seconds"] for r in rounds if r["restore"][side].get("first") == first]
    return ", ".join(runs) or "-"


def fmt(values, digits=2):
    return ", ".join("-" if v is None else "%.*f" % (digits, v) for v in values)


def med(values, digits=3):
    values = [v for v in values if v is not None]
    return "%.*f" % (digits, statistics.median(values)) if values else "-"


def report_modes(args, results, up_start, up_end, db_size):
    """The "RPO by archiving mode" subsection (### inside the PITR section of RESULTS.md)."""
    lines = ["### RPO by archiving mode (issue 19, items 5 and 6, session 8)", "",
             "Command: `%s` (%s UTC)" % (args.command, args.started), "",
             "`uptime` before: `%s`; after: `%s`. Machine: %s, %d cores, shared with other jobs. One throwaway "
             "PostgreSQL 15 cluster (fsync off on the server; pg_receivewal fsyncs its own files), `pgbench -i -s %d` "
             "(%.0f MiB), the modes one after the other on it, each with its own setup and teardown."
             % (up_start, up_end, platform.machine(), os.cpu_count(), args.scale, db_size / MiB, ), "",
             "| mode | measure | median s | every sample s |", "| --- | --- | ---: | --- |"]
    for mode, row in results.items():
        samples = row["samples"]
        if mode == "archive_command":
            for key, title in (("module", "commit to segment archived, opskit-wal push"),
                               ("pgbackrest", "commit to segment archived, pgbackrest archive-push")):
                values = [r[key] for r in samples]
                lines.append("| %s | %s | %s | %s |" % (mode, title, med(values), fmt(values, 3)))
            continue
        for key, title in (("write", "commit to write_lsn >= commit LSN (pg_stat_replication)"),
                           ("flush", "commit to flush_lsn >= commit LSN (pg_stat_replication)"),
                           ("location", "commit + pg_switch_wal() to segment at the location")):
            values = [r[key] for r in samples]
            lines.append("| %s | %s | %s | %s |" % (mode, title, med(values), fmt(values, 3)))
    lines += ["", "Lost commits: %d commits one by one, %.2f s apart, on one psycopg2 connection; SIGKILL of the "
              "server's whole process group right after the last commit returned; then the receiver stopped (SIGTERM: "
              "it pushes what it finished, keeps its .partial); counted: acknowledged commits whose COMMIT record "
              "`pg_waldump` does not find in the WAL held outside the server (the location's segments from the round's "
              "first segment on, fetched through `opskit-wal fetch`, plus the receiver's .partial; for archive_command "
              "also pgBackRest's archive)." % (args.commits, args.commit_gap), "",
              "archive_command rounds first wait (up to 30 s) until archive_timeout switches a segment while a row is "
              "written every 0.2 s; the last column gives that wait (-: no switch within 30 s; the round ran all the same).",
              "", "| mode | WAL read | lost commits per round (of %d) | commit span s per round | files read per round "
              "| archive_timeout switch before the round s |" % args.commits, "| --- | --- | --- | --- | --- | --- |"]
    for mode, row in results.items():
        for key in ("module", "pgbackrest"):
            if row["kills"] and "lost_" + key in row["kills"][0]:
                lines.append("| %s | %s | %s | %s | %s | %s |" % (
                    mode, "opskit location" + ("" if mode == "archive_command" else " + receiver .partial")
                    if key == "module" else "pgBackRest archive",
                    ", ".join(str(k["lost_" + key]) for k in row["kills"]), fmt(k["span"] for k in row["kills"]),
                    ", ".join(str(k["files_" + key]) for k in row["kills"]),
                    fmt([k.get("waited_for_switch") for k in row["kills"]]) if mode == "archive_command" else "n/a"))
    lines += ["", "Every figure: `%s`" % json.dumps(results)]
    return "\n".join(lines) + "\n"


RPO_HEADING = "\n### RPO by archiving mode"


def update_rpo_subsection(text):
    """Replace (or add at the end of the PITR section) the "RPO by archiving mode" subsection of RESULTS.md."""
    path = os.path.join(HERE, "RESULTS.md")
    with open(path) as fh:
        old = fh.read()
    section = old.find("\n## PITR")
    if section < 0:
        raise RuntimeError("RESULTS.md has no PITR section")
    end = old.find("\n## ", section + 1)
    end = len(old) if end < 0 else end
    start = old.find(RPO_HEADING, section, end)
    if start >= 0:
        stop = old.find("\n### ", start + 1, end)
        stop = end if stop < 0 else stop
    else:
        start = stop = end
    new = old[:start].rstrip("\n") + "\n\n" + text.strip() + "\n" + old[stop:]
    with open(path, "w") as fh:
        fh.write(new)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5, help="RPO samples (per mode with --modes)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "pitr.md"))
    parser.add_argument("--rpo-only", action="store_true",
                        help="no base backup / restore rounds: only the RPO of each of --modes")
    parser.add_argument("--modes", type=lambda v: [m for m in v.split(",") if m],
                        help="RPO by archiving mode, comma-separated: %s (default with --rpo-only: all)" % ",".join(MODES))
    parser.add_argument("--kills", type=int, default=1, help="lost-commit rounds per mode")
    parser.add_argument("--commits", type=int, default=60, help="commits of a lost-commit round")
    parser.add_argument("--commit-gap", type=float, default=0.05, help="seconds between its commits")
    args = parser.parse_args()
    if args.modes is None and args.rpo_only:
        args.modes = list(MODES)
    bad = [m for m in args.modes or [] if m not in MODES]
    if bad:
        parser.error("--modes: unknown %s (known: %s)" % (",".join(bad), ",".join(MODES)))
    args.command = ".venv/bin/python bench/pitr.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    args.started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())
    up_start = uptime()
    bench = Bench(args)
    bench.pgbr_version = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    rounds, rpos, modes = [], [], None
    try:
        bench.setup()
        for round_no in range(1, 0 if args.rpo_only else args.rounds + 1):
            row = {}
            row["base"] = dict(zip(("module", "pgbackrest"), bench.base_backups()))
            target = bench.marker(round_no)
            row["target"] = target
            row["restore"] = dict(zip(("module", "pgbackrest"), bench.restores(target, round_no)))
            row["load"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            rounds.append(row)
        if not args.rpo_only:
            for _sample in range(args.samples):
                rpos.append(bench.rpo())
                print(json.dumps(rpos[-1]), flush=True)
            bench.wal_sizes = (du([os.path.join(bench.store, SERIES, "wal")]),
                               du([os.path.join(bench.pgbr, "repo", "archive")]))
        if args.modes:
            modes = bench.rpo_modes()
    finally:
        bench.close()
    up_end = uptime()
    if not args.rpo_only:
        text = report(args, bench, rounds, rpos, up_start, up_end)
        print(text)
        write_results(args.out, text)
        update_results(text)
    if modes is not None:
        text = report_modes(args, modes, up_start, up_end, bench.db_size)
        print(text)
        update_rpo_subsection(text)


def update_results(text):
    """Replace (or append) the PITR section of bench/RESULTS.md. Not collect.py: RESULTS.md holds
    hand-written readings that are in no bench/results/*.md file, which a rebuild would drop."""
    path = os.path.join(HERE, "RESULTS.md")
    with open(path) as fh:
        old = fh.read()
    section = "\n".join("#" + line if line.startswith("#") else line for line in text.strip().splitlines())
    start = old.find("\n## PITR")
    if start >= 0:
        end = old.find("\n## ", start + 1)
        tail = old[end:] if end >= 0 else "\n"
        kept = old.find(RPO_HEADING, start, end if end >= 0 else len(old))
        if kept >= 0:  # the RPO-by-mode subsection (--rpo-only runs) stays
            stop = old.find("\n### ", kept + 1, end if end >= 0 else len(old))
            section += "\n" + old[kept:stop if stop >= 0 else (end if end >= 0 else len(old))].rstrip("\n")
        new = old[:start] + "\n" + section + "\n" + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as fh:
        fh.write(new)


if __name__ == "__main__":
    main()
