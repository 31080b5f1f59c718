//! Prompt token estimates for budgeting. OpenAI models are counted with their own tokenizer
//! (tiktoken-rs) plus the chat format's per-message overhead (3 tokens a message, 1 for a
//! `name`, 3 to prime the reply), which matches OpenAI's reported `prompt_tokens` for text.
//! Other models get a conservative estimate: one token per 3 characters (most tokenizers
//! average about 4 characters a token on English text), plus the same overhead.

use serde_json::Value;
use tiktoken_rs::CoreBPE;

/// Tokens added per message by the chat format.
const PER_MESSAGE: i64 = 3;
/// Tokens that prime the assistant's reply.
const REPLY_PRIMING: i64 = 3;
/// Flat charge for an image part (the low-detail price); text is what budgets mostly see.
const IMAGE_PART: i64 = 85;

fn bpe(model: &str) -> Option<&'static CoreBPE> {
    let model = model.rsplit('/').next().unwrap_or(model);
    tiktoken_rs::tokenizer::get_tokenizer(model)
        .and_then(|t| tiktoken_rs::bpe_for_tokenizer(t).ok())
}

/// Estimated prompt tokens of a chat request for `model`.
pub fn estimate_prompt_tokens(model: &str, request: &Value) -> i64 {
    let count: Box<dyn Fn(&str) -> i64> = match bpe(model) {
        Some(b) => Box::new(move |s: &str| b.encode_ordinary(s).len() as i64),
        None => Box::new(|s: &str| (s.chars().count() as u64).div_ceil(3) as i64),
    };
    let mut total = REPLY_PRIMING;
    for m in request
        .get("messages")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        total += PER_MESSAGE;
        if let Some(role) = m.get("role").and_then(Value::as_str) {
            total += count(role);
        }
        if let Some(name) = m.get("name").and_then(Value::as_str) {
            total += 1 + count(name);
        }
        match m.get("content") {
            Some(Value::String(s)) => total += count(s),
            Some(Value::Array(parts)) => {
                for p in parts {
                    match p.get("text").and_then(Value::as_str) {
                        Some(t) => total += count(t),
                        None => total += IMAGE_PART,
                    }
                }
            }
            _ => {}
        }
        if let Some(calls) = m.get("tool_calls") {
            total += count(&calls.to_string());
        }
    }
    if let Some(tools) = request.get("tools") {
        total += count(&tools.to_string());
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn openai_models_use_their_tokenizer_and_the_chat_overhead() {
        let req = json!({"messages": [{"role": "user", "content": "hello world"}]});
        // "hello world" = 2 tokens, "user" = 1, + 3 per message + 3 priming = 9.
        assert_eq!(estimate_prompt_tokens("gpt-4o-mini", &req), 9);
        assert_eq!(estimate_prompt_tokens("openai/gpt-4o-mini", &req), 9);
    }

    #[test]
    fn other_models_get_a_conservative_estimate() {
        let text = "a".repeat(300);
        let req = json!({"messages": [{"role": "user", "content": text}]});
        let est = estimate_prompt_tokens("claude-haiku-4-5", &req);
        assert!(est >= 100 + 3 + 3, "{est}");
        assert!(est > estimate_prompt_tokens("gpt-4o", &req));
    }
}
