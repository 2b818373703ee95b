//! What a decision sets off, for the Kafka path and the HTTP path alike: freeze requests, and
//! notifications with one template per kind in English and Chinese, chosen by the account's
//! locale (`zh`, `zh-CN`, `zh_TW`, … read Chinese; anything else or none, English).

use serde::Serialize;

use super::pipeline::Effect;
use crate::decision::Decision;
use crate::engine::Engine;
use crate::event::{Transaction, TxKind, format_ts};

/// The notification kinds a rule may ask for, plus the one a freeze sends.
pub const KINDS: [&str; 4] = [
    "blocked_transfer",
    "held_for_review",
    "step_up_required",
    "account_frozen",
];

/// A language Vigil writes notifications in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    /// English (the default).
    En,
    /// Simplified Chinese.
    Zh,
}

impl Lang {
    /// The language for a locale tag such as `en-GB` or `zh-CN`.
    pub fn for_locale(locale: Option<&str>) -> Lang {
        match locale {
            Some(l) if l.get(..2).is_some_and(|p| p.eq_ignore_ascii_case("zh")) => Lang::Zh,
            _ => Lang::En,
        }
    }

    /// Its tag in notifications.
    pub fn tag(self) -> &'static str {
        match self {
            Lang::En => "en",
            Lang::Zh => "zh",
        }
    }
}

fn kind_word(kind: TxKind, lang: Lang) -> &'static str {
    match (lang, kind) {
        (Lang::En, TxKind::Transfer) => "transfer",
        (Lang::En, TxKind::Payment) => "payment",
        (Lang::En, TxKind::Withdrawal) => "withdrawal",
        (Lang::En, TxKind::TopUp) => "top-up",
        (Lang::En, TxKind::Refund) => "refund",
        (Lang::Zh, TxKind::Transfer) => "转账",
        (Lang::Zh, TxKind::Payment) => "付款",
        (Lang::Zh, TxKind::Withdrawal) => "提现",
        (Lang::Zh, TxKind::TopUp) => "充值",
        (Lang::Zh, TxKind::Refund) => "退款",
    }
}

/// The text of notification `kind` about `tx`, or `None` for an unknown kind.
pub fn text(kind: &str, lang: Lang, tx: &Transaction) -> Option<String> {
    let amount = format!(
        "{} {}",
        tx.currency.format(tx.amount_minor),
        tx.currency.code()
    );
    let what = kind_word(tx.kind, lang);
    let to = tx.counterparty_id.as_deref();
    let s = match (kind, lang) {
        ("blocked_transfer", Lang::En) => match to {
            Some(p) => format!(
                "We blocked a {what} of {amount} to {p}. If this wasn't you, change your password and contact us now."
            ),
            None => format!(
                "We blocked a {what} of {amount}. If this wasn't you, change your password and contact us now."
            ),
        },
        ("blocked_transfer", Lang::Zh) => match to {
            Some(p) => format!(
                "我们已拦截一笔向 {p} 的 {amount} {what}。如果不是您本人操作，请立即修改密码并联系我们。"
            ),
            None => format!(
                "我们已拦截一笔 {amount} 的{what}。如果不是您本人操作，请立即修改密码并联系我们。"
            ),
        },
        ("held_for_review", Lang::En) => match to {
            Some(p) => format!("We held a {what} of {amount} to {p} for review — was this you?"),
            None => format!("We held a {what} of {amount} for review — was this you?"),
        },
        ("held_for_review", Lang::Zh) => match to {
            Some(p) => {
                format!("我们暂时扣留了一笔向 {p} 的 {amount} {what}，正在审核——是您本人操作吗？")
            }
            None => format!("我们暂时扣留了一笔 {amount} 的{what}，正在审核——是您本人操作吗？"),
        },
        ("step_up_required", Lang::En) => {
            format!("Please confirm it's you to complete your {what} of {amount}.")
        }
        ("step_up_required", Lang::Zh) => {
            format!("请验证您的身份以完成这笔 {amount} 的{what}。")
        }
        ("account_frozen", Lang::En) => format!(
            "We froze your account to protect your money after a suspicious {what} of {amount}. Contact us to restore access."
        ),
        ("account_frozen", Lang::Zh) => format!(
            "由于一笔可疑的 {amount} {what}，我们已冻结您的账户以保护您的资金。请联系我们恢复使用。"
        ),
        _ => return None,
    };
    Some(s)
}

