# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""volume_backup driven through ansible-playbook against the real Docker Engine, a real S3
endpoint (moto) and real directories."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import time

import pytest

from volume_fixtures import dockerthings, listing, make_tricky_tree, short  # noqa: F401  pylint: disable=unused-import

HERE = os.path.dirname(os.path.abspath(__file__))
# A container that stops at once on SIGTERM (busybox sleep as PID 1 would ignore it).
SERVICE = ("sh", "-c", "trap 'exit 0' TERM; sleep 3600 & wait")


def _s3_vars(s3, bucket):
    return {"location": "s3://%s/vol" % bucket, "s3": {
        "endpoint_url": s3.endpoint_url, "access_key": s3.access_key, "secret_key": s3.secret_key,
        "region": s3.region}}


PLAY_HEAD = """
- hosts: localhost
  gather_facts: false
  module_defaults:
    group/opskit.runbook.storage: "{{ s3 | default({}) }}"
  tasks:
"""


def _failed(result):
    return result.get("_status") == "failed"


def _objects(s3, bucket):
    return sorted(o["Key"] for o in s3.client.list_objects_v2(Bucket=bucket).get("Contents", []))


def _manifests(keys):
    return [k for k in keys if k.endswith(".manifest.json")]


def test_volume_round_trip_check_mode_and_idempotence(run_playbook, s3, docker_engine, dockerthings):
    image = docker_engine.busybox_image
    source = dockerthings.volume()
    make_tricky_tree(dockerthings.mountpoint(source))
    expected = listing(dockerthings.mountpoint(source))
    app = dockerthings.container(image, source, SERVICE)
    idle = dockerthings.container(image, source, SERVICE, start=False)
    started = dockerthings.started_at(app)
    target = short("vbrestore")
    via_api = short("vbapi")
    dockerthings.volumes.extend([target, via_api])
    bucket = s3.new_bucket()

    # check mode first: nothing stopped, nothing written, nothing created
    check = run_playbook(PLAY_HEAD + """
    - name: backup (check)
      opskit.runbook.volume_backup: {volume: "{{ source }}", location: "{{ location }}", series: vol}
    - name: restore into a missing volume (check)
      opskit.runbook.volume_backup: {state: restored, volume: "{{ target }}", location: "{{ location }}", series: vol}
      ignore_errors: true
""", extra_vars=dict(_s3_vars(s3, bucket), source=source, target=target), check=True)
    backup_check = check.task("backup (check)")
    assert backup_check["changed"] is True and backup_check["would_stop"] == [app.name]
    assert backup_check["stopped"] == [] and backup_check["backup"] is None
    assert "has no backups" in check.task("restore into a missing volume (check)")["msg"]
    assert dockerthings.started_at(app) == started and dockerthings.state(app)["Running"]
    assert _objects(s3, bucket) == []

    run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {volume: "{{ source }}", location: "{{ location }}", series: vol}
      register: saved
    - name: restore (check)
      opskit.runbook.volume_backup: {state: restored, volume: "{{ target }}", location: "{{ location }}", series: vol}
      check_mode: true
    - name: restore
      opskit.runbook.volume_backup:
        state: restored
        volume: "{{ target }}"
        location: "{{ location }}"
        series: vol
        backup: "{{ saved.backup.id }}"
    - name: restore through the Engine API
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ via_api }}", location: "{{ location }}", series: vol, volume_access: api}
    - name: restore again
      opskit.runbook.volume_backup: {state: restored, volume: "{{ target }}", location: "{{ location }}", series: vol}
      ignore_errors: true
