//! The quantisers against hand-computed values (docs/method.md, "Quantisation"), and the fused
//! implementations against a plain elementwise transcription of the spec's
//! formulas (clamp, round, detach identity) in values and gradients; the
//! weight bank's batched quantisation against the per-weight one.

mod common;

use camp_proto::spec::ActQuant;
use camp_worker::compute::ComputeOptions;
use camp_worker::quant::{Activation, WeightQuantizer};
use camp_worker::weights::WeightBankBuilder;
use common::serial;
use tch::nn::VarStore;
use tch::{Device, Kind, Tensor};

fn leaf(values: &[f64]) -> Tensor {
    Tensor::from_slice(values).to_kind(Kind::Float).set_requires_grad(true)
}

fn values(t: &Tensor) -> Vec<f64> {
    Vec::<f64>::try_from(t.to_kind(Kind::Double).reshape([-1])).unwrap()
}

fn assert_close(got: &[f64], want: &[f64], tol: f64, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= tol, "{what}[{i}]: got {g}, want {w} (all: {got:?})");
    }
}

/// Gradient of sum(upstream * f(x)) with respect to each of `inputs`.
fn gradients(output: &Tensor, upstream: &Tensor, inputs: &[&Tensor]) -> Vec<Vec<f64>> {
    let loss = (output * upstream).sum(Kind::Float);
    Tensor::run_backward(&[loss], inputs, false, false).iter().map(values).collect()
}

fn weight(bits: u32) -> WeightQuantizer {
    WeightQuantizer::for_bits(Some(bits)).unwrap()
}

fn activation(bits: u32, scheme: ActQuant) -> (VarStore, Activation) {
    let vs = VarStore::new(Device::Cpu);
    let act = Activation::new(vs.root() / "relu", Some(bits), scheme).unwrap();
    (vs, act)
}

#[test]
fn bit_widths_outside_the_offered_range_are_refused() {
    assert_eq!(WeightQuantizer::for_bits(None).unwrap(), WeightQuantizer::Full);
    assert_eq!(WeightQuantizer::for_bits(Some(32)).unwrap(), WeightQuantizer::Full);
    assert_eq!(weight(1), WeightQuantizer::Binary);
    assert_eq!(weight(4), WeightQuantizer::Dorefa { bits: 4 });
    for bits in [0, 9, 16] {
        assert!(WeightQuantizer::for_bits(Some(bits)).is_err(), "{bits}");
    }
    let vs = VarStore::new(Device::Cpu);
    assert!(Activation::new(vs.root(), Some(12), ActQuant::Dorefa).is_err());
    assert!(matches!(Activation::new(vs.root(), None, ActQuant::Pact).unwrap(), Activation::Relu));
}

#[test]
fn full_precision_weights_are_unchanged() {
    let w = leaf(&[0.1, -2.0, 3.5]);
    let q = WeightQuantizer::Full.quantize(&w).unwrap();
    assert_eq!(values(&q), values(&w));
}

#[test]
fn binary_weights_are_sign_times_mean_magnitude_with_identity_gradient() {
    // mean |w| = (0.5 + 1 + 2 + 0.5) / 4 = 1.
    let w = leaf(&[0.5, -1.0, 2.0, -0.5]);
    let q = weight(1).quantize(&w).unwrap();
    assert_close(&values(&q), &[1.0, -1.0, 1.0, -1.0], 1e-7, "values");
    let upstream = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
    assert_close(&gradients(&q, &upstream, &[&w])[0], &[1.0, 2.0, 3.0, 4.0], 1e-7, "gradient");
}

