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

from volume_fixtures import dockerthings, listing, make_tricky_tree, short, write_harmless_tree  # noqa: F401  pylint: disable=unused-import

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
    content is all still there, and a volume the restore created is removed again. The bit is
    in the large file, between small ones: through the mountpoint, the restore's writer threads
    are writing small files before and after it (the error comes at the end)."""
    src = tmp_path / "src"
    src.mkdir()
    _fill_random(str(src), 3 * 1024 * 1024)
    _fill_small(src, 400, 2048)
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


def _fill_small(root, count, size):
    """``count`` random files of ``size`` bytes in a/ and in z/ (the archive lists random.bin
    between them)."""
    for sub in ("a", "z"):
        (root / sub).mkdir()
        for index in range(count):
            (root / sub / ("f%05d" % index)).write_bytes(os.urandom(size))


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
    proc = _start_playbook(tmp_path, PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup:
        {volume: "%s", location: "file://%s", series: killed, compression_level: 19, stop_timeout: 5}
""" % (vol, store))
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


def _start_playbook(tmp_path, play):
    """ansible-playbook of ``play`` in its own session, its output in a pipe."""
    playbook = tmp_path / "play.yml"
    playbook.write_text(play)
    (tmp_path / "inventory").write_text("localhost ansible_connection=local\n")
    collections = os.path.join(os.path.dirname(os.path.dirname(HERE)), ".build", "collections")
    env = dict(os.environ, ANSIBLE_COLLECTIONS_PATH=collections, ANSIBLE_PYTHON_INTERPRETER=sys.executable)
    return subprocess.Popen([os.path.join(os.path.dirname(sys.executable), "ansible-playbook"), "-i",
                             str(tmp_path / "inventory"), str(playbook)], env=env, cwd=str(tmp_path),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _module_pids(proc, module="volume_backup"):
    """Pids of the module's python processes under ansible-playbook."""
    out = []
    for pid in _descendants(proc.pid):
        try:
            with open("/proc/%d/cmdline" % pid, "rb") as fh:
                if ("AnsiballZ_%s" % module).encode() in fh.read():
                    out.append(pid)
        except OSError:
            pass
    return out


def _interrupt(proc, how):
    """SIGKILL of the whole tree (returns None), or SIGTERM of the module (returns the output
    of the playbook, which then ends)."""
    if how.startswith("SIGKILL"):
        _kill_tree(proc)
        return None
    for pid in _module_pids(proc):
        os.kill(pid, signal.SIGTERM)
    return proc.communicate(timeout=120)[0].decode()


# Takes 4 s to stop after SIGTERM, and says when it got it.
SLOW_TO_STOP = ("sh", "-c", "trap 'echo stopping; sleep 4; exit 0' TERM; echo up; sleep 3600 & wait")


@pytest.mark.parametrize("how", ["SIGKILL of ansible-playbook's process tree", "SIGTERM of the module"])
def test_a_container_still_stopping_when_the_module_dies_ends_running(tmp_path, docker_engine,
                                                                      dockerthings, how):
    """docker start on a container that is still stopping answers 304 (success for docker-py)
    and the container exits a moment later: the watchdog (SIGKILL) and resume (SIGTERM) wait
    for it to stop, start it, and check that it runs."""
    vol = dockerthings.volume()
    app = dockerthings.container(docker_engine.busybox_image, vol, SLOW_TO_STOP)
    first_start = dockerthings.started_at(app)
    proc = _start_playbook(tmp_path, PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {volume: "%s", location: "file://%s/store", series: slow}
""" % (vol, tmp_path))
    try:
        deadline = time.monotonic() + 60
        while b"stopping" not in docker_engine.client.api.logs(app.id):
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the container was never stopped"
            time.sleep(0.05)
        assert dockerthings.state(app)["Running"]  # still stopping
        output = _interrupt(proc, how)
        assert output is None or "interrupted by signal 15" in output, output[-3000:]
    finally:
        _kill_tree(proc)
        proc.stdout.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        state = dockerthings.state(app)
        if state["Running"] and state["StartedAt"] != first_start:
            break
        time.sleep(0.2)
    time.sleep(5)  # a 304 "start" would show now: the container exits once its trap is done
    state = dockerthings.state(app)
    assert state["Running"] and state["StartedAt"] != first_start, state
    assert not _helpers(docker_engine, vol)


def _kill_tree(proc):
    """SIGKILL ansible-playbook and every process under it (the test started them all)."""
    if proc.poll() is not None:
        return  # reaped: its pid may be another process's by now
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


def _mount_tmpfs(path):
    os.makedirs(path)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
                          capture_output=True, text=True, check=False)
    if done.returncode:
        # the harness runs as root on ext4: a missing capability is a broken machine, not a pass
        pytest.fail("cannot mount a tmpfs here: %s" % done.stderr.strip())


@pytest.mark.parametrize("obstacle", ["immutable file", "nested mount"])
def test_a_forced_restore_that_cannot_replace_changes_nothing(run_playbook, tmp_path, docker_engine,
                                                              dockerthings, obstacle):
    """An immutable file (chattr +i) deep in the target, or a tmpfs mounted inside it: the
    forced restore fails with a one-line error before anything changes (the mount's content
    is never touched), and the container stopped for it runs again on its intact content."""
    from docker.types import Mount
    src = tmp_path / "src"
    src.mkdir()
    (src / "new.conf").write_text("new")
    dst = tmp_path / "dst"
    (dst / "keep").mkdir(parents=True)
    for i in range(10):
        (dst / ("old-%d.conf" % i)).write_text("old %d" % i)
        (dst / "keep" / ("data-%d" % i)).write_text("precious %d" % i)
    blocker = dst / "keep" / "data-5"
    if obstacle == "immutable file":
        done = subprocess.run(["chattr", "+i", str(blocker)], capture_output=True, text=True, check=False)
        if done.returncode:
            pytest.fail("chattr +i is not available on this file system: %s" % done.stderr.strip())
    else:
        _mount_tmpfs(dst / "keep" / "mnt")
        (dst / "keep" / "mnt" / "inside").write_text("on another file system")
    try:
        before = listing(dst)
        web = dockerthings.container(docker_engine.busybox_image, command=SERVICE,
                                     mounts=[Mount("/cfg", str(dst), type="bind")])
        location = "file://%s/store" % tmp_path
        run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "{{ src }}", location: "{{ location }}", series: cfg}
    - name: forced restore
      opskit.runbook.volume_backup: {state: restored, path: "{{ dst }}", location: "{{ location }}", series: cfg, force: true}
      ignore_errors: true
""", extra_vars={"src": str(src), "dst": str(dst), "location": location})
        result = run.task("forced restore")
        assert listing(dst) == before
        assert _failed(result) and "\n" not in result["msg"], result
        assert "nothing was changed" in result["msg"], result["msg"]
        assert ("immutable" if obstacle == "immutable file" else "is a mount point") in result["msg"]
        assert result["stopped"] == [web.name] and result["restarted"] == [web.name]
        assert "left_stopped" not in result and dockerthings.state(web)["Running"]
    finally:
        subprocess.run(["chattr", "-i", str(blocker)], capture_output=True, check=False)
        subprocess.run(["umount", str(dst / "keep" / "mnt")], capture_output=True, check=False)


def test_a_parallel_restore_killed_midway_leaves_the_directory_as_it_was(tmp_path):
    """SIGKILL while the writer threads fill the staging directory of a forced restore: the old
    entries are all there, as they were, beside the hidden staging directory; the next forced
    restore removes that leftover with the old content."""
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    _fill_small(src, 1500, 1024)
    (dst / "old").write_text("old")
    (dst / "keep").mkdir()
    (dst / "keep" / "data").write_bytes(os.urandom(4096))
    before = listing(dst)
    play = PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "%s", location: "file://%s/store", series: many}
      when: not (restore_only | default(false))
    - name: forced restore
      opskit.runbook.volume_backup:
        {state: restored, path: "%s", location: "file://%s/store", series: many, force: true}
