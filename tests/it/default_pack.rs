//! The shipped pack compiles and its own test cases pass through the engine.

use vigil_engine::packs;
use vigil_rules::PackOptions;
use vigil_tests::root;

#[test]
fn the_default_pack_checks_and_every_rule_has_a_test_that_fires_it() {
    let pack = packs::load(&root().join("rules/packs/default"), &PackOptions::default())
        .expect("default pack");
    let results = packs::run_tests(&pack);
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !r.passed())
        .map(|r| {
            format!(
                "{}:{} {}: {:?}",
                r.case.file, r.case.line, r.case.name, r.failures
            )
        })
        .collect();
    assert!(
        failed.is_empty(),
        "failing pack tests:\n{}",
        failed.join("\n")
    );
    assert!(pack.warnings.is_empty(), "{:?}", pack.warnings);
    for rule in &pack.program.rules {
        let covered = pack.tests.iter().any(|t| {
            t.expect
                .rules
                .as_ref()
                .is_some_and(|r| r.contains(&rule.meta.id))
        });
        assert!(
            covered,
            "rule {} has no test case expecting it to fire",
            rule.meta.id
        );
    }
}

#[test]
fn a_pack_test_that_expects_the_wrong_thing_fails_with_a_diff() {
    let dir = vigil_tests::TempDir::new("wrong-expectation");
    std::fs::write(dir.join("pack.toml"), "[pack]\nname = \"t\"\n[[rule]]\nid = \"big\"\naction = \"review\"\nwhen = \"amount > 100\"\n").unwrap();
    std::fs::create_dir_all(dir.join("tests")).unwrap();
    std::fs::write(
        dir.join("tests/t.toml"),
        "[[case]]\nname = \"small\"\nevents = [{ kind = \"payment\", account_id = \"a\", counterparty_id = \"m\", amount = \"500.00\", currency = \"EUR\" }]\nexpect = { action = \"allow\", rules = [] }\n",
    )
    .unwrap();
    let pack = packs::load(&dir, &PackOptions::default()).unwrap();
    let r = &packs::run_tests(&pack)[0];
    assert_eq!(
        r.failures,
        [
            "action: expected allow, got review",
            "+ big (fired, not expected: amount=500)"
        ]
    );
}

#[test]
fn an_empty_directory_is_not_a_pack() {
    let dir = vigil_tests::TempDir::new("empty");
    let err = packs::load(&dir, &PackOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.ends_with(": no pack here (expected pack.toml and rule files *.toml)"),
        "{err}"
    );
}
