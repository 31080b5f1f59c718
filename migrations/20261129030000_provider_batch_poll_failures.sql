-- A provider batch that can no longer be polled (404, 401: deleted, or the key lost access)
-- is given up after a bounded number of failed polls in a row instead of being polled forever.
ALTER TABLE provider_batches ADD COLUMN poll_failures integer NOT NULL DEFAULT 0;
