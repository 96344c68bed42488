# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup against the runbook recipe, side by side, on a 1 GiB mixed Docker volume.

Recipe (backup):  docker run --rm -v VOL:/data -v DIR:/backup IMAGE tar czf /backup/x.tar.gz /data
                  then the file is uploaded to the S3 endpoint (boto3 upload_file, multipart).
Recipe (restore): the file is downloaded from S3, then
                  docker run --rm -v NEWVOL:/data -v DIR:/backup IMAGE tar xzf /backup/x.tar.gz -C /
Module:           the volume_backup module process (run like python -m ...volume_backup ARGS.json,
                  the same code path as under Ansible, without the controller), to s3:// (and to
                  file:// for reference); time from process start to exit; peak RSS = VmHWM.

The volume (seeded, deterministic): ~20,000 small files (1-16 KiB, half text-like, half random)
in nested directories, plus large files: 2 x 192 MiB random and 2 x 192 MiB log-like text.

Usage: .venv/bin/python bench/volume_backup.py [--size-mib 1024] [--out bench/results/volume_backup.md]
       .venv/bin/python bench/volume_backup.py --profile [--keep-volume]
       .venv/bin/python bench/volume_backup.py --profile-restore [--keep-volume] [--rounds N]
         where one backup's time goes: each stage of the pipeline alone, in a child process
         (wall and CPU seconds), the stages added one at a time, alternating over --rounds.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

from collect import write_results

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
VENV_BIN = os.path.dirname(sys.executable)
IMAGE = "opskit-test/busybox:1"
MiB = 1024 * 1024
SEED = 20261123


def sh(*args, **kwargs):
    return subprocess.run(list(args), check=True, capture_output=True, text=True, **kwargs).stdout


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mountpoint(volume):
    return json.loads(sh("docker", "volume", "inspect", volume))[0]["Mountpoint"]


# ------------------------------------------------------------------ the volume

