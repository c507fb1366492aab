//! The dashboard (`camp-server --http-listen`) in a real browser: headless
//! Chromium (`camp_e2e::browser`) against a real coordinator and a real worker
//! on tiny data, following the URL/DOM contract of the dashboard: the jobs list
//! changing live, a job's charts, an experiment's DAG and curve, the workers,
//! logging in with a token, private jobs, and the comparison of runs. Every page
//! visited is saved as a screenshot under `<target dir>/screenshots/`.

use std::time::{Duration, Instant};

use camp_e2e::browser::Browser;
use camp_e2e::grpc::{self, Headers};
use camp_e2e::{args, Cluster};
use camp_proto::v1;
use serde_json::Value;
use sqlx::PgPool;

const SECOND: Duration = Duration::from_secs(1);
/// A tiny job's whole run on the CPU, with room for a slow machine.
const RUN: Duration = Duration::from_secs(40);
/// A page's first render of its data.
const READY: Duration = Duration::from_secs(10);

/// A coordinator with its dashboard on a free loopback port (plus `extra`), the
/// tiny CIFAR-10 in its data folder; and the dashboard's base URL.
fn dashboard(pool: &PgPool, extra: &[&str]) -> (Cluster, String) {
    let port = camp_e2e::free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut all = vec!["--http-listen", listen.as_str()];
    all.extend_from_slice(extra);
    let c = Cluster::start_with(pool, 10.0, &all);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 128, 64, 1).unwrap();
    wait_http(&c, port);
    (c, format!("http://{listen}"))
}

/// Waits until the dashboard accepts connections (its listener may come up after gRPC's).
fn wait_http(c: &Cluster, port: u16) {
    let deadline = Instant::now() + 10 * SECOND;
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "the dashboard did not listen on {port}:\n{}", c.server.log_text());
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `camp submit baseline` flags of the smallest real run: ResNet-20, one epoch
/// of 128 images (two steps of 64, a loss point each), 64 test images.
fn tiny_run() -> Vec<String> {
    tiny_run_seeded(7)
}

