//! The generator's internal event model: *plans* (what somebody tries to do, and when) that the
//! simulation later resolves against the tracked balances, plus the shared run context.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::cmp::{Ordering, Reverse};
use std::collections::BinaryHeap;

/// One minute in milliseconds.
pub(crate) const MIN: i64 = 60_000;
/// One hour in milliseconds.
pub(crate) const HOUR: i64 = 60 * MIN;
/// One day in milliseconds.
pub(crate) const DAY: i64 = 24 * HOUR;

/// Run-wide parameters, in integer milliseconds since the Unix epoch.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub seed: u64,
    pub accounts: u32,
    pub days: u32,
    pub start: i64,
    pub end: i64,
    pub fraud_rate: f64,
}

/// Independent random streams, so that changing one behaviour does not reshuffle the others.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stream {
    Profile = 1,
    Relations,
    Life,
    Honest,
    Splits,
    Fraud,
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Ctx {
    /// A deterministic random stream for `(stream, index)` under this run's seed.
    pub fn rng(&self, stream: Stream, index: u32) -> ChaCha8Rng {
        let key = ((stream as u64) << 32) | u64::from(index);
        ChaCha8Rng::seed_from_u64(splitmix(self.seed ^ splitmix(key)))
    }

    /// Whether `ts` lies inside the generated period.
    pub fn in_period(&self, ts: i64) -> bool {
        ts >= self.start && ts < self.end
    }

    /// UTC calendar day of month of generated day `day`.
    pub fn day_of_month(&self, day: u32) -> u32 {
        civil_from_days((self.start + i64::from(day) * DAY + 12 * HOUR).div_euclid(DAY)).2
    }

    /// Day of week of generated day `day` (0 = Sunday).
    pub fn weekday(&self, day: u32) -> u32 {
        ((self.start + i64::from(day) * DAY + 12 * HOUR).div_euclid(DAY) + 4).rem_euclid(7) as u32
    }

    /// UTC timestamp of local midnight of generated day `day` for a UTC offset in minutes.
    pub fn local_midnight(&self, day: u32, tz_min: i32) -> i64 {
        self.start + i64::from(day) * DAY - i64::from(tz_min) * MIN
    }
}

/// `(year, month, day)` of a day count since 1970-01-01 (Howard Hinnant's algorithm).
pub(crate) fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Currencies of wallet accounts; each account keeps one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Currency {
    Eur,
    Usd,
    Gbp,
    Jpy,
}

impl Currency {
    /// All currencies, in `index()` order.
    pub const ALL: [Currency; 4] = [Currency::Eur, Currency::Usd, Currency::Gbp, Currency::Jpy];

    /// ISO 4217 code.
    pub fn code(self) -> &'static str {
        match self {
            Currency::Eur => "EUR",
            Currency::Usd => "USD",
            Currency::Gbp => "GBP",
            Currency::Jpy => "JPY",
        }
    }

    /// Position in [`Currency::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Number of decimals of the minor unit.
    pub fn decimals(self) -> u32 {
        match self {
            Currency::Jpy => 0,
            _ => 2,
        }
    }

    /// Converts euro cents to this currency's minor units at rough fixed rates.
    pub fn minor_of_eur_cents(self, cents: i64) -> i64 {
        match self {
            Currency::Eur => cents,
            Currency::Usd => cents * 11 / 10,
            Currency::Gbp => cents * 85 / 100,
            Currency::Jpy => cents * 16 / 10,
        }
    }

    /// A "whole" amount step in minor units (1.00, or 100 yen).
    pub fn unit(self) -> i64 {
        100
    }
}

/// Rounds `minor` down to a multiple of `step` (but never below `step`).
pub(crate) fn round_to(minor: i64, step: i64) -> i64 {
    if step <= 1 {
        return minor;
    }
    (minor / step).max(1) * step
}

/// Transaction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TxKind {
    Transfer,
    Payment,
    Withdrawal,
    TopUp,
    Refund,
}

