//! Which models exist: model aliases, deployments (`provider/model`) and the prices that make a
//! deployment usable. Resolving a job's `model` happens here, once, at submission.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::Serialize;

use rust_decimal::Decimal;

use super::pricing::{Price, PriceBook, Usage};
use crate::config::{Config, ProviderKind};

/// One upstream target: a configured provider and one of its models.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Deployment {
    pub provider: String,
    pub model: String,
}

impl fmt::Display for Deployment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.provider, self.model)
    }
}

impl Deployment {
    /// Parses `provider/model`.
    pub fn parse(s: &str) -> Option<Self> {
        let (p, m) = s.split_once('/')?;
        (!p.is_empty() && !m.is_empty()).then(|| Self {
            provider: p.into(),
            model: m.into(),
        })
    }
}

/// What a job's `model` resolved to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Resolved {
    pub alias: Option<String>,
    /// In order of preference; never empty.
    pub deployments: Vec<Deployment>,
    pub max_attempts: Option<u32>,
    /// What savings are measured against: the premium real-time deployment.
    pub premium: Option<Deployment>,
    /// Response cache lifetime, when the alias opts in.
    pub cache_ttl: Option<std::time::Duration>,
    /// The most output tokens one choice can ask for: the largest limit among the
    /// deployments, or `None` when the price list does not know every one.
    pub max_output_tokens: Option<i64>,
}

#[derive(Debug, Clone)]
struct ProviderInfo {
    price_provider: String,
    #[allow(dead_code)]
    kind: ProviderKind,
    batch: bool,
}

/// Aliases, providers and prices, as configured and priced.
#[derive(Debug, Clone)]
pub struct Catalog {
    aliases: BTreeMap<String, Resolved>,
    providers: BTreeMap<String, ProviderInfo>,
    default_provider: Option<String>,
    prices: PriceBook,
}

impl Catalog {
    /// A catalog over `prices` (normally loaded from the `prices` table).
    pub fn new(config: &Config, prices: PriceBook) -> Self {
        let aliases = config
            .aliases
            .iter()
            .map(|(name, a)| {
                let deployments = a
                    .deployments
                    .iter()
                    .filter_map(|d| Deployment::parse(d))
                    .collect();
                (
                    name.clone(),
                    Resolved {
                        alias: Some(name.clone()),
                        deployments,
                        max_attempts: a.max_attempts,
                        premium: a.premium.as_deref().and_then(Deployment::parse),
                        cache_ttl: a.cache_ttl,
                        max_output_tokens: None,
                    },
                )
            })
            .collect();
        let providers = config
            .providers
            .iter()
            .map(|(name, p)| {
                let price_provider = p.price_provider.clone().unwrap_or_else(|| name.clone());
                (
                    name.clone(),
                    ProviderInfo {
                        price_provider,
                        kind: p.kind,
                        batch: p.batch,
                    },
                )
            })
            .collect();
        Self {
            aliases,
            providers,
            default_provider: config.routing.default_provider.clone(),
            prices,
        }
    }

    /// A catalog priced from the built-in list and config alone (no database).
    pub fn from_config(config: &Config) -> Self {
        Self::new(config, PriceBook::new(PriceBook::seed_rows(&config.prices)))
    }

    /// The price book this catalog was built over.
    pub fn prices(&self) -> &PriceBook {
        &self.prices
    }

    /// The price of `d` in force at `at`, if the price list has one.
    pub fn price_of(&self, d: &Deployment, at: DateTime<Utc>) -> Option<&Price> {
        self.prices
            .at(self.price_provider(&d.provider), &d.model, at)
    }

    /// The most a call can cost on `deployment` (at batch prices if `batch`): every prompt
    /// token uncached, every allowed output token used. Zero for a model without a price.
    pub fn worst_case_usd(
        &self,
        deployment: &str,
        prompt_tokens: i64,
        max_tokens: i64,
        batch: bool,
        now: DateTime<Utc>,
    ) -> Decimal {
        let usage = Usage {
            input_tokens: prompt_tokens,
            output_tokens: max_tokens,
            cached_tokens: 0,
        };
        Deployment::parse(deployment)
            .and_then(|d| self.price_of(&d, now))
            .map(|p| p.cost(usage, batch).cost_usd)
            .unwrap_or_default()
    }

