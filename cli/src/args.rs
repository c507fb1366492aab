//! The command line: global options, subcommands and their flags.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use camp_proto::spec::{DeviceRequest, LrStep, SpecError};
use camp_proto::v1;
use camp_proto::JobSpec;
use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

use crate::exit::UsageError;

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

/// Options every command takes.
#[derive(Debug, Clone, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalOpts {
    /// Coordinator address.
    #[arg(
        long,
        global = true,
        env = "CAMP_ADDR",
        default_value = "http://127.0.0.1:50051"
    )]
    pub addr: String,
    /// User name sent with every call (metadata x-camp-user) [default: $USER].
    #[arg(long, global = true, env = "CAMP_USER")]
    pub user: Option<String>,
    /// API token, sent as `authorization: Bearer <token>`.
    #[arg(long, global = true, env = "CAMP_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
}

impl GlobalOpts {
    /// `--user`, else `$USER`; `None` when neither is set.
    pub fn user_name(&self) -> Option<String> {
        self.user
            .clone()
            .or_else(|| std::env::var("USER").ok())
            .filter(|user| !user.is_empty())
    }
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Submit a job.
    Submit {
        #[command(subcommand)]
        stage: SubmitStage,
    },
    /// List jobs, newest first.
    Jobs(JobsArgs),
    /// Show one job's details.
    Show { id: i64 },
    /// Follow a job live until it finishes.
    #[command(
        after_help = "Exit code: 0 if the job succeeded, 1 if it failed, 7 if it was cancelled \
                            (and the usual error codes, e.g. 3 if there is no such job).\n\
                            With --json every event is printed as one JSON line (NDJSON)."
    )]
    Watch { id: i64 },
    /// Print a job's log lines.
    Logs { id: i64 },
    /// Print a job's metrics.
    Metrics(MetricsArgs),
    /// Cancel a job and print its new state.
    Cancel { id: i64 },
    /// List a job's checkpoints.
    Checkpoints { id: i64 },
    /// Work with one checkpoint.
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// List the workers.
    Workers,
}

#[derive(Debug, Subcommand)]
pub enum SubmitStage {
    /// Full-precision (FP32) training from scratch, as the reference.
    Baseline(BaselineArgs),
}

/// The flags of the reference's training script, plus camp's own.
#[derive(Debug, Args)]
pub struct BaselineArgs {
    /// Architecture: preact_resnet{20,32,44,56,110}_cifar.
    #[arg(short, long)]
    pub arch: String,
    /// Initial learning rate.
    #[arg(long, default_value_t = JobSpec::default().lr, allow_negative_numbers = true)]
    pub lr: f64,
    /// Mini-batch size.
    #[arg(short = 'b', long, default_value_t = JobSpec::default().batch_size, allow_negative_numbers = true)]
    pub batch_size: u32,
    /// Number of epochs to train.
    #[arg(long, default_value_t = JobSpec::default().epochs, allow_negative_numbers = true)]
    pub epochs: u32,
    /// Weight decay.
    #[arg(long = "weight-decay", visible_alias = "wd", default_value_t = JobSpec::default().weight_decay, allow_negative_numbers = true)]
    pub weight_decay: f64,
    /// SGD momentum.
    #[arg(long, default_value_t = JobSpec::default().momentum, allow_negative_numbers = true)]
    pub momentum: f64,
    /// Steps between step metrics.
    #[arg(short = 'p', long, default_value_t = JobSpec::default().print_freq, allow_negative_numbers = true)]
    pub print_freq: u32,
    /// Data set: cifar10, cifar100 or fashion-mnist.
    #[arg(long, default_value_t = JobSpec::default().dataset)]
    pub dataset: String,
    /// A name for the job.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    /// Random seed.
    #[arg(long, default_value_t = JobSpec::default().seed, allow_negative_numbers = true)]
    pub seed: u64,
    /// Scheduling priority; higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Which kind of worker may run it: any, cpu or cuda.
    #[arg(long, default_value = JobSpec::default().device.as_str(), value_parser = parse_device)]
    pub device: DeviceRequest,
    /// Attempts before the job fails for good [default: the coordinator's, 3].
    #[arg(long, allow_negative_numbers = true)]
    pub max_attempts: Option<u32>,
    /// Learning-rate steps as EPOCH:GAMMA,... (lr *= gamma from that epoch on), or `none`.
    #[arg(long, value_name = "EPOCH:GAMMA,...", default_value_t = LrSchedule(JobSpec::default().lr_schedule))]
    pub lr_schedule: LrSchedule,
    /// bf16 autocast (CUDA only).
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last memory format.
    #[arg(long)]
    pub channels_last: bool,
    /// Train on the first N training images only (0 = all).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub train_limit: u32,
    /// Test on the first N test images only (0 = all).
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub test_limit: u32,
}

