//! The fast path of [`super::decode`], for events in the shape producers write: one JSON object
//! whose strings hold no escapes, `geo` a flat object, numbers without exponents.
//!
//! It decides nothing on its own. Anything outside that shape — an escape, `null`, a nested
//! value in an unknown field, an exponent, a long number, a duplicate key, a missing `lat`,
//! invalid UTF-8, trailing bytes — returns `None`, and the event goes through serde_json, which
//! accepts it or names what is wrong. Where it answers, it answers exactly what serde_json
//! would (property-tested in `tests` below), in a quarter of the time: serde_json's derived
//! visitor with per-string UTF-8 checks cost more than a microsecond per transaction, a fifth
//! of the Kafka pipeline's budget.

use std::borrow::Cow;

use super::{RawEvent, RawGeo};

/// Exact powers of ten: a decimal with at most 15 significant digits divided by one of these is
/// correctly rounded (one rounding of exact operands), as serde_json computes it.
const POW10: [f64; 16] = [
    1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
];

struct Cursor<'a> {
    s: &'a str,
    i: usize,
    /// A key no event has was skipped (at the top or in `geo`).
    unknown: bool,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.as_bytes().get(self.i).copied()
    }
    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }
    fn eat(&mut self, b: u8) -> Option<()> {
        (self.peek()? == b).then(|| self.i += 1)
    }
    fn literal(&mut self, word: &str) -> Option<()> {
        let end = self.i + word.len();
        (self.s.as_bytes().get(self.i..end)? == word.as_bytes()).then(|| self.i = end)
    }
    /// A string without escapes or control characters, borrowed.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.i;
        let bytes = self.s.as_bytes();
        // Eight bytes at a time up to the first quote, backslash or control character (the
        // lowest flagged byte is exact), then byte by byte.
        const ONES: u64 = 0x0101_0101_0101_0101;
        const HIGH: u64 = 0x8080_8080_8080_8080;
        let zero_in = |v: u64| v.wrapping_sub(ONES) & !v & HIGH;
        while let Some(chunk) = bytes.get(self.i..self.i + 8) {
            let v = u64::from_le_bytes(chunk.try_into().ok()?);
            let stop = zero_in(v ^ (ONES * u64::from(b'"')))
                | zero_in(v ^ (ONES * u64::from(b'\\')))
                | (v.wrapping_sub(ONES * 0x20) & !v & HIGH);
            if stop != 0 {
                self.i += (stop.trailing_zeros() / 8) as usize;
                break;
            }
            self.i += 8;
        }
        loop {
            match *bytes.get(self.i)? {
                b'"' => break,
                b'\\' | 0..=0x1f => return None,
                _ => self.i += 1,
            }
        }
        let v = self.s.get(start..self.i)?;
        self.i += 1;
        Some(v)
    }
    fn cow(&mut self) -> Option<Option<Cow<'a, str>>> {
        Some(Some(Cow::Borrowed(self.string()?)))
    }
    fn digits(&mut self) -> usize {
        let start = self.i;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.i += 1;
        }
        self.i - start
    }
    /// A JSON integer part: `0` or a digit run not starting with 0. Returns its digits.
    fn int_part(&mut self) -> Option<&'a str> {
        let start = self.i;
        let n = self.digits();
        let d = self.s.get(start..self.i)?;
        (n == 1 || (n > 1 && !d.starts_with('0'))).then_some(d)
    }
    /// An unsigned integer that fits in a `u32`, no fraction or exponent.
    fn uint(&mut self) -> Option<u32> {
        let d = self.int_part()?;
        if d.len() > 9 || matches!(self.peek(), Some(b'.' | b'e' | b'E')) {
            return None;
        }
        d.parse().ok()
    }
    /// A number with at most 15 significant digits and no exponent, as an `f64`.
    fn float(&mut self) -> Option<f64> {
        let negative = self.eat(b'-').is_some();
        let int = self.int_part()?;
        let frac = if self.eat(b'.').is_some() {
            let start = self.i;
            if self.digits() == 0 {
                return None;
            }
            self.s.get(start..self.i)?
        } else {
            ""
        };
        if matches!(self.peek(), Some(b'e' | b'E'))
            || int.len() + frac.len() > 15
            || (negative && frac.is_empty())
        {
            return None;
        }
        let mut m = 0u64;
        for b in int.bytes().chain(frac.bytes()) {
            m = m * 10 + u64::from(b - b'0');
        }
        let v = m as f64 / POW10[frac.len()];
        Some(if negative { -v } else { v })
    }
    /// The value of a field the event does not use: a string, number or literal.
    fn skip_scalar(&mut self) -> Option<()> {
        match self.peek()? {
            b'"' => self.string().map(drop),
            b't' => self.literal("true"),
            b'f' => self.literal("false"),
            b'n' => self.literal("null"),
            b'-' | b'0'..=b'9' => {
                self.eat(b'-');
                self.int_part()?;
                if self.eat(b'.').is_some() && self.digits() == 0 {
                    return None;
                }
                if self.eat(b'e').or_else(|| self.eat(b'E')).is_some() {
                    let _ = self.eat(b'+').or_else(|| self.eat(b'-'));
                    if self.digits() == 0 {
                        return None;
                    }
                }
                Some(())
            }
            _ => None,
        }
    }
    fn boolean(&mut self) -> Option<bool> {
        match self.peek()? {
            b't' => self.literal("true").map(|()| true),
            b'f' => self.literal("false").map(|()| false),
            _ => None,
        }
    }
    /// `,` (more members follow: true) or `}` (the object ends: false).
    fn next_member(&mut self) -> Option<bool> {
        self.ws();
        match self.peek()? {
            b',' => {
                self.i += 1;
                self.ws();
                Some(true)
            }
            b'}' => {
                self.i += 1;
                Some(false)
            }
            _ => None,
        }
    }
    fn key(&mut self) -> Option<&'a str> {
        let k = self.string()?;
        self.ws();
        self.eat(b':')?;
        self.ws();
        Some(k)
    }
    fn geo(&mut self) -> Option<RawGeo<'a>> {
        self.eat(b'{')?;
        self.ws();
        let (mut lat, mut lon, mut country) = (None, None, None);
        loop {
            match self.key()? {
                "lat" if lat.is_none() => lat = Some(self.float()?),
                "lon" if lon.is_none() => lon = Some(self.float()?),
                "country" if country.is_none() => country = self.cow()?,
                "lat" | "lon" | "country" => return None,
                _ => {
                    self.unknown = true;
                    self.skip_scalar()?;
                }
            }
            if !self.next_member()? {
                break;
            }
        }
        Some(RawGeo {
            lat: lat?,
            lon: lon?,
            country,
        })
    }
}

