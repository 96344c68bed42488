# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup state=dumped: pg_dump streamed through the engine into a new backup per database.

``dump()`` plans (series, sizes), returns the plan in check mode and writes the backups
otherwise; the directory format is dumped into a private temporary directory and streamed as
a tar.
"""

from __future__ import annotations

import os
import shutil
import tarfile
import tempfile
import time

from .._engine.catalog import summarize
from .._engine.session import BackupSession
from .._errors import ConfigError, NotFoundError
from .cleanup import temp_prefix
from .options import FORMATS, KIND, check_options, series_for
from .server import MAINTENANCE_DB
from .tools import db_arg, failure


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


def dump(server, location, params, check_mode=False):
    """Back up each database of ``params["database"]``; returns the module result."""
    check_options("dumped", params)
    fmt = params["format"]
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
    markers, warnings = [], []
    backups = [_dump_one(server, location, params, plan, info, tools, (markers, warnings)) for plan in plans]
    result = {"changed": True, "backups": backups, "backup": backups[0], "plan": plans,
              "location": location.url, "msg": "wrote %d backup(s) to %s" % (len(backups), location.url)}
    if markers:
        result["removed_markers"] = markers  # action.run() reports them in ``leftovers``
    if warnings:
        result["warnings"] = warnings
    return result


def _dump_one(server, location, params, plan, info, tools, report):
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
    report[0].extend(session.removed_markers)
    report[1].extend(session.warnings)
    record = summarize(manifest, location)
    record.update(duration_seconds=round(time.monotonic() - started, 3), database=database,
                  format=fmt, server_version=info["server_version"], pg_dump_version=tools["pg_dump"],
                  globals=bool(params.get("globals")))
    return record


def _dump_directory(tools, params, database, out):
    """pg_dump -Fd (optionally -j) into a private temporary directory, then stream it as a tar."""
    tmp = tempfile.mkdtemp(prefix=temp_prefix("opskit-pgdump-"), dir=params.get("tmp_dir"))
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
