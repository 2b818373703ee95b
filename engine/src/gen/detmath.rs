//! Portable numeric helpers for the generator.
//!
//! `f64::exp`, `sin` and friends come from the platform's libm, whose last bit may differ between
//! machines; one flipped bit can change a rounded amount and break byte-identical output. The
//! functions here use only IEEE-exact operations (`+ - * /`, `sqrt`, `round`), so a seed produces
//! the same bytes everywhere. Money never goes through floats: these shapes only pick integer
//! minor-unit amounts, which are rounded once and then handled as integers.

use rand::Rng;
use std::f64::consts::{FRAC_PI_2, LN_2, PI, TAU};

const LN2_HI: f64 = 6.931_471_803_691_238e-1;
const LN2_LO: f64 = 1.908_214_929_270_587_7e-10;
const EARTH_RADIUS_KM: f64 = 6371.0;

/// `e^x`, clamped to `[-700, 700]`.
pub(crate) fn exp(x: f64) -> f64 {
    if x.is_nan() {
        return x;
    }
    let x = x.clamp(-700.0, 700.0);
    let k = (x / LN_2).round();
    let r = (x - k * LN2_HI) - k * LN2_LO;
    let mut term = 1.0;
    let mut sum = 1.0;
    for i in 1..=16u32 {
        term *= r / f64::from(i);
        sum += term;
    }
    // k is within [-1010, 1010], so the biased exponent stays in the normal range.
    let bits = ((k as i64 + 1023) as u64) << 52;
    sum * f64::from_bits(bits)
}

/// `sin(x)` for any finite `x` (accurate to ~1e-16 after reduction to `[-pi/2, pi/2]`).
pub(crate) fn sin(x: f64) -> f64 {
    let mut x = x - TAU * (x / TAU).round();
    if x > FRAC_PI_2 {
        x = PI - x;
    } else if x < -FRAC_PI_2 {
        x = -PI - x;
    }
    let x2 = x * x;
    let mut term = x;
    let mut sum = x;
    for n in 1..=11u32 {
        let a = f64::from(2 * n);
        term *= -x2 / (a * (a + 1.0));
        sum += term;
    }
    sum
}

/// `cos(x)`.
pub(crate) fn cos(x: f64) -> f64 {
    sin(x + FRAC_PI_2)
}

/// `asin(y)` for `y` in `[0, 1]`, by bisection on [`sin`].
fn asin_unit(y: f64) -> f64 {
    let y = y.clamp(0.0, 1.0);
    let (mut lo, mut hi) = (0.0, FRAC_PI_2);
    for _ in 0..64 {
        let mid = 0.5 * (lo + hi);
        if sin(mid) < y {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

/// Great-circle distance in km between two `(lat, lon)` points given in degrees.
pub(crate) fn distance_km(a: (f64, f64), b: (f64, f64)) -> f64 {
    let rad = PI / 180.0;
    let half_dlat = (b.0 - a.0) * rad / 2.0;
    let half_dlon = (b.1 - a.1) * rad / 2.0;
    let s_lat = sin(half_dlat);
    let s_lon = sin(half_dlon);
    let h = s_lat * s_lat + cos(a.0 * rad) * cos(b.0 * rad) * s_lon * s_lon;
    2.0 * EARTH_RADIUS_KM * asin_unit(h.clamp(0.0, 1.0).sqrt())
}

/// Approximately standard normal sample (Irwin–Hall: sum of 12 uniforms minus 6).
pub(crate) fn std_normal(rng: &mut impl Rng) -> f64 {
    let mut s = 0.0;
    for _ in 0..12 {
        s += rng.random::<f64>();
    }
    s - 6.0
}

/// Lognormal integer around `median` with log-space spread `sigma` (z clipped to ±3).
pub(crate) fn lognormal(rng: &mut impl Rng, median: i64, sigma: f64) -> i64 {
    let z = std_normal(rng).clamp(-3.0, 3.0);
    (median as f64 * exp(sigma * z)).round() as i64
}

/// Poisson sample (Knuth's method; fine for the small rates used here).
pub(crate) fn poisson(rng: &mut impl Rng, lambda: f64) -> u32 {
    if lambda <= 0.0 {
        return 0;
    }
    let limit = exp(-lambda);
    let mut k = 0u32;
    let mut p = 1.0;
    loop {
        p *= rng.random::<f64>();
        if p <= limit || k >= 64 {
            return k;
        }
        k += 1;
    }
}

/// Uniform index in `0..len` (`len` must be > 0), portable across pointer widths.
pub(crate) fn pick(rng: &mut impl Rng, len: usize) -> usize {
    rng.random_range(0..len as u64) as usize
}

/// Uniform integer in `lo..=hi`.
pub(crate) fn between(rng: &mut impl Rng, lo: i64, hi: i64) -> i64 {
    if hi <= lo {
        lo
    } else {
        rng.random_range(lo..=hi)
    }
}

/// A random offset of `lo..=hi` minutes, in ms.
pub(crate) fn minutes(rng: &mut impl Rng, lo: i64, hi: i64) -> i64 {
    between(rng, lo * 60_000, hi * 60_000)
}

/// True with probability `pct` percent.
pub(crate) fn chance(rng: &mut impl Rng, pct: u32) -> bool {
    rng.random_range(0..100u32) < pct
}

/// Index drawn with the given integer weights (at least one weight must be > 0).
pub(crate) fn weighted(rng: &mut impl Rng, weights: &[u32]) -> usize {
    let total: u64 = weights.iter().map(|&w| u64::from(w)).sum();
    if total == 0 {
        return 0;
    }
    let mut x = rng.random_range(0..total);
    for (i, &w) in weights.iter().enumerate() {
        let w = u64::from(w);
        if x < w {
            return i;
        }
        x -= w;
    }
    weights.len() - 1
}

/// Fisher–Yates shuffle with portable index draws.
pub(crate) fn shuffle<T>(v: &mut [T], rng: &mut impl Rng) {
    for i in (1..v.len()).rev() {
        let j = pick(rng, i + 1);
        v.swap(i, j);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_trig_match_std_closely() {
        for i in -200..=200 {
            let x = f64::from(i) / 20.0;
            assert!((exp(x) / x.exp() - 1.0).abs() < 1e-13, "exp({x})");
            assert!((sin(x) - x.sin()).abs() < 1e-13, "sin({x})");
            assert!((cos(x) - x.cos()).abs() < 1e-13, "cos({x})");
        }
    }

    #[test]
    fn distance_berlin_paris_is_about_878_km() {
        let d = distance_km((52.52, 13.405), (48.8566, 2.3522));
        assert!((d - 878.0).abs() < 5.0, "{d}");
        let antipode = distance_km((0.0, 0.0), (0.0, 180.0));
        assert!((antipode - PI * EARTH_RADIUS_KM).abs() < 0.01, "{antipode}");
    }
}
