//! End-to-end load generator for the Kafka path, on the embedded broker (librdkafka's
//! in-process mock cluster): produce a recorded file onto the input topics, read it back with a
//! bare rdkafka consumer, then run the pipeline over the same messages (consume → align →
//! decide → produce decisions) and compare the two rates, measured in the same run. Between the
//! two it measures the floor under any pipeline here: consume every message and produce one
//! record per transaction with the pipeline's producer settings, deciding nothing.
//!
//! ```sh
//! cargo run --release -p vigil-benches --bin kafka-load -- [--input FILE] [--accounts N]
//!     [--days D] [--seed S] [--partitions P] [--pause-at N] [--timeout SECS]
//! ```
//!
//! Without `--input`, traffic is generated in memory (`vigil gen`'s generator, 20,000 accounts
//! over 14 days by default: about 870,000 events). The embedded broker keeps at most 5 MiB (or
//! 100,000 batches) per partition and silently drops older batches past that, so the run
//! checks that every produced message is still there before measuring, and fails otherwise.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::{Offset, TopicPartitionList};
use vigil_engine::stream::embedded::Embedded;
use vigil_engine::stream::produce::produce;
use vigil_engine::stream::{
    Pipeline, Stats, StreamConfig, Topics, client_config, output_producer_config,
};
use vigil_engine::{Engine, EngineConfig, packs, replay, traffic};
use vigil_rules::PackOptions;

/// The `vigil` binary's allocator (see `decide-load`); built unprefixed, it serves librdkafka's
/// allocations too.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

#[derive(Debug)]
struct Args {
    input: Option<PathBuf>,
    accounts: u32,
    days: u32,
    seed: u64,
    partitions: i32,
    pause_at: usize,
    timeout: Duration,
}

const USAGE: &str = "usage: kafka-load [--input FILE] [--accounts N] [--days D] [--seed S] [--partitions P] [--pause-at N (0: never)] [--timeout SECS]";

fn args() -> Result<Args, String> {
    let mut a = Args {
        input: None,
        accounts: 20_000,
        days: 14,
        seed: 2027,
        partitions: 16,
        pause_at: StreamConfig::default().pause_at,
        timeout: Duration::from_secs(300),
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        if flag == "-h" || flag == "--help" {
            return Err(USAGE.into());
        }
        let value = it
            .next()
            .ok_or_else(|| format!("{flag} needs a value\n{USAGE}"))?;
        let bad = |e: &dyn std::fmt::Display| format!("{flag} {value}: {e}");
        match flag.as_str() {
            "--input" => a.input = Some(PathBuf::from(&value)),
            "--accounts" => a.accounts = value.parse().map_err(|e| bad(&e))?,
            "--days" => a.days = value.parse().map_err(|e| bad(&e))?,
            "--seed" => a.seed = value.parse().map_err(|e| bad(&e))?,
            "--partitions" => a.partitions = value.parse().map_err(|e| bad(&e))?,
            "--pause-at" => {
                a.pause_at = match value.parse::<usize>().map_err(|e| bad(&e))? {
                    0 => usize::MAX,
                    n => n,
                }
            }
            "--timeout" => {
                a.timeout = Duration::from_secs(value.parse().map_err(|e| bad(&e))?);
            }
            _ => return Err(format!("unknown option {flag}\n{USAGE}")),
        }
    }
    if a.partitions < 1 {
        return Err("--partitions must be at least 1".into());
    }
    Ok(a)
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kafka-load: {e}");
            ExitCode::FAILURE
        }
    }
}

/// CPU time used so far by the calling thread (`thread`) or the whole process, from
/// `/proc` (10 ms resolution); zero where `/proc` is not available.
fn cpu_time(thread: bool) -> Duration {
    let path = if thread {
        "/proc/thread-self/stat"
    } else {
        "/proc/self/stat"
    };
    let ticks = std::fs::read_to_string(path).ok().and_then(|s| {
        // Fields after the command name (which may hold spaces): utime is the 14th field.
        let rest = s.rsplit_once(')')?.1;
        let f: Vec<&str> = rest.split_whitespace().collect();
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    });
    Duration::from_millis(ticks.unwrap_or(0) * 10)
}

fn rate(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64().max(1e-9)
}

