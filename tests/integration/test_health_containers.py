# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""health_check's container resources (docker_container) and ``logs`` through ansible-playbook,
against real containers of the harness's Docker Engine and busybox image: one that holds more
than 80 % of its memory limit, one that spins a CPU, one OOM-killed, one in a restart loop, one
that logs ERROR lines with secrets in them, and a two-container Compose service (by its labels).
"""

from __future__ import annotations

import json
import uuid

import docker.errors
import pytest

from health_fixtures import assert_no_crash, expecter, wait_for

HEADER = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/opskit.runbook.docker:
      docker_host: "{{ docker_host }}"
  tasks:
"""
SECRETS = ("hunter2", "abcdefgh12345", "eyJabc.def.ghi", "pw-in-url", "zz-query-token")   # masked by default
LOGGER = ("echo 'INFO start'; echo 'ERROR db failed password=hunter2 token: abcdefgh12345'; "
          "echo 'FATAL Authorization: Bearer eyJabc.def.ghi'; echo 'WARN slow'; echo 'panic: runtime error'; "
          # a second later on stderr: the engine orders the two streams by time stamp only
          "sleep 1; echo 'ERROR fetch http://user:pw-in-url@h/x?token=zz-query-token code=s3cr3t-extra' >&2; sleep 300")
HOG = "BEGIN{t=\"x\"; while(length(t)<1048576) t=t t; for(i=0;i<52;i++) a[i]=t i; system(\"sleep 300\")}"


@pytest.fixture(scope="module")
def workload(docker_engine):
    client, image = docker_engine.client, docker_engine.busybox_image
    prefix, created = "opskit-hc17-%s" % uuid.uuid4().hex[:8], []

    def run(suffix, command, **kwargs):
        container = client.containers.run(image, command, name="%s-%s" % (prefix, suffix), detach=True, **kwargs)
        created.append(container)
        return container

    def attrs(container):
        container.reload()
        return container.attrs
    try:
        hog = run("hog", ["awk", HOG], mem_limit="64m", memswap_limit="64m")
        run("spin", ["sh", "-c", "while :; do :; done"], mem_limit="32m")
        oom = run("oom", ["awk", "BEGIN{s=\"x\"; while(1) s=s s}"], mem_limit="16m", memswap_limit="16m")
        loop = run("loop", ["sh", "-c", "echo ERROR crash; exit 1"], restart_policy={"Name": "always"})
        logger = run("logger", ["sh", "-c", LOGGER])
        for number in (1, 2):
            run("web%d" % number, ["sleep", "300"],
                labels={"com.docker.compose.service": "web", "com.docker.compose.project": prefix})
        # Engine 20.10 on cgroup v1 sometimes records the exit (137) before the kernel's OOM event,
        # and then never flags OOMKilled: run the allocation again until the engine says OOMKilled.
        for _attempt in range(3):
            wait_for(lambda: attrs(oom)["State"]["Status"] == "exited", "the OOM kill", timeout=60)
            if attrs(oom)["State"]["OOMKilled"]:
                break
            oom.start()
        assert attrs(oom)["State"]["OOMKilled"], "the engine never flagged the OOM kill of the oom container"
        wait_for(lambda: attrs(loop)["RestartCount"] >= 2, "two restarts", timeout=60)
        wait_for(lambda: b"s3cr3t-extra" in logger.logs(), "the logger's lines")
        wait_for(lambda: (hog.stats(stream=False)["memory_stats"].get("usage") or 0) > 52 * 1048576, "the hog's memory")
        yield prefix
    finally:
        for container in created:
            try:
                container.remove(force=True)
            except (docker.errors.DockerException, OSError):
                pass


