//! Event-time alignment of the two input topics.
//!
//! `transactions` and `account-events` are both keyed by account and split the same way (same
//! partition count, range assignment), so partition `p` of each holds the same accounts. Read
//! at different speeds — catching up after a restart, a backlog on one topic — a transaction
//! could be decided before the password reset that preceded it, or after a device change that
//! came later. So each partition pair is merged by event time: an event goes when the other
//! side has nothing earlier left to give (its next event is later, it has applied a later one,
//! or it is read to its end). On a tie the transaction goes first.
//!
//! A side that runs ahead (with a backlog librdkafka hands messages over in fetch order, and
//! the sparser account-events topic runs days ahead of transactions) is paused once
//! [`PAUSE_AT`] of its events wait (by default), and resumed when they are down to a quarter
//! of that: the merge stays exact and bounded however far behind the pipeline is. A wait is still bounded: an
//! event held while the other side stays silent, or past a count, goes anyway and is counted
//! as unaligned.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use crate::event::Event;

/// The transactions side.
pub const TX: usize = 0;
/// The account-events side.
pub const ACCOUNT: usize = 1;
/// Events waiting on one side of one partition at which that side is paused (by default).
pub const PAUSE_AT: usize = 4_096;
/// Events left waiting at which a paused side is resumed (by default).
pub const RESUME_AT: usize = PAUSE_AT / 4;

/// An event waiting for its turn.
#[derive(Debug)]
pub struct Item {
    /// Its source partition's tracker slot.
    pub slot: u16,
    /// Its source offset.
    pub offset: i64,
    /// Its event time.
    pub ts: i64,
    /// The event.
    pub event: Event,
    /// When it arrived.
    pub since: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Side {
    last_ts: i64,
    at_end: bool,
    paused: bool,
    last_push: Option<Instant>,
}

impl Default for Side {
    fn default() -> Self {
        Side {
            last_ts: i64::MIN,
            at_end: false,
            paused: false,
            last_push: None,
        }
    }
}

/// A partition with events waiting.
#[derive(Debug, Clone, Copy)]
pub struct Waiting {
    /// The partition.
    pub p: i32,
    /// Which sides have nothing waiting.
    pub empty: [bool; 2],
    /// When the oldest waiting event arrived.
    pub oldest: Instant,
    /// When each side last brought an event.
    pub last_push: [Option<Instant>; 2],
}

#[derive(Debug, Default)]
struct Part {
    queues: [VecDeque<Item>; 2],
    sides: [Side; 2],
}

/// The merge state of every partition pair.
#[derive(Debug)]
pub struct Align {
    parts: HashMap<i32, Part>,
    total: usize,
    pause_at: usize,
    resume_at: usize,
    /// (side, partition, pause) to apply to the consumer.
    flow: Vec<(usize, i32, bool)>,
}

impl Default for Align {
    fn default() -> Self {
        Align::new(PAUSE_AT)
    }
}

impl Align {
    /// A merge that pauses a side once `pause_at` of its events wait in one partition, and
    /// resumes it at a quarter of that.
    pub fn new(pause_at: usize) -> Align {
        let pause_at = pause_at.max(4);
        Align {
            parts: HashMap::new(),
            total: 0,
            pause_at,
            resume_at: pause_at / 4,
            flow: Vec::new(),
        }
    }

    /// An event arrived on `side` of partition `p`.
    pub fn push(&mut self, side: usize, p: i32, item: Item) {
        let part = self.parts.entry(p).or_default();
        let s = &mut part.sides[side];
        s.at_end = false;
        s.last_push = Some(item.since);
        part.queues[side].push_back(item);
        self.total += 1;
        if !s.paused && part.queues[side].len() >= self.pause_at {
            s.paused = true;
            self.flow.push((side, p, true));
        }
    }

    /// Sides to pause (`true`) or resume since the last call, as (side, partition, pause).
    pub fn take_flow(&mut self) -> Vec<(usize, i32, bool)> {
        std::mem::take(&mut self.flow)
    }

    /// Whether sides wait to be paused or resumed.
    pub fn has_flow(&self) -> bool {
        !self.flow.is_empty()
    }

