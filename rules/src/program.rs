//! Compiled programs and their evaluation.
//!
//! The checker turns each rule's expression into typed nodes ([`B`], [`N`], [`D`], [`S`]) whose
//! names are already resolved to field tags, feature slots and list indices, so evaluation is a
//! walk over a small tree that reads [`Facts`] and never allocates, looks up a name or checks a
//! type.

use rustc_hash::FxHashSet;

use crate::catalog::{Feature, NumField, StrField, TX_KINDS};
use crate::num;

/// The "never happened" duration returned by `since(...)` for an event the account never had.
/// Comparisons such as `since(password_reset) < 1h` are then false.
pub const NEVER_MS: i64 = i64::MAX / 4;

/// The bit that stands for a transaction kind that is none of [`TX_KINDS`] (or no kind).
pub const KIND_OTHER: u8 = 1 << TX_KINDS.len();
/// Every kind's bit, [`KIND_OTHER`] included.
pub const KINDS_ALL: u8 = KIND_OTHER | (KIND_OTHER - 1);

/// A rule's slot in [`Program::evaluate_timed`]'s times when it was not evaluated.
pub const NOT_EVALUATED: u64 = u64::MAX;

/// A transaction kind's bit: `1 << i` for the kind at `i` in [`TX_KINDS`], else [`KIND_OTHER`].
pub fn kind_bit(kind: &str) -> u8 {
    TX_KINDS
        .iter()
        .position(|k| *k == kind)
        .map_or(KIND_OTHER, |i| 1 << i)
}

/// What a decision does, ranked: the highest wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Action {
    /// Let it through.
    #[default]
    Allow,
    /// Let it through held, for an analyst to review.
    Review,
    /// Ask the account holder to confirm (step-up authentication).
    StepUp,
    /// Stop it.
    Block,
}

impl Action {
    /// All actions, lowest first.
    pub const ALL: [Action; 4] = [Action::Allow, Action::Review, Action::StepUp, Action::Block];
    /// The action's name in rules and decisions.
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Review => "review",
            Action::StepUp => "step_up",
            Action::Block => "block",
        }
    }
    /// Looks an action up by name.
    pub fn from_name(name: &str) -> Option<Action> {
        Action::ALL.into_iter().find(|a| a.name() == name)
    }
}

/// Where the values of a program's feature slots come from. The engine computes them on
/// demand, so a feature no reached condition reads (a 30-day average behind
/// `kind == 'withdrawal'`, say) costs nothing; a slice of values computed up front serves too.
pub trait FeatureSource: std::fmt::Debug {
    /// The value of slot `slot`: numbers fixed point, durations in milliseconds, booleans 0 or
    /// 1; 0 for a slot the source does not have.
    fn feature(&self, slot: u16) -> i64;
}

impl<T: AsRef<[i64]> + std::fmt::Debug> FeatureSource for T {
    #[inline]
    fn feature(&self, slot: u16) -> i64 {
        self.as_ref().get(usize::from(slot)).copied().unwrap_or(0)
    }
}

const NO_FEATURES: [i64; 0] = [];

/// The input of one evaluation: the transaction's fields and where the feature values for
/// this program's slots come from. Everything is borrowed; building it allocates nothing.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// Amount in major units, fixed point ([`crate::num`]).
    pub amount: i64,
    /// Hour of day (UTC), fixed point.
    pub hour: i64,
    /// Whether the event carried a location.
    pub has_geo: bool,
    /// Transaction kind.
    pub kind: &'a str,
    /// `kind`'s bit, which must be [`kind_bit`]`(kind)`; or 0 to have it worked out from
    /// `kind` for each evaluation.
    pub kind_bit: u8,
    /// ISO 4217 code.
    pub currency: &'a str,
    /// Channel (app, web, …).
    pub channel: &'a str,
    /// ISO 3166 code, or empty.
    pub country: &'a str,
    /// Paying account.
    pub account_id: &'a str,
    /// Payee, or empty.
    pub counterparty_id: &'a str,
    /// Device, or empty.
    pub device_id: &'a str,
    /// IP address, or empty.
    pub ip: &'a str,
    /// Memo, or empty.
    pub memo: &'a str,
    /// The account's home countries.
    pub home_countries: &'a [[u8; 2]],
    /// The values of the [`Program::features`] slots, by slot.
    pub features: &'a dyn FeatureSource,
}