/// The input file's lines, as `vigil produce` would send them.
fn load(a: &Args) -> Result<(Vec<u8>, String), String> {
    let mut data = Vec::new();
    let what = match &a.input {
        Some(path) => {
            let mut r = replay::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
            std::io::Read::read_to_end(&mut r, &mut data)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            path.display().to_string()
        }
        None => {
            let cfg = traffic::GenConfig {
                accounts: a.accounts,
                days: a.days,
                seed: a.seed,
                ..traffic::GenConfig::default()
            };
            traffic::generate(&cfg, &mut data, &mut |_, _| {}).map_err(|e| e.to_string())?;
            format!(
                "generated: {} accounts, {} days, seed {}",
                a.accounts, a.days, a.seed
            )
        }
    };
    Ok((data, what))
}

/// Per input topic: (partition, low, high) watermarks.
fn watermarks(
    cfg: &StreamConfig,
    topic: &str,
    partitions: i32,
) -> Result<Vec<(i32, i64, i64)>, String> {
    let c: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}-watermarks", cfg.group_id))
        .create()
        .map_err(|e| e.to_string())?;
    (0..partitions)
        .map(|p| {
            c.fetch_watermarks(topic, p, Duration::from_secs(10))
                .map(|(l, h)| (p, l, h))
                .map_err(|e| format!("{topic}/{p}: {e}"))
        })
        .collect()
}

/// Every produced message is still on its partition: nothing dropped by the mock broker's
/// per-partition limit.
fn check_kept(
    cfg: &StreamConfig,
    topic: &str,
    partitions: i32,
    produced: u64,
) -> Result<Vec<(i32, i64, i64)>, String> {
    let w = watermarks(cfg, topic, partitions)?;
    let dropped: Vec<String> = w
        .iter()
        .filter(|(_, low, _)| *low != 0)
        .map(|(p, low, _)| format!("{topic}/{p} starts at {low}"))
        .collect();
    if !dropped.is_empty() {
        return Err(format!(
            "the embedded broker dropped messages (it keeps 5 MiB per partition): {}; use more --partitions or fewer events",
            dropped.join(", ")
        ));
    }
    let held: i64 = w.iter().map(|(_, _, h)| h).sum();
    if held != produced as i64 {
        return Err(format!(
            "{topic}: {held} messages on the broker, {produced} produced"
        ));
    }
    Ok(w)
}

/// What is left to read: (transactions topic?, partition) → its high watermark.
type Left = std::collections::HashMap<(bool, i32), i64>;

/// A plain consumer (no group join) assigned every non-empty input partition from its
/// beginning, with the pipeline's consumer settings (without the lower fetch.queue.backoff.ms,
/// the consumer idles up to a second whenever its queue is full, and timings swing 3×).
fn assigned(
    cfg: &StreamConfig,
    ends: &[(String, i32, i64)],
    group: &str,
) -> Result<(BaseConsumer, Left), String> {
    let c: BaseConsumer = client_config(cfg)
        .set("group.id", format!("{}-{group}", cfg.group_id))
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "false")
        .set("fetch.wait.max.ms", "50")
        .set("fetch.queue.backoff.ms", "10")
        .create()
        .map_err(|e| e.to_string())?;
    let mut tpl = TopicPartitionList::new();
    let mut left = Left::new();
    for (topic, p, high) in ends {
        if *high > 0 {
            tpl.add_partition_offset(topic, *p, Offset::Beginning)
                .map_err(|e| e.to_string())?;
            left.insert((*topic == ends[0].0, *p), *high);
        }
    }
    c.assign(&tpl).map_err(|e| e.to_string())?;
    Ok((c, left))
}

