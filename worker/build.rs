//! Compiles the worker's own libtorch ops (`csrc/fused.cpp`) against the
//! libtorch that tch links (`LIBTORCH`), and embeds an rpath to its `lib/` so
//! that the worker's binaries and tests find libtorch without LD_LIBRARY_PATH.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=csrc/fused.cpp");
    let libtorch = PathBuf::from(std::env::var("LIBTORCH").expect("LIBTORCH must name the libtorch folder (scripts/libtorch.sh prints it)"));
    let include = libtorch.join("include");
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
        .file("csrc/fused.cpp")
        .compile("camp_fused");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", libtorch.join("lib").display());
}
