# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client-side age encryption and signed manifests through ansible-playbook: PostgreSQL and a
directory backed up to S3 (moto) encrypted and signed, every artifact decrypted by Debian's age
CLI, restored and verified by the modules; missing or wrong keys and planted backups refused."""

from __future__ import annotations

import datetime
import json
import os
import subprocess

import botocore.exceptions

import pytest
import yaml

from harness import VENV_BIN
from test_pg_backup import conn, databases, failed, name, ok, play, s3_args, task

LOCK = {"mode": "GOVERNANCE", "days": 1}


def _keygen(tmp_path, base):
    path = tmp_path / base
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    secret = [line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1")][0]
    public = subprocess.run(["age-keygen", "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return str(path), secret, public


def _ed25519(tmp_path, base):
    path = tmp_path / base
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.read_text(), (tmp_path / (base + ".pub")).read_text().strip()


def _cli_clear(s3, bucket, key, identity_file):
    """The object decrypted by the age CLI, then decompressed by zstd."""
    stored = s3.client.get_object(Bucket=bucket, Key=key)["Body"].read()
    assert stored.startswith(b"age-encryption.org/v1\n"), key
    clear = subprocess.run(["age", "-d", "-i", identity_file], input=stored, capture_output=True, check=True).stdout
    return subprocess.run(["zstd", "-dc"], input=clear, capture_output=True, check=True).stdout


def _unrestricted(sql):
    """A plain dump without pg_dump's random \\restrict key lines."""
    return b"".join(line for line in sql.splitlines(True) if not line.startswith((b"\\restrict ", b"\\unrestrict ")))


def _volume(state, path, **args):
    return {"name": "volume %s %s" % (state, os.path.basename(path)), "ignore_errors": True,
            "opskit.runbook.volume_backup": dict(state=state, path=path, **args)}


