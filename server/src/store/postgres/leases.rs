//! Workers and leases: registration and sessions, the claim (priority, then
//! fair share, then age; `SKIP LOCKED`), heartbeats, how an attempt finishes,
//! and the reaper of expired leases.

use super::rows::*;
use super::*;
use crate::store::policy;

/// One claim for several workers of one class, in one statement. Claim order
/// is priority, then fair share, then age; fair share ranks an owner's k-th
/// job by its running jobs + k, so a batch shares out as claims one after
/// another would. The queue is never sorted whole:
///
/// - `owners`: each owner with a claimable job, by a skip scan of
///   `jobs_claimable_by_owner` (its rows exclude jobs whose parents have not
///   all succeeded: `parents_pending`);
/// - `heads`: each owner's first `$4` jobs this class can run, read in index
///   order (device, data set and labels are a filter on that walk) and
///   locked, skipping rows another claim holds (a dispatcher runs two claims
///   at once; other coordinators run theirs);
/// - `chosen`: the best `$4` of those, within the per-user cap `$5`;
/// - the update hands the i-th to the i-th worker of `$6` and returns the
///   rows; it renews those workers' liveness and announces every job it took
///   in one notification.
///
/// Statistics do not matter to this plan: every step is an index walk bounded
/// by a LIMIT, so a queue filled by a burst a moment ago claims as fast as an
/// analysed one.
const CLAIM_BATCH: &str = concat!(
    "WITH RECURSIVE owners(owner) AS ( \
        (SELECT owner FROM jobs WHERE state = 'queued' AND parents_pending = 0 ORDER BY owner LIMIT 1) \
      UNION ALL \
        SELECT (SELECT j.owner FROM jobs j WHERE j.state = 'queued' AND j.parents_pending = 0 AND j.owner > o.owner \
                ORDER BY j.owner LIMIT 1) \
        FROM owners o WHERE o.owner IS NOT NULL), \
    running AS (SELECT owner, count(*) AS n FROM jobs WHERE state = 'running' GROUP BY owner), \
    heads AS ( \
        SELECT h.id, h.priority, COALESCE(r.n, 0) \
                 + row_number() OVER (PARTITION BY h.owner ORDER BY h.priority DESC, h.id) AS share \
        FROM owners o \
        CROSS JOIN LATERAL ( \
            SELECT j.id, j.owner, j.priority FROM jobs j \
            WHERE j.state = 'queued' AND j.parents_pending = 0 AND j.owner = o.owner \
              AND (j.device = 'any' OR j.device = $1) AND j.dataset = ANY($2) AND $3::jsonb @> j.require_labels AND j.gpus <= $8 \
            ORDER BY j.priority DESC, j.id LIMIT $4 FOR UPDATE OF j SKIP LOCKED) h \
        LEFT JOIN running r ON r.owner = h.owner \
        WHERE o.owner IS NOT NULL), \
    chosen AS ( \
        SELECT id, priority, share FROM heads WHERE $5::bigint IS NULL OR share <= $5 \
        ORDER BY priority DESC, share, id LIMIT $4), \
    assigned AS ( \
        SELECT l.id, w.worker FROM ( \
            SELECT c.id, row_number() OVER (ORDER BY c.priority DESC, c.share, c.id) AS slot FROM chosen c) l \
        JOIN unnest($6::uuid[]) WITH ORDINALITY AS w(worker, slot) ON w.slot = l.slot), \
    claimed AS ( \
        UPDATE jobs j SET state = 'running', attempt = j.attempt + 1, lease_worker = a.worker, \
            lease_expires_at = now() + make_interval(secs => $7), started_at = COALESCE(j.started_at, now()) \
        FROM assigned a WHERE j.id = a.id \
        RETURNING a.worker AS claimed_by, (SELECT name FROM workers WHERE id = a.worker) AS worker, ",
    job_columns!(),
    "), \
    touched AS (UPDATE workers SET last_heartbeat = now() WHERE id = ANY($6) RETURNING id), \
    announced AS (SELECT pg_notify('camp', 'jobs:' || x.ids) FROM (SELECT string_agg(id::text, ',') AS ids FROM claimed) x \
        WHERE x.ids IS NOT NULL) \
    SELECT c.* FROM claimed c LEFT JOIN announced ON true"
);

