# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The Redis filters: redis_info (INFO text to a dict) and redis_snapshot (is the new snapshot on disk)."""

from __future__ import annotations

import pytest
from ansible.errors import AnsibleFilterError

from ansible_collections.opskit.runbook.plugins.filter.redis import FilterModule, redis_info, redis_snapshot


def _persistence(last_save, in_progress=0, status="ok", aof=0):
    return ("# Persistence\r\nloading:0\r\nrdb_bgsave_in_progress:%d\r\nrdb_last_save_time:%d\r\n"
            "rdb_last_bgsave_status:%s\r\naof_rewrite_in_progress:%d\r\n" % (in_progress, last_save, status, aof))


def test_redis_info_fields_and_keyspace_totals():
    info = redis_info("# Keyspace\r\ndb0:keys=2,expires=1,avg_ttl=99\r\ndb3:keys=5,expires=0,avg_ttl=0\r\n"
                      "digest:2a565ed44c86ad1d3853f38b8cbf0a4f8a0a14b5\nserver:Redis server v=7.0.15 sha=0\n")
    assert info["keys"] == 7 and info["expires"] == 1
    assert info["db3"] == {"keys": 5, "expires": 0, "avg_ttl": 0}
    assert info["digest"] == "2a565ed44c86ad1d3853f38b8cbf0a4f8a0a14b5"
    assert info["server"] == "Redis server v=7.0.15 sha=0"  # the value keeps its own colons and blanks
    assert redis_info("# Keyspace\r\n")["keys"] == 0  # an empty dataset
    assert FilterModule().filters()["redis_info"] is redis_info


@pytest.mark.parametrize("before, after, state", [
    # the previous snapshot: LASTSAVE unchanged, no save running (a BGSAVE scheduled behind an AOF rewrite)
    (_persistence(100), _persistence(100, aof=1), "waiting"),
    (_persistence(100), _persistence(100), "waiting"),  # scheduled, the rewrite just ended
    (_persistence(100), _persistence(100, in_progress=1), "waiting"),
    (_persistence(100), _persistence(101, in_progress=1), "waiting"),  # a later save ended, ours runs
    (_persistence(100), _persistence(101), "saved"),
    (_persistence(100), _persistence(100, status="err"), "failed"),
    (_persistence(100), _persistence(100, status="err", aof=1), "waiting"),  # ours has not run yet
    (_persistence(100, status="err"), _persistence(100, status="err"), "waiting"),  # an old failure: time out
    (_persistence(100, status="err"), _persistence(102), "saved"),
])
def test_redis_snapshot_states(before, after, state):
    assert redis_snapshot(after, before) == state
    assert redis_snapshot(redis_info(after), redis_info(before)) == state


@pytest.mark.parametrize("after, before", [(None, _persistence(1)), ("loading:0\n", _persistence(1))])
def test_redis_snapshot_refuses_what_is_not_info_persistence(after, before):
    with pytest.raises(AnsibleFilterError):
        redis_snapshot(after, before)
    with pytest.raises(AnsibleFilterError):
        redis_info(42)
