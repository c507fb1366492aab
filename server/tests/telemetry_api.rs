//! Metrics at scale through the coordinator's gRPC interface: `QueryMetrics`
//! by step and by the newest points of each series, and `WatchJob` starting
//! from the latest point or resuming after given row ids. The worker's side is
//! played by hand (tests/common).

mod common;

use std::time::Duration;

use camp_proto::v1::{self, job_event::Event};
use camp_server::Settings;
use common::*;
use sqlx::PgPool;
use tonic::Code;

/// Reads a watch until it has sent `n` events (each within 10 s).
async fn events(stream: &mut tonic::Streaming<v1::JobEvent>, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        let message = tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("an event within 10 s").unwrap();
        out.push(message.expect("the stream goes on").event.expect("an event"));
    }
    out
}

/// The next `n` metric and log events, passing over job updates: the job's own
/// row changes (a report's epoch) may reach a watch at any point, even late.
/// Within each kind the rows come in order; between kinds, in any.
async fn rows(stream: &mut tonic::Streaming<v1::JobEvent>, n: usize) -> Vec<Event> {
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(events(stream, 1).await.into_iter().filter(|e| !matches!(e, Event::Job(_))));
    }
    out
}

fn steps(events: &[Event]) -> Vec<(String, i64)> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Metric(m) => Some((m.name.clone(), m.step)),
            _ => None,
        })
        .collect()
}

/// A batch of a `loss` and a `top1` point at each of `steps`.
fn two_series(job_id: i64, sequence: u64, steps: std::ops::RangeInclusive<i64>) -> v1::ReportBatch {
    let metrics = steps
        .flat_map(|step| {
            ["loss", "top1"].map(|name| v1::Metric { name: name.into(), value: step as f64, step, epoch: 1, ..Default::default() })
        })
        .collect();
    v1::ReportBatch { job_id, attempt: 1, sequence, metrics, log_lines: vec![format!("batch {sequence}")], epoch: 1 }
}

