//! The dual-path network and stages sp and rl on tiny generated data: gates,
//! their gradients, the REINFORCE loss, initialisation from qat and sp
//! checkpoints, and the energy of a routing.

mod common;

use std::collections::BTreeMap;

use camp_proto::arch::{self, PathKind, Role};
use camp_proto::spec::RlTaskReward;
use camp_proto::spec::{JobSpec, Stage};
use camp_worker::checkpoint;
use camp_worker::compute::ComputeOptions;
use camp_worker::network::Network;
use camp_worker::observer::{Control, StageOutcome};
use camp_worker::optim::Sgd;
use camp_worker::precision::Precision;
use camp_worker::reinforce::{rl_loss, Reinforce};
use camp_worker::stage::run_stage;
use common::{completed, fashion_dir, serial, tiny_spec, valid, Recorder};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

fn stage_spec(stage: Stage, epochs: u32) -> JobSpec {
    JobSpec { stage, ..tiny_spec(epochs) }
}

fn build(spec: &JobSpec) -> (VarStore, Network) {
    let vs = VarStore::new(Device::Cpu);
    let net = Network::build(&vs.root(), spec, &Precision::for_spec(spec).unwrap(), 1, 10, ComputeOptions::default()).unwrap();
    (vs, net)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

#[test]
fn the_dual_path_models_weights_are_the_energy_models_layers_with_fullbit_sharing_basic() {
    let _serial = serial(); // the global generator: model init, sampling
    let spec = stage_spec(Stage::Sp, 1);
    let (vs, _) = build(&spec);
    let variables = vs.variables();
    for layer in arch::layers(&spec.arch, true, 1, 10, 28).unwrap() {
        // The fullbit path computes with the basic path's variable.
        let owner = layer.path.replace(".fullbit_block.", ".basic_block.");
        assert_eq!(layer.path != owner, layer.path_kind == PathKind::Fullbit);
        let shape = variables[&format!("{owner}.weight")].size();
        let k = layer.kernel as i64;
        let want: Vec<i64> = match layer.kind {
            arch::LayerKind::Conv => vec![layer.out_ch as i64, layer.in_ch as i64, k, k],
            arch::LayerKind::Linear => vec![layer.out_ch as i64, layer.in_ch as i64],
        };
        assert_eq!(shape, want, "{}", layer.path);
    }
    assert!(variables.contains_key("layer3.2.gate.conv2.bias"));
}

#[test]
fn sp_gates_are_hard_and_get_gradient_through_the_straight_through_estimator() {
    let _serial = serial(); // the global generator: model init, sampling
    tch::manual_seed(7);
    let (vs, net) = build(&stage_spec(Stage::Sp, 1));
    let x = Tensor::randn([8, 1, 28, 28], (Kind::Float, Device::Cpu));
    let labels = Tensor::randint(10, [8], (Kind::Int64, Device::Cpu));
    let out = net.forward(&x, true).unwrap();
    assert_eq!(out.gates.len(), 9);
    for gate in &out.gates {
        assert!(values(&gate.mask).iter().all(|m| *m == 0.0 || *m == 1.0));
        assert!(gate.log_prob.is_none());
    }
    let loss = out.logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0);
    let variables = vs.variables();
    let gate_params: Vec<&Tensor> =
        ["layer1.0.gate.conv1.weight", "layer2.1.gate.conv2.weight", "layer3.2.gate.conv2.bias"].iter().map(|n| &variables[*n]).collect();
    for (grad, name) in Tensor::run_backward(&[loss], &gate_params, false, false).iter().zip(["conv1", "conv2", "bias"]) {
        assert!(grad.abs().sum(Kind::Float).double_value(&[]) > 0.0, "no gradient reaches gate {name}");
    }
}

