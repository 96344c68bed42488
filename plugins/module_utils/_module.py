# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where domain exceptions become module failures."""

from __future__ import annotations

from ansible.module_utils.basic import missing_required_lib

from ._errors import MissingLibraryError, OpsError


def run_module(module, action):
    """Call ``action()`` (returns the result dict) and exit the module with it.

    OpsError becomes fail_json with its one-line message and its result fields; nothing else
    is caught, so a genuine bug still shows its traceback.
    """
    try:
        result = action()
    except MissingLibraryError as exc:
        module.fail_json(msg=missing_required_lib(exc.library) + " (%s)" % exc.msg)
    except OpsError as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    module.exit_json(**result)
