-- The writer records the digest (docs/hash-contract.md) of the Delta rows it copied, so that a
-- check of an unchanged month reads Postgres only; a deep check recomputes it from Delta.
ALTER TABLE ranking.signal_sync_state ADD COLUMN IF NOT EXISTS content_digest text;
