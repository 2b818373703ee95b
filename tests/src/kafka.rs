//! Helpers for tests of the Kafka path against a real Kafka-protocol broker: librdkafka's mock
//! cluster, in process, or with `VIGIL_TEST_BROKERS=host:port` an external broker such as tansu
//! (each test gets its own topic names and group, so tests can share it).

// Test helpers fail loudly: unwrapping is how they report.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
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

use crate::root;

/// A broker for one test: its own topic names, so tests can share an external broker.
#[derive(Debug)]
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
        settlements: format!("{}-{tag}", d.settlements),
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
            // No pausing: a resumed partition is fetched again from inside a batch, which
            // tansu 0.6 cannot serve (see `one_record_batches`: too slow for a whole suite).
            // The kill -9 test writes one-record batches and runs `vigil serve` with its
            // default pausing.
            cfg.pause_at = usize::MAX;
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

impl Broker {
    /// The embedded cluster, when the tests run on it (not on an external broker).
    pub fn embedded(&self) -> Option<&Embedded> {
        self._embedded.as_ref()
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
    /// Where it is: partition and offset.
    pub at: (i32, i64),
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
        tpl.add_partition_offset(topic, p.id(), Offset::Beginning)
            .unwrap();
        if high > low {
            left.insert(p.id(), high);
        }
    }
    let mut out = Vec::new();
    c.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    // On past the reported ends until quiet: tansu's memory storage reports a high watermark
    // short of the last batch.
    let mut last = Instant::now();
    while !left.is_empty() || last.elapsed() < Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "reading {topic} timed out");
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        last = Instant::now();
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
            at: (m.partition(), m.offset()),
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

pub fn sample() -> Vec<u8> {
    let mut buf = Vec::new();
    std::io::Read::read_to_end(
        &mut replay::open(&root().join("replay-data/sample.jsonl.gz")).unwrap(),
        &mut buf,
    )
    .unwrap();
    buf
}

pub fn replay_decisions(input: &[u8]) -> BTreeMap<String, String> {
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

/// Asserts that every decision of `want` (tx_id → JSON, as [`replay_decisions`] gives) is in
/// `got` byte for byte, showing the first three that are not.
pub fn assert_same_decisions(got: &BTreeMap<String, String>, want: &BTreeMap<String, String>) {
    let diffs: Vec<_> = want
        .iter()
        .filter(|(k, v)| got.get(*k) != Some(*v))
        .take(3)
        .map(|(k, v)| format!("want {v}\n got {:?}", got.get(k)))
        .collect();
    assert!(diffs.is_empty(), "{}", diffs.join("\n"));
}

/// Produces raw `(topic, key, payload)` records as they are, acknowledged before it returns.
pub fn produce_raw(cfg: &StreamConfig, records: &[(&str, &str, Vec<u8>)]) {
    use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
    let p: BaseProducer = client_config(cfg).create().unwrap();
    for (topic, key, payload) in records {
        p.send(BaseRecord::to(topic).key(*key).payload(payload))
            .unwrap();
    }
    p.flush(Duration::from_secs(30)).unwrap();
}

pub fn lines(input: &[u8]) -> Vec<&[u8]> {
    input
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .collect()
}

/// The effects a single-partition run must produce: from replay's decisions in arrival order,
/// one freeze request per account (the first), its account_frozen notice, and the rules'
/// notifications except blocked-transfer notices to an account already frozen.
pub fn expected_effects(input: &[u8]) -> (Vec<String>, Vec<(String, String)>) {
    let decisions = replay_decisions(input);
    let mut by_order: Vec<serde_json::Value> = decisions
        .values()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    by_order.sort_by_key(|d| d["ts"].as_str().unwrap().to_string());
    let mut frozen = HashSet::new();
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

/// Whether the broker lets tests expect replay's exact event-time order. The pipeline finds
/// where an input partition ends from the broker's high watermark; tansu's `memory://`
/// storage reports it short of the last batch, so there an account event near a partition's
/// end can be applied after a later transaction. On such a broker (`VIGIL_TEST_BROKERS`) the
/// tests check what does not depend on it: every event once, no effect repeated.
pub fn exact_order() -> bool {
    std::env::var("VIGIL_TEST_BROKERS").map_or(true, |b| b.is_empty())
}

/// `cfg` for a producer whose records a consumer may start reading anywhere (after a pause, a
/// rebalance or a restart). On an external broker each record is its own batch: tansu 0.6
/// (memory storage) answers a fetch from an offset inside a record batch with the batches
/// after it, silently skipping the rest of that one. (Real Kafka returns the whole batch and
/// the client drops the records before the offset.)
pub fn one_record_batches(cfg: &StreamConfig) -> StreamConfig {
    let mut cfg = cfg.clone();
    if !exact_order() {
        cfg.client.insert("batch.num.messages".into(), "1".into());
    }
    cfg
}

/// Asserts `got == want` on the embedded broker; elsewhere only that `got` has no repeats.
pub fn assert_same_or_unique<T: std::fmt::Debug + Ord + Clone>(got: &[T], want: &[T], what: &str) {
    if exact_order() {
        assert_eq!(got, want, "{what}");
    } else {
        let mut u = got.to_vec();
        u.sort();
        u.dedup();
        assert_eq!(u.len(), got.len(), "{what}: repeated");
    }
}
