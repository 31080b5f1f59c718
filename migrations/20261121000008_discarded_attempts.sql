-- A call that completed after its worker lost the claim (frozen or presumed dead, the job
-- re-queued meanwhile) was still billed by the provider: the ledger books it as 'discarded',
-- its cost added to the job's, and its answer is not used.
ALTER TABLE attempts DROP CONSTRAINT attempts_status_check;
ALTER TABLE attempts ADD CONSTRAINT attempts_status_check
    CHECK (status IN ('succeeded', 'refused', 'failed', 'cache_hit', 'expired', 'cancelled', 'discarded'));
