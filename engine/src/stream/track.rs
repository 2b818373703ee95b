//! Which source offsets may be committed: a partition's offset advances only over messages
//! whose every output the broker has acknowledged, in order.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::message::Message;
use rdkafka::producer::{DeliveryResult, ProducerContext};

use super::Stats;

/// Bits of a delivery opaque: source offset (44), partition slot (16), output topic (4).
const OFFSET_BITS: u32 = 44;
const SLOT_BITS: u32 = 16;
/// Most source partitions one process tracks.
pub const SLOTS_MAX: usize = 1 << SLOT_BITS;

/// Packs (output topic, source slot, source offset) into a delivery opaque.
pub fn opaque(out: u8, slot: u16, offset: i64) -> usize {
    let off = (offset as u64) & ((1 << OFFSET_BITS) - 1);
    ((u64::from(out) << (OFFSET_BITS + SLOT_BITS)) | (u64::from(slot) << OFFSET_BITS) | off)
        as usize
}

fn unpack(o: usize) -> (u8, u16, i64) {
    let o = o as u64;
    (
        (o >> (OFFSET_BITS + SLOT_BITS)) as u8,
        ((o >> OFFSET_BITS) & ((1 << SLOT_BITS) - 1)) as u16,
        (o & ((1 << OFFSET_BITS) - 1)) as i64,
    )
}

#[derive(Debug, Default)]
struct Part {
    /// Offsets begun and not yet complete, with the outputs still awaited (+1 while begun).
    pending: VecDeque<(i64, u32)>,
    /// One past the last offset begun.
    next: i64,
    /// Every offset below this is complete.
    done: i64,
    /// [`Tracker::resets`] just after this slot was last reset (0: never).
    reset_at: u64,
}

impl Part {
    /// The count of outputs still awaited by the pending message at `offset`.
    fn awaited(&mut self, offset: i64) -> Option<&mut u32> {
        // Nearly always the newest (its outputs are being produced) or the oldest (the
        // acknowledgements come in order): no search for those.
        let i = match (self.pending.front(), self.pending.back()) {
            (_, Some(&(o, _))) if o == offset => self.pending.len() - 1,
            (Some(&(o, _)), _) if o == offset => 0,
            _ => self.pending.partition_point(|(o, _)| *o < offset),
        };
        self.pending
            .get_mut(i)
            .filter(|(o, _)| *o == offset)
            .map(|(_, n)| n)
    }
}

/// Offsets in flight per source partition, and the output topics' end offsets.
#[derive(Debug, Default)]
pub struct Tracker {
    parts: Mutex<Vec<Part>>,
    /// (output topic, partition) → one past the last acknowledged offset.
    out_ends: Mutex<HashMap<(u8, i32), i64>>,
    failed: Mutex<Option<String>>,
    /// Whether `failed` holds a failure (read on every turn of the loop, without the lock).
    has_failed: std::sync::atomic::AtomicBool,
    /// Outputs produced whose delivery report has not been handled yet.
    unreported: AtomicI64,
    /// Slots reset so far (partitions given up).
    resets: AtomicU64,
}

impl Tracker {
    /// Starts a message: its outputs are added with [`Tracker::add`], then [`Tracker::ack`] it
    /// once for the begin itself.
    /// Returns whether it is the first message of the slot (since a reset).
    pub fn begin(&self, slot: u16, offset: i64) -> bool {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let i = usize::from(slot);
        if parts.len() <= i {
            parts.resize_with(i + 1, Part::default);
        }
        let p = &mut parts[i];
        let first = p.pending.is_empty() && p.next == 0;
        if p.pending.is_empty() && p.next <= p.done {
            p.done = offset;
        }
        p.pending.push_back((offset, 1));
        p.next = offset + 1;
        first
    }

    /// One more output awaited for the message at `offset` (begun, not yet finished).
    pub fn add(&self, slot: u16, offset: i64) {
        self.unreported.fetch_add(1, Ordering::SeqCst);
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = parts
            .get_mut(usize::from(slot))
            .and_then(|p| p.awaited(offset))
        {
            *n += 1;
        }
    }