impl TxKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            TxKind::Transfer => "transfer",
            TxKind::Payment => "payment",
            TxKind::Withdrawal => "withdrawal",
            TxKind::TopUp => "top_up",
            TxKind::Refund => "refund",
        }
    }

    /// Whether the account's balance goes down.
    pub fn is_debit(self) -> bool {
        matches!(
            self,
            TxKind::Transfer | TxKind::Payment | TxKind::Withdrawal
        )
    }
}

/// Account event kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcctKind {
    AccountOpened,
    Login,
    NewDevice,
    PasswordReset,
    EmailChanged,
    PhoneChanged,
    PayeeAdded,
}

impl AcctKind {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            AcctKind::AccountOpened => "account_opened",
            AcctKind::Login => "login",
            AcctKind::NewDevice => "new_device",
            AcctKind::PasswordReset => "password_reset",
            AcctKind::EmailChanged => "email_changed",
            AcctKind::PhoneChanged => "phone_changed",
            AcctKind::PayeeAdded => "payee_added",
        }
    }
}

/// Channels a transaction comes through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Channel {
    App,
    Web,
    Api,
    Pos,
}

impl Channel {
    /// Wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::App => "app",
            Channel::Web => "web",
            Channel::Api => "api",
            Channel::Pos => "pos",
        }
    }
}

/// Fraud scenarios (the `fraud_scenario` label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Scenario {
    AccountTakeover,
    CardTesting,
    ImpossibleTravel,
    AmountAnomaly,
    MuleFanIn,
}

impl Scenario {
    /// Every scenario.
    pub const ALL: [Scenario; 5] = [
        Scenario::AccountTakeover,
        Scenario::CardTesting,
        Scenario::ImpossibleTravel,
        Scenario::AmountAnomaly,
        Scenario::MuleFanIn,
    ];

    /// Label written to `fraud_scenario`.
    pub fn name(self) -> &'static str {
        match self {
            Scenario::AccountTakeover => "account_takeover",
            Scenario::CardTesting => "card_testing",
            Scenario::ImpossibleTravel => "impossible_travel",
            Scenario::AmountAnomaly => "amount_anomaly",
            Scenario::MuleFanIn => "mule_fan_in",
        }
    }
}

/// The other side of a transaction or a `payee_added` event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Party {
    /// A wallet account (index); `a-…`.
    Account(u32),
    /// A merchant number; `m-…`.
    Merchant(u32),
    /// The own bank account of a wallet account (index); `bank-…`.
    Bank(u32),
    /// The own card of a wallet account (index); `card-…`.
    Card(u32),
}

/// A device: the `n`-th device seen on account `account` (index); `d-<account>-<n>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Device {
    pub account: u32,
    pub n: u16,
}

/// IPv4 address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ip(pub [u8; 4]);

/// A location in 1e-4 degrees with its ISO 3166 alpha-2 country.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Geo {
    pub lat_e4: i32,
    pub lon_e4: i32,
    pub country: &'static str,
}

/// Where an event comes from on the network and on the map (`geo` may be missing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Spot {
    pub geo: Option<Geo>,
    pub ip: Ip,
}

/// How much a planned transaction moves; resolved against the balance when it happens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Amt {
    /// Exactly this many minor units; a debit that would overdraw is dropped.
    Fixed(i64),
    /// This much, but at most `cap_pm` per mille of the balance (fraud and large honest moves).
    Capped { minor: i64, cap_pm: i64 },
    /// `pm` per mille of the balance, rounded down to a multiple of `step` when possible.
    Share { pm: i64, step: i64 },
    /// A credit of `minor` that only happens if the balance is below `threshold`.
    TopUpIfBelow { threshold: i64, minor: i64 },
}

/// A refund the merchant will send back after a payment settles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RefundSpec {
    pub delay: i64,
    pub pm: i64,
}

/// Who initiates a transaction, how and from where.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Origin {
    pub account: u32,
    pub currency: Currency,
    pub channel: Channel,
    pub device: Device,
    pub spot: Spot,
}

