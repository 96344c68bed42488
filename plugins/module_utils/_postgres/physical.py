# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup method=physical, state=dumped: a base backup streamed through the engine.

``pg_basebackup -D - -Ft -X none`` writes the cluster as one tar to stdout (PostgreSQL 15
allows stdout only for a cluster without additional tablespaces and without WAL streaming: the
WAL comes from the archive, see ``wal``). The tar goes straight into the engine (compression,
sha256, manifest); ``TarTap`` watches it pass and keeps ``backup_label`` and the
``backup_manifest`` that pg_basebackup appends, from which the start and stop LSN and the
timeline are recorded in the manifest.
"""

from __future__ import annotations

import json
import re
import time

from .._engine.catalog import summarize
from .._engine.session import BackupSession
from .._errors import ConfigError, IntegrityError, ServiceError
from .._timeutil import rfc3339, utcnow
from .options import series_for
from .wal import DEFAULT_SEGMENT_SIZE, format_lsn, lsn_segment, parse_lsn, segment_name

KIND = "postgres-physical"
DEFAULT_PHYSICAL_SERIES = "{host}-physical"
CAPTURE = ("backup_label", "backup_manifest")
CAPTURE_LIMIT = 64 * 1024 * 1024
PREFLIGHT_SQL = ("SELECT (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),"
                 " current_setting('server_version'), current_setting('wal_level'),"
                 " current_setting('archive_mode'), current_setting('wal_segment_size'),"
                 " (SELECT system_identifier FROM pg_control_system()),"
                 " (SELECT string_agg(spcname, ',') FROM pg_tablespace"
                 "  WHERE spcname NOT IN ('pg_default', 'pg_global')), current_user,"
                 " (SELECT coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false)"
                 "  || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver)")


class TarTap:
    """A file-like reader that passes a tar stream through and keeps chosen members' content.

    It follows the 512-byte headers (ustar, octal or base-256 sizes) without buffering more than
    a header; the members named in CAPTURE are kept (up to CAPTURE_LIMIT bytes)."""

    def __init__(self, stream):
        self.stream = stream
        self.header = b""
        self.remaining = 0  # content + padding bytes of the current member still to pass
        self.content = 0  # of which content
        self.current = None
        self.members = {}

    def read(self, size=-1):
        data = self.stream.read(size)
        if data:
            self._feed(memoryview(data))
        return data

    def _feed(self, view):
        while view:
            if self.remaining:
                take = min(self.remaining, len(view))
                if self.current is not None and self.content > 0:
                    part = bytes(view[:min(take, self.content)])
                    self.members[self.current] += part
                self.content -= take
                self.remaining -= take
                view = view[take:]
                continue
            need = 512 - len(self.header)
            self.header += bytes(view[:need])
            view = view[need:]
            if len(self.header) == 512:
                self._start_member(self.header)
                self.header = b""

    def _start_member(self, block):
        if block == b"\0" * 512:
            self.current, self.remaining, self.content = None, 0, 0
            return
        name = block[:100].split(b"\0", 1)[0].decode("utf-8", "replace")
        size = tar_size(block[124:136])
        self.content, self.remaining = size, size + (-size % 512)
        self.current = name if name in CAPTURE and size <= CAPTURE_LIMIT and block[156:157] in (b"0", b"\0") else None
        if self.current is not None:
            self.members[name] = b""


def tar_size(field):
    """The size field of a tar header: octal text, or base-256 (first byte 0x80) for large files."""
    if field[:1] == b"\x80":
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    return int(text, 8) if text else 0


def parse_label(text):
    """backup_label's fields: start LSN, start segment, timeline, start time, label."""
    fields = {}
    for line in text.splitlines():
        key, _sep, value = line.partition(": ")
        fields[key.strip()] = value.strip()
    match = re.match(r"([0-9A-F]+/[0-9A-F]+) \(file ([0-9A-F]{24})\)", fields.get("START WAL LOCATION", ""))
    if not match:
        raise IntegrityError("backup_label has no START WAL LOCATION: %r" % text[:200])
    return {"start_lsn": match.group(1), "start_wal": match.group(2),
            "timeline": int(fields.get("START TIMELINE") or int(match.group(2)[:8], 16)),
            "start_time": fields.get("START TIME"), "label": fields.get("LABEL")}


def parse_backup_manifest(data):
    """Stop LSN and timeline from pg_basebackup's backup_manifest (its WAL-Ranges)."""
    try:
        ranges = json.loads(data.decode("utf-8"))["WAL-Ranges"]
        last = ranges[-1]
        return {"stop_lsn": last["End-LSN"], "stop_timeline": int(last["Timeline"])}
    except (ValueError, KeyError, IndexError, TypeError, UnicodeDecodeError) as exc:
        raise IntegrityError("the backup_manifest of pg_basebackup cannot be read: %s" % exc) from exc


