//! `sluice budgets show|set|clear`: shared limits, read and changed in Postgres directly (admin).

use clap::{Args, Subcommand};
use rust_decimal::Decimal;

use crate::config::{BudgetSettings, Config};
use crate::db::budgets::{BudgetReport, Limit};
use crate::domain::budget::Scope;

/// `sluice budgets …`
#[derive(Debug, Subcommand)]
pub enum BudgetsCommand {
    /// Show every budget: limit, what is reserved or used in the current window, spend, resets.
    Show {
        /// Only this tenant's budget (and the deployments').
        #[arg(long)]
        tenant: Option<String>,
        /// Output format.
        #[arg(long, default_value = "table", value_parser = ["table", "json"])]
        format: String,
    },
    /// Set limits on a deployment, a tenant or an API key; takes effect at once in every process.
    Set(SetArgs),
    /// Lift limits of a deployment, a tenant or an API key back to unlimited; takes effect at once.
    Clear(ClearArgs),
}

/// What to lift.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["deployment", "tenant", "key"])))]
#[command(group(clap::ArgGroup::new("limits").required(true).multiple(true)
    .args(["tpm", "rpm", "batch_enqueued_tokens", "daily_usd", "monthly_usd"])))]
pub struct ClearArgs {
    /// A deployment, `provider/model`.
    #[arg(long)]
    pub deployment: Option<String>,
    /// A tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// An API key, by its id from `sluice keys list` (`key_…`): its own rpm and tpm.
    #[arg(long)]
    pub key: Option<String>,
    /// Lift the tokens-per-minute limit.
    #[arg(long)]
    pub tpm: bool,
    /// Lift the requests-per-minute limit.
    #[arg(long)]
    pub rpm: bool,
    /// Deployments: lift the limit on prompt tokens enqueued in provider batches.
    #[arg(long)]
    pub batch_enqueued_tokens: bool,
    /// Tenants: lift the USD cap per UTC day.
    #[arg(long)]
    pub daily_usd: bool,
    /// Tenants: lift the USD cap per UTC month.
    #[arg(long)]
    pub monthly_usd: bool,
}

/// What to change.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("scope").required(true).args(["deployment", "tenant", "key"])))]
pub struct SetArgs {
    /// A deployment, `provider/model`.
    #[arg(long)]
    pub deployment: Option<String>,
    /// A tenant.
    #[arg(long)]
    pub tenant: Option<String>,
    /// An API key, by its id from `sluice keys list` (`key_…`): its own rpm and tpm.
    #[arg(long)]
    pub key: Option<String>,
    /// Tokens per minute.
    #[arg(long, allow_negative_numbers = true)]
    pub tpm: Option<i64>,
    /// Requests per minute.
    #[arg(long, allow_negative_numbers = true)]
    pub rpm: Option<i64>,
    /// Deployments: prompt tokens enqueued at once in provider batches.
    #[arg(long, allow_negative_numbers = true)]
    pub batch_enqueued_tokens: Option<i64>,
    /// Tenants: USD cap per UTC day.
    #[arg(long)]
    pub daily_usd: Option<Decimal>,
    /// Tenants: USD cap per UTC month.
    #[arg(long)]
    pub monthly_usd: Option<Decimal>,
    /// Tenants: what happens to a job over a USD cap.
    #[arg(long, value_parser = ["defer", "reject"])]
    pub policy: Option<String>,
    /// Tenants: share of contended capacity, 1 to 100.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=100))]
    pub weight: Option<i32>,
}

/// Runs a budgets command.
pub async fn run(config: &Config, command: BudgetsCommand) -> anyhow::Result<()> {
    let pool = super::admin_pool(config).await?;
    match command {
        BudgetsCommand::Show { tenant, format } => {
            let rows = crate::db::budgets::report(&pool, tenant.as_deref()).await?;
            if format == "json" {
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                print_table(&rows);
                if rows.is_empty() {
                    eprintln!(
                        "no budgets are set; set one with `sluice budgets set --tenant NAME --daily-usd 10` or `sluice budgets set --deployment openai/gpt-4o-mini --tpm 100000`"
                    );
                }
            }
        }
        BudgetsCommand::Set(a) => {
            let scope = scope_of(config, &pool, &a.deployment, &a.tenant, &a.key).await?;
            if matches!(scope, Scope::Key(_))
                && (a.daily_usd.is_some()
                    || a.monthly_usd.is_some()
                    || a.policy.is_some()
                    || a.weight.is_some()
                    || a.batch_enqueued_tokens.is_some())
            {
                anyhow::bail!(
                    "a key has only --rpm and --tpm of its own; USD caps, --policy and --weight apply to its tenant (--tenant)"
                );
            }
            if matches!(scope, Scope::Deployment(_))
                && (a.daily_usd.is_some()
                    || a.monthly_usd.is_some()
                    || a.policy.is_some()
                    || a.weight.is_some())
            {
                anyhow::bail!("USD caps, --policy and --weight apply to tenants; use --tenant");
            }
            for (name, v) in [
                ("--daily-usd", a.daily_usd),
                ("--monthly-usd", a.monthly_usd),
            ] {
                if v.is_some_and(|v| v.is_sign_negative()) {
                    anyhow::bail!("{name} must not be negative (0 stops all spending)");
                }
            }
            for (name, v) in [
                ("--tpm", a.tpm),
                ("--rpm", a.rpm),
                ("--batch-enqueued-tokens", a.batch_enqueued_tokens),
            ] {
                if v.is_some_and(|v| v <= 0) {
                    anyhow::bail!("{name} must be a positive number");
                }
            }
            let settings = BudgetSettings {
                tpm: a.tpm,
                rpm: a.rpm,
                batch_enqueued_tokens: a.batch_enqueued_tokens,
                daily_usd: a.daily_usd,
                monthly_usd: a.monthly_usd,
                policy: a.policy,
                weight: a.weight,
            };
            crate::db::audit::set_budget(&pool, &scope, &settings, &crate::db::audit::cli_actor())
                .await?;
            let (s, k) = scope.parts();
            eprintln!("updated {s} {k}");
            let rows = crate::db::budgets::report(&pool, None).await?;
            print_table(
                &rows
                    .into_iter()
                    .filter(|r| r.scope == s && r.key == k)
                    .collect::<Vec<_>>(),
            );
        }
        BudgetsCommand::Clear(a) => clear(config, &pool, a).await?,
    }
    Ok(())
}

