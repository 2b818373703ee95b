//! Vigil's rule language.
//!
//! Analysts write rule packs: TOML files whose rules have a `when` expression such as
//! `count(tx by account over 10m) >= 8 and amount < 5`. This crate turns a pack into a
//! [`Program`] in four steps, and evaluates it:
//!
//! 1. [`parse`] — expression text → [`parse::Expr`] tree with byte spans;
//! 2. [`compile`] — names resolved against the [`catalog`] (event fields, state features,
//!    lists), types and limits checked;
//! 3. [`pack`] — TOML files → rules, lists, thresholds and test cases, with every problem
//!    reported as `file:line:col: message` ([`diag`]);
//! 4. [`program`] — evaluation of the compiled rules against [`Facts`]: the event's fields plus
//!    one value per feature slot, computed by the engine. Evaluation does not allocate.
//!
//! The crate is pure: no I/O, no clock, no threads. Numbers are fixed point ([`num`]).

pub mod catalog;
pub mod compile;
pub mod diag;
pub mod num;
pub mod pack;
pub mod parse;
pub mod program;

#[cfg(test)]
mod tests;

pub use catalog::{AggFunc, AggSpec, DistinctOf, Feature, KeyKind};
pub use diag::{Diagnostic, Diagnostics, SourceFile};
pub use pack::{CompiledPack, Expect, PackOptions, TestCase, compile_pack};
pub use program::{Action, Facts, FeatureSource, Fired, Outcome, Program, Value};
