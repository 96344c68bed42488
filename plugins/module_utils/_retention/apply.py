# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention on a storage location: ``rotate(location, policy, ...)`` plans (plan.py) and applies.

One listing, manifest reads only for the newest backups (to find the newest verified one),
Object Lock lookups only for the objects about to be deleted, deletions in batches, artifacts
before manifests. Orphans (artifacts without a manifest, hidden partial files of the file
backend, incomplete S3 multipart uploads) are removed once older than the orphan grace.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from .._engine.catalog import backup_time, is_verified, parse_key, read_manifest, scan, validate_series
from .._errors import ConfigError, NotFoundError, StorageError
from .._storage.base import TMP_MARK
from .._timeutil import Duration, rfc3339, utcnow
from .plan import Backup, order, plan_rotation

READ_BATCH = 16


def _entry(backup, reasons=None):
    out = {"id": backup.id, "created_at": rfc3339(backup.created_at)}
    if reasons is not None:
        out["reasons"] = list(reasons)
    return out


def _parallel(location, func, jobs):
    if location.scheme == "s3" and len(jobs) > 1:
        with ThreadPoolExecutor(max_workers=min(READ_BATCH, len(jobs))) as pool:
            return list(pool.map(func, jobs))
    return [func(job) for job in jobs]


def find_newest_verified(location, series, ordered, lookback):
    """Read manifests newest first, READ_BATCH at a time, until a verified one is found.

    At most ``lookback`` manifests are read (-1: no limit). Returns (id or None, reads,
    anomalies). An unreadable manifest counts as unverified and is reported.
    """
    limit = len(ordered) if lookback < 0 else min(lookback, len(ordered))
    reads, anomalies = 0, []

    def load(backup):
        try:
            return backup, read_manifest(location, series, backup.id), None
        except StorageError as exc:  # includes IntegrityError and NotFoundError
            return backup, None, exc.msg

    for start in range(0, limit, READ_BATCH):
        batch = ordered[start:min(start + READ_BATCH, limit)]
        results = _parallel(location, load, batch)
        reads += len(batch)
        for backup, manifest, error in results:
            if error:
                anomalies.append({"id": backup.id, "created_at": rfc3339(backup.created_at),
                                  "problem": "manifest unreadable: %s" % error})
            elif is_verified(manifest):
                return backup.id, reads, anomalies
    return None, reads, anomalies


def _lock_reason(meta, now):
    why = []
    until = meta.get("ObjectLockRetainUntilDate")
    if meta.get("ObjectLockMode") and until and until > now:
        why.append("object lock %s until %s" % (meta["ObjectLockMode"], rfc3339(until)))
    if meta.get("ObjectLockLegalHoldStatus") == "ON":
        why.append("legal hold")
    return ", ".join(why)


def find_locked(location, keys, now):
    """{key: reason} for keys under an active Object Lock retention or legal hold.

    Cost: one GetObjectLockConfiguration; when the bucket has Object Lock enabled (or the
    call is denied, so we cannot tell), one HeadObject per key, 16 in parallel. Buckets
    without Object Lock cost that one request whatever the number of keys.
    Returns (locked, requests).
    """
    if location.scheme != "s3" or not keys:
        return {}, 0
    if not location.object_lock_enabled():
        return {}, 1

    def head(key):
        try:
            return key, location.call("checking Object Lock of %s" % location.url_for(key),
                                      "head_object", Bucket=location.bucket, Key=location.full_key(key))
        except NotFoundError:
            return key, {}

    locked = {}
    for key, meta in _parallel(location, head, list(keys)):
        why = _lock_reason(meta, now)
        if why:
            locked[key] = why
    return locked, 1 + len(keys)


def _temp_series(info):
    """(series, id) of a file-backend temporary ``.<name>.partial-<hex>`` file, or None."""
    directory, _sep, name = info.key.rpartition("/")
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    parsed = parse_key("%s/%s" % (directory, name[1:].split(TMP_MARK, 1)[0]))
    return parsed[:2] if parsed else None


def _orphan_file(info, delete):
    return {"key": info.key, "size_bytes": info.size, "last_modified": rfc3339(info.modified),
            "delete": delete}


