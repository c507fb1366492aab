//! `camp-server`: the coordinator binary, and its admin commands (tokens).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use camp_server::api::transfer::TransferLimits;
use camp_server::auth::{self, Access};
use camp_server::net::{self, ConnectionLimits};
use camp_server::ops;
use camp_server::store::{ClaimPolicy, Credential, Location, MetricRetention, NewCredential, Retention, Role, Store};
use camp_server::tls::TlsFiles;
use camp_server::web::DashboardListener;
use camp_server::{serve_with_dashboard, Settings};
use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "camp-server",
    version,
    about = "camp's coordinator: jobs, metrics and checkpoints in SQLite or PostgreSQL, served over gRPC"
)]
struct Cli {
    /// Address to serve gRPC on. Without --require-auth it must be a loopback address (or --insecure-listen).
    #[arg(long, env = "CAMP_LISTEN", default_value = "127.0.0.1:50051")]
    listen: String,
    /// Where jobs, metrics and checkpoints are kept: postgres://… (a lab cluster, several
    /// coordinators) or sqlite://PATH (one machine). Unset: sqlite://$XDG_DATA_HOME/camp/camp.db.
    /// Migrations are applied at start.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
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
    /// Serve Prometheus metrics (`GET /metrics`, plain HTTP, no credentials) on this address, e.g.
    /// 127.0.0.1:9464. Off by default; keep it on loopback or a network only the scraper reaches.
    #[arg(long, env = "CAMP_METRICS_LISTEN", value_name = "ADDR")]
    metrics_listen: Option<String>,
    /// Serve the dashboard (web pages: jobs, experiments, workers, live charts) on this address,
    /// e.g. 127.0.0.1:8080. Same credentials as the gRPC API; HTTPS with --tls-cert. Off by default.
    #[arg(long, env = "CAMP_HTTP_LISTEN", value_name = "ADDR")]
    http_listen: Option<String>,
    /// Seconds between readings of the queue's gauges (queued, running, live workers) for /metrics.
    #[arg(long, default_value_t = 5.0)]
    metrics_every_secs: f64,
    /// Once a job has ended, thin each of its step-level metric series (loss, top1, lr,
    /// images_per_s) to at most this many points: the first, the last and evenly spaced
    /// steps between. Epoch-level metrics are always kept whole. 0 keeps every point.
    #[arg(long, default_value_t = MetricRetention::DEFAULT_POINTS)]
    metric_points_per_series: u32,
    #[command(flatten)]
    security: Security,
    #[command(flatten)]
    limits: Limits,
    #[command(subcommand)]
    command: Option<Command>,
}

/// Who may connect and what they may do (README: "Securing a cluster").
#[derive(Args)]
struct Security {
    /// Require an API token (`authorization: Bearer`) on every call: user or admin tokens for
    /// JobService, worker tokens for WorkerService.
    #[arg(long, env = "CAMP_REQUIRE_AUTH")]
    require_auth: bool,
    /// Listen on a non-loopback address without --require-auth (anyone who reaches it can act as anyone).
    #[arg(long)]
    insecure_listen: bool,
    /// Only a job's owner and admins may read it (show, metrics, logs, checkpoints, results, watch).
    #[arg(long, env = "CAMP_PRIVATE_JOBS")]
    private_jobs: bool,
    /// The highest priority a user who is not an admin may give a job.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    max_user_priority: i32,
    /// At most this many running jobs per user (unset: no cap).
    #[arg(long)]
    max_running_per_user: Option<u32>,
    /// PEM certificate chain to serve TLS with.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// PEM CA of the workers' client certificates: WorkerService calls then need one (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    tls_client_ca: Option<PathBuf>,
}

/// Bounds on what callers may make the coordinator hold.
#[derive(Args)]
struct Limits {
    /// Largest checkpoint a worker may upload, in MiB.
    #[arg(long, default_value_t = 512)]
    max_checkpoint_mib: u64,
    /// Open connections at most (also bounded by the process's file limit).
    #[arg(long, default_value_t = 4096)]
    max_connections: usize,
    /// Open connections from one address at most.
    #[arg(long, default_value_t = 512)]
    max_connections_per_ip: usize,
    /// Seconds a connection may stay silent before it is closed (it is pinged every 20 s, or every half of this if shorter).
    #[arg(long, default_value_t = 60.0)]
    idle_timeout_secs: f64,
    /// Seconds a checkpoint upload or download may stall before it is dropped.
    #[arg(long, default_value_t = 60.0)]
    stream_idle_secs: f64,
    /// Concurrent calls on one connection at most.
    #[arg(long, default_value_t = 128)]
    max_streams_per_connection: u32,
    /// Checkpoint uploads in progress at once, at most.
    #[arg(long, default_value_t = 32)]
    max_uploads: usize,
    /// Checkpoint downloads in progress at once, at most.
    #[arg(long, default_value_t = 1024)]
    max_downloads: usize,
}

