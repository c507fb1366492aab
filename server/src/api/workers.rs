//! `camp.v1.WorkerService`: what worker daemons call. Every call about a job
//! carries its attempt number; the store refuses stale attempts.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use camp_proto::v1::worker_service_server::WorkerService;
use camp_proto::v1;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::{checkpoint_to_proto, jobs::checkpoint_download, job_to_proto, CHUNK_BYTES};
use crate::auth::Auth;
use crate::queue;
use crate::store::{AttemptRef, MetricPoint, NewCheckpoint, NewWorker, Outcome, ReportBatch, Retention, Store};

/// The longest a claim may wait before answering "nothing yet".
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);
/// Checkpoints larger than this are refused (a ResNet-110 with momentum is ~14 MB).
const MAX_CHECKPOINT_BYTES: u64 = 2 << 30;

pub struct WorkerApi {
    store: Arc<dyn Store>,
    auth: Auth,
    lease: Duration,
    retention: Retention,
}

impl WorkerApi {
    pub fn new(store: Arc<dyn Store>, auth: Auth, lease: Duration, retention: Retention) -> Self {
        WorkerApi { store, auth, lease, retention }
    }
}

fn worker_id(s: &str) -> Result<Uuid, Status> {
    Uuid::parse_str(s).map_err(|_| Status::invalid_argument(format!("worker_id: '{s}' is not a worker id")))
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::CheckpointChunk, Status>> + Send>>;

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(&self, req: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        if r.name.trim().is_empty() {
            return Err(Status::invalid_argument("name: must not be empty"));
        }
        if r.device_kind != "cpu" && r.device_kind != "cuda" {
            return Err(Status::invalid_argument(format!("device_kind: expected cpu or cuda, got '{}'", r.device_kind)));
        }
        let labels = serde_json::to_value(&r.labels).expect("a string map always serialises");
        let id = self
            .store
            .register_worker(NewWorker {
                name: r.name.clone(),
                hostname: r.hostname,
                device_kind: r.device_kind,
                gpus: r.gpus,
                datasets: r.datasets,
                labels,
            })
            .await?;
        tracing::info!(worker = %r.name, %id, "registered");
        Ok(Response::new(v1::RegisterResponse { worker_id: id.to_string(), lease_ms: self.lease.as_millis() as u32 }))
    }

    async fn claim(&self, req: Request<v1::ClaimRequest>) -> Result<Response<v1::ClaimResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        let worker = worker_id(&r.worker_id)?;
        let wait = Duration::from_millis(r.wait_ms as u64).min(MAX_CLAIM_WAIT);
        let claimed = queue::claim_wait(self.store.as_ref(), worker, self.lease, wait).await?;
        let assignment = claimed.map(|c| {
            tracing::info!(job = c.job.id, attempt = c.job.attempt, %worker, "claimed");
            v1::Assignment {
                job_id: c.job.id,
                attempt: c.job.attempt,
                spec: job_to_proto(&c.job).spec,
                lease_ms: self.lease.as_millis() as u32,
                resume_from: c.resume_from.as_ref().map(checkpoint_to_proto),
                init_from: c.init_from.as_ref().map(checkpoint_to_proto),
                name: c.job.name,
            }
        });
        Ok(Response::new(v1::ClaimResponse { assignment }))
    }

    async fn heartbeat(&self, req: Request<v1::HeartbeatRequest>) -> Result<Response<v1::HeartbeatResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        let worker = worker_id(&r.worker_id)?;
        let running: Vec<AttemptRef> = r.jobs.iter().map(|j| AttemptRef { job_id: j.job_id, attempt: j.attempt }).collect();
        let reply = self.store.heartbeat(worker, &running, self.lease).await?;
        Ok(Response::new(v1::HeartbeatResponse { cancel: reply.cancel, lost: reply.lost }))
    }

    async fn report(&self, req: Request<Streaming<v1::ReportBatch>>) -> Result<Response<v1::ReportResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let mut batches = req.into_inner();
        let mut reply = v1::ReportResponse::default();
        while let Some(batch) = batches.next().await {
            let b = batch?;
            let metrics = b
                .metrics
                .into_iter()
                .map(|m| MetricPoint { name: m.name, value: m.value, step: m.step, epoch: m.epoch })
                .collect();
            let stored = self
                .store
                .report(ReportBatch {
                    at: AttemptRef { job_id: b.job_id, attempt: b.attempt },
                    sequence: b.sequence,
                    metrics,
                    log_lines: b.log_lines,
                    epoch: b.epoch,
                })
                .await?;
            if stored {
                reply.stored += 1;
            } else {
                reply.duplicates += 1;
            }
        }
        Ok(Response::new(reply))
    }

    async fn upload_checkpoint(&self, req: Request<Streaming<v1::UploadChunk>>) -> Result<Response<v1::Checkpoint>, Status> {
        self.auth.caller(req.metadata()).await?;
        let mut chunks = req.into_inner();
        let first = chunks.next().await.ok_or_else(|| Status::invalid_argument("header: empty upload"))??;
        let header = first.header.ok_or_else(|| Status::invalid_argument("header: the first message must carry it"))?;
        if header.size > MAX_CHECKPOINT_BYTES {
            return Err(Status::invalid_argument(format!("size: {} bytes is over the {MAX_CHECKPOINT_BYTES} limit", header.size)));
        }
        let metadata: serde_json::Value = if header.metadata_json.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::from_str(&header.metadata_json)
                .map_err(|e| Status::invalid_argument(format!("metadata_json: not JSON: {e}")))?
        };
        let at = AttemptRef { job_id: header.job_id, attempt: header.attempt };
        // Refuse a stale attempt before taking its bytes; the store checks again when writing.
        let job = self.store.get_job(at.job_id).await?;
        if job.attempt != at.attempt || job.state != crate::store::JobState::Running {
            return Err(Status::failed_precondition(format!(
                "stale attempt: job {} attempt {} is not the running attempt",
                at.job_id, at.attempt
            )));
        }
        let mut hasher = Sha256::new();
        let mut stored: Vec<Vec<u8>> = Vec::new();
        let mut size: u64 = 0;
        let mut take = |data: Vec<u8>| -> Result<(), Status> {
            size += data.len() as u64;
            if size > header.size {
                return Err(Status::invalid_argument(format!("size: more bytes than the declared {}", header.size)));
            }
            hasher.update(&data);
            match stored.last_mut() {
                Some(last) if last.len() + data.len() <= CHUNK_BYTES => last.extend_from_slice(&data),
                _ => stored.push(data),
            }
            Ok(())
        };
        take(first.data)?;
        while let Some(chunk) = chunks.next().await {
            let chunk = chunk?;
            if chunk.header.is_some() {
                return Err(Status::invalid_argument("header: only the first message may carry it"));
            }
            take(chunk.data)?;
        }
        if size != header.size {
            return Err(Status::invalid_argument(format!("size: declared {} bytes, received {size}", header.size)));
        }
        let digest = hex::encode(hasher.finalize());
        if !digest.eq_ignore_ascii_case(&header.sha256) {
            return Err(Status::invalid_argument(format!(
                "sha256: declared {}, received bytes hash to {digest}; checkpoint not stored",
                header.sha256
            )));
        }
        let ckpt = self
            .store
            .put_checkpoint(
                NewCheckpoint {
                    at,
                    epoch: header.epoch,
                    step: header.step,
                    sha256: digest,
                    size,
                    top1: header.top1.is_finite().then_some(header.top1),
                    metadata,
                },
                stored,
                self.retention,
            )
            .await?;
        tracing::info!(job = at.job_id, attempt = at.attempt, epoch = ckpt.epoch, id = ckpt.id, size, "checkpoint stored");
        Ok(Response::new(checkpoint_to_proto(&ckpt)))
    }

    type DownloadCheckpointStream = ChunkStream;

    async fn download_checkpoint(&self, req: Request<v1::DownloadCheckpointRequest>) -> Result<Response<ChunkStream>, Status> {
        self.auth.caller(req.metadata()).await?;
        Ok(Response::new(checkpoint_download(self.store.clone(), req.get_ref()).await?))
    }

    async fn finish(&self, req: Request<v1::FinishRequest>) -> Result<Response<v1::FinishResponse>, Status> {
        self.auth.caller(req.metadata()).await?;
        let r = req.into_inner();
        let outcome = match v1::Outcome::try_from(r.outcome) {
            Ok(v1::Outcome::Succeeded) => Outcome::Succeeded,
            Ok(v1::Outcome::Failed) => Outcome::Failed,
            Ok(v1::Outcome::Cancelled) => Outcome::Cancelled,
            Ok(v1::Outcome::Released) => Outcome::Released,
            _ => return Err(Status::invalid_argument("outcome: must be succeeded, failed, cancelled or released")),
        };
        let result = if r.result_json.is_empty() {
            None
        } else {
            Some(serde_json::from_str(&r.result_json).map_err(|e| Status::invalid_argument(format!("result_json: not JSON: {e}")))?)
        };
        let at = AttemptRef { job_id: r.job_id, attempt: r.attempt };
        self.store.finish(at, outcome, &r.message, result).await?;
        tracing::info!(job = r.job_id, attempt = r.attempt, outcome = ?outcome, "finished");
        Ok(Response::new(v1::FinishResponse {}))
    }
}
