//! Cities, countries, IP prefixes and distances.
//!
//! 44 real cities in 27 countries. Cities with a home currency are where account holders live;
//! the others are destinations for trips, VPN exits and fraudsters.

use super::detmath::{self, pick, weighted};
use super::model::{Currency, Geo, Ip, Spot};
use rand::Rng;

/// ISO 3166 alpha-2 codes; a city's `country` indexes this table.
pub(crate) const COUNTRIES: [&str; 27] = [
    "DE", "FR", "ES", "IT", "NL", "BE", "PT", "AT", "IE", "FI", "GB", "US", "JP", "PL", "SE", "CH",
    "CN", "NG", "BR", "IN", "AE", "TR", "SG", "ID", "MX", "TH", "CA",
];

/// A city: country index, centre in 1e-4 degrees, UTC offset (standard time, minutes), and the
/// currency and relative weight with which account holders live there (if any).
#[derive(Debug, Clone, Copy)]
pub(crate) struct City {
    pub country: u8,
    pub lat_e4: i32,
    pub lon_e4: i32,
    pub tz_min: i32,
    pub home: Option<(Currency, u32)>,
}

const fn city(
    country: u8,
    lat_e4: i32,
    lon_e4: i32,
    tz_min: i32,
    home: Option<(Currency, u32)>,
) -> City {
    City {
        country,
        lat_e4,
        lon_e4,
        tz_min,
        home,
    }
}

const EUR: Currency = Currency::Eur;
const USD: Currency = Currency::Usd;
const GBP: Currency = Currency::Gbp;
const JPY: Currency = Currency::Jpy;

/// The city table.
pub(crate) const CITIES: [City; 44] = [
    city(0, 525_200, 134_050, 60, Some((EUR, 10))), // Berlin
    city(0, 481_351, 115_820, 60, Some((EUR, 6))),  // Munich
    city(0, 535_511, 99_937, 60, Some((EUR, 5))),   // Hamburg
    city(0, 501_109, 86_821, 60, Some((EUR, 4))),   // Frankfurt
    city(1, 488_566, 23_522, 60, Some((EUR, 10))),  // Paris
    city(1, 457_640, 48_357, 60, Some((EUR, 4))),   // Lyon
    city(1, 432_965, 53_698, 60, Some((EUR, 3))),   // Marseille
    city(2, 404_168, -37_038, 60, Some((EUR, 8))),  // Madrid
    city(2, 413_874, 21_686, 60, Some((EUR, 6))),   // Barcelona
    city(3, 419_028, 124_964, 60, Some((EUR, 6))),  // Rome
    city(3, 454_642, 91_900, 60, Some((EUR, 6))),   // Milan
    city(4, 523_676, 49_041, 60, Some((EUR, 6))),   // Amsterdam
    city(4, 519_244, 44_777, 60, Some((EUR, 3))),   // Rotterdam
    city(5, 508_503, 43_517, 60, Some((EUR, 4))),   // Brussels
    city(6, 387_223, -91_393, 0, Some((EUR, 4))),   // Lisbon
    city(7, 482_082, 163_738, 60, Some((EUR, 5))),  // Vienna
    city(8, 533_498, -62_603, 0, Some((EUR, 4))),   // Dublin
    city(9, 601_699, 249_384, 120, Some((EUR, 3))), // Helsinki
    city(10, 515_074, -1_278, 0, Some((GBP, 14))),  // London
    city(10, 534_808, -22_426, 0, Some((GBP, 5))),  // Manchester
    city(10, 559_533, -31_883, 0, Some((GBP, 3))),  // Edinburgh
    city(11, 407_128, -740_060, -300, Some((USD, 10))), // New York
    city(11, 340_522, -1_182_437, -480, Some((USD, 7))), // Los Angeles
    city(11, 418_781, -876_298, -360, Some((USD, 6))), // Chicago
    city(11, 297_604, -953_698, -360, Some((USD, 4))), // Houston
    city(11, 377_749, -1_224_194, -480, Some((USD, 5))), // San Francisco
    city(11, 257_617, -801_918, -300, Some((USD, 4))), // Miami
    city(12, 356_762, 1_396_503, 540, Some((JPY, 10))), // Tokyo
    city(12, 346_937, 1_355_023, 540, Some((JPY, 5))), // Osaka
    city(26, 436_532, -793_832, -300, Some((USD, 2))), // Toronto
    city(24, 194_326, -991_332, -360, Some((USD, 1))), // Mexico City
    city(20, 252_048, 552_708, 240, Some((USD, 2))), // Dubai
    city(22, 13_521, 1_038_198, 480, Some((USD, 2))), // Singapore
    city(13, 522_297, 210_122, 60, None),           // Warsaw
    city(14, 593_293, 180_686, 60, None),           // Stockholm
    city(15, 473_769, 85_417, 60, None),            // Zurich
    city(16, 312_304, 1_214_737, 480, None),        // Shanghai
    city(16, 399_042, 1_164_074, 480, None),        // Beijing
    city(17, 65_244, 33_792, 60, None),             // Lagos
    city(18, -235_505, -466_333, -180, None),       // Sao Paulo
    city(19, 190_760, 728_777, 330, None),          // Mumbai
    city(21, 410_082, 289_784, 180, None),          // Istanbul
    city(23, -62_088, 1_068_456, 420, None),        // Jakarta
    city(25, 137_563, 1_005_018, 420, None),        // Bangkok
];

