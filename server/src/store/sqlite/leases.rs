//! Workers and leases: registration and sessions, the claim (priority, then
//! fair share, then age; one writer, so no row locks), heartbeats, how an
//! attempt finishes, and the reaper of expired leases.

use super::rows::*;
use super::*;
use crate::store::policy;

/// A registration silent this long that holds no job is deleted.
const FORGET_WORKERS_US: i64 = 7 * 24 * 3600 * 1_000_000;
/// An upload going on this long will never be committed.
const ABANDON_UPLOADS_US: i64 = 6 * 3600 * 1_000_000;

#[async_trait]
impl LeaseStore for SqliteStore {
    async fn register_worker(&self, w: NewWorker, session_sha256: &str, credential_id: Option<i64>) -> StoreResult<Uuid> {
        let mut tx = self.begin().await?;
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
        let mut tx = self.begin().await?;
        let stored: Option<(Option<i64>, String)> =
            sqlx::query_as("SELECT credential_id, name FROM workers WHERE id = ?1").bind(previous).fetch_optional(tx.conn()).await?;
        let old_name = stored.as_ref().map(|(_, name)| name.clone());
        if !policy::may_take_over(stored.map(|(credential, _)| credential), credential_id) {
            let id = insert_worker(&mut tx, &w, session_sha256, credential_id).await?;
            tx.commit().await?;
            return Ok(Rejoined { id, reused: false, requeued: Vec::new() });
        }
        let now = now_us();
        write_worker(&mut tx, previous, &w, session_sha256, credential_id, now).await?;
        // What the worker ran before it restarted is lost: back to the queue now, not at lease expiry.
        let held: Vec<(i64, i64, i64, i64, bool)> = sqlx::query_as(
            "SELECT id, attempt, max_attempts, lease_losses, cancel_requested FROM jobs \
             WHERE state = 'running' AND lease_worker = ?1 ORDER BY id",
        )
        .bind(previous)
        .fetch_all(tx.conn())
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
            lose_attempt(&mut tx, job_id, new_state, &message, now).await?;
            requeued.push(Reaped { job_id, attempt: attempt as u32, new_state });
        }
        tx.commit().await?;
        Ok(Rejoined { id: previous, reused: true, requeued })
    }

    async fn worker_for_session(&self, session_sha256: &str) -> StoreResult<Option<WorkerSession>> {
        let row: Option<(Uuid, Option<i64>)> = sqlx::query_as("SELECT id, credential_id FROM workers WHERE session_sha256 = ?1")
            .bind(session_sha256)
            .fetch_optional(&self.reader)
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
            gpus: Json<Vec<String>>,
            datasets: Json<Vec<String>>,
            labels: Json<serde_json::Value>,
            devices: i64,
            last_heartbeat: i64,
            running_jobs: Json<Vec<i64>>,
        }
        let recs: Vec<Rec> = sqlx::query_as(
            "SELECT w.id, w.name, w.hostname, w.device_kind, w.gpus, w.datasets, w.labels, w.devices, w.last_heartbeat, \
             (SELECT json_group_array(id) FROM (SELECT j.id FROM jobs j WHERE j.lease_worker = w.id AND j.state = 'running' ORDER BY j.id)) \
             AS running_jobs FROM workers w ORDER BY w.last_heartbeat DESC LIMIT 1000",
        )
        .fetch_all(&self.reader)
        .await?;
        Ok(recs
            .into_iter()
            .map(|r| Worker {
                id: r.id,
                new: NewWorker {
                    name: r.name,
                    hostname: r.hostname,
                    device_kind: r.device_kind,
                    gpus: r.gpus.0,
                    datasets: r.datasets.0,
                    labels: r.labels.0,
                    devices: r.devices.max(1) as u32,
                },
                last_heartbeat: time(r.last_heartbeat),
                running_jobs: r.running_jobs.0,
            })
            .collect())
    }

    async fn claim(&self, worker: Uuid, lease: Duration, policy: ClaimPolicy) -> StoreResult<Option<Claimed>> {
        let mut tx = self.begin().await?;
        touch_worker(tx.conn(), worker).await?;
        // Priority first; among equals the owner with the fewest running jobs
        // (fair share), then the oldest job. The one writer reads and takes it.
        // Within one owner the fair-share term is constant, so the winner is
        // some owner's own first claimable job (by priority, then age): each
        // owner's is found by walking `jobs_queued_by_owner` until a job fits,
        // and only those few are ordered. The worker's device and data sets
        // are bound once as constants.
        let (device_kind, datasets, labels, devices): (String, String, String, i64) =
            sqlx::query_as("SELECT device_kind, datasets, labels, devices FROM workers WHERE id = ?1")
                .bind(worker)
                .fetch_one(tx.conn())
                .await?;
        let next: Option<(i64,)> = sqlx::query_as(
            "WITH running AS MATERIALIZED (SELECT owner, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY owner), \
             owners AS (SELECT DISTINCT owner FROM jobs WHERE state = 'queued'), \
             firsts AS (SELECT o.owner, \
                 (SELECT j.id FROM jobs j WHERE j.state = 'queued' AND j.owner = o.owner \
                    AND (j.device = 'any' OR j.device = ?1) \
                    AND j.dataset IN (SELECT value FROM json_each(?2)) \
                    AND j.gpus <= ?5 \
                    AND NOT EXISTS (SELECT 1 FROM json_each(j.require_labels) r \
                                    WHERE NOT EXISTS (SELECT 1 FROM json_each(?4) l WHERE l.key = r.key AND l.value = r.value)) \
                    AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id \
                                    WHERE d.child_id = j.id AND p.state <> 'succeeded') \
                  ORDER BY j.priority DESC, j.id LIMIT 1) AS id \
               FROM owners o) \
             SELECT f.id FROM firsts f JOIN jobs j ON j.id = f.id LEFT JOIN running r ON r.owner = f.owner \
             WHERE (?3 IS NULL OR COALESCE(r.n, 0) < ?3) \
             ORDER BY j.priority DESC, COALESCE(r.n, 0), j.id \
             LIMIT 1",
        )
        .bind(&device_kind)
        .bind(&datasets)
        .bind(policy.max_running_per_user.map(i64::from))
        .bind(&labels)
        .bind(devices)
        .fetch_optional(tx.conn())
        .await?;
        let Some((job_id,)) = next else {
            tx.commit().await?;
            return Ok(None);
        };
        let now = now_us();
        sqlx::query(
            "UPDATE jobs SET state = 'running', attempt = attempt + 1, lease_worker = ?2, \
               lease_expires_at = ?3, started_at = COALESCE(started_at, ?4) WHERE id = ?1",
        )
        .bind(job_id)
        .bind(worker)
        .bind(now.saturating_add(lease_us(lease)))
        .bind(now)
        .execute(tx.conn())
        .await?;
        let job = job_in(tx.conn(), job_id).await?;
        let latest: Option<CheckpointRecord> = sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = ?1 ORDER BY c.id DESC LIMIT 1"))
            .bind(job_id)
            .fetch_optional(tx.conn())
            .await?;
        let resume_from: Option<Checkpoint> = latest.map(Into::into);
        // Work that earlier attempts did past the checkpoint we resume from is lost and
        // will be redone: drop its metrics so the series has one row per step.
        let resume_step = resume_from.as_ref().map_or(0, |c| c.step);
        sqlx::query("DELETE FROM metrics WHERE job_id = ?1 AND attempt < ?2 AND step > ?3")
            .bind(job_id)
            .bind(job.attempt as i64)
            .bind(resume_step)
            .execute(tx.conn())
            .await?;
        // A job that starts from another's weights gets that job's best checkpoint.
        let init_from: Option<CheckpointRecord> = match job.spec.init_from {
            0 => None,
            parent => {
                sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = ?1 ORDER BY c.top1 IS NULL, c.top1 DESC, c.id LIMIT 1"))
                    .bind(parent)
                    .fetch_optional(tx.conn())
                    .await?
            }
        };
        tx.notify(Change::Job(job_id));
        tx.commit().await?;
        Ok(Some(Claimed { job, resume_from, init_from: init_from.map(Into::into) }))
    }

    async fn worker_class(&self, worker: Uuid) -> StoreResult<WorkerClass> {
        let row: Option<(String, Json<Vec<String>>, Json<serde_json::Value>, i64)> =
            sqlx::query_as("SELECT device_kind, datasets, labels, devices FROM workers WHERE id = ?1")
                .bind(worker)
                .fetch_optional(&self.reader)
                .await?;
        let (device_kind, datasets, labels, devices) = row.ok_or_else(|| StoreError::NotFound(format!("worker {worker}")))?;
        Ok(WorkerClass::new(device_kind, datasets.0, &labels.0, devices.max(1) as u32))
    }

    async fn heartbeat(&self, worker: Uuid, running: &[AttemptRef], lease: Duration) -> StoreResult<HeartbeatReply> {
        let mut tx = self.begin().await?;
        touch_worker(tx.conn(), worker).await?;
        let expires = now_us().saturating_add(lease_us(lease));
        let mut reply = HeartbeatReply::default();
        for r in running {
            let renewed: Option<(bool,)> = sqlx::query_as(
                "UPDATE jobs SET lease_expires_at = ?4 \
                 WHERE id = ?2 AND attempt = ?3 AND state = 'running' AND lease_worker = ?1 RETURNING cancel_requested",
            )
            .bind(worker)
            .bind(r.job_id)
            .bind(r.attempt as i64)
            .bind(expires)
            .fetch_optional(tx.conn())
            .await?;
            match renewed {
                Some((true,)) => reply.cancel.push(r.job_id),
                Some(_) => {}
                None => reply.lost.push(r.job_id),
            }
        }
        tx.commit().await?;
        Ok(reply)
    }

    async fn finish(&self, at: LeaseRef, outcome: Outcome, message: &str, result: Option<&JobResult>) -> StoreResult<()> {
        let mut tx = self.begin().await?;
        fence(tx.conn(), at).await?;
        let (max_attempts, lease_losses, cancel_requested, worker): (i64, i64, bool, Option<String>) = sqlx::query_as(
            "SELECT j.max_attempts, j.lease_losses, j.cancel_requested, w.name \
             FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker WHERE j.id = ?1",
        )
        .bind(at.job_id)
        .fetch_one(tx.conn())
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
            "UPDATE jobs SET state = ?2, message = ?3, result = COALESCE(?4, result), lease_worker = NULL, \
             lease_expires_at = NULL, finished_at = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?5 END, \
             lease_losses = lease_losses + ?6 WHERE id = ?1",
        )
        .bind(at.job_id)
        .bind(state.as_str())
        .bind(&message)
        .bind(result.map(Json))
        .bind(now_us())
        .bind(i64::from(lost))
        .execute(tx.conn())
        .await?;
        if lost {
            ended(&mut tx, at.job_id, state, &message).await?;
        } else {
            match state {
                // Released work, and children that waited only for this parent, are claimable now.
                JobState::Queued => tx.notify(Change::Queue),
                JobState::Succeeded => {
                    let (ready,): (i64,) = sqlx::query_as(
                        "SELECT count(*) FROM job_dependencies d JOIN jobs c ON c.id = d.child_id \
                         WHERE d.parent_id = ?1 AND c.state = 'queued' AND NOT EXISTS ( \
                           SELECT 1 FROM job_dependencies e JOIN jobs p ON p.id = e.parent_id \
                           WHERE e.child_id = c.id AND p.state <> 'succeeded')",
                    )
                    .bind(at.job_id)
                    .fetch_one(tx.conn())
                    .await?;
                    if ready > 0 {
                        tx.notify(Change::Queue);
                    }
                }
                JobState::Failed => cancel_descendants(&mut tx, at.job_id, &format!("failed: {message}")).await?,
                _ => cancel_descendants(&mut tx, at.job_id, "was cancelled").await?,
            }
            tx.notify(Change::Job(at.job_id));
        }
        tx.commit().await?;
        Ok(())
    }

    async fn reap_expired_leases(&self) -> StoreResult<Vec<Reaped>> {
        let mut tx = self.begin().await?;
        let now = now_us();
        let expired: Vec<(i64, i64, i64, i64, bool, Option<String>)> = sqlx::query_as(
            "SELECT j.id, j.attempt, j.max_attempts, j.lease_losses, j.cancel_requested, w.name \
             FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker \
             WHERE j.state = 'running' AND j.lease_expires_at < ?1 ORDER BY j.id",
        )
        .bind(now)
        .fetch_all(tx.conn())
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
            lose_attempt(&mut tx, job_id, new_state, &message, now).await?;
            reaped.push(Reaped { job_id, attempt: attempt as u32, new_state });
        }
        // Registrations silent for a week that hold no job are gone for good.
        sqlx::query(
            "DELETE FROM workers WHERE last_heartbeat < ?1 \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.lease_worker = workers.id)",
        )
        .bind(now - FORGET_WORKERS_US)
        .execute(tx.conn())
        .await?;
        // Uploads whose attempt is over, or that have been going for hours, will never be committed.
        sqlx::query(
            "DELETE FROM checkpoints WHERE NOT complete AND (created_at < ?1 \
             OR NOT EXISTS (SELECT 1 FROM jobs j WHERE j.id = checkpoints.job_id AND j.state = 'running' AND j.attempt = checkpoints.attempt))",
        )
        .bind(now - ABANDON_UPLOADS_US)
        .execute(tx.conn())
        .await?;
        tx.commit().await?;
        Ok(reaped)
    }

    async fn worker_may_read(&self, worker: Uuid, job_id: i64) -> StoreResult<bool> {
        let row: Option<(i64,)> = sqlx::query_as(
            "SELECT id FROM jobs WHERE state = 'running' AND lease_worker = ?1 \
             AND (id = ?2 OR json_extract(spec, '$.init_from') = ?2) LIMIT 1",
        )
        .bind(worker)
        .bind(job_id)
        .fetch_optional(&self.reader)
        .await?;
        Ok(row.is_some())
    }
}

