//! `camp.v1.JobService`: what researchers and pipelines call. The caller is
//! the `User` the auth layer identified; `Access` says what they may read and
//! change. Every request is checked against the limits before it is stored.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use camp_proto::limits::{self, MAX_JOBS_PAGE, MAX_LOGS_PAGE, MAX_MESSAGE_BYTES, MAX_METRICS_PAGE, MAX_NODE_PARENTS, MAX_PIPELINE_NODES};
use camp_proto::v1::job_service_server::JobService;
use camp_proto::v1::{self, job_event};
use camp_proto::JobSpec;
use futures::Stream;
use prost::Message;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::transfer::{ChunkStream, Transfers};
use super::{
    checkpoint_to_proto, experiment_to_proto, job_to_proto, log_to_proto, metric_to_proto, requested_checkpoint, state_from_proto, validate,
};
use crate::auth::{Access, User};
use crate::error::{ApiError, ApiResult};
use crate::net::ConnInfo;
use crate::queue;
use crate::store::{Change, ClaimPolicy, Job, JobFilter, MetricFilter, NewJob, NewNode, NewPipeline, Store, StoreError};

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Watchers re-read the job at least this often, in case a notification was lost.
const WATCH_RECHECK: Duration = Duration::from_secs(2);
/// Rows a watcher reads from the store at a time.
const WATCH_PAGE: u32 = 1_000;
/// A listing stops adding jobs once its reply would pass this size (the next page has the rest).
const LIST_REPLY_BYTES: usize = MAX_MESSAGE_BYTES / 2;

pub struct JobApi {
    store: Arc<dyn Store>,
    access: Access,
    /// A worker is shown alive while its last heartbeat is younger than a lease.
    lease: Duration,
    claims: ClaimPolicy,
    transfers: Arc<Transfers>,
}

impl JobApi {
    pub fn new(store: Arc<dyn Store>, access: Access, lease: Duration, claims: ClaimPolicy, transfers: Arc<Transfers>) -> Self {
        JobApi { store, access, lease, claims, transfers }
    }

    /// The job, if `user` may read it.
    async fn readable_job(&self, user: &User, id: i64) -> ApiResult<Job> {
        let job = self.store.get_job(id).await?;
        self.access.check_read(user, &job.owner, &format!("job {id}"))?;
        Ok(job)
    }

    /// The job, if `user` may change it.
    async fn writable_job(&self, user: &User, id: i64) -> ApiResult<Job> {
        let job = self.store.get_job(id).await?;
        self.access.check_write(user, &job.owner, &format!("job {id}"))?;
        Ok(job)
    }

