//! `vigil`: the one binary. Subcommands connect the crates; logic lives in the libraries.

use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use vigil_engine::packs::{self, LoadError};
use vigil_engine::{Engine, EngineConfig, replay, traffic};
use vigil_rules::PackOptions;

mod config;
mod serve;

/// jemalloc, built to back large allocations with transparent huge pages (see
/// `.cargo/config.toml`): at millions of accounts it takes decide()'s p99 from ~20 µs to ~7 µs
/// (BENCHMARKS.md). Built unprefixed (workspace Cargo.toml), it is also librdkafka's `malloc`.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The pack used when `--rules` is not given.
const DEFAULT_PACK: &str = "rules/packs/default";

#[derive(Parser, Debug)]
#[command(
    name = "vigil",
    version,
    about = "Real-time fraud and transaction monitoring",
    propagate_version = true
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Check rule packs and run their tests.
    #[command(subcommand)]
    Rules(RulesCommand),
    /// Run recorded traffic (JSON lines, optionally gzip) through the engine and report.
    Replay(ReplayArgs),
    /// Generate realistic labeled traffic.
    Gen(GenArgs),
    /// Decide a Kafka stream: transactions and account events in; decisions, freeze requests,
    /// notifications and dead letters out. Without --brokers, on an embedded in-memory broker.
    Serve(serve::ServeArgs),
    /// Publish recorded traffic to the input topics.
    Produce(serve::ProduceArgs),
}

#[derive(Subcommand, Debug)]
enum RulesCommand {
    /// Check a pack: every problem as file:line:col: message; a summary when it is good.
    Check(PackArgs),
    /// Run the test cases written beside the rules.
    Test(PackArgs),
}

#[derive(Args, Debug)]
struct PackArgs {
    /// The pack directory.
    #[arg(default_value = DEFAULT_PACK)]
    dir: PathBuf,
    /// Longest window a rule may use (e.g. 30d).
    #[arg(long, default_value = "30d", value_parser = parse_window_max)]
    window_max: i64,
}

