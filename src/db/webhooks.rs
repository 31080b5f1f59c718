//! Webhook SQL: tenant endpoints (every change recorded in the audit log in its own
//! transaction), the per-tenant secret for jobs' `webhook_url`, leasing due messages and
//! recording each attempt. Events and messages are written by the triggers of
//! migration `20261129040000_webhooks.sql` (in the transaction of the job change that causes
//! them); `emit` writes the few that have no job change behind them (tests, notices).

use chrono::{DateTime, Utc};
use serde_json::{Value, json};
use sqlx::{PgPool, Postgres, Transaction};

use super::{DbError, audit};

/// A tenant's webhook endpoint.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Endpoint {
    pub id: String,
    pub tenant: String,
    pub name: String,
    pub url: String,
    pub event_types: Vec<String>,
    /// `enabled` or `disabled`.
    pub status: String,
    pub disabled_reason: Option<String>,
    pub secret: String,
    pub previous_secret: Option<String>,
    pub previous_secret_until: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

const ENDPOINT_COLUMNS: &str =
    "id, tenant, name, url, event_types, status, disabled_reason, secret,
    previous_secret, previous_secret_until, created_at, updated_at";

/// An endpoint as the audit log keeps it: never its secrets, only their hints.
fn audit_view(e: &Endpoint) -> Value {
    json!({
        "tenant": e.tenant,
        "name": e.name,
        "url": e.url,
        "event_types": e.event_types,
        "status": e.status,
        "signing_secret_hint": crate::webhooks::sign::hint(&e.secret),
        "previous_secret_until": e.previous_secret_until,
    })
}

/// Records a change of an endpoint (`webhook_endpoint.<verb>`) on `tx`.
async fn audit(
    tx: &mut Transaction<'_, Postgres>,
    actor: &str,
    verb: &str,
    id: &str,
    before: Option<&Endpoint>,
    after: Option<&Endpoint>,
) -> Result<(), DbError> {
    audit::record(
        tx,
        &audit::Entry {
            actor,
            action: &format!("webhook_endpoint.{verb}"),
            target: id,
            before: before.map(audit_view),
            after: after.map(audit_view),
        },
    )
    .await
}

/// One of `tenant`'s endpoints, locked until the end of `tx`.
async fn lock_endpoint(
    tx: &mut Transaction<'_, Postgres>,
    tenant: &str,
    id: &str,
) -> Result<Option<Endpoint>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant = $2 FOR UPDATE"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(&mut **tx)
    .await
}

/// Creates an endpoint; `actor` is recorded in the audit log.
pub async fn create_endpoint(
    pool: &PgPool,
    actor: &str,
    tenant: &str,
    name: &str,
    url: &str,
    event_types: &[String],
    secret: &str,
) -> Result<Endpoint, DbError> {
    let mut tx = pool.begin().await?;
    let e: Endpoint = sqlx::query_as(&format!(
        "INSERT INTO webhook_endpoints (id, tenant, name, url, event_types, secret)
         VALUES ($1, $2, $3, $4, $5, $6) RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(crate::ids::new_id("we"))
    .bind(tenant)
    .bind(name)
    .bind(url)
    .bind(event_types)
    .bind(secret)
    .fetch_one(&mut *tx)
    .await?;
    audit(&mut tx, actor, "create", &e.id, None, Some(&e)).await?;
    tx.commit().await?;
    Ok(e)
}

/// A page of `tenant`'s endpoints, newest first, after the id `after`.
pub async fn list_endpoints(
    pool: &PgPool,
    tenant: &str,
    after: Option<&str>,
    limit: i64,
) -> Result<Vec<Endpoint>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints
         WHERE tenant = $1 AND ($2::text IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
    ))
    .bind(tenant)
    .bind(after)
    .bind(limit)
    .fetch_all(pool)
    .await
}

/// One of `tenant`'s endpoints.
pub async fn get_endpoint(
    pool: &PgPool,
    tenant: &str,
    id: &str,
) -> Result<Option<Endpoint>, DbError> {
    sqlx::query_as(&format!(
        "SELECT {ENDPOINT_COLUMNS} FROM webhook_endpoints WHERE id = $1 AND tenant = $2"
    ))
    .bind(id)
    .bind(tenant)
    .fetch_optional(pool)
    .await
}

