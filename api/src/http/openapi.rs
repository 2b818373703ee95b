//! `/openapi.json`, built from the route table: every route, its roles, parameters, body and
//! answers, so the document cannot drift from the router.

use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{Map, Value, json};

use super::{Role, json as respond, routes};

/// An amount in an answer: the currency's decimals, always written.
fn money(desc: &str) -> Value {
    json!({"type": "string", "pattern": "^[0-9]+(\\.[0-9]+)?$", "description": desc, "example": "250.00"})
}

/// A change of balance in an answer: negative when money leaves.
fn signed_money(desc: &str) -> Value {
    json!({"type": "string", "pattern": "^-?[0-9]+(\\.[0-9]+)?$", "description": desc, "example": "-25.00"})
}

/// An amount in a request: a decimal with at most the currency's decimals, greater than zero
/// (`5`, `5.00`, `5.` and `.50` are read).
fn amount_in(desc: &str) -> Value {
    json!({"type": "string", "pattern": "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)$", "description": desc, "example": "250.00"})
}

fn schemas() -> Value {
    let s = |v: &str| json!({"type": "string", "description": v});
    let mut all = json!({
        "Error": {"type": "object", "required": ["code", "message"], "properties": {
            "code": s("stable machine code, e.g. insufficient_funds, unauthorized, invalid_field"),
            "message": s("for people"),
            "field": s("the request field at fault")}},
        "Health": {"type": "object"},
        "Object": {"type": "object"},
        "RulePack": {"type": "object", "properties": {
            "pack": {"type": "string"}, "hash": {"type": "string"},
            "summary": {"type": "string"}, "dir": {"type": ["string", "null"]},
            "rules": {"type": "array", "items": {"type": "object", "properties": {
                "id": {"type": "string"}, "description": {"type": "string"},
                "action": {"type": ["string", "null"]}, "score": {"type": "integer"},
                "shadow": {"type": "boolean"}, "freeze": {"type": "boolean"},
                "notify": {"type": ["string", "null"]}}}}}},
        "Reload": {"type": "object", "properties": {
            "result": {"enum": ["swapped", "unchanged"]}, "from": {"type": "string"},
            "hash": {"type": "string"}, "summary": {"type": "string"}}},
        "Audit": {"type": "object", "properties": {
            "entries": {"type": "array", "items": {"type": "object", "properties": {
                "at": {"type": "string"}, "who": {"type": "string"},
                "kind": {"type": "string"}}}}}},
        "Csv": {"type": "string", "description": "text/csv: seq,at,kind,ref,counterparty,amount,held_change,available_after,held_after,currency"},
        "TransactionEvent": {"type": "object", "required": ["tx_id", "account_id", "amount", "currency"], "additionalProperties": false, "properties": {
            "schema": {"type": "integer", "enum": [1], "description": "default 1"},
            "tx_id": s("idempotency key"),
            "ts": s("RFC 3339 event time; default now"),
            "kind": {"type": "string", "enum": ["transfer", "payment", "withdrawal", "top_up", "refund"], "description": "required on /v1/authorize; default transfer on /v1/transfers"},
            "account_id": s("the paying account (receiving, for top_up and refund)"),
            "counterparty_id": s("payee account, merchant or source"),
            "amount": amount_in("decimal string, at most the currency's decimals"),
            "currency": s("ISO 4217"),
            "channel": s("app, web, …"), "device_id": s(""), "ip": s(""),
            "geo": {"$ref": "#/components/schemas/Geo"},
            "memo": s(""),
            "is_fraud": {"type": "boolean", "description": "a label (generated and replayed traffic); not read by the rules"},
            "fraud_scenario": s("a label, as is_fraud"),
            "event_id": s("read on account events; ignored here"), "locale": s("read on account_opened; ignored here")}},
        "Geo": {"type": ["object", "null"], "required": ["lat", "lon"], "additionalProperties": false, "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}, "country": s("ISO 3166 alpha-2")}},
        "Authorization": {"type": "object", "properties": {
            "decision": {"type": "object", "description": "action, score, reasons (rule, values), rules_version; for a tx_id decided before, duplicate: true and first_action (what was first answered, and what settling goes by); on a retry (replayed: true) what the ledger kept of the first decision: tx_id, action, score, reasons (rule only) and stored: true"},
            "decline_code": {"type": ["string", "null"], "enum": ["risk_blocked", "step_up_required", "insufficient_funds", "account_frozen", "currency_mismatch", "limit_exceeded", "unknown_account", null]},
            "transfer": {"$ref": "#/components/schemas/Transfer"},
            "notification": {"type": "object", "properties": {"kind": s(""), "locale": s(""), "text": s("")}},
            "replayed": {"type": "boolean"}}},
        "AccountEvent": {"type": "object", "required": ["event_id", "kind", "account_id"], "additionalProperties": false, "properties": {
            "schema": {"type": "integer", "enum": [1]}, "event_id": s(""), "ts": s("RFC 3339; default now"),
            "kind": {"type": "string", "enum": ["account_opened", "login", "new_device", "password_reset", "email_changed", "phone_changed", "payee_added"]},
            "account_id": s(""), "device_id": s(""), "ip": s(""), "counterparty_id": s("the payee, for payee_added"),
            "geo": {"$ref": "#/components/schemas/Geo"}, "locale": s("account_opened only"),
            "currency": s("account_opened only: ISO 4217; opens the ledger account in it"),
            "tx_id": s("taken as the event_id when that is absent"),
            "amount": s("read on transactions; ignored here"), "channel": s("read on transactions; ignored here"),
            "memo": s("read on transactions; ignored here"),
            "is_fraud": {"type": "boolean", "description": "a label, as on transactions"}, "fraud_scenario": s("a label")}},
        "TransferResult": {"$ref": "#/components/schemas/Authorization"},
        "OpenAccount": {"type": "object", "required": ["id", "currency"], "additionalProperties": false, "properties": {
            "id": s("account id"), "currency": s("ISO 4217"), "locale": s("notification language, e.g. en, zh-CN")}},
        "Account": {"type": "object", "properties": {
            "id": s(""), "currency": s(""), "available": money("spendable"), "held": money("held for pending transfers"),
            "frozen": {"type": "boolean"}, "locale": s(""), "opened_at": s("")}},
        "Movement": {"type": "object", "required": ["op_id", "amount"], "additionalProperties": false, "properties": {
            "op_id": s("idempotency key"), "amount": amount_in("")}},
        "History": {"type": "object", "properties": {
            "account_id": s(""), "next_cursor": s("pass as cursor for the next page; null at the end"),
            "entries": {"type": "array", "items": {"type": "object", "properties": {
                "seq": {"type": "integer"}, "at": s(""), "kind": s(""), "ref": s("transfer or operation id"),
                "counterparty": s(""), "amount": signed_money("change to available"), "held_change": signed_money(""),
                "available_after": money(""), "held_after": money(""), "currency": s("")}}}}},
        "Reason": {"type": "object", "required": ["reason"], "additionalProperties": false, "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 1000, "description": "why; at most 1,000 bytes"}}},
        "Freezes": {"type": "object", "properties": {"freezes": {"type": "array", "items": {"type": "object", "properties": {
            "account_id": s(""), "reason": s(""), "by": s(""), "tx_id": s(""), "since": s("")}}}}},
        "Transfer": {"type": "object", "properties": {
            "tx_id": s(""), "kind": s(""), "from": s("account id or world"), "to": s("account id or world"),
            "amount": money(""), "currency": s(""),
            "status": {"type": "string", "enum": ["settled", "pending", "voided", "declined"]},
            "decline_code": s(""), "void_reason": {"type": "string", "enum": ["cancelled", "rejected", "expired"]},
            "posted_by": {"type": "string", "enum": ["confirmed", "approved"]},
            "risk": {"type": "string", "enum": ["allow", "review", "step_up", "block"]},
            "rules": {"type": "array", "items": s("")}, "score": {"type": "integer"},
            "refunded": money(""), "label": {"type": "string", "enum": ["fraud", "legit"]},
            "created_at": s(""), "updated_at": s(""), "hold_expires_at": s("")}},
        "RefundRequest": {"type": "object", "required": ["refund_id"], "additionalProperties": false, "properties": {
            "refund_id": s("idempotency key"), "amount": amount_in("default: all that is left"), "reason": s("")}},
        "Refund": {"type": "object", "properties": {
            "refund_id": s(""), "tx_id": s(""), "amount": money(""), "currency": s(""),
            "refunded_total": money(""), "reason": s(""), "created_at": s("")}},
        "DisputeRequest": {"type": "object", "required": ["dispute_id", "tx_id"], "additionalProperties": false, "properties": {
            "dispute_id": s("idempotency key and case id; not starting with review-"), "tx_id": s("a settled transfer, disputed once"), "reason": s("the holder's words")}},
        "Case": {"type": "object", "properties": {
            "id": s(""), "kind": {"type": "string", "enum": ["review", "dispute"]},
            "status": {"type": "string", "enum": ["open", "resolved", "closed"], "description": "closed: a review whose hold ended first (closed_reason); a verdict may still be given"},
            "closed_reason": {"type": ["string", "null"], "enum": ["cancelled", "expired", null]}, "tx_id": s(""), "account_id": s(""),
            "reason": s(""), "rules": {"type": "array", "items": s("")}, "opened_at": s(""),
            "verdict": {"type": "string", "enum": ["fraud", "legit"]}, "resolved_by": s(""), "note": s(""),
            "resolved_at": s(""), "recovered": money("refunded from the payee on a fraud verdict")}},
        "Cases": {"type": "object", "properties": {"cases": {"type": "array", "items": {"$ref": "#/components/schemas/Case"}}}},
        "Resolution": {"type": "object", "required": ["verdict"], "additionalProperties": false, "properties": {
            "verdict": {"type": "string", "enum": ["fraud", "legit"]}, "note": s("")}},
    });
    let more = json!({
        "DryRunRequest": {"type": "object", "properties": {
            "files": {"type": "object", "additionalProperties": {"type": "string"}, "description": "name.toml or lists/name → its text (the pack's tests are not run)"},
            "remove": {"type": "array", "items": {"type": "string"}}}},
        "DryRun": {"type": "object", "properties": {
            "transactions": {"type": "integer"}, "events": {"type": "integer"}, "changed": {"type": "integer"},
            "from": s("RFC 3339"), "to": s("RFC 3339"),
            "running": {"type": "object", "description": "hash, decisions per action, precision and recall when labelled, rule_errors (rule id → times its condition could not be computed) when any"},
            "candidate": {"type": "object", "description": "as running, for the candidate pack"},
            "transitions": {"type": "array", "items": {"type": "object"}},
            "rules": {"type": "array", "items": {"type": "object"}},
            "changed_decisions": {"type": "array", "items": {"type": "object"}}}},
        "SnoozeRequest": {"type": "object", "required": ["account_id", "rule", "reason"], "properties": {
            "account_id": s("the account"), "rule": s("a rule id of the active pack"),
            "until": s("RFC 3339: muted for transactions before this time"),
            "for": s("or a period from now: 12h, 7d (at most 90d)"),
            "reason": s("why: the known false positive")}},
        "Snooze": {"type": "object", "properties": {
            "id": s("snz-<n>"), "account_id": s("the account"), "rule": s("the muted rule"),
            "until": s("RFC 3339"), "reason": s("why"), "created_by": s("who"),
            "created_at": s("RFC 3339")}},
        "Snoozes": {"type": "object", "properties": {
            "snoozes": {"type": "array", "items": {"$ref": "#/components/schemas/Snooze"}}}},
        "Labels": {"type": "string", "description": "application/x-ndjson: one {tx_id, is_fraud, source, case_id, rules, resolved_by, resolved_at} per line"},
    });
    if let (Value::Object(all), Value::Object(more)) = (&mut all, more) {
        all.extend(more);
    }
    all
}

/// The OpenAPI 3.1 document.
pub fn document() -> Value {
    let mut paths: Map<String, Value> = Map::new();
    let error = |d: &str| json!({"description": d, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}});
    for r in routes() {
        let mut op = Map::new();
        op.insert("summary".into(), json!(r.summary));
        op.insert(
            "operationId".into(),
            json!(format!("{} {}", r.method, r.path)),
        );
        let mut params: Vec<Value> = r
            .path
            .split('/')
            .filter_map(|seg| seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            .map(|name| json!({"name": name, "in": "path", "required": true, "schema": {"type": "string"}}))
            .collect();
        params.extend(r.query.iter().map(|(name, d)| {
            json!({"name": name, "in": "query", "required": false, "description": d, "schema": {"type": "string"}})
        }));
        if !params.is_empty() {
            op.insert("parameters".into(), Value::Array(params));
        }
        if let Some(b) = r.body {
            op.insert(
                "requestBody".into(),
                json!({"required": true, "content": {"application/json": {"schema": {"$ref": format!("#/components/schemas/{b}")}}}}),
            );
        }
        let media = match r.ok.1 {
            "Csv" => "text/csv",
            "Labels" => "application/x-ndjson",
            _ => "application/json",
        };
        let mut responses = Map::new();
        responses.insert(
            r.ok.0.to_string(),
            json!({"description": "success", "content": {media: {"schema": {"$ref": format!("#/components/schemas/{}", r.ok.1)}}}}),
        );
        if !r.roles.is_empty() {
            let mut roles: Vec<&str> = r.roles.iter().map(|r| r.name()).collect();
            roles.push(Role::Admin.name());
            op.insert("security".into(), json!([{"bearer": []}]));
            op.insert("x-roles".into(), json!(roles));
            responses.insert("401".into(), error("no or unknown bearer token"));
            responses.insert("403".into(), error("the token's role may not call this"));
        }
        if r.body.is_some() {
            responses.insert("400".into(), error("invalid JSON or field"));
            responses.insert("413".into(), error("body too large"));
        }
        if !r.query.is_empty() {
            responses
                .entry("400")
                .or_insert_with(|| error("invalid_query: a parameter named in field"));
        }
        if r.path == "/v1/snoozes" && r.method == "post" {
            responses.insert(
                "200".into(),
                json!({"description": "an earlier snooze of the account and rule replaced (same id)", "content": {media: {"schema": {"$ref": "#/components/schemas/Snooze"}}}}),
            );
        }
        if r.path == "/readyz" {
            responses.insert(
                "503".into(),
                error("not ready: the journal takes no writes, or the state is not in place yet"),
            );
        }
        if r.path.contains('{') {
            responses.insert("404".into(), error("not found"));
        }
        if r.method == "post" && r.path.starts_with("/v1/") {
            responses.insert("409".into(), error("idempotency conflict or wrong state"));
            responses.insert(
                "422".into(),
                error("refused by the ledger (funds, frozen, currency, limit)"),
            );
            responses.insert(
                "503".into(),
                error("journal unavailable, timed out, or not_ready (the state not in place yet, at start)"),
            );
        }
        op.insert("responses".into(), Value::Object(responses));
        let entry = paths.entry(r.path.to_string()).or_insert_with(|| json!({}));
        if let Value::Object(m) = entry {
            m.insert(r.method.to_string(), Value::Object(op));
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "Vigil", "version": env!("CARGO_PKG_VERSION"),
                 "description": "Inline fraud decisions and the ledger that settles allowed payments. Money is a decimal string; every error is {code, message, field?}."},
        "paths": paths,
        "components": {
            "schemas": schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
    })
}

pub async fn serve() -> Response {
    respond(StatusCode::OK, &document())
}
