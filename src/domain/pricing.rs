//! Money: effective-dated unit prices and the cost of an attempt. Every amount is a
//! `Decimal` in USD; prices are per million tokens. No floats anywhere.

use std::collections::HashMap;

use chrono::{DateTime, TimeZone, Utc};
use rust_decimal::Decimal;
use serde::Serialize;

use crate::config::PriceConfig;

/// The built-in price list (see data/README: seed data, not truth forever).
pub const BUILTIN_PRICES_CSV: &str = include_str!("../../data/model-prices.csv");

/// When the built-in prices start to apply: the day they were extracted.
pub fn builtin_effective_from() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 21, 0, 0, 0)
        .single()
        .unwrap_or_default()
}

/// Unit prices for one model from one moment on, in USD per million tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Price {
    pub provider: String,
    pub model: String,
    pub effective_from: DateTime<Utc>,
    pub input: Decimal,
    pub output: Decimal,
    pub cached_input: Option<Decimal>,
    pub batch_input: Option<Decimal>,
    pub batch_output: Option<Decimal>,
    pub max_input_tokens: Option<i64>,
    pub max_output_tokens: Option<i64>,
    pub batch_api: bool,
}

/// Token counts of one attempt.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Usage {
    pub input_tokens: i64,
    pub output_tokens: i64,
    /// Part of `input_tokens` served from the provider's prompt cache.
    pub cached_tokens: i64,
}

/// What an attempt cost and the unit prices that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cost {
    pub input_usd_per_mtok: Decimal,
    pub output_usd_per_mtok: Decimal,
    pub cached_input_usd_per_mtok: Decimal,
    /// Fraction taken off the real-time price (0.5 on a batch path priced at half).
    pub discount: Decimal,
    pub cost_usd: Decimal,
}

const MILLION: Decimal = Decimal::from_parts(1_000_000, 0, 0, false, 0);

impl Price {
    /// The cost of `usage` at this price; `batch` uses the batch prices where they exist.
    pub fn cost(&self, usage: Usage, batch: bool) -> Cost {
        let (input, output) = match (batch, self.batch_input, self.batch_output) {
            (true, Some(i), Some(o)) => (i, o),
            (true, _, _) => (self.input / Decimal::TWO, self.output / Decimal::TWO),
            (false, _, _) => (self.input, self.output),
        };
        let cached_price = self.cached_input.unwrap_or(self.input);
        // A batch discount applies to cached tokens too.
        let cached = if batch {
            cached_price.min(input)
        } else {
            cached_price
        };
        let cached_tokens = usage.cached_tokens.clamp(0, usage.input_tokens.max(0));
        let uncached = Decimal::from(usage.input_tokens.max(0) - cached_tokens);
        let cost = (uncached * input
            + Decimal::from(cached_tokens) * cached
            + Decimal::from(usage.output_tokens.max(0)) * output)
            / MILLION;
        let discount = if batch && !self.input.is_zero() {
            Decimal::ONE - input / self.input
        } else {
            Decimal::ZERO
        };
        Cost {
            input_usd_per_mtok: input,
            output_usd_per_mtok: output,
            cached_input_usd_per_mtok: cached,
            discount: discount.normalize(),
            cost_usd: cost.normalize(),
        }
    }
}

/// All known prices, looked up by provider, model and time.
#[derive(Debug, Clone, Default)]
pub struct PriceBook {
    by_model: HashMap<(String, String), Vec<Price>>,
}

impl PriceBook {
    /// Builds a book from rows in any order.
    pub fn new(rows: impl IntoIterator<Item = Price>) -> Self {
        let mut by_model: HashMap<(String, String), Vec<Price>> = HashMap::new();
        for p in rows {
            by_model
                .entry((p.provider.clone(), p.model.clone()))
                .or_default()
                .push(p);
        }
        for v in by_model.values_mut() {
            v.sort_by_key(|p| p.effective_from);
        }
        Self { by_model }
    }

