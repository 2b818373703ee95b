//! Bounded in-memory state, keyed by entity.
//!
//! Four keyed stores — accounts (profile + windows), devices, IPs, counterparties (windows) —
//! and the set of transaction ids already counted. Keys are 64-bit keyed hashes of the ids
//! ([`IdHasher`]), so state holds no strings. Every store has a named limit; [`State::maintain`] evicts idle keys and,
//! past a limit, the least recently active ones.

pub mod account;
pub mod prefetch;
pub mod window;

use serde::{Deserialize, Serialize};
use std::hash::{BuildHasherDefault, Hasher};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use dashmap::DashMap;
use rustc_hash::FxHasher;
use siphasher::sip::SipHasher13;

use account::Profile;
use vigil_rules::Action;
use window::{Amounts, Windows};

/// Hasher for keys that are already hashes.
pub type FxBuild = BuildHasherDefault<FxHasher>;

/// Turns ids into state keys: SipHash-1-3 of the store's tag and the id under a 128-bit secret
/// ([`IdSecret`]). Two ids with one key are one entity (one account's history, a transaction
/// counted once, a device already known), and ids come from clients; under an unkeyed hash
/// anyone can build as many ids with one key as they like. Under a secret key, finding two is
/// a 2^64 search blind. The secret is kept in the engine's snapshots, since the keys in state
/// were made with it.
pub struct IdHasher {
    k0: AtomicU64,
    k1: AtomicU64,
    /// The unkeyed FxHash of formats before the secret: state restored from such a snapshot
    /// must keep finding its keys.
    legacy: AtomicBool,
}

/// A hasher under a secret drawn once per process, for hashes of client strings that live in
/// memory only (made again after a restart): the ledger's idempotency fingerprints, the Kafka
/// read-back's set of effects. Unkeyed, a string could be built to pass for another.
pub fn process_keyed() -> &'static std::hash::RandomState {
    static KEYS: std::sync::OnceLock<std::hash::RandomState> = std::sync::OnceLock::new();
    KEYS.get_or_init(std::hash::RandomState::new)
}

/// The secret an [`IdHasher`] hashes under. Its `Debug` does not show the key.
#[derive(Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdSecret {
    /// The unkeyed FxHash snapshots of format 1 were made with (no secret: ids can be built
    /// to collide).
    Unkeyed,
    /// SipHash-1-3 under this key.
    Sip([u64; 2]),
}

/// The fixed secret of replays, backtests and dry runs: their decisions must not depend on a
/// draw (which keys go first when a store is over its limit and ties are broken by key).
pub const REPLAY_SECRET: IdSecret = IdSecret::Sip([0x5649_4749_4c5f_5245, 0x504c_4159_5f4b_4559]);

impl std::fmt::Debug for IdSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            IdSecret::Unkeyed => f.write_str("Unkeyed"),
            IdSecret::Sip(_) if *self == REPLAY_SECRET => f.write_str("Sip(replay)"),
            IdSecret::Sip(_) => f.write_str("Sip(..)"),
        }
    }
}

impl IdSecret {
    /// A secret drawn from the operating system's random source.
    ///
    /// # Panics
    /// If the operating system has no random source to give (`getrandom` fails), as the
    /// standard library's `HashMap` does.
    pub fn random() -> IdSecret {
        let mut b = [0u8; 16];
        getrandom::fill(&mut b).expect("the operating system's random source");
        let (k0, k1) = b.split_at(8);
        IdSecret::Sip([
            u64::from_le_bytes(k0.try_into().expect("8 bytes")),
            u64::from_le_bytes(k1.try_into().expect("8 bytes")),
        ])
    }
}

impl std::fmt::Debug for IdHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("IdHasher").field(&self.secret()).finish()
    }
}

impl IdHasher {
    /// Hashes under `secret`.
    pub fn new(secret: IdSecret) -> IdHasher {
        let h = IdHasher {
            k0: AtomicU64::new(0),
            k1: AtomicU64::new(0),
            legacy: AtomicBool::new(false),
        };
        h.set(secret);
        h
    }