/// The event's fields if `bytes` is in the fast shape, else `None` (then ask serde_json).
pub(super) fn raw(bytes: &[u8]) -> Option<RawEvent<'_>> {
    raw_noting_unknown(bytes).map(|(r, _)| r)
}

/// [`raw`], and whether a key no event has was skipped.
pub(super) fn raw_noting_unknown(bytes: &[u8]) -> Option<(RawEvent<'_>, bool)> {
    let s = std::str::from_utf8(bytes).ok()?;
    let mut c = Cursor {
        s,
        i: 0,
        unknown: false,
    };
    let mut r = RawEvent::default();
    c.ws();
    c.eat(b'{')?;
    c.ws();
    if c.eat(b'}').is_none() {
        let mut seen = 0u32;
        loop {
            let bit = match c.key()? {
                "schema" => (0, r.schema = Some(c.uint()?)).0,
                "tx_id" => (1, r.tx_id = c.cow()?).0,
                "event_id" => (2, r.event_id = c.cow()?).0,
                "ts" => (3, r.ts = c.cow()?).0,
                "kind" => (4, r.kind = c.cow()?).0,
                "account_id" => (5, r.account_id = c.cow()?).0,
                "counterparty_id" => (6, r.counterparty_id = c.cow()?).0,
                "amount" => (7, r.amount = c.cow()?).0,
                "currency" => (8, r.currency = c.cow()?).0,
                "channel" => (9, r.channel = c.cow()?).0,
                "device_id" => (10, r.device_id = c.cow()?).0,
                "ip" => (11, r.ip = c.cow()?).0,
                "geo" => (12, r.geo = Some(c.geo()?)).0,
                "memo" => (13, r.memo = c.cow()?).0,
                "locale" => (14, r.locale = c.cow()?).0,
                "is_fraud" => (15, r.is_fraud = Some(c.boolean()?)).0,
                "fraud_scenario" => (16, r.fraud_scenario = c.cow()?).0,
                _ => {
                    c.unknown = true;
                    (32, c.skip_scalar()?).0
                }
            };
            if bit < 32 {
                // serde_json rejects a repeated field: let it say so.
                if seen & (1 << bit) != 0 {
                    return None;
                }
                seen |= 1 << bit;
            }
            if !c.next_member()? {
                break;
            }
        }
    }
    c.ws();
    (c.i == s.len()).then_some((r, c.unknown))
}