/// Indices of the Chinese cities (favoured trip destinations of `zh` account holders).
pub(crate) const CN_CITIES: [usize; 2] = [36, 37];

/// Merchants per city: merchant numbers `city * 1000 + 1 ..= city * 1000 + CITY_MERCHANTS`.
pub(crate) const CITY_MERCHANTS: u32 = 400;
/// Online merchants: `ONLINE_BASE + 1 ..= ONLINE_BASE + ONLINE_MERCHANTS`.
pub(crate) const ONLINE_BASE: u32 = 90_000;
/// Number of online merchants.
pub(crate) const ONLINE_MERCHANTS: u32 = 3_000;

/// Country code of a city.
pub(crate) fn country_of(city: usize) -> &'static str {
    COUNTRIES[usize::from(CITIES[city].country)]
}

/// Draws a home city for an account in `currency` (weighted by size).
pub(crate) fn home_city(currency: Currency, rng: &mut impl Rng) -> usize {
    let weights: Vec<u32> = CITIES
        .iter()
        .map(|c| match c.home {
            Some((cur, w)) if cur == currency => w,
            _ => 0,
        })
        .collect();
    weighted(rng, &weights)
}

/// A random merchant in `city`.
pub(crate) fn city_merchant(city: usize, rng: &mut impl Rng) -> u32 {
    city as u32 * 1000 + rng.random_range(1..=CITY_MERCHANTS)
}

/// A random online merchant.
pub(crate) fn online_merchant(rng: &mut impl Rng) -> u32 {
    ONLINE_BASE + rng.random_range(1..=ONLINE_MERCHANTS)
}

/// A point within about `spread_e4` 1e-4 degrees (≈ `spread_e4 / 90` km) of `(lat, lon)`.
pub(crate) fn jitter(
    lat_e4: i32,
    lon_e4: i32,
    spread_e4: i32,
    country: &'static str,
    rng: &mut impl Rng,
) -> Geo {
    let s = spread_e4.max(1);
    Geo {
        lat_e4: lat_e4 + rng.random_range(-s..=s),
        lon_e4: lon_e4 + rng.random_range(-s..=s) * 3 / 2,
        country,
    }
}

/// A point a few km around the centre of `city`.
pub(crate) fn near_city(city: usize, rng: &mut impl Rng) -> Geo {
    let c = &CITIES[city];
    jitter(c.lat_e4, c.lon_e4, 300, country_of(city), rng)
}

fn reserved_octet(o: u8) -> bool {
    matches!(o, 0 | 10 | 100 | 127 | 169 | 172 | 192 | 198 | 203) || o >= 224
}

/// First octets owned by `country` (7 per country, skipping private/reserved ranges).
fn country_octet(country: u8, rng: &mut impl Rng) -> u8 {
    let allowed: Vec<u8> = (1..=223u8).filter(|&o| !reserved_octet(o)).collect();
    let i = usize::from(country) * 7 + pick(rng, 7);
    allowed[i % allowed.len()]
}

/// A random public-looking IP address in `city`'s country.
pub(crate) fn ip_in(city: usize, rng: &mut impl Rng) -> Ip {
    let first = country_octet(CITIES[city].country, rng);
    Ip([first, rng.random(), rng.random(), rng.random_range(1..=254)])
}

