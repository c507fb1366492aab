//! `camp.v1.WorkerService`: what worker daemons call. The caller is the
//! `WorkerCaller` the auth layer identified from its session; every write
//! about a job carries the fencing token (this worker, at the job's current
//! attempt), which the store checks in the same transaction as the write.

use std::sync::Arc;
use std::time::Duration;

use camp_proto::limits::MAX_HEARTBEAT_JOBS;
use camp_proto::v1;
use camp_proto::v1::worker_service_server::WorkerService;
use futures::StreamExt;
use metrics::counter;
use tonic::{Request, Response, Status, Streaming};
use uuid::Uuid;

use super::transfer::{ChunkStream, Transfers};
use super::{checkpoint_to_proto, job_to_proto, requested_checkpoint, validate};
use crate::auth::{new_session, token_sha256, SessionCache, WorkerCaller};
use crate::batcher::Batcher;
use crate::dispatch::Dispatcher;
use crate::error::ApiError;
use crate::net::ConnInfo;
use crate::ops::metrics as names;
use crate::store::{AttemptRef, Finish, HeartbeatReply, LeaseRef, Outcome, ReportBatch, Retention, Store};

/// Heartbeats within this long of each other are written together (`batcher`).
const HEARTBEAT_WINDOW: Duration = Duration::from_millis(200);
/// Calls written in one batch at most.
const MAX_BATCH: usize = 1024;

/// The longest a claim may wait before answering "nothing yet".
const MAX_CLAIM_WAIT: Duration = Duration::from_secs(60);

pub struct WorkerApi {
    store: Arc<dyn Store>,
    lease: Duration,
    retention: Retention,
    dispatcher: Arc<Dispatcher>,
    sessions: Arc<SessionCache>,
    heartbeats: Batcher<(Uuid, Vec<AttemptRef>), HeartbeatReply>,
    finishes: Batcher<Finish, ()>,
    transfers: Arc<Transfers>,
}

