//! Checkpoints: uploads in chunks, invisible until committed, read back by
//! slices; retention; aborted and abandoned uploads.

use std::sync::Arc;

use camp_server::store::*;

use crate::fixtures::*;

pub async fn a_checkpoint_upload_is_invisible_until_committed_and_reads_back_in_its_chunks(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "saver", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    let bytes = b"the weights of epoch three, in three chunks".to_vec();
    let (c0, c1, c2) = (&bytes[..10], &bytes[10..25], &bytes[25..]);
    let new = NewCheckpoint { metadata: serde_json::json!({ "lr": 0.1 }), ..header(at, 30, Some(0.7), &bytes) };
    let upload = s.begin_checkpoint(new).await.unwrap();
    s.put_checkpoint_chunk(upload, 1, c1).await.unwrap();
    s.put_checkpoint_chunk(upload, 0, c0).await.unwrap();
    s.put_checkpoint_chunk(upload, 2, c2).await.unwrap();

    assert!(s.checkpoints(job).await.unwrap().is_empty(), "an upload is not a checkpoint");
    assert_err!(s.checkpoint(upload).await, StoreError::NotFound(_));
    // DOUBT (see the suite's report): an upload's chunks can be listed before it is committed.
    assert_eq!(s.checkpoint_chunk_sizes(upload).await.unwrap(), vec![10, 15, c2.len() as u32]);

    let ck = s.commit_checkpoint(at, upload, Retention::default()).await.unwrap();
    assert_eq!((ck.id, ck.job_id, ck.attempt, ck.epoch, ck.step), (upload, job, 1, 30, 30));
    assert_eq!((ck.sha256.as_str(), ck.size, ck.top1, ck.best), (sha256_hex(&bytes).as_str(), bytes.len() as u64, Some(0.7), true));
    assert_eq!(ck.metadata, serde_json::json!({ "lr": 0.1 }));
    assert_eq!(checkpoint_ids(s, job).await, vec![upload]);
    assert_eq!(s.checkpoint(upload).await.unwrap().sha256, ck.sha256);

    assert_eq!(s.checkpoint_chunk_sizes(upload).await.unwrap(), vec![10, 15, c2.len() as u32], "in index order, not arrival order");
    assert_eq!(read_back(s, upload).await, bytes);
    assert_eq!(s.checkpoint_slice(upload, 1, 2, 3).await.unwrap(), &c1[2..5]);
    assert_eq!(s.checkpoint_slice(upload, 2, 3, 1000).await.unwrap(), &c2[3..], "fewer bytes at the chunk's end");
    assert!(s.checkpoint_slice(upload, 0, 1000, 5).await.unwrap().is_empty(), "past the chunk's end: nothing");
    assert_err!(s.checkpoint_slice(upload, 3, 0, 1).await, StoreError::NotFound(_), "no chunk 3");
    assert_err!(s.commit_checkpoint(at, upload, Retention::default()).await, StoreError::NotFound(_), "committed once only");

    let pending = begin_upload(s, at, 40, Some(0.99), b"newer, never committed").await;
    finish(s, at, Outcome::Released, "").await;
    let again = claim(s, w).await.unwrap();
    let resume = again.resume_from.expect("the committed checkpoint");
    assert_eq!((resume.id, resume.step), (upload, 30), "not the newer upload {pending}");
}

pub async fn retention_keeps_the_latest_checkpoints_and_the_best_one(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "kept", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    let two_and_best = Retention { keep_latest: 2, keep_best: true };
    let mut ids = Vec::new();
    for (step, top1) in [(1, Some(0.3)), (2, Some(0.9)), (3, Some(0.5)), (4, Some(0.4)), (5, None)] {
        ids.push(upload(s, at, step, top1, format!("step {step}").as_bytes(), two_and_best).await.id);
    }
    assert_eq!(checkpoint_ids(s, job).await, vec![ids[1], ids[3], ids[4]], "the best (0.9) and the latest two");
    let best: Vec<(i64, bool)> = s.checkpoints(job).await.unwrap().iter().map(|c| (c.id, c.best)).collect();
    assert_eq!(best, vec![(ids[1], true), (ids[3], false), (ids[4], false)]);
    assert_err!(s.checkpoint(ids[0]).await, StoreError::NotFound(_));
    assert_err!(s.checkpoint_slice(ids[2], 0, 0, 1).await, StoreError::NotFound(_), "a deleted checkpoint's bytes");
    assert_eq!(read_back(s, ids[1]).await, b"step 2", "the survivors' bytes stay");

    let latest_only = Retention { keep_latest: 1, keep_best: false };
    let lone = upload(s, at, 6, Some(0.2), b"step 6", latest_only).await;
    assert_eq!(checkpoint_ids(s, job).await, vec![lone.id], "without keep_best the best goes too");
    assert!(s.checkpoint(lone.id).await.unwrap().best, "the only one with a top1 is the best");

    let none_latest = upload(s, at, 7, None, b"step 7", Retention { keep_latest: 0, keep_best: true }).await;
    assert_eq!(checkpoint_ids(s, job).await, vec![lone.id, none_latest.id], "keep_latest 0 keeps the newest all the same");
}

