//! Snoozes: one rule muted for one account until a time — a known false positive (the
//! customer who really does pay rent to a new payee from a new phone every month).
//!
//! The engine mutes the rule for the account's transactions whose event time is before
//! `until`; a muted rule neither acts nor scores, and the decision lists it under `snoozed`.
//! Snoozes are kept in `<state_dir>/snoozes.json` (written then renamed on every change) so a
//! restart keeps them, and they end by themselves: `vigil serve` drops the expired ones every
//! second, with an audit entry, as it does for every created and removed one.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use vigil_engine::Engine;
use vigil_engine::event::format_ts;

/// Longest a snooze may last: a rule muted for longer is a rule to change.
pub const SNOOZE_MAX_MS: i64 = 90 * 86_400_000;
/// Most snoozes in force at once.
pub const SNOOZES_MAX: usize = 100_000;

/// One snooze.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snooze {
    /// Id (`snz-<n>`).
    pub id: String,
    /// The account.
    pub account_id: String,
    /// The muted rule's id.
    pub rule: String,
    /// Muted for transactions before this time, Unix ms.
    pub until_ms: i64,
    /// Why (the analyst's words).
    pub reason: String,
    /// Who.
    pub created_by: String,
    /// When, Unix ms.
    pub created_ms: i64,
}

impl Snooze {
    /// The API's view.
    pub fn view(&self) -> Value {
        json!({
            "id": self.id,
            "account_id": self.account_id,
            "rule": self.rule,
            "until": format_ts(self.until_ms),
            "reason": self.reason,
            "created_by": self.created_by,
            "created_at": format_ts(self.created_ms),
        })
    }
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    next: u64,
    snoozes: Vec<Snooze>,
}

#[derive(Debug, Default)]
struct Inner {
    next: u64,
    by_id: BTreeMap<String, Snooze>,
    file: Option<PathBuf>,
}

/// The snoozes in force.
#[derive(Debug, Default)]
pub struct Snoozes(Mutex<Inner>);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Inner {
    fn push(&self, engine: &Engine) {
        engine.set_snoozes(
            self.by_id
                .values()
                .map(|s| (s.account_id.as_str(), s.rule.as_str(), s.until_ms)),
        );
    }

    fn save(&self) -> std::io::Result<()> {
        let Some(path) = &self.file else {
            return Ok(());
        };
        let saved = Saved {
            next: self.next,
            snoozes: self.by_id.values().cloned().collect(),
        };
        let bytes = serde_json::to_vec_pretty(&saved).map_err(std::io::Error::other)?;
        let tmp = path.with_extension("json.tmp");
        std::fs::write(&tmp, bytes)?;
        std::fs::rename(&tmp, path)
    }
}

/// Why a snooze was refused.
#[derive(Debug, thiserror::Error)]
pub enum SnoozeError {
    /// More than [`SNOOZES_MAX`] in force.
    #[error("{SNOOZES_MAX} snoozes are in force already; remove some or change the rule")]
    Full,
    /// Its file could not be written: nothing changed.
    #[error("cannot save the snoozes: {0}")]
    Io(#[from] std::io::Error),
}

impl Snoozes {
    /// Keeps the snoozes in `path` from now on, starting with the ones it holds (those that
    /// have not ended by `now_ms`), and mutes them in `engine`. Returns how many are in force.
    pub fn open_file(&self, path: &Path, engine: &Engine, now_ms: i64) -> Result<usize, String> {
        let mut inner = lock(&self.0);
        inner.file = Some(path.to_path_buf());
        if path.exists() {
            let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
            let saved: Saved = serde_json::from_slice(&bytes)
                .map_err(|e| format!("{}: not a snoozes file: {e}", path.display()))?;
            inner.next = saved.next;
            inner.by_id = saved
                .snoozes
                .into_iter()
                .filter(|s| s.until_ms > now_ms)
                .map(|s| (s.id.clone(), s))
                .collect();
        }
        inner.push(engine);
        Ok(inner.by_id.len())
    }

    /// Mutes `rule` for `account` until `until_ms`, saved before it takes effect. One snooze
    /// per account and rule: when there is one already, it is replaced (same id, the new end,
    /// reason and author) and the second value is `true` — a retried request makes no second.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        &self,
        engine: &Engine,
        account: &str,
        rule: &str,
        until_ms: i64,
        reason: &str,
        by: &str,
        now_ms: i64,
    ) -> Result<(Snooze, bool), SnoozeError> {
        let mut inner = lock(&self.0);
        let existing = inner
            .by_id
            .values()
            .find(|s| s.account_id == account && s.rule == rule)
            .cloned();
        if existing.is_none() && inner.by_id.len() >= SNOOZES_MAX {
            return Err(SnoozeError::Full);
        }
        let id = match &existing {
            Some(old) => old.id.clone(),
            None => {
                inner.next += 1;
                format!("snz-{}", inner.next)
            }
        };
        let s = Snooze {
            id,
            account_id: account.to_string(),
            rule: rule.to_string(),
            until_ms,
            reason: reason.to_string(),
            created_by: by.to_string(),
            created_ms: now_ms,
        };
        inner.by_id.insert(s.id.clone(), s.clone());
        if let Err(e) = inner.save() {
            match &existing {
                Some(old) => inner.by_id.insert(old.id.clone(), old.clone()),
                None => inner.by_id.remove(&s.id),
            };
            return Err(e.into());
        }
        inner.push(engine);
        Ok((s, existing.is_some()))
    }

    /// Ends snooze `id` now. `Ok(None)` when there is none such.
    pub fn remove(&self, engine: &Engine, id: &str) -> Result<Option<Snooze>, SnoozeError> {
        let mut inner = lock(&self.0);
        let Some(s) = inner.by_id.remove(id) else {
            return Ok(None);
        };
        if let Err(e) = inner.save() {
            inner.by_id.insert(s.id.clone(), s);
            return Err(e.into());
        }
        inner.push(engine);
        Ok(Some(s))
    }

    /// Drops the snoozes that ended by `now_ms` and returns them.
    pub fn expire(&self, engine: &Engine, now_ms: i64) -> Vec<Snooze> {
        let mut inner = lock(&self.0);
        let ended: Vec<String> = inner
            .by_id
            .values()
            .filter(|s| s.until_ms <= now_ms)
            .map(|s| s.id.clone())
            .collect();
        if ended.is_empty() {
            return Vec::new();
        }
        let gone: Vec<Snooze> = ended
            .iter()
            .filter_map(|id| inner.by_id.remove(id))
            .collect();
        if let Err(e) = inner.save() {
            // They have ended either way; the file catches up at the next change or start.
            tracing::warn!("cannot save the snoozes after {} ended: {e}", gone.len());
        }
        inner.push(engine);
        gone
    }

    /// The snoozes in force at `now_ms`, optionally of one account, in id order.
    pub fn list(&self, account: Option<&str>, now_ms: i64) -> Vec<Snooze> {
        lock(&self.0)
            .by_id
            .values()
            .filter(|s| s.until_ms > now_ms && account.is_none_or(|a| s.account_id == a))
            .cloned()
            .collect()
    }

    /// How many are held (ended ones included until they are dropped).
    pub fn len(&self) -> usize {
        lock(&self.0).by_id.len()
    }

    /// None held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
