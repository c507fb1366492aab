//! `camp metrics`: a job's stored metrics as a table, CSV or JSON.
//!
//! A job may hold millions of points (more than one reply may carry), so the
//! metrics are read a page at a time and printed as each page comes, in the
//! order they were stored (within a series that is step order: a new attempt
//! drops the points past the step it resumes from); memory holds one page.
//! `--last N` and `--since STEP` ask the coordinator for the newest points
//! only.

use camp_proto::limits::MAX_METRICS_PAGE;
use camp_proto::v1::{self, QueryMetricsRequest};
use clap::Args;
use std::io::Write;

use crate::client;
use crate::global_opts::GlobalOpts;
use crate::output::{age, now_ms, number};
use crate::pages;
use camp_proto::text::{csv_field, exact};
use camp_proto::wire;

#[derive(Debug, Args)]
pub struct MetricsArgs {
    pub id: i64,
    /// Only metrics with this name.
    #[arg(long)]
    pub name: Option<String>,
    /// Only metrics of this attempt.
    #[arg(long)]
    pub attempt: Option<u32>,
    /// Only points at this step or later.
    #[arg(long, value_name = "STEP", value_parser = clap::value_parser!(i64).range(0..))]
    pub since: Option<i64>,
    /// Only the newest N points of each series (name), at most 20000.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=MAX_METRICS_PAGE as i64))]
    pub last: Option<u32>,
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
        since_step: args.since.unwrap_or(0),
        last: args.last.unwrap_or(0),
        ..Default::default()
    };
    let client = client::connect(opts).await?;
    let format = if args.csv {
        Format::Csv
    } else if opts.json {
        Format::Json
    } else {
        Format::Table
    };
    let mut printer =
        Printer { job_id: args.id, format, out: std::io::stdout().lock(), pages: 0, items: 0, widths: Vec::new(), now_ms: now_ms() };
    pages::each_metric_page(&client, &filter, |page| printer.page(&page)).await?;
    printer.end()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Csv,
    Json,
}

/// Prints pages of metrics as they come: one table (its columns as wide as
/// the first page needs), one CSV document or one JSON array.
struct Printer<W: Write> {
    job_id: i64,
    format: Format,
    out: W,
    pages: u64,
    /// JSON objects written so far.
    items: u64,
    /// The table's column widths, from its header and first page.
    widths: Vec<usize>,
    now_ms: i64,
}

impl<W: Write> Printer<W> {
    fn page(&mut self, metrics: &[v1::Metric]) -> anyhow::Result<()> {
        let first = self.pages == 0;
        self.pages += 1;
        match self.format {
            Format::Csv => {
                if first {
                    writeln!(self.out, "{CSV_HEADER}")?;
                }
                self.out.write_all(csv_rows(self.job_id, metrics).as_bytes())?;
            }
            Format::Json => {
                for metric in metrics {
                    let open = if self.items == 0 { "[\n  " } else { ",\n  " };
                    write!(self.out, "{open}{}", serde_json::to_string(&wire::metric(self.job_id, metric))?)?;
                    self.items += 1;
                }
            }
            Format::Table => {
                let rows: Vec<[String; 6]> = metrics.iter().map(|metric| table_row(metric, self.now_ms)).collect();
                if first {
                    self.widths = TABLE_HEADER.iter().map(|h| h.len()).collect();
                    for row in &rows {
                        for (width, cell) in self.widths.iter_mut().zip(row) {
                            *width = (*width).max(cell.chars().count());
                        }
                    }
                    writeln!(self.out, "{}", aligned(&TABLE_HEADER, &self.widths))?;
                }
                for row in &rows {
                    writeln!(self.out, "{}", aligned(row, &self.widths))?;
                }
            }
        }
        Ok(())
    }

    /// Closes what the format opened.
    fn end(&mut self) -> anyhow::Result<()> {
        if self.format == Format::Json {
            writeln!(self.out, "{}]", if self.items == 0 { "[" } else { "\n" })?;
        }
        self.out.flush()?;
        Ok(())
    }
}

