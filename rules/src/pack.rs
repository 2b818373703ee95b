//! Rule packs: a directory of TOML files (rules, lists, tests) compiled into one [`Program`].
//!
//! ```text
//! pack.toml          [pack] name, description, thresholds; [lists]; [[rule]]…
//! *.toml             more [[rule]] tables (and [lists])
//! lists/*.txt        list files, one item per line, `#` comments
//! tests/*.toml       [[case]] tables: events and the expected decision for the last one
//! ```
//!
//! The caller reads the files (this crate does no I/O) and passes them as [`SourceFile`]s.

use std::collections::{BTreeMap, HashMap};

use serde::Deserialize;
use sha2::{Digest, Sha256};
use toml::Spanned;

use crate::compile::Compiler;
use crate::diag::{Diagnostic, Diagnostics, SourceFile, suggest};
use crate::program::{Action, CompiledRule, Program, RuleMeta, StrSet, Thresholds};

/// Most rules a pack may hold.
pub const RULES_MAX: usize = 1000;
/// Most named lists a pack may hold.
pub const LISTS_MAX: usize = 256;
/// Most items one list may hold.
pub const LIST_ITEMS_MAX: usize = 1_000_000;
/// Largest score a rule may add or take away; keeps every total far from overflow.
pub const SCORE_ABS_MAX: i64 = 1_000_000;
/// The longest window any rule may use unless configured otherwise: 30 days.
pub const WINDOW_MS_MAX_DEFAULT: i64 = 30 * 86_400_000;
/// Notification templates a rule may ask for.
pub const NOTIFY_KINDS: [&str; 4] = [
    "blocked_transfer",
    "held_for_review",
    "step_up_required",
    "account_frozen",
];

const _: () = assert!(RULES_MAX <= u16::MAX as usize);

/// Options for compiling a pack.
#[derive(Debug, Clone, Copy)]
pub struct PackOptions {
    /// Longest window a rule may use, in milliseconds; state is sized from it.
    pub window_ms_max: i64,
}

impl Default for PackOptions {
    fn default() -> Self {
        PackOptions {
            window_ms_max: WINDOW_MS_MAX_DEFAULT,
        }
    }
}

/// What a test case expects of the decision on its last event. Unset parts are not checked.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Expect {
    /// The action.
    pub action: Option<Action>,
    /// Exactly the rules that fire (shadow ones included), in any order.
    pub rules: Option<Vec<String>>,
    /// The total score.
    pub score: Option<i64>,
}

/// A test case written beside the rules.
#[derive(Debug, Clone, PartialEq)]
pub struct TestCase {
    /// What it shows.
    pub name: String,
    /// Display path of its file.
    pub file: String,
    /// Line of its `[[case]]` table.
    pub line: u32,
    /// Fields merged into every event that lacks them (the file's `[defaults]`).
    pub defaults: toml::Table,
    /// Its events, in order; the engine decides the last transaction.
    pub events: Vec<toml::Table>,
    /// What the decision must be.
    pub expect: Expect,
}

/// A named list and its size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListInfo {
    /// Name used in rules.
    pub name: String,
    /// Number of distinct items.
    pub len: usize,
}

/// A checked, compiled pack.
#[derive(Debug, Clone)]
pub struct CompiledPack {
    /// `[pack] name`.
    pub name: String,
    /// `[pack] description`.
    pub description: String,
    /// SHA-256 over the rule and list files (not the tests), hex, first 16 digits: the pack's
    /// version in every decision.
    pub hash: String,
    /// The program.
    pub program: Program,
    /// Named lists.
    pub lists: Vec<ListInfo>,
    /// Test cases.
    pub tests: Vec<TestCase>,
    /// Things that are allowed but probably not meant (`and`/`or` mixed without parentheses,
    /// a rule no test expects to fire); `vigil rules check` prints them.
    pub warnings: Vec<Diagnostic>,
}

