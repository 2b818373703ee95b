//! The consume → decide → produce loop, its commits and snapshots.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, Producer, ThreadedProducer};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use serde::{Deserialize, Serialize};
use vigil_rules::Action;

use super::align::{self, Align, Item};
use super::track::{Delivery, SLOTS_MAX, Tracker, opaque};
use super::{Out, Stats, StreamConfig, StreamError, notify};
use crate::decision::Decision;
use crate::engine::{BATCH, Engine, Scratch};
use crate::event::{Event, Transaction, TxKind, decode};
use crate::ledger::{Ledger, LedgerError, Outcome, Status as LedgerStatus};

/// The header naming the effect a record is, e.g. `decision:t-1`; read back after a crash so
/// no effect is produced twice.
pub const EFFECT_HEADER: &str = "vigil-effect";

/// An effect of a transaction, produced once however often the transaction is redelivered: its
/// id (see [`Effect::write_id`]) goes in the [`EFFECT_HEADER`] on the Kafka pipeline and on
/// HTTP publishing alike.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect<'a> {
    /// `decision:{tx_id}`.
    Decision,
    /// `settlement:{tx_id}`.
    Settlement,
    /// `freeze:{tx_id}`.
    Freeze,
    /// `notification:{kind}:{tx_id}`.
    Notification(&'a str),
}

impl Effect<'_> {
    /// Writes the effect's id for transaction `tx_id` into `out` (cleared first).
    pub fn write_id(self, tx_id: &str, out: &mut String) {
        out.clear();
        match self {
            Effect::Decision => out.push_str("decision:"),
            Effect::Settlement => out.push_str("settlement:"),
            Effect::Freeze => out.push_str("freeze:"),
            Effect::Notification(kind) => {
                out.push_str("notification:");
                out.push_str(kind);
                out.push(':');
            }
        }
        out.push_str(tx_id);
    }

    /// The effect's id for transaction `tx_id`.
    pub fn id(self, tx_id: &str) -> String {
        let mut s = String::with_capacity(tx_id.len() + 24);
        self.write_id(tx_id, &mut s);
        s
    }
}
const SNAPSHOT_FILE: &str = "state.snap";

/// What a run did.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Input messages handled.
    pub consumed: u64,
    /// Seconds it ran.
    pub seconds: f64,
    /// Whether it restored a snapshot.
    pub restored: bool,
}

/// Where a snapshot left off: source positions and the output topics' ends.
#[derive(Debug, Default, Serialize, Deserialize)]
struct SnapMeta {
    /// (topic, partition, next offset to read).
    sources: Vec<(String, i32, i64)>,
    /// (topic, partition, end offset when the snapshot was taken).
    outputs: Vec<(String, i32, i64)>,
}

/// librdkafka's log lines, through `tracing`.
pub(crate) fn log_kafka(client: &str, level: RDKafkaLogLevel, fac: &str, message: &str) {
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => tracing::error!("kafka {client} {fac}: {message}"),
        RDKafkaLogLevel::Warning => tracing::warn!("kafka {client} {fac}: {message}"),
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!("kafka {client} {fac}: {message}")
        }
        RDKafkaLogLevel::Debug => tracing::debug!("kafka {client} {fac}: {message}"),
    }
}

static LAST_ERROR_LOG_MS: AtomicI64 = AtomicI64::new(0);

/// Wall-clock time for the `requested_at` of freeze requests and for log throttling, never
/// for a decision.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A client error, at most one line every two seconds (a broker that is down repeats itself).
pub(crate) fn log_kafka_error(client: &str, error: &KafkaError, reason: &str) {
    let now = now_ms();
    let last = LAST_ERROR_LOG_MS.load(Ordering::Relaxed);
    if now - last >= 2000
        && LAST_ERROR_LOG_MS
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    {
        tracing::warn!("kafka {client}: {error}: {reason} (retrying)");
    }
}

/// The client settings every Vigil client shares: brokers and the user's extra properties.
pub fn client_config(cfg: &StreamConfig) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &cfg.brokers);
    c.set("client.id", "vigil");
    for (k, v) in &cfg.client {
        c.set(k, v);
    }
    c
}

/// Client properties Vigil's guarantees rest on: offsets committed only by Vigil, partitions
/// of both input topics paired (range assignment, eager rebalances), outputs written once. A
/// user's value for one of these is ignored (and said so); `group.id` and
/// `group.instance.id` have settings of their own.
pub const PROTECTED_PROPERTIES: [&str; 8] = [
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "partition.assignment.strategy",
    "auto.offset.reset",
    "enable.idempotence",
    "acks",
];

/// `c` with the user's properties applied again over Vigil's tuning, so they win (e.g. a
/// different `linger.ms`, or `batch.num.messages = 1` for a broker that cannot serve a fetch
/// from inside a batch) — all but the [`PROTECTED_PROPERTIES`].
pub(crate) fn user_wins<'a>(c: &'a mut ClientConfig, cfg: &StreamConfig) -> &'a mut ClientConfig {
    static WARNED: AtomicBool = AtomicBool::new(false);
    for (k, v) in &cfg.client {
        if PROTECTED_PROPERTIES.contains(&k.as_str()) {
            if !WARNED.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    "kafka property {k} = {v} ignored: Vigil sets it itself (its delivery guarantees depend on it)"
                );
            }
            continue;
        }
        c.set(k, v);
    }
    c
}

/// Creates the topics through the admin API (real brokers), retrying with backoff while the
/// brokers cannot be reached (a warning every few seconds); topics that exist are left as
/// they are. Returns `Ok` at once when `stop` is set meanwhile.
pub fn admin_create_topics(
    cfg: &StreamConfig,
    partitions: i32,
    give_up_after: Duration,
    stop: &AtomicBool,
) -> Result<(), StreamError> {
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    let topics = cfg.topics.all();
    // Topics that exist are left alone, and a broker without the admin API (such as another
    // Vigil's embedded one) is fine when they all do.
    match missing_topics(cfg, &topics) {
        Ok(missing) if missing.is_empty() => {
            tracing::info!("topics exist: {}", topics.join(", "));
            return Ok(());
        }
        Ok(_) => {}
        Err(e) => tracing::warn!("waiting for brokers at {}: {e}", cfg.brokers),
    }
    let admin: AdminClient<DefaultClientContext> = client_config(cfg).create()?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
        .collect();
    // Each attempt gives up after a few seconds (librdkafka's default waits a minute), so an
    // unreachable broker is said every few seconds and a stop is heard soon.
    let opts = AdminOptions::new()
        .operation_timeout(Some(Duration::from_secs(5)))
        .request_timeout(Some(Duration::from_secs(5)));
    let start = Instant::now();
    let mut backoff = Duration::from_millis(250);
    loop {
        match futures_executor::block_on(admin.create_topics(new.iter(), &opts)) {
            Ok(results) => {
                for r in results {
                    match r {
                        Ok(t) => tracing::info!("created topic {t} ({partitions} partitions)"),
                        Err((t, RDKafkaErrorCode::TopicAlreadyExists)) => {
                            tracing::debug!("topic {t} exists")
                        }
                        Err((t, e)) => {
                            return Err(StreamError::Other(format!(
                                "cannot create topic {t}: {e}"
                            )));
                        }
                    }
                }
                return Ok(());
            }
            Err(_) if stop.load(Ordering::Relaxed) => {
                tracing::info!("stopped while waiting for brokers at {}", cfg.brokers);
                return Ok(());
            }
            Err(e) if start.elapsed() < give_up_after => {
                tracing::warn!(
                    "waiting for brokers at {}: {e}; retrying in {:.1}s",
                    cfg.brokers,
                    backoff.as_secs_f64()
                );
                // Asleep in steps, to hear a stop.
                let wake = Instant::now() + backoff;
                while Instant::now() < wake && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
            Err(e) => {
                return Err(StreamError::Other(format!(
                    "brokers at {} unreachable for {:.0}s: {e}",
                    cfg.brokers,
                    start.elapsed().as_secs_f64()
                )));
            }
        }
    }
}

/// Which of `topics` the cluster does not have.
fn missing_topics<'a>(cfg: &StreamConfig, topics: &[&'a str]) -> Result<Vec<&'a str>, StreamError> {
    let c: BaseConsumer = client_config(cfg).create()?;
    let md = c.fetch_metadata(None, Duration::from_secs(5))?;
    let have: HashSet<&str> = md
        .topics()
        .iter()
        .filter(|t| t.error().is_none() && !t.partitions().is_empty())
        .map(|t| t.name())
        .collect();
    Ok(topics
        .iter()
        .copied()
        .filter(|t| !have.contains(t))
        .collect())
}

/// The read-back's set of effects already produced holds hashes, keyed (an effect names a
/// client's tx id: an unkeyed hash would let one be built to suppress another's output).
fn effect_hash(effect: &str) -> u64 {
    use std::hash::BuildHasher;
    crate::state::process_keyed().hash_one(effect)
}

/// How often the settlements waiting for a payee are looked at.
const AWAITING_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Most settlements waiting for a payee at once; past it, a transfer to a payee not there is
/// declined at once (a flood of transfers to payees that never open holds no more memory).
const AWAITING_MAX: usize = 100_000;

/// How long the read-back goes on without a record once past the reported ends.
const READ_BACK_QUIET: Duration = Duration::from_millis(500);

/// Offsets by (output or input topic index, partition).
pub type Positions = HashMap<(u8, i32), i64>;

