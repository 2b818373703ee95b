//! The HTTP API through `router(state).oneshot(request)`: auth, limits, errors, and the wallet
//! story from the README (accounts, transfers, a blocked takeover, a dispute and its refund,
//! the CSV export) against the default pack and the real ledger.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use vigil_api::http::{AppState, Limits, router};
use vigil_engine::ledger::{Book, BookConfig, Command, Ledger, Party, Risk};
use vigil_engine::{Engine, EngineConfig, packs};
use vigil_rules::PackOptions;
use vigil_tests::root;

mod common;
use common::{ADMIN, ANA, PAY, tokens};

fn app() -> (axum::Router, Ledger) {
    let pack = packs::load(&root().join("rules/packs/default"), &PackOptions::default())
        .expect("default pack");
    let engine = Arc::new(Engine::new(pack, EngineConfig::default()));
    let ledger = Ledger::in_memory(BookConfig::default());
    let limits = Limits {
        body_bytes: 4096,
        ..Limits::default()
    };
    (
        router(AppState::new(engine, ledger.clone(), tokens(), limits)),
        ledger,
    )
}

struct Answer {
    status: StatusCode,
    content_type: String,
    text: String,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text))
    }
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: Option<&str>,
    body: Option<String>,
) -> Answer {
    let (status, content_type, text) = common::send(app, method, uri, token, body).await;
    Answer {
        status,
        content_type,
        text,
    }
}

async fn post(app: &axum::Router, uri: &str, token: &str, body: Value) -> Answer {
    call(app, "POST", uri, Some(token), Some(body.to_string())).await
}

async fn get(app: &axum::Router, uri: &str, token: &str) -> Answer {
    call(app, "GET", uri, Some(token), None).await
}

/// An error answer with this status and code.
fn assert_error(a: &Answer, status: StatusCode, code: &str) -> Value {
    assert_eq!(a.status, status, "{}", a.text);
    assert_eq!(a.content_type, "application/json", "{}", a.text);
    let v = a.json();
    assert_eq!(v["code"], code, "{}", a.text);
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "{}",
        a.text
    );
    v
}

