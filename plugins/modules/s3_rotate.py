#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: s3_rotate
short_description: Grandfather-father-son retention of the backups at a storage location
version_added: 0.1.0
description:
  - Deletes the backups a retention policy does not keep, series by series, at a file:// or
    s3:// location, with the semantics of restic C(forget) and safety rules no policy can weaken.
  - Each bucket rule (O(keep_last), O(keep_hourly), O(keep_daily), O(keep_weekly),
    O(keep_monthly), O(keep_yearly)) scans the backups newest first and keeps the newest backup of
    each of its N most recent buckets that contain backups; V(-1) is unlimited. Rules are ORed.
    A rule that still has count left after the scan also keeps the oldest backup.
  - O(keep_within) keeps every backup created within that duration of the newest backup (not of
    the current time), so a backup job that stopped cannot age every backup out.
  - The time of a backup is its creation time as recorded in its key and manifest, never the
    storage object's modification time.
  - "Safety: an empty policy is refused; the O(min_keep) newest backups are always kept; the
    newest verified backup (a restore test passed) and every newer one are kept; backups under an
    S3 Object Lock retention date or legal hold are kept and reported; backups dated in the future
    are kept and reported as anomalies."
  - "Fail closed: when a manifest read to find the newest verified backup cannot be read (written
    by a newer version of the collection, corrupt, access denied, a KMS error, a server error after
    the retries), that backup may be the newest verified one: it and every other backup of its
    series are kept, with the reasons V(manifest unreadable), V(newer than an unreadable manifest)
    and V(older than an unreadable manifest), reported in RV(series.anomalies) and as a warning.
    The other series are rotated as usual."
  - Artifacts without a manifest (failed or interrupted backups), hidden partial files of the
    file backend and incomplete S3 multipart uploads are deleted (aborted) only when older than
    O(orphan_grace). The pieces of one backup go together (a running backup's finished companion
    stays while its main artifact is still being written), and nothing of a backup whose
    in-flight marker is live (written by the backup modules while they run) is touched, whatever
    its age. A series whose only content is such leftovers (its first backup was killed) is
    rotated too.
  - A backup is deleted artifacts first, manifest last, in a separate later request; a backup
    whose artifact could not be deleted keeps its manifest.
  - Each series is rotated holding its run lock (C(<series>/.opskit-lock), see O(lock_timeout)),
    which M(opskit.runbook.pg_backup) verifications and M(opskit.runbook.volume_backup) runs take
    too, so a verification or a quiesced backup of the same series is never rotated under it.
    Rotating a whole location takes the locks of every series found, in name order.
author:
  - opskit.runbook developers (@opskit-runbook)
extends_documentation_fragment:
  - opskit.runbook.storage
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details: Computes and returns the same plan and deletes nothing.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in diff mode).
    support: full
    details: Before and after lists of C(series/id) of the backups.
options:
  series:
    description:
      - Only this series. It must exist at the location (backups, artifacts or leftovers of an
        interrupted backup).
      - Left out (null), every series at the location, each rotated on its own, including series
        whose only content is an interrupted backup.
      - An empty string is refused (a template that renders empty never means every series).
    type: str
  keep_last:
    description:
      - Keep the N newest backups. V(-1) keeps all.
    type: int
  keep_hourly:
    description:
      - Keep the newest backup of each of the N most recent hours that have backups. V(-1) is unlimited.
    type: int
  keep_daily:
    description:
      - Keep the newest backup of each of the N most recent days that have backups. V(-1) is unlimited.
    type: int
  keep_weekly:
    description:
      - Keep the newest backup of each of the N most recent ISO weeks (starting Monday) that have
        backups. V(-1) is unlimited.
    type: int
  keep_monthly:
    description:
      - Keep the newest backup of each of the N most recent months that have backups. V(-1) is unlimited.
    type: int
  keep_yearly:
    description:
      - Keep the newest backup of each of the N most recent years that have backups. V(-1) is unlimited.
    type: int
  keep_within:
    description:
      - Keep every backup created within this duration before the newest backup.
      - A duration such as V(36h), V(30d), V(2w) or V(1y6m) (units y, m (months), w, d, h, min, s).
    type: str
  timezone:
    description:
      - IANA time zone in which hour, day, week, month and year boundaries are computed, for
        example V(Europe/Berlin).
    type: str
    default: UTC
  min_keep:
    description:
      - The O(min_keep) newest backups of each series are always kept, whatever the rules keep
        besides them. With 3 backups on one day, O(keep_daily=2) and O(min_keep=2), all three are
        kept (the newest by the daily rule, the second by O(min_keep), the oldest as the
        V(oldest daily)).
      - The reason V(min_keep N) is given only to backups no other rule keeps.
      - V(0) adds nothing to the rules.
    type: int
    default: 1
  orphan_grace:
    description:
      - Artifacts without a manifest, partial files and incomplete uploads are deleted only when
        older than this (a backup may still be running). Their age is the storage modification or
        initiation time; all the pieces of one backup must be older.
      - At least V(1h); a shorter grace is refused. A backup that runs longer than the grace is
        protected by its in-flight marker (S3-compatible servers such as moto date uploads
        wrongly, so the initiation time alone cannot be trusted).
    type: str
    default: 24h
  verified_lookback:
    description:
      - How many manifests, newest first, are read at most to find the newest verified backup.
        Manifests are read only when the policy would delete something, 16 at a time, and the
        reading stops at the first verified backup.
      - The default V(-1) reads until one is found, so the newest verified backup and every newer
        one are always kept; in a series that has never been verified this costs one request per
        backup (only when something would be deleted).
      - A positive bound limits those requests but weakens the guard. When none of the manifests
        read is verified the guard does not apply (RV(series.newest_verified) is null) and an
        older verified backup may be deleted.
    type: int
    default: -1
