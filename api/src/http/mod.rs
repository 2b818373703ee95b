//! The HTTP API: `router(AppState) -> Router`, testable without a socket.
//!
//! Every route is declared once in [`routes`] with its method, path, the roles allowed on it
//! and its documentation; the router, the role checks and `/openapi.json` are all built from
//! that table. Every error is a JSON body `{code, message, field?}` with a stable code.

pub mod audit;
mod handlers;
pub mod snooze;
pub use handlers::{expire_snoozes, reload_rules};
mod openapi;
mod views;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::MethodRouter;
use serde::Serialize;
use serde::de::DeserializeOwned;
use vigil_engine::Engine;
use vigil_engine::ledger::{Ledger, LedgerError};
use vigil_engine::metrics::{HttpRoute, Metrics};
use vigil_engine::packs::Reloader;
use vigil_engine::stream::publish::Publisher;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// The payment service: authorize, accounts, transfers, history, disputes.
    PaymentService,
    /// Fraud analysts: freezes, cases, disputes, reads.
    Analyst,
    /// Everything.
    Admin,
}

impl Role {
    /// Wire name.
    pub fn name(self) -> &'static str {
        match self {
            Role::PaymentService => "payment_service",
            Role::Analyst => "analyst",
            Role::Admin => "admin",
        }
    }
    /// Parses a wire name.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::PaymentService, Role::Analyst, Role::Admin]
            .into_iter()
            .find(|r| r.name() == s)
    }
}

/// A bearer token and who holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Token {
    /// The holder's name, recorded on what they do (freezes, verdicts).
    pub name: String,
    /// The role.
    pub role: Role,
    /// The secret.
    pub token: String,
}

/// Limits on every request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest request body, bytes.
    pub body_bytes: usize,
    /// Longest a request may take.
    pub timeout: Duration,
    /// Longest a connection may send nothing while a request is awaited: before its headers
    /// are in (a client that stops mid-headers) or idle between requests.
    pub idle: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            body_bytes: 64 * 1024,
            timeout: Duration::from_secs(10),
            idle: Duration::from_secs(60),
        }
    }
}

/// What the handlers share.
#[derive(Debug)]
pub struct Shared {
    /// The same engine the Kafka pipeline decides with.
    pub engine: Arc<Engine>,
    /// The ledger.
    pub ledger: Ledger,
    tokens: Vec<Token>,
    /// Ready to take traffic (the pipeline, when there is one, has its partitions).
    pub ready: AtomicBool,
    limits: Limits,
    /// Prometheus metrics (the engine reports into the same).
    pub metrics: Arc<Metrics>,
    /// Reloads the rules (`POST /v1/rules/reload`), when serving from a pack directory.
    pub reloader: OnceLock<Arc<Reloader>>,
    /// Publishes decisions and their effects to the Kafka output topics, next to a pipeline.
    pub publisher: OnceLock<Arc<Publisher>>,
    /// Who changed what.
    pub audit: audit::Audit,
    /// Rules muted per account.
    pub snoozes: snooze::Snoozes,
    /// One dry run at a time (each runs two engines over the recent traffic).
    dry_run: tokio::sync::Mutex<()>,
}

/// The router's state. Cheap to clone.
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<Shared>);

impl AppState {
    /// State over an engine and a ledger, with these tokens.
    /// The engine reports into the metrics served at `/metrics` (its own, if it has them).
    pub fn new(engine: Arc<Engine>, ledger: Ledger, tokens: Vec<Token>, limits: Limits) -> Self {
        let metrics = match engine.metrics() {
            Some(m) => m.clone(),
            None => {
                let m = Arc::new(Metrics::new());
                engine.set_metrics(m.clone());
                m
            }
        };
        AppState(Arc::new(Shared {
            engine,
            ledger,
            tokens,
            ready: AtomicBool::new(true),
            limits,
            audit: audit::Audit::new(metrics.clone()),
            snoozes: snooze::Snoozes::default(),
            dry_run: tokio::sync::Mutex::new(()),
            metrics,
            reloader: OnceLock::new(),
            publisher: OnceLock::new(),
        }))
    }

    /// Serves `POST /v1/rules/reload` from this reloader's directory.
    pub fn with_reloader(self, r: Arc<Reloader>) -> Self {
        let _ = self.0.reloader.set(r);
        self
    }

    /// Publishes every decision made over HTTP, with its freeze request and notifications, as
    /// the Kafka path does.
    pub fn with_publisher(self, p: Arc<Publisher>) -> Self {
        let _ = self.0.publisher.set(p);
        self
    }
}

