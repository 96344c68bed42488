# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Retention on a storage location: ``rotate(location, policy, ...)`` plans (plan.py) and applies.

One listing, manifest reads only for the newest backups (to find the newest verified one; a
manifest that cannot be read keeps its whole series: fail closed), Object Lock lookups only for
the objects about to be deleted, deletions in batches, artifacts before manifests. Orphans
(artifacts without a manifest, hidden partial files of the file backend, incomplete S3
multipart uploads) are removed once every piece of their backup is older than the orphan grace
(at least MIN_ORPHAN_GRACE) and no live in-flight marker covers it; a series whose only content
is such leftovers is rotated too.

Outside check mode each series is rotated holding its run lock (``_engine.lock``): a listing
finds the series, their locks are taken (sorted), and the series are listed again under them.
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor

from .._engine.catalog import (backup_time, inflight, inflight_key, is_verified, manifest_key, parse_key, read_manifest, scan,
                               validate_series)
from .._engine.lock import check_timeout, holder_is_dead, series_locks
from .._errors import ConfigError, NotFoundError, OpsError, StorageError
from .._storage.base import TMP_MARK
from .._timeutil import Duration, rfc3339, utcnow
from .plan import Backup, order, plan_rotation
from .wal import prune_wal

READ_BATCH = 16
MIN_ORPHAN_GRACE = datetime.timedelta(hours=1)
UNREADABLE = "manifest unreadable"


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


def _verified(location, series, backup):
    """(backup, is it verified, None) or (backup, None, why its manifest cannot be read).

    Every failure is returned, never raised: the guard fails closed on it."""
    try:
        return backup, is_verified(read_manifest(location, series, backup.id)), None
    except OpsError as exc:  # StorageError (denied, 5xx after the retries, gone), IntegrityError
        return backup, None, exc.msg
    except (ValueError, TypeError, AttributeError) as exc:  # a field of an unexpected type
        return backup, None, "manifest %s cannot be parsed (%s)" % (
            manifest_key(series, backup.id), type(exc).__name__)


def find_newest_verified(location, series, ordered, lookback):
    """Read manifests newest first, READ_BATCH at a time, until a verified one is found.

    At most ``lookback`` manifests are read (-1: no limit). The search also stops at the first
    manifest that cannot be read (a newer format version, corrupt, access denied, a server
    error after the retries): that backup may be the newest verified one, so the guard fails
    closed on it. Returns (verified id or None, reads, anomalies, unreadable id or None).
    """
    limit = len(ordered) if lookback < 0 else min(lookback, len(ordered))
    reads = 0
    for start in range(0, limit, READ_BATCH):
        batch = ordered[start:min(start + READ_BATCH, limit)]
        results = _parallel(location, lambda b: _verified(location, series, b), batch)
        reads += len(batch)
        for backup, verified, error in results:
            if error:
                problem = ("%s: %s; this backup and every other one of the series are kept"
                           " (fail closed)" % (UNREADABLE, error))
                return None, reads, [{"id": backup.id, "created_at": rfc3339(backup.created_at),
                                      "problem": problem}], backup.id
            if verified:
                return backup.id, reads, [], None
    return None, reads, [], None


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


def list_leftovers(location, series=None):
    """What interrupted (or running) writers leave outside the listing: hidden partial files of
    the file backend and incomplete S3 multipart uploads, as [(series, id, record)].

    A record is an ObjectInfo (a partial file) or an upload dict (key, upload_id, initiated).
    One listing: the series they belong to are found here too, even a series that has nothing
    else (its first backup was killed)."""
    out = []
    if location.scheme == "file":
        for info in location.list_temporary():
            owner = _temp_series(info)
            if owner and series in (None, owner[0]):
                out.append(owner + (info,))
    elif location.scheme == "s3":
        for key, upload_id, initiated in location.list_multipart_uploads():
            parsed = parse_key(key)
            if parsed and series in (None, parsed[0]):
                out.append(parsed[:2] + ({"key": key, "upload_id": upload_id, "initiated": initiated},))
    return out


def _orphan_groups(grouped, wanted, leftovers):
    """{(series, id): [records]}: the artifacts of ids without a manifest, and every leftover."""
    groups = {}
    for name in wanted:
        entry = grouped[name]
        for backup_id, infos in entry["artifacts"].items():
            if backup_id not in entry["manifests"]:
                groups.setdefault((name, backup_id), []).extend(infos)
    for name, backup_id, record in leftovers:
        if name in wanted:
            groups.setdefault((name, backup_id), []).append(record)
    return groups


def _record_time(record):
    return record["initiated"] if isinstance(record, dict) else record.modified


def _record_key(record):
    return record["key"] if isinstance(record, dict) else record.key


