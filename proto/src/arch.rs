//! The layer shapes of the pre-activation ResNets (docs/method.md, "Network" and "Stage sp"), walked
//! from the architecture's definition: the module paths the worker's model uses,
//! and the MACs each convolution and linear layer costs per image.

use serde::Serialize;

use crate::spec_error::{invalid, SpecError};

/// Blocks per stage of `preact_resnet{6n+2}_cifar`.
pub fn blocks_per_stage(arch: &str) -> Option<usize> {
    match arch {
        "preact_resnet20_cifar" => Some(3),
        "preact_resnet32_cifar" => Some(5),
        "preact_resnet44_cifar" => Some(7),
        "preact_resnet56_cifar" => Some(9),
        "preact_resnet110_cifar" => Some(18),
        _ => None,
    }
}

pub const STAGE_WIDTHS: [usize; 3] = [16, 32, 64];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LayerKind {
    Conv,
    Linear,
}

/// Where a layer sits: the stem and head are full precision unless a job's overrides quantise them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Stem,
    Block,
    Gate,
    Head,
}

/// Which path of a dual-path block a layer belongs to (`Plain` outside dual-path blocks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum PathKind {
    Plain,
    Basic,
    Fullbit,
    Gate,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Layer {
    pub path: String,
    pub kind: LayerKind,
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub stride: usize,
    pub out_h: usize,
    pub out_w: usize,
    /// Multiply-accumulates per image: out * in * k * k * out_h * out_w (conv), in * out (linear).
    pub macs: u64,
    pub role: Role,
    /// Index of the residual block in forward order.
    pub block: Option<usize>,
    pub path_kind: PathKind,
}

/// One residual block's place: its module path prefix and shape.
#[derive(Debug, Clone, PartialEq)]
pub struct BlockShape {
    pub prefix: String,
    pub in_ch: usize,
    pub out_ch: usize,
    pub stride: usize,
    pub in_hw: usize,
    pub out_hw: usize,
}

/// Output size of a 3x3 convolution with padding 1.
fn conv3x3_out(hw: usize, stride: usize) -> usize {
    (hw + 2 - 3) / stride + 1
}

/// The residual blocks of `arch` in forward order, for `input_hw`-pixel images.
pub fn blocks(arch: &str, input_hw: usize) -> Result<Vec<BlockShape>, SpecError> {
    let n = blocks_per_stage(arch).ok_or_else(|| invalid("arch", format!("unknown architecture '{arch}'")))?;
    let mut out = Vec::with_capacity(3 * n);
    let (mut ch, mut hw) = (STAGE_WIDTHS[0], input_hw);
    for (s, &width) in STAGE_WIDTHS.iter().enumerate() {
        for i in 0..n {
            let stride = if s > 0 && i == 0 { 2 } else { 1 };
            let out_hw = conv3x3_out(hw, stride);
            out.push(BlockShape { prefix: format!("layer{}.{i}", s + 1), in_ch: ch, out_ch: width, stride, in_hw: hw, out_hw });
            ch = width;
            hw = out_hw;
        }
    }
    Ok(out)
}

fn conv(path: String, in_ch: usize, out_ch: usize, kernel: usize, stride: usize, out_hw: usize) -> Layer {
    Layer {
        path,
        kind: LayerKind::Conv,
        in_ch,
        out_ch,
        kernel,
        stride,
        out_h: out_hw,
        out_w: out_hw,
        macs: (out_ch * in_ch * kernel * kernel * out_hw * out_hw) as u64,
        role: Role::Block,
        block: None,
        path_kind: PathKind::Plain,
    }
}

impl Layer {
    fn placed(self, role: Role, block: Option<usize>, path_kind: PathKind) -> Layer {
        Layer { role, block, path_kind, ..self }
    }
}

