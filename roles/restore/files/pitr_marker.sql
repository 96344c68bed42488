-- The marker drill of the restore role (tasks/pitr.yml), fed to psql -f - with -v run=<id>
-- -v timeout=<seconds>: commit a marker row, note T (after its commit) and a row after T; print
-- one JSON line. A server that archives (archive_command or archive_library): wait in the server
-- until the WAL segment holding both is archived (pg_stat_archiver). A server whose WAL
-- pg_receivewal streams (archive_mode off, or no archive_command): close that segment with
-- pg_switch_wal() so that the receiver finishes it, and leave the wait to the role, which watches
-- the location ("wait": "location").
SET TimeZone = 'UTC';
SET client_min_messages = warning;
SELECT current_setting('archive_mode') = 'off'
       OR (current_setting('archive_command') = '' AND coalesce(current_setting('archive_library', true), '') = '') AS streamed \gset
CREATE TABLE IF NOT EXISTS opskit_drill_marker (
    run text NOT NULL,
    phase text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (run, phase));
INSERT INTO opskit_drill_marker (run, phase) VALUES (:'run', 'marker');
SELECT set_config('opskit.marker_time', clock_timestamp()::text, false) AS t,
       set_config('opskit.timeout', :'timeout', false) AS o \gset
INSERT INTO opskit_drill_marker (run, phase) VALUES (:'run', 'after');
-- the segment holding the end of the row after T (insert position minus one byte)
SELECT set_config('opskit.marker_wal', pg_walfile_name(pg_current_wal_insert_lsn() - 1), false) AS w \gset
\if :streamed
SELECT pg_switch_wal() AS switched \gset
SELECT json_build_object('marker_time', current_setting('opskit.marker_time'), 'segment', current_setting('opskit.marker_wal'),
                         'marker_epoch', extract(epoch FROM current_setting('opskit.marker_time')::timestamptz), 'wait', 'location');
\else
DO $$
DECLARE
    archived text;
    failed text;
BEGIN
    LOOP
        PERFORM pg_stat_clear_snapshot();
        SELECT coalesce(last_archived_wal, ''), coalesce(last_failed_wal, 'none') INTO archived, failed FROM pg_stat_archiver;
        EXIT WHEN archived >= current_setting('opskit.marker_wal');
        IF clock_timestamp() > current_setting('opskit.marker_time')::timestamptz
                               + make_interval(secs => current_setting('opskit.timeout')::float) THEN
            RAISE EXCEPTION 'WAL segment % of the marker was not archived within % s (last archived %, last failed %)',
                current_setting('opskit.marker_wal'), current_setting('opskit.timeout'), nullif(archived, ''), failed;
        END IF;
        PERFORM pg_sleep(0.05);
    END LOOP;
END $$;
SELECT json_build_object(
    'marker_time', current_setting('opskit.marker_time'),
    'segment', current_setting('opskit.marker_wal'),
    'archived_segment', last_archived_wal,
    'archived_at', last_archived_time::text,
    'rpo_seconds', round(extract(epoch FROM last_archived_time - current_setting('opskit.marker_time')::timestamptz)::numeric, 3),
    'wait', 'server')
  FROM pg_stat_archiver;
\endif
