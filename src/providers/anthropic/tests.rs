//! Fixture tests for the Anthropic mapping, both ways.

use super::*;

fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.insert(*k, v.parse().unwrap());
    }
    h
}

#[test]
fn system_and_developer_messages_move_to_the_top_level_system() {
    let w = to_wire(
        "claude-haiku-4-5",
        &json!({"model": "summarize", "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": [{"type": "text", "text": "Use English."}]},
            {"role": "user", "content": "Hello"}]}),
    )
    .unwrap();
    assert_eq!(
        w,
        json!({"model": "claude-haiku-4-5", "max_tokens": 1024,
            "system": "Be brief.\n\nUse English.",
            "messages": [{"role": "user", "content": "Hello"}]})
    );
}

#[test]
fn max_tokens_stop_and_sampling_parameters_are_translated() {
    let cases = [
        (
            json!({"max_tokens": 50, "stop": "END"}),
            json!(50),
            json!(["END"]),
        ),
        (
            json!({"max_completion_tokens": 70, "max_tokens": 50, "stop": ["a", "b"]}),
            json!(70),
            json!(["a", "b"]),
        ),
        (json!({"stop": null}), json!(1024), Value::Null),
    ];
    for (extra, max_tokens, stops) in cases {
        let mut req = json!({"messages": [{"role": "user", "content": "x"}]});
        for (k, v) in extra.as_object().unwrap() {
            req[k] = v.clone();
        }
        let w = to_wire("m", &req).unwrap();
        assert_eq!(w["max_tokens"], max_tokens, "{req}");
        assert_eq!(
            w.get("stop_sequences").cloned().unwrap_or(Value::Null),
            stops
        );
    }
    let w = to_wire(
        "m",
        &json!({"messages": [{"role": "user", "content": "x"}], "temperature": 1.5,
            "top_p": 0.9, "user": "u-1", "n": 1, "response_format": {"type": "text"}}),
    )
    .unwrap();
    assert_eq!(w["temperature"], 1.0);
    assert_eq!(w["top_p"], 0.9);
    assert_eq!(w["metadata"], json!({"user_id": "u-1"}));
    assert!(w.get("n").is_none() && w.get("response_format").is_none());
}

#[test]
fn consecutive_messages_of_one_role_are_merged_into_blocks() {
    let w = to_wire(
        "m",
        &json!({"messages": [
            {"role": "user", "content": "one"},
            {"role": "user", "content": [{"type": "text", "text": "two"}, {"type": "text", "text": ""}]},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "four"}]}),
    )
    .unwrap();
    assert_eq!(
        w["messages"],
        json!([
            {"role": "user", "content": [{"type": "text", "text": "one"}, {"type": "text", "text": "two"}]},
            {"role": "assistant", "content": "three"},
            {"role": "user", "content": "four"}])
    );
}

#[test]
fn tools_images_and_tool_messages_are_refused_not_dropped() {
    let bad = [
        json!({"messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function"}]}),
        json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]}),
        json!({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}),
        json!({"prompt": "x"}),
    ];
    for req in bad {
        let e = to_wire("m", &req).unwrap_err();
        assert_eq!(
            (e.class, e.code.as_str()),
            (ErrorClass::Fatal, "invalid_request"),
            "{req}"
        );
    }
}

fn message(stop_reason: &str, content: Value) -> Value {
    json!({"id": "msg_01", "type": "message", "role": "assistant", "model": "claude-haiku-4-5",
        "content": content, "stop_reason": stop_reason, "stop_sequence": null,
        "usage": {"input_tokens": 100, "output_tokens": 20,
            "cache_creation_input_tokens": 30, "cache_read_input_tokens": 50}})
}

