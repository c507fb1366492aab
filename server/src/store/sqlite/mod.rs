//! The embedded store: SQLite in one file, for one machine (`camp-server`'s
//! default, `camp up`). One coordinator owns the file (an exclusive lock on
//! `<file>.lock`; a second one is refused), so it needs none of PostgreSQL's
//! machinery for many coordinators:
//!
//! - writes go through one connection, each in a `BEGIN IMMEDIATE`
//!   transaction: a single writer replaces `SKIP LOCKED`, and a claim reads
//!   and takes its job with no one in between;
//! - reads use a pool of read-only connections beside it (WAL: readers never
//!   wait for the writer);
//! - changes are announced on an in-process channel after the commit, not by
//!   NOTIFY;
//! - WAL with `synchronous = NORMAL`: a commit is in the log before it is
//!   acknowledged, so a crash of the coordinator loses nothing acknowledged
//!   (a power cut may lose the last few); foreign keys on; a busy timeout.
//!
//! Times are stored as microseconds since the epoch (as precise as PostgreSQL's), lists and objects as
//! JSON text, checkpoints as blobs in the file (see the migration).

mod checkpoints;
mod credentials;
mod jobs;
mod leases;
mod ops;
mod rows;
mod telemetry;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use camp_proto::{JobResult, JobSpec};
use chrono::{DateTime, Utc};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use sqlx::types::Json;
use sqlx::{FromRow, Sqlite, SqliteConnection, Transaction};
use tokio::sync::broadcast;
use uuid::Uuid;

use super::*;
use rows::{JobRecord, JOB_SELECT};

/// Readers beside the one writer.
const READERS: u32 = 4;
/// How long a statement waits for a lock before it fails (a checkpoint of the WAL, another reader).
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
    changes: broadcast::Sender<Change>,
    path: PathBuf,
    /// Held for the store's life by the file's one coordinator (None for an admin command).
    _owner: Option<File>,
}

impl SqliteStore {
    /// Opens (creating it and its folder if need be) the database at `path`,
    /// applies the migrations, and takes the file for this process: a second
    /// coordinator on the same file is refused (`StoreError::Locked`).
    pub async fn open(path: &Path) -> StoreResult<Self> {
        Self::open_as(path, true).await
    }

    /// Opens the database for a short admin command (tokens) beside a running
    /// coordinator: SQLite's own locking keeps the two writers apart.
    pub async fn open_shared(path: &Path) -> StoreResult<Self> {
        Self::open_as(path, false).await
    }

    async fn open_as(path: &Path, own: bool) -> StoreResult<Self> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| StoreError::Backend(format!("{}: {e}", dir.display())))?;
        }
        let owner = if own { Some(take_file(path)?) } else { None };
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT);
        let writer = SqlitePoolOptions::new().max_connections(1).min_connections(1).connect_with(options.clone()).await?;
        sqlx::migrate!("migrations/sqlite").run(&writer).await?;
        let reader = SqlitePoolOptions::new().max_connections(READERS).connect_with(options.read_only(true)).await?;
        let (changes, _) = broadcast::channel(1024);
        Ok(SqliteStore { writer, reader, changes, path: path.to_path_buf(), _owner: owner })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A write transaction (`BEGIN IMMEDIATE` on the one writer).
    pub(super) async fn begin(&self) -> StoreResult<Tx> {
        Ok(Tx { tx: self.writer.begin_with("BEGIN IMMEDIATE").await?, changes: Vec::new(), sender: self.changes.clone() })
    }
}

/// Locks `<path>.lock` for this process, or says who holds it.
fn take_file(path: &Path) -> StoreResult<File> {
    let lock_path = PathBuf::from(format!("{}.lock", path.display()));
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| StoreError::Backend(format!("{}: {e}", lock_path.display())))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(format!(
            "{} is in use by another camp-server (one coordinator per SQLite file; use PostgreSQL for several)",
            path.display()
        ))),
        Err(std::fs::TryLockError::Error(e)) => Err(StoreError::Backend(format!("{}: {e}", lock_path.display()))),
    }
}

/// A write transaction and the changes it will announce once committed.
pub(super) struct Tx {
    tx: Transaction<'static, Sqlite>,
    changes: Vec<Change>,
    sender: broadcast::Sender<Change>,
}

impl Tx {
    pub(super) fn conn(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }

    pub(super) fn notify(&mut self, change: Change) {
        if !self.changes.contains(&change) {
            self.changes.push(change);
        }
    }

    pub(super) async fn commit(self) -> StoreResult<()> {
        self.tx.commit().await?;
        for change in self.changes {
            let _ = self.sender.send(change);
        }
        Ok(())
    }
}

pub(super) fn now_us() -> i64 {
    Utc::now().timestamp_micros()
}

pub(super) fn time(us: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_micros(us).unwrap_or_default()
}

pub(super) fn lease_us(lease: Duration) -> i64 {
    i64::try_from(lease.as_micros()).unwrap_or(i64::MAX)
}

/// Checks that `at` is the job's fencing token: running, at this attempt,
/// leased to this worker (the one writer makes the check and the write that
/// follows one step).
pub(super) async fn fence(conn: &mut SqliteConnection, at: LeaseRef) -> StoreResult<()> {
    let row: Option<(String, i64, Option<Uuid>)> =
        sqlx::query_as("SELECT state, attempt, lease_worker FROM jobs WHERE id = ?1").bind(at.job_id).fetch_optional(&mut *conn).await?;
    crate::store::policy::check_fence(at, row.map(|(state, attempt, holder)| (state, attempt as u32, holder)))
}

pub(super) async fn job_in(conn: &mut SqliteConnection, id: i64) -> StoreResult<Job> {
    let rec: Option<JobRecord> = sqlx::query_as(&format!("{JOB_SELECT} WHERE j.id = ?1")).bind(id).fetch_optional(&mut *conn).await?;
    rec.ok_or_else(|| StoreError::NotFound(format!("job {id}")))?.try_into()
}

/// Records that `worker` was heard from; an unknown worker is NotFound.
pub(super) async fn touch_worker(conn: &mut SqliteConnection, worker: Uuid) -> StoreResult<()> {
    let known = sqlx::query("UPDATE workers SET last_heartbeat = ?2 WHERE id = ?1").bind(worker).bind(now_us()).execute(&mut *conn).await?;
    if known.rows_affected() == 0 {
        return Err(StoreError::NotFound(format!("worker {worker}")));
    }
    Ok(())
}

/// Cancels the jobs waiting on a job that failed or was cancelled, however deep.
pub(super) async fn cancel_descendants(tx: &mut Tx, job_id: i64, why: &str) -> StoreResult<()> {
    let cancelled: Vec<(i64,)> = sqlx::query_as(
        "WITH RECURSIVE below(id) AS ( \
           SELECT child_id FROM job_dependencies WHERE parent_id = ?1 \
           UNION SELECT d.child_id FROM job_dependencies d JOIN below b ON d.parent_id = b.id) \
         UPDATE jobs SET state = 'cancelled', finished_at = ?3, message = ?2 \
         WHERE id IN (SELECT id FROM below) AND state = 'queued' RETURNING id",
    )
    .bind(job_id)
    .bind(format!("cancelled: parent job {job_id} {why}"))
    .bind(now_us())
    .fetch_all(tx.conn())
    .await?;
    for (id,) in cancelled {
        tx.notify(Change::Job(id));
    }
    Ok(())
}

impl Store for SqliteStore {
    fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.changes.subscribe()
    }
}
