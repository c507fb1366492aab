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
use camp_proto::result::{finite, JobResult};
use camp_proto::spec::{JobSpec, Stage};
use camp_proto::ValidSpec;
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::checkpoint::{self, CheckpointMeta, EpochTotals};
use crate::collective::RankOf;
use crate::compute::ComputeOptions;
use crate::cuda_graph::{self, CudaGraph};
use crate::data::{Dataset, EpochPlan};
use crate::error::{EngineError, Result};
use crate::evaluation::{evaluate, Evaluation};
use crate::network::Network;
use crate::observer::{CheckpointBlob, Control, Observer, RunInfo, StageOutcome};
use crate::optim::Sgd;
use crate::precision::Precision;
use crate::quant::PACT_CLIP_SUFFIX;
use crate::ranks::{FollowerObserver, Ranks};
use crate::reinforce::{rl_loss, Reinforce};
use crate::rng::SplitMix64;

/// Trains `spec` on `device`, from scratch, from the checkpoint bytes
/// `resume` (an interrupted attempt of the same job), or starting from the
/// weights of `init` (a finished job's checkpoint: every parameter the two
/// networks share by name, with a fresh optimiser), reporting to `observer`.
/// `init` is not read when resuming: the checkpoint has it all. One process
/// trains every rank's shard of a data-parallel spec (`gpus` > 1) in turn.
pub fn run_stage(
    spec: &ValidSpec,
    data_dir: &Path,
    device: Device,
    resume: Option<&[u8]>,
    init: Option<&[u8]>,
    observer: &mut dyn Observer,
) -> Result<StageOutcome> {
    run_stage_ranked(&StageInput { spec, data_dir, device, resume, init }, observer, Ranks::Local)
}

/// What a run starts from: [`run_stage`]'s arguments, handed on whole to each
/// rank of a data-parallel run (crate::parallel).
#[derive(Clone, Copy)]
pub struct StageInput<'a> {
    pub spec: &'a ValidSpec,
    pub data_dir: &'a Path,
    pub device: Device,
    pub resume: Option<&'a [u8]>,
    pub init: Option<&'a [u8]>,
}

