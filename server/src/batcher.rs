//! Group commit for worker calls: calls that arrive close together are
//! written to the store in one batch (one transaction, a few statements), and
//! each caller gets its own answer, as if it had been written alone.
//!
//! Why: a lab's fleet sends many small writes — a heartbeat a second from
//! every worker, a `Finish` after every short job — and one transaction
//! each cost the database more than the work itself. Two ways to batch:
//!
//! - heartbeats wait up to a `window` (200 ms) for others: a lease is tens of
//!   seconds long, renewing it a moment later changes nothing a worker can
//!   see, and the database then sees a few statements a second however large
//!   the fleet;
//! - finishes take no window (`Duration::ZERO`): whatever arrived while the
//!   previous batch was being written goes in the next, so a lone call waits
//!   for nothing and a busy coordinator writes in batches on its own.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::store::{StoreError, StoreResult};

/// Calls waiting for a batch at most; beyond that a caller waits for room.
const BACKLOG: usize = 16 * 1024;

type Call<T, R> = (T, oneshot::Sender<StoreResult<R>>);

/// One writer of batches of `T`, answering each with an `R`.
pub struct Batcher<T, R> {
    calls: mpsc::Sender<Call<T, R>>,
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the writer: each batch holds the calls that came within
    /// `window` of its first (at most `max`), and `write` answers them in
    /// order (or fails them all). It stops when the batcher is dropped.
    pub fn start<F, Fut>(window: Duration, max: usize, write: F) -> Self
    where
        F: Fn(Vec<T>) -> Fut + Send + 'static,
        Fut: Future<Output = StoreResult<Vec<StoreResult<R>>>> + Send + 'static,
    {
        let (calls, incoming) = mpsc::channel(BACKLOG);
        tokio::spawn(write_batches(window, max, incoming, write));
        Batcher { calls }
    }

    /// Writes `item` with whatever else comes along, and returns its own answer.
    pub async fn call(&self, item: T) -> StoreResult<R> {
        let (reply, answer) = oneshot::channel();
        let gone = || StoreError::Backend("the batch writer stopped".into());
        self.calls.send((item, reply)).await.map_err(|_| gone())?;
        answer.await.map_err(|_| gone())?
    }
}

async fn write_batches<T, R, F, Fut>(window: Duration, max: usize, mut incoming: mpsc::Receiver<Call<T, R>>, write: F)
where
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = StoreResult<Vec<StoreResult<R>>>>,
{
    while let Some(first) = incoming.recv().await {
        let mut batch = vec![first];
        let until = tokio::time::Instant::now() + window;
        while batch.len() < max {
            match incoming.try_recv() {
                Ok(call) => batch.push(call),
                Err(_) if window.is_zero() => break,
                Err(_) => match tokio::time::timeout_at(until, incoming.recv()).await {
                    Ok(Some(call)) => batch.push(call),
                    _ => break,
                },
            }
        }
        let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
        let n = items.len();
        match write(items).await {
            Ok(answers) if answers.len() == n => {
                for (reply, answer) in replies.into_iter().zip(answers) {
                    let _ = reply.send(answer);
                }
            }
            Ok(answers) => {
                let e = StoreError::Backend(format!("a batch of {n} calls got {} answers", answers.len()));
                tracing::error!("{e}");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
            Err(e) => {
                tracing::warn!("batch of {n}: {e}");
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}
