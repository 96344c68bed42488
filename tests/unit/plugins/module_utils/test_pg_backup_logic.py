# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Pure logic of pg_backup: series, option checks, argument lists, quoting, parsing, plans, checks."""

from __future__ import annotations

import hashlib
import io
import signal
import sys

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._postgres import dump as pd
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import options as po
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import restore as pr
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import server as ps
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import verify as pv
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import tools as pt
from ansible_collections.opskit.runbook.plugins.module_utils._errors import (
    ConfigError, NotFoundError, ServiceError)


class FakeTools:
    def __init__(self, bin_dir=None):
        self.bin_dir = bin_dir

    def path(self, tool):
        return "%s/%s" % (self.bin_dir, tool) if self.bin_dir else tool


@pytest.mark.parametrize("template, host, database, container, expected", [
    (None, "db1.internal", "app", None, "db1.internal-app"),
    (None, None, "app", None, "db7.example.net-app"),
    (None, "/var/run/postgresql", "app", None, "db7.example.net-app"),
    (None, None, "app", "wakedock_postgres", "wakedock_postgres-app"),
    (None, "127.0.0.1", "my db/ü", None, "127.0.0.1-my-db-%s" % hashlib.sha256("127.0.0.1-my db/ü".encode()).hexdigest()[:8]),
    ("nightly-{database}", "h", "app", None, "nightly-app"),
    ("fixed", "h", "app", None, "fixed"),
])
def test_series_for(template, host, database, container, expected, monkeypatch):
    monkeypatch.setattr(po.socket, "gethostname", lambda: "db7.example.net")
    assert po.series_for(template, host, database, container) == expected


def test_local_series_differ_between_hosts(monkeypatch):
    names = set()
    for host in ("db1", "db2"):
        monkeypatch.setattr(po.socket, "gethostname", lambda host=host: host)
        names.add(po.series_for(None, "/var/run/postgresql", "app"))
    assert names == {"db1-app", "db2-app"}


@pytest.mark.parametrize("texts", [
    ("app db", "app-db", "app/db", "app--db", "app_db", "app\ndb", "app\n", "app"),
    ("h-ü", "h-é", "h-", "h"),
    ("x" * 200, "x" * 201, "x" * 128),
    ("///", "", "-", "backup"),
])
def test_sanitize_series_keeps_distinct_texts_distinct(texts):
    names = [po.sanitize_series(text) for text in texts]
    assert len(set(names)) == len(texts), names
    for name in names:
        assert po.validate_series(name) == name


@pytest.mark.parametrize("series", ["app\n", "app db", "-app", "x" * 129])
def test_validate_series_refuses(series):
    with pytest.raises(ConfigError, match="is not valid"):
        po.validate_series(series)


@pytest.mark.parametrize("template, message", [
    ("{db}", "only {host} and {database}"),
    ("bad name", "is not valid"),
])
def test_series_for_rejects(template, message):
    with pytest.raises(ConfigError, match=message):
        po.series_for(template, "h", "app")


BASE = dict(database=["app"], format="custom", jobs=1, series=None, clean=False, force=False,
            single_transaction=False)


@pytest.mark.parametrize("state, changes, message", [
    ("dumped", dict(database=[]), "database is required"),
    ("dumped", dict(database=["a", "b", "a"]), "lists a more than once"),
    ("dumped", dict(database=["a", "b"], series="fixed"), "must contain {database}"),
    ("dumped", dict(jobs=2), "jobs > 1 needs format=directory"),
    ("dumped", dict(jobs=0), "jobs must be an integer from 1 to 64, got 0"),
    ("dumped", dict(jobs=-3), "jobs must be an integer from 1 to 64, got -3"),
    ("restored", dict(jobs=65), "jobs must be an integer from 1 to 64, got 65"),
    ("restored", dict(jobs=10 ** 9), "jobs must be an integer from 1 to 64"),
    ("verified", dict(connect_timeout=-1), "connect_timeout must be a number of seconds >= 0"),
    ("dumped", dict(connect_timeout=10 ** 12), "connect_timeout must be a number of seconds"),
    ("dumped", dict(format="directory", docker_container="db"), "not supported with docker_container"),
    ("restored", dict(database=["a", "b"]), "takes one database"),
    ("restored", dict(database=[]), "needs database or series"),
    ("restored", dict(clean=True, force=True), "exclude each other"),
    ("verified", dict(single_transaction=True, jobs=2), "single_transaction cannot"),
])
def test_check_options_rejects(state, changes, message):
    with pytest.raises(ConfigError, match=message):
        po.check_options(state, dict(BASE, **changes))


