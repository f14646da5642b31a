//! Integration tests of eamet-align, checked against an independent naive implementation
//! (`naive.rs`) and hand-computed values.

mod errors;
mod examples;
mod hand;
mod naive;
mod props;
mod stream;
