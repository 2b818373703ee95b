//! Engine behaviour across events: idempotency, account events, state limits.

use vigil_engine::event::decode;
use vigil_engine::state::StateLimits;
use vigil_engine::{Engine, EngineConfig, Event};
use vigil_rules::{Action, PackOptions, SourceFile, compile_pack};

fn engine(rules: &str, config: EngineConfig) -> Engine {
    let files = [SourceFile {
        path: "pack.toml".into(),
        rel: "pack.toml".into(),
        text: format!("[pack]\nname = \"t\"\n{rules}"),
    }];
    Engine::new(
        compile_pack(&files, &PackOptions::default()).expect("pack"),
        config,
    )
}

fn tx(id: &str, account: &str, minute: u32, amount: &str) -> Event {
    let json = format!(
        r#"{{"schema":1,"tx_id":"{id}","ts":"2026-11-02T10:{minute:02}:00Z","kind":"payment","account_id":"{account}","counterparty_id":"m-1","amount":"{amount}","currency":"EUR","device_id":"d-1"}}"#
    );
    decode(json.as_bytes()).expect("valid event")
}

const COUNT3: &str = "[[rule]]\nid = \"three\"\naction = \"review\"\nwhen = \"count(tx by account over 10m) >= 3 or sum(amount by device over 2h) > 1000\"\n";

#[test]
fn a_redelivered_transaction_is_not_counted_twice() {
    let e = engine(COUNT3, EngineConfig::default());
    for _ in 0..5 {
        let d = e.apply(&tx("t-1", "a", 0, "10.00")).unwrap();
        assert_eq!(d.action, Action::Allow);
    }
    let d = e.apply(&tx("t-2", "a", 1, "10.00")).unwrap();
    assert_eq!(d.action, Action::Allow, "only t-1 and t-2 count: {d:?}");
    assert!(!d.duplicate);
    let d = e.apply(&tx("t-3", "a", 2, "10.00")).unwrap();
    assert_eq!(d.action, Action::Review);
    assert_eq!(e.duplicate_events(), 4);
}

/// Two transaction ids and five account ids built (by a tester, in about 3,000 tries) so that the
/// unkeyed FxHash state keys were once made with gives each group one key: the second
/// transaction was taken for a redelivery of the first and never counted, and five accounts
/// shared one history.
const SAME_FX_TX: [&str; 2] = [
    "t-3i9p6ebgu04b7b-first-000000001oDIFDwFj-aaaaaaa",
    "t-3i9p6ebgu04b7b-second-00000002oDIFDwFj-bbbbbbb",
];
const SAME_FX_ACCOUNT: &str = "t-ytd98mvh68r9ff-acct-000000000NRXfMJdTm-000000N";

#[test]
fn ids_built_to_share_an_unkeyed_hash_stay_apart() {
    use vigil_engine::state::IdSecret;
    let accounts: Vec<String> = (0..5)
        .map(|i| SAME_FX_ACCOUNT.replace('N', &i.to_string()))
        .collect();
    let run = |id_secret| {
        let e = engine(
            COUNT3,
            EngineConfig {
                id_secret,
                ..EngineConfig::default()
            },
        );
        let first = e.apply(&tx(SAME_FX_TX[0], "a-1", 0, "5.00")).unwrap();
        assert!(!first.duplicate);
        let second = e.apply(&tx(SAME_FX_TX[1], "a-2", 1, "5.00")).unwrap();
        let actions: Vec<Action> = accounts
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let d = e.apply(&tx(&format!("c-{i}"), a, 2, "1.00")).unwrap();
                d.action
            })
            .collect();
        (second.duplicate, actions)
    };
    // Under the old hash the ids do collide (so this test can tell)...
    let (dup, actions) = run(Some(IdSecret::Unkeyed));
    assert!(dup, "the crafted tx ids no longer collide under FxHash");
    assert_eq!(actions[2], Action::Review, "{actions:?}");
    // ...and under a secret, drawn or fixed, they are separate ids.
    for secret in [None, Some(vigil_engine::state::REPLAY_SECRET)] {
        let (dup, actions) = run(secret);
        assert!(!dup, "{secret:?}: a different tx id taken for a redelivery");
        assert_eq!(actions, [Action::Allow; 5], "{secret:?}: accounts merged");
    }
}

