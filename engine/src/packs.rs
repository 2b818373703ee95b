//! Rule packs on disk, and running their inline tests through the engine.

use std::path::{Path, PathBuf};

use vigil_rules::{
    CompiledPack, Diagnostic, Diagnostics, PackOptions, SourceFile, TestCase, compile_pack,
};

use crate::decision::Decision;
use crate::engine::{Engine, EngineConfig};
use crate::event::{Event, decode_value, format_ts, parse_ts};

/// Largest file read from a pack, bytes.
pub const PACK_FILE_BYTES_MAX: u64 = 64 * 1024 * 1024;

/// Why a pack could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// A file or directory could not be read.
    #[error("{path}: {source}")]
    Io {
        /// What was being read.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The directory holds no pack.
    #[error("{0}: no pack here (expected pack.toml and rule files *.toml)")]
    Empty(PathBuf),
    /// A file is too large.
    #[error("{0}: larger than {PACK_FILE_BYTES_MAX} bytes")]
    TooLarge(PathBuf),
    /// The pack has errors.
    #[error("{0}")]
    Invalid(Diagnostics),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<PathBuf>, LoadError> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        v.push(e.map_err(io(dir))?.path());
    }
    v.sort();
    Ok(v)
}

/// The files of a pack as read from disk.
#[derive(Debug, Default)]
pub struct Sources {
    /// Every file; one that is not UTF-8 holds its text with U+FFFD for the bad bytes.
    pub files: Vec<SourceFile>,
    /// The files that are not UTF-8: (relative path, offset and value of the first bad byte).
    not_text: Vec<(String, usize, u8)>,
}

impl Sources {
    /// A problem at the first bad byte of each file that is not UTF-8 and is still among
    /// `files`: the compiler reads such a file's text with the bytes replaced, and may report
    /// more problems in it, but the pack is refused.
    fn not_text(&self) -> Vec<Diagnostic> {
        self.not_text
            .iter()
            .filter_map(|(rel, at, byte)| {
                let f = self.files.iter().find(|f| &f.rel == rel)?;
                Some(Diagnostic::at(
                    f,
                    *at,
                    format!("not UTF-8 text: byte 0x{byte:02X} is not part of a character here (save the file as UTF-8)"),
                ))
            })
            .collect()
    }

    /// Compiles the files, reporting the files that are not UTF-8 first.
    fn compile(&self, opts: &PackOptions) -> Result<CompiledPack, Diagnostics> {
        let mut d = self.not_text();
        match compile_pack(&self.files, opts) {
            Ok(p) if d.is_empty() => Ok(p),
            Ok(_) => Err(Diagnostics(d)),
            Err(e) => {
                d.extend(e.0);
                Err(Diagnostics(d))
            }
        }
    }
}

/// Reads the files of the pack in `dir`: `*.toml`, `lists/*`, `tests/*.toml`.
pub fn read_sources(dir: &Path) -> Result<Sources, LoadError> {
    let mut sources = Sources::default();
    let mut add = |path: PathBuf, rel: String| -> Result<(), LoadError> {
        let meta = std::fs::metadata(&path).map_err(io(&path))?;
        if meta.len() > PACK_FILE_BYTES_MAX {
            return Err(LoadError::TooLarge(path));
        }
        let text = match String::from_utf8(std::fs::read(&path).map_err(io(&path))?) {
            Ok(text) => text,
            Err(e) => {
                let at = e.utf8_error().valid_up_to();
                let bytes = e.into_bytes();
                // The text before `at` is unchanged by the replacement, so `at` is its offset.
                sources.not_text.push((rel.clone(), at, bytes[at]));
                String::from_utf8_lossy(&bytes).into_owned()
            }
        };
        sources.files.push(SourceFile {
            path: path.display().to_string(),
            rel,
            text,
        });
        Ok(())
    };
    for p in read_dir_sorted(dir)? {
        let name = p
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if p.is_file() && name.ends_with(".toml") {
            add(p, name)?;
        } else if p.is_dir() && (name == "lists" || name == "tests") {
            for q in read_dir_sorted(&p)? {
                let qn = q
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                if q.is_file() && !qn.starts_with('.') && (name == "lists" || qn.ends_with(".toml"))
                {
                    add(q, format!("{name}/{qn}"))?;
                }
            }
        }
    }
    Ok(sources)
}

/// Loads and compiles the pack in `dir`.
pub fn load(dir: &Path, opts: &PackOptions) -> Result<CompiledPack, LoadError> {
    let sources = read_sources(dir)?;
    if !sources.files.iter().any(|f| !f.rel.contains('/')) {
        return Err(LoadError::Empty(dir.to_path_buf()));
    }
    sources.compile(opts).map_err(LoadError::Invalid)
}

