//! REAL DATA: a short qat -> sp -> rl chain on a subset of the real
//! Fashion-MNIST (Debian's `dataset-fashion-mnist`): raising rl's alpha, the
//! reward for taking the 1-bit path, lowers the share of images the gates
//! route to 4 bits (about 2 minutes on 2 CPU cores).

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

fn spec(stage: Stage, epochs: u32, lr: f64) -> JobSpec {
    JobSpec {
        stage,
        train_limit: 2000,
        test_limit: 500,
        batch_size: 128,
        lr,
        print_freq: 10,
        lr_schedule: Vec::<LrStep>::new(),
        ..tiny_spec(epochs)
    }
}

/// Trains `spec` from `init`; returns the summary and the last checkpoint.
fn train(spec: &JobSpec, init: Option<&[u8]>) -> (JobResult, Vec<u8>) {
    let mut rec = Recorder::default();
    let started = std::time::Instant::now();
    let summary = match run_stage(&valid(spec), Path::new(DEBIAN_DATA_DIR), Device::Cpu, None, init, &mut rec).unwrap() {
        StageOutcome::Completed(summary) => summary,
        _ => panic!("the run did not complete"),
    };
    println!(
        "{} alpha {}: test top-1 {:.4}, 4-bit share {:?}, per block {:?}, energy {:.4} of 4-bit, {:.0} s",
        spec.stage.as_str(),
        spec.alpha,
        summary.final_top1,
        summary.fullbit_share.map(|s| (s * 1000.0).round() / 1000.0),
        summary.block_fullbit_shares.iter().map(|s| (s * 100.0).round() / 100.0).collect::<Vec<_>>(),
        summary.normalized_energy,
        started.elapsed().as_secs_f64()
    );
    (summary, rec.checkpoints.pop().unwrap().bytes)
}

#[test]
fn raising_alpha_lowers_the_share_of_4_bit_routing() {
    let _serial = serial();
    assert!(
        data::available_datasets(Path::new(DEBIAN_DATA_DIR)).contains(&"fashion-mnist".to_string()),
        "the real Fashion-MNIST is missing from {DEBIAN_DATA_DIR}/fashion-mnist: install the Debian package dataset-fashion-mnist"
    );
    let qat = JobSpec { bits_weights: Some(4), bits_activations: Some(4), ..spec(Stage::Qat, 2, 0.1) };
    let (_, qat_ckpt) = train(&qat, None);
    let (sp_summary, sp_ckpt) = train(&spec(Stage::Sp, 1, 0.05), Some(&qat_ckpt));
    // A short run needs a stronger REINFORCE signal than the reference's 0.01.
    let shares: Vec<(f64, f64)> = [0.0, 2.0, 8.0]
        .into_iter()
        .map(|alpha| {
            let rl = JobSpec { alpha, rl_weight: 1.0, ..spec(Stage::Rl, 1, 0.05) };
            (alpha, train(&rl, Some(&sp_ckpt)).0.fullbit_share.unwrap())
        })
        .collect();
    println!("sp 4-bit share {:?}; rl alpha -> 4-bit share: {shares:?}", sp_summary.fullbit_share);
    // A short run's shares are noisy by a few points: the trend must stand out of it.
    assert!(
        shares[2].1 < shares[0].1 - 0.1,
        "alpha {} routed {} to 4 bits, alpha {} {}",
        shares[2].0,
        shares[2].1,
        shares[0].0,
        shares[0].1
    );
    assert!(shares[2].1 <= shares[1].1 + 0.03 && shares[1].1 <= shares[0].1 + 0.03, "not decreasing: {shares:?}");
}
