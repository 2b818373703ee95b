//! Tests of the whole language path: pack text in, diagnostics or decisions out.

use crate::diag::SourceFile;
use crate::num::NUM_SCALE;
use crate::pack::{PackOptions, compile_pack};
use crate::program::{Action, Facts, Outcome};

const HEAD: &str = "[pack]\nname = \"t\"\n[lists]\nhigh_risk = [\"KP\", \"IR\"]\n";

fn files(rules: &str) -> Vec<SourceFile> {
    vec![SourceFile {
        path: "p/pack.toml".into(),
        rel: "pack.toml".into(),
        text: format!("{HEAD}{rules}"),
    }]
}

/// Compiles a pack made of HEAD plus `rules` and returns its diagnostics as text.
fn errors(rules: &str) -> Vec<String> {
    match compile_pack(&files(rules), &PackOptions::default()) {
        Ok(_) => vec![],
        Err(d) => d.0.iter().map(ToString::to_string).collect(),
    }
}

fn one_rule(when: &str) -> Vec<String> {
    errors(&format!(
        "[[rule]]\nid = \"r\"\naction = \"review\"\nwhen = \"{when}\"\n"
    ))
}

#[test]
fn each_error_names_file_line_column_and_fix() {
    // `when = "` puts the expression at column 9 of line 8.
    let cases: &[(&str, &str)] = &[
        (
            "amout > 5",
            "p/pack.toml:8:9: unknown field, function or list 'amout' (did you mean 'amount'?)",
        ),
        (
            "amount > 'x'",
            "p/pack.toml:8:16: type mismatch: cannot apply '>' to a number and a string (numbers are written without quotes)",
        ),
        (
            "amount > 5 and kind == 'transfr'",
            "p/pack.toml:8:32: unknown transaction kind 'transfr' (did you mean 'transfer'?); kinds are transfer, payment, withdrawal, top_up, refund",
        ),
        (
            "country in high_rsk",
            "p/pack.toml:8:20: unknown field, function or list 'high_rsk' (did you mean 'high_risk'?)",
        ),
        (
            "count(tx by account over 45d) > 1",
            "p/pack.toml:8:34: window 45d is longer than the limit of 30d",
        ),
        (
            "count(tx by acount over 1h) > 1",
            "p/pack.toml:8:21: unknown key 'acount': windows are kept by account, device, ip or counterparty (did you mean 'account'?)",
        ),
        (
            "conut(tx by account over 10m) > 5",
            "p/pack.toml:8:9: unknown aggregate 'conut' (did you mean 'count'?): one of count, sum, avg, max, min, distinct",
        ),
        (
            "sum(tx by account over 1h) > 1",
            "p/pack.toml:8:13: sum works on amount: write 'sum(amount by account over ...)'",
        ),
        (
            "since(password_rest) < 1h",
            "p/pack.toml:8:15: unknown account event 'password_rest' (did you mean 'password_reset'?); kinds are account_opened, login, new_device, password_reset, email_changed, phone_changed, payee_added",
        ),
        (
            "since(login) < 5",
            "p/pack.toml:8:22: type mismatch: cannot apply '<' to a duration and a number (durations carry a unit, such as 10m or 2d; numbers such as hour or amount do not)",
        ),
        (
            "amount",
            "p/pack.toml:8:9: a rule's 'when' must be true or false, but this is a number",
        ),
        (
            "amount > 5 and",
            "p/pack.toml:8:23: expected a value, found the end of the expression",
        ),
        (
            "country == 'china'",
            "p/pack.toml:8:20: country codes are two uppercase letters (ISO 3166), found 'china'",
        ),
        (
            "velocity(account) > 3",
            "p/pack.toml:8:9: unknown function 'velocity'",
        ),
        (
            "kind < 'payment'",
            "p/pack.toml:8:14: '<' does not order text or booleans; use == or !=",
        ),
    ];
    for (when, want) in cases {
        assert_eq!(one_rule(when), vec![want.to_string()], "when = {when}");
    }
}

