//! Telemetry: report batches stored once, pages of metrics and logs, and what
//! a new attempt keeps of an earlier attempt's metrics.

use std::sync::Arc;

use camp_server::store::*;

use crate::fixtures::*;

pub async fn a_re_sent_report_batch_is_stored_once(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "chatty", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);

    assert!(s.report(ReportBatch { epoch: 3, ..batch(at, 1, vec![metric("loss", 1, 0.9)], &["one"]) }).await.unwrap());
    let resent = ReportBatch { epoch: 9, ..batch(at, 1, vec![metric("loss", 2, 0.8)], &["one again"]) };
    assert!(!s.report(resent).await.unwrap(), "sequence 1 again: a duplicate, whatever it carries");
    assert!(s.report(ReportBatch { epoch: 2, ..batch(at, 2, vec![metric("loss", 2, 0.7)], &["two"]) }).await.unwrap());
    assert!(!s.report(batch(at, 2, vec![], &[])).await.unwrap());

    let stored = s.metrics(job, None, None, 0, 100).await.unwrap();
    let points: Vec<(i64, f64, u32)> = stored.iter().map(|m| (m.point.step, m.point.value, m.attempt)).collect();
    assert_eq!(points, vec![(1, 0.9, 1), (2, 0.7, 1)]);
    assert_eq!(log_lines(s, job).await, vec!["one", "two"]);
    assert_eq!(s.get_job(job).await.unwrap().epoch, 3, "the highest epoch reported by a stored batch (not the duplicate's 9)");
}

pub async fn metrics_and_logs_are_read_in_pages_in_the_order_they_were_stored(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "paged", 0).await;
    let quiet = submit_as(s, "ada", "quiet", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    assert_eq!(s.last_row_ids(job).await.unwrap(), (0, 0));
    assert!(s.metrics(job, None, None, 0, 10).await.unwrap().is_empty() && s.logs(job, 0, 10).await.unwrap().is_empty());

    let first = vec![metric("loss", 1, 2.0), metric("top1", 1, 0.1), metric("loss", 2, 1.5)];
    assert!(s.report(batch(at, 1, first, &["l1", "l2"])).await.unwrap());
    let other = lease_of(&claim(s, w).await.unwrap(), w);
    assert_eq!(other.job_id, quiet);
    assert!(s.report(batch(other, 1, vec![metric("loss", 1, 9.0)], &["elsewhere"])).await.unwrap());
    assert!(s.report(batch(at, 2, vec![metric("loss", 3, 1.0), metric("top1", 3, 0.4)], &["l3"])).await.unwrap());

    let all = s.metrics(job, None, None, 0, 100).await.unwrap();
    let names: Vec<(&str, i64)> = all.iter().map(|m| (m.point.name.as_str(), m.point.step)).collect();
    assert_eq!(names, vec![("loss", 1), ("top1", 1), ("loss", 2), ("loss", 3), ("top1", 3)], "in stored order, this job's only");
    assert!(all.windows(2).all(|p| p[0].id < p[1].id) && all.iter().all(|m| m.attempt == 1 && m.point.epoch == 1));
    let ids = |page: &[StoredMetric]| page.iter().map(|m| m.id).collect::<Vec<_>>();
    let page1 = s.metrics(job, None, None, 0, 2).await.unwrap();
    let page2 = s.metrics(job, None, None, page1[1].id, 2).await.unwrap();
    let page3 = s.metrics(job, None, None, page2[1].id, 2).await.unwrap();
    assert_eq!((ids(&page1), ids(&page2), ids(&page3)), (ids(&all[..2]), ids(&all[2..4]), ids(&all[4..])));
    assert!(s.metrics(job, None, None, all[4].id, 2).await.unwrap().is_empty());

    let loss = s.metrics(job, Some("loss"), None, 0, 100).await.unwrap();
    assert_eq!(loss.iter().map(|m| m.point.step).collect::<Vec<_>>(), vec![1, 2, 3]);
    assert_eq!(s.metrics(job, Some("loss"), Some(1), all[0].id, 100).await.unwrap().len(), 2, "after the first row");
    assert!(s.metrics(job, Some("loss"), Some(2), 0, 100).await.unwrap().is_empty(), "no attempt 2");

    let logs = s.logs(job, 0, 100).await.unwrap();
    assert_eq!(logs.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), vec!["l1", "l2", "l3"]);
    assert!(logs.iter().all(|l| l.attempt == 1));
    let after_first = s.logs(job, logs[0].id, 1).await.unwrap();
    assert_eq!(after_first.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), vec!["l2"]);
    let tail = s.log_tail(job, 2).await.unwrap();
    assert_eq!(tail.iter().map(|l| l.line.as_str()).collect::<Vec<_>>(), vec!["l2", "l3"], "the newest lines, oldest first");
    assert_eq!(s.log_tail(job, 10).await.unwrap().len(), 3);
    assert!(s.log_tail(job + 1000, 10).await.unwrap().is_empty());
    assert_eq!(s.last_row_ids(job).await.unwrap(), (all[4].id, logs[2].id));
    let (quiet_metric, quiet_log) = s.last_row_ids(quiet).await.unwrap();
    assert!(quiet_metric > 0 && quiet_log > 0 && quiet_metric != all[4].id);
}

