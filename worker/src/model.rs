//! Pre-activation ResNets for CIFAR-sized images (docs/method.md, "Network"), quantised
//! per module as a `Precision` table says (docs/method.md, "Quantisation"). Module paths are
//! `camp_proto::arch`'s: `conv1`, `layer{1,2,3}.{i}.{pre_bn,pre_relu,conv1,bn,relu,conv2}`,
//! `final_bn`, `final_relu`, `fc`; PACT's learned clip of a ReLU is `<relu>.clip_val`.
//!
//! The forward pass uses fallible libtorch calls so that a failure (for
//! example out of GPU memory) comes back as an error, not a panic.

use tch::nn::{Init, Path};
use tch::{Kind, Tensor};

use crate::compute::{to_channels_last, ComputeOptions};
use crate::error::{EngineError, Result};
use crate::module_path::{path_of, sub_path};
use crate::precision::Precision;
use crate::quant::{Activation, WeightQuantizer};
use crate::weights::{WeightBank, WeightBankBuilder};

const STAGE_WIDTHS: [i64; 3] = [16, 32, 64];
const BN_MOMENTUM: f64 = 0.1;
const BN_EPS: f64 = 1e-5;

/// Blocks per stage of `preact_resnetN_cifar` (depth N = 6n + 2).
pub fn blocks_per_stage(arch: &str) -> Option<i64> {
    camp_proto::arch::blocks_per_stage(arch).map(|n| n as i64)
}

/// A convolution's shape (padding `kernel / 2`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ConvShape {
    pub(crate) in_ch: i64,
    pub(crate) out_ch: i64,
    pub(crate) kernel: i64,
    pub(crate) stride: i64,
    pub(crate) bias: bool,
}

impl ConvShape {
    /// A bias-free 3x3 convolution.
    pub(crate) fn conv3x3(in_ch: i64, out_ch: i64, stride: i64) -> Self {
        ConvShape { in_ch, out_ch, kernel: 3, stride, bias: false }
    }
}

/// A convolution whose weight is quantised on each forward pass, in the
/// network's `WeightBank` at the conv's slot.
pub(crate) struct Conv {
    /// The float weight (the parameter).
    pub(crate) weight: Tensor,
    pub(crate) slot: usize,
    bias: Option<Tensor>,
    stride: i64,
    padding: i64,
}

impl Conv {
    /// Init (ref, every Conv2d): weight N(0, sqrt(2 / (k*k*out_channels))); a bias as
    /// PyTorch's default, U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
    pub(crate) fn new(
        p: Path,
        shape: ConvShape,
        precision: &Precision,
        opts: ComputeOptions,
        bank: &mut WeightBankBuilder,
    ) -> Result<Self> {
        let ConvShape { in_ch, out_ch, kernel, stride, bias } = shape;
        let quantizer = precision.weight_quantizer(&path_of(&p))?;
        let std = (2.0 / (kernel * kernel * out_ch) as f64).sqrt();
        let mut weight = p.f_var("weight", &[out_ch, in_ch, kernel, kernel], Init::Randn { mean: 0.0, stdev: std })?;
        if opts.channels_last {
            let cl = tch::no_grad(|| to_channels_last(&weight))?;
            weight.f_set_data(&cl)?;
        }
        let bias = if bias {
            let bound = 1.0 / ((in_ch * kernel * kernel) as f64).sqrt();
            Some(p.f_var("bias", &[out_ch], Init::Uniform { lo: -bound, up: bound })?)
        } else {
            None
        };
        let slot = bank.add(&weight, quantizer)?;
        Ok(Conv { weight, slot, bias, stride, padding: kernel / 2 })
    }

    /// A bias-free convolution at `p` computing with `other`'s float weight
    /// (one parameter, its own quantisation).
    pub(crate) fn sharing(p: Path, other: &Conv, precision: &Precision, bank: &mut WeightBankBuilder) -> Result<Self> {
        let quantizer = precision.weight_quantizer(&path_of(&p))?;
        Ok(Conv {
            weight: other.weight.shallow_clone(),
            slot: bank.add(&other.weight, quantizer)?,
            bias: None,
            stride: other.stride,
            padding: other.padding,
        })
    }

    /// `x` convolved with this conv's entry of `weights` (the bank's compute-ready weights).
    pub(crate) fn forward(&self, x: &Tensor, weights: &[Tensor], opts: ComputeOptions) -> Result<Tensor> {
        let weight = &weights[self.slot];
        let bias = match &self.bias {
            Some(b) => Some(opts.compute_weight(b.shallow_clone())?),
            None => None,
        };
        let (s, p) = (self.stride, self.padding);
        Ok(x.f_conv2d(weight, bias.as_ref(), [s, s], [p, p], [1, 1], 1)?)
    }
}

