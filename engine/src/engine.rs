//! `Engine::decide`: features from state, the compiled program, a decision with reasons.
//!
//! One engine serves every entry point (Kafka, HTTP, replay, rule tests), so a rule behaves the
//! same everywhere. State is sharded ([`dashmap`]); one account's events must arrive in order
//! from one caller at a time (Kafka keys by account), which the Kafka path and replay ensure.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use rustc_hash::FxHashMap;
use vigil_rules::catalog::{ACCOUNT_EVENT_KINDS, AggFunc, KeyKind};
use vigil_rules::compile::FEATURES_MAX;
use vigil_rules::num::{self, NUM_SCALE};
use vigil_rules::program::NEVER_MS;
use vigil_rules::{Action, CompiledPack, Facts, Feature, Outcome};

use crate::decision::{Decision, Reason};
use crate::event::{AccountEvent, Event, Transaction, TxKind};
use crate::state::account::{COUNTRIES_MAX, NEVER, Profile, haversine_km};
use crate::state::window::{Amounts, WindowPlan, Windows};
use crate::state::{
    AccountState, Guard, IdHasher, IdSecret, Locked, ShardMut, State, StateLimits, StateStats,
    entry_in, get_in, get_mut_in, held_shard, prefetch_entry, prefetch_entry_in, prefetch_slot,
    prefetch_slot_in, remove_if_in, shard_mut,
};

/// What of the payer's entry, and of a device's, IP's or counterparty's, a decision starts
/// loading ahead: all of it (a decision reads nearly every cache line of them). Of the
/// payee's it reads only the opening.
const ACCOUNT_ENTRY: std::ops::Range<usize> = 0..std::mem::size_of::<(u64, AccountState)>();
const KEY_ENTRY: std::ops::Range<usize> = 0..std::mem::size_of::<(u64, Windows)>();
const SEEN_ENTRY: std::ops::Range<usize> = 0..std::mem::size_of::<(u64, i64)>();
const PAYEE_OPENED: std::ops::Range<usize> = {
    let at = std::mem::offset_of!((u64, AccountState), 1)
        + std::mem::offset_of!(AccountState, profile.opened_ms);
    at..at + std::mem::size_of::<Option<i64>>()
};

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How late (event time, behind the account's latest transaction) an event may be and still
    /// be counted in its own place; an older one is decided on current state and not counted.
    /// At most [`LATENESS_MS_MAX`].
    pub lateness_ms: i64,
    /// How far ahead of the stream's watermark an event may be and still be counted; a further
    /// one (a skewed client clock, a forged timestamp) is decided but not counted, so it cannot
    /// push windows or eviction into the future. Off (`None`) by default: a quiet stream or a
    /// replay legitimately jumps ahead; the live paths guard with `clock_ahead_ms` instead.
    pub future_ms: Option<i64>,
    /// How far past the wall clock an event's time may be and still be counted; a further one
    /// is decided but not counted, like a `future_ms` one. The live paths (`vigil serve`) set
    /// it, so one producer with a skewed or forged clock cannot move windows, lateness and
    /// eviction into the future for everyone (every later event would be "late" and go
    /// uncounted); replays leave it off, their decisions must not depend on when they run.
    pub clock_ahead_ms: Option<i64>,
    /// State limits.
    pub limits: StateLimits,
    /// Evict idle state every this many events, inline in the decision that reaches the count
    /// (deterministic: replays). 0: never inline — the caller runs [`Engine::maintain`]
    /// itself, as `vigil serve` does on a thread of its own, so no decision waits for a sweep
    /// of the whole state (tens of milliseconds at a million accounts).
    pub maintain_every: u64,
    /// Accounts to reserve room for up front (0: grow as needed). Growing a large table
    /// moves every entry, so a deployment that knows its size should say it.
    pub accounts_capacity: usize,
    /// The secret ids are hashed into state keys under (see [`IdHasher`]). `None` (the
    /// default): drawn from the operating system, so ids cannot be built to share a key.
    /// Replays, backtests and dry runs fix [`crate::state::REPLAY_SECRET`], so their
    /// decisions do not depend on a draw. A restored snapshot brings its own.
    pub id_secret: Option<IdSecret>,
}

/// Longest allowed lateness: the hourly tier keeps one spare hour, no more.
pub const LATENESS_MS_MAX: i64 = 3_600_000;

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lateness_ms: 5 * 60_000,
            future_ms: None,
            clock_ahead_ms: None,
            limits: StateLimits::default(),
            maintain_every: 1 << 20,
            accounts_capacity: 0,
            id_secret: None,
        }
    }
}

/// Buffers reused across decisions on one thread.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The rule program's outcome.
    pub outcome: Outcome,
    /// Feature values, one per slot, computed on demand.
    pub features: Vec<i64>,
    /// Which slots of `features` are computed for the event being decided.
    pub known: Vec<bool>,
    /// Per-rule evaluation times of a sampled decision.
    pub rule_nanos: Vec<u64>,
    /// The keys of a batch's transactions.
    keys: Vec<Keys>,
}

/// Most transactions a batch decides under one taking of the state's locks
/// ([`Engine::decide_batch`]): long enough that the locks cost nothing per decision, short
/// enough that a decision on another thread waits at most about 100 µs.
pub const BATCH: usize = 64;

/// The state keys of one transaction, hashed once.
#[derive(Debug, Clone, Copy)]
struct Keys {
    /// Its id in the transaction-id set.
    tx: u64,
    /// The payer's account.
    acct: u64,
    /// The counterparty's account: the payee of a transfer (0: none).
    payee: u64,
    /// The payee's account when the rules read its opening (else 0).
    payee_read: u64,
    /// Device, IP and counterparty (0: absent).
    keyed: [u64; 3],
    /// The body's tag (see [`IdHasher::body_tag`]).
    body: u32,
}

