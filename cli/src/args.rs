//! The command line: global options, subcommands and their flags.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use camp_proto::energy::EnergyTable;
use camp_proto::limits;
use camp_proto::schedule::CompressSchedule;
use camp_proto::spec::{ActQuant, BitsOverride, DeviceRequest, LrStep, SpecError, Stage};
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
    #[arg(long, global = true, env = "CAMP_ADDR", default_value = "http://127.0.0.1:50051")]
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
    /// PEM CA to check an https:// coordinator's certificate against [default: the system's roots].
    #[arg(long, global = true, env = "CAMP_CA", value_name = "FILE")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate for mutual TLS (with --tls-key; https:// only).
    #[arg(long, global = true, env = "CAMP_TLS_CERT", value_name = "FILE")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, global = true, env = "CAMP_TLS_KEY", value_name = "FILE")]
    pub tls_key: Option<PathBuf>,
}

impl GlobalOpts {
    /// `--user`, else `$USER`; `None` when neither is set.
    pub fn user_name(&self) -> Option<String> {
        self.user.clone().or_else(|| std::env::var("USER").ok()).filter(|user| !user.is_empty())
    }
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
    /// Follow a job live until it finishes.
    #[command(after_help = "Exit code: 0 if the job succeeded, 1 if it failed, 7 if it was cancelled \
                            (and the usual error codes, e.g. 3 if there is no such job).\n\
                            With --json every event is printed as one JSON line (NDJSON).")]
    Watch { id: i64 },
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
}

