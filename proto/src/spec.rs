//! The job spec as the system understands it: typed, with the reference's
//! defaults, validated once, convertible to and from the wire message.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::energy_table::EnergyTable;
use crate::limits::*;
use crate::v1;

use crate::spec_error::invalid;
/// A spec field that is wrong, and why. `field` is the spec's key (`lr`, `batch_size`, ...).
pub use crate::spec_error::SpecError;

pub const ARCHITECTURES: &[&str] =
    &["preact_resnet20_cifar", "preact_resnet32_cifar", "preact_resnet44_cifar", "preact_resnet56_cifar", "preact_resnet110_cifar"];
pub const DATASETS: &[&str] = &["cifar10", "cifar100", "fashion-mnist"];
pub const STAGES: &[&str] = &["baseline", "qat", "sp", "rl"];
pub const DEVICES: &[&str] = &["any", "cpu", "cuda"];
/// Suffix naming the dual-path variant of an architecture (stages sp and rl).
pub const DUAL_PATH_SUFFIX: &str = "_dualpath";

/// The stages of the method (docs/method.md, "Stage baseline and stage qat" to "Stage rl").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    /// Full precision.
    Baseline,
    /// Quantisation-aware training at fixed bits.
    Qat,
    /// Dual-path network, gates trained supervised.
    Sp,
    /// Dual-path network, gates trained with REINFORCE.
    Rl,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Baseline => "baseline",
            Stage::Qat => "qat",
            Stage::Sp => "sp",
            Stage::Rl => "rl",
        }
    }
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "baseline" => Ok(Stage::Baseline),
            "qat" => Ok(Stage::Qat),
            "sp" => Ok(Stage::Sp),
            "rl" => Ok(Stage::Rl),
            other => Err(invalid("stage", format!("unknown stage '{other}' (known: {})", STAGES.join(", ")))),
        }
    }
    /// Stages that train the dual-path network.
    pub fn is_dual_path(self) -> bool {
        matches!(self, Stage::Sp | Stage::Rl)
    }
    /// The stage a job of this stage must start from: sp from qat, rl from sp.
    pub fn required_parent(self) -> Option<Stage> {
        match self {
            Stage::Sp => Some(Stage::Qat),
            Stage::Rl => Some(Stage::Sp),
            Stage::Baseline | Stage::Qat => None,
        }
    }
    /// Bits of the quantised layers when the spec names none (the basic path for sp/rl).
    pub fn default_bits(self) -> u32 {
        match self {
            Stage::Baseline => 32,
            Stage::Qat => 4,
            Stage::Sp | Stage::Rl => 1,
        }
    }
}

/// Which kind of worker may run a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRequest {
    Any,
    Cpu,
    Cuda,
}

impl DeviceRequest {
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceRequest::Any => "any",
            DeviceRequest::Cpu => "cpu",
            DeviceRequest::Cuda => "cuda",
        }
    }
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "" | "any" => Ok(DeviceRequest::Any),
            "cpu" => Ok(DeviceRequest::Cpu),
            "cuda" => Ok(DeviceRequest::Cuda),
            other => Err(invalid("device", format!("unknown device '{other}' (known: {})", DEVICES.join(", ")))),
        }
    }
}

/// Activation quantiser: DoReFa's clamp to [0, 1] (the reference's) or PACT's learned clip.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ActQuant {
    #[default]
    Dorefa,
    Pact,
}

impl ActQuant {
    pub fn as_str(self) -> &'static str {
        match self {
            ActQuant::Dorefa => "dorefa",
            ActQuant::Pact => "pact",
        }
    }
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "" | "dorefa" => Ok(ActQuant::Dorefa),
            "pact" => Ok(ActQuant::Pact),
            other => Err(invalid("act_quant", format!("unknown activation quantiser '{other}' (known: dorefa, pact)"))),
        }
    }
}

/// Stage rl's task reward, the return every gate of an image is credited with
/// besides the energy reward (docs/method.md, "Stage rl").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RlTaskReward {
    /// `-CE` of each image for that image's gates: textbook REINFORCE (camp's default).
    #[default]
    PerImage,
    /// The batch's mean `-CE` for every image's gates: the reference's arithmetic,
    /// to compare with its numbers (the gates get no per-image accuracy signal).
    BatchMean,
}

