//! The coordinator through its real gRPC interface on a loopback socket, against
//! a fresh PostgreSQL database per test. The test plays the worker's side of the
//! protocol by hand so that it can misbehave (stale attempts, bad hashes).

mod common;

use std::time::{Duration, Instant};

use camp_proto::v1::{self, JobState};
use camp_proto::JobSpec;
use camp_server::store::Retention;
use camp_server::Settings;
use common::*;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::Code;

/// A coordinator with a short lease, and a client for user "tester".
async fn start(pool: PgPool, settings: Settings) -> (Coordinator, Jobs) {
    let c = Coordinator::start(pool, settings).await;
    let jobs = c.jobs_as("tester");
    (c, jobs)
}

fn quick() -> Settings {
    Settings { lease: Duration::from_millis(600), reap_every: Duration::from_millis(100), ..Settings::default() }
}

#[sqlx::test(migrations = false)]
async fn each_invalid_spec_field_is_refused_by_name_and_nothing_is_stored(pool: PgPool) {
    let (_c, mut jobs) = start(pool, quick()).await;
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
        (
            "bits_weights",
            Box::new(|s| {
                s.stage = "qat".into();
                s.bits_weights = Some(12)
            }),
        ),
        (
            "bits_overrides",
            Box::new(|s| {
                s.stage = "qat".into();
                s.bits_overrides = vec![v1::BitsOverride { pattern: "layer7.*".into(), wts: None, acts: None }];
            }),
        ),
        (
            "init_from",
            Box::new(|s| {
                s.stage = "sp".into();
                s.init_from = 0
            }),
        ),
    ];
    for (field, mutate) in cases {
        let mut s = spec();
        mutate(&mut s);
        let err = jobs.submit_job(v1::SubmitJobRequest { spec: Some(s), ..Default::default() }).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{field}: {err:?}");
        assert!(err.message().starts_with(&format!("{field}:")), "message should name {field}: {}", err.message());
    }
    let err = jobs.submit_job(v1::SubmitJobRequest::default()).await.unwrap_err();
    assert_eq!((err.code(), err.message()), (Code::InvalidArgument, "spec: missing"));
    let listed = jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner();
    assert!(listed.jobs.is_empty(), "nothing may be stored: {:?}", listed.jobs);
}

