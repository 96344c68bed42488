# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The S3 backend (s3://bucket/prefix), on boto3, imported on first use.

Writers upload multipart parts with bounded memory and abort the upload on any failure; an
object smaller than one part is one PutObject. Listings paginate, every call goes through the
one retry helper (``_retry.call_with_retry``), and botocore's errors are translated into
one-line StorageError / ConfigError messages (``_s3_error``) that keep the SDK error as their
cause.
"""

from __future__ import annotations

import os
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from .._errors import ConfigError, NotFoundError, StorageError
from .._imports import Library
from .._retry import BOTOCORE, call_with_retry, is_retryable
from .base import (S3_MAX_PARTS, UPLOAD_MEMORY, ChangedError, ExistsError, Location, MiB,
                   ObjectInfo, Reader, grown_part_size, part_size_for, parts_in_flight)

BOTO3 = Library("boto3", "boto3", "boto3.session", "botocore.config")

ADDRESSING_STYLES = ("path", "virtual", "auto")
CONDITION_FAILED = ("PreconditionFailed", "412", "ConditionalRequestConflict", "409")
NOT_IMPLEMENTED = ("NotImplemented", "501")
DOWNLOAD_CHUNK = 256 * 1024  # what a dropped connection loses at most before the resume
DENIED_CODES = ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403",
                "ExpiredToken", "InvalidToken", "AllAccessDisabled")


def sdk_errors():
    """The exception types an S3 call can raise: botocore's, and OS-level errors."""
    exceptions = BOTOCORE.load().exceptions
    return (exceptions.ClientError, exceptions.BotoCoreError, OSError)


def error_code(exc):
    """The S3 error code of a botocore ClientError ("" for other errors)."""
    response = getattr(exc, "response", None) or {}
    return (response.get("Error") or {}).get("Code", "")


