# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Nagios plugin threshold ranges, states, the ``fail_on`` verdict and perfdata (pure functions).

A range is ``[@]start:end``. Without ``@`` the value alerts when it is OUTSIDE start..end, with
``@`` when it is INSIDE (endpoints included). ``start`` may be ``~`` (minus infinity) and defaults
to 0; an empty ``end`` is plus infinity; a lone number N means ``0:N``.
"""

from __future__ import annotations

import math
import re

from .._errors import ConfigError

OK, WARNING, CRITICAL, UNKNOWN = "OK", "WARNING", "CRITICAL", "UNKNOWN"
STATES = (OK, WARNING, CRITICAL, UNKNOWN)
# Severity used to combine states (worst wins): a check that could not measure (UNKNOWN) is worse
# than a degraded one (WARNING), because nobody knows whether the service works.
SEVERITY = {OK: 0, WARNING: 1, UNKNOWN: 2, CRITICAL: 3}

_NUMBER = r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_RANGE_RE = re.compile(r"^(@)?(?:(~|%s)?:)?(%s)?$" % (_NUMBER, _NUMBER))


# fail_on of health_check (and of the roles' verdicts): the least severe state that fails.
FAIL_ON = {"critical": SEVERITY[UNKNOWN], "warning": SEVERITY[WARNING], "never": None}


def worst(states):
    """The most severe of ``states`` (OK for none)."""
    return max(states, key=SEVERITY.__getitem__, default=OK)


def failing(status, fail_on):
    """True when the overall ``status`` fails the task for ``fail_on`` (critical, warning, never).

    ``critical`` fails on CRITICAL and UNKNOWN, ``warning`` on anything but OK. The one verdict:
    health_check and the runbook filter plugin (for the roles) both call this.
    """
    limit = FAIL_ON[fail_on]
    return limit is not None and SEVERITY[status] >= limit


class Range:
    """A parsed threshold range; ``alerts(value)`` tells whether the value triggers it."""

    __slots__ = ("text", "start", "end", "inside")

    def __init__(self, text, start, end, inside):
        self.text, self.start, self.end, self.inside = text, start, end, inside

    def alerts(self, value):
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def __repr__(self):
        return "Range(%r)" % self.text

    def __eq__(self, other):
        return isinstance(other, Range) and (self.start, self.end, self.inside) == (other.start, other.end, other.inside)


def parse_range(text, what="range"):
    """Parse a Nagios range (str, int or float). Raises ConfigError naming ``what``."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ConfigError("%s: a range must be a string or a number, got %r" % (what, text))
    raw = str(text).strip() if isinstance(text, str) else _fmt(text)
    match = _RANGE_RE.match(raw)
    if not match or (match.group(2) is None and match.group(3) is None):
        raise ConfigError("%s: cannot parse range %r (use N, N:, ~:N, N:M or @N:M)" % (what, str(text)))
    inside, start_text, end_text = match.group(1) == "@", match.group(2), match.group(3)
    if ":" not in raw:
        start = 0.0
    elif start_text == "~":
        start = -math.inf
    else:
        start = float(start_text) if start_text else 0.0
    end = float(end_text) if end_text else math.inf
    if start > end:
        raise ConfigError("%s: range %r has start %s greater than end %s" % (what, raw, _fmt(start), _fmt(end)))
    return Range(raw, start, end, inside)


def evaluate(value, warning=None, critical=None):
    """State of ``value`` against parsed ranges (None = no threshold); critical is checked first."""
    if critical is not None and critical.alerts(value):
        return CRITICAL
    if warning is not None and warning.alerts(value):
        return WARNING
    return OK


def _fmt(number):
    if isinstance(number, bool):
        return str(int(number))
    if isinstance(number, int):
        return str(number)
    if math.isinf(number):
        return "~" if number < 0 else ""
    if float(number).is_integer() and abs(number) < 1e15:
        return str(int(number))
    return ("%.6f" % number).rstrip("0").rstrip(".")


def format_number(number):
    """Compact decimal form used in messages and perfdata (no exponent, no trailing zeros)."""
    return _fmt(number)


def perfdata_item(label, value, uom="", warning=None, critical=None, minimum=None, maximum=None):
    """``'label'=value[UOM];warn;crit;min;max`` with trailing empty fields dropped."""
    fields = [
        "%s%s" % (_fmt(value), uom),
        warning.text if warning is not None else "",
        critical.text if critical is not None else "",
        _fmt(minimum) if minimum is not None else "",
        _fmt(maximum) if maximum is not None else "",
    ]
    while len(fields) > 1 and fields[-1] == "":
        fields.pop()
    return "'%s'=%s" % (label.replace("'", "''"), ";".join(fields))
