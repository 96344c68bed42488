# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage options of the modules, and the backend for a location URL.

``storage_argspec()`` is the shared argument spec (doc fragment ``opskit.runbook.storage``);
``open_location(url, **options)`` returns the backend for file:///dir or s3://bucket/prefix.
``location_from_params`` also hands the protection options (age encryption, manifest
signatures) to the engine as ``location.protection_options`` (see _engine/protection.py), and
``copy_to`` (a second location, see _engine/copy.py) as ``location.copy_to_options``;
``open_copy_location`` opens that second location with its own credentials.
"""

from __future__ import annotations

import copy
from urllib.parse import urlsplit

from .._errors import ConfigError
from .._imports import fallback
from .file import FileLocation
from .s3 import S3Location

STORAGE_ARGSPEC = dict(
    endpoint_url=dict(type="str", fallback=fallback("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
    region=dict(type="str", fallback=fallback("AWS_REGION", "AWS_DEFAULT_REGION")),
    access_key=dict(type="str", no_log=False, aliases=["aws_access_key_id"],
                    fallback=fallback("AWS_ACCESS_KEY_ID")),
    secret_key=dict(type="str", no_log=True, aliases=["aws_secret_access_key"],
                    fallback=fallback("AWS_SECRET_ACCESS_KEY")),
    session_token=dict(type="str", no_log=True, fallback=fallback("AWS_SESSION_TOKEN")),
    storage_class=dict(type="str"),
    server_side_encryption=dict(type="str", choices=["AES256", "aws:kms"]),
    sse_kms_key_id=dict(type="str", no_log=False),
    validate_certs=dict(type="bool", default=True),
    ca_bundle=dict(type="path", fallback=fallback("AWS_CA_BUNDLE")),
    addressing_style=dict(type="str", choices=["path", "virtual", "auto"]),
    lock_timeout=dict(type="int", default=600),  # seconds to wait for a series' run lock (_engine.lock)
)
STORAGE_OPTION_NAMES = tuple(STORAGE_ARGSPEC)
PROTECTION_ARGSPEC = dict(
    encrypt_recipients=dict(type="list", elements="str", no_log=False),
    decrypt_identities=dict(type="list", elements="str", no_log=True),
    decrypt_identity_files=dict(type="list", elements="path"),
    signing_key=dict(type="str", no_log=True),
    trusted_signing_keys=dict(type="list", elements="str", no_log=False),
    object_lock=dict(type="dict", options=dict(
        mode=dict(type="str", required=True, choices=["GOVERNANCE", "COMPLIANCE"]),
        days=dict(type="raw", required=True),  # a number of days, or "auto" (from retention)
        retention=dict(type="dict"),  # the keep_* rules of s3_rotate, for days=auto
    )),
)
# copy_to: the second location, with its own endpoint and credentials (never the primary's, never
# the AWS_* environment variables of the primary: boto3's own chain applies when none are given).
COPY_CONNECTION_OPTIONS = ("endpoint_url", "region", "access_key", "secret_key", "session_token", "storage_class",
                           "server_side_encryption", "sse_kms_key_id", "validate_certs", "ca_bundle",
                           "addressing_style")
COPY_TO_ARGSPEC = dict(copy_to=dict(type="dict", options=dict(
    {name: {k: v for k, v in STORAGE_ARGSPEC[name].items() if k not in ("fallback", "aliases")}
     for name in COPY_CONNECTION_OPTIONS},
    location=dict(type="str", required=True),
    object_lock=copy.deepcopy(PROTECTION_ARGSPEC["object_lock"]),
    retention=dict(type="dict"),
    on_failure=dict(type="str", default="fail", choices=["fail", "warn"]),
)))
LOCATION_ARGSPEC = dict(location=dict(type="str", required=True, aliases=["destination"]))
WRITE_ARGSPEC = dict(
    compression=dict(type="str", default="zstd", choices=["zstd", "gzip", "none"]),
    compression_level=dict(type="int"),
    compression_threads=dict(type="int", default=-1),
)


def storage_argspec(write=False, **extra):
    """The shared storage options (deep-copied), optionally with the compression options."""
    spec = copy.deepcopy(LOCATION_ARGSPEC)
    spec.update(copy.deepcopy(STORAGE_ARGSPEC))
    spec.update(copy.deepcopy(PROTECTION_ARGSPEC))
    spec.update(copy.deepcopy(COPY_TO_ARGSPEC))
    if write:
        spec.update(copy.deepcopy(WRITE_ARGSPEC))
    spec.update(extra)
    return spec


def open_location(url, **options):
    """Return the backend for ``url``; ``options`` are the storage options (see STORAGE_ARGSPEC)."""
    if not isinstance(url, str) or not url:
        raise ConfigError("location: a URL is required (file:///absolute/dir or s3://bucket/prefix)")
    parts = urlsplit(url)
    if parts.scheme == "file":
        if parts.netloc not in ("", "localhost"):
            raise ConfigError("location %s: file URLs take an absolute path (file:///dir)" % url)
        if not parts.path.startswith("/"):
            raise ConfigError("location %s: the path must be absolute (file:///dir)" % url)
        return FileLocation(parts.path)
    if parts.scheme == "s3":
        if not parts.netloc:
            raise ConfigError("location %s: missing bucket name (s3://bucket/prefix)" % url)
        return S3Location(parts.netloc, parts.path.strip("/"), **options)
    if not parts.scheme:
        raise ConfigError("location %r is not a URL: use file:///absolute/dir or s3://bucket/prefix" % url)
    raise ConfigError("location %s: unknown URL scheme %r (supported: file, s3)" % (url, parts.scheme))


def location_from_params(params):
    """open_location() from a module's params, with its protection options."""
    location = open_location(params["location"], **{k: params.get(k) for k in STORAGE_OPTION_NAMES})
    location.protection_options = {k: params.get(k) for k in PROTECTION_ARGSPEC}
    location.copy_to_options = params.get("copy_to") or None
    return location


def open_copy_location(options):
    """The copy_to location of ``options`` (the copy_to dict), with its own connection options and
    its own Object Lock (``protection_options``: only ``object_lock``; a copy is byte for byte, so
    it needs no key)."""
    location = open_location(options.get("location"), **{k: options.get(k) for k in COPY_CONNECTION_OPTIONS})
    lock = options.get("object_lock")
    if lock and lock.get("days") == "auto" and not lock.get("retention"):
        lock = dict(lock, retention=options.get("retention"))
    location.protection_options = {"object_lock": lock}
    return location
