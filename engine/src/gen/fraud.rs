//! Fraud scenarios. Each hit account gets one scenario; only the fraudulent transactions carry
//! `is_fraud: true` and the scenario name, the surrounding account events are unlabeled.
//!
//! About `fraud_rate × accounts` population accounts are hit: one `mule_fan_in` incident per ~40
//! hit accounts (its 8–20 payers count as hit), the rest spread over `account_takeover`,
//! `card_testing`, `amount_anomaly` and `impossible_travel`. Victims are established accounts
//! that are not travelling, so that every signal in a scenario is the fraudster's.

use super::detmath::{self, between, chance, minutes, pick, shuffle};
use super::geo;
use super::model::{
    AcctKind, AcctPlan, Amt, Channel, Ctx, Currency, DAY, Device, HOUR, MIN, Origin, Party,
    Planner, Scenario, Spot, Stream, TxKind, TxPlan, round_to,
};
use super::population::World;
use rand::Rng;

/// Order in which single-victim scenarios are handed out (weights ATO 3, card 3, anomaly 3,
/// travel 2 per 11).
const SINGLE_PATTERN: [Scenario; 11] = [
    Scenario::AccountTakeover,
    Scenario::CardTesting,
    Scenario::AmountAnomaly,
    Scenario::ImpossibleTravel,
    Scenario::AccountTakeover,
    Scenario::AmountAnomaly,
    Scenario::CardTesting,
    Scenario::AccountTakeover,
    Scenario::ImpossibleTravel,
    Scenario::CardTesting,
    Scenario::AmountAnomaly,
];
const ATO_MEMOS: [&str; 4] = ["invoice", "payment", "loan repayment", "urgent"];
const MULE_MEMOS: [&str; 5] = ["invoice", "deposit", "order", "investment", "refund"];

/// Picks victims and plans all fraud scenarios.
pub(crate) fn plan_all(ctx: &Ctx, world: &mut World, p: &mut Planner) {
    let budget = (f64::from(ctx.accounts) * ctx.fraud_rate).round() as usize;
    if budget == 0 || ctx.days == 0 {
        return;
    }
    let mut rng = ctx.rng(Stream::Fraud, 0);
    let mut pool: Vec<u32> = world
        .accounts
        .iter()
        .filter(|a| !a.fresh && a.trip.is_none())
        .map(|a| a.idx)
        .collect();
    shuffle(&mut pool, &mut rng);
    let fan_ins = match budget {
        0..12 => 0,
        12..40 => 1,
        _ => budget / 40,
    };
    let max_payers = (budget as i64 / 2).clamp(8, 20);
    let mut f = Fraud { ctx, world, p, rng };
    let mut hit = 0;
    for _ in 0..fan_ins {
        hit += f.mule_fan_in(&mut pool, max_payers);
    }
    for i in 0..budget.saturating_sub(hit) {
        let Some(victim) = pool.pop() else { break };
        match SINGLE_PATTERN[i % SINGLE_PATTERN.len()] {
            Scenario::AccountTakeover => f.account_takeover(victim),
            Scenario::CardTesting => f.card_testing(victim),
            Scenario::ImpossibleTravel => f.impossible_travel(victim),
            Scenario::AmountAnomaly => f.amount_anomaly(victim),
            Scenario::MuleFanIn => {}
        }
    }
}

/// Planning context for fraud.
struct Fraud<'a, R: Rng> {
    ctx: &'a Ctx,
    world: &'a mut World,
    p: &'a mut Planner,
    rng: R,
}

