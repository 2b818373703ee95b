//! Honest behaviour: the everyday traffic a good rule pack must let through.
//!
//! Opening and first top-up, daily spending with a day/night rhythm, logins, top-ups when the
//! wallet runs low, salaries and rent, trips, VPN/bad geo, new phones, forgotten passwords,
//! new payees (sometimes paid a lot), emptying the wallet to the own bank, and bill splitting.

use super::detmath::{self, between, chance, minutes, pick};
use super::geo::{self, CITIES};
use super::model::{
    AcctKind, AcctPlan, Amt, Channel, Ctx, DAY, Device, HOUR, MIN, Origin, Party, Planner,
    RefundSpec, Spot, Stream, TxKind, TxPlan, round_to,
};
use super::population::{self, LifeEvent, Profile, Whereabouts, World};
use rand::Rng;

const TRANSFER_MEMOS: [&str; 11] = [
    "dinner",
    "thanks",
    "groceries",
    "gift",
    "tickets",
    "loan",
    "birthday",
    "taxi",
    "coffee",
    "split",
    "holiday",
];
const SPLIT_MEMOS: [&str; 6] = ["dinner", "split", "drinks", "pizza", "bbq", "concert"];

/// Plans every honest event of every population account, then the bill-splitting groups.
pub(crate) fn plan_all(ctx: &Ctx, world: &World, p: &mut Planner) {
    for prof in &world.accounts {
        let mut rng = ctx.rng(Stream::Honest, prof.idx);
        let mut h = Honest {
            ctx,
            world,
            prof,
            p: &mut *p,
        };
        h.opening(&mut rng);
        for day in 0..ctx.days {
            h.monthly(day, &mut rng);
            h.day(day, &mut rng);
        }
        for ev in &prof.life {
            h.life_event(ev, &mut rng);
        }
    }
    plan_bill_splits(ctx, world, p);
}

/// Where an honest holder is at `ts`, as seen by the wallet: `None` while in the air, before the
/// account is active, or outside the period. `vpn` allows the ~2% VPN/bad-geo noise.
pub(crate) fn spot_of(
    ctx: &Ctx,
    world: &World,
    prof: &Profile,
    ts: i64,
    vpn: bool,
    rng: &mut impl Rng,
) -> Option<Spot> {
    if !ctx.in_period(ts) || ts < prof.active_from() {
        return None;
    }
    let here = match prof.whereabouts(ts) {
        Whereabouts::Transit => return None,
        Whereabouts::Home => None,
        Whereabouts::Away(city) => Some(city),
    };
    if vpn && rng.random_range(0..1000u32) < 20 {
        let exit = world.dist.other_country(here.unwrap_or(prof.city), rng);
        return Some(geo::spot_in(exit, rng));
    }
    Some(match here {
        None => {
            let geo = geo::jitter(
                prof.home.lat_e4,
                prof.home.lon_e4,
                60,
                prof.home.country,
                rng,
            );
            let ip = if chance(rng, 70) {
                prof.home_ip
            } else {
                geo::ip_in(prof.city, rng)
            };
            Spot {
                geo: geo::maybe_missing(geo, rng),
                ip,
            }
        }
        Some(city) => geo::spot_in(city, rng),
    })
}

/// Planning context for one honest account.
struct Honest<'a> {
    ctx: &'a Ctx,
    world: &'a World,
    prof: &'a Profile,
    p: &'a mut Planner,
}

