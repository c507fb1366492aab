//! Where all of the coordinator's state lives. `Store` is the seam, the sum of
//! one trait per part of the contract (`jobs`, `leases`, `telemetry`,
//! `checkpoints`, `credentials`, `ops`, each beside its records): PostgreSQL
//! (`postgres`) for a lab cluster of coordinators, SQLite (`sqlite`) embedded
//! for one machine. Rules that are not a query's business (the reaper's
//! verdict, retention, the DAG order, request keys) are decided once in
//! `policy`; the conformance suite (`server/tests/store_suite/`) holds both
//! backends to the same behaviour.
//!
//! Who may do what is decided above the store (the API layer); the store
//! enforces what must hold atomically with a write: the fencing token
//! (`LeaseRef`: this worker, at this attempt) of every worker write, the
//! per-user cap on running jobs at claim time, and idempotency keys.

mod checkpoints;
mod credentials;
mod jobs;
mod leases;
mod ops;
pub(crate) mod policy;
pub mod postgres;
pub mod sqlite;
mod sqlx_errors;
mod telemetry;

pub use checkpoints::*;
pub use credentials::*;
pub use jobs::*;
pub use leases::*;
pub use ops::*;
pub use telemetry::*;

use tokio::sync::broadcast;

pub use postgres::PgStore;
pub use sqlite::SqliteStore;

use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, thiserror::Error)]
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
    /// The database failed or refused the operation; the text is for the
    /// coordinator's log, never for clients.
    #[error("database: {0}")]
    Backend(String),
    /// The database is held by another coordinator (an embedded store has one).
    #[error("{0}")]
    Locked(String),
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
pub trait Store: JobStore + LeaseStore + TelemetryStore + CheckpointStore + CredentialStore + OpsStore + Send + Sync + 'static {
    /// Notifications from every coordinator sharing this store.
    fn subscribe(&self) -> broadcast::Receiver<Change>;
}

/// Where a coordinator keeps its state, as `--database-url` names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// `postgres://…` or `postgresql://…`: a lab cluster's database, shared by coordinators.
    Postgres(String),
    /// `sqlite://PATH` (or `sqlite:PATH`): one file, one coordinator.
    Sqlite(PathBuf),
}

impl Location {
    pub fn parse(url: &str) -> StoreResult<Location> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            return Ok(Location::Postgres(url.to_string()));
        }
        let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else {
            return Err(StoreError::Invalid {
                field: "database-url".into(),
                reason: format!("'{}': expected postgres://… or sqlite://PATH", camp_proto::limits::excerpt(url)),
            });
        };
        let path = rest.split('?').next().unwrap_or_default();
        if path.is_empty() || path.starts_with(":memory:") {
            return Err(StoreError::Invalid { field: "database-url".into(), reason: "name a database file: sqlite://PATH".into() });
        }
        Ok(Location::Sqlite(PathBuf::from(path)))
    }

    /// The embedded default: `$XDG_DATA_HOME/camp/camp.db` (`~/.local/share/camp/camp.db`).
    pub fn default_sqlite() -> Location {
        let data_home = std::env::var_os("XDG_DATA_HOME")
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".local/share")))
            .unwrap_or_else(|| PathBuf::from("."));
        Location::Sqlite(data_home.join("camp").join("camp.db"))
    }

    /// Opens the store for a coordinator (an SQLite file is then this process's alone).
    pub async fn open(&self) -> StoreResult<Arc<dyn Store>> {
        Ok(match self {
            Location::Postgres(url) => Arc::new(PgStore::connect(url).await?),
            Location::Sqlite(path) => Arc::new(SqliteStore::open(path).await?),
        })
    }

    /// Opens the store for a short admin command beside a running coordinator.
    pub async fn open_for_admin(&self) -> StoreResult<Arc<dyn Store>> {
        Ok(match self {
            Location::Postgres(url) => Arc::new(PgStore::connect(url).await?),
            Location::Sqlite(path) => Arc::new(SqliteStore::open_shared(path).await?),
        })
    }
}

impl std::fmt::Display for Location {
    /// Where, without a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::Postgres(url) => match (url.find("://"), url.rfind('@')) {
                (Some(scheme), Some(at)) if at > scheme => write!(f, "{}://…@{}", &url[..scheme], &url[at + 1..]),
                _ => f.write_str(url),
            },
            Location::Sqlite(path) => write!(f, "sqlite://{}", path.display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_name_a_backend_or_are_refused() {
        assert_eq!(Location::parse("postgres://u:p@h/db").unwrap(), Location::Postgres("postgres://u:p@h/db".into()));
        assert_eq!(Location::parse("sqlite:///tmp/x.db").unwrap(), Location::Sqlite("/tmp/x.db".into()));
        assert_eq!(Location::parse("sqlite:rel.db?mode=rwc").unwrap(), Location::Sqlite("rel.db".into()));
        assert!(Location::parse("sqlite::memory:").is_err());
        assert!(Location::parse("mysql://x").is_err());
        assert_eq!(Location::parse("postgres://u:secret@h/db").unwrap().to_string(), "postgres://…@h/db");
    }
}