def build_volume(volume, size_mib):
    """Create and fill the volume deterministically (reused when its stamp matches)."""
    spec = "seed=%d size=%d v2" % (SEED, size_mib)
    sh("docker", "volume", "create", volume)
    root = mountpoint(volume)
    stamp = os.path.join(root, ".bench-stamp")
    if os.path.exists(stamp) and open(stamp).read() == spec:
        return root
    for name in os.listdir(root):
        path = os.path.join(root, name)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.unlink(path)
    rng = random.Random(SEED)
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _c in range(rng.randint(2, 10)))
             for _w in range(2000)]
    lines = [b"2026-11-23T02:%02d:%02d level=info msg=\"%s\" id=%d\n"
             % (i % 60, (i * 7) % 60, b" ".join(rng.choices(words, k=8)), rng.getrandbits(32))
             for i in range(5000)]

    def text(n):
        out = bytearray()
        while len(out) < n:
            out += b"".join(rng.choices(lines, k=2000))
        return bytes(out[:n])

    large = size_mib * MiB * 3 // 4 // 4          # four large files: 3/4 of the volume
    small_budget = size_mib * MiB - 4 * large
    os.makedirs(os.path.join(root, "blobs"))
    os.makedirs(os.path.join(root, "logs"))
    for i in range(2):
        with open(os.path.join(root, "blobs", "blob%d.bin" % i), "wb") as fh:
            for _block in range(large // (8 * MiB)):
                fh.write(rng.randbytes(8 * MiB))
        with open(os.path.join(root, "logs", "app%d.log" % i), "wb") as fh:
            for _block in range(large // (8 * MiB)):
                fh.write(text(8 * MiB))
    written, n = 0, 0
    while written < small_budget:
        d = os.path.join(root, "files", "%02d" % (n % 40), "%03d" % (n % 997))
        os.makedirs(d, exist_ok=True)
        size = rng.randint(1024, 16384)
        data = text(size) if n % 2 else rng.randbytes(size)
        with open(os.path.join(d, "f%06d" % n), "wb") as fh:
            fh.write(data)
        written += size
        n += 1
    with open(stamp, "w") as fh:
        fh.write(spec)
    return root


def tree_digest(root):
    """(files, bytes, sha256 over names+sizes+modes) of a tree, to check restores."""
    h, files, total = hashlib.sha256(), 0, 0
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if name == ".bench-stamp":
                continue
            st = os.lstat(os.path.join(dirpath, name))
            rel = os.path.relpath(os.path.join(dirpath, name), root)
            h.update(b"%s %d %o\n" % (os.fsencode(rel), st.st_size, st.st_mode))
            files += 1
            total += st.st_size
    return files, total, h.hexdigest()[:16]


# ------------------------------------------------------------------ S3 and the module

class Moto:
    def __init__(self, workdir):
        self.port = free_port()
        self.url = "http://127.0.0.1:%d" % self.port
        self.log = open(os.path.join(workdir, "moto.log"), "wb")
        self.proc = subprocess.Popen([os.path.join(VENV_BIN, "moto_server"), "-H", "127.0.0.1", "-p",
                                      str(self.port)], stdout=self.log, stderr=subprocess.STDOUT)
        import boto3
        self.client = boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                                   aws_access_key_id="bench", aws_secret_access_key="bench")
        for _attempt in range(100):
            try:
                self.client.list_buckets()
                break
            except Exception:  # pylint: disable=broad-except
                time.sleep(0.1)
        self.client.create_bucket(Bucket="bench")

    def stop(self):
        self.proc.terminate()
        self.proc.wait(15)
        self.log.close()


# The module process reports its own peak RSS (VmHWM of its address space) when it exits. The
# ru_maxrss of wait4 is not usable here: with vfork+exec, Linux folds the parent's (this
# benchmark's) high-water mark into the child's.
WRAPPER = """
import atexit, runpy, sys
PEAK = sys.argv[2]
def peak():
    with open('/proc/self/status') as fh:
        hwm = [line for line in fh if line.startswith('VmHWM:')][0].split()[1]
    with open(PEAK, 'w') as out:
        out.write(hwm)
atexit.register(peak)
sys.argv = [sys.argv[0], sys.argv[1]]
runpy.run_module('ansible_collections.opskit.runbook.plugins.modules.volume_backup', run_name='__main__')
"""


def run_module(args, workdir):
    """Run the module in a child process; return (wall seconds, peak RSS MiB, result)."""
    path = os.path.join(workdir, "args.json")
    with open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, fh)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    out_path = os.path.join(workdir, "module.out")
    peak_path = os.path.join(workdir, "module.peak")
    start = time.monotonic()
    with open(out_path, "wb") as out:
        subprocess.run([sys.executable, "-c", WRAPPER, path, peak_path], stdout=out,
                       stderr=subprocess.STDOUT, env=env, cwd=workdir, check=False)
    wall = time.monotonic() - start
    text = open(out_path, "rb").read().decode("utf-8", "replace")
    result = json.JSONDecoder().raw_decode(text[text.index("{"):])[0]
    if result.get("failed"):
        raise RuntimeError("module failed: %s" % result.get("msg"))
    with open(peak_path) as fh:
        peak_kib = int(fh.read())
    return wall, peak_kib / 1024.0, result


