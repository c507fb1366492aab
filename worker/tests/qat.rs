//! Stage qat on tiny generated data: the bits per layer, checkpoints that
//! rebuild the same quantised network, init from a finished job, and the
//! energy every evaluation reports.

mod common;

use camp_proto::arch;
use camp_proto::spec::{ActQuant, JobSpec, Stage};
use camp_worker::checkpoint;
use camp_worker::compute::ComputeOptions;
use camp_worker::data::Dataset;
use camp_worker::fixtures;
use camp_worker::network::Network;
use camp_worker::precision::Precision;
use camp_worker::stage::run_stage;
use common::{completed, fashion_dir, serial, tiny_spec, valid, Recorder};
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

fn qat_spec(bits: u32, epochs: u32) -> JobSpec {
    JobSpec { stage: Stage::Qat, bits_weights: Some(bits), bits_activations: Some(bits), ..tiny_spec(epochs) }
}

#[test]
fn the_models_conv_and_linear_shapes_are_the_energy_models_layers() {
    let _serial = serial(); // the global generator: model init, sampling
    for arch_name in ["preact_resnet20_cifar", "preact_resnet32_cifar"] {
        for (dataset, in_ch, classes, hw) in [("cifar10", 3, 10, 32), ("fashion-mnist", 1, 10, 28)] {
            let spec = JobSpec { arch: arch_name.into(), dataset: dataset.into(), stage: Stage::Qat, ..JobSpec::default() };
            let precision = Precision::for_spec(&spec).unwrap();
            let vs = VarStore::new(Device::Cpu);
            Network::build(&vs.root(), &spec, &precision, in_ch, classes, ComputeOptions::default()).unwrap();
            let variables = vs.variables();
            let layers = arch::layers(arch_name, false, in_ch as usize, classes as usize, hw).unwrap();
            for layer in &layers {
                let shape = variables[&format!("{}.weight", layer.path)].size();
                let want: Vec<i64> = match layer.kind {
                    arch::LayerKind::Conv => vec![layer.out_ch as i64, layer.in_ch as i64, layer.kernel as i64, layer.kernel as i64],
                    arch::LayerKind::Linear => vec![layer.out_ch as i64, layer.in_ch as i64],
                };
                assert_eq!(shape, want, "{}", layer.path);
            }
            let weights = variables.keys().filter(|k| k.ends_with("conv1.weight") || k.ends_with("conv2.weight") || *k == "fc.weight");
            assert_eq!(weights.count(), layers.len(), "every conv/linear weight is one of the energy model's layers");
            // The spatial sizes too: a forward pass of the stated input size.
            let x = Tensor::zeros([1, in_ch, hw as i64, hw as i64], (Kind::Float, Device::Cpu));
            let logits = Network::build(&VarStore::new(Device::Cpu).root(), &spec, &precision, in_ch, classes, ComputeOptions::default())
                .unwrap()
                .forward(&x, false)
                .unwrap()
                .logits;
            assert_eq!(logits.size(), [1, classes]);
        }
    }
}

#[test]
fn the_bits_plan_resolves_per_layer_with_job_overrides_first() {
    let mut spec = qat_spec(2, 1);
    spec.bits_overrides = vec![camp_proto::spec::BitsOverride { pattern: "layer3.*.conv2".into(), wts: Some(8), acts: None }];
    let p = Precision::for_spec(&spec).unwrap();
    assert_eq!(p.weights["conv1"], 32);
    assert_eq!(p.weights["fc"], 32);
    assert_eq!(p.weights["layer1.0.conv1"], 2);
    assert_eq!(p.weights["layer3.2.conv2"], 8);
    assert_eq!(p.activations["layer1.0.pre_relu"], 32);
    assert_eq!(p.activations["layer1.1.pre_relu"], 2);
    assert_eq!(p.activations["layer2.0.relu"], 2);
    assert_eq!(p.activations["final_relu"], 32);
    spec.bits_overrides[0].pattern = "layer4.*".into();
    assert!(Precision::for_spec(&spec).unwrap_err().to_string().contains("layer4.*"));
}

