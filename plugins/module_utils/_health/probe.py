# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a probe of the health engine hands back: ``Observation`` (measures, details, problems,
notes) and ``ProbeFailed`` (the check ends in a given state). The probe files (net, services)
and the engine import this module; it imports nothing of the health engine itself.
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

# scheme://[userinfo@]host[:port][/path][?query][#fragment] inside any text
_URL_RE = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^\s/?#@]*@)?(?P<rest>[^\s?#]*)"
                     r"(?P<query>\?[^\s#]*)?")
# query keys whose values are credentials (added to no_log values); every query value is masked in text anyway
_SECRET_KEY_RE = re.compile(r"token|key|secret|pass|pwd|auth|sig|session|cred|code|jwt", re.IGNORECASE)
MASK = "***"


class ProbeFailed(Exception):
    """Raised by a probe: the check ends in ``state`` with ``msg`` (measures so far are kept)."""

    def __init__(self, state, msg):
        super().__init__(msg)
        self.state, self.msg = state, one_line(msg)


class Observation:
    """What one probe attempt saw: numeric measures, details, problems and summary notes."""

    def __init__(self):
        self.measures, self.details, self.problems, self.notes = {}, {}, [], []

    def measure(self, name, value, ndigits=3):
        if value is not None:
            self.measures[name] = round(value, ndigits) if isinstance(value, float) else value

    def problem(self, state, msg):
        self.problems.append((state, msg))

    def note(self, text):
        self.notes.append(text)


def one_line(text, limit=None):
    """``text`` (any object) on one line, whitespace collapsed, cut at ``limit`` characters."""
    line = " ".join(str(text).split())
    return line if limit is None else line[:limit]


def _mask_url(match):
    out = match.group("scheme") + (MASK + "@" if match.group("userinfo") else "") + match.group("rest")
    query = match.group("query")
    if query and len(query) > 1:
        parts = [part.split("=", 1)[0] + "=" + MASK if "=" in part else MASK for part in query[1:].split("&") if part]
        out += "?" + "&".join(parts)
    elif query:
        out += query
    return out


def redact(text):
    """``text`` with the userinfo and the query values of every URL in it masked (``***``)."""
    if not isinstance(text, str) or "://" not in text:
        return text
    return _URL_RE.sub(_mask_url, text)


def url_secrets(url):
    """The credentials inside ``url``: its userinfo password (and user), the values of query keys
    that name a token, key, secret, password, signature... and are 6 characters or more (for the
    no_log values of a module: a short value would be masked everywhere in the result)."""
    if not isinstance(url, str) or ("@" not in url and "?" not in url):
        return set()   # no user information, no query: nothing to parse (200 checks are parsed 3 times)
    try:
        parts = urlsplit(url)
    except ValueError:
        return set()
    found = {v for v in (parts.password, parts.username if parts.password is None else None) if v}
    for item in parts.query.split("&"):
        key, sep, value = item.partition("=")
        if sep and len(value) >= 6 and _SECRET_KEY_RE.search(key):   # shorter: a page number, not a token
            found.add(value)
    return found
