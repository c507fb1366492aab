//! What the cases share: jobs, workers, report batches and uploads, made
//! through the store's own methods only (no SQL), so that every backend runs
//! the very same cases.

use std::time::Duration;

use camp_proto::spec::{DeviceRequest, Stage};
use camp_proto::{JobResult, JobSpec};
use camp_server::store::*;
use sha2::{Digest, Sha256};
use tokio::sync::broadcast;
use uuid::Uuid;

/// A lease no case outlives.
pub const LONG: Duration = Duration::from_secs(600);
/// A lease that has run out by the time `past_short_lease` returns.
pub const SHORT: Duration = Duration::from_millis(1);

/// Sleeps past a `SHORT` lease (with room for a coarse clock).
pub async fn past_short_lease() {
    tokio::time::sleep(Duration::from_millis(30)).await;
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn spec() -> JobSpec {
    JobSpec { dataset: "cifar10".into(), epochs: 2, ..JobSpec::default() }
}

pub fn stage_spec(stage: Stage) -> JobSpec {
    JobSpec { epochs: 1, ..JobSpec::defaults_for(stage) }
}

pub fn new_job(owner: &str, name: &str, priority: i32) -> NewJob {
    NewJob { name: name.into(), owner: owner.into(), spec: spec(), priority, max_attempts: 3, request: None }
}

pub async fn submit(s: &dyn Store, job: NewJob) -> Job {
    s.submit_job(job).await.unwrap()
}

/// Submits a plain cifar10 job on any device and returns its id.
pub async fn submit_as(s: &dyn Store, owner: &str, name: &str, priority: i32) -> i64 {
    submit(s, new_job(owner, name, priority)).await.id
}

pub async fn submit_on(s: &dyn Store, device: DeviceRequest, dataset: &str, priority: i32) -> i64 {
    let spec = JobSpec { device, dataset: dataset.into(), ..spec() };
    submit(s, NewJob { spec, ..new_job("ada", &format!("{} on {dataset}", device.as_str()), priority) }).await.id
}

pub fn new_worker(name: &str, device: &str, datasets: &[&str]) -> NewWorker {
    NewWorker {
        name: name.into(),
        hostname: format!("{name}.example"),
        device_kind: device.into(),
        gpus: Vec::new(),
        datasets: datasets.iter().map(|d| d.to_string()).collect(),
        labels: serde_json::json!({}),
        devices: 1,
    }
}

/// Registers a worker under a session of its own and returns its id.
pub async fn worker(s: &dyn Store, name: &str, device: &str, datasets: &[&str]) -> Uuid {
    let session = sha256_hex(format!("session of {name} {}", Uuid::new_v4()).as_bytes());
    s.register_worker(new_worker(name, device, datasets), &session, None).await.unwrap()
}

/// A cpu worker with cifar10.
pub async fn cpu_worker(s: &dyn Store, name: &str) -> Uuid {
    worker(s, name, "cpu", &["cifar10"]).await
}

pub async fn claim_with(s: &dyn Store, w: Uuid, lease: Duration) -> Option<Claimed> {
    s.claim(w, lease, ClaimPolicy::default()).await.unwrap()
}

/// Claims on a long lease, with no cap.
pub async fn claim(s: &dyn Store, w: Uuid) -> Option<Claimed> {
    claim_with(s, w, LONG).await
}

pub async fn claimed_id(s: &dyn Store, w: Uuid, policy: ClaimPolicy) -> Option<i64> {
    s.claim(w, LONG, policy).await.unwrap().map(|c| c.job.id)
}

/// The fencing token of what `w` claimed.
pub fn lease_of(c: &Claimed, w: Uuid) -> LeaseRef {
    LeaseRef { worker: w, job_id: c.job.id, attempt: c.job.attempt }
}

pub async fn finish(s: &dyn Store, at: LeaseRef, outcome: Outcome, message: &str) {
    s.finish(at, outcome, message, None).await.unwrap()
}

/// Lets a claim on a `SHORT` lease run out and reaps it.
pub async fn lose_lease(s: &dyn Store) -> Vec<Reaped> {
    past_short_lease().await;
    s.reap_expired_leases().await.unwrap()
}

pub fn result(best_top1: f64) -> JobResult {
    JobResult { best_top1, energy_table: "t".into(), ..Default::default() }
}

pub fn metric(name: &str, step: i64, value: f64) -> MetricPoint {
    MetricPoint { name: name.into(), value, step, epoch: 1 }
}

pub fn batch(at: LeaseRef, sequence: u64, metrics: Vec<MetricPoint>, log_lines: &[&str]) -> ReportBatch {
    ReportBatch { at, sequence, metrics, log_lines: log_lines.iter().map(|l| l.to_string()).collect(), epoch: 0 }
}

/// One `loss` point per step.
pub fn losses(steps: std::ops::RangeInclusive<i64>) -> Vec<MetricPoint> {
    steps.map(|step| metric("loss", step, 1.0 / (step + 1) as f64)).collect()
}

/// (attempt, name, step) of each of a job's stored metrics, in stored order.
pub async fn metric_rows(s: &dyn Store, job_id: i64) -> Vec<(u32, String, i64)> {
    s.metrics(job_id, None, None, 0, 1000).await.unwrap().into_iter().map(|m| (m.attempt, m.point.name, m.point.step)).collect()
}

pub async fn log_lines(s: &dyn Store, job_id: i64) -> Vec<String> {
    s.logs(job_id, 0, 1000).await.unwrap().into_iter().map(|l| l.line).collect()
}

pub fn header(at: LeaseRef, step: i64, top1: Option<f64>, bytes: &[u8]) -> NewCheckpoint {
    NewCheckpoint {
        at,
        epoch: step as u32,
        step,
        sha256: sha256_hex(bytes),
        size: bytes.len() as u64,
        top1,
        metadata: serde_json::json!({ "step": step }),
    }
}

/// Begins an upload and puts `bytes` in 4-byte chunks; not committed.
pub async fn begin_upload(s: &dyn Store, at: LeaseRef, step: i64, top1: Option<f64>, bytes: &[u8]) -> i64 {
    let upload = s.begin_checkpoint(header(at, step, top1, bytes)).await.unwrap();
    for (idx, chunk) in bytes.chunks(4).enumerate() {
        s.put_checkpoint_chunk(upload, idx as u32, chunk).await.unwrap();
    }
    upload
}

/// Uploads and commits a checkpoint of `bytes`.
pub async fn upload(s: &dyn Store, at: LeaseRef, step: i64, top1: Option<f64>, bytes: &[u8], retention: Retention) -> Checkpoint {
    let upload = begin_upload(s, at, step, top1, bytes).await;
    s.commit_checkpoint(at, upload, retention).await.unwrap()
}

/// A checkpoint's bytes, read back chunk by chunk.
pub async fn read_back(s: &dyn Store, id: i64) -> Vec<u8> {
    let mut bytes = Vec::new();
    for (idx, size) in s.checkpoint_chunk_sizes(id).await.unwrap().into_iter().enumerate() {
        bytes.extend(s.checkpoint_slice(id, idx as u32, 0, size).await.unwrap());
    }
    bytes
}

pub async fn checkpoint_ids(s: &dyn Store, job_id: i64) -> Vec<i64> {
    s.checkpoints(job_id).await.unwrap().into_iter().map(|c| c.id).collect()
}

pub fn node(key: &str, stage: Stage, after: &[&str], init_from: Option<&str>) -> NewNode {
    NewNode {
        key: key.into(),
        name: format!("node {key}"),
        spec: stage_spec(stage),
        after: after.iter().map(|k| k.to_string()).collect(),
        init_from: init_from.map(Into::into),
        priority: 0,
    }
}

/// A pipeline of baseline nodes, each waiting for the keys it names.
pub fn chain(owner: &str, name: &str, edges: &[(&str, &[&str])]) -> NewPipeline {
    NewPipeline {
        name: name.into(),
        owner: owner.into(),
        nodes: edges.iter().map(|(key, after)| node(key, Stage::Baseline, after, None)).collect(),
        max_attempts: 3,
        request: None,
    }
}

/// The id of the experiment's job at node `key`.
pub fn id_of(experiment: &Experiment, key: &str) -> i64 {
    experiment.jobs.iter().find(|j| j.node == key).unwrap_or_else(|| panic!("no node {key}")).id
}

pub async fn state(s: &dyn Store, id: i64) -> JobState {
    s.get_job(id).await.unwrap().state
}

/// Waits (at most 5 s) until every change in `want` has come, in any order; other changes are skipped.
pub async fn expect_changes(rx: &mut broadcast::Receiver<Change>, want: &[Change], after: &str) {
    let mut missing = want.to_vec();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while !missing.is_empty() {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(change)) => {
                if let Some(i) = missing.iter().position(|m| *m == change) {
                    missing.remove(i);
                }
            }
            Ok(Err(e)) => panic!("after {after}: the change feed failed: {e}"),
            Err(_) => panic!("after {after}: {missing:?} never came (5 s)"),
        }
    }
}

/// Checks that no change about job `id` comes within `within`.
pub async fn expect_silence_about(rx: &mut broadcast::Receiver<Change>, id: i64, within: Duration, after: &str) {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Ok(Change::Job(j))) if j == id => panic!("after {after}: the feed announced a change to job {id}"),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("after {after}: the change feed failed: {e}"),
            Err(_) => return,
        }
    }
}
