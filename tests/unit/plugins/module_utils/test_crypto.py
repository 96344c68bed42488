# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The age format and manifest signatures (_crypto), checked against Debian's age CLI both ways."""

from __future__ import annotations

import os
import subprocess

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._crypto import age, bech32, signing
from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, IntegrityError

AGE, AGE_KEYGEN = "/usr/bin/age", "/usr/bin/age-keygen"


def keygen(path):
    """(identity text, recipient text) of a fresh age-keygen identity written to ``path`` (0600)."""
    subprocess.run([AGE_KEYGEN, "-o", str(path)], check=True, capture_output=True)
    secret = [line for line in path.read_text().splitlines() if line.startswith("AGE-SECRET-KEY-1")][0]
    public = subprocess.run([AGE_KEYGEN, "-y", str(path)], check=True, capture_output=True, text=True).stdout.strip()
    return secret, public


def encrypt(data, recipients, piece=7777):
    out = []
    enc = age.Encryptor(out.append, recipients)
    for start in range(0, len(data), piece):
        enc.write(data[start:start + piece])
    enc.finish()
    return b"".join(out)


def decrypt(blob, identities, piece=5000):
    dec = age.Decryptor(identities)
    out = [dec.feed(blob[start:start + piece]) for start in range(0, len(blob), piece)]
    out.append(dec.finish())
    return b"".join(out)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    path = tmp_path_factory.mktemp("age") / "key.txt"
    secret, public = keygen(path)
    return {"path": path, "secret": secret, "public": public}


def test_keys_parse_as_age_keygen_made_them(keys):
    identity = age.Identity(keys["secret"])
    assert identity.recipient == keys["public"] == age.Recipient(keys["public"]).text
    assert [i.recipient for i in age.read_identity_file(str(keys["path"]))] == [keys["public"]]
    hrp, data = bech32.decode(keys["public"])
    assert hrp == "age" and bech32.encode(hrp, data) == keys["public"]


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 2 * 65536, 300001])
def test_the_age_cli_decrypts_what_we_encrypt(keys, size):
    data = os.urandom(size)
    blob = encrypt(data, [age.Recipient(keys["public"])])
    out = subprocess.run([AGE, "-d", "-i", str(keys["path"])], input=blob, capture_output=True, check=True).stdout
    assert out == data
    assert decrypt(blob, [age.Identity(keys["secret"])]) == data


@pytest.mark.parametrize("size", [0, 1, 65536, 65537, 300001])
def test_we_decrypt_what_the_age_cli_encrypts(keys, tmp_path, size):
    other_secret, other_public = keygen(tmp_path / "other.txt")
    data = os.urandom(size)
    blob = subprocess.run([AGE, "-r", other_public, "-r", keys["public"]], input=data, capture_output=True,
                          check=True).stdout
    for piece in (1, 4096, 65552, 1 << 20):
        assert decrypt(blob, [age.Identity(keys["secret"])], piece) == data
    assert decrypt(blob, [age.Identity(other_secret)]) == data


def test_wrong_identity_is_a_config_error(keys, tmp_path):
    other_secret = keygen(tmp_path / "other.txt")[0]
    blob = encrypt(b"secret data", [age.Recipient(keys["public"])])
    with pytest.raises(age.NoIdentityError) as exc:
        decrypt(blob, [age.Identity(other_secret)])
    assert isinstance(exc.value, ConfigError) and "none of them one of the 1 identities" in exc.value.msg
    with pytest.raises(age.NoIdentityError):
        age.Decryptor([])


@pytest.mark.parametrize("damage", ["truncate", "flip_payload", "flip_header", "drop_last_chunk", "not_age"])
def test_damage_is_detected(keys, damage):
    data = os.urandom(3 * 65536 + 10)
    blob = bytearray(encrypt(data, [age.Recipient(keys["public"])]))
    header_end = blob.index(b"\n--- ") + 1
    if damage == "truncate":
        blob = blob[:-1]
    elif damage == "flip_payload":
        blob[-100] ^= 1
    elif damage == "flip_header":
        blob[header_end - 5] ^= 1  # the stanza body: its line is 43 characters
    elif damage == "drop_last_chunk":
        blob = blob[:len(blob) - (10 + 16)]  # a full chunk now ends the file without the last flag
    else:
        blob = b"hello world, this is not age\n" * 10
    with pytest.raises((IntegrityError, ConfigError)):
        decrypt(bytes(blob), [age.Identity(keys["secret"])])


