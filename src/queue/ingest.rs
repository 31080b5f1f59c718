//! AMQP ingest: full jobs published by any program to the `sluice.jobs` exchange are checked,
//! recorded in Postgres, dispatched like HTTP-submitted jobs, and only then acknowledged.
//! A message that cannot be accepted goes to `sluice.jobs.rejected` with the reason in a
//! header; nothing is dropped silently.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::types::{AMQPValue, FieldTable, LongString};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::{
    API_KEY_HEADER, Outgoing, REJECT_REASON_HEADER, SCHEMA_HEADER, SCHEMA_VERSION, header_text,
};
use crate::app::Ctx;
use crate::db::jobs::NewJobRow;

/// Most messages taken into one database transaction.
const INGEST_BATCH: usize = 500;

/// Consumes producer messages until `shutdown`, reconnecting as needed.
pub async fn run(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    // For the supervision tests: a role that dies every time it starts.
    crate::failpoint::panic_at("ingest.start");
    super::reconnecting("ingest", &shutdown, || session(&ctx, &shutdown)).await;
}

async fn session(ctx: &Arc<Ctx>, shutdown: &CancellationToken) -> anyhow::Result<()> {
    let topo = ctx.broker.topology().clone();
    let tag = crate::ids::new_id("ingest");
    let (conn, _channel, consumer) = super::consume(
        ctx.broker.url(),
        &topo,
        &topo.ingest_queue(),
        (INGEST_BATCH * 2) as u16,
        &tag,
    )
    .await?;
    let mut batches = consumer.ready_chunks(INGEST_BATCH);
    let result = loop {
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            next = batches.next() => match next {
                Some(items) => {
                    let mut deliveries = Vec::with_capacity(items.len());
                    for item in items {
                        match item {
                            Ok(d) => deliveries.push(d),
                            Err(e) => tracing::warn!(error = %e, "ingest delivery error"),
                        }
                    }
                    handle(ctx, deliveries).await;
                }
                None => break Err(anyhow::anyhow!("ingest consumer closed by the broker")),
            },
        }
    };
    super::close(&conn, "ingest stopping").await;
    result
}

/// A message's fate.
enum Verdict {
    Accept {
        tenant: String,
        row: Box<NewJobRow>,
    },
    Reject(String),
    /// The database could not be asked: hand the message back for later.
    Retry,
}

async fn handle(ctx: &Arc<Ctx>, deliveries: Vec<Delivery>) {
    let mut groups: BTreeMap<String, Vec<(Delivery, NewJobRow)>> = BTreeMap::new();
    for d in deliveries {
        match check(ctx, &d).await {
            Verdict::Accept { tenant, row } => groups.entry(tenant).or_default().push((d, *row)),
            Verdict::Reject(reason) => reject(ctx, d, &reason).await,
            Verdict::Retry => {
                crate::queue::requeue(&d.acker).await;
            }
        }
    }
    let mut transient = false;
    for (tenant, items) in groups {
        let rows: Vec<NewJobRow> = items.iter().map(|(_, r)| r.clone()).collect();
        let unfit = match crate::submit::never_fitting(ctx, &tenant, &rows, Utc::now()).await {
            Ok(u) => u,
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant, "could not read budgets; the messages will be redelivered");
                for (d, _) in items {
                    crate::queue::requeue(&d.acker).await;
                }
                transient = true;
                continue;
            }
        };
        let mut fitting = Vec::with_capacity(items.len());
        for ((d, row), unfit) in items.into_iter().zip(unfit) {
            match unfit {
                Some(e) => reject(ctx, d, &e.to_string()).await,
                None => fitting.push((d, row)),
            }
        }
        transient |= record_group(ctx, &tenant, fitting).await;
    }
    if transient {
        // The database is not answering: give it a moment before the redeliveries arrive.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Records one tenant's accepted messages and acknowledges them. A deterministic database
/// error (a data or constraint error) is isolated by splitting the group in halves until the
/// offending message stands alone; it goes to the rejected queue and the rest are recorded.
/// Only a transient error (connection, timeout, serialization) hands messages back. Returns
/// whether that happened.
async fn record_group(ctx: &Arc<Ctx>, tenant: &str, items: Vec<(Delivery, NewJobRow)>) -> bool {
    let mut transient = false;
    let mut work = vec![items];
    while let Some(items) = work.pop() {
        if items.is_empty() {
            continue;
        }
        let rows: Vec<NewJobRow> = items.iter().map(|(_, r)| r.clone()).collect();
        match record(ctx, tenant, &rows).await {
            Ok((inserted, conflicting)) => {
                crate::submit::dispatch(ctx, tenant, &inserted).await;
                for (d, row) in items {
                    match row
                        .idempotency_key
                        .as_ref()
                        .filter(|k| conflicting.contains(*k))
                    {
                        Some(key) => {
                            let reason = format!(
                                "message_id `{key}` was already used for a job with a different body; \
                                 publish a new job with a new message_id"
                            );
                            reject(ctx, d, &reason).await;
                        }
                        None => crate::queue::ack(&d.acker).await,
                    }
                }
            }
            Err(e) if is_data_error(&e) && items.len() > 1 => {
                let mut items = items;
                let second = items.split_off(items.len() / 2);
                work.push(second);
                work.push(items);
            }
            Err(e) if is_data_error(&e) => {
                for (d, _) in items {
                    let reason = format!("the database cannot store this job: {e}");
                    reject(ctx, d, &reason).await;
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, tenant = %tenant, "could not record ingested jobs; they will be redelivered");
                for (d, _) in items {
                    crate::queue::requeue(&d.acker).await;
                }
                transient = true;
            }
        }
    }
    transient
}

/// A deterministic database error: the same input fails the same way every time (SQLSTATE
/// class 22, data exception, or 23, integrity constraint violation).
fn is_data_error(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| c.starts_with("22") || c.starts_with("23"))
}

