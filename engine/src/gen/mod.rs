//! Deterministic generator of realistic, labeled wallet traffic (`vigil gen`).
//!
//! [`generate`] simulates a population of wallet accounts over a number of days and writes one
//! JSON event per line — transactions and account events as described in DESIGN.md, "Event
//! model" — sorted by `ts`. Fraudulent transactions carry `"is_fraud":true` and a
//! `fraud_scenario`; everything else is `"is_fraud":false`. Account events carry no labels.
//!
//! The same [`GenConfig`] always produces byte-identical output: every random draw comes from a
//! ChaCha8 stream forked from the seed per account and behaviour, nothing iterates a hash map or
//! reads the clock, and the float math that shapes amounts and distances uses only IEEE-exact
//! operations (`detmath`). Money is integer minor units throughout.
//!
//! # How it works
//!
//! 1. **Population** (`population`): each account gets a currency (mostly EUR, some USD and GBP,
//!    a few JPY), a home city among 44 real cities in 27 countries (a few km of jitter), a usual
//!    amount, an activity level, friends, favourite shops, devices, an IP, an age of 0–1500 days
//!    (~3% are opened during the period), a locale (`zh` for ~15%) and its one-off life events.
//! 2. **Plans** (`honest`, `fraud`): behaviours queue *plans* — what somebody attempts, when,
//!    from which device, IP and place — some with balance-dependent amounts ("80% of the
//!    balance").
//! 3. **Simulation** (`sim`): plans run in time order against a ledger of every account. A debit
//!    that would overdraw is not emitted, so no account goes negative; drains take their share
//!    of the tracked balance; transfers credit the receiving account. Lines are written as they
//!    happen, which makes the output sorted by `ts` (ties keep planning order).
//!
//! # Honest behaviour (noise a good rule pack must not block)
//!
//! - `account_opened` (possibly years before the period) followed by an opening `top_up`.
//! - Daily rhythm in the holder's local time (few transactions at night), 0–6 per day, amounts
//!   lognormal around each account's own usual amount; shops near home, some online shops,
//!   channels `app`, `web` (laptop), `pos`; logins before spending; ~2% of payments refunded.
//! - Top-ups from the own card when the wallet runs low.
//! - Salaries: a monthly `top_up` (channel `api`) on a fixed day for ~75% of accounts, many on
//!   the same day; rent: a monthly transfer of a large share of the balance to the same landlord
//!   account on the 1st–3rd.
//! - Trips: ~5% of accounts fly to another city for 2–7 days with a plausible gap (< 800 km/h),
//!   spend there with local IPs, and come back.
//! - VPN / bad geo: ~2% of events come from a different country with nothing else unusual;
//!   `geo` is missing on ~3% of events.
//! - New phones (`new_device` + `login`, sometimes after a `password_reset`), forgotten
//!   passwords, e-mail/phone changes, new payees followed by a transfer (sometimes 8–30× the
//!   usual amount), emptying the wallet to the own bank from the usual phone at home.
//! - Bill splitting: 3–9 friends send the host the same share within a few hours (fan-in).
//!
//! # Fraud scenarios (`fraud_scenario`)
//!
//! - `account_takeover`: credential change from a new device in a far-away country, logins,
//!   1–3 new mule payees, then 1–3 transfers within 5–60 minutes draining 70–100% of the balance.
//! - `card_testing`: 10–40 tiny web payments (0.50–4.99) to different online merchants within
//!   ~10 minutes from a new device, sometimes followed by one bigger payment.
//! - `impossible_travel`: a normal payment at home, then within 10–60 minutes 1–3 payments from
//!   a city 5,000+ km away (only those are labeled).
//! - `amount_anomaly`: one transfer or payment of 15–60× the usual amount (capped by the
//!   balance) to a new payee or merchant, often from a new device.
//! - `mule_fan_in`: a freshly opened account receives transfers from 8–20 accounts within a few
//!   hours (labeled on the payers), then withdraws most of it (labeled too).

mod detmath;
mod fraud;
mod geo;
mod honest;
mod json;
mod model;
mod population;
mod sim;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::io;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenConfig {
    /// Number of wallet accounts in the population (mule accounts come on top).
    pub accounts: u32,
    /// Number of generated days.
    pub days: u32,
    /// Seed; the same config always produces the same bytes.
    pub seed: u64,
    /// Start of the first day (expected at 00:00 UTC).
    pub start: time::OffsetDateTime,
    /// Fraction of accounts hit by a fraud scenario, in `[0, 1]` (default 0.02).
    pub fraud_rate: f64,
}

impl Default for GenConfig {
    /// 1000 accounts, 14 days from 2026-11-01T00:00:00Z, seed 1, fraud rate 0.02.
    fn default() -> Self {
        GenConfig {
            accounts: 1000,
            days: 14,
            seed: 1,
            start: time::macros::datetime!(2026-11-01 0:00 UTC),
            fraud_rate: 0.02,
        }
    }
}

/// Counts of what was written.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GenStats {
    /// Lines written (transactions plus account events).
    pub events: u64,
    /// Transaction lines.
    pub transactions: u64,
    /// Account event lines.
    pub account_events: u64,
    /// Transactions labeled `is_fraud: true`.
    pub fraud_transactions: u64,
    /// Fraud transactions per scenario name; every scenario is listed, possibly with 0.
    pub by_scenario: BTreeMap<String, u64>,
}

impl GenStats {
    fn empty() -> Self {
        let by_scenario = model::Scenario::ALL
            .iter()
            .map(|s| (s.name().to_owned(), 0))
            .collect();
        GenStats {
            by_scenario,
            ..GenStats::default()
        }
    }
}

/// Writes JSON lines sorted by `ts` (stable ties), one event per line. `progress(done, total)`
/// is called now and then with processed and queued plan counts, and once at the end with
/// `done == total`.
///
/// Fails with `InvalidInput` if `fraud_rate` is not within `[0, 1]`, and with the writer's error
/// if writing fails.
pub fn generate(
    cfg: &GenConfig,
    out: &mut dyn io::Write,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<GenStats> {
    if !(0.0..=1.0).contains(&cfg.fraud_rate) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("fraud_rate must be within [0, 1], got {}", cfg.fraud_rate),
        ));
    }
    let start = (cfg.start.unix_timestamp_nanos() / 1_000_000) as i64;
    let ctx = model::Ctx {
        seed: cfg.seed,
        accounts: cfg.accounts,
        days: cfg.days,
        start,
        end: start + i64::from(cfg.days) * model::DAY,
        fraud_rate: cfg.fraud_rate,
    };
    let mut world = population::build(&ctx);
    let mut planner = model::Planner::default();
    honest::plan_all(&ctx, &world, &mut planner);
    fraud::plan_all(&ctx, &mut world, &mut planner);
    sim::run(&ctx, &world, &mut planner, out, progress)
}
