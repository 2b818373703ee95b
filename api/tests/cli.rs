//! End-to-end tests of the `vigil` binary: run it from the workspace root as a user would and
//! check its exit codes, its output and the files it writes.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use vigil_tests::copy_dir;

/// Runs `vigil args…` from the workspace root, so the default pack path resolves.
fn vigil(args: &[&str]) -> Output {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the api crate lives in the workspace");
    Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(args)
        .current_dir(root)
        .output()
        .expect("run vigil")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory for one test, under a per-process folder of the temp dir; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir()
            .join(format!("vigil-cli-{}", std::process::id()))
            .join(name);
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("create scratch dir");
        Scratch(dir)
    }

    /// Writes `rel` (creating its folder) and returns its path.
    fn write(&self, rel: &str, text: &str) -> PathBuf {
        let path = self.0.join(rel);
        fs::create_dir_all(path.parent().expect("a parent")).expect("create folder");
        fs::write(&path, text).expect("write file");
        path
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }

    fn str(&self) -> &str {
        self.0.to_str().expect("temp paths are UTF-8")
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
        // Succeeds only once the last test of this process has cleaned up.
        let _ = self.0.parent().map(fs::remove_dir);
    }
}

fn s(p: &Path) -> &str {
    p.to_str().expect("temp paths are UTF-8")
}

// ---------------------------------------------------------------------------------------------
// vigil rules check

