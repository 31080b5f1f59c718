-- Webhooks: tenant endpoints, the event outbox, one delivery queue row per (event, destination),
-- the attempt log, and the triggers that write events in the same transaction as the job state
-- change that causes them (see src/webhooks/mod.rs).

-- A time-ordered UUIDv7 (PG 15 has none built in), for ids made inside triggers.
CREATE FUNCTION sluice_uuid7_hex() RETURNS text LANGUAGE sql VOLATILE AS $$
    SELECT encode(set_bit(set_bit(overlay(uuid_send(gen_random_uuid()) PLACING
        substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
        FROM 1 FOR 6), 52, 1), 53, 1), 'hex')
$$;

-- Tenant endpoints (OpenAI's `webhook_endpoint`). `previous_secret` still signs (as a second
-- signature) until `previous_secret_until`, during a rotation with grace.
CREATE TABLE webhook_endpoints (
    id                     text PRIMARY KEY,
    tenant                 text NOT NULL REFERENCES tenants (name),
    name                   text NOT NULL DEFAULT '',
    url                    text NOT NULL,
    event_types            text[] NOT NULL,
    status                 text NOT NULL DEFAULT 'enabled' CHECK (status IN ('enabled', 'disabled')),
    disabled_reason        text,
    secret                 text NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    -- The first failed attempt since the last success; an endpoint failing for
    -- `[webhooks] disable_after` is disabled.
    failing_since          timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    updated_at             timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant, id);

-- The secret that signs deliveries to jobs' own `webhook_url`, one per tenant.
CREATE TABLE webhook_tenant_secrets (
    tenant                 text PRIMARY KEY REFERENCES tenants (name),
    secret                 text NOT NULL,
    previous_secret        text,
    previous_secret_until  timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now()
);

-- The outbox: one row per event; `payload` is the exact body sent, fixed at creation.
CREATE TABLE webhook_events (
    id          text PRIMARY KEY,
    tenant      text NOT NULL,
    type        text NOT NULL,
    job_id      text,
    batch_id    text,
    payload     jsonb NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_events_tenant_time ON webhook_events (tenant, created_at);
-- A batch's terminal event is written once, whatever races happen above it.
CREATE UNIQUE INDEX webhook_events_batch_once ON webhook_events (batch_id)
    WHERE batch_id IS NOT NULL AND job_id IS NULL AND type LIKE 'batch.%';

-- One message per (event, destination): an endpoint, or a job's own `webhook_url` (`url`).
-- Its id is the `webhook-id` header, the same on every retry and replay.
CREATE TABLE webhook_messages (
    id               text PRIMARY KEY,
    event_id         text NOT NULL REFERENCES webhook_events (id),
    tenant           text NOT NULL,
    endpoint_id      text,
    url              text,
    status           text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'delivered', 'failed')),
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    lease_owner      text,
    lease_until      timestamptz,
    last_status_code integer,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    finished_at      timestamptz,
    CONSTRAINT webhook_messages_has_destination CHECK ((endpoint_id IS NULL) <> (url IS NULL))
);
CREATE INDEX webhook_messages_due ON webhook_messages (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_messages_event ON webhook_messages (event_id);

-- Every delivery attempt (analysts may query this relation).
CREATE TABLE webhook_deliveries (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    message_id   text NOT NULL,
    event_id     text NOT NULL,
    tenant       text NOT NULL,
    endpoint_id  text,
    url          text NOT NULL,
    attempt      integer NOT NULL,
    status_code  integer,
    error        text,
    latency_ms   integer,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX webhook_deliveries_message ON webhook_deliveries (message_id, attempt);
CREATE INDEX webhook_deliveries_tenant_time ON webhook_deliveries (tenant, started_at);

-- Per-batch progress, so "the last job of the batch became terminal" is decided under this
-- row's lock: two transactions finishing the last two jobs serialize here, and the second sees
-- the first's count. `fired_at`: the batch's terminal event was written.
CREATE TABLE webhook_batch_progress (
    batch_id   text PRIMARY KEY,
    total      bigint NOT NULL DEFAULT 0,
    finished   bigint NOT NULL DEFAULT 0,
    succeeded  bigint NOT NULL DEFAULT 0,
    failed     bigint NOT NULL DEFAULT 0,
    cancelled  bigint NOT NULL DEFAULT 0,
    expired    bigint NOT NULL DEFAULT 0,
    fired_at   timestamptz
);
INSERT INTO webhook_batch_progress (batch_id, total, finished, succeeded, failed, cancelled, expired, fired_at)
SELECT batch_id, count(*),
    count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled', 'expired')),
    count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
    count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status = 'expired'),
    -- Batches already finished before webhooks existed get no event.
    CASE WHEN count(*) = count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled', 'expired'))
         THEN now() END
FROM jobs WHERE batch_id IS NOT NULL GROUP BY batch_id;

-- Terminal transitions of batch jobs made by the current transaction, not yet counted. Rows
-- never outlive their transaction (the commit-time trigger deletes them), so it is unlogged.
CREATE UNLOGGED TABLE webhook_batch_pending (
    xact        xid8 NOT NULL,
    batch_id    text NOT NULL,
    old_status  text NOT NULL,
    new_status  text NOT NULL
);
CREATE INDEX webhook_batch_pending_xact ON webhook_batch_pending (xact);

-- Writes one event and its messages (tenant endpoints subscribed to `etype`, plus `job_url`).
CREATE FUNCTION webhooks_emit(p_tenant text, etype text, p_job text, p_batch text, data jsonb,
                              job_url text) RETURNS void LANGUAGE plpgsql AS $$
DECLARE
    evt text := 'evt_' || sluice_uuid7_hex();
BEGIN
    INSERT INTO webhook_events (id, tenant, type, job_id, batch_id, payload)
    VALUES (evt, p_tenant, etype, p_job, p_batch, jsonb_build_object(
        'id', evt, 'object', 'event', 'type', etype,
        'created_at', floor(extract(epoch FROM now()))::bigint, 'data', data))
    ON CONFLICT DO NOTHING;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    INSERT INTO webhook_messages (id, event_id, tenant, endpoint_id, url)
    SELECT 'msg_' || sluice_uuid7_hex(), evt, p_tenant, e.id, NULL
    FROM webhook_endpoints e
    WHERE e.tenant = p_tenant AND e.status = 'enabled' AND etype = ANY (e.event_types)
    UNION ALL
    SELECT 'msg_' || sluice_uuid7_hex(), evt, p_tenant, NULL, job_url WHERE job_url IS NOT NULL;
END
$$;

-- Whether `tenant` has an enabled endpoint subscribed to `etype`.
CREATE FUNCTION webhooks_subscribed(p_tenant text, etype text) RETURNS boolean
LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM webhook_endpoints e
                   WHERE e.tenant = p_tenant AND e.status = 'enabled' AND etype = ANY (e.event_types))