@pytest.mark.parametrize("state, changes", [
    ("dumped", {}),
    ("dumped", dict(database=["a", "b"], series="n-{database}")),
    ("dumped", dict(format="directory", jobs=4)),
    ("restored", dict(database=[], series="fixed")),
    ("restored", dict(jobs=4)),
])
def test_check_options_accepts(state, changes):
    po.check_options(state, dict(BASE, **changes))


@pytest.mark.parametrize("value, expected", [
    ("app", "'app'"),
    ("it's", "'it\\'s'"),
    ("back\\slash", "'back\\\\slash'"),
    ("host=evil port=1", "'host=evil port=1'"),
])
def test_conninfo_quote(value, expected):
    assert pt.conninfo_quote(value) == expected


@pytest.mark.parametrize("value, expected", [
    ("app", "'app'"),
    ("o'brien", "'o''brien'"),
    ("a\\b", "E'a\\\\b'"),
])
def test_quote_literal(value, expected):
    assert pt.quote_literal(value) == expected


def test_quote_ident():
    assert pt.quote_ident('we"ird') == '"we""ird"'


@pytest.mark.parametrize("fmt, jobs, path, expected", [
    ("custom", 1, None, ["pg_dump", "--no-password", "--dbname=dbname='app'", "--format=custom", "--compress=0"]),
    ("plain", 1, None, ["pg_dump", "--no-password", "--dbname=dbname='app'", "--format=plain"]),
    ("directory", 3, "/t/d", ["pg_dump", "--no-password", "--dbname=dbname='app'", "--format=directory",
                              "--compress=0", "--jobs=3", "--file=/t/d"]),
])
def test_dump_argv(fmt, jobs, path, expected):
    assert pd.dump_argv(FakeTools(), fmt, "app", jobs, path) == expected


def test_dump_argv_unknown_format():
    with pytest.raises(ConfigError, match="format 'tar'"):
        pd.dump_argv(FakeTools(), "tar", "app")


@pytest.mark.parametrize("fmt, kwargs, expected", [
    ("plain", {}, ["/b/psql", "--no-password", "--no-psqlrc", "--quiet", "--set=ON_ERROR_STOP=1",
                   "--dbname=dbname='t'", "--file=-"]),
    ("plain", dict(single_transaction=True), ["/b/psql", "--no-password", "--no-psqlrc", "--quiet",
                                              "--set=ON_ERROR_STOP=1", "--dbname=dbname='t'",
                                              "--single-transaction", "--file=-"]),
    ("custom", {}, ["/b/pg_restore", "--no-password", "--exit-on-error", "--dbname=dbname='t'"]),
    ("custom", dict(clean=True, no_owner=True, jobs=2, path="/tmp/x"),
     ["/b/pg_restore", "--no-password", "--exit-on-error", "--dbname=dbname='t'", "--clean", "--if-exists",
      "--no-owner", "--no-privileges", "--jobs=2", "/tmp/x"]),
])
def test_restore_argv(fmt, kwargs, expected):
    assert pr.restore_argv(FakeTools("/b"), fmt, "t", **kwargs) == expected


def test_argv_never_carries_connection_secrets():
    argv = ps.psql_argv(FakeTools(), "db", "SELECT 1") + pd.dump_argv(FakeTools(), "custom", "db")
    assert not any("password=" in a or "PGPASSWORD" in a for a in argv)


@pytest.mark.parametrize("output, rows", [
    (b"", []),
    (b"\n", []),
    (b"1\n", [["1"]]),
    (b"a\x1fb\x1ec\x1fd\n", [["a", "b"], ["c", "d"]]),
    ("ünï\x1f\n", [["ünï", ""]]),
])
def test_parse_rows(output, rows):
    assert ps.parse_rows(output) == rows


def test_version_of():
    assert ps.version_of(b"pg_dump (PostgreSQL) 15.13 (Debian 15.13-0+deb12u1)\n") == "15.13"