    /// The built-in list plus config rows: what the `prices` table is seeded with.
    pub fn seed_rows(config_prices: &[PriceConfig]) -> Vec<Price> {
        let mut rows = parse_price_csv(BUILTIN_PRICES_CSV);
        let configured: Vec<Price> = config_prices
            .iter()
            .map(|c| {
                // An override without `effective_from` applies now: it takes the time of the
                // latest built-in price of the model, so it replaces that price (and keeps its
                // context window); a model the built-in list lacks is priced from the epoch.
                let builtin = rows
                    .iter()
                    .filter(|p| p.provider == c.provider && p.model == c.model)
                    .max_by_key(|p| p.effective_from);
                Price {
                    provider: c.provider.clone(),
                    model: c.model.clone(),
                    effective_from: c
                        .effective_from
                        .or(builtin.map(|p| p.effective_from))
                        .unwrap_or_default(),
                    input: c.input_usd_per_mtok,
                    output: c.output_usd_per_mtok,
                    cached_input: c.cached_input_usd_per_mtok,
                    batch_input: c.batch_input_usd_per_mtok,
                    batch_output: c.batch_output_usd_per_mtok,
                    max_input_tokens: builtin.and_then(|p| p.max_input_tokens),
                    max_output_tokens: builtin.and_then(|p| p.max_output_tokens),
                    batch_api: c.batch_input_usd_per_mtok.is_some(),
                }
            })
            .collect();
        rows.extend(configured);
        // One row per (provider, model, effective_from): a later row (config) wins.
        let mut seen = std::collections::HashSet::new();
        let mut unique: Vec<Price> = rows
            .into_iter()
            .rev()
            .filter(|p| seen.insert((p.provider.clone(), p.model.clone(), p.effective_from)))
            .collect();
        unique.reverse();
        unique
    }

    /// The price in force at `at`.
    pub fn at(&self, provider: &str, model: &str, at: DateTime<Utc>) -> Option<&Price> {
        self.by_model
            .get(&(provider.to_string(), model.to_string()))?
            .iter()
            .rev()
            .find(|p| p.effective_from <= at)
    }

    /// Whether any price is known for the model, at any time.
    pub fn knows(&self, provider: &str, model: &str) -> bool {
        self.by_model
            .contains_key(&(provider.to_string(), model.to_string()))
    }
}

