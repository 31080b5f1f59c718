//! PII redaction: built-in detectors (payment cards checked with Luhn, email addresses, phone
//! numbers, IBANs checked with mod-97, US social security numbers, strings that look like API
//! keys or bearer tokens) plus custom regexes, and the two things a policy does with a match:
//! `mask` (replace each distinct value with a typed placeholder such as `[CARD_1]`) or `block`
//! (refuse, naming the detector and never the value), and putting masked values back into an
//! answer (`restore`). Pure: no I/O, no config.

mod detect;
mod restore;

use std::collections::BTreeMap;

use regex::Regex;
use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use detect::{iban_valid, luhn_valid};

/// What a policy does with a match.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Nothing.
    #[default]
    Off,
    /// Replace each match with a typed placeholder before the request is stored or sent.
    Mask,
    /// Refuse the job at submission with `policy_violation`.
    Block,
}

/// The built-in detectors' names, as used in config and in a job's `redactions` counts.
pub const BUILTINS: [&str; 6] = ["card", "email", "phone", "iban", "ssn", "secret"];

/// One detector: a name, its placeholder label, a pattern and an optional check of a match.
#[derive(Debug, Clone)]
struct Detector {
    name: String,
    label: String,
    pattern: Regex,
    check: Option<fn(&str) -> bool>,
}

/// A compiled set of detectors, in priority order (earlier wins where matches overlap).
#[derive(Debug, Clone, Default)]
pub struct Redactor {
    detectors: Vec<Detector>,
    /// Whether payment cards are looked for (they are found by a scan, not a regex).
    cards: bool,
}

/// A value found in a text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The detector's name (`card`, `email`, a custom name…).
    pub detector: String,
    pub start: usize,
    pub end: usize,
}

/// Placeholders handed out during one request: the same value gets the same placeholder, and
/// each detector's counter runs across every message of the request. Kept in memory only.
#[derive(Debug, Default)]
pub struct Masking {
    by_value: BTreeMap<String, String>,
    next: BTreeMap<String, usize>,
    /// How many matches each detector made (never the values).
    pub counts: BTreeMap<String, u64>,
}

impl Redactor {
    /// The built-in detectors named in `names` (all of them when `names` is empty), then the
    /// custom `(name, regex)` pairs. The error names the unknown detector or bad regex.
    pub fn new(names: &[String], custom: &[(String, String)]) -> Result<Self, String> {
        for n in names {
            if !BUILTINS.contains(&n.as_str()) && !custom.iter().any(|(c, _)| c == n) {
                return Err(format!(
                    "unknown detector `{n}`: use {} or a custom one",
                    BUILTINS.join(", ")
                ));
            }
        }
        let wanted = |n: &str| names.is_empty() || names.iter().any(|x| x == n);
        let mut detectors = Vec::new();
        for (name, pattern, check) in detect::builtin() {
            if wanted(name) {
                detectors.push(Detector {
                    name: name.to_string(),
                    label: name.to_uppercase(),
                    pattern: Regex::new(pattern).map_err(|e| format!("{name}: {e}"))?,
                    check,
                });
            }
        }
        for (name, pattern) in custom {
            if names.is_empty() || wanted(name) {
                let pattern =
                    Regex::new(pattern).map_err(|e| format!("custom detector `{name}`: {e}"))?;
                detectors.push(Detector {
                    name: name.clone(),
                    label: name.to_uppercase(),
                    pattern,
                    check: None,
                });
            }
        }
        Ok(Self {
            detectors,
            cards: wanted("card"),
        })
    }

