# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""opskit.runbook.pg_backup through ansible-playbook against real PostgreSQL, S3 and Docker."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import secrets
import signal
import subprocess
import threading
import time

import pytest

from pg_fixtures import BIN as PG_BIN, Cluster, FaultProxy, build_postgres_image, plant_backup

from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

PG_BACKUP = "opskit.runbook.pg_backup"


# ---------------------------------------------------------------- helpers

def play(*tasks):
    """A playbook (JSON is YAML) of pg_backup tasks; every task keeps going on failure."""
    return json.dumps([{"hosts": "localhost", "gather_facts": False, "tasks": list(tasks)}])


def task(name, check_mode=False, **args):
    out = {"name": name, PG_BACKUP: args, "ignore_errors": True}
    if check_mode:
        out["check_mode"] = True
    return out


def conn(server):
    return dict(host=server.host, port=server.port, user=server.user, password=server.password)


def with_changes(args, **changes):
    out = dict(args)
    out.update(changes)
    return out


def s3_args(s3, bucket, prefix="pg"):
    return dict(destination="s3://%s/%s" % (bucket, prefix), endpoint_url=s3.endpoint_url,
                access_key=s3.access_key, secret_key=s3.secret_key, region=s3.region)


def file_args(path):
    return dict(destination="file://%s" % path)


def _failed(result):
    return bool(result.get("failed")) or result.get("_status") == "failed"


def ok(result):
    assert result is not None, "task did not run"
    assert not _failed(result), result.get("msg")
    return result


def failed(result):
    assert result is not None, "task did not run"
    assert _failed(result), "task unexpectedly succeeded: %s" % result.get("msg")
    msg = result["msg"]
    assert "\n" not in msg and "Traceback" not in msg, msg
    return msg


def name(prefix):
    return "%s_%s" % (prefix, secrets.token_hex(3))


def bucket_keys(s3, bucket):
    return [o["Key"] for o in s3.client.list_objects_v2(Bucket=bucket).get("Contents", [])]


def databases(server, prefix):
    return server.psql("SELECT datname FROM pg_database WHERE datname LIKE '%s%%'" % prefix).split()


# ---------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def fresh_cluster():
    """A second, empty cluster: what a disaster recovery restores into."""
    cluster = Cluster("fresh-" + secrets.token_hex(8)).start()
    yield cluster
    cluster.stop()


RICH_SQL = r"""
CREATE ROLE {role} LOGIN PASSWORD 'role-pw-{role}';
CREATE EXTENSION citext;
CREATE SCHEMA shop AUTHORIZATION {role};
CREATE SCHEMA audit;
CREATE SEQUENCE audit.ticket START 1000 INCREMENT 7;
CREATE TABLE shop.customers (id serial PRIMARY KEY, email citext UNIQUE, name text);
CREATE TABLE shop.orders (id bigserial PRIMARY KEY, customer int REFERENCES shop.customers, total numeric(10,2),
                          placed timestamptz DEFAULT '2026-01-01 00:00:00+00');
CREATE TABLE audit.log (ticket int DEFAULT nextval('audit.ticket'), note text, doc oid);
ALTER TABLE shop.customers OWNER TO {role};
INSERT INTO shop.customers (email, name) SELECT 'User' || g || '@Example.com', 'Zoë Ångström 日本 ' || g
  FROM generate_series(1, 500) g;
INSERT INTO shop.orders (customer, total) SELECT 1 + g % 500, g * 1.25 FROM generate_series(1, 3000) g;
INSERT INTO audit.log (note, doc) VALUES ('ünïcode ✓', lo_from_bytea(0, convert_to('large object ☃ payload', 'UTF8')));
INSERT INTO audit.log (note) SELECT 'n' || g FROM generate_series(1, 20) g;
CREATE VIEW shop.big_orders AS SELECT * FROM shop.orders WHERE total > 100;
CREATE FUNCTION shop.order_count() RETURNS bigint LANGUAGE sql AS 'SELECT count(*) FROM shop.orders';
"""

CONTENT_SQL = """
SELECT string_agg(format('%s.%s=%s', n.nspname, c.relname,
         (xpath('/row/h/text()', query_to_xml(format(
           'SELECT md5(coalesce(string_agg(t::text, ''|'' ORDER BY t::text), '''')) AS h FROM %I.%I t',
           n.nspname, c.relname), false, true, '')))[1]::text), ' ' ORDER BY n.nspname, c.relname)
FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE c.relkind = 'r' AND n.nspname IN ('shop', 'audit', 'public')
"""
LO_SQL = "SELECT string_agg(oid::text || ':' || md5(lo_get(oid)), ',' ORDER BY oid) FROM pg_largeobject_metadata"


def schema_dump(server, database):
    out = subprocess.run([os.path.join(server.bin_dir, "pg_dump"), "--schema-only", "-h", server.host, "-p",
                          str(server.port), "-U", server.user, "-d", database],
                         env=dict(os.environ, PGPASSWORD=server.password), check=True, capture_output=True)
    # pg_dump >= 15.14 brackets its output with \restrict / \unrestrict and a random key
    return "".join(line for line in out.stdout.decode().splitlines(True)
                   if not line.startswith(("\\restrict ", "\\unrestrict ")))


@pytest.fixture(scope="module")
def rich_db(pg):
    """A database with several schemas, sequences, a large object, non-ASCII text, citext and a role."""
    db, role = name("pgb_rich"), name("pgb_owner")
    pg.createdb(db)
    pg.psql(RICH_SQL.format(role=role), db=db)
    yield db, role


@pytest.fixture(scope="module")
def big_db(pg):
    """About 40 MB of incompressible text: pg_dump runs long enough to be watched and killed."""
    db = name("pgb_big")
    pg.createdb(db)
    pg.psql("CREATE TABLE blob AS SELECT g, md5(g::text) || md5((-g)::text) || md5((g * 7)::text)"
            " || md5((g * 13)::text) AS v FROM generate_series(1, 300000) g", db=db)
    return db


@pytest.fixture(scope="module")
def small_db(pg):
    db = name("pgb_small")
    pg.createdb(db)
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, label text); CREATE TABLE notes (id int, body text);"
            " INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 1000) g;"
            " INSERT INTO notes VALUES (1, 'first');", db=db)
    return db


# ------------------------------------------------------------------- tests

