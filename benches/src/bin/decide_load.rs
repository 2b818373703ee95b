//! Load generator for `decide()`: fills state with N accounts, then measures throughput and
//! latency percentiles on one thread with the default pack.
//!
//! `cargo run --release -p vigil-benches --bin decide-load -- [ACCOUNTS] [EVENTS] [PACK_DIR]
//! [--one-at-a-time]` (the default pack unless PACK_DIR is given). The timed pass decides in
//! batches (`Engine::decide_batch`, as replay does) unless `--one-at-a-time` asks for
//! `decide_into` per transaction (as the Kafka and HTTP paths call it). The state is sized for
//! ACCOUNTS up front unless `--capacity N` says otherwise (`--capacity 0`: its tables grow as
//! accounts arrive, as `vigil serve`'s do without `[state] accounts`). `--sweeper` sweeps idle
//! state on a thread of its own during the timed pass, every 50 ms, as `vigil serve` does every
//! 10 s (the decisions then never sweep inline): what a sweep makes the decisions wait.
//! `--probe [N]` times random lookups in a table of N entries; `--page-probe` what address
//! translation adds to reads spread over gigabytes.

use std::path::{Path, PathBuf};
use std::time::Instant;

use hdrhistogram::Histogram;
use vigil_benches::Workload;
use vigil_engine::engine::Scratch;
use vigil_engine::{Engine, EngineConfig, packs};
use vigil_rules::PackOptions;

/// jemalloc, built to back large allocations with transparent huge pages (see
/// `.cargo/config.toml`): state tables are gigabytes, and on 4 KiB pages nearly every random
/// access also misses the TLB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn rss_bytes() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = s.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}

/// What address translation adds to a read from memory: independent reads of lines that are
/// not in cache, spread over a few MB (the pages' translations stay cached) and wider, up to
/// 4 GB (as the state is). Caches are emptied before each pass by reading a larger buffer.
fn page_probe() {
    const LINES: usize = 65_536;
    const BIG: usize = 4 << 30;
    let buf = vec![1u8; BIG];
    let evict = vec![1u8; 256 << 20];
    // Whether the kernel gave huge pages (in the guest; how a host backs them is not visible).
    let huge = std::fs::read_to_string("/proc/self/smaps_rollup")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("AnonHugePages:"))
                .map(|l| l.split_whitespace().nth(1).unwrap_or("?").to_string())
        })
        .unwrap_or_else(|| "?".into());
    println!("page probe          {huge} kB of anonymous memory in huge pages");
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x as usize
    };
    let spans = [
        ("4 MB", LINES * 64),
        ("64 MB", 64 << 20),
        ("512 MB", 512 << 20),
        ("2 GB", 2 << 30),
        ("4 GB", BIG),
    ];
    for (name, span) in spans {
        let mut best = f64::MAX;
        let mut sum = 0u64;
        for _ in 0..3 {
            let mut lines: Vec<usize> = if span == LINES * 64 {
                // Every line of the span once, in random order.
                let mut l: Vec<usize> = (0..LINES).map(|i| i * 64).collect();
                for i in (1..l.len()).rev() {
                    l.swap(i, next() % (i + 1));
                }
                l
            } else {
                (0..LINES).map(|_| next() % (span / 64) * 64).collect()
            };
            lines.shrink_to_fit();
            sum += evict.iter().step_by(64).map(|b| u64::from(*b)).sum::<u64>();
            let t = Instant::now();
            sum += lines.iter().map(|&i| u64::from(buf[i])).sum::<u64>();
            best = best.min(t.elapsed().as_secs_f64() * 1e9 / LINES as f64);
        }
        println!(
            "page probe          {LINES} lines out of cache over {name}: {best:.1} ns per read (best of 3; checksum {sum})"
        );
    }
}