/// Parses the built-in CSV (`provider,model,input_usd_per_mtok,…,batch_api`); bad rows are skipped.
pub fn parse_price_csv(text: &str) -> Vec<Price> {
    let dec = |s: &str| s.trim().parse::<Decimal>().ok();
    text.lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split(',').collect();
            if f.len() < 10 {
                return None;
            }
            // The list names some models `provider/model`; the provider's API wants `model`.
            let model = f[1].strip_prefix(&format!("{}/", f[0])).unwrap_or(f[1]);
            Some(Price {
                provider: f[0].to_string(),
                model: model.to_string(),
                effective_from: builtin_effective_from(),
                input: dec(f[2])?,
                output: dec(f[3])?,
                batch_input: dec(f[4]),
                batch_output: dec(f[5]),
                cached_input: dec(f[6]),
                max_input_tokens: f[7].trim().parse().ok(),
                max_output_tokens: f[8].trim().parse().ok(),
                batch_api: f[9].trim() == "yes",
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Decimal {
        s.parse().unwrap()
    }

    fn mini() -> Price {
        Price {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            effective_from: builtin_effective_from(),
            input: d("0.15"),
            output: d("0.6"),
            cached_input: Some(d("0.075")),
            batch_input: Some(d("0.075")),
            batch_output: Some(d("0.3")),
            max_input_tokens: None,
            max_output_tokens: None,
            batch_api: true,
        }
    }

    #[test]
    fn real_time_cost_is_exact() {
        let c = mini().cost(
            Usage {
                input_tokens: 1000,
                output_tokens: 500,
                cached_tokens: 0,
            },
            false,
        );
        // 1000 * 0.15 / 1e6 + 500 * 0.6 / 1e6 = 0.00015 + 0.0003
        assert_eq!(c.cost_usd, d("0.00045"));
        assert_eq!(c.discount, Decimal::ZERO);
    }

    #[test]
    fn cached_tokens_are_priced_at_the_cached_rate() {
        let c = mini().cost(
            Usage {
                input_tokens: 1000,
                output_tokens: 0,
                cached_tokens: 400,
            },
            false,
        );
        assert_eq!(c.cost_usd, d("0.00012")); // 600*0.15 + 400*0.075 = 90 + 30 = 120 µ$
    }

    #[test]
    fn batch_cost_is_half_and_says_so() {
        let c = mini().cost(
            Usage {
                input_tokens: 1000,
                output_tokens: 500,
                cached_tokens: 0,
            },
            true,
        );
        assert_eq!(c.cost_usd, d("0.000225"));
        assert_eq!(c.discount, d("0.5"));
    }

    #[test]
    fn the_price_in_force_is_the_latest_started_one() {
        let mut later = mini();
        later.effective_from = builtin_effective_from() + chrono::Duration::days(10);
        later.input = d("1");
        let book = PriceBook::new([later.clone(), mini()]);
        let now = builtin_effective_from() + chrono::Duration::days(1);
        assert_eq!(
            book.at("openai", "gpt-4o-mini", now).unwrap().input,
            d("0.15")
        );
        let after = builtin_effective_from() + chrono::Duration::days(11);
        assert_eq!(
            book.at("openai", "gpt-4o-mini", after).unwrap().input,
            d("1")
        );
        assert!(
            book.at(
                "openai",
                "gpt-4o-mini",
                builtin_effective_from() - chrono::Duration::days(1)
            )
            .is_none()
        );
    }

    #[test]
    fn an_override_of_a_built_in_model_without_effective_from_applies_now() {
        let config = crate::config::PriceConfig {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input_usd_per_mtok: d("7"),
            output_usd_per_mtok: d("8"),
            cached_input_usd_per_mtok: None,
            batch_input_usd_per_mtok: None,
            batch_output_usd_per_mtok: None,
            effective_from: None,
        };
        let book = PriceBook::new(PriceBook::seed_rows(&[config]));
        let now = Utc::now();
        let p = book.at("openai", "gpt-4o-mini", now).unwrap();
        assert_eq!((p.input, p.output), (d("7"), d("8")));
    }

    #[test]
    fn seed_rows_have_one_price_per_model_and_time_and_config_wins() {
        let config = crate::config::PriceConfig {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            input_usd_per_mtok: d("9"),
            output_usd_per_mtok: d("9"),
            cached_input_usd_per_mtok: None,
            batch_input_usd_per_mtok: None,
            batch_output_usd_per_mtok: None,
            effective_from: Some(builtin_effective_from()),
        };
        let rows = PriceBook::seed_rows(&[config]);
        let mut keys = std::collections::HashSet::new();
        assert!(rows.iter().all(|p| keys.insert((
            p.provider.clone(),
            p.model.clone(),
            p.effective_from
        ))));
        let mini = rows
            .iter()
            .find(|p| p.provider == "openai" && p.model == "gpt-4o-mini")
            .unwrap();
        assert_eq!(mini.input, d("9"));
    }

    #[test]
    fn the_built_in_list_parses_every_row() {
        let rows = parse_price_csv(BUILTIN_PRICES_CSV);
        assert_eq!(rows.len(), 325);
        assert!(
            rows.iter()
                .any(|p| p.provider == "anthropic" && p.batch_api)
        );
        assert!(
            rows.iter()
                .any(|p| p.provider == "moonshot" && p.model == "kimi-k2.5"),
            "provider prefixes are stripped"
        );
    }
}