def orphans(location, grouped, wanted, grace_start):
    """Per series: orphan artifacts, temp files and multipart uploads, with their action."""
    out = {name: {"files": [], "uploads": []} for name in wanted}
    for name in wanted:
        entry = grouped.get(name) or {"manifests": {}, "artifacts": {}}
        for backup_id, infos in sorted(entry["artifacts"].items()):
            if backup_id in entry["manifests"]:
                continue
            young = any(i.modified > grace_start for i in infos)
            out[name]["files"].extend(_orphan_file(info, not young) for info in infos)
    if location.scheme == "file":
        for info in location.list_temporary():
            owner = _temp_series(info)
            if owner and owner[0] in out:
                out[owner[0]]["files"].append(_orphan_file(info, info.modified <= grace_start))
    elif location.scheme == "s3":
        for key, upload_id, initiated in location.list_multipart_uploads():
            parsed = parse_key(key)
            if parsed and parsed[0] in out:
                out[parsed[0]]["uploads"].append({"key": key, "upload_id": upload_id,
                                                  "initiated": rfc3339(initiated),
                                                  "abort": initiated <= grace_start})
    return out


def _check_lookback(verified_lookback):
    if isinstance(verified_lookback, bool) or not isinstance(verified_lookback, int) \
            or verified_lookback < -1:
        raise ConfigError("verified_lookback: %r is not valid: use a count of 0 or more, or -1"
                          " for no limit" % (verified_lookback,))


def _scan(location, series):
    """The grouped listing (catalog.scan) of the series to rotate; the location must be readable."""
    if series:
        validate_series(series)
    location.check_readable()
    grouped = scan(location, series)
    if series and series not in grouped:
        raise NotFoundError("series %s not found at %s: it has no backups or artifacts"
                            % (series, location.url))
    return grouped


def _plan_series(location, name, entry, policy, lookback, now):
    backups = [Backup(i, backup_time(i)) for i in entry["manifests"]]
    plan = plan_rotation(backups, policy, now)
    verified, reads, unreadable = None, 0, []
    if plan["deleted"]:  # the guard can only change a plan that deletes something
        verified, reads, unreadable = find_newest_verified(location, name, order(backups), lookback)
        if verified is not None:
            plan = plan_rotation(backups, policy, now, newest_verified=verified)
    anomalies = plan["anomalies"] + unreadable
    for backup, _why in plan["kept"]:
        if not entry["artifacts"].get(backup.id):
            anomalies.append({"id": backup.id, "created_at": rfc3339(backup.created_at),
                              "problem": "manifest without artifacts (an interrupted deletion"
                                         " or a lost artifact)"})
    return plan, {"newest_verified": verified, "manifests_read": reads, "anomalies": anomalies}


def _keys(entry, backup_id):
    """Every key of a published backup: its artifacts, then its manifest."""
    return [i.key for i in entry["artifacts"].get(backup_id, [])] + [entry["manifests"][backup_id].key]


def _find_locked_candidates(location, grouped, plans, found, now):
    """Object Lock: only the objects about to be deleted are looked at (see find_locked)."""
    candidates = [k for name in plans for b in plans[name]["deleted"] for k in _keys(grouped[name], b.id)]
    candidates += [o["key"] for name in found for o in found[name]["files"] if o["delete"]]
    return find_locked(location, candidates, now)


def _action(item, flag, done):
    out = {k: v for k, v in item.items() if k != flag}
    out["action"] = done if item[flag] else "kept"
    return out


def _settle_series(entry, plan, res, found, locked, policy, now):
    """Apply the Object Lock holds to one series' plan and fill its result ``res``.

    Returns (artifact keys, [(manifest key, its artifact keys)]) to delete."""
    holds = {}
    for backup in plan["deleted"]:
        why = sorted({locked[k] for k in _keys(entry, backup.id) if k in locked})
        if why:
            holds[backup.id] = "; ".join(why)
    if holds:
        plan = plan_rotation([b for b, _r in plan["kept"]] + plan["deleted"], policy, now,
                             newest_verified=res["newest_verified"], holds=holds)
    artifact_keys, manifest_keys = [], []
    for backup in plan["deleted"]:
        keys = [i.key for i in entry["artifacts"].get(backup.id, [])]
        artifact_keys.extend(keys)
        manifest_keys.append((entry["manifests"][backup.id].key, keys))
    for orphan in found["files"]:
        if orphan["key"] in locked:
            orphan.update(delete=False, locked=locked[orphan["key"]])
        if orphan["delete"]:
            artifact_keys.append(orphan["key"])
    res.update(
        kept=[_entry(b, why) for b, why in plan["kept"]],
        deleted=[_entry(b) for b in plan["deleted"]],
        locked=[dict(_entry(b), reason=holds[b.id]) for b, _why in plan["kept"] if b.id in holds],
        orphans=[_action(o, "delete", "deleted") for o in found["files"]],
        uploads=[_action(u, "abort", "aborted") for u in found["uploads"]],
    )
    return artifact_keys, manifest_keys