def orphans(grouped, wanted, leftovers, grace_start, alive=None):
    """Per series: orphan artifacts and partial files ("files") and multipart uploads
    ("uploads"), each with its action, and ("markers") [(in-flight marker key, piece keys)] of
    the backups removed: the marker goes when one of its pieces does.

    The pieces of one backup id go together: they are removed only when every one of them is
    older than the grace (a running backup keeps its finished companions while its main
    artifact is still being written) and ``alive(series, id)``, asked only then, is false."""
    out = {name: {"files": [], "uploads": [], "markers": []} for name in wanted}
    for (name, backup_id), records in sorted(_orphan_groups(grouped, wanted, leftovers).items()):
        remove = all(_record_time(r) <= grace_start for r in records)
        published = backup_id in grouped[name]["manifests"]   # a partial left by a manifest rewrite
        in_flight = bool(remove and not published and alive is not None and alive(name, backup_id))
        remove = remove and not in_flight
        if remove:  # the expired marker of a killed backup goes with its leftovers
            out[name]["markers"].append((inflight_key(name, backup_id), [_record_key(r) for r in records]))
        for record in records:
            if isinstance(record, dict):
                item = dict(record, initiated=rfc3339(record["initiated"]), abort=remove)
                out[name]["uploads"].append(item)
            else:
                item = {"key": record.key, "size_bytes": record.size,
                        "last_modified": rfc3339(record.modified), "delete": remove}
                out[name]["files"].append(item)
            if in_flight:
                item["in_flight"] = True
    return out


def _check_lookback(verified_lookback):
    if isinstance(verified_lookback, bool) or not isinstance(verified_lookback, int) \
            or verified_lookback < -1:
        raise ConfigError("verified_lookback: %r is not valid: use a count of 0 or more, or -1"
                          " for no limit" % (verified_lookback,))


def grace_start(orphan_grace, now):
    """The instant before which leftovers are stale; a grace under MIN_ORPHAN_GRACE is refused."""
    grace = Duration.parse(orphan_grace, "orphan_grace")
    start = grace.before(now)
    if start > now - MIN_ORPHAN_GRACE:
        raise ConfigError("orphan_grace: %s is too short: use at least 1h (a running backup writes"
                          " its artifacts long before its manifest)" % grace)
    return start


def _scan(location, series, now, required=True):
    """The grouped listing (catalog.scan), the leftovers and the stale in-flight markers (left by
    killed backups: expired, or their holder gone on this machine) of the series to rotate.

    ``series`` None is every series at the location (found from the listing and the leftovers);
    an empty name is refused, never read as "every series". A named series that has nothing
    is NotFoundError when ``required``."""
    if series is not None:
        if series == "":
            raise ConfigError("series: an empty name is not valid; leave series out (null) to"
                              " rotate every series at the location")
        validate_series(series)
    location.check_readable()
    infos = [] if location.scheme == "s3" else None   # S3 lists the markers with the rest: no second listing
    grouped = scan(location, series, markers=infos)
    leftovers = list_leftovers(location, series)
    markers = inflight(location, series, now, expired=True, dead=holder_is_dead, infos=infos)
    for name in [n for n, _id, _record in leftovers] + [m["series"] for m in markers]:
        grouped.setdefault(name, {"manifests": {}, "artifacts": {}})
    if series and series not in grouped and required:
        raise NotFoundError("series %s not found at %s: it has no backups or artifacts"
                            % (series, location.url))
    return grouped, leftovers, markers


def _plan_series(location, name, entry, policy, lookback, now):
    """The plan of one series, with the verified guard; plan["guard"] holds its findings."""
    backups = [Backup(i, backup_time(i)) for i in entry["manifests"]]
    plan = plan_rotation(backups, policy, now)
    guard = {"newest_verified": None, "unreadable": None}
    reads, unreadable = 0, []
    if plan["deleted"]:  # the guard can only change a plan that deletes something
        guard["newest_verified"], reads, unreadable, guard["unreadable"] = find_newest_verified(
            location, name, order(backups), lookback)
        if guard["newest_verified"] or guard["unreadable"]:
            plan = plan_rotation(backups, policy, now, **guard)
    plan["guard"] = guard
    anomalies = plan["anomalies"] + unreadable
    for backup, _why in plan["kept"]:
        if not entry["artifacts"].get(backup.id):
            anomalies.append({"id": backup.id, "created_at": rfc3339(backup.created_at),
                              "problem": "manifest without artifacts (an interrupted deletion"
                                         " or a lost artifact)"})
    return plan, {"newest_verified": guard["newest_verified"], "manifests_read": reads,
                  "anomalies": anomalies}


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
                             holds=holds, **plan["guard"])
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
    gone = set(artifact_keys) | {u["key"] for u in found["uploads"] if u["abort"]}
    artifact_keys.extend(marker for marker, pieces in found["markers"] if gone.intersection(pieces))
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
    warnings = ["series %s, backup %s: %s" % (name, a["id"], a["problem"])
                for name, res in sorted(results.items()) for a in res["anomalies"]
                if a["problem"].startswith(UNREADABLE)]
    if warnings:
        result["warnings"] = warnings
    if failed:
        result["failed"] = [{"key": key, "error": msg} for key, msg in failed]
        raise StorageError("%d object(s) could not be deleted at %s (first: %s: %s); their"
                           " backups' manifests were kept" % (len(failed), location.url,
                                                              failed[0][0], failed[0][1]), **result)
    return result