pub(crate) struct BatchNorm {
    weight: Tensor,
    bias: Tensor,
    running_mean: Tensor,
    running_var: Tensor,
}

impl BatchNorm {
    pub(crate) fn new(p: Path, channels: i64) -> Result<Self> {
        Ok(BatchNorm {
            weight: p.f_ones("weight", &[channels])?,
            bias: p.f_zeros("bias", &[channels])?,
            running_mean: p.f_zeros_no_train("running_mean", &[channels])?,
            running_var: p.f_ones_no_train("running_var", &[channels])?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
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
}

/// A pre-activation block: `conv2(relu(bn(conv1(pre_relu(pre_bn(x)))))) + shortcut`.
pub(crate) struct PreActBlock {
    pre_bn: BatchNorm,
    pre_relu: Activation,
    pub(crate) conv1: Conv,
    bn: BatchNorm,
    relu: Activation,
    pub(crate) conv2: Conv,
    /// Channels of zeros added on each side of the shortcut where the width grows.
    shortcut_channel_pad: Option<i64>,
}

impl PreActBlock {
    pub(crate) fn new(
        p: Path,
        in_ch: i64,
        out_ch: i64,
        stride: i64,
        precision: &Precision,
        opts: ComputeOptions,
        bank: &mut WeightBankBuilder,
    ) -> Result<Self> {
        let conv1 = Conv::new(&p / "conv1", ConvShape::conv3x3(in_ch, out_ch, stride), precision, opts, bank)?;
        let conv2 = Conv::new(&p / "conv2", ConvShape::conv3x3(out_ch, out_ch, 1), precision, opts, bank)?;
        Self::with_convs(p, in_ch, out_ch, stride, conv1, conv2, precision)
    }

    /// A block of `other`'s shape whose convolutions compute with `other`'s
    /// float weights; its BNs and activations are its own.
    pub(crate) fn sharing_convs(
        p: Path,
        other: &PreActBlock,
        in_ch: i64,
        out_ch: i64,
        stride: i64,
        precision: &Precision,
        bank: &mut WeightBankBuilder,
    ) -> Result<Self> {
        let conv1 = Conv::sharing(&p / "conv1", &other.conv1, precision, bank)?;
        let conv2 = Conv::sharing(&p / "conv2", &other.conv2, precision, bank)?;
        Self::with_convs(p, in_ch, out_ch, stride, conv1, conv2, precision)
    }

    fn with_convs(p: Path, in_ch: i64, out_ch: i64, stride: i64, conv1: Conv, conv2: Conv, precision: &Precision) -> Result<Self> {
        let reshapes = stride != 1 || in_ch != out_ch;
        Ok(PreActBlock {
            pre_bn: BatchNorm::new(&p / "pre_bn", in_ch)?,
            pre_relu: precision.activation(&p / "pre_relu")?,
            conv1,
            bn: BatchNorm::new(&p / "bn", out_ch)?,
            relu: precision.activation(&p / "relu")?,
            conv2,
            shortcut_channel_pad: reshapes.then_some((out_ch - in_ch) / 2),
        })
    }

    /// The block's output; `weights` are the bank's compute-ready weights.
    pub(crate) fn forward(&self, x: &Tensor, weights: &[Tensor], train: bool, opts: ComputeOptions) -> Result<Tensor> {
        let pre = self.pre_relu.forward(&self.pre_bn.forward(x, train)?)?;
        let hidden = self.relu.forward(&self.bn.forward(&self.conv1.forward(&pre, weights, opts)?, train)?)?;
        let out = self.conv2.forward(&hidden, weights, opts)?;
        let residual = match self.shortcut_channel_pad {
            None => x.shallow_clone(),
            // The reference's parameter-free "identity downsample": avgpool 2x2 of the
            // block's raw input x (not the pre-activation, which a quantised network
            // has cut to [0, 1]: the residual stream stays full precision across the
            // stage transitions), zero channels padded on both sides.
            Some(pad) => x.f_avg_pool2d([2, 2], [2, 2], [0, 0], false, true, None::<i64>)?.f_constant_pad_nd([0, 0, 0, 0, pad, pad])?,
        };
        Ok(out.f_add(&residual)?)
    }
}

/// Where each block sits: (module path, in channels, out channels, stride), in forward order.
pub(crate) fn block_layout(arch: &str) -> Result<Vec<(String, i64, i64, i64)>> {
    let n = blocks_per_stage(arch).ok_or_else(|| EngineError::Model(format!("unknown architecture '{arch}'")))?;
    let mut out = Vec::new();
    let mut in_ch = STAGE_WIDTHS[0];
    for (stage, &width) in STAGE_WIDTHS.iter().enumerate() {
        for i in 0..n {
            let stride = if stage > 0 && i == 0 { 2 } else { 1 };
            out.push((format!("layer{}.{i}", stage + 1), in_ch, width, stride));
            in_ch = width;
        }
    }
    Ok(out)
}

/// Stem and head, shared by the plain and the dual-path networks.
pub(crate) struct StemAndHead {
    conv1: Conv,
    final_bn: BatchNorm,
    final_relu: Activation,
    fc_weight: Tensor,
    fc_bias: Tensor,
    fc_quantizer: WeightQuantizer,
}

impl StemAndHead {
    pub(crate) fn new(
        p: &Path,
        in_channels: i64,
        classes: i64,
        precision: &Precision,
        opts: ComputeOptions,
        bank: &mut WeightBankBuilder,
    ) -> Result<Self> {
        let conv1 = Conv::new(p / "conv1", ConvShape::conv3x3(in_channels, STAGE_WIDTHS[0], 1), precision, opts, bank)?;
        let width = STAGE_WIDTHS[2];
        // PyTorch's nn.Linear default: weight and bias ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)).
        let bound = 1.0 / (width as f64).sqrt();
        let fc = p / "fc";
        Ok(StemAndHead {
            conv1,
            final_bn: BatchNorm::new(p / "final_bn", width)?,
            final_relu: precision.activation(p / "final_relu")?,
            fc_weight: fc.f_var("weight", &[classes, width], Init::Uniform { lo: -bound, up: bound })?,
            fc_bias: fc.f_var("bias", &[classes], Init::Uniform { lo: -bound, up: bound })?,
            fc_quantizer: precision.weight_quantizer("fc")?,
        })
    }

    pub(crate) fn stem(&self, x: &Tensor, weights: &[Tensor], opts: ComputeOptions) -> Result<Tensor> {
        self.conv1.forward(&opts.prepare_input(x)?, weights, opts)
    }

    /// Logits (fp32) of the last block's output.
    pub(crate) fn head(&self, x: &Tensor, train: bool, opts: ComputeOptions) -> Result<Tensor> {
        let pooled = self.final_relu.forward(&self.final_bn.forward(x, train)?)?.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?;
        let weight = opts.compute_weight(self.fc_quantizer.quantize(&self.fc_weight)?)?;
        let bias = opts.compute_weight(self.fc_bias.shallow_clone())?;
        Ok(pooled.f_linear(&weight, Some(&bias))?.f_to_kind(Kind::Float)?)
    }
}

pub struct PreActResNet {
    stem_head: StemAndHead,
    blocks: Vec<PreActBlock>,
    /// Every conv weight, quantised together at the start of each forward pass.
    bank: WeightBank,
    opts: ComputeOptions,
}

impl PreActResNet {
    /// Builds `arch` under `p` (normally a VarStore's root) with the bit widths
    /// of `precision`. Initialisation draws from libtorch's global generator:
    /// seed it first for a reproducible model.
    pub fn new(p: &Path, arch: &str, in_channels: i64, classes: i64, precision: &Precision, opts: ComputeOptions) -> Result<Self> {
        let mut bank = WeightBankBuilder::new();
        let stem_head = StemAndHead::new(p, in_channels, classes, precision, opts, &mut bank)?;
        let blocks = block_layout(arch)?
            .into_iter()
            .map(|(path, in_ch, out_ch, stride)| PreActBlock::new(sub_path(p, &path), in_ch, out_ch, stride, precision, opts, &mut bank))
            .collect::<Result<Vec<_>>>()?;
        Ok(PreActResNet { stem_head, blocks, bank: bank.build()?, opts })
    }

    /// Logits (fp32) for a normalised batch (N, C, H, W).
    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let weights = self.bank.quantize(self.opts)?;
        let mut x = self.stem_head.stem(x, &weights, self.opts)?;
        for block in &self.blocks {
            x = block.forward(&x, &weights, train, self.opts)?;
        }
        self.stem_head.head(&x, train, self.opts)
    }
}

#[cfg(test)]
mod tests {
    //! Forward values of single blocks against arithmetic done here in plain
    //! Rust, independent of libtorch: a wrong residual, a wrong quantiser or a
    //! wrong padding changes the numbers.

    use std::collections::BTreeMap;

    use camp_proto::spec::ActQuant;
    use tch::nn::VarStore;
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::precision::Precision;

    /// A block at `b` with `in_ch -> out_ch` channels, weights and activations at `bits`
    /// (32: full precision), its convs set to `w1` and `w2`, its BNs the identity.
    fn block(in_ch: i64, out_ch: i64, stride: i64, bits: u32, w1: &[f32], w2: &[f32]) -> (VarStore, PreActBlock, WeightBank) {
        let vs = VarStore::new(Device::Cpu);
        let weights = BTreeMap::from([("b.conv1".to_string(), bits), ("b.conv2".to_string(), bits)]);
        let activations = BTreeMap::from([("b.pre_relu".to_string(), bits), ("b.relu".to_string(), bits)]);
        let precision = Precision { act_quant: ActQuant::Dorefa, weights, activations };
        let mut bank = WeightBankBuilder::new();
        let block = PreActBlock::new(vs.root() / "b", in_ch, out_ch, stride, &precision, ComputeOptions::default(), &mut bank).unwrap();
        tch::no_grad(|| {
            block.conv1.weight.shallow_clone().copy_(&Tensor::from_slice(w1).view([out_ch, in_ch, 3, 3]));
            block.conv2.weight.shallow_clone().copy_(&Tensor::from_slice(w2).view([out_ch, out_ch, 3, 3]));
            // Running variance 1 - eps: the eval-mode BN divides by exactly 1.
            for bn in [&block.pre_bn, &block.bn] {
                let _ = bn.running_var.shallow_clone().fill_(1.0 - BN_EPS);
            }
        });
        let bank = bank.build().unwrap();
        (vs, block, bank)
    }

    fn forward(block: &PreActBlock, bank: &WeightBank, x: &[f32], shape: [i64; 4]) -> Vec<f32> {
        let opts = ComputeOptions::default();
        let weights = bank.quantize(opts).unwrap();
        let out = tch::no_grad(|| block.forward(&Tensor::from_slice(x).view(shape), &weights, false, opts)).unwrap();
        Vec::<f32>::try_from(out.to_kind(Kind::Float).flatten(0, -1)).unwrap()
    }

    /// A 3x3 convolution, padding 1, over a (c_in, h, w) image.
    fn conv(x: &[f32], c_in: usize, h: usize, w: usize, k: &[f32], c_out: usize, stride: usize) -> Vec<f32> {
        let (ho, wo) = (h.div_ceil(stride), w.div_ceil(stride));
        let mut out = vec![0.0f32; c_out * ho * wo];
        for o in 0..c_out {
            for (i, j) in (0..ho).flat_map(|i| (0..wo).map(move |j| (i, j))) {
                let mut sum = 0.0;
                for c in 0..c_in {
                    for (di, dj) in (0..3).flat_map(|di| (0..3).map(move |dj| (di, dj))) {
                        let (y, z) = ((i * stride + di) as isize - 1, (j * stride + dj) as isize - 1);
                        if (0..h as isize).contains(&y) && (0..w as isize).contains(&z) {
                            sum += k[((o * c_in + c) * 3 + di) * 3 + dj] * x[(c * h + y as usize) * w + z as usize];
                        }
                    }
                }
                out[(o * ho + i) * wo + j] = sum;
            }
        }
        out
    }

    /// DoReFa at `bits` (docs/method.md, "Quantisation"): tanh, scaled to [0, 1] by the tensor's max, rounded, back to [-1, 1].
    fn dorefa_weights(w: &[f32], bits: u32) -> Vec<f32> {
        let levels = ((1u32 << bits) - 1) as f32;
        let max = w.iter().map(|v| v.tanh().abs()).fold(0.0f32, f32::max);
        w.iter().map(|v| 2.0 * ((v.tanh() / max * 0.5 + 0.5) * levels).round_ties_even() / levels - 1.0).collect()
    }

    /// A quantised ReLU at `bits`: clamp to [0, 1], round to the grid; full precision: a ReLU.
    fn act(x: &[f32], bits: u32) -> Vec<f32> {
        if bits == 32 {
            return x.iter().map(|v| v.max(0.0)).collect();
        }
        let levels = ((1u32 << bits) - 1) as f32;
        x.iter().map(|v| (v.clamp(0.0, 1.0) * levels).round_ties_even() / levels).collect()
    }

    /// The block of docs/method.md ("Network") with BNs that are the identity.
    /// A block's channels in and out, its input's side and its stride.
    struct Shape {
        c_in: usize,
        c_out: usize,
        hw: usize,
        stride: usize,
    }

    fn by_hand(x: &[f32], shape: Shape, bits: u32, w1: &[f32], w2: &[f32]) -> Vec<f32> {
        let Shape { c_in, c_out, hw, stride } = shape;
        let q = |w: &[f32]| if bits == 32 { w.to_vec() } else { dorefa_weights(w, bits) };
        let pre = act(x, bits);
        let hidden = act(&conv(&pre, c_in, hw, hw, &q(w1), c_out, stride), bits);
        let ho = hw / stride;
        let out = conv(&hidden, c_out, ho, ho, &q(w2), c_out, 1);
        // Residual: x itself, or avgpool2x2 of x (the raw input) with zero channels on both sides.
        let residual: Vec<f32> = if stride == 1 {
            x.to_vec()
        } else {
            let pad = (c_out - c_in) / 2;
            (0..c_out * ho * ho)
                .map(|idx| {
                    let (o, i, j) = (idx / (ho * ho), idx / ho % ho, idx % ho);
                    if o < pad || o >= pad + c_in {
                        return 0.0;
                    }
                    let c = o - pad;
                    let at = |y: usize, z: usize| x[(c * hw + y) * hw + z];
                    (at(2 * i, 2 * j) + at(2 * i, 2 * j + 1) + at(2 * i + 1, 2 * j) + at(2 * i + 1, 2 * j + 1)) / 4.0
                })
                .collect()
        };
        out.iter().zip(&residual).map(|(a, b)| a + b).collect()
    }

    fn assert_close(got: &[f32], want: &[f32]) {
        assert_eq!(got.len(), want.len());
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!((g - w).abs() < 1e-5, "element {i}: {g} vs {w}\ngot  {got:?}\nwant {want:?}");
        }
    }

    /// Two channels of 4x4, with values below 0 and above 1 (where the pre-activation
    /// differs from x), and none on a rounding tie of the 4-bit grid (0.5 would be:
    /// there the fused kernels and a plain round may part by one step).
    const X: [f32; 32] = [
        -1.5, 0.25, 2.0, -0.75, 0.55, -2.0, 1.25, 0.0, 3.0, -0.5, -1.0, 0.75, 0.125, 1.5, -0.25, 2.5, //
        0.55, -1.25, -3.0, 1.0, 2.25, 0.0, 0.75, -0.5, -0.125, 1.75, 0.55, -2.5, 1.0, -1.0, 2.0, 0.25,
    ];

    #[test]
    fn a_stride_2_block_with_no_conv_output_is_the_pooled_raw_input_padded_with_zero_channels() {
        let (_vs, b, bank) = block(2, 4, 2, 32, &[0.0; 72], &[0.0; 144]);
        let got = forward(&b, &bank, &X, [1, 2, 4, 4]);
        // Worked out from X by hand: each 2x2 window's mean, channels 1 and 2 of 0..4.
        #[rustfmt::skip]
        let want = [
            0.0, 0.0, 0.0, 0.0,
            -0.675, 0.625, 1.03125, 0.5,
            0.3875, -0.4375, 0.40625, 0.075,
            0.0, 0.0, 0.0, 0.0,
        ];
        assert_close(&got, &want);
    }

    /// Kernels whose taps differ, so a transposed or shifted tap shows (none exactly 0:
    /// that is a rounding tie of the 4-bit weight grid).
    fn kernels(n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|i| scale * ((((i * 7) % 11) as f32 - 5.0) / 5.0 + 0.03)).collect()
    }

    #[test]
    fn a_stride_2_block_computes_its_convs_on_the_pre_activation_and_adds_the_pooled_input_in_fp32_and_4_bit() {
        let (w1, w2) = (kernels(72, 0.5), kernels(144, 0.25));
        for bits in [32, 4] {
            let (_vs, b, bank) = block(2, 4, 2, bits, &w1, &w2);
            let got = forward(&b, &bank, &X, [1, 2, 4, 4]);
            assert_close(&got, &by_hand(&X, Shape { c_in: 2, c_out: 4, hw: 4, stride: 2 }, bits, &w1, &w2));
        }
    }

    #[test]
    fn a_plain_block_adds_its_input_in_fp32_and_4_bit() {
        let (w1, w2) = (kernels(36, 0.5), kernels(36, 0.25));
        for bits in [32, 4] {
            let (_vs, b, bank) = block(2, 2, 1, bits, &w1, &w2);
            let got = forward(&b, &bank, &X, [1, 2, 4, 4]);
            assert_close(&got, &by_hand(&X, Shape { c_in: 2, c_out: 2, hw: 4, stride: 1 }, bits, &w1, &w2));
        }
    }
}
