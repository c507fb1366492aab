//! `camp watch`: follows a job live until it ends.
//!
//! For people: a progress line (epoch, step, loss, top-1, images/s, ETA) and one
//! line per finished epoch. The metric names it reads, as the worker reports them:
//! per step `loss`, `top1`, `lr`, `images_per_s`; per epoch `train_loss`,
//! `train_top1`, `test_loss`, `test_top1`, `test_top5`, `lr`, `epoch_images_per_s`.
//! Accuracies are fractions, shown as percentages. Other names are ignored here
//! (they are all in `--json` and `camp metrics`).

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::bail;
use camp_proto::metric::MetricName;
use camp_proto::v1::{self, job_event::Event, GetJobRequest, WatchJobRequest};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use serde_json::json;
use tokio::time::Instant;
use tonic::Code;

use crate::client;
use crate::exit;
use crate::global_opts::GlobalOpts;
use crate::output::{duration_precise, number, percent, whole};
use camp_proto::wire;

/// After the job has ended, how long to wait for the rest of the coordinator's events.
const DRAIN_AFTER_END: Duration = Duration::from_millis(500);
/// The first wait before reconnecting, doubled after each failed try up to `MAX_BACKOFF`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
#[command(after_help = "Exit code: 0 if the job succeeded, 1 if it failed, 7 if it was cancelled \
                        (and the usual error codes, e.g. 3 if there is no such job, 6 if the coordinator \
                        stayed unreachable).\n\
                        The watch starts from the latest point of each series (--history: from the first).\n\
                        If the coordinator restarts or the stream breaks once the watch has begun, it \
                        reconnects with backoff for up to --reconnect-for seconds (default 300, 5 minutes) \
                        and carries on after the last metric and log line it printed: none is printed twice \
                        and none is skipped, and the exit code still says how the job ended.\n\
                        With --json every event is printed as one JSON line (NDJSON).")]
pub struct WatchArgs {
    /// The job to follow.
    pub id: i64,
    /// Replay the metrics and log lines stored so far first.
    #[arg(long)]
    pub history: bool,
    /// Seconds to keep reconnecting after the coordinator went away or the stream broke (0: give up at once).
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    pub reconnect_for: u64,
}

/// Where a watch is in the job's rows: what a reconnected stream resumes after.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Resume {
    /// Set once a stream has said where its rows begin (`WatchStart`), and moved on by each row shown.
    metric_after_id: Option<i64>,
    log_after_id: Option<i64>,
    /// A stream has ended: from now on every row must come after the cursors
    /// (only the first stream sends a snapshot of points before them).
    resumed: bool,
}

impl Resume {
    fn request(&self, id: i64, history: bool) -> WatchJobRequest {
        WatchJobRequest { id, history, metric_after_id: self.metric_after_id, log_after_id: self.log_after_id }
    }

    /// Notes an event; false for a row already shown.
    fn advance(&mut self, event: &Event) -> bool {
        let (cursor, id) = match event {
            Event::Start(start) => {
                self.metric_after_id = Some(self.metric_after_id.unwrap_or(0).max(start.metric_after_id));
                self.log_after_id = Some(self.log_after_id.unwrap_or(0).max(start.log_after_id));
                return true;
            }
            Event::Metric(metric) => (&mut self.metric_after_id, metric.id),
            Event::Log(line) => (&mut self.log_after_id, line.id),
            Event::Job(_) => return true,
        };
        match *cursor {
            // The first stream's snapshot of each series' newest point comes before its rows begin.
            Some(after) if id <= after => !self.resumed,
            _ => {
                *cursor = Some(id);
                true
            }
        }
    }
}

/// How one stream ended.
enum StreamEnd {
    /// The job has ended and its last events are in.
    JobEnded,
    /// The stream broke (or the coordinator went away) before the job ended.
    Broken(anyhow::Error),
}

