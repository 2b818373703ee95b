//! Decisions made over HTTP reach the same output topics as the Kafka path's: the decision, a
//! freeze request when a freezing rule fired, and the notifications in the holder's language —
//! once per transaction, a retried request publishing nothing again.
//!
//! The broker is the in-process mock cluster, or with `VIGIL_TEST_BROKERS` an external one.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use serde_json::{Value, json};

use vigil_api::http::{AppState, Limits, router};
use vigil_engine::Engine;
use vigil_engine::ledger::{BookConfig, Ledger};
use vigil_engine::metrics::Metrics;
use vigil_engine::stream::publish::Publisher;
use vigil_tests::TempDir;
use vigil_tests::kafka::{Broker, broker, engine, read_all};

mod common;
use common::{PAY, tokens};

async fn post(app: &axum::Router, uri: &str, body: Value) -> (StatusCode, Value) {
    let (status, _, text) = common::send(app, "POST", uri, Some(PAY), Some(body.to_string())).await;
    (status, serde_json::from_str(&text).unwrap())
}

/// An app with an in-memory ledger that publishes to `b`'s topics.
fn publishing_app(b: &Broker) -> (axum::Router, Arc<Engine>, Arc<Publisher>, Arc<Metrics>) {
    publishing_app_on(b, Ledger::in_memory(BookConfig::default()))
}

/// The same with `ledger`.
fn publishing_app_on(
    b: &Broker,
    ledger: Ledger,
) -> (axum::Router, Arc<Engine>, Arc<Publisher>, Arc<Metrics>) {
    let engine = engine();
    let state = AppState::new(engine.clone(), ledger, tokens(), Limits::default());
    let publisher = Arc::new(Publisher::new(&b.cfg, Some(state.0.metrics.clone())).unwrap());
    let state = state.with_publisher(publisher.clone());
    let metrics = state.0.metrics.clone();
    (router(state), engine, publisher, metrics)
}

