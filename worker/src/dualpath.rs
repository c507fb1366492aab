//! `preact_resnetN_cifar_dualpath` (docs/method.md, "Stage sp" and "Stage rl"): every block of the base
//! network becomes a 1-bit `basic_block` and a 4-bit `fullbit_block` that
//! compute with the same float conv weights (one parameter, two
//! quantisations; the BNs are each path's own), and a gate (FFGate-II) on the
//! basic block's output that picks, per image, which path's output goes on.
//!
//! Both paths run on the whole batch and are mixed per image with the gate's
//! 0/1 mask: no per-image work, and the energy model charges the 4-bit path
//! only where the mask is 1.

use tch::nn::Path;
use tch::{Kind, Tensor};

use crate::compute::ComputeOptions;
use crate::error::Result;
use crate::fused;
use crate::model::{block_layout, BatchNorm, Conv, ConvShape, PreActBlock, StemAndHead};
use crate::module_path::sub_path;
use crate::precision::Precision;
use crate::quant::Activation;
use crate::weights::{WeightBank, WeightBankBuilder};

/// How the gates decide in training (in evaluation both take `p > 0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GateTraining {
    /// Stage sp: hard decision `p > 0.5` forward, gradient of `p` backward.
    StraightThrough,
    /// Stage rl: an action sampled from the gate's distribution; no gradient
    /// through the mask (the gate learns from the REINFORCE loss).
    Sampled,
}

/// One gate's decision for a batch.
pub struct GateDecision {
    /// 1 = the image takes the 4-bit path; shape (N,), fp32.
    pub mask: Tensor,
    /// The gate's probability of the 4-bit path, `softmax(logits)[1]`, that
    /// the mask thresholds or samples; shape (N,), fp32, no gradient.
    pub p: Tensor,
    /// log pi(a) of the sampled actions (stage rl, training only); shape (N,).
    pub log_prob: Option<Tensor>,
}

/// FFGate-II: conv3x3 (C -> C, stride 2, no bias), BN, ReLU, global average
/// pool, 1x1 conv (C -> 2, bias); softmax over the 2 channels.
struct Gate {
    conv1: Conv,
    bn: BatchNorm,
    relu: Activation,
    conv2: Conv,
}

impl Gate {
    fn new(p: Path, channels: i64, precision: &Precision, opts: ComputeOptions, bank: &mut WeightBankBuilder) -> Result<Self> {
        let conv2_shape = ConvShape { in_ch: channels, out_ch: 2, kernel: 1, stride: 1, bias: true };
        Ok(Gate {
            conv1: Conv::new(&p / "conv1", ConvShape::conv3x3(channels, channels, 2), precision, opts, bank)?,
            bn: BatchNorm::new(&p / "bn", channels)?,
            relu: precision.activation(&p / "relu")?,
            conv2: Conv::new(&p / "conv2", conv2_shape, precision, opts, bank)?,
        })
    }

    /// The two logits (N, 2), fp32.
    fn logits(&self, x: &Tensor, weights: &[Tensor], train: bool, opts: ComputeOptions) -> Result<Tensor> {
        let hidden = self.relu.forward(&self.bn.forward(&self.conv1.forward(x, weights, opts)?, train)?)?;
        let pooled = hidden.f_adaptive_avg_pool2d([1, 1])?;
        Ok(self.conv2.forward(&pooled, weights, opts)?.f_flatten(1, -1)?.f_to_kind(Kind::Float)?)
    }
}

/// A decision that passes no gradient through the mask: an action sampled from
/// the gate's distribution (`sample`, stage rl in training) or `p > 0.5`.
fn decide_without_gradient(logits: &Tensor, sample: bool) -> Result<GateDecision> {
    if sample {
        // a ~ Categorical(softmax) over two actions is a ~ Bernoulli(p).
        let log_probs = logits.f_log_softmax(1, Kind::Float)?;
        let p = tch::no_grad(|| log_probs.f_select(1, 1)?.f_exp())?;
        let action = tch::no_grad(|| p.f_bernoulli())?;
        let log_prob = log_probs.f_gather(1, &action.f_to_kind(Kind::Int64)?.f_unsqueeze(1)?, false)?.f_squeeze_dim(1)?;
        return Ok(GateDecision { mask: action, p, log_prob: Some(log_prob) });
    }
    let p = gate_p(logits)?;
    let mask = tch::no_grad(|| p.f_gt(0.5)?.f_to_kind(Kind::Float))?;
    Ok(GateDecision { mask, p, log_prob: None })
}

