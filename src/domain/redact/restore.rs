//! Putting masked values back into an answer: each placeholder that the masking of the request
//! handed out (`[CARD_1]`) becomes its value again; anything else in brackets, such as a
//! placeholder the model made up, is left as it is. One pass over the text, so a value that
//! happens to look like a placeholder is never replaced twice.

use std::collections::HashMap;

use serde_json::Value;

use super::Masking;

impl Masking {
    /// Whether any value was masked (nothing to put back otherwise).
    pub fn is_empty(&self) -> bool {
        self.by_value.is_empty()
    }

    /// `text` (an answer) with each placeholder handed out here put back to its value.
    pub fn restore(&self, text: &str) -> String {
        self.restore_with(text, |v| v.to_string())
    }

    /// `text` with placeholders put back, each value passed through `shape` first (JSON
    /// escaping inside tool-call arguments).
    fn restore_with(&self, text: &str, shape: impl Fn(&str) -> String) -> String {
        if self.by_value.is_empty() || !text.contains('[') {
            return text.to_string();
        }
        let back: HashMap<&str, &str> = self
            .by_value
            .iter()
            .map(|(value, placeholder)| (placeholder.as_str(), value.as_str()))
            .collect();
        // A `]` further than the longest placeholder cannot close one: looking only that far
        // keeps an answer full of unclosed `[` linear instead of quadratic.
        let longest = back.keys().map(|p| p.len()).max().unwrap_or(0);
        let mut out = String::with_capacity(text.len());
        let mut rest = text;
        while let Some(open) = rest.find('[') {
            out.push_str(&rest[..open]);
            let tail = &rest[open..];
            // `]` is ASCII, so its byte offset is a char boundary.
            let known = tail.as_bytes()[..tail.len().min(longest)]
                .iter()
                .position(|b| *b == b']')
                .map(|close| &tail[..=close])
                .and_then(|p| back.get(p).map(|v| (p.len(), *v)));
            match known {
                Some((len, value)) => {
                    out.push_str(&shape(value));
                    rest = &tail[len..];
                }
                None => {
                    out.push('[');
                    rest = &tail[1..];
                }
            }
        }
        out.push_str(rest);
        out
    }

