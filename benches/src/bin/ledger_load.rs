//! Load generator for the ledger's durable path: many concurrent submitters settle transfers
//! through a journaled [`Ledger`] (group commit), each waiting for its record to be on disk
//! before the next one; then the journal is reopened and checked against what was acknowledged.
//!
//! ```sh
//! cargo run --release -p vigil-benches --bin ledger-load -- [--accounts N] [--concurrency C]
//!     [--duration SECS | --count N] [--workers W] [--threads] [--dir DIR] [--seed S]
//! ```
//!
//! The journal goes to a fresh directory under the system temp dir (or `--dir`), removed at the
//! end. N accounts (EUR) are opened and funded, then C submitters (tokio tasks on a
//! multi-thread runtime of W workers, or with `--threads` C OS threads blocking in
//! [`Ledger::wait`]) each loop: `execute(Transfer)` with `Risk::Allow` between two random
//! accounts and a unique `tx_id`, then await `durable(ticket)`. Latency is execute → durable.
//! Afterwards the journal is reopened with [`Ledger::open`]: the records replayed must equal the
//! records acknowledged, the rebuilt book must pass `check()` and hold the same balances, or the
//! run exits non-zero.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use vigil_engine::event::TxKind;
use vigil_engine::ledger::{
    BookConfig, Command, Ledger, LedgerError, Outcome, Party, Risk, Status, TransferCmd,
};

/// The `vigil` binary's allocator (see `decide-load`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The goal printed against, durable settlements per second.
const GOAL_PER_S: f64 = 100_000.0;
/// Each account's opening deposit, minor units (1,000,000.00 EUR: the per-operation limit).
const DEPOSIT_MINOR: i64 = 100_000_000;

#[derive(Debug, Parser)]
#[command(
    name = "ledger-load",
    about = "Durable settlements per second through the journaled ledger (group commit)"
)]
struct Args {
    /// Accounts to open and fund.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..))]
    accounts: u32,
    /// Concurrent submitters, each with one transfer in flight.
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// How long to submit for, seconds.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Submit exactly this many transfers instead of running for --duration.
    #[arg(long)]
    count: Option<u64>,
    /// Tokio worker threads for the submitter tasks.
    #[arg(long, default_value_t = 2)]
    workers: usize,
    /// Submit from OS threads blocking in Ledger::wait instead of tokio tasks.
    #[arg(long)]
    threads: bool,
    /// Where to create the journal's directory (default: the system temp dir).
    #[arg(long)]
    dir: Option<PathBuf>,
    /// Seed for the random accounts and amounts.
    #[arg(long, default_value_t = 1)]
    seed: u64,
}

/// What one submitter did.
#[derive(Debug, Default)]
struct Tally {
    /// execute → durable, ns, one per acknowledged transfer.
    latencies: Vec<u64>,
    settled: u64,
    declined: u64,
    errors: u64,
    first_error: Option<String>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.latencies.extend(o.latencies);
        self.settled += o.settled;
        self.declined += o.declined;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
    }
    fn acked(&self) -> u64 {
        self.settled + self.declined
    }
    fn record(&mut self, r: Result<Outcome, LedgerError>, t0: Instant, budget: &Budget) {
        match r {
            Ok(outcome) => {
                self.latencies.push(t0.elapsed().as_nanos() as u64);
                budget.acked.fetch_add(1, Ordering::Relaxed);
                match outcome {
                    Outcome::Transfer(t) if t.status == Status::Settled => self.settled += 1,
                    _ => self.declined += 1,
                }
            }
            Err(e) => {
                self.errors += 1;
                self.first_error.get_or_insert_with(|| e.to_string());
            }
        }
    }
}

/// Hands out work: until a deadline, or a fixed number of transfers.
#[derive(Debug)]
struct Budget {
    deadline: Instant,
    left: Option<AtomicU64>,
    /// Transfers acknowledged so far, for the per-second series.
    acked: AtomicU64,
}

impl Budget {
    fn take(&self) -> bool {
        match &self.left {
            Some(left) => left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
                .is_ok(),
            None => Instant::now() < self.deadline,
        }
    }
}

/// One submitter's transfers: random distinct accounts, small amounts, unique ids.
#[derive(Debug)]
struct Transfers {
    rng: ChaCha8Rng,
    accounts: u32,
    submitter: usize,
    n: u64,
}

