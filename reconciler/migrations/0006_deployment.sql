-- Two replicas: only the leader compares and records findings; followers export what it found,
-- including how long each month's last check took.
ALTER TABLE ranking.month_check ADD COLUMN IF NOT EXISTS duration_seconds double precision;

-- Who asked for a repair: the daemon (`auto`) or on-call with `reconciler repair` (`manual`).
-- Both are exported from this table, so a manual repair shows in reconciler_repairs_total.
ALTER TABLE ranking.repair_audit ADD COLUMN IF NOT EXISTS trigger text;
UPDATE ranking.repair_audit
   SET trigger = CASE WHEN actor LIKE 'reconciler-daemon:%' THEN 'auto' ELSE 'manual' END
 WHERE trigger IS NULL;
ALTER TABLE ranking.repair_audit
    ALTER COLUMN trigger SET DEFAULT 'manual',
    ALTER COLUMN trigger SET NOT NULL,
    ADD CONSTRAINT repair_audit_trigger_check CHECK (trigger IN ('auto', 'manual'));
-- A month's recent repairs (consecutive failures) without reading the whole audit.
CREATE INDEX IF NOT EXISTS repair_audit_month_idx
    ON ranking.repair_audit (table_name, year_month, at);

-- The leader's last complete cycle, which every replica exports as its dead-man's switch: a
-- follower completes cycles of its own while comparing nothing, so its own clock would hide a
-- leader that hangs.
CREATE TABLE IF NOT EXISTS ranking.leader_heartbeat (
    singleton          boolean     PRIMARY KEY DEFAULT true CHECK (singleton),
    instance           text        NOT NULL,
    cycle_completed_at timestamptz NOT NULL
);
GRANT SELECT, INSERT, UPDATE ON ranking.leader_heartbeat TO ranking_reconciler;
