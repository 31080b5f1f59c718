-- Effective-dated unit prices in USD per million tokens. A row applies from effective_from until
-- the next row for the same (provider, model). Seeded from the built-in list and config.
CREATE TABLE prices (
    provider                   text NOT NULL,
    model                      text NOT NULL,
    effective_from             timestamptz NOT NULL,
    input_usd_per_mtok         numeric NOT NULL CHECK (input_usd_per_mtok >= 0),
    output_usd_per_mtok        numeric NOT NULL CHECK (output_usd_per_mtok >= 0),
    cached_input_usd_per_mtok  numeric CHECK (cached_input_usd_per_mtok >= 0),
    batch_input_usd_per_mtok   numeric CHECK (batch_input_usd_per_mtok >= 0),
    batch_output_usd_per_mtok  numeric CHECK (batch_output_usd_per_mtok >= 0),
    max_input_tokens           bigint,
    max_output_tokens          bigint,
    batch_api                  boolean NOT NULL DEFAULT false,
    source                     text NOT NULL DEFAULT 'config',
    PRIMARY KEY (provider, model, effective_from)
);
