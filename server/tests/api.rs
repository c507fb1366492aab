//! The coordinator through its real gRPC interface on a loopback socket, against
//! a fresh PostgreSQL database per test. The test plays the worker's side of the
//! protocol by hand so that it can misbehave (stale attempts, bad hashes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::v1::job_service_client::JobServiceClient;
use camp_proto::v1::worker_service_client::WorkerServiceClient;
use camp_proto::v1::{self, JobState};
use camp_proto::JobSpec;
use camp_server::store::{PgStore, Retention, Store};
use camp_server::{serve, Settings};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::transport::Channel;
use tonic::Code;

struct Harness {
    jobs: JobServiceClient<Channel>,
    workers: WorkerServiceClient<Channel>,
}

async fn start(pool: PgPool, settings: Settings) -> Harness {
    let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(pool).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(store, settings, listener, std::future::pending()));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    Harness { jobs: JobServiceClient::new(channel.clone()), workers: WorkerServiceClient::new(channel) }
}

fn quick() -> Settings {
    Settings { lease: Duration::from_millis(600), reap_every: Duration::from_millis(100), ..Settings::default() }
}

fn spec() -> v1::JobSpec {
    JobSpec { dataset: "cifar10".into(), epochs: 2, ..JobSpec::default() }.to_proto()
}

async fn submit(h: &mut Harness, spec: v1::JobSpec) -> v1::Job {
    h.jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec), name: String::new(), priority: 0, max_attempts: 0 })
        .await
        .unwrap()
        .into_inner()
}

async fn register(h: &mut Harness, name: &str, device: &str, datasets: &[&str]) -> String {
    h.workers
        .register(v1::RegisterRequest {
            name: name.into(),
            hostname: "test".into(),
            device_kind: device.into(),
            gpus: vec![],
            datasets: datasets.iter().map(|s| s.to_string()).collect(),
            labels: Default::default(),
        })
        .await
        .unwrap()
        .into_inner()
        .worker_id
}

async fn claim(h: &mut Harness, worker: &str, wait_ms: u32) -> Option<v1::Assignment> {
    h.workers.claim(v1::ClaimRequest { worker_id: worker.into(), wait_ms }).await.unwrap().into_inner().assignment
}

fn batch(job_id: i64, attempt: u32, sequence: u64, step: i64) -> v1::ReportBatch {
    v1::ReportBatch {
        job_id,
        attempt,
        sequence,
        metrics: vec![v1::Metric { name: "loss".into(), value: 1.0 / step as f64, step, epoch: 1, ..Default::default() }],
        log_lines: vec![format!("step {step}")],
        epoch: 0,
    }
}

async fn report(h: &mut Harness, batches: Vec<v1::ReportBatch>) -> Result<v1::ReportResponse, tonic::Status> {
    h.workers.report(futures::stream::iter(batches)).await.map(|r| r.into_inner())
}

async fn upload(h: &mut Harness, job_id: i64, attempt: u32, epoch: u32, top1: f64, bytes: &[u8], sha: Option<String>) -> Result<v1::Checkpoint, tonic::Status> {
    let sha256 = sha.unwrap_or_else(|| hex::encode(Sha256::digest(bytes)));
    let header = v1::CheckpointHeader { job_id, attempt, epoch, step: epoch as i64 * 10, sha256, size: bytes.len() as u64, top1, metadata_json: "{}".into() };
    let mut msgs = vec![v1::UploadChunk { header: Some(header), data: vec![] }];
    msgs.extend(bytes.chunks(7).map(|c| v1::UploadChunk { header: None, data: c.to_vec() }));
    h.workers.upload_checkpoint(futures::stream::iter(msgs)).await.map(|r| r.into_inner())
}