#[sqlx::test(migrations = false)]
async fn metrics_are_read_since_a_step_as_the_newest_of_each_series_or_sampled_and_bad_bounds_are_refused_by_name(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("tester");
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    w.report(vec![two_series(job.id, 1, 1..=10)]).await.unwrap();
    let query = |r: v1::QueryMetricsRequest| {
        let mut jobs = jobs.clone();
        async move { jobs.query_metrics(v1::QueryMetricsRequest { job_id: job.id, ..r }).await }
    };

    let since = query(v1::QueryMetricsRequest { since_step: 9, ..Default::default() }).await.unwrap().into_inner();
    let got: Vec<(String, i64)> = since.metrics.iter().map(|m| (m.name.clone(), m.step)).collect();
    assert_eq!(got, [("loss".into(), 9), ("top1".into(), 9), ("loss".into(), 10), ("top1".into(), 10)]);

    let newest = query(v1::QueryMetricsRequest { last: 2, limit: 3, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(newest.metrics.len(), 3);
    assert_eq!(newest.next_after_id, newest.metrics[2].id, "a full page says where the next begins");
    let rest = query(v1::QueryMetricsRequest { last: 2, limit: 3, after_id: newest.next_after_id, ..Default::default() }).await.unwrap();
    let rest = rest.into_inner();
    assert_eq!(rest.next_after_id, 0);
    let all: Vec<i64> = newest.metrics.iter().chain(&rest.metrics).map(|m| m.step).collect();
    assert_eq!(all, [9, 9, 10, 10], "the newest 2 of both series, across two pages");
    let one = query(v1::QueryMetricsRequest { last: 1, name: "top1".into(), ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(one.metrics.iter().map(|m| (m.name.as_str(), m.step)).collect::<Vec<_>>(), [("top1", 10)]);

    // A chart's sample of one series: the first, the last and evenly spaced steps, in one reply.
    let sample = query(v1::QueryMetricsRequest { name: "loss".into(), sample: 4, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(sample.metrics.iter().map(|m| m.step).collect::<Vec<_>>(), [1, 4, 7, 10]);
    assert_eq!(sample.next_after_id, 0, "a sample is one whole reply");
    let whole = query(v1::QueryMetricsRequest { name: "top1".into(), sample: 100, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(whole.metrics.len(), 10, "a short series is sampled whole");
    // The newest log lines, oldest first.
    let mut logs = jobs.clone();
    let tail = logs.get_logs(v1::GetLogsRequest { job_id: job.id, last: 5, ..Default::default() }).await.unwrap().into_inner();
    assert_eq!(tail.lines.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), ["batch 1"]);
    let err = logs.get_logs(v1::GetLogsRequest { job_id: job.id, last: 5, after_id: 3, ..Default::default() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("last:"), "{err:?}");
    let err = logs.get_logs(v1::GetLogsRequest { job_id: job.id, last: 401, ..Default::default() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("last:"), "{err:?}");

    for (request, field) in [
        (v1::QueryMetricsRequest { since_step: -1, ..Default::default() }, "since_step"),
        (v1::QueryMetricsRequest { last: 20_001, ..Default::default() }, "last"),
        (v1::QueryMetricsRequest { sample: 5, ..Default::default() }, "name"),
        (v1::QueryMetricsRequest { name: "loss".into(), sample: 20_001, ..Default::default() }, "sample"),
        (v1::QueryMetricsRequest { name: "loss".into(), sample: 5, since_step: 3, ..Default::default() }, "sample"),
    ] {
        let err = query(request).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().starts_with(&format!("{field}:")), "{}", err.message());
    }
    let err = jobs.watch_job(v1::WatchJobRequest { id: job.id, metric_after_id: Some(-5), ..Default::default() }).await.unwrap_err();
    assert!(err.code() == Code::InvalidArgument && err.message().starts_with("metric_after_id:"), "{err:?}");
}

#[sqlx::test(migrations = false)]
async fn a_watch_starts_at_the_newest_point_of_each_series_and_resumes_after_the_rows_it_is_given(pool: PgPool) {
    let c = Coordinator::start(pool, Settings::default()).await;
    let mut jobs = c.jobs_as("tester");
    let job = submit(&mut jobs, spec()).await;
    let mut w = c.register("w", "cpu", &["cifar10"], None).await;
    w.claim(0).await.unwrap();
    w.report(vec![two_series(job.id, 1, 1..=1_500)]).await.unwrap();

    let mut fresh = jobs.watch_job(v1::WatchJobRequest { id: job.id, ..Default::default() }).await.unwrap().into_inner();
    let first = events(&mut fresh, 4).await;
    assert!(matches!(first[0], Event::Job(_)));
    let Event::Start(start) = &first[1] else { panic!("where the rows begin, second: {:?}", first[1]) };
    assert_eq!(steps(&first[2..]), [("loss".into(), 1_500), ("top1".into(), 1_500)], "each series' newest point, not 3,000");
    let last_metric = match &first[3] {
        Event::Metric(m) => m.id,
        other => panic!("{other:?}"),
    };
    assert_eq!(start.metric_after_id, last_metric, "rows begin after the newest stored");

    w.report(vec![two_series(job.id, 2, 1_501..=1_502)]).await.unwrap();
    let live = rows(&mut fresh, 5).await;
    assert_eq!(steps(&live), [("loss".into(), 1_501), ("top1".into(), 1_501), ("loss".into(), 1_502), ("top1".into(), 1_502)]);
    // Metrics and logs are read by separate queries, so a log may come before the metrics it was sent with.
    let logs: Vec<&str> = live.iter().filter_map(|e| if let Event::Log(l) = e { Some(l.line.as_str()) } else { None }).collect();
    assert_eq!(logs, ["batch 2"], "{live:?}");
    let seen = live.iter().filter_map(|e| if let Event::Metric(m) = e { Some(m) } else { None }).nth(1).expect("step 1,501's top1");

    // A client that saw up to step 1,501's top1 and batch 1's log resumes there: the rest, once, and no snapshot.
    let resume =
        v1::WatchJobRequest { id: job.id, metric_after_id: Some(seen.id), log_after_id: Some(start.log_after_id), ..Default::default() };
    let mut resumed = jobs.watch_job(resume).await.unwrap().into_inner();
    let again = events(&mut resumed, 5).await;
    let Event::Start(at) = &again[1] else { panic!("{:?}", again[1]) };
    assert_eq!((at.metric_after_id, at.log_after_id), (seen.id, start.log_after_id));
    assert_eq!(steps(&again[2..]), [("loss".into(), 1_502), ("top1".into(), 1_502)]);
    assert!(matches!(&again[4], Event::Log(l) if l.line == "batch 2"));

    // History replays every row, a page at a time.
    let mut history = jobs.watch_job(v1::WatchJobRequest { id: job.id, history: true, ..Default::default() }).await.unwrap().into_inner();
    let replay = events(&mut history, 2 + 3_004).await;
    let Event::Start(from) = &replay[1] else { panic!("{:?}", replay[1]) };
    assert_eq!((from.metric_after_id, from.log_after_id), (0, 0));
    let replayed = steps(&replay);
    assert_eq!(replayed.len(), 3_004);
    assert_eq!((replayed[0].1, replayed[3_003].1), (1, 1_502));
}
