//! Claims: what a job looks like from submission to its result, the order
//! claims take jobs in, the per-user cap, and which worker may take which job.

use std::sync::Arc;

use camp_proto::spec::DeviceRequest;
use camp_server::store::*;

use crate::fixtures::*;

pub async fn a_job_is_stored_as_submitted_runs_under_its_workers_name_and_keeps_its_result(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let spec = camp_proto::JobSpec { epochs: 7, seed: 42, ..spec() };
    let job = submit(s, NewJob { spec: spec.clone(), max_attempts: 4, ..new_job("ada", "first", 3) }).await;
    assert_eq!((job.name.as_str(), job.owner.as_str(), &job.spec, job.priority, job.max_attempts), ("first", "ada", &spec, 3, 4));
    assert_eq!((job.state, job.attempt, job.lease_losses, job.cancel_requested, job.epoch), (JobState::Queued, 0, 0, false, 0));
    assert_eq!((job.worker.as_deref(), job.message.as_str(), job.result.is_some()), (None, "", false));
    assert!(job.started_at.is_none() && job.finished_at.is_none());
    assert_eq!((job.experiment_id, job.node.as_str(), job.parents.as_slice()), (None, "", &[][..]));
    let read = s.get_job(job.id).await.unwrap();
    assert_eq!((read.id, read.spec, read.created_at), (job.id, spec, job.created_at));

    let w = cpu_worker(s, "w1").await;
    let c = claim(s, w).await.expect("the job is claimable");
    assert_eq!((c.job.id, c.job.state, c.job.attempt, c.job.worker.as_deref()), (job.id, JobState::Running, 1, Some("w1")));
    assert!(c.job.started_at.is_some() && c.job.finished_at.is_none());
    assert!(c.resume_from.is_none() && c.init_from.is_none(), "a first attempt of a job from scratch starts from nothing");
    assert!(claim(s, w).await.is_none(), "a running job is not claimed again");

    s.finish(lease_of(&c, w), Outcome::Succeeded, "done", Some(&result(0.75))).await.unwrap();
    let done = s.get_job(job.id).await.unwrap();
    assert_eq!((done.state, done.message.as_str(), done.result, done.worker), (JobState::Succeeded, "done", Some(result(0.75)), None));
    assert!(done.finished_at.is_some() && done.started_at == c.job.started_at);

    assert_err!(s.get_job(job.id + 1000).await, StoreError::NotFound(_));
    assert_err!(s.claim(uuid::Uuid::new_v4(), LONG, ClaimPolicy::default()).await, StoreError::NotFound(_), "a claim by an unknown worker");
}

pub async fn claims_take_the_highest_priority_then_the_owner_with_fewest_running_then_the_oldest(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let next = || claimed_id(s, w, ClaimPolicy::default());
    let ada1 = submit_as(s, "ada", "ada1", 0).await;
    let bob1 = submit_as(s, "bob", "bob1", 0).await;
    let ada2 = submit_as(s, "ada", "ada2", 5).await;
    let ada3 = submit_as(s, "ada", "ada3", 0).await;
    let bob2 = submit_as(s, "bob", "bob2", 0).await;

    assert_eq!(next().await, Some(ada2), "the highest priority first, though it is newer");
    let ada4 = submit_as(s, "ada", "ada4", 5).await;
    assert_eq!(next().await, Some(ada4), "priority before fair share: ada runs 1 job and bob none");
    assert_eq!(next().await, Some(bob1), "at equal priority the owner with fewer running jobs (bob 0, ada 2), though ada1 is older");
    assert_eq!(next().await, Some(bob2), "bob still runs fewer (1 against 2)");
    assert_eq!(next().await, Some(ada1), "a tie (2 each): the oldest job");
    assert_eq!(next().await, Some(ada3));
    assert_eq!(next().await, None);
}

pub async fn the_per_user_cap_passes_over_an_owner_at_the_cap_counting_jobs_on_every_worker(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (w1, w2) = (cpu_worker(s, "w1").await, cpu_worker(s, "w2").await);
    let capped = ClaimPolicy { max_running_per_user: Some(2) };
    let mut ada = Vec::new();
    for i in 0..4 {
        ada.push(submit_as(s, "ada", &format!("ada{i}"), 9).await);
    }
    let bob = submit_as(s, "bob", "bob", 0).await;

    assert_eq!(claimed_id(s, w1, capped).await, Some(ada[0]));
    assert_eq!(claimed_id(s, w2, capped).await, Some(ada[1]));
    assert_eq!(claimed_id(s, w1, capped).await, Some(bob), "ada is at the cap (one job on each worker): bob's lower priority goes");
    assert_eq!(claimed_id(s, w2, capped).await, None, "ada's other jobs wait while she is at the cap");
    assert_eq!(state(s, ada[2]).await, JobState::Queued);

    let first = s.get_job(ada[0]).await.unwrap();
    finish(s, LeaseRef { worker: w1, job_id: ada[0], attempt: first.attempt }, Outcome::Succeeded, "").await;
    assert_eq!(claimed_id(s, w2, capped).await, Some(ada[2]), "one of ada's jobs ended: she is under the cap again");
    assert_eq!(claimed_id(s, w2, capped).await, None);
    assert_eq!(claimed_id(s, w2, ClaimPolicy::default()).await, Some(ada[3]), "without a cap the claim takes it");
    let running =
        s.list_jobs(&JobFilter { owner: Some("ada".into()), state: Some(JobState::Running), ..Default::default() }).await.unwrap();
    assert_eq!(running.len(), 3, "the cap holds at claim time only");
}