/// An error answer: `{code, message, field?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// Stable machine code.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The request field at fault.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
        }
    }
    fn field(mut self, field: impl Into<String>) -> ApiError {
        self.field = Some(field.into());
        self
    }
    fn bad(code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, code, message)
    }
}

impl From<LedgerError> for ApiError {
    fn from(e: LedgerError) -> Self {
        let status = match &e {
            LedgerError::UnknownAccount(_)
            | LedgerError::UnknownTransfer(_)
            | LedgerError::UnknownCase(_) => StatusCode::NOT_FOUND,
            LedgerError::AccountExists(_)
            | LedgerError::Conflict(_)
            | LedgerError::InvalidState { .. }
            | LedgerError::CaseClosed(_)
            | LedgerError::AlreadyDisputed { .. } => StatusCode::CONFLICT,
            LedgerError::Journal(_) => StatusCode::SERVICE_UNAVAILABLE,
            LedgerError::ReservedId { .. } => StatusCode::BAD_REQUEST,
            _ => StatusCode::UNPROCESSABLE_ENTITY,
        };
        let field = match &e {
            LedgerError::InvalidAmount
            | LedgerError::LimitExceeded(..)
            | LedgerError::RefundExceeds { .. } => Some("amount"),
            LedgerError::UnknownCurrency(_) | LedgerError::CurrencyMismatch { .. } => {
                Some("currency")
            }
            LedgerError::AlreadyDisputed { .. } => Some("tx_id"),
            LedgerError::ReservedId { field, .. } => Some(*field),
            _ => None,
        };
        ApiError {
            status,
            code: e.code(),
            message: e.to_string(),
            field: field.map(str::to_string),
        }
    }
}

impl From<vigil_engine::EventError> for ApiError {
    fn from(e: vigil_engine::EventError) -> Self {
        ApiError {
            status: StatusCode::BAD_REQUEST,
            code: if e.not_json {
                "invalid_json"
            } else {
                "invalid_field"
            },
            field: e.field.map(|f| f.trim_start_matches('.').to_string()),
            message: e.message,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_vec(&self).unwrap_or_default();
        json_bytes(self.status, body)
    }
}

/// A JSON response from bytes.
fn json_bytes(status: StatusCode, body: Vec<u8>) -> Response {
    let mut r = (status, body).into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r
}

/// A JSON response.
fn json<T: Serialize>(status: StatusCode, v: &T) -> Response {
    match serde_json::to_vec(v) {
        Ok(b) => json_bytes(status, b),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("encoding the answer failed: {e}"),
        )
        .into_response(),
    }
}

/// A JSON body decoded with the failing field named, unknown fields refused.
#[derive(Debug)]
pub struct Body<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Body<T> {
    type Rejection = ApiError;
    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = body_bytes(req, state).await?;
        decode_body(&bytes).map(Body)
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than the limit",
            )
        } else {
            ApiError::bad("invalid_body", format!("cannot read the body: {r}"))
        }
    })
}

fn decode_body<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.is_empty() {
        return Err(ApiError::bad(
            "invalid_json",
            "the request needs a JSON body",
        ));
    }
    // serde would also read a struct from an array of its fields in order: ["a", "EUR"].
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(ApiError::bad(
            "invalid_json",
            "the body must be a JSON object: expected '{'",
        ));
    }
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let v = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return ApiError::bad("invalid_json", format!("invalid JSON: {inner}"));
        }
        let (field, msg) = vigil_engine::event::serde_error_field(&path, &inner.to_string());
        let err = ApiError::bad("invalid_field", msg);
        match field {
            Some(f) => err.field(f),
            None => err,
        }
    })?;
    de.end()
        .map_err(|e| ApiError::bad("invalid_json", format!("invalid JSON: {e}")))?;
    Ok(v)
}

/// The authenticated caller.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Token holder's name.
    pub name: String,
    /// Role.
    pub role: Role,
}

#[derive(Clone)]
struct Guard {
    state: AppState,
    roles: &'static [Role],
}

