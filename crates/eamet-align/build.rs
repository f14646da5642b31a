//! With the `blas` feature, link the system OpenBLAS that ndarray's `blas` feature calls
//! through `cblas-sys` (which declares the symbols but links nothing).
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var_os("CARGO_FEATURE_BLAS").is_some() {
        if let Some(dir) = std::env::var_os("OPENBLAS_LIB_DIR") {
            println!("cargo:rustc-link-search=native={}", dir.to_string_lossy());
        }
        println!("cargo:rerun-if-env-changed=OPENBLAS_LIB_DIR");
        println!("cargo:rustc-link-lib=dylib=openblas");
    }
}
