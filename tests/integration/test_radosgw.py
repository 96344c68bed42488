# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The storage, rotation and Object Lock paths through ansible-playbook against Ceph RGW
(Debian's radosgw 16, ceph_fixtures.py), the S3 implementation many operators run, besides moto.

One playbook, on a bucket with Object Lock: two directory backups retained by
``object_lock`` (multipart uploads: the directory is larger than the 5 MiB minimum
part), backup_info, a verification (its record replaces the locked manifest by an If-Match
PutObject and retains the new version), and s3_rotate, which keeps the locked older backup; then
s3_rotate on a plain bucket, which deletes. The playbook runs on the real clock: RGW refuses a
SigV4 request dated more than 15 minutes off its own clock (moto does not check), so no faked
clock here, and nothing asserted depends on the date.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os

import botocore.exceptions

import pytest

import ceph_fixtures
from test_pg_backup import ok

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.base import ChangedError, ExistsError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

radosgw = ceph_fixtures.radosgw  # the session fixture
LOCK = {"mode": "GOVERNANCE", "days": 1}
BIG = 12 * 1024 * 1024  # random, so zstd keeps it this size: three parts of 5 MiB


def _store(rgw, bucket):
    return dict(endpoint_url=rgw.endpoint_url, access_key=rgw.access_key, secret_key=rgw.secret_key,
                region=rgw.region, destination="s3://%s/rgw" % bucket)


def _volume(name, state, path, store, **args):
    return {"name": name, "ignore_errors": True,
            "opskit.runbook.volume_backup": dict(state=state, path=path, series="conf", **dict(store, **args))}


def _rotate(name, store):
    args = {k: v for k, v in store.items() if k != "destination"}
    return {"name": name, "ignore_errors": True,
            "opskit.runbook.s3_rotate": dict(args, location=store["destination"], keep_last=1)}


def _location(rgw, bucket):
    return open_location("s3://%s/rgw" % bucket, endpoint_url=rgw.endpoint_url, access_key=rgw.access_key,
                         secret_key=rgw.secret_key)


def _seed(location, days_ago):
    now = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(days=days_ago)
    with BackupSession(location, "db", "generic", compression="none", now=now) as session:
        with session.artifact("bin") as out:
            out.write(b"payload %d" % days_ago)
        return session.publish()


def test_round_trip_rotation_and_object_lock_on_radosgw(radosgw, run_playbook, tmp_path):
    rgw = radosgw
    bucket, plain = rgw.new_bucket("opskit-rgw-lock", object_lock=True), rgw.new_bucket()
    store = _store(rgw, bucket)
    seeded = [_seed(_location(rgw, plain), days) for days in (2, 1)]
    src = tmp_path / "conf"
    (src / "sub").mkdir(parents=True)
    (src / "app.ini").write_text("[db]\nhost = db1\n")
    (src / "sub" / "blob.bin").write_bytes(os.urandom(BIG))
    res = run_playbook(json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": [
        _volume("backup 1", "backed_up", str(src), store, object_lock=LOCK),
        _volume("backup 2", "backed_up", str(src), store, object_lock=LOCK),
        {"name": "info", "ignore_errors": True, "opskit.runbook.backup_info": dict(store)},
        _volume("verify", "verified", str(tmp_path / "scratch"), store),
        _rotate("rotate locked", store),
        _rotate("rotate", _store(rgw, plain)),
    ]}]))
    first, second = ok(res.task("backup 1"))["backup"], ok(res.task("backup 2"))["backup"]

    # storage: listed, verified, the sha256 of the stored bytes, a multipart object
    info = ok(res.task("info"))["series"]["conf"]
    assert info["count"] == 2 and info["newest"]["id"] == second["id"]
    verification = ok(res.task("verify"))["verification"]
    assert verification["result"] == "passed", verification
    objects = {o["Key"] for o in rgw.client.list_objects_v2(Bucket=bucket)["Contents"]}
    artifact = "rgw/conf/" + second["url"].rsplit("/", 1)[-1]
    assert artifact in objects and artifact.endswith(".tar.zst"), sorted(objects)
    stored = rgw.client.get_object(Bucket=bucket, Key=artifact)
    assert stored["ETag"].strip('"').endswith("-3")  # three parts: the multipart writer ran
    manifest_key = [k for k in objects if second["id"] in k and k.endswith(".manifest.json")][0]
    manifest = json.loads(rgw.client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    assert hashlib.sha256(stored["Body"].read()).hexdigest() == manifest["sha256"]
    assert manifest["verification"]["result"] == "passed"  # recorded through If-Match on RGW
    assert manifest["object_lock"]["mode"] == "GOVERNANCE"

    # rotation: keep_last=1 keeps the older backup under Object Lock, and deletes on a plain bucket
    locked = ok(res.task("rotate locked"))["series"]["conf"]
    assert locked["deleted"] == [] and [x["id"] for x in locked["locked"]] == [first["id"]], locked
    assert locked["locked"][0]["reason"].startswith("object lock GOVERNANCE until ")
    rotated = ok(res.task("rotate"))["series"]["db"]
    assert [d["id"] for d in rotated["deleted"]] == [seeded[0]["id"]]
    assert not [o for o in rgw.client.list_objects_v2(Bucket=plain)["Contents"] if seeded[0]["id"] in o["Key"]]
    _check_locked(rgw, bucket, manifest_key)


def _check_locked(rgw, bucket, verified_manifest):
    """Each version the locked backups wrote is retained, the verified manifest's new version
    too: a delete is refused until the date, and allowed with the governance bypass (which
    cleans up)."""
    versions = [v for v in rgw.client.list_object_versions(Bucket=bucket)["Versions"] if "/." not in v["Key"]]
    assert len(versions) == 5, versions  # two backups, artifact and manifest each, and the verified manifest
    assert sum(v["Key"] == verified_manifest for v in versions) == 2
    for version in versions:
        retention = rgw.client.get_object_retention(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        assert retention["Retention"]["Mode"] == "GOVERNANCE", version["Key"]
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            rgw.client.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
    for version in rgw.client.list_object_versions(Bucket=bucket)["Versions"]:
        rgw.client.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"],
                                 BypassGovernanceRetention=True)
    assert not rgw.client.list_object_versions(Bucket=bucket).get("Versions")


def test_conditional_writes_of_the_collection_on_radosgw(radosgw):
    """The compare-and-swap the run lock and the verification records rely on, on RGW's own
    semantics: If-None-Match creates once, If-Match replaces only the version read."""
    bucket = radosgw.new_bucket()
    location = open_location("s3://%s/cas" % bucket, endpoint_url=radosgw.endpoint_url,
                             access_key=radosgw.access_key, secret_key=radosgw.secret_key)
    token = location.create_exclusive("s/rec", b"one")
    newer = location.replace_bytes("s/rec", b"two", token)
    with pytest.raises(ChangedError):
        location.replace_bytes("s/rec", b"three", token)  # stale: another writer came first
    assert location.read_versioned("s/rec") == (b"two", newer)
    assert location.conditional_writes is True
    assert location.object_lock_enabled() is False  # what refuses object_lock on this bucket


def test_the_run_lock_holds_on_an_object_lock_bucket_of_radosgw(radosgw):
    """RGW 16 ignores If-None-Match on a versioned bucket and If-Match on DeleteObject. The run
    lock's two primitives still hold there: a second create of a held key is refused and the
    holder's object stays; a release with a stale ETag deletes nothing; a released key can be
    taken again."""
    bucket = radosgw.new_bucket(object_lock=True)
    location = open_location("s3://%s/lock" % bucket, endpoint_url=radosgw.endpoint_url,
                             access_key=radosgw.access_key, secret_key=radosgw.secret_key)
    held = location.create_exclusive("db/.opskit-lock", b"run A")
    with pytest.raises(ExistsError):
        location.create_exclusive("db/.opskit-lock", b"run B")
    assert location.read_versioned("db/.opskit-lock") == (b"run A", held)
    with pytest.raises(ChangedError):
        location.delete_if("db/.opskit-lock", '"0123456789abcdef0123456789abcdef"')
    assert location.read_versioned("db/.opskit-lock")[0] == b"run A"
    assert location.delete_if("db/.opskit-lock", held) is True
    again = location.create_exclusive("db/.opskit-lock", b"run B")
    assert location.read_versioned("db/.opskit-lock") == (b"run B", again)
