//! The Kafka path: consume `transactions` and `account-events`, decide with the same engine
//! and state as every other entry point ([`Engine::decide_batch`](crate::Engine::decide_batch),
//! which gives the decisions [`Engine::decide`](crate::Engine::decide) would), and produce
//! decisions, freeze requests, notifications and dead letters.
//!
//! Delivery: a source offset is committed only after every output produced for it (and for
//! every earlier offset of its partition) is acknowledged by the broker. With a state directory,
//! offsets are committed together with a state snapshot, so state and position never disagree;
//! after a crash the events since the snapshot are decided again on the snapshot's state, and
//! effects already on the output topics (found by reading them back) are not produced twice.

pub mod align;
pub mod embedded;
pub mod notify;
pub(crate) mod pipeline;
pub mod produce;
pub mod publish;
mod track;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub use pipeline::{
    EFFECT_HEADER, Effect, Pipeline, Summary, admin_create_topics, client_config,
    output_producer_config, read_effects,
};

/// Topic names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Transaction events in (key: account id).
    pub transactions: String,
    /// Account events in (key: account id).
    pub account_events: String,
    /// Decisions out (key: tx id).
    pub decisions: String,
    /// Freeze requests out (key: account id).
    pub freezes: String,
    /// Notifications out (key: account id).
    pub notifications: String,
    /// Dead letters out (key: the original key).
    pub dlq: String,
    /// Ledger outcomes out (key: tx id): settled, held or declined with the code.
    pub settlements: String,
}

impl Default for Topics {
    fn default() -> Self {
        Topics {
            transactions: "transactions".into(),
            account_events: "account-events".into(),
            decisions: "decisions".into(),
            freezes: "freeze-requests".into(),
            notifications: "notifications".into(),
            dlq: "transactions.dlq".into(),
            settlements: "settlements".into(),
        }
    }
}

impl Topics {
    /// The topics Vigil reads.
    pub fn inputs(&self) -> [&str; 2] {
        [&self.transactions, &self.account_events]
    }
    /// The topics Vigil writes, indexed like [`Out`].
    pub fn outputs(&self) -> [&str; 5] {
        [
            &self.decisions,
            &self.freezes,
            &self.notifications,
            &self.dlq,
            &self.settlements,
        ]
    }
    /// Every topic.
    pub fn all(&self) -> Vec<&str> {
        let mut v = self.inputs().to_vec();
        v.extend(self.outputs());
        v
    }
}

/// The output topics, as indices into [`Topics::outputs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Out {
    /// Decisions.
    Decisions = 0,
    /// Freeze requests.
    Freezes = 1,
    /// Notifications.
    Notifications = 2,
    /// Dead letters.
    Dlq = 3,
    /// Settlements.
    Settlements = 4,
}

/// How the pipeline runs.
#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// `host:port[,host:port…]`.
    pub brokers: String,
    /// Consumer group.
    pub group_id: String,
    /// Topic names.
    pub topics: Topics,
    /// Extra librdkafka properties for every client (security settings and tuning), e.g.
    /// `security.protocol = "SASL_SSL"`.
    pub client: BTreeMap<String, String>,
    /// Where snapshots go. Without one, state lives only in memory and offsets are committed
    /// as soon as outputs are acknowledged.
    pub state_dir: Option<PathBuf>,
    /// How often to snapshot (and, with a state directory, commit).
    pub snapshot_every: Duration,
    /// How often to commit acknowledged offsets when there is no state directory.
    pub commit_every: Duration,
    /// How long a graceful shutdown may take to flush and commit.
    pub shutdown_timeout: Duration,
    /// Most events held back for event-time alignment of the two input topics before the
    /// oldest goes anyway (counted as unaligned). A side that runs ahead is paused at
    /// `pause_at` per partition, so this is reached only when more than
    /// `align_max / pause_at` partitions (24 by default) run ahead at once.
    pub align_max: usize,
    /// Events of one side of one partition waiting in the merge at which that side is paused
    /// (resumed at a quarter of it).
    pub pause_at: usize,
    /// Largest event accepted; a larger message is dead-lettered (its first bytes kept).
    pub event_bytes_max: usize,
    /// Consumer session timeout (lower means faster rebalances after a crash).
    pub session_timeout: Duration,
    /// Stop once this many input messages have been handled (demos, benchmarks, tests).
    pub max_messages: Option<u64>,
    /// Stop after being idle (no message) this long once partitions are assigned (demos,
    /// benchmarks, tests).
    pub idle_exit: Option<Duration>,
    /// Static group membership (`group.instance.id`), one stable name per process: a restart
    /// gets its partitions (and its snapshot's state) back at once, without a rebalance.
    pub instance_id: Option<String>,
    /// The broker started empty with this process (the embedded one): a snapshot's offsets
    /// name messages of a log that is gone, so only its state is restored and every partition
    /// is read from its start.
    pub fresh_broker: bool,
    /// How long a transfer's settlement may wait for its payee's account: a payee opened by
    /// an `account_opened` on another partition, not read yet (or dated just after the
    /// transfer), would otherwise make it a permanent `unknown_account` decline. The decision
    /// goes out at once; the message is not committed until the settlement is made.
    pub payee_wait: Duration,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            brokers: String::new(),
            group_id: "vigil".into(),
            topics: Topics::default(),
            client: BTreeMap::new(),
            state_dir: None,
            snapshot_every: Duration::from_secs(30),
            commit_every: Duration::from_secs(1),
            shutdown_timeout: Duration::from_secs(10),
            align_max: 100_000,
            pause_at: align::PAUSE_AT,
            event_bytes_max: crate::event::EVENT_BYTES_MAX,
            session_timeout: Duration::from_secs(10),
            max_messages: None,
            idle_exit: None,
            instance_id: None,
            fresh_broker: false,
            payee_wait: Duration::from_secs(10),
        }
    }
}

