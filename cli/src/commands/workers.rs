//! `camp workers`: the workers the coordinator knows, and what each is doing:
//! busy (holding a job), idle, or silent (no heartbeat within a lease: its
//! jobs go back to the queue when their leases expire), with its jobs, what
//! it offers (device, data sets, labels) and how long ago it was last heard.

use std::time::Duration;

use camp_proto::v1::{self, ListWorkersRequest};
use indicatif::HumanDuration;
use serde_json::Value;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{now_ms, print_json, Table};
use camp_proto::wire;

pub async fn list(opts: &GlobalOpts) -> anyhow::Result<()> {
    let workers = client::connect(opts).await?.list_workers(ListWorkersRequest {}).await?.into_inner().workers;
    if opts.json {
        return print_json(&Value::Array(workers.iter().map(|w| wire::worker(w, now_ms())).collect()));
    }
    print!("{}", table(&workers, now_ms()));
    Ok(())
}

fn table(workers: &[v1::Worker], now_ms: i64) -> Table {
    let mut table = Table::new(&["name", "state", "jobs", "device", "devices", "datasets", "labels", "heartbeat"]);
    for worker in workers {
        let running: Vec<String> = worker.running_jobs.iter().map(i64::to_string).collect();
        let mut labels: Vec<String> = worker.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        labels.sort();
        table.push(vec![
            worker.name.clone(),
            wire::worker_state_name(worker).into(),
            dash_if_empty(running.join(",")),
            worker.device_kind.clone(),
            worker.devices.max(1).to_string(),
            dash_if_empty(worker.datasets.join(",")),
            dash_if_empty(labels.join(",")),
            heartbeat_age(worker, now_ms),
        ]);
    }
    table
}

fn dash_if_empty(cell: String) -> String {
    if cell.is_empty() {
        "-".into()
    } else {
        cell
    }
}

/// `12 seconds ago`, `3 minutes ago`; `-` for a worker never heard from.
fn heartbeat_age(worker: &v1::Worker, now_ms: i64) -> String {
    if worker.last_heartbeat_ms <= 0 {
        return "-".into();
    }
    let age = Duration::from_millis(wire::heartbeat_age_ms(worker, now_ms).max(0) as u64);
    format!("{} ago", HumanDuration(age))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(state: v1::WorkerState, age_ms: i64, running: &[i64]) -> v1::Worker {
        v1::Worker {
            name: "gpu-a".into(),
            device_kind: "cuda".into(),
            gpus: vec!["H100".into()],
            datasets: vec!["cifar10".into(), "fashion-mnist".into()],
            labels: [("rack".to_string(), "3".to_string()), ("slurm_job".to_string(), "77".to_string())].into(),
            alive: state != v1::WorkerState::Silent,
            state: state as i32,
            last_heartbeat_ms: 1_000,
            heartbeat_age_ms: age_ms,
            running_jobs: running.to_vec(),
            ..Default::default()
        }
    }

    fn cells(text: &str, line: usize) -> Vec<String> {
        text.lines().nth(line).unwrap().split("  ").map(str::trim).filter(|c| !c.is_empty()).map(String::from).collect()
    }

    #[test]
    fn each_worker_shows_its_state_jobs_offer_and_heartbeat_age() {
        let workers = [
            worker(v1::WorkerState::Busy, 5_000, &[3, 4]),
            worker(v1::WorkerState::Idle, 1_000, &[]),
            worker(v1::WorkerState::Silent, 180_000, &[9]),
        ];
        // The coordinator's age is shown, whatever this machine's clock says.
        let text = table(&workers, 999_999_999).to_string();
        assert_eq!(cells(&text, 0), ["NAME", "STATE", "JOBS", "DEVICE", "DEVICES", "DATASETS", "LABELS", "HEARTBEAT"]);
        assert_eq!(cells(&text, 1), ["gpu-a", "busy", "3,4", "cuda", "1", "cifar10,fashion-mnist", "rack=3,slurm_job=77", "5 seconds ago"]);
        assert_eq!(cells(&text, 2)[1..3], ["idle", "-"]);
        assert_eq!(cells(&text, 2)[7], "1 second ago");
        assert_eq!(cells(&text, 3)[1..3], ["silent", "9"]);
        assert_eq!(cells(&text, 3)[7], "3 minutes ago");
    }

    #[test]
    fn an_older_coordinator_without_the_state_is_read_from_alive_and_the_jobs() {
        let old = |alive: bool, running: &[i64]| v1::Worker {
            alive,
            running_jobs: running.to_vec(),
            last_heartbeat_ms: 10_000,
            ..Default::default()
        };
        assert_eq!(wire::worker_state_name(&old(true, &[])), "idle");
        assert_eq!(wire::worker_state_name(&old(true, &[1])), "busy");
        assert_eq!(wire::worker_state_name(&old(false, &[1])), "silent");
        assert_eq!(wire::heartbeat_age_ms(&old(true, &[]), 70_000), 60_000);
    }

    #[test]
    fn json_names_the_state_and_the_heartbeat_age() {
        let json = wire::worker(&worker(v1::WorkerState::Silent, 42_000, &[9]), 0);
        assert_eq!(json["state"], "silent");
        assert_eq!(json["heartbeat_age_ms"], 42_000);
        assert_eq!(json["running_jobs"], serde_json::json!([9]));
        assert_eq!(json["labels"]["rack"], "3");
    }
}