/// Reads the output topics from `bases` (or their beginning) to their current end and returns
/// the effects found there, and the ends reached. Once `stop` is set it returns what it has:
/// the caller must then write nothing (the ends were not all reached).
pub fn read_effects(
    cfg: &StreamConfig,
    bases: &Positions,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<(HashSet<u64>, Positions), StreamError> {
    let consumer: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}-readback", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .create()?;
    let outputs = cfg.topics.outputs();
    let mut tpl = TopicPartitionList::new();
    let mut want: HashMap<(String, i32), i64> = HashMap::new();
    let mut ends = HashMap::new();
    let mut records = 0i64;
    for (i, topic) in outputs.iter().enumerate() {
        let md = consumer.fetch_metadata(Some(topic), Duration::from_secs(10))?;
        for t in md.topics() {
            for p in t.partitions() {
                let (low, high) =
                    consumer.fetch_watermarks(topic, p.id(), Duration::from_secs(10))?;
                let key = (i as u8, p.id());
                let start = bases.get(&key).copied().unwrap_or(low).max(low);
                ends.insert(key, high);
                // Every partition, even one that looks read: the reported end may be short.
                tpl.add_partition_offset(topic, p.id(), Offset::Offset(start))?;
                if start < high {
                    want.insert(((*topic).to_string(), p.id()), high);
                    records += high - start;
                }
            }
        }
    }
    let mut effects = HashSet::new();
    if tpl.count() == 0 {
        return Ok((effects, ends));
    }
    tracing::info!(
        "reading back {} output partition(s) written since the snapshot, so no effect repeats",
        want.len()
    );
    consumer.assign(&tpl)?;
    let deadline = Instant::now() + timeout;
    let mut read = 0u64;
    // Past the reported ends, read on until quiet: some brokers (tansu's memory storage)
    // report a high watermark short of the last batch.
    let mut last = Instant::now();
    while (!want.is_empty() || last.elapsed() < READ_BACK_QUIET)
        && Instant::now() < deadline
        && !stop.load(Ordering::Relaxed)
    {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                read += 1;
                last = Instant::now();
                if let Some(h) = m.headers() {
                    for hd in h.iter() {
                        if hd.key == EFFECT_HEADER
                            && let Some(v) = hd.value.and_then(|v| std::str::from_utf8(v).ok())
                        {
                            effects.insert(effect_hash(v));
                        }
                    }
                }
                if let Some(i) = outputs.iter().position(|t| *t == m.topic()) {
                    let end = ends.entry((i as u8, m.partition())).or_insert(0);
                    *end = (*end).max(m.offset() + 1);
                }
                let key = (m.topic().to_string(), m.partition());
                if want.get(&key).is_some_and(|&h| m.offset() + 1 >= h) {
                    want.remove(&key);
                }
            }
            Some(Err(e)) => log_kafka_error("read-back", &e, "reading output topics"),
            None => {}
        }
    }
    if !want.is_empty() && !stop.load(Ordering::Relaxed) {
        tracing::warn!(
            "read-back stopped after {:.0}s with {} partition(s) unread (of ~{records} records); effects there may repeat",
            timeout.as_secs_f64(),
            want.len()
        );
    }
    tracing::info!("read back {read} output records, {} effects", effects.len());
    Ok((effects, ends))
}

/// The consumer's `fetch.queue.backoff.ms` (see where it is set).
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

/// How long the pipeline may hold no input partition before it says so (then every ten times
/// as long while it lasts).
const UNASSIGNED_WARN: Duration = Duration::from_secs(60);

/// Longest an event waits for the other input topic.
const ALIGN_WAIT_MAX: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct Slots {
    by_key: HashMap<(u8, i32), u16>,
    keys: Vec<(u8, i32)>,
}

/// Where reading a partition starts (asked for only while nothing was read from it: see
/// [`ends`]) and its high watermark, and when they were learnt.
type Watermarks = (Option<i64>, i64, Instant);

/// A transaction whose turn it is, waiting to be decided with the others of its turn.
#[derive(Debug)]
struct Ready {
    tx: Transaction,
    slot: u16,
    offset: i64,
    /// [`Tracker::resets`] when it became ready.
    resets: u64,
}

impl std::borrow::Borrow<Transaction> for Ready {
    fn borrow(&self) -> &Transaction {
        &self.tx
    }
}

/// A decided transfer whose settlement waits for its payee's ledger account (see
/// `StreamConfig::payee_wait`); its message is held open in the tracker meanwhile.
#[derive(Debug)]
struct AwaitingPayee {
    tx: Transaction,
    d: Decision,
    slot: u16,
    offset: i64,
    /// [`Tracker::resets`] when it began to wait.
    resets: u64,
    since: Instant,
}

/// What the loop carries from one message to the next: the transactions waiting to be decided
/// at the end of its turn, and buffers it reuses.
#[derive(Debug, Default)]
struct Work {
    scratch: Scratch,
    /// Transactions whose turn it is, decided together ([`Pipeline::decide_ready`]): at the
    /// end of the loop's turn, before an account event is applied, once [`BATCH`] wait, after
    /// an alignment check, and when the pipeline stops. Begun in the tracker, not acknowledged:
    /// no commit or snapshot covers them until they are decided.
    ready: Vec<Ready>,
    /// Their decisions.
    decisions: Vec<Decision>,
    /// A decision's JSON.
    json: Vec<u8>,
    /// An effect header's value.
    effect: String,
}

/// What the worker and the rebalance callback share.
struct Shared {
    engine: Arc<Engine>,
    cfg: StreamConfig,
    stats: Arc<Stats>,
    tracker: Arc<Tracker>,
    producer: ThreadedProducer<Delivery>,
    slots: Mutex<Slots>,
    /// Snapshot positions still to apply when their partition is first assigned.
    resume: Mutex<HashMap<(u8, i32), i64>>,
    /// Output ends known from the last snapshot or read-back.
    out_bases: Mutex<HashMap<(u8, i32), i64>>,
    /// Positions committed last, per slot, and when they were sent.
    committed: Mutex<HashMap<u16, (i64, Instant)>>,
    /// Events waiting for their turn (see [`align`]).
    align: Mutex<Align>,
    /// Last known offsets of input partitions, by (side, partition).
    highs: Mutex<HashMap<(usize, i32), Watermarks>>,
    /// The ledger that settles decided transactions, if any.
    ledger: Option<Ledger>,
    /// The highest ledger ticket handed out: durable before any commit.
    ledger_ticket: AtomicU64,
    /// Settlements waiting for their payee's account, in the order they were decided.
    awaiting_payee: Mutex<Vec<AwaitingPayee>>,
    /// Once the pipeline is ending: when its graceful end must be done, which a checkpoint
    /// for a revoke (while the shutdown commit serves a rebalance, or as the consumer closes)
    /// does not extend.
    ending_by: Mutex<Option<Instant>>,
}

