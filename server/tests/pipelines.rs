//! Pipelines through the coordinator's gRPC interface: the DAG lives in
//! PostgreSQL, children wait for their parents, get their best checkpoint, and
//! are cancelled (with the reason) when a parent fails.

mod common;

use camp_proto::spec::Stage;
use camp_proto::v1::{self, JobState};
use camp_proto::JobSpec;
use camp_server::Settings;
use common::{Coordinator, Jobs, Worker};
use sqlx::PgPool;
use tonic::Code;

async fn start(pool: PgPool) -> (Coordinator, Jobs, Worker) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let jobs = c.jobs_as("tester");
    let worker = c.register("w", "cpu", &["cifar10"], None).await;
    (c, jobs, worker)
}

fn node(key: &str, stage: Stage, after: &[&str], init_from: &str) -> v1::PipelineNode {
    v1::PipelineNode {
        key: key.into(),
        name: String::new(),
        spec: Some(JobSpec { epochs: 1, ..JobSpec::defaults_for(stage) }.to_proto()),
        after: after.iter().map(|s| s.to_string()).collect(),
        init_from: init_from.into(),
        priority: 0,
    }
}

fn camp_dag() -> Vec<v1::PipelineNode> {
    vec![
        node("baseline", Stage::Baseline, &[], ""),
        node("qat4", Stage::Qat, &[], ""),
        node("sp", Stage::Sp, &[], "qat4"),
        node("rl-0.1", Stage::Rl, &[], "sp"),
        node("rl-0.5", Stage::Rl, &[], "sp"),
    ]
}

async fn claim(w: &mut Worker) -> Option<v1::Assignment> {
    w.claim(0).await
}

async fn upload(w: &mut Worker, a: &v1::Assignment, epoch: u32, top1: f64, bytes: &[u8]) {
    w.upload(a.job_id, a.attempt, epoch, top1, bytes).await.unwrap();
}

async fn finish(w: &mut Worker, a: &v1::Assignment, outcome: v1::Outcome, message: &str) {
    w.client
        .finish(v1::FinishRequest { job_id: a.job_id, attempt: a.attempt, outcome: outcome as i32, message: message.into(), result: None })
        .await
        .unwrap();
}

