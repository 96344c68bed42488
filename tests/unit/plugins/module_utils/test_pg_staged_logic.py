# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain logic of the staged restore: the TOC walk, names, settings, the swap SQL, leftovers."""

from __future__ import annotations

import io
import json

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, NotFoundError
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import cleanup, staged_swap
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.restore import staged_plan, uses_staging
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.staged_toc import (
    TocTap, UnsupportedArchive, toc_end)


def _int(value, size=4):
    return bytes([1 if value < 0 else 0]) + abs(value).to_bytes(size, "little")


def _str(text):
    if text is None:
        return _int(-1)
    data = text.encode()
    return _int(len(data)) + data


def archive(version=(1, 14), entries=2, fmt=1, data=b"DATA BLOCKS"):
    """A custom-format archive as pg_dump writes it (header, TOC, then data)."""
    out = b"PGDMP" + bytes([version[0], version[1], 0, 4, 8, fmt])
    out += bytes([0]) if version >= (1, 15) else _int(0)
    out += b"".join(_int(v) for v in (1, 2, 3, 4, 5, 126, 0))
    out += _str("app") + _str("15.13") + _str("15.13") + _int(entries)
    for dump_id in range(1, entries + 1):
        out += _int(dump_id) + _int(1) + _str("1259") + _str(str(16000 + dump_id)) + _str("t%d" % dump_id)
        out += _str("TABLE") + _int(2) + _str("CREATE TABLE t (v text);") + _str("DROP TABLE t;") + _str(None)
        out += _str("public") + _str("")
        if version >= (1, 14):
            out += _str("heap")
        if version >= (1, 16):
            out += _int(ord("r"))
        out += _str("postgres") + _str("false") + _str("1") + _str(None) + bytes([2]) + bytes(8)
    return out, len(out), out + data


@pytest.mark.parametrize("version", [(1, 12), (1, 13), (1, 14), (1, 15), (1, 16)])
def test_toc_end_is_where_the_data_starts(version):
    _toc, end, whole = archive(version)
    assert toc_end(whole) == end
    assert all(toc_end(whole[:cut]) is None for cut in (0, 5, 40, end - 1))


@pytest.mark.parametrize("case, message", [
    (b"PGDMQ" + bytes(40), "no PGDMP header"),
    (archive((1, 17))[2], "version 1.17 is not supported"),
    (archive((1, 11))[2], "version 1.11 is not supported"),
    (archive(fmt=3)[2], "not of the custom format"),
])
def test_toc_end_refuses_what_it_cannot_read(case, message):
    with pytest.raises(UnsupportedArchive, match=message):
        toc_end(case)


def test_toc_tap_passes_everything_and_keeps_the_toc_only():
    toc, _end, whole = archive(entries=300, data=b"x" * 100000)
    tap = TocTap(io.BytesIO(whole))
    passed = b""
    while True:
        chunk = tap.read(1000)
        if not chunk:
            break
        passed += chunk
    assert passed == whole and tap.finish() == toc


def test_toc_tap_stops_at_its_limit_and_a_short_stream():
    _toc, _end, whole = archive(entries=50)
    with pytest.raises(UnsupportedArchive, match="larger than"):
        tap = TocTap(io.BytesIO(whole), limit=200)
        while tap.read(100):
            pass
    tap = TocTap(io.BytesIO(whole[:300]))
    while tap.read(100):
        pass
    with pytest.raises(UnsupportedArchive, match="ends before its TOC"):
        tap.finish()


@pytest.mark.parametrize("target", ["app", "x" * 63, "ünïcödé-" * 8, 'we"ird'])
def test_staged_names_fit_and_are_recognized(target):
    for kind in (cleanup.STAGE, cleanup.RETIRED, cleanup.PREVIOUS):
        name = cleanup.staged_name(kind, target, now=1764558000)
        assert len(name.encode()) <= 63 and cleanup.STAGED_RE.match(name).group(1) == kind
        assert target.startswith(name.split("_", 4)[4])


def test_stale_staged_drops_dead_owners_and_old_foreign_ones_never_previous():
    now = 1764558000
    comment = json.dumps({"opskit.runbook": "stage", "target": "app", "owner": "o"})
    rows = [("opskit_stage_1764557990_0000000a_app", comment.replace('"o"', '"gone"'), "2"),
            ("opskit_retired_1764557990_0000000b_app", comment.replace('"o"', '"alive"'), "0"),
            ("opskit_stage_1764550000_0000000c_app", comment.replace('"o"', '"elsewhere"'), "0"),
            ("opskit_stage_1764550000_0000000d_app", comment.replace('"o"', '"elsewhere"'), "1"),
            ("opskit_stage_1764557500_0000000e_app", "not ours", "0"),  # young: maybe killed before its comment
            ("opskit_previous_1764550000_0000000f_app", comment.replace('"o"', '"gone"'), "0"),
            ("app", "", "0")]
    states = {"gone": "gone", "alive": "alive"}
    found = cleanup.stale_staged(rows, now, state=lambda tag: states.get(tag, "unknown"))
    assert found == [("opskit_stage_1764550000_0000000c_app", False), ("opskit_stage_1764557990_0000000a_app", True)]


