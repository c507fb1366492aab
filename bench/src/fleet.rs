//! The bench's side of the contract: submitters and fake workers that speak
//! only the `.proto` services over real connections, as a third-party client
//! would. A fake worker registers, claims, heartbeats, reports and finishes;
//! it never trains.

use std::time::{Duration, Instant};

use anyhow::Context;
use camp_proto::metadata::{CallHeaders, SESSION, USER};
use camp_proto::v1;
use camp_proto::v1::job_service_client::JobServiceClient;
use camp_proto::v1::worker_service_client::WorkerServiceClient;
use camp_proto::JobSpec;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

/// The user every bench job is submitted as (on a coordinator without --require-auth).
pub const BENCH_USER: &str = "camp-bench";
/// Concurrent calls one connection carries at most (the coordinator's default is 128 streams).
const CALLS_PER_CONNECTION: usize = 100;

pub type Jobs = JobServiceClient<InterceptedService<Channel, CallHeaders>>;
pub type Workers = WorkerServiceClient<InterceptedService<Channel, CallHeaders>>;

/// Connections to one coordinator, enough for `calls` concurrent calls.
#[derive(Clone)]
pub struct Connections {
    channels: Vec<Channel>,
    token: Option<String>,
}

impl Connections {
    pub async fn open(addr: &str, calls: usize, token: Option<String>) -> anyhow::Result<Self> {
        let mut channels = Vec::new();
        for _ in 0..calls.div_ceil(CALLS_PER_CONNECTION).max(1) {
            let channel = Endpoint::from_shared(camp_proto::endpoint::with_scheme(addr))?
                .tcp_nodelay(true)
                .connect()
                .await
                .with_context(|| format!("connecting to {addr}"))?;
            channels.push(channel);
        }
        Ok(Connections { channels, token })
    }

    fn channel(&self, i: usize) -> Channel {
        self.channels[i % self.channels.len()].clone()
    }

    fn headers(&self) -> anyhow::Result<CallHeaders> {
        let h = CallHeaders::default().with(USER, BENCH_USER)?;
        Ok(match &self.token {
            Some(t) => h.bearer(t)?,
            None => h,
        })
    }

    pub fn jobs(&self, i: usize) -> anyhow::Result<Jobs> {
        Ok(JobServiceClient::with_interceptor(self.channel(i), self.headers()?).max_decoding_message_size(64 << 20))
    }

    /// Registers fake worker number `i` for `dataset` on the CPU.
    pub async fn worker(&self, i: usize, dataset: &str) -> anyhow::Result<FakeWorker> {
        let mut client = WorkerServiceClient::with_interceptor(self.channel(i), self.headers()?);
        let reg = client
            .register(v1::RegisterRequest {
                name: format!("bench-{i}"),
                hostname: "camp-bench".into(),
                device_kind: "cpu".into(),
                datasets: vec![dataset.into()],
                ..Default::default()
            })
            .await?
            .into_inner();
        let headers = self.headers()?.with(SESSION, &reg.session)?;
        Ok(FakeWorker { client: WorkerServiceClient::with_interceptor(self.channel(i), headers), id: reg.worker_id })
    }
}

/// A small valid job on `dataset` (never trained: fake workers finish it at once).
pub fn job(dataset: &str) -> v1::SubmitJobRequest {
    let spec = JobSpec { dataset: dataset.into(), epochs: 1, ..JobSpec::default() }.to_proto();
    v1::SubmitJobRequest { spec: Some(spec), name: "bench".into(), ..Default::default() }
}

pub struct FakeWorker {
    pub client: Workers,
    pub id: String,
}

impl FakeWorker {
    /// One claim call: the assignment, if any, and how long the call took.
    pub async fn claim(&mut self, wait: Duration) -> anyhow::Result<(Option<v1::Assignment>, Duration)> {
        let t = Instant::now();
        let reply =
            self.client.claim(v1::ClaimRequest { worker_id: self.id.clone(), wait_ms: wait.as_millis() as u32 }).await?.into_inner();
        Ok((reply.assignment, t.elapsed()))
    }

    pub async fn finish(&mut self, a: &v1::Assignment) -> anyhow::Result<()> {
        self.client
            .finish(v1::FinishRequest {
                job_id: a.job_id,
                attempt: a.attempt,
                outcome: v1::Outcome::Succeeded as i32,
                message: "bench".into(),
                result: None,
            })
            .await?;
        Ok(())
    }

    pub async fn heartbeat(&mut self, running: &[&v1::Assignment]) -> anyhow::Result<v1::HeartbeatResponse> {
        let jobs = running.iter().map(|a| v1::RunningJob { job_id: a.job_id, attempt: a.attempt }).collect();
        Ok(self.client.heartbeat(v1::HeartbeatRequest { worker_id: self.id.clone(), jobs }).await?.into_inner())
    }
}
