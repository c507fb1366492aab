//! The worker's own libtorch ops (`csrc/fused.cpp`), for what tch's ops would
//! compose from several kernels each way: training on a GPU is bound by the
//! host's cost per op (GPU.md).

use std::ffi::{c_char, c_void, CStr};

use tch::{TchError, Tensor};

use crate::error::Result;

extern "C" {
    fn camp_dorefa_activation(x: *const c_void, levels: i64, error: *mut *mut c_char) -> *mut c_void;
    fn camp_free_error(error: *mut c_char);
}

/// DoReFa's activation `round_k(clamp(x, 0, 1))` with `levels` = 2^k - 1
/// steps, the gradient passed where `0 <= x <= 1` (ALGORITHMS 3): one kernel
/// forward (fake quantisation), one backward.
pub fn dorefa_activation(x: &Tensor, levels: i64) -> Result<Tensor> {
    let mut error: *mut c_char = std::ptr::null_mut();
    // SAFETY: `x` outlives the call; a non-null result is a new tensor that the
    // returned `Tensor` owns, a null one comes with a malloc'ed message (or none).
    unsafe {
        let out = camp_dorefa_activation(x.as_ptr().cast(), levels, &mut error);
        if !out.is_null() {
            return Ok(Tensor::from_ptr(out.cast()));
        }
        let message = if error.is_null() { "out of memory".to_string() } else { CStr::from_ptr(error).to_string_lossy().into_owned() };
        camp_free_error(error);
        Err(TchError::Torch(format!("dorefa_activation: {message}")).into())
    }
}
