//! The ledger's state machine: commands in, balances, transfers, holds, freezes and cases out.
//!
//! Pure and deterministic: `apply(command, ts)` on the same state gives the same result, which
//! is what lets the journal rebuild the state on start. Every command validates everything
//! before it changes anything, so a refused command leaves no trace.

use std::collections::{BTreeMap, BTreeSet};
use std::hash::{Hash, Hasher};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use crate::event::{Currency, TxKind};

/// What the risk decision said about a transfer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Risk {
    /// Settle it.
    Allow,
    /// Hold the funds for an analyst.
    Review,
    /// Hold the funds until the holder confirms.
    StepUp,
    /// Move nothing.
    Block,
}

impl Risk {
    /// From the rule engine's action.
    pub fn from_action(a: vigil_rules::Action) -> Risk {
        match a {
            vigil_rules::Action::Allow => Risk::Allow,
            vigil_rules::Action::Review => Risk::Review,
            vigil_rules::Action::StepUp => Risk::StepUp,
            vigil_rules::Action::Block => Risk::Block,
        }
    }
    /// Wire name.
    pub fn name(self) -> &'static str {
        match self {
            Risk::Allow => "allow",
            Risk::Review => "review",
            Risk::StepUp => "step_up",
            Risk::Block => "block",
        }
    }
}

/// Why a transfer moved nothing. Stable wire codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decline {
    /// The risk decision blocked it.
    RiskBlocked,
    /// The payer's available balance is short.
    InsufficientFunds,
    /// The payer or payee is frozen.
    AccountFrozen,
    /// The amount's currency is not the account's.
    CurrencyMismatch,
    /// Above the per-transfer limit.
    LimitExceeded,
    /// The payer or payee account does not exist.
    UnknownAccount,
}

impl Decline {
    /// Wire code.
    pub fn code(self) -> &'static str {
        match self {
            Decline::RiskBlocked => "risk_blocked",
            Decline::InsufficientFunds => "insufficient_funds",
            Decline::AccountFrozen => "account_frozen",
            Decline::CurrencyMismatch => "currency_mismatch",
            Decline::LimitExceeded => "limit_exceeded",
            Decline::UnknownAccount => "unknown_account",
        }
    }
}

/// Where a transfer stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Money moved.
    Settled,
    /// Funds held, waiting for review or step-up.
    Pending,
    /// A hold released: nothing moved.
    Voided,
    /// Refused: nothing moved.
    Declined,
}

/// Why a hold was released.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VoidReason {
    /// The payer cancelled it.
    Cancelled,
    /// An analyst rejected it.
    Rejected,
    /// Nobody confirmed or reviewed it in time.
    Expired,
}

/// How a pending transfer was released into a posting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PostBy {
    /// The holder passed step-up.
    Confirmed,
    /// An analyst approved it.
    Approved,
}

/// An analyst's verdict on a case.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// It was fraud.
    Fraud,
    /// It was the holder.
    Legit,
}

/// What a case is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CaseKind {
    /// A transfer held for review.
    Review,
    /// The holder reported a transfer as unauthorized.
    Dispute,
}

/// One side of a posting: a customer account or the world outside the wallet.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Party {
    /// A ledger account.
    Account(String),
    /// Outside the wallet: cards, banks, merchants.
    World,
}

impl Party {
    /// The ledger account, if this party is one.
    pub fn account(&self) -> Option<&str> {
        match self {
            Party::Account(a) => Some(a),
            Party::World => None,
        }
    }
    /// The account id, or `world`.
    pub fn name(&self) -> &str {
        self.account().unwrap_or("world")
    }
}

/// A journaled command. Amounts are minor units of the named currency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Open an account.
    Open {
        /// Account id.
        account: String,
        /// ISO code.
        currency: String,
        /// Notification language.
        locale: Option<String>,
    },
    /// Money in from outside.
    Deposit {
        /// Idempotency key.
        op_id: String,
        /// Account.
        account: String,
        /// Minor units.
        amount: i64,
    },
    /// Money out to outside.
    Withdraw {
        /// Idempotency key.
        op_id: String,
        /// Account.
        account: String,
        /// Minor units.
        amount: i64,
    },
    /// A decided money movement.
    Transfer(TransferCmd),
    /// Post a pending transfer.
    Post {
        /// The transfer.
        tx_id: String,
        /// Who released it.
        by: PostBy,
    },
    /// Release a pending transfer's hold.
    Void {
        /// The transfer.
        tx_id: String,
        /// Why.
        why: VoidReason,
    },
    /// Give settled money back.
    Refund {
        /// Idempotency key.
        refund_id: String,
        /// The settled transfer.
        tx_id: String,
        /// Minor units; `None` refunds what remains.
        amount: Option<i64>,
        /// Why.
        reason: String,
    },
    /// Stop an account sending and receiving.
    Freeze {
        /// Account.
        account: String,
        /// Why.
        reason: String,
        /// Who: an analyst's name, `rule:<id>`, `dispute:<case>`.
        by: String,
        /// The transaction that caused it.
        tx_id: Option<String>,
    },
    /// Lift a freeze.
    Unfreeze {
        /// Account.
        account: String,
        /// Why.
        reason: String,
        /// Who.
        by: String,
    },
    /// The holder reports a settled transfer as unauthorized: freeze and open a case.
    Dispute {
        /// Idempotency key; also the case id.
        case_id: String,
        /// The transfer.
        tx_id: String,
        /// The holder's words.
        reason: String,
    },
    /// Close a case with a verdict.
    Resolve {
        /// The case.
        case_id: String,
        /// Fraud or legit.
        verdict: Verdict,
        /// Who.
        by: String,
        /// Free text.
        note: String,
    },
}

/// A transfer with its risk decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TransferCmd {
    /// Idempotency key.
    pub tx_id: String,
    /// The event's kind.
    pub kind: TxKind,
    /// Paid from.
    pub from: Party,
    /// Paid to.
    pub to: Party,
    /// Minor units.
    pub amount: i64,
    /// ISO code.
    pub currency: String,
    /// The decision.
    pub risk: Risk,
    /// The acting rules that fired.
    pub rules: Vec<String>,
    /// The decision's score.
    pub score: i64,
}

impl TransferCmd {
    /// The payer and payee for an event of `kind` from `account` with `counterparty`: money
    /// leaves the account for transfers, payments and withdrawals (to the counterparty when it is
    /// a ledger account, else outside), and arrives for top-ups and refunds, always from outside:
    /// the event is the receiver's, whose risk is what was decided, so it may never debit
    /// another account (a refund of a transfer in the ledger is `Command::Refund`, bounded by
    /// what was settled).
    pub fn parties(
        kind: TxKind,
        account: &str,
        counterparty: Option<&str>,
        is_account: impl Fn(&str) -> bool,
    ) -> (Party, Party) {
        let own = Party::Account(account.to_string());
        let other = match (kind, counterparty) {
            (TxKind::Withdrawal, _) | (_, None) => Party::World,
            (TxKind::Transfer, Some(c)) => Party::Account(c.to_string()),
            (k, Some(c)) if k.is_outgoing() && is_account(c) => Party::Account(c.to_string()),
            _ => Party::World,
        };
        if kind.is_outgoing() {
            (own, other)
        } else {
            (other, own)
        }
    }
}