async fn insert_worker(tx: &mut Tx, w: &NewWorker, session_sha256: &str, credential_id: Option<i64>) -> StoreResult<Uuid> {
    let id = Uuid::new_v4();
    write_worker(tx, id, w, session_sha256, credential_id, now_us()).await?;
    Ok(id)
}

/// Writes worker `id`'s registration at `now`: a new row, or the row of the same
/// worker registering again (what it offers, its new session, registered and heard from now).
async fn write_worker(tx: &mut Tx, id: Uuid, w: &NewWorker, session_sha256: &str, credential_id: Option<i64>, now: i64) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO workers (id, name, hostname, device_kind, gpus, datasets, labels, session_sha256, credential_id, \
         registered_at, last_heartbeat, devices) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?10, ?11) \
         ON CONFLICT (id) DO UPDATE SET name = ?2, hostname = ?3, device_kind = ?4, gpus = ?5, datasets = ?6, labels = ?7, \
           session_sha256 = ?8, credential_id = ?9, registered_at = ?10, last_heartbeat = ?10, devices = ?11",
    )
    .bind(id)
    .bind(&w.name)
    .bind(&w.hostname)
    .bind(&w.device_kind)
    .bind(Json(&w.gpus))
    .bind(Json(&w.datasets))
    .bind(Json(&w.labels))
    .bind(session_sha256)
    .bind(credential_id)
    .bind(now)
    .bind(w.devices as i64)
    .execute(tx.conn())
    .await?;
    Ok(())
}

