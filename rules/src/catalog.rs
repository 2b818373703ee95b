//! The names a rule can use, and the contract with the engine that computes them.
//!
//! Event fields are read straight from [`crate::Facts`]. Features (window aggregates, geo,
//! account history) are listed in a compiled program as [`Feature`]s; the engine computes one
//! value per feature slot before evaluation, so a program only pays for what its rules use.

/// The type of an expression.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A fixed-point decimal: amounts in major units, counts, distances.
    Num,
    /// A length of time.
    Dur,
    /// `true` or `false`.
    Bool,
    /// Text.
    Str,
    /// A set of strings, usable only on the right of `in`.
    List,
}

impl Ty {
    /// How the type is named in messages.
    pub fn name(self) -> &'static str {
        match self {
            Ty::Num => "number",
            Ty::Dur => "duration",
            Ty::Bool => "boolean",
            Ty::Str => "string",
            Ty::List => "list",
        }
    }
}

/// Text fields of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum StrField {
    Kind,
    Currency,
    Channel,
    Country,
    AccountId,
    CounterpartyId,
    DeviceId,
    Ip,
    Memo,
}

/// Numeric fields of a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumField {
    /// The amount in major units of the transaction's currency.
    Amount,
    /// Hour of the day of the event time, UTC, 0–23.
    Hour,
}

/// What literal values a string field accepts, so typos in rules are caught at load.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Domain {
    /// Any text.
    Any,
    /// A transaction kind.
    Kind,
    /// An ISO 3166 alpha-2 country code.
    Country,
    /// An ISO 4217 currency code.
    Currency,
}

/// Transaction kinds.
pub const TX_KINDS: [&str; 5] = ["transfer", "payment", "withdrawal", "top_up", "refund"];

/// Account event kinds that `since(...)` accepts.
pub const ACCOUNT_EVENT_KINDS: [&str; 7] = [
    "account_opened",
    "login",
    "new_device",
    "password_reset",
    "email_changed",
    "phone_changed",
    "payee_added",
];

/// An account event kind, as an index into [`ACCOUNT_EVENT_KINDS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AccountEventKind(pub u8);

impl AccountEventKind {
    /// Looks a kind up by name.
    pub fn from_name(name: &str) -> Option<Self> {
        ACCOUNT_EVENT_KINDS
            .iter()
            .position(|k| *k == name)
            .map(|i| AccountEventKind(i as u8))
    }
    /// The kind's name.
    pub fn name(self) -> &'static str {
        ACCOUNT_EVENT_KINDS[usize::from(self.0)]
    }
}

/// Whose window an aggregate runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyKind {
    /// The paying account.
    Account,
    /// The device the transaction came from.
    Device,
    /// The IP address it came from.
    Ip,
    /// The payee (another account, a merchant, a bank).
    Counterparty,
}

impl KeyKind {
    /// All keys, in store order.
    pub const ALL: [KeyKind; 4] = [
        KeyKind::Account,
        KeyKind::Device,
        KeyKind::Ip,
        KeyKind::Counterparty,
    ];
    /// The key's name in rules.
    pub fn name(self) -> &'static str {
        match self {
            KeyKind::Account => "account",
            KeyKind::Device => "device",
            KeyKind::Ip => "ip",
            KeyKind::Counterparty => "counterparty",
        }
    }
    fn from_name(n: &str) -> Option<Self> {
        KeyKind::ALL.into_iter().find(|k| k.name() == n)
    }
}

/// What `distinct(...)` counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[allow(missing_docs)]
pub enum DistinctOf {
    Counterparty,
    Device,
    Ip,
    Country,
    Account,
}

impl DistinctOf {
    /// All measures.
    pub const ALL: [DistinctOf; 5] = [
        DistinctOf::Counterparty,
        DistinctOf::Device,
        DistinctOf::Ip,
        DistinctOf::Country,
        DistinctOf::Account,
    ];
    /// The measure's name in rules.
    pub fn name(self) -> &'static str {
        match self {
            DistinctOf::Counterparty => "counterparty",
            DistinctOf::Device => "device",
            DistinctOf::Ip => "ip",
            DistinctOf::Country => "country",
            DistinctOf::Account => "account",
        }
    }
    fn key(self) -> Option<KeyKind> {
        match self {
            DistinctOf::Counterparty => Some(KeyKind::Counterparty),
            DistinctOf::Device => Some(KeyKind::Device),
            DistinctOf::Ip => Some(KeyKind::Ip),
            DistinctOf::Account => Some(KeyKind::Account),
            DistinctOf::Country => None,
        }
    }
}

