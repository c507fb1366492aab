//! Loaders on generated files in the three official formats.

use std::path::Path;

use camp_worker::data::{self, Dataset};
use camp_worker::fixtures;
use flate2::read::GzDecoder;
use std::io::Read;
use tch::{Device, Kind, Tensor};

/// Expected normalised value of a u8 pixel: (x/255 - 0.5) / 0.5.
fn normalised(pixels: &[u8]) -> Tensor {
    Tensor::from_slice(&pixels.iter().map(|&p| (p as f32 / 255.0 - 0.5) / 0.5).collect::<Vec<f32>>())
}

fn assert_close(a: &Tensor, b: &Tensor) {
    let diff = (a - b).abs().max().double_value(&[]);
    assert!(diff < 1e-6, "max difference {diff}");
}

#[test]
fn cifar10_reads_all_batches_in_order_with_labels_and_normalisation() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_cifar10_like(dir.path(), 23, 7, 5).unwrap();
    let set = Dataset::load("cifar10", dir.path(), Device::Cpu, 0, 0).unwrap();
    assert_eq!((set.train_len(), set.test_len()), (23, 7));

    let test_file = std::fs::read(dir.path().join("cifar10/test_batch.bin")).unwrap();
    let (images, labels) = set.test_batch(0, 7).unwrap();
    assert_eq!(images.size(), [7, 3, 32, 32]);
    assert_eq!(images.kind(), Kind::Float);
    for (i, record) in test_file.chunks(3073).enumerate() {
        assert_eq!(labels.int64_value(&[i as i64]), record[0] as i64);
        assert_close(&images.get(i as i64).flatten(0, -1), &normalised(&record[1..]));
    }
    // Limits keep the first images: the first train image is data_batch_1's first record.
    let limited = Dataset::load("cifar10", dir.path(), Device::Cpu, 6, 2).unwrap();
    assert_eq!((limited.train_len(), limited.test_len()), (6, 2));
}

#[test]
fn cifar100_uses_the_fine_label() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_cifar100_like(dir.path(), 40, 30, 9).unwrap();
    let set = Dataset::load("cifar100", dir.path(), Device::Cpu, 0, 0).unwrap();
    assert_eq!((set.train_len(), set.test_len(), set.info.classes), (40, 30, 100));
    let file = std::fs::read(dir.path().join("cifar100/test.bin")).unwrap();
    let (images, labels) = set.test_batch(0, 30).unwrap();
    assert_eq!(images.size(), [30, 3, 32, 32]);
    let mut fine_differs_from_coarse = false;
    for (i, record) in file.chunks(3074).enumerate() {
        assert_eq!(labels.int64_value(&[i as i64]), record[1] as i64);
        fine_differs_from_coarse |= record[0] != record[1];
        assert_close(&images.get(i as i64).flatten(0, -1), &normalised(&record[2..]));
    }
    assert!(fine_differs_from_coarse);
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    GzDecoder::new(std::fs::File::open(path).unwrap()).read_to_end(&mut out).unwrap();
    out
}

#[test]
fn fashion_mnist_reads_gzip_and_plain_idx() {
    let gz = tempfile::tempdir().unwrap();
    let plain = tempfile::tempdir().unwrap();
    fixtures::write_fashion_mnist_like(gz.path(), 12, 8, 4, true).unwrap();
    fixtures::write_fashion_mnist_like(plain.path(), 12, 8, 4, false).unwrap();
    let a = Dataset::load("fashion-mnist", gz.path(), Device::Cpu, 0, 0).unwrap();
    let b = Dataset::load("fashion-mnist", plain.path(), Device::Cpu, 0, 0).unwrap();
    assert_eq!((a.train_len(), a.test_len()), (12, 8));
    let (ai, al) = a.test_batch(0, 8).unwrap();
    let (bi, bl) = b.test_batch(0, 8).unwrap();
    assert_eq!(ai.size(), [8, 1, 28, 28]);
    assert!(ai.equal(&bi) && al.equal(&bl));

    let images = gunzip(&gz.path().join("fashion-mnist/t10k-images-idx3-ubyte.gz"));
    let labels = gunzip(&gz.path().join("fashion-mnist/t10k-labels-idx1-ubyte.gz"));
    for i in 0..8 {
        assert_eq!(al.int64_value(&[i as i64]), labels[8 + i] as i64);
        assert_close(&ai.get(i as i64).flatten(0, -1), &normalised(&images[16 + i * 784..16 + (i + 1) * 784]));
    }
    // Extremes of the normalisation.
    assert_close(&data::normalize(&Tensor::from_slice(&[0u8, 255])).unwrap(), &Tensor::from_slice(&[-1.0f32, 1.0]));
}

#[test]
fn training_batches_are_augmented_but_keep_shape_range_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    fixtures::write_cifar10_like(dir.path(), 30, 5, 2).unwrap();
    let set = Dataset::load("cifar10", dir.path(), Device::Cpu, 0, 0).unwrap();
    let plan = set.epoch_plan(1, 1).unwrap();
    let mut labels = Vec::new();
    for (start, len) in [(0, 16), (16, 14)] {
        let (images, batch_labels) = set.train_batch(&plan, start, len).unwrap();
        assert_eq!(images.size(), [len, 3, 32, 32]);
        assert!(images.min().double_value(&[]) >= -1.0 && images.max().double_value(&[]) <= 1.0);
        labels.extend(Vec::<i64>::try_from(&batch_labels).unwrap());
    }
    let mut file_labels: Vec<i64> = (1..=5)
        .flat_map(|i| std::fs::read(dir.path().join(format!("cifar10/data_batch_{i}.bin"))).unwrap())
        .collect::<Vec<u8>>()
        .chunks(3073)
        .map(|r| r[0] as i64)
        .collect();
    labels.sort();
    file_labels.sort();
    assert_eq!(labels, file_labels, "an epoch visits every training image once");
}

#[test]
fn available_datasets_and_missing_files() {
    let dir = tempfile::tempdir().unwrap();
    assert!(data::available_datasets(dir.path()).is_empty());
    fixtures::write_cifar100_like(dir.path(), 2, 2, 1).unwrap();
    fixtures::write_fashion_mnist_like(dir.path(), 2, 2, 1, true).unwrap();
    assert_eq!(data::available_datasets(dir.path()), ["cifar100", "fashion-mnist"]);

    let err = Dataset::load("cifar10", dir.path(), Device::Cpu, 0, 0).err().unwrap().to_string();
    assert!(err.contains("cifar10/data_batch_1.bin"), "{err}");
}