$$;

-- A job entered or left a terminal state (the trigger's WHEN clause filters every other
-- update out before this function is called).
CREATE FUNCTION webhooks_job_terminal() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    etype text;
BEGIN
    IF NEW.batch_id IS NOT NULL THEN
        INSERT INTO webhook_batch_pending (xact, batch_id, old_status, new_status)
        VALUES (pg_current_xact_id(), NEW.batch_id, OLD.status, NEW.status);
        -- Tells the commit-time trigger there is work (transaction-local).
        PERFORM set_config('sluice.webhooks_pending', 'yes', true);
    END IF;
    IF NEW.status NOT IN ('succeeded', 'failed', 'cancelled', 'expired') THEN
        RETURN NULL;
    END IF;
    etype := 'job.' || NEW.status;
    IF NEW.webhook_url IS NULL AND NOT webhooks_subscribed(NEW.tenant, etype) THEN
        RETURN NULL;
    END IF;
    PERFORM webhooks_emit(NEW.tenant, etype, NEW.id, NEW.batch_id, jsonb_build_object(
        'id', NEW.id, 'object', 'job', 'status', NEW.status, 'batch_id', NEW.batch_id,
        'custom_id', left(NEW.custom_id, 512), 'model', left(NEW.model, 256),
        'deployment', NEW.deployment, 'route', NEW.route,
        'usage', jsonb_build_object('input_tokens', NEW.input_tokens,
            'output_tokens', NEW.output_tokens, 'cached_tokens', NEW.cached_tokens),
        'cost_usd', NEW.cost_usd::text,
        'error', CASE WHEN NEW.error IS NULL THEN NULL ELSE jsonb_build_object(
            'code', left(NEW.error ->> 'code', 128), 'message', left(NEW.error ->> 'message', 1000)) END,
        'results_url', '/v1/jobs/' || NEW.id), NEW.webhook_url);
    RETURN NULL;
END
$$;

