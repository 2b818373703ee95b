//! Route handlers.

use axum::Extension;
use axum::extract::{FromRequestParts, Path, RawQuery, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::{Value, json};
use std::sync::Arc;
use vigil_engine::Decision;
use vigil_engine::event::{Currency, Event, ID_BYTES_MAX, Transaction, format_ts, parse_ts};
use vigil_engine::ledger::{
    Applied, Command, Decline, LedgerError, Outcome, PostBy, Risk, Verdict, VoidReason,
};
use vigil_engine::packs::Reloaded;
use vigil_engine::stream::notify;

use super::{
    ApiError, AppState, Body, Caller, Shared, body_bytes, json, json_bytes, snooze, views,
};
use vigil_engine::ledger::now_ms;

/// Query parameters decoded with a clear error.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Params<T> {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let RawQuery(q) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad("invalid_query", e.to_string()))?;
        let pairs = form_urlencoded::parse(q.as_deref().unwrap_or("").as_bytes());
        serde_path_to_error::deserialize(serde_urlencoded::Deserializer::new(pairs))
            .map(Params)
            .map_err(|e| {
                let path = e.path().to_string();
                let (field, message) =
                    vigil_engine::event::serde_error_field(&path, &e.into_inner().to_string());
                let err = ApiError::bad("invalid_query", message);
                match field {
                    Some(f) => err.field(f),
                    None => err,
                }
            })
    }
}

/// One path parameter, with a JSON error (`invalid_path`) where axum answers plain text: an
/// id whose percent-decoding is not UTF-8, say.
pub struct PathId(pub String);

impl<S: Send + Sync> FromRequestParts<S> for PathId {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<String>::from_request_parts(parts, state)
            .await
            .map(|Path(id)| PathId(id))
            .map_err(|e| ApiError::bad("invalid_path", e.body_text()))
    }
}

pub async fn not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such route; see /openapi.json",
    )
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this route does not take that method; see /openapi.json",
    )
}

pub async fn metrics(State(s): State<AppState>) -> Response {
    let body = s.0.metrics.render(&s.0.engine);
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}

pub async fn rules(State(s): State<AppState>) -> Response {
    let active = s.0.engine.active();
    let p = &active.pack;
    let rules: Vec<Value> = p
        .program
        .rules
        .iter()
        .map(|r| {
            json!({
                "id": r.meta.id,
                "description": r.meta.description,
                "action": r.meta.action.map(|a| a.name()),
                "score": r.meta.score,
                "shadow": r.meta.shadow,
                "freeze": r.meta.freeze,
                "notify": r.meta.notify,
            })
        })
        .collect();
    json(
        StatusCode::OK,
        &json!({
            "pack": p.name,
            "hash": p.hash,
            "summary": p.summary(),
            "dir": s.0.reloader.get().map(|r| r.dir().display().to_string()),
            "rules": rules,
        }),
    )
}

/// Reloads the rules: compile, check, run the pack's tests, swap. Shared by the API and the
/// directory watcher; every attempt is logged, counted and audited.
pub fn reload_rules(s: &Shared, who: &str) -> Result<Value, (Vec<String>, String)> {
    let Some(r) = s.reloader.get() else {
        return Err((
            Vec::new(),
            "this server was not started from a rules directory".into(),
        ));
    };
    match r.reload(&s.engine) {
        Ok(Reloaded::Swapped { from, to, summary }) => {
            tracing::info!("rules reloaded by {who}: {summary} (was {from})");
            s.metrics.reload("ok");
            s.audit.record(
                who,
                "reload",
                json!({"result": "swapped", "from": from, "to": to}),
            );
            Ok(json!({"result": "swapped", "from": from, "hash": to, "summary": summary}))
        }
        Ok(Reloaded::Unchanged { hash }) => {
            s.metrics.reload("unchanged");
            Ok(json!({"result": "unchanged", "hash": hash}))
        }
        Err(e) => {
            let hash = s.engine.active().pack.hash.clone();
            tracing::error!(
                "rules reload by {who} rejected; still running {hash}:\n{}",
                e.0.join("\n")
            );
            s.metrics.reload("failed");
            s.audit.record(
                who,
                "reload",
                json!({"result": "rejected", "errors": e.0, "running": hash}),
            );
            Err((e.0, hash))
        }
    }
}

pub async fn reload(State(s): State<AppState>, Extension(caller): Extension<Caller>) -> Response {
    let st = s.0.clone();
    let who = caller.name.clone();
    let r = tokio::task::spawn_blocking(move || reload_rules(&st, &who)).await;
    match r {
        Ok(Ok(v)) => json(StatusCode::OK, &v),
        Ok(Err((errors, running))) if errors.is_empty() => {
            ApiError::new(StatusCode::CONFLICT, "no_rules_dir", running).into_response()
        }
        Ok(Err((errors, running))) => json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "code": "rules_invalid",
                "message": format!("the pack was rejected ({} problem{}); {running} keeps running",
                    errors.len(), if errors.len() == 1 { "" } else { "s" }),
                "errors": errors,
                "running": running,
            }),
        ),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("the reload failed: {e}"),
        )
        .into_response(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DryRunRequest {
    /// Files put over the running pack's directory: relative name → text.
    #[serde(default)]
    files: std::collections::BTreeMap<String, String>,
    /// Files of the running pack's directory to leave out.
    #[serde(default)]
    remove: Vec<String>,
}

/// Runs a candidate pack — the rules directory with `files` put over it — over the recent
/// traffic, next to the running pack, and says what would change. Nothing is swapped.
pub async fn dry_run(
    State(s): State<AppState>,
    Body(b): Body<DryRunRequest>,
) -> Result<Response, ApiError> {
    if b.files.is_empty() && b.remove.is_empty() {
        return Err(ApiError::bad(
            "invalid_body",
            "give the changed files (files: {name: text}) or the files to leave out (remove)",
        ));
    }
    let Ok(_one) = s.0.dry_run.try_lock() else {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "busy",
            "a dry run is in progress; try again when it is done",
        ));
    };
    let st = s.0.clone();
    let run = tokio::task::spawn_blocking(move || {
        let (base, opts) = match st.reloader.get() {
            Some(r) => (Some(r.dir().to_path_buf()), *r.options()),
            None => (None, vigil_rules::PackOptions::default()),
        };
        let candidate =
            vigil_engine::packs::compile_candidate(base.as_deref(), &b.files, &b.remove, &opts)
                .map_err(Err)?;
        let active = st.engine.active();
        let events = st.engine.recent_events();
        vigil_engine::backtest::dry_run(&active.pack, candidate, st.engine.config(), events)
            .map_err(|e| Ok(e.to_string()))
    })
    .await
    .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    match run {
        Ok(r) => {
            let mut v = r.comparison.to_json();
            if let Some(o) = v.as_object_mut() {
                if let Some((from, to)) = r.span_ms {
                    o.insert("from".into(), json!(format_ts(from)));
                    o.insert("to".into(), json!(format_ts(to)));
                }
                o.insert("changed_decisions".into(), Value::Array(r.changed));
            }
            Ok(json(StatusCode::OK, &v))
        }
        Err(Err(errors)) => Ok(json(
            StatusCode::UNPROCESSABLE_ENTITY,
            &json!({
                "code": "rules_invalid",
                "message": format!("the candidate pack does not compile ({} problem{})",
                    errors.len(), if errors.len() == 1 { "" } else { "s" }),
                "errors": errors,
            }),
        )),
        Err(Ok(e)) => Err(ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            e,
        )),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    kind: Option<String>,
    limit: Option<usize>,
}

