# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup against restic, side by side in one run, on bench/volume_backup.py's 1 GiB volume.

Peer:   restic (Debian's 0.14): ``restic backup .`` run in the volume's mountpoint into a fresh
        repository per round (``restic init`` is not timed; a second backup into the same
        repository would only deduplicate), ``restic restore latest --target DIR``. restic
        always encrypts (AES-256 + Poly1305) and compresses (zstd, repository version 2).
Module: ``opskit.runbook.volume_backup`` through ansible-playbook (one task, wall time of the
        whole ansible-playbook process), backup of the volume (``volume_access: auto``: read
        through the mountpoint, as root on the Docker host) and restore into a host directory;
        without encryption and with age (``encrypt_recipients`` / ``decrypt_identities``).
Both:   to the same moto S3 endpoint and to a local directory; the variants alternate within
        each round, every restore is checked against the volume (names, sizes, modes), stored
        bytes are counted (the restic repository or the module's series, manifests included).

Usage: .venv/bin/python bench/peers.py [--rounds 2] [--size-mib 1024] [--out bench/results/peers.md]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

from collect import write_results
from volume_backup import COLLECTIONS, MiB, ROOT, VENV_BIN, Moto, _cpu_seconds, build_volume, loadavg, sh, tree_digest

CALLBACKS = os.path.join(ROOT, "tests", "integration", "callback_plugins")
PLAYBOOK = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: step
      opskit.runbook.volume_backup: "{{ args }}"
"""


class Runner:
    """Runs the module through ansible-playbook and restic, timing each run."""

    def __init__(self, workdir, moto, volume, root):
        self.workdir, self.moto, self.volume, self.root = workdir, moto, volume, root
        self.playbook = os.path.join(workdir, "step.yml")
        with open(self.playbook, "w") as fh:
            fh.write(PLAYBOOK)
        self.s3 = {"endpoint_url": moto.url, "access_key": "bench", "secret_key": "bench", "region": "us-east-1"}
        key = sh("age-keygen").splitlines()
        self.identity = [line for line in key if line.startswith("AGE-SECRET-KEY-")][0]
        self.recipient = [line.split(": ", 1)[1] for line in key if line.startswith("# public key: ")][0]
        self.restic_env = dict(os.environ, RESTIC_PASSWORD="bench-password", AWS_ACCESS_KEY_ID="bench",
                               AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1",
                               RESTIC_CACHE_DIR=os.path.join(workdir, "restic-cache"))

    def timed(self, func):
        """(wall seconds, CPU seconds of the process tree run by ``func``, the moto server's CPU
        seconds meanwhile, ``func``'s value)."""
        before, moto = resource.getrusage(resource.RUSAGE_CHILDREN), _cpu_seconds(self.moto.proc.pid)
        start = time.monotonic()
        value = func()
        wall, after = time.monotonic() - start, resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
        self.last = {"cpu": cpu, "moto_cpu": _cpu_seconds(self.moto.proc.pid) - moto}
        return wall, value

    def module(self, args):
        """(wall seconds, task result) of one ansible-playbook run of the module (CPU in ``last``)."""
        capture = os.path.join(self.workdir, "capture.jsonl")
        if os.path.exists(capture):
            os.unlink(capture)
        vars_path = os.path.join(self.workdir, "vars.json")
        with open(os.open(vars_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as fh:
            json.dump({"args": args}, fh)
        env = {k: v for k, v in os.environ.items() if k != "ANSIBLE_CONFIG"}
        env.update(ANSIBLE_COLLECTIONS_PATH=COLLECTIONS, ANSIBLE_PYTHON_INTERPRETER=sys.executable,
                   ANSIBLE_CALLBACK_PLUGINS=CALLBACKS, ANSIBLE_CALLBACKS_ENABLED="opskit_capture",
                   OPSKIT_CAPTURE_FILE=capture, ANSIBLE_NOCOLOR="1", ANSIBLE_RETRY_FILES_ENABLED="0")
        wall, proc = self.timed(lambda: subprocess.run(
            [os.path.join(VENV_BIN, "ansible-playbook"), "-i", "localhost,", "-c", "local", self.playbook, "-e",
             "@" + vars_path], env=env, capture_output=True, text=True, check=False, cwd=self.workdir))
        if proc.returncode:
            raise RuntimeError("ansible-playbook failed: %s" % proc.stdout[-2000:])
        with open(capture) as fh:
            result = [json.loads(line) for line in fh if line.strip()][-1]
        return wall, result

    def restic(self, repo, *args, cwd=None):
        return self.timed(lambda: subprocess.run(["restic", "-r", repo, "-q"] + list(args), env=self.restic_env,
                                                 check=True, capture_output=True, text=True, cwd=cwd))[0]


def _stored(moto, workdir, location):
    """Stored bytes under a location: a directory, or an s3://bench/<prefix>."""
    if location.startswith("s3://bench/"):
        prefix, total = location[len("s3://bench/"):], 0
        for page in moto.client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix=prefix + "/"):
            total += sum(o["Size"] for o in page.get("Contents", []))
        return total
    total = 0
    for dirpath, _dirs, files in os.walk(location):
        total += sum(os.lstat(os.path.join(dirpath, n)).st_size for n in files)
    return total


def _name(tool, where, enc):
    if tool == "restic" or not enc:
        return "%s_%s" % (tool, where)
    return "%s_%s_%s" % (tool, where, "api" if enc == "api" else "age")


def one_round(runner, rnd, tag, src_digest):
    """Every variant once, alternating module and restic: backups, then restores."""
    rows, work = {}, runner.workdir
    variants = [("module", "s3", False), ("restic", "s3", True), ("module", "file", False),
                ("restic", "file", True), ("module", "s3", True), ("module", "file", True),
                ("module", "s3", "api")]
    if rnd % 2:
        variants = variants[1::2] + variants[0::2]  # the other order in odd rounds
    for tool, where, enc in variants:
        name = _name(tool, where, enc)
        sh("sync")
        load = loadavg()
        if tool == "module":
            location = ("s3://bench/%s-%s-%d" % (name, tag, rnd)) if where == "s3" else \
                "file://%s/%s-%d" % (work, name, rnd)
            args = dict(volume=runner.volume, location=location, series="bench", stop_containers=["none"])
            if where == "s3":
                args.update(runner.s3)
            if enc == "api":
                args["volume_access"] = "api"  # the Engine's archive: the only way before issue 20
            elif enc:
                args["encrypt_recipients"] = [runner.recipient]
            wall, result = runner.module(args)
            stored = _stored(runner.moto, work, location if where == "s3" else location[len("file://"):])
            assert result.get("access") == ("api" if enc == "api" else "mountpoint"), result.get("access")
        else:
            repo = ("s3:%s/bench/%s-%s-%d" % (runner.moto.url, name, tag, rnd)) if where == "s3" else \
                os.path.join(work, "%s-%d" % (name, rnd))
            runner.restic(repo, "init")
            wall = runner.restic(repo, "backup", ".", cwd=runner.root)
            location = repo
            stored = _stored(runner.moto, work, "s3://bench/%s-%s-%d" % (name, tag, rnd) if where == "s3" else repo)
        rows[name] = {"backup_s": wall, "stored": stored, "load": load, "location": location, "enc": enc,
                      "backup_cpu": runner.last["cpu"], "backup_moto_cpu": runner.last["moto_cpu"]}
        print("round %d backup  %-16s %6.1f s  cpu %5.1f  moto cpu %5.1f  stored %7.1f MiB  load %s"
              % (rnd + 1, name, wall, runner.last["cpu"], runner.last["moto_cpu"], stored / MiB, load), flush=True)
    for tool, where, enc in variants:
        name = _name(tool, where, enc)
        if enc == "api":
            continue  # the same archive as module_s3's: restored the same way
        target = os.path.join(work, "restore-%s-%d" % (name, rnd))
        sh("sync")
        load = loadavg()
        if tool == "module":
            args = dict(state="restored", path=target, location=rows[name]["location"], series="bench",
                        stop_containers=["none"])
            if where == "s3":
                args.update(runner.s3)
            if enc:
                args["decrypt_identities"] = [runner.identity]
            wall, _result = runner.module(args)
        else:
            wall = runner.restic(rows[name]["location"], "restore", "latest", "--target", target)
        ok = tree_digest(target) == src_digest  # restic restores a backup of "." right into the target
        rows[name].update(restore_s=wall, identical=ok, restore_load=load, restore_cpu=runner.last["cpu"],
                          restore_moto_cpu=runner.last["moto_cpu"])
        print("round %d restore %-16s %6.1f s  cpu %5.1f  moto cpu %5.1f  identical %s  load %s"
              % (rnd + 1, name, wall, runner.last["cpu"], runner.last["moto_cpu"], ok, load), flush=True)
        shutil.rmtree(target, ignore_errors=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "peers.md"))
    parser.add_argument("--keep-volume", action="store_true")
    opts = parser.parse_args()
    command = " ".join([os.path.relpath(sys.executable, ROOT), os.path.relpath(__file__, ROOT)] + sys.argv[1:])
    subprocess.run([os.path.join(ROOT, "scripts", "docker-engine.sh"), "image"], check=True, capture_output=True)
    source = "opskit-bench-vol-%dm" % opts.size_mib
    workdir = tempfile.mkdtemp(prefix="opskit-bench-peers-")
    tag = "%08x" % random.getrandbits(32)
    uptimes, runs, moto = [sh("uptime").strip()], [], None
    try:
        root = build_volume(source, opts.size_mib)
        src_digest = tree_digest(root)
        print("volume %s: %d files, %.1f MiB" % (source, src_digest[0], src_digest[1] / MiB), flush=True)
        moto = Moto(workdir)
        runner = Runner(workdir, moto, source, root)
        for rnd in range(opts.rounds):
            runs.append(one_round(runner, rnd, tag, src_digest))
            uptimes.append(sh("uptime").strip())
    finally:
        if moto is not None:
            moto.stop()
        if not opts.keep_volume:
            subprocess.run(["docker", "volume", "rm", "-f", source], capture_output=True, check=False)
        shutil.rmtree(workdir, ignore_errors=True)
    write_report(opts, command, src_digest, runs, uptimes)


def _median(runs, name, key):
    return statistics.median(r[name][key] for r in runs)


def write_report(opts, command, digest, runs, uptimes):
    names = [("module_s3", "module to/from s3:// (no encryption)"), ("module_s3_age", "module to/from s3:// (age)"),
             ("restic_s3", "restic to/from s3:// (its AES encryption)"),
             ("module_file", "module to/from a directory (no encryption)"),
             ("module_file_age", "module to/from a directory (age)"),
             ("restic_file", "restic to/from a directory (its AES encryption)")]
    lines = ["# peers: volume_backup against restic %s, a %d MiB Docker volume"
             % (sh("restic", "version").split()[1], opts.size_mib), "",
             "Command: `%s`" % command, "",
             "Machine: %s, %d CPUs, Python %s, Docker Engine %s; S3 = moto server on loopback. Measured %s UTC."
             % (platform.platform(), os.cpu_count(), platform.python_version(),
                sh("docker", "version", "-f", "{{.Server.Version}}").strip(),
                time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())),
             "The 2 cores are shared with 7 other developers' work (tests, benchmarks): compare the ratios of one "
             "run, never absolute seconds across runs. `uptime` at the start and after each round:", ""]
    lines += ["    %s" % u for u in uptimes]
    lines += ["", "Volume: %d files, %.1f MiB (bench/volume_backup.py's seeded tree). %d rounds; in each, every "
              "variant backs up once (alternating module and restic, the order reversed in odd rounds), then "
              "restores once into a new host directory, checked against the volume. Medians (seconds); the module "
              "through ansible-playbook, wall time of the whole process." % (digest[0], digest[1] / MiB, len(runs)),
              "", "| variant | backup s | restore s | stored MiB | identical |", "| --- | ---: | ---: | ---: | --- |"]
    for name, label in names:
        lines.append("| %s | %.1f | %.1f | %.1f | %s |" % (
            label, _median(runs, name, "backup_s"), _median(runs, name, "restore_s"),
            _median(runs, name, "stored") / MiB, all(r[name]["identical"] for r in runs)))
    lines.append("| module to s3:// read through the Engine API (volume_access: api, as before issue 20) | %.1f | | %.1f | |"
                 % (_median(runs, "module_s3_api", "backup_s"), _median(runs, "module_s3_api", "stored") / MiB))
    lines += ["", "CPU seconds (user + system) of the timed process tree (the module's: ansible-playbook and the "
              "module; restic's: restic) and of the moto server meanwhile, medians:", "",
              "| variant | backup CPU s | backup moto CPU s | restore CPU s | restore moto CPU s |",
              "| --- | ---: | ---: | ---: | ---: |"]
    for name, label in names:
        lines.append("| %s | %.1f | %.1f | %.1f | %.1f |" % (
            label, _median(runs, name, "backup_cpu"), _median(runs, name, "backup_moto_cpu"),
            _median(runs, name, "restore_cpu"), _median(runs, name, "restore_moto_cpu")))
    lines += ["", "Speed-up of the module against restic (restic time / module time, medians; > 1 = module faster):", "",
              "| | backup | restore |", "| --- | ---: | ---: |"]
    for mod, peer, label in (("module_s3", "restic_s3", "s3, module unencrypted"),
                             ("module_s3_age", "restic_s3", "s3, both encrypted"),
                             ("module_file", "restic_file", "directory, module unencrypted"),
                             ("module_file_age", "restic_file", "directory, both encrypted")):
        lines.append("| %s | %.2fx | %.2fx |" % (
            label, _median(runs, peer, "backup_s") / _median(runs, mod, "backup_s"),
            _median(runs, peer, "restore_s") / _median(runs, mod, "restore_s")))
    lines.append("| s3, module through the Engine API (before), unencrypted | %.2fx | |"
                 % (_median(runs, "restic_s3", "backup_s") / _median(runs, "module_s3_api", "backup_s")))
    lines += ["", "Every figure: `%s`" % json.dumps(runs, sort_keys=True)]
    write_results(opts.out, "\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
