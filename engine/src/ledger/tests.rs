// Amounts in minor units are written major_minor: 100_00 is 100.00.
#![allow(clippy::inconsistent_digit_grouping)]

use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::event::TxKind;

fn open(l: &Ledger, id: &str, cur: &str) {
    l.execute_at(
        Command::Open {
            account: id.into(),
            currency: cur.into(),
            locale: None,
        },
        1,
    )
    .unwrap_or_else(|e| panic!("open {id}: {e}"));
}

fn deposit(l: &Ledger, op: &str, id: &str, amount: i64) -> Result<Applied, LedgerError> {
    l.execute_at(
        Command::Deposit {
            op_id: op.into(),
            account: id.into(),
            amount,
        },
        2,
    )
}

fn transfer(tx: &str, from: &str, to: &str, amount: i64, risk: Risk) -> Command {
    Command::Transfer(TransferCmd {
        tx_id: tx.into(),
        kind: TxKind::Transfer,
        from: Party::Account(from.into()),
        to: Party::Account(to.into()),
        amount,
        currency: "EUR".into(),
        risk,
        rules: vec![],
        score: 0,
    })
}

fn tr(a: &Applied) -> &Transfer {
    match &a.outcome {
        Outcome::Transfer(t) => t,
        o => panic!("not a transfer: {o:?}"),
    }
}

fn balances(l: &Ledger, id: &str) -> (i64, i64) {
    l.read(|b| b.get_account(id).map(|a| (a.available, a.held)))
        .unwrap_or_else(|| panic!("no account {id}"))
}

fn two_accounts() -> Ledger {
    let l = Ledger::in_memory(BookConfig::default());
    open(&l, "alice", "EUR");
    open(&l, "bob", "EUR");
    deposit(&l, "dep-1", "alice", 100_00).expect("deposit");
    l
}

#[test]
fn allow_settles_and_block_moves_nothing() {
    let l = two_accounts();
    let a = l
        .execute(transfer("t1", "alice", "bob", 30_00, Risk::Allow))
        .expect("t1");
    assert_eq!(tr(&a).status, Status::Settled);
    assert_eq!(balances(&l, "alice"), (70_00, 0));
    assert_eq!(balances(&l, "bob"), (30_00, 0));
    let b = l
        .execute(transfer("t2", "alice", "bob", 10_00, Risk::Block))
        .expect("t2");
    assert_eq!(tr(&b).status, Status::Declined);
    assert_eq!(tr(&b).decline, Some(Decline::RiskBlocked));
    assert_eq!(balances(&l, "alice"), (70_00, 0));
    assert!(l.read(Book::check).is_empty());
}

#[test]
fn declines_name_their_cause() {
    let l = two_accounts();
    open(&l, "carol", "USD");
    let cases = [
        (
            transfer("d1", "alice", "bob", 100_01, Risk::Allow),
            Decline::InsufficientFunds,
        ),
        (
            transfer("d2", "alice", "nobody", 1, Risk::Allow),
            Decline::UnknownAccount,
        ),
        (
            transfer("d3", "alice", "carol", 1, Risk::Allow),
            Decline::CurrencyMismatch,
        ),
        (
            transfer("d4", "alice", "bob", 1_000_000_01, Risk::Allow),
            Decline::LimitExceeded,
        ),
    ];
    for (cmd, want) in cases {
        let a = l.execute(cmd).expect("declines are results");
        assert_eq!(tr(&a).decline, Some(want), "{:?}", tr(&a));
    }
    l.execute(Command::Freeze {
        account: "bob".into(),
        reason: "mule".into(),
        by: "analyst".into(),
        tx_id: None,
    })
    .expect("freeze");
    let a = l
        .execute(transfer("d5", "alice", "bob", 1, Risk::Allow))
        .expect("d5");
    assert_eq!(tr(&a).decline, Some(Decline::AccountFrozen));
    assert_eq!(balances(&l, "alice"), (100_00, 0));
}

#[test]
fn holds_post_on_confirmation_and_release_on_cancel() {
    let l = two_accounts();
    let a = l
        .execute(transfer("s1", "alice", "bob", 40_00, Risk::StepUp))
        .expect("s1");
    assert_eq!(tr(&a).status, Status::Pending);
    assert_eq!(balances(&l, "alice"), (60_00, 40_00));
    // Held money cannot be spent twice.
    let b = l
        .execute(transfer("s2", "alice", "bob", 70_00, Risk::Allow))
        .expect("s2");
    assert_eq!(tr(&b).decline, Some(Decline::InsufficientFunds));
    l.execute(Command::Post {
        tx_id: "s1".into(),
        by: PostBy::Confirmed,
    })
    .expect("confirm");
    assert_eq!(balances(&l, "alice"), (60_00, 0));
    assert_eq!(balances(&l, "bob"), (40_00, 0));
    let err = l
        .execute(Command::Void {
            tx_id: "s1".into(),
            why: VoidReason::Cancelled,
        })
        .expect_err("settled cannot be cancelled");
    assert_eq!(err.code(), "invalid_state");

    l.execute(transfer("s3", "alice", "bob", 20_00, Risk::StepUp))
        .expect("s3");
    let cancel = |tx: &str| Command::Void {
        tx_id: tx.into(),
        why: VoidReason::Cancelled,
    };
    l.execute(cancel("s3")).expect("cancel");
    assert_eq!(balances(&l, "alice"), (60_00, 0));
    assert!(l.read(Book::check).is_empty());

    // A retry whose first answer was lost gets the transfer as it stands, not a 409, and
    // moves nothing; the other command on the same hold is still refused.
    let again = l.execute(cancel("s3")).expect("cancel again");
    assert!(again.replayed);
    assert_eq!(tr(&again).status, Status::Voided);
    let confirm = |tx: &str| Command::Post {
        tx_id: tx.into(),
        by: PostBy::Confirmed,
    };
    let again = l.execute(confirm("s1")).expect("confirm again");
    assert!(again.replayed);
    assert_eq!(tr(&again).status, Status::Settled);
    assert_eq!(balances(&l, "alice"), (60_00, 0));
    assert_eq!(balances(&l, "bob"), (40_00, 0));
    let err = l.execute(confirm("s3")).expect_err("cancelled");
    assert_eq!(err.code(), "invalid_state");
    // An expired hold is not "cancelled": cancelling it is refused.
    l.execute_at(transfer("s4", "alice", "bob", 1_00, Risk::StepUp), 1_000)
        .expect("s4");
    let (voided, _) = l.expire_due(1_000 + BookConfig::default().step_up_hold_ms);
    assert_eq!(voided.len(), 1);
    let err = l.execute(cancel("s4")).expect_err("expired");
    assert_eq!(err.code(), "invalid_state");
    assert!(l.read(Book::check).is_empty());
}

