//! The training engine's error type.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Spec(#[from] camp_proto::spec::SpecError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("device: {0}")]
    Device(String),
    #[error("data set {dataset}: {path}: {reason}")]
    Data { dataset: String, path: PathBuf, reason: String },
    #[error("spec file {path}: {reason}")]
    SpecFile { path: PathBuf, reason: String },
    #[error("quantisation: {0}")]
    Quantization(String),
    #[error("model: {0}")]
    Model(String),
    #[error("slots: {0}")]
    Slots(String),
    #[error("data-parallel ranks: {0}")]
    Parallel(String),
    #[error("checkpoint: {0}")]
    Checkpoint(String),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    NotStored(#[from] crate::observer::CheckpointError),
}

pub type Result<T, E = EngineError> = std::result::Result<T, E>;