/// A ledger account.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Account {
    /// Id.
    pub id: String,
    /// Currency.
    #[serde(serialize_with = "ser_currency")]
    pub currency: Currency,
    /// Spendable, minor units.
    pub available: i64,
    /// Held for pending transfers, minor units.
    pub held: i64,
    /// Frozen: cannot send or receive transfers.
    pub frozen: bool,
    /// Notification language.
    pub locale: Option<String>,
    /// Opened, Unix ms.
    pub opened_ms: i64,
    /// History, oldest first.
    #[serde(skip)]
    pub entries: Vec<Entry>,
    /// Freezes and unfreezes, oldest first.
    #[serde(skip)]
    pub freezes: Vec<FreezeRecord>,
}

impl Account {
    /// The account without its history and freezes, built field by field: cloning the whole
    /// account would copy a history that grows with every posting.
    pub fn view(&self) -> Account {
        Account {
            id: self.id.clone(),
            currency: self.currency,
            available: self.available,
            held: self.held,
            frozen: self.frozen,
            locale: self.locale.clone(),
            opened_ms: self.opened_ms,
            entries: Vec::new(),
            freezes: Vec::new(),
        }
    }
}

fn ser_currency<S: serde::Serializer>(c: &Currency, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(c.code())
}

/// One line of an account's history.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Entry {
    /// Journal sequence of the command that made it.
    pub seq: u64,
    /// Booked, Unix ms.
    pub ts_ms: i64,
    /// What happened: deposit, withdrawal, transfer_out, transfer_in, payment, top_up,
    /// refund_out, refund_in, hold, hold_released, hold_posted.
    pub kind: &'static str,
    /// The transfer or operation.
    pub ref_id: String,
    /// The other side.
    pub counterparty: String,
    /// Change to available, minor units.
    pub available_delta: i64,
    /// Change to held, minor units.
    pub held_delta: i64,
    /// Available after.
    pub available_after: i64,
    /// Held after.
    pub held_after: i64,
}

/// A freeze or an unfreeze.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FreezeRecord {
    /// True for a freeze, false for an unfreeze.
    pub frozen: bool,
    /// Why.
    pub reason: String,
    /// Who.
    pub by: String,
    /// The transaction that caused it.
    pub tx_id: Option<String>,
    /// When, Unix ms.
    pub ts_ms: i64,
}

/// A transfer and where it stands.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Transfer {
    /// Id.
    pub tx_id: String,
    /// Kind.
    #[serde(serialize_with = "ser_kind")]
    pub kind: TxKind,
    /// Payer.
    #[serde(serialize_with = "ser_party")]
    pub from: Party,
    /// Payee.
    #[serde(serialize_with = "ser_party")]
    pub to: Party,
    /// Minor units.
    pub amount: i64,
    /// Currency.
    #[serde(serialize_with = "ser_currency")]
    pub currency: Currency,
    /// Status.
    pub status: Status,
    /// Why it was declined.
    pub decline: Option<Decline>,
    /// Why its hold was released.
    pub void_reason: Option<VoidReason>,
    /// Who posted it after a hold.
    pub posted_by: Option<PostBy>,
    /// The risk decision.
    pub risk: Risk,
    /// Acting rules that fired.
    pub rules: Vec<String>,
    /// Score.
    pub score: i64,
    /// Refunded so far, minor units.
    pub refunded: i64,
    /// Analyst or dispute label.
    pub label: Option<Verdict>,
    /// Created, Unix ms.
    pub created_ms: i64,
    /// Last change, Unix ms.
    pub updated_ms: i64,
    /// When the hold lapses, for pending ones.
    pub expires_ms: Option<i64>,
}

fn ser_kind<S: serde::Serializer>(k: &TxKind, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(k.name())
}

fn ser_party<S: serde::Serializer>(p: &Party, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.name())
}

/// A review or dispute case.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Case {
    /// Id.
    pub id: String,
    /// Review or dispute.
    pub kind: CaseKind,
    /// The transfer.
    pub tx_id: String,
    /// The account concerned (the payer).
    pub account: String,
    /// Why it opened: the rules, or the holder's words.
    pub reason: String,
    /// The acting rules that fired on the transfer.
    pub rules: Vec<String>,
    /// Opened, Unix ms.
    pub opened_ms: i64,
    /// Verdict, once resolved.
    pub verdict: Option<Verdict>,
    /// Who resolved it.
    pub resolved_by: Option<String>,
    /// Resolution note.
    pub note: Option<String>,
    /// Resolved, Unix ms.
    pub resolved_ms: Option<i64>,
    /// Recovered and refunded on a fraud verdict, minor units.
    pub recovered: i64,
    /// Why a review case left the queue without a verdict: its hold ended first, cancelled by
    /// the holder or expired. A verdict may still be given (as a label; nothing moves).
    pub closed: Option<VoidReason>,
}

impl Case {
    /// Waiting for an analyst: no verdict, and still something to decide.
    pub fn is_open(&self) -> bool {
        self.verdict.is_none() && self.closed.is_none()
    }
}

/// A refund.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refund {
    /// Id.
    pub refund_id: String,
    /// The refunded transfer.
    pub tx_id: String,
    /// Minor units.
    pub amount: i64,
    /// Currency.
    #[serde(serialize_with = "ser_currency")]
    pub currency: Currency,
    /// Refunded on the transfer in all, after this one.
    pub refunded_total: i64,
    /// Why.
    pub reason: String,
    /// When.
    pub ts_ms: i64,
}

/// What a command produced.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// An account, as it stands after the command.
    Account(Account),
    /// A transfer.
    Transfer(Transfer),
    /// A refund.
    Refund(Refund),
    /// A case.
    Case(Case),
}