impl<R: Rng> Fraud<'_, R> {
    /// A start time when the victim is established: not in the first 6 hours of the period and
    /// leaving time for the scenario to finish.
    fn incident_time(&mut self, victim: u32) -> Option<i64> {
        let ctx = self.ctx;
        let active = self.world.accounts[victim as usize].active_from();
        let (lo, hi) = if ctx.days >= 2 {
            ((ctx.start + 6 * HOUR).max(active + DAY), ctx.end - 4 * HOUR)
        } else {
            ((ctx.start + HOUR).max(active + HOUR), ctx.end - 2 * HOUR)
        };
        (lo < hi).then(|| self.rng.random_range(lo..hi))
    }

    fn event(&mut self, ts: i64, kind: AcctKind, account: u32, device: Device, spot: Spot) {
        self.p.acct(ts, AcctPlan::new(kind, account, device, spot));
    }

    /// The victim's own phone at home (for the honest-looking parts of a scenario).
    fn home_spot(&mut self, victim: u32, ts: i64) -> (Device, Spot) {
        let prof = &self.world.accounts[victim as usize];
        let geo = geo::jitter(
            prof.home.lat_e4,
            prof.home.lon_e4,
            60,
            prof.home.country,
            &mut self.rng,
        );
        let spot = Spot {
            geo: geo::maybe_missing(geo, &mut self.rng),
            ip: prof.home_ip,
        };
        (prof.phone_at(ts), spot)
    }

    fn origin(&self, account: u32, channel: Channel, device: Device, spot: Spot) -> Origin {
        Origin {
            account,
            currency: self.world.currency_of(account),
            channel,
            device,
            spot,
        }
    }

    /// A new device of the victim logging in (`new_device` then `login`) just before `ts`.
    fn fraudster_login(&mut self, victim: u32, ts: i64, spot: Spot) -> Device {
        let device = self.world.accounts[victim as usize].alloc_device();
        let t = ts - minutes(&mut self.rng, 2, 8);
        self.event(t, AcctKind::NewDevice, victim, device, spot);
        let login = t + minutes(&mut self.rng, 0, 1);
        self.event(login, AcctKind::Login, victim, device, spot);
        device
    }

    /// A mule account in `currency`'s home cities; sometimes opened shortly before `before`.
    fn new_mule(&mut self, currency: Currency, before: i64, opened: bool) -> u32 {
        let city = geo::home_city(currency, &mut self.rng);
        let mule = self.world.add_extra(currency, city, &mut self.rng);
        if opened {
            let at = before - between(&mut self.rng, 2 * HOUR, 10 * DAY);
            self.open_extra(mule, at);
        }
        mule
    }

    /// `account_opened` + opening top-up for an extra account.
    fn open_extra(&mut self, mule: u32, at: i64) {
        let extra = self.world.extra(mule).clone();
        let device = Device {
            account: mule,
            n: 1,
        };
        let spot = Spot {
            geo: geo::maybe_missing(extra.home, &mut self.rng),
            ip: extra.ip,
        };
        let mut ev = AcctPlan::new(AcctKind::AccountOpened, mule, device, spot);
        ev.locale = Some(if chance(&mut self.rng, 15) {
            "zh"
        } else {
            "en"
        });
        ev.currency = Some(extra.currency);
        self.p.acct(at, ev);
        let minor = round_to(
            extra
                .currency
                .minor_of_eur_cents(between(&mut self.rng, 500, 3000)),
            100,
        );
        let origin = self.origin(mule, Channel::App, device, spot);
        let ts = at + minutes(&mut self.rng, 2, 30);
        self.p.tx(
            ts,
            TxPlan::new(TxKind::TopUp, origin, Party::Card(mule), Amt::Fixed(minor)),
        );
    }

    /// Credential change from a new device in a far-away country, logins, 1–3 new mule payees,
    /// then 1–3 transfers within 5–60 minutes draining 70–100% of the balance.
    fn account_takeover(&mut self, victim: u32) {
        let Some(t0) = self.incident_time(victim) else {
            return;
        };
        let (home, currency) = {
            let prof = &self.world.accounts[victim as usize];
            (prof.city, prof.currency)
        };
        let far = self.world.dist.far_city(home, 3000, &mut self.rng);
        let spot = geo::spot_in(far, &mut self.rng);
        let device = self.world.accounts[victim as usize].alloc_device();
        let cred = match self.rng.random_range(0..10u32) {
            0..5 => AcctKind::PasswordReset,
            5..8 => AcctKind::EmailChanged,
            _ => AcctKind::PhoneChanged,
        };
        self.event(t0, cred, victim, device, spot);
        let mut t = t0 + minutes(&mut self.rng, 1, 3);
        self.event(t, AcctKind::NewDevice, victim, device, spot);
        t += minutes(&mut self.rng, 0, 1);
        self.event(t, AcctKind::Login, victim, device, spot);
        if cred == AcctKind::PasswordReset && chance(&mut self.rng, 40) {
            t += minutes(&mut self.rng, 1, 3);
            self.event(t, AcctKind::EmailChanged, victim, device, spot);
        }
        let k = between(&mut self.rng, 1, 3) as usize;
        let mut payees = Vec::with_capacity(k);
        for _ in 0..k {
            let opened = chance(&mut self.rng, 40);
            let mule = self.new_mule(currency, t0, opened);
            t += minutes(&mut self.rng, 1, 2);
            let mut ev = AcctPlan::new(AcctKind::PayeeAdded, victim, device, spot);
            ev.counterparty = Some(Party::Account(mule));
            self.p.acct(t, ev);
            payees.push(mule);
        }
        let earliest = (t0 + 5 * MIN).max(t + MIN);
        let mut times: Vec<i64> = (0..k)
            .map(|_| between(&mut self.rng, earliest, t0 + 60 * MIN))
            .collect();
        times.sort_unstable();
        let shares = drain_shares(between(&mut self.rng, 700, 1000), k, &mut self.rng);
        let channel = match self.rng.random_range(0..20u32) {
            0..10 => Channel::App,
            10..17 => Channel::Web,
            _ => Channel::Api,
        };
        for ((ts, mule), pm) in times.into_iter().zip(payees).zip(shares) {
            let step = if chance(&mut self.rng, 50) {
                currency.unit()
            } else {
                1
            };
            let origin = self.origin(victim, channel, device, spot);
            let memo =
                chance(&mut self.rng, 30).then(|| ATO_MEMOS[pick(&mut self.rng, ATO_MEMOS.len())]);
            let tx = TxPlan::new(
                TxKind::Transfer,
                origin,
                Party::Account(mule),
                Amt::Share { pm, step },
            );
            self.p
                .tx(ts, tx.memo(memo).fraud(Scenario::AccountTakeover));
        }
    }

    /// 10–40 tiny web payments to different online merchants within ~10 minutes from a new
    /// device, sometimes followed by one bigger payment.
    fn card_testing(&mut self, victim: u32) {
        let Some(t0) = self.incident_time(victim) else {
            return;
        };
        let (home, usual) = {
            let prof = &self.world.accounts[victim as usize];
            (prof.city, prof.usual)
        };
        let city = self.world.dist.elsewhere(home, 0, &mut self.rng);
        let spot = geo::spot_in(city, &mut self.rng);
        let device = if chance(&mut self.rng, 70) {
            self.fraudster_login(victim, t0, spot)
        } else {
            self.world.accounts[victim as usize].alloc_device()
        };
        let n = between(&mut self.rng, 10, 40) as usize;
        let mut merchants: Vec<u32> = Vec::with_capacity(n);
        while merchants.len() < n {
            let m = geo::online_merchant(&mut self.rng);
            if !merchants.contains(&m) {
                merchants.push(m);
            }
        }
        let mut times: Vec<i64> = (0..n)
            .map(|_| t0 + between(&mut self.rng, 0, 10 * MIN))
            .collect();
        times.sort_unstable();
        let last = times.last().copied().unwrap_or(t0);
        for (ts, m) in times.into_iter().zip(merchants) {
            let amount = Amt::Fixed(between(&mut self.rng, 50, 499));
            let origin = self.origin(victim, Channel::Web, device, spot);
            let tx = TxPlan::new(TxKind::Payment, origin, Party::Merchant(m), amount);
            self.p.tx(ts, tx.fraud(Scenario::CardTesting));
        }
        if chance(&mut self.rng, 40) {
            let minor = round_to(usual * between(&mut self.rng, 5, 20), 100);
            let origin = self.origin(victim, Channel::Web, device, spot);
            let merchant = Party::Merchant(geo::online_merchant(&mut self.rng));
            let tx = TxPlan::new(
                TxKind::Payment,
                origin,
                merchant,
                Amt::Capped { minor, cap_pm: 900 },
            );
            self.p.tx(
                last + minutes(&mut self.rng, 1, 5),
                tx.fraud(Scenario::CardTesting),
            );
        }
    }

    /// A normal payment at home, then within 10–60 minutes 1–3 payments from a city 5,000+ km
    /// away with cloned credentials (only the far ones are labeled).
    fn impossible_travel(&mut self, victim: u32) {
        let Some(t0) = self.incident_time(victim) else {
            return;
        };
        let (home, usual, sigma, merchant) = {
            let prof = &self.world.accounts[victim as usize];
            let m = prof.merchants[pick(&mut self.rng, prof.merchants.len())];
            (prof.city, prof.usual, prof.sigma, m)
        };
        let (phone, home_spot) = self.home_spot(victim, t0);
        let amount = Amt::Fixed(detmath::lognormal(&mut self.rng, usual, sigma).max(50));
        let origin = self.origin(victim, Channel::Pos, phone, home_spot);
        self.p.tx(
            t0,
            TxPlan::new(TxKind::Payment, origin, Party::Merchant(merchant), amount),
        );

        let far = self.world.dist.far_city(home, 5000, &mut self.rng);
        let spot = geo::spot_in(far, &mut self.rng);
        let mut ts = t0 + minutes(&mut self.rng, 10, 60);
        let device = if chance(&mut self.rng, 70) {
            let d = self.world.accounts[victim as usize].alloc_device();
            if chance(&mut self.rng, 40) {
                let login = ts - minutes(&mut self.rng, 1, 3);
                self.event(login, AcctKind::Login, victim, d, spot);
            }
            d
        } else {
            phone
        };
        for _ in 0..between(&mut self.rng, 1, 3) {
            let (merchant, channel) = if chance(&mut self.rng, 30) {
                (geo::online_merchant(&mut self.rng), Channel::Web)
            } else {
                let ch = if chance(&mut self.rng, 50) {
                    Channel::Pos
                } else {
                    Channel::App
                };
                (geo::city_merchant(far, &mut self.rng), ch)
            };
            let minor = detmath::lognormal(&mut self.rng, usual * 2, sigma).max(100);
            let origin = self.origin(victim, channel, device, spot);
            let tx = TxPlan::new(
                TxKind::Payment,
                origin,
                Party::Merchant(merchant),
                Amt::Capped { minor, cap_pm: 900 },
            );
            self.p.tx(ts, tx.fraud(Scenario::ImpossibleTravel));
            ts += minutes(&mut self.rng, 1, 10);
        }
    }

    /// One transfer or payment 15–60× the usual amount (capped by the balance) to a new payee
    /// or merchant, often from a new device.
    fn amount_anomaly(&mut self, victim: u32) {
        let Some(t0) = self.incident_time(victim) else {
            return;
        };
        let (home, usual, currency) = {
            let prof = &self.world.accounts[victim as usize];
            (prof.city, prof.usual, prof.currency)
        };
        let (device, spot) = if chance(&mut self.rng, 60) {
            let spot = match self.world.dist.same_country(home, &mut self.rng) {
                Some(city) if chance(&mut self.rng, 50) => geo::spot_in(city, &mut self.rng),
                _ => self.home_spot(victim, t0).1,
            };
            (self.fraudster_login(victim, t0, spot), spot)
        } else {
            self.home_spot(victim, t0)
        };
        let minor = usual * between(&mut self.rng, 15, 60);
        let amount = Amt::Capped {
            minor: round_to(minor, currency.unit()),
            cap_pm: 1000,
        };
        let channel = if chance(&mut self.rng, 70) {
            Channel::App
        } else {
            Channel::Web
        };
        let origin = self.origin(victim, channel, device, spot);
        let tx = if chance(&mut self.rng, 50) {
            let opened = chance(&mut self.rng, 30);
            let mule = self.new_mule(currency, t0, opened);
            if chance(&mut self.rng, 70) {
                let mut ev = AcctPlan::new(AcctKind::PayeeAdded, victim, device, spot);
                ev.counterparty = Some(Party::Account(mule));
                self.p.acct(t0 - minutes(&mut self.rng, 1, 20), ev);
            }
            TxPlan::new(TxKind::Transfer, origin, Party::Account(mule), amount)
        } else {
            let merchant = Party::Merchant(geo::online_merchant(&mut self.rng));
            TxPlan::new(TxKind::Payment, origin, merchant, amount)
        };
        self.p.tx(t0, tx.fraud(Scenario::AmountAnomaly));
    }

    /// A freshly opened mule receives transfers from 8–20 compromised or scammed accounts
    /// within a few hours, then withdraws most of it. Returns the number of payers hit.
    fn mule_fan_in(&mut self, pool: &mut Vec<u32>, max_payers: i64) -> usize {
        let ctx = self.ctx;
        let Some(&first) = pool.last() else { return 0 };
        let currency = self.world.currency_of(first);
        let candidates: Vec<u32> = pool
            .iter()
            .rev()
            .copied()
            .filter(|&a| self.world.currency_of(a) == currency)
            .collect();
        if candidates.len() < 8 {
            return 0;
        }
        let k = (between(&mut self.rng, 8, max_payers) as usize).min(candidates.len());
        let payers = &candidates[..k];
        pool.retain(|a| !payers.contains(a));

        let latest_open = (ctx.end - 22 * HOUR).max(ctx.start + HOUR);
        let opened = between(&mut self.rng, ctx.start, latest_open);
        let t1 = between(
            &mut self.rng,
            opened + 2 * HOUR,
            (opened + 3 * DAY).min(ctx.end - 10 * HOUR),
        );
        let city = geo::home_city(currency, &mut self.rng);
        let mule = self.world.add_extra(currency, city, &mut self.rng);
        self.open_extra(mule, opened);

        let mut last = t1;
        for &payer in payers {
            let ts = t1 + between(&mut self.rng, 0, 4 * HOUR);
            last = last.max(ts);
            self.fan_in_transfer(payer, mule, city, ts);
        }
        let cash_out = last + between(&mut self.rng, 30 * MIN, 6 * HOUR);
        self.mule_cash_out(mule, cash_out);
        k
    }

    /// One payer's transfer to the mule: either the fraudster on a new device near the mule, or
    /// the scammed holder on their own phone at home.
    fn fan_in_transfer(&mut self, payer: u32, mule: u32, mule_city: usize, ts: i64) {
        let (device, spot) = if chance(&mut self.rng, 55) {
            let spot = geo::spot_in(mule_city, &mut self.rng);
            (self.fraudster_login(payer, ts, spot), spot)
        } else {
            self.home_spot(payer, ts)
        };
        if chance(&mut self.rng, 60) {
            let mut ev = AcctPlan::new(AcctKind::PayeeAdded, payer, device, spot);
            ev.counterparty = Some(Party::Account(mule));
            self.p.acct(ts - minutes(&mut self.rng, 1, 3), ev);
        }
        let currency = self.world.currency_of(payer);
        let minor = round_to(
            currency.minor_of_eur_cents(between(&mut self.rng, 100, 1500) * 100),
            1000,
        );
        let channel = if chance(&mut self.rng, 70) {
            Channel::App
        } else {
            Channel::Web
        };
        let origin = self.origin(payer, channel, device, spot);
        let memo =
            chance(&mut self.rng, 40).then(|| MULE_MEMOS[pick(&mut self.rng, MULE_MEMOS.len())]);
        let tx = TxPlan::new(
            TxKind::Transfer,
            origin,
            Party::Account(mule),
            Amt::Capped { minor, cap_pm: 950 },
        );
        self.p.tx(ts, tx.memo(memo).fraud(Scenario::MuleFanIn));
    }

    /// The mule logs in and withdraws 85–100% of the balance to its bank (labeled).
    fn mule_cash_out(&mut self, mule: u32, ts: i64) {
        let extra = self.world.extra(mule).clone();
        let device = Device {
            account: mule,
            n: 1,
        };
        let spot = Spot {
            geo: geo::maybe_missing(extra.home, &mut self.rng),
            ip: extra.ip,
        };
        let login = ts - minutes(&mut self.rng, 1, 5);
        self.event(login, AcctKind::Login, mule, device, spot);
        let pm = between(&mut self.rng, 850, 1000);
        let origin = self.origin(mule, Channel::App, device, spot);
        let tx = TxPlan::new(
            TxKind::Withdrawal,
            origin,
            Party::Bank(mule),
            Amt::Share { pm, step: 100 },
        );
        self.p.tx(ts, tx.fraud(Scenario::MuleFanIn));
    }
}

/// Splits a total drain of `total_pm` per mille of the starting balance into `k` transfers,
/// each expressed as per mille of the balance left at that point.
fn drain_shares(total_pm: i64, k: usize, rng: &mut impl Rng) -> Vec<i64> {
    let mut left_of_start = 1000;
    let mut to_drain = total_pm;
    let mut out = Vec::with_capacity(k);
    for i in 0..k {
        let portion = if i + 1 == k {
            to_drain
        } else {
            to_drain * between(rng, 25, 60) / 100
        };
        out.push((portion * 1000 / left_of_start.max(1)).clamp(1, 1000));
        left_of_start -= portion;
        to_drain -= portion;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn drain_shares_add_up_to_the_total() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
        for k in 1..=3 {
            for total in [700, 850, 1000] {
                let shares = drain_shares(total, k, &mut rng);
                assert_eq!(shares.len(), k);
                let mut balance = 1_000_000i64;
                for pm in &shares {
                    balance -= balance * pm / 1000;
                }
                let drained = 1_000_000 - balance;
                assert!(
                    (drained - total * 1000).abs() <= 2_000,
                    "k={k} total={total} {shares:?}"
                );
            }
        }
    }
}