@pytest.mark.parametrize("spec, rows, passed, message", [
    (dict(query="q"), [], True, "ok"),
    (dict(query="q", min=10), [["10"]], True, "ok"),
    (dict(query="q", min=10), [["9"]], False, "below the minimum"),
    (dict(query="q", max=5), [["6"]], False, "above the maximum"),
    (dict(query="q", min=1), [], False, "not a number"),
    (dict(query="q", min=1), [["abc"]], False, "not a number"),
    (dict(query="q", expect="42"), [["42"]], True, "ok"),
    (dict(query="q", expect="42"), [["41"]], False, "expected '42'"),
    (dict(query="q", rows=2), [["a"], ["b"]], True, "ok"),
    (dict(query="q", rows=2), [["a"]], False, "returned 1 rows, expected 2"),
])
def test_evaluate_query(spec, rows, passed, message):
    ok, _value, text = pv.evaluate_query(spec, rows)
    assert ok is passed
    assert message in text


@pytest.mark.parametrize("fmt, exists, empty, create, clean, force, steps", [
    ("custom", False, True, True, False, False, ["create", "restore"]),
    ("custom", True, True, False, False, False, ["restore"]),
    ("custom", True, False, False, True, False, ["clean", "restore"]),
    ("plain", True, False, False, True, False, ["recreate", "restore"]),
    ("custom", True, False, False, False, True, ["restore"]),
])
def test_restore_plan(fmt, exists, empty, create, clean, force, steps):
    assert pr.restore_plan(fmt, exists, empty, create, clean, force, "t") == steps


def test_restore_plan_refuses():
    with pytest.raises(NotFoundError, match="set create=true"):
        pr.restore_plan("custom", False, True, False, False, False, "t")
    with pytest.raises(ConfigError, match="is not empty"):
        pr.restore_plan("custom", True, False, False, False, False, "t")


@pytest.mark.parametrize("stderr, expected", [
    (b'pg_dump: error: connection to server at "h", port 1 failed: Connection refused\n'
     b"\tIs the server running on that host and accepting TCP/IP connections?\n",
     'connection to server at "h", port 1 failed: Connection refused'),
    (b"NOTICE: x\npsql:<stdin>:3: ERROR:  relation \"t\" does not exist\n", 'ERROR: relation "t" does not exist'),
    (b"pg_restore: error: could not execute query: ERROR: boom\nCommand was: X\n",
     "could not execute query: ERROR: boom"),
    (b"", ""),
])
def test_tool_message(stderr, expected):
    assert pt.tool_message(stderr) == expected


def test_tool_message_hides_secret_and_is_one_line():
    text = pt.tool_message(b"psql: error: FATAL: hunter2 is wrong\nmore\n", secret="hunter2")
    assert "hunter2" not in text and "\n" not in text


@pytest.mark.parametrize("rc, stderr, message", [
    (-9, b"", "pg_dump was killed by signal 9"),
    (137, b"", "pg_dump was killed by signal 9"),
    (1, b"pg_dump: error: boom", "pg_dump failed (exit 1): boom"),
    (1, b"", "no error output"),
])
def test_failure(rc, stderr, message):
    assert message in pt.failure("pg_dump", rc, stderr).msg


@pytest.mark.parametrize("explicit, major, dirs, which, expected", [
    ("/opt/pg/bin", None, {"/opt/pg/bin"}, None, "/opt/pg/bin"),
    (None, 15, {"/usr/lib/postgresql/15/bin"}, "/usr/bin/pg_dump", "/usr/lib/postgresql/15/bin"),
    (None, 16, {"/usr/lib/postgresql/15/bin"}, "/usr/bin/pg_dump", None),
    (None, None, {"/usr/lib/postgresql/9/bin", "/usr/lib/postgresql/13/bin"}, None, "/usr/lib/postgresql/13/bin"),
])
def test_find_bin_dir(explicit, major, dirs, which, expected):
    got = pt.find_bin_dir(explicit, major, isdir=lambda p: p in dirs, which=lambda _n: which,
                          globber=lambda _p: sorted(dirs))
    assert got == expected


def test_find_bin_dir_errors():
    with pytest.raises(ConfigError, match="is not a directory"):
        pt.find_bin_dir("/nope", isdir=lambda p: False)
    with pytest.raises(ConfigError, match="not found on the managed host"):
        pt.find_bin_dir(None, None, isdir=lambda p: False, which=lambda n: None, globber=lambda p: [])