pub async fn a_new_attempt_resumes_from_the_latest_checkpoint_and_drops_earlier_metrics_past_it(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "resumable", 0).await;
    let at1 = lease_of(&claim_with(s, w, SHORT).await.unwrap(), w);
    assert!(s.report(batch(at1, 1, losses(1..=5), &["attempt 1"])).await.unwrap());
    let best = upload(s, at1, 2, Some(0.9), b"step two", Retention::default()).await;
    let latest = upload(s, at1, 4, Some(0.1), b"step four", Retention::default()).await;
    lose_lease(s).await;

    let c2 = claim(s, w).await.unwrap();
    assert_eq!(c2.job.attempt, 2);
    let resume = c2.resume_from.clone().expect("attempt 2 resumes");
    assert_eq!((resume.id, resume.step), (latest.id, 4), "from the latest checkpoint, not the best ({})", best.id);
    assert!(c2.init_from.is_none());
    let kept: Vec<(u32, String, i64)> = (1..=4).map(|step| (1, "loss".to_string(), step)).collect();
    assert_eq!(metric_rows(s, job).await, kept, "attempt 1's step 5 is past the checkpoint and will be redone");
    assert_eq!(log_lines(s, job).await, vec!["attempt 1"], "logs are kept");

    let at2 = lease_of(&c2, w);
    assert!(s.report(batch(at2, 1, losses(5..=5), &["attempt 2"])).await.unwrap(), "sequence numbers are per attempt");
    let mut all = kept;
    all.push((2, "loss".into(), 5));
    assert_eq!(metric_rows(s, job).await, all);
}

pub async fn without_a_checkpoint_a_new_attempt_drops_earlier_metrics_except_those_at_step_zero(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "from scratch", 0).await;
    let c1 = claim(s, w).await.unwrap();
    assert!(s.report(batch(lease_of(&c1, w), 1, losses(0..=2), &[])).await.unwrap());
    finish(s, lease_of(&c1, w), Outcome::Released, "").await;
    let c2 = claim(s, w).await.unwrap();
    assert!(c2.resume_from.is_none());
    // Current behaviour: "past the checkpoint" is step > 0 when there is none, so step 0 stays.
    assert_eq!(metric_rows(s, job).await, vec![(1, "loss".to_string(), 0)]);
}

/// Points of `name` at each of `steps`, in epoch `epoch`.
fn series(name: &str, steps: impl IntoIterator<Item = i64>, epoch: u32) -> Vec<MetricPoint> {
    steps.into_iter().map(|step| MetricPoint { name: name.into(), value: step as f64, step, epoch }).collect()
}

fn steps_of(page: &[StoredMetric]) -> Vec<(String, i64)> {
    page.iter().map(|m| (m.point.name.clone(), m.point.step)).collect()
}

