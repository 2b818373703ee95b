//! The Kafka path against a real Kafka-protocol broker: librdkafka's mock cluster, in process
//! (or, with `VIGIL_TEST_BROKERS=host:port`, an external broker such as tansu).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};
use vigil_engine::packs;
use vigil_engine::replay::{self, Order};
use vigil_engine::stream::embedded::Embedded;
use vigil_engine::stream::produce::produce;
use vigil_engine::stream::{
    Pipeline, Stats, StreamConfig, Topics, admin_create_topics, client_config,
};
use vigil_engine::{Engine, EngineConfig};
use vigil_rules::PackOptions;
use vigil_tests::root;

/// A broker for one test: its own topic names, so tests can share an external broker.
pub struct Broker {
    pub cfg: StreamConfig,
    _embedded: Option<Embedded>,
}

static TEST_NO: AtomicU64 = AtomicU64::new(0);

pub fn broker(partitions: i32) -> Broker {
    let n = TEST_NO.fetch_add(1, Ordering::Relaxed);
    let tag = format!("{}-{n}", std::process::id());
    let d = Topics::default();
    let topics = Topics {
        transactions: format!("{}-{tag}", d.transactions),
        account_events: format!("{}-{tag}", d.account_events),
        decisions: format!("{}-{tag}", d.decisions),
        freezes: format!("{}-{tag}", d.freezes),
        notifications: format!("{}-{tag}", d.notifications),
        dlq: format!("{}-{tag}", d.dlq),
    };
    let mut cfg = StreamConfig {
        group_id: format!("vigil-test-{tag}"),
        topics,
        session_timeout: Duration::from_secs(6),
        ..StreamConfig::default()
    };
    match std::env::var("VIGIL_TEST_BROKERS") {
        Ok(b) if !b.is_empty() => {
            cfg.brokers = b;
            admin_create_topics(
                &cfg,
                partitions,
                Duration::from_secs(60),
                &AtomicBool::new(false),
            )
            .unwrap();
            Broker {
                cfg,
                _embedded: None,
            }
        }
        _ => {
            let e = Embedded::start(1, &cfg.topics, partitions).unwrap();
            cfg.brokers = e.bootstrap().to_string();
            Broker {
                cfg,
                _embedded: Some(e),
            }
        }
    }
}

pub fn engine() -> Arc<Engine> {
    let pack = packs::load(&root().join("rules/packs/default"), &PackOptions::default()).unwrap();
    Arc::new(Engine::new(pack, EngineConfig::default()))
}

pub fn feed(cfg: &StreamConfig, lines: &[u8]) -> u64 {
    let p = produce(cfg, lines, None, &AtomicBool::new(false), |_| {}).unwrap();
    assert_eq!(p.failed, 0);
    p.transactions + p.account_events
}

/// A record read back.
#[derive(Debug, Clone)]
pub struct Record {
    pub key: String,
    pub value: String,
    pub headers: BTreeMap<String, String>,
}

