//! What the engine remembers about an account besides its windows: places, countries,
//! devices, payees, account events, balance. Every collection has a named limit.

use arrayvec::ArrayVec;
use serde::{Deserialize, Serialize};
use vigil_rules::catalog::ACCOUNT_EVENT_KINDS;

/// Locations remembered for "usual location" (cells of [`PLACE_CELL_DEG`] degrees).
pub const PLACES_MAX: usize = 4;
/// Size of a place cell, degrees (about 50 km).
pub const PLACE_CELL_DEG: f64 = 0.5;
/// Countries remembered per account.
pub const COUNTRIES_MAX: usize = 8;
/// Transactions from a country that make it a home country.
pub const HOME_COUNTRY_TX_MIN: u32 = 3;
/// Devices remembered per account (most recent kept).
pub const DEVICES_MAX: usize = 8;
/// Payees remembered per account (most recent kept); an older payee looks new again.
pub const PAYEES_MAX: usize = 16;

/// A device or payee first used this recently still counts as new, so every transaction of a
/// burst from a new device (or to a new payee) carries the signal, not only the first.
pub const NEW_FOR_MS: i64 = 86_400_000;

/// Mean Earth radius used for distances, km.
const EARTH_RADIUS_KM: f64 = 6371.0;

/// Great-circle distance in km.
pub fn haversine_km(lat1: f64, lon1: f64, lat2: f64, lon2: f64) -> f64 {
    let (p1, p2) = (lat1.to_radians(), lat2.to_radians());
    let dp = p2 - p1;
    let dl = (lon2 - lon1).to_radians();
    let a = (dp / 2.0).sin().powi(2) + p1.cos() * p2.cos() * (dl / 2.0).sin().powi(2);
    2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Place {
    cell: (i32, i32),
    lat_sum: f64,
    lon_sum: f64,
    count: u32,
}

/// A located event.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Fix {
    /// Event time, ms.
    pub ts: i64,
    /// Latitude.
    pub lat: f64,
    /// Longitude.
    pub lon: f64,
}

/// Never seen: the sentinel for account event times.
pub const NEVER: i64 = i64::MIN;

/// The per-account profile.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Profile {
    /// When the account was opened, once an `account_opened` event has been seen.
    pub opened_ms: Option<i64>,
    /// The derived balance is exact: the stream was seen from the account's opening on.
    pub balance_known: bool,
    /// Latest transaction time counted, ms ([`NEVER`] before the first).
    pub last_tx_ms: i64,
    /// Latest time of each account event kind, [`NEVER`] when none.
    pub last_event_ms: [i64; ACCOUNT_EVENT_KINDS.len()],
    /// The previous located transaction.
    pub last_fix: Option<Fix>,
    places: ArrayVec<Place, PLACES_MAX>,
    countries: ArrayVec<([u8; 2], u32), COUNTRIES_MAX>,
    /// Country of registration (account_opened), a home country from the start.
    pub home_country: Option<[u8; 2]>,
    /// Devices used, most recent last; see [`Seen`].
    devices: ArrayVec<Seen, DEVICES_MAX>,
    /// (payee hash, first payment).
    payees: ArrayVec<Seen, PAYEES_MAX>,
    /// Available balance derived from the stream, fixed point major units.
    pub balance: i64,
    /// Transactions remembered.
    pub history_count: u32,
    /// Notification language.
    pub locale: Option<Box<str>>,
    /// When a freeze of this account was first requested ([`NEVER`] if not): later freezing
    /// rules do not request (or announce) it again.
    #[serde(default = "never")]
    pub freeze_requested_ms: i64,
}

fn never() -> i64 {
    NEVER
}

impl Default for Profile {
    fn default() -> Self {
        Profile::new()
    }
}

impl Profile {
    /// A profile first seen now: its opening, and so its age and balance, are unknown.
    pub fn new() -> Profile {
        Profile {
            opened_ms: None,
            balance_known: false,
            last_tx_ms: NEVER,
            last_event_ms: [NEVER; ACCOUNT_EVENT_KINDS.len()],
            last_fix: None,
            places: ArrayVec::new(),
            countries: ArrayVec::new(),
            home_country: None,
            devices: ArrayVec::new(),
            payees: ArrayVec::new(),
            balance: 0,
            history_count: 0,
            locale: None,
            freeze_requested_ms: NEVER,
        }
    }

    /// The mean location of the most used place, once one has two or more fixes.
    pub fn home(&self) -> Option<(f64, f64)> {
        self.places
            .iter()
            .filter(|p| p.count >= 2)
            .max_by_key(|p| p.count)
            .map(|p| {
                (
                    p.lat_sum / f64::from(p.count),
                    p.lon_sum / f64::from(p.count),
                )
            })
    }

    /// Counts a located event toward the usual places.
    pub fn add_place(&mut self, lat: f64, lon: f64) {
        let cell = (
            (lat / PLACE_CELL_DEG).floor() as i32,
            (lon / PLACE_CELL_DEG).floor() as i32,
        );
        if let Some(p) = self.places.iter_mut().find(|p| p.cell == cell) {
            p.lat_sum += lat;
            p.lon_sum += lon;
            p.count = p.count.saturating_add(1);
            return;
        }
        let p = Place {
            cell,
            lat_sum: lat,
            lon_sum: lon,
            count: 1,
        };
        if self.places.len() < PLACES_MAX {
            self.places.push(p);
        } else if let Some(least) = self.places.iter_mut().min_by_key(|p| p.count) {
            // Replace the least used place, so a move settles in over time.
            *least = p;
        }
    }

    /// Whether the account has transacted from `c` before.
    pub fn knows_country(&self, c: [u8; 2]) -> bool {
        self.countries.iter().any(|(k, _)| *k == c)
    }