async fn finish(h: &mut Harness, job_id: i64, attempt: u32, outcome: v1::Outcome) -> Result<(), tonic::Status> {
    h.workers
        .finish(v1::FinishRequest { job_id, attempt, outcome: outcome as i32, message: String::new(), result_json: r#"{"best_top1":0.5}"#.into() })
        .await
        .map(|_| ())
}

async fn get(h: &mut Harness, id: i64) -> v1::Job {
    h.jobs.get_job(v1::GetJobRequest { id }).await.unwrap().into_inner()
}

async fn wait_state(h: &mut Harness, id: i64, want: JobState) -> v1::Job {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = get(h, id).await;
        if job.state == want as i32 {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {want:?}: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[sqlx::test(migrations = false)]
async fn each_invalid_spec_field_is_refused_by_name_and_nothing_is_stored(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    type Mutation = Box<dyn Fn(&mut v1::JobSpec)>;
    let cases: Vec<(&str, Mutation)> = vec![
        ("arch", Box::new(|s| s.arch = "resnet_unknown".into())),
        ("dataset", Box::new(|s| s.dataset = "mnist-not".into())),
        ("lr", Box::new(|s| s.lr = -0.1)),
        ("lr", Box::new(|s| s.lr = 0.0)),
        ("batch_size", Box::new(|s| s.batch_size = 0)),
        ("epochs", Box::new(|s| s.epochs = 0)),
        ("stage", Box::new(|s| s.stage = "warmup".into())),
        ("momentum", Box::new(|s| s.momentum = 2.0)),
        ("device", Box::new(|s| s.device = "tpu".into())),
        ("bits_weights", Box::new(|s| { s.stage = "qat".into(); s.bits_weights = Some(12) })),
        ("bits_overrides", Box::new(|s| {
            s.stage = "qat".into();
            s.bits_overrides = vec![v1::BitsOverride { pattern: "layer7.*".into(), wts: None, acts: None }];
        })),
        ("init_from", Box::new(|s| { s.stage = "sp".into(); s.init_from = 0 })),
    ];
    for (field, mutate) in cases {
        let mut s = spec();
        mutate(&mut s);
        let err = h
            .jobs
            .submit_job(v1::SubmitJobRequest { spec: Some(s), name: String::new(), priority: 0, max_attempts: 0 })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}:")), "message should name {field}: {}", err.message());
    }
    let err = h.jobs.submit_job(v1::SubmitJobRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "spec: missing"));
    let listed = h.jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner();
    assert!(listed.jobs.is_empty(), "nothing may be stored: {:?}", listed.jobs);
}

#[sqlx::test(migrations = false)]
async fn an_idle_long_poll_is_woken_by_a_submission(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    let worker = register(&mut h, "w1", "cpu", &["cifar10"]).await;
    let mut workers = h.workers.clone();
    let waiting = tokio::spawn(async move {
        let a = workers.claim(v1::ClaimRequest { worker_id: worker, wait_ms: 10_000 }).await.unwrap().into_inner();
        (a.assignment, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let submitting = Instant::now();
    let job = submit(&mut h, spec()).await;
    let (assignment, claimed_at) = waiting.await.unwrap();
    // From the submit call's start: it includes the submission's own round trip.
    let latency = claimed_at.duration_since(submitting);
    let a = assignment.expect("the waiting worker gets the job");
    assert_eq!((a.job_id, a.attempt), (job.id, 1));
    // A figure to read, not a timing to race: the bound only tells a NOTIFY wake-up
    // (milliseconds) from the 5 s safety re-check.
    assert!(latency < Duration::from_secs(2), "claim answered {latency:?} after the submission: no wake-up");
    println!("submission -> claim latency: {latency:?}");
}

#[sqlx::test(migrations = false)]
async fn a_worker_only_gets_jobs_it_can_run_in_priority_order(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    let cuda_job = submit(&mut h, JobSpec { device: camp_proto::spec::DeviceRequest::Cuda, ..JobSpec::default() }.to_proto()).await;
    let fmnist = submit(&mut h, JobSpec { dataset: "fashion-mnist".into(), ..JobSpec::default() }.to_proto()).await;
    let low = submit(&mut h, spec()).await;
    let high = h
        .jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec()), name: "urgent".into(), priority: 5, max_attempts: 0 })
        .await
        .unwrap()
        .into_inner();
    let cpu = register(&mut h, "cpu-box", "cpu", &["cifar10"]).await;
    assert_eq!(claim(&mut h, &cpu, 0).await.unwrap().job_id, high.id);
    assert_eq!(claim(&mut h, &cpu, 0).await.unwrap().job_id, low.id);
    assert!(claim(&mut h, &cpu, 50).await.is_none(), "no cuda job, no fashion-mnist job for this worker");
    let gpu = register(&mut h, "gpu-box", "cuda", &["cifar10", "fashion-mnist"]).await;
    let mut got = vec![claim(&mut h, &gpu, 0).await.unwrap().job_id, claim(&mut h, &gpu, 0).await.unwrap().job_id];
    got.sort();
    assert_eq!(got, vec![cuda_job.id, fmnist.id]);
}

#[sqlx::test(migrations = false)]
async fn stale_attempts_cannot_write_anything(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    let job = submit(&mut h, spec()).await;
    let w1 = register(&mut h, "w1", "cpu", &["cifar10"]).await;
    let a1 = claim(&mut h, &w1, 0).await.unwrap();
    assert_eq!(a1.attempt, 1);
    report(&mut h, vec![batch(job.id, 1, 0, 1)]).await.unwrap();
    upload(&mut h, job.id, 1, 1, 0.3, b"epoch one weights", None).await.unwrap();
    // w1 stops heartbeating: the lease expires and w2 takes attempt 2.
    wait_state(&mut h, job.id, JobState::Queued).await;
    let w2 = register(&mut h, "w2", "cpu", &["cifar10"]).await;
    let a2 = claim(&mut h, &w2, 1000).await.unwrap();
    assert_eq!(a2.attempt, 2);
    assert_eq!(a2.resume_from.as_ref().map(|c| c.epoch), Some(1), "attempt 2 resumes from the epoch-1 checkpoint");

    let before_metrics = h.jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner();
    let before_ckpts = h.jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner();

    let err = report(&mut h, vec![batch(job.id, 1, 1, 11)]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = upload(&mut h, job.id, 1, 2, 0.9, b"stale weights", None).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = finish(&mut h, job.id, 1, v1::Outcome::Succeeded).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let hb = h
        .workers
        .heartbeat(v1::HeartbeatRequest { worker_id: w1.clone(), jobs: vec![v1::RunningJob { job_id: job.id, attempt: 1 }] })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(hb.lost, vec![job.id], "the old worker learns it lost the job");

    let after_metrics = h.jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner();
    let after_ckpts = h.jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner();
    assert_eq!(before_metrics, after_metrics);
    assert_eq!(before_ckpts, after_ckpts);
    let j = get(&mut h, job.id).await;
    assert_eq!((j.state, j.attempt), (JobState::Running as i32, 2));

    // The current attempt still writes normally.
    finish(&mut h, job.id, 2, v1::Outcome::Succeeded).await.unwrap();
    assert_eq!(get(&mut h, job.id).await.state, JobState::Succeeded as i32);
}

#[sqlx::test(migrations = false)]
async fn resent_metric_batches_are_stored_once(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    let job = submit(&mut h, spec()).await;
    let w = register(&mut h, "w", "cpu", &["cifar10"]).await;
    claim(&mut h, &w, 0).await.unwrap();
    let r = report(&mut h, vec![batch(job.id, 1, 0, 1), batch(job.id, 1, 1, 2)]).await.unwrap();
    assert_eq!((r.stored, r.duplicates), (2, 0));
    let r = report(&mut h, vec![batch(job.id, 1, 1, 2), batch(job.id, 1, 2, 3)]).await.unwrap();
    assert_eq!((r.stored, r.duplicates), (1, 1));
    let rows = h.jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner().metrics;
    assert_eq!(rows.iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    let logs = h.jobs.get_logs(v1::GetLogsRequest { job_id: job.id }).await.unwrap().into_inner().lines;
    assert_eq!(logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), vec!["step 1", "step 2", "step 3"]);
}

#[sqlx::test(migrations = false)]
async fn a_checkpoint_whose_sha256_does_not_match_leaves_nothing(pool: PgPool) {
    let mut h = start(pool.clone(), quick()).await;
    let job = submit(&mut h, spec()).await;
    let w = register(&mut h, "w", "cpu", &["cifar10"]).await;
    claim(&mut h, &w, 0).await.unwrap();
    let wrong = hex::encode(Sha256::digest(b"something else"));
    let err = upload(&mut h, job.id, 1, 1, 0.5, b"the real bytes", Some(wrong)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("sha256:"), "{}", err.message());
    let listed = h.jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner();
    assert!(listed.checkpoints.is_empty());
    let (chunks,): (i64,) = sqlx::query_as("SELECT count(*) FROM checkpoint_chunks").fetch_one(&pool).await.unwrap();
    assert_eq!(chunks, 0, "no orphan chunks");
}

#[sqlx::test(migrations = false)]
async fn checkpoints_round_trip_and_retention_keeps_best_and_latest_two(pool: PgPool) {
    let mut h = start(pool, Settings { retention: Retention { keep_latest: 2, keep_best: true }, ..Settings::default() }).await;
    let job = submit(&mut h, spec()).await;
    let w = register(&mut h, "w", "cpu", &["cifar10"]).await;
    claim(&mut h, &w, 0).await.unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for (epoch, top1) in [(1, 0.2), (2, 0.7), (3, 0.5), (4, 0.6), (5, 0.4)] {
        let bytes = if epoch == 2 { big.clone() } else { format!("epoch {epoch}").into_bytes() };
        upload(&mut h, job.id, 1, epoch, top1, &bytes, None).await.unwrap();
    }
    let ckpts = h.jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner().checkpoints;
    assert_eq!(ckpts.iter().map(|c| (c.epoch, c.best)).collect::<Vec<_>>(), vec![(2, true), (4, false), (5, false)]);
    let mut stream = h
        .jobs
        .download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id: 0, job_id: job.id, which: "best".into() })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let info = first.info.unwrap();
    let mut bytes = first.data;
    while let Some(chunk) = stream.message().await.unwrap() {
        bytes.extend(chunk.data);
    }
    assert_eq!(info.epoch, 2);
    assert_eq!(bytes, big);
    assert_eq!(info.sha256, hex::encode(Sha256::digest(&big)));
}

#[sqlx::test(migrations = false)]
async fn expired_leases_requeue_until_max_attempts_then_fail(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    let job = h
        .jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec()), name: "flaky".into(), priority: 0, max_attempts: 2 })
        .await
        .unwrap()
        .into_inner();
    let w = register(&mut h, "w", "cpu", &["cifar10"]).await;
    assert_eq!(claim(&mut h, &w, 0).await.unwrap().attempt, 1);
    let j = wait_state(&mut h, job.id, JobState::Queued).await;
    assert!(j.message.contains("lease expired on attempt 1"), "{}", j.message);
    assert_eq!(claim(&mut h, &w, 0).await.unwrap().attempt, 2);
    let j = wait_state(&mut h, job.id, JobState::Failed).await;
    assert!(j.message.contains("2 of 2 attempts lost"), "{}", j.message);
}

