//! The simulation: applies plans in `(ts, seq)` order against an integer ledger of every
//! account's balance (minor units), resolves balance-dependent amounts, drops debits that
//! would overdraw, schedules merchant refunds, and writes each surviving event as a JSON line.

use super::GenStats;
use super::json;
use super::model::{Amt, Ctx, Item, Party, Planner, TxKind, TxPlan};
use super::population::World;
use std::io::{self, BufWriter, Write};

/// How often `progress` is called, in processed plans.
const PROGRESS_EVERY: u64 = 8192;

/// Resolves a planned amount against the payer's current balance; `None` means the
/// transaction does not happen (it would overdraw, or there is nothing to move).
pub(crate) fn resolve(amount: Amt, debit: bool, balance: i64) -> Option<i64> {
    let share = |pm: i64| (i128::from(balance.max(0)) * i128::from(pm) / 1000) as i64;
    let minor = match amount {
        Amt::Fixed(m) if debit && m > balance => return None,
        Amt::Fixed(m) => m,
        Amt::Capped { minor, cap_pm } if debit => minor.min(share(cap_pm)),
        Amt::Capped { minor, .. } => minor,
        Amt::Share { pm, step } => {
            let raw = share(pm);
            if step > 1 && raw >= step {
                raw - raw % step
            } else {
                raw
            }
        }
        Amt::TopUpIfBelow { threshold, minor } if balance < threshold => minor,
        Amt::TopUpIfBelow { .. } => return None,
    };
    (minor > 0 && (!debit || minor <= balance)).then_some(minor)
}

/// Runs every plan in time order and writes the resulting lines to `out`.
pub(crate) fn run(
    ctx: &Ctx,
    world: &World,
    planner: &mut Planner,
    out: &mut dyn Write,
    progress: &mut dyn FnMut(u64, u64),
) -> io::Result<GenStats> {
    let mut w = BufWriter::with_capacity(1 << 16, out);
    let mut balances = vec![0i64; world.total()];
    let mut stats = GenStats::empty();
    let mut line = String::with_capacity(512);
    let mut done = 0u64;
    while let Some(plan) = planner.pop() {
        done += 1;
        if done.is_multiple_of(PROGRESS_EVERY) {
            progress(done, planner.created());
        }
        match plan.item {
            Item::Acct(ev) => {
                stats.account_events += 1;
                json::acct_line(&mut line, stats.account_events, plan.ts, &ev);
            }
            Item::Tx(tx) => {
                let Some(amount) = settle(&mut balances, &tx) else {
                    continue;
                };
                stats.transactions += 1;
                if let Some(scenario) = tx.fraud {
                    stats.fraud_transactions += 1;
                    *stats
                        .by_scenario
                        .entry(scenario.name().to_owned())
                        .or_insert(0) += 1;
                }
                json::tx_line(&mut line, stats.transactions, plan.ts, &tx, amount);
                schedule_refund(ctx, planner, plan.ts, tx, amount);
            }
        }
        stats.events += 1;
        w.write_all(line.as_bytes())?;
    }
    w.flush()?;
    progress(done, done);
    Ok(stats)
}

/// Moves the money of `tx` if the payer can afford it; returns the settled amount.
fn settle(balances: &mut [i64], tx: &TxPlan) -> Option<i64> {
    let payer = tx.origin.account as usize;
    let debit = tx.kind.is_debit();
    let amount = resolve(tx.amount, debit, balances[payer])?;
    if debit {
        balances[payer] -= amount;
        if let (TxKind::Transfer, Party::Account(to)) = (tx.kind, tx.counterparty) {
            balances[to as usize] += amount;
        }
    } else {
        balances[payer] += amount;
    }
    Some(amount)
}

/// Queues the merchant's refund of a settled payment, if one was planned and falls in the period.
fn schedule_refund(ctx: &Ctx, planner: &mut Planner, ts: i64, tx: TxPlan, paid: i64) {
    let Some(spec) = tx.refund else { return };
    let at = ts + spec.delay;
    if tx.kind != TxKind::Payment || !ctx.in_period(at) {
        return;
    }
    let minor = (paid * spec.pm / 1000).max(1);
    let refund = TxPlan::new(
        TxKind::Refund,
        tx.origin,
        tx.counterparty,
        Amt::Fixed(minor),
    );
    planner.tx(at, refund);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolve_never_overdraws() {
        assert_eq!(resolve(Amt::Fixed(500), true, 499), None);
        assert_eq!(resolve(Amt::Fixed(500), true, 500), Some(500));
        assert_eq!(resolve(Amt::Fixed(500), false, 0), Some(500));
        assert_eq!(
            resolve(
                Amt::Capped {
                    minor: 10_000,
                    cap_pm: 900
                },
                true,
                1000
            ),
            Some(900)
        );
        assert_eq!(
            resolve(
                Amt::Capped {
                    minor: 100,
                    cap_pm: 900
                },
                true,
                1000
            ),
            Some(100)
        );
        assert_eq!(
            resolve(
                Amt::Capped {
                    minor: 100,
                    cap_pm: 900
                },
                true,
                0
            ),
            None
        );
        assert_eq!(
            resolve(Amt::Share { pm: 1000, step: 1 }, true, 1234),
            Some(1234)
        );
        assert_eq!(
            resolve(
                Amt::Share {
                    pm: 1000,
                    step: 100
                },
                true,
                1234
            ),
            Some(1200)
        );
        assert_eq!(
            resolve(Amt::Share { pm: 500, step: 100 }, true, 50),
            Some(25)
        );
        assert_eq!(
            resolve(
                Amt::TopUpIfBelow {
                    threshold: 100,
                    minor: 7
                },
                false,
                100
            ),
            None
        );
        assert_eq!(
            resolve(
                Amt::TopUpIfBelow {
                    threshold: 100,
                    minor: 7
                },
                false,
                99
            ),
            Some(7)
        );
    }
}
