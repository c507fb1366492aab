//! The training stages (docs/method.md, "Stage baseline and stage qat" to "Stage rl"), one loop: SGD with the job's
//! multi-step learning-rate schedule. `baseline` (full precision) and `qat`
//! (bits per layer from the job's bits plan) train the plain network with
//! cross-entropy; `sp` trains the dual-path network with cross-entropy
//! through the gates' straight-through masks; `rl` adds the REINFORCE loss
//! of the gates' sampled actions. Every evaluation reports the energy per
//! image (docs/method.md, "Energy") and, for dual-path networks, the share of test
//! images each block routes to its 4-bit path.
//!
//! Accuracies are fractions in [0, 1]. A run is a pure function of its spec
//! (on a given device and thread count): the model is initialised from
//! `spec.seed`, and each epoch's order and augmentation from (seed, epoch);
//! resuming from a checkpoint, even one taken mid-epoch, continues the very
//! same computation.

use std::path::Path;
use std::time::Instant;

use camp_proto::energy::{self, EnergyReport};
use camp_proto::metric::{EpochMetrics, StepMetrics};
use camp_proto::spec::{JobSpec, Stage};
use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::checkpoint::{self, CheckpointMeta, EpochTotals};
use crate::data::{Dataset, EpochPlan};
use crate::error::{EngineError, Result};
use crate::model::ComputeOptions;
use crate::network::Network;
use crate::optim::Sgd;
use crate::precision::Precision;
use crate::quant::PACT_CLIP_SUFFIX;
use crate::reinforce::{rl_loss, Reinforce};
use crate::rng::SplitMix64;

/// What the caller wants after each training step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    Continue,
    /// Stop without writing anything more.
    Cancel,
    /// Checkpoint where the run stands, then stop (it will be resumed).
    Interrupt,
    /// The lease is lost: stop at once, write nothing.
    Abandon,
}

/// A checkpoint to store. `epoch` counts completed epochs (a mid-epoch
/// checkpoint carries the last completed one).
pub struct CheckpointBlob {
    pub bytes: Vec<u8>,
    pub epoch: u32,
    pub step: i64,
    /// Test top-1 of the epoch just finished; NaN for a mid-epoch checkpoint.
    pub top1: f64,
    /// The checkpoint's `__metadata__` as a JSON object of strings.
    pub metadata_json: String,
}

/// The shape of a run, announced once before its first step.
#[derive(Debug, Clone, Serialize)]
pub struct RunInfo {
    pub train_images: i64,
    pub test_images: i64,
    pub steps_per_epoch: i64,
    pub epochs: u32,
    /// Where this attempt starts: 1-based epoch and steps already done in it.
    pub start_epoch: u32,
    pub start_step_in_epoch: i64,
}

pub trait Observer {
    /// Called once before training starts (or resumes).
    fn started(&mut self, _info: &RunInfo) {}
    /// A step's progress, every `print_freq` steps.
    fn step(&mut self, metrics: &StepMetrics);
    /// An epoch's summary, after its evaluation and before its checkpoint.
    fn epoch(&mut self, metrics: &EpochMetrics);
    fn log(&mut self, line: String);
    /// Blocks until the checkpoint is safely stored; Err aborts the run.
    fn checkpoint(&mut self, blob: CheckpointBlob) -> Result<(), String>;
    /// Polled once per training step.
    fn control(&mut self) -> Control;
}

pub enum StageOutcome {
    Completed(Summary),
    Cancelled,
    Interrupted,
    Abandoned,
}

/// A finished run's result (the job's result JSON).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Summary {
    pub best_top1: f64,
    pub best_epoch: u32,
    pub final_top1: f64,
    pub final_top5: f64,
    pub final_test_loss: f64,
    /// Train loss / top-1 of the last epoch (NaN where this attempt trained none).
    pub final_train_loss: f64,
    pub final_train_top1: f64,
    pub epochs: u32,
    pub steps: i64,
    /// Training throughput of this attempt (NaN where it trained no step).
    pub images_per_s: f64,
    /// Energy per test image of the blocks (stem and head excluded), in pJ, at
    /// each layer's weight bits; for a dual-path network with the final
    /// evaluation's routing.
    pub energy_pj: f64,
    /// `energy_pj` over the same architecture's blocks all at 4 bits.
    pub normalized_energy: f64,
    /// Energy per image of the full-precision stem and head, in pJ.
    pub stem_head_pj: f64,
    /// Name of the energy table used.
    pub energy_table: String,
    /// The stage's weight / activation bits of the quantised layers (32 = full
    /// precision; the basic path's for a dual-path network).
    pub bits_weights: u32,
    pub bits_activations: u32,
    /// Dual path: share of (test image, block) decisions that took the 4-bit path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fullbit_share: Option<f64>,
    /// Dual path: per block in forward order, the share of test images routed to 4 bits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub block_fullbit_shares: Vec<f64>,
}