def test_container_resources_and_logs(run_playbook, docker_engine, workload):
    play = HEADER + """
    - name: containers
      opskit.runbook.health_check:
        fail_on: never
        checks:
          - {name: hog, type: docker_container, container: "{{ p }}-hog",
             thresholds: {memory_pct: {warning: 80, critical: 95}}}
          - {name: hog_roomy, type: docker_container, container: "{{ p }}-hog", thresholds: {memory_pct: {warning: 90}}}
          - {name: spin, type: docker_container, container: "{{ p }}-spin", cpu_window: 0.5,      # at least 1 s: the daemon's rate
             thresholds: {cpu_pct: {warning: 1}}}
          - {name: oom, type: docker_container, container: "{{ p }}-oom", thresholds: {oom_killed: {critical: 0}}}
          - {name: loop, type: docker_container, container: "{{ p }}-loop", thresholds: {restart_count: {warning: 0}}}
          - {name: web, type: docker_container, compose_service: web, compose_project: "{{ p }}", resources: true,
             cpu_window: 0, thresholds: {containers: {critical: "2:2"}}}
          - {name: no_service, type: docker_container, compose_service: nothing, compose_project: "{{ p }}"}
          - {name: logs_default, type: logs, container: "{{ p }}-logger", critical: 3}
          - {name: logs_tail, type: logs, container: "{{ p }}-logger", tail: 2, mask: ["code=\\\\S+"], warning: 1}
          - {name: logs_custom, type: logs, container: "{{ p }}-logger", patterns: [warn], ignore_case: true,
             since: 1h, excerpt: 0}
          - {name: logs_compose, type: logs, compose_service: web, compose_project: "{{ p }}"}
          - {name: logs_loop, type: logs, container: "{{ p }}-loop", thresholds: {matches: {critical: 1}}}
          - {name: logs_missing, type: logs, container: "{{ p }}-missing"}
      register: report
    - name: bad pattern
      opskit.runbook.health_check:
        checks: [{name: bad, type: logs, container: x, patterns: ["ERROR("]}]
      ignore_errors: true
"""
    run = run_playbook(play, extra_vars={"docker_host": docker_engine.docker_host, "p": workload})
    assert_no_crash(run)
    everything = run.stdout + run.stderr + json.dumps(run.results)
    for secret in SECRETS:
        assert secret not in everything, secret
    expect = expecter(run.task("containers")["checks"])

    hog = expect("hog", "WARNING", "of its limit", "memory_pct (", "> 80 (warning)")
    assert 80 < hog["measures"]["memory_pct"] < 95 and hog["measures"]["memory_limit_bytes"] == 64 * 1048576
    assert hog["details"]["memory_limit"] == "container" and ";80;95;0;100" in hog["perfdata"]
    expect("hog_roomy", "OK")
    spin = expect("spin", "WARNING", "CPU ", "cpu_pct (")
    assert spin["measures"]["cpu_pct"] > 1
    oom = expect("oom", "CRITICAL", "is exited (exit code 137, OOMKilled)", "oom_killed (1) > 0 (critical)")
    assert oom["measures"]["oom_killed"] == 1 and "memory_pct" not in oom["measures"]
    loop = expect("loop", "WARNING", "restart_count (")
    assert loop["measures"]["restart_count"] >= 2
    web = expect("web", "OK")
    assert web["measures"]["containers"] == 2 and web["measures"]["running"] == 1 and "memory_pct" in web["measures"]
    assert sorted(c["name"] for c in web["details"]["containers"]) == ["%s-web1" % workload, "%s-web2" % workload]
    expect("no_service", "CRITICAL", "no container of compose service nothing in project %s" % workload)
    logs = expect("logs_default", "CRITICAL", "4 of 6 lines (all lines) match ERROR|FATAL|panic|Traceback", "matches (4) > 3")
    assert logs["measures"] == {"matches": 4, "lines": 6, "containers": 1}
    excerpt = logs["details"]["excerpt"]
    # stdout and stderr lines: their order in the log is the engine's, not the order they were written in
    assert len(excerpt) == 4 and "ERROR db failed password=*** token: ***" in excerpt
    shown = " | ".join(excerpt)
    assert "FATAL Authorization: Bearer ***" in shown and "http://***@h/x?token=***" in shown
    assert logs["details"]["matches_by_pattern"] == {"ERROR": 2, "FATAL": 1, "panic": 1, "Traceback": 0}
    tail = expect("logs_tail", "WARNING", "2 of 2 lines (last 2 lines)", "matches (2) > 1 (warning)")
    assert tail["details"]["excerpt"][-1].endswith("***") and "s3cr3t-extra" not in json.dumps(tail)     # the check's mask
    assert "code=s3cr3t-extra" in shown                                                                # no default mask
    custom = expect("logs_custom", "OK", "1 of 6 lines (since 1h) match warn")
    assert custom["details"]["excerpt"] == []
    expect("logs_compose", "OK", "0 of 0 lines")
    loop_logs = expect("logs_loop", "CRITICAL", "matches (")
    assert loop_logs["measures"]["matches"] >= 2
    expect("logs_missing", "CRITICAL", "not found")
    bad = run.task("bad pattern")
    assert bad["_status"] == "failed"
    assert bad["msg"].startswith("check 'bad' (checks[0]): patterns[0]: bad regular expression 'ERROR(': missing ),")