def test_round_trip_into_a_fresh_cluster(pg, s3, fresh_cluster, rich_db, run_playbook):
    db, role = rich_db
    bucket = s3.new_bucket()
    store = s3_args(s3, bucket)
    res = run_playbook(play(
        task("dump", database=db, globals=True, **conn(pg), **store),
        task("restore", state="restored", database=db, series="%s-%s" % (pg.host, db), create=True,
             restore_globals=True, **conn(fresh_cluster), **store),
        task("again without clean", state="restored", database=db, series="%s-%s" % (pg.host, db),
             **conn(fresh_cluster), **store),
    ))
    dumped = ok(res.task("dump"))
    backup = dumped["backup"]
    assert dumped["changed"] and backup["size_bytes"] > 0 and backup["raw_bytes"] > backup["size_bytes"]
    assert re.fullmatch(r"[0-9a-f]{64}", backup["sha256"])
    assert backup["pg_dump_version"].startswith("15.") and backup["server_version"].startswith("15.")
    assert backup["url"].startswith("s3://%s/pg/" % bucket) and backup["duration_seconds"] > 0
    keys = bucket_keys(s3, bucket)
    assert any(k.endswith(".globals.sql.zst") for k in keys) and any(k.endswith(".manifest.json") for k in keys)
    restored = ok(res.task("restore"))
    assert restored["changed"] and restored["plan"]["steps"] == ["create", "restore"]
    assert "not empty" in failed(res.task("again without clean"))

    assert fresh_cluster.psql("SELECT rolname FROM pg_roles WHERE rolname = '%s'" % role).strip() == role
    assert schema_dump(fresh_cluster, db) == schema_dump(pg, db)
    assert fresh_cluster.psql(CONTENT_SQL, db) == pg.psql(CONTENT_SQL, db)
    assert fresh_cluster.psql(LO_SQL, db) == pg.psql(LO_SQL, db) != "\n"
    seq = "SELECT last_value, is_called FROM audit.ticket"
    assert fresh_cluster.psql(seq, db) == pg.psql(seq, db)
    assert "Zoë Ångström 日本 7" in fresh_cluster.psql("SELECT name FROM shop.customers WHERE id = 7", db)
    assert fresh_cluster.psql("SELECT nextval('audit.ticket')", db) == pg.psql("SELECT nextval('audit.ticket')", db)


def test_directory_format_parallel_and_clean(pg, small_db, run_playbook, tmp_path):
    target = name("pgb_dir_target")
    store = file_args(tmp_path / "store")
    series = "dir-" + small_db
    res = run_playbook(play(
        task("dump", database=small_db, series=series, format="directory", jobs=2, **conn(pg), **store),
        task("restore", state="restored", series=series, target_database=target, create=True, jobs=2,
             **conn(pg), **store),
        task("clean", state="restored", series=series, target_database=target, clean=True, jobs=2,
             **conn(pg), **store),
    ))
    assert ok(res.task("dump"))["backup"]["url"].endswith(".tar.zst")
    assert ok(res.task("restore"))["plan"]["steps"] == ["create", "restore"]
    assert ok(res.task("clean"))["plan"]["steps"] == ["clean", "restore"]
    assert pg.psql("SELECT count(*), sum(id) FROM items", target) == "1000|500500\n"
    assert not list((tmp_path / "store").rglob(".*partial*"))


def test_custom_format_parallel_restore_from_s3(pg, s3, rich_db, run_playbook, tmp_path):
    """jobs=2 on a custom-format dump: downloaded (and checked) into a private temporary file
    under tmp_dir, restored by pg_restore --jobs=2, and the temporary file removed."""
    db, _role = rich_db
    target = name("pgb_j2_target")
    spool = tmp_path / "spool"
    spool.mkdir()
    store = s3_args(s3, s3.new_bucket())
    series = "j2-" + db
    res = run_playbook(play(
        task("dump", database=db, series=series, **conn(pg), **store),
        task("restore", state="restored", series=series, target_database=target, create=True, jobs=2,
             tmp_dir=str(spool), **conn(pg), **store),
    ))
    assert ok(res.task("dump"))["backup"]["url"].endswith(".dump.zst")
    restored = ok(res.task("restore"))
    assert restored["changed"] and restored["plan"]["steps"] == ["create", "restore"]
    assert schema_dump(pg, target) == schema_dump(pg, db)
    assert pg.psql(CONTENT_SQL, target) == pg.psql(CONTENT_SQL, db)
    assert pg.psql(LO_SQL, target) == pg.psql(LO_SQL, db) != "\n"
    assert list(spool.iterdir()) == []


def test_killed_pg_dump_publishes_nothing_and_leaves_no_upload(pg, s3, big_db, run_playbook):
    bucket = s3.new_bucket()
    store = s3_args(s3, bucket)
    seen = {}

    def killer():
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and "killed" not in seen:
            for pid in _pids_with(b"pg_dump", big_db.encode()):
                written = _written_bytes(pid)
                if written > 20 * 1024 * 1024:
                    os.kill(pid, signal.SIGSTOP)  # hold it mid-stream until an upload is open
                    wait = time.monotonic() + 15
                    while time.monotonic() < wait:
                        seen["uploads"] = s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
                        if seen["uploads"]:
                            break
                        time.sleep(0.05)
                    os.kill(pid, signal.SIGKILL)
                    seen["killed"] = written
            time.sleep(0.005)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    res = run_playbook(play(task("dump", database=big_db, compression="none", **conn(pg), **store)))
    thread.join()
    assert seen.get("killed"), "pg_dump was never caught mid-stream"
    assert seen.get("uploads"), "no multipart upload was in progress when pg_dump was killed"
    assert "pg_dump was killed by signal 9" in failed(res.task("dump"))
    assert bucket_keys(s3, bucket) == []
    assert s3.client.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def _pids_with(*needles):
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/cmdline" % entry, "rb") as fh:
                    cmdline = fh.read()
            except OSError:
                continue
            if all(n in cmdline for n in needles):
                yield int(entry)


