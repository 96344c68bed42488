# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where domain exceptions become module failures and warnings are emitted."""

from __future__ import annotations

import traceback

from ansible.module_utils.basic import missing_required_lib

from ._errors import MissingLibraryError, OpsError

WARNINGS = "warnings"   # result key under which domain code returns warnings for module.warn()


def run_module(module, action):
    """Call ``action()`` (returns the result dict) and exit the module with it.

    - ``result["warnings"]`` (a list of strings, if present) is emitted with ``module.warn()``;
      domain code uses it for every silent fallback.
    - OpsError becomes fail_json with its one-line message and its result fields, with the
      traceback of its cause for ``-vvv``.
    - Anything else is a bug: fail_json says so in one line and passes the traceback, which
      ansible-playbook shows at ``-vvv``. This is the only ``except Exception`` of the collection.
    """
    try:
        result = action()
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library) + " (%s)" % exc.msg, exception=_trace(exc))
    except OpsError as exc:
        _warn(module, exc.result.pop(WARNINGS, None))
        module.fail_json(msg=exc.msg, exception=_trace(exc), **exc.result)
    except Exception as exc:  # the outer boundary: a bug, reported in one line with its traceback
        module.fail_json(msg="internal error (a bug in opskit.runbook): %s: %s"
                         % (type(exc).__name__, " ".join(str(exc).split())), exception=_trace(exc))
    _warn(module, result.pop(WARNINGS, None))
    module.exit_json(**result)


def _warn(module, warnings):
    for text in warnings or ():
        module.warn(text)


def _trace(exc):
    return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
