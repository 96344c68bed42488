# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ed25519 signatures of backup manifests.

What is signed (``canonical``): the manifest without its ``signature`` and ``verification``
fields (verification is rewritten by every restore test), as JSON with sorted keys, no
whitespace (separators ``,`` and ``:``), ASCII only (``\\uXXXX`` escapes), UTF-8 bytes:
Python's ``json.dumps(m, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``. The
manifest lists every artifact's sha256, so the signature covers every stored byte.

The manifest carries ``signature: {algorithm: ed25519, key_id, value}``: ``key_id`` is the
OpenSSH fingerprint of the public key (``SHA256:...``, what ``ssh-keygen -lf key.pub`` prints),
``value`` the base64 signature. Keys: private keys in PEM (PKCS#8) or OpenSSH format without a
passphrase; public keys as ``ssh-ed25519 AAAA...`` lines or PEM.
"""

from __future__ import annotations

import base64
import hashlib
import json

from .._errors import ConfigError, IntegrityError
from .primitives import CRYPTOGRAPHY, lib

UNSIGNED_FIELDS = ("signature", "verification")


def canonical(manifest):
    body = {k: v for k, v in manifest.items() if k not in UNSIGNED_FIELDS}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def _ed25519():
    return lib().asymmetric.ed25519


def load_signing_key(text):
    """The Ed25519 private key of ``signing_key``; ConfigError (never quoting it) otherwise."""
    ser = lib().serialization
    data = (text or "").strip().encode("utf-8") + b"\n"
    loader = ser.load_ssh_private_key if b"OPENSSH PRIVATE KEY" in data else ser.load_pem_private_key
    try:
        key = loader(data, password=None)
    except (ValueError, TypeError, CRYPTOGRAPHY.load().exceptions.UnsupportedAlgorithm) as exc:
        raise ConfigError("signing_key is not an unencrypted Ed25519 private key in PEM or OpenSSH format") from exc
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise ConfigError("signing_key is not an Ed25519 key (ssh-keygen -t ed25519 or openssl genpkey -algorithm ed25519)")
    return key


def load_public_key(text):
    """An Ed25519 public key from an ``ssh-ed25519 AAAA...`` line or a PEM block."""
    ser = lib().serialization
    data = (text or "").strip().encode("utf-8")
    try:
        key = (ser.load_pem_public_key(data + b"\n") if data.startswith(b"-----")
               else ser.load_ssh_public_key(b" ".join(data.split()[:2])))
    except (ValueError, TypeError, IndexError, CRYPTOGRAPHY.load().exceptions.UnsupportedAlgorithm) as exc:
        raise ConfigError("trusted_signing_keys: %r is not an Ed25519 public key (ssh-ed25519 AAAA... or PEM)"
                          % _shorten(text)) from exc
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise ConfigError("trusted_signing_keys: %r is not an Ed25519 key" % _shorten(text))
    return key


def _shorten(text):
    text = str(text)
    return text if len(text) <= 40 else text[:36] + "..."


def key_id(public):
    """OpenSSH's SHA256 fingerprint of a public key."""
    ser = lib().serialization
    blob = base64.b64decode(public.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")


def public_text(public):
    ser = lib().serialization
    return public.public_bytes(ser.Encoding.OpenSSH, ser.PublicFormat.OpenSSH).decode("ascii")


def sign(manifest, private):
    """``manifest`` with its signature field."""
    value = private.sign(canonical(manifest))
    signed = dict(manifest)
    signed["signature"] = {"algorithm": "ed25519", "key_id": key_id(private.public_key()),
                           "value": base64.b64encode(value).decode("ascii")}
    return signed


def check(manifest, trusted):
    """Raise IntegrityError unless ``manifest`` is signed by one of ``trusted`` (public keys)."""
    name = "backup %s of series %s" % (manifest.get("id"), manifest.get("series"))
    sig = manifest.get("signature")
    if not isinstance(sig, dict) or not sig.get("value"):
        raise IntegrityError("%s is not signed, and trusted_signing_keys are set: refused" % name)
    keys = {key_id(k): k for k in trusted}
    key = keys.get(sig.get("key_id"))
    if sig.get("algorithm") != "ed25519" or key is None:
        raise IntegrityError("%s is signed by %s, not by one of the trusted_signing_keys: refused"
                             % (name, sig.get("key_id")))
    try:
        key.verify(base64.b64decode(str(sig["value"]), validate=True), canonical(manifest))
    except (ValueError, CRYPTOGRAPHY.load().exceptions.InvalidSignature) as exc:
        raise IntegrityError("%s: its manifest does not match its signature by %s (altered after signing):"
                             " refused" % (name, sig.get("key_id"))) from exc
