# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Artifacts: the stored bytes of a backup, compressed and hashed on the way in, decompressed
and checked against the manifest (sha256 and size) on the way out."""

from __future__ import annotations

import hashlib

from .._errors import IntegrityError, NotFoundError
from .._storage.base import Reader
from .._crypto.age import DecryptionError, Encryptor
from .compression import ZSTD, decompression_errors, make_compressor, make_decompressor
from .protection import DecryptingSource, client_side, protection_for
from .streams import CHUNK, read_chunks


class ArtifactWriter:
    """Compresses, encrypts (with age ``recipients``), hashes and counts a stream on its way to
    a backend writer: the sha256 and size are those of the stored bytes."""

    def __init__(self, raw, key, compression, level, threads, recipients=None):
        self.raw, self.key, self.compression = raw, key, compression
        self.sha = hashlib.sha256()
        self.size = 0
        self.raw_bytes = 0
        self.closed = False
        self.enc = Encryptor(self._emit, recipients) if recipients else None
        sink = _Sink(self.enc.write if self.enc else self._emit)
        self.comp = make_compressor(compression, sink, level, threads)

    def write(self, data):
        """Take raw (uncompressed) bytes from the producer."""
        self.raw_bytes += len(data)
        self.comp.write(data)
        return len(data)

    def _emit(self, data):
        """Sink of the compressor: stored bytes."""
        if data:
            self.sha.update(data)
            self.size += len(data)
            self.raw.write(data)
        return len(data)

    def copy_from(self, stream, chunk=CHUNK):
        """Read ``stream`` (a file-like object with read()) to its end."""
        for data in read_chunks(stream, chunk):
            self.write(data)

    def close(self):
        self.comp.finish()
        if self.enc:
            self.enc.finish()
        self.raw.commit()
        self.closed = True
        return self.record()

    def abort(self):
        if not self.closed:
            self.closed = True
            self.raw.abort()

    def record(self):
        record = {"key": self.key, "size_bytes": self.size, "raw_bytes": self.raw_bytes,
                  "sha256": self.sha.hexdigest(), "compression": self.compression}
        if self.enc:
            record["encryption"] = "age"
        return record


class _Sink:
    """Adapter so a compressor can write into ArtifactWriter._emit."""

    def __init__(self, emit):
        self.write = emit


def _artifact_record(manifest, name=None):
    if name is None:
        return {"key": manifest["artifact"], "size_bytes": manifest["size_bytes"],
                "sha256": manifest["sha256"], "compression": manifest["compression"]}
    for comp in manifest.get("companions", []):
        if comp.get("name") == name:
            return comp
    raise NotFoundError("backup %s has no %s artifact" % (manifest["id"], name))


class _StoredSource:
    """What the zstd stream reader pulls from: the stored bytes, hashed and counted on the way."""

    def __init__(self, owner):
        self.owner = owner

    def read(self, size=CHUNK):
        return self.owner._read_payload(size)  # pylint: disable=protected-access


class ArtifactReader(Reader):
    """File-like reader of an artifact's raw (decompressed) bytes.

    The stored bytes are hashed as they pass; at the end the sha256 and size are compared with
    the manifest and an IntegrityError is raised on any mismatch. A backup encrypted with age
    is decrypted on the way (identities from the location's protection options). With
    ``decompress=False`` the stored bytes are returned as they are (to verify or copy).

    Memory stays bounded whatever the compression ratio: each read() decompresses at most
    ``size`` bytes (a 1 MiB zstd chunk of a pgbench dump expands to about 200 MiB).
    """

    def __init__(self, location, manifest, name=None, decompress=True):
        rec = _artifact_record(manifest, name)
        self.key = "%s/%s" % (manifest["series"], rec["key"])
        self.expected_sha, self.expected_size = rec["sha256"], rec["size_bytes"]
        self.compression = rec["compression"] if decompress else "none"
        if self.compression == "zstd":
            zstandard = ZSTD.load()
        elif self.compression not in ("gzip", "none"):
            raise IntegrityError("unknown compression %r in manifest" % (self.compression,))
        identities = None
        if decompress and client_side(manifest) == "age":
            identities = protection_for(location).identities_for(manifest)
        self.stream = location.open_read(self.key)
        self.plain = DecryptingSource(self._read_stored, identities) if identities else None
        self.sha = hashlib.sha256()
        self.size = 0
        self.eof = False
        self.tail = b""
        if self.compression == "zstd":
            self.dec = zstandard.ZstdDecompressor().stream_reader(
                _StoredSource(self), read_size=CHUNK, read_across_frames=True)
        else:
            self.dec = make_decompressor(self.compression)

    def _check(self):
        if self.size != self.expected_size or self.sha.hexdigest() != self.expected_sha:
            raise IntegrityError(
                "artifact %s is corrupt: sha256 %s (%d bytes) does not match the manifest's %s (%d bytes)"
                % (self.key, self.sha.hexdigest(), self.size, self.expected_sha, self.expected_size))

    def _read_stored(self, size):
        if self.eof:
            return b""
        data = self.stream.read(size)
        if not data:
            self.eof = True
            self._check()
            return b""
        self.sha.update(data)
        self.size += len(data)
        if self.size > self.expected_size:
            self._check()
        return data

    def drain(self):
        """Read (and hash) the rest of the stored bytes, without decompressing them: the whole object
        is checked (IntegrityError on a mismatch)."""
        while self._read_stored(CHUNK):
            pass

    def _decompressed(self, size):
        if self.compression == "zstd":
            return self.dec.read(size)
        if self.compression == "gzip":
            while True:
                data = self.tail or self._read_payload(CHUNK)
                if not data:
                    return self.dec.flush()
                out = self.dec.decompress(data, size)
                self.tail = self.dec.unconsumed_tail
                if out:
                    return out
        return self._read_payload(size)

    def _read_payload(self, size):
        """The compressed bytes: the stored ones, decrypted if the backup is encrypted."""
        return self.plain.read(size) if self.plain else self._read_stored(size)

    def read(self, size=CHUNK):
        if size is None or size < 0:
            return b"".join(read_chunks(self, CHUNK))
        try:
            data = self._decompressed(size)
        except decompression_errors() as exc:
            # Damage usually breaks the compressed stream before its end is reached: read the
            # rest, so the error is the sha256 mismatch whenever the stored bytes are damaged.
            self.drain()
            raise IntegrityError("artifact %s is corrupt: it cannot be decompressed (%s), although its"
                                 " sha256 matches the manifest" % (self.key, exc)) from exc
        except DecryptionError as exc:
            self.drain()
            raise IntegrityError("artifact %s is corrupt: it cannot be decrypted (%s), although its sha256"
                                 " matches the manifest" % (self.key, exc.msg)) from exc
        if not data:
            self.drain()  # the end of the data
        return data

    def close(self):
        self.stream.close()


def verify_stored(location, manifest, name=None):
    """Read the stored bytes once and check sha256 and size; return the byte count."""
    with ArtifactReader(location, manifest, name, decompress=False) as reader:
        for _data in read_chunks(reader, CHUNK):
            pass
    return reader.size
