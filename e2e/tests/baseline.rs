//! A researcher's whole path: submit, watch, inspect, download — and the faults
//! a shared cluster sees: a worker killed mid-run, a cancel, a shutdown.

use std::collections::HashSet;
use std::time::Duration;

use camp_e2e::{args, tensors, Cluster};
use serde_json::Value;
use sqlx::PgPool;

const MINUTE: Duration = Duration::from_secs(60);

/// A short, deterministic run of the real architecture on a small generated CIFAR-10.
/// A small CPU run, its lr divided by 10 after the first epoch.
fn small_run(epochs: u32) -> Vec<String> {
    let mut run = camp_e2e::small_run(epochs);
    run.extend(["--lr-schedule".to_string(), "1:0.1".to_string()]);
    run
}

fn checkpoints(c: &Cluster, id: i64) -> Vec<Value> {
    c.camp_json(&["checkpoints", &id.to_string()]).as_array().expect("checkpoints --json is an array").clone()
}

fn download(c: &Cluster, id: i64, which: &str) -> Vec<u8> {
    let path = c.dir.path().join(format!("job{id}-{which}.safetensors"));
    let out = c.camp(&["checkpoint", "download", &id.to_string(), &format!("--{which}"), "-o", path.to_str().unwrap()]);
    assert!(out.status.success(), "download failed: {}", String::from_utf8_lossy(&out.stderr));
    std::fs::read(&path).unwrap()
}

#[sqlx::test(migrations = false)]
async fn a_baseline_job_runs_end_to_end(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let _worker = c.worker("w1");
    let started = std::time::Instant::now();
    let id = c.submit(&args(&small_run(2)));

    let watch = c.camp(&["watch", &id.to_string()]);
    let watched = String::from_utf8_lossy(&watch.stdout).to_string() + &String::from_utf8_lossy(&watch.stderr);
    assert!(watch.status.success(), "watch exits 0 for a succeeded job: {watched}");
    let job = c.wait_state(id, "succeeded", MINUTE);
    println!("e2e baseline wall time: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!((job["stage"].as_str(), job["attempt"].as_u64()), (Some("baseline"), Some(1)));
    let best = job["result"]["best_top1"].as_f64().expect("result has best_top1");
    assert!((0.0..=1.0).contains(&best));

    let metrics = c.camp_json(&["metrics", &id.to_string()]);
    let rows = metrics.as_array().unwrap();
    let names: HashSet<&str> = rows.iter().map(|r| r["name"].as_str().unwrap()).collect();
    for name in ["loss", "top1", "lr", "images_per_s", "train_loss", "train_top1", "test_loss", "test_top1", "test_top5", "best_top1"] {
        assert!(names.contains(name), "metric {name} missing; have {names:?}");
    }
    for r in rows {
        assert!(r["value"].is_number() && r["step"].is_number() && r["epoch"].is_number() && r["attempt"] == 1, "{r}");
    }
    let lrs: Vec<f64> = rows.iter().filter(|r| r["name"] == "lr" && r["epoch"] == 2).map(|r| r["value"].as_f64().unwrap()).collect();
    assert!(!lrs.is_empty() && lrs.iter().all(|lr| (lr - 0.005).abs() < 1e-9), "epoch 2 runs at 0.05 x 0.1: {lrs:?}");
    let csv = c.camp(&["metrics", &id.to_string(), "--csv"]);
    assert!(String::from_utf8_lossy(&csv.stdout).starts_with("job_id,attempt,epoch,step,name,value"));

    let ckpts = checkpoints(&c, id);
    assert_eq!(ckpts.iter().map(|k| k["epoch"].as_u64().unwrap()).collect::<Vec<_>>(), vec![1, 2]);
    let bytes = download(&c, id, "latest");
    let meta = camp_worker::checkpoint::verify(&bytes).expect("the downloaded checkpoint loads into a fresh model");
    assert_eq!(meta.epoch, 2);

    let logs = c.camp(&["logs", &id.to_string()]);
    assert!(logs.status.success() && !logs.stdout.is_empty(), "logs: {}", String::from_utf8_lossy(&logs.stderr));
    let workers = c.camp_json(&["workers"]);
    assert_eq!(workers[0]["name"], "w1");
    assert!(workers[0]["datasets"].as_array().unwrap().contains(&Value::from("cifar10")));
}

#[sqlx::test(migrations = false)]
async fn a_killed_worker_is_replaced_and_the_job_resumes_exactly(pool: PgPool) {
    let c = Cluster::start(&pool, 2.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let run = small_run(4);

    // The reference: the same spec trained without interruption.
    let reference_id = c.submit(&args(&run));
    let mut first = c.worker("w1");
    c.wait_state(reference_id, "succeeded", 3 * MINUTE);
    let reference = download(&c, reference_id, "latest");

    let id = c.submit(&args(&run));
    c.wait_for(id, MINUTE, "a first checkpoint", |j| j["state"] == "running" && !checkpoints(&c, id).is_empty());
    first.signal("KILL");
    first.wait_exit(Duration::from_secs(10));
    let requeued = c.wait_state(id, "queued", MINUTE);
    assert!(requeued["message"].as_str().unwrap().contains("lease expired on attempt 1"), "{requeued}");

    let _second = c.worker("w2");
    let job = c.wait_state(id, "succeeded", 3 * MINUTE);
    assert_eq!(job["attempt"], 2, "succeeded on attempt 2: {job}");

    let resumed = download(&c, id, "latest");
    let (a, b) = (tensors(&reference), tensors(&resumed));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, bytes) in &a {
        assert!(bytes == &b[name], "tensor {name} differs between the uninterrupted and the resumed run");
    }

    // Every metric row exactly as often as in the uninterrupted run: the lost
    // attempt's rows past its checkpoint are gone, nothing is reported twice.
    let keys = |id: i64| {
        let mut k: Vec<(String, i64)> = c
            .camp_json(&["metrics", &id.to_string()])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| (r["name"].as_str().unwrap().to_string(), r["step"].as_i64().unwrap()))
            .collect();
        k.sort();
        k
    };
    assert_eq!(keys(id), keys(reference_id));
}