#[test]
fn a_qat_checkpoint_rebuilds_the_same_quantised_network() {
    let _serial = serial();
    let dir = fashion_dir(64, 40);
    let mut spec = qat_spec(4, 1);
    spec.act_quant = ActQuant::Pact;
    let mut rec = Recorder::default();
    let summary = completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut rec).unwrap());
    assert_eq!((summary.bits_weights, summary.bits_activations), (4, 4));
    let bytes = &rec.checkpoints.last().unwrap().bytes;
    let meta = checkpoint::verify(bytes).unwrap();
    assert_eq!(meta.precision, Precision::for_spec(&spec).unwrap());
    assert!(rec.checkpoints[0].metadata_json.contains("precision"));

    // Rebuilt from the checkpoint alone, the network gives the test loss the run reported.
    let state = checkpoint::load(bytes).unwrap();
    assert!(state.model.contains_key("layer2.1.relu.clip_val"), "PACT's clip is stored");
    let vs = VarStore::new(Device::Cpu);
    let net = Network::build(&vs.root(), &state.meta.spec, &state.meta.precision, 1, 10, ComputeOptions::default()).unwrap();
    checkpoint::load_weights(&vs, &state.model).unwrap();
    let data = Dataset::load("fashion-mnist", dir.path(), Device::Cpu, 0, 0).unwrap();
    let (images, labels) = data.test_batch(0, data.test_len()).unwrap();
    let logits = tch::no_grad(|| net.forward(&images, false).unwrap().logits);
    let loss = logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0).double_value(&[]);
    let reported = rec.series("test_loss")[0].1;
    println!("rebuilt test loss {loss}, reported {reported}");
    assert!((loss - reported).abs() < 1e-5, "rebuilt {loss} vs reported {reported}");

    // The same weights in full precision compute something else: the bits are in force.
    let fp_spec = JobSpec { stage: Stage::Baseline, bits_weights: None, bits_activations: None, act_quant: ActQuant::Pact, ..spec };
    let fp_vs = VarStore::new(Device::Cpu);
    let fp = Network::build(&fp_vs.root(), &fp_spec, &Precision::for_spec(&fp_spec).unwrap(), 1, 10, ComputeOptions::default()).unwrap();
    let fp_tensors = state.model.iter().filter(|(k, _)| !k.ends_with("clip_val")).map(|(k, v)| (k.clone(), v.shallow_clone())).collect();
    checkpoint::load_weights(&fp_vs, &fp_tensors).unwrap();
    let fp_logits = tch::no_grad(|| fp.forward(&images, false).unwrap().logits);
    assert!((&fp_logits - &logits).abs().max().double_value(&[]) > 1e-3);
}

#[test]
fn init_from_a_finished_job_loads_its_weights_with_a_fresh_optimiser() {
    let _serial = serial();
    let dir = fashion_dir(48, 16);
    let mut base_rec = Recorder::default();
    completed(run_stage(&valid(&tiny_spec(1)), dir.path(), Device::Cpu, None, None, &mut base_rec).unwrap());
    let baseline = checkpoint::load(&base_rec.checkpoints[0].bytes).unwrap();

    // A negligible lr: after one epoch the qat weights are still the baseline's.
    let mut spec = qat_spec(4, 1);
    spec.lr = 1e-30;
    let mut rec = Recorder::default();
    completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, Some(&base_rec.checkpoints[0].bytes), &mut rec).unwrap());
    assert!(rec.logs.iter().any(|l| l.starts_with("initialised")), "{:?}", rec.logs);
    let qat = checkpoint::load(&rec.checkpoints[0].bytes).unwrap();
    for (name, t) in &baseline.model {
        if name.ends_with(".weight") || name.ends_with(".bias") {
            assert!((t - &qat.model[name]).abs().max().double_value(&[]) < 1e-12, "{name}");
        }
    }
    // Not loaded: a checkpoint of another data set's network.
    let cifar_dir = tempfile::tempdir().unwrap();
    fixtures::write_cifar10_like(cifar_dir.path(), 16, 8, 3).unwrap();
    let cifar_spec = JobSpec { dataset: "cifar10".into(), ..spec.clone() };
    let err =
        run_stage(&valid(&cifar_spec), cifar_dir.path(), Device::Cpu, None, Some(&base_rec.checkpoints[0].bytes), &mut Recorder::default());
    assert!(err.err().unwrap().to_string().contains("shape"));
}

#[test]
fn every_evaluation_reports_energy_normalised_to_4_bits() {
    let _serial = serial();
    let dir = fashion_dir(32, 16);
    let table = camp_proto::energy::EnergyTable::default();
    // Normalised energy = blocks' energy at the weight bits over the same at 4 bits.
    for (spec, want) in [
        (tiny_spec(1), table.pj_per_mac(None) / table.pj_per_mac(Some(4))),
        (qat_spec(4, 1), 1.0),
        (qat_spec(1, 1), table.pj_per_mac(Some(1)) / table.pj_per_mac(Some(4))),
    ] {
        let mut rec = Recorder::default();
        let summary = completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut rec).unwrap());
        println!(
            "{:?} {}-bit: normalised energy {} ({} pJ, stem and head {} pJ)",
            spec.stage,
            spec.weight_bits(),
            summary.normalized_energy,
            summary.energy_pj,
            summary.stem_head_pj
        );
        assert!((summary.normalized_energy - want).abs() < 1e-9, "{} vs {want}", summary.normalized_energy);
        assert_eq!(rec.series("normalized_energy"), vec![(1, summary.normalized_energy)]);
        assert_eq!(rec.series("energy_pj"), vec![(1, summary.energy_pj)]);
        // Fashion-MNIST's 28x28 stem (1 -> 16 channels) and the 64 -> 10 head, in fp32.
        assert!((summary.stem_head_pj - (16.0 * 9.0 * 28.0 * 28.0 + 640.0) * 4.6).abs() < 1e-6);
        assert_eq!(summary.energy_table, "horowitz-45nm");
    }
}
