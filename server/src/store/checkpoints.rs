//! Checkpoints: uploaded in chunks, checked, kept by a retention rule.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{LeaseRef, StoreResult};

/// A checkpoint being uploaded: its header. `sha256` and `size` are what the
/// worker declared; the API layer checks the bytes against them before commit.
#[derive(Debug, Clone)]
pub struct NewCheckpoint {
    pub at: LeaseRef,
    pub epoch: u32,
    pub step: i64,
    pub sha256: String,
    pub size: u64,
    pub top1: Option<f64>,
    pub metadata: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub id: i64,
    pub job_id: i64,
    pub attempt: u32,
    pub epoch: u32,
    pub step: i64,
    pub sha256: String,
    pub size: u64,
    pub top1: Option<f64>,
    pub metadata: serde_json::Value,
    pub created_at: DateTime<Utc>,
    pub best: bool,
}

/// Which checkpoints of a job survive a new one.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub keep_latest: u32,
    pub keep_best: bool,
}

impl Default for Retention {
    fn default() -> Self {
        Retention { keep_latest: 2, keep_best: true }
    }
}

#[async_trait]
pub trait CheckpointStore {
    /// Starts an upload (fenced); its chunks follow, and it is invisible until committed.
    async fn begin_checkpoint(&self, ckpt: NewCheckpoint) -> StoreResult<i64>;
    async fn put_checkpoint_chunk(&self, upload: i64, idx: u32, data: &[u8]) -> StoreResult<()>;
    /// Makes the upload a checkpoint of the job (fenced again) and deletes what
    /// `policy::retention_victims` names under `retention`.
    async fn commit_checkpoint(&self, at: LeaseRef, upload: i64, retention: Retention) -> StoreResult<Checkpoint>;
    /// Drops an upload that will not be committed.
    async fn abort_checkpoint(&self, upload: i64) -> StoreResult<()>;
    async fn checkpoints(&self, job_id: i64) -> StoreResult<Vec<Checkpoint>>;
    async fn checkpoint(&self, id: i64) -> StoreResult<Checkpoint>;
    /// The sizes of a checkpoint's stored chunks, in order.
    async fn checkpoint_chunk_sizes(&self, id: i64) -> StoreResult<Vec<u32>>;
    /// `len` bytes of chunk `idx` from `offset` (fewer at its end).
    async fn checkpoint_slice(&self, id: i64, idx: u32, offset: u32, len: u32) -> StoreResult<Vec<u8>>;
}
