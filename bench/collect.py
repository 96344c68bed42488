#!/usr/bin/env python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Assemble bench/RESULTS.md from the per-benchmark files in bench/results/.

Every benchmark writes its own measured figures (with the command that produced them) to
bench/results/<name>.md; this script only concatenates them, in a fixed order.

RESULTS.md also holds readings written by hand after a run, which are in no results file. The
script refuses to write when a heading of the current RESULTS.md would be lost, and names it;
``--force`` writes anyway.

Usage: .venv/bin/python bench/collect.py [--force]
"""

from __future__ import annotations

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
ORDER = ["storage_engine", "pg_backup", "volume_backup", "s3_rotate", "health_check", "rollout"]


def write_results(path, text):
    """Write one benchmark's results file (bench/results/<name>.md), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as fh:
        fh.write(text)


def main():
    folder = os.path.join(HERE, "results")
    names = [n[:-3] for n in sorted(os.listdir(folder)) if n.endswith(".md")]
    names = [n for n in ORDER if n in names] + [n for n in names if n not in ORDER]
    parts = ["# Benchmark results\n",
             "Assembled by `.venv/bin/python bench/collect.py` from `bench/results/*.md`; each section",
             "names the command that measured it. The machines are 2-core and shared: figures vary",
             "between runs, which is why they live here and never in test assertions.\n"]
    for name in names:
        with open(os.path.join(folder, name + ".md")) as fh:
            text = fh.read().strip()
        # one heading level down, so each benchmark is a section of RESULTS.md
        parts.append("\n".join("#" + line if line.startswith("#") else line for line in text.splitlines()))
        parts.append("")
    text = "\n".join(parts) + "\n"
    target = os.path.join(HERE, "RESULTS.md")
    lost = lost_headings(target, text)
    if lost and "--force" not in sys.argv[1:]:
        sys.exit("collect.py: RESULTS.md has %d heading(s) that no results file holds (first: %r);"
                 " not written (--force to overwrite)" % (len(lost), lost[0]))
    with open(target, "w") as fh:
        fh.write(text)


def lost_headings(path, new_text):
    """Headings of the current file at path that new_text lacks (hand-written sections)."""
    if not os.path.exists(path):
        return []
    with open(path) as fh:
        old = [line.strip() for line in fh if line.startswith("#")]
    new = {line.strip() for line in new_text.splitlines() if line.startswith("#")}
    return [h for h in old if h not in new]


if __name__ == "__main__":
    main()