impl Keys {
    fn of(tx: &Transaction, active: &ActivePack, ids: &IdHasher) -> Keys {
        // The counterparty hashed once: as a payee account (tag 0) and as a counterparty (3).
        let [payee, counterparty] = tx
            .counterparty_id
            .as_deref()
            .map_or([0, 0], |c| ids.keys(c, [0, 3]));
        let acct = ids.key(0, &tx.account_id);
        let code = tx.currency.code().as_bytes();
        let body = ids.body_tag([
            acct,
            payee,
            tx.amount_minor as u64,
            code.iter()
                .fold(u64::from(tx.kind as u8), |w, &b| w << 8 | u64::from(b)),
        ]);
        Keys {
            tx: ids.key(9, &tx.tx_id),
            acct,
            body,
            payee,
            payee_read: if active.payee_age { payee } else { 0 },
            keyed: [
                tx.device_id.as_deref().map_or(0, |d| ids.key(1, d)),
                tx.ip.as_deref().map_or(0, |i| ids.key(2, i)),
                counterparty,
            ],
        }
    }
}

/// What a batch starts loading for a decision ahead of it (see [`Engine::decide_batch`]).
#[derive(Debug, Clone, Copy)]
enum Stage {
    /// Where its entries are: the control bytes their probes begin with.
    Slots,
    /// The entries themselves, found from those control bytes.
    Entries,
}

impl Stage {
    /// Each stage, and how many decisions ahead of its transaction's it starts. (Three
    /// ahead for the control bytes made no difference; a third stage one ahead starting to
    /// load the windows' lists kept outside the entries, found from them, was slower:
    /// 446,000–568,000 against 593,000–633,000 decisions/s at 1M accounts.)
    const AHEAD: [(Stage, usize); 2] = [(Stage::Entries, 1), (Stage::Slots, 2)];
    /// The furthest ahead a stage starts.
    const DEPTH: usize = {
        let (mut i, mut max) = (0, 0);
        while i < Stage::AHEAD.len() {
            if Stage::AHEAD[i].1 > max {
                max = Stage::AHEAD[i].1;
            }
            i += 1;
        }
        max
    };
}

/// A pack with the state layout its rules need.
#[derive(Debug)]
pub struct ActivePack {
    /// The compiled pack.
    pub pack: CompiledPack,
    /// Its hash, shared by every decision.
    pub version: Arc<str>,
    /// Windows per key kind, indexed like `KeyKind::ALL`.
    plans: [WindowPlan; 4],
    /// Windows over the account's outgoing transactions, for `usual_amount`.
    outgoing: WindowPlan,
    /// Whether any rule reads the payee's account age.
    payee_age: bool,
    /// How long a transaction id must be remembered: the longest window plus lateness.
    seen_ms: i64,
}

impl ActivePack {
    /// Prepares a pack: derives which windows each store keeps.
    pub fn new(pack: CompiledPack, lateness_ms: i64) -> ActivePack {
        let mut plans: [WindowPlan; 4] = Default::default();
        let mut outgoing = WindowPlan::default();
        for f in &pack.program.features {
            match *f {
                Feature::Agg(a) => {
                    let p = &mut plans[a.key as usize];
                    match a.func {
                        AggFunc::Distinct(d) => {
                            let m = d as usize;
                            p.distinct_ms[m] = p.distinct_ms[m].max(a.window_ms);
                        }
                        _ => p.need(a.window_ms),
                    }
                }
                Feature::UsualAmount { window_ms } => outgoing.need(window_ms),
                _ => {}
            }
        }
        for p in plans.iter_mut().chain([&mut outgoing]) {
            p.lateness_ms = lateness_ms;
        }
        // Shared keys record events up to their horizon behind their latest (see
        // `decide_inner`), so they keep what those events' windows read.
        for p in &mut plans[KeyKind::Device as usize..] {
            p.reach_ms = p.horizon_ms();
        }
        let seen_ms = plans
            .iter()
            .chain([&outgoing])
            .map(WindowPlan::horizon_ms)
            .max()
            .unwrap_or(0);
        let payee_age = pack.program.features.contains(&Feature::PayeeAccountAge);
        let version = Arc::from(pack.hash.as_str());
        ActivePack {
            pack,
            version,
            plans,
            outgoing,
            payee_age,
            seen_ms,
        }
    }
}

/// The decision engine.
#[derive(Debug)]
pub struct Engine {
    active: ArcSwap<ActivePack>,
    pub(crate) state: State,
    config: EngineConfig,
    pub(crate) events: AtomicU64,
    pub(crate) watermark: AtomicI64,
    pub(crate) late_events: AtomicU64,
    pub(crate) future_events: AtomicU64,
    pub(crate) duplicate_events: AtomicU64,
    metrics: std::sync::OnceLock<Arc<crate::metrics::Metrics>>,
    /// Rules muted per account: account hash → (rule id, until ms, event time).
    snoozes: ArcSwap<Snoozed>,
    /// The latest events, for dry runs of a candidate pack (off unless asked for).
    recent: std::sync::OnceLock<Recent>,
}

/// A ring of the latest events, in the order they were applied.
#[derive(Debug)]
struct Recent {
    events: std::sync::Mutex<std::collections::VecDeque<Event>>,
    max: usize,
}

impl Recent {
    fn push(&self, event: Event) {
        let mut q = self.events.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= self.max {
            q.pop_front();
        }
        q.push_back(event);
    }
}

/// Rules muted per account: (rule id, muted for transactions before this time, ms). Keyed by
/// the account id, not its state key: snoozes may be set before a snapshot's secret is
/// restored.
type Snoozed = FxHashMap<Box<str>, Vec<(Box<str>, i64)>>;

/// Rounds kilometres to whole metres, so the last digits of a platform's `sin`/`asin` never
/// change a decision's text.
fn km(x: f64) -> i64 {
    if x.is_finite() {
        ((x * 1000.0).round() * (NUM_SCALE / 1000) as f64).clamp(0.0, 1e18) as i64
    } else {
        0
    }
}

