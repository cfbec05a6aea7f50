-- What the daemon records: the last comparison of each month (read by `reconciler status`)
-- and an audit row for every repair, automatic or manual.
CREATE TABLE IF NOT EXISTS ranking.month_check (
    table_name      text        NOT NULL,
    year_month      text        NOT NULL,
    status          text        NOT NULL,
    reason          text        NOT NULL DEFAULT '',
    checked_at      timestamptz NOT NULL,
    delta_version   bigint,
    synced_version  bigint,
    delta_rows      bigint,
    postgres_rows   bigint,
    lag_seconds     double precision NOT NULL DEFAULT 0,
    PRIMARY KEY (table_name, year_month)
);

CREATE TABLE IF NOT EXISTS ranking.repair_audit (
    id               bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at               timestamptz NOT NULL DEFAULT now(),
    actor            text        NOT NULL,
    table_name       text        NOT NULL,
    year_month       text        NOT NULL,
    delta_version    bigint,
    status_before    text,
    rows_before      bigint,
    digest_before    text,
    rows_after       bigint,
    digest_after     text,
    delta_digest     text,
    outcome          text        NOT NULL,
    message          text        NOT NULL DEFAULT '',
    run_id           text
);

GRANT SELECT, INSERT, UPDATE ON ranking.month_check TO ranking_reconciler;
GRANT SELECT, INSERT ON ranking.repair_audit TO ranking_reconciler;