""" % (src, tmp_path, dst, tmp_path)
    proc = _start_playbook(tmp_path, play)
    try:
        deadline, staged = time.monotonic() + 120, []
        while len(staged) < 200:  # the writers are busy in the staging directory
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the restore never started writing"
            staging = [n for n in os.listdir(dst) if n.startswith(".opskit-restore-")]
            staged = [n for sub in ("a", "z") for n in _names(dst / staging[0] / sub)] if staging else []
            time.sleep(0.01)
        _kill_tree(proc)  # SIGKILL: no cleanup code of the module can run
        assert len(staged) < 3000, "the restore finished before it could be killed"
    finally:
        _kill_tree(proc)
        proc.stdout.close()
    [leftover] = [n for n in os.listdir(dst) if n.startswith(".opskit-")]
    assert leftover.startswith(".opskit-restore-")
    hidden = os.fsencode(leftover)
    after = {k: v for k, v in listing(dst).items() if k != hidden and not k.startswith(hidden + b"/")}
    for entries in (before, after):
        entries[b"."].pop("mtime")  # the staging directory was created in it
    assert after == before
    run = _start_playbook(tmp_path, play.replace("restore_only | default(false)", "true"))
    output = run.communicate()[0].decode()
    assert run.returncode == 0, output[-3000:]
    assert listing(dst) == listing(src)


def _names(path):
    try:
        return os.listdir(path)
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("how", ["SIGTERM of the module", "SIGKILL of ansible-playbook's process tree"])
def test_containers_stay_stopped_on_a_half_restored_volume(tmp_path, docker_engine, dockerthings, how):
    """Through the Engine API a forced restore empties the volume, then writes the new content:
    interrupted in between, the volume is neither the old nor the new content, so the
    containers stopped for it are left stopped (by resume after SIGTERM, by the watchdog after
    SIGKILL), and the failure names them."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(20000):
        (src / ("f-%05d" % i)).write_bytes(b"x" * 512)
    vol = dockerthings.volume()
    mountpoint = dockerthings.mountpoint(vol)
    with open(os.path.join(mountpoint, "old"), "w") as fh:
        fh.write("old")
    app = dockerthings.container(docker_engine.busybox_image, vol, SERVICE)
    location = "file://%s/store" % tmp_path
    proc = _start_playbook(tmp_path, PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "%s", location: "%s", series: many}
    - name: forced restore
      opskit.runbook.volume_backup:
        {state: restored, volume: "%s", location: "%s", series: many, force: true,
         volume_access: api, helper_image: "%s"}
