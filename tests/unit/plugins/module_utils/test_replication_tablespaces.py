# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain logic of base backups with tablespaces: the BASE_BACKUP command, the CopyData splitter,
the manifest's WAL-Ranges, tablespace_mapping and the tablespace directory rules."""

from __future__ import annotations

import json
import os

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, IntegrityError
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import pitr_tablespaces as pt
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import replication as rp
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.physical import replication_compression

SPACES = [{"oid": 16384, "name": "space", "location": "/srv/pg/space"},
          {"oid": 16390, "name": "cold", "location": "/srv/pg/cold"}]


@pytest.mark.parametrize("args, expected", [
    ((), "BASE_BACKUP (LABEL 'o''x', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TABLESPACE_MAP true)"),
    (("zstd", 3, 2), "BASE_BACKUP (LABEL 'o''x', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TABLESPACE_MAP true,"
                     " COMPRESSION 'zstd', COMPRESSION_DETAIL 'level=3,workers=2')"),
    (("gzip", 6, None), "BASE_BACKUP (LABEL 'o''x', CHECKPOINT 'fast', WAIT false, MANIFEST 'yes', TABLESPACE_MAP true,"
                        " COMPRESSION 'gzip', COMPRESSION_DETAIL 'level=6')"),
])
def test_base_backup_command(args, expected):
    assert rp.base_backup_command("o'x", *args) == expected


@pytest.mark.parametrize("params, version, expected", [
    ({"compression": "zstd", "compression_threads": 2}, "15.13", ("zstd", 3, 2)),
    ({"compression": "zstd", "compression_threads": 0, "compression_level": 9}, "15.13", ("zstd", 9, None)),
    ({"compression": "gzip", "compression_threads": 4}, "15.13", ("gzip", 6, None)),
    ({"compression": "zstd", "server_compression": False}, "15.13", None),
    ({"compression": "none"}, "15.13", None),
    ({"compression": "zstd"}, "14.9", None),
])
def test_replication_compression(params, version, expected):
    assert replication_compression(params, {"server_version": version}) == expected


class Writer:
    def __init__(self, log, name):
        self.log, self.name, self.data, self.closed = log, name, b"", False

    def write(self, data):
        assert not self.closed
        self.data += data

    def close(self):
        self.closed = True
        self.log.append(self.name)


def test_splitter_dispatches_archives_and_manifest():
    closed, writers = [], {}

    def open_archive(name, path):
        writers[name] = Writer(closed, name)
        writers[name].path = path
        return writers[name]

    sink = rp.ArchiveSplitter(open_archive)
    manifest = json.dumps({"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}).encode()
    for message in (b"n16384.tar.zst\0/srv/pg/space\0", b"dts-1", memoryview(b"dts-2"), b"p" + (8192).to_bytes(8, "big"),
                    b"nbase.tar.zst\0\0", b"dbase", b"m", b"d" + manifest[:10], b"d" + manifest[10:]):
        sink.write(message)
    sink.finish()
    assert writers["16384.tar.zst"].data == b"ts-1ts-2" and writers["16384.tar.zst"].path == "/srv/pg/space"
    assert writers["base.tar.zst"].data == b"base" and closed == ["16384.tar.zst", "base.tar.zst"]
    assert sink.progress == 8192 and sink.messages == {b"n": 2, b"d": 5, b"p": 1, b"m": 1}
    assert rp.manifest_wal_range(sink.manifest) == {"start_lsn": "0/2000028", "timeline": 1, "stop_lsn": "0/2000100",
                                                    "stop_timeline": 1}


@pytest.mark.parametrize("messages, error", [
    ([b"dx"], "data before any archive"),
    ([b"nfoo.tar\0\0"], "not base.tar or <oid>.tar"),
    ([b"x"], "unknown type"),
    ([b"n16384.tar\0/x\0", b"dx"], "without its base archive"),
])
def test_splitter_refuses(messages, error):
    sink = rp.ArchiveSplitter(lambda name, path: Writer([], name))
    with pytest.raises(IntegrityError, match=error):
        for message in messages:
            sink.write(message)
        sink.finish()


def test_manifest_wal_range_refuses_garbage():
    with pytest.raises(IntegrityError, match="cannot be read"):
        rp.manifest_wal_range(b"{}")


@pytest.mark.parametrize("mapping, expected", [
    (None, {}),
    ({"16384": "/a"}, {16384: "/a"}),
    ({16390: "/b/"}, {16390: "/b"}),
    ({"space": "/a", "/srv/pg/cold": "/b"}, {16384: "/a", 16390: "/b"}),
])
def test_check_mapping(mapping, expected):
    assert rp.check_mapping(mapping, SPACES) == expected


@pytest.mark.parametrize("mapping, error", [
    ({"nope": "/a"}, "names no tablespace"),
    ({"space": "relative"}, "absolute path"),
])
def test_check_mapping_refuses(mapping, error):
    with pytest.raises(ConfigError, match=error):
        rp.check_mapping(mapping, SPACES)


def test_tablespace_directory_rules(tmp_path):
    assert pt.check_tablespace_directory(str(tmp_path / "absent"), False) == "create"
    assert pt.check_tablespace_directory(str(tmp_path), False) == "use"
    (tmp_path / "PG_15_202209061").mkdir()
    with pytest.raises(ConfigError, match="is not empty"):
        pt.check_tablespace_directory(str(tmp_path), False)
    assert pt.check_tablespace_directory(str(tmp_path), True) == "replace"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ConfigError, match="not a tablespace directory"):
        pt.check_tablespace_directory(str(tmp_path), True)


def test_plan_tablespaces_defaults(tmp_path):
    base = {"source": {"tablespaces": [dict(SPACES[0], location=str(tmp_path / "orig"))]}}
    drill = pt.plan_tablespaces(base, {}, drill=True)
    assert drill[0]["directory"] is None
    assert pt.scratch_directories(drill, "/s")[0]["directory"] == "/s/tablespace-16384"
    restore = pt.plan_tablespaces(base, {"data_directory": "/d"}, drill=False)
    assert restore[0]["directory"] == str(tmp_path / "orig") and restore[0]["step"] == "create"
    with pytest.raises(ConfigError, match="two tablespaces into one directory"):
        pt.plan_tablespaces({"source": {"tablespaces": SPACES}}, {"tablespace_mapping": {"space": "/x", "cold": "/x"}},
                            drill=True)


def test_link_tablespaces(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pt.link_tablespaces(str(data), [{"oid": 16384, "directory": "/new/space"}])
    assert (data / "tablespace_map").read_text() == "16384 /new/space\n"
    assert os.readlink(str(data / "pg_tblspc" / "16384")) == "/new/space"
