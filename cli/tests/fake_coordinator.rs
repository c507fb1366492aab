//! The `camp` binary against an in-process fake coordinator: paging, request
//! ids and retries, priority, waiting reasons, checkpoint ownership, TLS
//! refusals and numbers, as a user sees them (stdout, stderr, exit code).
//! The fake hands out smaller pages than the contract's bounds allow (which
//! the contract permits: "at most"), so that paging shows with few rows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use camp_proto::v1::job_service_server::{JobService, JobServiceServer};
use camp_proto::v1::*;
use futures::Stream;
use serde_json::Value;
use tonic::{Request, Response, Status};

const JOBS: i64 = 2_500;
/// Pages of the fake: jobs are cut at 40 (as the coordinator cuts a reply by size).
const JOBS_CUT: usize = 40;
const METRICS_PAGE: usize = 7;
const LOGS_PAGE: usize = 5;
const MAX_USER_PRIORITY: i32 = 10;

#[derive(Default)]
struct Seen {
    list_jobs: Vec<(u32, i64)>,
    metric_cursors: Vec<i64>,
    log_cursors: Vec<i64>,
    submit_ids: Vec<String>,
    pipeline_ids: Vec<String>,
    downloads: Vec<(i64, i64)>,
}

#[derive(Default)]
struct State {
    seen: Seen,
    /// SubmitJob answers UNAVAILABLE this many more times.
    unavailable_submits: u32,
    submitted: HashMap<String, Job>,
    metrics: Vec<Metric>,
}

#[derive(Clone, Default)]
struct Fake(Arc<Mutex<State>>);

fn job(id: i64) -> Job {
    Job {
        id,
        name: format!("job-{id}"),
        owner: "ada".into(),
        spec: Some(camp_proto::JobSpec::default().to_proto()),
        state: JobState::Running as i32,
        attempt: 1,
        max_attempts: 3,
        ..Default::default()
    }
}

fn page<T: Clone>(items: &[T], size: usize) -> (Vec<T>, bool) {
    let page: Vec<T> = items.iter().take(size).cloned().collect();
    (page, items.len() > size)
}

type Events = Pin<Box<dyn Stream<Item = Result<JobEvent, Status>> + Send>>;
type Chunks = Pin<Box<dyn Stream<Item = Result<CheckpointChunk, Status>> + Send>>;

#[tonic::async_trait]
impl JobService for Fake {
    async fn submit_job(&self, req: Request<SubmitJobRequest>) -> Result<Response<Job>, Status> {
        let r = req.into_inner();
        let mut state = self.0.lock().unwrap();
        state.seen.submit_ids.push(r.request_id.clone());
        if state.unavailable_submits > 0 {
            state.unavailable_submits -= 1;
            return Err(Status::unavailable("coordinator restarting"));
        }
        let next = 9_000 + state.submitted.len() as i64;
        let job = state.submitted.entry(r.request_id).or_insert_with(|| Job { name: r.name, ..job(next) });
        Ok(Response::new(job.clone()))
    }

    async fn get_job(&self, req: Request<GetJobRequest>) -> Result<Response<Job>, Status> {
        let id = req.get_ref().id;
        Ok(Response::new(Job {
            state: JobState::Queued as i32,
            attempt: 0,
            waiting_reason: "no live worker offers device cuda and data set cifar10".into(),
            ..job(id)
        }))
    }

    async fn list_jobs(&self, req: Request<ListJobsRequest>) -> Result<Response<ListJobsResponse>, Status> {
        let r = req.into_inner();
        self.0.lock().unwrap().seen.list_jobs.push((r.limit, r.before_id));
        let limit = match r.limit {
            0 => 100,
            n if n > 1_000 => return Err(Status::invalid_argument("limit: at most 1000")),
            n => n as usize,
        };
        let ids: Vec<i64> = (1..=JOBS).rev().filter(|&id| r.before_id == 0 || id < r.before_id).take(limit).collect();
        let (ids, cut) = page(&ids, JOBS_CUT);
        let next = if cut || ids.len() == limit { ids.last().copied().unwrap_or(0) } else { 0 };
        Ok(Response::new(ListJobsResponse { jobs: ids.into_iter().map(job).collect(), next_before_id: next }))
    }

