#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: backup_info
short_description: List the backups at a storage location and check their age (RPO)
version_added: 0.1.0
description:
  - Lists the backups published at a file:// or s3:// location, for every series or one.
  - For each series returns the newest backup and the newest verified backup (a restore test
    passed) with their ages, so a playbook can assert a recovery point objective (RPO).
  - With O(max_age), flags each series whose newest backup is older (an RPO breach);
    O(fail_on_stale=true) turns a breach into a task failure.
  - Only published backups are listed (those with a manifest); a backup that failed or is still
    being written is never shown.
  - Anomalies are reported in RV(anomalies), never as a failure of the whole listing. They are a manifest
    that cannot be read (corrupt, of a newer version, describing another series after a series
    directory was renamed) and a backup dated more than 5 minutes in the future (the clock of the
    host that made it was ahead). Neither counts as a series' newest backup, so a future-dated
    backup never hides an RPO breach.
  - With O(copy_to), the second location is listed too and reported in RV(copy_to) (freshness per location);
    every series of this location has an entry there (a series the copy lacks has no backups and, with
    O(max_age), is stale). O(fail_on_stale=true) also fails on a series stale at the copy location. A copy
    location that cannot be listed is reported in C(copy_to.error), every series stale there, and does not fail
    the listing of this one.
  - Never changes anything.
author:
  - opskit.runbook developers (@opskit-runbook)
extends_documentation_fragment:
  - opskit.runbook.storage
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: The module only reads.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in diff mode).
    support: none
options:
  series:
    description:
      - Only this series. The series must exist (have at least one backup).
      - Default is every series at the location.
    type: str
  max_age:
    description:
      - The RPO. A series whose newest backup is older than this is stale.
      - A duration such as V(26h), V(1d), V(2w) or V(1y6m) (units y, m (months), w, d, h, min, s).
    type: str
  fail_on_stale:
    description:
      - Fail the task when a series is stale. The full report is returned all the same.
    type: bool
    default: false
  summary:
    description:
      - Return only the per-series entries (counts, sizes, the newest and newest verified backup
        and their ages, staleness), with an empty RV(backups) list.
      - The result then grows with the number of series, not of backups. Use it on large
        locations and under AWX or ansible-runner, which drop a task result larger than
        E(MAX_EVENT_RES) (700000 characters by default) from the job event.
    type: bool
    default: false
    version_added: 0.2.0
notes:
  - Reads one manifest per backup; the listing itself paginates 1000 keys per request.
"""

EXAMPLES = r"""
- name: Show what is stored in the backup bucket
  opskit.runbook.backup_info:
    location: s3://acme-backups/prod
    endpoint_url: https://minio.internal:9000
  register: stored

- name: Fail when the newest database backup is older than the 24 h RPO
  opskit.runbook.backup_info:
    location: file:///srv/backups
    series: db1-app
    max_age: 26h
    fail_on_stale: true

- name: Check the RPO of every series of a large bucket, without the list of backups
  opskit.runbook.backup_info:
    location: s3://acme-backups/prod
    max_age: 26h
    summary: true
  register: rpo

- name: Assert that a verified backup exists that is less than a week old
  ansible.builtin.assert:
    that:
      - stored.series['db1-app'].newest_verified is not none
      - stored.series['db1-app'].newest_verified_age_seconds < 7 * 86400
"""

RETURN = r"""
location:
  description: The location that was listed.
  returned: always
  type: str
  sample: s3://acme-backups/prod
checked_at:
  description: When the ages were computed (UTC, RFC 3339).
  returned: always
  type: str
  sample: "2026-11-23T09:00:00Z"
