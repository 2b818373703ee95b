//! The event model: JSON on the wire, validated into typed events.
//!
//! Decoding never panics: every problem becomes an [`EventError`] naming the field, which the
//! replay reports with its line number and the Kafka path sends to the dead-letter topic.

use std::borrow::Cow;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use vigil_rules::catalog::{ACCOUNT_EVENT_KINDS, AccountEventKind, TX_KINDS};

mod fast;

/// Largest encoded event accepted, bytes.
pub const EVENT_BYTES_MAX: usize = 64 * 1024;
/// Longest id (tx_id, account_id, device_id, …), bytes.
pub const ID_BYTES_MAX: usize = 128;
/// Longest memo, bytes.
pub const MEMO_BYTES_MAX: usize = 512;
/// Longest channel name, bytes.
pub const CHANNEL_BYTES_MAX: usize = 32;
/// Largest amount, in major units: keeps every amount exact in the rules' fixed-point numbers
/// (whose largest value is about 9.2 × 10¹²; a window sum past it saturates, as the rule
/// language reference says).
pub const AMOUNT_MAJOR_MAX: i64 = 1_000_000_000_000;
/// Earliest year an event may carry.
pub const TS_YEAR_MIN: i32 = 2000;
/// Latest year an event may carry: one forged far-future timestamp must not be able to age out
/// every window and key.
pub const TS_YEAR_MAX: i32 = 2100;
/// The only schema version this build reads.
pub const SCHEMA_VERSION: u32 = 1;

/// The keys of an event on the wire (transactions and account events together).
pub const FIELDS: [&str; 17] = [
    "schema",
    "tx_id",
    "event_id",
    "ts",
    "kind",
    "account_id",
    "counterparty_id",
    "amount",
    "currency",
    "channel",
    "device_id",
    "ip",
    "geo",
    "memo",
    "locale",
    "is_fraud",
    "fraud_scenario",
];

/// ISO 4217 currencies accepted, with their decimal places.
pub const CURRENCIES: [(&str, u8); 48] = [
    ("AED", 2),
    ("ARS", 2),
    ("AUD", 2),
    ("BHD", 3),
    ("BRL", 2),
    ("CAD", 2),
    ("CHF", 2),
    ("CLP", 0),
    ("CNY", 2),
    ("COP", 2),
    ("CZK", 2),
    ("DKK", 2),
    ("EGP", 2),
    ("EUR", 2),
    ("GBP", 2),
    ("HKD", 2),
    ("HUF", 2),
    ("IDR", 2),
    ("ILS", 2),
    ("INR", 2),
    ("ISK", 0),
    ("JOD", 3),
    ("JPY", 0),
    ("KES", 2),
    ("KRW", 0),
    ("KWD", 3),
    ("MXN", 2),
    ("MYR", 2),
    ("NGN", 2),
    ("NOK", 2),
    ("NZD", 2),
    ("OMR", 3),
    ("PHP", 2),
    ("PKR", 2),
    ("PLN", 2),
    ("RON", 2),
    ("SAR", 2),
    ("SEK", 2),
    ("SGD", 2),
    ("THB", 2),
    ("TND", 3),
    ("TRY", 2),
    ("TWD", 2),
    ("UAH", 2),
    ("USD", 2),
    ("VND", 0),
    ("XOF", 0),
    ("ZAR", 2),
];

/// A currency and its decimal places.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency {
    code: [u8; 3],
    /// Decimal places of the minor unit.
    pub exponent: u8,
}

/// The codes of [`CURRENCIES`] as byte arrays.
const CODES: [[u8; 3]; CURRENCIES.len()] = {
    let mut out = [[0u8; 3]; CURRENCIES.len()];
    let mut i = 0;
    while i < CURRENCIES.len() {
        let b = CURRENCIES[i].0.as_bytes();
        assert!(b.len() == 3, "ISO 4217 codes have three letters");
        out[i] = [b[0], b[1], b[2]];
        i += 1;
    }
    out
};

impl Currency {
    /// Looks a currency up by its ISO code.
    pub fn from_code(code: &str) -> Option<Currency> {
        // Three bytes compared at once (a string comparison per entry was a visible share of
        // decoding an event).
        let code: [u8; 3] = code.as_bytes().try_into().ok()?;
        let i = CODES.iter().position(|c| *c == code)?;
        Some(Currency {
            code,
            exponent: CURRENCIES[i].1,
        })
    }
    /// The ISO code.
    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.code).unwrap_or("XXX")
    }
    /// Formats an amount in minor units as a decimal string with this currency's places.
    pub fn format(&self, minor: i64) -> String {
        Decimal::new(minor, u32::from(self.exponent)).to_string()
    }
    /// Appends [`Currency::format`]'s text to `out`, without a `Decimal` or a `String`.
    pub fn write_amount(&self, out: &mut Vec<u8>, minor: i64) {
        use std::io::Write as _;
        let exp = u32::from(self.exponent);
        let Some(unit) = 10u64.checked_pow(exp) else {
            out.extend_from_slice(self.format(minor).as_bytes());
            return;
        };
        if minor < 0 {
            out.push(b'-');
        }
        let abs = minor.unsigned_abs();
        let _ = write!(out, "{}", abs / unit);
        if exp > 0 {
            let _ = write!(out, ".{:0width$}", abs % unit, width = exp as usize);
        }
    }
    /// Formats a total in minor units (sums of many amounts need more than 64 bits).
    pub fn format_wide(&self, minor: i128) -> String {
        Decimal::try_from_i128_with_scale(minor, u32::from(self.exponent))
            .map_or_else(|_| format!("{minor}e-{}", self.exponent), |d| d.to_string())
    }
}