/// Test-set results of one evaluation.
#[derive(Debug, Clone)]
struct Evaluation {
    loss: f64,
    top1: f64,
    top5: f64,
    /// Blocks' energy per image (pJ) and normalised.
    energy_pj: f64,
    normalized_energy: f64,
    /// Dual path: per block, the share of test images routed to 4 bits (empty otherwise).
    block_shares: Vec<f64>,
}

impl Evaluation {
    /// Dual path: share of all (image, block) decisions that took 4 bits.
    fn fullbit_share(&self) -> Option<f64> {
        (!self.block_shares.is_empty()).then(|| self.block_shares.iter().sum::<f64>() / self.block_shares.len() as f64)
    }
}

/// Trains `spec` on `device`, from scratch, from the checkpoint bytes
/// `resume` (an interrupted attempt of the same job), or starting from the
/// weights of `init` (a finished job's checkpoint: every parameter the two
/// networks share by name, with a fresh optimiser), reporting to `observer`.
/// `init` is not read when resuming: the checkpoint has it all.
pub fn run_stage(
    spec: &JobSpec,
    data_dir: &Path,
    device: Device,
    resume: Option<&[u8]>,
    init: Option<&[u8]>,
    observer: &mut dyn Observer,
) -> Result<StageOutcome> {
    spec.validate()?;
    let resume = resume.map(checkpoint::load).transpose()?;
    if let Some(state) = &resume {
        check_same_run(spec, &state.meta.spec)?;
    }
    let precision = match &resume {
        Some(state) => state.meta.precision.clone(),
        None => Precision::for_spec(spec)?,
    };
    let energy = energy::report(spec)?;
    let data = Dataset::load(&spec.dataset, data_dir, device, spec.train_limit as usize, spec.test_limit as usize)?;
    if data.train_len() == 0 || data.test_len() == 0 {
        return Err(EngineError::Data {
            dataset: spec.dataset.clone(),
            path: data_dir.join(&spec.dataset),
            reason: "the training or test split is empty".into(),
        });
    }
    if device.is_cuda() {
        // Fastest convolution algorithms for the fixed shapes; exactness is only promised on the CPU.
        tch::Cuda::cudnn_set_benchmark(true);
    }
    tch::manual_seed(spec.seed as i64);
    let vs = VarStore::new(device);
    let options = ComputeOptions { bf16: spec.bf16, channels_last: spec.channels_last };
    let network = Network::build(&vs.root(), spec, &precision, data.info.channels, data.info.classes, options)?;
    if resume.is_none() {
        if let Some(bytes) = init {
            initialise(&vs, bytes, observer)?;
        }
    }
    let mut sgd = Sgd::new(&vs, spec.momentum, spec.weight_decay)?
        .with_decay_for(PACT_CLIP_SUFFIX, spec.pact_weight_decay.unwrap_or(spec.weight_decay))?;

    let mut run = Run {
        spec,
        steps_per_epoch: (data.train_len() + spec.batch_size as i64 - 1) / spec.batch_size as i64,
        data,
        vs,
        network,
        precision,
        energy,
        completed_epochs: 0,
        global_step: 0,
        step_in_epoch: 0,
        partial_epoch: EpochTotals::default(),
        best_top1: f64::NAN,
        best_epoch: 0,
        last_eval: None,
        last_train: None,
        train_images: 0,
        train_seconds: 0.0,
    };
    if let Some(state) = resume {
        checkpoint::load_weights(&run.vs, &state.model)?;
        sgd.set_momentum_buffers(&state.momentum)?;
        let meta = state.meta;
        run.completed_epochs = meta.epoch;
        run.global_step = meta.step;
        run.step_in_epoch = meta.step_in_epoch;
        run.partial_epoch = meta.partial_epoch;
        run.best_top1 = meta.best_top1;
        run.best_epoch = meta.best_epoch;
    }
    run.train(&mut sgd, observer)
}

