//! Backtest: the same recorded traffic through two packs, decision by decision, and what the
//! new pack would change — `vigil replay FILE --rules NEW --compare OLD`.
//!
//! Each pack gets its own engine and state, and both see the events in the same order, so a
//! difference comes from the rules alone. A decision *changes* when its action differs.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Write;
use std::time::Instant;

use vigil_rules::Action;

use crate::decision::Decision;
use crate::engine::{Engine, Scratch};
use crate::event::{Currency, format_ts};
use crate::replay::{Confusion, Input, Order, Report, Tally, amounts, label_of, pct};

/// Count and amount (minor units per currency) of some decisions.
pub type Amounts = (u64, BTreeMap<String, i128>);

/// What one rule did under each pack.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuleDelta {
    /// In the old pack.
    pub in_old: bool,
    /// In the new pack.
    pub in_new: bool,
    /// Hits under the old pack.
    pub old_hits: u64,
    /// Hits under the new pack.
    pub new_hits: u64,
    /// Changed decisions where it fired under the new pack only.
    pub changed_new_only: u64,
    /// Changed decisions where it fired under the old pack only.
    pub changed_old_only: u64,
}

/// How labeled transactions moved between flagged (review, step-up or block) and allowed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelMoves {
    /// Fraud the new pack flags and the old one let through.
    pub fraud_caught: u64,
    /// Fraud the old pack flagged and the new one lets through.
    pub fraud_missed: u64,
    /// Legitimate transactions the new pack flags and the old one let through.
    pub legit_flagged: u64,
    /// Legitimate transactions the old pack flagged and the new one lets through.
    pub legit_released: u64,
}

/// What changed between two packs over the same traffic.
#[derive(Debug)]
pub struct Comparison {
    /// The old pack's report.
    pub old: Report,
    /// The new pack's report.
    pub new: Report,
    /// Decisions whose action changed, by (old, new) action.
    pub transitions: BTreeMap<(Action, Action), Amounts>,
    /// Decisions whose action changed.
    pub changed: u64,
    /// Per rule id of either pack (old pack's order, then new rules).
    pub rules: Vec<(String, RuleDelta)>,
    /// Labelled transactions that changed sides.
    pub labels: LabelMoves,
}

fn rules_of(d: &Decision) -> impl Iterator<Item = &str> {
    d.reasons.iter().map(|r| r.rule.as_str())
}

/// One side of a changed decision, as written to the changed-decisions file.
#[derive(serde::Serialize)]
struct Side<'a> {
    action: &'static str,
    score: i64,
    rules: Vec<&'a str>,
}

impl<'a> Side<'a> {
    fn of(d: &'a Decision) -> Side<'a> {
        Side {
            action: d.action.name(),
            score: d.score,
            rules: rules_of(d).collect(),
        }
    }
}

/// A line of the changed-decisions file.
#[derive(serde::Serialize)]
struct Changed<'a> {
    tx_id: &'a str,
    ts: String,
    account_id: &'a str,
    amount: String,
    currency: &'a str,
    old: Side<'a>,
    new: Side<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    is_fraud: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fraud_scenario: Option<&'a str>,
}

