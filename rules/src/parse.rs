//! Lexer and parser for rule expressions: text → [`Expr`] tree with byte spans.
//!
//! Grammar, loosest binding first:
//!
//! ```text
//! expr    := or
//! or      := and ("or" and)*
//! and     := not ("and" not)*
//! not     := "not" not | compare
//! compare := sum (("==" | "!=" | "<" | "<=" | ">" | ">=") sum | "not"? "in" sum)?
//! sum     := product (("+" | "-") product)*
//! product := unary (("*" | "/" | "%") unary)*
//! unary   := "-" unary | primary
//! primary := NUMBER | DURATION | STRING | "true" | "false" | "[" (STRING ("," STRING)*)? "]"
//!          | "(" expr ")" | NAME | NAME "(" args ")"
//!          | AGG "(" NAME "by" NAME "over" DURATION ")"
//! ```

use rust_decimal::Decimal;
use std::str::FromStr;

use crate::num;

/// Deepest nesting an expression may have; deeper text is rejected, so evaluation never
/// recurses without bound.
pub const EXPR_DEPTH_MAX: usize = 64;
/// Longest expression text accepted, in bytes.
pub const EXPR_BYTES_MAX: usize = 4096;

/// A byte range within the expression text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
}

impl Span {
    fn to(self, other: Span) -> Span {
        Span {
            start: self.start,
            end: other.end,
        }
    }
}

/// A parse error at a byte offset of the expression text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Byte offset in the expression.
    pub offset: usize,
    /// What is wrong.
    pub message: String,
}

/// Binary operators.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum BinOp {
    Or,
    And,
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    Add,
    Sub,
    Mul,
    Div,
    Rem,
}

impl BinOp {
    /// The operator as written.
    pub fn symbol(self) -> &'static str {
        match self {
            BinOp::Or => "or",
            BinOp::And => "and",
            BinOp::Eq => "==",
            BinOp::Ne => "!=",
            BinOp::Lt => "<",
            BinOp::Le => "<=",
            BinOp::Gt => ">",
            BinOp::Ge => ">=",
            BinOp::Add => "+",
            BinOp::Sub => "-",
            BinOp::Mul => "*",
            BinOp::Div => "/",
            BinOp::Rem => "%",
        }
    }
}

/// An expression node with its span.
#[derive(Debug, Clone, PartialEq)]
pub struct Expr {
    /// What the node is.
    pub kind: ExprKind,
    /// Where it stands in the text.
    pub span: Span,
}

/// Expression nodes, mirroring the text.
#[derive(Debug, Clone, PartialEq)]
pub enum ExprKind {
    /// A number, fixed point (see [`crate::num`]).
    Num(i64),
    /// A duration in milliseconds.
    Dur(i64),
    /// A string literal.
    Str(String),
    /// `true` or `false`.
    Bool(bool),
    /// An inline list of strings.
    List(Vec<(String, Span)>),
    /// A field, feature or list name.
    Name(String),
    /// A function call such as `since(password_reset)`.
    Call {
        /// The function name.
        name: String,
        /// Where the name stands.
        name_span: Span,
        /// The arguments.
        args: Vec<Expr>,
    },
    /// A window aggregate such as `count(tx by account over 10m)`.
    Agg {
        /// count, sum, avg, max, min or distinct.
        func: String,
        /// What is aggregated: tx, amount, counterparty, device, ip, country, account.
        measure: (String, Span),
        /// Whose window: account, device, ip or counterparty.
        key: (String, Span),
        /// Window length in milliseconds.
        window: (i64, Span),
    },
    /// `not x`.
    Not(Box<Expr>),
    /// `-x`.
    Neg(Box<Expr>),
    /// `a op b`.
    Binary {
        /// The operator.
        op: BinOp,
        /// Where the operator stands.
        op_span: Span,
        /// Left operand.
        lhs: Box<Expr>,
        /// Right operand.
        rhs: Box<Expr>,
    },
    /// `a in b` / `a not in b`.
    In {
        /// `not in`.
        negated: bool,
        /// The value looked up.
        lhs: Box<Expr>,
        /// The list: inline, a named list, or a list-valued feature.
        rhs: Box<Expr>,
    },
}

