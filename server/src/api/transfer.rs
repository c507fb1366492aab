//! Checkpoint bytes in and out, never held whole in memory.
//!
//! An upload is written to the store one chunk at a time as it arrives, its
//! sha256 computed on the way; it becomes a checkpoint of the job only when
//! every byte is there and the hash matches (and the writer still holds the
//! lease), else it is dropped. A download reads one small slice at a time and
//! hands it to the client through a channel of one: a client that stops
//! reading holds one slice, and after `idle` its connection is closed (only
//! that frees what HTTP/2 keeps for a stream its peer does not read).
//!
//! Both are bounded in number: beyond `max_uploads` / `max_downloads` at once,
//! a transfer waits a little and is then refused with RESOURCE_EXHAUSTED.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use camp_proto::limits::{CHECKPOINT_CHUNK_BYTES, DOWNLOAD_PIECE_BYTES};
use camp_proto::v1;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tonic::{Status, Streaming};

use super::{checkpoint_to_proto, validate};
use crate::error::{ApiError, ApiResult};
use crate::net::ConnInfo;
use crate::store::{Checkpoint, LeaseRef, NewCheckpoint, Retention, Store};

pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<v1::CheckpointChunk, Status>> + Send>>;

/// How long a transfer waits for a free slot before it is refused.
const SLOT_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct TransferLimits {
    pub max_checkpoint_bytes: u64,
    pub max_uploads: usize,
    pub max_downloads: usize,
    /// A stream that moves no bytes for this long is ended.
    pub idle: Duration,
}

impl Default for TransferLimits {
    fn default() -> Self {
        TransferLimits { max_checkpoint_bytes: 512 << 20, max_uploads: 32, max_downloads: 1024, idle: Duration::from_secs(60) }
    }
}

pub struct Transfers {
    limits: TransferLimits,
    uploads: Arc<Semaphore>,
    downloads: Arc<Semaphore>,
}

async fn slot(slots: &Arc<Semaphore>, what: &str) -> ApiResult<OwnedSemaphorePermit> {
    match tokio::time::timeout(SLOT_WAIT, slots.clone().acquire_owned()).await {
        Ok(Ok(permit)) => Ok(permit),
        _ => Err(ApiError::Busy(format!("too many checkpoint {what}s in progress; retry shortly"))),
    }
}

impl Transfers {
    pub fn new(limits: TransferLimits) -> Self {
        Transfers {
            limits,
            uploads: Arc::new(Semaphore::new(limits.max_uploads)),
            downloads: Arc::new(Semaphore::new(limits.max_downloads)),
        }
    }

    /// Takes an upload from `worker`: header first, then the bytes.
    pub async fn upload(
        &self,
        store: &dyn Store,
        worker: uuid::Uuid,
        mut chunks: Streaming<v1::UploadChunk>,
        retention: Retention,
    ) -> ApiResult<Checkpoint> {
        let _slot = slot(&self.uploads, "upload").await?;
        let idle = self.limits.idle;
        let first = next_chunk(&mut chunks, idle).await?.ok_or_else(|| ApiError::invalid("header", "empty upload"))?;
        let header = first.header.ok_or_else(|| ApiError::invalid("header", "the first message must carry it"))?;
        let checked = validate::checkpoint_header(&header, self.limits.max_checkpoint_bytes)?;
        let at = LeaseRef { worker, job_id: header.job_id, attempt: header.attempt };
        // Refuses a foreign or stale writer before taking any of its bytes.
        let upload = store
            .begin_checkpoint(NewCheckpoint {
                at,
                epoch: header.epoch,
                step: header.step,
                sha256: header.sha256.to_ascii_lowercase(),
                size: header.size,
                top1: checked.top1,
                metadata: checked.metadata,
            })
            .await?;
        let written = async {
            let mut sink = ChunkSink { store, upload, declared: header.size, hasher: Sha256::new(), buf: Vec::new(), idx: 0, size: 0 };
            sink.take(first.data).await?;
            while let Some(chunk) = next_chunk(&mut chunks, idle).await? {
                if chunk.header.is_some() {
                    return Err(ApiError::invalid("header", "only the first message may carry it"));
                }
                sink.take(chunk.data).await?;
            }
            sink.finish(&header.sha256).await?;
            store.commit_checkpoint(at, upload, retention).await.map_err(ApiError::from)
        }
        .await;
        if written.is_err() {
            if let Err(e) = store.abort_checkpoint(upload).await {
                tracing::warn!(upload, "dropping a failed upload: {e} (the reaper will)");
            }
        }
        written
    }

