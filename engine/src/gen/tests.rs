//! Tests of the generator's output as a consumer sees it: parsed JSON lines.

use super::{GenConfig, GenStats, generate};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::OnceLock;

const SCENARIOS: [&str; 5] = [
    "account_takeover",
    "card_testing",
    "impossible_travel",
    "amount_anomaly",
    "mule_fan_in",
];
use vigil_rules::catalog::{ACCOUNT_EVENT_KINDS as ACCT_KINDS, TX_KINDS};

fn run(cfg: &GenConfig) -> (Vec<u8>, GenStats) {
    let mut out = Vec::new();
    let mut calls = 0u64;
    let mut last = (0, 0);
    let stats = generate(cfg, &mut out, &mut |done, total| {
        calls += 1;
        assert!(done <= total, "progress {done}/{total}");
        last = (done, total);
    })
    .unwrap();
    assert!(calls >= 1);
    assert_eq!(last.0, last.1, "final progress call reports completion");
    (out, stats)
}

fn small(seed: u64) -> GenConfig {
    GenConfig {
        accounts: 150,
        days: 5,
        seed,
        ..GenConfig::default()
    }
}

/// The 2000-account, 14-day run shared by the heavier tests.
fn big() -> &'static (Vec<u8>, GenStats) {
    static BIG: OnceLock<(Vec<u8>, GenStats)> = OnceLock::new();
    BIG.get_or_init(|| {
        run(&GenConfig {
            accounts: 2000,
            days: 14,
            ..GenConfig::default()
        })
    })
}

fn lines(out: &[u8]) -> Vec<&str> {
    let text = std::str::from_utf8(out).unwrap();
    assert!(text.ends_with('\n'));
    text.lines().collect()
}

fn parse(line: &str) -> serde_json::Map<String, Value> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(map)) => map,
        other => panic!("not a JSON object: {line}: {other:?}"),
    }
}

fn str_field<'a>(obj: &'a serde_json::Map<String, Value>, key: &str, line: &str) -> &'a str {
    obj.get(key)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("missing string {key}: {line}"))
}

/// Parses a decimal string amount into minor units, checking the currency's decimals.
fn minor_units(amount: &str, currency: &str) -> i64 {
    let decimals = match currency {
        "EUR" | "USD" | "GBP" => 2,
        "JPY" => 0,
        other => panic!("unexpected currency {other}"),
    };
    let (int, frac) = amount.split_once('.').unwrap_or((amount, ""));
    assert_eq!(frac.len(), decimals, "{amount} {currency}");
    assert!(
        !int.is_empty() && int.bytes().all(|b| b.is_ascii_digit()),
        "{amount}"
    );
    assert!(frac.bytes().all(|b| b.is_ascii_digit()), "{amount}");
    assert!(int.len() == 1 || !int.starts_with('0'), "{amount}");
    let minor: i64 = format!("{int}{frac}").parse().unwrap();
    assert!(minor > 0, "{amount}");
    minor
}

fn check_ts(ts: &str) {
    let b = ts.as_bytes();
    assert_eq!(b.len(), 24, "{ts}");
    assert!(ts.ends_with('Z') && b[10] == b'T' && b[19] == b'.', "{ts}");
    let fmt = time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::parse(ts, &fmt).unwrap_or_else(|e| panic!("{ts}: {e}"));
}

/// `"key":<number>` in the raw line has exactly four decimals.
fn four_decimals(line: &str, key: &str) -> bool {
    let pat = format!("\"{key}\":");
    let Some(pos) = line.find(&pat) else {
        return false;
    };
    let rest = &line[pos + pat.len()..];
    let num: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
        .collect();
    num.split_once('.').is_some_and(|(_, f)| f.len() == 4)
}

fn check_geo(obj: &serde_json::Map<String, Value>, line: &str) -> bool {
    let Some(geo) = obj.get("geo") else {
        return false;
    };
    let lat = geo["lat"].as_f64().unwrap();
    let lon = geo["lon"].as_f64().unwrap();
    assert!(
        (-90.0..=90.0).contains(&lat) && (-180.0..=180.0).contains(&lon),
        "{line}"
    );
    let country = geo["country"].as_str().unwrap();
    assert!(
        country.len() == 2 && country.bytes().all(|b| b.is_ascii_uppercase()),
        "{line}"
    );
    assert!(
        four_decimals(line, "lat") && four_decimals(line, "lon"),
        "{line}"
    );
    true
}

