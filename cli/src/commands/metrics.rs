//! `camp metrics`: a job's stored metrics as a table, CSV or JSON.

use camp_proto::v1::{self, QueryMetricsRequest};
use serde_json::Value;

use crate::args::{GlobalOpts, MetricsArgs};
use crate::client;
use crate::output::{age, csv_field, now_ms, number, print_json, Table};
use crate::wire;

pub const CSV_HEADER: &str = "job_id,attempt,epoch,step,name,value";

pub async fn run(opts: &GlobalOpts, args: &MetricsArgs) -> anyhow::Result<()> {
    let request = QueryMetricsRequest {
        job_id: args.id,
        name: args.name.clone().unwrap_or_default(),
        attempt: args.attempt.unwrap_or(0),
        ..Default::default()
    };
    let metrics = client::connect(opts)
        .await?
        .query_metrics(request)
        .await?
        .into_inner()
        .metrics;
    if args.csv {
        print!("{}", csv(args.id, &metrics));
    } else if opts.json {
        print_json(&Value::Array(
            metrics
                .iter()
                .map(|metric| wire::metric(args.id, metric))
                .collect(),
        ))?;
    } else {
        print!("{}", table(&metrics, now_ms()));
    }
    Ok(())
}

/// The header line, then one line per metric; values in Rust's shortest exact form.
fn csv(job_id: i64, metrics: &[v1::Metric]) -> String {
    let mut text = format!("{CSV_HEADER}\n");
    for metric in metrics {
        text.push_str(&format!(
            "{job_id},{},{},{},{},{}\n",
            metric.attempt,
            metric.epoch,
            metric.step,
            csv_field(&metric.name),
            metric.value
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
        v1::Metric {
            name: name.into(),
            value,
            step: 390,
            epoch: 1,
            attempt: 1,
            at_ms: 0,
            id: 0,
        }
    }

    #[test]
    fn csv_has_the_documented_header_and_exact_values() {
        let text = csv(
            7,
            &[
                metric("test_top1", 55.25),
                metric("lr", 0.1),
                metric("odd,name", 1e-5),
            ],
        );
        assert_eq!(
            text,
            "job_id,attempt,epoch,step,name,value\n\
             7,1,1,390,test_top1,55.25\n\
             7,1,1,390,lr,0.1\n\
             7,1,1,390,\"odd,name\",0.00001\n"
        );
    }

    #[test]
    fn table_shows_rounded_values() {
        let text = table(&[metric("train_loss", 1.234567)], 0).to_string();
        assert_eq!(
            text.lines()
                .nth(1)
                .unwrap()
                .split_whitespace()
                .collect::<Vec<_>>(),
            ["1", "1", "390", "train_loss", "1.23", "-"]
        );
    }
}
