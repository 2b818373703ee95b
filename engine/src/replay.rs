//! Replay: recorded traffic through the same `decide()`, in event-time order, with a report.
//!
//! Input is JSON lines, optionally gzip-compressed (detected by its magic bytes). Lines that
//! fail validation are reported with their line number and skipped. Events are sorted by
//! event time (stable, so ties keep file order) and applied one by one on one thread, so two
//! runs of the same input and pack produce byte-identical decisions.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::time::Instant;

use hdrhistogram::Histogram;
use vigil_rules::Action;

use crate::decision::Decision;
use crate::engine::Engine;
use crate::event::{EVENT_BYTES_MAX, Event, EventError, Label, decode};

/// A rejected input line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// 1-based line number.
    pub line: u64,
    /// Why.
    pub error: EventError,
}

/// Events read from a file, in file order, with their line numbers.
#[derive(Debug, Default)]
pub struct Input {
    /// Good events.
    pub events: Vec<(u64, Event)>,
    /// Rejected lines.
    pub rejected: Vec<Rejected>,
}

/// Opens a file, decompressing gzip if it starts with the gzip magic bytes, and skips a UTF-8
/// byte order mark at the start of the text (editors on Windows write one).
pub fn open(path: &Path) -> std::io::Result<Box<dyn BufRead>> {
    let mut f = BufReader::new(std::fs::File::open(path)?);
    let gz = f.fill_buf()?.starts_with(&[0x1f, 0x8b]);
    let mut r: Box<dyn BufRead> = if gz {
        Box::new(BufReader::new(flate2::read::MultiGzDecoder::new(f)))
    } else {
        Box::new(f)
    };
    if r.fill_buf()?.starts_with(BOM) {
        r.consume(BOM.len());
    }
    Ok(r)
}

const BOM: &[u8] = b"\xef\xbb\xbf";

/// Reads and validates every line; blank lines are skipped.
pub fn read(mut r: impl BufRead) -> std::io::Result<Input> {
    let mut input = Input::default();
    let mut line = Vec::new();
    let mut no = 0u64;
    loop {
        line.clear();
        // Read at most one byte past the event limit, so a huge line cannot exhaust memory.
        let n = (&mut r)
            .take(EVENT_BYTES_MAX as u64 + 2)
            .read_until(b'\n', &mut line)?;
        if n == 0 {
            break;
        }
        no += 1;
        if !line.ends_with(b"\n") && n as u64 > EVENT_BYTES_MAX as u64 {
            // Skip the rest of the oversized line without holding it in memory.
            loop {
                let buf = r.fill_buf()?;
                if buf.is_empty() {
                    break;
                }
                match buf.iter().position(|&b| b == b'\n') {
                    Some(i) => {
                        r.consume(i + 1);
                        break;
                    }
                    None => {
                        let len = buf.len();
                        r.consume(len);
                    }
                }
            }
            let error = EventError {
                field: None,
                message: format!("line is longer than the event limit of {EVENT_BYTES_MAX} bytes"),
                not_json: false,
            };
            input.rejected.push(Rejected { line: no, error });
            continue;
        }
        let text = line.trim_ascii();
        if text.is_empty() {
            continue;
        }
        match decode(text) {
            Ok(e) => input.events.push((no, e)),
            Err(error) => input.rejected.push(Rejected { line: no, error }),
        }
    }
    Ok(input)
}