/// `softmax(logits)[1]` per image, without gradient (the straight-through mix computes it alike).
fn gate_p(logits: &Tensor) -> Result<Tensor> {
    Ok(tch::no_grad(|| logits.f_softmax(1, Kind::Float)?.f_select(1, 1))?)
}

struct DualPathBlock {
    basic: PreActBlock,
    fullbit: PreActBlock,
    gate: Gate,
}

impl DualPathBlock {
    /// The mixed output; `weights` are the bank's compute-ready weights.
    fn forward(
        &self,
        x: &Tensor,
        weights: &[Tensor],
        train: bool,
        training: GateTraining,
        opts: ComputeOptions,
    ) -> Result<(Tensor, GateDecision)> {
        let basic = self.basic.forward(x, weights, train, opts)?;
        let logits = self.gate.logits(&basic, weights, train, opts)?;
        if train && training == GateTraining::StraightThrough {
            let fullbit = self.fullbit.forward(x, weights, train, opts)?;
            let (out, mask) = fused::straight_through_gate_mix(&logits, &basic, &fullbit)?;
            return Ok((out, GateDecision { mask, p: gate_p(&logits)?, log_prob: None }));
        }
        let decision = decide_without_gradient(&logits, train && training == GateTraining::Sampled)?;
        let fullbit = self.fullbit.forward(x, weights, train, opts)?;
        // (1 - m) * basic + m * fullbit per image: one lerp kernel.
        let n = decision.mask.size()[0];
        let mask = decision.mask.f_view([n, 1, 1, 1])?.f_to_kind(basic.kind())?;
        let out = basic.f_lerp_tensor(&fullbit, &mask)?;
        Ok((out, decision))
    }
}

pub struct DualPathResNet {
    stem_head: StemAndHead,
    blocks: Vec<DualPathBlock>,
    /// Every conv weight, once per quantiser (a shared weight in the 1-bit and
    /// the 4-bit group), quantised together at the start of each forward pass.
    bank: WeightBank,
    training: GateTraining,
    opts: ComputeOptions,
}

/// The result of a forward pass: logits and each block's gate decision in forward order.
pub struct DualPathForward {
    pub logits: Tensor,
    pub gates: Vec<GateDecision>,
}

impl DualPathResNet {
    /// Builds the dual-path variant of the base architecture `arch` under `p`.
    /// The fullbit convolutions take the basic ones' variables (no variables of their own).
    pub fn new(
        p: &Path,
        arch: &str,
        in_channels: i64,
        classes: i64,
        precision: &Precision,
        training: GateTraining,
        opts: ComputeOptions,
    ) -> Result<Self> {
        let mut bank = WeightBankBuilder::new();
        let stem_head = StemAndHead::new(p, in_channels, classes, precision, opts, &mut bank)?;
        let mut blocks = Vec::new();
        for (path, in_ch, out_ch, stride) in block_layout(arch)? {
            let at = sub_path(p, &path);
            let basic = PreActBlock::new(&at / "basic_block", in_ch, out_ch, stride, precision, opts, &mut bank)?;
            let fullbit = PreActBlock::sharing_convs(&at / "fullbit_block", &basic, in_ch, out_ch, stride, precision, &mut bank)?;
            let gate = Gate::new(&at / "gate", out_ch, precision, opts, &mut bank)?;
            blocks.push(DualPathBlock { basic, fullbit, gate });
        }
        Ok(DualPathResNet { stem_head, blocks, bank: bank.build()?, training, opts })
    }

    pub fn forward_t(&self, x: &Tensor, train: bool) -> Result<DualPathForward> {
        let weights = self.bank.quantize(self.opts)?;
        let mut x = self.stem_head.stem(x, &weights, self.opts)?;
        let mut gates = Vec::with_capacity(self.blocks.len());
        for block in &self.blocks {
            let (out, decision) = block.forward(&x, &weights, train, self.training, self.opts)?;
            x = out;
            gates.push(decision);
        }
        Ok(DualPathForward { logits: self.stem_head.head(&x, train, self.opts)?, gates })
    }
}

