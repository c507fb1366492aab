//! A harness for system tests: the three binaries as real processes, talking
//! gRPC over loopback, the coordinator on a fresh PostgreSQL database.
//!
//! The binaries are looked for next to this test's executable (target/<profile>/),
//! so build them first: `cargo build --bins` (the README's test command does).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use sqlx::PgPool;

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

fn free_port() -> u16 {
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
    pub dir: tempfile::TempDir,
    pub server: Proc,
    pub database_url: String,
}

impl Cluster {
    /// Starts `camp-server` with a short lease so that lost workers are noticed quickly.
    pub fn start(pool: &PgPool, lease_secs: f64) -> Cluster {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let database_url = database_url(pool);
        let mut cmd = Command::new(bin("camp-server"));
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--lease-secs", &lease_secs.to_string(), "--reap-every-secs", "0.2"])
            .env("DATABASE_URL", &database_url);
        let server = Proc::spawn("camp-server", cmd, dir.path());
        let addr = format!("http://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "camp-server did not start:\n{}", server.log_text());
            std::thread::sleep(Duration::from_millis(50));
        }
        Cluster { addr, dir, server, database_url }
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
            .arg(self.data_dir());
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
