# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations


class ModuleDocFragment:
    # Storage location options, shared by every module that reads or writes backups.
    DOCUMENTATION = r"""
options:
  location:
    description:
      - Where backups are stored, as a URL.
      - V(file:///absolute/dir) is a directory of the managed host (local disk or NFS).
      - V(s3://bucket/prefix) is a bucket (and optional key prefix) of any S3-compatible endpoint.
      - Backups are laid out as C(<series>/<YYYYmmddTHHMMSSZ>-<id>.<ext>) with a
        C(<...>.manifest.json) beside each artifact; a backup exists once its manifest exists.
      - While a backup is being written, C(<series>/.inflight/<id>.json) marks it as in flight
        (start time and expiry) for rotation; it is removed when the backup is published or fails.
    type: str
    required: true
    aliases: [destination]
  endpoint_url:
    description:
      - URL of the S3 endpoint, for S3-compatible services (MinIO, Ceph RGW, Wasabi, ...).
      - Falls back to E(AWS_ENDPOINT_URL_S3), then E(AWS_ENDPOINT_URL). Default is AWS S3.
      - With an endpoint, checksums are computed and validated only where an operation requires
        them (botocore C(request_checksum_calculation) and C(response_checksum_validation) =
        V(when_required)). boto3 1.36 and later otherwise send CRC checksums without Content-MD5,
        which Ceph RGW, older MinIO and Cloudflare R2 reject on PutObject and DeleteObjects.
    type: str
  addressing_style:
    description:
      - How the bucket is addressed. V(path) puts it in the path (C(https://endpoint/bucket/key)),
        V(virtual) in the host name (C(https://bucket.endpoint/key)), V(auto) lets botocore choose.
      - Default is V(path) with O(endpoint_url) (what most S3-compatible stores expect), V(auto) without.
    type: str
    choices: [path, virtual, auto]
  region:
    description:
      - S3 region. Falls back to E(AWS_REGION), then E(AWS_DEFAULT_REGION); default V(us-east-1).
    type: str
  access_key:
    description:
      - S3 access key id. Falls back to E(AWS_ACCESS_KEY_ID), then the usual boto3 credential chain
        (shared credentials file, instance profile, ...).
    type: str
    aliases: [aws_access_key_id]
  secret_key:
    description:
      - S3 secret access key. Falls back to E(AWS_SECRET_ACCESS_KEY). Never logged.
    type: str
    aliases: [aws_secret_access_key]
  session_token:
    description:
      - S3 session token for temporary credentials. Falls back to E(AWS_SESSION_TOKEN).
    type: str
  storage_class:
    description:
      - S3 storage class for new objects, for example V(STANDARD_IA). Default is the bucket's.
    type: str
  server_side_encryption:
    description:
      - S3 server-side encryption for new objects. Recorded in each manifest.
    type: str
    choices: [AES256, "aws:kms"]
  sse_kms_key_id:
    description:
      - KMS key id when O(server_side_encryption=aws:kms).
    type: str
  validate_certs:
    description:
      - Verify the TLS certificate of an C(https) S3 endpoint. Turn off only for testing.
    type: bool
    default: true
  ca_bundle:
    description:
      - CA bundle file to verify the S3 endpoint with. Falls back to E(AWS_CA_BUNDLE).
    type: path
requirements:
  - boto3 (for s3:// locations)
"""

    # Compression options of modules that write backups.
    WRITE = r"""
options:
  compression:
    description:
      - How artifacts are compressed while they stream. V(zstd) is multithreaded and fastest.
    type: str
    choices: [zstd, gzip, none]
    default: zstd
  compression_level:
    description:
      - Compression level. zstd accepts -7 to 22 (default 3), gzip 0 to 9 (default 6).
    type: int
  compression_threads:
    description:
      - Worker threads for zstd. V(-1) uses every core, V(0) compresses in the calling thread.
    type: int
    default: -1
requirements:
  - zstandard (for O(compression=zstd))
"""
