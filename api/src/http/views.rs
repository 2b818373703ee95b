//! Wire forms: money as decimal strings in the account's currency, times as RFC 3339.

use serde_json::{Value, json};
use vigil_engine::event::{Currency, format_ts};
use vigil_engine::ledger::book::status_name;
use vigil_engine::ledger::{Account, Case, Entry, FreezeRecord, Refund, Transfer};

fn ts(ms: i64) -> String {
    format_ts(ms)
}

fn name<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).unwrap_or(Value::Null)
}

pub fn account(a: &Account) -> Value {
    let c = a.currency;
    json!({
        "id": a.id,
        "currency": c.code(),
        "available": c.format(a.available),
        "held": c.format(a.held),
        "frozen": a.frozen,
        "locale": a.locale,
        "opened_at": ts(a.opened_ms),
    })
}

pub fn transfer(t: &Transfer) -> Value {
    let c = t.currency;
    json!({
        "tx_id": t.tx_id,
        "kind": t.kind.name(),
        "from": t.from.name(),
        "to": t.to.name(),
        "amount": c.format(t.amount),
        "currency": c.code(),
        "status": status_name(t.status),
        "decline_code": t.decline.map(|d| d.code()),
        "void_reason": t.void_reason.map(|v| name(&v)),
        "posted_by": t.posted_by.map(|p| name(&p)),
        "risk": t.risk.name(),
        "rules": t.rules,
        "score": t.score,
        "refunded": c.format(t.refunded),
        "label": t.label.map(|l| name(&l)),
        "created_at": ts(t.created_ms),
        "updated_at": ts(t.updated_ms),
        "hold_expires_at": t.expires_ms.map(ts),
    })
}

pub fn refund(r: &Refund) -> Value {
    let c = r.currency;
    json!({
        "refund_id": r.refund_id,
        "tx_id": r.tx_id,
        "amount": c.format(r.amount),
        "currency": c.code(),
        "refunded_total": c.format(r.refunded_total),
        "reason": r.reason,
        "created_at": ts(r.ts_ms),
    })
}

pub fn case(k: &Case, currency: Option<Currency>) -> Value {
    json!({
        "id": k.id,
        "kind": name(&k.kind),
        "status": match (k.verdict, k.closed) {
            (Some(_), _) => "resolved",
            (None, Some(_)) => "closed",
            (None, None) => "open",
        },
        "closed_reason": k.closed.map(|r| name(&r)),
        "tx_id": k.tx_id,
        "account_id": k.account,
        "reason": k.reason,
        "rules": k.rules,
        "opened_at": ts(k.opened_ms),
        "verdict": k.verdict.map(|v| name(&v)),
        "resolved_by": k.resolved_by,
        "note": k.note,
        "resolved_at": k.resolved_ms.map(ts),
        "recovered": currency.map_or_else(|| k.recovered.to_string(), |c| c.format(k.recovered)),
    })
}

pub fn entry(e: &Entry, c: Currency) -> Value {
    json!({
        "seq": e.seq,
        "at": ts(e.ts_ms),
        "kind": e.kind,
        "ref": e.ref_id,
        "counterparty": e.counterparty,
        "amount": c.format(e.available_delta),
        "held_change": c.format(e.held_delta),
        "available_after": c.format(e.available_after),
        "held_after": c.format(e.held_after),
        "currency": c.code(),
    })
}

pub fn freeze(account: &str, f: &FreezeRecord) -> Value {
    json!({
        "account_id": account,
        "reason": f.reason,
        "by": f.by,
        "tx_id": f.tx_id,
        "since": ts(f.ts_ms),
    })
}
