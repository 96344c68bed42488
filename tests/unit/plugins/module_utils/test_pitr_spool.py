# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The restore's WAL spool: the prefetch into it (checked, a corrupt file refused, the limit) against a
real file:// location, the restore_command shell line run by a real /bin/sh the way PostgreSQL runs it,
and the base backup's extraction (the stored bytes checked to their end, no member outside)."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._engine import artifacts
from ansible_collections.opskit.runbook.plugins.module_utils._errors import IntegrityError
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import pitr_apply as pa
from ansible_collections.opskit.runbook.plugins.module_utils._postgres import wal
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location

NAMES = ["000000010000000000000002", "000000010000000000000003", "000000010000000000000004"]


def _archive(tmp_path):
    (tmp_path / "store").mkdir()
    location = open_location("file://%s" % (tmp_path / "store"))
    contents = {}
    for number, name in enumerate(NAMES):
        path = tmp_path / name
        contents[name] = os.urandom(4096) * (number + 1)
        path.write_bytes(contents[name])
        wal.push(location, "s", str(path), name, compression="gzip")
    entries = [wal.wal_index(location, "s")["00000001"][name] for name in NAMES]
    return location, entries, contents


def test_prefetch_spools_checked_files_up_to_the_limit(tmp_path):
    location, entries, contents = _archive(tmp_path)
    spool = tmp_path / "data" / pa.SPOOL
    (tmp_path / "data").mkdir()
    assert pa.prefetch(location, "s", entries, str(spool)) == 3
    assert {name: (spool / name).read_bytes() for name in NAMES} == contents
    assert pa.prefetch(location, "s", entries, str(spool), limit=4096 * 3) == 2  # the third only checked
    assert sorted(os.listdir(spool)) == NAMES[:2]


