//! `vigil serve` as a process: killed with SIGKILL, or stopped with SIGTERM, in the middle of
//! the stream and restarted, it loses no decision, repeats no effect and counts no event twice.
//!
//! The broker is the in-process mock cluster of this test, or with `VIGIL_TEST_BROKERS` an
//! external one (CI runs this against tansu).

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};

use vigil_engine::stream::StreamConfig;
use vigil_engine::stream::produce::produce;
use vigil_tests::kafka::{
    assert_same_or_unique, broker, exact_order, expected_effects, lines, one_record_batches,
    read_all, replay_decisions, sample,
};
use vigil_tests::{Running, TempDir};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap()
}

/// `vigil serve` on the test's broker and topics, logging to `log`.
fn serve(cfg: &StreamConfig, state: &Path, log: &Path, extra: &[&str]) -> Running {
    let t = &cfg.topics;
    Running(
        Command::new(env!("CARGO_BIN_EXE_vigil"))
            .args([
                "serve",
                "--brokers",
                &cfg.brokers,
                "--group-id",
                &cfg.group_id,
            ])
            .arg("--state-dir")
            .arg(state)
            .args(extra)
            // The restart is the same member: it gets its partitions back without waiting for
            // the killed one's session to time out (which tansu never does).
            .args(["--instance-id", "vigil-kill9"])
            .env("VIGIL_SNAPSHOT_EVERY", "200ms")
            .env("VIGIL_TOPIC_TRANSACTIONS", &t.transactions)
            .env("VIGIL_TOPIC_ACCOUNT_EVENTS", &t.account_events)
            .env("VIGIL_TOPIC_DECISIONS", &t.decisions)
            .env("VIGIL_TOPIC_FREEZES", &t.freezes)
            .env("VIGIL_TOPIC_NOTIFICATIONS", &t.notifications)
            .env("VIGIL_TOPIC_DLQ", &t.dlq)
            .env("VIGIL_TOPIC_SETTLEMENTS", &t.settlements)
            .args(["--http", "off"])
            // The test's client properties (see `broker`), as VIGIL_KAFKA_* overrides.
            .envs(cfg.client.iter().map(|(k, v)| {
                (
                    format!("VIGIL_KAFKA_{}", k.to_ascii_uppercase().replace('.', "_")),
                    v.clone(),
                )
            }))
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

/// Messages on `topic` now (sum of high watermarks).
fn count(c: &BaseConsumer, topic: &str) -> i64 {
    let Ok(md) = c.fetch_metadata(Some(topic), Duration::from_secs(5)) else {
        return 0;
    };
    md.topics()
        .iter()
        .flat_map(|t| t.partitions())
        .filter_map(|p| {
            c.fetch_watermarks(topic, p.id(), Duration::from_secs(5))
                .ok()
        })
        .map(|(_, high)| high)
        .sum()
}

/// Waits up to `secs` for `child` to exit (its log at `log`); panics, naming `when`, if it
/// does not (the child is then killed as it drops).
fn exit_within(child: &mut Running, secs: u64, when: &str, log: &Path) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "vigil serve still running {secs} s {when}:\n{}",
            log_of(log)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_of(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// How the test stops the first `vigil serve`.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Stop {
    /// SIGKILL: no flush, no snapshot, no commit.
    Kill,
    /// SIGTERM: a graceful stop (flush, snapshot, commit), which must end the process.
    Term,
}

/// Messages `vigil serve` said it handled ("stopped cleanly after N messages"), if it said so.
fn handled_in(log: &str) -> Option<u64> {
    log.split("stopped cleanly after ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
}

#[test]
fn kill_9_and_restart_loses_nothing_and_repeats_nothing() {
    interrupt_and_restart(Stop::Kill);
}

#[test]
fn sigterm_stops_gracefully_and_a_restart_repeats_nothing() {
    interrupt_and_restart(Stop::Term);
}

fn interrupt_and_restart(how: Stop) {
    let b = broker(1);
    // The restart reads the input and the outputs from wherever the snapshot left off.
    let cfg = one_record_batches(&b.cfg);
    let dir = TempDir::new(&format!("{how:?}").to_lowercase());
    let state = dir.join("state");
    let input = sample();
    let txs = lines(&input)
        .iter()
        .filter(|l| l.windows(7).any(|w| w == b"\"tx_id\""))
        .count() as i64;

    let log1 = dir.join("first.log");
    let mut first = serve(&cfg, &state, &log1, &["--log-level", "debug"]);
    let deadline = Instant::now() + Duration::from_secs(90);
    while !log_of(&log1).contains("INFO assigned") {
        if let Some(status) = first.try_wait().unwrap() {
            panic!("vigil serve exited ({status}):\n{}", log_of(&log1));
        }
        assert!(
            Instant::now() < deadline,
            "never assigned:\n{}",
            log_of(&log1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Feed at a bounded rate while the first process runs, so it is killed mid-stream.
    let feeder = {
        let (cfg, input) = (cfg.clone(), input.clone());
        std::thread::spawn(move || {
            produce(
                &cfg,
                &input[..],
                Some(8_000),
                &AtomicBool::new(false),
                |_| {},
            )
            .unwrap()
        })
    };
    let snapshot = state.join("state.snap");
    let watch: BaseConsumer = vigil_engine::stream::client_config(&cfg).create().unwrap();
    loop {
        let decided = count(&watch, &cfg.topics.decisions);
        // A snapshot with some state in it (an empty one is a few hundred bytes).
        let snapshot_bytes = std::fs::metadata(&snapshot).map_or(0, |m| m.len());
        if snapshot_bytes > 100_000 && decided > txs / 4 {
            assert!(
                decided < txs,
                "the feed outran the test: nothing left to kill"
            );
            break;
        }
        if let Some(status) = first.try_wait().unwrap() {
            panic!("vigil serve exited ({status}):\n{}", log_of(&log1));
        }
        assert!(
            Instant::now() < deadline,
            "no progress ({decided} decided):\n{}",
            log_of(&log1)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Messages the first process handled, when it says (a graceful stop).
    let mut handled_first = None;
    match how {
        Stop::Kill => {
            first.kill().unwrap(); // SIGKILL
            first.wait().unwrap();
            eprintln!("--- first vigil serve, killed:\n{}", log_of(&log1));
        }
        Stop::Term => {
            let pid = first.id().to_string();
            let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            assert!(sent.success(), "kill -TERM {pid} failed");
            // Each step of its shutdown (flush, delivery reports, commit) is bounded by
            // shutdown_timeout (10 s); with this little state they take well under a second.
            let status = exit_within(&mut first, 30, "after SIGTERM", &log1);
            let log = log_of(&log1);
            eprintln!("--- first vigil serve, stopped by SIGTERM:\n{log}");
            assert!(status.success(), "exit after SIGTERM: {status}\n{log}");
            assert!(
                log.contains("stopping gracefully"),
                "the signal was not taken:\n{log}"
            );
            handled_first = handled_in(&log);
            assert!(
                handled_first.is_some_and(|n| n > 0),
                "no clean stop after SIGTERM:\n{log}"
            );
        }
    }

    let produced = feeder.join().unwrap();
    assert_eq!(produced.failed, 0);
    let log2 = dir.join("second.log");
    // On the embedded broker the restart rejoins its group as the same static member and gets
    // its partitions back at once. tansu 0.6 never expires the killed member and sometimes
    // takes the partitions back from the restarted one and never assigns them again, so
    // against an external broker the restart joins a group of its own: where it starts reading
    // comes from its snapshot either way, not from the group's committed offsets.
    let mut restart_cfg = cfg.clone();
    if !exact_order() {
        restart_cfg.group_id = format!("{}-restart", cfg.group_id);
    }
    let mut second = serve(
        &restart_cfg,
        &state,
        &log2,
        &["--idle-exit", "4s", "--log-level", "debug"],
    );
    let status = exit_within(&mut second, 120, "(the restart)", &log2);
    let log = log_of(&log2);
    eprintln!("--- restarted vigil serve:\n{log}");
    assert!(status.success(), "restart failed ({status}):\n{log}");
    assert!(
        log.contains("restored"),
        "the restart restored no snapshot:\n{log}"
    );

    // Every transaction decided exactly once, and exactly as one uninterrupted replay decides
    // it: an event counted twice in a window (or lost) would change later decisions.
    let decisions = read_all(&cfg, &cfg.topics.decisions);
    let handled = handled_in(&log).unwrap_or(0);
    assert!(handled > 0, "the restart handled nothing:\n{log}");
    if let Some(first) = handled_first.filter(|_| exact_order()) {
        // A graceful stop committed and snapshotted all it handled: the restart reads on from
        // there, so between them every input message was handled exactly once.
        let total = produced.transactions + produced.account_events;
        assert_eq!(
            first + handled,
            total,
            "handled {first} before SIGTERM and {handled} after, of {total}:\n{log}"
        );
    }
    let mut got = BTreeMap::new();
    let mut at = BTreeMap::new();
    for r in &decisions {
        if let Some(before) = at.insert(r.key.clone(), r.at) {
            let copies: Vec<(i32, i64)> = read_all(&cfg, &cfg.topics.transactions)
                .iter()
                .filter(|t| t.value.contains(&format!("\"{}\"", r.key)))
                .map(|t| t.at)
                .collect();
            panic!(
                "{} decided twice: at {before:?} and {:?} (on the input topic at {copies:?})\n{}",
                r.key,
                r.at,
                log_of(&log2)
            );
        }
        got.insert(r.key.clone(), r.value.clone());
    }
    let want = replay_decisions(&input);
    if got.len() != want.len() {
        let inputs = read_all(&cfg, &cfg.topics.transactions);
        let missing: Vec<String> = want
            .keys()
            .filter(|k| !got.contains_key(*k))
            .map(|k| {
                let at: Vec<(i32, i64)> = inputs
                    .iter()
                    .filter(|t| t.value.contains(&format!("\"{k}\"")))
                    .map(|t| t.at)
                    .collect();
                format!("{k} (on the input topic at {at:?})")
            })
            .collect();
        let last = decisions.iter().map(|r| r.at).max();
        panic!(
            "{} decisions, {} transactions: missing {missing:?}; {} input records read back; last decision at {last:?}\n{}",
            got.len(),
            want.len(),
            inputs.len(),
            log_of(&log2)
        );
    }
    for (k, v) in want.iter().filter(|_| exact_order()) {
        assert_eq!(
            got.get(k),
            Some(v),
            "{k} decided differently after the restart"
        );
    }

    // Freeze requests and notifications: each once, the same as an uninterrupted run.
    let (want_freezes, want_notes) = expected_effects(&input);
    let mut freezes: Vec<String> = read_all(&cfg, &cfg.topics.freezes)
        .iter()
        .map(|r| serde_json::from_str::<serde_json::Value>(&r.value).unwrap()["tx_id"].to_string())
        .map(|s| s.trim_matches('"').to_string())
        .collect();
    freezes.sort();
    assert_same_or_unique(&freezes, &want_freezes, "freeze requests");
    let mut notes: Vec<(String, String)> = Vec::new();
    let mut seen = HashSet::new();
    for r in read_all(&cfg, &cfg.topics.notifications) {
        let v: serde_json::Value = serde_json::from_str(&r.value).unwrap();
        let k = (
            v["kind"].as_str().unwrap().to_string(),
            v["tx_id"].as_str().unwrap().to_string(),
        );
        assert!(seen.insert(k.clone()), "notification repeated: {k:?}");
        notes.push(k);
    }
    notes.sort();
    assert_same_or_unique(&notes, &want_notes, "notifications");
}
