# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible's conversion of the ``checks`` sub-options, done on the options a check gives.

    convert_checks(checks) -> list of check dicts   types, elements and choices of CHECK_ARGSPEC
    secret_values(checks) -> set of strings         the values of its no_log sub-options and URL credentials

health_check declares ``checks`` as a list of dicts without ``options``: AnsibleModule's
sub-option validation visits every one of the ~100 sub-options of every check (defaults, aliases,
no_log, types, choices), 20 to 30 ms of CPU for 200 checks (3 to 5 ms without; see
bench/RESULTS.md). This does what it does, with Ansible's own type checkers and messages, for the
keys a check sets; checks.validate_checks then resolves aliases, refuses unknown options and
fills in the defaults as before. tests/unit/plugins/module_utils/test_health_params.py holds the docs of
the module to CHECK_ARGSPEC (validate-modules no longer compares sub-options it cannot see).
"""

from __future__ import annotations

from collections.abc import Mapping

from ansible.module_utils.common.validation import (
    check_type_bool, check_type_dict, check_type_float, check_type_int, check_type_list, check_type_path,
    check_type_raw, check_type_str)

from .._errors import ConfigError
from .checks import ALIASES, CHECK_ARGSPEC, label_of
from .probe import url_secrets

_CHECKERS = {"str": check_type_str, "list": check_type_list, "dict": check_type_dict, "bool": check_type_bool,
             "int": check_type_int, "float": check_type_float, "path": check_type_path, "raw": check_type_raw}
_SPEC = dict(CHECK_ARGSPEC, **{alias: CHECK_ARGSPEC[name] for alias, name in ALIASES.items()})
_NO_LOG = frozenset(name for name, spec in _SPEC.items() if spec.get("no_log"))


def _convert(label, key, value, spec):
    wanted = spec.get("type", "str")
    try:
        value = _CHECKERS[wanted](value)
    except (TypeError, ValueError) as exc:
        raise ConfigError("%s: argument '%s' is of type %s and we were unable to convert to %s: %s"
                          % (label, key, type(value).__name__, wanted, exc)) from None
    elements = spec.get("elements")
    if elements:
        out = []
        for item in value:
            try:
                out.append(_CHECKERS[elements](item))
            except (TypeError, ValueError) as exc:
                raise ConfigError("%s: elements value for option '%s' is of type %s and we were unable to convert to %s: %s"
                                  % (label, key, type(item).__name__, elements, exc)) from None
        value = out
    choices = spec.get("choices")
    if choices is not None and value not in choices:
        raise ConfigError("%s: value of %s must be one of: %s, got: %s" % (label, key, ", ".join(choices), value))
    return value


def convert_checks(checks):
    """``checks`` with each set sub-option converted to its type (unknown keys and None values are
    left to validate_checks); ConfigError names the check."""
    if not isinstance(checks, list):
        return checks
    out = []
    for index, raw in enumerate(checks):
        if not isinstance(raw, dict):
            out.append(raw)
            continue
        label = label_of(index, raw)
        out.append({key: value if value is None or key not in _SPEC else _convert(label, key, value, _SPEC[key])
                    for key, value in raw.items()})
    return out


def _strings(value):
    """The strings Ansible's no_log masks for ``value`` (text, numbers, and inside mappings and lists)."""
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, Mapping):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, (list, tuple, set)):
        for item in value:
            yield from _strings(item)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        yield str(value)


def secret_values(checks):
    """What must be masked everywhere in the result and in the module's log: the values of the
    no_log sub-options (headers, password, bearer_token...) and the credentials of check URLs."""
    found = set()
    for check in checks if isinstance(checks, list) else ():
        if isinstance(check, dict):
            for key in _NO_LOG.intersection(check):
                found.update(_strings(check[key]))
            found.update(url_secrets(check.get("url")))
    return found
