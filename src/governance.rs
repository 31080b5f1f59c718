//! Configuration of what sluice keeps and shows: PII redaction policies (`[redaction]`) and
//! retention of request and response bodies (`[retention]`). Parsed here into the pure types
//! of `domain::redact`; compiled detectors are cached per detector set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::job::FieldError;
use crate::domain::redact::{Masking, Mode, Redactor, strictest};

/// One policy: what to do, and with which detectors (empty: every built-in and custom one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub detectors: Vec<String>,
    /// With `mode = "mask"`: keep the request as submitted, mask it whenever it is sent, and
    /// put the values back into the answer (the database then holds the values).
    pub restore: bool,
}

/// What a policy did to a job at submission.
#[derive(Debug, Clone, PartialEq)]
pub struct Applied {
    /// Matches per detector (never the values), e.g. `{"card": 2}`.
    pub counts: Value,
    /// The request was kept as submitted and must be masked whenever it is sent.
    pub mask_on_send: bool,
}

/// The `[redaction]` section: a default policy, custom detectors, and policies per tenant and
/// per alias. The strictest policy that applies to a job wins.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    pub mode: Mode,
    pub detectors: Vec<String>,
    /// With `mode = "mask"`: mask at call time and restore the values into the answer.
    pub restore: bool,
    /// Custom detectors: name → regex (`regex` crate syntax).
    pub custom: BTreeMap<String, String>,
    pub tenants: BTreeMap<String, PolicyConfig>,
    pub aliases: BTreeMap<String, PolicyConfig>,
    #[serde(skip)]
    compiled: Arc<Mutex<HashMap<Vec<String>, Arc<Redactor>>>>,
}

