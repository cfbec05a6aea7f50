-- Schema, the two signal tables of SPEC and the sync state.
-- Indexes are kept to one per table: the month, which serves the month DELETE of every write
-- and the month scan of every comparison. The tables are bulk-rewritten one month at a time,
-- so any further index would be paid on every row of every write.
CREATE SCHEMA IF NOT EXISTS ranking;

CREATE TABLE IF NOT EXISTS ranking.ranking_signal (
    year_month   text             NOT NULL CHECK (year_month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    signal_date  date             NOT NULL,
    entity_id    text             NOT NULL,
    signal_name  text             NOT NULL,
    value        double precision,
    rank         integer,
    computed_at  timestamptz      NOT NULL
);
CREATE INDEX IF NOT EXISTS ranking_signal_year_month_idx ON ranking.ranking_signal (year_month);

CREATE TABLE IF NOT EXISTS ranking.composite_signal_daily (
    year_month      text             NOT NULL CHECK (year_month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    signal_date     date             NOT NULL,
    entity_id       text             NOT NULL,
    composite_score double precision,
    signal_count    integer          NOT NULL,
    model_version   text,
    computed_at     timestamptz      NOT NULL
);
CREATE INDEX IF NOT EXISTS composite_signal_daily_year_month_idx
    ON ranking.composite_signal_daily (year_month);

-- One row per (table, month): what Postgres holds, and the last failure to replicate it.
CREATE TABLE IF NOT EXISTS ranking.signal_sync_state (
    table_name           text        NOT NULL,
    year_month           text        NOT NULL CHECK (year_month ~ '^[0-9]{4}-(0[1-9]|1[0-2])$'),
    delta_version        bigint,
    row_count            bigint,
    synced_at            timestamptz,
    run_id               text,
    last_failure_at      timestamptz,
    last_failure_reason  text,
    last_failure_run_id  text,
    consecutive_failures integer     NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, year_month)
);
