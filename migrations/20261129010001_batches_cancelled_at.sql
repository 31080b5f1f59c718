-- When a batch was cancelled: a cancelled batch takes no more jobs.
ALTER TABLE batches ADD COLUMN cancelled_at timestamptz;