/// The kinds of audit entries (what `kind=` may ask for).
const AUDIT_KINDS: [&str; 5] = ["reload", "freeze", "unfreeze", "verdict", "snooze"];

pub async fn audit(
    State(s): State<AppState>,
    Params(q): Params<AuditQuery>,
) -> Result<Response, ApiError> {
    // A misspelt kind would read as an empty log.
    if let Some(k) = q.kind.as_deref().filter(|k| !AUDIT_KINDS.contains(k)) {
        let hint = vigil_rules::diag::suggest(k, AUDIT_KINDS);
        return Err(ApiError::bad(
            "invalid_query",
            format!(
                "unknown kind '{k}'{hint}: one of {}",
                AUDIT_KINDS.join(", ")
            ),
        )
        .field("kind"));
    }
    let limit = q.limit.unwrap_or(100).clamp(1, 1000);
    let entries = s.0.audit.recent(q.kind.as_deref(), limit);
    Ok(json(StatusCode::OK, &json!({ "entries": entries })))
}

// ---------- snoozes ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozeRequest {
    account_id: String,
    rule: String,
    #[serde(default)]
    until: Option<String>,
    #[serde(default, rename = "for")]
    period: Option<String>,
    reason: String,
}

pub async fn create_snooze(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    Body(b): Body<SnoozeRequest>,
) -> Result<Response, ApiError> {
    let invalid = |field: &str, msg: String| ApiError::bad("invalid_field", msg).field(field);
    let account = b.account_id.trim();
    if account.is_empty() || account.len() > 128 {
        return Err(invalid(
            "account_id",
            "account_id is 1 to 128 characters".into(),
        ));
    }
    if b.reason.trim().is_empty() {
        return Err(invalid(
            "reason",
            "say why the rule is wrong for this account".into(),
        ));
    }
    // Blank is refused above, with what to write.
    check_text("reason", &b.reason, false)?;
    let active = s.0.engine.active();
    let rules = &active.pack.program.rules;
    if !rules.iter().any(|r| r.meta.id == b.rule) {
        let near: Vec<&str> = rules
            .iter()
            .map(|r| r.meta.id.as_str())
            .filter(|id| {
                let stem = b.rule.split('.').next().unwrap_or("");
                !stem.is_empty() && id.starts_with(stem)
            })
            .collect();
        let hint = if near.is_empty() {
            "GET /v1/rules lists them".to_string()
        } else {
            format!("did you mean {}?", near.join(", "))
        };
        return Err(ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_rule",
            format!("pack {} has no rule '{}': {hint}", active.pack.name, b.rule),
        )
        .field("rule"));
    }
    let now = now_ms();
    let until = match (&b.until, &b.period) {
        (Some(t), None) => parse_ts(t).map_err(|e| invalid("until", e.message))?,
        (None, Some(p)) => vigil_rules::num::parse_duration(p)
            .filter(|ms| *ms > 0)
            .and_then(|ms| now.checked_add(ms))
            .ok_or_else(|| invalid("for", format!("'{p}' is not a period such as 12h or 7d")))?,
        _ => {
            return Err(ApiError::bad(
                "invalid_body",
                "give either until (RFC 3339) or for (a period such as 7d)",
            ));
        }
    };
    let field = if b.until.is_some() { "until" } else { "for" };
    if until <= now {
        return Err(invalid(field, "the snooze would end in the past".into()));
    }
    if until - now > snooze::SNOOZE_MAX_MS {
        return Err(invalid(
            field,
            "a snooze lasts at most 90d; a rule wrong for longer is a rule to change".into(),
        ));
    }
    let (snoozed, replaced) =
        s.0.snoozes
            .create(
                &s.0.engine,
                account,
                &b.rule,
                until,
                b.reason.trim(),
                &caller.name,
                now,
            )
            .map_err(|e| match e {
                snooze::SnoozeError::Full => {
                    ApiError::new(StatusCode::CONFLICT, "too_many_snoozes", e.to_string())
                }
                snooze::SnoozeError::Io(_) => ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "unavailable",
                    e.to_string(),
                ),
            })?;
    s.0.metrics.set_snoozes(s.0.snoozes.len());
    let view = snoozed.view();
    let (action, status) = if replaced {
        ("replaced", StatusCode::OK)
    } else {
        ("created", StatusCode::CREATED)
    };
    s.0.audit
        .record(&caller.name, "snooze", snooze_entry(action, &view));
    Ok(json(status, &view))
}

