//! Vigil's integration tests: one binary, shared helpers in `vigil_tests`.

// Tests fail loudly: unwrapping is how they report.
#![allow(clippy::unwrap_used)]

mod default_pack;
mod engine;
mod golden;
mod kafka;
mod ops;
