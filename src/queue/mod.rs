//! RabbitMQ: the one place that owns exchange and queue names, declares the topology, publishes
//! with confirms and opens consumers. Postgres holds job state; RabbitMQ only moves work.
//!
//! Topology (every name carries the configured prefix, empty in production):
//! - `sluice.jobs` (durable topic exchange): where any producer publishes full jobs, routing
//!   key = tenant. Bound with `#` to the queue `sluice.jobs.ingest`.
//! - `sluice.jobs.rejected` (durable queue): malformed or unauthorised producer messages, with
//!   a `sluice-reject-reason` header.
//! - `sluice.work` (durable direct exchange) and one durable priority queue per tenant,
//!   `sluice.work.<tenant>`, bound with the tenant as routing key: job ids ready to run. Workers
//!   consume every tenant's queue with a prefetch proportional to the tenant's weight, so one
//!   tenant's backlog cannot starve another's jobs; priority orders work within a tenant.

pub mod ingest;
pub mod marks;

use std::sync::Arc;
use std::time::Duration;

use lapin::Confirmation;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{
    Acker, BasicProperties, Channel, Connection, ConnectionProperties, Consumer, ExchangeKind,
};
use tokio::sync::Mutex;

use crate::config::QueueType;

/// The message schema version producers send in the `sluice-schema` header.
pub const SCHEMA_VERSION: &str = "1";
/// Header carrying the producer's tenant API key.
pub const API_KEY_HEADER: &str = "sluice-api-key";
/// Header carrying the schema version.
pub const SCHEMA_HEADER: &str = "sluice-schema";
/// Header sluice adds to a rejected message.
pub const REJECT_REASON_HEADER: &str = "sluice-reject-reason";

/// Exchange and queue names.
#[derive(Debug, Clone)]
pub struct Topology {
    prefix: String,
    queue_type: QueueType,
}

impl Topology {
    /// Names with `prefix` in front (empty in production), classic queues.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_string(),
            queue_type: QueueType::Classic,
        }
    }
    /// The same names, with queues of `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }
    /// The type of every queue declared.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }
    /// The declare arguments of a queue of this topology's type; `priorities` asks for job
    /// priorities 0-9 where the type has them (classic).
    pub fn queue_args(&self, priorities: bool) -> FieldTable {
        let mut args = FieldTable::default();
        match self.queue_type {
            QueueType::Classic if priorities => {
                args.insert("x-max-priority".into(), AMQPValue::ShortShortUInt(9));
            }
            QueueType::Classic => {}
            QueueType::Quorum => {
                args.insert(
                    "x-queue-type".into(),
                    AMQPValue::LongString(LongString::from("quorum")),
                );
            }
        }
        args
    }
    /// Producers publish full jobs here.
    pub fn jobs_exchange(&self) -> String {
        format!("{}sluice.jobs", self.prefix)
    }
    /// sluice consumes producer messages from here.
    pub fn ingest_queue(&self) -> String {
        format!("{}sluice.jobs.ingest", self.prefix)
    }
    /// Producer messages that could not be accepted.
    pub fn rejected_queue(&self) -> String {
        format!("{}sluice.jobs.rejected", self.prefix)
    }
    /// Where job ids ready to run are published (routing key = tenant).
    pub fn work_exchange(&self) -> String {
        format!("{}sluice.work", self.prefix)
    }
    /// One tenant's ready job ids.
    pub fn work_queue(&self, tenant: &str) -> String {
        format!("{}sluice.work.{tenant}", self.prefix)
    }
}

/// A broker failure.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker returned the message as unroutable ({0})")]
    Returned(String),
    #[error("broker refused the message (nack)")]
    Nacked,
    #[error("broker did not answer in time while {0}")]
    Timeout(&'static str),
    #[error(
        "queue `{queue}` already exists with other settings than a {wanted} queue (another \
         queue type?). Set [amqp] queue_type to the type it has, or drain and delete it so \
         sluice declares it again ({broker})"
    )]
    Inequivalent {
        queue: String,
        wanted: &'static str,
        broker: String,
    },
}

