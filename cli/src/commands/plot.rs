//! `camp plot`: an experiment's accuracy/energy curve, from the coordinator or
//! from rows saved by `camp results --json`, drawn by `camp_figures::curve`
//! (the same figure the dashboard shows).

use std::path::PathBuf;

use camp_figures::{curve, Format};
use camp_proto::results::{self as result_rows, ResultRow};
use clap::Args;

use super::results;
use crate::exit::{PreconditionError, UsageError};
use crate::global_opts::GlobalOpts;
use crate::input_files::read_input_file;
use crate::output::print_json;

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

pub async fn run(opts: &GlobalOpts, args: &PlotArgs) -> anyhow::Result<()> {
    let format = Format::from_path(&args.output)
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
            (format!("experiment {}", experiment.id), result_rows::rows(&experiment), format!("{}{network}", experiment.name))
        }
        (None, None) => return Err(UsageError("give an experiment id or --rows FILE".into()).into()),
    };
    let points = curve::points(&rows);
    if points.is_empty() {
        return Err(PreconditionError(format!("{name} has no succeeded job with a top-1 and an energy to plot")).into());
    }
    curve::draw(&points, &title, &args.output, format)?;
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
    use super::*;

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