#[test]
fn dorefa_weights_match_hand_computed_values_and_gradients() {
    // t = tanh(w), u = t / max|t| * 0.5 + 0.5, n * u (computed by hand):
    // [8.2754, 11.0952, 1.5749, 15, 5.2336] / 15 for n = 15, likewise for n = 3 and 255.
    let w_values = [0.1, 0.5, -1.0, 2.0, -0.3];
    let cases: [(u32, [f64; 5]); 3] = [
        (2, [1.0 / 3.0, 1.0 / 3.0, -1.0, 1.0, -1.0 / 3.0]),
        (4, [2.0 * 8.0 / 15.0 - 1.0, 2.0 * 11.0 / 15.0 - 1.0, 2.0 * 2.0 / 15.0 - 1.0, 1.0, 2.0 * 5.0 / 15.0 - 1.0]),
        (8, [2.0 * 141.0 / 255.0 - 1.0, 2.0 * 189.0 / 255.0 - 1.0, 2.0 * 27.0 / 255.0 - 1.0, 1.0, 2.0 * 89.0 / 255.0 - 1.0]),
    ];
    let upstream_values = [0.3, -1.2, 0.7, 2.0, 0.4];
    // STE through the rounding only: the gradient is that of 2u - 1 = tanh(w) / m with
    // m = max|tanh(w)| = tanh(w[3]) (the largest |w|):
    // d/dw_i = g_i (1 - t_i^2) / m, and for i = 3 also - sum_j g_j t_j / m^2 * (1 - t_3^2).
    let t: Vec<f64> = w_values.iter().map(|w: &f64| w.tanh()).collect();
    let m = t[3];
    let g_dot_t: f64 = upstream_values.iter().zip(&t).map(|(g, t)| g * t).sum();
    let mut want_grad: Vec<f64> = (0..5).map(|i| upstream_values[i] * (1.0 - t[i] * t[i]) / m).collect();
    want_grad[3] -= g_dot_t / (m * m) * (1.0 - t[3] * t[3]);

    for (bits, want) in cases {
        let w = leaf(&w_values);
        let q = weight(bits).quantize(&w).unwrap();
        assert_close(&values(&q), &want, 1e-6, &format!("{bits}-bit values"));
        let upstream = Tensor::from_slice(&upstream_values).to_kind(Kind::Float);
        assert_close(&gradients(&q, &upstream, &[&w])[0], &want_grad, 1e-5, &format!("{bits}-bit gradient"));
    }
}

#[test]
fn dorefa_activations_match_hand_computed_values_and_pass_gradient_inside_0_1() {
    let x_values = [-0.3, 0.2, 0.4, 0.6, 0.93, 1.7];
    let cases: [(u32, [f64; 6]); 3] = [
        // clamp -> [0, 0.2, 0.4, 0.6, 0.93, 1], then round(v * n) / n.
        (1, [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]),
        (2, [0.0, 1.0 / 3.0, 1.0 / 3.0, 2.0 / 3.0, 1.0, 1.0]),
        (4, [0.0, 3.0 / 15.0, 6.0 / 15.0, 9.0 / 15.0, 14.0 / 15.0, 1.0]),
    ];
    for (bits, want) in cases {
        let (_vs, act) = activation(bits, ActQuant::Dorefa);
        let x = leaf(&x_values);
        let y = act.forward(&x).unwrap();
        assert_close(&values(&y), &want, 1e-6, &format!("{bits}-bit values"));
        let upstream = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]);
        assert_close(&gradients(&y, &upstream, &[&x])[0], &[0.0, 2.0, 3.0, 4.0, 5.0, 0.0], 0.0, &format!("{bits}-bit gradient"));
    }
}