# One backup's pipeline, a stage at a time: "walk" reads every file (os.read, 1 MiB) without tar;
# "tar" adds tree.py's tar building; "zstd" adds compression (the module's settings); "sha"
# the ArtifactWriter (sha256, counting), into a discarding sink; "file" and "s3" are the
# module's backup itself, in process. Prints wall, user and system seconds as JSON.
PROFILE = r"""
import json, os, resource, sys, time
stage, root = sys.argv[1], sys.argv[2]
from ansible_collections.opskit.runbook.plugins.module_utils._engine.artifacts import ArtifactWriter
from ansible_collections.opskit.runbook.plugins.module_utils._engine.compression import make_compressor
from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import write_tree

class Null:
    def __init__(self):
        self.n = 0
    def write(self, data):
        self.n += len(data)
        return len(data)
    def commit(self):
        pass
    abort = commit

t0 = time.monotonic()
if stage == "walk":
    n = 0
    for dirpath, dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            while True:
                data = os.read(fd, 1 << 20)
                if not data:
                    break
                n += len(data)
            os.close(fd)
elif stage in ("tar", "zstd", "sha"):
    sink = Null()
    if stage == "tar":
        out = sink
    elif stage == "zstd":
        comp = make_compressor("zstd", sink, None, -1)
        out = type("W", (), {"write": lambda self, d: comp.write(d) or len(d)})()
    else:
        out = ArtifactWriter(sink, "x", "zstd", None, -1)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    write_tree(fd, out, root)
    if stage == "zstd":
        comp.finish()
    elif stage == "sha":
        out.close()
    n = sink.n
else:
    from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import location_from_params
    from ansible_collections.opskit.runbook.plugins.module_utils._volume.action import run
    params = json.loads(sys.argv[3])
    params.update(params.pop("s3"))
    n = run(params, location_from_params(params))["size_bytes"]
ru = resource.getrusage(resource.RUSAGE_SELF)
with open('/proc/self/status') as fh:
    hwm = int([line for line in fh if line.startswith('VmHWM:')][0].split()[1])
print(json.dumps({"wall": time.monotonic() - t0, "user": ru.ru_utime, "sys": ru.ru_stime, "bytes": n,
                  "rss_mib": hwm / 1024.0}))
"""


def profile(opts, source, root, workdir):
    """Each stage of one backup alone (see PROFILE), alternating over ``opts.rounds`` rounds."""
    moto = Moto(workdir)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    s3 = {"endpoint_url": moto.url, "access_key": "bench", "secret_key": "bench", "region": "us-east-1"}
    runs = {}
    try:
        for rnd in range(opts.rounds):
            for stage in ("walk", "tar", "zstd", "sha", "file", "s3"):
                params = dict(volume=source, state="backed_up", series="p%d" % rnd, stop_containers=["none"],
                              location=("s3://bench/p" if stage == "s3" else "file://%s/store" % workdir))
                params["s3"] = s3
                sh("sync")
                load = loadavg()
                moto_cpu = _cpu_seconds(moto.proc.pid)
                out = subprocess.run([sys.executable, "-c", PROFILE, stage, root, json.dumps(params)], env=env,
                                     capture_output=True, text=True, check=True, cwd=workdir)
                row = json.loads(out.stdout.strip().splitlines()[-1])
                row.update(load=load, moto_cpu=_cpu_seconds(moto.proc.pid) - moto_cpu)
                runs.setdefault(stage, []).append(row)
                print("round %d %-5s wall %5.1f s  user %5.1f  sys %4.1f  moto cpu %4.1f  rss %3.0f MiB  load %s"
                      % (rnd + 1, stage, row["wall"], row["user"], row["sys"], row["moto_cpu"], row["rss_mib"], load),
                      flush=True)
            shutil.rmtree(os.path.join(workdir, "store"), ignore_errors=True)
    finally:
        moto.stop()
    return runs


