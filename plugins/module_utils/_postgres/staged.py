# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Staged restores of custom-format backups: streamed into a staging database, swapped in once
the stream's sha256 is verified.

``apply_staged(server, location, params, job)``:

1. A staging database ``opskit_stage_<time>_<hex>_<target>`` is created next to the target
   (the target's encoding, locale and tablespace), its comment naming the run that owns it.
2. The artifact is streamed from the location (one pinned GET, resumed by Range on a dropped
   connection: ``location.download`` into a pipe) through the engine's reader (decryption,
   decompression, sha256) into ``pg_restore``. With ``jobs`` > 1 the pre-data section is
   restored from a file holding the archive's header and TOC only (``staged_toc``), the data
   from the stream by ``jobs`` pg_restore at once, the rows of a large table shared between
   them (``staged_split``), and the post-data section (indexes, constraints) by ``pg_restore --jobs`` from that file.
3. Only after the stream ended with the manifest's sha256 and size, and pg_restore succeeded:
   the target's owner, database-level settings, privileges and connection limit are carried
   over (``staged_swap``), then one transaction terminates the target's sessions and renames
   target -> ``opskit_retired_...`` (or ``opskit_previous_...`` with ``keep_previous``) and
   staging -> target. The retired database is dropped afterwards.
4. On any failure (a SIGTERM included) the staging database is dropped; the target was never
   touched. After a SIGKILL the next run drops it (``cleanup.sweep_staged``).

With ``job.verifying`` the scratch database of verify() is the staging database: the same
stream, no swap.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import tempfile
import threading

from .._engine.artifacts import ArtifactReader
from .._engine.streams import CHUNK
from .._errors import IntegrityError, OpsError
from .._storage.base import ChangedError
from .cleanup import STAGE, staged_name, temp_prefix
from .staged_split import load_split, read_toc
from .staged_swap import carry_over, create_staging, drop_quietly, read_target, retire, swap
from .tools import db_arg, failure

PIPE_SIZE = 1024 * 1024
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


class _PipeReader:
    """The read end of a pipe fed by ``location.download`` in a thread. At the end of the pipe
    the download's own error (the object changed, the store failed) is raised, before the
    reader above can take a short stream for a corrupt one."""

    def __init__(self, location, key, pin, what):
        rfd, wfd = os.pipe()
        with contextlib.suppress(OSError):
            fcntl.fcntl(wfd, F_SETPIPE_SZ, PIPE_SIZE)
        self.rfd, self.what, self.error = rfd, what, None
        self.thread = threading.Thread(target=self._download, args=(location, key, pin, wfd), daemon=True)
        self.thread.start()

    def _download(self, location, key, pin, wfd):
        try:
            location.download(key, wfd, pin)
        except (OpsError, OSError) as exc:
            self.error = exc
        finally:
            os.close(wfd)

    def read(self, size=CHUNK):
        data = os.read(self.rfd, PIPE_SIZE if size is None or size < 0 else min(size, PIPE_SIZE))
        if not data:
            self.thread.join()
            if isinstance(self.error, ChangedError):
                raise IntegrityError("%s changed while it was being restored (%s): nothing was restored; run again"
                                     " to restore what the store holds now" % (self.what, self.error.msg))
            if self.error is not None:
                raise self.error
        return data

    def close(self):
        if self.rfd is not None:
            os.close(self.rfd)  # a download still running gets EPIPE and ends
            self.rfd = None


class _Streamed:
    """A location-like object for ArtifactReader: ``open_read`` is the pinned download."""

    def __init__(self, location, job):
        self.location, self.pin, self.what = location, job.pin, "backup %s" % job.manifest["id"]
        self.protection_options = getattr(location, "protection_options", None)
        self.url = location.url

    def url_for(self, key):
        return self.location.url_for(key)

    def open_read(self, key):
        return _PipeReader(self.location, key, self.pin, self.what)


def staged_argv(tools, database, no_owner=False, single_transaction=False, sections=(), jobs=1, path=None,
                use_list=None):
    """pg_restore into ``database``, of the given sections (the entries of ``use_list``), from
    stdin or ``path``."""
    argv = [tools.path("pg_restore"), "--no-password", "--exit-on-error", db_arg(database)]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    if single_transaction:
        argv.append("--single-transaction")
    argv += ["--section=%s" % section for section in sections]
    if jobs > 1:
        argv.append("--jobs=%d" % jobs)
    if use_list:
        argv.append("--use-list=%s" % use_list)
    if path:
        argv.append(path)
    return argv


