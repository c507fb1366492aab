//! What an operator watches, through the real interfaces: gRPC health with
//! tonic-health's own client (SERVING only while the database answers),
//! reflection with tonic-reflection's client (as `grpcurl` uses it), both open
//! without a token on a coordinator that requires one, and `/metrics` scraped
//! over HTTP from a real `camp-server` process started with `--metrics-listen`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use camp_proto::v1::job_service_client::JobServiceClient;
use camp_proto::v1::worker_service_client::WorkerServiceClient;
use camp_proto::v1::{self, JobState};
use camp_server::Settings;
use common::*;
use prost::Message;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;
use tonic::Code;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
use tonic_reflection::pb::v1::ServerReflectionRequest;

async fn health(channel: &Channel, service: &str) -> Result<ServingStatus, tonic::Status> {
    let reply = HealthClient::new(channel.clone()).check(HealthCheckRequest { service: service.into() }).await?.into_inner();
    Ok(ServingStatus::try_from(reply.status).expect("a known status"))
}

/// Asks health until `service` reports `want`, for at most 20 s.
async fn wait_health(channel: &Channel, service: &str, want: ServingStatus) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let now = health(channel, service).await;
        if now.as_ref().ok() == Some(&want) {
            return;
        }
        assert!(Instant::now() < deadline, "health of '{service}' never became {want:?}: {now:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection to the server's maintenance database (DATABASE_URL), beside the test's own.
async fn admin_connection() -> PgConnection {
    PgConnection::connect(&std::env::var("DATABASE_URL").expect("DATABASE_URL")).await.unwrap()
}

fn database_name(pool: &PgPool) -> String {
    pool.connect_options().get_database().expect("test database name").to_string()
}

/// Closes the test's database to new connections and ends those open (`open: false`), or opens it again.
async fn set_database_open(pool: &PgPool, open: bool) {
    let db = database_name(pool);
    let mut admin = admin_connection().await;
    sqlx::query(&format!("ALTER DATABASE \"{db}\" WITH ALLOW_CONNECTIONS {open}")).execute(&mut admin).await.unwrap();
    if !open {
        sqlx::query("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()")
            .bind(&db)
            .execute(&mut admin)
            .await
            .unwrap();
    }
}

#[sqlx::test(migrations = false)]
async fn health_is_serving_while_the_database_answers_and_not_serving_while_it_does_not(pool: PgPool) {
    let settings = Settings { health_every: Duration::from_millis(100), ..Settings::default() };
    let c = Coordinator::start(pool.clone(), settings).await;
    for service in ["", "camp.v1.JobService", "camp.v1.WorkerService"] {
        wait_health(&c.channel, service, ServingStatus::Serving).await;
    }
    let unknown = health(&c.channel, "camp.v1.NoSuchService").await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "a service the server does not have: {unknown:?}");

    set_database_open(&pool, false).await;
    for service in ["", "camp.v1.JobService", "camp.v1.WorkerService"] {
        wait_health(&c.channel, service, ServingStatus::NotServing).await;
    }
    set_database_open(&pool, true).await;
    for service in ["", "camp.v1.JobService", "camp.v1.WorkerService"] {
        wait_health(&c.channel, service, ServingStatus::Serving).await;
    }
    // The coordinator serves again, through a new connection to the database.
    let mut jobs = c.jobs_as("ada");
    let job = submit(&mut jobs, spec()).await;
    assert_eq!(job.state, JobState::Queued as i32);
}

/// One reflection request and its answer.
async fn reflect(channel: &Channel, request: MessageRequest) -> MessageResponse {
    let mut client = ServerReflectionClient::new(channel.clone());
    let request = ServerReflectionRequest { host: String::new(), message_request: Some(request) };
    let mut replies = client.server_reflection_info(futures::stream::iter([request])).await.unwrap().into_inner();
    replies.message().await.unwrap().expect("one reply").message_response.expect("an answer")
}

