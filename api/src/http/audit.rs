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

    /// Appends every entry from now on to `path` too, after reading the latest entries already
    /// there (a restart keeps `GET /v1/audit`'s history). A line that is not a JSON object (a
    /// crash cut it short) is skipped and counted in the log.
    pub fn open_file(&self, path: &Path) -> std::io::Result<()> {
        use std::io::BufRead;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(path)?;
        // The last lines, kept as bytes: only the ones kept are parsed.
        let mut lines: VecDeque<Vec<u8>> = VecDeque::new();
        let mut ended = true;
        let mut r = std::io::BufReader::new(&mut f);
        loop {
            let mut line = Vec::new();
            if r.read_until(b'\n', &mut line)? == 0 {
                break;
            }
            ended = line.ends_with(b"\n");
            if line.trim_ascii().is_empty() {
                continue;
            }
            if lines.len() == RECENT_MAX {
                lines.pop_front();
            }
            lines.push_back(line);
        }
        // A last line cut short gets its end, so the next entry starts a line of its own.
        if !ended {
            f.write_all(b"\n")?;
        }
        let mut read = VecDeque::with_capacity(lines.len());
        let mut skipped = 0u64;
        for line in lines {
            match serde_json::from_slice::<Value>(&line) {
                Ok(v @ Value::Object(_)) => read.push_back(v),
                _ => skipped += 1,
            }
        }
        if skipped > 0 {
            tracing::warn!(
                "audit log {}: {skipped} line(s) that are not entries skipped",
                path.display()
            );
        }
        let mut recent = lock(&self.recent);
        read.extend(recent.drain(..));
        while read.len() > RECENT_MAX {
            read.pop_front();
        }
        *recent = read;
        drop(recent);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restart_reads_the_entries_already_in_the_file() {
        let dir = std::env::temp_dir().join(format!("vigil-audit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        let path = dir.join("audit.jsonl");
        let _ = std::fs::remove_file(&path);
        let first = Audit::new(Arc::new(Metrics::new()));
        first.open_file(&path).expect("open");
        first.record("ana", "freeze", json!({"account_id": "alice"}));
        first.record("ana", "unfreeze", json!({"account_id": "alice"}));
        drop(first);
        // A line cut short by a crash, then a restart.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"{\"at\":\"2026"))
            .expect("cut line");
        let again = Audit::new(Arc::new(Metrics::new()));
        again.open_file(&path).expect("reopen");
        again.record("root", "rules_reload", json!({}));
        let kinds = |a: &Audit| -> Vec<Value> {
            a.recent(None, 10)
                .iter()
                .map(|e| e["kind"].clone())
                .collect()
        };
        let want = [json!("rules_reload"), json!("unfreeze"), json!("freeze")];
        assert_eq!(kinds(&again), want);
        drop(again);
        // The entry written after the cut line is a line of its own: the next restart reads it.
        let third = Audit::new(Arc::new(Metrics::new()));
        third.open_file(&path).expect("reopen");
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(kinds(&third), want);
    }
}