/// Counters the pipeline keeps (read them while it runs).
#[derive(Debug, Default)]
pub struct Stats {
    /// Input messages handled (decided, observed or dead-lettered).
    pub consumed: AtomicU64,
    /// Transactions decided.
    pub decided: AtomicU64,
    /// Transactions whose tx_id was decided already: nothing is sent for them again.
    pub duplicates: AtomicU64,
    /// Account events applied.
    pub account_events: AtomicU64,
    /// Ledger accounts opened from `account_opened` events with a currency.
    pub accounts_opened: AtomicU64,
    /// Messages sent to the dead-letter topic.
    pub dead_lettered: AtomicU64,
    /// Freeze requests produced.
    pub freezes: AtomicU64,
    /// Notifications produced.
    pub notifications: AtomicU64,
    /// Ledger outcomes of decided transactions: settled, held, declined, refused.
    pub settlements: [AtomicU64; 4],
    /// Decisions by action: allow, review, step_up, block.
    pub actions: [AtomicU64; 4],
    /// Effects not produced again because they were already on the output topics.
    pub effects_suppressed: AtomicU64,
    /// Freeze requests and blocked-transfer notices not sent because the account's freeze was
    /// already requested by an earlier transaction.
    pub repeats_skipped: AtomicU64,
    /// Input partitions assigned to this consumer now.
    pub assigned: AtomicU64,
    /// The state is in place: the snapshot restored (or none to restore). Until then the
    /// engine holds none of it, and what it decided would be overwritten by the restore.
    pub state_loaded: std::sync::atomic::AtomicBool,
    /// Outputs acknowledged by the broker.
    pub acked: AtomicU64,
    /// Offsets committed (commit calls that succeeded).
    pub commits: AtomicU64,
    /// Snapshots written.
    pub snapshots: AtomicU64,
    /// Periodic checkpoints put off because the outputs were not all acknowledged in time (a
    /// broker slow or away).
    pub checkpoints_postponed: AtomicU64,
    /// Settlements of transfers that waited for their payee's account to be opened (see
    /// `StreamConfig::payee_wait`).
    pub settlements_waited: AtomicU64,
    /// Transactions decided before their account events could be confirmed applied (waited
    /// too long, or too many waiting).
    pub unaligned: AtomicU64,
    /// Times an input partition was paused because it ran ahead of the other topic.
    pub paused: AtomicU64,
    /// Consumer lag per assigned (topic, partition), from librdkafka's statistics.
    pub lag: std::sync::Mutex<crate::metrics::Lag>,
}

impl Stats {
    /// A counter's value.
    pub fn get(c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
    /// Consumer lag per (topic, partition) as last reported.
    pub fn lag(&self) -> crate::metrics::Lag {
        self.lag
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }
    fn bump(c: &AtomicU64) {
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// Why the pipeline stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A Kafka client error.
    #[error("kafka: {0}")]
    Kafka(#[from] rdkafka::error::KafkaError),
    /// A file error.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// A snapshot could not be read.
    #[error("snapshot {0}")]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// An output could not be delivered; offsets were not committed past it.
    #[error("{0}")]
    Delivery(String),
    /// Outputs still waiting for the brokers when a checkpoint's time ran out (a broker slow
    /// or away): nothing failed and nothing was committed.
    #[error("{0}")]
    Unacknowledged(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}
