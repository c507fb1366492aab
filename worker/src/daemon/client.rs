//! The coordinator as the daemon calls it: the gRPC client with its
//! credentials and message bounds, the one retry policy every call follows
//! (`--retry-for`), and checkpoint downloads, retried whole and checked
//! against their sha256.

use std::future::Future;
use std::time::{Duration, Instant};

use camp_proto::limits::MAX_MESSAGE_BYTES;
use camp_proto::metadata::CallHeaders;
use camp_proto::v1;
use camp_proto::v1::worker_service_client::WorkerServiceClient;
use sha2::{Digest, Sha256};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tonic::{Code, Status};

pub(crate) type Client = WorkerServiceClient<InterceptedService<Channel, CallHeaders>>;

pub(crate) fn client(channel: Channel, credentials: CallHeaders) -> Client {
    WorkerServiceClient::with_interceptor(channel, credentials)
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES)
}

const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// An answer worth asking again: the coordinator is unreachable, restarting or
/// busy. Every other code is the coordinator's final word on the request.
pub(crate) fn is_transient(code: Code) -> bool {
    // CANCELLED: the call's stream was reset under it (a connection cut mid-call), not refused.
    matches!(code, Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal | Code::Cancelled)
}

/// The retry policy's waits: 200 ms, doubling up to 5 s.
pub(crate) struct Backoff {
    delay: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { delay: FIRST_DELAY }
    }

    /// The next wait.
    pub(crate) fn delay(&self) -> Duration {
        self.delay
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    pub(crate) fn reset(&mut self) {
        self.delay = FIRST_DELAY;
    }
}

/// Calls until the answer is final or transient failures have gone on for
/// `give_up_after` (the worker's `--retry-for`), waiting by `Backoff` in between.
pub(crate) async fn retry<T, F, Fut>(what: &str, give_up_after: Duration, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let started = Instant::now();
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Err(s) if is_transient(s.code()) && started.elapsed() + backoff.delay() < give_up_after => {
                tracing::warn!("{what} failed: {}; retrying in {:?}", s.message(), backoff.delay());
                backoff.wait().await;
            }
            other => return other,
        }
    }
}

/// A checkpoint that could not be fetched whole.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("downloading checkpoint {id}: {message}")]
    Refused { id: i64, message: String },
    #[error("checkpoint {id} arrived corrupted (sha256 {got}, expected {want})")]
    Corrupted { id: i64, got: String, want: String },
}

/// Downloads a checkpoint and checks its size and sha256. A stream that
/// breaks is downloaded again from the start, under the retry policy (as an
/// upload is sent again); what still fails is the caller's to hand back.
pub(crate) async fn download(client: &Client, ckpt: &v1::Checkpoint, give_up_after: Duration) -> Result<Vec<u8>, DownloadError> {
    let request = v1::DownloadCheckpointRequest { checkpoint_id: ckpt.id, ..Default::default() };
    let bytes = retry("download checkpoint", give_up_after, || {
        let mut c = client.clone();
        let request = request.clone();
        let capacity = ckpt.size.min(MAX_PREALLOCATION) as usize;
        async move {
            let mut stream = c.download_checkpoint(request).await?.into_inner();
            let mut bytes = Vec::with_capacity(capacity);
            while let Some(chunk) = stream.message().await? {
                bytes.extend_from_slice(&chunk.data);
            }
            Ok(bytes)
        }
    })
    .await
    .map_err(|s| DownloadError::Refused { id: ckpt.id, message: s.message().to_string() })?;
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != ckpt.sha256 || bytes.len() as u64 != ckpt.size {
        return Err(DownloadError::Corrupted { id: ckpt.id, got: digest, want: ckpt.sha256.clone() });
    }
    tracing::info!(id = ckpt.id, job = ckpt.job_id, epoch = ckpt.epoch, step = ckpt.step, "checkpoint downloaded");
    Ok(bytes)
}

/// The most a download reserves before its bytes arrive.
const MAX_PREALLOCATION: u64 = 1 << 30;