impl RedactionConfig {
    /// Checks every detector name and custom regex; the error names the key path.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let custom = self.custom_pairs();
        let check = |key: String, names: &[String]| {
            Redactor::new(names, &custom)
                .map(|_| ())
                .map_err(|m| (key, m))
        };
        let restore = |key: String, mode: Mode, restore: bool| {
            if restore && mode != Mode::Mask {
                Err((
                    key,
                    "`restore = true` needs `mode = \"mask\"` (only masked values can be put back)"
                        .to_string(),
                ))
            } else {
                Ok(())
            }
        };
        check("redaction.detectors".into(), &self.detectors)?;
        restore("redaction.restore".into(), self.mode, self.restore)?;
        for (t, p) in &self.tenants {
            check(format!("redaction.tenants.{t}.detectors"), &p.detectors)?;
            restore(format!("redaction.tenants.{t}.restore"), p.mode, p.restore)?;
        }
        for (a, p) in &self.aliases {
            check(format!("redaction.aliases.{a}.detectors"), &p.detectors)?;
            restore(format!("redaction.aliases.{a}.restore"), p.mode, p.restore)?;
        }
        Ok(())
    }

    fn custom_pairs(&self) -> Vec<(String, String)> {
        self.custom
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The mode and detectors that apply to `tenant`'s job for `alias`.
    pub fn effective(&self, tenant: &str, alias: &str) -> (Mode, Vec<String>) {
        let (mode, detectors, _) = self.effective_policy(tenant, alias);
        (mode, detectors)
    }

    /// The mode, detectors and restore choice that apply to `tenant`'s job for `alias`.
    /// Restoring keeps the values in the database, so it is the looser choice: it applies only
    /// when the effective mode is `mask` and every policy that masks asks for it.
    pub fn effective_policy(&self, tenant: &str, alias: &str) -> (Mode, Vec<String>, bool) {
        let default = PolicyConfig {
            mode: self.mode,
            detectors: self.detectors.clone(),
            restore: self.restore,
        };
        let applying: Vec<&PolicyConfig> = [
            Some(&default),
            self.tenants.get(tenant),
            self.aliases.get(alias),
        ]
        .into_iter()
        .flatten()
        .filter(|p| p.mode != Mode::Off)
        .collect();
        let mode = strictest(&applying.iter().map(|p| p.mode).collect::<Vec<_>>());
        let mut detectors: Vec<String> = Vec::new();
        if applying.iter().all(|p| !p.detectors.is_empty()) {
            for p in &applying {
                detectors.extend(p.detectors.iter().cloned());
            }
            detectors.sort();
            detectors.dedup();
        }
        let restore = mode == Mode::Mask
            && applying
                .iter()
                .filter(|p| p.mode == Mode::Mask)
                .all(|p| p.restore);
        (mode, detectors, restore)
    }

    fn redactor(&self, detectors: &[String]) -> Result<Arc<Redactor>, String> {
        let key = detectors.to_vec();
        if let Ok(cache) = self.compiled.lock()
            && let Some(r) = cache.get(&key)
        {
            return Ok(r.clone());
        }
        let r = Arc::new(Redactor::new(detectors, &self.custom_pairs())?);
        if let Ok(mut cache) = self.compiled.lock() {
            cache.insert(key, r.clone());
        }
        Ok(r)
    }

    /// Applies the policy of `tenant` and `alias` to a job's chat `request` at submission:
    /// `mask` rewrites it in place (so neither the database, the broker nor any provider ever
    /// holds the values), or with `restore` leaves it as submitted and marks the job to be
    /// masked whenever it is sent; `block` refuses it with `policy_violation` naming the
    /// detectors. The counts per detector (never the values) are returned either way.
    pub fn apply(
        &self,
        tenant: &str,
        alias: &str,
        request: &mut Value,
    ) -> Result<Applied, FieldError> {
        let (mode, detectors, restore) = self.effective_policy(tenant, alias);
        let none = |mask_on_send| Applied {
            counts: Value::Object(Default::default()),
            mask_on_send,
        };
        if mode == Mode::Off {
            return Ok(none(false));
        }
        let redactor = self
            .redactor(&detectors)
            .map_err(|m| FieldError::new("redaction", m))?;
        match mode {
            Mode::Block => {
                let counts = redactor.count(request);
                if counts.is_empty() {
                    return Ok(none(false));
                }
                let names: Vec<&str> = counts.keys().map(String::as_str).collect();
                Err(FieldError::new(
                    "body.messages",
                    format!(
                        "policy_violation: the redaction policy blocks this job: detector(s) {} matched; remove that data and submit again",
                        names.join(", ")
                    ),
                ))
            }
            _ if restore => {
                // Masked at call time on every path; the job is marked even without a match
                // today, so the mapping is always recomputed from what is stored.
                let counts = redactor.count(request);
                Ok(Applied {
                    counts: serde_json::to_value(&counts).unwrap_or_default(),
                    mask_on_send: true,
                })
            }
            _ => {
                let masking = redactor.mask_request(request);
                Ok(Applied {
                    counts: serde_json::to_value(&masking.counts).unwrap_or_default(),
                    mask_on_send: false,
                })
            }
        }
    }

    /// Masks the request of a job marked `mask_on_send` just before it is sent, returning the
    /// masked copy and the in-memory mapping that puts the values back into the answer. The
    /// same stored request always yields the same placeholders, so a batch's answer hours
    /// later is restored from a mapping recomputed here. If the policy no longer masks this
    /// job (a config change), every detector is used: such a job is never sent unmasked.
    pub fn mask_for_call(
        &self,
        tenant: &str,
        alias: &str,
        request: &Value,
    ) -> Result<(Value, Masking), String> {
        let (mode, detectors, _) = self.effective_policy(tenant, alias);
        let detectors = if mode == Mode::Mask {
            detectors
        } else {
            Vec::new()
        };
        let redactor = self.redactor(&detectors)?;
        let mut masked = request.clone();
        let masking = redactor.mask_request(&mut masked);
        Ok((masked, masking))
    }
}

/// Whether a tenant's prompts are kept as sent or only as a hash once the job has ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorePrompts {
    #[default]
    Full,
    Hash,
}

/// Per-tenant retention choices.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TenantRetention {
    pub store_prompts: StorePrompts,
}

