//! The storage conformance suite: what every `Store` backend must do, written
//! once (`cases`, each an `async fn(Arc<dyn Store>)` that calls the trait's
//! methods directly) and run against each backend by one line of
//! `store_suite!` at the end of this file, which gives every case a fresh,
//! empty store of its own.
//!
//! Both backends run every case: PostgreSQL on a fresh database per case
//! (`#[sqlx::test]`), SQLite on a file in a fresh temporary folder (a file,
//! not `:memory:`, so that the WAL and the file lock are exercised). A
//! backend whose store lives in a temporary directory is one constructor and
//! one line, `store_suite!(NAME: CONSTRUCTOR)`; the constructor may return
//! any guard (kept alive until the case ends).
//! A case written in `cases` but not named in `for_each_case!` is dead code,
//! which the build's `-D warnings` refuses; a name without a case does not compile.

use std::sync::Arc;
use std::time::Duration;

use camp_server::store::{Change, PgStore, SqliteStore, Store};
use sqlx::PgPool;

/// Asserts that a store call failed with the given `StoreError` pattern.
macro_rules! assert_err {
    ($result:expr, $pattern:pat) => {
        match $result {
            Err($pattern) => {}
            other => panic!("{}: expected Err({}), got {:?}", stringify!($result), stringify!($pattern), other),
        }
    };
    ($result:expr, $pattern:pat, $($context:tt)+) => {
        match $result {
            Err($pattern) => {}
            other => panic!("{}: expected Err({}), got {:?}", format!($($context)+), stringify!($pattern), other),
        }
    };
}

mod cases;
mod fixtures;

/// Calls `$callback!($($arg,)* case)` for every case of the suite.
macro_rules! for_each_case {
    ($callback:ident $(, $arg:tt)*) => {
        // Claims: order, cap, matching.
        $callback!($($arg,)* a_job_is_stored_as_submitted_runs_under_its_workers_name_and_keeps_its_result);
        $callback!($($arg,)* claims_take_the_highest_priority_then_the_owner_with_fewest_running_then_the_oldest);
        $callback!($($arg,)* the_per_user_cap_passes_over_an_owner_at_the_cap_counting_jobs_on_every_worker);
        $callback!($($arg,)* a_cpu_worker_never_gets_a_cuda_job_and_device_any_goes_to_either_kind);
        $callback!($($arg,)* a_worker_without_the_data_set_never_gets_the_job);
        $callback!($($arg,)* a_new_priority_reorders_the_queue_and_a_finished_job_keeps_its_own);
        $callback!($($arg,)* a_job_requiring_labels_goes_only_to_a_worker_carrying_each_of_them);
        $callback!($($arg,)* a_batch_claim_shares_jobs_out_in_claim_order_one_job_per_worker);
        $callback!($($arg,)* a_job_of_n_ranks_goes_only_to_a_worker_with_at_least_n_devices);
        // Leases, the reaper, heartbeats, fencing.
        $callback!($($arg,)* an_expired_lease_requeues_the_job_and_its_next_claim_is_the_next_attempt);
        $callback!($($arg,)* after_max_attempts_lost_leases_the_reaper_fails_the_job_and_cancels_its_children);
        $callback!($($arg,)* the_reaper_cancels_an_expired_job_whose_cancel_was_requested);
        $callback!($($arg,)* a_released_job_is_queued_again_without_counting_as_a_lost_attempt);
        $callback!($($arg,)* heartbeats_renew_leases_pass_on_cancel_requests_and_name_the_jobs_a_worker_lost);
        $callback!($($arg,)* a_heartbeat_batch_answers_each_worker_as_its_own_heartbeat_would);
        $callback!($($arg,)* a_finish_batch_ends_each_attempt_as_its_own_finish_would);
        $callback!($($arg,)* writes_from_another_worker_or_an_older_attempt_are_stale_and_write_nothing);
        $callback!($($arg,)* a_finished_attempt_takes_no_more_writes);
        $callback!($($arg,)* a_retry_requeues_the_job_as_a_lost_attempt_until_max_attempts_then_fails_and_cancels_its_children);
        $callback!($($arg,)* a_restarted_worker_keeps_its_row_and_its_lost_attempts_are_requeued_at_once);
        // Telemetry and resuming.
        $callback!($($arg,)* a_re_sent_report_batch_is_stored_once);
        $callback!($($arg,)* metrics_and_logs_are_read_in_pages_in_the_order_they_were_stored);
        $callback!($($arg,)* a_new_attempt_resumes_from_the_latest_checkpoint_and_drops_earlier_metrics_past_it);
        $callback!($($arg,)* without_a_checkpoint_a_new_attempt_drops_earlier_metrics_except_those_at_step_zero);
        $callback!($($arg,)* the_newest_points_of_each_series_and_the_points_since_a_step_are_read_in_pages);
        $callback!($($arg,)* an_ended_jobs_step_series_are_thinned_to_n_points_and_its_epoch_metrics_kept_and_a_sample_reads_the_same_points);
        // Checkpoints.
        $callback!($($arg,)* a_checkpoint_upload_is_invisible_until_committed_and_reads_back_in_its_chunks);
        $callback!($($arg,)* retention_keeps_the_latest_checkpoints_and_the_best_one);
        $callback!($($arg,)* an_aborted_upload_leaves_nothing_behind_and_cannot_be_committed);
        $callback!($($arg,)* an_upload_commits_only_under_its_own_jobs_current_lease);
        $callback!($($arg,)* the_reaper_drops_uploads_whose_attempt_is_over_and_keeps_live_ones);
        $callback!($($arg,)* a_chunk_put_to_a_committed_checkpoint_is_accepted_as_it_stands);
        // Cancelling, pipelines, submissions.
        $callback!($($arg,)* cancelling_a_queued_job_ends_it_at_once_and_a_running_one_is_asked_to_stop);
        $callback!($($arg,)* a_failed_parent_cancels_its_waiting_descendants_however_deep);
        $callback!($($arg,)* a_cancelled_parent_cancels_its_waiting_descendants_however_deep);
        $callback!($($arg,)* cancelling_an_experiment_cancels_its_queued_jobs_and_asks_its_running_ones_to_stop);
        $callback!($($arg,)* a_child_is_claimable_only_after_all_its_parents_succeed);
        $callback!($($arg,)* a_child_starts_from_its_parents_best_checkpoint);
        $callback!($($arg,)* a_job_that_starts_from_another_waits_for_it_and_must_name_a_fitting_job);
        $callback!($($arg,)* a_resubmission_with_the_same_request_key_and_digest_returns_what_the_first_made);
        $callback!($($arg,)* jobs_and_experiments_are_listed_newest_first_filtered_and_paged);
        $callback!($($arg,)* queue_facts_count_the_owners_running_jobs_the_live_matching_workers_and_the_jobs_ahead);
        // Workers, credentials, the change feed.
        $callback!($($arg,)* registered_workers_are_found_by_session_and_listed_latest_heard_first_with_their_jobs);
        $callback!($($arg,)* a_worker_may_read_the_jobs_it_runs_and_the_jobs_they_start_from);
        $callback!($($arg,)* credentials_are_found_by_token_digest_listed_and_revoked_once);
        $callback!($($arg,)* the_change_feed_announces_queue_additions_and_changes_to_each_job);
        // What an operator watches.
        $callback!($($arg,)* queue_depth_counts_queued_jobs_by_device_and_data_set_the_running_jobs_and_the_live_workers);
    };
}

