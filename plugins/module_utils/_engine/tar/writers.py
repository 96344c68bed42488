# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A small pool of threads that write whole regular-file members of a restore, while the tar
stream goes on being parsed in the thread that feeds the extractor.

``FileWriters`` only schedules: the extractor (``extract.py``) gives it a job per file and the
function that writes one, and keeps to its rules (``pending`` names are waited for before they
are touched again, ``drain`` before directory attributes are set, ``close`` before the staging
directory is removed). The file-system calls release the GIL, so the kernel's work for one file
overlaps the parsing of the next members.
"""

from __future__ import annotations

import collections
import threading

QUEUED_LIMIT = 16 * 1024 * 1024   # data bytes waiting for a writer at most (the 128 MiB peak)


class FileWriters:
    """``threads`` daemon threads running ``write(job)`` for the jobs of ``submit``, in any order.

    At most ``limit`` bytes of data wait at any time (``submit`` blocks; a single larger job is
    let through alone). ``pending`` holds the names submitted and not yet written. The first
    error of a job is kept: the jobs still queued are not run (``discard(job)`` releases them),
    and the next ``submit`` or ``drain`` raises it in the extractor's thread.
    """

    def __init__(self, write, discard, threads=2, limit=QUEUED_LIMIT):
        self.write, self.discard, self.limit = write, discard, limit
        self.lock = threading.Lock()
        self.work = threading.Condition(self.lock)    # a job was queued, or stop
        self.room = threading.Condition(self.lock)    # a job finished
        self.jobs = collections.deque()
        self.queued = 0                               # data bytes of the jobs not yet finished
        self.busy = 0                                 # jobs submitted and not yet finished
        self.pending = set()
        self.error = None
        self.stopping = False
        self.threads = [threading.Thread(target=self._run, name="opskit-restore-writer", daemon=True)
                        for _index in range(threads)]
        for thread in self.threads:
            thread.start()

    def _raise(self):
        if self.error is not None:
            raise self.error

    def submit(self, name, job, size):
        """Queue ``job`` (the file ``name``, ``size`` data bytes); waits while the queue is full."""
        with self.lock:
            while self.busy and self.queued + size > self.limit and self.error is None:
                self.room.wait()
            if self.error is not None:
                self.discard(job)
                raise self.error
            self.jobs.append((name, job, size))
            self.queued += size
            self.busy += 1
            self.pending.add(name)
            self.work.notify()

    def drain(self):
        """Wait until every submitted job is finished; raise the first error of one."""
        with self.lock:
            while self.busy:
                self.room.wait()
        self._raise()

    def _next(self):
        with self.lock:
            while not self.jobs and not self.stopping:
                self.work.wait()
            return self.jobs.popleft() if self.jobs else (None, None, 0)

    def _run(self):
        while True:
            name, job, size = self._next()
            if job is None:
                return
            error = None
            if self.error is None:
                try:
                    self.write(job)
                except BaseException as exc:  # pylint: disable=broad-except
                    # not swallowed: kept, and raised in the extractor's thread (_raise)
                    error = exc
            else:
                self.discard(job)
            with self.lock:
                self.queued -= size
                self.busy -= 1
                self.pending.discard(name)
                if error is not None and self.error is None:
                    self.error = error
                self.room.notify_all()

    def close(self):
        """Stop the threads once their current job is done; the queued jobs are discarded."""
        with self.lock:
            self.stopping = True
            if self.error is None:
                self.error = _Stopped("the restore's file writers were stopped")
            self.work.notify_all()
        for thread in self.threads:
            thread.join()
        while self.jobs:
            self.discard(self.jobs.popleft()[1])


class _Stopped(Exception):
    """What a job submitted after close() would raise (never seen: the extractor is done)."""