#[test]
fn pack_level_mistakes_are_reported_each_with_a_place() {
    let got = errors(
        "[[rule]]\nid = \"a\"\naction = \"blok\"\nwhen = \"amount > 1\"\n\
         [[rule]]\nid = \"a\"\nwhen = \"amount > 2\"\nscore = 5\n\
         [[rule]]\nid = \"b\"\nwhen = \"amount > 3\"\n",
    );
    assert_eq!(
        got,
        vec![
            "p/pack.toml:7:11: unknown action 'blok' (did you mean 'block'?); actions are allow, review, step_up, block",
            "p/pack.toml:10:7: duplicate rule id 'a' (first defined at p/pack.toml:5)",
            "p/pack.toml:13:1: rule 'b' needs an action, a score, or both",
        ]
    );
    let got = errors("[[rule]]\nid = \"a\"\nacton = \"block\"\nwhen = \"amount > 1\"\n");
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("p/pack.toml:7:1: unknown key 'acton' (did you mean 'action'?)"),
        "{got:?}"
    );
    let got = errors("[[rule]\n");
    assert!(got[0].starts_with("p/pack.toml:5:"), "{got:?}");
}

#[test]
fn scores_and_thresholds_are_bounded_and_ordered() {
    let got = errors("[[rule]]\nid = \"a\"\nscore = 9223372036854775807\nwhen = \"amount > 1\"\n");
    assert_eq!(
        got,
        vec!["p/pack.toml:7:9: score 9223372036854775807 is outside -1000000..=1000000"]
    );
    let files = |t: &str| {
        vec![SourceFile {
            path: "p.toml".into(),
            rel: "pack.toml".into(),
            text: format!("[pack]\nname = \"t\"\n[pack.thresholds]\n{t}"),
        }]
    };
    let err = |t: &str| {
        compile_pack(&files(t), &PackOptions::default())
            .unwrap_err()
            .0[0]
            .to_string()
    };
    assert_eq!(
        err("review = 0\n"),
        "p.toml:4:10: threshold review = 0 must be above 0 (a total of 0 is what every allowed transaction scores)"
    );
    assert_eq!(
        err("review = 50\nblock = 40\n"),
        "p.toml:5:9: thresholds must rise with the action: review <= step_up <= block (block = 40 is below review = 50)"
    );
    assert_eq!(
        err("review = 100\nstep_up = 60\nblock = 80\n"),
        "p.toml:5:11: thresholds must rise with the action: review <= step_up <= block (step_up = 60 is below review = 100)"
    );
    assert_eq!(
        err("review = 10\nblock = 1000000001\n"),
        "p.toml:5:9: threshold block = 1000000001 is more than the limit of 1000000000"
    );
}

#[test]
fn mixing_and_with_or_without_parentheses_and_untested_rules_are_warned() {
    let pack = compile_pack(
        &files("[[rule]]\nid = \"r\"\naction = \"review\"\nwhen = \"amount > 5 and kind == 'payment' or hour < 5\"\n\
                [[rule]]\nid = \"s\"\naction = \"review\"\nwhen = \"(amount > 5 and kind == 'payment') or hour < 5\"\n"),
        &PackOptions::default(),
    )
    .unwrap();
    let got: Vec<String> = pack.warnings.iter().map(ToString::to_string).collect();
    assert_eq!(
        got,
        [
            "p/pack.toml:8:20: 'and' binds tighter than 'or' here: add parentheses to say which you mean",
            "p/pack.toml:5:1: rule 'r' has no test case that expects it to fire",
            "p/pack.toml:9:1: rule 's' has no test case that expects it to fire",
        ]
    );
}

#[test]
fn one_broken_rule_file_is_one_problem_not_a_cascade() {
    let f = vec![
        SourceFile { path: "p/pack.toml".into(), rel: "pack.toml".into(), text: "[pack]\nname = \"t\"\n".into() },
        SourceFile { path: "p/night.toml".into(), rel: "night.toml".into(), text: "[[rule]]\nid = \"night\"\nscore = \"30\"\nwhen = \"hour < 5\"\n".into() },
        SourceFile {
            path: "p/tests/night.toml".into(),
            rel: "tests/night.toml".into(),
            text: "[[case]]\nname = \"n\"\nevents = [{ kind = \"payment\" }]\nexpect = { action = \"reveiw\", rules = [\"night\"] }\n".into(),
        },
    ];
    let got: Vec<String> = compile_pack(&f, &PackOptions::default())
        .unwrap_err()
        .0
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(
        got,
        [
            "p/night.toml:3:9: invalid type: string \"30\", expected a whole number",
            "p/tests/night.toml:4:22: unknown action 'reveiw' (did you mean 'review'?)",
        ]
    );
}