/// An audit entry's detail for a snooze: what happened, and the snooze.
pub(crate) fn snooze_entry(action: &str, view: &Value) -> Value {
    let mut v = view.clone();
    if let Value::Object(m) = &mut v {
        m.insert("action".into(), json!(action));
        if let Some(id) = m.remove("id") {
            m.insert("snooze_id".into(), id);
        }
    }
    v
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnoozesQuery {
    account_id: Option<String>,
}

pub async fn snoozes(State(s): State<AppState>, Params(q): Params<SnoozesQuery>) -> Response {
    let list: Vec<Value> =
        s.0.snoozes
            .list(q.account_id.as_deref(), now_ms())
            .iter()
            .map(snooze::Snooze::view)
            .collect();
    json(StatusCode::OK, &json!({ "snoozes": list }))
}

pub async fn remove_snooze(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let removed = s.0.snoozes.remove(&s.0.engine, &id).map_err(|e| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            e.to_string(),
        )
    })?;
    let Some(gone) = removed else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "unknown_snooze",
            format!("no snooze '{id}' is in force"),
        ));
    };
    s.0.metrics.set_snoozes(s.0.snoozes.len());
    let view = gone.view();
    s.0.audit
        .record(&caller.name, "snooze", snooze_entry("removed", &view));
    Ok(json(StatusCode::OK, &view))
}

/// Drops the snoozes that have ended, with an audit entry each (`vigil serve` calls it every
/// second). Returns how many ended.
pub fn expire_snoozes(s: &Shared, now_ms: i64) -> usize {
    let gone = s.snoozes.expire(&s.engine, now_ms);
    if !gone.is_empty() {
        s.metrics.set_snoozes(s.snoozes.len());
        for g in &gone {
            s.audit
                .record("vigil", "snooze", snooze_entry("expired", &g.view()));
        }
    }
    gone.len()
}

/// The routes that decide or move money wait for the state: `vigil serve` restores it from
/// its snapshot after the API is up, and would overwrite what the engine learnt before.
fn ensure_ready(s: &Shared) -> Result<(), ApiError> {
    if s.ready.load(std::sync::atomic::Ordering::Relaxed) {
        return Ok(());
    }
    Err(ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "not_ready",
        "starting: the state is being restored; retry shortly (GET /readyz says when)",
    ))
}

pub async fn healthz() -> Response {
    json(StatusCode::OK, &json!({"status": "ok"}))
}

pub async fn readyz(State(s): State<AppState>) -> Response {
    let ledger = s.0.ledger.healthy();
    let ready = s.0.ready.load(std::sync::atomic::Ordering::Relaxed);
    let status = if ledger && ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    json(
        status,
        &json!({
            "status": if status == StatusCode::OK { "ready" } else { "not_ready" },
            "ledger": if ledger { "ok" } else { "journal unavailable" },
            "pipeline": if ready { "ok" } else { "starting" },
            "rules_version": &*s.0.engine.active().pack.hash,
        }),
    )
}

// ---------- transactions: authorize and transfers ----------

/// Decodes an event; `schema` and `ts` may be left out (1, now), and `kind` too when
/// `default_kind` is given. The common case, everything given, is decoded in one pass. A
/// field no event has is refused (the Kafka path skips it), after the other checks.
fn event(bytes: &[u8], default_kind: Option<&str>) -> Result<Event, ApiError> {
    let ev = match vigil_engine::event::decode_strict(bytes) {
        Ok(e) => return Ok(e),
        Err(e)
            if e.field
                .as_deref()
                .is_some_and(|f| ["schema", "ts", "kind"].contains(&f))
                && e.message == "is required" =>
        {
            let mut v: serde_json::Map<String, Value> = super::decode_body(bytes)?;
            v.entry("schema").or_insert(json!(1));
            v.entry("ts")
                .or_insert_with(|| json!(format_ts(vigil_engine::ledger::now_ms())));
            if let Some(k) = default_kind {
                v.entry("kind").or_insert(json!(k));
            }
            vigil_engine::event::decode_value(&Value::Object(v))?
        }
        Err(e) => return Err(e.into()),
    };
    match vigil_engine::event::unknown_field(bytes) {
        Some(e) => Err(e.into()),
        None => Ok(ev),
    }
}

