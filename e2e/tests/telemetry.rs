//! Metrics at scale, through the real binaries: a `camp watch` that outlives a
//! coordinator killed and started again, a job of two million points read
//! (`camp metrics`, all pages or `--last`) and watched at once, and an ended
//! job's step-level series thinned by the coordinator's retention.
//!
//! The worker's side is played by hand over gRPC (register, claim, report,
//! finish), so that the points are known exactly and stored fast.

use std::ops::RangeInclusive;
use std::process::Command;
use std::time::{Duration, Instant};

use camp_e2e::grpc::{self, Headers, Jobs, Workers};
use camp_e2e::{bin, Cluster, Proc};
use camp_proto::metadata;
use camp_proto::v1;
use serde_json::Value;
use sqlx::PgPool;

const USER: &str = "tester";

/// A worker played by hand: registered, holding one claimed job.
struct HandWorker {
    session: String,
    workers: Workers,
    job: i64,
    attempt: u32,
    sequence: u64,
}

impl HandWorker {
    /// Registers, submits a job as `USER` and claims it.
    async fn start(addr: &str) -> HandWorker {
        let submit = v1::SubmitJobRequest { spec: Some(grpc::tiny_spec(500)), name: "many points".into(), ..Default::default() };
        let claimed = grpc::register_and_claim(grpc::channel(addr).await, "hand", Headers::user(USER), submit).await;
        let grpc::HandClaimed { workers, session, job, assignment } = claimed;
        HandWorker { session, workers, job: job.id, attempt: assignment.attempt, sequence: 0 }
    }

    /// Talks to the coordinator again on a new connection (after it restarted), as the same worker.
    async fn reconnect(&mut self, addr: &str) {
        self.workers = grpc::workers(grpc::channel(addr).await, Headers::default().with(metadata::SESSION, &self.session));
    }

    fn batch(&mut self, metrics: Vec<v1::Metric>, log_lines: Vec<String>) -> v1::ReportBatch {
        self.sequence += 1;
        v1::ReportBatch { job_id: self.job, attempt: self.attempt, sequence: self.sequence, metrics, log_lines, epoch: 1 }
    }

    /// Reports one batch: the points and one log line naming the batch.
    async fn report(&mut self, metrics: Vec<v1::Metric>) {
        let line = format!("batch {}", self.sequence + 1);
        let batch = self.batch(metrics, vec![line]);
        let reply = self.workers.report(futures::stream::iter(vec![batch])).await.expect("Report").into_inner();
        assert_eq!(reply.stored, 1);
    }

    async fn finish(&mut self) {
        let request =
            v1::FinishRequest { job_id: self.job, attempt: self.attempt, outcome: v1::Outcome::Succeeded as i32, ..Default::default() };
        self.workers.finish(request).await.expect("Finish");
    }
}

fn jobs(channel: tonic::transport::Channel) -> Jobs {
    grpc::jobs(channel, Headers::user(USER))
}

fn point(name: &str, step: i64, epoch: u32) -> v1::Metric {
    v1::Metric { name: name.into(), value: 1.0 / (step + 1) as f64, step, epoch, ..Default::default() }
}

fn losses(steps: RangeInclusive<i64>) -> Vec<v1::Metric> {
    steps.map(|step| point("loss", step, 1)).collect()
}

