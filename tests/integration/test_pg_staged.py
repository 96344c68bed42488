# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Staged restores (issue 20, item 4): a custom-format backup streamed into a staging database
and swapped in under the target's name only after the stream's sha256 matched, through
ansible-playbook against a real PostgreSQL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time

import psycopg2
import pytest

from pg_fixtures import plant_backup
from test_pg_backup import CONTENT_SQL, _cmdline, _damage, conn, databases, failed, file_args, name, ok, play, task

NEW_SQL = ("CREATE TABLE items (id int PRIMARY KEY, label text);"
           " CREATE TABLE notes (id serial PRIMARY KEY, item int REFERENCES items, body text);"
           " CREATE INDEX notes_body ON notes (body);"
           " INSERT INTO items SELECT g, 'new ' || g FROM generate_series(1, 20000) g;"
           " INSERT INTO notes (item, body) SELECT 1 + g % 20000, md5(g::text) FROM generate_series(1, 20000) g;")
OLD_SQL = ("CREATE TABLE items (id int PRIMARY KEY, label text); CREATE TABLE legacy (v text);"
           " INSERT INTO items SELECT g, 'old ' || g FROM generate_series(1, 50) g; INSERT INTO legacy VALUES ('only old');")
SHAPE_SQL = ("SELECT (SELECT string_agg(indexname, ',' ORDER BY indexname) FROM pg_indexes WHERE schemaname = 'public'),"
             " (SELECT string_agg(conname, ',' ORDER BY conname) FROM pg_constraint WHERE connamespace = 'public'::regnamespace)")


def content(pg, db):
    """Checksums of every table and the indexes and constraints of ``db``."""
    return pg.psql(CONTENT_SQL, db) + pg.psql(SHAPE_SQL, db)


def staged_dbs(pg, *targets):
    """Staging and retired databases of these targets (another test's are not ours)."""
    return sorted(d for d in databases(pg, "opskit_") if d.startswith(("opskit_stage_", "opskit_retired_"))
                  and any(d.endswith("_" + t) for t in targets))


@pytest.fixture(scope="module")
def backups(pg, tmp_path_factory):
    """A store with a good custom-format backup of a 20000-row database and a damaged copy."""
    source = name("pgs_src")
    pg.createdb(source)
    pg.psql(NEW_SQL, source)
    data = subprocess.run([os.path.join(pg.bin_dir, "pg_dump"), "--format=custom", "--compress=0", "-h", pg.host, "-p",
                           str(pg.port), "-U", pg.user, "-d", source], env=dict(os.environ, PGPASSWORD=pg.password),
                          check=True, capture_output=True).stdout
    store = tmp_path_factory.mktemp("staged")
    for series in ("good", "bitflip"):
        manifest = plant_backup(str(store), series, "custom", data, tables=2)
        if series != "good":
            _damage(str(store / series / manifest["artifact"]), series)
    return {"store": store, "new": content(pg, source), "source": source}


def old_target(pg, prefix, extra=""):
    db = name(prefix)
    pg.createdb(db)
    pg.psql(OLD_SQL + extra, db)
    return db, content(pg, db)


def restore_task(pg, label, series, target, store, jobs=2, **extra):
    return task(label, state="restored", series=series, target_database=target, clean=True, jobs=jobs,
                **extra, **conn(pg), **file_args(store))


# ------------------------------------------------------------------ helpers: processes

def _children(pid):
    """Children of every thread of ``pid`` (the data loaders are started by threads of their own)."""
    found = []
    try:
        for task_id in os.listdir("/proc/%d/task" % pid):
            with open("/proc/%d/task/%s/children" % (pid, task_id)) as fh:
                found += [int(p) for p in fh.read().split()]
    except OSError:
        pass
    return found


def _modules():
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and b"AnsiballZ_pg_backup" in _cmdline(int(entry)) and b"python" in _cmdline(int(entry)):
            found.append(int(entry))
    return found


def _catch(needles, deadline):
    """The (module, tool) pair once a tool (a direct child of a pg_backup module) has all
    ``needles`` in its command line; the modules' children are polled every millisecond."""
    modules, refreshed = [], 0.0
    while time.monotonic() < deadline:
        if time.monotonic() - refreshed > 0.1:  # a scan of /proc costs ~10 ms; a tool starts >1 s after its module
            modules, refreshed = _modules(), time.monotonic()
        for module in modules:
            for child in _children(module):
                if all(n in _cmdline(child) for n in needles):
                    return module, child
        time.sleep(0.001)
    return None, None


