//! Fixed-point numbers for rule evaluation.
//!
//! Rules compare money, counts, distances and ratios. Floats would make `0.1 + 0.2 != 0.3` an
//! analyst's problem, and `rust_decimal` costs more than the 100 ns budget allows for a whole
//! rule set, so evaluation uses a plain `i64` holding millionths: six decimal places, an exact
//! range of ±9.2 trillion, checked arithmetic (an overflow is a rule error, never a wrap).

use rust_decimal::Decimal;

/// How many units of the fixed-point representation make one.
pub const NUM_SCALE: i64 = 1_000_000;
/// Decimal places a rule number may carry.
pub const NUM_DECIMALS: u32 = 6;

const _: () = assert!(NUM_SCALE == 10i64.pow(NUM_DECIMALS));

/// Converts a decimal to fixed point, or `None` when it has more than six decimal places or is
/// out of range.
pub fn from_decimal(d: Decimal) -> Option<i64> {
    if d.scale() > NUM_DECIMALS {
        return None;
    }
    let scaled = d.checked_mul(Decimal::from(NUM_SCALE))?;
    rust_decimal::prelude::ToPrimitive::to_i64(&scaled)
}

/// Converts an integer amount in minor units (cents) with `exponent` decimal places to fixed
/// point.
pub fn from_minor(minor: i64, exponent: u32) -> Option<i64> {
    let factor = 10i64.checked_pow(NUM_DECIMALS.checked_sub(exponent)?)?;
    minor.checked_mul(factor)
}

/// Converts a whole number to fixed point.
pub fn from_int(v: i64) -> Option<i64> {
    v.checked_mul(NUM_SCALE)
}

/// Multiplies two fixed-point numbers, truncating toward zero.
#[inline]
pub fn mul(a: i64, b: i64) -> Option<i64> {
    i64::try_from((a as i128 * b as i128) / NUM_SCALE as i128).ok()
}

/// Divides two fixed-point numbers, truncating toward zero; `None` on division by zero.
#[inline]
pub fn div(a: i64, b: i64) -> Option<i64> {
    if b == 0 {
        return None;
    }
    i64::try_from((a as i128 * NUM_SCALE as i128) / b as i128).ok()
}

/// The remainder of `a / b` (both fixed point), sign of `a`; `None` on division by zero.
#[inline]
pub fn rem(a: i64, b: i64) -> Option<i64> {
    a.checked_rem(b)
}

/// Writes a fixed-point number as a decimal without trailing zeros (`250`, `1.5`, `-0.25`).
pub fn format(v: i64) -> String {
    let neg = v < 0;
    let abs = v.unsigned_abs();
    let int = abs / NUM_SCALE as u64;
    let frac = abs % NUM_SCALE as u64;
    let mut s = String::new();
    if neg {
        s.push('-');
    }
    s.push_str(&int.to_string());
    if frac != 0 {
        let digits = format!("{frac:06}");
        s.push('.');
        s.push_str(digits.trim_end_matches('0'));
    }
    s
}

/// Milliseconds in one duration unit: `ms`, `s`, `m`, `h`, `d`, `w`.
pub fn unit_ms(unit: &str) -> Option<i64> {
    Some(match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        "w" => 604_800_000,
        _ => return None,
    })
}

/// Parses a duration written the way rules write it (`30s`, `10m`, `24h`, `30d`) into
/// milliseconds; `None` for anything else or on overflow.
pub fn parse_duration(s: &str) -> Option<i64> {
    let split = s.find(|c: char| !c.is_ascii_digit() && c != '_')?;
    let digits: String = s[..split].chars().filter(|&c| c != '_').collect();
    let n: i64 = digits.parse().ok()?;
    n.checked_mul(unit_ms(&s[split..])?)
}

/// Writes a duration in milliseconds the way rules spell it: `90s`, `15m`, `2h`, `3d`,
/// `1h30m`, `250ms`, or `never` for the "no such event" sentinel.
pub fn format_duration(ms: i64) -> String {
    if ms >= crate::program::NEVER_MS {
        return "never".to_string();
    }
    if ms < 0 {
        return format!("-{}", format_duration(-ms));
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let mut secs = ms / 1000;
    let mut out = String::new();
    for (unit, len) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= len {
            out.push_str(&format!("{}{unit}", secs / len));
            secs %= len;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr;

    #[test]
    fn decimal_round_trips_through_fixed_point() {
        for (text, fixed) in [
            ("250.00", 250_000_000),
            ("0.5", 500_000),
            ("-1.25", -1_250_000),
        ] {
            assert_eq!(from_decimal(Decimal::from_str(text).unwrap()), Some(fixed));
        }
        assert_eq!(from_decimal(Decimal::from_str("0.0000001").unwrap()), None);
        assert_eq!(format(250_000_000), "250");
        assert_eq!(format(-1_250_000), "-1.25");
        assert_eq!(format(1), "0.000001");
    }

    #[test]
    fn arithmetic_is_exact_and_checked() {
        assert_eq!(mul(2_500_000, 4_000_000), Some(10_000_000));
        assert_eq!(div(1_000_000, 3_000_000), Some(333_333));
        assert_eq!(div(1, 0), None);
        assert_eq!(mul(i64::MAX, 2 * NUM_SCALE), None);
        assert_eq!(from_minor(12_345, 2), Some(123_450_000));
        assert_eq!(from_minor(5, 0), Some(5_000_000));
    }

    #[test]
    fn durations_parse_like_literals() {
        assert_eq!(parse_duration("10m"), Some(600_000));
        assert_eq!(parse_duration("1_000ms"), Some(1_000));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10min"), None);
        assert_eq!(parse_duration("99999999999999999w"), None);
    }

    #[test]
    fn durations_format_like_literals() {
        assert_eq!(format_duration(90_000), "1m30s");
        assert_eq!(format_duration(7_200_000), "2h");
        assert_eq!(format_duration(250), "250ms");
    }
}
