//! The coordinator's trust boundary, tested from outside: a real coordinator on
//! a loopback gRPC socket (plaintext or TLS) against a fresh PostgreSQL database
//! per test. Where a call must change nothing, the test reads the database
//! itself (`common::db_state`: row counts of jobs, metrics, job_logs,
//! checkpoints, checkpoint_chunks, ... and every job's row).
//!
//! 1. Glob patterns: thirty `*` then `conv1`, 100,000 `*`, and the most overrides
//!    of the worst longest patterns are matched or refused within a bound (the
//!    times are printed), and the coordinator answers the next request.
//! 2. Foreign writers: with worker A running a job, a second worker B (anonymous,
//!    or with the same worker token as A), a caller without a session (or with a
//!    made-up one, or with A's worker token but no session) and a user token (even
//!    with A's session) cannot Report, UploadCheckpoint, renew the lease by
//!    Heartbeat, Finish or DownloadCheckpoint; the database is unchanged and A
//!    still writes afterwards.
//! 3. Roles (--require-auth): a user token on every WorkerService RPC and a worker
//!    token on every JobService RPC are PERMISSION_DENIED; no token (or an unknown
//!    or malformed one) is UNAUTHENTICATED everywhere; a worker session with
//!    another worker credential is refused; a worker's id sent at Register takes
//!    its row over only with the credential it registered with (anyone else gets a
//!    new row and A keeps its lease); the token, not `x-camp-user`, says who
//!    calls; admins cancel and re-prioritise others' jobs and experiments, users
//!    cannot; priorities above `max_user_priority` need an admin (SubmitJob,
//!    SubmitPipeline nodes, SetJobPriority).
//! 4. Private jobs: another user reads nothing of someone else's job or
//!    experiment (Get, List, Watch, metrics, logs, checkpoints, downloads) nor
//!    starts from its weights; the owner and an admin can. Without private jobs,
//!    reads are open and writes stay with the owner and admins.
//! 5. TLS (a throwaway CA from rcgen): a client with the CA connects; plaintext to
//!    the TLS listener fails; https to a plaintext coordinator fails with a
//!    TLS-ish description; with mutual TLS a worker needs a client certificate
//!    (one from another CA does not do), a user does not.
//! 6. Bad inputs are INVALID_ARGUMENT naming the field, and nothing is stored:
//!    NUL in names, keys, labels, metric names, log lines and messages, and
//!    `\u0000` inside a result's or a checkpoint's JSON; huge job names (9 MB over
//!    the message cap, 3 MB within it); malformed protobuf and invalid UTF-8 (raw
//!    bytes through a real gRPC call); out-of-range epochs and batch sizes; bad
//!    checkpoint headers; a checkpoint of one job named with another's id; page
//!    limits of a million; a bad `x-camp-user`.
//! 7. Expiry and revocation of user and worker tokens take effect on the next call.
//! 8. Fair share and the per-user cap: equal-priority claims alternate between
//!    users; a user at the cap waits (and GetJob says why) while others run; the
//!    cap holds under concurrent claims; other waiting reasons show.
//! 9. Idempotent submission: retried, concurrent and conflicting request ids, for
//!    jobs and pipelines, per user.

mod common;

use std::fmt::Debug;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use camp_proto::endpoint::{describe, endpoint, ClientTls};
use camp_proto::spec::{DeviceRequest, Stage};
use camp_proto::v1::job_service_client::JobServiceClient;
use camp_proto::v1::{self, JobState};
use camp_proto::JobSpec;
use camp_server::auth::Access;
use camp_server::store::{ClaimPolicy, Role};
use camp_server::tls::TlsFiles;
use camp_server::Settings;
use common::*;
use prost::bytes::{Buf, BufMut};
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic::{Code, Status};

// ---------------------------------------------------------------------------
// Shared helpers

/// The call was refused with `code`; returns the status.
#[track_caller]
fn refused<T: Debug>(what: &str, result: Result<T, Status>, code: Code) -> Status {
    match result {
        Ok(v) => panic!("{what}: accepted, expected {code:?}: {v:?}"),
        Err(s) => {
            assert_eq!(s.code(), code, "{what}: {s:?}");
            s
        }
    }
}

/// The call was refused as INVALID_ARGUMENT with a message that names `field` first.
#[track_caller]
fn invalid<T: Debug>(result: Result<T, Status>, field: &str) -> Status {
    let s = refused(field, result, Code::InvalidArgument);
    assert!(s.message().starts_with(&format!("{field}:")), "the message should name {field}: {}", s.message());
    s
}

fn require_auth() -> Settings {
    Settings { require_auth: true, ..Settings::default() }
}

fn qat_spec() -> v1::JobSpec {
    JobSpec { epochs: 1, ..JobSpec::defaults_for(Stage::Qat) }.to_proto()
}

fn sp_spec(init_from: i64) -> v1::JobSpec {
    JobSpec { epochs: 1, init_from, ..JobSpec::defaults_for(Stage::Sp) }.to_proto()
}

fn node(key: &str, spec: v1::JobSpec, after: &[&str], priority: i32) -> v1::PipelineNode {
    v1::PipelineNode {
        key: key.into(),
        name: String::new(),
        spec: Some(spec),
        after: after.iter().map(|s| s.to_string()).collect(),
        init_from: String::new(),
        priority,
    }
}

/// A two-job pipeline (qat, then a baseline after it).
fn pipeline(name: &str) -> v1::SubmitPipelineRequest {
    v1::SubmitPipelineRequest {
        name: name.into(),
        nodes: vec![node("first", qat_spec(), &[], 0), node("second", spec(), &["first"], 0)],
        ..Default::default()
    }
}

async fn submit_pipeline(jobs: &mut Jobs, name: &str) -> v1::Experiment {
    jobs.submit_pipeline(pipeline(name)).await.unwrap().into_inner()
}

/// A job that a worker has claimed and written to: one report batch (a metric
/// and a log line) and one checkpoint.
#[derive(Debug, Clone, Copy)]
struct Running {
    job: i64,
    attempt: u32,
    checkpoint: i64,
}

async fn running(jobs: &mut Jobs, w: &mut Worker, spec: v1::JobSpec) -> Running {
    let job = submit(jobs, spec).await;
    let a = w.claim(0).await.expect("the worker gets the job");
    assert_eq!(a.job_id, job.id);
    w.report(vec![batch(job.id, a.attempt, 0, 1)]).await.unwrap();
    let ckpt = w.upload(job.id, a.attempt, 1, 0.5, b"epoch one weights").await.unwrap();
    Running { job: job.id, attempt: a.attempt, checkpoint: ckpt.id }
}

fn ok_text<T: Debug>(r: Result<tonic::Response<T>, Status>) -> Result<String, Status> {
    r.map(|r| format!("{:?}", r.into_inner()))
}

async fn read_download(r: Result<tonic::Response<tonic::Streaming<v1::CheckpointChunk>>, Status>) -> Result<String, Status> {
    let mut stream = r?.into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        bytes.extend(chunk.data);
    }
    Ok(format!("downloaded {} bytes", bytes.len()))
}

/// What a worker-side caller tried against a running job.
struct Attempts {
    /// Heartbeat answers: a caller that may heartbeat learns the job is lost.
    heartbeat: Result<v1::HeartbeatResponse, Status>,
    /// Every other call, by RPC name.
    others: Vec<(&'static str, Result<String, Status>)>,
}

/// Every write a worker makes about `r` (Report, UploadCheckpoint, Heartbeat,
/// Finish with each outcome) and reads of its checkpoint, from `client`.
async fn worker_writes(client: &mut Workers, r: Running) -> Attempts {
    let mut others = Vec::new();
    let report = client.report(futures::stream::iter(vec![batch(r.job, r.attempt, 7, 70)])).await;
    others.push(("Report", ok_text(report)));
    let bytes = b"foreign weights";
    let chunks = vec![
        v1::UploadChunk { header: Some(header(r.job, r.attempt, 2, 0.9, bytes)), data: vec![] },
        v1::UploadChunk { header: None, data: bytes.to_vec() },
    ];
    others.push(("UploadCheckpoint", ok_text(client.upload_checkpoint(futures::stream::iter(chunks)).await)));
    for outcome in [v1::Outcome::Succeeded, v1::Outcome::Failed, v1::Outcome::Released] {
        let finish = client
            .finish(v1::FinishRequest {
                job_id: r.job,
                attempt: r.attempt,
                outcome: outcome as i32,
                message: "mine now".into(),
                result: Some(v1::JobResult { best_top1: 0.99, ..Default::default() }),
            })
            .await;
        others.push(("Finish", ok_text(finish)));
    }
    let by_id = client.download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id: r.checkpoint, ..Default::default() }).await;
    others.push(("DownloadCheckpoint (by id)", read_download(by_id).await));
    let latest =
        client.download_checkpoint(v1::DownloadCheckpointRequest { job_id: r.job, which: "latest".into(), ..Default::default() }).await;
    others.push(("DownloadCheckpoint (latest)", read_download(latest).await));
    // Last, and after a pause, so that a renewal would move lease_expires_at.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let heartbeat = client
        .heartbeat(v1::HeartbeatRequest { worker_id: String::new(), jobs: vec![v1::RunningJob { job_id: r.job, attempt: r.attempt }] })
        .await
        .map(|r| r.into_inner());
    Attempts { heartbeat, others }
}

