//! `Engine::decide`: features from state, the compiled program, a decision with reasons.
//!
//! One engine serves every entry point (Kafka, HTTP, replay, rule tests), so a rule behaves the
//! same everywhere. State is sharded ([`dashmap`]); one account's events must arrive in order
//! from one caller at a time (Kafka keys by account), which the Kafka path and replay ensure.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

use arc_swap::ArcSwap;
use vigil_rules::catalog::{ACCOUNT_EVENT_KINDS, AggFunc, KeyKind};
use vigil_rules::compile::FEATURES_MAX;
use vigil_rules::num::{self, NUM_SCALE};
use vigil_rules::program::NEVER_MS;
use vigil_rules::{CompiledPack, Facts, Feature, Outcome};

use crate::decision::{Decision, Reason};
use crate::event::{AccountEvent, Event, Transaction, TxKind};
use crate::state::account::{COUNTRIES_MAX, NEVER, Profile, haversine_km};
use crate::state::window::{WindowPlan, Windows};
use crate::state::{AccountState, State, StateLimits, StateStats, key_hash};

/// Engine settings.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// How late (event time, behind the key's latest event) an event may be and still be
    /// counted in its own place; an older one is decided on current state and not counted.
    pub lateness_ms: i64,
    /// State limits.
    pub limits: StateLimits,
    /// Evict idle state every this many events.
    pub maintain_every: u64,
    /// Accounts to reserve room for up front (0: grow as needed). Growing a large table
    /// moves every entry, so a deployment that knows its size should say it.
    pub accounts_capacity: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            lateness_ms: 5 * 60_000,
            limits: StateLimits::default(),
            maintain_every: 1 << 20,
            accounts_capacity: 0,
        }
    }
}

/// Buffers reused across decisions on one thread.
#[derive(Debug, Default)]
pub struct Scratch {
    /// The rule program's outcome.
    pub outcome: Outcome,
    /// Feature values, one per slot.
    pub features: Vec<i64>,
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
}

impl ActivePack {
    /// Prepares a pack: derives which windows each store keeps.
    pub fn new(pack: CompiledPack) -> ActivePack {
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
        let version = Arc::from(pack.hash.as_str());
        ActivePack {
            pack,
            version,
            plans,
            outgoing,
        }
    }
}

/// The decision engine.
#[derive(Debug)]
pub struct Engine {
    active: ArcSwap<ActivePack>,
    state: State,
    config: EngineConfig,
    events: AtomicU64,
    watermark: AtomicI64,
    late_events: AtomicU64,
    duplicate_events: AtomicU64,
}

const DEVICE: usize = 0;
const IP: usize = 1;
const COUNTERPARTY: usize = 2;

fn km(x: f64) -> i64 {
    if x.is_finite() {
        (x * NUM_SCALE as f64).round().clamp(0.0, 1e18) as i64
    } else {
        0
    }
}

impl Engine {
    /// An engine running `pack` on empty state.
    pub fn new(pack: CompiledPack, config: EngineConfig) -> Engine {
        Engine {
            active: ArcSwap::from_pointee(ActivePack::new(pack)),
            state: State::with_capacity(config.accounts_capacity),
            config,
            events: AtomicU64::new(0),
            watermark: AtomicI64::new(i64::MIN),
            late_events: AtomicU64::new(0),
            duplicate_events: AtomicU64::new(0),
        }
    }

    /// The active pack.
    pub fn active(&self) -> Arc<ActivePack> {
        self.active.load_full()
    }