/// One line per metric; values in their shortest exact form (`camp_proto::text::exact`:
/// `1e308`, not 309 digits).
fn csv_rows(job_id: i64, metrics: &[v1::Metric]) -> String {
    let mut text = String::new();
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

const TABLE_HEADER: [&str; 6] = ["ATTEMPT", "EPOCH", "STEP", "NAME", "VALUE", "AT"];

fn table_row(metric: &v1::Metric, now_ms: i64) -> [String; 6] {
    [
        metric.attempt.to_string(),
        metric.epoch.to_string(),
        metric.step.to_string(),
        metric.name.clone(),
        number(metric.value),
        age(metric.at_ms, now_ms),
    ]
}

/// Cells padded to `widths`, two spaces apart (as `output::Table` prints); a wider cell is printed whole.
fn aligned<S: AsRef<str>>(cells: &[S], widths: &[usize]) -> String {
    let cells: Vec<String> = cells.iter().zip(widths).map(|(cell, width)| format!("{:<width$}", cell.as_ref())).collect();
    cells.join("  ").trim_end().to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header line, then one line per metric.
    fn csv(job_id: i64, metrics: &[v1::Metric]) -> String {
        format!("{CSV_HEADER}\n{}", csv_rows(job_id, metrics))
    }

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

    fn printed(format: Format, pages: &[Vec<v1::Metric>]) -> String {
        let mut printer = Printer { job_id: 7, format, out: Vec::new(), pages: 0, items: 0, widths: Vec::new(), now_ms: 0 };
        for page in pages {
            printer.page(page).unwrap();
        }
        printer.end().unwrap();
        String::from_utf8(printer.out).unwrap()
    }

    #[test]
    fn pages_print_as_one_table_one_csv_and_one_json_array() {
        let pages = vec![vec![metric("loss", 2.0), metric("top1", 0.5)], vec![], vec![metric("a_much_longer_name", 1.0)]];
        let json: serde_json::Value = serde_json::from_str(&printed(Format::Json, &pages)).unwrap();
        let names: Vec<&str> = json.as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
        assert_eq!(names, ["loss", "top1", "a_much_longer_name"]);
        let empty: serde_json::Value = serde_json::from_str(&printed(Format::Json, &[vec![]])).unwrap();
        assert_eq!(empty, serde_json::json!([]));

        let csv = printed(Format::Csv, &pages);
        assert_eq!(csv.lines().count(), 1 + 3, "one header: {csv}");
        assert!(csv.starts_with(CSV_HEADER) && csv.ends_with(",a_much_longer_name,1\n"), "{csv}");

        let table = printed(Format::Table, &pages);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 1 + 3, "{table}");
        assert!(lines[0].starts_with("ATTEMPT") && lines[2].split_whitespace().nth(3) == Some("top1"), "{table}");
        assert_eq!(lines[3].split_whitespace().nth(3), Some("a_much_longer_name"), "a later, wider cell still prints whole");
    }

    #[test]
    fn huge_and_tiny_values_stay_short_in_table_and_csv() {
        let metrics = [metric("big", 1e308), metric("small", 1e-300), metric("lr", 0.1)];
        let text = printed(Format::Table, &[metrics.to_vec()]);
        let values: Vec<&str> = text.lines().skip(1).map(|line| line.split_whitespace().nth(4).unwrap()).collect();
        assert_eq!(values, ["1e308", "1e-300", "0.1000"]);
        let csv = csv(7, &metrics);
        assert!(csv.contains(",big,1e308\n") && csv.contains(",small,1e-300\n") && csv.contains(",lr,0.1\n"), "{csv}");
        assert!(csv.len() < 200, "{csv}");
    }

    #[test]
    fn table_shows_rounded_values() {
        let text = printed(Format::Table, &[vec![metric("train_loss", 1.234567)]]);
        assert_eq!(text.lines().nth(1).unwrap().split_whitespace().collect::<Vec<_>>(), ["1", "1", "390", "train_loss", "1.23", "-"]);
    }
}
