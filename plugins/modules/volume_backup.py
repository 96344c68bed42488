#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: volume_backup
short_description: Back up and restore Docker named volumes and host directories, with safe quiescing
version_added: 0.1.0
description:
  - With O(state=backed_up), streams the content of a Docker named volume (O(volume)) or of a
    directory of the managed host (O(path)) as a tar archive, compresses it (zstd,
    multithreaded) and writes it to a file:// or s3:// location, where a manifest publishes it.
  - A volume is read directly through its mountpoint when that is proven safe
    (O(volume_access=auto), the same checks as for a restore), with the walk of directory
    backups. Every entry is opened relative to its directory's descriptor with C(O_NOFOLLOW),
    so a symlink swapped in while the volume is read is stored as a symlink, never followed.
    Otherwise, and with O(volume_access=api), a helper container is created (never started)
    with the volume mounted read-only and its content is streamed out through the Engine
    API's archive endpoint, with a warning saying why when O(volume_access=auto). No tar
    binary is needed and nothing is pulled. Helper containers are removed with their
    anonymous volumes (an image that declares a C(VOLUME) creates one with each container).
  - Ownership, permissions, symlinks, hard links, empty directories, modification times and
    non-UTF-8 file names are preserved. Sparse files are stored as plain data. Read through
    the mountpoint (and for a directory), mtimes are kept to the nanosecond and C(user.*)
    extended attributes are stored; the Engine API's archive has whole seconds and no
    extended attributes.
  - Device files are left out of volume and directory backups, because every restore refuses
    them. RV(skipped_files) counts them, and for a volume a warning names them.
  - Containers using the volume can be stopped for a consistent copy (O(stop_containers)).
    Exactly the containers that were running are started again, also when the backup fails,
    and also when the module process is killed (a small watchdog process does it then). The
    containers are started as soon as the volume has been read, before the upload completes.
    A container that is still stopping when the module is interrupted (SIGTERM) or killed is
    waited for (up to O(stop_timeout) + 15 seconds), then started, and checked to be running;
    up to three attempts.
  - With O(state=restored), restores a backup into the volume (created if missing) or
    directory. Members with absolute paths, C(..) components, device files and paths through
    an archive symlink are refused.
  - Nothing in the target changes before the stored sha256 is verified. A directory, and a
    volume written through its mountpoint (O(volume_access)), are restored in one pass into a
    hidden staging directory inside the target, which is renamed into place only once the
    whole archive is written and verified; on any error it is removed and the target is as
    it was. Regular files of up to 1 MiB are written there by two threads while the archive
    is still being read, checked and parsed; every other change keeps the archive's order.
    Through the Engine API, the stored archive is read and verified once before it is
    written. A volume or directory that the failed restore created is removed again.
  - A non-empty target is refused unless O(force=true), which replaces its content. So a
    second identical restore is refused, never applied on top of the first.
  - A forced staged restore (a directory, or a volume through its mountpoint) replaces all or
    nothing. Before anything is downloaded, it refuses a target that holds a mount point or
    an immutable or append-only (C(chattr +i), C(+a)) entry. Once the new content is staged
    and verified, the old entries are moved into a hidden C(.opskit-old-*) directory and the
    new ones are renamed in, with SIGTERM, SIGINT and SIGHUP held. On any error, everything
    moves back. Only then is the old content deleted, never across a mount point. If that
    deletion fails, the restore still succeeds, and a warning names what is left.
  - O(force=true) never empties C(/), also when O(path) is C(//) or a symlink to C(/).
  - Through the Engine API, the stored archive is read once before anything is written. That
    read checks its sha256 and every member, so an archive with a refused member fails
    before the volume is emptied. The API replace is not all or nothing. An error or a kill
    after the emptying leaves the volume half-restored.
  - Containers stopped for a restore are left stopped when the restore failed or was killed
    while the target held neither its old content nor the new one. The failure says so and
    RV(left_stopped) names them. After a SIGKILL the watchdog leaves them stopped too, without
    a message. A staged restore whose replace was rolled back leaves the old content intact,
    so its containers are started again.
  - Volume and directory backups have the same archive layout and manifest; either restores
    into the other.
  - With O(state=verified), restores a backup as O(state=restored) does into a scratch target
    (O(volume) or O(path), empty or absent; O(force) is refused), compares the files and bytes
    restored with those the backup recorded (and at least O(min_files) files), and records the
    outcome in the backup's manifest, as M(opskit.runbook.pg_backup) O(opskit.runbook.pg_backup#module:state=verified)
    does. The record is written conditionally under the run lock of the series, never into a
    backup deleted meanwhile. M(opskit.runbook.s3_rotate) keeps the newest verified backup of
    every series. The scratch target is left in place (the restore role's drill removes it).
author:
  - opskit.runbook developers (@opskit-runbook)
extends_documentation_fragment:
  - opskit.runbook.storage
  - opskit.runbook.storage.write
  - opskit.runbook.docker
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Reports what would be stopped and written (RV(would_stop), RV(series)) after checking
        the source, the helper image and that the location is writable; stops nothing and
        writes nothing.
      - For O(state=restored) and O(state=verified) it resolves the backup and checks that the
        target is empty, which for a volume creates and removes a helper container that mounts it
        read-only; O(state=verified) records nothing (RV(verification) is V(unverified)).
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  state:
    description:
      - V(backed_up) writes a new backup; V(restored) restores one; V(verified) restores one into
        a scratch target, checks it and records the outcome in its manifest.
    type: str
    choices: [backed_up, restored, verified]
    default: backed_up
  volume:
    description:
      - Name of the Docker named volume to back up or restore into.
      - Exactly one of O(volume) and O(path) is required.
    type: str
  path:
    description:
      - Absolute path of a directory of the managed host to back up or restore into, such as
        configuration files or the source of a bind mount. A symlink to a directory is followed
        for the root only.
      - Sockets and device files are skipped when backing up a directory (RV(skipped_files)).
      - Below the root, no symlink is ever followed. Every entry is opened relative to its
        directory's descriptor with C(O_NOFOLLOW), and its header and data come from what was
        opened. A file or directory that is swapped for a symlink during the backup is stored
        as that symlink, never as the link's target.
      - A file that shrinks while it is read (logrotate's C(copytruncate)) is padded with zeros
        to the size it had when its read began, as GNU tar does. An entry that vanishes, or
        keeps changing type, while it is read is left out. Both get a warning that names them.
    type: path
  series:
    description:
      - Backup series (the folder under O(location)).
      - Default is C(<docker host name>-<volume>) for a volume and C(<host name>-<path>) for a
        directory, made safe for a series name (for example V(web1-pgdata) or V(web1-etc-nginx)).
    type: str
  backup:
    description:
      - With O(state=restored), the backup to restore, V(latest) or a backup id
        (C(YYYYmmddTHHMMSSZ-xxxxxxxx)).
    type: str
    default: latest
  min_files:
    description:
      - With O(state=verified), the restore passes only with at least this many regular files
        (besides restoring the files and bytes that the backup recorded).
    type: int
    default: 1
  force:
    description:
      - With O(state=restored), delete the content of a non-empty target before restoring.
      - Emptying a volume through the Engine API (O(volume_access)) runs a helper container
        with C(find) and C(rm) from the helper image.
    type: bool
    default: false
  stop_containers:
    description:
      - Containers to stop while the volume or directory is read or written.
      - V(auto) stops the running containers that mount the volume (or bind-mount the path);
        if any of them carries the label C(opskit.runbook.stop-during-backup=true), only those
        labelled are stopped. For a path, V(auto) consults Docker only when it is reachable.
      - V(none) stops nothing.
      - Otherwise a list of container names (or ids of at least 6 characters) to stop, which
        must exist. Those not running are left alone.
      - The stopped containers are started again in reverse order.
    type: list
    elements: str
    default: [auto]
  stop_timeout:
    description:
      - Seconds a container is given to stop before it is killed.
      - A container still stopping when it is to be started again is waited for this long, plus
        15 seconds.
    type: int
    default: 30
  helper_image:
    description:
      - Local image for the helper container that mounts the volume. It is never pulled.
      - Default is the image of a container that uses the volume, else the smallest local
        image. The image needs no tools, except C(find) and C(rm) for O(force=true) through the
        Engine API.
    type: str
  volume_access:
    description:
      - How a backup reads and a restore writes a volume.
      - V(api) always goes through the Docker Engine API (C(GET) and C(PUT /containers/{id}/archive) of
        the helper container), which works with any daemon and any volume driver.
      - V(auto) reads and writes the volume's mountpoint directly when that is possible and safe, which
        is faster, several times for restores of many files; otherwise it uses the API. That is
        when the volume uses the C(local) driver, the module runs as root on the Docker host,
        and a probe file created through the mountpoint is seen inside the helper container
        (which proves that the mountpoint is this volume's, also with several daemons or a
        daemon in a VM). The probe file (C(.opskit-probe-*), created and removed at once, the
        root's mtime put back) is never part of a backup. The same member checks apply, every
        path is walked without following symlinks, and anything in the way that the archive did
        not create stops the restore.
      - RV(access) tells which way was used, and a warning says why V(auto) could not use the
        mountpoint.
    type: str
    choices: [auto, api]
    default: auto
notes:
  - The archive is a tar whose member names are relative to the volume (or directory) root,
    like C(tar -C root -c .); the manifest records C(kind) V(volume) or V(directory) and the
    entry counts in C(source).
  - The S3 part size comes from the size of the volume or directory, so memory stays bounded.
    A volume is measured through its mountpoint when the module runs on the Docker host as a
    user who can read it, else with C(docker system df) (which walks every volume of the host).
  - A backup or restore (not in check mode) holds the run lock of its series
    (C(<series>/.opskit-lock), see O(lock_timeout)) from before the containers are stopped until
    they are started again, so that two runs never quiesce the same series at once and
    M(opskit.runbook.s3_rotate) never rotates it meanwhile.
  - A backup whose containers fail to restart is still published (its data is complete); the
    task fails and names the containers.
  - An unsafe member fails the task and is named, before anything is written (through the
    Engine API, it is found in the verification read; in a staged restore, nothing is moved
    into place).
  - A staged restore needs room for the new content next to the old one until the old one is
    deleted. If the module process is killed during it, a hidden C(.opskit-restore-*)
    directory is left in the target, which then counts as not empty (O(force=true) replaces
    it). A SIGKILL in the short replace phase can also leave the old entries in a hidden
    C(.opskit-old-*) directory, from which they can be moved back by hand.
  - Through the Engine API, a restore reads and decompresses the stored archive twice, once to
    verify it, once to write it.
  - "What a backup records. A directory backup (O(path)) records every entry's mtime to the
    nanosecond (before 1970 too) and the C(user.*) extended attributes of files and directories
    (as C(SCHILY.xattr) PAX records, like C(tar --xattrs)); other namespaces (C(security.*),
    C(trusted.*), ACLs) belong to the host and are not recorded. A volume backup (O(volume)) is
    the archive the Docker Engine builds: whole-second mtimes (rounded down) and no C(user.*)
    extended attributes. Neither records holes: a sparse file is stored with its zeros
    (compressed, they take little room)."
  - "What a restore keeps. Through the mountpoint and into a directory, everything the archive
    records (owner as root, mode, mtime to the nanosecond, C(user.*) extended attributes where
    the filesystem takes them, else a warning names them), and every run of zero 4 KiB blocks
    becomes a hole again (a file that had zeros but no holes comes back sparse, with the same
    content). Through the Engine API the daemon untars: it keeps the nanoseconds and the
    extended attributes, but writes holes as zeros (the restored volume may take the full size
    of its sparse files) and sets any mtime before 1970-01-01 to 1970-01-01 00:00:00."
seealso:
  - module: opskit.runbook.backup_info
"""

EXAMPLES = r"""
- name: Back up the uploads volume to S3, stopping the containers that use it
  opskit.runbook.volume_backup:
    volume: app_uploads
    location: s3://acme-backups/web1
    endpoint_url: https://minio.internal:9000
  register: uploads

- name: Back up a volume, stopping only the worker (the web container keeps serving)
  opskit.runbook.volume_backup:
    volume: app_data
    location: file:///srv/backups
    stop_containers: [app-worker-1]

- name: Back up the nginx configuration directory
  opskit.runbook.volume_backup:
    path: /etc/nginx
    location: s3://acme-backups/web1
    stop_containers: none

- name: Restore the latest uploads backup into a fresh volume
  opskit.runbook.volume_backup:
    state: restored
    volume: app_uploads_restored
    series: web1-app_uploads
    location: s3://acme-backups/web1

- name: Verify the latest uploads backup in a scratch volume, record it in the manifest
  opskit.runbook.volume_backup:
    state: verified
    volume: app_uploads_drill
    series: web1-app_uploads
    location: s3://acme-backups/web1

- name: Roll the volume back to a given backup, replacing its content
  opskit.runbook.volume_backup:
    state: restored
    volume: app_uploads
    backup: 20261123T020000Z-5f2a9c1e
    force: true
    location: s3://acme-backups/web1
"""

RETURN = r"""
state:
  description: The requested state.
  returned: always
  type: str
  sample: backed_up
kind:
  description: V(volume) or V(directory).
  returned: always
  type: str
  sample: volume
volume:
  description: The volume name.
  returned: when O(volume) is set
  type: str
  sample: app_uploads
path:
  description: The directory.
  returned: when O(path) is set
  type: str
  sample: /etc/nginx
series:
  description: The backup series used.
  returned: always
  type: str
  sample: web1-app_uploads
location:
  description: The storage location.
  returned: always
  type: str
  sample: s3://acme-backups/web1
backup:
  description:
    - The backup written (O(state=backed_up)) or restored (O(state=restored)); null in check
      mode for a backup.
  returned: always
  type: dict
  contains:
    id:
      description: Backup id.
      type: str
      returned: always
      sample: 20261123T020000Z-5f2a9c1e
    series:
      description: Series name.
      type: str
      returned: always
    kind:
      description: V(volume) or V(directory).
      type: str
      returned: always
    created_at:
      description: Start of the backup (UTC, RFC 3339).
      type: str
      returned: always
    completed_at:
      description: When the backup was published.
      type: str
      returned: always
    age_seconds:
      description: Seconds since RV(backup.created_at).
      type: int
      returned: always
    size_bytes:
      description: Stored (compressed) size.
      type: int
      returned: always
    raw_bytes:
      description: Size of the tar archive before compression.
      type: int
      returned: always
    sha256:
      description: SHA-256 of the stored bytes.
      type: str
      returned: always
    compression:
      description: V(zstd), V(gzip) or V(none).
      type: str
      returned: always
    url:
      description: URL of the archive.
      type: str
      returned: always
    manifest_url:
      description: URL of the manifest.
      type: str
      returned: always
    verification:
      description: V(unverified), V(passed) or V(failed) (a restore test's verdict), or V(error) (one that could not run).
      type: str
      returned: always
    verified_at:
      description: When the last verification ran, or null.
      type: str
      returned: always
entries:
  description: Archive entries written or restored (files, directories, links, ...).
  returned: success, not in check mode
  type: int
  sample: 1532
files:
  description: Regular files (hard links included) written or restored.
  returned: success, not in check mode
  type: int
  sample: 1402
directories:
  description: Directories written or restored.
  returned: success, not in check mode
  type: int
  sample: 120
symlinks:
  description: Symbolic links written or restored.
  returned: success, not in check mode
  type: int
  sample: 8
hardlinks:
  description: Hard links (entries after the first name of a file) written or restored.
  returned: success, not in check mode
  type: int
  sample: 2
file_bytes:
  description:
    - Bytes of the regular files written or restored (each file once; hard links add none), as
      the archive holds them. A backup records it in its manifest (C(source.file_bytes)).
  returned: success, not in check mode
  type: int
  sample: 1048576000
on_disk:
  description:
    - What the target holds after the restore, counted on disk without following links
      (C(files), hard links included, and C(file_bytes)), when the restore wrote it directly (a
      directory, or a volume through its mountpoint). The restore role's drill compares it with
      RV(recorded).
  returned: O(state=restored) or O(state=verified), success, not in check mode, unless the restore went through the Engine API
  type: dict
  sample: {files: 1402, file_bytes: 1048576000}
recorded:
  description:
    - The counts the backup recorded at backup time (C(entries), C(files), C(directories),
      C(symlinks), C(hardlinks) and, for backups made since this collection records it,
      C(file_bytes)).
  returned: O(state=restored) or O(state=verified), success, not in check mode
  type: dict
  sample: {entries: 1532, files: 1402, directories: 120, symlinks: 8, hardlinks: 2, file_bytes: 1048576000}
skipped_files:
  description: Device files (and, for a directory, sockets) left out of the backup.
  returned: success, O(state=backed_up), not in check mode
  type: int
  sample: 0
raw_bytes:
  description: Bytes of the tar archive.
  returned: success, not in check mode
  type: int
  sample: 1073741824
size_bytes:
  description: Stored (compressed) bytes of the new backup.
  returned: success, O(state=backed_up), not in check mode
  type: int
  sample: 412316860
would_stop:
  description: Names of the running containers selected by O(stop_containers).
  returned: always
  type: list
  elements: str
  sample: [app-web-1]
stopped:
  description: Names of the containers that were stopped.
  returned: always
  type: list
  elements: str
  sample: [app-web-1]
restarted:
  description: Names of the stopped containers that were started again.
  returned: always
  type: list
  elements: str
  sample: [app-web-1]
downtime_seconds:
  description: Seconds from the first stop to the last restart (0 when nothing was stopped).
  returned: always
  type: float
  sample: 4.211
created:
  description: Whether the restore target did not exist and is created.
  returned: O(state=restored) or O(state=verified)
  type: bool
  sample: false
access:
  description:
    - How the backup read or the restore wrote the volume, V(mountpoint) (directly) or V(api)
      (see O(volume_access)).
  returned: with O(volume), success, not in check mode
  type: str
  sample: mountpoint
left_stopped:
  description:
    - Names of the stopped containers that were NOT started again because the failed restore
      left the target half-restored. Start them once the target is repaired (for example by a
      new forced restore).
  returned: O(state=restored), on failure, when the target was left half-restored
  type: list
  elements: str
  sample: [app-db-1]
emptied:
  description: Whether the restore target's content is replaced (O(force=true)).
  returned: O(state=restored) or O(state=verified)
  type: bool
  sample: false
verification:
  description:
    - The verification record written to the manifest (verified_at, method V(restore), result,
      details - C(files) and C(file_bytes) restored, where they were C(counted), the counts
      C(recorded), C(min_files), C(duration_seconds) and the C(error)). A result V(error) over an
      earlier verdict keeps the verdict, with the new error as C(last_error).
    - "In check mode only C(result: unverified)."
  returned: O(state=verified), also on failure once the restore ran
  type: dict
  sample: {"result": "passed", "method": "restore", "verified_at": "2026-11-23T03:00:00Z",
           "details": {"files": 1402, "file_bytes": 1048576000, "counted": "on disk", "min_files": 1,
                       "recorded": {"files": 1402, "file_bytes": 1048576000}, "duration_seconds": 8.2}}
lock:
  description:
    - The run lock of the series held during the backup or restore, containers stopped or not (see O(lock_timeout)) - its key,
      C(waited_seconds), C(attempts), and C(taken_over), the holder of a stale lock that was
      taken over (expired, or its process gone on this machine; module, host, pid, started,
      expires) or null.
  returned: not in check mode
  type: dict
  sample: {key: web1-app_uploads/.opskit-lock, waited_seconds: 0.0, attempts: 1, taken_over: null}
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._docker import docker_argspec
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import (
    location_from_params, storage_argspec)
from ansible_collections.opskit.runbook.plugins.module_utils._volume.action import run


def main():
    spec = storage_argspec(
        write=True,
        state=dict(type="str", default="backed_up", choices=["backed_up", "restored", "verified"]),
        volume=dict(type="str"),
        path=dict(type="path"),
        series=dict(type="str"),
        backup=dict(type="str", default="latest"),
        force=dict(type="bool", default=False),
        min_files=dict(type="int", default=1),
        stop_containers=dict(type="list", elements="str", default=["auto"]),
        stop_timeout=dict(type="int", default=30),
        helper_image=dict(type="str"),
        volume_access=dict(type="str", default="auto", choices=["auto", "api"]),
    )
    spec.update(docker_argspec())
    module = AnsibleModule(
        argument_spec=spec,
        required_one_of=[("volume", "path")],
        mutually_exclusive=[("volume", "path")],
        supports_check_mode=True,
    )
    run_module(module, lambda: run(module.params, location_from_params(module.params),
                                   module.check_mode))


if __name__ == "__main__":
    main()
