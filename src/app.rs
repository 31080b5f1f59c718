//! Wiring: builds the shared context (pool, broker, catalog, providers), binds the API listener
//! (port 0 in tests) and starts each role's loops under one supervisor that stops them cleanly.

use std::sync::{Arc, RwLock};
use std::time::Duration;

use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::auth::KeyCache;
use crate::config::Config;
use crate::domain::catalog::Catalog;
use crate::domain::pricing::PriceBook;
use crate::providers::Providers;
use crate::queue::{Broker, Topology};
use crate::supervisor::{Health, supervise};

/// Everything the API, ingest and workers share.
#[derive(Debug)]
pub struct Ctx {
    pub config: Config,
    pub pool: PgPool,
    /// A small pool of its own for heartbeats and lease renewals (see `db::connect_heartbeat`).
    pub beat_pool: PgPool,
    pub broker: Broker,
    pub providers: Providers,
    pub keys: KeyCache,
    /// What every supervised role in this process is doing (read by `/readyz`).
    pub health: Health,
    /// Circuit-breaker signals of synchronous calls, applied in rounds (see `worker::breaker_feed`).
    pub breaker_feed: crate::worker::breaker_feed::BreakerFeed,
    /// The synchronous path's database work, gathered in rounds (see `realtime::rounds`).
    pub rounds: crate::realtime::rounds::Rounds,
    /// Jobs to mark published once `worker.publish_mark_delay` has passed (see `queue::marks`).
    pub publish_marks: crate::queue::marks::PublishMarks,
    catalog: RwLock<Arc<Catalog>>,
}

impl Ctx {
    /// Connects to Postgres (migrating it) and prepares the broker handle and provider clients.
    pub async fn connect(config: Config) -> anyhow::Result<Arc<Ctx>> {
        let pool = crate::db::connect(&config.database).await?;
        crate::db::migrate(&pool).await?;
        let beat_pool = crate::db::connect_heartbeat(&config.database).await?;
        crate::db::prices::seed(&pool, &PriceBook::seed_rows(&config.prices)).await?;
        seed_budgets(&pool, &config).await?;
        let prices = crate::db::prices::load(&pool).await?;
        let catalog = Catalog::new(&config, prices);
        let broker = Broker::new(
            &config.amqp.url,
            Topology::new(&config.amqp.prefix).with_queue_type(config.amqp.queue_type),
        );
        let providers = Providers::from_config(&config)?;
        Ok(Arc::new(Ctx {
            keys: KeyCache::with_admin(pool.clone(), config.admin.key_hash()),
            health: Health::default(),
            breaker_feed: Default::default(),
            rounds: Default::default(),
            publish_marks: Default::default(),
            catalog: RwLock::new(Arc::new(catalog)),
            config,
            pool,
            beat_pool,
            broker,
            providers,
        }))
    }

    /// The current catalog (aliases and prices).
    pub fn catalog(&self) -> Arc<Catalog> {
        self.catalog
            .read()
            .map(|c| c.clone())
            .unwrap_or_else(|p| p.into_inner().clone())
    }

    /// Re-reads prices so rows added to the `prices` table take effect without a restart.
    pub async fn refresh_prices(&self) -> Result<(), sqlx::Error> {
        let prices = crate::db::prices::load(&self.pool).await?;
        let catalog = Arc::new(Catalog::new(&self.config, prices));
        match self.catalog.write() {
            Ok(mut c) => *c = catalog,
            Err(p) => *p.into_inner() = catalog,
        }
        Ok(())
    }
}

/// Writes configured budgets to the `budgets` table (run-time `cli` changes win).
async fn seed_budgets(pool: &PgPool, config: &Config) -> Result<(), sqlx::Error> {
    use crate::domain::budget::Scope;
    for (key, b) in &config.budgets.deployments {
        crate::db::budgets::set(pool, &Scope::Deployment(key.clone()), b, "config").await?;
    }
    for (key, b) in &config.budgets.tenants {
        crate::db::budgets::set(pool, &Scope::Tenant(key.clone()), b, "config").await?;
    }
    Ok(())
}