#[test]
fn review_opens_a_case_and_the_verdict_posts_or_voids() {
    let l = two_accounts();
    l.execute(transfer("r1", "alice", "bob", 10_00, Risk::Review))
        .expect("r1");
    l.execute(transfer("r2", "alice", "bob", 20_00, Risk::Review))
        .expect("r2");
    assert_eq!(l.read(|b| b.cases(true).count()), 2);
    let err = l
        .execute(Command::Post {
            tx_id: "r1".into(),
            by: PostBy::Confirmed,
        })
        .expect_err("the holder cannot release a review hold");
    assert_eq!(err.code(), "unsupported");
    let resolve = |case: &str, verdict| Command::Resolve {
        case_id: case.into(),
        verdict,
        by: "ana".into(),
        note: String::new(),
    };
    l.execute(resolve("review-r1", Verdict::Legit))
        .expect("legit");
    l.execute(resolve("review-r2", Verdict::Fraud))
        .expect("fraud");
    assert_eq!(balances(&l, "alice"), (90_00, 0));
    assert_eq!(balances(&l, "bob"), (10_00, 0));
    assert_eq!(
        l.read(|b| b.get_transfer("r2").map(|t| t.status)),
        Some(Status::Voided)
    );
    assert_eq!(
        l.read(|b| b.get_transfer("r2").and_then(|t| t.label)),
        Some(Verdict::Fraud)
    );
    let err = l
        .execute(resolve("review-r1", Verdict::Fraud))
        .expect_err("closed");
    assert_eq!(err.code(), "case_closed");
    // The same verdict again is a retry: the case as it stands, nothing moves again.
    let again = l
        .execute(resolve("review-r1", Verdict::Legit))
        .expect("same verdict");
    assert!(again.replayed);
    assert!(matches!(&again.outcome, Outcome::Case(c) if c.verdict == Some(Verdict::Legit)));
    assert_eq!(balances(&l, "bob"), (10_00, 0));

    // A hold that ends without the analyst takes its case out of the queue, closed with the
    // reason; a verdict may still label it, and moves nothing.
    l.execute(transfer("r3", "alice", "bob", 5_00, Risk::Review))
        .expect("r3");
    l.execute_at(transfer("r4", "alice", "bob", 6_00, Risk::Review), 1_000)
        .expect("r4");
    assert_eq!(l.read(|b| b.cases(true).count()), 2);
    l.execute(Command::Void {
        tx_id: "r3".into(),
        why: VoidReason::Cancelled,
    })
    .expect("cancel");
    l.expire_due(1_000 + BookConfig::default().review_hold_ms);
    let closed = |id: &str| l.read(|b| b.get_case(id).and_then(|c| c.closed));
    assert_eq!(closed("review-r3"), Some(VoidReason::Cancelled));
    assert_eq!(closed("review-r4"), Some(VoidReason::Expired));
    assert_eq!(closed("review-r2"), None, "a rejection is a verdict");
    assert_eq!(l.read(|b| b.cases(true).count()), 0);
    assert_eq!(l.read(|b| b.counts().2), 0);
    let before = balances(&l, "alice");
    l.execute(resolve("review-r3", Verdict::Fraud))
        .expect("a label");
    assert_eq!(balances(&l, "alice"), before);
    assert_eq!(
        l.read(|b| b.get_transfer("r3").and_then(|t| t.label)),
        Some(Verdict::Fraud)
    );
    assert!(l.read(Book::check).is_empty());
}

#[test]
fn holds_expire() {
    let l = two_accounts();
    l.execute_at(transfer("e1", "alice", "bob", 10_00, Risk::StepUp), 1_000)
        .expect("e1");
    let (voided, _) = l.expire_due(1_000 + BookConfig::default().step_up_hold_ms - 1);
    assert!(voided.is_empty());
    let (voided, _) = l.expire_due(1_000 + BookConfig::default().step_up_hold_ms);
    assert_eq!(voided.len(), 1);
    assert_eq!(voided[0].void_reason, Some(VoidReason::Expired));
    assert_eq!(balances(&l, "alice"), (100_00, 0));
}