/// Decodes a transaction event (see [`event`]).
fn transaction(bytes: &[u8], default_kind: Option<&str>) -> Result<Transaction, ApiError> {
    match event(bytes, default_kind)? {
        Event::Tx(t) => Ok(t),
        Event::Account(_) => Err(ApiError::bad(
            "invalid_field",
            "an account event is not a transaction: send it to the account-events topic",
        )
        .field("kind")),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthorizeQuery {
    #[serde(default)]
    settle: bool,
}

/// A decision with its consequences, as one JSON body.
struct Decided {
    /// The decision made now; `None` for a replay.
    decision: Option<Decision>,
    /// For a replay, what the ledger kept of the first decision ([`stored_decision`]).
    stored: Option<Value>,
    decline: Option<&'static str>,
    transfer: Option<Value>,
    replayed: bool,
    notification: Option<Value>,
}

fn decline_code(risk: Risk, ledger: Option<Decline>) -> Option<&'static str> {
    match (ledger, risk) {
        (Some(d), _) => Some(d.code()),
        (None, Risk::Block) => Some("risk_blocked"),
        (None, Risk::StepUp) => Some("step_up_required"),
        _ => None,
    }
}

/// The notification `d` asks for, for the answer.
fn notification(s: &Shared, tx: &Transaction, d: &Decision) -> Option<Value> {
    let kind = notify::effects_of(d).1?;
    let locale = notify::locale(&s.engine, Some(&s.ledger), &tx.account_id);
    let lang = notify::Lang::for_locale(locale.as_deref());
    let text = notify::text(kind, lang, tx)?;
    Some(json!({"kind": kind, "locale": lang.tag(), "text": text}))
}

/// With a publisher, the decision and its effects (and the settlement, `settled`, when the
/// ledger applied the transfer now) go to the output topics once the ledger's answer is
/// durable (`ticket`; a request that fails there sets nothing off) — on a task of their own
/// when that means waiting, so a caller that hangs up meanwhile loses nothing: its retry
/// replays the stored answer and publishes nothing again.
fn publish(
    s: &Arc<Shared>,
    ticket: Option<u64>,
    tx: &Transaction,
    d: &Decision,
    settled: Option<&vigil_engine::ledger::book::Transfer>,
) {
    fn now(
        s: &Shared,
        tx: &Transaction,
        d: &Decision,
        settled: Option<&vigil_engine::ledger::book::Transfer>,
    ) {
        let Some(p) = s.publisher.get() else {
            return;
        };
        p.decided(&s.engine, Some(&s.ledger), tx, d);
        if let Some(t) = settled {
            p.settled(tx, t);
        }
    }
    if s.publisher.get().is_none() {
        return;
    }
    match ticket {
        Some(ticket) if !s.ledger.is_durable(ticket).unwrap_or(false) => {
            let (s, tx, d, settled) = (s.clone(), tx.clone(), d.clone(), settled.cloned());
            tokio::spawn(async move {
                if s.ledger.durable(ticket).await.is_ok() {
                    now(&s, &tx, &d, settled.as_ref());
                }
            });
        }
        _ => now(s, tx, d, settled),
    }
}

async fn decide(s: &Arc<Shared>, tx: &Transaction, settle: bool) -> Result<Decided, ApiError> {
    if settle && let Some(a) = s.ledger.repeated(tx)? {
        s.ledger.durable(a.ticket).await?;
        let Outcome::Transfer(t) = &a.outcome else {
            return Err(LedgerError::Conflict(tx.tx_id.to_string()).into());
        };
        let pending_step_up =
            t.status == vigil_engine::ledger::Status::Pending && t.risk == Risk::StepUp;
        return Ok(Decided {
            decision: None,
            decline: decline_code(
                if pending_step_up {
                    Risk::StepUp
                } else {
                    Risk::Allow
                },
                t.decline,
            )
            .or(if t.risk == Risk::Block {
                Some("risk_blocked")
            } else {
                None
            }),
            transfer: Some(views::transfer(t)),
            stored: Some(stored_decision(t)),
            replayed: true,
            notification: None,
        });
    }
    let d = s.engine.decide(tx);
    // A duplicate (authorized before) is answered and settled as it was first decided.
    let risk = Risk::from_action(d.acted_action());
    let notification = notification(s, tx, &d);
    s.metrics.http_decision(&d);
    s.metrics.http_effects(
        d.freeze && !d.already_frozen && !d.duplicate,
        notification.is_some(),
    );
    if settle {
        let (a, ticket) = s.ledger.settle_decided(tx, &d).inspect_err(|e| {
            if !matches!(e, LedgerError::Journal(_)) {
                s.metrics.http_settlement(3);
            }
        })?;
        let Outcome::Transfer(t) = &a.outcome else {
            s.ledger.durable(ticket).await?;
            return Err(LedgerError::Conflict(tx.tx_id.to_string()).into());
        };
        publish(s, Some(ticket), tx, &d, (!a.replayed).then_some(t));
        s.ledger.durable(ticket).await?;
        s.metrics.http_settlement(match t.status {
            vigil_engine::ledger::Status::Settled => 0,
            vigil_engine::ledger::Status::Pending => 1,
            _ => 2,
        });
        return Ok(Decided {
            decline: decline_code(risk, t.decline),
            transfer: Some(views::transfer(t)),
            stored: None,
            replayed: a.replayed,
            decision: Some(d),
            notification,
        });
    }
    // Decision only: the ledger's view (frozen, funds, a payee it does not hold) when the payer
    // is in the ledger: what settling would answer.
    let cmd = s.ledger.transfer_cmd(tx, Some(&d));
    let ledger_decline = s
        .ledger
        .read(|b| {
            b.has_account(&tx.account_id)
                .then(|| b.precheck(&cmd))
                .flatten()
        })
        .filter(|d| *d != Decline::RiskBlocked);
    let ticket = s.ledger.freeze_decided(tx, &d)?;
    publish(s, ticket, tx, &d, None);
    if let Some(t) = ticket {
        s.ledger.durable(t).await?;
    }
    Ok(Decided {
        decline: decline_code(risk, ledger_decline),
        transfer: None,
        stored: None,
        replayed: false,
        decision: Some(d),
        notification,
    })
}

/// What the ledger kept of a settled transaction's decision, for a retry's answer: the
/// action, score and acting rules (not the values they saw, nor the pack's version).
fn stored_decision(t: &vigil_engine::ledger::Transfer) -> Value {
    let reasons: Vec<Value> = t.rules.iter().map(|r| json!({ "rule": r })).collect();
    json!({
        "tx_id": t.tx_id,
        "action": t.risk.name(),
        "score": t.score,
        "reasons": reasons,
        "stored": true,
    })
}

fn decided_body(d: &Decided) -> Vec<u8> {
    let mut out = Vec::with_capacity(1024);
    out.extend_from_slice(b"{\"decision\":");
    match (&d.decision, &d.stored) {
        (Some(dec), _) => dec.write_json(&mut out),
        (None, Some(v)) => out.extend_from_slice(v.to_string().as_bytes()),
        (None, None) => out.extend_from_slice(b"null"),
    }
    let rest = json!({
        "decline_code": d.decline,
        "replayed": d.replayed,
    });
    if let Some(t) = &d.transfer {
        out.extend_from_slice(b",\"transfer\":");
        out.extend_from_slice(t.to_string().as_bytes());
    }
    if let Some(n) = &d.notification {
        out.extend_from_slice(b",\"notification\":");
        out.extend_from_slice(n.to_string().as_bytes());
    }
    if let Value::Object(m) = rest {
        for (k, v) in m {
            out.extend_from_slice(format!(",\"{k}\":{v}").as_bytes());
        }
    }
    out.push(b'}');
    out
}

pub async fn authorize(
    State(s): State<AppState>,
    Params(q): Params<AuthorizeQuery>,
    req: Request,
) -> Result<Response, ApiError> {
    ensure_ready(&s.0)?;
    let bytes = body_bytes(req, &()).await?;
    let tx = transaction(&bytes, None)?;
    let d = decide(&s.0, &tx, q.settle).await?;
    Ok(json_bytes(StatusCode::OK, decided_body(&d)))
}

pub async fn create_transfer(
    State(s): State<AppState>,
    req: Request,
) -> Result<Response, ApiError> {
    ensure_ready(&s.0)?;
    let bytes = body_bytes(req, &()).await?;
    let tx = transaction(&bytes, Some("transfer"))?;
    let d = decide(&s.0, &tx, true).await?;
    let status = if d.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok(json_bytes(status, decided_body(&d)))
}

/// The event a ledger write shows the engine, checked before the write (a bad `locale`, say,
/// is refused while nothing has moved): once money moved, the answer must not be an error.
fn engine_event(json: &Value) -> Result<Event, ApiError> {
    Ok(vigil_engine::event::decode_value(json)?)
}

pub async fn account_event(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    ensure_ready(&s.0)?;
    let bytes = body_bytes(req, &()).await?;
    let ev = event(&bytes, None)?;
    let Event::Account(a) = &ev else {
        return Err(ApiError::bad(
            "invalid_field",
            "a transaction is decided at /v1/authorize or /v1/transfers, not here",
        )
        .field("kind"));
    };
    s.0.engine.observe(a);
    // An opening with a currency opens the ledger account too, as on the Kafka path.
    if let Some(t) = s.0.ledger.open_announced(a)? {
        s.0.ledger.durable(t).await?;
    }
    Ok(json(
        StatusCode::ACCEPTED,
        &json!({"event_id": a.event_id, "kind": a.kind.name(), "account_id": a.account_id}),
    ))
}

// ---------- accounts ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAccount {
    id: String,
    currency: String,
    #[serde(default)]
    locale: Option<String>,
}