impl Transfers {
    fn new(seed: u64, submitter: usize, accounts: u32) -> Transfers {
        Transfers {
            rng: ChaCha8Rng::seed_from_u64(
                seed.wrapping_mul(1_000_003).wrapping_add(submitter as u64),
            ),
            accounts,
            submitter,
            n: 0,
        }
    }
    fn next_cmd(&mut self) -> Command {
        let from = self.rng.random_range(0..self.accounts);
        let to = (from + 1 + self.rng.random_range(0..self.accounts - 1)) % self.accounts;
        self.n += 1;
        Command::Transfer(TransferCmd {
            tx_id: format!("t-{}-{}", self.submitter, self.n),
            kind: TxKind::Transfer,
            from: Party::Account(format!("a-{from}")),
            to: Party::Account(format!("a-{to}")),
            amount: self.rng.random_range(1..=10_000),
            currency: "EUR".into(),
            risk: Risk::Allow,
            rules: Vec::new(),
            score: 0,
        })
    }
}

/// Removes the journal's directory however the run ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The filesystem holding `path`, from /proc/self/mounts (longest matching mount point).
fn fs_type(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (_, mount, fs) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(mount)
                .then(|| (mount.len(), fs.to_string()))
        })
        .max()
        .map_or_else(|| "unknown".into(), |(_, fs)| fs)
}

/// The journal flusher thread's id (it is named `vigil-journal`).
fn flusher_tid() -> Option<String> {
    std::fs::read_dir("/proc/self/task").ok()?.find_map(|e| {
        let e = e.ok()?;
        let comm = std::fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == "vigil-journal").then(|| e.file_name().to_string_lossy().into_owned())
    })
}

/// A thread's write system calls (one per group-commit batch for the flusher, each followed
/// by one `fdatasync`) and CPU time in ns.
fn thread_counters(tid: &str) -> Option<(u64, u64)> {
    let io = std::fs::read_to_string(format!("/proc/self/task/{tid}/io")).ok()?;
    let syscw = io
        .lines()
        .find_map(|l| l.strip_prefix("syscw:"))?
        .trim()
        .parse()
        .ok()?;
    let sched = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let cpu = sched.split_whitespace().next()?.parse().ok()?;
    Some((syscw, cpu))
}

/// This process's CPU time in ns (all threads, live and exited).
fn process_cpu_ns() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(ticks * 10_000_000) // USER_HZ = 100
}

/// Resident memory, bytes.
fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// Every account's (available, held), in id order.
fn balances(ledger: &Ledger, accounts: u32) -> Vec<(i64, i64)> {
    ledger.read(|b| {
        (0..accounts)
            .map(|i| {
                b.get_account(&format!("a-{i}"))
                    .map_or((-1, -1), |a| (a.available, a.held))
            })
            .collect()
    })
}

fn run_tasks(ledger: &Ledger, args: &Args, budget: &Arc<Budget>) -> Result<Tally, String> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.workers.max(1))
        .thread_name("submitter")
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let per_task = args
        .count
        .map_or(4096, |c| c as usize / args.concurrency + 1);
    rt.block_on(async {
        let mut handles = Vec::with_capacity(args.concurrency);
        for i in 0..args.concurrency {
            let ledger = ledger.clone();
            let budget = Arc::clone(budget);
            let mut work = Transfers::new(args.seed, i, args.accounts);
            handles.push(tokio::spawn(async move {
                let mut tally = Tally {
                    latencies: Vec::with_capacity(per_task),
                    ..Tally::default()
                };
                while budget.take() {
                    let cmd = work.next_cmd();
                    let t0 = Instant::now();
                    let r = match ledger.execute(cmd) {
                        Ok(a) => ledger.durable(a.ticket).await.map(|()| a.outcome),
                        Err(e) => Err(e),
                    };
                    tally.record(r, t0, &budget);
                }
                tally
            }));
        }
        let mut all = Tally::default();
        for h in handles {
            all.merge(h.await.map_err(|e| format!("a submitter failed: {e}"))?);
        }
        Ok(all)
    })
}

