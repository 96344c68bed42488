#!/usr/bin/env python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Stream 1 GiB through the S3 writer of the engine, side by side with boto3 upload_fileobj.

Each variant runs in its own child process against a moto S3 server on loopback; the child
reports throughput and its peak RSS growth (VmHWM at the end minus VmRSS before the upload).

  engine-none   BackupSession, compression none, size hint 1 GiB (5 MiB parts; as many in
                flight as the writer's memory budget holds: 3 of 20 MiB)
  engine-zstd   the same with zstd (level 3, all cores)
  engine-*-N    the same with N parts in flight (max_inflight_parts=N; 2 was the fixed count before)
  engine-*-before  the same with the collection at --before DIR (a copy of an older tree, e.g.
                `git archive HEAD plugins | tar -x -C DIR/ansible_collections/opskit/runbook`)
  engine-*-age  the same, encrypted client-side with age (one X25519 recipient)
  read-zstd     ArtifactReader of the engine-zstd backup: download, sha256, decompress
  read-zstd-age the same for the engine-zstd-age backup: download, sha256, decrypt, decompress
  upload_fileobj  boto3 S3Transfer.upload_fileobj of the same bytes from a file on disk
                  (default TransferConfig: 8 MiB parts, 10 threads); the time to write the
                  file first is not counted

Usage: .venv/bin/python bench/storage_engine.py [--size-mib 1024] [--out bench/results/storage_engine.md]
       [--variants engine-zstd-before,engine-zstd-2,engine-zstd] [--before DIR] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
COLLECTIONS = os.path.join(ROOT, ".build", "collections")
MiB = 1024 * 1024
VARIANTS = ("engine-none", "engine-none-age", "upload_fileobj", "engine-zstd", "engine-zstd-age",
            "read-zstd", "read-zstd-age")


def memory():
    """The kB fields of /proc/self/status in bytes: {"VmRSS": ..., "VmHWM": ..., ...}."""
    with open("/proc/self/status") as fh:
        fields = [line.split() for line in fh]
    return {f[0].rstrip(":"): int(f[1]) * 1024 for f in fields if len(f) == 3 and f[2] == "kB"}


def blocks(total):
    """1 MiB blocks: 3 of 4 random (incompressible), 1 of 4 log text (compressible)."""
    rnd = os.urandom(4 * MiB)
    text = (b"2026-11-23 02:00:01 INFO backup of volume app_data finished in 12.3 s\n" * 15000)[:MiB]
    sent, index = 0, 0
    while sent < total:
        if index % 4 == 3:
            block = text
        else:
            offset = (index * 7919 % 3) * MiB
            block = rnd[offset:offset + MiB]
        yield block
        sent += len(block)
        index += 1


def child(variant, size, endpoint, bucket, path):
    """Run one variant in this (fresh) process and print a JSON line."""
    sys.path.insert(0, os.environ.get("BENCH_COLLECTIONS") or COLLECTIONS)
    import boto3
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
    from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
    opts = dict(endpoint_url=endpoint, access_key="bench", secret_key="bench-secret", region="us-east-1")
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id="bench", aws_secret_access_key="bench-secret")
    if variant.rsplit("-", 1)[-1].isdigit():  # engine-zstd-2: that many parts in flight
        opts["max_inflight_parts"] = int(variant.rsplit("-", 1)[-1])
    loc = open_location("s3://%s/bench" % bucket, **opts)
    loc.protection_options = age_options(variant)
    before_import = memory()["VmRSS"]
    if loc.protection_options:  # cryptography's import, measured apart from the data path
        from ansible_collections.opskit.runbook.plugins.module_utils._crypto.primitives import CRYPTOGRAPHY
        CRYPTOGRAPHY.load()
    base = memory()["VmRSS"]
    cpu = resource.getrusage(resource.RUSAGE_SELF)
    start = time.monotonic()
    if variant.startswith("read"):
        stored = read_back(loc)
    elif variant.startswith("engine"):
        with BackupSession(loc, "bench", "generic", compression=variant.split("-")[1],
                           size_hint=size) as session:
            with session.artifact("bin") as out:
                for block in blocks(size):
                    out.write(block)
            stored = session.publish()["size_bytes"]
    else:
        with open(path, "rb") as fh:
            client.upload_fileobj(fh, bucket, "bench/fileobj.bin")
        stored = os.path.getsize(path)
    elapsed = time.monotonic() - start
    end = resource.getrusage(resource.RUSAGE_SELF)
    cpu_seconds = end.ru_utime + end.ru_stime - cpu.ru_utime - cpu.ru_stime
    print(json.dumps(dict(variant=variant, seconds=elapsed, cpu=cpu_seconds, stored=stored,
                          growth=memory()["VmHWM"] - base, base=base, library=base - before_import,
                          peak=memory()["VmHWM"])))