async fn run(s: &Shared, cmd: Command) -> Result<Applied, ApiError> {
    let a = s.ledger.execute(cmd)?;
    s.ledger.durable(a.ticket).await?;
    Ok(a)
}

fn created(a: &Applied) -> StatusCode {
    if a.replayed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    }
}

fn outcome_json(o: &Outcome, s: &Shared) -> Value {
    match o {
        Outcome::Account(a) => views::account(a),
        Outcome::Transfer(t) => views::transfer(t),
        Outcome::Refund(r) => views::refund(r),
        Outcome::Case(c) => views::case(c, case_currency(s, &c.tx_id)),
    }
}

fn case_currency(s: &Shared, tx_id: &str) -> Option<Currency> {
    s.ledger.read(|b| b.get_transfer(tx_id).map(|t| t.currency))
}

fn check_id(field: &str, v: &str) -> Result<(), ApiError> {
    check_id_up_to(field, v, ID_BYTES_MAX)
}

/// An id of 1 to `max` bytes without control characters.
fn check_id_up_to(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.is_empty() || v.len() > max || v.chars().any(char::is_control) {
        return Err(ApiError::bad(
            "invalid_field",
            format!("must be 1 to {max} bytes without control characters"),
        )
        .field(field));
    }
    Ok(())
}

/// Longest free text (a reason, a note) kept in the journal, the audit log and the answers.
const TEXT_BYTES_MAX: usize = 1_000;

