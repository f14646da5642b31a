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
    let Some(root) = env::var_os("LIBTORCH_LIB").or_else(|| env::var_os("LIBTORCH")) else {
        return;
    };
    let lib = PathBuf::from(root).join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
}