/// A balance Vigil has not seen from the account's opening on reads as this (one billion):
/// comparisons such as `amount >= 0.8 * balance` are then false instead of guessed.
pub const UNKNOWN_BALANCE: i64 = 1_000_000_000 * NUM_SCALE;

/// How an event is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Counting {
    /// Recorded in every window and the profile.
    Counted,
    /// Seen before (same tx_id): decided on current state, not recorded.
    Duplicate,
    /// Older than the allowed lateness: decided on current state, not recorded.
    Late,
    /// Too far ahead of the watermark: decided, not recorded.
    Future,
}

impl Engine {
    /// An engine running `pack` on empty state.
    pub fn new(pack: CompiledPack, mut config: EngineConfig) -> Engine {
        config.lateness_ms = config.lateness_ms.clamp(0, LATENESS_MS_MAX);
        Engine {
            active: ArcSwap::from_pointee(ActivePack::new(pack, config.lateness_ms)),
            state: State::new(
                config.accounts_capacity,
                config.id_secret.unwrap_or_else(IdSecret::random),
            ),
            config,
            events: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            late_events: AtomicU64::new(0),
            future_events: AtomicU64::new(0),
            duplicate_events: AtomicU64::new(0),
            metrics: std::sync::OnceLock::new(),
            snoozes: ArcSwap::from_pointee(Snoozed::default()),
            recent: std::sync::OnceLock::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.config
    }

    /// Keeps the latest `n` events decided or observed from now on (once; later calls are
    /// ignored), for [`Engine::recent_events`]. Costs a copy of each event.
    pub fn keep_recent(&self, n: usize) {
        if n > 0 {
            let _ = self.recent.set(Recent {
                events: std::sync::Mutex::new(std::collections::VecDeque::with_capacity(n)),
                max: n,
            });
        }
    }

    /// The latest events kept (see [`Engine::keep_recent`]), oldest first.
    pub fn recent_events(&self) -> Vec<Event> {
        self.recent.get().map_or_else(Vec::new, |r| {
            r.events
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .cloned()
                .collect()
        })
    }

    /// Replaces the snoozes: each `(account, rule, until_ms)` mutes `rule` for `account` on
    /// transactions whose event time is before `until_ms` (a known false positive). A muted
    /// rule does not act or score; the decision lists it under `snoozed`.
    pub fn set_snoozes<'a>(&self, snoozes: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
        let mut map = Snoozed::default();
        for (account, rule, until) in snoozes {
            map.entry(Box::<str>::from(account))
                .or_default()
                .push((rule.into(), until));
        }
        self.snoozes.store(Arc::new(map));
    }

    /// Reports decision latency, rule hits, errors and sampled rule timings to `metrics` from
    /// now on (once; later calls are ignored).
    pub fn set_metrics(&self, metrics: Arc<crate::metrics::Metrics>) {
        let _ = self.metrics.set(metrics);
    }

    /// The metrics the engine reports to, if any.
    pub fn metrics(&self) -> Option<&Arc<crate::metrics::Metrics>> {
        self.metrics.get()
    }

    /// The active pack.
    pub fn active(&self) -> Arc<ActivePack> {
        self.active.load_full()
    }

    /// Swaps in a new pack between two events. State is kept; windows a new rule needs fill
    /// from the next events on.
    pub fn swap_pack(&self, pack: CompiledPack) -> Arc<ActivePack> {
        let new = Arc::new(ActivePack::new(pack, self.config.lateness_ms));
        self.active.store(new.clone());
        new
    }

    /// Sizes of the state.
    pub fn state_stats(&self) -> StateStats {
        self.state.stats()
    }

    /// Events that arrived later than the allowed lateness.
    pub fn late_events(&self) -> u64 {
        self.late_events.load(Ordering::Relaxed)
    }

    /// Events too far ahead of the watermark to be counted.
    pub fn future_events(&self) -> u64 {
        self.future_events.load(Ordering::Relaxed)
    }

    /// Transactions whose tx_id had been seen before.
    pub fn duplicate_events(&self) -> u64 {
        self.duplicate_events.load(Ordering::Relaxed)
    }

    /// Applies any event: decides a transaction, records an account event.
    pub fn apply(&self, event: &Event) -> Option<Decision> {
        self.apply_into(event, &mut Scratch::default())
    }

    /// Applies any event, reusing `scratch`.
    pub fn apply_into(&self, event: &Event, scratch: &mut Scratch) -> Option<Decision> {
        match event {
            Event::Tx(tx) => Some(self.decide_into(tx, scratch)),
            Event::Account(a) => {
                self.observe(a);
                None
            }
        }
    }

    /// Advances the watermark unless `ts` is too far ahead of it; says whether it was, and
    /// sweeps idle state when it is due (every `maintain_every` events).
    fn tick(&self, ts: i64) -> bool {
        let (future, due) = self.advance(ts);
        if due {
            self.maintain();
        }
        future
    }

    /// [`Engine::tick`] but the sweep: says whether the event is too far ahead, and whether a
    /// sweep is due.
    fn advance(&self, ts: i64) -> (bool, bool) {
        let wm = self.watermark.load(Ordering::Relaxed);
        let future = self
            .config
            .future_ms
            .is_some_and(|f| wm != i64::MIN && ts > wm.saturating_add(f.max(0)))
            || self
                .config
                .clock_ahead_ms
                .is_some_and(|a| ts > crate::ledger::now_ms().saturating_add(a.max(0)));
        if future {
            self.future_events.fetch_add(1, Ordering::Relaxed);
        } else {
            self.watermark.fetch_max(ts, Ordering::Relaxed);
        }
        let n = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        (future, n.is_multiple_of(self.config.maintain_every))
    }

