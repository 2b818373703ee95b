//! Time windows for one key (an account, a device, an IP, a counterparty).
//!
//! Three tiers, each kept only when the loaded rules need it:
//!
//! | tier   | answers windows      | holds                              | accuracy                        |
//! |--------|----------------------|------------------------------------|---------------------------------|
//! | exact  | up to [`EXACT_WINDOW_MS_MAX`] (1h) | each event's time and amount | exact, up to [`EXACT_EVENTS_MAX`] events per key |
//! | hours  | up to 48h            | one bucket per UTC hour with events | covers between W and W + 1h back |
//! | days   | up to 31 days        | one bucket per UTC day with events  | covers between W and W + 1d back |
//!
//! Buckets are sparse (only hours and days that had events), so a quiet key costs little.
//! `distinct(...)` keeps, per measure, the last time each value was seen (up to
//! [`DISTINCT_VALUES_MAX`] values, oldest replaced first): exact in time, saturating in count.
//! A new value takes over the entry of one no window can read any more, so a key's set holds
//! what its windows cover.
//!
//! Everything is kept for the longest window plus how far behind the key's latest event a
//! later event can still be read ([`WindowPlan::reach`]): the allowed lateness for an
//! account's own windows, the whole horizon for a shared key, which hears from many
//! partitions.
//! A window at time `t` covers `(t - W, t]`, so it includes the event being decided.

use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use vigil_rules::catalog::DistinctOf;

/// Longest window answered exactly from individual events.
pub const EXACT_WINDOW_MS_MAX: i64 = 3_600_000;
/// Most individual events kept per key; past it the oldest are dropped from the exact tier
/// (counts over short windows then saturate at this value).
pub const EXACT_EVENTS_MAX: usize = 512;
/// Longest window answered from hourly buckets.
pub const HOUR_TIER_MS_MAX: i64 = 48 * 3_600_000;
/// Longest window answered from daily buckets.
pub const DAY_TIER_MS_MAX: i64 = 31 * 86_400_000;
/// Most distinct values remembered per measure per key.
pub const DISTINCT_VALUES_MAX: usize = 64;

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

const _: () = assert!(EXACT_WINDOW_MS_MAX < HOUR_TIER_MS_MAX && HOUR_TIER_MS_MAX < DAY_TIER_MS_MAX);
const _: () = assert!(vigil_rules::pack::WINDOW_MS_MAX_DEFAULT <= DAY_TIER_MS_MAX);

/// What a key kind must keep, derived from the rules.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WindowPlan {
    /// Longest window answered by the exact tier (0: tier off).
    pub exact_ms: i64,
    /// Longest window answered by hourly buckets (0: off).
    pub hours_ms: i64,
    /// Longest window answered by daily buckets (0: off).
    pub days_ms: i64,
    /// Longest window per distinct measure, indexed like `DistinctOf::ALL` (0: not kept).
    pub distinct_ms: [i64; 5],
    /// Extra history kept so an event up to this late still reads a full window.
    pub lateness_ms: i64,
    /// How far behind the key's latest event a later event can still be recorded and read,
    /// when that is further than `lateness_ms`: a shared key (device, IP, counterparty) hears
    /// from many partitions and records an event up to its horizon behind its latest, so it
    /// keeps what such an event's windows count.
    pub reach_ms: i64,
}

impl WindowPlan {
    /// Adds a window of `window_ms` for amounts or counts.
    pub fn need(&mut self, window_ms: i64) {
        if window_ms <= EXACT_WINDOW_MS_MAX {
            self.exact_ms = self.exact_ms.max(window_ms);
        } else if window_ms <= HOUR_TIER_MS_MAX {
            self.hours_ms = self.hours_ms.max(window_ms);
        } else {
            self.days_ms = self.days_ms.max(window_ms);
        }
    }
    /// How far behind the key's latest event a read can reach back (see `reach_ms`).
    pub fn reach(&self) -> i64 {
        self.reach_ms.max(self.lateness_ms)
    }
    /// Whether anything is kept.
    pub fn is_empty(&self) -> bool {
        self.exact_ms == 0 && self.hours_ms == 0 && self.days_ms == 0 && self.distinct_ms == [0; 5]
    }
    /// The longest time anything is kept.
    pub fn horizon_ms(&self) -> i64 {
        let d = self.distinct_ms.iter().copied().max().unwrap_or(0);
        // A bucketed tier covers up to a bucket more than its window; one that is off, nothing.
        let bucketed = [(self.hours_ms, HOUR_MS), (self.days_ms, DAY_MS)]
            .map(|(window, width)| if window > 0 { window + width } else { 0 });
        bucketed
            .into_iter()
            .chain([self.exact_ms, d])
            .max()
            .unwrap_or(0)
            + self.lateness_ms
    }
}