impl Shared {
    /// `shutdown_timeout` from now, or the end's deadline once the pipeline is ending.
    fn deadline(&self) -> Instant {
        let d = Instant::now() + self.cfg.shutdown_timeout;
        lock(&self.ending_by).map_or(d, |e| e.min(d))
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

/// The pipeline's output producer settings (before the user's own, which win where allowed).
pub fn output_producer_config(cfg: &StreamConfig) -> ClientConfig {
    let mut c = client_config(cfg);
    c.set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "10")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("queue.buffering.max.kbytes", "1048576")
        // Retry until delivered: a broker that is away stalls the pipeline (and its commits)
        // instead of losing an output.
        .set("message.timeout.ms", "0");
    c
}

/// Where each `(side, partition, unread)` of `parts` ends (its high watermark) and, for the
/// unread ones (nothing read from them yet), where reading starts: the snapshot's resume
/// offset or the group's committed one, else the beginning. All the highs in one request (and
/// the starts in two more) instead of a round trip per partition, each waiting behind the
/// consumer's fetch; when the broker fails the batch (one partition's error fails it whole),
/// each partition is asked alone. A partition nothing could be learnt about is left out.
fn ends(
    consumer: &BaseConsumer<Rebalancer>,
    inputs: [&str; 2],
    parts: &[(usize, i32, bool)],
    resume: &HashMap<(u8, i32), i64>,
    timeout: Duration,
) -> HashMap<(usize, i32), (Option<i64>, i64)> {
    let ask = |at: Offset, unread_only: bool| -> Option<HashMap<(usize, i32), i64>> {
        let mut tpl = TopicPartitionList::new();
        for &(side, p, _) in parts.iter().filter(|part| !unread_only || part.2) {
            if let Err(err) = tpl.add_partition_offset(inputs[side], p, at) {
                tracing::debug!("{}/{p}: {err}", inputs[side]);
            }
        }
        match consumer.offsets_for_times(tpl, timeout) {
            Ok(found) => Some(
                found
                    .elements()
                    .iter()
                    .filter(|e| e.error().is_ok())
                    .filter_map(|e| {
                        let side = inputs.iter().position(|t| *t == e.topic())?;
                        Some(((side, e.partition()), offset_of(e)?))
                    })
                    .collect(),
            ),
            Err(err) => {
                tracing::debug!("cannot read the partitions' ends together: {err}");
                None
            }
        }
    };
    let mut found: HashMap<(usize, i32), (Option<i64>, i64)> = match ask(Offset::End, false) {
        Some(highs) => highs.into_iter().map(|(k, h)| (k, (None, h))).collect(),
        None => parts
            .iter()
            .filter_map(
                |&(side, p, _)| match consumer.fetch_watermarks(inputs[side], p, timeout) {
                    Ok((low, high)) => Some(((side, p), (Some(low), high))),
                    Err(err) => {
                        tracing::debug!("{}/{p}: cannot read watermarks: {err}", inputs[side]);
                        None
                    }
                },
            )
            .collect(),
    };
    let unread: Vec<(usize, i32)> = parts
        .iter()
        .filter(|part| part.2 && found.contains_key(&(part.0, part.1)))
        .map(|part| (part.0, part.1))
        .collect();
    if unread.is_empty() {
        return found;
    }
    let lows = if unread.iter().any(|k| found[k].0.is_none()) {
        ask(Offset::Beginning, true).unwrap_or_default()
    } else {
        HashMap::new()
    };
    let mut tpl = TopicPartitionList::new();
    for &(side, p) in &unread {
        tpl.add_partition(inputs[side], p);
    }
    let committed = match consumer.committed_offsets(tpl, timeout) {
        Ok(c) => Some(c),
        Err(err) => {
            tracing::debug!("cannot read the group's offsets: {err}");
            None
        }
    };
    for k @ (side, p) in unread {
        let Some(f) = found.get_mut(&k) else { continue };
        let low = f.0.or_else(|| lows.get(&k).copied());
        let from = resume.get(&(side as u8, p)).copied().or_else(|| {
            committed
                .as_ref()?
                .find_partition(inputs[side], p)
                .and_then(|e| offset_of(&e))
        });
        f.0 = low.map(|low| from.map_or(low, |o| o.max(low)));
    }
    found
}

/// A list element's offset when it is a real one (not beginning, end, stored or invalid).
fn offset_of(e: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> Option<i64> {
    match e.offset() {
        Offset::Offset(n) => Some(n),
        _ => None,
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

struct Rebalancer(Arc<Shared>);

impl ClientContext for Rebalancer {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        log_kafka("consumer", level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_kafka_error("consumer", &error, reason);
    }
    fn stats(&self, statistics: rdkafka::Statistics) {
        let mut lag = crate::metrics::Lag::new();
        for (name, topic) in statistics.topics {
            for (id, p) in topic.partitions {
                // -1 is librdkafka's internal partition.
                if id < 0 || !p.desired {
                    continue;
                }
                // Nothing committed yet (-1001): everything from the low end is outstanding.
                let behind = if p.consumer_lag >= 0 {
                    p.consumer_lag
                } else if p.hi_offset >= 0 {
                    p.hi_offset - p.lo_offset.max(0)
                } else {
                    continue;
                };
                lag.insert((name.clone(), id), behind.max(0));
            }
        }
        *lock(&self.0.stats.lag) = lag;
    }
}

impl ConsumerContext for Rebalancer {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        let s = &self.0;
        let mut names: Vec<String> = tpl
            .elements()
            .iter()
            .map(|e| format!("{}/{}", e.topic(), e.partition()))
            .collect();
        if names.is_empty() {
            // A member of a group with more members than partitions.
            names.push("no partitions".into());
        }
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                // Where the restored state left off (kept until the partition's first message
                // is read, so an assignment taken back before that still starts there).
                let resume = lock(&s.resume);
                let inputs = s.cfg.topics.inputs();
                let mut seek = Vec::new();
                for e in tpl.elements() {
                    if let Some(t) = inputs.iter().position(|t| *t == e.topic())
                        && let Some(&off) = resume.get(&(t as u8, e.partition()))
                    {
                        seek.push((t as u8, e.topic().to_string(), e.partition(), off));
                    }
                }
                drop(resume);
                // A partition whose group offset is past the snapshot was read and committed
                // by another member while this one was away: start where the group is (this
                // state has not seen those messages) rather than decide them again and commit
                // behind the group.
                // The group's offsets, kept: one at or past the snapshot's shows the log did
                // reach it (below).
                let mut group_at: HashMap<(String, i32), i64> = HashMap::new();
                if !seek.is_empty() {
                    let mut asked = TopicPartitionList::new();
                    for (_, topic, part, _) in &seek {
                        asked.add_partition(topic, *part);
                    }
                    match consumer.committed_offsets(asked, Duration::from_secs(10)) {
                        Ok(group) => seek.retain(|(t, topic, part, off)| {
                            let committed =
                                group.find_partition(topic, *part).and_then(|e| offset_of(&e));
                            if let Some(c) = committed {
                                group_at.insert((topic.clone(), *part), c);
                            }
                            let ahead = committed.filter(|c| c > off);
                            let Some(c) = ahead else { return true };
                            tracing::warn!(
                                "{topic}/{part}: the group's offset {c} is past this snapshot's {off}: another member decided {} messages meanwhile; starting at {c} (this state has not seen them)",
                                c - off
                            );
                            lock(&s.resume).remove(&(*t, *part));
                            false
                        }),
                        Err(e) => tracing::warn!(
                            "cannot read the group's offsets ({e}): resuming at the snapshot's"
                        ),
                    }
                }
                // An offset past the log's end names a log that is gone (the topic was made
                // again, the broker lost its data): seeking there would skip that many of
                // the new log's messages once they arrive. Start where the group is instead.
                // A group offset at or past the snapshot's shows the log reached it; a broker
                // may report its end short of the last batch (tansu), so the end is asked
                // twice before the snapshot's offset is given up.
                let still_past_end = |topic: &str, part: i32, off: i64| {
                    std::thread::sleep(Duration::from_millis(200));
                    consumer
                        .fetch_watermarks(topic, part, Duration::from_secs(10))
                        .is_ok_and(|(_, high)| off > high)
                };
                seek.retain(|(t, topic, part, off)| {
                    let reached = group_at
                        .get(&(topic.clone(), *part))
                        .is_some_and(|c| c >= off);
                    match consumer.fetch_watermarks(topic, *part, Duration::from_secs(10)) {
                        Ok((_, high))
                            if *off > high && !reached && still_past_end(topic, *part, *off) =>
                        {
                            tracing::warn!(
                                "{topic}/{part}: this snapshot's offset {off} is past the log's end ({high}): the topic was recreated or the broker lost data; starting at the group's offset (or the beginning), with this state"
                            );
                            lock(&s.resume).remove(&(*t, *part));
                            false
                        }
                        _ => true,
                    }
                });
                for (_, topic, part, off) in seek {
                    if let Err(e) = tpl.set_partition_offset(&topic, part, Offset::Offset(off)) {
                        tracing::error!("{topic}/{part}: cannot resume at {off}: {e}");
                    } else {
                        tracing::info!("{topic}/{part}: resuming at snapshot offset {off}");
                    }
                }
                tracing::info!("assigned {}", names.join(", "));
                if let Err(e) = consumer.assign(tpl) {
                    tracing::error!("cannot take the assignment: {e}");
                } else {
                    // librdkafka keeps a partition paused across a revoke and a new
                    // assignment; the alignment's pauses ended with the revoke.
                    if let Err(e) = consumer.resume(tpl) {
                        tracing::warn!("cannot resume the assigned partitions: {e}");
                    }
                    s.stats
                        .assigned
                        .store(tpl.count() as u64, Ordering::Relaxed);
                }
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                tracing::info!("revoked {}; finishing what is in flight", names.join(", "));
                // Settlements waiting for a payee are made now (a payee still not there is
                // declined), so the checkpoint commits past them: left held, the next owner
                // would read and decide again everything after the oldest.
                if let Err(e) = s.settle_awaiting(&HashSet::new(), true) {
                    tracing::error!("settling the transfers waiting for their payee failed: {e}");
                    s.tracker.fail(format!("settling before a revoke: {e}"));
                }
                if let Err(e) = s.checkpoint(consumer, CommitMode::Sync, "rebalance", s.deadline())
                {
                    tracing::error!("checkpoint before giving up partitions failed: {e}");
                }
                let slots = lock(&s.slots);
                let inputs = s.cfg.topics.inputs();
                for e in tpl.elements() {
                    if let Some(t) = inputs.iter().position(|t| *t == e.topic())
                        && let Some(&slot) = slots.by_key.get(&(t as u8, e.partition()))
                    {
                        s.tracker.reset(slot);
                        lock(&s.committed).remove(&slot);
                        lock(&s.align).forget(e.partition());
                    }
                    if let Some(t) = inputs.iter().position(|t| *t == e.topic()) {
                        // Committed above: the group has it now.
                        lock(&s.resume).remove(&(t as u8, e.partition()));
                    }
                }
                drop(slots);
                s.stats.assigned.store(0, Ordering::Relaxed);
                if let Err(e) = consumer.unassign() {
                    tracing::error!("cannot give up the assignment: {e}");
                }
            }
            other => {
                tracing::error!("rebalance error: {other:?}");
                let _ = consumer.unassign();
            }
        }
    }
}

impl Shared {
    /// Settles the transfers waiting for their payee whose payee's account is open now, or
    /// that waited `payee_wait` (then declined `unknown_account`, as they would have been at
    /// once), or all of them (`all`: the pipeline is ending, or giving its partitions up: a
    /// payee still not there is declined, so that the commit goes past them and nobody reads
    /// them again), each releasing its message. Those of partitions given up meanwhile are
    /// dropped: the next owner reads them again. Run every [`AWAITING_CHECK_EVERY`]: one look
    /// at the ledger for all of them. Returns how many were settled.
    fn settle_awaiting(&self, effects: &HashSet<u64>, all: bool) -> Result<usize, StreamError> {
        let Some(ledger) = &self.ledger else {
            return Ok(0);
        };
        let due: Vec<AwaitingPayee> = {
            let mut q = lock(&self.awaiting_payee);
            if q.is_empty() {
                return Ok(0);
            }
            let opened: Vec<bool> = ledger.read(|b| {
                q.iter()
                    .map(|w| {
                        w.tx.counterparty_id
                            .as_deref()
                            .is_none_or(|p| b.has_account(p))
                    })
                    .collect()
            });
            let mut opened = opened.into_iter();
            let (due, keep) = std::mem::take(&mut *q).into_iter().partition(|w| {
                let opened = opened.next().unwrap_or(true);
                all || opened
                    || w.since.elapsed() >= self.cfg.payee_wait
                    || self.tracker.reset_since(w.slot, w.resets)
            });
            *q = keep;
            due
        };
        let mut settled = 0;
        for w in due {
            if self.tracker.reset_since(w.slot, w.resets) {
                continue;
            }
            Stats::bump(&self.stats.settlements_waited);
            self.settle_now(ledger, effects, &w.tx, &w.d, w.slot, w.offset, true)?;
            self.tracker.ack(w.slot, w.offset);
            settled += 1;
        }
        Ok(settled)
    }