#[test]
fn a_list_of_the_wrong_shape_says_what_a_list_is() {
    let cases = [
        (
            "x = [\"KP\", 1]",
            "p/extra.toml:2:5: list item 2 is an integer, not a string: write every item in quotes",
        ),
        (
            "x = { file = 7 }",
            "p/extra.toml:2:5: file is an integer: write the path in quotes, { file = \"lists/NAME.txt\" }",
        ),
        (
            "x = { path = \"lists/a.txt\" }",
            "p/extra.toml:2:5: unknown key 'path' in a list: a list is an array of strings, [\"KP\", \"IR\"], or a list file, { file = \"lists/NAME.txt\" }",
        ),
        (
            "x = \"KP\"",
            "p/extra.toml:2:5: a list is an array of strings, [\"KP\", \"IR\"], or a list file, { file = \"lists/NAME.txt\" }; found a string",
        ),
    ];
    for (line, want) in cases {
        let mut f = files("");
        f.push(SourceFile {
            path: "p/extra.toml".into(),
            rel: "extra.toml".into(),
            text: format!("[lists]\n{line}\n"),
        });
        let got = compile_pack(&f, &PackOptions::default()).unwrap_err().0;
        assert_eq!(got[0].to_string(), want, "{line}");
    }
}

#[test]
fn a_missing_list_file_and_a_missing_pack_table_are_errors() {
    let mut f = files("");
    f.push(SourceFile {
        path: "p/extra.toml".into(),
        rel: "extra.toml".into(),
        text: "[lists]\nmules = { file = \"lists/nope.txt\" }\n".into(),
    });
    let got = compile_pack(&f, &PackOptions::default()).unwrap_err().0;
    assert_eq!(
        got[0].to_string(),
        "p/extra.toml:2:9: list file 'lists/nope.txt' not found in the pack (list files live under lists/)"
    );
    let f = vec![SourceFile {
        path: "x.toml".into(),
        rel: "x.toml".into(),
        text: "[[rule]]\nid=\"a\"\nscore=1\nwhen=\"true\"\n".into(),
    }];
    let err = compile_pack(&f, &PackOptions::default()).unwrap_err();
    assert!(err.0[0].message.contains("no [pack] table"));
}

fn facts(amount_major: i64, country: &'static str, features: &'static [i64]) -> Facts<'static> {
    Facts {
        amount: amount_major * NUM_SCALE,
        kind: "transfer",
        country,
        currency: "EUR",
        channel: "app",
        features: Box::leak(Box::new(features)),
        ..Facts::default()
    }
}

#[test]
fn highest_action_wins_scores_add_and_shadow_rules_do_not_act() {
    let pack = compile_pack(
        &files(
            "[pack.thresholds]\nreview = 50\nblock = 100\n\
             [[rule]]\nid = \"big\"\nscore = 60\nwhen = \"amount > 1000\"\n\
             [[rule]]\nid = \"risky_country\"\nscore = 50\nwhen = \"country in high_risk\"\n\
             [[rule]]\nid = \"shadow_block\"\naction = \"block\"\nmode = \"shadow\"\nwhen = \"amount > 1\"\n\
             [[rule]]\nid = \"step\"\naction = \"step_up\"\nwhen = \"amount > 5000 and country not in ['DE']\"\n",
        )
        .into_iter()
        .map(|mut f| {
            // thresholds must sit under [pack]: move them before [lists].
            f.text = f.text.replace("[lists]\nhigh_risk = [\"KP\", \"IR\"]\n[pack.thresholds]\nreview = 50\nblock = 100\n", "[pack.thresholds]\nreview = 50\nblock = 100\n[lists]\nhigh_risk = [\"KP\", \"IR\"]\n");
            f
        })
        .collect::<Vec<_>>(),
        &PackOptions::default(),
    )
    .unwrap();
    let mut out = Outcome::with_capacity(8);
    pack.program.evaluate(&facts(10, "DE", &[]), &mut out);
    assert_eq!(
        (out.action, out.score, out.fired.len()),
        (Action::Allow, 0, 1)
    );
    assert!(out.fired[0].shadow);
    pack.program.evaluate(&facts(2000, "DE", &[]), &mut out);
    assert_eq!((out.action, out.score), (Action::Review, 60));
    pack.program.evaluate(&facts(2000, "KP", &[]), &mut out);
    assert_eq!((out.action, out.score), (Action::Block, 110));
    pack.program.evaluate(&facts(6000, "FR", &[]), &mut out);
    assert_eq!((out.action, out.score), (Action::StepUp, 60));
    let ids: Vec<&str> = out
        .fired
        .iter()
        .map(|f| pack.program.rules[f.rule as usize].meta.id.as_str())
        .collect();
    assert_eq!(ids, ["big", "shadow_block", "step"]);
    let why = pack.program.explain(3, &facts(6000, "FR", &[]));
    assert_eq!(
        why.iter()
            .map(|(t, v)| format!("{t}={v}"))
            .collect::<Vec<_>>(),
        ["amount=6000", "country=FR"]
    );
}

