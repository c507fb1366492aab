//! Architecture shapes and the optimiser's arithmetic.

use std::time::Instant;

use camp_proto::spec::JobSpec;
use camp_worker::compute::ComputeOptions;
use camp_worker::model::{blocks_per_stage, PreActResNet};
use camp_worker::optim::Sgd;
use camp_worker::precision::Precision;
use tch::nn::{Init, VarStore};
use tch::{Device, Kind, Tensor};

/// Parameters of a pre-activation ResNet counted from its layer shapes:
/// stem conv3x3 (in -> 16); per block pre_bn(in) + conv3x3(in -> out) + bn(out) + conv3x3(out -> out);
/// final_bn(64); fc 64 -> classes with bias.
fn expected_parameters(n: i64, in_channels: i64, classes: i64) -> i64 {
    let conv = |i: i64, o: i64| 9 * i * o;
    let bn = |c: i64| 2 * c;
    let mut total = conv(in_channels, 16);
    let mut width = 16;
    for out in [16, 32, 64] {
        for _ in 0..n {
            total += bn(width) + conv(width, out) + bn(out) + conv(out, out);
            width = out;
        }
    }
    total + bn(64) + 64 * classes + classes
}

/// Every layer of `arch` in full precision (the paths do not depend on the data set).
fn full_precision(arch: &str) -> Precision {
    Precision::for_spec(&JobSpec { arch: arch.into(), ..JobSpec::default() }).unwrap()
}

#[test]
fn parameter_counts_match_the_layer_shapes() {
    let depths = [(20, 3), (32, 5), (44, 7), (56, 9), (110, 18)];
    for (depth, n) in depths {
        let arch = format!("preact_resnet{depth}_cifar");
        assert_eq!(blocks_per_stage(&arch), Some(n));
        for (in_channels, classes) in [(3, 10), (3, 100), (1, 10)] {
            let vs = VarStore::new(Device::Cpu);
            PreActResNet::new(&vs.root(), &arch, in_channels, classes, &full_precision(&arch), ComputeOptions::default()).unwrap();
            let count: i64 = vs.trainable_variables().iter().map(|t| t.numel() as i64).sum();
            assert_eq!(count, expected_parameters(n, in_channels, classes), "{arch} in {in_channels} classes {classes}");
        }
    }
    // Pre-activation ResNet-20 on CIFAR-10, summed by hand: 432 + 3*4672 + 13920 + 2*18560
    // + 55488 + 2*73984 + 128 + 650.
    assert_eq!(expected_parameters(3, 3, 10), 269_722);
}

#[test]
fn forward_gives_logits_for_32_and_28_pixel_inputs_and_names_follow_the_reference() {
    tch::set_num_threads(1);
    let vs = VarStore::new(Device::Cpu);
    let model =
        PreActResNet::new(&vs.root(), "preact_resnet20_cifar", 1, 10, &full_precision("preact_resnet20_cifar"), ComputeOptions::default())
            .unwrap();
    let logits = model.forward_t(&Tensor::randn([2, 1, 28, 28], (Kind::Float, Device::Cpu)), true).unwrap();
    assert_eq!(logits.size(), [2, 10]);
    let names = vs.variables();
    for name in [
        "conv1.weight",
        "layer1.0.pre_bn.weight",
        "layer2.0.conv1.weight",
        "layer3.2.bn.running_var",
        "final_bn.bias",
        "fc.weight",
        "fc.bias",
    ] {
        assert!(names.contains_key(name), "{name} missing");
    }
    assert_eq!(names["layer2.0.conv1.weight"].size(), [32, 16, 3, 3]);

    let vs = VarStore::new(Device::Cpu);
    let options = ComputeOptions { bf16: false, channels_last: true };
    let model = PreActResNet::new(&vs.root(), "preact_resnet20_cifar", 3, 100, &full_precision("preact_resnet20_cifar"), options).unwrap();
    let logits = model.forward_t(&Tensor::randn([2, 3, 32, 32], (Kind::Float, Device::Cpu)), false).unwrap();
    assert_eq!(logits.size(), [2, 100]);
    // A wrong input is an error, not a panic.
    assert!(model.forward_t(&Tensor::randn([2, 1, 32, 32], (Kind::Float, Device::Cpu)), false).is_err());
}