pub async fn the_newest_points_of_each_series_and_the_points_since_a_step_are_read_in_pages(store: Arc<dyn Store>) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "long", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    assert!(s.metric_series(job).await.unwrap().is_empty());
    assert_eq!(s.series_tail_start(&MetricFilter { name: Some("loss".into()), ..MetricFilter::job(job) }, 3).await.unwrap(), None);
    // Interleaved as a run reports them: loss and lr every step, test_top1 every 10th step, one early-only series.
    let mut points = series("warmup", [1, 2], 1);
    for step in 1..=30 {
        points.extend(series("loss", [step], 1));
        points.extend(series("lr", [step], 1));
        if step % 10 == 0 {
            points.extend(series("test_top1", [step], step as u32 / 10));
        }
    }
    assert!(s.report(batch(at, 1, points, &[])).await.unwrap());

    assert_eq!(s.metric_series(job).await.unwrap(), ["loss", "lr", "test_top1", "warmup"], "every series, in byte order");
    let loss = MetricFilter { name: Some("loss".into()), ..MetricFilter::job(job) };
    let start = s.series_tail_start(&loss, 3).await.unwrap().expect("loss has points");
    let tail = s.metric_page(&loss, start - 1, 100).await.unwrap();
    assert_eq!(steps_of(&tail), [("loss".into(), 28), ("loss".into(), 29), ("loss".into(), 30)]);

    // The newest 2 of each series, in stored order, a page of 3 at a time.
    let all = MetricFilter::job(job);
    let mut newest = Vec::new();
    let mut after = 0;
    loop {
        let page = s.last_metrics_page(&all, 2, after, 3).await.unwrap();
        assert!(page.len() <= 3 && page.windows(2).all(|p| p[0].id < p[1].id));
        let Some(last) = page.last() else { break };
        after = last.id;
        newest.extend(page);
    }
    let mut expected: Vec<(String, i64)> =
        [("warmup", 1), ("warmup", 2), ("test_top1", 20), ("loss", 29), ("lr", 29), ("loss", 30), ("lr", 30), ("test_top1", 30)]
            .iter()
            .map(|(n, st)| (n.to_string(), *st))
            .collect();
    assert_eq!(steps_of(&newest), expected, "the newest 2 of each series (warmup's only 2), in stored order");
    let newest_lr = s.last_metrics_page(&MetricFilter { name: Some("lr".into()), ..all.clone() }, 1, 0, 100).await.unwrap();
    assert_eq!(steps_of(&newest_lr), [("lr".into(), 30)]);

    // Since a step: every series from that step on, paged like any read.
    let since = MetricFilter { since_step: Some(29), ..all.clone() };
    let first = s.metric_page(&since, 0, 4).await.unwrap();
    let rest = s.metric_page(&since, first[3].id, 100).await.unwrap();
    expected = [("loss", 29), ("lr", 29), ("loss", 30), ("lr", 30), ("test_top1", 30)].iter().map(|(n, st)| (n.to_string(), *st)).collect();
    assert_eq!(steps_of(&[first, rest].concat()), expected);
    let newest_since = s.last_metrics_page(&MetricFilter { since_step: Some(25), ..all.clone() }, 1, 0, 100).await.unwrap();
    assert_eq!(steps_of(&newest_since), [("loss".into(), 30), ("lr".into(), 30), ("test_top1".into(), 30)], "warmup has nothing since 25");
    let other_attempt = MetricFilter { attempt: Some(2), ..all };
    assert!(s.last_metrics_page(&other_attempt, 5, 0, 100).await.unwrap().is_empty());
}