#[test]
fn a_hold_past_its_time_is_released_not_posted_even_before_the_ticker_runs() {
    let l = two_accounts();
    let (step_up, review) = (
        BookConfig::default().step_up_hold_ms,
        BookConfig::default().review_hold_ms,
    );
    l.execute_at(transfer("x1", "alice", "bob", 10_00, Risk::StepUp), 1_000)
        .expect("x1");
    l.execute_at(transfer("x2", "alice", "bob", 20_00, Risk::Review), 1_000)
        .expect("x2");
    l.execute_at(transfer("x3", "alice", "bob", 30_00, Risk::StepUp), 1_000)
        .expect("x3");
    // Just in time: confirmed.
    l.execute_at(
        Command::Post {
            tx_id: "x3".into(),
            by: PostBy::Confirmed,
        },
        1_000 + step_up - 1,
    )
    .expect("in time");
    // At the hold's end, no expiry run yet: refused, and the hold released.
    let err = l
        .execute_at(
            Command::Post {
                tx_id: "x1".into(),
                by: PostBy::Confirmed,
            },
            1_000 + step_up,
        )
        .expect_err("lapsed");
    assert_eq!(err.code(), "invalid_state", "{err}");
    let x1 = l.read(|b| b.get_transfer("x1").cloned()).expect("x1");
    assert_eq!(
        (x1.status, x1.void_reason),
        (Status::Voided, Some(VoidReason::Expired))
    );
    // An approval after the review hold's end labels the case and moves nothing.
    l.execute_at(
        Command::Resolve {
            case_id: "review-x2".into(),
            verdict: Verdict::Legit,
            by: "ana".into(),
            note: String::new(),
        },
        1_000 + review,
    )
    .expect("a label");
    let x2 = l.read(|b| b.get_transfer("x2").cloned()).expect("x2");
    assert_eq!(
        (x2.status, x2.label),
        (Status::Voided, Some(Verdict::Legit))
    );
    // A cancellation or a rejection after the end finds the hold lapsed, as after the ticker.
    l.execute_at(transfer("x4", "alice", "bob", 1_00, Risk::StepUp), 2_000)
        .expect("x4");
    l.execute_at(transfer("x5", "alice", "bob", 2_00, Risk::Review), 2_000)
        .expect("x5");
    let err = l
        .execute_at(
            Command::Void {
                tx_id: "x4".into(),
                why: VoidReason::Cancelled,
            },
            2_000 + step_up,
        )
        .expect_err("lapsed");
    assert_eq!(err.code(), "invalid_state", "{err}");
    l.execute_at(
        Command::Resolve {
            case_id: "review-x5".into(),
            verdict: Verdict::Fraud,
            by: "ana".into(),
            note: String::new(),
        },
        2_000 + review,
    )
    .expect("a label");
    for (id, label) in [("x4", None), ("x5", Some(Verdict::Fraud))] {
        let t = l.read(|b| b.get_transfer(id).cloned()).expect(id);
        assert_eq!(
            (t.status, t.void_reason, t.label),
            (Status::Voided, Some(VoidReason::Expired), label),
            "{id}"
        );
    }
    assert_eq!(balances(&l, "alice"), (70_00, 0));
    assert_eq!(balances(&l, "bob"), (30_00, 0));
    assert!(l.read(Book::check).is_empty());
    assert!(l.expire_due(2_000 + review).0.is_empty());
}

#[test]
fn money_arrives_from_outside_and_never_from_another_account() {
    let accounts = |id: &str| ["alice", "bob", "shop"].contains(&id);
    let acc = |id: &str| Party::Account(id.into());
    let cases = [
        (TxKind::Transfer, Some("bob"), (acc("alice"), acc("bob"))),
        (
            TxKind::Transfer,
            Some("stranger"),
            (acc("alice"), acc("stranger")),
        ),
        (TxKind::Payment, Some("shop"), (acc("alice"), acc("shop"))),
        (
            TxKind::Payment,
            Some("amazon"),
            (acc("alice"), Party::World),
        ),
        (
            TxKind::Withdrawal,
            Some("bob"),
            (acc("alice"), Party::World),
        ),
        // A top-up or refund event is alice's: it cannot take bob's money, however it is
        // written (refunds of ledger transfers are Command::Refund).
        (TxKind::TopUp, Some("bob"), (Party::World, acc("alice"))),
        (TxKind::Refund, Some("shop"), (Party::World, acc("alice"))),
        (TxKind::Refund, None, (Party::World, acc("alice"))),
    ];
    for (kind, counterparty, want) in cases {
        assert_eq!(
            TransferCmd::parties(kind, "alice", counterparty, accounts),
            want,
            "{kind:?} {counterparty:?}"
        );
    }
}

