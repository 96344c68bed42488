# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""playbooks/schedule.yml and the schedule role through ansible-playbook: systemd timers and the
cron fallback installed into a temporary root (never the host's systemd or cron), checked with
systemd-analyze verify, run for real (the lock, the weekday guard), and removed again.

The runs start a stand-in ansible-playbook (a script that logs its start and end): the command
lines of the units and the cron file are executed as written."""

from __future__ import annotations

import datetime
import os
import re
import shlex
import shutil
import stat
import subprocess
import threading

import pytest

from harness import faketime_args
from roles_fixtures import PLAYBOOKS, playbook

UNITS = ["opskit-runbook-%s.%s" % (name, kind) for name in ("daily", "weekly", "monthly", "dr_drill")
         for kind in ("service", "timer")]
STUB = """#!/bin/sh
echo "start $$ $*" >> "$OPSKIT_STUB_LOG"
sleep 0.5
echo "end $$" >> "$OPSKIT_STUB_LOG"
"""


def _stub(tmp_path):
    path = tmp_path / "bin" / "ansible-playbook"
    path.parent.mkdir()
    path.write_text(STUB)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _role(name, **variables):
    return {"name": name, "ansible.builtin.include_role": {"name": "opskit.runbook.schedule"}, "vars": variables}


def _keep(name):
    return {"name": "keep " + name, "ansible.builtin.set_fact": {name: "{{ schedule_result }}"}}


def _exec_start(unit):
    line = next(text for text in unit.splitlines() if text.startswith("ExecStart="))
    return [a.replace("%%", "%").replace("$$", "$") for a in shlex.split(line[len("ExecStart="):])]


def _cron_lines(text):
    return {re.match(r"^# runbook (\S+):", comment).group(1): line
            for comment, line in zip(text.splitlines(), text.splitlines()[1:]) if re.match(r"^# runbook \S+: ", comment)}


def _run_cron_line(line, env, clock=None):
    """The command of a cron.d line (after five time fields and the user), as cron's /bin/sh runs it."""
    command = line.split(None, 6)[6].replace("\\%", "%")
    prefix = faketime_args(clock) if clock else []
    return subprocess.run(prefix + ["/bin/sh", "-c", command], env=env, capture_output=True, text=True, timeout=60, check=False)


@pytest.fixture(scope="module")
def scheduled(run_playbook, tmp_path_factory):
    """One playbook run for the module: timers into a temporary root (twice: the second changes
    nothing), the cron fallback into another, and a unit that systemd-analyze refuses."""
    tmp_path = tmp_path_factory.mktemp("schedule")
    stub = _stub(tmp_path)
    common = {"schedule_ansible_playbook": str(stub), "schedule_project_dir": str(tmp_path),
              "schedule_playbook_dir": PLAYBOOKS, "schedule_inventory": str(tmp_path / "inventory.yml"),
              "schedule_lock_file": str(tmp_path / "runbooks.lock"), "schedule_lock_wait": 60,
              "schedule_environment": {"OPSKIT_REPORT_DIR": str(tmp_path / "reports 100%")}}
    units, cron = tmp_path / "root" / "etc/systemd/system", tmp_path / "root" / "etc/cron.d"
    bad_job = [{"name": "broken", "playbook": "daily.yml", "on_calendar": "Sunday at three", "cron": "0 3 * * 0"}]
    tasks = [
        _role("timers", schedule_backend="systemd", schedule_unit_dir=str(units), **common), _keep("timers"),
        _role("timers again", schedule_backend="systemd", schedule_unit_dir=str(units), **common),
        _role("cron", schedule_backend="cron", schedule_cron_dir=str(cron), schedule_unit_dir=str(tmp_path / "none"), **common),
        _keep("cron"),
        {"name": "a unit systemd-analyze refuses", "block": [
            _role("broken", schedule_backend="systemd", schedule_unit_dir=str(tmp_path / "bad"), schedule_jobs=bad_job, **common)],
         "rescue": [{"name": "caught", "ansible.builtin.set_fact": {"caught": "{{ ansible_failed_result }}"}}]},
        {"name": "results", "ansible.builtin.debug": {"msg": {
            "timers": "{{ timers }}", "cron": "{{ cron }}", "caught": "{{ caught | default('NOT CAUGHT') }}"}}},
    ]
    run = run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": tasks}])
    assert run.rc == 0, run.stdout[-3000:]
    env = dict(os.environ, OPSKIT_STUB_LOG=str(tmp_path / "stub.log"))
    return run, run.task("results")["msg"], units, cron, env, tmp_path


def test_systemd_timers_at_the_seeds_times_verified_and_idempotent(scheduled):
    run, results, units, _cron, _env, tmp_path = scheduled
    assert results["timers"]["backend"] == "systemd" and results["timers"]["scheduled"] == ["daily", "weekly", "monthly", "dr_drill"]
    assert sorted(os.listdir(units)) == sorted(UNITS + ["timers.target.wants"])
    wants = units / "timers.target.wants"
    assert sorted(os.listdir(wants)) == sorted(u for u in UNITS if u.endswith(".timer"))
    assert os.readlink(wants / "opskit-runbook-daily.timer") == "../opskit-runbook-daily.timer"
    calendars = {name: re.search(r"^OnCalendar=(.*)$", (units / ("opskit-runbook-%s.timer" % name)).read_text(), re.M).group(1)
                 for name in ("daily", "weekly", "monthly", "dr_drill")}
    assert calendars == {"daily": "*-*-* 02:00:00 UTC", "weekly": "Sun *-*-* 03:00:00 UTC",
                         "monthly": "Sat *-*-15..21 02:30:00 UTC", "dr_drill": "Sun *-01,04,07,10-01..07 05:00:00 UTC"}
    daily = (units / "opskit-runbook-daily.service").read_text()
    assert "Type=oneshot" in daily and "WorkingDirectory=%s" % tmp_path in daily
    assert 'Environment="OPSKIT_REPORT_DIR=%s/reports 100%%%%"' % tmp_path in daily  # % doubled for systemd
    argv = _exec_start(daily)
    assert argv[:6] == ["/usr/bin/flock", "--wait", "60", "--conflict-exit-code", "75", str(tmp_path / "runbooks.lock")]
    assert argv[6:] == [str(tmp_path / "bin" / "ansible-playbook"), "-i", str(tmp_path / "inventory.yml"),
                        os.path.join(PLAYBOOKS, "daily.yml")]
    # a second run changes nothing
    again = [r["changed"] for r in run.results if r["_task"] in ("Systemd | a service per runbook", "Systemd | a timer per runbook")
             and r["results"][0]["dest"].startswith(str(units))]
    assert again == [True, True, False, False]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None,
                    reason="systemd-analyze is not installed: only the systemd-analyze verify check is skipped")
