//! Who talks to the store: workers and their sessions, credentials, and the
//! change feed that wakes whoever waits.

use std::sync::Arc;
use std::time::Duration;

use camp_proto::spec::Stage;
use camp_server::store::*;
use chrono::Utc;

use crate::fixtures::*;

pub async fn registered_workers_are_found_by_session_and_listed_latest_heard_first_with_their_jobs(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let cred = s
        .create_credential(NewCredential { role: Role::Worker, name: "rack 3".into(), token_sha256: sha256_hex(b"t"), expires_at: None })
        .await
        .unwrap();
    let gpu_box = NewWorker {
        gpus: vec!["H100".into(), "H100".into()],
        labels: serde_json::json!({ "rack": 3 }),
        ..new_worker("gpu box", "cuda", &["cifar10", "imagenet"])
    };
    let (sess1, sess2) = (sha256_hex(b"session 1"), sha256_hex(b"session 2"));
    let w1 = s.register_worker(gpu_box.clone(), &sess1, Some(cred.id)).await.unwrap();
    let w2 = s.register_worker(new_worker("laptop", "cpu", &["cifar10"]), &sess2, None).await.unwrap();
    assert_ne!(w1, w2);

    assert_eq!(s.worker_for_session(&sess1).await.unwrap(), Some(WorkerSession { worker: w1, credential_id: Some(cred.id) }));
    assert_eq!(s.worker_for_session(&sess2).await.unwrap(), Some(WorkerSession { worker: w2, credential_id: None }));
    assert_eq!(s.worker_for_session(&sha256_hex(b"session 3")).await.unwrap(), None);
    assert!(s.register_worker(new_worker("copycat", "cpu", &[]), &sess1, None).await.is_err(), "a session is one worker's");

    let listed: Vec<_> = s.list_workers().await.unwrap().into_iter().map(|w| w.id).collect();
    assert_eq!(listed, vec![w2, w1], "the latest heard from first");
    let job = submit_as(s, "ada", "on the box", 0).await;
    assert_eq!(claim(s, w1).await.unwrap().job.id, job);
    let workers = s.list_workers().await.unwrap();
    assert_eq!(workers.iter().map(|w| (w.id, w.running_jobs.clone())).collect::<Vec<_>>(), vec![(w1, vec![job]), (w2, vec![])]);
    let listed = &workers[0];
    assert_eq!(
        (&listed.new.name, &listed.new.hostname, &listed.new.device_kind, &listed.new.gpus, &listed.new.datasets, &listed.new.labels),
        (&gpu_box.name, &gpu_box.hostname, &gpu_box.device_kind, &gpu_box.gpus, &gpu_box.datasets, &gpu_box.labels)
    );
    assert!(listed.last_heartbeat > workers[1].last_heartbeat);
}

pub async fn a_worker_may_read_the_jobs_it_runs_and_the_jobs_they_start_from(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let (w, w2) = (cpu_worker(s, "w").await, cpu_worker(s, "w2").await);
    let qat = submit(s, NewJob { spec: stage_spec(Stage::Qat), ..new_job("ada", "qat", 0) }).await.id;
    let cq = claim(s, w).await.unwrap();
    assert!(s.worker_may_read(w, qat).await.unwrap());
    assert!(!s.worker_may_read(w2, qat).await.unwrap(), "another worker's job");
    finish(s, lease_of(&cq, w), Outcome::Succeeded, "").await;
    assert!(!s.worker_may_read(w, qat).await.unwrap(), "a job it no longer runs");

    let spec = camp_proto::JobSpec { init_from: qat, ..stage_spec(Stage::Sp) };
    let sp = submit(s, NewJob { spec, ..new_job("ada", "sp", 0) }).await.id;
    let unrelated = submit_as(s, "ada", "unrelated", 0).await;
    let cs = claim(s, w2).await.unwrap();
    assert_eq!(cs.job.id, sp);
    assert!(s.worker_may_read(w2, sp).await.unwrap());
    assert!(s.worker_may_read(w2, qat).await.unwrap(), "the job its job starts from");
    assert!(!s.worker_may_read(w2, unrelated).await.unwrap());
    assert!(!s.worker_may_read(w, qat).await.unwrap());
    finish(s, lease_of(&cs, w2), Outcome::Succeeded, "").await;
    assert!(!s.worker_may_read(w2, qat).await.unwrap(), "no longer once its job ended");
}

