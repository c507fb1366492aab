//! Jobs and pipelines: cancelling and its cascade, gating and hand-off of
//! weights, idempotent submission, listings, and why a queued job waits.

use std::sync::Arc;
use std::time::Duration;

use camp_proto::spec::{DeviceRequest, Stage};
use camp_server::store::*;

use crate::fixtures::*;

pub async fn cancelling_a_queued_job_ends_it_at_once_and_a_running_one_is_asked_to_stop(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let running = submit_as(s, "ada", "running", 0).await;
    let c = claim(s, w).await.unwrap();
    let queued = submit_as(s, "ada", "queued", 0).await;

    let q = s.cancel_job(queued, "bob").await.unwrap();
    assert_eq!((q.state, q.cancel_requested), (JobState::Cancelled, false));
    assert!(q.finished_at.is_some() && q.message.contains("bob"), "{}", q.message);
    assert_eq!(state(s, queued).await, JobState::Cancelled);
    assert!(claim(s, w).await.is_none(), "a cancelled job is not claimable");

    let r = s.cancel_job(running, "carl").await.unwrap();
    assert_eq!((r.state, r.cancel_requested, r.attempt), (JobState::Running, true, 1), "the worker is asked; the job runs on");
    assert!(r.finished_at.is_none() && r.message.contains("carl"), "{}", r.message);
    assert!(s.cancel_job(running, "carl").await.unwrap().cancel_requested, "asking again is no error");
    finish(s, lease_of(&c, w), Outcome::Cancelled, "stopped as asked").await;
    assert_eq!(state(s, running).await, JobState::Cancelled);

    assert_err!(s.cancel_job(running, "carl").await, StoreError::FailedPrecondition(_), "a finished job");
    assert_err!(s.cancel_job(queued, "bob").await, StoreError::FailedPrecondition(_), "a cancelled job");
    assert_err!(s.cancel_job(queued + 1000, "bob").await, StoreError::NotFound(_));
}

pub async fn a_failed_parent_cancels_its_waiting_descendants_however_deep(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let edges: &[(&str, &[&str])] =
        &[("a", &[]), ("x", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &["c"]), ("both", &["x", "c"]), ("y", &["x"])];
    let exp = s.submit_pipeline(chain("ada", "deep", edges)).await.unwrap();
    let id = |key| id_of(&exp, key);
    let ca = claim(s, w).await.unwrap();
    let cx = claim(s, w).await.unwrap();
    assert_eq!((ca.job.id, cx.job.id), (id("a"), id("x")), "the roots, oldest first");

    finish(s, lease_of(&ca, w), Outcome::Failed, "loss became NaN").await;
    for key in ["b", "c", "d", "both"] {
        let j = s.get_job(id(key)).await.unwrap();
        assert_eq!(j.state, JobState::Cancelled, "{key}");
        assert!(j.finished_at.is_some(), "{key}");
        assert!(j.message.contains(&format!("parent job {}", id("a"))) && j.message.contains("loss became NaN"), "{key}: {}", j.message);
    }
    assert_eq!((state(s, id("x")).await, state(s, id("y")).await), (JobState::Running, JobState::Queued), "another branch goes on");
    finish(s, lease_of(&cx, w), Outcome::Succeeded, "").await;
    assert_eq!(claim(s, w).await.map(|c| c.job.id), Some(id("y")));
    assert!(claim(s, w).await.is_none());
}