#[test]
fn rules_check_accepts_the_shipped_pack() {
    let o = vigil(&["rules", "check"]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    let out = stdout(&o);
    assert!(out.starts_with("ok: pack wallet-default:"), "{out}");
    assert!(out.contains(" rules ("), "{out}");
    assert!(out.contains(", hash "), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
    assert_eq!(stderr(&o), "");
}

/// Six problems in one file; every `when = "` puts the expression at column 9.
const BROKEN_PACK: &str = r#"[pack]
name = "broken"

[[rule]]
id = "r.field"
when = "amout > 5"
score = 10

[[rule]]
id = "r.type"
when = "amount > \"5\""
score = 10

[[rule]]
id = "r.list"
when = "country in nosuch_list"
score = 10

[[rule]]
id = "r.window"
when = "count(tx by account over 45d) > 3"
score = 10

[[rule]]
id = "r.field"
when = "amount > 1"
score = 10

[[rule]]
id = "r.syntax"
when = "amount > > 5"
score = 10
"#;

/// A TOML syntax error stops its file's other checks, so it gets a file of its own…
const BROKEN_SYNTAX: &str = "[[rule]\nid = \"x\"\n";
/// …and so does an unknown key, which fails the whole file's deserialization.
const BROKEN_KEY: &str = "[[rule]]\nid = \"r.key\"\nwhen = \"amount > 5\"\nacton = \"block\"\n";

#[test]
fn rules_check_reports_every_problem_at_its_line_and_column() {
    let pack = Scratch::new("broken-pack");
    pack.write("pack.toml", BROKEN_PACK);
    pack.write("syntax.toml", BROKEN_SYNTAX);
    pack.write("key.toml", BROKEN_KEY);
    let dir = pack.str();
    let p = s(&pack.path("pack.toml")).to_string();

    let o = vigil(&["rules", "check", dir]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "stderr: {err}");
    assert_eq!(stdout(&o), "");
    assert!(!err.contains("panicked"), "{err}");

    let lines: Vec<&str> = err.lines().collect();
    let (last, diags) = lines.split_last().expect("some stderr");
    assert_eq!(*last, format!("error: 8 problems in {dir}"));
    assert_eq!(diags.len(), 8, "one line per problem:\n{err}");
    for d in diags {
        // path:line:col: message, with the path inside the pack.
        let rest = d.strip_prefix(dir).unwrap_or_else(|| panic!("{d}"));
        let mut parts = rest.splitn(4, ':');
        let (file, line, col, msg) = (parts.next(), parts.next(), parts.next(), parts.next());
        assert!(file.is_some_and(|f| f.ends_with(".toml")), "{d}");
        assert!(
            line.is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
            "{d}"
        );
        assert!(
            col.is_some_and(|n| n.parse::<u32>().is_ok_and(|n| n > 0)),
            "{d}"
        );
        assert!(
            msg.is_some_and(|m| m.starts_with(' ') && m.len() > 1),
            "{d}"
        );
    }

    let in_pack: Vec<&str> = diags
        .iter()
        .copied()
        .filter(|d| d.starts_with(&format!("{p}:")))
        .collect();
    let want = [
        // `amout` is the first character of the expression.
        format!("{p}:6:9: unknown field, function or list 'amout' (did you mean 'amount'?)"),
        // `amount > ` is 7 characters before the `>`: 9 + 7.
        format!(
            "{p}:11:16: type mismatch: cannot apply '>' to a number and a string \
             (numbers are written without quotes)"
        ),
        // `country in ` is 11 characters: 9 + 11.
        format!("{p}:16:20: unknown field, function or list 'nosuch_list'"),
        // `count(tx by account over ` is 25 characters: 9 + 25.
        format!("{p}:21:34: window 45d is longer than the limit of 30d"),
        // The second `id = "r.field"`: the id's text starts after `id = "`, at column 7.
        format!("{p}:25:7: duplicate rule id 'r.field' (first defined at {p}:4)"),
        // The second `>`: `amount > ` is 9 characters: 9 + 9.
        format!("{p}:31:18: expected a value, found '>'"),
    ];
    assert_eq!(in_pack, want, "\n{err}");

    let key = s(&pack.path("key.toml")).to_string();
    let key_lines: Vec<&&str> = diags.iter().filter(|d| d.starts_with(&key)).collect();
    assert_eq!(key_lines.len(), 1, "{err}");
    assert!(
        key_lines[0].starts_with(&format!(
            "{key}:4:1: unknown key 'acton' (did you mean 'action'?)"
        )),
        "{err}"
    );
    let syntax = s(&pack.path("syntax.toml")).to_string();
    let syntax_lines: Vec<&&str> = diags.iter().filter(|d| d.starts_with(&syntax)).collect();
    assert_eq!(syntax_lines.len(), 1, "{err}");
    // `[[rule]` ends after 7 characters: the missing `]` is at column 8.
    assert!(
        syntax_lines[0].starts_with(&format!("{syntax}:1:8: ")),
        "{err}"
    );
}

#[test]
fn rules_check_reads_a_byte_order_mark_and_points_at_bytes_that_are_not_utf8() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let tmp = Scratch::new("encodings");
    let pack = tmp.path("pack");
    copy_dir(&root.join("rules/packs/default"), &pack);
    let list = pack.join("lists/sanctioned_countries.txt");
    let bom = |path: &Path| {
        let text = fs::read(path).expect("read");
        fs::write(path, [&b"\xef\xbb\xbf"[..], &text].concat()).expect("write");
    };
    // A byte order mark before a list's first item and before a rule file. (Read as part of
    // the item, it would make "\u{feff}CU" a country code that never matches: an error.)
    fs::write(&list, "CU\nIR\nKP\nSY\n").expect("write list");
    bom(&list);
    bom(&pack.join("amount.toml"));
    let o = vigil(&["rules", "check", s(&pack)]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = vigil(&["rules", "test", s(&pack)]);
    assert_eq!(o.status.code(), Some(0), "{}", stdout(&o));

    // Latin-1 in the list and an error in a rule file: both are told, each at its place.
    fs::write(&list, b"KP\nIR  # Ir\xe1n\n").expect("write list");
    let geo = pack.join("geo.toml");
    let text = fs::read_to_string(&geo).expect("read geo");
    fs::write(
        &geo,
        text.replace("country in sanctioned", "country in sanctoned"),
    )
    .expect("write");
    let o = vigil(&["rules", "check", s(&pack)]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(
        lines[0],
        format!(
            "{}:2:9: not UTF-8 text: byte 0xE1 is not part of a character here (save the file as UTF-8)",
            list.display()
        ),
        "{err}"
    );
    assert!(
        lines[1].starts_with(&format!(
            "{}:25:20: unknown field, function or list 'sanctoned_countries' (did you mean",
            geo.display()
        )),
        "{err}"
    );
    assert_eq!(lines.len(), 3, "{err}");
}

/// A good pack with a ten-day window.
const WINDOW_PACK: &str = r#"[pack]
name = "window"

[[rule]]
id = "busy"
when = "count(tx by account over 10d) > 50"
score = 10
"#;

#[test]
fn rules_check_window_max_limits_the_windows() {
    let pack = Scratch::new("window-pack");
    let p = pack.write("pack.toml", WINDOW_PACK);
    let dir = pack.str();

    let o = vigil(&["rules", "check", dir]);
    assert_eq!(o.status.code(), Some(0), "stderr: {}", stderr(&o));
    assert!(
        stdout(&o).starts_with("ok: pack window: 1 rules"),
        "{}",
        stdout(&o)
    );

    let o = vigil(&["rules", "check", dir, "--window-max", "1h"]);
    assert_eq!(o.status.code(), Some(1), "stdout: {}", stdout(&o));
    assert_eq!(
        stderr(&o),
        format!(
            "{}:6:34: window 10d is longer than the limit of 1h\nerror: 1 problem in {dir}\n",
            s(&p)
        )
    );
}

// ---------------------------------------------------------------------------------------------
// vigil rules test

#[test]
fn rules_test_passes_on_the_shipped_pack() {
    let o = vigil(&["rules", "test"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    let (last, cases) = lines.split_last().expect("some output");
    let passed: usize = last
        .strip_suffix(" passed, 0 failed")
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("last line: {last}"));
    assert!(passed >= 20, "{out}");
    assert_eq!(cases.len(), passed, "{out}");
    assert!(
        cases
            .iter()
            .all(|l| l.starts_with("PASS rules/packs/default/tests/")),
        "{out}"
    );
}

const EXPECT_PACK: &str = r#"[pack]
name = "expect"

[[rule]]
id = "big.amount"
when = "amount > 1000"
action = "review"
"#;

const EXPECT_TESTS: &str = r#"[defaults]
account_id = "a-1"
currency = "USD"
channel = "app"
device_id = "d-1"

[[case]]
name = "a small payment is allowed"
events = [{ kind = "payment", amount = "10.00", counterparty_id = "m-1" }]
expect = { action = "allow", rules = [] }

[[case]]
name = "a big payment is wrongly expected to pass"
events = [{ kind = "payment", amount = "5000.00", counterparty_id = "m-1" }]
expect = { action = "allow" }
"#;

#[test]
fn rules_test_shows_a_diff_for_a_wrong_expectation() {
    let pack = Scratch::new("expect-pack");
    pack.write("pack.toml", EXPECT_PACK);
    let t = pack.write("tests/big.toml", EXPECT_TESTS);
    let t = s(&t);

    let o = vigil(&["rules", "test", pack.str()]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{}", stderr(&o));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[0],
        format!("PASS {t}:7 a small payment is allowed"),
        "{out}"
    );
    assert_eq!(
        lines[1],
        format!("FAIL {t}:12 a big payment is wrongly expected to pass"),
        "{out}"
    );
    assert_eq!(
        lines[2].trim(),
        "action: expected allow, got review",
        "{out}"
    );
    assert!(lines[3].trim().starts_with("decision: {"), "{out}");
    assert_eq!(lines.last(), Some(&"1 passed, 1 failed"), "{out}");
}

// ---------------------------------------------------------------------------------------------
// vigil replay

#[test]
fn replay_lists_rejected_lines() {
    let o = vigil(&["replay", "replay-data/golden/bad-input/events.jsonl", "-q"]);
    let out = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{out}\n{}", stderr(&o));
    assert_eq!(stderr(&o), "");
    let events = out
        .lines()
        .find(|l| l.starts_with("events "))
        .expect("an events line");
    assert!(events.contains(" 2 applied "), "{events}");
    assert!(events.contains(" 12 rejected,"), "{events}");

    let rejected: Vec<&str> = out
        .lines()
        .skip_while(|l| *l != "rejected lines")
        .skip(1)
        .map(str::trim)
        .collect();
    assert!(
        rejected.contains(&"line 2: amount: 12.345 has more decimals than USD allows (2)"),
        "{out}"
    );
    // The same list as the golden file beside the input.
    let golden = fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../replay-data/golden/bad-input/rejected.txt"),
    )
    .expect("read rejected.txt");
    assert_eq!(rejected, golden.lines().collect::<Vec<_>>(), "{out}");
}

#[test]
fn replay_skips_a_byte_order_mark_in_plain_and_gzip_input() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../replay-data/golden/takeover");
    let events = fs::read_to_string(root.join("events.jsonl")).expect("read events");
    let want = fs::read(root.join("decisions.jsonl")).expect("read decisions");
    let tmp = Scratch::new("bom");
    let plain = tmp.write("bom.jsonl", &format!("\u{feff}{events}"));
    let gz = tmp.path("bom.jsonl.gz");
    let mut w = vigil_engine::replay::gz_writer(fs::File::create(&gz).expect("create gz"));
    std::io::Write::write_all(&mut w, format!("\u{feff}{events}").as_bytes()).expect("write gz");
    w.finish().expect("finish gz");
    for input in [&plain, &gz] {
        let out = tmp.path("decisions.jsonl");
        let o = vigil(&["replay", s(input), "--out", s(&out), "-q"]);
        let report = stdout(&o);
        assert_eq!(o.status.code(), Some(0), "{report}\n{}", stderr(&o));
        assert!(report.contains(" 0 rejected"), "{report}");
        assert!(fs::read(&out).expect("read out") == want, "{report}");
    }
}

/// `(N transactions)` from the report's events line.
fn transactions(report: &str) -> usize {
    let line = report
        .lines()
        .find(|l| l.starts_with("events "))
        .expect("events line");
    line.split_once('(')
        .and_then(|(_, r)| r.split_once(" transactions)"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or_else(|| panic!("{line}"))
}

#[test]
fn replay_of_gzip_input_writes_the_same_decisions_every_time() {
    let tmp = Scratch::new("replay-out");
    let (a, b) = (tmp.path("a.jsonl"), tmp.path("b.jsonl"));
    let mut reports = Vec::new();
    for out in [&a, &b] {
        let o = vigil(&[
            "replay",
            "replay-data/sample.jsonl.gz",
            "--out",
            s(out),
            "-q",
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        reports.push(stdout(&o));
    }
    let (da, db) = (fs::read(&a).expect("read a"), fs::read(&b).expect("read b"));
    assert!(!da.is_empty());
    assert!(da == db, "two runs wrote different decisions");

    let report = &reports[0];
    let version = report
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("rules version "))
        .unwrap_or_else(|| panic!("{report}"));
    let after_labels: Vec<&str> = report
        .lines()
        .skip_while(|l| !l.starts_with("labels "))
        .collect();
    assert!(!after_labels.is_empty(), "no labels section:\n{report}");
    assert!(
        after_labels.iter().any(|l| l.contains("precision")),
        "{report}"
    );

    let text = String::from_utf8(da).expect("UTF-8 decisions");
    assert_eq!(
        text.lines().count(),
        transactions(report),
        "one decision per transaction"
    );
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        assert!(v["tx_id"].as_str().is_some_and(|t| !t.is_empty()), "{line}");
        assert!(
            v["action"]
                .as_str()
                .is_some_and(|a| ["allow", "review", "step_up", "block"].contains(&a)),
            "{line}"
        );
        assert_eq!(v["rules_version"].as_str(), Some(version), "{line}");
    }
}

// ---------------------------------------------------------------------------------------------
// vigil gen

fn gen_to(out: &Path, seed: &str) -> String {
    let o = vigil(&[
        "gen",
        "--accounts",
        "50",
        "--days",
        "2",
        "--seed",
        seed,
        "--out",
        s(out),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    stdout(&o)
}

#[test]
fn gen_is_deterministic_per_seed_and_gzips_dot_gz() {
    let tmp = Scratch::new("gen");
    let (a, b, c, z) = (
        tmp.path("a.jsonl"),
        tmp.path("b.jsonl"),
        tmp.path("c.jsonl"),
        tmp.path("z.jsonl.gz"),
    );
    let said = gen_to(&a, "7");
    gen_to(&b, "7");
    gen_to(&c, "8");
    gen_to(&z, "7");
    let (da, db, dc, dz) = (
        fs::read(&a).expect("a"),
        fs::read(&b).expect("b"),
        fs::read(&c).expect("c"),
        fs::read(&z).expect("z"),
    );
    assert!(!da.is_empty());
    assert!(da == db, "the same seed gave different files");
    assert!(da != dc, "different seeds gave the same file");
    assert!(
        dz.starts_with(&[0x1f, 0x8b]),
        "not gzip: {:02x?}",
        &dz[..dz.len().min(4)]
    );

    let events = da.iter().filter(|&&b| b == b'\n').count();
    assert!(
        said.starts_with(&format!("wrote {}: {events} events (", s(&a))),
        "{said}"
    );
    // The gzip file holds the same events: replay reads them all back.
    let o = vigil(&["replay", s(&z), "-q"]);
    let report = stdout(&o);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let line = report
        .lines()
        .find(|l| l.starts_with("events "))
        .expect("events line");
    assert!(line.contains(&format!(" {events} applied (")), "{line}");
    assert!(line.contains(" 0 rejected,"), "{line}");
}

/// `out` holds what it held before a gen that did not complete, and nothing is beside it.
fn kept_alone(tmp: &Scratch, out: &Path) {
    assert_eq!(fs::read_to_string(out).expect("kept"), "precious\n");
    let left: Vec<_> = fs::read_dir(&tmp.0)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(left, ["keep.jsonl"], "a temporary file was left behind");
}

#[test]
fn a_gen_that_fails_leaves_the_file_it_would_replace_as_it_was() {
    let tmp = Scratch::new("gen-fails");
    let out = tmp.write("keep.jsonl", "precious\n");
    let o = vigil(&[
        "gen",
        "--accounts",
        "5",
        "--days",
        "1",
        "--fraud-rate",
        "2",
        "--out",
        s(&out),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("fraud_rate must be within [0, 1], got 2"));
    kept_alone(&tmp, &out);

    // A gen that succeeds replaces the file and keeps its permissions.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(&out, fs::Permissions::from_mode(0o640)).expect("chmod");
    gen_to(&out, "7");
    assert!(fs::read_to_string(&out).expect("read").starts_with('{'));
    let mode = fs::metadata(&out).expect("stat").permissions().mode();
    assert_eq!(mode & 0o777, 0o640, "{mode:o}");

    // Ctrl-C midway: the file it would replace stays as it was, and nothing is left beside.
    fs::write(&out, "precious\n").expect("write");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args(["gen", "--accounts", "300000", "--days", "30", "-q", "--out"])
        .arg(&out)
        .current_dir(root)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start gen");
    // Once its file beside the target exists.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let writing = || {
        fs::read_dir(&tmp.0)
            .expect("dir")
            .filter_map(Result::ok)
            .any(|e| e.file_name().to_string_lossy().ends_with(".tmp"))
    };
    while !writing() {
        assert!(
            std::time::Instant::now() < deadline,
            "gen made no file in 60 s"
        );
        assert!(
            child.try_wait().expect("poll").is_none(),
            "gen ended before the signal"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let sent = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let o = child.wait_with_output().expect("gen ends");
    assert_eq!(o.status.code(), Some(130), "{}", stderr(&o));
    assert!(stderr(&o).contains("interrupted"), "{}", stderr(&o));
    kept_alone(&tmp, &out);
}

// ---------------------------------------------------------------------------------------------
// Bad invocations

#[test]
fn replay_of_a_missing_file_names_it() {
    let o = vigil(&["replay", "/nonexistent.jsonl", "-q"]);
    assert_ne!(o.status.code(), Some(0));
    assert!(o.status.code().is_some(), "killed by a signal");
    let err = stderr(&o);
    assert!(err.contains("/nonexistent.jsonl"), "{err}");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn rules_check_of_a_missing_dir_exits_2() {
    let o = vigil(&["rules", "check", "/nonexistent"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.starts_with("error: cannot read the rule pack: /nonexistent: "),
        "{err}"
    );
}

#[test]
fn usage_errors_exit_2() {
    let o = vigil(&["frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    let err = stderr(&o);
    assert!(
        err.contains("unrecognized subcommand 'frobnicate'"),
        "{err}"
    );
    assert!(err.contains("Usage: vigil"), "{err}");

    let o = vigil(&["rules", "check", "--window-max", "10"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(
        stderr(&o).contains("'10' is not a duration such as 30s"),
        "{}",
        stderr(&o)
    );
}

// ---------------------------------------------------------------------------------------------
// Columns inside `when` strings that hold escapes

/// The column of a problem after an escape (`\"`, `\u…`) counts the characters of the file, not
/// of the unescaped expression. The shipped pack writes `kind == \"payment\"` in several rules.
#[test]
fn rules_check_column_after_an_escaped_quote() {
    let pack = Scratch::new("escape-pack");
    let p = pack.write(
        "pack.toml",
        "[pack]\nname = \"e\"\n[[rule]]\nid = \"r\"\nscore = 1\n\
         when = \"kind == \\\"payment\\\" and amout > 5\"\n",
    );
    let o = vigil(&["rules", "check", pack.str()]);
    assert_eq!(o.status.code(), Some(1));
    // `kind == \"payment\" and ` is 24 characters in the file: 9 + 24.
    let want = format!(
        "{}:6:33: unknown field, function or list 'amout' (did you mean 'amount'?)",
        s(&p)
    );
    assert_eq!(stderr(&o).lines().next(), Some(want.as_str()));
}

/// A problem right after a line-ending backslash in a `"""` string: the backslash, the newline
/// and the indentation are not in the expression, but the problem is on the next line.
#[test]

fn rules_check_column_after_a_line_continuation() {
    let pack = Scratch::new("continuation-pack");
    let p = pack.write(
        "pack.toml",
        r#"[pack]
name = "e"
[[rule]]
id = "r"
score = 1
when = """
kind == "payment" and \
    amout > 5
"""
"#,
    );
    let o = vigil(&["rules", "check", pack.str()]);
    assert_eq!(o.status.code(), Some(1));
    // `amout` starts line 8 after four spaces.
    let want = format!(
        "{}:8:5: unknown field, function or list 'amout' (did you mean 'amount'?)",
        s(&p)
    );
    assert_eq!(stderr(&o).lines().next(), Some(want.as_str()));
}

// ---------------------------------------------------------------------------------------------
// vigil replay --compare (backtest)

/// tx_id → action of a decisions file.
fn actions(path: &Path) -> std::collections::BTreeMap<String, String> {
    fs::read_to_string(path)
        .expect("read decisions")
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect(l);
            (
                v["tx_id"].as_str().expect("tx_id").to_string(),
                v["action"].as_str().expect("action").to_string(),
            )
        })
        .collect()
}

/// The README's backtest example, run as written: every line it shows (but the run's time and
/// the elided `...`) is in what the command prints, the new pack's hash included.
#[test]
fn the_readme_backtest_example_prints_what_the_readme_shows() {
    let tmp = Scratch::new("readme-backtest");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let readme = fs::read_to_string(root.join("README.md")).expect("README");
    let edit = "sed -i 's/15 \\* usual_amount/8 * usual_amount/' /tmp/new/amount.toml";
    assert!(readme.contains(edit), "the README's example edit changed");
    let shown: Vec<&str> = readme
        .lines()
        .skip_while(|l| !l.starts_with("backtest    old pack"))
        .take_while(|l| !l.starts_with("```"))
        .filter(|l| l.trim() != "..." && !l.contains("whole run"))
        .collect();
    assert!(shown.len() > 10, "the README's example output is gone");
    let new = tmp.path("new");
    copy_dir(&root.join("rules/packs/default"), &new);
    let text = fs::read_to_string(new.join("amount.toml")).expect("read");
    assert!(text.contains("15 * usual_amount"), "amount.toml changed");
    fs::write(
        new.join("amount.toml"),
        text.replace("15 * usual_amount", "8 * usual_amount"),
    )
    .expect("write");
    let o = vigil(&[
        "replay",
        "replay-data/sample.jsonl.gz",
        "--rules",
        s(&new),
        "--compare",
        "rules/packs/default",
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let printed = stdout(&o);
    for line in shown {
        assert!(
            printed.lines().any(|p| p == line),
            "README shows a line the command does not print:\n{line}\n---\n{printed}"
        );
    }
}

#[test]
fn backtest_reports_exactly_the_decisions_that_differ() {
    let tmp = Scratch::new("backtest");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let new = tmp.path("new");
    copy_dir(&root.join("rules/packs/default"), &new);
    // A lower amount threshold and a card-testing burst that needs more attempts. The pack's
    // own tests are not run by replay, so they may disagree.
    for (file, from, to) in [
        (
            "amount.toml",
            "15 * usual_amount(30d)",
            "8 * usual_amount(30d)",
        ),
        ("card_testing.toml", "over 10m) >= 5", "over 10m) >= 7"),
    ] {
        let text = fs::read_to_string(new.join(file)).expect("read rule file");
        assert!(text.contains(from), "{file} no longer has {from}");
        fs::write(new.join(file), text.replace(from, to)).expect("write rule file");
    }
    let sample = "replay-data/sample.jsonl.gz";
    let (old_out, new_out) = (tmp.path("old.jsonl"), tmp.path("new.jsonl"));
    for (rules, out) in [("rules/packs/default", &old_out), (s(&new), &new_out)] {
        let o = vigil(&["replay", sample, "--rules", rules, "--out", s(out), "-q"]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    }
    let (old_actions, new_actions) = (actions(&old_out), actions(&new_out));
    let want: std::collections::BTreeMap<&String, (&String, &String)> = old_actions
        .iter()
        .filter_map(|(tx, a)| {
            let b = &new_actions[tx];
            (a != b).then_some((tx, (a, b)))
        })
        .collect();
    assert!(!want.is_empty(), "the changed pack changed nothing");

    // The label file turns the first changed transaction's label around.
    let (first, _) = want.iter().next().expect("a change");
    let sample_label = {
        let mut text = String::new();
        std::io::Read::read_to_string(
            &mut vigil_engine::replay::open(&root.join(sample)).expect("open sample"),
            &mut text,
        )
        .expect("read sample");
        let line = text
            .lines()
            .find(|l| l.contains(&format!("\"tx_id\":\"{first}\"")))
            .expect("the changed tx is in the sample");
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        v["is_fraud"].as_bool().expect("the sample is labelled")
    };
    let labels = tmp.write(
        "labels.jsonl",
        &format!("{{\"tx_id\":\"{first}\",\"is_fraud\":{}}}\n", !sample_label),
    );
    let changed = tmp.path("changed.jsonl");
    let o = vigil(&[
        "replay",
        sample,
        "--rules",
        s(&new),
        "--compare",
        "rules/packs/default",
        "--changed",
        s(&changed),
        "--labels",
        s(&labels),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let report = stdout(&o);
    assert!(
        report.contains(&format!("changed     {} decisions (", want.len())),
        "{report}"
    );
    assert!(report.contains("labels      1 from "), "{report}");
    // The file's labels are the only ones scored: the sample's own are set aside.
    let fraud = u8::from(!sample_label);
    assert!(
        report.contains(&format!(
            "labels      1 labeled transactions, {fraud} fraud"
        )),
        "{report}"
    );
    assert!(
        report.contains("review-or-block  old precision"),
        "{report}"
    );
    // The transitions add up to the changes.
    let listed: usize = report
        .lines()
        .skip_while(|l| !l.starts_with("changes "))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| {
            l.split_whitespace()
                .nth(3)
                .and_then(|n| n.parse::<usize>().ok())
                .unwrap_or_else(|| panic!("{l}"))
        })
        .sum();
    assert_eq!(listed, want.len(), "{report}");
    assert!(report.contains("amount.far_above_usual "), "{report}");

    let text = fs::read_to_string(&changed).expect("changed file");
    let mut got = std::collections::BTreeMap::new();
    for line in text.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect(line);
        let tx = v["tx_id"].as_str().expect("tx_id").to_string();
        let (a, b) = (
            v["old"]["action"].as_str().expect("old").to_string(),
            v["new"]["action"].as_str().expect("new").to_string(),
        );
        if tx == **first {
            assert_eq!(v["is_fraud"], !sample_label, "the label file wins: {line}");
        }
        assert!(v["amount"].as_str().is_some() && v["new"]["rules"].is_array());
        got.insert(tx, (a, b));
    }
    let want: std::collections::BTreeMap<String, (String, String)> = want
        .into_iter()
        .map(|(k, (a, b))| (k.clone(), (a.clone(), b.clone())))
        .collect();
    assert_eq!(got, want);
}

#[test]
fn backtest_refuses_a_bad_label_file_and_a_broken_old_pack() {
    let tmp = Scratch::new("backtest-bad");
    let labels = tmp.write(
        "labels.jsonl",
        "{\"tx_id\":\"t-1\",\"is_fraud\":true}\n{\"tx_id\":\"t-2\",\"is_fraud\":\"yes\"}\n",
    );
    let o = vigil(&[
        "replay",
        "replay-data/sample.jsonl.gz",
        "--labels",
        s(&labels),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!("{}: line 2:", s(&labels))),
        "{}",
        stderr(&o)
    );
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let old = tmp.path("old");
    copy_dir(&root.join("rules/packs/default"), &old);
    let file = old.join("card_testing.toml");
    let text = fs::read_to_string(&file).expect("read rule file");
    fs::write(&file, text.replacen("amount < 5", "amount << 5", 1)).expect("write");
    let o = vigil(&[
        "replay",
        "replay-data/sample.jsonl.gz",
        "--compare",
        s(&old),
        "-q",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    assert!(
        stderr(&o).contains(&format!("{}:7:", s(&file))),
        "{}",
        stderr(&o)
    );
    // --changed needs --compare.
    let o = vigil(&["replay", "replay-data/sample.jsonl.gz", "--changed", "x"]);
    assert_eq!(o.status.code(), Some(2));
}

// ---------------------------------------------------------------------------------------------
// serve against brokers that do not answer

/// The status code of `GET path` on `addr`, if it answers.
fn status_of(addr: &str, path: &str) -> Option<u16> {
    request(
        addr,
        &format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n"),
    )
    .map(|(s, _)| s)
}

/// Sends `raw` (a whole HTTP/1.0 request) to `addr`: the answer's status code and body.
fn request(addr: &str, raw: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .ok()?;
    s.write_all(raw.as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let status = buf.split(' ').nth(1)?.parse().ok()?;
    Some((status, buf.split_once("\r\n\r\n")?.1.to_string()))
}

#[test]
fn serve_waiting_for_unreachable_brokers_is_alive_not_ready_and_stops_on_sigterm() {
    let free_port = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port")
    };
    // Bound, then let go: nothing listens there.
    let brokers = format!("127.0.0.1:{}", free_port());
    let http = format!("127.0.0.1:{}", free_port());
    let tmp = Scratch::new("serve-unreachable");
    let log = tmp.0.join("serve.log");
    let out = tmp.0.join("serve.out");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("root");
    let mut child = Command::new(env!("CARGO_BIN_EXE_vigil"))
        .args([
            "serve",
            "--brokers",
            &brokers,
            "--http",
            &http,
            "--state-dir",
        ])
        .arg(tmp.0.join("state"))
        .env("VIGIL_API_TOKENS", "pay:payment_service:secret-pay")
        .current_dir(root)
        .stdout(fs::File::create(&out).expect("out"))
        .stderr(fs::File::create(&log).expect("log"))
        .spawn()
        .expect("start serve");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while status_of(&http, "/healthz") != Some(200) {
        if std::time::Instant::now() > deadline || child.try_wait().expect("poll").is_some() {
            let _ = child.kill();
            panic!(
                "no /healthz while the brokers are unreachable:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Alive, not ready, and scraped meanwhile.
    assert_eq!(status_of(&http, "/readyz"), Some(503));
    assert_eq!(status_of(&http, "/metrics"), Some(200));
    // A payment asked about now would be decided on state the restore would overwrite.
    let body = r#"{"schema":1,"tx_id":"t-1","ts":"2026-11-02T10:00:00Z","kind":"payment","account_id":"a","counterparty_id":"m","amount":"5.00","currency":"EUR"}"#;
    let (status, answer) = request(
        &http,
        &format!(
            "POST /v1/authorize HTTP/1.0\r\nHost: {http}\r\nAuthorization: Bearer secret-pay\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
    .expect("an answer");
    assert_eq!(status, 503, "{answer}");
    assert!(answer.contains(r#""code":"not_ready""#), "{answer}");
    let sent = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill");
    assert!(sent.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().expect("poll") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "no exit 30 s after SIGTERM:\n{}",
                fs::read_to_string(&log).unwrap_or_default()
            );
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let text = fs::read_to_string(&log).unwrap_or_default();
    assert!(status.success(), "{status}:\n{text}");
    let said = fs::read_to_string(&out).unwrap_or_default();
    assert!(
        said.contains("stopped before the brokers answered"),
        "{said}\n{text}"
    );
}