fn check_common(obj: &serde_json::Map<String, Value>, line: &str) {
    assert_eq!(obj.get("schema").and_then(Value::as_u64), Some(1), "{line}");
    check_ts(str_field(obj, "ts", line));
    assert!(
        str_field(obj, "account_id", line).starts_with("a-"),
        "{line}"
    );
    assert!(
        str_field(obj, "device_id", line).starts_with("d-"),
        "{line}"
    );
    let ip: Vec<u8> = str_field(obj, "ip", line)
        .split('.')
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(ip.len(), 4, "{line}");
    assert!(obj.values().all(|v| !v.is_null()), "no nulls: {line}");
}

fn check_tx(obj: &serde_json::Map<String, Value>, line: &str) {
    assert!(str_field(obj, "tx_id", line).starts_with("t-"));
    let kind = str_field(obj, "kind", line);
    assert!(TX_KINDS.contains(&kind), "{line}");
    let cp = str_field(obj, "counterparty_id", line);
    let prefix = match kind {
        "transfer" => "a-",
        "payment" | "refund" => "m-",
        "withdrawal" => "bank-",
        _ => "card-",
    };
    assert!(cp.starts_with(prefix), "{line}");
    assert_ne!(cp, str_field(obj, "account_id", line), "{line}");
    minor_units(
        str_field(obj, "amount", line),
        str_field(obj, "currency", line),
    );
    assert!(
        ["app", "web", "api", "pos"].contains(&str_field(obj, "channel", line)),
        "{line}"
    );
    let fraud = obj
        .get("is_fraud")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| panic!("{line}"));
    match obj.get("fraud_scenario") {
        Some(s) => assert!(fraud && SCENARIOS.contains(&s.as_str().unwrap()), "{line}"),
        None => assert!(!fraud, "{line}"),
    }
    if let Some(memo) = obj.get("memo") {
        assert!(
            memo.as_str()
                .is_some_and(|m| !m.is_empty() && m.len() <= 40),
            "{line}"
        );
    }
}

fn check_acct(obj: &serde_json::Map<String, Value>, line: &str) {
    assert!(str_field(obj, "event_id", line).starts_with("e-"));
    let kind = str_field(obj, "kind", line);
    assert!(ACCT_KINDS.contains(&kind), "{line}");
    assert!(
        !obj.contains_key("is_fraud") && !obj.contains_key("fraud_scenario"),
        "{line}"
    );
    assert_eq!(
        obj.contains_key("counterparty_id"),
        kind == "payee_added",
        "{line}"
    );
    assert_eq!(
        obj.contains_key("locale"),
        kind == "account_opened",
        "{line}"
    );
    if let Some(l) = obj.get("locale") {
        assert!(["en", "zh"].contains(&l.as_str().unwrap()), "{line}");
    }
    assert_eq!(
        obj.contains_key("currency"),
        kind == "account_opened",
        "{line}"
    );
}

#[test]
fn same_seed_gives_identical_bytes_and_different_seed_differs() {
    let (a, sa) = run(&small(42));
    let (b, sb) = run(&small(42));
    let (c, _) = run(&small(43));
    assert!(!a.is_empty());
    assert_eq!(a, b);
    assert_eq!(sa, sb);
    assert_ne!(a, c);
}

