# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The database-level half of a staged restore: the staging database created like the target,
the target's own attributes carried over, the swap, and what happens to the database replaced.

pg_restore without ``--create`` restores nothing of the database object itself, so what the
old target had is copied from the catalog: its owner, the settings of ``ALTER DATABASE ... SET``
and ``ALTER ROLE ... IN DATABASE ... SET``, the privileges on the database (CONNECT, CREATE,
TEMPORARY), its connection limit and comment; the staging database is created with its
encoding, locale (and ICU locale) and tablespace. Security labels, ``ALLOW_CONNECTIONS`` and
``IS_TEMPLATE`` are not carried over.

``swap`` is one transaction: the target's sessions are terminated, then target -> retired and
staging -> target are renamed. The first RENAME holds the lock of the target's database
object: a client connecting meanwhile waits for the commit, then fails ("database has
disappeared") and reconnects, to the new database. Either both renames happen or none.
"""

from __future__ import annotations

import contextlib

from .._errors import OpsError, ServiceError
from .cleanup import PREVIOUS, RETIRED, parse_staged_comment, staged_comment, staged_name, STAGE
from .server import MAINTENANCE_DB, psql_argv
from .tools import quote_ident, quote_literal, tool_message

SWAP_ATTEMPTS = 3
BUSY = "is being accessed by other users"
LIST_QUOTE = ("search_path", "temp_tablespaces", "session_preload_libraries", "shared_preload_libraries",
              "local_preload_libraries", "unix_socket_directories")


def run_sql(server, *statements):
    """Each statement as its own ``--command`` of one psql (so CREATE DATABASE may be one)."""
    argv = psql_argv(server.tools, MAINTENANCE_DB, statements[0])
    argv += ["--command=%s" % sql for sql in statements[1:]]
    rc, _out, err = server.tools.run(argv)
    if rc != 0:
        detail = tool_message(err, server.conn.get("password")) or "exit %s" % rc
        raise ServiceError("query on %s/%s failed: %s" % (server.label, MAINTENANCE_DB, detail))


TARGET_SQL = ("SELECT d.oid, pg_get_userbyid(d.datdba), pg_encoding_to_char(d.encoding), d.datcollate, d.datctype,"
              " t.spcname, d.datconnlimit, d.datacl IS NULL, shobj_description(d.oid, 'pg_database') IS NULL,"
              " coalesce(shobj_description(d.oid, 'pg_database'), ''), %s"
              " FROM pg_database d JOIN pg_tablespace t ON t.oid = d.dattablespace WHERE d.datname = %s")
ACL_SQL = ("SELECT a.privilege_type, CASE WHEN a.grantee = 0 THEN '' ELSE pg_get_userbyid(a.grantee) END,"
           " a.is_grantable FROM pg_database d, aclexplode(d.datacl) a WHERE d.datname = %s")
SETTINGS_SQL = ("SELECT CASE WHEN s.setrole = 0 THEN '' ELSE pg_get_userbyid(s.setrole) END, c.setting"
                " FROM pg_db_role_setting s, unnest(s.setconfig) c(setting) WHERE s.setdatabase = %s")


def read_target(server, target):
    """What the target database has of its own (see the module docstring), or None when gone."""
    icu = "d.datlocprovider, coalesce(d.daticulocale, '')" if server.info()["server_major"] >= 15 else "'c', ''"
    rows = server.query(TARGET_SQL % (icu, quote_literal(target)))
    if not rows:
        return None
    row = rows[0]
    return {"oid": row[0], "owner": row[1], "encoding": row[2], "collate": row[3], "ctype": row[4],
            "tablespace": row[5], "connlimit": int(row[6]), "acl_default": row[7] == "t",
            "comment": None if row[8] == "t" else row[9], "provider": row[10], "icu_locale": row[11],
            "acl": server.query(ACL_SQL % quote_literal(target)),
            "settings": server.query(SETTINGS_SQL % row[0])}


def create_staging(server, stage, target, old):
    """CREATE DATABASE like ``old`` (the target, or None), and the comment naming its run."""
    sql = "CREATE DATABASE %s TEMPLATE template0" % quote_ident(stage)
    if old:
        sql += " ENCODING %s LC_COLLATE %s LC_CTYPE %s" % (
            quote_literal(old["encoding"]), quote_literal(old["collate"]), quote_literal(old["ctype"]))
        if old["provider"] == "i":
            sql += " LOCALE_PROVIDER icu ICU_LOCALE %s" % quote_literal(old["icu_locale"])
        if old["tablespace"] != "pg_default":
            sql += " TABLESPACE %s" % quote_ident(old["tablespace"])
    run_sql(server, sql, "COMMENT ON DATABASE %s IS %s" % (quote_ident(stage), quote_literal(staged_comment(STAGE, target))))


def split_guc_list(value):
    """A list setting as stored (``"$user", public``) -> its elements (``$user``, ``public``)."""
    items, current, quoted, index = [], [], False, 0
    while index < len(value):
        char = value[index]
        if char == '"':
            if quoted and value[index + 1:index + 2] == '"':
                current.append('"')
                index += 1
            else:
                quoted = not quoted
        elif char == "," and not quoted:
            items.append("".join(current).strip())
            current = []
        else:
            current.append(char)
        index += 1
    items.append("".join(current).strip())
    return [item for item in items if item]


def setting_sql(database, role, entry):
    """``ALTER DATABASE/ROLE ... SET`` for one ``name=value`` of pg_db_role_setting."""
    name, _sep, value = entry.partition("=")
    values = split_guc_list(value) if name.lower() in LIST_QUOTE else [value]
    target = ("ALTER ROLE %s IN DATABASE %s" % (quote_ident(role), quote_ident(database)) if role
              else "ALTER DATABASE %s" % quote_ident(database))
    return "%s SET %s TO %s" % (target, quote_ident(name), ", ".join(quote_literal(v) for v in values) or "''")


def carry_over_sql(stage, old):
    """The statements giving ``stage`` the settings, privileges and connection limit of ``old``."""
    out = [setting_sql(stage, role, entry) for role, entry in old["settings"]]
    if not old["acl_default"]:
        out.append("REVOKE ALL ON DATABASE %s FROM PUBLIC" % quote_ident(stage))
        for privilege, grantee, grantable in old["acl"]:
            out.append("GRANT %s ON DATABASE %s TO %s%s" % (
                privilege, quote_ident(stage), quote_ident(grantee) if grantee else "PUBLIC",
                " WITH GRANT OPTION" if grantable == "t" else ""))
    if old["connlimit"] != -1:
        out.append("ALTER DATABASE %s CONNECTION LIMIT %d" % (quote_ident(stage), old["connlimit"]))
    return out


def carry_over(server, stage, old):
    if old:
        statements = carry_over_sql(stage, old)
        if statements:
            run_sql(server, *statements)


def swap_sql(stage, target, old, retired, kind, backup_id):
    """The one transaction of the swap (see the module docstring)."""
    ident = quote_ident(target)
    out = ["BEGIN"]
    if old:
        out += ["SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s AND pid <> pg_backend_pid()"
                % quote_literal(target),
                "ALTER DATABASE %s RENAME TO %s" % (ident, quote_ident(retired))]
    out.append("ALTER DATABASE %s RENAME TO %s" % (quote_ident(stage), ident))
    if old:
        out += ["ALTER DATABASE %s OWNER TO %s" % (ident, quote_ident(old["owner"])),
                "COMMENT ON DATABASE %s IS %s" % (quote_ident(retired), quote_literal(staged_comment(
                    kind, target, replaced_by=backup_id, comment=old["comment"])))]
    comment = old and old["comment"]
    out += ["COMMENT ON DATABASE %s IS %s" % (ident, "NULL" if comment is None else quote_literal(comment)), "COMMIT"]
    return "; ".join(out)


def swap(server, stage, target, old, keep, backup_id):
    """Swap ``stage`` in under ``target``'s name; returns the retired database's name (None when
    there was no target). Retried while new sessions slip in between the terminate and the lock."""
    kind = PREVIOUS if keep else RETIRED
    retired = staged_name(kind, target) if old else None
    sql = swap_sql(stage, target, old, retired, kind, backup_id)
    for attempt in range(SWAP_ATTEMPTS):
        try:
            server.query(sql)
            return retired
        except ServiceError as exc:
            if BUSY not in exc.msg or attempt == SWAP_ATTEMPTS - 1:
                raise
    return retired  # not reached


def drop_quietly(server, name):
    with contextlib.suppress(OpsError):
        server.query("DROP DATABASE IF EXISTS %s WITH (FORCE)" % quote_ident(name))


PREVIOUS_SQL = ("SELECT datname, coalesce(shobj_description(oid, 'pg_database'), '') FROM pg_database"
                " WHERE datname ~ '^opskit_previous_' AND datname <> %s")


def retire(server, job, retired, keep):
    """Drop the database the swap replaced, or keep it (``keep_previous``) and drop the one an
    earlier keep_previous kept for this target. Failures are warnings: the restore is done, and
    the next run drops a retired database that is left."""
    job.plan["previous_database"] = retired if keep else None
    if retired is None:
        return []
    names = [retired] if not keep else [
        name for name, comment in server.query(PREVIOUS_SQL % quote_literal(retired))
        if parse_staged_comment(comment).get("target") == job.target]
    warnings = []
    for name in names:
        try:
            server.query("DROP DATABASE IF EXISTS %s%s" % (quote_ident(name), "" if keep else " WITH (FORCE)"))
        except ServiceError as exc:
            warnings.append("database %s (replaced by a staged restore of %s) could not be dropped: %s"
                            % (name, job.target, exc.msg))
    if keep:
        job.plan["dropped_previous"] = names
    return warnings
