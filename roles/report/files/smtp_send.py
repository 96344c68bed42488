# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Send one alert mail over SMTP for the report role (tasks/notify.yml), on the controller.

Reads one JSON object on stdin, so that no credential is ever on a command line:
host, port, security (starttls, ssl or none), username, password (login only when a
username is given), from, to (a list), subject, body, timeout, validate_certs.
Prints one line; on failure the line goes to stderr, without the password, and the exit code is 1.
"""

from __future__ import annotations

import json
import smtplib
import socket
import ssl
import sys
from email.message import EmailMessage
from email.utils import formatdate, make_msgid


def _message(cfg):
    msg = EmailMessage()
    msg["From"] = cfg["from"]
    msg["To"] = ", ".join(cfg["to"])
    msg["Subject"] = " ".join(str(cfg["subject"]).split())
    msg["Date"] = formatdate(usegmt=True)
    msg["Message-ID"] = make_msgid(domain="opskit.runbook")
    msg["X-Opskit-Severity"] = cfg.get("severity", "")
    msg.set_content(cfg["body"])
    return msg


def _context(cfg):
    context = ssl.create_default_context()
    if not cfg.get("validate_certs", True):
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def send(cfg):
    """Send the mail described by cfg; raises smtplib.SMTPException, OSError or ValueError."""
    security = cfg.get("security", "none")
    if security not in ("starttls", "ssl", "none"):
        raise ValueError("security must be starttls, ssl or none, not %r" % security)
    if not cfg.get("to"):
        raise ValueError("no recipient (to)")
    host, port, timeout = cfg.get("host", "localhost"), int(cfg.get("port", 25)), float(cfg.get("timeout", 10))
    if security == "ssl":
        client = smtplib.SMTP_SSL(host, port, timeout=timeout, context=_context(cfg))
    else:
        client = smtplib.SMTP(host, port, timeout=timeout)
    with client:
        if security == "starttls":
            client.starttls(context=_context(cfg))
        if cfg.get("username"):
            client.login(cfg["username"], cfg.get("password", ""))
        refused = client.send_message(_message(cfg))
    return len(cfg["to"]) - len(refused)


def main():
    cfg = {}
    try:
        cfg = json.load(sys.stdin)
        sent = send(cfg)
    except (smtplib.SMTPException, OSError, socket.timeout, ValueError, KeyError, TypeError, AttributeError) as exc:
        password = cfg.get("password") if isinstance(cfg, dict) else ""
        text = " ".join(("%s: %s" % (type(exc).__name__, exc)).split())
        if password:
            text = text.replace(password, "********")
        sys.stderr.write("cannot send the alert mail: %s\n" % text[:300])
        return 1
    sys.stdout.write("alert mail accepted for %d recipient(s)\n" % sent)
    return 0


if __name__ == "__main__":
    sys.exit(main())