/// The result of one test case.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case.
    pub case: TestCase,
    /// What went wrong, as diff lines; empty when it passed.
    pub failures: Vec<String>,
    /// The decision on the last transaction.
    pub decision: Option<Decision>,
}

impl CaseResult {
    /// Whether the case passed.
    pub fn passed(&self) -> bool {
        self.failures.is_empty()
    }
}

/// Keys a test event may have: the wire fields plus the test conveniences.
const EVENT_KEYS: [&str; 21] = {
    let extra = ["repeat", "every", "after", "note"];
    let fields = crate::event::FIELDS;
    let mut out = [""; 21];
    let mut i = 0;
    while i < out.len() {
        out[i] = if i < fields.len() {
            fields[i]
        } else {
            extra[i - fields.len()]
        };
        i += 1;
    }
    out
};

/// Where a case's events start when the first has no `ts`.
const DEFAULT_START: &str = "2026-01-05T12:00:00Z";

/// Turns a case's event tables into events: `[defaults]` merged in, `repeat`/`every`
/// expanded, missing `ts` taken as the previous event's plus `after` (default 1m), missing ids
/// numbered.
pub fn case_events(case: &TestCase, case_no: usize) -> Result<Vec<Event>, String> {
    let mut out = Vec::new();
    let mut prev_ts: Option<i64> = None;
    for (i, table) in case.events.iter().enumerate() {
        let mut t = case.defaults.clone();
        for (k, v) in table {
            t.insert(k.clone(), v.clone());
        }
        if let Some(bad) = t.keys().find(|k| !EVENT_KEYS.contains(&k.as_str())) {
            return Err(format!(
                "event {}: unknown key '{bad}'{}",
                i + 1,
                vigil_rules::diag::suggest(bad, EVENT_KEYS)
            ));
        }
        let dur = |key: &str, default: i64| -> Result<i64, String> {
            match t.get(key) {
                None => Ok(default),
                Some(toml::Value::String(s)) => {
                    vigil_rules::num::parse_duration(s).ok_or_else(|| {
                        format!(
                            "event {}: {key}: '{s}' is not a duration such as 30s or 5m",
                            i + 1
                        )
                    })
                }
                Some(v) => Err(format!(
                    "event {}: {key} must be a duration string, found {}",
                    i + 1,
                    v.type_str()
                )),
            }
        };
        let repeat = match t.get("repeat") {
            None => 1,
            Some(toml::Value::Integer(n)) if (1..=10_000).contains(n) => *n,
            Some(toml::Value::Integer(n)) => {
                return Err(format!(
                    "event {}: repeat must be 1 to 10000, found {n}",
                    i + 1
                ));
            }
            Some(v) => {
                return Err(format!(
                    "event {}: repeat must be a whole number, found {}",
                    i + 1,
                    v.type_str()
                ));
            }
        };
        let every = dur("every", 60_000)?;
        let after = dur("after", 60_000)?;
        for k in ["repeat", "every", "after"] {
            t.remove(k);
        }
        let first_ts = match t.get("ts") {
            Some(toml::Value::String(s)) => {
                parse_ts(s).map_err(|e| format!("event {}: {e}", i + 1))?
            }
            Some(v) => {
                return Err(format!(
                    "event {}: ts must be an RFC 3339 string in quotes, such as ts = \"2026-01-05T09:00:00Z\"; found a {}",
                    i + 1,
                    v.type_str()
                ));
            }
            None => match prev_ts {
                Some(p) => p
                    .checked_add(after)
                    .ok_or_else(|| format!("event {}: after is too long", i + 1))?,
                None => parse_ts(DEFAULT_START).map_err(|e| e.to_string())?,
            },
        };
        for r in 0..repeat {
            let mut e = t.clone();
            let ts = r
                .checked_mul(every)
                .and_then(|d| first_ts.checked_add(d))
                .ok_or_else(|| format!("event {}: repeat × every is too long", i + 1))?;
            e.insert("ts".into(), toml::Value::String(format_ts(ts)));
            e.entry("schema").or_insert(toml::Value::Integer(1));
            let n = out.len() + 1;
            e.entry("tx_id")
                .or_insert_with(|| toml::Value::String(format!("case{case_no}-t{n}")));
            e.entry("event_id")
                .or_insert_with(|| toml::Value::String(format!("case{case_no}-e{n}")));
            let json = serde_json::to_value(&e).map_err(|err| format!("event {}: {err}", i + 1))?;
            out.push(decode_value(&json).map_err(|err| format!("event {}: {err}", i + 1))?);
            prev_ts = Some(ts);
        }
    }
    Ok(out)
}

