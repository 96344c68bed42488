# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The age file format (age-encryption.org/v1) with X25519 recipients, streaming both ways.

Spec: https://age-encryption.org/v1 (C2SP). A file is a text header, then the payload::

    age-encryption.org/v1
    -> X25519 <base64 ephemeral share>        one stanza per recipient
    <base64 file key wrapped for the recipient>
    --- <base64 HMAC-SHA256 of the header up to and including "---">
    <16-byte nonce><STREAM: ChaCha20-Poly1305 chunks of 64 KiB plaintext + 16-byte tag>

Keys: HKDF-SHA256 wraps the 16-byte file key per recipient (ikm = the X25519 shared secret,
salt = share || recipient, info ``age-encryption.org/v1/X25519``), keys the header MAC
(salt empty, info ``header``) and the payload (salt = nonce, info ``payload``). The STREAM nonce
is an 11-byte big-endian chunk counter and a last-chunk flag byte.

``Encryptor`` and ``Decryptor`` hold at most one chunk (plus what one write brings), whatever
the file size. Files written here are read by the ``age`` CLI and the reverse.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import stat

from .._errors import ConfigError, IntegrityError
from . import bech32
from .primitives import aead_takes_buffers, b64decode, b64encode, chacha, hkdf, hmac_sha256, invalid_tag, lib

VERSION_LINE = b"age-encryption.org/v1"
X25519_INFO = b"age-encryption.org/v1/X25519"
RECIPIENT_HRP = "age"
IDENTITY_HRP = "age-secret-key-"
CHUNK_SIZE = 64 * 1024
TAG_SIZE = 16
NONCE_SIZE = 16
MAX_HEADER = 64 * 1024
ZERO_NONCE = bytes(12)


class NoIdentityError(ConfigError):
    """None of the identities opens the file (a missing or wrong key: not damage)."""


class DecryptionError(IntegrityError):
    """The bytes are not a well-formed, authentic age file."""


def _x25519():
    return lib().asymmetric.x25519


def _raw_public(private):
    enc = lib().serialization
    return private.public_key().public_bytes(enc.Encoding.Raw, enc.PublicFormat.Raw)


def _key_bytes(text, hrp):
    """The 32 key bytes of a Bech32 age key with this human-readable part, or None."""
    try:
        found, data = bech32.decode(text.strip())
    except (ValueError, AttributeError):
        return None
    return data if found == hrp and len(data) == 32 else None


class Recipient:
    """An X25519 recipient, ``age1...``."""

    def __init__(self, text):
        data = _key_bytes(text, RECIPIENT_HRP)
        if data is None:
            raise ConfigError("encrypt_recipients: %r is not an age X25519 recipient (age1..., from"
                              " age-keygen -y)" % (_shorten(text),))
        self.public = data
        self.text = bech32.encode(RECIPIENT_HRP, data)

    @property
    def fingerprint(self):
        return fingerprint(self.text)

    def stanza(self, file_key):
        x25519 = _x25519()
        ephemeral = x25519.X25519PrivateKey.generate()
        share = _raw_public(ephemeral)
        shared = ephemeral.exchange(x25519.X25519PublicKey.from_public_bytes(self.public))
        wrap_key = hkdf(shared, share + self.public, X25519_INFO)
        body = chacha(wrap_key).encrypt(ZERO_NONCE, file_key, None)
        return b"-> X25519 " + b64encode(share) + b"\n" + b64encode(body) + b"\n"


class Identity:
    """An X25519 identity, ``AGE-SECRET-KEY-1...``. Its text never appears in a message."""

    def __init__(self, text, origin="decrypt_identities"):
        data = _key_bytes(text, IDENTITY_HRP)
        if data is None:
            raise ConfigError("%s: an entry is not an age X25519 identity (AGE-SECRET-KEY-1..., from"
                              " age-keygen)" % origin)
        self.key = _x25519().X25519PrivateKey.from_private_bytes(data)
        self.public = _raw_public(self.key)
        self.recipient = bech32.encode(RECIPIENT_HRP, self.public)

    def unwrap(self, args, body):
        """The file key of an X25519 stanza if it was wrapped for this identity, else None."""
        if len(args) != 1 or len(body) != 32:
            return None
        share = b64decode(args[0])
        if len(share) != 32:
            return None
        try:
            shared = self.key.exchange(_x25519().X25519PublicKey.from_public_bytes(share))
        except ValueError:  # a low-order point: all-zero shared secret
            return None
        if not any(shared):
            return None
        try:
            return chacha(hkdf(shared, share + self.public, X25519_INFO)).decrypt(ZERO_NONCE, body, None)
        except invalid_tag():
            return None