def _kill_at(phases, seen, after):
    """For each (label, needles) in turn: stop the tool (SIGSTOP), SIGKILL its module, and
    ``after(label)`` records what it left (before the next task's run removes it)."""
    for label, needles in phases:
        module, tool = _catch(needles, time.monotonic() + 60)
        if module is None:
            return
        os.kill(tool, signal.SIGSTOP)
        os.kill(module, signal.SIGKILL)
        while os.path.exists("/proc/%d" % module) and b"AnsiballZ" in _cmdline(module):
            time.sleep(0.01)
        seen[label] = after(label)


# ------------------------------------------------------------------------------- tests

def test_corrupt_client_and_keep_previous(pg, backups, run_playbook, tmp_path):
    """One playbook: a corrupt artifact leaves the target untouched; a client connected to the
    target throughout keeps working during the restore and is ended only at the swap; the
    database replaced with keep_previous is there, with the target's attributes carried over,
    and the documented undo brings it back. (state=verified streams the same way: the verify
    tests of test_pg_backup.py, jobs 1 and 2, run through it.)"""
    store = backups["store"]
    corrupt, corrupt_before = old_target(pg, "pgs_corrupt")
    client_db, _client_before = old_target(pg, "pgs_client")
    role = name("pgs_role")
    pg.psql("CREATE ROLE %s LOGIN" % role)
    keep, keep_before = old_target(pg, "pgs_keep")
    attrs = ("ALTER DATABASE {db} OWNER TO {role}; ALTER DATABASE {db} SET work_mem TO '7MB';"
             " ALTER ROLE {role} IN DATABASE {db} SET search_path TO \"$user\", public, 'odd\"name';"
             " REVOKE ALL ON DATABASE {db} FROM PUBLIC; GRANT CONNECT ON DATABASE {db} TO {role} WITH GRANT OPTION;"
             " ALTER DATABASE {db} CONNECTION LIMIT 17; COMMENT ON DATABASE {db} IS 'keep me: ''quoted'''")
    pg.psql(attrs.format(db=keep, role=role))
    attrs_sql = ("SELECT pg_get_userbyid(datdba), datconnlimit, datacl::text, shobj_description(oid, 'pg_database'),"
                 " (SELECT string_agg(coalesce(r.rolname, '-') || ':' || array_to_string(s.setconfig, ';'), ' '"
                 " ORDER BY r.rolname NULLS FIRST) FROM pg_db_role_setting s LEFT JOIN pg_roles r ON r.oid = s.setrole"
                 " WHERE s.setdatabase = d.oid) FROM pg_database d WHERE datname = '%s'")
    keep_attrs = pg.psql(attrs_sql % keep)

    client = psycopg2.connect(host=pg.host, port=pg.port, user=pg.user, password=pg.password, dbname=client_db)
    client.autocommit = True
    during = {}

    def query_during_post_data():
        module, tool = _catch([b"--section=post-data", client_db.encode()], time.monotonic() + 60)
        if tool is None:
            return
        os.kill(tool, signal.SIGSTOP)  # the data is in the staging database; the target is still the old one
        try:
            with client.cursor() as cur:
                cur.execute("SELECT count(*), min(label) FROM items")
                during["rows"] = cur.fetchone()
        finally:
            os.kill(tool, signal.SIGCONT)
    watcher = threading.Thread(target=query_during_post_data, daemon=True)
    watcher.start()
    res = run_playbook(play(
        restore_task(pg, "bitflip j2", "bitflip", corrupt, store),
        restore_task(pg, "client", "good", client_db, store),
        restore_task(pg, "keep", "good", keep, store, keep_previous=True),
    ))
    watcher.join()

    assert "is corrupt" in failed(res.task("bitflip j2"))  # jobs=1 and a truncation: test_pg_backup's corrupt test
    assert content(pg, corrupt) == corrupt_before
    assert staged_dbs(pg, corrupt) == []

    ok(res.task("client"))
    assert during.get("rows") == (50, "old 1"), "the client did not work while the restore ran: %s" % during
    with pytest.raises(psycopg2.OperationalError):  # ended at the swap
        with client.cursor() as cur:
            cur.execute("SELECT 1")
    client.close()
    assert content(pg, client_db) == backups["new"]

    kept = ok(res.task("keep"))["plan"]
    previous = kept["previous_database"]
    assert kept["steps"] == ["replace", "restore"] and previous.startswith("opskit_previous_") and previous.endswith(keep)
    assert content(pg, keep) == backups["new"] and content(pg, previous) == keep_before
    assert pg.psql(attrs_sql % keep) == keep_attrs  # owner, connection limit, privileges, comment, settings
    pg.psql("BEGIN; ALTER DATABASE %s RENAME TO %s_bad; ALTER DATABASE %s RENAME TO %s; COMMIT;"
            % (keep, keep, previous, keep))  # the undo of the module's documentation
    assert content(pg, keep) == keep_before
    pg.psql("DROP DATABASE %s_bad" % keep)