/// The aggregate function of a window feature.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggFunc {
    /// Number of transactions.
    Count,
    /// Sum of amounts.
    Sum,
    /// Mean amount (0 when the window is empty).
    Avg,
    /// Largest amount (0 when empty).
    Max,
    /// Smallest amount (0 when empty).
    Min,
    /// Number of distinct values.
    Distinct(DistinctOf),
}

/// A window aggregate: `FUNC(MEASURE by KEY over WINDOW)`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AggSpec {
    /// What is computed.
    pub func: AggFunc,
    /// Whose window.
    pub key: KeyKind,
    /// Window length, milliseconds.
    pub window_ms: i64,
}

/// A value the engine computes from state for one event. Windows include the current
/// transaction; "previous" features exclude it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Feature {
    /// A window aggregate (number).
    Agg(AggSpec),
    /// Kilometres between this transaction and the account's previous located one (0 without).
    TravelDistanceKm,
    /// Implied speed from the previous located transaction, km/h (0 without one).
    TravelSpeedKmh,
    /// Kilometres from the account's usual location (0 until one is known).
    HomeDistanceKm,
    /// The account has not transacted from this country before (false without a country or
    /// without history).
    IsNewCountry,
    /// The device was first used for a transaction on this account less than 24 hours ago (or
    /// now), and the account had used another device before (false without a device id).
    IsNewDevice,
    /// The account first paid this counterparty less than 24 hours ago (or now); outgoing
    /// kinds only.
    IsNewPayee,
    /// Time since the account's last event of this kind ("never" when none).
    Since(AccountEventKind),
    /// Time since the account was opened (or first seen).
    AccountAge,
    /// Time since the counterparty's account was opened, when it is an account Vigil knows
    /// ("never", i.e. very old, otherwise).
    PayeeAccountAge,
    /// Average amount of the account's previous outgoing transactions (transfer, payment,
    /// withdrawal) over the window (0 when none).
    UsualAmount {
        /// Window length, milliseconds.
        window_ms: i64,
    },
    /// The account's available balance before this transaction, major units.
    Balance,
    /// Number of earlier transactions of the account that state remembers.
    HistoryCount,
}

impl Feature {
    /// The type of the feature's value.
    pub fn ty(self) -> Ty {
        match self {
            Feature::Agg(_)
            | Feature::TravelDistanceKm
            | Feature::TravelSpeedKmh
            | Feature::HomeDistanceKm
            | Feature::UsualAmount { .. }
            | Feature::Balance
            | Feature::HistoryCount => Ty::Num,
            Feature::IsNewCountry | Feature::IsNewDevice | Feature::IsNewPayee => Ty::Bool,
            Feature::Since(_) | Feature::AccountAge | Feature::PayeeAccountAge => Ty::Dur,
        }
    }
}

/// A name that resolves without arguments.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Named {
    /// A text field.
    Str(StrField, Domain),
    /// A number field.
    Num(NumField),
    /// Whether the event carries a location.
    HasGeo,
    /// A feature computed from state.
    Feature(Feature),
    /// The account's home countries (a list).
    HomeCountries,
}

/// Every name usable without arguments, with its meaning. `docs/rule-language.md` documents
/// each one.
pub const NAMES: [(&str, Named); 23] = [
    ("amount", Named::Num(NumField::Amount)),
    ("hour", Named::Num(NumField::Hour)),
    ("kind", Named::Str(StrField::Kind, Domain::Kind)),
    ("currency", Named::Str(StrField::Currency, Domain::Currency)),
    ("channel", Named::Str(StrField::Channel, Domain::Any)),
    ("country", Named::Str(StrField::Country, Domain::Country)),
    ("account_id", Named::Str(StrField::AccountId, Domain::Any)),
    (
        "counterparty_id",
        Named::Str(StrField::CounterpartyId, Domain::Any),
    ),
    ("device_id", Named::Str(StrField::DeviceId, Domain::Any)),
    ("ip", Named::Str(StrField::Ip, Domain::Any)),
    ("memo", Named::Str(StrField::Memo, Domain::Any)),
    ("has_geo", Named::HasGeo),
    (
        "travel_distance_km",
        Named::Feature(Feature::TravelDistanceKm),
    ),
    ("travel_speed_kmh", Named::Feature(Feature::TravelSpeedKmh)),
    ("home_distance_km", Named::Feature(Feature::HomeDistanceKm)),
    ("is_new_country", Named::Feature(Feature::IsNewCountry)),
    ("is_new_device", Named::Feature(Feature::IsNewDevice)),
    ("is_new_payee", Named::Feature(Feature::IsNewPayee)),
    ("account_age", Named::Feature(Feature::AccountAge)),
    (
        "payee_account_age",
        Named::Feature(Feature::PayeeAccountAge),
    ),
    ("balance", Named::Feature(Feature::Balance)),
    ("history_count", Named::Feature(Feature::HistoryCount)),
    ("home_countries", Named::HomeCountries),
];

