//! Throughput of training and evaluation steps on random data already on the
//! device, so that only the model, the optimiser and the device are measured:
//! full precision, quantisation-aware at k bits, or the dual-path network's
//! sp step; optionally a profile of the training step (host ops, GPU kernels).

use std::ffi::OsString;
use std::fmt;
use std::io::Read;
use std::time::Instant;

use camp_proto::spec::{JobSpec, Stage};
use serde::{Deserialize, Serialize};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::compute::ComputeOptions;
use crate::error::{EngineError, Result};
use crate::network::Network;
use crate::optim::Sgd;
use crate::precision::Precision;
use crate::profile::{profile, EventDevice, EventTotal};

#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub arch: String,
    pub batch: i64,
    #[serde(serialize_with = "serialize_device")]
    pub device: Device,
    pub bf16: bool,
    pub channels_last: bool,
    /// Untimed steps first (cuDNN autotuning, allocator warm-up).
    pub warmup_steps: usize,
    pub steps: usize,
    /// Quantisation-aware training at this many bits for weights and
    /// activations, with the stage's default full-precision layers (None = fp32).
    /// With `dual_path`: the bits of the basic path (default 1).
    pub bits: Option<u32>,
    /// The dual-path network's sp training step (1-bit and 4-bit paths, gates).
    pub dual_path: bool,
    /// Training steps to profile after the timed ones (0: none).
    pub profile_steps: usize,
    /// Replay the training step from a CUDA graph (captured after the first
    /// warm-up step), and check that replayed steps end where eager ones do.
    pub cuda_graph: bool,
}

impl BenchConfig {
    /// The job whose network and bit widths the benchmark builds.
    fn spec(&self) -> JobSpec {
        let stage = match (self.dual_path, self.bits) {
            (true, _) => Stage::Sp,
            (false, Some(_)) => Stage::Qat,
            (false, None) => Stage::Baseline,
        };
        JobSpec {
            stage,
            arch: self.arch.clone(),
            dataset: "cifar10".into(),
            bits_weights: self.bits,
            bits_activations: self.bits,
            ..JobSpec::default()
        }
    }

    /// What is measured, in words.
    fn network_label(&self) -> String {
        let spec = self.spec();
        match spec.stage {
            Stage::Baseline => "fp32".into(),
            Stage::Qat => format!("qat {}-bit", spec.weight_bits()),
            Stage::Sp | Stage::Rl => format!("dual path {}/4-bit sp", spec.weight_bits()),
        }
    }
}

fn serialize_device<S: serde::Serializer>(device: &Device, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{device:?}"))
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub config: BenchConfig,
    pub train_images_per_s: f64,
    pub train_ms_per_step: f64,
    pub eval_images_per_s: f64,
    pub train_profile: Option<StepProfile>,
    /// With `cuda_graph`: the largest difference between the weights after
    /// `GRAPH_CHECK_STEPS` replayed steps and after as many eager ones, relative
    /// to the weights' largest magnitude.
    pub graph_max_rel_diff: Option<f64>,
}

/// Steps of the replayed-against-eager check.
const GRAPH_CHECK_STEPS: usize = 5;
/// What the check accepts: the same maths, but cuDNN may pick other algorithms
/// for a captured step (benchmark mode), so not the same bits.
pub const GRAPH_CHECK_TOLERANCE: f64 = 1e-3;

/// Where a training step's time goes, from libtorch's profiler.
#[derive(Debug, Clone, Serialize)]
pub struct StepProfile {
    pub steps: usize,
    /// Ops and runtime calls the host recorded per step, nested ones included.
    pub host_events_per_step: f64,
    /// Time the GPU spent in kernels, copies and sets per step (0 on the CPU).
    pub gpu_busy_ms_per_step: f64,
    /// The GPU's costliest kernels.
    pub top_kernels: Vec<EventShare>,
    /// The host's most frequent ops.
    pub top_host_ops: Vec<EventShare>,
}

/// One event name's share of a step.
#[derive(Debug, Clone, Serialize)]
pub struct EventShare {
    pub name: String,
    pub count_per_step: f64,
    /// Inclusive of nested events for host ops.
    pub ms_per_step: f64,
}

