//! Where all of the coordinator's state lives. `Store` is the seam: PostgreSQL
//! implements it today (`postgres`); an embedded backend can implement it later.
//!
//! Who may do what is decided above the store (the API layer); the store
//! enforces what must hold atomically with a write: the fencing token
//! (`LeaseRef`: this worker, at this attempt) of every worker write, the
//! per-user cap on running jobs at claim time, and idempotency keys.

mod checkpoints;
mod credentials;
mod jobs;
mod leases;
pub mod postgres;
mod telemetry;

pub use checkpoints::*;
pub use credentials::*;
pub use jobs::*;
pub use leases::*;
pub use telemetry::*;

use tokio::sync::broadcast;

pub use postgres::PgStore;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0} not found")]
    NotFound(String),
    /// A write from an attempt that no longer holds the job's lease.
    #[error("stale attempt: {0}")]
    Stale(String),
    #[error("{0}")]
    PermissionDenied(String),
    /// The request is well-formed but the job's state does not allow it.
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("invalid {field}: {reason}")]
    Invalid { field: String, reason: String },
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A change notification: something about this job changed (state, metrics, logs),
/// or, with `job_id == None`, the queue gained a claimable job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    Queue,
    Job(i64),
}

/// The whole store: every part of its contract, and the change feed.
pub trait Store: JobStore + LeaseStore + TelemetryStore + CheckpointStore + CredentialStore + Send + Sync + 'static {
    /// Notifications from every coordinator sharing this store.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}
