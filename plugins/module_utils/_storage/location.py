# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Storage backends: a location URL (file:///dir or s3://bucket/prefix) and raw object I/O.

Keys are relative to the location and always use ``/``. Writers stream: the file backend
writes a hidden temporary file, fsyncs and renames; the S3 backend uploads multipart parts
with bounded memory and aborts the upload on any failure. Listings paginate and every S3
call goes through the one retry helper.
"""

from __future__ import annotations

import collections
import datetime
import errno
import os
import secrets
import stat
import threading
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from .._errors import ConfigError, NotFoundError, StorageError
from .._retry import call_with_retry

try:
    import boto3
    import botocore.config
    import botocore.exceptions
    HAS_BOTO3 = True
    BOTO3_IMPORT_ERROR = None
except ImportError as _exc:  # pragma: no cover - depends on the host
    HAS_BOTO3 = False
    BOTO3_IMPORT_ERROR = _exc

try:
    from ansible.module_utils.basic import env_fallback
except ImportError:  # pragma: no cover - plain Python use without ansible
    env_fallback = None

MiB = 1024 * 1024
TiB = 1024 ** 4
S3_MAX_PARTS = 10000
S3_MIN_PART = 5 * MiB
S3_MAX_PART = 5 * 1024 * MiB
DEFAULT_COVERED_SIZE = TiB
UTC = datetime.timezone.utc
TMP_MARK = ".partial-"

ObjectInfo = collections.namedtuple("ObjectInfo", "key size modified")


def _fallback(*names):
    return (env_fallback, list(names)) if env_fallback else None


STORAGE_ARGSPEC = dict(
    endpoint_url=dict(type="str", fallback=_fallback("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL")),
    region=dict(type="str", fallback=_fallback("AWS_REGION", "AWS_DEFAULT_REGION")),
    access_key=dict(type="str", no_log=False, aliases=["aws_access_key_id"],
                    fallback=_fallback("AWS_ACCESS_KEY_ID")),
    secret_key=dict(type="str", no_log=True, aliases=["aws_secret_access_key"],
                    fallback=_fallback("AWS_SECRET_ACCESS_KEY")),
    session_token=dict(type="str", no_log=True, fallback=_fallback("AWS_SESSION_TOKEN")),
    storage_class=dict(type="str"),
    server_side_encryption=dict(type="str", choices=["AES256", "aws:kms"]),
    sse_kms_key_id=dict(type="str", no_log=False),
    validate_certs=dict(type="bool", default=True),
    ca_bundle=dict(type="path", fallback=_fallback("AWS_CA_BUNDLE")),
)
STORAGE_OPTION_NAMES = tuple(STORAGE_ARGSPEC)


def part_size_for(size_hint=None):
    """Multipart part size: 10,000 parts cover twice the hint (default: at least 1 TiB)."""
    covered = 2 * int(size_hint) if size_hint else DEFAULT_COVERED_SIZE
    size = -(-covered // S3_MAX_PARTS)
    size = -(-size // MiB) * MiB
    return max(S3_MIN_PART, min(S3_MAX_PART, size))


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


# ---------------------------------------------------------------- file backend

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
                raise StorageError("location %s: permission denied (cannot reach the directory)" % self.url) from None
            if exc.errno in (errno.ENOENT, errno.ENOTDIR):
                raise NotFoundError("location %s does not exist" % self.url) from None
            raise self._os_error(exc, "location %s" % self.url) from None
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

    def list_objects(self, prefix=""):
        self.check_readable()
        out = []
        try:
            for dirpath, dirnames, filenames in os.walk(self.root, onerror=self._raise):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
                rel = os.path.relpath(dirpath, self.root)
                for name in sorted(filenames):
                    key = name if rel == "." else "%s/%s" % (rel.replace(os.sep, "/"), name)
                    if not key.startswith(prefix):
                        continue
                    st = os.lstat(os.path.join(dirpath, name))
                    out.append(ObjectInfo(key, st.st_size, datetime.datetime.fromtimestamp(st.st_mtime, UTC)))
        except OSError as exc:
            raise self._os_error(exc, "listing %s" % self.url) from None
        return out

    @staticmethod
    def _raise(exc):
        raise exc

    def list_temporary(self):
        """Hidden partial files left by killed writers: [(ObjectInfo with the temp key)]."""
        out = []
        for info in self._walk_all():
            if TMP_MARK in info.key.rsplit("/", 1)[-1]:
                out.append(info)
        return out

    def _walk_all(self):
        for dirpath, _dirnames, filenames in os.walk(self.root):
            rel = os.path.relpath(dirpath, self.root)
            for name in filenames:
                key = name if rel == "." else "%s/%s" % (rel.replace(os.sep, "/"), name)
                st = os.lstat(os.path.join(dirpath, name))
                yield ObjectInfo(key, st.st_size, datetime.datetime.fromtimestamp(st.st_mtime, UTC))

    def open_write(self, key, size_hint=None, content_type=None):
        return _FileWriter(self, key)

    def open_read(self, key):
        try:
            return open(self.path(key), "rb")
        except OSError as exc:
            raise self._os_error(exc, "reading %s" % self.url_for(key)) from None

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
            raise location._os_error(exc, "writing %s" % location.url_for(key)) from None
        self.fh = os.fdopen(fd, "wb", buffering=MiB)

    def write(self, data):
        try:
            self.fh.write(data)
        except OSError as exc:
            raise self.location._os_error(exc, "writing %s" % self.final) from None

    def commit(self):
        try:
            self.fh.flush()
            os.fsync(self.fh.fileno())
            self.fh.close()
            os.rename(self.tmp, self.final)
            dfd = os.open(os.path.dirname(self.final), os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            self.abort()
            raise self.location._os_error(exc, "writing %s" % self.final) from None

    def abort(self):
        try:
            self.fh.close()
        except OSError:
            pass
        try:
            os.unlink(self.tmp)
        except OSError:
            pass


# ------------------------------------------------------------------ S3 backend

def _s3_error(exc, what, bucket):
    """Translate a botocore exception into a one-line StorageError without secrets."""
    if isinstance(exc, StorageError):
        return exc
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        code = (response.get("Error") or {}).get("Code", "")
        status = (response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
        if code in ("NoSuchBucket",):
            return NotFoundError("%s: bucket %s does not exist" % (what, bucket))
        if code in ("NoSuchKey", "404", "NotFound"):
            return NotFoundError("%s: object not found" % what)
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                    "ExpiredToken", "InvalidToken", "AllAccessDisabled"):
            return StorageError("%s: access denied by the S3 endpoint (%s): check the credentials"
                                " and the bucket policy" % (what, code))
        return StorageError("%s: S3 error %s (HTTP %s)" % (what, code or "unknown", status))
    name = type(exc).__name__
    if name in ("NoCredentialsError", "PartialCredentialsError"):
        return ConfigError("%s: no usable S3 credentials: set access_key and secret_key, or"
                           " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" % what)
    if name in ("EndpointConnectionError", "ConnectTimeoutError", "ConnectionClosedError",
                "ReadTimeoutError"):
        return StorageError("%s: cannot reach the S3 endpoint (%s)" % (what, name))
    if name == "SSLError":
        return StorageError("%s: TLS verification of the S3 endpoint failed; set ca_bundle or,"
                            " for testing only, validate_certs=false" % what)
    return StorageError("%s: %s" % (what, exc))


class S3Location(Location):
    scheme = "s3"

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key=None,
                 secret_key=None, session_token=None, storage_class=None,
                 server_side_encryption=None, sse_kms_key_id=None, validate_certs=True,
                 ca_bundle=None, client=None, max_inflight_parts=2, **_ignored):
        if not HAS_BOTO3 and client is None:
            from .._errors import MissingLibraryError
            raise MissingLibraryError("boto3", BOTO3_IMPORT_ERROR)
        if len(bucket) < 3:
            raise ConfigError("location s3://%s: bucket names have at least 3 characters" % bucket)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = "s3://%s%s" % (bucket, ("/" + self.prefix) if self.prefix else "")
        self.endpoint_url = endpoint_url
        self.storage_class = storage_class
        self.sse = server_side_encryption
        self.sse_kms_key_id = sse_kms_key_id
        self.max_inflight_parts = max(1, int(max_inflight_parts))
        if client is None:
            verify = (ca_bundle or True) if validate_certs else False
            if endpoint_url and endpoint_url.startswith("http://"):
                verify = None
            session = boto3.session.Session(
                aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                aws_session_token=session_token, region_name=region or "us-east-1")
            config = botocore.config.Config(
                retries={"total_max_attempts": 1}, max_pool_connections=32,
                s3={"addressing_style": "path"} if endpoint_url else None,
                connect_timeout=10, read_timeout=60)
            client = session.client("s3", endpoint_url=endpoint_url, verify=verify, config=config)
        self.client = client

    def full_key(self, key):
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    def rel_key(self, full):
        return full[len(self.prefix) + 1:] if self.prefix else full

    def call(self, what, method, **kwargs):
        try:
            return call_with_retry(getattr(self.client, method), **kwargs)
        except Exception as exc:  # pylint: disable=broad-except
            raise _s3_error(exc, what, self.bucket) from None

    def check_readable(self):
        try:
            call_with_retry(self.client.head_bucket, Bucket=self.bucket)
        except Exception as exc:  # pylint: disable=broad-except
            err = _s3_error(exc, "location %s" % self.url, self.bucket)
            if isinstance(err, NotFoundError):
                err = NotFoundError("location %s: bucket %s does not exist" % (self.url, self.bucket))
            raise err from None

    def check_writable(self):
        # S3 has no cheap write probe without writing; the bucket must exist and be reachable.
        self.check_readable()

    def list_objects(self, prefix=""):
        full_prefix = self.full_key(prefix) if self.prefix else prefix
        out, token = [], None
        while True:
            kwargs = dict(Bucket=self.bucket, Prefix=full_prefix, MaxKeys=1000)
            if token:
                kwargs["ContinuationToken"] = token
            page = self.call("listing %s" % self.url, "list_objects_v2", **kwargs)
            for item in page.get("Contents", []):
                out.append(ObjectInfo(self.rel_key(item["Key"]), item["Size"], item["LastModified"]))
            if not page.get("IsTruncated"):
                return out
            token = page["NextContinuationToken"]

    def list_multipart_uploads(self):
        """Incomplete multipart uploads under the prefix: [(key, upload_id, initiated)]."""
        out, kwargs = [], dict(Bucket=self.bucket, Prefix=(self.prefix + "/") if self.prefix else "")
        while True:
            page = self.call("listing uploads in %s" % self.url, "list_multipart_uploads", **kwargs)
            for up in page.get("Uploads", []):
                out.append((self.rel_key(up["Key"]), up["UploadId"], up["Initiated"]))
            if not page.get("IsTruncated"):
                return out
            kwargs.update(KeyMarker=page.get("NextKeyMarker"), UploadIdMarker=page.get("NextUploadIdMarker"))

    def abort_upload(self, key, upload_id):
        self.call("aborting upload of %s" % self.url_for(key), "abort_multipart_upload",
                  Bucket=self.bucket, Key=self.full_key(key), UploadId=upload_id)

    def put_args(self, content_type=None):
        args = {}
        if self.storage_class:
            args["StorageClass"] = self.storage_class
        if self.sse:
            args["ServerSideEncryption"] = self.sse
            if self.sse_kms_key_id:
                args["SSEKMSKeyId"] = self.sse_kms_key_id
        if content_type:
            args["ContentType"] = content_type
        return args

    def open_write(self, key, size_hint=None, content_type=None):
        return _S3Writer(self, key, part_size_for(size_hint), content_type)

    def open_read(self, key):
        response = self.call("reading %s" % self.url_for(key), "get_object",
                             Bucket=self.bucket, Key=self.full_key(key))
        return _S3Reader(response["Body"], "reading %s" % self.url_for(key), self.bucket)

    def read_bytes(self, key):
        def fetch():
            body = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
            try:
                return body.read()
            finally:
                body.close()
        try:
            return call_with_retry(fetch)
        except Exception as exc:  # pylint: disable=broad-except
            raise _s3_error(exc, "reading %s" % self.url_for(key), self.bucket) from None

    def write_bytes(self, key, data, content_type=None):
        """Small objects (manifests): one PutObject."""
        self.call("writing %s" % self.url_for(key), "put_object", Bucket=self.bucket,
                  Key=self.full_key(key), Body=bytes(data), **self.put_args(content_type))

    def delete(self, keys):
        failed, keys = [], list(keys)
        for start in range(0, len(keys), 1000):
            batch = keys[start:start + 1000]
            result = self.call("deleting from %s" % self.url, "delete_objects", Bucket=self.bucket,
                               Delete={"Objects": [{"Key": self.full_key(k)} for k in batch],
                                       "Quiet": True})
            for err in result.get("Errors", []):
                failed.append((self.rel_key(err["Key"]), err.get("Code") or err.get("Message")))
        return failed


class _S3Reader:
    def __init__(self, body, what, bucket):
        self.body, self.what, self.bucket = body, what, bucket

    def read(self, size=-1):
        try:
            return self.body.read(None if size is None or size < 0 else size)
        except Exception as exc:  # pylint: disable=broad-except
            raise _s3_error(exc, self.what, self.bucket) from None

    def close(self):
        self.body.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class _S3Writer:
    """Multipart upload with at most ``max_inflight_parts`` parts in flight plus one buffering.

    Memory is bounded by (max_inflight_parts + 1) * part_size, whatever the object size.
    An object smaller than one part is sent with a single PutObject.
    """

    def __init__(self, location, key, part_size, content_type):
        self.loc, self.key, self.part_size = location, key, part_size
        self.full = location.full_key(key)
        self.what = "writing %s" % location.url_for(key)
        self.args = location.put_args(content_type)
        self.buf = None
        self.filled = 0
        self.upload_id = None
        self.parts = []
        self.next_part = 0
        self.futures = collections.deque()
        self.pool = None
        self.lock = threading.Lock()
        self.done = False

    def write(self, data):
        if self.buf is None:  # allocated on first use: empty writers cost nothing
            self.buf = bytearray(self.part_size)
        view = memoryview(data)
        while view:
            take = min(len(view), self.part_size - self.filled)
            self.buf[self.filled:self.filled + take] = view[:take]
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self._wait_for_slot()
                self._submit(bytes(self.buf))
                self.filled = 0

    def _submit(self, chunk):
        if self.upload_id is None:
            resp = self.loc.call(self.what, "create_multipart_upload", Bucket=self.loc.bucket,
                                 Key=self.full, **self.args)
            self.upload_id = resp["UploadId"]
            self.pool = ThreadPoolExecutor(max_workers=self.loc.max_inflight_parts)
        self._wait_for_slot()
        self.next_part += 1
        number = self.next_part
        self.futures.append(self.pool.submit(self._upload_part, number, chunk))

    def _wait_for_slot(self):
        while len(self.futures) >= self.loc.max_inflight_parts:
            self.futures.popleft().result()

    def _upload_part(self, number, chunk):
        resp = self.loc.call(self.what, "upload_part", Bucket=self.loc.bucket, Key=self.full,
                             UploadId=self.upload_id, PartNumber=number, Body=chunk)
        with self.lock:
            self.parts.append({"PartNumber": number, "ETag": resp["ETag"]})

    def commit(self):
        try:
            if self.upload_id is None:
                body = bytes(self.buf[:self.filled]) if self.buf is not None else b""
                self.loc.call(self.what, "put_object", Bucket=self.loc.bucket, Key=self.full,
                              Body=body, **self.args)
            else:
                if self.filled:
                    self._submit(bytes(self.buf[:self.filled]))
                    self.filled = 0
                while self.futures:
                    self.futures.popleft().result()
                parts = sorted(self.parts, key=lambda p: p["PartNumber"])
                self.loc.call(self.what, "complete_multipart_upload", Bucket=self.loc.bucket,
                              Key=self.full, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
                self.pool.shutdown()
            self.done = True
        except BaseException:
            self.abort()
            raise

    def abort(self):
        if self.done:
            return
        self.done = True
        self.buf = None
        self.filled = 0
        for fut in self.futures:
            fut.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True)
        if self.upload_id is not None:
            try:
                self.loc.abort_upload(self.key, self.upload_id)
            except StorageError:
                pass


LOCATION_ARGSPEC = dict(location=dict(type="str", required=True, aliases=["destination"]))
WRITE_ARGSPEC = dict(
    compression=dict(type="str", default="zstd", choices=["zstd", "gzip", "none"]),
    compression_level=dict(type="int"),
    compression_threads=dict(type="int", default=-1),
)


def storage_argspec(write=False, **extra):
    """The shared storage options (deep-copied), optionally with the compression options."""
    import copy
    spec = copy.deepcopy(LOCATION_ARGSPEC)
    spec.update(copy.deepcopy(STORAGE_ARGSPEC))
    if write:
        spec.update(copy.deepcopy(WRITE_ARGSPEC))
    spec.update(extra)
    return spec


def location_from_params(params):
    """open_location() from a module's params."""
    return open_location(params["location"], **{k: params.get(k) for k in STORAGE_OPTION_NAMES})
