-- A follow-up steered into a run that executes on another replica: written here, rung, taken
-- by the run's owner (pending -> taken -> delivered or refused), or withdrawn by the sender
-- when no owner took it in time (pending -> withdrawn). Each moves once.
CREATE TABLE steers (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    message jsonb NOT NULL,
    state text NOT NULL DEFAULT 'pending'
        CHECK (state IN ('pending', 'taken', 'delivered', 'refused', 'withdrawn')),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX steers_pending ON steers (run_id) WHERE state = 'pending';
