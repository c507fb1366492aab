//! Workers and leases: registration and sessions, the claim (priority, then
//! fair share, then age; `SKIP LOCKED`), heartbeats, how an attempt finishes,
//! and the reaper of expired leases.

use super::rows::*;
use super::*;
use crate::store::policy;

#[async_trait]
impl LeaseStore for PgStore {
    async fn register_worker(&self, w: NewWorker, session_sha256: &str, credential_id: Option<i64>) -> StoreResult<Uuid> {
        let mut tx = self.pool.begin().await?;
        let id = insert_worker(&mut tx, &w, session_sha256, credential_id).await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn reregister_worker(
        &self,
        previous: Uuid,
        w: NewWorker,
        session_sha256: &str,
        credential_id: Option<i64>,
    ) -> StoreResult<Rejoined> {
        let mut tx = self.pool.begin().await?;
        // Locked first, as a claim or heartbeat does (worker, then jobs).
        let stored: Option<(Option<i64>, String)> = sqlx::query_as("SELECT credential_id, name FROM workers WHERE id = $1 FOR UPDATE")
            .bind(previous)
            .fetch_optional(&mut *tx)
            .await?;
        let old_name = stored.as_ref().map(|(_, name)| name.clone());
        if !policy::may_take_over(stored.map(|(credential, _)| credential), credential_id) {
            let id = insert_worker(&mut tx, &w, session_sha256, credential_id).await?;
            tx.commit().await?;
            return Ok(Rejoined { id, reused: false, requeued: Vec::new() });
        }
        sqlx::query(
            "UPDATE workers SET name = $2, hostname = $3, device_kind = $4, gpus = $5, datasets = $6, labels = $7, \
             session_sha256 = $8, registered_at = now(), last_heartbeat = now() WHERE id = $1",
        )
        .bind(previous)
        .bind(&w.name)
        .bind(&w.hostname)
        .bind(&w.device_kind)
        .bind(&w.gpus)
        .bind(&w.datasets)
        .bind(&w.labels)
        .bind(session_sha256)
        .execute(&mut *tx)
        .await?;
        // What the worker ran before it restarted is lost: back to the queue now, not at lease expiry.
        let held: Vec<(i64, i32, i32, i32, bool)> = sqlx::query_as(
            "SELECT id, attempt, max_attempts, lease_losses, cancel_requested FROM jobs \
             WHERE state = 'running' AND lease_worker = $1 ORDER BY id FOR UPDATE",
        )
        .bind(previous)
        .fetch_all(&mut *tx)
        .await?;
        let mut requeued = Vec::with_capacity(held.len());
        for (job_id, attempt, max_attempts, lease_losses, cancel_requested) in held {
            let lease = policy::ExpiredLease {
                attempt: attempt as u32,
                max_attempts: max_attempts as u32,
                lease_losses: lease_losses as u32,
                cancel_requested,
                worker: old_name.clone(),
            };
            let (new_state, message) = policy::lost_attempt(&lease, policy::Loss::Restarted);
            sqlx::query(
                "UPDATE jobs SET state = $2, message = $3, finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() END, \
                 lease_losses = lease_losses + 1, lease_worker = NULL, lease_expires_at = NULL WHERE id = $1",
            )
            .bind(job_id)
            .bind(new_state.as_str())
            .bind(&message)
            .execute(&mut *tx)
            .await?;
            ended(&mut tx, job_id, new_state, &message).await?;
            requeued.push(Reaped { job_id, attempt: attempt as u32, new_state });
        }
        tx.commit().await?;
        Ok(Rejoined { id: previous, reused: true, requeued })
    }

    async fn worker_for_session(&self, session_sha256: &str) -> StoreResult<Option<WorkerSession>> {
        let row: Option<(Uuid, Option<i64>)> = sqlx::query_as("SELECT id, credential_id FROM workers WHERE session_sha256 = $1")
            .bind(session_sha256)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.map(|(worker, credential_id)| WorkerSession { worker, credential_id }))
    }

