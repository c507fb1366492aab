//! `camp plot`: an experiment's accuracy/energy curve, from the coordinator or
//! from rows saved by `camp results --json`. The result rows become the points
//! that `plot` draws (it knows nothing of results).

use std::path::PathBuf;

use clap::Args;

use super::results::{self, ResultRow};
use crate::exit::{PreconditionError, UsageError};
use crate::global_opts::GlobalOpts;
use crate::input_files::read_input_file;
use crate::output::print_json;
use crate::plot::{self, Point, Series};

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// The experiment id.
    #[arg(required_unless_present = "rows")]
    pub id: Option<i64>,
    /// Plot rows saved from `camp results --json` instead of asking the coordinator.
    #[arg(long, value_name = "FILE", conflicts_with = "id")]
    pub rows: Option<PathBuf>,
    /// The image to write: FILE.svg or FILE.png.
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
}

/// The plottable rows: succeeded jobs with a top-1 and a positive energy.
pub fn points(rows: &[ResultRow]) -> Vec<Point> {
    rows.iter()
        .filter(|row| row.state == "succeeded")
        .filter_map(|row| {
            let (top1, energy) = (row.top1?, row.normalized_energy?);
            if !(top1.is_finite() && energy.is_finite() && energy > 0.0) {
                return None;
            }
            let (series, label) = match row.stage.as_str() {
                "baseline" => (Series::Fixed, "fp32".to_owned()),
                "qat" => (
                    Series::Fixed,
                    match (row.bits_weights, row.bits_activations) {
                        (Some(w), Some(a)) if w == a => format!("{w}-bit"),
                        (Some(w), Some(a)) => format!("w{w}/a{a}"),
                        _ => "qat".to_owned(),
                    },
                ),
                "sp" => (Series::CoAdaptive, "sp".to_owned()),
                "rl" => (Series::CoAdaptive, row.alpha.map_or("rl".to_owned(), |a| format!("α={a}"))),
                _ => return None,
            };
            Some(Point { label, series, energy, top1: 100.0 * top1 })
        })
        .collect()
}

pub async fn run(opts: &GlobalOpts, args: &PlotArgs) -> anyhow::Result<()> {
    let format = plot::Format::from_path(&args.output)
        .ok_or_else(|| UsageError(format!("-o {}: the file must end in .svg or .png", args.output.display())))?;
    let (name, rows, title) = match (&args.rows, args.id) {
        (Some(path), _) => {
            let text = read_input_file("--rows", path)?;
            let rows: Vec<ResultRow> = serde_json::from_str(&text)
                .map_err(|e| UsageError(format!("--rows {}: not `camp results --json` rows: {e}", path.display())))?;
            let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            (stem.clone(), rows, stem)
        }
        (None, Some(id)) => {
            let experiment = results::experiment(opts, id).await?;
            let network = experiment
                .jobs
                .iter()
                .find_map(|job| job.spec.as_ref())
                .map(|spec| format!(": {} on {}", spec.arch, spec.dataset))
                .unwrap_or_default();
            (format!("experiment {}", experiment.id), results::rows(&experiment), format!("{}{network}", experiment.name))
        }
        (None, None) => return Err(UsageError("give an experiment id or --rows FILE".into()).into()),
    };
    let points = points(&rows);
    if points.is_empty() {
        return Err(PreconditionError(format!("{name} has no succeeded job with a top-1 and an energy to plot")).into());
    }
    plot::draw(&points, &title, &args.output, format)?;
    if opts.json {
        return print_json(&serde_json::json!({
            "experiment_id": args.id,
            "output": args.output.display().to_string(),
            "points": points.len(),
        }));
    }
    println!("wrote {} ({} points)", args.output.display(), points.len());
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::plot::Format;

    fn row(node: &str, stage: &str, bits: u32, alpha: Option<f64>, top1: f64, energy: f64) -> ResultRow {
        ResultRow {
            node: node.into(),
            job_id: 1,
            stage: stage.into(),
            bits_weights: Some(bits),
            bits_activations: Some(bits),
            alpha,
            top1: Some(top1),
            normalized_energy: Some(energy),
            fullbit_share: None,
            state: "succeeded".into(),
        }
    }

    fn sample_rows() -> Vec<ResultRow> {
        let mut failed = row("rl-0.5", "rl", 1, Some(0.5), 0.5, 0.2);
        failed.state = "failed".into();
        vec![
            row("baseline", "baseline", 32, None, 0.9186, 70.77),
            row("qat4", "qat", 4, None, 0.912, 1.0),
            row("qat1", "qat", 1, None, 0.85, 0.106),
            row("sp", "sp", 1, None, 0.905, 0.62),
            row("rl-0.01", "rl", 1, Some(0.01), 0.909, 0.71),
            row("rl-0.1", "rl", 1, Some(0.1), 0.899, 0.41),
            row("rl-0.2", "rl", 1, Some(0.2), 0.89, 0.3),
            failed,
        ]
    }

    #[test]
    fn only_succeeded_jobs_with_results_are_points() {
        let points = points(&sample_rows());
        assert_eq!(points.len(), 7);
        assert_eq!(points, crate::plot::tests::sample_points(), "the points plot's own test draws");
        let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
        assert_eq!(labels, ["fp32", "4-bit", "1-bit", "sp", "α=0.01", "α=0.1", "α=0.2"]);
        assert_eq!(points[0].series, Series::Fixed);
        assert_eq!(points[5].series, Series::CoAdaptive);
        assert!((points[0].top1 - 91.86).abs() < 1e-9);
        let mut no_energy = row("x", "qat", 4, None, 0.9, 1.0);
        no_energy.normalized_energy = None;
        assert!(super::points(&[no_energy]).is_empty());
        assert_eq!(Format::from_path(Path::new("a/curve.PNG")), Some(Format::Png));
        assert_eq!(Format::from_path(Path::new("curve.pdf")), None);
    }

    #[tokio::test]
    async fn rows_files_are_capped_and_named() {
        let cli = <crate::args::Cli as clap::Parser>::try_parse_from(["camp", "plot", "--rows", "/dev/zero", "-o", "x.svg"]).unwrap();
        let crate::args::Command::Plot(args) = &cli.command else { panic!("not plot") };
        let err = run(&cli.global, args).await.unwrap_err();
        assert_eq!(crate::exit::code_for_error(&err), crate::exit::USAGE);
        let message = err.to_string();
        assert!(message.starts_with("--rows /dev/zero: larger than"), "{message}");
    }
}
