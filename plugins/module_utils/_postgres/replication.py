# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""BASE_BACKUP over a psycopg2 replication connection: every tablespace of a cluster, streamed.

``pg_basebackup -D - -Ft`` writes one tar to stdout, so a cluster with additional tablespaces
cannot be streamed through it. PostgreSQL 15's replication protocol sends all the archives in
one COPY stream (its "new-style" format, one CopyData message per ``write``)::

    b"n" archive name NUL tablespace path NUL    a new archive (each tablespace, then base.tar, path empty)
    b"d" bytes                                   data of the current archive (or of the manifest)
    b"p" int8                                    progress
    b"m"                                         the backup manifest follows (as b"d" messages)

``ArchiveSplitter`` turns that into one writer per archive (``open_archive(name, path)``) and
keeps the manifest, whose WAL-Ranges give the stop LSN and timeline. The password reaches libpq
as a keyword argument in this process, never a command line.
"""

from __future__ import annotations

import importlib
import json
import re

from .._errors import ConfigError, IntegrityError, ServiceError
from .connection import PSYCOPG2, conn_params, connect_kwargs, pg_message

MANIFEST_LIMIT = 256 * 1024 * 1024
ARCHIVE_RE = re.compile(r"^(base|\d+)\.tar(\.(?:zst|gz|lz4))?$")


def base_backup_command(label, compression=None, level=None, workers=None, checkpoint="fast"):
    """The BASE_BACKUP command (PostgreSQL 15 syntax); ``compression`` zstd or gzip runs on the server."""
    parts = ["LABEL '%s'" % label.replace("'", "''"), "CHECKPOINT '%s'" % checkpoint, "WAIT false",
             "MANIFEST 'yes'", "TABLESPACE_MAP true"]
    if compression:
        detail = "level=%d" % level if level is not None else ""
        if compression == "zstd" and workers:
            detail += (",workers=%d" if detail else "workers=%d") % workers
        parts.append("COMPRESSION '%s'" % compression)
        if detail:
            parts.append("COMPRESSION_DETAIL '%s'" % detail)
    return "BASE_BACKUP (%s)" % ", ".join(parts)


def archive_oid(name):
    """None for base.tar[.ext], the tablespace oid for <oid>.tar[.ext]; IntegrityError otherwise."""
    match = ARCHIVE_RE.match(name)
    if not match:
        raise IntegrityError("BASE_BACKUP sent an archive named %r: not base.tar or <oid>.tar" % name)
    return None if match.group(1) == "base" else int(match.group(1))


class ArchiveSplitter:
    """The ``file`` of copy_expert: one CopyData message per write(), dispatched by its type byte.

    ``open_archive(name, path)`` returns a writer (write(), close()) for each archive; each is
    closed when the next one (or the manifest) starts, the last one by ``finish``. ``archives`` lists
    (name, path) in the order the server sent them; ``progress`` is the last progress report."""

    def __init__(self, open_archive):
        self.open_archive = open_archive
        self.current = None
        self.archives = []
        self.manifest = None
        self.progress = 0
        self.messages = {}

    def write(self, data):
        data = bytes(data)
        kind = data[:1]
        self.messages[kind] = self.messages.get(kind, 0) + 1
        if kind == b"d":
            if self.manifest is not None:
                if len(self.manifest) + len(data) - 1 > MANIFEST_LIMIT:
                    raise IntegrityError("the backup manifest of BASE_BACKUP is larger than %d bytes" % MANIFEST_LIMIT)
                self.manifest += data[1:]
            elif self.current is None:
                raise IntegrityError("BASE_BACKUP sent data before any archive started")
            else:
                self.current.write(data[1:])
        elif kind == b"n":
            fields = data[1:].split(b"\0")
            if len(fields) < 3:
                raise IntegrityError("BASE_BACKUP sent a malformed new-archive message")
            name, path = fields[0].decode("utf-8"), fields[1].decode("utf-8", "surrogateescape")
            archive_oid(name)
            self._close_current()
            self.current = self.open_archive(name, path)
            self.archives.append((name, path))
        elif kind == b"p":
            self.progress = int.from_bytes(data[1:9], "big", signed=True)
        elif kind == b"m":
            self._close_current()
            self.manifest = b""
        else:
            raise IntegrityError("BASE_BACKUP sent a message of unknown type %r: not PostgreSQL 15's format" % kind)
        return len(data)

    def _close_current(self):
        if self.current is not None:
            writer, self.current = self.current, None
            writer.close()

    def finish(self):
        self._close_current()
        if not self.archives or archive_oid(self.archives[-1][0]) is not None:
            raise IntegrityError("BASE_BACKUP ended without its base archive")


def manifest_wal_range(data):
    """{start_lsn, stop_lsn, timeline, stop_timeline} from the backup manifest's WAL-Ranges."""
    try:
        ranges = json.loads(data.decode("utf-8"))["WAL-Ranges"]
        first, last = ranges[0], ranges[-1]
        return {"start_lsn": first["Start-LSN"], "timeline": int(first["Timeline"]),
                "stop_lsn": last["End-LSN"], "stop_timeline": int(last["Timeline"])}
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, UnicodeDecodeError) as exc:
        raise IntegrityError("the backup manifest of BASE_BACKUP cannot be read: %s" % exc) from exc


def stream_base_backup(params, command, sink):
    """Run ``command`` on a physical replication connection, every CopyData message into ``sink``."""
    psycopg2 = PSYCOPG2.load()
    extras = importlib.import_module("psycopg2.extras")
    conn = conn_params(params)
    where = "%s@%s:%s" % (conn["user"], conn.get("host") or "local socket", conn.get("port") or 5432)
    kwargs = connect_kwargs(params)
    kwargs.pop("dbname", None)
    try:
        connection = psycopg2.connect(connection_factory=extras.PhysicalReplicationConnection, **kwargs)
    except psycopg2.Error as exc:
        raise ServiceError("cannot open a replication connection to %s: %s"
                           % (where, pg_message(exc, conn.get("password")))) from None
    try:
        cursor = connection.cursor()
        try:
            cursor.copy_expert(command, sink, size=1 << 20)
        except psycopg2.Error as exc:
            raise ServiceError("BASE_BACKUP on %s failed: %s" % (where, pg_message(exc, conn.get("password")))) from None
    finally:
        connection.close()


def check_mapping(mapping, tablespaces):
    """{oid: directory} from ``tablespace_mapping`` (keys: oid, name or original location); ConfigError
    for a key that names no tablespace of the backup or a directory that is not absolute."""
    out = {}
    for key, directory in (mapping or {}).items():
        text = str(key)
        found = [t for t in tablespaces if text in (str(t["oid"]), t.get("name"), t.get("location"))]
        if not found:
            raise ConfigError("tablespace_mapping key %r names no tablespace of the backup (oids, names or locations:"
                              " %s)" % (text, ", ".join("%s %s %s" % (t["oid"], t.get("name"), t.get("location"))
                                                        for t in tablespaces) or "none"))
        if not isinstance(directory, str) or not directory.startswith("/"):
            raise ConfigError("tablespace_mapping %r: the directory must be an absolute path (got %r)" % (text, directory))
        out[found[0]["oid"]] = directory.rstrip("/") or "/"
    return out