impl Default for Facts<'_> {
    fn default() -> Self {
        Facts {
            amount: 0,
            hour: 0,
            has_geo: false,
            kind: "",
            kind_bit: 0,
            currency: "",
            channel: "",
            country: "",
            account_id: "",
            counterparty_id: "",
            device_id: "",
            ip: "",
            memo: "",
            home_countries: &[],
            features: &NO_FEATURES,
        }
    }
}

impl<'a> Facts<'a> {
    #[inline]
    fn str_field(&self, f: StrField) -> &'a str {
        match f {
            StrField::Kind => self.kind,
            StrField::Currency => self.currency,
            StrField::Channel => self.channel,
            StrField::Country => self.country,
            StrField::AccountId => self.account_id,
            StrField::CounterpartyId => self.counterparty_id,
            StrField::DeviceId => self.device_id,
            StrField::Ip => self.ip,
            StrField::Memo => self.memo,
        }
    }
    #[inline]
    fn feature(&self, slot: u16) -> i64 {
        self.features.feature(slot)
    }
    #[inline]
    fn num_field(&self, f: NumField) -> i64 {
        match f {
            NumField::Amount => self.amount,
            NumField::Hour => self.hour,
        }
    }
    /// The kind's bit, as given or worked out from `kind`.
    #[inline]
    pub fn kind_bit(&self) -> u8 {
        if self.kind_bit != 0 {
            self.kind_bit
        } else {
            kind_bit(self.kind)
        }
    }
}

/// Comparison operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

impl Cmp {
    #[inline]
    fn apply<T: Ord>(self, a: T, b: T) -> bool {
        match self {
            Cmp::Eq => a == b,
            Cmp::Ne => a != b,
            Cmp::Lt => a < b,
            Cmp::Le => a <= b,
            Cmp::Gt => a > b,
            Cmp::Ge => a >= b,
        }
    }
}

/// Arithmetic operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Arith {
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

/// A set of strings for `in`: a short list is scanned, a long one hashed.
#[derive(Debug, Clone)]
pub enum StrSet {
    /// Up to [`StrSet::SCAN_MAX`] items, each of at most 7 bytes (country codes, say),
    /// scanned as numbers ([`short_key`]); and the items.
    Short(Box<[u64]>, Box<[Box<str>]>),
    /// Up to [`StrSet::SCAN_MAX`] items.
    Scan(Box<[Box<str>]>),
    /// More items.
    Hash(FxHashSet<Box<str>>),
}

/// A text of at most 7 bytes as one number (its bytes, then its length in the top byte), so
/// two short texts compare in one instruction instead of a `memcmp` call; `None` if longer.
#[inline]
pub fn short_key(s: &str) -> Option<u64> {
    let b = s.as_bytes();
    (b.len() <= 7).then(|| {
        // Byte by byte: a copy of a variable length would be a `memcpy` call.
        let mut k = (b.len() as u64) << 56;
        for (i, &c) in b.iter().enumerate() {
            k |= u64::from(c) << (8 * i);
        }
        k
    })
}

impl StrSet {
    /// Above this many items a set is hashed.
    pub const SCAN_MAX: usize = 12;