/// Free text of at most [`TEXT_BYTES_MAX`] bytes, without control characters other than line
/// breaks and tabs; `required`: not blank.
fn check_text(field: &str, v: &str, required: bool) -> Result<(), ApiError> {
    let bad = |message: String| Err(ApiError::bad("invalid_field", message).field(field));
    if required && v.trim().is_empty() {
        return bad("is required: say why".into());
    }
    if v.len() > TEXT_BYTES_MAX {
        return bad(format!(
            "is {} bytes, more than the limit of {TEXT_BYTES_MAX}",
            v.len()
        ));
    }
    if v.chars()
        .any(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'))
    {
        return bad("holds a control character".into());
    }
    Ok(())
}

/// The prefix of the engine's id for a deposit's or a withdrawal's event (`withdrawal:OP_ID`),
/// the longer of the two: an `op_id` leaves room for it within the engine's id limit (the
/// control character in front, `INTERNAL_ID_PREFIX`, makes it one byte over: the id is the
/// engine's own and is never checked against the limit).
const MOVEMENT_PREFIX_MAX: &str = "withdrawal:";

pub async fn open_account(
    State(s): State<AppState>,
    Body(b): Body<OpenAccount>,
) -> Result<Response, ApiError> {
    ensure_ready(&s.0)?;
    check_id("id", &b.id)?;
    // The engine learns the opening (account age, a balance it can follow, the locale). Its
    // event id is only a label: cut to fit the id limit.
    let mut event_id = format!("open-{}", b.id);
    let mut cut = ID_BYTES_MAX.min(event_id.len());
    while !event_id.is_char_boundary(cut) {
        cut -= 1;
    }
    event_id.truncate(cut);
    // The currency is checked there too, as on the event routes.
    let mut ev = json!({"schema": 1, "event_id": event_id, "kind": "account_opened",
        "account_id": b.id, "currency": b.currency, "ts": format_ts(vigil_engine::ledger::now_ms())});
    if let Some(l) = &b.locale {
        ev["locale"] = json!(l);
    }
    let ev = engine_event(&ev)?;
    let a = run(
        &s.0,
        Command::Open {
            account: b.id.clone(),
            currency: b.currency,
            locale: b.locale.clone(),
        },
    )
    .await?;
    if !a.replayed {
        s.0.engine.apply(&ev);
    }
    Ok(json(created(&a), &outcome_json(&a.outcome, &s.0)))
}

pub async fn get_account(
    State(s): State<AppState>,
    PathId(id): PathId,
) -> Result<Response, ApiError> {
    let a =
        s.0.ledger
            .read(|b| b.get_account(&id))
            .ok_or_else(|| ApiError::from(LedgerError::UnknownAccount(id)))?;
    Ok(json(StatusCode::OK, &views::account(&a)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Movement {
    op_id: String,
    amount: String,
}

fn minor(s: &Shared, account: &str, amount: &str) -> Result<i64, ApiError> {
    let c = s
        .ledger
        .read(|b| b.get_account(account).map(|a| a.currency))
        .ok_or_else(|| ApiError::from(LedgerError::UnknownAccount(account.to_string())))?;
    vigil_engine::event::parse_amount(amount, c).map_err(ApiError::from)
}

/// The engine follows balances and usual amounts from the money that moves: a deposit or a
/// withdrawal is shown to it as the transaction it is (its decision is not used), with an id
/// no client's can be (`INTERNAL_ID_PREFIX`, then `top_up:OP_ID` or `withdrawal:OP_ID`): a
/// client's transaction with the same id would otherwise pass for a repeat of the movement, or
/// the movement for a repeat of it, and go uncounted.
fn movement_event(s: &Shared, b: &Movement, account: &str, kind: &str) -> Result<Event, ApiError> {
    let currency = s
        .ledger
        .read(|l| {
            l.get_account(account)
                .map(|a| a.currency.code().to_string())
        })
        .unwrap_or_default();
    let mut ev = engine_event(
        &json!({"schema": 1, "tx_id": format!("{kind}:{}", b.op_id), "kind": kind, "account_id": account,
            "amount": b.amount, "currency": currency, "channel": "ledger",
            "ts": format_ts(vigil_engine::ledger::now_ms())}),
    )?;
    if let Event::Tx(t) = &mut ev {
        t.tx_id = format!("{}{}", vigil_engine::event::INTERNAL_ID_PREFIX, t.tx_id).into();
    }
    Ok(ev)
}

/// A deposit (`inward`) or a withdrawal: booked, then shown to the engine.
async fn movement(s: &Shared, id: String, b: Movement, inward: bool) -> Result<Response, ApiError> {
    ensure_ready(s)?;
    check_id_up_to("op_id", &b.op_id, ID_BYTES_MAX - MOVEMENT_PREFIX_MAX.len())?;
    let amount = minor(s, &id, &b.amount)?;
    let ev = movement_event(s, &b, &id, if inward { "top_up" } else { "withdrawal" })?;
    let (op_id, account) = (b.op_id.clone(), id.clone());
    let cmd = if inward {
        Command::Deposit {
            op_id,
            account,
            amount,
        }
    } else {
        Command::Withdraw {
            op_id,
            account,
            amount,
        }
    };
    let a = run(s, cmd).await?;
    if !a.replayed {
        s.engine.apply(&ev);
    }
    Ok(json(created(&a), &outcome_json(&a.outcome, s)))
}

pub async fn deposit(
    State(s): State<AppState>,
    PathId(id): PathId,
    Body(b): Body<Movement>,
) -> Result<Response, ApiError> {
    movement(&s.0, id, b, true).await
}

pub async fn withdraw(
    State(s): State<AppState>,
    PathId(id): PathId,
    Body(b): Body<Movement>,
) -> Result<Response, ApiError> {
    movement(&s.0, id, b, false).await
}

// ---------- history ----------

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    from: Option<String>,
    to: Option<String>,
    kind: Option<String>,
    cursor: Option<String>,
    limit: Option<usize>,
}

const ENTRY_KINDS: &[&str] = &[
    "deposit",
    "withdrawal",
    "transfer_out",
    "transfer_in",
    "payment",
    "payment_in",
    "top_up",
    "top_up_out",
    "refund_out",
    "refund_in",
    "hold",
    "hold_released",
    "hold_posted",
];

struct Filter {
    from: i64,
    to: i64,
    kinds: Vec<String>,
    start: usize,
    limit: usize,
}

fn filter(q: &HistoryQuery, paged: bool) -> Result<Filter, ApiError> {
    let time = |field: &str, v: &Option<String>, default: i64| -> Result<i64, ApiError> {
        v.as_deref().map_or(Ok(default), |s| {
            parse_ts(s).map_err(|e| ApiError::bad("invalid_query", e.message).field(field))
        })
    };
    let kinds: Vec<String> = q
        .kind
        .as_deref()
        .map(|k| k.split(',').map(|s| s.trim().to_string()).collect())
        .unwrap_or_default();
    if let Some(k) = kinds.iter().find(|k| !ENTRY_KINDS.contains(&k.as_str())) {
        return Err(ApiError::bad(
            "invalid_query",
            format!("unknown kind '{k}'; one of {}", ENTRY_KINDS.join(", ")),
        )
        .field("kind"));
    }
    let start = match q.cursor.as_deref() {
        None | Some("") => 0,
        Some(c) => c.parse().map_err(|_| {
            ApiError::bad("invalid_query", "not a cursor from a previous page").field("cursor")
        })?,
    };
    // A page holds 1 to 1000 entries (100 by default); the CSV export everything unless
    // given a limit.
    let limit = match (paged, q.limit) {
        (true, l) if !(1..=1000).contains(&l.unwrap_or(100)) => {
            return Err(ApiError::bad("invalid_query", "limit is 1 to 1000").field("limit"));
        }
        (true, l) => l.unwrap_or(100),
        (false, Some(0)) => {
            return Err(ApiError::bad("invalid_query", "limit is at least 1").field("limit"));
        }
        (false, l) => l.unwrap_or(usize::MAX),
    };
    Ok(Filter {
        from: time("from", &q.from, i64::MIN)?,
        to: time("to", &q.to, i64::MAX)?,
        kinds,
        start,
        limit,
    })
}

type Page = (Vec<vigil_engine::ledger::Entry>, Option<usize>, Currency);

fn page(s: &Shared, id: &str, f: &Filter) -> Result<Page, ApiError> {
    s.ledger
        .read(|b| {
            let a = b.get_account(id)?;
            let entries = b.entries(id)?;
            let mut out = Vec::new();
            let mut next = None;
            for (i, e) in entries.iter().enumerate().skip(f.start) {
                if e.ts_ms < f.from
                    || e.ts_ms >= f.to
                    || (!f.kinds.is_empty() && !f.kinds.iter().any(|k| k == e.kind))
                {
                    continue;
                }
                if out.len() == f.limit {
                    next = Some(i);
                    break;
                }
                out.push(e.clone());
            }
            Some((out, next, a.currency))
        })
        .ok_or_else(|| LedgerError::UnknownAccount(id.to_string()).into())
}

pub async fn history(
    State(s): State<AppState>,
    PathId(id): PathId,
    Params(q): Params<HistoryQuery>,
) -> Result<Response, ApiError> {
    let f = filter(&q, true)?;
    let (entries, next, c) = page(&s.0, &id, &f)?;
    let items: Vec<Value> = entries.iter().map(|e| views::entry(e, c)).collect();
    Ok(json(
        StatusCode::OK,
        &json!({"account_id": id, "entries": items, "next_cursor": next.map(|n| n.to_string())}),
    ))
}

/// A text cell of the CSV export, safe to open in a spreadsheet: ids are chosen by clients, and a
/// cell that begins with `=`, `+`, `-`, `@`, a tab or a carriage return would be read as a
/// formula ("CSV injection"). Such a cell gets a leading `'`, which spreadsheets show as text.
/// Amounts are written by Vigil and stay numbers.
fn spreadsheet_text(s: &str) -> String {
    if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    }
}

pub async fn history_csv(
    State(s): State<AppState>,
    PathId(id): PathId,
    Params(q): Params<HistoryQuery>,
) -> Result<Response, ApiError> {
    let f = filter(&q, false)?;
    let (entries, next, c) = page(&s.0, &id, &f)?;
    let mut w = csv::Writer::from_writer(Vec::with_capacity(entries.len() * 96 + 128));
    let header = [
        "seq",
        "at",
        "kind",
        "ref",
        "counterparty",
        "amount",
        "held_change",
        "available_after",
        "held_after",
        "currency",
    ];
    let csv_err =
        |e: csv::Error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string());
    w.write_record(header).map_err(csv_err)?;
    for e in &entries {
        w.write_record([
            e.seq.to_string(),
            format_ts(e.ts_ms),
            e.kind.to_string(),
            spreadsheet_text(&e.ref_id),
            spreadsheet_text(&e.counterparty),
            c.format(e.available_delta),
            c.format(e.held_delta),
            c.format(e.available_after),
            c.format(e.held_after),
            c.code().to_string(),
        ])
        .map_err(csv_err)?;
    }
    let body = w
        .into_inner()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/csv; charset=utf-8"),
    );
    let disposition = format!(
        "attachment; filename=\"{}-transactions.csv\"",
        id.replace(['"', '\\', '\r', '\n'], "_")
    );
    if let Ok(v) = HeaderValue::from_str(&disposition) {
        r.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    // Cut short by `limit`: where the next part starts, as the JSON history's `next_cursor`.
    if let Some(n) = next {
        r.headers_mut()
            .insert("x-next-cursor", HeaderValue::from(n as u64));
    }
    Ok(r)
}

// ---------- freezes ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reason {
    reason: String,
}

