//! The reference's five distiller schedules (configs/*.yaml, rewritten under
//! testdata/distiller/ with the same keys and values), read as distiller 0.3.1
//! reads them: every conv/linear layer's weight bits and every ReLU's
//! activation bits, as the plan resolves them and as the energy model charges them.

use camp_proto::arch;
use camp_proto::energy::{self, EnergyTable};
use camp_proto::quant::BitsPlan;
use camp_proto::schedule;
use camp_proto::spec::{reference_lr_schedule, BitsOverride, JobSpec, Stage};

const FP4: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_fp4.yaml");
const BOOL: &str = include_str!("../../testdata/distiller/preact_resnet20_cifar_pact_bool.yaml");
const BITSKIP_SP: &str = include_str!("../../testdata/distiller/bitskip_sp.yaml");
const BITSKIP_RL: &str = include_str!("../../testdata/distiller/bitskip_rl.yaml");
const BASE_FP32: &str = include_str!("../../testdata/distiller/preact_resnet_cifar_base_fp32.yaml");

/// MACs of preact_resnet20_cifar's stem (3x3, 3 -> 16, 32x32) and head (64 -> 10) on CIFAR-10.
const STEM_HEAD_MACS: f64 = 442_368.0 + 640.0;

/// `stage`'s defaults with the file applied, validated as the CLI does.
fn with_file(yaml: &str, stage: Stage) -> JobSpec {
    let mut spec = JobSpec::defaults_for(stage);
    schedule::parse(yaml, spec.epochs).unwrap().apply(&mut spec);
    camp_proto::ValidSpec::new(spec).unwrap().into_inner()
}

type Bits = Vec<(String, Option<u32>)>;

/// (every conv/linear layer's weight bits, every ReLU's activation bits) of the
/// network `spec` trains, in forward order; also checks that the energy report
/// charges each layer at the bits the plan gives it.
fn resolved(spec: &JobSpec) -> (Bits, Bits) {
    let dual = spec.stage.is_dual_path();
    let plan = BitsPlan::for_spec(spec).unwrap();
    let layers = arch::layers(&spec.arch, dual, 3, 10, 32).unwrap();
    let weights: Bits = layers.iter().map(|l| (l.path.clone(), plan.weight_bits(&l.path))).collect();
    let acts: Bits = arch::relu_paths(&spec.arch, dual, 32).unwrap().into_iter().map(|p| (p.clone(), plan.act_bits(&p))).collect();
    let report = energy::report(spec).unwrap();
    let charged: Bits = report.layers.iter().map(|l| (l.path.clone(), l.bits)).collect();
    assert_eq!(charged, weights, "energy charges each layer at its planned bits");
    (weights, acts)
}

/// Checks every entry of `bits` against `expect(path)` and that there are `count` of them.
fn assert_each(bits: &Bits, count: usize, expect: impl Fn(&str) -> Option<u32>) {
    assert_eq!(bits.len(), count, "{bits:?}");
    for (path, got) in bits {
        assert_eq!(*got, expect(path), "{path}");
    }
}

/// What the plain QAT files give: stem, head, the first pre-activation and the
/// final ReLU in full precision, every other layer at `b` bits.
fn assert_plain_qat(spec: &JobSpec, b: u32) {
    let (weights, acts) = resolved(spec);
    // preact_resnet20_cifar: the stem, 9 blocks of two 3x3 convolutions, the head.
    assert_each(&weights, 1 + 18 + 1, |path| if path == "conv1" || path == "fc" { None } else { Some(b) });
    // A pre_relu and a relu per block, then final_relu.
    assert_each(&acts, 18 + 1, |path| if path == "layer1.0.pre_relu" || path == "final_relu" { None } else { Some(b) });
}

/// What the bitskip files give: stem, head, the first basic-path pre-activation
/// and the final ReLU in full precision, the basic path at 1 bit, the fullbit
/// path and the gates at 4.
fn assert_bitskip(spec: &JobSpec) {
    let by_part = |path: &str| {
        if path.contains(".fullbit_block.") || path.contains(".gate.") {
            Some(4)
        } else {
            assert!(path.contains(".basic_block."), "{path}");
            Some(1)
        }
    };
    let (weights, acts) = resolved(spec);
    // The stem, per block two convolutions on each path and two in the gate, the head.
    assert_each(&weights, 1 + 9 * (2 + 2 + 2) + 1, |path| if path == "conv1" || path == "fc" { None } else { by_part(path) });
    // Per block a pre_relu and a relu on each path and the gate's relu, then final_relu.
    assert_each(&acts, 9 * (2 + 2 + 1) + 1, |path| {
        if path == "layer1.0.basic_block.pre_relu" || path == "final_relu" {
            None
        } else {
            by_part(path)
        }
    });
}