    /// Hashes under `secret` from now on (a snapshot's, as its state is restored).
    pub fn set(&self, secret: IdSecret) {
        let (legacy, [k0, k1]) = match secret {
            IdSecret::Unkeyed => (true, [0, 0]),
            IdSecret::Sip(k) => (false, k),
        };
        self.k0.store(k0, Ordering::Relaxed);
        self.k1.store(k1, Ordering::Relaxed);
        self.legacy.store(legacy, Ordering::Relaxed);
    }

    /// The secret hashed under.
    pub fn secret(&self) -> IdSecret {
        if self.legacy.load(Ordering::Relaxed) {
            IdSecret::Unkeyed
        } else {
            IdSecret::Sip([
                self.k0.load(Ordering::Relaxed),
                self.k1.load(Ordering::Relaxed),
            ])
        }
    }

    /// A tag of a transaction's body — `[payer's key, counterparty's key, amount, kind and
    /// currency]` — so that a request that reuses a tx_id for another body is told apart from
    /// a repeat (see [`seen`]). The two keys are keyed hashes already; the rest is folded in
    /// by multiplying with the secret. It catches mistakes, not an adversary: the callers who
    /// can reuse a tx_id are the payment service's, and a 19-bit tag can be searched for by
    /// anyone who can ask 2^19 times.
    #[inline]
    pub fn body_tag(&self, [payer, counterparty, amount, kind]: [u64; 4]) -> u32 {
        // Odd, and not 1 for the unkeyed hash of old snapshots (whose k0 is 0).
        let m = u128::from((self.k0.load(Ordering::Relaxed) ^ 0x9e37_79b9_7f4a_7c15) | 1);
        let fold = |x: u64| {
            let p = u128::from(x) * m;
            (p as u64) ^ (p >> 64) as u64
        };
        let h = fold(fold(payer ^ counterparty.rotate_left(23) ^ amount) ^ kind);
        (h ^ h >> 32) as u32
    }

    /// The state key of id `s` in the store tagged `tag` (never 0, which means "absent").
    #[inline]
    pub fn key(&self, tag: u8, s: &str) -> u64 {
        let [k] = self.keys(s, [tag]);
        k
    }

    /// The state keys of id `s` in the stores tagged `tags`, hashing `s` once. The tag goes
    /// into the high byte of the id's hash: stores are apart, and within one, ids that share
    /// a key are ids whose keyed hashes collide.
    #[inline]
    pub fn keys<const N: usize>(&self, s: &str, tags: [u8; N]) -> [u64; N] {
        if self.legacy.load(Ordering::Relaxed) {
            return tags.map(|tag| {
                let mut h = FxHasher::default();
                h.write_u8(tag);
                h.write(s.as_bytes());
                h.finish().max(1)
            });
        }
        let h = SipHasher13::new_with_keys(
            self.k0.load(Ordering::Relaxed),
            self.k1.load(Ordering::Relaxed),
        )
        .hash(s.as_bytes());
        tags.map(|tag| (h ^ (u64::from(tag) << 56)).max(1))
    }
}

/// Limits on the state, each with its unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StateLimits {
    /// Most accounts held.
    pub accounts_max: usize,
    /// Most keys held per other store (devices, IPs, counterparties).
    pub keys_max: usize,
    /// Most transaction ids remembered for de-duplication.
    pub seen_tx_max: usize,
    /// How long a transaction id is remembered, ms of event time.
    pub seen_tx_ms: i64,
    /// An account idle this long (event time) is forgotten, at the next sweep of the accounts
    /// (see [`SWEEP_EVERY_DIV`]).
    pub account_idle_ms: i64,
}

impl Default for StateLimits {
    fn default() -> Self {
        StateLimits {
            accounts_max: 10_000_000,
            keys_max: 10_000_000,
            seen_tx_max: 20_000_000,
            seen_tx_ms: 7 * 86_400_000,
            account_idle_ms: 90 * 86_400_000,
        }
    }
}

/// An account's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AccountState {
    /// Profile: places, devices, payees, events, balance.
    pub profile: Profile,
    /// Windows keyed by this account.
    pub windows: Windows,
    /// Windows over the account's outgoing transactions only (for `usual_amount`).
    pub outgoing: Amounts,
    /// Latest event time of any kind, ms.
    pub last_seen_ms: i64,
}