def fingerprint(recipient):
    """What a manifest records of a recipient: ``sha256:`` and 16 hex digits of its age1 text."""
    return "sha256:" + hashlib.sha256(recipient.encode("ascii")).hexdigest()[:16]


def _shorten(text):
    text = str(text)
    return text if len(text) <= 24 else text[:20] + "..."


def read_identity_file(path):
    """The identities of an age identity file (age-keygen's output: comments, one key a line).

    A file that group or others may read is refused: an identity is a secret.
    """
    try:
        with open(path, "rb") as fh:
            mode = os.fstat(fh.fileno()).st_mode
            data = fh.read(MAX_HEADER)
    except OSError as exc:
        raise ConfigError("decrypt_identity_files: %s cannot be read: %s" % (path, exc.strerror or exc)) from exc
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError("decrypt_identity_files: %s has mode %04o; an identity file must not be"
                          " accessible to group or others (chmod 0600)" % (path, stat.S_IMODE(mode)))
    lines = [line.strip() for line in data.decode("utf-8", "replace").splitlines()]
    keys = [Identity(line, "decrypt_identity_files %s" % path) for line in lines if line and not line.startswith("#")]
    if not keys:
        raise ConfigError("decrypt_identity_files: %s holds no AGE-SECRET-KEY-1... line" % path)
    return keys


# ------------------------------------------------------------------ encryption

def _nonce(counter, last):
    return counter.to_bytes(11, "big") + (b"\x01" if last else b"\x00")


class Encryptor:
    """Encrypt a stream for ``recipients`` into ``sink`` (a callable taking bytes).

    The header and nonce go out at once; each write passes on every complete chunk but the
    last one seen, which ``finish`` seals with the last-chunk flag.
    """

    def __init__(self, sink, recipients):
        if not recipients:
            raise ConfigError("encryption needs at least one recipient")
        self.sink = sink
        file_key = os.urandom(16)
        header = VERSION_LINE + b"\n" + b"".join(r.stanza(file_key) for r in recipients) + b"---"
        mac = hmac_sha256(hkdf(file_key, b"", b"header"), header)
        nonce = os.urandom(NONCE_SIZE)
        self.aead = chacha(hkdf(file_key, nonce, b"payload"))
        self.buf = bytearray()
        self.counter = 0
        sink(header + b" " + b64encode(mac) + b"\n" + nonce)

    def write(self, data):
        """Seal every chunk known not to be the last; copies only what stays for the next write."""
        view = memoryview(data)
        size = len(view)
        if self.buf:
            need = CHUNK_SIZE - len(self.buf)
            if len(view) <= need:
                self.buf += view
                return size
            self.buf += view[:need]
            view = view[need:]
            self._seal(self.buf, False)
            self.buf = bytearray()
        while len(view) > CHUNK_SIZE:
            self._seal(view[:CHUNK_SIZE], False)
            view = view[CHUNK_SIZE:]
        self.buf += view
        return size

    def _seal(self, chunk, last):
        self.sink(self.aead.encrypt(_nonce(self.counter, last), byteslike(chunk), None))
        self.counter += 1

    def finish(self):
        self._seal(self.buf, True)
        self.buf = bytearray()


def byteslike(view):
    """What the AEAD takes: the view itself where it takes buffers (no copy), else bytes."""
    return view if aead_takes_buffers() else bytes(view)


# ------------------------------------------------------------------ decryption