#[derive(Debug, Args)]
pub struct EnergyArgs {
    /// Architecture: preact_resnet{20,32,44,56,110}_cifar.
    #[arg(short, long)]
    pub arch: String,
    /// Data set: cifar10, cifar100 or fashion-mnist.
    #[arg(long, default_value_t = JobSpec::default().dataset)]
    pub dataset: String,
    /// The stage's network and bits: sp and rl are dual path [default: qat when bits are given, else baseline].
    #[arg(long, value_enum)]
    pub stage: Option<StageArg>,
    #[command(flatten)]
    pub bits: BitsArgs,
    /// Bits of the modules whose path matches PATTERN (as for submit); repeatable.
    #[arg(long = "bits-override", value_name = "PATTERN=W[/A]")]
    pub bits_overrides: Vec<BitsOverrideArg>,
    /// Energy table (YAML with keys name, fp32_pj, int8_mult_pj, int8_add_pj) [default: horowitz-45nm].
    #[arg(long, value_name = "FILE.yaml")]
    pub energy_table: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StageArg {
    Baseline,
    Qat,
    Sp,
    Rl,
}

impl From<StageArg> for Stage {
    fn from(stage: StageArg) -> Self {
        match stage {
            StageArg::Baseline => Stage::Baseline,
            StageArg::Qat => Stage::Qat,
            StageArg::Sp => Stage::Sp,
            StageArg::Rl => Stage::Rl,
        }
    }
}

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

#[derive(Debug, Args)]
pub struct PipelineCampArgs {
    /// Architecture: preact_resnet{20,32,44,56,110}_cifar.
    #[arg(short, long)]
    pub arch: String,
    /// Data set: cifar10, cifar100 or fashion-mnist.
    #[arg(long, default_value_t = JobSpec::default().dataset)]
    pub dataset: String,
    /// The rl stage's alphas, one rl job each.
    #[arg(long, value_delimiter = ',', num_args = 1.., default_value = "0.01,0.05,0.1,0.2,0.5", allow_negative_numbers = true)]
    pub alphas: Vec<f64>,
    /// Epochs of every stage not given its own below.
    #[arg(long, default_value_t = JobSpec::default().epochs)]
    pub epochs: u32,
    /// Epochs of the baseline job [default: --epochs].
    #[arg(long)]
    pub baseline_epochs: Option<u32>,
    /// Epochs of the qat jobs [default: --epochs].
    #[arg(long)]
    pub qat_epochs: Option<u32>,
    /// Epochs of the sp job [default: --epochs].
    #[arg(long)]
    pub sp_epochs: Option<u32>,
    /// Epochs of the rl jobs [default: --epochs].
    #[arg(long)]
    pub rl_epochs: Option<u32>,
    /// Experiment name [default: camp-<arch>-<dataset>].
    #[arg(long)]
    pub name: Option<String>,
    /// Mini-batch size of every job [default: the stages', 128].
    #[arg(short = 'b', long)]
    pub batch_size: Option<u32>,
    /// Train on the first N training images only (0 = all).
    #[arg(long)]
    pub train_limit: Option<u32>,
    /// Test on the first N test images only (0 = all).
    #[arg(long)]
    pub test_limit: Option<u32>,
    /// Which kind of worker may run the jobs: any, cpu or cuda.
    #[arg(long, value_parser = parse_device)]
    pub device: Option<DeviceRequest>,
    /// Random seed of every job.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Steps between step metrics.
    #[arg(short = 'p', long)]
    pub print_freq: Option<u32>,
    /// Scheduling priority of every job; higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    /// Attempts per job before it fails for good [default: the coordinator's].
    #[arg(long)]
    pub max_attempts: Option<u32>,
    /// Distiller schedule for the qat4 job.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_qat4: Option<PathBuf>,
    /// Distiller schedule for the qat1 job.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_qat1: Option<PathBuf>,
    /// Distiller schedule for the sp job.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_sp: Option<PathBuf>,
    /// Distiller schedule for the rl jobs.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress_rl: Option<PathBuf>,
    #[command(flatten)]
    pub request_id: RequestIdArg,
}

/// `--request-id`: the idempotency key of a submission.
#[derive(Debug, Clone, Default, Args)]
pub struct RequestIdArg {
    /// Idempotency key (at most 128 bytes): a submission repeated with the same key returns the first one's result instead of submitting again [default: a fresh UUID per run].
    #[arg(long, value_name = "ID", value_parser = parse_request_id)]
    pub request_id: Option<String>,
}

impl RequestIdArg {
    /// The key given, else a fresh UUID v4: the CLI's own retries reuse it.
    pub fn get_or_new(&self) -> String {
        self.request_id.clone().unwrap_or_else(|| uuid::Uuid::new_v4().to_string())
    }
}

/// A request id as the coordinator takes it: non-empty, at most 128 bytes, no control characters.
fn parse_request_id(text: &str) -> Result<String, String> {
    if text.is_empty() {
        return Err("must not be empty".into());
    }
    limits::check_name(text, limits::MAX_REQUEST_ID_BYTES).map_err(|err| err.to_string())?;
    Ok(text.to_owned())
}

#[derive(Debug, Args)]
pub struct ResultsArgs {
    /// The experiment id.
    pub id: i64,
    /// Print CSV (node,job_id,stage,bits_weights,bits_activations,alpha,top1,normalized_energy,fullbit_share,state); takes precedence over --json.
    #[arg(long)]
    pub csv: bool,
}

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

#[derive(Debug, Subcommand)]
pub enum SubmitStage {
    /// Full-precision (FP32) training from scratch, as the reference.
    Baseline(BaselineArgs),
    /// Quantisation-aware training at fixed bits (4/4 unless told), from scratch or from a job.
    Qat(QatArgs),
    /// Dual-path network (1-bit and 4-bit paths), gates trained supervised, from a qat job.
    Sp(SpArgs),
    /// Dual-path network, gates trained by REINFORCE for an energy reward, from an sp job.
    Rl(RlArgs),
}

/// `TEXT [default: V]`, or the value per stage where the stages' defaults differ.
fn stage_default_help(text: &str, value: impl Fn(&JobSpec) -> String) -> String {
    let values: Vec<(Stage, String)> = [Stage::Baseline, Stage::Qat, Stage::Sp, Stage::Rl]
        .into_iter()
        .map(|stage| (stage, value(&JobSpec::defaults_for(stage))))
        .collect();
    if values.iter().all(|(_, v)| *v == values[0].1) {
        return format!("{text} [default: {}]", values[0].1);
    }
    let per_stage: Vec<String> = values.iter().map(|(stage, v)| format!("{} {v}", stage.as_str())).collect();
    format!("{text} [default: {}]", per_stage.join("; "))
}

fn rl_default_help(text: &str, value: impl Fn(&JobSpec) -> f64) -> String {
    format!("{text} [default: {}]", value(&JobSpec::defaults_for(Stage::Rl)))
}

/// The flags every stage takes: the reference's training script's, plus camp's own.
/// A spec flag left out takes `JobSpec::defaults_for(stage)`'s value.
#[derive(Debug, Args)]
pub struct CommonArgs {
    /// Architecture: preact_resnet{20,32,44,56,110}_cifar.
    #[arg(short, long)]
    pub arch: String,
    #[arg(long, allow_negative_numbers = true, help = stage_default_help("Initial learning rate.", |s| s.lr.to_string()))]
    pub lr: Option<f64>,
    #[arg(short = 'b', long, allow_negative_numbers = true, help = stage_default_help("Mini-batch size.", |s| s.batch_size.to_string()))]
    pub batch_size: Option<u32>,
    #[arg(long, allow_negative_numbers = true, help = stage_default_help("Number of epochs to train.", |s| s.epochs.to_string()))]
    pub epochs: Option<u32>,
    #[arg(long = "weight-decay", visible_alias = "wd", allow_negative_numbers = true, help = stage_default_help("Weight decay.", |s| s.weight_decay.to_string()))]
    pub weight_decay: Option<f64>,
    #[arg(long, allow_negative_numbers = true, help = stage_default_help("SGD momentum.", |s| s.momentum.to_string()))]
    pub momentum: Option<f64>,
    #[arg(short = 'p', long, allow_negative_numbers = true, help = stage_default_help("Steps between step metrics.", |s| s.print_freq.to_string()))]
    pub print_freq: Option<u32>,
    #[arg(long, help = stage_default_help("Data set: cifar10, cifar100 or fashion-mnist.", |s| s.dataset.clone()))]
    pub dataset: Option<String>,
    /// A name for the job.
    #[arg(long, default_value = "", hide_default_value = true)]
    pub name: String,
    #[arg(long, allow_negative_numbers = true, help = stage_default_help("Random seed.", |s| s.seed.to_string()))]
    pub seed: Option<u64>,
    /// Scheduling priority; higher runs first.
    #[arg(long, default_value_t = 0, allow_negative_numbers = true)]
    pub priority: i32,
    #[arg(long, value_parser = parse_device, help = stage_default_help("Which kind of worker may run it: any, cpu or cuda.", |s| s.device.as_str().to_owned()))]
    pub device: Option<DeviceRequest>,
    /// Attempts before the job fails for good [default: the coordinator's, 3].
    #[arg(long, allow_negative_numbers = true)]
    pub max_attempts: Option<u32>,
    #[command(flatten)]
    pub request_id: RequestIdArg,
    #[arg(long, value_name = "EPOCH:GAMMA,...", help = stage_default_help(
        "Learning-rate steps as EPOCH:GAMMA,...: lr *= GAMMA once EPOCH epochs have completed, as distiller \
         counts them (80:0.1 = x0.1 from the 81st epoch on), or `none`.",
        |s| LrSchedule(s.lr_schedule.clone()).to_string()))]
    pub lr_schedule: Option<LrSchedule>,
    /// bf16 autocast (CUDA only).
    #[arg(long)]
    pub bf16: bool,
    /// Channels-last memory format.
    #[arg(long)]
    pub channels_last: bool,
    /// Train on the first N training images only (0 = all) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub train_limit: Option<u32>,
    /// Test on the first N test images only (0 = all) [default: 0].
    #[arg(long, allow_negative_numbers = true)]
    pub test_limit: Option<u32>,
    /// A distiller schedule (the reference's configs/*.yaml): sets the quantisation
    /// (bits, DoReFa/PACT, and bits_overrides as the whole list: the stage's own
    /// defaults are dropped, so a layer it does not list is quantised) and the LR
    /// schedule; the flags above and below still win.
    #[arg(long, value_name = "FILE.yaml")]
    pub compress: Option<PathBuf>,
    /// Bits of the modules whose path matches PATTERN (glob, `*` matches anything):
    /// W weight bits, A activation bits (A = W when left out); `fp` = full precision.
    /// Repeatable; checked in order before the stage's defaults (or a --compress
    /// file's list), first match wins.
    #[arg(long = "bits-override", value_name = "PATTERN=W[/A]")]
    pub bits_overrides: Vec<BitsOverrideArg>,
    /// Energy table (YAML with keys name, fp32_pj, int8_mult_pj, int8_add_pj)
    /// [default: horowitz-45nm].
    #[arg(long, value_name = "FILE.yaml")]
    pub energy_table: Option<PathBuf>,
}