impl BaselineArgs {
    /// The spec these flags describe, validated; a bad value names its flag.
    pub fn to_spec(&self) -> Result<JobSpec, UsageError> {
        let spec = JobSpec {
            arch: self.arch.clone(),
            dataset: self.dataset.clone(),
            lr: self.lr,
            batch_size: self.batch_size,
            epochs: self.epochs,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            print_freq: self.print_freq,
            seed: self.seed,
            device: self.device,
            lr_schedule: self.lr_schedule.0.clone(),
            bf16: self.bf16,
            channels_last: self.channels_last,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            ..JobSpec::default()
        };
        spec.validate().map_err(spec_error_with_flag)?;
        Ok(spec)
    }
}

fn parse_device(text: &str) -> Result<DeviceRequest, String> {
    DeviceRequest::parse(text).map_err(|err| err.reason)
}

/// Names the flag that sets the spec field in error, e.g. `invalid spec: lr (--lr): ...`.
fn spec_error_with_flag(err: SpecError) -> UsageError {
    let flag = match err.field {
        "batch_size" => "--batch-size",
        "weight_decay" => "--weight-decay",
        "print_freq" => "--print-freq",
        "lr_schedule" => "--lr-schedule",
        "train_limit" => "--train-limit",
        "test_limit" => "--test-limit",
        "channels_last" => "--channels-last",
        other => return UsageError(format!("invalid spec: {other} (--{other}): {}", err.reason)),
    };
    UsageError(format!(
        "invalid spec: {} ({flag}): {}",
        err.field, err.reason
    ))
}

/// `--lr-schedule`: a multi-step schedule written `80:0.1,120:0.1,160:0.2`, or `none`.
#[derive(Debug, Clone, PartialEq)]
pub struct LrSchedule(pub Vec<LrStep>);

impl FromStr for LrSchedule {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("none") {
            return Ok(LrSchedule(Vec::new()));
        }
        let parse_step = |item: &str| -> Result<LrStep, String> {
            let (epoch, gamma) = item.split_once(':').ok_or_else(|| {
                format!("'{item}' is not EPOCH:GAMMA (e.g. 80:0.1), or use `none`")
            })?;
            let epoch: u32 = epoch.trim().parse().map_err(|_| {
                format!("epoch '{}' in '{item}' is not a whole number", epoch.trim())
            })?;
            let gamma: f64 = gamma
                .trim()
                .parse()
                .map_err(|_| format!("gamma '{}' in '{item}' is not a number", gamma.trim()))?;
            if epoch == 0 {
                return Err(format!("epoch in '{item}' must be at least 1"));
            }
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(format!("gamma in '{item}' must be a positive number"));
            }
            Ok(LrStep { epoch, gamma })
        };
        text.split(',')
            .map(|item| parse_step(item.trim()))
            .collect::<Result<_, _>>()
            .map(LrSchedule)
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let steps: Vec<String> = self
            .0
            .iter()
            .map(|step| format!("{}:{}", step.epoch, step.gamma))
            .collect();
        f.write_str(&steps.join(","))
    }
}