""" % (src, location, vol, location, docker_engine.busybox_image))
    try:
        deadline = time.monotonic() + 120
        while True:  # the volume was emptied and the new content is being written
            assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "the restore never started writing"
            names = os.listdir(mountpoint)
            if "old" not in names and names:
                break
            time.sleep(0.01)
        assert len(os.listdir(mountpoint)) < 20000, "the restore finished before it could be interrupted"
        output = _interrupt(proc, how)
        if output is not None:
            assert "LEFT STOPPED" in output and app.name in output, output[-3000:]
            assert '"left_stopped"' in output, output[-3000:]
    finally:
        _kill_tree(proc)
        proc.stdout.close()
    time.sleep(5)  # the watchdog (or resume) would have started it by now
    assert not dockerthings.state(app)["Running"], "a container was started on a half-restored volume"
    deadline = time.monotonic() + 20
    while _helpers(docker_engine, vol) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _helpers(docker_engine, vol)


@pytest.mark.parametrize("evil, message", [
    (("./null", tarfile.CHRTYPE, b""), "device files are refused"),
    (("./../../../../etc/opskit-escaped", tarfile.REGTYPE, b"pwned"), "'..' components are refused"),
    (("./link", tarfile.SYMTYPE, b""), "goes through the symlink"),
])
def test_a_refused_member_fails_a_forced_api_restore_before_the_volume_is_emptied(
        run_playbook, tmp_path, docker_engine, dockerthings, evil, message):
    location = "file://%s/store" % tmp_path
    members = [(".", tarfile.DIRTYPE, b""), ("./fine", tarfile.REGTYPE, b"ok"), evil]
    if evil[0] == "./link":
        members.append(("./link/through", tarfile.REGTYPE, b"never"))
    _publish_tar(location, "evil", members + [("./after", tarfile.REGTYPE, b"never")])
    vol = dockerthings.volume()
    with open(os.path.join(dockerthings.mountpoint(vol), "old"), "w") as fh:
        fh.write("old")
    before = listing(dockerthings.mountpoint(vol))
    app = dockerthings.container(docker_engine.busybox_image, vol, SERVICE)
    run = run_playbook(PLAY_HEAD + """
    - name: forced restore of a crafted archive
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ vol }}", location: "{{ location }}", series: evil, force: true,
         helper_image: "{{ image }}", volume_access: api}
      ignore_errors: true
