# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Tar streams of volume and directory backups: counting, member checks, safe re-emission.

Archive layout (the same for Docker volumes and host directories): member names are relative
to the backed-up root, the root itself is ``.`` and the others ``./a``, ``./a/b`` (what
``tar -C root -c .`` and Docker's ``GET /containers/{id}/archive?path=<mount>/.`` produce).

* ``TarScanner`` walks the headers of a raw tar byte stream without copying its data: it counts
  entries and detects a truncated stream (no end-of-archive block), cheaply, during a backup.
* ``MemberChecker`` rejects what a restore must never write: absolute names, ``..``
  components, device files, members reached through a symlink of the archive, hard links that
  point outside the archive.
* ``SafeTarStream`` reads a tar (stream mode, bounded memory), checks each member, renames it
  under a new root and re-emits it as PAX tar bytes: the body of ``PUT /containers/{id}/archive``.
"""

from __future__ import annotations

import collections
import copy
import errno
import io
import os
import stat
import tarfile

from .._engine.backup import write_all
from .._errors import IntegrityError

BLOCK = 512
ZERO_BLOCK = b"\0" * BLOCK
CHUNK = 1024 * 1024
OUT_CHUNK = 256 * 1024
STREAM_BUFFER = 64 * 1024  # tarfile's stream mode re-slices its buffer on every read
TAR_ENCODING = "utf-8"
TAR_ERRORS = "surrogateescape"  # non-UTF-8 names round-trip byte for byte

# Kinds counted by TarScanner / SafeTarStream, by tar type flag.
KIND_BY_TYPE = {
    b"0": "files", b"\0": "files", b"7": "files", b"S": "files",
    b"1": "hardlinks", b"2": "symlinks", b"5": "directories", b"6": "fifos",
    b"3": "devices", b"4": "devices",
}
META_TYPES = (b"x", b"g", b"L", b"K")
# PAX keys that tarfile turns into TarInfo attributes: dropped when re-emitting, so the
# (possibly renamed) attributes are written afresh.
PAX_ATTRIBUTE_KEYS = ("path", "linkpath", "size", "mtime", "uid", "gid", "uname", "gname",
                      "hdrcharset")


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
    except ValueError:
        raise IntegrityError("tar header has an invalid numeric field %r" % bytes(field)) from None


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
            except ValueError:
                raise IntegrityError("tar PAX header has an invalid size %r" % value) from None
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


class TarScanner:
    """Walks the headers of a raw tar byte stream, fed in chunks, without copying file data.

    ``counts`` holds entries per kind (files, directories, symlinks, hardlinks, fifos, devices);
    ``finish()`` raises IntegrityError if the stream is not a complete tar archive.
    """

    def __init__(self, what="archive"):
        self.what = what
        self.counts = collections.Counter()
        self.entries = 0
        self.header = bytearray()
        self.skip = 0          # data bytes (incl. padding) still to pass over
        self.collect = None    # bytearray collecting a PAX header's data
        self.collect_left = 0
        self.pax_size = None
        self.sparse_ext = False
        self.ended = False

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
        if not _checksum_ok(block):
            raise IntegrityError("%s is not a valid tar stream (bad header checksum after %d entries)"
                                 % (self.what, self.entries))
        typeflag = block[156:157]
        size = _number(block[124:136])
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
        self.entries += 1
        self.counts[KIND_BY_TYPE.get(typeflag, "other")] += 1

    def finish(self):
        if not self.ended or self.skip or self.collect is not None or self.header:
            raise IntegrityError("%s ended early: the tar stream is incomplete (%d entries read)"
                                 % (self.what, self.entries))
        return self.summary()

    def summary(self):
        return summary(self.counts, self.entries)


def _padded(size):
    return (size + BLOCK - 1) // BLOCK * BLOCK


def _padding(size):
    return _padded(size) - size


def summary(counts, entries):
    return {"entries": entries, "files": counts.get("files", 0) + counts.get("hardlinks", 0),
            "directories": counts.get("directories", 0), "symlinks": counts.get("symlinks", 0),
            "hardlinks": counts.get("hardlinks", 0)}


def open_stream(fileobj, what="archive"):
    """tarfile in stream mode over a file-like object of raw tar bytes."""
    try:
        return tarfile.open(fileobj=fileobj, mode="r|", bufsize=STREAM_BUFFER, encoding=TAR_ENCODING,
                            errors=TAR_ERRORS)
    except tarfile.ReadError as exc:
        raise IntegrityError("%s is not a valid tar archive: %s" % (what, exc)) from None


def renamed(member, rel, root, link_root=None):
    """A copy of ``member`` named ``rel`` under ``root`` with stale PAX attributes dropped."""
    out = copy.copy(member)
    out.name = rebase(rel, root)
    if member.islnk():
        out.linkname = rebase(clean_name(member.linkname), root if link_root is None else link_root)
    out.pax_headers = {k: v for k, v in member.pax_headers.items()
                       if k not in PAX_ATTRIBUTE_KEYS and not k.startswith("GNU.sparse.")}
    if member.issparse() or member.type in (tarfile.CONTTYPE, tarfile.GNUTYPE_SPARSE):
        out.type = tarfile.REGTYPE
        out.sparse = None
    return out


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


class _TarWalker:
    """Header-level streaming parser of raw tar bytes fed in chunks, with member checks.

    Every member is checked with MemberChecker; plain ustar headers are decoded from the block,
    members described by PAX or GNU long-name headers with tarfile. Subclasses get each member
    (``_member``) and its data, padding included (``_payload``). GNU sparse members are refused
    (neither Docker nor tarfile writes them).
    """

    def __init__(self, what="archive"):
        self.what = what
        self.checker = MemberChecker()
        self.counts = collections.Counter()
        self.entries = 0
        self.header = bytearray()
        self.meta = bytearray()    # PAX / GNU long-name headers (with data) before a member
        self.meta_left = 0         # bytes of a meta header's data (and padding) still to collect
        self.skip = 0              # file data bytes to pass on
        self.pad = 0               # padding after the data
        self.ended = False

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
        if not _checksum_ok(block):
            raise IntegrityError("%s is not a valid tar stream (bad header checksum after %d entries)"
                                 % (self.what, self.entries))
        typeflag = block[156:157]
        size = _number(block[124:136])
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
        self.entries += 1
        self.counts[KIND_BY_TYPE.get(typeflag, "other")] += 1

    def _decode(self, blocks):
        with tarfile.open(fileobj=_BlockStream(blocks), mode="r:", encoding=TAR_ENCODING,
                          errors=TAR_ERRORS) as tar:
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                raise IntegrityError("%s is not a valid tar archive: %s" % (self.what, exc)) from None
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

    def finish(self):
        if not self.ended or self.skip or self.pad or self.meta or self.header:
            raise IntegrityError("%s ended early: the tar stream is incomplete (%d entries read)"
                                 % (self.what, self.entries))
        return self.summary()

    def summary(self):
        return summary(self.counts, self.entries)


class TarRewriter(_TarWalker):
    """Header-level streaming version of SafeTarStream, for archives of any size.

    Feed raw tar bytes (``feed``), collect output chunks (``take``): every member is checked
    like SafeTarStream does and renamed under ``root``; file data passes through untouched.
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


class ExtractError(IntegrityError):
    """Writing an archive member failed, or something outside the archive is in its way."""


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SPECIAL_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def _ustar_attrs(block):
    """(mode, uid, gid, mtime in ns) of a plain ustar header block."""
    return (_number(block[100:108]), _number(block[108:116]), _number(block[116:124]),
            _number(block[136:148]) * 1000000000)


def _info_attrs(info):
    """(mode, uid, gid, mtime in ns) of a TarInfo; a PAX mtime keeps all its digits."""
    mtime = int(info.mtime * 1000000000)
    raw = info.pax_headers.get("mtime")
    if raw:
        whole, _dot, frac = raw.partition(".")
        try:
            sign = -1 if whole.startswith("-") else 1
            mtime = int(whole) * 1000000000 + sign * int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    return info.mode, info.uid, info.gid, mtime


class TarExtractor(_TarWalker):
    """Writes checked tar members under the directory open as ``root_fd``, fed in chunks.

    Nothing outside the root is ever reached: every path is walked one component at a time
    from ``root_fd`` with O_NOFOLLOW, files are created with O_EXCL|O_NOFOLLOW and attributes
    are set on open descriptors or with follow_symlinks=False. A symlink or a non-directory in
    the way (one the archive did not create, such as one planted by a container while the
    restore runs) stops the restore with ExtractError. Directories are created 0700 and get
    their mode and mtime at the end, children before parents, so a read-only directory still
    receives its content. Owners are restored (numerically) when running as root, like tar does.

    With ``defer_root``, the attributes of the archive root (``.``) are not applied to
    ``root_fd`` but kept in ``root_attrs`` for ``apply_attrs`` (a staged restore applies them
    to the real target at the end).
    """

    def __init__(self, root_fd, what="archive", same_owner=None, defer_root=False):
        super().__init__(what)
        self.root_fd = root_fd
        self.defer_root = defer_root
        self.root_attrs = None
        self.same_owner = (os.geteuid() == 0) if same_owner is None else same_owner
        self.stack = []                 # (name, fd) of the directories from the root to the last used
        self.file = None                # (fd, attrs) of the regular file being written
        self.dirs = []                  # (relative path, attrs) of the directories, set at the end

    # ------------------------------------------------------------------ walking
    def _step(self, fd, part, create, done, member):
        """Open directory ``part`` under ``fd`` with O_NOFOLLOW (created when missing and
        ``create``: a parent the archive does not list)."""
        try:
            return os.open(part, DIR_FLAGS, dir_fd=fd)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(part, 0o755, dir_fd=fd)
            return os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise ExtractError("%s: '%s' is in the way of '%s' and is not a directory of the"
                                   " archive (a symlink or file that something else created?)"
                                   % (self.what, _display("/".join(done + [part])),
                                      _display(member))) from None
            raise

    def _open_dir(self, rel, member):
        """A new fd of the existing directory ``rel``, walked from the root."""
        fd = os.dup(self.root_fd)
        done = []
        try:
            for part in rel.split("/") if rel else ():
                nfd = self._step(fd, part, False, done, member)
                os.close(fd)
                fd = nfd
                done.append(part)
        except BaseException:
            os.close(fd)
            raise
        return fd

    def _dir_fd(self, rel, member, create=True):
        """The fd of directory ``rel``: the open chain of directories from the root to the last
        one used is kept, and only the components below the common ancestor are opened (tar
        lists a directory's entries together, so mostly none or one)."""
        parts = rel.split("/") if rel else []
        keep = 0
        stack = self.stack
        while keep < len(stack) and keep < len(parts) and stack[keep][0] == parts[keep]:
            keep += 1
        while len(stack) > keep:
            os.close(stack.pop()[1])
        fd = stack[-1][1] if stack else self.root_fd
        for index in range(keep, len(parts)):
            fd = self._step(fd, parts[index], create, parts[:index], member)
            stack.append((parts[index], fd))
        return fd

    def _drop_stack(self):
        while self.stack:
            os.close(self.stack.pop()[1])

    def _place(self, rel):
        """(parent fd, base name) of ``rel``."""
        head, _sep, base = rel.rpartition("/")
        return self._dir_fd(head, rel), base

    def _clear(self, dfd, base, rel):
        """Remove what is at ``base`` so a member can take its place (tar semantics for a name
        listed twice); a directory is never removed."""
        st = os.stat(base, dir_fd=dfd, follow_symlinks=False)
        if stat.S_ISDIR(st.st_mode):
            raise ExtractError("%s: member %s would replace a directory" % (self.what, _display(rel)))
        os.unlink(base, dir_fd=dfd)

    def _create(self, make, dfd, base, rel):
        try:
            return make()
        except FileExistsError:
            self._clear(dfd, base, rel)
            return make()

    def apply_attrs(self, fd, attrs):
        """Owner (as root), mode and mtime of ``attrs`` on the open ``fd``."""
        mode, uid, gid, mtime = attrs
        if self.same_owner:
            os.fchown(fd, uid, gid)
        os.fchmod(fd, mode & 0o7777)
        os.utime(fd, ns=(mtime, mtime))

    # ------------------------------------------------------------------ members
    def _member(self, rel, typeflag, size, block, extra):
        if block is None:
            attrs, linkname = _info_attrs(extra), extra.linkname
        else:
            attrs, linkname = _ustar_attrs(block), extra
        if typeflag == b"5":
            if rel:
                dfd, base = self._place(rel)
                try:
                    os.mkdir(base, 0o700, dir_fd=dfd)
                except FileExistsError:
                    if not stat.S_ISDIR(os.stat(base, dir_fd=dfd, follow_symlinks=False).st_mode):
                        self._clear(dfd, base, rel)
                        os.mkdir(base, 0o700, dir_fd=dfd)
                if self.same_owner:
                    os.chown(base, attrs[1], attrs[2], dir_fd=dfd, follow_symlinks=False)
            elif self.defer_root:
                self.root_attrs = attrs
                return
            self.dirs.append((rel, attrs))
            return
        dfd, base = self._place(rel)
        if typeflag in (b"0", b"\0", b"7"):
            fd = self._create(lambda: os.open(base, NEW_FILE_FLAGS, 0o600, dir_fd=dfd), dfd, base, rel)
            self.file = (fd, attrs)
            if not size:
                self._close_file()
        elif typeflag == b"2":
            self._create(lambda: os.symlink(linkname, base, dir_fd=dfd), dfd, base, rel)
            if self.same_owner:
                os.chown(base, attrs[1], attrs[2], dir_fd=dfd, follow_symlinks=False)
            os.utime(base, ns=(attrs[3], attrs[3]), dir_fd=dfd, follow_symlinks=False)
        elif typeflag == b"1":
            target = clean_name(linkname)
            thead, _sep, tbase = target.rpartition("/")
            tfd = self._open_dir(thead, rel)
            try:
                self._create(lambda: os.link(tbase, base, src_dir_fd=tfd, dst_dir_fd=dfd,
                                             follow_symlinks=False), dfd, base, rel)
            finally:
                os.close(tfd)
        elif typeflag == b"6":
            self._create(lambda: os.mkfifo(base, 0o600, dir_fd=dfd), dfd, base, rel)
            fd = os.open(base, SPECIAL_FLAGS, dir_fd=dfd)
            try:
                self.apply_attrs(fd, attrs)
            finally:
                os.close(fd)

    def _payload(self, chunk, data_bytes):
        if not data_bytes:
            return
        write_all(self.file[0], chunk[:data_bytes])
        if not self.skip:
            self._close_file()

    def _close_file(self):
        fd, attrs = self.file
        self.file = None
        try:
            self.apply_attrs(fd, attrs)
        finally:
            os.close(fd)

    def _end(self):
        # A directory comes after its parent in the archive: in reverse order, every one gets
        # its (possibly read-only) mode before its parent does.
        for rel, attrs in reversed(self.dirs):
            self.apply_attrs(self._dir_fd(rel, rel, create=False), attrs)
        self._drop_stack()
        self.dirs = []

    def close(self):
        """Release the descriptors (after an error: what was written stays as it is)."""
        if self.file is not None:
            os.close(self.file[0])
            self.file = None
        self._drop_stack()


def extract_chunks(chunks, extractor):
    """Feed every chunk of the tar bytes ``chunks`` to ``extractor`` (a TarExtractor), to the
    very end; return its summary. Its descriptors are released in any case."""
    try:
        for data in chunks:
            extractor.feed(data)
        return extractor.finish()
    finally:
        extractor.close()


class _BlockStream(io.BytesIO):
    """Header blocks followed by an end-of-archive marker, readable by tarfile."""

    def __init__(self, blocks):
        super().__init__(blocks + ZERO_BLOCK * 2)


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


def _members(tar, what):
    try:
        yield from tar
    except tarfile.TarError as exc:
        raise IntegrityError("%s is not a valid tar archive: %s" % (what, exc)) from None


def checked_members(tar, checker, root, counts, what="archive"):
    """Members of ``tar`` checked and renamed relative to ``root`` (for tarfile.extractall)."""
    for member in _members(tar, what):
        rel = checker.check(member)
        counts[kind_of(member)] += 1
        yield renamed(member, rel, root)


def directory_members(root):
    """(absolute path, arcname) pairs of a directory tree, parents before children, root first.

    Names are sorted within a directory; symlinks are listed, never followed.
    """
    yield root, "."
    stack = [(root, ".")]
    while stack:
        path, arc = stack.pop()
        try:
            with os.scandir(path) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            raise IntegrityError("cannot list %s: %s" % (path, exc.strerror)) from None
        subdirs = []
        for entry in entries:
            child_arc = "%s/%s" % (arc, entry.name)
            yield entry.path, child_arc
            try:
                if entry.is_dir(follow_symlinks=False):
                    subdirs.append((entry.path, child_arc))
            except OSError:
                pass
        stack.extend(reversed(subdirs))