#[test]
fn dorefa_activation_gradient_includes_exactly_0_and_1_in_fp32_and_bf16() {
    // The clamp's subgradient at its bounds is 1 (the reference's torch.clamp);
    // the nearest values outside get 0, denormals included.
    let below_zero = -f32::from_bits(1) as f64; // the negative denormal nearest 0
    let x_values = [below_zero, -0.0, 0.0, 0.25, 1.0, 1.0 + f32::EPSILON as f64, 3.0];
    let upstream = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0];
    let want_grad = [0.0, 2.0, 3.0, 4.0, 5.0, 0.0, 0.0];
    let (_vs, act) = activation(2, ActQuant::Dorefa);
    let x = leaf(&x_values);
    let y = act.forward(&x).unwrap();
    assert_close(&values(&y), &[0.0, 0.0, 0.0, 1.0 / 3.0, 1.0, 1.0, 1.0], 1e-7, "fp32 values");
    assert_close(&gradients(&y, &Tensor::from_slice(&upstream).to_kind(Kind::Float), &[&x])[0], &want_grad, 0.0, "fp32 gradient");

    // bf16 holds 1 + 2^-7 as the value above 1; 2^-133 as the denormal below 0.
    let x_values = [-(2f64.powi(-133)), -0.0, 0.0, 0.25, 1.0, 1.0 + 2f64.powi(-7), 3.0];
    let x = Tensor::from_slice(&x_values).to_kind(Kind::BFloat16).set_requires_grad(true);
    assert_eq!(Vec::<f64>::try_from(&x.to_kind(Kind::Double)).unwrap(), x_values, "each value is a bf16");
    let y = act.forward(&x).unwrap();
    assert_eq!(y.kind(), Kind::BFloat16);
    let grad = gradients(&y, &Tensor::from_slice(&upstream).to_kind(Kind::BFloat16), &[&x]);
    assert_close(&grad[0], &want_grad, 0.0, "bf16 gradient");
}

#[test]
fn pact_clips_at_the_learned_value_and_its_gradient_is_one_above_the_clip() {
    let (vs, act) = activation(2, ActQuant::Pact);
    let clip_val = vs.variables()["relu.clip_val"].shallow_clone();
    assert_eq!(values(&clip_val), [8.0]);
    // clamp to [0, 8], then round(y * 3 / 8) * 8 / 3: [0, 0.75 -> 1, 1.875 -> 2, 3, 3].
    let x = leaf(&[-1.0, 2.0, 5.0, 9.0, 12.0]);
    let y = act.forward(&x).unwrap();
    assert_close(&values(&y), &[0.0, 8.0 / 3.0, 16.0 / 3.0, 8.0, 8.0], 1e-6, "values");
    let upstream = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0, 5.0]);
    let grads = gradients(&y, &upstream, &[&x, &clip_val]);
    assert_close(&grads[0], &[0.0, 2.0, 3.0, 0.0, 0.0], 0.0, "input gradient");
    // d y / d clip = 1 where x >= clip, else 0: 4 + 5.
    assert_close(&grads[1], &[9.0], 0.0, "clip gradient");
}

/// The spec's formulas, one elementwise op at a time, with the detach identity
/// `x + (f(x) - x).detach()` for every straight-through estimator.
mod plain {
    use tch::{Kind, Tensor};

    fn straight_through(x: &Tensor, fx: &Tensor) -> Tensor {
        x + (fx - x).detach()
    }

    fn round_k(v: &Tensor, bits: u32) -> Tensor {
        let n = ((1u64 << bits) - 1) as f64;
        (v * n).round() / n
    }

    pub fn weight(w: &Tensor, bits: u32) -> Tensor {
        if bits == 1 {
            let e = w.abs().mean(Kind::Float);
            return straight_through(w, &(w.sign() * e));
        }
        let t = w.tanh();
        let t = &t / t.abs().max() * 0.5 + 0.5;
        2.0 * straight_through(&t, &round_k(&t, bits)) - 1.0
    }

    pub fn dorefa_activation(x: &Tensor, bits: u32) -> Tensor {
        let c = x.clamp(0.0, 1.0);
        straight_through(&c, &round_k(&c, bits))
    }

    pub fn pact_activation(x: &Tensor, clip: &Tensor, bits: u32) -> Tensor {
        let n = ((1u64 << bits) - 1) as f64;
        let y = x.relu().where_self(&x.lt_tensor(clip), clip);
        let scale = clip.detach() / n;
        straight_through(&y, &((&y / &scale).round() * &scale))
    }
}