    /// Builds a set from its items.
    pub fn new(items: impl IntoIterator<Item = String>) -> StrSet {
        let mut v: Vec<Box<str>> = items.into_iter().map(String::into_boxed_str).collect();
        v.sort();
        v.dedup();
        if v.len() <= Self::SCAN_MAX {
            match v
                .iter()
                .map(|s| short_key(s))
                .collect::<Option<Box<[u64]>>>()
            {
                Some(keys) => StrSet::Short(keys, v.into_boxed_slice()),
                None => StrSet::Scan(v.into_boxed_slice()),
            }
        } else {
            StrSet::Hash(v.into_iter().collect())
        }
    }
    /// Whether `s` is in the set.
    #[inline]
    pub fn contains(&self, s: &str) -> bool {
        match self {
            StrSet::Short(keys, _) => short_key(s).is_some_and(|k| keys.contains(&k)),
            StrSet::Scan(v) => v.iter().any(|x| &**x == s),
            StrSet::Hash(h) => h.contains(s),
        }
    }
    /// The items, in no particular order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = &str> + '_> {
        match self {
            StrSet::Short(_, v) | StrSet::Scan(v) => Box::new(v.iter().map(|s| &**s)),
            StrSet::Hash(h) => Box::new(h.iter().map(|s| &**s)),
        }
    }
    /// How many items.
    pub fn len(&self) -> usize {
        match self {
            StrSet::Short(_, v) | StrSet::Scan(v) => v.len(),
            StrSet::Hash(h) => h.len(),
        }
    }
    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A boolean node. `None` from evaluation is a rule error (overflow, division by zero).
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum B {
    Const(bool),
    HasGeo,
    Feature(u16),
    Not(Box<B>),
    And(Box<(B, B)>),
    Or(Box<(B, B)>),
    CmpNum(Cmp, Box<(N, N)>),
    CmpDur(Cmp, Box<(D, D)>),
    CmpBool(bool, Box<(B, B)>),
    EqStr(bool, S, S),
    /// `negated`, the value, the list index.
    InList(bool, S, u32),
    InHomeCountries(bool, S),
    /// Case-insensitive substring; the needle is stored lowercase.
    Contains(S, Box<str>),
    /// All of these (a flattened chain of `and`), left to right.
    All(Box<[B]>),
    /// Any of these (a flattened chain of `or`), left to right.
    Any(Box<[B]>),
    /// A number field against a constant: the commonest test, without boxes.
    FieldK(Cmp, NumField, i64),
    /// A feature slot (number or duration) against a constant.
    FeatureK(Cmp, u16, i64),
    /// The transaction's kind is one of these ([`kind_bit`]s): `kind == "payment"` or
    /// `kind in [...]` without comparing text.
    KindIn(u8),
}

impl Cmp {
    /// The comparison with its operands swapped: `k < x` is `x > k`.
    fn flip(self) -> Cmp {
        match self {
            Cmp::Lt => Cmp::Gt,
            Cmp::Le => Cmp::Ge,
            Cmp::Gt => Cmp::Lt,
            Cmp::Ge => Cmp::Le,
            c => c,
        }
    }
}

fn flatten(b: B, and: bool, out: &mut Vec<B>, lists: &[StrSet]) {
    match b {
        B::And(ab) if and => {
            let (x, y) = *ab;
            flatten(x, and, out, lists);
            flatten(y, and, out, lists);
        }
        B::Or(ab) if !and => {
            let (x, y) = *ab;
            flatten(x, and, out, lists);
            flatten(y, and, out, lists);
        }
        other => out.push(optimize(other, lists)),
    }
}

/// The kinds' bits of `items` when every one is a transaction kind.
fn kinds_mask<'s>(items: impl IntoIterator<Item = &'s str>) -> Option<u8> {
    items
        .into_iter()
        .try_fold(0, |m, s| TX_KINDS.contains(&s).then(|| m | kind_bit(s)))
}

/// Rewrites a checked condition into cheaper nodes with the same meaning: `and`/`or` chains
/// become flat lists, comparisons of a field or feature with a constant lose their boxes, and
/// tests of the kind against kinds (in `lists`, for `in`) become bit tests.
pub fn optimize(b: B, lists: &[StrSet]) -> B {
    match b {
        B::EqStr(eq, S::Field(StrField::Kind), S::Const(c))
        | B::EqStr(eq, S::Const(c), S::Field(StrField::Kind))
            if TX_KINDS.contains(&&*c) =>
        {
            let m = kind_bit(&c);
            B::KindIn(if eq { m } else { KINDS_ALL & !m })
        }
        B::InList(neg, s @ S::Field(StrField::Kind), idx) => {
            match lists.get(idx as usize).and_then(|l| kinds_mask(l.iter())) {
                Some(m) => B::KindIn(if neg { KINDS_ALL & !m } else { m }),
                None => B::InList(neg, s, idx),
            }
        }
        B::And(_) | B::Or(_) => {
            let and = matches!(b, B::And(_));
            let mut v = Vec::new();
            flatten(b, and, &mut v, lists);
            if and {
                B::All(v.into_boxed_slice())
            } else {
                B::Any(v.into_boxed_slice())
            }
        }
        B::Not(a) => match optimize(*a, lists) {
            B::KindIn(m) => B::KindIn(KINDS_ALL & !m),
            a => B::Not(Box::new(a)),
        },
        B::CmpNum(op, ab) => match *ab {
            (N::Field(f), N::Const(k)) => B::FieldK(op, f, k),
            (N::Const(k), N::Field(f)) => B::FieldK(op.flip(), f, k),
            (N::Feature(s), N::Const(k)) => B::FeatureK(op, s, k),
            (N::Const(k), N::Feature(s)) => B::FeatureK(op.flip(), s, k),
            pair => B::CmpNum(op, Box::new(pair)),
        },
        B::CmpDur(op, ab) => match *ab {
            (D::Feature(s), D::Const(k)) => B::FeatureK(op, s, k),
            (D::Const(k), D::Feature(s)) => B::FeatureK(op.flip(), s, k),
            pair => B::CmpDur(op, Box::new(pair)),
        },
        other => other,
    }
}

