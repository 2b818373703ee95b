//! Prometheus metrics: `vigil_<name>_<unit>[_total]`, labels from small fixed sets (actions,
//! entry points, outcomes, rule ids of the active pack, partitions), never an account id.
//!
//! Hot-path counters are resolved to handles once (per action, per rule of the active pack),
//! so a decision bumps atomics and never hashes label values. Counters the Kafka pipeline
//! already keeps in its [`Stats`] are brought over when Prometheus scrapes ([`Metrics::render`]).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwapOption;
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use vigil_rules::program::Program;

use crate::decision::Decision;
use crate::engine::Engine;
use crate::stream::Stats;
use crate::stream::pipeline::action_index;

/// Where a decision was asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// The Kafka pipeline.
    Kafka,
    /// `POST /v1/authorize` and `POST /v1/transfers`.
    Http,
}

impl Entry {
    fn index(self) -> usize {
        match self {
            Entry::Kafka => 0,
            Entry::Http => 1,
        }
    }
    /// The `entry` label value.
    pub fn name(self) -> &'static str {
        ["kafka", "http"][self.index()]
    }
}

const ACTIONS: [&str; 4] = ["allow", "review", "step_up", "block"];
const SETTLEMENT_OUTCOMES: [&str; 4] = ["settled", "held", "declined", "refused"];

/// Seconds: decision latency (most answers take 1–10 µs).
const DECISION_BUCKETS: [f64; 14] = [
    1e-6, 2e-6, 4e-6, 6e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 1e-2, 1e-1,
];
/// Seconds: one rule's evaluation (tens of nanoseconds to a few microseconds).
const RULE_BUCKETS: [f64; 10] = [
    2.5e-8, 5e-8, 1e-7, 2.5e-7, 5e-7, 1e-6, 2.5e-6, 1e-5, 1e-4, 1e-3,
];

/// One rule evaluation timing sample every this many decisions.
pub const RULE_TIMING_EVERY: u64 = 64;

/// Handles for the rules of one pack version.
#[derive(Debug)]
pub struct RuleHandles {
    version: Arc<str>,
    /// [acting, shadow] hits per rule index.
    hits: Vec<[IntCounter; 2]>,
    errors: Vec<IntCounter>,
    eval: Vec<Histogram>,
}

impl RuleHandles {
    /// Counts what fired and what failed in one decision.
    pub fn count(&self, fired: impl Iterator<Item = (u16, bool)>, errors: &[u16]) {
        for (rule, shadow) in fired {
            if let Some(h) = self.hits.get(usize::from(rule)) {
                h[usize::from(shadow)].inc();
            }
        }
        for &rule in errors {
            if let Some(e) = self.errors.get(usize::from(rule)) {
                e.inc();
            }
        }
    }

    /// Records one timing sample per rule evaluated, nanoseconds (a rule skipped for the
    /// event's kind, [`vigil_rules::program::NOT_EVALUATED`], has none).
    pub fn timed(&self, nanos: &[u64]) {
        for (h, n) in self.eval.iter().zip(nanos) {
            if *n != vigil_rules::program::NOT_EVALUATED {
                h.observe(*n as f64 / 1e9);
            }
        }
    }
}

/// Every metric Vigil exports.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    decisions: [[IntCounter; 4]; 2],
    decision_seconds: Histogram,
    rule_hits: IntCounterVec,
    rule_errors: IntCounterVec,
    rule_eval: HistogramVec,
    rule_verdicts: IntCounterVec,
    rules: ArcSwapOption<RuleHandles>,
    pack_info: IntGaugeVec,
    pack_rules: IntGauge,
    reloads: IntCounterVec,
    events: IntCounterVec,
    dead_letters: IntCounter,
    checkpoints_postponed: IntCounter,
    settlements_waited: IntCounter,
    freezes: [IntCounter; 2],
    notifications: [IntCounter; 2],
    settlements: [[IntCounter; 4]; 2],
    consumer_lag: IntGaugeVec,
    partitions: IntGauge,
    state_keys: IntGaugeVec,
    state_bytes: IntGaugeVec,
    late_events: IntCounter,
    future_events: IntCounter,
    duplicate_events: IntCounter,
    http_requests: IntCounterVec,
    audit_entries: IntCounterVec,
    snoozes_active: IntGauge,
    published: [[IntCounter; 2]; 4],
    /// The pipeline's counters, synced into the counters above on every scrape.
    stream: Mutex<Option<Arc<Stats>>>,
    timing_tick: AtomicU64,
}

fn counter_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let v = IntCounterVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
        unreachable!("metric {name}: {e}");
    });
    let _ = r.register(Box::new(v.clone()));
    v
}