def test_owner_state_of_this_process_and_of_garbage():
    import os  # pylint: disable=import-outside-toplevel
    from ansible_collections.opskit.runbook.plugins.module_utils._postgres.tools import owner_tag  # pylint: disable=import-outside-toplevel
    assert cleanup.owner_state(owner_tag(os.getpid())) == "alive"
    assert cleanup.owner_state("x|y") == "unknown" and cleanup.owner_state(None) == "unknown"
    assert cleanup.parse_staged_comment("plain comment") == {} and cleanup.parse_staged_comment(None) == {}


@pytest.mark.parametrize("value, items", [
    ('"$user", public', ["$user", "public"]),
    ('a, "b,c", "d""e"', ["a", "b,c", 'd"e']),
    ("", []),
])
def test_split_guc_list(value, items):
    assert staged_swap.split_guc_list(value) == items


def test_setting_sql_quotes_names_values_and_lists():
    assert staged_swap.setting_sql("db", "", "work_mem=7MB") == "ALTER DATABASE \"db\" SET \"work_mem\" TO '7MB'"
    assert staged_swap.setting_sql("db", "r", 'search_path="$user", public') == (
        "ALTER ROLE \"r\" IN DATABASE \"db\" SET \"search_path\" TO '$user', 'public'")
    assert staged_swap.setting_sql("db", "", "app.note=it's") == "ALTER DATABASE \"db\" SET \"app.note\" TO 'it''s'"


OLD = {"owner": "app_owner", "comment": "prod's", "settings": [["", "work_mem=7MB"]], "acl_default": False,
       "acl": [["CONNECT", "", "f"], ["CREATE", "app_owner", "t"]], "connlimit": 17}


def test_carry_over_sql():
    assert staged_swap.carry_over_sql("s", OLD) == [
        "ALTER DATABASE \"s\" SET \"work_mem\" TO '7MB'", "REVOKE ALL ON DATABASE \"s\" FROM PUBLIC",
        "GRANT CONNECT ON DATABASE \"s\" TO PUBLIC", "GRANT CREATE ON DATABASE \"s\" TO \"app_owner\" WITH GRANT OPTION",
        "ALTER DATABASE \"s\" CONNECTION LIMIT 17"]
    assert staged_swap.carry_over_sql("s", dict(OLD, settings=[], acl_default=True, connlimit=-1)) == []


def test_swap_sql_is_one_transaction_terminate_first_then_both_renames():
    sql = staged_swap.swap_sql("stage", "app", OLD, "retired", "retired", "B1")
    parts = sql.split("; ")
    assert parts[0] == "BEGIN" and parts[-1] == "COMMIT"
    assert parts[1].startswith("SELECT pg_terminate_backend(pid)") and "datname = 'app'" in parts[1]
    assert parts[2:5] == ['ALTER DATABASE "app" RENAME TO "retired"', 'ALTER DATABASE "stage" RENAME TO "app"',
                          'ALTER DATABASE "app" OWNER TO "app_owner"']
    assert parts[-2] == "COMMENT ON DATABASE \"app\" IS 'prod''s'"
    new = staged_swap.swap_sql("stage", "app", None, None, "retired", "B1").split("; ")
    assert new == ["BEGIN", 'ALTER DATABASE "stage" RENAME TO "app"', 'COMMENT ON DATABASE "app" IS NULL', "COMMIT"]


def test_staged_plan_and_when_it_applies():
    assert staged_plan(False, True, True, False, "app") == ["create", "restore"]
    assert staged_plan(True, True, False, False, "app") == ["replace", "restore"]
    assert staged_plan(True, False, False, True, "app") == ["replace", "restore"]
    with pytest.raises(NotFoundError, match="create=true"):
        staged_plan(False, True, False, False, "app")
    with pytest.raises(ConfigError, match="not empty: set clean=true to replace it"):
        staged_plan(True, False, False, False, "app")
    assert uses_staging("custom", {}, False) and uses_staging("custom", {"force": True}, True)
    assert not uses_staging("custom", {"staged": False}, False) and not uses_staging("custom", {"force": True}, False)
    assert not uses_staging("plain", {}, True) and not uses_staging("directory", {}, False)
