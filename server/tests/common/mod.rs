//! A coordinator on a loopback socket against the test's fresh database, and
//! clients that speak to it as a user, an admin, a worker or a stranger. The
//! worker side of the protocol is played by hand so that it can misbehave.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::endpoint::{endpoint, ClientTls};
use camp_proto::metadata::CallHeaders;
use camp_proto::v1::job_service_client::JobServiceClient;
use camp_proto::v1::worker_service_client::WorkerServiceClient;
use camp_proto::v1::{self, JobState};
use camp_proto::JobSpec;
use camp_server::auth::{new_token, token_sha256};
use camp_server::store::{Credential, NewCredential, PgStore, Role, Store};
use camp_server::web::DashboardListener;
use camp_server::{serve, serve_with_dashboard, Settings};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tonic::service::interceptor::InterceptedService;
use tonic::service::Interceptor;
use tonic::transport::Channel;

/// The contract's call metadata, built without ceremony (a bad value is a test bug).
#[derive(Clone, Default)]
pub struct Headers(CallHeaders);

impl Headers {
    pub fn with(self, key: &'static str, value: &str) -> Self {
        Headers(self.0.with(key, value).expect("an ASCII header value"))
    }
    pub fn bearer(self, token: &str) -> Self {
        Headers(self.0.bearer(token).expect("an ASCII token"))
    }
}

impl Interceptor for Headers {
    fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        self.0.call(req)
    }
}

pub type Jobs = JobServiceClient<InterceptedService<Channel, Headers>>;
pub type Workers = WorkerServiceClient<InterceptedService<Channel, Headers>>;

#[derive(Clone)]
pub struct Coordinator {
    pub addr: SocketAddr,
    pub channel: Channel,
    pub store: Arc<dyn Store>,
    pub pool: PgPool,
}

/// Serves both services on a fresh loopback listener (TLS if `settings.tls` says so).
async fn serve_on_loopback(pool: &PgPool, settings: Settings) -> (SocketAddr, Arc<dyn Store>) {
    let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(pool.clone()).await.unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(store.clone(), settings, listener, std::future::pending()));
    tokio::spawn(close_for_good(pool.clone()));
    (addr, store)
}