/// Why a command was refused. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LedgerError {
    /// No such account.
    #[error("account {0} does not exist")]
    UnknownAccount(String),
    /// Opening an account that exists with other settings.
    #[error("account {0} already exists with a different currency or locale")]
    AccountExists(String),
    /// No such transfer.
    #[error("transfer {0} does not exist")]
    UnknownTransfer(String),
    /// No such case.
    #[error("case {0} does not exist")]
    UnknownCase(String),
    /// Not an ISO currency Vigil knows.
    #[error("unknown currency {0}")]
    UnknownCurrency(String),
    /// The amount's currency is not the account's.
    #[error("account {account} holds {expected}, not {got}")]
    CurrencyMismatch {
        /// Account.
        account: String,
        /// Its currency.
        expected: String,
        /// The amount's.
        got: String,
    },
    /// Amounts are positive.
    #[error("amount must be greater than zero")]
    InvalidAmount,
    /// Above the per-operation limit (minor units, in this currency).
    #[error("amount is above the limit of {} {}", .1.format(*.0), .1.code())]
    LimitExceeded(i64, Currency),
    /// The account is frozen.
    #[error("account {0} is frozen")]
    Frozen(String),
    /// Not enough available.
    #[error(
        "account {account} has {} {} available, {} needed",
        currency.format(*available),
        currency.code(),
        currency.format(*needed)
    )]
    InsufficientFunds {
        /// Account.
        account: String,
        /// Available, minor units.
        available: i64,
        /// Needed, minor units.
        needed: i64,
        /// The account's currency.
        currency: Currency,
    },
    /// The transfer is not in a state that allows this.
    #[error("transfer {tx_id} is {status}, not {needed}")]
    InvalidState {
        /// Transfer.
        tx_id: String,
        /// Its status.
        status: &'static str,
        /// What the command needs.
        needed: &'static str,
    },
    /// More than what is left to refund.
    #[error("{}", if *remaining == 0 {
        format!("transfer {tx_id} is already refunded in full")
    } else {
        format!(
            "a refund of {} {} is more than the {} left to refund on {tx_id}",
            currency.format(*asked),
            currency.code(),
            currency.format(*remaining)
        )
    })]
    RefundExceeds {
        /// Transfer.
        tx_id: String,
        /// Asked, minor units.
        asked: i64,
        /// Settled minus refunded, minor units.
        remaining: i64,
        /// The transfer's currency.
        currency: Currency,
    },
    /// The idempotency key was used before with a different request.
    #[error("{0} was already used for a different request")]
    Conflict(String),
    /// The case is closed.
    #[error("case {0} is already resolved")]
    CaseClosed(String),
    /// An id of a form kept for the ledger's own records.
    #[error("{message}")]
    ReservedId {
        /// The request field.
        field: &'static str,
        /// Why.
        message: String,
    },
    /// A transfer is disputed once.
    #[error("transfer {tx_id} is already disputed in case {case_id}")]
    AlreadyDisputed {
        /// Transfer.
        tx_id: String,
        /// The dispute.
        case_id: String,
    },
    /// A transfer kind or direction this operation does not support.
    #[error("{0}")]
    Unsupported(String),
    /// The journal failed: the ledger takes no more writes.
    #[error("journal unavailable: {0}")]
    Journal(String),
}

impl LedgerError {
    /// Stable wire code.
    pub fn code(&self) -> &'static str {
        match self {
            LedgerError::UnknownAccount(_) => "unknown_account",
            LedgerError::AccountExists(_) => "account_exists",
            LedgerError::UnknownTransfer(_) => "unknown_transfer",
            LedgerError::UnknownCase(_) => "unknown_case",
            LedgerError::UnknownCurrency(_) => "unknown_currency",
            LedgerError::CurrencyMismatch { .. } => "currency_mismatch",
            LedgerError::InvalidAmount => "invalid_amount",
            LedgerError::LimitExceeded(..) => "limit_exceeded",
            LedgerError::Frozen(_) => "account_frozen",
            LedgerError::InsufficientFunds { .. } => "insufficient_funds",
            LedgerError::InvalidState { .. } => "invalid_state",
            LedgerError::RefundExceeds { .. } => "refund_exceeds_settled",
            LedgerError::Conflict(_) => "idempotency_conflict",
            LedgerError::CaseClosed(_) => "case_closed",
            LedgerError::AlreadyDisputed { .. } => "already_disputed",
            LedgerError::ReservedId { .. } => "invalid_field",
            LedgerError::Unsupported(_) => "unsupported",
            LedgerError::Journal(_) => "journal_unavailable",
        }
    }
}

/// Settings that shape outcomes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BookConfig {
    /// Largest single transfer, deposit or withdrawal, in major units of its currency.
    pub max_amount_major: i64,
    /// How long a review hold lasts, ms.
    pub review_hold_ms: i64,
    /// How long a step-up hold lasts, ms.
    pub step_up_hold_ms: i64,
}

impl Default for BookConfig {
    fn default() -> Self {
        BookConfig {
            max_amount_major: 1_000_000,
            review_hold_ms: 72 * 3_600_000,
            step_up_hold_ms: 15 * 60_000,
        }
    }
}

/// The stored result of an idempotent command other than a transfer.
struct Done {
    fingerprint: u64,
    outcome: Box<Outcome>,
}

/// A transfer with what makes it idempotent: the request's fingerprint. Kept in one boxed record so that the transfer map, the largest
/// structure in the ledger, moves 8-byte pointers when it grows and holds each transfer once.
#[derive(Debug)]
struct Kept {
    t: Transfer,
    fingerprint: u64,
}

impl std::ops::Deref for Kept {
    type Target = Transfer;
    fn deref(&self) -> &Transfer {
        &self.t
    }
}

impl std::ops::DerefMut for Kept {
    fn deref_mut(&mut self) -> &mut Transfer {
        &mut self.t
    }
}

/// A review case's id is this and its transfer's id.
pub const REVIEW_CASE_PREFIX: &str = "review-";

/// Idempotency kinds; transfers (kind 3) keep theirs in the transfer map.
const DONE_KINDS: usize = 6;
const TRANSFER_KIND: u8 = 3;

/// A problem found by [`Book::check`].
pub type Violation = String;

/// The whole ledger state.
#[derive(Default)]
pub struct Book {
    config: BookConfig,
    accounts: FxHashMap<String, Account>,
    /// The world's balance per currency: minus everything it put in.
    world: BTreeMap<String, i64>,
    transfers: FxHashMap<String, Box<Kept>>,
    refunds: FxHashMap<String, Refund>,
    cases: BTreeMap<String, Case>,
    /// The dispute of each disputed transfer: tx_id → case id.
    disputes: FxHashMap<String, String>,
    /// The sequence of the last record applied.
    last_seq: u64,
    /// Idempotent results of commands other than transfers, by kind then key.
    done: [FxHashMap<String, Done>; DONE_KINDS],
    /// Pending holds by expiry.
    expiries: BTreeSet<(i64, String)>,
}

impl std::fmt::Debug for Book {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Book")
            .field("accounts", &self.accounts.len())
            .field("transfers", &self.transfers.len())
            .field("cases", &self.cases.len())
            .finish_non_exhaustive()
    }
}

/// Fingerprints are hashed under a secret drawn once per process (they live in memory only,
/// made again as the journal is read): with an unkeyed hash a request could be built to share
/// a stored one's fingerprint, and a different request reusing its id would be answered as its
/// retry, with money that never moved.
fn fingerprint_hasher() -> impl Hasher {
    use std::hash::BuildHasher;
    crate::state::process_keyed().build_hasher()
}

fn fingerprint(cmd: &Command) -> u64 {
    let mut h = fingerprint_hasher();
    match cmd {
        Command::Open {
            currency, locale, ..
        } => (currency, locale).hash(&mut h),
        Command::Deposit {
            account, amount, ..
        }
        | Command::Withdraw {
            account, amount, ..
        } => {
            (account, amount).hash(&mut h);
        }
        Command::Transfer(t) => return transfer_fingerprint(t),
        Command::Refund {
            tx_id,
            amount,
            reason,
            ..
        } => (tx_id, amount, reason).hash(&mut h),
        Command::Dispute { tx_id, reason, .. } => (tx_id, reason).hash(&mut h),
        Command::Post { .. }
        | Command::Void { .. }
        | Command::Freeze { .. }
        | Command::Unfreeze { .. }
        | Command::Resolve { .. } => {}
    }
    h.finish()
}