pub async fn freeze(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
    Body(b): Body<Reason>,
) -> Result<Response, ApiError> {
    check_text("reason", &b.reason, true)?;
    let a = run(
        &s.0,
        Command::Freeze {
            account: id.clone(),
            reason: b.reason.clone(),
            by: caller.name.clone(),
            tx_id: None,
        },
    )
    .await?;
    if !a.replayed {
        s.0.audit.record(
            &caller.name,
            "freeze",
            json!({"account_id": id, "reason": b.reason}),
        );
    }
    Ok(json(StatusCode::OK, &outcome_json(&a.outcome, &s.0)))
}

pub async fn unfreeze(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
    Body(b): Body<Reason>,
) -> Result<Response, ApiError> {
    ensure_ready(&s.0)?;
    check_text("reason", &b.reason, true)?;
    let a = run(
        &s.0,
        Command::Unfreeze {
            account: id.clone(),
            reason: b.reason.clone(),
            by: caller.name.clone(),
        },
    )
    .await?;
    lifted(&s.0, &id);
    // Unfreezing an account that is not frozen changes nothing and is not audited.
    if !a.replayed {
        s.0.audit.record(
            &caller.name,
            "unfreeze",
            json!({"account_id": id, "reason": b.reason}),
        );
    }
    Ok(json(StatusCode::OK, &outcome_json(&a.outcome, &s.0)))
}

/// Tells the engine when the ledger no longer holds an account frozen, so that a later freeze
/// rule freezes it again.
fn lifted(s: &Shared, account: &str) {
    let frozen = s.ledger.read(|b| b.get_account(account).map(|a| a.frozen));
    if frozen == Some(false) {
        s.engine.freeze_lifted(account);
    }
}

pub async fn freezes(State(s): State<AppState>) -> Response {
    let list: Vec<Value> =
        s.0.ledger
            .read(|b| b.freezes())
            .iter()
            .map(|(a, f)| views::freeze(a, f))
            .collect();
    json(StatusCode::OK, &json!({ "freezes": list }))
}

// ---------- transfers after the fact ----------

