# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup's options: the checks of their combinations, series names, finding a backup.

Plain data in, plain data out (``find_backup`` reads the catalog); ``dump``, ``restore`` and
``verify`` (one module each) start here.
"""

from __future__ import annotations

import socket

from .._engine.catalog import resolve_backup, sanitize_series, validate_series
from .._errors import ConfigError
from .._timeutil import MAX_TIMEOUT, int_option, seconds_option

KIND = "postgres"
FORMATS = {"custom": "dump", "plain": "sql", "directory": "tar"}
DEFAULT_SERIES = "{host}-{database}"
MAX_JOBS = 64  # each job is a connection and a worker process; more is a typo on any real host


def local_host_name():
    """The managed host's name, for the series of a server reached over its local socket."""
    return socket.gethostname() or "local"


def series_for(template, host, database, container=None):
    """The series of ``database``: ``template`` with {host} and {database} filled in."""
    if host in (None, "") or str(host).startswith("/"):
        host = container or local_host_name()
    try:
        text = (template or DEFAULT_SERIES).format(host=host, database=database)
    except (KeyError, IndexError, ValueError) as exc:
        raise ConfigError("series %r: only {host} and {database} can be substituted (%s)"
                          % (template, exc)) from exc
    if template and "{" not in template:
        return validate_series(template)
    return sanitize_series(text)


def check_options(state, params):
    """One-line ConfigErrors for combinations that cannot work."""
    databases = params.get("database") or []
    fmt, jobs = params.get("format") or "custom", params.get("jobs")
    jobs = 1 if jobs is None else int_option(jobs, "jobs", 1, MAX_JOBS)
    if params.get("connect_timeout") is not None:
        seconds_option(params["connect_timeout"], "connect_timeout", 0, MAX_TIMEOUT)
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