fn run_threads(ledger: &Ledger, args: &Args, budget: &Budget) -> Result<Tally, String> {
    let per_thread = args
        .count
        .map_or(4096, |c| c as usize / args.concurrency + 1);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..args.concurrency)
            .map(|i| {
                let mut work = Transfers::new(args.seed, i, args.accounts);
                std::thread::Builder::new()
                    .name("submitter".into())
                    .stack_size(256 * 1024)
                    .spawn_scoped(s, move || {
                        let mut tally = Tally {
                            latencies: Vec::with_capacity(per_thread),
                            ..Tally::default()
                        };
                        while budget.take() {
                            let cmd = work.next_cmd();
                            let t0 = Instant::now();
                            let r = ledger
                                .execute(cmd)
                                .and_then(|a| ledger.wait(a.ticket).map(|()| a.outcome));
                            tally.record(r, t0, budget);
                        }
                        tally
                    })
                    .map_err(|e| format!("cannot start a submitter thread: {e}"))
            })
            .collect();
        let mut all = Tally::default();
        for h in handles {
            all.merge(
                h?.join()
                    .map_err(|_| "a submitter thread panicked".to_string())?,
            );
        }
        Ok(all)
    })
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn run(args: &Args) -> Result<bool, String> {
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let dir = TempDir(base.join(format!("vigil-ledger-load-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
    let path = dir.0.join("journal");
    let (ledger, _) = Ledger::open(&path, BookConfig::default()).map_err(|e| e.to_string())?;
    println!(
        "journal             {} ({})",
        path.display(),
        fs_type(&dir.0)
    );

    // Accounts, opened and funded; the setup's records count as acknowledged too.
    let t = Instant::now();
    let mut last = 0;
    for i in 0..args.accounts {
        let open = Command::Open {
            account: format!("a-{i}"),
            currency: "EUR".into(),
            locale: None,
        };
        let deposit = Command::Deposit {
            op_id: format!("dep-{i}"),
            account: format!("a-{i}"),
            amount: DEPOSIT_MINOR,
        };
        ledger.execute(open).map_err(|e| e.to_string())?;
        last = ledger.execute(deposit).map_err(|e| e.to_string())?.ticket;
    }
    ledger.wait(last).map_err(|e| e.to_string())?;
    let setup_records = u64::from(args.accounts) * 2;
    println!(
        "setup               {} accounts opened and funded in {:.2}s ({setup_records} records)",
        args.accounts,
        t.elapsed().as_secs_f64()
    );
    let bytes0 = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();
    let flusher = flusher_tid();
    let before = flusher.as_deref().and_then(thread_counters);
    let cpu0 = process_cpu_ns();
    let rss0 = rss_bytes();

    let budget = Arc::new(Budget {
        deadline: Instant::now() + Duration::from_secs_f64(args.duration),
        left: args.count.map(AtomicU64::new),
        acked: AtomicU64::new(0),
    });
    let t = Instant::now();
    let done = std::sync::atomic::AtomicBool::new(false);
    let (tally, series) = std::thread::scope(|s| {
        // Acknowledged per second, to show whether the rate holds up as the book grows.
        let sampler = s.spawn(|| {
            let mut series = Vec::new();
            let mut prev = 0;
            let mut tick = t;
            while !done.load(Ordering::Relaxed) {
                tick += Duration::from_secs(1);
                while Instant::now() < tick && !done.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                if done.load(Ordering::Relaxed) {
                    break;
                }
                let now = budget.acked.load(Ordering::Relaxed);
                series.push(now - prev);
                prev = now;
            }
            series
        });
        let tally = if args.threads {
            run_threads(&ledger, args, &budget)
        } else {
            run_tasks(&ledger, args, &budget)
        };
        done.store(true, Ordering::Relaxed);
        (tally, sampler.join().unwrap_or_default())
    });
    let tally = tally?;
    let secs = t.elapsed().as_secs_f64();
    let after = flusher.as_deref().and_then(thread_counters);
    let cpu1 = process_cpu_ns();
    let rss1 = rss_bytes();
    let bytes1 = std::fs::metadata(&path).map_err(|e| e.to_string())?.len();

    let acked = tally.acked();
    let rate = acked as f64 / secs;
    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    for &ns in &tally.latencies {
        hist.saturating_record(ns);
    }
    let how = if args.threads {
        format!("{} OS threads (Ledger::wait)", args.concurrency)
    } else {
        format!(
            "{} tokio tasks on {} worker threads (Ledger::durable)",
            args.concurrency,
            args.workers.max(1)
        )
    };
    println!("submitters          {how}");
    println!(
        "durable             {acked} settlements acknowledged in {secs:.2}s: {rate:.0}/s (goal ≥ {GOAL_PER_S:.0}/s: {})",
        if rate >= GOAL_PER_S { "met" } else { "not met" }
    );
    println!(
        "per second          {}",
        series
            .iter()
            .map(|n| format!("{:.0}k", *n as f64 / 1e3))
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "outcomes            {} settled, {} declined, {} errors{}",
        tally.settled,
        tally.declined,
        tally.errors,
        tally
            .first_error
            .as_deref()
            .map_or_else(String::new, |e| format!(" (first: {e})"))
    );
    println!(
        "latency             execute → durable: p50 {:.0}µs  p99 {:.0}µs  p99.9 {:.0}µs  max {:.0}µs",
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.99)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max())
    );
    if let (Some((w0, c0)), Some((w1, c1))) = (before, after) {
        let batches = w1.saturating_sub(w0);
        println!(
            "group commit        {batches} write+fdatasync batches, {:.0} records per batch, {:.0}µs per batch; flusher CPU {:.2}s",
            acked as f64 / batches.max(1) as f64,
            secs * 1e6 / batches.max(1) as f64,
            c1.saturating_sub(c0) as f64 / 1e9
        );
    }
    if let (Some(c0), Some(c1)) = (cpu0, cpu1) {
        let cpu = c1.saturating_sub(c0) as f64;
        println!(
            "cpu                 {:.2}s process CPU ({:.2} cores), {:.2}µs per settlement",
            cpu / 1e9,
            cpu / 1e9 / secs,
            cpu / 1e3 / acked.max(1) as f64
        );
    }
    println!(
        "journal size        {} bytes written, {:.1} B per settlement",
        bytes1 - bytes0,
        (bytes1 - bytes0) as f64 / acked.max(1) as f64
    );
    if let (Some(r0), Some(r1)) = (rss0, rss1) {
        println!(
            "memory              RSS grew {:.0} MiB, {:.0} B per settlement (latency samples included: 8 B each)",
            r1.saturating_sub(r0) as f64 / (1 << 20) as f64,
            r1.saturating_sub(r0) as f64 / acked.max(1) as f64
        );
    }

    // Reopen and compare with what was acknowledged.
    let live_ticket = ledger.last_ticket();
    let live = balances(&ledger, args.accounts);
    let live_counts = ledger.read(|b| b.counts());
    ledger.close();
    drop(ledger);
    let t = Instant::now();
    let (reopened, recovery) = match Ledger::open(&path, BookConfig::default()) {
        Ok(r) => r,
        Err(e) => {
            println!("recovery            FAILED: {e}");
            return Ok(false);
        }
    };
    let reopen_secs = t.elapsed().as_secs_f64();
    let expected = setup_records + acked;
    let violations = reopened.read(|b| b.check());
    let same_balances = balances(&reopened, args.accounts) == live;
    let same_counts = reopened.read(|b| b.counts()) == live_counts;
    reopened.close();
    let ok = recovery.records == expected
        && live_ticket == expected
        && recovery.torn_bytes == 0
        && violations.is_empty()
        && same_balances
        && same_counts
        && tally.errors == 0;
    println!(
        "recovery            reopened in {reopen_secs:.2}s: {} records replayed, {expected} acknowledged ({setup_records} setup + {acked}), last ticket {live_ticket}, {} torn bytes",
        recovery.records, recovery.torn_bytes
    );
    println!(
        "check               {}; balances {}; counts {}",
        if violations.is_empty() {
            "book.check() empty".to_string()
        } else {
            format!("book.check(): {}", violations.join("; "))
        },
        if same_balances { "identical" } else { "DIFFER" },
        if same_counts { "identical" } else { "DIFFER" }
    );
    println!("result              {}", if ok { "ok" } else { "FAILED" });
    Ok(ok)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.concurrency == 0 {
        eprintln!("--concurrency must be at least 1");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("ledger-load: {e}");
            ExitCode::FAILURE
        }
    }
}
