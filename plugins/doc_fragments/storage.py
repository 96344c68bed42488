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
      - On S3 an artifact larger than one part is a multipart upload, in parts of 5 MiB for backups up to
        about 24 GiB (larger parts for larger backups, so that 10,000 parts cover twice the expected
        size). Up to 3 parts upload at once while the next one fills (about 20 MiB of buffers), 2
        when the parts are larger. A failed part aborts the whole upload; nothing half-written is listed.
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
  lock_timeout:
    description:
      - Seconds to wait for the run lock of a series (C(<series>/.opskit-lock)), from V(0) (fail at
        once when it is held) to V(86400). M(opskit.runbook.s3_rotate), M(opskit.runbook.pg_backup)
        with O(opskit.runbook.pg_backup#module:state=verified) and M(opskit.runbook.volume_backup)
        take it, so that two runs never rotate, verify or quiesce the same series at once. A run
        that waits longer fails with one line naming the holder (module, pid, host, since when).
      - A held lock is renewed every 5 minutes and expires 15 minutes after its last renewal. The
        lock of a killed run is taken over, with a warning naming its holder, at once when that
        run was on the same machine and its process is gone, else once it expired.
        Check mode never takes the lock. Other modules ignore this option.
    type: int
    default: 600
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
  encrypt_recipients:
    description:
      - Age public keys (C(age1...), from C(age-keygen -y)) to encrypt every new backup to, client-side,
        in the age format (age-encryption.org/v1, X25519), which the C(age) CLI reads.
      - Each artifact and companion is compressed, then encrypted (its key gets the suffix C(.age)), then
        hashed. The manifest's sha256 is over the stored bytes, so rotation, M(opskit.runbook.backup_info)
        and integrity checks need no key.
      - The manifest records C(encryption.client_side=age) and each recipient's fingerprint
        (C(sha256:) and the first 16 hex digits of the sha256 of its C(age1...) text), never a key.
      - Without it backups are not encrypted client-side (C(client_side=none)).
    type: list
    elements: str
  decrypt_identities:
    description:
      - Age identities (C(AGE-SECRET-KEY-1...)) that restores and verifications decrypt encrypted backups
        with, while streaming. Never logged.
      - Before anything is restored, each artifact's header must open with one of them (or of
        O(decrypt_identity_files)); otherwise the task fails with one line and no target is touched.
    type: list
    elements: str
  decrypt_identity_files:
    description:
      - Age identity files on the managed host (the output of C(age-keygen)), as an alternative to
        O(decrypt_identities). A file that group or others may access (mode other than C(0600)/C(0400))
        is refused.
    type: list
    elements: path
  signing_key:
    description:
      - Ed25519 private key (PEM PKCS#8 or OpenSSH format, without passphrase) that signs every new
        manifest. Never logged; keep it in Ansible Vault.
      - The signature covers the canonical JSON of the manifest without its C(signature) and
        C(verification) fields (sorted keys, separators C(,) and C(:), ASCII), and so every
        artifact's sha256. It is stored as C(signature) (C(algorithm=ed25519), C(key_id) = the key's
        OpenSSH SHA256 fingerprint, C(value) base64).
    type: str
  trusted_signing_keys:
    description:
      - Ed25519 public keys (C(ssh-ed25519 AAAA...) lines or PEM). When set, restores and
        verifications refuse a backup whose manifest is unsigned, signed by another key or altered
        after signing, with one line naming the series and the id (also when it is the latest backup,
        a planted backup is reported, never skipped).
    type: list
    elements: str
  object_lock:
    description:
      - S3 Object Lock retention for every object a new backup writes, manifest included. Each gets
        O(object_lock.mode) until O(object_lock.days) days after the backup started, set on the version just
        written (C(PutObjectRetention)) and recorded in the manifest as C(object_lock) (C(mode), C(retain_until),
        C(days)).
      - The bucket must have Object Lock enabled (checked before anything is written); otherwise, and with a
        C(file://) location, the task fails with one line and nothing is written.
      - Each manifest version that a later verification writes (the restore test's record) gets the retention
        the manifest recorded, whatever the options of the host that verifies.
      - A locked version cannot be deleted or overwritten before its date (C(COMPLIANCE) by nobody,
        C(GOVERNANCE) only with C(s3:BypassGovernanceRetention)). A delete without a version id only adds a
        delete marker. M(opskit.runbook.s3_rotate) keeps objects whose retention has not expired.
    type: dict
    suboptions:
      mode:
        description: The retention mode.
        type: str
        required: true
        choices: [GOVERNANCE, COMPLIANCE]
      days:
        description:
          - Days from the start of the backup until its objects can be deleted, a whole number (at least 1),
            or V(auto).
          - V(auto) derives them from O(object_lock.retention), the policy rotation applies, so that a backup
            unlocks when the policy may delete it. The rule is the span of the finest calendar rule set
            (C(keep_hourly) N is N hours, C(keep_daily) N is N days, C(keep_weekly) N is 7 N days,
            C(keep_monthly) N is 31 N days, C(keep_yearly) N is 366 N days), or C(keep_within) if longer,
            rounded up to whole days. The default policy of the backup role (30 daily, 12 weekly, 12 monthly)
            gives 30 days. The weekly and monthly keepers are kept longer by rotation, unlocked after that span;
            a series backed up more often than its finest rule's period keeps its extra backups (locked) until
            then. A policy with only C(keep_last), or with its finest rule V(-1), is refused.
        type: raw
        required: true
      retention:
        description:
          - The retention policy for O(object_lock.days=auto), the keep options of M(opskit.runbook.s3_rotate)
            (C(keep_hourly), C(keep_daily), C(keep_weekly), C(keep_monthly), C(keep_yearly), C(keep_within));
            other keys are ignored. The backup role passes its C(backup_retention).
        type: dict
  copy_to:
    description:
      - A second location (3-2-1) that each new backup is copied to once it is published, with its own
        endpoint and credentials. M(opskit.runbook.pg_backup) and M(opskit.runbook.volume_backup) copy;
        M(opskit.runbook.s3_rotate) also rotates it (RV(opskit.runbook.s3_rotate#module:copy_to)), with
        O(copy_to.retention); M(opskit.runbook.backup_info) also lists it
        (RV(opskit.runbook.backup_info#module:copy_to), freshness per location). Restores read O(location) only;
        to restore from the copy, give its URL and credentials as the location.
      - Checked before anything is written (reachable, not the location itself, Object Lock enabled if
        O(copy_to.object_lock) is set).
      - The copy writes an in-flight marker first, then streams each artifact from this location a chunk at a
        time (never spooled whole); the bytes read must match the manifest's sha256 and size, and the copy is
        read back from the second location and hashed again (checked on arrival). The manifest, byte for byte
        as published (a signature stays valid), is written last, so the copy exists once its manifest exists.
        An encrypted backup is copied as stored, so the copy needs no key.
      - A failed copy never un-publishes the backup here. What it wrote is removed again and the outcome is
        returned in the backup's C(copies) (C(location), C(result) V(copied) or V(failed), C(error), C(objects),
        C(copied_bytes), C(duration_seconds), C(object_lock)). Then O(copy_to.on_failure=fail) fails the task
        with one line naming the published backup and the reason (with several databases, those after it
        are not dumped), O(copy_to.on_failure=warn) warns and succeeds.
      - The connection options have the meaning of the options of the same name above, but never fall back to
        the environment variables of this location (without O(copy_to.access_key), boto3's own credential
        chain applies). O(copy_to.secret_key) and O(copy_to.session_token) are never logged.
    type: dict
    suboptions:
      location:
        description: URL of the second location, V(file:///dir) or V(s3://bucket/prefix).
        type: str
        required: true
      endpoint_url:
        description: S3 endpoint of the second location.
        type: str
      region:
        description: Its S3 region.
        type: str
      access_key:
        description: Its S3 access key id.
        type: str
      secret_key:
        description: Its S3 secret access key. Never logged.
        type: str
      session_token:
        description: Its S3 session token. Never logged.
        type: str
      storage_class:
        description: Storage class of the copies, for example V(GLACIER_IR) or V(DEEP_ARCHIVE).
        type: str
      server_side_encryption:
        description: S3 server-side encryption of the copies.
        type: str
        choices: [AES256, "aws:kms"]
      sse_kms_key_id:
        description: KMS key id with O(copy_to.server_side_encryption=aws:kms).
        type: str
      validate_certs:
        description: Verify the TLS certificate of its endpoint.
        type: bool
        default: true
      ca_bundle:
        description: CA bundle file to verify its endpoint with.
        type: path
      addressing_style:
        description: How its bucket is addressed (see O(addressing_style)).
        type: str
        choices: [path, virtual, auto]
      object_lock:
        description:
          - Object Lock of the copies, as O(object_lock) (its own mode and days). With O(object_lock.days=auto)
            and no O(copy_to.object_lock.retention), the days derive from O(copy_to.retention).
        type: dict
        suboptions:
          mode:
            choices: [GOVERNANCE, COMPLIANCE]
            description: The retention mode of the copies.
            required: true
            type: str
          days:
            description: Days from the start of the backup, or V(auto) (see O(object_lock.days)).
            required: true
            type: raw
          retention:
            description: The policy for V(auto); default O(copy_to.retention).
            type: dict
      retention:
        description:
          - The retention policy of the second location (the keep options of M(opskit.runbook.s3_rotate),
            C(keep_within), C(timezone), C(min_keep)), which M(opskit.runbook.s3_rotate) applies there.
            Default the policy of this location.
        type: dict
      on_failure:
        description: What a failed copy does to the task, V(fail) or V(warn) (the backup stays published).
        type: str
        choices: [fail, warn]
        default: fail
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
      - Worker threads for zstd. V(-1) uses one per core, at most 2 (each worker holds its own buffers, and with 4 and more
        a 1 GiB backup passes 128 MiB of memory), V(0) compresses in the calling thread, a positive count is taken as given.
    type: int
    default: -1
requirements:
  - zstandard (for O(compression=zstd))
"""
