//! The job spec as the system understands it: typed, with the reference's
//! defaults, validated once, convertible to and from the wire message.

use serde::{Deserialize, Serialize};

use crate::v1;

/// A spec field that is wrong, and why. `field` is the spec's key (`lr`, `batch_size`, ...).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid spec: {field}: {reason}")]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

fn invalid(field: &'static str, reason: impl Into<String>) -> SpecError {
    SpecError { field, reason: reason.into() }
}

pub const ARCHITECTURES: &[&str] = &[
    "preact_resnet20_cifar",
    "preact_resnet32_cifar",
    "preact_resnet44_cifar",
    "preact_resnet56_cifar",
    "preact_resnet110_cifar",
];
pub const DATASETS: &[&str] = &["cifar10", "cifar100", "fashion-mnist"];
pub const STAGES: &[&str] = &["baseline"];
pub const DEVICES: &[&str] = &["any", "cpu", "cuda"];

/// Stage names that this build runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stage {
    Baseline,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Baseline => "baseline",
        }
    }
    pub fn parse(s: &str) -> Result<Self, SpecError> {
        match s {
            "baseline" => Ok(Stage::Baseline),
            other => Err(invalid("stage", format!("unknown stage '{other}' (known: {})", STAGES.join(", ")))),
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

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LrStep {
    pub epoch: u32,
    pub gamma: f64,
}

/// The reference's "MultiStepMultiGammaLR": x0.1 at 80, x0.1 at 120, x0.2 at 160.
pub fn reference_lr_schedule() -> Vec<LrStep> {
    vec![
        LrStep { epoch: 80, gamma: 0.1 },
        LrStep { epoch: 120, gamma: 0.1 },
        LrStep { epoch: 160, gamma: 0.2 },
    ]
}

/// A job's full spec. Missing keys in YAML/JSON take the reference's defaults.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobSpec {
    pub stage: Stage,
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
        }
    }
}

impl JobSpec {
    /// Checks every field; the first wrong one is named in the error.
    pub fn validate(&self) -> Result<(), SpecError> {
        if !ARCHITECTURES.contains(&self.arch.as_str()) {
            return Err(invalid(
                "arch",
                format!("unknown architecture '{}' (known: {})", self.arch, ARCHITECTURES.join(", ")),
            ));
        }
        if !DATASETS.contains(&self.dataset.as_str()) {
            return Err(invalid(
                "dataset",
                format!("unknown data set '{}' (known: {})", self.dataset, DATASETS.join(", ")),
            ));
        }
        if !(self.lr.is_finite() && self.lr > 0.0) {
            return Err(invalid("lr", format!("must be a positive number, got {}", self.lr)));
        }
        if self.batch_size == 0 {
            return Err(invalid("batch_size", "must be at least 1"));
        }
        if self.epochs == 0 {
            return Err(invalid("epochs", "must be at least 1"));
        }
        if !(self.weight_decay.is_finite() && self.weight_decay >= 0.0) {
            return Err(invalid("weight_decay", format!("must be >= 0, got {}", self.weight_decay)));
        }
        if !(self.momentum.is_finite() && (0.0..1.0).contains(&self.momentum)) {
            return Err(invalid("momentum", format!("must be in [0, 1), got {}", self.momentum)));
        }
        if self.print_freq == 0 {
            return Err(invalid("print_freq", "must be at least 1"));
        }
        for step in &self.lr_schedule {
            if step.epoch == 0 || !(step.gamma.is_finite() && step.gamma > 0.0) {
                return Err(invalid(
                    "lr_schedule",
                    format!("each step needs epoch >= 1 and gamma > 0, got epoch {} gamma {}", step.epoch, step.gamma),
                ));
            }
        }
        if self.bf16 && self.device == DeviceRequest::Cpu {
            return Err(invalid("bf16", "bf16 autocast needs device cuda (or any)"));
        }
        Ok(())
    }

    /// Learning rate in effect during `epoch` (1-based).
    pub fn lr_at_epoch(&self, epoch: u32) -> f64 {
        self.lr_schedule
            .iter()
            .filter(|s| s.epoch <= epoch)
            .fold(self.lr, |lr, s| lr * s.gamma)
    }

    /// Reads and validates a wire spec.
    pub fn from_proto(p: &v1::JobSpec) -> Result<Self, SpecError> {
        let spec = JobSpec {
            stage: Stage::parse(&p.stage)?,
            arch: p.arch.clone(),
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
        };
        spec.validate()?;
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
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(mutate: impl FnOnce(&mut v1::JobSpec)) -> &'static str {
        let mut p = JobSpec::default().to_proto();
        mutate(&mut p);
        JobSpec::from_proto(&p).unwrap_err().field
    }

    #[test]
    fn defaults_are_the_reference_run_and_valid() {
        let spec = JobSpec::default();
        spec.validate().unwrap();
        assert_eq!((spec.lr, spec.batch_size, spec.epochs, spec.momentum, spec.weight_decay), (0.1, 128, 200, 0.9, 2e-4));
        assert_eq!(JobSpec::from_proto(&spec.to_proto()).unwrap(), spec);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(|p| p.arch = "resnet9000".into()), "arch");
        assert_eq!(field_of(|p| p.dataset = "imagenet".into()), "dataset");
        assert_eq!(field_of(|p| p.stage = "pretrain".into()), "stage");
        assert_eq!(field_of(|p| p.lr = 0.0), "lr");
        assert_eq!(field_of(|p| p.lr = -0.1), "lr");
        assert_eq!(field_of(|p| p.lr = f64::NAN), "lr");
        assert_eq!(field_of(|p| p.batch_size = 0), "batch_size");
        assert_eq!(field_of(|p| p.epochs = 0), "epochs");
        assert_eq!(field_of(|p| p.weight_decay = -1.0), "weight_decay");
        assert_eq!(field_of(|p| p.momentum = 1.5), "momentum");
        assert_eq!(field_of(|p| p.print_freq = 0), "print_freq");
        assert_eq!(field_of(|p| p.device = "tpu".into()), "device");
        assert_eq!(field_of(|p| p.lr_schedule = vec![v1::LrStep { epoch: 0, gamma: 0.1 }]), "lr_schedule");
    }

    #[test]
    fn lr_schedule_is_multi_step_multi_gamma() {
        let spec = JobSpec::default();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-12;
        assert!(close(spec.lr_at_epoch(1), 0.1));
        assert!(close(spec.lr_at_epoch(79), 0.1));
        assert!(close(spec.lr_at_epoch(80), 0.01));
        assert!(close(spec.lr_at_epoch(120), 0.001));
        assert!(close(spec.lr_at_epoch(160), 0.0002));
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
