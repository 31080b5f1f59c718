-- Batches group jobs submitted together; jobs hold one chat request, its state and its result.
CREATE TABLE batches (
    id          text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name),
    source      text NOT NULL DEFAULT 'api',
    metadata    jsonb NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX batches_tenant ON batches (tenant, id);

CREATE TABLE jobs (
    id                 text PRIMARY KEY,
    tenant             text NOT NULL REFERENCES tenants (name),
    batch_id           text REFERENCES batches (id),
    custom_id          text,
    idempotency_key    text,
    model              text NOT NULL,
    deployments        jsonb NOT NULL,
    request            jsonb NOT NULL,
    tags               jsonb NOT NULL DEFAULT '{}',
    route_requested    text NOT NULL DEFAULT 'auto' CHECK (route_requested IN ('auto', 'cheap', 'batch')),
    route              text CHECK (route IN ('cheap', 'batch')),
    route_reason       text,
    deadline           timestamptz,
    webhook_url        text,
    priority           smallint NOT NULL DEFAULT 0 CHECK (priority BETWEEN 0 AND 9),
    max_tokens         integer NOT NULL,
    status             text NOT NULL DEFAULT 'queued' CHECK (status IN
                       ('queued', 'running', 'retry_scheduled', 'in_provider_batch',
                        'succeeded', 'failed', 'cancelled', 'expired')),
    attempt            integer NOT NULL DEFAULT 0,
    max_attempts       integer NOT NULL CHECK (max_attempts >= 1),
    run_after          timestamptz,
    -- When the relay should publish this job's work message; NULL once published.
    publish_after      timestamptz,
    attempted_by       text,
    attempted_at       timestamptz,
    deployment         text,
    response           jsonb,
    error              jsonb,
    errors             jsonb NOT NULL DEFAULT '[]',
    input_tokens       bigint NOT NULL DEFAULT 0,
    output_tokens      bigint NOT NULL DEFAULT 0,
    cached_tokens      bigint NOT NULL DEFAULT 0,
    cost_usd           numeric NOT NULL DEFAULT 0,
    baseline_cost_usd  numeric,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    finalized_at       timestamptz,
    CONSTRAINT jobs_finalized_iff_terminal CHECK (
        (status IN ('succeeded', 'failed', 'cancelled', 'expired')) = (finalized_at IS NOT NULL)),
    CONSTRAINT jobs_running_has_owner CHECK (status <> 'running' OR attempted_by IS NOT NULL),
    CONSTRAINT jobs_retry_has_time CHECK (status <> 'retry_scheduled' OR run_after IS NOT NULL)
);
CREATE UNIQUE INDEX jobs_tenant_idempotency ON jobs (tenant, idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX jobs_tenant_id ON jobs (tenant, id);
CREATE INDEX jobs_batch_status ON jobs (batch_id, status) WHERE batch_id IS NOT NULL;
CREATE INDEX jobs_batch_finished ON jobs (batch_id, id) WHERE finalized_at IS NOT NULL;
CREATE INDEX jobs_to_publish ON jobs (publish_after) WHERE publish_after IS NOT NULL;
CREATE INDEX jobs_running_owner ON jobs (attempted_by) WHERE status = 'running';
CREATE INDEX jobs_retry_due ON jobs (run_after) WHERE status = 'retry_scheduled';

-- The ledger: one row per upstream attempt, priced with the unit prices in force at the time.
CREATE TABLE attempts (
    id                         text PRIMARY KEY,
    job_id                     text NOT NULL REFERENCES jobs (id),
    tenant                     text NOT NULL,
    attempt                    integer NOT NULL,
    provider                   text NOT NULL,
    model                      text NOT NULL,
    route                      text NOT NULL CHECK (route IN ('cheap', 'batch')),
    status                     text NOT NULL CHECK (status IN ('succeeded', 'refused', 'failed')),
    error_code                 text,
    http_status                integer,
    input_tokens               bigint NOT NULL DEFAULT 0,
    output_tokens              bigint NOT NULL DEFAULT 0,
    cached_tokens              bigint NOT NULL DEFAULT 0,
    input_usd_per_mtok         numeric,
    output_usd_per_mtok        numeric,
    cached_input_usd_per_mtok  numeric,
    discount                   numeric NOT NULL DEFAULT 0,
    cost_usd                   numeric NOT NULL DEFAULT 0,
    latency_ms                 integer,
    provider_request_id        text,
    worker                     text,
    started_at                 timestamptz NOT NULL,
    finished_at                timestamptz NOT NULL,
    UNIQUE (job_id, attempt)
);
CREATE INDEX attempts_tenant_time ON attempts (tenant, finished_at);

-- Stripe-style idempotency for HTTP submissions: the first response is stored and replayed.
CREATE TABLE idempotency_keys (
    tenant         text NOT NULL REFERENCES tenants (name),
    key            text NOT NULL,
    request_hash   bytea NOT NULL,
    status_code    integer NOT NULL,
    response       jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, key)
);

-- Live worker processes; a worker whose heartbeat stops has its running jobs re-queued.
CREATE TABLE workers (
    id            text PRIMARY KEY,
    host          text NOT NULL,
    pid           integer NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);
