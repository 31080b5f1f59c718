-- Who changed what, when: one row per admin action, with the values before and after.
CREATE TABLE audit_log (
    id      text PRIMARY KEY,
    at      timestamptz NOT NULL DEFAULT now(),
    actor   text NOT NULL,
    action  text NOT NULL,
    target  text NOT NULL,
    before  jsonb,
    after   jsonb
);
CREATE INDEX audit_log_at ON audit_log (at);
