-- Retention: when a finished job's request and response bodies were purged, and when its prompt
-- was replaced by its SHA-256 (tenants with store_prompts = "hash"). The ledger is untouched.
ALTER TABLE jobs
    ADD COLUMN bodies_purged_at timestamptz,
    ADD COLUMN prompt_hashed_at timestamptz;
CREATE INDEX jobs_bodies_to_purge ON jobs (finalized_at) WHERE bodies_purged_at IS NULL;