/// Counts succeeded parents down in each of their waiting children; true if
/// one of them now waits for nothing. A statement of its own, after the
/// parents' update: it sees every child committed before it (a child being
/// submitted holds its parents' rows until it commits; `insert_job`).
async fn parents_succeeded(tx: &mut Transaction<'_, Postgres>, parents: &[i64]) -> StoreResult<bool> {
    let (ready,): (i64,) = sqlx::query_as("SELECT camp_count_down_children($1)").bind(parents).fetch_one(&mut **tx).await?;
    Ok(ready > 0)
}

/// A claimed job's row and the worker it went to.
#[derive(FromRow)]
struct ClaimedRecord {
    claimed_by: Uuid,
    #[sqlx(flatten)]
    job: JobRecord,
}

/// Completes a claimed job with what its worker needs: the latest checkpoint
/// to resume from and, for a job that starts from another's weights, that
/// job's best one. Work that earlier attempts did past the resumed checkpoint
/// is lost and will be redone: its metrics go, so a series has one row per
/// step. A first attempt of a job started from scratch needs none of it.
async fn claimed_with_checkpoints(tx: &mut Transaction<'_, Postgres>, job: Job) -> StoreResult<Claimed> {
    let resume_from: Option<Checkpoint> = if job.attempt > 1 {
        let latest: Option<CheckpointRecord> = sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = $1 ORDER BY c.id DESC LIMIT 1"))
            .bind(job.id)
            .fetch_optional(&mut **tx)
            .await?;
        let resume_from: Option<Checkpoint> = latest.map(Into::into);
        let resume_step = resume_from.as_ref().map_or(0, |c| c.step);
        sqlx::query("DELETE FROM metrics WHERE job_id = $1 AND attempt < $2 AND step > $3")
            .bind(job.id)
            .bind(job.attempt as i32)
            .bind(resume_step)
            .execute(&mut **tx)
            .await?;
        resume_from
    } else {
        None
    };
    let init_from: Option<CheckpointRecord> = match job.spec.init_from {
        0 => None,
        parent => {
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = $1 ORDER BY c.top1 DESC NULLS LAST, c.id LIMIT 1"))
                .bind(parent)
                .fetch_optional(&mut **tx)
                .await?
        }
    };
    Ok(Claimed { job, resume_from, init_from: init_from.map(Into::into) })
}

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
        write_worker(&mut tx, previous, &w, session_sha256, credential_id).await?;
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
            lose_attempt(&mut tx, job_id, new_state, &message).await?;
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
            devices: i32,
            last_heartbeat: DateTime<Utc>,
            running_jobs: Vec<i64>,
        }
        let recs: Vec<Rec> = sqlx::query_as(
            "SELECT w.id, w.name, w.hostname, w.device_kind, w.gpus, w.datasets, w.labels, w.devices, w.last_heartbeat, \
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
                    devices: r.devices.max(1) as u32,
                },
                last_heartbeat: r.last_heartbeat,
                running_jobs: r.running_jobs,
            })
            .collect())
    }

    async fn claim(&self, worker: Uuid, lease: Duration, policy: ClaimPolicy) -> StoreResult<Option<Claimed>> {
        let class = self.worker_class(worker).await?;
        Ok(self.claim_batch(&class, &[worker], lease, policy).await?.pop().map(|(_, c)| c))
    }

    async fn worker_class(&self, worker: Uuid) -> StoreResult<WorkerClass> {
        let row: Option<(String, Vec<String>, serde_json::Value, i32)> =
            sqlx::query_as("SELECT device_kind, datasets, labels, devices FROM workers WHERE id = $1")
                .bind(worker)
                .fetch_optional(&self.pool)
                .await?;
        let (device_kind, datasets, labels, devices) = row.ok_or_else(|| StoreError::NotFound(format!("worker {worker}")))?;
        Ok(WorkerClass::new(device_kind, datasets, &labels, devices.max(1) as u32))
    }

    async fn claim_batch(
        &self,
        class: &WorkerClass,
        workers: &[Uuid],
        lease: Duration,
        policy: ClaimPolicy,
    ) -> StoreResult<Vec<(Uuid, Claimed)>> {
        if workers.is_empty() {
            return Ok(Vec::new());
        }
        let cap = policy.max_running_per_user.map(i64::from);
        let claim = sqlx::query_as::<_, ClaimedRecord>(CLAIM_BATCH)
            .bind(&class.device_kind)
            .bind(&class.datasets)
            .bind(sqlx::types::Json(&class.labels))
            .bind(workers.len() as i64)
            .bind(cap)
            .bind(workers)
            .bind(lease_secs(lease))
            .bind(class.devices as i32);
        let claimed: Vec<ClaimedRecord> = if cap.is_some() {
            // The per-user cap counts running jobs: claims under a cap take
            // turns across coordinators, so two cannot both start an owner's
            // last allowed job.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('camp.claims', 0))").execute(&mut *tx).await?;
            let claimed = claim.fetch_all(&mut *tx).await?;
            tx.commit().await?;
            claimed
        } else {
            // One statement, one round trip: it is its own transaction.
            claim.fetch_all(&self.pool).await?
        };
        let mut out = Vec::with_capacity(claimed.len());
        let mut follow_up: Option<Transaction<'_, Postgres>> = None;
        for rec in claimed {
            let job: Job = rec.job.try_into()?;
            let claimed = if job.attempt > 1 || job.spec.init_from != 0 {
                let tx = match &mut follow_up {
                    Some(tx) => tx,
                    None => follow_up.insert(self.pool.begin().await?),
                };
                claimed_with_checkpoints(tx, job).await?
            } else {
                Claimed { job, resume_from: None, init_from: None }
            };
            out.push((rec.claimed_by, claimed));
        }
        if let Some(tx) = follow_up {
            tx.commit().await?;
        }
        Ok(out)
    }

    async fn heartbeat(&self, worker: Uuid, running: &[AttemptRef], lease: Duration) -> StoreResult<HeartbeatReply> {
        self.heartbeat_batch(&[(worker, running.to_vec())], lease).await?.pop().expect("one reply per heartbeat")
    }

    /// Two statements for any number of heartbeats: one renews every lease
    /// still held (fenced by worker and attempt), one records that the workers
    /// were heard from.
    async fn heartbeat_batch(&self, beats: &[(Uuid, Vec<AttemptRef>)], lease: Duration) -> StoreResult<Vec<StoreResult<HeartbeatReply>>> {
        let mut workers = Vec::new();
        let mut ids = Vec::new();
        let mut attempts = Vec::new();
        for (worker, running) in beats {
            for r in running {
                workers.push(*worker);
                ids.push(r.job_id);
                attempts.push(r.attempt as i32);
            }
        }
        let renewed: Vec<(i64, Uuid, bool)> = if ids.is_empty() {
            Vec::new()
        } else {
            sqlx::query_as(
                "UPDATE jobs j SET lease_expires_at = now() + make_interval(secs => $4) \
                 FROM unnest($1::uuid[], $2::bigint[], $3::int[]) AS r(worker, id, attempt) \
                 WHERE j.id = r.id AND j.attempt = r.attempt AND j.state = 'running' AND j.lease_worker = r.worker \
                 RETURNING j.id, r.worker, j.cancel_requested",
            )
            .bind(&workers)
            .bind(&ids)
            .bind(&attempts)
            .bind(lease_secs(lease))
            .fetch_all(&self.pool)
            .await?
        };
        let all: Vec<Uuid> = beats.iter().map(|(w, _)| *w).collect();
        let known: Vec<(Uuid,)> = sqlx::query_as("UPDATE workers SET last_heartbeat = now() WHERE id = ANY($1) RETURNING id")
            .bind(&all)
            .fetch_all(&self.pool)
            .await?;
        let renewed: HashMap<(i64, Uuid), bool> = renewed.into_iter().map(|(id, w, cancel)| ((id, w), cancel)).collect();
        let known: std::collections::HashSet<Uuid> = known.into_iter().map(|(w,)| w).collect();
        Ok(beats
            .iter()
            .map(|(worker, running)| {
                if !known.contains(worker) {
                    return Err(StoreError::NotFound(format!("worker {worker}")));
                }
                let mut reply = HeartbeatReply::default();
                for r in running {
                    match renewed.get(&(r.job_id, *worker)) {
                        Some(true) => reply.cancel.push(r.job_id),
                        Some(false) => {}
                        None => reply.lost.push(r.job_id),
                    }
                }
                Ok(reply)
            })
            .collect())
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
                // Released work, and children that waited only for this parent, are claimable now.
                JobState::Queued => notify(&mut tx, Change::Queue).await?,
                JobState::Succeeded => {
                    if parents_succeeded(&mut tx, &[at.job_id]).await? {
                        notify(&mut tx, Change::Queue).await?;
                    }
                }
                JobState::Failed => cancel_descendants(&mut tx, at.job_id, &format!("failed: {message}")).await?,
                _ => cancel_descendants(&mut tx, at.job_id, "was cancelled").await?,
            }
            notify(&mut tx, Change::Job(at.job_id)).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The common endings (succeeded, released) of a whole batch in one
    /// round trip (`camp_finish_batch`: one fenced update for all, one
    /// count-down of their children); the rest (failures, cancels, retries: they cascade or need
    /// the job's facts) one by one through `finish`.
    async fn finish_batch(&self, finishes: &[Finish]) -> StoreResult<Vec<StoreResult<()>>> {
        let mut answers: Vec<Option<StoreResult<()>>> = vec![None; finishes.len()];
        let plain: Vec<usize> = (0..finishes.len()).filter(|&i| policy::plain_ending(finishes[i].outcome).is_some()).collect();
        if !plain.is_empty() {
            let field = |f: fn(&Finish) -> i64| plain.iter().map(|&i| f(&finishes[i])).collect::<Vec<i64>>();
            let ids = field(|f| f.at.job_id);
            let attempts: Vec<i32> = plain.iter().map(|&i| finishes[i].at.attempt as i32).collect();
            let workers: Vec<Uuid> = plain.iter().map(|&i| finishes[i].at.worker).collect();
            let states: Vec<&str> = plain.iter().map(|&i| policy::plain_ending(finishes[i].outcome).expect("filtered").as_str()).collect();
            let messages: Vec<&str> = plain.iter().map(|&i| finishes[i].message.as_str()).collect();
            let results: Vec<Option<String>> = plain
                .iter()
                .map(|&i| finishes[i].result.as_ref().map(|r| serde_json::to_string(r).expect("a JobResult always serialises")))
                .collect();
            // One round trip, its own transaction (migrations/postgres/0005_lab_scale.sql).
            let done: Vec<(i64, String)> = sqlx::query_as("SELECT id, state FROM camp_finish_batch($1, $2, $3, $4, $5, $6)")
                .bind(&ids)
                .bind(&attempts)
                .bind(&workers)
                .bind(&states)
                .bind(&messages)
                .bind(&results)
                .fetch_all(&self.pool)
                .await?;
            let mut written: std::collections::HashSet<i64> = done.into_iter().map(|(id, _)| id).collect();
            for &i in &plain {
                let at = finishes[i].at;
                answers[i] = Some(if written.remove(&at.job_id) {
                    Ok(())
                } else {
                    // Not this attempt's lease (any more): say why, as `finish` would.
                    let mut tx = self.pool.begin().await?;
                    let why =
                        fence(&mut tx, at, false).await.and(Err(StoreError::Stale(format!("job {} was finished already", at.job_id))));
                    tx.rollback().await?;
                    why
                });
            }
        }
        for (i, f) in finishes.iter().enumerate() {
            if answers[i].is_none() {
                answers[i] = Some(self.finish(f.at, f.outcome, &f.message, f.result.as_ref()).await);
            }
        }
        Ok(answers.into_iter().map(|a| a.expect("every finish answered")).collect())
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
            lose_attempt(&mut tx, job_id, new_state, &message).await?;
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
    write_worker(tx, id, w, session_sha256, credential_id).await?;
    Ok(id)
}

