# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Point-in-time recovery, the plan: the target, the base backup, and the WAL it needs.

Plain data in, plain data out: ``parse_target`` checks the options, ``choose_base`` picks the
newest base backup that ended before the target, ``wal_needed`` follows the timelines from the
backup's start to the target (through the ``.history`` files) and lists every segment recovery
will ask for, so that a gap or a corrupt segment is refused before the base backup is extracted or
anything replayed (``pitr_apply`` does the rest).
"""

from __future__ import annotations

import datetime

from .._errors import ConfigError, IntegrityError, NotFoundError
from .._timeutil import parse_rfc3339, rfc3339
from .physical import KIND
from .wal import (DEFAULT_SEGMENT_SIZE, SEGMENT_RE, format_lsn, lsn_segment, parse_lsn, reader_for, segment_name,
                  segment_number)
from .._engine.catalog import list_backups, resolve_backup


def parse_target(params):
    """{"kind": latest|immediate|time|lsn, "value": ..., "text": ...} from the options."""
    given = [name for name in ("target", "target_time", "target_lsn") if params.get(name) not in (None, "")]
    if len(given) > 1:
        raise ConfigError("target, target_time and target_lsn exclude each other (got %s)" % ", ".join(given))
    if params.get("target_time") not in (None, ""):
        return {"kind": "time", "value": parse_time(params["target_time"]), "text": str(params["target_time"])}
    if params.get("target_lsn") not in (None, ""):
        value = parse_lsn(params["target_lsn"])
        return {"kind": "lsn", "value": value, "text": format_lsn(value)}
    kind = params.get("target") or "latest"
    if kind not in ("latest", "immediate"):
        raise ConfigError("target %r is not latest or immediate (use target_time or target_lsn for a point)" % kind)
    return {"kind": kind, "value": None, "text": kind}


def parse_time(text):
    """An aware datetime (RFC 3339, or PostgreSQL's '2026-12-01 14:30:00.5+00'); ConfigError otherwise."""
    value = str(text).strip()
    try:
        when = datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            when = parse_rfc3339(value)
        except ValueError as exc:
            raise ConfigError("target_time %r is not a time (such as 2026-12-01T14:30:00Z)" % value) from exc
    if when.tzinfo is None:
        raise ConfigError("target_time %r has no time zone: add one (Z or +01:00)" % value)
    return when.astimezone(datetime.timezone.utc)


def pg_time(when):
    """A recovery_target_time value: microseconds, UTC."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f+00")


def physical_backups(location, series, backup="latest"):
    """The base backups of ``series``, newest first (one when ``backup`` is an id)."""
    if backup not in (None, "", "latest"):
        manifest = resolve_backup(location, series, backup)
        found = [manifest]
    else:
        found = list_backups(location, series).get(series) or []
    found = [m for m in found if m.get("kind") == KIND]
    if not found:
        raise NotFoundError("series %s has no physical base backup at %s" % (series, location.url))
    return found


def base_stop(manifest):
    source = manifest.get("source") or {}
    return parse_rfc3339(source["stop_time"]), parse_lsn(source["stop_lsn"])


def choose_base(backups, target):
    """The newest base backup from which recovery can reach ``target`` (ended before it)."""
    if target["kind"] == "time":
        fit = [m for m in backups if base_stop(m)[0] <= target["value"]]
        what = "target_time %s" % rfc3339(target["value"])
    elif target["kind"] == "lsn":
        fit = [m for m in backups if base_stop(m)[1] <= target["value"]]
        what = "target_lsn %s" % target["text"]
    else:
        return backups[0]
    if not fit:
        oldest = backups[-1]
        raise ConfigError("%s is before the end of the oldest base backup of series %s (%s, ended %s at %s):"
                          " nothing can be recovered to it" % (what, oldest["series"], oldest["id"],
                                                               oldest["source"]["stop_time"], oldest["source"]["stop_lsn"]))
    return fit[0]


def parse_history(text):
    """[(parent timeline, switch LSN)] of a .history file."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].isdigit():
            out.append((int(parts[0]), parse_lsn(parts[1])))
    return out


def read_history(location, series, index, tli):
    entry = index.get("%08X" % tli, {}).get("%08X.history" % tli)
    if entry is None:
        return None
    with reader_for(location, series, entry) as reader:
        return parse_history(reader.read().decode("utf-8", "replace"))


def timeline_legs(location, series, index, base_tli, start_lsn):
    """[(timeline, from LSN, to LSN or None)]: the path recovery_target_timeline=latest follows,
    from the base backup's timeline to the newest timeline that descends from it."""
    for tli in sorted((int(t, 16) for t in index), reverse=True):
        if tli <= base_tli:
            break
        history = read_history(location, series, index, tli)
        if not history:
            continue
        parents = dict(history)
        if base_tli in parents and parents[base_tli] > start_lsn:
            legs, begin = [], start_lsn
            for parent, switch in history:
                if parent >= base_tli:
                    legs.append((parent, begin, switch))
                    begin = switch
            return legs + [(tli, begin, None)]
    return [(base_tli, start_lsn, None)]


def _leg_segments(index, leg, seg_size, target, last_leg):
    """(needed segment names, whether the target's end was found) of one leg."""
    tli, begin, end = leg
    files = index.get("%08X" % tli, {})
    first = lsn_segment(begin, seg_size)
    if end is not None:  # a parent timeline: up to the switch; recovery asks the new one from there
        last = lsn_segment(end - 1, seg_size) if last_leg else lsn_segment(end, seg_size) - 1
    else:
        present = [segment_number(n, seg_size)[1] for n in files if SEGMENT_RE.match(n)]
        last = max(present + [first])
    names = []
    for segno in range(first, last + 1):
        name = segment_name(tli, segno, seg_size)
        names.append(name)
        entry = files.get(name)
        if target["kind"] == "time" and entry is not None and entry["archived_at"] >= target["value"]:
            return names, True
        if target["kind"] == "lsn" and begin <= target["value"] < (segno + 1) * seg_size:
            return names, True
    return names, False


def wal_needed(location, series, index, base, target):
    """The index entries of every WAL segment the recovery needs, or IntegrityError naming the
    first one missing (a gap) and how far recovery could get."""
    source = base["source"]
    seg_size = int(source.get("wal_segment_size") or DEFAULT_SEGMENT_SIZE)
    start, stop = parse_lsn(source["start_lsn"]), parse_lsn(source["stop_lsn"])
    if target["kind"] == "immediate":
        legs = [(int(source["timeline"]), start, stop)]
    else:
        legs = timeline_legs(location, series, index, int(source["timeline"]), start)
    needed = []
    for number, leg in enumerate(legs):
        names, reached = _leg_segments(index, leg, seg_size, target, number == len(legs) - 1)
        needed.extend((leg[0], name) for name in names)
        if reached:
            break
    stop_wal = source["stop_wal"]
    entries = []
    for tli, name in needed:
        entry = index.get("%08X" % tli, {}).get(name)
        if entry is None:
            reach = entries[-1]["file"] if entries else "nothing"
            if segment_number(name, seg_size)[1] <= segment_number(stop_wal, seg_size)[1]:
                reach = "not even the end of base backup %s (%s)" % (base["id"], stop_wal)
            raise IntegrityError("WAL segment %s of series %s is missing from the archive (a gap): recovery to %s"
                                 " cannot pass it; the last segment before the gap is %s"
                                 % (name, series, target["text"], reach))
        entries.append(entry)
    if needed:  # recovery reads the record after its target, perhaps in the next segment: checked when archived
        tli, name = needed[-1]
        after = segment_name(tli, segment_number(name, seg_size)[1] + 1, seg_size)
        if after in index.get("%08X" % tli, {}):
            entries.append(index["%08X" % tli][after])
    return entries
