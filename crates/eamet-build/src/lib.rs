//! # eamet-build
//!
//! One function for the build scripts of the eamet-rs crates that link libtorch (through
//! [tch](https://crates.io/crates/tch)): [`link_libtorch`].
//!
//! tch links `libtorch_cpu.so` and `libc10.so` dynamically. So that test executables, examples
//! and binaries run without `LD_LIBRARY_PATH`, it embeds libtorch's library directory
//! (resolved through symlinks) as an rpath of every linked target of the calling package, and
//! names libtorch before anything else a dependent links.
//!
//! ```no_run
//! // build.rs, in `fn main`:
//! eamet_build::link_libtorch();
//! ```
#![deny(missing_docs)]

use std::env;
use std::path::PathBuf;

/// The link lines for libtorch, printed for cargo; call it from `build.rs`.
///
/// Reads `LIBTORCH_LIB` or `LIBTORCH` (the directory holding `lib/`); without either, or on
/// Windows, it prints nothing but the rerun triggers. A package whose libtorch use is optional
/// (eamet-eval's `metrics` feature) links nothing when the feature is off.
///
/// Why libtorch comes first: `libtorch_cpu` carries its own BLAS (MKL) and exports `sgemm_`
/// and friends. If a system OpenBLAS (linked for ndarray-linalg) came first in the load order,
/// libtorch's matrix products would bind to it and run single-threaded under libtorch's OpenMP
/// threads (measured: 2x slower edits).
///
/// CUDA is opt-in: with `EAMET_CUDA=1` and a CUDA build of libtorch (its `lib/` holds
/// `libtorch_cuda.so`), `libtorch_cuda` is linked too, with `--no-as-needed`. Nothing in our
/// code calls into it by name, so the linker would otherwise drop it and
/// `tch::Cuda::is_available()` would be false (tch-rs' own build script does the same). It is
/// not the default because a CUDA libtorch without its CUDA runtime libraries installed (e.g.
/// PyTorch's CUDA wheel without the `nvidia-*` packages, which runs fine on the CPU) would then
/// fail to start.
pub fn link_libtorch() {
    let root = env::var_os("LIBTORCH_LIB")
        .or_else(|| env::var_os("LIBTORCH"))
        .map(PathBuf::from);
    let wanted = env::var("EAMET_CUDA").is_ok_and(|v| !v.is_empty() && v != "0");
    let cuda = wanted
        && root
            .as_ref()
            .is_some_and(|r| r.join("lib").join("libtorch_cuda.so").exists());
    if wanted && !cuda {
        println!(
            "cargo:warning=EAMET_CUDA is set but LIBTORCH has no lib/libtorch_cuda.so: building for the CPU only"
        );
    }
    for line in link_lines(
        env::var("CARGO_CFG_TARGET_OS").ok().as_deref(),
        env::var("CARGO_PKG_NAME").ok().as_deref(),
        env::var_os("CARGO_FEATURE_METRICS").is_some(),
        root,
        cuda,
    ) {
        println!("{line}");
    }
}

/// The lines [`link_libtorch`] prints, from its inputs (separate for testing).
fn link_lines(
    target_os: Option<&str>,
    package: Option<&str>,
    metrics_feature: bool,
    libtorch: Option<PathBuf>,
    cuda: bool,
) -> Vec<String> {
    let mut out = vec![
        "cargo:rerun-if-env-changed=LIBTORCH".to_string(),
        "cargo:rerun-if-env-changed=LIBTORCH_LIB".to_string(),
        "cargo:rerun-if-env-changed=EAMET_CUDA".to_string(),
    ];
    if target_os == Some("windows") || (package == Some("eamet-eval") && !metrics_feature) {
        return out;
    }
    let Some(root) = libtorch else {
        return out;
    };
    let lib = root.join("lib");
    let lib = lib.canonicalize().unwrap_or(lib);
    out.push(format!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display()));
    out.push(format!("cargo:rustc-link-search=native={}", lib.display()));
    out.push("cargo:rustc-link-lib=dylib=torch_cpu".into());
    out.push("cargo:rustc-link-lib=dylib=c10".into());
    if cuda {
        out.push("cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed".into());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_libtorch_first_with_an_rpath_and_nothing_without_it() {
        let lines = link_lines(
            Some("linux"),
            Some("eamet-hooks"),
            false,
            Some("/x/torch".into()),
            false,
        );
        assert_eq!(lines.len(), 7);
        assert_eq!(lines[3], "cargo:rustc-link-arg=-Wl,-rpath,/x/torch/lib");
        assert_eq!(lines[4], "cargo:rustc-link-search=native=/x/torch/lib");
        assert_eq!(lines[5], "cargo:rustc-link-lib=dylib=torch_cpu");
        assert_eq!(
            link_lines(Some("linux"), Some("eamet-hooks"), false, None, false).len(),
            3
        );
        assert_eq!(
            link_lines(Some("windows"), None, true, Some("/x".into()), true).len(),
            3
        );
        // eamet-eval links libtorch only with its `metrics` feature.
        assert_eq!(
            link_lines(
                Some("linux"),
                Some("eamet-eval"),
                false,
                Some("/x".into()),
                false
            )
            .len(),
            3
        );
        assert_eq!(
            link_lines(
                Some("linux"),
                Some("eamet-eval"),
                true,
                Some("/x".into()),
                false
            )
            .len(),
            7
        );
        // A CUDA libtorch is kept linked even though nothing names its symbols.
        let cuda = link_lines(
            Some("linux"),
            Some("eamet-cli"),
            false,
            Some("/x".into()),
            true,
        );
        assert_eq!(
            cuda.last().unwrap(),
            "cargo:rustc-link-arg=-Wl,--no-as-needed,-ltorch_cuda,--as-needed"
        );
    }
}
