//! `camp metrics`: a job's stored metrics as a table, CSV or JSON.

use camp_proto::v1::{self, QueryMetricsRequest};
use clap::Args;
use serde_json::Value;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{age, csv_field, exact, now_ms, number, print_json, Table};
use crate::pages;
use crate::wire;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    pub id: i64,
    /// Only metrics with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only metrics of this attempt.
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Print CSV (job_id,attempt,epoch,step,name,value); takes precedence over --json.
    #[arg(long)]
    pub csv: bool,
}

pub const CSV_HEADER: &str = "job_id,attempt,epoch,step,name,value";

pub async fn run(opts: &GlobalOpts, args: &MetricsArgs) -> anyhow::Result<()> {
    let filter = QueryMetricsRequest {
        job_id: args.id,
        name: args.name.clone().unwrap_or_default(),
        attempt: args.attempt.unwrap_or(0),
        ..Default::default()
    };
    let client = client::connect(opts).await?;
    let mut metrics = pages::metrics(&client, &filter).await?;
    sort_by_step(&mut metrics);
    if args.csv {
        print!("{}", csv(args.id, &metrics));
    } else if opts.json {
        print_json(&Value::Array(metrics.iter().map(|metric| wire::metric(args.id, metric)).collect()))?;
    } else {
        print!("{}", table(&metrics, now_ms()));
    }
    Ok(())
}

/// By step, then in the order stored (the coordinator pages them in stored order).
fn sort_by_step(metrics: &mut [v1::Metric]) {
    metrics.sort_by_key(|metric| (metric.step, metric.id));
}

/// The header line, then one line per metric; values in their shortest exact
/// form (`output::exact`: `1e308`, not 309 digits).
fn csv(job_id: i64, metrics: &[v1::Metric]) -> String {
    let mut text = format!("{CSV_HEADER}\n");
    for metric in metrics {
        text.push_str(&format!(
            "{job_id},{},{},{},{},{}\n",
            metric.attempt,
            metric.epoch,
            metric.step,
            csv_field(&metric.name),
            exact(metric.value)
        ));
    }
    text
}

fn table(metrics: &[v1::Metric], now_ms: i64) -> Table {
    let mut table = Table::new(&["attempt", "epoch", "step", "name", "value", "at"]);
    for metric in metrics {
        table.push(vec![
            metric.attempt.to_string(),
            metric.epoch.to_string(),
            metric.step.to_string(),
            metric.name.clone(),
            number(metric.value),
            age(metric.at_ms, now_ms),
        ]);
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metric(name: &str, value: f64) -> v1::Metric {
        v1::Metric { name: name.into(), value, step: 390, epoch: 1, attempt: 1, at_ms: 0, id: 0 }
    }

    #[test]
    fn csv_has_the_documented_header_and_exact_values() {
        let text = csv(7, &[metric("test_top1", 55.25), metric("lr", 0.1), metric("odd,name", 1e-5)]);
        assert_eq!(
            text,
            "job_id,attempt,epoch,step,name,value\n\
             7,1,1,390,test_top1,55.25\n\
             7,1,1,390,lr,0.1\n\
             7,1,1,390,\"odd,name\",0.00001\n"
        );
    }

    #[test]
    fn metrics_are_shown_by_step_then_as_stored() {
        let at = |id: i64, step: i64| v1::Metric { id, step, ..metric("loss", 1.0) };
        // Stored order: attempt 2 re-reported steps 100 and 200 after the first attempt's 300.
        let mut metrics = vec![at(1, 100), at(2, 200), at(3, 300), at(4, 100), at(5, 200)];
        sort_by_step(&mut metrics);
        let order: Vec<(i64, i64)> = metrics.iter().map(|m| (m.step, m.id)).collect();
        assert_eq!(order, [(100, 1), (100, 4), (200, 2), (200, 5), (300, 3)]);
    }

    #[test]
    fn huge_and_tiny_values_stay_short_in_table_and_csv() {
        let metrics = [metric("big", 1e308), metric("small", 1e-300), metric("lr", 0.1)];
        let text = table(&metrics, 0).to_string();
        let values: Vec<&str> = text.lines().skip(1).map(|line| line.split_whitespace().nth(4).unwrap()).collect();
        assert_eq!(values, ["1e308", "1e-300", "0.1000"]);
        let csv = csv(7, &metrics);
        assert!(csv.contains(",big,1e308\n") && csv.contains(",small,1e-300\n") && csv.contains(",lr,0.1\n"), "{csv}");
        assert!(csv.len() < 200, "{csv}");
    }

    #[test]
    fn table_shows_rounded_values() {
        let text = table(&[metric("train_loss", 1.234567)], 0).to_string();
        assert_eq!(text.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>(), ["1", "1", "390", "train_loss", "1.23", "-"]);
    }
}
