//! Data-parallel training (`gpus: 2`) on the CPU with Gloo: real processes
//! (`camp-worker run`, which starts rank 1 as `camp-worker rank`) meeting on a
//! loopback TCPStore, summing gradients with Gloo's all-reduce.
//!
//! What is compared, and why not with a plain one-rank run: every rank
//! normalises its shard with its own BatchNorm statistics (as DDP does by
//! default), so two ranks of 8 images compute what one process computes on
//! those two shards in turn (`run --one-process`), not what one forward pass
//! over all 16 computes. Against that, the only difference is the order in
//! which floating-point sums are taken (the all-reduce adds two gradients
//! where one process accumulates them; each process has its own thread
//! count), hence a tolerance; between the two ranks there is none.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use camp_worker::checkpoint::{self, TrainState};
use common::fashion_dir;
use tch::Tensor;

const SPEC: &str = "arch: preact_resnet20_cifar\ndataset: fashion-mnist\nepochs: 2\nbatch_size: 16\nprint_freq: 2\n\
lr: 0.05\nlr_schedule: []\nseed: 5\ndevice: cpu\ngpus: 2\n";

fn camp_worker(data: &Path, args: &[&str]) {
    let out = Command::new(env!("CARGO_BIN_EXE_camp-worker"))
        .arg("--data-dir")
        .arg(data)
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .expect("camp-worker runs");
    assert!(
        out.status.success(),
        "camp-worker {args:?}: {}\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

fn state(path: &Path) -> TrainState {
    checkpoint::load(&std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))).unwrap()
}

/// The trainable tensors (those with a momentum buffer) and their momentum, by name.
fn trained(state: &TrainState) -> BTreeMap<String, Tensor> {
    let mut out = BTreeMap::new();
    for (name, momentum) in &state.momentum {
        out.insert(name.clone(), state.model[name].shallow_clone());
        out.insert(format!("momentum.{name}"), momentum.shallow_clone());
    }
    out
}

#[test]
fn two_ranks_train_as_one_process_on_both_shards_and_agree_bit_for_bit() {
    // 89 images: five steps of 16 and a last batch of 9, split 5 + 4.
    let data = fashion_dir(89, 24);
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("job.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let path = |p: &Path| p.to_str().unwrap().to_string();
    camp_worker(data.path(), &["--threads", "1", "run", "--spec", &path(&spec), "--out", &path(&one), "--one-process"]);
    camp_worker(data.path(), &["run", "--spec", &path(&spec), "--out", &path(&two)]);

    let single = state(&one.join("latest.safetensors"));
    let rank0 = state(&two.join("latest.safetensors"));
    let rank1 = state(&two.join("rank-1.safetensors"));
    assert_eq!((single.meta.epoch, rank0.meta.epoch, rank1.meta.epoch), (2, 2, 2));
    assert_eq!((rank0.meta.step, rank1.meta.step), (12, 12));

    let (single, rank0, rank1) = (trained(&single), trained(&rank0), trained(&rank1));
    assert_eq!(single.keys().collect::<Vec<_>>(), rank0.keys().collect::<Vec<_>>());
    assert!(!rank0.is_empty());
    // Between the ranks: the same bits.
    for (name, t) in &rank0 {
        assert!(t.equal(&rank1[name]), "rank 1's {name} differs from rank 0's");
    }
    // Against one process: within float rounding of the sums' order.
    let mut worst = 0f64;
    for (name, t) in &rank0 {
        let reference = &single[name];
        let scale = 1.0 + reference.abs().max().double_value(&[]);
        let diff = (t - reference).abs().max().double_value(&[]) / scale;
        assert!(diff <= 1e-4, "{name}: two ranks differ from one process by {diff:e} (relative)");
        worst = worst.max(diff);
    }
    println!("largest relative difference between 2 ranks and 1 process on both shards: {worst:e}");
}

#[test]
fn a_rank_that_cannot_start_fails_the_run_with_a_message_naming_it() {
    // No data set where the ranks look: rank 0 fails to load it, with the data set named;
    // the run ends (no rank waits for ever).
    let empty = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("job.yaml");
    std::fs::write(&spec, SPEC).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_camp-worker"))
        .arg("--data-dir")
        .arg(empty.path())
        .args(["run", "--spec", spec.to_str().unwrap(), "--out", dir.path().join("o").to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("rank 1 of 2") || stderr.contains("fashion-mnist"), "{stderr}");
}
