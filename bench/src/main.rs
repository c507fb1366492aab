//! `camp-bench`: issue 12's load benchmark. It starts against a running
//! coordinator on this machine (loopback only: the CPU figures are read from
//! /proc), drives it with fake workers and submitters over the gRPC contract,
//! and prints one row per figure: throughput, p50/p99, and the CPU the
//! coordinator and PostgreSQL spent meanwhile. Every scenario is bounded in
//! count. Run it against a coordinator of its own (no real workers: they
//! would take the bench's jobs); `scripts/bench-load.sh` starts one.

mod dashboard;
mod fleet;
mod procstat;
mod scenarios;
mod stats;

use std::time::Duration;

use clap::Parser;

use scenarios::Row;

#[derive(Parser)]
#[command(name = "camp-bench", about = "Load benchmark of a camp coordinator (loopback)")]
struct Cli {
    /// The coordinator (loopback), e.g. 127.0.0.1:50051.
    #[arg(long, env = "CAMP_ADDR", default_value = "127.0.0.1:50051")]
    addr: String,
    /// The coordinator's PostgreSQL database, for its transaction counts and `--analyze`.
    #[arg(long)]
    database_url: Option<String>,
    /// The coordinator's Prometheus endpoint (http://HOST:PORT/metrics), for its claim-query count.
    #[arg(long)]
    metrics_url: Option<String>,
    /// A worker credential and a user token when the coordinator runs with --require-auth.
    #[arg(long, env = "CAMP_TOKEN")]
    token: Option<String>,
    /// Scenarios to run, in order (default: all).
    #[arg(long, value_delimiter = ',', default_value = "claims,heartbeats,wakeups,ingest,latency")]
    only: Vec<String>,
    /// The coordinator's dashboard (http://HOST:PORT), for the `dashboard` scenario.
    #[arg(long)]
    dashboard_url: Option<String>,
    /// Jobs in the store and points in the long series of the `dashboard` scenario.
    #[arg(long, default_value_t = 10_000)]
    dashboard_jobs: usize,
    #[arg(long, default_value_t = 1_000_000)]
    dashboard_points: usize,
    /// Jobs in the deep queue of the claims row.
    #[arg(long, default_value_t = 20_000)]
    jobs: usize,
    /// Concurrent claimers of the claims row.
    #[arg(long, default_value_t = 50)]
    claimers: usize,
    /// ANALYZE the database between the burst and the claims (needs --database-url).
    #[arg(long)]
    analyze: bool,
    /// Workers of the heartbeat and wake-up rows.
    #[arg(long, default_value_t = 1_000)]
    fleet: usize,
    /// Seconds the fleet heartbeats.
    #[arg(long, default_value_t = 10)]
    heartbeat_secs: u64,
    /// Jobs submitted to the idle pollers, one every --wakeup-every-ms.
    #[arg(long, default_value_t = 20)]
    wakeup_jobs: usize,
    #[arg(long, default_value_t = 500)]
    wakeup_every_ms: u64,
    /// Batches per ingest stream (4 streams; rows for 1,000 and 100 points a batch).
    #[arg(long, default_value_t = 100)]
    ingest_batches: usize,
    /// Jobs timed from submission to claim.
    #[arg(long, default_value_t = 200)]
    latency_jobs: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let host = cli.addr.trim_start_matches("http://").rsplit_once(':').map_or(cli.addr.as_str(), |(h, _)| h);
    anyhow::ensure!(
        matches!(host, "127.0.0.1" | "localhost" | "[::1]"),
        "--addr: camp-bench measures a coordinator on this machine (loopback only)"
    );
    let conns = fleet::Connections::open(&cli.addr, cli.fleet.max(cli.claimers) + 16, cli.token.clone()).await?;
    let db = stats::Database::connect(cli.database_url.as_deref(), cli.metrics_url.clone()).await?;
    println!(
        "camp-bench against {} ({})",
        cli.addr,
        if cli.database_url.is_some() { "PostgreSQL counters on" } else { "no database counters" }
    );
    for scenario in &cli.only {
        let rows: Vec<Row> = match scenario.as_str() {
            "claims" => scenarios::submit_and_claims(&conns, &db, cli.jobs, cli.claimers, cli.analyze).await?,
            "heartbeats" => scenarios::heartbeats(&conns, cli.fleet, cli.heartbeat_secs).await?,
            "wakeups" => scenarios::wakeups(&conns, &db, cli.fleet, cli.wakeup_jobs, Duration::from_millis(cli.wakeup_every_ms)).await?,
            "ingest" => {
                let mut rows = scenarios::ingest(&conns, 4, cli.ingest_batches, 1_000).await?;
                rows.extend(scenarios::ingest(&conns, 4, cli.ingest_batches * 3, 100).await?);
                rows
            }
            "latency" => scenarios::submit_to_start(&conns, cli.latency_jobs).await?,
            "dashboard" => {
                let url = cli.dashboard_url.as_deref().ok_or_else(|| anyhow::anyhow!("--only dashboard needs --dashboard-url"))?;
                dashboard::dashboard(&conns, url.trim_end_matches('/'), cli.token.as_deref(), cli.dashboard_jobs, cli.dashboard_points)
                    .await?
            }
            other => anyhow::bail!("--only: unknown scenario {other:?} (claims, heartbeats, wakeups, ingest, latency, dashboard)"),
        };
        for row in rows {
            println!("| {} | {} | {} |", row.figure, row.value, row.target);
            if let Some(cpu) = row.cpu {
                println!("|   cpu | coordinator {:.0}%, database {:.0}% of one core |  |", cpu.coordinator, cpu.database);
            }
        }
    }
    Ok(())
}
