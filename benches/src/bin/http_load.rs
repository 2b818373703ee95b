//! Load generator for the HTTP API: the real router on a real socket, `POST /v1/authorize`
//! over keep-alive connections, latency per request.
//!
//! ```sh
//! cargo run --release -p vigil-benches --bin http-load -- [--connections K] [--duration SECS]
//!     [--warmup SECS] [--accounts N] [--server-threads W] [--client-threads C]
//!     [--rate R] [--settle [--journal]] [--nodelay] [--events E] [--gap-ms G] [--samples]
//!     [--seed S]
//! ```
//!
//! The server is `vigil_api::http::router` with the default pack and an in-memory ledger, served
//! by `axum::serve` on 127.0.0.1 from its own tokio runtime (W workers, like `vigil serve`).
//! The client, on a second runtime (C workers) in the same process, is plain tokio `TcpStream`s
//! speaking HTTP/1.1 by hand: write the request, read the headers, read Content-Length bytes of
//! body, check the status is 200. K connections each send requests back to back (or, with
//! `--rate R`, each on its own schedule so that together they offer R requests/s); requests
//! sent during the warm-up are not counted, then requests are timed for the duration.
//!
//! The bodies are realistic transaction events (`Workload`: payments to merchants, transfers
//! between accounts, top-ups, withdrawals; devices, IPs, home cities, now and then away),
//! built before timing as E distinct templates over N accounts; each request gets a unique
//! `tx_id` and its `ts` patched into fixed-width slots of its template. Event time advances a
//! fixed gap per request (`--gap-ms`, 100 ms by default: with 10,000 accounts, one transaction
//! per account every 17 minutes, a busy but plausible wallet), starting at the workload's start.
//!
//! `--settle` opens and funds every account in the ledger first and calls
//! `/v1/authorize?settle=true`, so every request also settles (or holds, or declines) in the
//! ledger and waits for its ticket; `--journal` makes that ledger a journal on disk in a temp dir
//! (fdatasync, group commit) instead of memory.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use hdrhistogram::Histogram;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use vigil_api::http::{AppState, Limits, Role, Token, router};
use vigil_benches::{START_MS, Workload};
use vigil_engine::event::{Transaction, format_ts};
use vigil_engine::ledger::{BookConfig, Command, Ledger, now_ms};
use vigil_engine::stream::embedded::Embedded;
use vigil_engine::stream::publish::Publisher;
use vigil_engine::stream::{StreamConfig, Topics};
use vigil_engine::{Engine, EngineConfig, packs};
use vigil_rules::PackOptions;

/// The `vigil` binary's allocator (see `decide-load`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Goals printed against.
const GOAL_PER_S: f64 = 30_000.0;
const GOAL_P99_US: f64 = 1_000.0;
const TOKEN: &str = "http-load-token";
/// Each account's opening deposit with `--settle`, minor units (1,000,000.00 EUR).
const DEPOSIT_MINOR: i64 = 100_000_000;
/// Width of the `tx_id` digits patched into every request.
const TX_DIGITS: usize = 12;

