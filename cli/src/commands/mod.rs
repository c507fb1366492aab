//! One module per command group; `run` dispatches a parsed command line.

mod checkpoints;
mod jobs;
mod metrics;
mod submit;
mod watch;
mod workers;

use crate::args::{CheckpointAction, Cli, Command, SubmitStage};
use crate::exit;

/// Runs the command; the exit code is SUCCESS except where `watch` reports how the job ended.
pub async fn run(cli: Cli) -> anyhow::Result<u8> {
    let opts = &cli.global;
    match &cli.command {
        Command::Submit {
            stage: SubmitStage::Baseline(args),
        } => submit::baseline(opts, args).await?,
        Command::Jobs(args) => jobs::list(opts, args).await?,
        Command::Show { id } => jobs::show(opts, *id).await?,
        Command::Watch { id } => return watch::run(opts, *id).await,
        Command::Logs { id } => jobs::logs(opts, *id).await?,
        Command::Metrics(args) => metrics::run(opts, args).await?,
        Command::Cancel { id } => jobs::cancel(opts, *id).await?,
        Command::Checkpoints { id } => checkpoints::list(opts, *id).await?,
        Command::Checkpoint {
            action: CheckpointAction::Download(args),
        } => checkpoints::download(opts, args).await?,
        Command::Workers => workers::list(opts).await?,
    }
    Ok(exit::SUCCESS)
}