    /// A job to start from must be one the submitter may read (its weights are its owner's).
    async fn check_init_from(&self, user: &User, spec: &JobSpec, field: &str) -> ApiResult<()> {
        if spec.init_from == 0 {
            return Ok(());
        }
        match self.store.get_job(spec.init_from).await {
            Ok(parent) => self
                .access
                .check_read(user, &parent.owner, &format!("job {}", parent.id))
                .map_err(|e| ApiError::PermissionDenied(format!("{field}: {e}"))),
            // The store names it when it stores the job.
            Err(StoreError::NotFound(_)) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }
}

fn job_name(requested: &str, spec: &JobSpec) -> String {
    match requested.trim() {
        "" => format!("{}-{}-{}", spec.stage.as_str(), spec.arch, spec.dataset),
        name => name.to_string(),
    }
}

/// The first `limit` ids of a page, and where the next page starts (0: none).
/// Silent once its last heartbeat is older than a lease (its jobs are then
/// about to go back to the queue), else busy while it holds a job, else idle.
fn worker_state(heartbeat_age_ms: i64, lease: Duration, running_jobs: &[i64]) -> v1::WorkerState {
    if heartbeat_age_ms >= lease.as_millis() as i64 {
        v1::WorkerState::Silent
    } else if running_jobs.is_empty() {
        v1::WorkerState::Idle
    } else {
        v1::WorkerState::Busy
    }
}

fn next_cursor(ids: &[i64], limit: u32, full: bool) -> i64 {
    if full || ids.len() as u32 >= limit {
        ids.last().copied().unwrap_or(0)
    } else {
        0
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(&self, req: Request<v1::SubmitJobRequest>) -> Result<Response<v1::Job>, Status> {
        let user = User::of(&req)?;
        let r = req.into_inner();
        let spec = validate::spec("spec", r.spec.as_ref())?;
        validate::name("name", &r.name)?;
        let max_attempts = validate::max_attempts(r.max_attempts)?;
        self.access.check_priority(&user, r.priority, "priority")?;
        self.check_init_from(&user, &spec, "spec.init_from").await?;
        let request = validate::request_key(&r.request_id, &r, |m| m.request_id.clear())?;
        let name = job_name(&r.name, &spec);
        let job = self
            .store
            .submit_job(NewJob { name, owner: user.name, spec: spec.into_inner(), priority: r.priority, max_attempts, request })
            .await?;
        tracing::info!(job = job.id, owner = %job.owner, "submitted");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn get_job(&self, req: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        let user = User::of(&req)?;
        let job = self.readable_job(&user, req.get_ref().id).await?;
        let mut reply = job_to_proto(&job);
        if job.state == crate::store::JobState::Queued {
            let facts = self.store.queue_facts(job.id, self.lease).await?;
            reply.waiting_reason = queue::waiting_reason(&job, &facts, self.claims);
        }
        Ok(Response::new(reply))
    }

    async fn list_jobs(&self, req: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsResponse>, Status> {
        let user = User::of(&req)?;
        let r = req.into_inner();
        let state = v1::JobState::try_from(r.state).map_err(|_| ApiError::invalid("state", "unknown value"))?;
        if !r.stage.is_empty() {
            camp_proto::spec::Stage::parse(&r.stage).map_err(ApiError::from)?;
        }
        if !r.owner.is_empty() {
            limits::check_principal(&r.owner).map_err(|e| ApiError::invalid("owner", e))?;
        }
        let limit = validate::page("limit", r.limit, 100, MAX_JOBS_PAGE)?;
        let nonempty = |s: String| if s.is_empty() { None } else { Some(s) };
        let owner = self.access.list_owner(&user, nonempty(r.owner))?;
        let filter = JobFilter { state: state_from_proto(state), stage: nonempty(r.stage), owner, limit, before_id: r.before_id };
        let mut reply = v1::ListJobsResponse::default();
        let mut cut = false;
        for job in self.store.list_jobs(&filter).await? {
            let job = job_to_proto(&job);
            if !reply.jobs.is_empty() && reply.encoded_len() + job.encoded_len() + 16 > LIST_REPLY_BYTES {
                cut = true;
                break;
            }
            reply.jobs.push(job);
        }
        let ids: Vec<i64> = reply.jobs.iter().map(|j| j.id).collect();
        reply.next_before_id = next_cursor(&ids, limit, cut);
        Ok(Response::new(reply))
    }

    async fn cancel_job(&self, req: Request<v1::CancelJobRequest>) -> Result<Response<v1::Job>, Status> {
        let user = User::of(&req)?;
        let id = req.get_ref().id;
        self.writable_job(&user, id).await?;
        let job = self.store.cancel_job(id, &user.name).await?;
        tracing::info!(job = job.id, by = %user.name, state = job.state.as_str(), "cancel");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn set_job_priority(&self, req: Request<v1::SetJobPriorityRequest>) -> Result<Response<v1::Job>, Status> {
        let user = User::of(&req)?;
        let v1::SetJobPriorityRequest { id, priority } = req.into_inner();
        self.writable_job(&user, id).await?;
        self.access.check_priority(&user, priority, "priority")?;
        let job = self.store.set_priority(id, priority).await?;
        tracing::info!(job = id, by = %user.name, priority, "priority set");
        Ok(Response::new(job_to_proto(&job)))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(&self, req: Request<v1::WatchJobRequest>) -> Result<Response<EventStream>, Status> {
        let user = User::of(&req)?;
        let r = req.into_inner();
        let id = r.id;
        for (field, after) in [("metric_after_id", r.metric_after_id), ("log_after_id", r.log_after_id)] {
            if after.is_some_and(|a| a < 0) {
                return Err(ApiError::invalid(field, "a row id is not negative").into());
            }
        }
        let store = self.store.clone();
        let mut changes = store.subscribe();
        let mut last = self.readable_job(&user, id).await?;
        // Where the rows begin: after the client's last rows (a resumed watch),
        // from the first (history), or after the newest stored now, with a
        // snapshot of each series' newest point so that the view starts full.
        let (newest_metric, newest_log) = if r.history { (0, 0) } else { store.last_row_ids(id).await? };
        let mut metric_cursor = r.metric_after_id.unwrap_or(newest_metric);
        let mut log_cursor = r.log_after_id.unwrap_or(newest_log);
        let snapshot = if r.metric_after_id.is_none() && !r.history {
            let newest = store.last_metrics_page(&MetricFilter::job(id), 1, 0, MAX_METRICS_PAGE).await?;
            newest.into_iter().filter(|m| m.id <= metric_cursor).collect()
        } else {
            Vec::new()
        };
        let stream = async_stream::try_stream! {
            yield v1::JobEvent { event: Some(job_event::Event::Job(job_to_proto(&last))) };
            let start = v1::WatchStart { metric_after_id: metric_cursor, log_after_id: log_cursor };
            yield v1::JobEvent { event: Some(job_event::Event::Start(start)) };
            for m in snapshot {
                yield v1::JobEvent { event: Some(job_event::Event::Metric(metric_to_proto(m))) };
            }
            loop {
                loop {
                    let page = store.metrics(id, None, None, metric_cursor, WATCH_PAGE).await?;
                    let full = page.len() as u32 == WATCH_PAGE;
                    for m in page {
                        metric_cursor = m.id;
                        yield v1::JobEvent { event: Some(job_event::Event::Metric(metric_to_proto(m))) };
                    }
                    if !full { break; }
                }
                loop {
                    let page = store.logs(id, log_cursor, WATCH_PAGE).await?;
                    let full = page.len() as u32 == WATCH_PAGE;
                    for l in page {
                        log_cursor = l.id;
                        yield v1::JobEvent { event: Some(job_event::Event::Log(log_to_proto(l))) };
                    }
                    if !full { break; }
                }
                let job = store.get_job(id).await?;
                let changed = (job.state, job.attempt, job.epoch, job.cancel_requested, &job.message)
                    != (last.state, last.attempt, last.epoch, last.cancel_requested, &last.message);
                if changed {
                    yield v1::JobEvent { event: Some(job_event::Event::Job(job_to_proto(&job))) };
                }
                let done = job.state.is_terminal();
                last = job;
                if done {
                    break;
                }
                let wake = tokio::time::Instant::now() + WATCH_RECHECK;
                loop {
                    match tokio::time::timeout_at(wake, changes.recv()).await {
                        Ok(Ok(Change::Job(j))) if j == id => break,
                        Ok(Ok(_)) => continue,
                        Ok(Err(RecvError::Lagged(_))) | Err(_) => break,
                        Ok(Err(RecvError::Closed)) => Err(Status::unavailable("coordinator shutting down"))?,
                    }
                }
            }
        };
        Ok(Response::new(Box::pin(stream)))
    }

    async fn query_metrics(&self, req: Request<v1::QueryMetricsRequest>) -> Result<Response<v1::QueryMetricsResponse>, Status> {
        let user = User::of(&req)?;
        let r = req.into_inner();
        self.readable_job(&user, r.job_id).await?;
        validate::text("name", &r.name, limits::MAX_METRIC_NAME_BYTES)?;
        let limit = validate::page("limit", r.limit, MAX_METRICS_PAGE, MAX_METRICS_PAGE)?;
        let last = validate::page("last", r.last, 0, MAX_METRICS_PAGE)?;
        if r.since_step < 0 {
            return Err(ApiError::invalid("since_step", format!("a step is not negative, got {}", r.since_step)).into());
        }
        let sample = validate::page("sample", r.sample, 0, MAX_METRICS_PAGE)?;
        if sample > 0 {
            if r.name.is_empty() {
                return Err(ApiError::invalid("name", "a sample is of one series: name it").into());
            }
            if r.after_id != 0 || r.since_step != 0 || last != 0 {
                return Err(ApiError::invalid("sample", "a sample is one whole reply: leave after_id, since_step and last unset").into());
            }
            let attempt = (r.attempt != 0).then_some(r.attempt);
            let rows = self.store.sample_metrics(r.job_id, &r.name, attempt, sample).await?;
            return Ok(Response::new(v1::QueryMetricsResponse {
                metrics: rows.into_iter().map(metric_to_proto).collect(),
                next_after_id: 0,
            }));
        }
        let filter = MetricFilter {
            job_id: r.job_id,
            name: (!r.name.is_empty()).then_some(r.name),
            attempt: (r.attempt != 0).then_some(r.attempt),
            since_step: (r.since_step > 0).then_some(r.since_step),
        };
        let rows = if last > 0 {
            self.store.last_metrics_page(&filter, last, r.after_id, limit).await?
        } else {
            self.store.metric_page(&filter, r.after_id, limit).await?
        };
        let ids: Vec<i64> = rows.iter().map(|m| m.id).collect();
        let metrics = rows.into_iter().map(metric_to_proto).collect();
        Ok(Response::new(v1::QueryMetricsResponse { metrics, next_after_id: next_cursor(&ids, limit, false) }))
    }

    async fn get_logs(&self, req: Request<v1::GetLogsRequest>) -> Result<Response<v1::GetLogsResponse>, Status> {
        let user = User::of(&req)?;
        let r = req.into_inner();
        self.readable_job(&user, r.job_id).await?;
        let limit = validate::page("limit", r.limit, MAX_LOGS_PAGE, MAX_LOGS_PAGE)?;
        let last = validate::page("last", r.last, 0, MAX_LOGS_PAGE)?;
        if last > 0 {
            if r.after_id != 0 {
                return Err(ApiError::invalid("last", "the newest lines are one whole reply: leave after_id unset").into());
            }
            let lines = self.store.log_tail(r.job_id, last).await?.into_iter().map(log_to_proto).collect();
            return Ok(Response::new(v1::GetLogsResponse { lines, next_after_id: 0 }));
        }
        let rows = self.store.logs(r.job_id, r.after_id, limit).await?;
        let ids: Vec<i64> = rows.iter().map(|l| l.id).collect();
        let lines = rows.into_iter().map(log_to_proto).collect();
        Ok(Response::new(v1::GetLogsResponse { lines, next_after_id: next_cursor(&ids, limit, false) }))
    }

    async fn list_checkpoints(&self, req: Request<v1::ListCheckpointsRequest>) -> Result<Response<v1::ListCheckpointsResponse>, Status> {
        let user = User::of(&req)?;
        let id = req.get_ref().job_id;
        self.readable_job(&user, id).await?;
        let checkpoints = self.store.checkpoints(id).await?.iter().map(checkpoint_to_proto).collect();
        Ok(Response::new(v1::ListCheckpointsResponse { checkpoints }))
    }

    type DownloadCheckpointStream = ChunkStream;

    async fn download_checkpoint(&self, req: Request<v1::DownloadCheckpointRequest>) -> Result<Response<ChunkStream>, Status> {
        let user = User::of(&req)?;
        let conn = req.extensions().get::<ConnInfo>().cloned();
        let r = req.into_inner();
        if r.checkpoint_id == 0 {
            self.readable_job(&user, r.job_id).await?;
        }
        let ckpt = requested_checkpoint(self.store.as_ref(), &r).await?;
        self.readable_job(&user, ckpt.job_id).await?;
        Ok(Response::new(self.transfers.download(self.store.clone(), ckpt, conn).await?))
    }

    async fn list_workers(&self, req: Request<v1::ListWorkersRequest>) -> Result<Response<v1::ListWorkersResponse>, Status> {
        User::of(&req)?;
        let now = chrono::Utc::now();
        let mut reply = v1::ListWorkersResponse::default();
        for w in self.store.list_workers().await? {
            let age_ms = (now - w.last_heartbeat).num_milliseconds().max(0);
            let worker = {
                let labels = w
                    .new
                    .labels
                    .as_object()
                    .map(|o| o.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_string())).collect())
                    .unwrap_or_default();
                v1::Worker {
                    id: w.id.to_string(),
                    name: w.new.name,
                    hostname: w.new.hostname,
                    device_kind: w.new.device_kind,
                    gpus: w.new.gpus,
                    datasets: w.new.datasets,
                    labels,
                    last_heartbeat_ms: super::ms(w.last_heartbeat),
                    alive: age_ms < self.lease.as_millis() as i64,
                    state: worker_state(age_ms, self.lease, &w.running_jobs) as i32,
                    heartbeat_age_ms: age_ms,
                    running_jobs: w.running_jobs,
                    devices: w.new.devices,
                }
            };
            if reply.encoded_len() + worker.encoded_len() + 16 > LIST_REPLY_BYTES {
                break;
            }
            reply.workers.push(worker);
        }
        Ok(Response::new(reply))
    }

    async fn submit_pipeline(&self, req: Request<v1::SubmitPipelineRequest>) -> Result<Response<v1::Experiment>, Status> {
        let user = User::of(&req)?;
        let r = req.into_inner();
        validate::required_name("name", &r.name)?;
        validate::count("nodes", r.nodes.len(), MAX_PIPELINE_NODES)?;
        let max_attempts = validate::max_attempts(r.max_attempts)?;
        let request = validate::request_key(&r.request_id, &r, |m| m.request_id.clear())?;
        let mut nodes = Vec::with_capacity(r.nodes.len());
        for (i, n) in r.nodes.into_iter().enumerate() {
            let at = format!("nodes[{i}]");
            validate::required_name(&format!("{at}.key"), &n.key)?;
            let at = format!("nodes[{i}] ({})", n.key);
            validate::name(&format!("{at}.name"), &n.name)?;
            validate::count(&format!("{at}.after"), n.after.len(), MAX_NODE_PARENTS)?;
            for key in &n.after {
                validate::name(&format!("{at}.after"), key)?;
            }
            validate::name(&format!("{at}.init_from"), &n.init_from)?;
            self.access.check_priority(&user, n.priority, &format!("{at}.priority"))?;
            let spec = validate::spec(&format!("{at}.spec"), n.spec.as_ref())?;
            let name = if n.name.trim().is_empty() { format!("{}-{}", r.name.trim(), n.key) } else { job_name(&n.name, &spec) };
            let init_from = (!n.init_from.is_empty()).then_some(n.init_from);
            nodes.push(NewNode { key: n.key, name, spec: spec.into_inner(), after: n.after, init_from, priority: n.priority });
        }
        let pipeline = NewPipeline { name: r.name.trim().to_string(), owner: user.name, nodes, max_attempts, request };
        let experiment = self.store.submit_pipeline(pipeline).await?;
        tracing::info!(experiment = experiment.id, jobs = experiment.jobs.len(), "pipeline submitted");
        Ok(Response::new(experiment_to_proto(&experiment)))
    }

    async fn get_experiment(&self, req: Request<v1::GetExperimentRequest>) -> Result<Response<v1::Experiment>, Status> {
        let user = User::of(&req)?;
        let experiment = self.store.get_experiment(req.get_ref().id).await?;
        self.access.check_read(&user, &experiment.owner, &format!("experiment {}", experiment.id))?;
        Ok(Response::new(experiment_to_proto(&experiment)))
    }

    async fn list_experiments(&self, req: Request<v1::ListExperimentsRequest>) -> Result<Response<v1::ListExperimentsResponse>, Status> {
        let user = User::of(&req)?;
        let limit = validate::page("limit", req.get_ref().limit, 100, MAX_JOBS_PAGE)?;
        let owner = self.access.list_owner(&user, None)?;
        let experiments = self.store.list_experiments(limit, req.get_ref().before_id, owner.as_deref()).await?;
        let ids: Vec<i64> = experiments.iter().map(|e| e.id).collect();
        Ok(Response::new(v1::ListExperimentsResponse {
            experiments: experiments.iter().map(experiment_to_proto).collect(),
            next_before_id: next_cursor(&ids, limit, false),
        }))
    }

    async fn cancel_experiment(&self, req: Request<v1::CancelExperimentRequest>) -> Result<Response<v1::Experiment>, Status> {
        let user = User::of(&req)?;
        let id = req.get_ref().id;
        let experiment = self.store.get_experiment(id).await?;
        self.access.check_write(&user, &experiment.owner, &format!("experiment {id}"))?;
        let experiment = self.store.cancel_experiment(id, &user.name).await?;
        tracing::info!(experiment = experiment.id, by = %user.name, "experiment cancelled");
        Ok(Response::new(experiment_to_proto(&experiment)))
    }
}
