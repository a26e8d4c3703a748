-- The run row becomes its job: the request any worker can execute, the owner's claim and lease,
-- a cancel asked of it and its last announced place in the queue. (A run's last seq is its
-- events' MAX(seq): one process writes, so it needs no counter.)
-- Leases are Unix seconds (one process, one clock).
ALTER TABLE runs ADD COLUMN request TEXT;
ALTER TABLE runs ADD COLUMN worker_id TEXT;
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN started_at TEXT;
ALTER TABLE runs ADD COLUMN lease_expires_at REAL;
ALTER TABLE runs ADD COLUMN cancel_requested_at TEXT;
ALTER TABLE runs ADD COLUMN queue_position INTEGER;
CREATE INDEX runs_queue ON runs (created_at, id) WHERE status = 'queued';
CREATE INDEX runs_leases ON runs (lease_expires_at) WHERE status = 'running';
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens REAL NOT NULL,
    updated REAL NOT NULL
) WITHOUT ROWID;