def _client_error(exc, what, bucket):
    code = error_code(exc)
    status = (exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode")
    if code in ("NoSuchBucket",):
        return NotFoundError("%s: bucket %s does not exist" % (what, bucket))
    if code in ("NoSuchKey", "404", "NotFound"):
        return NotFoundError("%s: object not found" % what)
    if code in DENIED_CODES:
        return StorageError("%s: access denied by the S3 endpoint (%s): check the credentials"
                            " and the bucket policy" % (what, code))
    return StorageError("%s: S3 error %s (HTTP %s)" % (what, code or "unknown", status))


def _s3_error(exc, what, bucket):
    """Translate a botocore (or OS) error into a one-line StorageError without secrets."""
    exceptions = BOTOCORE.load().exceptions
    if isinstance(exc, exceptions.ClientError):
        return _client_error(exc, what, bucket)
    if isinstance(exc, (exceptions.NoCredentialsError, exceptions.PartialCredentialsError)):
        return ConfigError("%s: no usable S3 credentials: set access_key and secret_key, or"
                           " AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" % what)
    if isinstance(exc, (exceptions.EndpointConnectionError, exceptions.ConnectTimeoutError,
                        exceptions.ConnectionClosedError, exceptions.ReadTimeoutError)):
        return StorageError("%s: cannot reach the S3 endpoint (%s)" % (what, type(exc).__name__))
    if isinstance(exc, exceptions.SSLError):
        return StorageError("%s: TLS verification of the S3 endpoint failed; set ca_bundle or,"
                            " for testing only, validate_certs=false" % what)
    return StorageError("%s: %s" % (what, exc))


def _client(endpoint_url, region, access_key, secret_key, session_token, validate_certs, ca_bundle,
            addressing_style=None):
    """A boto3 S3 client: no SDK retries (ours wrap every call).

    With a custom endpoint (an S3-compatible store): path-style addressing unless
    ``addressing_style`` says otherwise, and checksums only where an operation requires them:
    boto3 >= 1.36 sends CRC checksums and drops Content-MD5 by default, which Ceph RGW, older
    MinIO and R2 reject on PutObject and DeleteObjects.
    """
    boto3 = BOTO3.load()
    botocore = BOTOCORE.load()  # botocore.config is imported by BOTO3
    verify = (ca_bundle or True) if validate_certs else False
    if endpoint_url and endpoint_url.startswith("http://"):
        verify = None
    session = boto3.session.Session(
        aws_access_key_id=access_key, aws_secret_access_key=secret_key,
        aws_session_token=session_token, region_name=region or "us-east-1")
    style = addressing_style or ("path" if endpoint_url else "auto")
    if style not in ADDRESSING_STYLES:
        raise ConfigError("addressing_style %r is not one of %s" % (style, ", ".join(ADDRESSING_STYLES)))
    options = dict(retries={"total_max_attempts": 1}, max_pool_connections=32,
                   s3={"addressing_style": style}, connect_timeout=10, read_timeout=60)
    if endpoint_url:
        options.update(_checksum_options(botocore.config.Config))
    return session.client("s3", endpoint_url=endpoint_url, verify=verify,
                          config=botocore.config.Config(**options))


def _checksum_options(config_class):
    """request/response checksums "when_required", where this botocore knows the settings (1.36+)."""
    known = getattr(config_class, "OPTION_DEFAULTS", {})
    return {name: "when_required" for name in ("request_checksum_calculation", "response_checksum_validation")
            if name in known}


def _retry_unless_not_implemented(exc):
    return error_code(exc) not in NOT_IMPLEMENTED and is_retryable(exc)


class S3Location(Location):
    scheme = "s3"

    def __init__(self, bucket, prefix="", endpoint_url=None, region=None, access_key=None,
                 secret_key=None, session_token=None, storage_class=None,
                 server_side_encryption=None, sse_kms_key_id=None, validate_certs=True,
                 ca_bundle=None, client=None, max_inflight_parts=None, addressing_style=None,
                 upload_memory=UPLOAD_MEMORY, **_ignored):
        if client is None:
            BOTO3.load()  # boto3 is required unless a client is given
        if len(bucket) < 3:
            raise ConfigError("location s3://%s: bucket names have at least 3 characters" % bucket)
        self.errors = sdk_errors()
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.url = "s3://%s%s" % (bucket, ("/" + self.prefix) if self.prefix else "")
        self.endpoint_url = endpoint_url
        self.storage_class = storage_class
        self.sse = server_side_encryption
        self.sse_kms_key_id = sse_kms_key_id
        # parts in flight per upload: None = as many as upload_memory holds (base.parts_in_flight);
        # a number fixes the count whatever the memory (2 was the fixed count before)
        self.max_inflight_parts = None if max_inflight_parts is None else max(1, int(max_inflight_parts))
        self.upload_memory = int(upload_memory)
        if client is None:
            client = _client(endpoint_url, region, access_key, secret_key, session_token,
                             validate_certs, ca_bundle, addressing_style)
        self.client = client
        # With checksums computed whenever supported (AWS S3: no endpoint_url), botocore sends an https
        # body through io.BytesIO for its aws-chunked trailer, which copies a bytearray and shares a
        # bytes object: there, each part goes out as one bytes copy of the buffer (as before).
        # Elsewhere the buffer itself is the body (a bytes body would be copied, joined to the headers).
        config = getattr(getattr(client, "meta", None), "config", None)
        self.bytes_bodies = getattr(config, "request_checksum_calculation", None) == "when_supported"
        self.conditional_writes = True  # False once the endpoint refused a conditional request (501)

    def full_key(self, key):
        return "%s/%s" % (self.prefix, key) if self.prefix else key

    def rel_key(self, full):
        return full[len(self.prefix) + 1:] if self.prefix else full

    def call(self, what, method, **kwargs):
        try:
            return call_with_retry(getattr(self.client, method), **kwargs)
        except self.errors as exc:
            raise _s3_error(exc, what, self.bucket) from exc

    def conditional(self, method, **kwargs):
        """A conditional request, retried except on 501 (the endpoint lacks the condition)."""
        return call_with_retry(getattr(self.client, method), retryable=_retry_unless_not_implemented, **kwargs)

    def check_readable(self):
        try:
            call_with_retry(self.client.head_bucket, Bucket=self.bucket)
        except self.errors as exc:
            err = _s3_error(exc, "location %s" % self.url, self.bucket)
            if isinstance(err, NotFoundError):
                err = NotFoundError("location %s: bucket %s does not exist" % (self.url, self.bucket))
            raise err from exc

    def check_writable(self):
        # S3 has no cheap write probe without writing; the bucket must exist and be reachable.
        self.check_readable()

    def object_lock_enabled(self):
        """True when the bucket has Object Lock enabled, or when we cannot tell (the call is denied)."""
        try:
            conf = call_with_retry(self.client.get_object_lock_configuration, Bucket=self.bucket)
        except self.errors as exc:
            return error_code(exc) != "ObjectLockConfigurationNotFoundError"
        return (conf.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"

    def list_objects(self, prefix="", hidden=True):
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
        return _S3Reader(response["Body"], "reading %s" % self.url_for(key), self)

    def read_bytes(self, key):
        def fetch():
            body = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))["Body"]
            try:
                return body.read()
            finally:
                body.close()
        try:
            return call_with_retry(fetch)
        except self.errors as exc:
            raise _s3_error(exc, "reading %s" % self.url_for(key), self.bucket) from exc

    def write_bytes(self, key, data, content_type=None):
        """Small objects (manifests): one PutObject."""
        self.call("writing %s" % self.url_for(key), "put_object", Bucket=self.bucket,
                  Key=self.full_key(key), Body=bytes(data), **self.put_args(content_type))

    def head(self, key):
        try:
            resp = call_with_retry(self.client.head_object, Bucket=self.bucket, Key=self.full_key(key))
        except self.errors as exc:
            err = _s3_error(exc, "reading %s" % self.url_for(key), self.bucket)
            if isinstance(err, NotFoundError):
                return None
            raise err from exc
        return ObjectInfo(key, resp["ContentLength"], resp["LastModified"])

    def read_versioned(self, key):
        def fetch():
            resp = self.client.get_object(Bucket=self.bucket, Key=self.full_key(key))
            try:
                return resp["Body"].read(), resp.get("ETag")
            finally:
                resp["Body"].close()
        try:
            return call_with_retry(fetch)
        except self.errors as exc:
            raise _s3_error(exc, "reading %s" % self.url_for(key), self.bucket) from exc

    def replace_bytes(self, key, data, token, content_type=None):
        """PutObject with If-Match on the ETag read; an endpoint without conditional writes
        (HTTP 501) gets an existence check right before an unconditional PutObject.
        Ceph RGW 16 refuses a PutObject's If-Match with the quoted ETag (it compares the
        unquoted one), and on a versioned bucket (Object Lock) refuses every If-Match: a
        refusal while HeadObject still shows the ETag read is retried with the ETag unquoted,
        then, refused again, treated as an endpoint without conditional writes."""
        def refused(what):
            return ChangedError("%s: the object changed since it was read" % what)
        for condition in ({"IfMatch": token}, {"IfMatch": token.strip('"')}):
            try:
                return self._put_if(key, data, content_type, condition, True, refused).get("ETag")
            except ChangedError:
                if not self._shows(key, token):
                    raise
        self.conditional_writes = False
        return self.call("writing %s" % self.url_for(key), "put_object", Bucket=self.bucket, Key=self.full_key(key),
                         Body=bytes(data), **self.put_args(content_type)).get("ETag")

    def _shows(self, key, token):
        """True when HeadObject shows the object at ETag ``token`` now."""
        try:
            return self.pin(key) == token
        except NotFoundError:
            return False

    def _put_if(self, key, data, content_type, condition, must_exist, refused):
        """A conditional PutObject: ``refused(what)`` is raised when the condition fails. On an
        endpoint without conditional writes (501), a HEAD checks that the object exists
        (``must_exist``) or not, right before an unconditional PutObject (not atomic:
        ``conditional_writes`` becomes False, for the caller to say so). Returns PutObject's answer."""
        what = "writing %s" % self.url_for(key)
        args = dict(Bucket=self.bucket, Key=self.full_key(key), Body=bytes(data), **self.put_args(content_type))
        try:
            return self.conditional("put_object", **condition, **args)
        except self.errors as exc:
            code = error_code(exc)
            if code in CONDITION_FAILED:
                raise refused(what) from exc
            if code not in NOT_IMPLEMENTED:
                raise _s3_error(exc, what, self.bucket) from exc
        self.conditional_writes = False
        exists = self.head(key) is not None
        if exists and not must_exist:
            raise refused(what)
        if must_exist and not exists:
            raise NotFoundError("%s: object not found" % what)
        return self.call(what, "put_object", **args)

    def pin(self, key):
        """The ETag of the object now (HeadObject)."""
        what = "reading %s" % self.url_for(key)
        try:
            return call_with_retry(self.client.head_object, Bucket=self.bucket, Key=self.full_key(key))["ETag"]
        except self.errors as exc:
            raise _s3_error(exc, what, self.bucket) from exc

    def download(self, key, fd, token):
        """GetObject with If-Match on the pinned ETag; a retry resumes with a Range from the
        bytes already written, still If-Match, so the copy is never a mix of two versions."""
        what = "reading %s" % self.url_for(key)
        done = [0]

        def fetch():
            args = dict(Bucket=self.bucket, Key=self.full_key(key), IfMatch=token)
            if done[0]:
                args["Range"] = "bytes=%d-" % done[0]
            body = self.client.get_object(**args)["Body"]
            try:
                for chunk in iter(lambda: body.read(DOWNLOAD_CHUNK), b""):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    done[0] += len(chunk)
            finally:
                body.close()
        try:
            call_with_retry(fetch)
        except self.errors as exc:
            if error_code(exc) in CONDITION_FAILED:
                raise ChangedError("%s: the object changed since it was pinned (overwritten meanwhile)" % what) from exc
            if isinstance(exc, OSError) and not isinstance(exc, (ConnectionError, TimeoutError)):
                raise StorageError("%s: writing the local copy failed: %s" % (what, exc.strerror or exc)) from exc
            raise _s3_error(exc, what, self.bucket) from exc
        return done[0]

    def create_exclusive(self, key, data, content_type=None):
        """PutObject with If-None-Match: * (AWS S3 since 2024, MinIO, moto); see _put_if for an
        endpoint without conditional writes. Ceph RGW 16 ignores the condition on a versioned
        bucket (Object Lock), so a write that made a version is checked against the key's
        history: right below ours must be nothing or a delete marker. Otherwise the object
        existed, ours is withdrawn (its version deleted) and ExistsError raised; of two
        racing writers, the older version wins."""
        def exists(what):
            return ExistsError("%s: the object exists already" % what)
        answer = self._put_if(key, data, content_type, {"IfNoneMatch": "*"}, False, exists)
        if answer.get("VersionId") and self._overwrote(key, answer["VersionId"]):
            what = "writing %s" % self.url_for(key)
            self.call("withdrawing %s" % self.url_for(key), "delete_object", Bucket=self.bucket,
                      Key=self.full_key(key), VersionId=answer["VersionId"])
            raise exists(what)
        return answer.get("ETag")

    def _overwrote(self, key, version):
        """True when the version right below ``version`` of ``key`` (the listing is newest first)
        is a live object: no delete marker is as new as it."""
        full = self.full_key(key)
        listed = self.call("listing the versions of %s" % self.url_for(key), "list_object_versions",
                           Bucket=self.bucket, Prefix=full)
        versions = [v for v in listed.get("Versions", []) if v["Key"] == full]
        ids = [v["VersionId"] for v in versions]
        if version not in ids or ids.index(version) + 1 == len(ids):
            return False
        below = versions[ids.index(version) + 1]["LastModified"]
        return not any(m["LastModified"] >= below for m in listed.get("DeleteMarkers", []) if m["Key"] == full)

    def delete_if(self, key, token):
        """DeleteObject with If-Match on the ETag, after a HEAD that compares it (an endpoint may
        ignore the condition); without conditional deletes (HTTP 501), an unconditional
        DeleteObject follows the HEAD."""
        what = "deleting %s" % self.url_for(key)
        if not self._still_at(key, token, what):   # a HEAD first: Ceph RGW 16 ignores If-Match here
            return False
        try:
            self.conditional("delete_object", Bucket=self.bucket, Key=self.full_key(key), IfMatch=token)
            return True
        except self.errors as exc:
            code = error_code(exc)
            if code in CONDITION_FAILED:
                raise ChangedError("%s: the object changed since it was read" % what) from exc
            if code in ("NoSuchKey", "404", "NotFound"):
                return False
            if code not in NOT_IMPLEMENTED:
                raise _s3_error(exc, what, self.bucket) from exc
        self.conditional_writes = False
        if not self._still_at(key, token, what):
            return False
        self.call(what, "delete_object", Bucket=self.bucket, Key=self.full_key(key))
        return True

    def _still_at(self, key, token, what):
        """False when the object is gone; ChangedError when its ETag is no longer ``token``."""
        try:
            current = call_with_retry(self.client.head_object, Bucket=self.bucket, Key=self.full_key(key))
        except self.errors as exc:
            if isinstance(_s3_error(exc, what, self.bucket), NotFoundError):
                return False
            raise _s3_error(exc, what, self.bucket) from exc
        if current.get("ETag") != token:
            raise ChangedError("%s: the object changed since it was read" % what)
        return True

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


