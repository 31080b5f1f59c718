//! The `sluice` command line: server roles, admin commands that talk to Postgres directly, and
//! client commands that talk to a running sluice over its HTTP API.

mod audit;
mod batches;
mod budgets;
mod cancel;
mod client;
mod dead_letters;
mod jobs;
mod keys;
mod report;
mod schedules;
mod submit;
mod table;
mod webhooks;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use crate::app::{self, Ctx, Roles};
use crate::config::Config;

/// sluice: a queue-driven batch gateway for LLM APIs.
#[derive(Debug, Parser)]
#[command(name = "sluice", version, about, long_about = None)]
pub struct Cli {
    /// Configuration file (default: the built-in configuration).
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

/// Every subcommand.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run everything in one process: migrations, API, workers, ingest, relay and sweeper.
    Up {
        /// Also start the mock provider and point every provider at it.
        #[arg(long)]
        mock: bool,
        /// Port of the mock provider (with --mock); 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        mock_port: u16,
    },
    /// Run the HTTP API only (plus the relay that publishes recorded jobs).
    Serve,
    /// Run a worker: AMQP ingest, the worker pool and the maintenance loops (and webhook
    /// delivery unless `[webhooks] enabled = false`).
    Worker,
    /// Run webhook delivery only.
    Deliver,
    /// Run the scheduler only: fire scheduled jobs from `jobs/` (any number may run).
    Scheduler {
        /// Folder of schedule files (default: `[scheduler] dir`, `jobs`).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Scheduled jobs: list, validate, next fire times, run now.
    Schedules {
        #[command(subcommand)]
        command: schedules::SchedulesCommand,
    },
    /// Reports for analysts, from the cost views.
    Report {
        #[command(subcommand)]
        command: report::ReportCommand,
    },
    /// Apply database migrations and seed prices, then exit.
    Migrate,
    /// Run the mock provider (OpenAI wire format) for local runs and tests.
    MockProvider {
        #[arg(long, default_value_t = 9090)]
        port: u16,
        /// Address to listen on; 0.0.0.0 exposes it to the network.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
        /// Latency added to every answer, e.g. 50ms.
        #[arg(long, default_value = "0ms", value_parser = parse_duration)]
        latency: Duration,
        /// Fraction of calls answered with a 500, between 0 and 1, rolled per (request, call
        /// number), so retries may succeed.
        #[arg(long, default_value_t = 0.0)]
        error_rate: f64,
        /// Seed of the error-rate roll (the same seed fails the same calls).
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Report this many times sluice's own prompt-token estimate, e.g. 1.3.
        #[arg(long)]
        usage_skew: Option<f64>,
        /// Tokens per minute per model, enforced with 429s and x-ratelimit-* headers.
        #[arg(long)]
        tpm: Option<u64>,
        /// Requests per minute per model.
        #[arg(long)]
        rpm: Option<u64>,
        /// How long a provider batch takes to complete, e.g. 5s.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        batch_delay: Duration,
    },
    /// Manage API keys (talks to Postgres directly).
    Keys {
        #[command(subcommand)]
        command: keys::KeysCommand,
    },
    /// Manage tenants (talks to Postgres directly).
    Tenants {
        #[command(subcommand)]
        command: keys::TenantsCommand,
    },
    /// A tenant's jobs over the API.
    Jobs {
        #[command(subcommand)]
        command: JobsCommand,
    },
    /// A tenant's batches over the API.
    Batches {
        #[command(subcommand)]
        command: BatchesCommand,
    },
    /// Show the audit log of admin actions (talks to Postgres directly).
    Audit {
        /// How far back, e.g. 7d.
        #[arg(long, default_value = "7d", value_parser = parse_duration)]
        since: Duration,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 1000)]
        limit: i64,
    },
    /// Benchmarks (see BENCHMARKS.md); each uses its own database and queues.
    Bench {
        #[command(subcommand)]
        command: crate::bench::BenchCommand,
    },
    /// Show or change shared budgets (talks to Postgres directly).
    Budgets {
        #[command(subcommand)]
        command: budgets::BudgetsCommand,
    },
    /// Enqueue a JSONL file (OpenAI batch input format or sluice's job format).
    Submit(submit::SubmitArgs),
    /// Show a batch's progress, tokens and cost (`batch_…`), or one job's state (`job_…`).
    Status {
        batch_id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Download a batch's finished results as JSONL (partial while it runs).
    Results {
        batch_id: String,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Cancel a job (`job_…`) or every unfinished job of a batch (`batch_…`).
    Cancel {
        id: String,
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Jobs that finally failed: list, show, requeue, purge (talks to Postgres directly).
    DeadLetters {
        #[command(subcommand)]
        command: dead_letters::DeadLettersCommand,
    },
    /// Webhook endpoints: list, add, test, replay, rotate-secret (talks to Postgres directly).
    Webhooks {
        #[command(subcommand)]
        command: webhooks::WebhooksCommand,
    },
}

/// `sluice jobs …`
#[derive(Debug, Subcommand)]
pub enum JobsCommand {
    /// List jobs, newest first, with filters.
    List(jobs::ListArgs),
}

/// `sluice batches …`
#[derive(Debug, Subcommand)]
pub enum BatchesCommand {
    /// List batches (from the OpenAI front door, `POST /v1/jobs`, `sluice submit` and
    /// schedules), newest first, with filters.
    List(batches::ListArgs),
}

/// Where the API is and how to authenticate.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Base URL of a running sluice.
    #[arg(long, env = "SLUICE_API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,
    /// Tenant API key (`sk-sluice-…`).
    #[arg(long, env = "SLUICE_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("`{s}` is not a duration like 50ms or 2s: {e}"))
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let load = || Config::load(cli.config.as_deref()).context("loading configuration");
    match cli.command {
        Command::Up { mock, mock_port } => {
            let mut config = load()?;
            crate::db::create_if_missing(&config.database).await?;
            if mock {
                let m = crate::mock::start(
                    SocketAddr::from(([127, 0, 0, 1], mock_port)),
                    Default::default(),
                )
                .await?;
                config.point_providers_at(&m.base_url());
                tracing::info!(url = %m.base_url(), "mock provider started; every provider points at it");
            }
            let deliver = config.webhooks.enabled;
            serve_roles(
                config,
                Roles {
                    deliver,
                    ..Roles::all()
                },
            )
            .await
        }
        Command::Serve => {
            serve_roles(
                load()?,
                Roles {
                    api: true,
                    maintenance: true,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Worker => {
            let config = load()?;
            let deliver = config.webhooks.enabled;
            serve_roles(
                config,
                Roles {
                    worker: true,
                    ingest: true,
                    maintenance: true,
                    deliver,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Deliver => {
            serve_roles(
                load()?,
                Roles {
                    deliver: true,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Scheduler { dir } => {
            let mut config = load()?;
            if let Some(d) = dir {
                config.scheduler.dir = d;
            }
            serve_roles(
                config,
                Roles {
                    scheduler: true,
                    ..Default::default()
                },
            )
            .await
        }
        Command::Schedules { command } => schedules::run(load()?, command).await,
        Command::Report { command } => report::run(&load()?, command).await,
        Command::Migrate => {
            let config = load()?;
            crate::db::create_if_missing(&config.database).await?;
            admin_pool(&config).await?;
            eprintln!("migrations applied and prices seeded");
            Ok(())
        }
        Command::MockProvider {
            port,
            host,
            latency,
            error_rate,
            seed,
            usage_skew,
            tpm,
            rpm,
            batch_delay,
        } => {
            if !(0.0..=1.0).contains(&error_rate) {
                anyhow::bail!("--error-rate must be between 0 and 1, got {error_rate}");
            }
            if let Some(k) = usage_skew
                && !(k.is_finite() && (0.0..=100.0).contains(&k))
            {
                anyhow::bail!("--usage-skew must be a factor between 0 and 100, e.g. 1.3, got {k}");
            }
            let m = crate::mock::start(
                SocketAddr::new(host, port),
                crate::mock::MockSettings {
                    latency,
                    error_rate,
                    seed,
                    usage_skew,
                    tpm,
                    rpm,
                    batch_delay,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("cannot listen on port {port}; pick another with --port"))?;
            eprintln!(
                "mock provider listening on http://{} (OpenAI base URL http://{}/v1)",
                m.addr, m.addr
            );
            app::wait_for_signal().await;
            Ok(())
        }
        Command::Keys { command } => keys::run_keys(&load()?, command).await,
        Command::Tenants { command } => keys::run_tenants(&load()?, command).await,
        Command::Audit {
            since,
            format,
            limit,
        } => audit::run(&load()?, since, &format, limit).await,
        Command::Bench { command } => crate::bench::run(load()?, command).await,
        Command::Budgets { command } => budgets::run(&load()?, command).await,
        Command::Submit(args) => submit::submit(args).await,
        Command::Status { batch_id, api } if batch_id.starts_with("job_") => {
            jobs::status(&api, &batch_id).await
        }
        Command::Status { batch_id, api } => client::status(&api, &batch_id).await,
        Command::Jobs {
            command: JobsCommand::List(args),
        } => jobs::list(&args).await,
        Command::Batches {
            command: BatchesCommand::List(args),
        } => batches::list(&args).await,
        Command::Results {
            batch_id,
            output,
            api,
        } => client::results(&api, &batch_id, output).await,
        Command::Cancel { id, api } => cancel::cancel(&api, &id).await,
        Command::DeadLetters { command } => dead_letters::run(&load()?, command).await,
        Command::Webhooks { command } => webhooks::run(&load()?, command).await,
    }
}

/// Makes a closed standard output (`sluice results … | head`) end the program quietly with
/// status 0 instead of a panic message: `println!` panics on a broken pipe, and this hook
/// recognises that panic and exits.
pub fn quiet_broken_pipe() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if message.contains("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(0);
        }
        default(info);
    }));
}

/// Whether `e` is a write to a closed pipe.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// A migrated, seeded pool for admin commands (no broker, no providers).
pub(crate) async fn admin_pool(config: &Config) -> anyhow::Result<sqlx::PgPool> {
    let pool = crate::db::connect(&config.database).await?;
    crate::db::migrate(&pool).await?;
    crate::db::prices::seed(
        &pool,
        &crate::domain::pricing::PriceBook::seed_rows(&config.prices),
    )
    .await?;
    Ok(pool)
}

async fn serve_roles(config: Config, roles: Roles) -> anyhow::Result<()> {
    let ctx = Ctx::connect(config).await?;
    let running = app::start(ctx, roles).await?;
    if let Some(addr) = running.api_addr {
        tracing::info!(%addr, "sluice API listening");
        eprintln!("sluice API listening on http://{addr}");
    }
    running.run_until_signal().await;
    Ok(())
}
