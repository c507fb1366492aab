//! Pre-activation ResNets for CIFAR-sized images (ALGORITHMS 2), with module
//! paths named as in the reference: `conv1`, `layer{1,2,3}.{i}.{pre_bn,conv1,bn,conv2}`,
//! `final_bn`, `fc`.
//!
//! The forward pass uses fallible libtorch calls so that a failure (for
//! example out of GPU memory) comes back as an error, not a panic.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::error::{EngineError, Result};

const STAGE_WIDTHS: [i64; 3] = [16, 32, 64];
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Blocks per stage of `preact_resnetN_cifar` (depth N = 6n + 2).
pub fn blocks_per_stage(arch: &str) -> Option<i64> {
    match arch {
        "preact_resnet20_cifar" => Some(3),
        "preact_resnet32_cifar" => Some(5),
        "preact_resnet44_cifar" => Some(7),
        "preact_resnet56_cifar" => Some(9),
        "preact_resnet110_cifar" => Some(18),
        _ => None,
    }
}

/// How the forward pass computes; the parameters stay fp32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComputeOptions {
    /// Convolutions and the linear layer in bfloat16 (what CUDA autocast does,
    /// done by hand because tch's autocast only offers fp16).
    pub bf16: bool,
    /// Channels-last memory format for activations and conv weights (faster on tensor cores).
    pub channels_last: bool,
}

struct Conv3x3 {
    weight: Tensor,
    stride: i64,
}

impl Conv3x3 {
    /// Init (ref): N(0, sqrt(2 / (k*k*out_channels))), no bias.
    fn new(p: Path, in_ch: i64, out_ch: i64, stride: i64, opts: ComputeOptions) -> Result<Self> {
        let std = (2.0 / (9 * out_ch) as f64).sqrt();
        let mut weight = p.f_var("weight", &[out_ch, in_ch, 3, 3], Init::Randn { mean: 0.0, stdev: std })?;
        if opts.channels_last {
            let cl = tch::no_grad(|| to_channels_last(&weight))?;
            weight.f_set_data(&cl)?;
        }
        Ok(Conv3x3 { weight, stride })
    }

    fn forward(&self, x: &Tensor, opts: ComputeOptions) -> Result<Tensor> {
        let weight = if opts.bf16 { self.weight.f_to_kind(Kind::BFloat16)? } else { self.weight.shallow_clone() };
        Ok(x.f_conv2d(&weight, None::<Tensor>, [self.stride, self.stride], [1, 1], [1, 1], 1)?)
    }
}

struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    fn new(p: Path, channels: i64) -> Result<Self> {
        Ok(BatchNorm {
            weight: p.f_ones("weight", &[channels])?,
            bias: p.f_zeros("bias", &[channels])?,
            running_mean: p.f_zeros_no_train("running_mean", &[channels])?,
            running_var: p.f_ones_no_train("running_var", &[channels])?,
        })
    }

    fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(Tensor::f_batch_norm(
            x,
            Some(&self.weight),
            Some(&self.bias),
            Some(&self.running_mean),
            Some(&self.running_var),
            train,
            BN_MOMENTUM,
            BN_EPS,
            true,
        )?)
    }

    fn relu(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        Ok(self.forward(x, train)?.f_relu()?)
    }
}

struct PreActBlock {
    pre_bn: BatchNorm,
    conv1: Conv3x3,
    bn: BatchNorm,
    conv2: Conv3x3,
    /// Channels of zeros added on each side of the shortcut where the width grows.
    shortcut_channel_pad: Option<i64>,
}

