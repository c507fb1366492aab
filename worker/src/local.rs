//! `camp-worker run --spec job.yaml`: one job trained in the foreground, with
//! progress on stdout and checkpoints as files.

use std::path::{Path, PathBuf};
use std::time::Instant;

use camp_proto::metric::{EpochMetrics, StepMetrics};
use camp_proto::spec::JobSpec;
use camp_proto::ValidSpec;
use tch::Device;

use crate::error::{EngineError, Result};
use crate::observer::{CheckpointBlob, CheckpointError, Control, Observer, RunInfo, StageOutcome};
use crate::{parallel, stage};

pub const LATEST_FILE: &str = "latest.safetensors";
pub const BEST_FILE: &str = "best.safetensors";
pub const SUMMARY_FILE: &str = "summary.json";

/// Reads a job spec from YAML: the stage's defaults under the keys given
/// (unknown keys refused), validated.
pub fn read_spec(path: &Path) -> Result<ValidSpec> {
    let fail = |reason: String| EngineError::SpecFile { path: path.to_path_buf(), reason };
    let text = camp_proto::limits::read_config_file(path).map_err(|e| fail(e.to_string()))?;
    JobSpec::from_yaml_text(&text).map_err(|e| fail(e.to_string()))
}

/// Trains the spec at `spec_path` on `device`, writing `latest.safetensors`,
/// `best.safetensors` and at the end `summary.json` into `out_dir`. With
/// `resume`, continues from `out_dir/latest.safetensors` where it exists; with
/// `init`, starts from the weights of that checkpoint file (for example the
/// `best.safetensors` of a qat run for an sp run). A spec of N ranks
/// (`gpus`) runs N processes, the others writing their final state to
/// `out_dir/rank-R.safetensors`, or with `one_process` trains every rank's
/// shard in this process in turn.
pub fn run_local(
    spec_path: &Path,
    data_dir: &Path,
    device: Device,
    out_dir: &Path,
    resume: bool,
    init: Option<&Path>,
    one_process: bool,
) -> Result<StageOutcome> {
    let spec = read_spec(spec_path)?;
    std::fs::create_dir_all(out_dir).map_err(|source| EngineError::Io { path: out_dir.to_path_buf(), source })?;
    let latest = out_dir.join(LATEST_FILE);
    let resume_bytes = if resume && latest.is_file() {
        println!("resuming from {}", latest.display());
        Some(std::fs::read(&latest).map_err(|source| EngineError::Io { path: latest.clone(), source })?)
    } else {
        None
    };
    println!(
        "training {} ({}) on {} ({:?}), {} epochs, batch {}, lr {}",
        spec.model_arch(),
        spec.stage.as_str(),
        spec.dataset,
        device,
        spec.epochs,
        spec.batch_size,
        spec.lr
    );
    // A resumed run keeps the best result it had, so best.safetensors stays the best.
    let best_top1 = match &resume_bytes {
        Some(bytes) => crate::checkpoint::read_meta(bytes)?.best_top1,
        None => f64::NAN,
    };
    let mut observer = PrintingObserver::new(out_dir, best_top1);
    let init_bytes = match init {
        Some(path) => Some(std::fs::read(path).map_err(|source| EngineError::Io { path: path.to_path_buf(), source })?),
        None => None,
    };
    let input = stage::StageInput { spec: &spec, data_dir, device, resume: resume_bytes.as_deref(), init: init_bytes.as_deref() };
    let outcome = match one_process {
        true => stage::run_stage_ranked(&input, &mut observer, crate::ranks::Ranks::Local)?,
        false => parallel::run_lead(&input, &mut observer, Some(out_dir))?,
    };
    if let StageOutcome::Completed(summary) = &outcome {
        let path = out_dir.join(SUMMARY_FILE);
        let json = serde_json::to_string_pretty(summary).map_err(|e| EngineError::Io { path: path.clone(), source: e.into() })?;
        std::fs::write(&path, json.as_bytes()).map_err(|source| EngineError::Io { path, source })?;
        println!("{json}");
    }
    Ok(outcome)
}

/// Prints progress and keeps checkpoints as files.
struct PrintingObserver {
    out_dir: PathBuf,
    best_top1: f64,
    started: Instant,
    /// (steps done before this attempt, total steps of the run).
    steps: (i64, i64),
}

impl PrintingObserver {
    fn new(out_dir: &Path, best_top1: f64) -> Self {
        PrintingObserver { out_dir: out_dir.to_path_buf(), best_top1, started: Instant::now(), steps: (0, 0) }
    }

    /// Remaining time at this attempt's average pace so far.
    fn eta(&self, step: i64) -> String {
        let (first, total) = self.steps;
        let done = step - first;
        if done <= 0 {
            return "?".into();
        }
        let seconds = self.started.elapsed().as_secs_f64() / done as f64 * (total - step) as f64;
        let s = seconds.round() as u64;
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    }

    fn write_atomically(&self, name: &str, bytes: &[u8]) -> std::result::Result<(), CheckpointError> {
        let path = self.out_dir.join(name);
        let partial = self.out_dir.join(format!("{name}.partial"));
        std::fs::write(&partial, bytes)
            .and_then(|_| std::fs::rename(&partial, &path))
            .map_err(|source| CheckpointError::Io { path, source })
    }
}

impl Observer for PrintingObserver {
    fn started(&mut self, info: &RunInfo) {
        let total = info.epochs as i64 * info.steps_per_epoch;
        let first = (info.start_epoch as i64 - 1) * info.steps_per_epoch + info.start_step_in_epoch;
        self.steps = (first, total);
        self.started = Instant::now();
        println!(
            "{} training / {} test images, {} steps per epoch, starting at epoch {} step {}",
            info.train_images, info.test_images, info.steps_per_epoch, info.start_epoch, info.start_step_in_epoch
        );
    }

    fn step(&mut self, m: &StepMetrics) {
        println!(
            "epoch {} step {}: loss {:.4} top-1 {:.2}% {:.0} images/s ETA {}",
            m.epoch,
            m.step,
            m.loss,
            100.0 * m.top1,
            m.images_per_s,
            self.eta(m.step)
        );
    }

    /// The epoch's summary is printed by the run's own log line.
    fn epoch(&mut self, _metrics: &EpochMetrics) {}

    fn log(&mut self, line: String) {
        println!("{line}");
    }

    fn checkpoint(&mut self, blob: CheckpointBlob) -> std::result::Result<(), CheckpointError> {
        self.write_atomically(LATEST_FILE, &blob.bytes)?;
        if !blob.top1.is_nan() && (self.best_top1.is_nan() || blob.top1 > self.best_top1) {
            self.best_top1 = blob.top1;
            self.write_atomically(BEST_FILE, &blob.bytes)?;
        }
        Ok(())
    }

    fn control(&mut self) -> Control {
        Control::Continue
    }
}
