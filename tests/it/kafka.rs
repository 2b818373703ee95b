//! The Kafka path against a real Kafka-protocol broker: librdkafka's mock cluster, in process
//! (or, with `VIGIL_TEST_BROKERS=host:port`, an external broker such as tansu).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use vigil_engine::stream::{Pipeline, Stats};
use vigil_tests::kafka::*;

#[test]
fn one_partition_decides_exactly_as_replay() {
    let b = broker(1);
    let input = sample();
    // Everything is on the topics before the pipeline starts: a backlog, read in fetch order,
    // where the account events run days ahead of the transactions. A small merge buffer, so
    // the backlog overflows it unless the side ahead is paused (on the embedded broker: see
    // `broker` for tansu).
    let mut cfg = b.cfg.clone();
    if exact_order() {
        cfg.align_max = 2_000;
        cfg.pause_at = 250;
    }
    let n = feed(&cfg, &input);
    let stats = run(engine(), &cfg, n);
    let got: BTreeMap<String, String> = read_all(&b.cfg, &b.cfg.topics.decisions)
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    let want = replay_decisions(&input);
    assert_eq!(got.len(), want.len());
    if !exact_order() {
        return;
    }
    // The side that ran ahead was paused, not decided around (tansu's short high watermark
    // makes the tail wait there, so this holds on the embedded broker).
    assert_eq!(
        Stats::get(&stats.unaligned),
        0,
        "decided unaligned ({} pauses)",
        Stats::get(&stats.paused)
    );
    assert_same_decisions(&got, &want);
}

#[test]
fn bad_messages_go_to_the_dead_letter_topic_and_the_pipeline_goes_on() {
    let b = broker(2);
    let mut cfg = b.cfg.clone();
    cfg.event_bytes_max = 2048;
    let input = sample();
    let good: Vec<u8> = lines(&input)[..200].join(&b'\n');
    let first_tx = lines(&input)
        .into_iter()
        .map(|l| String::from_utf8(l.to_vec()).unwrap())
        .find(|l| l.contains("\"tx_id\""))
        .unwrap();
    let (tx, acc) = (
        cfg.topics.transactions.clone(),
        cfg.topics.account_events.clone(),
    );
    let huge = first_tx.replacen(
        "\"tx_id\"",
        &format!("\"pad\":\"{}\",\"tx_id\"", "x".repeat(3000)),
        1,
    );
    let bad: Vec<(&str, &str, Vec<u8>, &str)> = vec![
        (&tx, "k-json", b"{\"schema\":1,\"tx_id\":".to_vec(), "invalid JSON"),
        (&tx, "k-array", b"[1,2]".to_vec(), "JSON object"),
        (&tx, "k-schema", first_tx.replace("\"schema\":1", "\"schema\":2").into_bytes(), "schema"),
        (&tx, "k-amount", first_tx.replacen("\"amount\":\"", "\"amount\":\"-", 1).into_bytes(), "amount"),
        (&tx, "k-kind", first_tx.replacen("\"kind\":\"", "\"kind\":\"teleport_", 1).into_bytes(), "kind"),
        (&tx, "k-huge", huge.clone().into_bytes(), "more than the limit of 2048"),
        (&acc, "k-acc", b"{\"schema\":1,\"event_id\":\"e-1\",\"ts\":\"2026-11-01T00:00:00Z\",\"kind\":\"seance\",\"account_id\":\"a-1\"}".to_vec(), "kind"),
        (&tx, "k-empty", Vec::new(), "JSON object"),
    ];
    let n_good = feed(&cfg, &good);
    produce_raw(
        &cfg,
        &bad.iter()
            .map(|(t, k, p, _)| (*t, *k, p.clone()))
            .collect::<Vec<_>>(),
    );
    let stats = run(engine(), &cfg, n_good + bad.len() as u64);
    assert_eq!(Stats::get(&stats.dead_lettered), bad.len() as u64);

    let dlq = read_all(&cfg, &cfg.topics.dlq);
    assert_eq!(dlq.len(), bad.len(), "{dlq:#?}");
    for (topic, key, payload, reason) in &bad {
        let r = dlq
            .iter()
            .find(|r| r.key == *key)
            .unwrap_or_else(|| panic!("{key} is not on the dead-letter topic"));
        let error = &r.headers["error"];
        assert!(
            error.contains(reason),
            "{key}: error '{error}' should mention '{reason}'"
        );
        assert_eq!(r.headers["source.topic"], *topic);
        assert_eq!(r.headers["source.bytes"], payload.len().to_string());
        assert!(r.headers["source.offset"].parse::<i64>().is_ok());
        assert!(r.headers["source.partition"].parse::<i32>().is_ok());
        let keep = &payload[..payload.len().min(2048)];
        assert_eq!(r.value.as_bytes(), keep, "{key}: the original bytes");
    }
    // Every good transaction was decided, around the bad ones.
    let txs = lines(&good)
        .iter()
        .filter(|l| l.windows(7).any(|w| w == b"\"tx_id\""))
        .count();
    assert_eq!(read_all(&cfg, &cfg.topics.decisions).len(), txs);
    assert_eq!(Stats::get(&stats.decided), txs as u64);
}

#[test]
fn transactions_are_not_held_back_by_an_account_events_topic_with_nothing_on_it() {
    let b = broker(2);
    let input = sample();
    let txs: Vec<u8> = lines(&input)
        .into_iter()
        .filter(|l| l.windows(7).any(|w| w == b"\"tx_id\""))
        .take(2000)
        .collect::<Vec<_>>()
        .join(&b'\n');
    let n = feed(&b.cfg, &txs);
    assert_eq!(n, 2000);
    // The account side's watermarks must tell the merge that it has nothing to wait for, or
    // each partition's transactions go out unaligned after ALIGN_WAIT_MAX.
    let stats = run_until_decided(&b.cfg, n);
    if exact_order() {
        assert_eq!(Stats::get(&stats.unaligned), 0);
    }
}