/// Which loops a process runs.
#[derive(Debug, Clone, Copy, Default)]
pub struct Roles {
    pub api: bool,
    pub worker: bool,
    pub ingest: bool,
    pub maintenance: bool,
    /// The webhook delivery loop (`sluice deliver`).
    pub deliver: bool,
    /// Fires scheduled jobs from `jobs/` (any number of processes may run it).
    pub scheduler: bool,
}

impl Roles {
    /// Everything (`sluice up`).
    pub fn all() -> Self {
        Self {
            api: true,
            worker: true,
            ingest: true,
            maintenance: true,
            deliver: true,
            scheduler: true,
        }
    }
}

/// A running sluice: its API address (if any) and the handle that stops it.
#[derive(Debug)]
pub struct Running {
    pub api_addr: Option<std::net::SocketAddr>,
    pub worker_id: String,
    pub ctx: Arc<Ctx>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    heartbeat_stop: CancellationToken,
    heartbeat: Option<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// Stops taking work, lets in-flight work finish, and returns when every loop has ended.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.tracker.close();
        self.tracker.wait().await;
        // Only now, with nothing left in flight, stop proving this worker alive.
        self.heartbeat_stop.cancel();
        if let Some(h) = self.heartbeat {
            let _ = h.await;
        }
    }

    /// Waits until the process is asked to stop (Ctrl-C or SIGTERM), then stops.
    pub async fn run_until_signal(self) {
        wait_for_signal().await;
        tracing::info!("stopping: finishing in-flight work");
        self.stop().await;
        tracing::info!("stopped");
    }

    /// The token that stops this instance (for embedding).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }
}

/// Starts the given roles on `ctx`. The API binds `config.server.listen` (port 0 picks one).
pub async fn start(ctx: Arc<Ctx>, roles: Roles) -> anyhow::Result<Running> {
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();
    let worker_id = crate::ids::new_id("wrk");
    let heartbeat_stop = CancellationToken::new();
    let mut heartbeat = None;
    // Built before any role starts (client set-up takes a moment), so a process that is
    // already taking work is also ready to handle a stop signal.
    let deliverer = match roles.deliver {
        true => Some(crate::webhooks::deliver::Deliverer::new(
            ctx.pool.clone(),
            ctx.config.webhooks.clone(),
            worker_id.clone(),
        )?),
        false => None,
    };
    let mut api_addr = None;
    if roles.api {
        let listener = TcpListener::bind(ctx.config.listen_addr())
            .await
            .map_err(|e| {
                anyhow::anyhow!(
                    "cannot listen on {}: {e} (set server.listen or SLUICE_LISTEN)",
                    ctx.config.server.listen
                )
            })?;
        api_addr = Some(listener.local_addr()?);
        let router = crate::api::router(ctx.clone(), worker_id.clone());
        serve_supervised(&tracker, &ctx, "api", &shutdown, listener, router)?;
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "breaker_feed", &shutdown, move || {
            c.breaker_feed.clone().run(c.clone(), stop.clone())
        });
        let (c, id, stop) = (ctx.clone(), worker_id.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "sync_admit", &shutdown, move || {
            c.rounds.run_admit(c.clone(), id.clone(), stop.clone())
        });
        let (c, id, stop) = (ctx.clone(), worker_id.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "sync_record", &shutdown, move || {
            c.rounds.run_record(c.clone(), id.clone(), stop.clone())
        });
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "sync_read", &shutdown, move || {
            c.rounds.run_read(c.clone(), stop.clone())
        });
    }
    if !roles.api
        && let Some(addr) = ctx.config.metrics.listen.clone()
    {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics.listen: {e}"))?;
        tracing::info!(addr = %listener.local_addr()?, "serving /metrics and /readyz");
        let router = crate::api::ops_router(ctx.clone());
        serve_supervised(&tracker, &ctx, "metrics", &shutdown, listener, router)?;
    }
    // The API registers too: it claims the jobs of synchronous chat completions.
    if roles.worker || roles.maintenance || roles.api {
        crate::db::maintenance::register_worker(
            &ctx.beat_pool,
            &worker_id,
            &hostname(),
            std::process::id(),
        )
        .await?;
        let (c, id, stop) = (ctx.clone(), worker_id.clone(), heartbeat_stop.clone());
        heartbeat = Some(tokio::spawn(supervise(
            ctx.health.clone(),
            "heartbeat",
            heartbeat_stop.clone(),
            move || {
                crate::worker::maintenance::heartbeat(
                    c.clone(),
                    id.clone(),
                    hostname(),
                    stop.clone(),
                )
            },
        )));
    }
    if roles.worker {
        let (c, id, stop) = (ctx.clone(), worker_id.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "worker", &shutdown, move || {
            crate::worker::run(c.clone(), id.clone(), stop.clone())
        });
    }
    if roles.ingest {
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "ingest", &shutdown, move || {
            crate::queue::ingest::run(c.clone(), stop.clone())
        });
    }
    if roles.maintenance {
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "maintenance", &shutdown, move || {
            crate::worker::maintenance::run(c.clone(), stop.clone())
        });
        let (c, id, stop) = (ctx.clone(), worker_id.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "batch", &shutdown, move || {
            crate::batch::run(c.clone(), id.clone(), stop.clone())
        });
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "openai_batches", &shutdown, move || {
            crate::openai_batches::run(c.clone(), stop.clone())
        });
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "alerts", &shutdown, move || {
            crate::metrics::alerts_loop(c.clone(), stop.clone())
        });
    }
    if let Some(deliverer) = deliverer {
        let stop = shutdown.clone();
        spawn_supervised(&tracker, &ctx, "deliver", &shutdown, move || {
            deliverer.clone().run(stop.clone())
        });
    }
    if roles.scheduler {
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "scheduler", &shutdown, move || {
            crate::scheduler::run(c.clone(), stop.clone())
        });
    }
    if roles.maintenance {
        let (c, stop) = (ctx.clone(), shutdown.clone());
        spawn_supervised(&tracker, &ctx, "retention", &shutdown, move || {
            crate::retention::run(c.clone(), stop.clone())
        });
    }
    // Every role may publish work (the API, ingest, the scheduler, OpenAI batches, retries).
    let (c, stop) = (ctx.clone(), shutdown.clone());
    spawn_supervised(&tracker, &ctx, "publish_marks", &shutdown, move || {
        c.publish_marks.clone().run(c.clone(), stop.clone())
    });
    let (c, stop) = (ctx.clone(), shutdown.clone());
    spawn_supervised(&tracker, &ctx, "prices", &shutdown, move || {
        refresh_prices(c.clone(), stop.clone())
    });
    Ok(Running {
        api_addr,
        worker_id,
        ctx,
        shutdown,
        tracker,
        heartbeat_stop,
        heartbeat,
    })
}