/// Declares one durable queue of the topology's type. A queue that exists with other arguments
/// (another type) is reported with what to do, not as a bare broker error.
async fn declare_queue(
    channel: &Channel,
    topo: &Topology,
    name: &str,
    priorities: bool,
) -> Result<(), QueueError> {
    let declared = channel
        .queue_declare(
            name.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            topo.queue_args(priorities),
        )
        .await;
    match declared {
        Ok(_) => Ok(()),
        Err(e) if is_precondition_failed(&e) => Err(QueueError::Inequivalent {
            queue: name.to_string(),
            wanted: topo.queue_type().as_str(),
            broker: e.to_string(),
        }),
        Err(e) => Err(e.into()),
    }
}

/// Declares everything sluice needs; idempotent.
pub async fn declare(channel: &Channel, topo: &Topology) -> Result<(), QueueError> {
    channel
        .exchange_declare(
            topo.jobs_exchange().into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    declare_queue(channel, topo, &topo.ingest_queue(), false).await?;
    channel
        .queue_bind(
            topo.ingest_queue().into(),
            topo.jobs_exchange().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    declare_queue(channel, topo, &topo.rejected_queue(), false).await?;
    channel
        .exchange_declare(
            topo.work_exchange().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares a tenant's work queue and binds it; idempotent.
pub async fn declare_tenant(
    channel: &Channel,
    topo: &Topology,
    tenant: &str,
) -> Result<(), QueueError> {
    let queue = topo.work_queue(tenant);
    declare_queue(channel, topo, &queue, true).await?;
    channel
        .queue_bind(
            queue.into(),
            topo.work_exchange().into(),
            tenant.into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// A job id ready to run, and where it goes.
#[derive(Debug, Clone)]
pub struct WorkItem {
    pub id: String,
    pub tenant: String,
    pub priority: i16,
}

/// Opens a connection with a name that shows in the management UI.
pub async fn connect(url: &str, name: &str) -> Result<Connection, QueueError> {
    let props =
        ConnectionProperties::default().with_connection_name(LongString::from(name.to_string()));
    let url = with_heartbeat(url);
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(&url, props)).await {
        Ok(conn) => Ok(conn?),
        Err(_) => Err(QueueError::Timeout("connecting")),
    }
}

/// Deletes every queue and exchange of `topo` (the work queues of `tenants`), each on a
/// channel of its own, since an error closes the channel it happened on. Best effort, for runs
/// that must leave nothing behind in the broker (`sluice bench`, the tests).
pub async fn delete_topology(url: &str, topo: &Topology, tenants: &[String]) {
    let Ok(conn) = connect(url, "sluice-cleanup").await else {
        return;
    };
    let queues = [topo.ingest_queue(), topo.rejected_queue()]
        .into_iter()
        .chain(tenants.iter().map(|t| topo.work_queue(t)));
    for q in queues {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .queue_delete(
                    q.as_str().into(),
                    lapin::options::QueueDeleteOptions::default(),
                )
                .await;
            let _ = ch.close(200, "done".into()).await;
        }
    }
    for x in [topo.jobs_exchange(), topo.work_exchange()] {
        if let Ok(ch) = conn.create_channel().await {
            let _ = ch
                .exchange_delete(x.as_str().into(), Default::default())
                .await;
            let _ = ch.close(200, "done".into()).await;
        }
    }
    let _ = conn.close(200, "done".into()).await;
}

/// Longest wait for a connection's TCP and AMQP handshake.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Heartbeat interval asked for when the URL names none: a peer that stops answering (a hung
/// broker, a dead network path) is noticed within two intervals instead of never.
const HEARTBEAT_SECS: u16 = 15;
/// Longest wait for a batch of publishes and their confirms.
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait for an acknowledgement to be handed to the connection. One that times out is
/// harmless: the delivery comes back after the connection closes, and redeliveries are
/// idempotent.
const ACK_TIMEOUT: Duration = Duration::from_secs(5);

/// The URL with `heartbeat=` added unless it sets one.
fn with_heartbeat(url: &str) -> String {
    if url.contains("heartbeat=") {
        return url.to_string();
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}heartbeat={HEARTBEAT_SECS}")
}

/// Closes a connection politely, bounded in time (a dead or hung broker never answers).
pub async fn close(conn: &Connection, reason: &str) {
    let _ = tokio::time::timeout(ACK_TIMEOUT, conn.close(200, reason.into())).await;
}

/// Acknowledges a delivery, bounded in time; a failure only means it will be redelivered.
pub async fn ack(acker: &Acker) {
    let _ = tokio::time::timeout(ACK_TIMEOUT, acker.ack(BasicAckOptions::default())).await;
}

/// Acknowledges many deliveries at once: the acknowledgements are handed to the connection
/// together instead of each waiting for the one before it (each bounded as in [`ack`]).
pub async fn ack_all<'a>(ackers: impl IntoIterator<Item = &'a Acker>) {
    futures::future::join_all(ackers.into_iter().map(ack)).await;
}

/// [`requeue`] for many deliveries at once, as [`ack_all`] does.
pub async fn requeue_all<'a>(ackers: impl IntoIterator<Item = &'a Acker>) {
    futures::future::join_all(ackers.into_iter().map(requeue)).await;
}

/// Hands a delivery back to the broker for another try, bounded in time.
pub async fn requeue(acker: &Acker) {
    let options = BasicNackOptions {
        requeue: true,
        ..Default::default()
    };
    let _ = tokio::time::timeout(ACK_TIMEOUT, acker.nack(options)).await;
}

/// One persistent message to publish.
#[derive(Debug, Clone)]
pub struct Outgoing {
    pub exchange: String,
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

struct Connected {
    // Kept so the connection lives as long as its channel (and opens probe channels).
    conn: Connection,
    channel: Channel,
}

/// A shared, self-healing publisher in confirm mode. Every publish is `mandatory` and counts
/// as done only when the broker confirms it and did not return it.
#[derive(Clone)]
pub struct Broker {
    url: String,
    topo: Topology,
    state: Arc<Mutex<Option<Connected>>>,
    /// Tenants whose work queue this process has declared.
    declared: Arc<std::sync::Mutex<std::collections::HashSet<String>>>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("topo", &self.topo)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// A broker handle; the connection opens on first use.
    pub fn new(url: &str, topo: Topology) -> Self {
        Self {
            url: url.to_string(),
            topo,
            state: Arc::new(Mutex::new(None)),
            declared: Arc::default(),
        }
    }

    /// The names in use.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// The AMQP URL (consumers open their own connections).
    pub fn url(&self) -> &str {
        &self.url
    }

    async fn channel(&self) -> Result<Channel, QueueError> {
        let mut state = self.state.lock().await;
        if let Some(c) = state.as_ref()
            && c.channel.status().connected()
        {
            return Ok(c.channel.clone());
        }
        *state = None;
        let conn = connect(&self.url, "sluice-publisher").await?;
        let channel = conn.create_channel().await?;
        declare(&channel, &self.topo).await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        *state = Some(Connected {
            conn,
            channel: channel.clone(),
        });
        Ok(channel)
    }

    /// Publishes every message, then waits for every confirm. Any failure fails the call; the
    /// caller retries (duplicates are harmless: consumers are idempotent).
    pub async fn publish_all(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        if messages.is_empty() {
            return Ok(());
        }
        let result = match tokio::time::timeout(PUBLISH_TIMEOUT, self.publish_inner(messages)).await
        {
            Ok(r) => r,
            Err(_) => Err(QueueError::Timeout("publishing")),
        };
        if result.is_err() {
            // Start over on a fresh channel next time, declaring queues again.
            *self.state.lock().await = None;
            if let Ok(mut d) = self.declared.lock() {
                d.clear();
            }
        }
        result
    }

    async fn publish_inner(&self, messages: Vec<Outgoing>) -> Result<(), QueueError> {
        let channel = self.channel().await?;
        let mut confirms = Vec::with_capacity(messages.len());
        for m in messages {
            let c = channel
                .basic_publish(
                    m.exchange.into(),
                    m.routing_key.into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..Default::default()
                    },
                    &m.body,
                    m.properties,
                )
                .await?;
            confirms.push(c);
        }
        for c in confirms {
            match c.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => {}
                Confirmation::Ack(Some(returned)) => {
                    return Err(QueueError::Returned(returned.reply_text.to_string()));
                }
                Confirmation::Nack(_) => return Err(QueueError::Nacked),
            }
        }
        Ok(())
    }

    /// Work messages for jobs ready to run: body = job id, routing key = tenant.
    pub async fn publish_work(&self, jobs: &[WorkItem]) -> Result<(), QueueError> {
        let missing: Vec<String> = {
            let declared = self.declared.lock().map(|d| d.clone()).unwrap_or_default();
            let mut m: Vec<String> = jobs
                .iter()
                .filter(|j| !declared.contains(&j.tenant))
                .map(|j| j.tenant.clone())
                .collect();
            m.sort();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let declare_all = async {
                let channel = self.channel().await?;
                for tenant in &missing {
                    declare_tenant(&channel, &self.topo, tenant).await?;
                }
                Ok::<(), QueueError>(())
            };
            match tokio::time::timeout(PUBLISH_TIMEOUT, declare_all).await {
                Ok(r) => r?,
                Err(_) => {
                    self.reset().await;
                    return Err(QueueError::Timeout("declaring work queues"));
                }
            }
            if let Ok(mut d) = self.declared.lock() {
                d.extend(missing);
            }
        }
        let exchange = self.topo.work_exchange();
        let messages = jobs
            .iter()
            .map(|j| Outgoing {
                exchange: exchange.clone(),
                routing_key: j.tenant.clone(),
                body: j.id.as_bytes().to_vec(),
                properties: persistent()
                    .with_message_id(ShortString::from(j.id.clone()))
                    .with_priority(j.priority.clamp(0, 9) as u8),
            })
            .collect();
        self.publish_all(messages).await
    }

    /// Drops the publishing channel (after a timeout) so the next publish starts afresh.
    pub async fn reset(&self) {
        if let Ok(mut state) =
            tokio::time::timeout(Duration::from_millis(100), self.state.lock()).await
        {
            *state = None;
        }
        if let Ok(mut d) = self.declared.lock() {
            d.clear();
        }
    }

    /// How many messages wait ready (not delivered to a consumer) in `tenant`'s work queue, and
    /// how many consumers it has; `None` when the queue does not exist (deleted: every message
    /// it held is gone). The look is a passive declare on a channel of its own, so a missing
    /// queue (which closes the channel) never disturbs publishing.
    pub async fn work_queue_counts(&self, tenant: &str) -> Result<Option<(u32, u32)>, QueueError> {
        let queue = self.topo.work_queue(tenant);
        let look = async {
            self.channel().await?;
            let probe = {
                let state = self.state.lock().await;
                match state.as_ref() {
                    Some(c) => c.conn.create_channel().await?,
                    None => return Err(QueueError::Timeout("opening a probe channel")),
                }
            };
            let declared = probe
                .queue_declare(
                    queue.as_str().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            match declared {
                Ok(q) => {
                    let _ = probe.close(200, "done".into()).await;
                    Ok(Some((q.message_count(), q.consumer_count())))
                }
                Err(e) if is_not_found(&e) => Ok(None),
                Err(e) => Err(e.into()),
            }
        };
        match tokio::time::timeout(PUBLISH_TIMEOUT, look).await {
            Ok(r) => r,
            Err(_) => Err(QueueError::Timeout("looking at a work queue")),
        }
    }

    /// Whether the broker answers (for `/readyz`).
    /// A round trip to the broker (a passive declare of the ingest queue), so a broker that
    /// hangs with the connection still open is reported too.
    pub async fn ping(&self) -> bool {
        let probe = async {
            let channel = self.channel().await?;
            channel
                .queue_declare(
                    self.topo.ingest_queue().into(),
                    QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<(), QueueError>(())
        };
        tokio::time::timeout(Duration::from_secs(2), probe)
            .await
            .is_ok_and(|r| r.is_ok())
    }
}

/// Whether the broker answered 406 PRECONDITION_FAILED (a declare with other arguments).
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a)
        if matches!(a.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::PRECONDITIONFAILED)))
}

