//! The worker's life under a scheduler (Slurm, Kubernetes) and the faults
//! found under chaos, with the real processes: the signals that hand a job
//! back, the flags that end a worker, a worker started before its
//! coordinator, a restarted worker keeping its row, and a checkpoint download
//! cut by the network.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use camp_e2e::{args, small_run, Cluster, Proc};
use serde_json::Value;
use sqlx::PgPool;

const MINUTE: Duration = Duration::from_secs(60);

fn cluster(pool: &PgPool, lease_secs: f64) -> Cluster {
    let c = Cluster::start(pool, lease_secs);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    c
}

/// How many `loss` points attempt `attempt` of job `id` has reported.
fn losses_of_attempt(c: &Cluster, id: i64, attempt: u32) -> usize {
    let rows = c.camp_json(&["metrics", &id.to_string(), "--name", "loss"]);
    rows.as_array().unwrap().iter().filter(|r| r["attempt"] == attempt).count()
}

fn workers(c: &Cluster) -> Vec<Value> {
    c.camp_json(&["workers"]).as_array().expect("workers --json is an array").clone()
}

/// A worker named `name` whose process (and log file) is called `proc_name`:
/// two processes of one worker name, each with a log of its own.
fn worker_as(c: &Cluster, proc_name: &str, name: &str) -> Proc {
    let mut cmd = std::process::Command::new(camp_e2e::bin("camp-worker"));
    cmd.args(["--coordinator", &c.addr, "--device", "cpu", "--threads", "1", "--name", name])
        .arg("--data-dir")
        .arg(c.data_dir())
        .arg("--state-dir")
        .arg(c.worker_state_dir());
    Proc::spawn(proc_name, cmd, c.dir.path())
}

