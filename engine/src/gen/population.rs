//! The account population: where each holder lives, what they earn and usually spend, whom
//! they pay, and which one-off honest events (a trip, a new phone, a forgotten password, a new
//! payee, emptying the wallet) happen to them during the period.

use super::detmath::{self, between, chance, minutes, pick, weighted};
use super::geo::{self, CITIES, CITY_MERCHANTS, CN_CITIES, Dist};
use super::model::{AcctKind, Ctx, Currency, DAY, Device, Geo, HOUR, Ip, MIN, Stream, round_to};
use rand::Rng;

/// Relative activity by local hour of day: quiet nights, lunch and evening peaks.
pub(crate) const HOUR_WEIGHTS: [u32; 24] = [
    10, 5, 3, 2, 2, 4, 12, 25, 35, 40, 40, 45, 60, 55, 45, 45, 50, 60, 70, 70, 60, 45, 30, 20,
];

/// Salary days of month with weights (many people are paid on the same day).
const SALARY_DAYS: [(u32, u32); 6] = [(1, 20), (5, 8), (10, 10), (15, 17), (25, 30), (28, 15)];
/// Rent days of month with weights.
const RENT_DAYS: [(u32, u32); 3] = [(1, 60), (2, 25), (3, 15)];
/// Currency mix of the wallet's accounts (EUR, USD, GBP, JPY).
const CURRENCY_WEIGHTS: [u32; 4] = [70, 15, 10, 5];

/// Monthly salary paid in as a top-up.
#[derive(Debug, Clone)]
pub(crate) struct Salary {
    pub day: u32,
    pub amount: i64,
}

/// Monthly rent transferred to the same landlord account.
#[derive(Debug, Clone)]
pub(crate) struct Rent {
    pub day: u32,
    pub landlord: u32,
    pub amount: i64,
}

/// A round trip to another city.
#[derive(Debug, Clone)]
pub(crate) struct Trip {
    pub dest: usize,
    pub depart: i64,
    pub arrive: i64,
    pub back_depart: i64,
    pub back_arrive: i64,
}

/// Where an account holder is at some instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Whereabouts {
    Home,
    Away(usize),
    Transit,
}

/// One-off honest events that look a bit like fraud signals.
#[derive(Debug, Clone)]
pub(crate) enum LifeEvent {
    /// A new phone (sometimes with a password reset because the old one was lost).
    NewPhone {
        at: i64,
        device: Device,
        with_reset: bool,
    },
    /// Forgot the password.
    PasswordReset { at: i64 },
    /// Changed e-mail address or phone number.
    ContactChanged { at: i64, kind: AcctKind },
    /// Added a payee and then paid them (sometimes a lot).
    NewPayee {
        at: i64,
        payee: u32,
        delay: i64,
        large: bool,
    },
    /// Moved most of the wallet to the own bank account.
    EmptyWallet { at: i64, pm: i64 },
}

/// A population account.
#[derive(Debug, Clone)]
pub(crate) struct Profile {
    pub idx: u32,
    pub currency: Currency,
    pub city: usize,
    pub home: Geo,
    pub zh: bool,
    pub opened: i64,
    pub fresh: bool,
    /// Typical spend in minor units (the lognormal median).
    pub usual: i64,
    pub sigma: f64,
    /// Expected transactions per day.
    pub activity: f64,
    pub online_pct: u32,
    pub pos_pct: u32,
    pub salary: Option<Salary>,
    pub rent: Option<Rent>,
    pub opening: i64,
    pub friends: Vec<u32>,
    pub merchants: Vec<u32>,
    pub home_ip: Ip,
    pub laptop: bool,
    /// Phone device timeline: `(from_ts, device number)`, sorted.
    pub phones: Vec<(i64, u16)>,
    pub next_device: u16,
    pub trip: Option<Trip>,
    pub life: Vec<LifeEvent>,
}

impl Profile {
    /// UTC offset of the home city in minutes.
    pub fn tz_min(&self) -> i32 {
        CITIES[self.city].tz_min
    }

    /// First instant of ordinary activity (after the opening top-up).
    pub fn active_from(&self) -> i64 {
        self.opened + 40 * MIN
    }