def test_encrypted_signed_round_trip_and_refusals(pg, s3, run_playbook, tmp_path):
    enc_db = name("pgenc_src")
    pg.createdb(enc_db)
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, label text);"
            " INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;", db=enc_db)
    identity_file, _secret, recipient = _keygen(tmp_path, "age.key")
    wrong_secret = _keygen(tmp_path, "wrong.key")[1]
    private, public = _ed25519(tmp_path, "sign")
    _their_private, their_public = _ed25519(tmp_path, "theirs")
    bucket = s3.new_bucket()
    store = s3_args(s3, bucket)
    lock_bucket = "opskit-lock-%s" % name("b").replace("_", "-")
    s3.client.create_bucket(Bucket=lock_bucket, ObjectLockEnabledForBucket=True)
    locking = s3_args(s3, lock_bucket)
    writer = dict(store, encrypt_recipients=[recipient], signing_key=private)
    reader = dict(store, decrypt_identity_files=[identity_file], trusted_signing_keys=[public])
    other_reader = dict(reader)
    other_reader["trusted_signing_keys"] = [their_public]
    src, dst = tmp_path / "conf", str(tmp_path / "conf-restored")
    (src / "sub").mkdir(parents=True)
    (src / "app.ini").write_text("[db]\nhost = db1\n")
    (src / "sub" / "blob.bin").write_bytes(os.urandom(200000))
    shared_file = str(tmp_path / "shared.key")
    with open(shared_file, "w") as fh:
        fh.write(open(identity_file).read())
    os.chmod(shared_file, 0o644)
    refused = [name("enc_none"), name("enc_wrong"), name("enc_unsigned")]
    restored_db = name("enc_restored")
    res = run_playbook(play(
        task("dump custom", database=enc_db, series="enc-custom", globals=True, **conn(pg), **writer),
        task("dump plain", database=enc_db, series="enc-plain", format="plain", **conn(pg), **writer),
        task("dump plain unencrypted", database=enc_db, series="clear-plain", format="plain", **conn(pg), **store),
        task("restore without identity", state="restored", series="enc-custom", target_database=refused[0],
             create=True, **conn(pg), **store),
        task("restore with a wrong identity", state="restored", series="enc-custom", target_database=refused[1],
             create=True, decrypt_identities=[wrong_secret], **conn(pg), **store),
        task("restore unsigned", state="restored", series="clear-plain", target_database=refused[2],
             create=True, **conn(pg), **reader),
        task("verify signed by another key", state="verified", series="enc-custom", **conn(pg),
             **other_reader),
        task("restore", state="restored", series="enc-custom", target_database=restored_db, create=True,
             restore_globals=True, **conn(pg), **reader),
        task("verify", state="verified", series="enc-plain", **conn(pg), **reader),
        _volume("backed_up", str(src), series="enc-dir", **writer),
        _volume("restored", dst, series="enc-dir", **reader),
        {"name": "info without keys", "ignore_errors": True, "opskit.runbook.backup_info": dict(store)},
        task("dump with a bad recipient", database=enc_db, series="enc-bad", **conn(pg),
             **dict(store, encrypt_recipients=["age1notakey"])),
        task("restore with a shared identity file", state="restored", series="enc-custom", target_database=refused[0],
             create=True, decrypt_identity_files=[shared_file], **conn(pg), **store),
        dict(_volume("backed_up", str(src), series="locked", **dict(locking, object_lock=LOCK)), name="volume locked"),
        dict(_volume("backed_up", str(src), series="unlockable", **dict(store, object_lock=LOCK)), name="lock refused"),
        dict(_volume("backed_up", str(src), series="locked", destination="file://%s" % (tmp_path / "lockdir"),
                     object_lock=LOCK), name="lock on file"),
    ))
    custom = ok(res.task("dump custom"))["backup"]
    assert custom["url"].endswith(".dump.zst.age")
    assert "is encrypted with age (recipients sha256:" in failed(res.task("restore without identity"))
    assert "cannot be decrypted" in failed(res.task("restore with a wrong identity"))
    assert "of series clear-plain is not signed, and trusted_signing_keys are set: refused" in \
        failed(res.task("restore unsigned"))
    assert "of series enc-custom is signed by SHA256:" in failed(res.task("verify signed by another key"))
    assert "'age1notakey' is not an age X25519 recipient" in failed(res.task("dump with a bad recipient"))
    assert "has mode 0644; an identity file must not be accessible to group or others" in \
        failed(res.task("restore with a shared identity file"))
    assert set(databases(pg, "enc_")) == {restored_db}  # the refused restores touched nothing
    ok(res.task("restore"))
    assert pg.psql("SELECT count(*) FROM items", restored_db).strip() == "1000"
    assert ok(res.task("verify"))["verification"]["result"] == "passed"
    ok(res.task("volume backed_up conf"))
    ok(res.task("volume restored conf-restored"))
    assert (tmp_path / "conf-restored" / "sub" / "blob.bin").read_bytes() == (src / "sub" / "blob.bin").read_bytes()
    info = ok(res.task("info without keys"))
    assert set(info["series"]) == {"enc-custom", "enc-plain", "clear-plain", "enc-dir"}  # enc-bad: nothing written

    # every artifact the modules wrote opens with the age CLI
    keys = [o["Key"] for o in s3.client.list_objects_v2(Bucket=bucket)["Contents"]]
    encrypted = [k for k in keys if k.endswith(".age")]
    kinds = {k.split("/")[1] + ":" + k.rsplit(".", 3)[-3] for k in encrypted}
    assert kinds == {"enc-custom:dump", "enc-custom:sql", "enc-plain:sql", "enc-dir:tar"}, kinds
    clear = {k.split("/")[1] + ":" + k.rsplit(".", 3)[-3]: _cli_clear(s3, bucket, k, identity_file) for k in encrypted}
    assert clear["enc-custom:dump"].startswith(b"PGDMP")
    assert b"CREATE ROLE" in clear["enc-custom:sql"]
    plain_key = [k for k in keys if k.startswith("pg/clear-plain/") and k.endswith(".sql.zst")][0]
    unencrypted = subprocess.run(["zstd", "-dc"], input=s3.client.get_object(Bucket=bucket, Key=plain_key)["Body"].read(),
                                 capture_output=True, check=True).stdout
    assert _unrestricted(clear["enc-plain:sql"]) == _unrestricted(unencrypted)
    listing = subprocess.run(["tar", "-tf", "-"], input=clear["enc-dir:tar"], capture_output=True, check=True).stdout
    assert b"sub/blob.bin" in listing
    _check_object_lock(s3, lock_bucket, ok(res.task("volume locked")))
    assert "bucket %s does not have Object Lock enabled" % bucket in failed(res.task("lock refused"))
    assert "object_lock needs an s3:// location" in failed(res.task("lock on file"))
    assert not [k for k in keys if "/unlockable/" in k]  # refused before anything was written


