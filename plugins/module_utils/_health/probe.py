# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a probe of the health engine hands back: ``Observation`` (measures, details, problems,
notes) and ``ProbeFailed`` (the check ends in a given state). The probe files (net, services)
and the engine import this module; it imports nothing of the health engine itself.
"""

from __future__ import annotations


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
