//! The coordinator as the daemon calls it: the gRPC client with its
//! credentials and message bounds, the one retry policy every call follows,
//! and checkpoint downloads checked against their sha256.

use std::future::Future;
use std::time::Duration;

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

/// How often one call is tried before its caller hears of the failure.
const ATTEMPTS: u32 = 30;
const FIRST_DELAY: Duration = Duration::from_millis(200);
const MAX_DELAY: Duration = Duration::from_secs(5);

/// An answer worth asking again: the coordinator is unreachable, restarting or
/// busy. Every other code is the coordinator's final word on the request.
pub(crate) fn is_transient(code: Code) -> bool {
    matches!(code, Code::Unavailable | Code::Unknown | Code::DeadlineExceeded | Code::ResourceExhausted | Code::Internal)
}

/// The retry policy's waits: 200 ms, doubling up to 5 s.
pub(crate) struct Backoff {
    delay: Duration,
}

impl Backoff {
    pub(crate) fn new() -> Self {
        Backoff { delay: FIRST_DELAY }
    }

    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.delay).await;
        self.delay = (self.delay * 2).min(MAX_DELAY);
    }

    pub(crate) fn reset(&mut self) {
        self.delay = FIRST_DELAY;
    }
}

/// Calls until the answer is final or `ATTEMPTS` transient failures have
/// passed (about two minutes), waiting by `Backoff` in between.
pub(crate) async fn retry<T, F, Fut>(what: &str, mut call: F) -> Result<T, Status>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Status>>,
{
    let mut backoff = Backoff::new();
    for _ in 1..ATTEMPTS {
        match call().await {
            Err(s) if is_transient(s.code()) => {
                tracing::warn!("{what} failed: {}; retrying", s.message());
                backoff.wait().await;
            }
            other => return other,
        }
    }
    call().await
}

/// A checkpoint that could not be fetched whole.
#[derive(Debug, thiserror::Error)]
pub enum DownloadError {
    #[error("downloading checkpoint {id}: {message}")]
    Refused { id: i64, message: String },
    #[error("checkpoint {id} arrived corrupted (sha256 {got}, expected {want})")]
    Corrupted { id: i64, got: String, want: String },
}

/// Downloads a checkpoint and checks its size and sha256.
pub(crate) async fn download(client: &mut Client, ckpt: &v1::Checkpoint) -> Result<Vec<u8>, DownloadError> {
    let refused = |s: Status| DownloadError::Refused { id: ckpt.id, message: s.message().to_string() };
    let request = v1::DownloadCheckpointRequest { checkpoint_id: ckpt.id, ..Default::default() };
    let mut stream = retry("download checkpoint", || {
        let mut c = client.clone();
        let request = request.clone();
        async move { c.download_checkpoint(request).await }
    })
    .await
    .map_err(refused)?
    .into_inner();
    let mut bytes = Vec::with_capacity(ckpt.size as usize);
    while let Some(chunk) = stream.message().await.map_err(refused)? {
        bytes.extend_from_slice(&chunk.data);
    }
    let digest = hex::encode(Sha256::digest(&bytes));
    if digest != ckpt.sha256 || bytes.len() as u64 != ckpt.size {
        return Err(DownloadError::Corrupted { id: ckpt.id, got: digest, want: ckpt.sha256.clone() });
    }
    tracing::info!(id = ckpt.id, job = ckpt.job_id, epoch = ckpt.epoch, step = ckpt.step, "checkpoint downloaded");
    Ok(bytes)
}