#[test]
fn every_line_is_a_valid_event_and_stats_match() {
    let (out, stats) = big();
    let lines = lines(out);
    let (mut txs, mut accts, mut fraud, mut no_geo) = (0u64, 0u64, 0u64, 0usize);
    let mut by_scenario: BTreeMap<String, u64> = BTreeMap::new();
    let mut ids = BTreeSet::new();
    for line in &lines {
        let obj = parse(line);
        check_common(&obj, line);
        if !check_geo(&obj, line) {
            no_geo += 1;
        }
        if obj.contains_key("tx_id") {
            check_tx(&obj, line);
            txs += 1;
            assert!(
                ids.insert(str_field(&obj, "tx_id", line).to_owned()),
                "duplicate {line}"
            );
            if let Some(s) = obj.get("fraud_scenario").and_then(Value::as_str) {
                fraud += 1;
                *by_scenario.entry(s.to_owned()).or_default() += 1;
            }
        } else {
            check_acct(&obj, line);
            accts += 1;
            assert!(
                ids.insert(str_field(&obj, "event_id", line).to_owned()),
                "duplicate {line}"
            );
        }
    }
    assert_eq!(stats.events, lines.len() as u64);
    assert_eq!((stats.transactions, stats.account_events), (txs, accts));
    assert_eq!(stats.fraud_transactions, fraud);
    for (name, n) in &stats.by_scenario {
        assert_eq!(by_scenario.get(name).copied().unwrap_or(0), *n, "{name}");
    }
    let missing = no_geo as f64 / lines.len() as f64;
    assert!(
        (0.01..0.06).contains(&missing),
        "geo missing on {missing:.3} of events"
    );
}

#[test]
fn lines_are_sorted_by_ts() {
    let (out, _) = big();
    let ts: Vec<String> = lines(out)
        .iter()
        .map(|l| parse(l)["ts"].as_str().unwrap().to_owned())
        .collect();
    assert!(ts.len() > 1000);
    for w in ts.windows(2) {
        assert!(w[0] <= w[1], "{} then {}", w[0], w[1]);
    }
}

#[test]
fn every_scenario_appears_and_fraud_share_is_plausible() {
    let (out, stats) = big();
    let mut per: BTreeMap<String, u64> = BTreeMap::new();
    let mut txs = 0u64;
    for line in lines(out) {
        let obj = parse(line);
        if obj.contains_key("tx_id") {
            txs += 1;
            if let Some(s) = obj.get("fraud_scenario").and_then(Value::as_str) {
                *per.entry(s.to_owned()).or_default() += 1;
            }
        }
    }
    for s in SCENARIOS {
        assert!(
            per.get(s).copied().unwrap_or(0) >= 1,
            "no fraud tx for {s}: {per:?}"
        );
    }
    let share = per.values().sum::<u64>() as f64 / txs as f64;
    assert!((0.001..=0.10).contains(&share), "fraud share {share}");
    assert_eq!(stats.by_scenario.len(), SCENARIOS.len());
}

#[test]
fn accounts_open_first_keep_one_currency_and_never_go_negative() {
    let (out, _) = big();
    let mut currency: BTreeMap<String, String> = BTreeMap::new();
    let mut opened: BTreeSet<String> = BTreeSet::new();
    let mut balance: BTreeMap<String, i64> = BTreeMap::new();
    let mut ledger_checks = 0u64;
    for line in lines(out) {
        let obj = parse(line);
        let account = str_field(&obj, "account_id", line).to_owned();
        let kind = str_field(&obj, "kind", line);
        if kind == "account_opened" {
            assert!(opened.insert(account.clone()), "opened twice: {line}");
            continue;
        }
        assert!(
            opened.contains(&account),
            "event before account_opened: {line}"
        );
        if !obj.contains_key("tx_id") {
            continue;
        }
        let cur = str_field(&obj, "currency", line);
        let known = currency
            .entry(account.clone())
            .or_insert_with(|| cur.to_owned());
        assert_eq!(known, cur, "currency changed: {line}");
        let amount = minor_units(str_field(&obj, "amount", line), cur);
        let bal = balance.entry(account.clone()).or_insert(0);
        match kind {
            "top_up" | "refund" => *bal += amount,
            _ => {
                *bal -= amount;
                ledger_checks += 1;
                assert!(*bal >= 0, "{account} overdrawn to {bal}: {line}");
                if kind == "transfer" {
                    let to = str_field(&obj, "counterparty_id", line).to_owned();
                    *balance.entry(to).or_insert(0) += amount;
                }
            }
        }
    }
    assert!(ledger_checks > 10_000);
    assert!(opened.len() >= 2000);
}

