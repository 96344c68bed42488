# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""VolumeTarget.backup_to: the mountpoint when the probe proves it, the Engine API otherwise
(with the warning), and the device files left out either way."""

from __future__ import annotations

import contextlib
import io
import os
import tarfile

import pytest

from ansible_collections.opskit.runbook.plugins.module_utils._volume.targets import VolumeTarget

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="the mountpoint is read only as root")


class Response:
    def __init__(self, status_code, body=b""):
        self.status_code, self.body = status_code, body

    def iter_content(self, size, _decode):
        for i in range(0, len(self.body), size):
            yield self.body[i:i + size]

    def close(self):
        pass


def _api_tar():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in (("./", None), ("./from-the-api", b"api")):
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Client:
    """The Docker API calls of VolumeTarget.backup_to: HEAD (the probe) and GET of the archive."""

    timeout = 5

    def __init__(self, visible):
        self.visible, self.gets = visible, 0

    @staticmethod
    def _url(template, *args):
        return template.format(*args)

    def head(self, url, params, timeout):
        return Response(200 if self.visible else 404)

    def _get(self, url, params, stream, headers):
        self.gets += 1
        return Response(200, _api_tar())

    def _raise_for_status(self, res):
        pass


def _backup(tmp_path, monkeypatch, visible, access="auto"):
    root = tmp_path / "data"
    root.mkdir()
    (root / "on-disk").write_bytes(b"disk")
    os.mknod(root / "null", 0o20600, os.makedev(1, 3))
    client = Client(visible)
    target = VolumeTarget(client, "vol", access=access)
    target.info = {"Driver": "local", "Mountpoint": str(root)}
    monkeypatch.setattr(VolumeTarget, "helper", contextlib.contextmanager(lambda self, read_only: iter(["cid"])))
    out = io.BytesIO()
    result = target.backup_to(out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue()), mode="r:") as tar:
        names = tar.getnames()
    return result, names, client, sorted(os.listdir(root))


@needs_root
def test_a_proven_mountpoint_is_read_directly(tmp_path, monkeypatch):
    result, names, client, left = _backup(tmp_path, monkeypatch, visible=True)
    assert result["access"] == "mountpoint" and client.gets == 0
    assert names == [".", "./on-disk"]
    assert result["skipped_files"] == 1
    assert result["warnings"] == ["1 device file(s) of volume vol are left out of the backup (a restore"
                                  " refuses device files): ./null"]
    assert left == ["null", "on-disk"]  # the probe file is gone


@needs_root
@pytest.mark.parametrize("access", ["auto", "api"])
def test_an_unproven_mountpoint_falls_back_to_the_api(tmp_path, monkeypatch, access):
    result, names, client, _left = _backup(tmp_path, monkeypatch, visible=False, access=access)
    assert result["access"] == "api" and client.gets == 1
    assert names == [".", "./from-the-api"]
    if access == "api":  # asked for: no warning
        assert "warnings" not in result
    else:
        assert result["warnings"] == [
            "volume vol was read through the Docker Engine API, not directly through its mountpoint"
            " (volume_access=auto): a probe file created through its mountpoint %s is not seen in the"
            " helper container (a daemon on another host or in a VM?)" % (tmp_path / "data")]