/// Functions callable with arguments (besides the aggregates).
pub const FUNCTIONS: [&str; 4] = ["since", "usual_amount", "abs", "contains"];

/// Looks up a name usable without arguments.
pub fn lookup(name: &str) -> Option<Named> {
    NAMES.iter().find(|(n, _)| *n == name).map(|(_, v)| *v)
}

/// All names and functions, for "did you mean" suggestions.
pub fn all_names() -> impl Iterator<Item = &'static str> {
    NAMES
        .iter()
        .map(|(n, _)| *n)
        .chain(FUNCTIONS)
        .chain(crate::parse::AGG_FUNCS)
}

/// Resolves `func(measure by key over window)`, or says what is wrong and where
/// (`0` = measure, `1` = key).
pub fn resolve_agg(
    func: &str,
    measure: &str,
    key: &str,
) -> Result<(AggFunc, KeyKind), (u8, String)> {
    let key_kind = KeyKind::from_name(key).ok_or_else(|| {
        (
            1,
            format!(
                "unknown key '{key}': windows are kept by account, device, ip or counterparty{}",
                crate::diag::suggest(key, KeyKind::ALL.map(KeyKind::name))
            ),
        )
    })?;
    let func = match func {
        "count" if measure == "tx" => AggFunc::Count,
        "count" => {
            return Err((
                0,
                if DistinctOf::ALL.iter().any(|d| d.name() == measure) {
                    format!(
                        "count counts transactions: write 'count(tx by {key} over ...)', or distinct({measure} by {key} over ...) for distinct values"
                    )
                } else {
                    format!(
                        "count counts transactions: write 'count(tx by {key} over ...)'; windows count every kind (combine with kind == '...' on the event being decided)"
                    )
                },
            ));
        }
        "sum" | "avg" | "max" | "min" if measure != "amount" => {
            return Err((
                0,
                format!("{func} works on amount: write '{func}(amount by {key} over ...)'"),
            ));
        }
        "sum" => AggFunc::Sum,
        "avg" => AggFunc::Avg,
        "max" => AggFunc::Max,
        "min" => AggFunc::Min,
        _ => {
            let of = DistinctOf::ALL.into_iter().find(|d| d.name() == measure).ok_or_else(|| {
                (
                    0,
                    format!(
                        "distinct counts counterparty, device, ip, country or account, not '{measure}'{}",
                        crate::diag::suggest(measure, DistinctOf::ALL.map(DistinctOf::name))
                    ),
                )
            })?;
            if of.key() == Some(key_kind) {
                return Err((0, format!("distinct({measure} by {key}) is always 1")));
            }
            AggFunc::Distinct(of)
        }
    };
    Ok((func, key_kind))
}

/// Checks a literal against a field's domain; `Err` carries the message.
pub fn check_domain(domain: Domain, value: &str) -> Result<(), String> {
    match domain {
        // The empty string is what an absent field reads as.
        Domain::Any | Domain::Country | Domain::Currency if value.is_empty() => Ok(()),
        Domain::Any => Ok(()),
        Domain::Kind if TX_KINDS.contains(&value) => Ok(()),
        Domain::Kind => Err(format!(
            "unknown transaction kind '{value}'{}; kinds are {}",
            crate::diag::suggest(value, TX_KINDS),
            TX_KINDS.join(", ")
        )),
        Domain::Country if value.len() == 2 && value.bytes().all(|b| b.is_ascii_uppercase()) => {
            Ok(())
        }
        Domain::Country => Err(format!(
            "country codes are two uppercase letters (ISO 3166), found '{value}'"
        )),
        Domain::Currency if value.len() == 3 && value.bytes().all(|b| b.is_ascii_uppercase()) => {
            Ok(())
        }
        Domain::Currency => Err(format!(
            "currency codes are three uppercase letters (ISO 4217), found '{value}'"
        )),
    }
}