/// Writes worker `id`'s registration: a new row, or the row of the same worker
/// registering again (what it offers, its new session, registered and heard from now).
async fn write_worker(
    tx: &mut Transaction<'_, Postgres>,
    id: Uuid,
    w: &NewWorker,
    session_sha256: &str,
    credential_id: Option<i64>,
) -> StoreResult<()> {
    sqlx::query(
        "INSERT INTO workers (id, name, hostname, device_kind, gpus, datasets, labels, session_sha256, credential_id, devices) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) \
         ON CONFLICT (id) DO UPDATE SET name = $2, hostname = $3, device_kind = $4, gpus = $5, datasets = $6, labels = $7, \
           session_sha256 = $8, credential_id = $9, devices = $10, registered_at = now(), last_heartbeat = now()",
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
    .bind(w.devices as i32)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// Writes a lost attempt's verdict (`policy::lost_attempt`): the job's new
/// state and message, one more lost attempt, no lease; then announces it.
async fn lose_attempt(tx: &mut Transaction<'_, Postgres>, job_id: i64, state: JobState, message: &str) -> StoreResult<()> {
    sqlx::query(
        "UPDATE jobs SET state = $2, message = $3, finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() END, \
         lease_losses = lease_losses + 1, lease_worker = NULL, lease_expires_at = NULL WHERE id = $1",
    )
    .bind(job_id)
    .bind(state.as_str())
    .bind(message)
    .execute(&mut **tx)
    .await?;
    ended(tx, job_id, state, message).await
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