/// The bits the stage's own defaults give, without any file.
fn stage_defaults(stage: Stage, bits: u32) -> JobSpec {
    JobSpec { bits_weights: Some(bits), bits_activations: Some(bits), ..JobSpec::defaults_for(stage) }
}

#[test]
fn the_reference_fp4_file_quantises_every_block_at_4_bits_and_keeps_what_it_lists_in_full_precision() {
    let spec = with_file(FP4, Stage::Qat);
    assert!(!spec.default_overrides);
    assert_plain_qat(&spec, 4);
    assert_eq!(resolved(&spec), resolved(&stage_defaults(Stage::Qat, 4)), "the file lists what camp's qat defaults hold");
    assert_eq!(spec.lr_schedule, reference_lr_schedule());
    let report = energy::report(&spec).unwrap();
    assert!((report.stem_head_pj - STEM_HEAD_MACS * 4.6).abs() < 1e-6);
    assert!((report.normalized(report.all_blocks_pj()) - 1.0).abs() < 1e-12);
}

#[test]
fn the_reference_bool_file_quantises_every_block_at_1_bit_and_keeps_what_it_lists_in_full_precision() {
    let spec = with_file(BOOL, Stage::Qat);
    assert_plain_qat(&spec, 1);
    assert_eq!(resolved(&spec), resolved(&stage_defaults(Stage::Qat, 1)));
    // Its scheduler stops at epoch 191, after every milestone.
    assert_eq!(spec.lr_schedule, reference_lr_schedule());
}

#[test]
fn the_reference_bitskip_sp_file_gives_the_dual_path_its_1_bit_and_4_bit_parts() {
    let spec = with_file(BITSKIP_SP, Stage::Sp);
    assert_eq!(spec.model_arch(), "preact_resnet20_cifar_dualpath");
    assert_bitskip(&spec);
    assert_eq!(resolved(&spec), resolved(&JobSpec::defaults_for(Stage::Sp)));
    // x10 after 3 epochs, then the reference's steps: what camp's sp defaults hold.
    assert_eq!(spec.lr_schedule, JobSpec::defaults_for(Stage::Sp).lr_schedule);
}

#[test]
fn the_reference_bitskip_rl_file_gives_the_dual_path_its_1_bit_and_4_bit_parts() {
    let spec = with_file(BITSKIP_RL, Stage::Rl);
    assert_bitskip(&spec);
    assert_eq!(resolved(&spec), resolved(&JobSpec::defaults_for(Stage::Rl)));
    assert_eq!(spec.lr_schedule, reference_lr_schedule());
}

#[test]
fn the_reference_base_fp32_file_sets_only_the_lr_schedule() {
    let spec = with_file(BASE_FP32, Stage::Baseline);
    assert_eq!(spec, JobSpec::defaults_for(Stage::Baseline));
    let (weights, acts) = resolved(&spec);
    assert_each(&weights, 20, |_| None);
    assert_each(&acts, 19, |_| None);

    // On a quantised job it leaves the quantisation as it was, the stage's defaults included.
    let own = vec![BitsOverride { pattern: "layer3.*".into(), wts: Some(8), acts: Some(8) }];
    let mut qat = JobSpec { lr_schedule: Vec::new(), bits_overrides: own.clone(), ..JobSpec::defaults_for(Stage::Qat) };
    schedule::parse(BASE_FP32, qat.epochs).unwrap().apply(&mut qat);
    assert_eq!((qat.bits_overrides, qat.default_overrides, qat.lr_schedule), (own, true, reference_lr_schedule()));
}

