//! The baseline stage on tiny generated data: learning, the learning-rate
//! schedule, checkpoints and exact resume.

mod common;

use std::collections::BTreeMap;

use camp_proto::spec::LrStep;
use camp_worker::checkpoint::{self, MOMENTUM_PREFIX};
use camp_worker::observer::{Control, StageOutcome};
use camp_worker::stage::run_stage;
use common::{completed, fashion_dir, serial, tiny_spec, valid, Recorder};
use tch::{Device, Tensor};

/// Every tensor of a checkpoint, as raw bytes, by name.
fn tensors_of(bytes: &[u8]) -> BTreeMap<String, Tensor> {
    let state = checkpoint::load(bytes).unwrap();
    let mut all = state.model;
    all.extend(state.momentum.into_iter().map(|(k, v)| (format!("{MOMENTUM_PREFIX}{k}"), v)));
    all
}

fn assert_bitwise_equal(a: &[u8], b: &[u8]) {
    let (a, b) = (tensors_of(a), tensors_of(b));
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, t) in &a {
        assert!(t.equal(&b[name]), "tensor {name} differs");
    }
}

#[test]
fn loss_goes_down_on_a_tiny_generated_set() {
    let _serial = serial();
    let dir = fashion_dir(192, 64);
    let mut spec = tiny_spec(4);
    spec.lr_schedule.clear();
    let mut rec = Recorder::default();
    let summary = completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut rec).unwrap());
    let losses = rec.series("train_loss");
    println!("train loss per epoch: {losses:?}; test top-1 {}", summary.final_top1);
    assert_eq!(losses.len(), 4);
    assert!(losses[3].1 < 0.8 * losses[0].1, "loss did not go down: {losses:?}");
    assert!(summary.best_top1 >= summary.final_top1 && summary.best_epoch >= 1);
    assert_eq!(rec.checkpoints.len(), 4);
    assert_eq!(rec.logs.iter().filter(|l| l.starts_with("epoch ")).count(), 4);
}

#[test]
fn the_optimizer_follows_the_lr_schedule_per_epoch() {
    let _serial = serial();
    let dir = fashion_dir(48, 16);
    let mut spec = tiny_spec(3);
    // A negligible lr in epoch 2 must leave the weights (not the BN statistics) unchanged.
    // Milestones count completed epochs (distiller's MultiStepMultiGammaLR).
    spec.lr_schedule = vec![LrStep { epoch: 1, gamma: 1e-20 }, LrStep { epoch: 2, gamma: 1e19 }];
    let mut rec = Recorder::default();
    completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut rec).unwrap());

    // By hand from lr 0.05: epoch 1 has completed no milestone; epoch 2 has completed
    // milestone 1 (x 1e-20); epoch 3 milestones 1 and 2 (x 1e-20 x 1e19).
    let by_epoch = [(1, 0.05), (2, 5e-22), (3, 0.005)];
    // 3 steps per epoch, each reporting its lr; the epoch summary does not repeat the last step's.
    let want: Vec<(u32, f64)> = by_epoch.iter().flat_map(|&(epoch, lr)| [(epoch, lr); 3]).collect();
    let step_lrs: Vec<(u32, f64)> = rec.series("lr");
    assert_eq!(step_lrs.len(), want.len(), "{step_lrs:?}");
    for (got, want) in step_lrs.iter().zip(&want) {
        assert!(got.0 == want.0 && (got.1 - want.1).abs() <= 1e-12 * want.1, "lr {got:?}, by hand {want:?}");
    }
    let mut rows: Vec<(&str, i64)> = rec.metrics.iter().map(|(step, _, name, _)| (name.as_str(), *step)).collect();
    let all = rows.len();
    rows.sort_unstable();
    rows.dedup();
    assert_eq!(rows.len(), all, "each metric is reported once per step");

    let after = |epoch: usize| checkpoint::load(&rec.checkpoints[epoch - 1].bytes).unwrap();
    let (one, two, three) = (after(1), after(2), after(3));
    let mut moved_in_epoch_3 = false;
    for (name, t) in &one.model {
        let still = (t - &two.model[name]).abs().max().double_value(&[]);
        if name.ends_with("running_mean") || name.ends_with("running_var") {
            continue;
        }
        assert!(still < 1e-12, "{name} moved by {still} at lr 5e-22");
        moved_in_epoch_3 |= !two.model[name].equal(&three.model[name]);
    }
    assert!(moved_in_epoch_3);
}

