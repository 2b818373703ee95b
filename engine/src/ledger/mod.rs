//! The ledger that settles allowed payments: double-entry in integer minor units, idempotent by
//! operation id, durable before it answers.
//!
//! [`Book`] is the state machine (balances, transfers, holds, freezes, cases). [`Ledger`] puts
//! it behind one lock and a journal: a command is checked and applied in memory, its record is
//! appended to the journal's buffer in the same critical section (so journal order is apply
//! order), and the caller gets a ticket. A flusher thread writes everything buffered and calls
//! `fdatasync` once for all of it (group commit), then marks those tickets durable and wakes
//! only the waiters its batch covers. Callers answer only after their ticket is durable
//! ([`Ledger::wait`] or [`Ledger::durable`]). An in-memory ledger (no journal) has no flusher:
//! every ticket is durable at once.
//!
//! Journal layout: `VIGILJNL`, format (u32 LE), then records: length (u32 LE), CRC-32 of the
//! body (u32 LE), body (postcard: sequence, time, command). On start the journal is replayed
//! into a new book; a torn last record (short, or failing its checksum at the very end of the
//! file) is cut off; damage anywhere else stops the start.
//!
//! A reader may see a change whose record is not yet durable (read-uncommitted). Nothing that
//! is acknowledged depends on one: records are durable in order.

pub mod book;

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use serde::{Deserialize, Serialize};

use crate::decision::Decision;
use crate::event::{AccountEvent, Transaction};

pub use book::{
    Account, Book, BookConfig, Case, CaseKind, Command, Decline, Entry, FreezeRecord, LedgerError,
    Outcome, Party, PostBy, Refund, Risk, Status, Transfer, TransferCmd, Verdict, VoidReason,
};

const MAGIC: &[u8; 8] = b"VIGILJNL";
const FORMAT: u32 = 1;
const HEADER_LEN: u64 = 12;
/// A record larger than this is damage, not data.
const RECORD_MAX: u32 = 1 << 20;

#[derive(Serialize, Deserialize)]
struct Record {
    seq: u64,
    ts_ms: i64,
    cmd: Command,
}

/// Why the journal could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// Reading or writing failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The error.
        source: io::Error,
    },
    /// The journal is damaged, or the state it rebuilds breaks an invariant.
    #[error("{path}: {message}")]
    Damaged {
        /// The file.
        path: String,
        /// What is wrong.
        message: String,
    },
}

/// What opening a journal found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Records replayed.
    pub records: u64,
    /// Bytes of a torn last record cut off.
    pub torn_bytes: u64,
}

/// A command's result and the ticket to wait on before answering.
#[derive(Debug, Clone)]
pub struct Applied {
    /// The result.
    pub outcome: Outcome,
    /// Journal sequence; durable once [`Ledger::wait`] returns for it.
    pub ticket: u64,
    /// The command repeated an earlier one: the stored result.
    pub replayed: bool,
}

struct Inner {
    book: Book,
    buf: Vec<u8>,
    next_seq: u64,
    closed: bool,
    failed: Option<String>,
    /// The flusher is asleep waiting for records: the next writer wakes it. While it is busy
    /// writing, writers only append (no wake-up per record).
    flusher_idle: bool,
}

/// Async waiters for durability, by ticket: the flusher wakes only those its batch covers.
#[derive(Default)]
struct Waiters {
    next_id: u64,
    by_ticket: BTreeMap<(u64, u64), tokio::sync::oneshot::Sender<()>>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Durable {
    seq: u64,
    failed: bool,
}

struct Shared {
    inner: Mutex<Inner>,
    wake: Condvar,
    durable: Mutex<Durable>,
    durable_cv: Condvar,
    /// Mirrors of `durable` for the fast path.
    durable_seq: AtomicU64,
    durable_failed: AtomicBool,
    waiters: Mutex<Waiters>,
    path: Option<PathBuf>,
    /// No journal: every ticket is durable when it is handed out.
    memory: bool,
}

/// The ledger: a [`Book`] behind a journal with group commit. Cheap to clone.
#[derive(Clone)]
pub struct Ledger {
    shared: Arc<Shared>,
    flusher: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger")
            .field("path", &self.shared.path)
            .finish_non_exhaustive()
    }
}

