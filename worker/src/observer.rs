//! The runner port of the engine: what a training run tells whoever runs it
//! (the daemon forwards it to the coordinator, `camp-worker run` prints it and
//! writes files, tests record it) and what it asks back after each step. The
//! engine knows nothing of gRPC or files; a runner knows nothing of tensors.

use std::path::PathBuf;

use camp_proto::metric::{EpochMetrics, StepMetrics};
use camp_proto::JobResult;
use serde::Serialize;

/// What the caller wants after each training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop without writing anything more.
    Cancel,
    /// Checkpoint where the run stands, then stop (it will be resumed).
    Interrupt,
    /// The lease is lost: stop at once, write nothing.
    Abandon,
}

/// A checkpoint to store. `epoch` counts completed epochs (a mid-epoch
/// checkpoint carries the last completed one).
pub struct CheckpointBlob {
    pub bytes: Vec<u8>,
    pub epoch: u32,
    pub step: i64,
    /// Test top-1 of the epoch just finished; NaN for a mid-epoch checkpoint.
    pub top1: f64,
    /// The checkpoint's `__metadata__` as a JSON object of strings.
    pub metadata_json: String,
}

/// The shape of a run, announced once before its first step.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub train_images: i64,
    pub test_images: i64,
    pub steps_per_epoch: i64,
    pub epochs: u32,
    /// Where this attempt starts: 1-based epoch and steps already done in it.
    pub start_epoch: u32,
    pub start_step_in_epoch: i64,
}

pub trait Observer {
    /// Called once before training starts (or resumes).
    fn started(&mut self, _info: &RunInfo) {}
    /// A step's progress, every `print_freq` steps.
    fn step(&mut self, metrics: &StepMetrics);
    /// An epoch's summary, after its evaluation and before its checkpoint.
    fn epoch(&mut self, metrics: &EpochMetrics);
    fn log(&mut self, line: String);
    /// Blocks until the checkpoint is safely stored; Err aborts the run.
    fn checkpoint(&mut self, blob: CheckpointBlob) -> Result<(), CheckpointError>;
    /// Polled once per training step.
    fn control(&mut self) -> Control;
}

pub enum StageOutcome {
    Completed(JobResult),
    Cancelled,
    Interrupted,
    Abandoned,
}

/// Why a checkpoint was not stored (the run stops: it must not train past an
/// unsaved state it would have to redo).
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The daemon's reporter is gone (the attempt is ending).
    #[error("the reporter stopped before the checkpoint was stored")]
    ReporterStopped,
    /// The coordinator refused the upload (a lost lease, a bad header).
    #[error("checkpoint upload refused: {0}")]
    Refused(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}
