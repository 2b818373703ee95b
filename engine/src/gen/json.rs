//! JSON line rendering. Written by hand for exact number formats: coordinates always with four
//! decimals, amounts as decimal strings with exactly the currency's decimals, timestamps as
//! RFC 3339 UTC with milliseconds. Optional fields are omitted, never `null`.

use super::model::{AcctPlan, DAY, Device, Geo, Ip, Party, Spot, TxPlan, civil_from_days};
use std::fmt::Write;

/// Appends `"ts"` formatted as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) fn push_ts(buf: &mut String, ms: i64) {
    let (y, mo, d) = civil_from_days(ms.div_euclid(DAY));
    let rem = ms.rem_euclid(DAY);
    let (h, mi, s, milli) = (
        rem / 3_600_000,
        rem / 60_000 % 60,
        rem / 1000 % 60,
        rem % 1000,
    );
    let _ = write!(
        buf,
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}.{milli:03}Z"
    );
}

/// Appends a positive minor-unit amount as a decimal string with `decimals` decimals.
pub(crate) fn push_amount(buf: &mut String, minor: i64, decimals: u32) {
    if decimals == 0 {
        let _ = write!(buf, "{minor}");
    } else {
        let scale = 10i64.pow(decimals);
        let width = decimals as usize;
        let _ = write!(buf, "{}.{:0width$}", minor / scale, minor % scale);
    }
}

fn push_e4(buf: &mut String, v: i32) {
    let sign = if v < 0 { "-" } else { "" };
    let a = v.unsigned_abs();
    let _ = write!(buf, "{sign}{}.{:04}", a / 10_000, a % 10_000);
}

fn push_str(buf: &mut String, s: &str) {
    buf.push('"');
    for c in s.chars() {
        match c {
            '"' => buf.push_str("\\\""),
            '\\' => buf.push_str("\\\\"),
            c if u32::from(c) < 0x20 => {
                let _ = write!(buf, "\\u{:04x}", u32::from(c));
            }
            c => buf.push(c),
        }
    }
    buf.push('"');
}

fn push_key(buf: &mut String, key: &str) {
    buf.push_str(",\"");
    buf.push_str(key);
    buf.push_str("\":");
}

fn push_account(buf: &mut String, idx: u32) {
    let _ = write!(buf, "\"a-{:06}\"", u64::from(idx) + 1);
}

fn push_party(buf: &mut String, party: Party) {
    let _ = match party {
        Party::Account(i) => write!(buf, "\"a-{:06}\"", u64::from(i) + 1),
        Party::Merchant(m) => write!(buf, "\"m-{m:06}\""),
        Party::Bank(i) => write!(buf, "\"bank-{:06}\"", u64::from(i) + 1),
        Party::Card(i) => write!(buf, "\"card-{:06}\"", u64::from(i) + 1),
    };
}

fn push_device(buf: &mut String, d: Device) {
    let _ = write!(buf, "\"d-{:06}-{}\"", u64::from(d.account) + 1, d.n);
}

fn push_ip(buf: &mut String, ip: Ip) {
    let [a, b, c, d] = ip.0;
    let _ = write!(buf, "\"{a}.{b}.{c}.{d}\"");
}

fn push_geo(buf: &mut String, geo: &Geo) {
    buf.push_str("{\"lat\":");
    push_e4(buf, geo.lat_e4);
    buf.push_str(",\"lon\":");
    push_e4(buf, geo.lon_e4);
    buf.push_str(",\"country\":");
    push_str(buf, geo.country);
    buf.push('}');
}

/// `device_id`, `ip` and (when known) `geo`.
fn push_spot(buf: &mut String, device: Device, spot: &Spot) {
    push_key(buf, "device_id");
    push_device(buf, device);
    push_key(buf, "ip");
    push_ip(buf, spot.ip);
    if let Some(geo) = &spot.geo {
        push_key(buf, "geo");
        push_geo(buf, geo);
    }
}

/// Renders a transaction line (with trailing newline) into `buf`, replacing its contents.
pub(crate) fn tx_line(buf: &mut String, number: u64, ts: i64, tx: &TxPlan, amount: i64) {
    buf.clear();
    let _ = write!(buf, "{{\"schema\":1,\"tx_id\":\"t-{number:08}\"");
    push_key(buf, "ts");
    buf.push('"');
    push_ts(buf, ts);
    buf.push('"');
    push_key(buf, "kind");
    push_str(buf, tx.kind.as_str());
    push_key(buf, "account_id");
    push_account(buf, tx.origin.account);
    push_key(buf, "counterparty_id");
    push_party(buf, tx.counterparty);
    push_key(buf, "amount");
    buf.push('"');
    push_amount(buf, amount, tx.origin.currency.decimals());
    buf.push('"');
    push_key(buf, "currency");
    push_str(buf, tx.origin.currency.code());
    push_key(buf, "channel");
    push_str(buf, tx.origin.channel.as_str());
    push_spot(buf, tx.origin.device, &tx.origin.spot);
    if let Some(memo) = tx.memo {
        push_key(buf, "memo");
        push_str(buf, memo);
    }
    push_key(buf, "is_fraud");
    buf.push_str(if tx.fraud.is_some() { "true" } else { "false" });
    if let Some(scenario) = tx.fraud {
        push_key(buf, "fraud_scenario");
        push_str(buf, scenario.name());
    }
    buf.push_str("}\n");
}

/// Renders an account event line (with trailing newline) into `buf`, replacing its contents.
pub(crate) fn acct_line(buf: &mut String, number: u64, ts: i64, ev: &AcctPlan) {
    buf.clear();
    let _ = write!(buf, "{{\"schema\":1,\"event_id\":\"e-{number:08}\"");
    push_key(buf, "ts");
    buf.push('"');
    push_ts(buf, ts);
    buf.push('"');
    push_key(buf, "kind");
    push_str(buf, ev.kind.as_str());
    push_key(buf, "account_id");
    push_account(buf, ev.account);
    if let Some(party) = ev.counterparty {
        push_key(buf, "counterparty_id");
        push_party(buf, party);
    }
    push_spot(buf, ev.device, &ev.spot);
    if let Some(locale) = ev.locale {
        push_key(buf, "locale");
        push_str(buf, locale);
    }
    if let Some(currency) = ev.currency {
        push_key(buf, "currency");
        push_str(buf, currency.code());
    }
    buf.push_str("}\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_the_time_crate() {
        let fmt = time::format_description::well_known::Rfc3339;
        for ms in [
            0i64,
            1_793_491_200_000,
            1_793_491_267_120,
            -86_400_001,
            951_782_400_999,
        ] {
            let mut ours = String::new();
            push_ts(&mut ours, ms);
            let dt = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
                .unwrap();
            let theirs = dt.format(&fmt).unwrap();
            // `time` trims trailing zeros of the fraction; compare parsed instants instead.
            let back = time::OffsetDateTime::parse(&ours, &fmt).unwrap();
            assert_eq!(back, dt, "{ours} vs {theirs}");
            assert_eq!(ours.len(), 24, "{ours}");
        }
    }

    #[test]
    fn amounts_and_coordinates() {
        let mut s = String::new();
        push_amount(&mut s, 25_000, 2);
        s.push(' ');
        push_amount(&mut s, 5, 2);
        s.push(' ');
        push_amount(&mut s, 1234, 0);
        s.push(' ');
        push_e4(&mut s, -235_505);
        s.push(' ');
        push_e4(&mut s, -5);
        s.push(' ');
        push_e4(&mut s, 525_200);
        assert_eq!(s, "250.00 0.05 1234 -23.5505 -0.0005 52.5200");
    }
}