impl Honest<'_> {
    fn spot(&self, ts: i64, vpn: bool, rng: &mut impl Rng) -> Option<Spot> {
        spot_of(self.ctx, self.world, self.prof, ts, vpn, rng)
    }

    fn origin(&self, channel: Channel, device: Device, spot: Spot) -> Origin {
        Origin {
            account: self.prof.idx,
            currency: self.prof.currency,
            channel,
            device,
            spot,
        }
    }

    /// App on the phone, or web on the laptop for holders who have one (`web_pct` percent).
    fn app_or_web(&self, ts: i64, web_pct: u32, rng: &mut impl Rng) -> (Channel, Device) {
        match self.prof.laptop() {
            Some(laptop) if chance(rng, web_pct) => (Channel::Web, laptop),
            _ => (Channel::App, self.prof.phone_at(ts)),
        }
    }

    fn event(&mut self, ts: i64, kind: AcctKind, device: Device, spot: Spot) {
        self.p
            .acct(ts, AcctPlan::new(kind, self.prof.idx, device, spot));
    }

    fn login(&mut self, ts: i64, rng: &mut impl Rng) {
        if let Some(spot) = self.spot(ts, true, rng) {
            let device = self.prof.phone_at(ts);
            self.event(ts, AcctKind::Login, device, spot);
        }
    }

    /// `account_opened` then the opening top-up, a few minutes later.
    fn opening(&mut self, rng: &mut impl Rng) {
        let prof = self.prof;
        let device = Device {
            account: prof.idx,
            n: 1,
        };
        let geo = geo::jitter(
            prof.home.lat_e4,
            prof.home.lon_e4,
            60,
            prof.home.country,
            rng,
        );
        let spot = Spot {
            geo: geo::maybe_missing(geo, rng),
            ip: prof.home_ip,
        };
        let mut opened = AcctPlan::new(AcctKind::AccountOpened, prof.idx, device, spot);
        opened.locale = Some(if prof.zh { "zh" } else { "en" });
        opened.currency = Some(prof.currency);
        self.p.acct(prof.opened, opened);
        let ts = prof.opened + minutes(rng, 2, 30);
        let origin = self.origin(Channel::App, device, spot);
        self.p.tx(
            ts,
            TxPlan::new(
                TxKind::TopUp,
                origin,
                Party::Card(prof.idx),
                Amt::Fixed(prof.opening),
            ),
        );
    }

    /// Salary (early morning, bank push through the API) and rent (daytime, same landlord).
    fn monthly(&mut self, day: u32, rng: &mut impl Rng) {
        let dom = self.ctx.day_of_month(day);
        let midnight = self.ctx.local_midnight(day, self.prof.tz_min());
        if let Some(salary) = self.prof.salary.as_ref().filter(|s| s.day == dom) {
            let ts = midnight + between(rng, 5 * HOUR, 8 * HOUR);
            if let Some((ts, spot)) = self.shifted_spot(ts, rng) {
                let origin = self.origin(Channel::Api, self.prof.phone_at(ts), spot);
                let tx = TxPlan::new(
                    TxKind::TopUp,
                    origin,
                    Party::Card(self.prof.idx),
                    Amt::Fixed(salary.amount),
                );
                self.p.tx(ts, tx.memo(Some("salary")));
            }
        }
        if let Some(rent) = self.prof.rent.as_ref().filter(|r| r.day == dom) {
            let ts = midnight + between(rng, 8 * HOUR, 21 * HOUR);
            if let Some((ts, spot)) = self.shifted_spot(ts, rng) {
                let (channel, device) = self.app_or_web(ts, 40, rng);
                let origin = self.origin(channel, device, spot);
                let tx = TxPlan::new(
                    TxKind::Transfer,
                    origin,
                    Party::Account(rent.landlord),
                    Amt::Fixed(rent.amount),
                );
                self.p.tx(ts, tx.memo(Some("rent")));
            }
        }
    }

    /// A spot at `ts`, or a couple of hours later if the holder is in the air.
    fn shifted_spot(&self, ts: i64, rng: &mut impl Rng) -> Option<(i64, Spot)> {
        (0..6)
            .map(|i| ts + i * 2 * HOUR)
            .find_map(|t| self.spot(t, false, rng).map(|s| (t, s)))
    }

    /// 0–6 transactions with the daily rhythm, a login before the first, sometimes a login
    /// without spending, and a top-up when the wallet runs low.
    fn day(&mut self, day: u32, rng: &mut impl Rng) {
        let prof = self.prof;
        let weekend = matches!(self.ctx.weekday(day), 0 | 6);
        let lambda = if weekend {
            prof.activity * 1.15
        } else {
            prof.activity
        };
        let n = detmath::poisson(rng, lambda).min(6);
        let mut times: Vec<i64> = (0..n)
            .map(|_| population::local_time(self.ctx, day, prof.tz_min(), rng))
            .collect();
        times.sort_unstable();
        if let Some(&first) = times.first()
            && chance(rng, 80)
        {
            self.login(first - minutes(rng, 1, 15), rng);
        }
        for ts in times {
            self.everyday_tx(ts, rng);
        }
        if chance(rng, 25) {
            let ts = population::local_time(self.ctx, day, prof.tz_min(), rng);
            self.login(ts, rng);
        }
        if chance(rng, 40) {
            let ts = population::local_time(self.ctx, day, prof.tz_min(), rng);
            self.top_up_if_low(ts, rng);
        }
    }

    fn top_up_if_low(&mut self, ts: i64, rng: &mut impl Rng) {
        let Some(spot) = self.spot(ts, true, rng) else {
            return;
        };
        let prof = self.prof;
        let minor = round_to(prof.usual * between(rng, 15, 40), prof.currency.unit() * 10);
        let amount = Amt::TopUpIfBelow {
            threshold: prof.usual * 10,
            minor,
        };
        let origin = self.origin(Channel::App, prof.phone_at(ts), spot);
        self.p.tx(
            ts,
            TxPlan::new(TxKind::TopUp, origin, Party::Card(prof.idx), amount),
        );
    }

    fn everyday_tx(&mut self, ts: i64, rng: &mut impl Rng) {
        let Some(spot) = self.spot(ts, true, rng) else {
            return;
        };
        match rng.random_range(0..100u32) {
            0..74 => self.payment(ts, spot, rng),
            74..95 => self.friend_transfer(ts, spot, rng),
            _ => self.small_withdrawal(ts, spot, rng),
        }
    }

    /// A shop near home (or at the trip destination), or an online shop; ~2% get refunded.
    fn payment(&mut self, ts: i64, spot: Spot, rng: &mut impl Rng) {
        let prof = self.prof;
        let online = chance(rng, prof.online_pct);
        let (merchant, channel, device) = if online {
            let (channel, device) = self.app_or_web(ts, 60, rng);
            (geo::online_merchant(rng), channel, device)
        } else {
            let merchant = match prof.whereabouts(ts) {
                Whereabouts::Away(city) => geo::city_merchant(city, rng),
                _ if chance(rng, 85) => prof.merchants[pick(rng, prof.merchants.len())],
                _ => geo::city_merchant(prof.city, rng),
            };
            let channel = if chance(rng, prof.pos_pct) {
                Channel::Pos
            } else {
                Channel::App
            };
            (merchant, channel, prof.phone_at(ts))
        };
        let amount = detmath::lognormal(rng, prof.usual, prof.sigma).max(50);
        let mut tx = TxPlan::new(
            TxKind::Payment,
            self.origin(channel, device, spot),
            Party::Merchant(merchant),
            Amt::Fixed(amount),
        );
        if rng.random_range(0..1000u32) < 20 {
            let pm = if chance(rng, 70) {
                1000
            } else {
                between(rng, 200, 900)
            };
            tx.refund = Some(RefundSpec {
                delay: between(rng, HOUR, 5 * DAY),
                pm,
            });
        }
        self.p.tx(ts, tx);
    }

    fn friend_transfer(&mut self, ts: i64, spot: Spot, rng: &mut impl Rng) {
        let prof = self.prof;
        if prof.friends.is_empty() {
            return self.payment(ts, spot, rng);
        }
        let friend = prof.friends[pick(rng, prof.friends.len())];
        let step = if chance(rng, 60) {
            prof.currency.unit()
        } else {
            prof.currency.unit() * 5
        };
        let amount = round_to(
            detmath::lognormal(rng, prof.usual * 3 / 2, prof.sigma),
            step,
        );
        let memo = chance(rng, 50).then(|| TRANSFER_MEMOS[pick(rng, TRANSFER_MEMOS.len())]);
        let (channel, device) = self.app_or_web(ts, 15, rng);
        let tx = TxPlan::new(
            TxKind::Transfer,
            self.origin(channel, device, spot),
            Party::Account(friend),
            Amt::Fixed(amount),
        );
        self.p.tx(ts, tx.memo(memo));
    }

    fn small_withdrawal(&mut self, ts: i64, spot: Spot, rng: &mut impl Rng) {
        let prof = self.prof;
        let amount = round_to(prof.usual * between(rng, 3, 10), prof.currency.unit() * 10);
        let (channel, device) = self.app_or_web(ts, 30, rng);
        let tx = TxPlan::new(
            TxKind::Withdrawal,
            self.origin(channel, device, spot),
            Party::Bank(prof.idx),
            Amt::Fixed(amount),
        );
        self.p.tx(ts, tx);
    }

    fn life_event(&mut self, ev: &LifeEvent, rng: &mut impl Rng) {
        match *ev {
            LifeEvent::NewPhone {
                at,
                device,
                with_reset,
            } => self.new_phone(at, device, with_reset, rng),
            LifeEvent::PasswordReset { at } => self.forgot_password(at, rng),
            LifeEvent::ContactChanged { at, kind } => self.contact_changed(at, kind, rng),
            LifeEvent::NewPayee {
                at,
                payee,
                delay,
                large,
            } => self.new_payee(at, payee, delay, large, rng),
            LifeEvent::EmptyWallet { at, pm } => self.empty_wallet(at, pm, rng),
        }
    }

    /// `new_device` + `login` (after a `password_reset` when the old phone was lost); ordinary
    /// spending then continues from the new device (see `Profile::phone_at`).
    fn new_phone(&mut self, at: i64, device: Device, with_reset: bool, rng: &mut impl Rng) {
        let Some(spot) = self.spot(at, false, rng) else {
            return;
        };
        let mut ts = at;
        if with_reset {
            self.event(ts, AcctKind::PasswordReset, device, spot);
            ts += minutes(rng, 1, 5);
        }
        self.event(ts, AcctKind::NewDevice, device, spot);
        self.event(ts + minutes(rng, 0, 2), AcctKind::Login, device, spot);
    }

    fn forgot_password(&mut self, at: i64, rng: &mut impl Rng) {
        let Some(spot) = self.spot(at, false, rng) else {
            return;
        };
        let device = self.prof.phone_at(at);
        self.event(at, AcctKind::PasswordReset, device, spot);
        self.event(at + minutes(rng, 1, 6), AcctKind::Login, device, spot);
    }

    fn contact_changed(&mut self, at: i64, kind: AcctKind, rng: &mut impl Rng) {
        let Some(spot) = self.spot(at, false, rng) else {
            return;
        };
        let device = self.prof.phone_at(at);
        self.event(at - minutes(rng, 1, 10), AcctKind::Login, device, spot);
        self.event(at, kind, device, spot);
    }

    /// `payee_added`, then a transfer to that payee — sometimes 8–30× the usual amount.
    fn new_payee(&mut self, at: i64, payee: u32, delay: i64, large: bool, rng: &mut impl Rng) {
        let prof = self.prof;
        let Some(spot) = self.spot(at, false, rng) else {
            return;
        };
        let device = prof.phone_at(at);
        let mut ev = AcctPlan::new(AcctKind::PayeeAdded, prof.idx, device, spot);
        ev.counterparty = Some(Party::Account(payee));
        self.p.acct(at, ev);
        let ts = at + delay;
        let Some(spot) = self.spot(ts, true, rng) else {
            return;
        };
        let amount = if large {
            let minor = round_to(prof.usual * between(rng, 8, 30), prof.currency.unit() * 10);
            Amt::Capped { minor, cap_pm: 950 }
        } else {
            Amt::Fixed(round_to(
                detmath::lognormal(rng, prof.usual * 2, prof.sigma),
                prof.currency.unit(),
            ))
        };
        let (channel, device) = self.app_or_web(ts, 20, rng);
        let tx = TxPlan::new(
            TxKind::Transfer,
            self.origin(channel, device, spot),
            Party::Account(payee),
            amount,
        );
        self.p.tx(ts, tx);
    }

    /// Most of the balance to the own bank, from the usual phone, at home.
    fn empty_wallet(&mut self, at: i64, pm: i64, rng: &mut impl Rng) {
        let prof = self.prof;
        if prof.whereabouts(at) != Whereabouts::Home {
            return;
        }
        let Some(spot) = self.spot(at, false, rng) else {
            return;
        };
        let origin = self.origin(Channel::App, prof.phone_at(at), spot);
        let amount = Amt::Share {
            pm,
            step: if chance(rng, 50) {
                prof.currency.unit()
            } else {
                1
            },
        };
        self.p.tx(
            at,
            TxPlan::new(TxKind::Withdrawal, origin, Party::Bank(prof.idx), amount),
        );
    }
}