#[sqlx::test(migrations = false)]
async fn cancel_reaches_a_running_job(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let _worker = c.worker("w1");
    let id = c.submit(&args(&small_run(50)));
    c.wait_for(id, MINUTE, "training to start", |j| j["state"] == "running" && j["attempt"] == 1);
    std::thread::sleep(Duration::from_millis(500));
    let out = c.camp(&["cancel", &id.to_string()]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let job = c.wait_state(id, "cancelled", Duration::from_secs(30));
    assert!(job["message"].as_str().unwrap().contains("cancel"), "{job}");
    let watch = c.camp(&["watch", &id.to_string()]);
    assert_eq!(watch.status.code(), Some(7), "watch of a cancelled job exits 7");

    // The worker survives and takes the next job.
    let next = c.submit(&args(&small_run(1)));
    c.wait_state(next, "succeeded", MINUTE);
}

#[sqlx::test(migrations = false)]
async fn sigterm_checkpoints_and_hands_the_job_back(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    camp_worker::fixtures::write_cifar10_like(&c.data_dir(), 256, 128, 1).unwrap();
    let mut first = c.worker("w1");
    let id = c.submit(&args(&small_run(3)));
    c.wait_for(id, MINUTE, "a few steps", |j| {
        j["state"] == "running" && {
            let rows = c.camp_json(&["metrics", &id.to_string(), "--name", "loss"]);
            !rows.as_array().unwrap().is_empty()
        }
    });
    first.signal("TERM");
    let status = first.wait_exit(MINUTE);
    assert!(status.success(), "SIGTERM exits 0: {status:?}\n{}", first.log_text());
    let job = c.wait_state(id, "queued", Duration::from_secs(5));
    assert_eq!(job["attempt"], 1);
    let ckpts = checkpoints(&c, id);
    let last = ckpts.last().expect("a checkpoint at the interruption");
    assert!(last["step"].as_i64().unwrap() > 0);

    let _second = c.worker("w2");
    let job = c.wait_state(id, "succeeded", 3 * MINUTE);
    assert_eq!(job["attempt"], 2);
}

#[sqlx::test(migrations = false)]
async fn bad_input_is_refused_with_the_field_named(pool: PgPool) {
    let c = Cluster::start(&pool, 10.0);
    for (flags, field) in [
        (vec!["-a", "preact_resnet21_cifar"], "arch"),
        (vec!["-a", "preact_resnet20_cifar", "--lr", "-1"], "lr"),
        (vec!["-a", "preact_resnet20_cifar", "-b", "0"], "batch"),
        (vec!["-a", "preact_resnet20_cifar", "--epochs", "0"], "epochs"),
        (vec!["-a", "preact_resnet20_cifar", "--dataset", "imagenet"], "dataset"),
    ] {
        let mut all = vec!["submit", "baseline"];
        all.extend(flags.iter());
        let out = c.camp(&all);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{all:?}: {err}");
        assert!(err.contains(field), "{all:?}: error should name {field}: {err}");
    }
    assert_eq!(c.camp_json(&["jobs"]).as_array().unwrap().len(), 0, "nothing stored");
    let out = c.camp(&["show", "424242"]);
    assert_eq!(out.status.code(), Some(3), "unknown job: {}", String::from_utf8_lossy(&out.stderr));
}
