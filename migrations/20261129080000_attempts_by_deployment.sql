-- `sluice budgets show` sums each deployment's ledger rows for today and this month.
CREATE INDEX attempts_deployment_time ON attempts (provider, model, finished_at);