/// The memory floor: random reads of one field from a DashMap of `n` entries as large as an
/// account entry, one thread. A decision touches six to eight such places.
fn probe(n: u64) {
    use rand::{Rng, SeedableRng};
    let map: dashmap::DashMap<u64, [u64; 184], vigil_engine::state::FxBuild> =
        dashmap::DashMap::with_capacity_and_hasher(n as usize, Default::default());
    for i in 0..n {
        map.insert(i.wrapping_mul(0x9E37_79B9_7F4A_7C15), [i; 184]);
    }
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let keys: Vec<u64> = (0..2_000_000)
        .map(|_| rng.random_range(0..n).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let t = Instant::now();
    let mut sum = 0u64;
    for k in &keys {
        sum = sum.wrapping_add(map.get(k).map_or(0, |v| v[7]));
    }
    let ns = t.elapsed().as_nanos() as f64 / keys.len() as f64;
    println!(
        "probe               {n} entries of 1472 B: {ns:.0} ns per random lookup (checksum {sum})"
    );
    // The same lookups in a plain hash map, behind a lock per lookup and behind one lock.
    let plain: std::sync::Mutex<
        std::collections::HashMap<u64, [u64; 184], vigil_engine::state::FxBuild>,
    > = std::sync::Mutex::new(map.into_iter().collect());
    let t = Instant::now();
    let mut sum2 = 0u64;
    for k in &keys {
        let g = plain.lock().expect("lock");
        sum2 = sum2.wrapping_add(g.get(k).map_or(0, |v| v[7]));
    }
    let ns = t.elapsed().as_nanos() as f64 / keys.len() as f64;
    println!("probe               std HashMap, a Mutex per lookup: {ns:.0} ns (checksum {sum2})");
    let g = plain.lock().expect("lock");
    let t = Instant::now();
    let mut sum3 = 0u64;
    for k in &keys {
        sum3 = sum3.wrapping_add(g.get(k).map_or(0, |v| v[7]));
    }
    let ns = t.elapsed().as_nanos() as f64 / keys.len() as f64;
    println!("probe               std HashMap, one lock held: {ns:.0} ns (checksum {sum3})");
}

fn main() {
    let mut args: Vec<String> = std::env::args().collect();
    let one_at_a_time = args.iter().any(|a| a == "--one-at-a-time");
    args.retain(|a| a != "--one-at-a-time");
    let sweeper = args.iter().any(|a| a == "--sweeper");
    args.retain(|a| a != "--sweeper");
    let capacity: Option<usize> = match args.iter().position(|a| a == "--capacity") {
        Some(i) => {
            let n = args.get(i + 1).and_then(|a| a.parse().ok());
            if n.is_none() {
                eprintln!("--capacity takes a number of accounts");
                std::process::exit(2);
            }
            args.drain(i..i + 2);
            n
        }
        None => None,
    };
    if args.get(1).map(String::as_str) == Some("--page-probe") {
        page_probe();
        return;
    }
    if args.get(1).map(String::as_str) == Some("--probe") {
        probe(
            args.get(2)
                .and_then(|a| a.parse().ok())
                .unwrap_or(1_000_000),
        );
        return;
    }
    let accounts: u32 = args
        .get(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let events: usize = args
        .get(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or(3_000_000);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // Another pack (a third argument) shows what each part of the default one costs.
    let pack_dir = args
        .get(3)
        .map_or_else(|| root.join("rules/packs/default"), PathBuf::from);
    let pack = match packs::load(&pack_dir, &PackOptions::default()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let config = EngineConfig {
        accounts_capacity: capacity.unwrap_or(accounts as usize),
        maintain_every: if sweeper {
            0
        } else {
            EngineConfig::default().maintain_every
        },
        ..EngineConfig::default()
    };
    let engine = Engine::new(pack, config);
    let mut w = Workload::new(accounts, 7);
    let rss0 = rss_bytes().unwrap_or(0);
    // The fill's slowest events: a table growing rehashes a shard while holding it.
    let (mut fill_max, mut fill_slow) = (0u64, 0u64);
    let t = Instant::now();
    for i in 0..accounts {
        let ev = w.opened(i);
        let t0 = Instant::now();
        engine.apply(&ev);
        let ns = t0.elapsed().as_nanos() as u64;
        fill_max = fill_max.max(ns);
        fill_slow += if ns > 100_000 { ns } else { 0 };
    }
    let fill_secs = t.elapsed().as_secs_f64();
    // Warm-up: every account gets history, so the timed pass runs on full state.
    let warm: Vec<_> = (0..accounts * 2).map(|k| w.tx_for(k % accounts)).collect();
    let t = Instant::now();
    for tx in &warm {
        engine.decide(tx);
    }
    let warm_secs = t.elapsed().as_secs_f64();
    drop(warm);
    let stats = engine.state_stats();
    let rss1 = rss_bytes().unwrap_or(0);

    let txs: Vec<_> = (0..events).map(|_| w.next_tx()).collect();
    // After the events are built (3M of them take ~700 MB), so the timed pass's growth is the
    // state's alone.
    let rss_timed = rss_bytes().unwrap_or(0);
    let mut out = Scratch::default();
    let mut hist = Histogram::<u64>::new_with_bounds(1, 1_000_000_000, 3).expect("histogram");
    // `perf record --control fifo:PATH -D -1` with VIGIL_PERF_CTL=PATH profiles the timed pass
    // alone (start it through perf: writing to the FIFO waits until perf has opened it).
    let perf_ctl = |cmd: &str| {
        if let Some(path) = std::env::var_os("VIGIL_PERF_CTL") {
            let _ = std::fs::write(path, cmd);
        }
    };
    perf_ctl("enable\n");
    let t = Instant::now();
    let mut flagged = 0u64;
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut secs = 0.0;
    let (mut sweeps, mut sweep_max_ms) = (0u32, 0f64);
    std::thread::scope(|s| {
        if sweeper {
            s.spawn(|| {
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    let t = Instant::now();
                    engine.maintain();
                    sweeps += 1;
                    sweep_max_ms = sweep_max_ms.max(t.elapsed().as_secs_f64() * 1e3);
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
            });
        }
        if one_at_a_time {
            for tx in &txs {
                let t0 = Instant::now();
                let d = engine.decide_into(tx, &mut out);
                hist.saturating_record(t0.elapsed().as_nanos() as u64);
                flagged += u64::from(d.action != vigil_rules::Action::Allow);
            }
        } else {
            // A decision's latency: from the one before it (or the start) to its own.
            let mut t0 = Instant::now();
            engine.decide_batch(&txs, &mut out, |_, d| {
                let now = Instant::now();
                hist.saturating_record(now.duration_since(t0).as_nanos() as u64);
                t0 = now;
                flagged += u64::from(d.action != vigil_rules::Action::Allow);
            });
        }
        // Before the sweeper is joined: its sweep under way is not the decisions' time.
        secs = t.elapsed().as_secs_f64();
        perf_ctl("disable\n");
        done.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    let rss2 = rss_bytes().unwrap_or(0);
    let after = engine.state_stats();
    // One sweep for idle state, as `vigil serve` runs on its own thread (and the loop above
    // runs inline every `maintain_every` events: its max latency).
    let t = Instant::now();
    engine.maintain();
    let sweep_ms = t.elapsed().as_secs_f64() * 1e3;
    println!(
        "accounts            {accounts}, state sized for {}",
        capacity.unwrap_or(accounts as usize)
    );
    println!(
        "fill                {accounts} account_opened in {fill_secs:.2}s; slowest {:.1} ms, {:.0} ms in events over 100µs",
        fill_max as f64 / 1e6,
        fill_slow as f64 / 1e6
    );
    println!(
        "warm-up             {} decisions in {warm_secs:.2}s ({:.0}/s)",
        accounts as usize * 2,
        accounts as f64 * 2.0 / warm_secs
    );
    println!(
        "timed               {events} decisions in {secs:.2}s: {:.0} decisions/s (one thread, {}, timer included)",
        events as f64 / secs,
        if one_at_a_time {
            "one at a time"
        } else {
            "in batches"
        }
    );
    println!(
        "latency             p50 {:.2}µs  p99 {:.2}µs  p99.9 {:.2}µs  max {:.1}µs",
        hist.value_at_quantile(0.5) as f64 / 1e3,
        hist.value_at_quantile(0.99) as f64 / 1e3,
        hist.value_at_quantile(0.999) as f64 / 1e3,
        hist.max() as f64 / 1e3
    );
    // Time in decisions over 100 µs: table growth (a shard's rehash) and the inline sweep.
    let slow_ns: u64 = hist
        .iter_recorded()
        .filter(|v| v.value_iterated_to() > 100_000)
        .map(|v| v.value_iterated_to() * v.count_at_value())
        .sum();
    let over = |ns: u64| hist.count_between(ns + 1, hist.max().max(ns + 1));
    println!(
        "                    mean {:.2}µs; {:.0} ms in decisions over 100µs; {} decisions over 100µs, {} over 1 ms",
        hist.mean() / 1e3,
        slow_ns as f64 / 1e6,
        over(100_000),
        over(1_000_000)
    );
    println!("flagged             {flagged}");
    if sweeper {
        println!(
            "sweeper             {sweeps} sweeps on their own thread during the timed pass, the longest {sweep_max_ms:.1} ms"
        );
    }
    println!(
        "sweep               idle-state eviction, the stores due (see `State::maintain`): {sweep_ms:.1} ms"
    );
    println!(
        "state               {} accounts, {} devices, {} ips, {} counterparties, {} tx ids",
        stats.accounts, stats.keyed[0], stats.keyed[1], stats.keyed[2], stats.seen_tx
    );
    println!(
        "                    after the timed pass: {} devices, {} counterparties, {} tx ids; ~{} B/account, ~{} B per other key",
        after.keyed[0],
        after.keyed[2],
        after.seen_tx,
        after.account_bytes / after.accounts.max(1),
        after.keyed_bytes / after.keyed.iter().sum::<usize>().max(1)
    );
    println!(
        "memory              accounts ~{} B/account (estimate); RSS growth {} B/account (all stores, tx ids included)",
        stats.account_bytes / stats.accounts.max(1),
        rss1.saturating_sub(rss0) / u64::from(accounts.max(1))
    );
    println!(
        "                    RSS growth during the timed pass: {} MB",
        rss2.saturating_sub(rss_timed) >> 20
    );
}
