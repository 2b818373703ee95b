//! Vigil's integration tests: one binary, shared helpers in `vigil_tests`.

mod default_pack;
mod engine;
mod golden;