""", extra_vars={"vol": vol, "location": location, "image": docker_engine.busybox_image})
    result = run.task("forced restore of a crafted archive")
    assert listing(dockerthings.mountpoint(vol)) == before  # nothing emptied, nothing written
    assert _failed(result) and message in result["msg"] and "\n" not in result["msg"], result
    assert result["restarted"] == [app.name] and dockerthings.state(app)["Running"]
    assert not _helpers(docker_engine, vol)


def _dangling_anonymous(docker_engine):
    """Names of the volumes no container uses that have no name of their own (64 hex digits)."""
    return {v["Name"] for v in docker_engine.client.api.volumes(filters={"dangling": True})["Volumes"] or []
            if len(v["Name"]) == 64 and all(c in "0123456789abcdef" for c in v["Name"])}


def test_helper_containers_leave_no_anonymous_volume(run_playbook, tmp_path, docker_engine, dockerthings):
    """A helper image that declares a VOLUME (as database images do) gets an anonymous volume
    with each helper container: removed with it."""
    import io
    tag = "opskit-test/with-volume:%s" % short("t").split("-")[1]
    dockerfile = ("FROM %s\nVOLUME /anon\n" % docker_engine.busybox_image).encode()
    docker_engine.client.images.build(fileobj=io.BytesIO(dockerfile), tag=tag, rm=True)
    try:
        vol = dockerthings.volume()
        with open(os.path.join(dockerthings.mountpoint(vol), "data"), "w") as fh:
            fh.write("data")
        before = _dangling_anonymous(docker_engine)
        run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "{{ location }}", series: anon, helper_image: "{{ tag }}"}
    - name: forced restore through the API
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ vol }}", location: "{{ location }}", series: anon, force: true,
         helper_image: "{{ tag }}", volume_access: api}
""", extra_vars={"vol": vol, "location": "file://%s/store" % tmp_path, "tag": tag})
        assert run.rc == 0, run.stdout[-3000:]
        assert _dangling_anonymous(docker_engine) - before == set()
    finally:
        docker_engine.client.api.remove_image(tag, force=True)