#[test]
fn sgd_matches_a_hand_computed_update_for_two_steps() {
    let (lr, momentum, wd) = (0.1, 0.9, 0.01);
    let vs = VarStore::new(Device::Cpu);
    let p = vs.root().var("p", &[2], Init::Const(0.0));
    tch::no_grad(|| p.shallow_clone().copy_(&Tensor::from_slice(&[1.0f32, -2.0])));
    let coefficients = Tensor::from_slice(&[3.0f32, 0.5]);
    let mut sgd = Sgd::new(&vs, momentum, wd).unwrap();

    // loss = sum(c * p * p) / 2  ->  gradient c * p.
    let step = |sgd: &mut Sgd| {
        let loss = (&coefficients * &p * &p).sum(Kind::Float).divide_scalar(2.0);
        sgd.step(&loss, lr).unwrap();
    };
    let c = [3.0f64, 0.5];
    let mut expected = [1.0f64, -2.0];
    let mut buf = [0.0f64; 2];
    for k in 0..2 {
        step(&mut sgd);
        for i in 0..2 {
            let d = c[i] * expected[i] + wd * expected[i];
            buf[i] = if k == 0 { d } else { momentum * buf[i] + d };
            expected[i] -= lr * buf[i];
        }
        let got = Vec::<f32>::try_from(&p).unwrap();
        for i in 0..2 {
            assert!((got[i] as f64 - expected[i]).abs() < 1e-6, "step {k} element {i}: {} vs {}", got[i], expected[i]);
        }
    }
    let buffers = sgd.momentum_buffers().unwrap();
    assert_eq!(buffers.len(), 1);
    assert_eq!(buffers[0].0, "p");
    let saved = Vec::<f32>::try_from(&buffers[0].1).unwrap();
    assert!((saved[0] as f64 - buf[0]).abs() < 1e-6 && (saved[1] as f64 - buf[1]).abs() < 1e-6);
}

#[test]
fn sgd_updates_parameters_of_every_shape_and_layout_in_place() {
    let (lr, momentum, wd) = (0.1, 0.9, 0.01);
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    tch::manual_seed(11);
    let conv = (&root / "conv").var("weight", &[4, 3, 3, 3], Init::Randn { mean: 0.0, stdev: 1.0 });
    let channels_last = tch::no_grad(|| conv.permute([0, 2, 3, 1]).contiguous().permute([0, 3, 1, 2]));
    conv.shallow_clone().set_data(&channels_last);
    let fc = (&root / "fc").var("weight", &[2, 5], Init::Randn { mean: 0.0, stdev: 1.0 });
    let bias = (&root / "fc").var("bias", &[2], Init::Randn { mean: 0.0, stdev: 1.0 });
    // In name order, as the optimiser lists its momentum buffers.
    let params = [conv.shallow_clone(), bias.shallow_clone(), fc.shallow_clone()];
    let mut expected: Vec<Tensor> = params.iter().map(|p| p.detach().copy()).collect();
    let mut sgd = Sgd::new(&vs, momentum, wd).unwrap();
    assert_eq!(conv.stride(), channels_last.stride(), "a parameter keeps its layout in the optimiser's buffer");

    // loss = sum over parameters of sum(p^3) / 3  ->  gradient p^2.
    let mut buffers: Vec<Tensor> = Vec::new();
    for step in 0..3 {
        let loss = params.iter().map(|p| p.pow_tensor_scalar(3).sum(Kind::Float)).reduce(|a, b| a + b).unwrap() / 3.0;
        sgd.step(&loss, lr).unwrap();
        for (i, want) in expected.iter_mut().enumerate() {
            let d = want.pow_tensor_scalar(2) + &*want * wd;
            let buf = if step == 0 { d } else { &buffers[i] * momentum + d };
            *want = &*want - &buf * lr;
            if step == 0 {
                buffers.push(buf)
            } else {
                buffers[i] = buf
            }
        }
        for (p, want) in params.iter().zip(&expected) {
            assert!(p.allclose(want, 1e-5, 1e-6, false), "step {step}: {p:?} vs {want:?}");
        }
    }
    for ((name, saved), want) in sgd.momentum_buffers().unwrap().into_iter().zip(&buffers) {
        assert!(saved.allclose(want, 1e-5, 1e-6, false), "momentum of {name}");
    }

    // A second optimiser over the same variables takes them over: the first one says so.
    let _second = Sgd::new(&vs, momentum, wd).unwrap();
    let loss = params.iter().map(|p| p.sum(Kind::Float)).reduce(|a, b| a + b).unwrap();
    assert!(sgd.step(&loss, lr).is_err());
}