#[sqlx::test(migrations = false)]
async fn health_and_reflection_answer_without_a_token_where_every_other_call_needs_one(pool: PgPool) {
    let settings = Settings { require_auth: true, health_every: Duration::from_millis(100), ..Settings::default() };
    let c = Coordinator::start(pool, settings).await;
    wait_health(&c.channel, "", ServingStatus::Serving).await;
    wait_health(&c.channel, "camp.v1.WorkerService", ServingStatus::Serving).await;
    let refused = JobServiceClient::new(c.channel.clone()).list_jobs(v1::ListJobsRequest::default()).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "JobService still needs a token: {refused:?}");

    // `grpcurl ADDR list`
    let MessageResponse::ListServicesResponse(list) = reflect(&c.channel, MessageRequest::ListServices(String::new())).await else {
        panic!("list_services did not answer with a list");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for want in ["camp.v1.JobService", "camp.v1.WorkerService", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection"] {
        assert!(names.contains(&want), "{want} is not listed: {names:?}");
    }
    // `grpcurl ADDR describe camp.v1.WorkerService`: the file that defines it, with its methods.
    let MessageResponse::FileDescriptorResponse(files) =
        reflect(&c.channel, MessageRequest::FileContainingSymbol("camp.v1.WorkerService".into())).await
    else {
        panic!("file_containing_symbol did not answer with files");
    };
    let methods: Vec<String> = files
        .file_descriptor_proto
        .iter()
        .map(|bytes| prost_types::FileDescriptorProto::decode(bytes.as_slice()).unwrap())
        .flat_map(|f| f.service)
        .filter(|s| s.name() == "WorkerService")
        .flat_map(|s| s.method.into_iter().map(|m| m.name().to_string()))
        .collect();
    for want in ["Register", "Claim", "Heartbeat", "Report", "UploadCheckpoint", "DownloadCheckpoint", "Finish"] {
        assert!(methods.iter().any(|m| m == want), "WorkerService.{want} is not described: {methods:?}");
    }
}

/// The URL of the test's fresh database, for a coordinator process.
fn database_url(pool: &PgPool) -> String {
    let base = std::env::var("DATABASE_URL").expect("DATABASE_URL");
    let (without_query, _) = base.split_once('?').unwrap_or((&base, ""));
    let root = without_query.rsplit_once('/').map_or(without_query, |(r, _)| r);
    format!("{root}/{}", database_name(pool))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `camp-server` process, killed (and its log printed, if the test failed) when dropped.
struct Server {
    child: Child,
    log: std::path::PathBuf,
}

impl Server {
    fn start(dir: &Path, database_url: &str, args: &[&str]) -> Server {
        let log = dir.join("camp-server.log");
        let file = std::fs::File::create(&log).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_camp-server"))
            .args(args)
            .env("DATABASE_URL", database_url)
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        Server { child, log }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("===== camp-server log =====\n{}", std::fs::read_to_string(&self.log).unwrap_or_default());
        }
    }
}

