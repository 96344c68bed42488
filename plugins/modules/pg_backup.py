#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright: opskit.runbook contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

DOCUMENTATION = r"""
module: pg_backup
short_description: Back up, restore and restore-test PostgreSQL databases through the backup engine
version_added: 0.1.0
description:
  - O(state=dumped) runs C(pg_dump) and streams its output through the storage engine to a
    file:// or s3:// location (compressed, sha256-checksummed, published by a manifest). No
    temporary file is written for the custom and plain formats.
  - O(state=restored) restores a backup into a database, after checking the stored sha256, so a
    corrupt artifact never touches the target.
  - O(state=verified) checks the stored sha256 of every artifact (companions such as the globals
    too), restores the backup into a scratch database with a unique name
    (C(opskit_verify_<unix time>_<hex>)), runs O(verify_queries), drops the scratch database (also
    on failure) and records the outcome in the backup's manifest. A failed verification fails the
    task.
  - An infrastructure problem during a verification (connection refused, CREATE DATABASE denied,
    a full disk, a killed tool) is recorded as V(error), which keeps an earlier V(passed) or
    V(failed) (as C(last_error)); the task fails. Corrupt or missing artifacts and a dump whose
    SQL fails are V(failed).
  - The tools (C(pg_dump), C(pg_dumpall), C(pg_restore), C(psql)) run on the managed host, or
    inside O(docker_container) through the Docker API so that client and server versions match.
  - The password reaches the tools through a 0600 passfile (on the host) or the exec
    environment (in a container), never a command line.
  - SQL scripts from the store (plain-format dumps, globals) never run psql meta-commands such
    as C(\!) (a shell command). Where psql has C(\restrict) (17.6+, 16.10+, 15.14+, 14.19+,
    13.22+) they are fed behind it; with an older psql they are read first and refused, before
    anything is changed, when a backslash or a psql variable could reach psql outside of strings,
    comments and COPY data.
  - SIGTERM or SIGHUP end a run cleanly. The tools are killed (in a O(docker_container) too, when
    the Docker Engine runs on the managed host), temporary copies, the passfile, the in-flight
    marker and the scratch database are removed, and nothing is recorded. After a SIGKILL, the
    next run removes what the killed one left (temporary files of dead runs, tools it left running
    in the container, the in-flight markers of the series, scratch databases older than 15 minutes
    without sessions) and reports it in RV(leftovers) and a warning.
author:
  - opskit.runbook developers (@opskit-runbook)
extends_documentation_fragment:
  - opskit.runbook.storage
  - opskit.runbook.storage.write
  - opskit.runbook.postgres
  - opskit.runbook.docker
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - Connects, checks that the databases exist, that the location is writable (dumped) or the
        backup exists and the target can take it (restored, verified), and returns the plan.
        Nothing is written, created or restored.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: none
options:
  state:
    description:
      - V(dumped) writes a new backup of each O(database).
      - V(restored) restores O(backup) into O(target_database).
      - V(verified) restores O(backup) into a scratch database, checks it and records the result.
    type: str
    choices: [dumped, restored, verified]
    default: dumped
  database:
    description:
      - The database(s) to dump (O(state=dumped)); each gets its own backup and series.
      - With O(state=restored) or O(state=verified), the one database whose series holds the
        backup (used to fill in O(series)); also the default O(target_database).
    type: list
    elements: str
    aliases: [db]
  series:
    description:
      - Series (folder) of the backups. V({host}) and V({database}) are filled in; with several
        databases it must contain V({database}).
      - V({host}) is O(host), or O(docker_container) / the managed host's name (C(hostname)) when
        connecting over a socket, so that two hosts never share a series.
      - A name that is not a valid series (letters, digits, V(.), V(_), V(-)) is cleaned and gets
        8 hex digits of the sha256 of the original text appended, so V(app db) and V(app/db) stay
        two series.
      - Default V({host}-{database}).
    type: str
  format:
    description:
      - pg_dump format. V(custom) allows selective and parallel restores; V(plain) is SQL restored
        with psql; V(directory) dumps in parallel with O(jobs).
      - pg_dump's own compression is turned off; the engine compresses (O(compression)).
      - The directory format is written by pg_dump into a private temporary directory (pg_dump
        cannot write it to a pipe), streamed into the engine as a tar and removed.
    type: str
    choices: [custom, plain, directory]
    default: custom
  globals:
    description:
      - Also store C(pg_dumpall --globals-only) (roles, tablespaces) as a companion artifact.
    type: bool
    default: false
  jobs:
    description:
      - Parallel jobs. Dumping, only with O(format=directory). Restoring a custom-format backup
        staged (O(staged), the default), the post-data section (indexes, constraints) is built by
        O(jobs) workers from the kept TOC; with O(staged=false) and O(jobs) > 1 the downloaded copy
        is decompressed into a 0600 temporary file first (pg_restore cannot run in parallel from a
        pipe).
      - From 1 to 64 (each job is one PostgreSQL connection and one pg_dump/pg_restore worker).
    type: int
    default: 1
  backup:
    description:
      - The backup to restore or verify, V(latest) or an id such as V(20261123T020000Z-5f2a9c1e).
    type: str
    default: latest
  target_database:
    description:
      - Database to restore into. Default the backed-up database's name.
    type: str
  create:
    description:
      - Create O(target_database) when it does not exist (from C(template0)). Without it a missing
        target is an error. A database created here is dropped again if the restore fails.
    type: bool
    default: false
  clean:
    description:
      - Restore into a non-empty target by dropping the backup's objects from it first
        (pg_restore C(--clean --if-exists)); objects that are not in the backup stay.
      - A plain-format backup has no DROP statements, so the target database is dropped
        (C(WITH (FORCE)), ending its sessions) and created again instead.
    type: bool
    default: false
  force:
    description:
      - Restore into a non-empty target without dropping anything; conflicting objects then
        fail the restore.
    type: bool
    default: false
  single_transaction:
    description:
      - Restore in one transaction (all or nothing). Not with O(jobs) > 1.
    type: bool
    default: false
  no_owner:
    description:
      - Restore without ownership and privileges (pg_restore C(--no-owner --no-privileges)), for
        servers that lack the original roles. No effect on plain-format backups.
      - Default V(true) with O(state=verified), V(false) otherwise.
    type: bool
  restore_globals:
    description:
      - Restore the backup's globals (roles, tablespaces) before the database. Roles that exist
        already are kept as they are.
    type: bool
    default: false
  staged:
    description:
      - Restore a custom-format backup into a staging database next to O(target_database),
        streamed from the location (no temporary copy), and swap it in under the target's name
        only once the stream's sha256 and size matched the manifest and pg_restore succeeded. On
        any failure the staging database is dropped and the target is as it was.
      - With O(jobs) > 1, the pre-data and post-data sections (indexes, constraints; the latter
        by C(pg_restore --jobs)) are restored from a small 0600 file under O(tmp_dir) that holds
        the archive's header and TOC only, and the data is loaded from the stream by up to
        O(jobs) pg_restore at once (past its first 8 MiB, the rows of a large table are shared
        between them, so they are stored in another physical order than in the source).
      - The swap terminates the target's sessions (one transaction renames the target away and
        the staging database in; a client connecting meanwhile waits, then reconnects to the new
        database). The connecting user needs CREATEDB, ownership of the target and the right to
        terminate its sessions (superuser or C(pg_signal_backend)).
      - The owner, the database-level settings (C(ALTER DATABASE/ROLE ... SET)), the privileges
        on the database, its connection limit and comment, encoding, locale and tablespace are
        carried over from the target; objects of the target that the backup does not hold are
        not (with O(clean=true) the target is replaced as a whole).
      - A non-empty target needs O(clean=true). V(false), or O(force=true), or the plain and
        directory formats restore in place (download first, see O(clean)).
      - O(state=verified) streams into its scratch database the same way.
    type: bool
    default: true
  keep_previous:
    description:
      - With a staged restore, keep the database it replaced as C(opskit_previous_<time>_<hex>_<target>)
        (C(plan.previous_database) in RV(plan)) instead of dropping it, for an instant undo; the one an earlier
        O(keep_previous) kept for this target is dropped. Its comment records the target and its
        original comment.
      - To undo, connected to another database, in one transaction -
        C(ALTER DATABASE target RENAME TO target_bad; ALTER DATABASE opskit_previous_... RENAME TO target)
        (after ending the target's sessions), then restore its comment.
    type: bool
    default: false
  verify:
    description:
      - With O(state=restored), check the restored database itself after the restore, as
        O(state=verified) checks its scratch database - the number of tables against the number
        dumped, then O(verify_queries) - and return RV(verification). Tables the dump does not
        hold are kept by a restore into an existing database, so only fewer tables than dumped
        fail. A failed check fails the task (the data is restored already); nothing is recorded
        in the manifest.
    type: bool
    default: false
  verify_queries:
    description:
      - Checks run in the scratch database with O(state=verified), after the restore, and in the
        restored database with O(state=restored) and O(verify=true). The number of restored
        tables is always compared with the number dumped.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: Name shown in the result.
        type: str
      query:
        description: SQL to run; its first column of the first row is the value checked.
        type: str
        required: true
      expect:
        description: Expected value, compared as text.
        type: str
      min:
        description: Minimum value (numeric), e.g. a minimum row count.
        type: float
      max:
        description: Maximum value (numeric).
        type: float
      rows:
        description: Exact number of rows returned.
        type: int
  method:
    description:
      - V(logical) is pg_dump / pg_restore of one database (O(format), O(globals), ...).
      - V(physical) is the whole cluster. With O(state=dumped) a base backup by C(pg_basebackup)
        over a replication connection (C(-D - -Ft), one tar streamed to the engine, never
        spooled), recording the start and stop LSN, the timeline and the C(backup_label) in the
        manifest (kind V(postgres-physical)); see O(server_compression) for how it is compressed. The user needs the REPLICATION attribute.
        A cluster with additional tablespaces (C(pg_basebackup) streams one tar to stdout only
        without them) is backed up by the module itself with C(BASE_BACKUP) over a psycopg2 replication
        connection (PostgreSQL 15, from the managed host, not with O(docker_container)); every tar is streamed,
        the base tar as the main artifact and each tablespace's tar as a companion C(tablespace-<oid>)
        with its sha256; the manifest lists each tablespace's oid, name and location. The WAL comes from the
        archive that C(opskit-wal) fills (see docs/operations.md, "Point-in-time recovery").
      - With O(state=restored), the base backup that ended before the target is extracted into
        O(data_directory) with C(restore_command) and the recovery target set; the cluster recovers
        when it is started. The WAL segments recovery needs (up to 1 GiB) are fetched by the module
        into C(opskit_wal_spool/) in the data directory, each checked against its sha256 before it
        is kept; C(restore_command) hard-links (or copies) a file from there and runs O(wal_helper) C(fetch) for
        anything else, and C(recovery_end_command) removes the spool. With O(state=verified) (a drill) the same happens in a scratch
        directory; the cluster is started on a scratch port (127.0.0.1, C(archive_mode=off)),
        recovery is awaited, O(verify_queries) run (in the first O(database), default
        V(postgres)), and it is stopped and removed, also on failure. Every WAL segment recovery
        needs is checked (present, sha256) before the base backup is extracted.
      - A base backup with tablespaces is restored with each companion extracted into a directory
        (see O(tablespace_mapping)) and C(tablespace_map) pointing the data directory at them; a damaged
        companion is refused (sha256) before recovery starts.
      - O(series) defaults to V({host}-physical) with V(physical).
    type: str
    choices: [logical, physical]
    default: logical
  server_compression:
    description:
      - With O(method=physical), O(state=dumped) and O(compression=zstd) or V(gzip) (PostgreSQL 15
        server and C(pg_basebackup)), the server compresses the tar while it reads the files
        (C(--compress=server-zstd:level=L,workers=N), N from O(compression_threads), V(-1) the
        cores of the managed host) and the engine stores it as it comes, with its sha256, for about
        half the CPU of compressing in the module. The WAL from the backup's start to its stop is
        then included in the tar (C(-X fetch)), so on a busy server C(wal_keep_size) must keep it until
        the end of the backup, or C(pg_basebackup) fails and nothing is stored. The module waits
        until the stop segment is archived (C(pg_stat_archiver)) before it publishes the backup.
        C(pg_basebackup)'s own C(backup_manifest) cannot be kept then (PostgreSQL 15 cannot add it to
        a server-compressed tar on stdout), so the stop LSN comes from its C(--verbose) output.
      - V(false), O(compression=none) or an older server - C(-X none), the module compresses, the
        stop LSN comes from C(backup_manifest), and the server waits for the archiver (in steps of 1 s).
    type: bool
    default: true
  target:
    description:
      - With O(method=physical), recover to the end of the archived WAL (V(latest)) or only to
        the end of the base backup (V(immediate)). Default V(latest) unless O(target_time) or
        O(target_lsn) is given (they exclude each other).
    type: str
    choices: [latest, immediate]
  target_time:
    description:
      - With O(method=physical), recover up to this time (RFC 3339 or C(2026-12-01 14:30:00.5+00),
        a time zone is required); the newest base backup that ended before it is used. A time
        before the end of the oldest base backup is refused.
    type: str
  target_lsn:
    description:
      - With O(method=physical), recover up to this LSN (such as V(0/3000060)).
    type: str
  data_directory:
    description:
      - With O(method=physical) and O(state=restored), the directory to restore into (required), absent or
        empty, or with O(force) an existing data directory (with C(PG_VERSION)), whose content is
        replaced. A directory whose cluster is running (a live C(postmaster.pid)) is always refused.
      - With O(state=verified), the scratch directory of the drill (default a private one under
        O(tmp_dir)); it is removed at the end.
    type: path
  tablespace_mapping:
    description:
      - With O(method=physical) and O(state=restored) or V(verified), where each additional tablespace of the
        base backup is restored - keys are its oid, its name or its original location, values an absolute
        directory (absent or empty, or with O(force) a tablespace directory whose content is replaced; one that
        a running cluster's C(pg_tblspc) points at is always refused).
      - A tablespace not mapped goes, in a drill (O(state=verified)), into a scratch directory next to the
        scratch data directory, removed with it (mapped ones are removed too), and with O(state=restored)
        into its original location, under the same rules.
    type: dict
  data_owner:
    description:
      - The user the restored files belong to and the drill's cluster runs as. Default the owner
        of O(data_directory) (or of its parent), V(postgres) when that is root.
    type: str
  wal_helper:
    description:
      - The C(opskit-wal) command that fetches WAL, as a list (the Python interpreter, the script and C(--config FILE)),
        written into C(restore_command) with C(fetch %f %p) appended (for what the spool does not hold). Its config file holds the
        location and credentials (mode 0600), so no secret reaches postgresql.conf.
    type: list
    elements: str
  recovery_timeout:
    description:
      - Seconds a drill waits for recovery to reach its target.
    type: int
    default: 3600
  docker_container:
    description:
      - Run the tools inside this running container (name or id) through the Docker API (exec,
        no TTY, binary streams). O(host) then defaults to the container's local socket.
      - Paths such as O(sslrootcert) and O(bin_dir) are paths inside the container.
      - The directory format and restores with O(jobs) > 1 are not supported in a container.
    type: str
  docker_user:
    description:
      - User the tools run as inside O(docker_container), for example V(postgres) for peer
        authentication. Default the container's user.
    type: str
  bin_dir:
    description:
      - Directory of pg_dump, pg_restore, psql and pg_dumpall.
      - Default on the host C(/usr/lib/postgresql/<server major>/bin) when it exists, else the
        C(PATH); in a container the container's C(PATH).
    type: path
  tmp_dir:
    description:
      - Where the directory format and restores keep their private (0700) temporary files (a
        restore needs room for the stored backup, and a parallel or directory-format one also for
        its decompressed content). Default the system temporary directory.
    type: path
notes:
  - A failed or killed pg_dump aborts the backup; its artifacts are deleted (and an S3 multipart
    upload aborted), and no manifest is written, so it never appears as a backup.
  - O(state=verified) holds the run lock of the backup's series (C(<series>/.opskit-lock), see
    O(lock_timeout)) from the restore until the outcome is recorded, so that two verifications
    never run at once and M(opskit.runbook.s3_rotate) never deletes the backup under it.
  - Plain-format restores run psql with C(ON_ERROR_STOP), so an error midway fails the task.
  - A plain dump that psql's C(\restrict) stops is refused midway; with O(single_transaction) nothing
    of it stays, and a target database the restore created is dropped again.
  - With a psql older than C(\restrict), a plain dump is first copied (decompressed) to a private
    temporary file under O(tmp_dir) and checked there; the checked copy is what psql reads. Its
    check also refuses, as a precaution, a standard string literal that psql would read
    differently with C(standard_conforming_strings) off (one that ends in a backslash, for
    example) and a psql variable (C(:NAME)) outside of quotes; use newer client tools
    (O(bin_dir)) for such a dump.
  - Staged restores (O(staged), custom format) read the backup once from the store, pinned and
    resumed as below, and stream it into the staging database; the target is swapped only after
    the sha256 matched at the end of the stream. After a SIGKILL, the next O(state=restored) or
    O(state=verified) run drops the staging database (or the retired one, when the kill came
    right after the swap) and reports it in RV(leftovers).
  - Other restores download the backup once, as stored (compressed, encrypted), into a private
    temporary file under O(tmp_dir), and check its sha256 there before anything touches the
    target; the tools are fed from that copy. The download is pinned to the object's version
    (the S3 ETag, If-Match) read right after the manifest, so an object overwritten meanwhile
    fails the task and nothing is restored. A dropped connection resumes where it stopped
    (a Range request, still pinned), through the usual retries. Parallel and directory-format
    restores also decode the copy into a second temporary file or directory.
seealso:
  - module: opskit.runbook.backup_info
"""

