# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""rollout's compose file planning (_rollout/compose.py) and start-first blockers: plain logic."""

from __future__ import annotations

import os

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._rollout import compose
from ansible_collections.opskit.runbook.plugins.module_utils._rollout.docker import start_first_blocker

FILE = """\
name: shop
services:
  proxy:
    image: nginx:1.25
  "web":
    build: .
    image: %s   # the app
    environment:
      image: not-this
  worker:
    image: 'repo/worker:1'
"""


@pytest.mark.parametrize("value, running, new, expect", [
    ("repo/web:1", "repo/web:1", "repo/web:2", "    image: repo/web:2   # the app"),
    ('"repo/web:1"', "repo/web:1", "repo/web:2", '    image: "repo/web:2"   # the app'),
    ("repo/web:2", "repo/web:1", "repo/web:2", None),           # already says the new one
])
def test_literal_image_line_is_rewritten(value, running, new, expect):
    edit = compose.plan_edit("/p/compose.yaml", FILE % value, "web", running, new)
    assert (edit and edit["text"]) == expect
    if edit:
        assert edit["line"] == 6 and edit["was"] == "repo/web:1"


def test_a_third_tag_is_refused():
    with pytest.raises(ConfigError, match="pins image repo/web:0.9 for service web, but repo/web:1 runs"):
        compose.plan_edit("/p/compose.yaml", FILE % "repo/web:0.9", "web", "repo/web:1", "repo/web:2")


def test_service_without_image_and_nested_keys():
    assert compose.find_image(FILE % "x:1", "worker")[1:] == ("repo/worker:1", "'")
    assert compose.find_image(FILE % "x:1", "nope") is None
    with pytest.raises(compose.NotHere, match="no image: for service db"):
        compose.plan_edit("/p/c.yaml", FILE % "x:1" + "  db:\n    build: ./db\n", "db", "a", "b")


@pytest.mark.parametrize("field, env, expect_line, expect_text", [
    ("${WEB_IMAGE}", "# pinned\nWEB_IMAGE=repo/web:1\n", 1, "WEB_IMAGE=repo/web:2"),
    ("${WEB_IMAGE:-repo/web:1}", "OTHER=1\n", None, "WEB_IMAGE=repo/web:2"),   # only defaulted: added
    ("$WEB_IMAGE", 'WEB_IMAGE="repo/web:1"\n', 0, "WEB_IMAGE=repo/web:2"),
    ("${WEB_IMAGE}", None, None, "WEB_IMAGE=repo/web:2"),                    # set in the shell: recorded in .env
])
def test_variable_goes_to_the_env_file(field, env, expect_line, expect_text):
    edit = compose.plan_edit("/p/compose.yaml", FILE % field, "web", "repo/web:1", "repo/web:2",
                             "/p/.env", env)
    assert (edit["path"], edit["line"], edit["text"]) == ("/p/.env", expect_line, expect_text)


def test_variable_naming_a_third_tag_is_refused():
    with pytest.raises(ConfigError, match="which gives repo/web:0.9, but repo/web:1 runs"):
        compose.plan_edit("/p/c.yaml", FILE % "${WEB_IMAGE}", "web", "repo/web:1", "repo/web:2",
                          "/p/.env", "WEB_IMAGE=repo/web:0.9\n")


def test_plan_project_and_apply(tmp_path):
    base = tmp_path / "compose.yaml"
    override = tmp_path / "compose.override.yaml"
    base.write_text(FILE % "repo/web:1")
    override.write_text("services:\n  web:\n    image: ${TAG:-repo/web:1}\n")
    os.chmod(base, 0o640)
    labels = {compose.WORKING_DIR: str(tmp_path), compose.CONFIG_FILES: "compose.yaml,%s" % override}
    edit = compose.plan_project(labels, "web", "repo/web:1", "repo/web:2")
    assert edit["path"] == str(tmp_path / ".env")         # the override file wins, it reads TAG
    compose.apply_edit(edit)
    assert (tmp_path / ".env").read_text() == "TAG=repo/web:2\n"
    labels[compose.CONFIG_FILES] = str(base)
    edit = compose.plan_project(labels, "web", "repo/web:1", "repo/web:2")
    compose.apply_edit(edit)
    assert (FILE % "repo/web:2") == base.read_text() and oct(base.stat().st_mode & 0o777) == "0o640"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".opskit-")]
    with pytest.raises(compose.NotHere, match="no .*config_files label"):
        compose.plan_project({}, "web", "a", "b")
    with pytest.raises(compose.NotHere, match="does not exist on this host"):
        compose.plan_project({compose.CONFIG_FILES: "/nonexistent/compose.yaml"}, "web", "a", "b")


@pytest.mark.parametrize("host, nets, expect", [
    ({"PortBindings": {"8080/tcp": [{"HostIp": "127.0.0.1", "HostPort": "8080"}]}}, {}, "host port 8080"),
    ({"PortBindings": {"8080/tcp": [{"HostIp": "", "HostPort": ""}]}}, {}, None),    # a random port is free
    ({"NetworkMode": "host"}, {}, "network mode host"),
    ({"NetworkMode": "shop"}, {"shop": {"IPAMConfig": {"IPv4Address": "172.30.0.9"}}}, "static address"),
    ({"NetworkMode": "shop"}, {"shop": {"Aliases": ["web"]}}, None),
])
def test_start_first_blockers(host, nets, expect):
    why = start_first_blocker({"HostConfig": host, "NetworkSettings": {"Networks": nets}})
    assert (why is None) if expect is None else (expect in why), why
