//! `vigil serve` and `vigil produce`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use vigil_api::http::{AppState, Role, Token, expire_snoozes, reload_rules, router, set_ready};
use vigil_engine::ledger::{BookConfig, Ledger};
use vigil_engine::packs::Reloader;
use vigil_engine::stream::embedded::Embedded;
use vigil_engine::stream::produce::produce;
use vigil_engine::stream::publish::Publisher;
use vigil_engine::stream::{Pipeline, Stats, StreamConfig, admin_create_topics};
use vigil_engine::{Engine, EngineConfig, replay};
use vigil_rules::PackOptions;

use crate::config::{self, Overrides, Settings};
use crate::{DEFAULT_PACK, esay, load_pack, progress_bar, say};

/// The sample the demo feeds.
const DEMO_FILE: &str = "replay-data/sample.jsonl.gz";

#[derive(Args, Debug)]
pub struct ConnArgs {
    /// Kafka brokers (host:port,…). `serve` without them starts an embedded in-memory broker;
    /// `produce` needs them (the address `vigil serve` prints). Env: VIGIL_BROKERS.
    #[arg(long)]
    brokers: Option<String>,
    /// A TOML config file (brokers, group_id, rules, state_dir, [topics], [kafka] client
    /// properties); VIGIL_* environment variables override it, flags override both.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Partitions for the topics Vigil creates.
    #[arg(long)]
    partitions: Option<i32>,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    conn: ConnArgs,
    /// The rule pack directory. Env: VIGIL_RULES.
    #[arg(long)]
    rules: Option<PathBuf>,
    /// Consumer group. Env: VIGIL_GROUP_ID.
    #[arg(long)]
    group_id: Option<String>,
    /// A stable name for this process in the group (static membership), e.g. the host or
    /// pod name: a restart takes its partitions back at once. Env: VIGIL_INSTANCE_ID.
    #[arg(long)]
    instance_id: Option<String>,
    /// Keep state snapshots (and the offsets they cover) here, so a restart resumes exactly.
    /// Env: VIGIL_STATE_DIR.
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Demo on the embedded broker: feed the shipped sample, show decisions, freezes and
    /// notifications as they flow, then stop.
    #[arg(long, conflicts_with = "brokers")]
    demo: bool,
    /// The file the demo feeds.
    #[arg(long, default_value = DEMO_FILE, requires = "demo")]
    demo_file: PathBuf,
    /// Events per second the demo feeds (0: as fast as possible).
    #[arg(long, default_value_t = 20_000, requires = "demo")]
    demo_rate: u64,
    /// Stop after this many input messages (tests, benchmarks).
    #[arg(long, hide = true)]
    max_messages: Option<u64>,
    /// Stop after this long without a message, e.g. 10s (tests, benchmarks).
    #[arg(long, hide = true)]
    idle_exit: Option<String>,
    /// Log level: error, warn, info, debug.
    #[arg(long, default_value = "info")]
    log_level: String,
    /// Where the HTTP API listens (host:port), or `off`. Default 127.0.0.1:8080.
    /// Env: VIGIL_HTTP.
    #[arg(long)]
    http: Option<String>,
    /// The ledger journal. Default: <state-dir>/ledger.journal; in memory without a state dir.
    /// Env: VIGIL_JOURNAL.
    #[arg(long)]
    journal: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct ProduceArgs {
    /// Recorded traffic (.jsonl or .jsonl.gz): transactions go to the transactions topic,
    /// account events to account-events, keyed by account id.
    file: PathBuf,
    #[command(flatten)]
    conn: ConnArgs,
    /// Messages per second (0: as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn init_logging(level: &str) -> Result<()> {
    let level: tracing::Level = level
        .parse()
        .map_err(|_| anyhow::anyhow!("--log-level: '{level}' is not error, warn, info or debug"))?;
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .try_init();
    Ok(())
}

fn settings(conn: &ConnArgs, extra: Overrides) -> Result<Settings> {
    config::resolve(
        conn.config.as_deref(),
        std::env::vars(),
        Overrides {
            brokers: conn.brokers.clone(),
            partitions: conn.partitions,
            ..extra
        },
        DEFAULT_PACK,
    )
}

/// When the first SIGINT/SIGTERM came: the graceful stop's `shutdown_timeout` counts from it.
static STOPPING_SINCE: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();

/// The least time the HTTP decisions' publisher gets at a graceful stop.
const PUBLISH_AT_STOP_MIN: Duration = Duration::from_secs(2);

/// What is left of the graceful stop's budget (all of it without a signal).
fn shutdown_left(budget: Duration) -> Duration {
    STOPPING_SINCE.get().map_or(budget, |t| {
        (*t + budget).saturating_duration_since(std::time::Instant::now())
    })
}

/// SIGHUP asks for the rules to be read again (as a daemon's configuration is); the rules
/// watcher does it on its next tick.
static RELOAD_ASKED: AtomicBool = AtomicBool::new(false);

/// SIGINT/SIGTERM stop gracefully; a second one stops at once. SIGHUP reloads the rules (it
/// ended the process before: its default action).
fn on_signals(stop: Arc<AtomicBool>) -> Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                if sig == SIGHUP {
                    tracing::info!("SIGHUP: reloading the rules");
                    RELOAD_ASKED.store(true, Ordering::SeqCst);
                    continue;
                }
                let _ = STOPPING_SINCE.set(std::time::Instant::now());
                if stop.swap(true, Ordering::SeqCst) {
                    esay("second signal: stopping now, without a final snapshot or commit");
                    std::process::exit(130);
                }
                tracing::info!(
                    "signal {sig}: stopping gracefully (flush, snapshot, commit); again to force"
                );
            }
        })?;
    Ok(())
}