impl AccountState {
    /// Starts loading the windows' lists kept outside the entry.
    pub fn prefetch_heap(&self) {
        self.windows.prefetch_heap();
        self.outgoing.prefetch_heap();
    }
}

/// All state.
#[derive(Debug)]
pub struct State {
    /// Accounts by id hash.
    pub accounts: DashMap<u64, AccountState, FxBuild>,
    /// Windows by device, IP and counterparty (indexed like `KeyKind::ALL[1..]`).
    pub keyed: [DashMap<u64, Windows, FxBuild>; 3],
    /// Transaction ids already counted → event time. A decision locks its shard first, before
    /// any account or key ([`State::seen_shard`]); nothing may wait for it while holding
    /// another store's shard.
    pub seen_tx: DashMap<u64, i64, FxBuild>,
    /// Event time each store was last swept (accounts, devices, IPs, counterparties, tx ids;
    /// `i64::MIN`: never).
    swept_ms: [AtomicI64; 5],
    /// Turns ids into the keys above.
    pub ids: IdHasher,
}

/// A store is swept again once event time has moved on by this fraction of its idle limit
/// (or when it is over its size limit): an idle key is held at most an eighth of its limit
/// longer than the limit, and a store whose keys live 90 days is not scanned every few
/// seconds to find nothing.
pub const SWEEP_EVERY_DIV: i64 = 8;

/// Sizes of the stores, for metrics and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StateStats {
    /// Accounts held.
    pub accounts: usize,
    /// Devices, IPs, counterparties held.
    pub keyed: [usize; 3],
    /// Transaction ids remembered.
    pub seen_tx: usize,
    /// Approximate bytes held by accounts (entries and heap).
    pub account_bytes: usize,
    /// Approximate bytes held by the other stores.
    pub keyed_bytes: usize,
}

/// Sweeps `map` at event time `now` if it is due (see [`SWEEP_EVERY_DIV`]; `swept` holds the
/// time of its last sweep): keys idle for `idle_ms` go, then past `max` the least recently
/// active.
fn evict<V>(
    map: &DashMap<u64, V, FxBuild>,
    swept: &AtomicI64,
    max: usize,
    idle_ms: i64,
    now: i64,
    last: impl Fn(&V) -> i64,
) {
    let due = now
        >= swept
            .load(Ordering::Relaxed)
            .saturating_add(idle_ms / SWEEP_EVERY_DIV);
    if !due && map.len() <= max {
        return;
    }
    swept.fetch_max(now, Ordering::Relaxed);
    map.retain(|_, v| last(v) > now.saturating_sub(idle_ms));
    if map.len() > max {
        // Past the limit, the least recently active keys go, whatever their age: exactly as
        // many as are too many, ties broken by key, so which go does not depend on the order
        // of the shards (their number follows the machine's cores) and replays stay the same.
        let mut seen: Vec<(i64, u64)> = map.iter().map(|e| (last(e.value()), *e.key())).collect();
        let Some(excess) = seen.len().checked_sub(max).filter(|&n| n > 0) else {
            return;
        };
        let (_, &mut cutoff, _) = seen.select_nth_unstable(excess - 1);
        map.retain(|k, v| (last(v), *k) > cutoff);
    }
}

/// A lookup started ahead, stage one: starts loading the control bytes that `key`'s probe
/// in `map` begins with, holding the shard's read lock only to read the table's address and
/// size. Then [`prefetch_entry`], then the lookup itself.
pub fn prefetch_slot<V>(map: &DashMap<u64, V, FxBuild>, key: u64) {
    let shard = map.shards()[map.determine_shard(map.hash_usize(&key))].read();
    prefetch_slot_in(map, &shard, key);
}

/// Starts loading the 16 control bytes a probe for `hash` begins with in a hashbrown table
/// of `buckets` buckets, whose control bytes start where its buckets end (`data_end`).
fn prefetch_ctrl(data_end: *const u8, buckets: usize, hash: usize) {
    let group = data_end.wrapping_add(hash & (buckets - 1));
    prefetch::line(group);
    prefetch::line(group.wrapping_add(15));
}