#[sqlx::test(migrations = false)]
async fn heartbeats_keep_the_lease_and_carry_cancel_requests(pool: PgPool) {
    let mut h = start(pool, quick()).await;
    let job = submit(&mut h, spec()).await;
    let queued = submit(&mut h, spec()).await;
    let w = register(&mut h, "w", "cpu", &["cifar10"]).await;
    let a = claim(&mut h, &w, 0).await.unwrap();
    assert_eq!(a.job_id, job.id);
    let running = vec![v1::RunningJob { job_id: job.id, attempt: 1 }];
    for _ in 0..8 {
        let hb = h.workers.heartbeat(v1::HeartbeatRequest { worker_id: w.clone(), jobs: running.clone() }).await.unwrap().into_inner();
        assert!(hb.cancel.is_empty() && hb.lost.is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(get(&mut h, job.id).await.state, JobState::Running as i32, "heartbeats renewed the 600 ms lease for 1.2 s");

    let c = h.jobs.cancel_job(v1::CancelJobRequest { id: queued.id }).await.unwrap().into_inner();
    assert_eq!(c.state, JobState::Cancelled as i32, "a queued job is cancelled at once");
    let c = h.jobs.cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap().into_inner();
    assert!(c.cancel_requested && c.state == JobState::Running as i32);
    let hb = h.workers.heartbeat(v1::HeartbeatRequest { worker_id: w.clone(), jobs: running }).await.unwrap().into_inner();
    assert_eq!(hb.cancel, vec![job.id]);
    finish(&mut h, job.id, 1, v1::Outcome::Cancelled).await.unwrap();
    assert_eq!(get(&mut h, job.id).await.state, JobState::Cancelled as i32);
    let err = h.jobs.cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = h.jobs.cancel_job(v1::CancelJobRequest { id: 999_999 }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[sqlx::test(migrations = false)]
async fn tokens_are_required_when_auth_is_on_and_owners_alone_cancel(pool: PgPool) {
    let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(pool).await.unwrap());
    let (alice, bob) = (camp_server::auth::new_token(), camp_server::auth::new_token());
    store.create_token("alice", &camp_server::auth::token_sha256(&alice)).await.unwrap();
    store.create_token("bob", &camp_server::auth::token_sha256(&bob)).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(store, Settings { require_auth: true, ..quick() }, listener, std::future::pending()));
    let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
    let with = |token: &str| {
        let value: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
        JobServiceClient::with_interceptor(channel.clone(), move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", value.clone());
            Ok(req)
        })
    };
    let err = JobServiceClient::new(channel.clone()).list_jobs(v1::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let err = with("camp_wrong").list_jobs(v1::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    let job = with(&alice)
        .submit_job(v1::SubmitJobRequest { spec: Some(spec()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(job.owner, "alice");
    let err = with(&bob).cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    with(&alice).cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap();
}
