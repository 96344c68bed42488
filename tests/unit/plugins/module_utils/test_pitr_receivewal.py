# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain logic of ``opskit-wal receive``: settings, pg_receivewal's arguments (no secret among
them), which files are pushed, the passfile, and the pushes of a directory into a real file://
location (the streaming itself is tested against a real server in tests/integration)."""

from __future__ import annotations

import io
import os
import stat

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import receivewal as rw
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import wal
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import wal_cli
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

SEG1, SEG2 = "000000010000000000000003", "000000010000000000000004"


def conf(tmp_path, **receive):
    pg = {"host": "db", "port": 5433, "user": "u", "password": "s3:cr\\et"}
    receive = dict(dict(directory=str(tmp_path / "recv"), pg=pg), **receive)
    return rw.settings({"location": "file:///x", "series": "s", "compression": "gzip", "receive": receive})


def test_settings_defaults_and_argv(tmp_path):
    c = conf(tmp_path)
    assert (c["slot"], c["synchronous"], c["application_name"]) == ("opskit_wal", False, "opskit_wal_receive")
    argv = rw.receivewal_argv(c)
    assert argv[:3] == ["pg_receivewal", "--slot", "opskit_wal"] and "--no-loop" in argv and "--synchronous" not in argv
    assert rw.receivewal_argv(dict(c, synchronous=True, bin_dir="/b"))[0] == "/b/pg_receivewal"
    assert "--synchronous" in rw.receivewal_argv(dict(c, synchronous=True))
    assert rw.receivewal_argv(c, create_slot=True)[-2:] == ["--create-slot", "--if-not-exists"]
    assert not [a for a in rw.receivewal_argv(c) if "s3" in a or "db" == a]  # no secret, no connection on it


@pytest.mark.parametrize("receive, needle", [(None, "receive.directory"), ({"directory": ""}, "receive.directory"),
                                             ({"directory": "/d", "slot": "Bad-Slot"}, "not a slot name"),
                                             ({"directory": "/d", "pg": "x"}, "receive.pg")])
def test_bad_settings(receive, needle):
    with pytest.raises(ConfigError, match=needle):
        rw.settings({"receive": receive} if receive is not None else {})


def test_finished_and_partial_files():
    names = [SEG2, "00000002.history", SEG1, SEG2 + ".partial", ".opskit-pgpass", "junk", "00000001.history.tmp"]
    assert rw.finished_files(names) == ["00000002.history", SEG1, SEG2]
    assert rw.partial_files(names) == [SEG2 + ".partial"]


def test_passfile_and_environment(tmp_path, monkeypatch):
    c = conf(tmp_path)
    os.makedirs(c["directory"])
    path = rw.passfile(c)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert open(path).read() == "*:*:*:*:s3\\:cr\\\\et\n"
    monkeypatch.setenv("PGPASSWORD", "leak")
    env = rw.environment(c, path)
    assert "PGPASSWORD" not in env and env["PGPASSFILE"] == path and env["PGPORT"] == "5433"
    assert env["PGAPPNAME"] == "opskit_wal_receive"
    loose = tmp_path / "loose"
    loose.write_text("x")
    loose.chmod(0o644)
    with pytest.raises(ConfigError, match="0600"):
        rw.passfile(dict(c, pg={"passfile": str(loose)}))


def test_push_finished_removes_and_partial_stays(tmp_path):
    c = conf(tmp_path)
    os.makedirs(c["directory"])
    for name, byte in ((SEG1, b"a"), (SEG2, b"b"), ("000000010000000000000005.partial", b"c")):
        (tmp_path / "recv" / name).write_bytes(byte * 1024)
    location = open_location("file://" + str(tmp_path / "store"))
    err = io.StringIO()
    receiver = rw.Receiver(location, "s", c, err)
    assert receiver.push_finished() == [SEG1, SEG2]
    assert sorted(os.listdir(c["directory"])) == ["000000010000000000000005.partial"]
    receiver.push_partial()
    (tmp_path / "recv" / "000000010000000000000005.partial").write_bytes(b"d" * 1024)
    receiver.push_partial()  # other content under the same name: said, not overwritten
    assert "archived already" in err.getvalue()
    index = wal.wal_index(location, "s")["00000001"]
    assert sorted(index) == [SEG1, SEG2, "000000010000000000000005.partial"]
    (tmp_path / "recv" / SEG1).write_bytes(b"z" * 1024)  # a different SEG1: refused, kept to retry
    assert receiver.push_finished() == [] and (tmp_path / "recv" / SEG1).exists()
    assert "kept in" in err.getvalue()


def test_cli_usage():
    err = io.StringIO()
    assert wal_cli.run(["--config", "/nonexistent", "receive", "extra"], err) == wal_cli.EXIT_RETRY
    assert "receive" in err.getvalue()
