//! Structured output: the JSON Schema a request asks its answer to follow (OpenAI's
//! `response_format: {"type": "json_schema", "json_schema": {"schema": {...}}}`), whether an
//! answer follows it, and the repair message sent when it did not.
//!
//! The policy (SPEC §4): an answer that misses the schema is retried once with the validation
//! error, then the job fails closed with `schema_validation_failed`; an answer that breaks the
//! schema is never returned. Schemas are compiled without network or file resolvers, so a `$ref`
//! to a URL is refused at submission rather than fetched.

use serde_json::{Value, json};

/// The error code of a job whose answers missed its JSON schema.
pub const FAILED_CODE: &str = "schema_validation_failed";

/// Longest validation note sent back to the model (a schema can yield many errors).
const MAX_NOTE_CHARS: usize = 1000;

/// Why a schema or an answer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchemaError {
    #[error("is not a usable JSON Schema: {0}")]
    BadSchema(String),
    #[error("the answer has no text content")]
    NoContent,
    #[error("the answer is not JSON: {0}")]
    NotJson(String),
    #[error("{0}")]
    Mismatch(String),
}

/// The schema `request` asks the answer to follow, if any.
pub fn requested(request: &Value) -> Option<&Value> {
    let format = request.get("response_format")?;
    if format.get("type").and_then(Value::as_str) != Some("json_schema") {
        return None;
    }
    format.pointer("/json_schema/schema")
}

/// Checks that `schema` compiles, so a bad one is refused before anything is spent.
pub fn check_schema(schema: &Value) -> Result<(), SchemaError> {
    jsonschema::validator_for(schema)
        .map(|_| ())
        .map_err(|e| SchemaError::BadSchema(e.to_string()))
}

/// Checks an answer (a `chat.completion` body) against `schema`: the content of its first
/// choice must parse as JSON and validate.
pub fn check_answer(schema: &Value, response: &Value) -> Result<(), SchemaError> {
    let content = response
        .pointer("/choices/0/message/content")
        .and_then(Value::as_str)
        .ok_or(SchemaError::NoContent)?;
    let value: Value =
        serde_json::from_str(content).map_err(|e| SchemaError::NotJson(e.to_string()))?;
    let validator =
        jsonschema::validator_for(schema).map_err(|e| SchemaError::BadSchema(e.to_string()))?;
    let problems: Vec<String> = validator
        .iter_errors(&value)
        .take(5)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("at {at}: {e}")
            }
        })
        .collect();
    if problems.is_empty() {
        Ok(())
    } else {
        Err(SchemaError::Mismatch(problems.join("; ")))
    }
}

/// The note stored for the repair attempt: the validation error, bounded in length.
pub fn repair_note(error: &SchemaError) -> String {
    let text = error.to_string();
    match text.char_indices().nth(MAX_NOTE_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `request` with the repair message appended: the model is told what was wrong and asked again.
pub fn with_repair(request: &Value, note: &str) -> Value {
    let mut request = request.clone();
    let message = json!({
        "role": "user",
        "content": format!(
            "Your previous answer did not match the required JSON schema: {note}. \
             Answer again with JSON that matches it."
        ),
    });
    if let Some(messages) = request.get_mut("messages").and_then(Value::as_array_mut) {
        messages.push(message);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schema() -> Value {
        json!({"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]})
    }

    fn answer(content: Value) -> Value {
        json!({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})
    }

    #[test]
    fn only_a_json_schema_response_format_asks_for_validation() {
        let cases = [
            (json!({"messages": []}), false),
            (json!({"response_format": {"type": "json_object"}}), false),
            (json!({"response_format": {"type": "text"}}), false),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}),
                false,
            ),
            (
                json!({"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema()}}}),
                true,
            ),
        ];
        for (request, expected) in cases {
            assert_eq!(requested(&request).is_some(), expected, "{request}");
        }
    }

    #[test]
    fn answers_are_checked_against_the_schema() {
        type Expect = Option<fn(&SchemaError) -> bool>;
        let cases: [(Value, Expect); 6] = [
            (json!("{\"a\": 1}"), None),
            (json!("{\"a\": 1, \"b\": [true]}"), None),
            (
                json!("{\"a\": \"one\"}"),
                Some(
                    |e| matches!(e, SchemaError::Mismatch(m) if m.contains("/a") && m.contains("integer")),
                ),
            ),
            (
                json!("{}"),
                Some(|e| matches!(e, SchemaError::Mismatch(m) if m.contains("\"a\""))),
            ),
            (
                json!("Sure! Here is the JSON: {"),
                Some(|e| matches!(e, SchemaError::NotJson(_))),
            ),
            (Value::Null, Some(|e| *e == SchemaError::NoContent)),
        ];
        for (content, expected) in cases {
            let got = check_answer(&schema(), &answer(content.clone()));
            match expected {
                None => assert_eq!(got, Ok(()), "{content}"),
                Some(is) => assert!(got.as_ref().is_err_and(is), "{content}: {got:?}"),
            }
        }
    }

    #[test]
    fn a_broken_schema_is_refused() {
        assert!(check_schema(&schema()).is_ok());
        assert!(matches!(
            check_schema(&json!({"type": "no-such-type"})),
            Err(SchemaError::BadSchema(_))
        ));
        assert!(matches!(
            check_schema(&json!({"$ref": "https://example.com/schema.json"})),
            Err(SchemaError::BadSchema(_))
        ));
    }

    #[test]
    fn the_repair_appends_one_user_message_naming_the_error() {
        let request =
            json!({"messages": [{"role": "user", "content": "Give me a"}], "max_tokens": 9});
        let repaired = with_repair(&request, "at /a: \"one\" is not of type \"integer\"");
        let messages = repaired["messages"].as_array().unwrap();
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[1]["role"], "user");
        let text = messages[1]["content"].as_str().unwrap();
        assert!(text.contains("did not match the required JSON schema"));
        assert!(text.contains("is not of type"));
        assert_eq!(repaired["max_tokens"], 9);
    }

    #[test]
    fn repair_notes_are_bounded() {
        let note = repair_note(&SchemaError::Mismatch("x".repeat(5000)));
        assert!(note.chars().count() <= MAX_NOTE_CHARS + 1);
    }
}