def _written_bytes(pid):
    try:
        with open("/proc/%d/io" % pid) as fh:
            for line in fh:
                if line.startswith("wchar:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def test_connection_errors_are_one_line_and_never_show_the_password(pg, big_db, run_playbook, tmp_path):
    store = file_args(tmp_path / "store")
    wrong = "Wr0ng-" + secrets.token_hex(6)
    with socket_closed_port() as closed:
        res = run_playbook(play(
            task("wrong password", database=big_db, **with_changes(conn(pg), password=wrong), **store),
            task("unreachable", database=big_db, **with_changes(conn(pg), port=closed), **store),
            task("missing database", database="pgb_nope_" + secrets.token_hex(3), **conn(pg), **store),
        ))
    assert "password authentication failed" in failed(res.task("wrong password"))
    assert "Connection refused" in failed(res.task("unreachable"))
    assert "does not exist" in failed(res.task("missing database"))
    assert wrong not in res.stdout + res.stderr and pg.password not in res.stdout + res.stderr

    # while a real dump runs, no process shows the password on its command line
    leaks, tools_seen, stop = [], set(), threading.Event()
    secret = pg.password.encode()

    def watch():
        while not stop.is_set():
            for pid in _pids_with(b""):
                try:
                    with open("/proc/%d/cmdline" % pid, "rb") as fh:
                        cmdline = fh.read()
                except OSError:
                    continue
                if secret in cmdline:
                    leaks.append(cmdline)
                if b"pg_dump\0" in cmdline:
                    tools_seen.add(b"pg_dump")
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        res = run_playbook(play(task("dump", database=big_db, **conn(pg), **store)))
    finally:
        stop.set()
        thread.join()
    ok(res.task("dump"))
    assert b"pg_dump" in tools_seen, "the watcher never saw pg_dump run"
    assert leaks == []
    assert pg.password not in res.stdout + res.stderr


class socket_closed_port:
    def __enter__(self):
        import socket
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        return self.port

    def __exit__(self, *exc):
        return False


def _damage(path, how):
    with open(path, "r+b") as fh:
        if how == "truncate":
            fh.truncate(os.path.getsize(path) - 100)
        else:
            fh.seek(os.path.getsize(path) // 2)
            byte = fh.read(1)
            fh.seek(-1, 1)
            fh.write(bytes([byte[0] ^ 0x01]))


def test_corrupt_artifact_is_refused_before_the_target_is_touched(pg, small_db, run_playbook, tmp_path):
    store = file_args(tmp_path / "store")
    target = name("pgb_target")
    pg.createdb(target)
    # a table the backup has too: clean=true would drop it first if the restore got that far
    pg.psql("CREATE TABLE items (id int PRIMARY KEY, label text); INSERT INTO items VALUES (0, 'untouched')", target)
    cases = [("truncate", 1), ("bitflip", 1), ("bitflip", 2)]  # streamed, streamed, downloaded for -j2
    res = run_playbook(play(*[task("dump %d" % i, database=small_db, series="corrupt%d-{database}" % i,
                                   **conn(pg), **store) for i in range(len(cases))]))
    for index, (how, _jobs) in enumerate(cases):
        _damage(ok(res.task("dump %d" % index))["backup"]["url"][len("file://"):], how)
    never = [name("pgb_never") for _case in cases]
    tasks = []
    for index, (how, jobs) in enumerate(cases):
        series = "corrupt%d-%s" % (index, small_db)
        tasks += [task("clean over %d" % index, state="restored", series=series, target_database=target,
                       clean=True, jobs=jobs, **conn(pg), **store),
                  task("create %d" % index, state="restored", series=series, target_database=never[index],
                       create=True, jobs=jobs, **conn(pg), **store)]
    res = run_playbook(play(*tasks))
    for index in range(len(cases)):
        assert "is corrupt" in failed(res.task("clean over %d" % index))
        assert "is corrupt" in failed(res.task("create %d" % index))
    assert pg.psql("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'", target) == "items\n"
    assert pg.psql("SELECT id, label FROM items", target) == "0|untouched\n"
    assert databases(pg, "pgb_never") == []


def test_plain_restore_stops_at_the_first_error(pg, small_db, run_playbook, tmp_path):
    store = file_args(tmp_path / "store")
    atomic, partial = name("pgb_plain_atomic"), name("pgb_plain_partial")
    for target in (atomic, partial):
        pg.createdb(target)
        # the dump creates "items", then "notes": an incompatible "notes" fails the restore midway
        pg.psql("CREATE TABLE notes (other int)", target)
    series = "plain-" + small_db
    res = run_playbook(play(
        task("dump", database=small_db, format="plain", series=series, **conn(pg), **store),
        task("atomic", state="restored", series=series, target_database=atomic, force=True,
             single_transaction=True, **conn(pg), **store),
        task("partial", state="restored", series=series, target_database=partial, force=True,
             **conn(pg), **store),
    ))
    ok(res.task("dump"))
    assert 'relation "notes" already exists' in failed(res.task("atomic"))
    assert 'relation "notes" already exists' in failed(res.task("partial"))
    tables = "SELECT string_agg(tablename, ',' ORDER BY tablename) FROM pg_tables WHERE schemaname = 'public'"
    assert pg.psql(tables, atomic) == "notes\n"
    assert pg.psql(tables, partial) == "items,notes\n"  # what ON_ERROR_STOP reports as a failure
    assert pg.psql("SELECT count(*) FROM items", partial) == "0\n"


def test_check_mode_changes_nothing(pg, s3, small_db, run_playbook):
    bucket = s3.new_bucket()
    store = s3_args(s3, bucket)
    target = name("pgb_check")
    res = run_playbook(play(task("dump", database=small_db, **conn(pg), **store)))
    ok(res.task("dump"))
    before = {k: s3.client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in bucket_keys(s3, bucket)}
    res = run_playbook(play(
        task("dump", database=small_db, check_mode=True, **conn(pg), **store),
        task("restore", state="restored", database=small_db, target_database=target, create=True,
             check_mode=True, **conn(pg), **store),
        task("verify", state="verified", database=small_db, check_mode=True, **conn(pg), **store),
        task("missing", database="pgb_nope", check_mode=True, **conn(pg), **store),
    ), check=True)
    dump = ok(res.task("dump"))
    assert dump["changed"] and dump["plan"][0]["series"] == "%s-%s" % (pg.host, small_db)
    assert ok(res.task("restore"))["plan"]["steps"] == ["create", "restore"]
    assert ok(res.task("verify"))["changed"]
    assert "does not exist" in failed(res.task("missing"))
    after = {k: s3.client.get_object(Bucket=bucket, Key=k)["Body"].read() for k in bucket_keys(s3, bucket)}
    assert after == before
    assert databases(pg, target) == [] and databases(pg, "opskit_verify_") == []


def test_verified_records_the_outcome_and_drops_the_scratch_database(pg, small_db, run_playbook, tmp_path):
    store = file_args(tmp_path / "store")
    res = run_playbook(play(
        task("dump", database=small_db, **conn(pg), **store),
        task("pass", state="verified", database=small_db, **conn(pg), **store,
             verify_queries=[{"name": "items", "query": "SELECT count(*) FROM items", "min": 1000},
                             {"query": "SELECT label FROM items WHERE id = 3", "expect": "item 3"}]),
        task("fail", state="verified", database=small_db, **conn(pg), **store,
             verify_queries=[{"name": "too few", "query": "SELECT count(*) FROM items", "min": 1001}]),
    ))
    ok(res.task("dump"))
    passed = ok(res.task("pass"))
    assert passed["verification"]["result"] == "passed"
    assert [q["value"] for q in passed["verification"]["details"]["queries"]] == ["1000", "item 3"]
    msg = failed(res.task("fail"))
    assert "too few returned 1000, below the minimum 1001" in msg
    manifests = list((tmp_path / "store").rglob("*.manifest.json"))
    assert len(manifests) == 1
    record = json.loads(manifests[0].read_text())["verification"]
    assert record["result"] == "failed" and record["method"] == "restore"
    assert databases(pg, "opskit_verify_") == []


@pytest.fixture(scope="module")
def pg_container(docker_engine):
    client = docker_engine.client
    image = build_postgres_image(client, docker_engine.busybox_image)
    password = "ctr-" + secrets.token_hex(8)
    container = client.containers.run(image, detach=True, name=name("pgb_ctr"),
                                      environment={"POSTGRES_PASSWORD": password})
    try:
        deadline = time.monotonic() + 30
        while True:
            code, out = container.exec_run(["pg_isready", "-q", "-h", "/var/run/postgresql"])
            if code == 0:
                break
            if time.monotonic() > deadline:
                raise RuntimeError("PostgreSQL container did not start: %s" % container.logs()[-2000:])
            time.sleep(0.2)
        code, out = container.exec_run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c",
                                        "CREATE DATABASE shop", "-c", ""])
        assert code == 0, out
        code, out = container.exec_run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", "shop", "-c",
                                        "CREATE TABLE t (id int, v text); INSERT INTO t SELECT g, md5(g::text)"
                                        " FROM generate_series(1, 20000) g"])
        assert code == 0, out
        container.password = password
        yield container
    finally:
        container.remove(force=True)