/// Weight and activation bits of the quantised layers.
#[derive(Debug, Default, Args)]
pub struct BitsArgs {
    /// Weight and activation bits alike (1..8, or 32).
    #[arg(long, value_name = "N", conflicts_with_all = ["bits_weights", "bits_activations"])]
    pub bits: Option<u32>,
    /// Weight bits [default: the stage's: qat 4; sp and rl 1, the basic path (the 4-bit path stays at 4)].
    #[arg(long, value_name = "N")]
    pub bits_weights: Option<u32>,
    /// Activation bits [default: as for weights].
    #[arg(long, value_name = "N")]
    pub bits_activations: Option<u32>,
}

impl BitsArgs {
    pub fn apply(&self, spec: &mut JobSpec) {
        if let Some(bits) = self.bits {
            spec.bits_weights = Some(bits);
            spec.bits_activations = Some(bits);
        }
        if let Some(bits) = self.bits_weights {
            spec.bits_weights = Some(bits);
        }
        if let Some(bits) = self.bits_activations {
            spec.bits_activations = Some(bits);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ActQuantArg {
    /// DoReFa: clamp to [0, 1], then quantise (the reference's).
    Dorefa,
    /// PACT: a learned clip per layer.
    Pact,
}

impl From<ActQuantArg> for ActQuant {
    fn from(arg: ActQuantArg) -> Self {
        match arg {
            ActQuantArg::Dorefa => ActQuant::Dorefa,
            ActQuantArg::Pact => ActQuant::Pact,
        }
    }
}

fn job_id(text: &str) -> Result<i64, String> {
    match text.parse::<i64>() {
        Ok(id) if id > 0 => Ok(id),
        _ => Err(format!("'{text}' is not a job id (a positive whole number)")),
    }
}

#[derive(Debug, Args)]
pub struct BaselineArgs {
    #[command(flatten)]
    pub common: CommonArgs,
}

#[derive(Debug, Args)]
pub struct QatArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub bits: BitsArgs,
    /// Activation quantiser [default: dorefa].
    #[arg(long, value_enum)]
    pub act_quant: Option<ActQuantArg>,
    /// Weight decay of PACT's learned clips [default: --weight-decay].
    #[arg(long, value_name = "WD")]
    pub pact_weight_decay: Option<f64>,
    /// Start from this job's best checkpoint (it waits for the job to succeed).
    #[arg(long, value_name = "JOB", value_parser = job_id)]
    pub init_from: Option<i64>,
}

#[derive(Debug, Args)]
pub struct SpArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub bits: BitsArgs,
    /// The qat (4-bit) job to start from (its best checkpoint; it waits for the job to succeed).
    #[arg(long, value_name = "JOB", value_parser = job_id)]
    pub init_from: i64,
}

#[derive(Debug, Args)]
pub struct RlArgs {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub bits: BitsArgs,
    /// The sp job to start from (its best checkpoint; it waits for the job to succeed).
    #[arg(long, value_name = "JOB", value_parser = job_id)]
    pub init_from: i64,
    #[arg(long, allow_negative_numbers = true, help = rl_default_help("Energy reward per gate that picks the 1-bit path: the accuracy/energy knob.", |s| s.alpha))]
    pub alpha: Option<f64>,
    #[arg(long, allow_negative_numbers = true, help = rl_default_help("Discount between gates.", |s| s.gamma))]
    pub gamma: Option<f64>,
    #[arg(long, allow_negative_numbers = true, help = rl_default_help("Weight of the REINFORCE loss.", |s| s.rl_weight))]
    pub rl_weight: Option<f64>,
    /// Task reward: per_image (each image's gates get its own -CE) or batch_mean
    /// (the reference's arithmetic: every image's gates get the batch's mean -CE) [default: per_image].
    #[arg(long, value_enum)]
    pub rl_task_reward: Option<RlTaskRewardArg>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RlTaskRewardArg {
    /// Spelled as in spec files.
    #[value(name = "per_image")]
    PerImage,
    #[value(name = "batch_mean")]
    BatchMean,
}

impl From<RlTaskRewardArg> for camp_proto::spec::RlTaskReward {
    fn from(arg: RlTaskRewardArg) -> Self {
        match arg {
            RlTaskRewardArg::PerImage => camp_proto::spec::RlTaskReward::PerImage,
            RlTaskRewardArg::BatchMean => camp_proto::spec::RlTaskReward::BatchMean,
        }
    }
}

impl SubmitStage {
    pub fn common(&self) -> &CommonArgs {
        match self {
            SubmitStage::Baseline(args) => &args.common,
            SubmitStage::Qat(args) => &args.common,
            SubmitStage::Sp(args) => &args.common,
            SubmitStage::Rl(args) => &args.common,
        }
    }