#[test]
fn an_rl_gates_log_prob_is_the_log_of_the_probability_of_its_sampled_action() {
    let _serial = serial(); // the global generator: model init, sampling
    tch::manual_seed(8);
    let (_vs, net) = build(&stage_spec(Stage::Rl, 1));
    let x = Tensor::randn([16, 1, 28, 28], (Kind::Float, Device::Cpu));
    let out = net.forward(&x, true).unwrap();
    assert_eq!(out.gates.len(), 9);
    let (mut actions, mut widest) = (Vec::new(), 0.0f64);
    for (i, gate) in out.gates.iter().enumerate() {
        let log_prob = gate.log_prob.as_ref().expect("sampled actions carry log pi(a)");
        assert!(log_prob.requires_grad(), "REINFORCE reaches gate {i} through log pi(a)");
        assert!(!gate.mask.requires_grad() && !gate.p.requires_grad());
        // pi(a) from the gate's p alone: p where a = 1, 1 - p where a = 0.
        for (n, ((a, p), got)) in values(&gate.mask).into_iter().zip(values(&gate.p)).zip(values(log_prob)).enumerate() {
            assert!(a == 0.0 || a == 1.0, "gate {i} image {n}: action {a}");
            assert!(p > 0.0 && p < 1.0, "gate {i} image {n}: p {p}");
            let pi = if a == 1.0 { p } else { 1.0 - p };
            // To 1e-6, or 1e-6 of pi(a) for a rare action: an fp32 p near 1 leaves 1 - p few digits.
            let tolerance = 1e-6 * pi.recip().max(1.0);
            let want = pi.ln();
            assert!((got - want).abs() < tolerance, "gate {i} image {n}: log pi(a = {a}) is {got}, ln of its probability {want} (p {p})");
            actions.push(a);
            widest = widest.max((p.ln() - (1.0 - p).ln()).abs());
        }
    }
    assert!(actions.contains(&0.0) && actions.contains(&1.0), "both actions were drawn");
    assert!(widest > 0.01, "some p far enough from 1/2 for the two actions' log-probabilities to differ");
    let eval = tch::no_grad(|| net.forward(&x, false).unwrap());
    assert!(eval.gates.iter().all(|g| g.log_prob.is_none()));
}

/// ResNet-20's blocks in forward order.
fn blocks() -> Vec<String> {
    (1..=3).flat_map(|stage| (0..3).map(move |block| format!("layer{stage}.{block}"))).collect()
}

/// Fixes each gate's probability of the 4-bit path, for every image, at `ps`
/// (forward order): the gate's BN gives 0 (weight and bias 0), so its 1x1
/// conv gives its bias, the logits (0, ln(p / (1 - p))).
fn fix_gates(vs: &VarStore, ps: &[f64]) {
    let variables = vs.variables();
    let blocks = blocks();
    assert_eq!(blocks.len(), ps.len());
    tch::no_grad(|| {
        for (block, p) in blocks.iter().zip(ps) {
            for name in ["weight", "bias"] {
                let _ = variables[&format!("{block}.gate.bn.{name}")].shallow_clone().zero_();
            }
            let logits = Tensor::from_slice(&[0.0f32, (p / (1.0 - p)).ln() as f32]);
            variables[&format!("{block}.gate.conv2.bias")].shallow_clone().copy_(&logits);
        }
    });
}

/// Gate probabilities on both sides of 1/2, most of them near it.
const FIXED_PS: [f64; 9] = [0.55, 0.6, 0.7, 0.9, 0.45, 0.4, 0.3, 0.1, 0.52];

#[test]
fn in_rl_training_the_gates_sample_their_actions_so_the_share_of_ones_approaches_p_and_a_seed_repeats_the_draws() {
    let _serial = serial(); // the global generator: model init, sampling
    tch::manual_seed(9);
    let (vs, net) = build(&stage_spec(Stage::Rl, 1));
    fix_gates(&vs, &FIXED_PS);
    let n = 2048;
    let x = Tensor::randn([n, 1, 8, 8], (Kind::Float, Device::Cpu));
    let draw = |seed: i64| {
        tch::manual_seed(seed);
        net.forward(&x, true).unwrap().gates
    };
    let gates = draw(21);
    for (i, (gate, p)) in gates.iter().zip(FIXED_PS).enumerate() {
        assert!(values(&gate.p).iter().all(|q| (q - p).abs() < 1e-6), "gate {i}: p is the fixed {p}");
        let actions = values(&gate.mask);
        assert!(actions.iter().all(|a| *a == 0.0 || *a == 1.0));
        let against = actions.iter().filter(|a| (**a == 1.0) != (p > 0.5)).count();
        assert!(against > 0, "gate {i} (p {p}): every action is p > 1/2: thresholded, not sampled");
        // Within 4 standard deviations of the share of n draws of Bernoulli(p).
        let share = actions.iter().sum::<f64>() / n as f64;
        let sd = (p * (1.0 - p) / n as f64).sqrt();
        println!("gate {i}: p {p}, share of ones {share:.4} (sd {sd:.4}), {against} actions against p > 1/2");
        assert!((share - p).abs() < 4.0 * sd, "gate {i}: share of ones {share} for p {p}");
    }
    // The same seed draws the same actions; another seed others.
    let again = draw(21);
    assert!(gates.iter().zip(&again).all(|(a, b)| a.mask.equal(&b.mask)));
    let other = draw(22);
    assert!(gates.iter().zip(&other).any(|(a, b)| !a.mask.equal(&b.mask)));
}

