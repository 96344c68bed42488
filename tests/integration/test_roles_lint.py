# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""ansible-lint, production profile, over the roles, playbooks, inventories and molecule
scenarios, with no rule skipped anywhere."""

from __future__ import annotations

import os
import re
import subprocess
import sys

from roles_fixtures import ROOT

LINTED = ("roles", "playbooks", "molecule", "inventories")


def test_no_rule_is_skipped():
    with open(os.path.join(ROOT, ".ansible-lint")) as fh:
        config = fh.read()
    assert re.search(r"^profile: production$", config, re.M)
    for key in ("skip_list", "warn_list", "enable_list", "mock_", "offline"):
        assert key not in config, key
    for top in LINTED:
        for dirpath, _dirs, files in os.walk(os.path.join(ROOT, top)):
            for name in files:
                with open(os.path.join(dirpath, name), errors="replace") as fh:
                    assert "noqa" not in fh.read(), os.path.join(dirpath, name)


def test_ansible_lint_production_profile_passes():
    venv_bin = os.path.dirname(sys.executable)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
    env.update(PATH=venv_bin + os.pathsep + env.get("PATH", ""), NO_COLOR="1")
    proc = subprocess.run([os.path.join(venv_bin, "ansible-lint"), "-f", "pep8", "--nocolor"] + list(LINTED),
                          cwd=ROOT, env=env, check=False, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "Profile 'production' was required, and it passed" in out
    processed = int(re.search(r"in (\d+) files processed", out).group(1))
    assert processed >= 60, out[-2000:]