/// Instantiates every case for one backend, in a module named after it.
///
/// - `store_suite!(postgres)`: each case on a fresh database made by `#[sqlx::test]` (needs `DATABASE_URL`).
/// - `store_suite!(NAME: CONSTRUCTOR)`: each case on `CONSTRUCTOR().await`, an
///   `async fn() -> (Arc<dyn Store>, Guard)`, under `#[tokio::test]`; the guard
///   (a temporary directory, say) lives until the case ends.
macro_rules! store_suite {
    (postgres) => {
        mod postgres {
            use super::*;
            for_each_case!(postgres_case);
        }
    };
    ($backend:ident : $constructor:path) => {
        mod $backend {
            use super::*;
            for_each_case!(constructed_case, $constructor);
        }
    };
}

macro_rules! postgres_case {
    ($case:ident) => {
        #[sqlx::test(migrations = false)]
        async fn $case(pool: PgPool) {
            cases::$case(fresh_postgres_store(pool).await).await;
        }
    };
}

macro_rules! constructed_case {
    ($constructor:path, $case:ident) => {
        #[tokio::test]
        async fn $case() {
            let (store, _guard) = $constructor().await;
            cases::$case(store).await;
        }
    };
}

/// A `PgStore` on the case's fresh database (`from_pool` runs the migrations),
/// handed over once its change feed listens, so that no case misses a change.
async fn fresh_postgres_store(pool: PgPool) -> Arc<dyn Store> {
    tokio::spawn(close_for_good(pool.clone()));
    let store = PgStore::from_pool(pool.clone()).await.unwrap();
    // Job 0 never exists: announcing it changes nothing a case looks at.
    let mut changes = store.subscribe();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    'listening: loop {
        assert!(tokio::time::Instant::now() < deadline, "the store's change listener never started");
        sqlx::query("SELECT pg_notify('camp', '0')").execute(&pool).await.unwrap();
        let round = tokio::time::Instant::now() + Duration::from_millis(50);
        while let Ok(change) = tokio::time::timeout_at(round, changes.recv()).await {
            if matches!(change, Ok(Change::Job(0))) {
                break 'listening;
            }
        }
    }
    Arc::new(store)
}

/// Once `#[sqlx::test]` closes the case's pool, closes it again until no
/// connection is left (as `tests/common` does: sqlx 0.8's `Pool::close` can
/// return while the change listener's connection is on its way back, and the
/// harness's `DROP DATABASE` then waits for it and fails).
async fn close_for_good(pool: PgPool) {
    pool.close_event().await;
    for _ in 0..500 {
        if pool.size() == 0 {
            return;
        }
        pool.close().await;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

store_suite!(postgres);

/// An `SqliteStore` on `camp.db` in a fresh folder (removed when the case ends).
async fn sqlite_file_store() -> (Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("camp.db")).await.unwrap();
    (Arc::new(store), dir)
}

store_suite!(sqlite: sqlite_file_store);