    /// Holds the message at `offset` (begun, not yet finished) open for work still to do —
    /// its settlement, waiting for its payee's account — without a delivery report to wait
    /// for: nothing at or past it is committed until an [`ack`](Self::ack) for the hold.
    pub fn hold(&self, slot: u16, offset: i64) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = parts
            .get_mut(usize::from(slot))
            .and_then(|p| p.awaited(offset))
        {
            *n += 1;
        }
    }

    /// An output [`add`](Self::add)ed that the producer refused: no delivery report will
    /// come for it, so [`settle`](Self::settle) does not wait for one. Its message stays
    /// awaited: nothing at or past it is committed.
    pub(crate) fn not_sent(&self) {
        self.unreported.fetch_sub(1, Ordering::SeqCst);
    }

    /// One output of `offset` acknowledged (or the begin finished).
    pub fn ack(&self, slot: u16, offset: i64) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let Some(p) = parts.get_mut(usize::from(slot)) else {
            return;
        };
        if let Some(n) = p.awaited(offset) {
            *n = n.saturating_sub(1);
        }
        while let Some(&(o, 0)) = p.pending.front() {
            p.pending.pop_front();
            p.done = o + 1;
        }
        if p.pending.is_empty() {
            p.done = p.next;
        }
    }

    /// The committable offset of `slot`: every message below it is complete.
    pub fn done(&self, slot: u16) -> Option<i64> {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .get(usize::from(slot))
            .filter(|p| p.next > 0)
            .map(|p| p.done)
    }

    /// Whether `slot` has messages whose outputs are not all acknowledged.
    #[cfg(test)]
    pub fn in_flight(&self, slot: u16) -> bool {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts
            .get(usize::from(slot))
            .is_some_and(|p| !p.pending.is_empty())
    }

    /// Forgets a slot (its partition was revoked).
    pub fn reset(&self, slot: u16) {
        let mut parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        let resets = self.resets.fetch_add(1, Ordering::SeqCst) + 1;
        if let Some(p) = parts.get_mut(usize::from(slot)) {
            *p = Part {
                reset_at: resets,
                ..Part::default()
            };
        }
    }

    /// How many slot resets there have been: a message begun when this was `n` may have been
    /// given up with its partition only if it has changed since ([`Tracker::reset_since`]).
    pub fn resets(&self) -> u64 {
        self.resets.load(Ordering::SeqCst)
    }

    /// Whether `slot` was reset since [`Tracker::resets`] was `n`: its messages begun before
    /// then were given up with their partition.
    pub fn reset_since(&self, slot: u16, n: u64) -> bool {
        let parts = self.parts.lock().unwrap_or_else(|e| e.into_inner());
        parts.get(usize::from(slot)).is_some_and(|p| p.reset_at > n)
    }

    /// End offsets acknowledged so far per (output topic index, partition).
    pub fn out_ends(&self) -> HashMap<(u8, i32), i64> {
        self.out_ends
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Waits until every output's delivery report has been handled (the producer's flush
    /// returns once reports are queued, not once they are handled); false on timeout.
    pub fn settle(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while self.unreported.load(Ordering::SeqCst) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
        true
    }

    /// Records a failure (the first one is kept): a delivery's, or the error the loop stopped
    /// on. No checkpoint is taken after it.
    pub(crate) fn fail(&self, msg: String) {
        let mut f = self.failed.lock().unwrap_or_else(|e| e.into_inner());
        f.get_or_insert(msg);
        self.has_failed.store(true, Ordering::Release);
    }

    /// The first failure, if any.
    pub fn failure(&self) -> Option<String> {
        if !self.has_failed.load(Ordering::Acquire) {
            return None;
        }
        self.failed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// The producer's context: routes acknowledgements to the tracker.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub tracker: Arc<Tracker>,
    pub stats: Arc<Stats>,
}

impl ClientContext for Delivery {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        super::pipeline::log_kafka("producer", level, fac, message);
    }
    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        super::pipeline::log_kafka_error("producer", &error, reason);
    }
}