#[derive(Subcommand)]
enum Command {
    /// Make an API token (printed once; only its hash is stored), or list and revoke tokens.
    Token(TokenArgs),
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
struct TokenArgs {
    #[command(subcommand)]
    action: Option<TokenAction>,
    #[command(flatten)]
    new: NewToken,
}

/// `token --user U [--admin]` or `token --worker [--name N]`.
#[derive(Args)]
struct NewToken {
    /// A token for this user.
    #[arg(long, conflicts_with = "worker")]
    user: Option<String>,
    /// The user is an admin: may act on any job and use any priority.
    #[arg(long, requires = "user")]
    admin: bool,
    /// A token for worker daemons (WorkerService only).
    #[arg(long)]
    worker: bool,
    /// The worker credential's name (shown in `token list`).
    #[arg(long, requires = "worker", default_value = "worker")]
    name: String,
    /// How long the token stays valid: 90d, 12h, 30m (default: until revoked).
    #[arg(long)]
    expires: Option<String>,
}

#[derive(Subcommand)]
enum TokenAction {
    /// List every token: id, role, name, when it was made, expires, was revoked.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token (by the id `token list` shows); it is refused from the next call on.
    Revoke { id: i64 },
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
    let location = match &cli.database_url {
        Some(url) => Location::parse(url).context("--database-url")?,
        None => Location::default_sqlite(),
    };
    if let Some(Command::Token(args)) = &cli.command {
        let store = location.open_for_admin().await.with_context(|| format!("opening {location}"))?;
        return token(store.as_ref(), args).await;
    }
    let store: Arc<dyn Store> = location.open().await.with_context(|| format!("opening {location}"))?;
    tracing::info!(store = %location, "state kept in");
    let mut settings = settings(&cli)?;
    if let Some(addr) = &cli.metrics_listen {
        let every = positive_secs("metrics-every-secs", cli.metrics_every_secs)?;
        let (metrics_listener, bound) = ops::metrics::bind(addr).await.with_context(|| format!("binding --metrics-listen {addr}"))?;
        let handle = ops::metrics::install().context("installing the Prometheus recorder")?;
        if !bound.ip().is_loopback() {
            tracing::warn!(%bound, "/metrics is served without credentials to anyone who reaches {bound}");
        }
        tracing::info!(addr = %bound, "metrics at http://{bound}/metrics");
        tokio::spawn(ops::metrics::serve(metrics_listener, handle));
        settings.gauges_every = Some(every);
    }
    let listener = tokio::net::TcpListener::bind(&cli.listen).await.with_context(|| format!("binding --listen {}", cli.listen))?;
    let addr = listener.local_addr()?;
    check_exposure(&cli.security, addr, settings.tls.is_some())?;
    tracing::info!(
        %addr,
        lease = ?settings.lease,
        auth = settings.require_auth,
        tls = settings.tls.is_some(),
        mutual_tls = settings.require_client_cert,
        private_jobs = settings.access.private_jobs,
        "camp-server listening"
    );
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down");
    };
    let dashboard = match &cli.http_listen {
        Some(addr) => Some(dashboard_listener(&cli, addr).await?),
        None => None,
    };
    serve_with_dashboard(store, settings, listener, dashboard, shutdown).await?;
    Ok(())
}

fn settings(cli: &Cli) -> anyhow::Result<Settings> {
    let s = &cli.security;
    let l = &cli.limits;
    anyhow::ensure!(
        cli.metric_points_per_series != 1,
        "--metric-points-per-series must be 0 (keep all) or at least 2 (the first and the last)"
    );
    anyhow::ensure!(l.max_checkpoint_mib >= 1, "--max-checkpoint-mib must be at least 1");
    anyhow::ensure!(
        l.max_connections >= 1 && l.max_connections_per_ip >= 1,
        "--max-connections and --max-connections-per-ip must be at least 1"
    );
    anyhow::ensure!(l.max_uploads >= 1 && l.max_downloads >= 1 && l.max_streams_per_connection >= 1, "stream limits must be at least 1");
    let fd_room = net::raise_fd_limit() as usize;
    if fd_room < l.max_connections {
        tracing::warn!(max_connections = fd_room, asked = l.max_connections, "the open-file limit caps the connections");
    }
    let tls_files = s.tls_cert.clone().zip(s.tls_key.clone()).map(|(cert, key)| TlsFiles { cert, key, client_ca: s.tls_client_ca.clone() });
    let tls = tls_files.as_ref().map(TlsFiles::server_config).transpose()?;
    Ok(Settings {
        lease: positive_secs("lease-secs", cli.lease_secs)?,
        reap_every: positive_secs("reap-every-secs", cli.reap_every_secs)?,
        retention: Retention { keep_latest: cli.keep_latest.max(1), keep_best: !cli.no_keep_best },
        metric_retention: MetricRetention { points_per_series: (cli.metric_points_per_series > 0).then_some(cli.metric_points_per_series) },
        require_auth: s.require_auth,
        access: Access { private_jobs: s.private_jobs, max_user_priority: s.max_user_priority },
        claims: ClaimPolicy { max_running_per_user: s.max_running_per_user },
        transfers: TransferLimits {
            max_checkpoint_bytes: l.max_checkpoint_mib << 20,
            max_uploads: l.max_uploads,
            max_downloads: l.max_downloads,
            idle: positive_secs("stream-idle-secs", l.stream_idle_secs)?,
        },
        connections: ConnectionLimits {
            max_connections: l.max_connections.min(fd_room.max(1)),
            max_per_ip: l.max_connections_per_ip,
            idle: positive_secs("idle-timeout-secs", l.idle_timeout_secs)?,
        },
        max_streams_per_connection: l.max_streams_per_connection,
        tls,
        require_client_cert: s.tls_client_ca.is_some(),
        ..Settings::default()
    })
}

