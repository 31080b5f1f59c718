-- The tickets table the nightly-ticket-summary schedule reads, in a fresh database:
--   createdb tickets && psql tickets -f jobs/examples/tickets.sql
--   export TICKETS_DATABASE_URL=postgres://postgres@127.0.0.1:5432/tickets
CREATE TABLE IF NOT EXISTS tickets (
    id          bigserial PRIMARY KEY,
    customer    text NOT NULL,
    subject     text NOT NULL,
    body        text NOT NULL,
    status      text NOT NULL DEFAULT 'open',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

INSERT INTO tickets (customer, subject, body, status, updated_at) VALUES
    ('acme',    'Cannot log in',         'Since this morning every login attempt says "invalid token".', 'open',   now() - interval '3 hours'),
    ('globex',  'Invoice shows VAT twice', 'Invoice 2026-114 adds VAT on top of a VAT-inclusive price.', 'open',   now() - interval '2 hours'),
    ('initech', 'Export is slow',        'Exporting 40k rows to CSV takes over ten minutes.',          'pending', now() - interval '1 hour'),
    ('spammer', 'WIN A PRIZE',           'Click here.',                                               'spam',    now() - interval '30 minutes');