/// Transaction kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxKind {
    /// Wallet to wallet.
    Transfer,
    /// To a merchant.
    Payment,
    /// Out to a bank or ATM.
    Withdrawal,
    /// In from a card or bank.
    TopUp,
    /// Back from a merchant.
    Refund,
}

impl TxKind {
    /// The kind's wire name.
    pub fn name(self) -> &'static str {
        TX_KINDS[self as usize]
    }
    /// The kind named `s` on the wire.
    pub fn from_name(s: &str) -> Option<TxKind> {
        [
            TxKind::Transfer,
            TxKind::Payment,
            TxKind::Withdrawal,
            TxKind::TopUp,
            TxKind::Refund,
        ]
        .into_iter()
        .find(|k| k.name() == s)
    }
    /// The kind's bit for rules' kind tests (`vigil_rules::program::kind_bit` of its name).
    pub fn bit(self) -> u8 {
        1 << self as u8
    }
    /// Whether money leaves the account.
    pub fn is_outgoing(self) -> bool {
        matches!(
            self,
            TxKind::Transfer | TxKind::Payment | TxKind::Withdrawal
        )
    }
}

/// A location.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geo {
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
    /// ISO 3166 alpha-2, if known.
    pub country: Option<[u8; 2]>,
}

/// The ground truth carried by recorded or generated traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    /// Whether the transaction was fraud.
    pub is_fraud: bool,
    /// Which fraud pattern, when known.
    pub scenario: Option<String>,
}

/// An identifier as events carry them: short, so held inline (up to 24 bytes) instead of in a
/// heap allocation of its own — decoding a transaction made six of them.
pub type Id = compact_str::CompactString;

/// What the ids of the events Vigil makes itself start with (the transaction a ledger deposit
/// or withdrawal shows the engine): ids from outside cannot hold a control character, so these
/// can never be taken for a client's, nor a client's for them.
pub const INTERNAL_ID_PREFIX: char = '\u{1}';

/// A validated transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct Transaction {
    /// Idempotency key.
    pub tx_id: Id,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    /// What kind of movement.
    pub kind: TxKind,
    /// The paying (or, for top_up and refund, receiving) account.
    pub account_id: Id,
    /// The other side.
    pub counterparty_id: Option<Id>,
    /// Amount in minor units, > 0.
    pub amount_minor: i64,
    /// Currency.
    pub currency: Currency,
    /// Channel, e.g. app, web; empty when not given.
    pub channel: Id,
    /// Device id.
    pub device_id: Option<Id>,
    /// IP address.
    pub ip: Option<Id>,
    /// Location.
    pub geo: Option<Geo>,
    /// Free text.
    pub memo: Option<String>,
    /// Ground truth, for replay metrics only; never read by decide().
    pub label: Option<Label>,
}

/// A validated account event.
#[derive(Debug, Clone, PartialEq)]
pub struct AccountEvent {
    /// Event id.
    pub event_id: Id,
    /// Event time, Unix milliseconds.
    pub ts_ms: i64,
    /// What happened.
    pub kind: AccountEventKind,
    /// Whose account.
    pub account_id: Id,
    /// Device used.
    pub device_id: Option<Id>,
    /// IP address used.
    pub ip: Option<Id>,
    /// Where.
    pub geo: Option<Geo>,
    /// The payee, for payee_added.
    pub counterparty_id: Option<Id>,
    /// The holder's language for notifications (account_opened).
    pub locale: Option<String>,
    /// The account's currency (account_opened): with it the Kafka path opens the account in
    /// the ledger.
    pub currency: Option<Currency>,
}

/// Either kind of event.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A money movement to decide.
    Tx(Transaction),
    /// A change on the account that feeds state.
    Account(AccountEvent),
}

impl Event {
    /// Event time, Unix milliseconds.
    pub fn ts_ms(&self) -> i64 {
        match self {
            Event::Tx(t) => t.ts_ms,
            Event::Account(a) => a.ts_ms,
        }
    }
    /// The account the event belongs to (the Kafka key).
    pub fn account_id(&self) -> &str {
        match self {
            Event::Tx(t) => &t.account_id,
            Event::Account(a) => &a.account_id,
        }
    }
}

/// Why an event was rejected. Always the sender's fault: never retry it, dead-letter it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventError {
    /// The field at fault, when one is.
    pub field: Option<String>,
    /// What is wrong with it.
    pub message: String,
    /// The bytes were not one JSON object at all (bad syntax, an array), as against an object
    /// with a bad or missing field.
    pub not_json: bool,
}

impl EventError {
    fn not_json(message: String) -> EventError {
        EventError {
            field: None,
            message,
            not_json: true,
        }
    }
}

