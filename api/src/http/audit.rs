//! The audit log: who changed what, when — rule reloads, freezes, unfreezes, verdicts, snoozes.
//!
//! Entries are JSON lines `{at, who, kind, ...}`, appended to a file when one is set
//! (`<state_dir>/audit.jsonl` under `vigil serve`) and kept in memory (the latest
//! [`RECENT_MAX`]) for `GET /v1/audit`.

use std::collections::VecDeque;
use std::fs::File;
use std::io::Write;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde_json::{Map, Value, json};
use vigil_engine::event::format_ts;
use vigil_engine::ledger::now_ms;
use vigil_engine::metrics::Metrics;

/// Entries kept in memory.
pub const RECENT_MAX: usize = 10_000;

/// The audit log.
#[derive(Debug)]
pub struct Audit {
    file: Mutex<Option<File>>,
    recent: Mutex<VecDeque<Value>>,
    metrics: Arc<Metrics>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Audit {
    /// An audit log in memory only.
    pub fn new(metrics: Arc<Metrics>) -> Audit {
        Audit {
            file: Mutex::new(None),
            recent: Mutex::new(VecDeque::new()),
            metrics,
        }
    }

    /// Appends every entry from now on to `path` too.
    pub fn open_file(&self, path: &Path) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)?;
        *lock(&self.file) = Some(f);
        Ok(())
    }

    /// Records that `who` did `kind`; `detail` is an object merged into the entry.
    pub fn record(&self, who: &str, kind: &'static str, detail: Value) {
        let mut entry = Map::new();
        entry.insert("at".into(), json!(format_ts(now_ms())));
        entry.insert("who".into(), json!(who));
        entry.insert("kind".into(), json!(kind));
        if let Value::Object(d) = detail {
            entry.extend(d);
        }
        let entry = Value::Object(entry);
        if let Some(f) = lock(&self.file).as_mut() {
            let line = entry.to_string() + "\n";
            if let Err(e) = f.write_all(line.as_bytes()) {
                tracing::error!("audit log: cannot write: {e}; entry: {entry}");
            }
        }
        tracing::info!(target: "vigil::audit", "{entry}");
        self.metrics.audited(kind);
        let mut recent = lock(&self.recent);
        if recent.len() == RECENT_MAX {
            recent.pop_front();
        }
        recent.push_back(entry);
    }

    /// The latest entries, newest first, of `kind` if given.
    pub fn recent(&self, kind: Option<&str>, limit: usize) -> Vec<Value> {
        lock(&self.recent)
            .iter()
            .rev()
            .filter(|e| kind.is_none_or(|k| e["kind"] == k))
            .take(limit)
            .cloned()
            .collect()
    }
}