#[sqlx::test(migrations = false)]
async fn children_wait_for_parents_and_start_from_their_best_checkpoint(pool: PgPool) {
    let (_c, mut jobs, mut w) = start(pool).await;
    let exp = jobs
        .submit_pipeline(v1::SubmitPipelineRequest { name: "camp-r20".into(), nodes: camp_dag(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(exp.jobs.iter().map(|j| j.node.as_str()).collect::<Vec<_>>(), vec!["baseline", "qat4", "sp", "rl-0.1", "rl-0.5"]);
    let id = |key: &str| exp.jobs.iter().find(|j| j.node == key).unwrap().id;
    let sp = exp.jobs.iter().find(|j| j.node == "sp").unwrap();
    assert_eq!((sp.parents.clone(), sp.spec.as_ref().unwrap().init_from), (vec![id("qat4")], id("qat4")));

    // Only the roots are claimable.
    let a = claim(&mut w).await.unwrap();
    let b = claim(&mut w).await.unwrap();
    assert_eq!((a.job_id, b.job_id), (id("baseline"), id("qat4")));
    assert!(claim(&mut w).await.is_none(), "sp waits for qat4");
    upload(&mut w, &b, 1, 0.3, b"qat4 epoch 1").await;
    upload(&mut w, &b, 2, 0.9, b"qat4 epoch 2 (best)").await;
    upload(&mut w, &b, 3, 0.5, b"qat4 epoch 3").await;
    finish(&mut w, &b, v1::Outcome::Succeeded, "").await;

    let s = claim(&mut w).await.expect("sp is claimable once qat4 succeeded");
    assert_eq!(s.job_id, id("sp"));
    let init = s.init_from.clone().expect("sp gets qat4's checkpoint");
    assert_eq!((init.job_id, init.epoch), (id("qat4"), 2), "the best one, not the latest");
    assert!(s.resume_from.is_none());
    assert!(claim(&mut w).await.is_none(), "the rl jobs wait for sp");
    finish(&mut w, &a, v1::Outcome::Succeeded, "").await;
    upload(&mut w, &s, 1, 0.8, b"sp").await;
    finish(&mut w, &s, v1::Outcome::Succeeded, "").await;
    let r1 = claim(&mut w).await.unwrap();
    let r2 = claim(&mut w).await.unwrap();
    assert_eq!((r1.job_id, r2.job_id), (id("rl-0.1"), id("rl-0.5")));
    assert_eq!(r1.init_from.unwrap().job_id, id("sp"));
}

#[sqlx::test(migrations = false)]
async fn a_failed_parent_cancels_its_descendants_with_the_reason(pool: PgPool) {
    let (_c, mut jobs, mut w) = start(pool).await;
    let exp = jobs
        .submit_pipeline(v1::SubmitPipelineRequest { name: "doomed".into(), nodes: camp_dag(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let _baseline = claim(&mut w).await.unwrap();
    let qat4 = claim(&mut w).await.unwrap();
    finish(&mut w, &qat4, v1::Outcome::Failed, "loss became NaN").await;
    let exp = jobs.get_experiment(v1::GetExperimentRequest { id: exp.id }).await.unwrap().into_inner();
    for key in ["sp", "rl-0.1", "rl-0.5"] {
        let j = exp.jobs.iter().find(|j| j.node == key).unwrap();
        assert_eq!(j.state, JobState::Cancelled as i32, "{key}");
        assert!(
            j.message.contains(&format!("parent job {}", qat4.job_id)) && j.message.contains("loss became NaN"),
            "{key}: {}",
            j.message
        );
    }
    let baseline = exp.jobs.iter().find(|j| j.node == "baseline").unwrap();
    assert_eq!(baseline.state, JobState::Running as i32, "unrelated branches go on");

    let exp = jobs.cancel_experiment(v1::CancelExperimentRequest { id: exp.id }).await.unwrap().into_inner();
    assert!(exp.jobs.iter().find(|j| j.node == "baseline").unwrap().cancel_requested);
}

#[sqlx::test(migrations = false)]
async fn bad_dags_and_missing_parents_are_refused_and_nothing_is_stored(pool: PgPool) {
    let (_c, mut jobs, _w) = start(pool).await;
    let refuse = |nodes: Vec<v1::PipelineNode>| {
        let mut jobs = jobs.clone();
        async move { jobs.submit_pipeline(v1::SubmitPipelineRequest { name: "bad".into(), nodes, ..Default::default() }).await.unwrap_err() }
    };
    let e = refuse(vec![node("sp", Stage::Sp, &[], "nope")]).await;
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("init_from") && e.message().contains("nope"), "{}", e.message());
    let e = refuse(vec![node("a", Stage::Qat, &["b"], ""), node("b", Stage::Qat, &["a"], "")]).await;
    assert!(e.message().contains("cycle"), "{}", e.message());
    let e = refuse(vec![node("sp", Stage::Sp, &[], "")]).await;
    assert!(e.message().contains("init_from") && e.message().contains("qat"), "sp without a parent: {}", e.message());
    let e = refuse(vec![node("b", Stage::Baseline, &[], ""), node("sp", Stage::Sp, &[], "b")]).await;
    assert!(e.message().contains("starts from a qat job"), "{}", e.message());
    let e = refuse(vec![node("a", Stage::Qat, &[], ""), node("a", Stage::Qat, &[], "")]).await;
    assert!(e.message().contains("used twice"), "{}", e.message());

    // Stand-alone jobs: sp needs an existing qat job.
    let sp = |init_from: i64| v1::SubmitJobRequest {
        spec: Some(JobSpec { init_from, ..JobSpec::defaults_for(Stage::Sp) }.to_proto()),
        ..Default::default()
    };
    let e = jobs.submit_job(sp(0)).await.unwrap_err();
    assert!(e.message().starts_with("init_from:"), "{}", e.message());
    let e = jobs.submit_job(sp(777)).await.unwrap_err();
    assert_eq!((e.code(), e.message()), (Code::InvalidArgument, "init_from: job 777 does not exist"));
    let listed = jobs.list_jobs(v1::ListJobsRequest::default()).await.unwrap().into_inner();
    assert!(listed.jobs.is_empty());
    assert!(jobs.list_experiments(v1::ListExperimentsRequest::default()).await.unwrap().into_inner().experiments.is_empty());

    // A stand-alone sp job on a queued qat job waits for it.
    let qat = jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(JobSpec::defaults_for(Stage::Qat).to_proto()), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    let child = jobs.submit_job(sp(qat.id)).await.unwrap().into_inner();
    assert_eq!(child.parents, vec![qat.id]);
}