/// An account holder's language: what the engine learnt from account events, else what the
/// ledger was told when the account was opened.
pub fn locale(
    engine: &Engine,
    ledger: Option<&crate::ledger::Ledger>,
    account: &str,
) -> Option<String> {
    engine
        .account_locale(account)
        .map(String::from)
        .or_else(|| ledger.and_then(|l| l.read(|b| b.locale(account).map(String::from))))
}

/// The effects `d` sets off: whether to request a freeze, and the notification the acting rules
/// ask for. An account whose freeze was already requested is not frozen, or told about
/// blocks, again; a transaction decided already sets off nothing.
pub fn effects_of(d: &Decision) -> (bool, Option<&str>) {
    if d.duplicate {
        return (false, None);
    }
    let freeze = d.freeze && !d.already_frozen;
    let notice = d
        .notify
        .as_deref()
        .filter(|&n| !(d.already_frozen && n == "blocked_transfer"));
    (freeze, notice)
}

/// A record a decision sets off besides itself, keyed by the account: a freeze request or a
/// notification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowUp {
    /// Its topic: [`super::Out::Freezes`] or [`super::Out::Notifications`].
    pub out: super::Out,
    /// The record.
    pub body: Vec<u8>,
    /// Its effect id ([`Effect::Freeze`], [`Effect::Notification`]), what de-duplicates it.
    pub effect: String,
}

/// What `d` (the decision on `tx`) sets off besides itself, in the order both paths send it:
/// the freeze request (requested at `now_ms()`, read only for one), then the notification the
/// acting rules ask for, then `account_frozen` — in the holder's language (see [`locale`],
/// asked only when there is a notification). Nothing for a transaction decided already (see
/// [`effects_of`]).
pub fn follow_ups(
    engine: &Engine,
    ledger: Option<&crate::ledger::Ledger>,
    tx: &Transaction,
    d: &Decision,
    now_ms: impl FnOnce() -> i64,
) -> Vec<FollowUp> {
    let (freeze, notice) = effects_of(d);
    let mut out = Vec::new();
    if freeze {
        out.push(FollowUp {
            out: super::Out::Freezes,
            body: freeze_request(engine, tx, d, now_ms()),
            effect: Effect::Freeze.id(&tx.tx_id),
        });
    }
    let kinds = notice.into_iter().chain(freeze.then_some("account_frozen"));
    let mut lang = None;
    for kind in kinds {
        let lang = *lang.get_or_insert_with(|| {
            Lang::for_locale(locale(engine, ledger, &tx.account_id).as_deref())
        });
        if let Some(body) = notification(kind, lang, tx) {
            out.push(FollowUp {
                out: super::Out::Notifications,
                body,
                effect: Effect::Notification(kind).id(&tx.tx_id),
            });
        }
    }
    out
}

#[derive(Serialize)]
struct FreezeRequest<'a> {
    account_id: &'a str,
    tx_id: &'a str,
    rule: &'a str,
    reason: &'a str,
    rules: Vec<&'a str>,
    ts: String,
    requested_at: String,
    rules_version: &'a str,
}

