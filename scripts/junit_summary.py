# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Summarise the stages of scripts/test.sh: durations, then one line "N passed, N failed[, N skipped]".

Input: a TSV file of stages (name, exit status, seconds, junit XML file or directory). Every
junit test case counts (error and failure count as failed); a stage that failed without a
failing test case (a crash, a setup error) counts as one failed test.
"""

from __future__ import annotations

import glob
import os
import sys
import xml.etree.ElementTree as ET


def count_junit(path):
    """(passed, failed, skipped) over the junit XML file(s) at path."""
    files = sorted(glob.glob(os.path.join(path, "*.xml"))) if os.path.isdir(path) else [path]
    passed = failed = skipped = 0
    for name in files:
        if not os.path.isfile(name):
            continue
        for case in ET.parse(name).iter("testcase"):
            if case.find("failure") is not None or case.find("error") is not None:
                failed += 1
            elif case.find("skipped") is not None:
                skipped += 1
            else:
                passed += 1
    return passed, failed, skipped


def main(stages_file):
    totals = [0, 0, 0]
    total_seconds = 0.0
    print("--- stages")
    with open(stages_file) as fh:
        for line in fh:
            name, rc, seconds, junit = line.rstrip("\n").split("\t")
            counts = list(count_junit(junit)) if junit else [0, 0, 0]
            if int(rc) not in (0, 5) and counts[1] == 0:  # pytest 5: nothing collected
                counts[1] += 1
            totals = [a + b for a, b in zip(totals, counts)]
            total_seconds += float(seconds)
            detail = "" if not junit else " (%d passed, %d failed, %d skipped)" % tuple(counts)
            print("%-12s %7.1f s  exit %s%s" % (name, float(seconds), rc, detail))
    print("%-12s %7.1f s" % ("total", total_seconds))
    summary = "%d passed, %d failed" % (totals[0], totals[1])
    if totals[2]:
        summary += ", %d skipped" % totals[2]
    print(summary)
    return 1 if totals[1] else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
