-- A front end's duty to report a run (a Slack thread), held like a run's lease: one holder at a
-- time, renewed while it reports, adopted by another replica once it expires (the database's
-- clock); `cursor` is the last event already told, `done` that the final message was claimed.
CREATE TABLE duties (
    run_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    holder TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    lease_expires_at TIMESTAMPTZ NOT NULL,
    cursor BIGINT NOT NULL DEFAULT 0,
    done BOOLEAN NOT NULL DEFAULT false,
    PRIMARY KEY (run_id, kind)
);
CREATE INDEX duties_leases ON duties (kind, lease_expires_at) WHERE NOT done;
-- Each bucket keeps its own rate and size: a clean-up forgets only the buckets that refilled by
-- THEIR rate (Slack's pacing and the API's limit share the table). Older rows (no rate) are full.
ALTER TABLE rate_buckets ADD COLUMN per_second DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE rate_buckets ADD COLUMN burst DOUBLE PRECISION NOT NULL DEFAULT 0;