/// How long before a key's latest event a value of distinct measure `m` can still be read:
/// its longest window plus how far a read can reach back (0 window: the measure is no longer
/// kept).
fn distinct_keep_ms(plan: &WindowPlan, m: u8) -> i64 {
    let window = plan.distinct_ms.get(usize::from(m)).copied().unwrap_or(0);
    if window == 0 {
        0
    } else {
        window + plan.reach()
    }
}

/// What an aggregate computes over a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Agg {
    /// Events in the window.
    pub count: i64,
    /// Sum of amounts (fixed point).
    pub sum: i64,
    /// Largest amount (0 when empty).
    pub max: i64,
    /// Smallest amount (0 when empty).
    pub min: i64,
}

impl Agg {
    const EMPTY: Agg = Agg {
        count: 0,
        sum: 0,
        max: i64::MIN,
        min: i64::MAX,
    };
    fn add(&mut self, count: i64, sum: i64, max: i64, min: i64) {
        self.count += count;
        self.sum = self.sum.saturating_add(sum);
        self.max = self.max.max(max);
        self.min = self.min.min(min);
    }
    fn finish(mut self) -> Agg {
        if self.count == 0 {
            self.max = 0;
            self.min = 0;
        }
        self
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Bucket {
    start: i64,
    count: u32,
    sum: i64,
    max: i64,
    min: i64,
}

/// Which bucketed tier a bucket belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Tier {
    Hours,
    Days,
}

impl Tier {
    fn width(self) -> i64 {
        match self {
            Tier::Hours => HOUR_MS,
            Tier::Days => DAY_MS,
        }
    }
}

/// Hourly then daily buckets (only hours and days that had events), each tier sorted by start,
/// in one vector: reading them costs one pointer away from the key's entry, not two.
#[derive(Debug, Clone, Default)]
struct Buckets {
    all: Vec<Bucket>,
    /// How many of `all` are hourly (they come first).
    hours: usize,
}

/// Snapshots encode the buckets as they did before they shared one vector (format 1): none,
/// or the hourly and the daily ones as two lists.
#[derive(Serialize)]
struct TiersOut<'a> {
    hours: &'a [Bucket],
    days: &'a [Bucket],
}

#[derive(Deserialize)]
struct TiersIn {
    hours: Vec<Bucket>,
    days: Vec<Bucket>,
}

impl Serialize for Buckets {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let t = (!self.all.is_empty()).then(|| TiersOut {
            hours: self.tier(Tier::Hours),
            days: self.tier(Tier::Days),
        });
        t.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Buckets {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(match Option::<TiersIn>::deserialize(d)? {
            None => Buckets::default(),
            Some(TiersIn { mut hours, days }) => {
                let n = hours.len();
                hours.extend(days);
                Buckets {
                    all: hours,
                    hours: n,
                }
            }
        })
    }
}

impl Buckets {
    fn tier(&self, t: Tier) -> &[Bucket] {
        match t {
            Tier::Hours => &self.all[..self.hours],
            Tier::Days => &self.all[self.hours..],
        }
    }

    fn add(&mut self, t: Tier, ts: i64, amount: i64) {
        let width = t.width();
        let start = ts.div_euclid(width) * width;
        let base = if t == Tier::Hours { 0 } else { self.hours };
        match self.tier(t).binary_search_by_key(&start, |b| b.start) {
            Ok(i) => {
                let b = &mut self.all[base + i];
                b.count = b.count.saturating_add(1);
                b.sum = b.sum.saturating_add(amount);
                b.max = b.max.max(amount);
                b.min = b.min.min(amount);
            }
            Err(i) => {
                self.all.insert(
                    base + i,
                    Bucket {
                        start,
                        count: 1,
                        sum: amount,
                        max: amount,
                        min: amount,
                    },
                );
                if t == Tier::Hours {
                    self.hours += 1;
                }
            }
        }
    }

    /// Drops the tier's buckets that end at or before `keep_from`.
    fn expire(&mut self, t: Tier, keep_from: i64) {
        let width = t.width();
        let drop = self
            .tier(t)
            .iter()
            .take_while(|b| b.start + width <= keep_from)
            .count();
        let base = if t == Tier::Hours { 0 } else { self.hours };
        self.all.drain(base..base + drop);
        if t == Tier::Hours {
            self.hours -= drop;
        }
    }

    fn record(&mut self, plan: &WindowPlan, now: i64, ts: i64, amount: i64) {
        for (t, window) in [(Tier::Hours, plan.hours_ms), (Tier::Days, plan.days_ms)] {
            if window > 0 {
                self.add(t, ts, amount);
                self.expire(t, now - window - t.width() - plan.reach());
            }
        }
    }

    fn sum(&self, t: Tier, from_excl: i64, to_incl: i64) -> Agg {
        let width = t.width();
        let mut a = Agg::EMPTY;
        for b in self.tier(t).iter().rev() {
            if b.start > to_incl {
                continue;
            }
            if b.start + width <= from_excl {
                break;
            }
            a.add(i64::from(b.count), b.sum, b.max, b.min);
        }
        a
    }
}

