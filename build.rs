//! Links libtorch (see the eamet-build crate).
fn main() {
    eamet_build::link_libtorch();
}