    /// Evicts idle state now (also done every `maintain_every` events, unless that is 0). Each
    /// store is swept a shard at a time: a decision meets at most one shard's sweep.
    pub fn maintain(&self) {
        let active = self.active.load();
        let now = self.watermark.load(Ordering::Relaxed);
        let horizons = [
            active.plans[KeyKind::Device as usize].horizon_ms(),
            active.plans[KeyKind::Ip as usize].horizon_ms(),
            active.plans[KeyKind::Counterparty as usize].horizon_ms(),
        ];
        let mut limits = self.config.limits;
        limits.seen_tx_ms = limits.seen_tx_ms.max(active.seen_ms);
        self.state.maintain(now, horizons, &limits);
    }

    /// Records an account event (login, password reset, …) in the account's profile.
    pub fn observe(&self, ev: &AccountEvent) {
        if let Some(r) = self.recent.get() {
            r.push(Event::Account(ev.clone()));
        }
        if self.tick(ev.ts_ms) {
            return;
        }
        let key = self.state.ids.key(0, &ev.account_id);
        let mut acc = self
            .state
            .accounts
            .entry(key)
            .or_insert_with(|| new_account(ev.ts_ms));
        let acc = &mut *acc;
        acc.last_seen_ms = acc.last_seen_ms.max(ev.ts_ms);
        let p = &mut acc.profile;
        let slot = &mut p.last_event_ms[usize::from(ev.kind.0)];
        *slot = (*slot).max(ev.ts_ms);
        if ev.kind.name() == "account_opened" {
            match p.opened_ms {
                None => {
                    p.opened_ms = Some(ev.ts_ms);
                    // The balance is exact only if nothing moved before the opening was seen.
                    p.balance_known = p.history_count == 0;
                    p.home_country = ev.geo.and_then(|g| g.country);
                    p.locale = ev.locale.as_deref().map(Box::from);
                }
                // Seen before: a redelivery, a producer's retry, a feed run again. The first
                // opening stands (an earlier time wins); read again it would call a balance
                // followed since the opening unknown and blind the rules that read it.
                Some(o) => {
                    p.opened_ms = Some(o.min(ev.ts_ms));
                    if p.home_country.is_none() {
                        p.home_country = ev.geo.and_then(|g| g.country);
                    }
                    if p.locale.is_none() {
                        p.locale = ev.locale.as_deref().map(Box::from);
                    }
                }
            }
            // `since(account_opened)` is the account's age too, not the latest re-send's.
            *slot = p.opened_ms.unwrap_or(ev.ts_ms);
        }
    }

    /// An analyst lifted the account's freeze (or a dispute closed as legit): the next freeze
    /// rule that fires on it asks for a freeze again instead of counting as already frozen.
    pub fn freeze_lifted(&self, account_id: &str) {
        if let Some(mut acc) = self
            .state
            .accounts
            .get_mut(&self.state.ids.key(0, account_id))
        {
            acc.profile.freeze_requested_ms = NEVER;
        }
    }

    /// The locale an account gave when it opened (`account_opened`), if Vigil saw it.
    pub fn account_locale(&self, account_id: &str) -> Option<Box<str>> {
        self.state
            .accounts
            .get(&self.state.ids.key(0, account_id))
            .and_then(|a| a.profile.locale.clone())
    }

    /// The latest event time seen (the watermark), if any.
    pub fn watermark_ms(&self) -> Option<i64> {
        let w = self.watermark.load(Ordering::Relaxed);
        (w != i64::MIN).then_some(w)
    }

    /// Starts loading, without waiting, the entries a decision reads: the payee's (0: not
    /// read), the payer's, and the device's, IP's and counterparty's (0: absent) whose stores
    /// the rules use. First where each one is, then, once that is in, the entries themselves;
    /// each stage's cache misses are in flight together instead of one after another, and the
    /// lookups that follow find them in cache (measured in BENCHMARKS.md, session 11).
    fn start_loading(&self, active: &ActivePack, payee: u64, payer: u64, keys: [u64; 3]) {
        if !crate::state::prefetch::ENABLED {
            return;
        }
        let (accounts, stores) = (&self.state.accounts, &self.state.keyed);
        let keyed = || (0..3).filter(|&i| keys[i] != 0 && !active.plans[i + 1].is_empty());
        if payee != 0 {
            prefetch_slot(accounts, payee);
        }
        prefetch_slot(accounts, payer);
        for i in keyed() {
            prefetch_slot(&stores[i], keys[i]);
        }
        if payee != 0 {
            prefetch_entry(accounts, payee, PAYEE_OPENED);
        }
        prefetch_entry(accounts, payer, ACCOUNT_ENTRY);
        for i in keyed() {
            prefetch_entry(&stores[i], keys[i], KEY_ENTRY);
        }
    }

    /// Decides one transaction and updates state.
    pub fn decide(&self, tx: &Transaction) -> Decision {
        self.decide_into(tx, &mut Scratch::default())
    }

    /// Decides one transaction, reusing `scratch` (so evaluation does not allocate); keep one
    /// per thread.
    pub fn decide_into(&self, tx: &Transaction, scratch: &mut Scratch) -> Decision {
        self.observed(tx, || {
            let future = self.tick(tx.ts_ms);
            let active = self.active.load();
            // Loaded here, with the pack: a load fences (a sequentially consistent store), and
            // later it would wait for the lookups' misses.
            let snoozes = self.snoozes.load();
            let keys = Keys::of(tx, &active, &self.state.ids);
            self.decide_inner(tx, scratch, (&active, &snoozes), future, &keys, None)
        })
    }

    /// Keeps `tx` for dry runs (when asked to) and times `decide`, its decision, into the
    /// metrics (when there are).
    fn observed(&self, tx: &Transaction, decide: impl FnOnce() -> Decision) -> Decision {
        if let Some(r) = self.recent.get() {
            r.push(Event::Tx(tx.clone()));
        }
        let Some(m) = self.metrics.get() else {
            return decide();
        };
        let t0 = std::time::Instant::now();
        let d = decide();
        m.decided_in(t0.elapsed().as_secs_f64());
        d
    }