    /// Puts the values back into a `chat.completion` answer, in place: each choice's message
    /// content (a string, or the `text` of its parts) and its tool calls' JSON arguments (the
    /// value JSON-escaped, as it sits inside a JSON string there).
    pub fn restore_answer(&self, answer: &mut Value) {
        if self.is_empty() {
            return;
        }
        let Some(Value::Array(choices)) = answer.get_mut("choices") else {
            return;
        };
        let json_escaped = |v: &str| {
            let quoted = serde_json::to_string(v).unwrap_or_default();
            quoted
                .strip_prefix('"')
                .and_then(|q| q.strip_suffix('"'))
                .unwrap_or(v)
                .to_string()
        };
        for choice in choices {
            let Some(message) = choice.get_mut("message") else {
                continue;
            };
            match message.get_mut("content") {
                Some(Value::String(s)) => *s = self.restore(s),
                Some(Value::Array(parts)) => {
                    for part in parts {
                        if let Some(Value::String(s)) = part.get_mut("text") {
                            *s = self.restore(s);
                        }
                    }
                }
                _ => {}
            }
            if let Some(Value::Array(calls)) = message.get_mut("tool_calls") {
                for call in calls {
                    if let Some(Value::String(args)) = call
                        .get_mut("function")
                        .and_then(|f| f.get_mut("arguments"))
                    {
                        *args = self.restore_with(args, json_escaped);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::super::Redactor;
    use super::*;

    fn masked(text: &str) -> (String, Masking) {
        let r = Redactor::new(&[], &[]).unwrap();
        let mut m = Masking::default();
        let out = r.mask(text, &mut m);
        (out, m)
    }

    #[test]
    fn placeholders_go_back_and_unknown_ones_stay() {
        let (out, m) = masked("card 4111 1111 1111 1111, mail a@b.io and c@d.io");
        assert_eq!(out, "card [CARD_1], mail [EMAIL_1] and [EMAIL_2]");
        let cases = [
            ("[EMAIL_2] then [CARD_1]", "c@d.io then 4111 1111 1111 1111"),
            // Invented by the model: not in the mapping, left as is.
            ("[CARD_2] and [PHONE_1]", "[CARD_2] and [PHONE_1]"),
            ("[[EMAIL_1]] [x] [", "[a@b.io] [x] ["),
            ("no brackets", "no brackets"),
            ("[EMAIL_1", "[EMAIL_1"),
        ];
        for (answer, want) in cases {
            assert_eq!(m.restore(answer), want, "{answer}");
        }
    }

    #[test]
    fn a_value_that_looks_like_a_placeholder_is_not_replaced_twice() {
        let r = Redactor::new(&[], &[("tag".into(), r"\[EMAIL_1\]x".into())]).unwrap();
        let mut m = Masking::default();
        let out = r.mask("a@b.io and [EMAIL_1]x", &mut m);
        assert_eq!(out, "[EMAIL_1] and [TAG_1]");
        assert_eq!(m.restore(&out), "a@b.io and [EMAIL_1]x");
    }

    #[test]
    fn an_answer_gets_its_content_parts_and_tool_arguments_back() {
        let r = Redactor::new(&[], &[("quoted".into(), r#"Q"\d+"#.into())]).unwrap();
        let mut m = Masking::default();
        r.mask(
            "write to a@b.io about 4111 1111 1111 1111 ref Q\"42",
            &mut m,
        );
        let mut answer = json!({"choices": [
            {"message": {"content": "Sent to [EMAIL_1].", "tool_calls": [
                {"function": {"name": "send", "arguments": "{\"to\":\"[EMAIL_1]\",\"card\":\"[CARD_1]\",\"ref\":\"[QUOTED_1]\"}"}}]}},
            {"message": {"content": [{"type": "text", "text": "[CARD_1] [CARD_9]"}]}},
            {"message": {"content": null, "refusal": "no"}}
        ]});
        m.restore_answer(&mut answer);
        assert_eq!(
            answer["choices"][0]["message"]["content"],
            "Sent to a@b.io."
        );
        let args: Value = serde_json::from_str(
            answer["choices"][0]["message"]["tool_calls"][0]["function"]["arguments"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            args,
            json!({"to": "a@b.io", "card": "4111 1111 1111 1111", "ref": "Q\"42"}),
            "still valid JSON"
        );
        assert_eq!(
            answer["choices"][1]["message"]["content"][0]["text"],
            "4111 1111 1111 1111 [CARD_9]"
        );
        assert_eq!(answer["choices"][2]["message"]["content"], Value::Null);
    }

    #[test]
    fn the_same_request_always_masks_to_the_same_placeholders() {
        let r = Redactor::new(&[], &[]).unwrap();
        let request = json!({"messages": [
            {"role": "system", "content": "agent mail x@y.io"},
            {"role": "user", "content": [{"type": "text", "text": "card 4111 1111 1111 1111 and z@y.io"}]}
        ]});
        let (mut a, mut b) = (request.clone(), request.clone());
        let (ma, mb) = (r.mask_request(&mut a), r.mask_request(&mut b));
        assert_eq!(a, b);
        assert_eq!(ma.restore("[EMAIL_2]"), "z@y.io");
        assert_eq!(
            mb.restore("[EMAIL_2] [CARD_1]"),
            "z@y.io 4111 1111 1111 1111"
        );
    }

    #[test]
    fn an_answer_of_unclosed_brackets_is_restored_in_linear_time() {
        let (_, m) = masked("a@b.io");
        let answer = format!("{}[EMAIL_1]", "[".repeat(2_000_000));
        let started = std::time::Instant::now();
        let out = m.restore(&answer);
        assert_eq!(out, format!("{}a@b.io", "[".repeat(2_000_000)));
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
    }
}