pub fn serve_cmd(a: &ServeArgs) -> Result<std::process::ExitCode> {
    init_logging(&a.log_level)?;
    let s = settings(
        &a.conn,
        Overrides {
            group_id: a.group_id.clone(),
            instance_id: a.instance_id.clone(),
            rules: a.rules.clone(),
            state_dir: a.state_dir.clone(),
            listen: a.http.clone(),
            journal: a.journal.clone(),
            ..Overrides::default()
        },
    )?;
    if a.demo && s.external {
        bail!("--demo runs on the embedded broker; remove the brokers setting (VIGIL_BROKERS?)");
    }
    let pack = match load_pack(&s.rules, s.window_ms_max) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    tracing::info!("rules: {} from {}", pack.summary(), s.rules.display());
    let l = &s.state_limits;
    tracing::info!(
        "state: sized for {} accounts ([state] accounts); at most {} accounts (idle {}), {} of each other key, {} tx ids (for {})",
        s.accounts_capacity,
        l.accounts_max,
        vigil_rules::num::format_duration(l.account_idle_ms),
        l.keys_max,
        l.seen_tx_max,
        vigil_rules::num::format_duration(l.seen_tx_ms)
    );
    let engine = Arc::new(Engine::new(
        pack,
        EngineConfig {
            clock_ahead_ms: s
                .clock_ahead
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
            // Swept by `maintain_state`, not by whichever decision reaches the count.
            maintain_every: 0,
            limits: s.state_limits,
            accounts_capacity: s.accounts_capacity,
            ..EngineConfig::default()
        },
    ));
    let mut cfg: StreamConfig = s.stream.clone();
    cfg.max_messages = a.max_messages;
    if let Some(d) = &a.idle_exit {
        let ms = vigil_rules::num::parse_duration(d)
            .with_context(|| format!("--idle-exit: '{d}' is not a duration"))?;
        cfg.idle_exit = Some(Duration::from_millis(ms.max(0) as u64));
    }
    let stop = Arc::new(AtomicBool::new(false));
    on_signals(stop.clone())?;

    // Real brokers are waited for once the HTTP API is up: `/healthz` and `/metrics` answer
    // (and `/readyz` says not ready) while they are unreachable.
    let _embedded = if s.external {
        None
    } else {
        let e = Embedded::start(1, &cfg.topics, s.partitions)?;
        cfg.brokers = e.bootstrap().to_string();
        // Its topics start empty: a snapshot's offsets point into a log that is gone.
        cfg.fresh_broker = true;
        // The mock broker holds partitions of a vanished consumer until its session ends.
        cfg.session_timeout = Duration::from_secs(6);
        tracing::warn!(
            "embedded Kafka broker at {} — IN MEMORY: topics and offsets are lost when vigil stops; use --brokers for a real cluster",
            cfg.brokers
        );
        say(format!("bootstrap: {}", cfg.brokers));
        say(format!(
            "  watch:   kcat -b {} -C -t {} -f '%k %s\\n'",
            cfg.brokers, cfg.topics.notifications
        ));
        say(format!(
            "  feed:    vigil produce {DEMO_FILE} --brokers {}",
            cfg.brokers
        ));
        Some(e)
    };

    let mut feeder = None;
    let mut watcher = None;
    if a.demo {
        let lines = count_lines(&a.demo_file)?;
        cfg.max_messages = Some(lines);
        let (c, file, rate, st) = (cfg.clone(), a.demo_file.clone(), a.demo_rate, stop.clone());
        feeder = Some(std::thread::spawn(move || -> Result<()> {
            let input =
                replay::open(&file).with_context(|| format!("cannot open {}", file.display()))?;
            let p = produce(&c, input, Some(rate), &st, |_| {})?;
            tracing::info!(
                "demo feed done: {} transactions, {} account events",
                p.transactions,
                p.account_events
            );
            Ok(())
        }));
        let (c, st) = (cfg.clone(), stop.clone());
        watcher = Some(std::thread::spawn(move || watch(&c, &st)));
        say(format!(
            "demo: feeding {lines} events from {} at {}/s",
            a.demo_file.display(),
            a.demo_rate
        ));
    }

    let ledger = open_ledger(&s)?;
    let tokens = if s.listen.is_some() {
        api_tokens(&s)?
    } else {
        Vec::new()
    };
    let reloader = Arc::new(Reloader::new(
        &s.rules,
        PackOptions {
            window_ms_max: s.window_ms_max,
        },
    ));
    engine.keep_recent(s.recent_events);
    let state =
        AppState::new(engine.clone(), ledger.clone(), tokens, s.limits).with_reloader(reloader);
    // HTTP decisions to the output topics (no API, nothing to publish).
    let publisher = match &s.listen {
        Some(_) => Some(Arc::new(Publisher::new(
            &cfg,
            Some(state.0.metrics.clone()),
        )?)),
        None => None,
    };
    let state = match &publisher {
        Some(p) => state.with_publisher(p.clone()),
        None => state,
    };
    if let Some(dir) = &s.stream.state_dir {
        let path = dir.join("audit.jsonl");
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        state
            .0
            .audit
            .open_file(&path)
            .with_context(|| format!("cannot open the audit log {}", path.display()))?;
        tracing::info!("audit log: {}", path.display());
        let path = dir.join("snoozes.json");
        let n = state
            .0
            .snoozes
            .open_file(&path, &engine, vigil_engine::ledger::now_ms())
            .map_err(anyhow::Error::msg)?;
        state.0.metrics.set_snoozes(n);
        tracing::info!("snoozes: {n} in force, kept in {}", path.display());
    }
    let rules_watch = {
        let (state, stop) = (state.clone(), stop.clone());
        std::thread::Builder::new()
            .name("vigil-rules-watch".into())
            .spawn(move || watch_rules(&state, &stop))?
    };
    let maintainer = {
        let (engine, stop) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("vigil-state".into())
            .spawn(move || maintain_state(&engine, &stop))?
    };
    // SIGINT/SIGTERM set `stop`: the pipeline stops consuming, finishes what is in flight,
    // flushes, snapshots and commits.
    let pipeline = Pipeline::new(engine.clone(), cfg.clone())
        .with_ledger(ledger.clone())
        .with_stop(stop.clone());
    let stats = pipeline.stats();
    state.0.metrics.watch_stream(stats.clone());
    // Not ready (`/readyz` 503, the routes that decide or move money `not_ready`) until the
    // pipeline has restored the state: what the engine decided before would be overwritten.
    set_ready(&state, false);
    let readiness = {
        let (state, stats, stop) = (state.clone(), stats.clone(), stop.clone());
        std::thread::Builder::new()
            .name("vigil-ready".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if stats.state_loaded.load(Ordering::SeqCst) {
                        set_ready(&state, true);
                        tracing::info!("ready: state in place");
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
            })?
    };
    let api = match &s.listen {
        Some(addr) => Some(start_api(
            addr,
            s.limits.idle,
            state.clone(),
            ledger.clone(),
            stop.clone(),
        )?),
        None => None,
    };
    let waited = if s.external {
        admin_create_topics(&cfg, s.partitions, Duration::from_secs(300), &stop)
    } else {
        Ok(())
    };
    // `None`: stopped before the brokers answered.
    let result = waited.map(|()| (!stop.load(Ordering::SeqCst)).then(|| pipeline.run()));
    stop.store(true, Ordering::SeqCst);
    if let Some(api) = api {
        api.stop();
    }
    // What the HTTP API answered is published with what is left of the budget, and at least
    // a moment: nothing else would publish it.
    let left = shutdown_left(s.stream.shutdown_timeout).max(PUBLISH_AT_STOP_MIN);
    if let Some(Err(e)) = publisher.map(|p| p.flush(left)) {
        tracing::error!("HTTP decisions not all published at shutdown: {e}");
    }
    ledger.close();
    if let Some(f) = feeder
        && let Ok(Err(e)) = f.join()
    {
        esay(format!("demo feed: {e:#}"));
    }
    if let Some(w) = watcher {
        let _ = w.join();
    }
    let _ = rules_watch.join();
    let _ = readiness.join();
    let _ = maintainer.join();
    let Some(summary) = result? else {
        say("stopped before the brokers answered: nothing consumed");
        return Ok(std::process::ExitCode::SUCCESS);
    };
    let summary = summary?;
    report(&stats, summary.consumed, summary.seconds);
    let g = Stats::get;
    say(format!(
        "  ledger: accounts opened from account_opened events {}; settled {}, held {}, declined {}, refused {}",
        g(&stats.accounts_opened),
        g(&stats.settlements[0]),
        g(&stats.settlements[1]),
        g(&stats.settlements[2]),
        g(&stats.settlements[3])
    ));
    if a.demo && g(&stats.decided) == 0 && g(&stats.duplicates) > 0 {
        let dir = s.stream.state_dir.as_deref().unwrap_or(Path::new("?"));
        say(format!(
            "  demo: the state in {} had decided every one of these transactions already, so none was decided again; start without --state-dir, or with a new one, to watch them decided",
            dir.display()
        ));
    }
    Ok(std::process::ExitCode::SUCCESS)
}