async fn connect(addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Channel::from_shared(addr.to_string()).unwrap().connect().await {
            Ok(channel) => return channel,
            Err(e) => assert!(Instant::now() < deadline, "{addr} never answered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` over HTTP/1.1: the status code and the body.
async fn http_get(port: u16, path: &str) -> (u16, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status code");
    (status, body.to_string())
}

/// A scrape of Prometheus' text format: each series (name and labels) with its value.
struct Scrape(BTreeMap<(String, BTreeMap<String, String>), f64>);

impl Scrape {
    fn parse(text: &str) -> Scrape {
        let mut series = BTreeMap::new();
        for line in text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
            let (key, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
            let (name, labels) = match key.split_once('{') {
                Some((name, rest)) => (name, rest.trim_end_matches('}')),
                None => (key, ""),
            };
            let labels = labels
                .split("\",")
                .filter(|l| !l.is_empty())
                .map(|l| {
                    let (k, v) = l.split_once('=').unwrap_or_else(|| panic!("not a label: {l} in {line}"));
                    (k.to_string(), v.trim_matches('"').to_string())
                })
                .collect();
            series.insert((name.to_string(), labels), value.parse().unwrap_or_else(|_| panic!("not a value: {line}")));
        }
        Scrape(series)
    }

    /// The value of the series `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let labels = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        self.0.get(&(name.to_string(), labels)).copied()
    }
}

async fn register(channel: &Channel, name: &str, datasets: &[&str]) -> Worker {
    let reply = WorkerServiceClient::with_interceptor(channel.clone(), Headers::default())
        .register(v1::RegisterRequest {
            name: name.into(),
            hostname: "test".into(),
            device_kind: "cpu".into(),
            datasets: datasets.iter().map(|d| d.to_string()).collect(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let client = WorkerServiceClient::with_interceptor(channel.clone(), Headers::default().with("x-camp-session", &reply.session));
    Worker { id: reply.worker_id, session: reply.session, client }
}

async fn workers_by_name(jobs: &mut Jobs) -> BTreeMap<String, v1::Worker> {
    let listed = jobs.list_workers(v1::ListWorkersRequest {}).await.unwrap().into_inner().workers;
    listed.into_iter().map(|w| (w.name.clone(), w)).collect()
}

#[sqlx::test(migrations = false)]
async fn metrics_count_claims_reports_checkpoint_bytes_expiries_and_latencies_and_gauge_the_queue(pool: PgPool) {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let _server = Server::start(
        dir.path(),
        &database_url(&pool),
        &[
            "--listen",
            &format!("127.0.0.1:{grpc}"),
            "--metrics-listen",
            &format!("127.0.0.1:{http}"),
            "--metrics-every-secs",
            "0.1",
            "--lease-secs",
            "2",
            "--reap-every-secs",
            "0.1",
        ],
    );
    let channel = connect(&format!("http://127.0.0.1:{grpc}")).await;
    let mut jobs = JobServiceClient::with_interceptor(channel.clone(), Headers::default().with("x-camp-user", "ada"));

    // A job the worker runs to the end: one claim, two report batches (and one re-sent), a checkpoint both ways.
    let first = submit(&mut jobs, spec()).await;
    let cifar100 = submit(&mut jobs, v1::JobSpec { dataset: "cifar100".into(), ..spec() }).await;
    let mut w1 = register(&channel, "w1", &["cifar10"]).await;
    let a = w1.claim(1_000).await.expect("w1 gets the cifar10 job");
    assert_eq!(a.job_id, first.id);
    let listed = workers_by_name(&mut jobs).await;
    assert_eq!((listed["w1"].state, listed["w1"].running_jobs.as_slice()), (v1::WorkerState::Busy as i32, &[first.id][..]));
    let reply = w1.report(vec![batch(a.job_id, a.attempt, 1, 1), batch(a.job_id, a.attempt, 2, 2)]).await.unwrap();
    assert_eq!((reply.stored, reply.duplicates), (2, 0));
    let reply = w1.report(vec![batch(a.job_id, a.attempt, 2, 2)]).await.unwrap();
    assert_eq!((reply.stored, reply.duplicates), (0, 1));
    let bytes: Vec<u8> = (0..1000u32).map(|i| (i % 251) as u8).collect();
    let ckpt = w1.upload(a.job_id, a.attempt, 1, 0.5, &bytes).await.unwrap();
    assert_eq!(w1.download(ckpt.id).await.unwrap(), bytes);
    w1.finish(a.job_id, a.attempt, v1::Outcome::Succeeded).await.unwrap();
    assert!(w1.claim(0).await.is_none(), "nothing else for a cifar10 worker");

    // A job whose worker goes silent: its lease expires and the reaper puts it back in the queue.
    let lost = submit(&mut jobs, spec()).await;
    let mut w2 = register(&channel, "w2", &["cifar10"]).await;
    let b = w2.claim(1_000).await.expect("w2 gets the second cifar10 job");
    assert_eq!(b.job_id, lost.id);
    wait_state(&mut jobs, lost.id, JobState::Queued).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    let scrape = loop {
        w1.heartbeat(&[]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = http_get(http, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        let scrape = Scrape::parse(&body);
        let settled = scrape.get("camp_queue_jobs", &[("device", "any"), ("dataset", "cifar10")]) == Some(1.0)
            && scrape.get("camp_running_jobs", &[]) == Some(0.0)
            && scrape.get("camp_live_workers", &[]) == Some(1.0);
        if settled {
            break scrape;
        }
        assert!(Instant::now() < deadline, "the gauges never settled:\n{body}");
    };
    // ListWorkers (`camp workers`): w1 idle and just heard from, w2 silent for longer than the lease.
    let listed = workers_by_name(&mut jobs).await;
    let (w1, w2) = (&listed["w1"], &listed["w2"]);
    assert_eq!((w1.state, w1.alive, w1.running_jobs.len()), (v1::WorkerState::Idle as i32, true, 0));
    assert!(w1.heartbeat_age_ms < 2_000, "{w1:?}");
    assert_eq!((w2.state, w2.alive), (v1::WorkerState::Silent as i32, false));
    assert!(w2.heartbeat_age_ms >= 2_000, "{w2:?}");
    let counters = [
        ("camp_claims_total", vec![], 2.0),
        ("camp_attempts_finished_total", vec![("outcome", "succeeded")], 1.0),
        ("camp_report_batches_total", vec![], 2.0),
        ("camp_report_points_total", vec![], 2.0),
        ("camp_report_duplicate_batches_total", vec![], 1.0),
        ("camp_checkpoint_uploaded_bytes_total", vec![], 1000.0),
        ("camp_checkpoint_downloaded_bytes_total", vec![], 1000.0),
        ("camp_lease_expiries_total", vec![], 1.0),
        ("camp_requeues_total", vec![], 1.0),
        ("camp_queue_jobs", vec![("device", "any"), ("dataset", "cifar100")], 1.0),
    ];
    for (name, labels, want) in counters {
        assert_eq!(scrape.get(name, &labels), Some(want), "{name}{labels:?}");
    }
    assert!(scrape.get("camp_claims_empty_total", &[]).unwrap_or(0.0) >= 1.0, "w1's claim that found nothing");
    assert_eq!(cifar100.state, JobState::Queued as i32);
    // Every call timed by the one layer, per method and code: two claims that got a job, one that did not.
    let claims = [("method", "camp.v1.WorkerService/Claim"), ("code", "Ok")];
    assert_eq!(scrape.get("camp_rpc_duration_seconds_count", &claims), Some(3.0));
    let mut slowest_bucket = claims.to_vec();
    slowest_bucket.push(("le", "+Inf"));
    assert_eq!(scrape.get("camp_rpc_duration_seconds_bucket", &slowest_bucket), Some(3.0));
    let submits = [("method", "camp.v1.JobService/SubmitJob"), ("code", "Ok")];
    assert_eq!(scrape.get("camp_rpc_duration_seconds_count", &submits), Some(3.0));

    // An error answered at once is counted under its code.
    let refused = jobs.get_job(v1::GetJobRequest { id: 999_999 }).await.unwrap_err();
    assert_eq!(refused.code(), Code::NotFound);
    let (_, body) = http_get(http, "/metrics").await;
    let not_found = [("method", "camp.v1.JobService/GetJob"), ("code", "NotFound")];
    assert_eq!(Scrape::parse(&body).get("camp_rpc_duration_seconds_count", &not_found), Some(1.0), "{body}");

    let (status, _) = http_get(http, "/elsewhere").await;
    assert_eq!(status, 404);
}