/// What to change on an endpoint; `None` keeps a field.
#[derive(Debug, Clone, Copy, Default)]
pub struct EndpointChange<'a> {
    pub name: Option<&'a str>,
    pub url: Option<&'a str>,
    pub event_types: Option<&'a [String]>,
    /// `Some(false)` disables the endpoint (reason `disabled by the operator`), `Some(true)`
    /// enables it again and forgets its failures.
    pub enabled: Option<bool>,
}

/// Changes the given fields. Re-enables a disabled endpoint whose URL changes (the address
/// that failed is gone). `actor` is recorded in the audit log.
pub async fn update_endpoint(
    pool: &PgPool,
    actor: &str,
    tenant: &str,
    id: &str,
    change: &EndpointChange<'_>,
) -> Result<Option<Endpoint>, DbError> {
    let (name, url, event_types) = (change.name, change.url, change.event_types);
    let mut tx = pool.begin().await?;
    let Some(before) = lock_endpoint(&mut tx, tenant, id).await? else {
        return Ok(None);
    };
    let after: Endpoint = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET name = COALESCE($3, name), url = COALESCE($4, url),
             event_types = COALESCE($5, event_types),
             status = CASE WHEN $6 = false THEN 'disabled'
                 WHEN $6 OR ($4 IS NOT NULL AND $4 <> url) THEN 'enabled' ELSE status END,
             disabled_reason = CASE WHEN $6 = false THEN 'disabled by the operator'
                 WHEN $6 OR ($4 IS NOT NULL AND $4 <> url) THEN NULL ELSE disabled_reason END,
             failing_since = CASE WHEN $6 OR ($4 IS NOT NULL AND $4 <> url) THEN NULL ELSE failing_since END,
             updated_at = CASE WHEN ($3 IS NOT NULL AND $3 <> name) OR ($4 IS NOT NULL AND $4 <> url)
                 OR ($5::text[] IS NOT NULL AND $5 <> event_types)
                 OR ($6 IS NOT NULL AND ($6 <> (status = 'enabled'))) THEN now() ELSE updated_at END
         WHERE id = $1 AND tenant = $2 RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(name)
    .bind(url)
    .bind(event_types)
    .bind(change.enabled)
    .fetch_one(&mut *tx)
    .await?;
    audit(&mut tx, actor, "update", id, Some(&before), Some(&after)).await?;
    tx.commit().await?;
    Ok(Some(after))
}

/// Deletes an endpoint; its pending messages fail. Returns whether it existed. `actor` is
/// recorded in the audit log.
pub async fn delete_endpoint(
    pool: &PgPool,
    actor: &str,
    tenant: &str,
    id: &str,
) -> Result<bool, DbError> {
    let mut tx = pool.begin().await?;
    let Some(before) = lock_endpoint(&mut tx, tenant, id).await? else {
        return Ok(false);
    };
    sqlx::query(
        "WITH gone AS (DELETE FROM webhook_endpoints WHERE id = $1 AND tenant = $2 RETURNING id)
         UPDATE webhook_messages m SET status = 'failed', finished_at = now(),
             last_error = 'endpoint deleted', lease_owner = NULL, lease_until = NULL
         FROM gone WHERE m.endpoint_id = gone.id AND m.status = 'pending'",
    )
    .bind(id)
    .bind(tenant)
    .execute(&mut *tx)
    .await?;
    audit(&mut tx, actor, "delete", id, Some(&before), None).await?;
    tx.commit().await?;
    Ok(true)
}

/// Replaces an endpoint's secret; with `grace`, the old one keeps signing (as a second
/// signature) until then. `actor` is recorded in the audit log (with secret hints only).
pub async fn rotate_endpoint_secret(
    pool: &PgPool,
    actor: &str,
    tenant: &str,
    id: &str,
    secret: &str,
    grace_until: Option<DateTime<Utc>>,
) -> Result<Option<Endpoint>, DbError> {
    let mut tx = pool.begin().await?;
    let Some(before) = lock_endpoint(&mut tx, tenant, id).await? else {
        return Ok(None);
    };
    let after: Endpoint = sqlx::query_as(&format!(
        "UPDATE webhook_endpoints SET
             previous_secret = CASE WHEN $4::timestamptz IS NULL THEN NULL ELSE secret END,
             previous_secret_until = $4, secret = $3, updated_at = now()
         WHERE id = $1 AND tenant = $2 RETURNING {ENDPOINT_COLUMNS}"
    ))
    .bind(id)
    .bind(tenant)
    .bind(secret)
    .bind(grace_until)
    .fetch_one(&mut *tx)
    .await?;
    audit(
        &mut tx,
        actor,
        "rotate_secret",
        id,
        Some(&before),
        Some(&after),
    )
    .await?;
    tx.commit().await?;
    Ok(Some(after))
}