/// Every call of `attempts` was refused with one of `codes`.
#[track_caller]
fn all_refused(who: &str, attempts: &[(&'static str, Result<String, Status>)], codes: &[Code]) {
    for (rpc, result) in attempts {
        match result {
            Ok(v) => panic!("{who}: {rpc} was accepted: {v}"),
            Err(s) => assert!(codes.contains(&s.code()), "{who}: {rpc} refused with {:?}, expected one of {codes:?}: {s:?}", s.code()),
        }
    }
}

/// A's own writes go through after the refusals: a batch, a heartbeat, a checkpoint, the finish.
async fn owner_still_writes(a: &mut Worker, jobs: &mut Jobs, r: Running) {
    let reply = a.report(vec![batch(r.job, r.attempt, 1, 2)]).await.unwrap();
    assert_eq!(reply.stored, 1, "A's next batch is stored");
    let hb = a.heartbeat(&[(r.job, r.attempt)]).await.unwrap();
    assert!(hb.lost.is_empty(), "A still holds its job: {hb:?}");
    a.upload(r.job, r.attempt, 2, 0.6, b"epoch two weights").await.unwrap();
    assert_eq!(a.download(r.checkpoint).await.unwrap(), b"epoch one weights");
    a.finish(r.job, r.attempt, v1::Outcome::Succeeded).await.unwrap();
    let job = get(jobs, r.job).await;
    assert_eq!(job.state, JobState::Succeeded as i32);
    assert_eq!(job.result.map(|r| r.best_top1), Some(0.5), "A's result, not a foreign one");
}

/// Ids a call of every RPC names (all of them real, so that a call that got
/// through would succeed).
#[derive(Debug, Clone, Copy)]
struct Targets {
    run: Running,
    experiment: i64,
}

/// Every JobService RPC, with requests that would succeed from an allowed caller.
async fn every_job_rpc(jobs: &mut Jobs, t: Targets) -> Vec<(&'static str, Result<String, Status>)> {
    let job = t.run.job;
    let mut out = Vec::new();
    out.push(("SubmitJob", ok_text(jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() }).await)));
    out.push(("GetJob", ok_text(jobs.get_job(v1::GetJobRequest { id: job }).await)));
    out.push(("ListJobs", ok_text(jobs.list_jobs(v1::ListJobsRequest::default()).await)));
    out.push(("SetJobPriority", ok_text(jobs.set_job_priority(v1::SetJobPriorityRequest { id: job, priority: 0 }).await)));
    out.push((
        "WatchJob",
        jobs.watch_job(v1::WatchJobRequest { id: job, history: true, ..Default::default() }).await.map(|_| "a stream".to_string()),
    ));
    out.push(("QueryMetrics", ok_text(jobs.query_metrics(v1::QueryMetricsRequest { job_id: job, ..Default::default() }).await)));
    out.push(("GetLogs", ok_text(jobs.get_logs(v1::GetLogsRequest { job_id: job, ..Default::default() }).await)));
    out.push(("ListCheckpoints", ok_text(jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job }).await)));
    let download = jobs.download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id: t.run.checkpoint, ..Default::default() }).await;
    out.push(("DownloadCheckpoint", read_download(download).await));
    out.push(("ListWorkers", ok_text(jobs.list_workers(v1::ListWorkersRequest {}).await)));
    out.push(("SubmitPipeline", ok_text(jobs.submit_pipeline(pipeline("p")).await)));
    out.push(("GetExperiment", ok_text(jobs.get_experiment(v1::GetExperimentRequest { id: t.experiment }).await)));
    out.push(("ListExperiments", ok_text(jobs.list_experiments(v1::ListExperimentsRequest { limit: 0, ..Default::default() }).await)));
    out.push(("CancelExperiment", ok_text(jobs.cancel_experiment(v1::CancelExperimentRequest { id: t.experiment }).await)));
    out.push(("CancelJob", ok_text(jobs.cancel_job(v1::CancelJobRequest { id: job }).await)));
    assert_eq!(out.len(), 15, "JobService has 15 RPCs");
    out
}

fn register_request(name: &str) -> v1::RegisterRequest {
    v1::RegisterRequest {
        name: name.into(),
        hostname: "test".into(),
        device_kind: "cpu".into(),
        datasets: vec!["cifar10".into()],
        ..Default::default()
    }
}

/// Every WorkerService RPC, with requests that would succeed from the worker holding `t`.
async fn every_worker_rpc(client: &mut Workers, t: Targets) -> Vec<(&'static str, Result<String, Status>)> {
    let mut out = Vec::new();
    out.push(("Register", ok_text(client.register(register_request("intruder")).await)));
    out.push(("Claim", ok_text(client.claim(v1::ClaimRequest { worker_id: String::new(), wait_ms: 0 }).await)));
    let attempts = worker_writes(client, t.run).await;
    out.push(("Heartbeat", attempts.heartbeat.map(|hb| format!("{hb:?}"))));
    out.extend(attempts.others);
    out
}

/// A --require-auth coordinator (with `settings`'s other fields), users alice
/// (user) and root (admin), a worker credential, worker A registered with it and
/// running alice's job, and alice's experiment.
struct Authed {
    c: Coordinator,
    alice: Jobs,
    root: Jobs,
    alice_token: String,
    worker_token: String,
    a: Worker,
    targets: Targets,
}

async fn authed(pool: PgPool, settings: Settings) -> Authed {
    let c = Coordinator::start(pool, Settings { require_auth: true, ..settings }).await;
    let alice_token = c.token(Role::User, "alice").await;
    let mut alice = c.jobs(Headers::default().bearer(&alice_token));
    let root = c.jobs(Headers::default().bearer(&c.token(Role::Admin, "root").await));
    let worker_token = c.token(Role::Worker, "fleet").await;
    let mut a = c.register("a", "cpu", &["cifar10"], Some(&worker_token)).await;
    let run = running(&mut alice, &mut a, qat_spec()).await;
    let experiment = submit_pipeline(&mut alice, "alices-pipeline").await.id;
    Authed { c, alice, root, alice_token, worker_token, a, targets: Targets { run, experiment } }
}

// ---------------------------------------------------------------------------
// 1. Glob patterns

/// Submits a qat job with `patterns` as its overrides; the answer and how long it took.
async fn submit_patterns(jobs: &mut Jobs, patterns: Vec<String>) -> (Result<v1::Job, Status>, Duration) {
    let mut s = qat_spec();
    s.bits_overrides = patterns.into_iter().map(|pattern| v1::BitsOverride { pattern, wts: Some(8), acts: None }).collect();
    let started = Instant::now();
    let call = jobs.submit_job(v1::SubmitJobRequest { spec: Some(s), ..Default::default() });
    let result = tokio::time::timeout(Duration::from_secs(60), call).await.expect("the coordinator answers at all");
    (result.map(|r| r.into_inner()), started.elapsed())
}

/// The coordinator still answers, promptly.
async fn answers_next_request(jobs: &mut Jobs) {
    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(5), jobs.list_jobs(v1::ListJobsRequest::default()))
        .await
        .expect("the next request is answered within 5 s")
        .unwrap();
    println!("next request answered in {:?}", started.elapsed());
}

#[sqlx::test(migrations = false)]
async fn thirty_stars_then_conv1_is_matched_within_a_bound(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let pattern = format!("{}conv1", "*".repeat(30));
    let (result, took) = submit_patterns(&mut jobs, vec![pattern.clone()]).await;
    println!("SubmitJob with bits_overrides '{pattern}': {took:?}");
    let job = result.expect("thirty stars then conv1 matches conv1 and every block's conv1: accepted");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(job.spec.unwrap().bits_overrides[0].pattern, pattern, "stored as sent");
    answers_next_request(&mut jobs).await;
}