fn gauge_vec(r: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let v = IntGaugeVec::new(Opts::new(name, help), labels).unwrap_or_else(|e| {
        unreachable!("metric {name}: {e}");
    });
    let _ = r.register(Box::new(v.clone()));
    v
}

fn gauge(r: &Registry, name: &str, help: &str) -> IntGauge {
    let g = IntGauge::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = r.register(Box::new(g.clone()));
    g
}

fn counter(r: &Registry, name: &str, help: &str) -> IntCounter {
    let c = IntCounter::new(name, help).unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = r.register(Box::new(c.clone()));
    c
}

fn histogram_vec(
    r: &Registry,
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: &[f64],
) -> HistogramVec {
    let h = HistogramVec::new(
        HistogramOpts::new(name, help).buckets(buckets.to_vec()),
        labels,
    )
    .unwrap_or_else(|e| unreachable!("metric {name}: {e}"));
    let _ = r.register(Box::new(h.clone()));
    h
}

/// Brings a counter up to `value` (the pipeline's counters only grow).
fn sync(c: &IntCounter, value: u64) {
    let cur = c.get();
    if value > cur {
        c.inc_by(value - cur);
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Every metric, registered, at zero.
    pub fn new() -> Metrics {
        let r = Registry::new();
        let decisions_v = counter_vec(
            &r,
            "vigil_decisions_total",
            "Decisions by action and entry point (kafka, http).",
            &["entry", "action"],
        );
        let decisions = [Entry::Kafka, Entry::Http]
            .map(|e| ACTIONS.map(|a| decisions_v.with_label_values(&[e.name(), a])));
        let decision_seconds = histogram_vec(
            &r,
            "vigil_decision_duration_seconds",
            "Time to decide one transaction in the engine (state, features, rules).",
            &[],
            &DECISION_BUCKETS,
        )
        .with_label_values::<&str>(&[]);
        let freezes_v = counter_vec(
            &r,
            "vigil_freezes_total",
            "Accounts frozen by a freeze rule, by entry point.",
            &["entry"],
        );
        let notes_v = counter_vec(
            &r,
            "vigil_notifications_total",
            "Notifications to account holders, by entry point.",
            &["entry"],
        );
        let settle_v = counter_vec(
            &r,
            "vigil_settlements_total",
            "Decided transactions through the ledger, by entry point and outcome (settled, held, declined, refused).",
            &["entry", "outcome"],
        );
        let published_v = counter_vec(
            &r,
            "vigil_http_published_total",
            "Records of HTTP decisions published to the output topics, by kind (decision, freeze, notification, settlement) and result (acked, failed: lost).",
            &["kind", "result"],
        );
        let published = crate::stream::publish::KINDS
            .map(|k| ["acked", "failed"].map(|res| published_v.with_label_values(&[k, res])));
        let events = counter_vec(
            &r,
            "vigil_events_total",
            "Input events handled by the Kafka pipeline, by kind (transaction, account_event).",
            &["kind"],
        );
        let m = Metrics {
            decisions,
            decision_seconds,
            rule_hits: counter_vec(
                &r,
                "vigil_rule_hits_total",
                "Rules that fired, by rule id and mode (acting, shadow).",
                &["rule", "mode"],
            ),
            rule_errors: counter_vec(
                &r,
                "vigil_rule_errors_total",
                "Rules that could not be evaluated (a missing value), by rule id.",
                &["rule"],
            ),
            rule_eval: histogram_vec(
                &r,
                "vigil_rule_eval_duration_seconds",
                "Time to evaluate one rule, sampled on one decision in 64, by rule id.",
                &["rule"],
                &RULE_BUCKETS,
            ),
            rule_verdicts: counter_vec(
                &r,
                "vigil_rule_verdicts_total",
                "Resolved cases (review, dispute) by a rule that fired on the transfer, and the verdict (fraud, legit): confirmed hits and false positives.",
                &["rule", "verdict"],
            ),
            rules: ArcSwapOption::empty(),
            pack_info: gauge_vec(
                &r,
                "vigil_rules_pack_info",
                "The active rule pack: 1 for its name and hash.",
                &["pack", "hash"],
            ),
            pack_rules: gauge(&r, "vigil_rules_active_rules", "Rules in the active pack."),
            reloads: counter_vec(
                &r,
                "vigil_rules_reloads_total",
                "Rule pack reloads, by result (ok, failed, unchanged).",
                &["result"],
            ),
            dead_letters: counter(
                &r,
                "vigil_dead_letters_total",
                "Input messages sent to the dead-letter topic.",
            ),
            checkpoints_postponed: counter(
                &r,
                "vigil_kafka_checkpoints_postponed_total",
                "Periodic checkpoints (snapshot and commit) put off because outputs were not all acknowledged in time: a broker slow or away.",
            ),
            settlements_waited: counter(
                &r,
                "vigil_kafka_settlements_waited_total",
                "Transfer settlements that waited for the payee's account to be opened (read from another partition, or dated after the transfer).",
            ),
            freezes: [Entry::Kafka, Entry::Http].map(|e| freezes_v.with_label_values(&[e.name()])),
            notifications: [Entry::Kafka, Entry::Http]
                .map(|e| notes_v.with_label_values(&[e.name()])),
            settlements: [Entry::Kafka, Entry::Http]
                .map(|e| SETTLEMENT_OUTCOMES.map(|o| settle_v.with_label_values(&[e.name(), o]))),
            consumer_lag: gauge_vec(
                &r,
                "vigil_consumer_lag_messages",
                "Messages behind the end of each assigned input partition.",
                &["topic", "partition"],
            ),
            partitions: gauge(
                &r,
                "vigil_consumer_assigned_partitions",
                "Input partitions assigned to this instance.",
            ),
            state_keys: gauge_vec(
                &r,
                "vigil_state_keys",
                "Keys held in memory, by store (account, device, ip, counterparty, tx_id).",
                &["store"],
            ),
            state_bytes: gauge_vec(
                &r,
                "vigil_state_bytes",
                "Approximate bytes held in memory, by store (account, keyed).",
                &["store"],
            ),
            future_events: counter(
                &r,
                "vigil_future_events_total",
                "Events dated further ahead than allowed (a skewed or forged clock): decided, not counted in windows.",
            ),
            late_events: counter(
                &r,
                "vigil_late_events_total",
                "Events older than the allowed lateness: decided, not counted in windows.",
            ),
            duplicate_events: counter(
                &r,
                "vigil_duplicate_events_total",
                "Transactions seen again (same tx_id): decided, not counted twice.",
            ),
            http_requests: counter_vec(
                &r,
                "vigil_http_requests_total",
                "HTTP requests by route and status class (2xx, 4xx, 5xx).",
                &["route", "class"],
            ),
            audit_entries: counter_vec(
                &r,
                "vigil_audit_entries_total",
                "Audit log entries by kind (reload, freeze, unfreeze, verdict, snooze).",
                &["kind"],
            ),
            snoozes_active: gauge(
                &r,
                "vigil_snoozes_active",
                "Rule snoozes in force (one rule muted for one account).",
            ),
            published,
            events,
            registry: r,
            stream: Mutex::new(None),
            timing_tick: AtomicU64::new(0),
        };
        // Known outcomes start at 0, so `increase()` sees the first failure (a series born
        // at 1 has no earlier sample to increase from).
        for result in ["ok", "failed", "unchanged"] {
            m.reloads.with_label_values(&[result]);
        }
        m
    }

    /// Reads the pipeline's counters on every scrape.
    pub fn watch_stream(&self, stats: Arc<Stats>) {
        *self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(stats);
    }

    /// Handles for the rules of `program` at `version`, made once per version.
    pub fn rules(&self, version: &Arc<str>, program: &Program) -> Arc<RuleHandles> {
        if let Some(h) = self.rules.load_full()
            && h.version == *version
        {
            return h;
        }
        let h = Arc::new(RuleHandles {
            version: version.clone(),
            hits: program
                .rules
                .iter()
                .map(|r| {
                    ["acting", "shadow"].map(|m| self.rule_hits.with_label_values(&[&r.meta.id, m]))
                })
                .collect(),
            errors: program
                .rules
                .iter()
                .map(|r| self.rule_errors.with_label_values(&[&r.meta.id]))
                .collect(),
            eval: program
                .rules
                .iter()
                .map(|r| self.rule_eval.with_label_values(&[&r.meta.id]))
                .collect(),
        });
        self.rules.store(Some(h.clone()));
        h
    }

    /// Whether this decision should time each rule.
    pub fn sample_rule_timing(&self) -> bool {
        self.timing_tick
            .fetch_add(1, Ordering::Relaxed)
            .is_multiple_of(RULE_TIMING_EVERY)
    }

    /// The engine's time for one decision.
    pub fn decided_in(&self, seconds: f64) {
        self.decision_seconds.observe(seconds);
    }

    /// A decision answered over HTTP (the pipeline's are synced from its counters).
    pub fn http_decision(&self, d: &Decision) {
        self.decisions[Entry::Http.index()][action_index(d.action)].inc();
    }

    /// A freeze or a notification made over HTTP.
    pub fn http_effects(&self, froze: bool, notified: bool) {
        if froze {
            self.freezes[Entry::Http.index()].inc();
        }
        if notified {
            self.notifications[Entry::Http.index()].inc();
        }
    }

    /// A transaction settled over HTTP: outcome 0 settled, 1 held, 2 declined, 3 refused.
    pub fn http_settlement(&self, outcome: usize) {
        if let Some(c) = self.settlements[Entry::Http.index()].get(outcome) {
            c.inc();
        }
    }

    /// A record of an HTTP decision (kind: see `stream::publish::KINDS`) acknowledged or lost.
    pub fn published(&self, kind: usize, ok: bool) {
        if let Some(c) = self.published.get(kind) {
            c[usize::from(!ok)].inc();
        }
    }

    /// A rule reload: "ok", "failed" or "unchanged".
    pub fn reload(&self, result: &'static str) {
        self.reloads.with_label_values(&[result]).inc();
    }

    /// A resolved case: `rules` fired on its transfer; `verdict` is "fraud" or "legit".
    pub fn verdict(&self, rules: &[String], verdict: &'static str) {
        for r in rules {
            self.rule_verdicts.with_label_values(&[r, verdict]).inc();
        }
    }

    /// One HTTP request answered: `route` is the route's template, never a raw path.
    pub fn http_request(&self, route: &str, status: u16) {
        HttpRoute::new(self, route).answered(status);
    }

    /// An audit log entry written.
    pub fn audited(&self, kind: &str) {
        self.audit_entries.with_label_values(&[kind]).inc();
    }

    /// Snoozes in force now.
    pub fn set_snoozes(&self, n: usize) {
        self.snoozes_active
            .set(i64::try_from(n).unwrap_or(i64::MAX));
    }

    /// Every metric in the Prometheus text format, the engine's and the pipeline's read now.
    pub fn render(&self, engine: &Engine) -> String {
        let active = engine.active();
        self.rules(&active.version, &active.pack.program);
        self.pack_info.reset();
        self.pack_info
            .with_label_values(&[&active.pack.name, &active.pack.hash])
            .set(1);
        self.pack_rules
            .set(i64::try_from(active.pack.program.rules.len()).unwrap_or(i64::MAX));
        let st = engine.state_stats();
        let keys = [
            ("account", st.accounts),
            ("device", st.keyed[0]),
            ("ip", st.keyed[1]),
            ("counterparty", st.keyed[2]),
            ("tx_id", st.seen_tx),
        ];
        for (store, n) in keys {
            self.state_keys
                .with_label_values(&[store])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        for (store, n) in [("account", st.account_bytes), ("keyed", st.keyed_bytes)] {
            self.state_bytes
                .with_label_values(&[store])
                .set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        sync(&self.late_events, engine.late_events());
        sync(&self.future_events, engine.future_events());
        sync(&self.duplicate_events, engine.duplicate_events());
        let stream = self
            .stream
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(s) = stream {
            let k = Entry::Kafka.index();
            for (c, v) in self.decisions[k].iter().zip(&s.actions) {
                sync(c, Stats::get(v));
            }
            for (c, v) in self.settlements[k].iter().zip(&s.settlements) {
                sync(c, Stats::get(v));
            }
            sync(&self.freezes[k], Stats::get(&s.freezes));
            sync(&self.notifications[k], Stats::get(&s.notifications));
            sync(&self.dead_letters, Stats::get(&s.dead_lettered));
            sync(
                &self.checkpoints_postponed,
                Stats::get(&s.checkpoints_postponed),
            );
            sync(&self.settlements_waited, Stats::get(&s.settlements_waited));
            sync(
                &self.events.with_label_values(&["transaction"]),
                Stats::get(&s.decided),
            );
            sync(
                &self.events.with_label_values(&["account_event"]),
                Stats::get(&s.account_events),
            );
            self.partitions
                .set(i64::try_from(Stats::get(&s.assigned)).unwrap_or(i64::MAX));
            self.consumer_lag.reset();
            for ((topic, partition), lag) in s.lag() {
                self.consumer_lag
                    .with_label_values(&[topic.as_str(), &partition.to_string()])
                    .set(lag);
            }
        }
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// The request counters of one route, resolved once (`vigil_http_requests_total`).
#[derive(Debug, Clone)]
pub struct HttpRoute([IntCounter; 4]);

impl HttpRoute {
    /// The counters of `route` (its template, never a raw path).
    pub fn new(m: &Metrics, route: &str) -> HttpRoute {
        HttpRoute(
            ["2xx", "3xx", "4xx", "5xx"].map(|c| m.http_requests.with_label_values(&[route, c])),
        )
    }

    /// One answer with `status`.
    pub fn answered(&self, status: u16) {
        let i = match status {
            200..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.0[i].inc();
    }
}

/// Consumer lag per (topic, partition), as librdkafka last reported it.
pub type Lag = BTreeMap<(String, i32), i64>;