/// What makes two transfer requests the same request (not the risk decision: a retry may be
/// decided differently as the state moved on).
fn transfer_fingerprint(t: &TransferCmd) -> u64 {
    let mut h = fingerprint_hasher();
    (t.kind, &t.from, &t.to, t.amount, &t.currency).hash(&mut h);
    h.finish()
}

/// The idempotency key of a command that has one.
fn idem_key(cmd: &Command) -> Option<(u8, &str)> {
    match cmd {
        Command::Open { account, .. } => Some((0, account)),
        Command::Deposit { op_id, .. } => Some((1, op_id)),
        Command::Withdraw { op_id, .. } => Some((2, op_id)),
        Command::Transfer(t) => Some((TRANSFER_KIND, &t.tx_id)),
        Command::Refund { refund_id, .. } => Some((4, refund_id)),
        Command::Dispute { case_id, .. } => Some((5, case_id)),
        _ => None,
    }
}

impl Book {
    /// An empty ledger.
    pub fn new(config: BookConfig) -> Book {
        Book {
            config,
            ..Book::default()
        }
    }

    /// The result for a repeated command, if it is one; a conflict if the key was used for a
    /// different request. Returns the outcome and the last sequence applied (a retry waits for
    /// every record so far: its answer may rest on later ones): for a transfer or an open, the
    /// transfer or account as it stands now (a retried transfer learns that it was refunded
    /// since); for other commands, the result stored when they ran.
    ///
    /// A confirmation, cancellation, verdict, freeze or unfreeze has no key of its own: it is a
    /// repeat when what it would do is done, in the same way (a transfer posted by
    /// confirmation, voided for the same reason, a case resolved with the same verdict by the
    /// same analyst with the same note, an account already frozen or not). Its answer is the
    /// transfer, case or account as it stands. A repeated dispute also answers its case as it
    /// stands.
    pub fn replayed(&self, cmd: &Command) -> Result<Option<(Outcome, u64)>, LedgerError> {
        let now = match cmd {
            Command::Post { tx_id, by } => self
                .transfers
                .get(tx_id)
                .filter(|t| t.status == Status::Settled && t.posted_by == Some(*by))
                .map(|t| Outcome::Transfer(t.t.clone())),
            Command::Void { tx_id, why } => self
                .transfers
                .get(tx_id)
                .filter(|t| t.status == Status::Voided && t.void_reason == Some(*why))
                .map(|t| Outcome::Transfer(t.t.clone())),
            // Freezing a frozen account (or unfreezing one that is not) changes nothing: it is
            // answered with the account and not journaled again.
            Command::Freeze { account, .. } | Command::Unfreeze { account, .. } => {
                let freeze = matches!(cmd, Command::Freeze { .. });
                self.accounts
                    .get(account)
                    .filter(|a| a.frozen == freeze)
                    .map(|a| Outcome::Account(a.view()))
            }
            // The same analyst's same verdict: another analyst's (or another note) is not a
            // retry, and is refused as the case is closed.
            Command::Resolve {
                case_id,
                verdict,
                by,
                note,
            } => self
                .cases
                .get(case_id)
                .filter(|c| {
                    c.verdict == Some(*verdict)
                        && c.resolved_by.as_deref() == Some(by.as_str())
                        && c.note.as_deref() == Some(note.as_str())
                })
                .map(|c| Outcome::Case(c.clone())),
            _ => None,
        };
        if let Some(outcome) = now {
            return Ok(Some((outcome, self.last_seq)));
        }
        let Some((kind, key)) = idem_key(cmd) else {
            return Ok(None);
        };
        let (fp, outcome) = if kind == TRANSFER_KIND {
            let Some(k) = self.transfers.get(key) else {
                return Ok(None);
            };
            (k.fingerprint, Outcome::Transfer(k.t.clone()))
        } else {
            let Some(done) = self.done[usize::from(kind)].get(key) else {
                return Ok(None);
            };
            let outcome = match (&*done.outcome, cmd) {
                (Outcome::Account(_), Command::Open { account, .. }) => self
                    .accounts
                    .get(account)
                    .map_or_else(|| (*done.outcome).clone(), |a| Outcome::Account(a.view())),
                (Outcome::Case(_), Command::Dispute { case_id, .. }) => self
                    .cases
                    .get(case_id)
                    .map_or_else(|| (*done.outcome).clone(), |c| Outcome::Case(c.clone())),
                (o, _) => o.clone(),
            };
            (done.fingerprint, outcome)
        };
        if fp != fingerprint(cmd) {
            return Err(LedgerError::Conflict(key.to_string()));
        }
        // The answer is the record as it stands now, which later records may have changed (a
        // confirmation, a refund): a retry waits for every record so far, not its own alone.
        Ok(Some((outcome, self.last_seq)))
    }

    /// Refuses a new command that rules added since a journal may have recorded ones like it,
    /// so that [`Book::apply`] still replays those journals as they were: an op_id is a
    /// deposit's or a withdrawal's, not both; a dispute's id may not take the form of a review
    /// case's (`review-<tx_id>`, which a later review of that transfer would overwrite), and a
    /// transfer is disputed once.
    pub fn admit(&self, cmd: &Command) -> Result<(), LedgerError> {
        // Deposits and withdrawals share one namespace of op_ids: a key reused across them is
        // a client's mistake (a retried withdrawal sent as a deposit), not a new operation.
        let other = match cmd {
            Command::Deposit { op_id, .. } => Some((2, op_id)),
            Command::Withdraw { op_id, .. } => Some((1, op_id)),
            _ => None,
        };
        if let Some((kind, op_id)) = other
            && self.done[kind].contains_key(op_id.as_str())
        {
            return Err(LedgerError::Conflict(op_id.clone()));
        }
        if let Command::Dispute { case_id, tx_id, .. } = cmd {
            if case_id.starts_with(REVIEW_CASE_PREFIX) {
                return Err(LedgerError::ReservedId {
                    field: "dispute_id",
                    message: format!(
                        "ids starting with '{REVIEW_CASE_PREFIX}' are kept for review cases"
                    ),
                });
            }
            if let Some(case_id) = self.disputes.get(tx_id) {
                return Err(LedgerError::AlreadyDisputed {
                    tx_id: tx_id.clone(),
                    case_id: case_id.clone(),
                });
            }
        }
        Ok(())
    }

