//! Vigil engine (being built).

pub mod gen;