    async fn cancel_job(&self, _: Request<CancelJobRequest>) -> Result<Response<Job>, Status> {
        Err(Status::unimplemented("cancel"))
    }

    async fn set_job_priority(&self, req: Request<SetJobPriorityRequest>) -> Result<Response<Job>, Status> {
        let SetJobPriorityRequest { id, priority } = req.into_inner();
        if id > JOBS {
            return Err(Status::not_found(format!("job {id} not found")));
        }
        if priority > MAX_USER_PRIORITY {
            return Err(Status::permission_denied(format!(
                "priority: above {MAX_USER_PRIORITY} (the coordinator's --max-user-priority) needs an admin"
            )));
        }
        Ok(Response::new(Job { priority, state: JobState::Queued as i32, ..job(id) }))
    }

    type WatchJobStream = Events;

    async fn watch_job(&self, _: Request<WatchJobRequest>) -> Result<Response<Events>, Status> {
        Err(Status::unimplemented("watch"))
    }

    async fn query_metrics(&self, req: Request<QueryMetricsRequest>) -> Result<Response<QueryMetricsResponse>, Status> {
        let r = req.into_inner();
        let mut state = self.0.lock().unwrap();
        state.seen.metric_cursors.push(r.after_id);
        let after: Vec<Metric> = state.metrics.iter().filter(|m| m.id > r.after_id).cloned().collect();
        let size = METRICS_PAGE.min(r.limit as usize);
        let (metrics, more) = page(&after, size);
        let next = if more || metrics.len() == size { metrics.last().map_or(0, |m| m.id) } else { 0 };
        Ok(Response::new(QueryMetricsResponse { metrics, next_after_id: next }))
    }

    async fn get_logs(&self, req: Request<GetLogsRequest>) -> Result<Response<GetLogsResponse>, Status> {
        let r = req.into_inner();
        self.0.lock().unwrap().seen.log_cursors.push(r.after_id);
        let all: Vec<LogLine> = (1..=12)
            .map(|id| LogLine { id: id * 10, attempt: 1, at_ms: 0, line: format!("line {id}") })
            .filter(|l| l.id > r.after_id)
            .collect();
        let size = LOGS_PAGE.min(r.limit as usize);
        let (lines, more) = page(&all, size);
        let next = if more { lines.last().map_or(0, |l| l.id) } else { 0 };
        Ok(Response::new(GetLogsResponse { lines, next_after_id: next }))
    }

    async fn list_checkpoints(&self, _: Request<ListCheckpointsRequest>) -> Result<Response<ListCheckpointsResponse>, Status> {
        Err(Status::unimplemented("list checkpoints"))
    }

    type DownloadCheckpointStream = Chunks;

    async fn download_checkpoint(&self, req: Request<DownloadCheckpointRequest>) -> Result<Response<Chunks>, Status> {
        let r = req.into_inner();
        self.0.lock().unwrap().seen.downloads.push((r.checkpoint_id, r.job_id));
        // Checkpoint 9 is job 4's.
        if r.checkpoint_id == 9 && r.job_id != 4 {
            return Err(Status::invalid_argument(format!("checkpoint_id: checkpoint 9 is not a checkpoint of job {}", r.job_id)));
        }
        Err(Status::unimplemented("download"))
    }

    async fn list_workers(&self, _: Request<ListWorkersRequest>) -> Result<Response<ListWorkersResponse>, Status> {
        Ok(Response::new(ListWorkersResponse::default()))
    }

    async fn submit_pipeline(&self, req: Request<SubmitPipelineRequest>) -> Result<Response<Experiment>, Status> {
        let r = req.into_inner();
        self.0.lock().unwrap().seen.pipeline_ids.push(r.request_id);
        let jobs = r.nodes.iter().enumerate().map(|(i, n)| Job { node: n.key.clone(), experiment_id: 5, ..job(100 + i as i64) }).collect();
        Ok(Response::new(Experiment { id: 5, name: r.name, owner: "ada".into(), created_at_ms: 0, jobs }))
    }

    async fn get_experiment(&self, _: Request<GetExperimentRequest>) -> Result<Response<Experiment>, Status> {
        Err(Status::unimplemented("get experiment"))
    }

