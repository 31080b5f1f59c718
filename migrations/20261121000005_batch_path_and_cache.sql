-- The provider batch path: batches sluice sent to a provider, the jobs in each, and the lease
-- that lets any process take over polling.
CREATE TABLE provider_batches (
    id                 text PRIMARY KEY,
    deployment         text NOT NULL,
    provider           text NOT NULL,
    state              text NOT NULL DEFAULT 'submitting' CHECK (state IN
                       ('submitting', 'in_progress', 'ended', 'failed', 'cancelled')),
    provider_batch_id  text,
    input_file_id      text,
    items              integer NOT NULL,
    est_tokens         bigint NOT NULL DEFAULT 0,
    lease_owner        text,
    lease_until        timestamptz,
    last_polled_at     timestamptz,
    error              text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    submitted_at       timestamptz,
    ended_at           timestamptz
);
CREATE INDEX provider_batches_open ON provider_batches (state, lease_until) WHERE state IN ('submitting', 'in_progress');

CREATE TABLE provider_batch_items (
    provider_batch_id  text NOT NULL REFERENCES provider_batches (id),
    job_id             text NOT NULL REFERENCES jobs (id),
    attempt            integer NOT NULL,
    settled            boolean NOT NULL DEFAULT false,
    PRIMARY KEY (provider_batch_id, job_id)
);
CREATE INDEX provider_batch_items_job ON provider_batch_items (job_id);

ALTER TABLE jobs ADD COLUMN provider_batch_id text;
ALTER TABLE jobs ADD COLUMN premium text;
ALTER TABLE jobs ADD COLUMN cache_ttl_secs integer;
CREATE INDEX jobs_batch_route_queued ON jobs (deployment, created_at) WHERE status = 'queued' AND route = 'batch';
CREATE INDEX jobs_in_provider_batch ON jobs (deadline) WHERE status = 'in_provider_batch';

-- Exact-match response cache, per tenant; opt-in per alias or job.
CREATE TABLE response_cache (
    tenant       text NOT NULL,
    key_hash     bytea NOT NULL,
    response     jsonb NOT NULL,
    deployment   text NOT NULL,
    input_tokens bigint NOT NULL,
    output_tokens bigint NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL,
    PRIMARY KEY (tenant, key_hash)
);

-- The ledger records cache hits (no upstream call, no cost) with what they saved.
ALTER TABLE attempts DROP CONSTRAINT attempts_status_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_status_check
    CHECK (status IN ('succeeded', 'refused', 'failed', 'cache_hit', 'expired', 'cancelled'));
ALTER TABLE attempts ADD COLUMN saved_usd numeric NOT NULL DEFAULT 0;
ALTER TABLE attempts ADD COLUMN provider_batch_id text;
