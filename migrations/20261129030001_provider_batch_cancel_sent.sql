-- When every job of a provider batch is cancelled, the poller asks the provider to cancel the
-- batch once; this records that it did.
ALTER TABLE provider_batches ADD COLUMN cancel_sent_at timestamptz;
