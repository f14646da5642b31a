//! # eamet-optim
//!
//! Per-fact residual optimization for locate-then-edit knowledge editing. Its one job: find,
//! for each fact, the vector `δ_i` added to the hidden state at the subject's last token that
//! makes the model say the new object — independently per fact (MEMIT) or one fact after
//! another with EAMET's alignment terms against the residuals saved so far — with loss terms
//! behind one small trait and runs that resume after a kill.
//!
//! This crate is a skeleton until its issue lands; it compiles and is documented.
#![deny(missing_docs)]
