# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""backup_info through ansible-playbook against a real directory and a real S3 endpoint."""

from __future__ import annotations

import datetime
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine import catalog
from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

UTC = datetime.timezone.utc
# The fixed clock of the playbooks that read the seeded history (see run_playbook's clock)
NOW = datetime.datetime(2100, 3, 11, 12, 0, 0, tzinfo=UTC)
SECRET = "s3cr3t-Value-never-shown-0123456789"

PLAY = """
- hosts: localhost
  gather_facts: false
  tasks:
    - name: info
      opskit.runbook.backup_info: "{{ info_args }}"
      ignore_errors: true
"""


def _seed(location):
    """Three series: fresh+verified, fresh without verification, and stale."""
    made = {}
    for series, hours, verified in (("db-app", 30, True), ("db-app", 2, False),
                                    ("vol-data", 1, False), ("old-cfg", 50, True)):
        with BackupSession(location, series, "generic",
                           now=NOW - datetime.timedelta(hours=hours)) as session:
            with session.artifact("bin") as out:
                out.write(b"payload of %s" % series.encode())
            manifest = session.publish()
        if verified:
            manifest = catalog.update_verification(location, manifest, "restore", "passed")
        made.setdefault(series, []).insert(0, manifest)
    return made


@pytest.fixture(params=["file", "s3"])
def seeded(request, tmp_path):
    if request.param == "file":
        args = {"location": "file://%s/backups" % tmp_path}
        location = open_location(args["location"])
    else:
        s3 = request.getfixturevalue("s3")
        args = {"location": "s3://%s/prod" % s3.new_bucket(), "endpoint_url": s3.endpoint_url,
                "access_key": s3.access_key, "secret_key": s3.secret_key}
        location = open_location(args["location"], **{k: v for k, v in args.items() if k != "location"})
    return args, _seed(location)


def test_lists_every_series_and_flags_rpo_breach(run_playbook, seeded):
    args, made = seeded
    res = run_playbook(PLAY, {"info_args": dict(args, max_age="26h")}, clock=NOW)
    info = res.task("info")
    assert res.rc == 0 and info["_status"] == "ok" and info["changed"] is False
    assert sorted(info["series"]) == ["db-app", "old-cfg", "vol-data"]
    assert info["stale_series"] == ["old-cfg"]
    app = info["series"]["db-app"]
    assert app["count"] == 2 and app["stale"] is False
    assert app["newest"]["id"] == made["db-app"][0]["id"]
    assert app["newest_verified"]["id"] == made["db-app"][1]["id"]
    assert 30 * 3600 - 5 <= app["newest_verified_age_seconds"] <= 30 * 3600 + 600
    assert app["newest"]["verification"] == "unverified"
    assert info["series"]["vol-data"]["newest_verified"] is None
    assert [b["series"] for b in info["backups"]] == ["db-app", "db-app", "old-cfg", "vol-data"]
    assert info["backups"][0]["sha256"] == made["db-app"][0]["sha256"]


def test_fail_on_stale_fails_with_the_report(run_playbook, seeded):
    args, _made = seeded
    res = run_playbook(PLAY, {"info_args": dict(args, max_age="26h", fail_on_stale=True)}, clock=NOW)
    info = res.task("info")
    assert info["_status"] == "failed"
    assert info["msg"] == "RPO breach: newest backup older than 26h in series old-cfg"
    assert info["stale_series"] == ["old-cfg"] and "db-app" in info["series"]


def test_one_series_in_check_mode(run_playbook, seeded):
    args, made = seeded
    res = run_playbook(PLAY, {"info_args": dict(args, series="vol-data", max_age="2h")}, check=True, clock=NOW)
    info = res.task("info")
    assert info["_status"] == "ok" and info["changed"] is False
    assert list(info["series"]) == ["vol-data"] and info["stale_series"] == []
    assert info["series"]["vol-data"]["newest"]["id"] == made["vol-data"][0]["id"]
    res = run_playbook(PLAY, {"info_args": dict(args, series="nope")}, clock=NOW)
    assert res.task("info")["msg"].startswith("series nope has no backups at ")


def _assert_clean_failure(res, expected):
    info = res.task("info")
    assert info["_status"] == "failed", info
    assert expected in info["msg"], info["msg"]
    assert "\n" not in info["msg"]
    assert "Traceback" not in res.stdout + res.stderr
    assert info.get("exception") in (None, "(traceback unavailable)")  # no Python traceback
    assert SECRET not in res.stdout + res.stderr