#[test]
fn in_evaluation_and_in_sp_training_a_gates_mask_is_exactly_p_above_one_half() {
    let _serial = serial(); // the global generator: model init, sampling
    tch::manual_seed(10);
    let x = Tensor::randn([64, 1, 8, 8], (Kind::Float, Device::Cpu));
    for (stage, train) in [(Stage::Rl, false), (Stage::Sp, true), (Stage::Sp, false)] {
        let (vs, net) = build(&stage_spec(stage, 1));
        let forward = |seed: i64| {
            tch::manual_seed(seed);
            tch::no_grad(|| net.forward(&x, train).unwrap().gates)
        };
        // Freshly initialised gates: p differs per image.
        let gates = forward(1);
        let mut sides = [0, 0];
        for (i, gate) in gates.iter().enumerate() {
            assert!(gate.log_prob.is_none());
            for (n, (m, p)) in values(&gate.mask).into_iter().zip(values(&gate.p)).enumerate() {
                assert_eq!(m, if p > 0.5 { 1.0 } else { 0.0 }, "{stage:?} train {train}: gate {i} image {n}, p {p}");
                sides[(p > 0.5) as usize] += 1;
            }
        }
        assert!(sides[0] > 0 && sides[1] > 0, "{stage:?} train {train}: p on both sides of 1/2: {sides:?}");
        // Fixed near 1/2: every image takes the side of p, whatever the seed.
        fix_gates(&vs, &FIXED_PS);
        for seed in [2, 3] {
            for (i, (gate, p)) in forward(seed).iter().zip(FIXED_PS).enumerate() {
                let want = if p > 0.5 { 1.0 } else { 0.0 };
                assert!(values(&gate.mask).iter().all(|m| *m == want), "{stage:?} train {train}: gate {i} (p {p}), seed {seed}");
            }
        }
    }
}

#[test]
fn rl_loss_equals_the_specs_formula_on_a_fixed_example() {
    // 2 images, 3 classes, G = 2 gates.
    let logits = Tensor::from_slice(&[2.0f32, 0.5, -1.0, 0.1, 0.2, 0.3]).view([2, 3]);
    let targets = Tensor::from_slice(&[0i64, 2]);
    let actions = [Tensor::from_slice(&[1.0f32, 0.0]), Tensor::from_slice(&[0.0f32, 0.0])];
    let log_probs: Vec<Tensor> = [[-0.2f32, -1.5], [-0.7, -0.1]].iter().map(|v| Tensor::from_slice(v).set_requires_grad(true)).collect();
    let (alpha, gamma, rl_weight) = (0.3, 0.9, 0.5);
    let knobs = Reinforce { alpha, gamma, rl_weight, task_reward: RlTaskReward::PerImage };
    let loss = rl_loss(&logits, &targets, &actions, &log_probs, knobs).unwrap();

    // By hand: CE_n = logsumexp(logits_n) - logits_n[target_n].
    let lse = |v: [f64; 3]| v.iter().map(|x| x.exp()).sum::<f64>().ln();
    let ce = [lse([2.0, 0.5, -1.0]) - 2.0, lse([0.1, 0.2, 0.3]) - 0.3];
    let r_g = [-ce[0], -ce[1]];
    let reward = |a: f64| (1.0 - a) * alpha / 2.0;
    // Gate 2 (the last): actions [0, 0]; gate 1: actions [1, 0].
    let r2 = [reward(0.0) + gamma * r_g[0], reward(0.0) + gamma * r_g[1]];
    let r1 = [reward(1.0) + gamma * r2[0], reward(0.0) + gamma * r2[1]];
    let lp = [[-0.2, -1.5], [-0.7, -0.1]];
    let mean = |a: f64, b: f64| (a + b) / 2.0;
    let want = mean(-lp[0][0] * rl_weight * r1[0], -lp[0][1] * rl_weight * r1[1])
        + mean(-lp[1][0] * rl_weight * r2[0], -lp[1][1] * rl_weight * r2[1]);
    let got = loss.double_value(&[]);
    println!("rl loss {got}, by hand {want}");
    assert!((got - want).abs() < 1e-6, "{got} vs {want}");

    // The returns carry no gradient: d loss / d log pi(a_i) = -rl_weight * R_i / N.
    let grads = Tensor::run_backward(&[loss], &log_probs.iter().collect::<Vec<_>>(), false, false);
    let close = |g: &Tensor, r: [f64; 2]| {
        let g = values(g);
        (0..2).all(|n| (g[n] + rl_weight * r[n] / 2.0).abs() < 1e-6)
    };
    assert!(close(&grads[0], r1) && close(&grads[1], r2));
    assert!(rl_loss(&logits, &targets, &actions, &log_probs[..1], knobs).is_err());
}

