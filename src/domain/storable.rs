//! Text Postgres can store. `jsonb` and `text` refuse the NUL character (U+0000), which a
//! provider may well put in an answer. sluice replaces each NUL in every string (keys
//! included) of such a value with U+FFFD (the Unicode replacement character, `�`): the answer
//! is still recorded and billed, and the change is visible rather than silent.

use serde_json::Value;

/// The character a NUL becomes.
pub const REPLACEMENT: char = '\u{FFFD}';

/// Replaces every NUL in `s` with [`REPLACEMENT`]; returns whether anything changed.
pub fn text(s: &mut String) -> bool {
    if !s.contains('\0') {
        return false;
    }
    *s = s.replace('\0', &REPLACEMENT.to_string());
    true
}

/// Replaces every NUL in every string and key of `v` with [`REPLACEMENT`]; returns whether
/// anything changed.
pub fn json(v: &mut Value) -> bool {
    match v {
        Value::String(s) => text(s),
        Value::Array(items) => items.iter_mut().fold(false, |changed, i| json(i) | changed),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, val) in old {
                    text(&mut k);
                    map.insert(k, val);
                }
                changed = true;
            }
            map.values_mut().fold(changed, |c, val| json(val) | c)
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nul_characters_become_replacement_characters_everywhere() {
        let cases = [
            (json!("a\u{0}b"), json!("a\u{FFFD}b"), true),
            (
                json!({"k\u{0}": ["x\u{0}", 1]}),
                json!({"k\u{FFFD}": ["x\u{FFFD}", 1]}),
                true,
            ),
            (
                json!({"k": "plain", "n": null}),
                json!({"k": "plain", "n": null}),
                false,
            ),
            (json!(42), json!(42), false),
        ];
        for (mut input, expected, changed) in cases {
            assert_eq!(json(&mut input), changed);
            assert_eq!(input, expected);
        }
    }

    #[test]
    fn a_storable_value_serializes_without_nul_escapes() {
        let mut v = json!({"content": "before\u{0}after"});
        json(&mut v);
        assert!(!v.to_string().contains("\\u0000"));
    }
}