/// Entries in each top list of a profile.
const PROFILE_TOP: usize = 8;

impl StepProfile {
    fn from_events(events: &[EventTotal], steps: usize) -> Self {
        let per_step = |x: f64| x / steps as f64;
        let share = |e: &EventTotal| EventShare {
            name: e.name.clone(),
            count_per_step: per_step(e.count as f64),
            ms_per_step: per_step(e.total_ns as f64 / 1e6),
        };
        let on = |device: EventDevice| events.iter().filter(move |e| e.device == device);
        let mut kernels: Vec<&EventTotal> = on(EventDevice::Cuda).collect();
        kernels.sort_by_key(|e| std::cmp::Reverse(e.total_ns));
        let mut host_ops: Vec<&EventTotal> = on(EventDevice::Cpu).collect();
        host_ops.sort_by_key(|e| std::cmp::Reverse(e.count));
        StepProfile {
            steps,
            // fold from +0: an empty f64 sum is -0.
            host_events_per_step: per_step(on(EventDevice::Cpu).fold(0.0, |sum, e| sum + e.count as f64)),
            gpu_busy_ms_per_step: per_step(on(EventDevice::Cuda).fold(0.0, |sum, e| sum + e.total_ns as f64 / 1e6)),
            top_kernels: kernels.into_iter().take(PROFILE_TOP).map(share).collect(),
            top_host_ops: host_ops.into_iter().take(PROFILE_TOP).map(share).collect(),
        }
    }
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(
            f,
            "{} {} batch {} on {:?} (bf16 {}, channels-last {}), {} timed steps",
            c.arch,
            c.network_label(),
            c.batch,
            c.device,
            c.bf16,
            c.channels_last,
            c.steps
        )?;
        writeln!(f, "{:<8} {:>12} {:>10}", "phase", "images/s", "ms/step")?;
        writeln!(f, "{:<8} {:>12.0} {:>10.2}", "train", self.train_images_per_s, self.train_ms_per_step)?;
        write!(f, "{:<8} {:>12.0} {:>10.2}", "eval", self.eval_images_per_s, 1000.0 * c.batch as f64 / self.eval_images_per_s)?;
        if let Some(diff) = self.graph_max_rel_diff {
            write!(
                f,
                "\ntraining steps replayed from a CUDA graph; after {GRAPH_CHECK_STEPS} steps the weights are within {diff:e} of eager ones (relative; at most {GRAPH_CHECK_TOLERANCE:e} accepted)"
            )?;
        }
        let Some(p) = &self.train_profile else { return Ok(()) };
        write!(
            f,
            "\nprofile of {} training steps: {:.0} host ops per step; GPU busy {:.2} ms of the {:.2} ms a timed step takes",
            p.steps, p.host_events_per_step, p.gpu_busy_ms_per_step, self.train_ms_per_step
        )?;
        let name = |n: &str| n.chars().take(90).collect::<String>();
        for (title, rows) in [("GPU kernels by time", &p.top_kernels), ("host ops by count", &p.top_host_ops)] {
            if rows.is_empty() {
                continue;
            }
            write!(f, "\n{title}:\n{:>10} {:>10}  name", "per step", "ms/step")?;
            for row in rows {
                write!(f, "\n{:>10.1} {:>10.3}  {}", row.count_per_step, row.ms_per_step, name(&row.name))?;
            }
        }
        Ok(())
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Times `config.steps` training steps (forward, backward, SGD) and as many
/// evaluation steps on a 3x32x32, 10-class input.
pub fn run_bench(config: &BenchConfig) -> Result<BenchReport> {
    if config.cuda_graph {
        crate::cuda_graph::check(config.device)?;
    }
    if config.device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let graph_max_rel_diff = match config.cuda_graph {
        true => Some(graph_check(config)?),
        false => None,
    };
    if let Some(diff) = graph_max_rel_diff.filter(|d| d.is_nan() || *d > GRAPH_CHECK_TOLERANCE) {
        return Err(EngineError::Device(format!(
            "cuda_graph: after {GRAPH_CHECK_STEPS} steps replayed weights differ from eager ones by {diff:e} (relative), over {GRAPH_CHECK_TOLERANCE:e}"
        )));
    }
    let vs = VarStore::new(config.device);
    let options = ComputeOptions { bf16: config.bf16, channels_last: config.channels_last };
    let spec = config.spec();
    let model = Network::build(&vs.root(), &spec, &Precision::for_spec(&spec)?, 3, 10, options)?;
    let mut sgd = Sgd::new(&vs, 0.9, 2e-4)?;
    let images = Tensor::f_randn([config.batch, 3, 32, 32], (Kind::Float, config.device))?;
    let labels = Tensor::f_randint(10, [config.batch], (Kind::Int64, config.device))?;

    let mut train_step = || -> Result<()> {
        let logits = model.forward(&images, true)?.logits;
        let loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)?;
        sgd.step(&loss, 0.01)
    };
    for _ in 0..config.warmup_steps.max(usize::from(config.cuda_graph)) {
        train_step()?;
    }
    // With --cuda-graph the step is captured once (after a step that made the momentum) and replayed.
    let mut graph = match config.cuda_graph {
        true => Some(crate::cuda_graph::CudaGraph::capture(config.device, &mut train_step)?.0),
        false => None,
    };
    synchronize(config.device);
    let started = Instant::now();
    for _ in 0..config.steps {
        match graph.as_mut() {
            Some(graph) => graph.replay()?,
            None => train_step()?,
        }
    }
    synchronize(config.device);
    let train_seconds = started.elapsed().as_secs_f64();