#[test]
fn a_restored_snapshot_brings_the_secret_its_keys_were_made_with() {
    let dir = vigil_tests::TempDir::new("snapshot-secret");
    let path = dir.join("state.snap");
    let first = engine(COUNT3, EngineConfig::default());
    first.apply(&tx("t-1", "a", 0, "10.00")).unwrap();
    first.apply(&tx("t-2", "a", 1, "10.00")).unwrap();
    first.save_snapshot(&path, b"m").expect("save");
    // A new engine draws a secret of its own, then takes the snapshot's with its state: under
    // its own, t-1 would be new and the account's two transactions lost.
    let next = engine(COUNT3, EngineConfig::default());
    next.load_snapshot(&path).expect("load");
    let again = next.apply(&tx("t-1", "a", 0, "10.00")).unwrap();
    assert!(again.duplicate);
    // With the first decision's action, kept beside the id.
    assert_eq!(again.first_action, Some(Action::Allow));
    let d = next.apply(&tx("t-3", "a", 2, "10.00")).unwrap();
    assert_eq!(
        d.action,
        Action::Review,
        "the account's history was lost: {d:?}"
    );
}

/// `tests/fixtures/snapshot-format1.snap` was written by the build before keyed ids (f7f7ac1)
/// from an engine running `COUNT3` that had decided `t-1` and `t-2` of account `a`.
#[test]
fn a_snapshot_from_before_the_secret_is_restored_with_the_hash_it_was_made_with() {
    let dir = vigil_tests::TempDir::new("snapshot-format1");
    let again = dir.join("again.snap");
    let old = vigil_tests::root().join("tests/fixtures/snapshot-format1.snap");
    let e = engine(COUNT3, EngineConfig::default());
    assert_eq!(
        e.load_snapshot(&old).expect("format 1 loads").meta,
        b"format 1"
    );
    let repeat = e.apply(&tx("t-1", "a", 0, "10.00")).unwrap();
    assert!(repeat.duplicate);
    assert_eq!(repeat.first_action, None, "format 1 kept no action");
    e.save_snapshot(&again, b"").expect("save");
    // Saved again (format 2), it keeps the unkeyed hash.
    let next = engine(COUNT3, EngineConfig::default());
    next.load_snapshot(&again).expect("load");
    assert!(next.apply(&tx("t-2", "a", 1, "10.00")).unwrap().duplicate);
    let d = next.apply(&tx("t-3", "a", 2, "10.00")).unwrap();
    assert_eq!(
        d.action,
        Action::Review,
        "the account's history was lost: {d:?}"
    );
}

#[test]
fn a_duplicate_carries_the_first_decisions_action() {
    let e = engine(COUNT3, EngineConfig::default());
    for (id, minute) in [("t-1", 0), ("t-2", 1)] {
        let d = e.apply(&tx(id, "a", minute, "10.00")).unwrap();
        assert_eq!((d.action, d.first_action), (Action::Allow, None));
    }
    assert_eq!(
        e.apply(&tx("t-3", "a", 2, "10.00")).unwrap().action,
        Action::Review
    );
    // t-1 again: on today's state it would be reviewed; it was allowed, and stays what it was
    // through later repeats (a repeat's decision is not kept over the first).
    for _ in 0..2 {
        let d = e.apply(&tx("t-1", "a", 0, "10.00")).unwrap();
        assert!(d.duplicate);
        assert_eq!(d.action, Action::Review, "{d:?}");
        assert_eq!(d.first_action, Some(Action::Allow));
        assert_eq!(d.acted_action(), Action::Allow);
    }
    let d = e.apply(&tx("t-3", "a", 2, "10.00")).unwrap();
    assert_eq!(d.first_action, Some(Action::Review));
}