def age_options(variant):
    """The protection options of a variant: an age recipient for -age, its identity for reading."""
    if not variant.endswith("-age"):
        return {}
    key_file = os.environ["BENCH_AGE_KEY"]
    recipient = subprocess.run(["age-keygen", "-y", key_file], check=True, capture_output=True, text=True).stdout.strip()
    return {"encrypt_recipients": [recipient], "decrypt_identity_files": [key_file]}


def read_back(loc):
    """Read the raw bytes of the series' latest backup through ArtifactReader; the stored size."""
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.artifacts import ArtifactReader
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.catalog import resolve_backup
    manifest = resolve_backup(loc, "bench")
    with ArtifactReader(loc, manifest) as reader:
        while reader.read(4 * MiB):
            pass
    return manifest["size_bytes"]


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), *sys.argv[4:7])
        return
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--out", default=os.path.join(HERE, "results", "storage_engine.md"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated, run in this order")
    parser.add_argument("--before", help="the collections folder of the -before variants")
    parser.add_argument("--rounds", type=int, default=1, help="run the variants this many times, in turn")
    args = parser.parse_args()
    variants = args.variants.split(",") * args.rounds
    size = args.size_mib * MiB
    port = free_port()
    endpoint = "http://127.0.0.1:%d" % port
    moto = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H",
                             "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        import boto3
        import botocore.exceptions
        client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench-secret")
        for _attempt in range(100):
            try:
                client.list_buckets()
                break
            except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):  # not up yet
                time.sleep(0.1)
        rows = []
        with tempfile.TemporaryDirectory() as tmp:
            os.environ["BENCH_AGE_KEY"] = os.path.join(tmp, "age.key")
            subprocess.run(["age-keygen", "-o", os.environ["BENCH_AGE_KEY"]], check=True, capture_output=True)
            path = os.path.join(tmp, "payload.bin")
            # the same bytes for upload_fileobj, written beforehand (not timed)
            with open(path, "wb") as fh:
                for block in blocks(size):
                    fh.write(block)
            for number, variant in enumerate(variants):
                bucket = "bench-%s" % variant.replace("_", "-").replace("read-", "engine-")
                if not variant.startswith("read"):
                    bucket = "%s-%d" % (bucket, number)
                    client.create_bucket(Bucket=bucket)
                else:
                    bucket = "%s-%d" % (bucket, max(i for i, v in enumerate(variants[:number])
                                                    if v == variant.replace("read-", "engine-")))
                env = dict(os.environ, BENCH_COLLECTIONS=args.before if variant.endswith("-before") else "")
                if variant.endswith("-before") and not args.before:
                    sys.exit("variant %s needs --before DIR" % variant)
                out = subprocess.run([sys.executable, __file__, "--child", variant, str(size), endpoint, bucket, path],
                                     check=False, capture_output=True, text=True, env=env)
                if out.returncode:
                    sys.exit("variant %s failed: %s" % (variant, out.stderr[-2000:]))
                out = out.stdout
                rows.append(json.loads(out.strip().splitlines()[-1]))
                print(rows[-1], flush=True)
    finally:
        moto.terminate()
        moto.wait()
    lines = [
        "# Storage engine: streaming %d MiB to S3" % args.size_mib,
        "",
        "Command: `.venv/bin/python bench/storage_engine.py --size-mib %d`" % args.size_mib,
        "",
        "Machine: %s, %d cores, Python %s; S3 endpoint: moto server on loopback." % (
            platform.machine(), os.cpu_count(), platform.python_version()),
        "Payload: 3/4 random bytes, 1/4 log text. Peak memory growth = VmHWM after the upload"
        " minus VmRSS before it, in the child process that uploads.",
        "",
        "CPU seconds = user + system time of that process (all its threads), which the load of a"
        " shared machine disturbs less than the wall time. The -age rows import cryptography before"
        " the measurement; its import adds the RSS shown in the last column.",
        "",
        "| variant | seconds | CPU seconds | MiB/s (raw) | stored MiB | peak memory growth MiB | library import MiB"
        " | peak RSS MiB |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for row in rows:
        lines.append("| %s | %.2f | %.2f | %.0f | %.0f | %.1f | %.1f | %.1f |" % (
            row["variant"], row["seconds"], row["cpu"], size / MiB / row["seconds"], row["stored"] / MiB,
            row["growth"] / MiB, row["library"] / MiB, row["peak"] / MiB))
    lines.append("")
    lines.append("Target: engine peak memory growth under 64 MiB for 1 GiB; age encryption costs at most 10 %.")
    speed = {row["variant"]: row for row in rows}
    lines.append("")
    for plain in ("engine-none", "engine-zstd", "read-zstd"):
        if plain not in speed or plain + "-age" not in speed:
            continue
        wall, cpu = (speed[plain + "-age"][k] / speed[plain][k] - 1 for k in ("seconds", "cpu"))
        lines.append("- age cost, %s: %+.1f %% wall time, %+.1f %% CPU time" % (plain, 100.0 * wall, 100.0 * cpu))
    with open(args.out, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
