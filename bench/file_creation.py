#!/usr/bin/env python
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What creating a restored file costs the kernel on this disk, before any tar or python overhead.

Issue 20, item 3: a volume restore into ext4 spends most of its time in system CPU. This measures,
interleaved in one run, N files of 2 KiB created in a fresh directory under --dir, three ways:

- ``restore``: the syscalls the extractor makes per file today (open 0600 with O_EXCL|O_NOFOLLOW,
  write, ftruncate, fchown, fchmod, futimens, close);
- ``lean``: the fewest that give the same result (open with the file's mode, write, fstat,
  futimens, close; fchown/fchmod only where fstat says they are needed);
- ``bare``: open with O_CREAT|O_EXCL and close, no data (the floor of a file creation).

Run as root (the chown). ``--threads 2`` also creates with 2 threads in 2 directories (the
extractor's writer threads). Prints one line per way: wall and system CPU seconds of each round.
"""

import argparse
import os
import shutil
import threading
import time

FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
DATA = b"x" * 2048
MODE = 0o644
MTIME = 10 ** 18


def make(way, dfd, lo, hi):
    for i in range(lo, hi):
        name = "f%06d" % i
        if way == "bare":
            os.close(os.open(name, FLAGS, MODE, dir_fd=dfd))
            continue
        if way == "restore":
            fd = os.open(name, FLAGS, 0o600, dir_fd=dfd)
            os.write(fd, DATA)
            os.ftruncate(fd, len(DATA))
            os.fchown(fd, 0, 0)
            os.fchmod(fd, MODE)
        else:
            fd = os.open(name, FLAGS, MODE, dir_fd=dfd)
            os.write(fd, DATA)
            st = os.fstat(fd)
            if (st.st_uid, st.st_gid) != (0, 0):
                os.fchown(fd, 0, 0)
            if st.st_mode & 0o7777 != MODE:
                os.fchmod(fd, MODE)
        os.utime(fd, ns=(MTIME, MTIME))
        os.close(fd)


def run(way, root, files, threads):
    os.mkdir(root, 0o700)
    dirs = [os.path.join(root, str(t)) for t in range(threads)]
    fds = []
    for path in dirs:
        os.mkdir(path, 0o700)
        fds.append(os.open(path, os.O_RDONLY | os.O_DIRECTORY))
    per = files // threads
    before, start = os.times(), time.perf_counter()
    workers = [threading.Thread(target=make, args=(way, fds[t], t * per, (t + 1) * per)) for t in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    wall, after = time.perf_counter() - start, os.times()
    for fd in fds:
        os.close(fd)
    shutil.rmtree(root)
    os.sync()
    return wall, after.system - before.system


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", default="/var/tmp", help="a directory on the disk to measure")
    parser.add_argument("--files", type=int, default=10000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    os.umask(0o022)
    ways = ("restore", "lean", "bare")
    runs = {way: [] for way in ways}
    for rnd in range(args.rounds):
        for way in (ways if rnd % 2 == 0 else tuple(reversed(ways))):
            runs[way].append(run(way, os.path.join(args.dir, "opskit-fc-%s-%d-%d" % (way, rnd, os.getpid())),
                                 args.files, args.threads))
    print("%d files of 2 KiB, %d thread(s), %d interleaved rounds, under %s; uptime: %s"
          % (args.files, args.threads, args.rounds, args.dir, os.getloadavg()))
    for way in ways:
        walls = sorted(r[0] for r in runs[way])
        print("%-8s wall s %s | sys s %s | median wall %.2f s, %.0f us per file"
              % (way, " ".join("%.2f" % r[0] for r in runs[way]), " ".join("%.2f" % r[1] for r in runs[way]),
                 walls[len(walls) // 2], walls[len(walls) // 2] / args.files * 1e6))


if __name__ == "__main__":
    main()