pub async fn a_cancelled_parent_cancels_its_waiting_descendants_however_deep(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let queued = s.submit_pipeline(chain("ada", "queued", &[("a", &[]), ("b", &["a"]), ("c", &["b"])])).await.unwrap();
    s.cancel_job(id_of(&queued, "a"), "ada").await.unwrap();
    for key in ["b", "c"] {
        let j = s.get_job(id_of(&queued, key)).await.unwrap();
        assert_eq!(j.state, JobState::Cancelled, "{key}");
        assert!(j.message.contains(&format!("parent job {}", id_of(&queued, "a"))), "{key}: {}", j.message);
    }

    let running = s.submit_pipeline(chain("ada", "running", &[("p", &[]), ("q", &["p"]), ("r", &["q"])])).await.unwrap();
    let cp = claim(s, w).await.unwrap();
    assert_eq!(cp.job.id, id_of(&running, "p"));
    s.cancel_job(cp.job.id, "ada").await.unwrap();
    assert_eq!(state(s, id_of(&running, "q")).await, JobState::Queued, "asking a running parent to stop cancels nothing yet");
    finish(s, lease_of(&cp, w), Outcome::Cancelled, "").await;
    assert_eq!((state(s, id_of(&running, "q")).await, state(s, id_of(&running, "r")).await), (JobState::Cancelled, JobState::Cancelled));
}

pub async fn cancelling_an_experiment_cancels_its_queued_jobs_and_asks_its_running_ones_to_stop(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let exp = s.submit_pipeline(chain("ada", "sweep", &[("done", &[]), ("run", &[]), ("wait", &[]), ("child", &["run"])])).await.unwrap();
    let done = claim(s, w).await.unwrap();
    finish(s, lease_of(&done, w), Outcome::Succeeded, "").await;
    let run = claim(s, w).await.unwrap();
    assert_eq!((done.job.id, run.job.id), (id_of(&exp, "done"), id_of(&exp, "run")));
    let other = submit_as(s, "ada", "not in it", 0).await;

    let after = s.cancel_experiment(exp.id, "ada").await.unwrap();
    let states: Vec<(&str, JobState, bool)> = after.jobs.iter().map(|j| (j.node.as_str(), j.state, j.cancel_requested)).collect();
    assert_eq!(
        states,
        vec![
            ("done", JobState::Succeeded, false),
            ("run", JobState::Running, true),
            ("wait", JobState::Cancelled, false),
            ("child", JobState::Cancelled, false),
        ]
    );
    assert_eq!(state(s, other).await, JobState::Queued, "jobs outside the experiment stay");
    assert_err!(s.cancel_experiment(exp.id + 1000, "ada").await, StoreError::NotFound(_));
}

pub async fn a_child_is_claimable_only_after_all_its_parents_succeed(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    // Given child first: stored in topological order all the same.
    let exp = s.submit_pipeline(chain("ada", "diamond", &[("c", &["a", "b"]), ("a", &[]), ("b", &[])])).await.unwrap();
    assert_eq!(exp.jobs.iter().map(|j| j.node.as_str()).collect::<Vec<_>>(), vec!["a", "b", "c"]);
    let (a, b, c) = (id_of(&exp, "a"), id_of(&exp, "b"), id_of(&exp, "c"));
    let empty = NewPipeline { nodes: vec![], ..chain("ada", "empty", &[]) };
    assert_err!(s.submit_pipeline(empty).await, StoreError::Invalid { .. }, "a pipeline without nodes");
    let child = s.get_job(c).await.unwrap();
    assert_eq!((child.parents, child.experiment_id, child.node.as_str(), child.name.as_str()), (vec![a, b], Some(exp.id), "c", "node c"));
    assert!(exp.jobs.iter().all(|j| j.owner == "ada" && j.max_attempts == 3 && j.state == JobState::Queued));

    let ca = claim(s, w).await.unwrap();
    let cb = claim(s, w).await.unwrap();
    assert_eq!((ca.job.id, cb.job.id), (a, b));
    assert!(claim(s, w).await.is_none(), "c waits for a and b");
    let waiting = s.queue_facts(c, Duration::from_secs(60)).await.unwrap();
    assert_eq!(waiting.unfinished_parents, vec![(a, JobState::Running), (b, JobState::Running)]);

    finish(s, lease_of(&ca, w), Outcome::Succeeded, "").await;
    assert!(claim(s, w).await.is_none(), "c still waits for b");
    assert_eq!(s.queue_facts(c, Duration::from_secs(60)).await.unwrap().unfinished_parents, vec![(b, JobState::Running)]);
    finish(s, lease_of(&cb, w), Outcome::Succeeded, "").await;
    assert!(s.queue_facts(c, Duration::from_secs(60)).await.unwrap().unfinished_parents.is_empty());
    assert_eq!(claim(s, w).await.map(|x| x.job.id), Some(c));
}