def basebackup_argv(tools, label, checkpoint="fast"):
    return [tools.path("pg_basebackup"), "--no-password", "--pgdata=-", "--format=tar", "--wal-method=none",
            "--checkpoint=%s" % checkpoint, "--label=%s" % label]


def preflight(server):
    """Facts of the cluster, or a one-line ConfigError for what a base backup cannot work with."""
    row = server.query(PREFLIGHT_SQL)[0]
    if row[0] != "t":
        raise ConfigError("user %s has no REPLICATION permission on %s: grant it (ALTER ROLE %s REPLICATION)"
                          " for method=physical" % (row[7], server.label, row[7]))
    if row[6]:
        raise ConfigError("cluster %s has additional tablespaces (%s): method=physical supports clusters with"
                          " the default tablespaces only (pg_basebackup streams one tar to stdout only"
                          " then)" % (server.label, row[6]))
    failing, _sep, failed_wal = row[8].partition(" ")
    if row[3] != "off" and failing == "true":
        raise ConfigError("archiving is failing on %s (last failed WAL %s, after the last success): fix"
                          " archive_command first, pg_basebackup -X none would wait for it forever"
                          % (server.label, failed_wal or "?"))
    if row[2] == "minimal":
        raise ConfigError("wal_level is minimal on %s: set it to replica for method=physical" % server.label)
    return {"server_version": row[1], "wal_level": row[2], "archive_mode": row[3],
            "wal_segment_size": int(row[4]) if row[4].isdigit() else _size(row[4]), "system_identifier": row[5]}


def _size(text):
    match = re.fullmatch(r"(\d+)\s*([kMG]B)", text.strip())
    if not match:
        return DEFAULT_SEGMENT_SIZE
    return int(match.group(1)) * {"kB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}[match.group(2)]


def physical_series(params, server):
    return series_for(params.get("series") or DEFAULT_PHYSICAL_SERIES, server.conn.get("host"), "cluster",
                      params.get("docker_container"))


def physical_dump(server, location, params, check_mode=False):
    """One base backup of the cluster; returns the module result."""
    facts = preflight(server)
    series = physical_series(params, server)
    location.check_writable()
    plan = {"series": series, "method": "physical", "format": "tar", "server_version": facts["server_version"]}
    warnings = []
    if facts["archive_mode"] == "off":
        warnings.append("archive_mode is off on %s: the base backup cannot be restored without the WAL from its"
                        " start to its stop (set up archiving with opskit-wal first)" % server.label)
    if check_mode:
        return {"changed": True, "backups": [], "plan": [plan], "location": location.url, "warnings": warnings,
                "msg": "would write a base backup of %s to %s" % (server.label, location.url)}
    record = _basebackup(server, location, params, series, facts)
    result = {"changed": True, "backups": [record], "backup": record, "plan": [plan], "location": location.url,
              "msg": "wrote base backup %s of %s (%s to %s) to %s" % (
                  record["id"], server.label, record["start_lsn"], record["stop_lsn"], location.url)}
    if warnings:
        result["warnings"] = warnings
    return result


def _basebackup(server, location, params, series, facts):
    started = time.monotonic()
    tool = server.tool_version("pg_basebackup")
    with BackupSession(location, series, KIND, compression=params["compression"],
                       level=params.get("compression_level"), threads=params["compression_threads"]) as session:
        with session.artifact("tar") as out, server.tools.reader(
                basebackup_argv(server.tools, "opskit %s" % session.id)) as pipe:
            tap = TarTap(pipe)
            out.copy_from(tap)
        stopped = utcnow()
        source = _source(server, facts, tap, stopped)
        manifest = session.publish(source=source, tools={"pg_basebackup": tool})
    record = summarize(manifest, location)
    record.update({k: source[k] for k in ("start_lsn", "stop_lsn", "timeline", "start_wal", "stop_wal",
                                          "stop_time")})
    record.update(duration_seconds=round(time.monotonic() - started, 3), method="physical",
                  server_version=facts["server_version"], pg_basebackup_version=tool)
    return record


def _source(server, facts, tap, stopped):
    if "backup_label" not in tap.members:
        raise ServiceError("pg_basebackup's output on %s has no backup_label: not a base backup" % server.label)
    label = tap.members["backup_label"].decode("utf-8", "replace")
    fields = parse_label(label)
    if "backup_manifest" in tap.members:
        fields.update(parse_backup_manifest(tap.members["backup_manifest"]))
    else:
        raise ServiceError("pg_basebackup's output on %s has no backup_manifest: the stop LSN is unknown"
                           % server.label)
    seg_size = facts["wal_segment_size"]
    stop_lsn = parse_lsn(fields["stop_lsn"])
    fields.update(method="physical", host=server.conn.get("host"), port=server.conn.get("port"),
                  backup_label=label, stop_time=rfc3339(stopped),
                  stop_wal=segment_name(fields["stop_timeline"], lsn_segment(max(stop_lsn - 1, 0), seg_size), seg_size),
                  stop_lsn=format_lsn(stop_lsn), tablespaces=[], **facts)
    return fields
