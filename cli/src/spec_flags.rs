//! The flags that describe a submission: each stage's flags (`SubmitStage`), the
//! flags every stage takes (`CommonArgs`), the bits flags (also `camp energy`'s),
//! `--request-id` (also `camp pipeline`'s); their conversion into a validated
//! `JobSpec`; and the spec field in error mapped back to the flag that sets it.

use std::path::PathBuf;

use camp_proto::limits;
use camp_proto::spec::{BitsOverride, DeviceRequest, SpecError, Stage};
use camp_proto::{JobSpec, ValidSpec};
use clap::{Args, Subcommand};

use crate::exit::UsageError;
use crate::input_files::{apply_compress_file, read_energy_table};
use crate::values::{job_id, parse_device, ActQuantArg, BitsOverrideArg, LrSchedule, RlTaskRewardArg};

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
    /// Run only on a worker started with this label (`camp-worker --label KEY=VALUE`). Repeatable: the worker needs all of them.
    #[arg(long = "require-label", value_name = "KEY=VALUE", value_parser = camp_proto::limits::parse_label)]
    pub require_labels: Vec<(String, String)>,
    /// Data-parallel ranks: a count (`--gpus 4`) or, as the reference's flag, a
    /// list of device indices (`--gpus 0,1,2,3`: its length counts; the worker
    /// picks which of its devices). Each rank trains a shard of every batch;
    /// the job runs on a worker with at least that many devices.
    #[arg(long, value_name = "N|I,J,...", value_parser = parse_gpus)]
    pub gpus: Option<u32>,
    /// Capture the training step in a CUDA graph and replay it (needs --device cuda).
    #[arg(long)]
    pub cuda_graph: bool,
}

/// `--gpus N` or `--gpus 0,1,2,3` (the reference's list of device indices): the number of ranks.
fn parse_gpus(text: &str) -> Result<u32, String> {
    let text = text.trim();
    if text.contains(',') {
        let mut seen = std::collections::BTreeSet::new();
        for item in text.split(',') {
            let index: u32 = item.trim().parse().map_err(|_| format!("'{}' is not a device index", item.trim()))?;
            if !seen.insert(index) {
                return Err(format!("device {index} is listed twice"));
            }
        }
        return u32::try_from(seen.len()).map_err(|_| "too many devices".to_string());
    }
    text.parse().map_err(|_| format!("expected a count (4) or a list of device indices (0,1,2,3), got '{text}'"))
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
        spec.require_labels.extend(self.require_labels.iter().cloned());
        set(&mut spec.gpus, self.gpus);
        spec.cuda_graph |= self.cuda_graph;
        check_spec(&spec)?;
        Ok(spec)
    }
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(value) = value {
        *field = value;
    }
}

/// Checks a spec as the coordinator will (`ValidSpec`: every field, the
/// quantisation plan, an override pattern that matches no module), so that a
/// mistake is named by its flag before anything is sent.
pub fn check_spec(spec: &JobSpec) -> Result<(), UsageError> {
    ValidSpec::new(spec.clone()).map_err(spec_error_with_flag)?;
    Ok(())
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
        "require_labels" => "--require-label",
        "cuda_graph" => "--cuda-graph",
        other => return UsageError(format!("invalid spec: {other} (--{other}): {}", err.reason)),
    };
    UsageError(format!("invalid spec: {} ({flag}): {}", err.field, err.reason))
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

#[cfg(test)]
pub mod tests {
    use super::*;
    use crate::args::tests::parse;
    use crate::args::{Cli, Command};
    use crate::commands::pipeline::PipelineAction;
    use camp_proto::spec::{ActQuant, LrStep};
    use clap::error::ErrorKind;

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
    fn baseline_defaults_equal_the_reference_spec() {
        let spec = baseline(&["-a", "preact_resnet20_cifar"]).to_spec().unwrap();
        assert_eq!(spec, JobSpec::default());
    }

    #[test]
    fn gpus_is_a_count_or_the_references_list_of_device_indices() {
        assert_eq!(baseline(&["-a", "preact_resnet20_cifar", "--gpus", "4"]).to_spec().unwrap().gpus, 4);
        assert_eq!(baseline(&["-a", "preact_resnet20_cifar", "--gpus", "0,1,2,3"]).to_spec().unwrap().gpus, 4);
        assert_eq!(baseline(&["-a", "preact_resnet20_cifar", "--gpus", "3"]).to_spec().unwrap().gpus, 3);
        assert_eq!(baseline(&["-a", "preact_resnet20_cifar"]).to_spec().unwrap().gpus, 1);
        let twice = parse(&["submit", "baseline", "-a", "preact_resnet20_cifar", "--gpus", "0,0"]).unwrap_err().to_string();
        assert!(twice.contains("device 0 is listed twice"), "{twice}");
        let word = parse(&["submit", "baseline", "-a", "preact_resnet20_cifar", "--gpus", "all"]).unwrap_err().to_string();
        assert!(word.contains("--gpus"), "{word}");
        let graph = baseline(&["-a", "preact_resnet20_cifar", "--cuda-graph"]).to_spec().unwrap_err().to_string();
        assert!(graph.contains("cuda_graph (--cuda-graph)") && graph.contains("device: cuda"), "{graph}");
        assert!(baseline(&["-a", "preact_resnet20_cifar", "--cuda-graph", "--device", "cuda"]).to_spec().unwrap().cuda_graph);
        let zero = baseline(&["-a", "preact_resnet20_cifar", "--gpus", "0"]).to_spec().unwrap_err().to_string();
        assert!(zero.contains("gpus (--gpus)"), "{zero}");
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

    /// A schedule with the keys of the reference's configs/preact_resnet20_cifar_pact_fp4.yaml.
    const FP4: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_fp4.yaml");

    const R20: [&str; 2] = ["-a", "preact_resnet20_cifar"];

    pub fn spec_of(stage: &str, line: &[&str]) -> JobSpec {
        let full: Vec<&str> = R20.iter().chain(line).copied().collect();
        submit(stage, &full).to_spec().unwrap()
    }

    pub fn invalid(stage: &str, line: &[&str]) -> String {
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
    fn lr_schedule_help_says_milestones_count_completed_epochs() {
        use clap::CommandFactory;
        let mut cmd = Cli::command();
        let help = cmd.find_subcommand_mut("submit").unwrap().find_subcommand_mut("baseline").unwrap().render_long_help().to_string();
        assert!(help.contains("completed") && help.contains("81st"), "{help}");
        assert!(help.contains("baseline 0.1; qat 0.1; sp 0.01; rl 0.01"), "{help}");
    }
}