impl WorkerApi {
    pub fn new(
        store: Arc<dyn Store>,
        lease: Duration,
        retention: Retention,
        dispatcher: Arc<Dispatcher>,
        sessions: Arc<SessionCache>,
        transfers: Arc<Transfers>,
    ) -> Self {
        let s = store.clone();
        let heartbeats = Batcher::start(HEARTBEAT_WINDOW, MAX_BATCH, move |beats: Vec<(Uuid, Vec<AttemptRef>)>| {
            let s = s.clone();
            async move {
                counter!(names::HEARTBEAT_BATCHES).increment(1);
                s.heartbeat_batch(&beats, lease).await
            }
        });
        let s = store.clone();
        let finishes = Batcher::start(Duration::ZERO, MAX_BATCH, move |finishes: Vec<Finish>| {
            let s = s.clone();
            async move {
                counter!(names::FINISH_BATCHES).increment(1);
                s.finish_batch(&finishes).await
            }
        });
        WorkerApi { store, lease, retention, dispatcher, sessions, heartbeats, finishes, transfers }
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register(&self, req: Request<v1::RegisterRequest>) -> Result<Response<v1::RegisterResponse>, Status> {
        let caller = WorkerCaller::of(&req)?;
        let (worker, previous) = validate::register(req.into_inner())?;
        let session = new_session();
        let name = worker.name.clone();
        let id = match previous {
            None => self.store.register_worker(worker, &token_sha256(&session), caller.credential_id).await?,
            Some(previous) => {
                let rejoined = self.store.reregister_worker(previous, worker, &token_sha256(&session), caller.credential_id).await?;
                if !rejoined.reused {
                    tracing::info!(worker = %name, %previous, "not taking over the worker it named (unknown, or another credential's): a new id");
                }
                for lost in &rejoined.requeued {
                    tracing::info!(job = lost.job_id, attempt = lost.attempt, state = lost.new_state.as_str(), worker = %name, "attempt lost: its worker restarted");
                }
                rejoined.id
            }
        };
        // Its old session is void, and it may offer other data sets or labels than before.
        self.sessions.forget_worker(id);
        self.dispatcher.forget(id);
        tracing::info!(worker = %name, %id, "registered");
        Ok(Response::new(v1::RegisterResponse { worker_id: id.to_string(), lease_ms: self.lease.as_millis() as u32, session }))
    }

    async fn claim(&self, req: Request<v1::ClaimRequest>) -> Result<Response<v1::ClaimResponse>, Status> {
        let worker = WorkerCaller::of(&req)?.named(&req.get_ref().worker_id)?;
        let wait = Duration::from_millis(req.get_ref().wait_ms as u64).min(MAX_CLAIM_WAIT);
        let claimed = self.dispatcher.claim(worker, wait).await?;
        match &claimed {
            Some(_) => counter!(names::CLAIMS).increment(1),
            None => counter!(names::EMPTY_CLAIMS).increment(1),
        }
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
        let worker = WorkerCaller::of(&req)?.named(&req.get_ref().worker_id)?;
        let r = req.into_inner();
        validate::count("jobs", r.jobs.len(), MAX_HEARTBEAT_JOBS)?;
        let running: Vec<AttemptRef> = r.jobs.iter().map(|j| AttemptRef { job_id: j.job_id, attempt: j.attempt }).collect();
        let reply = self.heartbeats.call((worker, running)).await?;
        Ok(Response::new(v1::HeartbeatResponse { cancel: reply.cancel, lost: reply.lost }))
    }

    async fn report(&self, req: Request<Streaming<v1::ReportBatch>>) -> Result<Response<v1::ReportResponse>, Status> {
        let worker = WorkerCaller::of(&req)?.worker()?;
        let mut batches = req.into_inner();
        let mut reply = v1::ReportResponse::default();
        while let Some(batch) = batches.next().await {
            let b = batch?;
            let metrics = validate::report_batch(&b)?;
            let points = metrics.len() as u64;
            let stored = self
                .store
                .report(ReportBatch {
                    at: LeaseRef { worker, job_id: b.job_id, attempt: b.attempt },
                    sequence: b.sequence,
                    metrics,
                    log_lines: b.log_lines,
                    epoch: b.epoch,
                })
                .await?;
            if stored {
                reply.stored += 1;
                counter!(names::REPORT_BATCHES).increment(1);
                counter!(names::REPORT_POINTS).increment(points);
            } else {
                reply.duplicates += 1;
                counter!(names::REPORT_DUPLICATES).increment(1);
            }
        }
        Ok(Response::new(reply))
    }

    async fn upload_checkpoint(&self, req: Request<Streaming<v1::UploadChunk>>) -> Result<Response<v1::Checkpoint>, Status> {
        let worker = WorkerCaller::of(&req)?.worker()?;
        let ckpt = self.transfers.upload(self.store.as_ref(), worker, req.into_inner(), self.retention).await?;
        tracing::info!(job = ckpt.job_id, attempt = ckpt.attempt, epoch = ckpt.epoch, id = ckpt.id, size = ckpt.size, "checkpoint stored");
        Ok(Response::new(checkpoint_to_proto(&ckpt)))
    }

    type DownloadCheckpointStream = ChunkStream;

    async fn download_checkpoint(&self, req: Request<v1::DownloadCheckpointRequest>) -> Result<Response<ChunkStream>, Status> {
        let worker = WorkerCaller::of(&req)?.worker()?;
        let job_id = req.get_ref().job_id;
        if req.get_ref().checkpoint_id == 0 && !self.store.worker_may_read(worker, job_id).await? {
            return Err(ApiError::PermissionDenied(format!(
                "job {job_id}: this worker holds no lease on it or on a job that starts from it"
            ))
            .into());
        }
        let ckpt = requested_checkpoint(self.store.as_ref(), req.get_ref()).await?;
        // A worker reads the checkpoints of the job it holds, and of the job that one starts from.
        if !self.store.worker_may_read(worker, ckpt.job_id).await? {
            return Err(ApiError::PermissionDenied(format!(
                "checkpoint {}: this worker holds no lease on job {} or on a job that starts from it",
                ckpt.id, ckpt.job_id
            ))
            .into());
        }
        let conn = req.extensions().get::<ConnInfo>().cloned();
        Ok(Response::new(self.transfers.download(self.store.clone(), ckpt, conn).await?))
    }

    async fn finish(&self, req: Request<v1::FinishRequest>) -> Result<Response<v1::FinishResponse>, Status> {
        let worker = WorkerCaller::of(&req)?.worker()?;
        let r = req.into_inner();
        let (outcome, result) = validate::finish(&r)?;
        let at = LeaseRef { worker, job_id: r.job_id, attempt: r.attempt };
        self.finishes.call(Finish { at, outcome, message: r.message.clone(), result: result.cloned() }).await?;
        self.dispatcher.slot_freed();
        counter!(names::FINISHED, "outcome" => outcome_label(outcome)).increment(1);
        tracing::info!(job = r.job_id, attempt = r.attempt, outcome = ?outcome, "finished");
        Ok(Response::new(v1::FinishResponse {}))
    }
}

/// `FINISHED`'s `outcome` label.
fn outcome_label(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Succeeded => "succeeded",
        Outcome::Failed => "failed",
        Outcome::Cancelled => "cancelled",
        Outcome::Released => "released",
        Outcome::Retry => "retry",
    }
}