pub async fn a_child_starts_from_its_parents_best_checkpoint(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let nodes = vec![node("qat", Stage::Qat, &[], None), node("sp", Stage::Sp, &[], Some("qat")), node("rl", Stage::Rl, &[], Some("sp"))];
    let exp =
        s.submit_pipeline(NewPipeline { name: "camp".into(), owner: "ada".into(), nodes, max_attempts: 2, request: None }).await.unwrap();
    let (qat, sp, rl) = (id_of(&exp, "qat"), id_of(&exp, "sp"), id_of(&exp, "rl"));
    let sp_job = s.get_job(sp).await.unwrap();
    assert_eq!((sp_job.spec.init_from, sp_job.parents), (qat, vec![qat]), "init_from is a parent too");

    let cq = claim(s, w).await.unwrap();
    assert_eq!(cq.job.id, qat);
    let keep_all = Retention { keep_latest: 10, keep_best: true };
    let mut ids = Vec::new();
    for (step, top1) in [(1, 0.3), (2, 0.9), (3, 0.5)] {
        ids.push(upload(s, lease_of(&cq, w), step, Some(top1), format!("qat {step}").as_bytes(), keep_all).await.id);
    }
    assert!(claim(s, w).await.is_none(), "sp waits for qat");
    finish(s, lease_of(&cq, w), Outcome::Succeeded, "").await;

    let cs = claim(s, w).await.expect("sp is claimable once qat succeeded");
    assert_eq!(cs.job.id, sp);
    let init = cs.init_from.clone().expect("sp gets qat's weights");
    assert_eq!((init.id, init.job_id, init.top1, init.best), (ids[1], qat, Some(0.9), true), "the best, not the latest");
    assert!(cs.resume_from.is_none(), "the parent's checkpoint is no checkpoint of sp's own");
    // Current behaviour: a parent that succeeded without any checkpoint hands over nothing.
    finish(s, lease_of(&cs, w), Outcome::Succeeded, "").await;
    let cr = claim(s, w).await.unwrap();
    assert_eq!((cr.job.id, cr.init_from.map(|c| c.id)), (rl, None));
}

pub async fn a_job_that_starts_from_another_waits_for_it_and_must_name_a_fitting_job(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let qat_job = |name: &str| NewJob { spec: stage_spec(Stage::Qat), ..new_job("ada", name, 0) };
    let sp_from =
        |parent: i64| NewJob { spec: camp_proto::JobSpec { init_from: parent, ..stage_spec(Stage::Sp) }, ..new_job("ada", "sp", 5) };
    let qat = submit(s, qat_job("qat")).await.id;
    let baseline = submit(s, NewJob { spec: stage_spec(Stage::Baseline), ..new_job("ada", "baseline", -1) }).await.id;
    let doomed = submit(s, qat_job("doomed")).await.id;
    s.cancel_job(doomed, "ada").await.unwrap();

    for (parent, why) in
        [(qat + 1000, "no such job"), (baseline, "a baseline job, not a qat job"), (doomed, "a cancelled job"), (0, "no job")]
    {
        assert_err!(s.submit_job(sp_from(parent)).await, StoreError::Invalid { .. }, "sp from {why}");
    }
    let sp = submit(s, sp_from(qat)).await;
    assert_eq!((sp.parents.as_slice(), sp.state), (&[qat][..], JobState::Queued));

    let cq = claim(s, w).await.unwrap();
    assert_eq!(cq.job.id, qat, "sp (priority 5) waits for qat");
    let first = upload(s, lease_of(&cq, w), 1, None, b"qat 1", Retention::default()).await;
    upload(s, lease_of(&cq, w), 2, None, b"qat 2", Retention::default()).await;
    assert_eq!(claim(s, w).await.map(|c| c.job.id), Some(baseline), "sp still waits");
    finish(s, lease_of(&cq, w), Outcome::Succeeded, "").await;
    let cs = claim(s, w).await.unwrap();
    assert_eq!(cs.job.id, sp.id);
    // Current behaviour: with no top1 anywhere, the child starts from the parent's oldest surviving checkpoint.
    assert_eq!(cs.init_from.map(|c| c.id), Some(first.id));
}