#[test]
fn a_file_whose_list_omits_conv1_and_fc_quantises_them_and_energy_charges_them() {
    let yaml = FP4.replace("      conv1: {wts: null, acts: null}\n", "").replace("      fc: {wts: null, acts: null}\n", "");
    let spec = with_file(&yaml, Stage::Qat);
    let (weights, acts) = resolved(&spec);
    assert_each(&weights, 20, |_| Some(4));
    assert_each(&acts, 19, |path| if path == "layer1.0.pre_relu" || path == "final_relu" { None } else { Some(4) });

    let report = energy::report(&spec).unwrap();
    let four = EnergyTable::default().pj_per_mac(Some(4));
    assert!((report.stem_head_pj - STEM_HEAD_MACS * four).abs() < 1e-9, "{}", report.stem_head_pj);
    let listed = energy::report(&with_file(FP4, Stage::Qat)).unwrap();
    assert!(report.stem_head_pj < listed.stem_head_pj / 70.0, "{} against {}", report.stem_head_pj, listed.stem_head_pj);
    assert_eq!(report.all_blocks_pj(), listed.all_blocks_pj(), "the blocks are charged alike");

    // Only fc left out: the stem stays in full precision, the head is at 4 bits.
    let spec = with_file(&FP4.replace("      fc: {wts: null, acts: null}\n", ""), Stage::Qat);
    let report = energy::report(&spec).unwrap();
    assert_eq!((report.layers[0].bits, report.layers.last().unwrap().bits), (None, Some(4)));
    assert!((report.stem_head_pj - (442_368.0 * 4.6 + 640.0 * four)).abs() < 1e-6);
}

#[test]
fn an_entry_without_acts_or_wts_takes_the_quantizers_bits() {
    let yaml = FP4
        .replace("bits_weights: 4", "bits_weights: 3")
        .replace("bits_activations: 4", "bits_activations: 2")
        .replace("final_relu: {wts: null, acts: null}", "final_relu: {wts: null}")
        .replace("conv1: {wts: null, acts: null}", "conv1: {acts: null}")
        .replace("layer1.0.pre_relu: {wts: null, acts: null}", "layer1.0.pre_relu: {}");
    let spec = with_file(&yaml, Stage::Qat);
    let (weights, acts) = resolved(&spec);
    // conv1's weights and every ReLU take the quantizer's bits; fc's explicit nulls stay full precision.
    assert_each(&weights, 20, |path| if path == "fc" { None } else { Some(3) });
    assert_each(&acts, 19, |_| Some(2));
    let report = energy::report(&spec).unwrap();
    assert_eq!(report.layers[0].bits, Some(3));
}

#[test]
fn a_quantizer_without_bits_overrides_quantises_every_layer_at_its_bits() {
    let start = BOOL.find("    bits_overrides:").unwrap();
    let end = BOOL.find("lr_schedulers:").unwrap();
    let spec = with_file(&format!("{}{}", &BOOL[..start], &BOOL[end..]), Stage::Qat);
    assert_eq!((spec.bits_overrides.len(), spec.default_overrides), (0, false));
    let (weights, acts) = resolved(&spec);
    assert_each(&weights, 20, |_| Some(1));
    assert_each(&acts, 19, |_| Some(1));
}

#[test]
fn the_first_entry_in_file_order_that_matches_wins() {
    let broad = "      layer1.*: {wts: 8, acts: 8}\n";
    let narrow = "      layer1.0.conv1: {wts: 2, acts: 2}\n";
    let list = |first: &str, second: &str| FP4.replace("      conv1: {wts: null, acts: null}\n", &format!("{first}{second}"));

    let spec = with_file(&list(broad, narrow), Stage::Qat);
    let patterns: Vec<&str> = spec.bits_overrides.iter().map(|o| o.pattern.as_str()).collect();
    assert_eq!(patterns, ["layer1.*", "layer1.0.conv1", "layer1.0.pre_relu", "final_relu", "fc"]);
    let plan = BitsPlan::for_spec(&spec).unwrap();
    assert_eq!((plan.weight_bits("layer1.0.conv1"), plan.weight_bits("layer1.1.conv1")), (Some(8), Some(8)));
    assert_eq!(plan.act_bits("layer1.0.pre_relu"), Some(8), "layer1.* comes before layer1.0.pre_relu");
    assert_eq!(plan.weight_bits("conv1"), Some(4), "no entry for conv1 any more");

    let plan = BitsPlan::for_spec(&with_file(&list(narrow, broad), Stage::Qat)).unwrap();
    assert_eq!((plan.weight_bits("layer1.0.conv1"), plan.weight_bits("layer1.1.conv1")), (Some(2), Some(8)));
}