/// Follows the job; the exit code says how it ended (0 succeeded, 1 failed, 7 cancelled).
pub async fn run(opts: &GlobalOpts, args: &WatchArgs) -> anyhow::Result<u8> {
    let id = args.id;
    // The first connection must work: a wrong address is an error now, not after minutes of retries.
    let mut client = client::connect(opts).await?;
    let mut display: Box<dyn WatchDisplay> = if opts.json { Box::new(JsonLines { job_id: id }) } else { Box::new(Live::new(id)) };
    let mut watch = Watch { id, resume: Resume::default(), last_job: None, shown: 0, reconnecting: false };
    let reconnect_for = Duration::from_secs(args.reconnect_for);
    let mut outage: Option<(Instant, Duration)> = None;
    loop {
        let end = match client.watch_job(watch.resume.request(id, args.history)).await {
            Ok(events) => watch.follow(events.into_inner(), display.as_mut()).await?,
            Err(status) => StreamEnd::Broken(status.into()),
        };
        watch.resume.resumed = true;
        let err = match end {
            StreamEnd::JobEnded => break,
            StreamEnd::Broken(err) if retryable(&err) => err,
            StreamEnd::Broken(err) => return Err(err),
        };
        let progressed = watch.take_progress();
        let (since, backoff) = match outage {
            // A stream that showed something before it broke starts a new outage.
            Some((since, backoff)) if !progressed => (since, backoff),
            _ => {
                watch.reconnecting = true;
                display.note(&format!(
                    "camp: watch of job {id}: {}; reconnecting (for up to {})",
                    exit::one_line_message(&err),
                    duration_precise(reconnect_for)
                ));
                (Instant::now(), FIRST_BACKOFF)
            }
        };
        if since.elapsed() + backoff > reconnect_for {
            return Err(err.context(format!("the watch of job {id} gave up reconnecting after {}", duration_precise(since.elapsed()))));
        }
        tokio::time::sleep(backoff).await;
        outage = Some((since, (backoff * 2).min(MAX_BACKOFF)));
        if let Ok(again) = client::connect(opts).await {
            client = again;
        }
    }
    let job = match watch.last_job.filter(|job| wire::is_terminal(job.state)) {
        Some(job) => job,
        None => client.get_job(GetJobRequest { id }).await?.into_inner(),
    };
    if !wire::is_terminal(job.state) {
        bail!("the coordinator ended the watch of job {id} while it is {}", wire::state_name(job.state));
    }
    display.finish(&job);
    Ok(exit_code_for_end(job.state))
}

/// What the watch has seen across its streams.
struct Watch {
    id: i64,
    resume: Resume,
    last_job: Option<v1::Job>,
    /// Events shown since the last `take_progress`.
    shown: u64,
    /// A reconnect was announced and has not been seen to work yet.
    reconnecting: bool,
}

impl Watch {
    /// Whether any event was shown since the last call.
    fn take_progress(&mut self) -> bool {
        std::mem::take(&mut self.shown) > 0
    }

    /// Shows one stream's events until the job has ended or the stream breaks.
    async fn follow(&mut self, mut events: tonic::Streaming<v1::JobEvent>, display: &mut dyn WatchDisplay) -> anyhow::Result<StreamEnd> {
        loop {
            let ended = self.last_job.as_ref().is_some_and(|job| wire::is_terminal(job.state));
            let next = if ended {
                match tokio::time::timeout(DRAIN_AFTER_END, events.message()).await {
                    Ok(Ok(next)) => next,
                    // Quiet, or the stream broke: the job has ended either way.
                    Ok(Err(_)) | Err(_) => return Ok(StreamEnd::JobEnded),
                }
            } else {
                match events.message().await {
                    Ok(next) => next,
                    Err(status) => return Ok(StreamEnd::Broken(status.into())),
                }
            };
            let Some(message) = next else {
                return Ok(if ended {
                    StreamEnd::JobEnded
                } else {
                    StreamEnd::Broken(tonic::Status::unavailable("the coordinator ended the stream before the job ended").into())
                });
            };
            let Some(event) = message.event else { continue };
            if std::mem::take(&mut self.reconnecting) {
                display.note(&format!("camp: watch of job {}: reconnected", self.id));
            }
            if !self.resume.advance(&event) {
                continue;
            }
            match &event {
                Event::Start(_) => continue,
                // A reconnected stream starts with the job again: shown only if it changed.
                Event::Job(job) if self.last_job.as_ref() == Some(job) => continue,
                _ => {}
            }
            display.event(&event)?;
            self.shown += 1;
            if let Event::Job(job) = event {
                self.last_job = Some(job);
            }
        }
    }
}

