# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What every storage backend shares: the Location interface, object listings, part sizes.

Keys are relative to the location and always use ``/``. The backends are ``file.FileLocation``
(file:///dir) and ``s3.S3Location`` (s3://bucket/prefix); ``options.open_location`` picks one
from a URL.
"""

from __future__ import annotations

import collections
import datetime

from .._errors import StorageError

MiB = 1024 * 1024
TiB = 1024 ** 4
S3_MAX_PARTS = 10000
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * 1024 * MiB
DEFAULT_COVERED_SIZE = TiB
UTC = datetime.timezone.utc
TMP_MARK = ".partial-"

GROWN_PART_CAP = 512 * MiB
# The part buffers of one S3 upload: the one filling plus those in flight. 20 MiB = 3 parts of 5 MiB in
# flight: with 5 in flight (32 MiB) a 1 GiB zstd backup through bench/storage_engine.py peaked at 132.5 MiB
# RSS, over the 128 MiB of issue 20 (see bench/RESULTS.md, "Parts in flight").
UPLOAD_MEMORY = 20 * MiB
MAX_PARTS_IN_FLIGHT = 8  # upload threads of one S3 upload

ObjectInfo = collections.namedtuple("ObjectInfo", "key size modified")


class ChangedError(StorageError):
    """A conditional write found the object changed since it was read."""


class ExistsError(StorageError):
    """An exclusive create found the object there already."""


def part_size_for(size_hint=None):
    """Multipart part size: 10,000 parts cover twice the hint (default: at least 1 TiB)."""
    covered = 2 * int(size_hint) if size_hint else DEFAULT_COVERED_SIZE
    size = -(-covered // S3_MAX_PARTS)
    size = -(-size // MiB) * MiB
    return max(S3_MIN_PART, min(S3_MAX_PART, size))


def grown_part_size(parts_used, part_size, max_parts=S3_MAX_PARTS):
    """The part size after ``parts_used`` parts: a stream larger than its size hint still fits.

    Each time half of the remaining parts are used (5,000, 7,500, 8,750, ...), the part size is
    multiplied by four, up to max(GROWN_PART_CAP, the initial size) so that memory stays bounded:
    5 MiB parts then cover about 680 GiB instead of 48 GiB. S3 accepts parts of different sizes
    (each at least 5 MiB except the last).
    """
    point, step = 0, max_parts
    while step > 1:
        step //= 2
        point += step
        if point == parts_used:
            return max(part_size, min(max(GROWN_PART_CAP, part_size), S3_MAX_PART, part_size * 4))
    return part_size


def parts_in_flight(part_size, memory=UPLOAD_MEMORY, limit=MAX_PARTS_IN_FLIGHT, floor=2):
    """How many parts of ``part_size`` bytes one upload keeps in flight: as many as fit in
    ``memory`` beside the part being filled, at most ``limit`` (the threads), and at least
    ``floor`` (the fixed count before, whatever the part size) unless the limit is lower.

    With the 5 MiB parts of a backup up to 24 GiB that is 3 parts (20 MiB of buffers); larger
    parts (6 MiB for a 25 GiB hint, 21 MiB for 100 GiB) get 2, and three buffers, as before.
    """
    return max(min(int(floor), int(limit)), min(int(limit), int(memory) // int(part_size) - 1))


class Location:
    """Interface shared by the backends."""

    scheme = None
    url = None

    def url_for(self, key):
        return "%s/%s" % (self.url.rstrip("/"), key)

    def list_objects(self, prefix="", hidden=False):
        """[ObjectInfo] of the keys under ``prefix``; ``hidden`` includes hidden directories
        (``series/.inflight/``) where the backend has them (file://)."""
        raise NotImplementedError

    def open_write(self, key, size_hint=None, content_type=None):
        raise NotImplementedError

    def open_read(self, key):
        raise NotImplementedError

    def read_bytes(self, key):
        with self.open_read(key) as stream:
            return stream.read()

    def write_bytes(self, key, data, content_type=None):
        writer = self.open_write(key, size_hint=len(data), content_type=content_type)
        written = False
        try:
            writer.write(data)
            written = True
        finally:
            if not written:
                writer.abort()
        writer.commit()

    def head(self, key):
        """The ObjectInfo of ``key``, or None when it does not exist."""
        raise NotImplementedError

    def read_versioned(self, key):
        """(bytes, token): ``token`` identifies this version of the object for replace_bytes."""
        raise NotImplementedError

    def replace_bytes(self, key, data, token, content_type=None):
        """Overwrite ``key`` only if it is still the version ``token`` (from read_versioned).

        Raises NotFoundError when the object is gone and ChangedError when it was rewritten.
        Returns the token of the new version.
        """
        raise NotImplementedError

    def pin(self, key):
        """The token of the current version of ``key`` (NotFoundError when it does not exist),
        for ``download``: what is read later is this version or an error, never another one."""
        raise NotImplementedError

    def download(self, key, fd, token):
        """Write the version ``token`` of ``key`` into the file descriptor ``fd``; return the byte
        count. A dropped connection resumes where it stopped (the retries of ``_retry``), still
        pinned. ChangedError when the object is no longer that version, NotFoundError when gone.
        """
        raise NotImplementedError

    def create_exclusive(self, key, data, content_type=None):
        """Create ``key`` only if it does not exist (atomic); return the token of the new object.

        Raises ExistsError when the object exists already (also when an earlier attempt of this
        very call was stored but its response was lost: the caller recognizes its own content).
        """
        raise NotImplementedError

    def delete_if(self, key, token):
        """Delete ``key`` only if it is still the version ``token``.

        Returns False when the object is gone already, raises ChangedError when it was rewritten.
        """
        raise NotImplementedError

    def delete(self, keys):
        """Delete keys; return a list of (key, message) that could not be deleted."""
        raise NotImplementedError

    def check_readable(self):
        raise NotImplementedError

    def check_writable(self):
        raise NotImplementedError


class Reader:
    """A file-like reader that is its own context manager: leaving the block closes it."""

    def read(self, size=-1):
        raise NotImplementedError

    def close(self):
        raise NotImplementedError

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
