-- OpenAI-shaped batches: a batch created through `POST /v1/batches` has an input file, an
-- OpenAI status (NULL for sluice's native batches, whose status is derived from their jobs),
-- errors, output and error files and OpenAI's timestamps. Every status write is conditional.
ALTER TABLE batches
    ADD COLUMN endpoint           text,
    ADD COLUMN input_file_id      text REFERENCES files (id),
    ADD COLUMN completion_window  text,
    ADD COLUMN status             text CHECK (status IN ('validating', 'failed', 'in_progress',
                                  'finalizing', 'completed', 'expired', 'cancelling', 'cancelled')),
    ADD COLUMN errors             jsonb,
    ADD COLUMN output_file_id     text REFERENCES files (id),
    ADD COLUMN error_file_id      text REFERENCES files (id),
    ADD COLUMN in_progress_at     timestamptz,
    ADD COLUMN expires_at         timestamptz,
    ADD COLUMN finalizing_at      timestamptz,
    ADD COLUMN completed_at       timestamptz,
    ADD COLUMN failed_at          timestamptz,
    ADD COLUMN expired_at         timestamptz,
    ADD COLUMN cancelling_at      timestamptz,
    ADD COLUMN IF NOT EXISTS cancelled_at timestamptz;
-- The front door's loop looks for batches to validate or finalize.
CREATE INDEX batches_openai_open ON batches (status, id)
    WHERE status IN ('validating', 'in_progress', 'finalizing', 'cancelling');