/// A transaction someone will attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TxPlan {
    pub kind: TxKind,
    pub origin: Origin,
    pub counterparty: Party,
    pub amount: Amt,
    pub memo: Option<&'static str>,
    pub fraud: Option<Scenario>,
    pub refund: Option<RefundSpec>,
}

impl TxPlan {
    /// An unlabeled transaction without memo or refund.
    pub fn new(kind: TxKind, origin: Origin, counterparty: Party, amount: Amt) -> Self {
        TxPlan {
            kind,
            origin,
            counterparty,
            amount,
            memo: None,
            fraud: None,
            refund: None,
        }
    }

    /// Sets the memo.
    pub fn memo(mut self, memo: Option<&'static str>) -> Self {
        self.memo = memo;
        self
    }

    /// Labels the transaction as fraud of `scenario`.
    pub fn fraud(mut self, scenario: Scenario) -> Self {
        self.fraud = Some(scenario);
        self
    }
}

/// An account event (never labeled).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AcctPlan {
    pub kind: AcctKind,
    pub account: u32,
    pub device: Device,
    pub spot: Spot,
    pub counterparty: Option<Party>,
    pub locale: Option<&'static str>,
    /// The account's currency (account_opened).
    pub currency: Option<Currency>,
}

impl AcctPlan {
    /// An event without counterparty, locale or currency.
    pub fn new(kind: AcctKind, account: u32, device: Device, spot: Spot) -> Self {
        AcctPlan {
            kind,
            account,
            device,
            spot,
            counterparty: None,
            locale: None,
            currency: None,
        }
    }
}

/// A planned event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Item {
    Tx(TxPlan),
    Acct(AcctPlan),
}

/// A planned event at `ts`; `seq` (creation order) breaks ties so ordering is total and stable.
#[derive(Debug, Clone)]
pub(crate) struct Plan {
    pub ts: i64,
    pub seq: u64,
    pub item: Item,
}

impl PartialEq for Plan {
    fn eq(&self, other: &Self) -> bool {
        (self.ts, self.seq) == (other.ts, other.seq)
    }
}

impl Eq for Plan {}

impl PartialOrd for Plan {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Plan {
    fn cmp(&self, other: &Self) -> Ordering {
        (self.ts, self.seq).cmp(&(other.ts, other.seq))
    }
}

/// Time-ordered queue of plans (a min-heap on `(ts, seq)`).
#[derive(Debug, Default)]
pub(crate) struct Planner {
    heap: BinaryHeap<Reverse<Plan>>,
    created: u64,
}

impl Planner {
    /// Plans a transaction at `ts`.
    pub fn tx(&mut self, ts: i64, tx: TxPlan) {
        self.push(ts, Item::Tx(tx));
    }

    /// Plans an account event at `ts`.
    pub fn acct(&mut self, ts: i64, ev: AcctPlan) {
        self.push(ts, Item::Acct(ev));
    }

    fn push(&mut self, ts: i64, item: Item) {
        let seq = self.created;
        self.created += 1;
        self.heap.push(Reverse(Plan { ts, seq, item }));
    }

    /// Removes the earliest plan.
    pub fn pop(&mut self) -> Option<Plan> {
        self.heap.pop().map(|Reverse(p)| p)
    }

    /// Number of plans ever queued.
    pub fn created(&self) -> u64 {
        self.created
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(20_758), (2026, 11, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn planner_pops_in_time_then_creation_order() {
        let mut p = Planner::default();
        let spot = Spot {
            geo: None,
            ip: Ip([1, 2, 3, 4]),
        };
        let dev = Device { account: 0, n: 1 };
        for (i, ts) in [5, 1, 5, 3, 1].into_iter().enumerate() {
            let mut ev = AcctPlan::new(AcctKind::Login, i as u32, dev, spot);
            ev.device.n = i as u16;
            p.acct(ts, ev);
        }
        let order: Vec<(i64, u64)> =
            std::iter::from_fn(|| p.pop().map(|x| (x.ts, x.seq))).collect();
        assert_eq!(order, vec![(1, 1), (1, 4), (3, 3), (5, 0), (5, 2)]);
    }
}