BAD_INPUT = [
    ({"location": "ftp://example.com/x"}, "unknown URL scheme 'ftp'"),
    ({"location": "backups/daily"}, "is not a URL"),
    ({"location": "file://backups/daily"}, "file URLs take an absolute path"),
    ({"location": "file:///nonexistent/opskit"}, "location file:///nonexistent/opskit does not exist"),
    ({"location": "file:///etc/hostname"}, "is not a directory"),
    ({"location": "file:///tmp", "max_age": "soon"}, "max_age: cannot parse duration 'soon'"),
    ({"location": "file:///tmp", "series": "../etc"}, "series '../etc' is not valid"),
]

LOOP_PLAY = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    opskit.runbook.backup_info:
      secret_key: "{{ secret }}"
  tasks:
    - name: info
      opskit.runbook.backup_info: "{{ item }}"
      loop: "{{ cases }}"
      ignore_errors: true
"""


def test_bad_input_is_one_line(run_playbook):
    res = run_playbook(LOOP_PLAY, {"cases": [case[0] for case in BAD_INPUT], "secret": SECRET})
    items = res.task("info")["results"]
    assert len(items) == len(BAD_INPUT)
    assert "Traceback" not in res.stdout + res.stderr and SECRET not in res.stdout + res.stderr
    for item, (_args, expected) in zip(items, BAD_INPUT):
        assert item["failed"] is True and expected in item["msg"] and "\n" not in item["msg"], item


def test_missing_bucket(run_playbook, s3):
    args = {"location": "s3://no-such-bucket-opskit/x", "endpoint_url": s3.endpoint_url,
            "access_key": s3.access_key, "secret_key": SECRET}
    _assert_clean_failure(run_playbook(PLAY, {"info_args": args}), "bucket no-such-bucket-opskit does not exist")


def test_unreachable_endpoint(run_playbook):
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    args = {"location": "s3://some-bucket/x", "endpoint_url": "http://127.0.0.1:%d" % port,
            "access_key": "AKIA", "secret_key": SECRET}
    _assert_clean_failure(run_playbook(PLAY, {"info_args": args}), "cannot reach the S3 endpoint")


@pytest.fixture(scope="module")
def auth_s3(tmp_path_factory):
    """A second moto server that enforces IAM authentication, with one valid key pair."""
    import boto3
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, INITIAL_NO_AUTH_ACTION_COUNT="4")
    log = open(tmp_path_factory.mktemp("moto-auth") / "moto.log", "w")
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "moto_server"), "-H", "127.0.0.1",
                             "-p", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    endpoint = "http://127.0.0.1:%d" % port
    try:
        for _attempt in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        iam = boto3.client("iam", endpoint_url=endpoint, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="backup")
        iam.put_user_policy(UserName="backup", PolicyName="all", PolicyDocument=(
            '{"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}'))
        key = iam.create_access_key(UserName="backup")["AccessKey"]
        s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                          aws_access_key_id=key["AccessKeyId"], aws_secret_access_key=key["SecretAccessKey"])
        s3.create_bucket(Bucket="auth-bucket")
        yield endpoint, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        proc.terminate()
        proc.wait()
        log.close()


def test_credentials_are_checked(run_playbook, auth_s3):
    endpoint, access_key, secret_key = auth_s3
    base = {"location": "s3://auth-bucket/x", "endpoint_url": endpoint}
    ok = run_playbook(PLAY, {"info_args": dict(base, access_key=access_key, secret_key=secret_key)})
    assert ok.task("info")["_status"] == "ok" and ok.task("info")["series"] == {}
    _assert_clean_failure(run_playbook(PLAY, {"info_args": dict(base, access_key=access_key, secret_key=SECRET)}),
                          "access denied by the S3 endpoint")
    _assert_clean_failure(run_playbook(PLAY, {"info_args": dict(base, access_key="AKIAWRONG", secret_key=SECRET)}),
                          "access denied by the S3 endpoint")


def test_credentials_from_environment(run_playbook, s3, tmp_path):
    bucket = s3.new_bucket()
    env = {"AWS_ACCESS_KEY_ID": s3.access_key, "AWS_SECRET_ACCESS_KEY": s3.secret_key,
           "AWS_ENDPOINT_URL": s3.endpoint_url}
    res = run_playbook(PLAY, {"info_args": {"location": "s3://%s" % bucket}}, env=env)
    assert res.task("info")["_status"] == "ok" and res.task("info")["location"] == "s3://%s" % bucket


def test_unreadable_directory(run_playbook):
    """Run the module as an unprivileged user (become via su) on a 0700 directory owned by root."""
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        pytest.fail("the test needs the 'nobody' user")
    base = tempfile.mkdtemp(prefix="opskit-unreadable-")  # /tmp/...: reachable by nobody
    os.chmod(base, 0o755)
    locked = os.path.join(base, "locked")
    os.mkdir(locked, 0o700)
    # the venv's interpreter lives under /root, so the unprivileged user runs the system Python
    play = PLAY.replace("      ignore_errors: true", "      ignore_errors: true\n      become: true\n"
                        "      become_method: ansible.builtin.su\n      become_user: nobody\n"
                        "      become_flags: '-s /bin/sh'\n      vars:\n"
                        "        ansible_python_interpreter: /usr/bin/python3")
    res = run_playbook(play, {"info_args": {"location": "file://%s" % locked}},
                       env={"ANSIBLE_SHELL_ALLOW_WORLD_READABLE_TEMP": "true"})
    shutil.rmtree(base)
    _assert_clean_failure(res, "permission denied (cannot list the directory)")


def _location(args):
    return open_location(args["location"], **{k: v for k, v in args.items() if k != "location"})


def test_backup_three_years_ahead_is_an_anomaly_not_fresh(run_playbook, seeded):
    """A host whose clock was 3 years ahead made a backup: it is neither latest nor fresh."""
    args, made = seeded
    location = _location(args)
    with BackupSession(location, "db-app", "generic", now=NOW + datetime.timedelta(days=3 * 365)) as session:
        with session.artifact("bin") as out:
            out.write(b"from the future")
        future = session.publish()
    res = run_playbook(PLAY, {"info_args": dict(args, max_age="1h")}, clock=NOW)
    info = res.task("info")
    assert info["_status"] == "ok", info
    app = info["series"]["db-app"]
    assert app["newest"]["id"] == made["db-app"][0]["id"] and app["count"] == 2
    assert 2 * 3600 - 5 <= app["newest_age_seconds"] <= 2 * 3600 + 600
    assert "db-app" in info["stale_series"]  # the future backup does not hide the RPO breach
    assert [a["id"] for a in info["anomalies"]] == [future["id"]]
    assert "in the future" in info["anomalies"][0]["reason"]
    assert future["id"] not in [b["id"] for b in info["backups"]]
    assert catalog.resolve_backup(location, "db-app", now=NOW)["id"] == made["db-app"][0]["id"]


def _copy_series(location, src, dst):
    for info in location.list_objects(src + "/"):
        location.write_bytes(dst + info.key[len(src):], location.read_bytes(info.key))


def test_odd_manifests_are_anomalies_not_a_traceback(run_playbook, seeded):
    """A renamed (copied) series directory and a manifest with a non-integer version."""
    args, made = seeded
    location = _location(args)
    _copy_series(location, "vol-data", "vol-data-renamed")
    odd = made["db-app"][0]
    key = catalog.manifest_key("db-app", odd["id"])
    location.write_bytes(key, location.read_bytes(key).replace(b'"version": 1', b'"version": "1.0"'))
    res = run_playbook(PLAY, {"info_args": dict(args, max_age="26h")}, clock=NOW)
    info = res.task("info")
    assert info["_status"] == "ok", info
    assert "Traceback" not in res.stdout + res.stderr
    reasons = {(a["series"], a["id"]): a["reason"] for a in info["anomalies"]}
    assert reasons == {
        ("db-app", odd["id"]): "manifest db-app/%s.manifest.json has version '1.0', not an integer" % odd["id"],
        ("vol-data-renamed", made["vol-data"][0]["id"]): (
            "manifest vol-data-renamed/%s.manifest.json describes backup %s of series vol-data (a renamed or"
            " copied series?)" % (made["vol-data"][0]["id"], made["vol-data"][0]["id"])),
    }
    assert info["series"]["db-app"]["count"] == 1 and info["series"]["db-app"]["stale"] is True
    assert info["series"]["vol-data-renamed"]["count"] == 0
    assert info["series"]["vol-data"]["newest"]["id"] == made["vol-data"][0]["id"]
    assert sorted(info["stale_series"]) == ["db-app", "old-cfg", "vol-data-renamed"]


def test_addressing_style_option(run_playbook, s3):
    """The option reaches the client (the URLs it builds: test_engine_logic); a bad value is one line."""
    base = {"location": "s3://%s/x" % s3.new_bucket(), "endpoint_url": s3.endpoint_url,
            "access_key": s3.access_key, "secret_key": SECRET}
    ok = run_playbook(PLAY, {"info_args": dict(base, secret_key=s3.secret_key, addressing_style="path")})
    assert ok.task("info")["_status"] == "ok" and ok.task("info")["series"] == {}
    _assert_clean_failure(run_playbook(PLAY, {"info_args": dict(base, addressing_style="dns")}),
                          "value of addressing_style must be one of: path, virtual, auto")