#[sqlx::test(migrations = false)]
async fn an_idle_long_poll_is_woken_by_a_submission(pool: PgPool) {
    let (c, mut jobs) = start(pool, quick()).await;
    let mut worker = c.register("w1", "cpu", &["cifar10"], None).await;
    let waiting = tokio::spawn(async move {
        let a = worker.claim(10_000).await;
        (a, Instant::now())
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let submitting = Instant::now();
    let job = submit(&mut jobs, spec()).await;
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
    let (c, _) = start(pool, quick()).await;
    let mut jobs = c.jobs(Headers::default().bearer(&c.token(camp_server::store::Role::Admin, "tester").await));
    let cuda_job = submit(&mut jobs, JobSpec { device: camp_proto::spec::DeviceRequest::Cuda, ..JobSpec::default() }.to_proto()).await;
    let fmnist = submit(&mut jobs, JobSpec { dataset: "fashion-mnist".into(), ..JobSpec::default() }.to_proto()).await;
    let low = submit(&mut jobs, spec()).await;
    let high = jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec()), name: "urgent".into(), priority: 5, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut cpu = c.register("cpu-box", "cpu", &["cifar10"], None).await;
    assert_eq!(cpu.claim(0).await.unwrap().job_id, high.id);
    assert_eq!(cpu.claim(0).await.unwrap().job_id, low.id);
    assert!(cpu.claim(50).await.is_none(), "no cuda job, no fashion-mnist job for this worker");
    let mut gpu = c.register("gpu-box", "cuda", &["cifar10", "fashion-mnist"], None).await;
    let mut got = vec![gpu.claim(0).await.unwrap().job_id, gpu.claim(0).await.unwrap().job_id];
    got.sort();
    assert_eq!(got, vec![cuda_job.id, fmnist.id]);
}

#[sqlx::test(migrations = false)]
async fn stale_attempts_cannot_write_anything(pool: PgPool) {
    let (c, mut jobs) = start(pool, quick()).await;
    let job = submit(&mut jobs, spec()).await;
    let mut w1 = c.register("w1", "cpu", &["cifar10"], None).await;
    let a1 = w1.claim(0).await.unwrap();
    assert_eq!(a1.attempt, 1);
    w1.report(vec![batch(job.id, 1, 0, 1)]).await.unwrap();
    w1.upload(job.id, 1, 1, 0.3, b"epoch one weights").await.unwrap();
    // w1 stops heartbeating: the lease expires and w2 takes attempt 2.
    wait_state(&mut jobs, job.id, JobState::Queued).await;
    let mut w2 = c.register("w2", "cpu", &["cifar10"], None).await;
    let a2 = w2.claim(1000).await.unwrap();
    assert_eq!(a2.attempt, 2);
    assert_eq!(a2.resume_from.as_ref().map(|c| c.epoch), Some(1), "attempt 2 resumes from the epoch-1 checkpoint");

    let before_metrics = jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner();
    let before_ckpts = jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner();

    let err = w1.report(vec![batch(job.id, 1, 1, 11)]).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = w1.upload(job.id, 1, 2, 0.9, b"stale weights").await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let err = w1.finish(job.id, 1, v1::Outcome::Succeeded).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{err:?}");
    let hb = w1.heartbeat(&[(job.id, 1)]).await.unwrap();
    assert_eq!(hb.lost, vec![job.id], "the old worker learns it lost the job");

    let after_metrics = jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner();
    let after_ckpts = jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner();
    assert_eq!(before_metrics, after_metrics);
    assert_eq!(before_ckpts, after_ckpts);
    let j = get(&mut jobs, job.id).await;
    assert_eq!((j.state, j.attempt), (JobState::Running as i32, 2));

    // The current attempt still writes normally.
    w2.finish(job.id, 2, v1::Outcome::Succeeded).await.unwrap();
    assert_eq!(get(&mut jobs, job.id).await.state, JobState::Succeeded as i32);
}

#[sqlx::test(migrations = false)]
async fn resent_metric_batches_are_stored_once(pool: PgPool) {
    let (c, mut jobs) = start(pool, quick()).await;
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    let r = w.report(vec![batch(job.id, 1, 0, 1), batch(job.id, 1, 1, 2)]).await.unwrap();
    assert_eq!((r.stored, r.duplicates), (2, 0));
    let r = w.report(vec![batch(job.id, 1, 1, 2), batch(job.id, 1, 2, 3)]).await.unwrap();
    assert_eq!((r.stored, r.duplicates), (1, 1));
    let rows = jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner().metrics;
    assert_eq!(rows.iter().map(|m| m.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    let logs = jobs.get_logs(v1::GetLogsRequest { job_id: job.id, ..Default::default() }).await.unwrap().into_inner().lines;
    assert_eq!(logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), vec!["step 1", "step 2", "step 3"]);
}

#[sqlx::test(migrations = false)]
async fn metrics_and_logs_come_in_pages(pool: PgPool) {
    let (c, mut jobs) = start(pool, quick()).await;
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    w.report((0..5).map(|i| batch(job.id, 1, i, i as i64 + 1)).collect()).await.unwrap();
    let mut steps = Vec::new();
    let mut after_id = 0;
    loop {
        let page = jobs
            .query_metrics(v1::QueryMetricsRequest { job_id: job.id, after_id, limit: 2, ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(page.metrics.len() <= 2);
        steps.extend(page.metrics.iter().map(|m| m.step));
        if page.next_after_id == 0 {
            break;
        }
        after_id = page.next_after_id;
    }
    assert_eq!(steps, vec![1, 2, 3, 4, 5]);
    let page = jobs.get_logs(v1::GetLogsRequest { job_id: job.id, after_id: 0, limit: 3, last: 0 }).await.unwrap().into_inner();
    assert_eq!((page.lines.len(), page.next_after_id), (3, page.lines[2].id));
    let rest =
        jobs.get_logs(v1::GetLogsRequest { job_id: job.id, after_id: page.next_after_id, limit: 3, last: 0 }).await.unwrap().into_inner();
    assert_eq!((rest.lines.len(), rest.next_after_id), (2, 0));
    let err = jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, limit: 1_000_000, ..Default::default() }).await.unwrap_err();
    assert!(err.message().starts_with("limit:"), "{}", err.message());
}

#[sqlx::test(migrations = false)]
async fn a_checkpoint_whose_sha256_does_not_match_leaves_nothing(pool: PgPool) {
    let (c, mut jobs) = start(pool.clone(), quick()).await;
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    let wrong = hex::encode(Sha256::digest(b"something else"));
    let bytes = b"the real bytes";
    let err = w.upload_with(v1::CheckpointHeader { sha256: wrong, ..header(job.id, 1, 1, 0.5, bytes) }, bytes).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(err.message().starts_with("sha256:"), "{}", err.message());
    let listed = jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner();
    assert!(listed.checkpoints.is_empty());
    let (chunks,): (i64,) = sqlx::query_as("SELECT count(*) FROM checkpoint_chunks").fetch_one(&pool).await.unwrap();
    assert_eq!(chunks, 0, "no orphan chunks");
    let (rows,): (i64,) = sqlx::query_as("SELECT count(*) FROM checkpoints").fetch_one(&pool).await.unwrap();
    assert_eq!(rows, 0, "no half-written checkpoint");
}

#[sqlx::test(migrations = false)]
async fn checkpoints_round_trip_and_retention_keeps_best_and_latest_two(pool: PgPool) {
    let (c, mut jobs) = start(pool, Settings { retention: Retention { keep_latest: 2, keep_best: true }, ..Settings::default() }).await;
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    for (epoch, top1) in [(1, 0.2), (2, 0.7), (3, 0.5), (4, 0.6), (5, 0.4)] {
        let bytes = if epoch == 2 { big.clone() } else { format!("epoch {epoch}").into_bytes() };
        w.upload(job.id, 1, epoch, top1, &bytes).await.unwrap();
    }
    let ckpts = jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.unwrap().into_inner().checkpoints;
    assert_eq!(ckpts.iter().map(|c| (c.epoch, c.best)).collect::<Vec<_>>(), vec![(2, true), (4, false), (5, false)]);
    let mut stream = jobs
        .download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id: 0, job_id: job.id, which: "best".into() })
        .await
        .unwrap()
        .into_inner();
    let first = stream.message().await.unwrap().unwrap();
    let info = first.info.unwrap();
    let mut bytes = first.data;
    while let Some(chunk) = stream.message().await.unwrap() {
        assert!(chunk.data.len() <= camp_proto::limits::DOWNLOAD_PIECE_BYTES);
        bytes.extend(chunk.data);
    }
    assert_eq!(info.epoch, 2);
    assert_eq!(bytes, big);
    assert_eq!(info.sha256, hex::encode(Sha256::digest(&big)));
    // The worker that holds the job reads it back too.
    assert_eq!(w.download(info.id).await.unwrap(), big);
}

