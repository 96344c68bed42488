# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup method=physical, state=dumped: a base backup streamed through the engine.

``pg_basebackup -D - -Ft`` writes the cluster as one tar to stdout (PostgreSQL 15 allows stdout
only for a cluster without additional tablespaces and without WAL streaming). Two ways:

- server-side compression (zstd or gzip, PostgreSQL 15 on both ends, the default):
  ``--compress=server-zstd:level=L,workers=N -X fetch --no-manifest --verbose``. The walsender
  compresses (in N threads) while it reads the files, so neither pg_basebackup nor the module
  touches the 1.5 GiB of a scale-100 cluster, only its compressed 67 MiB; the engine stores the
  bytes as they come (sha256 over them, no second compression). pg_basebackup cannot inject its
  backup_manifest into a server-compressed tar on stdout ("use client-side compression, send the
  output to a directory rather than standard output, or use --no-manifest"), so the start LSN and
  timeline come from ``backup_label`` (the tar's first member: ``HeadTap`` decompresses only the
  stream's head to read it) and the stop LSN from pg_basebackup's ``--verbose`` lines. ``-X fetch``
  puts the WAL from start to stop into the tar (the backup is consistent on its own) and makes the
  server return without its wait for the archiver, which polls once a second; the module then
  waits for the stop segment itself (pg_stat_archiver, every 0.05 s).
- client-side (compression none, ``server_compression: false`` or an older server):
  ``-X none``: the tar goes through the engine's compressor; ``TarTap`` watches it pass and keeps
  ``backup_label`` and the ``backup_manifest`` that pg_basebackup appends (the stop LSN).

A cluster with additional tablespaces (PostgreSQL 15) is backed up without pg_basebackup: BASE_BACKUP
over a psycopg2 replication connection (``replication``) streams every tablespace's tar, compressed by
the server as above (or by the engine, client-side). The base tar is the main artifact, each
tablespace's tar a companion ``tablespace-<oid>`` with its sha256; the source records each
tablespace's oid, name and location, the stop LSN comes from the backup manifest's WAL-Ranges.
"""

from __future__ import annotations

import json
import os
import re
import time

from .._engine.catalog import summarize
from .._engine.compression import PRECOMPRESSED, make_decompressor
from .._engine.session import BackupSession
from .._errors import ConfigError, IntegrityError, ServiceError
from .._timeutil import rfc3339, utcnow
from .options import series_for
from .replication import ArchiveSplitter, archive_oid, base_backup_command, manifest_wal_range, stream_base_backup
from .wal import DEFAULT_SEGMENT_SIZE, format_lsn, lsn_segment, parse_lsn, segment_name

KIND = "postgres-physical"
DEFAULT_PHYSICAL_SERIES = "{host}-physical"
CAPTURE = ("backup_label", "backup_manifest")
CAPTURE_LIMIT = 64 * 1024 * 1024
SERVER_COMPRESSION = {"zstd": ("server-zstd", 3), "gzip": ("server-gzip", 6)}
HEAD_LIMIT = 1024 * 1024  # decompressed bytes HeadTap reads at most to find backup_label
HEAD_PIECE = 16 * 1024
ARCHIVE_WAIT = 600  # seconds the module waits for the stop segment to be archived (server compression)
NUDGE_AFTER = 2.0   # seconds after which, without the archive status directory, the WAL is switched once
LSN_RE = re.compile(r"\b([0-9A-F]{1,8}/[0-9A-F]{1,8})\b")
TABLESPACES_SQL = ("SELECT oid, spcname, pg_tablespace_location(oid) FROM pg_tablespace"
                   " WHERE spcname NOT IN ('pg_default', 'pg_global') ORDER BY oid")
PREFLIGHT_SQL = ("SELECT (SELECT rolsuper OR rolreplication FROM pg_roles WHERE rolname = current_user),"
                 " current_setting('server_version'), current_setting('wal_level'),"
                 " current_setting('archive_mode'), current_setting('wal_segment_size'),"
                 " (SELECT system_identifier FROM pg_control_system()),"
                 " (SELECT string_agg(spcname, ',') FROM pg_tablespace"
                 "  WHERE spcname NOT IN ('pg_default', 'pg_global')), current_user,"
                 " (SELECT coalesce(last_failed_time > coalesce(last_archived_time, '-infinity'), false)"
                 "  || ' ' || coalesce(last_failed_wal, '') FROM pg_stat_archiver),"
                 " current_setting('archive_command') <> '' OR coalesce(current_setting('archive_library', true), '') <> ''")


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
            self.feed(memoryview(data))
        return data

    def complete(self, name):
        """Whether member ``name`` was kept whole (its content has passed)."""
        return name in self.members and (self.current != name or self.content <= 0)

    def feed(self, view):
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


class HeadTap:
    """A file-like reader that passes a compressed tar stream through unchanged and decompresses
    only its head, 16 KiB at a time, until ``backup_label`` (the first member the server sends)
    has passed, or HEAD_LIMIT bytes without it."""

    def __init__(self, stream, compression):
        self.stream = stream
        self.dec = make_decompressor(compression)
        self.tar = TarTap(None)
        self.members = self.tar.members
        self.scanned = 0
        self.done = False

    def complete(self, name):
        return self.tar.complete(name)

    def read(self, size=-1):
        data = self.stream.read(size)
        if data and not self.done:
            self._scan(memoryview(data))
        return data

    def feed(self, data):
        """Look at ``data`` passing by (push instead of read)."""
        if data and not self.done:
            self._scan(memoryview(data))

    def _scan(self, view):
        for start in range(0, len(view), HEAD_PIECE):
            plain = self.dec.decompress(view[start:start + HEAD_PIECE])
            self.scanned += len(plain)
            self.tar.feed(memoryview(plain))
            if self.tar.complete("backup_label") or self.scanned > HEAD_LIMIT:
                self.done = True
                return


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


def parse_verbose_stop(text, start_lsn):
    """The stop LSN from pg_basebackup --verbose (with WAL: "write-ahead log start point: A on
    timeline T", later "write-ahead log end point: B"): the last LSN of the text, the first being the
    start (the words may be translated, the LSNs are not)."""
    found = LSN_RE.findall(text)
    if len(found) < 2 or parse_lsn(found[0]) != parse_lsn(start_lsn) or parse_lsn(found[-1]) < parse_lsn(start_lsn):
        raise IntegrityError("pg_basebackup --verbose did not report the start (%s) and end of the WAL: %r"
                             % (start_lsn, text[-300:]))
    return found[-1]


def major(version):
    match = re.match(r"\s*(\d+)", str(version or ""))
    return int(match.group(1)) if match else 0


def server_compression(params, facts, tool):
    """``--compress=`` for server-side compression, or None (client-side: compression none,
    server_compression false, or a server or pg_basebackup older than 15)."""
    name = params.get("compression")
    if name not in SERVER_COMPRESSION or not params.get("server_compression", True):
        return None
    if major(facts["server_version"]) < 15 or major(tool) < 15:
        return None
    method, default = SERVER_COMPRESSION[name]
    level = params.get("compression_level")
    spec = "%s:level=%d" % (method, default if level is None else level)
    threads = params.get("compression_threads", -1)
    if name == "zstd" and threads:
        spec += ",workers=%d" % (threads if threads > 0 else os.cpu_count() or 1)
    return spec


def basebackup_argv(tools, label, checkpoint="fast", compress=None):
    argv = [tools.path("pg_basebackup"), "--no-password", "--pgdata=-", "--format=tar",
            "--checkpoint=%s" % checkpoint, "--label=%s" % label]
    if compress:
        return argv + ["--compress=%s" % compress, "--wal-method=fetch", "--no-manifest", "--verbose"]
    return argv + ["--wal-method=none"]


def preflight(server):
    """Facts of the cluster, or a one-line ConfigError for what a base backup cannot work with."""
    row = server.query(PREFLIGHT_SQL)[0]
    if row[0] != "t":
        raise ConfigError("user %s has no REPLICATION permission on %s: grant it (ALTER ROLE %s REPLICATION)"
                          " for method=physical" % (row[7], server.label, row[7]))
    failing, _sep, failed_wal = row[8].partition(" ")
    if row[3] != "off" and failing == "true":
        raise ConfigError("archiving is failing on %s (last failed WAL %s, after the last success): fix"
                          " archive_command first, pg_basebackup -X none would wait for it forever"
                          % (server.label, failed_wal or "?"))
    if row[2] == "minimal":
        raise ConfigError("wal_level is minimal on %s: set it to replica for method=physical" % server.label)
    return {"server_version": row[1], "wal_level": row[2], "archive_mode": row[3], "archiver": row[9] == "t",
            "wal_segment_size": int(row[4]) if row[4].isdigit() else _size(row[4]), "system_identifier": row[5],
            "tablespace_names": row[6] or None}


def tablespace_plan(server, params, facts):
    """[{oid, name, location}] of the additional tablespaces, or ConfigError where BASE_BACKUP over a
    replication connection cannot take them (a server older than 15, or one reached only in a container)."""
    if not facts.get("tablespace_names"):
        return []
    if major(facts["server_version"]) < 15 or params.get("docker_container"):
        hint = (" (set host and port of the published port instead of docker_container)" if params.get("docker_container")
                else " (the server is %s)" % facts["server_version"])
        raise ConfigError("cluster %s has additional tablespaces (%s): method=physical backs them up through a"
                          " replication connection from the managed host to PostgreSQL 15 or later%s"
                          % (server.label, facts["tablespace_names"], hint))
    return [{"oid": int(row[0]), "name": row[1], "location": row[2]} for row in server.query(TABLESPACES_SQL)]


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
    spaces = tablespace_plan(server, params, facts)
    series = physical_series(params, server)
    location.check_writable()
    plan = {"series": series, "method": "physical", "format": "tar", "server_version": facts["server_version"],
            "tablespaces": spaces}
    warnings = []
    if facts["archive_mode"] == "off":
        warnings.append("archive_mode is off on %s: the base backup cannot be restored without the WAL from its"
                        " start to its stop (set up archiving with opskit-wal first)" % server.label)
    if check_mode:
        return {"changed": True, "backups": [], "plan": [plan], "location": location.url, "warnings": warnings,
                "msg": "would write a base backup of %s to %s" % (server.label, location.url)}
    if spaces:
        record, more = _replication_backup(server, location, params, series, (facts, spaces))
    else:
        record, more = _basebackup(server, location, params, series, facts)
    warnings.extend(more)
    result = {"changed": True, "backups": [record], "backup": record, "plan": [plan], "location": location.url,
              "msg": "wrote base backup %s of %s (%s to %s) to %s" % (
                  record["id"], server.label, record["start_lsn"], record["stop_lsn"], location.url)}
    if warnings:
        result["warnings"] = warnings
    return result


def _basebackup(server, location, params, series, facts):
    started = time.monotonic()
    tool = server.tool_version("pg_basebackup")
    compress = server_compression(params, facts, tool)
    stderr, warnings = [], []
    with BackupSession(location, series, KIND, compression=params["compression"],
                       level=params.get("compression_level"),
                       threads=PRECOMPRESSED if compress else params["compression_threads"]) as session:
        with session.artifact("tar") as out, server.tools.reader(
                basebackup_argv(server.tools, "opskit %s" % session.id, compress=compress), stderr) as pipe:
            tap = HeadTap(pipe, params["compression"]) if compress else TarTap(pipe)
            out.copy_from(tap)
        if compress:
            out.record["raw_bytes"] = None  # the server compressed: the tar's own size is not seen
        stopped = utcnow()
        source = _source(server, facts, tap, stopped, compress and b"".join(stderr).decode("utf-8", "replace"))
        warnings.extend(_await_stop(server, facts, source["stop_wal"], session.id) if compress else [])
        manifest = session.publish(source=source, tools={"pg_basebackup": tool})
    record = summarize(manifest, location)
    record.update({k: source[k] for k in ("start_lsn", "stop_lsn", "timeline", "start_wal", "stop_wal",
                                          "stop_time", "tablespaces")})
    record.update(duration_seconds=round(time.monotonic() - started, 3), method="physical",
                  server_version=facts["server_version"], pg_basebackup_version=tool,
                  server_compression=compress)
    return record, warnings


def _await_stop(server, facts, stop_wal, backup_id):
    """pg_basebackup -X fetch does not wait for the archiver: wait for the stop segment here (what
    the server does with -X none), when an archiver is set up; the warnings."""
    if facts["archive_mode"] == "off":
        return []
    if not facts.get("archiver"):
        return ["archive_mode is on but neither archive_command nor archive_library is set on %s: base backup %s"
                " was not awaited in the archive (its WAL %s comes from pg_receivewal or nowhere)"
                % (server.label, backup_id, stop_wal)]
    if not wait_archived(server, stop_wal):
        return ["the stop segment %s of base backup %s was not archived within %d s: a restore needs it in the"
                " archive" % (stop_wal, backup_id, ARCHIVE_WAIT)]
    return []


def archived_query(stop_wal, status_dir=True):
    """The SQL that answers 't' once ``stop_wal`` is archived: pg_stat_archiver's last archived file,
    or (``status_dir``) the segment's ``.done`` in the archive status directory."""
    sql = "SELECT coalesce(last_archived_wal >= '%s', false)" % stop_wal
    if status_dir:
        sql += " OR EXISTS (SELECT 1 FROM pg_ls_archive_statusdir() WHERE name = '%s.done')" % stop_wal
    return sql + " FROM pg_stat_archiver"


def wait_archived(server, stop_wal, timeout=ARCHIVE_WAIT, interval=0.05, nudge_after=NUDGE_AFTER, slow_interval=0.5):
    """Poll until ``stop_wal`` (a checked segment name) is archived; False on timeout.

    pg_stat_archiver's last_archived_wal alone can lag: the archiver may push the stop segment before
    the backup's history file (``<start segment>.<offset>.backup``, written just after the segment is
    closed), and then names the history file, which sorts below the segment, until the next segment
    is archived (55, 55 and 300 s in 3 of 23 bench/pitr.py base backups on an idle server). So the
    segment's ``.done`` in the archive status directory counts too (pg_ls_archive_statusdir():
    superuser or pg_monitor). Without that right, after ``nudge_after`` seconds one pg_switch_wal()
    (superuser or EXECUTE) closes the current segment, whose archiving moves last_archived_wal past;
    with neither, the wait goes on. From ``nudge_after`` on, polls (each one a psql) come every
    ``slow_interval`` seconds: every 0.05 s they cost 132 CPU-s in a 300 s wait."""
    started = time.monotonic()
    status_dir, nudged = True, False
    while True:
        try:
            if server.query(archived_query(stop_wal, status_dir))[0][0] == "t":
                return True
        except ServiceError:
            if not status_dir:
                raise
            status_dir = False  # not allowed to read the archive status directory
            continue
        waited = time.monotonic() - started
        if waited > timeout:
            return False
        if not status_dir and not nudged and waited >= nudge_after:
            nudged = True
            switch_wal(server)
        time.sleep(interval if waited < nudge_after else max(interval, slow_interval))


def switch_wal(server):
    """One pg_switch_wal(); False for a user without the right to call it (nothing is changed)."""
    try:
        server.query("SELECT pg_switch_wal()")
    except ServiceError:
        return False
    return True


def _source(server, facts, tap, stopped, verbose=None, stop=None, tablespaces=()):
    if not tap.complete("backup_label"):
        raise ServiceError("pg_basebackup's output on %s has no backup_label: not a base backup" % server.label)
    label = tap.members["backup_label"].decode("utf-8", "replace")
    fields = parse_label(label)
    if stop:
        fields.update(stop_lsn=stop["stop_lsn"], stop_timeline=stop["stop_timeline"], wal_included=False)
    elif verbose:
        fields.update(stop_lsn=parse_verbose_stop(verbose, fields["start_lsn"]), stop_timeline=fields["timeline"],
                      wal_included=True)
    elif "backup_manifest" in tap.members:
        fields.update(parse_backup_manifest(tap.members["backup_manifest"]))
    else:
        raise ServiceError("pg_basebackup's output on %s has no backup_manifest: the stop LSN is unknown"
                           % server.label)
    seg_size = facts["wal_segment_size"]
    stop_lsn = parse_lsn(fields["stop_lsn"])
    fields.update(method="physical", host=server.conn.get("host"), port=server.conn.get("port"),
                  backup_label=label, stop_time=rfc3339(stopped),
                  stop_wal=segment_name(fields["stop_timeline"], lsn_segment(max(stop_lsn - 1, 0), seg_size), seg_size),
                  stop_lsn=format_lsn(stop_lsn), tablespaces=list(tablespaces),
                  **{k: v for k, v in facts.items() if k != "tablespace_names"})
    return fields


def replication_compression(params, facts):
    """(method, level, workers) of server-side compression for BASE_BACKUP, or None (the engine compresses)."""
    name = params.get("compression")
    if name not in SERVER_COMPRESSION or not params.get("server_compression", True) or major(facts["server_version"]) < 15:
        return None
    level = params.get("compression_level")
    threads = params.get("compression_threads", -1)
    workers = (threads if threads > 0 else os.cpu_count() or 1) if name == "zstd" and threads else None
    return name, SERVER_COMPRESSION[name][1] if level is None else level, workers


class _Tapped:
    """The base archive's writer, with a tap that keeps backup_label as the bytes pass."""

    def __init__(self, out, tap):
        self.out, self.tap = out, tap

    def write(self, data):
        self.tap.feed(data)
        self.out.write(data)

    def close(self):
        self.out.close()


def _replication_backup(server, location, params, series, context):
    """A base backup through BASE_BACKUP: the base tar as main artifact, each tablespace a companion."""
    facts, spaces = context
    started = time.monotonic()
    compress = replication_compression(params, facts)
    by_oid = {space["oid"]: space for space in spaces}
    with BackupSession(location, series, KIND, compression=params["compression"],
                       level=params.get("compression_level"),
                       threads=PRECOMPRESSED if compress else params["compression_threads"]) as session:
        tap = HeadTap(None, params["compression"]) if compress else TarTap(None)
        writers = {}

        def open_archive(name, path):
            oid = archive_oid(name)
            if oid is None:
                writers[None] = session.artifact("tar")
                return _Tapped(writers[None], tap)
            by_oid.setdefault(oid, {"oid": oid, "name": None})["location"] = path  # created after the preflight: no name
            writers[oid] = session.artifact("tar", name="tablespace-%d" % oid)
            return writers[oid]

        splitter = ArchiveSplitter(open_archive)
        command = base_backup_command("opskit %s" % session.id, *(compress or (None, None, None)))
        stream_base_backup(params, command, splitter)
        splitter.finish()
        if splitter.manifest is None:
            raise ServiceError("BASE_BACKUP on %s sent no backup manifest: the stop LSN is unknown" % server.label)
        tablespaces = []
        for oid, out in sorted((k, v) for k, v in writers.items() if k is not None):
            if compress:
                out.record["raw_bytes"] = None
            tablespaces.append(dict(by_oid[oid], artifact="tablespace-%d" % oid, sha256=out.record["sha256"],
                                    size_bytes=out.record["size_bytes"]))
        if compress:
            writers[None].record["raw_bytes"] = None  # the server compressed: the tars' own sizes are not seen
        source = _source(server, facts, tap, utcnow(),
                         stop=manifest_wal_range(splitter.manifest), tablespaces=tablespaces)
        source["base_backup"] = "replication"
        warnings = _await_stop(server, facts, source["stop_wal"], session.id)
        manifest = session.publish(source=source, tools={})
    record = summarize(manifest, location)
    record.update({k: source[k] for k in ("start_lsn", "stop_lsn", "timeline", "start_wal", "stop_wal",
                                          "stop_time", "tablespaces")})
    spec = None
    if compress:
        spec = "server-%s:level=%d" % compress[:2] + (",workers=%d" % compress[2] if compress[2] else "")
    record.update(duration_seconds=round(time.monotonic() - started, 3), method="physical",
                  server_version=facts["server_version"], pg_basebackup_version=None, server_compression=spec)
    return record, warnings
