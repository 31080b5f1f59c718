-- Cost tables for analysts (columns are only ever added). `cost_attempts` is the ledger with
-- the job's well-known tags beside each attempt; `cost_daily` and `cost_monthly` sum it per UTC
-- day or month × tenant × feature × provider × model × route. baseline_cost_usd is what the
-- attempt would have cost unrouted (cost + saving); saving_usd is the difference.
CREATE VIEW cost_attempts AS
SELECT a.id AS attempt_id,
       a.job_id,
       a.finished_at,
       (a.finished_at AT TIME ZONE 'UTC')::date AS day,
       a.tenant,
       j.tags->>'feature' AS feature,
       a.provider,
       a.model,
       a.route,
       j.tags->>'user' AS "user",
       j.tags->>'workflow' AS workflow,
       j.tags->>'prompt_version' AS prompt_version,
       j.tags->>'schedule' AS schedule,
       a.status,
       a.input_tokens,
       a.output_tokens,
       a.cached_tokens,
       a.cost_usd,
       a.cost_usd + a.saved_usd AS baseline_cost_usd,
       a.saved_usd AS saving_usd
FROM attempts a JOIN jobs j ON j.id = a.job_id;

CREATE VIEW cost_daily AS
SELECT (a.finished_at AT TIME ZONE 'UTC')::date AS day,
       a.tenant,
       j.tags->>'feature' AS feature,
       a.provider,
       a.model,
       a.route,
       count(*) AS requests,
       count(*) FILTER (WHERE a.status IN ('succeeded', 'refused', 'cache_hit')) AS answered,
       sum(a.input_tokens) AS input_tokens,
       sum(a.output_tokens) AS output_tokens,
       sum(a.cached_tokens) AS cached_tokens,
       sum(a.cost_usd) AS cost_usd,
       sum(a.cost_usd + a.saved_usd) AS baseline_cost_usd,
       sum(a.saved_usd) AS saving_usd
FROM attempts a JOIN jobs j ON j.id = a.job_id
GROUP BY 1, 2, 3, 4, 5, 6;

CREATE VIEW cost_monthly AS
SELECT date_trunc('month', day)::date AS month,
       tenant, feature, provider, model, route,
       sum(requests) AS requests,
       sum(answered) AS answered,
       sum(input_tokens) AS input_tokens,
       sum(output_tokens) AS output_tokens,
       sum(cached_tokens) AS cached_tokens,
       sum(cost_usd) AS cost_usd,
       sum(baseline_cost_usd) AS baseline_cost_usd,
       sum(saving_usd) AS saving_usd
FROM cost_daily
GROUP BY 1, 2, 3, 4, 5, 6;

-- A tenant's month of cost_daily reads only that tenant's days (the filter on `day` reaches
-- this index through the view).
CREATE INDEX attempts_tenant_day ON attempts (tenant, ((finished_at AT TIME ZONE 'UTC')::date));
