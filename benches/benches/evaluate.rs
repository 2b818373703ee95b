//! Stateless evaluation of a compiled five-rule pack against prepared facts: the cost of the
//! rule program alone, comparable to CEL or a JSON decision-graph interpreter. Also the
//! shipped default pack's rules over the transaction kinds in `decide-load`'s mix, with
//! feature values given (no state read).

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigil_rules::{Facts, Feature, Outcome, PackOptions, Program, SourceFile, compile_pack};

/// Exactly the rule set of the issue.
const PACK: &str = r#"
[pack]
name = "bench-five"

[lists]
embargoed = ["KP", "IR", "SY"]

[[rule]]
id = "amount.huge"
when = "amount > 10000"
action = "block"

[[rule]]
id = "amount.large_abroad"
when = "amount > 2000 and country not in home_countries"
action = "review"

[[rule]]
id = "web.new_account_large"
when = "channel == \"web\" and account_age < 2d and amount > 500"
action = "review"

[[rule]]
id = "geo.embargoed"
when = "country in embargoed"
action = "block"

[[rule]]
id = "amount.round_to_new_payee"
when = "amount % 100 == 0 and amount >= 1000 and is_new_payee"
action = "review"
"#;

fn evaluate(c: &mut Criterion) {
    let files = [SourceFile {
        path: "bench.toml".into(),
        rel: "pack.toml".into(),
        text: PACK.into(),
    }];
    let pack = compile_pack(&files, &PackOptions::default()).expect("bench pack compiles");
    let program = &pack.program;
    let homes = [*b"DE", *b"FR"];
    let mut features = vec![0i64; program.features.len()];
    for (slot, f) in program.features.iter().enumerate() {
        features[slot] = match f {
            Feature::AccountAge => 400 * 86_400_000,
            Feature::IsNewPayee => 1,
            _ => 0,
        };
    }
    // Four events that take different paths through the rules.
    let cases: Vec<Facts<'_>> = [
        (1_250, "DE", "app"),
        (3_000, "US", "web"),
        (12_000, "DE", "app"),
        (40, "IR", "web"),
    ]
    .into_iter()
    .map(|(amount, country, channel)| Facts {
        amount: amount * 1_000_000,
        kind: "transfer",
        currency: "EUR",
        channel,
        country,
        home_countries: &homes,
        features: &features,
        ..Facts::default()
    })
    .collect();
    bench_cases(c, "five_rules_x4_events", program, &cases);
}

/// Times `program` over all of `cases`, reported per event.
fn bench_cases(c: &mut Criterion, name: &str, program: &Program, cases: &[Facts<'_>]) {
    let mut out = Outcome::with_capacity(program.rules.len());
    let mut g = c.benchmark_group("evaluate");
    g.throughput(Throughput::Elements(cases.len() as u64));
    g.bench_function(name, |b| {
        b.iter(|| {
            let mut fired = 0;
            for f in cases {
                program.evaluate(std::hint::black_box(f), &mut out);
                fired += out.fired.len();
            }
            fired
        })
    });
    g.finish();
}

/// The default pack's sixteen rules over ten events, features given: six payments, three
/// transfers and a withdrawal (about `decide-load`'s mix, without its 8% top-ups). The
/// features read 5 for every window aggregate, so the first event (a payment of 3) is a card
/// test and fires two rules; the others fire none.
fn default_pack(c: &mut Criterion) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../rules/packs/default");
    let pack = vigil_engine::packs::load(&dir, &PackOptions::default()).expect("default pack");
    let program = &pack.program;
    let features: Vec<i64> = program
        .features
        .iter()
        .map(|f| match f {
            Feature::AccountAge => 400 * 86_400_000,
            Feature::PayeeAccountAge => 200 * 86_400_000,
            Feature::Since(_) => vigil_rules::program::NEVER_MS,
            Feature::IsNewPayee => 1,
            Feature::HistoryCount | Feature::Agg(_) => 5 * 1_000_000,
            Feature::UsualAmount { .. } => 80 * 1_000_000,
            Feature::Balance => 2_000 * 1_000_000,
            Feature::TravelDistanceKm | Feature::HomeDistanceKm => 3 * 1_000_000,
            _ => 0,
        })
        .collect();
    let homes = [*b"DE"];
    let kinds = [
        "payment",
        "transfer",
        "payment",
        "payment",
        "withdrawal",
        "payment",
        "transfer",
        "payment",
        "payment",
        "transfer",
    ];
    let cases: Vec<Facts<'_>> = kinds
        .iter()
        .enumerate()
        .map(|(i, kind)| Facts {
            amount: (3 + 40 * i as i64) * 1_000_000,
            kind,
            kind_bit: vigil_rules::program::kind_bit(kind),
            currency: "EUR",
            channel: "app",
            country: "DE",
            has_geo: true,
            home_countries: &homes,
            features: &features,
            ..Facts::default()
        })
        .collect();
    bench_cases(c, "default_pack_x10_events", program, &cases);
}

criterion_group!(benches, evaluate, default_pack);
criterion_main!(benches);
