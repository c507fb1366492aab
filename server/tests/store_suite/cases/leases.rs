//! Leases: the reaper, releases, heartbeats, and the fencing token that every
//! worker write carries.

use std::sync::Arc;

use camp_server::store::*;
use uuid::Uuid;

use crate::fixtures::*;

fn reaped(r: &[Reaped]) -> Vec<(i64, u32, JobState)> {
    r.iter().map(|r| (r.job_id, r.attempt, r.new_state)).collect()
}

pub async fn an_expired_lease_requeues_the_job_and_its_next_claim_is_the_next_attempt(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (w1, w2) = (cpu_worker(s, "w1").await, cpu_worker(s, "w2").await);
    let job = submit_as(s, "ada", "flaky", 0).await;
    let c1 = claim_with(s, w1, SHORT).await.unwrap();
    assert_eq!((c1.job.id, c1.job.attempt), (job, 1));
    let steady = submit_as(s, "ada", "steady", 0).await;
    assert_eq!(claim(s, w2).await.unwrap().job.id, steady);

    assert_eq!(reaped(&lose_lease(s).await), vec![(job, 1, JobState::Queued)], "only the expired lease is reaped");
    let j = s.get_job(job).await.unwrap();
    assert_eq!((j.state, j.attempt, j.lease_losses, j.worker), (JobState::Queued, 1, 1, None));
    assert!(j.message.contains("lease expired on attempt 1"), "{}", j.message);
    assert!(j.finished_at.is_none());
    assert_eq!(state(s, steady).await, JobState::Running, "a lease that has not expired stays");
    assert!(s.reap_expired_leases().await.unwrap().is_empty(), "nothing is reaped twice");

    let c2 = claim(s, w2).await.expect("the job is claimable again");
    assert_eq!((c2.job.id, c2.job.attempt, c2.job.worker.as_deref()), (job, 2, Some("w2")));
    assert_eq!(c2.job.started_at, c1.job.started_at, "started_at is the first attempt's");
}

pub async fn after_max_attempts_lost_leases_the_reaper_fails_the_job_and_cancels_its_children(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let exp = s.submit_pipeline(NewPipeline { max_attempts: 2, ..chain("ada", "doomed", &[("a", &[]), ("b", &["a"])]) }).await.unwrap();
    let (a, b) = (id_of(&exp, "a"), id_of(&exp, "b"));

    assert_eq!(claim_with(s, w, SHORT).await.unwrap().job.id, a);
    assert_eq!(reaped(&lose_lease(s).await), vec![(a, 1, JobState::Queued)], "one of two attempts lost");
    assert_eq!(claim_with(s, w, SHORT).await.unwrap().job.attempt, 2);
    assert_eq!(reaped(&lose_lease(s).await), vec![(a, 2, JobState::Failed)], "two of two attempts lost");

    let j = s.get_job(a).await.unwrap();
    assert_eq!((j.state, j.attempt, j.lease_losses), (JobState::Failed, 2, 2));
    assert!(j.finished_at.is_some());
    assert!(j.message.contains("2 of 2 attempts lost"), "{}", j.message);
    let child = s.get_job(b).await.unwrap();
    assert_eq!(child.state, JobState::Cancelled);
    assert!(child.message.contains(&format!("parent job {a}")) && child.message.contains("stopped heartbeating"), "{}", child.message);
    assert!(claim(s, w).await.is_none());
}

pub async fn the_reaper_cancels_an_expired_job_whose_cancel_was_requested(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "to stop", 0).await;
    claim_with(s, w, SHORT).await.unwrap();
    assert!(s.cancel_job(job, "ada").await.unwrap().cancel_requested);
    assert_eq!(reaped(&lose_lease(s).await), vec![(job, 1, JobState::Cancelled)], "cancelled, not queued again (1 of 3 attempts lost)");
    let j = s.get_job(job).await.unwrap();
    assert_eq!((j.state, j.lease_losses), (JobState::Cancelled, 1));
    assert!(j.finished_at.is_some());
    assert!(j.message.contains("cancelled"), "{}", j.message);
    assert!(claim(s, w).await.is_none());
}