/// A number node, fixed point.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum N {
    Const(i64),
    Field(NumField),
    Feature(u16),
    Neg(Box<N>),
    Abs(Box<N>),
    Arith(Arith, Box<(N, N)>),
}

/// A duration node, milliseconds.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum D {
    Const(i64),
    Feature(u16),
    Neg(Box<D>),
    Add(Box<(D, D)>),
    Sub(Box<(D, D)>),
    Scale(Box<(D, N)>),
}

/// A string node.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum S {
    Const(Box<str>),
    Field(StrField),
}

impl S {
    #[inline]
    fn eval<'x>(&'x self, f: &Facts<'x>) -> &'x str {
        match self {
            S::Const(s) => s,
            S::Field(field) => f.str_field(*field),
        }
    }
}

impl N {
    /// Evaluates to a fixed-point number, `None` on overflow or division by zero.
    #[inline]
    pub fn eval(&self, f: &Facts<'_>) -> Option<i64> {
        match self {
            N::Const(v) => Some(*v),
            N::Field(NumField::Amount) => Some(f.amount),
            N::Field(NumField::Hour) => Some(f.hour),
            N::Feature(slot) => Some(f.feature(*slot)),
            N::Neg(a) => a.eval(f)?.checked_neg(),
            N::Abs(a) => a.eval(f)?.checked_abs(),
            N::Arith(op, ab) => {
                let (a, b) = (ab.0.eval(f)?, ab.1.eval(f)?);
                match op {
                    Arith::Add => a.checked_add(b),
                    Arith::Sub => a.checked_sub(b),
                    Arith::Mul => num::mul(a, b),
                    Arith::Div => num::div(a, b),
                    Arith::Rem => num::rem(a, b),
                }
            }
        }
    }
}

impl D {
    /// Evaluates to milliseconds, `None` on overflow.
    #[inline]
    pub fn eval(&self, f: &Facts<'_>) -> Option<i64> {
        match self {
            D::Const(v) => Some(*v),
            D::Feature(slot) => Some(f.feature(*slot)),
            D::Neg(a) => a.eval(f)?.checked_neg(),
            D::Add(ab) => ab.0.eval(f)?.checked_add(ab.1.eval(f)?),
            D::Sub(ab) => ab.0.eval(f)?.checked_sub(ab.1.eval(f)?),
            D::Scale(dn) => num::mul(dn.0.eval(f)?, dn.1.eval(f)?),
        }
    }
}

fn contains_ignore_case(hay: &str, needle_lower: &str) -> bool {
    let (h, n) = (hay.as_bytes(), needle_lower.as_bytes());
    n.is_empty()
        || h.windows(n.len())
            .any(|w| w.iter().zip(n).all(|(a, b)| a.to_ascii_lowercase() == *b))
}

impl N {
    /// Whether evaluation always gives a number (no arithmetic that could overflow).
    fn infallible(&self) -> bool {
        matches!(self, N::Const(_) | N::Field(_) | N::Feature(_))
    }
}

impl D {
    /// Whether evaluation always gives a duration.
    fn infallible(&self) -> bool {
        matches!(self, D::Const(_) | D::Feature(_))
    }
}