impl RlTaskReward {
    pub fn as_str(self) -> &'static str {
        match self {
            RlTaskReward::PerImage => "per_image",
            RlTaskReward::BatchMean => "batch_mean",
        }
    }
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "" | "per_image" => Ok(RlTaskReward::PerImage),
            "batch_mean" => Ok(RlTaskReward::BatchMean),
            other => Err(invalid("rl_task_reward", format!("unknown reward '{}' (known: per_image, batch_mean)", excerpt(other)))),
        }
    }
}

/// A milestone of distiller's MultiStepMultiGammaLR: after `epoch` epochs, lr *= gamma.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrStep {
    pub epoch: u32,
    pub gamma: f64,
}

/// Bits for the modules whose path matches `pattern` (glob; `*` matches anything).
/// `None` keeps them in full precision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BitsOverride {
    pub pattern: String,
    pub wts: Option<u32>,
    pub acts: Option<u32>,
}

/// The reference's schedule: x0.1 after 80 epochs, x0.1 after 120, x0.2 after 160.
pub fn reference_lr_schedule() -> Vec<LrStep> {
    vec![LrStep { epoch: 80, gamma: 0.1 }, LrStep { epoch: 120, gamma: 0.1 }, LrStep { epoch: 160, gamma: 0.2 }]
}

/// A job's full spec. Missing keys in YAML/JSON take the reference's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    pub stage: Stage,
    /// The base architecture; stages sp and rl train its dual-path variant.
    pub arch: String,
    pub dataset: String,
    pub lr: f64,
    pub batch_size: u32,
    pub epochs: u32,
    pub weight_decay: f64,
    pub momentum: f64,
    pub print_freq: u32,
    pub seed: u64,
    pub device: DeviceRequest,
    pub lr_schedule: Vec<LrStep>,
    pub bf16: bool,
    pub channels_last: bool,
    /// Use only the first N training images (0 = all).
    pub train_limit: u32,
    /// Use only the first N test images (0 = all).
    pub test_limit: u32,
    /// Weight bits of quantised layers; None = the stage's default.
    pub bits_weights: Option<u32>,
    /// Activation bits of quantised ReLUs; None = the stage's default.
    pub bits_activations: Option<u32>,
    pub act_quant: ActQuant,
    /// The job's own overrides, checked first; first match wins.
    pub bits_overrides: Vec<BitsOverride>,
    /// Whether the stage's default overrides (stem, first pre-activation, head
    /// in full precision; the dual path's 4-bit parts) follow the job's own.
    /// False when a distiller file gave the whole list, as distiller reads it.
    pub default_overrides: bool,
    pub energy_table: EnergyTable,
    /// rl: energy reward per gate that picks the 1-bit path.
    pub alpha: f64,
    /// rl: discount between gates.
    pub gamma: f64,
    /// rl: weight of the REINFORCE loss.
    pub rl_weight: f64,
    /// rl: the task reward's arithmetic.
    pub rl_task_reward: RlTaskReward,
    /// Start from this job's best checkpoint (0 = from scratch).
    pub init_from: i64,
    /// PACT's learned clips decay at this rate (None: `weight_decay`, as the
    /// reference's `act_clip_decay` unset).
    pub pact_weight_decay: Option<f64>,
    /// Labels a worker must carry, each with this value, to run the job
    /// (`--require-label gpu=h100`); empty: any worker.
    pub require_labels: BTreeMap<String, String>,
    /// Data-parallel ranks, one per device of one worker, each training a
    /// shard of every batch; the global batch stays `batch_size`.
    pub gpus: u32,
    /// Capture the training step in a CUDA graph and replay it (device cuda).
    pub cuda_graph: bool,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            stage: Stage::Baseline,
            arch: "preact_resnet20_cifar".into(),
            dataset: "cifar10".into(),
            lr: 0.1,
            batch_size: 128,
            epochs: 200,
            weight_decay: 2e-4,
            momentum: 0.9,
            print_freq: 10,
            seed: 1,
            device: DeviceRequest::Any,
            lr_schedule: reference_lr_schedule(),
            bf16: false,
            channels_last: false,
            train_limit: 0,
            test_limit: 0,
            bits_weights: None,
            bits_activations: None,
            act_quant: ActQuant::Dorefa,
            bits_overrides: Vec::new(),
            default_overrides: true,
            energy_table: EnergyTable::default(),
            alpha: 0.1,
            gamma: 1.0,
            rl_weight: 0.01,
            rl_task_reward: RlTaskReward::PerImage,
            init_from: 0,
            pact_weight_decay: None,
            require_labels: BTreeMap::new(),
            gpus: 1,
            cuda_graph: false,
        }
    }
}

