//! The Grafana dashboard and the Prometheus alert rules query only metrics Vigil exports.

use std::collections::BTreeSet;
use std::sync::Arc;

use vigil_engine::event::Event;
use vigil_engine::metrics::Metrics;
use vigil_engine::stream::Stats;
use vigil_tests::kafka::engine;
use vigil_tests::root;

/// Every `vigil_…` metric name in `text` (recording rules are `vigil:…` and not metrics).
fn referenced(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let bytes = text.as_bytes();
    let mut i = 0;
    while let Some(at) = text[i..].find("vigil_") {
        let start = i + at;
        let before = start.checked_sub(1).map(|b| bytes[b]);
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        if !before.is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b':') {
            let name = &text[start..end];
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(name);
            out.insert(base.to_string());
        }
        i = end;
    }
    out
}

/// The metric families a running Vigil exports, with every labelled family used once.
fn exported() -> BTreeSet<String> {
    let engine = engine();
    let m = Arc::new(Metrics::new());
    engine.set_metrics(m.clone());
    let input = vigil_tests::kafka::sample();
    for line in vigil_tests::kafka::lines(&input).into_iter().take(500) {
        if let Ok(Event::Tx(tx)) = vigil_engine::decode(line) {
            engine.decide(&tx);
        }
    }
    let stats = Arc::new(Stats::default());
    stats
        .lag
        .lock()
        .unwrap()
        .insert(("transactions".into(), 0), 5);
    m.watch_stream(stats);
    m.reload("failed");
    m.verdict(&["card.testing_burst".into()], "fraud");
    m.http_request("/v1/authorize", 200);
    m.audited("freeze");
    let text = m.render(&engine);
    text.lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_string)
        .collect()
}

#[test]
fn the_dashboard_and_the_alerts_query_only_exported_metrics() {
    let have = exported();
    assert!(have.contains("vigil_decisions_total"), "{have:?}");
    for file in ["ops/grafana/vigil.json", "ops/prometheus/alerts.yml"] {
        let text = std::fs::read_to_string(root().join(file)).unwrap();
        let wanted = referenced(&text);
        assert!(wanted.len() >= 6, "{file}: {wanted:?}");
        let missing: Vec<_> = wanted.difference(&have).collect();
        assert!(
            missing.is_empty(),
            "{file} queries metrics Vigil does not export: {missing:?}"
        );
    }
    // The dashboard is valid JSON with the panels operators look for.
    let dash: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("ops/grafana/vigil.json")).unwrap(),
    )
    .unwrap();
    let titles: Vec<&str> = dash["panels"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["title"].as_str().unwrap())
        .collect();
    for want in [
        "Decisions by action",
        "Decision latency",
        "Consumer lag by partition",
        "Top rules (hits/s)",
        "Freezes and notifications",
        "Settlements by outcome",
    ] {
        assert!(titles.contains(&want), "{titles:?}");
    }
}

#[test]
fn the_reference_scanner_finds_names_and_skips_recording_rules() {
    let got =
        referenced("sum(rate(vigil_x_total[5m])) / vigil:ratio:rate5m + vigil_y_seconds_bucket");
    assert_eq!(
        got.into_iter().collect::<Vec<_>>(),
        ["vigil_x_total", "vigil_y_seconds"]
    );
}