/// The field a serde error is about, and its message: serde names a missing or unknown field
/// only in its message (`missing field `lon``), at the path of the object that holds it.
pub fn serde_error_field(path: &str, message: &str) -> (Option<String>, String) {
    let message = message.split(" at line ").next().unwrap_or_default();
    let named = ["missing field `", "unknown field `", "duplicate field `"]
        .iter()
        .find_map(|p| message.strip_prefix(p)?.split('`').next());
    let path = path.trim_start_matches('.');
    let field = match (named, path) {
        // serde_path_to_error already ends the path with an unknown field's name.
        (Some(n), p) if !message.starts_with("unknown") && !p.is_empty() => {
            Some(format!("{p}.{n}"))
        }
        (Some(n), "") => Some(n.to_string()),
        (_, "") => None,
        (_, p) => Some(p.to_string()),
    };
    (field, message.to_string())
}

impl fmt::Display for EventError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.field {
            Some(field) => write!(f, "{field}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for EventError {}

fn bad(field: &str, message: impl Into<String>) -> EventError {
    EventError {
        field: Some(field.to_string()),
        message: message.into(),
        not_json: false,
    }
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct RawGeo<'a> {
    lat: f64,
    lon: f64,
    #[serde(borrow, default)]
    country: Option<Cow<'a, str>>,
}

#[derive(Debug, Default, PartialEq, Deserialize)]
struct RawEvent<'a> {
    schema: Option<u32>,
    #[serde(borrow)]
    tx_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    event_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ts: Option<Cow<'a, str>>,
    #[serde(borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    account_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    counterparty_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    amount: Option<Cow<'a, str>>,
    #[serde(borrow)]
    currency: Option<Cow<'a, str>>,
    #[serde(borrow)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow)]
    device_id: Option<Cow<'a, str>>,
    #[serde(borrow)]
    ip: Option<Cow<'a, str>>,
    #[serde(borrow)]
    geo: Option<RawGeo<'a>>,
    #[serde(borrow)]
    memo: Option<Cow<'a, str>>,
    #[serde(borrow)]
    locale: Option<Cow<'a, str>>,
    is_fraud: Option<bool>,
    #[serde(borrow)]
    fraud_scenario: Option<Cow<'a, str>>,
}

/// Decodes one JSON event.
pub fn decode(bytes: &[u8]) -> Result<Event, EventError> {
    if bytes.len() > EVENT_BYTES_MAX {
        return Err(EventError {
            field: None,
            message: format!(
                "event is {} bytes, more than the limit of {EVENT_BYTES_MAX}",
                bytes.len()
            ),
            not_json: false,
        });
    }
    if bytes.trim_ascii_start().first() != Some(&b'{') {
        return Err(EventError::not_json(
            "an event is a JSON object: expected '{'".into(),
        ));
    }
    // The shape producers write is read by hand; anything else by serde_json, first without
    // path tracking, and a bad event is parsed again with it, for the message.
    let raw = match fast::raw(bytes) {
        Some(raw) => raw,
        None => {
            let mut de = serde_json::Deserializer::from_slice(bytes);
            match RawEvent::deserialize(&mut de).and_then(|raw| de.end().map(|()| raw)) {
                Ok(raw) => raw,
                Err(_) => decode_tracked(bytes)?,
            }
        }
    };
    validate(raw)
}

/// [`decode`], refusing a field no event has ([`unknown_field`] names it): what the HTTP
/// routes read. In the shape producers write, the hand decoder notes unknown keys in its one
/// pass, so the keys are read again only when there is one to name.
pub fn decode_strict(bytes: &[u8]) -> Result<Event, EventError> {
    let fast = (bytes.len() <= EVENT_BYTES_MAX)
        .then(|| fast::raw_noting_unknown(bytes))
        .flatten();
    let (event, unknown) = match fast {
        Some((raw, unknown)) => (validate(raw)?, unknown),
        None => (decode(bytes)?, true),
    };
    match unknown.then(|| unknown_field(bytes)).flatten() {
        Some(e) => Err(e),
        None => Ok(event),
    }
}

/// Parses [`RawEvent`] tracking the path, so an error names the field that failed.
#[cold]
fn decode_tracked(bytes: &[u8]) -> Result<RawEvent<'_>, EventError> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let raw = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return EventError::not_json(format!("invalid JSON: {inner}"));
        }
        let (field, message) = serde_error_field(&path, &inner.to_string());
        EventError {
            field,
            message,
            not_json: false,
        }
    })?;
    de.end()
        .map_err(|e| EventError::not_json(format!("invalid JSON: {e}")))?;
    Ok(raw)
}

/// Decodes an event given as a JSON value (used by rule tests).
pub fn decode_value(v: &serde_json::Value) -> Result<Event, EventError> {
    let bytes = serde_json::to_vec(v).map_err(|e| EventError {
        field: None,
        message: e.to_string(),
        not_json: false,
    })?;
    decode(&bytes)
}

/// The keys of an event's `geo`.
const GEO_FIELDS: [&str; 3] = ["lat", "lon", "country"];

