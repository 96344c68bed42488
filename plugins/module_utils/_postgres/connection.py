# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""PostgreSQL connection options: the shared spec, libpq environments and psycopg2 connections.

Passwords reach the client tools through a 0600 passfile (PGPASSFILE), never argv.
"""

from __future__ import annotations

import contextlib
import os
import tempfile

from .._errors import MissingLibraryError, ServiceError

try:
    import psycopg2
    HAS_PSYCOPG2 = True
    PSYCOPG2_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    HAS_PSYCOPG2 = False
    PSYCOPG2_IMPORT_ERROR = _exc

try:
    from ansible.module_utils.basic import env_fallback
except ImportError:  # pragma: no cover
    env_fallback = None


def _fallback(*names):
    return (env_fallback, list(names)) if env_fallback else None


PG_ARGSPEC = dict(
    host=dict(type="str", aliases=["login_host"], fallback=_fallback("PGHOST")),
    port=dict(type="int", fallback=_fallback("PGPORT")),
    user=dict(type="str", aliases=["login_user"], fallback=_fallback("PGUSER")),
    password=dict(type="str", no_log=True, aliases=["login_password"], fallback=_fallback("PGPASSWORD")),
    sslmode=dict(type="str", choices=["disable", "allow", "prefer", "require", "verify-ca", "verify-full"],
                 fallback=_fallback("PGSSLMODE")),
    sslrootcert=dict(type="path", fallback=_fallback("PGSSLROOTCERT")),
    sslcert=dict(type="path", fallback=_fallback("PGSSLCERT")),
    sslkey=dict(type="path", no_log=False, fallback=_fallback("PGSSLKEY")),
    connect_timeout=dict(type="int", default=10, fallback=_fallback("PGCONNECT_TIMEOUT")),
)
PG_OPTION_NAMES = tuple(PG_ARGSPEC)
_LIBPQ_ENV = dict(host="PGHOST", port="PGPORT", user="PGUSER", sslmode="PGSSLMODE",
                  sslrootcert="PGSSLROOTCERT", sslcert="PGSSLCERT", sslkey="PGSSLKEY",
                  connect_timeout="PGCONNECT_TIMEOUT")


def pg_argspec(**extra):
    import copy
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
    if not HAS_PSYCOPG2:
        raise MissingLibraryError("psycopg2", PSYCOPG2_IMPORT_ERROR)
    conn = conn_params(params)
    where = "%s@%s:%s/%s" % (conn["user"], conn.get("host") or "local socket", conn.get("port") or 5432, dbname)
    try:
        return psycopg2.connect(**connect_kwargs(params, dbname))
    except psycopg2.Error as exc:
        raise ServiceError("cannot connect to PostgreSQL %s: %s" % (where, pg_message(exc, conn.get("password")))) from None


def pg_message(exc, secret=None):
    """First line of a psycopg2 / libpq error with any secret removed."""
    text = (getattr(exc, "pgerror", None) or str(exc) or type(exc).__name__).strip()
    text = " ".join(text.splitlines()[0].split()) if text else type(exc).__name__
    if secret:
        text = text.replace(secret, "********")
    return text


def _passfile_escape(value):
    return str(value).replace("\\", "\\\\").replace(":", "\\:")


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
    try:
        if conn.get("password"):
            fd, path = tempfile.mkstemp(prefix="opskit-pgpass-")
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write("*:*:*:%s:%s\n" % (_passfile_escape(conn["user"]), _passfile_escape(conn["password"])))
            env["PGPASSFILE"] = path
        yield env
    finally:
        if path:
            with contextlib.suppress(OSError):
                os.unlink(path)
