# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Checked tar members written under a directory descriptor, nothing outside it ever reached.

``TarExtractor`` (a ``headers.TarWalker``) is fed the raw tar bytes of a restore in chunks and
writes each checked member below ``root_fd``; ``extract_chunks`` drives it to the end.

What the archive records is applied: owner (as root), mode, the mtime to the nanosecond
(PAX ``mtime``, before 1970 included), the ``user.*`` extended attributes of its
``SCHILY.xattr.*`` (or ``LIBARCHIVE.xattr.*``) records where the filesystem takes them (else a
warning names them), and every run of zero 4 KiB blocks of a file's data becomes a hole
(archives do not record holes: neither Docker nor tarfile writes GNU sparse members).
"""

from __future__ import annotations

import base64
import binascii
import errno
import os
import stat
import urllib.parse

from ..streams import write_all
from ..._errors import IntegrityError
from .headers import TarWalker, _display, _number, clean_name
from .writers import FileWriters


class ExtractError(IntegrityError):
    """Writing an archive member failed, or something outside the archive is in its way."""


DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
NEW_FILE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
SPECIAL_FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC
BLOCK = 4096                      # a run of zero blocks this size becomes a hole
ZERO = bytes(BLOCK)
KEPT_XATTRS = "user."             # other namespaces belong to the host (security, trusted, system)
SHOWN = 5
WRITERS = 2                       # threads writing regular files (FileWriters); 0: all inline
POOLED_MAX = 1024 * 1024          # larger files are written by the parsing thread itself
NOT_TAKEN = (errno.ENOTSUP, errno.EPERM, errno.EACCES, errno.E2BIG, errno.ENOSPC, errno.ERANGE)


def _ustar_attrs(block):
    """(mode, uid, gid, mtime in ns, xattrs) of a plain ustar header block."""
    return (_number(block[100:108]), _number(block[108:116]), _number(block[116:124]),
            _number(block[136:148]) * 1000000000, ())


def _xattrs(pax):
    """The (name, value) ``user.*`` extended attributes of PAX records: ``SCHILY.xattr.<name>``
    (GNU tar, Docker, bsdtar) or ``LIBARCHIVE.xattr.<url-encoded name>`` (base64 value)."""
    out = {}
    for key, value in pax.items():
        if key.startswith("SCHILY.xattr."):
            out[key[13:]] = value.encode("utf-8", "surrogateescape")
        elif key.startswith("LIBARCHIVE.xattr."):
            try:
                out.setdefault(urllib.parse.unquote(key[17:]), base64.b64decode(value + "=" * (-len(value) % 4)))
            except (binascii.Error, ValueError):
                continue
    return tuple(sorted((k, v) for k, v in out.items() if k.startswith(KEPT_XATTRS) and "\0" not in k))


def _skip_zero_blocks(fd, view):
    """os.write the BLOCK-aligned ``view`` to ``fd``, every run of zero BLOCKs skipped with
    lseek so that it stays a hole. True when ``view`` ends in such a run (nothing written there)."""
    size, start, pos = len(view), 0, 0
    while pos + BLOCK <= size:
        if view[pos:pos + BLOCK] != ZERO:
            pos += BLOCK
            continue
        end = pos + BLOCK
        while end + BLOCK <= size and view[end:end + BLOCK] == ZERO:
            end += BLOCK
        write_all(fd, view[start:pos])
        os.lseek(fd, end - pos, os.SEEK_CUR)
        start = pos = end
    write_all(fd, view[start:])
    return start == size


class SparseWriter:
    """Writes a file's data in pieces of any size to the new file open as ``fd``: every run of
    zero BLOCKs (aligned in the file) becomes a hole; ``close`` sets the size."""

    def __init__(self, fd):
        self.fd, self.size, self.tail = fd, 0, bytearray()
        self.hole_at_end = False  # the last whole blocks were skipped: the file is shorter than size

    def write(self, data):
        view = memoryview(data)
        self.size += len(view)
        if self.tail:  # complete the block started by the previous piece
            take = min(BLOCK - len(self.tail), len(view))
            self.tail += view[:take]
            view = view[take:]
            if len(self.tail) < BLOCK:
                return
            self._blocks(memoryview(self.tail))
            self.tail = bytearray()
        whole = len(view) - len(view) % BLOCK
        self._blocks(view[:whole])
        self.tail += view[whole:]

    def _blocks(self, view):
        if view:
            self.hole_at_end = _skip_zero_blocks(self.fd, view)

    def close(self):
        """Write the last partial block; give the file its size where it ends in a hole (an
        ftruncate only then: it is one more inode change per file)."""
        if self.tail:
            write_all(self.fd, self.tail)
            self.tail, self.hole_at_end = bytearray(), False
        if self.hole_at_end:
            os.ftruncate(self.fd, self.size)


def new_file_mode(attrs):
    """The mode a regular file is created with: its permission bits, never a set-id or sticky
    bit (those are set after the owner, by ``apply_attrs``). The directories above it stay 0700
    until the end of the extraction, so no one else can reach the file while it is written."""
    return attrs[0] & 0o777


def _info_attrs(info):
    """(mode, uid, gid, mtime in ns, xattrs) of a TarInfo; a PAX mtime keeps all its digits."""
    mtime = int(info.mtime * 1000000000)
    raw = info.pax_headers.get("mtime")
    if raw:
        whole, _dot, frac = raw.partition(".")
        try:
            sign = -1 if whole.startswith("-") else 1
            mtime = int(whole) * 1000000000 + sign * int((frac + "000000000")[:9] or 0)
        except ValueError:
            pass
    return info.mode, info.uid, info.gid, mtime, _xattrs(info.pax_headers)


class TarExtractor(TarWalker):
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

    Regular files of at most POOLED_MAX bytes are written by ``writers`` threads
    (``FileWriters``), whole: the parsing thread walks to the parent directory as above, hands
    a duplicate of its fd, the name, the data and the attributes over, and goes on parsing;
    the writer creates the file (O_CREAT|O_EXCL|O_NOFOLLOW under that fd), writes the data,
    then sets owner, xattrs, mode and mtime. Every other change (directories, links, fifos,
    larger files) stays in the parsing thread, in archive order, and waits first for the
    writers when it touches a name still being written (a name listed twice, a hard link to
    it, a path through it); directory attributes are set once every writer is done.
    """

    def __init__(self, root_fd, what="archive", same_owner=None, defer_root=False, writers=WRITERS):
        super().__init__(what)
        self.root_fd = root_fd
        self.defer_root = defer_root
        self.root_attrs = None
        self.same_owner = (os.geteuid() == 0) if same_owner is None else same_owner
        self.stack = []                 # (name, fd) of the directories from the root to the last used
        self.file = None                # (fd, attrs, SparseWriter, name) of the regular file being written
        self.dropped = []               # "member: xattr" the filesystem did not take
        self.dirs = []                  # (relative path, attrs) of the directories, set at the end
        self.pooled = None              # [dir fd, name, relative path, attrs, data pieces] being collected
        self.writers = FileWriters(self._write_pooled, self._discard, writers) if writers else None

    # ------------------------------------------------------------------ walking
    def _step(self, fd, part, create, done, member):
        """Open directory ``part`` under ``fd`` with O_NOFOLLOW (created when missing and
        ``create``: a parent the archive does not list)."""
        self._settle("/".join(done + [part]))
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
                                      _display(member))) from exc
            raise

    def _open_dir(self, rel, member):
        """A new fd of the existing directory ``rel``, walked from the root."""
        fd = os.dup(self.root_fd)
        done, opened = [], False
        try:
            for part in rel.split("/") if rel else ():
                nfd = self._step(fd, part, False, done, member)
                os.close(fd)
                fd = nfd
                done.append(part)
            opened = True
        finally:
            if not opened:
                os.close(fd)
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

    def _settle(self, rel):
        """Wait for the writers when ``rel`` is a file they have not written yet."""
        if self.writers is not None and rel in self.writers.pending:
            self.writers.drain()

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

    def apply_attrs(self, fd, attrs, rel=".", fresh=False):
        """Owner (as root), xattrs, mode and mtime of ``attrs`` on the open ``fd``.

        ``fresh``: a regular file this extractor just created with ``new_file_mode`` (so with no
        xattrs of its own): owner and mode are changed only where its fstat differs, since each
        change is one more inode update per file (chown before chmod still: chown clears set-id
        bits, which ``new_file_mode`` never gives)."""
        mode, uid, gid, mtime, xattrs = attrs
        if fresh:
            st = os.fstat(fd)
            if self.same_owner and (st.st_uid, st.st_gid) != (uid, gid):
                os.fchown(fd, uid, gid)
            for name, value in xattrs:
                self._setxattr(fd, name, value, rel)
            if stat.S_IMODE(st.st_mode) != mode & 0o7777:
                os.fchmod(fd, mode & 0o7777)
            os.utime(fd, ns=(mtime, mtime))
            return
        if self.same_owner:
            os.fchown(fd, uid, gid)
        for name, value in xattrs:
            self._setxattr(fd, name, value, rel)
        os.fchmod(fd, mode & 0o7777)
        os.utime(fd, ns=(mtime, mtime))

    def _setxattr(self, fd, name, value, rel):
        try:
            os.setxattr(fd, name, value)
        except OSError as exc:
            if exc.errno not in NOT_TAKEN:
                raise
            self.dropped.append("%s: %s" % (_display(rel), _display(name)))

    def summary(self):
        out = super().summary()
        if self.dropped:
            out["warnings"] = ["%d extended attribute(s) of the archive were not restored (the"
                               " filesystem refused them): %s" % (len(self.dropped), ", ".join(self.dropped[:SHOWN]))]
        return out

    # ------------------------------------------------------------------ members
    def _member(self, rel, typeflag, size, block, extra):
        if block is None:
            attrs, linkname = _info_attrs(extra), extra.linkname
        else:
            attrs, linkname = _ustar_attrs(block), extra
        self._settle(rel)
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
        if typeflag in (b"0", b"\0", b"7") and self.writers is not None and size <= POOLED_MAX:
            self.pooled = [os.dup(dfd), base, rel, attrs, []]
            if not size:
                self._submit()
        elif typeflag in (b"0", b"\0", b"7"):
            fd = self._create(lambda: os.open(base, NEW_FILE_FLAGS, new_file_mode(attrs), dir_fd=dfd), dfd, base, rel)
            self.file = (fd, attrs, SparseWriter(fd), rel)
            if not size:
                self._close_file()
        elif typeflag == b"2":
            self._create(lambda: os.symlink(linkname, base, dir_fd=dfd), dfd, base, rel)
            if self.same_owner:
                os.chown(base, attrs[1], attrs[2], dir_fd=dfd, follow_symlinks=False)
            os.utime(base, ns=(attrs[3], attrs[3]), dir_fd=dfd, follow_symlinks=False)
        elif typeflag == b"1":
            target = clean_name(linkname)
            self._settle(target)
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
                self.apply_attrs(fd, attrs, rel)
            finally:
                os.close(fd)

    def _payload(self, chunk, data_bytes):
        if not data_bytes:
            return
        if self.pooled is not None:
            self.pooled[4].append(bytes(chunk[:data_bytes]))  # a copy: the chunk is not pinned
            if not self.skip:
                self._submit()
            return
        self.file[2].write(chunk[:data_bytes])
        if not self.skip:
            self._close_file()

    def _submit(self):
        job, self.pooled = self.pooled, None
        self.writers.submit(job[2], job, sum(len(piece) for piece in job[4]))

    def _write_pooled(self, job):
        """In a writer thread: create, write and close one file of the archive."""
        dfd, base, rel, attrs, pieces = job
        try:
            fd = self._create(lambda: os.open(base, NEW_FILE_FLAGS, new_file_mode(attrs), dir_fd=dfd), dfd, base, rel)
            try:
                writer = SparseWriter(fd)
                for piece in pieces:
                    writer.write(piece)
                writer.close()
                self.apply_attrs(fd, attrs, rel, fresh=True)
            finally:
                os.close(fd)
        finally:
            os.close(dfd)

    @staticmethod
    def _discard(job):
        os.close(job[0])

    def _close_file(self):
        fd, attrs, writer, rel = self.file
        self.file = None
        try:
            writer.close()
            self.apply_attrs(fd, attrs, rel, fresh=True)
        finally:
            os.close(fd)

    def _end(self):
        # A directory comes after its parent in the archive: in reverse order, every one gets
        # its (possibly read-only) mode before its parent does, once every file is written.
        if self.writers is not None:
            self.writers.drain()
        for rel, attrs in reversed(self.dirs):
            self.apply_attrs(self._dir_fd(rel, rel, create=False), attrs, rel or ".")
        self._drop_stack()
        self.dirs = []

    def close(self):
        """Stop the writers and release the descriptors (after an error: what was written stays
        as it is, and nothing is written any more)."""
        if self.writers is not None:
            self.writers.close()
        if self.pooled is not None:
            self._discard(self.pooled)
            self.pooled = None
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
