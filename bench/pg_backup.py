#!/usr/bin/env python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup side by side with pg_dump / pg_restore, on one throwaway PostgreSQL 15 cluster.

Databases (built once, kept in --cluster-dir for reruns):
  pgbench    pgbench -i -s SCALE (compresses trivially)
  pgbench_s  pgbench -i -s SMALL_SCALE (second size, for the memory comparison)
  randtext   ROWS rows of two random md5 strings (does not compress trivially)

Per database, in one run, on a warm cache (one discarded warm-up dump first):
  floor        pg_dump -Fc -Z0 > /dev/null          (pg_dump alone)
  pg_dump -Fc  pg_dump -Fc -f FILE                   (pg_dump's gzip)
  zstd pipe    pg_dump -Fc -Z0 | zstd -T2 -3 > FILE
  module file  pg_backup state=dumped to file://     (the module's code in a child process)
  module s3    pg_backup state=dumped to s3:// (moto server on loopback)
Restores (pgbench and randtext): pg_restore -j2 from the local pg_dump -Fc file vs pg_backup
state=restored jobs=2 from the S3 endpoint, each into a new database.

The module runs as `dump()` / `restore()` of plugins/module_utils/_postgres/ in a fresh child
Python process (what the module's main() calls), so the peak RSS (VmHWM) is that process's
alone; pg_dump runs as its child and is not counted.

Usage: .venv/bin/python bench/pg_backup.py [--scale 100] [--small-scale 10] [--rows 8000000]
       [--cluster-dir /var/tmp/opskit-bench-pg] [--out bench/results/pg_backup.md]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from collect import write_results

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
sys.path.insert(0, os.path.join(ROOT, "tests", "integration"))
sys.path.insert(0, COLLECTIONS)  # pg_fixtures imports the collection
MiB = 1024 * 1024
BIN = "/usr/lib/postgresql/15/bin"


def vm(field):
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field):
                return int(line.split()[1]) * 1024
    return 0


# ------------------------------------------------------------ child process

def child(spec):
    sys.path.insert(0, COLLECTIONS)
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres.dump import dump
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres.restore import restore
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres.server import open_server
    from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
    params = dict(spec["params"])
    location = open_location(params["location"], **spec.get("storage", {}))
    probes = profile_probes() if spec.get("profile") else None
    if spec.get("split_after"):  # the staged restore with one data loader: rows never shared
        from ansible_collections.opskit.runbook.plugins.module_utils._postgres import staged_split
        staged_split.SPLIT_AFTER = spec["split_after"]
    base = vm("VmRSS")
    start = time.monotonic()
    with open_server(params) as server:
        if spec["action"] == "dump":
            result = dump(server, location, params)
            stored = result["backup"]["size_bytes"]
        else:
            restore(server, location, params)
            stored = None
    out = dict(seconds=time.monotonic() - start, stored=stored, hwm=vm("VmHWM"), base=base)
    if probes is not None:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        out.update(probes, module_cpu=own.ru_utime + own.ru_stime, tools_cpu=kids.ru_utime + kids.ru_stime)
    print(json.dumps(out))


def profile_probes():
    """Thread-CPU counters around the staged restore's stages (--profile): the download thread
    (GET reads and the writes into the pipe), and in the thread that feeds pg_restore: pipe
    reads, sha256, decompression and the writes to pg_restore. Returns the dict they fill."""
    from ansible_collections.opskit.runbook.plugins.module_utils._engine import artifacts
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres import staged, tools
    acc = collections.defaultdict(float)

    def timed_method(cls, name, key):
        orig = getattr(cls, name)

        def wrapper(*args, **kwargs):
            start = time.thread_time()
            try:
                return orig(*args, **kwargs)
            finally:
                acc[key] += time.thread_time() - start
        setattr(cls, name, wrapper)

    for cls, name, key in ((staged._PipeReader, "_download", "download_thread"),
                           (staged._PipeReader, "read", "pipe_read"),
                           (artifacts.ArtifactReader, "_read_stored", "stored"),
                           (artifacts.ArtifactReader, "_decompressed", "decompressed")):
        if hasattr(cls, name):
            timed_method(cls, name, key)
    pump = tools._pump

    def timed_pump(source, write, stopped):
        def timed_write(data):
            start = time.thread_time()
            try:
                return write(data)
            finally:
                acc["tool_write"] += time.thread_time() - start
        start = time.thread_time()
        try:
            return pump(source, timed_write, stopped)
        finally:
            acc["pump"] += time.thread_time() - start
    tools._pump = timed_pump
    return acc


def proc_cpu(pid, children=False):
    """utime+stime (and the reaped children's with ``children``) of a process, in seconds."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return sum(int(x) for x in fields[11:15 if children else 13]) / os.sysconf("SC_CLK_TCK")


def cluster_cpu(c):
    """CPU seconds of the cluster: the postmaster with its reaped children, and the live ones."""
    with open(os.path.join(c.data, "postmaster.pid")) as fh:
        postmaster = int(fh.readline())
    total = proc_cpu(postmaster, children=True)
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open("/proc/%s/stat" % pid) as fh:
                    if int(fh.read().rsplit(")", 1)[1].split()[1]) == postmaster:
                        total += proc_cpu(int(pid))
            except OSError:
                continue
    return total


def run_child(spec):
    out = subprocess.run([sys.executable, __file__, "--child"], input=json.dumps(spec), capture_output=True,
                         text=True, check=False)
    if out.returncode:
        sys.exit("module child failed: %s" % out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ helpers

def timed(argv, env, stdout=None, shell_pipe=None):
    start = time.monotonic()
    if shell_pipe:
        first = subprocess.Popen(shell_pipe[0], env=env, stdout=subprocess.PIPE)
        with open(shell_pipe[2], "wb") as fh:
            second = subprocess.Popen(shell_pipe[1], stdin=first.stdout, stdout=fh)
            first.stdout.close()
            rc = second.wait() or first.wait()
    else:
        with open(stdout or os.devnull, "wb") as fh:
            rc = subprocess.run(argv, env=env, stdout=fh, check=False).returncode
    if rc:
        sys.exit("command failed: %s" % (argv or shell_pipe))
    return time.monotonic() - start


def cluster(args):
    from pg_fixtures import Cluster
    state = os.path.join(args.cluster_dir, "state.json")
    if os.path.exists(state):
        with open(state) as fh:
            info = json.load(fh)
        c = Cluster.__new__(Cluster)
        c.__dict__.update(info)
        c.env = dict(os.environ, PGHOST=c.host, PGPORT=str(c.port), PGUSER=c.user, PGPASSWORD=c.password)
        try:
            c.psql("SELECT 1")
            return c
        except subprocess.CalledProcessError:
            subprocess.run([os.path.join(BIN, "pg_ctl"), "-D", c.data, "-o",
                            "-c listen_addresses=127.0.0.1 -p %d -k %s" % (c.port, c.root), "-l",
                            os.path.join(c.root, "log"), "-w", "start"], check=True,
                           preexec_fn=_demote(), capture_output=True)
            return c
    os.makedirs(args.cluster_dir, exist_ok=True)
    c = Cluster("bench-password")
    c.start()
    with open(state, "w") as fh:
        json.dump({k: v for k, v in c.__dict__.items() if k != "env"}, fh)
    return c


def _demote():
    from pg_fixtures import _demote as demote
    return demote()


def ensure_databases(c, args):
    have = set(c.psql("SELECT datname FROM pg_database").split())
    for name, scale in (("pgbench", args.scale), ("pgbench_s", args.small_scale)):
        if name not in have:
            print("creating %s (pgbench scale %d) ..." % (name, scale), flush=True)
            c.createdb(name)
            subprocess.run([os.path.join(BIN, "pgbench"), "-i", "-q", "-s", str(scale), name], env=c.env,
                           check=True, capture_output=True)
    if "randtext" not in have:
        print("creating randtext (%d rows) ..." % args.rows, flush=True)
        c.createdb("randtext")
        c.psql("CREATE TABLE r AS SELECT g AS id, md5(random()::text) AS a, md5(random()::text) AS b"
               " FROM generate_series(1, %d) g" % args.rows, "randtext")
    c.psql("CHECKPOINT")


def size_of(c, db):
    return int(c.psql("SELECT pg_database_size('%s')" % db))


# -------------------------------------------------------------------- main

def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(json.loads(sys.stdin.read()))  # the spec holds a password: stdin, not argv
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=100)
    parser.add_argument("--small-scale", type=int, default=10)
    parser.add_argument("--rows", type=int, default=8000000)
    parser.add_argument("--cluster-dir", default="/var/tmp/opskit-bench-pg")
    parser.add_argument("--skip-restore", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--restore-only", action="store_true",
                        help="only the restore comparison (the dumps it needs are made untimed); its table"
                             " is appended to --out")
    parser.add_argument("--restore-rounds", type=int, default=3, help="with --restore-only")
    parser.add_argument("--profile", action="store_true",
                        help="with --restore-only: one profiled restore of each kind instead of the rounds (CPU per process)")
    parser.add_argument("--tmpfs", help="with --restore-only: also restore with tmp_dir on this tmpfs directory")
    parser.add_argument("--db", action="append", choices=["pgbench", "randtext", "pgbench_s"],
                        help="only these databases (repeat)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "pg_backup.md"))
    args = parser.parse_args()
    args.uptime_start = uptime()
    from pg_fixtures import free_port
    c = cluster(args)
    ensure_databases(c, args)
    env = c.env
    conn = dict(host=c.host, port=c.port, user=c.user, password=c.password)
    port = free_port()
    endpoint = "http://127.0.0.1:%d" % port
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    storage = dict(endpoint_url=endpoint, access_key="bench", secret_key="bench-secret", region="us-east-1")
    tmp = tempfile.mkdtemp(prefix="opskit-bench-", dir="/var/tmp")
    dumps, restores = [], []
    try:
        import boto3
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="bench",
                          aws_secret_access_key="bench-secret")
        for _attempt in range(100):
            try:
                s3.create_bucket(Bucket="bench")
                break
            except Exception:  # pylint: disable=broad-except
                time.sleep(0.1)
        pg_dump = os.path.join(BIN, "pg_dump")
        for db in args.db or ("pgbench", "randtext", "pgbench_s"):
            if args.restore_only and args.profile:
                restores.extend(profile_restore(c, db, tmp, conn, storage, env, moto))
                continue
            if args.restore_only:
                if db != "pgbench_s":
                    restores.append(restore_only(c, db, tmp, conn, storage, env, args.restore_rounds,
                                                 args.tmpfs))
                continue
            row = {"db": db, "size": size_of(c, db), "load_before": os.getloadavg()[0]}
            print("== %s (%.0f MiB)" % (db, row["size"] / MiB), flush=True)
            timed([pg_dump, "-Fc", "-Z0", "-d", db], env)  # warm-up, discarded
            fc_file = os.path.join(tmp, db + ".dump")
            zfile = os.path.join(tmp, db + ".dump.zst")
            params = dict(conn, database=[db], format="custom", jobs=1, compression="zstd",
                          compression_level=None, compression_threads=-1, series=None)
            runs = {}

            def variant(key, func):
                runs.setdefault(key, []).append(func())

            for _round in range(args.rounds):  # interleaved rounds: the same load for every variant
                variant("floor", lambda: timed([pg_dump, "-Fc", "-Z0", "-d", db], env))
                variant("fc", lambda: timed([pg_dump, "-Fc", "-d", db, "-f", fc_file], env))
                row["fc_size"] = os.path.getsize(fc_file)
                variant("zstd", lambda: timed(None, env, shell_pipe=(
                    [pg_dump, "-Fc", "-Z0", "-d", db], ["zstd", "-q", "-T2", "-3", "-c"], zfile)))
                row["zstd_size"] = os.path.getsize(zfile)
                got = run_child({"action": "dump", "params": dict(params, location="file://%s/store" % tmp)})
                runs.setdefault("module_file", []).append(got["seconds"])
                row.update(module_size=got["stored"], hwm_file=max(row.get("hwm_file", 0), got["hwm"]))
                got = run_child({"action": "dump", "params": dict(params, location="s3://bench/%s" % db),
                                 "storage": storage})
                runs.setdefault("module_s3", []).append(got["seconds"])
                row.update(module_s3_size=got["stored"], hwm_s3=max(row.get("hwm_s3", 0), got["hwm"]))
            os.unlink(zfile)
            for key, values in runs.items():
                row[key] = min(values)
                row[key + "_all"] = [round(v, 2) for v in values]
            row["load_after"] = os.getloadavg()[0]
            print(json.dumps(row), flush=True)
            dumps.append(row)
            if db == "pgbench_s" or args.skip_restore:
                os.unlink(fc_file)
                continue
            target = db + "_r1"
            c.psql("DROP DATABASE IF EXISTS %s" % target)
            c.createdb(target)
            rrow = {"db": db, "load_before": os.getloadavg()[0]}
            rrow["pg_restore"] = timed([os.path.join(BIN, "pg_restore"), "-j2", "-d", target, fc_file], env)
            c.psql("DROP DATABASE %s" % target)
            rparams = dict(conn, state="restored", database=[db], series="%s-%s" % (c.host, db), jobs=2,
                           format="custom", target_database=target, create=True, clean=False, force=False,
                           single_transaction=False, restore_globals=False, backup="latest",
                           location="s3://bench/%s" % db)
            got = run_child({"action": "restore", "params": rparams, "storage": storage})
            rrow.update(module=got["seconds"], hwm=got["hwm"])
            c.psql("DROP DATABASE %s" % target)
            rrow["load_after"] = os.getloadavg()[0]
            os.unlink(fc_file)
            print(json.dumps(rrow), flush=True)
            restores.append(rrow)
    finally:
        moto.terminate()
        moto.wait()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.profile:
        print("uptime at the start: %s; at the end: %s" % (args.uptime_start, uptime()))
        return
    write_report(args, dumps, restores)


def restore_inputs(c, db, tmp, conn, storage, env):
    """(a pg_dump -Fc file of ``db``, the restores' target, the module's restore parameters),
    made untimed: the module's dump of ``db`` is on S3, the target does not exist."""
    fc_file = os.path.join(tmp, db + ".dump")
    timed([os.path.join(BIN, "pg_dump"), "-Fc", "-d", db, "-f", fc_file], env)
    params = dict(conn, database=[db], format="custom", jobs=1, compression="zstd", compression_level=None,
                  compression_threads=-1, series=None, location="s3://bench/%s" % db)
    run_child({"action": "dump", "params": params, "storage": storage})
    target = db + "_r1"
    c.psql("DROP DATABASE IF EXISTS %s" % target)
    rparams = dict(conn, state="restored", database=[db], series="%s-%s" % (c.host, db), jobs=2, format="custom",
                   target_database=target, create=True, clean=False, force=False, single_transaction=False,
                   restore_globals=False, backup="latest", location="s3://bench/%s" % db)
    return fc_file, target, rparams


def restore_only(c, db, tmp, conn, storage, env, rounds=3, tmpfs=None):
    """The restore comparison alone, in ``rounds`` interleaved rounds (medians reported).

    Inputs, made untimed: a ``pg_dump -Fc`` file; the same database dumped ``-Fc -Z0`` through
    a pipe into a file (the form the module's temporary copy has: no data offsets in its TOC,
    one data chunk per row); a module dump on S3. Variants per round: pg_restore -j2 from each
    file, and the module restoring jobs=2 from S3 with its default tmp_dir and, when ``tmpfs``
    is set, with tmp_dir on that tmpfs. ``module`` is the staged restore (streamed into a staging
    database, post-data by pg_restore -j2 from the kept TOC, renamed in at the end);
    ``module_one`` the same with one data loader (the rows of a large table not shared, as before
    staged_split); ``module_copy`` the restore with staged=false (a verified temporary copy, then
    pg_restore -j2).
    """
    pipe_file = os.path.join(tmp, db + ".pipe.dump")
    timed(None, env, shell_pipe=([os.path.join(BIN, "pg_dump"), "-Fc", "-Z0", "-d", db], ["cat"], pipe_file))
    fc_file, target, rparams = restore_inputs(c, db, tmp, conn, storage, env)
    row = {"db": db, "load_before": os.getloadavg()[0], "raw_bytes": os.path.getsize(pipe_file)}
    runs, hwm = {}, 0

    def pg_restore(path):
        c.createdb(target)
        subprocess.run(["sync"], check=True)
        return timed([os.path.join(BIN, "pg_restore"), "-j2", "-d", target, path], env)

    def module(tmp_dir=None, staged=True, split_after=None):
        nonlocal hwm
        subprocess.run(["sync"], check=True)
        got = run_child({"action": "restore", "params": dict(rparams, tmp_dir=tmp_dir, staged=staged),
                         "storage": storage, "split_after": split_after})
        hwm = max(hwm, got["hwm"])
        return got["seconds"]

    variants = [("pg_restore", lambda: pg_restore(fc_file)), ("pg_restore_pipe", lambda: pg_restore(pipe_file)),
                ("module", module), ("module_one", lambda: module(split_after=1 << 62)),
                ("module_copy", lambda: module(staged=False))]
    if tmpfs:
        variants.append(("module_tmpfs", lambda: module(tmpfs)))
    for _round in range(rounds):
        for key, func in variants:
            runs.setdefault(key, []).append(func())
            c.psql("DROP DATABASE %s" % target)
    for key, values in runs.items():
        row[key] = statistics.median(values)
        row[key + "_all"] = [round(v, 2) for v in values]
    row.update(hwm=hwm, load_after=os.getloadavg()[0], tmpfs=tmpfs)
    os.unlink(fc_file)
    os.unlink(pipe_file)
    print(json.dumps(row), flush=True)
    return row


def profile_restore(c, db, tmp, conn, storage, env, moto):
    """--profile: one pg_restore -j2 from a local -Fc file and one staged module restore (jobs=2,
    from S3), each into a new database, with the CPU seconds of every process taking part: the
    module (and its threads' stages), moto, pg_restore, the cluster's backends."""
    fc_file, target, rparams = restore_inputs(c, db, tmp, conn, storage, env)
    rows = []
    for variant in ("pg_restore", "module"):
        subprocess.run(["sync"], check=True)
        if variant == "pg_restore":
            c.createdb(target)
        before = (cluster_cpu(c), proc_cpu(moto.pid), resource.getrusage(resource.RUSAGE_CHILDREN), os.getloadavg()[0])
        if variant == "pg_restore":
            got = {"seconds": timed([os.path.join(BIN, "pg_restore"), "-j2", "-d", target, fc_file], env)}
        else:
            got = run_child({"action": "restore", "params": rparams, "storage": storage, "profile": True})
        time.sleep(0.5)  # the backends exit and are reaped
        kids = resource.getrusage(resource.RUSAGE_CHILDREN)
        got.update(variant=variant, db=db, backend_cpu=cluster_cpu(c) - before[0], moto_cpu=proc_cpu(moto.pid) - before[1],
                   child_cpu=kids.ru_utime + kids.ru_stime - before[2].ru_utime - before[2].ru_stime,
                   load_before=before[3], load_after=os.getloadavg()[0])
        c.psql("DROP DATABASE %s" % target)
        print(json.dumps(got, sort_keys=True), flush=True)
        rows.append(got)
    os.unlink(fc_file)
    return rows


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def write_report(args, dumps, restores):
    cmd = ".venv/bin/python bench/pg_backup.py --scale %d --small-scale %d --rows %d --rounds %d%s%s%s" % (
        args.scale, args.small_scale, args.rows, args.rounds, " --skip-restore" if args.skip_restore else "",
        (" --restore-only --restore-rounds %d%s" % (args.restore_rounds, (" --tmpfs " + args.tmpfs) if args.tmpfs else ""))
        if args.restore_only else "", "".join(" --db " + d for d in args.db or []))
    if args.restore_only:
        lines = ["", "## Restores, measured again (%s)" % time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "",
                 "Command: `%s`" % cmd, "",
                 "Medians of %d interleaved rounds (a `sync` before each run; every run in the JSON below)."
                 " Custom format, 2 jobs. `pipe-written -Z0 file`: the same database dumped with"
                 " `pg_dump -Fc -Z0 | cat > file`, the form of the module's temporary copy." % args.restore_rounds,
                 "",
                 "| database | load | raw dump MiB | pg_restore -j2 from a local -Fc file s"
                 " | pg_restore -j2 from a pipe-written -Z0 file s | module staged from s3:// s | ratio"
                 " | module staged, one data loader s | ratio"
                 " | module staged=false (temporary copy) from s3:// s | ratio"
                 " | module staged, tmp_dir on tmpfs s | ratio | module peak RSS MiB |",
                 "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for r in restores:
            tmpfs = ("%.2f | %.2f" % (r["module_tmpfs"], r["module_tmpfs"] / r["pg_restore"])
                     if r.get("tmpfs") else "- | -")
            lines.append("| %s | %.1f/%.1f | %.0f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %.2f | %s | %.0f |" % (
                r["db"], r["load_before"], r["load_after"], r["raw_bytes"] / MiB, r["pg_restore"],
                r["pg_restore_pipe"], r["module"], r["module"] / r["pg_restore"], r["module_one"],
                r["module_one"] / r["pg_restore"], r["module_copy"],
                r["module_copy"] / r["pg_restore"], tmpfs, r["hwm"] / MiB))
        lines += ["", "`uptime` at the start: `%s`; at the end: `%s`" % (args.uptime_start, uptime()),
                  "", "Every figure: `%s`" % json.dumps(restores, sort_keys=True)]
        with open(args.out, "a") as fh:
            fh.write("\n".join(lines) + "\n")
        print("\n".join(lines))
        return
    lines = [
        "# pg_backup: dumps and restores side by side with pg_dump / pg_restore", "",
        "Command: `%s`" % cmd, "",
        "Machine: %s, %d cores, Python %s, PostgreSQL 15 on the same machine (throwaway cluster)."
        " S3: moto server on loopback." % (platform.machine(), os.cpu_count(), platform.python_version()),
        "Dumps: best of %d interleaved rounds (each round runs every variant once; all runs in the JSON"
        " log), warm cache (a discarded warm-up dump first). Restores: one run each. The machine is"
        " shared with other work: the 1-minute load average before/after each database is shown." % args.rounds,
        "`module` = `_postgres.dump.dump()` / `_postgres.restore.restore()` (what the module's main() runs) in a fresh child"
        " Python process, zstd level 3 on all cores, custom format; time excludes interpreter start."
        " Peak RSS = VmHWM of that process (pg_dump / pg_restore not counted).", "",
        "## Dumps", "",
        "| database | size MiB | load | floor s (pg_dump -Fc -Z0 >/dev/null) | pg_dump -Fc s | MiB"
        " | pg_dump -Z0 \\| zstd -T2 -3 s | MiB | module file:// s | MiB | module s3:// s | s3/file"
        " | speedup vs pg_dump -Fc | module/floor | peak RSS MiB (file / s3) |",
        "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in dumps:
        lines.append("| %s | %.0f | %.1f/%.1f | %.2f | %.2f | %.1f | %.2f | %.1f | %.2f | %.1f | %.2f | %.2f"
                     " | %.2fx | %.2f | %.0f / %.0f |" % (
                         r["db"], r["size"] / MiB, r["load_before"], r["load_after"], r["floor"], r["fc"],
                         r["fc_size"] / MiB, r["zstd"], r["zstd_size"] / MiB, r["module_file"],
                         r["module_size"] / MiB, r["module_s3"], r["module_s3"] / r["module_file"],
                         r["fc"] / r["module_file"], r["module_file"] / r["floor"], r["hwm_file"] / MiB,
                         r["hwm_s3"] / MiB))
    if restores:
        lines += ["", "## Restores (custom format, 2 jobs)", "",
                  "| database | load | pg_restore -j2 from a local -Fc file s | module restored jobs=2 from s3:// s"
                  " | ratio | module peak RSS MiB |", "| --- | --- | ---: | ---: | ---: | ---: |"]
        for r in restores:
            lines.append("| %s | %.1f/%.1f | %.2f | %.2f | %.2f | %.0f |" % (
                r["db"], r["load_before"], r["load_after"], r["pg_restore"], r["module"],
                r["module"] / r["pg_restore"], r["hwm"] / MiB))
    lines += ["", "Targets (issue 8): pgbench dumped to file:// >= 1.2x faster than pg_dump -Fc and within 1.2x"
              " of the floor, stored size <= half; random text >= 2.5x faster than pg_dump -Fc, size no larger;"
              " peak RSS < 128 MiB and flat across sizes; restore within 1.2x of pg_restore -j2."]
    write_results(args.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
