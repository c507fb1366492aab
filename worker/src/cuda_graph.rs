//! A training step captured once in a CUDA graph and replayed
//! (`csrc/cuda_graph.cpp`, libtorch's `at::cuda::CUDAGraph`): on a GPU the
//! step is bound by the host's op dispatch, thousands of ops a step (GPU.md),
//! and a replay is one launch.
//!
//! The C++ is a shared library of its own, embedded in the worker and loaded
//! from memory (memfd) only once libtorch_cuda is loaded, since the worker does
//! not link libtorch_cuda. On the CPU, or in a build made without the CUDA
//! runtime's headers, asking for a graph is an error that says so; it never
//! quietly runs eager instead.

use std::ffi::{c_char, c_void};

use tch::Device;

use crate::csrc::take_text;
use crate::error::{EngineError, Result};

type New = unsafe extern "C" fn(*mut *mut c_char) -> *mut c_void;
type Begin = unsafe extern "C" fn(*mut c_void, i64, *mut *mut c_char) -> bool;
type Call = unsafe extern "C" fn(*mut c_void, *mut *mut c_char) -> bool;
type Free = unsafe extern "C" fn(*mut c_void);

/// The library's entry points.
struct Api {
    new: New,
    begin: Begin,
    end: Call,
    replay: Call,
    free: Free,
}

fn refused(why: impl std::fmt::Display) -> EngineError {
    EngineError::Device(format!("cuda_graph: {why}"))
}

/// The library, loaded once (a GPU machine), or why not.
fn api(device: Device) -> Result<&'static Api> {
    let Device::Cuda(_) = device else {
        return Err(refused("CUDA graphs capture GPU work, and this run trains on the CPU"));
    };
    static API: std::sync::OnceLock<std::result::Result<Api, String>> = std::sync::OnceLock::new();
    API.get_or_init(load).as_ref().map_err(refused)
}

#[cfg(not(camp_cuda_graph))]
fn load() -> std::result::Result<Api, String> {
    Err("this camp-worker was built without the CUDA runtime's headers (scripts/libtorch.sh fetches them), so without CUDA graphs".into())
}

#[cfg(camp_cuda_graph)]
fn load() -> std::result::Result<Api, String> {
    static LIBRARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libcamp_cuda_graph.so"));
    use std::io::Write;
    use std::os::fd::FromRawFd;
    let last_error = || std::io::Error::last_os_error().to_string();
    // SAFETY: memfd_create with a NUL-terminated name; the fd is owned by `file`.
    let fd = unsafe { libc::memfd_create(c"camp_cuda_graph".as_ptr(), 0) };
    if fd < 0 {
        return Err(format!("memfd_create: {}", last_error()));
    }
    // SAFETY: `fd` is a fresh descriptor this function owns.
    let mut file = unsafe { std::fs::File::from_raw_fd(fd) };
    file.write_all(LIBRARY).map_err(|e| format!("writing the CUDA graph library: {e}"))?;
    let path = std::ffi::CString::new(format!("/proc/self/fd/{fd}")).expect("no NUL in a path of digits");
    // SAFETY: dlopen/dlsym/dlerror with NUL-terminated strings; the handle is kept
    // for the life of the process (the library must stay loaded).
    unsafe {
        let handle = libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            let err = libc::dlerror();
            let why = if err.is_null() { "unknown".to_string() } else { std::ffi::CStr::from_ptr(err).to_string_lossy().into_owned() };
            return Err(format!("the CUDA graph library did not load (is libtorch_cuda loaded?): {why}"));
        }
        let symbol = |name: &std::ffi::CStr| {
            let f = libc::dlsym(handle, name.as_ptr());
            if f.is_null() {
                Err(format!("the CUDA graph library lacks {}", name.to_string_lossy()))
            } else {
                Ok(f)
            }
        };
        Ok(Api {
            new: std::mem::transmute::<*mut c_void, New>(symbol(c"camp_graph_new")?),
            begin: std::mem::transmute::<*mut c_void, Begin>(symbol(c"camp_graph_capture_begin")?),
            end: std::mem::transmute::<*mut c_void, Call>(symbol(c"camp_graph_capture_end")?),
            replay: std::mem::transmute::<*mut c_void, Call>(symbol(c"camp_graph_replay")?),
            free: std::mem::transmute::<*mut c_void, Free>(symbol(c"camp_graph_free")?),
        })
    }
}

/// Whether CUDA graphs can be used on `device`; the error says why not.
pub fn check(device: Device) -> Result<()> {
    api(device).map(|_| ())
}

/// A captured piece of GPU work, replayed on demand.
pub struct CudaGraph {
    raw: *mut c_void,
    api: &'static Api,
}

impl CudaGraph {
    /// Captures the GPU work `body` issues on `device` (recorded, not run: call
    /// [`CudaGraph::replay`] to run it, this time too). Tensors `body` makes are
    /// the graph's own and are rewritten by every replay; the tensors it reads
    /// and updates in place must keep their memory (static buffers).
    pub fn capture<T>(device: Device, body: impl FnOnce() -> Result<T>) -> Result<(CudaGraph, T)> {
        let api = api(device)?;
        let Device::Cuda(index) = device else { unreachable!("api() refuses the CPU") };
        let mut error: *mut c_char = std::ptr::null_mut();
        // SAFETY: a fresh graph or null with a message.
        let raw = unsafe { (api.new)(&mut error) };
        if raw.is_null() {
            // SAFETY: `error` is null or a message from the library.
            return Err(refused(unsafe { take_text(error) }));
        }
        let graph = CudaGraph { raw, api };
        graph.call(|raw, error| unsafe { (api.begin)(raw, index as i64, error) }, "capture_begin")?;
        let made = body();
        let ended = graph.call(|raw, error| unsafe { (api.end)(raw, error) }, "capture_end");
        let made = made?;
        ended?;
        Ok((graph, made))
    }

    /// Runs the captured work once more, on the current stream.
    pub fn replay(&mut self) -> Result<()> {
        let api = self.api;
        self.call(|raw, error| unsafe { (api.replay)(raw, error) }, "replay")
    }

    fn call(&self, f: impl FnOnce(*mut c_void, *mut *mut c_char) -> bool, what: &str) -> Result<()> {
        let mut error: *mut c_char = std::ptr::null_mut();
        if f(self.raw, &mut error) {
            Ok(())
        } else {
            // SAFETY: `error` is null or a message from the library.
            Err(refused(format!("{what}: {}", unsafe { take_text(error) })))
        }
    }
}

impl Drop for CudaGraph {
    fn drop(&mut self) {
        // SAFETY: `raw` came from camp_graph_new and is freed once.
        unsafe { (self.api.free)(self.raw) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cuda_graph_on_the_cpu_is_refused_with_the_reason() {
        let error = check(Device::Cpu).unwrap_err().to_string();
        assert!(error.contains("cuda_graph") && error.contains("CPU"), "{error}");
        let captured = CudaGraph::capture(Device::Cpu, || Ok(())).err().expect("refused").to_string();
        assert!(captured.contains("on the CPU"), "{captured}");
    }

    #[cfg(camp_cuda_graph)]
    #[test]
    fn the_embedded_library_does_not_load_without_libtorch_cuda() {
        // This CPU machine has no libtorch_cuda: the library's CUDA symbols stay undefined.
        let error = load().err().expect("refused");
        assert!(error.contains("did not load"), "{error}");
    }
}