pub async fn an_ended_jobs_step_series_are_thinned_to_n_points_and_its_epoch_metrics_kept_and_a_sample_reads_the_same_points(
    store: Arc<dyn Store>,
) {
    let s = store.as_ref();
    let w = cpu_worker(s, "w").await;
    let job = submit_as(s, "ada", "thinned", 0).await;
    let short = submit_as(s, "ada", "short", 0).await;
    let quiet = submit_as(s, "ada", "quiet", 0).await;
    let at = lease_of(&claim(s, w).await.unwrap(), w);
    let mut points = Vec::new();
    for step in 1..=101 {
        points.extend(series("loss", [step], 1 + (step as u32 - 1) / 50));
        points.extend(series("images_per_s", [step], 1 + (step as u32 - 1) / 50));
        if step % 50 == 0 || step == 101 {
            points.extend(series("test_top1", [step], step as u32 / 50));
            points.extend(series("lr", [step], step as u32 / 50));
        }
    }
    points.extend(series("someone_elses", 1..=40, 1));
    assert!(s.report(batch(at, 1, points, &[])).await.unwrap());
    let before = s.metrics(job, None, None, 0, 10_000).await.unwrap();
    let step_series = MetricRetention::step_series();
    assert_eq!(step_series, ["loss", "top1", "lr", "images_per_s"], "the contract's step-level names");

    assert!(s.jobs_to_downsample(&step_series, 10).await.unwrap().is_empty(), "nothing has ended");
    assert_err!(s.downsample_metrics(job, &step_series, 10).await, StoreError::FailedPrecondition(_), "a running job keeps every point");
    assert_eq!(s.metrics(job, None, None, 0, 10_000).await.unwrap().len(), before.len());
    // A chart's sample of a running job's series: the points retention would keep, nothing removed.
    let sampled: Vec<i64> = s.sample_metrics(job, "loss", None, 10).await.unwrap().iter().map(|m| m.point.step).collect();
    let would_keep: Vec<i64> = MetricRetention::kept_ranks(101, 10).iter().map(|&r| r as i64 + 1).collect();
    assert_eq!(sampled, would_keep, "a sample is what thinning would keep");
    let whole: Vec<i64> = s.sample_metrics(job, "lr", None, 10).await.unwrap().iter().map(|m| m.point.step).collect();
    assert_eq!(whole, [50, 100, 101], "a short series is sampled whole");
    assert!(s.sample_metrics(job, "loss", Some(2), 10).await.unwrap().is_empty(), "of another attempt: none");
    assert!(s.sample_metrics(job, "no_such_series", None, 10).await.unwrap().is_empty());
    assert_eq!(s.sample_metrics(job, "loss", None, 1).await.unwrap().len(), 2, "at least the first and the last");
    assert_eq!(s.metrics(job, None, None, 0, 10_000).await.unwrap().len(), before.len(), "sampling removes nothing");

    finish(s, at, Outcome::Succeeded, "").await;
    let at_short = lease_of(&claim(s, w).await.unwrap(), w);
    assert!(s.report(batch(at_short, 1, series("loss", 1..=5, 1), &[])).await.unwrap());
    finish(s, at_short, Outcome::Failed, "boom").await;
    let quietly = claim(s, w).await.unwrap();
    assert_eq!(quietly.job.id, quiet);
    let at_quiet = lease_of(&quietly, w);
    assert!(s.report(batch(at_quiet, 1, series("test_top1", [1], 1), &[])).await.unwrap());
    finish(s, at_quiet, Outcome::Succeeded, "").await;
    assert_eq!(s.jobs_to_downsample(&step_series, 10).await.unwrap(), [job, short], "ended, oldest first; quiet has no step series");
    assert_eq!(s.jobs_to_downsample(&step_series, 1).await.unwrap(), [job]);

    let removed = s.downsample_metrics(job, &step_series, 10).await.unwrap();
    let after = s.metrics(job, None, None, 0, 10_000).await.unwrap();
    assert_eq!(removed as usize, before.len() - after.len());
    let kept: Vec<i64> = MetricRetention::kept_ranks(101, 10).iter().map(|&r| r as i64 + 1).collect();
    assert_eq!(kept.len(), 10);
    assert_eq!((kept[0], kept[9]), (1, 101), "the first and the last step stay");
    let steps = |name: &str| after.iter().filter(|m| m.point.name == name).map(|m| m.point.step).collect::<Vec<_>>();
    assert_eq!(steps("loss"), kept, "evenly spaced steps, as the policy says");
    assert_eq!(steps("images_per_s"), kept);
    assert_eq!(steps("lr"), [50, 100, 101], "a series no longer than the bound stays whole");
    assert_eq!(steps("test_top1"), [50, 100, 101], "epoch-level metrics are never thinned");
    assert_eq!(steps("someone_elses"), (1..=40).collect::<Vec<_>>(), "names camp does not report are kept");
    let survivors: Vec<(i64, f64)> = after.iter().filter(|m| m.point.name == "loss").map(|m| (m.point.step, m.point.value)).collect();
    assert!(survivors.iter().all(|&(step, value)| value == step as f64), "survivors are the points as stored");

    assert_eq!(s.jobs_to_downsample(&step_series, 10).await.unwrap(), [short], "a job is looked at once");
    assert_eq!(camp_server::metric_retention::pass(s, &step_series, 2).await.unwrap(), 1);
    let short_loss: Vec<i64> = s.metrics(short, Some("loss"), None, 0, 100).await.unwrap().iter().map(|m| m.point.step).collect();
    assert_eq!(short_loss, [1, 5], "thinned to 2: the first and the last");
    assert!(s.jobs_to_downsample(&step_series, 10).await.unwrap().is_empty());
    assert_eq!(s.metrics(job, None, None, 0, 10_000).await.unwrap().len(), after.len(), "the first job is not thinned again");
    assert_err!(s.downsample_metrics(job + 1000, &step_series, 10).await, StoreError::NotFound(_));

    // Steps need not be consecutive: a sample is by step, the first point at or after each mark.
    let mut sparse = series("every_tenth", (0..=100).map(|i| i * 10), 1);
    sparse.extend(series("clustered", (1..=50).chain(1_000..=1_050), 1));
    let sparse_job = submit_as(s, "ada", "sparse", 0).await;
    let at_sparse = lease_of(&claim(s, w).await.unwrap(), w);
    assert_eq!(at_sparse.job_id, sparse_job);
    assert!(s.report(batch(at_sparse, 1, sparse, &[])).await.unwrap());
    let tenth: Vec<i64> = s.sample_metrics(sparse_job, "every_tenth", None, 11).await.unwrap().iter().map(|m| m.point.step).collect();
    assert_eq!(tenth, (0..=10).map(|i| i * 100).collect::<Vec<_>>());
    let clustered: Vec<i64> = s.sample_metrics(sparse_job, "clustered", None, 10).await.unwrap().iter().map(|m| m.point.step).collect();
    assert_eq!((clustered.first(), clustered.last()), (Some(&1), Some(&1_050)), "{clustered:?}");
    assert!(clustered.len() <= 10 && clustered.windows(2).all(|w| w[0] < w[1]), "at most 10, in step order, none twice: {clustered:?}");
}
