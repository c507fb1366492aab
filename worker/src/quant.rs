//! Quantisers of weights and activations (docs/method.md, "Quantisation"), computing the values
//! of the reference's DoReFa / PACT formulas with as few kernels as the maths
//! allows: quantised training on a GPU is bound by small ops (GPU.md), so
//! rounding, clamping and the straight-through gradient go through libtorch's
//! fused `fake_quantize_per_tensor_affine`, and the DoReFa activation is one
//! op of our own each way (`fused`).
//!
//! The float weights stay the trained parameters; the quantised copy is made
//! on each forward pass.

use camp_proto::spec::ActQuant;
use tch::nn::{Init, Path};
use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};

/// Bit widths at or above this are full precision.
pub const FULL_PRECISION_BITS: u32 = 32;
/// Widest integer quantisation offered (DoReFa's range).
pub const MAX_QUANTIZED_BITS: u32 = 8;
/// The VarStore path suffix of PACT's learned clips (they have a decay of their own).
pub const PACT_CLIP_SUFFIX: &str = ".clip_val";
/// PACT's initial clipping value (ref `act_clip_init_val`).
pub const PACT_INITIAL_CLIP: f64 = 8.0;

/// Quantisation levels above zero at k bits: 2^k - 1.
fn levels(bits: u32) -> i64 {
    (1i64 << bits) - 1
}

/// Checks a bit width; `None` and 32 mean full precision.
fn quantized_bits(bits: Option<u32>, what: &str) -> Result<Option<u32>> {
    match bits {
        None | Some(FULL_PRECISION_BITS) => Ok(None),
        Some(b) if (1..=MAX_QUANTIZED_BITS).contains(&b) => Ok(Some(b)),
        Some(b) => {
            Err(EngineError::Quantization(format!("{what}: {b} bits is not offered (1..={MAX_QUANTIZED_BITS} or {FULL_PRECISION_BITS})")))
        }
    }
}

/// How a Conv2d or Linear weight is quantised on each forward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeightQuantizer {
    Full,
    /// `sign(w) * mean(|w|)`, gradient passed unchanged.
    Binary,
    /// DoReFa at 2..=8 bits.
    Dorefa {
        bits: u32,
    },
}

impl WeightQuantizer {
    /// The quantiser for a weight bit width (`None` = full precision).
    pub fn for_bits(bits: Option<u32>) -> Result<Self> {
        Ok(match quantized_bits(bits, "weights")? {
            None => WeightQuantizer::Full,
            Some(1) => WeightQuantizer::Binary,
            Some(bits) => WeightQuantizer::Dorefa { bits },
        })
    }

    /// The bit width the energy model charges (32 for full precision).
    pub fn bits(self) -> u32 {
        match self {
            WeightQuantizer::Full => FULL_PRECISION_BITS,
            WeightQuantizer::Binary => 1,
            WeightQuantizer::Dorefa { bits } => bits,
        }
    }

    /// The quantised copy of `w`, differentiable back to `w`.
    pub fn quantize(self, w: &Tensor) -> Result<Tensor> {
        match self {
            WeightQuantizer::Full => Ok(w.shallow_clone()),
            WeightQuantizer::Binary => {
                // Detach identity: forward sign(w)*E, gradient 1 (E gets none, as in the reference).
                let delta = tch::no_grad(|| -> Result<Tensor> {
                    let mean_abs =
                        w.f_reshape([-1])?.f_linalg_norm(1.0, None::<&[i64]>, false, None::<Kind>)?.f_div_scalar(w.numel() as f64)?;
                    Ok(w.f_sign()?.f_mul(&mean_abs)?.f_sub(w)?)
                })?;
                Ok(w.f_add(&delta)?)
            }
            WeightQuantizer::Dorefa { bits } => {
                // t = tanh(w); u = t / max|t| * 0.5 + 0.5 in [0, 1]; w_q = 2 round_k(u) - 1.
                // Computed as fq(2u) at scale 2/n, which is 2 round_k(u), with the STE
                // of the fused kernel (2u always lies inside its range); tanh and the
                // max normalisation are differentiated normally.
                let n = levels(bits);
                let t = w.f_tanh()?;
                let max_abs = t.f_reshape([-1])?.f_linalg_norm(f64::INFINITY, None::<&[i64]>, false, None::<Kind>)?;
                let twice_u = t.f_div(&max_abs)?.f_add_scalar(1.0)?;
                Ok(twice_u.f_fake_quantize_per_tensor_affine(2.0 / n as f64, 0, 0, n)?.f_add_scalar(-1.0)?)
            }
        }
    }