#[test]
fn fused_quantizers_equal_the_plain_formulas_on_random_tensors() {
    let _serial = serial(); // the global generator
    tch::manual_seed(5);
    let upstream_w = Tensor::randn([64, 32, 3, 3], (Kind::Float, Device::Cpu));
    for bits in [1, 2, 3, 4, 8] {
        let w = (Tensor::randn([64, 32, 3, 3], (Kind::Float, Device::Cpu)) * 0.2).set_requires_grad(true);
        let fused = weight(bits).quantize(&w).unwrap();
        let plain = plain::weight(&w, bits);
        assert_close(&values(&fused), &values(&plain), 1e-6, &format!("{bits}-bit weight values"));
        let (gf, gp) = (gradients(&fused, &upstream_w, &[&w]), gradients(&plain, &upstream_w, &[&w]));
        assert_close(&gf[0], &gp[0], 1e-6, &format!("{bits}-bit weight gradients"));
    }
    let upstream_x = Tensor::randn([16, 8, 6, 6], (Kind::Float, Device::Cpu));
    for bits in [1, 2, 4, 8] {
        let x = (Tensor::randn([16, 8, 6, 6], (Kind::Float, Device::Cpu)) * 0.7 + 0.4).set_requires_grad(true);
        let (_vs, act) = activation(bits, ActQuant::Dorefa);
        let fused = act.forward(&x).unwrap();
        let plain = plain::dorefa_activation(&x, bits);
        assert_close(&values(&fused), &values(&plain), 1e-6, &format!("{bits}-bit DoReFa values"));
        let (gf, gp) = (gradients(&fused, &upstream_x, &[&x]), gradients(&plain, &upstream_x, &[&x]));
        assert_close(&gf[0], &gp[0], 1e-6, &format!("{bits}-bit DoReFa gradients"));

        let (vs, act) = activation(bits, ActQuant::Pact);
        let clip = vs.variables()["relu.clip_val"].shallow_clone();
        let _ = tch::no_grad(|| clip.shallow_clone().fill_(1.3));
        let x = (Tensor::randn([16, 8, 6, 6], (Kind::Float, Device::Cpu)) + 0.5).set_requires_grad(true);
        let fused = act.forward(&x).unwrap();
        let plain = plain::pact_activation(&x, &clip, bits);
        assert_close(&values(&fused), &values(&plain), 1e-6, &format!("{bits}-bit PACT values"));
        let (gf, gp) = (gradients(&fused, &upstream_x, &[&x, &clip]), gradients(&plain, &upstream_x, &[&x, &clip]));
        assert_close(&gf[0], &gp[0], 1e-6, &format!("{bits}-bit PACT input gradients"));
        assert_close(&gf[1], &gp[1], 1e-4, &format!("{bits}-bit PACT clip gradient"));
    }
}

/// A random conv weight of `kind`, laid out channels-last in memory where asked.
fn conv_weight(shape: [i64; 4], kind: Kind, channels_last: bool) -> Tensor {
    let w = Tensor::randn(shape, (kind, Device::Cpu)) * 0.3;
    let w = if channels_last { w.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]) } else { w };
    w.set_requires_grad(true)
}

