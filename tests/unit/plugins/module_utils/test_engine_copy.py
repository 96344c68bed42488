# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""copy_to (a second location), Object Lock days=auto, the lock of verification records and
the protection fields of backup_info, on real directories (moto: tests/integration/test_copy_to.py)."""

from __future__ import annotations

import datetime
import os

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._crypto.age import fingerprint
from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.copy import stored_sha256
from ansible_collections.opskit.runbook.plugins.module_utils._engine.protection import auto_lock_days, object_lock_option
from ansible_collections.opskit.runbook.plugins.module_utils._engine.report import backup_report
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, StorageError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import (
    location_from_params, storage_argspec)

from test_engine_protection import _LockingStore, _ed25519, keygen

DATA = os.urandom(300000) * 3


def _location(root, copy_to=None, **options):
    params = {k: None for k in storage_argspec()}
    params.update(location="file://%s" % root, copy_to=copy_to, **options)
    return location_from_params(params)


def _backup(location, series="db"):
    with BackupSession(location, series, "postgres") as session:
        with session.artifact("sql", name="globals") as out:
            out.write(b"CREATE ROLE app;\n")
        with session.artifact("dump") as out:
            out.write(DATA)
        return session.publish(), session


def _stored(root):
    return sorted(os.path.relpath(os.path.join(d, f), root) for d, _s, files in os.walk(root) for f in files
                  if "/." not in "/" + os.path.relpath(os.path.join(d, f), root))


def test_copy_to_holds_the_same_bytes_and_manifest(tmp_path):
    primary, second = str(tmp_path / "a"), str(tmp_path / "b")
    manifest, session = _backup(_location(primary, copy_to={"location": "file://" + second}))
    assert [c["result"] for c in manifest["copies"]] == ["copied"]
    assert manifest["copies"][0]["objects"] == 3 and manifest["copies"][0]["copied_bytes"] > len(DATA) // 4
    assert _stored(primary) == _stored(second) and len(_stored(second)) == 3
    for rel in _stored(primary):
        assert open(os.path.join(primary, rel), "rb").read() == open(os.path.join(second, rel), "rb").read()
    assert not os.path.exists(os.path.join(second, "db", ".inflight", manifest["id"] + ".json"))
    copy = FileLocation(second)
    stored = catalog.resolve_backup(copy, "db")
    assert stored == session.published and "copies" not in stored  # the outcome is never stored
    assert stored_sha256(copy, "db/" + stored["artifact"]) == (stored["sha256"], stored["size_bytes"])


class _Corrupting(FileLocation):
    """A second location whose stored bytes differ from what was sent (a lying disk)."""

    def open_read(self, key):
        stream = super().open_read(key)
        if key.endswith(".manifest.json"):
            return stream
        data = bytearray(stream.read())
        stream.close()
        data[len(data) // 2] ^= 0xFF
        return _Bytes(bytes(data))


class _Bytes:
    def __init__(self, data):
        self.data = data

    def read(self, size=-1):
        out, self.data = (self.data, b"") if size is None or size < 0 else (self.data[:size], self.data[size:])
        return out

    def close(self):
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@pytest.mark.parametrize("on_failure", ["fail", "warn"])
def test_a_copy_that_arrives_damaged_is_removed_and_the_primary_stays(tmp_path, on_failure):
    primary, second = str(tmp_path / "a"), str(tmp_path / "b")
    location = _location(primary, copy_to={"location": "file://" + second, "on_failure": on_failure})
    location._copy_target = _Corrupting(second)
    if on_failure == "fail":
        with pytest.raises(StorageError) as exc:
            _backup(location)
        assert "is published at file://%s, but its copy to file://%s failed: the copy" % (primary, second) in exc.value.msg
        assert "has sha256 " in exc.value.msg and exc.value.result["copies"][0]["result"] == "failed"
    else:
        manifest, session = _backup(location)
        assert manifest["copies"][0]["result"] == "failed"
        assert any("but its copy to" in w for w in session.warnings)
    assert len(catalog.list_backups(FileLocation(primary))["db"]) == 1  # still published
    assert _stored(second) == []  # the partial copy is removed, marker included


def test_copy_to_the_location_itself_is_refused_before_anything_is_written(tmp_path):
    primary = str(tmp_path / "a")
    with pytest.raises(StorageError, match="is the location itself"):
        _backup(_location(primary, copy_to={"location": "file://" + primary}))
    assert _stored(primary) == []


@pytest.mark.parametrize("policy, days", [
    ({"keep_daily": 30, "keep_weekly": 12, "keep_monthly": 12}, 30),
    ({"keep_hourly": 36, "keep_daily": 7}, 2),
    ({"keep_weekly": 4, "keep_monthly": 6}, 28),
    ({"keep_monthly": 12}, 372),
    ({"keep_daily": 7, "keep_within": "10d"}, 10),
    ({"keep_last": 3, "keep_within": "36h"}, 2),
    ({"keep_daily": 0, "keep_yearly": 2}, 732),
])
def test_auto_lock_days_follow_the_finest_rule_or_keep_within(policy, days):
    assert auto_lock_days(policy) == days
    assert object_lock_option({"mode": "GOVERNANCE", "days": "auto", "retention": policy})["days"] == days


@pytest.mark.parametrize("policy, message", [
    (None, "days=auto needs the retention policy"),
    ({"keep_last": 5}, "keep_last alone says nothing about time"),
    ({"keep_daily": -1}, "cannot follow keep_daily=-1"),
])
def test_auto_lock_days_refusals(policy, message):
    with pytest.raises(ConfigError, match=message):
        object_lock_option({"mode": "GOVERNANCE", "days": "auto", "retention": policy})


def test_verification_records_keep_the_recorded_lock(tmp_path):
    store = _LockingStore(str(tmp_path / "b"))
    store.protection_options = {"object_lock": {"mode": "GOVERNANCE", "days": 3}}
    with BackupSession(store, "db", "postgres") as session:
        with session.artifact("dump") as out:
            out.write(b"data")
        manifest = session.publish()
    store.calls.clear()
    reader = _LockingStore(str(tmp_path / "b"))  # a host without object_lock in its options
    catalog.update_verification(reader, manifest, "restore", "passed")
    until = datetime.datetime.strptime(manifest["object_lock"]["retain_until"], "%Y-%m-%dT%H:%M:%SZ").replace(
        tzinfo=datetime.timezone.utc)
    assert reader.calls == [("put_object_retention", "db/%s.manifest.json" % manifest["id"],
                             {"Mode": "GOVERNANCE", "RetainUntilDate": until})]
    summary = catalog.summarize(catalog.read_manifest(reader, "db", manifest["id"]), reader)
    assert summary["object_lock"] == {"mode": "GOVERNANCE", "retain_until": manifest["object_lock"]["retain_until"]}
    assert summary["client_side_encryption"] == "none" and summary["signed"] is False
    assert summary["signature_verified"] is None


def test_backup_info_fields_show_encryption_signature_and_whether_it_verifies(tmp_path):
    root = tmp_path / "store"
    secret, recipient = keygen(tmp_path / "id.txt")
    private, public = _ed25519(tmp_path, "ours")
    _theirs, their_public = _ed25519(tmp_path, "theirs")
    manifest, _session = _backup(_location(str(root), encrypt_recipients=[recipient], signing_key=private))
    plain, _session = _backup(_location(str(root)), series="plain")
    trusting = _location(str(root), trusted_signing_keys=[public])
    report = backup_report(trusting)
    rows = {b["series"]: b for b in report["backups"]}
    assert rows["db"]["client_side_encryption"] == "age" and rows["db"]["recipients"] == [fingerprint(recipient)]
    assert rows["db"]["signed"] is True and rows["db"]["signed_by"] == manifest["signature"]["key_id"]
    assert rows["db"]["signature_verified"] is True and rows["db"]["signature_problem"] is None
    assert rows["plain"]["signed"] is False and rows["plain"]["signature_verified"] is False
    assert "is not signed" in rows["plain"]["signature_problem"]
    other = {b["series"]: b for b in backup_report(_location(str(root), trusted_signing_keys=[their_public]))["backups"]}
    assert other["db"]["signature_verified"] is False and "not by one of the trusted_signing_keys" in \
        other["db"]["signature_problem"]
    assert {b["signature_verified"] for b in backup_report(_location(str(root)))["backups"]} == {None}  # no keys given
    assert secret not in str(report) and plain["id"] in str(report)


def test_a_reader_with_days_auto_and_no_retention_still_reads_and_a_writer_is_refused(tmp_path):
    root = str(tmp_path / "store")
    _backup(_location(root))
    auto = {"mode": "GOVERNANCE", "days": "auto"}  # the restore role gets the storage options as they are
    assert catalog.resolve_backup(_location(root, object_lock=auto), "db")["series"] == "db"
    assert backup_report(_location(root, object_lock=auto))["series"]["db"]["count"] == 1
    with pytest.raises(ConfigError, match="days=auto needs the retention policy"):
        _backup(_location(root, object_lock=auto))
    assert len(catalog.list_backups(FileLocation(root))["db"]) == 1
