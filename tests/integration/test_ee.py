# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Execution environments by convention: an EE definition that names only opskit.runbook gets
the collection's Python libraries and system packages through ansible-builder's introspection
of meta/execution-environment.yml (requirements.txt, bindep.txt)."""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid

import pytest
import yaml

from collection_fixtures import (BIN, ROOT, build_collection, clean_env, install_collection, pinned, requirement_lines,
                                 run)
from ee_fixtures import assemble_rootfs, import_image, installed_closure

BUILDER = os.path.join(BIN, "ansible-builder")


def _introspect(context, collections):
    """The builder stage's own step, with the context's copy of introspect.py: the combined
    (pip, bindep) requirement lines of every collection under ``collections``."""
    pip, bindep = os.path.join(context, "pip.txt"), os.path.join(context, "bindep.txt")
    for path in (pip, bindep):  # introspect.py writes no file when there is nothing to write
        if os.path.exists(path):
            os.unlink(path)
    run([os.path.join(BIN, "python"), os.path.join(context, "_build", "scripts", "introspect.py"), "introspect",
         "--write-pip=" + pip, "--write-bindep=" + bindep, collections])
    return (requirement_lines(pip) if os.path.exists(pip) else [],
            requirement_lines(bindep) if os.path.exists(bindep) else [])


def test_ee_naming_only_the_collection_gets_its_requirements(tmp_path):
    tarball = build_collection(tmp_path / "dist")
    name = os.path.basename(tarball)
    definition = tmp_path / "execution-environment.yml"
    definition.write_text(yaml.safe_dump({
        "version": 3,
        "images": {"base_image": {"name": "localhost/opskit-ee-base:1"}},
        "dependencies": {
            "ansible_core": {"package_pip": "ansible-core"},
            "ansible_runner": {"package_pip": "ansible-runner"},
            "galaxy": {"collections": [{"name": "collections/" + name, "type": "file"}]},
        },
        "additional_build_files": [{"src": tarball, "dest": "collections"}],
    }))
    context = str(tmp_path / "context")
    run([BUILDER, "create", "-f", str(definition), "-c", context, "--output-filename", "Dockerfile"],
        cwd=str(tmp_path))
    build = os.path.join(context, "_build")
    with open(os.path.join(build, "requirements.yml")) as fh:
        assert yaml.safe_load(fh) == {"collections": [{"name": "collections/" + name, "type": "file"}]}
    # the definition lists no Python or system package: the context has no user requirements
    assert not os.path.exists(os.path.join(build, "requirements.txt"))
    assert not os.path.exists(os.path.join(build, "bindep.txt"))
    with open(os.path.join(context, "Dockerfile")) as fh:
        dockerfile = fh.read()
    assert "introspect.py introspect" in dockerfile and "install-from-bindep" in dockerfile

    # the galaxy stage (WORKDIR /build: the requirement's path is relative to it), then the
    # builder stage's introspection of what it installed
    collections = tmp_path / "usr-share-ansible-collections"
    run([os.path.join(BIN, "ansible-galaxy"), "collection", "install", "-r", "requirements.yml",
         "--collections-path", str(collections)], cwd=build, env=clean_env(tmp_path / "home"))
    pip, bindep = _introspect(context, str(collections))
    assert pip == requirement_lines(os.path.join(ROOT, "requirements.txt"))
    assert bindep == requirement_lines(os.path.join(ROOT, "bindep.txt"))
    for package in ("psycopg2-binary", "boto3", "docker", "zstandard", "kubernetes"):
        assert any(line.startswith(package + ">=") and "<" in line for line in pip), (package, pip)
    for package in ("postgresql-client [platform:dpkg]", "postgresql [platform:rpm]",
                    "redis-tools [platform:dpkg]", "redis [platform:rpm]"):
        assert package in bindep, (package, bindep)

    # meta/execution-environment.yml is what introspection follows: pointed at other (empty)
    # files, the collection's requirements vanish from the build
    installed = os.path.join(str(collections), "ansible_collections", "opskit", "runbook")
    with open(os.path.join(installed, "meta", "none.txt"), "w") as fh:
        fh.write("# nothing\n")
    with open(os.path.join(installed, "meta", "execution-environment.yml"), "w") as fh:
        yaml.safe_dump({"version": 1, "dependencies": {"python": "meta/none.txt", "system": "meta/none.txt"}}, fh)
    assert _introspect(context, str(collections)) == ([], [])


def test_shipped_ee_definition_relies_on_the_convention(tmp_path):
    """The shipped execution-environment.yml is a valid ansible-builder v3 definition that lists
    no Python or system package by hand: they come from the collection."""
    with open(os.path.join(ROOT, "execution-environment.yml")) as fh:
        definition = yaml.safe_load(fh)
    assert definition["version"] == 3
    assert set(definition["dependencies"]) == {"ansible_core", "ansible_runner", "galaxy"}
    assert [c["name"] for c in definition["dependencies"]["galaxy"]["collections"]] == ["opskit.runbook"]
    shutil.copy(os.path.join(ROOT, "execution-environment.yml"), str(tmp_path))
    run([BUILDER, "create", "-c", str(tmp_path / "context")], cwd=str(tmp_path))
    installed = install_collection(build_collection(tmp_path / "dist"), tmp_path / "collections", tmp_path / "home")
    with open(os.path.join(installed, "meta", "execution-environment.yml")) as fh:
        assert yaml.safe_load(fh) == {"version": 1, "dependencies": {"python": "requirements.txt",
                                                                     "system": "bindep.txt"}}


EE_BASE = "localhost/opskit-ee-base:1"


@pytest.mark.skipif(os.environ.get("OPSKIT_EE_BUILD") != "1",
                    reason="builds an EE image (about 4 min, needs PyPI and deb.debian.org from containers): "
                           "OPSKIT_EE_BUILD=1 runs it")
def test_ee_build_and_run_a_playbook_inside(tmp_path, docker_engine, pg):  # pylint: disable=unused-argument
    """ansible-builder build on a locally assembled Debian base image, then ansible-runner inside
    the image (as AWX runs a job) dumps and restore-tests a database of the harness's PostgreSQL
    with the EE's own pg_dump, pg_restore and psycopg2."""
    rootfs = str(tmp_path / "rootfs")
    assemble_rootfs(rootfs, installed_closure())
    import_image(rootfs, EE_BASE)
    shutil.rmtree(rootfs)
    tarball = build_collection(tmp_path / "dist")
    name = os.path.basename(tarball)
    definition = tmp_path / "execution-environment.yml"
    definition.write_text(yaml.safe_dump({
        "version": 3,
        "images": {"base_image": {"name": EE_BASE}},
        "options": {"package_manager_path": "/usr/local/bin/pkgmgr", "skip_pip_install": True},
        "dependencies": {
            "ansible_core": {"package_pip": pinned("ansible-core")},
            "ansible_runner": {"package_pip": pinned("ansible-runner")},
            "galaxy": {"collections": [{"name": "collections/" + name, "type": "file"}]},
        },
        "additional_build_files": [{"src": tarball, "dest": "collections"}],
    }))
    tag = "localhost/opskit-runbook-ee:test-%s" % uuid.uuid4().hex[:8]
    run([BUILDER, "build", "--container-runtime", "docker", "-f", str(definition), "-c", str(tmp_path / "context"),
         "-t", tag], cwd=str(tmp_path))
    try:
        db = pg.createdb("ee_%s" % uuid.uuid4().hex[:8])
        pg.psql("CREATE TABLE orders AS SELECT g AS id FROM generate_series(1, 1000) g", db=db)
        pdd = tmp_path / "runner"
        for sub in ("project", "inventory", "env"):
            (pdd / sub).mkdir(parents=True)
        (pdd / "inventory" / "hosts").write_text(
            "localhost ansible_connection=local ansible_python_interpreter=/usr/bin/python3\n")
        conn = {"host": pg.host, "port": pg.port, "user": pg.user, "password": pg.password}
        (pdd / "env" / "extravars").write_text(yaml.safe_dump({"conn": conn, "db": db}))
        where = {"location": "file:///runner/backups", "database": "{{ db }}", "series": "ee"}
        verify = dict(where, state="verified",
                      verify_queries=[{"name": "rows", "query": "SELECT count(*) FROM orders", "expect": "1000"}])
        play = {"hosts": "localhost", "gather_facts": False,
                "module_defaults": {"group/opskit.runbook.postgres": "{{ conn }}"},
                "tasks": [{"name": "dump", "opskit.runbook.pg_backup": where},
                          {"name": "verify", "opskit.runbook.pg_backup": verify}]}
        (pdd / "project" / "backup.yml").write_text(yaml.safe_dump([play]))
        out = run(["docker", "run", "--rm", "--network", "host", "-u", "0", "-v", "%s:/runner" % pdd, tag,
                   "ansible-runner", "run", "/runner", "-p", "backup.yml"])
        assert "ok=2" in out and "failed=0" in out, out[-3000:]
        assert pg.password not in out
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True, check=False)