/// The first field of `bytes`, an event [`decode`] accepted, that no event has (`geo.alt` for
/// one in `geo`), as an error naming it. [`decode`] skips such fields: the Kafka path reads
/// events from producers that may be newer than the engine. A caller over HTTP is told
/// instead, since a misspelt `device_id` would turn the device rules off without a word.
pub fn unknown_field(bytes: &[u8]) -> Option<EventError> {
    use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};

    /// Reads one object's keys, and `geo`'s too, keeping the first unknown one's path.
    struct Keys {
        geo: bool,
    }
    impl<'de> serde::de::DeserializeSeed<'de> for Keys {
        type Value = Option<String>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_any(self)
        }
    }
    impl<'de> Visitor<'de> for Keys {
        type Value = Option<String>;
        fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
            f.write_str("an object")
        }
        // `geo: null` (no location) was accepted by `decode`.
        fn visit_unit<E>(self) -> Result<Self::Value, E> {
            Ok(None)
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut first = None;
            while let Some(key) = map.next_key::<Cow<'de, str>>()? {
                let inner = if !self.geo && key == "geo" {
                    map.next_value_seed(Keys { geo: true })?
                        .map(|k| format!("geo.{k}"))
                } else {
                    map.next_value::<IgnoredAny>()?;
                    let known: &[&str] = if self.geo { &GEO_FIELDS } else { &FIELDS };
                    (!known.contains(&&*key)).then(|| key.into_owned())
                };
                first = first.or(inner);
            }
            Ok(first)
        }
    }

    let mut de = serde_json::Deserializer::from_slice(bytes);
    let path = de.deserialize_any(Keys { geo: false }).ok()??;
    let (known, name): (&[&str], &str) = match path.strip_prefix("geo.") {
        Some(k) => (&GEO_FIELDS, k),
        None => (&FIELDS, &path),
    };
    let hint = vigil_rules::diag::suggest(name, known.iter().copied());
    let message = format!(
        "unknown field '{name}'{hint}: an event has {}",
        known.join(", ")
    );
    Some(bad(&path, message))
}

fn id(field: &str, v: Option<Cow<'_, str>>, required: bool) -> Result<Option<Id>, EventError> {
    match v {
        None if required => Err(bad(field, "is required")),
        None => Ok(None),
        Some(s) if s.is_empty() => Err(bad(field, "must not be empty")),
        Some(s) if s.len() > ID_BYTES_MAX => Err(bad(
            field,
            format!(
                "is {} bytes, more than the limit of {ID_BYTES_MAX}",
                s.len()
            ),
        )),
        Some(s) if has_control(&s) => Err(bad(field, "contains control characters")),
        Some(s) => Ok(Some(Id::from(&*s))),
    }
}

/// Whether `s` holds a control character (C0, DEL or C1).
fn has_control(s: &str) -> bool {
    if s.is_ascii() {
        s.bytes().any(|b| b < 0x20 || b == 0x7f)
    } else {
        s.chars().any(char::is_control)
    }
}

/// Parses an RFC 3339 timestamp to Unix milliseconds.
pub fn parse_ts(s: &str) -> Result<i64, EventError> {
    match fast::ts(s) {
        Some(ms) => Ok(ms),
        None => parse_ts_rfc3339(s),
    }
}

/// [`parse_ts`] for any RFC 3339 form (offsets, lowercase separators, …).
fn parse_ts_rfc3339(s: &str) -> Result<i64, EventError> {
    let t = OffsetDateTime::parse(s, &Rfc3339).map_err(|e| {
        bad(
            "ts",
            format!("'{s}' is not an RFC 3339 timestamp such as 2026-11-01T09:30:00Z ({e})"),
        )
    })?;
    let ms = i64::try_from(t.unix_timestamp_nanos().div_euclid(1_000_000))
        .map_err(|_| bad("ts", "out of range"))?;
    // The year in UTC, not at the timestamp's own offset.
    let (year, _, _) = civil_from_days(ms.div_euclid(86_400_000));
    if !(i64::from(TS_YEAR_MIN)..=i64::from(TS_YEAR_MAX)).contains(&year) {
        return Err(bad(
            "ts",
            format!("'{s}' is outside the years {TS_YEAR_MIN} to {TS_YEAR_MAX} (UTC)"),
        ));
    }
    Ok(ms)
}

