# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers of the tests that use the collection the way its users get it: the built tarball,
installed by ansible-galaxy into a collections path of their own (test_packaging, test_ee,
test_runner)."""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tarfile

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIN = os.path.dirname(sys.executable)


def run(cmd, **kwargs):
    """Run cmd; its stdout. Fails the test with the command's output tail when it fails."""
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False, **kwargs)
    assert proc.returncode == 0, "%s failed:\n%s\n%s" % (cmd, proc.stdout[-3000:], proc.stderr[-3000:])
    return proc.stdout


def clean_env(home, **extra):
    """The environment of a user outside the checkout: no ANSIBLE_* or PYTHONPATH of ours, HOME
    in a temporary directory (so ~/.ansible/collections is not found either)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_") and k != "PYTHONPATH"}
    env.update(HOME=str(home), **extra)
    return env


def _consistent(tarball):
    """Every file's sha256 in the tarball matches FILES.json (a file edited while ansible-galaxy
    built the tarball breaks that: the tree is shared by several writers on developer machines)."""
    with tarfile.open(tarball) as tar:
        files = json.load(tar.extractfile("FILES.json"))["files"]
        for entry in files:
            if entry["ftype"] == "file":
                data = tar.extractfile(entry["name"]).read()
                if hashlib.sha256(data).hexdigest() != entry["chksum_sha256"]:
                    return False
    return True


def build_collection(dest, attempts=3):
    """ansible-galaxy collection build of the checkout into dest; the tarball's path. Built
    again (up to ``attempts`` times) when a file changed during the build."""
    for _attempt in range(attempts):
        run([os.path.join(BIN, "ansible-galaxy"), "collection", "build", ROOT, "--output-path", str(dest),
             "--force"])
        (tarball,) = glob.glob(os.path.join(str(dest), "opskit-runbook-*.tar.gz"))
        if _consistent(tarball):
            return tarball
    raise AssertionError("the tree kept changing while ansible-galaxy built %s" % tarball)


def install_collection(tarball, collections_path, home, galaxy=None):
    """ansible-galaxy collection install of the tarball into collections_path (a clean HOME)."""
    galaxy = galaxy or os.path.join(BIN, "ansible-galaxy")
    run([galaxy, "collection", "install", str(tarball), "-p", str(collections_path)],
        env=clean_env(home, ANSIBLE_COLLECTIONS_PATH=str(collections_path)))
    return os.path.join(str(collections_path), "ansible_collections", "opskit", "runbook")


def pinned(name):
    """The ``name==version`` line of tests/requirements.txt."""
    with open(os.path.join(ROOT, "tests", "requirements.txt")) as fh:
        return [line.strip() for line in fh if line.startswith(name + "==")][0]


def make_venv(path, *requirements):
    """A clean virtualenv of the base interpreter with only ``requirements`` (pip arguments).
    No pip inside it: .venv's pip installs into it (``--python``), without compiling .pyc
    files; that halves the time (measured: 36 s -> 19 s for ansible-core, ansible-runner and
    the collection's requirements)."""
    run([os.path.join(sys.base_prefix, "bin", "python3"), "-m", "venv", "--without-pip", str(path)])
    run([os.path.join(BIN, "python"), "-m", "pip", "--python", os.path.join(str(path), "bin", "python"), "install",
         "-q", "--no-compile", "--disable-pip-version-check"] + list(requirements))
    return path


def requirement_lines(path):
    """The requirement lines of a requirements.txt or bindep.txt, without comments and blanks."""
    with open(path) as fh:
        lines = [line.split("#", 1)[0].strip() for line in fh]
    return [line for line in lines if line]