def test_prefetch_refuses_a_corrupt_file_before_replay(tmp_path):
    location, entries, _contents = _archive(tmp_path)
    stored = tmp_path / "store" / entries[1]["key"]
    data = bytearray(stored.read_bytes())
    data[len(data) // 2] ^= 0xFF
    stored.write_bytes(bytes(data))
    spool = tmp_path / pa.SPOOL
    with pytest.raises(IntegrityError, match="%s of series s cannot be restored.*refused before replay" % NAMES[1]):
        pa.prefetch(location, "s", entries, str(spool))
    assert os.listdir(spool) == [NAMES[0]]  # no partial copy of the corrupt one
    with pytest.raises(IntegrityError, match="%s of series s is corrupt.*refused before replay" % NAMES[1]):
        pa.prefetch(location, "s", entries, str(spool), limit=1)  # past the limit: only checked, still refused


def _restore(command, data, name):
    """What PostgreSQL does: %f, %p and %% replaced, the line run by /bin/sh in the data directory."""
    line = command.replace("%f", name).replace("%p", "pg_wal/RECOVERYXLOG").replace("%%", "%")
    return subprocess.run(["/bin/sh", "-c", line], cwd=str(data), capture_output=True, text=True, check=False)


def test_spool_restore_command_copies_spooled_files_and_falls_back(tmp_path):
    data = tmp_path / "data"
    (data / "pg_wal").mkdir(parents=True)
    (data / pa.SPOOL).mkdir()
    (data / pa.SPOOL / NAMES[0]).write_bytes(b"spooled")
    helper = tmp_path / "opskit 100% wal"  # a space and a % in the helper's path: quoted and escaped
    helper.write_text('#!/bin/sh\necho "$@" >> "$(dirname "$0")/calls"\n[ "$4" = %s ] && echo fetched > "$5"\n'
                      % NAMES[1])
    os.chmod(helper, 0o755)
    command = pa.spool_restore_command([str(helper), "--config", "/etc/wal.json"])
    assert _restore(command, data, NAMES[0]).returncode == 0
    assert (data / "pg_wal" / "RECOVERYXLOG").read_bytes() == b"spooled" and not (tmp_path / "calls").exists()
    assert _restore(command, data, "00000001.history").returncode == 1 and not (tmp_path / "calls").exists()
    assert _restore(command, data, NAMES[1]).returncode == 0  # not spooled: the helper fetches it
    assert (data / "pg_wal" / "RECOVERYXLOG").read_text() == "fetched\n"
    assert _restore(command, data, NAMES[2]).returncode == 1  # not archived: the helper's exit code
    assert (tmp_path / "calls").read_text().split("\n")[:2] == [
        "--config /etc/wal.json fetch %s pg_wal/RECOVERYXLOG" % n for n in NAMES[1:]]
    os.chmod(data / "pg_wal", 0o500)  # a copy that fails aborts the recovery (126), never "not archived"
    try:
        if os.geteuid() != 0:
            assert _restore(command, data, NAMES[0]).returncode == 126
    finally:
        os.chmod(data / "pg_wal", 0o700)
    (data / "pg_wal" / "RECOVERYXLOG").unlink()
    (data / "pg_wal" / "RECOVERYXLOG").mkdir()  # cp onto a directory fails for root too
    (data / "pg_wal" / "RECOVERYXLOG" / NAMES[0]).mkdir()
    assert _restore(command, data, NAMES[0]).returncode == 126
    assert _restore(pa.spool_end_command(), data, "").returncode == 0 and not (data / pa.SPOOL).exists()


def _stored_tar(tmp_path, members, compression="zstd"):
    """A base backup's tar through the engine's writer into a file:// location; its manifest.
    A member whose data is a tuple ("symlink", target) is a symlink."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = tarfile.SYMTYPE, data[1]
                tar.addfile(info)
                continue
            info.size = len(data)
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    memory = wal._Memory()
    writer = artifacts.ArtifactWriter(memory, "b", compression, None, 0)
    writer.write(buf.getvalue())
    record = writer.close()
    (tmp_path / "store" / "s").mkdir(parents=True)
    (tmp_path / "store" / "s" / "b.tar").write_bytes(memory.buf.getvalue())
    manifest = {"series": "s", "id": "b", "artifact": "b.tar", "compression": compression,
                "sha256": record["sha256"], "size_bytes": record["size_bytes"]}
    return open_location("file://%s" % (tmp_path / "store")), manifest


def test_extract_base_checks_the_end(tmp_path):
    big = os.urandom(1 << 16) * 40  # 2.5 MiB
    location, manifest = _stored_tar(tmp_path, [("PG_VERSION", b"15\n"), ("base/1/1259", big)])
    pa.extract_base(location, manifest, _data_dir(tmp_path))
    assert (tmp_path / "data" / "base" / "1" / "1259").read_bytes() == big
    stored = tmp_path / "store" / "s" / "b.tar"
    stored.write_bytes(stored.read_bytes() + b"\0" * 10)  # damage after the tar's end: still found
    with pytest.raises(IntegrityError, match="corrupt"):
        os.mkdir(tmp_path / "again")
        pa.extract_base(location, manifest, str(tmp_path / "again"))


def _data_dir(tmp_path):
    path = tmp_path / "data"
    path.mkdir()
    return str(path)


def test_extract_base_refuses_a_member_outside_the_directory(tmp_path):
    location, manifest = _stored_tar(tmp_path, [("PG_VERSION", b"15\n"), ("../escaped", b"x")])
    with pytest.raises(IntegrityError, match="'..' components are refused"):
        pa.extract_base(location, manifest, _data_dir(tmp_path))
    assert not (tmp_path / "escaped").exists()


@pytest.mark.parametrize("target", ["/etc", "../../etc", "base/../../x"])
def test_extract_base_refuses_a_symlink_leading_out(tmp_path, target):
    location, manifest = _stored_tar(tmp_path, [("PG_VERSION", b"15\n"), ("pg_wal", ("symlink", target))])
    with pytest.raises(IntegrityError, match="base backup b member pg_wal: a symlink to .*outside the directory"):
        pa.extract_base(location, manifest, _data_dir(tmp_path))
    assert not os.path.lexists(tmp_path / "data" / "pg_wal")


def test_extract_base_keeps_an_inner_symlink_and_the_modes(tmp_path):
    location, manifest = _stored_tar(tmp_path, [("PG_VERSION", b"15\n"), ("base/1/1", b"a" * 9000),
                                                ("base/current", ("symlink", "1"))])
    pa.extract_base(location, manifest, _data_dir(tmp_path))
    assert os.readlink(tmp_path / "data" / "base" / "current") == "1"
    assert (tmp_path / "data" / "base" / "current" / "1").read_bytes() == b"a" * 9000
    assert os.stat(tmp_path / "data" / "base" / "1" / "1").st_mode & 0o7777 == 0o600


@pytest.mark.parametrize("files", [40, 400], ids=["read-ahead-at-the-end", "rest-read-after"])
def test_extract_base_names_the_corruption_when_damage_broke_the_tar(tmp_path, files):
    members = [("PG_VERSION", b"15\n")] + [("base/1/%d" % n, os.urandom(1 << 15)) for n in range(files)]
    location, manifest = _stored_tar(tmp_path, members, compression="none")
    stored = tmp_path / "store" / "s" / "b.tar"
    data = bytearray(stored.read_bytes())
    data[512 * 3 + (1 << 15):512 * 4 + (1 << 15)] = b"\x07" * 512  # the third member's header: not a tar header
    stored.write_bytes(bytes(data))
    with pytest.raises(IntegrityError, match="artifact s/b.tar is corrupt: sha256"):
        pa.extract_base(location, manifest, _data_dir(tmp_path))