    /// Counts a transaction from country `c`.
    pub fn add_country(&mut self, c: [u8; 2]) {
        if let Some(e) = self.countries.iter_mut().find(|(k, _)| *k == c) {
            e.1 = e.1.saturating_add(1);
        } else if self.countries.len() < COUNTRIES_MAX {
            self.countries.push((c, 1));
        } else if let Some(least) = self.countries.iter_mut().min_by_key(|(_, n)| *n) {
            *least = (c, 1);
        }
    }

    /// Home countries: the registration country and countries with at least
    /// [`HOME_COUNTRY_TX_MIN`] transactions. Writes into `out`, returns how many.
    pub fn home_countries(&self, out: &mut [[u8; 2]; COUNTRIES_MAX + 1]) -> usize {
        let mut n = 0;
        if let Some(h) = self.home_country {
            out[0] = h;
            n = 1;
        }
        for (c, count) in &self.countries {
            if *count >= HOME_COUNTRY_TX_MIN && Some(*c) != self.home_country && n < out.len() {
                out[n] = *c;
                n += 1;
            }
        }
        n
    }

    /// Whether `device` is new to this account at `ts`: never used for a transaction, or
    /// first used less than [`NEW_FOR_MS`] ago — and the account had used another before.
    pub fn is_new_device(&self, device: u64, ts: i64) -> bool {
        !self.devices.is_empty() && is_new(&self.devices, device, ts)
    }

    /// Remembers `device` (used at `ts`), most recent last.
    pub fn add_device(&mut self, device: u64, ts: i64) {
        let first = if self.devices.is_empty() { NEVER } else { ts };
        remember(&mut self.devices, device, first);
    }

    /// Whether `payee` is new at `ts`: never paid, or first paid less than [`NEW_FOR_MS`] ago.
    pub fn is_new_payee(&self, payee: u64, ts: i64) -> bool {
        is_new(&self.payees, payee, ts)
    }

    /// Remembers `payee` (paid at `ts`), most recent last.
    pub fn add_payee(&mut self, payee: u64, ts: i64) {
        remember(&mut self.payees, payee, ts);
    }

    /// Heap bytes held (the collections are inline; only the locale is not).
    pub fn heap_bytes(&self) -> usize {
        self.locale.as_ref().map_or(0, |l| l.len())
    }
}

/// A remembered device or payee in 8 bytes, so the lists stay within a few cache lines:
/// 32 bits of the id's hash (a false match among a handful of entries is about one in a
/// billion) and the minute of first use (0: established, never new).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Seen {
    id: u32,
    first_min: u32,
}

fn fingerprint(h: u64) -> u32 {
    (h >> 32) as u32 ^ h as u32
}

fn minute(ts: i64) -> u32 {
    if ts == NEVER {
        0
    } else {
        u32::try_from(ts.div_euclid(60_000))
            .unwrap_or(u32::MAX)
            .max(1)
    }
}

fn is_new(v: &[Seen], x: u64, ts: i64) -> bool {
    let id = fingerprint(x);
    v.iter().find(|s| s.id == id).is_none_or(|s| {
        s.first_min != 0 && i64::from(minute(ts)) - i64::from(s.first_min) < NEW_FOR_MS / 60_000
    })
}

/// Moves `x` to the back (most recent), keeping its first use; drops the least recent when
/// full.
fn remember<const N: usize>(v: &mut ArrayVec<Seen, N>, x: u64, first: i64) {
    let id = fingerprint(x);
    let first_min = match v.iter().position(|s| s.id == id) {
        Some(i) => {
            let old = v.remove(i).first_min;
            if old == 0 || minute(first) == 0 {
                0
            } else {
                old.min(minute(first))
            }
        }
        None => {
            if v.is_full() {
                v.remove(0);
            }
            minute(first)
        }
    };
    v.push(Seen { id, first_min });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn haversine_matches_known_distances() {
        // Berlin – Shanghai is about 8,400 km.
        let d = haversine_km(52.52, 13.405, 31.23, 121.47);
        assert!((8300.0..8500.0).contains(&d), "{d}");
        assert!(haversine_km(1.0, 1.0, 1.0, 1.0) < 1e-9);
    }

    #[test]
    fn home_is_the_most_used_place_and_moves_with_the_account() {
        let mut p = Profile::new();
        assert_eq!(p.home(), None);
        for _ in 0..3 {
            p.add_place(52.52, 13.40);
        }
        p.add_place(48.85, 2.35);
        let (lat, _) = p.home().unwrap();
        assert!((lat - 52.52).abs() < 1e-9);
        for _ in 0..5 {
            p.add_place(48.85, 2.35);
        }
        let (lat, _) = p.home().unwrap();
        assert!((lat - 48.85).abs() < 1e-9);
    }

    #[test]
    fn limits_hold_and_recent_entries_stay() {
        let mut p = Profile::new();
        let t0 = 1_700_000_000_000;
        let day = t0 + NEW_FOR_MS;
        p.add_device(1000, t0);
        for i in 0..100 {
            p.add_payee(i, t0);
            p.add_device(i, t0);
        }
        assert!(!p.is_new_payee(99, day) && p.is_new_payee(0, day));
        assert!(
            p.is_new_payee(99, day - 60_000),
            "paid first a moment ago: still new"
        );
        assert!(p.is_new_device(99, day - 60_000) && !p.is_new_device(99, day));
        assert_eq!(p.payees.len(), PAYEES_MAX);
        assert_eq!(p.devices.len(), DEVICES_MAX);
        for c in 0..20u8 {
            p.add_country([b'A', b'A' + c]);
        }
        assert_eq!(p.countries.len(), COUNTRIES_MAX);
    }
}