    /// Applies a command at `ts_ms` as journal record `seq`. A repeated command must be caught
    /// by [`Book::replayed`] first, and a new one checked by [`Book::admit`].
    pub fn apply(&mut self, cmd: &Command, ts_ms: i64, seq: u64) -> Result<Outcome, LedgerError> {
        let outcome = match cmd {
            Command::Open {
                account,
                currency,
                locale,
            } => self.open(account, currency, locale.as_deref(), ts_ms)?,
            Command::Deposit {
                op_id,
                account,
                amount,
            } => self.deposit(op_id, account, *amount, ts_ms, seq, true)?,
            Command::Withdraw {
                op_id,
                account,
                amount,
            } => self.deposit(op_id, account, *amount, ts_ms, seq, false)?,
            Command::Transfer(t) => self.transfer(t, ts_ms, seq)?,
            Command::Post { tx_id, by } => self.post(tx_id, *by, ts_ms, seq)?,
            Command::Void { tx_id, why } => self.void(tx_id, *why, ts_ms, seq)?,
            Command::Refund {
                refund_id,
                tx_id,
                amount,
                reason,
            } => {
                let r = self.refund(refund_id, tx_id, *amount, reason, ts_ms, seq)?;
                Outcome::Refund(r)
            }
            Command::Freeze {
                account,
                reason,
                by,
                tx_id,
            } => self.set_frozen(account, true, reason, by, tx_id.clone(), ts_ms)?,
            Command::Unfreeze {
                account,
                reason,
                by,
            } => self.set_frozen(account, false, reason, by, None, ts_ms)?,
            Command::Dispute {
                case_id,
                tx_id,
                reason,
            } => self.dispute(case_id, tx_id, reason, ts_ms)?,
            Command::Resolve {
                case_id,
                verdict,
                by,
                note,
            } => self.resolve(case_id, *verdict, by, note, ts_ms, seq)?,
        };
        match idem_key(cmd) {
            Some((TRANSFER_KIND, _)) | None => {}
            Some((kind, key)) => {
                self.done[usize::from(kind)].insert(
                    key.to_string(),
                    Done {
                        fingerprint: fingerprint(cmd),
                        outcome: Box::new(outcome.clone()),
                    },
                );
            }
        }
        self.last_seq = seq;
        Ok(outcome)
    }

    fn currency(code: &str) -> Result<Currency, LedgerError> {
        Currency::from_code(code).ok_or_else(|| LedgerError::UnknownCurrency(code.to_string()))
    }

    fn limit(&self, c: Currency) -> i64 {
        self.config
            .max_amount_major
            .saturating_mul(10i64.saturating_pow(u32::from(c.exponent)))
    }

    fn check_amount(&self, amount: i64, c: Currency) -> Result<(), LedgerError> {
        if amount <= 0 {
            return Err(LedgerError::InvalidAmount);
        }
        let limit = self.limit(c);
        if amount > limit {
            return Err(LedgerError::LimitExceeded(limit, c));
        }
        Ok(())
    }

    fn open(
        &mut self,
        id: &str,
        currency: &str,
        locale: Option<&str>,
        ts_ms: i64,
    ) -> Result<Outcome, LedgerError> {
        let c = Self::currency(currency)?;
        if id.is_empty() || id == "world" {
            return Err(LedgerError::Unsupported(format!(
                "'{id}' cannot be an account id"
            )));
        }
        if let Some(a) = self.accounts.get(id) {
            return Err(LedgerError::AccountExists(a.id.clone()));
        }
        let a = Account {
            id: id.to_string(),
            currency: c,
            available: 0,
            held: 0,
            frozen: false,
            locale: locale.map(str::to_string),
            opened_ms: ts_ms,
            entries: Vec::new(),
            freezes: Vec::new(),
        };
        self.world.entry(c.code().to_string()).or_insert(0);
        self.accounts.insert(id.to_string(), a.clone());
        Ok(Outcome::Account(a))
    }

    fn account(&self, id: &str) -> Result<&Account, LedgerError> {
        self.accounts
            .get(id)
            .ok_or_else(|| LedgerError::UnknownAccount(id.to_string()))
    }

    fn deposit(
        &mut self,
        op_id: &str,
        id: &str,
        amount: i64,
        ts_ms: i64,
        seq: u64,
        inward: bool,
    ) -> Result<Outcome, LedgerError> {
        let a = self.account(id)?;
        self.check_amount(amount, a.currency)?;
        if a.frozen {
            return Err(LedgerError::Frozen(id.to_string()));
        }
        if !inward && a.available < amount {
            return Err(LedgerError::InsufficientFunds {
                account: id.to_string(),
                available: a.available,
                needed: amount,
                currency: a.currency,
            });
        }
        let delta = if inward { amount } else { -amount };
        let code = a.currency.code().to_string();
        *self.world.entry(code).or_insert(0) -= delta;
        let kind = if inward { "deposit" } else { "withdrawal" };
        let a = self.post_entry(id, kind, op_id, "world", delta, 0, ts_ms, seq);
        Ok(Outcome::Account(a))
    }

    /// Books an entry on an account and returns the account after it.
    #[allow(clippy::too_many_arguments)]
    fn post_entry(
        &mut self,
        id: &str,
        kind: &'static str,
        ref_id: &str,
        counterparty: &str,
        available_delta: i64,
        held_delta: i64,
        ts_ms: i64,
        seq: u64,
    ) -> Account {
        let Some(a) = self.accounts.get_mut(id) else {
            unreachable!("entries are posted to accounts checked before");
        };
        a.available += available_delta;
        a.held += held_delta;
        a.entries.push(Entry {
            seq,
            ts_ms,
            kind,
            ref_id: ref_id.to_string(),
            counterparty: counterparty.to_string(),
            available_delta,
            held_delta,
            available_after: a.available,
            held_after: a.held,
        });
        a.view()
    }

    /// Moves money for a settled transfer: from's available (or held, when `from_held`) to
    /// to's available.
    #[allow(clippy::too_many_arguments)]
    fn move_money(
        &mut self,
        from: &Party,
        to: &Party,
        amount: i64,
        currency: Currency,
        kinds: (&'static str, &'static str),
        ref_id: &str,
        from_held: bool,
        ts_ms: i64,
        seq: u64,
    ) {
        match from {
            Party::Account(a) => {
                let (av, hd) = if from_held {
                    (0, -amount)
                } else {
                    (-amount, 0)
                };
                self.post_entry(a, kinds.0, ref_id, to.name(), av, hd, ts_ms, seq);
            }
            Party::World => *self.world.entry(currency.code().to_string()).or_insert(0) -= amount,
        }
        match to {
            Party::Account(a) => {
                self.post_entry(a, kinds.1, ref_id, from.name(), amount, 0, ts_ms, seq);
            }
            Party::World => *self.world.entry(currency.code().to_string()).or_insert(0) += amount,
        }
    }

    fn entry_kinds(kind: TxKind) -> (&'static str, &'static str) {
        match kind {
            TxKind::Transfer => ("transfer_out", "transfer_in"),
            TxKind::Payment => ("payment", "payment_in"),
            TxKind::Withdrawal => ("withdrawal", "deposit"),
            TxKind::TopUp => ("top_up_out", "top_up"),
            TxKind::Refund => ("refund_out", "refund_in"),
        }
    }

