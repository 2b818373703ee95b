//! What the router tests share: the tokens of each role, and one request through
//! `router(state).oneshot(..)`.

// Each test file uses a part of this.
#![allow(dead_code)]

use axum::body::{Body, to_bytes};
use axum::http::{Request, StatusCode, header};
use tower::ServiceExt;
use vigil_api::http::{Role, Token};

pub const PAY: &str = "pay-token-123";
pub const ANA: &str = "ana-token-123";
pub const ADMIN: &str = "admin-token-123";

/// One token per role: wallet (payment service), ana (analyst), root (admin).
pub fn tokens() -> Vec<Token> {
    [
        ("wallet", Role::PaymentService, PAY),
        ("ana", Role::Analyst, ANA),
        ("root", Role::Admin, ADMIN),
    ]
    .into_iter()
    .map(|(name, role, token)| Token {
        name: name.into(),
        role,
        token: token.into(),
    })
    .collect()
}

/// The answer to one request: status, content type, body text.
pub async fn send(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<impl Into<Vec<u8>>>,
) -> (StatusCode, String, String) {
    let authorization = token.map(|t| format!("Bearer {t}"));
    send_authorized(app, method, uri, authorization.as_deref(), body).await
}

/// [`send`] with the whole `Authorization` header given.
pub async fn send_authorized(
    app: &axum::Router,
    method: &str,
    uri: &str,
    authorization: Option<&str>,
    body: Option<impl Into<Vec<u8>>>,
) -> (StatusCode, String, String) {
    let (status, headers, text) = send_full(app, method, uri, authorization, body).await;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type, text)
}

/// [`send_authorized`], answering every header.
pub async fn send_full(
    app: &axum::Router,
    method: &str,
    uri: &str,
    authorization: Option<&str>,
    body: Option<impl Into<Vec<u8>>>,
) -> (StatusCode, axum::http::HeaderMap, String) {
    let body = body.map(Into::into);
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(a) = authorization {
        req = req.header(header::AUTHORIZATION, a);
    }
    let req = req
        .header(header::CONTENT_TYPE, "application/json")
        .body(body.map_or_else(Body::empty, Body::from))
        .expect("request");
    let res = app.clone().oneshot(req).await.expect("infallible");
    let (status, headers) = (res.status(), res.headers().clone());
    let bytes = to_bytes(res.into_body(), 1 << 24).await.expect("body");
    (
        status,
        headers,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}
