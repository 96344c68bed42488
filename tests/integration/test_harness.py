# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The harness itself: every fixture yields a working service, run_playbook captures results."""

from __future__ import annotations

import datetime
import os
import socket
import subprocess
import uuid

import pytest
from harness import faketime_args

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location


def test_pg_runs_sql_and_creates_databases(pg):
    assert pg.psql("SELECT 6 * 7") == "42\n"
    name = pg.createdb("harness_%s" % uuid.uuid4().hex[:8])
    assert pg.psql("SELECT current_database()", db=name) == name + "\n"
    # pg.env is enough for the tests' own client tools: password auth over TCP
    out = subprocess.run([os.path.join(pg.bin_dir, "psql"), "-XAtc", "SHOW listen_addresses", "-d", name],
                         env=dict(os.environ, **pg.env), capture_output=True, text=True, check=True)
    assert out.stdout == "127.0.0.1\n"
    assert (pg.host, pg.user, pg.env["PGPORT"]) == ("127.0.0.1", "postgres", str(pg.port))


def test_pg_requires_the_password(pg):
    env = dict(os.environ, **pg.env)
    env["PGPASSWORD"] = "wrong"
    out = subprocess.run([os.path.join(pg.bin_dir, "psql"), "-XAtc", "SELECT 1"], env=env,
                         capture_output=True, text=True, check=False)
    assert out.returncode != 0 and "password authentication failed" in out.stderr


def test_pg_sql_errors_raise(pg):
    with pytest.raises(RuntimeError, match="no_such_table"):
        pg.psql("SELECT * FROM no_such_table")


def test_s3_bucket_put_get(s3):
    bucket = s3.new_bucket()
    assert bucket != s3.new_bucket()
    s3.client.put_object(Bucket=bucket, Key="a/b.txt", Body=b"hello s3")
    assert s3.client.get_object(Bucket=bucket, Key="a/b.txt")["Body"].read() == b"hello s3"
    assert s3.endpoint_url.startswith("http://127.0.0.1:") and s3.region and s3.access_key and s3.secret_key


def test_docker_runs_the_busybox_image(docker_engine):
    client = docker_engine.client
    out = client.containers.run(docker_engine.busybox_image, ["sh", "-c", "echo hello from busybox; id -un"],
                                remove=True)
    assert out == b"hello from busybox\nroot\n"
    out = client.containers.run(docker_engine.busybox_image, ["sh", "-c", "id -un; touch /tmp/x && echo ok"],
                                user="1000", remove=True)
    assert out == b"opskit\nok\n"
    assert docker_engine.docker_host.startswith(("unix://", "tcp://"))


def test_redis_answers_ping(redis):
    with socket.create_connection((redis.host, redis.port), timeout=5) as sock:
        sock.sendall(b"SET harness 1\r\nGET harness\r\n")
        reply = b""
        while not reply.endswith(b"$1\r\n1\r\n"):
            chunk = sock.recv(64)
            assert chunk, "redis closed the connection after %r" % reply
            reply += chunk
        sock.sendall(b"PING\r\n")
        assert sock.recv(64) == b"+PONG\r\n"
    assert reply == b"+OK\r\n$1\r\n1\r\n"


PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: info
      opskit.runbook.backup_info:
        location: "{{ location }}"
    - name: skipped
      ansible.builtin.debug:
        msg: never
      when: false
    - name: failing
      ansible.builtin.fail:
        msg: "failed on purpose with {{ marker }}"
      ignore_errors: true
    - name: after the failure
      ansible.builtin.command: echo after
"""


def _one_backup(tmp_path):
    location = "file://%s/backups" % tmp_path
    with BackupSession(open_location(location), "harness", "generic") as session:
        with session.artifact("bin") as out:
            out.write(b"harness payload")
        return location, session.publish()


def test_run_playbook_captures_every_result(run_playbook, tmp_path):
    location, manifest = _one_backup(tmp_path)
    res = run_playbook(PLAY, {"location": location, "marker": "m-42"})
    assert res.rc == 0, res.stderr
    assert [(r["_task"], r["_status"], r["_host"]) for r in res.results] == [
        ("info", "ok", "localhost"), ("skipped", "skipped", "localhost"),
        ("failing", "failed", "localhost"), ("after the failure", "ok", "localhost")]
    info = res.task("info")
    assert info["changed"] is False and info["location"] == location
    assert info["series"]["harness"]["count"] == 1
    assert info["series"]["harness"]["newest"]["id"] == manifest["id"]
    assert res.task("failing")["msg"] == "failed on purpose with m-42"
    assert res.task("after the failure")["stdout"] == "after"
    assert "PLAY RECAP" in res.stdout
    with pytest.raises(AssertionError, match="no result for task 'nope'"):
        res.task("nope")


def test_run_playbook_check_mode_and_failures(run_playbook, tmp_path):
    location = _one_backup(tmp_path)[0]
    res = run_playbook(PLAY, {"location": location, "marker": "x"}, check=True)
    assert res.rc == 0
    assert res.task("info")["series"]["harness"]["count"] == 1
    skipped = res.task("after the failure")  # command does not run in check mode
    assert skipped["_status"] == "skipped" and "not in check mode" in skipped["msg"]
    bad = run_playbook(PLAY, {"location": "nowhere://x", "marker": "x"})
    assert bad.rc == 2 and bad.task("info")["_status"] == "failed"
    assert len(bad.results) == 1


def test_run_playbook_from_a_file_with_env(run_playbook, tmp_path):
    path = tmp_path / "play.yml"
    path.write_text("- hosts: localhost\n  gather_facts: false\n  tasks:\n"
                    "    - name: env\n      ansible.builtin.debug:\n        msg: \"{{ lookup('env', 'HARNESS_X') }}\"\n")
    res = run_playbook(str(path), env={"HARNESS_X": "from-env"})
    assert res.task("env")["msg"] == "from-env"


def test_run_playbook_timeout(run_playbook):
    play = "- hosts: localhost\n  gather_facts: false\n  tasks:\n    - ansible.builtin.command: sleep 60\n"
    with pytest.raises(AssertionError, match="did not finish within 3 s"):
        run_playbook(play, timeout=3)


def test_faketime_runs_over_a_killed_wrappers_leftovers_for_its_pid():
    """A SIGKILLed faketime wrapper leaves /dev/shm/sem.faketime_sem_<pid>; the wrapper that gets
    that pid again refused to start ("sem_open: File exists") and the playbook never ran."""
    prefix = faketime_args(datetime.datetime(2100, 3, 11, 12, 0, tzinfo=datetime.timezone.utc))
    plant = 'printf x > "/dev/shm/sem.faketime_sem_$$"; printf x > "/dev/shm/faketime_shm_$$"; exec "$@"'
    proc = subprocess.run(["/bin/sh", "-c", plant, "sh"] + prefix + ["date", "-u", "+%Y-%m-%d"],
                          capture_output=True, text=True, timeout=30, check=False)
    assert (proc.returncode, proc.stdout.strip()) == (0, "2100-03-11"), proc.stderr  # the wrapper removes its files at exit