fn in_range(field: &'static str, value: u32, min: u32, max: u32) -> Result<(), SpecError> {
    if (min..=max).contains(&value) {
        Ok(())
    } else {
        Err(invalid(field, format!("must be in {min}..={max}, got {value}")))
    }
}

fn valid_bits(bits: u32) -> bool {
    (1..=8).contains(&bits) || bits == 32
}

impl JobSpec {
    /// The reference's defaults for `stage` (docs/method.md, "Stage baseline and stage qat" to "Stage rl"): sp starts at lr 0.01
    /// with a x10 warm-up after 3 epochs; rl at lr 0.01.
    pub fn defaults_for(stage: Stage) -> JobSpec {
        let base = JobSpec { stage, ..JobSpec::default() };
        match stage {
            Stage::Baseline | Stage::Qat => base,
            Stage::Sp => JobSpec {
                lr: 0.01,
                lr_schedule: std::iter::once(LrStep { epoch: 3, gamma: 10.0 }).chain(reference_lr_schedule()).collect(),
                ..base
            },
            Stage::Rl => JobSpec { lr: 0.01, ..base },
        }
    }

    /// The architecture as built: the dual-path variant for stages sp and rl.
    pub fn model_arch(&self) -> String {
        if self.stage.is_dual_path() {
            format!("{}{DUAL_PATH_SUFFIX}", self.arch)
        } else {
            self.arch.clone()
        }
    }

    pub fn weight_bits(&self) -> u32 {
        self.bits_weights.unwrap_or(self.stage.default_bits())
    }

    pub fn activation_bits(&self) -> u32 {
        self.bits_activations.unwrap_or(self.stage.default_bits())
    }

