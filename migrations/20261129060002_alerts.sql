-- Spend alerts (`budget.threshold`, `spend.spike`), each recorded once per dedupe key (e.g.
-- the tenant's day and threshold), until a webhook outbox delivers them as events.
CREATE TABLE alerts (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    kind        text NOT NULL CHECK (kind IN ('budget.threshold', 'spend.spike')),
    tenant      text NOT NULL,
    dedupe      text NOT NULL,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (kind, tenant, dedupe)
);
