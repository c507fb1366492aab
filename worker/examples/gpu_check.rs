//! GPU smoke check and benchmark, run on a CUDA machine with one prepared command:
//! `gpu_check DATA_DIR` (DATA_DIR holding `fashion-mnist/`). Checks device
//! selection, benchmarks ResNet-44 training in fp32 / bf16 / channels-last,
//! quantisation-aware at 4 and 1 bits and the dual-path sp step,
//! and trains on the real Fashion-MNIST through the baseline stage.

use std::path::Path;
use std::time::Instant;

use camp_proto::spec::{DeviceRequest, JobSpec, LrStep};
use camp_worker::bench::{run_bench, BenchConfig};
use camp_worker::device::{cuda_device_count, parse_device};
use camp_worker::stage::{run_stage, CheckpointBlob, Control, Observer, StageOutcome};

struct Print;

impl Observer for Print {
    fn metrics(&mut self, _step: i64, _epoch: u32, _values: &[(&str, f64)]) {}
    fn log(&mut self, line: String) {
        println!("  {line}");
    }
    fn checkpoint(&mut self, blob: CheckpointBlob) -> Result<(), String> {
        camp_worker::checkpoint::verify(&blob.bytes).map(|_| ()).map_err(|e| e.to_string())
    }
    fn control(&mut self) -> Control {
        Control::Continue
    }
}

fn main() {
    let data_dir = std::env::args().nth(1).expect("usage: gpu_check DATA_DIR");
    println!("CUDA devices: {}", cuda_device_count());
    let device = parse_device("cuda").expect("cuda");
    println!("parse_device(cuda:7) -> {:?}", parse_device("cuda:7").err().map(|e| e.to_string()));

    for (batch, bf16, channels_last) in [(128, false, false), (512, false, false), (512, false, true), (512, true, false), (512, true, true)] {
        let config = BenchConfig {
            arch: "preact_resnet44_cifar".into(),
            batch,
            device,
            bf16,
            channels_last,
            warmup_steps: 15,
            steps: 40,
            bits: None,
            dual_path: false,
        };
        match run_bench(&config) {
            Ok(report) => println!("{report}\n"),
            Err(e) => println!("bench {batch} bf16 {bf16} cl {channels_last}: ERROR {e}\n"),
        }
    }

    // Quantised training (GPU.md's reference-style figures: 4-bit 3,030 / 9,960,
    // 1-bit 4,920 / 12,800, dual path 1,060 / 4,330 images/s at batch 128 / 512).
    for (bits, dual_path) in [(Some(4), false), (Some(1), false), (None, true)] {
        for (batch, bf16, channels_last) in [(128, false, false), (512, false, false), (512, true, true)] {
            let config = BenchConfig {
                arch: "preact_resnet44_cifar".into(),
                batch,
                device,
                bf16,
                channels_last,
                warmup_steps: 15,
                steps: 40,
                bits,
                dual_path,
            };
            match run_bench(&config) {
                Ok(report) => println!("{report}\n"),
                Err(e) => println!("bench bits {bits:?} dual path {dual_path} {batch} bf16 {bf16} cl {channels_last}: ERROR {e}\n"),
            }
        }
    }

    for (arch, batch, bf16, channels_last, epochs) in
        [("preact_resnet20_cifar", 128, false, false, 3), ("preact_resnet44_cifar", 512, true, true, 3)]
    {
        let spec = JobSpec {
            arch: arch.into(),
            dataset: "fashion-mnist".into(),
            batch_size: batch,
            epochs,
            lr: 0.1,
            lr_schedule: vec![LrStep { epoch: epochs, gamma: 0.1 }],
            device: DeviceRequest::Cuda,
            bf16,
            channels_last,
            print_freq: 50,
            ..JobSpec::default()
        };
        println!("train {arch} batch {batch} bf16 {bf16} channels-last {channels_last}, {epochs} epochs on the full Fashion-MNIST:");
        let started = Instant::now();
        match run_stage(&spec, Path::new(&data_dir), device, None, None, &mut Print) {
            Ok(StageOutcome::Completed(s)) => println!(
                "  => final top-1 {:.4} top-5 {:.4}, {:.0} training images/s, {:.1} s in all\n",
                s.final_top1,
                s.final_top5,
                s.images_per_s,
                started.elapsed().as_secs_f64()
            ),
            Ok(_) => println!("  => stopped early\n"),
            Err(e) => println!("  => ERROR {e}\n"),
        }
    }
}