# One restore's pipeline, a stage at a time, from a stored backup (file:// or s3://): "get" reads
# the stored bytes (GET and sha256, no decompression); "zstd" adds the decompression
# (ArtifactReader); "parse" adds the tar parsing and member checks (MemberScan); "extract"
# adds the extractor's writes into a new directory (TarExtractor, no swap, no count; "inline":
# the same with every file written by the parsing thread, no writer threads); "restore"
# is the module's staged restore into a new directory (swap and on-disk count included).
RESTORE_PROFILE = r"""
import json, os, resource, sys, time
stage, location_url, target = sys.argv[1], sys.argv[2], sys.argv[3]
params = json.loads(sys.argv[4])
from ansible_collections.opskit.runbook.plugins.module_utils._engine.artifacts import ArtifactReader
from ansible_collections.opskit.runbook.plugins.module_utils._engine.catalog import resolve_backup
from ansible_collections.opskit.runbook.plugins.module_utils._engine.streams import Prefetch, read_chunks
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import location_from_params
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.headers import MemberScan
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.extract import TarExtractor, extract_chunks
from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import staged_restore
params.update(params.pop("s3"))
params["location"] = location_url
location = location_from_params(params)
manifest = resolve_backup(location, "bench", "latest")
t0 = time.monotonic()
n = 0
if stage in ("get", "zstd", "parse"):
    scan = MemberScan("backup archive") if stage == "parse" else None
    with ArtifactReader(location, manifest, decompress=(stage != "get")) as reader:
        for data in read_chunks(reader):
            n += len(data)
            if scan is not None:
                scan.feed(data)
    if scan is not None:
        n = scan.finish()["files"]
else:
    os.makedirs(target)
    fd = os.open(target, os.O_RDONLY | os.O_DIRECTORY)
    if stage in ("extract", "inline"):
        kw = {"writers": 0} if stage == "inline" else {}
        with ArtifactReader(location, manifest) as reader:
            chunks = Prefetch(read_chunks(reader), depth=4)
            try:
                n = extract_chunks(chunks, TarExtractor(fd, "backup archive", defer_root=True, **kw))["files"]
            finally:
                chunks.stop()
    else:
        n = staged_restore(fd, location, manifest, False, target)["files"]
    os.close(fd)
ru = resource.getrusage(resource.RUSAGE_SELF)
with open('/proc/self/status') as fh:
    hwm = int([line for line in fh if line.startswith('VmHWM:')][0].split()[1])
print(json.dumps({"wall": time.monotonic() - t0, "user": ru.ru_utime, "sys": ru.ru_stime, "n": n,
                  "rss_mib": hwm / 1024.0}))
"""
RESTORE_STAGES = (("get", "GET + sha256 (stored bytes only)"), ("zstd", "+ zstd decompression (ArtifactReader)"),
                  ("parse", "+ tar parsing and member checks (MemberScan)"),
                  ("inline", "+ the extractor's writes, no writer threads (writers=0)"),
                  ("extract", "+ the extractor's writes, 2 writer threads (the default)"),
                  ("restore", "the module's staged restore (swap and on-disk count)"))


def profile_restore(opts, source, workdir):
    """Each stage of one restore alone (see RESTORE_PROFILE), from file:// and s3://, over
    ``opts.rounds`` rounds; the backups are made once by the module first."""
    moto = Moto(workdir)
    env = dict(os.environ, PYTHONPATH=COLLECTIONS)
    s3 = {"endpoint_url": moto.url, "access_key": "bench", "secret_key": "bench", "region": "us-east-1"}
    locations = (("file", "file://%s/store" % workdir), ("s3", "s3://bench/module"))
    runs = {}
    try:
        for _name, url in locations:
            args = dict(volume=source, location=url, series="bench", stop_containers=["none"])
            args.update(s3 if url.startswith("s3://") else {})
            run_module(args, workdir)
        for rnd in range(opts.rounds):
            for where, url in locations:
                for stage, _label in RESTORE_STAGES:
                    target = os.path.join(workdir, "t-%d-%s-%s" % (rnd, where, stage))
                    sh("sync")
                    load = loadavg()
                    moto_cpu = _cpu_seconds(moto.proc.pid)
                    out = subprocess.run([sys.executable, "-c", RESTORE_PROFILE, stage, url, target,
                                          json.dumps({"s3": s3})], env=env, capture_output=True, text=True,
                                         check=True, cwd=workdir)
                    row = json.loads(out.stdout.strip().splitlines()[-1])
                    row.update(load=load, moto_cpu=_cpu_seconds(moto.proc.pid) - moto_cpu)
                    runs.setdefault("%s/%s" % (where, stage), []).append(row)
                    print("round %d %-4s %-7s wall %5.1f s  user %5.1f  sys %4.1f  moto cpu %4.1f  rss %3.0f MiB  load %s"
                          % (rnd + 1, where, stage, row["wall"], row["user"], row["sys"], row["moto_cpu"],
                             row["rss_mib"], load), flush=True)
                    shutil.rmtree(target, ignore_errors=True)
    finally:
        moto.stop()
    return runs


