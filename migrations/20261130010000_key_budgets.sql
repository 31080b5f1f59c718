-- Per-key limits share the budgets table: a row with scope 'key' whose key is an API key's id
-- (`key_…`) limits that key's calls per minute, counted in budget_usage like a tenant's.
-- Jobs and OpenAI-style batches record the key that submitted them; NULL (jobs published over
-- AMQP, scheduled jobs, rows from before this migration) means no key limits apply. No foreign
-- key: keys are never deleted, and the hot insert path stays free of the extra lookup.
ALTER TABLE budgets DROP CONSTRAINT budgets_scope_check;
ALTER TABLE budgets ADD CONSTRAINT budgets_scope_check
    CHECK (scope IN ('deployment', 'tenant', 'key'));

ALTER TABLE jobs ADD COLUMN api_key_id text;
ALTER TABLE batches ADD COLUMN api_key_id text;
