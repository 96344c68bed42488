# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The test oracle of the tar rewriting: ``SafeTarStream``, the same job done with tarfile.

It reads a tar (stream mode, bounded memory), checks each member with the collection's
MemberChecker, renames it under a new root and re-emits it as PAX tar bytes. The tests compare
``TarRewriter`` (plugins/module_utils/_engine/tar/rewrite.py), which works on the headers
directly, with it. It lived in the collection until nothing but the tests used it.
"""

from __future__ import annotations

import collections
import tarfile

from ansible_collections.opskit.runbook.plugins.module_utils._errors import IntegrityError
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.headers import (
    CHUNK, TAR_ENCODING, TAR_ERRORS, ZERO_BLOCK, MemberChecker, _display, _padding, kind_of, summary)
from ansible_collections.opskit.runbook.plugins.module_utils._engine.tar.rewrite import renamed

OUT_CHUNK = 256 * 1024
STREAM_BUFFER = 64 * 1024  # tarfile's stream mode re-slices its buffer on every read


def open_stream(fileobj, what="archive"):
    """tarfile in stream mode over a file-like object of raw tar bytes."""
    try:
        return tarfile.open(fileobj=fileobj, mode="r|", bufsize=STREAM_BUFFER, encoding=TAR_ENCODING,
                            errors=TAR_ERRORS)
    except tarfile.ReadError as exc:
        raise IntegrityError("%s is not a valid tar archive: %s" % (what, exc)) from exc


def _members(tar, what):
    try:
        yield from tar
    except tarfile.TarError as exc:
        raise IntegrityError("%s is not a valid tar archive: %s" % (what, exc)) from exc


class SafeTarStream:
    """Iterate over the checked, renamed, re-emitted tar bytes of ``fileobj``.

    Bounded memory: file data is copied in chunks of at most ``chunk`` bytes. Raises
    UnsafeArchiveError at the first unsafe member (nothing of that member is emitted).
    """

    def __init__(self, fileobj, root, what="archive", chunk=CHUNK, out_chunk=OUT_CHUNK):
        self.fileobj, self.root, self.what = fileobj, root, what
        self.chunk, self.out_chunk = chunk, out_chunk
        self.counts = collections.Counter()
        self.entries = 0
        self.raw_bytes = 0

    def __iter__(self):
        checker = MemberChecker()
        buf = bytearray()
        tar = open_stream(self.fileobj, self.what)
        try:
            for member in _members(tar, self.what):
                rel = checker.check(member)
                out = renamed(member, rel, self.root)
                buf += out.tobuf(tarfile.PAX_FORMAT, TAR_ENCODING, TAR_ERRORS)
                self.entries += 1
                self.counts[kind_of(member)] += 1
                if member.isreg():
                    self.counts["file_bytes"] += member.size
                if member.isreg() and member.size:
                    source = tar.extractfile(member)
                    left = member.size
                    while left:
                        try:
                            data = source.read(min(self.chunk, left))
                        except tarfile.TarError:
                            data = b""
                        if not data:
                            raise IntegrityError("%s: member %s is truncated"
                                                 % (self.what, _display(member.name)))
                        left -= len(data)
                        if len(buf) + len(data) > self.out_chunk and buf:
                            yield bytes(buf)
                            buf.clear()
                        if len(data) >= self.out_chunk:
                            yield data
                        else:
                            buf += data
                    pad = _padding(member.size)
                    if pad:
                        buf += b"\0" * pad
                self.raw_bytes += member.size if member.isreg() else 0
                if len(buf) >= self.out_chunk:
                    yield bytes(buf)
                    buf.clear()
            buf += ZERO_BLOCK * 2
            yield bytes(buf)
        finally:
            tar.close()

    def summary(self):
        return summary(self.counts, self.entries)