def write_restore_profile(opts, command, digest, runs):
    lines = ["# volume_backup: where one %d MiB volume restore's time goes" % opts.size_mib, "",
             "Command: `%s`" % command, "",
             "Measured %s UTC, `uptime` before: `%s`, after: `%s`."
             % (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), opts.uptime, sh("uptime").strip()), "",
             "Volume: %d files, %.1f MiB. Each stage runs alone in a child process, the stages added one at a "
             "time; medians of %d rounds (seconds)." % (digest[0], digest[1] / MiB, opts.rounds), "",
             "| from | stage | wall | user | sys | moto CPU | peak RSS MiB |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: |"]
    for where in ("file", "s3"):
        for stage, label in RESTORE_STAGES:
            rows = runs["%s/%s" % (where, stage)]
            med = {k: statistics.median(r[k] for r in rows) for k in ("wall", "user", "sys", "moto_cpu")}
            lines.append("| %s:// | %s | %.1f | %.1f | %.1f | %.1f | %.0f |"
                         % (where, label, med["wall"], med["user"], med["sys"], med["moto_cpu"],
                            max(r["rss_mib"] for r in rows)))
    lines += ["", "Every figure: `%s`" % json.dumps(runs, sort_keys=True)]
    write_results(opts.out.replace("volume_backup.md", "volume_restore_profile.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def _cpu_seconds(pid):
    with open("/proc/%d/stat" % pid) as fh:
        fields = fh.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def write_profile(opts, command, digest, runs):
    lines = ["# volume_backup: where one %d MiB volume backup's time goes" % opts.size_mib, "",
             "Command: `%s`" % command, "",
             "Measured %s UTC, `uptime` before: `%s`. The 2 cores are shared with 7 other developers' work."
             % (time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()), opts.uptime), "",
             "Volume: %d files, %.1f MiB. Each stage runs alone in a child process, the stages of one round "
             "one after the other; medians of %d rounds (seconds)." % (digest[0], digest[1] / MiB, opts.rounds), "",
             "| stage | wall | user | sys | moto CPU | peak RSS MiB |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for stage, label in (("walk", "read every file (os.walk + os.read, no tar)"), ("tar", "+ tar building (tree.py)"),
                         ("zstd", "+ zstd (level 3, 2 threads)"), ("sha", "+ sha256 and counting (ArtifactWriter)"),
                         ("file", "the module's backup to file://"), ("s3", "the module's backup to s3:// (moto)")):
        rows = runs[stage]
        med = {k: statistics.median(r[k] for r in rows) for k in ("wall", "user", "sys", "moto_cpu")}
        peak = max(r["rss_mib"] for r in rows)
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f | %.0f |"
                     % (label, med["wall"], med["user"], med["sys"], med["moto_cpu"], peak))
    lines += ["", "Every figure: `%s`" % json.dumps(runs, sort_keys=True)]
    write_results(opts.out.replace("volume_backup.md", "volume_profile.md"), "\n".join(lines) + "\n")
    print("\n".join(lines))


def timed(func):
    start = time.monotonic()
    value = func()
    return time.monotonic() - start, value