/// Whether the broker answered 404 NOT_FOUND (a passive declare of a missing queue).
fn is_not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(a)
        if matches!(a.kind(), lapin::protocol::AMQPErrorKind::Soft(lapin::protocol::AMQPSoftError::NOTFOUND)))
}

/// Properties of a persistent JSON message.
pub fn persistent() -> BasicProperties {
    BasicProperties::default().with_delivery_mode(2)
}

/// Opens a consumer on its own connection (publishing and consuming never share one, so
/// broker flow control on publishers cannot stall acknowledgements).
pub async fn consume(
    url: &str,
    topo: &Topology,
    queue: &str,
    prefetch: u16,
    tag: &str,
) -> Result<(Connection, Channel, Consumer), QueueError> {
    let conn = connect(url, tag).await?;
    let channel = conn.create_channel().await?;
    declare(&channel, topo).await?;
    channel
        .basic_qos(prefetch, BasicQosOptions::default())
        .await?;
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok((conn, channel, consumer))
}

/// The reconnect delays of a broker session: exponential from 200 ms to 10 s with jitter,
/// never giving up; a session that ends cleanly starts the sequence over.
fn reconnect_delays() -> backon::ExponentialBackoff {
    use backon::BackoffBuilder;
    backon::ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(10))
        .with_jitter()
        .without_max_times()
        .build()
}

