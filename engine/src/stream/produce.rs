//! `vigil produce`: recorded traffic onto the input topics, keyed by account, at a given rate.

use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use serde::Deserialize;
use vigil_rules::catalog::ACCOUNT_EVENT_KINDS;

use super::pipeline::{client_config, log_kafka, log_kafka_error, user_wins};
use super::{StreamConfig, StreamError};

/// What was produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Produced {
    /// Lines sent to the transactions topic.
    pub transactions: u64,
    /// Lines sent to the account-events topic.
    pub account_events: u64,
    /// Lines without an account id (sent unkeyed to the transactions topic, where Vigil
    /// dead-letters them).
    pub unkeyed: u64,
    /// Messages the broker acknowledged.
    pub acked: u64,
    /// Messages the broker did not take.
    pub failed: u64,
    /// Lines larger than the producer's `message.max.bytes`: not sent (each is logged with
    /// its line number), neither counted as transactions nor as account events.
    pub too_large: Vec<u64>,
}

#[derive(Debug, Default)]
struct Counts {
    acked: AtomicU64,
    failed: AtomicU64,
}

#[derive(Debug, Clone, Default)]
struct Ctx(Arc<Counts>);

impl ClientContext for Ctx {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        log_kafka("producer", level, fac, message);
    }
    fn error(&self, error: KafkaError, reason: &str) {
        log_kafka_error("producer", &error, reason);
    }
}

impl ProducerContext for Ctx {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        match r {
            Ok(_) => self.0.acked.fetch_add(1, Ordering::Relaxed),
            Err((e, _)) => {
                log_kafka_error("producer", e, "a message was not delivered");
                self.0.failed.fetch_add(1, Ordering::Relaxed)
            }
        };
    }
}

#[derive(Deserialize)]
struct Route<'a> {
    #[serde(borrow, default)]
    kind: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    account_id: Option<std::borrow::Cow<'a, str>>,
}

/// Publishes every non-blank line of `input` (transactions to the transactions topic, account
/// events to the account-events topic, keyed by account id), at most `rate` per second,
/// calling `progress` with the count so far. Lines are sent as they are, even broken ones: the
/// pipeline is what judges them.
pub fn produce(
    cfg: &StreamConfig,
    mut input: impl BufRead,
    rate: Option<u64>,
    stop: &AtomicBool,
    mut progress: impl FnMut(u64),
) -> Result<Produced, StreamError> {
    let ctx = Ctx::default();
    let mut config = client_config(cfg);
    config
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("compression.type", "lz4")
        .set("linger.ms", "20")
        .set("batch.num.messages", "10000")
        .set("queue.buffering.max.messages", "500000")
        .set("message.timeout.ms", "0");
    let producer: ThreadedProducer<Ctx> =
        user_wins(&mut config, cfg).create_with_context(ctx.clone())?;
    let mut out = Produced::default();
    let mut line = Vec::new();
    let started = Instant::now();
    let mut sent = 0u64;
    let mut number = 0u64;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        line.clear();
        if input.read_until(b'\n', &mut line)? == 0 {
            break;
        }
        number += 1;
        while line.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
            line.pop();
        }
        if line.trim_ascii().is_empty() {
            continue;
        }
        let route: Option<Route<'_>> = serde_json::from_slice(&line).ok();
        let key = route.as_ref().and_then(|r| r.account_id.as_deref());
        let account_event = route
            .as_ref()
            .and_then(|r| r.kind.as_deref())
            .is_some_and(|k| ACCOUNT_EVENT_KINDS.contains(&k));
        let topic = if account_event {
            &cfg.topics.account_events
        } else {
            &cfg.topics.transactions
        };
        let mut rec = BaseRecord::to(topic).payload(&line[..]);
        if let Some(k) = key {
            rec = rec.key(k);
        }
        loop {
            match producer.send(rec) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                    rec = r;
                    std::thread::sleep(Duration::from_millis(1));
                }
                // One line the broker cannot take does not stop the rest.
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge), _)) => {
                    tracing::warn!(
                        "line {number}: {} bytes, more than a message may hold (message.max.bytes): not sent",
                        line.len()
                    );
                    out.too_large.push(number);
                    break;
                }
                Err((e, _)) => {
                    return Err(StreamError::Other(format!("line {number}: {e}")));
                }
            }
        }
        if out.too_large.last() == Some(&number) {
            continue;
        }
        if account_event {
            out.account_events += 1;
        } else {
            out.transactions += 1;
        }
        if key.is_none() {
            out.unkeyed += 1;
        }
        sent += 1;
        if sent.is_multiple_of(1000) {
            progress(sent);
        }
        if let Some(r) = rate.filter(|r| *r > 0) {
            let due = Duration::from_secs_f64(sent as f64 / r as f64);
            if let Some(wait) = due.checked_sub(started.elapsed()) {
                std::thread::sleep(wait);
            }
        }
    }
    progress(sent);
    producer.flush(Duration::from_secs(60))?;
    out.acked = ctx.0.acked.load(Ordering::Relaxed);
    out.failed = ctx.0.failed.load(Ordering::Relaxed);
    Ok(out)
}
