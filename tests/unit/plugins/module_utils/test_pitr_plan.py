# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Plain logic of point-in-time recovery: WAL names, the tar tap, targets, base choice, the WAL
a recovery needs, the data directory rules and opskit-wal against a real file:// location."""

from __future__ import annotations

import datetime
import gzip
import io
import json
import os
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._errors import ConfigError, IntegrityError, ServiceError
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import physical as ph
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import pitr
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import pitr_apply as pa
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import wal
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import wal_cli
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

UTC = datetime.timezone.utc
SEG = 16 * 1024 * 1024


@pytest.mark.parametrize("text, value", [("0/0", 0), ("0/3000028", 0x3000028), ("16/B374D848", (0x16 << 32) | 0xB374D848)])
def test_lsn_round_trip(text, value):
    assert wal.parse_lsn(text) == value and wal.format_lsn(value) == text.upper()


@pytest.mark.parametrize("bad", ["", "0-1", "x/1", "1/2/3", None])
def test_bad_lsn(bad):
    with pytest.raises(ConfigError):
        wal.parse_lsn(bad)


def test_segment_names():
    assert wal.segment_name(1, 3) == "000000010000000000000003"
    assert wal.segment_name(2, 256) == "000000020000000100000000"
    assert wal.segment_number("000000020000000100000000") == (2, 256)


@pytest.mark.parametrize("name, ok", [("000000010000000000000003", True), ("00000002.history", True),
                                      ("000000010000000000000002.00000028.backup", True),
                                      ("000000010000000000000002.partial", True), ("../etc/passwd", False),
                                      ("00000001000000000000000", False), ("RECOVERYHISTORY", False)])
def test_validate_file(name, ok):
    if ok:
        assert wal.validate_file(name) == name[:8]
    else:
        with pytest.raises(ConfigError):
            wal.validate_file(name)


def test_gaps():
    files = {wal.segment_name(1, n): {} for n in (2, 3, 6, 7, 9)}
    files["00000001.history"] = {}
    found = wal.gaps(files)
    assert [(g["first_missing"], g["missing"]) for g in found] == [(wal.segment_name(1, 4), 2), (wal.segment_name(1, 8), 1)]


def _tar(members):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


LABEL = (b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\nCHECKPOINT LOCATION: 0/2000060\n"
         b"BACKUP METHOD: streamed\nBACKUP FROM: primary\nSTART TIME: 2026-12-01 14:19:10 UTC\nLABEL: opskit x\n"
         b"START TIMELINE: 1\n")


@pytest.mark.parametrize("chunk", [1, 511, 512, 4096, 1 << 20])
def test_tar_tap_keeps_label_and_manifest(chunk):
    manifest = json.dumps({"WAL-Ranges": [{"Timeline": 1, "Start-LSN": "0/2000028", "End-LSN": "0/2000100"}]}).encode()
    data = _tar([("backup_label", LABEL), ("base/1/1259", os.urandom(3000)), ("backup_manifest", manifest)])
    tap = ph.TarTap(io.BytesIO(data))
    passed = b"".join(iter(lambda: tap.read(chunk), b""))
    assert passed == data
    assert tap.members == {"backup_label": LABEL, "backup_manifest": manifest}
    label = ph.parse_label(LABEL.decode())
    assert (label["start_lsn"], label["start_wal"], label["timeline"]) == ("0/2000028", "000000010000000000000002", 1)
    assert ph.parse_backup_manifest(manifest) == {"stop_lsn": "0/2000100", "stop_timeline": 1}


@pytest.mark.parametrize("compression", ["zstd", "gzip"])
def test_head_tap_reads_the_label_from_a_compressed_head_only(compression):
    data = _tar([("backup_label", LABEL), ("tablespace_map", b""), ("base/1/1259", os.urandom(3 * ph.HEAD_LIMIT))])
    if compression == "zstd":
        import zstandard
        stored = zstandard.ZstdCompressor(level=1).compress(data)
    else:
        stored = gzip.compress(data, 1)
    tap = ph.HeadTap(io.BytesIO(stored), compression)
    assert b"".join(iter(lambda: tap.read(65536), b"")) == stored  # passed unchanged
    assert tap.complete("backup_label") and tap.members == {"backup_label": LABEL}
    assert tap.done and tap.scanned < ph.HEAD_LIMIT  # the rest was never decompressed
    tap = ph.HeadTap(io.BytesIO(gzip.compress(_tar([("base/1/1259", os.urandom(2 * ph.HEAD_LIMIT))]))), "gzip")
    while tap.read(65536):
        pass
    assert tap.done and not tap.complete("backup_label")  # gave up after HEAD_LIMIT: no label first


