-- Finding a custom_id a batch already has, when jobs are added to it.
CREATE INDEX jobs_batch_custom_id ON jobs (batch_id, custom_id) WHERE batch_id IS NOT NULL AND custom_id IS NOT NULL;
