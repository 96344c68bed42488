# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The built collection: what the tarball holds and its Galaxy metadata, its docs pass
antsibull-docs' linter, and it installs into a clean virtualenv and works from outside the
checkout."""

from __future__ import annotations

import json
import os
import tarfile

import pytest
import yaml

from collection_fixtures import BIN, ROOT, build_collection, clean_env, install_collection, make_venv, pinned, run

# What the tarball must hold (files, or directories with files), and what it must not.
SHIPPED = ["MANIFEST.json", "FILES.json", "README.md", "CHANGELOG.rst", "requirements.txt", "bindep.txt",
           "execution-environment.yml", "meta/runtime.yml", "meta/execution-environment.yml",
           "changelogs/changelog.yaml", "changelogs/config.yaml", "docs/docsite/links.yml",
           "docs/docsite/extra-docs.yml", "plugins/modules/backup_info.py", "playbooks/daily.yml",
           "roles/backup/meta/argument_specs.yml", "inventories/example/", "tests/unit/", "tests/integration/",
           "tests/requirements.txt"]
LEFT_OUT = (".venv/", ".build/", ".git/", ".ansible/", ".ci/", ".github/", ".hypothesis/", ".pytest_cache/",
            "bench/", "demo/", "reports/", "scripts/", "tests/output/", "docs/docsite/build/")


@pytest.fixture(scope="module")
def tarball(tmp_path_factory):
    return build_collection(tmp_path_factory.mktemp("dist"))


def test_tarball_contents_and_metadata(tarball):
    with tarfile.open(tarball) as tar:
        names = [m.name + ("/" if m.isdir() else "") for m in tar.getmembers()]
        manifest = json.load(tar.extractfile("MANIFEST.json"))["collection_info"]
    for wanted in SHIPPED:
        assert any(n == wanted or (wanted.endswith("/") and n.startswith(wanted) and not n.endswith("/"))
                   for n in names), "%s is not in the tarball" % wanted
    assert not [n for n in names if n.startswith(LEFT_OUT) or n in ("Makefile", ".gitignore")], \
        [n for n in names if n.startswith(LEFT_OUT)][:10]
    assert not [n for n in names if "__pycache__" in n or n.endswith((".pyc", ".tar.gz"))]
    assert not [n for n in names if n.startswith("changelogs/fragments/.") or n.endswith(".plugin-cache.yaml")]

    with open(os.path.join(ROOT, "galaxy.yml")) as fh:
        galaxy = yaml.safe_load(fh)
    assert manifest["version"] == galaxy["version"]
    for key in ("repository", "documentation", "homepage", "issues"):
        assert manifest[key] and manifest[key].startswith("https://"), key
    assert len(manifest["tags"]) <= 20 and all(t.isalnum() and t == t.lower() for t in manifest["tags"])
    assert {"backup", "postgresql", "s3", "docker"} <= set(manifest["tags"])
    with open(os.path.join(ROOT, "changelogs", "changelog.yaml")) as fh:
        assert galaxy["version"] in yaml.safe_load(fh)["releases"], "no changelog release for %s" % galaxy["version"]
    with open(os.path.join(ROOT, "CHANGELOG.rst")) as fh:
        assert "v%s" % galaxy["version"] in fh.read()


def test_docs_pass_antsibull_docs_lint(tarball, tmp_path):
    """antsibull-docs lint-collection-docs --plugin-docs on what ships: the plugin and role docs
    (schema, markup, references), the docsite's links.yml and extra-docs.yml and their pages."""
    installed = install_collection(tarball, tmp_path / "collections", tmp_path / "home")
    env = clean_env(tmp_path / "home", ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"),
                    PATH="%s:%s" % (BIN, os.environ.get("PATH", "")))
    # rstcheck of the generated plugin pages is left out (it doubles the time): the markup is
    # validated by the schema check; the extra docs' RST is checked in the second call
    run([os.path.join(BIN, "antsibull-docs"), "lint-collection-docs", "--plugin-docs", "--skip-rstcheck",
         "--disallow-unknown-collection-refs", installed], env=env)
    run([os.path.join(BIN, "antsibull-docs"), "lint-collection-docs", "--check-extra-docs-refs", installed], env=env)


def test_build_install_and_use(tarball, tmp_path):
    venv = make_venv(tmp_path / "venv", pinned("ansible-core"))
    env = clean_env(tmp_path, ANSIBLE_COLLECTIONS_PATH=str(tmp_path / "collections"))
    install_collection(tarball, tmp_path / "collections", tmp_path, galaxy=str(venv / "bin" / "ansible-galaxy"))
    doc = json.loads(run([str(venv / "bin" / "ansible-doc"), "--json", "opskit.runbook.backup_info"], env=env))
    assert "max_age" in doc["opskit.runbook.backup_info"]["doc"]["options"]

    store = tmp_path / "store"
    store.mkdir()
    playbook = tmp_path / "outside.yml"
    playbook.write_text(
        "- hosts: localhost\n  gather_facts: false\n  tasks:\n"
        "    - opskit.runbook.backup_info:\n        location: file://%s\n      register: info\n"
        "    - ansible.builtin.assert:\n        that: info.series == {} and info.stale_series == []\n" % store)
    out = run([str(venv / "bin" / "ansible-playbook"), "-i", "localhost,", "-c", "local",
               "-e", "ansible_python_interpreter=%s" % (venv / "bin" / "python"), str(playbook)],
              env=env, cwd=str(tmp_path))
    assert "failed=0" in out
