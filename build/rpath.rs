//! Shared build script for the workspace packages that link libtorch.
//!
//! tch links `libtorch_cpu.so` and `libc10.so` dynamically. So that test executables, examples
//! and the `eamet` binary run without `LD_LIBRARY_PATH`, this script embeds libtorch's library
//! directory (resolved through symlinks, so it points into the per-user cache and survives the
//! checkout) as an rpath of every linked target of the package that uses it.
use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-env-changed=LIBTORCH_LIB");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "windows" {
        return;
    }
    // A package whose libtorch use is optional (eamet-eval's `metrics` feature) links nothing
    // when the feature is off.
    if env::var("CARGO_PKG_NAME").as_deref() == Ok("eamet-eval")
        && env::var_os("CARGO_FEATURE_METRICS").is_none()
    {
        return;
    }
    let Some(root) = env::var_os("LIBTORCH_LIB").or_else(|| env::var_os("LIBTORCH")) else {
        return;
    };
    let lib = PathBuf::from(root).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    // Name libtorch before anything else a dependent links: libtorch_cpu carries its own BLAS
    // (MKL) and exports `sgemm_` & co. If the system OpenBLAS (linked for ndarray-linalg) came
    // first in the load order, libtorch's matrix products would bind to it and run
    // single-threaded under libtorch's OpenMP threads (measured: 2x slower edits).
    println!("cargo:rustc-link-search=native={}", lib.display());
    println!("cargo:rustc-link-lib=dylib=torch_cpu");
    println!("cargo:rustc-link-lib=dylib=c10");
}
