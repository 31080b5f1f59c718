-- Circuit breakers open on a failure rate over a sliding window (the current bucket and the
-- one before), not on consecutive failures.
ALTER TABLE circuit_breakers
    ADD COLUMN window_start    timestamptz,
    ADD COLUMN window_calls    integer NOT NULL DEFAULT 0 CHECK (window_calls >= 0),
    ADD COLUMN window_failures integer NOT NULL DEFAULT 0 CHECK (window_failures >= 0),
    ADD COLUMN prev_calls      integer NOT NULL DEFAULT 0 CHECK (prev_calls >= 0),
    ADD COLUMN prev_failures   integer NOT NULL DEFAULT 0 CHECK (prev_failures >= 0);
