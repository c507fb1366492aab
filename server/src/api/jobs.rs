//! `camp.v1.JobService`: what researchers and pipelines call.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use camp_proto::v1::job_service_server::JobService;
use camp_proto::v1::{self, job_event};
use camp_proto::JobSpec;
use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tonic::{Request, Response, Status};

use super::{checkpoint_to_proto, experiment_to_proto, job_to_proto, ms, state_from_proto, CHUNK_BYTES};
use crate::auth::Auth;
use crate::store::{Change, JobFilter, NewJob, NewNode, NewPipeline, Store};

pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// Watchers re-read the job at least this often, in case a notification was lost.
const WATCH_RECHECK: Duration = Duration::from_secs(2);

pub struct JobApi {
    store: Arc<dyn Store>,
    auth: Auth,
    /// A worker is shown alive while its last heartbeat is younger than a lease.
    lease: Duration,
}

impl JobApi {
    pub fn new(store: Arc<dyn Store>, auth: Auth, lease: Duration) -> Self {
        JobApi { store, auth, lease }
    }
}

type EventStream = Pin<Box<dyn Stream<Item = Result<v1::JobEvent, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::CheckpointChunk, Status>> + Send>>;

/// Streams a stored checkpoint: its description first, then its bytes in chunks.
pub async fn checkpoint_download(store: Arc<dyn Store>, req: &v1::DownloadCheckpointRequest) -> Result<ChunkStream, Status> {
    let ckpt = if req.checkpoint_id != 0 {
        store.checkpoint(req.checkpoint_id).await?
    } else {
        store.get_job(req.job_id).await?;
        let all = store.checkpoints(req.job_id).await?;
        let picked = match req.which.as_str() {
            "" | "latest" => all.last(),
            "best" => all.iter().find(|c| c.best).or(all.last()),
            other => return Err(Status::invalid_argument(format!("which: expected best or latest, got '{other}'"))),
        };
        picked.cloned().ok_or_else(|| Status::not_found(format!("job {} has no checkpoint yet", req.job_id)))?
    };
    let count = store.checkpoint_chunk_count(ckpt.id).await?;
    let info = checkpoint_to_proto(&ckpt);
    let stream = async_stream::try_stream! {
        yield v1::CheckpointChunk { info: Some(info), data: Vec::new() };
        for idx in 0..count {
            let data = store.checkpoint_chunk(ckpt.id, idx).await?;
            for piece in data.chunks(CHUNK_BYTES) {
                yield v1::CheckpointChunk { info: None, data: piece.to_vec() };
            }
        }
    };
    Ok(Box::pin(stream))
}

/// A wire spec, validated, whose bits overrides each match a module of its network.
fn checked_spec(wire: &v1::JobSpec) -> Result<JobSpec, camp_proto::SpecError> {
    let spec = JobSpec::from_proto(wire)?;
    camp_proto::energy::report(&spec)?;
    Ok(spec)
}

fn max_attempts(requested: u32) -> Result<u32, Status> {
    match requested {
        0 => Ok(DEFAULT_MAX_ATTEMPTS),
        n if n > 100 => Err(Status::invalid_argument("max_attempts: at most 100")),
        n => Ok(n),
    }
}

