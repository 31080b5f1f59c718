-- The sweeper that republishes queued jobs whose work message was lost (queue purged or
-- deleted) looks for real-time jobs queued, published (no publish mark) and untouched for a
-- while: this keeps that look cheap however many jobs have finished.
CREATE INDEX jobs_published_waiting ON jobs (updated_at)
    WHERE status = 'queued' AND publish_after IS NULL AND route IS DISTINCT FROM 'batch';
