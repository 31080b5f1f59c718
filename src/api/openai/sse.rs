//! A finished `chat.completion` replayed as OpenAI's server-sent events: `chat.completion.chunk`
//! objects (`data: {…}\n\n`), then a usage chunk when `stream_options.include_usage` is set,
//! then `data: [DONE]\n\n`. The provider adapters answer whole, so the answer is cut into
//! chunks after it arrives; the wire format is the one the SDKs parse.

use serde_json::{Value, json};

/// Characters of content per chunk.
const PIECE_CHARS: usize = 24;

/// The event lines of `completion`, in order.
pub fn events(completion: &Value, include_usage: bool) -> Vec<String> {
    let base = |choices: Value| {
        let mut c = json!({
            "id": completion.get("id").cloned().unwrap_or(Value::Null),
            "object": "chat.completion.chunk",
            "created": completion.get("created").cloned().unwrap_or(Value::Null),
            "model": completion.get("model").cloned().unwrap_or(Value::Null),
            "system_fingerprint": completion.get("system_fingerprint").cloned().unwrap_or(Value::Null),
            "choices": choices,
        });
        if include_usage {
            c["usage"] = Value::Null;
        }
        c
    };
    let mut out = Vec::new();
    let choices = completion
        .get("choices")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for (i, choice) in choices.iter().enumerate() {
        let index = choice.get("index").cloned().unwrap_or(json!(i));
        let message = choice.get("message").cloned().unwrap_or(Value::Null);
        let delta = |d: Value, finish: Value| json!([{"index": index, "delta": d, "logprobs": null, "finish_reason": finish}]);
        out.push(base(delta(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
        )));
        if let Some(text) = message.get("content").and_then(Value::as_str) {
            let chars: Vec<char> = text.chars().collect();
            for piece in chars.chunks(PIECE_CHARS) {
                let piece: String = piece.iter().collect();
                out.push(base(delta(json!({"content": piece}), Value::Null)));
            }
        }
        if let Some(refusal) = message.get("refusal").and_then(Value::as_str) {
            out.push(base(delta(json!({"refusal": refusal}), Value::Null)));
        }
        if let Some(calls) = message.get("tool_calls").and_then(Value::as_array) {
            let calls: Vec<Value> = calls
                .iter()
                .enumerate()
                .map(|(n, c)| {
                    let mut c = c.clone();
                    c["index"] = json!(n);
                    c
                })
                .collect();
            out.push(base(delta(json!({"tool_calls": calls}), Value::Null)));
        }
        let finish = choice
            .get("finish_reason")
            .cloned()
            .unwrap_or(json!("stop"));
        out.push(base(delta(json!({}), finish)));
    }
    if include_usage {
        let mut last = base(json!([]));
        last["usage"] = completion.get("usage").cloned().unwrap_or(Value::Null);
        out.push(last);
    }
    let mut lines: Vec<String> = out.iter().map(|c| format!("data: {c}\n\n")).collect();
    lines.push("data: [DONE]\n\n".into());
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    fn completion() -> Value {
        json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 7, "model": "m",
               "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello there, this is a longer answer."},
                            "finish_reason": "stop"}],
               "usage": {"prompt_tokens": 3, "completion_tokens": 5, "total_tokens": 8}})
    }

    fn parse(lines: &[String]) -> Vec<Value> {
        lines
            .iter()
            .take_while(|l| *l != "data: [DONE]\n\n")
            .map(|l| {
                assert!(l.starts_with("data: ") && l.ends_with("\n\n"), "{l:?}");
                serde_json::from_str(&l[6..l.len() - 2]).unwrap()
            })
            .collect()
    }

    #[test]
    fn chunks_rebuild_the_content_and_end_with_done() {
        let lines = events(&completion(), false);
        assert_eq!(lines.last().unwrap(), "data: [DONE]\n\n");
        let chunks = parse(&lines);
        assert_eq!(chunks.len(), lines.len() - 1);
        let text: String = chunks
            .iter()
            .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
            .collect();
        assert_eq!(text, "Hello there, this is a longer answer.");
        assert!(
            chunks
                .iter()
                .all(|c| c["object"] == "chat.completion.chunk" && c["id"] == "chatcmpl-1")
        );
        assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(
            chunks.last().unwrap()["choices"][0]["finish_reason"],
            "stop"
        );
        assert!(chunks.iter().all(|c| c.get("usage").is_none()));
    }

    #[test]
    fn include_usage_adds_a_final_chunk_with_no_choices_and_the_usage() {
        let lines = events(&completion(), true);
        let chunks = parse(&lines);
        let last = chunks.last().unwrap();
        assert_eq!(last["choices"], json!([]));
        assert_eq!(last["usage"]["total_tokens"], 8);
        assert!(
            chunks[..chunks.len() - 1]
                .iter()
                .all(|c| c["usage"].is_null())
        );
    }
}