    /// Why `t` would move no money, if it would not (without changing anything).
    pub fn precheck(&self, t: &TransferCmd) -> Option<Decline> {
        Currency::from_code(&t.currency)
            .map_or(Some(Decline::CurrencyMismatch), |c| self.decline(t, c))
    }

    /// Why `t` cannot move money, if it cannot.
    fn decline(&self, t: &TransferCmd, c: Currency) -> Option<Decline> {
        let mut parties = [&t.from, &t.to].into_iter().filter_map(Party::account);
        let mut payer_available = None;
        for id in parties.by_ref() {
            let Some(a) = self.accounts.get(id) else {
                return Some(Decline::UnknownAccount);
            };
            if a.currency != c {
                return Some(Decline::CurrencyMismatch);
            }
            if Some(id) == t.from.account() {
                payer_available = Some(a.available);
            }
        }
        if t.risk == Risk::Block {
            return Some(Decline::RiskBlocked);
        }
        if t.amount > self.limit(c) {
            return Some(Decline::LimitExceeded);
        }
        let frozen = [&t.from, &t.to]
            .into_iter()
            .filter_map(Party::account)
            .any(|id| self.accounts.get(id).is_some_and(|a| a.frozen));
        if frozen {
            return Some(Decline::AccountFrozen);
        }
        if payer_available.is_some_and(|av| av < t.amount) {
            return Some(Decline::InsufficientFunds);
        }
        None
    }

    fn transfer(&mut self, t: &TransferCmd, ts_ms: i64, seq: u64) -> Result<Outcome, LedgerError> {
        let fingerprint = transfer_fingerprint(t);
        let c = Self::currency(&t.currency)?;
        if t.amount <= 0 {
            return Err(LedgerError::InvalidAmount);
        }
        if t.from == t.to {
            return Err(LedgerError::Unsupported(
                "a transfer needs two different sides".into(),
            ));
        }
        let decline = self.decline(t, c);
        let mut tr = Transfer {
            tx_id: t.tx_id.clone(),
            kind: t.kind,
            from: t.from.clone(),
            to: t.to.clone(),
            amount: t.amount,
            currency: c,
            status: Status::Declined,
            decline,
            void_reason: None,
            posted_by: None,
            risk: t.risk,
            rules: t.rules.clone(),
            score: t.score,
            refunded: 0,
            label: None,
            created_ms: ts_ms,
            updated_ms: ts_ms,
            expires_ms: None,
        };
        if decline.is_none() {
            match t.risk {
                Risk::Allow => {
                    let kinds = Self::entry_kinds(t.kind);
                    self.move_money(
                        &t.from, &t.to, t.amount, c, kinds, &t.tx_id, false, ts_ms, seq,
                    );
                    tr.status = Status::Settled;
                }
                Risk::Review | Risk::StepUp => {
                    if let Party::Account(a) = &t.from {
                        let other = t.to.name().to_string();
                        self.post_entry(
                            a, "hold", &t.tx_id, &other, -t.amount, t.amount, ts_ms, seq,
                        );
                    }
                    let ttl = if t.risk == Risk::Review {
                        self.config.review_hold_ms
                    } else {
                        self.config.step_up_hold_ms
                    };
                    let expires = ts_ms.saturating_add(ttl);
                    tr.status = Status::Pending;
                    tr.expires_ms = Some(expires);
                    self.expiries.insert((expires, t.tx_id.clone()));
                    if t.risk == Risk::Review {
                        let case = Case {
                            id: format!("{REVIEW_CASE_PREFIX}{}", t.tx_id),
                            kind: CaseKind::Review,
                            tx_id: t.tx_id.clone(),
                            account: t.from.name().to_string(),
                            reason: if t.rules.is_empty() {
                                "held for review".into()
                            } else {
                                format!("held for review by {}", t.rules.join(", "))
                            },
                            rules: t.rules.clone(),
                            opened_ms: ts_ms,
                            verdict: None,
                            resolved_by: None,
                            note: None,
                            resolved_ms: None,
                            recovered: 0,
                            closed: None,
                        };
                        self.cases.insert(case.id.clone(), case);
                    }
                }
                Risk::Block => unreachable!("a blocked transfer is declined"),
            }
        }
        let kept = Kept {
            t: tr.clone(),
            fingerprint,
        };
        self.transfers.insert(t.tx_id.clone(), Box::new(kept));
        Ok(Outcome::Transfer(tr))
    }

    fn pending(&self, tx_id: &str, needed: &'static str) -> Result<&Transfer, LedgerError> {
        let tr: &Transfer = self
            .transfers
            .get(tx_id)
            .ok_or_else(|| LedgerError::UnknownTransfer(tx_id.to_string()))?;
        if tr.status != Status::Pending {
            return Err(LedgerError::InvalidState {
                tx_id: tx_id.to_string(),
                status: status_name(tr.status),
                needed,
            });
        }
        Ok(tr)
    }

    fn post(
        &mut self,
        tx_id: &str,
        by: PostBy,
        ts_ms: i64,
        seq: u64,
    ) -> Result<Outcome, LedgerError> {
        let tr = self.pending(tx_id, "pending")?;
        if by == PostBy::Confirmed && tr.risk != Risk::StepUp {
            return Err(LedgerError::Unsupported(format!(
                "transfer {tx_id} is held for review: an analyst approves it, the holder cannot"
            )));
        }
        // A confirmation cannot release money from or to a frozen account; an analyst can.
        if by == PostBy::Confirmed {
            for id in [&tr.from, &tr.to].into_iter().filter_map(Party::account) {
                if self.accounts.get(id).is_some_and(|a| a.frozen) {
                    return Err(LedgerError::Frozen(id.to_string()));
                }
            }
        }
        let (from, to, amount, c, kind) = (
            tr.from.clone(),
            tr.to.clone(),
            tr.amount,
            tr.currency,
            tr.kind,
        );
        let expires = tr.expires_ms;
        if let Party::Account(a) = &from {
            self.post_entry(a, "hold_posted", tx_id, to.name(), 0, 0, ts_ms, seq);
        }
        let kinds = Self::entry_kinds(kind);
        self.move_money(&from, &to, amount, c, kinds, tx_id, true, ts_ms, seq);
        if let Some(e) = expires {
            self.expiries.remove(&(e, tx_id.to_string()));
        }
        let Some(tr) = self.transfers.get_mut(tx_id) else {
            unreachable!("checked above");
        };
        tr.status = Status::Settled;
        tr.posted_by = Some(by);
        tr.updated_ms = ts_ms;
        tr.expires_ms = None;
        Ok(Outcome::Transfer(tr.t.clone()))
    }