""", extra_vars=dict(_s3_vars(s3, bucket), source=source, target=target, via_api=via_api))
    assert run.rc == 0, run.stdout[-3000:]  # only "restore again" fails, and it is ignored
    saved = run.task("backup")
    assert saved["changed"] is True and not _failed(saved)
    assert saved["stopped"] == [app.name] and saved["restarted"] == [app.name]
    assert saved["downtime_seconds"] > 0
    assert saved["files"] == sum(1 for e in expected.values() if "sha256" in e)
    assert saved["hardlinks"] == 1 and saved["symlinks"] == 3
    assert saved["entries"] == len(expected)
    assert saved["backup"]["kind"] == "volume" and saved["backup"]["raw_bytes"] == saved["raw_bytes"]
    assert saved["backup"]["url"].endswith(".tar.zst")
    # exactly the running user was stopped and started again; the stopped one stays stopped
    assert dockerthings.state(app)["Running"] and dockerthings.started_at(app) != started
    assert dockerthings.state(idle)["Status"] == "created"
    keys = _objects(s3, bucket)
    assert len(_manifests(keys)) == 1 and len(keys) == 2
    manifest = json.loads(s3.client.get_object(Bucket=bucket, Key=_manifests(keys)[0])["Body"].read())
    assert manifest["source"]["volume"] == source and manifest["source"]["stopped"] == [app.name]

    restore_check = run.task("restore (check)")
    assert restore_check["changed"] is True and restore_check["created"] is True
    restored = run.task("restore")
    assert restored["changed"] is True and restored["entries"] == len(expected)
    assert restored["backup"]["id"] == saved["backup"]["id"]
    assert restored["access"] == ("mountpoint" if os.geteuid() == 0 else "api")
    assert listing(dockerthings.mountpoint(target)) == expected
    api = run.task("restore through the Engine API")
    assert api["access"] == "api" and api["entries"] == len(expected)
    assert listing(dockerthings.mountpoint(via_api)) == expected

    again = run.task("restore again")
    assert _failed(again) and "is not empty" in again["msg"] and "force=true" in again["msg"]
    assert again["changed"] is False
    assert listing(dockerthings.mountpoint(target)) == expected  # never applied twice
    assert not _helpers(docker_engine, source) and not _helpers(docker_engine, target)


def test_directory_round_trip_and_forced_restore(run_playbook, tmp_path, docker_engine, dockerthings):
    from docker.types import Mount
    src = make_tricky_tree(str(tmp_path / "src"))
    expected = listing(src)
    location = "file://%s/store" % tmp_path
    dst = tmp_path / "dst"
    dst.mkdir()
    (dst / "stale.conf").write_text("from before")
    # a container bind-mounting a directory inside the backed-up one is stopped by "auto"
    web = dockerthings.container(docker_engine.busybox_image, command=SERVICE,
                                 mounts=[Mount("/cfg", os.path.join(src.decode(), "etc"), type="bind",
                                               read_only=True)])
    run = run_playbook(PLAY_HEAD + """
    - name: backup a directory (check)
      opskit.runbook.volume_backup: {path: "{{ src }}", location: "{{ location }}", series: etc}
      check_mode: true
    - name: backup a directory
      opskit.runbook.volume_backup: {path: "{{ src }}", location: "{{ location }}", series: etc}
    - name: restore into a non-empty directory
      opskit.runbook.volume_backup: {state: restored, path: "{{ dst }}", location: "{{ location }}", series: etc}
      ignore_errors: true
    - name: restore with force
      opskit.runbook.volume_backup: {state: restored, path: "{{ dst }}", location: "{{ location }}", series: etc, force: true}
""", extra_vars={"src": src.decode(), "dst": str(dst), "location": location})
    check = run.task("backup a directory (check)")
    assert check["would_stop"] == [web.name] and check["stopped"] == [] and check["backup"] is None
    saved = run.task("backup a directory")
    assert saved["changed"] and saved["backup"]["kind"] == "directory" and saved["skipped_files"] == 0
    assert saved["stopped"] == [web.name] and saved["restarted"] == [web.name]
    assert dockerthings.state(web)["Running"]
    assert saved["entries"] == len(expected)
    refused = run.task("restore into a non-empty directory")
    assert _failed(refused) and "is not empty" in refused["msg"]
    forced = run.task("restore with force")
    assert forced["changed"] and forced["emptied"] is True
    assert listing(dst) == expected


@pytest.mark.parametrize("access", ["auto", "api"])
def test_directory_backup_restores_into_a_volume(run_playbook, tmp_path, docker_engine, dockerthings, access):
    """Same archive layout and manifest: a directory backup restores into a volume (forced:
    through the mountpoint, the old content is deleted once the new one is staged and
    verified; through the API, by a helper container with find and rm)."""
    src = tmp_path / "cfg"
    (src / "conf.d").mkdir(parents=True)
    (src / "conf.d" / "site.conf").write_text("server {}\n")
    os.chown(src / "conf.d" / "site.conf", 101, 101)
    vol = dockerthings.volume()
    with open(os.path.join(dockerthings.mountpoint(vol), "old"), "w") as fh:
        fh.write("old")
    location = "file://%s/store" % tmp_path
    run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "{{ src }}", location: "{{ location }}", series: cfg}
    - name: restore into a volume
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ vol }}", location: "{{ location }}", series: cfg, force: true,
         helper_image: "{{ image }}", volume_access: "{{ access }}"}
""", extra_vars={"src": str(src), "vol": vol, "location": location, "image": docker_engine.busybox_image,
                 "access": access})
    assert run.rc == 0, run.stdout[-3000:]
    restored = run.task("restore into a volume")
    assert restored["emptied"] is True
    assert restored["access"] == ("api" if access == "api" or os.geteuid() != 0 else "mountpoint")
    assert listing(dockerthings.mountpoint(vol)) == listing(src)


