//! The response cache key: an exact match on the normalized request. Two requests share a key
//! when they ask the same model (alias) for the same body; JSON object keys are compared in
//! sorted order, so field order and whitespace do not matter. Streaming flags and the caller's
//! `user` tag do not change an answer and are left out.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// SHA-256 of the normalized (model, request).
pub fn key(model: &str, request: &Value) -> Vec<u8> {
    let mut body = request.clone();
    if let Some(obj) = body.as_object_mut() {
        for k in ["stream", "stream_options", "user", "metadata", "model"] {
            obj.remove(k);
        }
    }
    // serde_json's map keeps keys sorted, so this serialization is canonical.
    let text = serde_json::to_string(&body).unwrap_or_default();
    let mut h = Sha256::new();
    h.update(model.as_bytes());
    h.update([0]);
    h.update(text.as_bytes());
    h.finalize().to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn field_order_and_the_user_tag_do_not_change_the_key() {
        let a = json!({"messages": [{"role": "user", "content": "hi"}], "temperature": 0, "user": "u1"});
        let b: Value = serde_json::from_str(
            r#"{"temperature":0,"messages":[{"content":"hi","role":"user"}],"user":"u2"}"#,
        )
        .unwrap();
        assert_eq!(key("summarize", &a), key("summarize", &b));
    }

    #[test]
    fn another_model_or_prompt_is_another_key() {
        let a = json!({"messages": [{"role": "user", "content": "hi"}]});
        let b = json!({"messages": [{"role": "user", "content": "hi!"}]});
        assert_ne!(key("summarize", &a), key("classify", &a));
        assert_ne!(key("summarize", &a), key("summarize", &b));
    }
}