    fn void(
        &mut self,
        tx_id: &str,
        why: VoidReason,
        ts_ms: i64,
        seq: u64,
    ) -> Result<Outcome, LedgerError> {
        let tr = self.pending(tx_id, "pending")?;
        let (from, to, amount, expires) =
            (tr.from.clone(), tr.to.clone(), tr.amount, tr.expires_ms);
        if let Party::Account(a) = &from {
            self.post_entry(
                a,
                "hold_released",
                tx_id,
                to.name(),
                amount,
                -amount,
                ts_ms,
                seq,
            );
        }
        if let Some(e) = expires {
            self.expiries.remove(&(e, tx_id.to_string()));
        }
        // A hold that ends on its own takes its review out of the queue; a rejection is the
        // review's verdict, set by `resolve`.
        if why != VoidReason::Rejected
            && let Some(c) = self.cases.get_mut(&format!("{REVIEW_CASE_PREFIX}{tx_id}"))
            && c.kind == CaseKind::Review
            && c.is_open()
        {
            c.closed = Some(why);
        }
        let Some(tr) = self.transfers.get_mut(tx_id) else {
            unreachable!("checked above");
        };
        tr.status = Status::Voided;
        tr.void_reason = Some(why);
        tr.updated_ms = ts_ms;
        tr.expires_ms = None;
        Ok(Outcome::Transfer(tr.t.clone()))
    }

    /// Refunds `amount` (or all that remains) of a settled transfer: the payee pays the payer
    /// back. With `recover_only`, refunds what the payee can pay, possibly nothing.
    #[allow(clippy::too_many_arguments)]
    fn refund_inner(
        &mut self,
        refund_id: &str,
        tx_id: &str,
        amount: Option<i64>,
        recover_only: bool,
        reason: &str,
        ts_ms: i64,
        seq: u64,
    ) -> Result<Refund, LedgerError> {
        let tr: &Transfer = self
            .transfers
            .get(tx_id)
            .ok_or_else(|| LedgerError::UnknownTransfer(tx_id.to_string()))?;
        if tr.status != Status::Settled {
            return Err(LedgerError::InvalidState {
                tx_id: tx_id.to_string(),
                status: status_name(tr.status),
                needed: "settled",
            });
        }
        let remaining = tr.amount - tr.refunded;
        let mut asked = amount.unwrap_or(remaining);
        if amount.is_some() && asked <= 0 {
            return Err(LedgerError::InvalidAmount);
        }
        if asked > remaining {
            return Err(LedgerError::RefundExceeds {
                tx_id: tx_id.to_string(),
                asked,
                remaining,
                currency: tr.currency,
            });
        }
        let (payer_back, payee, c) = (tr.from.clone(), tr.to.clone(), tr.currency);
        if let Party::Account(p) = &payee {
            let a = self.account(p)?;
            if recover_only {
                asked = asked.min(a.available.max(0));
            } else if a.available < asked {
                return Err(LedgerError::InsufficientFunds {
                    account: p.clone(),
                    available: a.available,
                    needed: asked,
                    currency: c,
                });
            }
        }
        if asked == 0 && !recover_only {
            return Err(LedgerError::RefundExceeds {
                tx_id: tx_id.to_string(),
                asked,
                remaining,
                currency: tr.currency,
            });
        }
        if asked > 0 {
            self.move_money(
                &payee,
                &payer_back,
                asked,
                c,
                ("refund_out", "refund_in"),
                refund_id,
                false,
                ts_ms,
                seq,
            );
        }
        let Some(tr) = self.transfers.get_mut(tx_id) else {
            unreachable!("checked above");
        };
        tr.refunded += asked;
        tr.updated_ms = ts_ms;
        let r = Refund {
            refund_id: refund_id.to_string(),
            tx_id: tx_id.to_string(),
            amount: asked,
            currency: c,
            refunded_total: tr.refunded,
            reason: reason.to_string(),
            ts_ms,
        };
        self.refunds.insert(refund_id.to_string(), r.clone());
        Ok(r)
    }

    fn refund(
        &mut self,
        refund_id: &str,
        tx_id: &str,
        amount: Option<i64>,
        reason: &str,
        ts_ms: i64,
        seq: u64,
    ) -> Result<Refund, LedgerError> {
        self.refund_inner(refund_id, tx_id, amount, false, reason, ts_ms, seq)
    }

    fn set_frozen(
        &mut self,
        id: &str,
        frozen: bool,
        reason: &str,
        by: &str,
        tx_id: Option<String>,
        ts_ms: i64,
    ) -> Result<Outcome, LedgerError> {
        let Some(a) = self.accounts.get_mut(id) else {
            return Err(LedgerError::UnknownAccount(id.to_string()));
        };
        if a.frozen != frozen {
            a.frozen = frozen;
            a.freezes.push(FreezeRecord {
                frozen,
                reason: reason.to_string(),
                by: by.to_string(),
                tx_id,
                ts_ms,
            });
        }
        Ok(Outcome::Account(a.view()))
    }

    fn dispute(
        &mut self,
        case_id: &str,
        tx_id: &str,
        reason: &str,
        ts_ms: i64,
    ) -> Result<Outcome, LedgerError> {
        let tr: &Transfer = self
            .transfers
            .get(tx_id)
            .ok_or_else(|| LedgerError::UnknownTransfer(tx_id.to_string()))?;
        if tr.status != Status::Settled {
            return Err(LedgerError::InvalidState {
                tx_id: tx_id.to_string(),
                status: status_name(tr.status),
                needed: "settled",
            });
        }
        let Party::Account(holder) = tr.from.clone() else {
            return Err(LedgerError::Unsupported(format!(
                "transfer {tx_id} was paid in from outside the wallet: nothing to dispute here"
            )));
        };
        let rules = tr.rules.clone();
        if self.cases.contains_key(case_id) {
            return Err(LedgerError::Conflict(case_id.to_string()));
        }
        self.set_frozen(
            &holder,
            true,
            "dispute opened",
            &format!("dispute:{case_id}"),
            Some(tx_id.to_string()),
            ts_ms,
        )?;
        let case = Case {
            id: case_id.to_string(),
            kind: CaseKind::Dispute,
            tx_id: tx_id.to_string(),
            account: holder,
            reason: reason.to_string(),
            rules,
            opened_ms: ts_ms,
            verdict: None,
            resolved_by: None,
            note: None,
            resolved_ms: None,
            recovered: 0,
            closed: None,
        };
        self.cases.insert(case.id.clone(), case.clone());
        self.disputes.insert(tx_id.to_string(), case_id.to_string());
        Ok(Outcome::Case(case))
    }