#[test]
fn features_get_slots_and_errors_do_not_fire() {
    let pack = compile_pack(
        &files(
            "[[rule]]\nid = \"ratio\"\naction = \"review\"\nwhen = \"amount / usual_amount(30d) > 10\"\n\
             [[rule]]\nid = \"burst\"\naction = \"block\"\nwhen = \"count(tx by account over 10m) >= 8 and since(password_reset) < 1h\"\n",
        ),
        &PackOptions::default(),
    )
    .unwrap();
    assert_eq!(pack.program.features.len(), 3);
    let mut out = Outcome::with_capacity(4);
    // usual_amount = 0 → division by zero → rule error, not a hit.
    static ZERO: [i64; 3] = [0, 9 * NUM_SCALE, 20 * 60_000];
    pack.program.evaluate(&facts(100, "DE", &ZERO), &mut out);
    assert_eq!(out.errors, vec![0]);
    assert_eq!(out.action, Action::Block);
    let why = pack.program.explain(1, &facts(100, "DE", &ZERO));
    assert_eq!(
        why.iter()
            .map(|(t, v)| format!("{t}={v}"))
            .collect::<Vec<_>>(),
        [
            "count(tx by account over 10m)=9",
            "since(password_reset)=20m"
        ]
    );
}

mod optimize {
    use crate::Facts;
    use crate::catalog::{NumField, StrField, TX_KINDS};
    use crate::program::{Arith, B, Cmp, D, KINDS_ALL, N, S, StrSet, kind_bit, optimize};
    use proptest::prelude::*;

    fn cmp(i: u8) -> Cmp {
        [Cmp::Eq, Cmp::Ne, Cmp::Lt, Cmp::Le, Cmp::Gt, Cmp::Ge][usize::from(i % 6)]
    }

