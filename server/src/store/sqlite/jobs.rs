//! Jobs and experiments: submission (idempotent by request key, a pipeline
//! as one transaction in topological order), reading, cancelling (with the
//! jobs that wait on it) and the facts of why a queued job waits.

use std::collections::HashMap;

use super::*;
use crate::store::policy::{self, Made};

/// The job a new one starts from: it must exist and not have failed.
async fn init_parent(tx: &mut Tx, id: i64) -> StoreResult<Job> {
    let parent = match job_in(tx.conn(), id).await {
        Err(StoreError::NotFound(_)) => None,
        other => Some(other?),
    };
    policy::check_init_parent(id, parent.as_ref().map(|p| p.state))?;
    Ok(parent.expect("checked: it exists"))
}

async fn insert_job(tx: &mut Tx, job: &NewJob, experiment_id: Option<i64>, node: &str, parents: &[i64]) -> StoreResult<i64> {
    let spec = serde_json::to_string(&job.spec).expect("a JobSpec always serialises");
    let (id,): (i64,) = sqlx::query_as(
        "INSERT INTO jobs (name, owner, stage, dataset, device, spec, state, priority, max_attempts, experiment_id, node, created_at, \
         require_labels, gpus) VALUES (?1, ?2, ?3, ?4, ?5, ?6, 'queued', ?7, ?8, ?9, ?10, ?11, ?12, ?13) RETURNING id",
    )
    .bind(&job.name)
    .bind(&job.owner)
    .bind(job.spec.stage.as_str())
    .bind(&job.spec.dataset)
    .bind(job.spec.device.as_str())
    .bind(spec)
    .bind(job.priority)
    .bind(job.max_attempts as i64)
    .bind(experiment_id)
    .bind(node)
    .bind(now_us())
    .bind(Json(&job.spec.require_labels))
    .bind(job.spec.gpus as i64)
    .fetch_one(tx.conn())
    .await?;
    for parent in parents {
        sqlx::query("INSERT INTO job_dependencies (child_id, parent_id) VALUES (?1, ?2)").bind(id).bind(parent).execute(tx.conn()).await?;
    }
    tx.notify(Change::Job(id));
    Ok(id)
}

/// Claims `key` for `owner` inside the transaction, or finds what the first
/// request with it made (`Some(id)`).
async fn claim_request_key(tx: &mut Tx, owner: &str, key: Option<&RequestKey>, made: Made) -> StoreResult<Option<i64>> {
    let Some(key) = key else {
        return Ok(None);
    };
    let inserted = sqlx::query(
        "INSERT INTO submissions (owner, request_id, request_sha256, created_at) VALUES (?1, ?2, ?3, ?4) ON CONFLICT DO NOTHING",
    )
    .bind(owner)
    .bind(&key.id)
    .bind(&key.sha256)
    .bind(now_us())
    .execute(tx.conn())
    .await?;
    if inserted.rows_affected() == 1 {
        return Ok(None);
    }
    let (sha, job, experiment): (String, Option<i64>, Option<i64>) =
        sqlx::query_as("SELECT request_sha256, job_id, experiment_id FROM submissions WHERE owner = ?1 AND request_id = ?2")
            .bind(owner)
            .bind(&key.id)
            .fetch_one(tx.conn())
            .await?;
    policy::earlier_submission(key, made, &sha, job, experiment).map(Some)
}

async fn record_request_key(tx: &mut Tx, owner: &str, key: &RequestKey, job: Option<i64>, experiment: Option<i64>) -> StoreResult<()> {
    sqlx::query("UPDATE submissions SET job_id = ?3, experiment_id = ?4 WHERE owner = ?1 AND request_id = ?2")
        .bind(owner)
        .bind(&key.id)
        .bind(job)
        .bind(experiment)
        .execute(tx.conn())
        .await?;
    Ok(())
}

#[async_trait]
impl JobStore for SqliteStore {
    async fn submit_job(&self, job: NewJob) -> StoreResult<Job> {
        let mut tx = self.begin().await?;
        if let Some(id) = claim_request_key(&mut tx, &job.owner, job.request.as_ref(), Made::Job).await? {
            return job_in(tx.conn(), id).await;
        }
        let parent = match job.spec.init_from {
            0 => None,
            id => Some(init_parent(&mut tx, id).await?),
        };
        job.spec.check_init_parent(parent.as_ref().map(|p| &p.spec)).map_err(policy::spec_invalid)?;
        let id = insert_job(&mut tx, &job, None, "", parent.as_ref().map(|p| p.id).as_slice()).await?;
        if let Some(key) = &job.request {
            record_request_key(&mut tx, &job.owner, key, Some(id), None).await?;
        }
        tx.notify(Change::Queue);
        let stored = job_in(tx.conn(), id).await?;
        tx.commit().await?;
        Ok(stored)
    }

