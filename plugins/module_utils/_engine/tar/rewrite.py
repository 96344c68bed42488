# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checked tar streams renamed under a new root: the body of ``PUT /containers/{id}/archive``.

``TarRewriter`` (a ``headers.TarWalker``) checks every member of a raw tar stream fed in
chunks and renames it under a new root; file data passes through untouched, so memory stays
bounded whatever the archive's size. ``rewrite_stream`` drives it over a file-like object.
"""

from __future__ import annotations

import copy
import math
import tarfile

from .headers import CHUNK, MTIME_MAX, TAR_ENCODING, TAR_ERRORS, ZERO_BLOCK, TarWalker, clean_name, rebase

# PAX keys that tarfile turns into TarInfo attributes: dropped when re-emitting, so the
# (possibly renamed) attributes are written afresh. A PAX ``mtime`` is kept as it is (tarfile's
# float would lose nanoseconds).
PAX_ATTRIBUTE_KEYS = ("path", "linkpath", "size", "uid", "gid", "uname", "gname", "hdrcharset")


def renamed(member, rel, root, link_root=None):
    """A copy of ``member`` named ``rel`` under ``root`` with stale PAX attributes dropped."""
    out = copy.copy(member)
    out.name = rebase(rel, root)
    if member.islnk():
        out.linkname = rebase(clean_name(member.linkname), root if link_root is None else link_root)
    out.pax_headers = {k: v for k, v in member.pax_headers.items()
                       if k not in PAX_ATTRIBUTE_KEYS and not k.startswith("GNU.sparse.")}
    if "mtime" in out.pax_headers:  # an int in range: tarfile leaves the record alone
        out.mtime = min(max(math.floor(member.mtime), 0), MTIME_MAX - 1)
    if member.issparse() or member.type in (tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE):
        out.type = tarfile.REGTYPE
        out.sparse = None
    return out


class TarRewriter(TarWalker):
    """Checks and renames the members of a raw tar stream, for archives of any size.

    Feed raw tar bytes (``feed``), collect output chunks (``take``): every member is checked
    (MemberChecker) and renamed under ``root``; file data passes through untouched.
    A plain ustar header whose new name fits its name field is patched in place (checksum
    recomputed); members described by PAX or GNU long-name headers are re-emitted with tarfile.
    """

    def __init__(self, root, what="archive"):
        super().__init__(what)
        self.root_str = root
        self.out = []

    def take(self):
        """The output produced so far, as one bytes object."""
        data = b"".join(self.out)
        self.out = []
        return data

    def _payload(self, chunk, data_bytes):
        self.out.append(chunk)

    def _end(self):
        self.out.append(ZERO_BLOCK * 2)

    def _member(self, rel, typeflag, size, block, extra):
        if block is None:
            self.out.append(renamed(extra, rel, self.root_str).tobuf(tarfile.PAX_FORMAT, TAR_ENCODING,
                                                                     TAR_ERRORS))
            return
        linkname = extra.encode(TAR_ENCODING, TAR_ERRORS)
        new_name = self._rebase(rel)
        new_link = linkname
        if typeflag == b"1":
            new_link = self._rebase(clean_name(extra))
        if len(new_name) > 100 or len(new_link) > 100:
            self.out.append(renamed(self._decode(block), rel, self.root_str).tobuf(
                tarfile.PAX_FORMAT, TAR_ENCODING, TAR_ERRORS))
            return
        out = bytearray(block)
        out[0:100] = new_name.ljust(100, b"\0")
        out[157:257] = new_link.ljust(100, b"\0")
        if block[257:262] == b"ustar":
            out[345:500] = b"\0" * 155
        out[148:156] = b" " * 8
        out[148:156] = b"%06o\0 " % sum(out)
        self.out.append(bytes(out))

    def _rebase(self, rel):
        return rebase(rel, self.root_str).encode(TAR_ENCODING, TAR_ERRORS)


def rewrite_stream(fileobj, root, what="archive", chunk=CHUNK):
    """Iterate over the checked, renamed tar bytes of ``fileobj`` (TarRewriter); returns the
    rewriter as the generator's value."""
    rewriter = TarRewriter(root, what)
    while True:
        data = fileobj.read(chunk)
        if not data:
            break
        rewriter.feed(data)
        out = rewriter.take()
        if out:
            yield out
        if rewriter.ended:
            break
    rewriter.finish()
    return rewriter