/// The windows of one key. Small collections live inline, so a typical key is one
/// contiguous block of memory: reading it costs one or two cache misses, not one per list.
///
/// `N` is how many exact events and distinct values each list holds inline (16 bytes each).
/// An account's outgoing windows answer `usual_amount` from daily buckets and never use
/// those lists, so they hold one ([`Amounts`]): 96 bytes, a cache line and a half, less per
/// account entry. Snapshots encode both alike.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Windows<const N: usize = 4> {
    /// Latest event time recorded.
    pub last_ts: i64,
    /// (time, amount), sorted by time.
    exact: SmallVec<[(i64, i64); N]>,
    /// Hourly and daily buckets, allocated when a plan first needs them.
    tiers: Buckets,
    /// Distinct values, all measures together.
    #[serde(with = "distinct_wire")]
    distinct: SmallVec<[Val; N]>,
}

/// The windows of an account's outgoing transactions: nearly always buckets alone.
pub type Amounts = Windows<1>;

/// A distinct value: its hash, and the last time it was seen with its measure's index in the
/// low 3 bits — 16 bytes instead of 24, as a busy key's set is scanned on every event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Val {
    hash: u64,
    seen_measure: i64,
}

impl Val {
    const MEASURE_BITS: u32 = 3;
    const MEASURE_MASK: i64 = (1 << Val::MEASURE_BITS) - 1;

    /// The times a value can hold: ±2^59 ms (±18 million years); a time past them is held as
    /// the nearest (parsed events are years 2000 to 2100).
    const SEEN_MAX: i64 = (1 << (63 - Val::MEASURE_BITS - 1)) - 1;
    const SEEN_MIN: i64 = -(1 << (63 - Val::MEASURE_BITS - 1));

    fn new(hash: u64, seen: i64, measure: u8) -> Val {
        debug_assert!(u32::from(measure) < 1 << Val::MEASURE_BITS);
        let seen = seen.clamp(Val::SEEN_MIN, Val::SEEN_MAX);
        Val {
            hash,
            seen_measure: (seen << Val::MEASURE_BITS) | (i64::from(measure) & Val::MEASURE_MASK),
        }
    }
    /// When the value was last seen (event time, ms).
    fn seen(self) -> i64 {
        self.seen_measure >> Val::MEASURE_BITS
    }
    /// The measure's index (`DistinctOf::ALL`).
    fn measure(self) -> u8 {
        (self.seen_measure & Val::MEASURE_MASK) as u8
    }
    /// A bound for packed values: `v.seen() <= t` exactly when
    /// `v.seen_measure <= Val::packed_until(t)`, whatever `v`'s measure (the largest packed value
    /// at `t`, or `i64::MIN`/`i64::MAX` for a time before or after every value's).
    fn packed_until(t: i64) -> i64 {
        if t < Val::SEEN_MIN {
            i64::MIN
        } else if t > Val::SEEN_MAX {
            i64::MAX
        } else {
            (t << Val::MEASURE_BITS) | Val::MEASURE_MASK
        }
    }
}

// Every measure fits in the low bits.
const _: () = assert!(DistinctOf::ALL.len() <= 1 << Val::MEASURE_BITS);

/// Snapshots keep the layout distinct values had before they were packed: (value hash, last
/// time seen, measure index).
mod distinct_wire {
    use super::Val;
    use serde::{Deserialize, Deserializer, Serializer, de::Error};
    use smallvec::SmallVec;

    pub fn serialize<S: Serializer, const N: usize>(
        v: &SmallVec<[Val; N]>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.collect_seq(v.iter().map(|e| (e.hash, e.seen(), e.measure())))
    }

    pub fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<SmallVec<[Val; N]>, D::Error> {
        let wire = Vec::<(u64, i64, u8)>::deserialize(d)?;
        wire.into_iter()
            .map(|(hash, seen, m)| {
                if u32::from(m) >= 1 << Val::MEASURE_BITS
                    || !(Val::SEEN_MIN..=Val::SEEN_MAX).contains(&seen)
                {
                    return Err(D::Error::custom(format!(
                        "distinct value out of range: measure {m}, seen at {seen}"
                    )));
                }
                Ok(Val::new(hash, seen, m))
            })
            .collect()
    }
}