#[test]
fn after_a_restart_a_topic_with_nothing_new_holds_nothing_back() {
    let b = broker(2);
    let input = sample();
    let all = lines(&input);
    let (first, rest) = all.split_at(3000);
    let n = feed(&b.cfg, &first.join(&b'\n'));
    run(engine(), &b.cfg, n);
    // Only transactions since: the account-events partitions are read to their committed end,
    // where the restarted consumer starts and from which it will read nothing.
    let txs: Vec<&[u8]> = rest
        .iter()
        .copied()
        .filter(|l| l.windows(7).any(|w| w == b"\"tx_id\""))
        .take(1000)
        .collect();
    let m = feed(&b.cfg, &txs.join(&b'\n'));
    let stats = run_until_decided(&b.cfg, m);
    if exact_order() {
        assert_eq!(Stats::get(&stats.unaligned), 0);
    }
}

/// Runs a pipeline until it has decided `n` transactions, then stops it: running, not stopping
/// at a message count (which releases whatever waits in the merge).
fn run_until_decided(cfg: &vigil_engine::stream::StreamConfig, n: u64) -> Arc<Stats> {
    let p = Pipeline::new(engine(), cfg.clone());
    let (stats, stop) = (p.stats(), p.stop_handle());
    let t = std::thread::spawn(move || p.run());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Stats::get(&stats.decided) < n {
        assert!(
            Instant::now() < deadline,
            "{} of {n} decided",
            Stats::get(&stats.decided)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    t.join().unwrap().unwrap();
    assert_eq!(Stats::get(&stats.decided), n);
    stats
}

#[test]
fn a_transaction_sent_twice_is_decided_and_acted_on_once() {
    let b = broker(1);
    let input = sample();
    let part: Vec<u8> = lines(&input)[..3000].join(&b'\n');
    let n = feed(&b.cfg, &part);
    // A producer that retried every transaction, after all of them went through once.
    let again: Vec<(&str, String, Vec<u8>)> = lines(&part)
        .into_iter()
        .filter(|l| l.windows(7).any(|w| w == b"\"tx_id\""))
        .map(|l| {
            let v: serde_json::Value = serde_json::from_slice(l).unwrap();
            let key = v["account_id"].as_str().unwrap().to_string();
            (b.cfg.topics.transactions.as_str(), key, l.to_vec())
        })
        .collect();
    let records: Vec<(&str, &str, Vec<u8>)> = again
        .iter()
        .map(|(t, k, p)| (*t, k.as_str(), p.clone()))
        .collect();
    produce_raw(&b.cfg, &records);
    let stats = run(engine(), &b.cfg, n + again.len() as u64);

    assert_eq!(Stats::get(&stats.duplicates), again.len() as u64);
    assert_eq!(Stats::get(&stats.decided), again.len() as u64);
    let decisions = read_all(&b.cfg, &b.cfg.topics.decisions);
    let mut ids: Vec<&str> = decisions.iter().map(|r| r.key.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), decisions.len(), "a transaction decided twice");
    assert_eq!(decisions.len(), again.len());
    // The effects of one pass, not two.
    let (want_freezes, want_notes) = expected_effects(&part);
    assert!(!want_notes.is_empty());
    assert_eq!(
        read_all(&b.cfg, &b.cfg.topics.freezes).len(),
        want_freezes.len()
    );
    assert_eq!(
        read_all(&b.cfg, &b.cfg.topics.notifications).len(),
        want_notes.len()
    );
}

#[test]
fn freezes_and_notifications_once_per_account_in_the_holders_language() {
    let b = broker(1);
    let input = sample();
    let n = feed(&b.cfg, &input);
    let stats = run(engine(), &b.cfg, n);

    let (want_freezes, want_notes) = expected_effects(&input);
    assert!(!want_freezes.is_empty() && !want_notes.is_empty());
    let freezes = read_all(&b.cfg, &b.cfg.topics.freezes);
    let mut got: Vec<String> = Vec::new();
    for r in &freezes {
        let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
        assert_eq!(v["account_id"].as_str().unwrap(), r.key, "keyed by account");
        for field in [
            "tx_id",
            "rule",
            "reason",
            "ts",
            "requested_at",
            "rules_version",
        ] {
            assert!(
                v[field].as_str().is_some_and(|s| !s.is_empty()),
                "freeze request without {field}: {}",
                r.value
            );
        }
        got.push(v["tx_id"].as_str().unwrap().to_string());
    }
    got.sort();
    assert_same_or_unique(&got, &want_freezes, "freeze requests");
    assert_eq!(Stats::get(&stats.freezes), got.len() as u64);

    // Locales from account_opened events.
    let mut locale = HashMap::new();
    for l in lines(&input) {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        if v["kind"] == "account_opened"
            && let Some(loc) = v["locale"].as_str()
        {
            locale.insert(
                v["account_id"].as_str().unwrap().to_string(),
                loc.to_string(),
            );
        }
    }
    let notes = read_all(&b.cfg, &b.cfg.topics.notifications);
    let mut got: Vec<(String, String)> = Vec::new();
    let mut chinese = 0;
    for r in &notes {
        let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
        let acc = v["account_id"].as_str().unwrap();
        assert_eq!(acc, r.key);
        let text = v["text"].as_str().unwrap();
        let zh = locale.get(acc).is_some_and(|l| l.starts_with("zh"));
        assert_eq!(v["locale"], if zh { "zh" } else { "en" }, "{}", r.value);
        let has_han = text.chars().any(|c| ('\u{4e00}'..='\u{9fff}').contains(&c));
        assert_eq!(has_han, zh, "text in the holder's language: {}", r.value);
        chinese += usize::from(zh);
        got.push((
            v["kind"].as_str().unwrap().to_string(),
            v["tx_id"].as_str().unwrap().to_string(),
        ));
    }
    got.sort();
    assert_same_or_unique(&got, &want_notes, "notifications");
    assert!(chinese > 0, "the sample has holders with a Chinese locale");
    assert!(Stats::get(&stats.repeats_skipped) > 0);
}

#[test]
fn a_restart_resumes_from_committed_offsets() {
    let b = broker(2);
    let input = sample();
    let all = lines(&input);
    let (first, second) = all.split_at(all.len() / 2);
    let engine = engine();
    let n1 = feed(&b.cfg, &first.join(&b'\n'));
    run(engine.clone(), &b.cfg, n1);
    let n2 = feed(&b.cfg, &second.join(&b'\n'));
    // Were the first half read again, it would stop after n2 messages with some undecided.
    let s = run(engine.clone(), &b.cfg, n2);
    assert_eq!(Stats::get(&s.consumed), n2);
    let decisions = read_all(&b.cfg, &b.cfg.topics.decisions);
    let mut ids: Vec<&str> = decisions.iter().map(|r| r.key.as_str()).collect();
    ids.sort_unstable();
    let before = ids.len();
    ids.dedup();
    assert_eq!(before, ids.len(), "a transaction decided twice");
    assert_eq!(ids.len(), replay_decisions(&input).len());
}

#[test]
fn two_consumers_in_a_group_split_the_partitions_and_decide_each_event_once() {
    let b = broker(4);
    let mut cfg = b.cfg.clone();
    cfg.session_timeout = Duration::from_secs(6);
    let pipelines: Vec<Pipeline> = (0..2)
        .map(|_| Pipeline::new(engine(), cfg.clone()))
        .collect();
    let stats: Vec<Arc<Stats>> = pipelines.iter().map(Pipeline::stats).collect();
    let stops: Vec<Arc<AtomicBool>> = pipelines.iter().map(Pipeline::stop_handle).collect();
    let threads: Vec<_> = pipelines
        .into_iter()
        .map(|p| std::thread::spawn(move || p.run()))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    let assigned = |s: &Stats| Stats::get(&s.assigned);
    while !(assigned(&stats[0]) > 0 && assigned(&stats[1]) > 0) {
        assert!(
            Instant::now() < deadline,
            "the group never split the partitions"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(
        assigned(&stats[0]) + assigned(&stats[1]),
        8,
        "4 partitions of 2 topics"
    );
    let input = sample();
    let want = replay_decisions(&input).len() as u64;
    let n = feed(&cfg, &input);
    let consumed = || stats.iter().map(|s| Stats::get(&s.consumed)).sum::<u64>();
    let decided = || stats.iter().map(|s| Stats::get(&s.decided)).sum::<u64>();
    // Stop only once everything is decided: the last transactions can wait for their account
    // events after the last message is consumed, and the first pipeline to stop leaves the
    // group, so the other's partitions are revoked — and what waits there is left, uncommitted,
    // for a next owner this test does not have.
    while consumed() < n || decided() < want {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} handled, {} of {want} decided",
            consumed(),
            decided()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for s in &stops {
        s.store(true, Ordering::Relaxed);
    }
    for t in threads {
        t.join().unwrap().unwrap();
    }
    assert!(
        stats.iter().all(|s| Stats::get(&s.decided) > 0),
        "both decided some"
    );
    assert_eq!(consumed(), n);
    let decisions = read_all(&cfg, &cfg.topics.decisions);
    let mut ids: Vec<&str> = decisions.iter().map(|r| r.key.as_str()).collect();
    ids.sort_unstable();
    let total = ids.len();
    ids.dedup();
    assert_eq!(total, ids.len(), "a transaction decided twice");
    assert_eq!(ids.len() as u64, want);
}

#[test]
fn decided_transactions_settle_in_the_ledger_with_one_settlements_record_each() {
    use vigil_engine::ledger::{BookConfig, Command, Ledger, Status};

    let b = broker(2);
    let input = sample();
    // The ledger knows the sample's accounts, in the currency they pay in, each funded with
    // 300.00: enough for most, not for the drains (insufficient_funds).
    let ledger = Ledger::in_memory(BookConfig::default());
    let mut opened = HashMap::new();
    for l in lines(&input) {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        if let (Some(acc), Some(cur)) = (v["account_id"].as_str(), v["currency"].as_str())
            && !opened.contains_key(acc)
        {
            opened.insert(acc.to_string(), cur.to_string());
            ledger
                .execute(Command::Open {
                    account: acc.into(),
                    currency: cur.into(),
                    locale: None,
                })
                .unwrap();
            let exponent = vigil_engine::event::Currency::from_code(cur)
                .unwrap()
                .exponent;
            let minor = 300 * 10i64.pow(u32::from(exponent));
            ledger
                .execute(Command::Deposit {
                    op_id: format!("fund-{acc}"),
                    account: acc.into(),
                    amount: minor,
                })
                .unwrap();
        }
    }
    assert!(opened.len() > 100);
    let n = feed(&b.cfg, &input);
    let mut cfg = b.cfg.clone();
    cfg.max_messages = Some(n);
    cfg.idle_exit = Some(Duration::from_secs(30));
    let p = Pipeline::new(engine(), cfg).with_ledger(ledger.clone());
    let stats = p.stats();
    assert_eq!(p.run().unwrap().consumed, n);

    let decisions: HashMap<String, String> = read_all(&b.cfg, &b.cfg.topics.decisions)
        .into_iter()
        .map(|r| {
            let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
            (r.key, v["action"].as_str().unwrap().to_string())
        })
        .collect();
    let settlements = read_all(&b.cfg, &b.cfg.topics.settlements);
    let mut seen = HashMap::new();
    let mut by_status: BTreeMap<String, u64> = BTreeMap::new();
    for r in &settlements {
        assert_eq!(r.headers["vigil-effect"], format!("settlement:{}", r.key));
        let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
        assert_eq!(v["tx_id"].as_str().unwrap(), r.key, "keyed by tx_id");
        let status = v["status"].as_str().unwrap().to_string();
        let action = decisions
            .get(&r.key)
            .unwrap_or_else(|| panic!("a settlement without a decision: {}", r.value));
        let code = v["decline_code"].as_str();
        // A transfer that could not happen at all (a payee the ledger does not know) says so
        // before the risk decision does.
        match (action.as_str(), status.as_str()) {
            ("block", "declined") => assert!(
                matches!(code, Some("risk_blocked" | "unknown_account")),
                "{}",
                r.value
            ),
            ("allow", "settled") | ("review" | "step_up", "pending") => {
                assert_eq!(code, None, "{}", r.value);
            }
            (_, "declined") => assert!(
                matches!(
                    code,
                    Some("insufficient_funds" | "account_frozen" | "unknown_account")
                ),
                "{}",
                r.value
            ),
            other => panic!("decision and settlement disagree {other:?}: {}", r.value),
        }
        // The record says what the ledger holds.
        let t = ledger
            .read(|bk| bk.get_transfer(&r.key).cloned())
            .unwrap_or_else(|| panic!("{} is not in the ledger", r.key));
        let want = match t.status {
            Status::Settled => "settled",
            Status::Pending => "pending",
            Status::Declined => "declined",
            Status::Voided => "voided",
        };
        assert_eq!(status, want, "{}", r.value);
        let again = seen.insert(r.key.clone(), status.clone());
        assert!(again.is_none(), "two settlement records for {}", r.key);
        *by_status.entry(status).or_default() += 1;
        *by_status
            .entry(code.unwrap_or("-").to_string())
            .or_default() += 1;
    }
    // One record per decided transaction, however often a message was redelivered.
    assert_eq!(seen.len(), decisions.len());
    for want in [
        "settled",
        "pending",
        "declined",
        "risk_blocked",
        "insufficient_funds",
    ] {
        assert!(by_status.get(want).is_some_and(|n| *n > 0), "{by_status:?}");
    }
    let counted: u64 = stats.settlements.iter().map(Stats::get).sum();
    assert_eq!(counted, settlements.len() as u64);
    assert!(ledger.read(|bk| bk.check()).is_empty());
    // Every freeze request froze the account in the ledger, by the rule that asked.
    let freezes = read_all(&b.cfg, &b.cfg.topics.freezes);
    assert!(!freezes.is_empty());
    for r in freezes {
        let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
        let last = ledger.read(|bk| bk.freeze_history(&r.key).and_then(|h| h.last().cloned()));
        let last = last.unwrap_or_else(|| panic!("{} asked to be frozen", r.key));
        assert!(last.frozen, "{}", r.value);
        assert_eq!(last.by, format!("rule:{}", v["rule"].as_str().unwrap()));
        assert_eq!(last.tx_id.as_deref(), v["tx_id"].as_str());
    }
}

/// An in-memory ledger holding account `qa` with 100.00 EUR.
fn ledger_with_qa() -> vigil_engine::ledger::Ledger {
    use vigil_engine::ledger::{BookConfig, Command, Ledger};
    let ledger = Ledger::in_memory(BookConfig::default());
    ledger
        .execute(Command::Open {
            account: "qa".into(),
            currency: "EUR".into(),
            locale: None,
        })
        .unwrap();
    ledger
        .execute(Command::Deposit {
            op_id: "fund-qa".into(),
            account: "qa".into(),
            amount: 10_000,
        })
        .unwrap();
    ledger
}

#[test]
fn a_transaction_authorized_over_http_before_the_stream_brings_it_settles_once_as_authorized() {
    use vigil_engine::event::decode;
    use vigil_engine::ledger::Status;
    use vigil_rules::Action;

    let b = broker(1);
    let ledger = ledger_with_qa();
    // Tiny payments from one device: the fifth to a fifth merchant is blocked
    // (`card.testing_device`), and so would q1 be, decided again after them.
    let pay = |i: usize| {
        let from = if i == 1 { "qa" } else { "qz" };
        format!(
            r#"{{"schema":1,"tx_id":"q{i}","ts":"2026-11-02T10:00:00Z","kind":"payment","account_id":"{from}","counterparty_id":"shop-{i}","amount":"1.00","currency":"EUR","device_id":"d-q"}}"#
        )
    };
    let engine = engine();
    // The payment service asked first (`POST /v1/authorize`: a decision, no money moved).
    let asked = engine.apply(&decode(pay(1).as_bytes()).unwrap());
    assert!(asked.is_some_and(|d| d.action == Action::Allow));
    let input: String = [2, 3, 4, 5, 1].map(|i| pay(i) + "\n").concat();
    let n = feed(&b.cfg, input.as_bytes());
    let mut cfg = b.cfg.clone();
    cfg.max_messages = Some(n);
    cfg.idle_exit = Some(Duration::from_secs(30));
    let p = Pipeline::new(engine.clone(), cfg).with_ledger(ledger.clone());
    let stats = p.stats();
    assert_eq!(p.run().unwrap().consumed, n);
    let again = engine.apply(&decode(pay(1).as_bytes()).unwrap()).unwrap();
    assert_eq!(again.action, Action::Block, "decided again now: {again:?}");
    let q1 = ledger
        .read(|bk| bk.get_transfer("q1").cloned())
        .expect("q1 settled from the stream");
    assert_eq!(q1.status, Status::Settled, "{q1:?}");
    let balance = ledger.read(|bk| bk.get_account("qa").map(|a| a.available));
    assert_eq!(balance, Some(9_900), "q1, once");
    let settlements = read_all(&b.cfg, &b.cfg.topics.settlements);
    let mut keys: Vec<&str> = settlements.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["q1", "q2", "q3", "q4", "q5"]);
    assert_eq!(Stats::get(&stats.duplicates), 1);
    assert!(ledger.read(|bk| bk.check()).is_empty());
}

#[test]
fn a_transfer_to_a_payee_not_opened_yet_waits_for_the_account_then_settles() {
    use vigil_engine::ledger::{Decline, Status};

    let b = broker(1);
    let ledger = ledger_with_qa();
    let transfer = |id: &str, to: &str, second: u32| {
        format!(
            r#"{{"schema":1,"tx_id":"{id}","ts":"2026-11-02T10:00:{second:02}Z","kind":"transfer","account_id":"qa","counterparty_id":"{to}","amount":"20.00","currency":"EUR"}}"#
        )
    };
    // qb's opening is dated a second after the transfer to it (another service's clock, or
    // another partition read later); qc never opens.
    let input = [
        transfer("q1", "qb", 0),
        r#"{"schema":1,"event_id":"e-qb","ts":"2026-11-02T10:00:01Z","kind":"account_opened","account_id":"qb","currency":"EUR"}"#.to_string(),
        transfer("q2", "qc", 2),
    ]
    .map(|l| l + "\n")
    .concat();
    let n = feed(&b.cfg, input.as_bytes());
    let mut cfg = b.cfg.clone();
    cfg.max_messages = Some(n);
    cfg.idle_exit = Some(Duration::from_secs(30));
    cfg.payee_wait = Duration::from_millis(300);
    let p = Pipeline::new(engine(), cfg).with_ledger(ledger.clone());
    let stats = p.stats();
    assert_eq!(p.run().unwrap().consumed, n);
    let transfer = |id: &str| ledger.read(|bk| bk.get_transfer(id).cloned()).unwrap();
    assert_eq!(
        transfer("q1").status,
        Status::Settled,
        "{:?}",
        transfer("q1")
    );
    let balance = |a: &str| ledger.read(|bk| bk.get_account(a).map(|a| a.available));
    assert_eq!(balance("qb"), Some(2_000));
    // One that never opens is declined as it would have been at once, after the wait.
    assert_eq!(transfer("q2").decline, Some(Decline::UnknownAccount));
    assert_eq!(balance("qa"), Some(8_000));
    assert_eq!(Stats::get(&stats.settlements_waited), 2);
    let settlements = read_all(&b.cfg, &b.cfg.topics.settlements);
    let mut keys: Vec<&str> = settlements.iter().map(|r| r.key.as_str()).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["q1", "q2"]);
    assert!(ledger.read(|bk| bk.check()).is_empty());
}

#[test]
fn account_opened_events_with_a_currency_open_the_ledger_accounts() {
    use vigil_engine::ledger::{BookConfig, Ledger};

    let b = broker(2);
    let input = sample();
    // What the sample announces: account → (currency, locale, opened at).
    let mut announced = HashMap::new();
    for l in lines(&input) {
        let v: serde_json::Value = serde_json::from_slice(l).unwrap();
        if v["kind"] == "account_opened" {
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            announced.insert(s("account_id"), (s("currency"), s("locale"), s("ts")));
        }
    }
    assert!(announced.len() > 900, "{}", announced.len());
    let ledger = Ledger::in_memory(BookConfig::default());
    let n = feed(&b.cfg, &input);
    let run = |ledger: &Ledger, group: &str| {
        let mut cfg = b.cfg.clone();
        cfg.max_messages = Some(n);
        cfg.idle_exit = Some(Duration::from_secs(30));
        cfg.group_id = format!("{}-{group}", cfg.group_id);
        let p = Pipeline::new(engine(), cfg).with_ledger(ledger.clone());
        let stats = p.stats();
        assert_eq!(p.run().unwrap().consumed, n);
        stats
    };
    let stats = run(&ledger, "first");
    assert_eq!(Stats::get(&stats.accounts_opened), announced.len() as u64);
    for (id, (currency, locale, ts)) in &announced {
        let a = ledger
            .read(|b| b.get_account(id))
            .unwrap_or_else(|| panic!("{id} not opened"));
        assert_eq!(a.currency.code(), currency, "{id}");
        assert_eq!(a.locale.as_deref(), Some(locale.as_str()), "{id}");
        assert_eq!(vigil_engine::event::format_ts(a.opened_ms), *ts, "{id}");
    }
    // With the accounts there (and funded by their top-ups), payments settle. A transaction
    // decided before its account's events were read (the merge stops waiting for a topic held
    // back past its limit: on tansu under load, once, 13,056 of 30,090 settled) may find no
    // account or no funds, so only a run that stayed aligned is held to the ratio.
    let settled = Stats::get(&stats.settlements[0]);
    let decided = Stats::get(&stats.decided);
    let unaligned = Stats::get(&stats.unaligned);
    if unaligned == 0 {
        assert!(settled * 10 > decided * 8, "{settled} of {decided} settled");
    } else {
        eprintln!("{unaligned} decided unaligned: {settled} of {decided} settled");
        assert!(settled > 0, "{settled} of {decided} settled");
    }
    // The same stream read again (a new group): every account exists, none opened twice.
    let again = run(&ledger, "again");
    assert_eq!(Stats::get(&again.accounts_opened), 0);
    assert_eq!(ledger.read(|b| b.counts()).0, announced.len());
}

#[test]
fn a_commit_the_broker_refuses_is_sent_again() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
    use rdkafka::{Offset, TopicPartitionList};

    let b = broker(1);
    let Some(cluster) = b.embedded() else {
        eprintln!("skipped: needs the embedded cluster's fault injection");
        return;
    };
    let mut cfg = b.cfg.clone();
    cfg.commit_every = Duration::from_millis(100);
    let input = sample();
    let all = lines(&input);
    let (last, first) = all.split_last().unwrap();
    let pipeline = Pipeline::new(engine(), cfg.clone());
    let stats = pipeline.stats();
    let stop = pipeline.stop_handle();
    let thread = std::thread::spawn(move || pipeline.run());
    // The group's committed offsets against the ends of the input partitions.
    let group: BaseConsumer = vigil_engine::stream::client_config(&cfg)
        .set("group.id", &cfg.group_id)
        .create()
        .unwrap();
    let behind = || {
        let mut tpl = TopicPartitionList::new();
        for t in cfg.topics.inputs() {
            tpl.add_partition(t, 0);
        }
        let committed = group
            .committed_offsets(tpl, Duration::from_secs(10))
            .unwrap();
        committed
            .elements()
            .iter()
            .map(|e| {
                let (_, high) = group
                    .fetch_watermarks(e.topic(), 0, Duration::from_secs(10))
                    .unwrap();
                match e.offset() {
                    Offset::Offset(o) => high - o,
                    _ => high,
                }
            })
            .sum::<i64>()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    let wait = |what: &str, done: &dyn Fn() -> bool| {
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}: consumed {}, commits {}",
                Stats::get(&stats.consumed),
                Stats::get(&stats.commits),
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let n = feed(&cfg, &first.join(&b'\n'));
    wait("first part committed", &|| {
        Stats::get(&stats.consumed) == n && behind() == 0
    });
    // The commits of the last message's position are refused, twice; with nothing more to
    // read, only sending the same position again moves the group's offset.
    let refused = RDKafkaRespErr::RD_KAFKA_RESP_ERR_OFFSET_METADATA_TOO_LARGE;
    cluster.fail_requests(RDKafkaApiKey::OffsetCommit, &[refused; 2]);
    feed(&cfg, last);
    wait("the last message committed while running", &|| {
        Stats::get(&stats.consumed) == n + 1 && behind() == 0
    });
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();
}

#[test]
fn a_broker_slow_past_the_checkpoint_budget_puts_the_checkpoint_off_and_the_pipeline_goes_on() {
    let b = broker(1);
    let Some(cluster) = b.embedded() else {
        eprintln!("skipped: needs the embedded cluster's fault injection");
        return;
    };
    let mut cfg = b.cfg.clone();
    let dir = vigil_tests::TempDir::new("slow-broker");
    cfg.state_dir = Some(dir.to_path_buf());
    cfg.snapshot_every = Duration::from_millis(100);
    cfg.shutdown_timeout = Duration::from_millis(500);
    let input = sample();
    let all = lines(&input);
    let (first, second) = (&all[..2_000], &all[2_000..3_000]);
    let n1 = feed(&cfg, &first.join(&b'\n'));
    let mut run_cfg = cfg.clone();
    run_cfg.max_messages = Some(n1 + second.len() as u64);
    run_cfg.idle_exit = Some(Duration::from_secs(60));
    let pipeline = Pipeline::new(engine(), run_cfg);
    let stats = pipeline.stats();
    let thread = std::thread::spawn(move || pipeline.run());
    let deadline = Instant::now() + Duration::from_secs(60);
    while Stats::get(&stats.consumed) < n1 {
        assert!(Instant::now() < deadline, "first part not consumed");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Every answer 1.5 s late, three times the checkpoint's budget, while the second part's
    // outputs are produced.
    cluster
        .round_trip_time(Duration::from_millis(1_500))
        .unwrap();
    let n2 = feed(&cfg, &second.join(&b'\n'));
    assert_eq!(n2, second.len() as u64);
    while Stats::get(&stats.checkpoints_postponed) == 0 {
        assert!(
            Instant::now() < deadline && !thread.is_finished(),
            "no checkpoint put off"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    cluster.round_trip_time(Duration::ZERO).unwrap();
    let summary = thread.join().unwrap().expect("the pipeline goes on");
    assert_eq!(summary.consumed, n1 + n2);
    let txs = all[..3_000]
        .iter()
        .filter(|l| l.windows(7).any(|w| w == b"\"tx_id\""))
        .count();
    assert_eq!(Stats::get(&stats.decided), txs as u64);
    assert_eq!(read_all(&cfg, &cfg.topics.decisions).len(), txs);
}

#[test]
fn a_stop_during_the_start_up_read_back_writes_no_snapshot() {
    // A SIGTERM while the output topics are read back at start: the read-back has not reached
    // the ends a snapshot would record, so the pipeline must stop without writing one (nor
    // consuming, deciding or committing anything).
    let b = broker(1);
    let mut cfg = b.cfg.clone();
    let dir = vigil_tests::TempDir::new("stop-at-start");
    cfg.state_dir = Some(dir.to_path_buf());
    let input = sample();
    feed(&cfg, &lines(&input)[..200].join(&b'\n'));
    let p = Pipeline::new(engine(), cfg.clone());
    let stats = p.stats();
    p.stop_handle().store(true, Ordering::Relaxed);
    let summary = p.run().unwrap();
    assert_eq!(summary.consumed, 0);
    assert_eq!(Stats::get(&stats.decided), 0);
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert!(files.is_empty(), "wrote {files:?}");
}

#[test]
fn a_line_too_large_for_a_message_is_named_and_the_rest_is_sent() {
    let b = broker(1);
    let input = sample();
    let all = lines(&input);
    let huge = format!(
        "{{\"tx_id\":\"big\",\"memo\":\"{}\"}}",
        "x".repeat(2_000_000)
    );
    let text = [all[0], huge.as_bytes(), all[1], all[2]].join(&b'\n');
    let p = vigil_engine::stream::produce::produce(
        &b.cfg,
        &text[..],
        None,
        &AtomicBool::new(false),
        |_| {},
    )
    .unwrap();
    assert_eq!(p.too_large, vec![2]);
    assert_eq!(p.transactions + p.account_events, 3);
    assert_eq!(p.acked, 3);
    assert_eq!(p.failed, 0);
}

#[test]
fn a_snapshot_restored_on_a_new_broker_reads_the_new_log_from_its_start() {
    // `vigil serve` on its embedded broker: the broker is new at every start, with the same
    // topic names. The snapshot's offsets point into the old log; seeking there would skip as
    // many of the new log's messages (decided by no one, dead-lettered nowhere).
    let b = broker(1);
    if b.embedded().is_none() {
        eprintln!("skipped: needs a broker this test can start afresh");
        return;
    }
    let dir = vigil_tests::TempDir::new("fresh-broker");
    let mut cfg = b.cfg.clone();
    cfg.state_dir = Some(dir.to_path_buf());
    let input = sample();
    let all = lines(&input);
    let (first, rest) = all.split_at(3000);
    let n = feed(&cfg, &first.join(&b'\n'));
    run(engine(), &cfg, n);
    assert!(dir.join("state.snap").exists(), "no snapshot written");
    // A new broker, the same topics, new traffic there before the restart reads it.
    let again = vigil_engine::stream::embedded::Embedded::start(1, &cfg.topics, 1).unwrap();
    cfg.brokers = again.bootstrap().to_string();
    cfg.fresh_broker = true;
    let m = feed(&cfg, &rest.join(&b'\n'));
    assert!(
        m > n,
        "the new log is longer than the old one: {m} against {n}"
    );
    cfg.max_messages = Some(m);
    cfg.idle_exit = Some(Duration::from_secs(5));
    let p = Pipeline::new(engine(), cfg);
    let stats = p.stats();
    let summary = p.run().unwrap();
    assert!(summary.restored, "the state was not restored");
    assert_eq!(summary.consumed, m, "messages of the new log were skipped");
    assert!(Stats::get(&stats.decided) > 0);
}

#[test]
fn a_restored_member_starts_where_the_group_is_and_never_commits_behind_it() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer};
    use rdkafka::{Offset, TopicPartitionList};

    let b = broker(2);
    let mut cfg = b.cfg.clone();
    cfg.commit_every = Duration::from_millis(100);
    cfg.snapshot_every = Duration::from_millis(200);
    let dir = vigil_tests::TempDir::new("restored");
    cfg.state_dir = Some(dir.to_path_buf());
    let input = sample();
    let all = lines(&input);
    let (first, second) = all.split_at(all.len() / 2);
    // A snapshot covering the first half, on every partition.
    let n1 = feed(&cfg, &first.join(&b'\n'));
    run(engine(), &cfg, n1);
    feed(&cfg, &second.join(&b'\n'));

    // While that member is away, another one reads everything and commits the ends.
    let other: BaseConsumer = vigil_engine::stream::client_config(&cfg)
        .set("group.id", &cfg.group_id)
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .create()
        .unwrap();
    other.subscribe(&cfg.topics.inputs()).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while other.assignment().unwrap().count() < 4 {
        assert!(
            Instant::now() < deadline,
            "the other member got no partitions"
        );
        let _ = other.poll(Duration::from_millis(100));
    }
    let mut ends = TopicPartitionList::new();
    for e in other.assignment().unwrap().elements() {
        let (_, high) = other
            .fetch_watermarks(e.topic(), e.partition(), Duration::from_secs(10))
            .unwrap();
        ends.add_partition_offset(e.topic(), e.partition(), Offset::Offset(high))
            .unwrap();
    }
    other.commit(&ends, CommitMode::Sync).unwrap();

    // The restored member comes back: it must not decide the second half again, nor move
    // the group's offsets back to its snapshot's, while the group rebalances around it.
    let pipeline = Pipeline::new(engine(), cfg.clone());
    let stats = pipeline.stats();
    let stop = pipeline.stop_handle();
    let thread = std::thread::spawn(move || pipeline.run());
    while !(other.assignment().unwrap().count() == 2 && Stats::get(&stats.assigned) == 2) {
        assert!(
            Instant::now() < deadline,
            "the group did not split the partitions"
        );
        let _ = other.poll(Duration::from_millis(50));
    }
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let _ = other.poll(Duration::from_millis(100));
        let committed = other
            .committed_offsets(ends.clone(), Duration::from_secs(10))
            .unwrap();
        for (e, want) in committed.elements().iter().zip(ends.elements()) {
            assert_eq!(
                e.offset(),
                want.offset(),
                "{}/{}: committed behind the group",
                e.topic(),
                e.partition()
            );
        }
    }
    stop.store(true, Ordering::Relaxed);
    thread.join().unwrap().unwrap();
    assert_eq!(
        Stats::get(&stats.decided),
        0,
        "decided the second half again"
    );
    drop(other);
}

#[test]
fn an_output_the_broker_cannot_take_stops_the_pipeline_and_a_restart_loses_and_repeats_nothing() {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::{Offset, TopicPartitionList};
    use vigil_engine::event::Event;

    // Which output is refused is known from replay's decisions, which the pipeline matches
    // only where the broker lets it read in exact event-time order (see `exact_order`): on
    // tansu the big decision sometimes comes out smaller, and nothing is refused.
    if !exact_order() {
        eprintln!("skipped: needs replay's exact decisions (the embedded broker)");
        return;
    }
    let b = broker(1);
    let mut cfg = b.cfg.clone();
    let dir = vigil_tests::TempDir::new("stop-on-error");
    cfg.state_dir = Some(dir.to_path_buf());
    let input = sample();
    let all = &lines(&input)[..14_000];
    // The first decision of the sample over 1000 bytes (a block with five reasons): the
    // failing run's producer may send nothing that large. Every decision before it is
    // smaller than 800 bytes, so it is the first output refused.
    let whole = all.join(&b'\n');
    let want = replay_decisions(&whole);
    let tx_id = |l: &[u8]| {
        serde_json::from_slice::<serde_json::Value>(l).unwrap()["tx_id"]
            .as_str()
            .map(str::to_string)
    };
    let big = all
        .iter()
        .position(|l| tx_id(l).is_some_and(|id| want[&id].len() > 1000))
        .unwrap();
    assert!(
        all[..big]
            .iter()
            .filter_map(|l| tx_id(l))
            .all(|id| want[&id].len() < 800)
    );
    let big_id = tx_id(all[big]).unwrap();
    // The transactions after it, some of which its batch decides before the pipeline stops.
    let after: Vec<String> = all[big + 1..]
        .iter()
        .filter_map(|l| tx_id(l))
        .take(16)
        .collect();
    let (first, second) = all.split_at(big - 1000);

    // The first part, decided and checkpointed: the snapshot the restart begins from.
    let n1 = feed(&cfg, &first.join(&b'\n'));
    run(engine(), &cfg, n1);
    feed(&cfg, &second.join(&b'\n'));

    // The second part, with a producer that may send nothing over 1000 bytes: the big
    // decision is refused as it is produced, and the pipeline stops on it.
    let mut small = cfg.clone();
    small
        .client
        .insert("message.max.bytes".into(), "1000".into());
    // Until the refusal, not for n2 messages: on tansu the snapshot's offsets can be short of
    // the first part's end, so some of it is read again.
    small.idle_exit = Some(Duration::from_secs(10));
    let failing = engine();
    failing.keep_recent(64);
    let err = Pipeline::new(failing.clone(), small)
        .run()
        .expect_err("an output over message.max.bytes must stop the pipeline")
        .to_string();
    assert!(
        err.contains(&cfg.topics.decisions) && err.contains("MessageSizeTooLarge"),
        "{err}"
    );
    // What this test is for: transactions decided after it in the same batch, whose outputs
    // were never produced. (Not every run's batches are cut the same way.)
    let decided_after = failing.recent_events().iter().any(|e| match e {
        Event::Tx(t) => after.iter().any(|a| *a == t.tx_id),
        Event::Account(_) => false,
    });
    if !decided_after {
        eprintln!("the batch ended at the refused transaction this time");
    }

    // Nothing at or past the refused transaction is committed.
    let needle = format!("\"tx_id\":\"{big_id}\"");
    let big_offset = read_all(&cfg, &cfg.topics.transactions)
        .iter()
        .find(|r| r.value.contains(&needle))
        .unwrap()
        .at
        .1;
    let group: BaseConsumer = vigil_engine::stream::client_config(&cfg)
        .set("group.id", &cfg.group_id)
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition(&cfg.topics.transactions, 0);
    let committed = group
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap();
    match committed.elements()[0].offset() {
        Offset::Offset(o) => assert!(o <= big_offset, "committed {o}, refused at {big_offset}"),
        o => panic!("nothing committed after the first run: {o:?}"),
    }
    drop(group);

    // Restarted with a producer that can send it: every transaction decided once, as replay
    // decides the whole input, with no output lost or sent twice.
    let mut again = cfg.clone();
    again.idle_exit = Some(Duration::from_secs(4));
    let p = Pipeline::new(engine(), again);
    let stats = p.stats();
    let s = p.run().unwrap();
    assert!(
        s.restored,
        "the restart began from the first run's snapshot"
    );
    let mut got: BTreeMap<String, String> = BTreeMap::new();
    for r in read_all(&cfg, &cfg.topics.decisions) {
        let key = r.key.clone();
        assert!(got.insert(r.key, r.value).is_none(), "{key} decided twice");
    }
    let missing: Vec<&String> = want
        .keys()
        .filter(|k| !got.contains_key(*k))
        .take(3)
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} decisions missing, e.g. {missing:?} ({} decided after the restart)",
        want.len() - got.len(),
        want.len(),
        Stats::get(&stats.decided)
    );
    assert_eq!(got.len(), want.len());
    assert_same_decisions(&got, &want);
}
