//! The dashboard's figures, as SVG drawn by `camp_figures`: a job's metric
//! series (thinned by the store to at most `points` points, the first, the
//! last and evenly spaced steps between, so a million-point series costs a
//! page no more than a thousand), several jobs' series on one chart (compare),
//! and an experiment's accuracy–energy curve, the figure `camp plot` writes.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::header::CONTENT_TYPE;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use camp_figures::chart::{self, Chart, Line};
use camp_figures::curve;
use camp_proto::metric::MetricName;
use camp_proto::results::rows;
use camp_proto::v1;
use camp_proto::v1::job_service_server::JobService;
use serde::Deserialize;

use super::api::{as_user, get_experiment};
use super::error::{WebError, WebResult};
use super::session::Caller;
use super::Dashboard;
use crate::auth::User;

/// Points a chart draws of a series, unless asked for fewer or more.
const CHART_POINTS: u32 = 1_000;
/// The most a chart may ask for.
const MAX_CHART_POINTS: u32 = 5_000;
/// The most jobs one compare chart draws.
const MAX_COMPARED: usize = 8;
/// The header that says how many points a chart drew.
const POINTS_HEADER: &str = "x-camp-points";

pub fn routes() -> Router<Arc<Dashboard>> {
    Router::new()
        .route("/api/jobs/{id}/chart/{name}", get(job_chart))
        .route("/api/compare", get(compare))
        .route("/api/experiments/{id}/curve", get(experiment_curve))
}

fn svg(text: String, points: usize) -> Response {
    let mut response = ([(CONTENT_TYPE, "image/svg+xml; charset=utf-8")], text).into_response();
    response.headers_mut().insert(POINTS_HEADER, HeaderValue::from(points));
    response
}

fn points_param(points: Option<u32>) -> WebResult<u32> {
    match points.unwrap_or(CHART_POINTS) {
        n @ 2..=MAX_CHART_POINTS => Ok(n),
        n => Err(WebError::invalid("points", format!("from 2 to {MAX_CHART_POINTS}, got {n}"))),
    }
}

/// A series of a job as `(x, y)`: by epoch for an epoch-level metric, else by step.
async fn series(dashboard: &Dashboard, user: &User, job_id: i64, name: &str, points: u32) -> WebResult<Vec<(f64, f64)>> {
    let request = v1::QueryMetricsRequest { job_id, name: name.to_string(), sample: points, ..Default::default() };
    let metrics = dashboard.jobs.query_metrics(as_user(user, request)).await?.into_inner().metrics;
    let per_epoch = MetricName::parse(name).is_some_and(MetricName::is_epoch_summary);
    Ok(metrics.iter().map(|m| (if per_epoch { m.epoch as f64 } else { m.step as f64 }, m.value)).collect())
}

fn x_desc(name: &str) -> &'static str {
    if MetricName::parse(name).is_some_and(MetricName::is_epoch_summary) {
        "epoch"
    } else {
        "step"
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ChartQuery {
    points: Option<u32>,
}

async fn job_chart(
    State(dashboard): State<Arc<Dashboard>>,
    Caller(user): Caller,
    Path((id, name)): Path<(i64, String)>,
    Query(q): Query<ChartQuery>,
) -> WebResult<Response> {
    let points = series(&dashboard, &user, id, &name, points_param(q.points)?).await?;
    let drawn = points.iter().filter(|(x, y)| x.is_finite() && y.is_finite()).count();
    let lines = [Line { label: name.clone(), points }];
    let title = format!("{name} · job {id}");
    Ok(svg(chart::svg(&Chart { title: &title, x_desc: x_desc(&name), y_desc: &name, lines: &lines })?, drawn))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompareQuery {
    jobs: String,
    metric: Option<String>,
    points: Option<u32>,
}

/// `1,2,3`: distinct job ids, at most `MAX_COMPARED`.
fn job_ids(text: &str) -> WebResult<Vec<i64>> {
    let mut ids = Vec::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let id: i64 =
            part.parse().map_err(|_| WebError::invalid("jobs", format!("'{}' is not a job id", camp_proto::limits::excerpt(part))))?;
        if !ids.contains(&id) {
            ids.push(id);
        }
    }
    match ids.len() {
        0 => Err(WebError::invalid("jobs", "name at least one job id (jobs=1,2)")),
        n if n > MAX_COMPARED => Err(WebError::invalid("jobs", format!("at most {MAX_COMPARED} jobs on one chart, got {n}"))),
        _ => Ok(ids),
    }
}

async fn compare(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Query(q): Query<CompareQuery>) -> WebResult<Response> {
    let ids = job_ids(&q.jobs)?;
    let metric = q.metric.unwrap_or_else(|| MetricName::TestTop1.as_str().into_owned());
    let points = points_param(q.points)?;
    let mut lines = Vec::with_capacity(ids.len());
    for id in ids {
        let job = dashboard.jobs.get_job(as_user(&user, v1::GetJobRequest { id })).await?.into_inner();
        lines.push(Line { label: format!("#{id} {}", job.name), points: series(&dashboard, &user, id, &metric, points).await? });
    }
    let drawn = lines.iter().flat_map(|l| &l.points).filter(|(x, y)| x.is_finite() && y.is_finite()).count();
    let title = format!("{metric} by {}", x_desc(&metric));
    Ok(svg(chart::svg(&Chart { title: &title, x_desc: x_desc(&metric), y_desc: &metric, lines: &lines })?, drawn))
}

async fn experiment_curve(State(dashboard): State<Arc<Dashboard>>, Caller(user): Caller, Path(id): Path<i64>) -> WebResult<Response> {
    let experiment = get_experiment(&dashboard, &user, id).await?;
    let points = curve::points(&rows(&experiment));
    if points.is_empty() {
        return Err(WebError::NothingToDraw(format!("experiment {id} has no succeeded job with a top-1 and an energy yet")));
    }
    let network =
        experiment.jobs.iter().find_map(|job| job.spec.as_ref()).map(|s| format!(": {} on {}", s.arch, s.dataset)).unwrap_or_default();
    let drawn = points.len();
    Ok(svg(curve::svg(&points, &format!("{}{network}", experiment.name))?, drawn))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compare_takes_a_few_distinct_job_ids() {
        assert_eq!(job_ids("3, 1,3,").unwrap(), [3, 1]);
        assert!(job_ids("").unwrap_err().to_string().starts_with("jobs:"));
        assert!(job_ids("1,x").unwrap_err().to_string().contains("'x' is not a job id"));
        assert!(job_ids("1,2,3,4,5,6,7,8,9").unwrap_err().to_string().contains("at most 8"));
        assert!(points_param(Some(1)).is_err() && points_param(Some(5_001)).is_err());
        assert_eq!(points_param(None).unwrap(), CHART_POINTS);
    }
}