/// The aggregate functions, which take the `MEASURE by KEY over WINDOW` form.
pub const AGG_FUNCS: [&str; 6] = ["count", "sum", "avg", "max", "min", "distinct"];

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Num(i64),
    Dur(i64),
    Str(String),
    Name(String),
    Sym(&'static str),
    End,
}

fn describe(t: &Tok) -> String {
    match t {
        Tok::Num(_) | Tok::Dur(_) => "a number".into(),
        Tok::Str(s) => format!("string \"{s}\""),
        Tok::Name(n) => format!("'{n}'"),
        Tok::Sym(s) => format!("'{s}'"),
        Tok::End => "the end of the expression".into(),
    }
}

const SYMBOLS: [&str; 16] = [
    "==", "!=", "<=", ">=", "<", ">", "+", "-", "*", "/", "%", "(", ")", "[", "]", ",",
];

fn lex(src: &str) -> Result<Vec<(Tok, Span)>, ParseError> {
    let bytes = src.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        if c.is_ascii_whitespace() {
            i += 1;
            continue;
        }
        let start = i;
        if c.is_ascii_digit() {
            while i < bytes.len()
                && (bytes[i].is_ascii_digit() || bytes[i] == b'_' || bytes[i] == b'.')
            {
                i += 1;
            }
            let digits: String = src[start..i].chars().filter(|&c| c != '_').collect();
            let unit_start = i;
            while i < bytes.len() && bytes[i].is_ascii_alphabetic() {
                i += 1;
            }
            let unit = &src[unit_start..i];
            let span = Span { start, end: i };
            if unit.is_empty() {
                let d = Decimal::from_str(&digits).map_err(|_| ParseError {
                    offset: start,
                    message: format!("'{}' is not a number", &src[start..i]),
                })?;
                let v = num::from_decimal(d).ok_or_else(|| ParseError {
                    offset: start,
                    message: format!(
                        "'{}' has more than {} decimal places or is too large",
                        &src[start..i],
                        num::NUM_DECIMALS
                    ),
                })?;
                out.push((Tok::Num(v), span));
            } else {
                let Some(ms_per) = num::unit_ms(unit) else {
                    return Err(ParseError {
                        offset: unit_start,
                        message: format!(
                            "unknown duration unit '{unit}' (use ms, s, m, h, d or w)"
                        ),
                    });
                };
                let n: i64 = digits.parse().map_err(|_| ParseError {
                    offset: start,
                    message: format!(
                        "durations are whole numbers of a unit, found '{}'",
                        &src[start..i]
                    ),
                })?;
                let ms = n.checked_mul(ms_per).ok_or_else(|| ParseError {
                    offset: start,
                    message: "duration is too long".into(),
                })?;
                out.push((Tok::Dur(ms), span));
            }
            continue;
        }
        if c.is_ascii_alphabetic() || c == b'_' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'_') {
                i += 1;
            }
            out.push((Tok::Name(src[start..i].to_string()), Span { start, end: i }));
            continue;
        }
        if c == b'"' || c == b'\'' {
            let quote = c;
            i += 1;
            let mut s = String::new();
            loop {
                let Some(&b) = bytes.get(i) else {
                    return Err(ParseError {
                        offset: start,
                        message: "unterminated string".into(),
                    });
                };
                if b == quote {
                    i += 1;
                    break;
                }
                if b == b'\\' && bytes.get(i + 1).is_some_and(|&n| n == quote || n == b'\\') {
                    s.push(bytes[i + 1] as char);
                    i += 2;
                    continue;
                }
                let ch = src[i..].chars().next().unwrap_or('\u{fffd}');
                s.push(ch);
                i += ch.len_utf8();
            }
            out.push((Tok::Str(s), Span { start, end: i }));
            continue;
        }
        if let Some(sym) = SYMBOLS.iter().find(|s| src[i..].starts_with(**s)) {
            i += sym.len();
            out.push((Tok::Sym(sym), Span { start, end: i }));
            continue;
        }
        let ch = src[i..].chars().next().unwrap_or('?');
        let hint = match ch {
            '=' => " (use '==' to compare)",
            '&' => " (use 'and')",
            '|' => " (use 'or')",
            '!' => " (use 'not' or '!=')",
            _ => "",
        };
        return Err(ParseError {
            offset: i,
            message: format!("unexpected character '{ch}'{hint}"),
        });
    }
    out.push((
        Tok::End,
        Span {
            start: src.len(),
            end: src.len(),
        },
    ));
    Ok(out)
}