/// Whether a watch that broke this way should reconnect: the coordinator went
/// away or restarted, or the connection broke; not when it refused the watch.
fn retryable(err: &anyhow::Error) -> bool {
    if client::is_transient(err) {
        return true;
    }
    err.chain().filter_map(|cause| cause.downcast_ref::<tonic::Status>()).any(|status| {
        matches!(
            status.code(),
            Code::Unavailable | Code::Unknown | Code::Internal | Code::Cancelled | Code::Aborted | Code::DeadlineExceeded
        )
    })
}

/// 0 succeeded, 1 failed, 7 cancelled.
fn exit_code_for_end(state: i32) -> u8 {
    match v1::JobState::try_from(state) {
        Ok(v1::JobState::Succeeded) => exit::SUCCESS,
        Ok(v1::JobState::Cancelled) => exit::CANCELLED,
        _ => exit::FAILURE,
    }
}

trait WatchDisplay {
    fn event(&mut self, event: &Event) -> anyhow::Result<()>;
    fn finish(&mut self, job: &v1::Job);
    /// A line about the watch itself (reconnecting), for people: on stderr.
    fn note(&mut self, line: &str) {
        eprintln!("{line}");
    }
}

/// `--json`: one JSON object per event, `{"event": "job"|"metric"|"log", <kind>: {...}}`.
struct JsonLines {
    job_id: i64,
}

fn event_json(job_id: i64, event: &Event) -> serde_json::Value {
    match event {
        Event::Job(job) => json!({ "event": "job", "job": wire::job(job) }),
        Event::Metric(metric) => {
            json!({ "event": "metric", "metric": wire::metric(job_id, metric) })
        }
        Event::Log(line) => json!({ "event": "log", "log": wire::log_line(job_id, line) }),
        Event::Start(start) => {
            json!({ "event": "start", "start": { "metric_after_id": start.metric_after_id, "log_after_id": start.log_after_id } })
        }
    }
}

impl WatchDisplay for JsonLines {
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        println!("{}", serde_json::to_string(&event_json(self.job_id, event))?);
        Ok(())
    }

    fn finish(&mut self, _job: &v1::Job) {}
}

/// The series `watch` shows; the others (energy, shares, best top-1) are left to `camp show`.
const TRACKED: [MetricName; 10] = [
    MetricName::Loss,
    MetricName::Top1,
    MetricName::TrainLoss,
    MetricName::TrainTop1,
    MetricName::TestLoss,
    MetricName::TestTop1,
    MetricName::TestTop5,
    MetricName::Lr,
    MetricName::ImagesPerS,
    MetricName::EpochImagesPerS,
];

/// One epoch's summary metrics as they arrive.
#[derive(Debug, Default, Clone, PartialEq)]
struct EpochSummary {
    train_loss: Option<f64>,
    train_top1: Option<f64>,
    test_loss: Option<f64>,
    test_top1: Option<f64>,
    test_top5: Option<f64>,
    lr: Option<f64>,
    images_per_s: Option<f64>,
}

impl EpochSummary {
    fn set(&mut self, metric: MetricName, value: f64) {
        let slot = match metric {
            MetricName::TrainLoss => &mut self.train_loss,
            MetricName::TrainTop1 => &mut self.train_top1,
            MetricName::TestLoss => &mut self.test_loss,
            MetricName::TestTop1 => &mut self.test_top1,
            MetricName::TestTop5 => &mut self.test_top5,
            MetricName::Lr => &mut self.lr,
            MetricName::EpochImagesPerS => &mut self.images_per_s,
            _ => return,
        };
        *slot = Some(value);
    }

    fn is_complete(&self) -> bool {
        [self.train_loss, self.train_top1, self.test_loss, self.test_top1, self.test_top5, self.lr, self.images_per_s]
            .iter()
            .all(Option::is_some)
    }

    /// Worth a line: it has some loss or accuracy, not only images/s.
    fn has_results(&self) -> bool {
        [self.train_loss, self.train_top1, self.test_loss, self.test_top1, self.test_top5].iter().any(Option::is_some)
    }

