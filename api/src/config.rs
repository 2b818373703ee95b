//! `vigil serve` / `vigil produce` settings: a TOML file, then `VIGIL_*` environment variables,
//! then command-line flags, each overriding the one before.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde::Deserialize;
use vigil_api::http::{Limits, Role, Token};
use vigil_engine::state::StateLimits;
use vigil_engine::stream::{StreamConfig, Topics};

/// The config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// `host:port[,host:port…]`; absent: the embedded broker.
    pub brokers: Option<String>,
    pub group_id: Option<String>,
    /// Static group membership (`group.instance.id`): a stable name per process.
    pub instance_id: Option<String>,
    pub rules: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// e.g. "30s".
    pub snapshot_every: Option<String>,
    /// How long a transfer's settlement waits for its payee's ledger account, e.g. "10s".
    pub payee_wait: Option<String>,
    /// Partitions of topics Vigil creates.
    pub partitions: Option<i32>,
    /// Latest events kept for `POST /v1/rules/dry-run` (0: none).
    pub recent_events: Option<usize>,
    /// Events of one input side waiting for the other, per partition, at which that side is
    /// paused (0: never pause, e.g. on a broker whose fetch stalls once a partition is paused).
    pub pause_at: Option<usize>,
    /// How far past this machine's clock an event may be dated and still be counted in
    /// windows, e.g. "5m" ("0s": no check).
    pub clock_ahead: Option<String>,
    /// Longest window a rule may use, e.g. "30d" (the default, as `vigil rules check`'s
    /// `--window-max`; at most 31d): packs loaded, reloaded and dry-run are held to it.
    pub window_max: Option<String>,
    #[serde(default)]
    pub topics: TopicNames,
    /// librdkafka properties, e.g. `"security.protocol" = "SASL_SSL"`.
    #[serde(default)]
    pub kafka: BTreeMap<String, String>,
    #[serde(default)]
    pub api: ApiConfig,
    #[serde(default)]
    pub state: StateConfig,
}

/// `[state]`: what the engine holds in memory.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Accounts expected: the tables are sized for them (and as many devices, IPs and
    /// counterparties, four transaction ids each) at the start, so none grows while they
    /// arrive; a table that grows rehashes a shard while holding it, and every decision on
    /// that shard waits. 0 (the default): they grow as needed.
    pub accounts: Option<usize>,
    /// Most accounts held; past it the least recently active go.
    pub accounts_max: Option<usize>,
    /// Most devices, IPs and counterparties held, each.
    pub keys_max: Option<usize>,
    /// Most transaction ids remembered for de-duplication.
    pub tx_ids_max: Option<usize>,
    /// How long a transaction id is remembered, event time, e.g. "7d".
    pub tx_id_retention: Option<String>,
    /// An account idle this long (event time) is forgotten, e.g. "90d".
    pub account_idle: Option<String>,
}

/// `[api]`: the HTTP API.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiConfig {
    /// `host:port`, or `off`. Default 127.0.0.1:8080.
    pub listen: Option<String>,
    /// The ledger journal; default `<state_dir>/ledger.journal`, in memory without a state_dir.
    pub journal: Option<PathBuf>,
    /// Largest request body, bytes.
    pub body_limit_bytes: Option<usize>,
    /// e.g. "10s".
    pub request_timeout: Option<String>,
    /// How long a connection may send nothing while a request is awaited (headers included)
    /// or between requests, e.g. "30s".
    pub idle_timeout: Option<String>,
    #[serde(default)]
    pub tokens: Vec<TokenConfig>,
}

/// `[[api.tokens]]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenConfig {
    pub name: String,
    /// payment_service, analyst or admin.
    pub role: String,
    pub token: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicNames {
    pub transactions: Option<String>,
    pub account_events: Option<String>,
    pub decisions: Option<String>,
    pub freezes: Option<String>,
    pub notifications: Option<String>,
    pub dlq: Option<String>,
    pub settlements: Option<String>,
}