#[derive(Debug, Parser)]
#[command(
    name = "http-load",
    about = "Requests per second and latency of POST /v1/authorize over keep-alive HTTP/1.1"
)]
struct Args {
    /// Keep-alive connections, each with one request in flight.
    #[arg(long, default_value_t = 32)]
    connections: usize,
    /// Timed seconds (after the warm-up).
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Warm-up seconds (requests sent, not counted).
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Accounts the events are spread over.
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..))]
    accounts: u32,
    /// Distinct events built before timing (each request patches a unique tx_id and ts in).
    #[arg(long, default_value_t = 100_000)]
    events: usize,
    /// Tokio worker threads of the server's runtime.
    #[arg(long, default_value_t = 2)]
    server_threads: usize,
    /// Tokio worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 1)]
    client_threads: usize,
    /// Settle in the ledger too (`?settle=true`), after opening and funding every account.
    #[arg(long)]
    settle: bool,
    /// With --settle: a journal on disk (temp dir, fdatasync) instead of an in-memory ledger.
    #[arg(long, requires = "settle")]
    journal: bool,
    /// Set TCP_NODELAY on the server's accepted sockets (`vigil serve` does not).
    #[arg(long)]
    nodelay: bool,
    /// Event time between consecutive requests, ms (100: with 10,000 accounts each sends about
    /// one transaction every 17 minutes of event time); 0 stamps each request with the wall clock
    /// instead, which crams hours of a wallet's traffic into seconds (card-testing rules fire).
    #[arg(long, default_value_t = 100)]
    gap_ms: u64,
    /// Offered load, requests/s over all connections (0: every connection sends back to back).
    /// Each connection sends on its own schedule, but tokio's timers fire on 1 ms ticks, so the
    /// sends due in a millisecond leave together: a burstier load than real clients make, and
    /// pessimistic latencies. Latency is measured from the actual send.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Print one response body per action seen.
    #[arg(long)]
    samples: bool,
    /// Latest events the engine keeps for dry runs, as `vigil serve` does (its default:
    /// 50,000; 0 keeps none).
    #[arg(long, default_value_t = 50_000)]
    recent_events: usize,
    /// Seed of the generated events.
    #[arg(long, default_value_t = 7)]
    seed: u64,
    /// Publish every decision, freeze request and notification to Kafka output topics, as
    /// `vigil serve` does, on an in-process broker (librdkafka's mock cluster).
    #[arg(long)]
    publish: bool,
}

/// One request, but for its `tx_id` digits and `ts`, patched in when it is sent.
#[derive(Debug)]
struct Template {
    bytes: Vec<u8>,
    tx_at: usize,
    ts_at: usize,
}

fn json_str(out: &mut String, key: &str, v: &str) {
    out.push_str(&format!(",\"{key}\":\"{v}\""));
}

/// A request for `tx` (its id and time are placeholders).
fn template(tx: &Transaction, port: u16, path: &str) -> Template {
    let mut body = String::with_capacity(400);
    body.push_str("{\"schema\":1,\"tx_id\":\"t-");
    let tx_at = body.len();
    body.push_str(&"0".repeat(TX_DIGITS));
    body.push_str("\",\"ts\":\"");
    let ts_at = body.len();
    body.push_str(&format_ts(0));
    body.push('"');
    json_str(&mut body, "kind", tx.kind.name());
    json_str(&mut body, "account_id", &tx.account_id);
    if let Some(c) = &tx.counterparty_id {
        json_str(&mut body, "counterparty_id", c);
    }
    json_str(&mut body, "amount", &tx.currency.format(tx.amount_minor));
    json_str(&mut body, "currency", tx.currency.code());
    json_str(&mut body, "channel", &tx.channel);
    if let Some(d) = &tx.device_id {
        json_str(&mut body, "device_id", d);
    }
    if let Some(ip) = &tx.ip {
        json_str(&mut body, "ip", ip);
    }
    if let Some(g) = &tx.geo {
        body.push_str(&format!(
            ",\"geo\":{{\"lat\":{:.4},\"lon\":{:.4}",
            g.lat, g.lon
        ));
        if let Some(c) = g.country.as_ref().and_then(|c| std::str::from_utf8(c).ok()) {
            json_str(&mut body, "country", c);
        }
        body.push('}');
    }
    if tx.amount_minor % 7 == 0 {
        json_str(&mut body, "memo", "rent");
    }
    body.push('}');
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    let mut bytes = head.into_bytes();
    let offset = bytes.len();
    bytes.extend_from_slice(body.as_bytes());
    Template {
        bytes,
        tx_at: offset + tx_at,
        ts_at: offset + ts_at,
    }
}

/// Copies `t` into `out` with request number `n` as its tx_id, and as its ts the start of the
/// generated traffic plus `n` gaps (or the time now, when `gap_ms` is 0).
fn fill(t: &Template, n: u64, gap_ms: u64, out: &mut Vec<u8>) {
    out.clear();
    out.extend_from_slice(&t.bytes);
    let mut v = n;
    for b in out[t.tx_at..t.tx_at + TX_DIGITS].iter_mut().rev() {
        *b = b'0' + (v % 10) as u8;
        v /= 10;
    }
    let ts = if gap_ms == 0 {
        format_ts(now_ms())
    } else {
        format_ts(START_MS + (n * gap_ms) as i64)
    };
    out[t.ts_at..t.ts_at + ts.len()].copy_from_slice(ts.as_bytes());
}

