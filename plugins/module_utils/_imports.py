# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one guard for optional imports: the SDKs a module needs only on some paths.

``Library("docker", "docker", "docker.errors")`` imports nothing until ``load()`` is called, so
a module that merely declares the Docker options does not pay the SDK's import time (docker
~0.5 s, kubernetes seconds). ``load()`` returns the top-level package, or raises
MissingLibraryError naming the library (run_module reports it with ``missing_required_lib``).
"""

from __future__ import annotations

import importlib

from ._errors import MissingLibraryError

try:
    from ansible.module_utils.basic import env_fallback
except ImportError:  # pragma: no cover - plain Python use without ansible
    env_fallback = None


class Library:
    """An optional third-party library, imported on first use."""

    def __init__(self, name, *modules):
        self.name = name                       # the name pip knows it by
        self.modules = modules or (name,)      # what to import; the first is returned
        self._top = None

    def load(self):
        if self._top is None:
            try:
                loaded = [importlib.import_module(m) for m in self.modules]
            except ImportError as exc:  # pragma: no cover - depends on the host
                raise MissingLibraryError(self.name, exc) from exc
            self._top = loaded[0]
        return self._top

    @property
    def available(self):
        try:
            self.load()
        except MissingLibraryError:
            return False
        return True


def fallback(*names):
    """An argument spec's ``fallback`` reading the first of these environment variables."""
    return (env_fallback, list(names)) if env_fallback else None
