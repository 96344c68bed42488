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
               hold the marker and not the later row
  sizes        the base backup objects of the series vs the backup's directory in the repository
RPO (after the rounds, SAMPLES times): commit a row, then the time until the segment holding it is
in each archive (opskit: <series>/wal/<tl>/<segment>-*; pgBackRest: archive/<stanza>/15-1/...).

Everything it starts (clusters, store, repository) is removed at the end, also on failure.

Usage: .venv/bin/python bench/pitr.py [--scale 100] [--rounds 3] [--samples 5]
       [--out bench/results/pitr.md]
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
        cpu = self.cpu()
        seconds, result = self.playbook("base", self.module_args())
        cpu = self.cpu() - cpu
        backup = result["backup"]
        objects = glob.glob(os.path.join(self.store, SERIES, backup["id"] + "*"))
        module = dict(seconds=seconds, stored=sum(os.path.getsize(p) for p in objects), cpu=cpu,
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
        root = self.cluster.root
        data = os.path.join(root, "restored-module-%d" % round_no)
        start = time.monotonic()
        seconds, result = self.playbook("restore", self.module_args(state="restored", data_directory=data,
                                                                    target_time=target))
        env = self.start_and_wait(data)
        module = dict(seconds=time.monotonic() - start, playbook=seconds,
                      in_module=result.get("recovery", {}).get("restore_seconds"),
                      prefetched=result.get("recovery", {}).get("wal_prefetched"), restored=restored_files(data))
        module["start"] = module["seconds"] - seconds
        self.check_and_stop(data, env, round_no)
        data = os.path.join(root, "restored-pgbr-%d" % round_no)
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
        return module, pgbr

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

    def close(self):
        for data in self.restored:
            self.stop_restored(data)
        self.cluster.stop()
        shutil.rmtree(self.store, ignore_errors=True)
        shutil.rmtree(self.pgbr, ignore_errors=True)


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--samples", type=int, default=5, help="RPO samples")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "pitr.md"))
    args = parser.parse_args()
    args.command = ".venv/bin/python bench/pitr.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    up_start = uptime()
    bench = Bench(args)
    bench.pgbr_version = subprocess.run(["pgbackrest", "version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    rounds, rpos = [], []
    try:
        bench.setup()
        for round_no in range(1, args.rounds + 1):
            row = {}
            row["base"] = dict(zip(("module", "pgbackrest"), bench.base_backups()))
            target = bench.marker(round_no)
            row["target"] = target
            row["restore"] = dict(zip(("module", "pgbackrest"), bench.restores(target, round_no)))
            row["load"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            rounds.append(row)
        for _sample in range(args.samples):
            rpos.append(bench.rpo())
            print(json.dumps(rpos[-1]), flush=True)
        bench.wal_sizes = (du([os.path.join(bench.store, SERIES, "wal")]),
                           du([os.path.join(bench.pgbr, "repo", "archive")]))
    finally:
        bench.close()
    text = report(args, bench, rounds, rpos, up_start, uptime())
    print(text)
    write_results(args.out, text)
    update_results(text)


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
        new = old[:start] + "\n" + section + "\n" + tail
    else:
        new = old.rstrip("\n") + "\n\n" + section + "\n"
    with open(path, "w") as fh:
        fh.write(new)


if __name__ == "__main__":
    main()