/// Where `and` sits directly inside `or` without parentheses (`a and b or c`), if anywhere:
/// legal and well defined, but a common slip. Returns the byte offset of that `and`.
pub fn unparenthesized_mix(src: &str, e: &Expr) -> Option<usize> {
    let bytes = src.as_bytes();
    let parenthesized = |x: &Expr| bytes.get(x.span.start) == Some(&b'(');
    match &e.kind {
        ExprKind::Binary {
            op: BinOp::Or,
            lhs,
            rhs,
            ..
        } => {
            for side in [lhs, rhs] {
                if let ExprKind::Binary {
                    op: BinOp::And,
                    op_span,
                    ..
                } = &side.kind
                    && !parenthesized(side)
                {
                    return Some(op_span.start);
                }
            }
            unparenthesized_mix(src, lhs).or_else(|| unparenthesized_mix(src, rhs))
        }
        ExprKind::Binary { lhs, rhs, .. } => {
            unparenthesized_mix(src, lhs).or_else(|| unparenthesized_mix(src, rhs))
        }
        ExprKind::Not(x) | ExprKind::Neg(x) => unparenthesized_mix(src, x),
        ExprKind::In { lhs, rhs, .. } => {
            unparenthesized_mix(src, lhs).or_else(|| unparenthesized_mix(src, rhs))
        }
        ExprKind::Call { args, .. } => args.iter().find_map(|a| unparenthesized_mix(src, a)),
        _ => None,
    }
}

/// Parses one expression.
pub fn parse(src: &str) -> Result<Expr, ParseError> {
    if src.len() > EXPR_BYTES_MAX {
        return Err(ParseError {
            offset: 0,
            message: format!("expression is longer than {EXPR_BYTES_MAX} bytes"),
        });
    }
    let toks = lex(src)?;
    let mut p = Parser {
        toks,
        pos: 0,
        depth: 0,
    };
    let e = p.expr()?;
    match p.peek() {
        Tok::End => Ok(e),
        t => Err(p.error(format!(
            "expected an operator or the end, found {}",
            describe(t)
        ))),
    }
}

struct Parser {
    toks: Vec<(Tok, Span)>,
    pos: usize,
    depth: usize,
}

impl Parser {
    fn peek(&self) -> &Tok {
        &self.toks[self.pos.min(self.toks.len() - 1)].0
    }
    fn span(&self) -> Span {
        self.toks[self.pos.min(self.toks.len() - 1)].1
    }
    fn bump(&mut self) -> (Tok, Span) {
        let t = self.toks[self.pos.min(self.toks.len() - 1)].clone();
        if self.pos < self.toks.len() - 1 {
            self.pos += 1;
        }
        t
    }
    fn error(&self, message: String) -> ParseError {
        ParseError {
            offset: self.span().start,
            message,
        }
    }
    fn is_name(&self, word: &str) -> bool {
        matches!(self.peek(), Tok::Name(n) if n == word)
    }
    fn is_sym(&self, sym: &str) -> bool {
        matches!(self.peek(), Tok::Sym(s) if *s == sym)
    }
    fn expect_sym(&mut self, sym: &str) -> Result<Span, ParseError> {
        if self.is_sym(sym) {
            Ok(self.bump().1)
        } else {
            Err(self.error(format!("expected '{sym}', found {}", describe(self.peek()))))
        }
    }
    fn enter(&mut self) -> Result<(), ParseError> {
        self.depth += 1;
        if self.depth > EXPR_DEPTH_MAX {
            return Err(self.error(format!(
                "expression nests deeper than {EXPR_DEPTH_MAX} levels"
            )));
        }
        Ok(())
    }