/// Runs `input` through `old` and `new` in `order`. Each changed decision is written to
/// `changed` as a JSON line (tx_id, time, account, amount, both sides' action, score and
/// rules, and the label when there is one). `progress(done, total)` is called every few
/// thousand events.
pub fn compare(
    old: &Engine,
    new: &Engine,
    mut input: Input,
    order: Order,
    mut changed: Option<&mut dyn Write>,
    progress: &mut dyn FnMut(u64, u64),
) -> std::io::Result<Comparison> {
    let started = Instant::now();
    if order == Order::EventTime {
        input.events.sort_by_key(|(_, e)| e.ts_ms());
    }
    let (mut old_tally, mut new_tally) = (Tally::new(old)?, Tally::new(new)?);
    let mut rules: Vec<(String, RuleDelta)> = Vec::new();
    let mut index: BTreeMap<String, usize> = BTreeMap::new();
    for (engine, is_old) in [(old, true), (new, false)] {
        for r in &engine.active().pack.program.rules {
            let i = *index.entry(r.meta.id.clone()).or_insert_with(|| {
                rules.push((r.meta.id.clone(), RuleDelta::default()));
                rules.len() - 1
            });
            let delta = &mut rules[i].1;
            if is_old {
                delta.in_old = true;
            } else {
                delta.in_new = true;
            }
        }
    }
    let mut transitions: BTreeMap<(Action, Action), Amounts> = BTreeMap::new();
    let mut labels = LabelMoves::default();
    let mut changed_n = 0u64;
    let (mut old_scratch, mut new_scratch) = (Scratch::default(), Scratch::default());
    let total = input.events.len() as u64;
    for (i, (_, event)) in input.events.iter().enumerate() {
        if i % 4096 == 0 {
            progress(i as u64, total);
        }
        let t0 = Instant::now();
        let a = old.apply_into(event, &mut old_scratch);
        let t1 = Instant::now();
        let b = new.apply_into(event, &mut new_scratch);
        let t2 = Instant::now();
        let (Some(a), Some(b)) = (a, b) else { continue };
        old_tally.add(event, &a, (t1 - t0).as_nanos());
        new_tally.add(event, &b, (t2 - t1).as_nanos());
        for r in rules_of(&a) {
            if let Some(&k) = index.get(r) {
                rules[k].1.old_hits += 1;
            }
        }
        for r in rules_of(&b) {
            if let Some(&k) = index.get(r) {
                rules[k].1.new_hits += 1;
            }
        }
        if a.action == b.action {
            continue;
        }
        changed_n += 1;
        let t = transitions.entry((a.action, b.action)).or_default();
        t.0 += 1;
        *t.1.entry(b.currency.code().to_string()).or_default() += i128::from(b.amount_minor);
        for r in rules_of(&b).filter(|r| !rules_of(&a).any(|x| x == *r)) {
            if let Some(&k) = index.get(r) {
                rules[k].1.changed_new_only += 1;
            }
        }
        for r in rules_of(&a).filter(|r| !rules_of(&b).any(|x| x == *r)) {
            if let Some(&k) = index.get(r) {
                rules[k].1.changed_old_only += 1;
            }
        }
        let label = label_of(event);
        if let Some(l) = label {
            let (was, is) = (a.action != Action::Allow, b.action != Action::Allow);
            match (l.is_fraud, was, is) {
                (true, false, true) => labels.fraud_caught += 1,
                (true, true, false) => labels.fraud_missed += 1,
                (false, false, true) => labels.legit_flagged += 1,
                (false, true, false) => labels.legit_released += 1,
                _ => {}
            }
        }
        if let Some(w) = changed.as_deref_mut() {
            let line = Changed {
                tx_id: &b.tx_id,
                ts: format_ts(b.ts_ms),
                account_id: &b.account_id,
                amount: b.currency.format(b.amount_minor),
                currency: b.currency.code(),
                old: Side::of(&a),
                new: Side::of(&b),
                is_fraud: label.map(|l| l.is_fraud),
                fraud_scenario: label.and_then(|l| l.scenario.as_deref()),
            };
            let mut bytes = serde_json::to_vec(&line).map_err(std::io::Error::other)?;
            bytes.push(b'\n');
            w.write_all(&bytes)?;
        }
    }
    progress(total, total);
    if let Some(w) = changed {
        w.flush()?;
    }
    let events = input.events.len() as u64;
    Ok(Comparison {
        old: old_tally.finish(old, events, input.rejected.clone(), started),
        new: new_tally.finish(new, events, input.rejected, started),
        transitions,
        changed: changed_n,
        rules,
        labels,
    })
}