    /// Where the holder is at `ts`.
    pub fn whereabouts(&self, ts: i64) -> Whereabouts {
        match &self.trip {
            Some(t) if ts >= t.depart && ts < t.arrive => Whereabouts::Transit,
            Some(t) if ts >= t.arrive && ts < t.back_depart => Whereabouts::Away(t.dest),
            Some(t) if ts >= t.back_depart && ts < t.back_arrive => Whereabouts::Transit,
            _ => Whereabouts::Home,
        }
    }

    /// The phone in use at `ts`.
    pub fn phone_at(&self, ts: i64) -> Device {
        let n = self
            .phones
            .iter()
            .take_while(|(from, _)| *from <= ts)
            .last()
            .map_or(1, |p| p.1);
        Device {
            account: self.idx,
            n,
        }
    }

    /// The laptop, for holders who use the web.
    pub fn laptop(&self) -> Option<Device> {
        self.laptop.then_some(Device {
            account: self.idx,
            n: 2,
        })
    }

    /// Allocates a device number never used on this account before.
    pub fn alloc_device(&mut self) -> Device {
        let n = self.next_device;
        self.next_device += 1;
        Device {
            account: self.idx,
            n,
        }
    }
}

/// An account outside the population: a mule that exists only as a counterparty or was opened
/// during the period for fraud.
#[derive(Debug, Clone)]
pub(crate) struct Extra {
    pub currency: Currency,
    pub home: Geo,
    pub ip: Ip,
}

/// Everyone: population accounts (indices `0..n`), then extra accounts (`n..`).
#[derive(Debug, Clone)]
pub(crate) struct World {
    pub accounts: Vec<Profile>,
    pub extras: Vec<Extra>,
    pub by_city: Vec<Vec<u32>>,
    pub by_currency: Vec<Vec<u32>>,
    pub dist: Dist,
}

impl World {
    /// Number of accounts including extras.
    pub fn total(&self) -> usize {
        self.accounts.len() + self.extras.len()
    }

    /// Currency of any account.
    pub fn currency_of(&self, idx: u32) -> Currency {
        let i = idx as usize;
        match self.accounts.get(i) {
            Some(p) => p.currency,
            None => self.extras[i - self.accounts.len()].currency,
        }
    }

    /// The extra account with index `idx` (which must be `>= accounts.len()`).
    pub fn extra(&self, idx: u32) -> &Extra {
        &self.extras[idx as usize - self.accounts.len()]
    }

    /// Adds an extra account living in `city`.
    pub fn add_extra(&mut self, currency: Currency, city: usize, rng: &mut impl Rng) -> u32 {
        let c = &CITIES[city];
        let home = geo::jitter(c.lat_e4, c.lon_e4, 250, geo::country_of(city), rng);
        let ip = geo::ip_in(city, rng);
        self.extras.push(Extra { currency, home, ip });
        (self.total() - 1) as u32
    }
}

/// Builds the whole population for `ctx`.
pub(crate) fn build(ctx: &Ctx) -> World {
    let dist = Dist::new();
    let mut accounts: Vec<Profile> = (0..ctx.accounts).map(|i| base_profile(ctx, i)).collect();
    let mut by_city = vec![Vec::new(); CITIES.len()];
    let mut by_currency = vec![Vec::new(); Currency::ALL.len()];
    for p in &accounts {
        by_city[p.city].push(p.idx);
        by_currency[p.currency.index()].push(p.idx);
    }
    for p in &mut accounts {
        let mut rng = ctx.rng(Stream::Relations, p.idx);
        add_relations(p, &by_city, &by_currency, &mut rng);
    }
    for p in &mut accounts {
        let mut rng = ctx.rng(Stream::Life, p.idx);
        p.trip = plan_trip(ctx, &dist, p, &mut rng);
        add_life_events(ctx, p, &by_currency, &mut rng);
    }
    World {
        accounts,
        extras: Vec::new(),
        by_city,
        by_currency,
        dist,
    }
}

/// Rounds a euro-cent amount to whole euros (at least `min`) and converts it.
fn money(currency: Currency, eur_cents: i64, min_eur_cents: i64) -> i64 {
    round_to(
        currency.minor_of_eur_cents(eur_cents.max(min_eur_cents)),
        currency.unit(),
    )
}