    /// The first of `deployments` after index `after` whose context window takes a request
    /// of `prompt_tokens` with `max_tokens` (a deployment without a known price fits).
    pub fn next_fitting(
        &self,
        deployments: &[String],
        after: usize,
        prompt_tokens: i64,
        max_tokens: i64,
        now: DateTime<Utc>,
    ) -> Option<usize> {
        deployments
            .iter()
            .enumerate()
            .skip(after + 1)
            .find_map(|(i, d)| {
                let d = Deployment::parse(d)?;
                let p = self.price_of(&d, now);
                let fits = p.is_none_or(|p| {
                    p.max_input_tokens.is_none_or(|m| prompt_tokens <= m)
                        && p.max_output_tokens.is_none_or(|m| max_tokens <= m)
                });
                fits.then_some(i)
            })
    }

    /// The price-list provider name for a deployment's provider.
    pub fn price_provider<'a>(&'a self, provider: &'a str) -> &'a str {
        self.providers
            .get(provider)
            .map(|p| p.price_provider.as_str())
            .unwrap_or(provider)
    }

    /// Whether a deployment can take the batch path: its provider has a batch API and the
    /// price list marks the model as batchable.
    pub fn batch_capable(&self, d: &Deployment) -> bool {
        self.providers.get(&d.provider).is_some_and(|p| p.batch)
            && self
                .prices
                .at(
                    self.price_provider(&d.provider),
                    &d.model,
                    chrono::DateTime::<chrono::Utc>::MAX_UTC,
                )
                .is_some_and(|p| p.batch_api || p.batch_input.is_some())
    }

    /// Configured alias names.
    pub fn alias_names(&self) -> impl Iterator<Item = &str> {
        self.aliases.keys().map(String::as_str)
    }

    /// Resolves an alias, a `provider/model`, or a bare model of the default provider.
    pub fn resolve(&self, model: &str) -> Result<Resolved, String> {
        if let Some(r) = self.aliases.get(model) {
            return self.check_priced(r.clone());
        }
        let deployment = match Deployment::parse(model) {
            Some(d) if self.providers.contains_key(&d.provider) => d,
            _ => match &self.default_provider {
                Some(p) if !model.contains('/') => Deployment {
                    provider: p.clone(),
                    model: model.into(),
                },
                _ => {
                    return Err(format!(
                        "unknown model `{model}`: not an alias ({}) nor `provider/model` with a provider among ({})",
                        self.alias_names().collect::<Vec<_>>().join(", "),
                        self.providers
                            .keys()
                            .cloned()
                            .collect::<Vec<_>>()
                            .join(", ")
                    ));
                }
            },
        };
        self.check_priced(Resolved {
            alias: None,
            deployments: vec![deployment],
            max_attempts: None,
            premium: None,
            cache_ttl: None,
            max_output_tokens: None,
        })
        .map_err(|e| {
            format!(
                "unknown model `{model}` ({e}); known aliases: {}",
                self.alias_names().collect::<Vec<_>>().join(", ")
            )
        })
    }

    fn check_priced(&self, mut r: Resolved) -> Result<Resolved, String> {
        let limits: Option<Vec<i64>> = r
            .deployments
            .iter()
            .map(|d| {
                self.price_of(d, chrono::DateTime::<Utc>::MAX_UTC)
                    .and_then(|p| p.max_output_tokens)
            })
            .collect();
        r.max_output_tokens = limits.and_then(|l| l.into_iter().max());
        for d in &r.deployments {
            if !self
                .prices
                .knows(self.price_provider(&d.provider), &d.model)
            {
                return Err(format!(
                    "no price is known for {d}; add a [[prices]] row for provider `{}` model `{}`",
                    self.price_provider(&d.provider),
                    d.model
                ));
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog::from_config(&Config::from_toml(crate::config::DEFAULT_CONFIG).unwrap())
    }

    #[test]
    fn an_alias_resolves_to_its_ordered_deployments() {
        let r = catalog().resolve("summarize").unwrap();
        let names: Vec<String> = r.deployments.iter().map(ToString::to_string).collect();
        assert_eq!(names, ["openai/gpt-4o-mini", "openai/gpt-4.1-mini"]);
    }

    #[test]
    fn provider_slash_model_and_bare_names_resolve_when_priced() {
        let c = catalog();
        assert_eq!(
            c.resolve("openai/gpt-4o").unwrap().deployments[0].model,
            "gpt-4o"
        );
        assert_eq!(
            c.resolve("gpt-4o").unwrap().deployments[0].provider,
            "openai"
        );
        let err = c.resolve("gpt-9-ultra").unwrap_err();
        assert!(
            err.contains("gpt-9-ultra") && err.contains("summarize"),
            "{err}"
        );
        assert!(c.resolve("nope/x").is_err());
    }
}
