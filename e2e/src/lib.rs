//! A harness for system tests: the three binaries as real processes, talking
//! gRPC over loopback, the coordinator on a fresh PostgreSQL database (or, for
//! the embedded store's tests, on an SQLite file in the test's folder).
//!
//! The binaries are looked for next to this test's executable (target/<profile>/),
//! so build them first: `cargo build --bins` (the README's test command does).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

/// A headless Chromium driven over WebDriver, for the dashboard's tests.
pub mod browser;

/// target/<profile>/, where cargo puts the workspace's binaries.
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>").to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(path.is_file(), "{} is missing: run `cargo build --bins` before the tests", path.display());
    path
}

/// The URL of the fresh database `#[sqlx::test]` made for this test.
pub fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL must point at the PostgreSQL used for tests");
    let db = pool.connect_options().get_database().expect("test database name").to_string();
    let (without_query, _) = base.split_once('?').unwrap_or((&base, ""));
    let root = without_query.rsplit_once('/').map_or(without_query, |(r, _)| r);
    format!("{root}/{db}")
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process that is killed when the test ends; its output goes to a log
/// file that is printed if the test fails.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, logs: &Path) -> Proc {
        let log = logs.join(format!("{name}.log"));
        let file = std::fs::File::create(&log).unwrap();
        cmd.stdout(file.try_clone().unwrap()).stderr(file).stdin(Stdio::null());
        let child = cmd.spawn().unwrap_or_else(|e| panic!("starting {name}: {e}"));
        Proc { name: name.to_string(), child, log }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn signal(&self, sig: &str) {
        let status = Command::new("kill").args([&format!("-{sig}"), &self.pid().to_string()]).status().unwrap();
        assert!(status.success(), "kill -{sig} {}", self.name);
    }

    /// Waits for the process to exit by itself.
    pub fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {within:?}", self.name);
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== {} log =====\n{}", self.name, self.log_text());
        }
    }
}

/// A coordinator on a fresh database plus the folders the workers use.
pub struct Cluster {
    pub addr: String,
    /// The loopback port the coordinator listens on.
    pub port: u16,
    // Fields drop in order: the server (printing its log if the test failed)
    // before the folder that holds the log.
    pub server: Proc,
    pub dir: tempfile::TempDir,
    pub database_url: String,
}

impl Cluster {
    /// Starts `camp-server` with a short lease so that lost workers are noticed quickly.
    pub fn start(pool: &PgPool, lease_secs: f64) -> Cluster {
        Cluster::start_with(pool, lease_secs, &[])
    }

    /// Starts `camp-server` with `extra_args` added (limits, --require-auth, TLS files
    /// in `dir`...). `addr` is the plaintext address; a TLS test builds its own https one from `port`.
    pub fn start_with(pool: &PgPool, lease_secs: f64, extra_args: &[&str]) -> Cluster {
        Cluster::start_in(tempfile::tempdir().unwrap(), pool, lease_secs, extra_args)
    }

    /// As `start_with`, in a folder the test has already filled (certificates, say).
    pub fn start_in(dir: tempfile::TempDir, pool: &PgPool, lease_secs: f64, extra_args: &[&str]) -> Cluster {
        Cluster::start_on(dir, database_url(pool), lease_secs, extra_args)
    }