PHASES = [("data", [b"--section=data"]), ("post-data", [b"--section=post-data"]), ("swap", [b"RENAME TO"]),
          ("drop", [b"DROP DATABASE", b"opskit_retired_"])]


def test_kill_at_each_phase_leaves_the_old_or_the_new_database(pg, backups, run_playbook, tmp_path):
    """SIGKILL of the module while pg_restore loads the data, while it builds the indexes, at the
    swap and right after it: the target's name always holds the old or the new database, and the
    next run removes the staging and retired databases and the TOC file that are left."""
    store, spool, tmp = backups["store"], tmp_path / "spool", tmp_path / "tmp"
    spool.mkdir()
    tmp.mkdir()
    targets = {label: old_target(pg, "pgs_k") for label, _needles in PHASES}
    phases = [(label, needles + [targets[label][0].encode()]) for label, needles in PHASES]
    seen = {}

    def after(label):
        target, before = targets[label]
        return {"content": content(pg, target) in (before, backups["new"]), "old": content(pg, target) == before,
                "left": staged_dbs(pg, target), "toc": [p.name for p in spool.iterdir()]}
    killer = threading.Thread(target=_kill_at, args=(phases, seen, after), daemon=True)
    killer.start()
    again_target = targets["data"][0]
    res = run_playbook(play(*[restore_task(pg, label, "good", targets[label][0], store, tmp_dir=str(spool))
                              for label, _needles in PHASES] + [
        restore_task(pg, "again", "good", again_target, store, jobs=1, tmp_dir=str(spool))]), env={"TMPDIR": str(tmp)})
    killer.join()
    assert sorted(seen) == sorted(targets), "phases never caught: %s" % sorted(set(targets) - set(seen))
    for label in targets:
        assert failed(res.task(label)) and seen[label]["content"], label  # the old or the new one, never neither
        assert seen[label]["left"], "%s left nothing to clean up" % label
    for label in ("data", "post-data"):
        assert seen[label]["old"] and seen[label]["left"][0].startswith("opskit_stage_"), label
    assert any(n.startswith("opskit-pgrestore-") for n in seen["post-data"]["toc"])  # the file of the TOC
    assert not seen["drop"]["old"] and seen["drop"]["left"][0].startswith("opskit_retired_")
    again = ok(res.task("again"))
    assert set(seen["drop"]["left"]) <= set(again["leftovers"]["scratch_databases"])
    assert any("removed what an interrupted earlier run left" in w for w in again["warnings"])
    assert staged_dbs(pg, *[t for t, _before in targets.values()]) == [] and list(spool.iterdir()) == []
    assert content(pg, again_target) == backups["new"]
    shutil.rmtree(str(tmp), ignore_errors=True)


BIG_SQL = ("CREATE TABLE big (id int PRIMARY KEY, a text, b text); CREATE TABLE small (v text); CREATE TABLE empty (v int);"
           " INSERT INTO big SELECT g, md5(g::text), E'tab\\there, newline\\nand \\\\ ' || repeat('x', g % 300)"
           " FROM generate_series(1, 100000) g;"
           " INSERT INTO small VALUES ('one'), (E'two\\nlines'); SELECT lo_from_bytea(4242, '\\x000a0a00ff'::bytea);")
LO_SQL = "SELECT md5(lo_get(4242))"


def test_rows_of_a_large_table_are_shared_between_loaders(pg, run_playbook, tmp_path):
    """jobs=2: the rows of a table larger than staged_split.SPLIT_AFTER (8 MiB) are loaded by two
    pg_restore at once (the second one, with --use-list, is seen running), and the restored
    database equals the source: every table's checksum (rows with tabs, newlines, backslashes and
    lengths of every low byte), an empty table, a large object after the tables, the indexes."""
    source, target = name("pgs_big"), name("pgs_bigt")
    pg.createdb(source)
    pg.psql(BIG_SQL, source)
    data = subprocess.run([os.path.join(pg.bin_dir, "pg_dump"), "--format=custom", "--compress=0", "-h", pg.host, "-p",
                           str(pg.port), "-U", pg.user, "-d", source], env=dict(os.environ, PGPASSWORD=pg.password),
                          check=True, capture_output=True).stdout
    assert len(data) > 12 * 1024 * 1024
    store = tmp_path / "store"
    store.mkdir()
    plant_backup(str(store), "big", "custom", data, tables=3)
    seen = {}

    def watch():
        seen["side"] = _catch([b"--use-list=", b"--section=data", target.encode()], time.monotonic() + 120)
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    res = run_playbook(play(restore_task(pg, "big", "big", target, store, create=True)))
    watcher.join()
    assert ok(res.task("big"))["plan"]["staged"]
    assert seen["side"][1] is not None, "no second loader was seen"
    assert content(pg, target) == content(pg, source)
    assert pg.psql(LO_SQL, target) == pg.psql(LO_SQL, source) != ""