/// Every convolution and linear layer of `arch` (its dual-path variant with
/// `dual_path`), in forward order.
pub fn layers(arch: &str, dual_path: bool, in_channels: usize, classes: usize, input_hw: usize) -> Result<Vec<Layer>, SpecError> {
    let mut out = vec![conv("conv1".into(), in_channels, STAGE_WIDTHS[0], 3, 1, input_hw).placed(Role::Stem, None, PathKind::Plain)];
    for (b, block) in blocks(arch, input_hw)?.into_iter().enumerate() {
        let paths: &[(&str, PathKind)] =
            if dual_path { &[("basic_block.", PathKind::Basic), ("fullbit_block.", PathKind::Fullbit)] } else { &[("", PathKind::Plain)] };
        for &(sub, kind) in paths {
            let p = format!("{}.{sub}", block.prefix);
            out.push(conv(format!("{p}conv1"), block.in_ch, block.out_ch, 3, block.stride, block.out_hw).placed(
                Role::Block,
                Some(b),
                kind,
            ));
            out.push(conv(format!("{p}conv2"), block.out_ch, block.out_ch, 3, 1, block.out_hw).placed(Role::Block, Some(b), kind));
        }
        if dual_path {
            // FFGate-II on the block's output: conv3x3 stride 2, BN, ReLU, pool, 1x1 conv to 2 logits.
            let c = block.out_ch;
            let g = format!("{}.gate.", block.prefix);
            out.push(conv(format!("{g}conv1"), c, c, 3, 2, conv3x3_out(block.out_hw, 2)).placed(Role::Gate, Some(b), PathKind::Gate));
            out.push(conv(format!("{g}conv2"), c, 2, 1, 1, 1).placed(Role::Gate, Some(b), PathKind::Gate));
        }
    }
    let last = *STAGE_WIDTHS.last().expect("three stages");
    out.push(Layer {
        path: "fc".into(),
        kind: LayerKind::Linear,
        in_ch: last,
        out_ch: classes,
        kernel: 1,
        stride: 1,
        out_h: 1,
        out_w: 1,
        macs: (last * classes) as u64,
        role: Role::Head,
        block: None,
        path_kind: PathKind::Plain,
    });
    Ok(out)
}

/// Every ReLU's module path (the activations a quantiser may replace).
pub fn relu_paths(arch: &str, dual_path: bool, input_hw: usize) -> Result<Vec<String>, SpecError> {
    let mut out = Vec::new();
    for block in blocks(arch, input_hw)? {
        let subs: &[&str] = if dual_path { &["basic_block.", "fullbit_block."] } else { &[""] };
        for sub in subs {
            out.push(format!("{}.{sub}pre_relu", block.prefix));
            out.push(format!("{}.{sub}relu", block.prefix));
        }
        if dual_path {
            out.push(format!("{}.gate.relu", block.prefix));
        }
    }
    out.push("final_relu".into());
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resnet20_macs_match_the_spec() {
        let layers = layers("preact_resnet20_cifar", false, 3, 10, 32).unwrap();
        let total: u64 = layers.iter().map(|l| l.macs).sum();
        assert_eq!(total, 40_551_040);
        assert_eq!(layers[0].macs, 442_368);
        assert_eq!(layers.last().unwrap().macs, 640);
        assert_eq!(layers.len(), 1 + 18 + 1);
    }

    /// MACs of `preact_resnet{6n+2}_cifar` on 32x32x3 images, by hand: per stage,
    /// 2n 3x3 convolutions, the first of stages 2 and 3 halving the side and
    /// doubling the width.
    fn macs_by_hand(n: u64) -> u64 {
        let conv = |out: u64, inp: u64, side: u64| out * inp * 9 * side * side;
        let stem = conv(16, 3, 32);
        let stage1 = 2 * n * conv(16, 16, 32);
        let stage2 = conv(32, 16, 16) + (2 * n - 1) * conv(32, 32, 16);
        let stage3 = conv(64, 32, 8) + (2 * n - 1) * conv(64, 64, 8);
        stem + stage1 + stage2 + stage3 + 64 * 10
    }

    #[test]
    fn macs_of_resnet20_and_44_equal_a_count_by_hand() {
        for (arch, n) in [("preact_resnet20_cifar", 3), ("preact_resnet44_cifar", 7)] {
            let total: u64 = layers(arch, false, 3, 10, 32).unwrap().iter().map(|l| l.macs).sum();
            assert_eq!(total, macs_by_hand(n), "{arch}");
        }
        assert_eq!(macs_by_hand(3), 40_551_040);
    }

    #[test]
    fn dual_path_adds_a_fullbit_copy_and_a_gate_per_block() {
        let plain = layers("preact_resnet44_cifar", false, 3, 10, 32).unwrap();
        let dual = layers("preact_resnet44_cifar", true, 3, 10, 32).unwrap();
        assert_eq!(dual.len(), plain.len() + 21 * 2 + 21 * 2);
        assert!(dual.iter().any(|l| l.path == "layer3.6.gate.conv2" && l.macs == 128));
        assert_eq!(relu_paths("preact_resnet20_cifar", false, 32).unwrap().len(), 9 * 2 + 1);
    }
}