#[test]
fn refunds_never_exceed_what_was_settled() {
    let l = two_accounts();
    l.execute(transfer("p1", "alice", "bob", 50_00, Risk::Allow))
        .expect("p1");
    let refund = |id: &str, amount| Command::Refund {
        refund_id: id.into(),
        tx_id: "p1".into(),
        amount,
        reason: "returned".into(),
    };
    l.execute(refund("rf1", Some(20_00))).expect("partial");
    let err = l.execute(refund("rf2", Some(30_01))).expect_err("too much");
    assert_eq!(err.code(), "refund_exceeds_settled");
    // Messages give amounts as the API does: decimals in the currency, never minor units.
    assert_eq!(
        err.to_string(),
        "a refund of 30.01 EUR is more than the 30.00 left to refund on p1"
    );
    let err = l
        .execute(Command::Withdraw {
            op_id: "w-big".into(),
            account: "bob".into(),
            amount: 50_01,
        })
        .expect_err("more than bob has");
    assert_eq!(
        err.to_string(),
        "account bob has 30.00 EUR available, 50.01 needed"
    );
    let limit = BookConfig::default().max_amount_major;
    let err = deposit(&l, "dep-big", "bob", limit * 100 + 1).expect_err("over the limit");
    assert_eq!(
        err.to_string(),
        format!("amount is above the limit of {limit}.00 EUR")
    );
    let a = l.execute(refund("rf3", None)).expect("the rest");
    let Outcome::Refund(r) = a.outcome else {
        panic!("not a refund")
    };
    assert_eq!((r.amount, r.refunded_total), (30_00, 50_00));
    assert_eq!(balances(&l, "alice"), (100_00, 0));
    assert_eq!(balances(&l, "bob"), (0, 0));
    let err = l.execute(refund("rf4", None)).expect_err("nothing left");
    assert_eq!(err.code(), "refund_exceeds_settled");
}

#[test]
fn same_request_same_result_and_different_request_conflicts() {
    let l = two_accounts();
    let a = l
        .execute(transfer("i1", "alice", "bob", 5_00, Risk::Allow))
        .expect("i1");
    let b = l
        .execute(transfer("i1", "alice", "bob", 5_00, Risk::Allow))
        .expect("again");
    assert!(b.replayed);
    assert_eq!(tr(&a), tr(&b));
    assert_eq!(a.ticket, b.ticket);
    assert_eq!(balances(&l, "alice"), (95_00, 0));
    // A retried decision may differ (state moved on); the request did not.
    let c = l
        .execute(transfer("i1", "alice", "bob", 5_00, Risk::Block))
        .expect("risk differs");
    assert_eq!(tr(&c).status, Status::Settled);
    let err = l
        .execute(transfer("i1", "alice", "bob", 6_00, Risk::Allow))
        .expect_err("different amount");
    assert_eq!(err.code(), "idempotency_conflict");
    let err = deposit(&l, "dep-1", "alice", 1).expect_err("deposit id reused");
    assert_eq!(err.code(), "idempotency_conflict");
    // Deposits and withdrawals share their op_ids, both ways.
    let withdraw = |op: &str| Command::Withdraw {
        op_id: op.into(),
        account: "alice".into(),
        amount: 1,
    };
    let err = l.execute(withdraw("dep-1")).expect_err("a deposit's id");
    assert_eq!(err.code(), "idempotency_conflict");
    l.execute(withdraw("wd-1")).expect("withdrawal");
    let err = deposit(&l, "wd-1", "alice", 1).expect_err("a withdrawal's id");
    assert_eq!(err.code(), "idempotency_conflict");
    assert!(l.execute(withdraw("wd-1")).expect("retry").replayed);
    deposit(&l, "dep-back", "alice", 1).expect("the cent back");
    // A retry after a refund learns about the refund: the transfer as it stands now, once the
    // refund's record is durable too.
    let refund = l
        .execute(Command::Refund {
            refund_id: "r-i1".into(),
            tx_id: "i1".into(),
            amount: Some(2_00),
            reason: "goodwill".into(),
        })
        .expect("refund");
    let d = l
        .execute(transfer("i1", "alice", "bob", 5_00, Risk::Allow))
        .expect("retry after refund");
    assert!(d.replayed);
    assert!(
        d.ticket >= refund.ticket,
        "{} < {}",
        d.ticket,
        refund.ticket
    );
    assert_eq!(tr(&d).refunded, 2_00);
    assert_eq!(balances(&l, "alice"), (97_00, 0));
}

#[test]
fn a_closed_in_memory_ledger_refuses_writes() {
    let l = two_accounts();
    l.close();
    let err = l
        .execute(transfer("late", "alice", "bob", 1_00, Risk::Allow))
        .expect_err("closed");
    assert_eq!(err.code(), "journal_unavailable");
    assert_eq!(balances(&l, "alice"), (100_00, 0));
}

#[test]
fn dispute_freezes_and_fraud_recovers_what_the_payee_still_has() {
    let l = two_accounts();
    open(&l, "mule", "EUR");
    open(&l, "shop", "EUR");
    l.execute(transfer("x1", "alice", "mule", 80_00, Risk::Allow))
        .expect("x1");
    // The mule moves most of it on.
    l.execute(transfer("x2", "mule", "shop", 70_00, Risk::Allow))
        .expect("x2");
    let a = l
        .execute(Command::Dispute {
            case_id: "d-1".into(),
            tx_id: "x1".into(),
            reason: "not me".into(),
        })
        .expect("dispute");
    assert!(matches!(a.outcome, Outcome::Case(_)));
    assert!(l.read(|b| b.get_account("alice").is_some_and(|a| a.frozen)));
    let blocked = l
        .execute(transfer("x3", "alice", "bob", 1_00, Risk::Allow))
        .expect("x3");
    assert_eq!(tr(&blocked).decline, Some(Decline::AccountFrozen));
    let a = l
        .execute(Command::Resolve {
            case_id: "d-1".into(),
            verdict: Verdict::Fraud,
            by: "ana".into(),
            note: "ATO".into(),
        })
        .expect("resolve");
    let Outcome::Case(case) = a.outcome else {
        panic!("not a case")
    };
    assert_eq!(case.recovered, 10_00);
    assert_eq!(balances(&l, "alice"), (30_00, 0));
    assert_eq!(balances(&l, "mule"), (0, 0));
    assert!(l.read(Book::check).is_empty());
}

