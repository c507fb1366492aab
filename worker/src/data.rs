//! The three image data sets in their official file formats, held on the
//! training device as u8, with batch-wise augmentation done there too.
//!
//! An epoch's randomness (order, crop offsets, flips) is planned at the
//! epoch's start from a generator seeded by (seed, epoch) alone, so a run
//! resumed mid-epoch replays the same plan and skips the steps already done.

use std::io::Read;
use std::path::{Path, PathBuf};

use tch::{Device, Kind, Tensor};

use crate::error::{EngineError, Result};
use crate::rng::SplitMix64;

/// What the engine needs to know about a data set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetInfo {
    pub name: &'static str,
    pub channels: i64,
    pub height: i64,
    pub width: i64,
    pub classes: i64,
    /// Zero padding on each side before the random crop (docs/method.md, "Data").
    pub crop_padding: i64,
}

pub const CIFAR10: DatasetInfo = DatasetInfo { name: "cifar10", channels: 3, height: 32, width: 32, classes: 10, crop_padding: 4 };
pub const CIFAR100: DatasetInfo = DatasetInfo { name: "cifar100", channels: 3, height: 32, width: 32, classes: 100, crop_padding: 4 };
pub const FASHION_MNIST: DatasetInfo =
    DatasetInfo { name: "fashion-mnist", channels: 1, height: 28, width: 28, classes: 10, crop_padding: 2 };

pub fn dataset_info(name: &str) -> Option<DatasetInfo> {
    [CIFAR10, CIFAR100, FASHION_MNIST].into_iter().find(|d| d.name == name)
}

pub(crate) const CIFAR10_TRAIN_FILES: [&str; 5] =
    ["data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin", "data_batch_5.bin"];
pub(crate) const CIFAR10_TEST_FILE: &str = "test_batch.bin";
pub(crate) const CIFAR100_TRAIN_FILE: &str = "train.bin";
pub(crate) const CIFAR100_TEST_FILE: &str = "test.bin";
pub(crate) const FASHION_FILES: [&str; 4] =
    ["train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"];
pub(crate) const IDX_IMAGES_MAGIC: u32 = 0x0803;
pub(crate) const IDX_LABELS_MAGIC: u32 = 0x0801;

/// Names of the data sets whose files are all present under `data_dir`.
pub fn available_datasets(data_dir: &Path) -> Vec<String> {
    let cifar10 = data_dir.join("cifar10");
    let cifar100 = data_dir.join("cifar100");
    let fashion = data_dir.join("fashion-mnist");
    let mut found = Vec::new();
    if CIFAR10_TRAIN_FILES.iter().chain([&CIFAR10_TEST_FILE]).all(|f| cifar10.join(f).is_file()) {
        found.push(CIFAR10.name.to_string());
    }
    if [CIFAR100_TRAIN_FILE, CIFAR100_TEST_FILE].iter().all(|f| cifar100.join(f).is_file()) {
        found.push(CIFAR100.name.to_string());
    }
    if FASHION_FILES.iter().all(|f| idx_path(&fashion, f).is_some()) {
        found.push(FASHION_MNIST.name.to_string());
    }
    found
}

/// One split as read from disk: CHW pixels of `n` images back to back.
struct RawSplit {
    pixels: Vec<u8>,
    labels: Vec<i64>,
}

/// A data set on the training device: images as u8 (N,C,H,W), labels as i64.
pub struct Dataset {
    pub info: DatasetInfo,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    device: Device,
}

/// One epoch's order, crop offsets and flips, on the training device.
pub struct EpochPlan {
    order: Tensor,
    /// Rows: crop row offset, crop column offset, flip (0/1); one column per position in the epoch.
    crops: Tensor,
}

