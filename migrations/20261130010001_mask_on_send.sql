-- A job under a redaction policy with `restore = true` is stored as submitted (the database
-- holds the values) and masked when it is sent, on every outgoing path; the placeholders in
-- its answer are put back from a mapping recomputed from the stored request, never stored.
-- The flag is fixed at submission so a later config change can never send such a job unmasked.
ALTER TABLE jobs ADD COLUMN mask_on_send boolean NOT NULL DEFAULT false;
