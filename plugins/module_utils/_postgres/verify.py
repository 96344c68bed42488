# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup state=verified: a backup restored into a scratch database and checked there.

The outcome (tables restored, the ``verify_queries``) is recorded in the backup's manifest;
the scratch database is dropped in any case.
"""

from __future__ import annotations

import contextlib
import time

from .._engine.artifacts import verify_stored
from .._engine.catalog import summarize, update_verification
from .._engine.lock import LockTimeout, SeriesLock, attach
from .._errors import IntegrityError, NotFoundError, OpsError, ServiceError
from .cleanup import Interrupted, scratch_name
from .options import check_options, find_backup
from .restore import restore


def evaluate_query(spec, rows):
    """Compare a verify query's result with its expectation: (passed, value, message).

    The value is the first column of the first row (None without rows). ``expect`` compares it
    as text; ``min`` / ``max`` compare it as a number; ``rows`` is the exact row count.
    A query without expectations passes when it runs.
    """
    value = rows[0][0] if rows and rows[0] else None
    problems = []
    if spec.get("rows") is not None and len(rows) != spec["rows"]:
        problems.append("returned %d rows, expected %d" % (len(rows), spec["rows"]))
    if spec.get("expect") is not None and value != str(spec["expect"]):
        problems.append("returned %r, expected %r" % (value, str(spec["expect"])))
    if spec.get("min") is not None or spec.get("max") is not None:
        try:
            number = float(value)
        except (TypeError, ValueError):
            problems.append("returned %r, not a number" % (value,))
        else:
            if spec.get("min") is not None and number < spec["min"]:
                problems.append("returned %s, below the minimum %s" % (value, spec["min"]))
            if spec.get("max") is not None and number > spec["max"]:
                problems.append("returned %s, above the maximum %s" % (value, spec["max"]))
    return (not problems), value, "; ".join(problems) or "ok"


# What a tool or query says when the failure is the infrastructure's, not the backup's.
INFRASTRUCTURE = ("cannot connect", "connection to server", "could not connect", "server closed the connection",
                  "terminating connection", "the database system is", "too many connections",
                  "no space left on device", "could not extend file", "out of memory", "disk quota",
                  "permission denied to create database", "must be owner", "was killed by signal",
                  "timed out", "cannot run ")


def outcome_of(exc):
    """``failed`` when ``exc`` says the backup cannot be restored (corrupt or missing artifact,
    SQL of the dump that fails), ``error`` when the restore test itself could not run."""
    if isinstance(exc, (IntegrityError, NotFoundError)):
        return "failed"
    if isinstance(exc, ServiceError):
        text = exc.msg.lower()
        return "error" if any(marker in text for marker in INFRASTRUCTURE) else "failed"
    return "error"  # StorageError (the store), ConfigError (this host cannot restore this format)


def verify(server, location, params, check_mode=False):
    """Restore into a scratch database, run the checks, record the outcome in the manifest."""
    check_options("verified", params)
    manifest = find_backup(location, params, server)
    scratch_db = scratch_name()
    queries = params.get("verify_queries") or []
    if check_mode:
        result = restore(server, location, params, True, manifest, scratch_db, verifying=True)
        result["msg"] = "would verify backup %s in a scratch database" % manifest["id"]
        result["verification"] = {"result": "unverified", "queries": len(queries)}
        return result
    lock = SeriesLock(location, manifest["series"], "pg_backup", params.get("lock_timeout"))
    try:
        with lock:  # rotation never deletes this backup under the verification, nor does a second one run
            result = _verify_locked(server, location, params, manifest, scratch_db)
    except LockTimeout:
        raise  # it names the holder; nothing ran
    except OpsError as exc:
        attach(exc.result, lock)
        raise
    return attach(result, lock)


def _verify_locked(server, location, params, manifest, scratch_db):
    started = time.monotonic()
    details = {"scratch_database": scratch_db, "queries": []}
    try:
        outcome, error = _restore_and_check(server, location, params, manifest, scratch_db, details)
    finally:
        with contextlib.suppress(OpsError):
            server.drop(scratch_db)
    details["duration_seconds"] = round(time.monotonic() - started, 3)
    if error:
        details["error"] = error
    updated = update_verification(location, manifest, "restore", outcome, details)
    result = {"changed": True, "backup": summarize(updated, location), "verification": updated["verification"]}
    if outcome == "error":
        raise ServiceError("backup %s could not be verified (recorded as error; an earlier result is kept): %s"
                           % (manifest["id"], error), **result)
    if outcome != "passed":
        raise OpsError("verification of backup %s failed: %s" % (manifest["id"], error), **result)
    result["msg"] = "backup %s verified: restored and checked in a scratch database" % manifest["id"]
    return result


def _restore_and_check(server, location, params, manifest, scratch_db, details):
    """(outcome, error): every artifact checked, the restore, the table count, the queries.
    ``Interrupted`` (a signal) passes through: nothing is recorded for it."""
    try:
        for companion in manifest.get("companions") or []:
            verify_stored(location, manifest, companion.get("name"))  # a restore may need each one
        restore(server, location, params, False, manifest, scratch_db, verifying=True)
        details["tables"] = server.tables(scratch_db)
    except Interrupted:
        raise
    except OpsError as exc:
        outcome = outcome_of(exc)
        return outcome, ("restore failed: %s" if outcome == "failed" else "%s") % exc.msg
    error = check_database(server, manifest, scratch_db, params, details)
    return ("passed" if error is None else "failed"), error


def check_database(server, manifest, database, params, details, in_place=False):
    """The first failed check (None when all passed) of a restored ``database``: its table count
    against the one dumped (``details["tables"]``, counted when absent), then the queries.
    ``in_place``: a restore into a database that existed keeps the tables the dump does not
    hold (a clean restore drops only the dump's objects), so only fewer tables fail."""
    expected_tables = (manifest.get("source") or {}).get("tables")
    if "tables" not in details:
        details["tables"] = server.tables(database)
    details.setdefault("queries", [])
    error = None
    if expected_tables is not None and (details["tables"] < expected_tables if in_place else details["tables"] != expected_tables):
        error = "restored %d tables, the source had %d" % (details["tables"], expected_tables)
    for index, spec in enumerate(params.get("verify_queries") or []):
        name = spec.get("name") or "query %d" % (index + 1)
        try:
            passed, value, message = evaluate_query(spec, server.query(spec["query"], database))
        except Interrupted:
            raise
        except ServiceError as exc:
            passed, value, message = False, None, exc.msg
        details["queries"].append({"name": name, "passed": passed, "value": value, "message": message})
        if not passed and error is None:
            error = "%s %s" % (name, message)
    return error


def restore_checked(server, location, params, check_mode=False):
    """pg_backup state=restored with verify=true: the restore, then the checks of a verification
    run in the restored database itself (nothing is recorded in the manifest)."""
    if not params.get("verify"):
        return restore(server, location, params, check_mode)
    manifest = find_backup(location, params, server)
    result = restore(server, location, params, check_mode, manifest)
    if check_mode:
        return result
    details = {}
    error = check_database(server, manifest, result["plan"]["target_database"], params, details, in_place=True)
    result["verification"] = {"result": "failed" if error else "passed", "details": details}
    if error:
        result.pop("msg", None)
        raise OpsError("backup %s was restored, its checks failed in the restored database: %s" % (manifest["id"], error), **result)
    return result
