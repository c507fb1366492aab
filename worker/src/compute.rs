//! How a forward pass computes, apart from what it computes: the dtype of the
//! convolutions (bf16 or fp32) and the memory format of activations and conv
//! weights (channels-last or not). A leaf of the engine: the model, the dual
//! path and the weight bank all read it.

use tch::{Kind, Tensor};

use crate::error::Result;

/// How the forward pass computes; the parameters stay fp32 either way.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ComputeOptions {
    /// Convolutions and the linear layer in bfloat16 (what CUDA autocast does,
    /// done by hand because tch's autocast only offers fp16).
    pub bf16: bool,
    /// Channels-last memory format for activations and conv weights (faster on tensor cores).
    pub channels_last: bool,
}

impl ComputeOptions {
    /// The input batch laid out and typed for the convolutions.
    pub(crate) fn prepare_input(self, x: &Tensor) -> Result<Tensor> {
        let x = if self.channels_last { to_channels_last(x)? } else { x.shallow_clone() };
        Ok(if self.bf16 { x.f_to_kind(Kind::BFloat16)? } else { x })
    }

    pub(crate) fn compute_weight(self, w: Tensor) -> Result<Tensor> {
        Ok(if self.bf16 { w.f_to_kind(Kind::BFloat16)? } else { w })
    }
}

/// Same logical NCHW tensor, laid out in memory as NHWC.
pub(crate) fn to_channels_last(x: &Tensor) -> Result<Tensor> {
    Ok(x.f_permute([0, 2, 3, 1])?.f_contiguous()?.f_permute([0, 3, 1, 2])?)
}