#[sqlx::test(migrations = false)]
async fn a_pattern_of_100000_stars_is_refused_within_a_bound(pool: PgPool) {
    let c = Coordinator::start(pool.clone(), Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let (result, took) = submit_patterns(&mut jobs, vec!["*".repeat(100_000)]).await;
    println!("SubmitJob with a bits_overrides pattern of 100,000 '*': {took:?}");
    let s = invalid(result, "bits_overrides");
    assert!(s.message().len() < 1_000, "the refusal does not echo the pattern: {} bytes", s.message().len());
    assert!(took < Duration::from_secs(5), "took {took:?}");
    assert_eq!(count(&pool, "jobs").await, 0);
    answers_next_request(&mut jobs).await;
}

#[sqlx::test(migrations = false)]
async fn the_most_overrides_of_the_longest_worst_patterns_are_matched_or_refused_within_a_bound(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let max = camp_proto::limits::MAX_PATTERN_BYTES;
    // Every star, class and alternation the syntax has, at the longest length allowed,
    // ending in a module name so that the pattern matches something.
    let worst = format!("{}conv1", "*?[a-z]{a,b}".repeat((max - 5) / 12));
    assert!(worst.len() <= max);
    let stars = format!("{}conv1", "*a".repeat((max - 5) / 2));
    let patterns: Vec<String> =
        (0..camp_proto::limits::MAX_OVERRIDES).map(|i| if i % 2 == 0 { worst.clone() } else { stars.clone() }).collect();
    let (result, took) = submit_patterns(&mut jobs, patterns).await;
    println!("SubmitJob with 64 overrides of 256-byte patterns: {took:?} ({})", if result.is_ok() { "matched" } else { "refused" });
    if let Err(s) = result {
        assert_eq!(s.code(), Code::InvalidArgument, "{s:?}");
        assert!(s.message().starts_with("bits_overrides:"), "{}", s.message());
    }
    assert!(took < Duration::from_secs(5), "took {took:?}");
    answers_next_request(&mut jobs).await;
}

// ---------------------------------------------------------------------------
// 2. Foreign writers

/// Worker B (registered, its own session) against A's running job: nothing changes.
async fn second_worker_changes_nothing(c: &Coordinator, mut jobs: Jobs, mut a: Worker, credential: Option<&str>) {
    let run = running(&mut jobs, &mut a, spec()).await;
    let mut b = c.register("b", "cpu", &["cifar10"], credential).await;
    let before = db_state(&c.pool).await;
    let attempts = worker_writes(&mut b.client, run).await;
    let hb = attempts.heartbeat.expect("B may heartbeat for itself");
    assert_eq!((hb.lost, hb.cancel), (vec![run.job], vec![]), "B is told the job is not its own");
    all_refused("worker B", &attempts.others, &[Code::FailedPrecondition, Code::PermissionDenied]);
    // B naming A's worker id is refused outright.
    let named_a = b
        .client
        .heartbeat(v1::HeartbeatRequest { worker_id: a.id.clone(), jobs: vec![v1::RunningJob { job_id: run.job, attempt: run.attempt }] })
        .await;
    refused("B heartbeating as A", named_a, Code::PermissionDenied);
    let claim_as_a = b.client.claim(v1::ClaimRequest { worker_id: a.id.clone(), wait_ms: 0 }).await;
    refused("B claiming as A", claim_as_a, Code::PermissionDenied);
    assert_eq!(db_state(&c.pool).await, before, "the database is unchanged (lease_expires_at included)");
    owner_still_writes(&mut a, &mut jobs, run).await;
}

#[sqlx::test(migrations = false)]
async fn a_second_worker_cannot_write_renew_finish_or_download_another_workers_job(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let a = c.register("a", "cpu", &["cifar10"], None).await;
    second_worker_changes_nothing(&c, c.jobs_as("alice"), a, None).await;
}

#[sqlx::test(migrations = false)]
async fn a_second_worker_with_the_same_worker_token_cannot_touch_another_workers_job(pool: PgPool) {
    let c = Coordinator::start(pool, require_auth()).await;
    let fleet = c.token(Role::Worker, "fleet").await;
    let a = c.register("a", "cpu", &["cifar10"], Some(&fleet)).await;
    let jobs = c.jobs(Headers::default().bearer(&c.token(Role::User, "alice").await));
    second_worker_changes_nothing(&c, jobs, a, Some(&fleet)).await;
}

#[sqlx::test(migrations = false)]
async fn a_caller_without_a_session_cannot_touch_a_running_job(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut a = c.register("a", "cpu", &["cifar10"], None).await;
    let run = running(&mut jobs, &mut a, spec()).await;
    let before = db_state(&c.pool).await;
    for (who, headers) in [
        ("no session", Headers::default()),
        ("an empty session", Headers::default().with("x-camp-session", "")),
        ("a made-up session", Headers::default().with("x-camp-session", &format!("camps_{}", "0".repeat(64)))),
        ("A's worker id as session", Headers::default().with("x-camp-session", &a.id)),
    ] {
        let attempts = worker_writes(&mut c.workers(headers.clone()), run).await;
        refused(who, attempts.heartbeat, Code::Unauthenticated);
        all_refused(who, &attempts.others, &[Code::Unauthenticated]);
        let claim = c.workers(headers).claim(v1::ClaimRequest { worker_id: a.id.clone(), wait_ms: 0 }).await;
        refused(who, claim, Code::Unauthenticated);
    }
    assert_eq!(db_state(&c.pool).await, before);
    owner_still_writes(&mut a, &mut jobs, run).await;
}

#[sqlx::test(migrations = false)]
async fn a_worker_token_without_a_session_cannot_touch_a_running_job(pool: PgPool) {
    let mut f = authed(pool, Settings::default()).await;
    let before = db_state(&f.c.pool).await;
    for (who, headers) in [
        ("A's worker token without a session", Headers::default().bearer(&f.worker_token)),
        ("A's worker token with a made-up session", Headers::default().bearer(&f.worker_token).with("x-camp-session", "camps_guess")),
    ] {
        let attempts = worker_writes(&mut f.c.workers(headers), f.targets.run).await;
        refused(who, attempts.heartbeat, Code::Unauthenticated);
        all_refused(who, &attempts.others, &[Code::Unauthenticated]);
    }
    assert_eq!(db_state(&f.c.pool).await, before);
    owner_still_writes(&mut f.a, &mut f.alice, f.targets.run).await;
}

#[sqlx::test(migrations = false)]
async fn a_user_token_cannot_touch_a_running_job_even_with_the_workers_session(pool: PgPool) {
    let mut f = authed(pool, Settings::default()).await;
    let before = db_state(&f.c.pool).await;
    for (who, headers) in [
        ("a user token", Headers::default().bearer(&f.alice_token)),
        ("a user token with A's session", Headers::default().bearer(&f.alice_token).with("x-camp-session", &f.a.session)),
    ] {
        let attempts = worker_writes(&mut f.c.workers(headers), f.targets.run).await;
        refused(who, attempts.heartbeat, Code::PermissionDenied);
        all_refused(who, &attempts.others, &[Code::PermissionDenied]);
    }
    assert_eq!(db_state(&f.c.pool).await, before);
    owner_still_writes(&mut f.a, &mut f.alice, f.targets.run).await;
}

// ---------------------------------------------------------------------------
// 3. Roles

#[sqlx::test(migrations = false)]
async fn a_user_token_is_refused_on_every_worker_rpc(pool: PgPool) {
    let f = authed(pool, Settings::default()).await;
    let before = db_state(&f.c.pool).await;
    for token in [f.alice_token.clone(), f.c.token(Role::Admin, "root2").await] {
        // With a real worker's session too, so that only the role can refuse it.
        let mut client = f.c.workers(Headers::default().bearer(&token).with("x-camp-session", &f.a.session));
        let results = every_worker_rpc(&mut client, f.targets).await;
        assert_eq!(results.len(), 10, "Register, Claim, Heartbeat, Report, Upload, Finish x3, Download x2");
        all_refused("a user's token", &results, &[Code::PermissionDenied]);
    }
    assert_eq!(db_state(&f.c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_worker_token_is_refused_on_every_job_rpc(pool: PgPool) {
    let f = authed(pool, Settings::default()).await;
    let before = db_state(&f.c.pool).await;
    let mut jobs = f.c.jobs(Headers::default().bearer(&f.worker_token).with("x-camp-user", "alice"));
    all_refused("a worker token", &every_job_rpc(&mut jobs, f.targets).await, &[Code::PermissionDenied]);
    assert_eq!(db_state(&f.c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_call_without_a_valid_token_is_unauthenticated_on_every_rpc(pool: PgPool) {
    let f = authed(pool, Settings::default()).await;
    let before = db_state(&f.c.pool).await;
    for (who, headers) in [
        ("no token", Headers::default()),
        ("no token, a user name", Headers::default().with("x-camp-user", "alice")),
        ("an unknown token", Headers::default().bearer(&camp_server::auth::new_token())),
        ("a token that is not a bearer", Headers::default().with("authorization", &format!("Basic {}", f.alice_token))),
    ] {
        all_refused(who, &every_job_rpc(&mut f.c.jobs(headers.clone()), f.targets).await, &[Code::Unauthenticated]);
        let mut workers = f.c.workers(headers.with("x-camp-session", &f.a.session));
        all_refused(who, &every_worker_rpc(&mut workers, f.targets).await, &[Code::Unauthenticated]);
    }
    assert_eq!(db_state(&f.c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_worker_session_used_with_another_worker_credential_is_refused(pool: PgPool) {
    let f = authed(pool, Settings::default()).await;
    let other = f.c.token(Role::Worker, "other-fleet").await;
    let before = db_state(&f.c.pool).await;
    let mut client = f.c.workers(Headers::default().bearer(&other).with("x-camp-session", &f.a.session));
    let results = every_worker_rpc(&mut client, f.targets).await;
    // Register needs no session: the other credential registers a worker of its own.
    let (register, rest) = results.split_first().unwrap();
    assert!(register.1.is_ok(), "the other credential may register its own worker: {:?}", register.1);
    all_refused("A's session with another worker credential", rest, &[Code::PermissionDenied]);
    let mut after = db_state(&f.c.pool).await;
    let workers = after.counts.iter_mut().find(|(t, _)| *t == "workers").unwrap();
    workers.1 -= 1;
    assert_eq!(after, before, "nothing but the new registration");
}

#[sqlx::test(migrations = false)]
async fn a_worker_id_is_taken_over_at_register_only_with_the_credential_it_was_registered_with(pool: PgPool) {
    let c = Coordinator::start(pool, require_auth()).await;
    let (fleet, other) = (c.token(Role::Worker, "fleet").await, c.token(Role::Worker, "other-fleet").await);
    let mut jobs = c.jobs(Headers::default().bearer(&c.token(Role::User, "alice").await));
    let mut a = c.register("a", "cpu", &["cifar10"], Some(&fleet)).await;
    let r = running(&mut jobs, &mut a, spec()).await;
    let a_id = a.id.clone();
    let again = |name: &str| v1::RegisterRequest { worker_id: a_id.clone(), ..register_request(name) };

    // Another worker credential naming A's id: a worker of its own; A keeps its row, session and job.
    let before = db_state(&c.pool).await;
    let stranger = c.workers(Headers::default().bearer(&other)).register(again("impostor")).await.unwrap().into_inner();
    assert_ne!(stranger.worker_id, a.id);
    let mut after = db_state(&c.pool).await;
    after.counts.iter_mut().find(|(t, _)| *t == "workers").unwrap().1 -= 1;
    assert_eq!(after, before, "nothing but the stranger's own registration");
    assert!(a.heartbeat(&[(r.job, r.attempt)]).await.unwrap().lost.is_empty(), "A still holds its lease");
    // A user token may not register at all.
    let user = c.token(Role::User, "mallory").await;
    refused(
        "a user registering as A",
        c.workers(Headers::default().bearer(&user)).register(again("mallory")).await,
        Code::PermissionDenied,
    );
    invalid(
        c.workers(Headers::default().bearer(&fleet)).register(v1::RegisterRequest { worker_id: "A".into(), ..register_request("a") }).await,
        "worker_id",
    );

    // A itself, restarted (the same credential): its row, a new session, its job requeued at once.
    let reply = c.workers(Headers::default().bearer(&fleet)).register(again("a")).await.unwrap().into_inner();
    assert_eq!(reply.worker_id, a.id);
    refused("A's old session", a.heartbeat(&[(r.job, r.attempt)]).await, Code::Unauthenticated);
    let job = get(&mut jobs, r.job).await;
    assert_eq!((job.state, job.lease_losses), (JobState::Queued as i32, 1), "{job:?}");
    assert!(job.message.contains("restarted during attempt 1"), "{}", job.message);
}

#[sqlx::test(migrations = false)]
async fn an_admin_can_cancel_and_reprioritise_another_users_job_and_a_plain_user_cannot(pool: PgPool) {
    let mut f = authed(pool, Settings::default()).await;
    let mut bob = f.c.jobs(Headers::default().bearer(&f.c.token(Role::User, "bob").await));
    let queued = submit(&mut f.alice, spec()).await.id;
    let before = db_state(&f.c.pool).await;
    for id in [queued, f.targets.run.job] {
        refused(
            "bob re-prioritising alice's job",
            bob.set_job_priority(v1::SetJobPriorityRequest { id, priority: 0 }).await,
            Code::PermissionDenied,
        );
        refused("bob cancelling alice's job", bob.cancel_job(v1::CancelJobRequest { id }).await, Code::PermissionDenied);
    }
    let cancel = bob.cancel_experiment(v1::CancelExperimentRequest { id: f.targets.experiment }).await;
    refused("bob cancelling alice's experiment", cancel, Code::PermissionDenied);
    assert_eq!(db_state(&f.c.pool).await, before, "bob changed nothing");

    let job = f.root.set_job_priority(v1::SetJobPriorityRequest { id: queued, priority: 42 }).await.unwrap().into_inner();
    assert_eq!(job.priority, 42);
    let job = f.root.cancel_job(v1::CancelJobRequest { id: queued }).await.unwrap().into_inner();
    assert_eq!(job.state, JobState::Cancelled as i32);
    assert!(job.message.contains("root"), "{}", job.message);
    let job = f.root.cancel_job(v1::CancelJobRequest { id: f.targets.run.job }).await.unwrap().into_inner();
    assert!(job.cancel_requested);
    let exp = f.root.cancel_experiment(v1::CancelExperimentRequest { id: f.targets.experiment }).await.unwrap().into_inner();
    assert!(exp.jobs.iter().all(|j| j.state == JobState::Cancelled as i32), "{:?}", exp.jobs);
}

#[sqlx::test(migrations = false)]
async fn the_token_decides_who_calls_whatever_x_camp_user_says(pool: PgPool) {
    let mut f = authed(pool, Settings::default()).await;
    let bob_token = f.c.token(Role::User, "bob").await;
    let mut bob_as_root = f.c.jobs(Headers::default().bearer(&bob_token).with("x-camp-user", "root"));
    let job = submit(&mut bob_as_root, spec()).await;
    assert_eq!(job.owner, "bob", "the job is the token's user's");
    let before = db_state(&f.c.pool).await;
    let cancel = bob_as_root.cancel_job(v1::CancelJobRequest { id: f.targets.run.job }).await;
    refused("bob naming himself root", cancel, Code::PermissionDenied);
    assert_eq!(db_state(&f.c.pool).await, before);
    // Without --require-auth a self-named user is never an admin, whatever the name.
    let open = Coordinator::start(f.c.pool.clone(), Settings::default()).await;
    let mut fake_root = open.jobs_as("root");
    refused("a self-named root", fake_root.cancel_job(v1::CancelJobRequest { id: f.targets.run.job }).await, Code::PermissionDenied);
    let high = v1::SubmitJobRequest { spec: Some(spec()), priority: 1, ..Default::default() };
    refused("a self-named root's priority", fake_root.submit_job(high).await, Code::PermissionDenied);
    assert_eq!(db_state(&f.c.pool).await, before);
    f.root.cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap();
}

fn ceiling() -> Settings {
    Settings { access: Access { max_user_priority: 5, ..Access::default() }, ..Settings::default() }
}

#[sqlx::test(migrations = false)]
async fn a_submitted_priority_above_the_user_ceiling_needs_an_admin(pool: PgPool) {
    let mut f = authed(pool, ceiling()).await;
    let before = db_state(&f.c.pool).await;
    let high = v1::SubmitJobRequest { spec: Some(spec()), priority: 6, ..Default::default() };
    let s = refused("alice at priority 6", f.alice.submit_job(high.clone()).await, Code::PermissionDenied);
    assert!(s.message().starts_with("priority:"), "{}", s.message());
    assert_eq!(db_state(&f.c.pool).await, before, "nothing stored");
    let at = f.alice.submit_job(v1::SubmitJobRequest { priority: 5, ..high.clone() }).await.unwrap().into_inner();
    assert_eq!(at.priority, 5, "the ceiling itself is allowed");
    let admin = f.root.submit_job(v1::SubmitJobRequest { priority: 1_000, ..high }).await.unwrap().into_inner();
    assert_eq!(admin.priority, 1_000);
}

#[sqlx::test(migrations = false)]
async fn a_pipeline_node_priority_above_the_user_ceiling_needs_an_admin(pool: PgPool) {
    let mut f = authed(pool, ceiling()).await;
    let before = db_state(&f.c.pool).await;
    let mut request = pipeline("urgent");
    request.nodes[1].priority = 6;
    let s = refused("alice's node at priority 6", f.alice.submit_pipeline(request.clone()).await, Code::PermissionDenied);
    assert!(s.message().starts_with("nodes[1] (second).priority:"), "{}", s.message());
    assert_eq!(db_state(&f.c.pool).await, before, "nothing stored");
    let exp = f.root.submit_pipeline(request).await.unwrap().into_inner();
    assert_eq!(exp.jobs.iter().map(|j| j.priority).collect::<Vec<_>>(), vec![0, 6]);
}

#[sqlx::test(migrations = false)]
async fn setting_a_priority_above_the_user_ceiling_needs_an_admin(pool: PgPool) {
    let mut f = authed(pool, ceiling()).await;
    let id = submit(&mut f.alice, spec()).await.id;
    let before = db_state(&f.c.pool).await;
    let s = refused(
        "alice raising her job to 6",
        f.alice.set_job_priority(v1::SetJobPriorityRequest { id, priority: 6 }).await,
        Code::PermissionDenied,
    );
    assert!(s.message().starts_with("priority:"), "{}", s.message());
    assert_eq!(db_state(&f.c.pool).await, before, "nothing changed");
    assert_eq!(f.alice.set_job_priority(v1::SetJobPriorityRequest { id, priority: 5 }).await.unwrap().into_inner().priority, 5);
    assert_eq!(f.root.set_job_priority(v1::SetJobPriorityRequest { id, priority: 99 }).await.unwrap().into_inner().priority, 99);
}

// ---------------------------------------------------------------------------
// 4. Private jobs

fn private() -> Settings {
    Settings { access: Access { private_jobs: true, ..Access::default() }, ..Settings::default() }
}

/// Every read of alice's job and experiment, by RPC name.
async fn reads_of(jobs: &mut Jobs, t: Targets) -> Vec<(&'static str, Result<String, Status>)> {
    let job = t.run.job;
    let mut out = Vec::new();
    out.push(("GetJob", ok_text(jobs.get_job(v1::GetJobRequest { id: job }).await)));
    let watch = async {
        let mut stream = jobs.watch_job(v1::WatchJobRequest { id: job, history: true, ..Default::default() }).await?.into_inner();
        let first = tokio::time::timeout(Duration::from_secs(5), stream.message()).await.expect("a first event")?;
        Ok(format!("{first:?}"))
    };
    out.push(("WatchJob", watch.await));
    out.push(("QueryMetrics", ok_text(jobs.query_metrics(v1::QueryMetricsRequest { job_id: job, ..Default::default() }).await)));
    out.push(("GetLogs", ok_text(jobs.get_logs(v1::GetLogsRequest { job_id: job, ..Default::default() }).await)));
    out.push(("ListCheckpoints", ok_text(jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job }).await)));
    let by_id = jobs.download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id: t.run.checkpoint, ..Default::default() }).await;
    out.push(("DownloadCheckpoint (by id)", read_download(by_id).await));
    let best = jobs.download_checkpoint(v1::DownloadCheckpointRequest { job_id: job, which: "best".into(), ..Default::default() }).await;
    out.push(("DownloadCheckpoint (best)", read_download(best).await));
    out.push(("GetExperiment", ok_text(jobs.get_experiment(v1::GetExperimentRequest { id: t.experiment }).await)));
    out
}

async fn listed_owners(jobs: &mut Jobs) -> (Vec<String>, Vec<String>) {
    let listed = jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner().jobs;
    let exps = jobs.list_experiments(v1::ListExperimentsRequest { limit: 0, ..Default::default() }).await.unwrap().into_inner().experiments;
    let mut owners: Vec<String> = listed.into_iter().map(|j| j.owner).collect();
    let mut exp_owners: Vec<String> = exps.into_iter().map(|e| e.owner).collect();
    owners.dedup();
    exp_owners.dedup();
    (owners, exp_owners)
}

#[sqlx::test(migrations = false)]
async fn with_private_jobs_another_user_reads_nothing_of_someone_elses(pool: PgPool) {
    let f = authed(pool, private()).await;
    let mut bob = f.c.jobs(Headers::default().bearer(&f.c.token(Role::User, "bob").await));
    submit(&mut bob, spec()).await;
    submit_pipeline(&mut bob, "bobs").await;
    all_refused("bob reading alice's", &reads_of(&mut bob, f.targets).await, &[Code::PermissionDenied]);
    assert_eq!(listed_owners(&mut bob).await, (vec!["bob".to_string()], vec!["bob".to_string()]), "bob lists only his own");
    let asked = bob.list_jobs(v1::ListJobsRequest { owner: "alice".into(), ..Default::default() }).await;
    refused("bob listing alice's jobs", asked, Code::PermissionDenied);
}

#[sqlx::test(migrations = false)]
async fn with_private_jobs_the_owner_and_an_admin_read_everything(pool: PgPool) {
    let mut f = authed(pool, private()).await;
    let mut bob = f.c.jobs(Headers::default().bearer(&f.c.token(Role::User, "bob").await));
    submit(&mut bob, spec()).await;
    for (who, jobs) in [("alice", &mut f.alice), ("root", &mut f.root)] {
        for (rpc, result) in reads_of(jobs, f.targets).await {
            assert!(result.is_ok(), "{who}: {rpc}: {result:?}");
        }
    }
    assert_eq!(listed_owners(&mut f.alice).await.0, vec!["alice".to_string()]);
    let (mut everyone, _) = listed_owners(&mut f.root).await;
    everyone.sort();
    assert_eq!(everyone, vec!["alice".to_string(), "bob".to_string()], "an admin lists everyone's");
    let theirs = f.root.list_jobs(v1::ListJobsRequest { owner: "bob".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(theirs.jobs.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn with_private_jobs_nobody_starts_from_another_users_weights(pool: PgPool) {
    let mut f = authed(pool, private()).await;
    let mut bob = f.c.jobs(Headers::default().bearer(&f.c.token(Role::User, "bob").await));
    let before = db_state(&f.c.pool).await;
    let from_alice = v1::SubmitJobRequest { spec: Some(sp_spec(f.targets.run.job)), ..Default::default() };
    let s = refused("bob starting from alice's job", bob.submit_job(from_alice.clone()).await, Code::PermissionDenied);
    assert!(s.message().starts_with("spec.init_from:"), "{}", s.message());
    assert_eq!(db_state(&f.c.pool).await, before, "nothing stored");
    let own = f.alice.submit_job(from_alice.clone()).await.unwrap().into_inner();
    assert_eq!(own.parents, vec![f.targets.run.job]);
    f.root.submit_job(from_alice).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn without_private_jobs_reads_are_open_but_writes_stay_with_the_owner_and_admins(pool: PgPool) {
    let mut f = authed(pool, Settings::default()).await;
    let mut bob = f.c.jobs(Headers::default().bearer(&f.c.token(Role::User, "bob").await));
    for (rpc, result) in reads_of(&mut bob, f.targets).await {
        assert!(result.is_ok(), "bob: {rpc}: {result:?}");
    }
    let (owners, _) = listed_owners(&mut bob).await;
    assert_eq!(owners, vec!["alice".to_string()], "bob sees alice's jobs");
    bob.submit_job(v1::SubmitJobRequest { spec: Some(sp_spec(f.targets.run.job)), ..Default::default() }).await.unwrap();

    let before = db_state(&f.c.pool).await;
    let job = f.targets.run.job;
    refused("CancelJob", bob.cancel_job(v1::CancelJobRequest { id: job }).await, Code::PermissionDenied);
    refused("SetJobPriority", bob.set_job_priority(v1::SetJobPriorityRequest { id: job, priority: -1 }).await, Code::PermissionDenied);
    let cancel = bob.cancel_experiment(v1::CancelExperimentRequest { id: f.targets.experiment }).await;
    refused("CancelExperiment", cancel, Code::PermissionDenied);
    assert_eq!(db_state(&f.c.pool).await, before, "bob changed nothing");
    f.alice.set_job_priority(v1::SetJobPriorityRequest { id: job, priority: -1 }).await.unwrap();
    f.alice.cancel_experiment(v1::CancelExperimentRequest { id: f.targets.experiment }).await.unwrap();
    assert!(f.alice.cancel_job(v1::CancelJobRequest { id: job }).await.unwrap().into_inner().cancel_requested);
}

// ---------------------------------------------------------------------------
// 5. TLS

/// A throwaway CA, a server certificate for 127.0.0.1 and localhost, a client
/// certificate it signs, and a client certificate of another CA, as PEM files.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    client_cert: PathBuf,
    client_key: PathBuf,
    other_ca: PathBuf,
    stranger_cert: PathBuf,
    stranger_key: PathBuf,
}

fn ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages =
        vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign, rcgen::KeyUsagePurpose::DigitalSignature];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate for `names`, signed by `issuer`: (certificate PEM, key PEM).
fn leaf(
    issuer: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
    usage: rcgen::ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params = rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path
    };
    let camp_ca = ca("camp test CA");
    let other = ca("someone else's CA");
    let (server_cert, server_key) = leaf(&camp_ca, &["127.0.0.1", "localhost"], rcgen::ExtendedKeyUsagePurpose::ServerAuth);
    let (client_cert, client_key) = leaf(&camp_ca, &["worker-1"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    let (stranger_cert, stranger_key) = leaf(&other, &["stranger"], rcgen::ExtendedKeyUsagePurpose::ClientAuth);
    Pki {
        ca: write("ca.pem", &camp_ca.pem()),
        server_cert: write("server.pem", &server_cert),
        server_key: write("server.key", &server_key),
        client_cert: write("client.pem", &client_cert),
        client_key: write("client.key", &client_key),
        other_ca: write("other-ca.pem", &other.pem()),
        stranger_cert: write("stranger.pem", &stranger_cert),
        stranger_key: write("stranger.key", &stranger_key),
        _dir: dir,
    }
}

impl Pki {
    fn settings(&self, mutual: bool) -> Settings {
        let files = TlsFiles { cert: self.server_cert.clone(), key: self.server_key.clone(), client_ca: mutual.then(|| self.ca.clone()) };
        Settings { tls: Some(files.server_config().unwrap()), require_client_cert: mutual, ..Settings::default() }
    }

    fn trusting(&self) -> ClientTls {
        ClientTls { ca: Some(self.ca.clone()), ..ClientTls::default() }
    }

    fn with_client_cert(&self) -> ClientTls {
        ClientTls { ca: Some(self.ca.clone()), cert: Some(self.client_cert.clone()), key: Some(self.client_key.clone()) }
    }
}

fn https(c: &Coordinator) -> String {
    format!("https://127.0.0.1:{}", c.addr.port())
}

/// Connects and lists jobs through `endpoint`; the error, described, if either fails.
async fn try_list(channel: Result<tonic::transport::Endpoint, String>) -> Result<(), String> {
    let attempt = async {
        let channel = channel?.connect().await.map_err(|e| describe(&e))?;
        let mut jobs = JobServiceClient::new(channel);
        jobs.list_jobs(v1::ListJobsRequest::default()).await.map(|_| ()).map_err(|s| format!("{s:?}"))
    };
    tokio::time::timeout(Duration::from_secs(15), attempt).await.expect("the attempt ends rather than hangs")
}

fn tls_ish(text: &str) -> bool {
    let lower = text.to_lowercase();
    ["tls", "ssl", "handshake", "certificate", "corrupt message"].iter().any(|w| lower.contains(w))
}

#[sqlx::test(migrations = false)]
async fn a_client_that_trusts_the_ca_talks_to_a_tls_coordinator(pool: PgPool) {
    let pki = pki();
    let c = Coordinator::start_tls(pool, pki.settings(false), &pki.trusting()).await;
    let mut jobs = c.jobs_as("alice");
    let job = submit(&mut jobs, spec()).await;
    assert_eq!(get(&mut jobs, job.id).await.owner, "alice");
    // Workers register over TLS too (no client certificate needed without a client CA).
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    assert_eq!(w.claim(0).await.unwrap().job_id, job.id);
    // By name as well as by address.
    let by_name = endpoint(&format!("https://localhost:{}", c.addr.port()), &pki.trusting()).map_err(|e| e.to_string());
    try_list(by_name).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_client_that_does_not_trust_the_coordinators_ca_is_refused(pool: PgPool) {
    let pki = pki();
    let c = Coordinator::start_tls(pool, pki.settings(false), &pki.trusting()).await;
    let wrong = ClientTls { ca: Some(pki.other_ca.clone()), ..ClientTls::default() };
    let err = try_list(endpoint(&https(&c), &wrong).map_err(|e| e.to_string())).await.unwrap_err();
    println!("untrusted server certificate: {err}");
    assert!(tls_ish(&err), "the error should say it is about TLS: {err}");
}

#[sqlx::test(migrations = false)]
async fn a_plaintext_client_cannot_talk_to_a_tls_coordinator(pool: PgPool) {
    let pki = pki();
    let c = Coordinator::start_tls(pool.clone(), pki.settings(false), &pki.trusting()).await;
    let plain = Channel::from_shared(format!("http://{}", c.addr)).map_err(|e| e.to_string());
    let err = try_list(plain).await.unwrap_err();
    println!("plaintext client against the TLS listener: {err}");
    // The TLS listener still serves TLS clients afterwards.
    let mut jobs = c.jobs_as("alice");
    jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap();
    assert_eq!(count(&pool, "jobs").await, 0);
}

#[sqlx::test(migrations = false)]
async fn an_https_client_against_a_plaintext_coordinator_fails_with_a_tls_error(pool: PgPool) {
    let pki = pki();
    let c = Coordinator::start(pool, Settings::default()).await;
    let err = try_list(endpoint(&https(&c), &pki.trusting()).map_err(|e| e.to_string())).await.unwrap_err();
    println!("https client against a plaintext coordinator: {err}");
    assert!(tls_ish(&err), "the description should say it is about TLS: {err}");
}

#[sqlx::test(migrations = false)]
async fn with_mutual_tls_a_worker_needs_a_client_certificate_and_a_user_does_not(pool: PgPool) {
    let pki = pki();
    // The coordinator's own channel carries no client certificate: a user's.
    let c = Coordinator::start_tls(pool, pki.settings(true), &pki.trusting()).await;
    let mut jobs = c.jobs_as("alice");
    let job = submit(&mut jobs, spec()).await;
    jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap();

    let without = c.workers(Headers::default()).register(register_request("no-cert")).await;
    let s = refused("Register without a client certificate", without, Code::Unauthenticated);
    assert!(s.message().contains("client certificate"), "{}", s.message());
    assert_eq!(count(&c.pool, "workers").await, 0);

    let channel = endpoint(&https(&c), &pki.with_client_cert()).unwrap().connect().await.unwrap();
    let mut w = c.on(channel).register("w", "cpu", &["cifar10"], None).await;
    assert_eq!(w.claim(0).await.unwrap().job_id, job.id, "a worker with a certificate registers and claims");
    // Its session without the certificate is refused.
    let mut stolen = c.workers(Headers::default().with("x-camp-session", &w.session));
    let hb = stolen
        .heartbeat(v1::HeartbeatRequest { worker_id: String::new(), jobs: vec![v1::RunningJob { job_id: job.id, attempt: 1 }] })
        .await;
    refused("the session over a connection without a certificate", hb, Code::Unauthenticated);
}

#[sqlx::test(migrations = false)]
async fn with_mutual_tls_a_client_certificate_from_another_ca_is_refused(pool: PgPool) {
    let pki = pki();
    let c = Coordinator::start_tls(pool, pki.settings(true), &pki.trusting()).await;
    let stranger = ClientTls { ca: Some(pki.ca.clone()), cert: Some(pki.stranger_cert.clone()), key: Some(pki.stranger_key.clone()) };
    let attempt = async {
        let channel = endpoint(&https(&c), &stranger).unwrap().connect().await.map_err(|e| describe(&e))?;
        let reply = c.on(channel).workers(Headers::default()).register(register_request("stranger")).await;
        reply.map(|_| ()).map_err(|s| format!("{s:?}"))
    };
    let err = tokio::time::timeout(Duration::from_secs(15), attempt).await.unwrap().unwrap_err();
    println!("client certificate from another CA: {err}");
    assert_eq!(count(&c.pool, "workers").await, 0);
}

// ---------------------------------------------------------------------------
// 6. Bad inputs

#[sqlx::test(migrations = false)]
async fn a_nul_in_a_job_name_is_refused_and_nothing_is_stored(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let before = db_state(&c.pool).await;
    invalid(jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec()), name: "a\0b".into(), ..Default::default() }).await, "name");
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_nul_in_a_pipeline_name_or_node_key_is_refused_and_nothing_is_stored(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let before = db_state(&c.pool).await;
    invalid(jobs.submit_pipeline(pipeline("p\0")).await, "name");
    let mut bad_key = pipeline("p");
    bad_key.nodes[0].key = "fi\0rst".into();
    bad_key.nodes[1].after = vec!["fi\0rst".into()];
    invalid(jobs.submit_pipeline(bad_key).await, "nodes[0].key");
    let mut bad_node_name = pipeline("p");
    bad_node_name.nodes[1].name = "x\0".into();
    invalid(jobs.submit_pipeline(bad_node_name).await, "nodes[1] (second).name");
    let mut bad_after = pipeline("p");
    bad_after.nodes[1].after = vec!["fi\0rst".into()];
    invalid(jobs.submit_pipeline(bad_after).await, "nodes[1] (second).after");
    let mut bad_init_from = pipeline("p");
    bad_init_from.nodes[1].init_from = "fi\0rst".into();
    invalid(jobs.submit_pipeline(bad_init_from).await, "nodes[1] (second).init_from");
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_nul_in_a_worker_name_or_label_is_refused_and_no_worker_is_registered(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut workers = c.workers(Headers::default());
    invalid(workers.register(register_request("w\0")).await, "name");
    let label = |k: &str, v: &str| v1::RegisterRequest { labels: [(k.to_string(), v.to_string())].into(), ..register_request("w") };
    invalid(workers.register(label("ra\0ck", "a")).await, "labels");
    invalid(workers.register(label("rack", "a\0")).await, "labels[rack]");
    invalid(workers.register(v1::RegisterRequest { hostname: "h\0".into(), ..register_request("w") }).await, "hostname");
    assert_eq!(count(&c.pool, "workers").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_nul_in_a_metric_name_or_log_line_is_refused_and_nothing_is_stored(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let r = running(&mut jobs, &mut w, spec()).await;
    let before = db_state(&c.pool).await;
    let mut bad_metric = batch(r.job, r.attempt, 1, 2);
    bad_metric.metrics[0].name = "lo\0ss".into();
    invalid(w.report(vec![bad_metric]).await, "metrics.name");
    let mut bad_line = batch(r.job, r.attempt, 2, 3);
    bad_line.log_lines = vec!["fine".into(), "not\0fine".into()];
    invalid(w.report(vec![bad_line]).await, "log_lines");
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_nul_in_a_finish_message_is_refused_and_the_job_keeps_running(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let r = running(&mut jobs, &mut w, spec()).await;
    let before = db_state(&c.pool).await;
    let finish = w
        .client
        .finish(v1::FinishRequest {
            job_id: r.job,
            attempt: r.attempt,
            outcome: v1::Outcome::Failed as i32,
            message: "oom\0".into(),
            result: None,
        })
        .await;
    invalid(finish, "message");
    assert_eq!(db_state(&c.pool).await, before);
    assert_eq!(get(&mut jobs, r.job).await.state, JobState::Running as i32);
}

#[sqlx::test(migrations = false)]
async fn a_nul_inside_a_finish_result_or_checkpoint_metadata_is_refused_and_nothing_is_stored(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let r = running(&mut jobs, &mut w, spec()).await;
    let before = db_state(&c.pool).await;
    let finish_with_table = |table: &str| v1::FinishRequest {
        job_id: r.job,
        attempt: r.attempt,
        outcome: v1::Outcome::Succeeded as i32,
        message: String::new(),
        result: Some(v1::JobResult { best_top1: 0.5, energy_table: table.into(), ..Default::default() }),
    };
    // A NUL in the result's text: PostgreSQL's jsonb cannot store it.
    invalid(w.client.finish(finish_with_table("a\0b")).await, "result.energy_table");
    // Valid JSON whose text holds no NUL byte, but whose value does.
    for json in [r#"{"note":"a\u0000b"}"#, r#"{"\u0000":1}"#, r#"{"deep":[{"x":"\u0000"}]}"#] {
        let bytes = b"weights";
        let header = v1::CheckpointHeader { metadata_json: json.into(), ..header(r.job, r.attempt, 2, 0.5, bytes) };
        invalid(w.upload_with(header, bytes).await, "metadata_json");
    }
    assert_eq!(db_state(&c.pool).await, before);
    // A backslash followed by u0000 as text is not a NUL: it is stored.
    w.client.finish(finish_with_table(r"C:\u0000")).await.unwrap();
    assert_eq!(get(&mut jobs, r.job).await.result.unwrap().energy_table, r"C:\u0000");
}

#[sqlx::test(migrations = false)]
async fn a_9_mb_job_name_is_refused_and_listing_still_works_for_everyone(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    submit(&mut alice, spec()).await;
    let before = db_state(&c.pool).await;
    let huge = v1::SubmitJobRequest { spec: Some(spec()), name: "n".repeat(9 << 20), ..Default::default() };
    let started = Instant::now();
    let result = tokio::time::timeout(Duration::from_secs(30), alice.submit_job(huge)).await.expect("answered");
    let s = result.expect_err("a 9 MB request is over the 4 MB message cap");
    println!("9 MB job name: {:?} in {:?}: {}", s.code(), started.elapsed(), s.message());
    // Over the message cap it is never decoded, so no field can be named: tonic refuses it by size.
    assert!(matches!(s.code(), Code::OutOfRange | Code::ResourceExhausted | Code::InvalidArgument), "{s:?}");
    assert!(s.message().len() < 1_000, "the refusal does not echo the name");
    assert_eq!(db_state(&c.pool).await, before);
    for user in ["alice", "bob", "anonymous"] {
        let listed = c.jobs_as(user).list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner();
        assert_eq!(listed.jobs.len(), 1, "{user} lists the one job");
    }
}

#[sqlx::test(migrations = false)]
async fn a_3_mb_job_name_within_the_message_cap_is_refused_by_name_with_a_short_message(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    let long = v1::SubmitJobRequest { spec: Some(spec()), name: "n".repeat(3 << 20), ..Default::default() };
    let s = invalid(alice.submit_job(long).await, "name");
    assert!(s.message().len() < 1_000, "the refusal does not echo the name: {} bytes", s.message().len());
    let just_over =
        v1::SubmitJobRequest { spec: Some(spec()), name: "n".repeat(camp_proto::limits::MAX_NAME_BYTES + 1), ..Default::default() };
    invalid(alice.submit_job(just_over).await, "name");
    assert_eq!(count(&c.pool, "jobs").await, 0);
    alice.list_jobs(v1::ListJobsRequest::default()).await.unwrap();
}

/// Passes bytes through as the message, both ways: a client that can send what
/// no generated client would.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;
    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = src.remaining();
        Ok(Some(src.copy_to_bytes(n).to_vec()))
    }
}

fn raw_request<T>(message: T, headers: &[(&'static str, &str)]) -> tonic::Request<T> {
    let mut req = tonic::Request::new(message);
    for (k, v) in headers {
        req.metadata_mut().insert(*k, v.parse().unwrap());
    }
    req
}

/// A unary call of `path` whose request message is `body`, as is.
async fn raw_unary(c: &Coordinator, path: &'static str, headers: &[(&'static str, &str)], body: Vec<u8>) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(c.channel.clone());
    grpc.ready().await.unwrap();
    grpc.unary(raw_request(body, headers), http::uri::PathAndQuery::from_static(path), RawCodec).await.map(|r| r.into_inner())
}

/// A client-streaming call of `path` whose messages are `bodies`, as they are.
async fn raw_client_stream(
    c: &Coordinator,
    path: &'static str,
    headers: &[(&'static str, &str)],
    bodies: Vec<Vec<u8>>,
) -> Result<Vec<u8>, Status> {
    let mut grpc = tonic::client::Grpc::new(c.channel.clone());
    grpc.ready().await.unwrap();
    let req = raw_request(futures::stream::iter(bodies), headers);
    grpc.client_streaming(req, http::uri::PathAndQuery::from_static(path), RawCodec).await.map(|r| r.into_inner())
}

const SUBMIT_JOB: &str = "/camp.v1.JobService/SubmitJob";

#[sqlx::test(migrations = false)]
async fn malformed_protobuf_is_invalid_argument_not_internal(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let alice = [("x-camp-user", "alice")];
    let before = db_state(&c.pool).await;
    // The raw path works: a well-formed request through it is stored.
    let good = prost::Message::encode_to_vec(&v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() });
    raw_unary(&c, SUBMIT_JOB, &alice, good).await.unwrap();
    let after_good = db_state(&c.pool).await;
    assert_ne!(after_good, before);
    for (what, bytes) in [
        ("a field longer than the message", vec![0x0a, 0x05, 0x01]),
        ("a varint that never ends", vec![0x18, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        ("wire type 7", vec![0x0f, 0x00]),
        ("a spec that is not a message", vec![0x0a, 0x02, 0xff, 0xff]),
    ] {
        let s = refused(what, raw_unary(&c, SUBMIT_JOB, &alice, bytes).await, Code::InvalidArgument);
        assert!(s.message().contains("malformed"), "{what}: {}", s.message());
    }
    assert_eq!(db_state(&c.pool).await, after_good);
}

#[sqlx::test(migrations = false)]
async fn a_malformed_message_in_a_worker_stream_is_invalid_argument_and_nothing_is_stored(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let r = running(&mut jobs, &mut w, spec()).await;
    let before = db_state(&c.pool).await;
    let session = [("x-camp-session", w.session.as_str())];
    // A good batch through the raw path is stored: the path works.
    let good = prost::Message::encode_to_vec(&batch(r.job, r.attempt, 1, 2));
    raw_client_stream(&c, "/camp.v1.WorkerService/Report", &session, vec![good]).await.unwrap();
    let after_good = db_state(&c.pool).await;
    assert_ne!(after_good, before);
    let report = raw_client_stream(&c, "/camp.v1.WorkerService/Report", &session, vec![vec![0x08, 0x80]]).await;
    let s = refused("a malformed report batch", report, Code::InvalidArgument);
    assert!(s.message().contains("malformed"), "{}", s.message());
    // A checkpoint upload whose header is not a message.
    let upload = raw_client_stream(&c, "/camp.v1.WorkerService/UploadCheckpoint", &session, vec![vec![0x0a, 0x03, 0x08]]).await;
    refused("a malformed upload header", upload, Code::InvalidArgument);
    assert_eq!(db_state(&c.pool).await, after_good);
}

#[sqlx::test(migrations = false)]
async fn a_string_holding_invalid_utf8_is_invalid_argument_not_internal(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let before = db_state(&c.pool).await;
    // SubmitJobRequest { spec, name: [ff fe] }: a valid request with the name field appended.
    let mut submit = prost::Message::encode_to_vec(&v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() });
    submit.extend([0x12, 0x02, 0xff, 0xfe]);
    let s = refused(
        "a job name that is not UTF-8",
        raw_unary(&c, SUBMIT_JOB, &[("x-camp-user", "alice")], submit).await,
        Code::InvalidArgument,
    );
    assert!(s.message().to_lowercase().contains("utf"), "{}", s.message());
    // RegisterRequest { name: [c3 28], device_kind: "cpu" }.
    let register = vec![0x0a, 0x02, 0xc3, 0x28, 0x1a, 0x03, b'c', b'p', b'u'];
    refused(
        "a worker name that is not UTF-8",
        raw_unary(&c, "/camp.v1.WorkerService/Register", &[], register).await,
        Code::InvalidArgument,
    );
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn out_of_range_epochs_and_batch_sizes_are_refused(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    type Mutation = Box<dyn Fn(&mut v1::JobSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("epochs", Box::new(|s| s.epochs = u32::MAX)),
        ("epochs", Box::new(|s| s.epochs = (1 << 31) + 1)),
        ("batch_size", Box::new(|s| s.batch_size = 1_000_000_000)),
    ];
    for (field, mutate) in cases {
        let mut s = spec();
        mutate(&mut s);
        invalid(jobs.submit_job(v1::SubmitJobRequest { spec: Some(s.clone()), ..Default::default() }).await, field);
        let request = v1::SubmitPipelineRequest { name: "p".into(), nodes: vec![node("n", s, &[], 0)], ..Default::default() };
        invalid(jobs.submit_pipeline(request).await, &format!("nodes[0] (n).spec.{field}"));
    }
    assert_eq!(count(&c.pool, "jobs").await, 0);
    assert_eq!(count(&c.pool, "experiments").await, 0);
}

#[sqlx::test(migrations = false)]
async fn a_checkpoint_header_with_top1_above_one_or_size_zero_is_refused_and_nothing_is_stored(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let r = running(&mut jobs, &mut w, spec()).await;
    let before = db_state(&c.pool).await;
    let bytes = b"weights";
    invalid(w.upload(r.job, r.attempt, 2, 5.0, bytes).await, "top1");
    invalid(w.upload(r.job, r.attempt, 2, -0.5, bytes).await, "top1");
    invalid(w.upload(r.job, r.attempt, 2, f64::INFINITY, bytes).await, "top1");
    invalid(w.upload_with(v1::CheckpointHeader { size: 0, ..header(r.job, r.attempt, 2, 0.5, b"") }, b"").await, "size");
    // Declared empty, sent bytes anyway.
    invalid(w.upload_with(v1::CheckpointHeader { size: 0, ..header(r.job, r.attempt, 2, 0.5, bytes) }, bytes).await, "size");
    assert_eq!(db_state(&c.pool).await, before);
    assert_eq!(jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: r.job }).await.unwrap().into_inner().checkpoints.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_checkpoint_id_of_one_job_with_the_job_id_of_another_is_refused(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let x = running(&mut jobs, &mut w, spec()).await;
    let y = running(&mut jobs, &mut w, spec()).await;
    let mismatched = v1::DownloadCheckpointRequest { checkpoint_id: x.checkpoint, job_id: y.job, which: String::new() };
    invalid(read_download(jobs.download_checkpoint(mismatched.clone()).await).await, "checkpoint_id");
    invalid(read_download(w.client.download_checkpoint(mismatched).await).await, "checkpoint_id");
    // Matched, it downloads.
    let matched = v1::DownloadCheckpointRequest { checkpoint_id: x.checkpoint, job_id: x.job, which: String::new() };
    read_download(jobs.download_checkpoint(matched).await).await.unwrap();
}

#[sqlx::test(migrations = false)]
async fn a_listing_limit_of_a_million_is_refused(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("alice");
    let r = submit(&mut jobs, spec()).await;
    invalid(jobs.list_jobs(v1::ListJobsRequest { limit: 1_000_000, ..Default::default() }).await, "limit");
    invalid(jobs.list_experiments(v1::ListExperimentsRequest { limit: 1_000_000, ..Default::default() }).await, "limit");
    invalid(jobs.query_metrics(v1::QueryMetricsRequest { job_id: r.id, limit: 1_000_000, ..Default::default() }).await, "limit");
    invalid(jobs.get_logs(v1::GetLogsRequest { job_id: r.id, limit: 1_000_000, ..Default::default() }).await, "limit");
    let at_max = jobs.list_jobs(v1::ListJobsRequest { limit: camp_proto::limits::MAX_JOBS_PAGE, ..Default::default() }).await.unwrap();
    assert_eq!(at_max.into_inner().jobs.len(), 1);
}

#[sqlx::test(migrations = false)]
async fn a_bad_x_camp_user_name_is_refused(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let before = db_state(&c.pool).await;
    let too_long = "a".repeat(65);
    for name in ["bad name", "../root", "-rf", ".hidden", "al/ice", "a;b", too_long.as_str()] {
        let mut jobs = c.jobs_as(name);
        invalid(jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() }).await, "x-camp-user");
        invalid(jobs.list_jobs(v1::ListJobsRequest::default()).await, "x-camp-user");
    }
    // Not ASCII: sent as raw bytes.
    let mut jobs = c.jobs(Headers::default());
    let mut req = tonic::Request::new(v1::ListJobsRequest::default());
    req.metadata_mut().insert("x-camp-user", tonic::metadata::MetadataValue::try_from("ālice".as_bytes()).unwrap());
    invalid(jobs.list_jobs(req).await, "x-camp-user");
    assert_eq!(db_state(&c.pool).await, before);
    // A good name still works.
    submit(&mut c.jobs_as("a.b-c_d@lab"), spec()).await;
}

// ---------------------------------------------------------------------------
// 7. Expiry and revocation

/// Sleeps until `at` has passed by a margin.
async fn sleep_past(at: chrono::DateTime<chrono::Utc>) {
    let left = (at - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left + Duration::from_millis(150)).await;
}

#[sqlx::test(migrations = false)]
async fn an_expired_user_token_stops_working_on_the_next_call(pool: PgPool) {
    let c = Coordinator::start(pool, require_auth()).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1_200);
    let (token, _) = c.credential(Role::User, "alice", Some(expires)).await;
    let mut jobs = c.jobs(Headers::default().bearer(&token));
    submit(&mut jobs, spec()).await;
    sleep_past(expires).await;
    let s = refused("after expiry", jobs.list_jobs(v1::ListJobsRequest::default()).await, Code::Unauthenticated);
    assert!(s.message().contains("expired"), "{}", s.message());
    refused(
        "after expiry",
        jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() }).await,
        Code::Unauthenticated,
    );
    assert_eq!(count(&c.pool, "jobs").await, 1);
}

#[sqlx::test(migrations = false)]
async fn a_revoked_user_token_stops_working_on_the_next_call(pool: PgPool) {
    let c = Coordinator::start(pool, require_auth()).await;
    let (token, record) = c.credential(Role::User, "alice", None).await;
    let (other, _) = c.credential(Role::User, "alice", None).await;
    let mut jobs = c.jobs(Headers::default().bearer(&token));
    submit(&mut jobs, spec()).await;
    c.store.revoke_credential(record.id).await.unwrap();
    let s = refused("after revocation", jobs.list_jobs(v1::ListJobsRequest::default()).await, Code::Unauthenticated);
    assert!(s.message().contains("revoked"), "{}", s.message());
    refused(
        "after revocation",
        jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() }).await,
        Code::Unauthenticated,
    );
    assert_eq!(count(&c.pool, "jobs").await, 1);
    // Another token of the same user is unaffected.
    c.jobs(Headers::default().bearer(&other)).list_jobs(v1::ListJobsRequest::default()).await.unwrap();
}

/// A worker registered with a credential that then ends (`end`): its session stops working.
async fn worker_session_ends_with_its_credential(c: &Coordinator, token: &str, mut w: Worker, end: impl std::future::Future<Output = ()>) {
    let mut jobs = c.jobs(Headers::default().bearer(&c.token(Role::User, "alice").await));
    let job = submit(&mut jobs, spec()).await;
    let a = w.claim(0).await.expect("claimed before the end");
    w.heartbeat(&[(job.id, a.attempt)]).await.unwrap();
    end.await;
    let before = db_state(&c.pool).await;
    let r = Running { job: job.id, attempt: a.attempt, checkpoint: 0 };
    let attempts = worker_writes(&mut w.client, r).await;
    refused("heartbeat", attempts.heartbeat, Code::Unauthenticated);
    all_refused("the ended credential", &attempts.others, &[Code::Unauthenticated]);
    let claim = w.client.claim(v1::ClaimRequest { worker_id: String::new(), wait_ms: 0 }).await;
    refused("claim", claim, Code::Unauthenticated);
    // Nor does its session work alone, nor can it register anew.
    let mut bare = c.workers(Headers::default().with("x-camp-session", &w.session));
    refused("the session alone", bare.claim(v1::ClaimRequest { worker_id: String::new(), wait_ms: 0 }).await, Code::Unauthenticated);
    let again = c.workers(Headers::default().bearer(token)).register(register_request("again")).await;
    refused("registering again", again, Code::Unauthenticated);
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn a_revoked_worker_token_ends_its_workers_session_on_the_next_call(pool: PgPool) {
    let c = Coordinator::start(pool, require_auth()).await;
    let (token, record) = c.credential(Role::Worker, "fleet", None).await;
    let w = c.register("w", "cpu", &["cifar10"], Some(&token)).await;
    let store = c.store.clone();
    worker_session_ends_with_its_credential(&c, &token, w, async move {
        store.revoke_credential(record.id).await.unwrap();
    })
    .await;
}

#[sqlx::test(migrations = false)]
async fn an_expired_worker_token_ends_its_workers_session_on_the_next_call(pool: PgPool) {
    let c = Coordinator::start(pool, require_auth()).await;
    let expires = chrono::Utc::now() + chrono::Duration::milliseconds(1_500);
    let (token, _) = c.credential(Role::Worker, "fleet", Some(expires)).await;
    let w = c.register("w", "cpu", &["cifar10"], Some(&token)).await;
    worker_session_ends_with_its_credential(&c, &token, w, sleep_past(expires)).await;
}

// ---------------------------------------------------------------------------
// 8. Fair share and the cap

async fn submit_n(jobs: &mut Jobs, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for _ in 0..n {
        ids.push(submit(jobs, spec()).await.id);
    }
    ids
}

async fn owner_of(jobs: &mut Jobs, id: i64) -> String {
    get(jobs, id).await.owner
}

#[sqlx::test(migrations = false)]
async fn at_equal_priority_claims_alternate_between_users(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    let mut bob = c.jobs_as("bob");
    let a = submit_n(&mut alice, 3).await;
    let b = submit_n(&mut bob, 3).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let mut claimed = Vec::new();
    while let Some(assignment) = w.claim(0).await {
        claimed.push(assignment.job_id);
    }
    assert_eq!(claimed, vec![a[0], b[0], a[1], b[1], a[2], b[2]], "alice, bob, alice, bob, ...: each user's oldest first");
    let mut owners = Vec::new();
    for id in claimed {
        owners.push(owner_of(&mut alice, id).await);
    }
    assert_eq!(owners, ["alice", "bob", "alice", "bob", "alice", "bob"]);
}

fn capped() -> Settings {
    Settings { claims: ClaimPolicy { max_running_per_user: Some(2) }, ..Settings::default() }
}

#[sqlx::test(migrations = false)]
async fn a_user_at_the_running_cap_waits_while_others_run_and_is_told_why(pool: PgPool) {
    let c = Coordinator::start(pool, capped()).await;
    let mut alice = c.jobs_as("alice");
    let mut bob = c.jobs_as("bob");
    let a = submit_n(&mut alice, 3).await;
    let b = submit_n(&mut bob, 3).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let mut claimed = Vec::new();
    while let Some(assignment) = w.claim(0).await {
        claimed.push(assignment.job_id);
    }
    assert_eq!(claimed, vec![a[0], b[0], a[1], b[1]], "two each, then nobody's third");
    let waiting = get(&mut alice, a[2]).await;
    assert_eq!(waiting.state, JobState::Queued as i32);
    assert!(
        waiting.waiting_reason.contains("alice already has 2 running jobs"),
        "alice's third job says she is at her cap: {}",
        waiting.waiting_reason
    );
    assert!(get(&mut bob, b[2]).await.waiting_reason.contains("bob already has 2 running jobs"));
    // One of alice's finishes: her third starts, bob's still waits.
    w.finish(a[0], 1, v1::Outcome::Succeeded).await.unwrap();
    assert_eq!(w.claim(0).await.map(|x| x.job_id), Some(a[2]));
    assert!(w.claim(0).await.is_none());
}

#[sqlx::test(migrations = false)]
async fn a_user_at_the_cap_does_not_hold_up_others_even_at_a_higher_priority(pool: PgPool) {
    let settings = Settings { access: Access { max_user_priority: 5, ..Access::default() }, ..capped() };
    let c = Coordinator::start(pool, settings).await;
    let mut alice = c.jobs_as("alice");
    let mut bob = c.jobs_as("bob");
    // Alice's come first and at a higher priority: still, at her cap, bob's run.
    let mut a = Vec::new();
    for _ in 0..4 {
        a.push(
            alice.submit_job(v1::SubmitJobRequest { spec: Some(spec()), priority: 5, ..Default::default() }).await.unwrap().into_inner().id,
        );
    }
    let b = submit_n(&mut bob, 2).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let mut claimed = Vec::new();
    while let Some(assignment) = w.claim(0).await {
        claimed.push(assignment.job_id);
    }
    assert_eq!(claimed, vec![a[0], a[1], b[0], b[1]], "priority first, until alice is at her cap");
    let (running,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM jobs WHERE owner = 'alice' AND state = 'running'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(running, 2);
    for id in b {
        assert_eq!(get(&mut bob, id).await.state, JobState::Running as i32, "bob's run while alice waits");
    }
    assert!(get(&mut alice, a[3]).await.waiting_reason.contains("alice already has 2 running jobs"));
}

#[sqlx::test(migrations = false)]
async fn concurrent_claims_never_start_more_than_the_cap_for_one_user(pool: PgPool) {
    let c = Coordinator::start(pool, capped()).await;
    let mut alice = c.jobs_as("alice");
    submit_n(&mut alice, 6).await;
    let mut workers = Vec::new();
    for i in 0..6 {
        workers.push(c.register(&format!("w{i}"), "cpu", &["cifar10"], None).await);
    }
    let claims = workers.into_iter().map(|mut w| tokio::spawn(async move { w.claim(0).await }));
    let got = futures::future::join_all(claims).await.into_iter().filter(|r| r.as_ref().unwrap().is_some()).count();
    assert_eq!(got, 2, "six concurrent claims start two of alice's jobs");
    let (running,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE state = 'running'").fetch_one(&c.pool).await.unwrap();
    assert_eq!(running, 2);
}

#[sqlx::test(migrations = false)]
async fn a_waiting_job_says_its_parents_have_not_finished(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    c.register("w", "cpu", &["cifar10"], None).await;
    let exp = submit_pipeline(&mut alice, "p").await;
    let (first, second) = (exp.jobs[0].id, exp.jobs[1].id);
    let reason = get(&mut alice, second).await.waiting_reason;
    assert_eq!(reason, format!("waiting for its parents to succeed: job {first} (queued)"));
    assert_eq!(get(&mut alice, first).await.waiting_reason, "next in line: waiting for a free worker");
}

#[sqlx::test(migrations = false)]
async fn a_waiting_job_says_no_live_worker_offers_its_device_or_data_set(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    let nobody = submit(&mut alice, spec()).await.id;
    assert_eq!(get(&mut alice, nobody).await.waiting_reason, "no live worker offers data set cifar10");
    c.register("w", "cpu", &["cifar10"], None).await;
    let cifar100 = submit(&mut alice, JobSpec { dataset: "cifar100".into(), ..JobSpec::default() }.to_proto()).await.id;
    let cuda = submit(&mut alice, JobSpec { device: DeviceRequest::Cuda, ..JobSpec::default() }.to_proto()).await.id;
    assert_eq!(get(&mut alice, cifar100).await.waiting_reason, "no live worker offers data set cifar100");
    assert_eq!(get(&mut alice, cuda).await.waiting_reason, "no live worker offers device cuda and data set cifar10");
    assert_eq!(get(&mut alice, nobody).await.waiting_reason, "next in line: waiting for a free worker");
    let behind = submit(&mut alice, spec()).await.id;
    let reason = get(&mut alice, behind).await.waiting_reason;
    assert!(reason.ends_with("queued job(s) come first (higher priority, or older at the same priority)"), "{reason}");
}

// ---------------------------------------------------------------------------
// 9. Idempotent submission

fn keyed(request_id: &str) -> v1::SubmitJobRequest {
    v1::SubmitJobRequest { spec: Some(spec()), name: "keyed".into(), request_id: request_id.into(), ..Default::default() }
}

#[sqlx::test(migrations = false)]
async fn a_retried_submission_with_the_same_request_id_returns_the_same_job(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    let first = alice.submit_job(keyed("retry-1")).await.unwrap().into_inner();
    let again = alice.submit_job(keyed("retry-1")).await.unwrap().into_inner();
    assert_eq!(again.id, first.id);
    assert_eq!(count(&c.pool, "jobs").await, 1);
    let other = alice.submit_job(keyed("retry-2")).await.unwrap().into_inner();
    assert_ne!(other.id, first.id, "another key is another job");
    // Without a key, each submission is a job.
    submit(&mut alice, spec()).await;
    submit(&mut alice, spec()).await;
    assert_eq!(count(&c.pool, "jobs").await, 4);
}

#[sqlx::test(migrations = false)]
async fn five_concurrent_submissions_with_one_request_id_make_one_job(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let calls = (0..5).map(|_| {
        let mut alice = c.jobs_as("alice");
        tokio::spawn(async move { alice.submit_job(keyed("burst")).await.map(|r| r.into_inner().id) })
    });
    let ids: Vec<i64> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(ids.iter().all(|&id| id == ids[0]), "every caller gets the one job: {ids:?}");
    assert_eq!(count(&c.pool, "jobs").await, 1);
    assert_eq!(count(&c.pool, "submissions").await, 1);
}

#[sqlx::test(migrations = false)]
async fn a_request_id_reused_with_a_different_request_is_a_failed_precondition(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    alice.submit_job(keyed("k")).await.unwrap();
    let before = db_state(&c.pool).await;
    let mut other_spec = keyed("k");
    other_spec.spec.as_mut().unwrap().epochs = 3;
    refused("another spec", alice.submit_job(other_spec).await, Code::FailedPrecondition);
    refused("another name", alice.submit_job(v1::SubmitJobRequest { name: "other".into(), ..keyed("k") }).await, Code::FailedPrecondition);
    refused("another priority", alice.submit_job(v1::SubmitJobRequest { priority: -1, ..keyed("k") }).await, Code::FailedPrecondition);
    refused(
        "a pipeline",
        alice.submit_pipeline(v1::SubmitPipelineRequest { request_id: "k".into(), ..pipeline("p") }).await,
        Code::FailedPrecondition,
    );
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn pipelines_are_idempotent_by_request_id_too(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut alice = c.jobs_as("alice");
    let request = v1::SubmitPipelineRequest { request_id: "pipe-1".into(), ..pipeline("p") };
    let first = alice.submit_pipeline(request.clone()).await.unwrap().into_inner();
    let again = alice.submit_pipeline(request.clone()).await.unwrap().into_inner();
    assert_eq!(again.id, first.id);
    assert_eq!(again.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), first.jobs.iter().map(|j| j.id).collect::<Vec<_>>());
    // Five at once with a new key: one experiment.
    let burst = v1::SubmitPipelineRequest { request_id: "pipe-2".into(), ..pipeline("p") };
    let calls = (0..5).map(|_| {
        let mut alice = c.jobs_as("alice");
        let burst = burst.clone();
        tokio::spawn(async move { alice.submit_pipeline(burst).await.map(|r| r.into_inner().id) })
    });
    let ids: Vec<i64> = futures::future::join_all(calls).await.into_iter().map(|r| r.unwrap().unwrap()).collect();
    assert!(ids.iter().all(|&id| id == ids[0]), "{ids:?}");
    assert_eq!(count(&c.pool, "experiments").await, 2);
    assert_eq!(count(&c.pool, "jobs").await, 4);
    // The same key with another pipeline, or for a single job.
    let before = db_state(&c.pool).await;
    refused(
        "another pipeline",
        alice.submit_pipeline(v1::SubmitPipelineRequest { name: "q".into(), ..request.clone() }).await,
        Code::FailedPrecondition,
    );
    refused("a single job", alice.submit_job(keyed("pipe-1")).await, Code::FailedPrecondition);
    assert_eq!(db_state(&c.pool).await, before);
}

#[sqlx::test(migrations = false)]
async fn another_user_with_the_same_request_id_gets_their_own_job(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let alices = c.jobs_as("alice").submit_job(keyed("shared")).await.unwrap().into_inner();
    let bobs = c.jobs_as("bob").submit_job(keyed("shared")).await.unwrap().into_inner();
    assert_ne!(bobs.id, alices.id);
    assert_eq!((alices.owner.as_str(), bobs.owner.as_str()), ("alice", "bob"));
    // Another request under the same key is a third user's own business.
    let carols = c.jobs_as("carol").submit_job(v1::SubmitJobRequest { priority: -3, ..keyed("shared") }).await.unwrap().into_inner();
    assert_eq!(carols.owner, "carol");
    let pipes = (
        c.jobs_as("alice")
            .submit_pipeline(v1::SubmitPipelineRequest { request_id: "p".into(), ..pipeline("p") })
            .await
            .unwrap()
            .into_inner(),
        c.jobs_as("bob").submit_pipeline(v1::SubmitPipelineRequest { request_id: "p".into(), ..pipeline("p") }).await.unwrap().into_inner(),
    );
    assert_ne!(pipes.0.id, pipes.1.id);
    assert_eq!(count(&c.pool, "jobs").await, 3 + 4);
}