/// The `[retention]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How long request and response bodies of finished jobs are kept (the ledger and the
    /// jobs' metadata stay). `0s` keeps them forever.
    #[serde(with = "humantime_serde")]
    pub results: Duration,
    /// How often the cleaner runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    pub tenants: BTreeMap<String, TenantRetention>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            results: Duration::from_secs(30 * 86_400),
            interval: Duration::from_secs(60),
            tenants: BTreeMap::new(),
        }
    }
}

impl RetentionConfig {
    /// Tenants that keep only a hash of each prompt.
    pub fn hashing_tenants(&self) -> Vec<String> {
        self.tenants
            .iter()
            .filter(|(_, t)| t.store_prompts == StorePrompts::Hash)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn policy(mode: Mode, restore: bool) -> PolicyConfig {
        PolicyConfig {
            mode,
            restore,
            ..Default::default()
        }
    }

    #[test]
    fn restore_needs_mask_and_the_error_names_the_key() {
        let mut c = RedactionConfig::default();
        c.tenants.insert("acme".into(), policy(Mode::Block, true));
        let (key, message) = c.validate().unwrap_err();
        assert_eq!(key, "redaction.tenants.acme.restore");
        assert!(message.contains("mode = \"mask\""), "{message}");
        let c = RedactionConfig {
            restore: true,
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap_err().0, "redaction.restore");
        let mut c = RedactionConfig::default();
        c.aliases
            .insert("summarize".into(), policy(Mode::Mask, true));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn restore_applies_only_when_every_masking_policy_asks_for_it() {
        let mut c = RedactionConfig::default();
        c.tenants.insert("acme".into(), policy(Mode::Mask, true));
        c.tenants.insert("globex".into(), policy(Mode::Mask, true));
        c.aliases.insert("strict".into(), policy(Mode::Mask, false));
        c.aliases
            .insert("blocked".into(), policy(Mode::Block, false));
        let cases = [
            ("acme", "summarize", Mode::Mask, true),
            ("acme", "strict", Mode::Mask, false),
            ("acme", "blocked", Mode::Block, false),
            ("initech", "summarize", Mode::Off, false),
            ("initech", "strict", Mode::Mask, false),
        ];
        for (tenant, alias, mode, restore) in cases {
            let (m, _, r) = c.effective_policy(tenant, alias);
            assert_eq!((m, r), (mode, restore), "{tenant} {alias}");
        }
    }

    #[test]
    fn with_restore_the_request_is_kept_counted_and_masked_only_for_the_call() {
        let mut c = RedactionConfig::default();
        c.tenants.insert("acme".into(), policy(Mode::Mask, true));
        let original = json!({"messages": [{"role": "user", "content": "card 4111 1111 1111 1111 to a@b.io"}]});
        let mut request = original.clone();
        let applied = c.apply("acme", "summarize", &mut request).unwrap();
        assert_eq!(request, original, "stored as submitted");
        assert!(applied.mask_on_send);
        assert_eq!(applied.counts, json!({"card": 1, "email": 1}));
        let (masked, masking) = c.mask_for_call("acme", "summarize", &request).unwrap();
        assert_eq!(
            masked["messages"][0]["content"],
            "card [CARD_1] to [EMAIL_1]"
        );
        assert_eq!(masking.restore("[EMAIL_1]"), "a@b.io");
        // Without restore the request itself is masked and nothing is left to do at call time.
        c.tenants.insert("globex".into(), policy(Mode::Mask, false));
        let mut plain = original.clone();
        let applied = c.apply("globex", "summarize", &mut plain).unwrap();
        assert!(!applied.mask_on_send);
        assert_eq!(
            plain["messages"][0]["content"],
            "card [CARD_1] to [EMAIL_1]"
        );
        // A job marked at submission is masked even if the policy was switched off since.
        c.tenants.clear();
        let (masked, _) = c.mask_for_call("acme", "summarize", &request).unwrap();
        assert!(!masked.to_string().contains("4111"), "{masked}");
    }
}