def test_docker_container_mode(pg_container, s3, run_playbook):
    bucket = s3.new_bucket()
    store = s3_args(s3, bucket)
    ctr = dict(docker_container=pg_container.name, host="127.0.0.1", password=pg_container.password)
    res = run_playbook(play(
        task("dump", database="shop", globals=True, **ctr, **store),
        task("restore", state="restored", database="shop", target_database="shop_copy", create=True,
             **ctr, **store),
        task("verify", state="verified", database="shop", docker_user="postgres",
             docker_container=pg_container.name, series="127.0.0.1-shop", **store,
             verify_queries=[{"query": "SELECT count(*) FROM t", "expect": "20000"}]),
        task("wrong password", database="shop", **with_changes(ctr, password="nope-" + secrets.token_hex(4)),
             **store),
    ))
    dumped = ok(res.task("dump"))["backup"]
    assert dumped["series"] == "127.0.0.1-shop" and dumped["pg_dump_version"].startswith("15.")
    ok(res.task("restore"))
    assert ok(res.task("verify"))["verification"]["result"] == "passed"
    assert "password authentication failed" in failed(res.task("wrong password"))
    code, out = pg_container.exec_run(["psql", "-XAt", "-d", "shop_copy", "-c", "SELECT count(*), md5(string_agg(v, '' ORDER BY id))"
                                       " FROM t"])
    code2, out2 = pg_container.exec_run(["psql", "-XAt", "-d", "shop", "-c", "SELECT count(*), md5(string_agg(v, '' ORDER BY id))"
                                         " FROM t"])
    assert code == code2 == 0 and out == out2 and out.startswith(b"20000|")
    assert pg_container.password not in res.stdout + res.stderr


def test_planted_plain_dump_never_runs_a_psql_meta_command(pg, run_playbook, tmp_path):
    """A plain "dump" (or globals) in the bucket that runs \\! when psql reads it: refused by
    restore and verify, the shell command never runs, no database is left behind."""
    store = tmp_path / "store"
    marker = "/tmp/pwned-%s" % secrets.token_hex(6)
    evil = ("CREATE TABLE items (id int);\n\\! touch %s\nSELECT 1; \\! touch %s\n" % (marker, marker)).encode()
    plant_backup(str(store), "evil-plain", "plain", evil)
    plant_backup(str(store), "evil-globals", "plain", b"CREATE TABLE items (id int);\n",
                 globals_sql=("CREATE ROLE %s;\n\\! touch %s\n" % (name("pgb_evil"), marker)).encode())
    targets = [name("pgb_evil") for _target in range(3)]
    res = run_playbook(play(
        task("restore", state="restored", series="evil-plain", target_database=targets[0], create=True,
             **conn(pg), **file_args(store)),
        task("restore atomic", state="restored", series="evil-plain", target_database=targets[1], create=True,
             single_transaction=True, **conn(pg), **file_args(store)),
        task("verify", state="verified", series="evil-plain", **conn(pg), **file_args(store)),
        task("globals", state="restored", series="evil-globals", target_database=targets[2], create=True,
             restore_globals=True, **conn(pg), **file_args(store)),
    ))
    for task_name in ("restore", "restore atomic", "verify", "globals"):
        assert "meta-command" in failed(res.task(task_name))
    assert not os.path.exists(marker)
    assert databases(pg, "pgb_evil") == [] and databases(pg, "opskit_verify_") == []
    assert pg.psql("SELECT count(*) FROM pg_roles WHERE rolname LIKE 'pgb_evil%'") == "0\n"


def _old_psql_bin_dir(path):
    """Client tools whose psql says it is 15.13 (before \\restrict): the fallback check runs."""
    path.mkdir()
    for tool in ("pg_dump", "pg_dumpall", "pg_restore"):
        (path / tool).symlink_to(os.path.join(PG_BIN, tool))
    wrapper = path / "psql"
    wrapper.write_text('#!/bin/sh\n[ "$1" = --version ] && { echo "psql (PostgreSQL) 15.13"; exit 0; }\n'
                       'exec %s/psql "$@"\n' % PG_BIN)
    wrapper.chmod(0o755)
    return str(path)


def test_planted_plain_dump_is_refused_before_anything_without_restrict(pg, small_db, run_playbook, tmp_path):
    """With a psql that has no \\restrict, the plain dump is copied and read first: a
    meta-command anywhere refuses it before the target is touched; a real dump restores."""
    store = tmp_path / "store"
    marker = "/tmp/pwned-%s" % secrets.token_hex(6)
    evil = ("CREATE TABLE items (id int);\nCOPY items (id) FROM stdin;\n1\n\\.\nSELECT 1; \\! touch %s\n"
            % marker).encode()
    plant_backup(str(store), "evil-plain", "plain", evil)
    bin_dir = _old_psql_bin_dir(tmp_path / "bin")
    target, good = name("pgb_evil"), name("pgb_fallback")
    pg.createdb(target)
    res = run_playbook(play(
        task("restore", state="restored", series="evil-plain", target_database=target, force=True,
             bin_dir=bin_dir, **conn(pg), **file_args(store)),
        task("dump", database=small_db, format="plain", series="good-plain", **conn(pg), **file_args(store)),
        task("good", state="restored", series="good-plain", target_database=good, create=True,
             bin_dir=bin_dir, **conn(pg), **file_args(store)),
    ))
    msg = failed(res.task("restore"))
    assert "line 5 has a psql meta-command" in msg and "no \\restrict" in msg
    assert not os.path.exists(marker)
    assert pg.psql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", target) == "0\n"
    ok(res.task("dump"))
    ok(res.task("good"))
    assert pg.psql("SELECT count(*), sum(id) FROM items", good) == "1000|500500\n"