/// Opens a EUR account, and checks it was made.
async fn open(app: &axum::Router, id: &str) {
    let a = post(
        app,
        "/v1/accounts",
        PAY,
        json!({"id": id, "currency": "EUR"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
}

/// How many entries of `kind` the audit log holds.
async fn audited(app: &axum::Router, kind: &str) -> usize {
    let audit = get(app, &format!("/v1/audit?kind={kind}"), ADMIN)
        .await
        .json();
    audit["entries"].as_array().map_or(0, Vec::len)
}

/// An error answer naming the request field at fault.
fn assert_field_error(a: &Answer, status: StatusCode, code: &str, field: &str) -> Value {
    let v = assert_error(a, status, code);
    assert_eq!(v["field"], field, "{v}");
    v
}

#[tokio::test]
async fn tokens_and_roles_are_checked() {
    let (app, _) = app();
    let a = call(&app, "GET", "/v1/accounts/x", None, None).await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    let a = get(&app, "/v1/accounts/x", "not-a-token").await;
    assert_error(&a, StatusCode::UNAUTHORIZED, "unauthorized");
    // The scheme's case does not matter (RFC 9110); the token's does.
    for (authorization, status) in [
        (format!("bearer {PAY}"), StatusCode::NOT_FOUND),
        (format!("BEARER  {PAY} "), StatusCode::NOT_FOUND),
        (
            format!("Bearer {}", PAY.to_uppercase()),
            StatusCode::UNAUTHORIZED,
        ),
        (format!("Basic {PAY}"), StatusCode::UNAUTHORIZED),
        (PAY.to_string(), StatusCode::UNAUTHORIZED),
    ] {
        let (got, _, text) = common::send_authorized(
            &app,
            "GET",
            "/v1/accounts/x",
            Some(&authorization),
            None::<Vec<u8>>,
        )
        .await;
        assert_eq!(got, status, "{authorization}: {text}");
    }
    // An analyst cannot move money; the payment service cannot freeze.
    let a = post(&app, "/v1/transfers", ANA, json!({})).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    let a = post(&app, "/v1/accounts/x/freeze", PAY, json!({"reason": "r"})).await;
    assert_error(&a, StatusCode::FORBIDDEN, "forbidden");
    // Admin may do anything; health needs no token.
    let a = get(&app, "/v1/freezes", ADMIN).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(a.status, StatusCode::OK);
    let a = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(a.json()["status"], "ready");
}

#[tokio::test]
async fn until_the_state_is_in_place_the_routes_that_decide_or_move_money_say_not_ready() {
    let pack = packs::load(&root().join("rules/packs/default"), &PackOptions::default())
        .expect("default pack");
    let engine = Arc::new(Engine::new(pack, EngineConfig::default()));
    let ledger = Ledger::in_memory(BookConfig::default());
    let state = AppState::new(engine, ledger, tokens(), Limits::default());
    vigil_api::http::set_ready(&state, false);
    let app = router(state.clone());
    let a = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(a.status, StatusCode::SERVICE_UNAVAILABLE, "{}", a.text);
    assert_eq!(a.json()["pipeline"], "starting", "{}", a.text);
    let a = call(&app, "GET", "/healthz", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "live all the same");
    for (uri, body) in [
        ("/v1/authorize", json!({})),
        ("/v1/transfers", json!({})),
        ("/v1/events", json!({})),
        ("/v1/accounts", json!({"id": "a", "currency": "EUR"})),
        (
            "/v1/accounts/a/deposits",
            json!({"op_id": "d", "amount": "1"}),
        ),
    ] {
        let a = post(&app, uri, PAY, body).await;
        assert_error(&a, StatusCode::SERVICE_UNAVAILABLE, "not_ready");
    }
    // Reads are answered.
    let a = get(&app, "/v1/freezes", ANA).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    vigil_api::http::set_ready(&state, true);
    open(&app, "a").await;
    let a = call(&app, "GET", "/readyz", None, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_stable_codes() {
    let (app, _) = app();
    let a = call(
        &app,
        "POST",
        "/v1/accounts",
        Some(PAY),
        Some("{\"id\":".into()),
    )
    .await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_json");
    let a = post(
        &app,
        "/v1/accounts",
        PAY,
        json!({"id": "a", "currency": "EUR", "colour": 1}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "colour");
    let a = post(
        &app,
        "/v1/accounts",
        PAY,
        json!({"id": "a", "currency": "XYZ"}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "currency");
    // As on the event routes, with a hint for a code in lower case.
    for (uri, body) in [
        ("/v1/accounts", json!({"id": "a", "currency": "eur"})),
        (
            "/v1/transfers",
            json!({"tx_id": "t", "account_id": "a", "amount": "1", "currency": "eur"}),
        ),
    ] {
        let a = post(&app, uri, PAY, body).await;
        let v = assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "currency");
        assert_eq!(
            v["message"], "unknown currency 'eur' (codes are upper case: 'EUR')",
            "{v}"
        );
    }
    let big = json!({"id": "a", "currency": "EUR", "locale": "x".repeat(5000)});
    let a = post(&app, "/v1/accounts", PAY, big).await;
    assert_error(&a, StatusCode::PAYLOAD_TOO_LARGE, "body_too_large");
    open(&app, "a").await;
    let a = post(
        &app,
        "/v1/accounts/a/deposits",
        PAY,
        json!({"op_id": "d1", "amount": "1.001"}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "amount");
    let a = post(
        &app,
        "/v1/accounts/a/withdrawals",
        PAY,
        json!({"op_id": "w1", "amount": "5.00"}),
    )
    .await;
    assert_error(&a, StatusCode::UNPROCESSABLE_ENTITY, "insufficient_funds");
    let a = post(&app, "/v1/authorize", PAY, json!({"tx_id": "t", "account_id": "a", "amount": "-1", "currency": "EUR", "kind": "payment"})).await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "amount");
    let a = get(&app, "/v1/transfers/nope", PAY).await;
    assert_error(&a, StatusCode::NOT_FOUND, "unknown_transfer");
    let a = get(&app, "/v1/nothing", PAY).await;
    assert_error(&a, StatusCode::NOT_FOUND, "not_found");
    // An id that is not UTF-8 once percent-decoded gets JSON too, not axum's plain text.
    let a = get(&app, "/v1/accounts/%FF%FE", PAY).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_path");
    let a = call(&app, "DELETE", "/v1/accounts", Some(PAY), None).await;
    assert_error(&a, StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed");
    let a = get(&app, "/v1/accounts/a/transactions?limit=0", PAY).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
    let a = get(&app, "/v1/accounts/a/transactions?kind=salary", PAY).await;
    assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
    // A write the engine would refuse is refused before any money moves, not after.
    let long = "a".repeat(128);
    open(&app, &long).await;
    let a = post(
        &app,
        "/v1/accounts",
        PAY,
        json!({"id": "loc", "currency": "EUR", "locale": "x".repeat(17)}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "locale");
    let a = get(&app, "/v1/accounts/loc", PAY).await;
    assert_error(&a, StatusCode::NOT_FOUND, "unknown_account");
    let deposits = format!("/v1/accounts/{long}/deposits");
    let a = post(
        &app,
        &deposits,
        PAY,
        json!({"op_id": "o".repeat(118), "amount": "5.00"}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "op_id");
    let a = post(
        &app,
        &deposits,
        PAY,
        json!({"op_id": "o".repeat(117), "amount": "5.00"}),
    )
    .await;
    assert_eq!(a.json()["available"], "5.00", "{}", a.text);
    let a = post(
        &app,
        &format!("/v1/accounts/{long}/withdrawals"),
        PAY,
        json!({"op_id": "w".repeat(117), "amount": "1.00"}),
    )
    .await;
    assert_eq!(a.json()["available"], "4.00", "{}", a.text);
    // A field given twice is named, in a body and in an event, at the top and inside geo.
    for (uri, body, field) in [
        (
            "/v1/accounts",
            r#"{"id":"a","id":"b","currency":"EUR"}"#,
            "id",
        ),
        (
            "/v1/transfers",
            r#"{"tx_id":"t","account_id":"a","amount":"1","currency":"EUR","tx_id":"u"}"#,
            "tx_id",
        ),
        (
            "/v1/transfers",
            r#"{"tx_id":"t","account_id":"a","amount":"1","currency":"EUR","geo":{"lat":1,"lon":2,"lat":3}}"#,
            "geo.lat",
        ),
    ] {
        let a = call(&app, "POST", uri, Some(PAY), Some(body.into())).await;
        let v = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_field");
        assert_eq!(v["field"], field, "{body}: {v}");
    }
    // Free text is bounded and a freeze says why; freezing a frozen account changes nothing
    // and is audited once.
    for (body, why) in [
        (json!({"reason": ""}), "required"),
        (json!({"reason": "x".repeat(1001)}), "1001 bytes"),
        (json!({"reason": "a\u{0}b"}), "control character"),
    ] {
        let a = post(&app, "/v1/accounts/a/freeze", ADMIN, body).await;
        let v = assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "reason");
        assert!(
            v["message"].as_str().is_some_and(|m| m.contains(why)),
            "{v}"
        );
    }
    for _ in 0..2 {
        let a = post(
            &app,
            "/v1/accounts/a/freeze",
            ADMIN,
            json!({"reason": "card testing\nfrom one device"}),
        )
        .await;
        assert_eq!(a.json()["frozen"], true, "{}", a.text);
    }
    let a = get(&app, "/v1/audit?kind=freezes", ADMIN).await;
    let v = assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_query", "kind");
    assert!(
        v["message"]
            .as_str()
            .is_some_and(|m| m.contains("did you mean 'freeze'")),
        "{v}"
    );
    assert_eq!(audited(&app, "freeze").await, 1);
    let a = post(
        &app,
        "/v1/accounts/a/unfreeze",
        ADMIN,
        json!({"reason": "cleared"}),
    )
    .await;
    assert_eq!(a.json()["frozen"], false, "{}", a.text);
    let a = post(
        &app,
        "/v1/disputes",
        PAY,
        json!({"dispute_id": "d-long", "tx_id": "t", "reason": "y".repeat(1001)}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "reason");
    // A missing field is named, as a bad one is, here and inside an object.
    let a = post(&app, "/v1/accounts", PAY, json!({"currency": "EUR"})).await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "id");
    let mut t = tx("t-geo", "a", "b", "5.00", "d-1");
    t["geo"] = json!({"lat": 48.85});
    let a = post(&app, "/v1/authorize", PAY, t).await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "geo.lon");
    // A field no event has is refused with its name (a misspelt device_id would turn the
    // device rules off), on every event route, and nothing is decided or recorded.
    let mut t = tx("t-typo", "a", "b", "5.00", "d-1");
    let device = t.as_object_mut().and_then(|o| o.remove("device_id"));
    t["device"] = device.expect("tx has a device_id");
    t["kind"] = json!("transfer");
    for uri in ["/v1/authorize", "/v1/transfers"] {
        let a = post(&app, uri, PAY, t.clone()).await;
        let v = assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "device");
        assert!(
            v["message"]
                .as_str()
                .is_some_and(|m| m.contains("did you mean 'device_id'")),
            "{v}"
        );
    }
    let a = get(&app, "/v1/transfers/t-typo", PAY).await;
    assert_error(&a, StatusCode::NOT_FOUND, "unknown_transfer");
    let mut t = tx("t-alt", "a", "b", "5.00", "d-1");
    t["geo"]["alt"] = json!(30);
    let a = post(&app, "/v1/transfers", PAY, t).await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "geo.alt");
    let e =
        json!({"event_id": "e-x", "kind": "password_reset", "account_id": "a", "devise_id": "d"});
    let a = post(&app, "/v1/events", PAY, e).await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "devise_id");
    // Bytes that are not JSON are invalid_json on every route, the event routes too.
    for uri in [
        "/v1/accounts",
        "/v1/authorize",
        "/v1/events",
        "/v1/transfers",
    ] {
        // An array is refused even when it lists the fields in order.
        let fields = br#"["a2", "EUR"]"#;
        for body in [&b"{\"id\":"[..], b"[1]", fields, b"{\"id\":\"\xff\"}"] {
            let (status, content_type, text) =
                common::send(&app, "POST", uri, Some(PAY), Some(body.to_vec())).await;
            let a = Answer {
                status,
                content_type,
                text,
            };
            let v = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_json");
            assert!(v.get("field").is_none(), "{v}");
        }
    }
}

fn tx(id: &str, from: &str, to: &str, amount: &str, device: &str) -> Value {
    json!({"tx_id": id, "account_id": from, "counterparty_id": to, "amount": amount,
           "currency": "EUR", "device_id": device, "ip": "198.51.100.7",
           "geo": {"lat": 48.8566, "lon": 2.3522, "country": "FR"}})
}

async fn balance(app: &axum::Router, id: &str) -> (String, String, bool) {
    let v = get(app, &format!("/v1/accounts/{id}"), PAY).await.json();
    (
        v["available"].as_str().unwrap_or_default().to_string(),
        v["held"].as_str().unwrap_or_default().to_string(),
        v["frozen"].as_bool().unwrap_or_default(),
    )
}

#[tokio::test]
async fn a_transaction_authorized_then_settled_settles_as_it_was_authorized() {
    let (app, _) = app();
    open(&app, "ct").await;
    let a = post(
        &app,
        "/v1/accounts/ct/deposits",
        PAY,
        json!({"op_id": "dep-ct", "amount": "100.00"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let pay_of = |i: usize, amount: &str| {
        let from = if i <= 1 { "ct" } else { "other" };
        let shop = format!("shop-{i}");
        let mut t = tx(&format!("ct-{i}"), from, &shop, amount, "d-1");
        t["kind"] = json!("payment");
        t
    };
    let pay = |i: usize| pay_of(i, "1.00");
    for i in [0, 1] {
        let first = post(&app, "/v1/authorize", PAY, pay(i)).await;
        let action = &first.json()["decision"]["action"];
        assert_eq!(action, "allow", "{}", first.text);
    }
    // Four more tiny payments from the device to other merchants: `card.testing_device`
    // blocks the fifth, and would block the first too, decided again now.
    for i in 2..=5 {
        post(&app, "/v1/authorize", PAY, pay(i)).await;
    }
    let again = post(&app, "/v1/authorize", PAY, pay(1)).await;
    let v = again.json();
    assert_eq!(v["decision"]["duplicate"], true, "{v}");
    assert_eq!(v["decision"]["action"], "block", "{v}");
    assert_eq!(v["decision"]["first_action"], "allow", "{v}");
    assert_eq!(
        v["decline_code"],
        json!(null),
        "answered as authorized: {v}"
    );
    // The payment service settles what it was told it may: the first decision goes.
    let settled = post(&app, "/v1/transfers", PAY, pay(1)).await;
    assert_eq!(settled.status, StatusCode::CREATED, "{}", settled.text);
    let v = settled.json();
    assert_eq!(v["transfer"]["status"], "settled", "{v}");
    assert_eq!(v["transfer"]["risk"], "allow", "{v}");
    assert_eq!(
        balance(&app, "ct").await,
        ("99.00".into(), "0.00".into(), false)
    );
    // Another body under an authorized id is not what was authorized: decided as it is now.
    let other = post(&app, "/v1/transfers", PAY, pay_of(0, "2.00")).await;
    let v = other.json();
    assert_eq!(v["decision"]["duplicate"], true, "{v}");
    assert_eq!(v["decision"]["first_action"], json!(null), "{v}");
    assert_eq!(v["transfer"]["status"], "declined", "{v}");
    assert_eq!(v["decline_code"], "risk_blocked", "{v}");
    assert_eq!(balance(&app, "ct").await.0, "99.00");
}

#[tokio::test]
async fn a_tx_id_shaped_like_a_movements_engine_id_is_a_transaction_of_its_own() {
    let (app, _) = app();
    open(&app, "mv").await;
    for (route, op) in [("deposits", "d1"), ("withdrawals", "w1")] {
        let a = post(
            &app,
            &format!("/v1/accounts/mv/{route}"),
            PAY,
            json!({"op_id": op, "amount": "10.00"}),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    // The engine saw the movements under ids of its own: a client's transaction named as they
    // once were is new, decided and counted, not a repeat.
    for id in ["top_up:d1", "withdrawal:w1"] {
        let mut t = tx(id, "mv", "shop-1", "1.00", "d-1");
        t["kind"] = json!("payment");
        let a = post(&app, "/v1/authorize", PAY, t).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["decision"]["duplicate"], json!(null), "{}", a.text);
    }
}

#[tokio::test]
async fn a_retry_stays_the_same_request_after_its_merchant_opens_a_ledger_account() {
    let (app, _) = app();
    for id in ["ya", "bob", "carol"] {
        open(&app, id).await;
    }
    let a = post(
        &app,
        "/v1/accounts/ya/deposits",
        PAY,
        json!({"op_id": "dep-ya", "amount": "100.00"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    // The ledger's clock is in milliseconds: the accounts above are older than the payments.
    std::thread::sleep(std::time::Duration::from_millis(3));
    let mut pay = tx("yp1", "ya", "shop-zz", "5.00", "d-1");
    pay["kind"] = json!("payment");
    let first = post(&app, "/v1/transfers", PAY, pay.clone()).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    // The merchant opens an account in the wallet; the payment service retries.
    open(&app, "shop-zz").await;
    let again = post(&app, "/v1/transfers", PAY, pay).await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text);
    assert_eq!(again.json()["replayed"], true);
    assert_eq!(again.json()["transfer"], first.json()["transfer"]);
    assert_eq!(balance(&app, "ya").await.0, "95.00");
    assert_eq!(balance(&app, "shop-zz").await.0, "0.00");
    // The same id for a payment to an account that was open then is another request, as is
    // a payment to one account sent again to another.
    let payment = |id: &str, to: &str| {
        let mut v = tx(id, "ya", to, "5.00", "d-1");
        v["kind"] = json!("payment");
        v
    };
    let a = post(&app, "/v1/transfers", PAY, payment("yp1", "bob")).await;
    assert_error(&a, StatusCode::CONFLICT, "idempotency_conflict");
    let first = post(&app, "/v1/transfers", PAY, payment("yp2", "bob")).await;
    assert_eq!(first.status, StatusCode::CREATED, "{}", first.text);
    let a = post(&app, "/v1/transfers", PAY, payment("yp2", "carol")).await;
    assert_error(&a, StatusCode::CONFLICT, "idempotency_conflict");
    assert_eq!(balance(&app, "ya").await.0, "90.00");
}

#[tokio::test]
async fn the_wallet_story() {
    let (app, ledger) = app();
    for (id, locale) in [("alice", "zh-CN"), ("bob", "en"), ("mallory", "en")] {
        let a = post(
            &app,
            "/v1/accounts",
            PAY,
            json!({"id": id, "currency": "EUR", "locale": locale}),
        )
        .await;
        assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    }
    let a = post(
        &app,
        "/v1/accounts/alice/deposits",
        PAY,
        json!({"op_id": "dep-1", "amount": "1000.00"}),
    )
    .await;
    assert_eq!(a.json()["available"], "1000.00");

    // An everyday transfer from her phone settles.
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-1", "alice", "bob", "25.00", "d-phone"),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let v = a.json();
    assert_eq!(v["decision"]["action"], "allow");
    assert_eq!(v["transfer"]["status"], "settled");
    // The retry returns the same transfer, and moves nothing again.
    let again = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-1", "alice", "bob", "25.00", "d-phone"),
    )
    .await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.json()["transfer"], v["transfer"]);
    assert_eq!(again.json()["replayed"], true);
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-1", "alice", "bob", "26.00", "d-phone"),
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "idempotency_conflict");
    assert_eq!(
        balance(&app, "alice").await,
        ("975.00".into(), "0.00".into(), false)
    );

    // Takeover: a password reset, then a new device pays a new payee a little, then most of it.
    let a = post(&app, "/v1/events", PAY, json!({"event_id": "e-1", "kind": "password_reset", "account_id": "alice", "device_id": "d-evil"})).await;
    assert_eq!(a.status, StatusCode::ACCEPTED, "{}", a.text);
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-2", "alice", "mallory", "60.00", "d-evil"),
    )
    .await;
    let v = a.json();
    assert_eq!(v["transfer"]["status"], "settled", "{v}");
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-3", "alice", "mallory", "900.00", "d-evil"),
    )
    .await;
    let v = a.json();
    assert_eq!(v["decision"]["action"], "block", "{v}");
    assert_eq!(v["decline_code"], "risk_blocked");
    assert_eq!(v["transfer"]["status"], "declined");
    assert!(
        v["transfer"]["rules"]
            .as_array()
            .is_some_and(|r| r.iter().any(|r| r == "ato.drain_after_credential_change")),
        "{v}"
    );
    assert_eq!(v["notification"]["kind"], "blocked_transfer");
    assert_eq!(v["notification"]["locale"], "zh");
    // Its retry answers the decision the ledger kept (the rules, not their values), and
    // notifies no one again.
    let again = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-3", "alice", "mallory", "900.00", "d-evil"),
    )
    .await
    .json();
    assert_eq!(again["replayed"], true, "{again}");
    assert_eq!(again["decline_code"], "risk_blocked", "{again}");
    let first = &v["decision"];
    let kept = &again["decision"];
    assert_eq!(kept["stored"], true, "{again}");
    assert_eq!(kept["action"], "block", "{again}");
    assert_eq!(kept["tx_id"], "t-3", "{again}");
    assert_eq!(kept["score"], first["score"], "{again}");
    let rules = |d: &Value, acting_only: bool| -> Vec<Value> {
        d["reasons"].as_array().map_or_else(Vec::new, |r| {
            r.iter()
                .filter(|r| !acting_only || r.get("shadow").is_none())
                .map(|r| r["rule"].clone())
                .collect()
        })
    };
    assert_eq!(rules(kept, false), rules(first, true), "{again}");
    assert!(again.get("notification").is_none(), "{again}");
    assert!(
        v["notification"]["text"]
            .as_str()
            .is_some_and(|t| t.contains("900.00")),
        "{v}"
    );
    // The rule froze her account in the ledger.
    assert_eq!(
        balance(&app, "alice").await,
        ("915.00".into(), "0.00".into(), true)
    );
    let f = get(&app, "/v1/freezes", ANA).await.json();
    assert_eq!(f["freezes"][0]["account_id"], "alice");
    assert_eq!(
        f["freezes"][0]["by"],
        "rule:ato.drain_after_credential_change"
    );

    // She disputes the 60 that got through; the analyst finds fraud: mallory still has it.
    let a = post(
        &app,
        "/v1/disputes",
        PAY,
        json!({"dispute_id": "dsp-1", "tx_id": "t-2", "reason": "not me"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let cases = get(&app, "/v1/cases", ANA).await.json();
    assert_eq!(cases["cases"].as_array().map(Vec::len), Some(1), "{cases}");
    let a = post(
        &app,
        "/v1/cases/dsp-1/resolve",
        ANA,
        json!({"verdict": "fraud", "note": "ATO"}),
    )
    .await;
    let v = a.json();
    assert_eq!(v["status"], "resolved", "{v}");
    assert_eq!(v["recovered"], "60.00");
    assert_eq!(v["resolved_by"], "ana");
    assert_eq!(
        balance(&app, "alice").await,
        ("975.00".into(), "0.00".into(), true)
    );
    assert_eq!(
        balance(&app, "mallory").await,
        ("0.00".into(), "0.00".into(), false)
    );
    assert_eq!(
        get(&app, "/v1/transfers/t-2", PAY).await.json()["label"],
        "fraud"
    );
    // The verdict is a label `vigil replay --labels` reads.
    let a = get(&app, "/v1/labels", ANA).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.content_type, "application/x-ndjson");
    let line: Value = serde_json::from_str(a.text.trim_end()).expect("one JSON line");
    assert_eq!(line["tx_id"], "t-2", "{line}");
    assert_eq!(line["is_fraud"], true, "{line}");
    assert_eq!(line["source"], "dispute", "{line}");
    assert_eq!(line["case_id"], "dsp-1", "{line}");
    assert_eq!(line["resolved_by"], "ana", "{line}");
    let labels = vigil_engine::replay::read_labels(a.text.as_bytes()).expect("labels parse");
    assert_eq!(labels.len(), 1);
    assert!(labels["t-2"].is_fraud);
    assert_eq!(
        get(&app, "/v1/labels", PAY).await.status,
        StatusCode::FORBIDDEN
    );
    // The analyst's retry gets the case as it stands and records no second verdict; a
    // second dispute of the same transfer is refused, so verdicts cannot contradict.
    let a = post(
        &app,
        "/v1/cases/dsp-1/resolve",
        ANA,
        json!({"verdict": "fraud", "note": "ATO"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    assert_eq!(a.json()["recovered"], "60.00", "{}", a.text);
    assert_eq!(audited(&app, "verdict").await, 1);
    let a = post(
        &app,
        "/v1/cases/dsp-1/resolve",
        ANA,
        json!({"verdict": "legit"}),
    )
    .await;
    assert_error(&a, StatusCode::CONFLICT, "case_closed");
    let a = post(
        &app,
        "/v1/disputes",
        PAY,
        json!({"dispute_id": "dsp-2", "tx_id": "t-2", "reason": "still not me"}),
    )
    .await;
    assert_field_error(&a, StatusCode::CONFLICT, "already_disputed", "tx_id");
    let a = post(
        &app,
        "/v1/disputes",
        PAY,
        json!({"dispute_id": "review-t-9", "tx_id": "t-2"}),
    )
    .await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_field", "dispute_id");
    let a = get(&app, "/v1/labels", ANA).await;
    assert_eq!(a.text.lines().count(), 1, "{}", a.text);
    // The analyst unfreezes her after the password is reset again.
    let a = post(
        &app,
        "/v1/accounts/alice/unfreeze",
        ANA,
        json!({"reason": "credentials reset with the holder"}),
    )
    .await;
    assert_eq!(a.json()["frozen"], false);
    // Another drain after the unfreeze is blocked and freezes her again: the engine heard of
    // the unfreeze and does not count her as frozen already.
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("t-4", "alice", "mallory", "900.00", "d-evil"),
    )
    .await;
    let v = a.json();
    assert_eq!(v["decision"]["action"], "block", "{v}");
    assert_eq!(
        balance(&app, "alice").await,
        ("975.00".into(), "0.00".into(), true)
    );

    // The CSV export: every movement on her account, in order.
    let a = get(&app, "/v1/accounts/alice/transactions.csv", PAY).await;
    assert_eq!(a.status, StatusCode::OK);
    assert!(a.content_type.starts_with("text/csv"));
    let rows: Vec<Vec<String>> = a
        .text
        .lines()
        .map(|l| l.split(',').map(str::to_string).collect())
        .collect();
    assert_eq!(
        rows[0].join(","),
        "seq,at,kind,ref,counterparty,amount,held_change,available_after,held_after,currency"
    );
    let got: Vec<String> = rows[1..]
        .iter()
        .map(|r| format!("{} {} {} {} {}", r[2], r[3], r[4], r[5], r[7]))
        .collect();
    assert_eq!(
        got,
        [
            "deposit dep-1 world 1000.00 1000.00",
            "transfer_out t-1 bob -25.00 975.00",
            "transfer_out t-2 mallory -60.00 915.00",
            "refund_in dsp-1:recovery mallory 60.00 975.00",
        ]
    );
    // The same through the paginated JSON, one entry a page.
    let mut cursor = String::new();
    let mut seen = Vec::new();
    loop {
        let v = get(
            &app,
            &format!("/v1/accounts/alice/transactions?limit=1&cursor={cursor}"),
            PAY,
        )
        .await
        .json();
        for e in v["entries"].as_array().into_iter().flatten() {
            seen.push(e["ref"].as_str().unwrap_or_default().to_string());
        }
        match v["next_cursor"].as_str() {
            Some(c) => cursor = c.to_string(),
            None => break,
        }
    }
    assert_eq!(seen, ["dep-1", "t-1", "t-2", "dsp-1:recovery"]);
    // The CSV takes the same cursor and limit, when given, and says where the rest starts.
    let csv = |query: &'static str| {
        let app = app.clone();
        async move {
            let uri = format!("/v1/accounts/alice/transactions.csv?{query}");
            let auth = format!("Bearer {PAY}");
            let (status, headers, text) =
                common::send_full(&app, "GET", &uri, Some(&auth), None::<Vec<u8>>).await;
            assert_eq!(status, StatusCode::OK, "{text}");
            let refs: Vec<String> = text
                .lines()
                .skip(1)
                .filter_map(|l| l.split(',').nth(3).map(str::to_string))
                .collect();
            let next = headers
                .get("x-next-cursor")
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            (refs, next)
        }
    };
    assert_eq!(
        csv("cursor=1&limit=2").await,
        (vec!["t-1".into(), "t-2".into()], Some("3".into()))
    );
    assert_eq!(csv("cursor=3").await, (vec!["dsp-1:recovery".into()], None));
    for (query, field) in [
        ("limit=0", "limit"),
        ("limit=ten", "limit"),
        ("colour=red", "colour"),
    ] {
        for route in ["transactions", "transactions.csv"] {
            let a = get(&app, &format!("/v1/accounts/alice/{route}?{query}"), PAY).await;
            let v = assert_error(&a, StatusCode::BAD_REQUEST, "invalid_query");
            assert_eq!(v["field"], field, "{route}?{query}: {v}");
        }
    }
    let v = get(&app, "/v1/accounts/alice/transactions?kind=refund_in", PAY)
        .await
        .json();
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(1));
    assert!(ledger.read(Book::check).is_empty());
}

#[tokio::test]
async fn the_csv_export_keeps_client_ids_from_running_as_spreadsheet_formulas() {
    let (app, _ledger) = app();
    for id in ["carol", "@mule"] {
        open(&app, id).await;
    }
    let a = post(
        &app,
        "/v1/accounts/carol/deposits",
        PAY,
        json!({"op_id": "=1+2", "amount": "100.00"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("+cmd", "carol", "@mule", "10.00", "d-1"),
    )
    .await;
    assert_eq!(a.json()["transfer"]["status"], "settled", "{}", a.text);
    let a = get(&app, "/v1/accounts/carol/transactions.csv", PAY).await;
    let rows: Vec<String> = a
        .text
        .lines()
        .skip(1)
        .map(|l| {
            let r: Vec<&str> = l.split(',').collect();
            format!("{} {} {} {}", r[2], r[3], r[4], r[5])
        })
        .collect();
    // Ids that begin like a formula are quoted as text; amounts stay numbers, minus and all.
    assert_eq!(
        rows,
        [
            "deposit '=1+2 world 100.00",
            "transfer_out '+cmd '@mule -10.00"
        ]
    );
    // The JSON history gives the ids as they are.
    let v = get(&app, "/v1/accounts/carol/transactions", PAY)
        .await
        .json();
    assert_eq!(v["entries"][1]["ref"], "+cmd", "{v}");
}

#[tokio::test]
async fn holds_step_up_review_and_refunds() {
    let (app, ledger) = app();
    for id in ["a", "b"] {
        open(&app, id).await;
    }
    post(
        &app,
        "/v1/accounts/a/deposits",
        PAY,
        json!({"op_id": "d", "amount": "500.00"}),
    )
    .await;
    // Confirming or cancelling needs a pending transfer.
    let a = post(
        &app,
        "/v1/transfers",
        PAY,
        tx("p-1", "a", "b", "100.00", "d1"),
    )
    .await;
    assert_eq!(a.json()["transfer"]["status"], "settled", "{}", a.text);
    let a = post(&app, "/v1/transfers/p-1/confirm", PAY, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "invalid_state");
    let a = post(&app, "/v1/transfers/p-1/cancel", PAY, json!({})).await;
    assert_error(&a, StatusCode::CONFLICT, "invalid_state");
    // Refunds: partial, then too much, then the rest.
    let a = post(
        &app,
        "/v1/transfers/p-1/refunds",
        PAY,
        json!({"refund_id": "r1", "amount": "30.00"}),
    )
    .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.text);
    assert_eq!(a.json()["refunded_total"], "30.00");
    let a = post(
        &app,
        "/v1/transfers/p-1/refunds",
        PAY,
        json!({"refund_id": "r2", "amount": "70.01"}),
    )
    .await;
    assert_error(
        &a,
        StatusCode::UNPROCESSABLE_ENTITY,
        "refund_exceeds_settled",
    );
    let a = post(
        &app,
        "/v1/transfers/p-1/refunds",
        PAY,
        json!({"refund_id": "r3"}),
    )
    .await;
    assert_eq!(a.json()["amount"], "70.00", "{}", a.text);
    let a = post(
        &app,
        "/v1/transfers/p-1/refunds",
        PAY,
        json!({"refund_id": "r3"}),
    )
    .await;
    assert_eq!(
        a.status,
        StatusCode::OK,
        "a repeated refund is the same refund: {}",
        a.text
    );
    assert_eq!(balance(&app, "a").await.0, "500.00");

    // A sanctioned country blocks; an authorize-only call moves nothing.
    let mut t = tx("p-2", "a", "b", "10.00", "d1");
    t["geo"]["country"] = json!("KP");
    t["kind"] = json!("transfer");
    let a = post(&app, "/v1/authorize", PAY, t).await;
    let v = a.json();
    assert_eq!(v["decision"]["action"], "block", "{v}");
    assert_eq!(v["decline_code"], "risk_blocked");
    assert!(v.get("transfer").is_none());
    assert_eq!(balance(&app, "a").await.0, "500.00");
    // Authorizing a transfer to a payee the ledger does not hold answers what settling
    // would: unknown_account.
    let mut t = tx("p-5", "a", "nobody", "10.00", "d1");
    t["kind"] = json!("transfer");
    let v = post(&app, "/v1/authorize", PAY, t.clone()).await.json();
    assert_eq!(v["decision"]["action"], "allow", "{v}");
    assert_eq!(v["decline_code"], "unknown_account", "{v}");
    t["tx_id"] = json!("p-6");
    let v = post(&app, "/v1/transfers", PAY, t).await.json();
    assert_eq!(v["decline_code"], "unknown_account", "{v}");

    // A review hold the holder cancels leaves the analysts' queue, closed with the reason; a
    // retried cancel answers the transfer as it stands.
    let held = vigil_engine::ledger::TransferCmd {
        tx_id: "p-3".into(),
        kind: vigil_engine::event::TxKind::Transfer,
        from: Party::Account("a".into()),
        to: Party::Account("b".into()),
        amount: 50_00,
        currency: "EUR".into(),
        risk: Risk::Review,
        rules: vec!["amount.large_new_payee".into()],
        score: 0,
    };
    ledger.execute(Command::Transfer(held)).expect("held");
    let open = get(&app, "/v1/cases", ANA).await.json();
    assert_eq!(open["cases"][0]["id"], "review-p-3", "{open}");
    assert_eq!(open["cases"][0]["status"], "open", "{open}");
    for _ in 0..2 {
        let a = post(&app, "/v1/transfers/p-3/cancel", PAY, json!({})).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.text);
        assert_eq!(a.json()["status"], "voided", "{}", a.text);
    }
    assert_eq!(
        balance(&app, "a").await,
        ("500.00".into(), "0.00".into(), false)
    );
    let open = get(&app, "/v1/cases", ANA).await.json();
    assert_eq!(open["cases"].as_array().map(Vec::len), Some(0), "{open}");
    let case = get(&app, "/v1/cases/review-p-3", ANA).await.json();
    assert_eq!(case["status"], "closed", "{case}");
    assert_eq!(case["closed_reason"], "cancelled", "{case}");
    let all = get(&app, "/v1/cases?status=all", ANA).await.json();
    assert_eq!(all["cases"].as_array().map(Vec::len), Some(1), "{all}");
    // Closed reviews are a queue of their own; a verdict labels one and moves nothing.
    let closed = get(&app, "/v1/cases?status=closed", ANA).await.json();
    assert_eq!(closed["cases"][0]["id"], "review-p-3", "{closed}");
    let resolve = |note: &'static str, token: &'static str| {
        let app = app.clone();
        async move {
            post(
                &app,
                "/v1/cases/review-p-3/resolve",
                token,
                json!({"verdict": "fraud", "note": note}),
            )
            .await
        }
    };
    let a = resolve("holder cancelled a takeover", ANA).await;
    assert_eq!(a.json()["status"], "resolved", "{}", a.text);
    assert_eq!(balance(&app, "a").await.0, "500.00");
    let resolved = get(&app, "/v1/cases?status=resolved", ANA).await.json();
    assert_eq!(resolved["cases"][0]["id"], "review-p-3", "{resolved}");
    // The same analyst's retry is answered; another analyst's verdict is not a retry.
    let a = resolve("holder cancelled a takeover", ANA).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.text);
    let a = resolve("second look", ANA).await;
    assert_error(&a, StatusCode::CONFLICT, "case_closed");
    let a = resolve("holder cancelled a takeover", ADMIN).await;
    assert_error(&a, StatusCode::CONFLICT, "case_closed");
    let a = get(&app, "/v1/cases?status=later", ANA).await;
    assert_field_error(&a, StatusCode::BAD_REQUEST, "invalid_query", "status");
    assert!(ledger.read(Book::check).is_empty());
}

#[tokio::test]
async fn openapi_documents_every_route_with_its_roles() {
    let (app, _) = app();
    let a = call(&app, "GET", "/openapi.json", None, None).await;
    let doc = a.json();
    assert_eq!(doc["openapi"], "3.1.0");
    let paths = doc["paths"].as_object().expect("paths");
    for (path, method) in [
        ("/v1/authorize", "post"),
        ("/v1/transfers/{tx_id}/refunds", "post"),
        ("/v1/accounts/{id}/transactions.csv", "get"),
        ("/v1/cases/{id}/resolve", "post"),
    ] {
        let op = &paths[path][method];
        assert!(op.is_object(), "{path} {method} missing");
        assert!(op["responses"]["401"].is_object(), "{path}");
        assert!(
            op["x-roles"]
                .as_array()
                .is_some_and(|r| r.iter().any(|r| r == "admin"))
        );
    }
    assert_eq!(
        paths["/v1/freezes"]["get"]["x-roles"],
        json!(["analyst", "admin"])
    );
    // The event schemas list exactly the fields an event may hold: unknown ones are refused.
    for schema in ["TransactionEvent", "AccountEvent"] {
        let props = &doc["components"]["schemas"][schema]["properties"];
        let mut listed: Vec<&str> = props
            .as_object()
            .map(|p| p.keys().map(String::as_str).collect())
            .unwrap_or_default();
        listed.sort_unstable();
        let mut fields = vigil_engine::event::FIELDS.to_vec();
        fields.sort_unstable();
        assert_eq!(listed, fields, "{schema}");
        assert_eq!(
            doc["components"]["schemas"][schema]["additionalProperties"],
            false
        );
    }
    // Every $ref resolves.
    let text = a.text;
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    for r in text.split("#/components/schemas/").skip(1) {
        let name: String = r.chars().take_while(|c| c.is_alphanumeric()).collect();
        assert!(schemas.contains_key(&name), "unresolved $ref {name}");
    }
}