/// Unix milliseconds of `YYYY-MM-DDTHH:MM:SS[.f{1,9}]Z` in the accepted years, else `None`
/// (then the RFC 3339 parser decides).
pub(super) fn ts(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    if b.len() < 20 || *b.last()? != b'Z' {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let d = b.get(r)?;
        d.iter().try_fold(0i64, |v, &c| {
            c.is_ascii_digit().then(|| v * 10 + i64::from(c - b'0'))
        })
    };
    let sep = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if sep.iter().any(|&(i, c)| b[i] != c) {
        return None;
    }
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, sec) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let frac_ms = match b.len() {
        20 => 0,
        22..=30 if b[19] == b'.' => {
            let digits = &b[20..b.len() - 1];
            let mut ms = 0;
            for (k, &c) in digits.iter().enumerate() {
                if !c.is_ascii_digit() {
                    return None;
                }
                if k < 3 {
                    ms = ms * 10 + i64::from(c - b'0');
                }
            }
            ms * [100, 10, 1][digits.len().min(3) - 1]
        }
        _ => return None,
    };
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let month_days = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let in_range = (i64::from(super::TS_YEAR_MIN)..=i64::from(super::TS_YEAR_MAX)).contains(&y)
        && (1..=12).contains(&mo)
        && d >= 1
        && d <= month_days[(mo - 1) as usize]
        && h < 24
        && mi < 60
        && sec < 60;
    if !in_range {
        return None;
    }
    // Days since 1970-01-01 (H. Hinnant's `days_from_civil`).
    let yy = if mo <= 2 { y - 1 } else { y };
    let era = yy.div_euclid(400);
    let yoe = yy - era * 400;
    let mp = (mo + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + sec * 1000 + frac_ms)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// serde_json's reading of the same bytes, the reference.
    fn slow(bytes: &[u8]) -> Option<RawEvent<'_>> {
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let r = <RawEvent<'_> as serde::Deserialize>::deserialize(&mut de).ok()?;
        de.end().ok().map(|()| r)
    }

    /// Compared as text: `-0.0` against `0.0`, or any other bit of a float, counts.
    fn same(r: Option<RawEvent<'_>>) -> String {
        format!("{r:?}")
    }

    const TX: &str = r#"{"schema":1,"tx_id":"t-00001009","ts":"2026-11-01T01:40:45.442Z","kind":"payment","account_id":"a-000008","counterparty_id":"m-090834","amount":"150.29","currency":"EUR","channel":"app","device_id":"d-000008-1","ip":"18.180.40.67","geo":{"lat":40.4074,"lon":-3.7162,"country":"ES"},"is_fraud":false}"#;
    const ACCOUNT: &str = r#"{"schema":1,"event_id":"e-3","ts":"2022-09-24T23:47:48.652Z","kind":"account_opened","account_id":"a-000724","device_id":"d-000724-1","ip":"80.153.64.80","geo":{"lat":25.7716,"lon":-80.2216,"country":"US"},"locale":"en","currency":"USD","fraud_scenario":"x","memo":"m"}"#;

    #[test]
    fn the_shape_producers_write_takes_the_fast_path() {
        for json in [TX, ACCOUNT, "{}", " { \"schema\" : 1 , \"x\" : [1] } "] {
            let fast = raw(json.as_bytes());
            if json.contains('[') {
                assert!(fast.is_none(), "{json}: arrays go to serde_json");
                assert!(slow(json.as_bytes()).is_some());
            } else {
                assert!(fast.is_some(), "{json}");
                assert_eq!(fast, slow(json.as_bytes()), "{json}");
            }
        }
    }

    #[test]
    fn every_line_of_the_shipped_sample_takes_the_fast_path() {
        use std::io::BufRead;
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../replay-data/sample.jsonl.gz"
        );
        let file = std::fs::File::open(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        let mut n = 0;
        for line in std::io::BufReader::new(flate2::read::GzDecoder::new(file)).lines() {
            let line = line.unwrap_or_else(|e| panic!("{e}"));
            let fast = raw(line.as_bytes());
            assert!(fast.is_some(), "{line}");
            assert_eq!(same(fast), same(slow(line.as_bytes())), "{line}");
            let ts = slow(line.as_bytes()).and_then(|r| r.ts).unwrap_or_default();
            assert!(super::ts(&ts).is_some(), "{ts}");
            n += 1;
        }
        assert!(n > 30_000, "{n} lines");
    }

    #[test]
    fn timestamps_at_the_edges_of_the_calendar() {
        let reference = |s: &str| super::super::parse_ts_rfc3339(s).ok();
        for s in [
            "2000-01-01T00:00:00Z",
            "2000-02-29T12:00:00.5Z",
            "2096-02-29T23:59:59.999999999Z",
            "2100-12-31T23:59:59.999Z",
            "2024-04-30T00:00:00.1234Z",
        ] {
            assert_eq!(ts(s), reference(s), "{s}");
            assert!(ts(s).is_some(), "{s} is read fast");
        }
        for s in [
            "2100-02-29T00:00:00Z",
            "1900-02-29T00:00:00Z",
            "2023-02-29T00:00:00Z",
            "2024-04-31T00:00:00Z",
            "1999-12-31T23:59:59Z",
            "2101-01-01T00:00:00Z",
            "2024-01-01T24:00:00Z",
            "2024-01-01T00:00:00.Z",
        ] {
            assert_eq!(ts(s), None, "{s}");
        }
    }

    #[test]
    fn what_it_does_not_read_it_leaves_to_serde_json() {
        for json in [
            r#"{"tx_id":"a\"b"}"#,
            r#"{"tx_id":null}"#,
            r#"{"tx_id":"a","tx_id":"b"}"#,
            r#"{"geo":{"lat":1}}"#,
            r#"{"geo":{"lat":1,"lat":2,"lon":1}}"#,
            r#"{"geo":{"lat":1e2,"lon":1}}"#,
            r#"{"geo":{"lat":0.1234567890123456,"lon":1}}"#,
            r#"{"geo":{"lat":-0,"lon":1}}"#,
            r#"{"schema":1.0}"#,
            r#"{"schema":01}"#,
            r#"{"other":{"a":1}}"#,
            r#"{"memo":"tab	inside"}"#,
            "{\"a\":1} x",
            "{\"a\":1,}",
        ] {
            assert_eq!(raw(json.as_bytes()), None, "{json}");
        }
        assert_eq!(raw(b"{\"memo\":\"\xff\"}"), None);
    }

    fn field() -> impl Strategy<Value = String> {
        // The wire fields, one the decoder does not know and one that belongs inside `geo`.
        let mut keys = crate::event::FIELDS.to_vec();
        keys.extend(["extra", "lat"]);
        let key = prop::sample::select(keys);
        let number = (
            any::<bool>(),
            0u64..10_000_000_000_000_000,
            0usize..18,
            any::<bool>(),
        )
            .prop_map(|(neg, m, point, exp)| {
                let digits = m.to_string();
                let mut s = String::from(if neg { "-" } else { "" });
                if point > 0 && point < digits.len() {
                    s.push_str(&digits[..point]);
                    s.push('.');
                    s.push_str(&digits[point..]);
                } else {
                    s.push_str(&digits);
                }
                if exp {
                    s.push_str("e-2");
                }
                s
            });
        let value = prop_oneof![
            "[a-z0-9 .:é\u{7f}\u{85}-]{0,20}".prop_map(|s| format!("\"{s}\"")),
            Just("\"a\\nb\"".to_string()),
            number.clone(),
            prop::sample::select(vec!["true", "false", "null", "[]", "1.", "-", "01"])
                .prop_map(String::from),
            (number.clone(), number.clone(), "[A-Z]{2}")
                .prop_map(|(a, b, c)| format!(r#"{{"lat":{a},"lon":{b},"country":"{c}"}}"#)),
            // Any members in any order, repeated or missing.
            prop::collection::vec(
                (
                    prop::sample::select(vec!["lat", "lon", "country", "x"]),
                    prop_oneof![number, "[A-Z]{2}".prop_map(|c| format!("\"{c}\""))],
                ),
                0..5,
            )
            .prop_map(|m| {
                let m: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                format!("{{{}}}", m.join(","))
            }),
        ];
        (key, value, prop::sample::select(vec!["", " ", "\n"]))
            .prop_map(|(k, v, w)| format!("\"{k}\"{w}:{w}{v}"))
    }

    fn geo_members() -> impl Strategy<Value = String> {
        let value = prop_oneof![
            (-200i64..200, 0u32..100_000).prop_map(|(i, f)| format!("{i}.{f}")),
            "[A-Z]{2}".prop_map(|c| format!("\"{c}\"")),
            Just("null".to_string()),
        ];
        prop::collection::vec(
            (
                prop::sample::select(vec!["lat", "lon", "country", "x"]),
                value,
            ),
            0..5,
        )
        .prop_map(|m| {
            let m: Vec<String> = m.iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
            format!("{{\"geo\":{{{}}}}}", m.join(","))
        })
    }

    proptest! {
        /// Locations with members in any order, repeated or missing, read as serde_json does.
        #[test]
        fn geo_agrees_with_serde_json(json in geo_members()) {
            if let Some(fast) = raw(json.as_bytes()) {
                prop_assert_eq!(same(Some(fast)), same(slow(json.as_bytes())), "{}", json);
            }
        }

        /// Whatever the fast path reads, it reads exactly as serde_json does.
        #[test]
        fn the_fast_path_agrees_with_serde_json(
            fields in prop::collection::vec(field(), 0..12),
            cut in any::<prop::sample::Index>(),
            flip in any::<(prop::sample::Index, u8)>(),
        ) {
            let json = format!("{{{}}}", fields.join(","));
            let bytes = json.as_bytes();
            if let Some(fast) = raw(bytes) {
                prop_assert_eq!(same(Some(fast)), same(slow(bytes)), "{}", json);
            }
            // Cut short, or with one byte changed.
            let short = &bytes[..cut.index(bytes.len() + 1)];
            if let Some(fast) = raw(short) {
                prop_assert_eq!(same(Some(fast)), same(slow(short)));
            }
            let mut changed = bytes.to_vec();
            if !changed.is_empty() {
                let i = flip.0.index(changed.len());
                changed[i] = flip.1;
                if let Some(fast) = raw(&changed) {
                    prop_assert_eq!(same(Some(fast)), same(slow(&changed)));
                }
            }
        }

        /// Timestamps in the canonical form read as the RFC 3339 parser reads them.
        #[test]
        fn fast_timestamps_agree_with_the_rfc3339_parser(
            y in 1995i64..2106, mo in 0i64..14, d in 0i64..33,
            h in 0i64..25, mi in 0i64..61, s in 0i64..61,
            frac in "(\\.[0-9]{1,10})?",
        ) {
            let text = format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z");
            let reference = super::super::parse_ts_rfc3339(&text).ok();
            match ts(&text) {
                Some(ms) => prop_assert_eq!(Some(ms), reference, "{}", text),
                // Outside the fast form only: every valid date in range is read fast.
                None => prop_assert!(
                    reference.is_none() || frac.len() > 10 || s == 60,
                    "{} was not read fast", text
                ),
            }
        }
    }
}
