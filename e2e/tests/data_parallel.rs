//! A data-parallel job (`--gpus 2`) through the real system on the CPU: matched
//! only to a worker that advertises two devices, trained by two ranks (the
//! worker and a `camp-worker rank` child), and, when one rank is killed
//! mid-run, retried from its last checkpoint until it succeeds.

use std::time::Duration;

use camp_e2e::{args, Cluster};
use sqlx::PgPool;

const MINUTE: Duration = Duration::from_secs(60);

/// Pids of the processes whose parent is `parent` and whose command line holds `word`.
fn children_with(parent: i32, word: &str) -> Vec<i32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // The parent pid is the second field after the parenthesised command name.
        let Some(ppid) = stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<i32>().ok()) else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if ppid == parent && cmdline.split(|b| *b == 0).any(|arg| arg == word.as_bytes()) {
            found.push(pid);
        }
    }
    found
}

#[sqlx::test(migrations = false)]
async fn a_two_rank_job_waits_for_a_two_device_worker_and_survives_a_killed_rank(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let _single = c.worker("one-device");
    let mut run = camp_e2e::small_run(4);
    run.extend(["--gpus".to_string(), "0,1".to_string()]);
    let id = c.submit(&args(&run));

    // A worker with one device never takes it, and the job says what it waits for.
    std::thread::sleep(Duration::from_secs(2));
    let waiting = c.show(id);
    assert_eq!(waiting["state"], "queued", "{waiting}");
    assert_eq!(waiting["spec"]["gpus"], 2, "{waiting}");
    let reason = waiting["waiting_reason"].as_str().unwrap_or_default();
    assert!(reason.contains("2 devices"), "waiting reason: {reason}");

    let state_dir = c.dir.path().join("two-device-state");
    let two = c.worker_with("two-devices", &c.addr, &["--devices", "2", "--state-dir", state_dir.to_str().unwrap()]);
    c.wait_for(id, MINUTE, "a first checkpoint", |j| j["state"] == "running" && j["epoch"].as_u64().unwrap_or(0) >= 1);
    let workers = c.camp_json(&["workers"]);
    let listed = workers.as_array().unwrap().iter().find(|w| w["name"] == "two-devices").cloned().unwrap();
    assert_eq!(listed["devices"], 2, "{listed}");
    let ranks = children_with(two.pid(), "rank");
    assert_eq!(ranks.len(), 1, "one child rank beside the worker: {ranks:?}");
    let killed = std::process::Command::new("kill").args(["-KILL", &ranks[0].to_string()]).status().unwrap();
    assert!(killed.success());

    let job = c.wait_state(id, "succeeded", 3 * MINUTE);
    assert_eq!(job["attempt"], 2, "the lost rank cost one attempt: {job}");
    let log = two.log_text();
    assert!(log.contains("rank 1") && log.contains("SIGKILL"), "the attempt's error names the killed rank: {log}");
    // The retry resumed from the checkpoint: its first step comes after step 0.
    let metrics = c.camp_json(&["metrics", &id.to_string()]);
    let first_step_of_retry = metrics
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["attempt"] == 2)
        .filter_map(|r| r["step"].as_i64())
        .min()
        .expect("attempt 2 reported metrics");
    assert!(first_step_of_retry > 4, "attempt 2 started at step {first_step_of_retry}, after epoch 1's 4 steps");
    let epochs: Vec<u64> =
        c.camp_json(&["checkpoints", &id.to_string()]).as_array().unwrap().iter().map(|k| k["epoch"].as_u64().unwrap()).collect();
    let mut unique = epochs.clone();
    unique.dedup();
    assert_eq!(unique, epochs, "no epoch was checkpointed twice: {epochs:?}");
    assert!(children_with(two.pid(), "rank").is_empty(), "no rank left behind");
}