impl B {
    /// Whether evaluation always gives an answer (never a rule error). A list index is taken
    /// to be one of the program's lists, as the compiler makes it.
    fn infallible(&self) -> bool {
        match self {
            B::Not(a) => a.infallible(),
            B::And(ab) | B::Or(ab) | B::CmpBool(_, ab) => ab.0.infallible() && ab.1.infallible(),
            B::CmpNum(_, ab) => ab.0.infallible() && ab.1.infallible(),
            B::CmpDur(_, ab) => ab.0.infallible() && ab.1.infallible(),
            B::All(v) | B::Any(v) => v.iter().all(B::infallible),
            B::Const(_)
            | B::HasGeo
            | B::Feature(_)
            | B::EqStr(..)
            | B::InList(..)
            | B::InHomeCountries(..)
            | B::Contains(..)
            | B::FieldK(..)
            | B::FeatureK(..)
            | B::KindIn(_) => true,
        }
    }

    /// The kinds this condition can hold for: outside them it is surely false (never an
    /// error). Read from the kind tests of a top-level `and` that come before any term that
    /// could fail.
    pub fn kinds(&self) -> u8 {
        match self {
            B::KindIn(m) => *m,
            B::All(v) => {
                let mut m = KINDS_ALL;
                for b in v.iter() {
                    match b {
                        B::KindIn(k) => m &= k,
                        b if b.infallible() => {}
                        _ => break,
                    }
                }
                m
            }
            _ => KINDS_ALL,
        }
    }

    /// Evaluates to a boolean, `None` when an operand could not be computed.
    #[inline]
    pub fn eval(&self, f: &Facts<'_>, lists: &[StrSet]) -> Option<bool> {
        Some(match self {
            B::Const(b) => *b,
            B::HasGeo => f.has_geo,
            B::Feature(slot) => f.feature(*slot) != 0,
            B::Not(a) => !a.eval(f, lists)?,
            B::And(ab) => ab.0.eval(f, lists)? && ab.1.eval(f, lists)?,
            B::Or(ab) => ab.0.eval(f, lists)? || ab.1.eval(f, lists)?,
            B::CmpNum(op, ab) => op.apply(ab.0.eval(f)?, ab.1.eval(f)?),
            B::CmpDur(op, ab) => op.apply(ab.0.eval(f)?, ab.1.eval(f)?),
            B::CmpBool(eq, ab) => (ab.0.eval(f, lists)? == ab.1.eval(f, lists)?) == *eq,
            B::EqStr(eq, a, b) => (a.eval(f) == b.eval(f)) == *eq,
            B::InList(neg, s, idx) => {
                let set = lists.get(*idx as usize)?;
                set.contains(s.eval(f)) != *neg
            }
            B::InHomeCountries(neg, s) => {
                let found = <[u8; 2]>::try_from(s.eval(f).as_bytes())
                    .is_ok_and(|v| f.home_countries.contains(&v));
                found != *neg
            }
            B::Contains(s, needle) => contains_ignore_case(s.eval(f), needle),
            B::All(v) => {
                for b in v.iter() {
                    if !b.eval_term(f, lists)? {
                        return Some(false);
                    }
                }
                true
            }
            B::Any(v) => {
                for b in v.iter() {
                    if b.eval_term(f, lists)? {
                        return Some(true);
                    }
                }
                false
            }
            B::FieldK(op, field, k) => op.apply(f.num_field(*field), *k),
            B::FeatureK(op, slot, k) => op.apply(f.feature(*slot), *k),
            B::KindIn(m) => f.kind_bit() & m != 0,
        })
    }

    /// [`B::eval`] for a term of an `and` or `or` chain: the commonest leaves are answered
    /// here, without a call (in a chain, the call's entry and exit cost more than the test).
    #[inline(always)]
    fn eval_term(&self, f: &Facts<'_>, lists: &[StrSet]) -> Option<bool> {
        match self {
            B::KindIn(m) => Some(f.kind_bit() & m != 0),
            B::FieldK(op, field, k) => Some(op.apply(f.num_field(*field), *k)),
            B::FeatureK(op, slot, k) => Some(op.apply(f.feature(*slot), *k)),
            B::Feature(slot) => Some(f.feature(*slot) != 0),
            other => other.eval(f, lists),
        }
    }
}

