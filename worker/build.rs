//! Compiles the worker's C++ (`csrc/`: its own libtorch ops, the profiler's
//! summary) against the libtorch that tch links, found where torch-sys found it
//! (`LIBTORCH`, a Python torch, ...), and embeds an rpath to its `lib/` so that
//! the worker's binaries and tests find libtorch without LD_LIBRARY_PATH.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=csrc");
    println!("cargo:rerun-if-env-changed=LIBTORCH_INCLUDE");
    // torch-sys's `cargo:libtorch_lib` (its `links` name is "tch").
    let lib = PathBuf::from(std::env::var("DEP_TCH_LIBTORCH_LIB").expect("torch-sys did not report libtorch's lib folder"));
    let root = match std::env::var("LIBTORCH_INCLUDE") {
        Ok(include_root) => PathBuf::from(include_root),
        Err(_) => lib.parent().expect("libtorch's lib folder has a parent").to_path_buf(),
    };
    let include = root.join("include");
    // The flags torch-sys compiles its own C++ with, so that both agree on the ABI.
    cc::Build::new()
        .cpp(true)
        .pic(true)
        .warnings(false)
        .include(&include)
        .include(include.join("torch/csrc/api/include"))
        .flag("-std=c++17")
        .flag("-D_GLIBCXX_USE_CXX11_ABI=1")
        .flag("-DGLOG_USE_GLOG_EXPORT")
        .file("csrc/ffi.cpp")
        .file("csrc/fused.cpp")
        .file("csrc/profile.cpp")
        .file("csrc/collective.cpp")
        .compile("camp_csrc");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
