# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A physical backup's tar (the base backup, or a tablespace companion) written into a directory.

The same checked extractor as the volume restores (``_engine/tar/extract.py``): every path walked
from the directory's descriptor with O_NOFOLLOW, files created O_EXCL, nothing outside the
directory ever reached, no devices. It is fed from a second thread that reads the location,
hashes the stored bytes and decompresses them (``Prefetch``), so the decompression overlaps the
file writes: a 2.6 GB base backup tar extracted in 2.0 s instead of 3.4 s with ``tarfile``
(bench/RESULTS.md, PITR). Like tarfile's ``data`` filter before it, it refuses symlinks that
are absolute or lead out of the directory. The stored bytes are read to their end, so a
damaged artifact raises the engine's sha256 IntegrityError, also when the damage first broke
the tar stream.
"""

from __future__ import annotations

import os
import posixpath

from .._engine.artifacts import ArtifactReader
from .._engine.streams import Prefetch, read_chunks
from .._errors import IntegrityError
from .._engine.tar.extract import DIR_FLAGS, TarExtractor, extract_chunks
from .._engine.tar.headers import UnsafeArchiveError, _display

READ_AHEAD = 4  # decompressed 1 MiB pieces waiting for the writer at most


class PhysicalExtractor(TarExtractor):
    """TarExtractor refusing symlinks that point outside the directory (a data directory has none)."""

    def _member(self, rel, typeflag, size, block, extra):
        if typeflag == b"2":
            target = extra if block is not None else extra.linkname
            resolved = posixpath.normpath(posixpath.join(posixpath.dirname(rel), target))
            if posixpath.isabs(target) or resolved == ".." or resolved.startswith("../"):
                raise UnsafeArchiveError("%s member %s: a symlink to %s, outside the directory, is refused"
                                         % (self.what, _display(rel), _display(target)))
        super()._member(rel, typeflag, size, block, extra)


def _damage(reader, chunks):
    """The sha256 IntegrityError of the stored bytes, when damage to them is what broke the tar (the
    reading thread met it already, or hashing the rest of them meets it); else None."""
    chunks.stop()
    if chunks.error is not None or chunks.thread.is_alive():
        return chunks.error if isinstance(chunks.error, IntegrityError) else None
    try:
        reader.drain()
    except IntegrityError as damaged:
        return damaged
    return None


def extract_artifact(location, manifest, directory, name=None, what="base backup"):
    """Extract the tar artifact ``name`` (the main one when None) of ``manifest`` into the existing
    ``directory``. Raises IntegrityError (a damaged artifact, an unsafe member, a short tar); what
    was written stays for the caller to remove. Owners are left to the caller (``data_owner``)."""
    fd = os.open(directory, DIR_FLAGS)
    try:
        with ArtifactReader(location, manifest, name) as reader:
            chunks = Prefetch(read_chunks(reader), depth=READ_AHEAD)
            try:
                extract_chunks(chunks, PhysicalExtractor(fd, what, same_owner=False))
            except IntegrityError as exc:
                raise _damage(reader, chunks) or exc
            finally:
                chunks.stop()
    finally:
        os.close(fd)
