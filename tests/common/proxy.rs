//! A TCP fault proxy for fault-injection tests: listens on `127.0.0.1:0`, forwards every
//! connection to one upstream (RabbitMQ, Postgres or the mock provider), and can be told to
//! misbehave while a test runs. Pointing one test's `amqp.url`, `database.url` or provider
//! `base_url` at it breaks the network for that test's sluice only, never for the shared
//! services or other tests.
//!
//! Controls:
//! - [`FaultProxy::pass`]: forward normally (and release anything a blackhole held);
//! - [`FaultProxy::blackhole`]: accept connections but forward nothing in either direction, as a
//!   hung peer (`kill -STOP`) or a silent network does; held bytes flow again on `pass`;
//! - [`FaultProxy::refuse`]: close every new connection at once with a TCP reset;
//! - [`FaultProxy::reset_all`]: reset every connection open now (new ones are unaffected);
//! - [`FaultProxy::outage`]: `refuse` + `reset_all`, as when a server dies;
//! - [`FaultProxy::set_latency`]: delay every chunk forwarded, both ways.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Blackhole,
    Refuse,
}

struct Shared {
    upstream: SocketAddr,
    mode: watch::Sender<Mode>,
    latency_ms: AtomicU64,
    /// Cancelled by `reset_all`; replaced by a fresh token for later connections.
    generation: Mutex<CancellationToken>,
    accepted: AtomicU64,
    refused: AtomicU64,
    resets: AtomicU64,
}

/// A running fault proxy; it stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: CancellationToken,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        self.reset_all();
    }
}

impl FaultProxy {
    /// Starts a proxy to `upstream` (for example `127.0.0.1:5672`), in `pass` mode.
    pub async fn start(upstream: SocketAddr) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (mode, _) = watch::channel(Mode::Pass);
        let shared = Arc::new(Shared {
            upstream,
            mode,
            latency_ms: AtomicU64::new(0),
            generation: Mutex::new(CancellationToken::new()),
            accepted: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, shared.clone(), stop.clone()));
        FaultProxy { addr, shared, stop }
    }

    /// A proxy in front of the host and port of `url` (`amqp://…`, `postgres://…`, `http://…`).
    pub async fn in_front_of(url: &str) -> FaultProxy {
        let u = url::Url::parse(url).unwrap();
        let host = u.host_str().unwrap_or("127.0.0.1");
        let port = u.port_or_known_default().unwrap_or(match u.scheme() {
            "amqp" => 5672,
            "postgres" | "postgresql" => 5432,
            _ => 80,
        });
        let upstream = tokio::net::lookup_host((host, port))
            .await
            .unwrap()
            .next()
            .unwrap();
        Self::start(upstream).await
    }

    /// `url` with its host and port replaced by the proxy's (path, query and credentials kept).
    pub fn url_for(&self, url: &str) -> String {
        let mut u = url::Url::parse(url).unwrap();
        u.set_host(Some("127.0.0.1")).unwrap();
        u.set_port(Some(self.addr.port())).unwrap();
        u.to_string()
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Forward normally; data held by a blackhole flows again.
    pub fn pass(&self) {
        self.shared.mode.send_replace(Mode::Pass);
    }

    /// Accept connections but forward nothing until `pass`.
    pub fn blackhole(&self) {
        self.shared.mode.send_replace(Mode::Blackhole);
    }

    /// Reset every new connection at once.
    pub fn refuse(&self) {
        self.shared.mode.send_replace(Mode::Refuse);
    }

    /// Reset every connection open now.
    pub fn reset_all(&self) {
        let mut generation = self
            .shared
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        generation.cancel();
        *generation = CancellationToken::new();
        self.shared.resets.fetch_add(1, Ordering::Relaxed);
    }

    /// The server is gone: open connections are reset and new ones refused, until `pass`.
    pub fn outage(&self) {
        self.refuse();
        self.reset_all();
    }

    /// Delays every chunk forwarded, in both directions.
    pub fn set_latency(&self, latency: Duration) {
        self.shared
            .latency_ms
            .store(latency.as_millis() as u64, Ordering::Relaxed);
    }

    /// Connections accepted and forwarded so far.
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::Relaxed)
    }

    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.shared.refused.load(Ordering::Relaxed)
    }
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let Ok((client, _)) = accepted else { continue };
        if *shared.mode.borrow() == Mode::Refuse {
            shared.refused.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        shared.accepted.fetch_add(1, Ordering::Relaxed);
        let token = shared
            .generation
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio::spawn(serve(client, shared.clone(), token));
    }
}

/// Closes a socket with a TCP reset rather than a polite FIN, as a dead peer's kernel would.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

async fn serve(mut client: TcpStream, shared: Arc<Shared>, token: CancellationToken) {
    let _ = client.set_nodelay(true);
    let connect = tokio::select! {
        _ = token.cancelled() => return reset(client),
        c = TcpStream::connect(shared.upstream) => c,
    };
    let Ok(mut upstream) = connect else {
        return reset(client);
    };
    let _ = upstream.set_nodelay(true);
    let cancelled = {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        let both =
            async { tokio::join!(pump(cr, uw, &shared, &token), pump(ur, cw, &shared, &token)) };
        tokio::select! {
            _ = token.cancelled() => true,
            _ = both => false,
        }
    };
    if cancelled {
        reset(client);
        reset(upstream);
    }
}

/// Copies one direction until EOF, an error or a reset, honouring blackhole and latency.
async fn pump(
    mut from: tokio::net::tcp::ReadHalf<'_>,
    mut to: tokio::net::tcp::WriteHalf<'_>,
    shared: &Shared,
    token: &CancellationToken,
) {
    let mut mode = shared.mode.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // A blackhole stops reading too, so the sender's kernel buffers fill as with a hung peer.
        if wait_while_blackholed(&mut mode, token).await.is_err() {
            return;
        }
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(n) => n,
        };
        let latency = shared.latency_ms.load(Ordering::Relaxed);
        if latency > 0 {
            tokio::time::sleep(Duration::from_millis(latency)).await;
        }
        // Bytes read just before a blackhole began are held, not delivered.
        if wait_while_blackholed(&mut mode, token).await.is_err() {
            return;
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}

async fn wait_while_blackholed(
    mode: &mut watch::Receiver<Mode>,
    token: &CancellationToken,
) -> Result<(), ()> {
    loop {
        if *mode.borrow_and_update() != Mode::Blackhole {
            return Ok(());
        }
        tokio::select! {
            _ = token.cancelled() => return Err(()),
            changed = mode.changed() => if changed.is_err() { return Err(()) },
        }
    }
}
