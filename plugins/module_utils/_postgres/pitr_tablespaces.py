# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The tablespaces of a physical restore: where each one goes, and its companion extracted there.

A base backup of a cluster with additional tablespaces holds each one as a companion artifact
``tablespace-<oid>`` (``physical``). A restore puts it into a directory: ``tablespace_mapping``
(oid, name or original location -> directory), else in a drill a scratch directory next to the
scratch data directory, else (state=restored) its original location. A directory must be absent
or empty; with ``force`` a tablespace directory (only ``PG_*`` entries) is replaced, never one that a
running cluster's ``pg_tblspc`` points at. ``tablespace_map`` in the data directory (read by the
server with ``backup_label`` at its first start) and the ``pg_tblspc/<oid>`` links name the new place.
"""

from __future__ import annotations

import contextlib
import os
import shutil

from .._errors import ConfigError, IntegrityError, StorageError
from .pitr_extract import extract_artifact
from .replication import check_mapping


def backup_tablespaces(base):
    return list((base.get("source") or {}).get("tablespaces") or [])


def plan_tablespaces(base, params, drill):
    """[{oid, name, location, artifact, directory, step}] of the base backup; directory None for a drill's
    default (a scratch directory, known once the scratch root exists)."""
    spaces = backup_tablespaces(base)
    mapping = check_mapping(params.get("tablespace_mapping"), spaces)
    out = []
    for space in spaces:
        directory = mapping.get(space["oid"]) or (None if drill else space.get("location"))
        if directory is not None:
            if "\n" in directory or "\r" in directory:
                raise ConfigError("tablespace directory %r has a line break: tablespace_map cannot hold it" % directory)
            if directory.rstrip("/") == (params.get("data_directory") or "").rstrip("/"):
                raise ConfigError("tablespace %s cannot be restored into data_directory itself" % space["oid"])
        out.append(dict(space, directory=directory,
                        step=check_tablespace_directory(directory, params.get("force")) if directory else "create"))
    dirs = [s["directory"] for s in out if s["directory"]]
    if len(set(dirs)) != len(dirs):
        raise ConfigError("tablespace_mapping sends two tablespaces into one directory (%s)" % ", ".join(sorted(dirs)))
    return out


def running_tablespace_links():
    """The real paths that a running cluster's pg_tblspc links point at (the postmaster's cwd is its
    data directory; processes this user cannot inspect are skipped)."""
    found = set()
    try:
        pids = [p for p in os.listdir("/proc") if p.isdigit()]
    except OSError:
        return found
    for pid in pids:
        try:
            with open("/proc/%s/comm" % pid) as fh:
                if fh.read().strip() != "postgres":
                    continue
            links = os.path.join(os.readlink("/proc/%s/cwd" % pid), "pg_tblspc")
            for name in os.listdir(links):
                found.add(os.path.realpath(os.path.join(links, name)))
        except OSError:
            continue
    return found


def check_tablespace_directory(path, force):
    """'create' (absent), 'use' (empty) or 'replace' (force, a tablespace directory); ConfigError otherwise."""
    if not os.path.isabs(path):
        raise ConfigError("tablespace directory %r is not an absolute path" % (path,))
    if not os.path.lexists(path):
        return "create"
    if not os.path.isdir(path) or os.path.islink(path):
        raise ConfigError("tablespace directory %s is not a directory" % path)
    if os.path.realpath(path) in running_tablespace_links():
        raise ConfigError("tablespace directory %s belongs to a running cluster: never restored over, not even with"
                          " force (set tablespace_mapping)" % path)
    entries = os.listdir(path)
    if not entries:
        return "use"
    if not force:
        raise ConfigError("tablespace directory %s is not empty: choose an empty or absent one with tablespace_mapping,"
                          " or set force to replace its content" % path)
    if not all(name.startswith("PG_") for name in entries):
        raise ConfigError("tablespace directory %s is not empty and not a tablespace directory (entries other than"
                          " PG_*): force replaces only a tablespace directory" % path)
    return "replace"


def scratch_directories(spaces, scratch):
    """Fill in a drill's default directories: <scratch>/tablespace-<oid>."""
    return [dict(s, directory=s["directory"] or os.path.join(scratch, "tablespace-%d" % s["oid"])) for s in spaces]


def extract_tablespaces(location, base, spaces):
    """Extract each companion into its directory (sha256 checked at its end). A failure empties or removes
    what this wrote and raises IntegrityError naming the artifact: nothing is replayed."""
    done = []
    finished = False
    try:
        for space in spaces:
            done.append(space)
            _prepare_directory(space)
            _extract(location, base, space)
        finished = True
    finally:
        if not finished:  # an error or a signal: no half-extracted tablespace stays
            undo_tablespaces(done)


def undo_tablespaces(spaces):
    for space in spaces:
        path = space["directory"]
        if space["step"] == "create":
            shutil.rmtree(path, ignore_errors=True)
        else:
            _empty(path)


def _empty(path):
    for name in os.listdir(path) if os.path.isdir(path) else []:
        full = os.path.join(path, name)
        if os.path.isdir(full) and not os.path.islink(full):
            shutil.rmtree(full, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(full)


def _prepare_directory(space):
    path = space["directory"]
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
    if space["step"] == "replace":
        _empty(path)


def _extract(location, base, space):
    name = space.get("artifact") or "tablespace-%d" % space["oid"]
    what = "tablespace %s (%s) of base backup %s" % (space["oid"], space.get("name") or "?", base["id"])
    try:
        extract_artifact(location, base, space["directory"], name, what="artifact %s" % name)
    except (IntegrityError, StorageError) as exc:
        raise IntegrityError("%s cannot be restored: %s: refused before replay" % (what, exc.msg)) from exc


def link_tablespaces(path, spaces):
    """tablespace_map and pg_tblspc/<oid> of the data directory ``path`` name each directory."""
    if not spaces:
        return
    with open(os.path.join(path, "tablespace_map"), "w") as fh:
        fh.write("".join("%d %s\n" % (s["oid"], s["directory"]) for s in spaces))
    links = os.path.join(path, "pg_tblspc")
    os.makedirs(links, mode=0o700, exist_ok=True)
    for space in spaces:
        link = os.path.join(links, str(space["oid"]))
        if os.path.lexists(link):
            os.unlink(link)
        os.symlink(space["directory"], link)


def plan_entries(spaces):
    """What check mode and the result say about the tablespaces."""
    return [{"oid": s["oid"], "name": s.get("name"), "location": s.get("location"), "directory": s["directory"],
             "step": s["step"]} for s in spaces]
