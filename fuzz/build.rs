//! Links libtorch for the patch reader target (see the eamet-build crate).
fn main() {
    eamet_build::link_libtorch();
}