impl CompiledPack {
    /// Rule metadata by index.
    pub fn rule(&self, idx: u16) -> Option<&RuleMeta> {
        self.program.rules.get(usize::from(idx)).map(|r| &r.meta)
    }
    /// Distinct window aggregates the rules use.
    pub fn window_count(&self) -> usize {
        self.program
            .features
            .iter()
            .filter(|f| matches!(f, crate::catalog::Feature::Agg(_)))
            .count()
    }
    /// The one-line summary `vigil rules check` prints.
    pub fn summary(&self) -> String {
        let shadow = self.program.rules.iter().filter(|r| r.meta.shadow).count();
        format!(
            "pack {}: {} rules ({} shadow), {} list{}, {} windows, {} features, {} tests, hash {}",
            self.name,
            self.program.rules.len(),
            shadow,
            self.lists.len(),
            if self.lists.len() == 1 { "" } else { "s" },
            self.window_count(),
            self.program.features.len(),
            self.tests.len(),
            self.hash
        )
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileDe {
    pack: Option<Spanned<PackDe>>,
    #[serde(default)]
    lists: BTreeMap<Spanned<String>, Spanned<ListDe>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleDe>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PackDe {
    name: String,
    #[serde(default)]
    description: String,
    #[serde(default)]
    thresholds: ThresholdsDe,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ThresholdsDe {
    review: Option<Spanned<i64>>,
    step_up: Option<Spanned<i64>>,
    block: Option<Spanned<i64>>,
}

enum ListDe {
    Inline(Vec<String>),
    File { file: String },
}

impl<'de> Deserialize<'de> for ListDe {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        use toml::Value;
        const SHAPE: &str = "a list is an array of strings, [\"KP\", \"IR\"], or a list file, { file = \"lists/NAME.txt\" }";
        match Value::deserialize(d)? {
            Value::Array(items) => items
                .into_iter()
                .enumerate()
                .map(|(i, v)| match v {
                    Value::String(s) => Ok(s),
                    v => Err(D::Error::custom(format!(
                        "list item {} is {}, not a string: write every item in quotes",
                        i + 1,
                        article(v.type_str())
                    ))),
                })
                .collect::<Result<_, _>>()
                .map(ListDe::Inline),
            Value::Table(mut t) => {
                let file = t.remove("file");
                match (file, t.keys().next()) {
                    (_, Some(k)) => Err(D::Error::custom(format!(
                        "unknown key '{k}' in a list: {SHAPE}"
                    ))),
                    (Some(Value::String(file)), None) => Ok(ListDe::File { file }),
                    (Some(v), None) => Err(D::Error::custom(format!(
                        "file is {}: write the path in quotes, {{ file = \"lists/NAME.txt\" }}",
                        article(v.type_str())
                    ))),
                    (None, None) => Err(D::Error::custom(SHAPE)),
                }
            }
            v => Err(D::Error::custom(format!(
                "{SHAPE}; found {}",
                article(v.type_str())
            ))),
        }
    }
}

/// "a string", "an integer".
fn article(kind: &str) -> String {
    let an = kind.starts_with(['a', 'e', 'i', 'o', 'u']);
    format!("{} {kind}", if an { "an" } else { "a" })
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleDe {
    id: Spanned<String>,
    #[serde(default)]
    description: String,
    when: Spanned<String>,
    action: Option<Spanned<String>>,
    score: Option<Spanned<i64>>,
    mode: Option<Spanned<String>>,
    #[serde(default)]
    freeze: bool,
    notify: Option<Spanned<String>>,
    #[serde(default = "yes")]
    enabled: bool,
}

fn yes() -> bool {
    true
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TestFileDe {
    #[serde(default)]
    defaults: toml::Table,
    #[serde(default)]
    case: Vec<Spanned<CaseDe>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CaseDe {
    name: String,
    #[serde(default)]
    #[allow(dead_code)]
    description: String,
    events: Vec<toml::Table>,
    expect: Spanned<ExpectDe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ExpectDe {
    action: Option<Spanned<String>>,
    rules: Option<Vec<Spanned<String>>>,
    score: Option<i64>,
}

/// Rewrites serde's "unknown field `x`, expected one of `a`, `b`" into a message with a
/// suggestion.
fn tidy(message: &str) -> String {
    let message = message.trim();
    let names: Vec<&str> = message.split('`').skip(1).step_by(2).collect();
    if let Some(rest) = message.strip_prefix("unknown field `")
        && let (Some(bad), Some(_)) = (names.first(), rest.find('`'))
    {
        let expected = &names[1..];
        return format!(
            "unknown key '{bad}'{}; expected one of {}",
            suggest(bad, expected.iter().copied()),
            expected.join(", ")
        );
    }
    message
        .replace('`', "'")
        .replace("expected i64", "expected a whole number")
        .replace("expected u32", "expected a whole number")
        .replace("expected a boolean", "expected true or false")
}

fn de_error(file: &SourceFile, e: &toml::de::Error) -> Diagnostic {
    let at = e.span().map_or(0, |s| s.start);
    Diagnostic::at(file, at, tidy(e.message()))
}

/// Where the text of a TOML string value starts, given the span of its literal.
fn string_body_offset(text: &str, span: std::ops::Range<usize>) -> usize {
    let raw = text.get(span.clone()).unwrap_or_default();
    let quote = if raw.starts_with("\"\"\"") || raw.starts_with("'''") {
        3
    } else {
        1
    };
    let mut at = span.start + quote;
    if quote == 3 {
        if text[at..].starts_with("\r\n") {
            at += 2;
        } else if text[at..].starts_with('\n') {
            at += 1;
        }
    }
    at
}

/// Where byte `value_off` of a TOML string's value stands in the file, walking the literal's
/// escapes (`\"`, `\\`, `\uXXXX`, line continuations) so columns stay exact.
fn value_offset(text: &str, span: std::ops::Range<usize>, value_off: usize) -> usize {
    let start = string_body_offset(text, span.clone());
    if !text[span.start..].starts_with('"') {
        return start + value_off; // literal strings have no escapes
    }
    let raw = text.get(start..span.end).unwrap_or_default().as_bytes();
    let (mut r, mut v) = (0usize, 0usize);
    while r < raw.len() {
        let continuation =
            raw[r] == b'\\' && matches!(raw.get(r + 1), Some(b'\n' | b'\r' | b' ' | b'\t'));
        if v >= value_off && !continuation {
            break;
        }
        if raw[r] != b'\\' {
            r += 1;
            v += 1;
            continue;
        }
        match raw.get(r + 1).copied() {
            Some(b'u') | Some(b'U') => {
                let digits = if raw[r + 1] == b'u' { 4 } else { 8 };
                let hex = std::str::from_utf8(raw.get(r + 2..r + 2 + digits).unwrap_or_default())
                    .unwrap_or("");
                let ch = u32::from_str_radix(hex, 16)
                    .ok()
                    .and_then(char::from_u32)
                    .unwrap_or(' ');
                r += 2 + digits;
                v += ch.len_utf8();
            }
            Some(b'\n') | Some(b'\r') | Some(b' ') | Some(b'\t') => {
                // A line-ending backslash: it and the whitespace after it are not in the value.
                r += 1;
                while r < raw.len() && raw[r].is_ascii_whitespace() {
                    r += 1;
                }
            }
            _ => {
                r += 2;
                v += 1;
            }
        }
    }
    start + r
}

/// Checks and compiles a pack from its files.
pub fn compile_pack(files: &[SourceFile], opts: &PackOptions) -> Result<CompiledPack, Diagnostics> {
    let mut warnings: Vec<Diagnostic> = Vec::new();
    let mut diags = Vec::new();
    let mut sorted: Vec<&SourceFile> = files.iter().collect();
    sorted.sort_by(|a, b| (a.rel != "pack.toml", &a.rel).cmp(&(b.rel != "pack.toml", &b.rel)));
    let rule_files: Vec<&SourceFile> = sorted
        .iter()
        .copied()
        .filter(|f| f.rel.ends_with(".toml") && !f.rel.starts_with("tests/"))
        .collect();
    let list_files: HashMap<&str, &SourceFile> = sorted
        .iter()
        .copied()
        .filter(|f| f.rel.starts_with("lists/"))
        .map(|f| (f.rel.as_str(), f))
        .collect();

    let mut parsed = Vec::new();
    for f in &rule_files {
        match toml::from_str::<FileDe>(&f.text) {
            Ok(d) => parsed.push((*f, d)),
            Err(e) => diags.push(de_error(f, &e)),
        }
    }
    // A rule file that could not be read hides its rule ids: tests naming them are not
    // reported as naming unknown rules (that would be one mistake told three times).
    let all_rule_files_read = parsed.len() == rule_files.len();

    // [pack]
    let mut pack: Option<(PackDe, &SourceFile)> = None;
    for (f, d) in &mut parsed {
        if let Some(p) = d.pack.take() {
            let span = p.span();
            let t = &p.get_ref().thresholds;
            // (name, value, where the value is written)
            let set: Vec<(&str, i64, usize)> = [
                ("review", &t.review),
                ("step_up", &t.step_up),
                ("block", &t.block),
            ]
            .into_iter()
            .filter_map(|(n, v)| v.as_ref().map(|v| (n, *v.get_ref(), v.span().start)))
            .collect();
            let max = SCORE_ABS_MAX * 1000;
            if let Some((n, v, at)) = set.iter().find(|(_, v, _)| *v <= 0) {
                diags.push(Diagnostic::at(f, *at, format!("threshold {n} = {v} must be above 0 (a total of 0 is what every allowed transaction scores)")));
            } else if let Some((n, v, at)) = set.iter().find(|(_, v, _)| *v > max) {
                diags.push(Diagnostic::at(
                    f,
                    *at,
                    format!("threshold {n} = {v} is more than the limit of {max}"),
                ));
            } else if let Some(w) = set.windows(2).find(|w| w[0].1 > w[1].1) {
                diags.push(Diagnostic::at(
                    f,
                    w[1].2,
                    format!(
                        "thresholds must rise with the action: review <= step_up <= block ({} = {} is below {} = {})",
                        w[1].0, w[1].1, w[0].0, w[0].1
                    ),
                ));
            }
            if let Some((_, first)) = &pack {
                diags.push(Diagnostic::at(
                    f,
                    span.start,
                    format!(
                        "a second [pack] table; the pack is already defined in {}",
                        first.path
                    ),
                ));
            } else {
                pack = Some((p.into_inner(), f));
            }
        }
    }
    if pack.is_none() && diags.is_empty() {
        let (path, text) = rule_files
            .first()
            .map_or(("pack.toml".to_string(), ""), |f| {
                (f.path.clone(), f.text.as_str())
            });
        let f = SourceFile {
            path,
            rel: "pack.toml".into(),
            text: text.into(),
        };
        diags.push(Diagnostic::at(
            &f,
            0,
            "no [pack] table: write pack.toml with [pack] name = \"...\"",
        ));
    }

    // [lists]
    let mut named: HashMap<String, u32> = HashMap::new();
    let mut lists: Vec<StrSet> = Vec::new();
    let mut list_info = Vec::new();
    for (f, d) in &parsed {
        for (name, def) in &d.lists {
            let at = name.span().start;
            let name_s = name.get_ref().clone();
            if !is_ident(&name_s) {
                diags.push(Diagnostic::at(
                    f,
                    at,
                    format!("list name '{name_s}' must be lowercase letters, digits and _"),
                ));
                continue;
            }
            if crate::catalog::lookup(&name_s).is_some() {
                diags.push(Diagnostic::at(
                    f,
                    at,
                    format!("list name '{name_s}' is already a field or feature name"),
                ));
                continue;
            }
            if named.contains_key(&name_s) {
                diags.push(Diagnostic::at(f, at, format!("duplicate list '{name_s}'")));
                continue;
            }
            if named.len() >= LISTS_MAX {
                diags.push(Diagnostic::at(
                    f,
                    at,
                    format!("more than {LISTS_MAX} lists"),
                ));
                continue;
            }
            let items: Vec<String> = match def.get_ref() {
                ListDe::Inline(v) => v.clone(),
                ListDe::File { file } => match list_files.get(file.as_str()) {
                    // A byte order mark (editors on Windows write one) is not part of the first item.
                    Some(lf) => lf
                        .text
                        .strip_prefix('\u{feff}')
                        .unwrap_or(&lf.text)
                        .lines()
                        .map(|l| l.split('#').next().unwrap_or("").trim())
                        .filter(|l| !l.is_empty())
                        .map(str::to_string)
                        .collect(),
                    None => {
                        diags.push(Diagnostic::at(f, def.span().start, format!("list file '{file}' not found in the pack (list files live under lists/)")));
                        continue;
                    }
                },
            };
            if items.len() > LIST_ITEMS_MAX {
                diags.push(Diagnostic::at(
                    f,
                    def.span().start,
                    format!("list '{name_s}' has more than {LIST_ITEMS_MAX} items"),
                ));
                continue;
            }
            let set = StrSet::new(items);
            list_info.push(ListInfo {
                name: name_s.clone(),
                len: set.len(),
            });
            named.insert(name_s, lists.len() as u32);
            lists.push(set);
        }
    }

    // [[rule]]
    let mut compiler = Compiler {
        named_lists: &named,
        lists,
        features: Vec::new(),
        window_ms_max: opts.window_ms_max,
        uses_home_countries: false,
    };
    let mut rules: Vec<CompiledRule> = Vec::new();
    let mut seen: HashMap<String, String> = HashMap::new();
    let mut count = 0usize;
    for (f, d) in &parsed {
        for r in &d.rule {
            let header = r.span().start;
            let (line, _) = crate::diag::line_col(&f.text, header);
            let r = r.get_ref();
            count += 1;
            if count > RULES_MAX {
                diags.push(Diagnostic::at(
                    f,
                    header,
                    format!("more than {RULES_MAX} rules"),
                ));
                break;
            }
            let id = r.id.get_ref();
            let id_at = string_body_offset(&f.text, r.id.span());
            if id.is_empty()
                || !id
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
            {
                diags.push(Diagnostic::at(
                    f,
                    id_at,
                    format!("rule id '{id}' must be lowercase letters, digits, '.', '_' or '-'"),
                ));
            }
            let here = format!("{}:{line}", f.path);
            if let Some(first) = seen.insert(id.clone(), here) {
                diags.push(Diagnostic::at(
                    f,
                    id_at,
                    format!("duplicate rule id '{id}' (first defined at {first})"),
                ));
            }
            let action = match &r.action {
                None => None,
                Some(a) => match Action::from_name(a.get_ref()) {
                    Some(x) => Some(x),
                    None => {
                        let at = string_body_offset(&f.text, a.span());
                        let names = Action::ALL.map(Action::name);
                        diags.push(Diagnostic::at(
                            f,
                            at,
                            format!(
                                "unknown action '{}'{}; actions are {}",
                                a.get_ref(),
                                suggest(a.get_ref(), names),
                                names.join(", ")
                            ),
                        ));
                        None
                    }
                },
            };
            if r.action.is_none() && r.score.is_none() {
                diags.push(Diagnostic::at(
                    f,
                    header,
                    format!("rule '{id}' needs an action, a score, or both"),
                ));
            }
            let shadow = match r.mode.as_ref().map(|m| m.get_ref().as_str()) {
                None | Some("active") => false,
                Some("shadow") => true,
                Some(other) => {
                    let at =
                        string_body_offset(&f.text, r.mode.as_ref().map_or(0..0, Spanned::span));
                    diags.push(Diagnostic::at(
                        f,
                        at,
                        format!(
                            "unknown mode '{other}'{}; modes are active, shadow",
                            suggest(other, ["active", "shadow"])
                        ),
                    ));
                    false
                }
            };
            if let Some(n) = &r.notify
                && !NOTIFY_KINDS.contains(&n.get_ref().as_str())
            {
                let at = string_body_offset(&f.text, n.span());
                diags.push(Diagnostic::at(
                    f,
                    at,
                    format!(
                        "unknown notification '{}'{}; notifications are {}",
                        n.get_ref(),
                        suggest(n.get_ref(), NOTIFY_KINDS),
                        NOTIFY_KINDS.join(", ")
                    ),
                ));
            }
            if let Some(sc) = &r.score
                && sc.get_ref().abs() > SCORE_ABS_MAX
            {
                diags.push(Diagnostic::at(
                    f,
                    sc.span().start,
                    format!(
                        "score {} is outside -{SCORE_ABS_MAX}..={SCORE_ABS_MAX}",
                        sc.get_ref()
                    ),
                ));
            }
            if r.action.is_none() && (r.freeze || r.notify.is_some()) {
                diags.push(Diagnostic::at(
                    f,
                    header,
                    format!("rule '{id}' asks to freeze or notify but has no action; a score-only rule acts only through the total score"),
                ));
            }
            let when_span = r.when.span();
            let at = |off: usize| value_offset(&f.text, when_span.clone(), off);
            // A disabled rule is checked, but what it would need is not kept.
            let (features_before, lists_before) = (compiler.features.len(), compiler.lists.len());
            let src = r.when.get_ref();
            let compiled = crate::parse::parse(src)
                .map_err(|e| Diagnostic::at(f, at(e.offset), e.message))
                .and_then(|expr| {
                    if let Some(off) = crate::parse::unparenthesized_mix(src, &expr) {
                        warnings.push(Diagnostic::at(
                            f,
                            at(off),
                            "'and' binds tighter than 'or' here: add parentheses to say which you mean",
                        ));
                    }
                    compiler
                        .condition(src, &expr)
                        .map_err(|e| Diagnostic::at(f, at(e.span.start), e.message))
                });
            if !r.enabled {
                compiler.features.truncate(features_before);
                compiler.lists.truncate(lists_before);
            }
            match compiled {
                Ok((cond, terms)) if r.enabled => rules.push(CompiledRule::new(
                    RuleMeta {
                        id: id.clone(),
                        description: r.description.clone(),
                        action,
                        score: r.score.as_ref().map_or(0, |s| *s.get_ref()),
                        shadow,
                        freeze: r.freeze,
                        notify: r.notify.as_ref().map(|n| n.get_ref().clone()),
                        when: src.clone(),
                        file: f.path.clone(),
                        line,
                    },
                    cond,
                    terms,
                )),
                Ok(_) => {}
                Err(d) => diags.push(d),
            }
        }
    }

    // tests/*.toml
    let mut tests = Vec::new();
    for f in sorted
        .iter()
        .filter(|f| f.rel.starts_with("tests/") && f.rel.ends_with(".toml"))
    {
        match toml::from_str::<TestFileDe>(&f.text) {
            Err(e) => diags.push(de_error(f, &e)),
            Ok(t) => {
                for c in t.case {
                    let (line, _) = crate::diag::line_col(&f.text, c.span().start);
                    let c = c.into_inner();
                    let e = c.expect.get_ref();
                    let mut expect = Expect {
                        score: e.score,
                        ..Expect::default()
                    };
                    if let Some(a) = &e.action {
                        expect.action = Action::from_name(a.get_ref());
                        if expect.action.is_none() {
                            diags.push(Diagnostic::at(
                                f,
                                string_body_offset(&f.text, a.span()),
                                format!(
                                    "unknown action '{}'{}",
                                    a.get_ref(),
                                    suggest(a.get_ref(), Action::ALL.map(Action::name))
                                ),
                            ));
                        }
                    }
                    if let Some(rs) = &e.rules {
                        for r in rs {
                            if all_rule_files_read && !seen.contains_key(r.get_ref()) {
                                let ids: Vec<&str> = seen.keys().map(String::as_str).collect();
                                diags.push(Diagnostic::at(
                                    f,
                                    string_body_offset(&f.text, r.span()),
                                    format!(
                                        "unknown rule '{}'{}",
                                        r.get_ref(),
                                        suggest(r.get_ref(), ids)
                                    ),
                                ));
                            }
                        }
                        expect.rules = Some(rs.iter().map(|r| r.get_ref().clone()).collect());
                    }
                    if c.events.is_empty() {
                        diags.push(Diagnostic::at(
                            f,
                            c.expect.span().start,
                            format!("test case '{}' has no events", c.name),
                        ));
                    }
                    tests.push(TestCase {
                        name: c.name,
                        file: f.path.clone(),
                        line,
                        defaults: t.defaults.clone(),
                        events: c.events,
                        expect,
                    });
                }
            }
        }
    }

    if !diags.is_empty() {
        return Err(Diagnostics(diags));
    }
    let Some((pack, _)) = pack else {
        return Err(Diagnostics(diags));
    };

    let mut hasher = Sha256::new();
    for f in sorted.iter().filter(|f| !f.rel.starts_with("tests/")) {
        hasher.update((f.rel.len() as u64).to_le_bytes());
        hasher.update(f.rel.as_bytes());
        hasher.update((f.text.len() as u64).to_le_bytes());
        hasher.update(f.text.as_bytes());
    }
    let digest = hasher.finalize();
    let hash: String = digest.iter().take(8).map(|b| format!("{b:02x}")).collect();

    let Compiler {
        lists,
        features,
        uses_home_countries,
        ..
    } = compiler;
    for r in &rules {
        let tested = tests.iter().any(|t| {
            t.expect
                .rules
                .as_ref()
                .is_some_and(|ids| ids.contains(&r.meta.id))
        });
        if !tested {
            let file = SourceFile {
                path: r.meta.file.clone(),
                rel: String::new(),
                text: String::new(),
            };
            let mut d = Diagnostic::at(
                &file,
                0,
                format!(
                    "rule '{}' has no test case that expects it to fire",
                    r.meta.id
                ),
            );
            d.line = r.meta.line;
            warnings.push(d);
        }
    }
    let t = pack.thresholds;
    Ok(CompiledPack {
        name: pack.name,
        description: pack.description,
        hash,
        program: Program {
            rules,
            features,
            lists,
            uses_home_countries,
            thresholds: Thresholds {
                review: t.review.map(Spanned::into_inner),
                step_up: t.step_up.map(Spanned::into_inner),
                block: t.block.map(Spanned::into_inner),
            },
        },
        lists: list_info,
        tests,
        warnings,
    })
}

fn is_ident(s: &str) -> bool {
    s.bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}
