# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tar headers of volume and directory backups: names, member checks, header-level walking.

Archive layout (the same for Docker volumes and host directories): member names are relative
to the backed-up root, the root itself is ``.`` and the others ``./a``, ``./a/b`` (what
``tar -C root -c .`` and Docker's ``GET /containers/{id}/archive?path=<mount>/.`` produce).

* ``clean_name`` / ``rebase``: member names, checked and moved under a new root.
* ``MemberChecker`` rejects what a restore must never write: absolute names, ``..``
  components, device files, members reached through a symlink of the archive, hard links that
  point outside the archive.
* ``TarScanner`` walks the headers of a raw tar byte stream without copying its data: it counts
  entries and detects a truncated stream (no end-of-archive block), cheaply, during a backup.
* ``TarWalker`` is the base of the restore side: it parses the headers of a stream fed in
  chunks, checks every member and hands members and data to its subclasses, ``TarRewriter``
  (``rewrite.py``) and ``TarExtractor`` (``extract.py``).
"""

from __future__ import annotations

import collections
import io
import tarfile

from ..._errors import IntegrityError

BLOCK = 512
ZERO_BLOCK = b"\0" * BLOCK
MTIME_MAX = 8 ** 11  # what the ustar mtime field holds; later or earlier ones go to PAX
CHUNK = 1024 * 1024
TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"  # non-UTF-8 names round-trip byte for byte

# Kinds counted by TarScanner / TarWalker, by tar type flag.
KIND_BY_TYPE = {
    b"0": "files", b"\0": "files", b"7": "files", b"S": "files",
    b"1": "hardlinks", b"2": "symlinks", b"5": "directories", b"6": "fifos",
    b"3": "devices", b"4": "devices",
}
META_TYPES = (b"x", b"g", b"L", b"K")


class UnsafeArchiveError(IntegrityError):
    """An archive member that a restore refuses to write."""


def _display(name):
    return repr(name)[1:-1] if isinstance(name, str) else repr(name)


def clean_name(name, what="member"):
    """``./a//b/`` -> ``a/b``; the root (``.``, ``./``) -> ``""``.

    Raises UnsafeArchiveError for absolute names, ``..`` components and NUL bytes.
    """
    if not isinstance(name, str) or "\0" in name:
        raise UnsafeArchiveError("archive %s %s: invalid name" % (what, _display(name)))
    if name.startswith("/"):
        raise UnsafeArchiveError("archive %s %s: absolute paths are refused" % (what, _display(name)))
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeArchiveError("archive %s %s: '..' components are refused" % (what, _display(name)))
    return "/".join(parts)


def rebase(rel, root):
    """The name of relative path ``rel`` under ``root`` (``root`` itself for the archive root)."""
    if not rel:
        return root
    return rel if root in ("", ".") else "%s/%s" % (root, rel)


def kind_of(member):
    """Counting kind of a TarInfo."""
    if member.isdir():
        return "directories"
    if member.issym():
        return "symlinks"
    if member.islnk():
        return "hardlinks"
    if member.ischr() or member.isblk():
        return "devices"
    if member.isfifo():
        return "fifos"
    if member.isreg():
        return "files"
    return "other"


class MemberChecker:
    """Checks archive members in order; returns each one's clean relative name."""

    def __init__(self):
        self.symlinks = set()

    def _through_symlink(self, rel):
        if not self.symlinks:
            return None
        parts = rel.split("/")
        for i in range(1, len(parts)):
            prefix = "/".join(parts[:i])
            if prefix in self.symlinks:
                return prefix
        return None

    def check(self, member):
        """Check a TarInfo; return its clean relative name."""
        return self.check_fields(member.name, member.type, member.linkname)

    def check_fields(self, name, typeflag, linkname):
        """Check a member given its name, tar type flag and link name."""
        rel = clean_name(name)
        shown = _display(name)
        kind = KIND_BY_TYPE.get(typeflag)
        if kind == "devices":
            raise UnsafeArchiveError("archive member %s: device files are refused" % shown)
        if kind not in ("files", "directories", "symlinks", "hardlinks", "fifos"):
            raise UnsafeArchiveError("archive member %s: unsupported member type %r" % (shown, typeflag))
        if not rel and kind != "directories":
            raise UnsafeArchiveError("archive root %s is not a directory" % shown)
        via = self._through_symlink(rel)
        if via is not None:
            raise UnsafeArchiveError("archive member %s: its path goes through the symlink %s"
                                     % (shown, _display(via)))
        if kind == "hardlinks":
            target = clean_name(linkname, "hard link target of %s:" % shown)
            if not target:
                raise UnsafeArchiveError("archive member %s: a hard link to the root is refused" % shown)
            via = self._through_symlink(target)
            if via is not None:
                raise UnsafeArchiveError("archive member %s: its link target goes through the"
                                         " symlink %s" % (shown, _display(via)))
        if kind == "symlinks":
            self.symlinks.add(rel)
        else:
            self.symlinks.discard(rel)
        return rel


def _number(field):
    """A numeric tar header field: octal ASCII or GNU base-256."""
    if field[:1] in (b"\x80", b"\xff"):
        value = int.from_bytes(field[1:], "big")
        if field[:1] == b"\xff":
            value -= 256 ** (len(field) - 1)
        return value
    text = field.split(b"\0", 1)[0].strip(b" ")
    if not text:
        return 0
    try:
        return int(text, 8)
    except ValueError as exc:
        raise IntegrityError("tar header has an invalid numeric field %r" % bytes(field)) from exc


def _checksum_ok(block):
    stored = block[148:156]
    try:
        expected = _number(stored)
    except IntegrityError:
        return False
    unsigned = sum(block[:148]) + 8 * 32 + sum(block[156:])
    return expected == unsigned


def _pax_size(data):
    """The ``size`` record of a PAX extended header, or None."""
    pos = 0
    size = None
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            break
        if length <= 0:
            break
        record = data[space + 1:pos + length - 1]
        key, _sep, value = record.partition(b"=")
        if key == b"size":
            try:
                size = int(value)
            except ValueError as exc:
                raise IntegrityError("tar PAX header has an invalid size %r" % value) from exc
        pos += length
    return size


def _fill_header(header, view, pos, end):
    """Move the bytes still missing from the 512-byte ``header`` out of ``view[pos:end]``;
    return the new position and the complete block (the header is then emptied), or None."""
    take = min(BLOCK - len(header), end - pos)
    header += view[pos:pos + take]
    pos += take
    if len(header) < BLOCK:
        return pos, None
    block = bytes(header)
    header.clear()
    return pos, block


def _padded(size):
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _padding(size):
    return _padded(size) - size


def summary(counts, entries):
    return {"entries": entries, "files": counts.get("files", 0) + counts.get("hardlinks", 0),
            "directories": counts.get("directories", 0), "symlinks": counts.get("symlinks", 0),
            "hardlinks": counts.get("hardlinks", 0), "file_bytes": counts.get("file_bytes", 0)}


class _HeaderParser:
    """What TarScanner and TarWalker share: the entry counts, header blocks, the end check."""

    def __init__(self, what):
        self.what = what
        self.counts = collections.Counter()
        self.entries = 0
        self.header = bytearray()
        self.ended = False

    def _fields(self, block):
        """(type flag, size field) of a header block whose checksum is right."""
        if not _checksum_ok(block):
            raise IntegrityError("%s is not a valid tar stream (bad header checksum after %d entries)"
                                 % (self.what, self.entries))
        return block[156:157], _number(block[124:136])

    def _incomplete(self):
        """Whether the stream stopped inside the archive (before or within a member)."""
        raise NotImplementedError

    def finish(self):
        if not self.ended or self._incomplete():
            raise IntegrityError("%s ended early: the tar stream is incomplete (%d entries read)"
                                 % (self.what, self.entries))
        return self.summary()

    def summary(self):
        return summary(self.counts, self.entries)

    def _count(self, typeflag, size):
        """One more entry; a regular file's data bytes go to ``file_bytes``."""
        kind = KIND_BY_TYPE.get(typeflag, "other")
        self.entries += 1
        self.counts[kind] += 1
        if kind == "files":
            self.counts["file_bytes"] += size


class TarScanner(_HeaderParser):
    """Walks the headers of a raw tar byte stream, fed in chunks, without copying file data.

    ``counts`` holds entries per kind (files, directories, symlinks, hardlinks, fifos, devices);
    ``finish()`` raises IntegrityError if the stream is not a complete tar archive.
    """

    def __init__(self, what="archive"):
        super().__init__(what)
        self.skip = 0          # data bytes (incl. padding) still to pass over
        self.collect = None    # bytearray collecting a PAX header's data
        self.collect_left = 0
        self.pax_size = None
        self.sparse_ext = False

    def feed(self, data):
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and not self.ended:
            if self.collect is not None:
                take = min(self.collect_left, end - pos)
                self.collect += view[pos:pos + take]
                self.collect_left -= take
                pos += take
                if self.collect_left == 0:
                    self.pax_size = _pax_size(bytes(self.collect))
                    self.collect = None
                continue
            if self.skip:
                take = min(self.skip, end - pos)
                self.skip -= take
                pos += take
                continue
            pos, block = _fill_header(self.header, view, pos, end)
            if block is not None:
                self._block(block)
        return len(data)

    def write(self, data):
        return self.feed(data)

    def _block(self, block):
        if self.sparse_ext:  # old GNU sparse extension blocks
            self.sparse_ext = bool(block[504])
            return
        if block == ZERO_BLOCK:
            self.ended = True
            return
        typeflag, size = self._fields(block)
        if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0  # no data follows these, whatever the size field says
        if typeflag == b"x":
            self.collect, self.collect_left = bytearray(), size
            self.skip = _padding(size)
            if size == 0:
                self.collect = None
            return
        if typeflag in META_TYPES:
            self.skip = _padded(size)
            return
        if self.pax_size is not None:
            size = self.pax_size
            self.pax_size = None
        if typeflag == b"S" and block[482]:
            self.sparse_ext = True
        self.skip = _padded(size)
        self._count(typeflag, size)

    def _incomplete(self):
        return self.skip or self.collect is not None or self.header


PAX_NUMBERS = {"mtime": float, "atime": float, "ctime": float, "uid": int, "gid": int, "size": int}
PAX_FIELDS = ("path", "linkpath", "size", "mtime", "uid", "gid", "uname", "gname")


def _pax_records(data):
    """The records of a PAX extended header's data as {keyword: value}, decoded as tarfile
    decodes well-formed UTF-8 ones; None for anything else (tarfile decodes those)."""
    out, pos = {}, 0
    while pos < len(data) and data[pos:pos + 1] != b"\0":
        space = data.find(b" ", pos, pos + 24)
        if space < 0 or not data[pos:space].isdigit():
            return None
        length = int(data[pos:space])
        record = data[space + 1:pos + length]
        if length <= 0 or pos + length > len(data) or not record.endswith(b"\n"):
            return None
        key, sep, value = record[:-1].partition(b"=")
        try:
            key, value = key.decode("utf-8"), value.decode("utf-8")
        except UnicodeDecodeError:
            return None
        if not sep or not key or key == "hdrcharset" or key.startswith("GNU."):
            return None
        out[key] = value
        pos += length
    return out


def _text(field):
    return field.split(b"\0", 1)[0].decode(TAR_ENCODING, TAR_ERRORS)


def _ustar_info(block):
    """The TarInfo of a ustar header block whose checksum is right, decoded as
    ``tarfile.TarInfo.frombuf`` decodes it (a PAX header's member, not a GNU one)."""
    info = tarfile.TarInfo(_text(block[0:100]))
    info.mode, info.uid, info.gid = _number(block[100:108]), _number(block[108:116]), _number(block[116:124])
    info.size, info.mtime, info.type = _number(block[124:136]), _number(block[136:148]), block[156:157]
    info.linkname, info.uname, info.gname = _text(block[157:257]), _text(block[265:297]), _text(block[297:329])
    info.devmajor, info.devminor = _number(block[329:337]), _number(block[337:345])
    info.chksum = _number(block[148:156])
    prefix = _text(block[345:500])
    if info.type == tarfile.AREGTYPE and info.name.endswith("/"):
        info.type = tarfile.DIRTYPE
    if info.type in tarfile.GNU_TYPES:
        raise IntegrityError("a GNU member type after a PAX header")  # tarfile decodes it
    if info.isdir():
        info.name = info.name.rstrip("/")
    if prefix:
        info.name = prefix + "/" + info.name
    return info


def _fast_pax_member(blocks):
    """The TarInfo of one PAX extended header followed by a ustar header (``blocks``), decoded
    without opening a tarfile (the headers of most members of a volume backup: every exact
    mtime is a PAX record), as tarfile would decode it; None when tarfile must decode it (GNU
    long names, global or several headers, sparse or non-UTF-8 records, hdrcharset)."""
    if len(blocks) < 3 * BLOCK or blocks[156:157] != b"x":
        return None
    size = _number(blocks[124:136])
    if len(blocks) != 2 * BLOCK + _padded(size):
        return None
    pax = _pax_records(blocks[BLOCK:BLOCK + size])
    if pax is None:
        return None
    try:
        info = _ustar_info(blocks[-BLOCK:])
    except IntegrityError:
        return None
    for key in PAX_FIELDS:
        if key in pax:
            value = pax[key]
            if key in PAX_NUMBERS:
                try:
                    value = PAX_NUMBERS[key](value)
                except ValueError:
                    value = 0
            setattr(info, key, value.rstrip("/") if key == "path" else value)
    info.pax_headers = pax
    return info


class _BlockStream(io.BytesIO):
    """Header blocks followed by an end-of-archive marker, readable by tarfile."""

    def __init__(self, blocks):
        super().__init__(blocks + ZERO_BLOCK * 2)


class TarWalker(_HeaderParser):
    """Header-level streaming parser of raw tar bytes fed in chunks, with member checks.

    Every member is checked with MemberChecker; plain ustar headers are decoded from the block,
    members described by PAX or GNU long-name headers with tarfile. Subclasses get each member
    (``_member``) and its data, padding included (``_payload``). GNU sparse members are refused
    (neither Docker nor tarfile writes them).
    """

    def __init__(self, what="archive"):
        super().__init__(what)
        self.checker = MemberChecker()
        self.meta = bytearray()    # PAX / GNU long-name headers (with data) before a member
        self.meta_left = 0         # bytes of a meta header's data (and padding) still to collect
        self.skip = 0              # file data bytes to pass on
        self.pad = 0               # padding after the data

    def feed(self, data):
        view = memoryview(data)
        pos, end = 0, len(view)
        while pos < end and not self.ended:
            if self.meta_left:
                take = min(self.meta_left, end - pos)
                self.meta += view[pos:pos + take]
                self.meta_left -= take
                pos += take
                continue
            if self.skip or self.pad:
                take = min(self.skip + self.pad, end - pos)
                consumed = min(take, self.skip)
                self.skip -= consumed
                self.pad -= take - consumed
                self._payload(view[pos:pos + take], consumed)
                pos += take
                continue
            pos, block = _fill_header(self.header, view, pos, end)
            if block is not None:
                self._block(block)

    def _block(self, block):
        if block == ZERO_BLOCK:
            if self.meta:
                raise IntegrityError("%s: extended header without a member" % self.what)
            self.ended = True
            self._end()
            return
        typeflag, size = self._fields(block)
        if typeflag in META_TYPES:  # decoded with the member that follows (a global PAX
            self.meta += block         # header only applies to that member here)
            self.meta_left = _padded(size)
            return
        if typeflag == b"S":
            raise UnsafeArchiveError("%s: GNU sparse members are not supported" % self.what)
        if self.meta:
            member = self._decode(bytes(self.meta) + block)
            self.meta.clear()
            rel = self.checker.check(member)
            if member.issparse():
                raise UnsafeArchiveError("%s: GNU sparse members are not supported" % self.what)
            size, typeflag = (member.size if member.isreg() else 0), member.type
            self._member(rel, typeflag, size, None, member)
        else:
            name = block[0:100].split(b"\0", 1)[0]
            prefix = block[345:500].split(b"\0", 1)[0] if block[257:262] == b"ustar" else b""
            if prefix:
                name = prefix + b"/" + name
            linkname = block[157:257].split(b"\0", 1)[0].decode(TAR_ENCODING, TAR_ERRORS)
            rel = self.checker.check_fields(name.decode(TAR_ENCODING, TAR_ERRORS), typeflag, linkname)
            if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6"):
                size = 0  # no data follows these, whatever the size field says
            self._member(rel, typeflag, size, block, linkname)
        self.skip, self.pad = size, _padding(size)
        self._count(typeflag, size)

    def _decode(self, blocks):
        member = _fast_pax_member(blocks)
        if member is not None:
            return member
        with tarfile.open(fileobj=_BlockStream(blocks), mode="r:", encoding=TAR_ENCODING,
                          errors=TAR_ERRORS) as tar:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise IntegrityError("%s is not a valid tar archive: %s" % (self.what, exc)) from exc
        if member is None:
            raise IntegrityError("%s: extended header without a member" % self.what)
        return member

    def _member(self, rel, typeflag, size, block, extra):
        """A checked member: ``block`` is its plain ustar header and ``extra`` its link name, or
        ``block`` is None and ``extra`` the TarInfo decoded from its PAX / GNU headers."""
        raise NotImplementedError

    def _payload(self, chunk, data_bytes):
        """The next piece of the current member's data: its first ``data_bytes`` bytes are file
        data, the rest padding."""
        raise NotImplementedError

    def _end(self):
        """The end-of-archive block was read."""

    def _incomplete(self):
        return self.skip or self.pad or self.meta or self.header


class MemberScan(TarWalker):
    """A TarWalker that only checks: every member as a restore would (MemberChecker), nothing
    written. The verification pass of a restore through the Engine API runs it, so an archive
    with a refused member fails before the volume is emptied."""

    def _member(self, rel, typeflag, size, block, extra):
        pass

    def _payload(self, chunk, data_bytes):
        pass


class DeviceFilter:
    """Drops the device members (and their PAX / GNU long-name headers) from a raw tar stream
    fed in chunks; everything else passes through byte for byte. Volume backups use it: every
    restore refuses device files, so a backup that kept them could never be restored.
    ``dropped`` holds the names of the members left out."""

    def __init__(self):
        self.header = bytearray()
        self.left = 0            # data bytes (with padding) of the current header still to pass
        self.pending = None      # meta headers (with their data) held until their member comes
        self.pax = None          # the data of a PAX header being held, for its size record
        self.ended = False
        self.dropped = []

    def feed(self, data):
        """The filtered bytes of ``data`` (possibly empty)."""
        out, view, pos = [], memoryview(data), 0
        while pos < len(view):
            if self.ended:
                out.append(view[pos:])
                break
            if self.left:
                take = min(self.left, len(view) - pos)
                piece = view[pos:pos + take]
                (out if self.pending is None else self.pending).append(bytes(piece))
                if self.pax is not None:
                    self.pax += piece
                self.left -= take
                pos += take
                continue
            pos, block = _fill_header(self.header, view, pos, len(view))
            if block is not None:
                self._block(block, out)
        return b"".join(out)

    def _block(self, block, out):
        if block == ZERO_BLOCK:
            out.extend(self.pending or [])
            self.pending = None
            out.append(block)
            self.ended = True
            return
        if not _checksum_ok(block):
            raise IntegrityError("volume archive is not a valid tar stream (bad header checksum)")
        typeflag, size = block[156:157], _number(block[124:136])
        if typeflag in META_TYPES:
            self.pending = (self.pending or []) + [block]
            self.pax = bytearray() if typeflag == b"x" else None
            self.left = _padded(size)
            return
        pax_size = _pax_size(bytes(self.pax)) if self.pax else None
        self.pax = None
        if typeflag in (b"1", b"2", b"3", b"4", b"5", b"6"):
            size = 0
        elif pax_size is not None:
            size = pax_size
        if typeflag in (b"3", b"4"):
            self.dropped.append(_display(block[0:100].split(b"\0", 1)[0].decode(TAR_ENCODING, TAR_ERRORS)))
            self.pending = None
            return
        out.extend(self.pending or [])
        self.pending = None
        out.append(block)
        self.left = _padded(size)