async fn guard(State(g): State<Guard>, mut req: Request, next: Next) -> Response {
    let presented = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim_start().split_once(' '))
        // The scheme is case-insensitive (RFC 9110 §11.1).
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    let Some(presented) = presented else {
        return unauthorized("missing bearer token: send Authorization: Bearer <token>");
    };
    let found = g
        .state
        .0
        .tokens
        .iter()
        .find(|t| constant_time_eq(t.token.as_bytes(), presented.as_bytes()));
    let Some(t) = found else {
        return unauthorized("unknown token");
    };
    if t.role != Role::Admin && !g.roles.contains(&t.role) {
        let allowed: Vec<&str> = g.roles.iter().map(|r| r.name()).collect();
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!(
                "role {} may not call this; allowed: {}",
                t.role.name(),
                if allowed.is_empty() {
                    "admin".to_string()
                } else {
                    allowed.join(", ") + ", admin"
                }
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(Caller {
        name: t.name.clone(),
        role: t.role,
    });
    next.run(req).await
}

fn unauthorized(msg: &str) -> Response {
    let mut r = ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    r
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Counts every answer by route template and status class (`vigil_http_requests_total`).
async fn count_request(State(route): State<HttpRoute>, req: Request, next: Next) -> Response {
    let r = next.run(req).await;
    route.answered(r.status().as_u16());
    r
}

async fn time_limit(State(s): State<AppState>, req: Request, next: Next) -> Response {
    match tokio::time::timeout(s.0.limits.timeout, next.run(req)).await {
        Ok(r) => r,
        Err(_) => ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "timeout",
            format!(
                "the request took longer than {} ms",
                s.0.limits.timeout.as_millis()
            ),
        )
        .into_response(),
    }
}

/// One route: everything the router, the guard and the OpenAPI document need.
pub(crate) struct Route {
    pub method: &'static str,
    pub path: &'static str,
    /// Roles allowed besides admin; empty: public.
    pub roles: &'static [Role],
    pub summary: &'static str,
    /// Request body schema name in the OpenAPI components.
    pub body: Option<&'static str>,
    /// Query parameters: (name, description).
    pub query: &'static [(&'static str, &'static str)],
    /// Success status and response schema name.
    pub ok: (u16, &'static str),
    pub handler: MethodRouter<AppState>,
}

const PAY: &[Role] = &[Role::PaymentService];
const ANALYST: &[Role] = &[Role::Analyst];
const BOTH: &[Role] = &[Role::PaymentService, Role::Analyst];
const PUBLIC: &[Role] = &[];

pub(crate) fn routes() -> Vec<Route> {
    use axum::routing::{delete, get, post};
    use handlers as h;
    const HISTORY_QUERY: &[(&str, &str)] = &[
        ("from", "RFC 3339 time, inclusive"),
        ("to", "RFC 3339 time, exclusive"),
        (
            "kind",
            "entry kinds, comma-separated (deposit, transfer_out, hold, …)",
        ),
        ("cursor", "from a previous page's next_cursor"),
        (
            "limit",
            "entries per page, 1–1000 (default 100); for the CSV at least 1 (default all)",
        ),
    ];
    let r = |method, path, roles, summary, body, ok, handler| Route {
        method,
        path,
        roles,
        summary,
        body,
        query: &[],
        ok,
        handler,
    };
    vec![
        r(
            "get",
            "/healthz",
            PUBLIC,
            "Liveness.",
            None,
            (200, "Health"),
            get(h::healthz),
        ),
        r(
            "get",
            "/readyz",
            PUBLIC,
            "Readiness: the ledger takes writes and the state is in place (restored from the snapshot by the pipeline, at start). Until then it is 503, and the routes that change what the engine holds (authorize, transfers, events, accounts, deposits, withdrawals, unfreeze, case verdicts) answer 503 not_ready.",
            None,
            (200, "Health"),
            get(h::readyz),
        ),
        r(
            "get",
            "/openapi.json",
            PUBLIC,
            "This document.",
            None,
            (200, "Object"),
            get(openapi::serve),
        ),
        Route {
            query: &[(
                "settle",
                "true: settle through the ledger as POST /v1/transfers does",
            )],
            ..r(
                "post",
                "/v1/authorize",
                PAY,
                "Decide a transaction inline: allow, review, step_up or block, with the reasons and a decline code.",
                Some("TransactionEvent"),
                (200, "Authorization"),
                post(h::authorize),
            )
        },
        r(
            "post",
            "/v1/events",
            PAY,
            "Report an account event (login, new_device, password_reset, email_changed, phone_changed, payee_added): the takeover signals rules read.",
            Some("AccountEvent"),
            (202, "Object"),
            post(h::account_event),
        ),
        r(
            "post",
            "/v1/accounts",
            PAY,
            "Open an account (idempotent by id).",
            Some("OpenAccount"),
            (201, "Account"),
            post(h::open_account),
        ),
        r(
            "get",
            "/v1/accounts/{id}",
            BOTH,
            "An account: balances, frozen, locale.",
            None,
            (200, "Account"),
            get(h::get_account),
        ),
        r(
            "post",
            "/v1/accounts/{id}/deposits",
            PAY,
            "Money in from outside the wallet (idempotent by op_id).",
            Some("Movement"),
            (201, "Account"),
            post(h::deposit),
        ),
        r(
            "post",
            "/v1/accounts/{id}/withdrawals",
            PAY,
            "Money out of the wallet (idempotent by op_id).",
            Some("Movement"),
            (201, "Account"),
            post(h::withdraw),
        ),
        Route {
            query: HISTORY_QUERY,
            ..r(
                "get",
                "/v1/accounts/{id}/transactions",
                BOTH,
                "History, filtered and paginated.",
                None,
                (200, "History"),
                get(h::history),
            )
        },
        Route {
            query: HISTORY_QUERY,
            ..r(
                "get",
                "/v1/accounts/{id}/transactions.csv",
                BOTH,
                "History as CSV (same filter; every entry from the cursor on, or `limit` of them, with the next cursor in the X-Next-Cursor header when cut short). An id that begins with = + - or @ gets a leading ' so that spreadsheets show it as text.",
                None,
                (200, "Csv"),
                get(h::history_csv),
            )
        },
        r(
            "post",
            "/v1/accounts/{id}/freeze",
            ANALYST,
            "Freeze an account. Audited; freezing a frozen account changes nothing and answers it as it stands.",
            Some("Reason"),
            (200, "Account"),
            post(h::freeze),
        ),
        r(
            "post",
            "/v1/accounts/{id}/unfreeze",
            ANALYST,
            "Unfreeze an account. Audited; unfreezing one that is not frozen changes nothing.",
            Some("Reason"),
            (200, "Account"),
            post(h::unfreeze),
        ),
        r(
            "get",
            "/v1/freezes",
            ANALYST,
            "Frozen accounts with the latest reason.",
            None,
            (200, "Freezes"),
            get(h::freezes),
        ),
        r(
            "post",
            "/v1/transfers",
            PAY,
            "Decide, then settle (allow), hold (review, step_up) or decline; idempotent by tx_id.",
            Some("TransactionEvent"),
            (201, "TransferResult"),
            post(h::create_transfer),
        ),
        r(
            "get",
            "/v1/transfers/{tx_id}",
            BOTH,
            "A transfer and where it stands.",
            None,
            (200, "Transfer"),
            get(h::get_transfer),
        ),
        r(
            "post",
            "/v1/transfers/{tx_id}/refunds",
            BOTH,
            "Refund a settled transfer, fully or partly (idempotent by refund_id).",
            Some("RefundRequest"),
            (201, "Refund"),
            post(h::refund),
        ),
        r(
            "post",
            "/v1/transfers/{tx_id}/cancel",
            PAY,
            "Cancel a pending transfer: its hold is released, and its review case closed. Cancelling again answers the transfer as it stands; a hold that lapsed first is 409 invalid_state (voided, not pending: released all the same).",
            None,
            (200, "Transfer"),
            post(h::cancel),
        ),
        r(
            "post",
            "/v1/transfers/{tx_id}/confirm",
            PAY,
            "The holder passed step-up: post the pending transfer. Confirming again answers the transfer as it stands; at or after hold_expires_at the hold is released instead and the answer is 409 invalid_state (voided, void_reason expired).",
            None,
            (200, "Transfer"),
            post(h::confirm),
        ),
        r(
            "post",
            "/v1/disputes",
            BOTH,
            "The holder reports a transfer as unauthorized: the account is frozen and a case opens. A transfer is disputed once (409 already_disputed); the same dispute again answers its case (200).",
            Some("DisputeRequest"),
            (201, "Case"),
            post(h::dispute),
        ),
        Route {
            query: &[(
                "status",
                "open (default: waiting for an analyst), closed (reviews whose hold ended first, without a verdict yet), resolved, or all",
            )],
            ..r(
                "get",
                "/v1/cases",
                ANALYST,
                "Review and dispute cases.",
                None,
                (200, "Cases"),
                get(h::cases),
            )
        },
        r(
            "get",
            "/v1/cases/{id}",
            ANALYST,
            "A case.",
            None,
            (200, "Case"),
            get(h::get_case),
        ),
        r(
            "post",
            "/v1/cases/{id}/resolve",
            ANALYST,
            "Resolve a case: fraud (void the hold, or recover and refund) or legit (post the hold, or unfreeze); on a closed review (its hold ended) the verdict is only a label. The same analyst's same verdict and note again answers the case as it stands; anything else on a resolved case is 409 case_closed.",
            Some("Resolution"),
            (200, "Case"),
            post(h::resolve_case),
        ),
        r(
            "post",
            "/v1/snoozes",
            ANALYST,
            "Snooze one rule for one account (a known false positive) until a time (`until`, RFC 3339) or for a period (`for`, e.g. 7d; at most 90d). The rule neither acts nor scores for that account's transactions before then; decisions list it under `snoozed`. Audited; ends by itself. One per account and rule: another request for the pair (a retry too) replaces it, same id, 200.",
            Some("SnoozeRequest"),
            (201, "Snooze"),
            post(h::create_snooze),
        ),
        Route {
            query: &[("account_id", "only this account's snoozes")],
            ..r(
                "get",
                "/v1/snoozes",
                ANALYST,
                "Snoozes in force.",
                None,
                (200, "Snoozes"),
                get(h::snoozes),
            )
        },
        r(
            "delete",
            "/v1/snoozes/{id}",
            ANALYST,
            "End a snooze now (audited).",
            None,
            (200, "Snooze"),
            delete(h::remove_snooze),
        ),
        r(
            "get",
            "/v1/labels",
            ANALYST,
            "Verdicts as labels, one JSON object per line (tx_id, is_fraud, source, case_id, rules, resolved_by, resolved_at), oldest first: `vigil replay --labels` scores rules against them.",
            None,
            (200, "Labels"),
            get(h::labels),
        ),
        r(
            "get",
            "/metrics",
            PUBLIC,
            "Prometheus metrics (text format): decisions, rule hits, latency, lag, settlements; no account ids.",
            None,
            (200, "Object"),
            get(h::metrics),
        ),
        r(
            "get",
            "/v1/rules",
            BOTH,
            "The active rule pack: name, hash (every decision carries it) and its rules.",
            None,
            (200, "RulePack"),
            get(h::rules),
        ),
        r(
            "post",
            "/v1/rules/reload",
            ANALYST,
            "Reload the rules directory: compile, check, run the pack's tests, swap between events. A bad pack is refused (422 rules_invalid, with file:line:col errors) and the running pack stays.",
            None,
            (200, "Reload"),
            post(h::reload),
        ),
        r(
            "post",
            "/v1/rules/dry-run",
            ANALYST,
            "Run a candidate pack — the rules directory with `files` (name → text) put over it and `remove` left out — over the recent traffic (the latest events decided or observed: `recent_events` in the config, VIGIL_RECENT_EVENTS), next to the running pack, each on empty state; nothing is swapped and the pack's tests are not run (a reload runs them). Says which decisions would change (by action, count, amount), per rule, and lists the first 100 changed decisions. 422 rules_invalid with file:line:col errors for a candidate that does not compile.",
            Some("DryRunRequest"),
            (200, "DryRun"),
            post(h::dry_run),
        ),
        Route {
            query: &[
                ("kind", "reload, freeze, unfreeze, verdict or snooze"),
                ("limit", "entries, 1–1000 (default 100)"),
            ],
            ..r(
                "get",
                "/v1/audit",
                ANALYST,
                "The audit log, newest first: who reloaded rules, froze, unfroze, resolved cases, snoozed rules.",
                None,
                (200, "Audit"),
                get(h::audit),
            )
        },
    ]
}

/// The API router over `state`.
pub fn router(state: AppState) -> Router {
    let mut router = Router::new();
    // Each path's methods together, so that its answers — a wrong method's 405 included —
    // are counted in one place.
    let mut paths: Vec<(&'static str, MethodRouter<AppState>)> = Vec::new();
    for route in routes() {
        // Inside out: the time limit, then the token and role check.
        let limited = route
            .handler
            .route_layer(middleware::from_fn_with_state(state.clone(), time_limit));
        let guarded = if route.roles.is_empty() {
            limited
        } else {
            limited.route_layer(middleware::from_fn_with_state(
                Guard {
                    state: state.clone(),
                    roles: route.roles,
                },
                guard,
            ))
        };
        match paths.iter_mut().find(|(p, _)| *p == route.path) {
            Some((_, methods)) => *methods = std::mem::take(methods).merge(guarded),
            None => paths.push((route.path, guarded)),
        }
    }
    for (path, methods) in paths {
        // Outermost: the count of every answer (refusals and timeouts included).
        let handler =
            methods
                .fallback(handlers::method_not_allowed)
                .layer(middleware::from_fn_with_state(
                    HttpRoute::new(&state.0.metrics, path),
                    count_request,
                ));
        router = router.route(path, handler);
    }
    let limits = state.0.limits;
    router
        .fallback(handlers::not_found)
        .layer(DefaultBodyLimit::max(limits.body_bytes))
        .with_state(state)
}

/// Marks the service ready or not (`/readyz`).
pub fn set_ready(state: &AppState, ready: bool) {
    state.0.ready.store(ready, Ordering::Relaxed);
}