/// Writes a lost attempt's verdict (`policy::lost_attempt`) at `now`: the
/// job's new state and message, one more lost attempt, no lease; then
/// announces it.
async fn lose_attempt(tx: &mut Tx, job_id: i64, state: JobState, message: &str, now: i64) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET state = ?2, message = ?3, finished_at = CASE WHEN ?2 = 'queued' THEN NULL ELSE ?4 END, \
         lease_losses = lease_losses + 1, lease_worker = NULL, lease_expires_at = NULL WHERE id = ?1",
    )
    .bind(job_id)
    .bind(state.as_str())
    .bind(message)
    .bind(now)
    .execute(tx.conn())
    .await?;
    ended(tx, job_id, state, message).await
}

/// Announces a lost attempt's verdict: a re-queued job is claimable, a failed
/// or cancelled one takes the jobs waiting on it along (a failure's message
/// starts with "failed: ").
async fn ended(tx: &mut Tx, job_id: i64, state: JobState, message: &str) -> StoreResult<()> {
    match state {
        JobState::Queued => tx.notify(Change::Queue),
        JobState::Failed => cancel_descendants(tx, job_id, message).await?,
        _ => cancel_descendants(tx, job_id, "was cancelled").await?,
    }
    tx.notify(Change::Job(job_id));
    Ok(())
}