    /// Decides a run of transactions in order, as [`Engine::decide_into`] one after another
    /// would (the same decisions, the same state), handing each decision to `each` with its
    /// index as it is made. For callers that hold runs of transactions (replay, load
    /// generators).
    ///
    /// Up to [`BATCH`] decisions at a time hold every shard of the state locked (decisions on
    /// other threads wait, and `each` must not call into this engine): their lookups take no
    /// lock each, and while one transaction is decided the entries of the next two start
    /// loading. A pack reloaded (or a snooze set) meanwhile applies from the next batch on; the
    /// idle-state sweep
    /// due every `maintain_every` events runs between batches, before the event due for it.
    pub fn decide_batch<T: std::borrow::Borrow<Transaction>>(
        &self,
        txs: &[T],
        scratch: &mut Scratch,
        mut each: impl FnMut(usize, Decision),
    ) {
        let mut keys = std::mem::take(&mut scratch.keys);
        let mut at = 0;
        while at < txs.len() {
            let every = self.config.maintain_every;
            let n = self.events.load(Ordering::Relaxed);
            // Events until the next one due for a sweep, that one included.
            let until = if every == 0 {
                usize::MAX
            } else {
                usize::try_from(every - n % every).unwrap_or(usize::MAX)
            };
            if until == 1 {
                // Due now: decided alone, its `tick` sweeps first.
                each(at, self.decide_into(txs[at].borrow(), scratch));
                at += 1;
                continue;
            }
            let batch = &txs[at..at + BATCH.min(until - 1).min(txs.len() - at)];
            let active = self.active.load_full();
            let snoozes = self.snoozes.load_full();
            // Another thread's events can still make one due within the run: then the sweep
            // runs once the run is over.
            let mut sweep = false;
            let mut locked = self.state.lock_all();
            // Before decision `i`, each stage starts for the transaction its distance ahead
            // (before the first, for those the steps before it would have started). A
            // transaction's keys are worked out at its first stage: all at the start would
            // make the batch's first decision wait.
            keys.clear();
            let step = |i: usize, keys: &mut Vec<Keys>, locked: &Locked<'_>| {
                for (stage, ahead) in Stage::AHEAD {
                    let Some(j) = (i + ahead).checked_sub(Stage::DEPTH) else {
                        continue;
                    };
                    if j == keys.len()
                        && let Some(t) = batch.get(j)
                    {
                        keys.push(Keys::of(t.borrow(), &active, &self.state.ids));
                    }
                    if let Some(k) = keys.get(j) {
                        self.load_ahead(&active, locked, k, stage);
                    }
                }
            };
            for i in 0..Stage::DEPTH {
                step(i, &mut keys, &locked);
            }
            for (i, tx) in batch.iter().enumerate() {
                step(i + Stage::DEPTH, &mut keys, &locked);
                let tx = tx.borrow();
                let d = self.observed(tx, || {
                    let (future, due) = self.advance(tx.ts_ms);
                    sweep |= due;
                    let (pack, locked) = ((&*active, &*snoozes), Some(&mut locked));
                    self.decide_inner(tx, scratch, pack, future, &keys[i], locked)
                });
                each(at + i, d);
            }
            drop(locked);
            if sweep {
                self.maintain();
            }
            at += batch.len();
        }
        scratch.keys = keys;
    }

    /// Starts loading, without a lock or a wait, what a decision in a batch will read: its
    /// probes' control bytes ([`Stage::Slots`]), then, once those are in, its entries.
    fn load_ahead(&self, active: &ActivePack, locked: &Locked<'_>, k: &Keys, stage: Stage) {
        if !crate::state::prefetch::ENABLED {
            return;
        }
        /// One store's lookup: `stage` of it, in the shard the batch holds (`part`: the
        /// bytes of the entry a decision reads).
        fn at<V>(
            stage: Stage,
            map: &dashmap::DashMap<u64, V, crate::state::FxBuild>,
            shards: &[Guard<'_, V>],
            key: u64,
            part: std::ops::Range<usize>,
        ) {
            let shard = held_shard(map, shards, key);
            match stage {
                Stage::Slots => prefetch_slot_in(map, shard, key),
                Stage::Entries => prefetch_entry_in(map, shard, key, part),
            }
        }
        let s = &self.state;
        at(stage, &s.seen_tx, &locked.seen, k.tx, SEEN_ENTRY);
        if k.payee_read != 0 {
            at(
                stage,
                &s.accounts,
                &locked.accounts,
                k.payee_read,
                PAYEE_OPENED,
            );
        }
        at(stage, &s.accounts, &locked.accounts, k.acct, ACCOUNT_ENTRY);
        for i in (0..3).filter(|&i| k.keyed[i] != 0 && !active.plans[i + 1].is_empty()) {
            at(stage, &s.keyed[i], &locked.keyed[i], k.keyed[i], KEY_ENTRY);
        }
    }

    /// Decides `tx` (whose watermark tick said whether it is too far ahead: `future`) with
    /// `keys` = `Keys::of(tx)`, in the batch's locked shards or (`None`) locking its own.
    fn decide_inner(
        &self,
        tx: &Transaction,
        scratch: &mut Scratch,
        (active, snoozes): (&ActivePack, &Snoozed),
        future: bool,
        keys: &Keys,
        locked: Option<&mut Locked<'_>>,
    ) -> Decision {
        let Scratch {
            outcome: out,
            features: feats,
            known,
            rule_nanos,
            keys: _,
        } = scratch;
        let batched = locked.is_some();
        let (l_seen, mut l_accounts, l_keyed) = match locked {
            Some(Locked {
                seen,
                accounts,
                keyed,
            }) => (Some(seen), Some(accounts), keyed.each_mut().map(Some)),
            None => (None, None, [None, None, None]),
        };
        let program = &active.pack.program;
        let ts = tx.ts_ms;
        let accounts = &self.state.accounts;
        // Whether the tx id was seen is asked after the entries are read; its shard is locked
        // first and unlocked at the end (see `State::seen_shard`) — after `tick`, whose inline
        // sweep locks every shard.
        let mut seen = self.state.seen_shard(l_seen, keys.tx);
        let amount =
            num::from_minor(tx.amount_minor, u32::from(tx.currency.exponent)).unwrap_or(i64::MAX);
        let country = tx.geo.and_then(|g| g.country);
        let [dev_hash, ip_hash, cp_hash] = keys.keyed;
        let acct_hash = keys.acct;
        let country_hash = country.map_or(0, |c| u64::from(u16::from_le_bytes(c)) + 1);
        let distinct = [cp_hash, dev_hash, ip_hash, country_hash, acct_hash];
        // The payee's account (0: none), read for `payee_account_age` and credited at the end.
        let (payee_hash, payee_read) = (keys.payee, keys.payee_read);
        if !batched {
            // A batch started these with the decisions before.
            self.start_loading(active, payee_read, acct_hash, keys.keyed);
        }
        let n_features = program.features.len().min(FEATURES_MAX);
        feats.clear();
        feats.resize(n_features, 0);
        known.clear();
        known.resize(n_features, false);

        // Read the payee's opening before locking the payer: both may live in one shard.
        let payee_opened = match l_accounts.as_deref_mut() {
            _ if payee_read == 0 => None,
            Some(b) => get_in(
                accounts,
                &shard_mut(accounts, Some(b), payee_read),
                payee_read,
            )
            .and_then(|a| a.profile.opened_ms),
            None => accounts.get(&payee_read).and_then(|a| a.profile.opened_ms),
        };

        let mut payer = shard_mut(accounts, l_accounts.as_deref_mut(), acct_hash);
        let (acc, _) = entry_in(accounts, &mut payer, acct_hash, || new_account(ts));
        // Lateness is judged once, on the account's own ordered stream, so an event is either
        // counted everywhere or nowhere.
        let last = acc.profile.last_tx_ms;
        let late = last != NEVER && ts < last - self.config.lateness_ms;
        // Counted unless it turns out to be a duplicate (known once the entries are read).
        let counts = !future && !late;

        // Devices, IPs and counterparties: record, and hold their windows (in this order, after
        // the payer: every decision locks in the same order) for the rules to read.
        let stores = &self.state.keyed;
        let mut shards: [Option<ShardMut<'_, '_, Windows>>; 3] = [None, None, None];
        for (i, batch) in l_keyed.into_iter().enumerate() {
            let h = keys.keyed[i];
            if h != 0 && !active.plans[i + 1].is_empty() {
                shards[i] = Some(shard_mut(&stores[i], batch, h));
            }
        }
        let mut held: [Option<Held<'_>>; 3] = [None, None, None];
        // Keys made here, and so to remove again if the event turns out to be a duplicate.
        let mut made = [false; 3];
        for (i, shard) in shards.iter_mut().enumerate() {
            let (Some(shard), h) = (shard, keys.keyed[i]) else {
                continue;
            };
            held[i] = if counts {
                let (w, m) = entry_in(&stores[i], shard, h, Windows::default);
                made[i] = m;
                Some(Held::Counted(w))
            } else {
                // Not counted: decided on current state.
                get_in(&stores[i], shard, h).map(Held::Current)
            };
        }
        // Every entry is locked (and its lines were loaded ahead): start loading the lists
        // their windows keep outside them, all together, after the last lock (reading where
        // they are is a load, which a later lock would wait for).
        acc.prefetch_heap();
        for h in held.iter().flatten() {
            h.read_at(ts).0.prefetch_heap();
        }
        let (seen_at, first) = self.state.see_in(&mut seen, keys.tx, keys.body, ts);
        let (duplicate, first_action) = (first.is_some(), first.flatten());
        let counting = if duplicate {
            Counting::Duplicate
        } else if future {
            Counting::Future
        } else if late {
            Counting::Late
        } else {
            Counting::Counted
        };
        match counting {
            Counting::Duplicate => self.duplicate_events.fetch_add(1, Ordering::Relaxed),
            Counting::Late => self.late_events.fetch_add(1, Ordering::Relaxed),
            Counting::Future | Counting::Counted => 0,
        };
        let counted = counting == Counting::Counted;
        if duplicate {
            // Decided on current state: the keys are read as of their latest event; a key only
            // just made for it reads as absent, as it was, and goes again at the end.
            for (h, made) in held.iter_mut().zip(&mut made) {
                if let Some(Held::Counted(w)) = h.take()
                    && !*made
                {
                    *h = Some(Held::Current(w));
                }
            }
        } else {
            made = [false; 3];
        }
        for (i, h) in held.iter_mut().enumerate() {
            if counted && let Some(Held::Counted(w)) = h {
                // Shared keys hear from many partitions: record whatever is still inside what
                // the store keeps, and read as of this event.
                let plan = &active.plans[i + 1];
                if w.last_ts == 0 || ts > w.last_ts - plan.horizon_ms() {
                    w.record(plan, ts, amount, &distinct);
                }
            }
        }

        // The account: profile features first (they describe the time before this event).
        let p = &acc.profile;
        let hour = num::from_int(ts.div_euclid(3_600_000).rem_euclid(24)).unwrap_or(0);
        let mut homes = [[0u8; 2]; COUNTRIES_MAX + 1];
        let n_homes = if program.uses_home_countries {
            p.home_countries(&mut homes)
        } else {
            0
        };
        let plan = &active.plans[KeyKind::Account as usize];
        let at = if counted {
            if !plan.is_empty() {
                acc.windows.record(plan, ts, amount, &distinct);
            }
            ts
        } else {
            acc.windows.last_ts
        };
        let lazy = Lazy {
            features: &program.features[..n_features],
            values: std::cell::Cell::from_mut(&mut feats[..]).as_slice_of_cells(),
            known: std::cell::Cell::from_mut(&mut known[..]).as_slice_of_cells(),
            tx,
            ts,
            country,
            dev_hash,
            cp_hash,
            payee_opened,
            acc: &*acc,
            account_at: at,
            keyed: [0, 1, 2].map(|i| held[i].as_ref().map(|h| h.read_at(ts))),
        };

        let facts = Facts {
            amount,
            hour,
            has_geo: tx.geo.is_some(),
            kind: tx.kind.name(),
            kind_bit: tx.kind.bit(),
            currency: tx.currency.code(),
            channel: &tx.channel,
            country: country
                .as_ref()
                .map_or("", |c| std::str::from_utf8(c).unwrap_or("")),
            account_id: &tx.account_id,
            counterparty_id: tx.counterparty_id.as_deref().unwrap_or(""),
            device_id: tx.device_id.as_deref().unwrap_or(""),
            ip: tx.ip.as_deref().unwrap_or(""),
            memo: tx.memo.as_deref().unwrap_or(""),
            home_countries: &homes[..n_homes],
            features: &lazy,
        };
        // Snoozes of this account (the map is nearly always empty): a muted rule that would
        // have fired is noted, not applied.
        let muted_here: &[(Box<str>, i64)] = if snoozes.is_empty() {
            &[]
        } else {
            snoozes
                .get(tx.account_id.as_str())
                .map_or(&[], Vec::as_slice)
        };
        let snoozed = std::cell::RefCell::new(Vec::new());
        let muted = |idx: u16| {
            if muted_here.is_empty() {
                return false;
            }
            let id = program.rules[usize::from(idx)].meta.id.as_str();
            let m = muted_here
                .iter()
                .any(|(r, until)| &**r == id && ts < *until);
            if m {
                snoozed.borrow_mut().push(id.to_string());
            }
            m
        };
        match self.metrics.get() {
            None => program.evaluate_with(&facts, out, muted),
            Some(m) => {
                let handles = m.rules(&active.version, program);
                if m.sample_rule_timing() {
                    rule_nanos.clear();
                    rule_nanos.resize(program.rules.len(), vigil_rules::program::NOT_EVALUATED);
                    program.evaluate_timed(&facts, out, muted, rule_nanos);
                    handles.timed(rule_nanos);
                } else {
                    program.evaluate_with(&facts, out, muted);
                }
                handles.count(out.fired.iter().map(|f| (f.rule, f.shadow)), &out.errors);
            }
        }

        let mut freeze = false;
        let mut notify = None;
        let mut reasons = Vec::with_capacity(out.fired.len());
        for fired in &out.fired {
            let r = &program.rules[usize::from(fired.rule)];
            if !fired.shadow {
                freeze |= r.meta.freeze;
                if notify.is_none() {
                    notify.clone_from(&r.meta.notify);
                }
            }
            reasons.push(Reason {
                rule: r.meta.id.clone(),
                action: r.meta.action,
                score: r.meta.score,
                shadow: fired.shadow,
                freeze: r.meta.freeze,
                values: program
                    .explain(fired.rule, &facts)
                    .into_iter()
                    .map(|(t, v)| (t, v.to_string()))
                    .collect(),
            });
        }
        // The shared keys' shards are released (once the keys made for a duplicate are gone
        // again) before the payer's state changes and before the payee is credited (which
        // locks the accounts again, outside a batch).
        for (i, shard) in shards.iter_mut().enumerate() {
            if made[i]
                && let Some(shard) = shard
            {
                remove_if_in(&stores[i], shard, keys.keyed[i], Windows::is_empty);
            }
        }
        drop(shards);
        let action = out.action;
        let already_frozen = acc.profile.freeze_requested_ms != NEVER;
        if freeze && counted && !already_frozen {
            acc.profile.freeze_requested_ms = ts;
        }

        // What this transaction teaches the profile; an uncounted one teaches nothing.
        if counted {
            // After the rules read `usual_amount`: it describes the time before this event.
            if tx.kind.is_outgoing() && !active.outgoing.is_empty() {
                acc.outgoing.record(&active.outgoing, ts, amount, &[0; 5]);
            }
            acc.last_seen_ms = acc.last_seen_ms.max(ts);
            let p = &mut acc.profile;
            p.last_tx_ms = p.last_tx_ms.max(ts);
            if let Some(g) = tx.geo {
                p.add_place(g.lat, g.lon);
                if p.last_fix.is_none_or(|f| f.ts <= ts) {
                    p.last_fix = Some(crate::state::account::Fix {
                        ts,
                        lat: g.lat,
                        lon: g.lon,
                    });
                }
            }
            if let Some(c) = country {
                p.add_country(c);
            }
            if dev_hash != 0 {
                p.add_device(dev_hash, ts);
            }
            if tx.kind.is_outgoing() && cp_hash != 0 {
                p.add_payee(cp_hash, ts);
            }
            p.history_count = p.history_count.saturating_add(1);
            if action != Action::Block {
                p.balance = if tx.kind.is_outgoing() {
                    p.balance.saturating_sub(amount)
                } else {
                    p.balance.saturating_add(amount)
                };
            }
        }
        // Release the payer before touching the payee: both may live in one shard.
        drop(payer);
        if !duplicate {
            crate::state::seen::decided(seen_at, action);
        }
        drop(seen);
        if counted && tx.kind == TxKind::Transfer && action != Action::Block && payee_hash != 0 {
            let mut shard = shard_mut(accounts, l_accounts, payee_hash);
            if let Some(payee) = get_mut_in(accounts, &mut shard, payee_hash) {
                payee.profile.balance = payee.profile.balance.saturating_add(amount);
            }
        }

        Decision {
            tx_id: tx.tx_id.clone(),
            ts_ms: ts,
            account_id: tx.account_id.clone(),
            kind: tx.kind,
            amount_minor: tx.amount_minor,
            currency: tx.currency,
            action,
            score: out.score,
            reasons,
            errors: out
                .errors
                .iter()
                .map(|&i| program.rules[usize::from(i)].meta.id.clone())
                .collect(),
            freeze,
            notify,
            already_frozen,
            rules_version: active.version.clone(),
            duplicate,
            first_action,
            late: counting == Counting::Late,
            future: counting == Counting::Future,
            snoozed: snoozed.into_inner(),
        }
    }
}

fn new_account(ts: i64) -> AccountState {
    AccountState {
        profile: Profile::new(),
        windows: Windows::default(),
        outgoing: Amounts::default(),
        last_seen_ms: ts,
    }
}

/// The windows of a shared key held for one decision.
enum Held<'a> {
    /// Recorded into by this event: read as of the event.
    Counted(&'a mut Windows),
    /// Not counted: read as of the key's latest event.
    Current(&'a Windows),
}

impl Held<'_> {
    /// The windows, and the time they are read at.
    fn read_at(&self, ts: i64) -> (&Windows, i64) {
        match self {
            Held::Counted(w) => (w, ts),
            Held::Current(w) => (w, w.last_ts),
        }
    }
}

/// The feature values of one decision, each computed when a condition first reads it (and
/// kept for the next read): a window aggregate or a distance behind a condition that is false
/// costs nothing.
#[derive(Debug)]
struct Lazy<'a> {
    features: &'a [Feature],
    values: &'a [std::cell::Cell<i64>],
    known: &'a [std::cell::Cell<bool>],
    tx: &'a Transaction,
    ts: i64,
    country: Option<[u8; 2]>,
    dev_hash: u64,
    cp_hash: u64,
    payee_opened: Option<i64>,
    /// The payer, its windows already holding this event when it counts.
    acc: &'a AccountState,
    /// The time the payer's windows are read at.
    account_at: i64,
    /// Device, IP and counterparty windows, and the time each is read at.
    keyed: [Option<(&'a Windows, i64)>; 3],
}

impl vigil_rules::FeatureSource for Lazy<'_> {
    fn feature(&self, slot: u16) -> i64 {
        let i = usize::from(slot);
        let (Some(f), Some(value), Some(known)) =
            (self.features.get(i), self.values.get(i), self.known.get(i))
        else {
            return 0;
        };
        if known.get() {
            return value.get();
        }
        let v = self.compute(*f);
        value.set(v);
        known.set(true);
        v
    }
}

impl Lazy<'_> {
    fn compute(&self, f: Feature) -> i64 {
        let (p, ts) = (&self.acc.profile, self.ts);
        match f {
            Feature::Agg(a) => {
                let held = match a.key {
                    KeyKind::Account => Some((&self.acc.windows, self.account_at)),
                    k => self.keyed[k as usize - 1],
                };
                held.map_or(0, |(w, at)| aggregate(w, at, a.func, a.window_ms))
            }
            Feature::TravelDistanceKm | Feature::TravelSpeedKmh => {
                match (p.last_fix, self.tx.geo) {
                    (Some(prev), Some(g)) => {
                        let d = haversine_km(prev.lat, prev.lon, g.lat, g.lon);
                        if f == Feature::TravelDistanceKm {
                            km(d)
                        } else {
                            // A minute's floor keeps GPS jitter between near-simultaneous
                            // transactions from reading as supersonic.
                            let hours = ((ts - prev.ts).max(60_000)) as f64 / 3_600_000.0;
                            km(d / hours)
                        }
                    }
                    _ => 0,
                }
            }
            Feature::HomeDistanceKm => match (p.home(), self.tx.geo) {
                (Some((lat, lon)), Some(g)) => km(haversine_km(lat, lon, g.lat, g.lon)),
                _ => 0,
            },
            Feature::IsNewCountry => i64::from(self.country.is_some_and(|c| {
                p.history_count > 0 && !p.knows_country(c) && p.home_country != Some(c)
            })),
            Feature::IsNewDevice => {
                i64::from(self.dev_hash != 0 && p.is_new_device(self.dev_hash, ts))
            }
            Feature::IsNewPayee => i64::from(
                self.tx.kind.is_outgoing() && self.cp_hash != 0 && p.is_new_payee(self.cp_hash, ts),
            ),
            Feature::Since(k) => match p.last_event_ms[usize::from(k.0)] {
                NEVER => NEVER_MS,
                t => (ts - t).max(0),
            },
            Feature::AccountAge => p.opened_ms.map_or(NEVER_MS, |o| (ts - o).max(0)),
            Feature::PayeeAccountAge => self.payee_opened.map_or(NEVER_MS, |o| (ts - o).max(0)),
            Feature::UsualAmount { window_ms } => {
                // The outgoing windows do not hold this event yet.
                let a = self.acc.outgoing.aggregate(ts, window_ms);
                if a.count > 0 { a.sum / a.count } else { 0 }
            }
            Feature::Balance => {
                if p.balance_known {
                    p.balance
                } else {
                    UNKNOWN_BALANCE
                }
            }
            Feature::HistoryCount => num::from_int(i64::from(p.history_count)).unwrap_or(0),
        }
    }
}

/// One window aggregate of `w` over `(at - window_ms, at]`.
fn aggregate(w: &Windows, at: i64, func: AggFunc, window_ms: i64) -> i64 {
    if let AggFunc::Distinct(d) = func {
        return num::from_int(w.distinct(d as usize, at, window_ms)).unwrap_or(0);
    }
    let g = w.aggregate(at, window_ms);
    match func {
        AggFunc::Count => num::from_int(g.count).unwrap_or(i64::MAX),
        AggFunc::Sum => g.sum,
        AggFunc::Avg if g.count > 0 => g.sum / g.count,
        AggFunc::Avg => 0,
        AggFunc::Max => g.max,
        _ => g.min,
    }
}

const _: () = assert!(ACCOUNT_EVENT_KINDS.len() <= u8::MAX as usize);