pub async fn get_transfer(
    State(s): State<AppState>,
    PathId(tx_id): PathId,
) -> Result<Response, ApiError> {
    let t =
        s.0.ledger
            .read(|b| b.get_transfer(&tx_id).map(views::transfer))
            .ok_or_else(|| ApiError::from(LedgerError::UnknownTransfer(tx_id)))?;
    Ok(json(StatusCode::OK, &t))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RefundRequest {
    refund_id: String,
    #[serde(default)]
    amount: Option<String>,
    #[serde(default)]
    reason: String,
}

pub async fn refund(
    State(s): State<AppState>,
    PathId(tx_id): PathId,
    Body(b): Body<RefundRequest>,
) -> Result<Response, ApiError> {
    check_id("refund_id", &b.refund_id)?;
    check_text("reason", &b.reason, false)?;
    let c =
        s.0.ledger
            .read(|l| l.get_transfer(&tx_id).map(|t| t.currency))
            .ok_or_else(|| ApiError::from(LedgerError::UnknownTransfer(tx_id.clone())))?;
    let amount = b
        .amount
        .as_deref()
        .map(|a| vigil_engine::event::parse_amount(a, c))
        .transpose()?;
    let a = run(
        &s.0,
        Command::Refund {
            refund_id: b.refund_id,
            tx_id,
            amount,
            reason: b.reason,
        },
    )
    .await?;
    Ok(json(created(&a), &outcome_json(&a.outcome, &s.0)))
}

pub async fn cancel(
    State(s): State<AppState>,
    PathId(tx_id): PathId,
) -> Result<Response, ApiError> {
    let a = run(
        &s.0,
        Command::Void {
            tx_id,
            why: VoidReason::Cancelled,
        },
    )
    .await?;
    Ok(json(StatusCode::OK, &outcome_json(&a.outcome, &s.0)))
}

pub async fn confirm(
    State(s): State<AppState>,
    PathId(tx_id): PathId,
) -> Result<Response, ApiError> {
    let a = run(
        &s.0,
        Command::Post {
            tx_id,
            by: PostBy::Confirmed,
        },
    )
    .await?;
    Ok(json(StatusCode::OK, &outcome_json(&a.outcome, &s.0)))
}

// ---------- disputes and cases ----------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DisputeRequest {
    dispute_id: String,
    tx_id: String,
    #[serde(default)]
    reason: String,
}

pub async fn dispute(
    State(s): State<AppState>,
    Body(b): Body<DisputeRequest>,
) -> Result<Response, ApiError> {
    check_id("dispute_id", &b.dispute_id)?;
    check_text("reason", &b.reason, false)?;
    let a = run(
        &s.0,
        Command::Dispute {
            case_id: b.dispute_id,
            tx_id: b.tx_id,
            reason: b.reason,
        },
    )
    .await?;
    Ok(json(created(&a), &outcome_json(&a.outcome, &s.0)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct CasesQuery {
    status: Option<String>,
}

pub async fn cases(
    State(s): State<AppState>,
    Params(q): Params<CasesQuery>,
) -> Result<Response, ApiError> {
    // Closed reviews (their hold ended first) are a queue of their own: labelling them keeps
    // the rules' precision honest, and a holder's cancel must not hide a takeover's transfer.
    let wanted: fn(&vigil_engine::ledger::Case) -> bool = match q.status.as_deref() {
        None | Some("open") => |c| c.is_open(),
        Some("closed") => |c| c.verdict.is_none() && c.closed.is_some(),
        Some("resolved") => |c| c.verdict.is_some(),
        Some("all") => |_| true,
        Some(o) => {
            return Err(ApiError::bad(
                "invalid_query",
                format!("status is open, closed, resolved or all, not '{o}'"),
            )
            .field("status"));
        }
    };
    let list: Vec<Value> = s.0.ledger.read(|b| {
        b.cases(false)
            .filter(|c| wanted(c))
            .map(|c| views::case(c, b.get_transfer(&c.tx_id).map(|t| t.currency)))
            .collect()
    });
    Ok(json(StatusCode::OK, &json!({ "cases": list })))
}

/// Analysts' verdicts as labels, oldest resolution first, one JSON object per line: the file
/// `vigil replay --labels` reads (a later line for a tx_id wins there, as the later verdict).
pub async fn labels(State(s): State<AppState>) -> Response {
    let mut resolved: Vec<(i64, String, Value)> = s.0.ledger.read(|b| {
        b.cases(false)
            .filter_map(|c| {
                let verdict = c.verdict?;
                let at = c.resolved_ms.unwrap_or(c.opened_ms);
                Some((
                    at,
                    c.id.clone(),
                    json!({
                        "tx_id": c.tx_id,
                        "is_fraud": verdict == Verdict::Fraud,
                        "source": c.kind,
                        "case_id": c.id,
                        "rules": c.rules,
                        "resolved_by": c.resolved_by,
                        "resolved_at": format_ts(at),
                    }),
                ))
            })
            .collect()
    });
    resolved.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    let mut body = Vec::with_capacity(resolved.len() * 160);
    for (_, _, v) in &resolved {
        if serde_json::to_writer(&mut body, v).is_ok() {
            body.push(b'\n');
        }
    }
    let mut r = (StatusCode::OK, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    r
}

pub async fn get_case(State(s): State<AppState>, PathId(id): PathId) -> Result<Response, ApiError> {
    let c =
        s.0.ledger
            .read(|b| {
                b.get_case(&id)
                    .map(|c| views::case(c, b.get_transfer(&c.tx_id).map(|t| t.currency)))
            })
            .ok_or_else(|| ApiError::from(LedgerError::UnknownCase(id)))?;
    Ok(json(StatusCode::OK, &c))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolution {
    verdict: Verdict,
    #[serde(default)]
    note: String,
}

pub async fn resolve_case(
    State(s): State<AppState>,
    Extension(caller): Extension<Caller>,
    PathId(id): PathId,
    Body(b): Body<Resolution>,
) -> Result<Response, ApiError> {
    ensure_ready(&s.0)?;
    check_text("note", &b.note, false)?;
    let a = run(
        &s.0,
        Command::Resolve {
            case_id: id,
            verdict: b.verdict,
            by: caller.name.clone(),
            note: b.note.clone(),
        },
    )
    .await?;
    // A retry (the same verdict again) answers the case as it stands and records nothing.
    if let Outcome::Case(c) = &a.outcome
        && !a.replayed
    {
        lifted(&s.0, &c.account);
        let verdict = match b.verdict {
            Verdict::Fraud => "fraud",
            Verdict::Legit => "legit",
        };
        // Verdicts label the rules that fired: confirmed hits and false positives per rule.
        s.0.metrics.verdict(&c.rules, verdict);
        s.0.audit.record(
            &caller.name,
            "verdict",
            json!({"case_id": c.id, "tx_id": c.tx_id, "account_id": c.account,
                   "verdict": verdict, "rules": c.rules, "note": b.note}),
        );
    }
    Ok(json(StatusCode::OK, &outcome_json(&a.outcome, &s.0)))
}
