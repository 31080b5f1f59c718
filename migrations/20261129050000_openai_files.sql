-- Files of the OpenAI-compatible API (batch input, output and error files), stored in Postgres
-- in chunks so every `serve` process can read them and no file is ever held whole in memory.
CREATE TABLE files (
    id          text PRIMARY KEY,
    tenant      text NOT NULL REFERENCES tenants (name),
    filename    text NOT NULL,
    purpose     text NOT NULL CHECK (purpose IN ('batch', 'batch_output')),
    bytes       bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0),
    status      text NOT NULL DEFAULT 'processed' CHECK (status IN ('uploaded', 'processed', 'error')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);
CREATE INDEX files_tenant ON files (tenant, id) WHERE deleted_at IS NULL;

-- A file's bytes, in order; about 1 MiB each.
CREATE TABLE file_chunks (
    file_id  text NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    seq      integer NOT NULL CHECK (seq >= 0),
    data     bytea NOT NULL,
    PRIMARY KEY (file_id, seq)
);