    /// Checks every field on its own; the first wrong one is named in the
    /// error. Every number has a range and every list a length (`limits`).
    /// `ValidSpec::new` adds what needs the quantisation plan.
    pub(crate) fn check_fields(&self) -> Result<(), SpecError> {
        if !ARCHITECTURES.contains(&self.arch.as_str()) {
            return Err(invalid("arch", format!("unknown architecture '{}' (known: {})", excerpt(&self.arch), ARCHITECTURES.join(", "))));
        }
        if !DATASETS.contains(&self.dataset.as_str()) {
            return Err(invalid("dataset", format!("unknown data set '{}' (known: {})", excerpt(&self.dataset), DATASETS.join(", "))));
        }
        if !(self.lr.is_finite() && self.lr > 0.0 && self.lr <= MAX_LR) {
            return Err(invalid("lr", format!("must be a positive number of at most {MAX_LR}, got {}", self.lr)));
        }
        in_range("batch_size", self.batch_size, 1, MAX_BATCH_SIZE)?;
        in_range("epochs", self.epochs, 1, MAX_EPOCHS)?;
        if !(self.weight_decay.is_finite() && (0.0..=MAX_WEIGHT_DECAY).contains(&self.weight_decay)) {
            return Err(invalid("weight_decay", format!("must be in [0, {MAX_WEIGHT_DECAY}], got {}", self.weight_decay)));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(invalid("momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        in_range("print_freq", self.print_freq, 1, MAX_PRINT_FREQ)?;
        in_range("train_limit", self.train_limit, 0, MAX_IMAGE_LIMIT)?;
        in_range("test_limit", self.test_limit, 0, MAX_IMAGE_LIMIT)?;
        if self.lr_schedule.len() > MAX_LR_STEPS {
            return Err(invalid("lr_schedule", format!("{} steps; at most {MAX_LR_STEPS} are allowed", self.lr_schedule.len())));
        }
        for step in &self.lr_schedule {
            if !((1..=MAX_EPOCHS).contains(&step.epoch) && step.gamma.is_finite() && step.gamma > 0.0) {
                return Err(invalid(
                    "lr_schedule",
                    format!("each step needs epoch in 1..={MAX_EPOCHS} and gamma > 0, got epoch {} gamma {}", step.epoch, step.gamma),
                ));
            }
            // Wherever the schedule leads, the lr stays a usable number.
            let lr = self.lr_at_epoch(step.epoch + 1);
            if !(lr.is_normal() && lr > 0.0 && lr <= MAX_LR) {
                return Err(invalid(
                    "lr_schedule",
                    format!("after epoch {} the lr would be {lr}; it must stay in (0, {MAX_LR}]", step.epoch),
                ));
            }
        }
        if self.bf16 && self.device == DeviceRequest::Cpu {
            return Err(invalid("bf16", "bf16 autocast needs device cuda (or any)"));
        }
        for (field, bits) in [("bits_weights", self.bits_weights), ("bits_activations", self.bits_activations)] {
            if let Some(b) = bits {
                if !valid_bits(b) {
                    return Err(invalid(field, format!("must be 1..8 or 32, got {b}")));
                }
            }
        }
        if self.stage == Stage::Baseline && (self.weight_bits() != 32 || self.activation_bits() != 32) {
            return Err(invalid("bits_weights", "stage baseline trains in full precision (use stage qat for bits)"));
        }
        if self.bits_overrides.len() > MAX_OVERRIDES {
            return Err(invalid("bits_overrides", format!("{} overrides; at most {MAX_OVERRIDES} are allowed", self.bits_overrides.len())));
        }
        for o in &self.bits_overrides {
            for b in [o.wts, o.acts].into_iter().flatten() {
                if !valid_bits(b) {
                    return Err(invalid("bits_overrides", format!("pattern '{}': bits must be 1..8 or 32, got {b}", excerpt(&o.pattern))));
                }
            }
        }
        self.energy_table.validate()?;
        if !(self.alpha.is_finite() && (0.0..=MAX_ALPHA).contains(&self.alpha)) {
            return Err(invalid("alpha", format!("must be in [0, {MAX_ALPHA}], got {}", self.alpha)));
        }
        if !(self.gamma.is_finite() && (0.0..=1.0).contains(&self.gamma)) {
            return Err(invalid("gamma", format!("must be in [0, 1], got {}", self.gamma)));
        }
        if !(self.rl_weight.is_finite() && (0.0..=MAX_RL_WEIGHT).contains(&self.rl_weight)) {
            return Err(invalid("rl_weight", format!("must be in [0, {MAX_RL_WEIGHT}], got {}", self.rl_weight)));
        }
        if let Some(wd) = self.pact_weight_decay {
            if !(wd.is_finite() && (0.0..=MAX_WEIGHT_DECAY).contains(&wd)) {
                return Err(invalid("pact_weight_decay", format!("must be in [0, {MAX_WEIGHT_DECAY}], got {wd}")));
            }
        }
        in_range("gpus", self.gpus, 1, MAX_GPUS)?;
        if i64::from(self.gpus) > i64::from(self.batch_size) {
            return Err(invalid("gpus", format!("{} ranks cannot share a batch of {}", self.gpus, self.batch_size)));
        }
        if self.cuda_graph && self.device != DeviceRequest::Cuda {
            return Err(invalid("cuda_graph", "CUDA graphs capture GPU work: set device: cuda"));
        }
        if self.cuda_graph && self.gpus > 1 {
            return Err(invalid("cuda_graph", "a step of several ranks (gpus > 1) is not captured: use one of them"));
        }
        crate::limits::check_labels(&self.require_labels).map_err(|e| invalid("require_labels", e.to_string()))?;
        if self.init_from < 0 {
            return Err(invalid("init_from", format!("must be a job id, got {}", self.init_from)));
        }
        Ok(())
    }

    /// Checks the job this one starts from (`init_from`): sp needs a qat job, rl an
    /// sp job, and the weights must fit (same architecture and data set).
    pub fn check_init_parent(&self, parent: Option<&JobSpec>) -> Result<(), SpecError> {
        let Some(parent) = parent else {
            return match self.stage.required_parent() {
                Some(want) => Err(invalid(
                    "init_from",
                    format!("stage {} starts from a {} job: name it (init_from)", self.stage.as_str(), want.as_str()),
                )),
                None => Ok(()),
            };
        };
        if let Some(want) = self.stage.required_parent() {
            if parent.stage != want {
                return Err(invalid(
                    "init_from",
                    format!("stage {} starts from a {} job, not a {} job", self.stage.as_str(), want.as_str(), parent.stage.as_str()),
                ));
            }
        }
        if parent.arch != self.arch || parent.dataset != self.dataset {
            return Err(invalid(
                "init_from",
                format!("that job trained {} on {}; this one is {} on {}", parent.arch, parent.dataset, self.arch, self.dataset),
            ));
        }
        Ok(())
    }

    /// Learning rate in effect during `epoch` (1-based): milestones count completed
    /// epochs, as distiller's MultiStepMultiGammaLR does.
    pub fn lr_at_epoch(&self, epoch: u32) -> f64 {
        self.lr_schedule.iter().filter(|s| s.epoch < epoch).fold(self.lr, |lr, s| lr * s.gamma)
    }

    /// Reads a wire spec: the stage's defaults for unset knobs, names parsed;
    /// `ValidSpec::from_proto` also checks it.
    pub(crate) fn read_proto(p: &v1::JobSpec) -> Result<Self, SpecError> {
        let defaults = JobSpec::default();
        let spec = JobSpec {
            stage: Stage::parse(&p.stage)?,
            arch: p.arch.strip_suffix(DUAL_PATH_SUFFIX).unwrap_or(&p.arch).to_string(),
            dataset: p.dataset.clone(),
            lr: p.lr,
            batch_size: p.batch_size,
            epochs: p.epochs,
            weight_decay: p.weight_decay,
            momentum: p.momentum,
            print_freq: p.print_freq,
            seed: p.seed,
            device: DeviceRequest::parse(&p.device)?,
            lr_schedule: p.lr_schedule.iter().map(|s| LrStep { epoch: s.epoch, gamma: s.gamma }).collect(),
            bf16: p.bf16,
            channels_last: p.channels_last,
            train_limit: p.train_limit,
            test_limit: p.test_limit,
            bits_weights: p.bits_weights,
            bits_activations: p.bits_activations,
            act_quant: ActQuant::parse(&p.act_quant)?,
            bits_overrides: p
                .bits_overrides
                .iter()
                .map(|o| BitsOverride { pattern: o.pattern.clone(), wts: o.wts, acts: o.acts })
                .collect(),
            default_overrides: p.default_overrides.unwrap_or(defaults.default_overrides),
            energy_table: p.energy_table.as_ref().map(EnergyTable::from_proto).unwrap_or(defaults.energy_table),
            alpha: p.alpha.unwrap_or(defaults.alpha),
            gamma: p.gamma.unwrap_or(defaults.gamma),
            rl_weight: p.rl_weight.unwrap_or(defaults.rl_weight),
            rl_task_reward: RlTaskReward::parse(&p.rl_task_reward)?,
            init_from: p.init_from,
            pact_weight_decay: p.pact_weight_decay,
            require_labels: p.require_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            gpus: p.gpus.max(1),
            cuda_graph: p.cuda_graph,
        };
        Ok(spec)
    }

    pub fn to_proto(&self) -> v1::JobSpec {
        v1::JobSpec {
            stage: self.stage.as_str().into(),
            arch: self.arch.clone(),
            dataset: self.dataset.clone(),
            lr: self.lr,
            batch_size: self.batch_size,
            epochs: self.epochs,
            weight_decay: self.weight_decay,
            momentum: self.momentum,
            print_freq: self.print_freq,
            seed: self.seed,
            device: self.device.as_str().into(),
            lr_schedule: self.lr_schedule.iter().map(|s| v1::LrStep { epoch: s.epoch, gamma: s.gamma }).collect(),
            bf16: self.bf16,
            channels_last: self.channels_last,
            train_limit: self.train_limit,
            test_limit: self.test_limit,
            bits_weights: self.bits_weights,
            bits_activations: self.bits_activations,
            act_quant: self.act_quant.as_str().into(),
            bits_overrides: self
                .bits_overrides
                .iter()
                .map(|o| v1::BitsOverride { pattern: o.pattern.clone(), wts: o.wts, acts: o.acts })
                .collect(),
            default_overrides: Some(self.default_overrides),
            energy_table: Some(self.energy_table.to_proto()),
            alpha: Some(self.alpha),
            gamma: Some(self.gamma),
            rl_weight: Some(self.rl_weight),
            rl_task_reward: self.rl_task_reward.as_str().into(),
            init_from: self.init_from,
            pact_weight_decay: self.pact_weight_decay,
            require_labels: self.require_labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            gpus: self.gpus,
            cuda_graph: self.cuda_graph,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::valid::ValidSpec;

    fn field_of(mutate: impl FnOnce(&mut v1::JobSpec)) -> &'static str {
        let mut p = JobSpec::default().to_proto();
        mutate(&mut p);
        ValidSpec::from_proto(&p).unwrap_err().field
    }

    #[test]
    fn defaults_are_the_reference_run_and_valid() {
        let spec = JobSpec::default();
        ValidSpec::new(spec.clone()).unwrap();
        assert_eq!((spec.lr, spec.batch_size, spec.epochs, spec.momentum, spec.weight_decay), (0.1, 128, 200, 0.9, 2e-4));
        assert_eq!(*ValidSpec::from_proto(&spec.to_proto()).unwrap(), spec);
        for stage in [Stage::Qat, Stage::Sp, Stage::Rl] {
            let s = JobSpec::defaults_for(stage);
            assert_eq!(*ValidSpec::from_proto(&s.to_proto()).unwrap(), s);
        }
        let sp = JobSpec::defaults_for(Stage::Sp);
        assert_eq!((sp.lr, sp.lr_at_epoch(3), sp.lr_at_epoch(4)), (0.01, 0.01, 0.1));
        assert_eq!(sp.model_arch(), "preact_resnet20_cifar_dualpath");
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(|p| p.arch = "resnet9000".into()), "arch");
        let long = ValidSpec::from_proto(&JobSpec { arch: "x".repeat(9 << 20), ..JobSpec::default() }.to_proto()).unwrap_err();
        assert!(long.reason.len() < 300, "the error quotes an excerpt, not 9 MB: {} bytes", long.reason.len());
        assert_eq!(field_of(|p| p.dataset = "imagenet".into()), "dataset");
        assert_eq!(field_of(|p| p.stage = "pretrain".into()), "stage");
        assert_eq!(field_of(|p| p.lr = 0.0), "lr");
        assert_eq!(field_of(|p| p.lr = -0.1), "lr");
        assert_eq!(field_of(|p| p.lr = f64::NAN), "lr");
        assert_eq!(field_of(|p| p.lr = 1e9), "lr");
        assert_eq!(field_of(|p| p.batch_size = 0), "batch_size");
        assert_eq!(field_of(|p| p.batch_size = 1_000_000_000), "batch_size");
        assert_eq!(field_of(|p| p.gpus = 65), "gpus");
        assert_eq!(field_of(|p| p.cuda_graph = true), "cuda_graph", "device any may be a CPU");
        assert_eq!(
            field_of(|p| {
                p.cuda_graph = true;
                p.device = "cuda".into();
                p.gpus = 2
            }),
            "cuda_graph"
        );
        assert_eq!(
            field_of(|p| {
                p.gpus = 4;
                p.batch_size = 3
            }),
            "gpus"
        );
        assert_eq!(ValidSpec::from_proto(&v1::JobSpec { gpus: 0, ..JobSpec::default().to_proto() }).unwrap().gpus, 1, "0 reads as 1");
        assert_eq!(field_of(|p| p.epochs = 0), "epochs");
        assert_eq!(field_of(|p| p.epochs = u32::MAX), "epochs");
        assert_eq!(field_of(|p| p.epochs = (1 << 31) + 1), "epochs");
        assert_eq!(field_of(|p| p.train_limit = u32::MAX), "train_limit");
        assert_eq!(field_of(|p| p.print_freq = u32::MAX), "print_freq");
        assert_eq!(field_of(|p| p.weight_decay = 5.0), "weight_decay");
        assert_eq!(field_of(|p| p.lr_schedule = vec![v1::LrStep { epoch: 3, gamma: 0.1 }; 65]), "lr_schedule");
        assert_eq!(field_of(|p| p.lr_schedule = vec![v1::LrStep { epoch: u32::MAX, gamma: 0.1 }]), "lr_schedule");
        assert_eq!(field_of(|p| p.lr_schedule = vec![v1::LrStep { epoch: 3, gamma: 1e300 }]), "lr_schedule");
        assert_eq!(field_of(|p| p.lr_schedule = vec![v1::LrStep { epoch: 3, gamma: 1e-320 }]), "lr_schedule");
        assert_eq!(field_of(|p| p.alpha = Some(1e12)), "alpha");
        assert_eq!(field_of(|p| p.rl_weight = Some(1e12)), "rl_weight");
        assert_eq!(field_of(|p| p.energy_table.as_mut().unwrap().name = "a\0b".into()), "energy_table");
        assert_eq!(field_of(|p| p.energy_table.as_mut().unwrap().name = "x".repeat(10_000)), "energy_table");
        let many = vec![v1::BitsOverride { pattern: "fc".into(), wts: None, acts: None }; 65];
        assert_eq!(
            field_of(|p| {
                p.stage = "qat".into();
                p.bits_overrides = many
            }),
            "bits_overrides"
        );
        let nul = vec![v1::BitsOverride { pattern: "f\0c".into(), wts: None, acts: None }];
        assert_eq!(
            field_of(|p| {
                p.stage = "qat".into();
                p.bits_overrides = nul
            }),
            "bits_overrides"
        );
        assert_eq!(field_of(|p| p.weight_decay = -1.0), "weight_decay");
        assert_eq!(field_of(|p| p.momentum = 1.5), "momentum");
        assert_eq!(field_of(|p| p.print_freq = 0), "print_freq");
        assert_eq!(field_of(|p| p.device = "tpu".into()), "device");
        assert_eq!(field_of(|p| p.lr_schedule = vec![v1::LrStep { epoch: 0, gamma: 0.1 }]), "lr_schedule");
        assert_eq!(
            field_of(|p| {
                p.stage = "qat".into();
                p.bits_weights = Some(9)
            }),
            "bits_weights"
        );
        assert_eq!(
            field_of(|p| {
                p.stage = "qat".into();
                p.bits_activations = Some(0)
            }),
            "bits_activations"
        );
        assert_eq!(field_of(|p| p.bits_weights = Some(4)), "bits_weights");
        assert_eq!(field_of(|p| p.act_quant = "lsq".into()), "act_quant");
        assert_eq!(field_of(|p| p.rl_task_reward = "batch_max".into()), "rl_task_reward");
        assert_eq!(field_of(|p| p.alpha = Some(-1.0)), "alpha");
        assert_eq!(field_of(|p| p.gamma = Some(1.5)), "gamma");
        assert_eq!(field_of(|p| p.rl_weight = Some(f64::INFINITY)), "rl_weight");
        assert_eq!(field_of(|p| p.init_from = -3), "init_from");
        assert_eq!(field_of(|p| p.pact_weight_decay = Some(-1e-4)), "pact_weight_decay");
        assert_eq!(
            field_of(|p| p.bits_overrides = vec![v1::BitsOverride { pattern: "fc".into(), wts: Some(12), acts: None }]),
            "bits_overrides"
        );
        assert_eq!(field_of(|p| p.energy_table.as_mut().unwrap().fp32_pj = -1.0), "energy_table");
    }

    #[test]
    fn init_parents_must_fit_the_stage() {
        let sp = JobSpec::defaults_for(Stage::Sp);
        let qat = JobSpec::defaults_for(Stage::Qat);
        assert_eq!(sp.check_init_parent(None).unwrap_err().field, "init_from");
        sp.check_init_parent(Some(&qat)).unwrap();
        assert!(sp.check_init_parent(Some(&JobSpec::default())).unwrap_err().reason.contains("from a qat job"));
        let other = JobSpec { arch: "preact_resnet32_cifar".into(), ..qat.clone() };
        assert_eq!(sp.check_init_parent(Some(&other)).unwrap_err().field, "init_from");
        qat.check_init_parent(None).unwrap();
        JobSpec::defaults_for(Stage::Rl).check_init_parent(Some(&sp)).unwrap();
    }

    #[test]
    fn lr_milestones_count_completed_epochs() {
        let spec = JobSpec::default();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(spec.lr_at_epoch(1), 0.1));
        assert!(close(spec.lr_at_epoch(80), 0.1));
        assert!(close(spec.lr_at_epoch(81), 0.01));
        assert!(close(spec.lr_at_epoch(121), 0.001));
        assert!(close(spec.lr_at_epoch(161), 0.0002));
        assert!(close(spec.lr_at_epoch(200), 0.0002));
    }

    #[test]
    fn yaml_takes_defaults_and_refuses_unknown_keys() {
        let spec: JobSpec = serde_yaml::from_str("arch: preact_resnet44_cifar\ndataset: fashion-mnist\nepochs: 3\n").unwrap();
        assert_eq!((spec.arch.as_str(), spec.epochs, spec.lr), ("preact_resnet44_cifar", 3, 0.1));
        let err = serde_yaml::from_str::<JobSpec>("archh: x\n").unwrap_err().to_string();
        assert!(err.contains("archh"), "{err}");
    }
}
