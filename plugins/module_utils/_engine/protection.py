# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Client-side protection of backups: age encryption of artifacts, Ed25519 signatures of manifests.

The storage options (``encrypt_recipients``, ``decrypt_identities``, ``decrypt_identity_files``,
``signing_key``, ``trusted_signing_keys``) reach the engine on the location:
``_storage.options.location_from_params`` stores them as ``location.protection_options``
(plain data; the storage layer does not import _crypto). ``protection_for(location)`` parses
them once per location.

- Writing (``BackupSession``): with recipients every artifact is compressed, then encrypted
  (key suffix ``.age``), then hashed; the manifest records ``encryption.client_side: age`` and
  the recipients' fingerprints; with a signing key the manifest is signed last.
- Reading (``catalog.resolve_backup``, the way of every restore and verification): with trusted
  keys the signature is checked; an encrypted backup must open with the identities given:
  both before any target is touched. ``ArtifactReader`` then decrypts while streaming.
- Rotation, backup_info and sha256 checks read manifests and stored bytes: they need no key.
- Object Lock (``object_lock: {mode, days}``, S3 only): each artifact, and the manifest, gets
  a retention of ``days`` from the backup's start as soon as it is written (PutObjectRetention
  on the version just written). Each manifest version a verification writes gets the retention
  the manifest records (``relock``), whatever the options of the host that verifies.
- ``days: auto`` (``auto_lock_days``) derives the days from the retention policy (``retention``,
  the keep_* rules s3_rotate applies): the span of its finest calendar rule (keep_hourly N: N
  hours, keep_daily N: N days, keep_weekly N: 7 N days, keep_monthly N: 31 N days, keep_yearly N:
  366 N days), or keep_within if that is longer, rounded up to whole days. A backup that is the
  newest of its period stays at least that long, so it unlocks when rotation may delete it;
  coarser rules (a weekly or monthly keeper) keep it longer, unlocked after that span.