#[sqlx::test(migrations = false)]
async fn expired_leases_requeue_until_max_attempts_then_fail(pool: PgPool) {
    let (c, mut jobs) = start(pool, quick()).await;
    let job = jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(spec()), name: "flaky".into(), max_attempts: 2, ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    assert_eq!(w.claim(0).await.unwrap().attempt, 1);
    let j = wait_state(&mut jobs, job.id, JobState::Queued).await;
    assert!(j.message.contains("lease expired on attempt 1"), "{}", j.message);
    assert_eq!(w.claim(0).await.unwrap().attempt, 2);
    let j = wait_state(&mut jobs, job.id, JobState::Failed).await;
    assert!(j.message.contains("2 of 2 attempts lost"), "{}", j.message);
}

#[sqlx::test(migrations = false)]
async fn heartbeats_keep_the_lease_and_carry_cancel_requests(pool: PgPool) {
    let (c, mut jobs) = start(pool, quick()).await;
    let job = submit(&mut jobs, spec()).await;
    let queued = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    let a = w.claim(0).await.unwrap();
    assert_eq!(a.job_id, job.id);
    for _ in 0..8 {
        let hb = w.heartbeat(&[(job.id, 1)]).await.unwrap();
        assert!(hb.cancel.is_empty() && hb.lost.is_empty());
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    assert_eq!(get(&mut jobs, job.id).await.state, JobState::Running as i32, "heartbeats renewed the 600 ms lease for 1.2 s");

    let c2 = jobs.cancel_job(v1::CancelJobRequest { id: queued.id }).await.unwrap().into_inner();
    assert_eq!(c2.state, JobState::Cancelled as i32, "a queued job is cancelled at once");
    let c2 = jobs.cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap().into_inner();
    assert!(c2.cancel_requested && c2.state == JobState::Running as i32);
    let hb = w.heartbeat(&[(job.id, 1)]).await.unwrap();
    assert_eq!(hb.cancel, vec![job.id]);
    w.finish(job.id, 1, v1::Outcome::Cancelled).await.unwrap();
    assert_eq!(get(&mut jobs, job.id).await.state, JobState::Cancelled as i32);
    let err = jobs.cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = jobs.cancel_job(v1::CancelJobRequest { id: 999_999 }).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}