/// The freeze `d` asks of the ledger for `tx`'s payer: the first time, and only for an
/// account the ledger holds and has not frozen.
fn freeze_cmd(book: &Book, tx: &Transaction, d: &Decision) -> Option<Command> {
    if !d.freeze || d.already_frozen || d.duplicate {
        return None;
    }
    if book.get_account(&tx.account_id).map(|a| a.frozen) != Some(false) {
        return None;
    }
    let rule = d
        .acting()
        .find(|r| r.freeze)
        .or_else(|| d.acting().next())
        .map_or("", |r| r.rule.as_str());
    Some(Command::Freeze {
        account: tx.account_id.to_string(),
        reason: format!("rule {rule} fired on {}", tx.tx_id),
        by: format!("rule:{rule}"),
        tx_id: Some(tx.tx_id.to_string()),
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wall-clock Unix milliseconds: the ledger books operations when they happen (a booking
/// time, not an event time), and holds lapse on the wall clock.
#[allow(clippy::disallowed_methods)]
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// One framed record: length, checksum, body.
fn encode(rec: &Record) -> Result<Vec<u8>, LedgerError> {
    let mut out = vec![0; 8];
    out = postcard::to_extend(rec, out)
        .map_err(|e| LedgerError::Journal(format!("encoding a record: {e}")))?;
    let len = u32::try_from(out.len() - 8)
        .ok()
        .filter(|l| *l <= RECORD_MAX)
        .ok_or_else(|| LedgerError::Unsupported("the request is too large to journal".into()))?;
    let crc = crc32fast::hash(&out[8..]);
    out[..4].copy_from_slice(&len.to_le_bytes());
    out[4..8].copy_from_slice(&crc.to_le_bytes());
    Ok(out)
}

impl Ledger {
    /// A ledger that keeps nothing on disk (demos, tests): every ticket is durable at once.
    pub fn in_memory(config: BookConfig) -> Ledger {
        Self::start(Book::new(config), None, None, 0)
    }

    /// Opens (or creates) the journal at `path`, rebuilds the book from it and starts the
    /// flusher.
    pub fn open(path: &Path, config: BookConfig) -> Result<(Ledger, Recovery), JournalError> {
        let io_err = |source| JournalError::Io {
            path: path.display().to_string(),
            source,
        };
        let damaged = |message: String| JournalError::Damaged {
            path: path.display().to_string(),
            message,
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .map_err(io_err)?;
        let mut data = Vec::new();
        file.read_to_end(&mut data).map_err(io_err)?;
        let mut book = Book::new(config);
        let mut recovery = Recovery::default();
        let mut last_seq = 0;
        if data.len() < HEADER_LEN as usize {
            // New, or torn while writing the header: start over.
            recovery.torn_bytes = data.len() as u64;
            file.set_len(0).map_err(io_err)?;
            file.seek(SeekFrom::Start(0)).map_err(io_err)?;
            let mut header = MAGIC.to_vec();
            header.extend_from_slice(&FORMAT.to_le_bytes());
            file.write_all(&header).map_err(io_err)?;
            file.sync_all().map_err(io_err)?;
        } else {
            if &data[..8] != MAGIC {
                return Err(damaged("not a Vigil journal (bad magic)".into()));
            }
            let format = u32::from_le_bytes([data[8], data[9], data[10], data[11]]);
            if format != FORMAT {
                return Err(damaged(format!(
                    "journal format {format}; this build reads {FORMAT}"
                )));
            }
            let mut pos = HEADER_LEN as usize;
            while pos < data.len() {
                let rest = &data[pos..];
                if rest.len() < 8 {
                    break;
                }
                let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]);
                let crc = u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]);
                if len > RECORD_MAX {
                    return Err(damaged(format!(
                        "record at byte {pos} claims {len} bytes: damaged"
                    )));
                }
                let end = 8 + len as usize;
                if rest.len() < end {
                    break;
                }
                let body = &rest[8..end];
                if crc32fast::hash(body) != crc {
                    if pos + end == data.len() {
                        break; // the last record, torn
                    }
                    return Err(damaged(format!(
                        "record at byte {pos} fails its checksum and is not the last: damaged"
                    )));
                }
                let rec: Record = postcard::from_bytes(body)
                    .map_err(|e| damaged(format!("record at byte {pos} does not decode: {e}")))?;
                if rec.seq != last_seq + 1 {
                    return Err(damaged(format!(
                        "record at byte {pos} has sequence {}, expected {}",
                        rec.seq,
                        last_seq + 1
                    )));
                }
                book.apply(&rec.cmd, rec.ts_ms, rec.seq).map_err(|e| {
                    damaged(format!(
                        "record {} is refused on replay ({e}); was it written by another version?",
                        rec.seq
                    ))
                })?;
                last_seq = rec.seq;
                recovery.records += 1;
                pos += end;
            }
            if pos < data.len() {
                recovery.torn_bytes = (data.len() - pos) as u64;
                file.set_len(pos as u64).map_err(io_err)?;
                file.sync_all().map_err(io_err)?;
            }
        }
        let broken = book.check();
        if !broken.is_empty() {
            return Err(damaged(format!(
                "the rebuilt ledger breaks its invariants: {}",
                broken.join("; ")
            )));
        }
        file.seek(SeekFrom::End(0)).map_err(io_err)?;
        Ok((
            Self::start(book, Some(file), Some(path.to_path_buf()), last_seq),
            recovery,
        ))
    }

    fn start(book: Book, file: Option<File>, path: Option<PathBuf>, last_seq: u64) -> Ledger {
        let memory = file.is_none();
        let shared = Arc::new(Shared {
            inner: Mutex::new(Inner {
                book,
                buf: Vec::with_capacity(1 << 16),
                next_seq: last_seq + 1,
                closed: false,
                failed: None,
                flusher_idle: false,
            }),
            wake: Condvar::new(),
            durable: Mutex::new(Durable {
                seq: last_seq,
                failed: false,
            }),
            durable_cv: Condvar::new(),
            durable_seq: AtomicU64::new(last_seq),
            durable_failed: AtomicBool::new(false),
            waiters: Mutex::new(Waiters::default()),
            path,
            memory,
        });
        let flusher = match file {
            None => None,
            Some(file) => {
                let s = Arc::clone(&shared);
                let h = std::thread::Builder::new()
                    .name("vigil-journal".into())
                    .spawn(move || flush_loop(&s, file))
                    .ok();
                if h.is_none() {
                    lock(&shared.inner).failed = Some("cannot start the journal thread".into());
                    mark(&shared, None);
                }
                h
            }
        };
        Ledger {
            shared,
            flusher: Arc::new(Mutex::new(flusher)),
        }
    }

    /// Applies `cmd` now. Wait on the ticket before telling anyone.
    pub fn execute(&self, cmd: Command) -> Result<Applied, LedgerError> {
        self.execute_at(cmd, now_ms())
    }

    /// Opens the account an `account_opened` event with a `currency` announces (the Kafka
    /// path and `POST /v1/events`), as of the event's time. `Ok(None)` for any other event, and
    /// for an account the ledger has already (opened through the API, or this event seen
    /// before); otherwise the ticket to wait for.
    pub fn open_announced(&self, a: &AccountEvent) -> Result<Option<u64>, LedgerError> {
        let (true, Some(currency)) = (a.kind.name() == "account_opened", a.currency) else {
            return Ok(None);
        };
        let cmd = Command::Open {
            account: a.account_id.to_string(),
            currency: currency.code().into(),
            locale: a.locale.clone(),
        };
        match self.execute_at(cmd, a.ts_ms) {
            Ok(applied) => Ok((!applied.replayed).then_some(applied.ticket)),
            Err(LedgerError::AccountExists(_) | LedgerError::Conflict(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Applies `cmd` as of `ts_ms`.
    pub fn execute_at(&self, cmd: Command, ts_ms: i64) -> Result<Applied, LedgerError> {
        let mut inner = lock(&self.shared.inner);
        let (result, appended) = self.execute_in(&mut inner, cmd, ts_ms);
        self.unlock(inner, appended);
        result
    }

    /// Unlocks, waking the flusher if a record was appended while it slept.
    fn unlock(&self, mut inner: MutexGuard<'_, Inner>, appended: bool) {
        let wake = appended && std::mem::take(&mut inner.flusher_idle);
        drop(inner);
        if wake {
            self.shared.wake.notify_one();
        }
    }

    /// [`Ledger::execute_at`] under the lock; also says whether a record was appended (the
    /// caller unlocks with [`Ledger::unlock`]).
    fn execute_in(
        &self,
        inner: &mut Inner,
        cmd: Command,
        ts_ms: i64,
    ) -> (Result<Applied, LedgerError>, bool) {
        if let Some(f) = &inner.failed {
            return (Err(LedgerError::Journal(f.clone())), false);
        }
        match inner.book.replayed(&cmd) {
            Err(e) => return (Err(e), false),
            Ok(Some((outcome, ticket))) => {
                let replay = Applied {
                    outcome,
                    ticket,
                    replayed: true,
                };
                return (Ok(replay), false);
            }
            Ok(None) => {}
        }
        // A hold whose time ran out is released first, as the ticker would have: confirmed or
        // approved now, it would have moved the money after all.
        let mut appended = false;
        let mut result = Ok(());
        if let Some(tx_id) = inner.book.lapsed_hold(&cmd, ts_ms) {
            let void = Command::Void {
                tx_id,
                why: VoidReason::Expired,
            };
            result = self.append(inner, void, ts_ms).map(|_| ());
            appended = result.is_ok();
        }
        let result = result
            .and_then(|()| inner.book.admit(&cmd))
            .and_then(|()| self.append(inner, cmd, ts_ms));
        appended |= result.is_ok();
        let applied = result.map(|(outcome, seq)| Applied {
            outcome,
            ticket: seq,
            replayed: false,
        });
        (applied, appended)
    }

    /// Applies a new command as the next record and, unless the ledger is in memory, queues
    /// the record for the journal; the flusher is not woken here.
    fn append(
        &self,
        inner: &mut Inner,
        cmd: Command,
        ts_ms: i64,
    ) -> Result<(Outcome, u64), LedgerError> {
        let seq = inner.next_seq;
        if self.shared.memory {
            let outcome = inner.book.apply(&cmd, ts_ms, seq)?;
            inner.next_seq += 1;
            return Ok((outcome, seq));
        }
        let rec = Record { seq, ts_ms, cmd };
        let frame = encode(&rec)?;
        let outcome = inner.book.apply(&rec.cmd, ts_ms, seq)?;
        inner.buf.extend_from_slice(&frame);
        inner.next_seq += 1;
        Ok((outcome, seq))
    }

    /// Blocks until `ticket` is durable.
    pub fn wait(&self, ticket: u64) -> Result<(), LedgerError> {
        if self.is_durable(ticket)? {
            return Ok(());
        }
        let mut d = lock(&self.shared.durable);
        while d.seq < ticket && !d.failed {
            d = self
                .shared
                .durable_cv
                .wait(d)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        if d.seq >= ticket {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// Waits until `ticket` is durable, without blocking a thread.
    pub async fn durable(&self, ticket: u64) -> Result<(), LedgerError> {
        if self.is_durable(ticket)? {
            return Ok(());
        }
        let rx = {
            let mut w = lock(&self.shared.waiters);
            // `mark` publishes before it takes this lock: checked again under it, a ticket
            // is either durable already or registered in time to be woken.
            if self.is_durable(ticket)? {
                return Ok(());
            }
            let (tx, rx) = tokio::sync::oneshot::channel();
            let id = w.next_id;
            w.next_id += 1;
            w.by_ticket.insert((ticket, id), tx);
            rx
        };
        let _ = rx.await;
        if self.is_durable(ticket)? {
            Ok(())
        } else {
            Err(self.failure())
        }
    }

    /// Whether `ticket` is durable; an error once the journal failed.
    pub fn is_durable(&self, ticket: u64) -> Result<bool, LedgerError> {
        if self.shared.memory || self.shared.durable_seq.load(Ordering::Acquire) >= ticket {
            return Ok(true);
        }
        if self.shared.durable_failed.load(Ordering::Acquire) {
            return Err(self.failure());
        }
        Ok(false)
    }

    fn failure(&self) -> LedgerError {
        LedgerError::Journal(
            lock(&self.shared.inner)
                .failed
                .clone()
                .unwrap_or_else(|| "the journal stopped".into()),
        )
    }

    /// The highest ticket handed out so far.
    pub fn last_ticket(&self) -> u64 {
        lock(&self.shared.inner).next_seq - 1
    }

    /// Reads the book under the lock.
    pub fn read<T>(&self, f: impl FnOnce(&Book) -> T) -> T {
        f(&lock(&self.shared.inner).book)
    }

    /// Releases every hold that lapsed by `now_ms`; returns the voided transfers and the last
    /// ticket.
    pub fn expire_due(&self, now_ms: i64) -> (Vec<Transfer>, u64) {
        let due = self.read(|b| b.expired(now_ms));
        let mut out = Vec::new();
        let mut ticket = 0;
        for tx_id in due {
            let cmd = Command::Void {
                tx_id,
                why: VoidReason::Expired,
            };
            // A hold voided meanwhile (replayed) is not reported again.
            if let Ok(a) = self.execute_at(cmd, now_ms)
                && !a.replayed
            {
                ticket = a.ticket;
                if let Outcome::Transfer(t) = a.outcome {
                    out.push(t);
                }
            }
        }
        (out, ticket)
    }

    /// The transfer command for `tx` as decided by `d` (or not decided yet: `None`).
    pub fn transfer_cmd(&self, tx: &Transaction, d: Option<&Decision>) -> TransferCmd {
        let (from, to) = self.read(|b| {
            // A retry is resolved as the transfer it repeats was: a merchant that has opened
            // a ledger account since was paid outside then, and the retry is the same request.
            // An account that was open before it resolves as one, so naming it where the first
            // request paid outside is another request (409). (Opened in the same millisecond
            // it would have been paid as an account, had the first request named it.)
            let before = b.get_transfer(&tx.tx_id);
            TransferCmd::parties(
                tx.kind,
                &tx.account_id,
                tx.counterparty_id.as_deref(),
                |id| match before {
                    Some(t) => {
                        t.to.account() == Some(id)
                            || b.opened_ms(id).is_some_and(|o| o < t.created_ms)
                    }
                    None => b.has_account(id),
                },
            )
        });
        let agrees = d.filter(|d| d.first_action.is_none_or(|f| f == d.action));
        TransferCmd {
            tx_id: tx.tx_id.to_string(),
            kind: tx.kind,
            from,
            to,
            amount: tx.amount_minor,
            currency: tx.currency.code().to_string(),
            // A duplicate settles as its first decision answered (what the payment service
            // acted on); this evaluation's rules and score go with it only if it agrees.
            risk: d.map_or(Risk::Allow, |d| Risk::from_action(d.acted_action())),
            rules: agrees.map_or_else(Vec::new, |d| d.acting().map(|r| r.rule.clone()).collect()),
            score: agrees.map_or(0, |d| d.score),
        }
    }

    /// The stored result if `tx` was settled before (a retry), without deciding it again;
    /// a conflict if its id was used for a different transfer.
    pub fn repeated(&self, tx: &Transaction) -> Result<Option<Applied>, LedgerError> {
        let cmd = Command::Transfer(self.transfer_cmd(tx, None));
        Ok(self
            .read(|b| b.replayed(&cmd))?
            .map(|(outcome, ticket)| Applied {
                outcome,
                ticket,
                replayed: true,
            }))
    }

    /// Settles, holds or declines a decided transaction; freezes the payer when an acting rule
    /// asked to (once). Returns the transfer's result and the last ticket to wait on.
    ///
    /// The transfer and the freeze are appended under one lock, so the flusher takes both
    /// records in one write: apart, a crash of the process between them would leave the payer
    /// unfrozen, and the request's retry (answered from the stored transfer) would never freeze
    /// it. (A power loss can still tear that write after the transfer's record.)
    pub fn settle_decided(
        &self,
        tx: &Transaction,
        d: &Decision,
    ) -> Result<(Applied, u64), LedgerError> {
        let cmd = Command::Transfer(self.transfer_cmd(tx, Some(d)));
        let now = now_ms();
        let mut inner = lock(&self.shared.inner);
        let (result, mut appended) = self.execute_in(&mut inner, cmd, now);
        let result = match result {
            Ok(applied) => match freeze_cmd(&inner.book, tx, d) {
                Some(freeze) => {
                    let (frozen, more) = self.execute_in(&mut inner, freeze, now);
                    appended |= more;
                    frozen.map(|f| {
                        let ticket = applied.ticket.max(f.ticket);
                        (applied, ticket)
                    })
                }
                None => {
                    let ticket = applied.ticket;
                    Ok((applied, ticket))
                }
            },
            Err(e) => Err(e),
        };
        self.unlock(inner, appended);
        result
    }

    /// Freezes the payer in the ledger when `d` asks for a freeze the first time and the
    /// account is in the ledger; returns the ticket.
    pub fn freeze_decided(
        &self,
        tx: &Transaction,
        d: &Decision,
    ) -> Result<Option<u64>, LedgerError> {
        let mut inner = lock(&self.shared.inner);
        let Some(freeze) = freeze_cmd(&inner.book, tx, d) else {
            return Ok(None);
        };
        let (result, appended) = self.execute_in(&mut inner, freeze, now_ms());
        self.unlock(inner, appended);
        Ok(Some(result?.ticket))
    }

    /// Whether the journal takes writes.
    pub fn healthy(&self) -> bool {
        lock(&self.shared.inner).failed.is_none()
    }

    /// The journal file, if any.
    pub fn path(&self) -> Option<&Path> {
        self.shared.path.as_deref()
    }

    /// Flushes what is buffered and stops the flusher. Later writes fail.
    pub fn close(&self) {
        {
            let mut inner = lock(&self.shared.inner);
            inner.closed = true;
            if self.shared.memory {
                inner
                    .failed
                    .get_or_insert_with(|| "the ledger is closed".into());
            }
        }
        self.shared.wake.notify_all();
        if let Some(h) = lock(&self.flusher).take() {
            let _ = h.join();
        }
    }
}

fn flush_loop(s: &Shared, mut file: File) {
    let mut spare: Vec<u8> = Vec::with_capacity(1 << 16);
    loop {
        let last = {
            let mut inner = lock(&s.inner);
            while inner.buf.is_empty() && !inner.closed {
                inner.flusher_idle = true;
                inner = s
                    .wake
                    .wait(inner)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            inner.flusher_idle = false;
            if inner.buf.is_empty() {
                inner
                    .failed
                    .get_or_insert_with(|| "the ledger is closed".into());
                drop(inner);
                mark(s, None);
                return;
            }
            std::mem::swap(&mut inner.buf, &mut spare);
            inner.next_seq - 1
        };
        let result = file.write_all(&spare).and_then(|()| file.sync_data());
        spare.clear();
        if let Err(e) = result {
            let msg = format!("writing the journal failed: {e}");
            tracing::error!("{msg}; the ledger takes no more writes");
            lock(&s.inner).failed = Some(msg);
            mark(s, None);
            return;
        }
        mark(s, Some(last));
    }
}

fn mark(s: &Shared, seq: Option<u64>) {
    let mut d = lock(&s.durable);
    match seq {
        Some(seq) => d.seq = seq,
        None => d.failed = true,
    }
    let now = *d;
    s.durable_seq.store(now.seq, Ordering::Release);
    s.durable_failed.store(now.failed, Ordering::Release);
    drop(d);
    s.durable_cv.notify_all();
    let due = {
        let mut w = lock(&s.waiters);
        if now.failed {
            std::mem::take(&mut w.by_ticket)
        } else {
            let later = w.by_ticket.split_off(&(now.seq + 1, 0));
            std::mem::replace(&mut w.by_ticket, later)
        }
    };
    for tx in due.into_values() {
        let _ = tx.send(());
    }
}

#[cfg(test)]
mod tests;