    async fn list_experiments(&self, _: Request<ListExperimentsRequest>) -> Result<Response<ListExperimentsResponse>, Status> {
        Err(Status::unimplemented("list experiments"))
    }

    async fn cancel_experiment(&self, _: Request<CancelExperimentRequest>) -> Result<Response<Experiment>, Status> {
        Err(Status::unimplemented("cancel experiment"))
    }
}

/// A fake coordinator serving plaintext gRPC on a loopback port until dropped.
struct Coordinator {
    fake: Fake,
    addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl Coordinator {
    fn start() -> Coordinator {
        Coordinator::serve(None)
    }

    /// Serving TLS with this PEM certificate and key.
    fn start_tls(cert: &str, key: &str) -> Coordinator {
        Coordinator::serve(Some(tonic::transport::ServerTlsConfig::new().identity(tonic::transport::Identity::from_pem(cert, key))))
    }

    fn serve(tls: Option<tonic::transport::ServerTlsConfig>) -> Coordinator {
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let fake = Fake::default();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let service = JobServiceServer::new(fake.clone());
        let mut builder = tonic::transport::Server::builder();
        if let Some(tls) = tls {
            builder = builder.tls_config(tls).unwrap();
        }
        runtime.spawn(async move {
            builder.add_service(service).serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)).await
        });
        Coordinator { fake, addr, _runtime: runtime }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.fake.0.lock().unwrap()
    }

    fn http(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `camp --addr http://... ARGS`.
    fn camp(&self, args: &[&str]) -> Output {
        camp(&[&["--addr", &self.http()], args].concat())
    }

    /// `camp ARGS --json`, which must succeed.
    fn json(&self, args: &[&str]) -> Value {
        let out = self.camp(&[args, &["--json"]].concat());
        assert!(out.status.success(), "camp {args:?}: {}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("camp {args:?}: not JSON ({e}): {}", stdout(&out)))
    }
}

fn camp(args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_camp"));
    for var in ["CAMP_ADDR", "CAMP_USER", "CAMP_TOKEN", "CAMP_CA", "CAMP_TLS_CERT", "CAMP_TLS_KEY"] {
        cmd.env_remove(var);
    }
    cmd.args(["--user", "ada"]).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ids(jobs: &Value) -> Vec<i64> {
    jobs.as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect()
}

#[test]
fn jobs_are_fetched_a_page_at_a_time_up_to_the_limit() {
    let c = Coordinator::start();
    let newest = ids(&c.json(&["jobs"]));
    assert_eq!(newest, (2_401..=JOBS).rev().collect::<Vec<_>>(), "the newest 100 by default");
    let seen = std::mem::take(&mut c.state().seen.list_jobs);
    assert_eq!(seen, [(100, 0), (60, 2_461), (20, 2_421)], "each page asks for what is left, before the last id");

    let many = ids(&c.json(&["jobs", "--limit", "1500"]));
    assert_eq!(many, (1_001..=JOBS).rev().collect::<Vec<_>>());
    let seen = std::mem::take(&mut c.state().seen.list_jobs);
    assert!(seen.iter().all(|&(limit, _)| (1..=1_000).contains(&limit)), "{seen:?}");

    let all = ids(&c.json(&["jobs", "--limit", "100000"]));
    assert_eq!(all.len(), JOBS as usize, "stops when the coordinator has no more");

    let table = stdout(&c.camp(&["jobs", "--limit", "3"]));
    assert_eq!(table.lines().count(), 1 + 3, "{table}");
}

#[test]
fn jobs_all_pages_past_the_newest_hundred_and_before_starts_below_an_id() {
    let c = Coordinator::start();
    let all = ids(&c.json(&["jobs", "--all"]));
    assert_eq!(all, (1..=JOBS).rev().collect::<Vec<_>>(), "every job, newest first");
    let older = ids(&c.json(&["jobs", "--before", "1001", "--limit", "5"]));
    assert_eq!(older, [1_000, 999, 998, 997, 996]);
    assert_eq!(c.state().seen.list_jobs.iter().rev().find(|(_, before)| *before == 1_001).map(|&(limit, _)| limit), Some(5));
    let clash = c.camp(&["jobs", "--all", "--limit", "5"]);
    assert_eq!(clash.status.code(), Some(2), "--all and --limit do not go together");
}

#[test]
fn logs_and_metrics_come_whole_across_pages_metrics_as_stored() {
    let c = Coordinator::start();
    // Stored order; the second attempt re-reports steps 10..40 after the first reached 60.
    c.state().metrics = [10, 20, 30, 40, 50, 60, 10, 20, 30, 40, 70, 80, 90, 100, 110]
        .iter()
        .enumerate()
        .map(|(i, &step)| Metric {
            id: 100 + i as i64,
            name: "loss".into(),
            value: 1.0,
            step,
            attempt: 1 + (i >= 6) as u32,
            ..Default::default()
        })
        .collect();
    let metrics = c.json(&["metrics", "1"]);
    let rows: Vec<(i64, u64)> =
        metrics.as_array().unwrap().iter().map(|m| (m["step"].as_i64().unwrap(), m["attempt"].as_u64().unwrap())).collect();
    assert_eq!(rows.len(), 15, "every page");
    // Printed page by page as they come (a job may hold millions): in stored order.
    assert_eq!(&rows[4..8], [(50, 1), (60, 1), (10, 2), (20, 2)], "as stored");
    assert_eq!(c.state().seen.metric_cursors, [0, 106, 113]);

    let csv = stdout(&c.camp(&["metrics", "1", "--csv"]));
    assert_eq!(csv.lines().count(), 1 + 15, "{csv}");

    let logs = c.camp(&["logs", "1"]);
    assert!(logs.status.success(), "{}", stderr(&logs));
    let lines: Vec<String> = stdout(&logs).lines().map(str::to_owned).collect();
    assert_eq!(lines.len(), 12, "{lines:?}");
    assert_eq!((lines[0].as_str(), lines[11].as_str()), ("[attempt 1] line 1", "[attempt 1] line 12"));
    assert_eq!(c.state().seen.log_cursors, [0, 50, 100]);
}

#[test]
fn huge_tiny_and_non_finite_metrics_stay_short_and_representable() {
    let c = Coordinator::start();
    c.state().metrics = [1e308, 1e-300, f64::NAN, f64::INFINITY, f64::NEG_INFINITY, 0.5]
        .iter()
        .enumerate()
        .map(|(i, &value)| Metric { id: i as i64 + 1, step: i as i64, name: format!("m{i}"), value, ..Default::default() })
        .collect();
    let json = c.json(&["metrics", "1"]);
    let values: Vec<Value> = json.as_array().unwrap().iter().map(|m| m["value"].clone()).collect();
    assert_eq!(values[0].as_f64(), Some(1e308));
    assert_eq!(values[1].as_f64(), Some(1e-300));
    assert_eq!(&values[2..5], [Value::from("NaN"), Value::from("inf"), Value::from("-inf")]);
    assert_eq!(values[5].as_f64(), Some(0.5));

    let table = stdout(&c.camp(&["metrics", "1"]));
    let shown: Vec<&str> = table.lines().skip(1).map(|l| l.split_whitespace().nth(4).unwrap()).collect();
    assert_eq!(shown, ["1e308", "1e-300", "-", "inf", "-inf", "0.5000"], "{table}");
    let csv = stdout(&c.camp(&["metrics", "1", "--csv"]));
    let values: Vec<&str> = csv.lines().skip(1).map(|l| l.rsplit(',').next().unwrap()).collect();
    assert_eq!(values, ["1e308", "1e-300", "NaN", "inf", "-inf", "0.5"], "{csv}");
}

#[test]
fn a_submission_is_retried_under_one_request_id() {
    let c = Coordinator::start();
    c.state().unavailable_submits = 2;
    let out = c.camp(&["submit", "baseline", "-a", "preact_resnet20_cifar", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let job: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(job["id"], 9_000);
    assert_eq!(stderr(&out).matches("trying again").count(), 2, "{}", stderr(&out));
    let seen = std::mem::take(&mut c.state().seen.submit_ids);
    assert_eq!(seen.len(), 3);
    assert!(seen.iter().all(|id| id == &seen[0]), "one key for every try: {seen:?}");
    assert_eq!(uuid_version(&seen[0]), Some(4), "{}", seen[0]);

    // A new run is a new submission; a repeated key is the same one.
    let again = c.json(&["submit", "baseline", "-a", "preact_resnet20_cifar"]);
    assert_eq!(again["id"], 9_001);
    let given = c.json(&["submit", "baseline", "-a", "preact_resnet20_cifar", "--request-id", "nightly-7"]);
    let repeated = c.json(&["submit", "baseline", "-a", "preact_resnet20_cifar", "--request-id", "nightly-7"]);
    assert_eq!(given["id"], repeated["id"]);
    let seen = std::mem::take(&mut c.state().seen.submit_ids);
    assert_ne!(seen[0], seen[1]);
    assert_eq!(&seen[1..], ["nightly-7", "nightly-7"]);

    // Unavailable throughout: gives up after three tries, exit 6.
    c.state().unavailable_submits = 10;
    let out = c.camp(&["submit", "baseline", "-a", "preact_resnet20_cifar"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert_eq!(c.state().seen.submit_ids.len(), 3);
    assert!(stderr(&out).trim_end().lines().last().unwrap().starts_with("error: coordinator restarting"), "{}", stderr(&out));

    let out = c.camp(&["submit", "baseline", "-a", "preact_resnet20_cifar", "--request-id", "bad\tkey"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--request-id"), "{}", stderr(&out));
}

fn uuid_version(text: &str) -> Option<u32> {
    let parts: Vec<&str> = text.split('-').collect();
    (parts.len() == 5 && text.len() == 36).then(|| parts[2].chars().next()?.to_digit(16))?
}

#[test]
fn pipeline_submissions_carry_a_request_id() {
    let c = Coordinator::start();
    let experiment = c.json(&["pipeline", "camp", "-a", "preact_resnet20_cifar", "--alphas", "0.1", "--request-id", "camp-r20"]);
    assert_eq!(experiment["jobs"].as_array().unwrap().len(), 5);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("p.yaml");
    std::fs::write(&file, "name: p\nnodes:\n  - key: base\n    spec: {stage: baseline, arch: preact_resnet20_cifar, dataset: cifar10}\n")
        .unwrap();
    c.json(&["pipeline", "submit", file.to_str().unwrap()]);
    let seen = c.state().seen.pipeline_ids.clone();
    assert_eq!(seen[0], "camp-r20");
    assert_eq!(uuid_version(&seen[1]), Some(4), "{seen:?}");
}

#[test]
fn priority_prints_the_job_and_refusals_keep_their_exit_codes() {
    let c = Coordinator::start();
    let out = c.camp(&["priority", "12", "-5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    let line = text.lines().find(|l| l.starts_with("priority ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with(" -5"), "{text}");
    assert!(text.lines().next().unwrap().ends_with(" 12"), "shown as `camp show` shows it: {text}");
    assert_eq!(c.json(&["priority", "12", "7"])["priority"], 7);

    let out = c.camp(&["priority", "12", "99"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(stderr(&out).contains("needs an admin"), "{}", stderr(&out));
    assert_eq!(c.camp(&["priority", "999999", "1"]).status.code(), Some(3));
}

#[test]
fn show_says_why_a_queued_job_waits() {
    let c = Coordinator::start();
    let text = stdout(&c.camp(&["show", "8"]));
    let line = text.lines().find(|l| l.starts_with("waiting ")).unwrap_or_else(|| panic!("{text}"));
    assert!(line.ends_with("no live worker offers device cuda and data set cifar10"), "{line}");
    assert_eq!(c.json(&["show", "8"])["waiting_reason"], "no live worker offers device cuda and data set cifar10");
}

#[test]
fn a_checkpoint_is_downloaded_only_from_its_own_job() {
    let c = Coordinator::start();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("x.safetensors");
    let out = c.camp(&["checkpoint", "download", "3", "--checkpoint", "9", "-o", path.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert_eq!(stderr(&out).trim_end(), "error: checkpoint_id: checkpoint 9 is not a checkpoint of job 3");
    assert_eq!(c.state().seen.downloads, [(9, 3)]);
    assert!(!path.exists());
}

#[test]
fn https_to_a_plaintext_coordinator_fails_in_one_line_without_falling_back() {
    let c = Coordinator::start();
    let https = format!("https://{}", c.addr);
    let out = camp(&["--addr", &https, "jobs"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.starts_with(&format!("error: cannot reach the coordinator at {https} over TLS")), "{err}");
    assert!(err.contains("http://"), "says what a plaintext coordinator takes: {err}");
    assert!(c.state().seen.list_jobs.is_empty(), "no plaintext fallback");

    // Submissions retry, but over TLS only.
    let out = camp(&["--addr", &https, "submit", "baseline", "-a", "preact_resnet20_cifar"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    assert!(c.state().seen.submit_ids.is_empty());
}

#[test]
fn tls_options_are_usage_errors_where_they_cannot_apply() {
    let c = Coordinator::start();
    let out = c.camp(&["--ca", "/etc/camp/ca.pem", "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("need an https:// address"), "{}", stderr(&out));
    let out =
        Command::new(env!("CARGO_BIN_EXE_camp")).args(["--addr", &c.http(), "jobs"]).env("CAMP_CA", "/etc/camp/ca.pem").output().unwrap();
    assert_eq!(out.status.code(), Some(2), "CAMP_CA counts too: {}", stderr(&out));

    let https = format!("https://{}", c.addr);
    let out = camp(&["--addr", &https, "--ca", "/nonexistent/ca.pem", "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--ca /nonexistent/ca.pem"), "{}", stderr(&out));
    let out = camp(&["--addr", &https, "--tls-cert", "/nonexistent/me.pem", "jobs"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(c.state().seen.list_jobs.is_empty());
}

/// A throwaway CA and a certificate it signs for 127.0.0.1: (CA PEM, certificate PEM, key PEM).
fn pki(ca_name: &str) -> (String, String, String) {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(rcgen::DnType::CommonName, ca_name);
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::DigitalSignature];
    let ca = rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca).unwrap();
    (ca.pem(), cert.pem(), key.serialize_pem())
}

#[test]
fn https_with_the_right_ca_reaches_a_tls_coordinator_and_a_wrong_one_does_not() {
    let (ca, cert, key) = pki("camp test CA");
    let (other_ca, _, _) = pki("someone else's CA");
    let c = Coordinator::start_tls(&cert, &key);
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, pem: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_owned()
    };
    let (ca, other_ca) = (write("ca.pem", &ca), write("other.pem", &other_ca));
    let https = format!("https://{}", c.addr);

    let out = camp(&["--addr", &https, "--ca", &ca, "jobs", "--limit", "2", "--json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(ids(&serde_json::from_slice(&out.stdout).unwrap()), [2_500, 2_499]);
    let out = Command::new(env!("CARGO_BIN_EXE_camp"))
        .args(["--addr", &https, "--user", "ada", "show", "3", "--json"])
        .env("CAMP_CA", &ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "CAMP_CA: {}", stderr(&out));

    let out = camp(&["--addr", &https, "--ca", &other_ca, "jobs"]);
    assert_eq!(out.status.code(), Some(6), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("over TLS") && err.to_lowercase().contains("certificate"), "{err}");
}

#[test]
fn plaintext_to_a_tls_coordinator_is_told_to_use_https() {
    let (_, cert, key) = pki("camp test CA");
    let c = Coordinator::start_tls(&cert, &key);
    let out = c.camp(&["jobs"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(6), "unreachable: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "a message, not a silent death by SIGPIPE: {:?} {err}", out.status);
    assert!(err.contains("use an https:// address"), "{:?} {err}", out.status);
    assert!(c.state().seen.list_jobs.is_empty());
}

#[test]
fn a_reader_that_goes_away_ends_camp_quietly() {
    use std::os::unix::process::ExitStatusExt;
    use std::process::Stdio;
    let c = Coordinator::start();
    let mut child = Command::new(env!("CARGO_BIN_EXE_camp"))
        .args(["--addr", &c.http(), "--user", "ada", "jobs", "--limit", "2500", "--json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.signal(), Some(libc::SIGPIPE), "{:?}", out.status);
    assert_eq!(stderr(&out), "", "quietly");
}