/// Labels by tx_id, read from JSON lines such as `GET /v1/labels` writes for analysts'
/// verdicts: `{"tx_id": "t-1", "is_fraud": true}`, optionally with `"fraud_scenario"`. A
/// later line for the same tx_id replaces an earlier one. A bad line is an error naming it.
pub fn read_labels(r: impl BufRead) -> Result<HashMap<String, Label>, String> {
    #[derive(serde::Deserialize)]
    struct Line {
        tx_id: String,
        is_fraud: bool,
        #[serde(default)]
        fraud_scenario: Option<String>,
    }
    let mut labels = HashMap::new();
    for (i, line) in r.lines().enumerate() {
        let line = line.map_err(|e| format!("line {}: {e}", i + 1))?;
        if line.trim().is_empty() {
            continue;
        }
        let l: Line = serde_json::from_str(&line).map_err(|e| format!("line {}: {e}", i + 1))?;
        if l.tx_id.is_empty() {
            return Err(format!("line {}: empty tx_id", i + 1));
        }
        labels.insert(
            l.tx_id,
            Label {
                is_fraud: l.is_fraud,
                scenario: l.fraud_scenario,
            },
        );
    }
    Ok(labels)
}

/// Makes `labels` the only labels of the traffic: the transactions they name carry them, and
/// every other transaction none (what the recording carried is not mixed with analysts'
/// verdicts, which a score against them would otherwise count). Returns how many matched.
pub fn apply_labels(input: &mut Input, labels: &HashMap<String, Label>) -> u64 {
    let mut matched = 0;
    for (_, e) in &mut input.events {
        if let Event::Tx(t) = e {
            t.label = labels.get(t.tx_id.as_str()).cloned();
            matched += u64::from(t.label.is_some());
        }
    }
    matched
}

/// Counts for one confusion matrix.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Confusion {
    /// Fraud, flagged.
    pub tp: u64,
    /// Legit, flagged.
    pub fp: u64,
    /// Fraud, missed.
    pub fn_: u64,
    /// Legit, passed.
    pub tn: u64,
}

fn ratio(a: u64, b: u64) -> Option<f64> {
    (b > 0).then(|| a as f64 / b as f64)
}

impl Confusion {
    fn add(&mut self, fraud: bool, flagged: bool) {
        match (fraud, flagged) {
            (true, true) => self.tp += 1,
            (false, true) => self.fp += 1,
            (true, false) => self.fn_ += 1,
            (false, false) => self.tn += 1,
        }
    }
    /// tp / (tp + fp).
    pub fn precision(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fp)
    }
    /// tp / (tp + fn).
    pub fn recall(&self) -> Option<f64> {
        ratio(self.tp, self.tp + self.fn_)
    }
    /// Harmonic mean of precision and recall.
    pub fn f1(&self) -> Option<f64> {
        let (p, r) = (self.precision()?, self.recall()?);
        (p + r > 0.0).then(|| 2.0 * p * r / (p + r))
    }
    /// fp / (fp + tn).
    pub fn fpr(&self) -> Option<f64> {
        ratio(self.fp, self.fp + self.tn)
    }
}

/// Per-rule counts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleStats {
    /// Times it fired.
    pub hits: u64,
    /// Of those, on labeled fraud.
    pub fraud_hits: u64,
    /// Of those, on labeled transactions.
    pub labeled_hits: u64,
    /// Shadow rule.
    pub shadow: bool,
    /// Times its condition could not be computed.
    pub errors: u64,
}

/// Per-scenario counts.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScenarioStats {
    /// Fraud transactions of this scenario.
    pub total: u64,
    /// Flagged (review, step-up or block).
    pub flagged: u64,
    /// Blocked.
    pub blocked: u64,
}

/// What a replay found.
#[derive(Debug)]
pub struct Report {
    /// Lines read (events + rejected).
    pub lines: u64,
    /// Events applied.
    pub events: u64,
    /// Transactions decided.
    pub transactions: u64,
    /// Rejected lines.
    pub rejected: Vec<Rejected>,
    /// Wall time spent in decide(), seconds.
    pub decide_secs: f64,
    /// Wall time of the whole run (read, sort, decide, write), seconds.
    pub total_secs: f64,
    /// Decision latency, nanoseconds.
    pub latency_ns: Histogram<u64>,
    /// Per action: count, and amount (minor units) per currency.
    pub by_action: BTreeMap<Action, (u64, BTreeMap<String, i128>)>,
    /// Per rule id, pack order kept by index.
    pub rules: Vec<(String, RuleStats)>,
    /// Labeled transactions seen.
    pub labeled: u64,
    /// Review-or-block (anything but allow) against the labels.
    pub flagged: Confusion,
    /// Block against the labels.
    pub blocked: Confusion,
    /// Per fraud scenario.
    pub scenarios: BTreeMap<String, ScenarioStats>,
    /// Duplicates and late events.
    pub duplicates: u64,
    /// Events later than the allowed lateness.
    pub late: u64,
    /// The pack hash.
    pub rules_version: String,
}

