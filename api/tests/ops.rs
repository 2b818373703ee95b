//! For operators and analysts, through `router(state).oneshot(request)`: `/metrics`, the rule
//! reload (a bad pack refused with `file:line:col` and the running pack kept, a good one swapped
//! and carried by every decision), the audit log and verdict metrics.

use std::sync::Arc;

use axum::http::StatusCode;
use serde_json::{Value, json};
use vigil_api::http::{AppState, Limits, router};
use vigil_engine::ledger::{BookConfig, Ledger};
use vigil_engine::packs::{self, Reloader};
use vigil_engine::{Engine, EngineConfig};
use vigil_rules::PackOptions;
use vigil_tests::{TempDir, copy_dir, root};

mod common;
use common::{ANA, PAY, tokens};

/// A server over a copy of the default pack that the test may edit (in the [`TempDir`]: keep
/// it bound while the server runs, dropping it removes the pack).
fn app(name: &str) -> (axum::Router, TempDir, Arc<Reloader>) {
    let (state, dir, reloader) = app_state(name);
    (router(state), dir, reloader)
}

/// [`app`]'s state, before it becomes a router.
fn app_state(name: &str) -> (AppState, TempDir, Arc<Reloader>) {
    let dir = TempDir::new(&format!("ops-{name}"));
    copy_dir(&root().join("rules/packs/default"), &dir);
    let pack = packs::load(&dir, &PackOptions::default()).expect("pack");
    let engine = Arc::new(Engine::new(pack, EngineConfig::default()));
    let reloader = Arc::new(Reloader::new(&dir, PackOptions::default()));
    let state = AppState::new(
        engine,
        Ledger::in_memory(BookConfig::default()),
        tokens(),
        Limits::default(),
    )
    .with_reloader(reloader.clone());
    (state, dir, reloader)
}

async fn call(
    app: &axum::Router,
    method: &str,
    uri: &str,
    token: &str,
    body: Value,
) -> (StatusCode, String) {
    let token = (!token.is_empty()).then_some(token);
    let body = (!body.is_null()).then(|| body.to_string());
    let (status, _, text) = common::send(app, method, uri, token, body).await;
    (status, text)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// The value of one sample line of the Prometheus text, e.g. `vigil_x{a="b"}`.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn tx(id: &str, amount: &str) -> Value {
    json!({"tx_id": id, "kind": "payment", "account_id": "acc-1",
           "counterparty_id": "m-1", "amount": amount, "currency": "EUR"})
}