    /// Settles a decided transaction in the ledger now and produces its settlements record —
    /// unless it is a duplicate, or waited for its payee (`waited`), and the ledger already had
    /// it: settled over HTTP meanwhile, which published its record.
    #[allow(clippy::too_many_arguments)]
    fn settle_now(
        &self,
        ledger: &Ledger,
        effects: &HashSet<u64>,
        tx: &Transaction,
        d: &crate::Decision,
        slot: u16,
        offset: i64,
        waited: bool,
    ) -> Result<(), StreamError> {
        let bytes = match ledger.settle_decided(tx, d) {
            Ok((applied, ticket)) => {
                self.ledger_ticket.fetch_max(ticket, Ordering::SeqCst);
                let Outcome::Transfer(t) = &applied.outcome else {
                    return Ok(());
                };
                if (d.duplicate || waited) && applied.replayed {
                    return Ok(());
                }
                let i = match t.status {
                    LedgerStatus::Settled => 0,
                    LedgerStatus::Pending => 1,
                    _ => 2,
                };
                Stats::bump(&self.stats.settlements[i]);
                notify::settlement(tx, t)
            }
            Err(LedgerError::Journal(e)) => {
                return Err(StreamError::Other(format!("ledger: {e}")));
            }
            Err(e) => {
                Stats::bump(&self.stats.settlements[3]);
                let body = serde_json::json!({
                    "tx_id": tx.tx_id,
                    "account_id": tx.account_id,
                    "status": "refused",
                    "error": e.code(),
                    "message": e.to_string(),
                });
                serde_json::to_vec(&body).map_err(|e| StreamError::Other(e.to_string()))?
            }
        };
        self.send(
            effects,
            Out::Settlements,
            tx.tx_id.as_bytes(),
            &bytes,
            &Effect::Settlement.id(&tx.tx_id),
            &[],
            slot,
            offset,
        )?;
        Ok(())
    }

    fn slot(&self, topic: u8, partition: i32) -> Option<u16> {
        let mut s = lock(&self.slots);
        if let Some(&slot) = s.by_key.get(&(topic, partition)) {
            return Some(slot);
        }
        if s.keys.len() >= SLOTS_MAX {
            return None;
        }
        let slot = s.keys.len() as u16;
        s.keys.push((topic, partition));
        s.by_key.insert((topic, partition), slot);
        Some(slot)
    }

    /// Source positions whose every output is acknowledged, and the restored positions of
    /// partitions not read since.
    fn positions(&self) -> Vec<(u16, String, i32, i64)> {
        let inputs = self.cfg.topics.inputs();
        let mut out: Vec<(u16, String, i32, i64)> = {
            let slots = lock(&self.slots);
            slots
                .keys
                .iter()
                .enumerate()
                .filter_map(|(slot, &(t, p))| {
                    let slot = slot as u16;
                    self.tracker
                        .done(slot)
                        .map(|off| (slot, inputs[usize::from(t)].to_string(), p, off))
                })
                .collect()
        };
        let resume: Vec<((u8, i32), i64)> =
            lock(&self.resume).iter().map(|(&k, &v)| (k, v)).collect();
        for ((t, p), off) in resume {
            let topic = inputs[usize::from(t)];
            if out.iter().any(|(_, x, q, _)| x == topic && *q == p) {
                continue;
            }
            if let Some(slot) = self.slot(t, p) {
                out.push((slot, topic.to_string(), p, off));
            }
        }
        out
    }

    fn commit(
        &self,
        consumer: &BaseConsumer<Rebalancer>,
        positions: &[(u16, String, i32, i64)],
        mode: CommitMode,
    ) -> Result<(), StreamError> {
        let mut tpl = TopicPartitionList::new();
        let mut sent = Vec::with_capacity(positions.len());
        {
            // Whether an asynchronous commit succeeded is never reported (librdkafka only logs
            // a failure), so an unchanged position is sent again after a while, and a
            // synchronous commit (rebalance, shutdown) sends every position: otherwise one
            // refused commit would leave the group's offset behind for good, and the next
            // owner would read, and decide again, from there.
            let committed = lock(&self.committed);
            let sync = matches!(mode, CommitMode::Sync);
            let resend = (self.cfg.commit_every * 5).max(Duration::from_secs(1));
            // Only this member's partitions: a snapshot's position for a partition the group
            // gave to another member is not ours to commit (sent again and again, it would
            // move that member's progress back).
            let assigned = consumer.assignment().ok();
            for (slot, topic, p, off) in positions {
                if assigned
                    .as_ref()
                    .is_some_and(|a| a.find_partition(topic, *p).is_none())
                {
                    continue;
                }
                let fresh = committed
                    .get(slot)
                    .is_some_and(|(o, at)| o == off && at.elapsed() < resend);
                if sync || !fresh {
                    tpl.add_partition_offset(topic, *p, Offset::Offset(*off))?;
                    sent.push((*slot, *off));
                }
            }
        }
        if tpl.count() == 0 {
            return Ok(());
        }
        // The ledger's records for these messages are durable before their offsets move.
        if let Some(l) = &self.ledger {
            l.wait(self.ledger_ticket.load(Ordering::SeqCst))
                .map_err(|e| StreamError::Other(format!("ledger: {e}")))?;
        }
        consumer.commit(&tpl, mode)?;
        let mut committed = lock(&self.committed);
        let now = Instant::now();
        for (slot, off) in sent {
            committed.insert(slot, (off, now));
        }
        Stats::bump(&self.stats.commits);
        Ok(())
    }

    fn snapshot_path(&self) -> Option<PathBuf> {
        self.cfg.state_dir.as_ref().map(|d| d.join(SNAPSHOT_FILE))
    }

    /// Flushes outputs, snapshots state (with a state directory) and commits positions; after a
    /// failure ([`Tracker::fail`], or a delivery's) none of that, not even the flush. The
    /// outputs must be acknowledged by `deadline`.
    fn checkpoint(
        &self,
        consumer: &BaseConsumer<Rebalancer>,
        mode: CommitMode,
        why: &str,
        deadline: Instant,
    ) -> Result<(), StreamError> {
        // After a failure nothing is committed: said before waiting for the outputs in flight.
        if let Some(f) = self.tracker.failure() {
            return Err(StreamError::Delivery(f));
        }
        let left = || deadline.saturating_duration_since(Instant::now());
        let waited = Instant::now();
        if let Err(e) = flush(&self.producer, left()) {
            return Err(StreamError::Unacknowledged(format!(
                "outputs not acknowledged within {:.1}s ({e}); nothing committed",
                waited.elapsed().as_secs_f64()
            )));
        }
        // The reports of what the flush saw acknowledged may still be on their way to the
        // callback: a moment for them even when the budget is spent.
        if !self.tracker.settle(left().max(Duration::from_millis(500))) {
            return Err(StreamError::Unacknowledged(
                "delivery reports not handled in time; nothing committed".into(),
            ));
        }
        if let Some(f) = self.tracker.failure() {
            return Err(StreamError::Delivery(f));
        }
        // The snapshot's offsets are where a restart resumes: the ledger's records for the
        // messages before them must be on disk first, or a crash between would lose them.
        if let Some(l) = &self.ledger {
            l.wait(self.ledger_ticket.load(Ordering::SeqCst))
                .map_err(|e| StreamError::Other(format!("ledger: {e}")))?;
        }
        let positions = self.positions();
        if let Some(path) = self.snapshot_path() {
            let outputs = self.cfg.topics.outputs();
            let mut ends = lock(&self.out_bases).clone();
            for (k, v) in self.tracker.out_ends() {
                let e = ends.entry(k).or_insert(v);
                *e = (*e).max(v);
            }
            let meta = SnapMeta {
                sources: positions
                    .iter()
                    .map(|(_, t, p, o)| (t.clone(), *p, *o))
                    .collect(),
                outputs: ends
                    .iter()
                    .map(|(&(t, p), &o)| (outputs[usize::from(t)].to_string(), p, o))
                    .collect(),
            };
            let bytes =
                postcard::to_stdvec(&meta).map_err(|e| StreamError::Other(e.to_string()))?;
            let t = Instant::now();
            let size = self.engine.save_snapshot(&path, &bytes)?;
            Stats::bump(&self.stats.snapshots);
            let level_info = why != "periodic";
            let line = format!(
                "snapshot ({why}): {} bytes in {:.0} ms to {}",
                size,
                t.elapsed().as_secs_f64() * 1000.0,
                path.display()
            );
            if level_info {
                tracing::info!("{line}");
            } else {
                tracing::debug!("{line}");
            }
        }
        self.commit(consumer, &positions, mode)
    }

