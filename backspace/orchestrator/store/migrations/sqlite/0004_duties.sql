-- A front end's duty to report a run (a Slack thread), held like a run's lease: one holder at a
-- time, renewed while it reports, adopted by another process once it expires; `cursor` is the
-- last event already told, `done` that the final message was claimed. Leases are Unix seconds.
CREATE TABLE duties (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    holder TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    lease_expires_at REAL NOT NULL,
    cursor INTEGER NOT NULL DEFAULT 0,
    done INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (run_id, kind)
) WITHOUT ROWID;
CREATE INDEX duties_leases ON duties (kind, lease_expires_at) WHERE done = 0;
-- Each bucket keeps its own rate and size: a clean-up forgets only the buckets that refilled by
-- THEIR rate (Slack's pacing and the API's limit share the table). Older rows (no rate) are full.
ALTER TABLE rate_buckets ADD COLUMN per_second REAL NOT NULL DEFAULT 0;
ALTER TABLE rate_buckets ADD COLUMN burst REAL NOT NULL DEFAULT 0;