    async fn submit_pipeline(&self, p: NewPipeline) -> StoreResult<Experiment> {
        let order = policy::pipeline_order(&p.nodes)?;
        let mut tx = self.begin().await?;
        if let Some(id) = claim_request_key(&mut tx, &p.owner, p.request.as_ref(), Made::Experiment).await? {
            drop(tx);
            return self.get_experiment(id).await;
        }
        let (experiment_id,): (i64,) = sqlx::query_as("INSERT INTO experiments (name, owner, created_at) VALUES (?1, ?2, ?3) RETURNING id")
            .bind(&p.name)
            .bind(&p.owner)
            .bind(now_us())
            .fetch_one(tx.conn())
            .await?;
        let mut ids: HashMap<&str, i64> = HashMap::new();
        for i in order {
            // The parent's stage and network were checked with the order.
            let node = &p.nodes[i];
            let (job, parents) = policy::pipeline_job(&p, node, &ids);
            let id = insert_job(&mut tx, &job, Some(experiment_id), &node.key, &parents).await?;
            ids.insert(node.key.as_str(), id);
        }
        if let Some(key) = &p.request {
            record_request_key(&mut tx, &p.owner, key, None, Some(experiment_id)).await?;
        }
        tx.notify(Change::Queue);
        tx.commit().await?;
        self.get_experiment(experiment_id).await
    }

    async fn get_experiment(&self, id: i64) -> StoreResult<Experiment> {
        let row: Option<(i64, String, String, i64)> = sqlx::query_as("SELECT id, name, owner, created_at FROM experiments WHERE id = ?1")
            .bind(id)
            .fetch_optional(&self.reader)
            .await?;
        let (id, name, owner, created_at) = row.ok_or_else(|| StoreError::NotFound(format!("experiment {id}")))?;
        let recs: Vec<JobRecord> =
            sqlx::query_as(&format!("{JOB_SELECT} WHERE j.experiment_id = ?1 ORDER BY j.id")).bind(id).fetch_all(&self.reader).await?;
        let jobs = recs.into_iter().map(Job::try_from).collect::<StoreResult<_>>()?;
        Ok(Experiment { id, name, owner, created_at: time(created_at), jobs })
    }

