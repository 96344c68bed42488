# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL connection options: the shared spec, libpq environments and psycopg2 connections.

Passwords reach the client tools through a 0600 passfile (PGPASSFILE), never argv. psycopg2 is
imported on the first ``connect()`` only (``_imports.Library``): pg_backup runs the client tools
and does not need it.
"""

from __future__ import annotations

import contextlib
import copy
import os
import tempfile

from .._errors import ConfigError, ServiceError
from .._imports import Library, fallback

PSYCOPG2 = Library("psycopg2")

PG_ARGSPEC = dict(
    host=dict(type="str", aliases=["login_host"], fallback=fallback("PGHOST")),
    port=dict(type="int", fallback=fallback("PGPORT")),
    user=dict(type="str", aliases=["login_user"], fallback=fallback("PGUSER")),
    password=dict(type="str", no_log=True, aliases=["login_password"], fallback=fallback("PGPASSWORD")),
    sslmode=dict(type="str", choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
                 fallback=fallback("PGSSLMODE")),
    sslrootcert=dict(type="path", fallback=fallback("PGSSLROOTCERT")),
    sslcert=dict(type="path", fallback=fallback("PGSSLCERT")),
    sslkey=dict(type="path", no_log=False, fallback=fallback("PGSSLKEY")),
    connect_timeout=dict(type="int", default=10, fallback=fallback("PGCONNECT_TIMEOUT")),
)
PG_OPTION_NAMES = tuple(PG_ARGSPEC)
_LIBPQ_ENV = dict(host="PGHOST", port="PGPORT", user="PGUSER", sslmode="PGSSLMODE",
                  sslrootcert="PGSSLROOTCERT", sslcert="PGSSLCERT", sslkey="PGSSLKEY",
                  connect_timeout="PGCONNECT_TIMEOUT")


def pg_argspec(**extra):
    spec = copy.deepcopy(PG_ARGSPEC)
    spec.update(extra)
    return spec


def conn_params(params):
    """The connection options of ``params`` with defaults applied (user defaults to postgres)."""
    out = {name: params.get(name) for name in PG_OPTION_NAMES}
    out["user"] = out["user"] or "postgres"
    return out


def connect_kwargs(params, dbname="postgres"):
    """keyword arguments for psycopg2.connect()."""
    conn = conn_params(params)
    kwargs = {"dbname": dbname, "application_name": "opskit.runbook"}
    for name in ("host", "port", "user", "password", "sslmode", "sslrootcert", "sslcert", "sslkey",
                 "connect_timeout"):
        if conn.get(name) not in (None, ""):
            kwargs[name] = conn[name]
    return kwargs


def connect(params, dbname="postgres"):
    psycopg2 = PSYCOPG2.load()
    conn = conn_params(params)
    where = "%s@%s:%s/%s" % (conn["user"], conn.get("host") or "local socket", conn.get("port") or 5432, dbname)
    try:
        return psycopg2.connect(**connect_kwargs(params, dbname))
    except psycopg2.Error as exc:
        # from None: libpq's message (and so the cause's text) can quote the connection string
        # with its password; pg_message masks it, the original exception would not.
        raise ServiceError("cannot connect to PostgreSQL %s: %s" % (where, pg_message(exc, conn.get("password")))) from None


def pg_message(exc, secret=None):
    """First line of a psycopg2 / libpq error with any secret removed."""
    text = (getattr(exc, "pgerror", None) or str(exc) or type(exc).__name__).strip()
    text = " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
    if secret:
        text = text.replace(secret, "********")
    return text


PASSFILE_PREFIX = "opskit-pgpass-"
_UNFIT = {"\n": "a line break", "\r": "a carriage return", "\0": "a NUL character"}


def _passfile_escape(name, value):
    """A passfile field; a value the format cannot hold (one line per entry) is a ConfigError
    that names the option, never the value."""
    value = str(value)
    for char, what in _UNFIT.items():
        if char in value:
            raise ConfigError("%s contains %s, which the libpq password file cannot hold (one entry per"
                              " line): choose a %s without it" % (name, what, name))
    return value.replace("\\", "\\\\").replace(":", "\\:")


def passfile_line(conn):
    """``*:*:*:user:password`` with libpq's escapes, or ConfigError."""
    return "*:*:*:%s:%s\n" % (_passfile_escape("user", conn["user"]), _passfile_escape("password", conn["password"]))


def libpq_vars(params, with_password=False):
    """The PG* variables for the connection options (the password only when asked)."""
    conn = conn_params(params)
    out = {var: str(conn[name]) for name, var in _LIBPQ_ENV.items() if conn.get(name) not in (None, "")}
    out["PGAPPNAME"] = "opskit.runbook"
    if with_password and conn.get("password"):
        out["PGPASSWORD"] = str(conn["password"])
    return out


@contextlib.contextmanager
def libpq_env(params, base_env=None):
    """Environment for pg_dump / pg_restore / psql: PG* variables and a 0600 passfile.

    The passfile lives only for the duration of the ``with`` block.
    """
    env = dict(os.environ if base_env is None else base_env)
    env.pop("PGPASSWORD", None)
    conn = conn_params(params)
    env.update(libpq_vars(params))
    path = None
    line = passfile_line(conn) if conn.get("password") else None  # refused before any file exists
    try:
        if line:
            # 0600 from the start; the pid tells a later run whether its owner still lives
            fd, path = tempfile.mkstemp(prefix="%s%d-" % (PASSFILE_PREFIX, os.getpid()))
            with os.fdopen(fd, "w") as fh:
                fh.write(line)
            env["PGPASSFILE"] = path
        yield env
    finally:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
