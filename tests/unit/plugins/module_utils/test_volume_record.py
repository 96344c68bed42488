# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup state=verified on host directories and a file:// store (no service): the
judgement of a restore against the recorded counts, and the record it leaves in the manifest
(passed, failed, error; never written into a backup deleted meanwhile)."""

from __future__ import annotations

import json

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._errors import (
    ConfigError, IntegrityError, NotFoundError, OpsError, ServiceError, StorageError)
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
from ansible_collections.opskit.runbook.plugins.module_utils._volume import record
from ansible_collections.opskit.runbook.plugins.module_utils._volume.action import VolumeBackup


@pytest.mark.parametrize("stats, recorded, min_files, error", [
    ({"on_disk": {"files": 3, "file_bytes": 10}, "files": 9}, {"files": 3, "file_bytes": 10}, 1, None),
    ({"files": 3, "file_bytes": 10}, {"files": 3, "file_bytes": 10}, 1, None),   # counted in the archive (Engine API)
    ({"files": 3, "file_bytes": 10}, {"files": 3}, 1, None),                     # an old backup: files only
    ({"files": 3, "file_bytes": 10}, {"files": 4, "file_bytes": 10}, 1,
     "restored 3 files (10 bytes), the backup recorded 4 files (10 bytes)"),
    ({"on_disk": {"files": 3, "file_bytes": 9}}, {"files": 3, "file_bytes": 10}, 1,
     "restored 3 files (9 bytes), the backup recorded 3 files (10 bytes)"),
    ({"files": 0, "file_bytes": 0}, {"files": 0, "file_bytes": 0}, 1, "restored 0 files, expected at least 1"),
    ({"files": 0, "file_bytes": 0}, {"files": 0, "file_bytes": 0}, 0, None),
    ({"files": 2}, {}, 3, "restored 2 files, expected at least 3"),
])
def test_judge(stats, recorded, min_files, error):
    why, details = record.judge(stats, recorded, min_files)
    assert why == error
    assert details["counted"] == ("on disk" if "on_disk" in stats else "in the archive")
    assert details["recorded"] == recorded and details["min_files"] == min_files


@pytest.mark.parametrize("exc, outcome", [
    (IntegrityError("sha256 mismatch"), "failed"), (NotFoundError("artifact missing"), "failed"),
    (ServiceError("docker: connection refused"), "error"), (StorageError("S3 503"), "error"),
    (ConfigError("bad"), "error"),
])
def test_outcome_of(exc, outcome):
    assert record.outcome_of(exc) == outcome


@pytest.fixture
def store(tmp_path):
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.conf").write_text("listen 8080\n")
    (src / "sub" / "b.bin").write_bytes(b"x" * 500)
    location = open_location("file://%s" % (tmp_path / "store"))
    made = VolumeBackup({"state": "backed_up", "path": str(src), "series": "etc", "stop_containers": ["none"]},
                        location).run()
    return tmp_path, location, made["backup"]["id"]


def _verify(tmp_path, location, target="scratch", check_mode=False, **params):
    params = dict({"state": "verified", "path": str(tmp_path / target), "series": "etc", "stop_containers": ["none"],
                   "min_files": 1}, **params)
    return VolumeBackup(params, location, check_mode=check_mode).run()


def _stored(location, backup_id):
    return catalog.read_manifest(location, "etc", backup_id)["verification"]


def test_a_verified_restore_records_passed(store):
    tmp_path, location, backup_id = store
    assert _verify(tmp_path, location, check_mode=True)["verification"] == {"result": "unverified"}
    assert _stored(location, backup_id)["result"] == "unverified" and not (tmp_path / "scratch").exists()
    result = _verify(tmp_path, location)
    stored = _stored(location, backup_id)
    assert stored["result"] == "passed" and stored["method"] == "restore"
    assert stored["details"]["files"] == 2 and stored["details"]["file_bytes"] == 512
    assert stored["details"]["counted"] == "on disk"
    assert result["verification"] == stored and result["backup"]["verification"] == "passed"
    assert result["backup"]["verified_at"] == stored["verified_at"]
    assert result["msg"] == "backup %s verified: restored into directory %s, the files and bytes it recorded" % (
        backup_id, tmp_path / "scratch")
    assert (tmp_path / "scratch" / "sub" / "b.bin").read_bytes() == b"x" * 500   # left for the caller


def test_a_manifest_that_lies_is_recorded_failed(store):
    tmp_path, location, backup_id = store
    key = catalog.manifest_key("etc", backup_id)
    manifest = json.loads(location.read_bytes(key))
    manifest["source"]["file_bytes"] += 1
    location.write_bytes(key, json.dumps(manifest).encode())
    with pytest.raises(OpsError) as caught:
        _verify(tmp_path, location)
    why = "restored 2 files (512 bytes), the backup recorded 2 files (513 bytes)"
    assert caught.value.msg == "verification of backup %s failed: %s" % (backup_id, why)
    assert _stored(location, backup_id)["result"] == "failed" and _stored(location, backup_id)["details"]["error"] == why
    assert caught.value.result["verification"]["result"] == "failed" and caught.value.result["recorded"]["file_bytes"] == 513


def test_a_corrupt_archive_is_recorded_failed_and_an_unusable_target_as_error(store):
    tmp_path, location, backup_id = store
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(OpsError):
        _verify(tmp_path, location, target="file")
    assert _stored(location, backup_id)["result"] == "unverified"  # refused before the restore ran: nothing recorded
    _verify(tmp_path, location)
    artifact = catalog.read_manifest(location, "etc", backup_id)["artifact"]
    path = tmp_path / "store" / "etc" / artifact
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(IntegrityError) as caught:
        _verify(tmp_path, location, target="scratch2")
    stored = _stored(location, backup_id)
    assert stored["result"] == "failed" and stored["details"]["error"] == caught.value.msg
    assert caught.value.result["verification"]["result"] == "failed"
    assert not (tmp_path / "scratch2").exists()   # the failed restore removed the target it created


def test_a_backup_deleted_meanwhile_is_not_brought_back(store, monkeypatch):
    tmp_path, location, backup_id = store
    real = record.update_verification

    def rotated_meanwhile(location_, manifest, *args, **kwargs):
        for info in list(location_.list_objects("etc/")):
            if backup_id in info.key:
                location_.delete([info.key])
        return real(location_, manifest, *args, **kwargs)

    monkeypatch.setattr(record, "update_verification", rotated_meanwhile)
    with pytest.raises(NotFoundError, match="was deleted meanwhile: its verification is not recorded"):
        _verify(tmp_path, location)
    assert not [i.key for i in location.list_objects("etc/") if backup_id in i.key]


def test_force_a_used_target_and_a_bad_min_files_are_refused(store):
    tmp_path, location, backup_id = store
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "keep").write_text("x")
    with pytest.raises(ConfigError, match="state=verified restores only into an empty or new scratch target$"):
        _verify(tmp_path, location, target="used")
    assert (tmp_path / "used" / "keep").read_text() == "x" and _stored(location, backup_id)["result"] == "unverified"
    with pytest.raises(ConfigError, match="force=true is not allowed"):
        _verify(tmp_path, location, force=True)
    with pytest.raises(ConfigError, match="min_files: -1 is not valid"):
        _verify(tmp_path, location, min_files=-1)