/// A checkpoint of `spec`'s network after `edit` changed its tensors.
fn edited_checkpoint(bytes: &[u8], edit: impl Fn(&str, &Tensor) -> Option<Tensor>) -> Vec<u8> {
    let state = checkpoint::load(bytes).unwrap();
    let (vs, _net) = build(&state.meta.spec);
    let tensors: BTreeMap<String, Tensor> =
        state.model.iter().map(|(k, v)| (k.clone(), edit(k, v).unwrap_or_else(|| v.shallow_clone()))).collect();
    checkpoint::load_weights(&vs, &tensors).unwrap();
    checkpoint::save(&vs, &Sgd::new(&vs, 0.9, 0.0).unwrap(), &state.meta).unwrap()
}

#[test]
fn energy_counts_the_1_bit_path_and_gates_always_and_the_4_bit_path_where_chosen() {
    let _serial = serial();
    let dir = fashion_dir(32, 24);
    let spec = stage_spec(Stage::Sp, 1);
    let mut rec = Recorder::default();
    completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut rec).unwrap());
    let trained = &rec.checkpoints[0].bytes;
    // The shared weights are stored once.
    let stored = checkpoint::load(trained).unwrap().model;
    assert!(stored.contains_key("layer2.0.basic_block.conv2.weight") && !stored.keys().any(|k| k.contains("fullbit_block.conv")));
    checkpoint::verify(trained).unwrap();

    // Independently of the engine's energy report: MACs from the layer list, pJ per
    // MAC from the table's formula (0.2 (b/8)^2 + 0.03 (b/8)).
    let pj = |bits: f64| 0.2 * (bits / 8.0).powi(2) + 0.03 * (bits / 8.0);
    let layers = arch::layers(&spec.arch, true, 1, 10, 28).unwrap();
    let sum = |keep: &dyn Fn(&arch::Layer) -> bool, bits: f64| -> f64 {
        layers.iter().filter(|l| keep(l)).map(|l| l.macs as f64 * pj(bits)).sum()
    };
    let one_bit_blocks = sum(&|l| l.path_kind == PathKind::Basic, 1.0);
    let gates = sum(&|l| l.role == Role::Gate, 4.0);
    let four_bit_blocks = sum(&|l| l.path_kind == PathKind::Fullbit, 4.0);
    let reference = four_bit_blocks; // the base network's blocks all at 4 bits

    // Gates forced shut (logit of "4 bits" far below) or open, by their conv2 bias; lr
    // negligible so that they stay so through the epoch.
    for (open, want_share, want_pj) in [(false, 0.0, one_bit_blocks + gates), (true, 1.0, one_bit_blocks + gates + four_bit_blocks)] {
        let bias = if open { [-100.0f32, 100.0] } else { [100.0f32, -100.0] };
        let init = edited_checkpoint(trained, |name, _| name.ends_with("gate.conv2.bias").then(|| Tensor::from_slice(&bias)));
        let mut forced = spec.clone();
        forced.lr = 1e-30;
        let mut rec = Recorder::default();
        let summary = completed(run_stage(&valid(&forced), dir.path(), Device::Cpu, None, Some(&init), &mut rec).unwrap());
        println!(
            "gates {}: share {:?}, energy {} pJ (by hand {want_pj}), normalised {}",
            if open { "open" } else { "shut" },
            summary.fullbit_share,
            summary.energy_pj,
            summary.normalized_energy
        );
        assert_eq!(summary.fullbit_share, Some(want_share));
        assert_eq!(summary.block_fullbit_shares, vec![want_share; 9]);
        assert!((summary.energy_pj - want_pj).abs() < 1e-6 * want_pj, "{} vs {want_pj}", summary.energy_pj);
        assert!((summary.normalized_energy - want_pj / reference).abs() < 1e-9);
        assert_eq!(rec.series("fullbit_share"), vec![(1, want_share)]);
        assert_eq!(rec.series("block8_fullbit_share"), vec![(1, want_share)]);
    }
}