    let eval_step = || -> Result<Tensor> { tch::no_grad(|| Ok(model.forward(&images, false)?.logits)) };
    for _ in 0..config.warmup_steps {
        let _ = eval_step()?;
    }
    synchronize(config.device);
    let started = Instant::now();
    for _ in 0..config.steps {
        let _ = eval_step()?;
    }
    synchronize(config.device);
    let eval_seconds = started.elapsed().as_secs_f64();

    let train_profile = if config.profile_steps > 0 {
        let ((), events) = profile(config.device.is_cuda(), || {
            for _ in 0..config.profile_steps {
                train_step()?;
            }
            synchronize(config.device);
            Ok(())
        })?;
        Some(StepProfile::from_events(&events, config.profile_steps))
    } else {
        None
    };

    let images_timed = (config.batch * config.steps as i64) as f64;
    Ok(BenchReport {
        config: config.clone(),
        train_images_per_s: images_timed / train_seconds,
        train_ms_per_step: 1000.0 * train_seconds / config.steps as f64,
        eval_images_per_s: images_timed / eval_seconds,
        train_profile,
        graph_max_rel_diff,
    })
}

/// What one slot of `--slots N` measured (read back from its `--json` line).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SlotFigures {
    pub train_images_per_s: f64,
    pub eval_images_per_s: f64,
}

/// One job alone against N jobs at once on the same device (`--slots N`).
#[derive(Debug, Clone, Serialize)]
pub struct SlotsReport {
    pub single: BenchReport,
    /// Each of the N concurrent jobs, over its own timed window.
    pub slots: Vec<SlotFigures>,
    pub total_train_images_per_s: f64,
    /// `total_train_images_per_s` over the single job's.
    pub speedup: f64,
}