def test_passfile_is_private_temporary_and_a_newline_password_is_refused(pg, big_db, run_playbook, tmp_path):
    """The passfile is 0600 while the tools run and gone afterwards; a password it cannot hold
    (a newline would end its entry) is refused by name before any file is written."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    store = file_args(tmp_path / "store")
    modes, stop = set(), threading.Event()

    def watch():
        while not stop.is_set():
            for entry in tmp.glob("opskit-pgpass-*"):
                with contextlib.suppress(OSError):
                    modes.add(entry.stat().st_mode & 0o777)
            time.sleep(0.002)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    try:
        res = run_playbook(play(
            task("dump", database=big_db, **conn(pg), **store),
            task("newline", database=big_db, **with_changes(conn(pg), password="line1\nline2-secret"), **store),
            task("cr", database=big_db, **with_changes(conn(pg), password="line1\rline2-secret"), **store),
        ), env={"TMPDIR": str(tmp)})
    finally:
        stop.set()
        thread.join()
    ok(res.task("dump"))
    assert modes == {0o600}
    for task_name, what in (("newline", "a line break"), ("cr", "a carriage return")):
        msg = failed(res.task(task_name))
        assert "password contains %s, which the libpq password file cannot hold" % what in msg
    assert "line2-secret" not in res.stdout + res.stderr
    assert list(tmp.glob("opskit-pgpass-*")) == []


def _ppid(pid):
    with open("/proc/%d/stat" % pid) as fh:
        return int(fh.read().rsplit(")", 1)[1].split()[1])


def _cmdline(pid):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as fh:
            return fh.read()
    except OSError:
        return b""


def _hold_restore_and_signal(signum, seen):
    """Catch the verify's pg_restore mid-restore, stop it (SIGSTOP) and send ``signum`` to the
    module (the process above the pg_restore leader)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        for pid in _pids_with(b"pg_restore", b"opskit_verify_"):
            try:
                leader = pid
                while b"pg_restore" in _cmdline(_ppid(leader)):
                    leader = _ppid(leader)
                module = _ppid(leader)
                if b"pg_backup" not in _cmdline(module):
                    continue  # not this run's (an orphan of an earlier, broken run)
                os.kill(leader, signal.SIGSTOP)
            except (OSError, ValueError, IndexError):
                continue
            seen.update(tool=leader, module=module, module_cmdline=_cmdline(module))
            time.sleep(0.3)  # the restore is under way, the scratch database exists
            os.kill(module, signum)
            return
        time.sleep(0.005)


def _leftovers(pg, *dirs):
    files = [str(p) for d in dirs for p in d.glob("opskit-pg*")]
    return {"databases": databases(pg, "opskit_verify_"), "files": sorted(files)}


def _alive(pid):
    return os.path.exists("/proc/%d" % pid) and b"pg_restore" in _cmdline(pid)


def _verify_under_a_signal(pg, big_db, run_playbook, tmp_path, jobs, signum):
    tmp, spool = tmp_path / "tmp", tmp_path / "spool"
    tmp.mkdir()
    spool.mkdir()
    store = file_args(tmp_path / "store")
    ok(run_playbook(play(task("dump", database=big_db, series="sig-" + big_db, **conn(pg), **store))).task("dump"))
    seen = {}
    thread = threading.Thread(target=_hold_restore_and_signal, args=(signum, seen), daemon=True)
    thread.start()
    verify = task("verify", state="verified", series="sig-" + big_db, jobs=jobs, tmp_dir=str(spool), **conn(pg), **store)
    res = run_playbook(play(verify), env={"TMPDIR": str(tmp)})
    thread.join()
    assert seen.get("tool"), "pg_restore was never caught during the verify"
    return res, seen, verify, (tmp, spool, store)


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigterm_during_verify_leaves_nothing_behind(pg, big_db, run_playbook, tmp_path, jobs):
    res, seen, _verify, (tmp, spool, _store) = _verify_under_a_signal(pg, big_db, run_playbook, tmp_path, jobs,
                                                                      signal.SIGTERM)
    assert "interrupted by signal 15" in failed(res.task("verify"))
    assert not _alive(seen["tool"])
    assert _leftovers(pg, tmp, spool) == {"databases": [], "files": []}
    record = json.loads(next((tmp_path / "store").rglob("*.manifest.json")).read_text())["verification"]
    assert record["result"] == "unverified"  # an interruption says nothing about the backup


@pytest.mark.parametrize("jobs", [1, 2])
def test_sigkill_during_verify_is_cleaned_up_by_the_next_run(pg, big_db, run_playbook, tmp_path, jobs):
    res, seen, verify, (tmp, spool, _store) = _verify_under_a_signal(pg, big_db, run_playbook, tmp_path, jobs,
                                                                     signal.SIGKILL)
    assert failed(res.task("verify"))
    deadline = time.monotonic() + 10
    while _alive(seen["tool"]) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(seen["tool"]), "pg_restore outlived the killed module"
    left = _leftovers(pg, tmp, spool)
    assert len(left["databases"]) == 1 and any("opskit-pgpass-" in f for f in left["files"])
    if jobs > 1:
        assert any("opskit-pgrestore-" in f for f in left["files"])
    soon = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=2)
    later = soon + datetime.timedelta(hours=1)
    res = run_playbook(play(verify), env={"TMPDIR": str(tmp)}, clock=soon)
    young = ok(res.task("verify"))  # the scratch database is too young to be called abandoned
    assert young["leftovers"]["scratch_databases"] == [] and sorted(young["leftovers"]["temporary_files"]) == left["files"]
    res = run_playbook(play(verify), env={"TMPDIR": str(tmp)}, clock=later)
    again = ok(res.task("verify"))
    assert again["leftovers"] == {"scratch_databases": left["databases"], "temporary_files": []}
    assert any("removed what an interrupted earlier run left" in w and left["databases"][0] in w
               for w in again.get("warnings", []))
    assert _leftovers(pg, tmp, spool) == {"databases": [], "files": []}


# ------------------------------------------- SIGTERM / SIGKILL during state=dumped and =restored