fn open_ledger(s: &Settings) -> Result<Ledger> {
    let Some(path) = &s.journal else {
        tracing::warn!(
            "ledger IN MEMORY: balances and transfers are lost when vigil stops; give --state-dir or --journal to keep them"
        );
        return Ok(Ledger::in_memory(BookConfig::default()));
    };
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    let (ledger, rec) = Ledger::open(path, BookConfig::default())
        .with_context(|| format!("cannot open the ledger journal {}", path.display()))?;
    let (accounts, transfers, open_cases) = ledger.read(|b| b.counts());
    tracing::info!(
        "ledger: {} records replayed from {} ({accounts} accounts, {transfers} transfers, {open_cases} open cases)",
        rec.records,
        path.display()
    );
    if rec.torn_bytes > 0 {
        tracing::warn!(
            "ledger: dropped a torn last record ({} bytes): it was never acknowledged",
            rec.torn_bytes
        );
    }
    Ok(ledger)
}

/// The API server on its own runtime.
struct Api {
    runtime: tokio::runtime::Runtime,
    shutdown: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Api {
    fn stop(self) {
        let _ = self.shutdown.send(());
        let server = self.server;
        let _ = self
            .runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(5), server).await });
        self.runtime.shutdown_timeout(Duration::from_secs(1));
    }
}