#[cfg(test)]
mod tests {
    use camp_proto::spec::{JobSpec, Stage};
    use tch::nn::VarStore;
    use tch::{Device, Kind, Tensor};

    use super::*;
    use crate::quant::WeightQuantizer;

    /// The sp network; its second block is `layer1.1`.
    fn sp_net(vs: &VarStore) -> DualPathResNet {
        let spec = JobSpec { stage: Stage::Sp, ..JobSpec::default() };
        let precision = Precision::for_spec(&spec).unwrap();
        DualPathResNet::new(&vs.root(), &spec.arch, 3, 10, &precision, GateTraining::StraightThrough, ComputeOptions::default()).unwrap()
    }

    #[test]
    fn the_1_bit_and_4_bit_convolutions_of_a_block_hold_one_parameter() {
        let vs = VarStore::new(Device::Cpu);
        let net = sp_net(&vs);
        let block = &net.blocks[1];
        let variables = vs.variables();
        assert!(variables.contains_key("layer1.1.basic_block.conv1.weight"));
        assert!(!variables.keys().any(|k| k.contains("fullbit_block.conv")), "the fullbit convs have no variables of their own");
        assert!(variables.contains_key("layer1.1.fullbit_block.bn.weight"), "their BNs are their own");
        let shared = &variables["layer1.1.basic_block.conv1.weight"];
        for conv in [&block.basic.conv1, &block.fullbit.conv1] {
            assert_eq!(conv.weight.data_ptr(), shared.data_ptr());
        }
        assert_eq!(net.bank.quantizer(block.basic.conv1.slot), WeightQuantizer::Binary);
        assert_eq!(net.bank.quantizer(block.fullbit.conv1.slot), WeightQuantizer::Dorefa { bits: 4 });

        // A backward through both paths accumulates both paths' gradients into the one tensor.
        tch::manual_seed(3);
        let x = Tensor::randn([4, 16, 8, 8], (Kind::Float, Device::Cpu));
        let opts = ComputeOptions::default();
        let weight = |b: &PreActBlock| b.conv1.weight.shallow_clone();
        let grad = |loss: Tensor| Tensor::run_backward(&[loss], &[&weight(&block.basic)], false, false).remove(0);
        // Each backward frees its graph, the bank's quantisation included: a fresh one per pass.
        let output = |b: &PreActBlock| b.forward(&x, &net.bank.quantize(opts).unwrap(), false, opts).unwrap().sum(Kind::Float);
        let basic_only = grad(output(&block.basic));
        let fullbit_only = grad(output(&block.fullbit));
        let both = grad(output(&block.basic) + output(&block.fullbit));
        assert!(basic_only.abs().sum(Kind::Float).double_value(&[]) > 0.0 && fullbit_only.abs().sum(Kind::Float).double_value(&[]) > 0.0);
        assert!(both.allclose(&(&basic_only + &fullbit_only), 1e-5, 1e-6, false));
    }

    #[test]
    fn the_gate_mixes_per_image_with_a_hard_mask() {
        let vs = VarStore::new(Device::Cpu);
        let net = sp_net(&vs);
        let block = &net.blocks[1];
        tch::manual_seed(4);
        let x = Tensor::randn([6, 16, 8, 8], (Kind::Float, Device::Cpu));
        let opts = ComputeOptions::default();
        let weights = net.bank.quantize(opts).unwrap();
        let (out, decision) = block.forward(&x, &weights, true, GateTraining::StraightThrough, opts).unwrap();
        let basic = block.basic.forward(&x, &weights, true, opts).unwrap();
        let fullbit = block.fullbit.forward(&x, &weights, true, opts).unwrap();
        let mask = Vec::<f32>::try_from(&decision.mask).unwrap();
        for (i, m) in mask.iter().enumerate() {
            assert!(*m == 0.0 || *m == 1.0, "mask {m}");
            let want = if *m == 1.0 { fullbit.get(i as i64) } else { basic.get(i as i64) };
            assert!(out.get(i as i64).allclose(&want, 1e-5, 1e-6, false), "image {i} takes the path its mask names");
        }
    }
}
