-- Keys with a lifecycle: a name, scopes, an expiry, a cheaply updated last use, and a revocation
-- time that may lie in the future (the grace period of a rotated key). Tenants can be disabled.
ALTER TABLE api_keys
    ADD COLUMN name         text NOT NULL DEFAULT '',
    ADD COLUMN scopes       text[] NOT NULL DEFAULT '{submit,read,admin}'
        CHECK (scopes <@ ARRAY['submit', 'read', 'admin']::text[]),
    ADD COLUMN expires_at   timestamptz,
    ADD COLUMN last_used_at timestamptz,
    ADD COLUMN rotated_to   text REFERENCES api_keys (id);

ALTER TABLE tenants ADD COLUMN disabled_at timestamptz;
