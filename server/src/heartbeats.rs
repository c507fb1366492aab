//! Heartbeats, batched: every worker's heartbeat that arrives within `WINDOW`
//! of the first is written with the others in one store call
//! (`heartbeat_batch`: one statement renews the leases, one marks the
//! workers heard from), and each caller gets its own answer.
//!
//! Why: a fleet of a thousand workers heartbeating once a second cost a
//! transaction per beat. A lease is tens of seconds long; renewing it
//! `WINDOW` later changes nothing a worker can observe, and the database
//! then sees a few statements a second however large the fleet.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::ops::metrics as names;
use crate::store::{AttemptRef, HeartbeatReply, Store, StoreError, StoreResult};

/// How long a batch collects heartbeats after its first one.
const WINDOW: Duration = Duration::from_millis(50);
/// Heartbeats in one batch at most.
const MAX_BATCH: usize = 1024;
/// Heartbeats waiting for a batch at most; beyond that a caller waits for room.
const BACKLOG: usize = 16 * 1024;

struct Beat {
    worker: Uuid,
    running: Vec<AttemptRef>,
    reply: oneshot::Sender<StoreResult<HeartbeatReply>>,
}

/// The coordinator's heartbeat writer (one per process).
pub struct Heartbeats {
    beats: mpsc::Sender<Beat>,
}

impl Heartbeats {
    pub fn start(store: Arc<dyn Store>, lease: Duration) -> Self {
        let (beats, incoming) = mpsc::channel(BACKLOG);
        tokio::spawn(write_batches(store, lease, incoming));
        Heartbeats { beats }
    }

    /// Renews `worker`'s leases on `running`, and says which to cancel and which it lost.
    pub async fn beat(&self, worker: Uuid, running: Vec<AttemptRef>) -> StoreResult<HeartbeatReply> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Backend("the heartbeat writer stopped".into());
        self.beats.send(Beat { worker, running, reply }).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn write_batches(store: Arc<dyn Store>, lease: Duration, mut incoming: mpsc::Receiver<Beat>) {
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + WINDOW;
        while batch.len() < MAX_BATCH {
            match tokio::time::timeout_at(until, incoming.recv()).await {
                Ok(Some(beat)) => batch.push(beat),
                _ => break,
            }
        }
        let beats: Vec<(Uuid, Vec<AttemptRef>)> = batch.iter_mut().map(|b| (b.worker, std::mem::take(&mut b.running))).collect();
        metrics::counter!(names::HEARTBEAT_BATCHES).increment(1);
        match store.heartbeat_batch(&beats, lease).await {
            Ok(replies) => {
                for (beat, reply) in batch.into_iter().zip(replies) {
                    let _ = beat.reply.send(reply);
                }
            }
            Err(e) => {
                tracing::warn!("heartbeats: {e}");
                for beat in batch {
                    let _ = beat.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
