//! REAL DATA: trains ResNet-20 on a subset of the real Fashion-MNIST from
//! Debian's `dataset-fashion-mnist` package: in full precision, and
//! quantisation-aware at 4 and at 1 bit with the same budget (about a minute
//! each on 2 CPU cores).

mod common;

use std::path::Path;

use camp_proto::spec::{JobSpec, LrStep, Stage};
use camp_proto::JobResult;
use camp_worker::data;
use camp_worker::observer::StageOutcome;
use camp_worker::stage::run_stage;
use common::{serial, tiny_spec, valid, Recorder};
use tch::Device;

const DEBIAN_DATA_DIR: &str = "/usr/share/datasets";

/// 3000 training / 1000 test images, 4 epochs, lr 0.1 then 0.01 in the last epoch.
fn real_spec(stage: Stage, bits: Option<u32>) -> JobSpec {
    JobSpec {
        stage,
        bits_weights: bits,
        bits_activations: bits,
        train_limit: 3000,
        test_limit: 1000,
        batch_size: 128,
        lr: 0.1,
        print_freq: 10,
        lr_schedule: vec![LrStep { epoch: 3, gamma: 0.1 }],
        ..tiny_spec(4)
    }
}

fn train(spec: &JobSpec) -> JobResult {
    let data_dir = Path::new(DEBIAN_DATA_DIR);
    assert!(
        data::available_datasets(data_dir).contains(&"fashion-mnist".to_string()),
        "the real Fashion-MNIST is missing from {DEBIAN_DATA_DIR}/fashion-mnist: install the Debian package dataset-fashion-mnist"
    );
    let mut rec = Recorder::default();
    let started = std::time::Instant::now();
    let summary = match run_stage(&valid(spec), data_dir, Device::Cpu, None, None, &mut rec).unwrap() {
        StageOutcome::Completed(summary) => summary,
        _ => panic!("the run did not complete"),
    };
    for line in &rec.logs {
        println!("{line}");
    }
    println!(
        "Fashion-MNIST (3000 train / 1000 test, 4 epochs) {} {}/{} bits: test top-1 {:.4}, top-5 {:.4}, best {:.4}, energy {:.4} of 4-bit, {:.0} images/s, {:.0} s",
        spec.stage.as_str(),
        summary.bits_weights,
        summary.bits_activations,
        summary.final_top1,
        summary.final_top5,
        summary.best_top1,
        summary.normalized_energy,
        summary.images_per_s.unwrap_or(f64::NAN),
        started.elapsed().as_secs_f64()
    );
    summary
}

#[test]
fn real_fashion_mnist_subset_is_learned_in_full_precision_and_quantised() {
    let _serial = serial();
    let fp32 = train(&real_spec(Stage::Baseline, None));
    let four = train(&real_spec(Stage::Qat, Some(4)));
    let one = train(&real_spec(Stage::Qat, Some(1)));
    println!("test top-1: fp32 {:.4}, 4-bit {:.4}, 1-bit {:.4} (chance 0.1)", fp32.final_top1, four.final_top1, one.final_top1);
    assert!(fp32.final_top1 > 0.65, "fp32 test top-1 {} is too low", fp32.final_top1);
    // The figures are exact for a given CPU, not across CPUs (libtorch's kernels sum
    // in other orders). On one AMD EPYC: fp32 / 4-bit / 1-bit 75.7 / 67.9 / 60.0% while
    // the stage-transition shortcut pooled the quantised pre-activation (model
    // version 1), 74.3 / 70.5 / 63.2% now that it pools the block's input; on
    // another (slower) AMD EPYC now: 73.6 / 71.4 / 44.4% (1-bit best 51.9%). The
    // 4-bit bound sits between the first CPU's figures. The 1-bit run from scratch at
    // lr 0.1 on 3,000 images moves by 19 points from one CPU to another, more than
    // that regression, so its bound asserts learning only; an exact wrong residual
    // is caught by the forward-value tests in `worker/src/model.rs`.
    assert!(four.final_top1 > fp32.final_top1 - 0.06, "4-bit {} is more than six points below fp32 {}", four.final_top1, fp32.final_top1);
    assert!(one.best_top1 > 0.35, "1-bit best test top-1 {} is below 35% (chance is 10%)", one.best_top1);
}