/// The dashboard's listener: bound now (a taken port fails at start), exposed
/// only as the gRPC listener may be, over HTTPS when the coordinator has a certificate.
async fn dashboard_listener(cli: &Cli, addr: &str) -> anyhow::Result<DashboardListener> {
    let listener = tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding --http-listen {addr}"))?;
    let bound = listener.local_addr()?;
    let s = &cli.security;
    let files = s.tls_cert.clone().zip(s.tls_key.clone()).map(|(cert, key)| TlsFiles { cert, key, client_ca: None });
    let tls = files.as_ref().map(TlsFiles::dashboard_config).transpose()?.map(Arc::new);
    check_exposure(s, bound, tls.is_some()).context("--http-listen")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    tracing::info!(addr = %bound, "dashboard at {scheme}://{bound}/");
    Ok(DashboardListener { listener, tls })
}

/// Without --require-auth callers name themselves: such a coordinator serves
/// its own machine only, unless told otherwise.
fn check_exposure(s: &Security, addr: SocketAddr, tls: bool) -> anyhow::Result<()> {
    let loopback = addr.ip().is_loopback();
    if !s.require_auth {
        if !loopback && !s.insecure_listen {
            anyhow::bail!(
                "--listen {addr}: without --require-auth the coordinator listens on loopback only \
                 (anyone who reached it could act as anyone); add --require-auth (and TLS), or --insecure-listen"
            );
        }
        if loopback {
            tracing::info!("no --require-auth: loopback only, callers name themselves (x-camp-user)");
        } else {
            tracing::warn!("--insecure-listen: anyone who can reach {addr} can act as any user and as a worker");
        }
    } else if !tls && !loopback {
        tracing::warn!("--require-auth without TLS on {addr}: tokens cross the network in clear (add --tls-cert/--tls-key)");
    }
    Ok(())
}

async fn token(store: &dyn Store, args: &TokenArgs) -> anyhow::Result<()> {
    match &args.action {
        Some(TokenAction::List { json }) => {
            let all = store.list_credentials().await?;
            if *json {
                let rows: Vec<_> = all.iter().map(credential_json).collect();
                println!("{}", serde_json::to_string_pretty(&rows)?);
            } else {
                println!("{:>5}  {:<6}  {:<24}  {:<20}  {:<20}  REVOKED", "ID", "ROLE", "NAME", "CREATED", "EXPIRES");
                for c in &all {
                    let at =
                        |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.format("%Y-%m-%d %H:%M").to_string()).unwrap_or("-".into());
                    println!(
                        "{:>5}  {:<6}  {:<24}  {:<20}  {:<20}  {}",
                        c.id,
                        c.role.as_str(),
                        c.name,
                        at(Some(c.created_at)),
                        at(c.expires_at),
                        at(c.revoked_at)
                    );
                }
            }
        }
        Some(TokenAction::Revoke { id }) => {
            let c = store.revoke_credential(*id).await?;
            eprintln!("revoked token {} ({} {})", c.id, c.role.as_str(), c.name);
        }
        None => {
            let n = &args.new;
            let (role, name) = match (&n.user, n.worker) {
                (Some(user), false) => (if n.admin { Role::Admin } else { Role::User }, user.clone()),
                (None, true) => (Role::Worker, n.name.clone()),
                _ => anyhow::bail!("say who the token is for: --user NAME [--admin], or --worker [--name NAME]"),
            };
            let flag = if role == Role::Worker { "--name" } else { "--user" };
            camp_proto::limits::check_principal(&name)
                .map_err(|e| anyhow::anyhow!("{flag} '{}': {e}", camp_proto::limits::excerpt(&name)))?;
            let expires_at = match &n.expires {
                Some(text) => {
                    let d = auth::parse_expiry(text)?;
                    Some(chrono::Utc::now() + chrono::Duration::from_std(d).context("--expires: too far away")?)
                }
                None => None,
            };
            let token = auth::new_token();
            let c = store.create_credential(NewCredential { role, name, token_sha256: auth::token_sha256(&token), expires_at }).await?;
            eprintln!("token {} for {} {} (shown once; `camp-server token revoke {}` ends it)", c.id, c.role.as_str(), c.name, c.id);
            println!("{token}");
        }
    }
    Ok(())
}

fn credential_json(c: &Credential) -> serde_json::Value {
    serde_json::json!({
        "id": c.id,
        "role": c.role.as_str(),
        "name": c.name,
        "created_at": c.created_at.to_rfc3339(),
        "expires_at": c.expires_at.map(|t| t.to_rfc3339()),
        "revoked_at": c.revoked_at.map(|t| t.to_rfc3339()),
    })
}