pub async fn credentials_are_found_by_token_digest_listed_and_revoked_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let new = |role, name: &str, token: &str, expires_at| NewCredential {
        role,
        name: name.into(),
        token_sha256: sha256_hex(token.as_bytes()),
        expires_at,
    };
    let in_an_hour = Utc::now() + chrono::Duration::hours(1);
    let an_hour_ago = Utc::now() - chrono::Duration::hours(1);
    let user = s.create_credential(new(Role::User, "ada", "ada's token", None)).await.unwrap();
    let admin = s.create_credential(new(Role::Admin, "root", "root's token", Some(in_an_hour))).await.unwrap();
    let old = s.create_credential(new(Role::Worker, "old box", "old token", Some(an_hour_ago))).await.unwrap();
    assert_eq!((user.role, user.name.as_str(), user.expires_at, user.revoked_at), (Role::User, "ada", None, None));

    let found = s.credential_for_token(&sha256_hex(b"root's token")).await.unwrap().expect("found by its digest");
    assert_eq!((found.id, found.role, found.name.as_str()), (admin.id, Role::Admin, "root"));
    assert_eq!(found.expires_at.map(|t| t.timestamp_micros()), Some(in_an_hour.timestamp_micros()));
    // Expiry and revocation are the caller's to judge: the store returns the record.
    let expired = s.credential_for_token(&sha256_hex(b"old token")).await.unwrap().expect("an expired credential is still found");
    assert_eq!((expired.id, expired.role), (old.id, Role::Worker));
    assert!(s.credential_for_token(&sha256_hex(b"no such token")).await.unwrap().is_none());
    assert!(s.credential_for_token("ada's token").await.unwrap().is_none(), "by digest, never by the token itself");

    let listed: Vec<(i64, String)> = s.list_credentials().await.unwrap().into_iter().map(|c| (c.id, c.name)).collect();
    assert_eq!(listed, vec![(user.id, "ada".into()), (admin.id, "root".into()), (old.id, "old box".into())]);

    let revoked = s.revoke_credential(user.id).await.unwrap();
    let revoked_at = revoked.revoked_at.expect("revoked now");
    assert_eq!(s.revoke_credential(user.id).await.unwrap().revoked_at, Some(revoked_at), "revoking again changes nothing");
    let found = s.credential_for_token(&sha256_hex(b"ada's token")).await.unwrap().unwrap();
    assert_eq!(found.revoked_at, Some(revoked_at));
    assert!(s.credential_for_token(&sha256_hex(b"root's token")).await.unwrap().unwrap().revoked_at.is_none(), "the others stand");
    assert_err!(s.revoke_credential(old.id + 1000).await, StoreError::NotFound(_));
    assert!(s.create_credential(new(Role::User, "twin", "ada's token", None)).await.is_err(), "one credential per token");
}

pub async fn the_change_feed_announces_queue_additions_and_changes_to_each_job(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let mut feed = s.subscribe();
    let job = submit_as(s, "ada", "watched", 0).await;
    expect_changes(&mut feed, &[Change::Job(job), Change::Queue], "a submission").await;
    let c = claim(s, w).await.unwrap();
    expect_changes(&mut feed, &[Change::Job(job)], "a claim").await;
    let at = lease_of(&c, w);
    assert!(s.report(batch(at, 1, losses(1..=1), &["line"])).await.unwrap());
    expect_changes(&mut feed, &[Change::Job(job)], "a report").await;

    let stale = LeaseRef { attempt: 2, ..at };
    assert_err!(s.report(batch(stale, 2, losses(2..=2), &[])).await, StoreError::Stale(_));
    expect_silence_about(&mut feed, job, Duration::from_millis(200), "a refused report").await;

    let ck = upload(s, at, 1, Some(0.5), b"bytes", Retention::default()).await;
    expect_changes(&mut feed, &[Change::Job(job)], "a commit").await;
    assert_eq!(ck.job_id, job);
    finish(s, at, Outcome::Succeeded, "").await;
    expect_changes(&mut feed, &[Change::Job(job)], "a success").await;

    let other = submit_as(s, "ada", "to cancel", 0).await;
    expect_changes(&mut feed, &[Change::Job(other), Change::Queue], "a second submission").await;
    s.cancel_job(other, "ada").await.unwrap();
    expect_changes(&mut feed, &[Change::Job(other)], "a cancel").await;
    let exp = s.submit_pipeline(chain("ada", "fed", &[("a", &[]), ("b", &["a"])])).await.unwrap();
    expect_changes(&mut feed, &[Change::Job(id_of(&exp, "a")), Change::Job(id_of(&exp, "b")), Change::Queue], "a pipeline").await;
    // A success announces the queue only when it makes a child claimable: the
    // dispatchers of every coordinator then ask for work once.
    let a = claim(s, w).await.unwrap();
    assert_eq!(a.job.id, id_of(&exp, "a"));
    expect_changes(&mut feed, &[Change::Job(a.job.id)], "the parent's claim").await;
    finish(s, lease_of(&a, w), Outcome::Succeeded, "").await;
    expect_changes(&mut feed, &[Change::Job(a.job.id), Change::Queue], "the parent's success (its child may start)").await;
}
