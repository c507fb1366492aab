//! A coordinator behind its trust boundary, as real processes: tokens made
//! with `camp-server token`, TLS with a client CA (mutual TLS for workers),
//! `--require-auth`, and the refusals an operator relies on.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use camp_e2e::grpc::{self, Headers};
use camp_e2e::{bin, camp_server, database_url, Cluster, Proc};
use camp_proto::endpoint::ClientTls;
use camp_proto::v1::{self, JobState};
use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose};
use serde_json::Value;
use sqlx::PgPool;
use tonic::Code;

const MINUTE: Duration = Duration::from_secs(60);

/// A throwaway CA, the coordinator's certificate (127.0.0.1 and localhost) and a worker's client certificate.
struct Pki {
    ca: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
    worker_cert: PathBuf,
    worker_key: PathBuf,
}

fn ca(name: &str) -> (rcgen::Certificate, Issuer<'static, KeyPair>) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    let cert = params.self_signed(&key).unwrap();
    (cert, Issuer::new(params, key))
}

fn leaf(issuer: &Issuer<'static, KeyPair>, names: &[&str], purpose: ExtendedKeyUsagePurpose) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![purpose];
    (params.signed_by(&key, issuer).unwrap().pem(), key.serialize_pem())
}

impl Pki {
    fn write(dir: &Path) -> Pki {
        let (ca_cert, issuer) = ca("camp e2e CA");
        let (server_cert, server_key) = leaf(&issuer, &["127.0.0.1", "localhost"], ExtendedKeyUsagePurpose::ServerAuth);
        let (worker_cert, worker_key) = leaf(&issuer, &["rack1"], ExtendedKeyUsagePurpose::ClientAuth);
        let put = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path
        };
        Pki {
            ca: put("ca.pem", &ca_cert.pem()),
            server_cert: put("server.pem", &server_cert),
            server_key: put("server.key", &server_key),
            worker_cert: put("worker.pem", &worker_cert),
            worker_key: put("worker.key", &worker_key),
        }
    }

    fn server_args(&self) -> Vec<String> {
        [
            "--require-auth",
            "--tls-cert",
            self.server_cert.to_str().unwrap(),
            "--tls-key",
            self.server_key.to_str().unwrap(),
            "--tls-client-ca",
            self.ca.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn client(&self) -> ClientTls {
        ClientTls { ca: Some(self.ca.clone()), ..ClientTls::default() }
    }
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A coordinator with --require-auth and mutual TLS for workers.
fn secure_cluster(pool: &PgPool) -> (Cluster, Pki) {
    let dir = tempfile::tempdir().unwrap();
    let pki = Pki::write(dir.path());
    let args = pki.server_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let c = Cluster::start_in(dir, pool, 10.0, &args);
    (c, pki)
}

fn https(c: &Cluster) -> String {
    format!("https://127.0.0.1:{}", c.port)
}

/// Runs the `camp` CLI against `addr`, with nothing taken from the test's environment.
fn camp(addr: &str, args: &[&str]) -> std::process::Output {
    let mut cmd = Command::new(bin("camp"));
    for var in ["CAMP_ADDR", "CAMP_USER", "CAMP_TOKEN", "CAMP_CA", "CAMP_TLS_CERT", "CAMP_TLS_KEY"] {
        cmd.env_remove(var);
    }
    cmd.arg("--addr").arg(addr).args(args).output().unwrap()
}

/// Waits for a worker process to give up, and returns its log.
fn refused_worker(mut worker: Proc, within: Duration) -> String {
    let started = Instant::now();
    let status = worker.wait_exit(within);
    let log = worker.log_text();
    let error = log.lines().find(|l| l.starts_with("Error:")).unwrap_or("(no error line)");
    println!("{} exited {status} after {:.2} s: {error}", worker.name, started.elapsed().as_secs_f64());
    assert!(!status.success(), "{} must exit non-zero: {log}", worker.name);
    log
}

#[sqlx::test(migrations = false)]
async fn a_job_runs_end_to_end_on_a_cluster_with_tokens_and_mutual_tls(pool: PgPool) {
    let (c, pki) = secure_cluster(&pool);
    let alice = c.token(&["--user", "alice"]);
    let worker_token = c.token(&["--worker", "--name", "rack1"]);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let _worker = c.worker_with(
        "rack1-w",
        &https(&c),
        &["--token", &worker_token, "--ca", s(&pki.ca), "--tls-cert", s(&pki.worker_cert), "--tls-key", s(&pki.worker_key)],
    );

    let started = Instant::now();
    let channel = grpc::connect(&https(&c), &pki.client()).await.expect("a TLS connection with the test CA");
    let mut jobs = grpc::jobs(channel.clone(), Headers::default().bearer(&alice));
    let job = jobs
        .submit_job(v1::SubmitJobRequest { spec: Some(grpc::tiny_spec(2)), name: "secure".into(), ..Default::default() })
        .await
        .expect("alice submits over TLS")
        .into_inner();
    assert_eq!(job.owner, "alice", "the owner is the token's user");
    let done = grpc::wait_job(&mut jobs, job.id, 3 * MINUTE, "the end", |j| {
        ![JobState::Queued as i32, JobState::Running as i32].contains(&j.state)
    })
    .await;
    println!("secure cluster: a 2-epoch job succeeded in {:.1} s (TLS, tokens, mutual TLS)", started.elapsed().as_secs_f64());
    assert_eq!(done.state, JobState::Succeeded as i32, "{done:?}\n{}", _worker.log_text());
    assert_eq!(done.worker, "", "no worker holds a finished job");
    let result = done.result.as_ref().expect("a result summary");
    assert!((0.0..=1.0).contains(&result.best_top1) && result.epochs == 2, "{result:?}");

    let workers = jobs.list_workers(v1::ListWorkersRequest {}).await.expect("ListWorkers").into_inner().workers;
    assert_eq!(workers.iter().map(|w| w.name.as_str()).collect::<Vec<_>>(), ["rack1-w"]);
    let ckpts =
        jobs.list_checkpoints(v1::ListCheckpointsRequest { job_id: job.id }).await.expect("ListCheckpoints").into_inner().checkpoints;
    let latest = ckpts.iter().max_by_key(|k| k.epoch).expect("checkpoints were uploaded over mutual TLS");
    let bytes = grpc::download(&mut jobs, latest.id).await.expect("alice downloads over TLS");
    assert_eq!(grpc::sha256_hex(&bytes), latest.sha256);
    assert_eq!(camp_worker::checkpoint::verify(&bytes).expect("a loadable checkpoint").epoch, 2);

    // The `camp` CLI over TLS, as alice: with the CA it reads the job and downloads its checkpoint;
    // without it the coordinator's certificate is not trusted.
    let show = camp(&https(&c), &["--ca", s(&pki.ca), "--token", &alice, "show", &job.id.to_string(), "--json"]);
    assert!(show.status.success(), "camp show over TLS: {}", String::from_utf8_lossy(&show.stderr));
    let shown: Value = serde_json::from_slice(&show.stdout).expect("show --json is JSON");
    assert_eq!((shown["state"].as_str(), shown["owner"].as_str()), (Some("succeeded"), Some("alice")), "{shown}");
    let file = c.dir.path().join("latest.safetensors");
    let download =
        camp(&https(&c), &["--ca", s(&pki.ca), "--token", &alice, "checkpoint", "download", &job.id.to_string(), "-o", s(&file)]);
    assert!(download.status.success(), "camp checkpoint download over TLS: {}", String::from_utf8_lossy(&download.stderr));
    assert_eq!(grpc::sha256_hex(&std::fs::read(&file).unwrap()), latest.sha256);
    let untrusted = camp(&https(&c), &["--token", &alice, "show", &job.id.to_string()]);
    assert_eq!(untrusted.status.code(), Some(6), "no --ca: the private CA is not trusted: {}", String::from_utf8_lossy(&untrusted.stderr));

    // The same coordinator, asked without a token or over plaintext.
    let anonymous = grpc::jobs(channel, Headers::user("alice")).list_jobs(v1::ListJobsRequest::default()).await;
    assert_eq!(anonymous.map(|_| ()).unwrap_err().code(), Code::Unauthenticated, "x-camp-user is no credential here");
    let plaintext = match grpc::connect(&c.addr, &ClientTls::default()).await {
        Ok(ch) => grpc::jobs(ch, Headers::default().bearer(&alice))
            .list_jobs(v1::ListJobsRequest::default())
            .await
            .map(|_| ())
            .map_err(|s| s.to_string()),
        Err(e) => Err(e),
    };
    assert!(plaintext.is_err(), "plaintext gRPC against the TLS port does not get through");
}

#[sqlx::test(migrations = false)]
async fn a_worker_without_a_client_certificate_cannot_register(pool: PgPool) {
    let (c, pki) = secure_cluster(&pool);
    let worker_token = c.token(&["--worker", "--name", "rack1"]);
    let worker = c.worker_with("no-cert", &https(&c), &["--token", &worker_token, "--ca", s(&pki.ca)]);
    let log = refused_worker(worker, MINUTE);
    assert!(log.contains("register") && log.contains("client certificate"), "the log says why: {log}");

    // A certificate from another CA does not do either.
    let stranger = tempfile::tempdir().unwrap();
    let (_, other_ca) = ca("someone else's CA");
    let (cert, key) = leaf(&other_ca, &["rack1"], ExtendedKeyUsagePurpose::ClientAuth);
    std::fs::write(stranger.path().join("w.pem"), cert).unwrap();
    std::fs::write(stranger.path().join("w.key"), key).unwrap();
    let worker = c.worker_with(
        "foreign-cert",
        &https(&c),
        &[
            "--token",
            &worker_token,
            "--ca",
            s(&pki.ca),
            "--tls-cert",
            s(&stranger.path().join("w.pem")),
            "--tls-key",
            s(&stranger.path().join("w.key")),
        ],
    );
    let log = refused_worker(worker, MINUTE);
    assert!(log.contains("register"), "the log says which call failed: {log}");
}

#[sqlx::test(migrations = false)]
async fn a_worker_holding_a_user_token_is_refused(pool: PgPool) {
    let (c, pki) = secure_cluster(&pool);
    let alice = c.token(&["--user", "alice"]);
    let worker = c.worker_with(
        "with-alices-token",
        &https(&c),
        &["--token", &alice, "--ca", s(&pki.ca), "--tls-cert", s(&pki.worker_cert), "--tls-key", s(&pki.worker_key)],
    );
    let log = refused_worker(worker, MINUTE);
    assert!(log.contains("PermissionDenied") && log.contains("worker credential"), "the log says why: {log}");

    // And with no token at all.
    let worker =
        c.worker_with("no-token", &https(&c), &["--ca", s(&pki.ca), "--tls-cert", s(&pki.worker_cert), "--tls-key", s(&pki.worker_key)]);
    let log = refused_worker(worker, MINUTE);
    assert!(log.contains("Unauthenticated") && log.contains("API token"), "the log says why: {log}");
}

#[sqlx::test(migrations = false)]
async fn a_plaintext_worker_address_against_the_tls_port_fails_loudly(pool: PgPool) {
    let (c, pki) = secure_cluster(&pool);
    let worker_token = c.token(&["--worker", "--name", "rack1"]);
    // TLS options with an http:// address: refused before anything is sent.
    let worker = c.worker_with(
        "http-with-tls-options",
        &c.addr,
        &["--token", &worker_token, "--ca", s(&pki.ca), "--tls-cert", s(&pki.worker_cert), "--tls-key", s(&pki.worker_key)],
    );
    let log = refused_worker(worker, Duration::from_secs(20));
    assert!(log.contains("https://"), "the log points at the scheme: {log}");
    // No TLS options: plaintext HTTP/2 meets a TLS listener and fails, at once rather than hanging.
    let worker = c.worker_with("plaintext", &c.addr, &["--token", &worker_token]);
    let log = refused_worker(worker, Duration::from_secs(30));
    assert!(log.contains("register") && log.contains("use an https:// address"), "the log says what to do: {log}");
}

#[sqlx::test(migrations = false)]
async fn token_names_that_are_empty_or_not_plain_are_refused_naming_the_flag(pool: PgPool) {
    let url = database_url(&pool);
    let long = "a".repeat(65);
    for (args, flag) in [
        (vec!["token", "--user", ""], "--user"),
        (vec!["token", "--user", "a b"], "--user"),
        (vec!["token", "--user=-alice"], "--user"),
        (vec!["token", "--user", &long], "--user"),
        (vec!["token", "--worker", "--name", "rack 1"], "--name"),
    ] {
        let out = camp_server(&url, &args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must be refused: {err}");
        assert!(err.contains(flag), "{args:?}: the message names {flag}: {err}");
        assert!(out.stdout.is_empty(), "{args:?}: no token printed");
    }
    let out = camp_server(&url, &["token", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(listed, Value::Array(vec![]), "nothing was stored");
}

fn token_list(c: &Cluster) -> Vec<Value> {
    let out = c.camp_server(&["token", "list", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice::<Value>(&out.stdout).expect("token list --json is JSON").as_array().expect("an array").clone()
}

#[sqlx::test(migrations = false)]
async fn token_list_shows_roles_and_a_revoked_token_is_refused_from_the_next_call(pool: PgPool) {
    let c = Cluster::start_with(&pool, 10.0, &["--require-auth"]);
    let alice = c.token(&["--user", "alice"]);
    let root = c.token(&["--user", "root", "--admin"]);
    let _rack = c.token(&["--worker", "--name", "rack1"]);
    let listed = token_list(&c);
    let roles: Vec<(&str, &str)> = listed.iter().map(|t| (t["role"].as_str().unwrap(), t["name"].as_str().unwrap())).collect();
    assert_eq!(roles, [("user", "alice"), ("admin", "root"), ("worker", "rack1")]);
    assert!(listed.iter().all(|t| t["revoked_at"].is_null() && t["expires_at"].is_null() && t["id"].is_i64()), "{listed:?}");
    assert!(!serde_json::to_string(&listed).unwrap().contains(&alice), "the list never shows a token");

    let channel = grpc::channel(&c.addr).await;
    let mut as_alice = grpc::jobs(channel.clone(), Headers::default().bearer(&alice));
    let mut as_root = grpc::jobs(channel, Headers::default().bearer(&root));
    as_alice.list_jobs(v1::ListJobsRequest::default()).await.expect("alice's token works");

    let id = listed[0]["id"].as_i64().unwrap().to_string();
    let out = c.camp_server(&["token", "revoke", &id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let refused = as_alice.list_jobs(v1::ListJobsRequest::default()).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("revoked"), "{refused:?}");
    as_root.list_jobs(v1::ListJobsRequest::default()).await.expect("the other tokens still work");
    let listed = token_list(&c);
    assert!(listed[0]["revoked_at"].is_string() && listed[1]["revoked_at"].is_null(), "{listed:?}");
    let unknown = c.camp_server(&["token", "revoke", "424242"]);
    assert!(!unknown.status.success(), "revoking an unknown id fails");
}

/// Long enough for `camp-server token` to start and the first call to arrive on a busy 2-core machine.
const EXPIRES_SECS: u64 = 3;

#[sqlx::test(migrations = false)]
async fn a_token_with_an_expiry_works_until_then_and_is_refused_after(pool: PgPool) {
    let c = Cluster::start_with(&pool, 10.0, &["--require-auth"]);
    let channel = grpc::channel(&c.addr).await;
    let made = Instant::now();
    let bob = c.token(&["--user", "bob", "--expires", &format!("{EXPIRES_SECS}s")]);
    let mut as_bob = grpc::jobs(channel, Headers::default().bearer(&bob));
    let first = as_bob.list_jobs(v1::ListJobsRequest::default()).await;
    println!("an expiring token was made and first used within {:.2} s", made.elapsed().as_secs_f64());
    first.expect("a fresh token with an expiry works at once");
    assert!(token_list(&c)[0]["expires_at"].is_string());

    tokio::time::sleep_until((made + Duration::from_secs(EXPIRES_SECS) + Duration::from_millis(500)).into()).await;
    let refused = as_bob.list_jobs(v1::ListJobsRequest::default()).await.map(|_| ()).unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated, "{refused:?}");
    assert!(refused.message().contains("expired"), "{refused:?}");

    let out = c.camp_server(&["token", "--user", "bob", "--expires", "soon"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--expires"), "a bad duration names the flag");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn start_server(url: &str, dir: &Path, name: &str, args: &[&str]) -> Proc {
    let mut cmd = Command::new(bin("camp-server"));
    cmd.arg("--database-url").arg(url).args(args).env_remove("CAMP_REQUIRE_AUTH").env_remove("CAMP_LISTEN");
    Proc::spawn(name, cmd, dir)
}

fn wait_listening(server: &mut Proc, port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(status) = server.child.try_wait().unwrap() {
            panic!("{} exited ({status}) instead of listening:\n{}", server.name, server.log_text());
        }
        assert!(Instant::now() < deadline, "{} did not start:\n{}", server.name, server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[sqlx::test(migrations = false)]
async fn listening_beyond_loopback_needs_require_auth_or_insecure_listen(pool: PgPool) {
    let url = database_url(&pool);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let everywhere = format!("0.0.0.0:{port}");

    let mut open = start_server(&url, dir.path(), "open", &["--listen", &everywhere]);
    let status = open.wait_exit(MINUTE);
    let log = open.log_text();
    assert!(!status.success(), "no --require-auth on 0.0.0.0: refused to start: {log}");
    assert!(
        log.contains("--require-auth") && log.contains("--insecure-listen") && log.contains("loopback"),
        "the message says what to do: {log}"
    );

    let mut insecure = start_server(&url, dir.path(), "insecure", &["--listen", &everywhere, "--insecure-listen"]);
    wait_listening(&mut insecure, port);
    assert!(insecure.log_text().contains("--insecure-listen: anyone"), "it starts, warning: {}", insecure.log_text());
    list_as(&format!("http://127.0.0.1:{port}"), Headers::user("someone")).await.expect("it serves");
    drop(insecure);

    let port = free_port();
    let mut authed = start_server(&url, dir.path(), "authed", &["--listen", &format!("0.0.0.0:{port}"), "--require-auth"]);
    wait_listening(&mut authed, port);
    let refused = list_as(&format!("http://127.0.0.1:{port}"), Headers::user("someone")).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(authed.log_text().contains("without TLS"), "it warns that tokens cross in clear: {}", authed.log_text());
}

async fn list_as(addr: &str, headers: Headers) -> Result<v1::ListJobsResponse, tonic::Status> {
    grpc::jobs(grpc::channel(addr).await, headers).list_jobs(v1::ListJobsRequest::default()).await.map(tonic::Response::into_inner)
}
