# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup: PostgreSQL dumps streamed through the engine, restores, restore-tested verification.

Everything here takes plain data, a storage location and a tools runner (``_pg_tools``):
``dump()``, ``restore()`` and ``verify()`` plan first, return the plan in check mode and apply
it otherwise. Only the module turns errors into failures.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tarfile
import tempfile
import time

from .._engine.backup import (ArtifactReader, BackupSession, CHUNK, copy_to_fd, resolve_backup, sanitize_series,
                      summarize, update_verification, validate_series, verify_stored)
from .._errors import ConfigError, NotFoundError, OpsError, ServiceError
from .tools import (DockerTools, LocalTools, db_arg, failure, find_bin_dir, quote_ident,
                        quote_literal, tool_message)
from .connection import conn_params, libpq_env, libpq_vars

KIND = "postgres"
MAINTENANCE_DB = "postgres"
FORMATS = {"custom": "dump", "plain": "sql", "directory": "tar"}
DEFAULT_SERIES = "{host}-{database}"
SCRATCH_PREFIX = "opskit_verify_"

# Objects a restore would collide with: relations, routines, types, non-default schemas,
# extensions other than plpgsql, large objects.
EMPTY_SQL = """SELECT
 (SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp)')
 + (SELECT count(*) FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
   WHERE n.nspname NOT IN ('pg_catalog', 'information_schema'))
 + (SELECT count(*) FROM pg_namespace WHERE nspname NOT IN ('public', 'information_schema')
   AND nspname !~ '^pg_')
 + (SELECT count(*) FROM pg_extension WHERE extname <> 'plpgsql')
 + (SELECT count(*) FROM pg_largeobject_metadata)"""
TABLES_SQL = ("SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
              " WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
              " AND n.nspname !~ '^pg_(toast|temp)'")


# ------------------------------------------------------------------ pure helpers

def series_for(template, host, database, container=None):
    """The series of ``database``: ``template`` with {host} and {database} filled in."""
    if host in (None, "") or str(host).startswith("/"):
        host = container or "local"
    try:
        text = (template or DEFAULT_SERIES).format(host=host, database=database)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError("series %r: only {host} and {database} can be substituted (%s)"
                          % (template, exc)) from None
    if template and "{" not in template:
        return validate_series(template)
    return sanitize_series(text)


def check_options(state, params):
    """One-line ConfigErrors for combinations that cannot work."""
    databases = params.get("database") or []
    fmt, jobs = params.get("format") or "custom", params.get("jobs")
    jobs = 1 if jobs is None else jobs
    if jobs < 1:
        raise ConfigError("jobs must be 1 or more (got %s)" % jobs)
    if state == "dumped":
        if not databases:
            raise ConfigError("database is required with state=dumped")
        if len(set(databases)) != len(databases):
            raise ConfigError("database lists %s more than once" % next(
                d for d in databases if databases.count(d) > 1))
        if len(databases) > 1 and params.get("series") and "{database}" not in params["series"]:
            raise ConfigError("series must contain {database} when several databases are dumped")
        if jobs > 1 and fmt != "directory":
            raise ConfigError("jobs > 1 needs format=directory when dumping (pg_dump runs in"
                              " parallel only for the directory format)")
        if fmt == "directory" and params.get("docker_container"):
            raise ConfigError("format=directory is not supported with docker_container: use custom")
    else:
        if len(databases) > 1:
            raise ConfigError("state=%s takes one database (got %d)" % (state, len(databases)))
        if not databases and not params.get("series"):
            raise ConfigError("state=%s needs database or series to find the backup" % state)
        if params.get("clean") and params.get("force"):
            raise ConfigError("clean and force exclude each other: clean drops the target's"
                              " objects first, force restores over them")
        if params.get("single_transaction") and jobs > 1:
            raise ConfigError("single_transaction cannot be combined with jobs > 1")


def dump_argv(tools, fmt, database, jobs=1, path=None):
    argv = [tools.path("pg_dump"), "--no-password", db_arg(database)]
    if fmt == "custom":
        argv += ["--format=custom", "--compress=0"]
    elif fmt == "plain":
        argv += ["--format=plain"]
    elif fmt == "directory":
        argv += ["--format=directory", "--compress=0", "--jobs=%d" % jobs, "--file=%s" % path]
    else:
        raise ConfigError("format %r is not supported (custom, plain, directory)" % (fmt,))
    return argv


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


