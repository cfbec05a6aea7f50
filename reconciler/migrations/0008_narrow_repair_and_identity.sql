-- What a sync vouches for grows (docs/hash-contract.md, "Anchors"): the fingerprint of
-- everything in the Delta metadata that maps a file's bytes to rows (column mapping mode,
-- physical names, types, partition columns), and the commitInfo timestamp of the synced
-- version, which tells a rewritten commit from the original.
ALTER TABLE ranking.signal_sync_state
    ADD COLUMN IF NOT EXISTS delta_schema    text,
    ADD COLUMN IF NOT EXISTS delta_commit_ms bigint;

-- Which repair ran (narrow: only the differing rows; full: the month rewritten), and how many
-- rows it changed.
ALTER TABLE ranking.repair_audit
    ADD COLUMN IF NOT EXISTS mode          text CHECK (mode IN ('narrow', 'full')),
    ADD COLUMN IF NOT EXISTS rows_deleted  bigint,
    ADD COLUMN IF NOT EXISTS rows_inserted bigint;

-- A finding's standing (docs/hash-contract.md, "Findings that stand"): the anchor it judged
-- (the sync's run id and time, or the re-anchoring's time) and whether a deep check found it.
-- A drift stands until a repair, a new sync or a new deep check of the same month says
-- otherwise; a restart or a plain check never clears it.
ALTER TABLE ranking.month_check
    ADD COLUMN IF NOT EXISTS anchor_key text,
    ADD COLUMN IF NOT EXISTS found_deep boolean NOT NULL DEFAULT false;
