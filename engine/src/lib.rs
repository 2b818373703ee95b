//! Vigil's engine: events in, decisions out, over bounded in-memory state.
//!
//! Data moves through the modules in this order:
//!
//! 1. [`event`] — decode and validate JSON events (bad ones become [`event::EventError`]s that
//!    name the field);
//! 2. [`state`] — per-entity windows and account profiles, bounded and evicted;
//! 3. [`engine`] — `Engine::decide`: features from state → the compiled rule program
//!    (`vigil-rules`) → a [`decision::Decision`] with reasons;
//! 4. [`replay`] — recorded traffic through the same `decide()`, with a report;
//! 5. [`packs`] — rule packs read from disk, and their inline tests run through the engine;
//! 6. [`traffic`] — a generator of realistic labeled traffic.

pub mod backtest;
pub mod decision;
pub mod engine;
pub mod event;
pub mod ledger;
pub mod metrics;
pub mod packs;
pub mod replay;
pub mod snapshot;
pub mod state;
pub mod stream;
#[path = "gen/mod.rs"]
pub mod traffic;

pub use decision::{Decision, Reason};
pub use engine::{ActivePack, Engine, EngineConfig};
pub use event::{Event, EventError, Transaction, decode};