    /// Produces one output of the message at (`slot`, `offset`).
    #[allow(clippy::too_many_arguments)]
    fn send(
        &self,
        effects: &HashSet<u64>,
        out: Out,
        key: &[u8],
        payload: &[u8],
        effect: &str,
        extra: &[(&str, &[u8])],
        slot: u16,
        offset: i64,
    ) -> Result<bool, StreamError> {
        if !effects.is_empty() && effects.contains(&effect_hash(effect)) {
            Stats::bump(&self.stats.effects_suppressed);
            return Ok(false);
        }
        let mut headers = OwnedHeaders::new_with_capacity(1 + extra.len()).insert(Header {
            key: EFFECT_HEADER,
            value: Some(effect),
        });
        for (k, v) in extra {
            headers = headers.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        let topic = self.cfg.topics.outputs()[out as usize];
        self.tracker.add(slot, offset);
        let mut rec = BaseRecord::with_opaque_to(topic, opaque(out as u8, slot, offset))
            .key(key)
            .payload(payload)
            .headers(headers);
        let mut waited: Option<Instant> = None;
        loop {
            match self.producer.send(rec) {
                Ok(()) => return Ok(true),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    let waited = waited.get_or_insert_with(Instant::now);
                    if waited.elapsed() > Duration::from_secs(5) {
                        tracing::warn!(
                            "producer queue full for 5s (brokers slow or down); waiting, nothing is dropped"
                        );
                        *waited = Instant::now();
                    }
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err((e, _)) => {
                    self.tracker.not_sent();
                    return Err(StreamError::Delivery(format!(
                        "cannot produce to {topic}: {e}; offsets are not committed past {offset}"
                    )));
                }
            }
        }
    }
}

/// `Producer::flush`, polled every millisecond: rust-rdkafka's flush waits in steps of up to
/// 100 ms (the background thread takes the events it waits for), which made every checkpoint
/// a tenth of a second or more longer than the broker needed.
fn flush(producer: &ThreadedProducer<Delivery>, timeout: Duration) -> Result<(), KafkaError> {
    let deadline = Instant::now() + timeout;
    loop {
        match producer.flush(Duration::ZERO) {
            Err(KafkaError::Flush(RDKafkaErrorCode::OperationTimedOut))
                if Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(1));
            }
            r => return r,
        }
    }
}

/// The time an event takes its turn at in the merge: its own, but no later than `clock_ahead`
/// past the wall clock (`now_ms`). An event dated further (a skewed or forged clock, which the
/// engine will not count anyway) would otherwise hold its side back until the other topic
/// reaches that date — for ever, while traffic keeps coming.
fn merge_ts(ts: i64, clock_ahead: Option<i64>, now_ms: impl FnOnce() -> i64) -> i64 {
    match clock_ahead {
        Some(a) => ts.min(now_ms().saturating_add(a.max(0))),
        None => ts,
    }
}

/// Pauses the input sides that run ahead in the alignment and resumes those it has caught up
/// with.
fn apply_flow(s: &Shared, consumer: &BaseConsumer<Rebalancer>) {
    let flow = lock(&s.align).take_flow();
    let inputs = s.cfg.topics.inputs();
    for (side, p, pause) in flow {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition(inputs[side], p);
        let done = if pause {
            consumer.pause(&tpl)
        } else {
            consumer.resume(&tpl)
        };
        match done {
            Ok(()) if pause => {
                Stats::bump(&s.stats.paused);
                tracing::debug!("{}/{p}: ahead of the other topic; paused", inputs[side]);
            }
            Ok(()) => tracing::debug!("{}/{p}: resumed", inputs[side]),
            Err(e) => tracing::warn!("{}/{p}: cannot pause or resume: {e}", inputs[side]),
        }
    }
}

fn rebalancing(e: &StreamError) -> bool {
    matches!(
        e,
        StreamError::Kafka(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RebalanceInProgress | RDKafkaErrorCode::IllegalGeneration
        ))
    )
}

/// The shutdown checkpoint, all of it (flush, delivery reports, snapshot, commit and its
/// retries) within `deadline`. A group member leaving at the same moment puts the group in a
/// rebalance, and the broker refuses commits until this member has rejoined or given its
/// partitions up: serve the rebalance (fetching paused; a message that still arrives is
/// left uncommitted for the partition's next owner) and retry until the deadline.
fn final_checkpoint(
    s: &Shared,
    consumer: &BaseConsumer<Rebalancer>,
    deadline: Instant,
) -> Result<(), StreamError> {
    if let Ok(a) = consumer.assignment() {
        let _ = consumer.pause(&a);
    }
    let mut result = s.checkpoint(consumer, CommitMode::Sync, "shutdown", deadline);
    while let Err(e) = &result {
        if !rebalancing(e) {
            break;
        }
        if Instant::now() >= deadline {
            tracing::warn!(
                "offsets not committed at shutdown ({e}): the group kept rebalancing; the next owner reads the last messages again"
            );
            return Ok(());
        }
        tracing::debug!("commit refused during a rebalance; serving it and retrying");
        if let Some(Ok(_)) = consumer.poll(Duration::from_millis(100))
            && let Ok(a) = consumer.assignment()
        {
            let _ = consumer.pause(&a);
        }
        result = s.commit(consumer, &s.positions(), CommitMode::Sync);
    }
    result
}

/// A running Kafka pipeline.
#[derive(Debug)]
pub struct Pipeline {
    engine: Arc<Engine>,
    ledger: Option<Ledger>,
    cfg: StreamConfig,
    stats: Arc<Stats>,
    stop: Arc<AtomicBool>,
}

/// The slot of an action in per-action counters (allow, review, step_up, block).
pub(crate) fn action_index(a: Action) -> usize {
    match a {
        Action::Allow => 0,
        Action::Review => 1,
        Action::StepUp => 2,
        Action::Block => 3,
    }
}