    /// A coordinator on the embedded store: `camp.db` in a fresh folder.
    pub fn start_sqlite(lease_secs: f64, extra_args: &[&str]) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("camp.db").display());
        Cluster::start_on(dir, url, lease_secs, extra_args)
    }

    /// Starts `camp-server` on `database_url` in `dir`.
    pub fn start_on(dir: tempfile::TempDir, database_url: String, lease_secs: f64, extra_args: &[&str]) -> Cluster {
        let port = free_port();
        let mut cmd = Command::new(bin("camp-server"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--lease-secs", &lease_secs.to_string(), "--reap-every-secs", "0.2"])
            .args(extra_args)
            .current_dir(dir.path())
            .env("DATABASE_URL", &database_url);
        let mut server = Proc::spawn("camp-server", cmd, dir.path());
        wait_listening(&mut server, port);
        Cluster { addr: format!("http://127.0.0.1:{port}"), port, server, dir, database_url }
    }

    /// Starts the coordinator again on the same port, database and folder (after it died).
    pub fn restart_server(&mut self, extra_args: &[&str]) {
        let mut cmd = Command::new(bin("camp-server"));
        cmd.args(["--listen", &format!("127.0.0.1:{}", self.port), "--reap-every-secs", "0.2"])
            .args(extra_args)
            .current_dir(self.dir.path())
            .env("DATABASE_URL", &self.database_url);
        self.server = Proc::spawn("camp-server-again", cmd, self.dir.path());
        wait_listening(&mut self.server, self.port);
    }

    /// Runs `camp-server --database-url URL ARGS` (the admin commands: `token ...`).
    pub fn camp_server(&self, args: &[&str]) -> Output {
        camp_server(&self.database_url, args)
    }

    /// Makes a token with `camp-server token ARGS` and returns it (the one line on stdout).
    pub fn token(&self, args: &[&str]) -> String {
        let mut all = vec!["token"];
        all.extend_from_slice(args);
        let out = self.camp_server(&all);
        assert!(out.status.success(), "camp-server {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8(out.stdout).unwrap().trim().to_string();
        assert!(token.starts_with("camp_") && !token.contains('\n'), "camp-server {all:?} printed {token:?}, not one token");
        token
    }

    /// The server's resident memory now, in MiB.
    pub fn server_rss_mib(&self) -> f64 {
        rss_kib(self.server.pid()) as f64 / 1024.0
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// A worker on the CPU with one libtorch thread (runs are bitwise reproducible
    /// for a given thread count).
    pub fn worker(&self, name: &str) -> Proc {
        let mut cmd = Command::new(bin("camp-worker"));
        cmd.args(["--coordinator", &self.addr, "--device", "cpu", "--threads", "1", "--name", name])
            .arg("--data-dir")
            .arg(self.data_dir())
            .env("CAMP_STATE_DIR", self.worker_state_dir());
        Proc::spawn(name, cmd, self.dir.path())
    }

    /// Where this cluster's workers keep their ids (`CAMP_STATE_DIR`; a
    /// `--state-dir` among a test's arguments wins), not the user's own.
    pub fn worker_state_dir(&self) -> PathBuf {
        self.dir.path().join("worker-state")
    }

    /// A worker on the CPU talking to `coordinator` with `extra_args` (--token, --ca, ...).
    pub fn worker_with(&self, name: &str, coordinator: &str, extra_args: &[&str]) -> Proc {
        let mut cmd = Command::new(bin("camp-worker"));
        cmd.args(["--coordinator", coordinator, "--device", "cpu", "--threads", "1", "--name", name])
            .arg("--data-dir")
            .arg(self.data_dir())
            .args(extra_args)
            .current_dir(self.dir.path())
            .env("CAMP_STATE_DIR", self.worker_state_dir());
        // The test's own environment must not slip a credential in.
        for var in ["CAMP_TOKEN", "CAMP_CA", "CAMP_TLS_CERT", "CAMP_TLS_KEY", "CAMP_ADDR", "CAMP_COORDINATOR"] {
            cmd.env_remove(var);
        }
        Proc::spawn(name, cmd, self.dir.path())
    }

    /// Runs `camp ARGS` against this coordinator.
    pub fn camp(&self, args: &[&str]) -> Output {
        Command::new(bin("camp")).args(["--addr", &self.addr, "--user", "tester"]).args(args).output().unwrap()
    }

    /// Runs `camp ARGS --json`, requires success, and parses its output.
    pub fn camp_json(&self, args: &[&str]) -> Value {
        let mut all = args.to_vec();
        all.push("--json");
        let out = self.camp(&all);
        assert!(out.status.success(), "camp {all:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("camp {all:?}: not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
    }

    pub fn show(&self, id: i64) -> Value {
        self.camp_json(&["show", &id.to_string()])
    }

    /// Polls `camp show` until `until` holds.
    pub fn wait_for(&self, id: i64, within: Duration, what: &str, until: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let job = self.show(id);
            if until(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id}: waited {within:?} for {what}; last seen {job}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_state(&self, id: i64, state: &str, within: Duration) -> Value {
        self.wait_for(id, within, state, |j| j["state"] == state)
    }

    pub fn submit(&self, args: &[&str]) -> i64 {
        let mut all = vec!["submit", "baseline"];
        all.extend_from_slice(args);
        let job = self.camp_json(&all);
        job["id"].as_i64().unwrap_or_else(|| panic!("submit --json gave no id: {job}"))
    }
}

/// Waits until `server` accepts connections on `port`.
fn wait_listening(server: &mut Proc, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("camp-server exited ({status}) instead of listening:\n{}", server.log_text());
        }
        assert!(Instant::now() < deadline, "camp-server did not start:\n{}", server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Runs `camp-server --database-url URL ARGS` and waits for it.
pub fn camp_server(database_url: &str, args: &[&str]) -> Output {
    Command::new(bin("camp-server")).arg("--database-url").arg(database_url).args(args).output().unwrap()
}

/// A process's resident memory (VmRSS of /proc/PID/status), in KiB.
pub fn rss_kib(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// gRPC clients of both services, for tests that play a part by hand (a
/// worker uploading, a client that stops reading) or speak TLS.
pub mod grpc {
    use std::time::{Duration, Instant};

    use camp_proto::endpoint::{self, ClientTls};
    use camp_proto::limits::MAX_MESSAGE_BYTES;
    use camp_proto::metadata::{self, CallHeaders};
    use camp_proto::v1;
    use camp_proto::v1::job_service_client::JobServiceClient;
    use camp_proto::v1::worker_service_client::WorkerServiceClient;
    use sha2::{Digest, Sha256};
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
        /// A user naming themselves (coordinators without --require-auth).
        pub fn user(name: &str) -> Self {
            Headers::default().with(metadata::USER, name)
        }
    }

    impl Interceptor for Headers {
        fn call(&mut self, req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
            self.0.call(req)
        }
    }

    pub type Jobs = JobServiceClient<InterceptedService<Channel, Headers>>;
    pub type Workers = WorkerServiceClient<InterceptedService<Channel, Headers>>;

    /// A new connection (each call makes its own) to `addr` with the TLS its scheme asks for.
    pub async fn connect(addr: &str, tls: &ClientTls) -> Result<Channel, String> {
        endpoint::endpoint(addr, tls).map_err(|e| e.to_string())?.connect().await.map_err(|e| endpoint::describe(&e))
    }

    pub async fn channel(addr: &str) -> Channel {
        connect(addr, &ClientTls::default()).await.unwrap_or_else(|e| panic!("connecting to {addr}: {e}"))
    }

    pub fn jobs(channel: Channel, headers: Headers) -> Jobs {
        JobServiceClient::with_interceptor(channel, headers)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn workers(channel: Channel, headers: Headers) -> Workers {
        WorkerServiceClient::with_interceptor(channel, headers)
            .max_decoding_message_size(MAX_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_MESSAGE_BYTES)
    }

    pub fn sha256_hex(bytes: &[u8]) -> String {
        hex::encode(Sha256::digest(bytes))
    }

    /// A short, real job: the architecture on a small generated CIFAR-10, on the CPU.
    pub fn tiny_spec(epochs: u32) -> v1::JobSpec {
        use camp_proto::spec::{DeviceRequest, LrStep};
        camp_proto::JobSpec {
            arch: "preact_resnet20_cifar".into(),
            dataset: "cifar10".into(),
            epochs,
            batch_size: 64,
            lr: 0.05,
            lr_schedule: vec![LrStep { epoch: 1, gamma: 0.1 }],
            print_freq: 2,
            seed: 7,
            device: DeviceRequest::Cpu,
            train_limit: 256,
            test_limit: 128,
            ..camp_proto::JobSpec::default()
        }
        .to_proto()
    }

    /// Polls `GetJob` until `until` holds.
    pub async fn wait_job(jobs: &mut Jobs, id: i64, within: Duration, what: &str, until: impl Fn(&v1::Job) -> bool) -> v1::Job {
        let deadline = Instant::now() + within;
        loop {
            let job = jobs.get_job(v1::GetJobRequest { id }).await.unwrap_or_else(|s| panic!("GetJob {id}: {s}")).into_inner();
            if until(&job) {
                return job;
            }
            assert!(Instant::now() < deadline, "job {id}: waited {within:?} for {what}; last seen {job:?}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// A worker played by hand, holding the one job it claimed.
    pub struct HandClaimed {
        /// Its client, the session in `x-camp-session`.
        pub workers: Workers,
        pub session: String,
        pub job: v1::Job,
        pub assignment: v1::Assignment,
    }

    /// Registers a cpu worker with cifar10 named `name` (its session goes into
    /// `x-camp-session`), submits `submit` with `submitter`'s headers and claims
    /// it. For coordinators without --require-auth.
    pub async fn register_and_claim(channel: Channel, name: &str, submitter: Headers, submit: v1::SubmitJobRequest) -> HandClaimed {
        let registered = workers(channel.clone(), Headers::default())
            .register(v1::RegisterRequest {
                name: name.into(),
                hostname: "e2e".into(),
                device_kind: "cpu".into(),
                datasets: vec!["cifar10".into()],
                ..Default::default()
            })
            .await
            .expect("Register")
            .into_inner();
        assert!(!registered.session.is_empty(), "Register returns a session");
        let mut worker = workers(channel.clone(), Headers::default().with(metadata::SESSION, &registered.session));
        let job = jobs(channel, submitter).submit_job(submit).await.expect("SubmitJob").into_inner();
        let assignment = worker
            .claim(v1::ClaimRequest { worker_id: String::new(), wait_ms: 5_000 })
            .await
            .expect("Claim")
            .into_inner()
            .assignment
            .expect("the job just submitted is assigned");
        assert_eq!(assignment.job_id, job.id);
        HandClaimed { workers: worker, session: registered.session, job, assignment }
    }

    /// Reads a whole checkpoint through `DownloadCheckpoint`.
    pub async fn download(jobs: &mut Jobs, checkpoint_id: i64) -> Result<Vec<u8>, tonic::Status> {
        let mut stream =
            jobs.download_checkpoint(v1::DownloadCheckpointRequest { checkpoint_id, ..Default::default() }).await?.into_inner();
        let mut bytes = Vec::new();
        while let Some(chunk) = stream.message().await? {
            bytes.extend(chunk.data);
        }
        Ok(bytes)
    }

    /// Stores `bytes` as a checkpoint through the worker protocol, as a worker
    /// does: registers (the session goes into `x-camp-session`), submits a job as
    /// `user`, claims it and uploads. For coordinators without --require-auth.
    pub async fn put_checkpoint(addr: &str, user: &str, bytes: &[u8]) -> v1::Checkpoint {
        let submit = v1::SubmitJobRequest { spec: Some(tiny_spec(1)), name: "upload".into(), ..Default::default() };
        let HandClaimed { workers: mut worker, job, assignment, .. } =
            register_and_claim(channel(addr).await, "uploader", Headers::user(user), submit).await;
        let header = v1::CheckpointHeader {
            job_id: job.id,
            attempt: assignment.attempt,
            epoch: 1,
            step: 4,
            sha256: sha256_hex(bytes),
            size: bytes.len() as u64,
            top1: 0.5,
            metadata_json: "{}".into(),
        };
        let mut msgs = vec![v1::UploadChunk { header: Some(header), data: Vec::new() }];
        msgs.extend(bytes.chunks(camp_proto::limits::CHECKPOINT_CHUNK_BYTES).map(|c| v1::UploadChunk { header: None, data: c.to_vec() }));
        worker.upload_checkpoint(futures::stream::iter(msgs)).await.expect("UploadCheckpoint").into_inner()
    }
}

/// Every tensor of a safetensors checkpoint, by name, with its bytes.
pub fn tensors(bytes: &[u8]) -> std::collections::BTreeMap<String, Vec<u8>> {
    let state = camp_worker::checkpoint::load(bytes).expect("a loadable checkpoint");
    state
        .model
        .into_iter()
        .chain(state.momentum.into_iter().map(|(k, v)| (format!("momentum.{k}"), v)))
        .map(|(k, t)| {
            let numel = t.numel();
            let mut out = vec![0u8; numel * t.kind().elt_size_in_bytes()];
            t.copy_data_u8(&mut out, numel);
            (k, out)
        })
        .collect()
}

/// `camp submit baseline` flags of a small CPU run of `epochs` epochs: ResNet-20 on
/// 256 training and 128 test images, batch 64, step metrics every 2 steps.
pub fn small_run(epochs: u32) -> Vec<String> {
    [
        "-a",
        "preact_resnet20_cifar",
        "--dataset",
        "cifar10",
        "--epochs",
        &epochs.to_string(),
        "-b",
        "64",
        "--lr",
        "0.05",
        "-p",
        "2",
        "--seed",
        "7",
        "--device",
        "cpu",
        "--train-limit",
        "256",
        "--test-limit",
        "128",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// Owned arguments as `&str`s, for `Cluster::submit`.
pub fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}
