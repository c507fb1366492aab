//! The dashboard's JSON endpoints: each is a `JobService` call made in-process
//! as the caller (so the gRPC API's access rules apply), answered in the
//! shapes of `camp_proto::wire` (what `camp --json` prints), with what a page
//! needs in one reply: a job with its checkpoints, log tail and energy; an
//! experiment with its result rows.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::header::{CONTENT_DISPOSITION, CONTENT_TYPE};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use camp_proto::metric::MetricName;
use camp_proto::results::{rows, rows_csv, ResultRow};
use camp_proto::v1::job_service_server::JobService;
use camp_proto::{energy, v1, wire, ValidSpec};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tonic::Request;

use super::error::{WebError, WebResult};
use super::session::Caller;
use super::Dashboard;
use crate::auth::User;

/// Jobs a page of the jobs table shows, unless asked for fewer.
const JOBS_PAGE: u32 = 50;
/// Log lines a job page shows.
const LOG_TAIL: u32 = 200;

pub fn routes() -> Router<Arc<Dashboard>> {
    Router::new()
        .route("/api/jobs", get(list_jobs))
        .route("/api/jobs/{id}", get(job))
        .route("/api/jobs/{id}/logs", get(logs))
        .route("/api/jobs/{id}/cancel", post(cancel))
        .route("/api/checkpoints/{id}/download", get(download))
        .route("/api/experiments", get(list_experiments))
        .route("/api/experiments/{id}", get(experiment))
        .route("/api/experiments/{id}/results.csv", get(results_csv))
        .route("/api/workers", get(workers))
}

/// A `JobService` request made as `user`.
pub(super) fn as_user<T>(user: &User, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(user.clone());
    request
}

pub(super) fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct JobsQuery {
    state: Option<String>,
    owner: Option<String>,
    stage: Option<String>,
    before: Option<i64>,
    limit: Option<u32>,
}

fn state_param(name: &str) -> WebResult<v1::JobState> {
    let state = match name {
        "" => v1::JobState::Unspecified,
        "queued" => v1::JobState::Queued,
        "running" => v1::JobState::Running,
        "succeeded" => v1::JobState::Succeeded,
        "failed" => v1::JobState::Failed,
        "cancelled" => v1::JobState::Cancelled,
        other => {
            return Err(WebError::invalid(
                "state",
                format!("one of queued, running, succeeded, failed, cancelled; got '{}'", camp_proto::limits::excerpt(other)),
            ))
        }
    };
    Ok(state)
}

/// The newest point of a job's series, if it has one.
async fn newest(dashboard: &Dashboard, user: &User, job_id: i64, name: MetricName) -> WebResult<Option<v1::Metric>> {
    let request = v1::QueryMetricsRequest { job_id, name: name.as_str().into_owned(), last: 1, ..Default::default() };
    Ok(dashboard.jobs.query_metrics(as_user(user, request)).await?.into_inner().metrics.pop())
}

/// A job as a row of the jobs table: its wire shape, and for a running job
/// its latest throughput and step (the page works out progress and ETA).
async fn job_row(dashboard: &Dashboard, user: &User, job: &v1::Job) -> WebResult<Value> {
    let mut row = wire::job(job);
    if job.state == v1::JobState::Running as i32 {
        if let Some(m) = newest(dashboard, user, job.id, MetricName::ImagesPerS).await? {
            row["images_per_s"] = camp_proto::text::json_f64(m.value);
            row["step"] = json!(m.step);
        }
    }
    Ok(row)
}

async fn list_jobs(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Query(q): Query<JobsQuery>) -> WebResult<Json<Value>> {
    let request = v1::ListJobsRequest {
        state: state_param(q.state.as_deref().unwrap_or(""))? as i32,
        stage: q.stage.unwrap_or_default(),
        owner: q.owner.unwrap_or_default().trim().to_string(),
        limit: q.limit.unwrap_or(JOBS_PAGE),
        before_id: q.before.unwrap_or(0),
    };
    let reply = dashboard.jobs.list_jobs(as_user(&user, request)).await?.into_inner();
    let mut jobs = Vec::with_capacity(reply.jobs.len());
    for job in &reply.jobs {
        jobs.push(job_row(&dashboard, &user, job).await?);
    }
    Ok(Json(json!({ "jobs": jobs, "next_before_id": reply.next_before_id, "now_ms": now_ms() })))
}

/// The energy of the job's network and bits, as `camp energy --json` gives it (None for a spec the contract refuses).
fn energy_of(job: &v1::Job) -> Value {
    let Some(spec) = job.spec.as_ref().and_then(|s| ValidSpec::from_proto(s).ok()) else { return Value::Null };
    match energy::report(&spec) {
        Ok(report) => wire::energy_report(&spec, &report),
        Err(_) => Value::Null,
    }
}

/// Each attempt as far as the store knows it: its checkpoints and log lines
/// in the tail; the worker of the one running now (the store keeps no
/// per-attempt worker history).
fn attempts(job: &v1::Job, checkpoints: &[v1::Checkpoint], log: &[v1::LogLine]) -> Vec<Value> {
    (1..=job.attempt)
        .map(|attempt| {
            let current = attempt == job.attempt;
            let saved: Vec<&v1::Checkpoint> = checkpoints.iter().filter(|c| c.attempt == attempt).collect();
            let lines: Vec<&v1::LogLine> = log.iter().filter(|l| l.attempt == attempt).collect();
            let outcome = if current { wire::state_name(job.state) } else { "ended (re-queued)" };
            json!({
                "attempt": attempt,
                "worker": if current { job.worker.as_str() } else { "" },
                "outcome": outcome,
                "checkpoints": saved.len(),
                "last_epoch_saved": saved.iter().map(|c| c.epoch).max(),
                "first_log_ms": lines.first().map(|l| l.at_ms),
                "last_log_ms": lines.last().map(|l| l.at_ms),
            })
        })
        .collect()
}