/// Loads the parameters of a finished job's checkpoint into `vs`: every
/// variable found by its own name, or, for a dual-path network, its basic
/// path's under the plain block's name (`layer1.0.basic_block.conv1.weight`
/// from `layer1.0.conv1.weight`).
fn initialise(vs: &VarStore, bytes: &[u8], observer: &mut dyn Observer) -> Result<()> {
    let source = checkpoint::load(bytes)?;
    let loaded = checkpoint::load_matching(vs, &source.model, |name| {
        name.split_once(".basic_block.").map(|(block, rest)| format!("{block}.{rest}"))
    })?;
    if loaded.is_empty() {
        return Err(EngineError::Checkpoint(format!(
            "the init checkpoint ({} {} on {}) has no tensor this network takes",
            source.meta.spec.stage.as_str(),
            source.meta.spec.model_arch(),
            source.meta.spec.dataset
        )));
    }
    observer.log(format!(
        "initialised {} of {} tensors from a {} checkpoint ({} on {}, epoch {})",
        loaded.len(),
        vs.variables().len(),
        source.meta.spec.stage.as_str(),
        source.meta.spec.model_arch(),
        source.meta.spec.dataset,
        source.meta.epoch
    ));
    Ok(())
}

/// A resumed run must compute what the checkpointed one computed; only the
/// number of epochs, the reporting interval and the device may change.
fn check_same_run(spec: &JobSpec, saved: &JobSpec) -> Result<()> {
    let mut comparable = saved.clone();
    comparable.epochs = spec.epochs;
    comparable.print_freq = spec.print_freq;
    comparable.device = spec.device;
    if &comparable != spec {
        return Err(EngineError::Checkpoint(format!(
            "the checkpoint was made by a different spec: {}",
            serde_json::to_string(saved).unwrap_or_default()
        )));
    }
    Ok(())
}

struct Run<'a> {
    spec: &'a JobSpec,
    data: Dataset,
    vs: VarStore,
    network: Network,
    precision: Precision,
    energy: EnergyReport,
    steps_per_epoch: i64,
    completed_epochs: u32,
    global_step: i64,
    /// Steps done in epoch `completed_epochs + 1`.
    step_in_epoch: i64,
    partial_epoch: EpochTotals,
    best_top1: f64,
    best_epoch: u32,
    last_eval: Option<Evaluation>,
    /// (loss, top-1) of the last epoch trained by this attempt.
    last_train: Option<(f64, f64)>,
    train_images: i64,
    train_seconds: f64,
}

/// Running sums of an epoch, kept on the device so that a step needs no sync.
struct DeviceTotals {
    loss_sum: Tensor,
    correct: Tensor,
    seen: i64,
}

impl DeviceTotals {
    fn new(from: EpochTotals, device: Device) -> Result<Self> {
        Ok(DeviceTotals {
            loss_sum: Tensor::f_from_slice(&[from.loss_sum])?.f_to_device(device)?,
            correct: Tensor::f_from_slice(&[from.correct])?.f_to_device(device)?,
            seen: from.seen,
        })
    }

    /// Reads the sums back (synchronises with the device).
    fn read(&self) -> Result<EpochTotals> {
        Ok(EpochTotals { loss_sum: self.loss_sum.f_double_value(&[0])?, correct: self.correct.f_int64_value(&[0])?, seen: self.seen })
    }
}

impl EpochTotals {
    fn mean_loss(&self) -> f64 {
        self.loss_sum / self.seen as f64
    }
    fn top1(&self) -> f64 {
        self.correct as f64 / self.seen as f64
    }
}

enum EpochEnd {
    Finished,
    /// The epoch was cut short by a control; the outcome to return.
    Stopped(StageOutcome),
}

