-- USD caps on the provider batch path: a job packed into a provider batch holds its worst-case
-- batch cost against its tenant's caps until the batch's results are recorded. A job can hold
-- twice at once (a batch item and a real-time call after a deadline re-route), since the
-- provider may bill both; so a hold is keyed by the job and what holds it: 'call' for a
-- real-time call, or the provider batch's id.
ALTER TABLE budget_holds ADD COLUMN source text NOT NULL DEFAULT 'call';
ALTER TABLE budget_holds DROP CONSTRAINT budget_holds_pkey;
ALTER TABLE budget_holds ADD PRIMARY KEY (job_id, source);
