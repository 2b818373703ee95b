//! `decide()` with the default pack on state holding many accounts.

use std::path::Path;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use vigil_benches::Workload;
use vigil_engine::engine::Scratch;
use vigil_engine::{Engine, EngineConfig, packs};
use vigil_rules::PackOptions;

fn decide(c: &mut Criterion) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let pack = packs::load(&root.join("rules/packs/default"), &PackOptions::default())
        .expect("default pack");
    let accounts: u32 = std::env::var("VIGIL_BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let config = EngineConfig {
        accounts_capacity: accounts as usize,
        ..EngineConfig::default()
    };
    let engine = Engine::new(pack, config);
    let mut w = Workload::new(accounts, 7);
    for i in 0..accounts {
        engine.apply(&w.opened(i));
    }
    for k in 0..accounts * 2 {
        engine.decide(&w.tx_for(k % accounts));
    }
    let mut g = c.benchmark_group("decide");
    g.throughput(Throughput::Elements(1));
    let mut out = Scratch::default();
    g.bench_function(format!("default_pack_{accounts}_accounts"), |b| {
        b.iter_batched(
            || w.next_tx(),
            |tx| engine.decide_into(&tx, &mut out),
            BatchSize::SmallInput,
        )
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = decide
}
criterion_main!(benches);
