# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # PostgreSQL connection options, shared by pg_backup and the postgres checks of health_check.
    DOCUMENTATION = r"""
options:
  host:
    description:
      - Host name, IP address or Unix socket directory of the server.
      - Falls back to E(PGHOST); default is the libpq default (the local Unix socket).
    type: str
    aliases: [login_host]
  port:
    description:
      - Server port. Falls back to E(PGPORT); default V(5432).
    type: int
  user:
    description:
      - Role to connect as. Falls back to E(PGUSER); default V(postgres).
    type: str
    aliases: [login_user]
  password:
    description:
      - Password of O(user). Falls back to E(PGPASSWORD).
      - Handed to pg_dump, pg_restore and psql through a 0600 passfile that is removed afterwards
        (or, when the tools run in a container, through the exec environment), never on a command
        line; never logged. The passfile is named C(opskit-pgpass-<pid>-*) in the system temporary
        directory, so a later run removes it when a killed run left it.
      - For the client tools, a O(password) or O(user) with a line break, a carriage return or a
        NUL character is refused with a one-line error before anything runs, as the passfile holds
        one entry per line and could not carry it.
    type: str
    aliases: [login_password]
  sslmode:
    description:
      - libpq C(sslmode). Falls back to E(PGSSLMODE); default V(prefer).
    type: str
    choices: [disable, allow, prefer, require, verify-ca, verify-full]
  sslrootcert:
    description:
      - CA certificate file to verify the server with. Falls back to E(PGSSLROOTCERT).
    type: path
  sslcert:
    description:
      - Client certificate file. Falls back to E(PGSSLCERT).
    type: path
  sslkey:
    description:
      - Client key file. Falls back to E(PGSSLKEY).
    type: path
  connect_timeout:
    description:
      - Seconds to wait for a connection. Falls back to E(PGCONNECT_TIMEOUT).
    type: int
    default: 10
requirements:
  - psycopg2 (psycopg2-binary) where the module runs
"""