def parse_header(buf):
    """(stanzas [(type, args, body)], header bytes for the MAC, mac, end) or None if incomplete."""
    mark = buf.find(b"\n--- ")
    if mark < 0:
        if len(buf) > MAX_HEADER or (len(buf) >= len(VERSION_LINE) and not buf.startswith(VERSION_LINE)):
            raise DecryptionError("not an age file (age-encryption.org/v1)")
        return None
    end = buf.find(b"\n", mark + 1)
    if end < 0:
        return None
    lines = bytes(buf[:mark]).split(b"\n")
    if lines[0] != VERSION_LINE:
        raise DecryptionError("not an age file (age-encryption.org/v1)")
    try:
        stanzas = _stanzas(lines[1:])
        mac = b64decode(bytes(buf[mark + 5:end]))
    except ValueError as exc:
        raise DecryptionError("malformed age header: %s" % exc) from exc
    return stanzas, bytes(buf[:mark + 4]), mac, end + 1


def _stanzas(lines):
    stanzas, index = [], 0
    while index < len(lines):
        head = lines[index].split(b" ")
        if head[0] != b"->" or len(head) < 2:
            raise ValueError("expected a stanza")
        body, index = [], index + 1
        while True:
            if index >= len(lines):
                raise ValueError("stanza body not terminated")
            line = lines[index]
            index += 1
            body.append(b64decode(line) if line else b"")
            if len(line) < 64:
                break
        stanzas.append((head[1].decode("ascii", "replace"), [a.decode("ascii", "replace") for a in head[2:]],
                        b"".join(body)))
    if not stanzas:
        raise ValueError("no recipient stanza")
    return stanzas


def open_file_key(stanzas, identities):
    for kind, args, body in stanzas:
        if kind != "X25519":
            continue
        for identity in identities:
            key = identity.unwrap(args, body)
            if key is not None:
                return key
    kinds = sorted({s[0] for s in stanzas})
    raise NoIdentityError("encrypted to %d recipient(s) (%s), none of them one of the %d identities given"
                          % (len(stanzas), ", ".join(kinds), len(identities)))


class Decryptor:
    """Decrypt an age stream fed in pieces of any size: ``feed`` returns the plaintext known to be
    complete so far, ``finish`` the rest (and checks the end). At most one encrypted chunk is
    held back (it may be the last one)."""

    ENC_CHUNK = CHUNK_SIZE + TAG_SIZE

    def __init__(self, identities):
        if not identities:
            raise NoIdentityError("encrypted with age, and no identity was given (decrypt_identities or"
                                  " decrypt_identity_files)")
        self.identities = identities
        self.buf = bytearray()
        self.aead = None
        self.counter = 0
        self.header_done = False

    def _header(self):
        parsed = parse_header(self.buf)
        if parsed is None:
            return False
        stanzas, header, mac, end = parsed
        if len(self.buf) < end + NONCE_SIZE:
            return False
        file_key = open_file_key(stanzas, self.identities)
        if not hmac.compare_digest(hmac_sha256(hkdf(file_key, b"", b"header"), header), mac):
            raise DecryptionError("age header MAC mismatch (the header was altered)")
        nonce = bytes(self.buf[end:end + NONCE_SIZE])
        self.aead = chacha(hkdf(file_key, nonce, b"payload"))
        del self.buf[:end + NONCE_SIZE]
        self.header_done = True
        return True

    def _open(self, data, last):
        try:
            out = self.aead.decrypt(_nonce(self.counter, last), byteslike(data), None)
        except invalid_tag() as exc:
            raise DecryptionError("age payload chunk %d fails authentication (damaged or truncated)"
                                  % self.counter) from exc
        self.counter += 1
        return out

    def feed(self, data):
        self.buf += data
        if not self.header_done and not self._header():
            return b""
        if len(self.buf) <= self.ENC_CHUNK:
            return b""
        pos, end, out = 0, len(self.buf), []
        with memoryview(self.buf) as view:
            while end - pos > self.ENC_CHUNK:
                out.append(self._open(view[pos:pos + self.ENC_CHUNK], False))
                pos += self.ENC_CHUNK
        del self.buf[:pos]
        return b"".join(out)

    def finish(self):
        if not self.header_done and not self._header():
            raise DecryptionError("age file truncated in its header")
        if len(self.buf) < TAG_SIZE:
            raise DecryptionError("age payload truncated")
        out = self._open(bytes(self.buf), True)
        if not out and self.counter > 1:
            raise DecryptionError("age payload ends with an empty chunk")
        self.buf = bytearray()
        return out
