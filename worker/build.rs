//! Compiles the worker's C++ (`csrc/`: its own libtorch ops, the profiler's
//! summary) against the libtorch that tch links, found where torch-sys found it
//! (`LIBTORCH`, a Python torch, ...), and embeds an rpath to its `lib/` so that
//! the worker's binaries and tests find libtorch without LD_LIBRARY_PATH.

use std::path::{Path, PathBuf};
use std::process::Command;

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
    cuda_graph_library(&root, &include, &lib);
}

/// `csrc/cuda_graph.cpp` as a shared library of its own (`libcamp_cuda_graph.so`
/// in OUT_DIR, embedded in the worker by `src/cuda_graph.rs`): CUDAGraph is in
/// libtorch_cuda, which the worker never links, so its symbols stay undefined
/// until a GPU machine has loaded libtorch_cuda. Needs the CUDA runtime's headers
/// (`scripts/libtorch.sh` puts them in `cuda-include/`, else `CUDA_INCLUDE` or
/// `CUDA_HOME/include`); without them the worker is built without CUDA graphs and
/// says so when asked for one.
fn cuda_graph_library(root: &Path, include: &Path, lib: &Path) {
    println!("cargo:rustc-check-cfg=cfg(camp_cuda_graph)");
    println!("cargo:rerun-if-env-changed=CUDA_INCLUDE");
    println!("cargo:rerun-if-env-changed=CUDA_HOME");
    let candidates = [
        std::env::var("CUDA_INCLUDE").ok().map(PathBuf::from),
        Some(root.join("cuda-include")),
        std::env::var("CUDA_HOME").ok().map(|home| PathBuf::from(home).join("include")),
        Some(PathBuf::from("/usr/local/cuda/include")),
    ];
    let Some(cuda) = candidates.into_iter().flatten().find(|dir| dir.join("cuda_runtime_api.h").is_file()) else {
        println!("cargo:warning=no CUDA runtime headers found: camp-worker is built without CUDA graphs");
        return;
    };
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR")).join("libcamp_cuda_graph.so");
    let compiler = cc::Build::new().cpp(true).get_compiler();
    let status = Command::new(compiler.path())
        .args(["-shared", "-fPIC", "-O2", "-std=c++17", "-D_GLIBCXX_USE_CXX11_ABI=1", "-DGLOG_USE_GLOG_EXPORT", "-w"])
        .arg("-I")
        .arg(include)
        .arg("-I")
        .arg(include.join("torch/csrc/api/include"))
        .arg("-I")
        .arg(&cuda)
        .arg("csrc/cuda_graph.cpp")
        .arg("-o")
        .arg(&out)
        .arg(format!("-L{}", lib.display()))
        .args(["-lc10", "-ltorch_cpu"])
        .status()
        .expect("the C++ compiler runs");
    assert!(status.success(), "compiling csrc/cuda_graph.cpp failed");
    println!("cargo:rustc-cfg=camp_cuda_graph");
}