    /// `side` of partition `p` is read to its end (or is not read by this consumer).
    pub fn at_end(&mut self, side: usize, p: i32) {
        self.parts.entry(p).or_default().sides[side].at_end = true;
    }

    /// Events waiting in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Partitions with waiting events.
    pub fn waiting(&self) -> Vec<Waiting> {
        self.parts
            .iter()
            .filter_map(|(p, part)| {
                let oldest = part
                    .queues
                    .iter()
                    .filter_map(|q| q.front().map(|i| i.since))
                    .min()?;
                Some(Waiting {
                    p: *p,
                    empty: [part.queues[0].is_empty(), part.queues[1].is_empty()],
                    oldest,
                    last_push: [part.sides[0].last_push, part.sides[1].last_push],
                })
            })
            .collect()
    }

    /// Partitions with waiting events.
    pub fn partitions(&self) -> Vec<i32> {
        self.parts
            .iter()
            .filter(|(_, part)| part.queues.iter().any(|q| !q.is_empty()))
            .map(|(p, _)| *p)
            .collect()
    }

    /// The next event of partition `p` whose turn it is; with `force`, the earlier head
    /// whatever the other side may still bring.
    pub fn next(&mut self, p: i32, force: bool) -> Option<Item> {
        let part = self.parts.get_mut(&p)?;
        let heads = [
            part.queues[TX].front().map(|i| i.ts),
            part.queues[ACCOUNT].front().map(|i| i.ts),
        ];
        let side = match heads {
            [Some(t), Some(a)] => {
                if t <= a {
                    TX
                } else {
                    ACCOUNT
                }
            }
            [Some(t), None] => {
                let other = part.sides[ACCOUNT];
                if force || other.at_end || other.last_ts >= t {
                    TX
                } else {
                    return None;
                }
            }
            [None, Some(a)] => {
                // Strictly later: a transaction at the same time would still go first.
                let other = part.sides[TX];
                if force || other.at_end || other.last_ts > a {
                    ACCOUNT
                } else {
                    return None;
                }
            }
            [None, None] => return None,
        };
        let item = part.queues[side].pop_front()?;
        let s = &mut part.sides[side];
        s.last_ts = s.last_ts.max(item.ts);
        if s.paused && part.queues[side].len() <= self.resume_at {
            s.paused = false;
            self.flow.push((side, p, false));
        }
        self.total -= 1;
        Some(item)
    }

    /// Whether the event a forced [`Align::next`] would release on partition `p` arrived at or
    /// before `before`.
    pub fn head_waited(&self, p: i32, before: Instant) -> bool {
        let Some(part) = self.parts.get(&p) else {
            return false;
        };
        let head = match [part.queues[TX].front(), part.queues[ACCOUNT].front()] {
            [Some(t), Some(a)] => {
                if t.ts <= a.ts {
                    t
                } else {
                    a
                }
            }
            [Some(i), None] | [None, Some(i)] => i,
            [None, None] => return false,
        };
        head.since <= before
    }