/// The freeze-requests record for `tx` decided as `d`, requested at `now_ms`: the acting rules
/// that ask for a freeze, the first one as the reason.
pub fn freeze_request(engine: &Engine, tx: &Transaction, d: &Decision, now_ms: i64) -> Vec<u8> {
    let active = engine.active();
    let rules: Vec<&vigil_rules::program::RuleMeta> = d
        .acting()
        .filter_map(|r| {
            active
                .pack
                .program
                .rules
                .iter()
                .map(|x| &x.meta)
                .find(|m| m.id == r.rule && m.freeze)
        })
        .collect();
    let first = rules.first();
    let req = FreezeRequest {
        account_id: &tx.account_id,
        tx_id: &tx.tx_id,
        rule: first.map_or("", |m| m.id.as_str()),
        reason: first.map_or("", |m| m.description.as_str()),
        rules: rules.iter().map(|m| m.id.as_str()).collect(),
        ts: format_ts(tx.ts_ms),
        requested_at: format_ts(now_ms),
        rules_version: &d.rules_version,
    };
    serde_json::to_vec(&req).unwrap_or_default()
}

/// The settlements record of `tx`: what the ledger did with it (`t`).
pub fn settlement(tx: &Transaction, t: &crate::ledger::book::Transfer) -> Vec<u8> {
    let body = serde_json::json!({
        "tx_id": t.tx_id,
        "account_id": tx.account_id,
        "status": crate::ledger::book::status_name(t.status),
        "decline_code": t.decline.map(|c| c.code()),
        "from": t.from.name(),
        "to": t.to.name(),
        "amount": t.currency.format(t.amount),
        "currency": t.currency.code(),
        "risk": t.risk.name(),
        "hold_expires_at": t.expires_ms.map(format_ts),
        "at": format_ts(t.created_ms),
    });
    serde_json::to_vec(&body).unwrap_or_default()
}

#[derive(Serialize)]
struct Notification<'a> {
    kind: &'a str,
    account_id: &'a str,
    tx_id: &'a str,
    locale: &'a str,
    text: String,
    ts: String,
}

/// The notifications record of `kind` about `tx` in `lang`, or `None` for an unknown kind.
pub fn notification(kind: &str, lang: Lang, tx: &Transaction) -> Option<Vec<u8>> {
    let text = text(kind, lang, tx)?;
    let n = Notification {
        kind,
        account_id: &tx.account_id,
        tx_id: &tx.tx_id,
        locale: lang.tag(),
        text,
        ts: format_ts(tx.ts_ms),
    };
    serde_json::to_vec(&n).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{Event, decode};

    fn tx() -> Transaction {
        let line = br#"{"schema":1,"tx_id":"t1","ts":"2026-11-23T09:41:07Z","kind":"transfer","account_id":"a-1","counterparty_id":"a-9","amount":"900.00","currency":"EUR","channel":"app"}"#;
        match decode(line) {
            Ok(Event::Tx(t)) => t,
            other => panic!("not a transaction: {other:?}"),
        }
    }

    #[test]
    fn locale_picks_language() {
        assert_eq!(Lang::for_locale(Some("zh-CN")), Lang::Zh);
        assert_eq!(Lang::for_locale(Some("ZH_tw")), Lang::Zh);
        assert_eq!(Lang::for_locale(Some("en-GB")), Lang::En);
        assert_eq!(Lang::for_locale(Some("z")), Lang::En);
        assert_eq!(Lang::for_locale(None), Lang::En);
    }

    #[test]
    fn every_kind_has_both_languages() {
        let t = tx();
        for k in KINDS {
            let en = text(k, Lang::En, &t).expect("english");
            let zh = text(k, Lang::Zh, &t).expect("chinese");
            assert!(en.contains("900.00 EUR"), "{en}");
            assert!(zh.contains("900.00 EUR"), "{zh}");
            assert_ne!(en, zh);
        }
        assert_eq!(
            text("held_for_review", Lang::En, &t).as_deref(),
            Some("We held a transfer of 900.00 EUR to a-9 for review — was this you?")
        );
        assert_eq!(text("nope", Lang::En, &t), None);
    }
}