EXAMPLES = r"""
- name: Nightly dump of two databases with roles to S3
  opskit.runbook.pg_backup:
    database: [app, billing]
    globals: true
    destination: s3://acme-backups/prod
    host: db1.internal
    user: backup
    password: "{{ vault_pg_backup_password }}"
    sslmode: verify-full
    sslrootcert: /etc/ssl/certs/internal-ca.pem
  register: dumped

- name: Dump with the tools of the database container (versions always match)
  opskit.runbook.pg_backup:
    database: wakedock
    docker_container: wakedock_postgres
    docker_user: postgres
    destination: file:///srv/backups

- name: Restore the latest backup into a new database, four jobs in parallel
  opskit.runbook.pg_backup:
    state: restored
    database: app
    series: db1.internal-app
    target_database: app_restored
    create: true
    jobs: 4
    destination: s3://acme-backups/prod

- name: Monthly restore test, recorded in the manifest
  opskit.runbook.pg_backup:
    state: verified
    database: app
    host: scratch-db.internal
    series: db1.internal-app
    destination: s3://acme-backups/prod
    verify_queries:
      - name: orders present
        query: SELECT count(*) FROM shop.orders
        min: 1000
      - query: SELECT value FROM meta WHERE key = 'schema_version'
        expect: "42"
- name: Weekly base backup of the whole cluster (WAL archived by opskit-wal)
  opskit.runbook.pg_backup:
    method: physical
    series: db1-physical
    host: db1.internal
    user: replicator
    password: "{{ vault_pg_replication_password }}"
    destination: s3://acme-backups/prod

- name: Drill - recover to a second on a scratch port, check the marker, remove it
  opskit.runbook.pg_backup:
    state: verified
    method: physical
    series: db1-physical
    target_time: "2026-12-01T14:30:00Z"
    wal_helper: [/usr/bin/python3, /usr/local/lib/opskit/opskit-wal, --config, /etc/opskit/wal.json]
    data_owner: postgres
    user: postgres
    password: "{{ vault_pg_password }}"
    database: [app]
    destination: s3://acme-backups/prod
    verify_queries:
      - query: SELECT count(*) FROM drill_marker WHERE at = '2026-12-01T14:29:58Z'
        expect: "1"
"""