/// The order events are applied in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Order {
    /// Sorted by event time (stable): the order the events happened in.
    #[default]
    EventTime,
    /// File order: the order a live consumer received them in, late events included.
    Arrival,
}

/// Runs `input` through `engine` in `order`, writing each decision as a JSON line to
/// `out` when given. `progress(done, total)` is called every few thousand events.
pub fn run(
    engine: &Engine,
    mut input: Input,
    order: Order,
    mut out: Option<&mut dyn Write>,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<Report> {
    let started = Instant::now();
    if order == Order::EventTime {
        input.events.sort_by_key(|(_, e)| e.ts_ms());
    }
    let mut tally = Tally::new(engine)?;
    let mut scratch = crate::engine::Scratch::default();
    let total = input.events.len() as u64;
    let mut line_buf = String::new();
    let events = &input.events;
    let mut run: Vec<&crate::event::Transaction> = Vec::with_capacity(crate::engine::BATCH);
    let (mut i, mut next_progress) = (0, 0);
    while i < events.len() {
        if i >= next_progress {
            progress(i as u64, total);
            next_progress = i + 4096;
        }
        // Runs of transactions are decided in batches (`Engine::decide_batch`: the same
        // decisions, faster); account events one at a time between them.
        let start = i;
        run.clear();
        while let Some((_, Event::Tx(tx))) = events.get(i)
            && run.len() < crate::engine::BATCH
        {
            run.push(tx);
            i += 1;
        }
        if run.is_empty() {
            engine.apply_into(&events[i].1, &mut scratch);
            i += 1;
            continue;
        }
        // A decision's latency runs from the one before it (or the batch's start); writing
        // it out is not counted.
        let mut t0 = Instant::now();
        let mut written = Ok(());
        engine.decide_batch(&run, &mut scratch, |k, d| {
            let ns = t0.elapsed().as_nanos();
            tally.add(&events[start + k].1, &d, ns);
            if let Some(w) = out.as_deref_mut()
                && written.is_ok()
            {
                line_buf.clear();
                line_buf.push_str(&d.to_json());
                line_buf.push('\n');
                written = w.write_all(line_buf.as_bytes());
            }
            t0 = Instant::now();
        });
        written?;
    }
    progress(total, total);
    if let Some(w) = out {
        w.flush()?;
    }
    let events = input.events.len() as u64;
    Ok(tally.finish(engine, events, input.rejected, started))
}

/// The label of a transaction event.
pub(crate) fn label_of(event: &Event) -> Option<&Label> {
    match event {
        Event::Tx(t) => t.label.as_ref(),
        Event::Account(_) => None,
    }
}

/// A report being counted up, one decision at a time.
pub(crate) struct Tally {
    rules: Vec<(String, RuleStats)>,
    index: BTreeMap<String, usize>,
    latency: Histogram<u64>,
    by_action: BTreeMap<Action, (u64, BTreeMap<String, i128>)>,
    flagged: Confusion,
    blocked: Confusion,
    scenarios: BTreeMap<String, ScenarioStats>,
    transactions: u64,
    labeled: u64,
    decide_ns: u128,
}

impl Tally {
    pub(crate) fn new(engine: &Engine) -> std::io::Result<Tally> {
        let active = engine.active();
        let rules: Vec<(String, RuleStats)> = active
            .pack
            .program
            .rules
            .iter()
            .map(|r| {
                (
                    r.meta.id.clone(),
                    RuleStats {
                        shadow: r.meta.shadow,
                        ..RuleStats::default()
                    },
                )
            })
            .collect();
        let index = rules
            .iter()
            .enumerate()
            .map(|(i, (id, _))| (id.clone(), i))
            .collect();
        Ok(Tally {
            rules,
            index,
            latency: Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3)
                .map_err(std::io::Error::other)?,
            by_action: BTreeMap::new(),
            flagged: Confusion::default(),
            blocked: Confusion::default(),
            scenarios: BTreeMap::new(),
            transactions: 0,
            labeled: 0,
            decide_ns: 0,
        })
    }

    /// Counts the decision `d` on `event`, which took `ns` to make.
    pub(crate) fn add(&mut self, event: &Event, d: &Decision, ns: u128) {
        self.decide_ns += ns;
        self.latency
            .saturating_record(u64::try_from(ns).unwrap_or(u64::MAX).max(1));
        self.transactions += 1;
        let entry = self.by_action.entry(d.action).or_default();
        entry.0 += 1;
        *entry.1.entry(d.currency.code().to_string()).or_default() += i128::from(d.amount_minor);
        let label = label_of(event);
        for r in &d.reasons {
            if let Some(&k) = self.index.get(&r.rule) {
                let s = &mut self.rules[k].1;
                s.hits += 1;
                if let Some(l) = label {
                    s.labeled_hits += 1;
                    s.fraud_hits += u64::from(l.is_fraud);
                }
            }
        }
        for e in &d.errors {
            if let Some(&k) = self.index.get(e) {
                self.rules[k].1.errors += 1;
            }
        }
        if let Some(l) = label {
            self.labeled += 1;
            let is_flagged = d.action != Action::Allow;
            let is_blocked = d.action == Action::Block;
            self.flagged.add(l.is_fraud, is_flagged);
            self.blocked.add(l.is_fraud, is_blocked);
            if l.is_fraud {
                let s = self
                    .scenarios
                    .entry(l.scenario.clone().unwrap_or_else(|| "(no scenario)".into()))
                    .or_default();
                s.total += 1;
                s.flagged += u64::from(is_flagged);
                s.blocked += u64::from(is_blocked);
            }
        }
    }

    pub(crate) fn finish(
        self,
        engine: &Engine,
        events: u64,
        rejected: Vec<Rejected>,
        started: Instant,
    ) -> Report {
        Report {
            lines: events + rejected.len() as u64,
            events,
            transactions: self.transactions,
            rejected,
            decide_secs: self.decide_ns as f64 / 1e9,
            total_secs: started.elapsed().as_secs_f64(),
            latency_ns: self.latency,
            by_action: self.by_action,
            rules: self.rules,
            labeled: self.labeled,
            flagged: self.flagged,
            blocked: self.blocked,
            scenarios: self.scenarios,
            duplicates: engine.duplicate_events(),
            late: engine.late_events(),
            rules_version: engine.active().version.to_string(),
        }
    }
}