impl Pipeline {
    /// A pipeline for `engine` (shared with any other entry point) with these settings.
    pub fn new(engine: Arc<Engine>, cfg: StreamConfig) -> Pipeline {
        Pipeline {
            engine,
            ledger: None,
            cfg,
            stats: Arc::new(Stats::default()),
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Settles decided transactions through `ledger` (and freezes accounts in it), producing a
    /// settlements record per transaction.
    pub fn with_ledger(mut self, ledger: Ledger) -> Pipeline {
        self.ledger = Some(ledger);
        self
    }

    /// Its counters.
    pub fn stats(&self) -> Arc<Stats> {
        self.stats.clone()
    }

    /// Set it to stop the pipeline gracefully.
    pub fn stop_handle(&self) -> Arc<AtomicBool> {
        self.stop.clone()
    }

    /// Stops gracefully once `stop` is set (instead of a flag of its own): e.g. the flag a
    /// process's SIGTERM handler sets.
    pub fn with_stop(mut self, stop: Arc<AtomicBool>) -> Pipeline {
        self.stop = stop;
        self
    }

    /// Runs until stopped (or a configured message count or idle time is reached), then
    /// flushes, snapshots and commits.
    pub fn run(&self) -> Result<Summary, StreamError> {
        let started = Instant::now();
        let cfg = &self.cfg;
        let inputs = cfg.topics.inputs();
        let outputs = cfg.topics.outputs();

        // 1. State and positions from the last snapshot.
        let mut resume = HashMap::new();
        let mut bases = HashMap::new();
        let mut restored = false;
        if let Some(dir) = &cfg.state_dir {
            std::fs::create_dir_all(dir)?;
            let path = dir.join(SNAPSHOT_FILE);
            if path.exists() {
                let r = self.engine.load_snapshot(&path)?;
                let meta: SnapMeta = postcard::from_bytes(&r.meta).map_err(|e| {
                    StreamError::Other(format!("{}: bad offsets record: {e}", path.display()))
                })?;
                for (t, p, o) in meta.sources {
                    if let Some(i) = inputs.iter().position(|x| *x == t) {
                        resume.insert((i as u8, p), o);
                    }
                }
                for (t, p, o) in meta.outputs {
                    if let Some(i) = outputs.iter().position(|x| *x == t) {
                        bases.insert((i as u8, p), o);
                    }
                }
                restored = true;
                if cfg.fresh_broker {
                    // Offsets into a log that no longer exists would skip that many of the
                    // new log's messages.
                    resume.clear();
                    bases.clear();
                    tracing::warn!(
                        "restored {} accounts from {} (rules then: {}); the broker is new, so the snapshot's offsets do not apply: reading every partition from its start",
                        r.accounts,
                        path.display(),
                        r.rules_version
                    );
                } else {
                    tracing::info!(
                        "restored {} accounts from {} (rules then: {}); resuming {} partition(s) where it left off",
                        r.accounts,
                        path.display(),
                        r.rules_version,
                        resume.len()
                    );
                }
            } else {
                tracing::info!(
                    "no snapshot in {}: starting with empty state from the group's committed offsets",
                    dir.display()
                );
            }
        }

        self.stats.state_loaded.store(true, Ordering::SeqCst);

        // 2. Effects already produced since then, so they are not produced again.
        let effects = if cfg.state_dir.is_some() {
            let (effects, ends) = read_effects(cfg, &bases, Duration::from_secs(60), &self.stop)?;
            if self.stop.load(Ordering::Relaxed) {
                // Nothing consumed yet: stop without a snapshot (the read-back did not reach
                // the ends it would record) or a commit.
                tracing::info!(
                    "stopped during the start-up read-back: nothing consumed, nothing written"
                );
                return Ok(Summary {
                    consumed: 0,
                    seconds: started.elapsed().as_secs_f64(),
                    restored,
                });
            }
            for (k, v) in ends {
                bases.entry(k).or_insert(v);
            }
            effects
        } else {
            HashSet::new()
        };

        // 3. Clients.
        let tracker = Arc::new(Tracker::default());
        let mut producer = output_producer_config(cfg);
        let producer: ThreadedProducer<Delivery> = user_wins(&mut producer, cfg)
            .create_with_context(Delivery {
                tracker: tracker.clone(),
                stats: self.stats.clone(),
            })?;
        let shared = Arc::new(Shared {
            engine: self.engine.clone(),
            cfg: cfg.clone(),
            stats: self.stats.clone(),
            tracker: tracker.clone(),
            producer,
            slots: Mutex::new(Slots::default()),
            resume: Mutex::new(resume),
            out_bases: Mutex::new(bases),
            committed: Mutex::new(HashMap::new()),
            align: Mutex::new(Align::new(cfg.pause_at)),
            highs: Mutex::new(HashMap::new()),
            ledger: self.ledger.clone(),
            ledger_ticket: AtomicU64::new(0),
            awaiting_payee: Mutex::new(Vec::new()),
            ending_by: Mutex::new(None),
        });
        let session_ms = cfg.session_timeout.as_millis().max(1000);
        let mut consumer_config = client_config(cfg);
        if let Some(id) = &cfg.instance_id {
            consumer_config.set("group.instance.id", id);
        }
        consumer_config
            .set("group.id", &cfg.group_id)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session_ms.to_string())
            .set("heartbeat.interval.ms", (session_ms / 3).to_string())
            .set("fetch.wait.max.ms", "50")
            // Once queued.min.messages are prefetched (counted over the whole consumer
            // queue), librdkafka stops fetching for this long (1 s by default): with a backlog
            // the pipeline would drain the queue and then sit idle for most of a second.
            .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS)
            // Same partition numbers of both input topics to one consumer (see `Align`).
            .set("partition.assignment.strategy", "range")
            // Consumer lag per partition for the metrics (`Rebalancer::stats`).
            .set("statistics.interval.ms", "5000");
        let consumer: BaseConsumer<Rebalancer> =
            user_wins(&mut consumer_config, cfg).create_with_context(Rebalancer(shared.clone()))?;
        consumer.subscribe(&inputs)?;
        tracing::info!(
            "consuming {} from {} as group '{}'",
            inputs.join(", "),
            cfg.brokers,
            cfg.group_id
        );

        // 4. The loop.
        let mut work = Work::default();
        let mut last_commit = Instant::now();
        let mut last_snapshot = Instant::now();
        let mut last_message = Instant::now();
        let mut last_align = Instant::now();
        let mut last_awaiting = Instant::now();
        let mut handled_settled = 0u64;
        let mut handled = 0u64;
        let mut handled_at_snapshot = 0u64;
        let mut backoff = Duration::from_millis(100);
        let mut unassigned_since: Option<Instant> = None;
        let mut unassigned_said = Instant::now();
        // Messages handled in this turn of the loop: while they keep coming without a wait,
        // up to BATCH, the transactions among them are decided together at the turn's end.
        let mut burst = 0usize;
        let result = loop {
            if self.stop.load(Ordering::Relaxed) {
                tracing::info!("stopping: finishing what is in flight");
                break Ok(());
            }
            if let Some(f) = tracker.failure() {
                break Err(StreamError::Delivery(f));
            }
            let mut idle = false;
            let polled = consumer.poll(if burst > 0 {
                Duration::ZERO
            } else {
                Duration::from_millis(100)
            });
            // One clock read per turn serves every timer below (it is a measurable share of a
            // message's cost).
            let now = Instant::now();
            match polled {
                Some(Ok(m)) => {
                    backoff = Duration::from_millis(100);
                    last_message = now;
                    unassigned_since = None;
                    if let Err(e) = self.handle(&shared, &effects, &m, &mut work, now) {
                        break Err(e);
                    }
                    drop(m);
                    if lock(&shared.align).has_flow() {
                        apply_flow(&shared, &consumer);
                    }
                    handled += 1;
                    burst += 1;
                    if cfg.max_messages.is_some_and(|n| handled >= n) {
                        tracing::info!("handled {handled} messages: stopping as asked");
                        break Ok(());
                    }
                    if burst < BATCH {
                        continue;
                    }
                }
                Some(Err(e)) => {
                    log_kafka_error("consumer", &e, "polling");
                    // Not while this turn's transactions wait: they are decided first, and the
                    // next turn's poll waits anyway.
                    if burst == 0 {
                        std::thread::sleep(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
                None if burst > 0 => {}
                None => {
                    idle = true;
                    // Idle counts from the assignment: a group join can take a session
                    // timeout when a member vanished.
                    if self.stats.assigned.load(Ordering::Relaxed) == 0 {
                        last_message = now;
                        // Holding nothing is normal for a moment (a join, a rebalance, more
                        // members than partitions), but said when it lasts: a coordinator
                        // that never assigns would otherwise look like a quiet topic.
                        let since = *unassigned_since.get_or_insert(now);
                        let said_ago = now.duration_since(unassigned_said);
                        if now.duration_since(since) >= UNASSIGNED_WARN
                            && (said_ago >= 10 * UNASSIGNED_WARN || unassigned_said < since)
                        {
                            unassigned_said = now;
                            tracing::warn!(
                                "no input partitions assigned for {:.0}s (group '{}'{}): the group gave them all to other members, or the coordinator has assigned none",
                                now.duration_since(since).as_secs_f64(),
                                cfg.group_id,
                                cfg.instance_id
                                    .as_deref()
                                    .map(|i| format!(", instance '{i}'"))
                                    .unwrap_or_default()
                            );
                        }
                    } else {
                        unassigned_since = None;
                    }
                    if cfg
                        .idle_exit
                        .is_some_and(|d| now.duration_since(last_message) >= d)
                    {
                        tracing::info!("idle: stopping as asked");
                        break Ok(());
                    }
                }
            }
            // The turn is over: its transactions are decided.
            burst = 0;
            if let Err(e) = self.decide_ready(&shared, &effects, &mut work) {
                break Err(e);
            }
            if now.duration_since(last_awaiting) >= AWAITING_CHECK_EVERY {
                last_awaiting = now;
                match shared.settle_awaiting(&effects, false) {
                    // A settlement made while no message comes is committed by the next
                    // checkpoint all the same.
                    Ok(n) => handled_settled += n as u64,
                    Err(e) => break Err(e),
                }
            }
            if (idle || now.duration_since(last_align) >= Duration::from_millis(100))
                && lock(&shared.align).total() > 0
            {
                last_align = now;
                if let Err(e) = self
                    .check_alignment(&shared, &consumer, &effects, &mut work)
                    .and_then(|()| self.decide_ready(&shared, &effects, &mut work))
                {
                    break Err(e);
                }
                apply_flow(&shared, &consumer);
            }
            if cfg.state_dir.is_some() {
                // Nothing new, nothing to snapshot.
                if now.duration_since(last_snapshot) >= cfg.snapshot_every
                    && handled + handled_settled != handled_at_snapshot
                {
                    last_snapshot = now;
                    let deadline = now + cfg.shutdown_timeout;
                    match shared.checkpoint(&consumer, CommitMode::Async, "periodic", deadline) {
                        Ok(()) => handled_at_snapshot = handled + handled_settled,
                        // A broker slow or away: the outputs stay queued (they never time
                        // out) and go when it takes them; the checkpoint is tried again.
                        Err(StreamError::Unacknowledged(e)) => {
                            Stats::bump(&shared.stats.checkpoints_postponed);
                            tracing::warn!(
                                "checkpoint postponed: {e}; outputs stay queued until the brokers take them, then it is tried again"
                            );
                        }
                        Err(e) => break Err(e),
                    }
                }
            } else if now.duration_since(last_commit) >= cfg.commit_every {
                last_commit = now;
                let positions = shared.positions();
                if let Err(e) = shared.commit(&consumer, &positions, CommitMode::Async) {
                    log_kafka_error("consumer", &KafkaError::Canceled, &e.to_string());
                }
            }
        };
        // One budget for the whole graceful end, from here.
        let deadline = Instant::now() + cfg.shutdown_timeout;
        *lock(&shared.ending_by) = Some(deadline);
        // 5. Graceful end: flush, snapshot, commit — unless an output failed, in which case
        // nothing past it may be committed.
        // Stopped by a signal, the events still waiting in the merge for the other topic stay
        // there: released now, a transaction could be decided before an account event of its
        // account that is on the broker but not read yet. Never acknowledged, they are not
        // committed, nor in the snapshot's offsets: the restart reads them again. A stop after
        // a message count or idleness decides them (there is nothing more to wait for).
        let result = result.and_then(|()| {
            if self.stop.load(Ordering::Relaxed) {
                let left = lock(&shared.align).total();
                if left > 0 {
                    tracing::info!(
                        "{left} message(s) waiting for the other topic left for the restart to read again"
                    );
                    handled = handled.saturating_sub(left as u64);
                }
                self.decide_ready(&shared, &effects, &mut work)
            } else {
                self.release_all(&shared, &effects, &mut work)
            }
        });
        // Settlements still waiting for a payee are made now (declined if it is still not
        // there), so that the stop commits where it stopped and a restart repeats nothing.
        let result = result.and_then(|()| shared.settle_awaiting(&effects, true).map(|_| ()));
        match result {
            Ok(()) => {
                final_checkpoint(&shared, &consumer, deadline)?;
                tracing::info!("stopped cleanly after {handled} messages");
            }
            Err(e) => {
                tracing::error!("stopping on error: {e}");
                // No checkpoint after this (the revoke as the consumer closes would take one):
                // the state may hold decisions whose outputs were never produced, and a
                // snapshot of it would make their redelivery look like duplicates.
                shared.tracker.fail(format!("stopped on error: {e}"));
                let _ = shared
                    .producer
                    .flush(deadline.saturating_duration_since(Instant::now()));
                return Err(e);
            }
        }
        Ok(Summary {
            consumed: handled,
            seconds: started.elapsed().as_secs_f64(),
            restored,
        })
    }

    fn handle(
        &self,
        s: &Shared,
        effects: &HashSet<u64>,
        m: &BorrowedMessage<'_>,
        work: &mut Work,
        now: Instant,
    ) -> Result<(), StreamError> {
        let topic = if m.topic() == s.cfg.topics.transactions {
            0u8
        } else {
            1u8
        };
        let Some(slot) = s.slot(topic, m.partition()) else {
            return Err(StreamError::Other(format!(
                "more than {SLOTS_MAX} source partitions"
            )));
        };
        let offset = m.offset();
        if s.tracker.begin(slot, offset) {
            // Read from here on: the tracker has the position now.
            lock(&s.resume).remove(&(topic, m.partition()));
        }
        Stats::bump(&self.stats.consumed);
        let payload = m.payload().unwrap_or_default();
        let event = if payload.len() > s.cfg.event_bytes_max {
            Err(format!(
                "message is {} bytes, more than the limit of {}; the dead letter keeps the first {}",
                payload.len(),
                s.cfg.event_bytes_max,
                s.cfg.event_bytes_max
            ))
        } else {
            decode(payload).map_err(|e| e.to_string())
        };
        match event {
            Err(reason) => {
                let keep = &payload[..payload.len().min(s.cfg.event_bytes_max)];
                let effect = format!("dlq:{}/{}/{offset}", m.topic(), m.partition());
                let part = m.partition().to_string();
                let off = offset.to_string();
                let size = payload.len().to_string();
                s.send(
                    effects,
                    Out::Dlq,
                    m.key().unwrap_or_default(),
                    keep,
                    &effect,
                    &[
                        ("error", reason.as_bytes()),
                        ("source.topic", m.topic().as_bytes()),
                        ("source.partition", part.as_bytes()),
                        ("source.offset", off.as_bytes()),
                        ("source.bytes", size.as_bytes()),
                    ],
                    slot,
                    offset,
                )?;
                Stats::bump(&self.stats.dead_lettered);
                tracing::debug!(
                    "dead-lettered {}/{}/{offset}: {reason}",
                    m.topic(),
                    m.partition()
                );
            }
            Ok(event) => {
                let p = m.partition();
                let item = Item {
                    slot,
                    offset,
                    ts: merge_ts(event.ts_ms(), self.engine.config().clock_ahead_ms, now_ms),
                    event,
                    since: now,
                };
                let side = if topic == 0 {
                    align::TX
                } else {
                    align::ACCOUNT
                };
                let over = {
                    let mut al = lock(&s.align);
                    al.push(side, p, item);
                    al.total() > s.cfg.align_max
                };
                if over {
                    Stats::bump(&self.stats.unaligned);
                    self.step(s, effects, work, p, true)?;
                }
                return self.step(s, effects, work, p, false);
            }
        }
        s.tracker.ack(slot, offset);
        Ok(())
    }

    /// Applies the events of partition `p` whose turn it is (with `force`, one more first):
    /// account events at once, transactions into `work.ready`, decided at the next
    /// [`Pipeline::decide_ready`] (an account event has the transactions before it decided
    /// first).
    fn step(
        &self,
        s: &Shared,
        effects: &HashSet<u64>,
        work: &mut Work,
        p: i32,
        mut force: bool,
    ) -> Result<(), StreamError> {
        loop {
            let next = lock(&s.align).next(p, force);
            force = false;
            let Some(Item {
                slot,
                offset,
                event,
                ..
            }) = next
            else {
                return Ok(());
            };
            match event {
                Event::Tx(tx) => {
                    let resets = s.tracker.resets();
                    work.ready.push(Ready {
                        tx,
                        slot,
                        offset,
                        resets,
                    });
                    if work.ready.len() >= BATCH {
                        self.decide_ready(s, effects, work)?;
                    }
                    // Acknowledged once decided.
                    continue;
                }
                Event::Account(ref a) => {
                    // The transactions before it are decided first.
                    self.decide_ready(s, effects, work)?;
                    self.engine.observe(a);
                    Stats::bump(&self.stats.account_events);
                    if let Some(ledger) = &s.ledger {
                        match ledger.open_announced(a) {
                            Ok(Some(ticket)) => {
                                s.ledger_ticket.fetch_max(ticket, Ordering::SeqCst);
                                Stats::bump(&self.stats.accounts_opened);
                            }
                            Ok(None) => {}
                            Err(LedgerError::Journal(e)) => {
                                return Err(StreamError::Other(format!("ledger: {e}")));
                            }
                            Err(e) => tracing::warn!(
                                "{}: account {} not opened in the ledger: {e}",
                                a.event_id,
                                a.account_id
                            ),
                        }
                    }
                }
            }
            s.tracker.ack(slot, offset);
        }
    }

    /// Decides the transactions waiting in `work.ready` together
    /// ([`Engine::decide_batch`]), then produces each one's outputs and acknowledges it, in
    /// order.
    fn decide_ready(
        &self,
        s: &Shared,
        effects: &HashSet<u64>,
        work: &mut Work,
    ) -> Result<(), StreamError> {
        if work.ready.is_empty() {
            return Ok(());
        }
        let mut ready = std::mem::take(&mut work.ready);
        let resets = s.tracker.resets();
        if ready.iter().any(|r| r.resets != resets) {
            // A rebalance (inside a poll since they came) gave partitions up: their
            // transactions are not decided here; the partitions' next owner reads them from the
            // offsets committed then, which are behind them.
            let before = ready.len();
            ready.retain(|r| !s.tracker.reset_since(r.slot, r.resets));
            if ready.len() < before {
                tracing::info!(
                    "{} transaction(s) of revoked partitions left to their next owner",
                    before - ready.len()
                );
            }
        }
        let mut decisions = std::mem::take(&mut work.decisions);
        decisions.clear();
        self.engine
            .decide_batch(&ready, &mut work.scratch, |_, d| decisions.push(d));
        let result = if decisions.len() == ready.len() {
            ready.iter().zip(&decisions).try_for_each(|(r, d)| {
                self.produce_outputs(s, effects, r, d, &mut work.json, &mut work.effect)?;
                s.tracker.ack(r.slot, r.offset);
                Ok(())
            })
        } else {
            // Not acknowledged, the missing ones would stall their partitions' commits.
            Err(StreamError::Other(format!(
                "{} decisions for {} transactions",
                decisions.len(),
                ready.len()
            )))
        };
        ready.clear();
        decisions.clear();
        work.ready = ready;
        work.decisions = decisions;
        result
    }

    /// Lets events go whose other side has nothing more to give (read to its end, or not
    /// read by this consumer), and any that waited longer than [`ALIGN_WAIT_MAX`].
    fn check_alignment(
        &self,
        s: &Shared,
        consumer: &BaseConsumer<Rebalancer>,
        effects: &HashSet<u64>,
        work: &mut Work,
    ) -> Result<(), StreamError> {
        let waiting = lock(&s.align).waiting();
        if waiting.is_empty() {
            return Ok(());
        }
        let position = consumer.position()?;
        let inputs = s.cfg.topics.inputs();
        // Where this consumer is on a side of a partition: None if not assigned, else the
        // next offset it will read, if it has read anything.
        let pos = |side: usize, p: i32| {
            position
                .find_partition(inputs[side], p)
                .map(|e| offset_of(&e))
        };
        // Behind the last known end, or nothing read yet from a partition known to hold
        // messages: certainly not at the end, no need to ask. (Asking waits behind the
        // consumer's fetch, up to fetch.wait.max.ms: asked on every check, with a backlog the
        // checks took all the time and the pipeline handled ten messages a second.)
        let behind = |side: usize, p: i32, at: Option<i64>| {
            lock(&s.highs)
                .get(&(side, p))
                .is_some_and(|&(start, high, when)| {
                    at.map_or(start.is_some_and(|from| from < high), |n| n < high)
                        && when.elapsed() < Duration::from_secs(5)
                })
        };
        // The ends still unknown, asked for together: one round trip, not one per partition
        // (and the beginnings of those nothing was read from yet: a second one).
        let ask: Vec<(usize, i32, bool)> = waiting
            .iter()
            .flat_map(|w| {
                [align::TX, align::ACCOUNT]
                    .into_iter()
                    .filter(|&side| w.empty[side])
                    .map(move |side| (side, w.p))
            })
            .filter_map(|(side, p)| match pos(side, p) {
                Some(at) if !behind(side, p, at) => Some((side, p, at.is_none())),
                _ => None,
            })
            .collect();
        let answered = if ask.is_empty() {
            HashMap::new()
        } else {
            let resume = lock(&s.resume).clone();
            let answered = ends(consumer, inputs, &ask, &resume, Duration::from_millis(500));
            let now = Instant::now();
            let mut highs = lock(&s.highs);
            for (&k, &(low, high)) in &answered {
                highs.insert(k, (low, high, now));
            }
            answered
        };
        for align::Waiting {
            p,
            empty,
            oldest,
            last_push,
        } in waiting
        {
            for side in [align::TX, align::ACCOUNT] {
                if !empty[side] {
                    continue;
                }
                let at_end = match pos(side, p) {
                    None => true,
                    Some(at) if behind(side, p, at) => false,
                    // Unanswered (the broker did not say): not known to be at the end.
                    Some(at) => answered.get(&(side, p)).is_some_and(|&(start, high)| {
                        at.map_or(start.is_some_and(|from| from >= high), |n| n >= high)
                    }),
                };
                if at_end {
                    lock(&s.align).at_end(side, p);
                }
            }
            // Waited long, and the side it waits for has been silent as long (a side that
            // still brings events, however far behind, will release it in order).
            let silent = |side: usize| last_push[side].is_none_or(|t| t.elapsed() > ALIGN_WAIT_MAX);
            let late = oldest.elapsed() > ALIGN_WAIT_MAX
                && [align::TX, align::ACCOUNT]
                    .iter()
                    .all(|&side| !empty[side] || silent(side));
            // What may go in order goes first (an end just learnt releases it aligned).
            self.step(s, effects, work, p, false)?;
            if late {
                // Everything that still waited as long goes (each counted), not one event per
                // check: when the broker never tells the ends, the merge still drains at the
                // speed events come in, ALIGN_WAIT_MAX late, instead of a few events a second.
                let cutoff = Instant::now().checked_sub(ALIGN_WAIT_MAX);
                while cutoff.is_some_and(|c| lock(&s.align).head_waited(p, c)) {
                    Stats::bump(&self.stats.unaligned);
                    self.step(s, effects, work, p, true)?;
                }
            }
        }
        Ok(())
    }

    /// Applies every waiting event (the pipeline is stopping).
    fn release_all(
        &self,
        s: &Shared,
        effects: &HashSet<u64>,
        work: &mut Work,
    ) -> Result<(), StreamError> {
        let partitions = lock(&s.align).partitions();
        for p in partitions {
            while lock(&s.align).total() > 0 {
                let before = lock(&s.align).total();
                self.step(s, effects, work, p, true)?;
                if lock(&s.align).total() == before {
                    break;
                }
            }
        }
        self.decide_ready(s, effects, work)
    }

    /// Settles (or holds, or declines) a decided transaction in the ledger and produces its
    /// settlements record — for a duplicate, only if this settled it: one the ledger took
    /// meanwhile (over HTTP) had its record then.
    #[allow(clippy::too_many_arguments)]
    fn settle(
        &self,
        s: &Shared,
        ledger: &Ledger,
        effects: &HashSet<u64>,
        tx: &Transaction,
        d: &crate::Decision,
        slot: u16,
        offset: i64,
    ) -> Result<(), StreamError> {
        // A transfer to a payee the ledger does not hold (yet): its `account_opened` may be on
        // a partition not read this far, or dated a moment after the transfer. Declined now,
        // it would stay declined; it waits instead. Not a block (it moves nothing), nor one
        // that asks for a freeze (the freeze goes with the settlement and must not wait), nor
        // past `AWAITING_MAX` waiting.
        if tx.kind == TxKind::Transfer
            && d.acted_action() != vigil_rules::Action::Block
            && !(d.freeze && !d.already_frozen && !d.duplicate)
            && let Some(payee) = tx.counterparty_id.as_deref()
            && ledger.read(|b| {
                b.has_account(&tx.account_id)
                    && !b.has_account(payee)
                    && b.get_transfer(&tx.tx_id).is_none()
            })
        {
            let mut q = lock(&s.awaiting_payee);
            if q.len() < AWAITING_MAX {
                s.tracker.hold(slot, offset);
                q.push(AwaitingPayee {
                    tx: tx.clone(),
                    d: d.clone(),
                    slot,
                    offset,
                    resets: s.tracker.resets(),
                    since: Instant::now(),
                });
                return Ok(());
            }
        }
        s.settle_now(ledger, effects, tx, d, slot, offset, false)
    }

    /// Produces the outputs of decision `d` of `r`'s transaction (`json` and `effect`: buffers).
    fn produce_outputs(
        &self,
        s: &Shared,
        effects: &HashSet<u64>,
        r: &Ready,
        d: &Decision,
        json: &mut Vec<u8>,
        effect: &mut String,
    ) -> Result<(), StreamError> {
        let Ready {
            tx, slot, offset, ..
        } = r;
        let (slot, offset) = (*slot, *offset);
        if d.duplicate {
            // This tx_id was decided already (a producer's retry, a topic replayed): its
            // decision, settlement and effects went out the first time, and a second decision
            // (on state that has moved on since) could contradict the first.
            Stats::bump(&self.stats.duplicates);
            tracing::debug!("{}: decided already; nothing sent again", tx.tx_id);
            // Decided is not settled: `POST /v1/authorize` decides and moves nothing, and the
            // stream may bring the same transaction to settle. The ledger knows what it
            // settled, by tx_id; what is left settles as first decided (`first_action`: what
            // the payment service was answered), not as decided again now. A duplicate whose
            // first action the engine did not keep (state from before it did) is left alone.
            if let Some(ledger) = &s.ledger
                && d.first_action.is_some()
                && ledger.read(|b| b.get_transfer(&tx.tx_id).is_none())
            {
                self.settle(s, ledger, effects, tx, d, slot, offset)?;
            }
            return Ok(());
        }
        Stats::bump(&self.stats.decided);
        Stats::bump(&self.stats.actions[action_index(d.action)]);
        json.clear();
        d.write_json(json);
        Effect::Decision.write_id(&tx.tx_id, effect);
        s.send(
            effects,
            Out::Decisions,
            tx.tx_id.as_bytes(),
            json,
            effect,
            &[],
            slot,
            offset,
        )?;
        if let Some(ledger) = &s.ledger {
            self.settle(s, ledger, effects, tx, d, slot, offset)?;
        }
        if notify::effects_of(d) == (false, None)
            && d.already_frozen
            && (d.freeze || d.notify.is_some())
        {
            Stats::bump(&self.stats.repeats_skipped);
        }
        for f in notify::follow_ups(&self.engine, s.ledger.as_ref(), tx, d, now_ms) {
            let key = tx.account_id.as_bytes();
            if s.send(effects, f.out, key, &f.body, &f.effect, &[], slot, offset)? {
                Stats::bump(if f.out == Out::Freezes {
                    &self.stats.freezes
                } else {
                    &self.stats.notifications
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Effect ids are what de-duplicates records after a restart, so their text is fixed: a
    /// change would produce every effect of a redelivered transaction again.
    #[test]
    fn effect_ids_keep_their_format() {
        let mut buf = String::from("left over");
        Effect::Decision.write_id("t-1", &mut buf);
        assert_eq!(buf, "decision:t-1");
        Effect::Notification("held_for_review").write_id("t-1", &mut buf);
        assert_eq!(buf, "notification:held_for_review:t-1");
        assert_eq!(Effect::Settlement.id("t-2"), "settlement:t-2");
        assert_eq!(Effect::Freeze.id("t:3"), "freeze:t:3");
    }

    #[test]
    fn an_event_dated_past_the_clock_takes_its_turn_at_the_clock() {
        let now = || 1_000_000;
        assert_eq!(merge_ts(999_000, Some(300_000), now), 999_000);
        assert_eq!(merge_ts(1_200_000, Some(300_000), now), 1_200_000);
        assert_eq!(merge_ts(4_102_444_800_000, Some(300_000), now), 1_300_000);
        assert_eq!(merge_ts(4_102_444_800_000, None, now), 4_102_444_800_000);
    }

    #[test]
    fn user_properties_win_over_tuning_but_not_over_guarantees() {
        let mut cfg = StreamConfig::default();
        for (k, v) in [
            ("linger.ms", "1"),
            ("batch.num.messages", "1"),
            ("enable.auto.commit", "true"),
            ("partition.assignment.strategy", "cooperative-sticky"),
        ] {
            cfg.client.insert(k.into(), v.into());
        }
        let mut c = ClientConfig::new();
        c.set("linger.ms", "10")
            .set("enable.auto.commit", "false")
            .set("partition.assignment.strategy", "range");
        user_wins(&mut c, &cfg);
        assert_eq!(c.get("linger.ms"), Some("1"));
        assert_eq!(c.get("batch.num.messages"), Some("1"));
        assert_eq!(c.get("enable.auto.commit"), Some("false"));
        assert_eq!(c.get("partition.assignment.strategy"), Some("range"));
    }
}