    /// `quantize` of every segment of `flat` (flattened weights one after
    /// another), in one pass over all of them: the same values and gradients,
    /// with the per-weight statistics (max |tanh w|, mean |w|) taken per segment.
    pub fn quantize_segments(self, flat: &Tensor, segments: &Segments) -> Result<Tensor> {
        match self {
            WeightQuantizer::Full => Ok(flat.shallow_clone()),
            WeightQuantizer::Binary => {
                let delta = tch::no_grad(|| -> Result<Tensor> {
                    let mean_abs = segments.mean(&flat.f_abs()?)?;
                    Ok(flat.f_sign()?.f_mul(&segments.expand(&mean_abs)?)?.f_sub(flat)?)
                })?;
                Ok(flat.f_add(&delta)?)
            }
            WeightQuantizer::Dorefa { bits } => crate::fused::dorefa_weights(flat, &segments.lengths, &segments.ids, levels(bits)),
        }
    }
}

/// How a flat tensor divides into consecutive segments (one per weight), as
/// device tensors made once so that a step only launches the kernels that use them.
pub struct Segments {
    /// Elements per segment (int64).
    lengths: Tensor,
    /// Each element's segment index (int64): spreads per-segment values over
    /// the elements with one gather.
    ids: Tensor,
}

impl Segments {
    /// Segments of `lengths` elements each, on `device`.
    pub fn new(lengths: &[i64], device: Device) -> Result<Self> {
        let total: i64 = lengths.iter().sum();
        let lengths = Tensor::f_from_slice(lengths)?.f_to_device(device)?;
        let ids = Tensor::f_arange(lengths.size()[0], (Kind::Int64, device))?.f_repeat_interleave_self_tensor(&lengths, 0, total)?;
        Ok(Segments { lengths, ids })
    }

    /// The mean of each segment of `flat`.
    fn mean(&self, flat: &Tensor) -> Result<Tensor> {
        Ok(Tensor::f_segment_reduce(flat, "mean", Some(&self.lengths), None, None, 0, false, 0.0)?)
    }

    /// Each segment's value of `per_segment` repeated over its elements.
    fn expand(&self, per_segment: &Tensor) -> Result<Tensor> {
        Ok(per_segment.f_index_select(0, &self.ids)?)
    }
}

/// What a ReLU of the network computes.
#[derive(Debug)]
pub enum Activation {
    Relu,
    /// `round_k(clamp(x, 0, 1))`, gradient 1 inside [0, 1].
    Dorefa {
        bits: u32,
    },
    /// `round_k` on [0, clip] of `clamp(x, 0, clip)` with a learned `clip_val`.
    Pact {
        bits: u32,
        clip_val: Tensor,
        /// Constants on the model's device, made once instead of on every step.
        zero: Tensor,
        zero_point: Tensor,
    },
}

impl Activation {
    /// The activation at `bits` (`None` = full precision ReLU). PACT's
    /// `clip_val` is a variable under `p`.
    pub fn new(p: Path, bits: Option<u32>, scheme: ActQuant) -> Result<Self> {
        let Some(bits) = quantized_bits(bits, "activations")? else { return Ok(Activation::Relu) };
        Ok(match scheme {
            ActQuant::Dorefa => Activation::Dorefa { bits },
            ActQuant::Pact => {
                let device = p.device();
                Activation::Pact {
                    bits,
                    clip_val: p.f_var("clip_val", &[1], Init::Const(PACT_INITIAL_CLIP))?,
                    zero: Tensor::f_zeros([1], (Kind::Float, device))?,
                    zero_point: Tensor::f_zeros([1], (Kind::Int, device))?,
                }
            }
        })
    }

    /// Activation bit width (32 for a plain ReLU).
    pub fn bits(&self) -> u32 {
        match self {
            Activation::Relu => FULL_PRECISION_BITS,
            Activation::Dorefa { bits } | Activation::Pact { bits, .. } => *bits,
        }
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        match self {
            Activation::Relu => Ok(x.f_relu()?),
            Activation::Dorefa { bits } => crate::fused::dorefa_activation(x, levels(*bits)),
            Activation::Pact { bits, clip_val, zero, zero_point } => {
                // clamp's backward gives x its gradient inside [0, clip] and clip_val
                // the gradient where x >= clip; the scale takes no gradient (ref).
                let n = levels(*bits);
                let clipped = if x.kind() == Kind::Float {
                    x.f_clamp_tensor(Some(zero), Some(clip_val))?
                } else {
                    // bf16 compute: bounds of the input's kind, or the result would be promoted to fp32.
                    x.f_clamp_tensor(Some(zero.f_to_kind(x.kind())?), Some(clip_val.f_to_kind(x.kind())?))?
                };
                let scale = tch::no_grad(|| clip_val.f_div_scalar(n as f64))?;
                Ok(clipped.f_fake_quantize_per_tensor_affine_tensor_qparams(&scale, zero_point, 0, n)?)
            }
        }
    }
}
