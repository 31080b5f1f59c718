-- Which PII detectors fired on a job's request and how often (never the values), e.g. {"card": 2}.
ALTER TABLE jobs ADD COLUMN redactions jsonb NOT NULL DEFAULT '{}';