pub async fn an_aborted_upload_leaves_nothing_behind_and_cannot_be_committed(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "hesitant", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    let upload = begin_upload(s, at, 1, Some(0.5), b"half written").await;
    assert!(!s.checkpoint_chunk_sizes(upload).await.unwrap().is_empty());
    s.abort_checkpoint(upload).await.unwrap();
    assert!(s.checkpoint_chunk_sizes(upload).await.unwrap().is_empty(), "its chunks are gone");
    assert_err!(s.commit_checkpoint(at, upload, Retention::default()).await, StoreError::NotFound(_));
    assert!(s.checkpoints(job).await.unwrap().is_empty());

    let kept = upload_and_keep(s, at).await;
    s.abort_checkpoint(kept).await.unwrap();
    assert_eq!(checkpoint_ids(s, job).await, vec![kept], "aborting a committed checkpoint changes nothing");
    assert_eq!(read_back(s, kept).await, b"committed");
    s.abort_checkpoint(kept + 1000).await.unwrap();
}

async fn upload_and_keep(s: &dyn Store, at: LeaseRef) -> i64 {
    upload(s, at, 2, None, b"committed", Retention::default()).await.id
}

pub async fn an_upload_commits_only_under_its_own_jobs_current_lease(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let (one, two) = (submit_as(s, "ada", "one", 0).await, submit_as(s, "ada", "two", 0).await);
    let at1 = lease_of(&claim(s, w).await.unwrap(), w);
    let at2 = lease_of(&claim(s, w).await.unwrap(), w);
    assert_eq!((at1.job_id, at2.job_id), (one, two));
    let of_two = begin_upload(s, at2, 1, None, b"two's bytes").await;
    assert_err!(s.commit_checkpoint(at1, of_two, Retention::default()).await, StoreError::NotFound(_), "job one's lease, job two's upload");
    assert!(s.checkpoints(one).await.unwrap().is_empty() && s.checkpoints(two).await.unwrap().is_empty());
    let ck = s.commit_checkpoint(at2, of_two, Retention::default()).await.unwrap();
    assert_eq!((ck.job_id, read_back(s, ck.id).await), (two, b"two's bytes".to_vec()));
    assert!(s.put_checkpoint_chunk(of_two + 1000, 0, b"x").await.is_err(), "a chunk of no upload");
}

pub async fn the_reaper_drops_uploads_whose_attempt_is_over_and_keeps_live_ones(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "abandoned", 0).await;
    let live_job = submit_as(s, "ada", "alive", 0).await;
    let at1 = lease_of(&claim_with(s, w, SHORT).await.unwrap(), w);
    let abandoned = begin_upload(s, at1, 1, None, b"never finished").await;
    let live_at = lease_of(&claim(s, w).await.unwrap(), w);
    assert_eq!(live_at.job_id, live_job);
    let live = begin_upload(s, live_at, 1, None, b"still going").await;

    lose_lease(s).await;
    assert!(s.checkpoint_chunk_sizes(abandoned).await.unwrap().is_empty(), "attempt 1 is over: its upload is dropped");
    assert!(!s.checkpoint_chunk_sizes(live).await.unwrap().is_empty(), "a running attempt's upload stays");
    let at2 = lease_of(&claim(s, w).await.unwrap(), w);
    assert_eq!((at2.job_id, at2.attempt), (job, 2));
    assert_err!(s.commit_checkpoint(at2, abandoned, Retention::default()).await, StoreError::NotFound(_));
    assert_eq!(read_back(s, s.commit_checkpoint(live_at, live, Retention::default()).await.unwrap().id).await, b"still going");
}

/// DOUBT (see the suite's report): a chunk is not fenced and may be added to a
/// checkpoint that is already committed, which changes the bytes it reads back.
pub async fn a_chunk_put_to_a_committed_checkpoint_is_accepted_as_it_stands(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    submit_as(s, "ada", "sealed", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    let ck = upload(s, at, 1, None, b"12345678", Retention::default()).await;
    assert_eq!(s.checkpoint_chunk_sizes(ck.id).await.unwrap(), vec![4, 4]);
    s.put_checkpoint_chunk(ck.id, 2, b"extra").await.unwrap();
    assert_eq!(read_back(s, ck.id).await, b"12345678extra");
    assert!(s.put_checkpoint_chunk(ck.id, 0, b"over").await.is_err(), "an index already stored is refused");
}