pub async fn a_cpu_worker_never_gets_a_cuda_job_and_device_any_goes_to_either_kind(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let cpu = worker(s, "cpu", "cpu", &["cifar10"]).await;
    let cuda = worker(s, "cuda", "cuda", &["cifar10"]).await;
    let cuda_job = submit_on(s, DeviceRequest::Cuda, "cifar10", 9).await;
    let any_job = submit_on(s, DeviceRequest::Any, "cifar10", 5).await;
    let cpu_job = submit_on(s, DeviceRequest::Cpu, "cifar10", 1).await;

    let take = |w| claimed_id(s, w, ClaimPolicy::default());
    assert_eq!(take(cpu).await, Some(any_job), "the cuda job comes first but a cpu worker passes it over");
    assert_eq!(take(cpu).await, Some(cpu_job));
    assert_eq!(take(cpu).await, None, "only the cuda job is left");
    assert_eq!(state(s, cuda_job).await, JobState::Queued);

    let cpu_job2 = submit_on(s, DeviceRequest::Cpu, "cifar10", 9).await;
    let any_job2 = submit_on(s, DeviceRequest::Any, "cifar10", 0).await;
    assert_eq!(take(cuda).await, Some(cuda_job));
    assert_eq!(take(cuda).await, Some(any_job2), "a cuda worker takes device any, and passes over a cpu job of higher priority");
    assert_eq!(take(cuda).await, None);
    assert_eq!(take(cpu).await, Some(cpu_job2));
}

pub async fn a_worker_without_the_data_set_never_gets_the_job(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let small = worker(s, "small", "cpu", &["cifar10"]).await;
    let big = worker(s, "big", "cpu", &["cifar10", "imagenet"]).await;
    let imagenet = submit_on(s, DeviceRequest::Any, "imagenet", 9).await;
    let cifar = submit_on(s, DeviceRequest::Any, "cifar10", 0).await;
    assert_eq!(claimed_id(s, small, ClaimPolicy::default()).await, Some(cifar), "the imagenet job comes first but small lacks the data");
    assert_eq!(claimed_id(s, small, ClaimPolicy::default()).await, None);
    assert_eq!(state(s, imagenet).await, JobState::Queued);
    assert_eq!(claimed_id(s, big, ClaimPolicy::default()).await, Some(imagenet));
}

pub async fn a_new_priority_reorders_the_queue_and_a_finished_job_keeps_its_own(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let older = submit_as(s, "ada", "older", 0).await;
    let newer = submit_as(s, "ada", "newer", 0).await;
    assert_eq!(s.set_priority(newer, 7).await.unwrap().priority, 7);
    let c = claim(s, w).await.unwrap();
    assert_eq!(c.job.id, newer, "raised above the older job");
    assert_eq!(s.set_priority(newer, -2).await.unwrap().priority, -2, "a running job's priority may change");
    finish(s, lease_of(&c, w), Outcome::Succeeded, "").await;
    assert_err!(s.set_priority(newer, 9).await, StoreError::FailedPrecondition(_));
    assert_eq!(s.get_job(newer).await.unwrap().priority, -2);
    assert_err!(s.set_priority(newer + 1000, 1).await, StoreError::NotFound(_));
    assert_eq!(claimed_id(s, w, ClaimPolicy::default()).await, Some(older));
}

