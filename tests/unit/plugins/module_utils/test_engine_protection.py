# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The engine with age encryption and signed manifests, on a real directory, read by the age CLI."""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import subprocess

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._crypto import signing
from ansible_collections.opskit.runbook.plugins.module_utils._crypto.age import fingerprint
from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.artifacts import ArtifactReader, verify_stored
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, IntegrityError
from ansible_collections.opskit.runbook.plugins.module_utils._storage.file import FileLocation
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import (
    location_from_params, storage_argspec)


def keygen(path):
    """(identity, recipient) of a fresh age-keygen identity file (age-keygen writes it 0600)."""
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    secret = [line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1")][0]
    return secret, subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True,
                                  text=True).stdout.strip()


MAIN = os.urandom(200000) + b"INSERT INTO t VALUES (1);\n" * 20000
GLOBALS = b"CREATE ROLE app;\n" * 100


def _location(root, **options):
    params = {k: None for k in storage_argspec()}
    params.update(location="file://%s" % root, **options)
    return location_from_params(params)


def _backup(location, compression="zstd", now=None):
    with BackupSession(location, "db", "postgres", compression=compression, now=now) as session:
        with session.artifact("sql", name="globals") as out:
            out.write(GLOBALS)
        with session.artifact("dump") as out:
            for start in range(0, len(MAIN), 100000):
                out.write(MAIN[start:start + 100000])
        return session.publish()


def _read(location, manifest, name=None):
    with ArtifactReader(location, manifest, name) as reader:
        return reader.read(-1)


@pytest.fixture
def keys(tmp_path):
    secret, public = keygen(tmp_path / "id.txt")
    other = keygen(tmp_path / "other.txt")[0]
    return {"file": str(tmp_path / "id.txt"), "secret": secret, "public": public, "other": other}


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_encrypted_backup_is_read_by_the_age_cli_and_by_the_engine(tmp_path, keys, compression):
    root = tmp_path / "store"
    enc = _backup(_location(root, encrypt_recipients=[keys["public"]]), compression)
    plain = _backup(_location(tmp_path / "plain"), compression)
    assert enc["encryption"]["client_side"] == "age"
    assert enc["encryption"]["recipients"] == [fingerprint(keys["public"])]
    assert keys["public"] not in json.dumps(enc)
    assert enc["artifact"].endswith({"zstd": ".dump.zst.age", "gzip": ".dump.gz.age", "none": ".dump.age"}[compression])
    decompress = {"zstd": ["zstd", "-dc"], "gzip": ["gzip", "-dc"], "none": ["cat"]}[compression]
    for name, expected in ((enc["artifact"], MAIN), (enc["companions"][0]["key"], GLOBALS)):
        stored = (root / "db" / name).read_bytes()
        assert stored.startswith(b"age-encryption.org/v1\n")
        clear = subprocess.run(["age", "-d", "-i", keys["file"]], input=stored, capture_output=True, check=True).stdout
        assert subprocess.run(decompress, input=clear, capture_output=True, check=True).stdout == expected
    # the module's own reader, with an identity text or an identity file
    for opts in ({"decrypt_identities": [keys["other"], keys["secret"]]}, {"decrypt_identity_files": [keys["file"]]}):
        reader_loc = _location(root, **opts)
        manifest = catalog.resolve_backup(reader_loc, "db", "latest")
        assert _read(reader_loc, manifest) == MAIN == _read(_location(tmp_path / "plain"), plain)
        assert _read(reader_loc, manifest, "globals") == GLOBALS
    # the sha256 is over the stored bytes: checking needs no key
    assert verify_stored(_location(root), enc) == enc["size_bytes"] == (root / "db" / enc["artifact"]).stat().st_size