async fn job(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Json<Value>> {
    let job = dashboard.jobs.get_job(as_user(&user, v1::GetJobRequest { id })).await?.into_inner();
    let checkpoints =
        dashboard.jobs.list_checkpoints(as_user(&user, v1::ListCheckpointsRequest { job_id: id })).await?.into_inner().checkpoints;
    let log = dashboard.jobs.get_logs(as_user(&user, v1::GetLogsRequest { job_id: id, last: LOG_TAIL, ..Default::default() })).await?;
    let log = log.into_inner().lines;
    // The job was readable above: its series' names are the store's to list.
    let series: Vec<Value> = dashboard
        .store
        .metric_series(id)
        .await
        .map_err(crate::error::ApiError::from)?
        .into_iter()
        .map(|name| {
            let per_epoch = MetricName::parse(&name).is_some_and(MetricName::is_epoch_summary);
            json!({ "name": name, "per_epoch": per_epoch })
        })
        .collect();
    Ok(Json(json!({
        "job": wire::job(&job),
        "attempts": attempts(&job, &checkpoints, &log),
        "checkpoints": checkpoints.iter().map(wire::checkpoint).collect::<Vec<_>>(),
        "log": log.iter().map(|l| wire::log_line(id, l)).collect::<Vec<_>>(),
        "series": series,
        "energy": energy_of(&job),
        "now_ms": now_ms(),
    })))
}

async fn logs(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Json<Value>> {
    let reply = dashboard.jobs.get_logs(as_user(&user, v1::GetLogsRequest { job_id: id, last: LOG_TAIL, ..Default::default() })).await?;
    Ok(Json(json!({ "log": reply.into_inner().lines.iter().map(|l| wire::log_line(id, l)).collect::<Vec<_>>() })))
}

async fn cancel(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Json<Value>> {
    let job = dashboard.jobs.cancel_job(as_user(&user, v1::CancelJobRequest { id })).await?.into_inner();
    Ok(Json(wire::job(&job)))
}

/// A checkpoint's bytes, streamed as `DownloadCheckpoint` streams them.
async fn download(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Response> {
    let request = v1::DownloadCheckpointRequest { checkpoint_id: id, ..Default::default() };
    let chunks = dashboard.jobs.download_checkpoint(as_user(&user, request)).await?.into_inner();
    let body = Body::from_stream(chunks.map(|chunk| chunk.map(|c| axum::body::Bytes::from(c.data))));
    let disposition = format!("attachment; filename=\"checkpoint-{id}.safetensors\"");
    Ok(([(CONTENT_TYPE, "application/octet-stream".to_string()), (CONTENT_DISPOSITION, disposition)], body).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    before: Option<i64>,
    limit: Option<u32>,
}

async fn list_experiments(
    State(dashboard): State<Arc<Dashboard>>,
    Caller(user): Caller,
    Query(q): Query<PageQuery>,
) -> WebResult<Json<Value>> {
    let request = v1::ListExperimentsRequest { limit: q.limit.unwrap_or(JOBS_PAGE), before_id: q.before.unwrap_or(0) };
    let reply = dashboard.jobs.list_experiments(as_user(&user, request)).await?.into_inner();
    Ok(Json(json!({
        "experiments": reply.experiments.iter().map(wire::experiment).collect::<Vec<_>>(),
        "next_before_id": reply.next_before_id,
    })))
}

pub(super) async fn get_experiment(dashboard: &Dashboard, user: &User, id: i64) -> WebResult<v1::Experiment> {
    Ok(dashboard.jobs.get_experiment(as_user(user, v1::GetExperimentRequest { id })).await?.into_inner())
}

async fn experiment(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Json<Value>> {
    let experiment = get_experiment(&dashboard, &user, id).await?;
    Ok(Json(json!({
        "experiment": wire::experiment(&experiment),
        "results": rows(&experiment).iter().map(result_row).collect::<Vec<_>>(),
        "now_ms": now_ms(),
    })))
}

/// A result row as `camp results --json` gives it, and what tells it apart in its pipeline (`4/4`, `α=0.1`).
fn result_row(row: &ResultRow) -> Value {
    let mut value = serde_json::to_value(row).unwrap_or(Value::Null);
    value["variant"] = json!(row.variant());
    value
}

async fn results_csv(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Response> {
    let experiment = get_experiment(&dashboard, &user, id).await?;
    let disposition = format!("attachment; filename=\"experiment-{id}-results.csv\"");
    Ok(([(CONTENT_TYPE, "text/csv; charset=utf-8".to_string()), (CONTENT_DISPOSITION, disposition)], rows_csv(&rows(&experiment)))
        .into_response())
}

async fn workers(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller) -> WebResult<Json<Value>> {
    let reply = dashboard.jobs.list_workers(as_user(&user, v1::ListWorkersRequest {})).await?.into_inner();
    let now = now_ms();
    Ok(Json(json!({ "workers": reply.workers.iter().map(|w| wire::worker(w, now)).collect::<Vec<_>>(), "now_ms": now })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_filters_are_named_states_or_none() {
        assert_eq!(state_param("").unwrap(), v1::JobState::Unspecified);
        assert_eq!(state_param("running").unwrap(), v1::JobState::Running);
        let err = state_param("<b>x</b>").unwrap_err().to_string();
        assert!(err.starts_with("state: one of"), "{err}");
    }
}