fn quality(c: &Confusion) -> String {
    format!(
        "precision {:>6}  recall {:>6}  F1 {:>5}",
        pct(c.precision()),
        pct(c.recall()),
        c.f1().map_or_else(|| "-".into(), |v| format!("{v:.3}"))
    )
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (old, new) = (&self.old, &self.new);
        writeln!(
            f,
            "backtest    old pack {} -> new pack {}",
            old.rules_version, new.rules_version
        )?;
        writeln!(
            f,
            "events      {} applied ({} transactions), {} rejected; whole run {:.2}s",
            new.events,
            new.transactions,
            new.rejected.len(),
            new.total_secs
        )?;
        let share = if new.transactions > 0 {
            self.changed as f64 * 100.0 / new.transactions as f64
        } else {
            0.0
        };
        writeln!(
            f,
            "changed     {} decisions ({share:.2}%) take another action",
            self.changed
        )?;
        writeln!(f, "decisions   old -> new")?;
        let actions: Vec<Action> = old
            .by_action
            .keys()
            .chain(new.by_action.keys())
            .copied()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect();
        for a in actions {
            let n = |r: &Report| r.by_action.get(&a).map_or(0, |x| x.0);
            let (o, n) = (n(old), n(new));
            writeln!(
                f,
                "  {:<8} {o:>8} -> {n:>8}  ({:+})",
                a.name(),
                i128::from(n) - i128::from(o)
            )?;
        }
        if !self.transitions.is_empty() {
            writeln!(f, "changes     old -> new: count, amount")?;
            for ((a, b), (n, by)) in &self.transitions {
                let pair = format!("{} -> {}", a.name(), b.name());
                writeln!(f, "  {pair:<18} {n:>8}  {}", amounts(by))?;
            }
        }
        writeln!(
            f,
            "rules       hits old -> new; in changed decisions, fired only under new / only under old"
        )?;
        let mut same = 0;
        for (id, d) in &self.rules {
            if d.old_hits == d.new_hits && d.changed_new_only == 0 && d.changed_old_only == 0 {
                same += 1;
                continue;
            }
            let tag = match (d.in_old, d.in_new) {
                (false, true) => " [added]",
                (true, false) => " [removed]",
                _ => "",
            };
            writeln!(
                f,
                "  {id:<40} {:>7} -> {:>7}  new only {:>6}  old only {:>6}{tag}",
                d.old_hits, d.new_hits, d.changed_new_only, d.changed_old_only
            )?;
        }
        if same > 0 {
            writeln!(f, "  ({same} rules fired exactly as before)")?;
        }
        if new.labeled > 0 {
            writeln!(
                f,
                "labels      {} labeled transactions, {} fraud",
                new.labeled,
                new.flagged.tp + new.flagged.fn_
            )?;
            for (name, o, n) in [
                ("review-or-block", &old.flagged, &new.flagged),
                ("block", &old.blocked, &new.blocked),
            ] {
                writeln!(f, "  {name:<16} old {}", quality(o))?;
                writeln!(f, "  {:<16} new {}", "", quality(n))?;
            }
            let m = &self.labels;
            writeln!(
                f,
                "  flagged now, allowed before: {} fraud (caught), {} legitimate (new false alarms)",
                m.fraud_caught, m.legit_flagged
            )?;
            writeln!(
                f,
                "  allowed now, flagged before: {} fraud (missed), {} legitimate (false alarms gone)",
                m.fraud_missed, m.legit_released
            )?;
        }
        Ok(())
    }
}

/// What a dry run found: the comparison and the first changed decisions.
#[derive(Debug)]
pub struct DryRun {
    /// The running pack against the candidate.
    pub comparison: Comparison,
    /// Event time of the first and last event run, ms.
    pub span_ms: Option<(i64, i64)>,
    /// The first [`DRY_RUN_CHANGED_MAX`] changed decisions, as JSON objects.
    pub changed: Vec<serde_json::Value>,
}

/// Changed decisions a dry run lists one by one.
pub const DRY_RUN_CHANGED_MAX: usize = 100;