/// How often `vigil serve` evicts idle state.
const MAINTAIN_EVERY: Duration = Duration::from_secs(10);

/// Evicts idle state every [`MAINTAIN_EVERY`] until `stop`.
fn maintain_state(engine: &Engine, stop: &AtomicBool) {
    let mut since = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if since.elapsed() < MAINTAIN_EVERY {
            continue;
        }
        let t = std::time::Instant::now();
        engine.maintain();
        since = std::time::Instant::now();
        tracing::debug!(
            "idle state evicted in {:.1} ms",
            t.elapsed().as_secs_f64() * 1e3
        );
    }
}

/// Every second: reloads the rules when a file of the directory changed (a bad pack is
/// refused — logged, counted, audited — and the running pack stays), and ends the snoozes
/// whose time is up; on SIGHUP, reloads at once.
fn watch_rules(state: &AppState, stop: &AtomicBool) {
    let reloader = state.0.reloader.get();
    if let Some(r) = reloader {
        tracing::info!("watching {} for rule changes", r.dir().display());
    }
    let mut since = std::time::Instant::now();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(100));
        if RELOAD_ASKED.swap(false, Ordering::SeqCst) {
            // Errors are logged, counted and audited by reload_rules.
            let _ = reload_rules(&state.0, "signal");
        }
        if since.elapsed() < Duration::from_secs(1) {
            continue;
        }
        since = std::time::Instant::now();
        if let Some(r) = reloader
            && r.changed()
        {
            // Errors are logged, counted and audited by reload_rules.
            let _ = reload_rules(&state.0, "watcher");
        }
        let ended = expire_snoozes(&state.0, vigil_engine::ledger::now_ms());
        if ended > 0 {
            tracing::info!("{ended} snooze(s) ended");
        }
    }
}