    /// The spec these flags describe, validated; a bad value names its flag.
    pub fn to_spec(&self) -> Result<JobSpec, UsageError> {
        match self {
            SubmitStage::Baseline(args) => args.common.to_spec(Stage::Baseline, |_| {}),
            SubmitStage::Qat(args) => args.common.to_spec(Stage::Qat, |spec| {
                args.bits.apply(spec);
                if let Some(act_quant) = args.act_quant {
                    spec.act_quant = act_quant.into();
                }
                if args.pact_weight_decay.is_some() {
                    spec.pact_weight_decay = args.pact_weight_decay;
                }
                spec.init_from = args.init_from.unwrap_or(0);
            }),
            SubmitStage::Sp(args) => args.common.to_spec(Stage::Sp, |spec| {
                args.bits.apply(spec);
                spec.init_from = args.init_from;
            }),
            SubmitStage::Rl(args) => args.common.to_spec(Stage::Rl, |spec| {
                args.bits.apply(spec);
                spec.init_from = args.init_from;
                if let Some(alpha) = args.alpha {
                    spec.alpha = alpha;
                }
                if let Some(gamma) = args.gamma {
                    spec.gamma = gamma;
                }
                if let Some(rl_weight) = args.rl_weight {
                    spec.rl_weight = rl_weight;
                }
                if let Some(reward) = args.rl_task_reward {
                    spec.rl_task_reward = reward.into();
                }
            }),
        }
    }
}

impl CommonArgs {
    /// `JobSpec::defaults_for(stage)`, then `--compress`, then the flags
    /// (`stage_flags` sets the stage's own); validated, bad values naming their flag.
    pub fn to_spec(&self, stage: Stage, stage_flags: impl FnOnce(&mut JobSpec)) -> Result<JobSpec, UsageError> {
        let mut spec = JobSpec::defaults_for(stage);
        spec.arch = self.arch.clone();
        set(&mut spec.dataset, self.dataset.clone());
        set(&mut spec.lr, self.lr);
        set(&mut spec.batch_size, self.batch_size);
        set(&mut spec.epochs, self.epochs);
        set(&mut spec.weight_decay, self.weight_decay);
        set(&mut spec.momentum, self.momentum);
        set(&mut spec.print_freq, self.print_freq);
        set(&mut spec.seed, self.seed);
        set(&mut spec.device, self.device);
        set(&mut spec.train_limit, self.train_limit);
        set(&mut spec.test_limit, self.test_limit);
        spec.bf16 |= self.bf16;
        spec.channels_last |= self.channels_last;
        let schedule = match &self.compress {
            Some(path) => Some(apply_compress_file(path, &mut spec, "--compress")?),
            None => None,
        };
        set(&mut spec.lr_schedule, self.lr_schedule.clone().map(|s| s.0));
        stage_flags(&mut spec);
        if let Some(schedule) = &schedule {
            // The file's entries without wts or acts take the job's bits, `--bits` included.
            schedule.apply_bits_overrides(&mut spec);
        }
        if !self.bits_overrides.is_empty() {
            let mut overrides: Vec<BitsOverride> = self.bits_overrides.iter().map(|o| o.0.clone()).collect();
            overrides.append(&mut spec.bits_overrides);
            spec.bits_overrides = overrides;
        }
        if let Some(path) = &self.energy_table {
            spec.energy_table = read_energy_table(path)?;
        }
        check_spec(&spec)?;
        Ok(spec)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Validates a spec as the coordinator will, plus what only the architecture
/// can tell (an override pattern that matches no module).
pub fn check_spec(spec: &JobSpec) -> Result<(), UsageError> {
    spec.validate().map_err(spec_error_with_flag)?;
    camp_proto::energy::report(spec).map_err(spec_error_with_flag)?;
    Ok(())
}

/// Reads a file the CLI is given (`--compress`, `--energy-table`, `--rows`, a
/// pipeline file): at most `limits::MAX_CONFIG_FILE_BYTES` of UTF-8 text, so
/// that `--compress /dev/zero` fails at once. The error names the flag and the path (exit 2).
pub fn read_input_file(flag: &str, path: &Path) -> Result<String, UsageError> {
    limits::read_config_file(path).map_err(|err| UsageError(format!("{flag} {}: {err}", path.display())))
}

/// Reads a distiller schedule and applies it to `spec` (for `spec.epochs` epochs).
/// Whoever changes the spec's bits afterwards calls `apply_bits_overrides` on
/// the schedule returned, so that the file's entries without `wts` or `acts` follow.
pub fn apply_compress_file(path: &Path, spec: &mut JobSpec, flag: &str) -> Result<CompressSchedule, UsageError> {
    let text = read_input_file(flag, path)?;
    let schedule =
        camp_proto::schedule::parse(&text, spec.epochs).map_err(|err| UsageError(format!("{flag} {}: {err}", path.display())))?;
    schedule.apply(spec);
    Ok(schedule)
}

/// Reads an energy table: YAML with every one of name, fp32_pj, int8_mult_pj, int8_add_pj.
pub fn read_energy_table(path: &Path) -> Result<EnergyTable, UsageError> {
    let fail = |reason: String| UsageError(format!("--energy-table {}: {reason}", path.display()));
    let text = read_input_file("--energy-table", path)?;
    parse_energy_table(&text).map_err(fail)
}

pub fn parse_energy_table(text: &str) -> Result<EnergyTable, String> {
    let value: serde_yaml::Value = serde_yaml::from_str(text).map_err(|err| err.to_string())?;
    let map = value.as_mapping().ok_or("expected a mapping")?;
    for key in ["name", "fp32_pj", "int8_mult_pj", "int8_add_pj"] {
        if !map.contains_key(key) {
            return Err(format!("{key}: missing"));
        }
    }
    let table: EnergyTable = serde_yaml::from_value(value).map_err(|err| err.to_string())?;
    table.validate().map_err(|err| err.reason)?;
    Ok(table)
}

/// `--bits-override PATTERN=W[/A]`.
#[derive(Debug, Clone, PartialEq)]
pub struct BitsOverrideArg(pub BitsOverride);

impl FromStr for BitsOverrideArg {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (pattern, bits) =
            text.split_once('=').ok_or_else(|| format!("'{text}' is not PATTERN=W[/A] (e.g. 'layer3.*=8/4' or 'fc=fp')"))?;
        let pattern = pattern.trim();
        if pattern.is_empty() {
            return Err(format!("'{text}': the pattern is empty"));
        }
        let one = |bits: &str| -> Result<Option<u32>, String> {
            let bits = bits.trim();
            if bits.eq_ignore_ascii_case("fp") {
                return Ok(None);
            }
            match bits.parse::<u32>() {
                Ok(b) if (1..=8).contains(&b) || b == 32 => Ok(Some(b)),
                _ => Err(format!("'{text}': bits '{bits}' must be 1..8, 32 or fp")),
            }
        };
        let (wts, acts) = match bits.split_once('/') {
            Some((w, a)) => (one(w)?, one(a)?),
            None => {
                let b = one(bits)?;
                (b, b)
            }
        };
        Ok(BitsOverrideArg(BitsOverride { pattern: pattern.to_owned(), wts, acts }))
    }
}

fn parse_device(text: &str) -> Result<DeviceRequest, String> {
    DeviceRequest::parse(text).map_err(|err| err.reason)
}

/// Names the flag that sets the spec field in error, e.g. `invalid spec: lr (--lr): ...`.
pub fn spec_error_with_flag(err: SpecError) -> UsageError {
    let flag = match err.field {
        "batch_size" => "--batch-size",
        "weight_decay" => "--weight-decay",
        "print_freq" => "--print-freq",
        "lr_schedule" => "--lr-schedule",
        "train_limit" => "--train-limit",
        "test_limit" => "--test-limit",
        "channels_last" => "--channels-last",
        "bits_weights" => "--bits-weights",
        "bits_activations" => "--bits-activations",
        "act_quant" => "--act-quant",
        "pact_weight_decay" => "--pact-weight-decay",
        "bits_overrides" => "--bits-override",
        "energy_table" => "--energy-table",
        "rl_weight" => "--rl-weight",
        "rl_task_reward" => "--rl-task-reward",
        "init_from" => "--init-from",
        other => return UsageError(format!("invalid spec: {other} (--{other}): {}", err.reason)),
    };
    UsageError(format!("invalid spec: {} ({flag}): {}", err.field, err.reason))
}

/// `--lr-schedule`: a multi-step schedule written `80:0.1,120:0.1,160:0.2`, or `none`;
/// `80:0.1` multiplies the lr by 0.1 once 80 epochs have completed (from the 81st on).
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
            let (epoch, gamma) = item.split_once(':').ok_or_else(|| format!("'{item}' is not EPOCH:GAMMA (e.g. 80:0.1), or use `none`"))?;
            let epoch: u32 = epoch.trim().parse().map_err(|_| format!("epoch '{}' in '{item}' is not a whole number", epoch.trim()))?;
            let gamma: f64 = gamma.trim().parse().map_err(|_| format!("gamma '{}' in '{item}' is not a number", gamma.trim()))?;
            if epoch == 0 {
                return Err(format!("epoch in '{item}' must be at least 1"));
            }
            if !(gamma.is_finite() && gamma > 0.0) {
                return Err(format!("gamma in '{item}' must be a positive number"));
            }
            Ok(LrStep { epoch, gamma })
        };
        text.split(',').map(|item| parse_step(item.trim())).collect::<Result<_, _>>().map(LrSchedule)
    }
}