# ------------------------------------------- LocalTools against real child processes

PY = sys.executable


def test_reader_streams_and_succeeds():
    tools = pt.LocalTools(env=None)
    with tools.reader([PY, "-c", "import sys; sys.stdout.buffer.write(b'x' * 3000000)"]) as pipe:
        data = pipe.read(-1)
    assert len(data) == 3000000


def test_reader_raises_on_failure_with_the_error_line():
    tools = pt.LocalTools(env=None)
    with pytest.raises(ServiceError, match=r"failed \(exit 3\): bad thing"):
        with tools.reader([PY, "-c", "import sys; sys.stderr.write('pg_dump: error: bad thing\\n'); sys.exit(3)"]) as pipe:
            pipe.read(-1)


def test_reader_reports_a_killed_tool():
    tools = pt.LocalTools(env=None)
    code = "import os, signal, sys; sys.stdout.write('partial'); sys.stdout.flush(); os.kill(os.getpid(), signal.SIGKILL)"
    with pytest.raises(ServiceError, match="killed by signal %d" % signal.SIGKILL):
        with tools.reader([PY, "-c", code]) as pipe:
            assert pipe.read(-1) == b"partial"


def test_feed_returns_stderr_and_raises_when_asked():
    tools = pt.LocalTools(env=None)
    rc, err = tools.feed([PY, "-c", "import sys; d = sys.stdin.buffer.read(); sys.stderr.write(str(len(d)))"],
                         io.BytesIO(b"y" * 5000000))
    assert (rc, err) == (0, b"5000000")
    # a tool that stops reading early: its exit code wins over the broken pipe
    with pytest.raises(ServiceError, match="exit 4"):
        tools.feed([PY, "-c", "import sys; sys.stdin.buffer.read(10); sys.exit(4)"], io.BytesIO(b"z" * 20000000))
    rc, _err = tools.feed([PY, "-c", "import sys; sys.exit(5)"], io.BytesIO(b""), check=False)
    assert rc == 5


def test_missing_program_is_one_line():
    with pytest.raises(ServiceError, match="cannot run /nonexistent/pg_dump on the managed host"):
        pt.LocalTools(env=None).run(["/nonexistent/pg_dump", "--version"])


GLOBALS = "".join(line + "\n" for line in [
    "--", "-- Roles", "--", "",
    "CREATE ROLE app;",
    "ALTER ROLE app WITH NOSUPERUSER INHERIT NOCREATEROLE NOCREATEDB LOGIN PASSWORD 'SCRAM-SHA-256$4096:x';",
    "CREATE ROLE postgres;",
    "ALTER ROLE postgres WITH SUPERUSER INHERIT CREATEROLE CREATEDB LOGIN REPLICATION BYPASSRLS"
    " PASSWORD 'SCRAM-SHA-256$4096:y';",
    'CREATE ROLE "Odd ""Name""";',
    'ALTER ROLE "Odd ""Name""" WITH LOGIN;',
    'ALTER ROLE "Odd ""Name""" SET search_path TO app;',
    "CREATE ROLE postgres_reader;",
    "GRANT app TO postgres GRANTED BY postgres;",
])


@pytest.mark.parametrize("existing, kept, remaining_roles", [
    ([], [], ["app", "postgres", '"Odd ""Name"""', "postgres_reader"]),
    (["postgres"], ["postgres"], ["app", '"Odd ""Name"""', "postgres_reader"]),
    (["postgres", 'Odd "Name"', "app"], ["Odd \"Name\"", "app", "postgres"], ["postgres_reader"]),
])
def test_filter_globals_keeps_existing_roles(existing, kept, remaining_roles):
    script, got_kept = pr.filter_globals(GLOBALS, existing)
    assert got_kept == sorted(kept)
    created = [line[len("CREATE ROLE "):-2] for line in script.splitlines(True) if line.startswith("CREATE ROLE ")]
    assert created == remaining_roles
    assert "GRANT app TO postgres GRANTED BY postgres;" in script
    if "postgres" in existing:
        assert "SCRAM-SHA-256$4096:y" not in script  # the connecting role's password is never replaced