/// Waits until `worker`'s log holds `text`.
fn wait_log(worker: &mut Proc, text: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !worker.log_text().contains(text) {
        if let Some(status) = worker.child.try_wait().unwrap() {
            panic!("{} exited ({status}) before logging {text:?}:\n{}", worker.name, worker.log_text());
        }
        assert!(Instant::now() < deadline, "{} did not log {text:?} within {within:?}:\n{}", worker.name, worker.log_text());
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[sqlx::test(migrations = false)]
async fn sigusr1_and_sighup_checkpoint_and_hand_the_job_back_like_sigterm(pool: PgPool) {
    let c = cluster(&pool, 10.0);
    let id = c.submit(&args(&small_run(20)));
    for (attempt, signal) in [(1, "USR1"), (2, "HUP")] {
        let mut worker = c.worker(&format!("w{attempt}"));
        c.wait_for(id, MINUTE, &format!("steps of attempt {attempt}"), |j| {
            j["state"] == "running" && j["attempt"] == attempt && losses_of_attempt(&c, id, attempt) > 0
        });
        let newest_checkpoint =
            || c.camp_json(&["checkpoints", &id.to_string()]).as_array().unwrap().iter().filter_map(|k| k["id"].as_i64()).max();
        let before = newest_checkpoint();
        worker.signal(signal);
        let status = worker.wait_exit(MINUTE);
        assert!(status.success(), "SIG{signal} exits 0: {status:?}\n{}", worker.log_text());
        assert!(worker.log_text().contains(&format!("SIG{signal} received")), "{}", worker.log_text());
        let job = c.wait_state(id, "queued", Duration::from_secs(5));
        assert_eq!(
            (job["attempt"].as_u64(), job["lease_losses"].as_u64()),
            (Some(attempt as u64), Some(0)),
            "handed back, not lost: {job}"
        );
        assert!(job["message"].as_str().unwrap().contains("shut down"), "{job}");
        assert!(newest_checkpoint() > before, "a checkpoint at the interruption");
    }
    assert_eq!(c.camp(&["cancel", &id.to_string()]).status.code(), Some(0));
}

#[sqlx::test(migrations = false)]
async fn a_worker_with_max_jobs_exits_0_after_that_many_attempts(pool: PgPool) {
    let c = cluster(&pool, 10.0);
    let ids: Vec<i64> = (0..3).map(|_| c.submit(&args(&small_run(1)))).collect();
    let mut worker = c.worker_with("w1", &c.addr, &["--max-jobs", "2"]);
    let status = worker.wait_exit(3 * MINUTE);
    assert!(status.success(), "--max-jobs exits 0: {status:?}\n{}", worker.log_text());
    let states: Vec<Value> = ids.iter().map(|&id| c.show(id)["state"].clone()).collect();
    assert_eq!(states, ["succeeded", "succeeded", "queued"], "two attempts, then the worker left the third job alone");
    assert!(worker.log_text().contains("2 attempts finished (--max-jobs)"), "{}", worker.log_text());
}

#[sqlx::test(migrations = false)]
async fn a_worker_with_exit_when_idle_exits_0_once_idle_that_long_and_never_while_it_runs_a_job(pool: PgPool) {
    let c = cluster(&pool, 10.0);
    // A job that takes longer than the idle limit (about 0.7 s an epoch here): the clock stops while it runs.
    let id = c.submit(&args(&small_run(8)));
    let mut worker = c.worker_with("w1", &c.addr, &["--exit-when-idle", "2"]);
    let job = c.wait_state(id, "succeeded", 3 * MINUTE);
    let ran_ms = job["finished_at_ms"].as_i64().unwrap() - job["started_at_ms"].as_i64().unwrap();
    assert!(ran_ms > 2_000, "the job must outlast the idle limit to show anything (ran {ran_ms} ms)");
    let finished = Instant::now();
    let status = worker.wait_exit(Duration::from_secs(30));
    let idle_after = finished.elapsed();
    assert!(status.success(), "--exit-when-idle exits 0: {status:?}\n{}", worker.log_text());
    assert!(idle_after > Duration::from_millis(500), "it waited for work after the job ({idle_after:?})");
    assert!(worker.log_text().contains("(--exit-when-idle): exiting"), "{}", worker.log_text());

    // Idle from the start, with no coordinator to reach, it gives the allocation back too.
    let mut orphan = c.worker_with("orphan", &format!("http://127.0.0.1:{}", camp_e2e::free_port()), &["--exit-when-idle", "1"]);
    assert!(orphan.wait_exit(Duration::from_secs(30)).success(), "{}", orphan.log_text());
}

#[sqlx::test(migrations = false)]
async fn a_worker_started_before_its_coordinator_waits_then_registers_and_works(pool: PgPool) {
    let mut c = cluster(&pool, 10.0);
    c.server.signal("KILL");
    c.server.wait_exit(Duration::from_secs(10));

    let mut worker = c.worker("early");
    wait_log(&mut worker, "trying again in", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker must wait, not exit:\n{}", worker.log_text());
    let tries = worker.log_text().matches("trying again in").count();
    assert!((2..=10).contains(&tries), "one line per try, backing off: {tries} in ~3 s\n{}", worker.log_text());

    c.restart_server(&[]);
    wait_log(&mut worker, "registered", Duration::from_secs(30));
    let id = c.submit(&args(&small_run(1)));
    c.wait_state(id, "succeeded", 2 * MINUTE);
    assert!(worker.log_text().contains("finished"), "the early worker ran it:\n{}", worker.log_text());
}

#[sqlx::test(migrations = false)]
async fn a_restarted_worker_does_not_add_a_row_and_its_lost_attempt_is_requeued_at_once(pool: PgPool) {
    // A long lease: the job can only come back quickly if the restart gives it back.
    let c = cluster(&pool, 120.0);
    let mut first = worker_as(&c, "w1-first", "w1");
    wait_log(&mut first, "registered", Duration::from_secs(30));
    let listed = workers(&c);
    assert_eq!(listed.len(), 1);
    let id_of_w1 = listed[0]["id"].clone();

    // A clean restart: the same row.
    first.signal("TERM");
    assert!(first.wait_exit(MINUTE).success());
    let mut second = worker_as(&c, "w1-second", "w1");
    wait_log(&mut second, "registered", Duration::from_secs(30));
    let listed = workers(&c);
    assert_eq!(listed.len(), 1, "no new row: {listed:?}");
    assert_eq!(listed[0]["id"], id_of_w1);

    // Killed mid-job, then started again: its lost attempt goes back to the queue at
    // once (not after the 120 s lease) and the restarted worker finishes the job.
    let id = c.submit(&args(&small_run(3)));
    c.wait_for(id, MINUTE, "steps of attempt 1", |j| j["state"] == "running" && losses_of_attempt(&c, id, 1) > 0);
    second.signal("KILL");
    second.wait_exit(Duration::from_secs(10));
    let restarted_at = Instant::now();
    let _third = worker_as(&c, "w1-third", "w1");
    let job = c.wait_state(id, "succeeded", 2 * MINUTE);
    assert!(restarted_at.elapsed() < Duration::from_secs(110), "requeued at the restart, not at lease expiry");
    assert_eq!((job["attempt"].as_u64(), job["lease_losses"].as_u64()), (Some(2), Some(1)), "{job}");
    let log = c.server.log_text();
    assert!(log.contains("attempt lost: its worker restarted"), "the coordinator says why:\n{log}");
    let listed = workers(&c);
    assert_eq!(listed.len(), 1, "still one row after a kill -9 and a restart: {listed:?}");
    assert_eq!(listed[0]["id"], id_of_w1);

    // A second worker of the same name beside it (one per GPU) gets an id of its own.
    let mut twin = worker_as(&c, "w1-twin", "w1");
    wait_log(&mut twin, "registered", Duration::from_secs(30));
    assert_eq!(workers(&c).len(), 2);
}

/// A TCP proxy between a worker and its coordinator that cuts connections
/// while armed: each connection that carries more than `threshold` bytes
/// towards the worker since arming is shut, as a network fault would. Only a
/// checkpoint download is that large (claims, heartbeats and report answers
/// are a few hundred bytes).
struct CuttingProxy {
    port: u16,
    threshold: u64,
    /// Cuts still to make (0: disarmed).
    cuts_left: Arc<AtomicU32>,
    cuts: Arc<AtomicU32>,
    /// Bytes towards the worker since arming, per connection.
    downstream: Arc<Mutex<Vec<Arc<AtomicU64>>>>,
    stop: Arc<AtomicBool>,
}

impl CuttingProxy {
    fn start(upstream_port: u16, threshold: u64) -> CuttingProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = CuttingProxy {
            port,
            threshold,
            cuts_left: Arc::default(),
            cuts: Arc::default(),
            downstream: Arc::default(),
            stop: Arc::default(),
        };
        let (cuts_left, cuts, downstream, stop) =
            (proxy.cuts_left.clone(), proxy.cuts.clone(), proxy.downstream.clone(), proxy.stop.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(("127.0.0.1", upstream_port)) else { continue };
                let counter = Arc::new(AtomicU64::new(0));
                downstream.lock().unwrap().push(counter.clone());
                let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || pipe(c2, s2, |_| true));
                let (cuts_left, cuts) = (cuts_left.clone(), cuts.clone());
                std::thread::spawn(move || {
                    pipe(server, client, |n| {
                        let carried = counter.fetch_add(n as u64, Ordering::SeqCst) + n as u64;
                        let cut =
                            carried > threshold && cuts_left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |c| c.checked_sub(1)).is_ok();
                        if cut {
                            cuts.fetch_add(1, Ordering::SeqCst);
                        }
                        !cut
                    })
                });
            }
        });
        proxy
    }

    fn addr(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Cuts the next `cuts` connections that carry a download.
    fn arm(&self, cuts: u32) {
        for counter in self.downstream.lock().unwrap().iter() {
            counter.store(0, Ordering::SeqCst);
        }
        self.cuts_left.store(cuts, Ordering::SeqCst);
    }

    fn cuts(&self) -> u32 {
        self.cuts.load(Ordering::SeqCst)
    }

    fn disarm(&self) {
        self.cuts_left.store(0, Ordering::SeqCst);
    }
}

