# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One run of pg_backup: what killed runs left is removed first, a SIGTERM unwinds everything.

``run()`` is what the module calls: ``cleanup.terminable`` around the whole run, the sweeps of
``cleanup`` (temporary files always, tools left running in the container with docker_container,
scratch databases with state=verified; only listed in check mode), then the state's function (``dump``, ``restore``, ``verify``). What was removed is
returned as ``leftovers`` and said in a warning, with success and failure alike.
"""

from __future__ import annotations

from .._errors import OpsError
from .cleanup import sweep_processes, sweep_scratch, sweep_temporary, terminable
from .dump import dump
from .server import open_server
from .verify import restore_checked, verify

ACTIONS = {"dumped": dump, "restored": restore_checked, "verified": verify}


def run(params, location, check_mode=False):
    with terminable():
        found = {"temporary_files": sweep_temporary(params.get("tmp_dir"), remove=not check_mode),
                 "scratch_databases": []}
        warnings, tool_warnings = [], []
        try:
            with open_server(params) as server:
                tool_warnings = getattr(server.tools, "warnings", tool_warnings)  # a tool it could not stop
                processes = sweep_processes(server.tools, remove=not check_mode)
                if processes:
                    found["processes"] = processes
                if params["state"] in ("verified", "restored"):  # scratch, staging and retired databases
                    found["scratch_databases"], warnings = sweep_scratch(server, remove=not check_mode)
                result = ACTIONS[params["state"]](server, location, params, check_mode)
        except OpsError as exc:
            _report(exc.result, found, warnings + tool_warnings, check_mode)
            raise
    return _report(result, found, warnings + tool_warnings, check_mode)


def _report(result, found, warnings, check_mode):
    """``leftovers`` and a warning when an earlier, interrupted run had left something."""
    warnings = list(warnings)
    markers = result.pop("removed_markers", [])
    if markers:  # the session said it in its own warning
        found = dict(found, inflight_markers=markers)
    if any(found.values()):
        result["leftovers"] = found
        parts = ["%d temporary file(s) (%s)" % (len(found["temporary_files"]), ", ".join(found["temporary_files"]))
                 if found["temporary_files"] else "",
                 "scratch database(s) %s" % ", ".join(found["scratch_databases"]) if found["scratch_databases"] else "",
                 "tool(s) still running %s" % ", ".join(found["processes"]) if found.get("processes") else ""]
        if any(parts):
            warnings.insert(0, "%s what an interrupted earlier run left: %s" % (
                "found (check mode: kept)" if check_mode else "removed", "; ".join(p for p in parts if p)))
    if warnings:
        result.setdefault("warnings", []).extend(warnings)
    return result