    fn expr(&mut self) -> Result<Expr, ParseError> {
        self.enter()?;
        let e = self.or();
        self.depth -= 1;
        e
    }

    fn binary_chain(
        &mut self,
        next: fn(&mut Self) -> Result<Expr, ParseError>,
        ops: &[(&str, BinOp)],
    ) -> Result<Expr, ParseError> {
        let mut lhs = next(self)?;
        // Each operator in a chain deepens the tree by one: count it, so `1+1+…` is bounded too.
        let base = self.depth;
        loop {
            let found = ops.iter().find(|(w, _)| match self.peek() {
                Tok::Name(n) => n == w,
                Tok::Sym(s) => s == w,
                _ => false,
            });
            let Some(&(_, op)) = found else {
                self.depth = base;
                return Ok(lhs);
            };
            self.enter()?;
            let op_span = self.bump().1;
            let rhs = next(self)?;
            let span = lhs.span.to(rhs.span);
            lhs = Expr {
                kind: ExprKind::Binary {
                    op,
                    op_span,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            };
        }
    }

    fn or(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::and, &[("or", BinOp::Or)])
    }
    fn and(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::not, &[("and", BinOp::And)])
    }
    fn not(&mut self) -> Result<Expr, ParseError> {
        if self.is_name("not") {
            let start = self.bump().1;
            self.enter()?;
            let inner = self.not()?;
            self.depth -= 1;
            let span = start.to(inner.span);
            return Ok(Expr {
                kind: ExprKind::Not(Box::new(inner)),
                span,
            });
        }
        self.compare()
    }
    fn compare(&mut self) -> Result<Expr, ParseError> {
        let lhs = self.sum()?;
        let ops = [
            ("==", BinOp::Eq),
            ("!=", BinOp::Ne),
            ("<=", BinOp::Le),
            (">=", BinOp::Ge),
            ("<", BinOp::Lt),
            (">", BinOp::Gt),
        ];
        if let Some(&(_, op)) = ops.iter().find(|(s, _)| self.is_sym(s)) {
            let op_span = self.bump().1;
            let rhs = self.sum()?;
            if ops.iter().any(|(s, _)| self.is_sym(s)) {
                return Err(
                    self.error("comparisons do not chain: write 'a < b and b < c'".to_string())
                );
            }
            let span = lhs.span.to(rhs.span);
            return Ok(Expr {
                kind: ExprKind::Binary {
                    op,
                    op_span,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            });
        }
        let negated = if self.is_name("not") {
            let save = self.pos;
            self.bump();
            if !self.is_name("in") {
                self.pos = save;
                return Ok(lhs);
            }
            true
        } else {
            false
        };
        if self.is_name("in") {
            self.bump();
            let rhs = self.sum()?;
            let span = lhs.span.to(rhs.span);
            return Ok(Expr {
                kind: ExprKind::In {
                    negated,
                    lhs: Box::new(lhs),
                    rhs: Box::new(rhs),
                },
                span,
            });
        }
        Ok(lhs)
    }
    fn sum(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(Self::product, &[("+", BinOp::Add), ("-", BinOp::Sub)])
    }
    fn product(&mut self) -> Result<Expr, ParseError> {
        self.binary_chain(
            Self::unary,
            &[("*", BinOp::Mul), ("/", BinOp::Div), ("%", BinOp::Rem)],
        )
    }
    fn unary(&mut self) -> Result<Expr, ParseError> {
        if self.is_sym("-") {
            let start = self.bump().1;
            self.enter()?;
            let inner = self.unary()?;
            self.depth -= 1;
            let span = start.to(inner.span);
            // Fold negative literals so `-5` is a constant.
            return Ok(match inner.kind {
                ExprKind::Num(v) => Expr {
                    kind: ExprKind::Num(-v),
                    span,
                },
                ExprKind::Dur(v) => Expr {
                    kind: ExprKind::Dur(-v),
                    span,
                },
                kind => Expr {
                    kind: ExprKind::Neg(Box::new(Expr {
                        kind,
                        span: inner.span,
                    })),
                    span,
                },
            });
        }
        self.primary()
    }
    fn primary(&mut self) -> Result<Expr, ParseError> {
        let (tok, span) = self.bump();
        let kind = match tok {
            Tok::Num(v) => ExprKind::Num(v),
            Tok::Dur(v) => ExprKind::Dur(v),
            Tok::Str(s) => ExprKind::Str(s),
            Tok::Name(n) if n == "true" => ExprKind::Bool(true),
            Tok::Name(n) if n == "false" => ExprKind::Bool(false),
            Tok::Name(n) if ["and", "or", "not", "in", "by", "over"].contains(&n.as_str()) => {
                return Err(ParseError {
                    offset: span.start,
                    message: format!("expected a value, found keyword '{n}'"),
                });
            }
            Tok::Name(n) => {
                if self.is_sym("(") {
                    return self.call(n, span);
                }
                ExprKind::Name(n)
            }
            Tok::Sym("(") => {
                let inner = self.expr()?;
                let end = self.expect_sym(")")?;
                return Ok(Expr {
                    kind: inner.kind,
                    span: span.to(end),
                });
            }
            Tok::Sym("[") => {
                let mut items = Vec::new();
                while !self.is_sym("]") {
                    match self.bump() {
                        (Tok::Str(s), sp) => items.push((s, sp)),
                        (t, sp) => {
                            return Err(ParseError {
                                offset: sp.start,
                                message: format!("lists hold strings, found {}", describe(&t)),
                            });
                        }
                    }
                    if !self.is_sym("]") {
                        self.expect_sym(",")?;
                    }
                }
                let end = self.bump().1;
                return Ok(Expr {
                    kind: ExprKind::List(items),
                    span: span.to(end),
                });
            }
            t => {
                return Err(ParseError {
                    offset: span.start,
                    message: format!("expected a value, found {}", describe(&t)),
                });
            }
        };
        Ok(Expr { kind, span })
    }
    fn call(&mut self, name: String, name_span: Span) -> Result<Expr, ParseError> {
        self.expect_sym("(")?;
        // The aggregate form: `count(tx by account over 10m)`.
        let agg_form = matches!(self.toks.get(self.pos + 1), Some((Tok::Name(n), _)) if n == "by");
        if agg_form && !AGG_FUNCS.contains(&name.as_str()) {
            // `conut(tx by …)`: name the function, not the `by` after its first word.
            return Err(ParseError {
                offset: name_span.start,
                message: format!(
                    "unknown aggregate '{name}'{}: one of {}",
                    crate::diag::suggest(&name, AGG_FUNCS),
                    AGG_FUNCS.join(", ")
                ),
            });
        }
        if agg_form {
            let measure = match self.bump() {
                (Tok::Name(m), sp) => (m, sp),
                (t, sp) => {
                    return Err(ParseError {
                        offset: sp.start,
                        message: format!("expected what to {name}, found {}", describe(&t)),
                    });
                }
            };
            self.bump(); // `by`
            let key = match self.bump() {
                (Tok::Name(k), sp) => (k, sp),
                (t, sp) => {
                    return Err(ParseError {
                        offset: sp.start,
                        message: format!(
                            "expected a key (account, device, ip, counterparty) after 'by', found {}",
                            describe(&t)
                        ),
                    });
                }
            };
            if !self.is_name("over") {
                return Err(self.error(format!(
                    "expected 'over WINDOW' (such as 'over 10m'), found {}",
                    describe(self.peek())
                )));
            }
            self.bump();
            let window = match self.bump() {
                (Tok::Dur(ms), sp) => (ms, sp),
                (t, sp) => {
                    return Err(ParseError {
                        offset: sp.start,
                        message: format!(
                            "expected a window such as 10m, 24h or 30d after 'over', found {}",
                            describe(&t)
                        ),
                    });
                }
            };
            let end = self.expect_sym(")")?;
            return Ok(Expr {
                kind: ExprKind::Agg {
                    func: name,
                    measure,
                    key,
                    window,
                },
                span: name_span.to(end),
            });
        }
        let mut args = Vec::new();
        while !self.is_sym(")") {
            args.push(self.expr()?);
            if !self.is_sym(")") {
                self.expect_sym(",")?;
            }
        }
        let end = self.bump().1;
        Ok(Expr {
            kind: ExprKind::Call {
                name,
                name_span,
                args,
            },
            span: name_span.to(end),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ops::Add;

    fn err(src: &str) -> ParseError {
        parse(src).expect_err(src)
    }

    #[test]
    fn precedence_binds_arithmetic_tighter_than_logic() {
        let e = parse("a + 2 * b > 3 and not c or d").unwrap();
        let ExprKind::Binary {
            op: BinOp::Or, lhs, ..
        } = e.kind
        else {
            panic!("{e:?}")
        };
        let ExprKind::Binary {
            op: BinOp::And,
            lhs: cmp,
            ..
        } = lhs.kind
        else {
            panic!()
        };
        let ExprKind::Binary {
            op: BinOp::Gt,
            lhs: sum,
            ..
        } = cmp.kind
        else {
            panic!()
        };
        let ExprKind::Binary {
            op: BinOp::Add,
            rhs: prod,
            ..
        } = sum.kind
        else {
            panic!()
        };
        assert!(matches!(prod.kind, ExprKind::Binary { op: BinOp::Mul, .. }));
    }

    #[test]
    fn aggregates_durations_and_lists_parse() {
        let e = parse("count(tx by account over 10m) >= 8").unwrap();
        let ExprKind::Binary { lhs, .. } = e.kind else {
            panic!()
        };
        match lhs.kind {
            ExprKind::Agg {
                func,
                measure,
                key,
                window,
            } => {
                assert_eq!(func, "count");
                assert_eq!(measure.0, "tx");
                assert_eq!(key.0, "account");
                assert_eq!(window.0, 600_000);
            }
            k => panic!("{k:?}"),
        }
        let e = parse("country not in [\"KP\", 'IR']").unwrap();
        assert!(matches!(e.kind, ExprKind::In { negated: true, .. }));
        assert_eq!(parse("-5").unwrap().kind, ExprKind::Num(-5_000_000));
    }

    #[test]
    fn errors_point_at_the_offending_text() {
        assert_eq!(err("amount = 5").offset, 7);
        assert!(err("amount = 5").message.contains("use '=='"));
        assert_eq!(
            err("count(tx by account over 10min)").message,
            "unknown duration unit 'min' (use ms, s, m, h, d or w)"
        );
        assert_eq!(err("count(tx by account 10m)").offset, 20);
        // A misspelt aggregate is named at its name, not at the `by` it cannot take.
        let e = err("x > 1 and conut(tx by account over 10m) > 5");
        assert_eq!(e.offset, 10);
        assert_eq!(
            e.message,
            "unknown aggregate 'conut' (did you mean 'count'?): one of count, sum, avg, max, min, distinct"
        );
        assert!(err("amount > ").message.contains("expected a value"));
        assert!(err("(amount > 5").message.contains("expected ')'"));
        assert!(err("\"abc").message.contains("unterminated"));
        assert!(err("1 < a < 3").message.contains("do not chain"));
        assert!(err("amount > 0.0000001").message.contains("decimal places"));
        assert!(err(&"(".repeat(70)).message.contains("deeper than"));
        assert!(
            err(&"1+".repeat(1000).add("1"))
                .message
                .contains("deeper than")
        );
        assert!(parse(&"a or ".repeat(30).add("b")).is_ok());
        assert!(err("amount > 5 5").message.contains("expected an operator"));
        assert!(err("[1, 2]").message.contains("lists hold strings"));
    }
}