def psql_argv(tools, database, sql):
    return [tools.path("psql"), "--no-password", "--no-psqlrc", "--quiet", "--no-align",
            "--tuples-only", "--set=ON_ERROR_STOP=1", "--field-separator=\x1f",
            "--record-separator=\x1e", db_arg(database), "--command=%s" % sql]


def parse_rows(output):
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    if text.endswith("\n"):
        text = text[:-1]
    if not text:
        return []
    return [record.split("\x1f") for record in text.split("\x1e")]


def version_of(output):
    """'pg_dump (PostgreSQL) 15.13 (Debian 15.13-0+deb12u1)' -> '15.13'."""
    text = output.decode("utf-8", "replace") if isinstance(output, bytes) else output
    parts = text.strip().split()
    return parts[2] if len(parts) >= 3 else text.strip()


def evaluate_query(spec, rows):
    """Compare a verify query's result with its expectation: (passed, value, message).

    The value is the first column of the first row (None without rows). ``expect`` compares it
    as text; ``min`` / ``max`` compare it as a number; ``rows`` is the exact row count.
    A query without expectations passes when it runs.
    """
    value = rows[0][0] if rows and rows[0] else None
    problems = []
    if spec.get("rows") is not None and len(rows) != spec["rows"]:
        problems.append("returned %d rows, expected %d" % (len(rows), spec["rows"]))
    if spec.get("expect") is not None and value != str(spec["expect"]):
        problems.append("returned %r, expected %r" % (value, str(spec["expect"])))
    if spec.get("min") is not None or spec.get("max") is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            problems.append("returned %r, not a number" % (value,))
        else:
            if spec.get("min") is not None and number < spec["min"]:
                problems.append("returned %s, below the minimum %s" % (value, spec["min"]))
            if spec.get("max") is not None and number > spec["max"]:
                problems.append("returned %s, above the maximum %s" % (value, spec["max"]))
    return (not problems), value, "; ".join(problems) or "ok"


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


# ------------------------------------------------------------------ the server