/// Inserts the rows; returns what was inserted and the idempotency keys (message ids) that
/// were already used by a job with a different request.
async fn record(
    ctx: &Ctx,
    tenant: &str,
    rows: &[NewJobRow],
) -> Result<(Vec<crate::db::jobs::Inserted>, HashSet<String>), sqlx::Error> {
    let mut tx = ctx.pool.begin().await?;
    let inserted =
        crate::db::jobs::insert_jobs(&mut tx, tenant, None, rows, ctx.config.worker.relay_grace)
            .await?;
    let replayed: Vec<&NewJobRow> = rows
        .iter()
        .zip(&inserted)
        .filter(|(_, i)| !i.created)
        .map(|(r, _)| r)
        .collect();
    let conflicting = crate::db::jobs::idempotency_conflicts(&mut tx, tenant, &replayed).await?;
    tx.commit().await?;
    Ok((inserted, conflicting))
}

async fn check(ctx: &Ctx, d: &Delivery) -> Verdict {
    let headers = d.properties.headers();
    if let Some(v) = header_text(headers, SCHEMA_HEADER)
        && v != SCHEMA_VERSION
    {
        return Verdict::Reject(format!(
            "unsupported {SCHEMA_HEADER} `{v}`: this sluice reads schema {SCHEMA_VERSION}"
        ));
    }
    let Some(key) = header_text(headers, API_KEY_HEADER) else {
        return Verdict::Reject(format!(
            "missing header {API_KEY_HEADER}: set it to a tenant API key"
        ));
    };
    let tenant = match ctx.keys.tenant(&key).await {
        Ok(Some(t)) => t,
        Ok(None) => return Verdict::Reject(format!("{API_KEY_HEADER} is not a valid API key")),
        Err(e) => {
            tracing::warn!(error = %e, "key lookup failed");
            return Verdict::Retry;
        }
    };
    let routing_key = d.routing_key.as_str();
    if routing_key != tenant {
        return Verdict::Reject(format!(
            "routing key `{routing_key}` does not match the API key's tenant `{tenant}`"
        ));
    }
    let value: Value = match serde_json::from_slice(&d.data) {
        Ok(v) => v,
        Err(e) => return Verdict::Reject(format!("body is not valid JSON: {e}")),
    };
    let mut value = value;
    if let (Some(id), Some(obj)) = (d.properties.message_id(), value.as_object_mut())
        && !obj.contains_key("idempotency_key")
    {
        obj.insert("idempotency_key".into(), Value::String(id.to_string()));
    }
    let catalog = ctx.catalog();
    match crate::submit::prepare_one(ctx, &tenant, value, &catalog, Utc::now()) {
        Ok(row) => Verdict::Accept {
            tenant,
            row: Box::new(row),
        },
        Err(e) if e.field == "job" => {
            Verdict::Reject(format!("body is not a sluice job: {}", e.message))
        }
        Err(e) => Verdict::Reject(e.to_string()),
    }
}

/// Moves a message to the rejected queue (with its reason), then acknowledges it. If the
/// rejected queue cannot take it, the message is handed back rather than lost.
async fn reject(ctx: &Ctx, d: Delivery, reason: &str) {
    tracing::info!(reason, "rejected a producer message");
    let mut headers = d.properties.headers().clone().unwrap_or_default();
    headers.insert(
        REJECT_REASON_HEADER.into(),
        AMQPValue::LongString(LongString::from(reason.to_string())),
    );
    headers.insert(
        "sluice-original-routing-key".into(),
        AMQPValue::LongString(LongString::from(d.routing_key.to_string())),
    );
    // Never forward a credential: the rejected queue is read by every tenant's operators.
    let mut clean = FieldTable::default();
    for (k, v) in headers.inner() {
        if !super::is_credential_header(k.as_str()) {
            clean.insert(k.clone(), v.clone());
        }
    }
    let props = d
        .properties
        .clone()
        .with_headers(clean)
        .with_delivery_mode(2);
    let out = Outgoing {
        exchange: String::new(),
        routing_key: ctx.broker.topology().rejected_queue(),
        body: d.data.clone(),
        properties: props,
    };
    match ctx.broker.publish_all(vec![out]).await {
        Ok(()) => {
            crate::queue::ack(&d.acker).await;
        }
        Err(e) => {
            tracing::warn!(error = %e, "could not move a message to the rejected queue; handing it back");
            crate::queue::requeue(&d.acker).await;
        }
    }
}