/// Everything resolved.
#[derive(Debug, Clone)]
pub struct Settings {
    pub stream: StreamConfig,
    /// Whether brokers were given (else: embedded).
    pub external: bool,
    pub rules: PathBuf,
    pub partitions: i32,
    /// Where the API listens; `None`: off.
    pub listen: Option<String>,
    /// The ledger journal; `None`: in memory.
    pub journal: Option<PathBuf>,
    pub tokens: Vec<Token>,
    pub limits: Limits,
    /// Latest events kept for dry runs.
    pub recent_events: usize,
    /// Longest window a rule may use, ms.
    pub window_ms_max: i64,
    /// Events dated further past the clock are decided but not counted (`None`: no check).
    pub clock_ahead: Option<Duration>,
    /// Accounts the state is sized for at the start (`[state] accounts`).
    pub accounts_capacity: usize,
    /// The state's limits.
    pub state_limits: StateLimits,
}

/// Default of `clock_ahead`: producers' clocks may run this far ahead.
pub const CLOCK_AHEAD_DEFAULT: Duration = Duration::from_secs(300);

/// Default of `recent_events`.
pub const RECENT_EVENTS_DEFAULT: usize = 50_000;
/// Most `recent_events` (each costs a copy of the event, a few hundred bytes).
pub const RECENT_EVENTS_MAX: usize = 1_000_000;

/// Flags that override the file and the environment.
#[derive(Debug, Default)]
pub struct Overrides {
    pub brokers: Option<String>,
    pub group_id: Option<String>,
    pub instance_id: Option<String>,
    pub rules: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    pub partitions: Option<i32>,
    pub listen: Option<String>,
    pub journal: Option<PathBuf>,
}

fn duration(s: &str, what: &str) -> Result<Duration> {
    let ms = vigil_rules::num::parse_duration(s)
        .with_context(|| format!("{what}: '{s}' is not a duration such as 30s or 5m"))?;
    Ok(Duration::from_millis(ms.max(0) as u64))
}

