# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the Redis backups: INFO parsed into a dict, and the state of a new snapshot.

Documentation: the sidecar files here (redis_info.yml, redis_snapshot.yml).
"""

from __future__ import annotations

import re

from ansible.errors import AnsibleFilterError

_DB = re.compile(r"\Adb\d+\Z")


def _keyspace(value):
    """'keys=2,expires=1,avg_ttl=9' -> {'keys': 2, 'expires': 1, 'avg_ttl': 9}."""
    out = {}
    for part in value.split(","):
        name, _sep, number = part.partition("=")
        try:
            out[name] = int(number)
        except ValueError:
            out[name] = number
    return out


def redis_info(text):
    """The text of redis-cli INFO as a dict of strings; keyspace lines (db0:keys=...) become
    dicts, and 'keys' / 'expires' are their totals over every database (0 without any)."""
    if not isinstance(text, str):
        raise AnsibleFilterError("redis_info: expected the text of INFO, got %s" % type(text).__name__)
    info, keys, expires = {}, 0, 0
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or ":" not in line:
            continue
        name, _sep, value = line.partition(":")
        if _DB.match(name):
            info[name] = _keyspace(value)
            keys += info[name].get("keys", 0) if isinstance(info[name].get("keys"), int) else 0
            expires += info[name].get("expires", 0) if isinstance(info[name].get("expires"), int) else 0
        else:
            info[name] = value
    info.setdefault("keys", keys)
    info.setdefault("expires", expires)
    return info


def _int(info, name):
    try:
        return int(info.get(name, ""))
    except (TypeError, ValueError):
        return None


def redis_snapshot(after, before):
    """Where the snapshot started after ``before`` stands, from two INFO persistence texts (or
    their redis_info dicts): 'saved' once a save finished later than LASTSAVE before
    (rdb_last_save_time) and none runs, 'failed' once rdb_last_bgsave_status turned from ok to
    something else with no save or AOF rewrite running, else 'waiting' (a save in progress, or
    one scheduled behind an AOF rewrite)."""
    after = redis_info(after) if isinstance(after, str) else after
    before = redis_info(before) if isinstance(before, str) else before
    if not isinstance(after, dict) or not isinstance(before, dict):
        raise AnsibleFilterError("redis_snapshot: expected two INFO persistence texts")
    last0, last = _int(before, "rdb_last_save_time"), _int(after, "rdb_last_save_time")
    if last0 is None or last is None:
        raise AnsibleFilterError("redis_snapshot: no rdb_last_save_time in INFO persistence")
    idle = after.get("rdb_bgsave_in_progress") == "0"
    if idle and last > last0:
        return "saved"
    if (idle and after.get("aof_rewrite_in_progress", "0") == "0" and before.get("rdb_last_bgsave_status") == "ok"
            and after.get("rdb_last_bgsave_status") != "ok"):
        return "failed"
    return "waiting"


class FilterModule:
    def filters(self):
        return {"redis_info": redis_info, "redis_snapshot": redis_snapshot}