RETURN = r"""
backup:
  description:
    - The backup written (first database when several), restored or verified.
    - Its fields are those of M(opskit.runbook.backup_info)'s backups, plus, when dumping,
      RV(backup.duration_seconds), RV(backup.database), RV(backup.format),
      RV(backup.server_version) and RV(backup.pg_dump_version).
  returned: success, except in check mode with state=dumped
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
      sample: db1.internal-app
    url:
      description: URL of the main artifact.
      type: str
      returned: always
      sample: s3://acme-backups/prod/db1.internal-app/20261123T020000Z-5f2a9c1e.dump.zst
    manifest_url:
      description: URL of the manifest.
      type: str
      returned: always
    size_bytes:
      description: Stored (compressed) size of the main artifact.
      type: int
      returned: always
      sample: 28311552
    raw_bytes:
      description: Size of the pg_dump output (null for a base backup the server compressed).
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
    verification:
      description:
        - V(unverified), V(passed), V(failed) or V(error) (a verification that could not run, with
          no earlier verdict to keep).
      type: str
      returned: always
    duration_seconds:
      description: Wall time of the backup.
      type: float
      returned: when dumping
      sample: 6.9
    database:
      description: The database dumped.
      type: str
      returned: when dumping
    format:
      description: pg_dump format.
      type: str
      returned: when dumping
    server_version:
      description: PostgreSQL server version.
      type: str
      returned: when dumping
      sample: "15.13"
    pg_dump_version:
      description: Version of the pg_dump that ran.
      type: str
      returned: when dumping
      sample: "15.13"
    globals:
      description: Whether the globals were stored.
      type: bool
      returned: when dumping
    start_lsn:
      description: With O(method=physical), the base backup's start LSN (its checkpoint's redo point).
      type: str
      returned: when dumping with method=physical
      sample: 0/2000028
    stop_lsn:
      description: With O(method=physical), the LSN the base backup is consistent from.
      type: str
      returned: when dumping with method=physical
      sample: 0/2000100
    timeline:
      description: With O(method=physical), the timeline the base backup started on.
      type: int
      returned: when dumping with method=physical
    start_wal:
      description: With O(method=physical), the first WAL segment the base backup needs.
      type: str
      returned: when dumping with method=physical
      sample: "000000010000000000000002"
    stop_wal:
      description: With O(method=physical), the last WAL segment the base backup needs.
      type: str
      returned: when dumping with method=physical
    stop_time:
      description: With O(method=physical), when the base backup ended (restores to earlier times cannot use it).
      type: str
      returned: when dumping with method=physical
    tablespaces:
      description:
        - With O(method=physical), the additional tablespaces (empty without) - C(oid), C(name), C(location)
          (the original path), C(artifact) (the companion's name), C(sha256) and C(size_bytes) of the companion.
      type: list
      elements: dict
      returned: when dumping with method=physical
      sample: [{"oid": 16384, "name": "space", "location": "/srv/pg/space", "artifact": "tablespace-16384",
                "sha256": "9f2c...", "size_bytes": 8312}]
    pg_basebackup_version:
      description: With O(method=physical), the version of the pg_basebackup that ran (null when C(BASE_BACKUP) ran over psycopg2, with tablespaces).
      type: str
      returned: when dumping with method=physical
    server_compression:
      description: With O(method=physical), the C(--compress) given to pg_basebackup (or its equivalent for C(BASE_BACKUP)), null when the module compressed.
      type: str
      returned: when dumping with method=physical
      sample: server-zstd:level=3,workers=2
backups:
  description: Every backup written, in the order of O(database) (same fields as RV(backup)).
  returned: state=dumped
  type: list
  elements: dict
plan:
  description:
    - With O(state=dumped), one entry per database (database, series, format, size_bytes).
    - Otherwise what the restore does (backup_id, series, format, target_database, steps
      among create, replace, recreate, clean and restore, globals, duration_seconds).
    - A staged restore also returns C(staged), C(staging_database) and C(previous_database) (the
      database kept by O(keep_previous), else null).
  returned: always
  type: raw
  sample: {"backup_id": "20261123T020000Z-5f2a9c1e", "target_database": "app_restored",
           "steps": ["create", "restore"], "format": "custom", "globals": false}
verification:
  description:
    - The verification record written to the manifest (verified_at, method, result, details).
    - With O(state=restored) and O(verify=true), the checks of the restored database (result, details), not recorded.
  returned: state=verified, or state=restored with verify=true (not in check mode)
  type: dict
  sample: {"result": "passed", "method": "restore", "verified_at": "2026-11-23T03:00:00Z",
           "details": {"tables": 12, "queries": [{"name": "orders present", "passed": true, "value": "1234"}]}}
leftovers:
  description:
    - What interrupted earlier runs had left and this run removed (in check mode, found and kept),
      also said in a warning.
    - C(temporary_files) are passfiles and temporary dump copies of runs that no longer live;
      C(scratch_databases) are verification databases older than 15 minutes without sessions,
      and the staging and retired databases of killed staged restores (looked for with
      O(state=verified) and O(state=restored)).
    - C(processes) (with O(docker_container)) are tools (V(pg_dump), V(pg_restore), V(psql)) that a killed
      run had left running in the container, killed now; this needs the Docker Engine on the managed host.
    - C(inflight_markers) (O(state=dumped)) are the in-flight markers of backups of the series that
      were killed (expired, or their process gone on this machine); their partial artifacts are
      left to M(opskit.runbook.s3_rotate), which removes them after its O(opskit.runbook.s3_rotate#module:orphan_grace).
  returned: when something was found
  type: dict
  sample: {"temporary_files": ["/tmp/opskit-pgpass-4711-k2j3"], "scratch_databases": ["opskit_verify_1764558000_5f2a9c1e"]}
location:
  description: The storage location.
  returned: state=dumped
  type: str
  sample: s3://acme-backups/prod
lock:
  description:
    - The run lock of the series held during the verification (see O(lock_timeout)) - its key,
      C(waited_seconds), C(attempts), and C(taken_over), the holder of a stale lock that was
      taken over (expired, or its process gone on this machine; module, host, pid, started,
      expires) or null.
  returned: O(state=verified), not in check mode
  type: dict
  sample: {key: db1.internal-app/.opskit-lock, waited_seconds: 0.0, attempts: 1, taken_over: null}
recovery:
  description:
    - With O(method=physical) and O(state=restored) - the target, C(restore_seconds), C(data_directory),
      C(wal_prefetched) (how many WAL files the spool holds) and C(tablespaces) (oid to the directory it was restored into).
    - With O(state=verified) (a drill) - C(target), C(recovered_lsn) and C(recovered_time) (the last
      WAL record and the last transaction replayed), and C(rto_seconds) (from the start of the task
      to the promoted cluster). Also recorded in the base backup's verification (method V(pitr-drill)).
  returned: method=physical, state=restored or verified, not in check mode
  type: dict
  sample: {"target": "2026-12-01 14:30:00.000000+00", "recovered_lsn": "0/5000F30",
           "recovered_time": "2026-12-01 14:29:59.81+00", "rto_seconds": 4.2}
msg:
  description: What happened, in one line.
  returned: always
  type: str
"""

