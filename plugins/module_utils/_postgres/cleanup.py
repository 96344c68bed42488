# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What a run of pg_backup leaves when it is killed, and how the next run removes it.

- ``terminable()``: SIGTERM / SIGHUP raise ``Interrupted`` in the main thread, so every
  ``with`` block unwinds (the child tools killed, the passfile and temporary copies removed,
  the scratch database dropped); later signals are ignored until the cleanup is done.
- After SIGKILL nothing runs: the temporary files and directories carry the owner's pid in
  their names (``temp_prefix``) and the scratch databases their creation time
  (``scratch_name``). ``sweep_temporary`` removes those of dead owners; ``sweep_scratch``
  drops scratch databases older than STALE_SCRATCH_SECONDS that nobody is connected to.
- The databases of a staged restore (``staged_name``: ``opskit_stage_...`` being restored,
  ``opskit_retired_...`` swapped out and about to be dropped) carry their owner's tag in their
  comment (``staged_comment``). ``sweep_staged`` drops those whose owner is gone (WITH FORCE:
  their sessions are the dead run's), and those of other machines older than
  STALE_SCRATCH_SECONDS without sessions. ``opskit_previous_...`` (kept by keep_previous) is
  never a leftover.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import time

from .._errors import ServiceError
from .tools import owner_gone, owner_tag, quote_ident, quote_literal

SCRATCH_PREFIX = "opskit_verify_"
SCRATCH_RE = re.compile(r"^opskit_verify_(\d{9,11})_[0-9a-f]{8}$")
STALE_SCRATCH_SECONDS = 15 * 60
TEMP_PREFIXES = ("opskit-pgpass-", "opskit-pgdump-", "opskit-pgrestore-")
TEMP_RE = re.compile(r"^(?:%s)(\d+)-" % "|".join(re.escape(p) for p in TEMP_PREFIXES))
SIGNALS = (signal.SIGTERM, signal.SIGHUP)
STAGE, RETIRED, PREVIOUS = "stage", "retired", "previous"
STAGED_RE = re.compile(r"^opskit_(stage|retired|previous)_(\d{9,11})_[0-9a-f]{8}_")
NAMEDATALEN = 63


class Interrupted(ServiceError):
    """The run was ended by a signal: nothing about the backup is recorded."""


@contextlib.contextmanager
def terminable(signals=SIGNALS):
    """SIGTERM / SIGHUP become ``Interrupted`` while the block runs (main thread only)."""
    def handler(signum, _frame):
        for number in signals:
            signal.signal(number, signal.SIG_IGN)  # the cleanup that follows runs to its end
        raise Interrupted("interrupted by signal %d: the tools were stopped and the temporary files,"
                          " passfile and scratch database removed" % signum)

    old = {}
    try:
        for number in signals:
            old[number] = signal.signal(number, handler)
    except ValueError:  # not the main thread: no handler
        pass
    try:
        yield
    finally:
        for number, previous in old.items():
            signal.signal(number, previous)


def temp_prefix(prefix):
    """``opskit-pgdump-<pid>-``: the next run knows whether the owner still lives."""
    return "%s%d-" % (prefix, os.getpid())


def scratch_name(now=None):
    return "%s%d_%s" % (SCRATCH_PREFIX, int(time.time() if now is None else now), secrets.token_hex(4))


def _started_at(pid):
    """The wall-clock time process ``pid`` started (from /proc), or None when it is not running."""
    try:
        with open("/proc/%d/stat" % pid) as fh:
            ticks = int(fh.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/stat") as fh:
            boot = int(next(line.split()[1] for line in fh if line.startswith("btime ")))
    except FileNotFoundError:
        return None
    except (OSError, ValueError, IndexError, StopIteration):
        return 0.0  # not ours to read, or an odd /proc: count it as the owner, remove nothing
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def _owner_alive(pid, created):
    """Whether ``pid``, named in a temporary created at ``created``, is still its owner: a
    process with that pid runs and started before the file was made (a pid is never reused
    while its process lives; a reused one started later). The command line says nothing: with
    pipelining a module runs as a bare ``python3``. /proc's boot time has whole seconds, so two
    seconds of slack, which can only keep a leftover for the next run."""
    started = _started_at(pid)
    return started is not None and started <= created + 2


def leftover_temporaries(dirs, alive=_owner_alive, uid=None):
    """Paths of our temporary files and directories in ``dirs`` whose owner is gone."""
    uid = os.getuid() if uid is None else uid
    found = []
    for directory in dict.fromkeys(d for d in dirs if d):
        try:
            entries = sorted(os.listdir(directory))
        except OSError:
            continue
        for entry in entries:
            match = TEMP_RE.match(entry)
            path = os.path.join(directory, entry)
            if not match or int(match.group(1)) == os.getpid():
                continue
            try:
                info = os.lstat(path)
                if info.st_uid != uid or alive(int(match.group(1)), info.st_ctime):
                    continue
            except OSError:
                continue
            found.append(path)
    return found


def sweep_temporary(tmp_dir=None, remove=True):
    """Remove (unless ``remove`` is false) what killed runs left in the temporary directories."""
    paths = leftover_temporaries([tempfile.gettempdir(), tmp_dir])
    for path in paths if remove else ():
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                os.unlink(path)
    return paths


def sweep_processes(tools, remove=True):
    """Kill the tools a SIGKILLed run left running in its container (a ``docker exec`` outlives
    the module that started it); returns ["pg_dump (pid N)"]. Local tools die with the module
    (PR_SET_PDEATHSIG): nothing to do for them."""
    if tools.local:
        return []
    found = tools.orphans()
    for exec_id, _tool, _pid in found if remove else ():
        tools.stop(exec_id)
    return ["%s (pid %d)" % (tool, pid) for _id, tool, pid in found]


def stale_scratch(rows, now, min_age=STALE_SCRATCH_SECONDS):
    """Names of the scratch databases among ``rows`` (name, sessions) a killed run left:
    older than ``min_age`` by their name and without any session."""
    out = []
    for name, sessions in rows:
        match = SCRATCH_RE.match(name)
        if match and int(sessions) == 0 and now - int(match.group(1)) >= min_age:
            out.append(name)
    return sorted(out)


SCRATCH_SQL = ("SELECT d.datname, (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)"
               " FROM pg_database d WHERE starts_with(d.datname, %s)" % quote_literal(SCRATCH_PREFIX))


def sweep_scratch(server, now=None, remove=True):
    """Drop stale scratch databases, and what killed staged restores left (``sweep_staged``);
    returns (names dropped or found, warnings). Never raises for a database it cannot drop (in
    use again, not its owner): that is a warning."""
    now = time.time() if now is None else now
    names = stale_scratch(server.query(SCRATCH_SQL), now)
    staged, warnings = sweep_staged(server, now, remove)
    if not remove:
        return names + staged, warnings
    dropped = []
    for name in names:
        try:
            server.query("DROP DATABASE IF EXISTS %s" % quote_ident(name))  # no FORCE: never a live one
            dropped.append(name)
        except ServiceError as exc:
            warnings.append("scratch database %s left by an interrupted run could not be dropped: %s"
                            % (name, exc.msg))
    return dropped + staged, warnings


def staged_name(kind, target, now=None):
    """``opskit_<kind>_<unix time>_<8 hex>_<target>``, the target cut to fit PostgreSQL's 63 bytes."""
    head = "opskit_%s_%d_%s_" % (kind, int(time.time() if now is None else now), secrets.token_hex(4))
    tail = str(target).encode("utf-8")[:NAMEDATALEN - len(head)].decode("utf-8", "ignore")
    return head + tail


def staged_comment(kind, target, **extra):
    """The comment of a staging / retired database: what it is, for which target, whose run."""
    record = {"opskit.runbook": kind, "target": target, "owner": owner_tag(os.getpid())}
    record.update(extra)
    return json.dumps(record, sort_keys=True)


def parse_staged_comment(text):
    """The record of ``staged_comment`` ({} for any other comment)."""
    try:
        record = json.loads(text or "")
    except ValueError:
        return {}
    return record if isinstance(record, dict) and "opskit.runbook" in record else {}


def owner_state(tag):
    """``gone``, ``alive`` (a process of this machine) or ``unknown`` (another machine)."""
    parts = (tag or "").split("|")
    if len(parts) != 5 or not parts[3].isdigit():
        return "unknown"
    if owner_gone(tag):
        return "gone"
    return "alive" if owner_tag(int(parts[3])) == tag else "unknown"


def stale_staged(rows, now, state=owner_state, min_age=STALE_SCRATCH_SECONDS):
    """[(name, force)] of the staging / retired databases among ``rows`` (name, comment,
    sessions) that a killed run left: its owner gone (force: its sessions are the dead run's),
    or an owner elsewhere and older than ``min_age`` without sessions."""
    out = []
    for name, comment, sessions in rows:
        match = STAGED_RE.match(name)
        if not match or match.group(1) == PREVIOUS:
            continue
        owner = state(parse_staged_comment(comment).get("owner"))
        if owner == "gone":
            out.append((name, True))
        elif owner == "unknown" and int(sessions) == 0 and now - int(match.group(2)) >= min_age:
            out.append((name, False))
    return sorted(out)


STAGED_SQL = ("SELECT d.datname, coalesce(shobj_description(d.oid, 'pg_database'), ''),"
              " (SELECT count(*) FROM pg_stat_activity a WHERE a.datname = d.datname)"
              " FROM pg_database d WHERE d.datname ~ '^opskit_(stage|retired)_'")


def sweep_staged(server, now=None, remove=True):
    """Drop what killed staged restores left; returns (names, warnings) as sweep_scratch."""
    found = stale_staged(server.query(STAGED_SQL), time.time() if now is None else now)
    warnings, dropped = [], []
    if not remove:
        return [name for name, _force in found], warnings
    for name, force in found:
        try:
            server.query("DROP DATABASE IF EXISTS %s%s" % (quote_ident(name), " WITH (FORCE)" if force else ""))
            dropped.append(name)
        except ServiceError as exc:
            warnings.append("database %s left by an interrupted staged restore could not be dropped: %s"
                            % (name, exc.msg))
    return dropped, warnings
