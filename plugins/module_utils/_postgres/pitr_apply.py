# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery, the apply: pg_backup method=physical, state=restored or verified.

``run_physical`` is the module's action for method=physical. A restore plans (``pitr``), checks
every WAL segment it needs (present, sha256), extracts the base backup into the data directory,
prefetches them into a spool in the data directory (``opskit_wal_spool``: each file decompressed and
checked against its sha256 before it is renamed into place), writes ``restore_command`` (a copy
from the spool, opskit-wal fetch for anything else) and the recovery target and leaves the
directory ready to start; ``recovery_end_command`` removes the spool. A drill (state=verified) does the same in a scratch directory, then starts the
cluster on a scratch port (``pitr_drill``), waits until recovery reached the target and promoted,
runs the verify queries, and stops and removes it, also on failure.

A base backup with additional tablespaces (``pitr_tablespaces``): each companion is extracted into
its directory (``tablespace_mapping``, a scratch directory in a drill, else its original location)
before the base backup, and ``tablespace_map`` points the data directory at them.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shlex
import shutil
import tempfile
import time

from .._engine.catalog import summarize, update_verification
from .._errors import ConfigError, IntegrityError, OpsError, ServiceError, StorageError
from .cleanup import sweep_temporary, temp_prefix, terminable
from .options import series_for
from .physical import DEFAULT_PHYSICAL_SERIES, physical_dump
from .pitr import choose_base, parse_target, pg_time, physical_backups, wal_needed
from .pitr_drill import run_drill
from .pitr_extract import extract_artifact
from .pitr_tablespaces import (extract_tablespaces, link_tablespaces, plan_entries, plan_tablespaces, scratch_directories,
                               undo_tablespaces)
from .server import open_server
from .wal import fetch_entry, verify_entry, wal_index

RECOVERY_MARK = "# opskit.runbook point-in-time recovery"
SPOOL = "opskit_wal_spool"  # in the data directory: the server's cwd, so relative in the commands
PREFETCH_MAX_BYTES = 1024 * 1024 * 1024  # past 1 GiB of WAL, the rest is fetched by the helper during recovery


def run_physical(params, location, check_mode=False):
    """The action of pg_backup with method=physical."""
    with terminable():
        left = sweep_temporary(params.get("tmp_dir"), remove=not check_mode)
        if params["state"] == "dumped":
            with open_server(params) as server:
                result = physical_dump(server, location, params, check_mode)
        else:
            result = restore_physical(location, params, check_mode)
    if left:
        result["leftovers"] = {"temporary_files": left}
        result.setdefault("warnings", []).append("%s what an interrupted earlier run left: %s" % (
            "found (check mode: kept)" if check_mode else "removed", ", ".join(left)))
    return result


def conf_quote(value):
    return "'%s'" % str(value).replace("'", "''")


def restore_command(helper):
    """``<helper argv> fetch %f %p``, each word shell-quoted and every % of it doubled."""
    if not helper:
        raise ConfigError("wal_helper is required to restore a physical backup: the opskit-wal command that"
                          " fetches WAL (for example [/usr/bin/python3, /usr/local/lib/opskit/opskit-wal, --config, /etc/opskit/wal.json])")
    return " ".join(shlex.quote(str(word)).replace("%", "%%") for word in helper) + " fetch %f %p"


def spool_restore_command(helper):
    """restore_command of a restore: a file of the spool (checked when prefetched) is hard-linked, else copied
    (pg_wal elsewhere); a failed copy exits 126, which aborts the recovery instead of ending it there. Recovery
    never writes into a file it restored, and the spool is removed when it ends, before the server writes WAL.
    00000001.history does not exist (PostgreSQL never writes one, yet asks for it at promotion); anything else
    goes to ``helper``."""
    return ('f=%s/%%f; if [ -f "$f" ]; then ln -- "$f" "%%p" 2>/dev/null || cp -- "$f" "%%p" || exit 126;'
            ' elif [ %%f = 00000001.history ]; then exit 1; else %s; fi' % (SPOOL, restore_command(helper)))


def spool_end_command():
    return "rm -rf -- %s" % SPOOL


def target_settings(target):
    lines = ["recovery_target_timeline = 'latest'", "recovery_target_action = 'promote'"]
    if target["kind"] == "time":
        lines.append("recovery_target_time = %s" % conf_quote(pg_time(target["value"])))
    elif target["kind"] == "lsn":
        lines.append("recovery_target_lsn = %s" % conf_quote(target["text"]))
    elif target["kind"] == "immediate":
        lines.append("recovery_target = 'immediate'")
    return lines