impl<const N: usize> Windows<N> {
    /// Records an event at `ts` with `amount` (fixed point) and the hashes of its distinct
    /// measures (indexed like `DistinctOf::ALL`, 0 = absent).
    pub fn record(&mut self, plan: &WindowPlan, ts: i64, amount: i64, distinct: &[u64; 5]) {
        self.last_ts = self.last_ts.max(ts);
        let now = self.last_ts;
        if plan.exact_ms > 0 {
            // What has aged out goes first, so the common case (a key's last event is older
            // than its window) moves nothing; an event that is itself that old is not kept.
            let cutoff = now - plan.exact_ms - plan.reach();
            let expired = self.exact.iter().take_while(|(t, _)| *t <= cutoff).count();
            self.exact.drain(..expired);
            if ts > cutoff {
                let pos = self
                    .exact
                    .iter()
                    .rposition(|(t, _)| *t <= ts)
                    .map_or(0, |p| p + 1);
                self.exact.insert(pos, (ts, amount));
                if self.exact.len() > EXACT_EVENTS_MAX {
                    self.exact.remove(0);
                }
            }
        } else if !self.exact.is_empty() {
            self.exact = SmallVec::new();
        }
        if plan.hours_ms > 0 || plan.days_ms > 0 {
            self.tiers.record(plan, now, ts, amount);
        }
        // Per measure index (the low bits of a value), the latest packed value no read can
        // reach any more: an entry at or below it can be taken over by any measure.
        let mut unread = [i64::MIN; 1 << Val::MEASURE_BITS];
        if plan
            .distinct_ms
            .iter()
            .zip(distinct)
            .any(|(&w, &h)| w > 0 && h != 0)
        {
            for (k, u) in (0u8..).zip(&mut unread) {
                *u = Val::packed_until(now - distinct_keep_ms(plan, k));
            }
        }
        for (m, &window) in plan.distinct_ms.iter().enumerate() {
            let (h, m) = (distinct[m], m as u8);
            if window == 0 || h == 0 {
                continue;
            }
            // One pass: the value's own entry; else how many this measure holds, and an entry
            // no window can read any more (of any measure) for the new value to take over,
            // so a key's set holds about what its windows cover instead of growing to the cap
            // (and a hot key's set is not rewritten on every event).
            let unread_m = unread[usize::from(m)];
            let (mut held, mut unread_held, mut free) = (0, 0, None);
            let mut own = None;
            for (i, e) in self.distinct.iter().enumerate() {
                let em = e.measure();
                if em == m {
                    if e.hash == h {
                        own = Some(i);
                        break;
                    }
                    held += 1;
                    unread_held += usize::from(e.seen_measure <= unread_m);
                }
                if free.is_none() && e.seen_measure <= unread[usize::from(em)] {
                    free = Some(i);
                }
            }
            if let Some(i) = own {
                let e = &mut self.distinct[i];
                *e = Val::new(h, e.seen().max(ts), m);
            } else if held < DISTINCT_VALUES_MAX {
                match free {
                    Some(i) => self.distinct[i] = Val::new(h, ts, m),
                    None => self.distinct.push(Val::new(h, ts, m)),
                }
            } else if unread_held > 0 {
                // Full, but holding values no read reaches: they go (so a set full after a
                // burst shrinks back), and the new value joins.
                self.distinct
                    .retain(|e| e.measure() != m || e.seen_measure > unread_m);
                self.distinct.push(Val::new(h, ts, m));
            } else if let Some(oldest) = self
                .distinct
                .iter_mut()
                .filter(|e| e.measure() == m)
                .min_by_key(|e| e.seen())
            {
                // Full of values still read: the oldest goes.
                *oldest = Val::new(h, ts, m);
            }
        }
        if self.distinct.len() > DistinctOf::ALL.len() * DISTINCT_VALUES_MAX {
            // Measures the plan no longer keeps (after a pack swap) are dropped here.
            self.distinct.retain(|e| {
                plan.distinct_ms
                    .get(usize::from(e.measure()))
                    .is_some_and(|&w| w > 0)
            });
        }
    }

    /// Whether nothing was ever recorded (or all of it was dropped).
    pub fn is_empty(&self) -> bool {
        self.last_ts == 0
            && self.exact.is_empty()
            && self.tiers.all.is_empty()
            && self.distinct.is_empty()
    }

    /// Starts loading the lists kept outside the entry: the ends of the events and of the
    /// buckets, and the whole distinct set (see [`super::prefetch`]).
    pub fn prefetch_heap(&self) {
        use super::prefetch::{ends, head};
        ends(&self.exact);
        // Scanned whole on every event (up to 64 values per measure: a busy merchant's set is
        // 16 lines); its first and last alone left the scan stalling on the rest, 1M
        // accounts: 459-483k -> 496-537k decisions/s. Bounded: a set can hold 320 values.
        head(&self.distinct, 4096);
        ends(&self.tiers.all);
    }

    /// Count, sum, max and min over `(at - window_ms, at]`, from the tier that answers it.
    pub fn aggregate(&self, at: i64, window_ms: i64) -> Agg {
        let from = at - window_ms;
        let a = if window_ms <= EXACT_WINDOW_MS_MAX {
            let mut a = Agg::EMPTY;
            for &(t, amt) in self.exact.iter().rev() {
                if t > at {
                    continue;
                }
                if t <= from {
                    break;
                }
                a.add(1, amt, amt, amt);
            }
            a
        } else if window_ms <= HOUR_TIER_MS_MAX {
            self.tiers.sum(Tier::Hours, from, at)
        } else {
            self.tiers.sum(Tier::Days, from, at)
        };
        a.finish()
    }

