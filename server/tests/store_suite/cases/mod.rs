//! The cases, by part of the store's contract. Each takes a fresh, empty store
//! and calls the trait's methods directly; `for_each_case!` (main.rs) names them all.

mod checkpoints;
mod claims;
mod jobs;
mod leases;
mod ops;
mod parties;
mod telemetry;

pub use checkpoints::*;
pub use claims::*;
pub use jobs::*;
pub use leases::*;
pub use ops::*;
pub use parties::*;
pub use telemetry::*;