fn base_profile(ctx: &Ctx, idx: u32) -> Profile {
    let mut rng = ctx.rng(Stream::Profile, idx);
    let currency = Currency::ALL[weighted(&mut rng, &CURRENCY_WEIGHTS)];
    let city = geo::home_city(currency, &mut rng);
    let c = &CITIES[city];
    let home = geo::jitter(c.lat_e4, c.lon_e4, 250, geo::country_of(city), &mut rng);
    let fresh = ctx.days >= 2 && chance(&mut rng, 3);
    let opened = if fresh {
        ctx.start + rng.random_range(0..i64::from(ctx.days - 1) * DAY)
    } else {
        ctx.start - rng.random_range(1..=1500i64) * DAY + rng.random_range(0..DAY)
    };
    let usual_eur = detmath::lognormal(&mut rng, 2500, 0.6).clamp(400, 30_000);
    let usual = currency.minor_of_eur_cents(usual_eur);
    let activity = (1.7 * detmath::exp(0.55 * detmath::std_normal(&mut rng))).clamp(0.2, 5.0);
    let income_eur = usual_eur * between(&mut rng, 35, 90);
    let salary = chance(&mut rng, 75).then(|| Salary {
        day: SALARY_DAYS[weighted(&mut rng, &SALARY_DAYS.map(|d| d.1))].0,
        amount: money(currency, income_eur, 80_000),
    });
    let rent = chance(&mut rng, 55).then(|| Rent {
        day: RENT_DAYS[weighted(&mut rng, &RENT_DAYS.map(|d| d.1))].0,
        landlord: idx,
        amount: money(
            currency,
            income_eur.max(80_000) * between(&mut rng, 30, 45) / 100,
            0,
        ),
    });
    let rent_cover = rent
        .as_ref()
        .map_or(0, |r| r.amount * between(&mut rng, 115, 200) / 100);
    let opening = round_to(
        usual * between(&mut rng, 15, 50) + rent_cover,
        currency.unit() * 10,
    ) + currency.unit() * 10;
    let merchants = (0..between(&mut rng, 5, 15))
        .map(|_| city as u32 * 1000 + rng.random_range(1..=CITY_MERCHANTS))
        .collect();
    let laptop = chance(&mut rng, 45);
    Profile {
        idx,
        currency,
        city,
        home,
        zh: chance(&mut rng, 15),
        opened,
        fresh,
        usual,
        sigma: 0.45 + 0.45 * rng.random::<f64>(),
        activity,
        online_pct: rng.random_range(5..=25),
        pos_pct: rng.random_range(20..=60),
        salary,
        rent,
        opening,
        friends: Vec::new(),
        merchants,
        home_ip: geo::ip_in(city, &mut rng),
        laptop,
        phones: vec![(i64::MIN, 1)],
        next_device: if laptop { 3 } else { 2 },
        trip: None,
        life: Vec::new(),
    }
}

/// A random member of `pool` other than `not`.
pub(crate) fn pick_other(pool: &[u32], not: u32, rng: &mut impl Rng) -> Option<u32> {
    if pool.iter().all(|&x| x == not) {
        return None;
    }
    loop {
        let x = pool[pick(rng, pool.len())];
        if x != not {
            return Some(x);
        }
    }
}

fn add_relations(
    p: &mut Profile,
    by_city: &[Vec<u32>],
    by_currency: &[Vec<u32>],
    rng: &mut impl Rng,
) {
    let local = &by_city[p.city];
    let same_currency = &by_currency[p.currency.index()];
    for _ in 0..between(rng, 2, 6) {
        let pool = if chance(rng, 80) && local.len() > 1 {
            local
        } else {
            same_currency
        };
        if let Some(f) = pick_other(pool, p.idx, rng)
            && !p.friends.contains(&f)
        {
            p.friends.push(f);
        }
    }
    let landlord = pick_other(local, p.idx, rng).or_else(|| pick_other(same_currency, p.idx, rng));
    match (p.rent.as_mut(), landlord) {
        (Some(rent), Some(l)) => rent.landlord = l,
        _ => p.rent = None,
    }
}