#[test]
fn dispute_found_legit_unfreezes() {
    let l = two_accounts();
    l.execute(transfer("y1", "alice", "bob", 10_00, Risk::Allow))
        .expect("y1");
    l.execute(Command::Dispute {
        case_id: "d-2".into(),
        tx_id: "y1".into(),
        reason: "not me".into(),
    })
    .expect("dispute");
    l.execute(Command::Resolve {
        case_id: "d-2".into(),
        verdict: Verdict::Legit,
        by: "ana".into(),
        note: "holder's partner".into(),
    })
    .expect("resolve");
    let a = l.read(|b| b.get_account("alice")).expect("alice");
    assert!(!a.frozen);
    assert_eq!(
        l.read(|b| b.freeze_history("alice").map(<[_]>::len)),
        Some(2)
    );
}

#[test]
fn a_transfer_is_disputed_once_and_review_ids_are_kept() {
    let l = two_accounts();
    l.execute(transfer("z1", "alice", "bob", 10_00, Risk::Allow))
        .expect("z1");
    l.execute(transfer("z2", "alice", "bob", 10_00, Risk::Allow))
        .expect("z2");
    let dispute = |case: &str, tx: &str| Command::Dispute {
        case_id: case.into(),
        tx_id: tx.into(),
        reason: "not me".into(),
    };
    l.execute(dispute("d-1", "z1")).expect("dispute");
    // The same dispute again is a retry; another on the same transfer is refused, open or
    // resolved, so two verdicts cannot contradict each other.
    assert!(l.execute(dispute("d-1", "z1")).expect("retry").replayed);
    let err = l.execute(dispute("d-2", "z1")).expect_err("twice");
    assert_eq!(err.code(), "already_disputed");
    assert_eq!(
        err.to_string(),
        "transfer z1 is already disputed in case d-1"
    );
    l.execute(Command::Resolve {
        case_id: "d-1".into(),
        verdict: Verdict::Fraud,
        by: "ana".into(),
        note: String::new(),
    })
    .expect("resolve");
    let err = l.execute(dispute("d-3", "z1")).expect_err("resolved");
    assert_eq!(err.code(), "already_disputed");
    // Its retry answers the case as it stands now: resolved.
    let again = l.execute(dispute("d-1", "z1")).expect("retry");
    assert!(matches!(&again.outcome, Outcome::Case(c) if c.verdict == Some(Verdict::Fraud)));
    // A dispute named like a review case would be overwritten by z3's review.
    let err = l.execute(dispute("review-z3", "z2")).expect_err("reserved");
    assert_eq!(err.code(), "invalid_field");
    assert_eq!(l.read(|b| b.cases(false).count()), 1);
    // A full refund with nothing left says so, not "0.00 is more than the 0.00 left".
    let err = l
        .execute(Command::Refund {
            refund_id: "f-1".into(),
            tx_id: "z1".into(),
            amount: None,
            reason: String::new(),
        })
        .expect_err("nothing left");
    assert_eq!(err.code(), "refund_exceeds_settled");
    assert_eq!(err.to_string(), "transfer z1 is already refunded in full");
}

/// A journal's path in a fresh directory of the temp dir, removed when dropped.
struct TempJournal(PathBuf);