def _group(leader):
    """The leader and its workers (pg_dump -j / pg_restore -j fork them)."""
    return [pid for pid in _pids_with(b"pg_") if pid == leader or _ppid_or(pid) == leader]


def _ppid_or(pid):
    try:
        return _ppid(pid)
    except (OSError, ValueError, IndexError):
        return None


def _du(path):
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def _hold_tool_and_signal(tool, needle, signum, seen, ready, module_of=None):
    """Catch ``tool`` (its command line holding ``needle``) while ``ready()`` says it is well
    under way, stop it and its workers (SIGSTOP) and send ``signum`` to the module: the process
    above the tool's leader, or ``module_of(pid)``."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        for pid in _pids_with(tool, needle):
            try:
                leader = pid
                while tool in _cmdline(_ppid(leader)):
                    leader = _ppid(leader)
                module = module_of(leader) if module_of else _ppid(leader)
                if not module or b"pg_backup" not in _cmdline(module) or not ready():
                    continue
                group = _group(leader)
                for member in group:
                    os.kill(member, signal.SIGSTOP)
            except (OSError, ValueError, IndexError):
                continue
            seen.update(tool=leader, group=group, module=module)
            os.kill(module, signum)
            return
        time.sleep(0.005)


def _store_files(store):
    return sorted(str(p.relative_to(store)) for p in store.rglob("*") if p.is_file())


def _gone(pids, wait=10):
    """Whether every pid has ended (reaped or a zombie) within ``wait`` seconds."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        alive = [p for p in pids if os.path.exists("/proc/%d" % p) and _state(p) != "Z"]
        if not alive:
            return True
        time.sleep(0.05)
    for pid in alive:  # never leave a stopped tool behind, whatever the verdict
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    return False


def _state(pid):
    try:
        with open("/proc/%d/stat" % pid) as fh:
            return fh.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def _workers_end_after_the_leader(seen, tool):
    """After the module's SIGKILL: the tool's leader dies with the module (PR_SET_PDEATHSIG), and
    its workers end by themselves once they run again (they read the end of the leader's pipe).
    This test stopped them, so it resumes them; the kernel's SIGHUP + SIGCONT to an orphaned
    process group would do it only where the group counts as orphaned, which depends on the
    session the run was started in."""
    assert _gone([seen["tool"]]), "%s's leader outlived the killed module (%s)" % (tool, _state(seen["tool"]))
    for pid in seen["group"]:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGCONT)
    states = {pid: _state(pid) if os.path.exists("/proc/%d" % pid) else "gone" for pid in seen["group"]}
    assert _gone(seen["group"], wait=30), "%s's workers outlived their leader: %s" % (tool, states)


def _dump_under_a_signal(pg, big_db, run_playbook, tmp_path, signum):
    """pg_dump -Fd -j 2 of big_db into tmp_dir, caught with 4 MB written."""
    tmp, spool, store = tmp_path / "tmp", tmp_path / "spool", tmp_path / "store"
    tmp.mkdir()
    spool.mkdir()
    seen = {}

    def ready():
        return _du(spool) > 4 * 1024 * 1024
    thread = threading.Thread(target=_hold_tool_and_signal, args=(b"pg_dump", big_db.encode(), signum, seen, ready),
                              daemon=True)
    thread.start()
    dump = task("dump", database=big_db, series="kill-" + big_db, format="directory", jobs=2, tmp_dir=str(spool),
                **conn(pg), **file_args(store))
    res = run_playbook(play(dump), env={"TMPDIR": str(tmp)})
    thread.join()
    assert seen.get("tool"), "pg_dump was never caught mid-dump"
    return res, seen, (tmp, spool, store)


def test_sigterm_during_dump_leaves_nothing_behind(pg, big_db, run_playbook, tmp_path):
    res, seen, (tmp, spool, store) = _dump_under_a_signal(pg, big_db, run_playbook, tmp_path, signal.SIGTERM)
    assert "interrupted by signal 15" in failed(res.task("dump"))
    assert _gone(seen["group"], wait=0.5), "pg_dump outlived the SIGTERM of the module"
    assert _leftovers(pg, tmp, spool)["files"] == []  # neither the passfile nor the dump copy
    assert _store_files(store) == []  # no marker, no partial artifact, no manifest


def test_sigkill_during_dump_is_cleaned_up_by_the_next_run(pg, big_db, small_db, run_playbook, tmp_path):
    res, seen, (tmp, spool, store) = _dump_under_a_signal(pg, big_db, run_playbook, tmp_path, signal.SIGKILL)
    assert failed(res.task("dump"))
    _workers_end_after_the_leader(seen, "pg_dump")
    left = _leftovers(pg, tmp, spool)["files"]
    assert any("opskit-pgpass-" in f for f in left) and any("opskit-pgdump-" in f for f in left)
    markers = [f for f in _store_files(store) if f.startswith("kill-%s/.inflight/" % big_db)]
    assert len(markers) == 1
    # the next backup of the series (a small database, the same series) removes and reports it
    again = task("dump", database=small_db, series="kill-" + big_db, tmp_dir=str(spool), **conn(pg), **file_args(store))
    res = run_playbook(play(again), env={"TMPDIR": str(tmp)})
    done = ok(res.task("dump"))
    assert sorted(done["leftovers"]["temporary_files"]) == left
    assert done["leftovers"]["inflight_markers"] == markers
    assert any("in-flight marker(s) left by interrupted backups (holder gone)" in w for w in done["warnings"])
    assert _leftovers(pg, tmp, spool)["files"] == []
    assert [f for f in _store_files(store) if "/.inflight/" in f] == []


@pytest.fixture(scope="module")
def big_dump(pg, big_db, tmp_path_factory):
    """A custom-format dump of big_db in a file:// store, written without the module."""
    store = tmp_path_factory.mktemp("bigdump")
    data = subprocess.run([os.path.join(pg.bin_dir, "pg_dump"), "--format=custom", "--compress=0", "-h", pg.host, "-p",
                           str(pg.port), "-U", pg.user, "-d", big_db], env=dict(os.environ, PGPASSWORD=pg.password),
                          check=True, capture_output=True).stdout
    plant_backup(str(store), "big-" + big_db, "custom", data)
    return store, "big-" + big_db


def _restore_under_a_signal(pg, big_dump, run_playbook, tmp_path, signum):
    """pg_restore -j 2 of big_dump into a new database, caught once it runs."""
    tmp, spool = tmp_path / "tmp", tmp_path / "spool"
    tmp.mkdir()
    spool.mkdir()
    target = name("pgb_killed")
    seen = {}
    thread = threading.Thread(target=_hold_tool_and_signal, args=(b"pg_restore", target.encode(), signum, seen,
                                                                  lambda: True), daemon=True)
    thread.start()
    restore = task("restore", state="restored", series=big_dump[1], target_database=target, create=True, jobs=2,
                   tmp_dir=str(spool), **conn(pg), **file_args(big_dump[0]))
    res = run_playbook(play(restore), env={"TMPDIR": str(tmp)})
    thread.join()
    assert seen.get("tool"), "pg_restore was never caught"
    return res, seen, restore, (tmp, spool, target)


