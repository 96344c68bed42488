# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one exception hierarchy of opskit.runbook.

Domain code raises these; only a module's main() turns them into fail_json.
Messages are one line, name the problem, and never contain secrets.
"""

from __future__ import annotations


class OpsError(Exception):
    """Base error. ``result`` holds extra fields to return with the failure."""

    def __init__(self, msg, **result):
        super().__init__(msg)
        self.msg = " ".join(str(msg).split())  # always one line
        self.result = result

    def __str__(self):
        return self.msg


class ConfigError(OpsError):
    """Bad input: an option value that cannot work."""


class StorageError(OpsError):
    """A storage location could not be read or written."""


class NotFoundError(StorageError):
    """A bucket, directory, series or backup does not exist."""


class IntegrityError(StorageError):
    """Stored bytes do not match the manifest (sha256 or size)."""


class ServiceError(OpsError):
    """A managed service (PostgreSQL, Docker, Kubernetes, ...) failed."""


class MissingLibraryError(OpsError):
    """A Python library the module needs is not installed where it runs."""

    def __init__(self, library, exc=None):
        super().__init__(
            "the Python library %s is required on the managed host but could not be imported%s"
            % (library, (": %s" % exc) if exc else "")
        )
        self.library = library