notes:
  - "Requests: one paginated listing (1000 keys per request); manifest reads only as described in
    O(verified_lookback); on S3 one GetObjectLockConfiguration when something is to be deleted and,
    only on buckets with Object Lock enabled, one HeadObject per key to delete; then DeleteObjects
    calls of up to 1000 keys, artifacts before manifests. When a series has leftovers older than
    O(orphan_grace), one listing of its in-flight markers (and one read per live marker) and one
    HeadObject per backup id, to keep a backup that is running or was published meanwhile."
  - On a versioned bucket a deletion leaves noncurrent versions; expire them with a lifecycle rule.
  - With O(copy_to), the second location is rotated after this one, on its own (its own listing, locks and
    Object Lock checks), with the policy O(copy_to.retention) when given, else the same policy; its outcome is
    RV(copy_to). Each location so keeps its own retention.
seealso:
  - module: opskit.runbook.backup_info
"""

EXAMPLES = r"""
- name: Keep 7 daily, 4 weekly and 12 monthly backups of every series
  opskit.runbook.s3_rotate:
    location: s3://acme-backups/prod
    keep_daily: 7
    keep_weekly: 4
    keep_monthly: 12

- name: Show what a policy would delete, in local time, without deleting anything
  opskit.runbook.s3_rotate:
    location: file:///srv/backups
    series: db1-app
    keep_within: 36h
    keep_daily: 14
    timezone: Europe/Berlin
  check_mode: true
  register: plan

- name: List the planned deletions
  ansible.builtin.debug:
    msg: "{{ plan.series['db1-app'].deleted | map(attribute='id') | list }}"
"""

RETURN = r"""
location:
  description: The location that was rotated.
  returned: always
  type: str
  sample: s3://acme-backups/prod
checked_at:
  description: The time the plan was computed for (UTC, RFC 3339).
  returned: always
  type: str
  sample: "2026-11-23T09:00:00Z"
policy:
  description: The policy as applied (rules with a count of 0 are left out).
  returned: always
  type: dict
  sample: {keep_daily: 7, keep_weekly: 4, keep_within: null, timezone: UTC, min_keep: 1}
requests:
  description: Storage requests made besides the listing.
  returned: always
  type: dict
  contains:
    manifest_reads:
      description: Manifests read to find the newest verified backups.
      type: int
      returned: always
    lock_checks:
      description: Object Lock requests (GetObjectLockConfiguration and HeadObject).
      type: int
      returned: always
    delete_calls:
      description: Delete requests (each up to 1000 keys on S3); 0 in check mode.
      type: int
      returned: always
failed:
  description: Keys that could not be deleted, with the storage error (the task fails).
  returned: on a partial failure
  type: list
  elements: dict