def _pid_alive(directory):
    try:
        with open(os.path.join(directory, "postmaster.pid")) as fh:
            pid = int(fh.readline().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return None


def check_data_directory(path, force):
    """'create' (absent), 'use' (empty) or 'replace' (force, a data directory); ConfigError otherwise."""
    if not path or not os.path.isabs(path):
        raise ConfigError("data_directory must be an absolute path (got %r)" % (path,))
    if not os.path.lexists(path):
        return "create"
    if not os.path.isdir(path) or os.path.islink(path):
        raise ConfigError("data_directory %s is not a directory" % path)
    pid = _pid_alive(path)
    if pid:
        raise ConfigError("data_directory %s belongs to a running cluster (postmaster pid %d): never restored"
                          " over, not even with force" % (path, pid))
    if not os.listdir(path):
        return "use"
    if not force:
        raise ConfigError("data_directory %s is not empty: choose an empty or absent directory, or set force to"
                          " replace its content" % path)
    if not os.path.exists(os.path.join(path, "PG_VERSION")):
        raise ConfigError("data_directory %s is not empty and not a PostgreSQL data directory (no PG_VERSION):"
                          " force replaces only a data directory" % path)
    return "replace"


def resolve_owner(params, path):
    """The account the restored files belong to (and a drill runs as): data_owner, else the owner
    of the directory (or of its parent), else postgres when that is root."""
    name = params.get("data_owner")
    try:
        if name:
            return pwd.getpwnam(name)
        probe = path if os.path.exists(path) else os.path.dirname(path)
        entry = pwd.getpwuid(os.stat(probe).st_uid)
        return pwd.getpwnam("postgres") if entry.pw_uid == 0 else entry
    except (KeyError, OSError) as exc:
        raise ConfigError("data_owner %s is not a user of the managed host: set data_owner"
                          % (name or "postgres")) from exc


def _chown_tree(path, owner):
    if os.geteuid() != 0:
        return
    os.lchown(path, owner.pw_uid, owner.pw_gid)
    for dirpath, dirnames, filenames in os.walk(path):
        for name in dirnames + filenames:
            os.lchown(os.path.join(dirpath, name), owner.pw_uid, owner.pw_gid)


def extract_base(location, manifest, directory):
    """Stream the base backup's tar into ``directory`` (``pitr_extract``: nothing outside it, no
    devices); the sha256 is checked at its end (a mismatch raises IntegrityError and the caller
    removes what was extracted)."""
    extract_artifact(location, manifest, directory, what="base backup %s" % manifest.get("id"))


def write_recovery(directory, lines):
    with open(os.path.join(directory, "postgresql.auto.conf"), "a") as fh:
        fh.write("\n%s\n%s\n" % (RECOVERY_MARK, "\n".join(lines)))
    with open(os.path.join(directory, "recovery.signal"), "w"):
        pass


def plan_restore(location, params):
    if params.get("docker_container"):
        raise ConfigError("restores with method=physical run on the managed host (a data directory there):"
                          " docker_container is not supported for them")
    target = parse_target(params)
    series = series_for(params.get("series") or DEFAULT_PHYSICAL_SERIES, params.get("host"), "cluster",
                        params.get("docker_container"))
    command = spool_restore_command(params.get("wal_helper"))
    base = choose_base(physical_backups(location, series, params.get("backup")), target)
    index = wal_index(location, series)
    entries = wal_needed(location, series, index, base, target)
    histories = [entry for files in index.values() for name, entry in sorted(files.items()) if name.endswith(".history")]
    plan = {"backup_id": base["id"], "series": series, "target": target["text"], "target_kind": target["kind"],
            "base_stop_time": base["source"]["stop_time"], "base_stop_lsn": base["source"]["stop_lsn"],
            "wal_segments": len(entries), "first_wal": entries[0]["file"] if entries else None,
            "last_wal": entries[-1]["file"] if entries else None}
    return target, base, histories + entries, command, plan


def restore_physical(location, params, check_mode=False):
    started = time.monotonic()
    drill = params["state"] == "verified"
    target, base, entries, command, plan = plan_restore(location, params)
    directory = params.get("data_directory")
    if directory or not drill:
        plan["data_directory"] = directory
        plan["steps"] = [check_data_directory(directory, params.get("force"))]
    spaces = plan_tablespaces(base, params, drill)
    plan["tablespaces"] = plan_entries(spaces)
    if check_mode:
        return {"changed": not drill, "plan": plan, "backup": summarize(base, location),
                "msg": "would %s base backup %s to %s (%d WAL segments checked present)" % (
                    "drill" if drill else "restore", base["id"], target["text"], plan["wal_segments"])}
    with _workspace(params, directory, drill, spaces) as (path, owner, scratch):
        spaces = scratch_directories(spaces, scratch) if drill else spaces
        plan["tablespaces"] = plan_entries(spaces)
        plan["wal_prefetched"] = _prepare(location, base, path, plan.get("steps", ["create"])[0],
                                          (plan["series"], entries), spaces)
        write_recovery(path, ["restore_command = %s" % conf_quote(command),
                              "recovery_end_command = %s" % conf_quote(spool_end_command())] + target_settings(target))
        _chown_tree(path, owner)
        for space in spaces:
            _chown_tree(space["directory"], owner)
        restored = round(time.monotonic() - started, 3)
        if not drill:
            return {"changed": True, "plan": plan, "backup": summarize(base, location),
                    "recovery": {"target": target["text"], "restore_seconds": restored, "data_directory": path,
                                 "wal_prefetched": plan["wal_prefetched"],
                                 "tablespaces": {str(s["oid"]): s["directory"] for s in spaces}},
                    "msg": "restored base backup %s into %s, recovering to %s when started"
                           % (base["id"], path, target["text"])}
        return _drill(location, params, base, target, (path, owner, scratch, started, plan))


def prefetch(location, series, entries, spool, limit=PREFETCH_MAX_BYTES):
    """Fetch the WAL files recovery needs into ``spool``: each one decompressed into a hidden file and
    renamed only once its sha256 matched (a corrupt one: IntegrityError, refused before replay). Past
    ``limit`` bytes the rest is only checked, restore_command fetches it. Returns how many are spooled."""
    shutil.rmtree(spool, ignore_errors=True)  # an earlier restore's, in a data directory force replaces
    os.mkdir(spool, 0o700)
    size = count = 0
    for entry in entries:
        if size >= limit:
            verify_entry(location, series, entry)
            continue
        dest = os.path.join(spool, entry["file"])
        try:
            fetch_entry(location, series, entry, dest)
        except IntegrityError as exc:
            raise IntegrityError("WAL file %s of series %s cannot be restored (%s): refused before replay"
                                 % (entry["file"], series, exc.msg)) from exc
        size += os.path.getsize(dest)
        count += 1
    return count


def _prepare(location, base, path, step, wal, spaces=()):
    """Prefetch the WAL (a failure removes what it wrote, a replaced directory's content stays), then
    empty a replaced directory and extract the tablespaces and the base backup (a failure removes the
    directory and empties or removes the tablespace directories)."""
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    spool = os.path.join(path, SPOOL)
    fetched = None
    try:
        fetched = prefetch(location, wal[0], wal[1], spool)
    finally:
        if fetched is None:
            shutil.rmtree(path if step == "create" else spool, ignore_errors=True)
    if step == "replace":
        for name in os.listdir(path):
            full = os.path.join(path, name)
            if name == SPOOL:
                continue
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)
    extracted = False
    try:
        extract_tablespaces(location, base, spaces)  # each checked (sha256) before anything is replayed
        try:
            extract_base(location, base, path)
            link_tablespaces(path, spaces)
            extracted = True
        finally:
            if not extracted:
                undo_tablespaces(spaces)
    finally:
        if not extracted:  # an error or a signal: no half-extracted data directory stays
            shutil.rmtree(path, ignore_errors=True)
    return fetched


