# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SQL through psql, wherever the client tools run (``tools.LocalTools`` or ``DockerTools``).

``Server`` answers the questions of a dump, restore or verification (server version, database
sizes, whether a database is empty) with one psql call each; ``open_server`` builds it from the
module's options.
"""

from __future__ import annotations

import contextlib

from .._errors import ServiceError
from .connection import conn_params, libpq_env, libpq_vars
from .tools import DockerTools, LocalTools, db_arg, failure, find_bin_dir, quote_ident, quote_literal, tool_message

MAINTENANCE_DB = "postgres"

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
