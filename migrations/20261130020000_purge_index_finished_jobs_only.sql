-- The retention purge looks for finished jobs only (`finalized_at IS NOT NULL`), so its index
-- need not hold every queued, published and running version of a job's row as well: each of
-- those was one more index entry written per job.
DROP INDEX IF EXISTS jobs_bodies_to_purge;
CREATE INDEX jobs_bodies_to_purge ON jobs (finalized_at)
    WHERE bodies_purged_at IS NULL AND finalized_at IS NOT NULL;