/// Amounts per currency as `EUR 12.50 USD 3.00`.
pub(crate) fn amounts(by_currency: &BTreeMap<String, i128>) -> String {
    let mut s = String::new();
    for (cur, minor) in by_currency {
        let c = crate::event::Currency::from_code(cur);
        let _ = write!(
            s,
            " {cur} {}",
            c.map_or_else(|| minor.to_string(), |c| c.format_wide(*minor))
        );
    }
    s.trim().to_string()
}

pub(crate) fn pct(x: Option<f64>) -> String {
    x.map_or_else(|| "-".into(), |v| format!("{:.1}%", v * 100.0))
}

fn us(ns: u64) -> String {
    if ns < 10_000 {
        format!("{:.2}µs", ns as f64 / 1000.0)
    } else {
        format!("{:.0}µs", ns as f64 / 1000.0)
    }
}

/// How many rejected lines the text report lists one by one.
pub const REJECTED_SHOWN_MAX: usize = 20;

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let rate = if self.decide_secs > 0.0 {
            self.transactions as f64 / self.decide_secs
        } else {
            0.0
        };
        writeln!(f, "rules version {}", self.rules_version)?;
        writeln!(
            f,
            "events      {} applied ({} transactions), {} rejected, {} duplicate, {} late",
            self.events,
            self.transactions,
            self.rejected.len(),
            self.duplicates,
            self.late
        )?;
        writeln!(
            f,
            "throughput  {rate:.0} decisions/s in decide(); whole run {:.2}s",
            self.total_secs
        )?;
        let h = &self.latency_ns;
        if !h.is_empty() {
            writeln!(
                f,
                "latency     p50 {}  p99 {}  p99.9 {}  max {}",
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
                us(h.max())
            )?;
        }
        writeln!(f, "decisions")?;
        for (a, (n, by)) in &self.by_action {
            writeln!(f, "  {:<8} {:>8}  {}", a.name(), n, amounts(by))?;
        }
        writeln!(f, "rules")?;
        for (id, s) in &self.rules {
            let tag = if s.shadow { " [shadow]" } else { "" };
            let err = if s.errors > 0 {
                format!("  errors {}", s.errors)
            } else {
                String::new()
            };
            let quality = if self.labeled > 0 {
                let c = Confusion {
                    tp: s.fraud_hits,
                    fp: s.labeled_hits - s.fraud_hits,
                    fn_: (self.flagged.tp + self.flagged.fn_).saturating_sub(s.fraud_hits),
                    tn: 0,
                };
                let f1 = c.f1().map_or_else(|| "-".into(), |v| format!("{v:.3}"));
                format!(
                    "  precision {:>6}  recall {:>6}  F1 {f1:>5}",
                    pct(c.precision()),
                    pct(c.recall())
                )
            } else {
                String::new()
            };
            writeln!(f, "  {id:<40} {:>7} hits{quality}{tag}{err}", s.hits)?;
        }
        if self.labeled > 0 {
            writeln!(
                f,
                "labels      {} labeled transactions, {} fraud",
                self.labeled,
                self.flagged.tp + self.flagged.fn_
            )?;
            for (name, c) in [("review-or-block", &self.flagged), ("block", &self.blocked)] {
                writeln!(
                    f,
                    "  {name:<16} precision {}  recall {}  F1 {}  false-positive rate {}  (tp {} fp {} fn {})",
                    pct(c.precision()),
                    pct(c.recall()),
                    c.f1().map_or_else(|| "-".into(), |v| format!("{v:.3}")),
                    c.fpr()
                        .map_or_else(|| "-".into(), |v| format!("{:.3}%", v * 100.0)),
                    c.tp,
                    c.fp,
                    c.fn_
                )?;
            }
            writeln!(
                f,
                "  per scenario (recall; precision is not defined per scenario, as a false alarm has no scenario)"
            )?;
            for (name, s) in &self.scenarios {
                writeln!(
                    f,
                    "    {name:<20} {:>6} fraud tx  review-or-block {:>6}  block {:>6}",
                    s.total,
                    pct(ratio(s.flagged, s.total)),
                    pct(ratio(s.blocked, s.total))
                )?;
            }
        }
        if !self.rejected.is_empty() {
            writeln!(f, "rejected lines")?;
            for r in self.rejected.iter().take(REJECTED_SHOWN_MAX) {
                writeln!(f, "  line {}: {}", r.line, r.error)?;
            }
            if self.rejected.len() > REJECTED_SHOWN_MAX {
                writeln!(
                    f,
                    "  … and {} more",
                    self.rejected.len() - REJECTED_SHOWN_MAX
                )?;
            }
        }
        Ok(())
    }
}

/// A gzip writer over a buffered file.
pub type GzWriter = flate2::write::GzEncoder<std::io::BufWriter<std::fs::File>>;

/// Wraps a file in a gzip writer (default compression).
pub fn gz_writer(f: std::fs::File) -> GzWriter {
    flate2::write::GzEncoder::new(std::io::BufWriter::new(f), flate2::Compression::default())
}