class _S3Reader(Reader):
    def __init__(self, body, what, location):
        self.body, self.what, self.location = body, what, location

    def read(self, size=-1):
        try:
            return self.body.read(None if size is None or size < 0 else size)
        except self.location.errors as exc:
            raise _s3_error(exc, self.what, self.location.bucket) from exc

    def close(self):
        self.body.close()


class _S3Writer:
    """Multipart upload with several parts in flight, in bounded memory.

    The parts in flight (``parts_in_flight``: as many as ``location.upload_memory`` holds beside
    the part being filled, unless ``max_inflight_parts`` fixes the count) upload from a bounded
    pool of threads, each from its own buffer. A buffer goes back to a free list once its part is
    stored, so memory is (parts in flight + 1) * part_size, whatever the object size. The buffers
    are bytearrays, which botocore sends as they are (a bytes body would be copied once more,
    joined to the request headers); with ``location.bytes_bodies`` (AWS S3) each part in flight
    is a bytes copy instead, and one buffer is refilled. The first buffer grows with the data, so
    that a small object costs its size, not a part; it is sent with a single PutObject. The parts
    are listed in order for CompleteMultipartUpload; any failure aborts the upload, after every
    part in flight ended.
    """

    max_parts = S3_MAX_PARTS

    def __init__(self, location, key, part_size, content_type):
        self.loc, self.key, self.part_size = location, key, part_size
        self.full = location.full_key(key)
        self.what = "writing %s" % location.url_for(key)
        self.args = location.put_args(content_type)
        self.buf = bytearray()  # the part being filled: the first one grows with the data
        self.filled = 0
        self.free = []  # buffers of stored parts, for reuse
        self.upload_id = None
        self.etags = {}
        self.next_part = 0
        self.inflight = {}  # future -> its buffer
        self.pool = None
        self.limit = self._limit()
        self.peak_inflight = 0  # the most parts in flight at once (for the tests and benchmarks)
        self.done = self.aborted = False

    def _limit(self):
        if self.loc.max_inflight_parts:
            return self.loc.max_inflight_parts
        return parts_in_flight(self.part_size, self.loc.upload_memory)

    def write(self, data):
        view = memoryview(data).cast("B")
        while view:
            take = min(len(view), self.part_size - self.filled)
            if len(self.buf) == self.filled:  # a growing buffer (the first part's)
                self.buf += view[:take]
            else:
                self.buf[self.filled:self.filled + take] = view[:take]
            self.filled += take
            view = view[take:]
            if self.filled == self.part_size:
                self._make_room()
                if self.loc.bytes_bodies:
                    self._send(bytes(self.buf))  # the buffer is refilled at once
                else:
                    self._send(self.buf)
                    self.buf = self.free.pop() if self.free else bytearray(self.part_size)
                self.filled = 0
                grown = grown_part_size(self.next_part, self.part_size, self.max_parts)
                if grown != self.part_size:
                    self.part_size, self.free, self.buf = grown, [], bytearray()
                    self.limit = min(self.limit, self._limit())

    def _make_room(self):
        """Before a part: the upload created, and a slot free among the parts in flight."""
        if self.next_part >= self.max_parts:
            raise StorageError("%s: the object outgrew the %d parts of an S3 multipart upload (last part size"
                               " %d MiB); give a size hint near the real size"
                               % (self.what, self.max_parts, self.part_size // MiB))
        if self.upload_id is None:
            resp = self.loc.call(self.what, "create_multipart_upload", Bucket=self.loc.bucket,
                                 Key=self.full, **self.args)
            self.upload_id = resp["UploadId"]
            self.pool = ThreadPoolExecutor(max_workers=self.limit)
        self._reap(block=False)
        while len(self.inflight) >= self.limit:
            self._reap(block=True)

    def _send(self, chunk):
        self.next_part += 1
        self.inflight[self.pool.submit(self._upload_part, self.next_part, chunk)] = chunk
        self.peak_inflight = max(self.peak_inflight, len(self.inflight))

    def _reap(self, block):
        """Collect the parts stored meanwhile (with ``block``, wait for one at least); a failed
        part raises its error here."""
        if block:
            finished, _pending = wait(list(self.inflight), return_when=FIRST_COMPLETED)
        else:
            finished = [fut for fut in self.inflight if fut.done()]
        for fut in finished:
            buf = self.inflight.pop(fut)
            number, etag = fut.result()
            self.etags[number] = etag
            if isinstance(buf, bytearray) and len(buf) == self.part_size and len(self.free) < self.limit:
                self.free.append(buf)

    def _filled(self):
        """The data of the part being filled (the buffer itself when it holds nothing else)."""
        if self.loc.bytes_bodies:
            return bytes(memoryview(self.buf)[:self.filled])
        return self.buf if len(self.buf) == self.filled else self.buf[:self.filled]

    def _upload_part(self, number, chunk):
        resp = self.loc.call(self.what, "upload_part", Bucket=self.loc.bucket, Key=self.full,
                             UploadId=self.upload_id, PartNumber=number, Body=chunk)
        return number, resp["ETag"]

    def commit(self):
        if self.done:
            raise StorageError("%s: the upload was %s" % (self.what, "aborted" if self.aborted else "committed already"))
        try:
            if self.upload_id is None:
                self.loc.call(self.what, "put_object", Bucket=self.loc.bucket, Key=self.full,
                              Body=self._filled(), **self.args)
            else:
                if self.filled:
                    self._make_room()
                    self._send(self._filled())
                self.buf, self.filled = None, 0
                while self.inflight:
                    self._reap(block=True)
                parts = [{"PartNumber": number, "ETag": self.etags[number]} for number in sorted(self.etags)]
                if [p["PartNumber"] for p in parts] != list(range(1, self.next_part + 1)):
                    raise StorageError("%s: parts %s of the multipart upload are missing"
                                       % (self.what, sorted(set(range(1, self.next_part + 1)) - set(self.etags))))
                self.loc.call(self.what, "complete_multipart_upload", Bucket=self.loc.bucket,
                              Key=self.full, UploadId=self.upload_id, MultipartUpload={"Parts": parts})
                self.pool.shutdown()
            self.done = True
        finally:
            if not self.done:
                self.abort()

    def abort(self):
        if self.done:
            return
        self.done = self.aborted = True
        self.buf, self.free, self.filled = None, [], 0
        for fut in self.inflight:
            fut.cancel()
        if self.pool is not None:
            self.pool.shutdown(wait=True)  # no part is stored after the abort below
        self.inflight = {}
        if self.upload_id is not None:
            try:
                self.loc.abort_upload(self.key, self.upload_id)
            except StorageError:
                pass