pub async fn a_resubmission_with_the_same_request_key_and_digest_returns_what_the_first_made(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let key = |id: &str, body: &str| Some(RequestKey { id: id.into(), sha256: sha256_hex(body.as_bytes()) });
    let keyed = |owner: &str, request| NewJob { request, ..new_job(owner, "keyed", 0) };
    let count = || async { s.list_jobs(&JobFilter::default()).await.unwrap().len() };

    let first = submit(s, keyed("ada", key("r-1", "body"))).await;
    let again = submit(s, keyed("ada", key("r-1", "body"))).await;
    assert_eq!((again.id, count().await), (first.id, 1), "the same job, made once");
    assert_err!(s.submit_job(keyed("ada", key("r-1", "another body"))).await, StoreError::FailedPrecondition(_), "same key, other request");
    assert_eq!(count().await, 1);
    let bobs = submit(s, keyed("bob", key("r-1", "body"))).await;
    assert_ne!(bobs.id, first.id, "keys are per owner");

    claim(s, w).await.unwrap();
    let later = submit(s, keyed("ada", key("r-1", "body"))).await;
    assert_eq!((later.id, later.state), (first.id, JobState::Running), "the job as it is now");

    let pipeline = |request| NewPipeline { request, ..chain("ada", "keyed", &[("a", &[]), ("b", &["a"])]) };
    let exp = s.submit_pipeline(pipeline(key("p-1", "dag"))).await.unwrap();
    let exp_again = s.submit_pipeline(pipeline(key("p-1", "dag"))).await.unwrap();
    assert_eq!(exp_again.id, exp.id);
    assert_eq!(exp_again.jobs.iter().map(|j| j.id).collect::<Vec<_>>(), exp.jobs.iter().map(|j| j.id).collect::<Vec<_>>());
    assert_eq!(count().await, 4, "two keyed jobs and one pipeline of two");
    assert_err!(s.submit_pipeline(pipeline(key("p-1", "other dag"))).await, StoreError::FailedPrecondition(_));
    assert_err!(s.submit_pipeline(pipeline(key("r-1", "body"))).await, StoreError::FailedPrecondition(_), "a job's key for a pipeline");
    assert_err!(s.submit_job(keyed("ada", key("p-1", "dag"))).await, StoreError::FailedPrecondition(_), "a pipeline's key for a job");
    assert_eq!((count().await, s.list_experiments(0, 0, None).await.unwrap().len()), (4, 1));
}