/// Everything on `topic` now.
pub fn read_all(cfg: &StreamConfig, topic: &str) -> Vec<Record> {
    let c: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}-reader", cfg.group_id))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let md = c
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut left = HashMap::new();
    for p in md.topics().iter().flat_map(|t| t.partitions()) {
        let (low, high) = c
            .fetch_watermarks(topic, p.id(), Duration::from_secs(10))
            .unwrap();
        if high > low {
            tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
                .unwrap();
            left.insert(p.id(), high);
        }
    }
    let mut out = Vec::new();
    if left.is_empty() {
        return out;
    }
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !left.is_empty() {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(m) = c.poll(Duration::from_millis(200)) else {
            continue;
        };
        let m = m.unwrap();
        let headers = m
            .headers()
            .map(|h| {
                h.iter()
                    .map(|x| {
                        (
                            x.key.to_string(),
                            String::from_utf8_lossy(x.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.push(Record {
            key: String::from_utf8_lossy(m.key().unwrap_or_default()).into_owned(),
            value: String::from_utf8_lossy(m.payload().unwrap_or_default()).into_owned(),
            headers,
        });
        if left
            .get(&m.partition())
            .is_some_and(|h| m.offset() + 1 >= *h)
        {
            left.remove(&m.partition());
        }
    }
    out
}

/// Runs a pipeline until it handled `n` messages.
pub fn run(engine: Arc<Engine>, cfg: &StreamConfig, n: u64) -> Arc<Stats> {
    let mut cfg = cfg.clone();
    cfg.max_messages = Some(n);
    cfg.idle_exit = Some(Duration::from_secs(30));
    let p = Pipeline::new(engine, cfg);
    let stats = p.stats();
    let s = p.run().unwrap();
    assert_eq!(s.consumed, n, "stopped before handling every message");
    stats
}

fn sample() -> Vec<u8> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut replay::open(&root().join("replay-data/sample.jsonl.gz")).unwrap(),
        &mut buf,
    )
    .unwrap();
    buf
}

fn replay_decisions(input: &[u8]) -> BTreeMap<String, String> {
    let engine = engine();
    let mut out = Vec::new();
    replay::run(
        &engine,
        replay::read(input).unwrap(),
        Order::Arrival,
        Some(&mut out),
        &mut |_, _| {},
    )
    .unwrap();
    String::from_utf8(out)
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["tx_id"].as_str().unwrap().to_string(), l.to_string())
        })
        .collect()
}

#[test]
fn one_partition_decides_exactly_as_replay() {
    let b = broker(1);
    let input = sample();
    let n = feed(&b.cfg, &input);
    run(engine(), &b.cfg, n);
    let got: BTreeMap<String, String> = read_all(&b.cfg, &b.cfg.topics.decisions)
        .into_iter()
        .map(|r| (r.key, r.value))
        .collect();
    let want = replay_decisions(&input);
    assert_eq!(got.len(), want.len());
    let diffs: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .take(3)
        .map(|(k, v)| format!("want {v}\n got {:?}", got.get(k)))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Produces raw `(topic, key, payload)` records as they are, acknowledged before it returns.
fn produce_raw(cfg: &StreamConfig, records: &[(&str, &str, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = client_config(cfg).create().unwrap();
    for (topic, key, payload) in records {
        p.send(BaseRecord::to(topic).key(*key).payload(payload))
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

fn lines(input: &[u8]) -> Vec<&[u8]> {
    input
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect()
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

/// The effects a single-partition run must produce: from replay's decisions in arrival order,
/// one freeze request per account (the first), its account_frozen notice, and the rules'
/// notifications except blocked-transfer notices to an account already frozen.
fn expected_effects(input: &[u8]) -> (Vec<String>, Vec<(String, String)>) {
    let decisions = replay_decisions(input);
    let mut by_order: Vec<serde_json::Value> = decisions
        .values()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    by_order.sort_by_key(|d| d["ts"].as_str().unwrap().to_string());
    let mut frozen = std::collections::HashSet::new();
    let (mut freezes, mut notes) = (Vec::new(), Vec::new());
    for d in by_order {
        let (tx, acc) = (
            d["tx_id"].as_str().unwrap(),
            d["account_id"].as_str().unwrap(),
        );
        let was_frozen = frozen.contains(acc);
        if let Some(n) = d["notify"].as_str()
            && !(was_frozen && n == "blocked_transfer")
        {
            notes.push((n.to_string(), tx.to_string()));
        }
        if d["freeze"] == true && !was_frozen {
            frozen.insert(acc.to_string());
            freezes.push(tx.to_string());
            notes.push(("account_frozen".to_string(), tx.to_string()));
        }
    }
    freezes.sort();
    notes.sort();
    (freezes, notes)
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
    assert_eq!(got, want_freezes);
    assert_eq!(Stats::get(&stats.freezes), want_freezes.len() as u64);

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
    assert_eq!(got, want_notes);
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
    let n = feed(&cfg, &input);
    let consumed = || stats.iter().map(|s| Stats::get(&s.consumed)).sum::<u64>();
    while consumed() < n {
        assert!(
            Instant::now() < deadline,
            "only {} of {n} handled",
            consumed()
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
    assert_eq!(ids.len(), replay_decisions(&input).len());
}