"""

from __future__ import annotations

import datetime
import math

from .._crypto import age, signing
from .._errors import ConfigError, IntegrityError
from .._timeutil import Duration, parse_rfc3339, rfc3339, utcnow
from .streams import CHUNK

PROTECTION_OPTIONS = ("encrypt_recipients", "decrypt_identities", "decrypt_identity_files", "signing_key",
                      "trusted_signing_keys", "object_lock")
LOCK_MODES = ("GOVERNANCE", "COMPLIANCE")
# the calendar rules of a retention policy, finest first, with the days one period lasts at most
CALENDAR_RULES = (("keep_hourly", 1 / 24.0), ("keep_daily", 1), ("keep_weekly", 7), ("keep_monthly", 31),
                  ("keep_yearly", 366))
CLIENT_SIDE = ("none", "age")
AGE_SUFFIX = ".age"


class Protection:
    """The parsed options. Identities are loaded on first use (a backup host needs none)."""

    def __init__(self, options=None):
        options = options or {}
        self.options = options
        self.recipients = _unique([age.Recipient(text) for text in options.get("encrypt_recipients") or []])
        key = options.get("signing_key")
        self.signing_key = signing.load_signing_key(key) if key else None
        self.trusted = [signing.load_public_key(text) for text in options.get("trusted_signing_keys") or []]
        self._identities = None
        self._object_lock = False  # parsed on first use: a restore with days=auto and no retention needs none

    @property
    def object_lock(self):
        if self._object_lock is False:
            self._object_lock = object_lock_option(self.options.get("object_lock"))
        return self._object_lock

    @property
    def encrypting(self):
        return bool(self.recipients)

    def identities(self):
        if self._identities is None:
            found = [age.Identity(text) for text in self.options.get("decrypt_identities") or []]
            for path in self.options.get("decrypt_identity_files") or []:
                found.extend(age.read_identity_file(path))
            self._identities = found
        return self._identities

    def encryption_fields(self):
        """What a new manifest's ``encryption`` gets besides ``at_rest``."""
        if not self.recipients:
            return {"client_side": "none"}
        return {"client_side": "age", "recipients": [r.fingerprint for r in self.recipients]}

    def check_lock_target(self, location):
        """Before a backup is written: Object Lock needs an S3 bucket with Object Lock enabled."""
        if not self.object_lock:
            return
        if location.scheme != "s3":
            raise ConfigError("object_lock needs an s3:// location (%s is not one)" % location.url)
        if not location.object_lock_enabled():
            raise ConfigError("object_lock: bucket %s does not have Object Lock enabled (it can only be enabled"
                              " on a versioned bucket, see put-object-lock-configuration)" % location.bucket)

    def lock(self, location, key, now):
        """Set the retention of the current version of ``key`` (a location key): ``days`` from ``now``."""
        if not self.object_lock:
            return None
        until = (now + datetime.timedelta(days=self.object_lock["days"])).replace(microsecond=0)
        location.call("setting the Object Lock retention of %s" % location.url_for(key), "put_object_retention",
                      Bucket=location.bucket, Key=location.full_key(key),
                      Retention={"Mode": self.object_lock["mode"], "RetainUntilDate": until})
        record = {"mode": self.object_lock["mode"], "retain_until": rfc3339(until), "days": self.object_lock["days"]}
        if self.object_lock.get("auto"):
            record["days_from"] = "retention"
        return record

    def sign(self, manifest):
        return signing.sign(manifest, self.signing_key) if self.signing_key else manifest

    def admit(self, location, manifest):
        """Refuse, before anything is restored, a backup that is not signed by a trusted key or
        that the identities cannot open."""
        if self.trusted:
            signing.check(manifest, self.trusted)
        if client_side(manifest) == "age":
            for name in [None] + [c.get("name") for c in manifest.get("companions") or []]:
                self._check_opens(location, manifest, name)

    def _check_opens(self, location, manifest, name):
        key = artifact_key(manifest, name)
        decryptor = age.Decryptor(self.identities_for(manifest))
        with location.open_read(key) as stream:
            try:
                while not decryptor.header_done:
                    data = stream.read(4096)
                    if not data:
                        decryptor.finish()
                        break
                    decryptor.feed(data)
            except ConfigError as exc:
                raise ConfigError("backup %s of series %s cannot be decrypted: %s is %s"
                                  % (manifest["id"], manifest["series"], key, exc.msg)) from exc
            except IntegrityError as exc:
                raise IntegrityError("backup %s of series %s: %s: %s" % (manifest["id"], manifest["series"], key,
                                                                         exc.msg)) from exc

    def identities_for(self, manifest):
        found = self.identities()
        if not found:
            raise ConfigError("backup %s of series %s is encrypted with age (recipients %s): give its identity"
                              " in decrypt_identities or decrypt_identity_files"
                              % (manifest["id"], manifest["series"], ", ".join(recipients_of(manifest)) or "?"))
        return found


def object_lock_option(value, option="object_lock"):
    """{"mode", "days"} from the option (``days`` a whole number, or ``auto`` with ``retention``)."""
    if not value:
        return None
    mode, days = value.get("mode"), value.get("days")
    if mode not in LOCK_MODES:
        raise ConfigError("%s: mode %r is not one of %s" % (option, mode, ", ".join(LOCK_MODES)))
    if days == "auto":
        return {"mode": mode, "days": auto_lock_days(value.get("retention"), option), "auto": True}
    if isinstance(days, str) and days.strip().isdigit():
        days = int(days)
    if isinstance(days, bool) or not isinstance(days, int) or days < 1:
        raise ConfigError("%s: days must be a whole number of days, at least 1, or auto (got %r)" % (option, days))
    return {"mode": mode, "days": days}


def auto_lock_days(policy, option="object_lock"):
    """The days of ``days: auto``: see the module docstring."""
    if not isinstance(policy, dict) or not policy:
        raise ConfigError("%s: days=auto needs the retention policy (retention: the keep_* rules s3_rotate"
                          " applies to the location)" % option)
    span = 0.0
    for rule, period in CALENDAR_RULES:
        count = policy.get(rule)
        if count in (None, 0, "0"):
            continue
        if str(count).strip() == "-1":
            raise ConfigError("%s: days=auto cannot follow %s=-1 (kept forever): give days" % (option, rule))
        try:
            span = int(count) * period
        except (TypeError, ValueError) as exc:
            raise ConfigError("%s: retention %s=%r is not a number" % (option, rule, count)) from exc
        break
    if policy.get("keep_within"):
        now = utcnow()
        within = Duration.parse(policy["keep_within"], "keep_within")
        span = max(span, (now - within.before(now)).total_seconds() / 86400.0)
    if span <= 0:
        raise ConfigError("%s: days=auto derives from keep_within or a keep_hourly/daily/weekly/monthly/yearly"
                          " rule, and the retention has none (keep_last alone says nothing about time): give days"
                          % option)
    return max(1, int(math.ceil(span - 1e-9)))