#[derive(Args, Debug)]
struct ReplayArgs {
    /// The recorded traffic (.jsonl or .jsonl.gz).
    file: PathBuf,
    /// The pack directory.
    #[arg(long, default_value = DEFAULT_PACK)]
    rules: PathBuf,
    /// Write every decision as a JSON line here.
    #[arg(long, conflicts_with = "compare")]
    out: Option<PathBuf>,
    /// Backtest: also run this (old) pack over the same traffic and report what --rules (the
    /// new pack) would change: actions, amounts, rules, precision and recall of each side.
    #[arg(long, value_name = "OLD_DIR")]
    compare: Option<PathBuf>,
    /// With --compare: write every decision that changes action here, as JSON lines.
    #[arg(long, requires = "compare")]
    changed: Option<PathBuf>,
    /// Labels to score against, joined on tx_id: JSON lines {"tx_id", "is_fraud"} such as
    /// `GET /v1/labels` exports from analysts' verdicts. They replace the labels the traffic
    /// carries.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Longest window a rule may use (e.g. 30d, at most 31d).
    #[arg(long, default_value = "30d", value_parser = parse_window_max)]
    window_max: i64,
    /// Allowed lateness of events (e.g. 5m, at most 1h).
    #[arg(long, default_value = "5m", value_parser = parse_lateness)]
    lateness: i64,
    /// Skip events before this time (RFC 3339): replay as a deployment that starts cold would
    /// see the traffic, without the history before it.
    #[arg(long)]
    from: Option<String>,
    /// Apply events in file (arrival) order instead of event-time order, as a live consumer
    /// would: reproduces late events.
    #[arg(long)]
    arrival_order: bool,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

#[derive(Args, Debug)]
struct GenArgs {
    /// Number of accounts.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10_000_000))]
    accounts: u32,
    /// Number of days.
    #[arg(long, default_value_t = 14, value_parser = clap::value_parser!(u32).range(1..=3650))]
    days: u32,
    /// Random seed: the same seed gives the same file.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fraction of accounts hit by a fraud scenario.
    #[arg(long, default_value_t = 0.02)]
    fraud_rate: f64,
    /// Output file; gzip-compressed when it ends in .gz.
    #[arg(long)]
    out: PathBuf,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

/// Longest window state can answer (the daily tier's reach).
const WINDOW_MAX_LIMIT_MS: i64 = vigil_engine::state::window::DAY_TIER_MS_MAX;

fn parse_window_max(s: &str) -> Result<i64, String> {
    let ms = parse_window(s)?;
    if ms > WINDOW_MAX_LIMIT_MS {
        return Err(format!("state keeps at most 31d of history; {s} is longer"));
    }
    Ok(ms)
}

fn parse_lateness(s: &str) -> Result<i64, String> {
    let ms = parse_window(s)?;
    if ms > vigil_engine::engine::LATENESS_MS_MAX {
        return Err(format!("lateness is at most 1h; {s} is longer"));
    }
    Ok(ms)
}

fn parse_window(s: &str) -> Result<i64, String> {
    vigil_rules::num::parse_duration(s)
        .ok_or_else(|| format!("'{s}' is not a duration such as 30s, 10m, 24h or 30d"))
}

fn progress_bar(quiet: bool, what: &str) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(0);
    if let Ok(style) =
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
    {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(what.to_string());
    bar
}

fn load_pack(dir: &Path, window_ms_max: i64) -> Result<vigil_rules::CompiledPack, ExitCode> {
    match packs::load(dir, &PackOptions { window_ms_max }) {
        Ok(p) => Ok(p),
        Err(LoadError::Invalid(d)) => {
            for diag in &d.0 {
                esay(format!("{diag}"));
            }
            esay(format!(
                "error: {} problem{} in {}",
                d.0.len(),
                if d.0.len() == 1 { "" } else { "s" },
                dir.display()
            ));
            Err(ExitCode::from(1))
        }
        Err(e) => {
            esay(format!("error: cannot read the rule pack: {e}"));
            Err(ExitCode::from(2))
        }
    }
}

fn rules_check(a: &PackArgs) -> ExitCode {
    match load_pack(&a.dir, a.window_max) {
        Ok(p) => {
            for w in &p.warnings {
                esay(format!("warning: {w}"));
            }
            say(format!("ok: {}", p.summary()));
            ExitCode::SUCCESS
        }
        Err(code) => code,
    }
}

fn rules_test(a: &PackArgs) -> ExitCode {
    let pack = match load_pack(&a.dir, a.window_max) {
        Ok(p) => p,
        Err(code) => return code,
    };
    let results = packs::run_tests(&pack);
    let mut failed = 0;
    for r in &results {
        if r.passed() {
            say(format!(
                "PASS {}:{} {}",
                r.case.file, r.case.line, r.case.name
            ));
        } else {
            failed += 1;
            say(format!(
                "FAIL {}:{} {}",
                r.case.file, r.case.line, r.case.name
            ));
            for f in &r.failures {
                say(format!("       {f}"));
            }
            if let Some(d) = &r.decision {
                say(format!("       decision: {}", d.to_json()));
            }
        }
    }
    say(format!(
        "{} passed, {} failed",
        results.len() - failed,
        failed
    ));
    if failed > 0 {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}

fn replay_cmd(a: &ReplayArgs) -> Result<ExitCode> {
    let pack = match load_pack(&a.rules, a.window_max) {
        Ok(p) => p,
        Err(code) => return Ok(code),
    };
    let reader =
        replay::open(&a.file).with_context(|| format!("cannot open {}", a.file.display()))?;
    let mut input =
        replay::read(reader).with_context(|| format!("cannot read {}", a.file.display()))?;
    if let Some(from) = &a.from {
        let from_ms = vigil_engine::event::parse_ts(from)
            .map_err(|e| anyhow::anyhow!("--from: {}", e.message))?;
        input.events.retain(|(_, e)| e.ts_ms() >= from_ms);
    }
    if let Some(path) = &a.labels {
        let reader =
            replay::open(path).with_context(|| format!("cannot open {}", path.display()))?;
        let labels = match replay::read_labels(reader) {
            Ok(l) => l,
            Err(e) => {
                esay(format!("{}: {e}", path.display()));
                return Ok(ExitCode::from(2));
            }
        };
        let matched = replay::apply_labels(&mut input, &labels);
        say(format!(
            "labels      {} from {}, {matched} on transactions of this traffic",
            labels.len(),
            path.display()
        ));
    }
    let config = EngineConfig {
        lateness_ms: a.lateness,
        id_secret: Some(vigil_engine::state::REPLAY_SECRET),
        ..EngineConfig::default()
    };
    let order = if a.arrival_order {
        replay::Order::Arrival
    } else {
        replay::Order::EventTime
    };
    if let Some(old_dir) = &a.compare {
        let old = match load_pack(old_dir, a.window_max) {
            Ok(p) => p,
            Err(code) => return Ok(code),
        };
        return compare_cmd(
            a,
            Engine::new(old, config),
            Engine::new(pack, config),
            input,
            order,
        );
    }
    let engine = Engine::new(pack, config);
    let mut out = match &a.out {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let bar = progress_bar(a.quiet, "replay");
    let report = replay::run(
        &engine,
        input,
        order,
        out.as_mut().map(|w| w as &mut dyn Write),
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    say(report.to_string().trim_end());
    Ok(ExitCode::SUCCESS)
}

fn compare_cmd(
    a: &ReplayArgs,
    old: Engine,
    new: Engine,
    input: replay::Input,
    order: replay::Order,
) -> Result<ExitCode> {
    let mut changed = match &a.changed {
        Some(p) => Some(BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => None,
    };
    let bar = progress_bar(a.quiet, "backtest");
    let cmp = vigil_engine::backtest::compare(
        &old,
        &new,
        input,
        order,
        changed.as_mut().map(|w| w as &mut dyn Write),
        &mut |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )?;
    bar.finish_and_clear();
    say(cmp.to_string().trim_end());
    if let Some(p) = &a.changed {
        say(format!(
            "changed decisions written to {} ({} lines)",
            p.display(),
            cmp.changed
        ));
    }
    Ok(ExitCode::SUCCESS)
}

fn gen_cmd(a: &GenArgs) -> Result<ExitCode> {
    let cfg = traffic::GenConfig {
        accounts: a.accounts,
        days: a.days,
        seed: a.seed,
        fraud_rate: a.fraud_rate,
        ..traffic::GenConfig::default()
    };
    // A regular file (or none yet) is written beside and renamed over once complete: a bad
    // argument, a full disk or an interrupt leaves an existing file as it was, never half
    // written. Anything else (a symlink, /dev/stdout, a FIFO) is written through directly.
    if a.out.is_dir() {
        anyhow::bail!("cannot write {}: it is a directory", a.out.display());
    }
    let in_place = std::fs::symlink_metadata(&a.out).is_ok_and(|m| !m.file_type().is_file());
    if in_place {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&a.out)
            .with_context(|| format!("cannot write {}", a.out.display()))?;
        let stats = write_traffic(a, &cfg, file, false)?;
        return report_gen(a, &stats);
    }
    let name = a.out.file_name().map_or_else(
        || std::ffi::OsString::from("gen"),
        std::ffi::OsStr::to_os_string,
    );
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(&name);
    tmp_name.push(format!(".{}.tmp", std::process::id()));
    let tmp = a.out.with_file_name(tmp_name);
    // Ctrl-C (or SIGTERM) removes the half-written file and ends the run at once (taken
    // before the file exists, so no signal finds it unwatched). Should the rename have
    // happened first, the complete file stays.
    let mut signals = signal_hook::iterator::Signals::new([
        signal_hook::consts::SIGINT,
        signal_hook::consts::SIGTERM,
    ])?;
    let doomed = tmp.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            match std::fs::remove_file(&doomed) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    esay("interrupted after the file was complete: it is in place");
                }
                _ => esay("interrupted: nothing written"),
            }
            std::process::exit(130);
        }
    });
    let file = std::fs::File::create(&tmp).with_context(|| {
        format!(
            "cannot create {} (to write {})",
            tmp.display(),
            a.out.display()
        )
    })?;
    // A file replaced keeps its permissions.
    let kept = std::fs::metadata(&a.out).ok().map(|m| m.permissions());
    let written = write_traffic(a, &cfg, file, true).and_then(|stats| {
        if let Some(p) = kept {
            std::fs::set_permissions(&tmp, p)
                .with_context(|| format!("cannot set the permissions of {}", tmp.display()))?;
        }
        std::fs::rename(&tmp, &a.out)
            .with_context(|| format!("cannot write {}", a.out.display()))?;
        Ok(stats)
    });
    let stats = match written {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
    };
    report_gen(a, &stats)
}