fn tiny_run_seeded(seed: u32) -> Vec<String> {
    let seed = seed.to_string();
    [
        "-a",
        "preact_resnet20_cifar",
        "--dataset",
        "cifar10",
        "--epochs",
        "1",
        "-b",
        "64",
        "-p",
        "1",
        "--seed",
        &seed,
        "--device",
        "cpu",
        "--train-limit",
        "128",
        "--test-limit",
        "64",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// The stored points of metric `name` of job `id` (`camp metrics ID --name NAME --json`).
fn metric_points(c: &Cluster, id: i64, name: &str) -> usize {
    c.camp_json(&["metrics", &id.to_string(), "--name", name]).as_array().expect("metrics --json is an array").len()
}

/// Puts a mark on the page's `window`: it survives anything but a reload.
async fn mark_window(b: &Browser) {
    b.execute("window.__campNoReload = 'kept'; return null;", vec![]).await;
}

async fn window_marked(b: &Browser) -> bool {
    b.execute("return window.__campNoReload === 'kept';", vec![]).await == Value::Bool(true)
}

/// Logs in on `/login` with a token; waits to be sent to `/jobs`.
async fn login_with_token(b: &Browser, base: &str, token: &str) {
    b.goto(&format!("{base}/login")).await;
    b.wait_for("input#token", READY).await;
    b.fill("input#token", token).await;
    b.click("button#login-submit").await;
    b.wait_path("/jobs", READY).await;
    b.wait_ready(READY).await;
}

/// Clicks `button#logout`: the session ends (/api/jobs answers 401) and pages send to /login again.
async fn logout(b: &Browser, base: &str) {
    b.click("button#logout").await;
    // The page goes to /login once the session is gone; a script run meanwhile would be cut by the navigation.
    b.wait_path("/login", READY).await;
    b.wait_for("input#token", READY).await;
    let deadline = Instant::now() + READY;
    loop {
        let (status, _) = b.fetch("GET", "/api/jobs", None).await;
        if status == 401 {
            break;
        }
        assert!(Instant::now() < deadline, "/api/jobs still answers {status} after logout{}", b.describe().await);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    b.goto(&format!("{base}/jobs")).await;
    b.wait_path("/login", READY).await;
}

/// A job submitted over gRPC with `token` (the CLI's `--user` is no credential under --require-auth).
async fn submit_as(c: &Cluster, token: &str, name: &str) -> i64 {
    let mut jobs = grpc::jobs(grpc::channel(&c.addr).await, Headers::default().bearer(token));
    let request = v1::SubmitJobRequest { spec: Some(grpc::tiny_spec(1)), name: name.into(), ..Default::default() };
    jobs.submit_job(request).await.unwrap_or_else(|s| panic!("SubmitJob as {name}: {s}")).into_inner().id
}

#[sqlx::test(migrations = false)]
async fn the_jobs_page_lists_a_submitted_job_and_its_row_turns_succeeded_live_without_a_reload(pool: PgPool) {
    let (c, base) = dashboard(&pool, &[]);
    let id = c.submit(&args(&tiny_run()));
    let b = Browser::start().await;
    b.goto(&format!("{base}/jobs")).await;
    b.wait_ready(READY).await;
    let row = format!("table#jobs tbody tr[data-job-id='{id}']");
    b.wait_attr(&row, "data-state", "queued", READY).await;
    assert_eq!(b.text(&format!("{row} td.state")).await, "queued");
    assert_eq!(b.text(&format!("{row} td.owner")).await, "tester");
    assert_eq!(b.text(&format!("{row} td.stage")).await, "baseline");
    assert_eq!(b.attr(&format!("{row} a.job-link"), "href").await.as_deref(), Some(format!("/jobs/{id}").as_str()));
    assert_eq!(b.text("#whoami").await, "anonymous", "without --require-auth the pages work at once as anonymous");
    for nav in ["/jobs", "/experiments", "/workers"] {
        assert!(b.exists(&format!("nav a[href='{nav}']")).await, "the nav links {nav}");
    }
    b.screenshot("dashboard-jobs-queued").await;

    // Only now a worker: the row must change under the page's eyes.
    mark_window(&b).await;
    let _w = c.worker("w1");
    b.wait_attr(&row, "data-state", "succeeded", RUN).await;
    assert!(window_marked(&b).await, "the row changed without a reload of the page");
    assert_eq!(b.text(&format!("{row} td.state")).await, "succeeded");
    assert_eq!(b.count("table#jobs tbody tr[data-job-id]").await, 1, "one job, one row");
    assert_eq!(c.show(id)["state"], "succeeded", "the page says what the coordinator says");
    b.screenshot("dashboard-jobs-succeeded").await;
    b.close().await;
}

#[sqlx::test(migrations = false)]
async fn a_job_page_charts_as_many_loss_points_as_are_stored(pool: PgPool) {
    let (c, base) = dashboard(&pool, &[]);
    let _w = c.worker("w1");
    let id = c.submit(&args(&tiny_run()));
    c.wait_state(id, "succeeded", RUN);
    let stored = metric_points(&c, id, "loss");
    assert!(stored >= 2, "a loss point per step: {stored}");

    let b = Browser::start().await;
    b.goto(&format!("{base}/jobs/{id}")).await;
    b.wait_ready(READY).await;
    assert_eq!(b.text("#job-state").await, "succeeded");
    assert!(!b.text("#job-title").await.is_empty(), "the job has a title");
    let points = "#charts figure.chart[data-metric='loss'] svg circle";
    // One circle per stored point (the server thins a series to at most 1000).
    let want = stored.min(1000);
    b.wait_count(points, READY, &format!("{want} loss points, one per stored point"), |n| n == want).await;
    assert!(!b.text("#charts figure.chart[data-metric='loss'] figcaption").await.is_empty(), "the chart has a caption");
    assert!(b.exists("pre#log").await && b.exists("table#attempts").await && b.exists("#job-spec").await);
    assert!(b.count("table#checkpoints a.download").await >= 1, "the run's checkpoints can be downloaded");
    b.screenshot("dashboard-job").await;
    b.close().await;
}

/// A pipeline of two tiny jobs: 4-bit QAT, then the supervised gates from it.
const PIPELINE: &str = "
name: tiny-dag
nodes:
  - key: q4
    spec: {stage: qat, arch: preact_resnet20_cifar, dataset: cifar10, epochs: 1, batch_size: 64, device: cpu,
           train_limit: 128, test_limit: 64, print_freq: 1}
  - key: sp
    init_from: q4
    spec: {stage: sp, arch: preact_resnet20_cifar, dataset: cifar10, epochs: 1, batch_size: 64, device: cpu,
           train_limit: 128, test_limit: 64, print_freq: 1}
";

#[sqlx::test(migrations = false)]
async fn a_pipeline_page_draws_the_dag_with_each_jobs_state_and_the_curve_of_its_results(pool: PgPool) {
    let (c, base) = dashboard(&pool, &[]);
    let file = c.dir.path().join("tiny-dag.yaml");
    std::fs::write(&file, PIPELINE).unwrap();
    let exp = c.camp_json(&["pipeline", "submit", file.to_str().unwrap()])["id"].as_i64().expect("an experiment id");
    let _w = c.worker("w1");
    let deadline = Instant::now() + 2 * RUN;
    let jobs = loop {
        let jobs = c.camp_json(&["pipeline", "show", &exp.to_string()])["jobs"].as_array().unwrap().clone();
        if jobs.iter().all(|j| ["succeeded", "failed", "cancelled"].contains(&j["state"].as_str().unwrap_or_default())) {
            break jobs;
        }
        assert!(Instant::now() < deadline, "experiment {exp} still running: {jobs:?}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(jobs.len(), 2);
    for j in &jobs {
        assert_eq!(j["state"], "succeeded", "{} ended {}: {}", j["node"], j["state"], j["message"]);
    }

    let b = Browser::start().await;
    b.goto(&format!("{base}/experiments")).await;
    b.wait_ready(READY).await;
    assert_eq!(b.count(&format!("table#experiments tbody tr[data-experiment-id='{exp}']")).await, 1);
    b.screenshot("dashboard-experiments").await;

    b.goto(&format!("{base}/experiments/{exp}")).await;
    b.wait_ready(READY).await;
    b.wait_count("svg#dag g.node", READY, "one node per job", |n| n == jobs.len()).await;
    for j in &jobs {
        let id = j["id"].as_i64().unwrap();
        let state = b.attr(&format!("svg#dag g.node[data-job-id='{id}']"), "data-state").await;
        assert_eq!(state.as_deref(), j["state"].as_str(), "node {} of the DAG", j["node"]);
    }
    assert_eq!(b.count("table#results tbody tr[data-job-id]").await, jobs.len(), "a results row per job");
    assert_eq!(b.attr("a#results-csv", "href").await, Some(format!("/api/experiments/{exp}/results.csv")));

    // The curve is `camp plot`'s: a triangle per fixed-precision point, a circle
    // per CAMP point, and one of each in the legend for each series shown.
    let rows = c.camp_json(&["results", &exp.to_string()]);
    let plotted = |stages: &[&str]| {
        rows.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["state"] == "succeeded" && stages.contains(&r["stage"].as_str().unwrap_or_default()))
            .filter(|r| r["top1"].is_f64() && r["normalized_energy"].as_f64().is_some_and(|e| e > 0.0))
            .count()
    };
    let (fixed, camp) = (plotted(&["baseline", "qat"]), plotted(&["sp", "rl"]));
    assert_eq!((fixed, camp), (1, 1), "the results of the two jobs are plottable: {rows}");
    let legend = |n: usize| usize::from(n > 0);
    b.wait_count("#curve svg polygon", READY, "the fixed-precision triangles", |n| n == fixed + legend(fixed)).await;
    assert_eq!(b.count("#curve svg circle").await, camp + legend(camp), "the CAMP circles");
    b.screenshot("dashboard-experiment").await;
    b.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_workers_page_lists_the_worker_with_its_state(pool: PgPool) {
    let (c, base) = dashboard(&pool, &[]);
    let _w = c.worker("w1");
    let deadline = Instant::now() + 20 * SECOND;
    let worker = loop {
        let all = c.camp_json(&["workers"]);
        if let Some(w) = all.as_array().unwrap().iter().find(|w| w["name"] == "w1" && w["state"] == "idle") {
            break w.clone();
        }
        assert!(Instant::now() < deadline, "w1 did not register as idle: {all}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let wid = match &worker["id"] {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };

    let b = Browser::start().await;
    b.goto(&format!("{base}/workers")).await;
    b.wait_ready(READY).await;
    let row = format!("table#workers tbody tr[data-worker-id='{wid}']");
    b.wait_attr(&row, "data-state", "idle", READY).await;
    assert_eq!(b.text(&format!("{row} td.name")).await, "w1");
    assert_eq!(b.text(&format!("{row} td.device")).await, "cpu");
    assert!(b.text(&format!("{row} td.datasets")).await.contains("cifar10"));
    b.screenshot("dashboard-workers").await;

    // Running a long job: busy, naming it.
    let mut long = tiny_run();
    let epochs = long.iter().position(|a| a == "--epochs").unwrap() + 1;
    long[epochs] = "50".into();
    let id = c.submit(&args(&long));
    c.wait_state(id, "running", RUN);
    b.goto(&format!("{base}/workers")).await;
    b.wait_ready(READY).await;
    b.wait_attr(&row, "data-state", "busy", READY).await;
    assert!(b.text(&format!("{row} td.job")).await.contains(&id.to_string()), "the busy worker names its job");
    b.screenshot("dashboard-workers-busy").await;
    b.close().await;
}

#[sqlx::test(migrations = false)]
async fn with_require_auth_a_wrong_token_is_refused_on_the_login_page_and_the_api_answers_401(pool: PgPool) {
    let (c, base) = dashboard(&pool, &["--require-auth"]);
    let alice = c.token(&["--user", "alice"]);
    let b = Browser::start().await;

    // No session: every page sends to /login.
    b.goto(&format!("{base}/jobs")).await;
    b.wait_path("/login", READY).await;
    b.wait_for("input#token", READY).await;
    b.screenshot("dashboard-login").await;

    b.fill("input#token", "camp_not-a-real-token").await;
    b.click("button#login-submit").await;
    let refusal = b.wait_some_text("#login-error", READY).await;
    println!("a wrong token on /login: {refusal:?}");
    assert!(b.path().await.starts_with("/login"), "a refused login stays on /login");
    assert_eq!(b.cookie("camp_session").await, None, "no session for a wrong token");
    let (status, body) = b.fetch("GET", "/api/jobs", None).await;
    assert_eq!(status, 401, "/api/jobs without a session: {body}");
    b.screenshot("dashboard-login-refused").await;

    // A forged session cookie is no better.
    b.set_cookie("camp_session", "forged").await;
    let (status, _) = b.fetch("GET", "/api/jobs", None).await;
    assert_eq!(status, 401, "/api/jobs with a forged session");
    b.goto(&format!("{base}/jobs")).await;
    b.wait_path("/login", READY).await;
    b.delete_cookies().await;

    // The right token: to /jobs, as alice.
    login_with_token(&b, &base, &alice).await;
    assert_eq!(b.text("#whoami").await, "alice");
    let (status, body) = b.fetch("GET", "/api/jobs", None).await;
    assert_eq!(status, 200, "/api/jobs with alice's session: {body}");
    let (status, body) = b.fetch("GET", "/api/session", None).await;
    let session: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("/api/session: {e}: {body}"));
    assert_eq!((status, session["user"].as_str(), session["auth_required"].as_bool()), (200, Some("alice"), Some(true)), "{session}");

    // Logging out ends the session.
    logout(&b, &base).await;
    b.close().await;
}

#[sqlx::test(migrations = false)]
async fn with_private_jobs_bob_cannot_see_alices_job_and_alice_can(pool: PgPool) {
    let (c, base) = dashboard(&pool, &["--require-auth", "--private-jobs"]);
    let alice = c.token(&["--user", "alice"]);
    let bob = c.token(&["--user", "bob"]);
    let hers = submit_as(&c, &alice, "alices").await;
    let his = submit_as(&c, &bob, "bobs").await;
    let b = Browser::start().await;

    login_with_token(&b, &base, &bob).await;
    assert_eq!(b.text("#whoami").await, "bob");
    b.wait_count(&format!("table#jobs tbody tr[data-job-id='{his}']"), READY, "bob's own job", |n| n == 1).await;
    assert_eq!(b.count(&format!("table#jobs tbody tr[data-job-id='{hers}']")).await, 0, "alice's job is not in bob's list");
    assert_eq!(b.count("table#jobs tbody tr[data-job-id]").await, 1, "bob sees only his job");
    b.screenshot("dashboard-private-bob-jobs").await;
    b.goto(&format!("{base}/jobs/{hers}")).await;
    let error = b.wait_some_text("#error", READY).await;
    println!("bob reading alice's job: {error:?}");
    assert!(!error.contains("alices"), "the refusal does not leak the job: {error}");
    assert!(b.texts("#job-spec").await.iter().all(String::is_empty), "no spec of alice's job shown to bob");
    b.screenshot("dashboard-private-bob-refused").await;

    logout(&b, &base).await;
    login_with_token(&b, &base, &alice).await;
    b.wait_count(&format!("table#jobs tbody tr[data-job-id='{hers}']"), READY, "alice's job", |n| n == 1).await;
    assert_eq!(b.count(&format!("table#jobs tbody tr[data-job-id='{his}']")).await, 0, "bob's job is not in alice's list");
    b.goto(&format!("{base}/jobs/{hers}")).await;
    b.wait_ready(READY).await;
    assert_eq!(b.text("#job-state").await, "queued");
    assert!(b.texts("#error").await.iter().all(String::is_empty), "no error for the owner");
    assert!(b.exists("button#cancel").await, "the owner may cancel her queued job");
    b.screenshot("dashboard-private-alice-job").await;
    b.close().await;
}

#[sqlx::test(migrations = false)]
async fn the_compare_page_draws_one_line_per_chosen_job(pool: PgPool) {
    let (c, base) = dashboard(&pool, &[]);
    let _w = c.worker("w1");
    let first = c.submit(&args(&tiny_run_seeded(7)));
    let second = c.submit(&args(&tiny_run_seeded(8)));
    let third = c.submit(&args(&tiny_run_seeded(9)));
    for id in [first, second, third] {
        c.wait_state(id, "succeeded", RUN);
    }

    // Chosen on the jobs page: two of the three.
    let b = Browser::start().await;
    b.goto(&format!("{base}/jobs")).await;
    b.wait_ready(READY).await;
    b.wait_count("table#jobs tbody tr[data-job-id]", READY, "three rows", |n| n == 3).await;
    b.click(&format!("input.pick[value='{first}']")).await;
    b.click(&format!("input.pick[value='{second}']")).await;
    b.click("button#compare").await;
    let path = b.wait_path("/compare", READY).await;
    let mut chosen: Vec<String> = path
        .split(['?', '&'])
        .find_map(|p| p.strip_prefix("jobs="))
        .unwrap_or_else(|| panic!("no jobs= in {path}"))
        .replace("%2C", ",")
        .split(',')
        .map(str::to_string)
        .collect();
    chosen.sort();
    let mut want = vec![first.to_string(), second.to_string()];
    want.sort();
    assert_eq!(chosen, want, "the two jobs ticked: {path}");
    b.wait_ready(READY).await;
    b.wait_count("figure#compare svg polyline[stroke-width=\"2\"]", READY, "a line per chosen job", |n| n == 2).await;
    assert!(b.exists("select#compare-metric").await);
    b.screenshot("dashboard-compare").await;

    // All three, another metric, by URL.
    b.goto(&format!("{base}/compare?jobs={first},{second},{third}&metric=top1")).await;
    b.wait_ready(READY).await;
    b.wait_count("figure#compare svg polyline[stroke-width=\"2\"]", READY, "three lines", |n| n == 3).await;
    b.close().await;
}
