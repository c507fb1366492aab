//! The command line's tree: `Cli` (the global options and one `Command`), the
//! subcommands, and the lone arguments of the commands that take only a job id
//! (or, for `priority`, a job id and a number). Each command's flags live beside
//! its handler in `commands/`, the flags a submission shares in `spec_flags`,
//! the options every command takes in `global_opts`.

use clap::{Parser, Subcommand};

use crate::commands::checkpoints::CheckpointAction;
use crate::commands::energy::EnergyArgs;
use crate::commands::jobs::JobsArgs;
use crate::commands::metrics::MetricsArgs;
use crate::commands::pipeline::PipelineAction;
use crate::commands::plot::PlotArgs;
use crate::commands::results::ResultsArgs;
use crate::commands::up::UpArgs;
use crate::commands::watch::WatchArgs;
use crate::global_opts::GlobalOpts;
use crate::spec_flags::SubmitStage;

const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  other error (watch: the job failed)
  2  bad usage or invalid argument
  3  not found
  4  permission denied or not authenticated
  5  failed precondition (e.g. the job is not in a state that allows it)
  6  coordinator unreachable
  7  watch: the job was cancelled";

#[derive(Debug, Parser)]
#[command(name = "camp", version, about = "Submit and follow training jobs on a camp coordinator", after_help = EXIT_CODES)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalOpts,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job.
    Submit {
        #[command(subcommand)]
        stage: Box<SubmitStage>,
    },
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job's details.
    Show { id: i64 },
    /// Follow a job live until it finishes (reconnecting if the coordinator restarts).
    Watch(WatchArgs),
    /// Print a job's log lines.
    Logs { id: i64 },
    /// Print a job's metrics.
    Metrics(MetricsArgs),
    /// Cancel a job and print its new state.
    Cancel { id: i64 },
    /// Set a queued or running job's scheduling priority (higher runs first) and print the job.
    #[command(after_help = "Owner or admin. A priority above the coordinator's --max-user-priority needs an admin (exit 4 otherwise).")]
    Priority {
        /// The job id.
        id: i64,
        /// The new priority; may be negative.
        #[arg(allow_negative_numbers = true)]
        priority: i32,
    },
    /// List a job's checkpoints.
    Checkpoints { id: i64 },
    /// Work with one checkpoint.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// List the workers.
    Workers,
    /// Compute a network's energy per image (docs/method.md, "Energy"): per layer and in all. No coordinator.
    Energy(EnergyArgs),
    /// Submit, show, list and cancel pipelines (experiments: DAGs of jobs).
    Pipeline {
        #[command(subcommand)]
        action: PipelineAction,
    },
    /// One row per job of an experiment: stage, bits or alpha, top-1, energy, 4-bit share.
    Results(ResultsArgs),
    /// Plot an experiment's accuracy against energy (SVG or PNG by the file's extension).
    #[command(after_help = "Exit code 5 when the experiment has no succeeded job with top-1 and energy.")]
    Plot(PlotArgs),
    /// Run the service on this machine: a coordinator on the embedded store and one worker per GPU
    /// (or one CPU worker), serving --addr on loopback, until Ctrl-C.
    Up(UpArgs),
}

#[cfg(test)]
pub mod tests {
    use std::path::Path;

    use super::*;
    use crate::commands::jobs::JobStateArg;

    /// Parses `camp LINE...`.
    pub fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("camp").chain(line.iter().copied()))
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&["jobs", "--json", "--addr", "http://coord:1", "--user", "ada", "--state", "running"]).unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.addr, "http://coord:1");
        assert_eq!(cli.global.user_name().as_deref(), Some("ada"));
        match cli.command {
            Command::Jobs(args) => assert_eq!(args.state, Some(JobStateArg::Running)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn priority_takes_negative_numbers() {
        match parse(&["priority", "12", "-3"]).unwrap().command {
            Command::Priority { id, priority } => assert_eq!((id, priority), (12, -3)),
            other => panic!("parsed as {other:?}"),
        }
        match parse(&["priority", "12", "7", "--json"]).unwrap().command {
            Command::Priority { priority, .. } => assert_eq!(priority, 7),
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(parse(&["priority", "12"]).unwrap_err().exit_code(), 2);
        assert_eq!(parse(&["priority", "12", "high"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn tls_options_are_global() {
        let cli =
            parse(&["jobs", "--ca", "/etc/camp/ca.pem", "--addr", "https://coord:50051", "--tls-cert", "me.pem", "--tls-key", "me.key"])
                .unwrap();
        assert_eq!(cli.global.ca.as_deref(), Some(Path::new("/etc/camp/ca.pem")));
        assert_eq!(cli.global.tls_cert.as_deref(), Some(Path::new("me.pem")));
        assert_eq!(cli.global.tls_key.as_deref(), Some(Path::new("me.key")));
    }
}