/// Reads `path` (if given), the environment (`env` yields `VIGIL_*` pairs) and the flags.
pub fn resolve(
    path: Option<&Path>,
    env: impl IntoIterator<Item = (String, String)>,
    flags: Overrides,
    default_rules: &str,
) -> Result<Settings> {
    let mut file = match path {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read config {}", p.display()))?;
            toml::from_str::<FileConfig>(&text).map_err(|e| {
                let span = e.span().map(|s| {
                    let line = text[..s.start].matches('\n').count() + 1;
                    let col = s.start - text[..s.start].rfind('\n').map_or(0, |i| i + 1) + 1;
                    format!("{line}:{col}: ")
                });
                anyhow::anyhow!(
                    "{}:{}{}",
                    p.display(),
                    span.unwrap_or_default(),
                    e.message()
                )
            })?
        }
        None => FileConfig::default(),
    };
    for (k, v) in env {
        let Some(name) = k.strip_prefix("VIGIL_") else {
            continue;
        };
        match name {
            "BROKERS" => file.brokers = Some(v),
            "GROUP_ID" => file.group_id = Some(v),
            "INSTANCE_ID" => file.instance_id = Some(v),
            "RULES" => file.rules = Some(v.into()),
            "STATE_DIR" => file.state_dir = Some(v.into()),
            "SNAPSHOT_EVERY" => file.snapshot_every = Some(v),
            "PAYEE_WAIT" => file.payee_wait = Some(v),
            "CLOCK_AHEAD" => file.clock_ahead = Some(v),
            "WINDOW_MAX" => file.window_max = Some(v),
            "RECENT_EVENTS" => {
                let n = v.trim().parse().with_context(|| {
                    format!("VIGIL_RECENT_EVENTS: '{v}' is not a number of events")
                })?;
                file.recent_events = Some(n);
            }
            "PAUSE_AT" => {
                let n = v
                    .trim()
                    .parse()
                    .with_context(|| format!("VIGIL_PAUSE_AT: '{v}' is not a number of events"))?;
                file.pause_at = Some(n);
            }
            "PARTITIONS" => {
                file.partitions = Some(
                    v.parse()
                        .with_context(|| format!("VIGIL_PARTITIONS: '{v}' is not a number"))?,
                )
            }
            "TOPIC_TRANSACTIONS" => file.topics.transactions = Some(v),
            "TOPIC_ACCOUNT_EVENTS" => file.topics.account_events = Some(v),
            "TOPIC_DECISIONS" => file.topics.decisions = Some(v),
            "TOPIC_FREEZES" => file.topics.freezes = Some(v),
            "TOPIC_NOTIFICATIONS" => file.topics.notifications = Some(v),
            "TOPIC_DLQ" => file.topics.dlq = Some(v),
            "TOPIC_SETTLEMENTS" => file.topics.settlements = Some(v),
            "HTTP" => file.api.listen = Some(v),
            "JOURNAL" => file.api.journal = Some(v.into()),
            "API_TOKENS" => {
                // name:role:token, comma-separated
                file.api.tokens = v
                    .split(',')
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| {
                        let mut it = s.trim().splitn(3, ':');
                        match (it.next(), it.next(), it.next()) {
                            (Some(n), Some(r), Some(t)) => Ok(TokenConfig {
                                name: n.into(),
                                role: r.into(),
                                token: t.into(),
                            }),
                            _ => bail!("VIGIL_API_TOKENS: '{s}' is not name:role:token"),
                        }
                    })
                    .collect::<Result<_>>()?;
            }
            n if n.starts_with("KAFKA_") => {
                // VIGIL_KAFKA_SECURITY_PROTOCOL=SASL_SSL → security.protocol
                let prop = n["KAFKA_".len()..].to_ascii_lowercase().replace('_', ".");
                file.kafka.insert(prop, v);
            }
            _ => {}
        }
    }
    if let Some(b) = flags.brokers {
        file.brokers = Some(b);
    }
    if let Some(g) = flags.group_id {
        file.group_id = Some(g);
    }
    if let Some(i) = flags.instance_id {
        file.instance_id = Some(i);
    }
    if let Some(r) = flags.rules {
        file.rules = Some(r);
    }
    if let Some(d) = flags.state_dir {
        file.state_dir = Some(d);
    }
    if let Some(p) = flags.partitions {
        file.partitions = Some(p);
    }
    let partitions = file.partitions.unwrap_or(6);
    if !(1..=1024).contains(&partitions) {
        bail!("partitions must be between 1 and 1024, not {partitions}");
    }
    let d = Topics::default();
    let t = file.topics;
    let topics = Topics {
        transactions: t.transactions.unwrap_or(d.transactions),
        account_events: t.account_events.unwrap_or(d.account_events),
        decisions: t.decisions.unwrap_or(d.decisions),
        freezes: t.freezes.unwrap_or(d.freezes),
        notifications: t.notifications.unwrap_or(d.notifications),
        dlq: t.dlq.unwrap_or(d.dlq),
        settlements: t.settlements.unwrap_or(d.settlements),
    };
    let mut names: Vec<&str> = topics.all();
    names.sort_unstable();
    if let Some(w) = names.windows(2).find(|w| w[0] == w[1]) {
        bail!("topic '{}' is configured for two purposes", w[0]);
    }
    if let Some(b) = file.brokers.as_deref()
        && b.trim().is_empty()
    {
        bail!("brokers is empty; leave it out to use the embedded broker");
    }
    let mut stream = StreamConfig {
        brokers: file.brokers.clone().unwrap_or_default(),
        group_id: file.group_id.unwrap_or_else(|| "vigil".into()),
        topics,
        client: file.kafka,
        instance_id: file.instance_id.filter(|i| !i.trim().is_empty()),
        state_dir: file.state_dir,
        ..StreamConfig::default()
    };
    if let Some(s) = file.snapshot_every {
        stream.snapshot_every = duration(&s, "snapshot_every (VIGIL_SNAPSHOT_EVERY)")?;
    }
    if let Some(s) = file.payee_wait {
        stream.payee_wait = duration(&s, "payee_wait (VIGIL_PAYEE_WAIT)")?;
    }
    match file.pause_at {
        Some(0) => stream.pause_at = usize::MAX,
        Some(n) => stream.pause_at = n,
        None => {}
    }
    if let Some(l) = flags.listen {
        file.api.listen = Some(l);
    }
    if let Some(j) = flags.journal {
        file.api.journal = Some(j);
    }
    let listen = match file.api.listen.as_deref().map(str::trim) {
        Some("off") => None,
        Some("") => bail!("api.listen is empty; use off to serve no API"),
        Some(l) => Some(l.to_string()),
        None => Some("127.0.0.1:8080".to_string()),
    };
    let mut tokens = Vec::new();
    for t in &file.api.tokens {
        let role = Role::parse(&t.role).with_context(|| {
            format!(
                "API token {}: role '{}' is not payment_service, analyst or admin",
                t.name, t.role
            )
        })?;
        if t.token.len() < 8 {
            bail!("API token {}: a token needs at least 8 characters", t.name);
        }
        if t.name.trim().is_empty() {
            bail!("API token with role {}: the name is empty", t.role);
        }
        tokens.push(Token {
            name: t.name.clone(),
            role,
            token: t.token.clone(),
        });
    }
    let mut limits = Limits::default();
    if let Some(b) = file.api.body_limit_bytes {
        if b < 1024 {
            bail!("api.body_limit_bytes: at least 1024");
        }
        limits.body_bytes = b;
    }
    if let Some(t) = &file.api.request_timeout {
        limits.timeout = duration(t, "api.request_timeout")?;
    }
    if let Some(t) = &file.api.idle_timeout {
        limits.idle = duration(t, "api.idle_timeout")?;
    }
    // The quiet time is counted while a request is handled and answered too (the connection
    // is read to notice a client hanging up): it must outlast the longest request.
    if limits.idle <= limits.timeout {
        bail!(
            "api.idle_timeout ({:?}) must be longer than api.request_timeout ({:?})",
            limits.idle,
            limits.timeout
        );
    }
    let recent_events = file.recent_events.unwrap_or(RECENT_EVENTS_DEFAULT);
    if recent_events > RECENT_EVENTS_MAX {
        bail!("recent_events: at most {RECENT_EVENTS_MAX}, not {recent_events}");
    }
    let window_ms_max = match &file.window_max {
        None => vigil_rules::pack::WINDOW_MS_MAX_DEFAULT,
        Some(w) => {
            let most = vigil_engine::state::window::DAY_TIER_MS_MAX;
            let ms = vigil_rules::num::parse_duration(w)
                .filter(|ms| *ms > 0)
                .with_context(|| {
                    format!("window_max (VIGIL_WINDOW_MAX): '{w}' is not a window such as 30d")
                })?;
            if ms > most {
                bail!(
                    "window_max (VIGIL_WINDOW_MAX): state keeps at most 31d of history; {w} is longer"
                );
            }
            ms
        }
    };
    let clock_ahead = match &file.clock_ahead {
        Some(s) => Some(duration(s, "clock_ahead (VIGIL_CLOCK_AHEAD)")?).filter(|d| !d.is_zero()),
        None => Some(CLOCK_AHEAD_DEFAULT),
    };
    let (accounts_capacity, state_limits) = state_settings(&file.state)?;
    let journal = file
        .api
        .journal
        .or_else(|| stream.state_dir.as_ref().map(|d| d.join("ledger.journal")));
    Ok(Settings {
        listen,
        journal,
        tokens,
        limits,
        external: file.brokers.is_some(),
        stream,
        rules: file.rules.unwrap_or_else(|| default_rules.into()),
        partitions,
        recent_events,
        window_ms_max,
        clock_ahead,
        accounts_capacity,
        state_limits,
    })
}

