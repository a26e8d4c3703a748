-- A follow-up steered into a run that executes in another process: written here, rung, taken
-- by the run's owner (pending -> taken -> delivered or refused), or withdrawn by the sender
-- when no owner took it in time (pending -> withdrawn). Each moves once.
CREATE TABLE steers (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT NOT NULL,
    message TEXT NOT NULL,
    state TEXT NOT NULL DEFAULT 'pending',
    created_at TEXT NOT NULL
);
CREATE INDEX steers_pending ON steers (run_id) WHERE state = 'pending';