pub async fn a_released_job_is_queued_again_without_counting_as_a_lost_attempt(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit(s, NewJob { max_attempts: 1, ..new_job("ada", "patient", 0) }).await.id;
    let c1 = claim(s, w).await.unwrap();
    finish(s, lease_of(&c1, w), Outcome::Released, "worker shutting down").await;
    let j = s.get_job(job).await.unwrap();
    assert_eq!((j.state, j.attempt, j.lease_losses, j.worker, j.message.as_str()), (JobState::Queued, 1, 0, None, "worker shutting down"));
    assert!(j.finished_at.is_none());

    let c2 = claim(s, w).await.expect("a released job is claimable again");
    assert_eq!(c2.job.attempt, 2, "a new attempt, though max_attempts is 1: a release is not a lost attempt");
    finish(s, lease_of(&c2, w), Outcome::Released, "again").await;
    let c3 = claim_with(s, w, SHORT).await.unwrap();
    assert_eq!(c3.job.attempt, 3);
    assert_eq!(reaped(&lose_lease(s).await), vec![(job, 3, JobState::Failed)], "the first lost lease is the last of 1 attempt");
}

pub async fn heartbeats_renew_leases_pass_on_cancel_requests_and_name_the_jobs_a_worker_lost(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (w, other) = (cpu_worker(s, "w").await, cpu_worker(s, "other").await);
    let a = submit_as(s, "ada", "a", 0).await;
    let b = submit_as(s, "ada", "b", 0).await;
    let c = submit_as(s, "ada", "c", 0).await;
    assert_eq!(claim_with(s, w, SHORT).await.unwrap().job.id, a);
    let cb = claim(s, w).await.unwrap();
    assert_eq!(claim(s, other).await.unwrap().job.id, c);
    s.cancel_job(b, "ada").await.unwrap();

    past_short_lease().await;
    let mine = [AttemptRef { job_id: a, attempt: 1 }, AttemptRef { job_id: b, attempt: 1 }];
    let reply = s.heartbeat(w, &mine, LONG).await.unwrap();
    assert_eq!((reply.cancel, reply.lost), (vec![b], vec![]), "a's lease ran out but was not reaped yet: the heartbeat renews it");
    past_short_lease().await;
    assert!(s.reap_expired_leases().await.unwrap().is_empty(), "a's lease was renewed for LONG");
    assert_eq!(state(s, a).await, JobState::Running);

    let wrong = [AttemptRef { job_id: a, attempt: 2 }, AttemptRef { job_id: c, attempt: 1 }, AttemptRef { job_id: c + 1000, attempt: 1 }];
    let reply = s.heartbeat(w, &wrong, LONG).await.unwrap();
    assert_eq!((reply.cancel, reply.lost), (vec![], vec![a, c, c + 1000]), "another attempt, another worker's job, no job");
    assert_eq!(state(s, c).await, JobState::Running, "a heartbeat for another worker's job changes nothing");

    finish(s, lease_of(&cb, w), Outcome::Cancelled, "stopped").await;
    let reply = s.heartbeat(w, &[AttemptRef { job_id: b, attempt: 1 }], LONG).await.unwrap();
    assert_eq!(reply.lost, vec![b], "a finished job is no longer held");
    assert!(s.heartbeat(w, &[], LONG).await.unwrap().lost.is_empty());
    assert_err!(s.heartbeat(Uuid::new_v4(), &[], LONG).await, StoreError::NotFound(_), "a heartbeat from an unknown worker");
}

/// Every fenced write of one worker at one attempt, with what it was refused with.
async fn fenced_writes(s: &dyn Store, at: LeaseRef, upload: i64) -> Vec<(&'static str, StoreResult<()>)> {
    vec![
        ("report", s.report(batch(at, 1, losses(1..=2), &["stale line"])).await.map(|_| ())),
        ("begin_checkpoint", s.begin_checkpoint(header(at, 1, Some(0.5), b"stale")).await.map(|_| ())),
        ("commit_checkpoint", s.commit_checkpoint(at, upload, Retention::default()).await.map(|_| ())),
        ("finish", s.finish(at, Outcome::Succeeded, "stale finish", Some(&result(0.9))).await),
    ]
}