impl Run<'_> {
    fn train(&mut self, sgd: &mut Sgd, observer: &mut dyn Observer) -> Result<StageOutcome> {
        observer.started(&RunInfo {
            train_images: self.data.train_len(),
            test_images: self.data.test_len(),
            steps_per_epoch: self.steps_per_epoch,
            epochs: self.spec.epochs,
            start_epoch: self.completed_epochs + 1,
            start_step_in_epoch: self.step_in_epoch,
        });
        while self.completed_epochs < self.spec.epochs {
            let epoch = self.completed_epochs + 1;
            let started = Instant::now();
            let images_before = self.train_images;
            let (end, control) = self.train_epoch(epoch, sgd, observer)?;
            if let EpochEnd::Stopped(outcome) = end {
                return Ok(outcome);
            }
            let epoch_images = (self.train_images - images_before) as f64;
            let epoch_images_per_s = epoch_images / started.elapsed().as_secs_f64();
            self.finish_epoch(epoch, epoch_images_per_s, sgd, observer)?;
            // An interrupt on an epoch's last step: the epoch checkpoint just written serves.
            if control == Control::Interrupt {
                return Ok(StageOutcome::Interrupted);
            }
        }
        let eval = match self.last_eval.take() {
            Some(eval) => eval,
            None => self.evaluate()?,
        };
        let (final_train_loss, final_train_top1) = self.last_train.unwrap_or((f64::NAN, f64::NAN));
        let summary = Summary {
            best_top1: self.best_top1,
            best_epoch: self.best_epoch,
            final_top1: eval.top1,
            final_top5: eval.top5,
            final_test_loss: eval.loss,
            final_train_loss,
            final_train_top1,
            epochs: self.completed_epochs,
            steps: self.global_step,
            images_per_s: if self.train_images > 0 { self.train_images as f64 / self.train_seconds } else { f64::NAN },
            energy_pj: eval.energy_pj,
            normalized_energy: eval.normalized_energy,
            stem_head_pj: self.energy.stem_head_pj,
            energy_table: self.energy.table.clone(),
            bits_weights: self.spec.weight_bits(),
            bits_activations: self.spec.activation_bits(),
            fullbit_share: eval.fullbit_share(),
            block_fullbit_shares: eval.block_shares.clone(),
        };
        observer.log(format!(
            "done: {} epochs, best top-1 {:.2}% at epoch {}, final top-1 {:.2}% top-5 {:.2}%, energy {:.4} of 4-bit ({:.0} pJ per image + {:.0} pJ stem and head, table {})",
            summary.epochs,
            100.0 * summary.best_top1,
            summary.best_epoch,
            100.0 * summary.final_top1,
            100.0 * summary.final_top5,
            summary.normalized_energy,
            summary.energy_pj,
            summary.stem_head_pj,
            summary.energy_table
        ));
        Ok(StageOutcome::Completed(summary))
    }

    /// Trains the remaining steps of `epoch`. Returns how the epoch ended and
    /// the control seen after its last step.
    fn train_epoch(&mut self, epoch: u32, sgd: &mut Sgd, observer: &mut dyn Observer) -> Result<(EpochEnd, Control)> {
        let spec = self.spec;
        let lr = spec.lr_at_epoch(epoch);
        let device = self.data.device();
        let plan: EpochPlan = self.data.epoch_plan(spec.seed, epoch)?;
        let mut totals = DeviceTotals::new(self.partial_epoch, device)?;
        let batch = spec.batch_size as i64;
        let n = self.data.train_len();
        let mut window_start = Instant::now();
        let mut window_images = 0i64;
        let mut control = Control::Continue;
        while self.step_in_epoch < self.steps_per_epoch {
            let step_started = Instant::now();
            let start = self.step_in_epoch * batch;
            let len = batch.min(n - start);
            let (images, labels) = self.data.train_batch(&plan, start, len)?;
            if spec.stage == Stage::Rl {
                // The gates' actions are a function of (seed, step), so a resumed run samples alike.
                tch::manual_seed(SplitMix64::for_stream(spec.seed, self.global_step as u64).next_u64() as i64);
            }
            let forward = self.network.forward(&images, true)?;
            let logits = &forward.logits;
            let task_loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)?;
            let loss = if spec.stage == Stage::Rl {
                let actions: Vec<Tensor> = forward.gates.iter().map(|g| g.mask.shallow_clone()).collect();
                let log_probs = forward
                    .gates
                    .iter()
                    .map(|g| g.log_prob.as_ref().map(Tensor::shallow_clone))
                    .collect::<Option<Vec<_>>>()
                    .ok_or_else(|| EngineError::Model("stage rl: a gate sampled no action".into()))?;
                let knobs = Reinforce { alpha: spec.alpha, gamma: spec.gamma, rl_weight: spec.rl_weight, task_reward: spec.rl_task_reward };
                task_loss.f_add(&rl_loss(logits, &labels, &actions, &log_probs, knobs)?)?
            } else {
                task_loss.shallow_clone()
            };
            sgd.step(&loss, lr)?;
            tch::no_grad(|| -> Result<()> {
                // The epoch's train loss is the task's cross-entropy in every stage.
                let _ = totals.loss_sum.f_add_(&task_loss.f_to_kind(Kind::Double)?.f_mul_scalar(len)?)?;
                let _ = totals.correct.f_add_(&logits.f_argmax(1, false)?.f_eq_tensor(&labels)?.f_sum(Kind::Int64)?)?;
                Ok(())
            })?;
            totals.seen += len;
            self.step_in_epoch += 1;
            self.global_step += 1;
            self.train_images += len;
            window_images += len;
            if self.global_step % spec.print_freq as i64 == 0 {
                let sums = totals.read()?;
                let images_per_s = window_images as f64 / window_start.elapsed().as_secs_f64();
                observer.step(&StepMetrics { step: self.global_step, epoch, loss: sums.mean_loss(), top1: sums.top1(), lr, images_per_s });
                window_start = Instant::now();
                window_images = 0;
            }
            self.train_seconds += step_started.elapsed().as_secs_f64();
            control = observer.control();
            match control {
                Control::Continue => {}
                Control::Abandon => return Ok((EpochEnd::Stopped(StageOutcome::Abandoned), control)),
                Control::Cancel => return Ok((EpochEnd::Stopped(StageOutcome::Cancelled), control)),
                Control::Interrupt if self.step_in_epoch < self.steps_per_epoch => {
                    self.partial_epoch = totals.read()?;
                    self.store_checkpoint(sgd, f64::NAN, observer)?;
                    observer.log(format!(
                        "interrupted in epoch {epoch} after step {}/{}; checkpoint stored",
                        self.step_in_epoch, self.steps_per_epoch
                    ));
                    return Ok((EpochEnd::Stopped(StageOutcome::Interrupted), control));
                }
                Control::Interrupt => {}
            }
        }
        self.partial_epoch = totals.read()?;
        Ok((EpochEnd::Finished, control))
    }

    /// Evaluates, reports and checkpoints a finished epoch.
    fn finish_epoch(&mut self, epoch: u32, epoch_images_per_s: f64, sgd: &Sgd, observer: &mut dyn Observer) -> Result<()> {
        let train = self.partial_epoch;
        let eval = self.evaluate()?;
        if self.best_top1.is_nan() || eval.top1 > self.best_top1 {
            self.best_top1 = eval.top1;
            self.best_epoch = epoch;
        }
        let lr = self.spec.lr_at_epoch(epoch);
        // The epoch's last step may have reported the lr already: one row per (name, step).
        let lr_reported = self.global_step % self.spec.print_freq as i64 == 0;
        observer.epoch(&EpochMetrics {
            step: self.global_step,
            epoch,
            train_loss: train.mean_loss(),
            train_top1: train.top1(),
            test_loss: eval.loss,
            test_top1: eval.top1,
            test_top5: eval.top5,
            best_top1: self.best_top1,
            epoch_images_per_s,
            energy_pj: eval.energy_pj,
            normalized_energy: eval.normalized_energy,
            lr: (!lr_reported).then_some(lr),
            fullbit_share: eval.fullbit_share(),
            block_fullbit_shares: eval.block_shares.clone(),
        });
        observer.log(format!(
            "epoch {epoch}/{} lr {}: train loss {:.4} top-1 {:.2}% | test loss {:.4} top-1 {:.2}% top-5 {:.2}% | best {:.2}% (epoch {}) | energy {:.4}{} | {:.0} images/s",
            self.spec.epochs,
            // Rounded so that 0.1 * 0.1 prints as 0.01.
            (lr * 1e12).round() / 1e12,
            train.mean_loss(),
            100.0 * train.top1(),
            eval.loss,
            100.0 * eval.top1,
            100.0 * eval.top5,
            100.0 * self.best_top1,
            self.best_epoch,
            eval.normalized_energy,
            match eval.fullbit_share() {
                Some(share) => format!(", 4-bit share {:.2}%", 100.0 * share),
                None => String::new(),
            },
            epoch_images_per_s,
        ));
        self.completed_epochs = epoch;
        self.step_in_epoch = 0;
        self.partial_epoch = EpochTotals::default();
        let top1 = eval.top1;
        self.last_eval = Some(eval);
        self.last_train = Some((train.mean_loss(), train.top1()));
        self.store_checkpoint(sgd, top1, observer)
    }

    fn evaluate(&self) -> Result<Evaluation> {
        let _no_grad = tch::no_grad_guard();
        let n = self.data.test_len();
        let batch = self.spec.batch_size as i64;
        let device = self.data.device();
        let mut loss_sum = Tensor::f_zeros([1], (Kind::Double, device))?;
        let mut top1 = Tensor::f_zeros([1], (Kind::Int64, device))?;
        let mut top5 = Tensor::f_zeros([1], (Kind::Int64, device))?;
        let k = 5.min(self.data.info.classes);
        // Images routed to 4 bits, per block (dual path).
        let mut routed: Option<Tensor> = None;
        let mut start = 0;
        while start < n {
            let len = batch.min(n - start);
            let (images, labels) = self.data.test_batch(start, len)?;
            let forward = self.network.forward(&images, false)?;
            if !forward.gates.is_empty() {
                let masks: Vec<&Tensor> = forward.gates.iter().map(|g| &g.mask).collect();
                let per_block = Tensor::f_stack(&masks, 0)?.f_sum_dim_intlist(1, false, Kind::Double)?;
                routed = Some(match routed {
                    Some(sum) => sum.f_add(&per_block)?,
                    None => per_block,
                });
            }
            let logits = forward.logits;
            let loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Sum, -100, 0.0)?;
            let _ = loss_sum.f_add_(&loss.f_to_kind(Kind::Double)?)?;
            let (_, top_k) = logits.f_topk(k, 1, true, true)?;
            let hits = top_k.f_eq_tensor(&labels.f_unsqueeze(1)?)?;
            let _ = top1.f_add_(&hits.f_narrow(1, 0, 1)?.f_sum(Kind::Int64)?)?;
            let _ = top5.f_add_(&hits.f_sum(Kind::Int64)?)?;
            start += len;
        }
        let n = n as f64;
        let block_shares: Vec<f64> = match routed {
            Some(sum) => Vec::<f64>::try_from(sum.f_to_device(Device::Cpu)?.f_div_scalar(n)?)?,
            None => Vec::new(),
        };
        let energy_pj = self.energy.blocks_pj(&block_shares);
        Ok(Evaluation {
            loss: loss_sum.f_double_value(&[0])? / n,
            top1: top1.f_int64_value(&[0])? as f64 / n,
            top5: top5.f_int64_value(&[0])? as f64 / n,
            energy_pj,
            normalized_energy: self.energy.normalized(energy_pj),
            block_shares,
        })
    }

    fn store_checkpoint(&self, sgd: &Sgd, top1: f64, observer: &mut dyn Observer) -> Result<()> {
        let meta = CheckpointMeta {
            epoch: self.completed_epochs,
            step: self.global_step,
            step_in_epoch: self.step_in_epoch,
            best_top1: self.best_top1,
            best_epoch: self.best_epoch,
            seed: self.spec.seed,
            spec: self.spec.clone(),
            partial_epoch: self.partial_epoch,
            precision: self.precision.clone(),
        };
        let blob = CheckpointBlob {
            bytes: checkpoint::save(&self.vs, sgd, &meta)?,
            epoch: meta.epoch,
            step: meta.step,
            top1,
            metadata_json: meta.to_json()?,
        };
        observer.checkpoint(blob).map_err(EngineError::Observer)
    }
}