impl Dataset {
    /// Reads `name` from `data_dir/<name>/`, keeping the first `train_limit` /
    /// `test_limit` images of each split (0 = all), and moves it to `device`.
    pub fn load(name: &str, data_dir: &Path, device: Device, train_limit: usize, test_limit: usize) -> Result<Self> {
        let info = dataset_info(name).ok_or_else(|| EngineError::Data {
            dataset: name.to_string(),
            path: data_dir.to_path_buf(),
            reason: "unknown data set".into(),
        })?;
        let dir = data_dir.join(info.name);
        let (train, test) = match info.name {
            "cifar10" => {
                let train_files: Vec<PathBuf> = CIFAR10_TRAIN_FILES.iter().map(|f| dir.join(f)).collect();
                (read_cifar(&info, &train_files, 0, train_limit)?, read_cifar(&info, &[dir.join(CIFAR10_TEST_FILE)], 0, test_limit)?)
            }
            "cifar100" => (
                // Records are (coarse label, fine label, pixels): the fine label is byte 1.
                read_cifar(&info, &[dir.join(CIFAR100_TRAIN_FILE)], 1, train_limit)?,
                read_cifar(&info, &[dir.join(CIFAR100_TEST_FILE)], 1, test_limit)?,
            ),
            _ => (
                read_idx_split(&info, &dir, FASHION_FILES[0], FASHION_FILES[1], train_limit)?,
                read_idx_split(&info, &dir, FASHION_FILES[2], FASHION_FILES[3], test_limit)?,
            ),
        };
        let (train_images, train_labels) = to_device(&info, train, device)?;
        let (test_images, test_labels) = to_device(&info, test, device)?;
        Ok(Dataset { info, train_images, train_labels, test_images, test_labels, device })
    }

    pub fn train_len(&self) -> i64 {
        self.train_labels.size()[0]
    }

    pub fn test_len(&self) -> i64 {
        self.test_labels.size()[0]
    }

    pub fn device(&self) -> Device {
        self.device
    }

    /// The plan of epoch `epoch` of a run seeded with `seed`: a pure function of both.
    pub fn epoch_plan(&self, seed: u64, epoch: u32) -> Result<EpochPlan> {
        let n = self.train_len() as usize;
        let mut rng = SplitMix64::for_stream(seed, epoch as u64);
        let order = rng.permutation(n);
        let offsets = 2 * self.info.crop_padding as u64 + 1;
        let mut crops = vec![0i64; 3 * n];
        for i in 0..n {
            crops[i] = rng.below(offsets) as i64;
            crops[n + i] = rng.below(offsets) as i64;
            crops[2 * n + i] = rng.below(2) as i64;
        }
        Ok(EpochPlan {
            order: Tensor::f_from_slice(&order)?.f_to_device(self.device)?,
            crops: Tensor::f_from_slice(&crops)?.f_view([3, n as i64])?.f_to_device(self.device)?,
        })
    }

    /// Training batch at positions `start..start+len` of the epoch's plan:
    /// padded, randomly cropped, maybe flipped, normalised; plus its labels.
    pub fn train_batch(&self, plan: &EpochPlan, start: i64, len: i64) -> Result<(Tensor, Tensor)> {
        let DatasetInfo { channels: c, height: h, width: w, crop_padding: pad, .. } = self.info;
        let (hp, wp) = (h + 2 * pad, w + 2 * pad);
        let indices = plan.order.f_narrow(0, start, len)?;
        let padded = self.train_images.f_index_select(0, &indices)?.f_constant_pad_nd([pad, pad, pad, pad])?;
        let crops = plan.crops.f_narrow(1, start, len)?;
        let row0 = crops.f_get(0)?.f_view([len, 1, 1, 1])?;
        let col0 = crops.f_get(1)?.f_view([len, 1, 1, 1])?;
        let flip = crops.f_get(2)?.f_view([len, 1, 1, 1])?;
        let opts = (Kind::Int64, self.device);
        let image = Tensor::f_arange(len, opts)?.f_view([len, 1, 1, 1])?;
        let channel = Tensor::f_arange(c, opts)?.f_view([1, c, 1, 1])?;
        let row = Tensor::f_arange(h, opts)?.f_view([1, 1, h, 1])?;
        let col = Tensor::f_arange(w, opts)?.f_view([1, 1, 1, w])?;
        // A flipped crop reads its columns right to left: col' = w-1-col = col + flip*(w-1-2col).
        let col = col.f_add(&flip.f_mul(&col.f_mul_scalar(-2)?.f_add_scalar(w - 1)?)?)?;
        // Flat index into the contiguous padded batch (B, C, Hp, Wp).
        let index = image
            .f_mul_scalar(c)?
            .f_add(&channel)?
            .f_mul_scalar(hp)?
            .f_add(&row0.f_add(&row)?)?
            .f_mul_scalar(wp)?
            .f_add(&col0.f_add(&col)?)?;
        let images = padded.f_flatten(0, -1)?.f_take(&index)?;
        Ok((normalize(&images)?, self.train_labels.f_index_select(0, &indices)?))
    }

