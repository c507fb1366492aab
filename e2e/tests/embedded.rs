//! The embedded store as a user meets it: `camp-server` on an SQLite file
//! (no database server), a second coordinator on the same file refused, a
//! crash of the coordinator that loses nothing acknowledged, and `camp up`
//! running the whole service in one command until Ctrl-C.

use std::process::Command;
use std::time::{Duration, Instant};

use camp_e2e::{bin, free_port, Cluster, Proc};
use serde_json::Value;

const MINUTE: Duration = Duration::from_secs(60);

/// Two epochs of the real architecture on a small generated Fashion-MNIST.
const TINY: &[&str] = &[
    "-a",
    "preact_resnet20_cifar",
    "--dataset",
    "fashion-mnist",
    "--epochs",
    "2",
    "-b",
    "32",
    "--lr-schedule",
    "none",
    "-p",
    "2",
    "--device",
    "cpu",
    "--train-limit",
    "96",
    "--test-limit",
    "32",
];

#[test]
fn the_embedded_store_runs_a_job_and_a_crash_of_the_coordinator_loses_nothing_acknowledged() {
    let mut c = Cluster::start_sqlite(5.0, &[]);
    camp_worker::fixtures::write_fashion_mnist_like(&c.data_dir(), 96, 32, 3, true).unwrap();
    let worker = c.worker("w1");
    let first = c.submit(TINY);
    let done = c.wait_state(first, "succeeded", 3 * MINUTE);
    assert!(done["result"]["best_top1"].as_f64().is_some(), "{done}");
    drop(worker);
    // Acknowledged submissions, then the coordinator dies without a chance to flush anything.
    let queued: Vec<i64> = (0..20).map(|_| c.submit(TINY)).collect();
    c.server.signal("KILL");
    c.server.wait_exit(Duration::from_secs(10));
    c.restart_server(&[]);
    let jobs = c.camp_json(&["jobs", "--limit", "100"]);
    let ids: Vec<i64> = jobs.as_array().unwrap().iter().map(|j| j["id"].as_i64().unwrap()).collect();
    for id in queued.iter().chain([&first]) {
        assert!(ids.contains(id), "job {id} was acknowledged before the crash and is gone: {ids:?}");
    }
    let again = c.show(first);
    assert_eq!((again["state"].clone(), again["result"].clone()), (done["state"].clone(), done["result"].clone()));
    let checkpoints = c.camp_json(&["checkpoints", &first.to_string()]);
    assert!(!checkpoints.as_array().unwrap().is_empty(), "the finished job's checkpoints survived");
    let download = c.dir.path().join("best.safetensors");
    let out = c.camp(&["checkpoint", "download", &first.to_string(), "-o", download.to_str().unwrap()]);
    assert!(out.status.success(), "download after the crash: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(camp_worker::checkpoint::verify(&std::fs::read(&download).unwrap()).expect("a loadable checkpoint").epoch, 2);
}

#[test]
fn a_second_coordinator_on_the_same_file_is_refused_with_a_clear_error() {
    let c = Cluster::start_sqlite(5.0, &[]);
    let out = Command::new(bin("camp-server"))
        .args(["--listen", &format!("127.0.0.1:{}", free_port()), "--database-url", &c.database_url])
        .env("RUST_BACKTRACE", "0")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("in use by another camp-server"), "{stderr}");
    // Admin commands still work beside the running coordinator, and it serves the token at once.
    let token = c.token(&["--user", "ada"]);
    let listed = c.camp_server(&["token", "list", "--json"]);
    assert!(listed.status.success() && String::from_utf8_lossy(&listed.stdout).contains("ada"), "{token}");
    assert!(c.camp(&["jobs"]).status.success(), "the first coordinator serves on");
}

#[test]
fn camp_up_runs_the_service_on_one_machine_and_stops_cleanly_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    camp_worker::fixtures::write_fashion_mnist_like(&data, 96, 32, 5, true).unwrap();
    let addr = format!("http://127.0.0.1:{}", free_port());
    let dashboard = format!("127.0.0.1:{}", free_port());
    let up_args = |cmd: &mut Command| {
        cmd.args(["--addr", &addr, "up", "--cpu", "--dashboard", &dashboard])
            .arg("--data-dir")
            .arg(&data)
            .env("XDG_DATA_HOME", dir.path().join("xdg"))
            .env_remove("DATABASE_URL")
            .env_remove("CAMP_TOKEN");
    };
    let mut cmd = Command::new(bin("camp"));
    up_args(&mut cmd);
    let mut up = Proc::spawn("camp-up", cmd, dir.path());
    let camp = |args: &[&str]| Command::new(bin("camp")).args(["--addr", &addr, "--user", "ada"]).args(args).output().unwrap();
    let deadline = Instant::now() + MINUTE;
    while !camp(&["workers"]).status.success() || !String::from_utf8_lossy(&camp(&["workers"]).stdout).contains("fashion-mnist") {
        assert!(up.child.try_wait().unwrap().is_none(), "camp up exited:\n{}", up.log_text());
        assert!(Instant::now() < deadline, "camp up did not come up:\n{}", up.log_text());
        std::thread::sleep(Duration::from_millis(200));
    }
    let mut submit = vec!["submit", "baseline", "--json"];
    submit.extend_from_slice(TINY);
    let out = camp(&submit);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let id = serde_json::from_slice::<Value>(&out.stdout).unwrap()["id"].as_i64().unwrap();
    let watch = camp(&["watch", &id.to_string()]);
    assert!(watch.status.success(), "watch: {}\n{}", String::from_utf8_lossy(&watch.stdout), up.log_text());
    // The dashboard is served beside it, and says so.
    assert!(up.log_text().contains(&format!("dashboard: http://{dashboard}/")), "{}", up.log_text());
    let mut page = std::net::TcpStream::connect(&dashboard).expect("the dashboard listens");
    std::io::Write::write_all(&mut page, b"GET /api/session HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
    let mut answer = String::new();
    std::io::Read::read_to_string(&mut page, &mut answer).unwrap();
    assert!(answer.starts_with("HTTP/1.1 200") && answer.contains("\"user\":\"anonymous\""), "{answer}");
    // The default store: under XDG_DATA_HOME, as documented.
    assert!(dir.path().join("xdg/camp/camp.db").is_file(), "{}", up.log_text());
    up.signal("INT");
    let status = up.wait_exit(MINUTE);
    assert!(status.success(), "camp up after Ctrl-C: {status}\n{}", up.log_text());
    assert!(up.log_text().contains("stopped"), "{}", up.log_text());
    assert!(!camp(&["jobs"]).status.success(), "the coordinator is gone with camp up");
    // The next `camp up` finds the same store: the finished job is still there.
    let mut cmd = Command::new(bin("camp"));
    up_args(&mut cmd);
    let mut again = Proc::spawn("camp-up-again", cmd, dir.path());
    let deadline = Instant::now() + MINUTE;
    let shown = loop {
        let out = camp(&["show", &id.to_string(), "--json"]);
        if out.status.success() {
            break serde_json::from_slice::<Value>(&out.stdout).unwrap();
        }
        assert!(Instant::now() < deadline, "camp up did not come up again:\n{}", again.log_text());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(shown["state"], "succeeded", "{shown}");
    again.signal("TERM");
    assert!(again.wait_exit(MINUTE).success(), "{}", again.log_text());
}