/// The phases, shared by every connection.
#[derive(Debug, Clone, Copy)]
struct Phases {
    start: Instant,
    warm_end: Instant,
    end: Instant,
}

/// What one connection saw in the timed phase.
#[derive(Debug)]
struct Conn {
    hist: Histogram<u64>,
    ok: u64,
    warmup: u64,
    bad_status: u64,
    io_errors: u64,
    first_error: Option<String>,
    /// allow, review, step_up, block, other.
    actions: [u64; 5],
    /// The first response body of each action.
    samples: [Option<String>; 5],
    /// With --rate: requests sent more than 2 ms after their slot.
    behind: u64,
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Sends `req` and reads one response into `buf`; returns the status and the body's start.
async fn exchange(
    s: &mut TcpStream,
    req: &[u8],
    buf: &mut Vec<u8>,
) -> std::io::Result<(u16, usize)> {
    let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
    s.write_all(req).await?;
    buf.clear();
    let head_end = loop {
        if let Some(p) = find(buf, b"\r\n\r\n") {
            break p + 4;
        }
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| bad("headers are not UTF-8"))?;
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|r| r.get(..3))
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("no HTTP/1.1 status line"))?;
    let len: usize = head
        .split("\r\n")
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().ok())?
        })
        .ok_or_else(|| bad("no Content-Length"))?;
    while buf.len() < head_end + len {
        if s.read_buf(buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    if buf.len() > head_end + len {
        return Err(bad("more bytes than one response"));
    }
    Ok((status, head_end))
}

async fn connect(addr: std::net::SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpStream::connect(addr).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

async fn connection(
    addr: std::net::SocketAddr,
    templates: Arc<Vec<Template>>,
    seq: Arc<AtomicU64>,
    phases: Phases,
    gap_ms: u64,
    pace: Option<(Duration, Duration)>,
) -> Conn {
    let mut c = Conn {
        hist: Histogram::new_with_bounds(1, 60_000_000_000, 3).expect("histogram bounds"),
        ok: 0,
        warmup: 0,
        bad_status: 0,
        io_errors: 0,
        first_error: None,
        actions: [0; 5],
        samples: Default::default(),
        behind: 0,
    };
    let mut req = Vec::with_capacity(1024);
    let mut buf = Vec::with_capacity(16 * 1024);
    let mut stream = None;
    // With --rate: this connection's next slot, one interval apart.
    let mut slot = pace.map(|(_, offset)| phases.start + offset);
    loop {
        if let (Some(next), Some((interval, _))) = (&mut slot, pace) {
            tokio::time::sleep_until((*next).into()).await;
            if Instant::now().duration_since(*next) > Duration::from_millis(2) {
                c.behind += 1;
            }
            *next += interval;
        }
        let s = match &mut stream {
            Some(s) => s,
            None => match connect(addr).await {
                Ok(s) => stream.insert(s),
                Err(e) => {
                    c.io_errors += 1;
                    c.first_error.get_or_insert_with(|| format!("connect: {e}"));
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    if Instant::now() >= phases.end {
                        break;
                    }
                    continue;
                }
            },
        };
        let n = seq.fetch_add(1, Ordering::Relaxed);
        fill(
            &templates[n as usize % templates.len()],
            n,
            gap_ms,
            &mut req,
        );
        let sent = Instant::now();
        if sent >= phases.end {
            break;
        }
        let r = exchange(s, &req, &mut buf).await;
        let done = Instant::now();
        let timed = sent >= phases.warm_end && done <= phases.end;
        match r {
            Ok((200, body)) => {
                if timed {
                    c.hist
                        .saturating_record(done.duration_since(sent).as_nanos() as u64);
                    c.ok += 1;
                    let action = find(&buf[body..], b"\"action\":\"")
                        .and_then(|p| buf.get(body + p + 10))
                        .copied();
                    let i = match action {
                        Some(b'a') => 0,
                        Some(b'r') => 1,
                        Some(b's') => 2,
                        Some(b'b') => 3,
                        _ => 4,
                    };
                    c.actions[i] += 1;
                    if c.samples[i].is_none() {
                        c.samples[i] = Some(String::from_utf8_lossy(&buf[body..]).into_owned());
                    }
                } else if sent < phases.warm_end {
                    c.warmup += 1;
                }
            }
            Ok((status, body)) => {
                c.bad_status += 1;
                c.first_error.get_or_insert_with(|| {
                    format!("{status}: {}", String::from_utf8_lossy(&buf[body..]))
                });
            }
            Err(e) => {
                c.io_errors += 1;
                c.first_error.get_or_insert_with(|| e.to_string());
                stream = None;
            }
        }
    }
    c
}

/// CPU time (ns) of this process's live threads, by thread name.
fn cpu_by_thread() -> Vec<(String, u64)> {
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    dir.filter_map(|e| {
        let p = e.ok()?.path();
        let comm = std::fs::read_to_string(p.join("comm")).ok()?;
        let sched = std::fs::read_to_string(p.join("schedstat")).ok()?;
        Some((
            comm.trim().to_string(),
            sched.split_whitespace().next()?.parse().ok()?,
        ))
    })
    .collect()
}

fn cpu_of(v: &[(String, u64)], name: &str) -> u64 {
    v.iter().filter(|(n, _)| n == name).map(|(_, c)| c).sum()
}

/// Removes a directory however the run ends.
struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1e3
}

fn run(args: &Args) -> Result<bool, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pack = packs::load(&root.join("rules/packs/default"), &PackOptions::default())
        .map_err(|e| e.to_string())?;
    let engine = Arc::new(Engine::new(
        pack,
        EngineConfig {
            accounts_capacity: args.accounts as usize,
            ..EngineConfig::default()
        },
    ));
    let mut w = Workload::new(args.accounts, args.seed);
    engine.keep_recent(args.recent_events);
    for i in 0..args.accounts {
        engine.apply(&w.opened(i));
    }

    let mut _journal_dir = None;
    let ledger = if args.journal {
        let dir =
            TempDir(std::env::temp_dir().join(format!("vigil-http-load-{}", std::process::id())));
        std::fs::create_dir_all(&dir.0).map_err(|e| format!("{}: {e}", dir.0.display()))?;
        let (l, _) = Ledger::open(&dir.0.join("journal"), BookConfig::default())
            .map_err(|e| e.to_string())?;
        _journal_dir = Some(dir);
        l
    } else {
        Ledger::in_memory(BookConfig::default())
    };
    if args.settle {
        let mut last = 0;
        for i in 0..args.accounts {
            ledger
                .execute(Command::Open {
                    account: format!("a-{i}"),
                    currency: "EUR".into(),
                    locale: None,
                })
                .map_err(|e| e.to_string())?;
            last = ledger
                .execute(Command::Deposit {
                    op_id: format!("dep-{i}"),
                    account: format!("a-{i}"),
                    amount: DEPOSIT_MINOR,
                })
                .map_err(|e| e.to_string())?
                .ticket;
        }
        ledger.wait(last).map_err(|e| e.to_string())?;
    }

    let server = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.server_threads.max(1))
        .thread_name("http-server")
        .enable_all()
        .build()
        .map_err(|e| format!("server runtime: {e}"))?;
    let listener = server
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .map_err(|e| format!("bind: {e}"))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let state = AppState::new(
        Arc::clone(&engine),
        ledger.clone(),
        vec![Token {
            name: "http-load".into(),
            role: Role::PaymentService,
            token: TOKEN.into(),
        }],
        Limits::default(),
    );
    let (state, publisher, _broker) = if args.publish {
        let topics = Topics::default();
        let broker = Embedded::start(1, &topics, 4).map_err(|e| format!("embedded broker: {e}"))?;
        let cfg = StreamConfig {
            brokers: broker.bootstrap().to_string(),
            topics,
            ..StreamConfig::default()
        };
        let p = Arc::new(
            Publisher::new(&cfg, Some(state.0.metrics.clone())).map_err(|e| e.to_string())?,
        );
        (state.with_publisher(p.clone()), Some(p), Some(broker))
    } else {
        (state, None, None)
    };
    let app = router(state);
    let nodelay = args.nodelay;
    server.spawn(async move {
        let r = if nodelay {
            use axum::serve::ListenerExt;
            let l = listener.tap_io(|s| {
                let _ = s.set_nodelay(true);
            });
            axum::serve(l, app).await
        } else {
            axum::serve(listener, app).await
        };
        if let Err(e) = r {
            eprintln!("server: {e}");
        }
    });

    let path = if args.settle {
        "/v1/authorize?settle=true"
    } else {
        "/v1/authorize"
    };
    let t = Instant::now();
    let templates: Arc<Vec<Template>> = Arc::new(
        (0..args.events.max(1))
            .map(|_| template(&w.next_tx(), addr.port(), path))
            .collect(),
    );
    let avg_len = templates.iter().map(|t| t.bytes.len()).sum::<usize>() / templates.len();
    println!(
        "events              {} distinct over {} accounts built in {:.2}s ({avg_len} B per request with headers)",
        templates.len(),
        args.accounts,
        t.elapsed().as_secs_f64()
    );
    println!(
        "server              axum on {addr}, {} worker threads, {} ledger{}, TCP_NODELAY {}",
        args.server_threads.max(1),
        if args.journal {
            "journaled"
        } else {
            "in-memory"
        },
        if args.settle {
            format!(", POST {path} ({} accounts funded)", args.accounts)
        } else {
            format!(", POST {path}")
        },
        if args.nodelay { "on" } else { "off" }
    );

    let client = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("load-client")
        .enable_all()
        .build()
        .map_err(|e| format!("client runtime: {e}"))?;
    let seq = Arc::new(AtomicU64::new(1));
    let start = Instant::now();
    let phases = Phases {
        start,
        warm_end: start + Duration::from_secs_f64(args.warmup),
        end: start + Duration::from_secs_f64(args.warmup + args.duration),
    };
    let (conns, cpu0, cpu1) = client.block_on(async {
        let cpu = tokio::spawn(async move {
            tokio::time::sleep_until(phases.warm_end.into()).await;
            let a = cpu_by_thread();
            tokio::time::sleep_until(phases.end.into()).await;
            (a, cpu_by_thread())
        });
        let handles: Vec<_> = (0..args.connections)
            .map(|i| {
                let pace = (args.rate > 0.0).then(|| {
                    let interval = Duration::from_secs_f64(args.connections as f64 / args.rate);
                    (
                        interval,
                        interval.mul_f64(i as f64 / args.connections as f64),
                    )
                });
                tokio::spawn(connection(
                    addr,
                    Arc::clone(&templates),
                    Arc::clone(&seq),
                    phases,
                    args.gap_ms,
                    pace,
                ))
            })
            .collect();
        let mut conns = Vec::new();
        for h in handles {
            conns.push(h.await.map_err(|e| format!("a connection failed: {e}"))?);
        }
        let (a, b) = cpu.await.map_err(|e| e.to_string())?;
        Ok::<_, String>((conns, a, b))
    })?;
    server.shutdown_timeout(Duration::from_secs(1));
    client.shutdown_timeout(Duration::from_secs(1));

    let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
        .map_err(|e| format!("histogram: {e}"))?;
    let (mut ok, mut warm, mut bad, mut io, mut behind) = (0, 0, 0, 0, 0);
    let mut actions = [0u64; 5];
    let mut first_error = None;
    let mut samples: [Option<String>; 5] = Default::default();
    for c in conns {
        for (s, cs) in samples.iter_mut().zip(c.samples) {
            if s.is_none() {
                *s = cs;
            }
        }
        hist.add(&c.hist).map_err(|e| format!("histogram: {e}"))?;
        ok += c.ok;
        warm += c.warmup;
        bad += c.bad_status;
        io += c.io_errors;
        behind += c.behind;
        for (a, n) in actions.iter_mut().zip(c.actions) {
            *a += n;
        }
        if first_error.is_none() {
            first_error = c.first_error;
        }
    }
    if let Some(p) = &publisher {
        let _ = p.flush(Duration::from_secs(30));
        let n = p.published();
        println!(
            "published           decisions {} acked / {} lost, freezes {} / {}, notifications {} / {} (in-process broker)",
            n.acked[0], n.failed[0], n.acked[1], n.failed[1], n.acked[2], n.failed[2]
        );
    }
    let rate = ok as f64 / args.duration;
    let p99 = us(hist.value_at_quantile(0.99));
    let met = rate >= GOAL_PER_S && p99 <= GOAL_P99_US;
    println!(
        "load                {} keep-alive connections on {} client thread(s), {}; warm-up {:.1}s ({warm} requests), then {:.1}s timed",
        args.connections,
        args.client_threads.max(1),
        if args.rate > 0.0 {
            format!(
                "offered {:.0} req/s ({behind} sends over 2 ms behind their slot)",
                args.rate
            )
        } else {
            "back to back".to_string()
        },
        args.warmup,
        args.duration
    );
    println!(
        "timed               {ok} responses 200 in {:.2}s: {rate:.0} req/s (goal ≥ {GOAL_PER_S:.0}/s with p99 ≤ {GOAL_P99_US:.0}µs: {})",
        args.duration,
        if met { "met" } else { "not met" }
    );
    println!(
        "latency             p50 {:.0}µs  p99 {p99:.0}µs  p99.9 {:.0}µs  max {:.0}µs",
        us(hist.value_at_quantile(0.5)),
        us(hist.value_at_quantile(0.999)),
        us(hist.max())
    );
    println!(
        "errors              {} (status not 200: {bad}, i/o: {io}){}",
        bad + io,
        first_error
            .as_deref()
            .map_or_else(String::new, |e| format!("; first: {e}"))
    );
    println!(
        "decisions           allow {}, review {}, step_up {}, block {}, unparsed {}",
        actions[0], actions[1], actions[2], actions[3], actions[4]
    );
    if args.samples {
        for s in samples.iter().flatten() {
            println!("sample              {s}");
        }
    }
    let secs = args.duration;
    let per = |name: &str| {
        let ns = cpu_of(&cpu1, name).saturating_sub(cpu_of(&cpu0, name)) as f64;
        format!(
            "{name} {:.2}s ({:.2} cores, {:.1}µs/request)",
            ns / 1e9,
            ns / 1e9 / secs,
            ns / 1e3 / ok.max(1) as f64
        )
    };
    let total0: u64 = cpu0.iter().map(|(_, c)| c).sum();
    let total1: u64 = cpu1.iter().map(|(_, c)| c).sum();
    let total = total1.saturating_sub(total0) as f64;
    println!(
        "cpu (timed phase)   {}; {}; {}; process {:.2}s ({:.2} cores, {:.1}µs/request)",
        per("http-server"),
        per("load-client"),
        per("vigil-journal"),
        total / 1e9,
        total / 1e9 / secs,
        total / 1e3 / ok.max(1) as f64
    );
    if args.settle {
        let (accounts, transfers, cases) = ledger.read(|b| b.counts());
        let violations = ledger.read(|b| b.check());
        println!(
            "ledger              {accounts} accounts, {transfers} transfers, {cases} open cases; check(): {}",
            if violations.is_empty() {
                "ok".to_string()
            } else {
                violations.join("; ")
            }
        );
    }
    ledger.close();
    Ok(bad + io == 0)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.connections == 0 || args.duration <= 0.0 || args.warmup < 0.0 {
        eprintln!("--connections and --duration must be positive, --warmup not negative");
        return ExitCode::from(2);
    }
    match run(&args) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("http-load: {e}");
            ExitCode::FAILURE
        }
    }
}
