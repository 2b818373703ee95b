//! Decoding one event from its JSON bytes, as the Kafka pipeline and `vigil replay` do for every
//! message: a transaction as `vigil gen` writes it, and an account event.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use vigil_engine::event::decode;

const TRANSACTION: &[u8] = br#"{"schema":1,"tx_id":"t-00001009","ts":"2026-11-01T01:40:45.442Z","kind":"payment","account_id":"a-000008","counterparty_id":"m-090834","amount":"150.29","currency":"EUR","channel":"app","device_id":"d-000008-1","ip":"18.180.40.67","geo":{"lat":40.4074,"lon":-3.7162,"country":"ES"},"is_fraud":false}"#;
const ACCOUNT_EVENT: &[u8] = br#"{"schema":1,"event_id":"e-00000003","ts":"2022-09-24T23:47:48.652Z","kind":"account_opened","account_id":"a-000724","device_id":"d-000724-1","ip":"80.153.64.80","geo":{"lat":25.7716,"lon":-80.2216,"country":"US"},"locale":"en","currency":"USD"}"#;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("transaction", |b| {
        b.iter(|| decode(std::hint::black_box(TRANSACTION)).expect("valid"))
    });
    g.bench_function("account_event", |b| {
        b.iter(|| decode(std::hint::black_box(ACCOUNT_EVENT)).expect("valid"))
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