# ------------------------------------------------- SQL scripts from a bucket (issue 14, item 9)

from ansible_collections.opskit.runbook.plugins.module_utils._postgres import script as psc  # noqa: E402
from ansible_collections.opskit.runbook.plugins.module_utils._errors import IntegrityError  # noqa: E402


@pytest.mark.parametrize("version, expected", [
    ("15.18", True), ("15.14", True), ("15.13", False), ("16.10", True), ("16.9", False),
    ("17.6", True), ("17.5", False), ("18.0", True), ("14.19", True), ("13.21", False),
    ("12.22", False), ("", False), ("garbage", False),
])
def test_has_restrict(version, expected):
    assert psc.has_restrict(version) is expected


DUMP_HEAD = b"--\n-- PostgreSQL database dump\n--\n\n\\restrict abcDEF123\n\nSET standard_conforming_strings = on;\n"
DUMP_TAIL = b"\n\\unrestrict abcDEF123\n\n"
LEGIT = (DUMP_HEAD + b"CREATE TABLE public.t (a text, b text);\n"
         b"CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $_$SELECT '\\d+' || $1$_$;\n"
         b"COMMENT ON TABLE t IS E'back\\\\slash \\' quote';\n"
         b"SELECT pg_catalog.lowrite(0, '\\x6c61726765'), '\\\\d', 'it''s', c[1:n], c[1:2];\n"
         b"CREATE TABLE \"we\\ird\" (x int); SELECT 'a'::text, $$ \\! in a body $$; -- \\! in a comment\n"
         b"/* nested /* \\! */ still */ SELECT 1;\n"
         b"COPY public.t (a, b) FROM stdin;\n\\N\tx\n\\\\! data\t\\.x\n\\.\nSELECT 2;\n" + DUMP_TAIL)


def test_check_script_accepts_what_pg_dump_writes():
    psc.check_script(LEGIT, "backup x")


@pytest.mark.parametrize("body, what", [
    (b"\\! touch /tmp/pwned\n", "meta-command"),
    (b"SELECT 1; \\! touch /tmp/pwned\n", "meta-command"),
    (b"SELECT 1 \\gexec\n", "meta-command"),
    (b"\\unrestrict abcDEF123\n\\! id\n", "meta-command"),  # the dump's key line, then a command
    (b"SELECT 'it''s \\' ; \\! id ; '\n", "standard_conforming_strings off"),
    (b"SELECT 'C:\\' ; \\! id ; '\n", "standard_conforming_strings off"),
    (b"SELECT :'DBNAME';\n", "psql variable"),
    (b"SELECT :LAST_ERROR_MESSAGE;\n", "psql variable"),
    (b"SELECT $$COPY t FROM stdin;\n$$;\n\\! id\n\\.\n", "meta-command"),  # a fake COPY in a body
    (b"COPY (SELECT 'FROM STDIN') TO STDOUT;\n\\! id\n\\.\n", "meta-command"),
    (b"COPY t FROM stdin; SELECT 1;\nx\n\\.\n", "COPY FROM stdin"),
    (b"SELECT 'unterminated\n", "unterminated"),
])
def test_check_script_refuses(body, what):
    with pytest.raises(IntegrityError) as err:
        psc.check_script(DUMP_HEAD + body, "backup x")
    assert what in err.value.msg and "\n" not in err.value.msg and "line " in err.value.msg


def test_check_script_globals_have_no_copy():
    with pytest.raises(IntegrityError, match="COPY"):
        psc.check_script(b"COPY t FROM stdin;\n\\! id\n\\.\n", "globals", copy_allowed=False)


class Trickle(io.BytesIO):
    """Returns at most ``step`` bytes a read: key lines arrive split across reads."""

    def __init__(self, data, step):
        super().__init__(data)
        self.step = step

    def read(self, size=-1):
        return super().read(self.step)


@pytest.mark.parametrize("step", [1, 3, 7, 1 << 20])
@pytest.mark.parametrize("restrict", [True, False])
def test_safe_script_drops_the_dumps_key_lines_and_restricts(step, restrict):
    stream = psc.SafeScript(Trickle(LEGIT, step), restrict)
    out = b"".join(iter(lambda: stream.read(5), b""))
    lines = out.split(b"\n")
    assert not [line for line in lines if b"abcDEF123" in line]
    if restrict:
        assert lines[0].startswith(b"\\restrict ") and len(lines[0]) == len(b"\\restrict ") + 32
        out = out.split(b"\n", 1)[1]
    assert out.replace(b"\n", b"") == LEGIT.replace(b"\\restrict abcDEF123", b"").replace(
        b"\\unrestrict abcDEF123", b"").replace(b"\n", b"")