/// Runs every test case of `pack`, each on a fresh engine.
pub fn run_tests(pack: &CompiledPack) -> Vec<CaseResult> {
    pack.tests
        .iter()
        .enumerate()
        .map(|(no, case)| {
            let mut failures = Vec::new();
            let mut decision = None;
            match case_events(case, no + 1) {
                Err(e) => failures.push(e),
                Ok(events) => {
                    let engine = Engine::new(
                        pack.clone(),
                        EngineConfig {
                            id_secret: Some(crate::state::REPLAY_SECRET),
                            ..EngineConfig::default()
                        },
                    );
                    for e in &events {
                        if let Some(d) = engine.apply(e) {
                            decision = Some(d);
                        }
                    }
                    match &decision {
                        None => failures.push(
                            "no transaction to decide: the case's events are all account events"
                                .into(),
                        ),
                        Some(d) => failures.extend(compare(case, d)),
                    }
                }
            }
            CaseResult {
                case: case.clone(),
                failures,
                decision,
            }
        })
        .collect()
}

fn compare(case: &TestCase, d: &Decision) -> Vec<String> {
    let mut f = Vec::new();
    if let Some(a) = case.expect.action
        && a != d.action
    {
        f.push(format!(
            "action: expected {}, got {}",
            a.name(),
            d.action.name()
        ));
    }
    if let Some(s) = case.expect.score
        && s != d.score
    {
        f.push(format!("score: expected {s}, got {}", d.score));
    }
    if let Some(want) = &case.expect.rules {
        let got: Vec<&str> = d.reasons.iter().map(|r| r.rule.as_str()).collect();
        for w in want {
            if !got.contains(&w.as_str()) {
                f.push(format!("- {w} (expected to fire, did not)"));
            }
        }
        for r in &d.reasons {
            if !want.contains(&r.rule) {
                let values: Vec<String> =
                    r.values.iter().map(|(k, v)| format!("{k}={v}")).collect();
                f.push(format!(
                    "+ {} (fired, not expected: {})",
                    r.rule,
                    values.join(", ")
                ));
            }
        }
    }
    f
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// A new pack is active.
    Swapped {
        /// The hash before.
        from: String,
        /// The hash now.
        to: String,
        /// The new pack's one-line summary.
        summary: String,
    },
    /// The files compile to the pack already active.
    Unchanged {
        /// Its hash.
        hash: String,
    },
}

/// Why a reload was refused: one line per problem (`file:line:col: message` for rule errors,
/// `test N (name): …` for a failing test of the pack). The running pack stays.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.join("\n"))]
pub struct ReloadError(pub Vec<String>);

/// Reloads the pack in one directory into an engine: compile, check (the pack's own tests
/// must pass), then swap between two events. Notices when the files change.
#[derive(Debug)]
pub struct Reloader {
    dir: PathBuf,
    opts: PackOptions,
    /// (path, length, modified) of every file at the last look.
    stamp: std::sync::Mutex<Vec<(PathBuf, u64, Option<std::time::SystemTime>)>>,
    /// One reload at a time (the watcher and the API may both ask).
    running: std::sync::Mutex<()>,
}

