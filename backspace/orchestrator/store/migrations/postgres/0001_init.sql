-- The whole schema for PostgreSQL: the same tables and columns as SQLite's 0001 and 0002
-- together, with PostgreSQL's types. Times are timestamptz (the store shows them as ISO strings
-- ending in Z, to the millisecond); leases are compared with the database's clock, now().
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    submitted BIGINT GENERATED ALWAYS AS IDENTITY,
    created_at TIMESTAMPTZ NOT NULL,
    updated_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ,
    status TEXT NOT NULL,
    stage TEXT NOT NULL,
    repo_url TEXT NOT NULL,
    prompt TEXT NOT NULL,
    source TEXT NOT NULL,
    requester TEXT,
    base_branch TEXT,
    family_id TEXT,
    parent_id TEXT,
    base_sha TEXT,
    branch TEXT,
    pr_url TEXT,
    pr_number INTEGER,
    error_code TEXT,
    summary TEXT,
    error_message TEXT,
    duration_ms BIGINT,
    cost_usd DOUBLE PRECISION NOT NULL DEFAULT 0,
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    meta JSONB NOT NULL DEFAULT '{}',
    request JSONB,
    worker_id TEXT,
    attempt INTEGER NOT NULL DEFAULT 0,
    started_at TIMESTAMPTZ,
    lease_expires_at TIMESTAMPTZ,
    cancel_requested_at TIMESTAMPTZ,
    last_seq BIGINT NOT NULL DEFAULT 0,
    queue_position INTEGER
) WITH (fillfactor = 80);
CREATE INDEX runs_created ON runs (created_at DESC);
CREATE INDEX runs_status ON runs (status);
CREATE INDEX runs_family ON runs (family_id, created_at);
CREATE INDEX runs_pr_url ON runs (pr_url);
CREATE INDEX runs_meta ON runs USING gin (meta jsonb_path_ops);
CREATE INDEX runs_queue ON runs (created_at, id) WHERE status = 'queued';
CREATE INDEX runs_leases ON runs (lease_expires_at) WHERE status = 'running';
CREATE INDEX runs_by_owner ON runs (worker_id) WHERE status = 'running';
CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq BIGINT NOT NULL,
    type TEXT NOT NULL,
    ts TIMESTAMPTZ NOT NULL,
    data JSON NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE TABLE deliveries (
    source TEXT NOT NULL,
    id TEXT NOT NULL,
    received_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (source, id)
);
CREATE INDEX deliveries_received ON deliveries (received_at);
CREATE TABLE channel_repos (
    team_id TEXT NOT NULL,
    channel_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    set_by TEXT,
    updated_at TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (team_id, channel_id)
);
CREATE TABLE pull_requests (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    run_id TEXT NOT NULL,
    repo TEXT NOT NULL,
    title TEXT NOT NULL,
    body TEXT NOT NULL,
    branch TEXT NOT NULL,
    base TEXT NOT NULL,
    base_sha TEXT NOT NULL,
    head_sha TEXT NOT NULL,
    files JSONB NOT NULL,
    additions INTEGER NOT NULL,
    deletions INTEGER NOT NULL,
    diff TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL,
    state TEXT NOT NULL DEFAULT 'open'
);
CREATE TABLE pull_request_comments (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    pr_id BIGINT NOT NULL,
    body TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL
);
CREATE INDEX pull_request_comments_pr ON pull_request_comments (pr_id, id);
CREATE TABLE rate_buckets (
    key TEXT PRIMARY KEY,
    tokens DOUBLE PRECISION NOT NULL,
    updated TIMESTAMPTZ NOT NULL
);
