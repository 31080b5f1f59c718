//! Request schemas of the OpenAPI document that no handler type can derive: bodies the handlers
//! read as `serde_json::Value` (jobs, chat completions, dead-letter selections, budgets) or as
//! a struct shared by routes with different required fields (webhook endpoints). Each is written
//! here as JSON Schema, from the handler's own checks and constants, so a generated client or a
//! fuzzer's "valid" request is one the handler accepts. Rules JSON Schema cannot say (a model
//! the catalog knows, a tenant that exists, a URL outside private networks) stay in prose.

use serde_json::{Value, json};
use utoipa::openapi::extensions::Extensions;
use utoipa::openapi::{ObjectBuilder, RefOr, schema::Schema};

use crate::domain::job::JobStatus;
use crate::webhooks::EVENT_TYPES;

/// Text Postgres can store: everything but NUL (`crate::domain::text::check_str`).
pub(super) const STORABLE: &str = "^[^\\u0000]*$";

/// Largest value of the `i64` fields the handlers deserialize.
const I64_MAX: i64 = i64::MAX;

/// Carries a JSON Schema written with `json!` into utoipa's type unchanged. utoipa's `Schema`
/// has no `const`, `anyOf` beside `properties` or `type` lists, so the keywords ride in the
/// object's flattened extensions, which serialize as they are.
fn schema(v: Value) -> RefOr<Schema> {
    let mut object = ObjectBuilder::new().build();
    if let Value::Object(map) = v {
        object.extensions = Some(Extensions::from_iter(map));
    }
    RefOr::T(Schema::Object(object))
}

/// A unit type whose schema is the given JSON.
macro_rules! json_schema {
    ($(#[$m:meta])* $name:ident => $body:expr) => {
        $(#[$m])*
        pub struct $name;
        impl utoipa::PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                schema($body)
            }
        }
        impl utoipa::ToSchema for $name {}
    };
}

fn text() -> Value {
    json!({"type": "string", "pattern": STORABLE})
}

fn event_type() -> Value {
    json!({"type": "string", "enum": EVENT_TYPES})
}

fn webhook_url() -> Value {
    json!({"type": "string", "pattern": "^https?://[A-Za-z0-9.-]+(:[0-9]{1,5})?(/[^\\u0000]*)?$",
           "maxLength": 2048,
           "description": "An http(s) URL; private networks are refused unless `webhooks.allow_private_networks` allows them"})
}

fn positive_int() -> Value {
    json!({"type": "integer", "format": "int64", "minimum": 1, "maximum": I64_MAX})
}

/// A chat message as `crate::domain::job::check_messages` accepts it.
fn message() -> Value {
    json!({
        "type": "object",
        "required": ["role"],
        "properties": {
            "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool", "function"]},
            "content": {"oneOf": [text(), {"type": "array", "items": {"type": "object"}}]},
            "tool_calls": {"type": "array", "items": {"type": "object"}},
        },
        "anyOf": [{"required": ["content"]}, {"required": ["tool_calls"]}],
    })
}

/// The chat-completion request of a job's `body` (`stream` refused) or of
/// `POST /v1/chat/completions` (`stream` a boolean).
fn chat_request(streamable: bool) -> Value {
    let stream = if streamable {
        json!({"type": ["boolean", "null"]})
    } else {
        json!({"type": ["boolean", "null"], "enum": [false, null],
               "description": "Queued jobs do not stream"})
    };
    json!({
        "type": "object",
        "required": ["messages"],
        "properties": {
            "model": {"type": "string", "minLength": 1, "pattern": STORABLE,
                      "description": "A sluice alias or model name"},
            "messages": {"type": "array", "minItems": 1, "items": message()},
            "stream": stream,
            "max_tokens": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
            "max_completion_tokens": {"type": "integer", "minimum": 1, "maximum": u32::MAX},
            "n": {"type": "integer", "minimum": 1, "maximum": 128},
        },
    })
}

/// One job, as `crate::domain::job::JobInput` deserializes and validates it.
fn job() -> Value {
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["body"],
        "properties": {
            "custom_id": {"type": ["string", "null"], "minLength": 1, "maxLength": 512, "pattern": STORABLE},
            "method": {"type": ["string", "null"], "enum": ["POST", null]},
            "url": {"type": ["string", "null"], "enum": ["/v1/chat/completions", null]},
            "model": {"type": ["string", "null"], "minLength": 1, "pattern": STORABLE,
                      "description": "An alias or model name; overrides `body.model`, one of them is required"},
            "body": chat_request(false),
            "tags": {"type": "object", "maxProperties": 32,
                     "propertyNames": {"minLength": 1, "maxLength": 64, "pattern": STORABLE},
                     "additionalProperties": {"type": "string", "maxLength": 512, "pattern": STORABLE}},
            "route": {"type": ["string", "null"], "enum": ["auto", "cheap", "batch", null]},
            "deadline": {"type": ["string", "null"], "pattern": STORABLE,
                         "description": "An RFC 3339 time, or a duration from now such as `24h`"},
            "webhook_url": {"type": ["string", "null"], "format": "uri", "pattern": "^https?://"},
            "idempotency_key": {"type": ["string", "null"], "minLength": 1, "maxLength": 255, "pattern": STORABLE},
            "priority": {"type": ["integer", "null"], "minimum": 0, "maximum": 9},
            "max_attempts": {"type": ["integer", "null"], "minimum": 1, "maximum": 20},
            "cache_ttl": {"type": ["string", "null"], "pattern": STORABLE,
                          "description": "A duration such as `1h` (at most 365 days); `0s` opts out"},
        },
    })
}

