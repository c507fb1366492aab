//! What the bindings of the worker's C++ (`csrc/`) share: the messages its
//! entry points hand back (`csrc/ffi.h`).

use std::ffi::{c_char, CStr};

use tch::TchError;

use crate::error::EngineError;

extern "C" {
    fn camp_free_message(message: *mut c_char);
}

/// The text of a message from `csrc/`, freed.
///
/// # Safety
/// `message` is null or a message from `csrc/`, not used afterwards.
pub(crate) unsafe fn take_text(message: *mut c_char) -> String {
    if message.is_null() {
        return String::new();
    }
    let text = CStr::from_ptr(message).to_string_lossy().into_owned();
    camp_free_message(message);
    text
}

/// The error of a failed call to `what`, its message freed.
///
/// # Safety
/// As `take_text`.
pub(crate) unsafe fn take_error(message: *mut c_char, what: &str) -> EngineError {
    let text = take_text(message);
    // A null message: the C++ side could not even allocate one.
    TchError::Torch(format!("{what}: {}", if text.is_empty() { "out of memory" } else { &text })).into()
}