/// Formats Unix milliseconds as RFC 3339 UTC with milliseconds.
pub fn format_ts(ms: i64) -> String {
    // Fast path for 1970-01-01 up to the end of year 9999 (every decision formats one): the
    // same text as below, without the formatting machinery.
    if (0..253_402_300_800_000).contains(&ms) {
        let (days, in_day) = (ms / 86_400_000, ms % 86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let digits = |out: &mut String, v: i64, width: u32| {
            for i in (0..width).rev() {
                out.push(char::from(b'0' + ((v / 10i64.pow(i)) % 10) as u8));
            }
        };
        let mut out = String::with_capacity(24);
        digits(&mut out, y, 4);
        out.push('-');
        digits(&mut out, mo, 2);
        out.push('-');
        digits(&mut out, d, 2);
        out.push('T');
        digits(&mut out, in_day / 3_600_000, 2);
        out.push(':');
        digits(&mut out, in_day / 60_000 % 60, 2);
        out.push(':');
        digits(&mut out, in_day / 1000 % 60, 2);
        out.push('.');
        digits(&mut out, in_day % 1000, 3);
        out.push('Z');
        return out;
    }
    match OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000) {
        Ok(t) => {
            let (y, mo, d) = (t.year(), u8::from(t.month()), t.day());
            format!(
                "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        }
        Err(_) => ms.to_string(),
    }
}

/// (year, month, day) of a day count since 1970-01-01, for days ≥ 0 (H. Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

fn geo(raw: Option<RawGeo<'_>>) -> Result<Option<Geo>, EventError> {
    let Some(g) = raw else { return Ok(None) };
    if !g.lat.is_finite() || !(-90.0..=90.0).contains(&g.lat) {
        return Err(bad(
            "geo.lat",
            format!("{} is not a latitude (-90 to 90)", g.lat),
        ));
    }
    if !g.lon.is_finite() || !(-180.0..=180.0).contains(&g.lon) {
        return Err(bad(
            "geo.lon",
            format!("{} is not a longitude (-180 to 180)", g.lon),
        ));
    }
    let country = match g.country {
        None => None,
        Some(c) if c.len() == 2 && c.bytes().all(|b| b.is_ascii_uppercase()) => {
            let b = c.as_bytes();
            Some([b[0], b[1]])
        }
        Some(c) => {
            return Err(bad(
                "geo.country",
                format!("'{c}' is not an ISO 3166 alpha-2 code (two uppercase letters)"),
            ));
        }
    };
    Ok(Some(Geo {
        lat: g.lat,
        lon: g.lon,
        country,
    }))
}

/// Parses a decimal amount string of `currency` to minor units: positive, at most the
/// currency's decimals, within the event limit.
pub fn parse_amount(s: &str, currency: Currency) -> Result<i64, EventError> {
    amount(Some(Cow::Borrowed(s)), currency)
}

fn amount(raw: Option<Cow<'_, str>>, currency: Currency) -> Result<i64, EventError> {
    let s = raw.ok_or_else(|| bad("amount", "is required"))?;
    match plain_amount(&s, currency.exponent) {
        Some(minor) => Ok(minor),
        None => decimal_amount(&s, currency),
    }
}

/// [`amount`] through the decimal parser: any form it accepts but exponents and digit
/// separators (`1_000` is a valid Rust literal, not an amount), and the error messages.
fn decimal_amount(s: &str, currency: Currency) -> Result<i64, EventError> {
    if s.len() > 32 || s.contains(['e', 'E', '_', '+']) {
        return Err(bad("amount", format!("'{s}' is not a plain decimal")));
    }
    let d = Decimal::from_str(s)
        .map_err(|_| bad("amount", format!("'{s}' is not a decimal number")))?;
    if d.is_sign_negative() || d.is_zero() {
        return Err(bad("amount", format!("must be positive, got {s}")));
    }
    if d.scale() > u32::from(currency.exponent) {
        return Err(bad(
            "amount",
            format!(
                "{s} has more decimals than {} allows ({})",
                currency.code(),
                currency.exponent
            ),
        ));
    }
    if d > Decimal::from(AMOUNT_MAJOR_MAX) {
        return Err(bad(
            "amount",
            format!("{s} is more than the limit of {AMOUNT_MAJOR_MAX}"),
        ));
    }
    let minor = d * Decimal::from(10i64.pow(u32::from(currency.exponent)));
    rust_decimal::prelude::ToPrimitive::to_i64(&minor).ok_or_else(|| bad("amount", "out of range"))
}

/// Minor units of a valid amount written as plain digits with an optional fraction; `None` for
/// anything else (then the decimal parser decides, and names what is wrong).
fn plain_amount(s: &str, exponent: u8) -> Option<i64> {
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| {
        (d.len() <= 18 && d.bytes().all(|b| b.is_ascii_digit()))
            .then(|| d.bytes().fold(0i64, |v, b| v * 10 + i64::from(b - b'0')))
    };
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    // "1." and ".5" are decimals too.
    let (major, frac_value, frac_len) = (digits(int)?, digits(frac)?, frac.len());
    let exp = usize::from(exponent);
    if frac_len > exp || major > AMOUNT_MAJOR_MAX || (major == AMOUNT_MAJOR_MAX && frac_value > 0) {
        return None;
    }
    let minor =
        major * 10i64.pow(u32::from(exponent)) + frac_value * 10i64.pow((exp - frac_len) as u32);
    (minor > 0).then_some(minor)
}

/// A currency code this build does not know, with the code it likely meant.
fn unknown_currency(code: &str) -> EventError {
    let upper = code.to_ascii_uppercase();
    let hint = if upper != code && Currency::from_code(&upper).is_some() {
        format!(" (codes are upper case: '{upper}')")
    } else {
        String::new()
    };
    bad("currency", format!("unknown currency '{code}'{hint}"))
}

fn validate(r: RawEvent<'_>) -> Result<Event, EventError> {
    match r.schema {
        Some(SCHEMA_VERSION) => {}
        Some(v) => {
            return Err(bad(
                "schema",
                format!("version {v} is not supported (this build reads {SCHEMA_VERSION})"),
            ));
        }
        None => return Err(bad("schema", "is required")),
    }
    let kind = r
        .kind
        .as_deref()
        .ok_or_else(|| bad("kind", "is required"))?;
    let ts_text = r.ts.as_deref().ok_or_else(|| bad("ts", "is required"))?;
    let ts_ms = parse_ts(ts_text)?;
    let account_id = id("account_id", r.account_id, true)?.unwrap_or_default();
    let device_id = id("device_id", r.device_id, false)?;
    let ip = id("ip", r.ip, false)?;
    let geo = geo(r.geo)?;
    let counterparty_id = id("counterparty_id", r.counterparty_id, false)?;
    if let Some(kind) = TxKind::from_name(kind) {
        let tx_id = id("tx_id", r.tx_id, true)?.unwrap_or_default();
        let code = r
            .currency
            .as_deref()
            .ok_or_else(|| bad("currency", "is required"))?;
        let currency = Currency::from_code(code).ok_or_else(|| unknown_currency(code))?;
        let amount_minor = amount(r.amount, currency)?;
        let channel = match r.channel {
            None => Id::default(),
            Some(c) if c.len() > CHANNEL_BYTES_MAX => {
                return Err(bad(
                    "channel",
                    format!("is longer than {CHANNEL_BYTES_MAX} bytes"),
                ));
            }
            Some(c) if has_control(&c) => {
                return Err(bad("channel", "contains control characters"));
            }
            Some(c) => Id::from(&*c),
        };
        let memo = match r.memo {
            Some(m) if m.len() > MEMO_BYTES_MAX => {
                return Err(bad(
                    "memo",
                    format!(
                        "is {} bytes, more than the limit of {MEMO_BYTES_MAX}",
                        m.len()
                    ),
                ));
            }
            m => m.map(Cow::into_owned),
        };
        if kind == TxKind::Transfer && counterparty_id.is_none() {
            return Err(bad("counterparty_id", "is required for a transfer"));
        }
        if counterparty_id.as_deref() == Some(account_id.as_str()) {
            return Err(bad("counterparty_id", "is the same as account_id"));
        }
        // Printed as it is in replay's report, on a terminal.
        if r.fraud_scenario.as_deref().is_some_and(has_control) {
            return Err(bad("fraud_scenario", "contains control characters"));
        }
        let label = r.is_fraud.map(|is_fraud| Label {
            is_fraud,
            scenario: r.fraud_scenario.map(Cow::into_owned),
        });
        return Ok(Event::Tx(Transaction {
            tx_id,
            ts_ms,
            kind,
            account_id,
            counterparty_id,
            amount_minor,
            currency,
            channel,
            device_id,
            ip,
            geo,
            memo,
            label,
        }));
    }
    if let Some(k) = AccountEventKind::from_name(kind) {
        let event_id = id("event_id", r.event_id.or(r.tx_id), true)?.unwrap_or_default();
        let locale = match r.locale {
            Some(l) if l.len() > 16 => return Err(bad("locale", "is longer than 16 bytes")),
            Some(l) if has_control(&l) => return Err(bad("locale", "contains control characters")),
            l => l.map(Cow::into_owned),
        };
        let currency = match r.currency.as_deref() {
            Some(code) => Some(Currency::from_code(code).ok_or_else(|| unknown_currency(code))?),
            None => None,
        };
        return Ok(Event::Account(AccountEvent {
            event_id,
            ts_ms,
            kind: k,
            account_id,
            device_id,
            ip,
            geo,
            counterparty_id,
            locale,
            currency,
        }));
    }
    let all: Vec<&str> = TX_KINDS
        .iter()
        .chain(ACCOUNT_EVENT_KINDS.iter())
        .copied()
        .collect();
    Err(bad(
        "kind",
        format!(
            "unknown event kind '{kind}'{}",
            vigil_rules::diag::suggest(kind, all)
        ),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"{"schema":1,"tx_id":"t-1","ts":"2026-11-23T09:41:07.120Z","kind":"transfer","account_id":"a-17","counterparty_id":"a-92","amount":"250.00","currency":"USD","channel":"app","device_id":"d-5f2","ip":"203.0.113.7","geo":{"lat":31.23,"lon":121.47,"country":"CN"},"memo":"rent"}"#;

    fn err_of(json: &str) -> String {
        decode(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn each_kind_has_the_bit_rules_test_it_by() {
        for name in TX_KINDS {
            let kind = TxKind::from_name(name).expect("every kind has a variant");
            assert_eq!(kind.bit(), vigil_rules::program::kind_bit(name), "{name}");
        }
    }

    #[test]
    fn unknown_fields_are_named_with_the_closest_known_one() {
        assert!(unknown_field(GOOD.as_bytes()).is_none());
        assert!(decode_strict(GOOD.as_bytes()).is_ok());
        let with = |extra: &str| GOOD.replacen("\"memo\"", &format!("{extra},\"memo\""), 1);
        let typo = with(r#""device":"d-1""#);
        assert!(decode(typo.as_bytes()).is_ok(), "decode skips it");
        let e = unknown_field(typo.as_bytes()).expect("named");
        assert_eq!(e.field.as_deref(), Some("device"));
        assert_eq!(decode_strict(typo.as_bytes()).err(), Some(e.clone()));
        assert!(
            e.message.starts_with(
                "unknown field 'device' (did you mean 'device_id'?): an event has schema, tx_id,"
            ),
            "{e}"
        );
        // Nested values, escapes in the key and the first of several.
        let e = unknown_field(with(r#""x\u0079":{"a":[1,{"b":null}]},"zz":1"#).as_bytes());
        assert_eq!(e.and_then(|e| e.field).as_deref(), Some("xy"));
        let geo = GOOD.replace(r#""country":"CN""#, r#""country":"CN","alt":12.5"#);
        let e = unknown_field(geo.as_bytes()).expect("named");
        assert_eq!(e.field.as_deref(), Some("geo.alt"));
        assert_eq!(decode_strict(geo.as_bytes()).err(), Some(e.clone()));
        // Off the fast path (an escape in a value), the same.
        let escaped = geo.replace("\"rent\"", "\"r\\u0065nt\"");
        assert_eq!(decode_strict(escaped.as_bytes()).err(), Some(e.clone()));
        assert_eq!(
            e.message,
            "unknown field 'alt': an event has lat, lon, country"
        );
        let no_geo = GOOD.replace(r#"{"lat":31.23,"lon":121.47,"country":"CN"}"#, "null");
        assert!(decode(no_geo.as_bytes()).is_ok());
        assert!(unknown_field(no_geo.as_bytes()).is_none());
    }

    #[test]
    fn control_characters_are_refused_in_every_text_field_but_the_memo() {
        let opened = r#"{"schema":1,"event_id":"e-1","ts":"2026-11-23T09:00:00Z","kind":"account_opened","account_id":"a-1","locale":"zh"}"#;
        let labelled = format!(
            r#"{},"is_fraud":true,"fraud_scenario":"ato"}}"#,
            GOOD.strip_suffix('}').expect("an object")
        );
        for (json, field, value) in [
            (GOOD, "channel", "\"app\""),
            (opened, "locale", "\"zh\""),
            (labelled.as_str(), "fraud_scenario", "\"ato\""),
            (GOOD, "device_id", "\"d-5f2\""),
        ] {
            assert!(decode(json.as_bytes()).is_ok(), "{field}");
            for bad in [
                "\"a\\u0000b\"",
                "\"\\u001b[2J\"",
                "\"a\\u0085\"",
                "\"a\u{85}\"",
            ] {
                let e = decode(json.replacen(value, bad, 1).as_bytes()).expect_err(field);
                assert_eq!(e.field.as_deref(), Some(field), "{bad}");
                assert_eq!(e.message, "contains control characters");
            }
        }
        let memo = GOOD.replace("\"rent\"", "\"rent\\nfor May\"");
        assert!(decode(memo.as_bytes()).is_ok());
    }

    #[test]
    fn amounts_at_the_limit() {
        let eur = Currency::from_code("EUR").expect("known");
        assert_eq!(
            plain_amount("1000000000000.00", 2),
            Some(100_000_000_000_000)
        );
        assert_eq!(plain_amount("1000000000000.01", 2), None);
        assert_eq!(plain_amount("999999999999.99", 2), Some(99_999_999_999_999));
        assert!(decimal_amount("1000000000000.01", eur).is_err());
        assert_eq!(
            decimal_amount("999999999999.99", eur).ok(),
            Some(99_999_999_999_999)
        );
    }

    proptest::proptest! {
        /// Amounts read without the decimal parser read as it reads them, and every plain
        /// amount takes that path.
        #[test]
        fn plain_amounts_agree_with_the_decimal_parser(
            text in "[0-9]{0,19}(\\.[0-9]{0,5})?",
            code in proptest::sample::select(vec!["EUR", "JPY", "KWD", "USD"]),
        ) {
            let currency = Currency::from_code(code).expect("known");
            let reference = decimal_amount(&text, currency).ok();
            match plain_amount(&text, currency.exponent) {
                Some(minor) => proptest::prop_assert_eq!(Some(minor), reference, "{}", text),
                // Integer parts of 19 digits or more (zero-padded) go to the decimal parser.
                None => proptest::prop_assert!(
                    reference.is_none() || text.split('.').next().is_some_and(|i| i.len() > 18),
                    "{} {} not read fast", text, code
                ),
            }
        }
    }

    #[test]
    fn format_ts_fast_path_matches_the_calendar() {
        let slow = |ms: i64| {
            let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap_or_else(|e| panic!("{e}"));
            format!(
                "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute(),
                t.second(),
                t.millisecond()
            )
        };
        let end = 253_402_300_800_000i64;
        let mut ms = 0i64;
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..200_000 {
            let v = match i % 4 {
                0 => ms,
                1 => end - 1 - ms,
                _ => {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x % end as u64) as i64
                }
            };
            assert_eq!(format_ts(v), slow(v), "{v}");
            ms += 86_399_999 / 7;
        }
        for v in [0, 951_782_400_000, 4_107_542_400_000, end - 1] {
            assert_eq!(format_ts(v), slow(v), "{v}");
        }
        assert_eq!(format_ts(-1), "1969-12-31T23:59:59.999Z");
        assert_eq!(format_ts(end), end.to_string(), "past the calendar's range");
    }

    #[test]
    fn a_good_transaction_decodes_to_minor_units() {
        let Event::Tx(t) = decode(GOOD.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(t.amount_minor, 25_000);
        assert_eq!(t.currency.code(), "USD");
        assert_eq!(format_ts(t.ts_ms), "2026-11-23T09:41:07.120Z");
        assert_eq!(t.geo.unwrap().country, Some(*b"CN"));
    }

    #[test]
    fn each_bad_field_is_named() {
        let cases = [
            (
                GOOD.replace("\"250.00\"", "\"250.001\""),
                "amount: 250.001 has more decimals than USD allows (2)",
            ),
            (
                GOOD.replace("\"250.00\"", "250.0"),
                "amount: invalid type: floating point `250.0`, expected a string",
            ),
            (
                GOOD.replace("\"250.00\"", "\"-5\""),
                "amount: must be positive, got -5",
            ),
            (
                GOOD.replace("\"250.00\"", "\"0\""),
                "amount: must be positive, got 0",
            ),
            (
                GOOD.replace("\"250.00\"", "\"1e3\""),
                "amount: '1e3' is not a plain decimal",
            ),
            (
                GOOD.replace("\"250.00\"", "\"1_000\""),
                "amount: '1_000' is not a plain decimal",
            ),
            (
                GOOD.replace("\"250.00\"", "\"1_0.0_0\""),
                "amount: '1_0.0_0' is not a plain decimal",
            ),
            (
                GOOD.replace("\"250.00\"", "\"5_\""),
                "amount: '5_' is not a plain decimal",
            ),
            (
                GOOD.replace("\"250.00\"", "\"+5\""),
                "amount: '+5' is not a plain decimal",
            ),
            (
                GOOD.replace("USD", "XYZ"),
                "currency: unknown currency 'XYZ'",
            ),
            (
                GOOD.replace("2026-11-23T09:41:07.120Z", "yesterday"),
                "ts: 'yesterday' is not an RFC 3339 timestamp",
            ),
            (
                GOOD.replace("2026-11-23", "2999-11-23"),
                "ts: '2999-11-23T09:41:07.120Z' is outside the years 2000 to 2100 (UTC)",
            ),
            (
                GOOD.replace("2026-11-23T09:41:07.120Z", "2100-12-31T23:00:00-05:00"),
                "ts: '2100-12-31T23:00:00-05:00' is outside the years 2000 to 2100 (UTC)",
            ),
            (
                GOOD.replace("2026-11-23T09:41:07.120Z", "2000-01-01T00:30:00+01:00"),
                "ts: '2000-01-01T00:30:00+01:00' is outside the years 2000 to 2100 (UTC)",
            ),
            (
                GOOD.replace("31.23", "91.5"),
                "geo.lat: 91.5 is not a latitude (-90 to 90)",
            ),
            (
                GOOD.replace("121.47", "-181"),
                "geo.lon: -181 is not a longitude (-180 to 180)",
            ),
            (
                GOOD.replace("\"CN\"", "\"China\""),
                "geo.country: 'China' is not an ISO 3166 alpha-2 code",
            ),
            (
                GOOD.replace("\"transfer\"", "\"transfr\""),
                "kind: unknown event kind 'transfr' (did you mean 'transfer'?)",
            ),
            (
                GOOD.replace("\"schema\":1", "\"schema\":2"),
                "schema: version 2 is not supported",
            ),
            (GOOD.replace("\"tx_id\":\"t-1\",", ""), "tx_id: is required"),
            (
                GOOD.replace("\"a-17\"", "\"a-92\""),
                "counterparty_id: is the same as account_id",
            ),
            (
                GOOD.replace("\"d-5f2\"", &format!("\"{}\"", "d".repeat(200))),
                "device_id: is 200 bytes, more than the limit of 128",
            ),
            (
                GOOD.replace("\"rent\"", &format!("\"{}\"", "m".repeat(600))),
                "memo: is 600 bytes, more than the limit of 512",
            ),
            (GOOD[..40].to_string(), "invalid JSON: EOF while parsing"),
            (format!("{GOOD} x"), "invalid JSON: trailing characters"),
            ("[1,2]".to_string(), "an event is a JSON object"),
            (
                "{\"schema\":\"1\"}".to_string(),
                "schema: invalid type: string \"1\", expected u32",
            ),
        ];
        for (json, want) in cases {
            let got = err_of(&json);
            assert!(got.starts_with(want), "got {got:?}, want {want:?}");
        }
        let huge = format!("{{\"memo\":\"{}\"}}", "x".repeat(EVENT_BYTES_MAX));
        assert!(err_of(&huge).contains("more than the limit of 65536"));
    }

    #[test]
    fn account_events_decode() {
        let json = r#"{"schema":1,"event_id":"e-1","ts":"2026-11-23T09:00:00Z","kind":"password_reset","account_id":"a-17"}"#;
        let Event::Account(a) = decode(json.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(a.kind.name(), "password_reset");
        assert_eq!(a.currency, None);
        let opened = r#"{"schema":1,"event_id":"e-2","ts":"2026-11-23T09:00:00Z","kind":"account_opened","account_id":"a-18","locale":"zh","currency":"JPY"}"#;
        let Event::Account(a) = decode(opened.as_bytes()).unwrap() else {
            panic!()
        };
        assert_eq!(a.currency.as_ref().map(Currency::code), Some("JPY"));
        let bad = opened.replace("JPY", "YEN");
        assert_eq!(
            decode(bad.as_bytes()).unwrap_err().to_string(),
            "currency: unknown currency 'YEN'"
        );
    }
}