/// A lookup started ahead, stage two, once the control bytes are in: starts loading the
/// bytes `part` of the entry (a `(u64, V)` in the table) whose 7-bit tag matches `key`'s —
/// nearly always `key`'s own; the entry itself is not read.
pub fn prefetch_entry<V>(map: &DashMap<u64, V, FxBuild>, key: u64, part: Range<usize>) {
    let shard = map.shards()[map.determine_shard(map.hash_usize(&key))].read();
    prefetch_entry_in(map, &shard, key, part);
}

/// The table inside one shard of a store (what the shard's lock guards).
pub(crate) type Shard<V> = hashbrown::raw::RawTable<(u64, dashmap::SharedValue<V>)>;
pub(crate) type Guard<'s, V> = dashmap::RwLockWriteGuard<'s, Shard<V>>;

/// Every shard of every store, write-locked for a batch of decisions
/// (`Engine::decide_batch`): the batch looks its keys up without a lock per lookup, and can
/// start loading the next events' entries without taking locks again. Taken in the one order
/// every decision locks in — transaction ids, accounts, devices, IPs, counterparties — so a
/// batch and single decisions on other threads cannot deadlock; they wait for the batch.
pub(crate) struct Locked<'s> {
    pub(crate) seen: Vec<Guard<'s, i64>>,
    pub(crate) accounts: Vec<Guard<'s, AccountState>>,
    pub(crate) keyed: [Vec<Guard<'s, Windows>>; 3],
}

/// A shard a decision works in: write-locked by the decision itself (unlocked when this is
/// dropped), or held by its batch.
pub(crate) enum ShardMut<'b, 's, V> {
    /// Locked by this decision.
    Own(Guard<'s, V>),
    /// Locked by the batch.
    Batch(&'b mut Shard<V>),
}

impl std::fmt::Debug for Locked<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Locked")
            .field("shards_per_store", &self.accounts.len())
            .finish_non_exhaustive()
    }
}

impl<V> std::fmt::Debug for ShardMut<'_, '_, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let by = match self {
            ShardMut::Own(_) => "decision",
            ShardMut::Batch(_) => "batch",
        };
        f.debug_struct("ShardMut")
            .field("locked_by", &by)
            .field("len", &self.len())
            .finish()
    }
}

impl<V> std::ops::Deref for ShardMut<'_, '_, V> {
    type Target = Shard<V>;
    fn deref(&self) -> &Shard<V> {
        match self {
            ShardMut::Own(g) => g,
            ShardMut::Batch(t) => t,
        }
    }
}

impl<V> std::ops::DerefMut for ShardMut<'_, '_, V> {
    fn deref_mut(&mut self) -> &mut Shard<V> {
        match self {
            ShardMut::Own(g) => g,
            ShardMut::Batch(t) => t,
        }
    }
}

/// The shard of `map` that holds `key`: the batch's (`batch`: the batch's locks of `map`) or,
/// outside a batch, write-locked now.
pub(crate) fn shard_mut<'b, 's, V>(
    map: &'s DashMap<u64, V, FxBuild>,
    batch: Option<&'b mut Vec<Guard<'_, V>>>,
    key: u64,
) -> ShardMut<'b, 's, V> {
    let i = map.determine_shard(map.hash_usize(&key));
    match batch {
        Some(b) => ShardMut::Batch(&mut *b[i]),
        None => ShardMut::Own(map.shards()[i].write()),
    }
}

/// `key`'s value in `shard` (a shard of `map`).
pub(crate) fn get_in<'t, V>(
    map: &DashMap<u64, V, FxBuild>,
    shard: &'t Shard<V>,
    key: u64,
) -> Option<&'t V> {
    let hash = map.hash_usize(&key) as u64;
    shard.get(hash, |(k, _)| *k == key).map(|(_, v)| v.get())
}

