//! Shared workloads for Vigil's benchmarks and load generators.
//!
//! [`Workload`] synthesises transactions for many accounts directly as typed events (no JSON),
//! so a benchmark measures `decide()`, not parsing: accounts live in one of 40 cities, use one
//! or two devices, pay merchants near home, sometimes send money to each other, and now and
//! then show up somewhere else.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil_engine::Event;
use vigil_engine::event::{AccountEvent, Currency, Geo, Transaction, TxKind};
use vigil_rules::catalog::AccountEventKind;

const CITIES: [(f64, f64, &[u8; 2]); 8] = [
    (52.52, 13.405, b"DE"),
    (48.8566, 2.3522, b"FR"),
    (51.5072, -0.1276, b"GB"),
    (40.71, -74.0, b"US"),
    (35.68, 139.69, b"JP"),
    (31.23, 121.47, b"CN"),
    (-23.55, -46.63, b"BR"),
    (19.07, 72.88, b"IN"),
];

/// Transactions over `accounts` accounts, generated deterministically.
#[derive(Debug)]
pub struct Workload {
    rng: ChaCha8Rng,
    accounts: u32,
    next_tx: u64,
    ts_ms: i64,
    eur: Currency,
}

/// 2026-11-02T00:00:00Z in Unix milliseconds.
pub const START_MS: i64 = 1_793_577_600_000;

impl Workload {
    /// A workload over `accounts` accounts.
    pub fn new(accounts: u32, seed: u64) -> Workload {
        let eur = Currency::from_code("EUR").expect("EUR is known");
        Workload {
            rng: ChaCha8Rng::seed_from_u64(seed),
            accounts,
            next_tx: 0,
            ts_ms: START_MS,
            eur,
        }
    }

    /// An `account_opened` event for account `i`.
    pub fn opened(&self, i: u32) -> Event {
        let (lat, lon, c) = CITIES[i as usize % CITIES.len()];
        Event::Account(AccountEvent {
            event_id: format!("e-{i}").into(),
            ts_ms: START_MS - 400 * 86_400_000,
            kind: AccountEventKind::from_name("account_opened").expect("kind"),
            account_id: format!("a-{i}").into(),
            device_id: None,
            ip: None,
            geo: Some(Geo {
                lat,
                lon,
                country: Some(*c),
            }),
            counterparty_id: None,
            locale: None,
            currency: Some(self.eur),
        })
    }

    /// A transaction of account `i` (for warming every account up).
    pub fn tx_for(&mut self, i: u32) -> Transaction {
        let mut tx = self.next_tx();
        let home = CITIES[i as usize % CITIES.len()];
        tx.account_id = format!("a-{i}").into();
        tx.device_id = Some(format!("d-{i}-1").into());
        tx.geo = Some(Geo {
            lat: home.0,
            lon: home.1,
            country: Some(*home.2),
        });
        if tx.counterparty_id.as_deref() == Some(tx.account_id.as_str()) {
            tx.counterparty_id = Some("m-0".into());
        }
        tx
    }

    /// The next transaction: a random account, time moving forward ~1 ms per event.
    pub fn next_tx(&mut self) -> Transaction {
        let i = self.rng.random_range(0..self.accounts);
        self.ts_ms += self.rng.random_range(0..3);
        self.next_tx += 1;
        let home = CITIES[i as usize % CITIES.len()];
        let away = self.rng.random_range(0..100) == 0;
        let (lat, lon, c) = if away {
            CITIES[self.rng.random_range(0..CITIES.len())]
        } else {
            home
        };
        let roll = self.rng.random_range(0..100);
        let (kind, cp) = match roll {
            0..=59 => (
                TxKind::Payment,
                format!("m-{}", self.rng.random_range(0..50_000)),
            ),
            60..=84 => (
                TxKind::Transfer,
                format!(
                    "a-{}",
                    (i + 1 + self.rng.random_range(0..self.accounts - 1)) % self.accounts
                ),
            ),
            85..=92 => (TxKind::TopUp, format!("card-{i}")),
            _ => (TxKind::Withdrawal, format!("bank-{i}")),
        };
        let amount_minor = match self.rng.random_range(0..10) {
            0 => self.rng.random_range(50..500),
            1..=7 => self.rng.random_range(500..20_000),
            _ => self.rng.random_range(20_000..300_000),
        };
        let device = if self.rng.random_range(0..20) == 0 {
            2
        } else {
            1
        };
        Transaction {
            tx_id: format!("t-{}", self.next_tx).into(),
            ts_ms: self.ts_ms,
            kind,
            account_id: format!("a-{i}").into(),
            counterparty_id: Some(cp.into()),
            amount_minor,
            currency: self.eur,
            channel: "app".into(),
            device_id: Some(format!("d-{i}-{device}").into()),
            ip: Some(format!("10.{}.{}.{}", i % 250, (i / 250) % 250, device).into()),
            geo: Some(Geo {
                lat: lat + self.rng.random_range(-0.05..0.05),
                lon: lon + self.rng.random_range(-0.05..0.05),
                country: Some(*c),
            }),
            memo: None,
            label: None,
        }
    }
}
