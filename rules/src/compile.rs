//! The checker: resolves names, checks types and limits, and compiles an [`Expr`] into typed
//! program nodes.

use std::collections::HashMap;

use crate::catalog::{self, AccountEventKind, AggSpec, Domain, Feature, Named, Ty};
use crate::diag::suggest;
use crate::parse::{BinOp, Expr, ExprKind, Span};
use crate::program::{Arith, B, Cmp, D, N, S, StrSet, Term, TermNode};

/// A checked expression, typed.
#[derive(Debug, Clone)]
enum Typed {
    Num(N),
    Dur(D),
    Bool(B),
    Str(S, Domain),
    /// A list: an index into the program's lists, or the home countries.
    List(Option<u32>),
}

impl Typed {
    fn ty(&self) -> Ty {
        match self {
            Typed::Num(_) => Ty::Num,
            Typed::Dur(_) => Ty::Dur,
            Typed::Bool(_) => Ty::Bool,
            Typed::Str(..) => Ty::Str,
            Typed::List(_) => Ty::List,
        }
    }
}

/// A type or name error at a span of the expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckError {
    /// Where, within the expression.
    pub span: Span,
    /// What is wrong.
    pub message: String,
}

type R<T> = Result<T, CheckError>;

fn err<T>(span: Span, message: impl Into<String>) -> R<T> {
    Err(CheckError {
        span,
        message: message.into(),
    })
}

/// Shared state while compiling a pack: the features and lists all rules use.
#[derive(Debug)]
pub struct Compiler<'p> {
    /// Named lists of the pack, by name → index in `lists`.
    pub named_lists: &'p HashMap<String, u32>,
    /// All lists, named ones first; inline lists are appended.
    pub lists: Vec<StrSet>,
    /// Feature slots.
    pub features: Vec<Feature>,
    /// Longest window a rule may use, milliseconds.
    pub window_ms_max: i64,
    /// Whether any rule reads `home_countries`.
    pub uses_home_countries: bool,
}

/// Limits on features per pack, so state work per event stays bounded.
pub const FEATURES_MAX: usize = 256;

