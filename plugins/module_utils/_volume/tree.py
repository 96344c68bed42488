# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A host directory tree written into a tar stream without ever following a symlink.

``TreeWriter.write(root_fd)`` walks the tree open as ``root_fd`` with directory descriptors:
every entry is looked at with ``lstat`` relative to its directory's fd, then opened relative to
it with O_NOFOLLOW (O_NONBLOCK, so a FIFO swapped in never blocks), and the tar header comes
from ``fstat`` of what was opened, the data from that very descriptor. A user who owns files in
the tree and swaps a file or a directory for a symlink meanwhile gets a symlink member, never
the link's target. Subdirectories are entered the same way, and only when they are still the
directory that was listed (same device and inode).

Order (the archive layout of ``_engine/tar/headers.py``): the root first, then a directory's entries
sorted by name, then each subdirectory's subtree in that order.

Entries that vanish or keep changing type while they are read are left out, and a regular
file that shrinks while it is read (logrotate's copytruncate) is padded with zeros to the size
its header announced, as GNU tar does; both are reported in ``warnings``.

Every entry's mtime is recorded exactly (a PAX ``mtime`` record with all nine digits of the
nanoseconds when it has any, or when it lies before 1970), and the ``user.*`` extended
attributes of files and directories as ``SCHILY.xattr.<name>`` records (as GNU tar --xattrs,
bsdtar and Docker write them). Holes are not recorded: a sparse file is stored with its zeros
(which the restore turns back into holes, see ``_engine/tar/extract.py``).
"""

from __future__ import annotations

import collections
import errno
import functools
import os
import stat
import tarfile

try:
    import grp
    import pwd
except ImportError:  # pragma: no cover - not on Linux
    grp = pwd = None

from .._engine.tar.extract import DIR_FLAGS, KEPT_XATTRS
from .._engine.tar.headers import MTIME_MAX, kind_of

CHUNK = 1024 * 1024
ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
ATTEMPTS = 3        # lstat + open of an entry that changes type in between
SHOWN = 5           # names listed in a warning
XATTR_PREFIX = "SCHILY.xattr."


def set_mtime(info, mtime_ns):
    """Give ``info`` the exact mtime ``mtime_ns``: a PAX record when whole seconds do not
    tell it (nanoseconds, before 1970 or past 2242), the ustar field otherwise."""
    whole, frac = divmod(mtime_ns, 1000000000)
    if not frac and 0 <= whole < MTIME_MAX:
        info.mtime = whole
        return
    sign, value = ("-", -mtime_ns) if mtime_ns < 0 else ("", mtime_ns)
    info.pax_headers["mtime"] = "%s%d.%09d" % ((sign,) + divmod(value, 1000000000))
    info.mtime = min(max(whole, 0), MTIME_MAX - 1)  # in range: tarfile keeps the record


def add_xattrs(info, fd):
    """The ``user.*`` extended attributes of the entry open as ``fd`` as PAX records (none
    where the filesystem has no xattrs)."""
    try:
        names = os.listxattr(fd)
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EPERM, errno.EACCES):
            return
        raise
    for name in sorted(names):
        if not name.startswith(KEPT_XATTRS):
            continue
        try:
            value = os.getxattr(fd, name)
        except OSError as exc:
            if exc.errno == errno.ENODATA:  # removed meanwhile
                continue
            raise
        info.pax_headers[XATTR_PREFIX + name] = value.decode("utf-8", "surrogateescape")


class _Source:
    """The open descriptor of an entry, as the ``fileobj`` of tarfile.gettarinfo/addfile.
    ``read(n)`` always returns ``n`` bytes: past the end of a file that shrank, zeros."""

    def __init__(self, fd, name):
        self.fd, self.name, self.shrunk = fd, name, 0

    def fileno(self):
        return self.fd

    def read(self, size):
        parts, left = [], size
        while left:
            data = os.read(self.fd, left)
            if not data:
                break
            parts.append(data)
            left -= len(data)
        if left:
            self.shrunk += left
            parts.append(b"\0" * left)
        return b"".join(parts)


@functools.lru_cache(maxsize=256)
def owner_names(uid, gid):
    """(user name, group name) of ``uid`` and ``gid``, "" when unknown, looked up once each
    (tarfile.gettarinfo reads the passwd and group files again for every entry)."""
    uname = gname = ""
    if pwd is not None:
        try:
            uname = pwd.getpwuid(uid)[0]
        except KeyError:
            pass
        try:
            gname = grp.getgrgid(gid)[0]
        except KeyError:
            pass
    return uname, gname


def _info(tar, st, arcname, kind, linkname=""):
    """The TarInfo of an entry from its (f|l)stat, as tarfile.gettarinfo makes it."""
    info = tar.tarinfo(arcname)
    info.type, info.linkname = kind, linkname
    info.size = st.st_size if kind == tarfile.REGTYPE else 0
    info.mode, info.uid, info.gid = st.st_mode, st.st_uid, st.st_gid
    info.uname, info.gname = owner_names(st.st_uid, st.st_gid)
    set_mtime(info, st.st_mtime_ns)
    return info


def _open_info(tar, st, arcname):
    """The TarInfo of the open regular file, directory or FIFO ``st`` (a hard link to a file
    already in the archive becomes a link member, as with gettarinfo); None for anything else."""
    mode, linkname = st.st_mode, ""
    if stat.S_ISREG(mode):
        inode = (st.st_ino, st.st_dev)
        if st.st_nlink > 1 and tar.inodes.get(inode, arcname) != arcname:
            kind, linkname = tarfile.LNKTYPE, tar.inodes[inode]
        else:
            kind = tarfile.REGTYPE
            if inode[0]:
                tar.inodes[inode] = arcname
    elif stat.S_ISDIR(mode):
        kind = tarfile.DIRTYPE
    elif stat.S_ISFIFO(mode):
        kind = tarfile.FIFOTYPE
    else:
        return None
    return _info(tar, st, arcname, kind, linkname)


class TarSink:
    """The file object tarfile writes into (mode ``w``): small writes (headers, padding) are
    gathered into writes of at least ``size`` bytes to ``out``, large ones pass through, and
    ``tell()`` counts. tarfile's own stream mode (``w|``) copies its whole buffer on every
    write: with a 1 MiB buffer, that was most of the CPU time of a backup of small files."""

    def __init__(self, out, size=CHUNK):
        self.out, self.size = out, size
        self.buf, self.pos = bytearray(), 0

    def tell(self):
        return self.pos

    def write(self, data):
        self.pos += len(data)
        if len(data) >= self.size:
            self.flush()
            self.out.write(data)
        else:
            self.buf += data
            if len(self.buf) >= self.size:
                self.flush()
        return len(data)

    def flush(self):
        if self.buf:
            data, self.buf = self.buf, bytearray()
            self.out.write(data)


class TreeWriter:
    """Writes a directory tree into the open tarfile ``tar`` (see the module docstring)."""

    def __init__(self, tar):
        self.tar = tar
        self.counts = collections.Counter()
        self.entries = self.skipped = 0
        self.left_out, self.shrank = [], []
        self.devices = []   # names of the device files left out (sockets are left out silently)

    def warnings(self):
        out = []
        if self.shrank:
            out.append("%d file(s) shrank while being read and were padded with zeros to their"
                       " size at the start: %s" % (len(self.shrank), ", ".join(self.shrank[:SHOWN])))
        if self.left_out:
            out.append("%d entr(y/ies) vanished or changed type while being read and were left out:"
                       " %s" % (len(self.left_out), ", ".join(self.left_out[:SHOWN])))
        return out

    def _add_open(self, fd, arcname):
        """Add the entry open as ``fd``; return its (st_dev, st_ino) if it is a directory."""
        source, st = _Source(fd, arcname), os.fstat(fd)
        info = _open_info(self.tar, st, arcname)
        if info is None:
            self.skipped += 1  # swapped for a socket or device file since the lstat
            if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                self.devices.append(arcname)
            return None
        add_xattrs(info, fd)
        if info.isreg():
            self.tar.addfile(info, source)
            self.counts["file_bytes"] += info.size
            if source.shrunk:
                self.shrank.append(arcname)
        else:
            self.tar.addfile(info)
        del self.tar.members[:]  # written: a stream keeps no member list (30,000 TarInfos are 30 MiB)
        self.counts[kind_of(info)] += 1
        self.entries += 1
        if info.isdir():
            return st.st_dev, st.st_ino
        return None

    def _add_link(self, dfd, name, arcname, st):
        """Add the symlink ``name``; False when it is no symlink any more."""
        try:
            target = os.readlink(name, dir_fd=dfd)
        except OSError as exc:
            if exc.errno == errno.EINVAL:
                return False
            raise
        self.tar.addfile(_info(self.tar, st, arcname, tarfile.SYMTYPE, target))
        del self.tar.members[:]
        self.counts["symlinks"] += 1
        self.entries += 1
        return True

    def _add(self, dfd, name, arcname):
        """Add entry ``name`` of the directory open as ``dfd``; return its (st_dev, st_ino)
        if it is a directory to enter."""
        try:
            for _attempt in range(ATTEMPTS):
                st = os.stat(name, dir_fd=dfd, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    if self._add_link(dfd, name, arcname, st):
                        return None
                    continue
                if not (stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode) or stat.S_ISFIFO(st.st_mode)):
                    self.skipped += 1  # sockets and device files are never opened
                    if stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                        self.devices.append(arcname)
                    return None
                try:
                    fd = os.open(name, ENTRY_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    if exc.errno == errno.ELOOP:
                        continue  # became a symlink since the lstat
                    raise
                try:
                    return self._add_open(fd, arcname)
                finally:
                    os.close(fd)
        except FileNotFoundError:
            pass
        self.left_out.append(arcname)
        return None

    def _enter(self, dfd, name, ident):
        """An fd of subdirectory ``name`` if it is still the directory ``ident``, else None."""
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=dfd)
        except OSError as exc:
            if exc.errno in (errno.ENOENT, errno.ELOOP, errno.ENOTDIR):
                return None
            raise
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) != ident:
            os.close(fd)
            return None
        return fd

    def _list(self, dfd, arc, stack):
        """Add the entries of the directory open as ``dfd``; push it with its subdirectories."""
        subdirs = []
        for name in sorted(os.listdir(dfd)):
            ident = self._add(dfd, name, "%s/%s" % (arc, name))
            if ident is not None:
                subdirs.append((name, ident))
        stack.append((dfd, arc, iter(subdirs)))

    def write(self, root_fd):
        """Write the tree of ``root_fd`` (the root as ``.``); the caller closes the tarfile."""
        self._add_open(root_fd, ".")
        stack, top = [], os.dup(root_fd)
        try:
            listed = False
            try:
                self._list(top, ".", stack)
                listed = True
            finally:
                if not listed and not stack:
                    os.close(top)
            while stack:
                dfd, arc, pending = stack[-1]
                nxt = next(pending, None)
                if nxt is None:
                    os.close(dfd)
                    stack.pop()
                    continue
                fd = self._enter(dfd, nxt[0], nxt[1])
                if fd is None:
                    self.left_out.append("%s/%s" % (arc, nxt[0]))
                    continue
                listed = False
                try:
                    self._list(fd, "%s/%s" % (arc, nxt[0]), stack)
                    listed = True
                finally:
                    if not listed:
                        os.close(fd)
        finally:
            for dfd, _arc, _pending in stack:
                os.close(dfd)