/// Says what `vigil gen` wrote.
fn report_gen(a: &GenArgs, stats: &traffic::GenStats) -> Result<ExitCode> {
    say(format!(
        "wrote {}: {} events ({} transactions, {} account events), {} fraud transactions",
        a.out.display(),
        stats.events,
        stats.transactions,
        stats.account_events,
        stats.fraud_transactions
    ));
    for (name, n) in &stats.by_scenario {
        say(format!("  {name:<20} {n}"));
    }
    Ok(ExitCode::SUCCESS)
}

/// Generates `cfg`'s traffic into `file` (gzip when `a.out` ends in `.gz`); with `sync`, waits
/// until it is on disk (before it is renamed over the file it replaces, so a crash cannot leave
/// an empty file under the old name).
fn write_traffic(
    a: &GenArgs,
    cfg: &traffic::GenConfig,
    file: std::fs::File,
    sync: bool,
) -> Result<traffic::GenStats> {
    let bar = progress_bar(a.quiet, "gen");
    let mut progress = |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    };
    let (stats, file) = if a.out.extension().is_some_and(|e| e == "gz") {
        let mut gz = vigil_engine::replay::gz_writer(file);
        let s = traffic::generate(cfg, &mut gz, &mut progress)?;
        (s, gz.finish()?.into_inner().map_err(|e| e.into_error())?)
    } else {
        let mut w = BufWriter::new(file);
        let s = traffic::generate(cfg, &mut w, &mut progress)?;
        (s, w.into_inner().map_err(|e| e.into_error())?)
    };
    if sync {
        file.sync_all()?;
    }
    bar.finish_and_clear();
    Ok(stats)
}

/// Writes a line to stdout; a closed pipe (`vigil ... | head`) ends the program quietly
/// instead of panicking.
fn say(line: impl std::fmt::Display) {
    let mut out = std::io::stdout().lock();
    if let Err(e) = writeln!(out, "{line}") {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        esay(format!("error: cannot write to stdout: {e}"));
        std::process::exit(1);
    }
}

/// Writes a line to stderr.
fn esay(line: impl std::fmt::Display) {
    eprintln!("{line}");
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Rules(RulesCommand::Check(a)) => Ok(rules_check(a)),
        Command::Rules(RulesCommand::Test(a)) => Ok(rules_test(a)),
        Command::Replay(a) => replay_cmd(a),
        Command::Gen(a) => gen_cmd(a),
        Command::Serve(a) => serve::serve_cmd(a),
        Command::Produce(a) => serve::produce_cmd(a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            esay(format!("error: {e:#}"));
            ExitCode::from(1)
        }
    }
}
