//! Whether a job could ever run within the limits it meets: a job larger than its deployment's
//! `batch_enqueued_tokens` could never be packed into a provider batch, and one whose
//! worst-case cost alone is over its tenant's USD cap could never be admitted. Such a job is
//! refused at submission, with the reason, instead of waiting forever.

use rust_decimal::Decimal;

use super::job::FieldError;

/// The most a job can use and cost on the deployment it starts on.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSize {
    pub deployment: String,
    /// Estimated prompt tokens plus every output token it may ask for.
    pub tokens: i64,
    /// Its worst-case cost (at batch prices on the batch route).
    pub worst_usd: Decimal,
    /// Whether it takes the provider-batch route.
    pub batch: bool,
}

/// The limits a job meets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Limits {
    /// The tenant's smallest USD cap (daily or monthly), if any.
    pub tenant_usd_cap: Option<Decimal>,
    /// The deployment's `batch_enqueued_tokens`, if any.
    pub batch_enqueued_tokens: Option<i64>,
}

/// Refuses a job that could never fit `limits`, naming what to change.
pub fn check(job: &JobSize, limits: &Limits) -> Result<(), FieldError> {
    if job.batch
        && let Some(max) = limits.batch_enqueued_tokens
        && job.tokens > max
    {
        return Err(FieldError::new(
            "body.max_tokens",
            format!(
                "the job may use {} tokens (prompt and output), more than {}'s batch_enqueued_tokens \
                 limit of {max}, so it could never be sent in a provider batch; lower max_tokens, \
                 shorten the prompt, or use route auto",
                job.tokens, job.deployment
            ),
        ));
    }
    if let Some(cap) = limits.tenant_usd_cap
        && job.worst_usd > cap
    {
        return Err(FieldError::new(
            "body.max_tokens",
            format!(
                "the job's worst-case cost of ${} on {} is more than the tenant's USD cap of ${cap}, \
                 so it could never run; lower max_tokens or n, or raise the cap",
                job.worst_usd.round_dp(6),
                job.deployment
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn size(tokens: i64, usd: &str, batch: bool) -> JobSize {
        JobSize {
            deployment: "openai/gpt-4o-mini".into(),
            tokens,
            worst_usd: usd.parse().unwrap(),
            batch,
        }
    }

    #[test]
    fn a_job_over_the_enqueued_token_limit_is_refused_only_on_the_batch_route() {
        let limits = Limits {
            batch_enqueued_tokens: Some(1000),
            ..Default::default()
        };
        assert!(check(&size(1001, "0", true), &limits).is_err());
        assert!(check(&size(1000, "0", true), &limits).is_ok());
        assert!(check(&size(5000, "0", false), &limits).is_ok());
    }

    #[test]
    fn a_job_whose_worst_case_is_over_the_usd_cap_is_refused() {
        let limits = Limits {
            tenant_usd_cap: Some("0.01".parse().unwrap()),
            ..Default::default()
        };
        let err = check(&size(10, "0.02", false), &limits).unwrap_err();
        assert!(err.message.contains("USD cap"), "{err}");
        assert!(check(&size(10, "0.01", false), &limits).is_ok());
    }
}
