//! One module per command group, each with its command's flags (`...Args`)
//! beside its handler; `run` dispatches a parsed command line.

pub mod checkpoints;
pub mod energy;
pub mod jobs;
pub mod metrics;
pub mod pipeline;
pub mod plot;
pub mod results;
mod submit;
pub mod up;
pub mod watch;
mod workers;

use self::checkpoints::CheckpointAction;
use self::pipeline::PipelineAction;
use crate::args::{Cli, Command};
use crate::exit;

/// Runs the command; the exit code is SUCCESS except where `watch` reports how the job ended.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let opts = &cli.global;
    match &cli.command {
        Command::Submit { stage } => submit::run(opts, stage).await?,
        Command::Jobs(args) => jobs::list(opts, args).await?,
        Command::Show { id } => jobs::show(opts, *id).await?,
        Command::Watch(args) => return watch::run(opts, args).await,
        Command::Logs { id } => jobs::logs(opts, *id).await?,
        Command::Metrics(args) => metrics::run(opts, args).await?,
        Command::Cancel { id } => jobs::cancel(opts, *id).await?,
        Command::Priority { id, priority } => jobs::set_priority(opts, *id, *priority).await?,
        Command::Checkpoints { id } => checkpoints::list(opts, *id).await?,
        Command::Checkpoint { action: CheckpointAction::Download(args) } => checkpoints::download(opts, args).await?,
        Command::Workers => workers::list(opts).await?,
        Command::Energy(args) => energy::run(opts, args)?,
        Command::Pipeline { action } => match action {
            PipelineAction::Camp(args) => pipeline::camp(opts, args).await?,
            PipelineAction::Submit { file, request_id } => pipeline::submit_file(opts, file, request_id).await?,
            PipelineAction::Show { id } => pipeline::show(opts, *id).await?,
            PipelineAction::List { limit } => pipeline::list(opts, *limit).await?,
            PipelineAction::Cancel { id } => pipeline::cancel(opts, *id).await?,
        },
        Command::Results(args) => results::results(opts, args).await?,
        Command::Up(args) => up::run(opts, args).await?,
        Command::Plot(args) => plot::run(opts, args).await?,
    }
    Ok(exit::SUCCESS)
}