def relock(location, key, recorded):
    """Give the current version of ``key`` the retention a manifest records (``object_lock``:
    {mode, retain_until}), when that date is still ahead; returns it or None."""
    if location.scheme != "s3" or not isinstance(recorded, dict) or recorded.get("mode") not in LOCK_MODES:
        return None
    try:
        until = parse_rfc3339(recorded["retain_until"])
    except (KeyError, TypeError, ValueError):
        return None
    if until <= utcnow():
        return None
    location.call("setting the Object Lock retention of %s" % location.url_for(key), "put_object_retention",
                  Bucket=location.bucket, Key=location.full_key(key),
                  Retention={"Mode": recorded["mode"], "RetainUntilDate": until})
    return {"mode": recorded["mode"], "retain_until": rfc3339(until)}


def _unique(recipients):
    seen, out = set(), []
    for rec in recipients:
        if rec.text not in seen:
            seen.add(rec.text)
            out.append(rec)
    return out


def protection_for(location):
    """The Protection of ``location`` (parsed once; none when the options are absent)."""
    found = getattr(location, "_protection", None)
    if found is None:
        found = Protection(getattr(location, "protection_options", None))
        try:
            location._protection = found  # pylint: disable=protected-access
        except AttributeError:  # pragma: no cover - a location with __slots__
            pass
    return found


def protection_summary(location, manifest):
    """What backup_info shows of a backup's protection: client-side encryption and its recipients'
    fingerprints, the signature's key and, with trusted_signing_keys, whether it verifies, and the
    Object Lock retention the backup recorded. Reads nothing but the manifest; never raises."""
    encryption = manifest.get("encryption") or {}
    sig = manifest.get("signature") if isinstance(manifest.get("signature"), dict) else None
    out = {"client_side_encryption": encryption.get("client_side") or "none",
           "recipients": list(recipients_of(manifest)),
           "signed": bool(sig and sig.get("value")),
           "signed_by": sig.get("key_id") if sig else None,
           "signature_verified": None, "signature_problem": None,
           "object_lock": None}
    trusted = protection_for(location).trusted
    if trusted:
        try:
            signing.check(manifest, trusted)
            out["signature_verified"] = True
        except IntegrityError as exc:
            out.update(signature_verified=False, signature_problem=exc.msg)
    lock = manifest.get("object_lock")
    if isinstance(lock, dict):
        out["object_lock"] = {"mode": lock.get("mode"), "retain_until": lock.get("retain_until")}
    return out


def client_side(manifest):
    value = (manifest.get("encryption") or {}).get("client_side") or "none"
    if value not in CLIENT_SIDE:
        raise IntegrityError("backup %s of series %s uses client-side encryption %r, which this collection"
                             " cannot read" % (manifest.get("id"), manifest.get("series"), value))
    return value


def recipients_of(manifest):
    return (manifest.get("encryption") or {}).get("recipients") or []


def artifact_key(manifest, name=None):
    """The location key (series/...) of the main artifact or of a companion."""
    if name is None:
        return "%s/%s" % (manifest["series"], manifest["artifact"])
    for comp in manifest.get("companions") or []:
        if comp.get("name") == name:
            return "%s/%s" % (manifest["series"], comp["key"])
    raise IntegrityError("backup %s has no %s artifact" % (manifest["id"], name))


class DecryptingSource:
    """The plaintext of an age stream read from ``read_stored`` (a callable(size) -> bytes,
    b"" at the end), ``read(size)`` at most ``size`` bytes at a time."""

    def __init__(self, read_stored, identities):
        self.read_stored = read_stored
        self.decryptor = age.Decryptor(identities)
        self.pending, self.offset = b"", 0
        self.done = False

    def read(self, size=CHUNK):
        while self.offset >= len(self.pending) and not self.done:
            data = self.read_stored(CHUNK)
            self.offset = 0
            if data:
                self.pending = self.decryptor.feed(data)
            else:
                self.pending = self.decryptor.finish()
                self.done = True
        if self.offset == 0 and size >= len(self.pending):
            out, self.pending = self.pending, b""
            return out
        out = self.pending[self.offset:self.offset + size]
        self.offset += len(out)
        return out
