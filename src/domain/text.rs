//! Text Postgres can store. `jsonb` and `text` refuse U+0000 (NUL); a provider's answer may
//! still contain one. Such text is stored transformed, never refused: each NUL becomes U+FFFD
//! (the replacement character), so the answer is recorded and billed and nothing else changes.

use std::borrow::Cow;

use serde_json::Value;

/// What a NUL becomes in stored text.
pub const NUL_REPLACEMENT: char = '\u{FFFD}';

/// `s` with every NUL replaced by U+FFFD; borrowed when there is none (the usual case).
pub fn storable_str(s: &str) -> Cow<'_, str> {
    if s.contains('\0') {
        Cow::Owned(s.replace('\0', "\u{FFFD}"))
    } else {
        Cow::Borrowed(s)
    }
}

/// `v` with every NUL in its strings and object keys replaced by U+FFFD.
pub fn storable(v: Value) -> Value {
    match v {
        Value::String(s) if s.contains('\0') => Value::String(s.replace('\0', "\u{FFFD}")),
        Value::Array(items) => Value::Array(items.into_iter().map(storable).collect()),
        Value::Object(map) => Value::Object(
            map.into_iter()
                .map(|(k, v)| (storable_str(&k).into_owned(), storable(v)))
                .collect(),
        ),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_becomes_the_replacement_character_everywhere_and_nothing_else_changes() {
        let cases = [
            (json!("a\u{0}b"), json!("a\u{FFFD}b")),
            (json!("plain"), json!("plain")),
            (json!(["\u{0}", 1, null]), json!(["\u{FFFD}", 1, null])),
            (
                json!({"k\u{0}": {"deep": ["x\u{0}\u{0}"]}, "n": 2.5}),
                json!({"k\u{FFFD}": {"deep": ["x\u{FFFD}\u{FFFD}"]}, "n": 2.5}),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(storable(input.clone()), want, "{input}");
        }
        assert!(matches!(storable_str("no nul"), Cow::Borrowed(_)));
        assert_eq!(storable_str("\u{0}"), "\u{FFFD}");
    }
}