VERBOSE = ("pg_basebackup: initiating base backup, waiting for checkpoint to complete\n"
           "pg_basebackup: checkpoint completed\n"
           "pg_basebackup: write-ahead log start point: 0/2000028 on timeline 1\n"
           "pg_basebackup: write-ahead log end point: 0/3000050\n"
           "pg_basebackup: syncing data to disk ...\npg_basebackup: base backup completed\n")


def test_parse_verbose_stop():
    assert ph.parse_verbose_stop(VERBOSE, "0/2000028") == "0/3000050"
    translated = VERBOSE.replace("write-ahead log end point", "Endpunkt des Write-Ahead-Logs")
    assert ph.parse_verbose_stop(translated, "0/2000028") == "0/3000050"
    for text, start in ((VERBOSE, "0/2000030"), ("pg_basebackup: base backup completed\n", "0/2000028"),
                        (VERBOSE.replace("0/3000050", "0/1000000"), "0/2000028")):
        with pytest.raises(IntegrityError, match="did not report the start"):
            ph.parse_verbose_stop(text, start)


@pytest.mark.parametrize("params, server, tool, spec", [
    ({"compression": "zstd", "compression_threads": 2}, "15.5 (Debian 15.5-0+deb12u1)", "15.5", "server-zstd:level=3,workers=2"),
    ({"compression": "zstd", "compression_threads": 0, "compression_level": 1}, "15.5", "15.5", "server-zstd:level=1"),
    ({"compression": "zstd", "compression_threads": -1}, "16.1", "16.1", "server-zstd:level=3,workers=%d" % (os.cpu_count() or 1)),
    ({"compression": "gzip", "compression_threads": 2}, "15.5", "15.5", "server-gzip:level=6"),
    ({"compression": "none"}, "15.5", "15.5", None),
    ({"compression": "zstd", "server_compression": False}, "15.5", "15.5", None),
    ({"compression": "zstd"}, "14.10", "15.5", None),
    ({"compression": "zstd"}, "15.5", "14.10", None),
])
def test_server_compression(params, server, tool, spec):
    assert ph.server_compression(params, {"server_version": server}, tool) == spec


class _Archiver:
    """A server answering the archive queries: ``answers`` for the archived check (the last repeats),
    ``status_dir`` False: pg_ls_archive_statusdir() is refused (no pg_monitor), ``switch`` an exception
    to raise for pg_switch_wal() (no EXECUTE on it)."""

    def __init__(self, answers, status_dir=True, switch=None):
        self.answers, self.sql, self.status_dir, self.switch = list(answers), [], status_dir, switch

    def query(self, sql):
        self.sql.append(sql)
        if "pg_switch_wal" in sql:
            if self.switch:
                raise self.switch
            return [["0/4000100"]]
        if "pg_ls_archive_statusdir" in sql and not self.status_dir:
            raise ServiceError("query on pg/postgres failed: permission denied for function pg_ls_archive_statusdir")
        return [[self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]]]

    def switches(self):
        return [sql for sql in self.sql if "pg_switch_wal" in sql]


def test_wait_archived_polls_until_the_stop_segment_is_archived():
    server = _Archiver(["f", "f", "t"])
    assert ph.wait_archived(server, "000000010000000000000003", timeout=5, interval=0.001)
    assert len(server.sql) == 3 and not server.switches()
    assert server.sql[0] == ("SELECT coalesce(last_archived_wal >= '000000010000000000000003', false) OR EXISTS"
                             " (SELECT 1 FROM pg_ls_archive_statusdir() WHERE name = '000000010000000000000003.done')"
                             " FROM pg_stat_archiver")
    assert not ph.wait_archived(_Archiver(["f"]), "000000010000000000000003", timeout=0.01, interval=0.001)


def test_wait_archived_with_the_status_directory_never_switches():
    """The state seen in bench/pitr.py: the stop segment archived (its .done there), the backup's history
    file archived after it and named by last_archived_wal. The status directory answers; no switch."""
    server = _Archiver(["f"] * 3 + ["t"])
    assert ph.wait_archived(server, "000000010000000000000053", timeout=5, interval=0.001, nudge_after=0,
                            slow_interval=0.001)
    assert not server.switches() and all("000000010000000000000053.done" in sql for sql in server.sql)