#[test]
fn a_redelivered_transaction_reads_shared_keys_as_of_their_latest_event() {
    let rule = "[[rule]]\nid = \"dev\"\naction = \"review\"\nwhen = \"sum(amount by device over 1h) > 1000\"\n";
    let e = engine(rule, EngineConfig::default());
    assert_eq!(
        e.apply(&tx("t-1", "a", 0, "600.00")).unwrap().action,
        Action::Allow
    );
    assert_eq!(
        e.apply(&tx("t-2", "b", 30, "500.00")).unwrap().action,
        Action::Review
    );
    // t-1 again: as of its own time the device had 600, as of its latest event 1,100.
    let d = e.apply(&tx("t-1", "a", 0, "600.00")).unwrap();
    assert!(d.duplicate);
    assert_eq!(d.action, Action::Review, "{d:?}");
    assert_eq!(e.duplicate_events(), 1);
}

#[test]
fn a_redelivered_transaction_adds_no_event_and_no_key() {
    let rule = "[[rule]]\nid = \"busy\"\naction = \"block\"\nwhen = \"count(tx by device over 1h) >= 3\"\n";
    let e = engine(rule, EngineConfig::default());
    let on = |id: &str, device: &str, minute: u32| {
        let json = format!(
            r#"{{"schema":1,"tx_id":"{id}","ts":"2026-11-02T10:{minute:02}:00Z","kind":"payment","account_id":"a","amount":"5.00","currency":"EUR","device_id":"{device}"}}"#
        );
        decode(json.as_bytes()).expect("valid event")
    };
    e.apply(&on("t-1", "d-1", 0)).unwrap();
    e.apply(&on("t-2", "d-1", 1)).unwrap();
    // t-2 again, and t-1 again from a device the store has never seen.
    let d = e.apply(&on("t-2", "d-1", 1)).unwrap();
    assert!(d.duplicate);
    assert_eq!(d.action, Action::Allow, "counted twice: {d:?}");
    assert!(e.apply(&on("t-1", "d-9", 0)).unwrap().duplicate);
    assert_eq!(e.state_stats().keyed[0], 1, "{:?}", e.state_stats());
    // The third counted event on d-1 is the one that blocks.
    let d = e.apply(&on("t-3", "d-1", 2)).unwrap();
    assert_eq!(d.action, Action::Block, "{d:?}");
}

#[test]
fn the_same_pack_and_events_give_the_same_decisions_on_two_engines() {
    let events: Vec<Event> = (0..50)
        .map(|i| tx(&format!("t-{i}"), &format!("a-{}", i % 7), i % 60, "120.00"))
        .collect();
    let run = || -> Vec<String> {
        let e = engine(COUNT3, EngineConfig::default());
        events
            .iter()
            .filter_map(|ev| e.apply(ev))
            .map(|d| d.to_json())
            .collect()
    };
    assert_eq!(run(), run());
}

#[test]
fn idle_state_is_evicted_and_limits_hold() {
    let limits = StateLimits {
        accounts_max: 100,
        keys_max: 100,
        seen_tx_max: 150,
        ..StateLimits::default()
    };
    let e = engine(
        COUNT3,
        EngineConfig {
            limits,
            maintain_every: 64,
            ..EngineConfig::default()
        },
    );
    for i in 0..1000u32 {
        let json = format!(
            r#"{{"schema":1,"tx_id":"t-{i}","ts":"2026-11-02T10:00:{:02}.{:03}Z","kind":"payment","account_id":"a-{i}","counterparty_id":"m-{i}","amount":"1.00","currency":"EUR","device_id":"d-{i}"}}"#,
            i / 1000,
            i % 1000
        );
        let ev = decode(json.as_bytes()).unwrap();
        e.apply(&ev);
    }
    e.maintain();
    let s = e.state_stats();
    assert!(s.accounts <= 100 + 64, "{s:?}");
    assert!(s.keyed[0] <= 100 + 64, "{s:?}");
    assert!(s.seen_tx <= 150 + 64, "{s:?}");
}

#[test]
fn with_maintain_every_0_state_is_evicted_only_when_asked() {
    let run = |maintain_every: u64| {
        let limits = StateLimits {
            accounts_max: 10,
            ..StateLimits::default()
        };
        let e = engine(
            COUNT3,
            EngineConfig {
                limits,
                maintain_every,
                ..EngineConfig::default()
            },
        );
        for i in 0..50 {
            e.apply(&tx(&format!("t-{i}"), &format!("a-{i}"), i, "1.00"));
        }
        e
    };
    // Swept inline every 5 events: never more than 10 + 4 accounts.
    assert!(run(5).state_stats().accounts <= 14);
    let e = run(0);
    assert_eq!(e.state_stats().accounts, 50, "not swept inline");
    e.maintain();
    assert_eq!(e.state_stats().accounts, 10);
}