    /// Test images `start..start+len`, normalised, without augmentation; plus labels.
    pub fn test_batch(&self, start: i64, len: i64) -> Result<(Tensor, Tensor)> {
        let images = self.test_images.f_narrow(0, start, len)?;
        Ok((normalize(&images)?, self.test_labels.f_narrow(0, start, len)?))
    }
}

/// u8 pixels to floats: x/255 in [0,1], then (x - 0.5) / 0.5 (docs/method.md, "Data").
pub fn normalize(images: &Tensor) -> Result<Tensor> {
    Ok(images.f_to_kind(Kind::Float)?.f_div_scalar(255.0)?.f_sub_scalar(0.5)?.f_div_scalar(0.5)?)
}

fn to_device(info: &DatasetInfo, split: RawSplit, device: Device) -> Result<(Tensor, Tensor)> {
    let n = split.labels.len() as i64;
    let images = Tensor::f_from_slice(&split.pixels)?.f_view([n, info.channels, info.height, info.width])?.f_to_device(device)?;
    Ok((images, Tensor::f_from_slice(&split.labels)?.f_to_device(device)?))
}

fn data_error(info: &DatasetInfo, path: &Path, reason: impl Into<String>) -> EngineError {
    EngineError::Data { dataset: info.name.to_string(), path: path.to_path_buf(), reason: reason.into() }
}

fn read_file(info: &DatasetInfo, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| data_error(info, path, format!("cannot read: {e}")))
}

/// Reads CIFAR binary records (label bytes, then 3072 CHW pixels) from `files`
/// in order, up to `limit` images (0 = all). The label is byte `label_at`.
fn read_cifar(info: &DatasetInfo, files: &[PathBuf], label_at: usize, limit: usize) -> Result<RawSplit> {
    let pixels_per_image = (info.channels * info.height * info.width) as usize;
    let record = label_at + 1 + pixels_per_image;
    let mut split = RawSplit { pixels: Vec::new(), labels: Vec::new() };
    for path in files {
        if limit > 0 && split.labels.len() >= limit {
            break;
        }
        let bytes = read_file(info, path)?;
        if bytes.len() % record != 0 {
            return Err(data_error(info, path, format!("size {} is not a multiple of the {record}-byte record", bytes.len())));
        }
        for rec in bytes.chunks_exact(record) {
            if limit > 0 && split.labels.len() >= limit {
                break;
            }
            let label = rec[label_at] as i64;
            if label >= info.classes {
                return Err(data_error(info, path, format!("label {label} out of range 0..{}", info.classes)));
            }
            split.labels.push(label);
            split.pixels.extend_from_slice(&rec[label_at + 1..]);
        }
    }
    Ok(split)
}

/// An IDX file's path: the gzip version if present, else the plain one.
fn idx_path(dir: &Path, stem: &str) -> Option<PathBuf> {
    [dir.join(format!("{stem}.gz")), dir.join(stem)].into_iter().find(|p| p.is_file())
}

fn read_idx(info: &DatasetInfo, dir: &Path, stem: &str) -> Result<(PathBuf, Vec<u8>)> {
    let path = idx_path(dir, stem).ok_or_else(|| data_error(info, &dir.join(stem), "missing (neither .gz nor plain)"))?;
    let raw = read_file(info, &path)?;
    if path.extension().is_some_and(|e| e == "gz") {
        let mut bytes = Vec::new();
        flate2::read::GzDecoder::new(raw.as_slice())
            .read_to_end(&mut bytes)
            .map_err(|e| data_error(info, &path, format!("bad gzip: {e}")))?;
        Ok((path, bytes))
    } else {
        Ok((path, raw))
    }
}

