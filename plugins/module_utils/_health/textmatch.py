# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Text matching of the logs check (pure functions): its patterns, the masking of secrets in
excerpts, the counting of matching lines.

    compile_patterns(label, check) -> ([patterns], [masks])   one-line ConfigError for a bad regex
    mask_secrets(line, extra=())                              secrets replaced by ``***``
    count_matches(lines, patterns, masks, excerpt)            (count, count per pattern, excerpt)
"""

from __future__ import annotations

import re

from .._errors import ConfigError
from .probe import one_line, redact

DEFAULT_PATTERNS = ("ERROR", "FATAL", "panic", "Traceback")
_SECRET_PATTERNS = (
    # key=value, key: value, "key": "value" for secret-looking keys
    re.compile(r"""(?i)((?:password|passwd|pwd|secret|token|api[_-]?key|access[_-]?key|private[_-]?key|credential)s?"""
               r"""["']?\s*[:=]\s*["']?)([^\s"',;&]+)"""),
    re.compile(r"(?i)\b((?:bearer|basic|token)\s+)([A-Za-z0-9._~+/=-]{8,})"),
    re.compile(r"()\b(AKIA[0-9A-Z]{16})\b"),
)


def compile_patterns(label, check):
    """The check's patterns as compiled regexes (one-line ConfigError for a bad one)."""
    out = []
    for key, texts in (("patterns", check.get("patterns") or DEFAULT_PATTERNS), ("mask", check.get("mask") or ())):
        compiled = []
        for index, text in enumerate(texts):
            try:
                compiled.append(re.compile(str(text), re.IGNORECASE if check.get("ignore_case") and key == "patterns" else 0))
            except re.error as exc:
                raise ConfigError("%s: %s[%d]: bad regular expression %r: %s" % (label, key, index, str(text), exc)) from None
        out.append(compiled)
    return out


def mask_secrets(line, extra=()):
    """``line`` with secrets replaced by ``***``: values of password/token/key fields, bearer and
    basic credentials, AWS access key ids, URL user information and query values, and whatever
    the ``extra`` regexes match."""
    for pattern in _SECRET_PATTERNS:
        line = pattern.sub(lambda m: m.group(1) + "***", line)
    for pattern in extra:
        line = pattern.sub("***", line)
    return redact(line)


def count_matches(lines, patterns, masks, excerpt):
    """(matching line count, count per pattern, the last ``excerpt`` matching lines masked)."""
    per, hits = [0] * len(patterns), []
    for line in lines:
        matched = False
        for index, pattern in enumerate(patterns):
            if pattern.search(line):
                per[index] += 1
                matched = True
        if matched:
            hits.append(line)
    shown = [one_line(mask_secrets(line, masks), 200) for line in hits[-excerpt:]] if excerpt else []
    return len(hits), per, shown