/// Serves `router` on `listener` as the supervised role `name` until `shutdown`. The socket is
/// kept as a std listener so a restarted server listens on the same one.
fn serve_supervised(
    tracker: &TaskTracker,
    ctx: &Ctx,
    name: &'static str,
    shutdown: &CancellationToken,
    listener: TcpListener,
    router: axum::Router,
) -> anyhow::Result<()> {
    let listener = Arc::new(listener.into_std()?);
    let token = shutdown.clone();
    spawn_supervised(tracker, ctx, name, shutdown, move || {
        let (listener, router, token) = (listener.clone(), router.clone(), token.clone());
        async move {
            let listener = match listener.try_clone().and_then(TcpListener::from_std) {
                Ok(l) => l,
                Err(e) => {
                    tracing::error!(role = name, error = %e, "cannot reuse the listener");
                    return;
                }
            };
            let serve = axum::serve(listener, router)
                .with_graceful_shutdown(async move { token.cancelled().await });
            if let Err(e) = serve.await {
                tracing::error!(role = name, error = %e, "server stopped with an error");
            }
        }
    });
    Ok(())
}

/// Starts `make`'s task under the supervisor, tracked so `stop` waits for it.
pub fn spawn_supervised<F, Fut>(
    tracker: &TaskTracker,
    ctx: &Ctx,
    name: &'static str,
    shutdown: &CancellationToken,
    make: F,
) where
    F: Fn() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    tracker.spawn(supervise(ctx.health.clone(), name, shutdown.clone(), make));
}

async fn refresh_prices(ctx: Arc<Ctx>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(60)) => {}
        }
        if let Err(e) = ctx.refresh_prices().await {
            tracing::warn!(error = %e, "could not refresh prices; keeping the ones loaded");
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/etc/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