class Server:
    """SQL through psql, wherever the tools run (the same path in a container)."""

    def __init__(self, tools, conn, auto_bin_dir=False):
        self.tools, self.conn = tools, conn
        self.auto_bin_dir = auto_bin_dir
        self._info = None
        self.label = "%s@%s:%s" % (conn.get("user") or "postgres",
                                   conn.get("host") or "local socket", conn.get("port") or 5432)

    def _learn(self, version, version_num):
        """Remember the server version; on the host, pick the client tools of its major version."""
        self._info = {"server_version": version, "server_major": int(version_num) // 10000}
        if self.auto_bin_dir:
            self.tools.bin_dir = find_bin_dir(None, self._info["server_major"])

    def query(self, sql, database=MAINTENANCE_DB):
        rc, out, err = self.tools.run(psql_argv(self.tools, database, sql))
        if rc != 0:
            detail = tool_message(err, self.conn.get("password")) or "exit %s" % rc
            if rc == 2 or "connection to server" in detail:
                raise ServiceError("cannot connect to PostgreSQL %s %s: %s"
                                   % (self.label, self.tools.where, detail))
            raise ServiceError("query on %s/%s failed: %s" % (self.label, database, detail))
        return parse_rows(out)

    def value(self, sql, database=MAINTENANCE_DB):
        rows = self.query(sql, database)
        return rows[0][0] if rows and rows[0] else None

    def info(self):
        if self._info is None:
            rows = self.query("SELECT current_setting('server_version'), current_setting('server_version_num')")
            self._learn(rows[0][0], rows[0][1])
        return self._info

    def databases(self, names):
        """{name: size in bytes} of the names that exist (server info too, in the same round trip)."""
        sql = ("SELECT datname, pg_database_size(datname), current_setting('server_version'),"
               " current_setting('server_version_num') FROM pg_database"
               " WHERE datname = ANY(ARRAY[%s]::text[])" % ", ".join(quote_literal(n) for n in names))
        rows = self.query(sql)
        if rows and self._info is None:
            self._learn(rows[0][2], rows[0][3])
        return {row[0]: int(row[1]) for row in rows}

    def exists(self, database):
        return bool(self.databases([database]))

    def is_empty(self, database):
        return int(self.value(EMPTY_SQL, database)) == 0

    def tables(self, database):
        return int(self.value(TABLES_SQL, database))

    def create(self, database):
        self.query("CREATE DATABASE %s TEMPLATE template0" % quote_ident(database))

    def drop(self, database):
        self.query("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(database))

    def tool_version(self, tool):
        rc, out, err = self.tools.run([self.tools.path(tool), "--version"])
        if rc != 0:
            raise failure(tool, rc, err, where=self.tools.where)
        return version_of(out)


@contextlib.contextmanager
def open_server(params):
    """A Server whose tools run on the managed host, or in ``docker_container``."""
    conn = conn_params(params)
    if params.get("docker_container"):
        from .._docker import docker_client
        tools = DockerTools(docker_client(params), params["docker_container"],
                            libpq_vars(params, with_password=True), params.get("docker_user"),
                            params.get("bin_dir"), conn.get("password"))
        yield Server(tools, conn)
        return
    with libpq_env(params) as env:
        tools = LocalTools(env, find_bin_dir(params.get("bin_dir")), conn.get("password"))
        yield Server(tools, conn, auto_bin_dir=not params.get("bin_dir"))


# ------------------------------------------------------------------------ dump

def dump(server, location, params, check_mode=False):
    """Back up each database of ``params["database"]``; returns the module result."""
    check_options("dumped", params)
    fmt, jobs = params["format"], params["jobs"]
    names = params["database"]
    sizes = server.databases(names)
    info = server.info()
    missing = [n for n in names if n not in sizes]
    if missing:
        raise NotFoundError("database %s does not exist on %s" % (", ".join(missing), server.label))
    location.check_writable()
    host, container = server.conn.get("host"), params.get("docker_container")
    plans = [{"database": n, "series": series_for(params.get("series"), host, n, container),
              "format": fmt, "size_bytes": sizes[n]} for n in names]
    if check_mode:
        return {"changed": True, "backups": [], "plan": plans, "location": location.url,
                "msg": "would write %d backup(s) to %s" % (len(plans), location.url)}
    tools = {"pg_dump": server.tool_version("pg_dump")}
    if params.get("globals"):
        tools["pg_dumpall"] = server.tool_version("pg_dumpall")
    backups = [_dump_one(server, location, params, plan, info, tools) for plan in plans]
    return {"changed": True, "backups": backups, "backup": backups[0], "plan": plans,
            "location": location.url, "msg": "wrote %d backup(s) to %s" % (len(backups), location.url)}


def _dump_one(server, location, params, plan, info, tools):
    tools_runner = server.tools
    fmt, database = plan["format"], plan["database"]
    started = time.monotonic()
    source = {"host": server.conn.get("host"), "port": server.conn.get("port"), "database": database,
              "format": fmt, "server_version": info["server_version"], "database_size": plan["size_bytes"],
              "tables": server.tables(database), "globals": bool(params.get("globals")),
              "container": params.get("docker_container")}
    with BackupSession(location, plan["series"], KIND, compression=params["compression"],
                       level=params.get("compression_level"), threads=params["compression_threads"],
                       size_hint=plan["size_bytes"]) as session:
        if params.get("globals"):
            argv = [tools_runner.path("pg_dumpall"), "--no-password", "--globals-only",
                    db_arg(MAINTENANCE_DB)]
            with session.artifact("sql", name="globals") as out, tools_runner.reader(argv) as pipe:
                out.copy_from(pipe)
        with session.artifact(FORMATS[fmt]) as out:
            if fmt == "directory":
                _dump_directory(tools_runner, params, database, out)
            else:
                with tools_runner.reader(dump_argv(tools_runner, fmt, database)) as pipe:
                    out.copy_from(pipe)
        manifest = session.publish(source=source, tools=tools)
    record = summarize(manifest, location)
    record.update(duration_seconds=round(time.monotonic() - started, 3), database=database,
                  format=fmt, server_version=info["server_version"], pg_dump_version=tools["pg_dump"],
                  globals=bool(params.get("globals")))
    return record


def _dump_directory(tools, params, database, out):
    """pg_dump -Fd (optionally -j) into a private temporary directory, then stream it as a tar."""
    tmp = tempfile.mkdtemp(prefix="opskit-pgdump-", dir=params.get("tmp_dir"))
    try:
        path = os.path.join(tmp, "dump")
        rc, _out, err = tools.run(dump_argv(tools, "directory", database, params["jobs"], path))
        if rc != 0:
            raise failure("pg_dump", rc, err, server_secret(params))
        with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
            for name in sorted(os.listdir(path)):
                tar.add(os.path.join(path, name), arcname=name, recursive=False)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def server_secret(params):
    return params.get("password")


# --------------------------------------------------------------------- restore

def find_backup(location, params, server):
    databases = params.get("database") or []
    template = params.get("series")
    if not databases and template and "{database}" in template:
        raise ConfigError("series %r needs database to fill in {database}" % template)
    series = series_for(template, server.conn.get("host"), databases[0] if databases else "",
                        params.get("docker_container"))
    manifest = resolve_backup(location, series, params.get("backup") or "latest")
    if manifest.get("kind") != KIND:
        raise ConfigError("backup %s of series %s is a %s backup, not a PostgreSQL dump"
                          % (manifest["id"], series, manifest.get("kind")))
    fmt = (manifest.get("source") or {}).get("format")
    if fmt not in FORMATS:
        raise ConfigError("backup %s has an unknown dump format %r" % (manifest["id"], fmt))
    return manifest


def _has_companion(manifest, name):
    return any(c.get("name") == name for c in manifest.get("companions") or [])


def restore(server, location, params, check_mode=False, manifest=None, target=None, scratch=False):
    """Restore a backup into ``target`` (default: the option or the original database)."""
    check_options("restored" if not scratch else "verified", params)
    manifest = manifest or find_backup(location, params, server)
    source = manifest.get("source") or {}
    fmt = source["format"]
    target = target or params.get("target_database") or source.get("database")
    if not target:
        raise ConfigError("target_database is required: backup %s does not name its database" % manifest["id"])
    if params.get("restore_globals") and not _has_companion(manifest, "globals"):
        raise ConfigError("backup %s has no globals: it was taken without globals=true" % manifest["id"])
    if params.get("jobs", 1) > 1 and fmt == "plain":
        raise ConfigError("jobs > 1 needs a custom or directory format backup (this one is plain)")
    streamed = fmt == "plain" or (fmt == "custom" and params.get("jobs", 1) <= 1)
    if not streamed and not server.tools.local:
        raise ConfigError("restoring a %s format backup%s is not supported with docker_container: use jobs=1"
                          " with a custom or plain format backup"
                          % (fmt, " with jobs > 1" if fmt == "custom" else ""))
    server.info()
    exists = server.exists(target)
    empty = server.is_empty(target) if exists else True
    steps = restore_plan(fmt, exists, empty, params.get("create") or scratch, params.get("clean"),
                         params.get("force"), target)
    no_owner = params.get("no_owner")
    if no_owner is None:
        no_owner = scratch
    plan = {"backup_id": manifest["id"], "series": manifest["series"], "format": fmt,
            "target_database": target, "steps": steps, "globals": bool(params.get("restore_globals"))}
    if check_mode:
        return {"changed": True, "plan": plan, "backup": summarize(manifest, location),
                "msg": "would restore backup %s into database %s" % (manifest["id"], target)}
    started = time.monotonic()
    with contextlib.ExitStack() as stack:
        local_copy = None
        if streamed:
            verify_stored(location, manifest)  # nothing touches the target before this passed
        else:
            local_copy = stack.enter_context(_local_copy(location, manifest, fmt, params))
        if params.get("restore_globals"):
            verify_stored(location, manifest, "globals")
        created = False
        try:
            if params.get("restore_globals"):
                plan["roles_kept"] = _restore_globals(server, location, manifest)
            if "recreate" in steps:
                server.drop(target)
                server.create(target)
            if "create" in steps:
                server.create(target)
                created = True
            argv = restore_argv(server.tools, fmt, target, clean="clean" in steps, jobs=params.get("jobs", 1),
                                single_transaction=params.get("single_transaction"), no_owner=no_owner,
                                path=local_copy)
            if streamed:
                with ArtifactReader(location, manifest) as reader:
                    server.tools.feed(argv, reader)
            else:
                rc, _out, err = server.tools.run(argv)
                if rc != 0:
                    raise failure("pg_restore", rc, err, server.conn.get("password"), server.tools.where)
        except OpsError:
            if created and not scratch:
                with contextlib.suppress(OpsError):
                    server.drop(target)  # it did not exist before: leave nothing half-restored
            raise
    plan["duration_seconds"] = round(time.monotonic() - started, 3)
    return {"changed": True, "plan": plan, "backup": summarize(manifest, location),
            "msg": "restored backup %s into database %s" % (manifest["id"], target)}


@contextlib.contextmanager
def _local_copy(location, manifest, fmt, params):
    """Download (and verify) the artifact into a private temporary file or directory.

    pg_restore --jobs cannot read a pipe, and the directory format is a directory. The sha256
    is checked at the end of the download, before the path is handed out.
    """
    tmp = tempfile.mkdtemp(prefix="opskit-pgrestore-", dir=params.get("tmp_dir"))  # mode 0700
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
                path = os.path.join(tmp, "dump.custom")
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    copy_to_fd(reader, fd)
                except OSError as exc:
                    raise ServiceError("writing backup %s to the temporary file %s failed: %s (set tmp_dir"
                                       " to a directory with room for %s bytes)"
                                       % (manifest["id"], path, exc.strerror or exc, manifest.get("raw_bytes"))) from None
                finally:
                    os.close(fd)
        yield path
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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


def _restore_globals(server, location, manifest):
    """Run the globals script: new roles and tablespaces are created, existing roles are kept.

    psql runs without ON_ERROR_STOP here, so its exit code says nothing about SQL errors:
    they are read from its stderr and every one but 'already exists' fails the restore.
    """
    import io
    with ArtifactReader(location, manifest, "globals") as reader:
        script = reader.read(-1).decode("utf-8")
    existing = [row[0] for row in server.query("SELECT rolname FROM pg_roles")]
    script, kept = filter_globals(script, existing)
    argv = [server.tools.path("psql"), "--no-password", "--no-psqlrc", "--quiet", db_arg(MAINTENANCE_DB),
            "--file=-"]
    _rc, err = server.tools.feed(argv, io.BytesIO(script.encode("utf-8")))
    errors = [" ".join(line.split()) for line in err.decode("utf-8", "replace").splitlines() if "ERROR:" in line]
    unexpected = [line for line in errors if "already exists" not in line]
    if unexpected:
        raise ServiceError("restoring globals failed: %s" % tool_message(unexpected[0], server.conn.get("password")))
    return kept


# ---------------------------------------------------------------------- verify

def verify(server, location, params, check_mode=False):
    """Restore into a scratch database, run the checks, record the outcome in the manifest."""
    check_options("verified", params)
    manifest = find_backup(location, params, server)
    scratch = "%s%s" % (SCRATCH_PREFIX, secrets.token_hex(4))
    queries = params.get("verify_queries") or []
    if check_mode:
        result = restore(server, location, params, True, manifest, scratch, scratch=True)
        result["msg"] = "would verify backup %s in a scratch database" % manifest["id"]
        result["verification"] = {"result": "unverified", "queries": len(queries)}
        return result
    started = time.monotonic()
    details = {"scratch_database": scratch, "queries": []}
    outcome, error = "failed", None
    try:
        restore(server, location, params, False, manifest, scratch, scratch=True)
        expected_tables = (manifest.get("source") or {}).get("tables")
        details["tables"] = server.tables(scratch)
        if expected_tables is not None and details["tables"] != expected_tables:
            error = "restored %d tables, the source had %d" % (details["tables"], expected_tables)
        for index, spec in enumerate(queries):
            name = spec.get("name") or "query %d" % (index + 1)
            try:
                passed, value, message = evaluate_query(spec, server.query(spec["query"], scratch))
            except ServiceError as exc:
                passed, value, message = False, None, exc.msg
            details["queries"].append({"name": name, "passed": passed, "value": value, "message": message})
            if not passed and error is None:
                error = "%s %s" % (name, message)
        outcome = "passed" if error is None else "failed"
    except OpsError as exc:
        error = "restore failed: %s" % exc.msg
    finally:
        with contextlib.suppress(OpsError):
            server.drop(scratch)
    details["duration_seconds"] = round(time.monotonic() - started, 3)
    if error:
        details["error"] = error
    updated = update_verification(location, manifest, "restore", outcome, details)
    result = {"changed": True, "backup": summarize(updated, location), "verification": updated["verification"]}
    if outcome != "passed":
        raise OpsError("verification of backup %s failed: %s" % (manifest["id"], error), **result)
    result["msg"] = "backup %s verified: restored and checked in a scratch database" % manifest["id"]
    return result
