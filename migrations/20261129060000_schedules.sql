-- Scheduled jobs: each schedule found in `jobs/`, each run it fired (exactly once per fire time,
-- across any number of schedulers: the run row is inserted in the transaction that creates its
-- batch), the JSONL files a schedule has taken, and its SQL source's watermark.
CREATE TABLE schedules (
    name           text PRIMARY KEY,
    tenant         text NOT NULL,
    schedule       text NOT NULL,
    timezone       text NOT NULL,
    definition     jsonb NOT NULL,
    -- Ticks before this are never fired (a new schedule does not catch up on its past).
    first_seen_at  timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    -- The last value of the SQL source's watermark column that a run took (as text).
    watermark      text
);

CREATE TABLE schedule_runs (
    id           text PRIMARY KEY,
    schedule     text NOT NULL REFERENCES schedules (name),
    fire_time    timestamptz NOT NULL,
    trigger      text NOT NULL CHECK (trigger IN ('cron', 'catch_up', 'manual')),
    started_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    batch_id     text REFERENCES batches (id),
    jobs         integer NOT NULL DEFAULT 0,
    outcome      text NOT NULL CHECK (outcome IN ('fired', 'empty', 'failed', 'skipped')),
    error        text,
    UNIQUE (schedule, fire_time)
);
CREATE INDEX schedule_runs_latest ON schedule_runs (schedule, fire_time DESC) WHERE trigger <> 'manual';

CREATE TABLE schedule_files (
    schedule  text NOT NULL REFERENCES schedules (name),
    path      text NOT NULL,
    run_id    text NOT NULL REFERENCES schedule_runs (id),
    -- Set when the file could not be read as jobs: it is set aside, not retried.
    error     text,
    taken_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (schedule, path)
);
