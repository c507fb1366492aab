//! The network a job trains, chosen by its stage: the plain pre-activation
//! ResNet (baseline, qat) or its dual-path variant (sp, rl).

use camp_proto::spec::JobSpec;
use tch::nn::Path;
use tch::Tensor;

use crate::error::Result;
use crate::model::{ComputeOptions, PreActResNet};
use crate::precision::Precision;

pub enum Network {
    Plain(PreActResNet),
}

/// One forward pass.
pub struct Forward {
    /// fp32 logits (N, classes).
    pub logits: Tensor,
}

impl Network {
    /// Builds the network of `spec` under `p` with the bit widths of `precision`.
    pub fn build(p: &Path, spec: &JobSpec, precision: &Precision, in_channels: i64, classes: i64, opts: ComputeOptions) -> Result<Self> {
        Ok(Network::Plain(PreActResNet::new(p, &spec.arch, in_channels, classes, precision, opts)?))
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Forward> {
        match self {
            Network::Plain(net) => Ok(Forward { logits: net.forward_t(x, train)? }),
        }
    }
}