/// [`run_stage`] as one rank of a data-parallel run (crate::parallel): rank 0
/// reports to `observer`; the others train alongside it and report nothing.
pub fn run_stage_ranked(input: &StageInput, observer: &mut dyn Observer, ranks: Ranks) -> Result<StageOutcome> {
    let StageInput { spec, data_dir, device, resume, init } = *input;
    let spec: &JobSpec = spec;
    if let Ranks::Group(group) = &ranks {
        if group.rank_of().world != i64::from(spec.gpus) {
            return Err(EngineError::Parallel(format!("a group of {} ranks for a job of {}", group.rank_of().world, spec.gpus)));
        }
    }
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
    if spec.cuda_graph {
        cuda_graph::check(device)?;
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
            let mut quiet = FollowerObserver { out: None };
            initialise(&vs, bytes, if ranks.leads() { observer } else { &mut quiet })?;
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
        ranks,
        graphed: None,
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
    let momentum = sgd.flat_momentum().map(Tensor::shallow_clone);
    run.ranks.align(&[sgd.flat_params()].into_iter().chain(momentum.as_ref()).collect::<Vec<_>>())?;
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
    /// Which shards of each batch this process trains, and with whom.
    ranks: Ranks,
    /// The captured training step, with `spec.cuda_graph`.
    graphed: Option<GraphedStep>,
}

/// One step's summed loss and hits, on the device.
struct StepTotals {
    loss_sum: Tensor,
    correct: Tensor,
}

/// A training step captured in a CUDA graph, with the buffers it reads and writes.
struct GraphedStep {
    graph: CudaGraph,
    /// The lr the update was captured with.
    lr: f64,
    images: Tensor,
    labels: Tensor,
    /// Rewritten by each replay.
    totals: StepTotals,
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

    fn add(&mut self, step: &StepTotals) -> Result<()> {
        tch::no_grad(|| -> Result<()> {
            let _ = self.loss_sum.f_add_(&step.loss_sum)?;
            let _ = self.correct.f_add_(&step.correct)?;
            Ok(())
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
        self.ranks.check_agree(sgd.flat_params())?;
        if !self.ranks.leads() {
            // Its final state, for whoever asked to see it (the observer decides).
            self.store_checkpoint(sgd, f64::NAN, observer)?;
            return Ok(StageOutcome::Completed(JobResult {
                epochs: self.completed_epochs,
                steps: self.global_step,
                ..JobResult::default()
            }));
        }
        let eval = match self.last_eval.take() {
            Some(eval) => eval,
            None => self.evaluate()?,
        };
        let summary = JobResult {
            best_top1: self.best_top1,
            best_epoch: self.best_epoch,
            final_top1: eval.top1,
            final_top5: eval.top5,
            final_test_loss: finite(eval.loss),
            final_train_loss: self.last_train.and_then(|(loss, _)| finite(loss)),
            final_train_top1: self.last_train.and_then(|(_, top1)| finite(top1)),
            epochs: self.completed_epochs,
            steps: self.global_step,
            images_per_s: (self.train_images > 0).then(|| self.train_images as f64 / self.train_seconds).and_then(finite),
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
        // Rank 0 carries the epoch's sums so far; the other ranks add their shards' from zero.
        let carried = match self.ranks.leads() {
            true => self.partial_epoch,
            false => EpochTotals { seen: self.partial_epoch.seen, ..EpochTotals::default() },
        };
        let mut totals = DeviceTotals::new(carried, device)?;
        let batch = spec.batch_size as i64;
        let n = self.data.train_len();
        let shards = self.ranks.shards(spec.gpus);
        let mut window_start = Instant::now();
        let mut window_images = 0i64;
        let mut control = Control::Continue;
        while self.step_in_epoch < self.steps_per_epoch {
            let step_started = Instant::now();
            let start = self.step_in_epoch * batch;
            let len = batch.min(n - start);
            // A full batch once the optimiser has its momentum: captured once per lr, then replayed.
            if spec.cuda_graph && len == batch && sgd.flat_momentum().is_some() {
                self.graphed_step(sgd, &plan, start, len, lr, &mut totals)?;
            } else {
                let mut gradient: Option<Tensor> = None;
                for of in &shards {
                    let (offset, shard_len) = of.shard(len);
                    if shard_len == 0 {
                        continue;
                    }
                    let (images, labels) = self.data.train_batch(&plan, start + offset, shard_len)?;
                    self.seed_step(*of)?;
                    let (g, step_totals) = self.shard_gradient(sgd, &images, &labels, shard_len, len)?;
                    totals.add(&step_totals)?;
                    gradient = Some(match gradient {
                        Some(mut sum) => sum.f_add_(&g)?,
                        None => g,
                    });
                }
                let gradient = match gradient {
                    Some(g) => g,
                    None => sgd.zero_gradient()?,
                };
                self.ranks.sum_gradient(&gradient)?;
                sgd.update(gradient, lr)?;
            }
            totals.seen += len;
            self.step_in_epoch += 1;
            self.global_step += 1;
            self.train_images += len;
            window_images += len;
            if self.global_step % spec.print_freq as i64 == 0 {
                let sums = self.read_totals(&totals)?;
                let images_per_s = window_images as f64 / window_start.elapsed().as_secs_f64();
                observer.step(&StepMetrics { step: self.global_step, epoch, loss: sums.mean_loss(), top1: sums.top1(), lr, images_per_s });
                window_start = Instant::now();
                window_images = 0;
            }
            self.train_seconds += step_started.elapsed().as_secs_f64();
            control = self.ranks.share_control(observer.control())?;
            match control {
                Control::Continue => {}
                Control::Abandon => return Ok((EpochEnd::Stopped(StageOutcome::Abandoned), control)),
                Control::Cancel => return Ok((EpochEnd::Stopped(StageOutcome::Cancelled), control)),
                Control::Interrupt if self.step_in_epoch < self.steps_per_epoch => {
                    self.partial_epoch = self.read_totals(&totals)?;
                    if self.ranks.leads() {
                        self.store_checkpoint(sgd, f64::NAN, observer)?;
                        observer.log(format!(
                            "interrupted in epoch {epoch} after step {}/{}; checkpoint stored",
                            self.step_in_epoch, self.steps_per_epoch
                        ));
                    }
                    return Ok((EpochEnd::Stopped(StageOutcome::Interrupted), control));
                }
                Control::Interrupt => {}
            }
        }
        self.partial_epoch = self.read_totals(&totals)?;
        Ok((EpochEnd::Finished, control))
    }

    /// Seeds the generator for this step's sampling in stage rl: the gates'
    /// actions are a function of (seed, step, rank), so a resumed run samples
    /// alike; rank r takes the step stream's (r+1)-th number (rank 0, as a
    /// single process, the first).
    fn seed_step(&self, of: RankOf) -> Result<()> {
        if self.spec.stage == Stage::Rl {
            let mut stream = SplitMix64::for_stream(self.spec.seed, self.global_step as u64);
            let mut draw = stream.next_u64();
            for _ in 0..of.rank {
                draw = stream.next_u64();
            }
            tch::manual_seed(draw as i64);
        }
        Ok(())
    }

    /// Back-propagates the loss of a shard of `shard_len` images in a batch of
    /// `len`: the shard's gradient, weighted by its share of the batch so that
    /// the ranks' gradients sum to the batch mean's, and the shard's summed
    /// loss and hits (new tensors: under capture, the graph's outputs).
    fn shard_gradient(&mut self, sgd: &Sgd, images: &Tensor, labels: &Tensor, shard_len: i64, len: i64) -> Result<(Tensor, StepTotals)> {
        let spec = self.spec;
        let forward = self.network.forward(images, true)?;
        let logits = &forward.logits;
        let task_loss = logits.f_cross_entropy_loss::<Tensor>(labels, None, Reduction::Mean, -100, 0.0)?;
        let loss = if spec.stage == Stage::Rl {
            let actions: Vec<Tensor> = forward.gates.iter().map(|g| g.mask.shallow_clone()).collect();
            let log_probs = forward
                .gates
                .iter()
                .map(|g| g.log_prob.as_ref().map(Tensor::shallow_clone))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| EngineError::Model("stage rl: a gate sampled no action".into()))?;
            let knobs = Reinforce { alpha: spec.alpha, gamma: spec.gamma, rl_weight: spec.rl_weight, task_reward: spec.rl_task_reward };
            task_loss.f_add(&rl_loss(logits, labels, &actions, &log_probs, knobs)?)?
        } else {
            task_loss.shallow_clone()
        };
        let gradient = match shard_len == len {
            true => sgd.gradient(&loss)?,
            false => sgd.gradient(&loss.f_mul_scalar(shard_len as f64 / len as f64)?)?,
        };
        let totals = tch::no_grad(|| -> Result<StepTotals> {
            // The epoch's train loss is the task's cross-entropy in every stage.
            Ok(StepTotals {
                loss_sum: task_loss.f_to_kind(Kind::Double)?.f_mul_scalar(shard_len)?,
                correct: logits.f_argmax(1, false)?.f_eq_tensor(labels)?.f_sum(Kind::Int64)?,
            })
        })?;
        Ok((gradient, totals))
    }

    /// One full-batch step through a CUDA graph (`spec.cuda_graph`): the batch
    /// is copied into the graph's static buffers and the captured forward,
    /// backward and update are replayed. The graph is captured at the first such
    /// step and again whenever the lr changes (it is part of the captured update).
    fn graphed_step(&mut self, sgd: &mut Sgd, plan: &EpochPlan, start: i64, len: i64, lr: f64, totals: &mut DeviceTotals) -> Result<()> {
        let (images, labels) = self.data.train_batch(plan, start, len)?;
        self.seed_step(RankOf::SOLE)?;
        match self.graphed.as_mut() {
            Some(step) if step.lr == lr => {
                step.images.f_copy_(&images)?;
                step.labels.f_copy_(&labels)?;
                step.graph.replay()?;
            }
            _ => {
                self.graphed = None;
                // Static buffers made outside the graph: the copies of later batches land in them.
                let (static_images, static_labels) = (images.f_detach_copy()?, labels.f_detach_copy()?);
                let device = self.data.device();
                let (mut graph, step_totals) = CudaGraph::capture(device, || {
                    let (gradient, step_totals) = self.shard_gradient(sgd, &static_images, &static_labels, len, len)?;
                    sgd.update(gradient, lr)?;
                    Ok(step_totals)
                })?;
                graph.replay()?;
                self.graphed = Some(GraphedStep { graph, lr, images: static_images, labels: static_labels, totals: step_totals });
            }
        }
        let step = self.graphed.as_ref().expect("captured above");
        totals.add(&step.totals)
    }

    /// The epoch's sums over every rank (a collective: every rank calls it at the same step).
    fn read_totals(&mut self, totals: &DeviceTotals) -> Result<EpochTotals> {
        let local = totals.read()?;
        let summed = self.ranks.sum(&[local.loss_sum, local.correct as f64])?;
        Ok(EpochTotals { loss_sum: summed[0], correct: summed[1].round() as i64, seen: local.seen })
    }

    /// Evaluates, reports and checkpoints a finished epoch.
    fn finish_epoch(&mut self, epoch: u32, epoch_images_per_s: f64, sgd: &Sgd, observer: &mut dyn Observer) -> Result<()> {
        let train = self.partial_epoch;
        if !self.ranks.leads() {
            // Rank 0 evaluates and checkpoints; the others only keep count.
            self.completed_epochs = epoch;
            self.step_in_epoch = 0;
            self.partial_epoch = EpochTotals::default();
            return Ok(());
        }
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
        evaluate(&self.network, &self.data, &self.energy, self.spec.batch_size as i64)
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
        Ok(observer.checkpoint(blob)?)
    }
}
