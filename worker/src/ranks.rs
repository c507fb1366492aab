//! How one process takes part in a data-parallel run (crate::parallel): the
//! shards of each batch it trains, and the collectives its training loop
//! calls at fixed points of every step, which are no-ops for a process that
//! trains alone ([`Ranks::Local`]).

use camp_proto::metric::{EpochMetrics, StepMetrics};
use std::path::PathBuf;
use tch::Tensor;

use crate::collective::{ProcessGroup, RankOf};
use crate::error::{EngineError, Result};
use crate::observer::{CheckpointBlob, CheckpointError, Control, Observer};

/// How this process takes part in a run.
pub enum Ranks {
    /// One process on one device: every rank's shard in turn (just the whole
    /// batch when `spec.gpus` is 1).
    Local,
    /// One rank of a process group of `spec.gpus` ranks.
    Group(ProcessGroup),
}

impl Ranks {
    /// The ranks whose shards this process trains.
    pub fn shards(&self, world: u32) -> Vec<RankOf> {
        match self {
            Ranks::Local => (0..i64::from(world)).map(|rank| RankOf { rank, world: i64::from(world) }).collect(),
            Ranks::Group(group) => vec![group.rank_of()],
        }
    }

    /// Whether this process evaluates, reports and checkpoints (rank 0, or the only process).
    pub fn leads(&self) -> bool {
        match self {
            Ranks::Local => true,
            Ranks::Group(group) => group.rank_of().rank == 0,
        }
    }

    /// Sums a flat gradient over the ranks, in place.
    pub fn sum_gradient(&mut self, gradient: &Tensor) -> Result<()> {
        match self {
            Ranks::Local => Ok(()),
            Ranks::Group(group) => group.all_reduce_sum(gradient),
        }
    }

    /// Sums `values` (f64) over the ranks.
    pub fn sum(&mut self, values: &[f64]) -> Result<Vec<f64>> {
        match self {
            Ranks::Local => Ok(values.to_vec()),
            Ranks::Group(group) => {
                let t = Tensor::f_from_slice(values)?;
                group.all_reduce_sum(&t)?;
                Ok(Vec::<f64>::try_from(&t)?)
            }
        }
    }

    /// Rank 0's `control`, on every rank.
    pub fn share_control(&mut self, control: Control) -> Result<Control> {
        let Ranks::Group(group) = self else { return Ok(control) };
        let t = Tensor::f_from_slice(&[control_code(control)])?;
        group.broadcast(&t, 0)?;
        control_of(t.f_int64_value(&[0])?)
    }

    /// Makes every rank start from rank 0's tensors (in place). All ranks load
    /// the same state, so this changes nothing unless something went wrong;
    /// DDP does the same when it wraps a module.
    pub fn align(&mut self, tensors: &[&Tensor]) -> Result<()> {
        let Ranks::Group(group) = self else { return Ok(()) };
        for t in tensors {
            group.broadcast(t, 0)?;
        }
        Ok(())
    }

    /// Checks that every rank ends with rank 0's `tensor`, bit for bit.
    pub fn check_agree(&mut self, tensor: &Tensor) -> Result<()> {
        let Ranks::Group(group) = self else { return Ok(()) };
        let lead = tensor.f_detach_copy()?;
        group.broadcast(&lead, 0)?;
        let differs = i64::from(!lead.equal(tensor));
        let t = Tensor::f_from_slice(&[differs])?;
        group.all_reduce_sum(&t)?;
        match t.f_int64_value(&[0])? {
            0 => Ok(()),
            n => Err(EngineError::Parallel(format!("{n} rank(s) ended with weights that differ from rank 0's"))),
        }
    }
}

fn control_code(control: Control) -> i64 {
    match control {
        Control::Continue => 0,
        Control::Cancel => 1,
        Control::Interrupt => 2,
        Control::Abandon => 3,
    }
}

fn control_of(code: i64) -> Result<Control> {
    Ok(match code {
        0 => Control::Continue,
        1 => Control::Cancel,
        2 => Control::Interrupt,
        3 => Control::Abandon,
        other => return Err(EngineError::Parallel(format!("rank 0 sent an unknown control {other}"))),
    })
}

/// A follower rank's observer: rank 0 reports, so it drops everything but its
/// final state, which it writes to `out` when asked to.
pub struct FollowerObserver {
    pub out: Option<PathBuf>,
}

impl Observer for FollowerObserver {
    fn step(&mut self, _: &StepMetrics) {}
    fn epoch(&mut self, _: &EpochMetrics) {}
    fn log(&mut self, _: String) {}
    fn checkpoint(&mut self, blob: CheckpointBlob) -> std::result::Result<(), CheckpointError> {
        if let Some(path) = &self.out {
            std::fs::write(path, &blob.bytes).map_err(|source| CheckpointError::Io { path: path.clone(), source })?;
        }
        Ok(())
    }
    fn control(&mut self) -> Control {
        Control::Continue
    }
}
