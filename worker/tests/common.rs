//! Helpers shared by the engine's integration tests.
#![allow(dead_code)] // each test binary uses its own subset

use std::sync::{Mutex, MutexGuard};

use camp_proto::metric::{EpochMetrics, StepMetrics};
use camp_proto::spec::{JobSpec, LrStep};
use camp_proto::{JobResult, ValidSpec};
use camp_worker::fixtures;
use camp_worker::observer::{CheckpointBlob, Control, Observer, StageOutcome};

/// Model initialisation draws from libtorch's global generator: tests that
/// seed it and build models must not interleave.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    tch::set_num_threads(1);
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A small, fast spec: fashion-mnist-like data, ResNet-20, a few steps per epoch.
pub fn tiny_spec(epochs: u32) -> JobSpec {
    JobSpec {
        arch: "preact_resnet20_cifar".into(),
        dataset: "fashion-mnist".into(),
        lr: 0.05,
        batch_size: 16,
        epochs,
        print_freq: 1,
        seed: 11,
        device: camp_proto::spec::DeviceRequest::Cpu,
        lr_schedule: vec![LrStep { epoch: 3, gamma: 0.1 }],
        ..JobSpec::default()
    }
}

/// Records everything the stage reports; answers `control` from a script.
#[derive(Default)]
pub struct Recorder {
    pub metrics: Vec<(i64, u32, String, f64)>,
    pub logs: Vec<String>,
    pub checkpoints: Vec<CheckpointBlob>,
    /// Control answered at the N-th poll (1-based); Continue otherwise.
    pub control_at: Option<(usize, Control)>,
    polls: usize,
}

impl Recorder {
    pub fn with_control(poll: usize, control: Control) -> Self {
        Recorder { control_at: Some((poll, control)), ..Default::default() }
    }

    /// Values of metric `name`, in the order reported, with their epochs.
    pub fn series(&self, name: &str) -> Vec<(u32, f64)> {
        self.metrics.iter().filter(|m| m.2 == name).map(|m| (m.1, m.3)).collect()
    }
}

impl Observer for Recorder {
    fn step(&mut self, m: &StepMetrics) {
        self.metrics.extend(m.points().into_iter().map(|(name, value)| (m.step, m.epoch, name.to_string(), value)));
    }
    fn epoch(&mut self, m: &EpochMetrics) {
        self.metrics.extend(m.points().into_iter().map(|(name, value)| (m.step, m.epoch, name.to_string(), value)));
    }
    fn log(&mut self, line: String) {
        self.logs.push(line);
    }
    fn checkpoint(&mut self, blob: CheckpointBlob) -> Result<(), camp_worker::observer::CheckpointError> {
        self.checkpoints.push(blob);
        Ok(())
    }
    fn control(&mut self) -> Control {
        self.polls += 1;
        match self.control_at {
            Some((poll, control)) if poll == self.polls => control,
            _ => Control::Continue,
        }
    }
}

/// A temporary data folder with a small generated Fashion-MNIST (gzip IDX files).
pub fn fashion_dir(n_train: usize, n_test: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_fashion_mnist_like(dir.path(), n_train, n_test, 21, true).unwrap();
    dir
}

/// The summary of a run that must have completed.
pub fn completed(outcome: StageOutcome) -> JobResult {
    match outcome {
        StageOutcome::Completed(summary) => summary,
        _ => panic!("the run did not complete"),
    }
}

/// The spec, checked as the daemon checks a claimed one (the engine takes only checked specs).
pub fn valid(spec: &JobSpec) -> ValidSpec {
    ValidSpec::new(spec.clone()).expect("a valid spec")
}