@pytest.mark.parametrize("access", ["auto", "api"])
def test_a_corrupt_backup_changes_nothing_in_the_volume(run_playbook, tmp_path, docker_engine, dockerthings,
                                                        access):
    """A bit flipped in the stored archive: the forced restore fails on the sha256, the old
    content is all still there, and a volume the restore created is removed again."""
    src = tmp_path / "src"
    src.mkdir()
    _fill_random(str(src), 3 * 1024 * 1024)
    location = "file://%s/store" % tmp_path
    vol = dockerthings.volume()
    with open(os.path.join(dockerthings.mountpoint(vol), "old"), "w") as fh:
        fh.write("old")
    before = listing(dockerthings.mountpoint(vol))
    fresh = short("vbfresh")
    dockerthings.volumes.append(fresh)
    backup = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "{{ src }}", location: "{{ location }}", series: cfg}
""", extra_vars={"src": str(src), "location": location})
    assert backup.rc == 0, backup.stdout[-3000:]
    [stored] = [os.path.join(d, n) for d, _s, names in os.walk(tmp_path / "store") for n in names
                if n.endswith(".tar.zst")]
    with open(stored, "r+b") as fh:
        fh.seek(os.path.getsize(stored) // 2)
        byte = fh.read(1)
        fh.seek(-1, 1)
        fh.write(bytes([byte[0] ^ 0x01]))
    run = run_playbook(PLAY_HEAD + """
    - name: forced restore of a corrupt backup
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ vol }}", location: "{{ location }}", series: cfg, force: true,
         helper_image: "{{ image }}", volume_access: "{{ access }}"}
      ignore_errors: true
    - name: restore of a corrupt backup into a new volume
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ fresh }}", location: "{{ location }}", series: cfg,
         helper_image: "{{ image }}", volume_access: "{{ access }}"}
      ignore_errors: true
""", extra_vars={"vol": vol, "fresh": fresh, "location": location, "image": docker_engine.busybox_image,
                 "access": access})
    for task in ("forced restore of a corrupt backup", "restore of a corrupt backup into a new volume"):
        result = run.task(task)
        assert _failed(result) and "is corrupt: sha256" in result["msg"], result
    assert listing(dockerthings.mountpoint(vol)) == before
    assert fresh not in [v["Name"] for v in docker_engine.client.api.volumes()["Volumes"] or []]
    assert not _helpers(docker_engine, vol) and not _helpers(docker_engine, fresh)


def test_clear_errors(run_playbook, tmp_path, docker_engine, dockerthings):
    vol = dockerthings.volume()
    missing = short("vbmissing")
    location = "file://%s/store" % tmp_path
    run = run_playbook(PLAY_HEAD + """
    - name: missing volume
      opskit.runbook.volume_backup: {volume: "{{ missing }}", location: "{{ location }}"}
      ignore_errors: true
    - name: unreachable daemon
      opskit.runbook.volume_backup:
        {volume: "{{ vol }}", location: "{{ location }}", docker_host: "unix:///nonexistent/docker.sock"}
      ignore_errors: true
    - name: unknown container to stop
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "{{ location }}", stop_containers: [ghost-ctr]}
      ignore_errors: true
    - name: volume and path
      opskit.runbook.volume_backup: {volume: "{{ vol }}", path: /etc, location: "{{ location }}"}
      ignore_errors: true
    - name: missing helper image
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "{{ location }}", helper_image: "opskit-none/nothing:0"}
      ignore_errors: true
    - name: relative path
      opskit.runbook.volume_backup: {path: relative/dir, location: "{{ location }}"}
      ignore_errors: true
    - name: restore from an empty location
      opskit.runbook.volume_backup: {state: restored, volume: "{{ vol }}", series: nothing, location: "{{ location }}"}
      ignore_errors: true