def test_sigterm_during_restore_leaves_nothing_behind(pg, big_dump, run_playbook, tmp_path):
    res, seen, _restore, (tmp, spool, target) = _restore_under_a_signal(pg, big_dump, run_playbook, tmp_path,
                                                                        signal.SIGTERM)
    assert "interrupted by signal 15" in failed(res.task("restore"))
    assert _gone(seen["group"], wait=0.5), "pg_restore outlived the SIGTERM of the module"
    assert _leftovers(pg, tmp, spool)["files"] == []  # neither the passfile nor the download nor the copy
    assert databases(pg, target) == []  # the database this restore created is dropped again


def test_sigkill_during_restore_is_cleaned_up_by_the_next_run(pg, big_dump, run_playbook, tmp_path):
    res, seen, restore, (tmp, spool, target) = _restore_under_a_signal(pg, big_dump, run_playbook, tmp_path,
                                                                       signal.SIGKILL)
    assert failed(res.task("restore"))
    _workers_end_after_the_leader(seen, "pg_restore")
    left = _leftovers(pg, tmp, spool)["files"]
    assert any("opskit-pgpass-" in f for f in left) and any("opskit-pgrestore-" in f for f in left)
    res = run_playbook(play(dict(restore, **{PG_BACKUP: with_changes(restore[PG_BACKUP], clean=True)})),
                       env={"TMPDIR": str(tmp)})
    again = ok(res.task("restore"))
    assert sorted(again["leftovers"]["temporary_files"]) == left
    assert any("removed what an interrupted earlier run left" in w for w in again["warnings"])
    assert _leftovers(pg, tmp, spool)["files"] == []
    assert pg.psql("SELECT count(*) FROM blob", target) == "300000\n"
    pg.psql('DROP DATABASE "%s"' % target)


def _module_process(_leader):
    """The module (python running AnsiballZ_pg_backup) of a tool run by ``docker exec``, whose
    parent is the container's shim: the one this test's ansible-playbook started (another test
    running at the same time in another worker has its own pg_backup modules)."""
    for pid in _pids_with(b"AnsiballZ_pg_backup"):
        if os.path.basename(_cmdline(pid).split(b"\0")[0]).startswith(b"python") and _descends_from_us(pid):
            return pid
    return None


def _descends_from_us(pid):
    while pid and pid > 1:
        if pid == os.getpid():
            return True
        pid = _ppid_or(pid)
    return False


def _container_dump_under_a_signal(pg_container, run_playbook, tmp_path, database, signum):
    """pg_dump of a new 20 MB database in the container, caught with 4 MB written, the module
    then sent ``signum``; returns (result, seen, the task's connection and store arguments)."""
    code, out = pg_container.exec_run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", "CREATE DATABASE " + database])
    assert code == 0, out
    code, out = pg_container.exec_run(["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", database, "-c",
                                       "CREATE TABLE blob AS SELECT g, md5(g::text) || md5((-g)::text) AS v"
                                       " FROM generate_series(1, 300000) g"])
    assert code == 0, out
    seen = {}

    def ready():
        return any(_written_bytes(p) > 4 * 1024 * 1024 for p in _pids_with(b"pg_dump", database.encode()))

    thread = threading.Thread(target=_hold_tool_and_signal, args=(b"pg_dump", database.encode(), signum, seen, ready,
                                                                  _module_process), daemon=True)
    thread.start()
    ctr = dict(docker_container=pg_container.name, host="127.0.0.1", password=pg_container.password,
               **file_args(tmp_path / "store"))
    res = run_playbook(play(task("dump", database=database, compression="none", **ctr)))
    thread.join()
    assert seen.get("tool"), "pg_dump was never caught mid-dump in the container"
    return res, seen, ctr


def _drop_in(container, database, pids):
    for pid in pids:  # whatever the verdict, no stopped tool stays behind
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    container.exec_run(["psql", "-X", "-q", "-c", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % database])


def test_sigterm_during_dump_in_a_container_stops_the_tool_there(pg_container, run_playbook, tmp_path):
    """Closing the exec's stream does not end pg_dump in the container: the module kills it."""
    seen = {}
    try:
        res, seen, _ctr = _container_dump_under_a_signal(pg_container, run_playbook, tmp_path, "bigc", signal.SIGTERM)
        assert "interrupted by signal 15" in failed(res.task("dump"))
        assert _gone(seen["group"]), "pg_dump still runs in the container after the SIGTERM of the module"
        assert _store_files(tmp_path / "store") == []
    finally:
        _drop_in(pg_container, "bigc", seen.get("group", []))


def test_sigkill_during_dump_in_a_container_the_next_run_stops_the_tool(pg_container, run_playbook, tmp_path):
    """A docker exec outlives the SIGKILLed module: the next run finds it by its owner and kills it."""
    seen = {}
    try:
        res, seen, ctr = _container_dump_under_a_signal(pg_container, run_playbook, tmp_path, "bigk", signal.SIGKILL)
        assert failed(res.task("dump"))
        assert os.path.exists("/proc/%d" % seen["tool"]), "the exec ended with its client: nothing to test"
        res = run_playbook(play(task("again", database="shop", **ctr)))
        again = ok(res.task("again"))
        assert again["leftovers"]["processes"] == ["pg_dump (pid %d)" % seen["tool"]]
        assert any("tool(s) still running pg_dump" in w for w in again["warnings"])
        assert _gone(seen["group"]), "the next run did not stop the pg_dump the killed one left"
    finally:
        _drop_in(pg_container, "bigk", seen.get("group", []))


def test_verified_checks_every_companion(pg, small_db, run_playbook, tmp_path):
    """A bit-flipped globals file fails the verification: a restore_globals would fail on it."""
    store = file_args(tmp_path / "store")
    res = run_playbook(play(task("dump", database=small_db, globals=True, series="comp-" + small_db, **conn(pg), **store)))
    ok(res.task("dump"))
    companion = next((tmp_path / "store").rglob("*.globals.sql.zst"))
    _damage(str(companion), "bitflip")
    res = run_playbook(play(task("verify", state="verified", series="comp-" + small_db, **conn(pg), **store)))
    msg = failed(res.task("verify"))
    assert "is corrupt" in msg and ".globals.sql.zst" in msg
    record = json.loads(next((tmp_path / "store").rglob("*.manifest.json")).read_text())["verification"]
    assert record["result"] == "failed" and "globals" in record["details"]["error"]
    assert databases(pg, "opskit_verify_") == []