    /// Swaps in a new pack between two events. State is kept; windows a new rule needs fill
    /// from the next events on.
    pub fn swap_pack(&self, pack: CompiledPack) -> Arc<ActivePack> {
        let new = Arc::new(ActivePack::new(pack));
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

    /// Transactions whose tx_id had been seen before.
    pub fn duplicate_events(&self) -> u64 {
        self.duplicate_events.load(Ordering::Relaxed)
    }

    /// Applies any event: decides a transaction, records an account event.
    pub fn apply(&self, event: &Event) -> Option<Decision> {
        match event {
            Event::Tx(tx) => Some(self.decide(tx)),
            Event::Account(a) => {
                self.observe(a);
                None
            }
        }
    }

    fn tick(&self, ts: i64) {
        self.watermark.fetch_max(ts, Ordering::Relaxed);
        let n = self.events.fetch_add(1, Ordering::Relaxed) + 1;
        if n.is_multiple_of(self.config.maintain_every) {
            self.maintain();
        }
    }

    /// Evicts idle state now (also done every `maintain_every` events).
    pub fn maintain(&self) {
        let active = self.active.load();
        let now = self.watermark.load(Ordering::Relaxed);
        let horizons = [
            active.plans[1].horizon_ms(),
            active.plans[2].horizon_ms(),
            active.plans[3].horizon_ms(),
        ];
        self.state.maintain(now, horizons, &self.config.limits);
    }

    /// Records an account event (login, password reset, …) in the account's profile.
    pub fn observe(&self, ev: &AccountEvent) {
        self.tick(ev.ts_ms);
        let key = key_hash(0, &ev.account_id);
        let mut acc = self
            .state
            .accounts
            .entry(key)
            .or_insert_with(|| new_account(ev.ts_ms));
        let acc = &mut *acc;
        acc.last_seen_ms = acc.last_seen_ms.max(ev.ts_ms);
        let slot = &mut acc.profile.last_event_ms[usize::from(ev.kind.0)];
        *slot = (*slot).max(ev.ts_ms);
        if ev.kind.name() == "account_opened" {
            acc.profile.opened_ms = ev.ts_ms;
            acc.profile.home_country = ev.geo.and_then(|g| g.country);
            acc.profile.locale = ev.locale.as_deref().map(Box::from);
        }
    }

    /// Decides one transaction and updates state.
    pub fn decide(&self, tx: &Transaction) -> Decision {
        self.decide_into(tx, &mut Scratch::default())
    }

    /// Decides one transaction, reusing `scratch` (so evaluation does not allocate); keep one
    /// per thread.
    pub fn decide_into(&self, tx: &Transaction, scratch: &mut Scratch) -> Decision {
        let Scratch {
            outcome: out,
            features: feats,
        } = scratch;
        self.tick(tx.ts_ms);
        let active = self.active.load();
        let program = &active.pack.program;
        let ts = tx.ts_ms;
        let duplicate = self
            .state
            .seen_tx
            .insert(key_hash(9, &tx.tx_id), ts)
            .is_some();
        if duplicate {
            self.duplicate_events.fetch_add(1, Ordering::Relaxed);
        }
        let amount =
            num::from_minor(tx.amount_minor, u32::from(tx.currency.exponent)).unwrap_or(i64::MAX);
        let country = tx.geo.and_then(|g| g.country);
        let cp_hash = tx.counterparty_id.as_deref().map_or(0, |c| key_hash(3, c));
        let dev_hash = tx.device_id.as_deref().map_or(0, |d| key_hash(1, d));
        let ip_hash = tx.ip.as_deref().map_or(0, |i| key_hash(2, i));
        let acct_hash = key_hash(0, &tx.account_id);
        let country_hash = country.map_or(0, |c| u64::from(u16::from_le_bytes(c)) + 1);
        let distinct = [cp_hash, dev_hash, ip_hash, country_hash, acct_hash];
        let n_features = program.features.len().min(FEATURES_MAX);
        feats.clear();
        feats.resize(n_features, 0);
        let mut late = false;

        // Devices, IPs and counterparties: record, then read their windows.
        for (store, kind, h) in [
            (DEVICE, KeyKind::Device, dev_hash),
            (IP, KeyKind::Ip, ip_hash),
            (COUNTERPARTY, KeyKind::Counterparty, cp_hash),
        ] {
            let plan = &active.plans[kind as usize];
            if plan.is_empty() || h == 0 {
                continue;
            }
            let mut w = self.state.keyed[store].entry(h).or_default();
            let at = self.place(&mut w, plan, ts, amount, &distinct, duplicate, &mut late);
            fill_aggs(&program.features[..n_features], kind, &w, at, feats);
        }

        let payee_opened = if program.features.contains(&Feature::PayeeAccountAge) {
            tx.counterparty_id.as_deref().and_then(|c| {
                self.state
                    .accounts
                    .get(&key_hash(0, c))
                    .map(|a| a.profile.opened_ms)
            })
        } else {
            None
        };

        // The account: profile features first (they describe the time before this event).
        let mut guard = self
            .state
            .accounts
            .entry(acct_hash)
            .or_insert_with(|| new_account(ts));
        let acc = &mut *guard;
        acc.last_seen_ms = acc.last_seen_ms.max(ts);
        let p = &acc.profile;
        let hour = num::from_int(ts.div_euclid(3_600_000).rem_euclid(24)).unwrap_or(0);
        let mut homes = [[0u8; 2]; COUNTRIES_MAX + 1];
        let n_homes = p.home_countries(&mut homes);
        for (i, f) in program.features[..n_features].iter().enumerate() {
            feats[i] = match *f {
                Feature::Agg(_) => continue,
                Feature::TravelDistanceKm | Feature::TravelSpeedKmh => match (p.last_fix, tx.geo) {
                    (Some(prev), Some(g)) => {
                        let d = haversine_km(prev.lat, prev.lon, g.lat, g.lon);
                        if *f == Feature::TravelDistanceKm {
                            km(d)
                        } else {
                            // A minute's floor keeps GPS jitter between near-simultaneous
                            // transactions from reading as supersonic.
                            let hours = ((ts - prev.ts).max(60_000)) as f64 / 3_600_000.0;
                            km(d / hours)
                        }
                    }
                    _ => 0,
                },
                Feature::HomeDistanceKm => match (p.home(), tx.geo) {
                    (Some((lat, lon)), Some(g)) => km(haversine_km(lat, lon, g.lat, g.lon)),
                    _ => 0,
                },
                Feature::IsNewCountry => i64::from(country.is_some_and(|c| {
                    p.history_count > 0 && !p.knows_country(c) && p.home_country != Some(c)
                })),
                Feature::IsNewDevice => i64::from(dev_hash != 0 && p.is_new_device(dev_hash, ts)),
                Feature::IsNewPayee => {
                    i64::from(tx.kind.is_outgoing() && cp_hash != 0 && p.is_new_payee(cp_hash, ts))
                }
                Feature::Since(k) => match p.last_event_ms[usize::from(k.0)] {
                    NEVER => NEVER_MS,
                    t => (ts - t).max(0),
                },
                Feature::AccountAge => (ts - p.opened_ms).max(0),
                Feature::PayeeAccountAge => payee_opened.map_or(NEVER_MS, |o| (ts - o).max(0)),
                Feature::UsualAmount { window_ms } => {
                    let a = acc.outgoing.aggregate(ts, window_ms);
                    if a.count > 0 { a.sum / a.count } else { 0 }
                }
                Feature::Balance => p.balance,
                Feature::HistoryCount => num::from_int(i64::from(p.history_count)).unwrap_or(0),
            };
        }
        if !duplicate && tx.kind.is_outgoing() && !active.outgoing.is_empty() {
            acc.outgoing.record(&active.outgoing, ts, amount, &[0; 5]);
        }
        let plan = &active.plans[KeyKind::Account as usize];
        let at = if plan.is_empty() {
            ts
        } else {
            self.place(
                &mut acc.windows,
                plan,
                ts,
                amount,
                &distinct,
                duplicate,
                &mut late,
            )
        };
        fill_aggs(
            &program.features[..n_features],
            KeyKind::Account,
            &acc.windows,
            at,
            feats,
        );

        let facts = Facts {
            amount,
            hour,
            has_geo: tx.geo.is_some(),
            kind: tx.kind.name(),
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
            features: &feats[..n_features],
        };
        program.evaluate(&facts, out);

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
                values: program
                    .explain(fired.rule, &facts)
                    .into_iter()
                    .map(|(t, v)| (t, v.to_string()))
                    .collect(),
            });
        }
        let action = out.action;

        // What this transaction teaches the profile (a duplicate teaches nothing).
        if !duplicate {
            let p = &mut acc.profile;
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
            if action != vigil_rules::Action::Block {
                p.balance = if tx.kind.is_outgoing() {
                    p.balance.saturating_sub(amount)
                } else {
                    p.balance.saturating_add(amount)
                };
            }
        }
        // Release the payer before touching the payee: both may live in one shard.
        drop(guard);
        if !duplicate
            && tx.kind == TxKind::Transfer
            && action != vigil_rules::Action::Block
            && let Some(cp) = &tx.counterparty_id
            && let Some(mut payee) = self.state.accounts.get_mut(&key_hash(0, cp))
        {
            payee.profile.balance = payee.profile.balance.saturating_add(amount);
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
            rules_version: active.version.clone(),
            duplicate,
            late,
        }
    }

    /// Records the event in `w` unless it is a duplicate or too late; returns the time the
    /// windows are read at.
    #[allow(clippy::too_many_arguments)]
    fn place(
        &self,
        w: &mut Windows,
        plan: &WindowPlan,
        ts: i64,
        amount: i64,
        distinct: &[u64; 5],
        duplicate: bool,
        late: &mut bool,
    ) -> i64 {
        if duplicate {
            return ts.max(w.last_ts);
        }
        if w.last_ts != 0 && ts < w.last_ts - self.config.lateness_ms {
            if !*late {
                self.late_events.fetch_add(1, Ordering::Relaxed);
            }
            *late = true;
            return w.last_ts;
        }
        w.record(plan, ts, amount, distinct);
        ts
    }
}

fn new_account(ts: i64) -> AccountState {
    AccountState {
        profile: Profile::new(ts),
        windows: Windows::default(),
        outgoing: Windows::default(),
        last_seen_ms: ts,
    }
}

fn fill_aggs(features: &[Feature], key: KeyKind, w: &Windows, at: i64, feats: &mut [i64]) {
    for (i, f) in features.iter().enumerate() {
        let Feature::Agg(a) = f else { continue };
        if a.key != key {
            continue;
        }
        feats[i] = match a.func {
            AggFunc::Distinct(d) => {
                num::from_int(w.distinct(d as usize, at, a.window_ms)).unwrap_or(0)
            }
            func => {
                let g = w.aggregate(at, a.window_ms);
                match func {
                    AggFunc::Count => num::from_int(g.count).unwrap_or(i64::MAX),
                    AggFunc::Sum => g.sum,
                    AggFunc::Avg if g.count > 0 => g.sum / g.count,
                    AggFunc::Avg => 0,
                    AggFunc::Max => g.max,
                    _ => g.min,
                }
            }
        };
    }
}

const _: () = assert!(ACCOUNT_EVENT_KINDS.len() <= u8::MAX as usize);