#[test]
fn a_message_becomes_a_chat_completion_with_usage_including_cache_tokens() {
    let m = message(
        "end_turn",
        json!([{"type": "text", "text": "Hi "}, {"type": "text", "text": "there"}]),
    );
    let c = from_wire(
        200,
        &headers(&[("request-id", "req_1")]),
        m.to_string().as_bytes(),
    )
    .unwrap();
    assert_eq!(c.body["object"], "chat.completion");
    assert_eq!(c.body["id"], "msg_01");
    assert_eq!(c.body["model"], "claude-haiku-4-5");
    assert_eq!(
        c.body["choices"][0]["message"],
        json!({"role": "assistant", "content": "Hi there", "refusal": null})
    );
    assert_eq!(c.body["choices"][0]["finish_reason"], "stop");
    assert_eq!(
        c.body["usage"],
        json!({"prompt_tokens": 180, "completion_tokens": 20, "total_tokens": 200,
            "prompt_tokens_details": {"cached_tokens": 50}})
    );
    assert_eq!(
        c.usage,
        Usage {
            input_tokens: 180,
            output_tokens: 20,
            cached_tokens: 50
        }
    );
    assert_eq!(c.request_id.as_deref(), Some("req_1"));
    assert!(!c.refusal);
}

#[test]
fn stop_reasons_map_to_finish_reasons() {
    for (stop, finish, refusal) in [
        ("end_turn", "stop", false),
        ("stop_sequence", "stop", false),
        ("max_tokens", "length", false),
        ("refusal", "content_filter", true),
        ("tool_use", "tool_calls", false),
    ] {
        let m = message(stop, json!([{"type": "text", "text": "t"}]));
        let c = from_wire(200, &HeaderMap::new(), m.to_string().as_bytes()).unwrap();
        assert_eq!(c.body["choices"][0]["finish_reason"], finish, "{stop}");
        assert_eq!(c.refusal, refusal, "{stop}");
        assert_eq!(c.request_id.as_deref(), Some("msg_01"));
    }
}

#[test]
fn a_refusal_carries_its_text_as_the_refusal_and_tool_use_becomes_tool_calls() {
    let m = message("refusal", json!([]));
    let c = from_wire(200, &HeaderMap::new(), m.to_string().as_bytes()).unwrap();
    assert_eq!(c.body["choices"][0]["message"]["content"], Value::Null);
    assert!(c.body["choices"][0]["message"]["refusal"].is_string());
    let m = message(
        "tool_use",
        json!([{"type": "tool_use", "id": "toolu_1", "name": "get", "input": {"q": 1}}]),
    );
    let c = from_wire(200, &HeaderMap::new(), m.to_string().as_bytes()).unwrap();
    assert_eq!(
        c.body["choices"][0]["message"]["tool_calls"],
        json!([{"id": "toolu_1", "type": "function",
            "function": {"name": "get", "arguments": "{\"q\":1}"}}])
    );
}

#[test]
fn errors_are_classified_and_rate_limits_carry_retry_after() {
    let body = br#"{"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}"#;
    let e = from_wire(
        429,
        &headers(&[("retry-after", "7"), ("request-id", "req_2")]),
        body,
    )
    .unwrap_err();
    assert_eq!(e.class, ErrorClass::RateLimited);
    assert_eq!(e.retry_after, Some(Duration::from_secs(7)));
    assert_eq!(
        (e.message.as_str(), e.code.as_str()),
        ("slow down", "http_429")
    );
    assert_eq!(e.request_id.as_deref(), Some("req_2"));
    let overloaded =
        br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
    assert_eq!(
        from_wire(529, &HeaderMap::new(), overloaded)
            .unwrap_err()
            .class,
        ErrorClass::Retryable
    );
    assert_eq!(
        from_wire(400, &HeaderMap::new(), b"{}").unwrap_err().class,
        ErrorClass::Fatal
    );
    let e = from_wire(200, &HeaderMap::new(), b"{not json").unwrap_err();
    assert_eq!(
        (e.class, e.code.as_str()),
        (ErrorClass::Retryable, "malformed_response")
    );
    assert_eq!(
        from_wire(200, &HeaderMap::new(), b"{}")
            .unwrap_err()
            .http_status,
        Some(200)
    );
}

#[test]
fn error_types_map_to_the_statuses_anthropic_uses() {
    assert_eq!(status_for_error_type("overloaded_error"), Some(529));
    assert_eq!(status_for_error_type("invalid_request_error"), Some(400));
    assert_eq!(status_for_error_type("something_new"), None);
}