    /// Forgets partition `p` (revoked): its waiting events are dropped, not decided; their
    /// offsets were never committed, so the partition's next owner reads them again. Its
    /// pauses go with it (an assignment starts unpaused).
    pub fn forget(&mut self, p: i32) {
        if let Some(part) = self.parts.remove(&p) {
            self.total -= part.queues.iter().map(VecDeque::len).sum::<usize>();
        }
        self.flow.retain(|(_, q, _)| *q != p);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::decode;

    fn item(ts: i64, n: i64) -> Item {
        let line = format!(
            r#"{{"schema":1,"event_id":"e{n}","ts":"2026-01-01T00:00:00Z","kind":"login","account_id":"a"}}"#
        );
        Item {
            slot: 0,
            offset: n,
            ts,
            event: decode(line.as_bytes()).unwrap_or_else(|e| panic!("{e}")),
            since: Instant::now(),
        }
    }

    fn drain(a: &mut Align, p: i32) -> Vec<i64> {
        std::iter::from_fn(|| a.next(p, false).map(|i| i.offset)).collect()
    }

    #[test]
    fn merges_by_event_time_with_transactions_first_on_ties() {
        let mut a = Align::default();
        // Transactions arrive first, far ahead of the account events.
        a.push(TX, 0, item(10, 1));
        a.push(TX, 0, item(30, 2));
        a.push(TX, 0, item(50, 3));
        assert_eq!(
            drain(&mut a, 0),
            Vec::<i64>::new(),
            "nothing heard from account events"
        );
        a.push(ACCOUNT, 0, item(20, 101));
        assert_eq!(
            drain(&mut a, 0),
            vec![1, 101],
            "30 may still have an account event before it"
        );
        a.push(ACCOUNT, 0, item(30, 102));
        a.push(ACCOUNT, 0, item(60, 103));
        assert_eq!(drain(&mut a, 0), vec![2, 102, 3]);
        assert_eq!(a.total(), 1, "60 waits for the transactions side");
        a.at_end(TX, 0);
        assert_eq!(drain(&mut a, 0), vec![103]);
        assert_eq!(a.total(), 0);
    }

    #[test]
    fn account_events_wait_for_earlier_transactions() {
        let mut a = Align::default();
        a.push(ACCOUNT, 3, item(100, 1));
        assert_eq!(drain(&mut a, 3), Vec::<i64>::new());
        a.push(TX, 3, item(100, 2));
        a.push(TX, 3, item(90, 3));
        // Heads: tx 100 vs account 100 → the transaction first (tie); then the late tx 90
        // (earlier than the account event); the account event waits for a later transaction.
        assert_eq!(drain(&mut a, 3), vec![2, 3]);
        a.at_end(TX, 3);
        assert_eq!(drain(&mut a, 3), vec![1]);
    }

    #[test]
    fn a_side_that_runs_ahead_is_paused_and_resumed_once_caught_up() {
        let mut a = Align::default();
        for n in 0..PAUSE_AT as i64 - 1 {
            a.push(ACCOUNT, 2, item(1_000 + n, n));
        }
        assert!(!a.has_flow(), "not yet at the limit");
        a.push(ACCOUNT, 2, item(1_000_000, 99_999));
        assert_eq!(a.take_flow(), vec![(ACCOUNT, 2, true)]);
        assert!(!a.has_flow(), "taken");
        // Transactions catch up: account events go in order until RESUME_AT are left.
        let resumed_after = PAUSE_AT - RESUME_AT;
        a.push(TX, 2, item(1_000 + resumed_after as i64, 500_000));
        let order = drain(&mut a, 2);
        assert_eq!(order.len(), resumed_after + 1);
        assert_eq!(
            order[resumed_after], 500_000,
            "the tie goes to the transaction"
        );
        assert_eq!(a.take_flow(), vec![(ACCOUNT, 2, false)]);
        // Pausing again needs the queue back at the limit, and forgetting drops what is due.
        for n in 0..(PAUSE_AT - RESUME_AT + 1) as i64 {
            a.push(ACCOUNT, 2, item(2_000_000 + n, 600_000 + n));
        }
        assert!(a.has_flow());
        a.forget(2);
        assert!(!a.has_flow(), "a revoked partition is not paused");
    }

    #[test]
    fn knows_how_long_the_next_forced_event_waited() {
        let mut a = Align::default();
        assert!(!a.head_waited(1, Instant::now()));
        let mut old = item(10, 1);
        old.since = Instant::now() - std::time::Duration::from_secs(3);
        a.push(TX, 1, old);
        let cutoff = Instant::now() - std::time::Duration::from_secs(2);
        a.push(TX, 1, item(20, 2));
        assert!(a.head_waited(1, cutoff));
        assert_eq!(a.next(1, true).map(|i| i.offset), Some(1));
        assert!(!a.head_waited(1, cutoff), "the next one arrived just now");
        assert!(a.head_waited(1, Instant::now()));
    }

    #[test]
    fn forced_and_forgotten() {
        let mut a = Align::default();
        a.push(TX, 1, item(5, 1));
        a.push(TX, 2, item(5, 2));
        assert_eq!(a.partitions().len(), 2);
        assert_eq!(a.next(1, true).map(|i| i.offset), Some(1));
        a.forget(2);
        assert_eq!(a.total(), 0);
        assert!(a.waiting().is_empty());
    }
}