    async fn list_workers(&self) -> StoreResult<Vec<Worker>> {
        #[derive(FromRow)]
        struct Rec {
            id: Uuid,
            name: String,
            hostname: String,
            device_kind: String,
            gpus: Vec<String>,
            datasets: Vec<String>,
            labels: serde_json::Value,
            last_heartbeat: DateTime<Utc>,
            running_jobs: Vec<i64>,
        }
        let recs: Vec<Rec> = sqlx::query_as(
            "SELECT w.id, w.name, w.hostname, w.device_kind, w.gpus, w.datasets, w.labels, w.last_heartbeat, \
             ARRAY(SELECT j.id FROM jobs j WHERE j.lease_worker = w.id AND j.state = 'running' ORDER BY j.id) \
             AS running_jobs FROM workers w ORDER BY w.last_heartbeat DESC LIMIT 1000",
        )
        .fetch_all(&self.pool)
        .await?;
        Ok(recs
            .into_iter()
            .map(|r| Worker {
                id: r.id,
                new: NewWorker {
                    name: r.name,
                    hostname: r.hostname,
                    device_kind: r.device_kind,
                    gpus: r.gpus,
                    datasets: r.datasets,
                    labels: r.labels,
                },
                last_heartbeat: r.last_heartbeat,
                running_jobs: r.running_jobs,
            })
            .collect())
    }

    async fn claim(&self, worker: Uuid, lease: Duration, policy: ClaimPolicy) -> StoreResult<Option<Claimed>> {
        let cap = policy.max_running_per_user.map(i64::from);
        // Owners found at their cap by this claim: passed over when it looks again.
        let mut at_cap: Vec<String> = Vec::new();
        let (mut tx, job_id) = loop {
            let mut tx = self.pool.begin().await?;
            touch_worker(&mut tx, worker).await?;
            // Priority first; among equals the owner with the fewest running jobs
            // (fair share), then the oldest job.
            let next: Option<(i64, String)> = sqlx::query_as(
                "WITH running AS (SELECT owner, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY owner) \
                 SELECT j.id, j.owner FROM jobs j JOIN workers w ON w.id = $1 \
                 LEFT JOIN running r ON r.owner = j.owner \
                 WHERE j.state = 'queued' \
                   AND (j.device = 'any' OR j.device = w.device_kind) \
                   AND j.dataset = ANY(w.datasets) \
                   AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id \
                                   WHERE d.child_id = j.id AND p.state <> 'succeeded') \
                   AND ($2::bigint IS NULL OR COALESCE(r.n, 0) < $2) \
                   AND NOT (j.owner = ANY($3)) \
                 ORDER BY j.priority DESC, COALESCE(r.n, 0), j.id \
                 LIMIT 1 FOR UPDATE OF j SKIP LOCKED",
            )
            .bind(worker)
            .bind(cap)
            .bind(&at_cap)
            .fetch_optional(&mut *tx)
            .await?;
            let Some((job_id, owner)) = next else {
                tx.commit().await?;
                return Ok(None);
            };
            if let Some(cap) = cap {
                // Claims for one owner take turns here, so two coordinators cannot
                // both start the owner's last allowed job: the count is read after
                // the previous claimer committed.
                sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('camp.owner.' || $1, 0))")
                    .bind(&owner)
                    .execute(&mut *tx)
                    .await?;
                let (running,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE owner = $1 AND state = 'running'")
                    .bind(&owner)
                    .fetch_one(&mut *tx)
                    .await?;
                if running >= cap {
                    tx.rollback().await?;
                    at_cap.push(owner);
                    continue;
                }
            }
            break (tx, job_id);
        };
        sqlx::query(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_worker = $2, \
               lease_expires_at = now() + make_interval(secs => $3), started_at = COALESCE(started_at, now()) \
             WHERE id = $1",
        )
        .bind(job_id)
        .bind(worker)
        .bind(lease_secs(lease))
        .execute(&mut *tx)
        .await?;
        let job = job_in(&mut tx, job_id).await?;
        let latest: Option<CheckpointRecord> = sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = $1 ORDER BY c.id DESC LIMIT 1"))
            .bind(job_id)
            .fetch_optional(&mut *tx)
            .await?;
        let resume_from: Option<Checkpoint> = latest.map(Into::into);
        // Work that earlier attempts did past the checkpoint we resume from is lost and
        // will be redone: drop its metrics so the series has one row per step.
        let resume_step = resume_from.as_ref().map_or(0, |c| c.step);
        sqlx::query("DELETE FROM metrics WHERE job_id = $1 AND attempt < $2 AND step > $3")
            .bind(job_id)
            .bind(job.attempt as i32)
            .bind(resume_step)
            .execute(&mut *tx)
            .await?;
        // A job that starts from another's weights gets that job's best checkpoint.
        let init_from: Option<CheckpointRecord> = match job.spec.init_from {
            0 => None,
            parent => {
                sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = $1 ORDER BY c.top1 DESC NULLS LAST, c.id LIMIT 1"))
                    .bind(parent)
                    .fetch_optional(&mut *tx)
                    .await?
            }
        };
        notify(&mut tx, Change::Job(job_id)).await?;
        tx.commit().await?;
        Ok(Some(Claimed { job, resume_from, init_from: init_from.map(Into::into) }))
    }

