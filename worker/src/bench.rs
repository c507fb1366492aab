//! Throughput of training and evaluation steps on random data already on the
//! device, so that only the model, the optimiser and the device are measured.

use std::fmt;
use std::time::Instant;

use serde::Serialize;
use tch::nn::VarStore;
use tch::{Device, Kind, Reduction, Tensor};

use crate::error::Result;
use crate::model::{ComputeOptions, PreActResNet};
use crate::optim::Sgd;

#[derive(Debug, Clone, Serialize)]
pub struct BenchConfig {
    pub arch: String,
    pub batch: i64,
    #[serde(serialize_with = "serialize_device")]
    pub device: Device,
    pub bf16: bool,
    pub channels_last: bool,
    /// Untimed steps first (cuDNN autotuning, allocator warm-up).
    pub warmup_steps: usize,
    pub steps: usize,
}

fn serialize_device<S: serde::Serializer>(device: &Device, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_str(&format!("{device:?}"))
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub config: BenchConfig,
    pub train_images_per_s: f64,
    pub train_ms_per_step: f64,
    pub eval_images_per_s: f64,
}

impl fmt::Display for BenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        writeln!(f, "{} batch {} on {:?} (bf16 {}, channels-last {}), {} timed steps", c.arch, c.batch, c.device, c.bf16, c.channels_last, c.steps)?;
        writeln!(f, "{:<8} {:>12} {:>10}", "phase", "images/s", "ms/step")?;
        writeln!(f, "{:<8} {:>12.0} {:>10.2}", "train", self.train_images_per_s, self.train_ms_per_step)?;
        write!(f, "{:<8} {:>12.0} {:>10.2}", "eval", self.eval_images_per_s, 1000.0 * c.batch as f64 / self.eval_images_per_s)
    }
}

fn synchronize(device: Device) {
    if let Device::Cuda(index) = device {
        tch::Cuda::synchronize(index as i64);
    }
}

/// Times `config.steps` training steps (forward, backward, SGD) and as many
/// evaluation steps on a 3x32x32, 10-class input.
pub fn run_bench(config: &BenchConfig) -> Result<BenchReport> {
    if config.device.is_cuda() {
        tch::Cuda::cudnn_set_benchmark(true);
    }
    let vs = VarStore::new(config.device);
    let options = ComputeOptions { bf16: config.bf16, channels_last: config.channels_last };
    let model = PreActResNet::new(&vs.root(), &config.arch, 3, 10, options)?;
    let mut sgd = Sgd::new(&vs, 0.9, 2e-4);
    let images = Tensor::f_randn([config.batch, 3, 32, 32], (Kind::Float, config.device))?;
    let labels = Tensor::f_randint(10, [config.batch], (Kind::Int64, config.device))?;

    let mut train_step = || -> Result<()> {
        let logits = model.forward_t(&images, true)?;
        let loss = logits.f_cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0)?;
        sgd.step(&loss, 0.01)
    };
    for _ in 0..config.warmup_steps {
        train_step()?;
    }
    synchronize(config.device);
    let started = Instant::now();
    for _ in 0..config.steps {
        train_step()?;
    }
    synchronize(config.device);
    let train_seconds = started.elapsed().as_secs_f64();

    let eval_step = || -> Result<Tensor> { tch::no_grad(|| model.forward_t(&images, false)) };
    for _ in 0..config.warmup_steps {
        let _ = eval_step()?;
    }
    synchronize(config.device);
    let started = Instant::now();
    for _ in 0..config.steps {
        let _ = eval_step()?;
    }
    synchronize(config.device);
    let eval_seconds = started.elapsed().as_secs_f64();

    let images_timed = (config.batch * config.steps as i64) as f64;
    Ok(BenchReport {
        config: config.clone(),
        train_images_per_s: images_timed / train_seconds,
        train_ms_per_step: 1000.0 * train_seconds / config.steps as f64,
        eval_images_per_s: images_timed / eval_seconds,
    })
}