-- The WHEN clause keeps the common case (no webhook configured, no batch) to one index probe,
-- without entering PL/pgSQL.
CREATE TRIGGER jobs_webhooks_terminal
    AFTER UPDATE OF status ON jobs FOR EACH ROW
    WHEN ((OLD.status IN ('succeeded', 'failed', 'cancelled', 'expired'))
          IS DISTINCT FROM (NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired'))
          AND (NEW.batch_id IS NOT NULL OR NEW.webhook_url IS NOT NULL
               OR webhooks_subscribed(NEW.tenant, 'job.' || NEW.status)))
    EXECUTE FUNCTION webhooks_job_terminal();

-- At commit: applies this transaction's batch transitions to the progress rows, taking their
-- locks in batch-id order (so concurrent committers never deadlock on them), and writes a
-- batch's terminal event when its last job finished. Fires once per terminal row; the first
-- call does the work and the rest find nothing pending.
CREATE FUNCTION webhooks_batch_settle() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    r record;
    p webhook_batch_progress;
    etype text;
BEGIN
    -- Every terminal row queues this trigger; the first call settles them all, the others
    -- return here without a query.
    IF current_setting('sluice.webhooks_pending', true) IS DISTINCT FROM 'yes' THEN
        RETURN NULL;
    END IF;
    PERFORM set_config('sluice.webhooks_pending', 'no', true);
    FOR r IN
        SELECT batch_id,
            sum((new_status IN ('succeeded', 'failed', 'cancelled', 'expired'))::int
              - (old_status IN ('succeeded', 'failed', 'cancelled', 'expired'))::int) AS finished,
            sum((new_status = 'succeeded')::int - (old_status = 'succeeded')::int) AS succeeded,
            sum((new_status = 'failed')::int - (old_status = 'failed')::int) AS failed,
            sum((new_status = 'cancelled')::int - (old_status = 'cancelled')::int) AS cancelled,
            sum((new_status = 'expired')::int - (old_status = 'expired')::int) AS expired
        FROM webhook_batch_pending WHERE xact = pg_current_xact_id()
        GROUP BY batch_id ORDER BY batch_id
    LOOP
        UPDATE webhook_batch_progress SET finished = finished + r.finished,
            succeeded = succeeded + r.succeeded, failed = failed + r.failed,
            cancelled = cancelled + r.cancelled, expired = expired + r.expired
        WHERE batch_id = r.batch_id RETURNING * INTO p;
        IF FOUND AND p.fired_at IS NULL AND p.total > 0 AND p.finished >= p.total THEN
            UPDATE webhook_batch_progress SET fired_at = now() WHERE batch_id = r.batch_id;
            etype := CASE WHEN p.cancelled > 0 THEN 'batch.cancelled'
                          WHEN p.expired > 0 THEN 'batch.expired'
                          WHEN p.succeeded = 0 THEN 'batch.failed'
                          ELSE 'batch.completed' END;
            PERFORM webhooks_emit(b.tenant, etype, NULL, b.id, jsonb_build_object(
                'id', b.id, 'object', 'batch',
                'request_counts', jsonb_build_object('total', p.total, 'completed', p.succeeded,
                    'failed', p.failed + p.cancelled + p.expired),
                'results_url', '/v1/batches/' || b.id || '/results'), NULL)
            FROM batches b WHERE b.id = r.batch_id;
        END IF;
    END LOOP;
    DELETE FROM webhook_batch_pending WHERE xact = pg_current_xact_id();
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER jobs_webhooks_batch_settle
    AFTER UPDATE OF status ON jobs DEFERRABLE INITIALLY DEFERRED FOR EACH ROW
    WHEN (NEW.batch_id IS NOT NULL AND
          (OLD.status IN ('succeeded', 'failed', 'cancelled', 'expired'))
          IS DISTINCT FROM (NEW.status IN ('succeeded', 'failed', 'cancelled', 'expired')))
    EXECUTE FUNCTION webhooks_batch_settle();

-- Counts the jobs each statement adds to batches (one aggregated, ordered upsert).
CREATE FUNCTION webhooks_batch_count() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO webhook_batch_progress (batch_id, total, finished, succeeded, failed, cancelled, expired)
    SELECT batch_id, count(*),
        count(*) FILTER (WHERE status IN ('succeeded', 'failed', 'cancelled', 'expired')),
        count(*) FILTER (WHERE status = 'succeeded'), count(*) FILTER (WHERE status = 'failed'),
        count(*) FILTER (WHERE status = 'cancelled'), count(*) FILTER (WHERE status = 'expired')
    FROM added WHERE batch_id IS NOT NULL GROUP BY batch_id ORDER BY batch_id
    ON CONFLICT (batch_id) DO UPDATE SET total = webhook_batch_progress.total + excluded.total,
        finished = webhook_batch_progress.finished + excluded.finished,
        succeeded = webhook_batch_progress.succeeded + excluded.succeeded,
        failed = webhook_batch_progress.failed + excluded.failed,
        cancelled = webhook_batch_progress.cancelled + excluded.cancelled,
        expired = webhook_batch_progress.expired + excluded.expired;
    RETURN NULL;
END
$$;

CREATE TRIGGER jobs_webhooks_batch_count
    AFTER INSERT ON jobs REFERENCING NEW TABLE AS added
    FOR EACH STATEMENT EXECUTE FUNCTION webhooks_batch_count();