fn be_u32(bytes: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

fn read_idx_split(info: &DatasetInfo, dir: &Path, images_stem: &str, labels_stem: &str, limit: usize) -> Result<RawSplit> {
    let (images_path, images) = read_idx(info, dir, images_stem)?;
    let (labels_path, labels) = read_idx(info, dir, labels_stem)?;
    if images.len() < 16 || be_u32(&images, 0) != IDX_IMAGES_MAGIC {
        return Err(data_error(info, &images_path, "not an IDX image file (magic 0x00000803)"));
    }
    if labels.len() < 8 || be_u32(&labels, 0) != IDX_LABELS_MAGIC {
        return Err(data_error(info, &labels_path, "not an IDX label file (magic 0x00000801)"));
    }
    let (n, rows, cols) = (be_u32(&images, 4) as usize, be_u32(&images, 8) as i64, be_u32(&images, 12) as i64);
    if (rows, cols) != (info.height, info.width) || images.len() != 16 + n * (rows * cols) as usize {
        return Err(data_error(info, &images_path, format!("unexpected shape {n}x{rows}x{cols} or size")));
    }
    if be_u32(&labels, 4) as usize != n || labels.len() != 8 + n {
        return Err(data_error(info, &labels_path, format!("label count differs from the {n} images")));
    }
    let keep = if limit == 0 { n } else { limit.min(n) };
    let labels: Vec<i64> = labels[8..8 + keep].iter().map(|&l| l as i64).collect();
    if let Some(bad) = labels.iter().find(|&&l| l >= info.classes) {
        return Err(data_error(info, &labels_path, format!("label {bad} out of range 0..{}", info.classes)));
    }
    Ok(RawSplit { pixels: images[16..16 + keep * (rows * cols) as usize].to_vec(), labels })
}

// ---- Writers of small synthetic data sets in the official formats (for tests) ----

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fixtures::{write_cifar10_like, write_fashion_mnist_like};

    /// The batched crop and flip must equal the obvious per-image version.
    #[test]
    fn batch_augmentation_equals_per_image_crop_and_flip() {
        tch::set_num_threads(1);
        let dir = tempfile::tempdir().unwrap();
        write_cifar10_like(dir.path(), 20, 4, 3).unwrap();
        let data = Dataset::load("cifar10", dir.path(), Device::Cpu, 0, 0).unwrap();
        let plan = data.epoch_plan(7, 2).unwrap();
        let (start, len) = (5, 9);
        let (batch, labels) = data.train_batch(&plan, start, len).unwrap();
        assert_eq!(batch.size(), [len, 3, 32, 32]);
        for i in 0..len {
            let source = plan.order.int64_value(&[start + i]);
            let (row0, col0, flip) =
                (plan.crops.int64_value(&[0, start + i]), plan.crops.int64_value(&[1, start + i]), plan.crops.int64_value(&[2, start + i]));
            let padded = data.train_images.get(source).constant_pad_nd([4, 4, 4, 4]);
            let mut crop = padded.narrow(1, row0, 32).narrow(2, col0, 32);
            if flip == 1 {
                crop = crop.flip([2]);
            }
            let expected = normalize(&crop).unwrap();
            assert!(batch.get(i).equal(&expected), "image {i} (source {source}, crop {row0},{col0}, flip {flip})");
            assert_eq!(labels.int64_value(&[i]), data.train_labels.int64_value(&[source]));
        }
    }

    #[test]
    fn epoch_plans_depend_on_seed_and_epoch_only() {
        let dir = tempfile::tempdir().unwrap();
        write_fashion_mnist_like(dir.path(), 50, 5, 1, true).unwrap();
        let data = Dataset::load("fashion-mnist", dir.path(), Device::Cpu, 0, 0).unwrap();
        let a = data.epoch_plan(1, 3).unwrap();
        let b = data.epoch_plan(1, 3).unwrap();
        assert!(a.order.equal(&b.order) && a.crops.equal(&b.crops));
        let other_epoch = data.epoch_plan(1, 4).unwrap();
        let other_seed = data.epoch_plan(2, 3).unwrap();
        assert!(!a.order.equal(&other_epoch.order) && !a.order.equal(&other_seed.order));
        // Offsets lie in 0..=2*pad, flips in {0, 1}; every image appears once.
        assert!(a.crops.narrow(0, 0, 2).max().int64_value(&[]) <= 4 && a.crops.min().int64_value(&[]) >= 0);
        assert!(a.crops.get(2).max().int64_value(&[]) <= 1);
        assert!(a.order.sort(0, false).0.equal(&Tensor::arange(50, (Kind::Int64, Device::Cpu))));
    }
}