/// A tenant's secret for jobs' own `webhook_url`: the current one, created from `candidate`
/// if the tenant has none yet, and the previous one while its grace lasts.
pub async fn tenant_secret(
    pool: &PgPool,
    tenant: &str,
    candidate: &str,
) -> Result<(String, Option<String>), DbError> {
    sqlx::query_as(
        "WITH ins AS (INSERT INTO webhook_tenant_secrets (tenant, secret) VALUES ($1, $2)
                      ON CONFLICT (tenant) DO NOTHING RETURNING secret, NULL::text AS previous)
         SELECT secret, previous FROM ins
         UNION ALL
         SELECT secret, CASE WHEN previous_secret_until > now() THEN previous_secret END
         FROM webhook_tenant_secrets WHERE tenant = $1
         LIMIT 1",
    )
    .bind(tenant)
    .bind(candidate)
    .fetch_one(pool)
    .await
}

/// Replaces a tenant's `webhook_url` secret (keeping the old one until `grace_until`), and
/// records `webhook_secret.rotate` for `actor` with the secrets' hints only.
pub async fn rotate_tenant_secret(
    pool: &PgPool,
    actor: &str,
    tenant: &str,
    secret: &str,
    grace_until: Option<DateTime<Utc>>,
) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    let before: Option<String> = sqlx::query_scalar(
        "SELECT secret FROM webhook_tenant_secrets WHERE tenant = $1 FOR UPDATE",
    )
    .bind(tenant)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_tenant_secrets (tenant, secret) VALUES ($1, $2)
         ON CONFLICT (tenant) DO UPDATE SET
             previous_secret = CASE WHEN $3::timestamptz IS NULL THEN NULL ELSE webhook_tenant_secrets.secret END,
             previous_secret_until = $3, secret = $2",
    )
    .bind(tenant)
    .bind(secret)
    .bind(grace_until)
    .execute(&mut *tx)
    .await?;
    let hint = crate::webhooks::sign::hint;
    audit::record(
        &mut tx,
        &audit::Entry {
            actor,
            action: "webhook_secret.rotate",
            target: &format!("tenant:{tenant}"),
            before: before.map(|s| json!({"signing_secret_hint": hint(&s)})),
            after: Some(
                json!({"signing_secret_hint": hint(secret), "previous_secret_until": grace_until}),
            ),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Writes an event for `tenant` with `data`, and one message per endpoint in `endpoints`
/// (tests of one endpoint, notices to a tenant's other endpoints). Returns the event id.
/// With `lease_to`, the messages are written already leased to that owner (first attempt
/// counted), for a caller that delivers them at once (`test`).
pub async fn emit(
    pool: &PgPool,
    tenant: &str,
    event_type: &str,
    data: &Value,
    endpoints: &[String],
    lease_to: Option<(&str, f64)>,
) -> Result<String, DbError> {
    let id = crate::ids::new_id("evt");
    let payload = serde_json::json!({
        "id": id, "object": "event", "type": event_type,
        "created_at": Utc::now().timestamp(), "data": data,
    });
    let mut tx = pool.begin().await?;
    sqlx::query("INSERT INTO webhook_events (id, tenant, type, payload) VALUES ($1, $2, $3, $4)")
        .bind(&id)
        .bind(tenant)
        .bind(event_type)
        .bind(&payload)
        .execute(&mut *tx)
        .await?;
    sqlx::query(
        "INSERT INTO webhook_messages (id, event_id, tenant, endpoint_id, lease_owner, lease_until, attempts)
         SELECT 'msg_' || sluice_uuid7_hex(), $1, $2, e, $4,
             CASE WHEN $4 IS NOT NULL THEN now() + make_interval(secs => $5) END,
             CASE WHEN $4 IS NOT NULL THEN 1 ELSE 0 END
         FROM unnest($3::text[]) AS e",
    )
    .bind(&id)
    .bind(tenant)
    .bind(endpoints)
    .bind(lease_to.map(|l| l.0))
    .bind(lease_to.map(|l| l.1).unwrap_or(0.0))
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// A leased message with everything needed to sign and send it.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Leased {
    pub id: String,
    pub event_id: String,
    pub tenant: String,
    pub endpoint_id: Option<String>,
    /// The endpoint's current URL, or the job's `webhook_url`; `None`: the endpoint is gone.
    pub url: Option<String>,
    /// Attempts made, this one included.
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    /// The exact body (the event's JSON), the same on every attempt.
    pub body: String,
    /// The endpoint's status (`None` for a job's own URL).
    pub endpoint_status: Option<String>,
    /// The endpoint's signing secret (`None` for a job's own URL: the tenant secret signs).
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
}

/// The messages of `event_id` leased to `owner` (as `emit` with `lease_to` wrote them).
pub async fn leased_of_event(
    pool: &PgPool,
    event_id: &str,
    owner: &str,
) -> Result<Vec<Leased>, DbError> {
    sqlx::query_as(&format!(
        "{LEASED_SELECT} FROM webhook_messages l JOIN webhook_events ev ON ev.id = l.event_id
         LEFT JOIN webhook_endpoints e ON e.id = l.endpoint_id
         WHERE l.event_id = $1 AND l.lease_owner = $2 AND l.status = 'pending'"
    ))
    .bind(event_id)
    .bind(owner)
    .fetch_all(pool)
    .await
}

/// The columns of a [`Leased`], over `l` (messages), `ev` (events) and `e` (endpoints).
const LEASED_SELECT: &str = "SELECT l.id, l.event_id, l.tenant, l.endpoint_id,
    COALESCE(e.url, l.url) AS url, l.attempts, l.created_at, ev.payload::text AS body,
    e.status AS endpoint_status, e.secret,
    CASE WHEN e.previous_secret_until > now() THEN e.previous_secret END AS previous_secret";

/// Leases up to `limit` due messages for `owner` (skipping those another process holds) and
/// counts the attempt now, so a crash mid-delivery still counts.
pub async fn lease(
    pool: &PgPool,
    owner: &str,
    limit: i64,
    lease_secs: f64,
) -> Result<Vec<Leased>, DbError> {
    sqlx::query_as(&format!(
        "WITH due AS (
            SELECT id FROM webhook_messages
            WHERE status = 'pending' AND next_attempt_at <= now()
              AND (lease_until IS NULL OR lease_until < now())
            ORDER BY next_attempt_at LIMIT $2 FOR UPDATE SKIP LOCKED
         ), leased AS (
            UPDATE webhook_messages m SET lease_owner = $1,
                lease_until = now() + make_interval(secs => $3), attempts = m.attempts + 1
            FROM due WHERE m.id = due.id
            RETURNING m.id, m.event_id, m.tenant, m.endpoint_id, m.url, m.attempts, m.created_at
         )
         {LEASED_SELECT} FROM leased l JOIN webhook_events ev ON ev.id = l.event_id
         LEFT JOIN webhook_endpoints e ON e.id = l.endpoint_id"
    ))
    .bind(owner)
    .bind(limit)
    .bind(lease_secs)
    .fetch_all(pool)
    .await
}

/// The result of one attempt, as recorded.
#[derive(Debug, Clone)]
pub struct AttemptRecord {
    pub status_code: Option<i32>,
    pub error: Option<String>,
    pub latency_ms: Option<i32>,
    pub started_at: DateTime<Utc>,
    /// `delivered`, `failed` (no more tries) or `pending` (retry at `next_attempt_at`).
    pub new_status: &'static str,
    pub next_attempt_at: Option<DateTime<Utc>>,
}

/// Records an attempt and moves the message, if `owner` still holds it at this attempt. For an
/// endpoint, a success clears its failure streak and a failure starts one; returns when the
/// endpoint's streak began (to disable it past `disable_after`), or `None`.
pub async fn record_attempt(
    pool: &PgPool,
    owner: &str,
    m: &Leased,
    url: &str,
    r: &AttemptRecord,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let mut tx = pool.begin().await?;
    let moved: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_messages SET status = $3, next_attempt_at = COALESCE($4, next_attempt_at),
             lease_owner = NULL, lease_until = NULL, last_status_code = $5, last_error = $6,
             finished_at = CASE WHEN $3 <> 'pending' THEN now() END
         WHERE id = $1 AND lease_owner = $2 AND attempts = $7 AND status = 'pending' RETURNING id",
    )
    .bind(&m.id)
    .bind(owner)
    .bind(r.new_status)
    .bind(r.next_attempt_at)
    .bind(r.status_code)
    .bind(&r.error)
    .bind(m.attempts)
    .fetch_optional(&mut *tx)
    .await?;
    sqlx::query(
        "INSERT INTO webhook_deliveries (message_id, event_id, tenant, endpoint_id, url, attempt,
             status_code, error, latency_ms, started_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
    )
    .bind(&m.id)
    .bind(&m.event_id)
    .bind(&m.tenant)
    .bind(&m.endpoint_id)
    .bind(url)
    .bind(m.attempts)
    .bind(r.status_code)
    .bind(&r.error)
    .bind(r.latency_ms)
    .bind(r.started_at)
    .execute(&mut *tx)
    .await?;
    let mut failing_since = None;
    if let (Some(endpoint), Some(_)) = (&m.endpoint_id, &moved) {
        failing_since = sqlx::query_scalar(
            "UPDATE webhook_endpoints SET
                 failing_since = CASE WHEN $2 THEN NULL ELSE COALESCE(failing_since, now()) END
             WHERE id = $1 RETURNING failing_since",
        )
        .bind(endpoint)
        .bind(r.new_status == "delivered")
        .fetch_optional(&mut *tx)
        .await?
        .flatten();
    }
    tx.commit().await?;
    Ok(failing_since)
}