def test_a_volume_with_a_device_file_gets_a_backup_that_restores(run_playbook, tmp_path, docker_engine,
                                                                 dockerthings):
    """Every restore refuses device files, so volume backups leave them out, as directory
    backups do, and say so (skipped_files and a warning): the backup restores."""
    import stat as stat_module
    vol = dockerthings.volume()
    mountpoint = dockerthings.mountpoint(vol)
    with open(os.path.join(mountpoint, "data"), "w") as fh:
        fh.write("data")
    os.mknod(os.path.join(mountpoint, "null"), stat_module.S_IFCHR | 0o600, os.makedev(1, 3))
    target = short("vbdev")
    dockerthings.volumes.append(target)
    run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {volume: "{{ vol }}", location: "{{ location }}", series: dev}
    - name: restore
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ target }}", location: "{{ location }}", series: dev, helper_image: "{{ image }}"}
""", extra_vars={"vol": vol, "target": target, "location": "file://%s/store" % tmp_path,
                 "image": docker_engine.busybox_image})
    assert run.rc == 0, run.stdout[-3000:]
    saved = run.task("backup")
    assert saved["skipped_files"] == 1 and saved["entries"] == 2
    assert "1 device file(s) of volume %s are left out of the backup" % vol in json.dumps(saved), saved
    assert sorted(os.listdir(dockerthings.mountpoint(target))) == ["data"]


# An attacker who owns files in a backed-up tree: swaps each tree/dNN between a directory and a
# symlink to a root-only directory, and each tree/fNN between a file and a symlink to a
# root-only file, until ``stop`` exists.
SWAP_LOOP = r"""
import os, sys, time
b = sys.argv[1]
j = lambda *p: os.path.join(b, *p)
open(j("started"), "w").close()
while not os.path.exists(j("stop")):
    for i in range(20):
        os.rename(j("tree", "d%02d" % i), j("prep", "d%02d" % i))
        os.symlink(j("secret"), j("tree", "d%02d" % i))
        os.symlink(j("secret", "key"), j("prep", "l%02d" % i))
        os.rename(j("prep", "l%02d" % i), j("tree", "f%02d" % i))
    time.sleep(0.001)
    for i in range(20):
        os.unlink(j("tree", "d%02d" % i))
        os.rename(j("prep", "d%02d" % i), j("tree", "d%02d" % i))
        with open(j("prep", "f%02d" % i), "w") as fh:
            fh.write("harmless")
        os.rename(j("prep", "f%02d" % i), j("tree", "f%02d" % i))
    time.sleep(0.001)
"""


def test_a_symlink_swap_loop_during_a_directory_backup_leaks_nothing(run_playbook, tmp_path):
    base = str(tmp_path)
    secret = b"TOPSECRET root-only"
    os.makedirs(os.path.join(base, "secret"))
    with open(os.path.join(base, "secret", "key"), "wb") as fh:
        fh.write(secret)
    os.chmod(os.path.join(base, "secret"), 0o700)
    write_harmless_tree(base)
    swapper = subprocess.Popen([sys.executable, "-c", SWAP_LOOP, base])
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(os.path.join(base, "started")):
            assert swapper.poll() is None and time.monotonic() < deadline
            time.sleep(0.01)
        run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "{{ tree }}", location: "{{ location }}", series: swap, stop_containers: none}
      loop: [1, 2, 3]
""", extra_vars={"tree": os.path.join(base, "tree"), "location": "file://%s/store" % base})
        assert run.rc == 0, run.stdout[-3000:]
    finally:
        open(os.path.join(base, "stop"), "w").close()
        swapper.wait(30)
    restored = run_playbook(PLAY_HEAD + """
    - name: restore
      opskit.runbook.volume_backup: {state: restored, path: "{{ base }}/out{{ item }}", location: "{{ location }}",
                                     series: swap, backup: "{{ item }}", stop_containers: none}
      loop: "{{ ids }}"
""", extra_vars={"base": base, "location": "file://%s/store" % base,
                 "ids": [r["backup"]["id"] for r in run.task("backup")["results"]]})
    assert restored.rc == 0, restored.stdout[-3000:]
    for out in [d for d in os.listdir(base) if d.startswith("out")]:
        for dirpath, _dirs, files in os.walk(os.path.join(base, out)):  # symlinks are not followed
            for name in files:
                path = os.path.join(dirpath, name)
                if not os.path.islink(path):
                    with open(path, "rb") as fh:
                        assert secret not in fh.read(), "%s holds the secret" % path


PRECISE_NS = 1500000000123456789            # 2017-07-14, with nanoseconds
BEFORE_1970_NS = -1000000250000000          # 1969-12-20, a quarter second past
XATTR = ("user.opskit", b"kept \x00\xff")


def _attribute_tree(root):
    """A file with a nanosecond mtime and a user.* xattr, a sparse file, a 1969 file."""
    precise = os.path.join(root, "precise")
    with open(precise, "wb") as fh:
        fh.write(b"precise\n")
    os.setxattr(precise, XATTR[0], XATTR[1])
    os.utime(precise, ns=(PRECISE_NS, PRECISE_NS))
    sparse = os.path.join(root, "sparse.img")
    with open(sparse, "wb") as fh:                  # 8 MiB, two 4-byte islands
        fh.write(b"head")
        fh.seek(4 << 20)
        fh.write(b"midl")
        fh.truncate(8 << 20)
    old = os.path.join(root, "old")
    with open(old, "wb") as fh:
        fh.write(b"old\n")
    os.utime(old, ns=(BEFORE_1970_NS, BEFORE_1970_NS))