def test_the_engine_restores_what_the_age_cli_encrypted(tmp_path, keys):
    """A backup written unencrypted, then its artifact replaced by the CLI's encryption of it."""
    root = tmp_path / "store"
    manifest = _backup(_location(root), "zstd")
    path = root / "db" / manifest["artifact"]
    blob = subprocess.run(["age", "-r", keys["public"]], input=path.read_bytes(), capture_output=True, check=True).stdout
    path.write_bytes(blob)
    edited = dict(manifest, size_bytes=len(blob), sha256=hashlib.sha256(blob).hexdigest(),
                  encryption=dict(manifest["encryption"], client_side="age"), companions=[])
    assert _read(_location(root, decrypt_identities=[keys["secret"]]), edited) == MAIN


def test_missing_or_wrong_identity_is_refused_before_a_restore(tmp_path, keys):
    root = tmp_path / "store"
    _backup(_location(root, encrypt_recipients=[keys["public"]]))
    with pytest.raises(ConfigError) as exc:
        catalog.resolve_backup(_location(root), "db", "latest")
    assert "is encrypted with age (recipients sha256:" in exc.value.msg
    assert "give its identity in decrypt_identities" in exc.value.msg
    with pytest.raises(ConfigError) as exc:
        catalog.resolve_backup(_location(root, decrypt_identities=[keys["other"]]), "db", "latest")
    assert "cannot be decrypted" in exc.value.msg and "none of them one of the 1 identities" in exc.value.msg
    assert keys["other"] not in exc.value.msg and "\n" not in exc.value.msg