#[test]
fn pact_clips_take_their_own_weight_decay() {
    let (lr, wd, clip_wd) = (0.5, 0.1, 0.01);
    let vs = VarStore::new(Device::Cpu);
    let root = vs.root();
    let w = (&root / "conv1").var("weight", &[1], Init::Const(2.0));
    let clip = (&root / "layer1" / "0" / "relu").var("clip_val", &[1], Init::Const(8.0));
    let mut sgd = Sgd::new(&vs, 0.0, wd).unwrap().with_decay_for(camp_worker::quant::PACT_CLIP_SUFFIX, clip_wd).unwrap();
    // A loss with no gradient: the step is the decay alone, p -= lr * wd * p.
    let loss = (&w * 0.0 + &clip * 0.0).sum(Kind::Float);
    sgd.step(&loss, lr).unwrap();
    assert!((w.double_value(&[0]) - 2.0 * (1.0 - lr * wd)).abs() < 1e-6);
    assert!((clip.double_value(&[0]) - 8.0 * (1.0 - lr * clip_wd)).abs() < 1e-6);
}

/// A ResNet-20 bench on the CPU, one thread, one warm-up step.
fn tiny_bench(batch: i64, steps: usize, bits: Option<u32>, profile_steps: usize) -> camp_worker::bench::BenchReport {
    tch::set_num_threads(1);
    let config = camp_worker::bench::BenchConfig {
        arch: "preact_resnet20_cifar".into(),
        batch,
        device: Device::Cpu,
        bf16: false,
        channels_last: false,
        warmup_steps: 1,
        steps,
        bits,
        dual_path: false,
        profile_steps,
        cuda_graph: false,
    };
    camp_worker::bench::run_bench(&config).unwrap()
}

#[test]
fn bench_times_its_train_and_eval_steps_and_reports_the_images_per_second_of_those_steps() {
    let (batch, steps) = (4, 12);
    let started = Instant::now();
    let report = tiny_bench(batch, steps, None, 0);
    let wall = started.elapsed().as_secs_f64();
    println!("{report}\n(the call took {wall:.3} s)");
    // Training: images / s times s / step is the images of one step, the batch.
    let images_per_step = report.train_images_per_s * report.train_ms_per_step / 1000.0;
    assert!((images_per_step - batch as f64).abs() < 1e-9 * batch as f64, "{images_per_step} images per step, batch {batch}");
    // The seconds each phase's `steps` steps of `batch` images took.
    let train_s = steps as f64 * report.train_ms_per_step / 1000.0;
    let eval_s = (batch * steps as i64) as f64 / report.eval_images_per_s;
    assert!(train_s > 0.0 && eval_s > 0.0, "both phases timed: train {train_s} s, eval {eval_s} s");
    // Both timings lie within the call, and they cover most of it: the rest is
    // building the network and one untimed warm-up step of each phase.
    assert!(train_s + eval_s <= wall, "train {train_s} s + eval {eval_s} s within the call's {wall} s");
    assert!(train_s + eval_s >= 0.5 * wall, "train {train_s} s + eval {eval_s} s cover the timed steps of the call's {wall} s");
    // An evaluation step (forward only) is faster than a training step (forward, backward, SGD).
    assert!(report.eval_images_per_s > report.train_images_per_s, "{report}");
    assert!(report.train_profile.is_none());
    let text = report.to_string();
    assert!(text.contains(&format!("{:.2}", report.train_ms_per_step)) && text.contains("eval"), "{text}");
}

#[test]
fn bench_profiles_the_training_step_when_asked() {
    let report = tiny_bench(2, 1, Some(4), 2);
    let profile = report.train_profile.as_ref().expect("a profile");
    assert_eq!(profile.steps, 2);
    // 19 convolutions forward per step, at least, and as many backward.
    assert!(profile.host_events_per_step > 2.0 * 19.0, "{profile:?}");
    let counts: Vec<f64> = profile.top_host_ops.iter().map(|op| op.count_per_step).collect();
    assert!(counts.windows(2).all(|w| w[0] >= w[1]), "most frequent first: {counts:?}");
    assert_eq!(profile.gpu_busy_ms_per_step, 0.0, "no GPU on the CPU");
    assert!(profile.top_kernels.is_empty() && !profile.top_host_ops.is_empty());
    assert!(report.to_string().contains("host ops per step"));
}
