# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""pg_backup state=restored with verify=true: the checks of a verification run in the restored
database (verify.check_database and verify.restore_checked), with a fake server and restore."""

from __future__ import annotations

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._postgres import verify as pv
from ansible_collections.opskit.runbook.plugins.module_utils._errors import OpsError


class FakeServer:
    def __init__(self, tables, rows):
        self._tables, self._rows, self.asked = tables, rows, []

    def tables(self, database):
        self.asked.append(("tables", database))
        return self._tables

    def query(self, sql, database):
        self.asked.append(("query", database))
        return self._rows


MANIFEST = {"id": "20261123T020000Z-5f2a9c1e", "series": "s", "source": {"database": "shop", "tables": 3}}
QUERY = [{"name": "orders", "query": "SELECT count(*) FROM orders", "expect": "300"}]


@pytest.mark.parametrize("tables, in_place, rows, error", [
    (3, False, [("300",)], None),
    (4, False, [("300",)], "restored 4 tables, the source had 3"),
    (4, True, [("300",)], None),                       # a clean restore in place keeps other tables
    (2, True, [("300",)], "restored 2 tables, the source had 3"),
    (3, True, [("100",)], "orders returned '100', expected '300'"),
])
def test_check_database(tables, in_place, rows, error):
    server, details = FakeServer(tables, rows), {}
    assert pv.check_database(server, MANIFEST, "shop", {"verify_queries": QUERY}, details, in_place=in_place) == error
    assert details["tables"] == tables and details["queries"][0]["value"] == rows[0][0]
    assert {db for _what, db in server.asked} == {"shop"}   # every check ran in the restored database


@pytest.mark.parametrize("verify, rows, fails", [(False, [("1",)], False), (True, [("300",)], False), (True, [("1",)], True)])
def test_restore_checked(monkeypatch, verify, rows, fails):
    restored = {"changed": True, "msg": "restored", "plan": {"target_database": "shop_copy"}, "backup": {"id": MANIFEST["id"]}}
    monkeypatch.setattr(pv, "find_backup", lambda location, params, server: MANIFEST)
    monkeypatch.setattr(pv, "restore", lambda server, location, params, check_mode=False, manifest=None: dict(restored))
    server = FakeServer(3, rows)
    params = {"verify": verify, "verify_queries": QUERY}
    if fails:
        with pytest.raises(OpsError) as exc:
            pv.restore_checked(server, None, params)
        assert "was restored, its checks failed in the restored database: orders returned '1'" in exc.value.msg
        assert exc.value.result["verification"]["result"] == "failed"
    else:
        result = pv.restore_checked(server, None, params)
        assert ("verification" in result) == verify and result["msg"] == "restored"
        assert server.asked == ([("tables", "shop_copy"), ("query", "shop_copy")] if verify else [])