/// Runs `config` alone in this process, then as `slots` processes at once
/// (`camp-worker --device DEVICE bench ... --json`, crate::slots) and adds
/// up their training images/s. Each process times its own steps after its
/// own warm-up; with enough steps their windows overlap almost whole.
pub fn run_bench_slots(config: &BenchConfig, slots: u32, device_arg: &str, threads: Option<i32>) -> Result<SlotsReport> {
    let single = run_bench(config)?;
    let mut args: Vec<OsString> = vec!["--device".into(), device_arg.into()];
    if let Some(threads) = threads {
        args.extend(["--threads".into(), threads.to_string().into()]);
    }
    args.extend(["bench", "-a", &config.arch, "-b", &config.batch.to_string()].map(OsString::from));
    args.extend(["--steps".into(), config.steps.to_string().into(), "--warmup-steps".into(), config.warmup_steps.to_string().into()]);
    for (on, flag) in [
        (config.bf16, "--bf16"),
        (config.channels_last, "--channels-last"),
        (config.dual_path, "--dualpath"),
        (config.cuda_graph, "--cuda-graph"),
    ] {
        if on {
            args.push(flag.into());
        }
    }
    if let Some(bits) = config.bits {
        args.extend(["--bits".into(), bits.to_string().into()]);
    }
    args.push("--json".into());
    // Slots 1..=N: this process only waits for them.
    let children = crate::slots::Slots::spawn(slots + 1, &args, true)?.into_children();
    let mut figures = Vec::new();
    for (slot, mut child) in children {
        let mut out = String::new();
        if let Some(stdout) = child.stdout.as_mut() {
            let _ = stdout.read_to_string(&mut out);
        }
        let status = child.wait().map_err(|e| EngineError::Slots(format!("slot {slot}: {e}")))?;
        let line = out.lines().last().unwrap_or_default();
        let parsed: SlotFigures = serde_json::from_str(line).map_err(|e| {
            EngineError::Slots(format!("slot {slot} ({status}) printed no report ({e}): {}", line.chars().take(200).collect::<String>()))
        })?;
        figures.push(parsed);
    }
    let total: f64 = figures.iter().map(|f| f.train_images_per_s).sum();
    Ok(SlotsReport { speedup: total / single.train_images_per_s, single, slots: figures, total_train_images_per_s: total })
}

impl fmt::Display for SlotsReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.single)?;
        let each: Vec<String> = self.slots.iter().map(|s| format!("{:.0}", s.train_images_per_s)).collect();
        write!(
            f,
            "{} jobs at once: {:.0} training images/s in all ({} each) = {:.2}x one job alone ({:.0})",
            self.slots.len(),
            self.total_train_images_per_s,
            each.join(", "),
            self.speedup,
            self.single.train_images_per_s
        )
    }
}

/// Trains two copies of the network (same initial weights, same inputs) for
/// `GRAPH_CHECK_STEPS` steps, one eagerly and one replaying a captured step,
/// and returns how far apart their weights end (relative).
fn graph_check(config: &BenchConfig) -> Result<f64> {
    let spec = config.spec();
    let options = ComputeOptions { bf16: config.bf16, channels_last: config.channels_last };
    let images = Tensor::f_randn([config.batch, 3, 32, 32], (Kind::Float, config.device))?;
    let labels = Tensor::f_randint(10, [config.batch], (Kind::Int64, config.device))?;
    let build = || -> Result<(VarStore, Network, Sgd)> {
        tch::manual_seed(7);
        let vs = VarStore::new(config.device);
        let model = Network::build(&vs.root(), &spec, &Precision::for_spec(&spec)?, 3, 10, options)?;
        let sgd = Sgd::new(&vs, 0.9, 2e-4)?;
        Ok((vs, model, sgd))
    };
    let step = |model: &Network, sgd: &mut Sgd| -> Result<()> {
        let logits = model.forward(&images, true)?.logits;
        let loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)?;
        sgd.step(&loss, 0.01)
    };
    let (_eager_vs, eager_model, mut eager) = build()?;
    for _ in 0..GRAPH_CHECK_STEPS {
        step(&eager_model, &mut eager)?;
    }
    let (_graph_vs, graph_model, mut replayed) = build()?;
    // The first step eagerly (it makes the momentum buffer), the rest replayed.
    step(&graph_model, &mut replayed)?;
    let (mut graph, ()) = crate::cuda_graph::CudaGraph::capture(config.device, || step(&graph_model, &mut replayed))?;
    for _ in 1..GRAPH_CHECK_STEPS {
        graph.replay()?;
    }
    synchronize(config.device);
    let (a, b) = (eager.flat_params(), replayed.flat_params());
    let scale = 1.0 + a.f_abs()?.f_max()?.f_double_value(&[])?;
    Ok(a.f_sub(b)?.f_abs()?.f_max()?.f_double_value(&[])? / scale)
}