#[test]
fn sp_starts_from_a_qat_checkpoint_and_rl_from_an_sp_checkpoint() {
    let _serial = serial();
    let dir = fashion_dir(32, 16);
    let mut qat_rec = Recorder::default();
    let qat = JobSpec { bits_weights: Some(4), bits_activations: Some(4), ..stage_spec(Stage::Qat, 1) };
    completed(run_stage(&valid(&qat), dir.path(), Device::Cpu, None, None, &mut qat_rec).unwrap());
    let qat_state = checkpoint::load(&qat_rec.checkpoints[0].bytes).unwrap();

    let mut sp = stage_spec(Stage::Sp, 1);
    sp.lr = 1e-30;
    let mut sp_rec = Recorder::default();
    completed(run_stage(&valid(&sp), dir.path(), Device::Cpu, None, Some(&qat_rec.checkpoints[0].bytes), &mut sp_rec).unwrap());
    let sp_state = checkpoint::load(&sp_rec.checkpoints[0].bytes).unwrap();
    let same = |a: &Tensor, b: &Tensor| (a - b).abs().max().double_value(&[]) < 1e-12;
    // Stem, basic blocks (convs and BNs), final BN and head come from the qat network.
    for (sp_name, qat_name) in [
        ("conv1.weight", "conv1.weight"),
        ("layer2.0.basic_block.conv1.weight", "layer2.0.conv1.weight"),
        ("layer3.2.basic_block.pre_bn.bias", "layer3.2.pre_bn.bias"),
        ("final_bn.weight", "final_bn.weight"),
        ("fc.bias", "fc.bias"),
    ] {
        assert!(same(&sp_state.model[sp_name], &qat_state.model[qat_name]), "{sp_name}");
    }
    // Fullbit BNs and gates start fresh.
    assert!(same(&sp_state.model["layer2.0.fullbit_block.bn.weight"], &Tensor::ones([32], (Kind::Float, Device::Cpu))));
    assert!(sp_rec.logs.iter().any(|l| l.starts_with("initialised")));

    let mut rl = stage_spec(Stage::Rl, 1);
    rl.lr = 1e-30;
    let mut rl_rec = Recorder::default();
    let summary =
        completed(run_stage(&valid(&rl), dir.path(), Device::Cpu, None, Some(&sp_rec.checkpoints[0].bytes), &mut rl_rec).unwrap());
    let rl_state = checkpoint::load(&rl_rec.checkpoints[0].bytes).unwrap();
    for (name, t) in &sp_state.model {
        if !name.contains("running_") {
            assert!(same(t, &rl_state.model[name]), "{name}");
        }
    }
    assert!(summary.fullbit_share.is_some());
}

#[test]
fn an_interrupted_rl_run_resumes_to_the_same_end() {
    let _serial = serial();
    let dir = fashion_dir(40, 16); // 3 steps per epoch
    let spec = stage_spec(Stage::Rl, 2);
    let mut whole = Recorder::default();
    completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut whole).unwrap());
    let mut first = Recorder::with_control(4, Control::Interrupt);
    assert!(matches!(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut first).unwrap(), StageOutcome::Interrupted));
    let mut rest = Recorder::default();
    completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, Some(&first.checkpoints.last().unwrap().bytes), None, &mut rest).unwrap());
    let (a, b) = (
        checkpoint::load(&whole.checkpoints.last().unwrap().bytes).unwrap(),
        checkpoint::load(&rest.checkpoints.last().unwrap().bytes).unwrap(),
    );
    for (name, t) in &a.model {
        assert!(t.equal(&b.model[name]), "{name} differs after resume");
    }
}