/// Once `#[sqlx::test]` closes the test's pool, closes it again until no
/// connection is left. sqlx 0.8's `Pool::close` can return while a connection
/// is still on its way back to the pool (the coordinator's last query, the
/// lease reaper's); that connection then stays idle and connected, and the
/// harness's `DROP DATABASE` waits 5 s for it and fails.
async fn close_for_good(pool: PgPool) {
    pool.close_event().await;
    for _ in 0..500 {
        if pool.size() == 0 {
            return;
        }
        pool.close().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

impl Coordinator {
    /// A plaintext coordinator, and a plaintext channel to it.
    pub async fn start(pool: PgPool, settings: Settings) -> Coordinator {
        let (addr, store) = serve_on_loopback(&pool, settings).await;
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        Coordinator { addr, channel, store, pool }
    }

    /// A plaintext coordinator serving the dashboard too; returns it and the dashboard's address.
    pub async fn start_with_dashboard(pool: PgPool, settings: Settings) -> (Coordinator, SocketAddr) {
        Coordinator::start_with_dashboard_tls(pool, settings, None).await
    }

    /// `start_with_dashboard`, the dashboard over HTTPS with `tls` if given.
    pub async fn start_with_dashboard_tls(
        pool: PgPool,
        settings: Settings,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> (Coordinator, SocketAddr) {
        let store: Arc<dyn Store> = Arc::new(PgStore::from_pool(pool.clone()).await.unwrap());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let web = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let web_addr = web.local_addr().unwrap();
        let dashboard = DashboardListener { listener: web, tls };
        tokio::spawn(serve_with_dashboard(store.clone(), settings, listener, Some(dashboard), std::future::pending()));
        tokio::spawn(close_for_good(pool.clone()));
        let channel = Channel::from_shared(format!("http://{addr}")).unwrap().connect().await.unwrap();
        (Coordinator { addr, channel, store, pool }, web_addr)
    }

    /// A coordinator with `settings.tls`, and a channel to it over `https://127.0.0.1:PORT`
    /// as the CLI and the worker make it (`camp_proto::endpoint`) with `client`'s TLS options.
    pub async fn start_tls(pool: PgPool, settings: Settings, client: &ClientTls) -> Coordinator {
        assert!(settings.tls.is_some(), "start_tls needs Settings.tls");
        let (addr, store) = serve_on_loopback(&pool, settings).await;
        let channel = endpoint(&format!("https://127.0.0.1:{}", addr.port()), client).unwrap().connect().await.unwrap();
        Coordinator { addr, channel, store, pool }
    }

    /// The same coordinator reached through another channel (other TLS options, say).
    pub fn on(&self, channel: Channel) -> Coordinator {
        Coordinator { channel, ..self.clone() }
    }

    pub fn jobs(&self, headers: Headers) -> Jobs {
        JobServiceClient::with_interceptor(self.channel.clone(), headers)
    }

    /// A user naming themselves (coordinators without --require-auth).
    pub fn jobs_as(&self, user: &str) -> Jobs {
        self.jobs(Headers::default().with("x-camp-user", user))
    }

    pub fn workers(&self, headers: Headers) -> Workers {
        WorkerServiceClient::with_interceptor(self.channel.clone(), headers)
    }

    /// Makes a credential in the store, as `camp-server token` does, and returns its token.
    pub async fn token(&self, role: Role, name: &str) -> String {
        let token = new_token();
        self.store
            .create_credential(NewCredential { role, name: name.into(), token_sha256: token_sha256(&token), expires_at: None })
            .await
            .unwrap();
        token
    }

    /// Makes a credential with an expiry, and returns its token and its record (for revoking it).
    pub async fn credential(&self, role: Role, name: &str, expires_at: Option<chrono::DateTime<chrono::Utc>>) -> (String, Credential) {
        let token = new_token();
        let record = self
            .store
            .create_credential(NewCredential { role, name: name.into(), token_sha256: token_sha256(&token), expires_at })
            .await
            .unwrap();
        (token, record)
    }

    /// Registers a worker (with `credential` as bearer, if any) and returns it holding its session.
    pub async fn register(&self, name: &str, device: &str, datasets: &[&str], credential: Option<&str>) -> Worker {
        let base = match credential {
            Some(token) => Headers::default().bearer(token),
            None => Headers::default(),
        };
        let reply = self
            .workers(base.clone())
            .register(v1::RegisterRequest {
                name: name.into(),
                hostname: "test".into(),
                device_kind: device.into(),
                datasets: datasets.iter().map(|s| s.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        let client = self.workers(base.with("x-camp-session", &reply.session));
        Worker { id: reply.worker_id, session: reply.session, client }
    }
}

pub fn spec() -> v1::JobSpec {
    JobSpec { dataset: "cifar10".into(), epochs: 2, ..JobSpec::default() }.to_proto()
}

pub async fn submit(jobs: &mut Jobs, spec: v1::JobSpec) -> v1::Job {
    jobs.submit_job(v1::SubmitJobRequest { spec: Some(spec), ..Default::default() }).await.unwrap().into_inner()
}

pub async fn get(jobs: &mut Jobs, id: i64) -> v1::Job {
    jobs.get_job(v1::GetJobRequest { id }).await.unwrap().into_inner()
}

pub async fn wait_state(jobs: &mut Jobs, id: i64, want: JobState) -> v1::Job {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let job = get(jobs, id).await;
        if job.state == want as i32 {
            return job;
        }
        assert!(Instant::now() < deadline, "job {id} never reached {want:?}: {job:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn batch(job_id: i64, attempt: u32, sequence: u64, step: i64) -> v1::ReportBatch {
    v1::ReportBatch {
        job_id,
        attempt,
        sequence,
        metrics: vec![v1::Metric { name: "loss".into(), value: 1.0 / step as f64, step, epoch: 1, ..Default::default() }],
        log_lines: vec![format!("step {step}")],
        epoch: 0,
    }
}

pub fn header(job_id: i64, attempt: u32, epoch: u32, top1: f64, bytes: &[u8]) -> v1::CheckpointHeader {
    v1::CheckpointHeader {
        job_id,
        attempt,
        epoch,
        step: epoch as i64 * 10,
        sha256: hex::encode(Sha256::digest(bytes)),
        size: bytes.len() as u64,
        top1,
        metadata_json: "{}".into(),
    }
}

/// A registered worker: its id, its session and a client that sends the session.
#[derive(Clone)]
pub struct Worker {
    pub id: String,
    pub session: String,
    pub client: Workers,
}

impl Worker {
    pub async fn claim(&mut self, wait_ms: u32) -> Option<v1::Assignment> {
        self.client.claim(v1::ClaimRequest { worker_id: String::new(), wait_ms }).await.unwrap().into_inner().assignment
    }

    pub async fn heartbeat(&mut self, jobs: &[(i64, u32)]) -> Result<v1::HeartbeatResponse, tonic::Status> {
        let jobs = jobs.iter().map(|&(job_id, attempt)| v1::RunningJob { job_id, attempt }).collect();
        self.client.heartbeat(v1::HeartbeatRequest { worker_id: String::new(), jobs }).await.map(|r| r.into_inner())
    }

    pub async fn report(&mut self, batches: Vec<v1::ReportBatch>) -> Result<v1::ReportResponse, tonic::Status> {
        self.client.report(futures::stream::iter(batches)).await.map(|r| r.into_inner())
    }

    /// Uploads `bytes` in 7-byte pieces (so that chunking is exercised).
    pub async fn upload_with(&mut self, header: v1::CheckpointHeader, bytes: &[u8]) -> Result<v1::Checkpoint, tonic::Status> {
        let mut msgs = vec![v1::UploadChunk { header: Some(header), data: vec![] }];
        msgs.extend(bytes.chunks(7).map(|c| v1::UploadChunk { header: None, data: c.to_vec() }));
        self.client.upload_checkpoint(futures::stream::iter(msgs)).await.map(|r| r.into_inner())
    }

    pub async fn upload(
        &mut self,
        job_id: i64,
        attempt: u32,
        epoch: u32,
        top1: f64,
        bytes: &[u8],
    ) -> Result<v1::Checkpoint, tonic::Status> {
        self.upload_with(header(job_id, attempt, epoch, top1, bytes), bytes).await
    }

    pub async fn finish(&mut self, job_id: i64, attempt: u32, outcome: v1::Outcome) -> Result<(), tonic::Status> {
        self.client
            .finish(v1::FinishRequest {
                job_id,
                attempt,
                outcome: outcome as i32,
                message: String::new(),
                result: Some(v1::JobResult { best_top1: 0.5, energy_table: "t".into(), ..Default::default() }),
            })
            .await
            .map(|_| ())
    }

    pub async fn download(&mut self, checkpoint_id: i64) -> Result<Vec<u8>, tonic::Status> {
        let mut stream =
            self.client.download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id, ..Default::default() }).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend(chunk.data);
        }
        Ok(bytes)
    }
}

/// Rows in `table` of the test's database.
pub async fn count(pool: &PgPool, table: &str) -> i64 {
    let (n,): (i64,) = sqlx::query_as(&format!("SELECT count(*) FROM {table}")).fetch_one(pool).await.unwrap();
    n
}

/// One job's row as the database holds it: everything a worker write could change.
pub type JobRow = (i64, String, i32, String, String, String, String, i32, String, bool, i32);

/// What a refused call must leave as it was: the row counts of every table a
/// write touches, and every job's row (state, attempt, lease, result, message).
#[derive(Debug, PartialEq)]
pub struct DbState {
    pub counts: Vec<(&'static str, i64)>,
    pub jobs: Vec<JobRow>,
}

pub async fn db_state(pool: &PgPool) -> DbState {
    let mut counts = Vec::new();
    for table in [
        "jobs",
        "experiments",
        "job_dependencies",
        "submissions",
        "workers",
        "report_batches",
        "metrics",
        "job_logs",
        "checkpoints",
        "checkpoint_chunks",
    ] {
        counts.push((table, count(pool, table).await));
    }
    let jobs: Vec<JobRow> = sqlx::query_as(
        "SELECT id, state, attempt, COALESCE(lease_worker::text, ''), COALESCE(lease_expires_at::text, ''), message, \
         COALESCE(result::text, ''), epoch, COALESCE(finished_at::text, ''), cancel_requested, priority FROM jobs ORDER BY id",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    DbState { counts, jobs }
}