from ansible.module_utils.basic import AnsibleModule

from ansible_collections.opskit.runbook.plugins.module_utils._docker import docker_argspec
from ansible_collections.opskit.runbook.plugins.module_utils._module import run_module
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.action import ACTIONS, run
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.connection import pg_argspec
from ansible_collections.opskit.runbook.plugins.module_utils._postgres.pitr_apply import run_physical
from ansible_collections.opskit.runbook.plugins.module_utils._storage.options import (
    location_from_params, storage_argspec)

QUERY_SPEC = dict(
    name=dict(type="str"),
    query=dict(type="str", required=True),
    expect=dict(type="str"),
    min=dict(type="float"),
    max=dict(type="float"),
    rows=dict(type="int"),
)


def main():
    spec = storage_argspec(
        write=True,
        state=dict(type="str", default="dumped", choices=list(ACTIONS)),
        database=dict(type="list", elements="str", aliases=["db"]),
        series=dict(type="str"),
        format=dict(type="str", default="custom", choices=["custom", "plain", "directory"]),
        globals=dict(type="bool", default=False),
        jobs=dict(type="int", default=1),
        backup=dict(type="str", default="latest"),
        target_database=dict(type="str"),
        create=dict(type="bool", default=False),
        clean=dict(type="bool", default=False),
        force=dict(type="bool", default=False),
        single_transaction=dict(type="bool", default=False),
        no_owner=dict(type="bool"),
        restore_globals=dict(type="bool", default=False),
        staged=dict(type="bool", default=True),
        keep_previous=dict(type="bool", default=False),
        verify_queries=dict(type="list", elements="dict", default=[], options=QUERY_SPEC),
        verify=dict(type="bool", default=False),
        method=dict(type="str", default="logical", choices=["logical", "physical"]),
        server_compression=dict(type="bool", default=True),
        target=dict(type="str", choices=["latest", "immediate"]),
        target_time=dict(type="str"),
        target_lsn=dict(type="str"),
        data_directory=dict(type="path"),
        tablespace_mapping=dict(type="dict"),
        data_owner=dict(type="str"),
        wal_helper=dict(type="list", elements="str"),
        recovery_timeout=dict(type="int", default=3600),
        docker_container=dict(type="str"),
        docker_user=dict(type="str"),
        bin_dir=dict(type="path"),
        tmp_dir=dict(type="path"),
    )
    spec.update(pg_argspec())
    spec.update(docker_argspec())
    module = AnsibleModule(argument_spec=spec, supports_check_mode=True,
                           mutually_exclusive=[("clean", "force")])

    def action():
        runner = run_physical if module.params["method"] == "physical" else run
        return runner(module.params, location_from_params(module.params), module.check_mode)

    run_module(module, action)


if __name__ == "__main__":
    main()