def _counts(res):
    return {
        "backups": len(res["kept"]) + len(res["deleted"]),
        "kept": len(res["kept"]),
        "deleted": len(res["deleted"]),
        "locked": len(res["locked"]),
        "orphans_deleted": sum(1 for o in res["orphans"] if o["action"] == "deleted"),
        "orphans_kept": sum(1 for o in res["orphans"] if o["action"] == "kept"),
        "uploads_aborted": sum(1 for u in res["uploads"] if u["action"] == "aborted"),
        "anomalies": len(res["anomalies"]),
    }


def _apply(location, artifact_keys, manifest_keys, results):
    """Delete artifacts (and orphans) first; then, in a later call, the manifests of the
    backups whose artifacts are all gone (a backup whose artifact could not be deleted stays
    whole); abort stale multipart uploads. Returns [(key, message)] that failed."""
    failed = list(location.delete(artifact_keys)) if artifact_keys else []
    not_gone = {key for key, _msg in failed}
    manifests = [key for key, keys in manifest_keys if not not_gone.intersection(keys)]
    if manifests:
        failed.extend(location.delete(manifests))
    for res in results.values():
        for upload in res["uploads"]:
            if upload["action"] == "aborted":
                try:
                    location.abort_upload(upload["key"], upload["upload_id"])
                except NotFoundError:
                    pass
    return failed


def _outcome(location, policy, results, now, changed, requests, failed):
    """The result dict; a StorageError carrying it when some deletions failed."""
    for res in results.values():
        res["counts"] = _counts(res)
    result = {"changed": changed, "location": location.url, "series": results,
              "policy": policy.describe(), "checked_at": rfc3339(now), "requests": requests}
    if failed:
        result["failed"] = [{"key": key, "error": msg} for key, msg in failed]
        raise StorageError("%d object(s) could not be deleted at %s (first: %s: %s); their"
                           " backups' manifests were kept" % (len(failed), location.url,
                                                              failed[0][0], failed[0][1]), **result)
    return result


def rotate(location, policy, series=None, orphan_grace="24h", verified_lookback=-1,
           check_mode=False, now=None):
    """Plan and (unless check_mode) apply the policy at ``location``; return the result dict.

    Requests: one paginated listing; manifest reads only while looking for the newest verified
    backup (none when the policy deletes nothing); Object Lock lookups only for the keys about
    to be deleted (see find_locked); then ceil(keys / 1000) DeleteObjects calls for artifacts
    and orphans, and a later ceil(manifests / 1000) for the manifests.
    """
    now = now or utcnow()
    grace = Duration.parse(orphan_grace, "orphan_grace")
    _check_lookback(verified_lookback)
    grouped = _scan(location, series)
    found = orphans(location, grouped, sorted(grouped), grace.before(now))
    results, plans = {}, {}
    for name in sorted(grouped):
        plans[name], results[name] = _plan_series(location, name, grouped[name], policy,
                                                  verified_lookback, now)
    locked, lock_requests = _find_locked_candidates(location, grouped, plans, found, now)
    artifact_keys, manifest_keys = [], []
    for name, res in results.items():
        keys, manifests = _settle_series(grouped[name], plans[name], res, found[name], locked, policy, now)
        artifact_keys.extend(keys)
        manifest_keys.extend(manifests)
    changed = bool(artifact_keys or manifest_keys
                   or any(u["action"] == "aborted" for r in results.values() for u in r["uploads"]))
    failed = []
    if changed and not check_mode:
        failed = _apply(location, artifact_keys, manifest_keys, results)
    requests = {"manifest_reads": sum(r["manifests_read"] for r in results.values()),
                "lock_checks": lock_requests,
                "delete_calls": 0 if check_mode else
                -(-len(artifact_keys) // 1000) + -(-len(manifest_keys) // 1000)}
    return _outcome(location, policy, results, now, changed, requests, failed)


def diff_lists(before_result):
    """Diff mode: before/after lists of ``series/id`` lines."""
    before, after = [], []
    for name, res in sorted(before_result["series"].items()):
        ids = sorted([k["id"] for k in res["kept"]] + [d["id"] for d in res["deleted"]])
        before.extend("%s/%s" % (name, i) for i in ids)
        after.extend("%s/%s" % (name, k["id"]) for k in sorted(res["kept"], key=lambda k: k["id"]))
    return {"before": "\n".join(before) + ("\n" if before else ""),
            "after": "\n".join(after) + ("\n" if after else ""),
            "before_header": "%s (backups)" % before_result["location"],
            "after_header": "%s (backups)" % before_result["location"]}