    /// Every match in `text`, non-overlapping, in order of position.
    pub fn find(&self, text: &str) -> Vec<Found> {
        let mut taken: Vec<Found> = Vec::new();
        let overlaps =
            |taken: &[Found], s: usize, e: usize| taken.iter().any(|f| s < f.end && f.start < e);
        // Secrets first: a long token may contain digit runs that look like a card.
        for d in self.detectors.iter().filter(|d| d.name == "secret") {
            for m in d.pattern.find_iter(text) {
                if d.check.is_none_or(|c| c(m.as_str())) && !overlaps(&taken, m.start(), m.end()) {
                    taken.push(Found {
                        detector: d.name.clone(),
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
        if self.cards {
            for (s, e) in detect::cards(text) {
                if !overlaps(&taken, s, e) {
                    taken.push(Found {
                        detector: "card".into(),
                        start: s,
                        end: e,
                    });
                }
            }
        }
        for d in self.detectors.iter().filter(|d| d.name != "secret") {
            for m in d.pattern.find_iter(text) {
                if d.check.is_none_or(|c| c(m.as_str())) && !overlaps(&taken, m.start(), m.end()) {
                    taken.push(Found {
                        detector: d.name.clone(),
                        start: m.start(),
                        end: m.end(),
                    });
                }
            }
        }
        taken.sort_by_key(|f| f.start);
        taken
    }

    fn label(&self, detector: &str) -> String {
        self.detectors
            .iter()
            .find(|d| d.name == detector)
            .map_or_else(|| detector.to_uppercase(), |d| d.label.clone())
    }

    /// `text` with each match replaced by its placeholder.
    pub fn mask(&self, text: &str, masking: &mut Masking) -> String {
        let found = self.find(text);
        if found.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in found {
            out.push_str(&text[at..f.start]);
            *masking.counts.entry(f.detector.clone()).or_default() += 1;
            let value = &text[f.start..f.end];
            let placeholder = match masking.by_value.get(value) {
                Some(p) => p.clone(),
                None => {
                    let n = masking.next.entry(f.detector.clone()).or_default();
                    *n += 1;
                    let p = format!("[{}_{}]", self.label(&f.detector), n);
                    masking.by_value.insert(value.to_string(), p.clone());
                    p
                }
            };
            out.push_str(&placeholder);
            at = f.end;
        }
        out.push_str(&text[at..]);
        out
    }

    /// How many matches each detector makes in the texts of `request` (a chat request).
    pub fn count(&self, request: &Value) -> BTreeMap<String, u64> {
        let mut counts = BTreeMap::new();
        visit_texts(request, &mut |t| {
            for f in self.find(t) {
                *counts.entry(f.detector).or_default() += 1;
            }
        });
        counts
    }

    /// Masks every text of `request` (message contents, content parts' text) in place.
    pub fn mask_request(&self, request: &mut Value) -> Masking {
        let mut masking = Masking::default();
        visit_texts_mut(request, &mut |t| *t = self.mask(t, &mut masking));
        masking
    }
}

/// Calls `f` on every string that a provider reads as text: each message's `content` (a string,
/// or the `text` of its parts) and `system` prompts.
fn visit_texts(request: &Value, f: &mut impl FnMut(&str)) {
    let mut copy = request.clone();
    visit_texts_mut(&mut copy, &mut |t| f(t));
}

fn visit_texts_mut(request: &mut Value, f: &mut impl FnMut(&mut String)) {
    fn text_of(v: &mut Value, f: &mut impl FnMut(&mut String)) {
        match v {
            Value::String(s) => f(s),
            Value::Array(parts) => {
                for p in parts {
                    match p {
                        Value::String(s) => f(s),
                        Value::Object(o) => {
                            if let Some(Value::String(s)) = o.get_mut("text") {
                                f(s);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if let Some(Value::Array(messages)) = request.get_mut("messages") {
        for m in messages {
            if let Some(c) = m.get_mut("content") {
                text_of(c, f);
            }
        }
    }
    if let Some(s) = request.get_mut("system") {
        text_of(s, f);
    }
    if let Some(p) = request.get_mut("prompt") {
        text_of(p, f);
    }
}

/// The effective mode of the policies that apply to a job (default, tenant, alias): the
/// strictest wins, so an alias cannot loosen what a tenant requires.
pub fn strictest(modes: &[Mode]) -> Mode {
    modes.iter().copied().max().unwrap_or_default()
}

#[cfg(test)]
mod tests;
