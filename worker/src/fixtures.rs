//! Data-set files written for tests: synthetic images in the official formats
//! (CIFAR binary batches, Fashion-MNIST IDX), whose classes are learnable, so
//! that a test trains for real on a few hundred images without a download.
//! Built only for tests and for crates that enable the `testsuite` feature
//! (the system tests); never part of the worker's public API otherwise.

use std::io::Write;
use std::path::Path;

use crate::data::{
    DatasetInfo, CIFAR10, CIFAR100, CIFAR100_TEST_FILE, CIFAR100_TRAIN_FILE, CIFAR10_TEST_FILE, CIFAR10_TRAIN_FILES, FASHION_FILES,
    FASHION_MNIST, IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC,
};
use crate::rng::SplitMix64;

/// Synthetic images whose class is learnable: each class has its own mean
/// intensity per channel, plus uniform noise. Returns (labels, CHW pixels).
fn synthetic_images(info: &DatasetInfo, n: usize, rng: &mut SplitMix64) -> Vec<(u8, Vec<u8>)> {
    let plane = (info.height * info.width) as usize;
    (0..n)
        .map(|_| {
            let class = rng.below(info.classes as u64);
            // Class digits in base 5 pick a level per channel (one channel: the class itself).
            let levels: Vec<u64> = if info.channels == 1 {
                vec![class * 4]
            } else {
                (0..info.channels as u32).map(|c| (class / 5u64.pow(c)) % 5 * 9).collect()
            };
            let mut pixels = Vec::with_capacity(plane * info.channels as usize);
            for level in levels {
                let mean = 30 + level * 5;
                pixels.extend((0..plane).map(|_| (mean + rng.below(31)).saturating_sub(15).min(255) as u8));
            }
            (class as u8, pixels)
        })
        .collect()
}

fn write_bytes(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}

fn cifar_records(info: &DatasetInfo, n: usize, rng: &mut SplitMix64, with_coarse: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (label, pixels) in synthetic_images(info, n, rng) {
        if with_coarse {
            out.push(label / 5);
        }
        out.push(label);
        out.extend(pixels);
    }
    out
}

/// Writes `data_dir/cifar10/{data_batch_1..5,test_batch}.bin` in the official
/// binary format: `n_train` images spread over the five batches, `n_test` in the test batch.
pub fn write_cifar10_like(data_dir: &Path, n_train: usize, n_test: usize, seed: u64) -> std::io::Result<()> {
    let dir = data_dir.join(CIFAR10.name);
    std::fs::create_dir_all(&dir)?;
    let mut rng = SplitMix64::new(seed);
    let per_file = n_train.div_ceil(CIFAR10_TRAIN_FILES.len());
    let mut left = n_train;
    for file in CIFAR10_TRAIN_FILES {
        let n = per_file.min(left);
        left -= n;
        write_bytes(&dir.join(file), &cifar_records(&CIFAR10, n, &mut rng, false))?;
    }
    write_bytes(&dir.join(CIFAR10_TEST_FILE), &cifar_records(&CIFAR10, n_test, &mut rng, false))
}

/// Writes `data_dir/cifar100/{train,test}.bin` in the official binary format
/// (coarse label byte, fine label byte, pixels).
pub fn write_cifar100_like(data_dir: &Path, n_train: usize, n_test: usize, seed: u64) -> std::io::Result<()> {
    let dir = data_dir.join(CIFAR100.name);
    std::fs::create_dir_all(&dir)?;
    let mut rng = SplitMix64::new(seed);
    write_bytes(&dir.join(CIFAR100_TRAIN_FILE), &cifar_records(&CIFAR100, n_train, &mut rng, true))?;
    write_bytes(&dir.join(CIFAR100_TEST_FILE), &cifar_records(&CIFAR100, n_test, &mut rng, true))
}

/// Writes the four Fashion-MNIST IDX files into `data_dir/fashion-mnist/`,
/// gzip-compressed (`*.gz`, as Debian ships them) or plain.
pub fn write_fashion_mnist_like(data_dir: &Path, n_train: usize, n_test: usize, seed: u64, gzip: bool) -> std::io::Result<()> {
    let dir = data_dir.join(FASHION_MNIST.name);
    std::fs::create_dir_all(&dir)?;
    let mut rng = SplitMix64::new(seed);
    for (split, n) in [(0, n_train), (2, n_test)] {
        let samples = synthetic_images(&FASHION_MNIST, n, &mut rng);
        let mut images = Vec::new();
        for v in [IDX_IMAGES_MAGIC, n as u32, FASHION_MNIST.height as u32, FASHION_MNIST.width as u32] {
            images.extend(v.to_be_bytes());
        }
        let mut labels = Vec::new();
        for v in [IDX_LABELS_MAGIC, n as u32] {
            labels.extend(v.to_be_bytes());
        }
        for (label, pixels) in samples {
            labels.push(label);
            images.extend(pixels);
        }
        for (stem, bytes) in [(FASHION_FILES[split], images), (FASHION_FILES[split + 1], labels)] {
            if gzip {
                let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
                gz.write_all(&bytes)?;
                write_bytes(&dir.join(format!("{stem}.gz")), &gz.finish()?)?;
            } else {
                write_bytes(&dir.join(stem), &bytes)?;
            }
        }
    }
    Ok(())
}
