# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""s3_rotate on a physical series (real file:// location): the WAL a kept base backup needs
stays, older WAL goes, .history files stay, and nothing goes without a kept base backup."""

from __future__ import annotations

import datetime

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import wal
from ansible_collections.opskit.runbook.plugins.module_utils._retention import apply
from ansible_collections.opskit.runbook.plugins.module_utils._retention import wal as rwal
from ansible_collections.opskit.runbook.plugins.module_utils._retention.policy import parse_policy
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation

UTC = datetime.timezone.utc
NOW = datetime.datetime(2026, 12, 10, tzinfo=UTC)


def _base(location, day, start_segno, tli=1):
    with BackupSession(location, "db", "postgres-physical", compression="none",
                       now=datetime.datetime(2026, 12, day, 2, tzinfo=UTC)) as session:
        with session.artifact("tar") as out:
            out.write(b"tar")
        return session.publish(source={"method": "physical", "timeline": tli,
                                       "start_wal": wal.segment_name(tli, start_segno)})


def _archive(location, tmp_path, names):
    for name in names:
        path = tmp_path / name
        path.write_bytes(name.encode() * 100)
        assert wal.push(location, "db", str(path), name, compression="gzip") == "archived"


def _files(location):
    return sorted(f for files in wal.wal_index(location, "db").values() for f in files)


def test_rotation_keeps_the_wal_of_kept_base_backups(tmp_path):
    location = FileLocation(str(tmp_path / "store"))
    (tmp_path / "store").mkdir()
    _base(location, 1, 2)
    _base(location, 2, 5)
    _base(location, 3, 8)
    segments = [wal.segment_name(1, n) for n in range(1, 10)]
    _archive(location, tmp_path, segments + ["000000010000000000000002.00000028.backup", "00000002.history",
                                             wal.segment_name(2, 9)])
    before = _files(location)
    checked = apply.rotate(location, parse_policy(keep_last=2), series="db", check_mode=True, now=NOW)
    assert checked["series"]["db"]["wal"]["deleted"] == 5  # segments 1-4 and the .backup file of 2
    assert _files(location) == before  # check mode deleted nothing
    result = apply.rotate(location, parse_policy(keep_last=2), series="db", now=NOW)
    assert result["series"]["db"]["counts"]["deleted"] == 1
    assert result["series"]["db"]["wal"]["oldest_needed"] == "0000000000000005"
    left = _files(location)
    assert left == sorted(segments[4:] + ["00000002.history", wal.segment_name(2, 9)])
    again = apply.rotate(location, parse_policy(keep_last=2), series="db", now=NOW)
    assert again["series"]["db"]["wal"]["deleted"] == 0 and not again["changed"]


def test_wal_plan_fails_closed():
    listing = [("db/wal/00000001/x", "000000010000000000000001", "0000000000000001")]
    assert rwal.wal_plan(listing, [])["deleted"] == []
    assert rwal.wal_plan(listing, ["0000000000000005"], problem="unreadable")["deleted"] == []
    assert rwal.wal_plan(listing, ["0000000000000005"])["deleted"] == ["db/wal/00000001/x"]
    assert rwal.wal_plan(listing, ["0000000000000001"])["deleted"] == []