@pytest.mark.parametrize("text", ["age1xyz", "AGE-SECRET-KEY-1QQQQ", "", "ssh-ed25519 AAAAC3Nza", 42])
def test_bad_recipients_are_one_line_errors(text):
    with pytest.raises(ConfigError) as exc:
        age.Recipient(text)
    assert "is not an age X25519 recipient" in exc.value.msg


def test_bad_identity_never_quotes_the_key(keys):
    broken = keys["secret"][:-1] + ("Q" if keys["secret"][-1] != "Q" else "P")
    with pytest.raises(ConfigError) as exc:
        age.Identity(broken)
    assert broken not in exc.value.msg and keys["secret"][16:] not in exc.value.msg


def test_identity_file_readable_by_others_is_refused(keys, tmp_path):
    path = tmp_path / "shared.txt"
    path.write_text(keys["path"].read_text())
    path.chmod(0o644)
    with pytest.raises(ConfigError) as exc:
        age.read_identity_file(str(path))
    assert "has mode 0644" in exc.value.msg and "chmod 0600" in exc.value.msg
    path.chmod(0o600)
    assert len(age.read_identity_file(str(path))) == 1


# ------------------------------------------------------------------ signatures

def _ssh_keypair(tmp_path, name):
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)], check=True)
    return path.read_text(), (tmp_path / (name + ".pub")).read_text()


def _pem_keypair(tmp_path):
    path = tmp_path / "pem.key"
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(path)], check=True)
    public = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout"], check=True, capture_output=True,
                            text=True).stdout
    return path.read_text(), public


MANIFEST = {"format": "opskit.runbook/backup", "series": "db", "id": "20261201T020000Z-0123abcd",
            "sha256": "ab" * 32, "size_bytes": 10, "duration_seconds": 1.25, "source": {"name": "caf\u00e9"},
            "verification": {"result": "unverified"}}


@pytest.mark.parametrize("kind", ["openssh", "pem"])
def test_sign_and_check(tmp_path, kind):
    private, public = _ssh_keypair(tmp_path, "k") if kind == "openssh" else _pem_keypair(tmp_path)
    key = signing.load_signing_key(private)
    trusted = [signing.load_public_key(public)]
    signed = signing.sign(MANIFEST, key)
    signing.check(signed, trusted)
    if kind == "openssh":
        fpr = subprocess.run(["ssh-keygen", "-lf", str(tmp_path / "k.pub")], capture_output=True, text=True, check=True).stdout
        assert signed["signature"]["key_id"] == fpr.split()[1]
    # the verification record is rewritten by every restore test: outside the signature
    signing.check(dict(signed, verification={"result": "passed"}), trusted)
    with pytest.raises(IntegrityError) as exc:
        signing.check(dict(signed, sha256="cd" * 32), trusted)
    assert "backup 20261201T020000Z-0123abcd of series db: its manifest does not match its signature" in exc.value.msg


def test_unsigned_and_foreign_signatures_are_refused(tmp_path):
    ours = signing.load_signing_key(_ssh_keypair(tmp_path, "ours")[0])
    theirs = signing.load_signing_key(_ssh_keypair(tmp_path, "theirs")[0])
    trusted = [ours.public_key()]
    with pytest.raises(IntegrityError, match="of series db is not signed"):
        signing.check(MANIFEST, trusted)
    with pytest.raises(IntegrityError, match="is signed by SHA256:.*not by one of the trusted_signing_keys"):
        signing.check(signing.sign(MANIFEST, theirs), trusted)
    forged = signing.sign(MANIFEST, theirs)
    forged["signature"]["key_id"] = signing.key_id(ours.public_key())
    with pytest.raises(IntegrityError, match="does not match its signature"):
        signing.check(forged, trusted)


def test_canonical_form_is_documented_json():
    assert signing.canonical({"b": [1, 2.5], "a": "\u00e9", "signature": {}, "verification": {}}) == \
        b'{"a":"\\u00e9","b":[1,2.5]}'


@pytest.mark.parametrize("text, message", [
    ("not a key", "signing_key is not an unencrypted Ed25519 private key"),
    ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----", "signing_key is not an unencrypted"),
])
def test_bad_signing_keys(text, message):
    with pytest.raises(ConfigError, match=message) as exc:
        signing.load_signing_key(text)
    assert "\n" not in exc.value.msg


def test_rsa_keys_are_refused(tmp_path):
    path = tmp_path / "rsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(path)], check=True)
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        signing.load_signing_key(path.read_text())
    with pytest.raises(ConfigError, match="not an Ed25519 key"):
        signing.load_public_key((tmp_path / "rsa.pub").read_text())
    with pytest.raises(ConfigError, match="is not an Ed25519 public key"):
        signing.load_public_key("ssh-ed25519 garbage")