/// `key`'s value in `shard` (a shard of `map`), to change.
pub(crate) fn get_mut_in<'t, V>(
    map: &DashMap<u64, V, FxBuild>,
    shard: &'t mut Shard<V>,
    key: u64,
) -> Option<&'t mut V> {
    let hash = map.hash_usize(&key) as u64;
    shard
        .get_mut(hash, |(k, _)| *k == key)
        .map(|(_, v)| v.get_mut())
}

/// `key`'s value in `shard` (a shard of `map`), made with `make` if absent; and whether it
/// was made.
pub(crate) fn entry_in<'t, V>(
    map: &DashMap<u64, V, FxBuild>,
    shard: &'t mut Shard<V>,
    key: u64,
    make: impl FnOnce() -> V,
) -> (&'t mut V, bool) {
    let hash = map.hash_usize(&key) as u64;
    let eq = |(k, _): &(u64, dashmap::SharedValue<V>)| *k == key;
    if shard.find(hash, eq).is_none() {
        let value = (key, dashmap::SharedValue::new(make()));
        let (_, v) = shard.insert_entry(hash, value, |(k, _)| map.hash_usize(k) as u64);
        return (v.get_mut(), true);
    }
    match shard.get_mut(hash, eq) {
        Some((_, v)) => (v.get_mut(), false),
        // Just found, under the same lock.
        None => unreachable!("a key just found is in its shard"),
    }
}

/// Removes `key` from `shard` (a shard of `map`) if `cond` holds for its value.
pub(crate) fn remove_if_in<V>(
    map: &DashMap<u64, V, FxBuild>,
    shard: &mut Shard<V>,
    key: u64,
    cond: impl Fn(&V) -> bool,
) {
    let hash = map.hash_usize(&key) as u64;
    shard.remove_entry(hash, |(k, v)| *k == key && cond(v.get()));
}

/// [`prefetch_slot`] in a shard the batch holds: no lock.
pub(crate) fn prefetch_slot_in<V>(map: &DashMap<u64, V, FxBuild>, shard: &Shard<V>, key: u64) {
    let hash = map.hash_usize(&key);
    prefetch_ctrl(shard.data_end().as_ptr().cast(), shard.buckets(), hash);
}

/// The shard of `map` that holds `key`, among `shards` (all of `map`'s, locked by a batch).
pub(crate) fn held_shard<'t, V>(
    map: &DashMap<u64, V, FxBuild>,
    shards: &'t [Guard<'_, V>],
    key: u64,
) -> &'t Shard<V> {
    &shards[map.determine_shard(map.hash_usize(&key))]
}

/// [`prefetch_entry`] in a shard the batch holds: no lock.
pub(crate) fn prefetch_entry_in<V>(
    map: &DashMap<u64, V, FxBuild>,
    shard: &Shard<V>,
    key: u64,
    part: Range<usize>,
) {
    if let Some(p) = tagged_entry(map, shard, key) {
        prefetch::bytes(p.wrapping_add(part.start), part.len());
    }
}

/// Where `key`'s entry is in `shard` (a shard of `map`), nearly always: the first entry on
/// its probe whose 7-bit tag matches (found from the control bytes alone; the entry is not
/// read).
fn tagged_entry<V>(
    map: &DashMap<u64, V, FxBuild>,
    shard: &Shard<V>,
    key: u64,
) -> Option<*const u8> {
    let b = shard.find(map.hash_usize(&key) as u64, |_| true)?;
    Some(b.as_ptr().cast::<u8>().cast_const())
}

impl State {
    /// Write-locks every shard of every store, in the order every decision locks in (see
    /// [`Locked`]).
    pub(crate) fn lock_all(&self) -> Locked<'_> {
        fn all<V>(map: &DashMap<u64, V, FxBuild>) -> Vec<Guard<'_, V>> {
            map.shards().iter().map(|s| s.write()).collect()
        }
        let seen = all(&self.seen_tx);
        let accounts = all(&self.accounts);
        let keyed = [
            all(&self.keyed[0]),
            all(&self.keyed[1]),
            all(&self.keyed[2]),
        ];
        Locked {
            seen,
            accounts,
            keyed,
        }
    }

    /// Records transaction id `tx` (an [`IdHasher::key`]) with body tag `tag` at event time
    /// `ts` in `shard`, its shard of the transaction-id set. Returns its entry (for
    /// [`seen::decided`] once the decision is made) and, if it was there already, the first
    /// decision's action if it was kept and this is the same body (`None` inside otherwise).
    pub(crate) fn see_in<'s>(
        &self,
        shard: &'s mut Shard<i64>,
        tx: u64,
        tag: u32,
        ts: i64,
    ) -> (&'s mut i64, Option<Option<Action>>) {
        let (at, made) = entry_in(&self.seen_tx, shard, tx, || seen::pack(ts, None, tag));
        if made {
            return (at, None);
        }
        let first = seen::first(*at).filter(|_| seen::same_body(*at, tag));
        seen::moved_to(at, ts);
        (at, Some(first))
    }
}