impl Reloader {
    /// A reloader for `dir`; the files as they are now count as seen.
    pub fn new(dir: &Path, opts: PackOptions) -> Reloader {
        let r = Reloader {
            dir: dir.to_path_buf(),
            opts,
            stamp: std::sync::Mutex::new(Vec::new()),
            running: std::sync::Mutex::new(()),
        };
        r.changed();
        r
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The options packs are compiled with.
    pub fn options(&self) -> &PackOptions {
        &self.opts
    }

    /// Whether a file of the pack was added, removed or modified since the last call.
    pub fn changed(&self) -> bool {
        let mut now = Vec::new();
        let mut dirs = vec![self.dir.clone()];
        while let Some(d) = dirs.pop() {
            let Ok(entries) = std::fs::read_dir(&d) else {
                continue;
            };
            for e in entries.flatten() {
                let p = e.path();
                let Ok(m) = e.metadata() else { continue };
                if m.is_dir() {
                    dirs.push(p);
                } else {
                    now.push((p, m.len(), m.modified().ok()));
                }
            }
        }
        now.sort();
        let mut stamp = self
            .stamp
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let changed = *stamp != now;
        *stamp = now;
        changed
    }

    /// Compiles the pack, runs its tests, and swaps it in if it differs from the active one.
    pub fn reload(&self, engine: &Engine) -> Result<Reloaded, ReloadError> {
        let _one = self
            .running
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let pack = load(&self.dir, &self.opts).map_err(|e| match e {
            LoadError::Invalid(d) => ReloadError(d.0.iter().map(ToString::to_string).collect()),
            other => ReloadError(vec![other.to_string()]),
        })?;
        let from = engine.active().pack.hash.clone();
        if pack.hash == from {
            return Ok(Reloaded::Unchanged { hash: from });
        }
        let failed: Vec<String> = run_tests(&pack)
            .iter()
            .filter(|r| !r.passed())
            .map(|r| {
                format!(
                    "{}:{}: test \"{}\" fails: {}",
                    r.case.file,
                    r.case.line,
                    r.case.name,
                    r.failures.join("; ")
                )
            })
            .collect();
        if !failed.is_empty() {
            return Err(ReloadError(failed));
        }
        let summary = pack.summary();
        let to = pack.hash.clone();
        engine.swap_pack(pack);
        Ok(Reloaded::Swapped { from, to, summary })
    }
}

/// Most files a candidate pack may bring.
pub const CANDIDATE_FILES_MAX: usize = 64;

/// Whether `rel` names a rule or list file of a pack: `name.toml` or `lists/name`.
fn pack_file_name(rel: &str) -> bool {
    let ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with('.')
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    match rel.split_once('/') {
        None => ok(rel) && rel.ends_with(".toml"),
        Some(("lists", n)) => ok(n),
        Some(_) => false,
    }
}

/// A candidate pack for a dry run: the rule and list files of `base` (when given) with
/// `files` (relative name → text) put over them, and the files named in `remove` left out.
/// The pack's tests are not part of it (a reload runs them). Errors are `file:line:col:
/// message` lines, the files named by their relative names.
pub fn compile_candidate(
    base: Option<&Path>,
    files: &std::collections::BTreeMap<String, String>,
    remove: &[String],
    opts: &PackOptions,
) -> Result<CompiledPack, Vec<String>> {
    if files.len() > CANDIDATE_FILES_MAX {
        return Err(vec![format!(
            "a candidate pack has at most {CANDIDATE_FILES_MAX} files"
        )]);
    }
    let mut errors = Vec::new();
    for rel in files.keys().chain(remove) {
        if !pack_file_name(rel) {
            errors.push(format!(
                "{rel}: not a rule or list file name (name.toml or lists/name)"
            ));
        }
    }
    for (rel, text) in files {
        if text.len() as u64 > PACK_FILE_BYTES_MAX {
            errors.push(format!("{rel}: larger than {PACK_FILE_BYTES_MAX} bytes"));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let mut sources = match base {
        Some(dir) => read_sources(dir).map_err(|e| vec![e.to_string()])?,
        None => Sources::default(),
    };
    // A file to leave out must be there, and not given too: a misspelt name would otherwise
    // read as "removing it changes nothing".
    for rel in remove {
        let present = sources.files.iter().any(|s| &s.rel == rel)
            || sources.not_text.iter().any(|(r, ..)| r == rel);
        if files.contains_key(rel) {
            errors.push(format!("{rel}: both given in files and named in remove"));
        } else if !present {
            errors.push(format!(
                "{rel}: not a file of the running pack: nothing to remove"
            ));
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    let kept = &mut sources.files;
    for s in kept.iter_mut() {
        s.path.clone_from(&s.rel);
    }
    kept.retain(|s| {
        !s.rel.starts_with("tests/") && !files.contains_key(&s.rel) && !remove.contains(&s.rel)
    });
    // A file replaced or removed takes its encoding problem with it.
    sources
        .not_text
        .retain(|(rel, ..)| !files.contains_key(rel) && !remove.contains(rel));
    kept.extend(files.iter().map(|(rel, text)| SourceFile {
        path: rel.clone(),
        rel: rel.clone(),
        text: text.clone(),
    }));
    kept.sort_by(|a, b| a.rel.cmp(&b.rel));
    if !kept.iter().any(|f| !f.rel.contains('/')) {
        return Err(vec!["the candidate pack has no rule file".into()]);
    }
    sources
        .compile(opts)
        .map_err(|d| d.0.iter().map(ToString::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_candidate_that_replaces_a_file_that_is_not_utf8_compiles() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/packs/default");
        let dir = std::env::temp_dir().join(format!("vigil-candidate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("lists")).expect("mkdir");
        for f in read_sources(&root).expect("default pack").files {
            if !f.rel.starts_with("tests/") {
                std::fs::write(dir.join(&f.rel), f.text).expect("copy");
            }
        }
        let list = "lists/sanctioned_countries.txt";
        std::fs::write(dir.join(list), b"KP\nIR  # Ir\xe1n\n").expect("write list");
        let opts = PackOptions::default();
        let none = std::collections::BTreeMap::new();
        let err = compile_candidate(Some(&dir), &none, &[], &opts).expect_err("Latin-1 list");
        assert!(
            err[0].starts_with(&format!("{list}:2:9: not UTF-8 text")),
            "{err:?}"
        );
        let fixed = std::collections::BTreeMap::from([(list.to_string(), "KP\nIR\n".to_string())]);
        let got = compile_candidate(Some(&dir), &fixed, &[], &opts);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(got.is_ok(), "{:?}", got.err());
    }
}