json_schema!(
    /// `POST /v1/jobs`: one job, or `{"jobs": [...], "batch_id"?, "metadata"?}`.
    CreateJobBody => json!({"oneOf": [
        job(),
        {
            "type": "object",
            "additionalProperties": false,
            "required": ["jobs"],
            "properties": {
                "jobs": {"type": "array", "minItems": 1, "items": job(),
                         "description": "At most `limits.max_jobs_per_request` jobs"},
                "batch_id": {"type": ["string", "null"], "pattern": STORABLE,
                             "description": "An open batch of the tenant's to add the jobs to"},
                "metadata": {"description": "Kept with the new batch"},
            },
        },
    ]})
);

json_schema!(
    /// `POST /v1/chat/completions`: OpenAI's chat-completion request.
    ChatCompletionBody => chat_request(true)
);

json_schema!(
    /// The `status` query parameter of `GET /v1/jobs`.
    JobStatusName => json!({"type": "string", "enum": JobStatus::ALL.map(JobStatus::as_str)})
);

json_schema!(
    /// `order` of `GET /v1/files`.
    SortOrder => json!({"type": "string", "enum": ["asc", "desc"]})
);

/// Requeue's and purge's selection: `{"ids": [...]}` or `{"all": true}`, with `model` and `code`.
fn selection(by: (&str, Value)) -> Value {
    let (field, value) = by;
    json!({
        "type": "object",
        "additionalProperties": false,
        "required": [field],
        "properties": {field: value, "model": {"type": ["string", "null"], "pattern": STORABLE},
                       "code": {"type": ["string", "null"], "pattern": STORABLE}},
    })
}

json_schema!(
    /// `POST /v1/dead_letters/requeue` and `/purge`.
    DeadLetterSelection => json!({"oneOf": [
        selection(("ids", json!({"type": "array", "minItems": 1, "maxItems": 10_000, "items": text()}))),
        selection(("all", json!({"const": true}))),
    ]})
);

json_schema!(
    /// `POST /v1/webhook_endpoints` (and the admin route's).
    NewWebhookEndpoint => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["url", "event_types"],
        "properties": {
            "url": webhook_url(),
            "event_types": {"type": "array", "minItems": 1, "items": event_type()},
            "name": {"type": ["string", "null"], "pattern": STORABLE},
        },
    })
);

json_schema!(
    /// `POST /v1/webhook_endpoints/{id}` (and the admin route's); an empty body is `{}`.
    WebhookEndpointChange => json!({
        "type": "object",
        "additionalProperties": false,
        "properties": {
            "url": {"oneOf": [webhook_url(), {"type": "null"}]},
            "event_types": {"type": ["array", "null"], "minItems": 1, "items": event_type()},
            "name": {"type": ["string", "null"], "pattern": STORABLE},
        },
    })
);

json_schema!(
    /// `POST /v1/webhook_endpoints/{id}/test`.
    WebhookTest => json!({
        "type": "object",
        "additionalProperties": false,
        "required": ["event_type"],
        "properties": {"event_type": event_type()},
    })
);

/// A budget body naming one scope (`tenant`, `deployment` or `key`) with what that scope has.
fn budget_scope(scope: &str, limits: &[(&str, Value)], extra: Value) -> Value {
    let named = match scope {
        "tenant" => json!({"type": "string", "pattern": "^[a-z0-9][a-z0-9._-]{0,62}$"}),
        "deployment" => json!({"type": "string", "pattern": "^[^/\\u0000]+/[^\\u0000]+$",
                               "description": "`provider/model`"}),
        _ => json!({"type": "string", "pattern": "^(?!sk-sluice-)[^\\u0000]*$",
                    "description": "The key's id (`key_…`), not the key"}),
    };
    let mut properties = serde_json::Map::new();
    properties.insert(scope.into(), named);
    for (name, v) in limits {
        properties.insert((*name).into(), v.clone());
    }
    let mut v = json!({"type": "object", "additionalProperties": false, "required": [scope],
                       "properties": properties});
    if let (Some(obj), Value::Object(more)) = (v.as_object_mut(), extra) {
        obj.extend(more);
    }
    v
}

