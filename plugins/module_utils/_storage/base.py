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

MiB = 1024 * 1024
TiB = 1024 ** 4
S3_MAX_PARTS = 10000
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * 1024 * MiB
DEFAULT_COVERED_SIZE = TiB
UTC = datetime.timezone.utc
TMP_MARK = ".partial-"

ObjectInfo = collections.namedtuple("ObjectInfo", "key size modified")


def part_size_for(size_hint=None):
    """Multipart part size: 10,000 parts cover twice the hint (default: at least 1 TiB)."""
    covered = 2 * int(size_hint) if size_hint else DEFAULT_COVERED_SIZE
    size = -(-covered // S3_MAX_PARTS)
    size = -(-size // MiB) * MiB
    return max(S3_MIN_PART, min(S3_MAX_PART, size))


class Location:
    """Interface shared by the backends."""

    scheme = None
    url = None

    def url_for(self, key):
        return "%s/%s" % (self.url.rstrip("/"), key)

    def list_objects(self, prefix=""):
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
        try:
            writer.write(data)
        except BaseException:
            writer.abort()
            raise
        writer.commit()

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
