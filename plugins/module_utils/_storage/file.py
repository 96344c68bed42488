# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The file backend (file:///dir): a directory tree, written through hidden temporary files.

A writer writes ``.<name>.partial-<hex>`` beside its target, fsyncs it, renames it into place
and fsyncs the directory, so a reader never sees half an object. Partial files left by killed
writers are listed by ``list_temporary`` (s3_rotate removes them after the orphan grace).

Conditional operations (``replace_bytes``, ``delete_if``) compare and act while holding a POSIX
record lock (``fcntl.lockf``, which NFS passes to its lock manager) on ``.opskit-cas/guard`` in
the object's directory, so two of them never interleave; ``create_exclusive`` is ``O_CREAT|O_EXCL``.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import os
import secrets
import stat

from .._errors import ConfigError, NotFoundError, StorageError
from .base import MiB, TMP_MARK, UTC, ChangedError, ExistsError, Location, ObjectInfo

GUARD_DIR = ".opskit-cas"  # hidden: never listed, never part of a backup


class FileLocation(Location):
    scheme = "file"

    def __init__(self, root):
        self.root = os.path.normpath(root)
        self.url = "file://" + self.root

    def path(self, key):
        if key.startswith("/") or ".." in key.split("/"):
            raise ConfigError("invalid key %r" % key)
        return os.path.join(self.root, *key.split("/"))

    def _os_error(self, exc, what):
        if exc.errno == errno.ENOENT:
            return NotFoundError("%s: %s does not exist" % (what, exc.filename or self.root))
        if exc.errno in (errno.EACCES, errno.EPERM):
            return StorageError("%s: permission denied on %s" % (what, exc.filename or self.root))
        return StorageError("%s: %s (%s)" % (what, exc.strerror, exc.filename or self.root))

    def check_readable(self):
        try:
            st = os.stat(self.root)
        except OSError as exc:
            if exc.errno in (errno.EACCES, errno.EPERM):
                raise StorageError("location %s: permission denied (cannot reach the directory)" % self.url) from exc
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NotFoundError("location %s does not exist" % self.url) from exc
            raise self._os_error(exc, "location %s" % self.url) from exc
        if not stat.S_ISDIR(st.st_mode):
            raise StorageError("location %s is not a directory" % self.url)
        if not os.access(self.root, os.R_OK | os.X_OK):
            raise StorageError("location %s: permission denied (cannot list the directory)" % self.url)

    def check_writable(self):
        probe = self.root
        while not os.path.exists(probe):
            probe = os.path.dirname(probe)
        if not os.path.isdir(probe):
            raise StorageError("location %s: %s is not a directory" % (self.url, probe))
        if not os.access(probe, os.W_OK | os.X_OK):
            raise StorageError("location %s: permission denied (cannot write to %s)" % (self.url, probe))

    def _info(self, dirpath, name):
        """The ObjectInfo of the file ``name`` in ``dirpath`` (its key relative to the root)."""
        rel = os.path.relpath(dirpath, self.root)
        key = name if rel == "." else "%s/%s" % (rel.replace(os.sep, "/"), name)
        st = os.lstat(os.path.join(dirpath, name))
        return ObjectInfo(key, st.st_size, datetime.datetime.fromtimestamp(st.st_mtime, UTC))

    def list_objects(self, prefix="", hidden=False):
        """Files whose key starts with ``prefix``. Hidden directories below the prefix's own
        directory are skipped unless ``hidden`` (the walk starts there, so a prefix such as
        ``series/.inflight/`` lists that directory)."""
        self.check_readable()
        start = self.path(prefix.rsplit("/", 1)[0]) if "/" in prefix else self.root
        if self._through_link(start):
            return []  # as before: a linked directory is never walked into
        out = []
        try:
            for dirpath, dirnames, filenames in os.walk(start, onerror=self._raise_unless_missing(start)):
                dirnames[:] = sorted(d for d in dirnames if hidden or not d.startswith("."))
                rel = os.path.relpath(dirpath, self.root)
                for name in sorted(filenames):
                    key = name if rel == "." else "%s/%s" % (rel.replace(os.sep, "/"), name)
                    if key.startswith(prefix):
                        out.append(self._info(dirpath, name))
        except OSError as exc:
            raise self._os_error(exc, "listing %s" % self.url) from exc
        return out

    def _through_link(self, path):
        while path != self.root:
            if os.path.islink(path):
                return True
            path = os.path.dirname(path)
        return False

    @staticmethod
    def _raise_unless_missing(start):
        def onerror(exc):
            if not (exc.errno in (errno.ENOENT, errno.ENOTDIR) and exc.filename == start):
                raise exc
        return onerror

    @staticmethod
    def _raise(exc):
        raise exc

    def list_temporary(self):
        """Hidden partial files left by killed writers: [(ObjectInfo with the temp key)]."""
        return [self._info(dirpath, name) for dirpath, _dirnames, filenames in os.walk(self.root)
                for name in filenames if TMP_MARK in name]

    def open_write(self, key, size_hint=None, content_type=None):
        return _FileWriter(self, key)

    def open_read(self, key):
        try:
            return open(self.path(key), "rb")
        except OSError as exc:
            raise self._os_error(exc, "reading %s" % self.url_for(key)) from exc

    def head(self, key):
        try:
            st = os.stat(self.path(key))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc, "reading %s" % self.url_for(key)) from exc
        return ObjectInfo(key, st.st_size, datetime.datetime.fromtimestamp(st.st_mtime, UTC))

    @staticmethod
    def _version(st):
        return "%d:%d:%d:%d" % (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size)

    def read_versioned(self, key):
        try:
            with open(self.path(key), "rb") as fh:
                return fh.read(), self._version(os.fstat(fh.fileno()))
        except OSError as exc:
            raise self._os_error(exc, "reading %s" % self.url_for(key)) from exc

    def replace_bytes(self, key, data, token, content_type=None):
        """Compare and rename: the new content is written beside the object, then renamed over it
        only if the object is still the file that was read (same inode, mtime and size); the
        comparison and the rename hold the directory's guard lock."""
        writer = _FileWriter(self, key)
        writer.write(data)
        with self._guard(key):
            writer.commit(expect=lambda: self._expect(key, token))
            return self._token(key)

    def _expect(self, key, token):
        current = self._token(key)
        if current is None:
            raise NotFoundError("writing %s: object not found" % self.url_for(key))
        if current != token:
            raise ChangedError("writing %s: the object changed since it was read" % self.url_for(key))

    def _token(self, key):
        try:
            return self._version(os.stat(self.path(key)))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._os_error(exc, "reading %s" % self.url_for(key)) from exc

    @contextlib.contextmanager
    def _guard(self, key):
        """An exclusive lockf on the directory's guard file; the kernel releases it if we die."""
        path = os.path.join(os.path.dirname(self.path(key)), GUARD_DIR, "guard")
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise self._os_error(exc, "locking %s" % self.url_for(key)) from exc
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def pin(self, key):
        token = self._token(key)
        if token is None:
            raise NotFoundError("reading %s: object not found" % self.url_for(key))
        return token

    def download(self, key, fd, token):
        """Copy the file if it is still the version pinned (a writer renames a new file in, so
        the open file stays the version read)."""
        what = "reading %s" % self.url_for(key)
        try:
            with open(self.path(key), "rb") as src:
                if self._version(os.fstat(src.fileno())) != token:
                    raise ChangedError("%s: the object changed since it was pinned" % what)
                total = 0
                while True:
                    chunk = src.read(MiB)
                    if not chunk:
                        return total
                    _write_all(fd, chunk)
                    total += len(chunk)
        except OSError as exc:
            raise self._os_error(exc, what) from exc

    def create_exclusive(self, key, data, content_type=None):
        """O_CREAT|O_EXCL, write, fsync the file and its directory; the token of the new file."""
        path = self.path(key)
        what = "writing %s" % self.url_for(key)
        try:
            os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError as exc:
            raise ExistsError("%s: the object exists already" % what) from exc
        except OSError as exc:
            raise self._os_error(exc, what) from exc
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
                token = self._version(os.fstat(fh.fileno()))
            _fsync_dir(os.path.dirname(path))
        except OSError as exc:
            raise self._os_error(exc, what) from exc
        return token

    def delete_if(self, key, token):
        with self._guard(key):
            current = self._token(key)
            if current is None:
                return False
            if current != token:
                raise ChangedError("deleting %s: the object changed since it was read" % self.url_for(key))
            try:
                os.unlink(self.path(key))
            except FileNotFoundError:
                return False
            except OSError as exc:
                raise self._os_error(exc, "deleting %s" % self.url_for(key)) from exc
        return True

    def delete(self, keys):
        failed = []
        for key in keys:
            try:
                os.unlink(self.path(key))
            except FileNotFoundError:
                pass
            except OSError as exc:
                failed.append((key, exc.strerror))
        return failed


def _write_all(fd, data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(directory):
    dfd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


class _FileWriter:
    def __init__(self, location, key):
        self.location = location
        self.final = location.path(key)
        directory = os.path.dirname(self.final)
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            self.tmp = os.path.join(directory, ".%s%s%s" % (os.path.basename(self.final), TMP_MARK,
                                                            secrets.token_hex(4)))
            fd = os.open(self.tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except OSError as exc:
            raise location._os_error(exc, "writing %s" % location.url_for(key)) from exc
        self.fh = os.fdopen(fd, "wb", buffering=MiB)

    def write(self, data):
        try:
            self.fh.write(data)
        except OSError as exc:
            raise self.location._os_error(exc, "writing %s" % self.final) from exc

    def commit(self, expect=None):
        """fsync, rename into place, fsync the directory; ``expect()`` may refuse just before the rename."""
        committed = False
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            if expect is not None:
                expect()
            os.rename(self.tmp, self.final)
            _fsync_dir(os.path.dirname(self.final))
            committed = True
        except OSError as exc:
            raise self.location._os_error(exc, "writing %s" % self.final) from exc
        finally:
            if not committed:
                self.abort()

    def abort(self):
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass
