//! `camp pipeline`: experiments as DAGs of jobs. `camp` builds the method's
//! pipeline from flags, `submit` any DAG from YAML; `show`, `list` and `cancel`
//! work with what the coordinator has.
//!
//! The subcommands (`PipelineAction`) and their handlers are here; `build` makes
//! the CAMP pipeline from its flags (`PipelineCampArgs`), `file` reads a pipeline
//! file, `tree` draws `show`'s tree.

mod build;
mod file;
mod tree;

use std::path::{Path, PathBuf};

use camp_proto::v1::{CancelExperimentRequest, GetExperimentRequest};
use clap::Subcommand;
use serde_json::Value;

use self::build::{camp_pipeline, Pipeline, PipelineCampArgs};
use self::file::parse_pipeline;
use self::tree::{render_experiment, state_counts};
use crate::client;
use crate::exit::UsageError;
use crate::global_opts::GlobalOpts;
use crate::input_files::read_input_file;
use crate::output::{age, now_ms, print_json, Table};
use crate::pages;
use crate::spec_flags::RequestIdArg;
use camp_proto::wire;

#[derive(Debug, Subcommand)]
pub enum PipelineAction {
    /// Submit the CAMP pipeline: baseline (fp32), qat4, qat1, sp (from qat4), one rl-<alpha> per alpha (from sp).
    Camp(Box<PipelineCampArgs>),
    /// Submit any DAG from a YAML file: {name, max_attempts?, nodes: [{key, name?, after?, init_from?, priority?, spec}]}.
    Submit {
        /// The pipeline file.
        #[arg(value_name = "FILE.yaml")]
        file: PathBuf,
        #[command(flatten)]
        request_id: RequestIdArg,
    },
    /// Draw an experiment's DAG with each job's state and key result.
    Show {
        /// The experiment id.
        id: i64,
    },
    /// List experiments, newest first.
    List {
        /// At most this many, newest first [default: 100].
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
        limit: Option<u32>,
    },
    /// Cancel every unfinished job of an experiment.
    Cancel {
        /// The experiment id.
        id: i64,
    },
}

pub async fn camp(opts: &GlobalOpts, args: &PipelineCampArgs) -> anyhow::Result<()> {
    submit(opts, &camp_pipeline(args)?, &args.request_id).await
}

pub async fn submit_file(opts: &GlobalOpts, path: &Path, request_id: &RequestIdArg) -> anyhow::Result<()> {
    let text = read_input_file("pipeline file", path)?;
    let default_name = path.file_stem().map(|stem| stem.to_string_lossy().into_owned()).unwrap_or_default();
    let pipeline = parse_pipeline(&text, &default_name).map_err(|err| UsageError(format!("{}: {err}", path.display())))?;
    submit(opts, &pipeline, request_id).await
}

/// Submits under the request id (`--request-id`, else a fresh UUID), retried
/// while the coordinator is unavailable.
async fn submit(opts: &GlobalOpts, pipeline: &Pipeline, request_id: &RequestIdArg) -> anyhow::Result<()> {
    let request = pipeline.to_request(request_id.get_or_new());
    let experiment = client::with_retries("submitting the pipeline", || {
        let request = request.clone();
        async move {
            let experiment = client::connect(opts).await?.submit_pipeline(request).await?.into_inner();
            Ok(experiment)
        }
    })
    .await?;
    if opts.json {
        return print_json(&wire::experiment(&experiment));
    }
    let jobs: Vec<String> = experiment.jobs.iter().map(|job| format!("{} #{}", job.node, job.id)).collect();
    println!("submitted experiment {} ({}, {} jobs): {}", experiment.id, experiment.name, experiment.jobs.len(), jobs.join(", "));
    Ok(())
}

pub async fn show(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let experiment = client::connect(opts).await?.get_experiment(GetExperimentRequest { id }).await?.into_inner();
    if opts.json {
        return print_json(&wire::experiment(&experiment));
    }
    print!("{}", render_experiment(&experiment, now_ms()));
    Ok(())
}

pub async fn list(opts: &GlobalOpts, limit: Option<u32>) -> anyhow::Result<()> {
    let client = client::connect(opts).await?;
    let experiments = pages::experiments(&client, limit.map_or(100, |n| n as usize)).await?;
    if opts.json {
        return print_json(&Value::Array(experiments.iter().map(wire::experiment).collect()));
    }
    let now = now_ms();
    let mut table = Table::new(&["id", "name", "owner", "age"]);
    for experiment in &experiments {
        table.push(vec![experiment.id.to_string(), experiment.name.clone(), experiment.owner.clone(), age(experiment.created_at_ms, now)]);
    }
    print!("{table}");
    Ok(())
}

pub async fn cancel(opts: &GlobalOpts, id: i64) -> anyhow::Result<()> {
    let experiment = client::connect(opts).await?.cancel_experiment(CancelExperimentRequest { id }).await?.into_inner();
    if opts.json {
        return print_json(&wire::experiment(&experiment));
    }
    println!("experiment {}: {}", experiment.id, state_counts(&experiment.jobs));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::build::tests::camp_args;
    use super::*;
    use crate::args::Cli;
    use clap::Parser;

    #[tokio::test]
    async fn pipeline_files_and_schedules_are_capped() {
        let err = camp_pipeline(&camp_args(&["-a", "preact_resnet20_cifar", "--compress-rl", "/dev/zero"])).unwrap_err().0;
        assert!(err.starts_with("--compress-rl /dev/zero: larger than"), "{err}");
        let cli = Cli::try_parse_from(["camp", "--addr", "http://127.0.0.1:1", "pipeline", "submit", "/dev/zero"]).unwrap();
        let err = submit_file(&cli.global, Path::new("/dev/zero"), &RequestIdArg::default()).await.unwrap_err();
        assert_eq!(crate::exit::code_for_error(&err), crate::exit::USAGE);
        assert!(err.to_string().starts_with("pipeline file /dev/zero: larger than"), "{err}");
    }
}