    proptest! {
        /// The optimised tree answers exactly like the tree the checker built.
        #[test]
        fn optimized_conditions_agree_with_the_original(
            ops in prop::collection::vec(0u8..6, 6),
            k in -5i64..5,
            amount in -5i64..5,
            feats in prop::collection::vec(-5i64..5, 3),
            has_geo in any::<bool>(),
        ) {
            let n = |i: usize| B::CmpNum(cmp(ops[i]), Box::new((N::Field(NumField::Amount), N::Const(k))));
            let flipped = B::CmpNum(cmp(ops[1]), Box::new((N::Const(k), N::Feature(0))));
            let dur = B::CmpDur(cmp(ops[2]), Box::new((D::Const(k), D::Feature(1))));
            // A boolean feature, the location flag and a negation as terms of the chains too.
            let tree = B::Or(Box::new((
                B::And(Box::new((n(0), B::And(Box::new((flipped, B::Not(Box::new(dur)))))))),
                B::Or(Box::new((
                    B::And(Box::new((B::Feature(2), B::Not(Box::new(B::HasGeo))))),
                    B::Or(Box::new((n(3), B::And(Box::new((n(4), n(5))))))),
                ))),
            )));
            let facts = Facts { amount, has_geo, features: &feats, ..Facts::default() };
            prop_assert_eq!(optimize(tree.clone(), &[]).eval(&facts, &[]), tree.eval(&facts, &[]));
        }

        /// Kind tests become bit tests that answer like the text comparison, for every kind,
        /// none, and one no rule can name; with the kind's bit given or worked out.
        #[test]
        fn kind_tests_agree_with_comparing_text(
            eq in any::<bool>(),
            neg in any::<bool>(),
            not in any::<bool>(),
            c in 0..TX_KINDS.len(),
            picks in prop::collection::vec(0..TX_KINDS.len(), 1..4),
            actual in 0..TX_KINDS.len() + 2,
            given in any::<bool>(),
            swap in any::<bool>(),
        ) {
            let lists = [StrSet::new(picks.iter().map(|&i| TX_KINDS[i].to_string()))];
            let (field, lit) = (S::Field(StrField::Kind), S::Const(TX_KINDS[c].into()));
            let eq_str = if swap { B::EqStr(eq, lit, field.clone()) } else { B::EqStr(eq, field.clone(), lit) };
            let tree = B::Or(Box::new((
                if not { B::Not(Box::new(eq_str)) } else { eq_str },
                B::InList(neg, field, 0),
            )));
            let optimized = optimize(tree.clone(), &lists);
            let B::Any(terms) = &optimized else { panic!("{optimized:?}") };
            prop_assert!(terms.iter().all(|t| matches!(t, B::KindIn(_))), "{terms:?}");
            // Every kind, then none, then one no rule can name.
            let kind = TX_KINDS.get(actual).copied().unwrap_or(if actual == TX_KINDS.len() { "" } else { "chargeback" });
            let facts = Facts {
                kind,
                kind_bit: if given { kind_bit(kind) } else { 0 },
                ..Facts::default()
            };
            prop_assert_eq!(optimized.eval(&facts, &lists), tree.eval(&facts, &lists));
        }

        /// A rule skipped for a kind would have been false for it, never an error: kind tests
        /// after a term that can fail do not count.
        #[test]
        fn a_rule_is_skipped_only_where_it_is_false(
            order in prop::collection::vec(0u8..4, 1..5),
            mask in 1u8..=KINDS_ALL,
            amount in -3i64..3,
            actual in 0..TX_KINDS.len() + 1,
        ) {
            let term = |t: u8| match t {
                0 => B::KindIn(mask),
                1 => B::FieldK(Cmp::Gt, NumField::Amount, 0),
                // Fails (division by zero) when the amount is 0.
                2 => B::CmpNum(Cmp::Gt, Box::new((
                    N::Arith(Arith::Div, Box::new((N::Const(1), N::Field(NumField::Amount)))),
                    N::Const(0),
                ))),
                _ => B::KindIn(KINDS_ALL & !mask),
            };
            let cond = B::All(order.iter().map(|&t| term(t)).collect());
            let kind = TX_KINDS.get(actual).copied().unwrap_or("");
            let facts = Facts { amount, kind, ..Facts::default() };
            if cond.kinds() & kind_bit(kind) == 0 {
                prop_assert_eq!(cond.eval(&facts, &[]), Some(false));
            }
        }
    }

    #[test]
    fn kinds_come_from_the_leading_kind_tests() {
        let t = |k: &str| B::KindIn(kind_bit(k));
        let div = B::CmpNum(
            Cmp::Gt,
            Box::new((
                N::Arith(Arith::Div, Box::new((N::Const(1), N::Feature(0)))),
                N::Const(0),
            )),
        );
        let both = kind_bit("transfer") | kind_bit("payment");
        let in_both = B::KindIn(both);
        assert_eq!(
            B::All(Box::new([in_both.clone(), t("payment")])).kinds(),
            kind_bit("payment")
        );
        assert_eq!(
            B::All(Box::new([B::Feature(1), t("transfer")])).kinds(),
            kind_bit("transfer")
        );
        // A kind test after a term that can fail does not narrow: that term may err first.
        assert_eq!(
            B::All(Box::new([in_both.clone(), div, t("payment")])).kinds(),
            both
        );
        assert_eq!(
            B::Any(Box::new([t("payment"), t("refund")])).kinds(),
            KINDS_ALL
        );
        assert_eq!(B::Feature(0).kinds(), KINDS_ALL);
        assert_eq!(in_both.kinds(), both);
    }
}

mod sets {
    use crate::program::StrSet;
    use proptest::prelude::*;

    proptest! {
        /// Whatever shape a set takes (short texts as numbers, a scan, a hash), it answers
        /// like a plain list: texts of 0 to 9 bytes, NUL bytes included, 0 to 20 items.
        #[test]
        fn a_set_answers_like_a_list(
            items in prop::collection::vec("[AB\\x00]{0,9}", 0..20),
            probes in prop::collection::vec("[AB\\x00]{0,9}", 1..20),
        ) {
            let set = StrSet::new(items.iter().cloned());
            for p in probes.iter().chain(&items) {
                prop_assert_eq!(set.contains(p), items.contains(p), "{:?}", p);
            }
            let mut got: Vec<&str> = set.iter().collect();
            got.sort_unstable();
            let mut want: Vec<&str> = items.iter().map(String::as_str).collect();
            want.sort_unstable();
            want.dedup();
            prop_assert_eq!(got, want);
        }
    }
}
