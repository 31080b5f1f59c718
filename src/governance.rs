//! Configuration of what sluice keeps and shows: PII redaction policies (`[redaction]`) and
//! retention of request and response bodies (`[retention]`). Parsed here into the pure types
//! of `domain::redact`; compiled detectors are cached per detector set.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::domain::job::FieldError;
use crate::domain::redact::{Mode, Redactor, strictest};

/// One policy: what to do, and with which detectors (empty: every built-in and custom one).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    pub mode: Mode,
    pub detectors: Vec<String>,
}

/// The `[redaction]` section: a default policy, custom detectors, and policies per tenant and
/// per alias. The strictest policy that applies to a job wins.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedactionConfig {
    pub mode: Mode,
    pub detectors: Vec<String>,
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
        check("redaction.detectors".into(), &self.detectors)?;
        for (t, p) in &self.tenants {
            check(format!("redaction.tenants.{t}.detectors"), &p.detectors)?;
        }
        for (a, p) in &self.aliases {
            check(format!("redaction.aliases.{a}.detectors"), &p.detectors)?;
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
        let default = PolicyConfig {
            mode: self.mode,
            detectors: self.detectors.clone(),
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
        (mode, detectors)
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
    /// holds the values), `block` refuses it with `policy_violation` naming the detectors.
    /// Returns the counts per detector (never the values), e.g. `{"card": 2}`.
    pub fn apply(
        &self,
        tenant: &str,
        alias: &str,
        request: &mut Value,
    ) -> Result<Value, FieldError> {
        let (mode, detectors) = self.effective(tenant, alias);
        if mode == Mode::Off {
            return Ok(Value::Object(Default::default()));
        }
        let redactor = self
            .redactor(&detectors)
            .map_err(|m| FieldError::new("redaction", m))?;
        match mode {
            Mode::Block => {
                let counts = redactor.count(request);
                if counts.is_empty() {
                    return Ok(Value::Object(Default::default()));
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
            _ => {
                let masking = redactor.mask_request(request);
                Ok(serde_json::to_value(&masking.counts).unwrap_or_default())
            }
        }
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
