# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The WAL archive of a physical series: segment names, the per-timeline index, push and fetch.

Layout at a location (beside the base backups of the series)::

    <series>/wal/<timeline>/<file>-<sha256 of the stored bytes>[.zst|.gz][.age]

``<file>`` is what PostgreSQL archives: a segment (``000000010000000000000003``), a timeline
history (``00000002.history``), a backup history file or a ``.partial`` segment. Each is one
immutable object, compressed (and encrypted) by the engine like any artifact; its sha256 is in
its key, so one listing of ``<series>/wal/<timeline>/`` is the index of that timeline (name,
sha256, stored size, archived time), with nothing to update and nothing to race.
Where the zstandard module is missing (the server's system python runs opskit-wal), zstd goes
through the ``zstd`` command, the same format either way; with neither, a push stores gzip.
``catalog.scan`` never sees these keys (they do not follow the backup layout), so a rotation
that does not know WAL never deletes it.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import re
import shutil
import subprocess
import tempfile

from .._engine.artifacts import ArtifactReader, ArtifactWriter
from .._engine.compression import COMPRESSION_EXT, PRECOMPRESSED, ZSTD
from .._engine.protection import AGE_SUFFIX, protection_for
from .._engine.streams import CHUNK, read_chunks
from .._errors import ConfigError, IntegrityError, NotFoundError

WAL_DIR = "wal"
DEFAULT_SEGMENT_SIZE = 16 * 1024 * 1024
FILE_RE = re.compile(r"^(?P<tli>[0-9A-F]{8})(?:[0-9A-F]{16}(?:\.partial|\.[0-9A-F]{8}\.backup)?|\.history)$")
SEGMENT_RE = re.compile(r"^[0-9A-F]{24}$")
KEY_RE = re.compile(r"^(?P<file>[0-9A-F.a-z]+?)-(?P<sha>[0-9a-f]{64})(?P<comp>\.zst|\.gz)?(?P<age>\.age)?$")
EXT_COMPRESSION = {".zst": "zstd", ".gz": "gzip", None: "none"}
ZSTD_PATHS = ("/usr/bin/zstd", "/usr/local/bin/zstd")
NO_ZSTD = "neither the zstandard module nor the zstd command is here"


# ------------------------------------------------------------------- names and LSNs

def parse_lsn(text):
    """'16/B374D848' -> int; ConfigError for anything else."""
    match = re.fullmatch(r"([0-9A-Fa-f]{1,8})/([0-9A-Fa-f]{1,8})", str(text or "").strip())
    if not match:
        raise ConfigError("%r is not an LSN (such as 0/3000028)" % (text,))
    return (int(match.group(1), 16) << 32) | int(match.group(2), 16)


def format_lsn(value):
    return "%X/%X" % (value >> 32, value & 0xFFFFFFFF)


def segment_name(tli, segno, seg_size=DEFAULT_SEGMENT_SIZE):
    per_id = 0x100000000 // seg_size
    return "%08X%08X%08X" % (tli, segno // per_id, segno % per_id)


def segment_number(name, seg_size=DEFAULT_SEGMENT_SIZE):
    """(timeline, segment number) of a segment file name."""
    if not SEGMENT_RE.match(name):
        raise ConfigError("%r is not a WAL segment name" % (name,))
    return int(name[:8], 16), int(name[8:16], 16) * (0x100000000 // seg_size) + int(name[16:], 16)


def lsn_segment(lsn, seg_size=DEFAULT_SEGMENT_SIZE):
    return lsn // seg_size


def validate_file(name):
    """A file name PostgreSQL archives (%f); ConfigError for anything else (no path can slip in)."""
    match = FILE_RE.match(str(name or ""))
    if not match:
        raise ConfigError("%r is not a WAL file name (segment, .history, .backup or .partial)" % (name,))
    return match.group("tli")


def timeline_dir(series, tli):
    return "%s/%s/%s/" % (series, WAL_DIR, tli)


# -------------------------------------------------------------------------- index

def _entry(info, series):
    rel = info.key[len(series) + 1:]  # wal/<tli>/<file>-<sha>...
    parts = rel.split("/")
    if len(parts) != 3 or parts[0] != WAL_DIR:
        return None
    match = KEY_RE.match(parts[2])
    if not match or not FILE_RE.match(match.group("file")) or match.group("file")[:8] != parts[1]:
        return None
    return {"file": match.group("file"), "timeline": parts[1], "key": info.key, "artifact": rel,
            "sha256": match.group("sha"), "size_bytes": info.size, "archived_at": info.modified,
            "compression": EXT_COMPRESSION[match.group("comp")], "encrypted": bool(match.group("age"))}


def wal_index(location, series, tli=None, name=None):
    """{timeline: {file: entry}} from one listing (of one timeline with ``tli``, of one file's keys
    with ``name`` too: a push or fetch lists only its own file, whatever the size of the archive).
    A file archived twice (identical content, two compressions) keeps its oldest entry."""
    prefix = timeline_dir(series, tli) + ("%s-" % name if name else "") if tli else "%s/%s/" % (series, WAL_DIR)
    out = {}
    for info in location.list_objects(prefix):
        entry = _entry(info, series)
        if entry is None:
            continue
        files = out.setdefault(entry["timeline"], {})
        known = files.get(entry["file"])
        if known is None or entry["archived_at"] < known["archived_at"]:
            files[entry["file"]] = entry
    return out


def find_file(location, series, name):
    """The index entry of one archived file, or NotFoundError."""
    tli = validate_file(name)
    entry = wal_index(location, series, tli, name).get(tli, {}).get(name)
    if entry is None:
        raise NotFoundError("%s is not archived in series %s at %s" % (name, series, location.url))
    return entry


def gaps(files, seg_size=DEFAULT_SEGMENT_SIZE):
    """[{"after", "before", "missing"}] of one timeline's {file: entry}: runs of absent segments."""
    numbers = sorted(segment_number(name, seg_size)[1] for name in files if SEGMENT_RE.match(name))
    tli = next((int(name[:8], 16) for name in files if SEGMENT_RE.match(name)), 0)
    out = []
    for low, high in zip(numbers, numbers[1:]):
        if high - low > 1:
            out.append({"after": segment_name(tli, low, seg_size), "before": segment_name(tli, high, seg_size),
                        "missing": high - low - 1, "first_missing": segment_name(tli, low + 1, seg_size)})
    return out


# ------------------------------------------------------------------ push and fetch

class _Memory:
    """A raw writer into memory: a segment (16 MiB) is compressed before its key (which holds the
    sha256 of the stored bytes) is known."""

    def __init__(self):
        self.buf = io.BytesIO()

    def write(self, data):
        self.buf.write(data)

    def commit(self):
        pass

    def abort(self):
        pass


def _sha_of_file(path):
    sha = hashlib.sha256()
    with open(path, "rb") as fh:
        for data in read_chunks(fh, CHUNK):
            sha.update(data)
    return sha.hexdigest()


def find_zstd():
    """The zstd command, or None."""
    return shutil.which("zstd") or next((p for p in ZSTD_PATHS if os.access(p, os.X_OK)), None)


def zstd_level_args(level):
    level = 3 if level is None else level
    if level < 0:
        return ["--fast=%d" % -level]
    return (["--ultra"] if level > 19 else []) + ["-%d" % level]


def run_zstd(args, data=None):
    """Run the zstd command (``data`` on its stdin); its stdout, or IntegrityError."""
    command = find_zstd()
    if command is None:
        raise IntegrityError("%s to decompress zstd: install one of them" % NO_ZSTD)
    try:
        # a filter on bytes in memory (a WAL file), which AnsibleModule.run_command cannot do: module_utils never sees the module here
        proc = subprocess.run([command, "-q"] + args, input=data, stdout=subprocess.PIPE,  # pylint: disable=ansible-bad-function
                              stderr=subprocess.PIPE, check=False)
    except OSError as exc:
        raise IntegrityError("cannot run %s: %s" % (command, exc.strerror or exc)) from exc
    if proc.returncode:
        raise IntegrityError("zstd %s failed: %s" % (" ".join(args), proc.stderr.decode("utf-8", "replace").strip()[-300:]))
    return proc.stdout


def push_codec(compression, level):
    """(compression, level, how) of a push: zstd through the zstandard module ("engine") or the zstd
    command ("command"); gzip level 1 when neither is here ("fallback")."""
    if compression != "zstd" or ZSTD.available:
        return compression, level, "engine"
    if find_zstd():
        return compression, level, "command"
    return "gzip", 1, "fallback"


def _stored_raw_sha(location, series, entry):
    sha = hashlib.sha256()
    with reader_for(location, series, entry) as reader:
        for data in read_chunks(reader, CHUNK):
            sha.update(data)
    return sha.hexdigest()


def push(location, series, path, name, compression="zstd", level=None, notes=None):
    """Archive the file at ``path`` as ``name`` (archive_command's %p and %f).

    Returns "archived" or "present" (archived before with the same content: PostgreSQL retries
    a push whose success it did not see). The same name with other content is refused
    (IntegrityError), so an archive is never overwritten. ``notes`` (a list) gets a line when
    zstd had to fall back to gzip.
    """
    tli = validate_file(name)
    try:
        known = find_file(location, series, name)
    except NotFoundError:
        known = None
    if known is not None:
        if _stored_raw_sha(location, series, known) == _sha_of_file(path):
            return "present"
        raise IntegrityError("%s is archived already in series %s with other content: refusing to overwrite"
                             % (name, series))
    compression, level, how = push_codec(compression, level)
    if how == "fallback" and notes is not None:
        notes.append("%s: %s stored with gzip" % (NO_ZSTD, name))
    protection = protection_for(location)
    memory = _Memory()
    writer = ArtifactWriter(memory, name, compression, level, PRECOMPRESSED if how == "command" else 0,
                            protection.recipients)
    if how == "command":
        writer.write(run_zstd(["-c"] + zstd_level_args(level) + ["--", path]))
    else:
        with open(path, "rb") as fh:
            writer.copy_from(fh)
    record = writer.close()
    suffix = COMPRESSION_EXT[compression] + (AGE_SUFFIX if protection.encrypting else "")
    key = "%s%s-%s%s" % (timeline_dir(series, tli), name, record["sha256"], suffix)
    location.write_bytes(key, memory.buf.getvalue())
    return "archived"


def reader_for(location, series, entry):
    """An ArtifactReader of an index entry: decompressed, decrypted, checked against its sha256.
    A zstd entry where the zstandard module is missing: the stored bytes are read (and checked)
    whole, then decompressed by the zstd command."""
    manifest = {"series": series, "id": entry["file"], "artifact": entry["artifact"],
                "sha256": entry["sha256"], "size_bytes": entry["size_bytes"], "compression": entry["compression"],
                "encryption": {"client_side": "age" if entry["encrypted"] else "none"}}
    if entry["compression"] == "zstd" and not ZSTD.available:
        return _command_reader(location, manifest)
    return ArtifactReader(location, manifest)


@contextlib.contextmanager
def _command_reader(location, manifest):
    with ArtifactReader(location, dict(manifest, compression="none")) as reader:
        stored = b"".join(read_chunks(reader, CHUNK))  # the sha256 is checked at the end: before zstd sees it
    yield io.BytesIO(run_zstd(["-d", "-c"], stored))


def fetch(location, series, name, dest):
    """Restore ``name`` to ``dest`` (restore_command's %f and %p): written to a hidden file beside
    ``dest`` and renamed only once its sha256 matched, so a corrupt segment never reaches
    PostgreSQL. NotFoundError when it is not archived (the end of the archive to PostgreSQL)."""
    return fetch_entry(location, series, find_file(location, series, name), dest)


def fetch_entry(location, series, entry, dest):
    """``fetch`` of an index entry (the restore's prefetch into its spool uses it too)."""
    directory = os.path.dirname(os.path.abspath(dest))
    fd, tmp = tempfile.mkstemp(prefix=".opskit-wal-", dir=directory)
    try:
        with os.fdopen(fd, "wb") as out, reader_for(location, series, entry) as reader:
            for data in read_chunks(reader, CHUNK):
                out.write(data)
        os.replace(tmp, dest)
        tmp = None
    finally:
        if tmp is not None:  # an error or a signal: the partial copy goes
            os.unlink(tmp)
    return entry


def verify_entry(location, series, entry):
    """Read the stored bytes of one archived file and check its sha256 (IntegrityError)."""
    try:
        with ArtifactReader(location, {"series": series, "id": entry["file"], "artifact": entry["artifact"],
                                       "sha256": entry["sha256"], "size_bytes": entry["size_bytes"],
                                       "compression": "none"}, decompress=False) as reader:
            for _data in read_chunks(reader, CHUNK):
                pass
    except IntegrityError as exc:
        raise IntegrityError("WAL file %s of series %s is corrupt (its stored bytes do not match the sha256 %s"
                             " of its key): refused before replay" % (entry["file"], series, entry["sha256"][:16])) from exc