#[test]
fn the_weight_bank_quantizes_like_each_weight_on_its_own() {
    let _serial = serial(); // the global generator
    tch::manual_seed(6);
    let shapes = [[8, 3, 3, 3], [16, 8, 3, 3], [2, 16, 1, 1], [16, 16, 3, 3]];
    let quantizers = [weight(2), weight(4), weight(8), WeightQuantizer::Binary, WeightQuantizer::Full];
    // The gradient of a weight's max |tanh w| element sums over the whole weight,
    // in another order than the per-weight quantiser's, and in fp32 its rounding
    // grows with the weight's size. fp64 shows the sums agree to 1e-6; fp32 (what
    // training computes) is held to 1e-5 of each gradient's size plus one.
    for (kind, gradient_tolerance) in [(Kind::Double, None), (Kind::Float, Some(1e-5))] {
        for channels_last in [false, true] {
            for quantizer in quantizers {
                let what = format!("{kind:?} {quantizer:?}, channels-last {channels_last}");
                let weights: Vec<Tensor> = shapes.iter().map(|&s| conv_weight(s, kind, channels_last)).collect();
                let upstream: Vec<Tensor> = shapes.iter().map(|&s| Tensor::randn(s, (kind, Device::Cpu))).collect();
                let mut builder = WeightBankBuilder::new();
                let slots: Vec<usize> = weights.iter().map(|w| builder.add(w, quantizer).unwrap()).collect();
                let bank = builder.build().unwrap();
                let batched = bank.quantize(ComputeOptions { bf16: false, channels_last }).unwrap();
                let single: Vec<Tensor> = weights.iter().map(|w| quantizer.quantize(w).unwrap()).collect();

                let inputs: Vec<&Tensor> = weights.iter().collect();
                let loss = |qs: Vec<&Tensor>| qs.iter().zip(&upstream).map(|(q, g)| (*q * g).sum(kind)).sum::<Tensor>();
                let batched_grads = Tensor::run_backward(&[loss(slots.iter().map(|&s| &batched[s]).collect())], &inputs, false, false);
                let single_grads = Tensor::run_backward(&[loss(single.iter().collect())], &inputs, false, false);
                for (i, &slot) in slots.iter().enumerate() {
                    let q = &batched[slot];
                    assert_eq!(q.size(), weights[i].size(), "{what}: weight {i} shape");
                    let memory_order = if channels_last { q.permute([0, 2, 3, 1]) } else { q.shallow_clone() };
                    assert!(memory_order.is_contiguous(), "{what}: weight {i} keeps its memory layout");
                    assert_close(&values(q), &values(&single[i]), 1e-6, &format!("{what}: weight {i} values"));
                    let (got, want) = (values(&batched_grads[i]), values(&single_grads[i]));
                    let gradients = format!("{what}: weight {i} gradients");
                    match gradient_tolerance {
                        None => assert_close(&got, &want, 1e-6, &gradients),
                        Some(tolerance) => {
                            let scaled = |v: &[f64]| v.iter().zip(&want).map(|(v, w)| v / (1.0 + w.abs())).collect::<Vec<_>>();
                            assert_close(&scaled(&got), &scaled(&want), tolerance, &gradients);
                        }
                    }
                }

                // bf16: the group is cast once; the same as casting each quantised weight.
                let bf16 = bank.quantize(ComputeOptions { bf16: true, channels_last }).unwrap();
                for (i, &slot) in slots.iter().enumerate() {
                    assert_eq!(bf16[slot].kind(), Kind::BFloat16);
                    let want = values(&single[i].to_kind(Kind::BFloat16));
                    assert_close(&values(&bf16[slot]), &want, 0.0, &format!("{what}: weight {i} bf16"));
                }
            }
        }
    }
}

#[test]
fn a_weight_shared_under_one_quantizer_takes_one_slot() {
    let _serial = serial(); // the global generator
    let w = conv_weight([4, 4, 3, 3], Kind::Float, false);
    let mut builder = WeightBankBuilder::new();
    let binary = builder.add(&w, WeightQuantizer::Binary).unwrap();
    let dorefa = builder.add(&w, weight(4)).unwrap();
    assert_ne!(binary, dorefa, "one slot per quantiser");
    assert_eq!(builder.add(&w.shallow_clone(), weight(4)).unwrap(), dorefa, "the same tensor again");
    assert_ne!(builder.add(&conv_weight([4, 4, 3, 3], Kind::Float, false), weight(4)).unwrap(), dorefa, "another tensor");
    let with_gaps = Tensor::zeros([4, 8], (Kind::Float, Device::Cpu)).slice(1, 0, 8, 2);
    assert!(builder.add(&with_gaps, weight(4)).is_err(), "a weight must be dense to be flattened as a view");
    let bank = builder.build().unwrap();
    assert_eq!(bank.quantizer(binary), WeightQuantizer::Binary);
    assert_eq!(bank.quantizer(dorefa), weight(4));
}