    async fn heartbeat(&self, worker: Uuid, running: &[AttemptRef], lease: Duration) -> StoreResult<HeartbeatReply> {
        let mut tx = self.pool.begin().await?;
        touch_worker(&mut tx, worker).await?;
        let ids: Vec<i64> = running.iter().map(|r| r.job_id).collect();
        let attempts: Vec<i32> = running.iter().map(|r| r.attempt as i32).collect();
        let renewed: Vec<(i64, bool)> = sqlx::query_as(
            "UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $4) \
             FROM unnest($2::bigint[], $3::int[]) AS r(id, attempt) \
             WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running' AND j.lease_worker = $1 \
             RETURNING j.id, j.cancel_requested",
        )
        .bind(worker)
        .bind(&ids)
        .bind(&attempts)
        .bind(lease_secs(lease))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut reply = HeartbeatReply::default();
        for r in running {
            match renewed.iter().find(|(id, _)| *id == r.job_id) {
                Some((id, true)) => reply.cancel.push(*id),
                Some(_) => {}
                None => reply.lost.push(r.job_id),
            }
        }
        Ok(reply)
    }

    async fn finish(&self, at: LeaseRef, outcome: Outcome, message: &str, result: Option<&JobResult>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, at, true).await?;
        let (max_attempts, lease_losses, cancel_requested, worker): (i32, i32, bool, Option<String>) = sqlx::query_as(
            "SELECT j.max_attempts, j.lease_losses, j.cancel_requested, w.name \
             FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker WHERE j.id = $1",
        )
        .bind(at.job_id)
        .fetch_one(&mut *tx)
        .await?;
        let lease = policy::ExpiredLease {
            attempt: at.attempt,
            max_attempts: max_attempts as u32,
            lease_losses: lease_losses as u32,
            cancel_requested,
            worker,
        };
        let (state, message, lost) = policy::finished(outcome, message, &lease);
        sqlx::query(
            "UPDATE jobs SET state = $2, message = $3, result = COALESCE($4, result), lease_worker = NULL, \
             lease_expires_at = NULL, finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() END, \
             lease_losses = lease_losses + $5 WHERE id = $1",
        )
        .bind(at.job_id)
        .bind(state.as_str())
        .bind(&message)
        .bind(result.map(sqlx::types::Json))
        .bind(i32::from(lost))
        .execute(&mut *tx)
        .await?;
        if lost {
            ended(&mut tx, at.job_id, state, &message).await?;
        } else {
            match state {
                // Released work, and children waiting for this parent, are claimable now.
                JobState::Queued | JobState::Succeeded => notify(&mut tx, Change::Queue).await?,
                JobState::Failed => cancel_descendants(&mut tx, at.job_id, &format!("failed: {message}")).await?,
                _ => cancel_descendants(&mut tx, at.job_id, "was cancelled").await?,
            }
            notify(&mut tx, Change::Job(at.job_id)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reap_expired_leases(&self) -> StoreResult<Vec<Reaped>> {
        let mut tx = self.pool.begin().await?;
        let expired: Vec<(i64, i32, i32, i32, bool, Option<String>)> = sqlx::query_as(
            "SELECT j.id, j.attempt, j.max_attempts, j.lease_losses, j.cancel_requested, w.name \
             FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker \
             WHERE j.state = 'running' AND j.lease_expires_at < now() ORDER BY j.id FOR UPDATE OF j SKIP LOCKED",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut reaped = Vec::with_capacity(expired.len());
        for (job_id, attempt, max_attempts, lease_losses, cancel_requested, worker) in expired {
            let lease = policy::ExpiredLease {
                attempt: attempt as u32,
                max_attempts: max_attempts as u32,
                lease_losses: lease_losses as u32,
                cancel_requested,
                worker,
            };
            let (new_state, message) = policy::reap(&lease);
            sqlx::query(
                "UPDATE jobs SET state = $2, message = $3, finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() END, \
                 lease_losses = lease_losses + 1, lease_worker = NULL, lease_expires_at = NULL WHERE id = $1",
            )
            .bind(job_id)
            .bind(new_state.as_str())
            .bind(&message)
            .execute(&mut *tx)
            .await?;
            match new_state {
                JobState::Queued => notify(&mut tx, Change::Queue).await?,
                JobState::Failed => cancel_descendants(&mut tx, job_id, "failed: its worker stopped heartbeating").await?,
                _ => cancel_descendants(&mut tx, job_id, "was cancelled").await?,
            }
            notify(&mut tx, Change::Job(job_id)).await?;
            reaped.push(Reaped { job_id, attempt: attempt as u32, new_state });
        }
        // Registrations silent for a week that hold no job are gone for good.
        sqlx::query(
            "DELETE FROM workers w WHERE w.last_heartbeat < now() - interval '7 days' \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lease_worker = w.id)",
        )
        .execute(&mut *tx)
        .await?;
        // Uploads whose attempt is over, or that have been going for hours, will never be committed.
        sqlx::query(
            "DELETE FROM checkpoints c WHERE NOT c.complete AND (c.created_at < now() - interval '6 hours' \
             OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = c.job_id AND j.state = 'running' AND j.attempt = c.attempt))",
        )
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(reaped)
    }

    async fn worker_may_read(&self, worker: Uuid, job_id: i64) -> StoreResult<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_worker = $1 \
             AND (id = $2 OR (spec->>'init_from')::bigint = $2) LIMIT 1",
        )
        .bind(worker)
        .bind(job_id)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.is_some())
    }
}

async fn insert_worker(
    tx: &mut Transaction<'_, Postgres>,
    w: &NewWorker,
    session_sha256: &str,
    credential_id: Option<i64>,
) -> StoreResult<Uuid> {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO workers (id, name, hostname, device_kind, gpus, datasets, labels, session_sha256, credential_id) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
    )
    .bind(id)
    .bind(&w.name)
    .bind(&w.hostname)
    .bind(&w.device_kind)
    .bind(&w.gpus)
    .bind(&w.datasets)
    .bind(&w.labels)
    .bind(session_sha256)
    .bind(credential_id)
    .execute(&mut **tx)
    .await?;
    Ok(id)
}

/// Announces a lost attempt's verdict: a re-queued job is claimable, a failed
/// or cancelled one takes the jobs waiting on it along (a failure's message
/// starts with "failed: ").
async fn ended(tx: &mut Transaction<'_, Postgres>, job_id: i64, state: JobState, message: &str) -> StoreResult<()> {
    match state {
        JobState::Queued => notify(tx, Change::Queue).await?,
        JobState::Failed => cancel_descendants(tx, job_id, message).await?,
        _ => cancel_descendants(tx, job_id, "was cancelled").await?,
    }
    notify(tx, Change::Job(job_id)).await
}