def loadavg():
    return "%.1f" % os.getloadavg()[0]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "volume_backup.md"))
    parser.add_argument("--keep-volume", action="store_true", help="keep the source volume for the next run")
    parser.add_argument("--restore-rounds", type=int, default=3,
                        help="interleaved rounds of the restores (medians reported)")
    parser.add_argument("--profile", action="store_true", help="where one backup's time goes, stage by stage")
    parser.add_argument("--profile-restore", action="store_true", help="where one restore's time goes, stage by stage")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of --profile / --profile-restore")
    opts = parser.parse_args()
    opts.uptime = sh("uptime").strip()
    command = " ".join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    subprocess.run([os.path.join(ROOT, "scripts", "docker-engine.sh"), "image"], check=True,
                   capture_output=True)
    tag = "%08x" % random.getrandbits(32)
    source = "opskit-bench-vol-%dm" % opts.size_mib
    workdir = tempfile.mkdtemp(prefix="opskit-bench-volume-")
    volumes = []
    rows, notes = {}, []
    moto = None
    try:
        t_build, root = timed(lambda: build_volume(source, opts.size_mib))
        src_digest = tree_digest(root)
        print("volume %s: %d files, %.1f MiB (built/checked in %.1f s)"
              % (source, src_digest[0], src_digest[1] / MiB, t_build), flush=True)
        sh("sync")
        if opts.profile:
            write_profile(opts, command, src_digest, profile(opts, source, root, workdir))
            return
        if opts.profile_restore:
            write_restore_profile(opts, command, src_digest, profile_restore(opts, source, workdir))
            return
        moto = Moto(workdir)
        s3 = {"endpoint_url": moto.url, "access_key": "bench", "secret_key": "bench", "region": "us-east-1"}
        backup_dir = os.path.join(workdir, "backup")
        os.makedirs(backup_dir)

        # --- recipe backup: tar czf in a container, then upload
        load0 = loadavg()
        t_tar, _out = timed(lambda: sh("docker", "run", "--rm", "-v", "%s:/data" % source, "-v",
                                       "%s:/backup" % backup_dir, IMAGE, "tar", "czf", "/backup/x.tar.gz",
                                       "/data"))
        recipe_file = os.path.join(backup_dir, "x.tar.gz")
        recipe_size = os.path.getsize(recipe_file)
        t_up, _out = timed(lambda: moto.client.upload_file(recipe_file, "bench", "recipe/x.tar.gz"))
        rows["backup_recipe"] = {"tar_czf_s": t_tar, "upload_s": t_up, "total_s": t_tar + t_up,
                                 "size": recipe_size, "load": "%s/%s" % (load0, loadavg())}
        print("recipe backup: tar czf %.1f s + upload %.1f s, %.1f MiB" % (t_tar, t_up, recipe_size / MiB), flush=True)

        # --- module backups
        for name, location in (("s3", "s3://bench/module"), ("file", "file://%s/store" % workdir)):
            load0 = loadavg()
            args = dict(volume=source, location=location, series="bench", stop_containers=["none"])
            if name == "s3":
                args.update(s3)
            wall, rss, result = run_module(args, workdir)
            rows["backup_module_" + name] = {"total_s": wall, "rss_mib": rss, "size": result["size_bytes"],
                                             "raw": result["raw_bytes"], "files": result["files"],
                                             "load": "%s/%s" % (load0, loadavg())}
            print("module backup to %s: %.1f s, %.1f MiB stored, peak RSS %.0f MiB"
                  % (name, wall, result["size_bytes"] / MiB, rss), flush=True)

        # --- restores: the recipe's download once, then --restore-rounds interleaved rounds
        # of the recipe's tar xzf and the module variants, each into a new volume (removed
        # after the round). The module variants: volume_access auto (the mountpoint, when run
        # as root on the Docker host, as here) from both locations, and the Engine API from S3.
        os.unlink(recipe_file)
        load0 = loadavg()
        t_down, _out = timed(lambda: moto.client.download_file("bench", "recipe/x.tar.gz", recipe_file))
        print("recipe restore: download %.1f s" % t_down, flush=True)
        runs = {}
        variants = (("s3", "s3://bench/module", "auto"), ("file", "file://%s/store" % workdir, "auto"),
                    ("s3_api", "s3://bench/module", "api"))
        for rnd in range(opts.restore_rounds):
            round_volumes = []
            target = "opskit-bench-restore-recipe-%s-%d" % (tag, rnd)
            volumes.append(target)
            round_volumes.append(target)
            sh("docker", "volume", "create", target)
            sh("sync")  # every restore starts with no dirty pages of an earlier step
            load1 = loadavg()
            t_untar, _out = timed(lambda: sh("docker", "run", "--rm", "-v", "%s:/data" % target, "-v",
                                             "%s:/backup" % backup_dir, IMAGE, "tar", "xzf",
                                             "/backup/x.tar.gz", "-C", "/"))
            ok = tree_digest(mountpoint(target)) == src_digest
            runs.setdefault("recipe", []).append({"tar_xzf_s": t_untar, "identical": ok,
                                                  "load": "%s/%s" % (load1, loadavg())})
            print("round %d: recipe tar xzf %.1f s (identical: %s)" % (rnd + 1, t_untar, ok), flush=True)
            for name, location, access in variants:
                target = "opskit-bench-restore-%s-%s-%d" % (name.replace("_", "-"), tag, rnd)
                volumes.append(target)
                round_volumes.append(target)
                sh("sync")
                load1 = loadavg()
                args = dict(state="restored", volume=target, location=location, series="bench",
                            helper_image=IMAGE, volume_access=access)
                if location.startswith("s3://"):
                    args.update(s3)
                wall, rss, result = run_module(args, workdir)
                ok = tree_digest(mountpoint(target)) == src_digest
                runs.setdefault(name, []).append({"total_s": wall, "rss_mib": rss, "identical": ok,
                                                  "access": result.get("access"),
                                                  "load": "%s/%s" % (load1, loadavg())})
                print("round %d: module restore from %s (%s): %.1f s, peak RSS %.0f MiB (identical: %s)"
                      % (rnd + 1, name, result.get("access"), wall, rss, ok), flush=True)
            for vol in round_volumes:
                subprocess.run(["docker", "volume", "rm", "-f", vol], capture_output=True, check=False)
        untar = statistics.median(r["tar_xzf_s"] for r in runs["recipe"])
        rows["restore_recipe"] = {"download_s": t_down, "tar_xzf_s": untar, "total_s": t_down + untar,
                                  "identical": all(r["identical"] for r in runs["recipe"]),
                                  "load": "%s/%s" % (load0, loadavg()), "runs": runs["recipe"]}
        for name, _location, _access in variants:
            rows["restore_module_" + name] = {
                "total_s": statistics.median(r["total_s"] for r in runs[name]),
                "rss_mib": max(r["rss_mib"] for r in runs[name]),
                "identical": all(r["identical"] for r in runs[name]),
                "access": runs[name][0]["access"],
                "load": "%s..%s" % (runs[name][0]["load"], runs[name][-1]["load"]), "runs": runs[name]}
    finally:
        if moto is not None:
            moto.stop()
        for vol in volumes:
            subprocess.run(["docker", "volume", "rm", "-f", vol], capture_output=True, check=False)
        if not opts.keep_volume:
            subprocess.run(["docker", "volume", "rm", "-f", source], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    write_report(opts, command, src_digest, rows, notes)


def write_report(opts, command, digest, rows, notes):
    br, bm, bf = rows["backup_recipe"], rows["backup_module_s3"], rows["backup_module_file"]
    rr, rm, rf = rows["restore_recipe"], rows["restore_module_s3"], rows["restore_module_file"]
    ra = rows["restore_module_s3_api"]
    lines = [
        "# volume_backup: a %d MiB mixed Docker volume, module vs the runbook recipe" % opts.size_mib,
        "",
        "Command: `%s`" % command,
        "",
        "Machine: %s, %d CPUs, Python %s, Docker Engine %s; S3 = moto server on loopback. Measured %s UTC."
        % (platform.platform(), os.cpu_count(), platform.python_version(),
           sh("docker", "version", "-f", "{{.Server.Version}}").strip(), time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())),
        "The machine is shared with other work: the 1-minute load average before/after each step is shown.",
        "",
        "Volume: %d files, %.1f MiB (about 20,000 files of 1-16 KiB, half text-like, half random; "
        "2 x random and 2 x log-like large files), seeded." % (digest[0], digest[1] / MiB),
        "",
        "Recipe = `docker run --rm -v VOL:/data -v DIR:/backup %s tar czf /backup/x.tar.gz /data`, then the file "
        "is uploaded with boto3 `upload_file` (restore: `download_file`, then `tar xzf` in a container). The "
        "recipe's time counts both steps, since the runbook's backup is not off-site until it is uploaded; "
        "each step is also shown. Module = the volume_backup module process (same code as under Ansible, "
        "without the controller), wall time from process start to exit, peak RSS = the VmHWM the module "
        "process reports at exit. Every module restore checks the stored sha256 before anything in the target "
        "changes: through the mountpoint (the benchmark runs as root on the Docker host) the archive is staged "
        "in one pass and moved into place once verified; through the Engine API it is read and verified once "
        "before it is written." % IMAGE,
        "",
        "## Backup",
        "",
        "| variant | load | time s | stored MiB | peak RSS MiB |",
        "| --- | --- | ---: | ---: | ---: |",
        "| recipe: tar czf | %s | %.1f | %.1f | |" % (br["load"], br["tar_czf_s"], br["size"] / MiB),
        "| recipe: + upload to S3 | | %.1f | | |" % br["upload_s"],
        "| **recipe total (to S3)** | | **%.1f** | %.1f | |" % (br["total_s"], br["size"] / MiB),
        "| **module to s3://** | %s | **%.1f** | %.1f | %.0f |" % (bm["load"], bm["total_s"], bm["size"] / MiB, bm["rss_mib"]),
        "| module to file:// | %s | %.1f | %.1f | %.0f |" % (bf["load"], bf["total_s"], bf["size"] / MiB, bf["rss_mib"]),
        "",
        "Backup speed-up to S3: **%.2fx** (recipe total / module); against tar czf alone: %.2fx. "
        "Archive size: module %.1f MiB vs recipe %.1f MiB (%.0f %%)."
        % (br["total_s"] / bm["total_s"], br["tar_czf_s"] / bm["total_s"], bm["size"] / MiB, br["size"] / MiB,
           100.0 * bm["size"] / br["size"]),
        "",
        "## Restore (into a new volume)",
        "",
        "The recipe's download runs once; then %d interleaved rounds of its `tar xzf` and of each module "
        "variant, each into a new volume after a `sync`. Times are medians of the rounds (every run is in the "
        "JSON below); peak RSS is the largest." % opts.restore_rounds,
        "",
        "| variant | load | time s | identical | peak RSS MiB |",
        "| --- | --- | ---: | --- | ---: |",
        "| recipe: download from S3 | %s | %.1f | | |" % (rr["load"], rr["download_s"]),
        "| recipe: tar xzf | | %.1f | | |" % rr["tar_xzf_s"],
        "| **recipe total (from S3)** | | **%.1f** | %s | |" % (rr["total_s"], rr["identical"]),
        "| **module from s3://** (volume_access=auto, used: %s) | %s | **%.1f** | %s | %.0f |"
        % (rm["access"], rm["load"], rm["total_s"], rm["identical"], rm["rss_mib"]),
        "| module from file:// (volume_access=auto, used: %s) | %s | %.1f | %s | %.0f |"
        % (rf["access"], rf["load"], rf["total_s"], rf["identical"], rf["rss_mib"]),
        "| module from s3:// (volume_access=api, used: %s) | %s | %.1f | %s | %.0f |"
        % (ra["access"], ra["load"], ra["total_s"], ra["identical"], ra["rss_mib"]),
        "",
        "Restore speed-up from S3: **%.2fx** (recipe total / module); against tar xzf alone: %.2fx "
        "(through the Engine API: %.2fx)."
        % (rr["total_s"] / rm["total_s"], rr["tar_xzf_s"] / rm["total_s"], rr["tar_xzf_s"] / ra["total_s"]),
        "",
        "Every figure: `%s`" % json.dumps(rows, sort_keys=True),
    ] + notes
    write_results(opts.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
