//! The worker binary's own promises: CUDA is never replaced by the CPU.

use std::process::Command;

#[test]
fn asking_for_cuda_without_a_gpu_fails_loudly() {
    if camp_worker::device::cuda_device_count() > 0 {
        return; // a GPU machine: nothing to refuse
    }
    let out = Command::new(camp_e2e::bin("camp-worker"))
        .args(["--device", "cuda", "--coordinator", "http://127.0.0.1:1", "bench"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must not fall back to the CPU: {err}");
    assert!(err.contains("cuda"), "the error names the device: {err}");
}