    fn resolve(
        &mut self,
        case_id: &str,
        verdict: Verdict,
        by: &str,
        note: &str,
        ts_ms: i64,
        seq: u64,
    ) -> Result<Outcome, LedgerError> {
        let case = self
            .cases
            .get(case_id)
            .ok_or_else(|| LedgerError::UnknownCase(case_id.to_string()))?;
        if case.verdict.is_some() {
            return Err(LedgerError::CaseClosed(case_id.to_string()));
        }
        let (kind, tx_id, holder) = (case.kind, case.tx_id.clone(), case.account.clone());
        let mut recovered = 0;
        match (kind, verdict) {
            (CaseKind::Review, Verdict::Fraud) => {
                if self.pending(&tx_id, "pending").is_ok() {
                    self.void(&tx_id, VoidReason::Rejected, ts_ms, seq)?;
                }
            }
            (CaseKind::Review, Verdict::Legit) => {
                if self.pending(&tx_id, "pending").is_ok() {
                    self.post(&tx_id, PostBy::Approved, ts_ms, seq)?;
                }
            }
            (CaseKind::Dispute, Verdict::Fraud) => {
                let r = self.refund_inner(
                    &format!("{case_id}:recovery"),
                    &tx_id,
                    None,
                    true,
                    "dispute: fraud",
                    ts_ms,
                    seq,
                )?;
                recovered = r.amount;
            }
            (CaseKind::Dispute, Verdict::Legit) => {
                let by_case = format!("dispute:{case_id}");
                let frozen_by_case = self
                    .accounts
                    .get(&holder)
                    .and_then(|a| a.freezes.last())
                    .is_some_and(|f| f.frozen && f.by == by_case);
                if frozen_by_case {
                    self.set_frozen(&holder, false, "dispute resolved as legit", by, None, ts_ms)?;
                }
            }
        }
        if let Some(tr) = self.transfers.get_mut(&tx_id) {
            tr.label = Some(verdict);
        }
        let Some(case) = self.cases.get_mut(case_id) else {
            unreachable!("checked above");
        };
        case.verdict = Some(verdict);
        case.resolved_by = Some(by.to_string());
        case.note = Some(note.to_string());
        case.resolved_ms = Some(ts_ms);
        case.recovered = recovered;
        Ok(Outcome::Case(case.clone()))
    }

    /// The hold `cmd` would end (a step-up confirmed or cancelled, a review decided) if its
    /// time ran out by `ts_ms` and nothing released it yet: the ticker that releases lapsed
    /// holds runs once a second, and in between a confirmation must not move the money, nor a
    /// cancellation or a rejection record a lapsed hold as theirs.
    pub fn lapsed_hold(&self, cmd: &Command, ts_ms: i64) -> Option<String> {
        let tx_id = match cmd {
            Command::Post { tx_id, .. } => tx_id,
            Command::Void { tx_id, why } if *why != VoidReason::Expired => tx_id,
            Command::Resolve { case_id, .. } => &self.cases.get(case_id)?.tx_id,
            _ => return None,
        };
        let t = self.transfers.get(tx_id)?;
        (t.status == Status::Pending && t.expires_ms.is_some_and(|e| e <= ts_ms))
            .then(|| tx_id.clone())
    }

    /// The holds whose time ran out by `now_ms`, soonest first.
    pub fn expired(&self, now_ms: i64) -> Vec<String> {
        self.expiries
            .iter()
            .take_while(|(at, _)| *at <= now_ms)
            .map(|(_, id)| id.clone())
            .collect()
    }

    /// An account, without its history.
    pub fn get_account(&self, id: &str) -> Option<Account> {
        self.accounts.get(id).map(Account::view)
    }

    /// An account's notification language, if it has one.
    pub fn locale(&self, id: &str) -> Option<&str> {
        self.accounts.get(id)?.locale.as_deref()
    }

    /// Whether an account exists.
    pub fn has_account(&self, id: &str) -> bool {
        self.accounts.contains_key(id)
    }

    /// When an account was opened, if the ledger has it.
    pub fn opened_ms(&self, id: &str) -> Option<i64> {
        self.accounts.get(id).map(|a| a.opened_ms)
    }

    /// A transfer.
    pub fn get_transfer(&self, tx_id: &str) -> Option<&Transfer> {
        self.transfers.get(tx_id).map(|k| &k.t)
    }

    /// A case.
    pub fn get_case(&self, id: &str) -> Option<&Case> {
        self.cases.get(id)
    }

    /// Cases, open ones only or all, in id order.
    pub fn cases(&self, open_only: bool) -> impl Iterator<Item = &Case> {
        self.cases
            .values()
            .filter(move |c| !open_only || c.is_open())
    }

    /// Frozen accounts with their latest freeze.
    pub fn freezes(&self) -> Vec<(String, FreezeRecord)> {
        let mut v: Vec<_> = self
            .accounts
            .values()
            .filter(|a| a.frozen)
            .filter_map(|a| a.freezes.last().map(|f| (a.id.clone(), f.clone())))
            .collect();
        v.sort_by(|a, b| (a.1.ts_ms, &a.0).cmp(&(b.1.ts_ms, &b.0)));
        v
    }

    /// An account's freeze history.
    pub fn freeze_history(&self, id: &str) -> Option<&[FreezeRecord]> {
        self.accounts.get(id).map(|a| a.freezes.as_slice())
    }

    /// An account's history entries.
    pub fn entries(&self, id: &str) -> Option<&[Entry]> {
        self.accounts.get(id).map(|a| a.entries.as_slice())
    }

    /// Counts: accounts, transfers, open cases.
    pub fn counts(&self) -> (usize, usize, usize) {
        (
            self.accounts.len(),
            self.transfers.len(),
            self.cases.values().filter(|c| c.is_open()).count(),
        )
    }

    /// Total balance per currency over every account and the world (always zero), and the
    /// customers' total.
    pub fn totals(&self) -> BTreeMap<String, (i128, i128)> {
        let mut t: BTreeMap<String, (i128, i128)> = BTreeMap::new();
        for a in self.accounts.values() {
            let e = t.entry(a.currency.code().to_string()).or_default();
            let v = i128::from(a.available) + i128::from(a.held);
            e.0 += v;
            e.1 += v;
        }
        for (c, w) in &self.world {
            t.entry(c.clone()).or_default().0 += i128::from(*w);
        }
        t
    }

    /// Checks every invariant; returns what is broken.
    pub fn check(&self) -> Vec<Violation> {
        let mut v = Vec::new();
        for (c, (sum, _)) in self.totals() {
            if sum != 0 {
                v.push(format!("{c}: balances sum to {sum}, not 0"));
            }
        }
        let mut held: FxHashMap<&str, i64> = FxHashMap::default();
        for t in self.transfers.values() {
            if t.status == Status::Pending
                && let Party::Account(a) = &t.from
            {
                *held.entry(a).or_default() += t.amount;
            }
            if t.refunded < 0 || t.refunded > t.amount {
                v.push(format!(
                    "{}: refunded {} of {}",
                    t.tx_id, t.refunded, t.amount
                ));
            }
            if t.refunded > 0 && t.status != Status::Settled {
                v.push(format!(
                    "{}: refunded but {}",
                    t.tx_id,
                    status_name(t.status)
                ));
            }
        }
        for a in self.accounts.values() {
            if a.available < 0 || a.held < 0 {
                v.push(format!(
                    "{}: available {} held {}",
                    a.id, a.available, a.held
                ));
            }
            let h = held.get(a.id.as_str()).copied().unwrap_or(0);
            if h != a.held {
                v.push(format!(
                    "{}: holds {} but pending transfers {}",
                    a.id, a.held, h
                ));
            }
        }
        v
    }
}

/// Wire name of a status.
pub fn status_name(s: Status) -> &'static str {
    match s {
        Status::Settled => "settled",
        Status::Pending => "pending",
        Status::Voided => "voided",
        Status::Declined => "declined",
    }
}