/// A value shown in a decision's reasons.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A fixed-point number.
    Num(i64),
    /// A duration in milliseconds.
    Dur(i64),
    /// A boolean.
    Bool(bool),
    /// Text.
    Str(String),
    /// A list, e.g. the home countries.
    List(Vec<String>),
    /// The value could not be computed.
    Error,
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Num(v) => f.write_str(&num::format(*v)),
            Value::Dur(v) => f.write_str(&num::format_duration(*v)),
            Value::Bool(b) => write!(f, "{b}"),
            Value::Str(s) => f.write_str(s),
            Value::List(v) => write!(f, "[{}]", v.join(",")),
            Value::Error => f.write_str("error"),
        }
    }
}

/// A leaf of a rule's condition that reads the event or state, kept so a decision can say
/// which values made the rule fire.
#[derive(Debug, Clone)]
pub struct Term {
    /// The leaf as written, e.g. `count(tx by account over 10m)`.
    pub text: String,
    /// How to read it again.
    pub node: TermNode,
}

/// How a [`Term`] is read.
#[derive(Debug, Clone)]
#[allow(missing_docs)]
pub enum TermNode {
    Num(N),
    Dur(D),
    Bool(B),
    Str(S),
    HomeCountries,
}

impl Term {
    /// Reads the term's value for these facts.
    pub fn value(&self, f: &Facts<'_>, lists: &[StrSet]) -> Value {
        match &self.node {
            TermNode::Num(n) => n.eval(f).map_or(Value::Error, Value::Num),
            TermNode::Dur(d) => d.eval(f).map_or(Value::Error, Value::Dur),
            TermNode::Bool(b) => b.eval(f, lists).map_or(Value::Error, Value::Bool),
            TermNode::Str(s) => Value::Str(s.eval(f).to_string()),
            TermNode::HomeCountries => Value::List(
                f.home_countries
                    .iter()
                    .map(|c| String::from_utf8_lossy(c).into_owned())
                    .collect(),
            ),
        }
    }
}

/// A rule's settings, as written in the pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleMeta {
    /// Unique id, e.g. `velocity.card_testing`.
    pub id: String,
    /// What the rule is for.
    pub description: String,
    /// The action it asks for, if any (a rule may only add score).
    pub action: Option<Action>,
    /// Score it adds when it fires (may be negative).
    pub score: i64,
    /// Evaluated and reported, but does not act.
    pub shadow: bool,
    /// Ask for the account to be frozen when it fires.
    pub freeze: bool,
    /// Notification template to send when it fires.
    pub notify: Option<String>,
    /// The condition as written.
    pub when: String,
    /// Display path of the file it is in.
    pub file: String,
    /// Line of its `[[rule]]` header.
    pub line: u32,
}

/// A rule ready to evaluate.
#[derive(Debug, Clone)]
pub struct CompiledRule {
    /// Its settings.
    pub meta: RuleMeta,
    /// Its condition.
    pub cond: B,
    /// Its leaves that read the event or state.
    pub terms: Vec<Term>,
    /// The kinds ([`kind_bit`]s) of transaction it can fire for, from `cond`: evaluation
    /// skips it for the others.
    pub kinds: u8,
}

impl CompiledRule {
    /// A rule with this condition; works out the kinds it can fire for.
    pub fn new(meta: RuleMeta, cond: B, terms: Vec<Term>) -> CompiledRule {
        let kinds = cond.kinds();
        CompiledRule {
            meta,
            cond,
            terms,
            kinds,
        }
    }
}

/// Score thresholds: a total score at or above a threshold asks for that action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Thresholds {
    /// Score for review.
    pub review: Option<i64>,
    /// Score for step-up.
    pub step_up: Option<i64>,
    /// Score for block.
    pub block: Option<i64>,
}

impl Thresholds {
    /// The highest action whose threshold `score` reaches.
    pub fn action_for(&self, score: i64) -> Action {
        [
            (self.block, Action::Block),
            (self.step_up, Action::StepUp),
            (self.review, Action::Review),
        ]
        .into_iter()
        .find(|(t, _)| t.is_some_and(|t| score >= t))
        .map_or(Action::Allow, |(_, a)| a)
    }
}

/// One rule that fired.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fired {
    /// Index into [`Program::rules`].
    pub rule: u16,
    /// Shadow rules are reported but do not act.
    pub shadow: bool,
}