/// A random local-time instant on generated day `day` for a holder in `tz_min`, following the
/// daily rhythm.
pub(crate) fn local_time(ctx: &Ctx, day: u32, tz_min: i32, rng: &mut impl Rng) -> i64 {
    let hour = weighted(rng, &HOUR_WEIGHTS) as i64;
    ctx.local_midnight(day, tz_min) + hour * HOUR + rng.random_range(0..HOUR)
}

fn flight_ms(km: u32, rng: &mut impl Rng) -> i64 {
    let speed_kmh = between(rng, 600, 780);
    i64::from(km) * HOUR / speed_kmh + minutes(rng, 60, 150)
}

fn plan_trip(ctx: &Ctx, dist: &Dist, p: &Profile, rng: &mut impl Rng) -> Option<Trip> {
    if p.fresh || ctx.days < 3 || !chance(rng, 5) {
        return None;
    }
    let dest = if p.zh && chance(rng, 40) {
        CN_CITIES[pick(rng, CN_CITIES.len())]
    } else {
        dist.elsewhere(p.city, 300, rng)
    };
    let km = dist.km(p.city, dest);
    if dest == p.city || km < 300 {
        return None;
    }
    let day = rng.random_range(0..ctx.days - 1);
    let depart = ctx.local_midnight(day, p.tz_min()) + between(rng, 7 * HOUR, 15 * HOUR);
    let arrive = depart + flight_ms(km, rng);
    let back_depart = arrive + between(rng, 2, 7) * DAY + between(rng, -4 * HOUR, 4 * HOUR);
    let back_arrive = back_depart + flight_ms(km, rng);
    Some(Trip {
        dest,
        depart,
        arrive,
        back_depart,
        back_arrive,
    })
}

/// A daytime instant during the period when the holder is active and not in the air.
fn life_time(ctx: &Ctx, p: &Profile, rng: &mut impl Rng) -> Option<i64> {
    for _ in 0..4 {
        let day = rng.random_range(0..ctx.days);
        let ts = ctx.local_midnight(day, p.tz_min()) + between(rng, 8 * HOUR, 21 * HOUR);
        if ctx.in_period(ts)
            && ts >= p.active_from() + HOUR
            && p.whereabouts(ts) != Whereabouts::Transit
        {
            return Some(ts);
        }
    }
    None
}

/// Probability in per mille, scaled to the period length (rates are per 14 days).
fn per_period(ctx: &Ctx, per_mille_per_14d: u32) -> u32 {
    (per_mille_per_14d * ctx.days / 14).min(900)
}

fn happens(ctx: &Ctx, per_mille_per_14d: u32, rng: &mut impl Rng) -> bool {
    rng.random_range(0..1000u32) < per_period(ctx, per_mille_per_14d)
}

fn add_life_events(ctx: &Ctx, p: &mut Profile, by_currency: &[Vec<u32>], rng: &mut impl Rng) {
    if happens(ctx, 40, rng)
        && let Some(at) = life_time(ctx, p, rng)
    {
        let device = p.alloc_device();
        p.phones.push((at, device.n));
        p.life.push(LifeEvent::NewPhone {
            at,
            device,
            with_reset: chance(rng, 35),
        });
    }
    if happens(ctx, 25, rng)
        && let Some(at) = life_time(ctx, p, rng)
    {
        p.life.push(LifeEvent::PasswordReset { at });
    }
    if happens(ctx, 15, rng)
        && let Some(at) = life_time(ctx, p, rng)
    {
        let kind = if chance(rng, 50) {
            AcctKind::EmailChanged
        } else {
            AcctKind::PhoneChanged
        };
        p.life.push(LifeEvent::ContactChanged { at, kind });
    }
    if happens(ctx, 80, rng)
        && let Some(at) = life_time(ctx, p, rng)
        && let Some(payee) = pick_other(&by_currency[p.currency.index()], p.idx, rng)
    {
        let delay = if chance(rng, 60) {
            minutes(rng, 1, 30)
        } else {
            between(rng, HOUR, 2 * DAY)
        };
        p.life.push(LifeEvent::NewPayee {
            at,
            payee,
            delay,
            large: chance(rng, 30),
        });
    }
    if happens(ctx, 20, rng)
        && let Some(at) = life_time(ctx, p, rng)
    {
        p.life.push(LifeEvent::EmptyWallet {
            at,
            pm: between(rng, 800, 1000),
        });
    }
}