/// An entry of the transaction-id set, in 64 bits: the id's latest event time (42 bits: event
/// times are years 2000 to 2100), its first decision's action (3 bits, 0: not kept), and a
/// 19-bit keyed tag of that transaction's body ([`IdHasher::body_tag`]). A transaction settled
/// after it was authorized settles as authorized — if it is the transaction that was: another
/// body under the same id gets no first action. An entry from before (a plain time) has none.
pub mod seen {
    use vigil_rules::Action;

    const TS_BITS: u32 = 42;
    const TS_MASK: u64 = (1 << TS_BITS) - 1;
    const ACTION_BITS: u32 = 3;
    const TAG_BITS: u32 = 64 - TS_BITS - ACTION_BITS;
    const ACTIONS: [Action; 4] = [Action::Allow, Action::Review, Action::StepUp, Action::Block];

    /// The entry for event time `ts`, first action `first` and body tag `tag`.
    pub fn pack(ts: i64, first: Option<Action>, tag: u32) -> i64 {
        let code = first.map_or(0, |a| {
            1 + ACTIONS.iter().position(|&x| x == a).unwrap_or(0) as u64
        });
        let ts = ts.clamp(0, TS_MASK as i64) as u64;
        let tag = u64::from(tag) & ((1 << TAG_BITS) - 1);
        (ts | code << TS_BITS | tag << (TS_BITS + ACTION_BITS)) as i64
    }

    /// The event time of entry `v`.
    pub fn ts(v: i64) -> i64 {
        (v as u64 & TS_MASK) as i64
    }

    /// The first action of entry `v`, if kept.
    pub fn first(v: i64) -> Option<Action> {
        let code = ((v as u64 >> TS_BITS) & ((1 << ACTION_BITS) - 1)) as usize;
        code.checked_sub(1).and_then(|i| ACTIONS.get(i).copied())
    }

    /// The body tag of entry `v`.
    pub fn tag(v: i64) -> u32 {
        (v as u64 >> (TS_BITS + ACTION_BITS)) as u32
    }

    /// Whether entry `v` was made for a body tagged `tag`.
    pub fn same_body(v: i64, tag: u32) -> bool {
        u64::from(self::tag(v)) == u64::from(tag) & ((1 << TAG_BITS) - 1)
    }

    /// Moves entry `v` to event time `ts`, keeping its first decision.
    pub fn moved_to(v: &mut i64, ts: i64) {
        *v = pack(ts, first(*v), tag(*v));
    }

    /// Keeps `action` in entry `v` as its first decision's.
    pub fn decided(v: &mut i64, action: Action) {
        *v = pack(ts(*v), Some(action), tag(*v));
    }
}

impl State {
    /// State with room for `accounts` accounts (and as many devices, IPs, counterparties and
    /// four transaction ids per account) before any table grows, keyed under `secret`.
    pub fn new(accounts: usize, secret: IdSecret) -> State {
        let map = || DashMap::with_capacity_and_hasher(accounts, FxBuild::default());
        State {
            accounts: DashMap::with_capacity_and_hasher(accounts, FxBuild::default()),
            keyed: [map(), map(), map()],
            // As many shards as the others (4 per core): a decision holds one from start to end,
            // as it holds its payer's; 64 or 256 made `decide-load` 4-10% slower, with a
            // worse tail.
            seen_tx: DashMap::with_capacity_and_hasher(
                accounts.saturating_mul(4),
                FxBuild::default(),
            ),
            swept_ms: std::array::from_fn(|_| AtomicI64::new(i64::MIN)),
            ids: IdHasher::new(secret),
        }
    }

