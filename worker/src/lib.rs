//! camp's training engine: data sets, models, optimiser, checkpoints and the
//! training stages, plus the local runner and the benchmark.

pub mod bench;
pub mod checkpoint;
mod csrc;
pub mod daemon;
pub mod data;
pub mod device;
pub mod dualpath;
pub mod error;
pub mod flat;
mod fused;
pub mod local;
pub mod model;
pub mod network;
pub mod optim;
pub mod precision;
pub mod profile;
pub mod quant;
pub mod reinforce;
mod rng;
pub mod stage;
pub mod weights;

pub use error::EngineError;