def test_safe_script_keeps_a_foreign_key_line():
    """Only the dump's own key is dropped: any other \\unrestrict reaches psql, which refuses it."""
    out = psc.SafeScript(io.BytesIO(DUMP_HEAD + b"\\unrestrict other\n"), True).read()
    assert b"\n\\unrestrict other\n" in out and b"abcDEF123" not in out


# ------------------------------------------------- passfile (issue 14, item 8)

from ansible_collections.opskit.runbook.plugins.module_utils._postgres import connection as pcn  # noqa: E402


@pytest.mark.parametrize("user, password, line", [
    ("app", "s3cret", "*:*:*:app:s3cret\n"),
    ("a:b", "p\\w:d", "*:*:*:a\\:b:p\\\\w\\:d\n"),
])
def test_passfile_line(user, password, line):
    assert pcn.passfile_line({"user": user, "password": password}) == line


@pytest.mark.parametrize("field, value, what", [
    ("password", "one\ntwo", "a line break"), ("password", "one\rtwo", "a carriage return"),
    ("password", "one\0two", "a NUL character"), ("user", "ro\nle", "a line break"),
])
def test_passfile_refuses_what_it_cannot_hold(field, value, what, tmp_path, monkeypatch):
    monkeypatch.setattr(pcn.tempfile, "tempdir", str(tmp_path))
    params = {"user": "app", "password": "ok"}
    params[field] = value
    with pytest.raises(ConfigError) as err:
        with pcn.libpq_env(params):
            pass
    assert err.value.msg.startswith("%s contains %s" % (field, what)) and value not in err.value.msg
    assert list(tmp_path.iterdir()) == []


def test_libpq_env_passfile_is_0600_and_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(pcn.tempfile, "tempdir", str(tmp_path))
    with pcn.libpq_env({"user": "app", "password": "pw"}, base_env={"PGPASSWORD": "leak"}) as env:
        path = env["PGPASSFILE"]
        assert "PGPASSWORD" not in env and oct(__import__("os").stat(path).st_mode & 0o777) == "0o600"
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------- leftovers of killed runs (issue 14, item 13)

import os  # noqa: E402

from ansible_collections.opskit.runbook.plugins.module_utils._postgres import action as pa  # noqa: E402
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import cleanup as pcl  # noqa: E402
from ansible_collections.opskit.runbook.plugins.module_utils._errors import StorageError  # noqa: E402


def test_scratch_name_carries_its_time():
    name = pcl.scratch_name(now=1764579600)
    assert pcl.SCRATCH_RE.match(name) and name.startswith("opskit_verify_1764579600_")


@pytest.mark.parametrize("rows, expected", [
    ([("opskit_verify_1764579600_0123abcd", "0")], ["opskit_verify_1764579600_0123abcd"]),
    ([("opskit_verify_1764579600_0123abcd", "1")], []),            # someone is connected
    ([("opskit_verify_1764582000_0123abcd", "0")], []),            # 10 minutes old: maybe running
    ([("opskit_verify_0123abcd", "0")], []),                       # no time in its name: not ours to judge
    ([("opskit_verify_1764579600_0123abcd_x", "0"), ("app", "0")], []),
])
def test_stale_scratch(rows, expected):
    assert pcl.stale_scratch(rows, now=1764582600) == expected


def test_leftover_temporaries_are_those_of_dead_owners(tmp_path):
    (tmp_path / "opskit-pgpass-111-abc").write_text("x")
    (tmp_path / "opskit-pgrestore-222-def").mkdir()
    (tmp_path / ("opskit-pgdump-%d-mine" % os.getpid())).mkdir()   # this run's own
    (tmp_path / "opskit-pgpass-legacy").write_text("x")             # no pid: left alone
    (tmp_path / "other-111-x").write_text("x")
    found = pcl.leftover_temporaries([str(tmp_path), None], alive=lambda pid, created: pid == 222)
    assert found == [str(tmp_path / "opskit-pgpass-111-abc")]


