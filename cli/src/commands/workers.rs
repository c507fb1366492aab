//! `camp workers`: the workers the coordinator knows.

use camp_proto::v1::{self, ListWorkersRequest};
use serde_json::Value;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{age, now_ms, print_json, Table};
use crate::wire;

pub async fn list(opts: &GlobalOpts) -> anyhow::Result<()> {
    let workers = client::connect(opts).await?.list_workers(ListWorkersRequest {}).await?.into_inner().workers;
    if opts.json {
        return print_json(&Value::Array(workers.iter().map(wire::worker).collect()));
    }
    print!("{}", table(&workers, now_ms()));
    Ok(())
}

fn table(workers: &[v1::Worker], now_ms: i64) -> Table {
    let mut table = Table::new(&["name", "device", "gpus", "datasets", "alive", "heartbeat", "running jobs"]);
    for worker in workers {
        let running: Vec<String> = worker.running_jobs.iter().map(i64::to_string).collect();
        table.push(vec![
            worker.name.clone(),
            worker.device_kind.clone(),
            worker.gpus.len().to_string(),
            worker.datasets.join(","),
            if worker.alive { "yes" } else { "no" }.into(),
            age(worker.last_heartbeat_ms, now_ms),
            running.join(","),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_row_per_worker() {
        let worker = v1::Worker {
            name: "gpu-a".into(),
            device_kind: "cuda".into(),
            gpus: vec!["H100".into()],
            datasets: vec!["cifar10".into(), "fashion-mnist".into()],
            alive: true,
            last_heartbeat_ms: 1_000,
            running_jobs: vec![3, 4],
            ..Default::default()
        };
        let text = table(&[worker], 6_000).to_string();
        let cells: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        assert_eq!(cells, ["gpu-a", "cuda", "1", "cifar10,fashion-mnist", "yes", "5s", "ago", "3,4"]);
    }
}