/// The configured API tokens, or one random token per role for this run.
fn api_tokens(s: &Settings) -> Result<Vec<Token>> {
    let mut tokens = s.tokens.clone();
    if tokens.is_empty() {
        // Nobody configured tokens: make one per role for this run, so the API is never open.
        for role in [Role::PaymentService, Role::Analyst, Role::Admin] {
            let token = random_token()?;
            say(format!("  API token ({}): {token}", role.name()));
            tokens.push(Token {
                name: role.name().to_string(),
                role,
                token,
            });
        }
        tracing::warn!(
            "no API tokens configured ([[api.tokens]] or VIGIL_API_TOKENS=name:role:token,…): made one per role for this run"
        );
    }
    Ok(tokens)
}

/// The API's listener: a connection that sends nothing for `idle` while a request is awaited
/// (its headers not all in, or idle between requests) is closed. hyper under `axum::serve`
/// has no header timeout of its own: a client that stopped mid-headers held its connection
/// (and a file descriptor) for ever.
struct IdleLimited {
    listener: tokio::net::TcpListener,
    idle: Duration,
}

impl axum::serve::Listener for IdleLimited {
    type Io = std::pin::Pin<Box<tokio_io_timeout::TimeoutStream<tokio::net::TcpStream>>>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut io = tokio_io_timeout::TimeoutStream::new(stream);
                    io.set_read_timeout(Some(self.idle));
                    return (Box::pin(io), addr);
                }
                // Out of file descriptors, say: wait a little rather than spin.
                Err(e) => {
                    tracing::warn!("API: cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

fn start_api(
    addr: &str,
    idle: Duration,
    state: AppState,
    ledger: Ledger,
    stop: Arc<AtomicBool>,
) -> Result<Api> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("vigil-http")
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(addr))
        .with_context(|| format!("cannot listen on {addr} for the API"))?;
    let local = listener.local_addr()?;
    let listener = IdleLimited { listener, idle };
    let app = router(state);
    say(format!(
        "API: http://{local}  (OpenAPI: http://{local}/openapi.json)"
    ));
    tracing::info!("API listening on http://{local}");
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let server = runtime.spawn(async move {
        let r = axum::serve(listener, app)
            .with_graceful_shutdown(async {
                let _ = rx.await;
            })
            .await;
        if let Err(e) = r {
            tracing::error!("API server: {e}");
        }
    });
    // Held transfers lapse: release them every second.
    runtime.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            let (voided, _) = ledger.expire_due(vigil_engine::ledger::now_ms());
            for t in voided {
                tracing::info!("hold on {} lapsed: released", t.tx_id);
            }
        }
    });
    Ok(Api {
        runtime,
        shutdown: tx,
        server,
    })
}

fn random_token() -> Result<String> {
    use std::io::Read;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .context("cannot read /dev/urandom for an API token; configure tokens instead")?;
    Ok(bytes.iter().fold(String::from("vgl_"), |mut s, b| {
        s.push_str(&format!("{b:02x}"));
        s
    }))
}

fn count_lines(path: &std::path::Path) -> Result<u64> {
    use std::io::BufRead;
    let r = replay::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut n = 0;
    for line in r.split(b'\n') {
        if !line?.trim_ascii().is_empty() {
            n += 1;
        }
    }
    Ok(n)
}

fn report(stats: &Stats, consumed: u64, seconds: f64) {
    let g = Stats::get;
    say(format!(
        "handled {consumed} messages in {seconds:.1}s ({:.0}/s)",
        consumed as f64 / seconds.max(1e-9)
    ));
    say(format!(
        "  decided {}: allow {}, review {}, step_up {}, block {}; decided already (sent once) {}",
        g(&stats.decided),
        g(&stats.actions[0]),
        g(&stats.actions[1]),
        g(&stats.actions[2]),
        g(&stats.actions[3]),
        g(&stats.duplicates)
    ));
    say(format!(
        "  account events {}, dead-lettered {}, freeze requests {}, notifications {}",
        g(&stats.account_events),
        g(&stats.dead_lettered),
        g(&stats.freezes),
        g(&stats.notifications),
    ));
    say(format!(
        "  not repeated for accounts already frozen {}, not repeated after a restart {}, decided before their account events were confirmed {}, input partitions paused while ahead of the other topic {}",
        g(&stats.repeats_skipped),
        g(&stats.effects_suppressed),
        g(&stats.unaligned),
        g(&stats.paused)
    ));
}