impl fmt::Display for LrSchedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("none");
        }
        let steps: Vec<String> = self.0.iter().map(|step| format!("{}:{}", step.epoch, crate::output::exact(step.gamma))).collect();
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
    /// At most this many jobs, fetched a page at a time [default: 100].
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..))]
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

    fn submit(stage: &str, line: &[&str]) -> SubmitStage {
        let full: Vec<&str> = ["submit", stage].iter().chain(line).copied().collect();
        match parse(&full).unwrap().command {
            Command::Submit { stage } => *stage,
            other => panic!("parsed as {other:?}"),
        }
    }

    fn baseline(line: &[&str]) -> SubmitStage {
        submit("baseline", line)
    }

    #[test]
    fn lr_schedule_parses_steps_and_none() {
        let schedule: LrSchedule = "80:0.1, 120:0.1,160:0.2".parse().unwrap();
        assert_eq!(schedule.0, camp_proto::spec::reference_lr_schedule());
        assert_eq!(schedule.to_string(), "80:0.1,120:0.1,160:0.2");
        assert_eq!("none".parse::<LrSchedule>().unwrap().0, vec![]);
        assert_eq!(LrSchedule(vec![]).to_string(), "none");
        assert_eq!("3:10".parse::<LrSchedule>().unwrap().0, vec![LrStep { epoch: 3, gamma: 10.0 }]);
    }

    #[test]
    fn lr_schedule_refuses_bad_steps() {
        for bad in ["", "80", "80:", "x:0.1", "0:0.1", "80:0", "80:-1", "80:nan", "80:0.1,,"] {
            assert!(bad.parse::<LrSchedule>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn baseline_defaults_equal_the_reference_spec() {
        let spec = baseline(&["-a", "preact_resnet20_cifar"]).to_spec().unwrap();
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
        assert_eq!((spec.lr, spec.batch_size, spec.epochs, spec.weight_decay, spec.momentum), (0.05, 64, 3, 1e-4, 0.8));
        assert_eq!((spec.print_freq, spec.seed, spec.device), (5, 7, DeviceRequest::Cuda));
        assert_eq!(spec.dataset, "fashion-mnist");
        assert!(spec.lr_schedule.is_empty() && spec.bf16 && spec.channels_last);
        assert_eq!((spec.train_limit, spec.test_limit), (256, 128));
        let common = args.common();
        assert_eq!((common.name.as_str(), common.priority, common.max_attempts), ("tiny", -2, Some(1)));
        assert_eq!(baseline(&["-a", "x", "--weight-decay", "0.5"]).common().weight_decay, Some(0.5));
    }

    #[test]
    fn bad_values_name_the_flag() {
        let invalid = |line: &[&str]| baseline(line).to_spec().unwrap_err().to_string();
        assert!(invalid(&["-a", "resnet9000"]).contains("--arch"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "--lr", "-0.1"]).contains("--lr"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "-b", "0"]).contains("--batch-size"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "--wd", "-1"]).contains("--weight-decay"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "--dataset", "imagenet"]).contains("--dataset"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "-p", "0"]).contains("--print-freq"));
        assert!(invalid(&["-a", "preact_resnet20_cifar", "--bf16", "--device", "cpu"]).contains("--bf16"));

        let usage = |line: &[&str]| parse(line).unwrap_err();
        let err = usage(&["submit", "baseline", "-a", "x", "--lr-schedule", "80"]);
        assert_eq!(err.kind(), ErrorKind::ValueValidation);
        assert!(err.to_string().contains("--lr-schedule"), "{err}");
        let err = usage(&["submit", "baseline", "-a", "x", "--device", "tpu"]);
        assert!(err.to_string().contains("--device"), "{err}");
        let err = usage(&["submit", "baseline", "-a", "x", "-b", "-1"]);
        assert!(err.to_string().contains("--batch-size"), "{err}");
        assert_eq!(usage(&["submit", "baseline"]).kind(), ErrorKind::MissingRequiredArgument);
        assert_eq!(usage(&["submit", "baseline"]).exit_code(), 2);
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
    fn download_takes_one_selector() {
        assert!(parse(&["checkpoint", "download", "3", "-o", "f", "--best", "--latest"]).is_err());
        assert!(parse(&["checkpoint", "download", "3", "--best"]).is_err());
        let cli = parse(&["checkpoint", "download", "3", "-o", "f", "--checkpoint", "9"]).unwrap();
        match cli.command {
            Command::Checkpoint { action: CheckpointAction::Download(args) } => {
                assert_eq!((args.id, args.checkpoint, args.best), (3, Some(9), false))
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    /// A schedule with the keys of the reference's configs/preact_resnet20_cifar_pact_fp4.yaml.
    const FP4: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_fp4.yaml");

    const R20: [&str; 2] = ["-a", "preact_resnet20_cifar"];

    fn spec_of(stage: &str, line: &[&str]) -> JobSpec {
        let full: Vec<&str> = R20.iter().chain(line).copied().collect();
        submit(stage, &full).to_spec().unwrap()
    }

    fn invalid(stage: &str, line: &[&str]) -> String {
        let full: Vec<&str> = R20.iter().chain(line).copied().collect();
        submit(stage, &full).to_spec().unwrap_err().to_string()
    }

    #[test]
    fn each_stage_defaults_to_defaults_for() {
        assert_eq!(spec_of("qat", &[]), JobSpec::defaults_for(Stage::Qat));
        let sp = spec_of("sp", &["--init-from", "7"]);
        assert_eq!(sp, JobSpec { init_from: 7, ..JobSpec::defaults_for(Stage::Sp) });
        assert_eq!((sp.lr, sp.lr_schedule[0]), (0.01, LrStep { epoch: 3, gamma: 10.0 }));
        assert_eq!((sp.weight_bits(), sp.activation_bits()), (1, 1));
        let rl = spec_of("rl", &["--init-from", "8"]);
        assert_eq!(rl, JobSpec { init_from: 8, ..JobSpec::defaults_for(Stage::Rl) });
        assert_eq!((rl.alpha, rl.gamma, rl.rl_weight, rl.lr), (0.1, 1.0, 0.01, 0.01));
        let qat = spec_of("qat", &[]);
        assert_eq!((qat.weight_bits(), qat.activation_bits(), qat.init_from), (4, 4, 0));

        for stage in ["sp", "rl"] {
            let err = parse(&["submit", stage, "-a", "preact_resnet20_cifar"]).unwrap_err();
            assert_eq!(err.kind(), clap::error::ErrorKind::MissingRequiredArgument, "{stage}");
            assert!(err.to_string().contains("--init-from"), "{err}");
            let err = parse(&["submit", stage, "-a", "x", "--init-from", "0"]).unwrap_err();
            assert!(err.to_string().contains("--init-from"), "{err}");
        }
    }

    #[test]
    fn stage_flags_reach_the_spec() {
        let qat = spec_of("qat", &["--bits", "2", "--act-quant", "pact", "--init-from", "5", "--lr", "0.05"]);
        assert_eq!((qat.bits_weights, qat.bits_activations), (Some(2), Some(2)));
        assert_eq!((qat.act_quant, qat.init_from, qat.lr), (ActQuant::Pact, 5, 0.05));
        let qat = spec_of("qat", &["--bits-weights", "2"]);
        assert_eq!((qat.weight_bits(), qat.activation_bits()), (2, 4));
        let qat = spec_of("qat", &["--bits-weights", "1", "--bits-activations", "8"]);
        assert_eq!((qat.weight_bits(), qat.activation_bits()), (1, 8));
        assert!(parse(&["submit", "qat", "-a", "x", "--bits", "2", "--bits-weights", "3"]).is_err());

        let sp = spec_of("sp", &["--init-from", "3", "--bits", "2", "--epochs", "5", "--lr-schedule", "none"]);
        assert_eq!((sp.bits_weights, sp.init_from, sp.epochs), (Some(2), 3, 5));
        assert!(sp.lr_schedule.is_empty());

        let rl = spec_of("rl", &["--init-from", "4", "--alpha", "0.5", "--gamma", "0.9", "--rl-weight", "0.02", "--seed", "3"]);
        assert_eq!((rl.alpha, rl.gamma, rl.rl_weight, rl.init_from, rl.seed), (0.5, 0.9, 0.02, 4, 3));
        assert_eq!(rl.rl_task_reward, camp_proto::spec::RlTaskReward::PerImage, "camp's default");
        let reference = spec_of("rl", &["--init-from", "4", "--rl-task-reward", "batch_mean"]);
        assert_eq!(reference.rl_task_reward, camp_proto::spec::RlTaskReward::BatchMean);

        let with_overrides = spec_of("qat", &["--bits-override", "layer3.*=8/4", "--bits-override", "fc=fp"]);
        assert_eq!(
            with_overrides.bits_overrides,
            vec![
                BitsOverride { pattern: "layer3.*".into(), wts: Some(8), acts: Some(4) },
                BitsOverride { pattern: "fc".into(), wts: None, acts: None },
            ]
        );
    }

    #[test]
    fn bits_overrides_parse() {
        let o = |text: &str| text.parse::<BitsOverrideArg>().map(|o| o.0);
        assert_eq!(o("layer3.*=8/4").unwrap(), BitsOverride { pattern: "layer3.*".into(), wts: Some(8), acts: Some(4) });
        assert_eq!(o("layer1.0.conv1=2").unwrap(), BitsOverride { pattern: "layer1.0.conv1".into(), wts: Some(2), acts: Some(2) });
        assert_eq!(o("fc=fp").unwrap(), BitsOverride { pattern: "fc".into(), wts: None, acts: None });
        assert_eq!(o("conv1=FP/4").unwrap(), BitsOverride { pattern: "conv1".into(), wts: None, acts: Some(4) });
        assert_eq!(o("x=32/fp").unwrap().wts, Some(32));
        for bad in ["layer3", "=4", "a=9", "a=0", "a=4/x", "a=", "a=4/"] {
            assert!(o(bad).is_err(), "{bad:?} parsed");
        }
        let err = parse(&["submit", "qat", "-a", "x", "--bits-override", "fc=12"]).unwrap_err();
        assert!(err.to_string().contains("--bits-override"), "{err}");
    }

    #[test]
    fn compress_applies_the_reference_fp4_schedule() {
        let dir = tempfile::tempdir().unwrap();
        let fp4 = dir.path().join("fp4.yaml");
        std::fs::write(&fp4, FP4).unwrap();
        let file = fp4.to_str().unwrap();
        let spec = spec_of("qat", &["--compress", file]);
        assert_eq!((spec.bits_weights, spec.bits_activations, spec.act_quant), (Some(4), Some(4), ActQuant::Dorefa));
        let patterns: Vec<&str> = spec.bits_overrides.iter().map(|o| o.pattern.as_str()).collect();
        assert_eq!(patterns, ["conv1", "layer1.0.pre_relu", "final_relu", "fc"]);
        assert!(spec.bits_overrides.iter().all(|o| o.wts.is_none() && o.acts.is_none()));
        // The file's list is the whole list (distiller's reading): camp's defaults are not appended.
        assert!(!spec.default_overrides);
        assert_eq!(spec.lr_schedule, camp_proto::spec::reference_lr_schedule());

        // Flags still win over the file; command-line overrides come first, then the file's list.
        let spec = spec_of("qat", &["--compress", file, "--bits", "2", "--lr-schedule", "100:0.1", "--bits-override", "layer3.*=8"]);
        assert_eq!((spec.bits_weights, spec.bits_activations), (Some(2), Some(2)));
        assert_eq!(spec.lr_schedule, vec![LrStep { epoch: 100, gamma: 0.1 }]);
        assert_eq!(spec.bits_overrides.len(), 5);
        assert_eq!(spec.bits_overrides[0].pattern, "layer3.*");
        assert!(!spec.default_overrides);

        // What cannot be honoured is named, exit 2.
        std::fs::write(&fp4, FP4.replace("class: DorefaQuantizer", "class: WRPNQuantizer")).unwrap();
        let err = submit("qat", &[R20[0], R20[1], "--compress", file]).to_spec().unwrap_err();
        assert!(err.0.contains("--compress") && err.0.contains("quantizers.pact_quantizer.class"), "{err}");
        assert_eq!(crate::exit::code_for_error(&err.into()), crate::exit::USAGE);
        std::fs::write(&fp4, FP4).unwrap();
        let err = invalid("qat", &["--compress", file, "--epochs", "300"]);
        assert!(err.contains("policies[0].ending_epoch"), "{err}");
        let err = invalid("qat", &["--compress", "/nonexistent/fp4.yaml"]);
        assert!(err.contains("--compress /nonexistent/fp4.yaml"), "{err}");
    }

    #[test]
    fn compress_entries_without_wts_or_acts_take_the_jobs_bits_flags_included() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp4.yaml");
        // conv1 gives no wts and fc no acts: distiller gives them the quantizer's bits.
        let yaml =
            FP4.replace("conv1: {wts: null, acts: null}", "conv1: {acts: null}").replace("fc: {wts: null, acts: null}", "fc: {wts: null}");
        std::fs::write(&path, yaml).unwrap();
        let file = path.to_str().unwrap();
        let bits_of = |spec: &JobSpec, pattern: &str| {
            let o = spec.bits_overrides.iter().find(|o| o.pattern == pattern).unwrap();
            (o.wts, o.acts)
        };
        let spec = spec_of("qat", &["--compress", file]);
        assert_eq!((bits_of(&spec, "conv1"), bits_of(&spec, "fc")), ((Some(4), None), (None, Some(4))));
        // `--bits` sets the quantizer's bits, so the entries follow it.
        let spec = spec_of("qat", &["--compress", file, "--bits-weights", "2"]);
        assert_eq!((bits_of(&spec, "conv1"), bits_of(&spec, "fc")), ((Some(2), None), (None, Some(4))));
        assert_eq!(bits_of(&spec, "final_relu"), (None, None), "an explicit null stays full precision");
        let report = camp_proto::energy::report(&spec).unwrap();
        assert_eq!((report.layers[0].path.as_str(), report.layers[0].bits), ("conv1", Some(2)));
    }

    #[test]
    fn energy_table_is_read_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.yaml");
        std::fs::write(&path, "name: 7nm\nfp32_pj: 1.0\nint8_mult_pj: 0.05\nint8_add_pj: 0.01\n").unwrap();
        let spec = spec_of("qat", &["--energy-table", path.to_str().unwrap()]);
        assert_eq!(spec.energy_table.name, "7nm");
        assert_eq!(spec.energy_table.fp32_pj, 1.0);
        assert!(parse_energy_table("name: x\nfp32_pj: 1\nint8_mult_pj: 1\n").unwrap_err().contains("int8_add_pj"));
        assert!(parse_energy_table("name: x\nfp32_pj: 1\nint8_mult_pj: 1\nint8_add_pj: 1\nextra: 2\n").unwrap_err().contains("extra"));
        assert!(parse_energy_table("name: x\nfp32_pj: -1\nint8_mult_pj: 1\nint8_add_pj: 1\n").unwrap_err().contains("fp32_pj"));
    }

    #[test]
    fn new_bad_values_name_their_flag() {
        assert!(invalid("qat", &["--bits", "9"]).contains("--bits-weights"));
        assert!(invalid("qat", &["--bits-activations", "0"]).contains("--bits-activations"));
        assert!(invalid("rl", &["--init-from", "2", "--gamma", "2"]).contains("--gamma"));
        assert!(invalid("rl", &["--init-from", "2", "--alpha", "-1"]).contains("--alpha"));
        assert!(invalid("rl", &["--init-from", "2", "--rl-weight", "-1"]).contains("--rl-weight"));
        let err = invalid("qat", &["--bits-override", "layer9.*=4"]);
        assert!(err.contains("--bits-override") && err.contains("layer9.*"), "{err}");
        let err = parse(&["submit", "qat", "-a", "x", "--act-quant", "lsq"]).unwrap_err();
        assert!(err.to_string().contains("--act-quant"), "{err}");
    }

    #[test]
    fn request_ids_are_checked_before_any_call() {
        for (line, want) in [
            (&["submit", "baseline", "-a", "x"][..], None),
            (&["submit", "baseline", "-a", "x", "--request-id", "nightly-7"][..], Some("nightly-7")),
        ] {
            match parse(line).unwrap().command {
                Command::Submit { stage } => {
                    assert_eq!(stage.common().request_id.request_id.as_deref(), want)
                }
                other => panic!("parsed as {other:?}"),
            }
        }
        let long = "k".repeat(limits::MAX_REQUEST_ID_BYTES + 1);
        let exact = "k".repeat(limits::MAX_REQUEST_ID_BYTES);
        assert!(parse(&["submit", "qat", "-a", "x", "--request-id", &exact]).is_ok());
        for bad in [long.as_str(), "two\nlines", "tab\there", ""] {
            for line in [
                &["submit", "qat", "-a", "x", "--request-id", bad][..],
                &["pipeline", "submit", "p.yaml", "--request-id", bad][..],
                &["pipeline", "camp", "-a", "x", "--request-id", bad][..],
            ] {
                let err = parse(line).unwrap_err();
                assert_eq!(err.exit_code(), 2, "{line:?}");
                assert!(err.to_string().contains("--request-id"), "{err}");
            }
        }
        match parse(&["pipeline", "submit", "p.yaml", "--request-id", "k1"]).unwrap().command {
            Command::Pipeline { action: PipelineAction::Submit { request_id, .. } } => assert_eq!(request_id.get_or_new(), "k1"),
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn each_run_gets_a_fresh_uuid_request_id() {
        let none = RequestIdArg::default();
        let (a, b) = (none.get_or_new(), none.get_or_new());
        assert_ne!(a, b);
        let uuid = uuid::Uuid::parse_str(&a).unwrap();
        assert_eq!(uuid.get_version_num(), 4);
        assert!(a.len() <= limits::MAX_REQUEST_ID_BYTES);
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

    #[test]
    fn jobs_limit_is_a_positive_count() {
        match parse(&["jobs", "--limit", "2500"]).unwrap().command {
            Command::Jobs(args) => assert_eq!(args.limit, Some(2500)),
            other => panic!("parsed as {other:?}"),
        }
        assert_eq!(parse(&["jobs", "--limit", "0"]).unwrap_err().exit_code(), 2);
    }

    #[test]
    fn files_the_cli_reads_are_capped_and_name_their_flag() {
        let err = invalid("qat", &["--compress", "/dev/zero"]);
        assert!(err.starts_with("--compress /dev/zero: larger than"), "{err}");
        let err = invalid("qat", &["--energy-table", "/dev/zero"]);
        assert!(err.starts_with("--energy-table /dev/zero: larger than"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let binary = dir.path().join("schedule.yaml");
        std::fs::write(&binary, [0xff, 0xfe, 0x00]).unwrap();
        let err = read_input_file("--compress", &binary).unwrap_err().0;
        assert!(err.contains("--compress") && err.contains("not UTF-8"), "{err}");
    }

    #[test]
    fn lr_schedule_help_says_milestones_count_completed_epochs() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("submit").unwrap().find_subcommand_mut("baseline").unwrap().render_long_help().to_string();
        assert!(help.contains("completed") && help.contains("81st"), "{help}");
        assert!(help.contains("baseline 0.1; qat 0.1; sp 0.01; rl 0.01"), "{help}");
    }
}