/// Disables an endpoint that kept failing; returns the tenant's other enabled endpoints (to be
/// told) if this call disabled it, `None` if it was already disabled or gone.
pub async fn disable_failing(
    pool: &PgPool,
    id: &str,
    reason: &str,
) -> Result<Option<(String, Vec<String>)>, DbError> {
    let tenant: Option<String> = sqlx::query_scalar(
        "UPDATE webhook_endpoints SET status = 'disabled', disabled_reason = $2, updated_at = now()
         WHERE id = $1 AND status = 'enabled' RETURNING tenant",
    )
    .bind(id)
    .bind(reason)
    .fetch_optional(pool)
    .await?;
    let Some(tenant) = tenant else {
        return Ok(None);
    };
    let others = sqlx::query_scalar(
        "SELECT id FROM webhook_endpoints WHERE tenant = $1 AND id <> $2 AND status = 'enabled'",
    )
    .bind(&tenant)
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(Some((tenant, others)))
}

/// Sends `tenant`'s messages finished since `since` round again, with the same ids (so
/// receivers can tell a replay from a new event), and records `webhook.replay` for `actor`.
/// Returns how many.
pub async fn replay(
    pool: &PgPool,
    actor: &str,
    tenant: &str,
    since: DateTime<Utc>,
    only_failed: bool,
) -> Result<u64, DbError> {
    let mut tx = pool.begin().await?;
    let done = sqlx::query(
        "UPDATE webhook_messages SET status = 'pending', next_attempt_at = now(), attempts = 0,
             created_at = now(), finished_at = NULL, lease_owner = NULL, lease_until = NULL
         WHERE tenant = $1 AND status <> 'pending' AND finished_at >= $2
           AND (NOT $3 OR status = 'failed')",
    )
    .bind(tenant)
    .bind(since)
    .bind(only_failed)
    .execute(&mut *tx)
    .await?
    .rows_affected();
    audit::record(
        &mut tx,
        &audit::Entry {
            actor,
            action: "webhook.replay",
            target: &format!("tenant:{tenant}"),
            before: Some(json!({"since": since, "failed_only": only_failed})),
            after: Some(json!({"messages": done})),
        },
    )
    .await?;
    tx.commit().await?;
    Ok(done)
}