series:
  description: One entry per series, by series name.
  returned: always
  type: dict
  contains:
    count:
      description: Number of published backups.
      type: int
      returned: always
    total_size_bytes:
      description: Stored bytes of all its backups.
      type: int
      returned: always
    newest:
      description: The newest backup not dated in the future (same fields as an item of RV(backups)).
      type: dict
      returned: always
    newest_age_seconds:
      description: Age of the newest backup.
      type: int
      returned: always
    newest_verified:
      description: The newest backup whose verification passed, or null.
      type: dict
      returned: always
    newest_verified_age_seconds:
      description: Its age, or null.
      type: int
      returned: always
    stale:
      description: True when O(max_age) is set and the newest backup is older.
      type: bool
      returned: always
    wal:
      description:
        - For a series whose newest backup is a PostgreSQL base backup (M(opskit.runbook.pg_backup)
          O(opskit.runbook.pg_backup#module:method=physical)), its WAL archive - C(timelines), C(segments), C(last_segment) and
          C(last_archived_at), C(gaps) (per timeline C(after), C(before), C(first_missing), C(missing)),
          C(rpo_seconds) (now minus the archive time of the newest segment), C(newest_base_backup_age_seconds)
          and C(history_files).
      type: dict
      returned: for physical series
  sample:
    db1-app:
      count: 7
      total_size_bytes: 96468992
      newest_age_seconds: 3605
      newest_verified_age_seconds: 90005
      stale: false
stale_series:
  description: Names of the series whose newest backup is older than O(max_age).
  returned: always
  type: list
  elements: str
anomalies:
  description:
    - Manifests left out of the report, with the reason; sorted by series and id.
  returned: always
  type: list
  elements: dict
  contains:
    series:
      description: The series (directory or key prefix) the manifest was found in.
      type: str
    id:
      description: The backup id taken from the key.
      type: str
    key:
      description: The manifest key, or the artifact of a future-dated backup.
      type: str
    reason:
      description: One line, for example C(manifest ... has version '1', not an integer) or
        C(dated 2029-03-11T12:00:00Z, more than 5 minutes in the future ...).
      type: str
  sample:
    - series: db-app
      id: 20290311T120000Z-0a1b2c3d
      key: 20290311T120000Z-0a1b2c3d.bin.zst
      reason: "dated 2029-03-11T12:00:00Z, more than 5 minutes in the future (clock skew on the host that made it?)"
backups:
  description:
    - Every published backup, newest first within each series.
    - Empty with O(summary=true).
  returned: always
  type: list
  elements: dict
  contains:
    id:
      description: Backup id, C(<YYYYmmddTHHMMSSZ>-<8 hex>).
      type: str
      returned: always
      sample: 20261123T020000Z-5f2a9c1e
    series:
      description: Series name.
      type: str
      returned: always
    kind:
      description: What was backed up (V(postgres), V(volume), V(directory), ...).
      type: str
      returned: always
    created_at:
      description: Start of the backup (UTC, RFC 3339), identical to the time in its key.
      type: str
      returned: always
    completed_at:
      description: When the backup was published.
      type: str
      returned: always
    age_seconds:
      description: Seconds since RV(backups[].created_at).
      type: int
      returned: always
    size_bytes:
      description: Stored (compressed) size of the main artifact.
      type: int
      returned: always
    raw_bytes:
      description: Size before compression.
      type: int
      returned: always
    sha256:
      description: SHA-256 of the stored bytes.
      type: str
      returned: always
    compression:
      description: V(zstd), V(gzip) or V(none).
      type: str
      returned: always
    url:
      description: URL of the main artifact.
      type: str
      returned: always
    manifest_url:
      description: URL of the manifest.
      type: str
      returned: always
    verification:
      description:
        - V(unverified), V(passed) or V(failed) (a restore test's verdict), or V(error) (the last
          verification could not run (an infrastructure problem) and no verdict was ever recorded).
        - An V(error) after a V(passed) or V(failed) verdict keeps that verdict.
      type: str
      returned: always
    verified_at:
      description: When the last verification ran, or null.
      type: str
      returned: always
    client_side_encryption:
      description: V(age) when the backup is encrypted client-side (O(encrypt_recipients)), else V(none).
      type: str
      returned: always
    recipients:
      description: Fingerprints of the age recipients it is encrypted to (C(sha256:...)), never a key.
      type: list
      elements: str
      returned: always
    signed:
      description: True when the manifest carries a signature (O(signing_key)).
      type: bool
      returned: always
    signed_by:
      description: The OpenSSH SHA256 fingerprint of the key that signed it, or null.
      type: str
      returned: always
    signature_verified:
      description:
        - With O(trusted_signing_keys), true when the signature verifies with one of them and false otherwise
          (unsigned, another key, altered); null without trusted keys (not checked).
      type: bool
      returned: always
    signature_problem:
      description: Why RV(backups[].signature_verified) is false (one line), else null.
      type: str
      returned: always
    object_lock:
      description: The Object Lock retention the backup recorded (C(mode), C(retain_until)), or null.
      type: dict
      returned: always
      sample: {mode: GOVERNANCE, retain_until: "2026-12-31T02:00:00Z"}
copy_to:
  description:
    - The report of the O(copy_to) location, with the fields of this result (RV(location), RV(checked_at),
      RV(series), RV(stale_series), RV(anomalies), RV(backups)) and C(error), why it could not be listed (or null).
    - RV(series) there has an entry for every series of this location, so the freshness of each series can be
      read per location (C(series[name].newest_age_seconds), C(stale)).
  returned: with O(copy_to)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._engine.copy import copy_report
from ansible_collections.opskit.runbook.plugins.module_utils._engine.report import backup_report
from ansible_collections.opskit.runbook.plugins.module_utils._errors import OpsError
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.wal_report import add_wal_report
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import (
    location_from_params, storage_argspec)


def main():
    module = AnsibleModule(
        argument_spec=storage_argspec(
            series=dict(type="str"),
            max_age=dict(type="str"),
            fail_on_stale=dict(type="bool", default=False),
            summary=dict(type="bool", default=False),
        ),
        supports_check_mode=True,
    )

    def action():
        params = module.params
        location = location_from_params(params)
        result = add_wal_report(location, backup_report(location, params["series"], params["max_age"]))
        result["changed"] = False
        if params["summary"]:
            result["backups"] = []
        if params["copy_to"]:
            result["copy_to"] = copy_report(location, result, params["series"], params["max_age"], params["summary"])
        breaches = [", ".join(r["stale_series"]) + (" (at %s)" % r["location"] if params["copy_to"] else "")
                    for r in (result, result.get("copy_to")) if r and r["stale_series"]]
        if params["fail_on_stale"] and breaches:
            raise OpsError("RPO breach: newest backup older than %s in series %s"
                           % (params["max_age"], "; ".join(breaches)), **result)
        return result

    run_module(module, action)


if __name__ == "__main__":
    main()