    /// The shard of the transaction-id set that holds `tx` (an [`IdHasher::key`]): the batch's (whose
    /// decisions load it ahead), or locked now, with its control bytes starting to load; [`State::see_in`] then records
    /// `tx` in it.
    ///
    /// A decision locks the shard first, asks once it has read its other entries, and unlocks
    /// at its end. A lock or an unlock is an atomic read-modify-write, which waits for every
    /// earlier load and store: asked between the two (as `DashMap::insert` does), the lookup's
    /// cache misses are waited for on the spot; asked this way they overlap the entries' and
    /// are long over by the unlock (1M accounts: ~375k → ~450k decisions/s). Lock order: this
    /// shard, then the account, then the shared keys.
    pub(crate) fn seen_shard<'b>(
        &self,
        batch: Option<&'b mut Vec<Guard<'_, i64>>>,
        tx: u64,
    ) -> ShardMut<'b, '_, i64> {
        let batched = batch.is_some();
        let shard = shard_mut(&self.seen_tx, batch, tx);
        if !batched {
            prefetch_slot_in(&self.seen_tx, &shard, tx);
        }
        shard
    }

    /// Evicts what is idle at event time `now`: keys whose windows are past `horizon_ms`
    /// (per store), accounts idle past the limit, remembered tx ids past theirs. A store is
    /// swept only when it is over its size limit or event time has moved on by
    /// 1/[`SWEEP_EVERY_DIV`] of its idle limit since its last sweep.
    pub fn maintain(&self, now: i64, horizons_ms: [i64; 3], limits: &StateLimits) {
        let [accounts, keyed @ .., seen_tx] = &self.swept_ms;
        evict(
            &self.accounts,
            accounts,
            limits.accounts_max,
            limits.account_idle_ms,
            now,
            |a| a.last_seen_ms,
        );
        for ((store, swept), horizon) in self.keyed.iter().zip(keyed).zip(horizons_ms) {
            evict(
                store,
                swept,
                limits.keys_max,
                horizon.max(60_000),
                now,
                |w| w.last_ts,
            );
        }
        evict(
            &self.seen_tx,
            seen_tx,
            limits.seen_tx_max,
            limits.seen_tx_ms,
            now,
            |v| seen::ts(*v),
        );
    }

    /// Counts keys and approximate bytes.
    pub fn stats(&self) -> StateStats {
        let entry = std::mem::size_of::<(u64, AccountState)>();
        let account_bytes = self
            .accounts
            .iter()
            .map(|a| {
                entry + a.profile.heap_bytes() + a.windows.heap_bytes() + a.outgoing.heap_bytes()
            })
            .sum();
        let wentry = std::mem::size_of::<(u64, Windows)>();
        let keyed_bytes = self
            .keyed
            .iter()
            .map(|m| m.iter().map(|w| wentry + w.heap_bytes()).sum::<usize>())
            .sum();
        StateStats {
            accounts: self.accounts.len(),
            keyed: [
                self.keyed[0].len(),
                self.keyed[1].len(),
                self.keyed[2].len(),
            ],
            seen_tx: self.seen_tx.len(),
            account_bytes,
            keyed_bytes,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Past the size limit exactly the excess goes, the least recently active first and ties
    /// broken by key: the same keys stay whatever the number of shards (it follows the cores).
    #[test]
    fn over_the_limit_the_same_keys_go_whatever_the_shards() {
        let kept = |shards: usize| {
            let map: DashMap<u64, i64, FxBuild> =
                DashMap::with_capacity_and_hasher_and_shard_amount(0, FxBuild::default(), shards);
            for k in 0..1000u64 {
                // Half at one time, the rest older or newer.
                let t = match k % 4 {
                    0 => 10,
                    1 => 30,
                    _ => 20,
                };
                map.insert(k.wrapping_mul(0x9E37_79B9_7F4A_7C15), t);
            }
            evict(&map, &AtomicI64::new(100), 600, i64::MAX, 100, |t| *t);
            let mut keys: Vec<(i64, u64)> = map.iter().map(|e| (*e.value(), *e.key())).collect();
            keys.sort_unstable();
            keys
        };
        let (a, b) = (kept(4), kept(64));
        assert_eq!(a.len(), 600);
        assert_eq!(a, b);
        // All 250 newest stay, no oldest does, and 350 of the 500 tied.
        assert_eq!(a.iter().filter(|(t, _)| *t == 30).count(), 250);
        assert_eq!(a.iter().filter(|(t, _)| *t == 10).count(), 0);
    }

    /// `see_in` finds what `DashMap` put, and `DashMap` (get, retain, a snapshot's restore
    /// by insert) finds what it put: both place a key in the same shard and slot.
    #[test]
    fn see_in_and_the_map_see_the_same_ids() {
        let s = State::new(16, IdSecret::random());
        let ids: Vec<u64> = (0..20_000)
            .map(|i| s.ids.key(9, &format!("t-{i}")))
            .collect();
        for (i, &id) in ids.iter().enumerate() {
            if i % 2 == 0 {
                s.seen_tx.insert(id, 1);
            }
        }
        for (i, &id) in ids.iter().enumerate() {
            let mut shard = s.seen_shard(None, id);
            assert_eq!(
                s.see_in(&mut shard, id, 0, 2).1.is_some(),
                i % 2 == 0,
                "id {i}"
            );
        }
        assert_eq!(s.seen_tx.len(), ids.len());
        assert!(
            ids.iter()
                .all(|id| s.seen_tx.get(id).is_some_and(|t| seen::ts(*t) == 2))
        );
        s.seen_tx.retain(|k, _| k % 3 != 0);
        for &id in &ids {
            let mut shard = s.seen_shard(None, id);
            assert_eq!(s.see_in(&mut shard, id, 0, 3).1.is_some(), id % 3 != 0);
        }
    }

    /// The entry a lookup is started ahead for is the key's own (but for the rare key whose
    /// 7-bit tag another entry on its probe shares), and starting lookups ahead on an empty
    /// store, for absent keys, or past removed ones changes nothing.
    /// [`tagged_entry`] under `key`'s shard's read lock.
    fn tagged<V>(map: &DashMap<u64, V, FxBuild>, key: u64) -> Option<*const u8> {
        let shard = map.shards()[map.determine_shard(map.hash_usize(&key))].read();
        tagged_entry(map, &shard, key)
    }

    #[test]
    fn lookups_started_ahead_find_the_entries_and_change_nothing() {
        let map: DashMap<u64, [u64; 20], FxBuild> = DashMap::default();
        let ids = IdHasher::new(IdSecret::random());
        let keys: Vec<u64> = (0..20_000u64)
            .map(|i| ids.key(1, &format!("d-{i}")))
            .collect();
        for &k in &keys {
            prefetch_slot(&map, k);
            prefetch_entry(&map, k, 0..160);
            assert_eq!(tagged(&map, k), None);
        }
        for (i, &k) in keys.iter().enumerate() {
            map.insert(k, [i as u64; 20]);
        }
        map.retain(|k, _| k % 5 != 0);
        let entry_bytes = std::mem::size_of::<(u64, dashmap::SharedValue<[u64; 20]>)>();
        let mut own = 0;
        for (i, &k) in keys.iter().enumerate() {
            prefetch_slot(&map, k);
            prefetch_entry(&map, k, 0..entry_bytes);
            let Some(v) = map.get(&k) else {
                assert_eq!(k % 5, 0);
                continue;
            };
            assert_eq!(v[0], i as u64);
            let value = std::ptr::from_ref(v.value()).cast::<u8>();
            let entry = tagged(&map, k).expect("a present key has a tag match");
            own += usize::from((value as usize).wrapping_sub(entry as usize) < entry_bytes);
        }
        let present = map.len();
        assert_eq!(present, keys.iter().filter(|k| *k % 5 != 0).count());
        assert!(own * 100 >= present * 97, "{own} of {present} found");
    }
}