""", extra_vars={"vol": vol, "missing": missing, "location": location})
    expect = {
        "missing volume": "volume %s does not exist" % missing,
        "unreachable daemon": "cannot connect to the Docker daemon at unix:///nonexistent/docker.sock",
        "unknown container to stop": "stop_containers: no such container: ghost-ctr",
        "volume and path": "mutually exclusive",
        "missing helper image": "helper_image opskit-none/nothing:0 is not present",
        "relative path": "must be an absolute path",
        "restore from an empty location": "does not exist",
    }
    for task, text in expect.items():
        result = run.task(task)
        assert _failed(result), (task, result)
        assert text in result["msg"], (task, result["msg"])
        assert "\n" not in result["msg"] and "Traceback" not in result.get("module_stderr", ""), task
    assert not os.path.exists(tmp_path / "store") or not any(
        name.endswith(".manifest.json") for _d, _s, names in os.walk(tmp_path / "store") for name in names)


def _publish_tar(location_url, series, members):
    """Publish a hand-made tar through the engine, as a backup of kind volume would be."""
    import io
    import tarfile
    from ansible_collections.opskit.runbook.plugins.module_utils._engine.session import BackupSession
    from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import open_location
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, payload in members:
            info = tarfile.TarInfo(name)
            info.type, info.size = kind, len(payload)
            info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
            tar.addfile(info, io.BytesIO(payload) if payload else None)
    location = open_location(location_url)
    with BackupSession(location, series, "volume") as session:
        with session.artifact("tar") as out:
            out.write(buf.getvalue())
        return session.publish(source={"volume": "crafted"})


@pytest.mark.parametrize("evil, message, access", [
    (("./../../../../etc/opskit-escaped", tarfile.REGTYPE, b"pwned"), "'..' components are refused", "auto"),
    (("./../../../../etc/opskit-escaped", tarfile.REGTYPE, b"pwned"), "'..' components are refused", "api"),
    (("/opskit-escaped-abs", tarfile.REGTYPE, b"pwned"), "absolute paths are refused", "auto"),
    (("./null", tarfile.CHRTYPE, b""), "device files are refused", "auto"),
])
def test_unsafe_archive_members_are_refused(run_playbook, tmp_path, docker_engine, dockerthings, evil,
                                            message, access):
    location = "file://%s/store" % tmp_path
    _publish_tar(location, "evil", [(".", tarfile.DIRTYPE, b""), ("./fine", tarfile.REGTYPE, b"ok"), evil,
                                    ("./after", tarfile.REGTYPE, b"never")])
    vol = dockerthings.volume()
    run = run_playbook(PLAY_HEAD + """
    - name: restore a crafted archive
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ vol }}", location: "{{ location }}", series: evil,
         helper_image: "{{ image }}", volume_access: "{{ access }}"}
      ignore_errors: true