@pytest.mark.parametrize("switch", [None, ServiceError("permission denied for function pg_switch_wal")],
                         ids=["switched", "no-execute-right"])
def test_wait_archived_without_the_status_directory_switches_once(switch):
    server = _Archiver(["f"] * 5 + ["t"], status_dir=False, switch=switch)
    assert ph.wait_archived(server, "000000010000000000000003", timeout=5, interval=0.001, nudge_after=0,
                            slow_interval=0.001)
    assert server.switches() == ["SELECT pg_switch_wal()"]  # once, whether it was allowed or not
    checks = [sql for sql in server.sql if "pg_switch_wal" not in sql]
    assert "pg_ls_archive_statusdir" in checks[0] and not any("pg_ls_archive_statusdir" in sql for sql in checks[1:])
    assert ph.switch_wal(_Archiver(["f"], switch=switch)) is (switch is None)


def test_basebackup_argv():
    class Tools:
        def path(self, name):
            return "/usr/bin/" + name
    argv = ph.basebackup_argv(Tools(), "opskit x", compress="server-zstd:level=3")
    assert argv[-4:] == ["--compress=server-zstd:level=3", "--wal-method=fetch", "--no-manifest", "--verbose"]
    assert ph.basebackup_argv(Tools(), "opskit x")[-1] == "--wal-method=none"


def test_tar_size_base256():
    assert ph.tar_size(b"\x80" + (5 << 33).to_bytes(11, "big")) == 5 << 33
    assert ph.tar_size(b"00000001000\0") == 512


@pytest.mark.parametrize("params, kind", [({}, "latest"), ({"target": "immediate"}, "immediate"),
                                          ({"target_lsn": "0/3000060"}, "lsn"),
                                          ({"target_time": "2026-12-01 14:30:00.5+00"}, "time"),
                                          ({"target_time": "2026-12-01T14:30:00Z"}, "time")])
def test_parse_target(params, kind):
    assert pitr.parse_target(params)["kind"] == kind


@pytest.mark.parametrize("params, text", [({"target": "latest", "target_lsn": "0/1"}, "exclude each other"),
                                          ({"target_time": "2026-12-01 14:30:00"}, "no time zone"),
                                          ({"target_time": "yesterday"}, "is not a time"),
                                          ({"target": "earliest"}, "not latest or immediate")])
def test_parse_target_refused(params, text):
    with pytest.raises(ConfigError, match=text):
        pitr.parse_target(params)