def test_infrastructure_error_during_verify_keeps_the_earlier_verdict(pg, small_db, run_playbook, tmp_path):
    """CREATE DATABASE denied is no verdict on the backup: recorded as an error, `passed` stays."""
    store = file_args(tmp_path / "store")
    role, password = name("pgb_nocreate"), "pw-" + secrets.token_hex(6)
    pg.psql("CREATE ROLE %s LOGIN PASSWORD '%s'" % (role, password))
    series = "infra-" + small_db
    res = run_playbook(play(
        task("dump", database=small_db, series=series, **conn(pg), **store),
        task("verify", state="verified", series=series, **conn(pg), **store),
        task("denied", state="verified", series=series, **with_changes(conn(pg), user=role, password=password),
             **store),
    ))
    ok(res.task("dump"))
    assert ok(res.task("verify"))["verification"]["result"] == "passed"
    msg = failed(res.task("denied"))
    assert "could not be verified" in msg and "permission denied to create database" in msg
    record = json.loads(next((tmp_path / "store").rglob("*.manifest.json")).read_text())["verification"]
    assert record["result"] == "passed"
    assert "permission denied to create database" in record["last_error"]["details"]["error"]


def test_bad_durations_timeouts_and_jobs_are_one_line_errors_naming_the_option(pg, small_db, run_playbook, tmp_path):
    store = file_args(tmp_path / "store")
    tasks = [
        task("jobs huge", database=small_db, format="directory", jobs=100000, **conn(pg), **store),
        task("jobs negative", database=small_db, jobs=-2, **conn(pg), **store),
        {"name": "keep_within 3000y", "opskit.runbook.s3_rotate": dict(keep_within="3000y", keep_last=1, **store),
         "ignore_errors": True},
        {"name": "orphan_grace overflow", "ignore_errors": True,
         "opskit.runbook.s3_rotate": dict(orphan_grace="99999999999999999999d", keep_last=1, **store)},
        {"name": "deadline nan", "ignore_errors": True,
         "opskit.runbook.health_check": dict(deadline="nan", checks=[dict(type="disk", path="/")])},
        {"name": "timeout inf", "ignore_errors": True,
         "opskit.runbook.health_check": dict(checks=[dict(type="disk", path="/", timeout="inf")])},
    ]
    res = run_playbook(play(*tasks))
    expected = {
        "jobs huge": "jobs must be an integer from 1 to 64, got 100000",
        "jobs negative": "jobs must be an integer from 1 to 64, got -2",
        "keep_within 3000y": "keep_within: duration '3000y' is too long (at most 200 years)",
        "orphan_grace overflow": "orphan_grace: duration '99999999999999999999d' is too long",
        "deadline nan": "deadline must be a number of seconds > 0 and <= 604800, got nan",
        "timeout inf": "timeout must be a number >= 0.001 and <= 604800, got inf",
    }
    for name, message in expected.items():
        msg = failed(res.task(name))
        assert message in msg and "internal error" not in msg, (name, msg)
        assert "exception" not in res.task(name) or "Traceback" not in msg
    assert "Traceback" not in res.stdout + res.stderr


def _plant_plain_s3(location, series, text):
    """A plain-format backup stored as it is (compression none), so a proxy can cut its body."""
    sql = ("CREATE TABLE t (v text);\nINSERT INTO t VALUES ('%s');\n" % text).encode()
    with BackupSession(location, series, "postgres", compression="none") as session:
        with session.artifact("sql") as out:
            out.write(sql)
        return session.publish(source={"database": "planted", "format": "plain", "tables": 1, "globals": False})


def test_restore_downloads_once_pinned_and_resumed(pg, s3, run_playbook):
    """Item 14: the restore reads the backup once, through the retries (a dropped connection
    resumes with a Range), pinned to the ETag read with the manifest (If-Match): an object
    overwritten before the download is a clear error with nothing restored, and one
    overwritten after it does not get into the restore."""
    bucket = s3.new_bucket()
    store = s3_args(s3, bucket)
    location = open_location(store["destination"], endpoint_url=s3.endpoint_url, access_key=s3.access_key,
                             secret_key=s3.secret_key, region=s3.region)
    old, new = "old-" + "a" * 600000, "new-" + "b" * 600000  # same size: only the sha256 tells them apart
    proxy = FaultProxy(s3.port).start()
    try:
        paths, targets = {}, {}
        for case in ("cut", "overwritten before", "overwritten after"):
            series = "pin-%s-%s" % (case.split()[-1], secrets.token_hex(3))
            manifest = _plant_plain_s3(location, series, old)
            key = location.full_key("%s/%s" % (series, manifest["artifact"]))
            paths[case] = "/%s/%s" % (bucket, key)
            targets[case] = (series, name("pgb_pin"))

            def overwrite(key=key):
                s3.client.put_object(Bucket=bucket, Key=key, Body=(
                    "CREATE TABLE t (v text);\nINSERT INTO t VALUES ('%s');\n" % new).encode())
            proxy.rules[paths[case]] = {"cut": [{"cut": 300000}],
                                        "overwritten before": [{"before": overwrite}],
                                        "overwritten after": [{}, {"before": overwrite}]}[case]
        via_proxy = dict(store)
        via_proxy["endpoint_url"] = proxy.url
        res = run_playbook(play(*[task(case, state="restored", series=series, target_database=target, create=True,
                                       **conn(pg), **via_proxy) for case, (series, target) in targets.items()]))
    finally:
        proxy.stop()
    gets = {case: [(rng, status) for method, p, rng, status in proxy.seen if method == "GET" and p == path]
            for case, path in paths.items()}
    for case in ("cut", "overwritten after"):
        ok(res.task(case))
        assert pg.psql("SELECT left(v, 4), length(v) FROM t", targets[case][1]) == "old-|600004\n", case
    assert len(gets["overwritten after"]) == 1, gets  # one download, not a second read of a newer object
    assert gets["cut"][0][0] is None and gets["cut"][1][0].startswith("bytes=") and gets["cut"][1][0] != "bytes=0-"
    assert [status for _rng, status in gets["cut"]] == [200, 206]
    msg = failed(res.task("overwritten before"))
    assert "changed while it was being restored" in msg and "nothing was restored" in msg, msg
    assert gets["overwritten before"] == [(None, 412)]
    assert databases(pg, targets["overwritten before"][1]) == []
    for _series, target in targets.values():
        pg.psql('DROP DATABASE IF EXISTS "%s"' % target)
