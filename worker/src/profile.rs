//! libtorch's profiler (Kineto, `csrc/profile.cpp`) around a piece of work:
//! how many ops the host dispatched and how long the GPU's kernels ran, by
//! name. Training a CIFAR ResNet on a GPU is bound by the host's cost per op
//! (GPU.md); this says by how much.

use std::ffi::c_char;

use crate::csrc::{take_error, take_text};
use crate::error::{EngineError, Result};

extern "C" {
    fn camp_profiler_start(with_cuda: bool, error: *mut *mut c_char) -> bool;
    fn camp_profiler_stop(summary: *mut *mut c_char, error: *mut *mut c_char) -> bool;
}

/// Where a profiled event ran.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum EventDevice {
    /// An op (or runtime call) on the host.
    Cpu,
    /// A kernel, memory copy or set on the GPU.
    Cuda,
}

/// All events of one name on one device.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EventTotal {
    pub device: EventDevice,
    pub name: String,
    pub count: u64,
    pub total_ns: u64,
}

/// Runs `work` under the profiler (with the GPU's kernels where `with_cuda`)
/// and returns its result and the events' totals.
pub fn profile<T>(with_cuda: bool, work: impl FnOnce() -> Result<T>) -> Result<(T, Vec<EventTotal>)> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: on failure `error` is null or a malloc'ed message, read once and freed.
    if !unsafe { camp_profiler_start(with_cuda, &mut error) } {
        return Err(unsafe { take_error(error, "profiler start") });
    }
    let outcome = work();
    let mut summary: *mut c_char = std::ptr::null_mut();
    // SAFETY: as above; on success `summary` is a malloc'ed text, read once and freed.
    if !unsafe { camp_profiler_stop(&mut summary, &mut error) } {
        return Err(unsafe { take_error(error, "profiler stop") });
    }
    let text = unsafe { take_text(summary) };
    Ok((outcome?, parse_summary(&text)?))
}

fn parse_summary(text: &str) -> Result<Vec<EventTotal>> {
    text.lines()
        .map(|line| {
            let bad = || EngineError::Model(format!("profiler summary line '{line}'"));
            let mut fields = line.splitn(4, '\t');
            let device = match fields.next() {
                Some("cpu") => EventDevice::Cpu,
                Some("cuda") => EventDevice::Cuda,
                _ => return Err(bad()),
            };
            let count = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            let total_ns = fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad)?;
            let name = fields.next().ok_or_else(bad)?.to_string();
            Ok(EventTotal { device, name, count, total_ns })
        })
        .collect()
}
