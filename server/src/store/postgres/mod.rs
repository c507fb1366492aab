//! The PostgreSQL store. Claims use `FOR UPDATE SKIP LOCKED` so that many
//! coordinators and workers claim without blocking each other; changes are
//! announced with NOTIFY on channel `camp` so that every coordinator can wake
//! its long-polls and watchers.
//!
//! Here: the connection, the change feed and the checks every write shares
//! (the fencing token, the worker's liveness); `rows` maps table rows to the
//! store's records; one module per part of the store's contract implements it.

mod checkpoints;
mod credentials;
mod jobs;
mod leases;
mod ops;
mod rows;
mod telemetry;

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use camp_proto::{JobResult, JobSpec};
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{FromRow, Postgres, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::*;
use rows::{JobRecord, JOB_SELECT};

const CHANNEL: &str = "camp";
const QUEUE_PAYLOAD: &str = "queue";
/// The payload of a notification about many jobs: `jobs:` and their ids, comma-separated.
const JOBS_PREFIX: &str = "jobs:";

pub struct PgStore {
    pool: PgPool,
    changes: broadcast::Sender<Change>,
}

impl PgStore {
    /// Connects, applies the migrations and starts listening for changes.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new().max_connections(16).connect(url).await?;
        Self::from_pool(pool).await
    }

    /// Applies the migrations and returns once the change feed listens, so
    /// that no change made through the store goes unannounced.
    pub async fn from_pool(pool: PgPool) -> StoreResult<Self> {
        sqlx::migrate!("migrations/postgres").run(&pool).await?;
        let (changes, _) = broadcast::channel(1024);
        let (ready, listening) = tokio::sync::oneshot::channel();
        tokio::spawn(listen(pool.clone(), changes.clone(), ready));
        if tokio::time::timeout(Duration::from_secs(10), listening).await.is_err() {
            tracing::warn!("change listener: not listening after 10 s; carrying on (it keeps trying)");
        }
        Ok(PgStore { pool, changes })
    }
}

/// Forwards NOTIFYs to local subscribers; reconnects on failure and then wakes
/// everyone, since notifications may have been missed meanwhile.
async fn listen(pool: PgPool, changes: broadcast::Sender<Change>, ready: tokio::sync::oneshot::Sender<()>) {
    let mut ready = Some(ready);
    loop {
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("change listener: connect failed: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        if let Err(e) = listener.listen(CHANNEL).await {
            tracing::warn!("change listener: LISTEN failed: {e}");
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        if let Some(ready) = ready.take() {
            let _ = ready.send(());
        }
        let _ = changes.send(Change::Queue);
        loop {
            match listener.recv().await {
                Ok(n) => {
                    for change in parse_payload(n.payload()) {
                        let _ = changes.send(change);
                    }
                }
                Err(e) => {
                    tracing::warn!("change listener: {e}; reconnecting");
                    break;
                }
            }
        }
        if changes.receiver_count() == 0 && pool.is_closed() {
            return;
        }
    }
}

/// What a notification says: `queue`, one job's id, or `jobs:ID,ID,...` (a
/// batch's jobs in one notification). Anything else says nothing.
fn parse_payload(payload: &str) -> Vec<Change> {
    if payload == QUEUE_PAYLOAD {
        return vec![Change::Queue];
    }
    let ids = payload.strip_prefix(JOBS_PREFIX).unwrap_or(payload);
    ids.split(',').filter_map(|id| id.parse().ok()).map(Change::Job).collect()
}

pub(super) async fn notify(tx: &mut Transaction<'_, Postgres>, change: Change) -> StoreResult<()> {
    let payload = match change {
        Change::Queue => QUEUE_PAYLOAD.to_string(),
        Change::Job(id) => id.to_string(),
    };
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&mut **tx).await?;
    Ok(())
}

pub(super) fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

/// Checks that `at` is the job's fencing token: running, at this attempt, leased
/// to this worker. With `lock`, the job row stays locked until the transaction ends,
/// so the write that follows happens under the token it checked.
pub(super) async fn fence(tx: &mut Transaction<'_, Postgres>, at: LeaseRef, lock: bool) -> StoreResult<()> {
    let sql = if lock {
        "SELECT state, attempt, lease_worker FROM jobs WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT state, attempt, lease_worker FROM jobs WHERE id = $1"
    };
    let row: Option<(String, i32, Option<Uuid>)> = sqlx::query_as(sql).bind(at.job_id).fetch_optional(&mut **tx).await?;
    crate::store::policy::check_fence(at, row.map(|(state, attempt, holder)| (state, attempt as u32, holder)))
}

pub(super) async fn job_in(tx: &mut Transaction<'_, Postgres>, id: i64) -> StoreResult<Job> {
    let rec: Option<JobRecord> = sqlx::query_as(&format!("{JOB_SELECT} WHERE j.id = $1")).bind(id).fetch_optional(&mut **tx).await?;
    rec.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?.try_into()
}

/// Cancels the jobs waiting on a job that failed or was cancelled, however deep.
pub(super) async fn cancel_descendants(tx: &mut Transaction<'_, Postgres>, job_id: i64, why: &str) -> StoreResult<()> {
    let cancelled: Vec<(i64,)> = sqlx::query_as(
        "WITH RECURSIVE below(id) AS ( \
           SELECT child_id FROM job_dependencies WHERE parent_id = $1 \
           UNION SELECT d.child_id FROM job_dependencies d JOIN below b ON d.parent_id = b.id) \
         UPDATE jobs SET state = 'cancelled', finished_at = now(), message = $2 \
         WHERE id IN (SELECT id FROM below) AND state = 'queued' RETURNING id",
    )
    .bind(job_id)
    .bind(format!("cancelled: parent job {job_id} {why}"))
    .fetch_all(&mut **tx)
    .await?;
    for (id,) in cancelled {
        notify(tx, Change::Job(id)).await?;
    }
    Ok(())
}

impl Store for PgStore {
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_notification_names_the_queue_a_job_or_a_batch_of_jobs() {
        assert_eq!(parse_payload("queue"), vec![Change::Queue]);
        assert_eq!(parse_payload("42"), vec![Change::Job(42)]);
        assert_eq!(parse_payload("jobs:1,2,3"), vec![Change::Job(1), Change::Job(2), Change::Job(3)]);
        assert!(parse_payload("nonsense").is_empty() && parse_payload("").is_empty());
    }
}