""", extra_vars={"vol": vol, "location": location, "image": docker_engine.busybox_image, "access": access})
    result = run.task("restore a crafted archive")
    assert _failed(result) and message in result["msg"], result
    names = os.listdir(dockerthings.mountpoint(vol))
    assert "after" not in names and "null" not in names
    assert not os.path.exists("/etc/opskit-escaped") and not os.path.exists("/opskit-escaped-abs")
    assert not _helpers(docker_engine, vol)


def _fill_random(path, size):
    with open(os.path.join(path, "random.bin"), "wb") as fh:
        fh.write(os.urandom(size))


def test_a_container_that_fails_to_restart_fails_the_task_and_is_named(run_playbook, tmp_path,
                                                                       docker_engine, dockerthings):
    from docker.types import Mount
    vol = dockerthings.volume()
    _fill_random(dockerthings.mountpoint(vol), 1 << 20)
    bind_src = tempfile.mkdtemp(prefix="vb-bind-")
    fragile = dockerthings.container(docker_engine.busybox_image, vol, SERVICE,
                                     mounts=[Mount("/cfg", bind_src, type="bind")])
    sturdy = dockerthings.container(docker_engine.busybox_image, vol, SERVICE)
    # The running container keeps its mount; once stopped, it cannot start without the source.
    shutil.rmtree(bind_src)
    assert dockerthings.state(fragile)["Running"]
    location = "file://%s/store" % tmp_path
    run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "{{ location }}", series: frag, stop_timeout: 5}
      ignore_errors: true
""", extra_vars={"vol": vol, "location": location})
    result = run.task("backup")
    assert _failed(result)
    assert "container %s failed to restart" % fragile.name in result["msg"]
    assert "the backup itself completed" in result["msg"]
    assert sturdy.name not in result["msg"]
    assert sorted(result["stopped"]) == sorted([fragile.name, sturdy.name])
    assert result["restarted"] == [sturdy.name]
    assert dockerthings.state(sturdy)["Running"] and not dockerthings.state(fragile)["Running"]
    assert result["backup"]["id"]  # the data was read completely: the backup is published
    assert os.path.exists(os.path.join(tmp_path, "store", "frag", result["backup"]["id"] + ".manifest.json"))


def _descendants(pid):
    """Pids of the process tree under pid (from /proc), for killing exactly what the test started."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open("/proc/%s/stat" % entry) as fh:
                    ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        for child in children.get(current, []):
            out.append(child)
            todo.append(child)
    return out


def test_killed_mid_backup_publishes_nothing_and_restarts_the_containers(tmp_path, docker_engine,
                                                                         dockerthings):
    vol = dockerthings.volume()
    # zstd -19 compresses random data at a few MB/s and buffers ~16 MB: the volume is still
    # being read several seconds after the helper container appeared
    _fill_random(dockerthings.mountpoint(vol), 64 << 20)
    app = dockerthings.container(docker_engine.busybox_image, vol, SERVICE)
    store = tmp_path / "store"
    playbook = tmp_path / "play.yml"
    playbook.write_text(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup:
        {volume: "%s", location: "file://%s", series: killed, compression_level: 19, stop_timeout: 5}
""" % (vol, store))
    (tmp_path / "inventory").write_text("localhost ansible_connection=local\n")
    collections = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    proc = subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                             str(tmp_path / "inventory"), str(playbook)], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while dockerthings.state(app)["Running"]:
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the container was never stopped"
            time.sleep(0.05)
        helpers = []
        while not helpers:  # the helper container exists: the volume is being streamed
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "no helper container was created"
            helpers = _helpers(docker_engine, vol)
            time.sleep(0.05)
        time.sleep(1.0)  # mid-stream now
        assert proc.poll() is None, "the backup finished before it could be killed"
        _kill_tree(proc)  # SIGKILL: no cleanup code of the module can run
    finally:
        _kill_tree(proc)
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while not dockerthings.state(app)["Running"] and time.monotonic() < deadline:
        time.sleep(0.1)
    assert dockerthings.state(app)["Running"], "the stopped container was not started again"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(
            _exists(docker_engine, h) for h in helpers):
        time.sleep(0.1)
    assert helpers and not any(_exists(docker_engine, h) for h in helpers), "helper container left behind"
    manifests = [n for _d, _s, names in os.walk(store) for n in names if n.endswith(".manifest.json")]
    assert manifests == []


def _kill_tree(proc):
    """SIGKILL ansible-playbook and every process under it (the test started them all)."""
    for pid in _descendants(proc.pid) + [proc.pid]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    proc.wait(10)


def _helpers(docker_engine, volume=""):
    """Ids of the helper containers (for a volume). The low-level list does not inspect each
    container: an inspect waits while the daemon streams the container's archive."""
    return [c["Id"] for c in docker_engine.client.api.containers(
        all=True, filters={"label": "opskit.runbook.helper"})
        if volume in c["Names"][0]]


def _exists(docker_engine, cid):
    import docker
    try:
        docker_engine.client.api.inspect_container(cid)
        return True
    except docker.errors.NotFound:
        return False