pub async fn writes_from_another_worker_or_an_older_attempt_are_stale_and_write_nothing(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (w1, w2) = (cpu_worker(s, "w1").await, cpu_worker(s, "w2").await);
    let job = submit_as(s, "ada", "contested", 0).await;
    claim_with(s, w1, SHORT).await.unwrap();
    lose_lease(s).await;
    let c2 = claim(s, w2).await.unwrap();
    let current = lease_of(&c2, w2);
    assert_eq!(current, LeaseRef { worker: w2, job_id: job, attempt: 2 });
    let upload = begin_upload(s, current, 1, Some(0.5), b"current bytes").await;
    let before = format!("{:?}", s.get_job(job).await.unwrap());

    let stale = [
        ("an older attempt of its old worker", LeaseRef { worker: w1, job_id: job, attempt: 1 }),
        ("the current attempt from another worker", LeaseRef { worker: w1, job_id: job, attempt: 2 }),
        ("an older attempt from the current worker", LeaseRef { worker: w2, job_id: job, attempt: 1 }),
        ("a future attempt", LeaseRef { worker: w2, job_id: job, attempt: 3 }),
    ];
    for (who, at) in stale {
        for (write, outcome) in fenced_writes(s, at, upload).await {
            assert_err!(outcome, StoreError::Stale(_), "{write} by {who}");
        }
    }
    assert_err!(s.report(batch(LeaseRef { job_id: job + 1000, ..current }, 1, vec![], &[])).await, StoreError::NotFound(_));

    assert_eq!(format!("{:?}", s.get_job(job).await.unwrap()), before, "the job is as it was");
    assert!(metric_rows(s, job).await.is_empty() && log_lines(s, job).await.is_empty());
    assert!(s.checkpoints(job).await.unwrap().is_empty());
    assert_eq!(s.last_row_ids(job).await.unwrap(), (0, 0));

    // The current token still writes, and the stale reports took no sequence number.
    assert!(s.report(batch(current, 1, losses(1..=1), &["current line"])).await.unwrap(), "sequence 1 is still fresh");
    let committed = s.commit_checkpoint(current, upload, Retention::default()).await.unwrap();
    assert_eq!(read_back(s, committed.id).await, b"current bytes");
    s.finish(current, Outcome::Succeeded, "done", None).await.unwrap();
    assert_eq!((metric_rows(s, job).await.len(), log_lines(s, job).await), (1, vec!["current line".to_string()]));
    assert_eq!(state(s, job).await, JobState::Succeeded);
}

pub async fn a_finished_attempt_takes_no_more_writes(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "done", 0).await;
    let c = claim(s, w).await.unwrap();
    let at = lease_of(&c, w);
    let upload = begin_upload(s, at, 1, None, b"late").await;
    s.finish(at, Outcome::Failed, "diverged", Some(&result(0.1))).await.unwrap();
    let before = format!("{:?}", s.get_job(job).await.unwrap());
    for (write, outcome) in fenced_writes(s, at, upload).await {
        assert_err!(outcome, StoreError::Stale(_), "{write} after the attempt failed");
    }
    assert_err!(s.finish(at, Outcome::Released, "", None).await, StoreError::Stale(_));
    assert_eq!(format!("{:?}", s.get_job(job).await.unwrap()), before);
    assert!(metric_rows(s, job).await.is_empty() && s.checkpoints(job).await.unwrap().is_empty());
}

