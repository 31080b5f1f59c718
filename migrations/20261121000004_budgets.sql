-- Shared budgets. A row limits one deployment (`provider/model`) or one tenant; a missing row or
-- a NULL limit means unlimited. Rows come from config (source = 'config') or from
-- `sluice budgets set` (source = 'cli', which config never overwrites).
CREATE TABLE budgets (
    scope                  text NOT NULL CHECK (scope IN ('deployment', 'tenant')),
    key                    text NOT NULL,
    tpm                    bigint CHECK (tpm > 0),
    rpm                    bigint CHECK (rpm > 0),
    batch_enqueued_tokens  bigint CHECK (batch_enqueued_tokens > 0),
    daily_usd              numeric CHECK (daily_usd >= 0),
    monthly_usd            numeric CHECK (monthly_usd >= 0),
    usd_policy             text NOT NULL DEFAULT 'defer' CHECK (usd_policy IN ('defer', 'reject')),
    -- Provider feedback: no call to this deployment before this time (a 429's retry-after).
    paused_until           timestamptz,
    source                 text NOT NULL DEFAULT 'config',
    updated_at             timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope, key)
);

-- Tokens and requests reserved per budget per second (Unix seconds). Admission sums the last
-- 61 seconds; a reservation is reduced to actual usage when its call finishes.
CREATE TABLE budget_usage (
    scope     text NOT NULL,
    key       text NOT NULL,
    sec       bigint NOT NULL,
    tokens    bigint NOT NULL DEFAULT 0,
    requests  bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (scope, key, sec)
);

-- Estimated cost held for each call in flight, so concurrent calls cannot overshoot a USD cap.
-- A crashed worker's hold lapses at expires_at.
CREATE TABLE budget_holds (
    job_id      text PRIMARY KEY,
    tenant      text NOT NULL,
    usd         numeric NOT NULL,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX budget_holds_tenant ON budget_holds (tenant, expires_at);

-- Spend per tenant per UTC day, written in the same statement as the ledger rows.
CREATE TABLE tenant_spend (
    tenant  text NOT NULL,
    day     date NOT NULL,
    usd     numeric NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant, day)
);

ALTER TABLE tenants ADD COLUMN weight integer NOT NULL DEFAULT 1 CHECK (weight BETWEEN 1 AND 100);

ALTER TABLE jobs ADD COLUMN est_prompt_tokens integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reserved_tokens bigint NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN reserved_sec bigint;

-- Fallback: which of the job's deployments the next attempt uses, and attempts spent on it.
ALTER TABLE jobs ADD COLUMN deployment_index integer NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN deployment_attempts integer NOT NULL DEFAULT 0;

-- Tenants recently told to wait for a rate-limited deployment: while one waits, the others
-- are held to their weighted share of it (see src/domain/budget.rs).
CREATE TABLE budget_waiters (
    deployment  text NOT NULL,
    tenant      text NOT NULL,
    weight      integer NOT NULL DEFAULT 1,
    seen_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (deployment, tenant)
);