impl Drop for CuttingProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

/// Copies `from` to `to` until either end closes or `forward(n)` (told each
/// read's size) says to cut: then both directions are shut.
fn pipe(mut from: TcpStream, mut to: TcpStream, mut forward: impl FnMut(usize) -> bool) {
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if !forward(n) || to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

#[sqlx::test(migrations = false)]
async fn a_download_cut_mid_stream_is_retried_and_one_that_keeps_failing_requeues_the_attempt(pool: PgPool) {
    // A lease far longer than the hand-back takes: the proxy's cuts also break
    // heartbeats on the same connection, and the attempt must end by the
    // worker's hand-back, not by its lease running out.
    let c = cluster(&pool, 60.0);
    let proxy = CuttingProxy::start(c.port, 256 * 1024);
    let mut worker = c.worker_with("w1", &proxy.addr(), &["--retry-for", "2"]);
    let parent = c.submit(&args(&small_run(1)));
    c.wait_state(parent, "succeeded", 2 * MINUTE);
    let size = c.camp_json(&["checkpoints", &parent.to_string()])[0]["size"].as_u64().unwrap();
    assert!(size > 4 * proxy.threshold, "the checkpoint ({size} bytes) must be far larger than what the proxy lets through");
    let child = |max_attempts: &str| {
        let mut all = vec!["submit", "qat", "--bits", "4", "--init-from"];
        let parent = parent.to_string();
        all.push(&parent);
        all.extend(["--max-attempts", max_attempts]);
        let run = small_run(1);
        all.extend(args(&run));
        c.camp_json(&all)["id"].as_i64().unwrap()
    };

    // One cut: downloaded again within the attempt.
    proxy.arm(1);
    let first = child("3");
    let job = c.wait_state(first, "succeeded", 2 * MINUTE);
    assert_eq!(proxy.cuts(), 1, "the download was cut once");
    assert_eq!((job["attempt"].as_u64(), job["lease_losses"].as_u64()), (Some(1), Some(0)), "{job}");

    // Cut again and again past --retry-for: the attempt is handed back (a lost
    // attempt, not a failed job), and once the network heals the job succeeds.
    proxy.arm(u32::MAX);
    let second = child("5");
    let requeued = c.wait_for(second, MINUTE, "the attempt handed back", |j| j["lease_losses"].as_u64() >= Some(1));
    proxy.disarm();
    // (Polled: a later attempt may have been handed back too by the time it is read.)
    assert!(requeued["message"].as_str().unwrap().contains("failed outside the job (downloading checkpoint"), "{requeued}");
    let job = c.wait_state(second, "succeeded", 2 * MINUTE);
    assert!(job["attempt"].as_u64().unwrap() >= 2, "{job}");
    assert!(proxy.cuts() >= 3, "{} cuts", proxy.cuts());
    assert!(worker.log_text().contains("attempt given up: downloading checkpoint"), "{}", worker.log_text());
    assert!(worker.child.try_wait().unwrap().is_none(), "the worker carries on");
}
