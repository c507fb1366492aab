//! The dashboard's row (issue 13): what its pages cost with a deep job list
//! and a long series. It fills the store with `jobs` queued jobs and one job
//! holding a `points`-point loss series (reported as a fake worker would),
//! then times the dashboard's answers to a page of the jobs table (the
//! newest, and one deep in the list), a job page's data, and that series'
//! chart (the store samples 1,000 of its points). Everything it submitted is
//! finished or cancelled before it returns.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use camp_proto::v1;
use futures::future::try_join_all;

use crate::fleet::{Connections, BENCH_USER};
use crate::scenarios::{loss_batch, register, submit_burst, Row};
use crate::stats::{http_get_with, Latencies};

/// Times each page is read.
const READS: usize = 20;
/// Points per report batch of the long series.
const BATCH_POINTS: usize = 1_000;

pub async fn dashboard(conns: &Connections, base: &str, token: Option<&str>, jobs: usize, points: usize) -> anyhow::Result<Vec<Row>> {
    submit_burst(conns, jobs).await?;
    let mut workers = register(conns, 1).await?;
    let w = &mut workers[0];
    let held = w.claim(Duration::ZERO).await?.0.ok_or_else(|| anyhow::anyhow!("dashboard: no job to claim"))?;
    let (job_id, attempt) = (held.job_id, held.attempt);
    // In streams of 50 batches, with a heartbeat between them: the lease outlives the report.
    let batches = points.div_ceil(BATCH_POINTS);
    for first in (0..batches).step_by(50) {
        w.client
            .report(futures::stream::iter((first..(first + 50).min(batches)).map(move |b| loss_batch(job_id, attempt, b, BATCH_POINTS))))
            .await?;
        w.heartbeat(&[&held]).await?;
    }

    let cookie = match token {
        Some(t) => format!("camp_token={t}"),
        None => format!("camp_user={BENCH_USER}"),
    };
    let page = |path: String| {
        let (url, cookie) = (format!("{base}{path}"), cookie.clone());
        async move {
            let mut lat = Latencies::default();
            let mut size = 0;
            for _ in 0..READS {
                let t = Instant::now();
                let (status, body) = http_get_with(&url, &[("Cookie", &cookie)]).await?;
                lat.push(t.elapsed());
                anyhow::ensure!(status == 200, "{url}: {status} {}", body.chars().take(200).collect::<String>());
                size = body.len();
            }
            anyhow::Ok((lat, size))
        }
    };
    let deep = job_id + (jobs as i64) / 2;
    let mut rows = Vec::new();
    for (figure, path) in [
        (format!("dashboard: jobs page, newest 50 of {jobs} jobs"), "/api/jobs?limit=50".to_string()),
        (format!("dashboard: jobs page, 50 from the middle of {jobs}"), format!("/api/jobs?limit=50&before={deep}")),
        (format!("dashboard: a job page's data (job with {points} points)"), format!("/api/jobs/{job_id}")),
        (format!("dashboard: chart of a {points}-point series (1,000 drawn)"), format!("/api/jobs/{job_id}/chart/loss")),
    ] {
        // The job stays running (an ended job's series would be thinned): its lease is renewed.
        w.heartbeat(&[&held]).await?;
        let (lat, size) = page(path).await?;
        rows.push(Row {
            figure,
            value: format!("p50 {}, p99 {} ({} reads, {:.0} KiB)", lat.p(0.5), lat.p(0.99), lat.len(), size as f64 / 1024.0),
            target: "-",
            cpu: None,
        });
    }

    w.heartbeat(&[&held]).await?;
    w.finish(&held).await?;
    cancel_queued(conns).await?;
    Ok(rows)
}

/// Cancels every bench job still queued (so that later scenarios start from an empty queue).
async fn cancel_queued(conns: &Connections) -> anyhow::Result<()> {
    let mut jobs = conns.jobs(0)?;
    let mut ids = Vec::new();
    let mut before = 0;
    loop {
        let page = jobs
            .list_jobs(v1::ListJobsRequest { state: v1::JobState::Queued as i32, limit: 1_000, before_id: before, ..Default::default() })
            .await?
            .into_inner();
        ids.extend(page.jobs.iter().map(|j| j.id));
        if page.next_before_id == 0 {
            break;
        }
        before = page.next_before_id;
    }
    let next = Arc::new(AtomicUsize::new(0));
    let ids = Arc::new(ids);
    try_join_all((0..16).map(|i| {
        let (conns, next, ids) = (conns.clone(), next.clone(), ids.clone());
        async move {
            let mut jobs = conns.jobs(i)?;
            while let Some(&id) = ids.get(next.fetch_add(1, Ordering::Relaxed)) {
                jobs.cancel_job(v1::CancelJobRequest { id }).await?;
            }
            anyhow::Ok(())
        }
    }))
    .await?;
    Ok(())
}