def _alive(location, now):
    """alive(series, id): is that backup being written (a live in-flight marker, see
    catalog.inflight), or was it published since the listing (its manifest exists now)?

    Asked only for leftovers about to be removed: one marker listing per series, one HEAD per
    backup id. A failed lookup answers yes (fail closed: the leftovers wait for the next run)."""
    live = {}

    def alive(series, backup_id):
        try:
            if series not in live:
                live[series] = {marker["id"] for marker in inflight(location, series, now, dead=holder_is_dead)}
            return (live[series] is None or backup_id in live[series]
                    or location.head(manifest_key(series, backup_id)) is not None)
        except OpsError:   # StorageError, or ConfigError for a series name the engine refuses
            live.setdefault(series, None)   # markers unreadable: every leftover of the series waits
            return True
    return alive


def rotate(location, policy, series=None, orphan_grace="24h", verified_lookback=-1,
           check_mode=False, now=None, lock_timeout=None):
    """Plan and (unless check_mode) apply the policy at ``location``; return the result dict.

    Requests: one paginated listing (two outside check mode: the second under the run locks of
    the series found, one lock object created and deleted per series); manifest reads only
    while looking for the newest verified backup (none when the policy deletes nothing);
    Object Lock lookups only for the keys about to be deleted (see find_locked); one GET per
    in-flight marker, to find those of killed backups (lone_markers; on file:// the markers'
    directories are listed too, on S3 they come with the listing); for leftovers
    older than the grace, one in-flight marker listing per series and one HEAD per backup id
    (see _alive); then ceil(keys / 1000) DeleteObjects calls for artifacts and orphans, and a
    later ceil(manifests / 1000) for the manifests.
    """
    now = now or utcnow()
    stale_before = grace_start(orphan_grace, now)
    _check_lookback(verified_lookback)
    check_timeout(lock_timeout)
    found = _scan(location, series, now)
    if check_mode:
        return _rotate(location, policy, found, stale_before, verified_lookback, True, now)
    with series_locks(location, found[0], "s3_rotate", lock_timeout) as locks:
        grouped, leftovers, markers = _scan(location, series, now, required=False)
        grouped = {name: entry for name, entry in grouped.items() if name in locks}
        try:
            result = _rotate(location, policy, (grouped, leftovers, markers), stale_before, verified_lookback, False,
                             now)
        except OpsError as exc:
            error = exc
            result = exc.result
        else:
            error = None
    for name, lock in locks.items():
        report = lock.report()
        warnings = report.pop("warnings", [])
        if name in result.get("series", {}):
            result["series"][name]["lock"] = report
        if warnings:
            result.setdefault("warnings", []).extend(warnings)
    if error is not None:
        raise error
    return result


def _rotate(location, policy, found_listing, stale_before, verified_lookback, check_mode, now):
    grouped, leftovers, markers = found_listing
    found = orphans(grouped, sorted(grouped), leftovers, stale_before, _alive(location, now))
    warnings = lone_markers(found, markers, _orphan_groups(grouped, sorted(grouped), leftovers))
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
        artifact_keys.extend(_wal(location, name, res))
    changed = bool(artifact_keys or manifest_keys
                   or any(u["action"] == "aborted" for r in results.values() for u in r["uploads"]))
    failed = []
    if changed and not check_mode:
        failed = _apply(location, artifact_keys, manifest_keys, results)
    requests = {"manifest_reads": sum(r["manifests_read"] for r in results.values()),
                "lock_checks": lock_requests,
                "delete_calls": 0 if check_mode else
                -(-len(artifact_keys) // 1000) + -(-len(manifest_keys) // 1000)}
    result = _outcome(location, policy, results, now, changed, requests, failed)
    if warnings:
        result.setdefault("warnings", []).extend(warnings)
    return result


def _wal(location, name, res):
    """The WAL keys of a physical series that no kept base backup needs (see wal.py); ``res["wal"]``."""
    plan = prune_wal(location, name, [k["id"] for k in res["kept"]])
    if plan is None:
        return []
    res["wal"] = {"deleted": len(plan["deleted"]), "kept": plan["kept"], "oldest_needed": plan["oldest_needed"],
                  "reason": plan["reason"]}
    return plan["deleted"]


def lone_markers(found, markers, groups):
    """The stale in-flight markers that have no piece left (a backup killed before its first
    artifact was stored, or whose pieces are gone): listed in the series' orphans, to delete.
    A stale marker with pieces goes with them (see orphans). Returns the warnings."""
    warnings = []
    for marker in markers:
        if marker["series"] not in found or (marker["series"], marker["id"]) in groups:
            continue
        found[marker["series"]]["files"].append({
            "key": marker["key"], "size_bytes": marker["size_bytes"], "last_modified": rfc3339(marker["modified"]),
            "delete": True, "inflight_marker": marker["reason"]})
        warnings.append("series %s: in-flight marker of backup %s left by an interrupted backup (%s) removed"
                        % (marker["series"], marker["id"], marker["reason"]))
    return warnings


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