#[test]
fn an_interrupted_and_resumed_run_ends_bitwise_equal_to_an_uninterrupted_one() {
    let _serial = serial();
    let dir = fashion_dir(56, 20); // 4 steps per epoch, the last one short
    let spec = tiny_spec(3);

    let mut whole = Recorder::default();
    let whole_summary = completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut whole).unwrap());
    let whole_final = &whole.checkpoints.last().unwrap().bytes;

    // Interrupt in epoch 2 after its second step (global step 6).
    let mut first = Recorder::with_control(6, Control::Interrupt);
    assert!(matches!(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut first).unwrap(), StageOutcome::Interrupted));
    assert_eq!(first.checkpoints.len(), 2, "epoch 1 and the interruption");
    let cut = &first.checkpoints[1];
    assert!(cut.top1.is_nan());
    let meta = checkpoint::read_meta(&cut.bytes).unwrap();
    assert_eq!((meta.epoch, meta.step, meta.step_in_epoch), (1, 6, 2));
    assert_eq!(cut.epoch, 1);
    let state = checkpoint::load(&cut.bytes).unwrap();
    let params = state.model.keys().filter(|k| !k.contains("running_")).count();
    assert_eq!(state.momentum.len(), params, "one momentum buffer per parameter");
    assert!(cut.metadata_json.contains("\"step_in_epoch\":\"2\""));

    let mut rest = Recorder::default();
    let resumed_summary = completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, Some(&cut.bytes), None, &mut rest).unwrap());
    assert_bitwise_equal(whole_final, &rest.checkpoints.last().unwrap().bytes);
    // Exact epoch metrics too, across the cut.
    assert_eq!(rest.series("train_loss"), whole.series("train_loss")[1..]);
    assert_eq!(resumed_summary.best_top1, whole_summary.best_top1);
    assert_eq!(resumed_summary.final_top1, whole_summary.final_top1);

    // Resuming from an epoch boundary (a kill after epoch 1) ends the same way.
    let mut from_epoch_1 = Recorder::default();
    completed(run_stage(&valid(&spec), dir.path(), Device::Cpu, Some(&whole.checkpoints[0].bytes), None, &mut from_epoch_1).unwrap());
    assert_bitwise_equal(whole_final, &from_epoch_1.checkpoints.last().unwrap().bytes);

    // The checkpoint is loadable on its own.
    assert_eq!(checkpoint::verify(whole_final).unwrap().epoch, 3);
}

#[test]
fn cancel_and_abandon_stop_without_writing_and_a_foreign_spec_is_refused() {
    let _serial = serial();
    let dir = fashion_dir(48, 16);
    let spec = tiny_spec(2);
    let mut cancel = Recorder::with_control(2, Control::Cancel);
    assert!(matches!(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut cancel).unwrap(), StageOutcome::Cancelled));
    assert!(cancel.checkpoints.is_empty());
    let mut abandon = Recorder::with_control(4, Control::Abandon);
    assert!(matches!(run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut abandon).unwrap(), StageOutcome::Abandoned));
    assert_eq!(abandon.checkpoints.len(), 1, "only epoch 1's");

    let mut other = spec.clone();
    other.lr = 0.2;
    let err = run_stage(&valid(&other), dir.path(), Device::Cpu, Some(&abandon.checkpoints[0].bytes), None, &mut Recorder::default());
    assert!(err.err().unwrap().to_string().contains("different spec"));
}

#[test]
fn a_cuda_graph_job_on_the_cpu_is_refused_before_it_trains() {
    let _serial = serial();
    let dir = fashion_dir(32, 16);
    let spec = camp_proto::JobSpec { cuda_graph: true, device: camp_proto::spec::DeviceRequest::Cuda, ..tiny_spec(1) };
    let mut rec = Recorder::default();
    let error = run_stage(&valid(&spec), dir.path(), Device::Cpu, None, None, &mut rec).err().expect("refused").to_string();
    assert!(error.contains("cuda_graph") && error.contains("on the CPU"), "{error}");
    assert!(rec.metrics.is_empty() && rec.checkpoints.is_empty(), "nothing trained, nothing written");
}

#[test]
fn local_run_writes_checkpoints_and_summary_and_resumes() {
    let _serial = serial();
    let dir = fashion_dir(64, 16);
    let out = tempfile::tempdir().unwrap();
    let spec_path = out.path().join("job.yaml");
    std::fs::write(&spec_path, "arch: preact_resnet20_cifar\ndataset: fashion-mnist\nepochs: 1\nbatch_size: 32\nprint_freq: 1\n").unwrap();
    let outcome = camp_worker::local::run_local(&spec_path, dir.path(), Device::Cpu, out.path(), false, None, false).unwrap();
    assert!(matches!(outcome, StageOutcome::Completed(_)));
    for file in ["latest.safetensors", "best.safetensors", "summary.json"] {
        assert!(out.path().join(file).is_file(), "{file} missing");
    }
    // Two epochs now, resumed from the first.
    std::fs::write(&spec_path, "arch: preact_resnet20_cifar\ndataset: fashion-mnist\nepochs: 2\nbatch_size: 32\nprint_freq: 1\n").unwrap();
    camp_worker::local::run_local(&spec_path, dir.path(), Device::Cpu, out.path(), true, None, false).unwrap();
    let latest = std::fs::read(out.path().join("latest.safetensors")).unwrap();
    assert_eq!(checkpoint::read_meta(&latest).unwrap().epoch, 2);

    std::fs::write(&spec_path, "arch: preact_resnet20_cifar\nbogus: 1\n").unwrap();
    let err = camp_worker::local::run_local(&spec_path, dir.path(), Device::Cpu, out.path(), false, None, false).err().unwrap();
    assert!(err.to_string().contains("bogus"), "{err}");
}
