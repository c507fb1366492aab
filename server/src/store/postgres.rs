//! The PostgreSQL store. Claims use `FOR UPDATE SKIP LOCKED` so that many
//! coordinators and workers claim without blocking each other; changes are
//! announced with NOTIFY on channel `camp` so that every coordinator can wake
//! its long-polls and watchers.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use camp_proto::JobSpec;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use sqlx::{FromRow, Postgres, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::*;

const CHANNEL: &str = "camp";
const QUEUE_PAYLOAD: &str = "queue";

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

    pub async fn from_pool(pool: PgPool) -> StoreResult<Self> {
        sqlx::migrate!("../migrations").run(&pool).await?;
        let (changes, _) = broadcast::channel(1024);
        tokio::spawn(listen(pool.clone(), changes.clone()));
        Ok(PgStore { pool, changes })
    }
}

/// Forwards NOTIFYs to local subscribers; reconnects on failure and then wakes
/// everyone, since notifications may have been missed meanwhile.
async fn listen(pool: PgPool, changes: broadcast::Sender<Change>) {
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
        let _ = changes.send(Change::Queue);
        loop {
            match listener.recv().await {
                Ok(n) => {
                    let change = match n.payload() {
                        QUEUE_PAYLOAD => Change::Queue,
                        id => match id.parse() {
                            Ok(id) => Change::Job(id),
                            Err(_) => continue,
                        },
                    };
                    let _ = changes.send(change);
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

async fn notify(tx: &mut Transaction<'_, Postgres>, change: Change) -> StoreResult<()> {
    let payload = match change {
        Change::Queue => QUEUE_PAYLOAD.to_string(),
        Change::Job(id) => id.to_string(),
    };
    sqlx::query("SELECT pg_notify($1, $2)").bind(CHANNEL).bind(payload).execute(&mut **tx).await?;
    Ok(())
}

const JOB_SELECT: &str = "SELECT j.id, j.name, j.owner, j.spec, j.state, j.priority, j.attempt, j.max_attempts, \
     j.lease_losses, j.cancel_requested, w.name AS worker, j.message, j.result, j.epoch, j.created_at, \
     j.started_at, j.finished_at, j.experiment_id, j.node, \
     ARRAY(SELECT d.parent_id FROM job_dependencies d WHERE d.child_id = j.id ORDER BY d.parent_id) AS parents \
     FROM jobs j LEFT JOIN workers w ON w.id = j.lease_worker";

#[derive(FromRow)]
struct JobRecord {
    id: i64,
    name: String,
    owner: String,
    spec: serde_json::Value,
    state: String,
    priority: i32,
    attempt: i32,
    max_attempts: i32,
    lease_losses: i32,
    cancel_requested: bool,
    worker: Option<String>,
    message: String,
    result: Option<serde_json::Value>,
    epoch: i32,
    created_at: DateTime<Utc>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    experiment_id: Option<i64>,
    node: String,
    parents: Vec<i64>,
}

impl TryFrom<JobRecord> for Job {
    type Error = StoreError;
    fn try_from(r: JobRecord) -> StoreResult<Job> {
        let spec: JobSpec = serde_json::from_value(r.spec)
            .map_err(|e| StoreError::FailedPrecondition(format!("job {} has an unreadable spec: {e}", r.id)))?;
        let state = JobState::parse(&r.state)
            .ok_or_else(|| StoreError::FailedPrecondition(format!("job {} has unknown state {}", r.id, r.state)))?;
        Ok(Job {
            id: r.id,
            name: r.name,
            owner: r.owner,
            spec,
            state,
            priority: r.priority,
            attempt: r.attempt as u32,
            max_attempts: r.max_attempts as u32,
            lease_losses: r.lease_losses as u32,
            cancel_requested: r.cancel_requested,
            worker: if state == JobState::Running { r.worker } else { None },
            message: r.message,
            result: r.result,
            epoch: r.epoch as u32,
            created_at: r.created_at,
            started_at: r.started_at,
            finished_at: r.finished_at,
            experiment_id: r.experiment_id,
            node: r.node,
            parents: r.parents,
        })
    }
}

/// Complete checkpoints only: an upload in progress is invisible. Callers add `AND ...`.
const CHECKPOINT_SELECT: &str = "SELECT c.id, c.job_id, c.attempt, c.epoch, c.step, c.sha256, c.size, c.top1, \
     c.metadata, c.created_at, c.id = COALESCE((SELECT b.id FROM checkpoints b WHERE b.job_id = c.job_id \
     AND b.complete AND b.top1 IS NOT NULL ORDER BY b.top1 DESC, b.id LIMIT 1), -1) AS best \
     FROM checkpoints c WHERE c.complete";

#[derive(FromRow)]
struct CheckpointRecord {
    id: i64,
    job_id: i64,
    attempt: i32,
    epoch: i32,
    step: i64,
    sha256: String,
    size: i64,
    top1: Option<f64>,
    metadata: serde_json::Value,
    created_at: DateTime<Utc>,
    best: Option<bool>,
}

impl From<CheckpointRecord> for Checkpoint {
    fn from(r: CheckpointRecord) -> Self {
        Checkpoint {
            id: r.id,
            job_id: r.job_id,
            attempt: r.attempt as u32,
            epoch: r.epoch as u32,
            step: r.step,
            sha256: r.sha256,
            size: r.size as u64,
            top1: r.top1,
            metadata: r.metadata,
            created_at: r.created_at,
            best: r.best.unwrap_or(false),
        }
    }
}

#[derive(FromRow)]
struct CredentialRecord {
    id: i64,
    role: String,
    name: String,
    created_at: DateTime<Utc>,
    expires_at: Option<DateTime<Utc>>,
    revoked_at: Option<DateTime<Utc>>,
}

impl TryFrom<CredentialRecord> for Credential {
    type Error = StoreError;
    fn try_from(r: CredentialRecord) -> StoreResult<Credential> {
        let role = Role::parse(&r.role)
            .ok_or_else(|| StoreError::FailedPrecondition(format!("credential {} has unknown role {}", r.id, r.role)))?;
        Ok(Credential { id: r.id, role, name: r.name, created_at: r.created_at, expires_at: r.expires_at, revoked_at: r.revoked_at })
    }
}

fn lease_secs(lease: Duration) -> f64 {
    lease.as_secs_f64()
}

/// Checks that `at` is the job's fencing token: running, at this attempt, leased
/// to this worker. With `lock`, the job row stays locked until the transaction ends,
/// so the write that follows happens under the token it checked.
async fn fence(tx: &mut Transaction<'_, Postgres>, at: LeaseRef, lock: bool) -> StoreResult<()> {
    let sql = if lock {
        "SELECT state, attempt, lease_worker FROM jobs WHERE id = $1 FOR UPDATE"
    } else {
        "SELECT state, attempt, lease_worker FROM jobs WHERE id = $1"
    };
    let row: Option<(String, i32, Option<Uuid>)> = sqlx::query_as(sql).bind(at.job_id).fetch_optional(&mut **tx).await?;
    let (state, attempt, holder) = row.ok_or_else(|| StoreError::NotFound(format!("job {}", at.job_id)))?;
    if state != "running" || attempt as u32 != at.attempt {
        return Err(StoreError::Stale(format!(
            "job {} attempt {} is not the running attempt (job is {state}, attempt {attempt})",
            at.job_id, at.attempt
        )));
    }
    if holder != Some(at.worker) {
        return Err(StoreError::Stale(format!("job {} attempt {} is leased to another worker", at.job_id, at.attempt)));
    }
    Ok(())
}

async fn job_in(tx: &mut Transaction<'_, Postgres>, id: i64) -> StoreResult<Job> {
    let rec: Option<JobRecord> = sqlx::query_as(&format!("{JOB_SELECT} WHERE j.id = $1")).bind(id).fetch_optional(&mut **tx).await?;
    rec.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?.try_into()
}

/// Records that `worker` was heard from; an unknown worker is NotFound.
async fn touch_worker(tx: &mut Transaction<'_, Postgres>, worker: Uuid) -> StoreResult<()> {
    let known: Option<(Uuid,)> = sqlx::query_as("UPDATE workers SET last_heartbeat = now() WHERE id = $1 RETURNING id")
        .bind(worker)
        .fetch_optional(&mut **tx)
        .await?;
    known.map(|_| ()).ok_or_else(|| StoreError::NotFound(format!("worker {worker}")))
}

fn spec_invalid(e: camp_proto::SpecError) -> StoreError {
    StoreError::Invalid { field: e.field.to_string(), reason: e.reason }
}

/// The job a new one starts from: it must exist and not have failed.
async fn init_parent(tx: &mut Transaction<'_, Postgres>, id: i64) -> StoreResult<Job> {
    let parent = match job_in(tx, id).await {
        Err(StoreError::NotFound(_)) => {
            return Err(StoreError::Invalid { field: "init_from".into(), reason: format!("job {id} does not exist") })
        }
        other => other?,
    };
    if matches!(parent.state, JobState::Failed | JobState::Cancelled) {
        return Err(StoreError::Invalid {
            field: "init_from".into(),
            reason: format!("job {id} {}: there is nothing to start from", parent.state.as_str()),
        });
    }
    Ok(parent)
}

async fn insert_job(
    tx: &mut Transaction<'_, Postgres>,
    job: &NewJob,
    experiment_id: Option<i64>,
    node: &str,
    parents: &[i64],
) -> StoreResult<i64> {
    let spec = serde_json::to_value(&job.spec).expect("a JobSpec always serialises");
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO jobs (name, owner, stage, dataset, device, spec, state, priority, max_attempts, experiment_id, node) \
         VALUES ($1, $2, $3, $4, $5, $6, 'queued', $7, $8, $9, $10) RETURNING id",
    )
    .bind(&job.name)
    .bind(&job.owner)
    .bind(job.spec.stage.as_str())
    .bind(&job.spec.dataset)
    .bind(job.spec.device.as_str())
    .bind(spec)
    .bind(job.priority)
    .bind(job.max_attempts as i32)
    .bind(experiment_id)
    .bind(node)
    .fetch_one(&mut **tx)
    .await?;
    sqlx::query("INSERT INTO job_dependencies (child_id, parent_id) SELECT $1, unnest($2::bigint[])")
        .bind(id)
        .bind(parents)
        .execute(&mut **tx)
        .await?;
    notify(tx, Change::Job(id)).await?;
    Ok(id)
}

/// The nodes in an order where every node comes after the nodes it names,
/// by the contract's rules (`camp_proto::pipeline`, which the CLI applies too).
fn topological_order(nodes: &[NewNode]) -> StoreResult<Vec<usize>> {
    camp_proto::pipeline::topological_order(nodes).map_err(|e| StoreError::Invalid {
        field: match &e.node {
            Some((i, key)) => format!("nodes[{i}] ({key}).{}", e.field),
            None => e.field.to_string(),
        },
        reason: e.reason,
    })
}

/// What a submission makes, which its request key stands for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Made {
    Job,
    Experiment,
}

/// Claims `key` for `owner` inside the transaction, or finds what the first
/// request with it made (`Some(id)`). A concurrent request with the same key
/// waits here for the first one's transaction to end (the primary key's
/// insertion lock).
async fn claim_request_key(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
    key: Option<&RequestKey>,
    made: Made,
) -> StoreResult<Option<i64>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let inserted: Option<(String,)> = sqlx::query_as(
        "INSERT INTO submissions (owner, request_id, request_sha256) VALUES ($1, $2, $3) \
         ON CONFLICT DO NOTHING RETURNING request_id",
    )
    .bind(owner)
    .bind(&key.id)
    .bind(&key.sha256)
    .fetch_optional(&mut **tx)
    .await?;
    if inserted.is_some() {
        return Ok(None);
    }
    let (sha, job, experiment): (String, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT request_sha256, job_id, experiment_id FROM submissions WHERE owner = $1 AND request_id = $2")
            .bind(owner)
            .bind(&key.id)
            .fetch_one(&mut **tx)
            .await?;
    let used =
        |how: &str| StoreError::FailedPrecondition(format!("request_id '{}' was used before {how}", camp_proto::limits::excerpt(&key.id)));
    if sha != key.sha256 {
        return Err(used("for a different request"));
    }
    match (made, job, experiment) {
        (Made::Job, Some(id), _) | (Made::Experiment, _, Some(id)) => Ok(Some(id)),
        (Made::Job, None, Some(_)) => Err(used("for a pipeline")),
        (Made::Experiment, Some(_), None) => Err(used("for a single job")),
        // What it made was deleted: nothing to return, and a new one would break the promise.
        (_, None, None) => Err(used("(what it made no longer exists)")),
    }
}

async fn record_request_key(
    tx: &mut Transaction<'_, Postgres>,
    owner: &str,
    key: &RequestKey,
    job: Option<i64>,
    experiment: Option<i64>,
) -> StoreResult<()> {
    sqlx::query("UPDATE submissions SET job_id = $3, experiment_id = $4 WHERE owner = $1 AND request_id = $2")
        .bind(owner)
        .bind(&key.id)
        .bind(job)
        .bind(experiment)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// Cancels the jobs waiting on a job that failed or was cancelled, however deep.
async fn cancel_descendants(tx: &mut Transaction<'_, Postgres>, job_id: i64, why: &str) -> StoreResult<()> {
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

#[async_trait]
impl Store for PgStore {
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }

    async fn submit_job(&self, job: NewJob) -> StoreResult<Job> {
        let mut tx = self.pool.begin().await?;
        if let Some(id) = claim_request_key(&mut tx, &job.owner, job.request.as_ref(), Made::Job).await? {
            tx.rollback().await?;
            return self.get_job(id).await;
        }
        let parent = match job.spec.init_from {
            0 => None,
            id => Some(init_parent(&mut tx, id).await?),
        };
        job.spec.check_init_parent(parent.as_ref().map(|p| &p.spec)).map_err(spec_invalid)?;
        let id = insert_job(&mut tx, &job, None, "", parent.as_ref().map(|p| p.id).as_slice()).await?;
        if let Some(key) = &job.request {
            record_request_key(&mut tx, &job.owner, key, Some(id), None).await?;
        }
        notify(&mut tx, Change::Queue).await?;
        let stored = job_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn submit_pipeline(&self, p: NewPipeline) -> StoreResult<Experiment> {
        let order = topological_order(&p.nodes)?;
        let mut tx = self.pool.begin().await?;
        if let Some(id) = claim_request_key(&mut tx, &p.owner, p.request.as_ref(), Made::Experiment).await? {
            tx.rollback().await?;
            return self.get_experiment(id).await;
        }
        let (experiment_id,): (i64,) = sqlx::query_as("INSERT INTO experiments (name, owner) VALUES ($1, $2) RETURNING id")
            .bind(&p.name)
            .bind(&p.owner)
            .fetch_one(&mut *tx)
            .await?;
        let mut ids: HashMap<&str, i64> = HashMap::new();
        for i in order {
            let node = &p.nodes[i];
            let mut spec = node.spec.clone();
            // The parent's stage and network were checked with the order.
            let init = node.init_from.as_deref().map(|k| ids[k]);
            spec.init_from = init.unwrap_or(0);
            let mut parents: Vec<i64> = node.after.iter().map(|k| ids[k.as_str()]).collect();
            parents.extend(init);
            parents.sort_unstable();
            parents.dedup();
            let job = NewJob {
                name: node.name.clone(),
                owner: p.owner.clone(),
                spec,
                priority: node.priority,
                max_attempts: p.max_attempts,
                request: None,
            };
            let id = insert_job(&mut tx, &job, Some(experiment_id), &node.key, &parents).await?;
            ids.insert(node.key.as_str(), id);
        }
        if let Some(key) = &p.request {
            record_request_key(&mut tx, &p.owner, key, None, Some(experiment_id)).await?;
        }
        notify(&mut tx, Change::Queue).await?;
        tx.commit().await?;
        self.get_experiment(experiment_id).await
    }

    async fn get_experiment(&self, id: i64) -> StoreResult<Experiment> {
        let row: Option<(i64, String, String, DateTime<Utc>)> =
            sqlx::query_as("SELECT id, name, owner, created_at FROM experiments WHERE id = $1").bind(id).fetch_optional(&self.pool).await?;
        let (id, name, owner, created_at) = row.ok_or_else(|| StoreError::NotFound(format!("experiment {id}")))?;
        let recs: Vec<JobRecord> =
            sqlx::query_as(&format!("{JOB_SELECT} WHERE j.experiment_id = $1 ORDER BY j.id")).bind(id).fetch_all(&self.pool).await?;
        let jobs = recs.into_iter().map(Job::try_from).collect::<StoreResult<_>>()?;
        Ok(Experiment { id, name, owner, created_at, jobs })
    }

    async fn list_experiments(&self, limit: u32, before_id: i64, owner: Option<&str>) -> StoreResult<Vec<Experiment>> {
        let limit = if limit == 0 { 100 } else { limit } as i64;
        let before = if before_id <= 0 { i64::MAX } else { before_id };
        let rows: Vec<(i64, String, String, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, name, owner, created_at FROM experiments WHERE ($2::text IS NULL OR owner = $2) AND id < $3 \
             ORDER BY id DESC LIMIT $1",
        )
        .bind(limit)
        .bind(owner)
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows.into_iter().map(|(id, name, owner, created_at)| Experiment { id, name, owner, created_at, jobs: Vec::new() }).collect())
    }

    async fn cancel_experiment(&self, id: i64, by: &str) -> StoreResult<Experiment> {
        let experiment = self.get_experiment(id).await?;
        for job in experiment.jobs.iter().filter(|j| !j.state.is_terminal() && !j.cancel_requested) {
            match self.cancel_job(job.id, by).await {
                // Finished meanwhile, or cancelled with its parent: nothing left to do.
                Ok(_) | Err(StoreError::FailedPrecondition(_)) => {}
                Err(e) => return Err(e),
            }
        }
        self.get_experiment(id).await
    }

    async fn get_job(&self, id: i64) -> StoreResult<Job> {
        let rec: Option<JobRecord> = sqlx::query_as(&format!("{JOB_SELECT} WHERE j.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        rec.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?.try_into()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        let limit = if filter.limit == 0 { 100 } else { filter.limit } as i64;
        let before = if filter.before_id <= 0 { i64::MAX } else { filter.before_id };
        let recs: Vec<JobRecord> = sqlx::query_as(&format!(
            "{JOB_SELECT} WHERE ($1::text IS NULL OR j.state = $1) AND ($2::text IS NULL OR j.stage = $2) \
             AND ($3::text IS NULL OR j.owner = $3) AND j.id < $5 ORDER BY j.id DESC LIMIT $4"
        ))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.stage.as_deref())
        .bind(filter.owner.as_deref())
        .bind(limit)
        .bind(before)
        .fetch_all(&self.pool)
        .await?;
        recs.into_iter().map(Job::try_from).collect()
    }

    async fn cancel_job(&self, id: i64, by: &str) -> StoreResult<Job> {
        let mut tx = self.pool.begin().await?;
        // Lock first, then read: the state decided on is the state written over.
        let locked: Option<(i64,)> =
            sqlx::query_as("SELECT id FROM jobs WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(&mut *tx).await?;
        if locked.is_none() {
            return Err(StoreError::NotFound(format!("job {id}")));
        }
        let job = job_in(&mut tx, id).await?;
        match job.state {
            JobState::Queued => {
                sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = now(), message = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("cancelled by {by} while queued"))
                    .execute(&mut *tx)
                    .await?;
                cancel_descendants(&mut tx, id, "was cancelled").await?;
            }
            JobState::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = true, message = $2 WHERE id = $1")
                    .bind(id)
                    .bind(format!("cancel requested by {by}"))
                    .execute(&mut *tx)
                    .await?;
            }
            done => {
                return Err(StoreError::FailedPrecondition(format!("job {id} already {}", done.as_str())));
            }
        }
        notify(&mut tx, Change::Job(id)).await?;
        let job = job_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn set_priority(&self, id: i64, priority: i32) -> StoreResult<Job> {
        let mut tx = self.pool.begin().await?;
        let row: Option<(String,)> =
            sqlx::query_as("SELECT state FROM jobs WHERE id = $1 FOR UPDATE").bind(id).fetch_optional(&mut *tx).await?;
        let (state,) = row.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
        if !matches!(JobState::parse(&state), Some(JobState::Queued | JobState::Running)) {
            return Err(StoreError::FailedPrecondition(format!("job {id} already {state}: its priority no longer matters")));
        }
        sqlx::query("UPDATE jobs SET priority = $2 WHERE id = $1").bind(id).bind(priority).execute(&mut *tx).await?;
        notify(&mut tx, Change::Job(id)).await?;
        notify(&mut tx, Change::Queue).await?;
        let job = job_in(&mut tx, id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn queue_facts(&self, id: i64, live_within: Duration) -> StoreResult<QueueFacts> {
        let job = self.get_job(id).await?;
        let parents: Vec<(i64, String)> = sqlx::query_as(
            "SELECT p.id, p.state FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id \
             WHERE d.child_id = $1 AND p.state <> 'succeeded' ORDER BY p.id",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let (owner_running,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE owner = $1 AND state = 'running'")
            .bind(&job.owner)
            .fetch_one(&self.pool)
            .await?;
        let (live_matching_workers,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM workers w WHERE w.last_heartbeat > now() - make_interval(secs => $1) \
             AND ($2 = 'any' OR w.device_kind = $2) AND $3 = ANY(w.datasets)",
        )
        .bind(lease_secs(live_within))
        .bind(job.spec.device.as_str())
        .bind(&job.spec.dataset)
        .fetch_one(&self.pool)
        .await?;
        let (ahead,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs j WHERE j.state = 'queued' AND j.id <> $1 \
             AND (j.priority > $2 OR (j.priority = $2 AND j.id < $1)) \
             AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id \
                             WHERE d.child_id = j.id AND p.state <> 'succeeded')",
        )
        .bind(id)
        .bind(job.priority)
        .fetch_one(&self.pool)
        .await?;
        Ok(QueueFacts {
            unfinished_parents: parents.into_iter().map(|(id, state)| (id, JobState::parse(&state).unwrap_or(JobState::Failed))).collect(),
            owner_running: owner_running as u32,
            live_matching_workers: live_matching_workers as u32,
            ahead: ahead as u32,
        })
    }

    async fn register_worker(&self, w: NewWorker, session_sha256: &str, credential_id: Option<i64>) -> StoreResult<Uuid> {
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
        .execute(&self.pool)
        .await?;
        Ok(id)
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

    async fn report(&self, batch: ReportBatch) -> StoreResult<bool> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, batch.at, true).await?;
        let fresh: Option<(i64,)> = sqlx::query_as(
            "INSERT INTO report_batches (job_id, attempt, sequence) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING RETURNING job_id",
        )
        .bind(batch.at.job_id)
        .bind(batch.at.attempt as i32)
        .bind(batch.sequence as i64)
        .fetch_optional(&mut *tx)
        .await?;
        if fresh.is_none() {
            tx.commit().await?;
            return Ok(false);
        }
        if !batch.metrics.is_empty() {
            let steps: Vec<i64> = batch.metrics.iter().map(|m| m.step).collect();
            let epochs: Vec<i32> = batch.metrics.iter().map(|m| m.epoch as i32).collect();
            let names: Vec<&str> = batch.metrics.iter().map(|m| m.name.as_str()).collect();
            let values: Vec<f64> = batch.metrics.iter().map(|m| m.value).collect();
            sqlx::query(
                "INSERT INTO metrics (job_id, attempt, step, epoch, name, value) \
                 SELECT $1, $2, * FROM unnest($3::bigint[], $4::int[], $5::text[], $6::float8[])",
            )
            .bind(batch.at.job_id)
            .bind(batch.at.attempt as i32)
            .bind(&steps)
            .bind(&epochs)
            .bind(&names)
            .bind(&values)
            .execute(&mut *tx)
            .await?;
        }
        if !batch.log_lines.is_empty() {
            sqlx::query("INSERT INTO job_logs (job_id, attempt, line) SELECT $1, $2, * FROM unnest($3::text[])")
                .bind(batch.at.job_id)
                .bind(batch.at.attempt as i32)
                .bind(&batch.log_lines)
                .execute(&mut *tx)
                .await?;
        }
        sqlx::query("UPDATE jobs SET epoch = GREATEST(epoch, $2) WHERE id = $1")
            .bind(batch.at.job_id)
            .bind(batch.epoch as i32)
            .execute(&mut *tx)
            .await?;
        notify(&mut tx, Change::Job(batch.at.job_id)).await?;
        tx.commit().await?;
        Ok(true)
    }

    async fn begin_checkpoint(&self, c: NewCheckpoint) -> StoreResult<i64> {
        let mut tx = self.pool.begin().await?;
        // Not locked: the upload may take a while, and heartbeats must go on meanwhile.
        fence(&mut tx, c.at, false).await?;
        let (id,): (i64,) = sqlx::query_as(
            "INSERT INTO checkpoints (job_id, attempt, epoch, step, sha256, size, top1, metadata, complete) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false) RETURNING id",
        )
        .bind(c.at.job_id)
        .bind(c.at.attempt as i32)
        .bind(c.epoch as i32)
        .bind(c.step)
        .bind(&c.sha256)
        .bind(c.size as i64)
        .bind(c.top1)
        .bind(&c.metadata)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(id)
    }

    async fn put_checkpoint_chunk(&self, upload: i64, idx: u32, data: &[u8]) -> StoreResult<()> {
        sqlx::query("INSERT INTO checkpoint_chunks (checkpoint_id, idx, data) VALUES ($1, $2, $3)")
            .bind(upload)
            .bind(idx as i32)
            .bind(data)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    async fn commit_checkpoint(&self, at: LeaseRef, upload: i64, retention: Retention) -> StoreResult<Checkpoint> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, at, true).await?;
        let done = sqlx::query(
            "UPDATE checkpoints SET complete = true, created_at = now() \
             WHERE id = $1 AND job_id = $2 AND attempt = $3 AND NOT complete",
        )
        .bind(upload)
        .bind(at.job_id)
        .bind(at.attempt as i32)
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() != 1 {
            return Err(StoreError::NotFound(format!("upload {upload}")));
        }
        sqlx::query(
            "DELETE FROM checkpoints WHERE job_id = $1 AND complete \
             AND id NOT IN (SELECT id FROM checkpoints WHERE job_id = $1 AND complete ORDER BY id DESC LIMIT $2) \
             AND (NOT $3 OR id <> COALESCE((SELECT id FROM checkpoints WHERE job_id = $1 AND complete AND top1 IS NOT NULL \
                                            ORDER BY top1 DESC, id LIMIT 1), -1))",
        )
        .bind(at.job_id)
        .bind(retention.keep_latest.max(1) as i64)
        .bind(retention.keep_best)
        .execute(&mut *tx)
        .await?;
        notify(&mut tx, Change::Job(at.job_id)).await?;
        let rec: CheckpointRecord = sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.id = $1")).bind(upload).fetch_one(&mut *tx).await?;
        tx.commit().await?;
        Ok(rec.into())
    }

    async fn abort_checkpoint(&self, upload: i64) -> StoreResult<()> {
        sqlx::query("DELETE FROM checkpoints WHERE id = $1 AND NOT complete").bind(upload).execute(&self.pool).await?;
        Ok(())
    }

    async fn finish(&self, at: LeaseRef, outcome: Outcome, message: &str, result: Option<serde_json::Value>) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        fence(&mut tx, at, true).await?;
        let state = match outcome {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Released => "queued",
        };
        sqlx::query(
            "UPDATE jobs SET state = $2, message = $3, result = COALESCE($4, result), lease_worker = NULL, \
             lease_expires_at = NULL, finished_at = CASE WHEN $2 = 'queued' THEN NULL ELSE now() END \
             WHERE id = $1",
        )
        .bind(at.job_id)
        .bind(state)
        .bind(message)
        .bind(result)
        .execute(&mut *tx)
        .await?;
        match outcome {
            // Released work, and children waiting for this parent, are claimable now.
            Outcome::Released | Outcome::Succeeded => notify(&mut tx, Change::Queue).await?,
            Outcome::Failed => cancel_descendants(&mut tx, at.job_id, &format!("failed: {message}")).await?,
            Outcome::Cancelled => cancel_descendants(&mut tx, at.job_id, "was cancelled").await?,
        }
        notify(&mut tx, Change::Job(at.job_id)).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn reap_expired_leases(&self) -> StoreResult<Vec<Reaped>> {
        let mut tx = self.pool.begin().await?;
        let rows: Vec<(i64, i32, String)> = sqlx::query_as(
            "UPDATE jobs SET \
               state = CASE WHEN cancel_requested THEN 'cancelled' \
                            WHEN lease_losses + 1 >= max_attempts THEN 'failed' ELSE 'queued' END, \
               message = CASE WHEN cancel_requested THEN 'cancelled: the worker stopped heartbeating' \
                              WHEN lease_losses + 1 >= max_attempts THEN \
                                format('failed: lease expired on attempt %s (worker %s stopped heartbeating); %s of %s attempts lost', \
                                       attempt, (SELECT name FROM workers WHERE id = lease_worker), lease_losses + 1, max_attempts) \
                              ELSE format('re-queued: lease expired on attempt %s (worker %s stopped heartbeating)', \
                                          attempt, (SELECT name FROM workers WHERE id = lease_worker)) END, \
               finished_at = CASE WHEN cancel_requested OR lease_losses + 1 >= max_attempts THEN now() END, \
               lease_losses = lease_losses + 1, lease_worker = NULL, lease_expires_at = NULL \
             WHERE state = 'running' AND lease_expires_at < now() \
             RETURNING id, attempt, state",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut reaped = Vec::with_capacity(rows.len());
        for (job_id, attempt, state) in rows {
            let new_state = JobState::parse(&state).unwrap_or(JobState::Failed);
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

    async fn metrics(
        &self,
        job_id: i64,
        name: Option<&str>,
        attempt: Option<u32>,
        after_id: i64,
        limit: u32,
    ) -> StoreResult<Vec<StoredMetric>> {
        let rows: Vec<(i64, i32, i64, i32, String, f64, DateTime<Utc>)> = sqlx::query_as(
            "SELECT id, attempt, step, epoch, name, value, at FROM metrics WHERE job_id = $1 \
             AND ($2::text IS NULL OR name = $2) AND ($3::int IS NULL OR attempt = $3) AND id > $4 ORDER BY id LIMIT $5",
        )
        .bind(job_id)
        .bind(name)
        .bind(attempt.map(|a| a as i32))
        .bind(after_id)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, attempt, step, epoch, name, value, at)| StoredMetric {
                id,
                attempt: attempt as u32,
                point: MetricPoint { name, value, step, epoch: epoch as u32 },
                at,
            })
            .collect())
    }

    async fn last_row_ids(&self, job_id: i64) -> StoreResult<(i64, i64)> {
        let row: (i64, i64) = sqlx::query_as(
            "SELECT COALESCE((SELECT max(id) FROM metrics WHERE job_id = $1), 0), \
                    COALESCE((SELECT max(id) FROM job_logs WHERE job_id = $1), 0)",
        )
        .bind(job_id)
        .fetch_one(&self.pool)
        .await?;
        Ok(row)
    }

    async fn logs(&self, job_id: i64, after_id: i64, limit: u32) -> StoreResult<Vec<LogLine>> {
        let rows: Vec<(i64, i32, DateTime<Utc>, String)> =
            sqlx::query_as("SELECT id, attempt, at, line FROM job_logs WHERE job_id = $1 AND id > $2 ORDER BY id LIMIT $3")
                .bind(job_id)
                .bind(after_id)
                .bind(limit as i64)
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().map(|(id, attempt, at, line)| LogLine { id, attempt: attempt as u32, at, line }).collect())
    }

    async fn checkpoints(&self, job_id: i64) -> StoreResult<Vec<Checkpoint>> {
        let recs: Vec<CheckpointRecord> =
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.job_id = $1 ORDER BY c.id")).bind(job_id).fetch_all(&self.pool).await?;
        Ok(recs.into_iter().map(Into::into).collect())
    }

    async fn checkpoint(&self, id: i64) -> StoreResult<Checkpoint> {
        let rec: Option<CheckpointRecord> =
            sqlx::query_as(&format!("{CHECKPOINT_SELECT} AND c.id = $1")).bind(id).fetch_optional(&self.pool).await?;
        rec.map(Into::into).ok_or_else(|| StoreError::NotFound(format!("checkpoint {id}")))
    }

    async fn checkpoint_chunk_sizes(&self, id: i64) -> StoreResult<Vec<u32>> {
        let rows: Vec<(i32,)> = sqlx::query_as("SELECT length(data) FROM checkpoint_chunks WHERE checkpoint_id = $1 ORDER BY idx")
            .bind(id)
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.into_iter().map(|(n,)| n as u32).collect())
    }

    async fn checkpoint_slice(&self, id: i64, idx: u32, offset: u32, len: u32) -> StoreResult<Vec<u8>> {
        let row: Option<(Vec<u8>,)> = sqlx::query_as(
            "SELECT substring(data FROM $3 FOR $4) FROM checkpoint_chunks c \
             WHERE c.checkpoint_id = $1 AND c.idx = $2",
        )
        .bind(id)
        .bind(idx as i32)
        .bind(offset as i32 + 1)
        .bind(len as i32)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(d,)| d).ok_or_else(|| StoreError::NotFound(format!("checkpoint {id} (deleted by retention?)")))
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

    async fn create_credential(&self, c: NewCredential) -> StoreResult<Credential> {
        let rec: CredentialRecord = sqlx::query_as(
            "INSERT INTO credentials (token_sha256, role, name, expires_at) VALUES ($1, $2, $3, $4) \
             RETURNING id, role, name, created_at, expires_at, revoked_at",
        )
        .bind(&c.token_sha256)
        .bind(c.role.as_str())
        .bind(&c.name)
        .bind(c.expires_at)
        .fetch_one(&self.pool)
        .await?;
        rec.try_into()
    }

    async fn credential_for_token(&self, token_sha256: &str) -> StoreResult<Option<Credential>> {
        let rec: Option<CredentialRecord> =
            sqlx::query_as("SELECT id, role, name, created_at, expires_at, revoked_at FROM credentials WHERE token_sha256 = $1")
                .bind(token_sha256)
                .fetch_optional(&self.pool)
                .await?;
        rec.map(Credential::try_from).transpose()
    }

    async fn list_credentials(&self) -> StoreResult<Vec<Credential>> {
        let recs: Vec<CredentialRecord> =
            sqlx::query_as("SELECT id, role, name, created_at, expires_at, revoked_at FROM credentials ORDER BY id")
                .fetch_all(&self.pool)
                .await?;
        recs.into_iter().map(Credential::try_from).collect()
    }

    async fn revoke_credential(&self, id: i64) -> StoreResult<Credential> {
        let rec: Option<CredentialRecord> = sqlx::query_as(
            "UPDATE credentials SET revoked_at = COALESCE(revoked_at, now()) WHERE id = $1 \
             RETURNING id, role, name, created_at, expires_at, revoked_at",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        rec.ok_or_else(|| StoreError::NotFound(format!("credential {id}")))?.try_into()
    }
}
