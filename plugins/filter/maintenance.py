# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Filters of the monthly maintenance window: the apt sources of the security archive alone
(for security-only updates), and the plan of a simulated apt-get run.

Documentation: the sidecar files here, one per filter (apt_security_sources.yml, apt_plan.yml).
"""

from __future__ import annotations

import fnmatch
import re

from ansible.errors import AnsibleFilterError

# unattended-upgrade's Origins-Pattern keys (long and short) -> the fields of apt-get indextargets
PATTERN_KEYS = {"origin": "Origin", "o": "Origin", "label": "Label", "l": "Label", "archive": "Suite", "a": "Suite",
                "suite": "Suite", "codename": "Codename", "n": "Codename", "component": "Component", "c": "Component",
                "site": "Site"}
# the fields of a deb822 source entry that the security stanza sets itself
OWN_FIELDS = {"types", "uris", "suites", "components", "enabled"}
# one-line option names -> deb822 field names (sources.list(5)); others are title-cased
ONE_LINE_OPTIONS = {"arch": "Architectures", "lang": "Languages", "target": "Targets", "pdiffs": "PDiffs",
                    "by-hash": "By-Hash"}
INST = re.compile(r"^Inst (\S+) (?:\[([^\]]*)\] )?\((\S+) ([^\[)]*?)\s*(?:\[[^\]]*\])?\)")


def _paragraphs(text):
    """deb822 text -> a list of paragraphs, each a list of (field, value lines) in order."""
    paragraphs, current = [], []
    for line in text.splitlines():
        if not line.strip():
            if current:
                paragraphs.append(current)
            current = []
        elif line.startswith("#"):
            continue
        elif line[0] in " \t" and current:
            current[-1][1].append(line)
        elif ":" in line:
            field, value = line.split(":", 1)
            current.append((field.strip(), [value.strip()]))
    if current:
        paragraphs.append(current)
    return paragraphs


def _pattern(text):
    if not isinstance(text, str) or not text.strip():
        raise AnsibleFilterError("apt_security_sources: an origin pattern must be text such as 'origin=Debian,label=Debian-Security'")
    out = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        field = PATTERN_KEYS.get(key.strip().lower())
        if not sep or field is None:
            raise AnsibleFilterError("apt_security_sources: %r in the origin pattern %r is not one of %s=VALUE"
                                     % (part, text, "/".join(sorted(PATTERN_KEYS))))
        out[field] = value.strip()
    return out


def _matches(record, patterns):
    return any(all(fnmatch.fnmatchcase(record.get(field, ""), value) for field, value in pattern.items())
               for pattern in patterns)


def _one_line_options(line):
    """The [options] of a one-line source entry as deb822 fields."""
    found = re.match(r"^\s*deb(?:-src)?\s+\[([^\]]*)\]", line)
    fields = []
    for option in (found.group(1).split() if found else []):
        key, _sep, value = option.partition("=")
        key = key.rstrip("+-")  # arch+=, arch-= keep their values
        name = ONE_LINE_OPTIONS.get(key.lower()) or "-".join(p.capitalize() for p in key.split("-"))
        fields.append((name, [value.replace(",", " ")]))
    return fields


def _entry_options(files, entry):
    """The options (signed-by, trusted, ...) of the source entry ``path:number`` as deb822 fields."""
    path, _sep, number = (entry or "").rpartition(":")
    text = files.get(path)
    if text is None or not number.isdigit():
        return []
    index = int(number) - 1
    if path.endswith(".sources"):
        paragraphs = _paragraphs(text)
        if 0 <= index < len(paragraphs):
            return [(f, v) for f, v in paragraphs[index] if f.lower() not in OWN_FIELDS]
        return []
    lines = text.splitlines()
    return _one_line_options(lines[index]) if 0 <= index < len(lines) else []


def apt_security_sources(indextargets, files=None, patterns=None):
    """``apt-get indextargets`` output (deb822) -> a deb822 sources file with only the entries
    whose origin matches one of ``patterns`` (unattended-upgrade's Origins-Pattern syntax), each
    with the options (Signed-By, ...) of the source entry it came from (``files``: {path: text})."""
    if not isinstance(indextargets, str):
        raise AnsibleFilterError("apt_security_sources: expected the output of apt-get indextargets (text)")
    if patterns is None:
        patterns = ["origin=Debian,label=Debian-Security", "origin=Ubuntu,archive=*-security"]
    if not isinstance(patterns, (list, tuple)) or not patterns:
        raise AnsibleFilterError("apt_security_sources: patterns must be a non-empty list of origin patterns")
    parsed = [_pattern(p) for p in patterns]
    files = files or {}
    entries = {}
    for paragraph in _paragraphs(indextargets):
        record = {field: " ".join(v for v in values if v) for field, values in paragraph}
        if record.get("Target-Of", "deb") != "deb" or not record.get("Repo-URI") or not _matches(record, parsed):
            continue
        key = (record.get("Sourcesentry", ""), record["Repo-URI"], record.get("Release", ""))
        components = entries.setdefault(key, [])
        if record.get("Component") and record["Component"] not in components:
            components.append(record["Component"])
    stanzas = []
    for (entry, uri, release), components in sorted(entries.items()):
        lines = ["Types: deb", "URIs: %s" % uri, "Suites: %s" % release]
        if components:
            lines.append("Components: %s" % " ".join(components))
        for field, values in _entry_options(files, entry):
            lines.append("%s: %s" % (field, values[0]) if values[0] else "%s:" % field)
            lines.extend(values[1:])
        stanzas.append("\n".join(lines))
    return "\n\n".join(stanzas) + ("\n" if stanzas else "")


def apt_plan(output):
    """The output of ``apt-get --simulate`` -> one dict per package it would install or upgrade:
    name, from (the installed version, none for a new package), to, origin."""
    if not isinstance(output, str):
        raise AnsibleFilterError("apt_plan: expected the output of apt-get --simulate (text)")
    plan = []
    for line in output.splitlines():
        found = INST.match(line)
        if found:
            plan.append({"name": found.group(1), "from": found.group(2) or None, "to": found.group(3),
                         "origin": found.group(4).strip()})
    return plan


class FilterModule:
    def filters(self):
        return {"apt_security_sources": apt_security_sources, "apt_plan": apt_plan}