/// `camp ARGS` as `USER`, with its wall time.
fn camp_timed(c: &Cluster, args: &[&str]) -> (std::process::Output, Duration) {
    let started = Instant::now();
    let out = Command::new(bin("camp")).args(["--addr", &c.addr, "--user", USER]).args(args).output().unwrap();
    let took = started.elapsed();
    assert!(out.status.success(), "camp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    (out, took)
}

/// The JSON events a `camp watch --json` printed so far (its notes on stderr are skipped).
fn watch_events(watch: &Proc) -> Vec<Value> {
    watch.log_text().lines().filter(|l| l.starts_with('{')).map(|l| serde_json::from_str(l).expect("an NDJSON line")).collect()
}

fn watched_steps(watch: &Proc) -> Vec<i64> {
    watch_events(watch).iter().filter(|e| e["event"] == "metric").map(|e| e["metric"]["step"].as_i64().unwrap()).collect()
}

fn wait_until(what: &str, within: Duration, mut done: impl FnMut() -> bool, log: impl Fn() -> String) {
    let deadline = Instant::now() + within;
    while !done() {
        assert!(Instant::now() < deadline, "waited {within:?} for {what}:\n{}", log());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[sqlx::test(migrations = false)]
async fn a_watch_outlives_a_coordinator_restart_and_ends_with_the_jobs_success(pool: PgPool) {
    let mut c = Cluster::start(&pool, 30.0);
    let mut worker = HandWorker::start(&c.addr).await;
    let id = worker.job.to_string();
    worker.report(losses(1..=50)).await;

    let watch_cmd = {
        let mut cmd = Command::new(bin("camp"));
        cmd.args(["--addr", &c.addr, "--user", USER, "watch", &id, "--json"]);
        cmd
    };
    let mut watch = Proc::spawn("camp-watch", watch_cmd, c.dir.path());
    wait_until("the watch's first point", Duration::from_secs(20), || watched_steps(&watch).contains(&50), || watch.log_text());
    assert_eq!(watched_steps(&watch), [50], "a watch starts from the latest point");
    worker.report(losses(51..=60)).await;
    wait_until("step 60", Duration::from_secs(20), || watched_steps(&watch).contains(&60), || watch.log_text());

    c.server.signal("KILL");
    c.server.wait_exit(Duration::from_secs(10));
    std::thread::sleep(Duration::from_millis(600));
    assert!(watch.child.try_wait().unwrap().is_none(), "the watch waits for the coordinator:\n{}", watch.log_text());
    c.restart_server(&[]);
    // Points stored while the watch is still away must reach it (no gap).
    worker.reconnect(&c.addr).await;
    worker.report(losses(61..=70)).await;
    wait_until("step 70 after the restart", Duration::from_secs(30), || watched_steps(&watch).contains(&70), || watch.log_text());
    worker.report(losses(71..=80)).await;
    worker.finish().await;

    let status = watch.wait_exit(Duration::from_secs(30));
    let log = watch.log_text();
    assert!(status.success(), "the watch ends with the job's success, not the restart: {status}\n{log}");
    let expected: Vec<i64> = std::iter::once(50).chain(51..=80).collect();
    assert_eq!(watched_steps(&watch), expected, "every point once, none skipped:\n{log}");
    let lines: Vec<String> =
        watch_events(&watch).iter().filter(|e| e["event"] == "log").map(|e| e["log"]["line"].as_str().unwrap().to_string()).collect();
    assert_eq!(lines, ["batch 2", "batch 3", "batch 4"], "log lines after the start, each once");
    let events = watch_events(&watch);
    let states: Vec<&str> = events.iter().filter(|e| e["event"] == "job").filter_map(|e| e["job"]["state"].as_str()).collect();
    assert_eq!(states.last(), Some(&"succeeded"));
    assert!(log.contains("reconnecting") && log.contains("reconnected"), "it says what it did:\n{log}");
}

/// Series of the scale test: four step-level series of `STEPS` points each, and an epoch-level one.
const STEP_SERIES: [&str; 4] = ["loss", "top1", "lr", "images_per_s"];
const STEPS: i64 = 500_000;
const STEPS_PER_EPOCH: i64 = 1_000;
const BATCH_STEPS: i64 = 2_000;

/// Report batch `b` of the run (sequence `b + 1`): `BATCH_STEPS` steps of the four
/// step series (8,000 points) and the test_top1 of the epochs that end in it.
fn scale_batch(job_id: i64, attempt: u32, b: i64) -> v1::ReportBatch {
    let mut metrics = Vec::with_capacity((BATCH_STEPS * 4 + 3) as usize);
    for step in b * BATCH_STEPS + 1..=(b + 1) * BATCH_STEPS {
        let epoch = ((step - 1) / STEPS_PER_EPOCH + 1) as u32;
        metrics.extend(STEP_SERIES.iter().map(|name| point(name, step, epoch)));
        if step % STEPS_PER_EPOCH == 0 {
            metrics.push(point("test_top1", step, epoch));
        }
    }
    v1::ReportBatch { job_id, attempt, sequence: b as u64 + 1, metrics, log_lines: Vec::new(), epoch: 1 }
}

#[sqlx::test(migrations = false)]
async fn two_million_points_are_read_a_page_at_a_time_and_a_watch_of_them_starts_at_once(pool: PgPool) {
    let c = Cluster::start_with(&pool, 3_600.0, &["--metric-points-per-series", "0"]);
    let mut worker = HandWorker::start(&c.addr).await;
    let id = worker.job.to_string();
    let total = STEPS * 4 + STEPS / STEPS_PER_EPOCH;

    let started = Instant::now();
    let (job_id, attempt) = (worker.job, worker.attempt);
    // Built as they are sent: one batch in memory at a time.
    let batches = futures::stream::iter((0..STEPS / BATCH_STEPS).map(move |b| scale_batch(job_id, attempt, b)));
    let stored = worker.workers.report(batches).await.expect("Report").into_inner().stored;
    worker.sequence = (STEPS / BATCH_STEPS) as u64;
    let ingest = started.elapsed();
    assert_eq!(stored as i64, STEPS / BATCH_STEPS);
    println!("ingest: {total} points in {:.1} s ({:.0} points/s)", ingest.as_secs_f64(), total as f64 / ingest.as_secs_f64());

    let (out, took) = camp_timed(&c, &["metrics", &id, "--last", "3", "--json"]);
    let newest: Value = serde_json::from_slice(&out.stdout).unwrap();
    let newest: Vec<(&str, i64)> =
        newest.as_array().unwrap().iter().map(|m| (m["name"].as_str().unwrap(), m["step"].as_i64().unwrap())).collect();
    println!("camp metrics --last 3: {} points in {:.3} s", newest.len(), took.as_secs_f64());
    assert_eq!(newest.len(), 3 * 5, "the newest 3 of each of 5 series");
    for name in STEP_SERIES {
        let steps: Vec<i64> = newest.iter().filter(|(n, _)| *n == name).map(|(_, s)| *s).collect();
        assert_eq!(steps, [STEPS - 2, STEPS - 1, STEPS], "{name}");
    }
    assert!(took < Duration::from_secs(10), "--last took {took:?}");

    let (out, took) = camp_timed(&c, &["metrics", &id, "--since", &(STEPS - 99).to_string(), "--csv"]);
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    println!("camp metrics --since: {} points in {:.3} s", lines - 1, took.as_secs_f64());
    assert_eq!(lines as i64, 1 + 100 * 4 + 1, "the header, 100 steps of 4 series and one epoch point");

    let (out, took) = camp_timed(&c, &["metrics", &id, "--csv"]);
    let lines = out.stdout.iter().filter(|&&b| b == b'\n').count();
    println!("camp metrics (every page): {} points in {:.1} s", lines - 1, took.as_secs_f64());
    assert_eq!(lines as i64, 1 + total, "every point, once");
    let last_line = String::from_utf8_lossy(&out.stdout[out.stdout.len() - 200..]).lines().last().unwrap_or_default().to_string();
    assert!(last_line.contains(&format!(",{STEPS},test_top1,")), "the last page ends with the last point stored: {last_line}");

    // Ten watchers of the running job: each gets the job, where rows begin and each series' newest point at once.
    let rss_before = c.server_rss_mib();
    let channel = grpc::channel(&c.addr).await;
    let mut streams = Vec::new();
    let mut firsts = Vec::new();
    for _ in 0..10 {
        let started = Instant::now();
        let mut stream =
            jobs(channel.clone()).watch_job(v1::WatchJobRequest { id: worker.job, ..Default::default() }).await.unwrap().into_inner();
        let mut events = Vec::new();
        while events.len() < 2 + 5 {
            let event =
                tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("events within 10 s").unwrap().unwrap();
            events.push(event.event.unwrap());
        }
        firsts.push(started.elapsed());
        assert!(matches!(events[0], v1::job_event::Event::Job(_)) && matches!(events[1], v1::job_event::Event::Start(_)));
        let snapshot: Vec<(String, i64)> = events[2..]
            .iter()
            .map(|e| match e {
                v1::job_event::Event::Metric(m) => (m.name.clone(), m.step),
                other => panic!("a snapshot point, not {other:?}"),
            })
            .collect();
        assert!(snapshot.iter().all(|(_, step)| *step == STEPS), "{snapshot:?}");
        streams.push(stream);
    }
    let rss_after = c.server_rss_mib();
    println!(
        "watch: job, start and snapshot in {:.3} s (first) .. {:.3} s (slowest of 10); coordinator RSS {rss_before:.0} -> {rss_after:.0} MiB",
        firsts[0].as_secs_f64(),
        firsts.iter().max().unwrap().as_secs_f64()
    );
    assert!(rss_after - rss_before < 100.0, "ten watchers hold no job's metrics: {rss_before:.0} -> {rss_after:.0} MiB");
    drop(streams);

    worker.finish().await;
    let (out, took) = camp_timed(&c, &["watch", &id, "--json"]);
    let events = String::from_utf8_lossy(&out.stdout).lines().count();
    println!("camp watch of the finished job: {events} events in {:.3} s", took.as_secs_f64());
    assert!(events < 20, "a watch starts from the latest point, not the two million before it");
    assert!(took < Duration::from_secs(10));
}

#[sqlx::test(migrations = false)]
async fn an_ended_jobs_step_series_are_thinned_and_its_epoch_metrics_kept(pool: PgPool) {
    let c = Cluster::start_with(&pool, 30.0, &["--metric-points-per-series", "100"]);
    let mut worker = HandWorker::start(&c.addr).await;
    let id = worker.job.to_string();
    let mut points = Vec::new();
    for step in 1..=1_000 {
        let epoch = ((step - 1) / 100 + 1) as u32;
        points.extend([point("loss", step, epoch), point("lr", step, epoch)]);
        if step % 100 == 0 {
            points.push(point("test_top1", step, epoch));
        }
    }
    worker.report(points).await;
    let count = |name: &str| -> Vec<i64> {
        let out =
            Command::new(bin("camp")).args(["--addr", &c.addr, "--user", USER, "metrics", &id, "--name", name, "--json"]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let rows: Value = serde_json::from_slice(&out.stdout).unwrap();
        rows.as_array().unwrap().iter().map(|m| m["step"].as_i64().unwrap()).collect()
    };
    std::thread::sleep(Duration::from_millis(600));
    assert_eq!(count("loss").len(), 1_000, "a running job keeps every point");

    worker.finish().await;
    wait_until("retention", Duration::from_secs(20), || count("loss").len() == 100, || c.server.log_text());
    let loss = count("loss");
    assert_eq!((loss[0], loss[99]), (1, 1_000), "the first and the last step stay");
    assert_eq!(count("lr").len(), 100);
    assert_eq!(count("test_top1"), (1..=10).map(|e| e * 100).collect::<Vec<_>>(), "epoch-level metrics are all kept");
}