/// A spot somewhere around `city`, with a country IP; geo missing ~3% of the time.
pub(crate) fn spot_in(city: usize, rng: &mut impl Rng) -> Spot {
    let geo = near_city(city, rng);
    let ip = ip_in(city, rng);
    Spot {
        geo: maybe_missing(geo, rng),
        ip,
    }
}

/// Drops the geo on ~3% of events (honest noise).
pub(crate) fn maybe_missing(geo: Geo, rng: &mut impl Rng) -> Option<Geo> {
    if rng.random_range(0..1000u32) < 30 {
        None
    } else {
        Some(geo)
    }
}

/// City-to-city great-circle distances in whole km.
#[derive(Debug, Clone)]
pub(crate) struct Dist {
    km: Vec<u32>,
}

impl Dist {
    /// Computes the table for [`CITIES`].
    pub fn new() -> Self {
        let n = CITIES.len();
        let mut km = vec![0; n * n];
        for a in 0..n {
            for b in 0..n {
                let pa = (
                    f64::from(CITIES[a].lat_e4) / 1e4,
                    f64::from(CITIES[a].lon_e4) / 1e4,
                );
                let pb = (
                    f64::from(CITIES[b].lat_e4) / 1e4,
                    f64::from(CITIES[b].lon_e4) / 1e4,
                );
                km[a * n + b] = detmath::distance_km(pa, pb).round() as u32;
            }
        }
        Dist { km }
    }

    /// Distance between city centres in km.
    pub fn km(&self, a: usize, b: usize) -> u32 {
        self.km[a * CITIES.len() + b]
    }

    /// A random city in another country at least `min_km` away (the farthest one if none is).
    pub fn far_city(&self, from: usize, min_km: u32, rng: &mut impl Rng) -> usize {
        let home_country = CITIES[from].country;
        let far: Vec<usize> = (0..CITIES.len())
            .filter(|&c| CITIES[c].country != home_country && self.km(from, c) >= min_km)
            .collect();
        if far.is_empty() {
            (0..CITIES.len())
                .max_by_key(|&c| self.km(from, c))
                .unwrap_or(from)
        } else {
            far[pick(rng, far.len())]
        }
    }

    /// A random city in another country (for VPN exits).
    pub fn other_country(&self, from: usize, rng: &mut impl Rng) -> usize {
        self.far_city(from, 0, rng)
    }

    /// A random city other than `from`, at least `min_km` away, any country.
    pub fn elsewhere(&self, from: usize, min_km: u32, rng: &mut impl Rng) -> usize {
        let options: Vec<usize> = (0..CITIES.len())
            .filter(|&c| c != from && self.km(from, c) >= min_km)
            .collect();
        if options.is_empty() {
            from
        } else {
            options[pick(rng, options.len())]
        }
    }

    /// Another home city in the same country as `from`, if there is one.
    pub fn same_country(&self, from: usize, rng: &mut impl Rng) -> Option<usize> {
        let options: Vec<usize> = (0..CITIES.len())
            .filter(|&c| c != from && CITIES[c].country == CITIES[from].country)
            .collect();
        if options.is_empty() {
            None
        } else {
            Some(options[pick(rng, options.len())])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn every_currency_has_home_cities_and_octets_are_public() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        for cur in Currency::ALL {
            let c = home_city(cur, &mut rng);
            assert!(matches!(CITIES[c].home, Some((x, _)) if x == cur));
        }
        for c in 0..CITIES.len() {
            let ip = ip_in(c, &mut rng);
            assert!(!reserved_octet(ip.0[0]), "{ip:?}");
        }
        let allowed = (1..=223u8).filter(|&o| !reserved_octet(o)).count();
        assert!(COUNTRIES.len() * 7 <= allowed);
    }

    #[test]
    fn far_cities_are_far() {
        let d = Dist::new();
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
        assert!(
            (d.km(0, 4) as i64 - 878).abs() < 5,
            "Berlin-Paris {}",
            d.km(0, 4)
        );
        for home in 0..CITIES.len() {
            let far = d.far_city(home, 5000, &mut rng);
            assert!(d.km(home, far) >= 5000, "{home}->{far}");
        }
    }
}
