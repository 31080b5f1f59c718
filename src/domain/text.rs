//! Text Postgres can store. `text` and `jsonb` refuse U+0000 (NUL). Input is checked up front
//! ([`check_str`], [`check_value`]): a NUL anywhere in a job is refused naming the field, so a
//! bad input never reaches the database. A provider's answer may still contain one: such text is
//! stored transformed, never refused ([`storable`]): each NUL becomes U+FFFD, so the answer is
//! recorded and billed and nothing else changes. (Rust strings are valid UTF-8, so NUL is the
//! only character left that the database refuses.)

use std::borrow::Cow;

use serde_json::Value;

use super::job::FieldError;

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
pub fn storable(mut v: Value) -> Value {
    make_storable(&mut v);
    v
}

/// Replaces every NUL in `s` with U+FFFD; returns whether anything changed.
pub fn make_storable_str(s: &mut String) -> bool {
    if !s.contains('\0') {
        return false;
    }
    *s = s.replace('\0', "\u{FFFD}");
    true
}

/// Replaces every NUL in every string and key of `v` with U+FFFD; returns whether
/// anything changed.
pub fn make_storable(v: &mut Value) -> bool {
    match v {
        Value::String(s) => make_storable_str(s),
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |changed, i| make_storable(i) | changed),
        Value::Object(map) => {
            let mut changed = false;
            if map.keys().any(|k| k.contains('\0')) {
                let old = std::mem::take(map);
                for (mut k, val) in old {
                    make_storable_str(&mut k);
                    map.insert(k, val);
                }
                changed = true;
            }
            map.values_mut()
                .fold(changed, |c, val| make_storable(val) | c)
        }
        _ => false,
    }
}

/// Whether Postgres can store `s` as `text` or inside `jsonb`.
pub fn is_storable(s: &str) -> bool {
    !s.contains('\0')
}

/// Refuses `s` if it holds a character Postgres cannot store, naming `field`.
pub fn check_str(field: &str, s: &str) -> Result<(), FieldError> {
    if is_storable(s) {
        Ok(())
    } else {
        Err(FieldError::new(
            field,
            "contains a NUL character (\\u0000), which cannot be stored; remove it",
        ))
    }
}

/// Walks a JSON value (keys and strings) and names the first place holding unstorable text,
/// as a path such as `body.messages[0].content` under `prefix` (empty for the top level).
pub fn check_value(prefix: &str, value: &Value) -> Result<(), FieldError> {
    match value {
        Value::String(s) => check_str(prefix, s),
        Value::Array(items) => items
            .iter()
            .enumerate()
            .try_for_each(|(i, v)| check_value(&format!("{prefix}[{i}]"), v)),
        Value::Object(map) => map.iter().try_for_each(|(k, v)| {
            let path = if prefix.is_empty() {
                k.clone()
            } else {
                format!("{prefix}.{k}")
            };
            if is_storable(k) {
                check_value(&path, v)
            } else {
                check_str(&format!("{prefix} (a key)"), k)
            }
        }),
        _ => Ok(()),
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

#[cfg(test)]
mod checks {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_nul_anywhere_is_found_and_named_by_its_path() {
        let v = json!({"custom_id": "ok", "body": {"messages": [{"role": "user", "content": "a\u{0}b"}]}});
        assert_eq!(
            check_value("", &v).unwrap_err().field,
            "body.messages[0].content"
        );
        let v = json!({"tags": {"k\u{0}": "v"}});
        assert!(check_value("", &v).unwrap_err().field.starts_with("tags"));
        assert!(check_value("", &json!({"a": ["x", 1, null, {"b": "ok"}]})).is_ok());
    }
}

#[cfg(test)]
mod in_place {
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
            assert_eq!(make_storable(&mut input), changed);
            assert_eq!(input, expected);
        }
    }

    #[test]
    fn a_storable_value_serializes_without_nul_escapes() {
        let mut v = json!({"content": "before\u{0}after"});
        make_storable(&mut v);
        assert!(!v.to_string().contains("\\u0000"));
    }
}