pub async fn jobs_and_experiments_are_listed_newest_first_filtered_and_paged(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let j1 = submit_as(s, "ada", "j1", 0).await;
    let j2 = submit_as(s, "bob", "j2", 0).await;
    let j3 = submit(s, NewJob { spec: stage_spec(Stage::Qat), ..new_job("ada", "j3", 0) }).await.id;
    assert_eq!(claim(s, w).await.unwrap().job.id, j1);
    let ids = |filter: JobFilter| async move { s.list_jobs(&filter).await.unwrap().into_iter().map(|j| j.id).collect::<Vec<_>>() };

    assert_eq!(ids(JobFilter::default()).await, vec![j3, j2, j1]);
    assert_eq!(ids(JobFilter { owner: Some("ada".into()), ..Default::default() }).await, vec![j3, j1]);
    assert_eq!(ids(JobFilter { state: Some(JobState::Running), ..Default::default() }).await, vec![j1]);
    assert_eq!(ids(JobFilter { state: Some(JobState::Queued), owner: Some("ada".into()), ..Default::default() }).await, vec![j3]);
    assert_eq!(ids(JobFilter { stage: Some("qat".into()), ..Default::default() }).await, vec![j3]);
    assert_eq!(ids(JobFilter { limit: 1, ..Default::default() }).await, vec![j3]);
    assert_eq!(ids(JobFilter { limit: 1, before_id: j3, ..Default::default() }).await, vec![j2]);

    let mut exps = Vec::new();
    for owner in ["ada", "bob", "ada"] {
        exps.push(s.submit_pipeline(chain(owner, &format!("{owner}'s"), &[("only", &[])])).await.unwrap().id);
    }
    let listed = |limit, before, owner| async move {
        s.list_experiments(limit, before, owner).await.unwrap().into_iter().map(|e| (e.id, e.jobs.len())).collect::<Vec<_>>()
    };
    assert_eq!(listed(0, 0, None).await, vec![(exps[2], 0), (exps[1], 0), (exps[0], 0)], "newest first, without their jobs");
    assert_eq!(listed(0, 0, Some("ada")).await, vec![(exps[2], 0), (exps[0], 0)]);
    assert_eq!(listed(1, exps[2], None).await, vec![(exps[1], 0)]);
    let e = s.get_experiment(exps[0]).await.unwrap();
    assert_eq!((e.name.as_str(), e.owner.as_str(), e.jobs.len()), ("ada's", "ada", 1));
    assert_err!(s.get_experiment(exps[2] + 1000).await, StoreError::NotFound(_));
}

pub async fn queue_facts_count_the_owners_running_jobs_the_live_matching_workers_and_the_jobs_ahead(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let cpu = worker(s, "cpu", "cpu", &["cifar10"]).await;
    worker(s, "cuda", "cuda", &["cifar10"]).await;
    worker(s, "other data", "cpu", &["imagenet"]).await;
    let live = Duration::from_secs(60);

    let bobs_running = submit_as(s, "bob", "running", 9).await;
    assert_eq!(claim(s, cpu).await.unwrap().job.id, bobs_running);
    let older = submit_as(s, "ada", "older", 0).await;
    let cuda_job = submit_on(s, DeviceRequest::Cuda, "cifar10", 3).await;
    let imagenet_job = submit_on(s, DeviceRequest::Any, "imagenet", 2).await;
    let target = submit_as(s, "bob", "target", 0).await;
    let _newer = submit_as(s, "ada", "newer", 0).await;
    let lower = submit_as(s, "ada", "lower", -1).await;
    let exp = s.submit_pipeline(chain("ada", "gated", &[("root", &[]), ("child", &["root"])])).await.unwrap();
    s.set_priority(id_of(&exp, "child"), 50).await.unwrap();

    let facts = s.queue_facts(target, live).await.unwrap();
    assert!(facts.unfinished_parents.is_empty());
    assert_eq!(facts.owner_running, 1, "bob runs one job");
    assert_eq!(facts.live_matching_workers, 2, "the cpu and cuda workers with cifar10");
    // Current behaviour: `ahead` counts every claimable job that comes first, whatever device and data set it needs.
    assert_eq!(facts.ahead, 3, "older, the cuda job and the imagenet job; not newer or lower, nor the child waiting for its parent");

    let facts = s.queue_facts(lower, live).await.unwrap();
    assert_eq!((facts.owner_running, facts.ahead), (0, 6), "ada runs nothing; all but the child come first");
    assert_eq!(s.queue_facts(cuda_job, live).await.unwrap().live_matching_workers, 1);
    assert_eq!(s.queue_facts(imagenet_job, live).await.unwrap().live_matching_workers, 1);
    assert_eq!(s.queue_facts(older, Duration::ZERO).await.unwrap().live_matching_workers, 0, "nobody heard from within no time");
    let child = s.queue_facts(id_of(&exp, "child"), live).await.unwrap();
    assert_eq!(child.unfinished_parents, vec![(id_of(&exp, "root"), JobState::Queued)]);
    assert_err!(s.queue_facts(target + 1000, live).await, StoreError::NotFound(_));
}
