# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Grandfather-father-son retention: a pure plan, then an apply step on a storage location.

``plan_rotation(backups, policy, now, ...)`` decides, for ONE series, which backups are kept
(each with its reasons) and which are deletion candidates. It takes plain data and never
touches storage; the semantics are those of restic ``forget`` plus our safety rules
(see ``docs``/reference ``retention.md``):

1. newest first; every bucket rule (last, hourly, daily, weekly, monthly, yearly) keeps the
   newest backup of each of its N most recent buckets that contain backups (-1: unlimited);
2. ``keep_within`` keeps every backup created after (newest - D), the newest being the newest
   backup that is not dated in the future;
3. a bucket rule with count left after the scan keeps the oldest backup ("oldest <rule>");
4. ``min_keep``: at least that many backups are kept, newest first;
5. the newest verified backup and every newer one are kept;
6. backups under an Object Lock retention or legal hold (``holds``) are kept and reported;
7. backups dated in the future (beyond ``skew``) are kept, reported as anomalies, and take no
   part in the rules (they neither fill buckets nor move the keep_within reference).

``rotate(location, policy, ...)`` runs the plan against a location: one listing, manifest reads
only for the newest backups (to find the newest verified one), Object Lock lookups only for
the objects about to be deleted, deletions in batches, artifacts before manifests.
"""

from __future__ import annotations

import collections
import datetime
from concurrent.futures import ThreadPoolExecutor

from .._engine.backup import backup_time, is_verified, parse_key, read_manifest, scan, validate_series
from .._errors import ConfigError, NotFoundError, StorageError
from .._retry import call_with_retry
from .._storage.location import TMP_MARK
from .._timeutil import Duration, rfc3339, utcnow

try:
    import zoneinfo
except ImportError:  # pragma: no cover - Python < 3.9
    zoneinfo = None

RULES = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
FUTURE_SKEW = datetime.timedelta(minutes=5)
READ_BATCH = 16
UTC = datetime.timezone.utc

Backup = collections.namedtuple("Backup", "id created_at")


# ---------------------------------------------------------------------- policy

class Policy:
    """A validated retention policy. Build it with ``parse_policy``."""

    def __init__(self, counts, within=None, tz=None, tz_name="UTC", min_keep=1):
        self.counts = counts
        self.within = within
        self.tz = tz or UTC
        self.tz_name = tz_name
        self.min_keep = min_keep

    def describe(self):
        out = {"keep_%s" % rule: n for rule, n in self.counts.items()}
        out.update(keep_within=str(self.within) if self.within else None,
                   timezone=self.tz_name, min_keep=self.min_keep)
        return out


def load_timezone(name):
    if name in (None, "", "UTC", "utc", "Z"):
        return UTC
    if zoneinfo is None:  # pragma: no cover
        raise ConfigError("timezone %s needs Python 3.9+ (zoneinfo); use UTC" % name)
    try:
        return zoneinfo.ZoneInfo(str(name))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        raise ConfigError("timezone %r is unknown: use an IANA name such as Europe/Berlin or"
                          " America/New_York (default UTC)" % (name,)) from None


def parse_policy(keep_last=None, keep_hourly=None, keep_daily=None, keep_weekly=None,
                 keep_monthly=None, keep_yearly=None, keep_within=None, timezone="UTC",
                 min_keep=1):
    """Validate the options and return a Policy; an empty policy is refused."""
    given = dict(last=keep_last, hourly=keep_hourly, daily=keep_daily, weekly=keep_weekly,
                 monthly=keep_monthly, yearly=keep_yearly)
    counts = {}
    for rule in RULES:
        value = given[rule]
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError("keep_%s: %r is not a count" % (rule, value))
        if value < -1:
            raise ConfigError("keep_%s: %d is not valid: use a count of 0 or more, or -1 for"
                              " unlimited" % (rule, value))
        if value:
            counts[rule] = value
    within = Duration.parse(keep_within, "keep_within") if keep_within not in (None, "") else None
    if not counts and within is None:
        raise ConfigError("empty retention policy: set at least one of keep_last, keep_hourly,"
                          " keep_daily, keep_weekly, keep_monthly, keep_yearly or keep_within"
                          " (an empty policy is never read as 'delete everything')")
    if isinstance(min_keep, bool) or not isinstance(min_keep, int) or min_keep < 0:
        raise ConfigError("min_keep: %r is not valid: use a count of 0 or more" % (min_keep,))
    return Policy(counts, within, load_timezone(timezone), timezone or "UTC", min_keep)


def bucket_key(rule, when, tz, position):
    """The bucket of a backup for ``rule``, in ``tz`` (position: index newest first)."""
    if rule == "last":
        return str(position + 1)
    local = when.astimezone(tz)
    if rule == "hourly":
        return local.strftime("%Y-%m-%d %H")
    if rule == "daily":
        return local.strftime("%Y-%m-%d")
    if rule == "weekly":
        year, week, _day = local.isocalendar()
        return "%04d-W%02d" % (year, week)
    if rule == "monthly":
        return local.strftime("%Y-%m")
    if rule == "yearly":
        return local.strftime("%Y")
    raise ValueError(rule)


# ------------------------------------------------------------------------ plan

def _order(backups):
    return sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)


def plan_rotation(backups, policy, now, newest_verified=None, holds=None, skew=FUTURE_SKEW):
    """Decide what to keep in one series. Pure: plain data in, plain data out.

    ``backups``: iterable of objects with ``id`` and ``created_at`` (aware datetime).
    ``newest_verified``: id of the newest backup whose restore test passed, or None.
    ``holds``: {id: reason} of backups under Object Lock (never deleted).
    Returns {"kept": [(backup, [reasons])], "deleted": [backup], "anomalies": [...]},
    both lists newest first.
    """
    items = _order(backups)
    reasons = collections.OrderedDict((b.id, []) for b in items)
    limit = now + skew
    anomalies = []
    normal = []
    for b in items:
        if b.created_at > limit:
            reasons[b.id].append("future-dated")
            anomalies.append({"id": b.id, "created_at": rfc3339(b.created_at),
                              "problem": "created in the future (after %s): kept, ignored by the"
                                         " rules" % rfc3339(now)})
        else:
            normal.append(b)

    left = dict(policy.counts)
    active = [rule for rule in RULES if left.get(rule)]
    last_key = {}
    for pos, b in enumerate(normal):
        if not active:
            break  # every rule has used its count: the rest of the scan cannot keep anything
        for rule in active:
            key = bucket_key(rule, b.created_at, policy.tz, pos)
            if key != last_key.get(rule):
                last_key[rule] = key
                reasons[b.id].append("%s %s" % (rule, key))
                if left[rule] > 0:
                    left[rule] -= 1
        active = [rule for rule in active if left[rule]]
    if normal:
        oldest = normal[-1]
        for rule in RULES:
            if left.get(rule, 0) > 0 and not any(r.startswith(rule + " ") for r in reasons[oldest.id]):
                reasons[oldest.id].append("oldest %s" % rule)
        if policy.within is not None:
            threshold = policy.within.before(normal[0].created_at)
            for b in normal:
                if b.created_at > threshold:
                    reasons[b.id].append("within %s" % policy.within)
        kept = sum(1 for b in normal if reasons[b.id])
        for b in normal:
            if kept >= policy.min_keep:
                break
            if not reasons[b.id]:
                reasons[b.id].append("min_keep %d" % policy.min_keep)
                kept += 1

    if newest_verified is not None and newest_verified in reasons:
        for b in items:
            if not reasons[b.id]:
                reasons[b.id].append("newest verified" if b.id == newest_verified
                                     else "newer than the newest verified")
            if b.id == newest_verified:
                break
    for backup_id, why in (holds or {}).items():
        if backup_id in reasons and not reasons[backup_id]:
            reasons[backup_id].append(why)

    return {"kept": [(b, reasons[b.id]) for b in items if reasons[b.id]],
            "deleted": [b for b in items if not reasons[b.id]],
            "anomalies": anomalies}


# ----------------------------------------------------------------------- apply

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


def _s3_error_code(exc):
    response = getattr(exc, "response", None) or {}
    return (response.get("Error") or {}).get("Code", "")


def find_locked(location, keys, now):
    """{key: reason} for keys under an active Object Lock retention or legal hold.

    Cost: one GetObjectLockConfiguration; when the bucket has Object Lock enabled (or the
    call is denied, so we cannot tell), one HeadObject per key, 16 in parallel. Buckets
    without Object Lock cost that one request whatever the number of keys.
    Returns (locked, requests).
    """
    if location.scheme != "s3" or not keys:
        return {}, 0
    try:
        conf = call_with_retry(location.client.get_object_lock_configuration, Bucket=location.bucket)
        enabled = (conf.get("ObjectLockConfiguration") or {}).get("ObjectLockEnabled") == "Enabled"
    except Exception as exc:  # pylint: disable=broad-except
        enabled = _s3_error_code(exc) != "ObjectLockConfigurationNotFoundError"
    if not enabled:
        return {}, 1

    def head(key):
        try:
            return key, location.call("checking Object Lock of %s" % location.url_for(key),
                                      "head_object", Bucket=location.bucket, Key=location.full_key(key))
        except NotFoundError:
            return key, {}

    locked = {}
    for key, meta in _parallel(location, head, list(keys)):
        why = []
        until = meta.get("ObjectLockRetainUntilDate")
        if meta.get("ObjectLockMode") and until and until > now:
            why.append("object lock %s until %s" % (meta["ObjectLockMode"], rfc3339(until)))
        if meta.get("ObjectLockLegalHoldStatus") == "ON":
            why.append("legal hold")
        if why:
            locked[key] = ", ".join(why)
    return locked, 1 + len(keys)


def _temp_series(info):
    """(series, id) of a file-backend temporary ``.<name>.partial-<hex>`` file, or None."""
    directory, _sep, name = info.key.rpartition("/")
    if not name.startswith(".") or TMP_MARK not in name:
        return None
    parsed = parse_key("%s/%s" % (directory, name[1:].split(TMP_MARK, 1)[0]))
    return parsed[:2] if parsed else None


def _orphans(location, grouped, wanted, grace_start):
    """Per series: orphan artifacts, temp files and multipart uploads, with their action."""
    out = {name: {"files": [], "uploads": []} for name in wanted}
    for name in wanted:
        entry = grouped.get(name) or {"manifests": {}, "artifacts": {}}
        for backup_id, infos in sorted(entry["artifacts"].items()):
            if backup_id in entry["manifests"]:
                continue
            young = any(i.modified > grace_start for i in infos)
            for info in infos:
                out[name]["files"].append({"key": info.key, "size_bytes": info.size,
                                           "last_modified": rfc3339(info.modified),
                                           "delete": not young})
    if location.scheme == "file":
        for info in location.list_temporary():
            owner = _temp_series(info)
            if owner and owner[0] in out:
                out[owner[0]]["files"].append({"key": info.key, "size_bytes": info.size,
                                               "last_modified": rfc3339(info.modified),
                                               "delete": info.modified <= grace_start})
    elif location.scheme == "s3":
        for key, upload_id, initiated in location.list_multipart_uploads():
            parsed = parse_key(key)
            if parsed and parsed[0] in out:
                out[parsed[0]]["uploads"].append({"key": key, "upload_id": upload_id,
                                                  "initiated": rfc3339(initiated),
                                                  "abort": initiated <= grace_start})
    return out


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
    if isinstance(verified_lookback, bool) or not isinstance(verified_lookback, int) \
            or verified_lookback < -1:
        raise ConfigError("verified_lookback: %r is not valid: use a count of 0 or more, or -1"
                          " for no limit" % (verified_lookback,))
    if series:
        validate_series(series)
    location.check_readable()
    grouped = scan(location, series)
    if series and series not in grouped:
        raise NotFoundError("series %s not found at %s: it has no backups or artifacts"
                            % (series, location.url))
    orphans = _orphans(location, grouped, sorted(grouped), grace.before(now))
    results, plans = {}, {}
    for name in sorted(grouped):
        plans[name], results[name] = _plan_series(location, name, grouped[name], policy,
                                                  verified_lookback, now)

    # Object Lock: only the objects about to be deleted are looked at.
    candidates = [k for name in plans for b in plans[name]["deleted"] for k in _keys(grouped[name], b.id)]
    candidates += [o["key"] for name in orphans for o in orphans[name]["files"] if o["delete"]]
    locked, lock_requests = find_locked(location, candidates, now)

    artifact_keys, manifest_keys = [], []
    for name, res in results.items():
        entry, plan = grouped[name], plans[name]
        holds = {}
        for backup in plan["deleted"]:
            why = sorted({locked[k] for k in _keys(entry, backup.id) if k in locked})
            if why:
                holds[backup.id] = "; ".join(why)
        if holds:
            plan = plan_rotation([b for b, _r in plan["kept"]] + plan["deleted"], policy, now,
                                 newest_verified=res["newest_verified"], holds=holds)
        for backup in plan["deleted"]:
            keys = [i.key for i in entry["artifacts"].get(backup.id, [])]
            artifact_keys.extend(keys)
            manifest_keys.append((entry["manifests"][backup.id].key, keys))
        for orphan in orphans[name]["files"]:
            if orphan["key"] in locked:
                orphan.update(delete=False, locked=locked[orphan["key"]])
            if orphan["delete"]:
                artifact_keys.append(orphan["key"])
        res.update(
            kept=[_entry(b, why) for b, why in plan["kept"]],
            deleted=[_entry(b) for b in plan["deleted"]],
            locked=[dict(_entry(b), reason=holds[b.id]) for b, _why in plan["kept"] if b.id in holds],
            orphans=[_action(o, "delete", "deleted") for o in orphans[name]["files"]],
            uploads=[_action(u, "abort", "aborted") for u in orphans[name]["uploads"]],
        )

    changed = bool(artifact_keys or manifest_keys
                   or any(u["action"] == "aborted" for r in results.values() for u in r["uploads"]))
    failed = []
    if changed and not check_mode:
        failed = _apply(location, artifact_keys, manifest_keys, results)
    for res in results.values():
        res["counts"] = _counts(res)
    result = {"changed": changed, "location": location.url, "series": results,
              "policy": policy.describe(), "checked_at": rfc3339(now),
              "requests": {"manifest_reads": sum(r["manifests_read"] for r in results.values()),
                           "lock_checks": lock_requests,
                           "delete_calls": 0 if check_mode else
                           -(-len(artifact_keys) // 1000) + -(-len(manifest_keys) // 1000)}}
    if failed:
        result["failed"] = [{"key": key, "error": msg} for key, msg in failed]
        raise StorageError("%d object(s) could not be deleted at %s (first: %s: %s); their"
                           " backups' manifests were kept" % (len(failed), location.url,
                                                              failed[0][0], failed[0][1]), **result)
    return result


def _keys(entry, backup_id):
    """Every key of a published backup: its artifacts, then its manifest."""
    return [i.key for i in entry["artifacts"].get(backup_id, [])] + [entry["manifests"][backup_id].key]


def _action(item, flag, done):
    out = {k: v for k, v in item.items() if k != flag}
    out["action"] = done if item[flag] else "kept"
    return out


def _plan_series(location, name, entry, policy, lookback, now):
    backups = [Backup(i, backup_time(i)) for i in entry["manifests"]]
    plan = plan_rotation(backups, policy, now)
    verified, reads, unreadable = None, 0, []
    if plan["deleted"]:  # the guard can only change a plan that deletes something
        verified, reads, unreadable = find_newest_verified(location, name, _order(backups), lookback)
        if verified is not None:
            plan = plan_rotation(backups, policy, now, newest_verified=verified)
    anomalies = plan["anomalies"] + unreadable
    for backup, _why in plan["kept"]:
        if not entry["artifacts"].get(backup.id):
            anomalies.append({"id": backup.id, "created_at": rfc3339(backup.created_at),
                              "problem": "manifest without artifacts (an interrupted deletion"
                                         " or a lost artifact)"})
    return plan, {"newest_verified": verified, "manifests_read": reads, "anomalies": anomalies}


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