#[test]
fn a_store_is_swept_again_once_an_eighth_of_its_idle_limit_has_passed_or_when_over_its_limit() {
    let limits = StateLimits {
        account_idle_ms: 16 * 60_000,
        accounts_max: 3,
        ..StateLimits::default()
    };
    let e = engine(
        COUNT3,
        EngineConfig {
            limits,
            maintain_every: 0,
            ..EngineConfig::default()
        },
    );
    e.apply(&tx("t-1", "a-1", 0, "1.00"));
    e.apply(&tx("t-2", "a-2", 15, "1.00"));
    e.maintain();
    assert_eq!(e.state_stats().accounts, 2, "a-1 idle 15 of 16 minutes");
    // a-1 is now idle for its whole limit, but the accounts were swept a minute ago: the
    // next sweep is due two minutes (an eighth of 16) after the last.
    e.apply(&tx("t-3", "a-2", 16, "1.00"));
    e.maintain();
    assert_eq!(e.state_stats().accounts, 2, "not swept again yet");
    e.apply(&tx("t-4", "a-2", 17, "1.00"));
    e.maintain();
    assert_eq!(e.state_stats().accounts, 1, "swept: a-1 forgotten");
    // Over the size limit, a store is swept whenever asked.
    for (i, a) in ["a-3", "a-4", "a-5"].into_iter().enumerate() {
        e.apply(&tx(&format!("t-{}", 5 + i), a, 17, "1.00"));
    }
    assert_eq!(e.state_stats().accounts, 4);
    e.maintain();
    assert_eq!(
        e.state_stats().accounts,
        3,
        "the least recently active went"
    );
}