    /// Distinct values of measure `m` seen in `(at - window_ms, ∞)`.
    pub fn distinct(&self, m: usize, at: i64, window_ms: i64) -> i64 {
        let live = |e: &&Val| usize::from(e.measure()) == m && e.seen() > at - window_ms;
        self.distinct.iter().filter(live).count() as i64
    }

    /// Approximate heap bytes held (inline storage is counted with the entry).
    pub fn heap_bytes(&self) -> usize {
        let spilled = |spilled: bool, cap: usize, size: usize| if spilled { cap * size } else { 0 };
        let bucket = std::mem::size_of::<Bucket>();
        spilled(self.exact.spilled(), self.exact.capacity(), 16)
            + spilled(
                self.distinct.spilled(),
                self.distinct.capacity(),
                std::mem::size_of::<Val>(),
            )
            + self.tiers.all.capacity() * bucket
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The naive model: every event, kept forever.
    #[derive(Default)]
    struct Model(Vec<(i64, i64, u64)>);

    impl Model {
        fn agg(&self, from: i64, at: i64) -> Agg {
            let mut a = Agg::EMPTY;
            for &(t, amt, _) in &self.0 {
                if t > from && t <= at {
                    a.add(1, amt, amt, amt);
                }
            }
            a.finish()
        }
    }

    fn plan(window: i64) -> WindowPlan {
        let mut p = WindowPlan {
            distinct_ms: [window, 0, 0, 0, 0],
            ..WindowPlan::default()
        };
        p.need(window);
        p
    }

    proptest! {
        /// Exact windows agree with the naive model for any order of in-window events.
        #[test]
        fn exact_tier_matches_model(
            window_s in 1i64..3600,
            steps in prop::collection::vec((0i64..600, 1i64..1_000_000, 0u64..6), 1..200),
        ) {
            let window = window_s * 1000;
            let p = plan(window);
            let mut w = <Windows>::default();
            let mut m = Model::default();
            let mut t = 1_700_000_000_000i64;
            for (dt_s, amount, cp) in steps {
                t += dt_s * 1000;
                let mut d = [0u64; 5];
                d[0] = cp + 1;
                w.record(&p, t, amount, &d);
                m.0.push((t, amount, cp + 1));
                prop_assert_eq!(w.aggregate(t, window), m.agg(t - window, t));
                let mut seen: Vec<u64> = m.0.iter().filter(|e| e.0 > t - window).map(|e| e.2).collect();
                seen.sort();
                seen.dedup();
                prop_assert_eq!(w.distinct(0, t, window), seen.len() as i64);
            }
        }

        /// Bucketed windows cover at least the window and at most one bucket more.
        #[test]
        fn bucketed_tiers_stay_within_one_bucket(
            window_h in 2i64..(31 * 24),
            steps in prop::collection::vec((0i64..(6 * 3600), 1i64..1_000_000), 1..150),
        ) {
            let window = window_h * HOUR_MS;
            let width = if window <= HOUR_TIER_MS_MAX { HOUR_MS } else { DAY_MS };
            let p = plan(window);
            let mut w = <Windows>::default();
            let mut m = Model::default();
            let mut t = 1_700_000_000_000i64;
            for (dt_s, amount) in steps {
                t += dt_s * 1000;
                w.record(&p, t, amount, &[0; 5]);
                m.0.push((t, amount, 0));
                let got = w.aggregate(t, window);
                let lo = m.agg(t - window, t);
                let hi = m.agg(t - window - width, t);
                prop_assert!(got.count >= lo.count && got.count <= hi.count, "{:?} not in [{:?}, {:?}]", got, lo, hi);
                prop_assert!(got.sum >= lo.sum && got.sum <= hi.sum);
            }
        }
    }

    #[test]
    fn snapshots_encode_the_buckets_as_format_1_did() {
        /// The layout before the buckets shared one vector.
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct OldTiers {
            hours: Vec<Bucket>,
            days: Vec<Bucket>,
        }
        #[derive(Debug, Serialize, Deserialize)]
        struct OldWindows {
            last_ts: i64,
            exact: SmallVec<[(i64, i64); 4]>,
            tiers: Option<Box<OldTiers>>,
            distinct: SmallVec<[(u64, i64, u8); 4]>,
        }
        let mut p = plan(3 * DAY_MS);
        p.need(6 * HOUR_MS);
        p.need(600_000);
        let mut w = <Windows>::default();
        let t0 = 1_700_000_000_000;
        for i in 0..40 {
            w.record(&p, t0 + i * 5_400_000, 100 + i, &[7, 0, 0, 0, 0]);
        }
        assert!(w.tiers.hours > 0 && w.tiers.all.len() > w.tiers.hours);
        let bytes = postcard::to_stdvec(&w).unwrap();
        let old: OldWindows = postcard::from_bytes(&bytes).unwrap();
        let tiers = old.tiers.as_ref().unwrap();
        assert_eq!(tiers.hours.as_slice(), w.tiers.tier(Tier::Hours));
        assert_eq!(tiers.days.as_slice(), w.tiers.tier(Tier::Days));
        // And back: an old snapshot reads into the same windows.
        let back: Windows = postcard::from_bytes(&postcard::to_stdvec(&old).unwrap()).unwrap();
        let at = t0 + 39 * 5_400_000;
        for window in [600_000, 6 * HOUR_MS, 3 * DAY_MS] {
            assert_eq!(back.aggregate(at, window), w.aggregate(at, window));
        }
        assert_eq!(back.tiers.all, w.tiers.all);
        // Distinct values keep their unpacked layout on the wire.
        assert_eq!(old.distinct.as_slice(), [(7, t0 + 39 * 5_400_000, 0)]);
        assert_eq!(back.distinct, w.distinct);
        assert_eq!(back.distinct(0, at, 600_000), 1);
        // A measure index past what packs into a value is refused, not wrapped.
        let mut bad = old;
        bad.distinct[0].2 = 8;
        assert!(postcard::from_bytes::<Windows>(&postcard::to_stdvec(&bad).unwrap()).is_err());
        let none: OldWindows =
            postcard::from_bytes(&postcard::to_stdvec(&<Windows>::default()).unwrap()).unwrap();
        assert!(none.tiers.is_none());
    }

    /// An account's outgoing windows hold one exact event and one distinct value inline, not
    /// four: the entry is 96 bytes smaller, they still answer every window (past one, the lists
    /// spill to the heap), and snapshots cannot tell them apart.
    #[test]
    fn outgoing_windows_answer_and_encode_like_any_others() {
        assert_eq!(
            std::mem::size_of::<Windows>() - std::mem::size_of::<Amounts>(),
            96
        );
        let mut p = plan(3 * DAY_MS);
        p.need(6 * HOUR_MS);
        p.need(600_000);
        let (mut full, mut small) = (<Windows>::default(), Amounts::default());
        let t0 = 1_700_000_000_000;
        for i in 0..40 {
            let (t, d) = (t0 + i * 60_000, [i as u64 % 7 + 1, 0, 0, 0, 0]);
            full.record(&p, t, 100 + i, &d);
            small.record(&p, t, 100 + i, &d);
        }
        assert!(small.exact.spilled() && small.distinct.spilled());
        let at = t0 + 39 * 60_000;
        for window in [600_000, 6 * HOUR_MS, 3 * DAY_MS] {
            assert_eq!(small.aggregate(at, window), full.aggregate(at, window));
            assert_eq!(small.distinct(0, at, window), full.distinct(0, at, window));
        }
        let bytes = postcard::to_stdvec(&full).unwrap();
        assert_eq!(postcard::to_stdvec(&small).unwrap(), bytes);
        let back: Amounts = postcard::from_bytes(&bytes).unwrap();
        assert_eq!(postcard::to_stdvec(&back).unwrap(), bytes);
    }

    /// A key's distinct values take over the entries of values its windows no longer read, of
    /// any measure, so a quiet key holds what its windows cover, not the cap; a busy key still
    /// counts every value in its window.
    #[test]
    fn distinct_sets_hold_what_their_windows_cover() {
        let mut p = plan(600_000);
        p.distinct_ms[1] = 3_600_000;
        p.lateness_ms = 60_000;
        let mut w = <Windows>::default();
        let t0 = 1_700_000_000_000;
        for i in 0..500u64 {
            // A new counterparty every 20 minutes, and a new device every 40.
            let t = t0 + i as i64 * 1_200_000;
            w.record(&p, t, 1, &[i + 1, i / 2 + 1, 0, 0, 0]);
            assert_eq!(w.distinct(0, t, 600_000), 1);
            // The last hour holds the events 20 and 40 minutes back: two devices.
            assert_eq!(w.distinct(1, t, 3_600_000), if i < 2 { 1 } else { 2 });
            assert!(w.distinct.len() <= 6, "{} entries at {i}", w.distinct.len());
        }
        // Busy: 30 values in 5 minutes all count, and the set grows to hold them.
        let t1 = t0 + 600 * 1_200_000;
        for i in 0..30u64 {
            w.record(&p, t1 + i as i64 * 10_000, 1, &[1_000 + i, 7, 0, 0, 0]);
        }
        assert_eq!(w.distinct(0, t1 + 290_000, 600_000), 30);
        assert!(w.distinct.len() >= 31);
    }

    /// At the cap a measure's count saturates and its oldest value makes room; once its values
    /// age past every read, new ones count from zero in the same room.
    #[test]
    fn a_full_distinct_set_keeps_its_newest_values() {
        const S: i64 = 1_000;
        let cap = DISTINCT_VALUES_MAX as u64;
        let mut p = plan(600 * S);
        p.distinct_ms[1] = 600 * S;
        p.lateness_ms = 60 * S;
        let mut w = <Windows>::default();
        let t0 = 1_700_000_000_000;
        // 100 counterparties in 100 seconds, all from one device.
        for v in 1..=100u64 {
            w.record(&p, t0 + v as i64 * S, 1, &[v, 7, 0, 0, 0]);
        }
        let t = t0 + 100 * S;
        assert_eq!(w.distinct(0, t, 600 * S), cap as i64);
        assert_eq!(w.distinct(1, t, 600 * S), 1);
        // The newest 64 are held. The 37th is seen again in place (no longer the oldest); the
        // 36th comes back as new and pushes out the 38th, now the oldest.
        let held = |w: &Windows, v: u64| w.distinct.iter().any(|e| e.measure() == 0 && e.hash == v);
        assert!(held(&w, 37) && !held(&w, 36));
        w.record(&p, t + 50, 1, &[37, 7, 0, 0, 0]);
        assert!(held(&w, 37) && w.distinct(0, t + 50, 600 * S) == cap as i64);
        w.record(&p, t + 100, 1, &[36, 7, 0, 0, 0]);
        assert!(held(&w, 36) && held(&w, 37) && !held(&w, 38));
        // A window of 30 seconds counts only what the last 30 seconds saw.
        assert_eq!(w.distinct(0, t + 100, 30 * S), 32);
        // Past the window and the lateness nothing is read any more: new values count alone,
        // and the set sheds what no read reaches.
        let later = t + 700 * S;
        for v in 0..5u64 {
            w.record(&p, later + v as i64, 1, &[1_000 + v, 0, 0, 0, 0]);
        }
        assert_eq!(w.distinct(0, later + 4, 600 * S), 5);
        assert_eq!(w.distinct(1, later + 4, 600 * S), 0);
        assert!(w.distinct.len() <= 6, "{} entries", w.distinct.len());
    }

    /// A plan keeps its longest window, a bucket's width past a bucketed one, plus the
    /// lateness: a tier that is off adds nothing.
    #[test]
    fn a_plan_keeps_only_what_its_tiers_and_lateness_need() {
        const MIN: i64 = 60_000;
        let mut p = plan(10 * MIN);
        p.lateness_ms = 5 * MIN;
        assert_eq!(p.horizon_ms(), 15 * MIN, "exact tier and distinct only");
        p.distinct_ms[2] = 30 * MIN;
        assert_eq!(p.horizon_ms(), 35 * MIN);
        p.need(6 * HOUR_MS);
        assert_eq!(p.horizon_ms(), 7 * HOUR_MS + 5 * MIN, "hourly buckets");
        p.need(30 * DAY_MS);
        assert_eq!(p.horizon_ms(), 31 * DAY_MS + 5 * MIN, "daily buckets");
    }

    /// The packed bound orders like the time it stands for, for every measure, at the edges of
    /// what a value can hold and past them.
    #[test]
    fn a_packed_bound_orders_like_its_time() {
        let times = [Val::SEEN_MIN, -1, 0, 1, 1_700_000_000_000, Val::SEEN_MAX];
        for seen in times {
            for m in 0..1u8 << Val::MEASURE_BITS {
                let v = Val::new(7, seen, m);
                for t in [seen - 1, seen, seen + 1, i64::MIN, i64::MAX] {
                    let packed = v.seen_measure <= Val::packed_until(t);
                    assert_eq!(packed, seen <= t, "seen {seen} measure {m} against {t}");
                }
            }
        }
    }

    /// Only an entry no read can reach is taken over: one of the measure's own window plus the
    /// reach (the lateness here), judged by its own measure's window.
    #[test]
    fn a_value_is_taken_over_only_past_its_own_measures_reach() {
        const M: i64 = 60_000;
        let t0 = 1_700_000_000_000;
        // Counterparties over 10 minutes, devices over an hour: 20 minutes on, the device
        // seen at t0 is past the counterparty window but inside its own.
        let mut p = plan(10 * M);
        p.distinct_ms[1] = 60 * M;
        p.lateness_ms = M;
        let mut w = <Windows>::default();
        w.record(&p, t0, 1, &[0, 1, 0, 0, 0]);
        w.record(&p, t0 + 20 * M, 1, &[5, 2, 0, 0, 0]);
        assert_eq!(w.distinct(1, t0 + 20 * M, 60 * M), 2);
        // Values at 0, 14 and (late by 5 minutes, within the lateness) 9 minutes: the one at 0
        // is still read by the event at 9.
        let mut p = plan(10 * M);
        p.lateness_ms = 5 * M;
        let mut w = <Windows>::default();
        for (v, at) in [(1, 0), (2, 14), (3, 9)] {
            w.record(&p, t0 + at * M, 1, &[v, 0, 0, 0, 0]);
        }
        assert_eq!(w.distinct(0, t0 + 9 * M, 10 * M), 3);
    }

    /// Distinct values keep their unpacked layout on the wire, byte for byte, for every
    /// measure and for times before 1970; a time a value cannot hold is refused on the wire and
    /// held as the nearest it can hold when recorded.
    #[test]
    fn distinct_values_keep_their_wire_layout() {
        #[derive(Debug, PartialEq, Serialize, Deserialize)]
        struct Wire(Vec<(u64, i64, u8)>);
        let mut p = plan(600_000);
        p.distinct_ms = [600_000; 5];
        let mut w = <Windows>::default();
        let t = 1_700_000_000_000;
        w.record(&p, t, 1, &[11, 12, 13, 14, 15]);
        w.record(&p, t + 1, 1, &[11, 22, 0, 0, 0]);
        let mut want: Vec<(u64, i64, u8)> = vec![(11, t + 1, 0), (12, t, 1)];
        want.extend([(13, t, 2), (14, t, 3), (15, t, 4), (22, t + 1, 1)]);
        let bytes = postcard::to_stdvec(&Holder(w.distinct.clone())).expect("encode");
        assert_eq!(
            bytes,
            postcard::to_stdvec(&Wire(want.clone())).expect("encode")
        );
        let back: Windows =
            postcard::from_bytes(&postcard::to_stdvec(&w).expect("encode")).expect("decode");
        assert_eq!(back.distinct, w.distinct);
        for m in 0..5 {
            assert_eq!(back.distinct(m, t + 1, 600_000), if m == 1 { 2 } else { 1 });
        }
        for seen in [Val::SEEN_MAX + 1, Val::SEEN_MIN - 1, i64::MAX] {
            let bad = postcard::to_stdvec(&Wire(vec![(1, seen, 0)])).expect("encode");
            let read: Result<Holder, _> = postcard::from_bytes(&bad);
            assert!(read.is_err(), "{seen}");
        }
        let before_1970 = Holder(SmallVec::from_slice(&[Val::new(9, -5, 2)]));
        let bytes = postcard::to_stdvec(&before_1970).expect("encode");
        assert_eq!(
            bytes,
            postcard::to_stdvec(&Wire(vec![(9, -5, 2)])).expect("encode")
        );
        let back: Holder = postcard::from_bytes(&bytes).expect("decode");
        assert_eq!((back.0[0].seen(), back.0[0].measure()), (-5, 2));
        assert_eq!(Val::new(1, i64::MAX, 4).seen(), Val::SEEN_MAX);
        assert_eq!(Val::new(1, i64::MIN, 4).measure(), 4);
        assert_eq!(Val::new(1, i64::MIN, 4).seen(), Val::SEEN_MIN);
    }

    /// Decodes a distinct set alone, as the windows do.
    #[derive(Debug, Serialize, Deserialize)]
    struct Holder(#[serde(with = "distinct_wire")] SmallVec<[Val; 4]>);

    #[test]
    fn a_late_event_reads_a_full_window() {
        // Window 10m, lateness 5m: events at 10:01 and 10:12, then one at 10:08 arriving late.
        let mut p = plan(600_000);
        p.lateness_ms = 300_000;
        let mut w = <Windows>::default();
        let m = 60_000;
        w.record(&p, 601 * m, 1, &[0; 5]);
        w.record(&p, 612 * m, 1, &[0; 5]);
        w.record(&p, 608 * m, 1, &[0; 5]);
        assert_eq!(
            w.aggregate(608 * m, 600_000).count,
            2,
            "(9:58, 10:08] holds 10:01 and 10:08"
        );
        assert_eq!(
            w.aggregate(612 * m, 600_000).count,
            2,
            "(10:02, 10:12] holds 10:08 and 10:12"
        );
    }

    #[test]
    fn late_events_land_in_their_place_and_state_stays_bounded() {
        let p = plan(600_000);
        let mut w = <Windows>::default();
        let t0 = 1_700_000_000_000;
        w.record(&p, t0, 5, &[0; 5]);
        w.record(&p, t0 + 300_000, 7, &[0; 5]);
        w.record(&p, t0 + 100_000, 11, &[0; 5]); // late, within the window
        assert_eq!(w.aggregate(t0 + 300_000, 600_000).sum, 23);
        assert_eq!(w.aggregate(t0 + 150_000, 600_000).sum, 16);
        for i in 0..(EXACT_EVENTS_MAX as i64 * 2) {
            w.record(&p, t0 + 400_000 + i, 1, &[0; 5]);
        }
        assert_eq!(
            w.aggregate(t0 + 400_000 + 2000, 600_000).count,
            EXACT_EVENTS_MAX as i64
        );
        w.record(&p, t0 + 86_400_000, 1, &[0; 5]);
        assert_eq!(w.aggregate(t0 + 86_400_000, 600_000).count, 1);
    }
}