impl PreActBlock {
    fn new(p: Path, in_ch: i64, out_ch: i64, stride: i64, opts: ComputeOptions) -> Result<Self> {
        let reshapes = stride != 1 || in_ch != out_ch;
        Ok(PreActBlock {
            pre_bn: BatchNorm::new(&p / "pre_bn", in_ch)?,
            conv1: Conv3x3::new(&p / "conv1", in_ch, out_ch, stride, opts)?,
            bn: BatchNorm::new(&p / "bn", out_ch)?,
            conv2: Conv3x3::new(&p / "conv2", out_ch, out_ch, 1, opts)?,
            shortcut_channel_pad: reshapes.then_some((out_ch - in_ch) / 2),
        })
    }

    fn forward(&self, x: &Tensor, train: bool, opts: ComputeOptions) -> Result<Tensor> {
        let pre = self.pre_bn.relu(x, train)?;
        let out = self.conv2.forward(&self.bn.relu(&self.conv1.forward(&pre, opts)?, train)?, opts)?;
        let residual = match self.shortcut_channel_pad {
            None => x.shallow_clone(),
            // The reference's parameter-free "identity downsample": avgpool 2x2 of the
            // pre-activation, zero channels padded on both sides.
            Some(pad) => pre
                .f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)?
                .f_constant_pad_nd([0, 0, 0, 0, pad, pad])?,
        };
        Ok(out.f_add(&residual)?)
    }
}

pub struct PreActResNet {
    conv1: Conv3x3,
    blocks: Vec<PreActBlock>,
    final_bn: BatchNorm,
    fc_weight: Tensor,
    fc_bias: Tensor,
    opts: ComputeOptions,
}

impl PreActResNet {
    /// Builds `arch` under `p` (normally a VarStore's root). Initialisation draws
    /// from libtorch's global generator: seed it first for a reproducible model.
    pub fn new(p: &Path, arch: &str, in_channels: i64, classes: i64, opts: ComputeOptions) -> Result<Self> {
        let n = blocks_per_stage(arch).ok_or_else(|| EngineError::Model(format!("unknown architecture '{arch}'")))?;
        let conv1 = Conv3x3::new(p / "conv1", in_channels, STAGE_WIDTHS[0], 1, opts)?;
        let mut blocks = Vec::new();
        let mut in_ch = STAGE_WIDTHS[0];
        for (stage, &width) in STAGE_WIDTHS.iter().enumerate() {
            let layer = p / format!("layer{}", stage + 1);
            for i in 0..n {
                let stride = if stage > 0 && i == 0 { 2 } else { 1 };
                blocks.push(PreActBlock::new(&layer / i, in_ch, width, stride, opts)?);
                in_ch = width;
            }
        }
        let final_bn = BatchNorm::new(p / "final_bn", in_ch)?;
        // PyTorch's nn.Linear default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / (in_ch as f64).sqrt();
        let fc = p / "fc";
        let fc_weight = fc.f_var("weight", &[classes, in_ch], Init::Uniform { lo: -bound, up: bound })?;
        let fc_bias = fc.f_var("bias", &[classes], Init::Uniform { lo: -bound, up: bound })?;
        Ok(PreActResNet { conv1, blocks, final_bn, fc_weight, fc_bias, opts })
    }

    /// Logits (fp32) for a normalised batch (N, C, H, W).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let mut x = if self.opts.channels_last { to_channels_last(x)? } else { x.shallow_clone() };
        if self.opts.bf16 {
            x = x.f_to_kind(Kind::BFloat16)?;
        }
        x = self.conv1.forward(&x, self.opts)?;
        for block in &self.blocks {
            x = block.forward(&x, train, self.opts)?;
        }
        let pooled = self.final_bn.relu(&x, train)?.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?;
        let logits = if self.opts.bf16 {
            pooled.f_linear(&self.fc_weight.f_to_kind(Kind::BFloat16)?, Some(&self.fc_bias.f_to_kind(Kind::BFloat16)?))?
        } else {
            pooled.f_linear(&self.fc_weight, Some(&self.fc_bias))?
        };
        Ok(logits.f_to_kind(Kind::Float)?)
    }
}

/// Same logical NCHW tensor, laid out in memory as NHWC.
fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}