/// Runs `events` (the recent traffic, in the order it was applied) through the `running` pack
/// and the `candidate`, each on its own empty state. Windows see only the history the events
/// hold, the same for both sides.
pub fn dry_run(
    running: &vigil_rules::CompiledPack,
    candidate: vigil_rules::CompiledPack,
    config: &crate::EngineConfig,
    events: Vec<crate::Event>,
) -> std::io::Result<DryRun> {
    let span_ms = events
        .first()
        .zip(events.last())
        .map(|(a, b)| (a.ts_ms(), b.ts_ms()));
    // One fixed secret for both sides, so they differ by their rules alone.
    let config = crate::EngineConfig {
        id_secret: Some(crate::state::REPLAY_SECRET),
        ..*config
    };
    let old = Engine::new(running.clone(), config);
    let new = Engine::new(candidate, config);
    let input = Input {
        events: events
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64 + 1, e))
            .collect(),
        rejected: Vec::new(),
    };
    let mut out = Vec::new();
    let comparison = compare(
        &old,
        &new,
        input,
        Order::Arrival,
        Some(&mut LimitedLines {
            out: &mut out,
            lines: 0,
        }),
        &mut |_, _| {},
    )?;
    let changed = out
        .split(|&b| b == b'\n')
        .filter(|l| !l.is_empty())
        .filter_map(|l| serde_json::from_slice(l).ok())
        .collect();
    Ok(DryRun {
        comparison,
        span_ms,
        changed,
    })
}

/// Keeps the first [`DRY_RUN_CHANGED_MAX`] lines written to it.
struct LimitedLines<'a> {
    out: &'a mut Vec<u8>,
    lines: usize,
}

impl Write for LimitedLines<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.lines < DRY_RUN_CHANGED_MAX {
            self.out.extend_from_slice(buf);
            self.lines += buf.iter().filter(|&&b| b == b'\n').count();
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Comparison {
    /// The comparison as JSON, for the API.
    pub fn to_json(&self) -> serde_json::Value {
        let side = |r: &Report| {
            let actions: serde_json::Map<String, serde_json::Value> = r
                .by_action
                .iter()
                .map(|(a, (n, _))| (a.name().to_string(), (*n).into()))
                .collect();
            let mut v = serde_json::json!({"hash": r.rules_version, "decisions": actions});
            // A rule whose condition cannot be computed (a division by zero) never fires: it
            // would read as a rule that changes nothing.
            let errors: serde_json::Map<String, serde_json::Value> = r
                .rules
                .iter()
                .filter(|(_, s)| s.errors > 0)
                .map(|(id, s)| (id.clone(), s.errors.into()))
                .collect();
            if !errors.is_empty()
                && let Some(o) = v.as_object_mut()
            {
                o.insert("rule_errors".into(), errors.into());
            }
            if r.labeled > 0
                && let Some(o) = v.as_object_mut()
            {
                for (name, c) in [("review_or_block", &r.flagged), ("block", &r.blocked)] {
                    o.insert(
                        name.into(),
                        serde_json::json!({"precision": c.precision(), "recall": c.recall(),
                                           "tp": c.tp, "fp": c.fp, "fn": c.fn_}),
                    );
                }
            }
            v
        };
        let amounts = |by: &BTreeMap<String, i128>| -> serde_json::Value {
            by.iter()
                .map(|(cur, minor)| {
                    let text = Currency::from_code(cur)
                        .map_or_else(|| minor.to_string(), |c| c.format_wide(*minor));
                    (cur.clone(), serde_json::Value::from(text))
                })
                .collect::<serde_json::Map<_, _>>()
                .into()
        };
        serde_json::json!({
            "transactions": self.new.transactions,
            "events": self.new.events,
            "changed": self.changed,
            "running": side(&self.old),
            "candidate": side(&self.new),
            "transitions": self.transitions.iter().map(|((a, b), (n, by))| serde_json::json!({
                "from": a.name(), "to": b.name(), "count": n, "amount": amounts(by)})).collect::<Vec<_>>(),
            "rules": self.rules.iter().filter(|(_, d)| {
                d.old_hits != d.new_hits || d.changed_new_only > 0 || d.changed_old_only > 0
            }).map(|(id, d)| serde_json::json!({
                "id": id, "running_hits": d.old_hits, "candidate_hits": d.new_hits,
                "changed_candidate_only": d.changed_new_only, "changed_running_only": d.changed_old_only,
                "added": !d.in_old, "removed": !d.in_new})).collect::<Vec<_>>(),
        })
    }
}
