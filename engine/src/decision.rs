//! Decisions: what `decide()` answers, and their JSON form.

use std::sync::Arc;

use serde::ser::{SerializeMap, SerializeStruct};
use serde::{Serialize, Serializer};
use vigil_rules::Action;

use crate::event::{Currency, TxKind, format_ts};

/// One rule that fired, with the values that made it fire.
#[derive(Debug, Clone, PartialEq)]
pub struct Reason {
    /// Rule id.
    pub rule: String,
    /// The action the rule asks for, if any.
    pub action: Option<Action>,
    /// Score it adds.
    pub score: i64,
    /// Reported only: the rule does not act.
    pub shadow: bool,
    /// The rule asks to freeze the account (decision-level: [`Decision::freeze`]).
    pub freeze: bool,
    /// `(term, value)` pairs, e.g. `("count(tx by account over 10m)", "9")`.
    pub values: Vec<(String, String)>,
}

/// The answer for one transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The transaction.
    pub tx_id: crate::event::Id,
    /// Its event time, ms.
    pub ts_ms: i64,
    /// The paying account.
    pub account_id: crate::event::Id,
    /// Kind.
    pub kind: TxKind,
    /// Amount in minor units.
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// allow, review, step_up or block.
    pub action: Action,
    /// Total score of the acting rules.
    pub score: i64,
    /// Fired rules, pack order, shadow ones included (marked).
    pub reasons: Vec<Reason>,
    /// Rules whose condition could not be computed.
    pub errors: Vec<String>,
    /// Whether an acting rule asked to freeze the account.
    pub freeze: bool,
    /// The notification an acting rule asked for (the first in pack order).
    pub notify: Option<String>,
    /// A freeze of the account was requested by an earlier transaction: this one's freeze
    /// (and a blocked-transfer notice) would repeat what the holder was already told.
    pub already_frozen: bool,
    /// The pack hash.
    pub rules_version: Arc<str>,
    /// The tx_id was seen before: decided on current state, not counted again.
    pub duplicate: bool,
    /// Older than the allowed lateness: decided on current state, not counted.
    pub late: bool,
    /// Too far ahead of the stream's watermark: decided on current state, not counted.
    pub future: bool,
    /// Rules whose condition held but which are snoozed for this account (see
    /// [`crate::Engine::set_snoozes`]): they neither act nor show in `reasons`.
    pub snoozed: Vec<String>,
}

struct Values<'a>(&'a [(String, String)]);

impl Serialize for Values<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            m.serialize_entry(k, v)?;
        }
        m.end()
    }
}

impl Serialize for Reason {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Reason", 5)?;
        st.serialize_field("rule", &self.rule)?;
        if let Some(a) = self.action {
            st.serialize_field("action", a.name())?;
        }
        if self.score != 0 {
            st.serialize_field("score", &self.score)?;
        }
        if self.shadow {
            st.serialize_field("shadow", &true)?;
        }
        st.serialize_field("values", &Values(&self.values))?;
        st.end()
    }
}

impl Serialize for Decision {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut st = s.serialize_struct("Decision", 16)?;
        st.serialize_field("tx_id", &self.tx_id)?;
        st.serialize_field("ts", &format_ts(self.ts_ms))?;
        st.serialize_field("account_id", &self.account_id)?;
        st.serialize_field("kind", self.kind.name())?;
        st.serialize_field("amount", &self.currency.format(self.amount_minor))?;
        st.serialize_field("currency", self.currency.code())?;
        st.serialize_field("action", self.action.name())?;
        st.serialize_field("score", &self.score)?;
        st.serialize_field("reasons", &self.reasons)?;
        if !self.errors.is_empty() {
            st.serialize_field("errors", &self.errors)?;
        }
        if self.freeze {
            st.serialize_field("freeze", &true)?;
        }
        if let Some(n) = &self.notify {
            st.serialize_field("notify", n)?;
        }
        if self.duplicate {
            st.serialize_field("duplicate", &true)?;
        }
        if self.late {
            st.serialize_field("late", &true)?;
        }
        if self.future {
            st.serialize_field("future", &true)?;
        }
        if !self.snoozed.is_empty() {
            st.serialize_field("snoozed", &self.snoozed)?;
        }
        st.serialize_field("rules_version", &*self.rules_version)?;
        st.end()
    }
}

impl Decision {
    /// The decision as one JSON line (no newline).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
    /// Appends [`Decision::to_json`]'s line to `out` (a buffer reused across decisions).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let start = out.len();
        if let Err(e) = serde_json::to_writer(&mut *out, self) {
            out.truncate(start);
            out.extend_from_slice(format!("{{\"error\":\"{e}\"}}").as_bytes());
        }
    }
    /// The fired rules that act (not shadow).
    pub fn acting(&self) -> impl Iterator<Item = &Reason> {
        self.reasons.iter().filter(|r| !r.shadow)
    }
}