def _private_file(tmp, name, data):
    path = os.path.join(tmp, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    return path


def _check(server, result):
    """A pg_restore's (rc, stderr) or the error that stopped it."""
    if isinstance(result, OpsError):
        raise result
    if result is not None and result[0] != 0:
        raise failure("pg_restore", result[0], result[1], server.conn.get("password"), server.tools.where)


def _load_shared(server, reader, job, database, jobs, tmp):
    """Pre-data from the TOC file, then the data from the stream by ``jobs`` pg_restore at once
    (``staged_split``); returns the TOC file's path."""
    try:
        toc, rest = read_toc(reader)
        path = _private_file(tmp, "toc.custom", toc)
        rc, _out, err = server.tools.run(staged_argv(server.tools, database, no_owner=job.no_owner,
                                                     sections=("pre-data",), path=path))
        _check(server, (rc, err))
    except OpsError:
        while reader.read(CHUNK):  # a corrupt stream is reported as such
            pass
        raise

    def argv_for(dump_id):
        use_list = None if dump_id is None else _private_file(tmp, "entry-%d.list" % dump_id, b"%d\n" % dump_id)
        return staged_argv(server.tools, database, no_owner=job.no_owner, sections=("data",), use_list=use_list)
    for result in load_split(server.tools, reader, toc, rest, argv_for, jobs):
        _check(server, result)
    return path


def _feed_verified(server, argv, reader):
    """Feed ``reader`` to the tool, then read the rest of it (pg_restore may stop reading before
    the end): its sha256 and size are checked either way, and a corrupt stream is reported as
    such even when pg_restore failed on it first."""
    rc, err = server.tools.feed(argv, reader, check=False)
    while reader.read(CHUNK):
        pass
    if rc != 0:
        raise failure("pg_restore", rc, err, server.conn.get("password"), server.tools.where)


def stream_restore(server, location, params, job, database):
    """The backup streamed into ``database``: in one pg_restore (jobs=1), or pre-data from the
    kept TOC, the data from the stream by ``jobs`` pg_restore at once, and post-data by
    ``pg_restore --jobs`` from the kept TOC."""
    jobs = params.get("jobs") or 1
    common = dict(no_owner=job.no_owner, single_transaction=bool(params.get("single_transaction")))
    with ArtifactReader(_Streamed(location, job), job.manifest) as reader:
        if jobs <= 1:
            _feed_verified(server, staged_argv(server.tools, database, **common), reader)
            return
        tmp = tempfile.mkdtemp(prefix=temp_prefix("opskit-pgrestore-"), dir=params.get("tmp_dir"))  # 0700
        try:
            path = _load_shared(server, reader, job, database, jobs, tmp)  # single_transaction needs jobs=1
            argv = staged_argv(server.tools, database, no_owner=job.no_owner, sections=("post-data",), jobs=jobs,
                               path=path)
            rc, _out, err = server.tools.run(argv)
            if rc != 0:
                raise failure("pg_restore", rc, err, server.conn.get("password"), server.tools.where)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)


def apply_staged(server, location, params, job):
    """Restore into a staging database and swap it in (see the module docstring); fills in
    ``job.plan`` (staging_database, previous_database) and returns warnings."""
    if job.verifying:
        server.create(job.target)  # verify() drops its scratch database, also after a failure
        stream_restore(server, location, params, job, job.target)
        return []
    old = read_target(server, job.target) if "replace" in job.steps else None
    stage = staged_name(STAGE, job.target)
    job.plan["staging_database"] = stage
    swapped = False
    try:
        create_staging(server, stage, job.target, old)
        stream_restore(server, location, params, job, stage)  # the sha256 is verified at its end
        carry_over(server, stage, old)
        retired = swap(server, stage, job.target, old, bool(params.get("keep_previous")), job.manifest["id"])
        swapped = True
    finally:
        if not swapped:
            drop_quietly(server, stage)
    return retire(server, job, retired, bool(params.get("keep_previous")))