#[derive(Debug, Args)]
pub struct JobsArgs {
    /// Only jobs in this state.
    #[arg(long, value_enum)]
    pub state: Option<JobStateArg>,
    /// Only jobs of this stage (e.g. baseline).
    #[arg(long)]
    pub stage: Option<String>,
    /// Only jobs of this owner.
    #[arg(long)]
    pub owner: Option<String>,
    /// At most this many jobs [default: the coordinator's, 100].
    #[arg(long)]
    pub limit: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum JobStateArg {
    Queued,
    Running,
    Succeeded,
    Failed,
    Cancelled,
}

impl From<JobStateArg> for v1::JobState {
    fn from(state: JobStateArg) -> Self {
        match state {
            JobStateArg::Queued => v1::JobState::Queued,
            JobStateArg::Running => v1::JobState::Running,
            JobStateArg::Succeeded => v1::JobState::Succeeded,
            JobStateArg::Failed => v1::JobState::Failed,
            JobStateArg::Cancelled => v1::JobState::Cancelled,
        }
    }
}

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

#[derive(Debug, Subcommand)]
pub enum CheckpointAction {
    /// Download a job's checkpoint (the latest unless told otherwise), verifying size and sha256.
    #[command(group(ArgGroup::new("which").args(["best", "latest", "checkpoint"])))]
    Download(DownloadArgs),
}

#[derive(Debug, Args)]
pub struct DownloadArgs {
    /// The job id.
    pub id: i64,
    /// File to write (via FILE.tmp, renamed once verified).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// The checkpoint with the best top-1.
    #[arg(long)]
    pub best: bool,
    /// The most recent checkpoint (the default).
    #[arg(long)]
    pub latest: bool,
    /// This checkpoint id.
    #[arg(long, value_name = "CKPT_ID")]
    pub checkpoint: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    fn parse(line: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("camp").chain(line.iter().copied()))
    }

