//! The dashboard's HTTP interface, spoken to over a real socket as a browser
//! (or a hostile page) would: the session cookie, the write header, who may
//! read and cancel what, bad parameters refused by name, and charts that draw
//! every stored point or a sample of a long series. The pages themselves are
//! driven in a real browser by the e2e tests (e2e/tests/dashboard.rs).

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use camp_proto::v1::{self, JobState};
use camp_server::auth::Access;
use camp_server::store::Role;
use camp_server::Settings;
use common::*;
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// One HTTP/1.1 exchange's answer.
struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: String,
    bytes: Vec<u8>,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
    fn headers_named(&self, name: &str) -> Vec<&str> {
        self.headers.iter().filter(|(k, _)| k == name).map(|(_, v)| v.as_str()).collect()
    }
    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {} {:?} {}", self.status, self.headers, self.body))
    }
    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }
    /// The cookie a `Set-Cookie` header sets (its `name=value`).
    fn cookie(&self) -> String {
        let set = self.headers_named("set-cookie");
        let kept = set.iter().find(|c| !c.contains("Max-Age=0")).unwrap_or_else(|| panic!("no cookie set: {set:?}"));
        kept.split(';').next().unwrap().to_string()
    }
}

/// A request with `Connection: close`, read to its end (within 10 s).
async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut request = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n", body.len());
    for (k, v) in headers {
        request.push_str(&format!("{k}: {v}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(body);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut raw)).await.expect("an answer within 10 s").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap_or(raw.len());
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let rest = raw.get(split + 4..).unwrap_or_default();
    let mut lines = head.lines();
    let status = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers = lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string())).collect();
    let chunked = head.to_ascii_lowercase().contains("transfer-encoding: chunked");
    let bytes = if chunked { dechunk(rest) } else { rest.to_vec() };
    Reply { status, headers, body: String::from_utf8_lossy(&bytes).into_owned(), bytes }
}

fn dechunk(mut body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = body.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&body[..eol]).trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.extend_from_slice(&body[eol + 2..eol + 2 + n]);
        body = &body[eol + 2 + n + 2..];
    }
    out
}

async fn http_get(addr: SocketAddr, path: &str, cookie: &str) -> Reply {
    http(addr, "GET", path, &[("cookie", cookie)], "").await
}

async fn http_post(addr: SocketAddr, path: &str, cookie: &str, body: &str) -> Reply {
    http(addr, "POST", path, &[("cookie", cookie), ("x-camp-csrf", "1"), ("content-type", "application/json")], body).await
}