pub async fn a_heartbeat_batch_answers_each_worker_as_its_own_heartbeat_would(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (w, other) = (cpu_worker(s, "w").await, cpu_worker(s, "other").await);
    let a = submit_as(s, "ada", "a", 0).await;
    let b = submit_as(s, "ada", "b", 0).await;
    assert_eq!(claim_with(s, w, SHORT).await.unwrap().job.id, a);
    assert_eq!(claim_with(s, other, SHORT).await.unwrap().job.id, b);
    s.cancel_job(b, "ada").await.unwrap();
    let stranger = Uuid::new_v4();
    let beats = vec![
        (w, vec![AttemptRef { job_id: a, attempt: 1 }, AttemptRef { job_id: b, attempt: 1 }]),
        (other, vec![AttemptRef { job_id: b, attempt: 1 }]),
        (stranger, vec![]),
    ];
    let replies = s.heartbeat_batch(&beats, LONG).await.unwrap();
    assert_eq!(replies.len(), 3, "one answer per heartbeat, in order");
    let first = replies[0].as_ref().unwrap();
    assert_eq!((&first.cancel, &first.lost), (&vec![], &vec![b]), "w holds a; b is other's");
    let second = replies[1].as_ref().unwrap();
    assert_eq!((&second.cancel, &second.lost), (&vec![b], &vec![]), "other is asked to stop b");
    assert!(matches!(replies[2], Err(StoreError::NotFound(_))), "an unknown worker, alone refused");
    past_short_lease().await;
    assert!(s.reap_expired_leases().await.unwrap().is_empty(), "both leases were renewed for LONG");
    let listed = s.list_workers().await.unwrap();
    assert!(listed.iter().any(|x| x.id == w) && listed.iter().any(|x| x.id == other));
}

pub async fn a_retry_requeues_the_job_as_a_lost_attempt_until_max_attempts_then_fails_and_cancels_its_children(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let exp = s.submit_pipeline(NewPipeline { max_attempts: 2, ..chain("ada", "unlucky", &[("a", &[]), ("b", &["a"])]) }).await.unwrap();
    let (a, b) = (id_of(&exp, "a"), id_of(&exp, "b"));

    let c1 = claim(s, w).await.unwrap();
    assert_eq!(c1.job.id, a);
    finish(s, lease_of(&c1, w), Outcome::Retry, "downloading checkpoint 7: connection reset").await;
    let j = s.get_job(a).await.unwrap();
    assert_eq!((j.state, j.attempt, j.lease_losses, j.worker), (JobState::Queued, 1, 1, None));
    assert!(j.message.contains("attempt 1 failed outside the job (downloading checkpoint 7: connection reset)"), "{}", j.message);
    assert!(j.finished_at.is_none());
    assert_eq!(state(s, b).await, JobState::Queued, "the child still waits");

    let c2 = claim(s, w).await.expect("a retried job is claimable again");
    assert_eq!((c2.job.id, c2.job.attempt), (a, 2));
    finish(s, lease_of(&c2, w), Outcome::Retry, "downloading checkpoint 7: corrupted").await;
    let j = s.get_job(a).await.unwrap();
    assert_eq!((j.state, j.lease_losses), (JobState::Failed, 2));
    assert!(j.message.contains("2 of 2 attempts lost") && j.message.contains("corrupted"), "{}", j.message);
    assert!(j.finished_at.is_some());
    let child = s.get_job(b).await.unwrap();
    assert_eq!(child.state, JobState::Cancelled);
    assert!(child.message.contains(&format!("parent job {a} failed: attempt 2 failed outside the job")), "{}", child.message);
    assert!(claim(s, w).await.is_none());
    assert_err!(s.finish(lease_of(&c2, w), Outcome::Retry, "again", None).await, StoreError::Stale(_), "a retried attempt is over");

    // A retry of a job whose cancel was asked ends it.
    let stop = submit_as(s, "ada", "to stop", 0).await;
    let c = claim(s, w).await.unwrap();
    s.cancel_job(stop, "ada").await.unwrap();
    finish(s, lease_of(&c, w), Outcome::Retry, "could not download").await;
    assert_eq!(state(s, stop).await, JobState::Cancelled);
}