def test_systemd_analyze_verify_passes_the_units_and_refuses_a_broken_one(scheduled):
    run, results, units, _cron, _env, _tmp = scheduled
    verified = [r for r in run.results if r["_task"] == "Verify | systemd-analyze verify the units"]
    assert verified[0]["_status"] == "ok" and verified[0]["rc"] == 0
    assert str(units / "opskit-runbook-monthly.timer") in verified[0]["cmd"]
    caught = results["caught"]
    assert caught != "NOT CAUGHT" and caught["rc"] != 0
    assert "Failed to parse calendar specification" in caught["stderr"], caught


def test_the_lock_serializes_two_runs_started_at_once(scheduled):
    _run, _results, units, _cron, env, tmp_path = scheduled
    env = dict(env, OPSKIT_STUB_LOG=str(tmp_path / "stub-lock.log"))
    argv = _exec_start((units / "opskit-runbook-daily.service").read_text())
    other = _exec_start((units / "opskit-runbook-weekly.service").read_text())
    threads = [threading.Thread(target=subprocess.run, args=(a,), kwargs={"env": env, "check": True, "timeout": 60})
               for a in (argv, other)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    lines = (tmp_path / "stub-lock.log").read_text().splitlines()
    assert [line.split()[0] for line in lines] == ["start", "end", "start", "end"], lines  # never two runs at once
    assert sorted(line.rsplit("/", 1)[-1] for line in lines if line.startswith("start")) == ["daily.yml", "weekly.yml"]


def test_cron_fallback_at_the_seeds_times_with_the_weekday_guard(scheduled):
    _run, results, _units, cron, env, tmp_path = scheduled
    assert results["cron"]["backend"] == "cron" and results["cron"]["files"] == [str(cron / "opskit-runbook")]
    text = (cron / "opskit-runbook").read_text()
    assert "CRON_TZ=UTC" in text
    lines = _cron_lines(text)
    assert {name: " ".join(line.split()[:6]) for name, line in lines.items()} == {
        "daily": "0 2 * * * root", "weekly": "0 3 * * 0 root", "monthly": "30 2 15-21 * * root", "dr_drill": "0 5 1-7 1,4,7,10 * root"}
    assert "%" not in text.replace("\\%", "")  # cron would cut the command at a bare %
    log = tmp_path / "stub-cron.log"
    env = dict(env, OPSKIT_STUB_LOG=str(log))
    # the monthly line runs on the third Saturday, not on the Friday before it (cron would start it on both)
    friday = _run_cron_line(lines["monthly"], env, clock=datetime.datetime(2026, 12, 18, 2, 30, tzinfo=datetime.timezone.utc))
    assert friday.returncode != 0 and not log.exists()
    saturday = _run_cron_line(lines["monthly"], env, clock=datetime.datetime(2026, 12, 19, 2, 30, tzinfo=datetime.timezone.utc))
    assert saturday.returncode == 0, saturday.stderr
    started = log.read_text().splitlines()[0]
    assert started.endswith(" -i %s %s" % (tmp_path / "inventory.yml", os.path.join(PLAYBOOKS, "monthly.yml")))
    daily = _run_cron_line(lines["daily"], env)
    assert daily.returncode == 0, daily.stderr


def test_state_absent_removes_the_timers_and_the_cron_file(run_playbook, scheduled, tmp_path):
    _run, _results, units, cron, _env, _tmp = scheduled
    root = tmp_path / "copy"
    shutil.copytree(units, root / "units", symlinks=True)
    shutil.copytree(cron, root / "cron")
    (root / "units" / "unrelated.service").write_text("[Service]\nExecStart=/bin/true\n")
    run = run_playbook(playbook("schedule"), {"opskit_schedule_state": "absent", "schedule_backend": "systemd",
                                              "schedule_unit_dir": str(root / "units"), "schedule_cron_dir": str(root / "cron")})
    assert run.rc == 0, run.stdout[-3000:]
    result = run.task("Schedule | what is scheduled")["msg"]
    assert result["scheduled"] == [] and result["removed"] == ["daily", "weekly", "monthly", "dr_drill"]
    assert sorted(os.listdir(root / "units")) == ["timers.target.wants", "unrelated.service"]
    assert os.listdir(root / "units" / "timers.target.wants") == [] and os.listdir(root / "cron") == []
