# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-harness callback: every task result as one JSON line, for tests/integration/harness.py (run_playbook_in)."""

from __future__ import annotations

DOCUMENTATION = r"""
name: opskit_capture
type: aggregate
short_description: Append every task result to a JSON-lines file (test harness)
description:
  - Writes each task result (ok, failed, skipped, unreachable) as the module returned it, plus
    C(_task), C(_role), C(_host) and C(_status), as one JSON line to the file named by the
    E(OPSKIT_CAPTURE_FILE) environment variable. Does nothing when the variable is unset.
requirements:
  - enabled in ANSIBLE_CALLBACKS_ENABLED
"""

import json
import os

from ansible.module_utils.common.json import AnsibleJSONEncoder
from ansible.plugins.callback import CallbackBase


class _Encoder(AnsibleJSONEncoder):
    def default(self, o):
        try:
            return super().default(o)
        except TypeError:
            return repr(o)


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "opskit_capture"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._path = os.environ.get("OPSKIT_CAPTURE_FILE")

    def _record(self, result, status):
        if not self._path:
            return
        task = result._task  # pylint: disable=protected-access
        data = dict(result.result if hasattr(result, "result") else result._result)  # .result: 2.19+
        role = getattr(task, "_role", None)
        data.update(_task=task.name or task.action, _role=role.get_name(include_role_fqcn=False) if role else None,
                    _host=result._host.get_name(), _status=status)  # pylint: disable=protected-access
        with open(self._path, "a") as fh:
            fh.write(json.dumps(data, cls=_Encoder) + "\n")

    def v2_runner_on_ok(self, result):
        self._record(result, "ok")

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._record(result, "failed")

    def v2_runner_on_skipped(self, result):
        self._record(result, "skipped")

    def v2_runner_on_unreachable(self, result):
        self._record(result, "unreachable")
