# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup state=restored: a backup restored into a database, planned first.

``restore()`` is ``_plan_restore`` (checks, the target's state, the steps of ``restore_plan``
or ``staged_plan``: nothing is changed) and, unless in check mode, ``_apply_restore``.

A custom-format backup (unless ``staged=false`` or ``force``) is restored by ``staged``: streamed
into a staging database, swapped in under the target's name once its sha256 is verified.
Plain and directory formats (and ``staged=false``) are downloaded once and checked (sha256)
before anything touches the target, then the target is prepared and pg_restore or psql fed.
verify() restores through it too.
"""

from __future__ import annotations

import contextlib
import io
import mmap
import os
import shutil
import tarfile
import tempfile
import time

from .._engine.artifacts import ArtifactReader, verify_stored
from .._engine.catalog import summarize
from .._engine.streams import CHUNK, copy_to_fd
from .._errors import ConfigError, IntegrityError, NotFoundError, OpsError, ServiceError
from .._storage.base import ChangedError
from .._storage.file import FileLocation
from .cleanup import temp_prefix
from .options import check_options, find_backup
from .script import RESTRICTED, SafeScript, check_script, has_restrict, refused_by_psql
from .server import MAINTENANCE_DB
from .staged import apply_staged
from .tools import db_arg, failure, quote_ident, tool_message


def restore_argv(tools, fmt, target, clean=False, jobs=1, single_transaction=False,
                 no_owner=False, path=None):
    """pg_restore (custom, directory) or psql (plain) restoring into ``target``."""
    if fmt == "plain":
        argv = [tools.path("psql"), "--no-password", "--no-psqlrc", "--quiet",
                "--set=ON_ERROR_STOP=1", db_arg(target)]
        if single_transaction:
            argv.append("--single-transaction")
        return argv + ["--file=-"]
    argv = [tools.path("pg_restore"), "--no-password", "--exit-on-error", db_arg(target)]
    if clean:
        argv += ["--clean", "--if-exists"]
    if no_owner:
        argv += ["--no-owner", "--no-privileges"]
    if single_transaction:
        argv.append("--single-transaction")
    if jobs > 1:
        argv.append("--jobs=%d" % jobs)
    if path:
        argv.append(path)
    return argv


def restore_plan(fmt, exists, empty, create, clean, force, target):
    """What a restore does to ``target`` (a list of steps) or a ConfigError explaining why not."""
    steps = []
    if not exists:
        if not create:
            raise NotFoundError("target database %s does not exist: set create=true to create it" % target)
        steps.append("create")
    elif not empty:
        if clean:
            steps.append("recreate" if fmt == "plain" else "clean")
        elif not force:
            raise ConfigError("target database %s is not empty: set clean=true to drop its objects"
                              " first, or force=true to restore over them" % target)
    steps.append("restore")
    return steps


def staged_plan(exists, empty, create, clean, target):
    """The steps of a staged restore: ``create`` (the staging database is renamed to the new
    target) or ``replace`` (it is swapped in for the target), then ``restore``."""
    if not exists:
        if not create:
            raise NotFoundError("target database %s does not exist: set create=true to create it" % target)
        return ["create", "restore"]
    if not empty and not clean:
        raise ConfigError("target database %s is not empty: set clean=true to replace it by the backup (restored"
                          " into a staging database, swapped in once verified), or force=true to restore over its"
                          " objects" % target)
    return ["replace", "restore"]


def uses_staging(fmt, params, verifying):
    """Whether a restore takes the staged path (custom format, neither staged=false nor force)."""
    if fmt != "custom":
        return False
    return verifying or (params.get("staged") is not False and not params.get("force"))


def _has_companion(manifest, name):
    return any(c.get("name") == name for c in manifest.get("companions") or [])


class RestoreJob:
    """A planned restore: the ``plan`` returned to the user and what applying it needs."""

    def __init__(self, manifest, plan, streamed, no_owner, verifying, restricted=True, pin=None):
        self.manifest, self.plan, self.pin = manifest, plan, pin
        self.fmt, self.target, self.steps = plan["format"], plan["target_database"], plan["steps"]
        self.streamed = streamed        # fed to pg_restore / psql from the store, no local copy
        self.no_owner = no_owner
        self.verifying = verifying      # verify()'s restore into its scratch database
        self.restricted = restricted    # psql has \restrict: SQL scripts run behind it
        self.staged = False             # streamed into a staging database, swapped in (staged.py)


def restore(server, location, params, check_mode=False, manifest=None, target=None, verifying=False):
    """Restore a backup into ``target`` (default: the option or the original database).

    ``verifying``: this is the restore of verify() into its scratch database, which is created
    here, gets no owners by default and is dropped by verify() (also after a failure).
    """
    job = _plan_restore(server, location, params, manifest, target, verifying)
    if check_mode:
        return {"changed": True, "plan": job.plan, "backup": summarize(job.manifest, location),
                "msg": "would restore backup %s into database %s" % (job.manifest["id"], job.target)}
    started = time.monotonic()
    warnings = _apply_restore(server, location, params, job)
    job.plan["duration_seconds"] = round(time.monotonic() - started, 3)
    result = {"changed": True, "plan": job.plan, "backup": summarize(job.manifest, location),
              "msg": "restored backup %s into database %s" % (job.manifest["id"], job.target)}
    if job.plan.get("previous_database"):
        result["msg"] += " (the database it replaced is kept as %s)" % job.plan["previous_database"]
    if warnings:
        result["warnings"] = warnings
    return result


def _plan_restore(server, location, params, manifest, target, verifying):
    """The RestoreJob for these options, or the error that stops it; nothing is changed."""
    check_options("verified" if verifying else "restored", params)
    manifest = manifest or find_backup(location, params, server)
    pin = pin_artifact(location, manifest)
    source = manifest.get("source") or {}
    fmt = source["format"]
    target = target or params.get("target_database") or source.get("database")
    if not target:
        raise ConfigError("target_database is required: backup %s does not name its database" % manifest["id"])
    server.info()
    restricted = _psql_restricts(server, fmt, params)
    streamed = _streamed(manifest, fmt, params, server.tools.local, restricted)
    exists = server.exists(target)
    empty = server.is_empty(target) if exists else True
    staged = uses_staging(fmt, params, verifying)
    if params.get("keep_previous") and not staged:
        raise ConfigError("keep_previous needs a staged restore: a custom-format backup, staged=true and no force")
    if staged:
        steps = staged_plan(exists, empty, params.get("create") or verifying, params.get("clean"), target)
    else:
        steps = restore_plan(fmt, exists, empty, params.get("create") or verifying, params.get("clean"),
                             params.get("force"), target)
    no_owner = params.get("no_owner")
    if no_owner is None:
        no_owner = verifying
    plan = {"backup_id": manifest["id"], "series": manifest["series"], "format": fmt,
            "target_database": target, "steps": steps, "globals": bool(params.get("restore_globals"))}
    if staged and not verifying:
        plan["staged"] = True
    job = RestoreJob(manifest, plan, streamed, no_owner, verifying, restricted, pin)
    job.staged = staged
    return job


def _psql_restricts(server, fmt, params):
    """Whether the psql that runs SQL scripts (plain dumps, globals) has ``\\restrict``."""
    if fmt != "plain" and not params.get("restore_globals"):
        return True
    return has_restrict(server.tool_version("psql"))


def _streamed(manifest, fmt, params, local, restricted=True):
    """Whether the backup can be fed to the tool from the store (else it needs a local copy),
    after the checks of what the backup and the tools' place allow.

    A plain dump for a psql without ``\\restrict`` is copied and checked first (``check_script``)
    and the checked copy is fed, so nothing is changed before it is refused.
    """
    if params.get("restore_globals") and not _has_companion(manifest, "globals"):
        raise ConfigError("backup %s has no globals: it was taken without globals=true" % manifest["id"])
    if params.get("jobs", 1) > 1 and fmt == "plain":
        raise ConfigError("jobs > 1 needs a custom or directory format backup (this one is plain)")
    if fmt == "plain":
        return restricted
    streamed = fmt == "custom" and params.get("jobs", 1) <= 1
    if not streamed and not local:
        raise ConfigError("restoring a %s format backup%s is not supported with docker_container: use jobs=1"
                          " with a custom or plain format backup"
                          % (fmt, " with jobs > 1" if fmt == "custom" else ""))
    return streamed


def _apply_restore(server, location, params, job):
    """The staged restore (``staged.apply_staged``), or: download and check the backup once, then
    restore (globals, target prepared, the dump fed to the tool). Returns warnings.

    A target database this restore created is dropped again when it fails (verify() drops its
    scratch database itself).
    """
    manifest = job.manifest
    if job.staged:
        if params.get("restore_globals"):
            job.plan["roles_kept"] = _restore_globals(server, _read_globals(location, manifest), manifest, job.restricted)
        return apply_staged(server, location, params, job)
    with contextlib.ExitStack() as stack:
        local = stack.enter_context(_downloaded(location, job, params))  # nothing touches the target before
        local_copy = None
        if not job.streamed:
            local_copy = stack.enter_context(_local_copy(local, manifest, job.fmt, params))
            if job.fmt == "plain":
                _check_file(local_copy, "backup %s" % manifest["id"])
        globals_data = _read_globals(location, manifest) if params.get("restore_globals") else None
        created = False
        try:
            if globals_data is not None:
                job.plan["roles_kept"] = _restore_globals(server, globals_data, manifest, job.restricted)
            created = _prepare_target(server, job)
            _run_restore(server, local, params, job, local_copy)
            return []
        except OpsError:
            if created and not job.verifying:
                with contextlib.suppress(OpsError):
                    server.drop(job.target)  # it did not exist before: leave nothing half-restored
            raise


def pin_artifact(location, manifest):
    """The token of the main artifact as it is now, right after its manifest was read: the
    restore downloads this version or fails, never a mix of two."""
    key = "%s/%s" % (manifest["series"], manifest["artifact"])
    try:
        return location.pin(key)
    except NotFoundError as exc:
        raise NotFoundError("backup %s is incomplete: its artifact %s is missing" % (manifest["id"], key)) from exc


@contextlib.contextmanager
def _downloaded(location, job, params):
    """The stored artifact, downloaded once (pinned, resumed on dropped connections) into a
    private temporary directory and checked (sha256, size) there; yields a FileLocation on it
    that the engine's readers decode from (decompression, decryption)."""
    manifest = job.manifest
    key = "%s/%s" % (manifest["series"], manifest["artifact"])
    tmp = tempfile.mkdtemp(prefix=temp_prefix("opskit-pgrestore-"), dir=params.get("tmp_dir"))  # mode 0700
    try:
        local = FileLocation(tmp)
        local.protection_options = getattr(location, "protection_options", None)
        path = local.path(key)
        os.mkdir(os.path.dirname(path), 0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            location.download(key, fd, job.pin)
        except ChangedError as exc:
            raise IntegrityError("backup %s changed while it was being restored (%s): nothing was restored;"
                                 " run again to restore what the store holds now" % (manifest["id"], exc.msg)) from exc
        except OSError as exc:
            raise ServiceError("downloading backup %s to %s failed: %s (set tmp_dir to a directory with room for %s"
                               " bytes)" % (manifest["id"], path, exc.strerror or exc, manifest.get("size_bytes"))) from exc
        finally:
            os.close(fd)
        verify_stored(local, manifest)
        yield local
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _read_globals(location, manifest):
    """The globals script, read once into memory and checked (sha256) at its end."""
    with ArtifactReader(location, manifest, "globals") as reader:
        return reader.read(-1)


def _prepare_target(server, job):
    """The ``recreate`` / ``create`` steps; returns whether the target database was created."""
    if "recreate" in job.steps:
        server.drop(job.target)
        server.create(job.target)
    if "create" in job.steps:
        server.create(job.target)
        return True
    return False


def _run_restore(server, local, params, job, local_copy):
    """pg_restore or psql into the target: fed from the checked download ``local``, or run on
    ``local_copy`` (decoded)."""
    argv = restore_argv(server.tools, job.fmt, job.target, clean="clean" in job.steps, jobs=params.get("jobs", 1),
                        single_transaction=params.get("single_transaction"), no_owner=job.no_owner,
                        path=local_copy)
    if job.fmt == "plain":
        opener = (lambda: ArtifactReader(local, job.manifest)) if job.streamed else (lambda: open(local_copy, "rb"))
        try:
            with opener() as reader:
                server.tools.feed(argv, SafeScript(reader, job.restricted))
        except ServiceError as exc:
            if RESTRICTED in exc.msg:
                raise refused_by_psql("backup %s" % job.manifest["id"]) from None
            raise
        return
    if job.streamed:
        with ArtifactReader(local, job.manifest) as reader:
            server.tools.feed(argv, reader)
        return
    rc, _out, err = server.tools.run(argv)
    if rc != 0:
        raise failure("pg_restore", rc, err, server.conn.get("password"), server.tools.where)


@contextlib.contextmanager
def _local_copy(location, manifest, fmt, params):
    """Decode the (downloaded) artifact into a private temporary file or directory.

    pg_restore --jobs cannot read a pipe, and the directory format is a directory. The sha256
    is checked at the end, before the path is handed out.
    """
    tmp = tempfile.mkdtemp(prefix=temp_prefix("opskit-pgrestore-"), dir=params.get("tmp_dir"))  # mode 0700
    try:
        with ArtifactReader(location, manifest) as reader:
            if fmt == "directory":
                path = os.path.join(tmp, "dump")
                os.mkdir(path, 0o700)
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    tar.extractall(path, filter="data")
                while reader.read(CHUNK):  # the sha256 is checked at the very end
                    pass
            else:
                path = os.path.join(tmp, "dump.sql" if fmt == "plain" else "dump.custom")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    copy_to_fd(reader, fd)
                except OSError as exc:
                    raise ServiceError("writing backup %s to the temporary file %s failed: %s (set tmp_dir"
                                       " to a directory with room for %s bytes)"
                                       % (manifest["id"], path, exc.strerror or exc, manifest.get("raw_bytes"))) from exc
                finally:
                    os.close(fd)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _check_file(path, what):
    """check_script on a local copy, mapped rather than read into memory."""
    with open(path, "rb") as fh:
        if os.fstat(fh.fileno()).st_size == 0:
            return
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as data:
            check_script(data, what)


def filter_globals(script, existing_roles):
    """Drop the CREATE ROLE / ALTER ROLE lines of roles that exist: they are kept as they are.

    Above all this keeps the password and attributes of the role the restore connects as:
    pg_dumpall's ALTER ROLE would otherwise replace its password midway. Returns (script,
    sorted names of the roles kept).
    """
    forms = {}
    for role in existing_roles:
        forms[role] = role
        forms[quote_ident(role)] = role
    kept, out = set(), []
    for line in script.splitlines(True):
        prefix = next((p for p in ("CREATE ROLE ", "ALTER ROLE ") if line.startswith(p)), None)
        ident = _leading_ident(line[len(prefix):]) if prefix else None
        if ident in forms:
            kept.add(forms[ident])
            continue
        out.append(line)
    return "".join(out), sorted(kept)


def _leading_ident(text):
    """The identifier at the start of ``text`` as written, bare or double-quoted."""
    if text.startswith('"'):
        index = 1
        while index < len(text):
            if text[index] == '"':
                if text[index + 1:index + 2] == '"':
                    index += 2
                    continue
                return text[:index + 1]
            index += 1
        return None
    end = len(text)
    for stop in (" ", ";", "\n"):
        if stop in text:
            end = min(end, text.index(stop))
    return text[:end]


def _restore_globals(server, data, manifest, restricted=True):
    """Run the globals script: new roles and tablespaces are created, existing roles are kept.

    psql runs without ON_ERROR_STOP here, so its exit code says nothing about SQL errors:
    they are read from its stderr and every one but 'already exists' fails the restore (a
    meta-command refused by ``\\restrict`` too). The script (small, in memory) is checked first in
    any case: without ON_ERROR_STOP, the roles before a refused meta-command would stay.
    """
    check_script(data, "the globals of backup %s" % manifest["id"], copy_allowed=False)
    script = data.decode("utf-8", "replace")
    existing = [row[0] for row in server.query("SELECT rolname FROM pg_roles")]
    script, kept = filter_globals(script, existing)
    argv = [server.tools.path("psql"), "--no-password", "--no-psqlrc", "--quiet", db_arg(MAINTENANCE_DB),
            "--file=-"]
    _rc, err = server.tools.feed(argv, SafeScript(io.BytesIO(script.encode("utf-8")), restricted))
    errors = [" ".join(line.split()) for line in err.decode("utf-8", "replace").splitlines()
              if "ERROR:" in line or "backslash commands are restricted" in line]
    unexpected = [line for line in errors if "already exists" not in line]
    if any(RESTRICTED in line for line in unexpected):
        raise refused_by_psql("the globals of backup %s" % manifest["id"])
    if unexpected:
        raise ServiceError("restoring globals failed: %s" % tool_message(unexpected[0], server.conn.get("password")))
    return kept
