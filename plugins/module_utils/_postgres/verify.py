# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup state=verified: a backup restored into a scratch database and checked there.

The outcome (tables restored, the ``verify_queries``) is recorded in the backup's manifest;
the scratch database is dropped in any case.
"""

from __future__ import annotations

import contextlib
import secrets
import time

from .._engine.catalog import summarize, update_verification
from .._errors import OpsError, ServiceError
from .options import check_options, find_backup
from .restore import restore

SCRATCH_PREFIX = "opskit_verify_"


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


def verify(server, location, params, check_mode=False):
    """Restore into a scratch database, run the checks, record the outcome in the manifest."""
    check_options("verified", params)
    manifest = find_backup(location, params, server)
    scratch_db = "%s%s" % (SCRATCH_PREFIX, secrets.token_hex(4))
    queries = params.get("verify_queries") or []
    if check_mode:
        result = restore(server, location, params, True, manifest, scratch_db, verifying=True)
        result["msg"] = "would verify backup %s in a scratch database" % manifest["id"]
        result["verification"] = {"result": "unverified", "queries": len(queries)}
        return result
    started = time.monotonic()
    details = {"scratch_database": scratch_db, "queries": []}
    outcome, error = "failed", None
    try:
        restore(server, location, params, False, manifest, scratch_db, verifying=True)
        expected_tables = (manifest.get("source") or {}).get("tables")
        details["tables"] = server.tables(scratch_db)
        if expected_tables is not None and details["tables"] != expected_tables:
            error = "restored %d tables, the source had %d" % (details["tables"], expected_tables)
        for index, spec in enumerate(queries):
            name = spec.get("name") or "query %d" % (index + 1)
            try:
                passed, value, message = evaluate_query(spec, server.query(spec["query"], scratch_db))
            except ServiceError as exc:
                passed, value, message = False, None, exc.msg
            details["queries"].append({"name": name, "passed": passed, "value": value, "message": message})
            if not passed and error is None:
                error = "%s %s" % (name, message)
        outcome = "passed" if error is None else "failed"
    except OpsError as exc:
        error = "restore failed: %s" % exc.msg
    finally:
        with contextlib.suppress(OpsError):
            server.drop(scratch_db)
    details["duration_seconds"] = round(time.monotonic() - started, 3)
    if error:
        details["error"] = error
    updated = update_verification(location, manifest, "restore", outcome, details)
    result = {"changed": True, "backup": summarize(updated, location), "verification": updated["verification"]}
    if outcome != "passed":
        raise OpsError("verification of backup %s failed: %s" % (manifest["id"], error), **result)
    result["msg"] = "backup %s verified: restored and checked in a scratch database" % manifest["id"]
    return result