/// The scope named by `--deployment`, `--tenant` or `--key`, which must be configured or exist.
async fn scope_of(
    config: &Config,
    pool: &sqlx::PgPool,
    deployment: &Option<String>,
    tenant: &Option<String>,
    key: &Option<String>,
) -> anyhow::Result<Scope> {
    if let Some(k) = key {
        if k.starts_with(crate::db::tenants::KEY_PREFIX) {
            anyhow::bail!(
                "--key takes the key's id shown by `sluice keys list` (key_…), not the key itself"
            );
        }
        if !crate::db::keys::exists(pool, k).await? {
            anyhow::bail!("no API key with id `{k}` (see `sluice keys list`)");
        }
        return Ok(Scope::Key(k.clone()));
    }
    match (deployment, tenant) {
        (Some(d), _) => {
            let Some(parsed) = crate::domain::catalog::Deployment::parse(d) else {
                anyhow::bail!("--deployment `{d}` is not `provider/model`");
            };
            if !config.providers.contains_key(&parsed.provider) {
                anyhow::bail!(
                    "--deployment `{d}`: no provider `{}` is configured (known: {})",
                    parsed.provider,
                    config
                        .providers
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            Ok(Scope::Deployment(d.clone()))
        }
        (None, Some(t)) => {
            if !crate::db::tenants::exists(pool, t).await? {
                anyhow::bail!(
                    "no tenant `{t}`: create it with `sluice tenants create {t}` (see `sluice tenants list`)"
                );
            }
            Ok(Scope::Tenant(t.clone()))
        }
        (None, None) => anyhow::bail!("name a --deployment, a --tenant or a --key"),
    }
}

/// `sluice budgets clear`: lifts the named limits, audited as `budget.clear`.
async fn clear(config: &Config, pool: &sqlx::PgPool, a: ClearArgs) -> anyhow::Result<()> {
    let scope = scope_of(config, pool, &a.deployment, &a.tenant, &a.key).await?;
    if matches!(scope, Scope::Key(_)) && (a.daily_usd || a.monthly_usd || a.batch_enqueued_tokens) {
        anyhow::bail!("a key has only rpm and tpm of its own; use --rpm or --tpm");
    }
    if matches!(scope, Scope::Deployment(_)) && (a.daily_usd || a.monthly_usd) {
        anyhow::bail!("USD caps apply to tenants; use --tenant");
    }
    let limits: Vec<Limit> = [
        (a.tpm, Limit::Tpm),
        (a.rpm, Limit::Rpm),
        (a.batch_enqueued_tokens, Limit::BatchEnqueuedTokens),
        (a.daily_usd, Limit::DailyUsd),
        (a.monthly_usd, Limit::MonthlyUsd),
    ]
    .into_iter()
    .filter_map(|(on, l)| on.then_some(l))
    .collect();
    let (s, k) = scope.parts();
    if !crate::db::audit::clear_budget(pool, &scope, &limits, &crate::db::audit::cli_actor())
        .await?
    {
        eprintln!("{s} {k} has no budget; nothing to clear (see `sluice budgets show`)");
        return Ok(());
    }
    let names: Vec<&str> = limits.iter().map(|l| l.column()).collect();
    eprintln!("cleared {} of {s} {k}: now unlimited", names.join(", "));
    let rows = crate::db::budgets::report(pool, None).await?;
    print_table(
        &rows
            .into_iter()
            .filter(|r| r.scope == s && r.key == k)
            .collect::<Vec<_>>(),
    );
    Ok(())
}

fn opt<T: ToString>(v: &Option<T>) -> String {
    v.as_ref()
        .map_or_else(|| "-".to_string(), ToString::to_string)
}

fn print_table(rows: &[BudgetReport]) {
    let mut t = super::table::fitted();
    t.set_header([
        "scope",
        "key",
        "tpm",
        "tokens (60s)",
        "rpm",
        "requests (60s)",
        "daily $",
        "monthly $",
        "policy",
        "spent today $",
        "spent month $",
        "in flight $",
        "paused until",
        "window frees",
    ]);
    for r in rows {
        t.add_row([
            r.scope.clone(),
            r.key.clone(),
            opt(&r.tpm),
            r.tokens_in_window.to_string(),
            opt(&r.rpm),
            r.requests_in_window.to_string(),
            opt(&r.daily_usd),
            opt(&r.monthly_usd),
            r.usd_policy.clone(),
            r.spent_today_usd.round_dp(6).to_string(),
            r.spent_month_usd.round_dp(6).to_string(),
            r.held_usd.round_dp(6).to_string(),
            opt(&r.paused_until.map(|p| p.to_rfc3339())),
            r.window_resets_at.to_rfc3339(),
        ]);
    }
    println!("{t}");
}