pub async fn a_restarted_worker_keeps_its_row_and_its_lost_attempts_are_requeued_at_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let cred = |name: &str, token: &[u8]| NewCredential {
        role: Role::Worker,
        name: name.into(),
        token_sha256: sha256_hex(token),
        expires_at: None,
    };
    let rack = s.create_credential(cred("rack 3", b"t3")).await.unwrap();
    let other = s.create_credential(cred("rack 4", b"t4")).await.unwrap();
    let w = s.register_worker(new_worker("w", "cpu", &["cifar10"]), &sha256_hex(b"first session"), Some(rack.id)).await.unwrap();
    let held = submit(s, NewJob { max_attempts: 2, ..new_job("ada", "held", 0) }).await.id;
    let c1 = claim(s, w).await.unwrap();
    assert_eq!(c1.job.id, held);

    // The same worker comes back (same credential), now with a GPU and another data set.
    let again = NewWorker { gpus: vec!["H100".into()], ..new_worker("w again", "cuda", &["cifar10", "cifar100"]) };
    let rejoined = s.reregister_worker(w, again.clone(), &sha256_hex(b"second session"), Some(rack.id)).await.unwrap();
    assert_eq!((rejoined.id, rejoined.reused), (w, true));
    assert_eq!(rejoined.requeued.iter().map(|r| (r.job_id, r.attempt, r.new_state)).collect::<Vec<_>>(), vec![(held, 1, JobState::Queued)]);
    let listed = s.list_workers().await.unwrap();
    assert_eq!(listed.len(), 1, "no new row");
    assert_eq!(
        (&listed[0].new.name, &listed[0].new.device_kind, &listed[0].new.datasets, &listed[0].new.gpus),
        (&again.name, &again.device_kind, &again.datasets, &again.gpus)
    );
    assert!(listed[0].running_jobs.is_empty());
    assert_eq!(s.worker_for_session(&sha256_hex(b"first session")).await.unwrap(), None, "the old session is gone");
    assert_eq!(
        s.worker_for_session(&sha256_hex(b"second session")).await.unwrap(),
        Some(WorkerSession { worker: w, credential_id: Some(rack.id) })
    );

    let j = s.get_job(held).await.unwrap();
    assert_eq!((j.state, j.attempt, j.lease_losses, j.worker), (JobState::Queued, 1, 1, None), "requeued now, a lost attempt");
    assert!(j.message.contains("worker w restarted during attempt 1"), "{}", j.message);
    assert_err!(
        s.finish(lease_of(&c1, w), Outcome::Succeeded, "late", None).await,
        StoreError::Stale(_),
        "the lost attempt writes nothing"
    );
    let c2 = claim(s, w).await.expect("claimable again, by the worker itself");
    assert_eq!((c2.job.id, c2.job.attempt), (held, 2));

    // Another credential, or none, may not take the row (nor touch its jobs): a new row each.
    for (who, credential) in [("another credential", Some(other.id)), ("no credential", None)] {
        let session = sha256_hex(format!("hostile {who}").as_bytes());
        let r = s.reregister_worker(w, new_worker("thief", "cpu", &["cifar10"]), &session, credential).await.unwrap();
        assert!(!r.reused && r.id != w && r.requeued.is_empty(), "{who}: {r:?}");
        assert_eq!(s.worker_for_session(&session).await.unwrap(), Some(WorkerSession { worker: r.id, credential_id: credential }));
    }
    assert_eq!(state(s, held).await, JobState::Running, "the worker's job is untouched");
    assert_eq!(s.worker_for_session(&sha256_hex(b"second session")).await.unwrap().map(|x| x.worker), Some(w));

    // An unknown id is a new row; a restart that holds its last attempt fails the job.
    let r = s.reregister_worker(uuid::Uuid::new_v4(), new_worker("newcomer", "cpu", &[]), &sha256_hex(b"n"), Some(rack.id)).await.unwrap();
    assert!(!r.reused);
    let r = s.reregister_worker(w, again, &sha256_hex(b"third session"), Some(rack.id)).await.unwrap();
    assert_eq!(r.requeued.iter().map(|r| (r.job_id, r.attempt, r.new_state)).collect::<Vec<_>>(), vec![(held, 2, JobState::Failed)]);
    let j = s.get_job(held).await.unwrap();
    assert!(j.message.contains("2 of 2 attempts lost") && j.finished_at.is_some(), "{}", j.message);
    assert_eq!(s.list_workers().await.unwrap().len(), 4, "w, two hostile registrations and the newcomer");

    // Without credentials on either side, the row is taken over too.
    let open = s.register_worker(new_worker("open", "cpu", &[]), &sha256_hex(b"o1"), None).await.unwrap();
    let r = s.reregister_worker(open, new_worker("open", "cpu", &[]), &sha256_hex(b"o2"), None).await.unwrap();
    assert_eq!((r.id, r.reused), (open, true));
}

