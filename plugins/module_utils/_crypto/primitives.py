# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The primitives of ``cryptography`` this package uses, imported on first use."""

from __future__ import annotations

import base64

from .._imports import Library

CRYPTOGRAPHY = Library(
    "cryptography", "cryptography", "cryptography.exceptions",
    "cryptography.hazmat.primitives.asymmetric.ed25519", "cryptography.hazmat.primitives.asymmetric.x25519",
    "cryptography.hazmat.primitives.ciphers.aead", "cryptography.hazmat.primitives.hashes",
    "cryptography.hazmat.primitives.hmac", "cryptography.hazmat.primitives.kdf.hkdf",
    "cryptography.hazmat.primitives.serialization")


def lib():
    """The ``cryptography.hazmat.primitives`` package (MissingLibraryError without cryptography)."""
    return CRYPTOGRAPHY.load().hazmat.primitives


def invalid_tag():
    return CRYPTOGRAPHY.load().exceptions.InvalidTag


def hkdf(ikm, salt, info, length=32):
    prim = lib()
    return prim.kdf.hkdf.HKDF(algorithm=prim.hashes.SHA256(), length=length, salt=salt or None,
                              info=info).derive(ikm)


def hmac_sha256(key, data):
    prim = lib()
    mac = prim.hmac.HMAC(key, prim.hashes.SHA256())
    mac.update(data)
    return mac.finalize()


def chacha(key):
    return lib().ciphers.aead.ChaCha20Poly1305(key)


_TAKES_BUFFERS = []


def aead_takes_buffers():
    """Whether this cryptography's AEAD takes memoryviews (recent ones do; old ones want bytes)."""
    if not _TAKES_BUFFERS:
        try:
            chacha(bytes(32)).encrypt(bytes(12), memoryview(b"probe"), None)
            _TAKES_BUFFERS.append(True)
        except TypeError:
            _TAKES_BUFFERS.append(False)
    return _TAKES_BUFFERS[0]


def b64encode(data):
    """Standard base64 without padding (age's encoding)."""
    return base64.b64encode(data).rstrip(b"=")


def b64decode(text):
    """Strict inverse of b64encode; ValueError for anything else (padding, other characters)."""
    if isinstance(text, str):
        text = text.encode("ascii", "replace")
    if b"=" in text or b"\n" in text or b"\r" in text:
        raise ValueError("padded or wrapped base64")
    data = base64.b64decode(text + b"=" * (-len(text) % 4), validate=True)
    if b64encode(data) != text:
        raise ValueError("non-canonical base64")
    return data