    fn baseline(line: &[&str]) -> BaselineArgs {
        let full: Vec<&str> = ["submit", "baseline"].iter().chain(line).copied().collect();
        match parse(&full).unwrap().command {
            Command::Submit {
                stage: SubmitStage::Baseline(args),
            } => args,
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn lr_schedule_parses_steps_and_none() {
        let schedule: LrSchedule = "80:0.1, 120:0.1,160:0.2".parse().unwrap();
        assert_eq!(schedule.0, camp_proto::spec::reference_lr_schedule());
        assert_eq!(schedule.to_string(), "80:0.1,120:0.1,160:0.2");
        assert_eq!("none".parse::<LrSchedule>().unwrap().0, vec![]);
        assert_eq!(LrSchedule(vec![]).to_string(), "none");
        assert_eq!(
            "3:10".parse::<LrSchedule>().unwrap().0,
            vec![LrStep {
                epoch: 3,
                gamma: 10.0
            }]
        );
    }

    #[test]
    fn lr_schedule_refuses_bad_steps() {
        for bad in [
            "", "80", "80:", "x:0.1", "0:0.1", "80:0", "80:-1", "80:nan", "80:0.1,,",
        ] {
            assert!(bad.parse::<LrSchedule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn baseline_defaults_equal_the_reference_spec() {
        let spec = baseline(&["-a", "preact_resnet20_cifar"])
            .to_spec()
            .unwrap();
        assert_eq!(spec, JobSpec::default());
    }

    #[test]
    fn baseline_flags_reach_the_spec() {
        let args = baseline(&[
            "-a",
            "preact_resnet44_cifar",
            "--lr",
            "0.05",
            "-b",
            "64",
            "--epochs",
            "3",
            "--wd",
            "1e-4",
            "--momentum",
            "0.8",
            "-p",
            "5",
            "--dataset",
            "fashion-mnist",
            "--seed",
            "7",
            "--device",
            "cuda",
            "--lr-schedule",
            "none",
            "--bf16",
            "--channels-last",
            "--train-limit",
            "256",
            "--test-limit",
            "128",
            "--name",
            "tiny",
            "--priority",
            "-2",
            "--max-attempts",
            "1",
        ]);
        let spec = args.to_spec().unwrap();
        assert_eq!(spec.arch, "preact_resnet44_cifar");
        assert_eq!(
            (
                spec.lr,
                spec.batch_size,
                spec.epochs,
                spec.weight_decay,
                spec.momentum
            ),
            (0.05, 64, 3, 1e-4, 0.8)
        );
        assert_eq!(
            (spec.print_freq, spec.seed, spec.device),
            (5, 7, DeviceRequest::Cuda)
        );
        assert_eq!(spec.dataset, "fashion-mnist");
        assert!(spec.lr_schedule.is_empty() && spec.bf16 && spec.channels_last);
        assert_eq!((spec.train_limit, spec.test_limit), (256, 128));
        assert_eq!(
            (args.name.as_str(), args.priority, args.max_attempts),
            ("tiny", -2, Some(1))
        );
        assert_eq!(
            baseline(&["-a", "x", "--weight-decay", "0.5"]).weight_decay,
            0.5
        );
    }

    #[test]
    fn bad_values_name_the_flag() {
        let invalid = |line: &[&str]| baseline(line).to_spec().unwrap_err().to_string();
        assert!(invalid(&["-a", "resnet9000"]).contains("--arch"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "--lr", "-0.1"]).contains("--lr"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "-b", "0"]).contains("--batch-size"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "--wd", "-1"]).contains("--weight-decay"));
        assert!(
            invalid(&["-a", "preact_resnet20_cifar", "--dataset", "imagenet"])
                .contains("--dataset")
        );
        assert!(invalid(&["-a", "preact_resnet20_cifar", "-p", "0"]).contains("--print-freq"));
        assert!(
            invalid(&["-a", "preact_resnet20_cifar", "--bf16", "--device", "cpu"])
                .contains("--bf16")
        );

        let usage = |line: &[&str]| parse(line).unwrap_err();
        let err = usage(&["submit", "baseline", "-a", "x", "--lr-schedule", "80"]);
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("--lr-schedule"), "{err}");
        let err = usage(&["submit", "baseline", "-a", "x", "--device", "tpu"]);
        assert!(err.to_string().contains("--device"), "{err}");
        let err = usage(&["submit", "baseline", "-a", "x", "-b", "-1"]);
        assert!(err.to_string().contains("--batch-size"), "{err}");
        assert_eq!(
            usage(&["submit", "baseline"]).kind(),
            ErrorKind::MissingRequiredArgument
        );
        assert_eq!(usage(&["submit", "baseline"]).exit_code(), 2);
    }

    #[test]
    fn global_flags_go_anywhere() {
        let cli = parse(&[
            "jobs",
            "--json",
            "--addr",
            "http://coord:1",
            "--user",
            "ada",
            "--state",
            "running",
        ])
        .unwrap();
        assert!(cli.global.json);
        assert_eq!(cli.global.addr, "http://coord:1");
        assert_eq!(cli.global.user_name().as_deref(), Some("ada"));
        match cli.command {
            Command::Jobs(args) => assert_eq!(args.state, Some(JobStateArg::Running)),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn download_takes_one_selector() {
        assert!(parse(&[
            "checkpoint",
            "download",
            "3",
            "-o",
            "f",
            "--best",
            "--latest"
        ])
        .is_err());
        assert!(parse(&["checkpoint", "download", "3", "--best"]).is_err());
        let cli = parse(&[
            "checkpoint",
            "download",
            "3",
            "-o",
            "f",
            "--checkpoint",
            "9",
        ])
        .unwrap();
        match cli.command {
            Command::Checkpoint {
                action: CheckpointAction::Download(args),
            } => {
                assert_eq!((args.id, args.checkpoint, args.best), (3, Some(9), false))
            }
            other => panic!("parsed as {other:?}"),
        }
    }
}
