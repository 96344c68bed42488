# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The ``tls`` probe: any TCP endpoint, direct TLS or STARTTLS (smtp, imap, postgres).

    probe_tls(check, obs, timeout, ctx)    handshake, chain expiry, verification, protocol, cipher
    hostname_matches(names, ips, host)     RFC 6125 matching of a certificate's names (one wildcard label)
    starttls(sock, kind, reader)           the plain-text upgrade of smtp, imap and postgres

Measures: ``days_left`` is the smallest days-to-expiry over the leaf and every certificate the
server presented (an expiring intermediate counts), ``leaf_days``, ``chain_certs``, ``verified``
and ``hostname_ok`` (1 or 0), tls_ms, connect_ms, time_ms. A server that cannot be reached or
refuses the handshake is CRITICAL (down); a chain that does not verify, or a certificate not valid
for the name, is a CRITICAL problem while the days are still measured; expiry is judged only by
the thresholds on ``days_left`` (warning, critical), separately.

The first handshake verifies as a client would (the system CAs or ``ca_path``); when that fails, a
second one without verification reads the chain, so the days and the reason are both reported.
The presented chain comes from ``SSLObject.get_unverified_chain`` (CPython 3.10+); without it
only the leaf is measured.
"""

from __future__ import annotations

import datetime
import ipaddress
import ssl

from .._imports import Library
from .net import _Clock, _connect, _timed, cert_not_after, tls_handshake
from .probe import ProbeFailed, one_line
from .ranges import CRITICAL, format_number

CRYPTO_X509 = Library("cryptography", "cryptography.x509", "cryptography.x509.oid")
_PG_SSL_REQUEST = (8).to_bytes(4, "big") + (80877103).to_bytes(4, "big")


# --------------------------------------------------------------------------- STARTTLS

class _Lines:
    """Line reader on a plain socket that never reads past what the server sent before TLS."""

    def __init__(self, sock, clock):
        self.sock, self.clock, self.buffer = sock, clock, b""

    def line(self, what):
        while b"\n" not in self.buffer:
            self.sock.settimeout(self.clock.left(what))
            chunk = _timed(self.clock, what, self.sock.recv, 4096)
            if not chunk:
                raise ProbeFailed(CRITICAL, "connection closed %s" % what)
            self.buffer += chunk
        line, _sep, self.buffer = self.buffer.partition(b"\n")
        return line.decode("utf-8", "replace").rstrip("\r")

    def reply(self, what):
        """An SMTP reply (its last line, after ``NNN-`` continuation lines)."""
        line = self.line(what)
        while len(line) > 3 and line[3] == "-":
            line = self.line(what)
        return line


def _expect(line, prefix, what):
    if not line.startswith(prefix):
        raise ProbeFailed(CRITICAL, "STARTTLS refused %s: %r" % (what, one_line(line, 80)))


def starttls(sock, kind, clock):
    """Upgrade a plain connection so that the TLS handshake can start (smtp, imap, postgres)."""
    if kind == "postgres":
        sock.sendall(_PG_SSL_REQUEST)
        sock.settimeout(clock.left("waiting for the SSLRequest answer"))
        answer = _timed(clock, "waiting for the SSLRequest answer", sock.recv, 1)
        if answer != b"S":
            raise ProbeFailed(CRITICAL, "PostgreSQL refused SSL (answered %r to SSLRequest: ssl is off)" % answer)
        return
    lines = _Lines(sock, clock)
    if kind == "smtp":
        _expect(lines.reply("waiting for the SMTP greeting"), "220", "(greeting)")
        sock.sendall(b"EHLO opskit.runbook\r\n")
        _expect(lines.reply("waiting for the EHLO answer"), "250", "(EHLO)")
        sock.sendall(b"STARTTLS\r\n")
        _expect(lines.reply("waiting for the STARTTLS answer"), "220", "by the SMTP server")
    elif kind == "imap":
        _expect(lines.line("waiting for the IMAP greeting"), "* OK", "(greeting)")
        sock.sendall(b"a1 STARTTLS\r\n")
        line = lines.line("waiting for the STARTTLS answer")
        while line.startswith("*"):
            line = lines.line("waiting for the STARTTLS answer")
        _expect(line, "a1 OK", "by the IMAP server")


# --------------------------------------------------------------------------- certificates

def hostname_matches(names, ips, host):
    """True when ``host`` (a name or an address) is one of the certificate's DNS ``names``
    (``*.example.com`` matches one left-most label) or ``ips``."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        address = None
    if address is not None:
        return any(ipaddress.ip_address(ip) == address for ip in ips)
    host = host.rstrip(".").lower()
    for name in names:
        name = name.rstrip(".").lower()
        if name == host:
            return True
        if name.startswith("*.") and "." in host and host.split(".", 1)[1] == name[2:] and "*" not in name[2:]:
            return True
    return False