series:
  description: The plan and its outcome, per series name.
  returned: always
  type: dict
  contains:
    kept:
      description: >-
        Kept backups, newest first, each with the reasons it was kept (the rules, V(min_keep N),
        V(newest verified), V(newer than the newest verified), the fail-closed reasons
        V(manifest unreadable), V(newer than an unreadable manifest),
        V(older than an unreadable manifest), a lock, V(future-dated)).
      type: list
      elements: dict
      returned: always
      sample:
        - {id: 20261123T020000Z-5f2a9c1e, created_at: "2026-11-23T02:00:00Z",
           reasons: ["daily 2026-11-23", "weekly 2026-W48"]}
    deleted:
      description: Deleted backups (planned ones in check mode), newest first, with id and created_at.
      type: list
      elements: dict
      returned: always
    locked:
      description: Backups the policy would delete that are under Object Lock or legal hold (kept).
      type: list
      elements: dict
      returned: always
    orphans:
      description: >-
        Artifacts without a manifest and partial files with key, size_bytes, last_modified and
        action (V(deleted) or V(kept) while younger than O(orphan_grace), locked or in flight);
        C(in_flight=true) when a live in-flight marker kept it; also the in-flight marker of a
        killed backup that has no piece left, with C(inflight_marker) (why it is stale: V(expired)
        or V(holder gone)).
      type: list
      elements: dict
      returned: always
    uploads:
      description: >-
        Incomplete multipart uploads with key, upload_id, initiated and action (V(aborted) or
        V(kept)); C(in_flight=true) when a live in-flight marker kept it.
      type: list
      elements: dict
      returned: always
    anomalies:
      description: >-
        Backups dated in the future, unreadable manifests (the reason, and that the series was
        kept: fail closed) and manifests without artifacts, with id, created_at and problem.
      type: list
      elements: dict
      returned: always
    newest_verified:
      description: Id of the newest verified backup found, or null.
      type: str
      returned: always
    manifests_read:
      description: Manifests read for this series.
      type: int
      returned: always
    counts:
      description: >-
        Numbers of backups, kept, deleted, locked, orphans_deleted, orphans_kept,
        uploads_aborted and anomalies.
      type: dict
      returned: always
    lock:
      description:
        - The run lock of the series held during the rotation (see O(lock_timeout)) - its key,
          C(waited_seconds), C(attempts), and C(taken_over), the holder of a stale lock that
          was taken over (expired, or its process gone on this machine; module, host, pid,
          started, expires) or null.
      type: dict
      returned: success, not in check mode
      sample: {key: db1-app/.opskit-lock, waited_seconds: 0.0, attempts: 1, taken_over: null}
    wal:
      description:
        - For a series with a WAL archive (M(opskit.runbook.pg_backup) O(opskit.runbook.pg_backup#module:method=physical),
          opskit-wal), C(deleted) and C(kept) WAL files, C(oldest_needed) (the position of the start segment of the oldest
          kept base backup; WAL before it is deleted, C(.history) files never) and C(reason).
      type: dict
      returned: for series with archived WAL
      sample: {deleted: 12, kept: 40, oldest_needed: "0000000200000041", reason: WAL before the start of the oldest kept base backup deleted}
copy_to:
  description:
    - The rotation of the O(copy_to) location, with the same fields as this result (RV(location), RV(policy),
      RV(series), ...).
  returned: with O(copy_to)
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._errors import NotFoundError, OpsError
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._retention.apply import diff_lists, rotate
from ansible_collections.opskit.runbook.plugins.module_utils._retention.policy import RULES, parse_policy
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import (
    location_from_params, open_copy_location, storage_argspec)

KEEP_OPTIONS = tuple("keep_%s" % rule for rule in RULES)
POLICY_OPTIONS = KEEP_OPTIONS + ("keep_within", "timezone", "min_keep")


def _rotate_copy(params, check_mode, result):
    """Rotate the copy_to location with copy_to.retention (default: the same policy)."""
    copy_to = params["copy_to"]
    retention = copy_to.get("retention") or {name: params[name] for name in POLICY_OPTIONS}
    policy = parse_policy(**dict({"timezone": "UTC", "min_keep": 1},
                                 **{k: v for k, v in retention.items() if k in POLICY_OPTIONS}))
    location = open_copy_location(copy_to)
    try:
        return rotate(location, policy, series=params["series"], orphan_grace=params["orphan_grace"],
                      verified_lookback=params["verified_lookback"], check_mode=check_mode,
                      lock_timeout=params["lock_timeout"])
    except NotFoundError as exc:
        if params["series"]:  # not copied yet (its copy failed and was reported): nothing to rotate there
            return {"changed": False, "location": location.url, "series": {}, "skipped": exc.msg}
        raise OpsError("%s rotated; its copy_to location: %s" % (result["location"], exc.msg), **result) from exc
    except OpsError as exc:
        raise OpsError("%s rotated; its copy_to location: %s" % (result["location"], exc.msg), **result) from exc


def main():
    module = AnsibleModule(
        argument_spec=storage_argspec(
            series=dict(type="str"),
            keep_within=dict(type="str"),
            timezone=dict(type="str", default="UTC"),
            min_keep=dict(type="int", default=1),
            orphan_grace=dict(type="str", default="24h"),
            verified_lookback=dict(type="int", default=-1),
            **{name: dict(type="int") for name in KEEP_OPTIONS}
        ),
        supports_check_mode=True,
    )

    def action():
        params = module.params
        policy = parse_policy(**{name: params[name] for name in POLICY_OPTIONS})
        result = rotate(location_from_params(params), policy, series=params["series"],
                        orphan_grace=params["orphan_grace"],
                        verified_lookback=params["verified_lookback"],
                        check_mode=module.check_mode, lock_timeout=params["lock_timeout"])
        if module._diff:
            result["diff"] = diff_lists(result)
        if params["copy_to"]:  # the second location, with its own policy
            result["copy_to"] = _rotate_copy(params, module.check_mode, result)
            result["changed"] = result["changed"] or result["copy_to"].get("changed", False)
        return result

    run_module(module, action)


if __name__ == "__main__":
    main()