/// The result of evaluating a program; reuse one per thread so evaluation does not allocate.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    /// The winning action.
    pub action: Action,
    /// The total score of the acting rules that fired.
    pub score: i64,
    /// Fired rules in pack order, shadow ones included.
    pub fired: Vec<Fired>,
    /// Rules whose condition could not be computed (overflow, division by zero).
    pub errors: Vec<u16>,
}

impl Outcome {
    /// An outcome with room for `rules` rules, so evaluation never grows it.
    pub fn with_capacity(rules: usize) -> Outcome {
        Outcome {
            fired: Vec::with_capacity(rules),
            errors: Vec::with_capacity(rules),
            ..Outcome::default()
        }
    }
}

/// A compiled rule pack: rules with resolved names, the features they need, and the lists.
#[derive(Debug, Clone, Default)]
pub struct Program {
    /// Rules in pack order.
    pub rules: Vec<CompiledRule>,
    /// The features the rules read, one slot each.
    pub features: Vec<Feature>,
    /// The lists (inline and named), by index.
    pub lists: Vec<StrSet>,
    /// Score thresholds.
    pub thresholds: Thresholds,
    /// Whether a rule reads `home_countries` (the engine skips computing it otherwise).
    pub uses_home_countries: bool,
}

impl Program {
    /// Evaluates every rule against `facts` into `out` (cleared first). `muted(rule)` lets the
    /// caller silence a rule for this event (a snooze); a muted rule does not fire.
    #[inline]
    pub fn evaluate_with(&self, facts: &Facts<'_>, out: &mut Outcome, muted: impl Fn(u16) -> bool) {
        self.run::<false>(facts, out, muted, &mut []);
    }

    /// [`Program::evaluate_with`], also setting each evaluated rule's time in `nanos` (one
    /// slot per rule); a rule skipped because it cannot fire for the event's kind keeps its
    /// slot's value (fill with [`NOT_EVALUATED`] to tell). Two clock reads per rule: for
    /// sampled profiling, not every event.
    pub fn evaluate_timed(
        &self,
        facts: &Facts<'_>,
        out: &mut Outcome,
        muted: impl Fn(u16) -> bool,
        nanos: &mut [u64],
    ) {
        self.run::<true>(facts, out, muted, nanos);
    }

    #[inline]
    fn run<const TIMED: bool>(
        &self,
        facts: &Facts<'_>,
        out: &mut Outcome,
        muted: impl Fn(u16) -> bool,
        nanos: &mut [u64],
    ) {
        out.action = Action::Allow;
        out.score = 0;
        out.fired.clear();
        out.errors.clear();
        let mut action = Action::Allow;
        debug_assert!(facts.kind_bit == 0 || facts.kind_bit == kind_bit(facts.kind));
        let kind = facts.kind_bit();
        for (i, rule) in self.rules.iter().enumerate() {
            if rule.kinds & kind == 0 {
                continue;
            }
            let idx = i as u16;
            let t0 = TIMED.then(std::time::Instant::now);
            let r = rule.cond.eval(facts, &self.lists);
            if let (Some(t0), Some(n)) = (t0, nanos.get_mut(i)) {
                *n = (t0.elapsed().as_nanos() as u64).min(NOT_EVALUATED - 1);
            }
            match r {
                Some(true) if !muted(idx) => {
                    let shadow = rule.meta.shadow;
                    if !shadow {
                        out.score = out.score.saturating_add(rule.meta.score);
                        if let Some(a) = rule.meta.action {
                            action = action.max(a);
                        }
                    }
                    out.fired.push(Fired { rule: idx, shadow });
                }
                Some(_) => {}
                None => out.errors.push(idx),
            }
        }
        out.action = action.max(self.thresholds.action_for(out.score));
    }

    /// Evaluates every rule; see [`Program::evaluate_with`].
    #[inline]
    pub fn evaluate(&self, facts: &Facts<'_>, out: &mut Outcome) {
        self.evaluate_with(facts, out, |_| false);
    }

    /// The values that made rule `rule` fire, as `(term, value)` pairs.
    pub fn explain(&self, rule: u16, facts: &Facts<'_>) -> Vec<(String, Value)> {
        self.rules
            .get(usize::from(rule))
            .map(|r| {
                r.terms
                    .iter()
                    .map(|t| (t.text.clone(), t.value(facts, &self.lists)))
                    .collect()
            })
            .unwrap_or_default()
    }
}