/// Groups of 4–10 friends in one city: after dinner everyone but the host sends the host the
/// same share within a few hours (honest fan-in).
fn plan_bill_splits(ctx: &Ctx, world: &World, p: &mut Planner) {
    if world.accounts.is_empty() {
        return;
    }
    let mut rng = ctx.rng(Stream::Splits, 0);
    let groups = u64::from(ctx.accounts) * u64::from(ctx.days) / 400;
    for _ in 0..groups {
        bill_split(ctx, world, p, &mut rng);
    }
}

fn bill_split(ctx: &Ctx, world: &World, p: &mut Planner, rng: &mut impl Rng) {
    let host = &world.accounts[pick(rng, world.accounts.len())];
    let local = &world.by_city[host.city];
    let pool = if local.len() >= 4 {
        local
    } else {
        &world.by_currency[host.currency.index()]
    };
    if pool.len() < 4 {
        return;
    }
    let size = between(rng, 4, 10).min(pool.len() as i64) as usize;
    let mut members: Vec<u32> = Vec::with_capacity(size);
    for _ in 0..size * 4 {
        if members.len() + 1 >= size {
            break;
        }
        let m = pool[pick(rng, pool.len())];
        if m != host.idx && !members.contains(&m) {
            members.push(m);
        }
    }
    let day = rng.random_range(0..ctx.days);
    let dinner_end =
        ctx.local_midnight(day, CITIES[host.city].tz_min) + between(rng, 21 * HOUR, 23 * HOUR);
    let eur_cents = between(rng, 1500, 6000);
    let step = if chance(rng, 50) { 100 } else { 10 };
    let share = round_to(host.currency.minor_of_eur_cents(eur_cents), step);
    let memo = chance(rng, 70).then(|| SPLIT_MEMOS[pick(rng, SPLIT_MEMOS.len())]);
    for m in members {
        let prof = &world.accounts[m as usize];
        let ts = dinner_end + between(rng, 5 * MIN, 4 * HOUR);
        let Some(spot) = spot_of(ctx, world, prof, ts, true, rng) else {
            continue;
        };
        let origin = Origin {
            account: m,
            currency: prof.currency,
            channel: Channel::App,
            device: prof.phone_at(ts),
            spot,
        };
        let tx = TxPlan::new(
            TxKind::Transfer,
            origin,
            Party::Account(host.idx),
            Amt::Fixed(share),
        );
        p.tx(ts, tx.memo(memo));
    }
}