def _base(backup_id, stop_time, stop_lsn, start_lsn=None, tli=1):
    start = start_lsn or stop_lsn
    return {"id": backup_id, "series": "s", "kind": ph.KIND, "source": {
        "stop_time": stop_time, "stop_lsn": stop_lsn, "start_lsn": start, "timeline": tli, "wal_segment_size": SEG,
        "stop_wal": wal.segment_name(tli, wal.parse_lsn(stop_lsn) // SEG)}}


def test_choose_base():
    backups = [_base("b2", "2026-12-02T00:00:00Z", "0/5000100"), _base("b1", "2026-12-01T00:00:00Z", "0/2000100")]
    at = pitr.parse_target({"target_time": "2026-12-01T12:00:00Z"})
    assert pitr.choose_base(backups, at)["id"] == "b1"
    assert pitr.choose_base(backups, pitr.parse_target({"target_lsn": "0/6000000"}))["id"] == "b2"
    assert pitr.choose_base(backups, pitr.parse_target({}))["id"] == "b2"
    with pytest.raises(ConfigError, match="before the end of the oldest base backup"):
        pitr.choose_base(backups, pitr.parse_target({"target_time": "2026-11-30T00:00:00Z"}))


def _index(numbers, tli=1, archived=None):
    archived = archived or {}
    default = datetime.datetime(2026, 12, 1, tzinfo=UTC)
    files = {}
    for n in numbers:
        files[wal.segment_name(tli, n)] = {"file": wal.segment_name(tli, n), "archived_at": archived.get(n, default)}
    return {"%08X" % tli: files}


def test_wal_needed_latest_and_gap():
    base = _base("b", "2026-12-01T00:00:00Z", "0/2000100", "0/2000028")
    entries = pitr.wal_needed(None, "s", _index([2, 3, 4]), base, pitr.parse_target({}))
    assert [e["file"][-2:] for e in entries] == ["02", "03", "04"]
    with pytest.raises(IntegrityError, match="000000010000000000000004 of series s is missing"):
        pitr.wal_needed(None, "s", _index([2, 3, 5]), base, pitr.parse_target({}))
    with pytest.raises(IntegrityError, match="not even the end of base backup"):
        pitr.wal_needed(None, "s", _index([3, 4]), base, pitr.parse_target({}))


def test_wal_needed_stops_at_target():
    base = _base("b", "2026-12-01T00:00:00Z", "0/2000100", "0/2000028")
    late = {n: datetime.datetime(2026, 12, 1, 0, n, tzinfo=UTC) for n in range(2, 9)}
    index = _index([2, 3, 4, 6], archived=late)  # 5 is missing, after both targets
    by_lsn = pitr.wal_needed(None, "s", index, base, pitr.parse_target({"target_lsn": "0/3000500"}))
    assert [e["file"][-2:] for e in by_lsn] == ["02", "03", "04"]  # 04: the record after the target, checked
    by_time = pitr.wal_needed(None, "s", index, base, pitr.parse_target({"target_time": "2026-12-01T00:03:30Z"}))
    assert by_time[-1]["file"].endswith("04")
    immediate = pitr.wal_needed(None, "s", index, base, pitr.parse_target({"target": "immediate"}))
    assert [e["file"][-2:] for e in immediate] == ["02", "03"]


def test_restore_command_quotes_and_escapes():
    command = pa.restore_command(["/opt/opskit wal/opskit-wal", "--config", "/etc/100%.json"])
    assert command == "'/opt/opskit wal/opskit-wal' --config /etc/100%%.json fetch %f %p"
    with pytest.raises(ConfigError, match="wal_helper is required"):
        pa.restore_command(None)


def test_check_data_directory(tmp_path):
    assert pa.check_data_directory(str(tmp_path / "new"), False) == "create"
    assert pa.check_data_directory(str(tmp_path), False) == "use"
    (tmp_path / "file").write_text("x")
    with pytest.raises(ConfigError, match="is not empty"):
        pa.check_data_directory(str(tmp_path), False)
    with pytest.raises(ConfigError, match="not a PostgreSQL data directory"):
        pa.check_data_directory(str(tmp_path), True)
    (tmp_path / "PG_VERSION").write_text("15\n")
    assert pa.check_data_directory(str(tmp_path), True) == "replace"
    (tmp_path / "postmaster.pid").write_text("%d\n" % os.getpid())
    with pytest.raises(ConfigError, match="running cluster"):
        pa.check_data_directory(str(tmp_path), True)
    with pytest.raises(ConfigError, match="absolute"):
        pa.check_data_directory("relative/dir", False)


def _config(tmp_path, mode=0o600, **extra):
    path = tmp_path / "wal.json"
    path.write_text(json.dumps(dict(dict(location="file://%s" % (tmp_path / "store"), series="s", compression="gzip"), **extra)))
    os.chmod(path, mode)
    (tmp_path / "store").mkdir(exist_ok=True)
    return str(path)


def test_opskit_wal_push_fetch_corrupt(tmp_path):
    config = _config(tmp_path)
    segment = tmp_path / "000000010000000000000002"
    segment.write_bytes(os.urandom(1000) * 64)
    err = io.StringIO()
    assert wal_cli.run(["--config", config, "push", str(segment), segment.name], err) == 0
    assert wal_cli.run(["--config", config, "push", str(segment), segment.name], err) == 0  # a retried push
    other = tmp_path / "other"
    other.write_bytes(b"different")
    assert wal_cli.run(["--config", config, "push", str(other), segment.name], err) == 1
    assert "other content" in err.getvalue()
    out = tmp_path / "restored"
    assert wal_cli.run(["--config", config, "fetch", segment.name, str(out)], err) == 0
    assert out.read_bytes() == segment.read_bytes()
    assert wal_cli.run(["--config", config, "fetch", "000000010000000000000009", str(tmp_path / "n")], err) == 1
    index = wal.wal_index(open_location("file://%s" % (tmp_path / "store")), "s")
    stored = tmp_path / "store" / index["00000001"][segment.name]["key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    out.unlink()
    assert wal_cli.run(["--config", config, "fetch", segment.name, str(out)], err) == 126
    assert not out.exists() and not [p for p in os.listdir(tmp_path) if p.startswith(".opskit-wal-")]


class _NoModule:
    available = False


def test_opskit_wal_zstd_command_where_the_module_is_missing(tmp_path, monkeypatch):
    """The server's system python has no zstandard: the zstd command stores the same format, and
    a store pushed either way is fetched either way; with neither, gzip (with a note), and a zstd
    segment cannot be fetched (126: recovery aborts instead of promoting early)."""
    config = _config(tmp_path, compression="zstd")
    location = open_location("file://%s" % (tmp_path / "store"))
    segments = []
    for number in (2, 3):
        segment = tmp_path / ("00000001000000000000000%d" % number)
        segment.write_bytes(os.urandom(1000) * 64)
        segments.append(segment)
    err = io.StringIO()
    assert wal_cli.run(["--config", config, "push", str(segments[0]), segments[0].name], err) == 0  # the module
    monkeypatch.setattr(wal, "ZSTD", _NoModule())
    assert wal.push_codec("zstd", None)[2] == "command"
    assert wal_cli.run(["--config", config, "push", str(segments[1]), segments[1].name], err) == 0  # the command
    assert wal_cli.run(["--config", config, "push", str(segments[0]), segments[0].name], err) == 0  # a retry: present
    index = wal.wal_index(location, "s")["00000001"]
    assert [index[s.name]["compression"] for s in segments] == ["zstd", "zstd"] and err.getvalue() == ""
    for segment in segments:  # each read back by the command here, and by the module below
        out = tmp_path / ("cmd-" + segment.name)
        assert wal_cli.run(["--config", config, "fetch", segment.name, str(out)], err) == 0
        assert out.read_bytes() == segment.read_bytes()
    monkeypatch.setattr(wal, "find_zstd", lambda: None)
    gz = tmp_path / "000000010000000000000004"
    gz.write_bytes(os.urandom(500) * 64)
    assert wal_cli.run(["--config", config, "push", str(gz), gz.name], err) == 0
    assert "note: neither the zstandard module nor the zstd command is here: %s stored with gzip" % gz.name in err.getvalue()
    assert wal.wal_index(location, "s")["00000001"][gz.name]["compression"] == "gzip"
    assert wal_cli.run(["--config", config, "fetch", gz.name, str(tmp_path / "gz")], err) == 0
    assert wal_cli.run(["--config", config, "fetch", segments[0].name, str(tmp_path / "x")], err) == 126
    assert "to decompress zstd" in err.getvalue() and not (tmp_path / "x").exists()
    monkeypatch.undo()
    out = tmp_path / "module"
    assert wal_cli.run(["--config", config, "fetch", segments[1].name, str(out)], err) == 0
    assert out.read_bytes() == segments[1].read_bytes()


def test_zstd_level_args():
    assert wal.zstd_level_args(None) == ["-3"] and wal.zstd_level_args(-5) == ["--fast=5"]
    assert wal.zstd_level_args(22) == ["--ultra", "-22"]


def test_opskit_wal_config_must_be_private(tmp_path):
    err = io.StringIO()
    config = _config(tmp_path, mode=0o644, secret_key="s3cr3t")
    assert wal_cli.run(["--config", config, "fetch", "000000010000000000000002", str(tmp_path / "x")], err) == 1
    assert "make it 0600" in err.getvalue() and "s3cr3t" not in err.getvalue()
    assert wal_cli.run(["push"], err) == 1 and "usage" in err.getvalue()


def test_wal_needed_follows_the_timeline_switch(tmp_path):
    (tmp_path / "store").mkdir()
    location = open_location("file://%s" % (tmp_path / "store"))
    history = tmp_path / "00000002.history"
    history.write_text("1\t0/5000000\tno recovery target specified\n")
    names = [wal.segment_name(1, n) for n in range(2, 7)] + [wal.segment_name(2, n) for n in (5, 6, 7)]
    for name in names:
        (tmp_path / name).write_bytes(b"x")
        wal.push(location, "s", str(tmp_path / name), name, compression="none")
    wal.push(location, "s", str(history), history.name, compression="none")
    base = _base("b", "2026-12-01T00:00:00Z", "0/2000100", "0/2000028")
    index = wal.wal_index(location, "s")
    needed = [e["file"] for e in pitr.wal_needed(location, "s", index, base, pitr.parse_target({}))]
    assert needed == [wal.segment_name(1, n) for n in (2, 3, 4)] + [wal.segment_name(2, n) for n in (5, 6, 7)]
    os_remove = tmp_path / "store" / index["00000002"][wal.segment_name(2, 6)]["key"]
    os_remove.unlink()
    with pytest.raises(IntegrityError, match=wal.segment_name(2, 6)):
        pitr.wal_needed(location, "s", wal.wal_index(location, "s"), base, pitr.parse_target({}))
