-- Failure handling: cancellation, dead letters, structured-output repair, circuit breakers.

-- Set when a cancel is asked for a job that cannot stop at once: a `running` job (its worker
-- aborts the provider call) or an `in_provider_batch` job (the batch poller cancels the item
-- when it next handles the job's batch). Also kept on jobs cancelled at once, as a record.
ALTER TABLE jobs ADD COLUMN cancel_requested_at timestamptz;
-- A failed job is a dead letter until purged; purging never deletes the row.
ALTER TABLE jobs ADD COLUMN dead_letter_purged_at timestamptz;
-- A schema-validation error from the job's previous answer: the next attempt sends it to the
-- model as an extra user message (one repair per job).
ALTER TABLE jobs ADD COLUMN repair_note text;

CREATE INDEX jobs_dead_letters ON jobs (tenant, id) WHERE status = 'failed' AND dead_letter_purged_at IS NULL;
CREATE INDEX jobs_cancel_requested ON jobs (attempted_by) WHERE status = 'running' AND cancel_requested_at IS NOT NULL;
CREATE INDEX jobs_pending_deadline ON jobs (deadline)
    WHERE status IN ('queued', 'retry_scheduled') AND deadline IS NOT NULL;

-- One circuit breaker per deployment, shared by every process (see src/domain/breaker.rs).
-- `opened_until`: while open, no call before this time; while half-open, when the probe's
-- grant lapses. `probe_owner`: the job whose call is the half-open probe.
CREATE TABLE circuit_breakers (
    deployment            text PRIMARY KEY,
    state                 text NOT NULL DEFAULT 'closed' CHECK (state IN ('closed', 'open', 'half_open')),
    consecutive_failures  integer NOT NULL DEFAULT 0 CHECK (consecutive_failures >= 0),
    opened_until          timestamptz,
    probe_owner           text,
    updated_at            timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT circuit_breakers_open_has_time CHECK (state = 'closed' OR opened_until IS NOT NULL)
);
