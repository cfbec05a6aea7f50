-- Least-privilege roles (NOLOGIN groups: grant them to the login users you create).
--   ranking_writer      the replicator: replace month rows, record sync state; no DDL.
--   ranking_reader      serving readers: read the signal tables.
--   ranking_reconciler  the daemon: read everything, repair through the writer's rights.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'ranking_writer') THEN
        CREATE ROLE ranking_writer NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'ranking_reader') THEN
        CREATE ROLE ranking_reader NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'ranking_reconciler') THEN
        CREATE ROLE ranking_reconciler NOLOGIN;
    END IF;
END
$$;

GRANT USAGE ON SCHEMA ranking TO ranking_writer, ranking_reader, ranking_reconciler;
GRANT SELECT, INSERT, DELETE ON ranking.ranking_signal, ranking.composite_signal_daily
    TO ranking_writer;
GRANT SELECT, INSERT, UPDATE ON ranking.signal_sync_state TO ranking_writer;
GRANT SELECT ON ranking.ranking_signal, ranking.composite_signal_daily TO ranking_reader;
GRANT ranking_writer TO ranking_reconciler;
GRANT SELECT ON ranking.signal_sync_state TO ranking_reconciler;
