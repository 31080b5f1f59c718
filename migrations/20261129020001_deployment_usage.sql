-- What each deployment's provider reported for prompt tokens, against sluice's own estimate
-- for the same calls: reservations scale estimates by the ratio, so a provider that counts
-- more than the estimator cannot push TPM windows or USD caps over.
CREATE TABLE deployment_usage (
    deployment            text PRIMARY KEY,
    est_prompt_tokens     bigint NOT NULL DEFAULT 0 CHECK (est_prompt_tokens >= 0),
    actual_prompt_tokens  bigint NOT NULL DEFAULT 0 CHECK (actual_prompt_tokens >= 0),
    updated_at            timestamptz NOT NULL DEFAULT now()
);