fn usd() -> Value {
    json!({"type": "number", "minimum": 0, "maximum": 1e15})
}

json_schema!(
    /// `POST /v1/admin/budgets`: exactly one scope, with the limits that scope has.
    SetBudget => {
        let tokens = [("tpm", positive_int()), ("rpm", positive_int())];
        let enqueued = ("batch_enqueued_tokens", positive_int());
        let tenant = [
            tokens[0].clone(), tokens[1].clone(), enqueued.clone(),
            ("daily_usd", usd()), ("monthly_usd", usd()),
            ("policy", json!({"type": "string", "enum": ["defer", "reject"]})),
            ("weight", json!({"type": "integer", "minimum": 1, "maximum": 100})),
        ];
        let deployment = [tokens[0].clone(), tokens[1].clone(), enqueued];
        json!({"oneOf": [
            budget_scope("tenant", &tenant, json!({})),
            budget_scope("deployment", &deployment, json!({})),
            budget_scope("key", &tokens, json!({})),
        ]})
    }
);

json_schema!(
    /// `POST /v1/admin/budgets/clear`: exactly one scope and the limits to lift.
    ClearBudget => {
        let limits = |names: &[&str]| ("limits", json!({"type": "array", "minItems": 1,
            "items": {"type": "string", "enum": names}}));
        let all = ["tpm", "rpm", "batch_enqueued_tokens", "daily_usd", "monthly_usd"];
        let required = json!({"required": ["limits"]});
        json!({"oneOf": [
            budget_scope("tenant", &[limits(&all)], required.clone()),
            budget_scope("deployment", &[limits(&all[..3])], required.clone()),
            budget_scope("key", &[limits(&all[..2])], required),
        ]})
    }
);

json_schema!(
    /// `POST /v1/batches`'s `completion_window`: 1h to 720h, in hours or days.
    CompletionWindow => json!({"type": "string",
        "pattern": "^(([1-9]|[1-9][0-9]|[1-6][0-9]{2}|7[01][0-9]|720)h|([1-9]|[12][0-9]|30)d)$",
        "description": "Hours or days between 1h and 720h, such as `24h` or `7d`"})
);

json_schema!(
    /// `POST /v1/admin/keys`'s `scopes`: one or more of the scopes a key can carry
    /// (`crate::auth::Scope`), or left out for all of them.
    KeyScopes => json!({"type": ["array", "null"], "minItems": 1,
        "items": {"type": "string", "enum": crate::auth::Scope::ALL.map(crate::auth::Scope::as_str)}})
);

json_schema!(
    /// `POST /v1/batches`'s `metadata`: at most 16 string pairs.
    BatchMetadata => json!({"type": ["object", "null"], "maxProperties": 16,
        "propertyNames": {"maxLength": 64, "pattern": STORABLE},
        "additionalProperties": {"type": "string", "maxLength": 512, "pattern": STORABLE},
        "description": "Up to 16 string pairs, returned as given"})
);

#[cfg(test)]
mod tests {
    use utoipa::PartialSchema;

    use super::*;

    #[test]
    fn a_written_schema_is_served_as_written() {
        let served = serde_json::to_value(WebhookTest::schema()).unwrap();
        assert_eq!(served["required"], json!(["event_type"]));
        assert_eq!(served["additionalProperties"], json!(false));
        let served = serde_json::to_value(DeadLetterSelection::schema()).unwrap();
        assert_eq!(
            served["oneOf"][1]["properties"]["all"],
            json!({"const": true})
        );
    }

    #[test]
    fn a_new_keys_scopes_are_the_scopes_a_key_can_carry() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(super::super::openapi::ApiDoc::openapi()).unwrap();
        let body = &doc["paths"]["/v1/admin/keys"]["post"]["requestBody"]["content"]["application/json"]
            ["schema"];
        let scopes = &body["properties"]["scopes"];
        assert_eq!(
            scopes["items"]["enum"],
            json!(["submit", "read", "admin"]),
            "{body}"
        );
        assert_eq!(scopes["minItems"], json!(1));
        let required = body["required"].as_array().cloned().unwrap_or_default();
        assert!(!required.contains(&json!("scopes")), "{body}");
    }

    /// A written schema that admits `null` is served as it is, not wrapped in a `oneOf` with
    /// another `null` branch (a `null` would then match both branches and be refused).
    #[test]
    fn an_optional_written_schema_admits_null_once() {
        use utoipa::OpenApi;
        let doc = serde_json::to_value(super::super::openapi::ApiDoc::openapi()).unwrap();
        let body = &doc["components"]["schemas"]["CreateBatch"];
        let metadata = &body["properties"]["metadata"];
        assert_eq!(metadata["type"], json!(["object", "null"]), "{body}");
        assert!(metadata.get("oneOf").is_none(), "{body}");
        let required = body["required"].as_array().cloned().unwrap_or_default();
        assert!(!required.contains(&json!("metadata")), "{body}");
    }
}