#[tokio::test]
async fn metrics_count_http_decisions_and_name_no_account() {
    let (app, _dir, _) = app("metrics");
    for i in 0..3 {
        let (st, text) = call(
            &app,
            "POST",
            "/v1/authorize",
            PAY,
            tx(&format!("t-{i}"), "12.00"),
        )
        .await;
        assert_eq!(st, StatusCode::OK, "{text}");
    }
    let (st, _) = call(&app, "POST", "/v1/authorize", PAY, json!({"tx_id": 1})).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    // Refusals are answers too: a wrong token, a role that may not, a wrong method.
    let (st, _) = call(
        &app,
        "POST",
        "/v1/authorize",
        "not-a-token",
        tx("t-x", "1.00"),
    )
    .await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    let (st, _) = call(&app, "POST", "/v1/authorize", ANA, tx("t-y", "1.00")).await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    let (st, _) = call(&app, "GET", "/v1/authorize", PAY, Value::Null).await;
    assert_eq!(st, StatusCode::METHOD_NOT_ALLOWED);
    let (st, m) = call(&app, "GET", "/metrics", "", Value::Null).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(
        sample(&m, r#"vigil_decisions_total{action="allow",entry="http"}"#),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "vigil_decision_duration_seconds_count"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"vigil_http_requests_total{class="2xx",route="/v1/authorize"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"vigil_http_requests_total{class="4xx",route="/v1/authorize"}"#
        ),
        Some(4.0),
        "{m}"
    );
    assert_eq!(sample(&m, "vigil_rules_active_rules"), Some(16.0), "{m}");
    assert!(m.contains("vigil_rules_pack_info{hash=\""), "{m}");
    assert_eq!(
        sample(&m, r#"vigil_state_keys{store="account"}"#),
        Some(1.0)
    );
    // Labels come from fixed sets: no account or transaction id anywhere.
    assert!(!m.contains("acc-1") && !m.contains("t-1"), "{m}");
    for line in m.lines().filter(|l| !l.starts_with('#')) {
        assert!(line.starts_with("vigil_"), "{line}");
    }
}

#[tokio::test]
async fn a_bad_pack_is_refused_with_its_position_and_a_good_one_is_swapped_in() {
    let (app, dir, reloader) = app("reload");
    let (_, before) = call(&app, "GET", "/v1/rules", ANA, Value::Null).await;
    let old_hash = parse(&before)["hash"].as_str().expect("hash").to_string();
    // The payment service may not reload rules.
    let (st, _) = call(&app, "POST", "/v1/rules/reload", PAY, Value::Null).await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // An unknown function in a rule: refused with file:line:col, the old pack keeps deciding.
    let geo = dir.join("geo.toml");
    let good = std::fs::read_to_string(&geo).expect("geo.toml");
    let bad = good.replacen("when = \"", "when = \"no_such_fn(1) > 0 and ", 1);
    assert_ne!(bad, good);
    std::fs::write(&geo, &bad).expect("write");
    assert!(reloader.changed(), "the watcher sees the edit");
    let (st, text) = call(&app, "POST", "/v1/rules/reload", ANA, Value::Null).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    let v = parse(&text);
    assert_eq!(v["code"], "rules_invalid");
    assert_eq!(v["running"], old_hash.as_str());
    let first = v["errors"][0].as_str().expect("an error line");
    let want = format!("{}:", geo.display());
    assert!(first.starts_with(&want), "{first}");
    let pos: Vec<&str> = first[want.len()..].splitn(3, ':').collect();
    assert!(
        pos[0].parse::<u32>().is_ok() && pos[1].parse::<u32>().is_ok(),
        "{first}"
    );
    assert!(first.contains("no_such_fn"), "{first}");
    let (_, d) = call(&app, "POST", "/v1/authorize", PAY, tx("t-old", "10.00")).await;
    assert_eq!(parse(&d)["decision"]["rules_version"], old_hash.as_str());

    // A rule edit whose own tests fail is refused too.
    let card = dir.join("card_testing.toml");
    let card_good = std::fs::read_to_string(&card).expect("card_testing.toml");
    std::fs::write(&geo, &good).expect("restore geo");
    let loose = card_good.replacen(
        "count(tx by account over 10m) >= 5 ",
        "count(tx by account over 10m) >= 50 ",
        1,
    );
    assert_ne!(loose, card_good);
    std::fs::write(&card, &loose).expect("write");
    let (st, text) = call(&app, "POST", "/v1/rules/reload", ANA, Value::Null).await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        parse(&text)["errors"][0]
            .as_str()
            .is_some_and(|e| e.contains("fails")),
        "{text}"
    );

    // A valid change: swapped between two requests, and the next decision carries its hash.
    std::fs::write(&card, &card_good).expect("restore card");
    let (st, text) = call(&app, "POST", "/v1/rules/reload", ANA, Value::Null).await;
    assert_eq!(st, StatusCode::OK, "{text}");
    assert_eq!(parse(&text)["result"], "unchanged");
    std::fs::write(dir.join("extra.toml"), "[[rule]]\nid = \"amount.huge_shadow\"\ndescription = \"shadow: very large payments\"\nwhen = \"amount > 5000\"\nmode = \"shadow\"\naction = \"block\"\n").expect("write");
    let (st, text) = call(&app, "POST", "/v1/rules/reload", ANA, Value::Null).await;
    assert_eq!(st, StatusCode::OK, "{text}");
    let v = parse(&text);
    assert_eq!(v["result"], "swapped");
    assert_eq!(v["from"], old_hash.as_str());
    let new_hash = v["hash"].as_str().expect("hash").to_string();
    assert_ne!(new_hash, old_hash);
    let (_, d) = call(&app, "POST", "/v1/authorize", PAY, tx("t-new", "6000.00")).await;
    let d = parse(&d);
    assert_eq!(d["decision"]["rules_version"], new_hash.as_str());
    // The shadow rule (action block) shows in the decision and changes nothing.
    assert_ne!(d["decision"]["action"], "block", "{d}");
    let reasons = d["decision"]["reasons"]
        .as_array()
        .expect("reasons")
        .clone();
    assert!(
        reasons
            .iter()
            .any(|r| r["rule"] == "amount.huge_shadow" && r["shadow"] == true),
        "{d}"
    );

    let (_, m) = call(&app, "GET", "/metrics", "", Value::Null).await;
    assert_eq!(
        sample(&m, r#"vigil_rules_reloads_total{result="failed"}"#),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, r#"vigil_rules_reloads_total{result="ok"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &m,
            r#"vigil_rule_hits_total{mode="shadow",rule="amount.huge_shadow"}"#
        ),
        Some(1.0),
        "{m}"
    );
    assert!(
        m.contains(&format!("vigil_rules_pack_info{{hash=\"{new_hash}\"")),
        "{m}"
    );

    // Who did it, in the audit log, newest first.
    let (_, a) = call(&app, "GET", "/v1/audit?kind=reload", ANA, Value::Null).await;
    let entries = parse(&a)["entries"].as_array().expect("entries").clone();
    let results: Vec<&str> = entries
        .iter()
        .map(|e| e["result"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(results, ["swapped", "rejected", "rejected"], "{a}");
    assert!(entries.iter().all(|e| e["who"] == "ana"));
}

/// A transaction from a sanctioned country: `geo.sanctioned_country` blocks it.
fn sanctioned(id: &str, account: &str) -> Value {
    json!({"tx_id": id, "kind": "payment", "account_id": account, "counterparty_id": "m-1",
           "amount": "12.00", "currency": "EUR",
           "geo": {"lat": 23.1, "lon": -82.4, "country": "CU"}})
}

async fn action(app: &axum::Router, tx: Value) -> Value {
    let (status, text) = call(app, "POST", "/v1/authorize", PAY, tx).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    parse(&text)["decision"].clone()
}

#[tokio::test]
async fn a_snoozed_rule_stays_quiet_for_one_account_until_it_ends() {
    let (state, dir, _) = app_state("snooze");
    let file = dir.join("snoozes.json");
    let now = vigil_engine::ledger::now_ms();
    assert_eq!(
        state.0.snoozes.open_file(&file, &state.0.engine, now),
        Ok(0)
    );
    let app = router(state.clone());
    let rule = "geo.sanctioned_country";
    let d = action(&app, sanctioned("t-1", "acc-1")).await;
    assert_eq!(d["action"], "block", "{d}");

    // Bad requests change nothing.
    for (body, status, code, field) in [
        (
            json!({"account_id": "acc-1", "rule": "geo.sanctioned", "for": "7d", "reason": "x"}),
            StatusCode::UNPROCESSABLE_ENTITY,
            "unknown_rule",
            Some("rule"),
        ),
        (
            json!({"account_id": "acc-1", "rule": rule, "for": "forever", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("for"),
        ),
        (
            json!({"account_id": "acc-1", "rule": rule, "for": "91d", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("for"),
        ),
        (
            json!({"account_id": "acc-1", "rule": rule, "until": "2020-01-01T00:00:00Z", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("until"),
        ),
        (
            json!({"account_id": "acc-1", "rule": rule, "for": "7d", "until": "2099-01-01T00:00:00Z", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_body",
            None,
        ),
        (
            json!({"account_id": "acc-1", "rule": rule, "for": "7d", "reason": " "}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("reason"),
        ),
        (
            json!({"account_id": "", "rule": rule, "for": "7d", "reason": "x"}),
            StatusCode::BAD_REQUEST,
            "invalid_field",
            Some("account_id"),
        ),
    ] {
        let (got, text) = call(&app, "POST", "/v1/snoozes", ANA, body.clone()).await;
        assert_eq!(got, status, "{body} -> {text}");
        let e = parse(&text);
        assert_eq!(e["code"], code, "{body} -> {text}");
        assert_eq!(e["field"].as_str(), field, "{body} -> {text}");
    }
    let (status, _) = call(
        &app,
        "POST",
        "/v1/snoozes",
        PAY,
        json!({"account_id": "acc-1", "rule": rule, "for": "7d", "reason": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(state.0.snoozes.is_empty());

    let snooze = json!({"account_id": "acc-1", "rule": rule, "for": "7d",
                        "reason": "lives in Havana; verified with the holder"});
    let (status, text) = call(&app, "POST", "/v1/snoozes", ANA, snooze.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let created = parse(&text);
    assert_eq!(created["rule"], rule);
    assert_eq!(created["created_by"], "ana");
    let id = created["id"].as_str().expect("id").to_string();
    // A retry (or a second analyst) replaces it rather than adding another for the pair.
    let (status, text) = call(&app, "POST", "/v1/snoozes", ANA, snooze).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    assert_eq!(parse(&text)["id"], id.as_str(), "{text}");
    assert_eq!(state.0.snoozes.len(), 1);

    // Muted for acc-1 only, and said so in the decision.
    let d = action(&app, sanctioned("t-2", "acc-1")).await;
    assert_eq!(d["action"], "allow", "{d}");
    assert_eq!(d["snoozed"], json!([rule]), "{d}");
    assert!(d["reasons"].as_array().is_some_and(Vec::is_empty), "{d}");
    let d = action(&app, sanctioned("t-3", "acc-2")).await;
    assert_eq!(d["action"], "block", "{d}");
    assert!(d.get("snoozed").is_none(), "{d}");

    let (_, text) = call(
        &app,
        "GET",
        "/v1/snoozes?account_id=acc-1",
        ANA,
        Value::Null,
    )
    .await;
    assert_eq!(parse(&text)["snoozes"][0]["id"], id.as_str());
    let (_, text) = call(
        &app,
        "GET",
        "/v1/snoozes?account_id=acc-2",
        ANA,
        Value::Null,
    )
    .await;
    assert_eq!(parse(&text)["snoozes"], json!([]));
    let (_, text) = call(&app, "GET", "/metrics", "", Value::Null).await;
    assert_eq!(sample(&text, "vigil_snoozes_active"), Some(1.0));

    // Kept across a restart.
    let again = vigil_api::http::snooze::Snoozes::default();
    assert_eq!(again.open_file(&file, &state.0.engine, now), Ok(1));
    assert_eq!(again.list(Some("acc-1"), now)[0].id, id);

    // Its time runs out: the rule blocks acc-1 again.
    let ended = vigil_api::http::expire_snoozes(&state.0, now + 8 * 86_400_000);
    assert_eq!(ended, 1);
    let d = action(&app, sanctioned("t-4", "acc-1")).await;
    assert_eq!(d["action"], "block", "{d}");
    let (_, text) = call(&app, "GET", "/metrics", "", Value::Null).await;
    assert_eq!(sample(&text, "vigil_snoozes_active"), Some(0.0));

    // Further than 90 days is refused; one ended by hand; an unknown one is a 404.
    let (status, text) = call(
        &app,
        "POST",
        "/v1/snoozes",
        ANA,
        json!({"account_id": "acc-2", "rule": rule, "until": "2099-01-01T00:00:00Z",
               "reason": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    let (status, text) = call(
        &app,
        "POST",
        "/v1/snoozes",
        ANA,
        json!({"account_id": "acc-2", "rule": rule, "for": "1h", "reason": "x"}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{text}");
    let id2 = parse(&text)["id"].as_str().expect("id").to_string();
    let (status, text) = call(
        &app,
        "DELETE",
        &format!("/v1/snoozes/{id2}"),
        ANA,
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let (status, text) = call(
        &app,
        "DELETE",
        &format!("/v1/snoozes/{id2}"),
        ANA,
        Value::Null,
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
    assert_eq!(parse(&text)["code"], "unknown_snooze");

    // Audited: who, what, when.
    let (_, text) = call(&app, "GET", "/v1/audit?kind=snooze", ANA, Value::Null).await;
    let entries = parse(&text)["entries"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let actions: Vec<&str> = entries
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        ["removed", "created", "expired", "replaced", "created"],
        "{text}"
    );
    assert_eq!(entries[2]["who"], "vigil");
    assert_eq!(entries[4]["who"], "ana");
    assert_eq!(entries[4]["snooze_id"], id.as_str());
    assert_eq!(entries[4]["account_id"], "acc-1");
    assert_eq!(entries[3]["snooze_id"], id.as_str());
}

#[tokio::test]
async fn a_dry_run_says_what_a_candidate_pack_would_change_on_recent_traffic() {
    let (state, dir, _) = app_state("dry-run");
    state.0.engine.keep_recent(1000);
    let app = router(state.clone());
    for i in 0..5 {
        let d = action(&app, sanctioned(&format!("s-{i}"), &format!("acc-{i}"))).await;
        assert_eq!(d["action"], "block", "{d}");
        let d = action(&app, tx(&format!("p-{i}"), "20.00")).await;
        assert_eq!(d["action"], "allow", "{d}");
    }
    let running = state.0.engine.active().pack.hash.clone();
    let geo = std::fs::read_to_string(dir.join("geo.toml")).expect("geo.toml");
    let from = "when = \"country in sanctioned_countries\"";
    assert!(geo.contains(from));
    let candidate = geo.replace(
        from,
        "when = \"country in sanctioned_countries and amount > 1000\"",
    );
    let (status, text) = call(
        &app,
        "POST",
        "/v1/rules/dry-run",
        ANA,
        json!({"files": {"geo.toml": candidate}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = parse(&text);
    assert_eq!(v["transactions"], 10, "{v}");
    assert_eq!(v["changed"], 5, "{v}");
    assert_eq!(v["running"]["hash"], running.as_str());
    assert_ne!(v["candidate"]["hash"], running.as_str());
    assert_eq!(v["running"]["decisions"]["block"], 5, "{v}");
    assert_eq!(v["candidate"]["decisions"]["allow"], 10, "{v}");
    assert_eq!(
        v["transitions"],
        json!([{"from": "block", "to": "allow", "count": 5, "amount": {"EUR": "60.00"}}])
    );
    let rule = v["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["id"] == "geo.sanctioned_country"))
        .unwrap_or_else(|| panic!("{v}"));
    assert_eq!(rule["running_hits"], 5);
    assert_eq!(rule["candidate_hits"], 0);
    assert_eq!(rule["changed_running_only"], 5);
    let changed = v["changed_decisions"].as_array().expect("changed");
    assert_eq!(changed.len(), 5);
    assert_eq!(changed[0]["tx_id"], "s-0");
    assert_eq!(changed[0]["old"]["action"], "block");
    assert_eq!(changed[0]["new"]["action"], "allow");
    assert!(v["from"].as_str().is_some() && v["to"].as_str().is_some());
    assert_eq!(v["running"].get("rule_errors"), None, "{v}");
    // A candidate rule that errors on every transaction says so.
    let (status, text) = call(
        &app,
        "POST",
        "/v1/rules/dry-run",
        ANA,
        json!({"files": {"broken.toml": "[[rule]]\nid = \"x.div\"\naction = \"review\"\nwhen = \"amount / (amount - amount) > 1\"\n"}}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = parse(&text);
    assert_eq!(v["candidate"]["rule_errors"], json!({"x.div": 10}), "{v}");
    // Nothing was swapped.
    assert_eq!(state.0.engine.active().pack.hash, running);

    // A candidate that does not compile, a bad file name, nothing to try, the wrong role.
    let (status, text) = call(
        &app,
        "POST",
        "/v1/rules/dry-run",
        ANA,
        json!({"files": {"geo.toml": geo.replace(from, "when = \"country in sanctioned\"")}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    let e = parse(&text);
    assert_eq!(e["code"], "rules_invalid");
    assert!(
        e["errors"][0]
            .as_str()
            .is_some_and(|m| m.starts_with("geo.toml:") && m.contains("sanctioned")),
        "{e}"
    );
    let (status, text) = call(
        &app,
        "POST",
        "/v1/rules/dry-run",
        ANA,
        json!({"files": {"../evil.toml": "x"}}),
    )
    .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
    assert!(
        parse(&text)["errors"][0]
            .as_str()
            .is_some_and(|m| m.contains("not a rule or list file name"))
    );
    // A file to leave out that the pack does not have (a typo), or one also given.
    for (body, says) in [
        (
            json!({"remove": ["gep.toml"]}),
            "gep.toml: not a file of the running pack",
        ),
        (
            json!({"files": {"geo.toml": geo.clone()}, "remove": ["geo.toml"]}),
            "geo.toml: both given in files and named in remove",
        ),
    ] {
        let (status, text) = call(&app, "POST", "/v1/rules/dry-run", ANA, body).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{text}");
        assert!(
            parse(&text)["errors"][0]
                .as_str()
                .is_some_and(|m| m.starts_with(says)),
            "{text}"
        );
    }
    let (status, text) = call(&app, "POST", "/v1/rules/dry-run", ANA, json!({})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{text}");
    assert_eq!(parse(&text)["code"], "invalid_body");
    let (status, _) = call(
        &app,
        "POST",
        "/v1/rules/dry-run",
        PAY,
        json!({"remove": ["geo.toml"]}),
    )
    .await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    // Leaving a file out: its rules are gone from the candidate.
    let (status, text) = call(
        &app,
        "POST",
        "/v1/rules/dry-run",
        ANA,
        json!({"remove": ["geo.toml"]}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let v = parse(&text);
    assert_eq!(v["changed"], 5, "{v}");
    assert!(
        v["rules"].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r["id"] == "geo.sanctioned_country" && r["removed"] == true)),
        "{v}"
    );
    assert_eq!(state.0.engine.active().pack.hash, running);
}
