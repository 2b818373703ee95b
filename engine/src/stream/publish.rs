//! Decisions made outside the stream (`POST /v1/authorize`) onto the same output topics as the
//! Kafka path: the decision, a freeze request when a freezing rule fired, the notifications,
//! and what the ledger did when the request settled — so the services that act on freezes, tell
//! users and follow settlements see every decision, whichever way it came in.
//!
//! The inline caller never waits for Kafka: records are handed to librdkafka, which retries
//! until the brokers take them. What cannot be queued (a full queue, i.e. brokers away for
//! long) or is finally refused is counted and logged, never retried by the caller.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use rdkafka::ClientContext;
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};

use super::pipeline::{
    EFFECT_HEADER, Effect, client_config, log_kafka, log_kafka_error, now_ms, user_wins,
};
use super::{Out, StreamConfig, StreamError, Topics, notify};
use crate::decision::Decision;
use crate::engine::Engine;
use crate::event::Transaction;
use crate::metrics::Metrics;

/// The kinds of record published, in the order of the counters.
pub const KINDS: [&str; 4] = ["decision", "freeze", "notification", "settlement"];

#[derive(Debug, Default)]
struct Counts {
    acked: [AtomicU64; 4],
    failed: [AtomicU64; 4],
    last_log_ms: AtomicI64,
}

#[derive(Clone)]
struct Ctx {
    counts: Arc<Counts>,
    metrics: Option<Arc<Metrics>>,
}

impl Ctx {
    fn count(&self, kind: usize, ok: bool) {
        let c = if ok {
            &self.counts.acked
        } else {
            &self.counts.failed
        };
        c[kind].fetch_add(1, Ordering::Relaxed);
        if let Some(m) = &self.metrics {
            m.published(kind, ok);
        }
    }

    /// A record lost, logged at most every 2 s.
    fn lost(&self, kind: usize, what: &str) {
        self.count(kind, false);
        let (now, last) = (now_ms(), &self.counts.last_log_ms);
        let prev = last.load(Ordering::Relaxed);
        if now - prev >= 2000
            && last
                .compare_exchange(prev, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let n: u64 = self
                .counts
                .failed
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .sum();
            tracing::error!(
                "publishing an HTTP decision's effects: {what} ({n} records lost so far)"
            );
        }
    }
}

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_kafka("publisher", level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_kafka_error("publisher", &error, reason);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = usize;
    fn delivery(&self, r: &DeliveryResult<'_>, kind: usize) {
        match r {
            Ok(_) => self.count(kind, true),
            Err((e, m)) => self.lost(
                kind,
                &format!("{} record to {} not delivered: {e}", KINDS[kind], m.topic()),
            ),
        }
    }
}

/// Publishes the effects of decisions made over HTTP.
pub struct Publisher {
    producer: ThreadedProducer<Ctx>,
    topics: Topics,
    ctx: Ctx,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

/// Records published or dropped so far, per kind (see [`KINDS`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    /// Acknowledged by the brokers.
    pub acked: [u64; 4],
    /// Dropped: refused by the brokers or not queued.
    pub failed: [u64; 4],
}

impl Publisher {
    /// A producer on `cfg`'s brokers and output topics, counting into `metrics`.
    pub fn new(
        cfg: &StreamConfig,
        metrics: Option<Arc<Metrics>>,
    ) -> Result<Publisher, StreamError> {
        let ctx = Ctx {
            counts: Arc::default(),
            metrics,
        };
        let mut config = client_config(cfg);
        config
            .set("client.id", "vigil-http")
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("compression.type", "lz4")
            .set("linger.ms", "5")
            .set("queue.buffering.max.messages", "200000")
            // Retried until delivered: brokers away for a while lose nothing.
            .set("message.timeout.ms", "0");
        let producer = user_wins(&mut config, cfg).create_with_context(ctx.clone())?;
        Ok(Publisher {
            producer,
            topics: cfg.topics.clone(),
            ctx,
        })
    }

    /// Publishes what `d` (the decision on `tx`) sets off, as the Kafka path does: the
    /// decision, then its follow-ups ([`notify::follow_ups`]: a freeze request, notifications
    /// in the holder's language). Nothing for a transaction decided already.
    pub fn decided(
        &self,
        engine: &Engine,
        ledger: Option<&crate::ledger::Ledger>,
        tx: &Transaction,
        d: &Decision,
    ) {
        if d.duplicate {
            return;
        }
        let mut json = Vec::with_capacity(512);
        d.write_json(&mut json);
        let effect = Effect::Decision.id(&tx.tx_id);
        self.send(0, &self.topics.decisions, &tx.tx_id, &json, &effect);
        for f in notify::follow_ups(engine, ledger, tx, d, now_ms) {
            let (kind, topic) = if f.out == Out::Freezes {
                (1, &self.topics.freezes)
            } else {
                (2, &self.topics.notifications)
            };
            self.send(kind, topic, &tx.account_id, &f.body, &f.effect);
        }
    }

    /// Publishes what the ledger did with `tx` (`t`), as the Kafka path's settlements record.
    pub fn settled(&self, tx: &Transaction, t: &crate::ledger::book::Transfer) {
        let body = notify::settlement(tx, t);
        let effect = Effect::Settlement.id(&tx.tx_id);
        self.send(3, &self.topics.settlements, &tx.tx_id, &body, &effect);
    }

    fn send(&self, kind: usize, topic: &str, key: &str, body: &[u8], effect: &str) {
        let headers = OwnedHeaders::new_with_capacity(2)
            .insert(Header {
                key: EFFECT_HEADER,
                value: Some(effect),
            })
            .insert(Header {
                key: "vigil-source",
                value: Some("http"),
            });
        let rec = BaseRecord::with_opaque_to(topic, kind)
            .key(key)
            .payload(body)
            .headers(headers);
        if let Err((e, _)) = self.producer.send(rec) {
            self.ctx
                .lost(kind, &format!("{effect} not queued for {topic}: {e}"));
        }
    }

    /// What was published so far.
    pub fn published(&self) -> Published {
        let load = |a: &[AtomicU64; 4]| a.each_ref().map(|c| c.load(Ordering::Relaxed));
        Published {
            acked: load(&self.ctx.counts.acked),
            failed: load(&self.ctx.counts.failed),
        }
    }

    /// Waits up to `timeout` for everything queued to be delivered (at shutdown).
    pub fn flush(&self, timeout: Duration) -> Result<(), StreamError> {
        Ok(self.producer.flush(timeout)?)
    }
}
