//! The claim dispatcher on a real store (the embedded one, in a temporary
//! folder): many claims at once get each job exactly once, a claim that does
//! not wait is answered at once when there is nothing to do (however many
//! others run), and a long-poll is answered by a job submitted while it waits.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_server::dispatch::Dispatcher;
use camp_server::store::{ClaimPolicy, NewJob, NewWorker, SqliteStore, Store};
use uuid::Uuid;

const LEASE: Duration = Duration::from_secs(600);

async fn store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("camp.db")).await.unwrap();
    (Arc::new(store), dir)
}

async fn workers(s: &dyn Store, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let w = NewWorker {
            name: format!("w{i}"),
            hostname: "test".into(),
            device_kind: "cpu".into(),
            gpus: vec![],
            datasets: vec!["cifar10".into()],
            labels: serde_json::json!({}),
            devices: 1,
        };
        ids.push(s.register_worker(w, &format!("session {i}"), None).await.unwrap());
    }
    ids
}

async fn submit(s: &dyn Store, n: usize) -> HashSet<i64> {
    let mut ids = HashSet::new();
    for i in 0..n {
        let spec = camp_proto::JobSpec { dataset: "cifar10".into(), epochs: 1, ..camp_proto::JobSpec::default() };
        let job = NewJob { name: format!("j{i}"), owner: "ada".into(), spec, priority: 0, max_attempts: 3, request: None };
        ids.insert(s.submit_job(job).await.unwrap().id);
    }
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_claims_at_once_take_each_job_exactly_once_and_then_hear_there_is_nothing() {
    let (s, _dir) = store().await;
    let ids = workers(s.as_ref(), 30).await;
    let jobs = submit(s.as_ref(), 40).await;
    let (dispatcher, task) = Dispatcher::start(s.clone(), LEASE, ClaimPolicy::default());
    let started = Instant::now();
    let claimers = ids.into_iter().map(|w| {
        let d = dispatcher.clone();
        tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(c) = d.claim(w, Duration::ZERO).await.unwrap() {
                got.push(c.job.id);
            }
            got
        })
    });
    let mut claimed = Vec::new();
    for c in claimers {
        claimed.extend(c.await.unwrap());
    }
    assert_eq!(claimed.len(), 40, "every job once: {claimed:?}");
    assert_eq!(claimed.iter().copied().collect::<HashSet<_>>(), jobs);
    assert!(started.elapsed() < Duration::from_secs(4), "no claim that does not wait waited for a recheck: {:?}", started.elapsed());
    task.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_polls_are_answered_by_jobs_submitted_while_they_wait_one_job_each() {
    let (s, _dir) = store().await;
    let ids = workers(s.as_ref(), 12).await;
    let (dispatcher, task) = Dispatcher::start(s.clone(), LEASE, ClaimPolicy::default());
    let pollers: Vec<_> = ids
        .into_iter()
        .map(|w| {
            let d = dispatcher.clone();
            tokio::spawn(async move { d.claim(w, Duration::from_secs(3)).await.unwrap().map(|c| c.job.id) })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let jobs = submit(s.as_ref(), 5).await;
    let mut got = Vec::new();
    for p in pollers {
        got.extend(p.await.unwrap());
    }
    assert_eq!(got.len(), 5, "five pollers got a job, the other seven timed out empty: {got:?}");
    assert_eq!(got.into_iter().collect::<HashSet<_>>(), jobs);
    task.abort();
}
