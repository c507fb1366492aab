//! The energy model (docs/method.md, "Energy"): MACs from the architecture's layer shapes,
//! charged at each layer's weight bits from a table that a job may override.
//! Stem and head (full precision unless a job's overrides quantise them) are reported apart; the
//! normalised figure divides the blocks' energy by the same architecture's
//! blocks all at 4 bits.

use serde::Serialize;

use crate::arch::{self, PathKind, Role};
pub use crate::energy_table::EnergyTable;
use crate::quant::BitsPlan;
use crate::spec::JobSpec;
use crate::spec_error::{invalid, SpecError};

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LayerEnergy {
    pub path: String,
    pub role: Role,
    pub path_kind: PathKind,
    pub block: Option<usize>,
    pub macs: u64,
    /// Weight bits it is charged at; None = full precision.
    pub bits: Option<u32>,
    pub energy_pj: f64,
}

/// Per-image energy of one network under one bits plan and table.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EnergyReport {
    pub arch: String,
    pub table: String,
    pub layers: Vec<LayerEnergy>,
    pub macs: u64,
    /// Stem and head, at their planned bits (full precision under the stage's defaults).
    pub stem_head_pj: f64,
    /// Blocks (and gates) that always run: every block of a plain network; the
    /// basic path and the gates of a dual-path one.
    pub fixed_pj: f64,
    /// Dual path: each block's 4-bit path, run where its gate says so (empty otherwise).
    pub fullbit_pj: Vec<f64>,
    /// The same architecture's blocks with every quantisable layer at 4 bits.
    pub reference_4bit_pj: f64,
}

impl EnergyReport {
    /// Energy per image of the blocks (stem and head excluded) when block `b` routes
    /// the fraction `shares[b]` of images to its 4-bit path (ignored for plain networks).
    pub fn blocks_pj(&self, shares: &[f64]) -> f64 {
        self.fixed_pj + self.fullbit_pj.iter().zip(shares).map(|(e, s)| e * s).sum::<f64>()
    }

    pub fn normalized(&self, blocks_pj: f64) -> f64 {
        blocks_pj / self.reference_4bit_pj
    }

    /// Blocks' energy with every gate open (the dual path's most) or of the plain network.
    pub fn all_blocks_pj(&self) -> f64 {
        self.fixed_pj + self.fullbit_pj.iter().sum::<f64>()
    }
}

/// Image channels, classes and side of a data set.
pub fn input_shape(dataset: &str) -> Result<(usize, usize, usize), SpecError> {
    match dataset {
        "cifar10" => Ok((3, 10, 32)),
        "cifar100" => Ok((3, 100, 32)),
        "fashion-mnist" => Ok((1, 10, 28)),
        other => Err(invalid("dataset", format!("unknown data set '{other}'"))),
    }
}

/// The energy report of the network `spec` trains.
pub fn report(spec: &JobSpec) -> Result<EnergyReport, SpecError> {
    let (in_ch, classes, hw) = input_shape(&spec.dataset)?;
    let dual = spec.stage.is_dual_path();
    let plan = BitsPlan::for_spec(spec)?;
    let table = &spec.energy_table;
    let all = arch::layers(&spec.arch, dual, in_ch, classes, hw)?;
    let mut module_paths: Vec<String> = all.iter().map(|l| l.path.clone()).collect();
    module_paths.extend(arch::relu_paths(&spec.arch, dual, hw)?);
    plan.check_patterns(&module_paths)?;

    let n_blocks = arch::blocks(&spec.arch, hw)?.len();
    let mut report = EnergyReport {
        arch: spec.model_arch(),
        table: table.name.clone(),
        layers: Vec::with_capacity(all.len()),
        macs: all.iter().map(|l| l.macs).sum(),
        stem_head_pj: 0.0,
        fixed_pj: 0.0,
        fullbit_pj: if dual { vec![0.0; n_blocks] } else { Vec::new() },
        reference_4bit_pj: arch::layers(&spec.arch, false, in_ch, classes, hw)?
            .iter()
            .filter(|l| l.role == Role::Block)
            .map(|l| l.macs as f64 * table.pj_per_mac(Some(4)))
            .sum(),
    };
    for l in all {
        // Every layer at the bits it is trained at (the stem and head are full
        // precision unless a job's own list of overrides quantises them).
        let bits = plan.weight_bits(&l.path);
        let energy_pj = l.macs as f64 * table.pj_per_mac(bits);
        match (l.role, l.path_kind) {
            (Role::Stem | Role::Head, _) => report.stem_head_pj += energy_pj,
            (_, PathKind::Fullbit) => report.fullbit_pj[l.block.expect("fullbit layers sit in a block")] += energy_pj,
            _ => report.fixed_pj += energy_pj,
        }
        report.layers.push(LayerEnergy {
            path: l.path,
            role: l.role,
            path_kind: l.path_kind,
            block: l.block,
            macs: l.macs,
            bits,
            energy_pj,
        });
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::Stage;

    fn spec(stage: Stage, bits: Option<u32>) -> JobSpec {
        JobSpec { stage, bits_weights: bits, bits_activations: bits, ..JobSpec::default() }
    }

    #[test]
    fn table_figures_are_the_specs() {
        let t = EnergyTable::default();
        assert!((t.pj_per_mac(Some(4)) - 0.065).abs() < 1e-12);
        assert!((t.pj_per_mac(Some(1)) - 0.006875).abs() < 1e-12);
        assert_eq!(t.pj_per_mac(None), 4.6);
    }

    #[test]
    fn normalised_energy_is_one_at_4_bits_and_the_table_ratio_elsewhere() {
        for arch in ["preact_resnet20_cifar", "preact_resnet44_cifar"] {
            let at = |stage, bits| {
                let r = report(&JobSpec { arch: arch.into(), ..spec(stage, bits) }).unwrap();
                r.normalized(r.all_blocks_pj())
            };
            assert!((at(Stage::Qat, Some(4)) - 1.0).abs() < 1e-12);
            assert!((at(Stage::Qat, Some(1)) - 0.006875 / 0.065).abs() < 1e-12);
            assert!((at(Stage::Baseline, None) - 4.6 / 0.065).abs() < 1e-9);
        }
        let r = report(&spec(Stage::Qat, Some(4))).unwrap();
        assert!((r.stem_head_pj - (442_368.0 + 640.0) * 4.6).abs() < 1e-6);
        assert_eq!(r.table, "horowitz-45nm");
    }

    #[test]
    fn dual_path_energy_splits_into_fixed_and_per_block_fullbit() {
        let r = report(&spec(Stage::Sp, None)).unwrap();
        assert_eq!(r.fullbit_pj.len(), 9);
        let one_bit = report(&spec(Stage::Qat, Some(1))).unwrap().all_blocks_pj();
        let gates: f64 = r.layers.iter().filter(|l| l.role == Role::Gate).map(|l| l.energy_pj).sum();
        assert!((r.blocks_pj(&[0.0; 9]) - (one_bit + gates)).abs() < 1e-6);
        assert!((r.blocks_pj(&[1.0; 9]) - (one_bit + gates + r.reference_4bit_pj)).abs() < 1e-6);
    }
}
