//! REAL DATA: trains ResNet-20 on a subset of the real Fashion-MNIST from
//! Debian's `dataset-fashion-mnist` package (about a minute on 2 CPU cores).

mod common;

use std::path::Path;

use camp_proto::spec::LrStep;
use camp_worker::data;
use camp_worker::stage::{run_stage, StageOutcome};
use common::{serial, tiny_spec, Recorder};
use tch::Device;

const DEBIAN_DATA_DIR: &str = "/usr/share/datasets";

#[test]
fn real_fashion_mnist_subset_is_learned_well_above_chance() {
    let _serial = serial();
    tch::set_num_threads(2);
    let data_dir = Path::new(DEBIAN_DATA_DIR);
    assert!(
        data::available_datasets(data_dir).contains(&"fashion-mnist".to_string()),
        "the real Fashion-MNIST is missing from {DEBIAN_DATA_DIR}/fashion-mnist: install the Debian package dataset-fashion-mnist"
    );
    let mut spec = tiny_spec(4);
    spec.train_limit = 3000;
    spec.test_limit = 1000;
    spec.batch_size = 128;
    spec.lr = 0.1;
    spec.print_freq = 10;
    spec.lr_schedule = vec![LrStep { epoch: 4, gamma: 0.1 }];
    let mut rec = Recorder::default();
    let started = std::time::Instant::now();
    let summary = match run_stage(&spec, data_dir, Device::Cpu, None, &mut rec).unwrap() {
        StageOutcome::Completed(summary) => summary,
        _ => panic!("the run did not complete"),
    };
    for line in &rec.logs {
        println!("{line}");
    }
    println!(
        "Fashion-MNIST (3000 train / 1000 test, 4 epochs): test top-1 {:.4}, top-5 {:.4}, best {:.4}, {:.0} images/s, {:.0} s",
        summary.final_top1,
        summary.final_top5,
        summary.best_top1,
        summary.images_per_s,
        started.elapsed().as_secs_f64()
    );
    // Reached 0.735 on 2 CPU cores (deterministic for a given machine); chance is 0.1.
    assert!(summary.final_top1 > 0.65, "test top-1 {} is too low", summary.final_top1);
}
