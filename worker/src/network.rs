//! The network a job trains, chosen by its stage: the plain pre-activation
//! ResNet (baseline, qat) or its dual-path variant (sp, rl).

use camp_proto::spec::{JobSpec, Stage};
use tch::nn::Path;
use tch::Tensor;

use crate::compute::ComputeOptions;
use crate::dualpath::{DualPathResNet, GateDecision, GateTraining};
use crate::error::Result;
use crate::model::PreActResNet;
use crate::precision::Precision;

pub enum Network {
    Plain(PreActResNet),
    DualPath(DualPathResNet),
}

/// One forward pass.
pub struct Forward {
    /// fp32 logits (N, classes).
    pub logits: Tensor,
    /// The dual-path network's gate decisions, one per block in forward order (empty otherwise).
    pub gates: Vec<GateDecision>,
}

impl Network {
    /// Builds the network of `spec` under `p` with the bit widths of `precision`.
    pub fn build(p: &Path, spec: &JobSpec, precision: &Precision, in_channels: i64, classes: i64, opts: ComputeOptions) -> Result<Self> {
        let gates = match spec.stage {
            Stage::Baseline | Stage::Qat => {
                return Ok(Network::Plain(PreActResNet::new(p, &spec.arch, in_channels, classes, precision, opts)?))
            }
            Stage::Sp => GateTraining::StraightThrough,
            Stage::Rl => GateTraining::Sampled,
        };
        Ok(Network::DualPath(DualPathResNet::new(p, &spec.arch, in_channels, classes, precision, gates, opts)?))
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Forward> {
        match self {
            Network::Plain(net) => Ok(Forward { logits: net.forward_t(x, train)?, gates: Vec::new() }),
            Network::DualPath(net) => {
                let out = net.forward_t(x, train)?;
                Ok(Forward { logits: out.logits, gates: out.gates })
            }
        }
    }
}