def test_damaged_ciphertext_is_a_sha256_mismatch(tmp_path, keys):
    root = tmp_path / "store"
    manifest = _backup(_location(root, encrypt_recipients=[keys["public"]]))
    path = root / "db" / manifest["artifact"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    loc = _location(root, decrypt_identities=[keys["secret"]])
    with pytest.raises(IntegrityError, match="sha256 .* does not match the manifest"):
        _read(loc, catalog.resolve_backup(loc, "db", "latest"))


def test_invalid_recipient_fails_before_anything_is_written(tmp_path):
    root = tmp_path / "store"
    with pytest.raises(ConfigError, match="'age1nope' is not an age X25519 recipient"):
        _backup(_location(root, encrypt_recipients=["age1nope"]))
    assert not root.exists() or not any(root.rglob("*.*"))


# ------------------------------------------------------------------ signatures

def _ed25519(tmp_path, name):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text(), (tmp_path / (name + ".pub")).read_text().strip()


def test_signed_manifests_and_what_trusted_keys_refuse(tmp_path):
    root = tmp_path / "store"
    private, public = _ed25519(tmp_path, "ours")
    _their_private, their_public = _ed25519(tmp_path, "theirs")
    hour_ago = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    manifest = _backup(_location(root, signing_key=private), now=hour_ago)  # the planted one is newer
    assert manifest["signature"]["algorithm"] == "ed25519"
    trusting = _location(root, trusted_signing_keys=[their_public, public])
    assert catalog.resolve_backup(trusting, "db", manifest["id"])["id"] == manifest["id"]
    # a verification record rewrites the manifest; the signature stays valid
    catalog.update_verification(trusting, manifest, "restore", "passed")
    assert catalog.resolve_backup(trusting, "db", "latest")["verification"]["result"] == "passed"
    # wrong key
    with pytest.raises(IntegrityError) as exc:
        catalog.resolve_backup(_location(root, trusted_signing_keys=[their_public]), "db", "latest")
    assert exc.value.msg.startswith("backup %s of series db is signed by SHA256:" % manifest["id"])
    # tampered: another sha256 in the manifest
    key = root / "db" / ("%s.manifest.json" % manifest["id"])
    stored = json.loads(key.read_text())
    key.write_text(json.dumps(dict(stored, sha256="0" * 64)))
    with pytest.raises(IntegrityError, match="of series db: its manifest does not match its signature"):
        catalog.resolve_backup(trusting, "db", "latest")
    # unsigned (planted, valid sha256): refused even as the latest backup
    key.write_text(json.dumps(stored))
    planted = _backup(_location(root))
    with pytest.raises(IntegrityError) as exc:
        catalog.resolve_backup(trusting, "db", "latest")
    assert exc.value.msg == ("backup %s of series db is not signed, and trusted_signing_keys are set: refused"
                             % planted["id"])
    # without trusted keys nothing is checked (and rotation never asks)
    assert catalog.resolve_backup(_location(root), "db", "latest")["id"] == planted["id"]


def test_bad_signing_options_are_one_line_errors(tmp_path):
    with pytest.raises(ConfigError, match="signing_key is not"):
        _backup(_location(tmp_path / "s", signing_key="-----BEGIN OPENSSH PRIVATE KEY-----\nxx\n"))
    with pytest.raises(ConfigError, match="trusted_signing_keys: 'ssh-rsa AAAA' is not"):
        catalog.resolve_backup(_location(tmp_path / "s", trusted_signing_keys=["ssh-rsa AAAA"]), "db")


def test_signature_covers_the_encryption_record(tmp_path, keys):
    private, public = _ed25519(tmp_path, "ours")
    root = tmp_path / "store"
    manifest = _backup(_location(root, signing_key=private, encrypt_recipients=[keys["public"]]))
    signing.check(manifest, [signing.load_public_key(public)])
    with pytest.raises(IntegrityError):
        signing.check(dict(manifest, encryption={"client_side": "none", "at_rest": "none"}),
                      [signing.load_public_key(public)])


# ------------------------------------------------------------------ Object Lock

class _LockingStore(FileLocation):
    """A directory that answers like a bucket with Object Lock enabled, recording retention calls
    (moto checks the real thing in tests/integration/test_encryption.py)."""

    scheme = "s3"
    bucket = "locked-bucket"

    def __init__(self, root, enabled=True):
        super().__init__(root)
        self.enabled, self.calls = enabled, []

    def object_lock_enabled(self):
        return self.enabled

    def full_key(self, key):
        return key

    def call(self, what, method, **kwargs):
        self.calls.append((method, kwargs["Key"], kwargs["Retention"]))


def test_object_lock_retains_every_object_of_the_backup(tmp_path):
    store = _LockingStore(str(tmp_path / "b"))
    store.protection_options = {"object_lock": {"mode": "COMPLIANCE", "days": 30}}
    start = datetime.datetime(2026, 12, 1, 2, 0, 0, 500000, tzinfo=datetime.timezone.utc)
    manifest = _backup(store, now=start)
    until = datetime.datetime(2026, 12, 31, 2, 0, 0, tzinfo=datetime.timezone.utc)
    assert manifest["object_lock"] == {"mode": "COMPLIANCE", "retain_until": "2026-12-31T02:00:00Z", "days": 30}
    assert sorted(key for _m, key, _r in store.calls) == sorted(
        ["db/" + manifest["artifact"], "db/" + manifest["companions"][0]["key"], "db/%s.manifest.json" % manifest["id"]])
    assert {(m, r["Mode"], r["RetainUntilDate"]) for m, _k, r in store.calls} == {("put_object_retention", "COMPLIANCE", until)}


@pytest.mark.parametrize("lock, enabled, message", [
    ({"mode": "GOVERNANCE", "days": 1}, False, "bucket locked-bucket does not have Object Lock enabled"),
    ({"mode": "FOREVER", "days": 1}, True, "mode 'FOREVER' is not one of GOVERNANCE, COMPLIANCE"),
    ({"mode": "GOVERNANCE", "days": 0}, True, "days must be a whole number of days, at least 1"),
])
def test_object_lock_refusals_write_nothing(tmp_path, lock, enabled, message):
    store = _LockingStore(str(tmp_path / "b"), enabled)
    store.protection_options = {"object_lock": lock}
    with pytest.raises(ConfigError, match=message):
        _backup(store)
    assert not store.calls
    assert not (tmp_path / "b").exists() or not any((tmp_path / "b").rglob("*.*"))


def test_object_lock_needs_s3(tmp_path):
    with pytest.raises(ConfigError, match="object_lock needs an s3:// location"):
        _backup(_location(tmp_path / "d", object_lock={"mode": "GOVERNANCE", "days": 1}))