@contextlib.contextmanager
def _workspace(params, directory, drill, spaces=()):
    """(data directory, owner, scratch root): a drill's directories (data, tablespaces) are removed at the end, always."""
    scratch = tempfile.mkdtemp(prefix=temp_prefix("opskit-pgrestore-"), dir=params.get("tmp_dir")) if drill else None
    path = directory or os.path.join(scratch, "data")
    owner = resolve_owner(params, path if directory else scratch)
    try:
        if scratch:  # stays ours (a killed drill's is swept by the next run), the data owner may pass
            os.chmod(scratch, 0o711)
        yield path, owner, scratch
    finally:
        if drill:
            if directory:
                shutil.rmtree(directory, ignore_errors=True)
            for space in spaces:
                if space["directory"]:  # mapped (the defaults lie in the scratch root)
                    shutil.rmtree(space["directory"], ignore_errors=True)
            shutil.rmtree(scratch, ignore_errors=True)


def _drill(location, params, base, target, context):
    path, owner, scratch, started, plan = context
    try:
        recovery, checks = run_drill(params, path, owner, scratch, target, started)
    except OpsError as exc:
        _record(location, base, "failed", {"target": target["text"], "error": exc.msg})
        raise
    passed = all(c["passed"] for c in checks)
    details = dict(recovery, target=target["text"], queries=checks)
    verification = _record(location, base, "passed" if passed else "failed", details)
    result = {"changed": True, "plan": plan, "backup": summarize(base, location), "recovery": recovery,
              "verification": verification}
    message = "drill of base backup %s to %s %s: recovered to %s (%s) in %.1f s" % (
        base["id"], target["text"], "passed" if passed else "FAILED", recovery["recovered_lsn"],
        recovery["recovered_time"], recovery["rto_seconds"])
    if not passed:
        raise ServiceError(message + ": " + "; ".join(c["message"] for c in checks if not c["passed"]), **result)
    return dict(result, msg=message)


def _record(location, base, result, details):
    try:
        return update_verification(location, base, "pitr-drill", result, details)["verification"]
    except StorageError:
        return {"result": result, "method": "pitr-drill", "details": details, "recorded": False}