    /// Streams `ckpt`: its description first, then its bytes. `conn` is the
    /// caller's connection, closed if the caller stops reading.
    pub async fn download(&self, store: Arc<dyn Store>, ckpt: Checkpoint, conn: Option<ConnInfo>) -> ApiResult<ChunkStream> {
        let slot = slot(&self.downloads, "download").await?;
        let sizes = store.checkpoint_chunk_sizes(ckpt.id).await?;
        let (tx, mut rx) = mpsc::channel(1);
        let stalled = Arc::new(AtomicBool::new(false));
        let producer = Producer { tx, idle: self.limits.idle, stalled: stalled.clone(), conn };
        tokio::spawn(producer.run(store, ckpt, sizes, slot));
        let idle = self.limits.idle;
        Ok(Box::pin(async_stream::stream! {
            while let Some(item) = rx.recv().await {
                yield item;
            }
            if stalled.load(Ordering::SeqCst) {
                yield Err(ApiError::Idle(format!("download dropped: the client read nothing for {}s", idle.as_secs())).into());
            }
        }))
    }
}

/// The next upload message, or an error if the client went quiet.
async fn next_chunk(chunks: &mut Streaming<v1::UploadChunk>, idle: Duration) -> ApiResult<Option<v1::UploadChunk>> {
    match tokio::time::timeout(idle, chunks.next()).await {
        Err(_) => Err(ApiError::Idle(format!("upload dropped: nothing arrived for {}s", idle.as_secs()))),
        Ok(None) => Ok(None),
        Ok(Some(chunk)) => Ok(Some(chunk?)),
    }
}

/// Writes an upload's bytes to the store in chunks of `CHECKPOINT_CHUNK_BYTES`.
struct ChunkSink<'a> {
    store: &'a dyn Store,
    upload: i64,
    declared: u64,
    hasher: Sha256,
    buf: Vec<u8>,
    idx: u32,
    size: u64,
}

impl ChunkSink<'_> {
    async fn take(&mut self, data: Vec<u8>) -> ApiResult<()> {
        self.size += data.len() as u64;
        metrics::counter!(crate::ops::metrics::CHECKPOINT_UPLOADED).increment(data.len() as u64);
        if self.size > self.declared {
            return Err(ApiError::invalid("size", format!("more bytes than the declared {}", self.declared)));
        }
        self.hasher.update(&data);
        self.buf.extend_from_slice(&data);
        while self.buf.len() >= CHECKPOINT_CHUNK_BYTES {
            let rest = self.buf.split_off(CHECKPOINT_CHUNK_BYTES);
            self.write_buf().await?;
            self.buf = rest;
        }
        Ok(())
    }

    async fn write_buf(&mut self) -> ApiResult<()> {
        self.store.put_checkpoint_chunk(self.upload, self.idx, &self.buf).await?;
        self.idx += 1;
        self.buf.clear();
        Ok(())
    }

    async fn finish(mut self, declared_sha256: &str) -> ApiResult<()> {
        if !self.buf.is_empty() {
            self.write_buf().await?;
        }
        if self.size != self.declared {
            return Err(ApiError::invalid("size", format!("declared {} bytes, received {}", self.declared, self.size)));
        }
        let digest = hex::encode(self.hasher.finalize());
        if !digest.eq_ignore_ascii_case(declared_sha256) {
            return Err(ApiError::invalid(
                "sha256",
                format!("declared {declared_sha256}, received bytes hash to {digest}; checkpoint not stored"),
            ));
        }
        Ok(())
    }
}

/// Reads a checkpoint slice by slice into a channel of one.
struct Producer {
    tx: mpsc::Sender<Result<v1::CheckpointChunk, Status>>,
    idle: Duration,
    stalled: Arc<AtomicBool>,
    conn: Option<ConnInfo>,
}

impl Producer {
    /// Hands one message over; false when the client is gone or stopped reading.
    async fn send(&self, item: Result<v1::CheckpointChunk, Status>) -> bool {
        match tokio::time::timeout(self.idle, self.tx.send(item)).await {
            Ok(sent) => sent.is_ok(),
            Err(_) => {
                self.stalled.store(true, Ordering::SeqCst);
                if let Some(conn) = &self.conn {
                    tracing::warn!(peer = ?conn.tcp.remote_addr, "a download stalled for {}s: closing its connection", self.idle.as_secs());
                    conn.closer.close();
                }
                false
            }
        }
    }

    async fn run(self, store: Arc<dyn Store>, ckpt: Checkpoint, sizes: Vec<u32>, _slot: OwnedSemaphorePermit) {
        let info = v1::CheckpointChunk { info: Some(checkpoint_to_proto(&ckpt)), data: Vec::new() };
        if !self.send(Ok(info)).await {
            return;
        }
        for (idx, len) in sizes.into_iter().enumerate() {
            let mut offset = 0u32;
            while offset < len {
                let n = (len - offset).min(DOWNLOAD_PIECE_BYTES as u32);
                let piece = match store.checkpoint_slice(ckpt.id, idx as u32, offset, n).await {
                    Ok(data) => {
                        metrics::counter!(crate::ops::metrics::CHECKPOINT_DOWNLOADED).increment(data.len() as u64);
                        Ok(v1::CheckpointChunk { info: None, data })
                    }
                    Err(e) => Err(Status::from(e)),
                };
                let failed = piece.is_err();
                if !self.send(piece).await || failed {
                    return;
                }
                offset += n;
            }
        }
    }
}
