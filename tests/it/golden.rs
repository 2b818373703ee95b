//! Golden replay scenarios: `replay-data/golden/<name>/` holds `events.jsonl`, optionally
//! `scenario.toml` (rules dir, order, lateness) and `rules/`, and the expected
//! `decisions.jsonl` and `rejected.txt`. A run must match them byte for byte, and two runs must
//! match each other.

use std::path::Path;

use vigil_engine::packs;
use vigil_engine::replay::{self, Order};
use vigil_engine::{Engine, EngineConfig};
use vigil_rules::PackOptions;
use vigil_tests::{assert_golden, root};

struct Scenario {
    rules: std::path::PathBuf,
    order: Order,
    lateness_ms: i64,
}

fn scenario(dir: &Path) -> Scenario {
    let mut s = Scenario {
        rules: root().join("rules/packs/default"),
        order: Order::EventTime,
        lateness_ms: 300_000,
    };
    if let Ok(text) = std::fs::read_to_string(dir.join("scenario.toml")) {
        let t: toml::Table = toml::from_str(&text).expect("scenario.toml");
        if let Some(r) = t.get("rules").and_then(|v| v.as_str()) {
            s.rules = dir.join(r);
        }
        match t.get("order").and_then(|v| v.as_str()) {
            Some("arrival") => s.order = Order::Arrival,
            Some("event-time") | None => {}
            Some(o) => panic!("unknown order {o}"),
        }
        if let Some(l) = t.get("lateness").and_then(|v| v.as_str()) {
            let mins: i64 = l
                .trim_end_matches('m')
                .parse()
                .expect("lateness in minutes, e.g. 5m");
            s.lateness_ms = mins * 60_000;
        }
    }
    s
}

/// Replays a scenario; returns (decisions, rejected lines).
fn run(dir: &Path) -> (Vec<u8>, Vec<u8>) {
    let s = scenario(dir);
    let pack = packs::load(&s.rules, &PackOptions::default()).expect("pack loads");
    let engine = Engine::new(
        pack,
        EngineConfig {
            lateness_ms: s.lateness_ms,
            id_secret: Some(vigil_engine::state::REPLAY_SECRET),
            ..EngineConfig::default()
        },
    );
    let input = replay::read(replay::open(&dir.join("events.jsonl")).expect("open")).expect("read");
    let rejected: String = input
        .rejected
        .iter()
        .map(|r| format!("line {}: {}\n", r.line, r.error))
        .collect();
    let mut out = Vec::new();
    replay::run(&engine, input, s.order, Some(&mut out), &mut |_, _| {}).expect("replay");
    (out, rejected.into_bytes())
}

fn check(name: &str) {
    let dir = root().join("replay-data/golden").join(name);
    let (decisions, rejected) = run(&dir);
    assert_golden(&dir.join("decisions.jsonl"), &decisions);
    assert_golden(&dir.join("rejected.txt"), &rejected);
    let (again, _) = run(&dir);
    assert!(
        again == decisions,
        "{name}: two runs of the same input differ"
    );
}

#[test]
fn golden_takeover_and_card_testing_story() {
    check("takeover");
}

#[test]
fn golden_generated_traffic() {
    check("generated");
}

#[test]
fn golden_bad_input_lines_are_reported_and_skipped() {
    check("bad-input");
}

#[test]
fn golden_late_and_duplicate_events_in_arrival_order() {
    check("late-duplicate");
}

#[test]
fn every_golden_scenario_has_a_test() {
    let mut names: Vec<String> = std::fs::read_dir(root().join("replay-data/golden"))
        .expect("golden dir")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        ["bad-input", "generated", "late-duplicate", "takeover"]
    );
}