/// Runs `session` until `shutdown`, starting it again after a [`reconnect_delays`] pause
/// whenever it fails: the one reconnect policy of every long-lived consumer.
pub async fn reconnecting<F, Fut>(
    what: &str,
    shutdown: &tokio_util::sync::CancellationToken,
    mut session: F,
) where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let mut delays = reconnect_delays();
    while !shutdown.is_cancelled() {
        match session().await {
            Ok(()) => delays = reconnect_delays(),
            Err(e) => {
                tracing::warn!(error = %e, "{what} lost its broker session; reconnecting");
                let pause = delays.next().unwrap_or(Duration::from_secs(10));
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
}

/// Whether a header may carry a secret (an API key, a bearer token, a password), whatever its
/// case: such headers are stripped before a message is set aside where others can read it.
pub fn is_credential_header(name: &str) -> bool {
    let n = name.to_ascii_lowercase().replace('_', "-");
    [
        "api-key",
        "apikey",
        "authorization",
        "token",
        "secret",
        "password",
        "credential",
        "cookie",
        "signature",
    ]
    .iter()
    .any(|p| n.contains(p))
}

/// Reads a text header; the name matches whatever its case (`Sluice-Api-Key` too).
pub fn header_text(headers: &Option<FieldTable>, name: &str) -> Option<String> {
    let table = headers.as_ref()?.inner();
    let value = table.get(name).or_else(|| {
        table
            .iter()
            .find(|(k, _)| k.as_str().eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    })?;
    match value {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.to_string()),
        AMQPValue::ShortShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortShortUInt(n) => Some(n.to_string()),
        AMQPValue::ShortInt(n) => Some(n.to_string()),
        AMQPValue::ShortUInt(n) => Some(n.to_string()),
        AMQPValue::LongInt(n) => Some(n.to_string()),
        AMQPValue::LongUInt(n) => Some(n.to_string()),
        AMQPValue::LongLongInt(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credential_headers_are_recognised_in_any_case() {
        for h in [
            "sluice-api-key",
            "Sluice-Api-Key",
            "SLUICE-API-KEY",
            "authorization",
            "Authorization",
            "x-api-key",
            "X_Api_Key",
            "x-auth-token",
            "client-secret",
        ] {
            assert!(is_credential_header(h), "{h}");
        }
        for h in ["sluice-schema", "sluice-reject-reason", "content-type"] {
            assert!(!is_credential_header(h), "{h}");
        }
    }

    #[test]
    fn a_heartbeat_is_asked_for_unless_the_url_sets_one() {
        assert_eq!(
            with_heartbeat("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:guest@127.0.0.1:5672/%2f?heartbeat=15"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?frame_max=8192"),
            "amqp://h/%2f?frame_max=8192&heartbeat=15"
        );
        assert_eq!(
            with_heartbeat("amqp://h/%2f?heartbeat=60"),
            "amqp://h/%2f?heartbeat=60"
        );
    }
}