def _recorded(tmp_path):
    """What the stored archive records of the attribute tree's members."""
    import io
    import zstandard
    [path] = [os.path.join(d, n) for d, _s, names in os.walk(tmp_path / "store") for n in names
              if n.endswith(".tar.zst")]
    with open(path, "rb") as fh:
        raw = zstandard.ZstdDecompressor().stream_reader(fh).read()
    out = {}
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for member in tar:
            name = member.name[2:] if member.name.startswith("./") else member.name
            if name in ("precise", "sparse.img", "old"):
                out[name] = {"mtime": member.pax_headers.get("mtime", member.mtime),
                             "xattrs": sorted(k for k in member.pax_headers if "xattr" in k),
                             "sparse": member.issparse()}
    return out


def _attributes(root):
    out = {}
    for name in ("precise", "sparse.img", "old"):
        path = os.path.join(root, name)
        st = os.stat(path)
        try:
            xattr = os.getxattr(path, XATTR[0])
        except OSError:
            xattr = None
        out[name] = {"mtime_ns": st.st_mtime_ns, "xattr": xattr, "blocks_kib": st.st_blocks // 2}
    return out


SECONDS = 1000000000
# What a backup records of the attribute tree: a directory backup and a volume read through its
# mountpoint (tree.py) everything but the holes; a volume read through the API is the Engine's
# archive: whole seconds (rounded down), no user.* xattr.
RECORDS = {
    "directory": {"precise": {"mtime": "1500000000.123456789", "xattrs": ["SCHILY.xattr.user.opskit"], "sparse": False},
                  "old": {"mtime": "-1000000.250000000", "xattrs": [], "sparse": False}},
    "volume": {"precise": {"mtime": 1500000000, "xattrs": [], "sparse": False},
               "old": {"mtime": "-1000001", "xattrs": [], "sparse": False}},
}


@pytest.mark.parametrize("source, access", [("volume", "auto"), ("volume", "api"),
                                            ("directory", "auto"), ("directory", "api")])
def test_restores_keep_what_the_archive_records(run_playbook, tmp_path, docker_engine, dockerthings,
                                                source, access):
    """Sub-second and pre-1970 mtimes, user.* xattrs and holes, by source and access path.

    Through the mountpoint, everything the archive records is kept and zero runs become holes.
    Through the Engine API, the daemon untars: it keeps the nanoseconds and the xattrs, but
    writes holes as zeros and sets a pre-1970 mtime to 1970-01-01 (documented in the module)."""
    src_vol = dockerthings.volume()
    src = dockerthings.mountpoint(src_vol) if source == "volume" else str(tmp_path / "src")
    os.makedirs(src, exist_ok=True)
    _attribute_tree(src)
    dst = dockerthings.volume()
    location = "file://%s/store" % tmp_path
    what = ('volume: "%s", helper_image: "{{ image }}", volume_access: "{{ access }}"' % src_vol) \
        if source == "volume" else ('path: "%s"' % src)
    exact = source == "directory" or (access == "auto" and os.geteuid() == 0)  # read by tree.py
    run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {%s, location: "{{ location }}", series: attrs}
    - name: restore
      opskit.runbook.volume_backup:
        {state: restored, volume: "{{ dst }}", location: "{{ location }}", series: attrs,
         helper_image: "{{ image }}", volume_access: "{{ access }}"}
""" % what, extra_vars={"dst": dst, "location": location, "image": docker_engine.busybox_image,
                        "access": access})
    assert run.rc == 0, run.stdout[-3000:]
    recorded = _recorded(tmp_path)
    assert {k: recorded[k] for k in ("precise", "old")} == RECORDS["directory" if exact else "volume"]
    assert recorded["sparse.img"]["sparse"] is False  # neither writer records holes
    restored = run.task("restore")
    path = restored["access"]
    assert path == ("mountpoint" if access == "auto" and os.geteuid() == 0 else "api")
    got = _attributes(dockerthings.mountpoint(dst))
    assert got["precise"]["mtime_ns"] == (PRECISE_NS if exact else PRECISE_NS // SECONDS * SECONDS)
    assert got["precise"]["xattr"] == (XATTR[1] if exact else None)
    if path == "api":
        assert got["old"]["mtime_ns"] == 0                     # the daemon's clamp
        assert got["sparse.img"]["blocks_kib"] >= 8 << 10      # the daemon writes the zeros
    else:
        assert got["old"]["mtime_ns"] == (BEFORE_1970_NS if exact else -1000001 * SECONDS)
        assert got["sparse.img"]["blocks_kib"] <= 64           # zero runs became holes again
    with open(os.path.join(dockerthings.mountpoint(dst), "sparse.img"), "rb") as fh:
        data = fh.read()
    assert len(data) == 8 << 20 and data[:4] == b"head" and data[4 << 20:(4 << 20) + 4] == b"midl"
    assert data.count(0) == len(data) - 8


def test_a_directory_drill_compares_the_restored_files_and_bytes_with_the_backup(run_playbook, tmp_path):
    """Item 14: a drill passes on what the backup recorded (files and bytes, counted on disk
    after the restore), not on ``files >= 1``: a manifest that lies about either fails it."""
    src = tmp_path / "src"
    (src / "sub").mkdir(parents=True)
    (src / "a.conf").write_text("listen 8080\n")
    (src / "sub" / "b.bin").write_bytes(os.urandom(5000))
    os.link(src / "a.conf", src / "sub" / "hard")
    location = "file://%s/store" % tmp_path
    run = run_playbook(PLAY_HEAD + """
    - name: backup
      opskit.runbook.volume_backup: {path: "{{ src }}", location: "{{ location }}", series: "{{ item }}", stop_containers: none}
      loop: [honest, fewer, smaller]
""", extra_vars={"src": str(src), "location": location})
    made = run.task("backup")["results"]
    assert [(r["files"], r["file_bytes"]) for r in made] == [(3, 12 + 5000)] * 3
    for result, lie in zip(made[1:], ({"files": 4}, {"file_bytes": 5013})):  # the manifest says more than the archive holds
        path = os.path.join(str(tmp_path), "store", result["series"], "%s.manifest.json" % result["backup"]["id"])
        with open(path) as fh:
            manifest = json.load(fh)
        assert manifest["source"]["files"] == 3 and manifest["source"]["file_bytes"] == 5012
        manifest["source"].update(lie)
        with open(path, "w") as fh:
            json.dump(manifest, fh)
    drill = run_playbook([{"hosts": "localhost", "gather_facts": False, "tasks": [
        {"name": "drill", "ansible.builtin.include_role": {"name": "opskit.runbook.restore"},
         "vars": {"restore_location": location, "restore_series_prefix": "", "restore_fail_on_error": False,
                  "restore_scratch_dir": str(tmp_path),
                  "restore_directories": [{"name": n, "path": str(src), "series": n}
                                          for n in ("honest", "fewer", "smaller")]}},
        {"name": "assets", "ansible.builtin.debug": {"var": "restore_assets"}}]}])
    assert drill.rc == 0, drill.stdout[-3000:]
    assets = {a["name"]: a for a in drill.task("assets")["restore_assets"]}
    assert assets["honest"]["ok"] is True and assets["honest"]["verification"] == "passed"
    assert assets["fewer"]["ok"] is False and assets["fewer"]["error"] == (
        "verification failed: restored 3 files (5012 bytes), the backup recorded 4 files (5012 bytes)")
    assert assets["smaller"]["ok"] is False and assets["smaller"]["error"] == (
        "verification failed: restored 3 files (5012 bytes), the backup recorded 3 files (5013 bytes)")
    assert not [p for p in os.listdir(str(tmp_path)) if p.startswith("opskit-drill-")]