/// `[state]` checked: the capacity and the limits.
fn state_settings(c: &StateConfig) -> Result<(usize, StateLimits)> {
    let mut l = StateLimits::default();
    for (value, limit, what) in [
        (c.accounts_max, &mut l.accounts_max, "state.accounts_max"),
        (c.keys_max, &mut l.keys_max, "state.keys_max"),
        (c.tx_ids_max, &mut l.seen_tx_max, "state.tx_ids_max"),
    ] {
        match value {
            Some(0) => bail!("{what}: at least 1"),
            Some(n) => *limit = n,
            None => {}
        }
    }
    for (value, limit, what) in [
        (
            &c.tx_id_retention,
            &mut l.seen_tx_ms,
            "state.tx_id_retention",
        ),
        (
            &c.account_idle,
            &mut l.account_idle_ms,
            "state.account_idle",
        ),
    ] {
        if let Some(s) = value {
            let d = duration(s, what)?;
            if d.is_zero() {
                bail!("{what}: longer than 0s");
            }
            *limit = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
        }
    }
    let capacity = c.accounts.unwrap_or(0);
    if capacity > l.accounts_max {
        bail!(
            "state.accounts: {capacity} accounts expected, but state.accounts_max holds {}",
            l.accounts_max
        );
    }
    Ok((capacity, l))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect()
    }

    #[test]
    fn file_then_env_then_flags() -> Result<()> {
        let dir = vigil_tests::TempDir::new("config");
        let p = dir.join("vigil.toml");
        std::fs::write(
            &p,
            "brokers = \"file:9092\"\ngroup_id = \"g-file\"\nsnapshot_every = \"5s\"\n[topics]\ndecisions = \"d-file\"\n[kafka]\n\"security.protocol\" = \"SSL\"\n",
        )?;
        let s = resolve(
            Some(&p),
            env(&[
                ("VIGIL_GROUP_ID", "g-env"),
                ("VIGIL_KAFKA_SASL_MECHANISMS", "PLAIN"),
                ("VIGIL_TOPIC_DLQ", "dead"),
                ("HOME", "/x"),
            ]),
            Overrides {
                brokers: Some("flag:9092".into()),
                ..Overrides::default()
            },
            "rules/packs/default",
        )?;
        assert_eq!(s.stream.brokers, "flag:9092");
        assert!(s.external);
        assert_eq!(s.stream.group_id, "g-env");
        assert_eq!(s.stream.topics.decisions, "d-file");
        assert_eq!(s.stream.topics.dlq, "dead");
        assert_eq!(s.stream.topics.transactions, "transactions");
        assert_eq!(s.stream.snapshot_every, Duration::from_secs(5));
        assert_eq!(
            s.stream.client.get("security.protocol").map(String::as_str),
            Some("SSL")
        );
        assert_eq!(
            s.stream.client.get("sasl.mechanisms").map(String::as_str),
            Some("PLAIN")
        );
        Ok(())
    }

    #[test]
    fn bad_settings_are_named() -> Result<()> {
        let dir = vigil_tests::TempDir::new("config-bad");
        let p = dir.join("vigil.toml");
        std::fs::write(&p, "brokers = \"b:1\"\ngroupid = \"x\"\n")?;
        let e = resolve(Some(&p), vec![], Overrides::default(), "r")
            .map(|_| ())
            .unwrap_err();
        let msg = format!("{e:#}");
        assert!(
            msg.contains("vigil.toml:2:1: unknown field `groupid`"),
            "{msg}"
        );
        let e = resolve(
            None,
            env(&[("VIGIL_TOPIC_DLQ", "decisions")]),
            Overrides::default(),
            "r",
        )
        .map(|_| ())
        .unwrap_err();
        assert!(format!("{e}").contains("'decisions' is configured for two purposes"));
        let e = resolve(
            None,
            env(&[("VIGIL_PAUSE_AT", "lots")]),
            Overrides::default(),
            "r",
        )
        .map(|_| ())
        .unwrap_err();
        assert!(
            format!("{e:#}").contains("VIGIL_PAUSE_AT: 'lots' is not a number"),
            "{e:#}"
        );
        // The window limit is `rules check`'s (30d) unless set, and never past 31d.
        let s = resolve(None, vec![], Overrides::default(), "r")?;
        assert_eq!(s.window_ms_max, 30 * 86_400_000);
        let s = resolve(
            None,
            env(&[("VIGIL_WINDOW_MAX", "7d")]),
            Overrides::default(),
            "r",
        )?;
        assert_eq!(s.window_ms_max, 7 * 86_400_000);
        for (w, says) in [
            ("32d", "at most 31d"),
            ("soon", "not a window"),
            ("0s", "not a window"),
        ] {
            let e = resolve(
                None,
                env(&[("VIGIL_WINDOW_MAX", w)]),
                Overrides::default(),
                "r",
            )
            .map(|_| ())
            .unwrap_err();
            assert!(format!("{e:#}").contains(says), "{w}: {e:#}");
        }
        let s = resolve(None, vec![], Overrides::default(), "r")?;
        assert!(!s.external, "no brokers: embedded");
        assert_eq!(s.stream.pause_at, vigil_engine::stream::align::PAUSE_AT);
        let off = resolve(
            None,
            env(&[("VIGIL_PAUSE_AT", "0")]),
            Overrides::default(),
            "r",
        )?;
        assert_eq!(off.stream.pause_at, usize::MAX, "0: never pause");
        assert_eq!(s.clock_ahead, Some(CLOCK_AHEAD_DEFAULT));
        let skew = resolve(
            None,
            env(&[("VIGIL_CLOCK_AHEAD", "90s")]),
            Overrides::default(),
            "r",
        )?;
        assert_eq!(skew.clock_ahead, Some(Duration::from_secs(90)));
        let none = resolve(
            None,
            env(&[("VIGIL_CLOCK_AHEAD", "0s")]),
            Overrides::default(),
            "r",
        )?;
        assert_eq!(none.clock_ahead, None, "0s: no check");
        Ok(())
    }

    #[test]
    fn the_state_section_sizes_and_bounds_the_engine() -> Result<()> {
        let dir = vigil_tests::TempDir::new("config-state");
        let p = dir.join("vigil.toml");
        let resolved = |text: &str| {
            std::fs::write(&p, text)?;
            resolve(Some(&p), vec![], Overrides::default(), "r")
        };
        let s = resolved(
            "[state]\naccounts = 2000000\naccounts_max = 5000000\nkeys_max = 3000000\ntx_ids_max = 9000000\ntx_id_retention = \"2d\"\naccount_idle = \"30d\"\n",
        )?;
        assert_eq!(s.accounts_capacity, 2_000_000);
        assert_eq!(
            s.state_limits,
            StateLimits {
                accounts_max: 5_000_000,
                keys_max: 3_000_000,
                seen_tx_max: 9_000_000,
                seen_tx_ms: 2 * 86_400_000,
                account_idle_ms: 30 * 86_400_000,
            }
        );
        let d = resolved("")?;
        assert_eq!(d.accounts_capacity, 0, "grows as needed");
        assert_eq!(d.state_limits, StateLimits::default());
        for (text, want) in [
            (
                "[state]\naccounts = 20\naccounts_max = 10\n",
                "state.accounts: 20 accounts expected, but state.accounts_max holds 10",
            ),
            ("[state]\nkeys_max = 0\n", "state.keys_max: at least 1"),
            (
                "[state]\ntx_id_retention = \"0s\"\n",
                "state.tx_id_retention: longer than 0s",
            ),
            (
                "[state]\naccount_idle = \"soon\"\n",
                "state.account_idle: 'soon' is not a duration",
            ),
            (
                "[state]\naccount = 5\n",
                "vigil.toml:2:1: unknown field `account`",
            ),
        ] {
            let e = resolved(text).map(|_| ()).unwrap_err();
            let msg = format!("{e:#}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
        Ok(())
    }
}