def _check_object_lock(s3, bucket, result):  # pylint: disable=unused-argument
    """Every object of the locked backup (artifact and manifest) is retained a day: deleting
    its version is refused; with the governance bypass (the test's cleanup) it is allowed."""
    versions = s3.client.list_object_versions(Bucket=bucket)["Versions"]
    keys = sorted(v["Key"] for v in versions if "/." not in v["Key"])  # not the in-flight marker nor the run lock
    assert [k.rsplit(".", 2)[-2:] for k in keys] == [["manifest", "json"], ["tar", "zst"]], keys
    manifest = json.loads(s3.client.get_object(Bucket=bucket, Key=keys[0])["Body"].read())
    assert manifest["object_lock"]["mode"] == "GOVERNANCE"
    for version in versions:
        if version["Key"] not in keys:
            continue
        head = s3.client.head_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        assert head["ObjectLockMode"] == "GOVERNANCE"  # (moto 5.2's GetObjectRetention answers 500)
        until = head["ObjectLockRetainUntilDate"]
        assert until.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ") == manifest["object_lock"]["retain_until"]
        with pytest.raises(botocore.exceptions.ClientError) as exc:
            s3.client.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"])
        assert exc.value.response["Error"]["Code"] == "AccessDenied"
    for version in versions:
        s3.client.delete_object(Bucket=bucket, Key=version["Key"], VersionId=version["VersionId"],
                                BypassGovernanceRetention=True)
    assert not s3.client.list_object_versions(Bucket=bucket).get("Versions")


def test_keygen_playbook_writes_usable_keys_into_vault(run_playbook, tmp_path):
    keygen = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "playbooks", "keygen.yml")
    password, vault = tmp_path / "vault-pass", tmp_path / "keys.yml"
    password.write_text("keygen-test-password\n")
    opts = {"keygen_vault_file": str(vault), "keygen_vault_password_file": str(password)}
    # twice in one run: the second never overwrites keys that may still be needed
    res = run_playbook([{"import_playbook": os.path.abspath(keygen)}] * 2, extra_vars=opts)
    assert vault.read_text().startswith("$ANSIBLE_VAULT;"), res.stdout[-3000:]
    assert res.rc != 0 and "exists: its keys may still be needed" in \
        res.task("Keygen | never overwrite existing keys (keygen_force=true to replace them)")["msg"]
    ansible_vault = os.path.join(VENV_BIN, "ansible-vault")
    keys = yaml.safe_load(subprocess.run([ansible_vault, "view", "--vault-password-file", str(password), str(vault)],
                                         check=True, capture_output=True, text=True).stdout)
    identity = tmp_path / "identity.txt"
    identity.write_text(keys["backup_age_identity"] + "\n")
    assert subprocess.run(["age-keygen", "-y", str(identity)], capture_output=True, text=True,
                          check=True).stdout.strip() == keys["backup_age_recipient"]
    signing = tmp_path / "signing"
    signing.write_text(keys["backup_signing_key"])
    signing.chmod(0o600)
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(signing)], capture_output=True, text=True, check=True).stdout
    assert derived.split()[:2] == keys["backup_signing_public_key"].split()
    assert sum(r["_task"] == "Keygen | remove the temporary directory" and r.get("changed") for r in res.results) == 1
