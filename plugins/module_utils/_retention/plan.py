# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Grandfather-father-son retention, the pure decision for ONE series.

``plan_rotation(backups, policy, now, ...)`` decides which backups are kept (each with its
reasons) and which are deletion candidates. It takes plain data and never touches storage; the
semantics are those of restic ``forget`` plus our safety rules, one helper per rule:

1. newest first; every bucket rule (last, hourly, daily, weekly, monthly, yearly) keeps the
   newest backup of each of its N most recent buckets that contain backups (-1: unlimited);
2. ``keep_within`` keeps every backup created after (newest - D), the newest being the newest
   backup that is not dated in the future;
3. a bucket rule with count left after the scan keeps the oldest backup ("oldest <rule>");
4. ``min_keep``: the ``min_keep`` newest backups are always kept, whatever else is kept;
5. the newest verified backup and every newer one are kept; fail closed: when the guard met a
   manifest it could not read (``unreadable``) before a verified one, that backup may be the
   newest verified one, so it and every other backup of the series are kept;
6. backups under an Object Lock retention or legal hold (``holds``) are kept and reported;
7. backups dated in the future (beyond ``skew``) are kept, reported as anomalies, and take no
   part in the rules (they neither fill buckets nor move the keep_within reference).

The rules run in the order 7, 1, 3, 2, 4, 5, 6 (the order of the reasons in the result).
"""

from __future__ import annotations

import collections

from .._engine.catalog import FUTURE_SKEW
from .._timeutil import rfc3339
from .policy import RULES, bucket_key

Backup = collections.namedtuple("Backup", "id created_at")


def order(backups):
    """Newest first (ties by id)."""
    return sorted(backups, key=lambda b: (b.created_at, b.id), reverse=True)


def _set_aside_future(items, reasons, now, skew):
    """Rule 7: future-dated backups are kept and reported; returns (the others, anomalies)."""
    limit = now + skew
    normal, anomalies = [], []
    for b in items:
        if b.created_at > limit:
            reasons[b.id].append("future-dated")
            anomalies.append({"id": b.id, "created_at": rfc3339(b.created_at),
                              "problem": "created in the future (after %s): kept, ignored by the"
                                         " rules" % rfc3339(now)})
        else:
            normal.append(b)
    return normal, anomalies


def _keep_buckets(normal, reasons, policy):
    """Rule 1: each bucket rule keeps the newest backup of its N newest buckets.

    Returns the count each rule has left after the scan (for rule 3)."""
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
    return left


def _keep_oldest(normal, reasons, left):
    """Rule 3: a bucket rule with count left keeps the oldest backup as well."""
    oldest = normal[-1]
    for rule in RULES:
        if left.get(rule, 0) > 0 and not any(r.startswith(rule + " ") for r in reasons[oldest.id]):
            reasons[oldest.id].append("oldest %s" % rule)


def _keep_within(normal, reasons, within):
    """Rule 2: every backup created after (newest - keep_within) is kept."""
    if within is None:
        return
    threshold = within.before(normal[0].created_at)
    for b in normal:
        if b.created_at > threshold:
            reasons[b.id].append("within %s" % within)


def _keep_min(normal, reasons, min_keep):
    """Rule 4: the ``min_keep`` newest backups are always kept (whatever else is kept).

    A newest backup that another rule keeps already counts, and gets no extra reason."""
    for b in normal[:min_keep]:
        if not reasons[b.id]:
            reasons[b.id].append("min_keep %d" % min_keep)


def _keep_verified(items, reasons, newest_verified):
    """Rule 5: the newest verified backup and every newer one are kept."""
    if newest_verified is None or newest_verified not in reasons:
        return
    for b in items:
        if not reasons[b.id]:
            reasons[b.id].append("newest verified" if b.id == newest_verified
                                 else "newer than the newest verified")
        if b.id == newest_verified:
            break


def _keep_unreadable(items, reasons, unreadable):
    """Rule 5, fail closed: the guard could not read this manifest, which may be the newest
    verified one: it is kept, and so is every newer and every older backup of the series."""
    if unreadable is None or unreadable not in reasons:
        return
    side = "newer than"
    for b in items:
        if b.id == unreadable:
            reasons[b.id].append("manifest unreadable")
            side = "older than"
        elif not reasons[b.id]:
            reasons[b.id].append("%s an unreadable manifest" % side)


def _keep_held(reasons, holds):
    """Rule 6: backups under an Object Lock retention or legal hold are kept."""
    for backup_id, why in (holds or {}).items():
        if backup_id in reasons and not reasons[backup_id]:
            reasons[backup_id].append(why)


def plan_rotation(backups, policy, now, newest_verified=None, holds=None, skew=FUTURE_SKEW,
                  unreadable=None):
    """Decide what to keep in one series. Pure: plain data in, plain data out.

    ``backups``: iterable of objects with ``id`` and ``created_at`` (aware datetime).
    ``newest_verified``: id of the newest backup whose restore test passed, or None.
    ``holds``: {id: reason} of backups under Object Lock (never deleted).
    ``unreadable``: id of a backup whose manifest the guard could not read (fail closed).
    Returns {"kept": [(backup, [reasons])], "deleted": [backup], "anomalies": [...]},
    both lists newest first.
    """
    items = order(backups)
    reasons = collections.OrderedDict((b.id, []) for b in items)
    normal, anomalies = _set_aside_future(items, reasons, now, skew)
    if normal:
        left = _keep_buckets(normal, reasons, policy)
        _keep_oldest(normal, reasons, left)
        _keep_within(normal, reasons, policy.within)
        _keep_min(normal, reasons, policy.min_keep)
    _keep_verified(items, reasons, newest_verified)
    _keep_unreadable(items, reasons, unreadable)
    _keep_held(reasons, holds)
    return {"kept": [(b, reasons[b.id]) for b in items if reasons[b.id]],
            "deleted": [b for b in items if not reasons[b.id]],
            "anomalies": anomalies}
