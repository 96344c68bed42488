# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ceph RGW (Debian's radosgw 16), a second S3 implementation besides moto: a throwaway
single-node Ceph cluster in a temporary directory, started once per session.

One ceph-mon, one ceph-osd (BlueStore on a sparse 4 GiB file; ``OPSKIT_CEPH_OBJECTSTORE=memstore``
keeps the objects in memory instead), no cephx (``auth * required = none``), pools of size 1,
and radosgw with the beast frontend on 127.0.0.1 and a free port, with one S3 user (the
harness's access and secret key). Every daemon runs in the foreground as a child of the test
process and dies with it (a watchdog kills them and removes the directory even when the test
process is killed); ``stop()`` kills them and removes the directory (the data is
throwaway, so no graceful OSD shutdown is waited for).

Measured on the 2-core build machines: 15-25 s from nothing to the first S3 answer (the more
the machine is loaded, the longer), about half of it radosgw creating its pools one osdmap epoch
at a time (``Radosgw.timings``).

Fixture ``radosgw``: attributes endpoint_url, access_key, secret_key, region, client (boto3),
timings ({step: seconds since the start}), ``new_bucket(prefix, object_lock=False)``. The
tests that use it are skipped, with the reason, only when the Ceph binaries are not installed
(scripts/bootstrap.sh installs radosgw, ceph-mon and ceph-osd); a cluster that is installed but
does not start fails them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.request
import uuid

import pytest

from harness import (S3_ACCESS_KEY, S3_REGION, S3_SECRET_KEY, _die_with_parent, _service_dir, _wait_for,
                     _watchdog, cleanup, free_port, register_cleanup)

BINARIES = ("ceph", "ceph-authtool", "monmaptool", "ceph-mon", "ceph-osd", "radosgw", "radosgw-admin")
PACKAGES = "radosgw ceph-mon ceph-osd"

CONF = """[global]
fsid = {fsid}
mon host = v2:127.0.0.1:{mon_port}
public addr = 127.0.0.1
ms bind ipv6 = false
# AUTH_NONE only speaks crc: the "secure"-only default of some clients (radosgw) would refuse it
ms mon client mode = crc secure
auth cluster required = none
auth service required = none
auth client required = none
keyring = {root}/keyring
run dir = {root}/run
admin socket = {root}/run/$name.asok
log file = {root}/log/$name.log
pid file = {root}/run/$name.pid
crash dir = {root}/crash
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd pool default pg autoscale mode = off
osd crush chooseleaf type = 0
mon allow pool size one = true
mon allow pool delete = true
mon warn on pool no redundancy = false
mon max pg per osd = 1000
mon data avail warn = 1
mon data avail crit = 0
osd objectstore = {objectstore}
osd data = {root}/osd.0
memstore device bytes = 2147483648
bluestore block path = {root}/osd.0/block.file
bluestore block create = true
bluestore block size = 4294967296
bluestore fsck on mount = false

[mon.a]
mon data = {root}/mon.a

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:{rgw_port}
rgw data = {root}/rgw
"""


def missing_binaries():
    return [name for name in BINARIES if shutil.which(name) is None]


class Radosgw:
    """A single-node Ceph cluster with radosgw: an S3 endpoint that users run in production."""

    access_key = S3_ACCESS_KEY
    secret_key = S3_SECRET_KEY
    region = S3_REGION

    def __init__(self, objectstore=None):
        self.root = _service_dir("ceph")
        self.conf = os.path.join(self.root, "ceph.conf")
        self.objectstore = objectstore or os.environ.get("OPSKIT_CEPH_OBJECTSTORE", "bluestore")
        self.mon_port, self.port = free_port(), free_port()
        self.endpoint_url = "http://127.0.0.1:%d" % self.port
        self.procs = []  # (name, Popen), in start order
        self.timings = {}
        self.client = None
        self._t0 = None
        self._watchdog = None  # kills the daemons and removes the directory if the test process dies

    def _step(self, name):
        self.timings[name] = round(time.monotonic() - self._t0, 2)

    def _run(self, *args):
        """A Ceph tool with this cluster's ceph.conf; RuntimeError with its output when it fails."""
        argv = [args[0], "-c", self.conf] + list(args[1:])
        done = subprocess.run(argv, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=60,
                              check=False)
        if done.returncode != 0:
            raise RuntimeError("%s failed (rc %d): %s" % (" ".join(args[:3]), done.returncode,
                                                          (done.stderr or done.stdout).strip()[-2000:]))
        return done.stdout

    def _daemon(self, name, *args):
        log = open(os.path.join(self.root, "log", name + ".out"), "wb")  # pylint: disable=consider-using-with
        with log:
            proc = subprocess.Popen([args[0], "-c", self.conf, "-f"] + list(args[1:]), stdout=log,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=self.root,
                                    preexec_fn=_die_with_parent)
        self.procs.append((name, proc))
        return proc

    def _ok(self, *args):
        return subprocess.run(["ceph", "-c", self.conf, "--connect-timeout", "5"] + list(args), capture_output=True,
                              text=True, stdin=subprocess.DEVNULL, timeout=30, check=False)

    def _mon(self, fsid):
        self._run("ceph-authtool", "--create-keyring", os.path.join(self.root, "keyring"), "--gen-key", "-n", "mon.",
                  "--cap", "mon", "allow *")
        monmap = os.path.join(self.root, "monmap")
        self._run("monmaptool", "--create", "--fsid", fsid, "--addv", "a", "[v2:127.0.0.1:%d]" % self.mon_port, monmap)
        self._run("ceph-mon", "--mkfs", "-i", "a", "--monmap", monmap, "--keyring", os.path.join(self.root, "keyring"))
        mon = self._daemon("mon.a", "ceph-mon", "-i", "a")
        _wait_for(lambda: self._ok("mon", "stat").returncode == 0, "ceph-mon", mon,
                  os.path.join(self.root, "log", "mon.a.log"), timeout=30)
        self._step("mon")

    def _osd(self):
        osd_uuid = str(uuid.uuid4())
        self._run("ceph", "osd", "new", osd_uuid)
        self._run("ceph-osd", "-i", "0", "--mkfs", "--osd-uuid", osd_uuid)
        self._step("osd mkfs")
        osd = self._daemon("osd.0", "ceph-osd", "-i", "0")
        _wait_for(lambda: "\nosd.0 up " in "\n" + self._ok("osd", "dump").stdout, "ceph-osd", osd,
                  os.path.join(self.root, "log", "osd.0.log"), timeout=60)
        self._step("osd up")

    def _rgw(self):
        rgw = self._daemon("client.rgw", "radosgw", "-n", "client.rgw")
        _wait_for(lambda: urllib.request.urlopen(self.endpoint_url + "/", timeout=2).status == 200, "radosgw", rgw,
                  os.path.join(self.root, "log", "client.rgw.log"), timeout=90)
        self._step("radosgw answers")
        self._run("radosgw-admin", "user", "create", "--uid", "opskit-test", "--display-name", "opskit test",
                  "--access-key", self.access_key, "--secret-key", self.secret_key)
        self._step("user created")

    def start(self):
        import boto3  # pylint: disable=import-outside-toplevel
        import botocore.config  # pylint: disable=import-outside-toplevel
        import botocore.exceptions  # pylint: disable=import-outside-toplevel
        register_cleanup("radosgw", self.stop)
        self._t0 = time.monotonic()
        for sub in ("run", "log", "crash", "mon.a", "osd.0", "rgw"):
            os.makedirs(os.path.join(self.root, sub))
        fsid = str(uuid.uuid4())
        with open(self.conf, "w") as fh:
            fh.write(CONF.format(fsid=fsid, root=self.root, mon_port=self.mon_port, rgw_port=self.port,
                                 objectstore=self.objectstore))
        self._mon(fsid)
        self._osd()
        self._rgw()
        self._watchdog = _watchdog(self.root, ["kill", "-9"] + [str(proc.pid) for _name, proc in self.procs])
        self.client = boto3.client("s3", endpoint_url=self.endpoint_url, region_name=self.region,
                                   aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                                   config=botocore.config.Config(s3={"addressing_style": "path"}))
        try:
            self.client.list_buckets()
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError) as exc:
            raise RuntimeError("radosgw does not answer S3 requests: %s" % exc) from exc
        self._step("S3 ready")
        return self

    def stop(self):
        if self._watchdog is not None:
            self._watchdog.kill()
            self._watchdog.wait()
        for _name, proc in reversed(self.procs):
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.procs = []
        shutil.rmtree(self.root, ignore_errors=True)

    def new_bucket(self, prefix="opskit-rgw", object_lock=False):
        name = "%s-%s" % (prefix, uuid.uuid4().hex[:12])
        self.client.create_bucket(Bucket=name, **({"ObjectLockEnabledForBucket": True} if object_lock else {}))
        return name


@pytest.fixture(scope="session")
def radosgw():
    """harness-style session fixture: the cluster starts on first use and stops at the end."""
    missing = missing_binaries()
    if missing:
        pytest.skip("Ceph is not installed (no %s): apt-get install %s, as scripts/bootstrap.sh does"
                    % (", ".join(missing), PACKAGES))
    server = Radosgw()
    try:
        server.start()
    except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
        cleanup("radosgw")
        pytest.fail("radosgw fixture: the Ceph cluster did not start: %s" % exc, pytrace=False)
    yield server
    cleanup("radosgw")