    async fn list_experiments(&self, limit: u32, before_id: i64, owner: Option<&str>) -> StoreResult<Vec<Experiment>> {
        let (limit, before) = policy::page(limit, before_id);
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "SELECT id, name, owner, created_at FROM experiments WHERE (?2 IS NULL OR owner = ?2) AND id < ?3 \
             ORDER BY id DESC LIMIT ?1",
        )
        .bind(limit)
        .bind(owner)
        .bind(before)
        .fetch_all(&self.reader)
        .await?;
        Ok(rows
            .into_iter()
            .map(|(id, name, owner, created_at)| Experiment { id, name, owner, created_at: time(created_at), jobs: Vec::new() })
            .collect())
    }

    async fn get_job(&self, id: i64) -> StoreResult<Job> {
        let rec: Option<JobRecord> = sqlx::query_as(&format!("{JOB_SELECT} WHERE j.id = ?1")).bind(id).fetch_optional(&self.reader).await?;
        rec.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?.try_into()
    }

    async fn list_jobs(&self, filter: &JobFilter) -> StoreResult<Vec<Job>> {
        let (limit, before) = policy::page(filter.limit, filter.before_id);
        let recs: Vec<JobRecord> = sqlx::query_as(&format!(
            "{JOB_SELECT} WHERE (?1 IS NULL OR j.state = ?1) AND (?2 IS NULL OR j.stage = ?2) \
             AND (?3 IS NULL OR j.owner = ?3) AND j.id < ?5 ORDER BY j.id DESC LIMIT ?4"
        ))
        .bind(filter.state.map(JobState::as_str))
        .bind(filter.stage.as_deref())
        .bind(filter.owner.as_deref())
        .bind(limit)
        .bind(before)
        .fetch_all(&self.reader)
        .await?;
        recs.into_iter().map(Job::try_from).collect()
    }

    async fn cancel_job(&self, id: i64, by: &str) -> StoreResult<Job> {
        // The one writer: the state decided on is the state written over.
        let mut tx = self.begin().await?;
        let job = job_in(tx.conn(), id).await?;
        match job.state {
            JobState::Queued => {
                sqlx::query("UPDATE jobs SET state = 'cancelled', finished_at = ?3, message = ?2 WHERE id = ?1")
                    .bind(id)
                    .bind(format!("cancelled by {by} while queued"))
                    .bind(now_us())
                    .execute(tx.conn())
                    .await?;
                cancel_descendants(&mut tx, id, "was cancelled").await?;
            }
            JobState::Running => {
                sqlx::query("UPDATE jobs SET cancel_requested = 1, message = ?2 WHERE id = ?1")
                    .bind(id)
                    .bind(format!("cancel requested by {by}"))
                    .execute(tx.conn())
                    .await?;
            }
            done => {
                return Err(StoreError::FailedPrecondition(format!("job {id} already {}", done.as_str())));
            }
        }
        tx.notify(Change::Job(id));
        let job = job_in(tx.conn(), id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn set_priority(&self, id: i64, priority: i32) -> StoreResult<Job> {
        let mut tx = self.begin().await?;
        let row: Option<(String,)> = sqlx::query_as("SELECT state FROM jobs WHERE id = ?1").bind(id).fetch_optional(tx.conn()).await?;
        let (state,) = row.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?;
        if !matches!(JobState::parse(&state), Some(JobState::Queued | JobState::Running)) {
            return Err(StoreError::FailedPrecondition(format!("job {id} already {state}: its priority no longer matters")));
        }
        sqlx::query("UPDATE jobs SET priority = ?2 WHERE id = ?1").bind(id).bind(priority).execute(tx.conn()).await?;
        tx.notify(Change::Job(id));
        tx.notify(Change::Queue);
        let job = job_in(tx.conn(), id).await?;
        tx.commit().await?;
        Ok(job)
    }

    async fn queue_facts(&self, id: i64, live_within: Duration) -> StoreResult<QueueFacts> {
        let job = self.get_job(id).await?;
        let parents: Vec<(i64, String)> = sqlx::query_as(
            "SELECT p.id, p.state FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id \
             WHERE d.child_id = ?1 AND p.state <> 'succeeded' ORDER BY p.id",
        )
        .bind(id)
        .fetch_all(&self.reader)
        .await?;
        let (owner_running,): (i64,) = sqlx::query_as("SELECT count(*) FROM jobs WHERE owner = ?1 AND state = 'running'")
            .bind(&job.owner)
            .fetch_one(&self.reader)
            .await?;
        let (live_matching_workers,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM workers w WHERE w.last_heartbeat > ?1 \
             AND (?2 = 'any' OR w.device_kind = ?2) AND EXISTS (SELECT 1 FROM json_each(w.datasets) WHERE value = ?3) \
             AND NOT EXISTS (SELECT 1 FROM json_each(?4) r \
                             WHERE NOT EXISTS (SELECT 1 FROM json_each(w.labels) l WHERE l.key = r.key AND l.value = r.value)) \
             AND w.devices >= ?5",
        )
        .bind(now_us() - lease_us(live_within))
        .bind(job.spec.device.as_str())
        .bind(&job.spec.dataset)
        .bind(Json(&job.spec.require_labels))
        .bind(job.spec.gpus as i64)
        .fetch_one(&self.reader)
        .await?;
        let (ahead,): (i64,) = sqlx::query_as(
            "SELECT count(*) FROM jobs j WHERE j.state = 'queued' AND j.id <> ?1 \
             AND (j.priority > ?2 OR (j.priority = ?2 AND j.id < ?1)) \
             AND NOT EXISTS (SELECT 1 FROM job_dependencies d JOIN jobs p ON p.id = d.parent_id \
                             WHERE d.child_id = j.id AND p.state <> 'succeeded')",
        )
        .bind(id)
        .bind(job.priority)
        .fetch_one(&self.reader)
        .await?;
        Ok(QueueFacts {
            unfinished_parents: parents.into_iter().map(|(id, state)| (id, JobState::parse(&state).unwrap_or(JobState::Failed))).collect(),
            owner_running: owner_running as u32,
            live_matching_workers: live_matching_workers as u32,
            ahead: ahead as u32,
        })
    }
}