pub async fn a_finish_batch_ends_each_attempt_as_its_own_finish_would(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let exp = s.submit_pipeline(chain("ada", "pair", &[("parent", &[]), ("child", &[])])).await.unwrap();
    let (parent, lone) = (id_of(&exp, "parent"), id_of(&exp, "child"));
    let tree = s.submit_pipeline(chain("ada", "tree", &[("p", &[]), ("c", &["p"])])).await.unwrap();
    let (p, c) = (id_of(&tree, "p"), id_of(&tree, "c"));
    let released = submit_as(s, "ada", "released", 0).await;
    let failed = submit_as(s, "ada", "failed", 0).await;
    let mut held = std::collections::HashMap::new();
    while let Some(x) = claim(s, w).await {
        held.insert(x.job.id, lease_of(&x, w));
    }
    assert_eq!(held.len(), 5, "all but the child c");
    let mut feed = s.subscribe();
    let end = |id: i64, outcome: Outcome, message: &str| Finish {
        at: held[&id],
        outcome,
        message: message.into(),
        result: (outcome == Outcome::Succeeded).then(|| result(0.5)),
    };
    let stale = Finish { at: LeaseRef { attempt: 9, ..held[&lone] }, ..end(lone, Outcome::Succeeded, "wrong attempt") };
    let batch = vec![
        end(parent, Outcome::Succeeded, "done"),
        end(p, Outcome::Succeeded, "done"),
        end(released, Outcome::Released, "shutting down"),
        end(failed, Outcome::Failed, "diverged"),
        stale,
        end(parent, Outcome::Succeeded, "done again"),
    ];
    let answers = s.finish_batch(&batch).await.unwrap();
    assert_eq!(answers.len(), 6, "one answer per finish, in order");
    assert!(answers[..4].iter().all(Result::is_ok), "{answers:?}");
    assert!(matches!(answers[4], Err(StoreError::Stale(_))), "another attempt's finish: {:?}", answers[4]);
    assert!(matches!(answers[5], Err(StoreError::Stale(_))), "a second finish of one attempt: {:?}", answers[5]);
    let done = s.get_job(parent).await.unwrap();
    assert_eq!((done.state, done.message.as_str(), done.result), (JobState::Succeeded, "done", Some(result(0.5))));
    assert!(done.finished_at.is_some() && done.worker.is_none());
    let back = s.get_job(released).await.unwrap();
    assert_eq!((back.state, back.lease_losses, back.finished_at), (JobState::Queued, 0, None), "released: queued, uncounted");
    assert_eq!(state(s, failed).await, JobState::Failed);
    assert_eq!(state(s, lone).await, JobState::Running, "the stale finish wrote nothing");
    expect_changes(
        &mut feed,
        &[Change::Job(parent), Change::Job(p), Change::Job(released), Change::Job(failed), Change::Queue],
        "the batch",
    )
    .await;
    let next: Vec<i64> = [claim(s, w).await, claim(s, w).await].into_iter().flatten().map(|x| x.job.id).collect();
    assert_eq!(next, vec![c, released], "c's parent succeeded; the released job is back");
}