/// A payment of `amount` EUR from `account` to `to` at minute `minute` of a fixed day.
fn payment(id: &str, account: &str, to: &str, amount: &str, minute: u32) -> Value {
    json!({"tx_id": id, "kind": "payment", "account_id": account, "counterparty_id": to,
           "amount": amount, "currency": "EUR", "ts": format!("2026-11-23T10:{minute:02}:00Z"),
           "geo": {"lat": 52.52, "lon": 13.40, "country": "DE"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_decisions_go_to_the_output_topics_once_with_their_effects() {
    let b = broker(1);
    let (app, engine, publisher, metrics) = publishing_app(&b);

    // The card tester's account reads Chinese.
    let (status, body) = post(
        &app,
        "/v1/accounts",
        json!({"id": "acc-card", "currency": "EUR", "locale": "zh-CN"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let mut sent = vec![payment("t-ok", "acc-ok", "m-1", "42.00", 0)];
    // Five tiny payments to five shops in five minutes: the fifth trips card.testing_burst
    // (block, freeze, notify).
    for i in 0..5 {
        let (id, shop) = (format!("t-card-{i}"), format!("m-{i}"));
        sent.push(payment(&id, "acc-card", &shop, "1.00", i));
    }
    let mut answers = BTreeMap::new();
    for tx in &sent {
        let (status, body) = post(&app, "/v1/authorize", tx.clone()).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        answers.insert(tx["tx_id"].as_str().unwrap().to_string(), body);
    }
    let last = &answers["t-card-4"]["decision"];
    assert_eq!(last["action"], "block", "{last}");
    assert!(
        last["reasons"].to_string().contains("card.testing_burst"),
        "{last}"
    );
    // The payment service retries one request: the same answer, nothing published again.
    let (status, again) = post(&app, "/v1/authorize", sent[0].clone()).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(again["decision"]["duplicate"], true, "{again}");
    assert_eq!(
        again["decision"]["action"], answers["t-ok"]["decision"]["action"],
        "{again}"
    );
    publisher.flush(Duration::from_secs(30)).unwrap();

    // One decision per transaction, keyed by tx_id, the same JSON the caller got.
    let decisions = read_all(&b.cfg, &b.cfg.topics.decisions);
    let mut seen = BTreeMap::new();
    for r in &decisions {
        assert_eq!(
            r.headers.get("vigil-source").map(String::as_str),
            Some("http"),
            "{r:?}"
        );
        assert_eq!(
            r.headers.get("vigil-effect"),
            Some(&format!("decision:{}", r.key)),
            "{r:?}"
        );
        let v: Value = serde_json::from_str(&r.value).unwrap();
        assert!(seen.insert(r.key.clone(), v).is_none(), "{} twice", r.key);
    }
    assert_eq!(seen.len(), answers.len(), "{seen:?}");
    for (id, body) in &answers {
        assert_eq!(&seen[id], &body["decision"], "{id}");
    }

    // One freeze request, by the rule that asked for it, keyed by account.
    let freezes = read_all(&b.cfg, &b.cfg.topics.freezes);
    assert_eq!(freezes.len(), 1, "{freezes:?}");
    assert_eq!(freezes[0].key, "acc-card");
    let f: Value = serde_json::from_str(&freezes[0].value).unwrap();
    assert_eq!(f["tx_id"], "t-card-4");
    assert_eq!(f["rule"], "card.testing_burst");
    assert_eq!(f["ts"], "2026-11-23T10:04:00.000Z");

    // The block and the freeze told to the holder, in Chinese; the text the caller got is the
    // text published.
    let notes = read_all(&b.cfg, &b.cfg.topics.notifications);
    let mut kinds: Vec<(String, String, String)> = notes
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(&r.value).unwrap();
            assert_eq!(r.key, "acc-card");
            assert_eq!(v["locale"], "zh", "{v}");
            if v["kind"] == "blocked_transfer" {
                assert_eq!(v["text"], answers["t-card-4"]["notification"]["text"]);
            }
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            (s("kind"), s("tx_id"), s("locale"))
        })
        .collect();
    kinds.sort();
    let want = |k: &str| (k.to_string(), "t-card-4".to_string(), "zh".to_string());
    assert_eq!(kinds, [want("account_frozen"), want("blocked_transfer")]);

    // Counted as acknowledged, by kind.
    let text = metrics.render(&engine);
    for (kind, n) in [
        ("decision", answers.len()),
        ("freeze", 1),
        ("notification", 2),
    ] {
        let series = format!("vigil_http_published_total{{kind=\"{kind}\",result=\"acked\"}} {n}");
        assert!(
            text.lines().any(|l| l == series),
            "no `{series}` in\n{text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_settlements_go_to_the_settlements_topic_once() {
    let b = broker(1);
    let (app, engine, publisher, metrics) = publishing_app(&b);
    for id in ["alice", "bob"] {
        let (status, body) = post(&app, "/v1/accounts", json!({"id": id, "currency": "EUR"})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let (status, body) = post(
        &app,
        "/v1/accounts/alice/deposits",
        json!({"op_id": "dep-1", "amount": "100.00"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // A transfer that settles, retried; an authorization with settle=true that the ledger
    // declines (more than alice has).
    let transfer = json!({"tx_id": "t-1", "kind": "transfer", "account_id": "alice",
        "counterparty_id": "bob", "amount": "25.00", "currency": "EUR",
        "ts": "2026-11-23T10:00:00Z"});
    for _ in 0..2 {
        let (status, body) = post(&app, "/v1/transfers", transfer.clone()).await;
        assert!(status.is_success(), "{status} {body}");
        assert_eq!(body["transfer"]["status"], "settled", "{body}");
    }
    let (status, body) = post(
        &app,
        "/v1/authorize?settle=true",
        payment("t-2", "alice", "m-1", "500.00", 1),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["transfer"]["status"], "declined", "{body}");
    publisher.flush(Duration::from_secs(30)).unwrap();

    let records = read_all(&b.cfg, &b.cfg.topics.settlements);
    let got: BTreeMap<String, Value> = records
        .iter()
        .map(|r| {
            assert_eq!(
                r.headers.get("vigil-effect"),
                Some(&format!("settlement:{}", r.key)),
                "{r:?}"
            );
            assert_eq!(
                r.headers.get("vigil-source").map(String::as_str),
                Some("http")
            );
            (r.key.clone(), serde_json::from_str(&r.value).unwrap())
        })
        .collect();
    assert_eq!(
        records.len(),
        2,
        "one each, the retry publishing nothing: {records:?}"
    );
    assert_eq!(got["t-1"]["status"], "settled");
    assert_eq!(got["t-1"]["amount"], "25.00");
    assert_eq!(got["t-1"]["from"], "alice");
    assert_eq!(got["t-1"]["to"], "bob");
    assert_eq!(got["t-2"]["status"], "declined");
    assert_eq!(got["t-2"]["decline_code"], "insufficient_funds");
    let text = metrics.render(&engine);
    let series = "vigil_http_published_total{kind=\"settlement\",result=\"acked\"} 2";
    assert!(
        text.lines().any(|l| l == series),
        "no `{series}` in\n{text}"
    );
}

/// A caller that hangs up while the ledger makes its answer durable (axum then drops the
/// handler) loses no record: the transfer's decision and settlement still go out, once — its
/// retry gets the stored answer and publishes nothing again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_before_the_answer_loses_no_record() {
    let dir = TempDir::new("hangup");
    let (ledger, _) = Ledger::open(&dir.join("journal"), BookConfig::default()).unwrap();
    let b = broker(1);
    let (app, _, publisher, _) = publishing_app_on(&b, ledger);
    for id in ["alice", "bob"] {
        let (status, body) = post(&app, "/v1/accounts", json!({"id": id, "currency": "EUR"})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
    }
    let deposit = json!({"op_id": "dep-1", "amount": "100.00"});
    let (status, body) = post(&app, "/v1/accounts/alice/deposits", deposit).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    // Each request is polled once and dropped: the caller hangs up. One that was answered in
    // that first poll (the journal was quick) did not hang up; the next one is tried.
    let transfer = |i: u32| {
        json!({"tx_id": format!("t-{i}"), "kind": "transfer", "account_id": "alice",
            "counterparty_id": "bob", "amount": "1.00", "currency": "EUR",
            "ts": format!("2026-11-23T10:{i:02}:00Z")})
    };
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    let hung_up = (0..50)
        .find(|&i| {
            let body = Some(transfer(i).to_string());
            let mut req = Box::pin(common::send(&app, "POST", "/v1/transfers", Some(PAY), body));
            req.as_mut().poll(&mut cx).is_pending()
        })
        .expect("a request still waiting for the journal after its first poll");
    let tx_id = format!("t-{hung_up}");

    // Its records arrive (the wait for the journal goes on without the caller).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let of = |topic: &str| {
        read_all(&b.cfg, topic)
            .into_iter()
            .filter(|r| r.key == tx_id)
            .count()
    };
    loop {
        publisher.flush(Duration::from_secs(10)).unwrap();
        if of(&b.cfg.topics.decisions) == 1 && of(&b.cfg.topics.settlements) == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{tx_id}: records lost"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The caller's retry: the stored answer, nothing published again.
    let (status, body) = post(&app, "/v1/transfers", transfer(hung_up)).await;
    assert!(status.is_success(), "{status} {body}");
    assert_eq!(body["transfer"]["status"], "settled", "{body}");
    assert_eq!(body["replayed"], true, "{body}");
    publisher.flush(Duration::from_secs(10)).unwrap();
    assert_eq!(of(&b.cfg.topics.decisions), 1);
    assert_eq!(of(&b.cfg.topics.settlements), 1);
}
