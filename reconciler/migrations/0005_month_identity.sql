-- A month's identity, recorded at sync beside the version (docs/hash-contract.md, "Anchors"):
-- the Delta table id (metaData.id), the fingerprint of the month's logical file set (paths and
-- deletion vectors) and the columns the digest was computed under. `anchor` says who vouched
-- for the row: the writer that copied the rows, or the reconciler that verified them.
ALTER TABLE ranking.signal_sync_state
    ADD COLUMN IF NOT EXISTS delta_table_id text,
    ADD COLUMN IF NOT EXISTS delta_files    text,
    ADD COLUMN IF NOT EXISTS content_schema text,
    ADD COLUMN IF NOT EXISTS anchor         text NOT NULL DEFAULT 'written'
        CHECK (anchor IN ('written', 'verified')),
    ADD COLUMN IF NOT EXISTS verified_at    timestamptz;

-- When each month's Postgres side and Delta side were last re-digested, so that the periods
-- of those checks hold across daemon restarts.
ALTER TABLE ranking.month_check
    ADD COLUMN IF NOT EXISTS last_postgres_check_at timestamptz,
    ADD COLUMN IF NOT EXISTS last_deep_check_at     timestamptz;
