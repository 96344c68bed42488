# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time helpers: RFC 3339 UTC timestamps, backup key stamps, calendar durations."""

from __future__ import annotations

import calendar
import datetime
import math
import re

from ._errors import ConfigError

UTC = datetime.timezone.utc
STAMP_FORMAT = "%Y%m%dT%H%M%SZ"

_DURATION_RE = re.compile(r"(\d+)(min|y|m|w|d|h|s)")
_UNITS = {"y": "years", "m": "months", "w": "weeks", "d": "days", "h": "hours",
          "min": "minutes", "s": "seconds"}
_SECONDS = {"weeks": 604800, "days": 86400, "hours": 3600, "minutes": 60, "seconds": 1}
MAX_DURATION_YEARS = 200
MAX_TIMEOUT = 7 * 86400  # seconds: the largest timeout, deadline or interval an option accepts


def seconds_option(value, option, minimum=0.0, maximum=MAX_TIMEOUT, exclusive=False):
    """``value`` as a finite float of seconds in [minimum, maximum], else a one-line ConfigError.

    NaN, infinities, booleans, text that is no number and values out of range are refused;
    ``exclusive`` refuses ``minimum`` itself (a timeout of 0 waits for nothing).
    """
    try:
        number = None if isinstance(value, bool) else float(value)
    except (TypeError, ValueError, OverflowError):
        number = None
    if number is None or not math.isfinite(number) or number < minimum or number > maximum \
            or (exclusive and number == minimum):
        raise ConfigError("%s must be a number of seconds %s %g and <= %g, got %r"
                          % (option, ">" if exclusive else ">=", minimum, maximum, value))
    return number


def int_option(value, option, minimum, maximum):
    """``value`` as an integer in [minimum, maximum], else a one-line ConfigError naming ``option``."""
    try:
        number = None if isinstance(value, bool) else float(value)
        ok = number is not None and math.isfinite(number) and number == int(number) and minimum <= number <= maximum
    except (TypeError, ValueError, OverflowError):
        ok = False
    if not ok:
        raise ConfigError("%s must be an integer from %d to %d, got %r" % (option, minimum, maximum, value))
    return int(number)


def utcnow():
    return datetime.datetime.now(UTC).replace(microsecond=0)


def rfc3339(dt):
    return dt.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_rfc3339(text):
    value = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value.astimezone(UTC)


def stamp(dt):
    return dt.astimezone(UTC).strftime(STAMP_FORMAT)


def parse_stamp(text):
    return datetime.datetime.strptime(text, STAMP_FORMAT).replace(tzinfo=UTC)


class Duration:
    """A calendar duration such as ``36h``, ``30d``, ``2w`` or ``1y6m``.

    Units: y (years), m (months), w (weeks), d (days), h (hours), min (minutes), s (seconds).
    Years and months are calendar units: they are subtracted from a date, not counted in seconds.
    """

    def __init__(self, text, **parts):
        self.text = text
        self.parts = parts

    @classmethod
    def parse(cls, text, option="duration"):
        """Parse ``text`` (or a number of seconds); a one-line ConfigError naming ``option`` if bad.

        Durations longer than MAX_DURATION_YEARS years are refused: they cannot be subtracted
        from a date and mean "for ever" anyway.
        """
        if isinstance(text, (int, float)) and not isinstance(text, bool):
            if not math.isfinite(text) or text < 0:
                raise ConfigError("%s: cannot parse duration %r (a number of seconds must be finite and >= 0)"
                                  % (option, text))
            text = "%ds" % int(text)
        raw = str(text).strip().replace(" ", "")
        pos, parts = 0, {}
        for match in _DURATION_RE.finditer(raw):
            if match.start() != pos:
                break
            unit = _UNITS[match.group(2)]
            if unit in parts:
                break
            parts[unit] = int(match.group(1))
            pos = match.end()
        if not raw or pos != len(raw) or not any(parts.values()):
            raise ConfigError(
                "%s: cannot parse duration %r (use a number and unit, e.g. 36h, 30d, 2w, 1y6m;"
                " units y, m (months), w, d, h, min, s)" % (option, str(text)[:80]))
        months = parts.get("years", 0) * 12 + parts.get("months", 0)
        seconds = sum(parts.get(unit, 0) * factor for unit, factor in _SECONDS.items())
        if months + seconds / (31 * 86400.0) > MAX_DURATION_YEARS * 12:
            raise ConfigError("%s: duration %r is too long (at most %d years)"
                              % (option, str(text)[:80], MAX_DURATION_YEARS))
        return cls(raw, **parts)

    def before(self, dt):
        """The instant ``self`` before ``dt`` (calendar arithmetic for years and months)."""
        months = self.parts.get("years", 0) * 12 + self.parts.get("months", 0)
        if months:
            index = dt.year * 12 + (dt.month - 1) - months
            year, month = divmod(index, 12)
            day = min(dt.day, calendar.monthrange(year, month + 1)[1])
            dt = dt.replace(year=year, month=month + 1, day=day)
        return dt - datetime.timedelta(
            weeks=self.parts.get("weeks", 0), days=self.parts.get("days", 0),
            hours=self.parts.get("hours", 0), minutes=self.parts.get("minutes", 0),
            seconds=self.parts.get("seconds", 0))

    def seconds(self, at=None):
        """Approximate length in seconds, measured backwards from ``at`` (default now)."""
        at = at or utcnow()
        return (at - self.before(at)).total_seconds()

    def __str__(self):
        return self.text

    def __repr__(self):
        return "Duration(%r)" % self.text
