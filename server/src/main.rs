//! `camp-server`: the coordinator binary.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use camp_server::store::{PgStore, Retention, Store};
use camp_server::{auth, serve, Settings};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "camp-server", version, about = "camp's coordinator: jobs, metrics and checkpoints in PostgreSQL, served over gRPC")]
struct Cli {
    /// Address to serve gRPC on.
    #[arg(long, env = "CAMP_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// PostgreSQL URL; migrations are applied at start.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    /// Seconds a claim or heartbeat keeps a job leased to a worker.
    #[arg(long, env = "CAMP_LEASE_SECS", default_value_t = 30.0)]
    lease_secs: f64,
    /// Seconds between looks for expired leases.
    #[arg(long, default_value_t = 1.0)]
    reap_every_secs: f64,
    /// Checkpoints kept per job besides the best one.
    #[arg(long, default_value_t = 2)]
    keep_latest: u32,
    /// Do not keep the best checkpoint beyond the latest ones.
    #[arg(long)]
    no_keep_best: bool,
    /// Require an API token (`authorization: Bearer`) on every call.
    #[arg(long, env = "CAMP_REQUIRE_AUTH")]
    require_auth: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Make an API token for a user; prints it once (only its hash is stored).
    Token {
        #[arg(long)]
        user: String,
    },
}

fn positive_secs(name: &str, secs: f64) -> anyhow::Result<Duration> {
    anyhow::ensure!(secs.is_finite() && secs > 0.0, "--{name} must be a positive number of seconds, got {secs}");
    Ok(Duration::from_secs_f64(secs))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let settings = Settings {
        lease: positive_secs("lease-secs", cli.lease_secs)?,
        reap_every: positive_secs("reap-every-secs", cli.reap_every_secs)?,
        retention: Retention { keep_latest: cli.keep_latest.max(1), keep_best: !cli.no_keep_best },
        require_auth: cli.require_auth,
    };
    let store: Arc<dyn Store> =
        Arc::new(PgStore::connect(&cli.database_url).await.context("connecting to PostgreSQL (--database-url)")?);

    if let Some(Command::Token { user }) = cli.command {
        let token = auth::new_token();
        store.create_token(&user, &auth::token_sha256(&token)).await?;
        println!("{token}");
        return Ok(());
    }

    let listener = tokio::net::TcpListener::bind(&cli.listen).await.with_context(|| format!("binding --listen {}", cli.listen))?;
    tracing::info!(addr = %listener.local_addr()?, lease = ?settings.lease, "camp-server listening");
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    serve(store, settings, listener, shutdown).await?;
    Ok(())
}