impl Compiler<'_> {
    /// Compiles a rule condition; it must be boolean. Returns the node and its terms.
    pub fn condition(&mut self, src: &str, e: &Expr) -> R<(B, Vec<Term>)> {
        let mut terms = Vec::new();
        let t = self.expr(src, e, &mut terms)?;
        match t {
            Typed::Bool(b) => Ok((crate::program::optimize(b, &self.lists), terms)),
            other => err(
                e.span,
                format!(
                    "a rule's 'when' must be true or false, but this is a {}",
                    other.ty().name()
                ),
            ),
        }
    }

    fn slot(&mut self, f: Feature, span: Span) -> R<u16> {
        if let Some(i) = self.features.iter().position(|x| *x == f) {
            return Ok(i as u16);
        }
        if self.features.len() >= FEATURES_MAX {
            return err(
                span,
                format!("the pack uses more than {FEATURES_MAX} distinct features"),
            );
        }
        self.features.push(f);
        Ok((self.features.len() - 1) as u16)
    }

    fn feature(&mut self, f: Feature, span: Span) -> R<Typed> {
        let slot = self.slot(f, span)?;
        Ok(match f.ty() {
            Ty::Num => Typed::Num(N::Feature(slot)),
            Ty::Dur => Typed::Dur(D::Feature(slot)),
            _ => Typed::Bool(B::Feature(slot)),
        })
    }

    fn window(&self, ms: i64, span: Span) -> R<i64> {
        if ms < 1000 {
            return err(span, "a window must be at least 1s");
        }
        if ms > self.window_ms_max {
            return err(
                span,
                format!(
                    "window {} is longer than the limit of {}",
                    crate::num::format_duration(ms),
                    crate::num::format_duration(self.window_ms_max)
                ),
            );
        }
        Ok(ms)
    }

    fn push_term(terms: &mut Vec<Term>, src: &str, span: Span, t: &Typed) {
        let text = src
            .get(span.start..span.end)
            .unwrap_or_default()
            .to_string();
        if terms.iter().any(|x| x.text == text) {
            return;
        }
        let node = match t {
            Typed::Num(n) => TermNode::Num(n.clone()),
            Typed::Dur(d) => TermNode::Dur(d.clone()),
            Typed::Bool(b) => TermNode::Bool(b.clone()),
            Typed::Str(s, _) => TermNode::Str(s.clone()),
            Typed::List(None) => TermNode::HomeCountries,
            Typed::List(Some(_)) => return,
        };
        terms.push(Term { text, node });
    }

    fn expr(&mut self, src: &str, e: &Expr, terms: &mut Vec<Term>) -> R<Typed> {
        let t = match &e.kind {
            ExprKind::Num(v) => return Ok(Typed::Num(N::Const(*v))),
            ExprKind::Dur(v) => return Ok(Typed::Dur(D::Const(*v))),
            ExprKind::Bool(b) => return Ok(Typed::Bool(B::Const(*b))),
            ExprKind::Str(s) => return Ok(Typed::Str(S::Const(s.clone().into()), Domain::Any)),
            ExprKind::List(items) => {
                self.lists
                    .push(StrSet::new(items.iter().map(|(s, _)| s.clone())));
                return Ok(Typed::List(Some((self.lists.len() - 1) as u32)));
            }
            ExprKind::Name(n) => self.name(n, e.span)?,
            ExprKind::Agg {
                func,
                measure,
                key,
                window,
            } => {
                let (f, k) = catalog::resolve_agg(func, &measure.0, &key.0)
                    .or_else(|(which, msg)| err(if which == 0 { measure.1 } else { key.1 }, msg))?;
                let window_ms = self.window(window.0, window.1)?;
                self.feature(
                    Feature::Agg(AggSpec {
                        func: f,
                        key: k,
                        window_ms,
                    }),
                    e.span,
                )?
            }
            ExprKind::Call {
                name,
                name_span,
                args,
            } => self.call(src, name, *name_span, args, e.span, terms)?,
            ExprKind::Not(inner) => {
                return match self.expr(src, inner, terms)? {
                    Typed::Bool(b) => Ok(Typed::Bool(B::Not(Box::new(b)))),
                    t => err(
                        inner.span,
                        format!("'not' needs true or false, but this is a {}", t.ty().name()),
                    ),
                };
            }
            ExprKind::Neg(inner) => {
                return match self.expr(src, inner, terms)? {
                    Typed::Num(n) => Ok(Typed::Num(N::Neg(Box::new(n)))),
                    Typed::Dur(d) => Ok(Typed::Dur(D::Neg(Box::new(d)))),
                    t => err(inner.span, format!("cannot negate a {}", t.ty().name())),
                };
            }
            ExprKind::Binary {
                op,
                op_span,
                lhs,
                rhs,
            } => {
                let l = self.expr(src, lhs, terms)?;
                let r = self.expr(src, rhs, terms)?;
                return self.binary(*op, *op_span, l, r, lhs, rhs);
            }
            ExprKind::In { negated, lhs, rhs } => {
                let l = self.expr(src, lhs, terms)?;
                let r = self.expr(src, rhs, terms)?;
                let (s, domain) = match l {
                    Typed::Str(s, d) => (s, d),
                    t => {
                        return err(
                            lhs.span,
                            format!("'in' looks up text, but this is a {}", t.ty().name()),
                        );
                    }
                };
                return match r {
                    Typed::List(Some(idx)) => {
                        if let ExprKind::List(items) = &rhs.kind {
                            for (item, span) in items {
                                catalog::check_domain(domain, item).or_else(|m| err(*span, m))?;
                            }
                        } else if let Some(set) = self.lists.get(idx as usize) {
                            let mut items: Vec<&str> = set.iter().collect();
                            items.sort_unstable();
                            for item in items {
                                catalog::check_domain(domain, item).or_else(|m| {
                                    err(
                                        rhs.span,
                                        format!(
                                            "this list holds '{item}', which never matches: {m}"
                                        ),
                                    )
                                })?;
                            }
                        }
                        Ok(Typed::Bool(B::InList(*negated, s, idx)))
                    }
                    Typed::List(None) => Ok(Typed::Bool(B::InHomeCountries(*negated, s))),
                    t => err(
                        rhs.span,
                        format!(
                            "'in' needs a list such as [\"KP\", \"IR\"] or a list name, but this is a {}",
                            t.ty().name()
                        ),
                    ),
                };
            }
        };
        Self::push_term(terms, src, e.span, &t);
        Ok(t)
    }

    fn name(&mut self, n: &str, span: Span) -> R<Typed> {
        if let Some(named) = catalog::lookup(n) {
            return match named {
                Named::Str(f, d) => Ok(Typed::Str(S::Field(f), d)),
                Named::Num(f) => Ok(Typed::Num(N::Field(f))),
                Named::HasGeo => Ok(Typed::Bool(B::HasGeo)),
                Named::Feature(f) => self.feature(f, span),
                Named::HomeCountries => {
                    self.uses_home_countries = true;
                    Ok(Typed::List(None))
                }
            };
        }
        if let Some(&idx) = self.named_lists.get(n) {
            return Ok(Typed::List(Some(idx)));
        }
        if catalog::FUNCTIONS.contains(&n) || crate::parse::AGG_FUNCS.contains(&n) {
            return err(
                span,
                format!(
                    "'{n}' is a function: call it with arguments, e.g. {}",
                    example(n)
                ),
            );
        }
        let mut names: Vec<&str> = self.named_lists.keys().map(String::as_str).collect();
        for n in catalog::all_names() {
            names.push(n);
        }
        let hint = suggest(n, names);
        err(span, format!("unknown field, function or list '{n}'{hint}"))
    }

    fn call(
        &mut self,
        src: &str,
        name: &str,
        name_span: Span,
        args: &[Expr],
        span: Span,
        terms: &mut Vec<Term>,
    ) -> R<Typed> {
        let want = |n: usize| -> R<()> {
            if args.len() == n {
                Ok(())
            } else {
                err(
                    span,
                    format!(
                        "{name} takes {n} argument{}, e.g. {}",
                        if n == 1 { "" } else { "s" },
                        example(name)
                    ),
                )
            }
        };
        match name {
            "since" => {
                want(1)?;
                let ExprKind::Name(kind) = &args[0].kind else {
                    return err(
                        args[0].span,
                        format!(
                            "since takes an account event kind: {}",
                            catalog::ACCOUNT_EVENT_KINDS.join(", ")
                        ),
                    );
                };
                let k = AccountEventKind::from_name(kind).ok_or_else(|| CheckError {
                    span: args[0].span,
                    message: format!(
                        "unknown account event '{kind}'{}; kinds are {}",
                        suggest(kind, catalog::ACCOUNT_EVENT_KINDS),
                        catalog::ACCOUNT_EVENT_KINDS.join(", ")
                    ),
                })?;
                self.feature(Feature::Since(k), span)
            }
            "usual_amount" => {
                want(1)?;
                let ExprKind::Dur(ms) = args[0].kind else {
                    return err(
                        args[0].span,
                        "usual_amount takes a window, e.g. usual_amount(30d)",
                    );
                };
                let window_ms = self.window(ms, args[0].span)?;
                self.feature(Feature::UsualAmount { window_ms }, span)
            }
            "abs" => {
                want(1)?;
                match self.expr(src, &args[0], terms)? {
                    Typed::Num(n) => Ok(Typed::Num(N::Abs(Box::new(n)))),
                    t => err(
                        args[0].span,
                        format!("abs takes a number, but this is a {}", t.ty().name()),
                    ),
                }
            }
            "contains" => {
                want(2)?;
                let hay = match self.expr(src, &args[0], terms)? {
                    Typed::Str(s, _) => s,
                    t => {
                        return err(
                            args[0].span,
                            format!("contains looks in text, but this is a {}", t.ty().name()),
                        );
                    }
                };
                let ExprKind::Str(needle) = &args[1].kind else {
                    return err(
                        args[1].span,
                        "contains takes a fixed string to look for, e.g. contains(memo, \"gift card\")",
                    );
                };
                Ok(Typed::Bool(B::Contains(
                    hay,
                    needle.to_ascii_lowercase().into(),
                )))
            }
            agg if crate::parse::AGG_FUNCS.contains(&agg) => err(
                span,
                format!(
                    "{agg} takes the form {agg}(MEASURE by KEY over WINDOW), e.g. {}",
                    example(agg)
                ),
            ),
            _ => {
                let candidates: Vec<&str> = catalog::all_names().collect();
                err(
                    name_span,
                    format!("unknown function '{name}'{}", suggest(name, candidates)),
                )
            }
        }
    }

    fn binary(
        &mut self,
        op: BinOp,
        op_span: Span,
        l: Typed,
        r: Typed,
        le: &Expr,
        re: &Expr,
    ) -> R<Typed> {
        let mismatch = |l: &Typed, r: &Typed| -> R<Typed> {
            let hint = match (l.ty(), r.ty()) {
                (Ty::Dur, Ty::Num) | (Ty::Num, Ty::Dur) => {
                    " (durations carry a unit, such as 10m or 2d; numbers such as hour or amount do not)"
                }
                (Ty::Str, Ty::Num) | (Ty::Num, Ty::Str) => " (numbers are written without quotes)",
                _ => "",
            };
            err(
                op_span,
                format!(
                    "type mismatch: cannot apply '{}' to a {} and a {}{hint}",
                    op.symbol(),
                    l.ty().name(),
                    r.ty().name()
                ),
            )
        };
        match op {
            BinOp::And | BinOp::Or => match (l, r) {
                (Typed::Bool(a), Typed::Bool(b)) => {
                    let pair = Box::new((a, b));
                    Ok(Typed::Bool(if op == BinOp::And {
                        B::And(pair)
                    } else {
                        B::Or(pair)
                    }))
                }
                (Typed::Bool(_), t) => err(
                    re.span,
                    format!(
                        "'{}' needs true or false on both sides, but this is a {}",
                        op.symbol(),
                        t.ty().name()
                    ),
                ),
                (t, _) => err(
                    le.span,
                    format!(
                        "'{}' needs true or false on both sides, but this is a {}",
                        op.symbol(),
                        t.ty().name()
                    ),
                ),
            },
            BinOp::Eq | BinOp::Ne | BinOp::Lt | BinOp::Le | BinOp::Gt | BinOp::Ge => {
                let cmp = match op {
                    BinOp::Eq => Cmp::Eq,
                    BinOp::Ne => Cmp::Ne,
                    BinOp::Lt => Cmp::Lt,
                    BinOp::Le => Cmp::Le,
                    BinOp::Gt => Cmp::Gt,
                    _ => Cmp::Ge,
                };
                let eq = matches!(cmp, Cmp::Eq | Cmp::Ne);
                match (l, r) {
                    (Typed::Num(a), Typed::Num(b)) => {
                        Ok(Typed::Bool(B::CmpNum(cmp, Box::new((a, b)))))
                    }
                    (Typed::Dur(a), Typed::Dur(b)) => {
                        Ok(Typed::Bool(B::CmpDur(cmp, Box::new((a, b)))))
                    }
                    (Typed::Bool(a), Typed::Bool(b)) if eq => {
                        Ok(Typed::Bool(B::CmpBool(cmp == Cmp::Eq, Box::new((a, b)))))
                    }
                    (Typed::Str(a, da), Typed::Str(b, db)) if eq => {
                        for (s, d, e) in [(&b, da, re), (&a, db, le)] {
                            if let S::Const(lit) = s {
                                catalog::check_domain(d, lit).or_else(|m| err(e.span, m))?;
                            }
                        }
                        Ok(Typed::Bool(B::EqStr(cmp == Cmp::Eq, a, b)))
                    }
                    (Typed::Str(..), Typed::Str(..)) | (Typed::Bool(_), Typed::Bool(_)) => err(
                        op_span,
                        format!(
                            "'{}' does not order text or booleans; use == or !=",
                            op.symbol()
                        ),
                    ),
                    (l, r) => mismatch(&l, &r),
                }
            }
            BinOp::Add | BinOp::Sub | BinOp::Mul | BinOp::Div | BinOp::Rem => {
                let arith = match op {
                    BinOp::Add => Arith::Add,
                    BinOp::Sub => Arith::Sub,
                    BinOp::Mul => Arith::Mul,
                    BinOp::Div => Arith::Div,
                    _ => Arith::Rem,
                };
                match (l, r) {
                    (Typed::Num(a), Typed::Num(b)) => {
                        Ok(Typed::Num(N::Arith(arith, Box::new((a, b)))))
                    }
                    (Typed::Dur(a), Typed::Dur(b)) if arith == Arith::Add => {
                        Ok(Typed::Dur(D::Add(Box::new((a, b)))))
                    }
                    (Typed::Dur(a), Typed::Dur(b)) if arith == Arith::Sub => {
                        Ok(Typed::Dur(D::Sub(Box::new((a, b)))))
                    }
                    (Typed::Dur(a), Typed::Num(b)) | (Typed::Num(b), Typed::Dur(a))
                        if arith == Arith::Mul =>
                    {
                        Ok(Typed::Dur(D::Scale(Box::new((a, b)))))
                    }
                    (l, r) => mismatch(&l, &r),
                }
            }
        }
    }
}

fn example(name: &str) -> &'static str {
    match name {
        "since" => "since(password_reset) < 1h",
        "usual_amount" => "amount > 10 * usual_amount(30d)",
        "abs" => "abs(amount - 100) < 1",
        "contains" => "contains(memo, \"gift card\")",
        "count" => "count(tx by account over 10m)",
        "distinct" => "distinct(counterparty by account over 1h)",
        _ => "sum(amount by account over 24h)",
    }
}