async fn log_in(addr: SocketAddr, token: &str) -> String {
    let reply = http_post(addr, "/api/session", "", &format!("{{\"token\": \"{token}\"}}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    reply.cookie()
}

fn secured() -> Settings {
    Settings { require_auth: true, access: Access { private_jobs: true, ..Access::default() }, ..Settings::default() }
}

fn circles(svg: &str) -> usize {
    roxmltree::Document::parse(svg).unwrap().descendants().filter(|n| n.has_tag_name("circle")).count()
}

#[sqlx::test(migrations = false)]
async fn every_page_is_the_embedded_shell_with_a_strict_policy_and_unknown_paths_are_not_found(pool: PgPool) {
    let (_c, web) = Coordinator::start_with_dashboard(pool, Settings::default()).await;
    for path in ["/login", "/jobs", "/jobs/12", "/experiments", "/experiments/3", "/compare?jobs=1,2", "/workers"] {
        let page = http_get(web, path, "").await;
        assert_eq!(page.status, 200, "{path}");
        assert!(page.body.contains("<script src=\"/assets/app.js\""), "{path}: {}", page.body);
        let policy = page.header("content-security-policy").unwrap();
        assert!(policy.contains("script-src 'self'") && policy.contains("frame-ancestors 'none'"), "{policy}");
        assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    }
    let root = http_get(web, "/", "").await;
    assert_eq!((root.status, root.header("location")), (303, Some("/jobs")));
    for (path, kind) in [("/assets/app.js", "text/javascript"), ("/assets/style.css", "text/css"), ("/assets/icon.svg", "image/svg+xml")] {
        let asset = http_get(web, path, "").await;
        assert!(asset.status == 200 && asset.header("content-type").unwrap().starts_with(kind), "{path}: {}", asset.status);
        let elsewhere = asset
            .body
            .match_indices("://")
            .filter(|(at, _)| !asset.body[..*at].ends_with("http") || !asset.body[*at..].starts_with("://www.w3.org/2000/svg"));
        assert_eq!(elsewhere.count(), 0, "{path} names no other origin (but the SVG namespace)");
    }
    assert_eq!(http_get(web, "/nothing-here", "").await.status, 404);
    assert_eq!(http_get(web, "/jobs/not-a-number/x", "").await.status, 404);
}

#[sqlx::test(migrations = false)]
async fn a_wrong_token_is_refused_and_a_right_one_is_kept_in_a_cookie_scripts_and_other_sites_cannot_use(pool: PgPool) {
    let (c, web) = Coordinator::start_with_dashboard(pool, secured()).await;
    let alice = c.token(Role::User, "alice").await;
    let worker = c.token(Role::Worker, "rack").await;

    let anonymous = http_get(web, "/api/jobs", "").await;
    assert_eq!(anonymous.status, 401);
    assert!(anonymous.error().contains("requires an API token"), "{}", anonymous.body);
    let wrong = http_post(web, "/api/session", "", r#"{"token": "camp_not_a_token"}"#).await;
    assert_eq!((wrong.status, wrong.error().as_str()), (401, "unknown API token"));
    assert!(wrong.header("set-cookie").is_none(), "nothing kept for a refused token");
    let as_worker = http_post(web, "/api/session", "", &format!("{{\"token\": \"{worker}\"}}")).await;
    assert_eq!(as_worker.status, 403, "a worker's token is no user's: {}", as_worker.body);
    let named = http_post(web, "/api/session", "", r#"{"user": "alice"}"#).await;
    assert!(named.status == 400 && named.error().starts_with("user:"), "no naming oneself here: {}", named.body);
    let bad = http_post(web, "/api/session", "", r#"{"token": "a;b=c"}"#).await;
    assert!(bad.status == 400 && bad.error().starts_with("token:"), "{}", bad.body);
    let extra = http_post(web, "/api/session", "", r#"{"token": "x", "admin": true}"#).await;
    assert_eq!(extra.status, 422, "unknown fields are refused: {}", extra.body);

    let ok = http_post(web, "/api/session", "", &format!("{{\"token\": \"{alice}\"}}")).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["user"], "alice");
    let set = ok.headers_named("set-cookie");
    let kept = set.iter().find(|c| c.starts_with("camp_token=")).unwrap();
    for attribute in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(kept.contains(attribute), "{attribute} in {kept}");
    }
    let cookie = ok.cookie();
    let session = http_get(web, "/api/session", &cookie).await.json();
    assert_eq!((session["user"].as_str(), session["auth_required"].as_bool()), (Some("alice"), Some(true)));
    assert_eq!(http_get(web, "/api/jobs", &cookie).await.status, 200);

    // A write without the dashboard's header (a form posted from another site) does nothing.
    let job = submit(&mut c.jobs(Headers::default().bearer(&alice)), spec()).await;
    let forged = http(web, "POST", &format!("/api/jobs/{}/cancel", job.id), &[("cookie", &cookie)], "").await;
    assert_eq!(forged.status, 403, "{}", forged.body);
    assert!(forged.error().contains("x-camp-csrf"), "{}", forged.body);
    assert_eq!(get_job(&c, &alice, job.id).await.state, JobState::Queued as i32);

    let out = http(web, "DELETE", "/api/session", &[("cookie", &cookie), ("x-camp-csrf", "1")], "").await;
    assert!(out.headers_named("set-cookie").iter().all(|c| c.contains("Max-Age=0")), "{:?}", out.headers);
}

async fn get_job(c: &Coordinator, token: &str, id: i64) -> v1::Job {
    get(&mut c.jobs(Headers::default().bearer(token)), id).await
}

#[sqlx::test(migrations = false)]
async fn under_private_jobs_a_user_sees_and_cancels_only_their_own_and_an_admin_any(pool: PgPool) {
    let (c, web) = Coordinator::start_with_dashboard(pool, secured()).await;
    let alice = c.token(Role::User, "alice").await;
    let bob = c.token(Role::User, "bob").await;
    let root = c.token(Role::Admin, "root").await;
    let job = submit(&mut c.jobs(Headers::default().bearer(&alice)), spec()).await;
    let (alice, bob, root) = (log_in(web, &alice).await, log_in(web, &bob).await, log_in(web, &root).await);

    let theirs = http_get(web, &format!("/api/jobs/{}", job.id), &bob).await;
    assert_eq!(theirs.status, 403, "{}", theirs.body);
    assert!(theirs.error().contains("alice"), "{}", theirs.body);
    assert!(http_get(web, "/api/jobs", &bob).await.json()["jobs"].as_array().unwrap().is_empty(), "not in bob's list");
    for path in [
        format!("/api/jobs/{}/chart/loss", job.id),
        format!("/api/jobs/{}/logs", job.id),
        format!("/api/compare?jobs={}", job.id),
        format!("/api/events?job={}", job.id),
    ] {
        assert_eq!(http_get(web, &path, &bob).await.status, 403, "{path}");
    }
    let cancel = http_post(web, &format!("/api/jobs/{}/cancel", job.id), &bob, "").await;
    assert_eq!(cancel.status, 403, "{}", cancel.body);

    let own = http_get(web, &format!("/api/jobs/{}", job.id), &alice).await.json();
    assert_eq!((own["job"]["owner"].as_str(), own["job"]["state"].as_str()), (Some("alice"), Some("queued")));
    assert!(own["job"]["spec"]["arch"].is_string(), "the wire shape of `camp show --json`: {own}");
    assert!(own["energy"]["normalized_energy"].is_number(), "the job's energy model: {}", own["energy"]);
    let listed = http_get(web, "/api/jobs", &root).await.json();
    assert_eq!(listed["jobs"][0]["id"], job.id, "an admin sees every job");
    let cancelled = http_post(web, &format!("/api/jobs/{}/cancel", job.id), &root, "").await;
    assert_eq!((cancelled.status, cancelled.json()["state"].as_str()), (200, Some("cancelled")));
}

#[sqlx::test(migrations = false)]
async fn a_chart_draws_every_stored_point_or_an_even_sample_of_a_long_series(pool: PgPool) {
    let (c, web) = Coordinator::start_with_dashboard(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("ada");
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    let batches: Vec<v1::ReportBatch> = (1..=3_000)
        .step_by(500)
        .map(|s| {
            let metrics = (s..s + 500)
                .map(|step| v1::Metric { name: "loss".into(), value: 3.0 / step as f64, step, epoch: 1, ..Default::default() })
                .collect();
            v1::ReportBatch {
                job_id: job.id,
                attempt: 1,
                sequence: s as u64,
                metrics,
                log_lines: vec![format!("to step {}", s + 499)],
                epoch: 0,
            }
        })
        .collect();
    w.report(batches).await.unwrap();
    w.report(vec![batch(job.id, 1, 9_999, 3_001)]).await.unwrap();
    let cookie = "camp_user=ada";

    let all = http_get(web, &format!("/api/jobs/{}/chart/loss?points=5000", job.id), cookie).await;
    assert_eq!(all.status, 200, "{}", all.body);
    assert_eq!(all.header("content-type"), Some("image/svg+xml; charset=utf-8"));
    assert_eq!((circles(&all.body), all.header("x-camp-points")), (3_001, Some("3001")), "every stored point");
    let sampled = http_get(web, &format!("/api/jobs/{}/chart/loss", job.id), cookie).await;
    assert_eq!(circles(&sampled.body), 1_000, "a long series is drawn from 1000 points");
    let few = http_get(web, &format!("/api/jobs/{}/chart/loss?points=7", job.id), cookie).await;
    assert_eq!(circles(&few.body), 7);

    let bytes: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let saved = w.upload(job.id, 1, 1, 0.5, &bytes).await.unwrap();
    let download = http_get(web, &format!("/api/checkpoints/{}/download", saved.id), cookie).await;
    assert_eq!(download.status, 200);
    assert!(download.header("content-disposition").unwrap().starts_with("attachment;"));
    assert!(download.bytes == bytes, "the checkpoint's bytes, streamed ({} of {})", download.bytes.len(), bytes.len());
    assert_eq!(
        http_get(web, &format!("/api/checkpoints/{}/download", saved.id), "camp_user=mallory").await.status,
        200,
        "not private here"
    );

    let page = http_get(web, &format!("/api/jobs/{}", job.id), cookie).await.json();
    assert_eq!(page["checkpoints"][0]["sha256"], saved.sha256);
    assert_eq!(page["series"], serde_json::json!([{ "name": "loss", "per_epoch": false }]));
    assert_eq!(page["log"].as_array().unwrap().len(), 7, "the log's tail");
    assert_eq!(page["attempts"][0]["worker"], "w");
    let compared = http_get(web, &format!("/api/compare?jobs={}&metric=loss&points=10", job.id), cookie).await;
    assert_eq!((compared.status, circles(&compared.body)), (200, 10));
    let nothing = http_get(web, &format!("/api/jobs/{}/chart/test_top1", job.id), cookie).await;
    assert_eq!(nothing.status, 404, "no such series yet: {}", nothing.body);

    for (path, field) in [
        (format!("/api/jobs/{}/chart/loss?points=1", job.id), "points:"),
        (format!("/api/jobs/{}/chart/loss?points=99999", job.id), "points:"),
        ("/api/jobs?state=%3Cscript%3E".to_string(), "state:"),
        ("/api/jobs?stage=warp".to_string(), "stage"),
        ("/api/jobs?limit=100000".to_string(), "limit:"),
        ("/api/compare?jobs=1,x".to_string(), "jobs:"),
        ("/api/compare?jobs=1,2,3,4,5,6,7,8,9".to_string(), "jobs:"),
        (format!("/api/jobs/{}/chart/{}", job.id, "n".repeat(300)), "name:"),
    ] {
        let refused = http_get(web, &path, cookie).await;
        assert_eq!(refused.status, 400, "{path}: {}", refused.body);
        assert!(refused.error().starts_with(field), "{path}: {}", refused.body);
    }
    assert_eq!(http_get(web, "/api/jobs?bogus=1", cookie).await.status, 400, "unknown parameters are refused");
    assert_eq!(http_get(web, "/api/jobs/999999", cookie).await.status, 404);
}

#[sqlx::test(migrations = false)]
async fn an_experiment_answers_its_rows_its_csv_and_no_curve_before_a_point_has_finished(pool: PgPool) {
    let (c, web) = Coordinator::start_with_dashboard(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("ada");
    let node = |key: &str, parents: &[&str]| v1::PipelineNode {
        key: key.into(),
        spec: Some(spec()),
        after: parents.iter().map(|p| p.to_string()).collect(),
        ..Default::default()
    };
    let experiment = jobs
        .submit_pipeline(v1::SubmitPipelineRequest {
            name: "tiny, \"quoted\"".into(),
            nodes: vec![node("a", &[]), node("b", &["a"])],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cookie = "camp_user=ada";
    let page = http_get(web, &format!("/api/experiments/{}", experiment.id), cookie).await.json();
    assert_eq!(page["experiment"]["jobs"].as_array().unwrap().len(), 2);
    assert_eq!(page["results"][1]["node"], "b");
    assert_eq!(page["results"][1]["variant"], "fp32");
    let csv = http_get(web, &format!("/api/experiments/{}/results.csv", experiment.id), cookie).await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-disposition").unwrap().starts_with("attachment;"));
    let lines: Vec<&str> = csv.body.lines().collect();
    assert_eq!(lines[0], camp_proto::results::CSV_HEADER);
    assert_eq!(lines.len(), 3);
    let curve = http_get(web, &format!("/api/experiments/{}/curve", experiment.id), cookie).await;
    assert_eq!(curve.status, 404);
    assert!(curve.error().contains("no succeeded job"), "{}", curve.body);
    let listed = http_get(web, "/api/experiments", cookie).await.json();
    assert_eq!(listed["experiments"][0]["id"], experiment.id);
}

#[sqlx::test(migrations = false)]
async fn the_event_stream_tells_a_page_when_its_job_changes(pool: PgPool) {
    let (c, web) = Coordinator::start_with_dashboard(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("ada");
    let job = submit(&mut jobs, spec()).await;
    let mut stream = tokio::net::TcpStream::connect(web).await.unwrap();
    let request = format!("GET /api/events?job={} HTTP/1.1\r\nHost: x\r\nCookie: camp_user=ada\r\n\r\n", job.id);
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut seen = String::new();
    read_until(&mut stream, &mut seen, "event: ready").await;
    assert!(seen.contains("content-type: text/event-stream"), "{seen}");
    jobs.cancel_job(v1::CancelJobRequest { id: job.id }).await.unwrap();
    read_until(&mut stream, &mut seen, "event: change").await;
}

/// Reads `stream` into `seen` until it holds `want` (within 10 s).
async fn read_until(stream: &mut tokio::net::TcpStream, seen: &mut String, want: &str) {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(10), async {
        while !seen.contains(want) {
            let n = stream.read(&mut buf).await.unwrap();
            assert!(n > 0, "the stream ended: {seen}");
            seen.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    })
    .await
    .unwrap_or_else(|_| panic!("no '{want}' within 10 s: {seen}"));
}

#[sqlx::test(migrations = false)]
async fn with_a_certificate_the_dashboard_speaks_https_only_and_its_cookie_is_secure(pool: PgPool) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName};
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let (cert_path, key_path) = (dir.path().join("dash.pem"), dir.path().join("dash.key"));
    std::fs::write(&cert_path, cert.cert.pem()).unwrap();
    std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
    let files = camp_server::tls::TlsFiles { cert: cert_path, key: key_path, client_ca: None };
    let tls = std::sync::Arc::new(files.dashboard_config().unwrap());
    let (_c, web) = Coordinator::start_with_dashboard_tls(pool, Settings::default(), Some(tls)).await;

    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(cert.cert.pem().as_bytes()).unwrap()).unwrap();
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(web).await.unwrap();
    let mut stream = connector.connect(ServerName::try_from("127.0.0.1").unwrap(), tcp).await.expect("a TLS handshake");
    let body = r#"{"user": "ada"}"#;
    let request = format!(
        "POST /api/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\nx-camp-csrf: 1\r\ncontent-type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await.expect("an answer");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cookie =
        answer.lines().find(|l| l.to_ascii_lowercase().starts_with("set-cookie: camp_user=ada")).unwrap_or_else(|| panic!("{answer}"));
    assert!(cookie.contains("; Secure"), "over HTTPS the cookie is Secure: {cookie}");

    // Plain HTTP on the HTTPS port gets no HTTP answer (the TLS layer drops it).
    let mut plain = tokio::net::TcpStream::connect(web).await.unwrap();
    plain.write_all(b"GET /api/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), plain.read_to_end(&mut raw)).await.expect("the connection ends");
    assert!(!raw.starts_with(b"HTTP/"), "plain HTTP is not served on the HTTPS port: {}", String::from_utf8_lossy(&raw));
}
