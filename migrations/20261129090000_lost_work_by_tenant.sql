-- The lost-work sweeper looks tenant by tenant (a tenant whose work queue is empty gets its
-- unclaimed jobs republished sooner), so its index leads with the tenant.
DROP INDEX IF EXISTS jobs_published_waiting;
CREATE INDEX jobs_published_waiting ON jobs (tenant, updated_at)
    WHERE status = 'queued' AND publish_after IS NULL AND route IS DISTINCT FROM 'batch';