#[test]
fn account_events_feed_since_and_account_age() {
    let rules = "[[rule]]\nid = \"reset\"\naction = \"step_up\"\nwhen = \"since(password_reset) < 1h and account_age > 30d\"\n";
    let e = engine(rules, EngineConfig::default());
    let ev = |json: &str| decode(json.as_bytes()).unwrap();
    e.apply(&ev(r#"{"schema":1,"event_id":"e-1","ts":"2026-01-01T00:00:00Z","kind":"account_opened","account_id":"a"}"#));
    assert_eq!(
        e.apply(&tx("t-1", "a", 0, "5.00")).unwrap().action,
        Action::Allow
    );
    e.apply(&ev(r#"{"schema":1,"event_id":"e-2","ts":"2026-11-02T10:05:00Z","kind":"password_reset","account_id":"a"}"#));
    let d = e.apply(&tx("t-2", "a", 30, "5.00")).unwrap();
    assert_eq!(d.action, Action::StepUp);
    assert_eq!(
        d.reasons[0].values,
        [
            ("since(password_reset)".to_string(), "25m".to_string()),
            ("account_age".to_string(), "305d10h30m".to_string())
        ]
    );
}

#[test]
fn a_redelivered_account_opened_keeps_the_balance_and_the_first_opening() {
    let rules = "[[rule]]\nid = \"drain\"\naction = \"review\"\nwhen = \"kind == 'transfer' and amount >= 0.5 * balance\"\n\
                 [[rule]]\nid = \"fresh\"\naction = \"review\"\nwhen = \"since(account_opened) < 1h or account_age < 1h\"\n";
    let e = engine(rules, EngineConfig::default());
    let ev = |json: &str| decode(json.as_bytes()).unwrap();
    let opened = r#"{"schema":1,"event_id":"e-1","ts":"2026-11-01T00:00:00Z","kind":"account_opened","account_id":"a","locale":"zh"}"#;
    let money = |id: &str, kind: &str, minute: u32, amount: &str| {
        ev(&format!(
            r#"{{"schema":1,"tx_id":"{id}","ts":"2026-11-02T10:{minute:02}:00Z","kind":"{kind}","account_id":"a","counterparty_id":"p-1","amount":"{amount}","currency":"EUR"}}"#
        ))
    };
    e.apply(&ev(opened));
    e.apply(&money("t-1", "top_up", 0, "1000.00"));
    // The same opening again (a redelivery), and one with another id, time and locale.
    e.apply(&ev(opened));
    e.apply(&ev(r#"{"schema":1,"event_id":"e-2","ts":"2026-11-02T10:01:00Z","kind":"account_opened","account_id":"a","locale":"en"}"#));
    let d = e.apply(&money("t-2", "transfer", 2, "600.00")).unwrap();
    assert_eq!(
        d.action,
        Action::Review,
        "the balance is still known: {d:?}"
    );
    assert_eq!(
        d.reasons[0].values,
        [
            ("kind".to_string(), "transfer".to_string()),
            ("amount".to_string(), "600".to_string()),
            ("balance".to_string(), "1000".to_string())
        ]
    );
    assert_eq!(e.account_locale("a").as_deref(), Some("zh"));
    // Nor did the account become an hour old again.
    assert!(!d.reasons.iter().any(|r| r.rule == "fresh"), "{d:?}");
}

#[test]
fn a_snooze_mutes_one_rule_for_one_account_until_its_time() {
    let rules = "[[rule]]\nid = \"big\"\naction = \"block\"\nwhen = \"amount > 100\"\n\
                 [[rule]]\nid = \"bigger\"\nscore = 5\nwhen = \"amount > 200\"\n";
    let e = engine(rules, EngineConfig::default());
    // Until 10:05 on the day of `tx`.
    let until = vigil_engine::event::parse_ts("2026-11-02T10:05:00Z").expect("time");
    e.set_snoozes([("a", "big", until)]);
    let d = e.apply(&tx("t-1", "a", 4, "250.00")).expect("a decision");
    assert_eq!(d.action, Action::Allow, "{d:?}");
    assert_eq!(d.snoozed, ["big"]);
    assert_eq!(d.score, 5, "the other rule still scores");
    assert_eq!(d.reasons.len(), 1);
    // Another account, and the same account from 10:05 on: the rule acts.
    let d = e.apply(&tx("t-2", "b", 4, "250.00")).expect("a decision");
    assert_eq!(d.action, Action::Block);
    assert!(d.snoozed.is_empty());
    let d = e.apply(&tx("t-3", "a", 5, "250.00")).expect("a decision");
    assert_eq!(d.action, Action::Block, "{d:?}");
    // A snooze of a rule that would not fire shows nothing.
    let d = e.apply(&tx("t-4", "a", 1, "50.00")).expect("a decision");
    assert!(d.snoozed.is_empty());
    // Cleared.
    e.set_snoozes([]);
    let d = e.apply(&tx("t-5", "a", 3, "250.00")).expect("a decision");
    assert_eq!(d.action, Action::Block);
}

#[test]
fn an_event_dated_past_the_clock_cannot_blind_the_windows() {
    let forged = decode(
        br#"{"schema":1,"tx_id":"t-forged","ts":"2099-01-01T00:00:00Z","kind":"payment","account_id":"a","counterparty_id":"m-1","amount":"1.00","currency":"EUR"}"#,
    )
    .expect("valid event");
    let run = |config: EngineConfig| {
        let e = engine(COUNT3, config);
        e.apply(&tx("t-0", "a", 0, "10.00"));
        let f = e.apply(&forged).expect("a transaction is decided");
        let actions: Vec<Action> = (1..4)
            .filter_map(|i| e.apply(&tx(&format!("t-{i}"), "a", i, "10.00")))
            .map(|d| d.action)
            .collect();
        (f.future, actions, e.future_events(), e.late_events())
    };
    // Unguarded (replays): the forged time becomes the account's (and the payee's, and the
    // stream's) time, every later event of the account is "late" and goes uncounted, and three
    // payments in three minutes pass.
    let (future, actions, _, late) = run(EngineConfig::default());
    assert!(!future);
    assert_eq!(actions, [Action::Allow; 3]);
    assert_eq!(late, 3);
    // Guarded against the wall clock (`vigil serve`): the forged event is decided, marked and
    // not counted; the windows go on.
    let (future, actions, futures, late) = run(EngineConfig {
        clock_ahead_ms: Some(300_000),
        ..EngineConfig::default()
    });
    assert!(future, "marked in its decision");
    assert_eq!(actions, [Action::Allow, Action::Review, Action::Review]);
    assert_eq!((futures, late), (1, 0));
}

/// A transaction of `account` at `hm` (hours:minutes) on 2026-11-02, 10 EUR to `payee`, with
/// the JSON fields `extra` (each starting with a comma).
fn at(id: &str, account: &str, hm: &str, kind: &str, payee: &str, extra: &str) -> Event {
    let json = format!(
        r#"{{"schema":1,"tx_id":"{id}","ts":"2026-11-02T{hm}:00Z","kind":"{kind}","account_id":"{account}","counterparty_id":"{payee}","amount":"10.00","currency":"EUR"{extra}}}"#
    );
    decode(json.as_bytes()).expect("valid event")
}

/// A counterparty hears from many partitions: a payer's transfer from a partition half an hour
/// behind still counts every payer in its own window, though the key has moved on since.
#[test]
fn a_shared_key_counts_for_an_event_from_a_partition_behind_it() {
    let rule = "[[rule]]\nid = \"fan_in\"\naction = \"review\"\nwhen = \"kind == 'transfer' and distinct(account by counterparty over 6h) >= 5\"\n";
    let e = engine(rule, EngineConfig::default());
    let t = |id: &str, account: &str, hm: &str| at(id, account, hm, "transfer", "mule", "");
    let early = [
        ("1", "a1", "00:00"),
        ("2", "a2", "00:30"),
        ("3", "a3", "01:00"),
    ];
    for (id, a, hm) in early
        .into_iter()
        .chain([("4", "a4", "01:30"), ("5", "a2", "06:20")])
    {
        assert_eq!(
            e.apply(&t(id, a, hm)).expect("decided").action,
            Action::Allow
        );
    }
    // a5's first transfer, dated 05:50: five payers in (23:50, 05:50], a1 among them although
    // the key's latest event (06:20) is more than 6h after a1's.
    let d = e.apply(&t("6", "a5", "05:50")).expect("decided");
    assert!(!d.late, "a5's own first event is not late");
    assert_eq!(d.action, Action::Review, "{:?}", d.reasons);
}

/// The same for a shared key's exact window: a device's event from a partition behind it
/// still counts the device's events in its own 10 minutes.
#[test]
fn a_shared_keys_exact_window_counts_for_an_event_from_a_partition_behind_it() {
    let rule = "[[rule]]\nid = \"busy_device\"\naction = \"review\"\nwhen = \"count(tx by device over 10m) >= 2\"\n";
    let e = engine(rule, EngineConfig::default());
    let t = |id: &str, account: &str, hm: &str| {
        at(id, account, hm, "payment", "m-1", r#","device_id":"d-1""#)
    };
    for (id, a, hm) in [("1", "a1", "10:00"), ("2", "a2", "10:20")] {
        assert_eq!(
            e.apply(&t(id, a, hm)).expect("decided").action,
            Action::Allow
        );
    }
    // a3's event at 10:08: the device was used at 10:00 and now, though its latest use
    // (10:20) is more than the window and the lateness after 10:00.
    let d = e.apply(&t("3", "a3", "10:08")).expect("decided");
    assert_eq!(d.action, Action::Review, "{:?}", d.reasons);
}

/// A rule that cannot fire for an event's kind is not evaluated, and its timing histogram
/// takes no sample for that event (a skipped rule took no time; a 0 would drag its quantiles
/// down), while a rule evaluated for every kind does.
#[test]
fn a_rule_skipped_for_a_kind_takes_no_timing_sample() {
    use std::sync::Arc;
    use vigil_engine::metrics::{Metrics, RULE_TIMING_EVERY};
    let rules = "[[rule]]\nid = \"transfers\"\nscore = 1\nwhen = \"kind == 'transfer' and amount > 1\"\n\
                 [[rule]]\nid = \"any\"\nscore = 1\nwhen = \"amount > 1\"\n";
    let e = engine(rules, EngineConfig::default());
    let m = Arc::new(Metrics::new());
    e.set_metrics(m.clone());
    let samples = |rule: &str| {
        let key = format!("vigil_rule_eval_duration_seconds_count{{rule=\"{rule}\"}} ");
        let text = m.render(&e);
        let line = text.lines().find(|l| l.starts_with(&key));
        line.and_then(|l| l[key.len()..].parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no {key} in\n{text}"))
    };
    // The first decision is timed: a payment.
    e.apply(&at("t-0", "a", "10:00", "payment", "m-1", ""));
    assert_eq!((samples("transfers"), samples("any")), (0, 1));
    // The next timed one is a transfer.
    for i in 1..RULE_TIMING_EVERY {
        e.apply(&at(&format!("t-{i}"), "a", "10:01", "payment", "m-1", ""));
    }
    let d = e
        .apply(&at("t-x", "a", "10:02", "transfer", "b", ""))
        .unwrap();
    assert_eq!(d.reasons.len(), 2, "both rules fire for a transfer: {d:?}");
    assert_eq!((samples("transfers"), samples("any")), (1, 2));
}

/// The shipped sample in event-time order, with every 40th transaction delivered again a few
/// events later, and every 97th sent again under a new id a few events later, dated two hours
/// back (late) or 90 days ahead (future: the sample's first years have gaps of days between
/// account openings).
fn sample_with_redeliveries() -> Vec<Event> {
    let path = vigil_tests::root().join("replay-data/sample.jsonl.gz");
    let input =
        vigil_engine::replay::read(vigil_engine::replay::open(&path).expect("open")).expect("read");
    let mut events: Vec<Event> = Vec::new();
    let mut again: Vec<(usize, Event)> = Vec::new();
    for (i, (_, e)) in input.events.into_iter().enumerate() {
        while again.first().is_some_and(|(at, _)| *at <= i) {
            events.push(again.remove(0).1);
        }
        if let Event::Tx(t) = &e {
            if i % 40 == 0 {
                again.push((i + 5, e.clone()));
            }
            if i % 97 == 0 {
                let mut t = t.clone();
                t.tx_id = format!("{}-again", t.tx_id).into();
                t.ts_ms += if i % 2 == 0 {
                    -7_200_000
                } else {
                    90 * 86_400_000
                };
                again.push((i + 3, Event::Tx(t)));
            }
        }
        events.push(e);
        again.sort_by_key(|(at, _)| *at);
    }
    events.extend(again.into_iter().map(|(_, e)| e));
    events
}

#[test]
fn decisions_in_batches_are_the_decisions_one_at_a_time_and_leave_the_same_state() {
    let events = sample_with_redeliveries();
    let pack = || {
        vigil_engine::packs::load(
            &vigil_tests::root().join("rules/packs/default"),
            &PackOptions::default(),
        )
        .expect("pack")
    };
    // A sweep every 997 events (due inside batches, before the event that reaches the count),
    // and none inline.
    for maintain_every in [997, 0] {
        let config = EngineConfig {
            maintain_every,
            future_ms: Some(60 * 86_400_000),
            ..EngineConfig::default()
        };
        same_decisions_and_state(&events, &pack, config);
    }
}

fn same_decisions_and_state(
    events: &[Event],
    pack: &dyn Fn() -> vigil_rules::CompiledPack,
    config: EngineConfig,
) {
    // One secret, so that the two snapshots can be compared byte for byte.
    let config = EngineConfig {
        id_secret: Some(vigil_engine::state::REPLAY_SECRET),
        ..config
    };
    let one = Engine::new(pack(), config);
    let singly: Vec<String> = events
        .iter()
        .filter_map(|e| one.apply(e))
        .map(|d| d.to_json())
        .collect();
    let many = Engine::new(pack(), config);
    let mut batched = Vec::new();
    let mut scratch = vigil_engine::engine::Scratch::default();
    // Runs of transactions of every length up to two batches, account events between them.
    let mut rest = events;
    let mut len = 1;
    while let Some(first) = rest.first() {
        if let Event::Account(a) = first {
            many.observe(a);
            rest = &rest[1..];
            continue;
        }
        let run: Vec<_> = rest
            .iter()
            .take(len)
            .map_while(|e| match e {
                Event::Tx(t) => Some(t),
                Event::Account(_) => None,
            })
            .collect();
        let base = batched.len();
        many.decide_batch(&run, &mut scratch, |i, d| {
            assert_eq!(i, batched.len() - base, "decisions come in order");
            batched.push(d.to_json());
        });
        rest = &rest[run.len()..];
        len = len % (2 * vigil_engine::engine::BATCH) + 1;
    }
    assert!(singly.len() > 10_000, "{} decisions", singly.len());
    assert!(one.duplicate_events() > 100, "{}", one.duplicate_events());
    assert!(one.late_events() > 50, "{}", one.late_events());
    assert!(one.future_events() > 50, "{}", one.future_events());
    assert_eq!(many.duplicate_events(), one.duplicate_events());
    assert_eq!(many.late_events(), one.late_events());
    assert_eq!(many.future_events(), one.future_events());
    assert_eq!(batched.len(), singly.len());
    for (k, (b, s)) in batched.iter().zip(&singly).enumerate() {
        assert_eq!(b, s, "decision {k}");
    }
    assert_eq!(many.state_stats(), one.state_stats());
    let dir = vigil_tests::TempDir::new(&format!("batch-{}", config.maintain_every));
    let (a, b) = (dir.join("one.snap"), dir.join("many.snap"));
    one.save_snapshot(&a, b"").expect("snapshot");
    many.save_snapshot(&b, b"").expect("snapshot");
    let same = std::fs::read(&a).expect("read") == std::fs::read(&b).expect("read");
    assert!(same, "the two engines' snapshots differ");
}

#[test]
fn a_batch_and_single_decisions_on_other_threads_share_the_state_without_deadlock() {
    let events = sample_with_redeliveries();
    let pack = vigil_engine::packs::load(
        &vigil_tests::root().join("rules/packs/default"),
        &PackOptions::default(),
    )
    .expect("pack");
    // Sweeps inline every 997 events, on either thread, or after a batch that saw one due.
    let config = EngineConfig {
        maintain_every: 997,
        future_ms: Some(60 * 86_400_000),
        ..EngineConfig::default()
    };
    let engine = std::sync::Arc::new(Engine::new(pack, config));
    // Half the accounts decided in batches on one thread, half one at a time on another (one
    // account's events stay with one caller); devices and merchants are shared.
    let (odd, even): (Vec<_>, Vec<_>) = events
        .iter()
        .filter_map(|e| match e {
            Event::Tx(t) => Some(t.clone()),
            Event::Account(_) => None,
        })
        .partition(|t| t.account_id.bytes().last().unwrap_or(0) % 2 == 1);
    assert!(
        odd.len() > 1000 && even.len() > 1000,
        "{} {}",
        odd.len(),
        even.len()
    );
    let total = odd.len() + even.len();
    let ids: std::collections::BTreeSet<String> = odd
        .iter()
        .chain(&even)
        .map(|t| t.tx_id.to_string())
        .collect();
    let (done, finished) = std::sync::mpsc::channel();
    let batches = {
        let (engine, done) = (engine.clone(), done.clone());
        std::thread::spawn(move || {
            let mut scratch = vigil_engine::engine::Scratch::default();
            let mut n = 0;
            engine.decide_batch(&odd, &mut scratch, |_, _| n += 1);
            done.send(n).expect("send");
        })
    };
    let singles = std::thread::spawn(move || {
        let mut scratch = vigil_engine::engine::Scratch::default();
        let n = even
            .iter()
            .map(|t| engine.decide_into(t, &mut scratch))
            .count();
        done.send(n).expect("send");
        engine
    });
    let timeout = std::time::Duration::from_secs(120);
    let a = finished.recv_timeout(timeout).expect("no deadlock");
    let b = finished.recv_timeout(timeout).expect("no deadlock");
    batches.join().expect("batches");
    let engine = singles.join().expect("singles");
    // Every transaction decided once. A redelivery is a duplicate unless a sweep forgot its
    // original first: the watermark is both threads', and the thread ahead in event time can
    // take it more than the tx ids' seven days past the other's events (the sample's early
    // years are sparse), so how many are found depends on the threads' pace.
    assert_eq!(a + b, total);
    let (found, redelivered) = (engine.duplicate_events() as usize, total - ids.len());
    assert!(
        found <= redelivered && found * 2 > redelivered,
        "{found} of {redelivered} redeliveries found"
    );
}
