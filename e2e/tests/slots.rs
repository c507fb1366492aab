//! `camp-worker --slots 2`: one worker command trains two jobs at once on its
//! device (two worker processes, each registered), and a stop signal to it
//! reaches both: each job is checkpointed and handed back, every process exits 0.

use std::time::Duration;

use camp_e2e::{args, Cluster};
use sqlx::PgPool;

const MINUTE: Duration = Duration::from_secs(60);

#[sqlx::test(migrations = false)]
async fn a_worker_with_two_slots_runs_two_jobs_at_once_and_hands_both_back_on_sigterm(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let run = camp_e2e::small_run(30);
    let (a, b) = (c.submit(&args(&run)), c.submit(&args(&run)));
    let mut worker = c.worker_with("slotted", &c.addr, &["--slots", "2"]);

    // Both run at the same time, on two registrations of one name.
    c.wait_for(a, MINUTE, "job a to run", |j| j["state"] == "running");
    c.wait_for(b, MINUTE, "job b to run while a runs", |j| j["state"] == "running");
    assert_eq!(c.show(a)["state"], "running", "a still runs beside b");
    let workers = c.camp_json(&["workers"]);
    let slots: Vec<&serde_json::Value> = workers.as_array().unwrap().iter().filter(|w| w["name"] == "slotted").collect();
    assert_eq!(slots.len(), 2, "one registration per slot: {workers}");
    assert_ne!(slots[0]["id"], slots[1]["id"]);
    let mut running: Vec<i64> =
        slots.iter().flat_map(|w| w["running_jobs"].as_array().unwrap().iter().map(|j| j.as_i64().unwrap())).collect();
    running.sort();
    assert_eq!(running, vec![a, b], "each slot holds one of the jobs");

    worker.signal("TERM");
    let status = worker.wait_exit(MINUTE);
    assert!(status.success(), "slot 0 exits 0 once every slot has: {status}");
    for id in [a, b] {
        let job = c.wait_state(id, "queued", MINUTE);
        assert!(job["message"].as_str().unwrap_or_default().contains("shut down; re-queued"), "{job}");
    }
}
