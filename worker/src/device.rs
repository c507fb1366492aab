//! Choosing the training device. CUDA is never replaced by the CPU silently:
//! asking for a GPU that is not there is an error.

use tch::Device;

use crate::error::{EngineError, Result};

/// Parses `cpu`, `cuda` or `cuda:N`; for CUDA, loads the CUDA backend and
/// checks that device N exists.
pub fn parse_device(name: &str) -> Result<Device> {
    let name = name.trim();
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    let index = match name.strip_prefix("cuda") {
        Some("") => 0,
        Some(rest) => rest
            .strip_prefix(':')
            .and_then(|n| n.parse::<usize>().ok())
            .ok_or_else(|| EngineError::Device(format!("'{name}' is not cpu, cuda or cuda:N")))?,
        None => return Err(EngineError::Device(format!("'{name}' is not cpu, cuda or cuda:N"))),
    };
    let count = cuda_device_count();
    if count == 0 {
        let why = match load_cuda_backend() {
            Ok(()) => "libtorch sees no CUDA device".to_string(),
            Err(e) => format!("libtorch_cuda.so could not be loaded ({e})"),
        };
        return Err(EngineError::Device(format!("'{name}' asked for, but {why}")));
    }
    if index >= count {
        return Err(EngineError::Device(format!("'{name}' asked for, but only {count} CUDA device(s) exist")));
    }
    Ok(Device::Cuda(index))
}

/// Number of CUDA devices libtorch can use, after loading its CUDA backend.
/// 0 where CUDA is absent.
pub fn cuda_device_count() -> usize {
    // Without the backend, CUDA is simply unavailable (CPU machines).
    let _ = load_cuda_backend();
    if !tch::Cuda::is_available() {
        return 0;
    }
    tch::Cuda::device_count().max(0) as usize
}

/// A binary linked against the CPU-only libtorch sees CUDA only once
/// `libtorch_cuda.so` is loaded into the process (GPU.md). Returns dlerror's
/// message where the library cannot be loaded.
fn load_cuda_backend() -> std::result::Result<(), String> {
    static LOADED: std::sync::OnceLock<std::result::Result<(), String>> = std::sync::OnceLock::new();
    LOADED
        .get_or_init(|| {
            // SAFETY: dlopen/dlerror with valid NUL-terminated strings; the handle is
            // kept for the life of the process on purpose (the backend must stay loaded).
            unsafe {
                let handle = libc::dlopen(c"libtorch_cuda.so".as_ptr(), libc::RTLD_NOW | libc::RTLD_GLOBAL);
                if handle.is_null() {
                    let err = libc::dlerror();
                    let msg = if err.is_null() {
                        "unknown dlopen error".to_string()
                    } else {
                        std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned()
                    };
                    return Err(msg);
                }
            }
            Ok(())
        })
        .clone()
}