fn job_name(requested: &str, spec: &JobSpec) -> String {
    match requested.trim() {
        "" => format!("{}-{}-{}", spec.stage.as_str(), spec.arch, spec.dataset),
        name => name.to_string(),
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(&self, req: Request<v1::SubmitJobRequest>) -> Result<Response<v1::Job>, Status> {
        let user = self.auth.caller(req.metadata()).await?;
        let req = req.into_inner();
        let wire = req.spec.ok_or_else(|| Status::invalid_argument("spec: missing"))?;
        let spec = checked_spec(&wire).map_err(|e| Status::invalid_argument(format!("{}: {}", e.field, e.reason)))?;
        let max_attempts = max_attempts(req.max_attempts)?;
        let name = job_name(&req.name, &spec);
        let job = self
            .store
            .submit_job(NewJob { name, owner: user, spec, priority: req.priority, max_attempts })
            .await?;
        tracing::info!(job = job.id, owner = %job.owner, "submitted");
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn get_job(&self, req: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        self.auth.caller(req.metadata()).await?;
        let job = self.store.get_job(req.get_ref().id).await?;
        Ok(Response::new(job_to_proto(&job)))
    }

    async fn list_jobs(&self, req: Request<v1::ListJobsRequest>) -> Result<Response<v1::ListJobsResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        let state = v1::JobState::try_from(r.state).map_err(|_| Status::invalid_argument("state: unknown value"))?;
        let nonempty = |s: String| if s.is_empty() { None } else { Some(s) };
        let filter = JobFilter { state: state_from_proto(state), stage: nonempty(r.stage), owner: nonempty(r.owner), limit: r.limit };
        let jobs = self.store.list_jobs(&filter).await?;
        Ok(Response::new(v1::ListJobsResponse { jobs: jobs.iter().map(job_to_proto).collect() }))
    }

    async fn cancel_job(&self, req: Request<v1::CancelJobRequest>) -> Result<Response<v1::Job>, Status> {
        let user = self.auth.caller(req.metadata()).await?;
        let job = self.store.cancel_job(req.get_ref().id, &user).await?;
        tracing::info!(job = job.id, by = %user, state = job.state.as_str(), "cancel");
        Ok(Response::new(job_to_proto(&job)))
    }

    type WatchJobStream = EventStream;

    async fn watch_job(&self, req: Request<v1::WatchJobRequest>) -> Result<Response<EventStream>, Status> {
        self.auth.caller(req.metadata()).await?;
        let v1::WatchJobRequest { id, history } = req.into_inner();
        let store = self.store.clone();
        let mut changes = store.subscribe();
        let mut last = store.get_job(id).await?;
        let (mut metric_cursor, mut log_cursor) = (0i64, 0i64);
        if !history {
            metric_cursor = store.metrics(id, None, None, 0).await?.last().map_or(0, |m| m.id);
            log_cursor = store.logs(id, 0).await?.last().map_or(0, |l| l.id);
        }
        let stream = async_stream::try_stream! {
            yield v1::JobEvent { event: Some(job_event::Event::Job(job_to_proto(&last))) };
            loop {
                for m in store.metrics(id, None, None, metric_cursor).await? {
                    metric_cursor = m.id;
                    yield v1::JobEvent { event: Some(job_event::Event::Metric(v1::Metric {
                        name: m.point.name, value: m.point.value, step: m.point.step,
                        epoch: m.point.epoch, attempt: m.attempt, at_ms: ms(m.at),
                    })) };
                }
                for l in store.logs(id, log_cursor).await? {
                    log_cursor = l.id;
                    yield v1::JobEvent { event: Some(job_event::Event::Log(v1::LogLine { attempt: l.attempt, at_ms: ms(l.at), line: l.line })) };
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
        self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        self.store.get_job(r.job_id).await?;
        let name = (!r.name.is_empty()).then_some(r.name.as_str());
        let attempt = (r.attempt != 0).then_some(r.attempt);
        let mut rows = self.store.metrics(r.job_id, name, attempt, 0).await?;
        rows.sort_by_key(|m| (m.point.step, m.id));
        let metrics = rows
            .into_iter()
            .map(|m| v1::Metric {
                name: m.point.name,
                value: m.point.value,
                step: m.point.step,
                epoch: m.point.epoch,
                attempt: m.attempt,
                at_ms: ms(m.at),
            })
            .collect();
        Ok(Response::new(v1::QueryMetricsResponse { metrics }))
    }

    async fn get_logs(&self, req: Request<v1::GetLogsRequest>) -> Result<Response<v1::GetLogsResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let id = req.get_ref().job_id;
        self.store.get_job(id).await?;
        let lines = self
            .store
            .logs(id, 0)
            .await?
            .into_iter()
            .map(|l| v1::LogLine { attempt: l.attempt, at_ms: ms(l.at), line: l.line })
            .collect();
        Ok(Response::new(v1::GetLogsResponse { lines }))
    }

    async fn list_checkpoints(&self, req: Request<v1::ListCheckpointsRequest>) -> Result<Response<v1::ListCheckpointsResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let id = req.get_ref().job_id;
        self.store.get_job(id).await?;
        let checkpoints = self.store.checkpoints(id).await?.iter().map(checkpoint_to_proto).collect();
        Ok(Response::new(v1::ListCheckpointsResponse { checkpoints }))
    }

    type DownloadCheckpointStream = ChunkStream;

    async fn download_checkpoint(&self, req: Request<v1::DownloadCheckpointRequest>) -> Result<Response<ChunkStream>, Status> {
        self.auth.caller(req.metadata()).await?;
        Ok(Response::new(checkpoint_download(self.store.clone(), req.get_ref()).await?))
    }

    async fn list_workers(&self, req: Request<v1::ListWorkersRequest>) -> Result<Response<v1::ListWorkersResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let now = chrono::Utc::now();
        let workers = self
            .store
            .list_workers()
            .await?
            .into_iter()
            .map(|w| {
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
                    last_heartbeat_ms: ms(w.last_heartbeat),
                    alive: (now - w.last_heartbeat).num_milliseconds() < self.lease.as_millis() as i64,
                    running_jobs: w.running_jobs,
                }
            })
            .collect();
        Ok(Response::new(v1::ListWorkersResponse { workers }))
    }

    async fn submit_pipeline(&self, req: Request<v1::SubmitPipelineRequest>) -> Result<Response<v1::Experiment>, Status> {
        let user = self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        let mut nodes = Vec::with_capacity(r.nodes.len());
        for (i, n) in r.nodes.into_iter().enumerate() {
            let at = format!("nodes[{i}] ({})", n.key);
            let wire = n.spec.ok_or_else(|| Status::invalid_argument(format!("{at}.spec: missing")))?;
            let spec = checked_spec(&wire).map_err(|e| Status::invalid_argument(format!("{at}.spec.{}: {}", e.field, e.reason)))?;
            if spec.init_from != 0 {
                return Err(Status::invalid_argument(format!("{at}.spec.init_from: inside a pipeline, name the node (init_from) instead")));
            }
            let name = if n.name.trim().is_empty() { format!("{}-{}", r.name.trim(), n.key) } else { job_name(&n.name, &spec) };
            let init_from = (!n.init_from.is_empty()).then_some(n.init_from);
            nodes.push(NewNode { key: n.key, name, spec, after: n.after, init_from, priority: n.priority });
        }
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument("name: a pipeline needs a name"));
        }
        let pipeline = NewPipeline { name: r.name.trim().to_string(), owner: user, nodes, max_attempts: max_attempts(r.max_attempts)? };
        let experiment = self.store.submit_pipeline(pipeline).await?;
        tracing::info!(experiment = experiment.id, jobs = experiment.jobs.len(), "pipeline submitted");
        Ok(Response::new(experiment_to_proto(&experiment)))
    }

    async fn get_experiment(&self, req: Request<v1::GetExperimentRequest>) -> Result<Response<v1::Experiment>, Status> {
        self.auth.caller(req.metadata()).await?;
        let experiment = self.store.get_experiment(req.get_ref().id).await?;
        Ok(Response::new(experiment_to_proto(&experiment)))
    }

    async fn list_experiments(&self, req: Request<v1::ListExperimentsRequest>) -> Result<Response<v1::ListExperimentsResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let experiments = self.store.list_experiments(req.get_ref().limit).await?;
        Ok(Response::new(v1::ListExperimentsResponse { experiments: experiments.iter().map(experiment_to_proto).collect() }))
    }

    async fn cancel_experiment(&self, req: Request<v1::CancelExperimentRequest>) -> Result<Response<v1::Experiment>, Status> {
        let user = self.auth.caller(req.metadata()).await?;
        let experiment = self.store.cancel_experiment(req.get_ref().id, &user).await?;
        tracing::info!(experiment = experiment.id, by = %user, "experiment cancelled");
        Ok(Response::new(experiment_to_proto(&experiment)))
    }
}