impl std::ops::Deref for TempJournal {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl AsRef<Path> for TempJournal {
    fn as_ref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempJournal {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn temp_path(name: &str) -> TempJournal {
    let dir = std::env::temp_dir().join(format!("vigil-ledger-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    TempJournal(dir.join("ledger.journal"))
}

fn snapshot(l: &Ledger) -> Vec<String> {
    l.read(|b| {
        let mut v: Vec<String> = ["alice", "bob"]
            .iter()
            .map(|id| format!("{:?}", b.get_account(id)))
            .collect();
        v.push(format!("{:?}", b.get_transfer("j2")));
        v.push(format!("{:?}", b.entries("alice")));
        v
    })
}

#[test]
fn journal_rebuilds_the_same_state() {
    let path = temp_path("rebuild");
    let (l, rec) = Ledger::open(&path, BookConfig::default()).expect("open");
    assert_eq!(rec, Recovery::default());
    open(&l, "alice", "EUR");
    open(&l, "bob", "EUR");
    deposit(&l, "dep", "alice", 100_00).expect("deposit");
    l.execute_at(transfer("j1", "alice", "bob", 10_00, Risk::Allow), 5)
        .expect("j1");
    let a = l
        .execute_at(transfer("j2", "alice", "bob", 20_00, Risk::StepUp), 6)
        .expect("j2");
    l.wait(a.ticket).expect("durable");
    let before = snapshot(&l);
    l.close();
    let (l2, rec) = Ledger::open(&path, BookConfig::default()).expect("reopen");
    assert_eq!(rec.records, 5);
    assert_eq!(rec.torn_bytes, 0);
    assert_eq!(snapshot(&l2), before);
    // Idempotency survives a restart.
    let again = l2
        .execute_at(transfer("j1", "alice", "bob", 10_00, Risk::Allow), 7)
        .expect("retry");
    assert!(again.replayed);
    assert_eq!(l2.last_ticket(), 5);
    // A confirmation after the hold's end journals the release it made, and a restart
    // rebuilds it.
    let err = l2
        .execute_at(
            Command::Post {
                tx_id: "j2".into(),
                by: PostBy::Confirmed,
            },
            6 + BookConfig::default().step_up_hold_ms,
        )
        .expect_err("lapsed");
    assert_eq!(err.code(), "invalid_state");
    // Written with the next record's batch.
    let a = deposit(&l2, "dep-2", "bob", 1_00).expect("deposit");
    l2.wait(a.ticket).expect("durable");
    let before = snapshot(&l2);
    l2.close();
    let (l3, rec) = Ledger::open(&path, BookConfig::default()).expect("reopen");
    assert_eq!(rec.records, 7);
    assert_eq!(snapshot(&l3), before);
    let j2 = l3.read(|b| b.get_transfer("j2").cloned()).expect("j2");
    assert_eq!(j2.void_reason, Some(VoidReason::Expired));
}

#[test]
fn journals_written_before_the_admission_rules_still_replay_and_keep_their_state() {
    let path = temp_path("admit");
    let (l, _) = Ledger::open(&path, BookConfig::default()).expect("open");
    open(&l, "alice", "EUR");
    open(&l, "bob", "EUR");
    deposit(&l, "dep", "alice", 100_00).expect("deposit");
    l.execute(transfer("k1", "alice", "bob", 10_00, Risk::Allow))
        .expect("k1");
    l.execute(transfer("k2", "alice", "bob", 5_00, Risk::StepUp))
        .expect("k2");
    l.execute(transfer("k3", "alice", "bob", 5_00, Risk::Review))
        .expect("k3");
    l.execute(Command::Post {
        tx_id: "k2".into(),
        by: PostBy::Confirmed,
    })
    .expect("confirm");
    let a = l
        .execute(Command::Void {
            tx_id: "k3".into(),
            why: VoidReason::Cancelled,
        })
        .expect("cancel");
    l.wait(a.ticket).expect("durable");
    let last = l.last_ticket();
    l.close();
    // Records an older build admitted: two disputes of k1, one named like a review case, and
    // a withdrawal under a deposit's op_id.
    let dispute = |case: &str| Command::Dispute {
        case_id: case.into(),
        tx_id: "k1".into(),
        reason: "not me".into(),
    };
    let old = [
        dispute("d-1"),
        dispute("review-k9"),
        Command::Withdraw {
            op_id: "dep".into(),
            account: "bob".into(),
            amount: 1_00,
        },
    ];
    let mut bytes = std::fs::read(&path).expect("read");
    for (i, cmd) in old.into_iter().enumerate() {
        let rec = Record {
            seq: last + 1 + i as u64,
            ts_ms: 1_000,
            cmd,
        };
        bytes.extend(encode(&rec).expect("encode"));
    }
    std::fs::write(&path, &bytes).expect("write");
    let (l2, rec) = Ledger::open(&path, BookConfig::default()).expect("an old journal loads");
    assert_eq!(rec.records, last + 3);
    assert_eq!(balances(&l2, "bob"), (14_00, 0));
    // The state the new rules read was rebuilt: the later dispute is k1's, the review closed,
    // and the repeats of what was done are answered.
    let err = l2.execute(dispute("d-3")).expect_err("disputed");
    assert_eq!(
        err.to_string(),
        "transfer k1 is already disputed in case review-k9"
    );
    assert_eq!(
        l2.read(|b| b.get_case("review-k3").and_then(|c| c.closed)),
        Some(VoidReason::Cancelled)
    );
    let again = l2
        .execute(Command::Post {
            tx_id: "k2".into(),
            by: PostBy::Confirmed,
        })
        .expect("confirm again");
    assert!(again.replayed);
    assert!(again.ticket >= last + 3, "waits for what was read back");
    assert!(l2.read(Book::check).is_empty());
}

#[test]
fn a_torn_last_record_is_dropped_and_damage_elsewhere_stops_the_start() {
    let path = temp_path("torn");
    let (l, _) = Ledger::open(&path, BookConfig::default()).expect("open");
    open(&l, "alice", "EUR");
    open(&l, "bob", "EUR");
    let a = deposit(&l, "dep", "alice", 100_00).expect("deposit");
    l.wait(a.ticket).expect("durable");
    l.close();
    let full = std::fs::read(&path).expect("read");
    // Cut into the last record: it is dropped, the rest stays.
    std::fs::write(&path, &full[..full.len() - 3]).expect("write");
    let (l2, rec) = Ledger::open(&path, BookConfig::default()).expect("reopen");
    assert_eq!(rec.records, 2);
    assert!(rec.torn_bytes > 0);
    assert_eq!(balances(&l2, "alice"), (0, 0));
    // New records go after the cut.
    let a = deposit(&l2, "dep2", "alice", 7).expect("deposit");
    l2.wait(a.ticket).expect("durable");
    l2.close();
    let (l3, rec) = Ledger::open(&path, BookConfig::default()).expect("reopen 2");
    assert_eq!(rec.records, 3);
    assert_eq!(balances(&l3, "alice"), (7, 0));
    l3.close();
    // A flipped byte in the first record is damage, not a torn tail.
    let mut bytes = std::fs::read(&path).expect("read");
    bytes[HEADER_LEN as usize + 9] ^= 0xff;
    std::fs::write(&path, &bytes).expect("write");
    let err = Ledger::open(&path, BookConfig::default()).expect_err("damaged");
    assert!(err.to_string().contains("fails its checksum"), "{err}");
}

#[test]
fn concurrent_writers_are_group_committed() {
    let path = temp_path("group");
    let (l, _) = Ledger::open(&path, BookConfig::default()).expect("open");
    for i in 0..8 {
        open(&l, &format!("a{i}"), "EUR");
        deposit(&l, &format!("d{i}"), &format!("a{i}"), 1_000_000).expect("deposit");
    }
    std::thread::scope(|s| {
        for t in 0..8 {
            let l = l.clone();
            s.spawn(move || {
                for i in 0..200 {
                    let cmd = transfer(
                        &format!("g{t}-{i}"),
                        &format!("a{t}"),
                        &format!("a{}", (t + 1) % 8),
                        1,
                        Risk::Allow,
                    );
                    let a = l.execute(cmd).expect("transfer");
                    l.wait(a.ticket).expect("durable");
                }
            });
        }
    });
    assert!(l.read(Book::check).is_empty());
    l.close();
    let (l2, rec) = Ledger::open(&path, BookConfig::default()).expect("reopen");
    assert_eq!(rec.records, 16 + 1600);
    assert_eq!(balances(&l2, "a0"), (1_000_000, 0));
}

#[test]
fn async_waiters_wake_on_their_batch_and_fail_once_the_journal_stops() {
    let path = temp_path("async");
    let (l, _) = Ledger::open(&path, BookConfig::default()).expect("open");
    open(&l, "a", "EUR");
    open(&l, "b", "EUR");
    deposit(&l, "d", "a", 1_000_000).expect("deposit");
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .expect("runtime");
    // A waiter never woken fails the test instead of hanging it.
    let bounded = std::time::Duration::from_secs(60);
    let acked = rt.block_on(async {
        let tasks: Vec<_> = (0..64)
            .map(|t| {
                let l = l.clone();
                tokio::spawn(async move {
                    let mut acked = 0u64;
                    for i in 0..50 {
                        let cmd = transfer(&format!("w{t}-{i}"), "a", "b", 1, Risk::Allow);
                        let a = l.execute(cmd).expect("transfer");
                        tokio::time::timeout(bounded, l.durable(a.ticket))
                            .await
                            .expect("woken")
                            .expect("durable");
                        acked += 1;
                    }
                    acked
                })
            })
            .collect();
        let mut acked = 0;
        for t in tasks {
            acked += t.await.expect("task");
        }
        acked
    });
    assert_eq!(acked, 64 * 50);
    let last = l.last_ticket();
    l.close();
    // Everything written before the close is durable; a ticket beyond it fails, not hangs.
    rt.block_on(l.durable(last)).expect("durable before close");
    let err = rt
        .block_on(l.durable(last + 1))
        .expect_err("nothing will make it durable");
    assert_eq!(err.code(), "journal_unavailable");
    let (l2, rec) = Ledger::open(&path, BookConfig::default()).expect("reopen");
    assert_eq!(rec.records, 3 + 64 * 50);
    assert_eq!(balances(&l2, "b"), (64 * 50, 0));
}

// ---------- property test: random operations against a naive model ----------

#[derive(Debug, Clone)]
enum Op {
    Deposit(usize, i64),
    Withdraw(usize, i64),
    Transfer(usize, usize, i64, u8),
    Post(usize),
    Void(usize),
    Refund(usize, Option<i64>),
    Freeze(usize, bool),
    Retry(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..4usize, 1..5_000i64).prop_map(|(a, m)| Op::Deposit(a, m)),
        (0..4usize, 1..5_000i64).prop_map(|(a, m)| Op::Withdraw(a, m)),
        (0..5usize, 0..5usize, 1..5_000i64, 0..4u8)
            .prop_map(|(a, b, m, r)| Op::Transfer(a, b, m, r)),
        (0..40usize).prop_map(Op::Post),
        (0..40usize).prop_map(Op::Void),
        (0..40usize, proptest::option::of(1..3_000i64)).prop_map(|(t, m)| Op::Refund(t, m)),
        (0..4usize, any::<bool>()).prop_map(|(a, f)| Op::Freeze(a, f)),
        (0..40usize).prop_map(Op::Retry),
    ]
}

/// The naive model: plain maps, no holds bookkeeping beyond a number per transfer.
#[derive(Default, Debug)]
struct Model {
    avail: HashMap<usize, i64>,
    held: HashMap<usize, i64>,
    frozen: HashMap<usize, bool>,
    /// (from, to, amount, status, refunded, step_up)
    txs: Vec<(usize, usize, i64, Status, i64)>,
    /// Transfers settled by a `Post`: a second one is a retry.
    posted: std::collections::HashSet<usize>,
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]
    #[test]
    fn random_operations_keep_invariants_and_match_the_model(ops in proptest::collection::vec(op(), 1..80)) {
        let l = Ledger::in_memory(BookConfig::default());
        // Accounts 0..4 in EUR; index 4 names an account that does not exist.
        let name = |i: usize| format!("acct-{i}");
        for i in 0..4 {
            open(&l, &name(i), "EUR");
        }
        let mut m = Model::default();
        let mut tx_cmds: Vec<Command> = Vec::new();
        for (n, op) in ops.iter().enumerate() {
            match *op {
                Op::Deposit(a, amt) => {
                    let r = deposit(&l, &format!("op{n}"), &name(a), amt);
                    let frozen = m.frozen.get(&a).copied().unwrap_or(false);
                    prop_assert_eq!(r.is_ok(), !frozen);
                    if !frozen { *m.avail.entry(a).or_default() += amt; }
                }
                Op::Withdraw(a, amt) => {
                    let r = l.execute(Command::Withdraw { op_id: format!("op{n}"), account: name(a), amount: amt });
                    let av = m.avail.get(&a).copied().unwrap_or(0);
                    let ok = !m.frozen.get(&a).copied().unwrap_or(false) && av >= amt;
                    prop_assert_eq!(r.is_ok(), ok, "{:?}", r);
                    if ok { *m.avail.entry(a).or_default() -= amt; }
                }
                Op::Transfer(a, b, amt, risk) => {
                    let risk = [Risk::Allow, Risk::Review, Risk::StepUp, Risk::Block][risk as usize];
                    let id = format!("tx{}", tx_cmds.len());
                    let cmd = transfer(&id, &name(a), &name(b), amt, risk);
                    tx_cmds.push(cmd.clone());
                    let r = l.execute(cmd);
                    if a == b {
                        prop_assert!(r.is_err());
                        m.txs.push((a, b, amt, Status::Declined, 0));
                        continue;
                    }
                    let r = r.map_err(|e| TestCaseError::fail(e.to_string()))?;
                    let t = tr(&r);
                    let fz = |i| m.frozen.get(&i).copied().unwrap_or(false);
                    let av = m.avail.get(&a).copied().unwrap_or(0);
                    let want = if a == 4 || b == 4 {
                        Some(Decline::UnknownAccount)
                    } else if risk == Risk::Block {
                        Some(Decline::RiskBlocked)
                    } else if fz(a) || fz(b) {
                        Some(Decline::AccountFrozen)
                    } else if av < amt {
                        Some(Decline::InsufficientFunds)
                    } else {
                        None
                    };
                    prop_assert_eq!(t.decline, want);
                    let status = match (want, risk) {
                        (Some(_), _) => Status::Declined,
                        (None, Risk::Allow) => {
                            *m.avail.entry(a).or_default() -= amt;
                            *m.avail.entry(b).or_default() += amt;
                            Status::Settled
                        }
                        (None, _) => {
                            *m.avail.entry(a).or_default() -= amt;
                            *m.held.entry(a).or_default() += amt;
                            Status::Pending
                        }
                    };
                    prop_assert_eq!(t.status, status);
                    m.txs.push((a, b, amt, status, 0));
                }
                Op::Post(i) | Op::Void(i) => {
                    let Some(&(a, b, amt, st, _)) = m.txs.get(i) else { continue };
                    let post = matches!(op, Op::Post(_));
                    let cmd = if post {
                        Command::Post { tx_id: format!("tx{i}"), by: PostBy::Approved }
                    } else {
                        Command::Void { tx_id: format!("tx{i}"), why: VoidReason::Cancelled }
                    };
                    let r = l.execute(cmd);
                    // Done already in the same way: a retry, answered as it stands.
                    let repeat = if post {
                        st == Status::Settled && m.posted.contains(&i)
                    } else {
                        st == Status::Voided
                    };
                    prop_assert_eq!(r.is_ok(), st == Status::Pending || repeat, "{:?}", r);
                    prop_assert_eq!(r.as_ref().is_ok_and(|a| a.replayed), repeat);
                    if st == Status::Pending {
                        *m.held.entry(a).or_default() -= amt;
                        if post {
                            *m.avail.entry(b).or_default() += amt;
                            m.txs[i].3 = Status::Settled;
                            m.posted.insert(i);
                        } else {
                            *m.avail.entry(a).or_default() += amt;
                            m.txs[i].3 = Status::Voided;
                        }
                    }
                }
                Op::Refund(i, amount) => {
                    let Some(&(a, b, amt, st, refunded)) = m.txs.get(i) else { continue };
                    let r = l.execute(Command::Refund { refund_id: format!("op{n}"), tx_id: format!("tx{i}"), amount, reason: String::new() });
                    let want = amount.unwrap_or(amt - refunded);
                    let ok = st == Status::Settled && want > 0 && want <= amt - refunded
                        && m.avail.get(&b).copied().unwrap_or(0) >= want;
                    prop_assert_eq!(r.is_ok(), ok, "{:?}", r);
                    if ok {
                        *m.avail.entry(b).or_default() -= want;
                        *m.avail.entry(a).or_default() += want;
                        m.txs[i].4 += want;
                    }
                }
                Op::Freeze(a, f) => {
                    let cmd = if f {
                        Command::Freeze { account: name(a), reason: "t".into(), by: "p".into(), tx_id: None }
                    } else {
                        Command::Unfreeze { account: name(a), reason: "t".into(), by: "p".into() }
                    };
                    l.execute(cmd).map_err(|e| TestCaseError::fail(e.to_string()))?;
                    m.frozen.insert(a, f);
                }
                Op::Retry(i) => {
                    let Some(cmd) = tx_cmds.get(i) else { continue };
                    if let Ok(r) = l.execute(cmd.clone()) {
                        prop_assert!(r.replayed);
                    }
                }
            }
            let broken = l.read(Book::check);
            prop_assert!(broken.is_empty(), "{:?}", broken);
            for i in 0..4 {
                let want = (m.avail.get(&i).copied().unwrap_or(0), m.held.get(&i).copied().unwrap_or(0));
                prop_assert_eq!(balances(&l, &name(i)), want, "account {} after {:?}", i, op);
            }
        }
    }
}
