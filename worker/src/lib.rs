//! camp's training engine: data sets, models, optimiser, checkpoints and the
//! training stages, plus the local runner and the benchmark.

pub mod bench;
pub mod checkpoint;
pub mod collective;
pub mod compute;
mod csrc;
pub mod cuda_graph;
pub mod daemon;
pub mod data;
pub mod device;
pub mod dualpath;
pub mod error;
mod evaluation;
#[cfg(any(test, feature = "testsuite"))]
pub mod fixtures;
pub(crate) mod flat;
mod fused;
pub mod local;
pub mod model;
mod module_path;
pub mod network;
pub mod observer;
pub mod optim;
pub mod parallel;
pub mod precision;
pub mod profile;
pub mod quant;
pub mod ranks;
pub mod reinforce;
mod rng;
pub mod slots;
pub mod stage;
pub mod weights;

pub use error::EngineError;