#[test]
fn population_matches_the_brief() {
    let (out, _) = big();
    let (mut opened, mut zh, mut during, mut before) = (0u32, 0u32, 0u32, 0u32);
    let mut currencies: BTreeMap<String, u32> = BTreeMap::new();
    let mut seen: BTreeSet<String> = BTreeSet::new();
    let mut channels: BTreeSet<String> = BTreeSet::new();
    let mut countries: BTreeSet<String> = BTreeSet::new();
    for line in lines(out) {
        let obj = parse(line);
        let ts = str_field(&obj, "ts", line);
        if let Some(c) = obj.get("geo").and_then(|g| g["country"].as_str()) {
            countries.insert(c.to_owned());
        }
        match str_field(&obj, "kind", line) {
            "account_opened" => {
                opened += 1;
                zh += u32::from(obj["locale"] == "zh");
                if ts >= "2026-11-01" {
                    during += 1
                } else {
                    before += 1
                }
                assert!(ts >= "2022-09", "older than 1500 days: {line}");
            }
            _ if obj.contains_key("tx_id") => {
                channels.insert(str_field(&obj, "channel", line).to_owned());
                let account = str_field(&obj, "account_id", line).to_owned();
                if seen.insert(account) {
                    *currencies
                        .entry(str_field(&obj, "currency", line).to_owned())
                        .or_default() += 1;
                }
            }
            _ => {}
        }
    }
    let pct = |n: u32| f64::from(n) * 100.0 / f64::from(opened);
    assert!((10.0..20.0).contains(&pct(zh)), "zh {:.1}%", pct(zh));
    assert!(
        (1.5..7.0).contains(&pct(during)),
        "opened during period {:.1}%",
        pct(during)
    );
    assert!(before > during * 10);
    assert!(currencies["EUR"] > currencies["USD"] && currencies["USD"] > currencies["JPY"]);
    assert!(currencies.contains_key("GBP"), "{currencies:?}");
    assert_eq!(channels.len(), 4, "{channels:?}");
    assert!(countries.len() >= 15, "{countries:?}");
}

#[test]
fn labels_follow_the_scenarios() {
    let (out, _) = big();
    let mut card_amounts = Vec::new();
    let mut mule_withdrawals = 0;
    for line in lines(out) {
        let obj = parse(line);
        let Some(s) = obj.get("fraud_scenario").and_then(Value::as_str) else {
            continue;
        };
        let kind = str_field(&obj, "kind", line);
        let cur = str_field(&obj, "currency", line);
        let amount = minor_units(str_field(&obj, "amount", line), cur);
        match s {
            "account_takeover" => assert_eq!(kind, "transfer", "{line}"),
            "card_testing" => {
                assert_eq!(
                    (kind, str_field(&obj, "channel", line)),
                    ("payment", "web"),
                    "{line}"
                );
                card_amounts.push(amount);
            }
            "impossible_travel" => assert_eq!(kind, "payment", "{line}"),
            "amount_anomaly" => assert!(["transfer", "payment"].contains(&kind), "{line}"),
            "mule_fan_in" if kind == "withdrawal" => mule_withdrawals += 1,
            "mule_fan_in" => assert_eq!(kind, "transfer", "{line}"),
            _ => panic!("unknown scenario {line}"),
        }
    }
    let tiny = card_amounts
        .iter()
        .filter(|&&a| (50..=499).contains(&a))
        .count();
    assert!(
        tiny >= 10 && tiny * 10 >= card_amounts.len() * 8,
        "{card_amounts:?}"
    );
    assert!(mule_withdrawals >= 1);
}

#[test]
fn zero_accounts_and_bad_fraud_rate() {
    let (out, stats) = run(&GenConfig {
        accounts: 0,
        ..small(1)
    });
    assert!(out.is_empty());
    assert_eq!(stats.events, 0);
    let bad = GenConfig {
        fraud_rate: 1.5,
        ..small(1)
    };
    let err = generate(&bad, &mut Vec::new(), &mut |_, _| {}).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidInput);
}