def _describe(der, now):
    """subject, issuer, not_after, days of one DER certificate (names need cryptography)."""
    not_after = cert_not_after(der)
    info = {"not_after": not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "days": round((not_after - now).total_seconds() / 86400.0, 2)}
    if CRYPTO_X509.available:
        x509 = CRYPTO_X509.load()
        cert = x509.load_der_x509_certificate(der)
        info.update(subject=cert.subject.rfc4514_string(), issuer=cert.issuer.rfc4514_string())
    return info


def _names(der):
    """(DNS names, IP addresses) of a leaf certificate; the common name when it has no SAN."""
    x509 = CRYPTO_X509.load()
    cert = x509.load_der_x509_certificate(der)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        return san.get_values_for_type(x509.DNSName), [str(ip) for ip in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        common = cert.subject.get_attributes_for_oid(x509.oid.NameOID.COMMON_NAME)
        return [attr.value for attr in common], []


def _chain(sock):
    """DER certificates the server presented, leaf first (SSLSocket.get_unverified_chain from
    CPython 3.13, its C object's method on 3.10 to 3.12; only the leaf before)."""
    get = getattr(sock, "get_unverified_chain", None) or getattr(getattr(sock, "_sslobj", None), "get_unverified_chain", None)
    chain = get() if get is not None else None
    if chain:
        return [cert if isinstance(cert, bytes) else cert.public_bytes(ssl._ssl.ENCODING_DER)  # pylint: disable=protected-access
                for cert in chain]
    der = sock.getpeercert(binary_form=True)
    return [der] if der else []


# --------------------------------------------------------------------------- the probe

def _handshake(check, obs, clock, verify):
    host, port = check["host"], check["port"]
    sock = _connect(host, port, clock, obs)
    handed_over = False
    try:
        if check.get("starttls", "none") != "none":
            starttls(sock, check["starttls"], clock)
        options = dict(check, validate_certs=verify)
        tls = tls_handshake(sock, options, host, port, clock, obs, server_hostname=check.get("server_name") or host)
        handed_over = True
        return tls
    finally:
        if not handed_over:     # any error, KeyboardInterrupt included: the plain socket is ours to close
            sock.close()


def _verify_first(check, obs, clock):
    """(TLS socket, None) when the chain verifies, else (TLS socket without verification, reason)."""
    try:
        return _handshake(dict(check, _no_hostname=CRYPTO_X509.available), obs, clock, True), None
    except ProbeFailed as exc:
        if "verification failed" not in exc.msg:
            raise
        reason = exc.msg.split(": ", 1)[-1]
    return _handshake(check, obs, clock, False), reason


def probe_tls(check, obs, timeout, ctx=None):
    clock = _Clock(timeout)
    verify = check.get("validate_certs", True)
    if verify:
        sock, reason = _verify_first(check, obs, clock)
    else:
        sock, reason = _handshake(check, obs, clock, False), None
    try:
        chain = _chain(sock)
        protocol, cipher = sock.version(), (sock.cipher() or (None,))[0]
    finally:
        sock.close()
    obs.measure("time_ms", clock.ms())
    if not chain:
        raise ProbeFailed(CRITICAL, "the server presented no certificate")
    _judge_tls(check, obs, chain, protocol, cipher, reason if verify else None, verify)


def _judge_tls(check, obs, chain, protocol, cipher, reason, verify):
    now = datetime.datetime.now(datetime.timezone.utc)
    certs = [_describe(der, now) for der in chain]
    days = [cert["days"] for cert in certs]
    obs.measure("days_left", min(days), 2)
    obs.measure("leaf_days", days[0], 2)
    obs.measure("chain_certs", len(chain))
    obs.details.update({"protocol": protocol, "cipher": cipher, "certificates": certs, "verify_error": reason})
    name = check.get("server_name") or check["host"]
    shortest = days.index(min(days))
    obs.note("%s %s, %d certificate(s), %s days left (%s)" % (
        protocol, cipher, len(chain), format_number(round(min(days), 1)), "leaf" if shortest == 0 else "chain[%d]" % shortest))
    if verify:
        obs.measure("verified", int(reason is None))
        if reason is not None:
            obs.problem(CRITICAL, "certificate verification failed: %s" % reason)
    if CRYPTO_X509.available:
        names, ips = _names(chain[0])
        ok = hostname_matches(names, ips, name)
        obs.measure("hostname_ok", int(ok))
        obs.details["names"] = names + ips
        if not ok and verify:
            obs.problem(CRITICAL, "certificate is not valid for %s (it names %s)" % (name, ", ".join(names + ips) or "nothing"))
    allowed = check.get("protocols")
    if allowed and protocol not in allowed:
        obs.problem(CRITICAL, "protocol %s is not one of %s" % (protocol, ", ".join(allowed)))
