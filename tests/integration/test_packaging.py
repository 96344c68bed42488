# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The built collection installs into a clean virtualenv and works from outside the checkout."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def _run(cmd, **kwargs):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, **kwargs)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def test_build_install_and_use(tmp_path):
    _run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", ROOT, "--output-path", str(tmp_path)])
    tarball = glob.glob(str(tmp_path / "opskit-runbook-*.tar.gz"))
    assert len(tarball) == 1
    names = _run(["tar", "tzf", tarball[0]]).split()
    assert "plugins/modules/backup_info.py" in names and "meta/runtime.yml" in names
    assert not any(n.startswith((".venv", ".build", "bench/")) for n in names)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    ansible_core = [line for line in open(os.path.join(ROOT, "tests", "requirements.txt"))
                    if line.startswith("ansible-core==")][0].strip()
    _run([str(venv / "bin" / "pip"), "install", "-q", ansible_core])
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"), HOME=str(tmp_path))
    env.pop("PYTHONPATH", None)
    _run([str(venv / "bin" / "ansible-galaxy"), "collection", "install", tarball[0], "-p",
          str(tmp_path / "collections")], env=env)
    doc = json.loads(_run([str(venv / "bin" / "ansible-doc"), "--json", "opskit.runbook.backup_info"], env=env))
    assert "max_age" in doc["opskit.runbook.backup_info"]["doc"]["options"]

    store = tmp_path / "store"
    store.mkdir()
    playbook = tmp_path / "outside.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - opskit.runbook.backup_info:\n        location: file://%s\n      register: info\n"
        "    - ansible.builtin.assert:\n        that: info.series == {} and info.stale_series == []\n" % store)
    out = _run([str(venv / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
                "-e", "ansible_python_interpreter=%s" % (venv / "bin" / "python"), str(playbook)],
               env=env, cwd=str(tmp_path))
    assert "failed=0" in out
