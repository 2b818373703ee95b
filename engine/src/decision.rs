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
    /// For a duplicate, what the first decision of its tx_id answered (if the engine kept it):
    /// what the payment service acted on, and what settling it goes by
    /// ([`Decision::acted_action`]).
    pub first_action: Option<Action>,
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
        let mut st = s.serialize_struct("Decision", 17)?;
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
        if let Some(a) = self.first_action {
            st.serialize_field("first_action", a.name())?;
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

/// Appends `s` as a JSON string, as serde_json writes it: copied as it is unless it holds a
/// quote, a backslash or a control character (ids, codes and rule ids never do).
fn json_str(out: &mut Vec<u8>, s: &str) {
    if s.bytes().all(|b| b >= 0x20 && b != b'"' && b != b'\\') {
        out.push(b'"');
        out.extend_from_slice(s.as_bytes());
        out.push(b'"');
    } else if serde_json::to_writer(&mut *out, s).is_err() {
        // Writing to a vector does not fail; keep the JSON well formed regardless.
        out.extend_from_slice(b"\"\"");
    }
}

fn json_int(out: &mut Vec<u8>, n: i64) {
    use std::io::Write as _;
    let _ = write!(out, "{n}");
}

impl Decision {
    /// The decision as one JSON line (no newline).
    pub fn to_json(&self) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out);
        String::from_utf8(out).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }
    /// Appends [`Decision::to_json`]'s line to `out` (a buffer reused across decisions):
    /// the same bytes, written directly (every Kafka decision is written, and serde's
    /// escaping of each string and the decimal amount showed in the pipeline's profile).
    pub fn write_json(&self, out: &mut Vec<u8>) {
        let d = self;
        out.extend_from_slice(b"{\"tx_id\":");
        json_str(out, &d.tx_id);
        out.extend_from_slice(b",\"ts\":\"");
        out.extend_from_slice(format_ts(d.ts_ms).as_bytes());
        out.extend_from_slice(b"\",\"account_id\":");
        json_str(out, &d.account_id);
        out.extend_from_slice(b",\"kind\":\"");
        out.extend_from_slice(d.kind.name().as_bytes());
        out.extend_from_slice(b"\",\"amount\":\"");
        d.currency.write_amount(out, d.amount_minor);
        out.extend_from_slice(b"\",\"currency\":");
        json_str(out, d.currency.code());
        out.extend_from_slice(b",\"action\":\"");
        out.extend_from_slice(d.action.name().as_bytes());
        out.extend_from_slice(b"\",\"score\":");
        json_int(out, d.score);
        out.extend_from_slice(b",\"reasons\":[");
        for (i, r) in d.reasons.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            out.extend_from_slice(b"{\"rule\":");
            json_str(out, &r.rule);
            if let Some(a) = r.action {
                out.extend_from_slice(b",\"action\":\"");
                out.extend_from_slice(a.name().as_bytes());
                out.push(b'"');
            }
            if r.score != 0 {
                out.extend_from_slice(b",\"score\":");
                json_int(out, r.score);
            }
            if r.shadow {
                out.extend_from_slice(b",\"shadow\":true");
            }
            out.extend_from_slice(b",\"values\":{");
            for (j, (k, v)) in r.values.iter().enumerate() {
                if j > 0 {
                    out.push(b',');
                }
                json_str(out, k);
                out.push(b':');
                json_str(out, v);
            }
            out.extend_from_slice(b"}}");
        }
        out.push(b']');
        let list = |out: &mut Vec<u8>, key: &[u8], items: &[String]| {
            out.extend_from_slice(key);
            for (i, s) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                json_str(out, s);
            }
            out.push(b']');
        };
        if !d.errors.is_empty() {
            list(out, b",\"errors\":[", &d.errors);
        }
        if d.freeze {
            out.extend_from_slice(b",\"freeze\":true");
        }
        if let Some(n) = &d.notify {
            out.extend_from_slice(b",\"notify\":");
            json_str(out, n);
        }
        if d.duplicate {
            out.extend_from_slice(b",\"duplicate\":true");
        }
        if let Some(a) = d.first_action {
            out.extend_from_slice(b",\"first_action\":\"");
            out.extend_from_slice(a.name().as_bytes());
            out.push(b'"');
        }
        for (flag, key) in [
            (d.late, &b",\"late\":true"[..]),
            (d.future, b",\"future\":true"),
        ] {
            if flag {
                out.extend_from_slice(key);
            }
        }
        if !d.snoozed.is_empty() {
            list(out, b",\"snoozed\":[", &d.snoozed);
        }
        out.extend_from_slice(b",\"rules_version\":");
        json_str(out, &d.rules_version);
        out.push(b'}');
    }
    /// The fired rules that act (not shadow).
    pub fn acting(&self) -> impl Iterator<Item = &Reason> {
        self.reasons.iter().filter(|r| !r.shadow)
    }

    /// The action to act on: for a duplicate, the first decision's (the one the payment
    /// service was answered), when the engine kept it; otherwise this one's.
    pub fn acted_action(&self) -> Action {
        self.first_action.unwrap_or(self.action)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::CURRENCIES;
    use proptest::prelude::*;

    /// Strings as ids and rule values are, and as they might be: plain ASCII, quotes,
    /// backslashes, control characters, non-ASCII.
    fn text() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9._:-]{0,12}",
            "[ -~]{0,12}",
            "[\\x00-\\x1f\"\\\\é€😀a]{0,6}",
        ]
    }

    fn reason() -> impl Strategy<Value = Reason> {
        (
            text(),
            prop::option::of(0usize..4),
            -5i64..5,
            any::<bool>(),
            prop::collection::vec((text(), text()), 0..3),
        )
            .prop_map(|(rule, action, score, shadow, values)| Reason {
                rule,
                action: action
                    .map(|i| [Action::Allow, Action::Review, Action::StepUp, Action::Block][i]),
                score,
                shadow,
                freeze: false,
                values,
            })
    }

    fn decision() -> impl Strategy<Value = Decision> {
        (
            (
                text(),
                any::<i64>(),
                text(),
                0usize..5,
                any::<i64>(),
                0..CURRENCIES.len(),
            ),
            (
                0usize..4,
                any::<i64>(),
                prop::collection::vec(reason(), 0..3),
            ),
            (
                prop::collection::vec(text(), 0..2),
                any::<bool>(),
                prop::option::of(text()),
                [any::<bool>(); 3],
                prop::collection::vec(text(), 0..2),
                text(),
                prop::option::of(0usize..4),
            ),
        )
            .prop_map(|(a, b, c)| {
                let (tx_id, ts_ms, account_id, kind, amount_minor, cur) = a;
                let (action, score, reasons) = b;
                let (errors, freeze, notify, [duplicate, late, future], snoozed, version, first) =
                    c;
                let actions = [Action::Allow, Action::Review, Action::StepUp, Action::Block];
                let kinds = [
                    TxKind::Transfer,
                    TxKind::Payment,
                    TxKind::Withdrawal,
                    TxKind::TopUp,
                    TxKind::Refund,
                ];
                Decision {
                    tx_id: tx_id.as_str().into(),
                    ts_ms,
                    account_id: account_id.as_str().into(),
                    kind: kinds[kind],
                    amount_minor,
                    currency: Currency::from_code(CURRENCIES[cur].0).expect("listed"),
                    action: actions[action],
                    score,
                    reasons,
                    errors,
                    freeze,
                    notify,
                    already_frozen: false,
                    rules_version: version.into(),
                    duplicate,
                    first_action: first.map(|i| actions[i]),
                    late,
                    future,
                    snoozed,
                }
            })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn written_by_hand_as_serde_writes_it(d in decision()) {
            let mut out = b"prefix".to_vec();
            d.write_json(&mut out);
            let want = serde_json::to_string(&d).expect("serializes");
            prop_assert_eq!(std::str::from_utf8(&out[6..]).expect("utf-8"), want.as_str());
            prop_assert_eq!(d.to_json(), want);
        }

        #[test]
        fn amounts_written_as_decimal_formats_them(minor in any::<i64>(), cur in 0..CURRENCIES.len()) {
            let c = Currency::from_code(CURRENCIES[cur].0).expect("listed");
            let mut out = Vec::new();
            c.write_amount(&mut out, minor);
            prop_assert_eq!(String::from_utf8(out).expect("utf-8"), c.format(minor));
        }
    }

    #[test]
    fn amount_edges() {
        for code in ["EUR", "JPY", "KWD"] {
            let c = Currency::from_code(code).expect("listed");
            for minor in [0, 1, -1, 5, -5, 100, -100, 12_345, i64::MAX, i64::MIN] {
                let mut out = Vec::new();
                c.write_amount(&mut out, minor);
                assert_eq!(
                    String::from_utf8(out).expect("utf-8"),
                    c.format(minor),
                    "{code} {minor}"
                );
            }
        }
    }
}
