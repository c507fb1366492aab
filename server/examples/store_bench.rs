//! Store throughput, SQLite next to PostgreSQL on the same machine in one run:
//! submissions (16 concurrent submitters), claims from a deep queue (concurrent
//! workers, each claim followed by its `Finish`), and metric ingest (report
//! batches of 1,000 points). It calls the store seam directly, so the figures
//! are the backends', not gRPC's. Bounded in count; PostgreSQL gets a fresh
//! database (dropped at the end) on the server in `DATABASE_URL`.
//!
//!   cargo run --release -p camp-server --example store_bench -- [JOBS] [CLAIMERS] [BATCHES] [sqlite|postgres|both] [POINTS]
//!   (defaults: 5000 jobs, 50 claimers, 100 batches of POINTS = 1,000 points, both)

use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::JobSpec;
use camp_server::store::{
    AttemptRef, ClaimPolicy, LeaseRef, MetricPoint, NewJob, NewWorker, Outcome, PgStore, ReportBatch, SqliteStore, Store,
};
use sqlx::postgres::PgPoolOptions;
use sqlx::Connection;

const SUBMITTERS: usize = 16;
const LEASE: Duration = Duration::from_secs(600);

fn arg(i: usize, default: usize) -> usize {
    std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

/// Points in each report batch (the fifth argument).
fn points_per_batch() -> usize {
    arg(5, 1_000).max(1)
}

fn worker(name: &str) -> NewWorker {
    NewWorker {
        name: name.into(),
        hostname: "bench".into(),
        device_kind: "cpu".into(),
        gpus: vec![],
        datasets: vec!["cifar10".into()],
        labels: serde_json::json!({}),
        devices: 1,
    }
}

struct Figures {
    submit_per_s: f64,
    claim_per_s: f64,
    claim_p50_ms: f64,
    claim_p99_ms: f64,
    points_per_s: f64,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted.get(((sorted.len() as f64 - 1.0) * p).round() as usize).copied().unwrap_or(f64::NAN)
}

async fn run(store: Arc<dyn Store>, jobs: usize, claimers: usize, batches: usize) -> Figures {
    let spec = JobSpec { device: camp_proto::spec::DeviceRequest::Any, ..JobSpec::default() };
    // Submissions.
    let started = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..SUBMITTERS {
        let (store, spec) = (store.clone(), spec.clone());
        let n = jobs / SUBMITTERS + usize::from(s < jobs % SUBMITTERS);
        tasks.push(tokio::spawn(async move {
            for i in 0..n {
                let owner = format!("user{}", (s + i) % 8);
                let job = NewJob { name: format!("j{s}-{i}"), owner, spec: spec.clone(), priority: 0, max_attempts: 3, request: None };
                store.submit_job(job).await.expect("submit");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let submit_per_s = jobs as f64 / started.elapsed().as_secs_f64();

    // Claims: every claimer takes a job and finishes it, until `jobs / 2` are done.
    let target = jobs / 2;
    let claimed = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..claimers {
        let (store, claimed) = (store.clone(), claimed.clone());
        tasks.push(tokio::spawn(async move {
            let id = store.register_worker(worker(&format!("w{c}")), &format!("session-{c}"), None).await.expect("register");
            let mut latencies = Vec::new();
            while claimed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) < target {
                let t = Instant::now();
                let got = store.claim(id, LEASE, ClaimPolicy::default()).await.expect("claim").expect("a job");
                latencies.push(t.elapsed().as_secs_f64() * 1e3);
                let at = LeaseRef { worker: id, job_id: got.job.id, attempt: got.job.attempt };
                store.finish(at, Outcome::Succeeded, "", None).await.expect("finish");
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    let claim_per_s = target as f64 / started.elapsed().as_secs_f64();
    latencies.sort_by(|a, b| a.total_cmp(b));

    // Metric ingest: one running job per reporter, batches of `points_per_batch()` points.
    let points_per_batch = points_per_batch();
    let id = store.register_worker(worker("reporter"), "session-reporter", None).await.expect("register");
    let mut running = Vec::new();
    for _ in 0..4 {
        let got = store.claim(id, LEASE, ClaimPolicy::default()).await.unwrap().unwrap();
        running.push(LeaseRef { worker: id, job_id: got.job.id, attempt: got.job.attempt });
    }
    let started = Instant::now();
    let mut tasks = Vec::new();
    for (r, at) in running.iter().copied().enumerate() {
        let store = store.clone();
        let n = batches / running.len() + usize::from(r < batches % running.len());
        tasks.push(tokio::spawn(async move {
            for b in 0..n {
                let metrics = (0..points_per_batch)
                    .map(|i| MetricPoint { name: "train_loss".into(), value: i as f64, step: (b * points_per_batch + i) as i64, epoch: 1 })
                    .collect();
                let batch = ReportBatch { at, sequence: b as u64, metrics, log_lines: vec!["a line".into()], epoch: 0 };
                assert!(store.report(batch).await.expect("report"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let points_per_s = (batches * points_per_batch) as f64 / started.elapsed().as_secs_f64();
    let refs: Vec<AttemptRef> = running.iter().map(|r| AttemptRef { job_id: r.job_id, attempt: r.attempt }).collect();
    assert!(store.heartbeat(id, &refs, LEASE).await.unwrap().lost.is_empty(), "the reporters' leases held");
    Figures {
        submit_per_s,
        claim_per_s,
        claim_p50_ms: percentile(&latencies, 0.5),
        claim_p99_ms: percentile(&latencies, 0.99),
        points_per_s,
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let (jobs, claimers, batches) = (arg(1, 5_000), arg(2, 50), arg(3, 100));
    println!(
        "store_bench: {jobs} jobs submitted by {SUBMITTERS}, {} claimed+finished by {claimers} workers, {batches} batches of {} points",
        jobs / 2,
        points_per_batch()
    );
    let mut rows = Vec::new();

    let backends = std::env::args().nth(4).unwrap_or_else(|| "both".into());
    let dir = tempfile::tempdir()?;
    if backends != "postgres" {
        let sqlite: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("camp.db")).await?);
        rows.push(("sqlite (temp file)", run(sqlite, jobs, claimers, batches).await));
    }
    if backends == "sqlite" {
        print_rows(rows);
        return Ok(());
    }

    let base = std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
    let db = format!("camp_bench_{}", std::process::id());
    let mut admin = sqlx::PgConnection::connect(&base).await?;
    sqlx::query(&format!("CREATE DATABASE {db}")).execute(&mut admin).await?;
    let url = format!("{}/{db}", base.rsplit_once('/').map_or(base.as_str(), |(root, _)| root));
    let pool = PgPoolOptions::new().max_connections(16).connect(&url).await?;
    let pg: Arc<dyn Store> = Arc::new(PgStore::from_pool(pool.clone()).await?);
    rows.push(("postgres (local)", run(pg, jobs, claimers, batches).await));
    pool.close().await;
    sqlx::query(&format!("DROP DATABASE {db} WITH (FORCE)")).execute(&mut admin).await?;

    print_rows(rows);
    Ok(())
}

fn print_rows(rows: Vec<(&str, Figures)>) {
    println!("{:<20} {:>12} {:>12} {:>12} {:>12} {:>14}", "backend", "submit/s", "claim/s", "claim p50", "claim p99", "points/s");
    for (name, f) in rows {
        println!(
            "{name:<20} {:>12.0} {:>12.0} {:>10.1}ms {:>10.1}ms {:>14.0}",
            f.submit_per_s, f.claim_per_s, f.claim_p50_ms, f.claim_p99_ms, f.points_per_s
        );
    }
}