/// Reads every input partition from its beginning to its high watermark with a plain
/// consumer (assigned, no group join); returns (messages, payload bytes, time from the first
/// message to the last, a checksum of the payload bytes).
fn bare_consume(
    cfg: &StreamConfig,
    ends: &[(String, i32, i64)],
    deadline: Instant,
) -> Result<(u64, u64, Duration, u64), String> {
    let (c, mut left) = assigned(cfg, ends, "bare")?;
    let (mut n, mut bytes, mut touch) = (0u64, 0u64, 0u64);
    let mut first = None;
    while !left.is_empty() {
        if Instant::now() > deadline {
            return Err(format!(
                "bare consume timed out with {} partition(s) unread",
                left.len()
            ));
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(|e| format!("bare consume: {e}"))?;
        first.get_or_insert_with(Instant::now);
        n += 1;
        let payload = m.payload().unwrap_or_default();
        bytes += payload.len() as u64;
        // Read every byte, as a decoder would.
        touch = payload
            .iter()
            .fold(touch, |acc, &b| acc.wrapping_add(u64::from(b)));
        let key = (m.topic() == ends[0].0, m.partition());
        if left.get(&key).is_some_and(|h| m.offset() + 1 >= *h) {
            left.remove(&key);
        }
    }
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    Ok((n, bytes, elapsed, touch))
}

/// Counts acknowledged and failed deliveries.
#[derive(Default)]
struct Acks {
    ok: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
}

impl ClientContext for Acks {}

impl ProducerContext for Acks {
    type DeliveryOpaque = ();
    fn delivery(&self, r: &DeliveryResult<'_>, _: ()) {
        let c = if r.is_ok() { &self.ok } else { &self.failed };
        c.fetch_add(1, Ordering::Relaxed);
    }
}

/// The floor under any pipeline on this broker: reads every input message as `bare_consume`
/// does and produces one record per transaction to `out` (its own key and payload, about the
/// size of a decision) with the pipeline's producer settings, deciding nothing; returns
/// (records acknowledged, time from the first message consumed to the last acknowledgement).
fn consume_produce(
    cfg: &StreamConfig,
    ends: &[(String, i32, i64)],
    out: &str,
    deadline: Instant,
) -> Result<(u64, Duration), String> {
    let (c, mut left) = assigned(cfg, ends, "floor")?;
    let p: ThreadedProducer<Acks> = output_producer_config(cfg)
        .create_with_context(Acks::default())
        .map_err(|e| e.to_string())?;
    let (mut sent, mut first) = (0u64, None);
    while !left.is_empty() {
        if Instant::now() > deadline {
            return Err("consume and produce timed out".into());
        }
        let Some(m) = c.poll(Duration::from_millis(100)) else {
            continue;
        };
        let m = m.map_err(|e| format!("consume and produce: {e}"))?;
        first.get_or_insert_with(Instant::now);
        let key = (m.topic() == ends[0].0, m.partition());
        if key.0 {
            let mut record = BaseRecord::to(out)
                .key(m.key().unwrap_or_default())
                .payload(m.payload().unwrap_or_default());
            loop {
                match p.send(record) {
                    Ok(()) => break,
                    Err((_, r)) if Instant::now() < deadline => {
                        // Queue full: let deliveries drain.
                        record = r;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err((e, _)) => return Err(format!("consume and produce: {e}")),
                }
            }
            sent += 1;
        }
        if left.get(&key).is_some_and(|h| m.offset() + 1 >= *h) {
            left.remove(&key);
        }
    }
    p.flush(deadline.saturating_duration_since(Instant::now()))
        .map_err(|e| format!("consume and produce: flush: {e}"))?;
    let elapsed = first.map_or(Duration::ZERO, |f| f.elapsed());
    let acks = p.context();
    let (ok, failed) = (
        acks.ok.load(Ordering::Relaxed),
        acks.failed.load(Ordering::Relaxed),
    );
    if ok != sent || failed != 0 {
        return Err(format!(
            "consume and produce: {ok} of {sent} records acknowledged, {failed} failed"
        ));
    }
    Ok((ok, elapsed))
}

fn run() -> Result<(), String> {
    let a = args()?;
    let deadline = Instant::now() + a.timeout;
    let say = |s: String| {
        println!("{s}");
        let _ = std::io::stdout().flush();
    };

    // 1. The recorded file.
    let t = Instant::now();
    let (data, what) = load(&a)?;
    let lines = data
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .count() as u64;
    say(format!(
        "input               {what}: {lines} events, {:.1} MB ({:.1}s to prepare)",
        data.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));

    // 2. The broker and the produce run.
    let topics = Topics::default();
    let embedded =
        Embedded::start(1, &topics, a.partitions).map_err(|e| format!("embedded broker: {e}"))?;
    let cfg = StreamConfig {
        brokers: embedded.bootstrap().to_string(),
        group_id: "kafka-load".into(),
        topics,
        session_timeout: Duration::from_secs(6),
        pause_at: a.pause_at,
        ..StreamConfig::default()
    };
    let t = Instant::now();
    let stop = AtomicBool::new(false);
    let produced = produce(&cfg, &data[..], None, &stop, |_| {}).map_err(|e| e.to_string())?;
    let produce_time = t.elapsed();
    let sent = produced.transactions + produced.account_events;
    if produced.failed > 0 || produced.acked != sent || sent != lines {
        return Err(format!(
            "produce: {sent} sent of {lines} lines, {} acknowledged, {} failed",
            produced.acked, produced.failed
        ));
    }
    drop(data);
    say(format!(
        "produce             {sent} events ({} transactions, {} account events) in {:.2}s: {:.0} events/s (lz4, acks=all, idempotent)",
        produced.transactions,
        produced.account_events,
        produce_time.as_secs_f64(),
        rate(sent, produce_time)
    ));
    let [tx_topic, acc_topic] = cfg.topics.inputs();
    let mut ends = Vec::new();
    for (topic, n) in [
        (tx_topic, produced.transactions),
        (acc_topic, produced.account_events),
    ] {
        for (p, _, high) in check_kept(&cfg, topic, a.partitions, n)? {
            ends.push((topic.to_string(), p, high));
        }
    }
    let per_part: Vec<i64> = ends.iter().map(|e| e.2).collect();
    say(format!(
        "broker              {} partitions × 2 input topics, all {sent} kept (low watermarks 0); {}–{} messages per partition",
        a.partitions,
        per_part.iter().min().copied().unwrap_or(0),
        per_part.iter().max().copied().unwrap_or(0)
    ));

    // 3. Bare consume.
    let (n, bytes, bare_time, touch) = bare_consume(&cfg, &ends, deadline)?;
    if n != sent {
        return Err(format!("bare consume read {n} messages, {sent} produced"));
    }
    let bare = rate(n, bare_time);
    say(format!(
        "bare consume        {n} messages, {:.1} MB payload in {:.2}s: {bare:.0} events/s, {:.0} MB/s (checksum {touch})",
        bytes as f64 / 1e6,
        bare_time.as_secs_f64(),
        bytes as f64 / 1e6 / bare_time.as_secs_f64().max(1e-9)
    ));

    // 4. The floor: consume everything and produce one record per transaction.
    let floor_topic = "kafka-load.floor";
    embedded
        .create_topic(floor_topic, a.partitions)
        .map_err(|e| e.to_string())?;
    let (records, floor_time) = consume_produce(&cfg, &ends, floor_topic, deadline)?;
    let floor = rate(sent, floor_time);
    say(format!(
        "consume + produce   {sent} messages in, {records} records out (one per transaction, deciding nothing) in {:.2}s: {floor:.0} events/s, {:.2}× bare consume: the floor under any pipeline here",
        floor_time.as_secs_f64(),
        floor / bare
    ));

    // 5. End to end.
    let pack = packs::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/packs/default"),
        &PackOptions::default(),
    )
    .map_err(|e| e.to_string())?;
    let engine = Arc::new(Engine::new(pack, EngineConfig::default()));
    let mut pcfg = cfg.clone();
    pcfg.max_messages = Some(sent);
    pcfg.idle_exit = Some(Duration::from_secs(30));
    let pipeline = Pipeline::new(engine, pcfg);
    let stats = pipeline.stats();
    let stop = pipeline.stop_handle();
    let done = Arc::new(AtomicBool::new(false));
    // Timestamps the first and the last consumed message and the acknowledgements (to find
    // when the last output was acknowledged), and stops the run at the deadline.
    let watch = {
        let stats = stats.clone();
        let done = done.clone();
        std::thread::spawn(move || {
            let (mut first, mut last) = (None, None);
            let mut acks: Vec<(Instant, u64)> = Vec::new();
            while !done.load(Ordering::Relaxed) {
                let now = Instant::now();
                let c = Stats::get(&stats.consumed);
                if c > 0 && first.is_none() {
                    first = Some(now);
                }
                if c >= sent && last.is_none() {
                    last = Some(now);
                }
                let a = Stats::get(&stats.acked);
                if acks.last().is_none_or(|&(_, prev)| prev != a) {
                    acks.push((now, a));
                }
                if now > deadline {
                    stop.store(true, Ordering::Relaxed);
                }
                // Fine-grained until the first message, then coarser: the watcher shares the
                // cores it measures.
                let nap = if first.is_none() { 200 } else { 2000 };
                std::thread::sleep(Duration::from_micros(nap));
            }
            (first, last, acks)
        })
    };
    // `perf record --control fifo:PATH -D -1` with VIGIL_PERF_CTL=PATH profiles the end-to-end
    // run alone (start it through perf: writing to the FIFO waits until perf has opened it).
    let perf_ctl = |cmd: &str| {
        if let Some(path) = std::env::var_os("VIGIL_PERF_CTL") {
            let _ = std::fs::write(path, cmd);
        }
    };
    perf_ctl("enable\n");
    let (thread_cpu, process_cpu) = (cpu_time(true), cpu_time(false));
    let started = Instant::now();
    let result = pipeline.run();
    let finished = Instant::now();
    perf_ctl("disable\n");
    let thread_cpu = cpu_time(true) - thread_cpu;
    let process_cpu = cpu_time(false) - process_cpu;
    done.store(true, Ordering::Relaxed);
    let (first, last, acks) = watch.join().map_err(|_| "watcher panicked".to_string())?;
    let summary = result.map_err(|e| format!("pipeline: {e}"))?;
    let first = first.ok_or("the pipeline consumed nothing")?;
    let last = last.unwrap_or(finished);
    let g = |c| Stats::get(c);
    let (consumed, decided, acc, dlq, acked) = (
        g(&stats.consumed),
        g(&stats.decided),
        g(&stats.account_events),
        g(&stats.dead_lettered),
        g(&stats.acked),
    );
    let outputs = decided + g(&stats.freezes) + g(&stats.notifications) + dlq;
    let mut problems = Vec::new();
    if summary.consumed != sent || consumed != sent {
        problems.push(format!(
            "handled {} of {sent} messages (stopped at the --timeout?)",
            summary.consumed
        ));
    }
    if decided != produced.transactions || acc != produced.account_events || dlq != 0 {
        problems.push(format!(
            "{decided} decided of {} transactions, {acc} of {} account events, {dlq} dead letters",
            produced.transactions, produced.account_events
        ));
    }
    if acked != outputs {
        problems.push(format!(
            "{acked} outputs acknowledged of {outputs} produced"
        ));
    }
    let on_topic: i64 = watermarks(&cfg, &cfg.topics.decisions, a.partitions)?
        .iter()
        .map(|w| w.2)
        .sum();
    if on_topic != decided as i64 {
        problems.push(format!(
            "{on_topic} decisions on the topic, {decided} decided"
        ));
    }
    // The last output acknowledged (to the watcher's 2 ms), never after the run returned.
    let last_ack = acks
        .iter()
        .find(|&&(_, a)| a >= acked)
        .map_or(finished, |&(t, _)| t)
        .min(finished);
    let e2e_time = last_ack - first;
    let e2e = rate(sent, e2e_time);
    say(format!(
        "end to end          {sent} events in {:.2}s from the first message consumed to the last output acknowledged: {e2e:.0} events/s",
        e2e_time.as_secs_f64()
    ));
    say(format!(
        "                    last message consumed after {:.2}s; run() returned after {:.2}s (final commit, clients closed): {:.0} events/s; with the group join {:.2}s ({:.0} events/s)",
        (last - first).as_secs_f64(),
        (finished - first).as_secs_f64(),
        rate(sent, finished - first),
        (finished - started).as_secs_f64(),
        rate(sent, finished - started)
    ));
    say(format!(
        "decisions           {decided} ({:.0}/s): allow {} review {} step_up {} block {}; {} freezes, {} notifications, {acked} outputs acknowledged, {on_topic} on the decisions topic; {} unaligned, {} pauses",
        rate(decided, e2e_time),
        g(&stats.actions[0]),
        g(&stats.actions[1]),
        g(&stats.actions[2]),
        g(&stats.actions[3]),
        g(&stats.freezes),
        g(&stats.notifications),
        g(&stats.unaligned),
        g(&stats.paused)
    ));
    say(format!(
        "cpu                 pipeline thread {:.2}s ({:.2} µs per event), whole process {:.2}s, during the end-to-end run (group join included)",
        thread_cpu.as_secs_f64(),
        thread_cpu.as_secs_f64() * 1e6 / sent as f64,
        process_cpu.as_secs_f64()
    ));
    say(format!(
        "ratio               end to end / bare consume = {:.2}; end to end / consume + produce = {:.2}",
        e2e / bare,
        e2e / floor
    ));
    drop(embedded);
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