/// Prints freezes, notifications and dead letters as they arrive (the first few of each).
fn watch(cfg: &StreamConfig, stop: &AtomicBool) {
    use rdkafka::consumer::{BaseConsumer, Consumer};
    use rdkafka::message::{Headers, Message};
    let consumer: BaseConsumer = match vigil_engine::stream::client_config(cfg)
        .set("group.id", "vigil-demo-watch")
        .set("enable.auto.commit", "false")
        .create()
    {
        Ok(c) => c,
        Err(e) => return esay(format!("demo watch: {e}")),
    };
    let topics = [
        cfg.topics.freezes.as_str(),
        cfg.topics.notifications.as_str(),
        cfg.topics.dlq.as_str(),
    ];
    // Every partition from the start, without joining a group (no rebalance to wait for).
    let mut tpl = rdkafka::TopicPartitionList::new();
    for t in topics {
        match consumer.fetch_metadata(Some(t), Duration::from_secs(5)) {
            Ok(md) => {
                for p in md.topics().iter().flat_map(|t| t.partitions()) {
                    let _ = tpl.add_partition_offset(t, p.id(), rdkafka::Offset::Beginning);
                }
            }
            Err(e) => return esay(format!("demo watch: {e}")),
        }
    }
    if let Err(e) = consumer.assign(&tpl) {
        return esay(format!("demo watch: {e}"));
    }
    let mut shown = [0u32; 3];
    const SHOW: u32 = 6;
    let mut drain_until = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            // Show what the pipeline produced last, then stop.
            let until = *drain_until
                .get_or_insert_with(|| std::time::Instant::now() + Duration::from_secs(1));
            if std::time::Instant::now() >= until {
                break;
            }
        }
        let Some(Ok(m)) = consumer.poll(Duration::from_millis(200)) else {
            continue;
        };
        let Some(i) = topics.iter().position(|t| *t == m.topic()) else {
            continue;
        };
        shown[i] += 1;
        if shown[i] > SHOW {
            if shown[i] == SHOW + 1 {
                say(format!("[{}] … (more in the summary)", topics[i]));
            }
            continue;
        }
        let body = String::from_utf8_lossy(m.payload().unwrap_or_default());
        let line = if i == 2 {
            let err = m
                .headers()
                .and_then(|h| h.iter().find(|x| x.key == "error"))
                .and_then(|x| x.value)
                .map(|v| String::from_utf8_lossy(v).into_owned())
                .unwrap_or_default();
            format!("[{}] {err}", topics[i])
        } else {
            format!("[{}] {body}", topics[i])
        };
        say(line);
    }
}

pub fn produce_cmd(a: &ProduceArgs) -> Result<std::process::ExitCode> {
    init_logging("warn")?;
    let s = settings(&a.conn, Overrides::default())?;
    if !s.external {
        bail!(
            "no brokers: give --brokers host:port (the address `vigil serve` prints), VIGIL_BROKERS or a config file"
        );
    }
    let input =
        replay::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let bar = progress_bar(a.quiet, "producing");
    let stop = Arc::new(AtomicBool::new(false));
    on_signals(stop.clone())?;
    let p = produce(&s.stream, input, Some(a.rate), &stop, |n| {
        bar.set_position(n)
    })?;
    bar.finish_and_clear();
    if !p.too_large.is_empty() {
        let shown: Vec<String> = p.too_large.iter().take(10).map(u64::to_string).collect();
        esay(format!(
            "{} line(s) too large for a message, not sent: line {}{}",
            p.too_large.len(),
            shown.join(", "),
            if p.too_large.len() > 10 { ", …" } else { "" }
        ));
    }
    say(format!(
        "produced {} transactions and {} account events to {}; {} acknowledged{}{}",
        p.transactions,
        p.account_events,
        s.stream.brokers,
        p.acked,
        if p.failed > 0 {
            format!(", {} FAILED", p.failed)
        } else {
            String::new()
        },
        if p.unkeyed > 0 {
            format!(
                " ({} lines without an account id went unkeyed: Vigil will dead-letter them)",
                p.unkeyed
            )
        } else {
            String::new()
        }
    ));
    Ok(if p.failed > 0 || !p.too_large.is_empty() {
        std::process::ExitCode::from(1)
    } else {
        std::process::ExitCode::SUCCESS
    })
}