def test_the_owner_of_a_temporary_is_the_process_that_started_before_it(tmp_path):
    """A live owner whose command line does not name pg_backup (a pipelined module is a bare
    python3) keeps its files; a pid that started after the file was made is a reused one."""
    import subprocess
    import time
    child = subprocess.Popen(["sleep", "30"])
    try:
        time.sleep(0.05)
        assert pcl._owner_alive(child.pid, time.time()) is True         # made by it, after it started
        assert pcl._owner_alive(child.pid, time.time() - 3600) is False  # older than the process: a reused pid
        (tmp_path / ("opskit-pgpass-%d-abc" % child.pid)).write_text("x")
        assert pcl.leftover_temporaries([str(tmp_path)]) == []
    finally:
        child.kill()
        child.wait()
    assert pcl._owner_alive(child.pid, time.time()) is False
    assert pcl.leftover_temporaries([str(tmp_path)]) == [str(tmp_path / ("opskit-pgpass-%d-abc" % child.pid))]


def test_terminable_turns_sigterm_into_interrupted_and_restores_the_handler():
    before = signal.getsignal(signal.SIGTERM)
    with pytest.raises(pcl.Interrupted, match="interrupted by signal 15"):
        with pcl.terminable():
            os.kill(os.getpid(), signal.SIGTERM)
            __import__("time").sleep(5)  # the handler raises at once
    assert signal.getsignal(signal.SIGTERM) == before


def test_report_names_what_was_removed():
    result = pa._report({"changed": True}, {"temporary_files": ["/tmp/opskit-pgpass-1-x"],
                                            "scratch_databases": ["opskit_verify_1_0123abcd"]}, [], False)
    assert result["leftovers"]["scratch_databases"] == ["opskit_verify_1_0123abcd"]
    assert result["warnings"] == ["removed what an interrupted earlier run left: 1 temporary file(s)"
                                  " (/tmp/opskit-pgpass-1-x); scratch database(s) opskit_verify_1_0123abcd"]
    assert "leftovers" not in pa._report({}, {"temporary_files": [], "scratch_databases": []}, [], False)


# ------------------------------------------------- verification outcomes (issue 14, items 6 and 23)

@pytest.mark.parametrize("exc, outcome", [
    (IntegrityError("artifact a/b.globals.sql.zst is corrupt: sha256 ..."), "failed"),
    (NotFoundError("backup x has no globals artifact"), "failed"),
    (ServiceError("pg_restore failed (exit 1): ERROR: syntax error at or near \"x\""), "failed"),
    (ServiceError("cannot connect to PostgreSQL u@h:5432 on the managed host: Connection refused"), "error"),
    (ServiceError("query on u@h:5432/postgres failed: ERROR: permission denied to create database"), "error"),
    (ServiceError("pg_restore failed (exit 1): could not extend file \"base/1/2\": No space left on device"), "error"),
    (ServiceError("writing backup x to the temporary file /t failed: No space left on device (set tmp_dir ...)"), "error"),
    (ServiceError("pg_restore was killed by signal 9"), "error"),
    (StorageError("s3 GetObject failed: 503 SlowDown"), "error"),
    (ConfigError("restoring a directory format backup is not supported with docker_container"), "error"),
])
def test_outcome_of(exc, outcome):
    assert pv.outcome_of(exc) == outcome


def test_an_exec_owner_is_gone_only_when_it_ran_here_and_ended():
    """Issue 14 item 13: the tools a killed run left in a container are killed by the next run only
    when their owner tag names a process of this very machine (host, boot, PID namespace) that ended."""
    import subprocess
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres import tools as _tools
    child = subprocess.Popen(["true"])
    gone = _tools.owner_tag(child.pid)  # its tag while it lives
    child.wait()
    assert _tools.owner_gone(gone) is True
    assert _tools.owner_gone(_tools.owner_tag(os.getpid())) is False  # alive
    elsewhere = "otherhost" + gone[gone.index("|"):]
    assert _tools.owner_gone(elsewhere) is False  # another machine's pid means nothing here
    for bad in (None, "", "1:2", gone.replace("|", ":"), gone.rsplit("|", 1)[0] + "|?"):
        assert _tools.owner_gone(bad) is False