    /// `epoch 3/200  train loss 1.234 top-1 55.10  test loss ... top-5 ...  lr 0.1000  8900 img/s  best 60.20 (epoch 3)`
    fn line(&self, epoch: u32, epochs: u32, best: Option<Best>) -> String {
        let part =
            |label: &str, value: Option<f64>, show: fn(f64) -> String| value.map(|v| format!(" {label} {}", show(v))).unwrap_or_default();
        let mut line = format!("epoch {epoch}/{epochs}");
        if self.train_loss.is_some() || self.train_top1.is_some() {
            line += &format!("  train{}{}", part("loss", self.train_loss, number), part("top-1", self.train_top1, percent));
        }
        if self.test_loss.is_some() || self.test_top1.is_some() || self.test_top5.is_some() {
            line += &format!(
                "  test{}{}{}",
                part("loss", self.test_loss, number),
                part("top-1", self.test_top1, percent),
                part("top-5", self.test_top5, percent)
            );
        }
        if let Some(lr) = self.lr {
            line += &format!("  lr {}", number(lr));
        }
        if let Some(rate) = self.images_per_s {
            line += &format!("  {} img/s", whole(rate));
        }
        if let Some(best) = best {
            line += &format!("  best {} (epoch {})", percent(best.top1), best.epoch);
        }
        line
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Best {
    top1: f64,
    epoch: u32,
}

/// Training images per epoch of each data set.
fn train_images(dataset: &str) -> Option<u32> {
    match dataset {
        "cifar10" | "cifar100" => Some(50_000),
        "fashion-mnist" => Some(60_000),
        _ => None,
    }
}

/// Steps per epoch from the spec: the images it trains on over the batch size.
fn steps_per_epoch_from_spec(spec: &v1::JobSpec) -> Option<f64> {
    let images = match (spec.train_limit, train_images(&spec.dataset)) {
        (0, full) => full?,
        (limit, Some(full)) => limit.min(full),
        (limit, None) => limit,
    };
    (spec.batch_size > 0).then(|| (f64::from(images) / f64::from(spec.batch_size)).ceil())
}

/// Time left at `images_per_s` to reach `epochs * steps_per_epoch` steps of `batch_size` images.
fn eta(epochs: u32, steps_per_epoch: f64, batch_size: u32, step: i64, images_per_s: f64) -> Option<Duration> {
    if images_per_s <= 0.0 || !images_per_s.is_finite() || steps_per_epoch <= 0.0 {
        return None;
    }
    let steps_left = (f64::from(epochs) * steps_per_epoch - step as f64).max(0.0);
    Some(Duration::from_secs_f64(steps_left * f64::from(batch_size) / images_per_s))
}

/// For people: a progress line on stderr and epoch lines on stdout.
struct Live {
    job_id: i64,
    bar: ProgressBar,
    spec: v1::JobSpec,
    /// The (state, attempt) last announced, to print each change once.
    announced: Option<(i32, u32)>,
    epoch: u32,
    step: i64,
    loss: Option<f64>,
    top1: Option<f64>,
    images_per_s: Option<f64>,
    /// Global step at the end of an epoch over that epoch: the measured steps per epoch.
    steps_per_epoch_seen: Option<f64>,
    pending: BTreeMap<u32, EpochSummary>,
    best: Option<Best>,
}

impl Live {
    fn new(job_id: i64) -> Self {
        let bar = ProgressBar::new_spinner();
        bar.set_style(ProgressStyle::with_template("{spinner} {msg}").expect("valid template"));
        bar.enable_steady_tick(Duration::from_millis(120));
        Live {
            job_id,
            bar,
            spec: v1::JobSpec::default(),
            announced: None,
            epoch: 0,
            step: 0,
            loss: None,
            top1: None,
            images_per_s: None,
            steps_per_epoch_seen: None,
            pending: BTreeMap::new(),
            best: None,
        }
    }

    /// Prints a line above the progress bar.
    fn print(&self, line: &str) {
        self.bar.suspend(|| println!("{line}"));
    }

    fn on_job(&mut self, job: &v1::Job) {
        if let Some(spec) = &job.spec {
            self.spec = spec.clone();
        }
        if job.epoch > self.epoch {
            self.epoch = job.epoch;
        }
        let key = (job.state, job.attempt);
        if !wire::is_terminal(job.state) && self.announced != Some(key) {
            let line = match v1::JobState::try_from(job.state) {
                Ok(v1::JobState::Running) => {
                    format!("job {} running on {} (attempt {}/{})", self.job_id, job.worker, job.attempt, job.max_attempts)
                }
                Ok(v1::JobState::Queued) if job.attempt > 0 => {
                    let why = if job.message.is_empty() { String::new() } else { format!(": {}", job.message) };
                    format!("job {} re-queued after attempt {}/{}{why}", self.job_id, job.attempt, job.max_attempts)
                }
                _ => format!("job {} {}", self.job_id, wire::state_name(job.state)),
            };
            self.print(&line);
            self.announced = Some(key);
        }
        self.flush_epochs(|epoch| epoch <= job.epoch);
    }

    fn on_metric(&mut self, metric: &v1::Metric) {
        let Some(tracked) = MetricName::parse(&metric.name).filter(|name| TRACKED.contains(name)) else {
            return;
        };
        self.flush_epochs(|epoch| epoch < metric.epoch);
        self.epoch = metric.epoch;
        self.step = metric.step;
        match tracked {
            MetricName::Loss | MetricName::TrainLoss => self.loss = Some(metric.value),
            MetricName::Top1 | MetricName::TrainTop1 => self.top1 = Some(metric.value),
            MetricName::ImagesPerS | MetricName::EpochImagesPerS => self.images_per_s = Some(metric.value),
            _ => {}
        }
        if tracked == MetricName::TestTop1 && self.best.is_none_or(|best| metric.value > best.top1) {
            self.best = Some(Best { top1: metric.value, epoch: metric.epoch });
        }
        if tracked.is_epoch_summary() && metric.epoch > 0 && metric.step > 0 {
            self.steps_per_epoch_seen = Some(metric.step as f64 / f64::from(metric.epoch));
        }
        let summary = self.pending.entry(metric.epoch).or_default();
        summary.set(tracked, metric.value);
        if summary.is_complete() {
            let epoch = metric.epoch;
            self.flush_epochs(|pending| pending == epoch);
        }
    }

    /// Prints (and forgets) the pending epoch summaries that `due` selects.
    fn flush_epochs(&mut self, due: impl Fn(u32) -> bool) {
        let epochs: Vec<u32> = self.pending.keys().copied().filter(|&epoch| due(epoch)).collect();
        for epoch in epochs {
            let summary = self.pending.remove(&epoch).unwrap_or_default();
            if summary.has_results() {
                let best = self.best.filter(|best| best.epoch <= epoch);
                self.print(&summary.line(epoch, self.spec.epochs, best));
            }
        }
    }

    fn steps_per_epoch(&self) -> Option<f64> {
        self.steps_per_epoch_seen.or_else(|| steps_per_epoch_from_spec(&self.spec))
    }

    /// Switches the spinner to a bar once the total number of steps is known.
    fn refresh(&self) {
        if let Some(steps_per_epoch) = self.steps_per_epoch() {
            let total = (steps_per_epoch * f64::from(self.spec.epochs)) as u64;
            if self.bar.length() != Some(total) {
                let style = ProgressStyle::with_template("{spinner} [{bar:24}] {msg}").expect("valid template");
                self.bar.set_style(style.progress_chars("=> "));
                self.bar.set_length(total);
            }
            self.bar.set_position(u64::try_from(self.step).unwrap_or(0).min(total));
        }
        let mut message = format!("job {}  epoch {}/{}  step {}", self.job_id, self.epoch, self.spec.epochs, self.step);
        if let Some(steps_per_epoch) = self.steps_per_epoch() {
            message += &format!("/{}", whole(steps_per_epoch * f64::from(self.spec.epochs)));
        }
        if let Some(loss) = self.loss {
            message += &format!("  loss {}", number(loss));
        }
        if let Some(top1) = self.top1 {
            message += &format!("  top-1 {}", percent(top1));
        }
        if let Some(rate) = self.images_per_s {
            message += &format!("  {} img/s", whole(rate));
            let left = self.steps_per_epoch().and_then(|steps| eta(self.spec.epochs, steps, self.spec.batch_size, self.step, rate));
            if let Some(left) = left {
                message += &format!("  ETA {}", duration_precise(left));
            }
        }
        self.bar.set_message(message);
    }
}

impl WatchDisplay for Live {
    fn event(&mut self, event: &Event) -> anyhow::Result<()> {
        match event {
            Event::Job(job) => self.on_job(job),
            Event::Metric(metric) => self.on_metric(metric),
            // Log lines are for `camp logs` and `--json`; where rows begin is the watch's own business.
            Event::Log(_) | Event::Start(_) => {}
        }
        self.refresh();
        Ok(())
    }

    fn note(&mut self, line: &str) {
        self.bar.suspend(|| eprintln!("{line}"));
    }

    fn finish(&mut self, job: &v1::Job) {
        self.flush_epochs(|_| true);
        self.bar.finish_and_clear();
        let took = if job.started_at_ms > 0 && job.finished_at_ms >= job.started_at_ms {
            format!(" after {}", duration_precise(Duration::from_millis((job.finished_at_ms - job.started_at_ms) as u64)))
        } else {
            String::new()
        };
        let mut line = format!("job {} {}{took}", self.job_id, wire::state_name(job.state));
        let best = job.result.as_ref().map(|result| result.best_top1).or(self.best.map(|best| best.top1));
        if let Some(best) = best {
            line += &format!(", best top-1 {}", percent(best));
        }
        if !job.message.is_empty() {
            line += &format!(": {}", job.message);
        }
        println!("{line}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn end_states_map_to_watch_exit_codes() {
        assert_eq!(exit_code_for_end(v1::JobState::Succeeded as i32), 0);
        assert_eq!(exit_code_for_end(v1::JobState::Failed as i32), 1);
        assert_eq!(exit_code_for_end(v1::JobState::Cancelled as i32), 7);
    }

    fn metric_event(id: i64) -> Event {
        Event::Metric(v1::Metric { id, name: "loss".into(), ..Default::default() })
    }

    fn log_event(id: i64) -> Event {
        Event::Log(v1::LogLine { id, ..Default::default() })
    }

    #[test]
    fn a_resumed_watch_asks_for_the_rows_after_the_last_it_showed_and_skips_repeats() {
        let mut resume = Resume::default();
        assert_eq!(
            resume.request(4, false),
            WatchJobRequest { id: 4, ..Default::default() },
            "the first stream starts at the latest point"
        );
        assert!(resume.advance(&Event::Start(v1::WatchStart { metric_after_id: 100, log_after_id: 7 })));
        assert!(resume.advance(&metric_event(90)), "the first stream's snapshot of a series' newest point");
        assert!(resume.advance(&metric_event(101)) && resume.advance(&metric_event(102)) && resume.advance(&log_event(8)));
        resume.resumed = true;
        let again = resume.request(4, false);
        assert_eq!((again.metric_after_id, again.log_after_id), (Some(102), Some(8)));
        assert!(resume.advance(&Event::Start(v1::WatchStart { metric_after_id: 102, log_after_id: 8 })));
        assert!(!resume.advance(&metric_event(102)) && !resume.advance(&metric_event(90)), "nothing is shown twice");
        assert!(!resume.advance(&log_event(8)));
        assert!(resume.advance(&metric_event(103)));
        assert_eq!(resume.metric_after_id, Some(103));
        let history = Resume::default().request(4, true);
        assert!(history.history && history.metric_after_id.is_none());
    }

    #[test]
    fn a_broken_stream_or_a_gone_coordinator_is_retried_and_a_refusal_is_not() {
        for code in [Code::Unavailable, Code::Unknown, Code::Internal, Code::Cancelled] {
            assert!(retryable(&anyhow::Error::new(tonic::Status::new(code, "gone"))), "{code:?}");
        }
        for code in [Code::NotFound, Code::PermissionDenied, Code::Unauthenticated, Code::InvalidArgument] {
            assert!(!retryable(&anyhow::Error::new(tonic::Status::new(code, "no"))), "{code:?}");
        }
    }

    #[test]
    fn steps_per_epoch_from_data_set_and_limit() {
        let spec = camp_proto::JobSpec::default().to_proto();
        assert_eq!(steps_per_epoch_from_spec(&spec), Some(391.0));
        let limited = v1::JobSpec { train_limit: 1000, batch_size: 100, ..spec.clone() };
        assert_eq!(steps_per_epoch_from_spec(&limited), Some(10.0));
        let unknown = v1::JobSpec { dataset: "other".into(), ..spec };
        assert_eq!(steps_per_epoch_from_spec(&unknown), None);
    }

    #[test]
    fn eta_from_images_per_second() {
        // 2 epochs of 10 steps of 100 images, 5 steps done: 1500 images at 500/s.
        assert_eq!(eta(2, 10.0, 100, 5, 500.0), Some(Duration::from_secs(3)));
        assert_eq!(eta(2, 10.0, 100, 50, 500.0), Some(Duration::ZERO));
        assert_eq!(eta(2, 10.0, 100, 5, 0.0), None);
    }

    fn metric(name: &str, value: f64, epoch: u32, step: i64) -> v1::Metric {
        v1::Metric { name: name.into(), value, step, epoch, attempt: 1, at_ms: 0, id: 0 }
    }

    #[test]
    fn live_view_measures_steps_and_tracks_best() {
        let mut live = Live::new(1);
        live.bar = ProgressBar::hidden();
        live.on_job(&v1::Job { spec: Some(camp_proto::JobSpec::default().to_proto()), ..Default::default() });
        live.on_metric(&metric("loss", 2.0, 1, 10));
        live.on_metric(&metric("lr", 0.1, 1, 10));
        assert_eq!(live.steps_per_epoch_seen, None, "step metrics say nothing of epoch length");
        live.on_metric(&metric("test_top1", 0.40, 1, 400));
        live.on_metric(&metric("test_top1", 0.35, 2, 800));
        assert_eq!(live.steps_per_epoch_seen, Some(400.0));
        assert_eq!(live.best, Some(Best { top1: 0.40, epoch: 1 }));
        assert_eq!(live.loss, Some(2.0));
        assert!(!live.pending.contains_key(&1), "epoch 1 printed once epoch 2 began");
        live.on_metric(&metric("something_else", 1.0, 9, 9));
        assert_eq!(live.epoch, 2, "unknown names are ignored");
    }

    #[test]
    fn epoch_line_reads_well() {
        let mut summary = EpochSummary::default();
        for (name, value) in
            [("train_loss", 1.2345), ("train_top1", 0.551), ("test_loss", 1.1), ("test_top1", 0.602), ("test_top5", 0.95), ("lr", 0.1)]
        {
            summary.set(MetricName::parse(name).unwrap(), value);
        }
        assert!(!summary.is_complete());
        summary.set(MetricName::ImagesPerS, 1.0);
        assert!(!summary.is_complete(), "step throughput is not the epoch's");
        summary.set(MetricName::EpochImagesPerS, 8900.4);
        assert!(summary.is_complete());
        assert_eq!(
            summary.line(3, 200, Some(Best { top1: 0.602, epoch: 3 })),
            "epoch 3/200  train loss 1.23 top-1 55.10%  test loss 1.10 top-1 60.20% top-5 95.00%  lr 0.1000  8900 img/s  best 60.20% (epoch 3)"
        );
        let only_rate = EpochSummary { images_per_s: Some(1.0), ..Default::default() };
        assert!(!only_rate.has_results());
    }

    #[test]
    fn epoch_lines_keep_extreme_values_short() {
        let summary = EpochSummary { train_loss: Some(1e308), lr: Some(1e-300), images_per_s: Some(2.5e20), ..Default::default() };
        assert_eq!(summary.line(1, 2, None), "epoch 1/2  train loss 1e308  lr 1e-300  2.5e20 img/s");
        let line = event_json(3, &Event::Metric(metric("loss", f64::NAN, 1, 10)));
        assert_eq!(line["metric"]["value"], "NaN", "--json lines keep NaN");
    }

    #[test]
    fn json_lines_name_the_event() {
        let line = event_json(3, &Event::Metric(metric("loss", 1.5, 1, 10)));
        assert_eq!(line["event"], "metric");
        assert_eq!(line["metric"]["name"], "loss");
        assert_eq!(line["metric"]["job_id"], 3);
        let line = event_json(3, &Event::Job(v1::Job { id: 3, state: v1::JobState::Queued as i32, ..Default::default() }));
        assert_eq!((line["event"].as_str(), line["job"]["state"].as_str()), (Some("job"), Some("queued")));
    }
}