pub async fn a_job_requiring_labels_goes_only_to_a_worker_carrying_each_of_them(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let labelled = |name: &str, labels: serde_json::Value| NewWorker { labels, ..new_worker(name, "cpu", &["cifar10"]) };
    let plain = s.register_worker(labelled("plain", serde_json::json!({})), "session-plain", None).await.unwrap();
    let h100 = s.register_worker(labelled("h100", serde_json::json!({"gpu": "h100", "rack": "b"})), "session-h100", None).await.unwrap();
    let a100 = s.register_worker(labelled("a100", serde_json::json!({"gpu": "a100", "rack": "b"})), "session-a100", None).await.unwrap();
    let mut wants = camp_proto::JobSpec { ..spec() };
    wants.require_labels.insert("gpu".into(), "h100".into());
    wants.require_labels.insert("rack".into(), "b".into());
    let picky = submit(s, NewJob { spec: wants, ..new_job("ada", "picky", 9) }).await.id;
    let any = submit_as(s, "ada", "any", 0).await;

    assert_eq!(claimed_id(s, plain, ClaimPolicy::default()).await, Some(any), "the labelled job comes first, but plain carries no label");
    assert_eq!(claimed_id(s, a100, ClaimPolicy::default()).await, None, "a100 carries rack=b but not gpu=h100");
    let facts = s.queue_facts(picky, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(facts.live_matching_workers, 1, "only h100 could run it");
    assert_eq!(claimed_id(s, h100, ClaimPolicy::default()).await, Some(picky), "h100 carries both (and more)");
    assert_eq!(s.worker_class(h100).await.unwrap().labels.get("gpu").map(String::as_str), Some("h100"));
}

pub async fn a_job_of_n_ranks_goes_only_to_a_worker_with_at_least_n_devices(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let with = |name: &str, devices: u32| NewWorker { devices, ..new_worker(name, "cpu", &["cifar10"]) };
    let one = s.register_worker(with("one", 1), "session-one", None).await.unwrap();
    let two = s.register_worker(with("two", 2), "session-two", None).await.unwrap();
    let eight = s.register_worker(with("eight", 8), "session-eight", None).await.unwrap();
    let ranks = |n: u32| camp_proto::JobSpec { gpus: n, ..spec() };
    let four = submit(s, NewJob { spec: ranks(4), ..new_job("ada", "four ranks", 9) }).await.id;
    let pair = submit(s, NewJob { spec: ranks(2), ..new_job("ada", "two ranks", 5) }).await.id;
    let single = submit_as(s, "ada", "one rank", 0).await;

    assert_eq!(s.worker_class(two).await.unwrap().devices, 2);
    assert_ne!(s.worker_class(one).await.unwrap(), s.worker_class(two).await.unwrap(), "devices set classes apart");
    let facts = s.queue_facts(four, std::time::Duration::from_secs(60)).await.unwrap();
    assert_eq!(facts.live_matching_workers, 1, "only eight could run four ranks");
    assert_eq!(claimed_id(s, one, ClaimPolicy::default()).await, Some(single), "one device: past both multi-rank jobs");
    assert_eq!(claimed_id(s, two, ClaimPolicy::default()).await, Some(pair), "two devices: past the four-rank job");
    assert_eq!(claimed_id(s, eight, ClaimPolicy::default()).await, Some(four));
    let listed = s.list_workers().await.unwrap();
    assert_eq!(listed.iter().find(|w| w.id == eight).map(|w| w.new.devices), Some(8));
}

pub async fn a_batch_claim_shares_jobs_out_in_claim_order_one_job_per_worker(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let workers = [cpu_worker(s, "w1").await, cpu_worker(s, "w2").await, cpu_worker(s, "w3").await, cpu_worker(s, "w4").await];
    let class = s.worker_class(workers[0]).await.unwrap();
    assert_eq!(class, s.worker_class(workers[3]).await.unwrap(), "same device, data sets and labels: one class");
    let ada: Vec<i64> = futures_ids(s, "ada", 3).await;
    let bob: Vec<i64> = futures_ids(s, "bob", 2).await;
    let urgent = submit_as(s, "bob", "urgent", 5).await;

    let got = s.claim_batch(&class, &workers, LONG, ClaimPolicy::default()).await.unwrap();
    let ids: Vec<(uuid::Uuid, i64)> = got.iter().map(|(w, c)| (*w, c.job.id)).collect();
    // Priority first; then fair share as claims one after another would take
    // them (ada 0 running, bob 1 after urgent: ada, then a tie of 1 each: the older).
    assert_eq!(ids, vec![(workers[0], urgent), (workers[1], ada[0]), (workers[2], ada[1]), (workers[3], bob[0])]);
    assert!(got
        .iter()
        .all(|(w, c)| c.job.state == JobState::Running && c.job.attempt == 1 && c.job.worker.is_some() && *w != uuid::Uuid::nil()));
    let again = s.claim_batch(&class, &workers, LONG, ClaimPolicy::default()).await.unwrap();
    let rest: Vec<i64> = again.iter().map(|(_, c)| c.job.id).collect();
    assert_eq!(rest, vec![ada[2], bob[1]], "what is left, and no job twice");
    assert_eq!(again.iter().map(|(w, _)| *w).collect::<Vec<_>>(), workers[..2].to_vec(), "the first workers in line get them");
    assert!(s.claim_batch(&class, &workers, LONG, ClaimPolicy::default()).await.unwrap().is_empty());

    let capped = ClaimPolicy { max_running_per_user: Some(4) };
    let more: Vec<i64> = futures_ids(s, "ada", 3).await;
    let got = s.claim_batch(&class, &workers, LONG, capped).await.unwrap();
    assert_eq!(got.iter().map(|(_, c)| c.job.id).collect::<Vec<_>>(), vec![more[0]], "ada runs 3: the cap of 4 leaves one more");
}

/// Submits `n` jobs of `owner` at priority 0, oldest first.
async fn futures_ids(s: &dyn Store, owner: &str, n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(submit_as(s, owner, &format!("{owner}{i}"), 0).await);
    }
    ids
}
