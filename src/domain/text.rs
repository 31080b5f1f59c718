//! Text Postgres cannot store. `text` and `jsonb` refuse the NUL character (`\u0000`), so a
//! NUL anywhere in a job (a prompt, a tag, a custom id, a key of the request object) would
//! fail the insert. It is refused up front instead, naming the field, so a bad input never
//! reaches the database. (Rust strings are valid UTF-8, so NUL is the only character left that
//! the database refuses.)

use serde_json::Value;

use super::job::FieldError;

/// Whether Postgres can store `s` as `text` or inside `jsonb`.
pub fn storable(s: &str) -> bool {
    !s.contains('\0')
}

/// Refuses `s` if it holds a character Postgres cannot store, naming `field`.
pub fn check_str(field: &str, s: &str) -> Result<(), FieldError> {
    if storable(s) {
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
            if storable(k) {
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