impl ProducerContext for Delivery {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let (out, slot, offset) = unpack(opaque);
        // Counted as handled once the tracker has it (below), whatever the outcome.
        struct Reported<'a>(&'a AtomicI64);
        impl Drop for Reported<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let _reported = Reported(&self.tracker.unreported);
        match result {
            Ok(m) => {
                self.stats.acked.fetch_add(1, Ordering::Relaxed);
                {
                    let mut ends = self
                        .tracker
                        .out_ends
                        .lock()
                        .unwrap_or_else(|e| e.into_inner());
                    let e = ends.entry((out, m.partition())).or_insert(0);
                    *e = (*e).max(m.offset() + 1);
                }
                self.tracker.ack(slot, offset);
            }
            Err((e, m)) => {
                let msg = format!(
                    "output to topic '{}' for source offset {offset} was not delivered: {e}",
                    m.topic()
                );
                tracing::error!("{msg}");
                self.tracker.fail(msg);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_delivery_failure_is_kept() {
        let t = Tracker::default();
        assert_eq!(t.failure(), None);
        t.fail("first".into());
        t.fail("second".into());
        assert_eq!(t.failure().as_deref(), Some("first"));
    }

    #[test]
    fn resets_are_told_per_slot() {
        let t = Tracker::default();
        t.begin(0, 5);
        t.begin(1, 5);
        let before = t.resets();
        assert_eq!(before, 0);
        assert!(!t.reset_since(0, before) && !t.reset_since(1, before));
        t.reset(0);
        let after = t.resets();
        assert_eq!(after, 1);
        assert!(t.reset_since(0, before), "slot 0 was reset after `before`");
        assert!(!t.reset_since(1, before), "slot 1 was not");
        assert!(!t.reset_since(0, after), "nothing since `after`");
        // Begun again after the reset: not given up.
        t.begin(0, 3);
        t.reset(1);
        assert!(!t.reset_since(0, after) && t.reset_since(1, after));
        assert!(!t.reset_since(7, before), "a slot never used");
    }

    #[test]
    fn an_output_the_producer_refused_is_not_waited_for_but_holds_its_message() {
        let t = Tracker::default();
        t.begin(0, 5);
        t.add(0, 5);
        t.ack(0, 5); // the begin finished; the output is still awaited
        assert!(!t.settle(Duration::ZERO), "a delivery report is awaited");
        t.not_sent();
        assert!(t.settle(Duration::ZERO), "no report will come for it");
        assert_eq!(t.done(0), Some(5), "nothing at or past 5 may be committed");
        assert!(t.in_flight(0));
    }

    #[test]
    fn acknowledgements_out_of_order_and_at_either_end() {
        let t = Tracker::default();
        for o in 10..15 {
            t.begin(0, o);
            t.add(0, o);
            t.ack(0, o);
        }
        // Outputs acknowledged newest first, then one in the middle, then the oldest.
        t.ack(0, 14);
        t.ack(0, 12);
        assert_eq!(t.done(0), Some(10));
        t.ack(0, 10);
        assert_eq!(t.done(0), Some(11));
        t.ack(0, 11);
        assert_eq!(t.done(0), Some(13));
        t.ack(0, 13);
        assert_eq!(t.done(0), Some(15));
        assert!(!t.in_flight(0));
    }

    #[test]
    fn outputs_of_a_message_held_back_count_against_it() {
        // 5 waits for alignment while 6 and 7 are read; then 5 is decided and produces.
        let t = Tracker::default();
        for o in 5..8 {
            t.begin(1, o);
        }
        t.ack(1, 6);
        t.ack(1, 7);
        t.add(1, 5);
        t.ack(1, 5);
        assert_eq!(t.done(1), Some(5), "5's output is not acknowledged");
        t.ack(1, 5);
        assert_eq!(t.done(1), Some(8));
    }

    #[test]
    fn opaque_round_trips() {
        for (o, s, off) in [
            (0u8, 0u16, 0i64),
            (3, 65535, (1 << 44) - 1),
            (2, 7, 123_456),
        ] {
            assert_eq!(unpack(opaque(o, s, off)), (o, s, off));
        }
    }

    #[test]
    fn commits_only_a_fully_acknowledged_prefix() {
        let t = Tracker::default();
        assert_eq!(t.done(0), None);
        // offset 10: two outputs; 11: none; 12: one.
        t.begin(0, 10);
        t.add(0, 10);
        t.add(0, 10);
        t.ack(0, 10);
        t.begin(0, 11);
        t.ack(0, 11);
        t.begin(0, 12);
        t.add(0, 12);
        t.ack(0, 12);
        assert_eq!(t.done(0), Some(10), "nothing acknowledged yet");
        t.ack(0, 12); // 12's output first: out of order
        assert_eq!(t.done(0), Some(10));
        t.ack(0, 10);
        assert_eq!(t.done(0), Some(10), "10 still awaits one output");
        t.ack(0, 10);
        assert_eq!(t.done(0), Some(13));
        assert!(!t.in_flight(0));
        // Gaps in offsets (compaction, transaction markers) are fine.
        t.begin(0, 20);
        t.ack(0, 20);
        assert_eq!(t.done(0), Some(21));
        t.reset(0);
        assert_eq!(t.done(0), None);
    }
}
