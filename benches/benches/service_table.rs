//! Service-table benchmarks: longest-prefix lookup at 1 k, 100 k and 1 M random prefixes
//! against the original's one-node-per-bit trie (same keys, same run), insert and remove
//! cost, and heap bytes per rule (printed on stderr).
//!
//! Workload: prefixes with a length uniform in 8..=256 and random bits (a draw that repeats
//! a prefix is drawn again, so the table has exactly N entries), one FORWARD target each;
//! lookup keys uniformly random 256-bit ids. Run with
//! `cargo bench -p serval-benches --bench service_table`; figures go to `BENCHMARKS.md`.

use std::alloc::System;
use std::collections::HashSet;
use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use cap::Cap;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serval_benches::bit_trie::BitTrie;
use serval_stack::service_table::{Rule, ServiceTable};
use serval_stack::wire::{ServiceId, ServicePrefix};

/// Counts live heap bytes, for the memory-per-rule figure.
#[global_allocator]
static ALLOC: Cap<System> = Cap::new(System, usize::MAX);

const SIZES: [(&str, usize); 3] = [("1k", 1_000), ("100k", 100_000), ("1M", 1_000_000)];
/// Lookup keys per iteration (8 MiB of ids, streamed). More keys than the 1 M table has
/// second-level nodes, so each iteration touches the whole structure and what stays cached
/// is what fits; a small key set repeated every iteration would keep just the nodes it
/// touches warm and flatter every structure.
const KEYS: usize = 1 << 18;
/// Prefixes inserted (then removed) per update iteration.
const BATCH: usize = 1000;

fn random_prefix(rng: &mut ChaCha8Rng) -> ServicePrefix {
    let len = rng.random_range(8..=256u16);
    let id = ServiceId::from_bytes(rng.random());
    ServicePrefix::new(id, len).expect("len <= 256")
}

/// `n` distinct random prefixes.
fn random_prefixes(n: usize, seed: u64) -> Vec<ServicePrefix> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut seen = HashSet::with_capacity(n);
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        let p = random_prefix(&mut rng);
        if seen.insert(p) {
            out.push(p);
        }
    }
    out
}

fn random_keys(n: usize, seed: u64) -> Vec<ServiceId> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| ServiceId::from_bytes(rng.random()))
        .collect()
}

fn next_hop(i: usize) -> SocketAddr {
    let i = i as u32;
    SocketAddr::from((i.to_be_bytes(), 54325))
}

/// Wall-clock time of `f`. The sans-IO rule (no clock) is for the protocol core; a bench
/// harness measures time by definition.
#[allow(clippy::disallowed_methods)]
fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let start = Instant::now();
    let out = f();
    (out, start.elapsed())
}

fn build_table(prefixes: &[ServicePrefix]) -> ServiceTable {
    let mut table = ServiceTable::new();
    for (i, p) in prefixes.iter().enumerate() {
        table
            .insert(*p, Rule::forward(next_hop(i)))
            .expect("distinct prefixes");
    }
    table
}

fn build_baseline(prefixes: &[ServicePrefix]) -> BitTrie {
    let mut trie = BitTrie::new();
    for (i, p) in prefixes.iter().enumerate() {
        trie.insert(p, i as u32);
    }
    trie
}

fn configure(group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>) {
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
}

fn lookup(c: &mut Criterion) {
    let keys = random_keys(KEYS, 2);
    let mut group = c.benchmark_group("lookup");
    configure(&mut group);
    group.throughput(Throughput::Elements(KEYS as u64));
    for (name, n) in SIZES {
        let prefixes = random_prefixes(n, 1);

        let before = ALLOC.allocated();
        let (table, took) = timed(|| build_table(&prefixes));
        let bytes = ALLOC.allocated() - before;
        let hits = keys.iter().filter(|k| table.lookup(k).is_some()).count();
        eprintln!(
            "service_table {name}: {} entries, {} heap bytes = {:.1} bytes/rule, \
             built in {:.0} ms ({:.0} ns/insert), {hits}/{KEYS} keys match a rule",
            table.len(),
            bytes,
            bytes as f64 / n as f64,
            took.as_secs_f64() * 1e3,
            took.as_secs_f64() * 1e9 / n as f64,
        );
        group.bench_function(BenchmarkId::new("service_table", name), |b| {
            b.iter(|| {
                for k in &keys {
                    black_box(table.lookup(black_box(k)));
                }
            });
        });
        group.bench_function(BenchmarkId::new("service_table_pick_by_hash", name), |b| {
            b.iter(|| {
                for (h, k) in keys.iter().enumerate() {
                    let pick = table
                        .lookup(black_box(k))
                        .and_then(|e| e.pick_by_hash(h as u64));
                    black_box(pick);
                }
            });
        });

        let before = ALLOC.allocated();
        let (trie, took) = timed(|| build_baseline(&prefixes));
        let bytes = ALLOC.allocated() - before;
        let base_hits = keys.iter().filter(|k| trie.lookup(k).is_some()).count();
        assert_eq!(base_hits, hits, "baseline and table disagree");
        eprintln!(
            "bit_trie {name}: {} nodes, {} heap bytes = {:.1} bytes/rule, built in {:.0} ms",
            trie.node_count(),
            bytes,
            bytes as f64 / n as f64,
            took.as_secs_f64() * 1e3,
        );
        group.bench_function(BenchmarkId::new("bit_trie", name), |b| {
            b.iter(|| {
                for k in &keys {
                    black_box(trie.lookup(black_box(k)));
                }
            });
        });
        interleaved(name, &keys, &table, &trie);
    }
    group.finish();
}

/// Table and baseline timed in alternation, best of `ROUNDS` each: on a shared machine the
/// ratio of two figures taken minutes apart mostly measures the neighbours. Each round runs
/// a structure twice and times the second pass, so neither is measured right after the
/// other has evicted it from the caches.
fn interleaved(name: &str, keys: &[ServiceId], table: &ServiceTable, trie: &BitTrie) {
    const ROUNDS: usize = 10;
    let table_pass = || {
        for k in keys {
            black_box(table.lookup(black_box(k)));
        }
    };
    let trie_pass = || {
        for k in keys {
            black_box(trie.lookup(black_box(k)));
        }
    };
    let (mut best_table, mut best_trie) = (f64::MAX, f64::MAX);
    for _ in 0..ROUNDS {
        table_pass();
        let ((), t) = timed(table_pass);
        best_table = best_table.min(t.as_secs_f64());
        trie_pass();
        let ((), t) = timed(trie_pass);
        best_trie = best_trie.min(t.as_secs_f64());
    }
    let n = keys.len() as f64;
    eprintln!(
        "interleaved {name}: service_table {:.1} ns/lookup ({:.1} M/s), bit_trie {:.1} ns/lookup \
         ({:.2} M/s), ratio {:.1}x (best of {ROUNDS} alternating rounds)",
        best_table * 1e9 / n,
        n / best_table / 1e6,
        best_trie * 1e9 / n,
        n / best_trie / 1e6,
        best_trie / best_table,
    );
}

fn update(c: &mut Criterion) {
    let mut group = c.benchmark_group("update");
    configure(&mut group);
    group.throughput(Throughput::Elements(BATCH as u64));
    for (name, n) in SIZES {
        let prefixes = random_prefixes(n + BATCH, 3);
        let (base, batch) = prefixes.split_at(n);
        let mut table = build_table(base);
        // Insert BATCH new prefixes (timed), then remove them (untimed): the table is back
        // to N entries for the next iteration.
        group.bench_function(BenchmarkId::new("insert", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let ((), took) = timed(|| {
                        for (i, p) in batch.iter().enumerate() {
                            let _ = black_box(table.insert(*p, Rule::forward(next_hop(i))));
                        }
                    });
                    total += took;
                    for p in batch {
                        let _ = table.remove_entry(p);
                    }
                }
                total
            });
        });
        group.bench_function(BenchmarkId::new("remove", name), |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    for (i, p) in batch.iter().enumerate() {
                        let _ = table.insert(*p, Rule::forward(next_hop(i)));
                    }
                    let ((), took) = timed(|| {
                        for p in batch {
                            let _ = black_box(table.remove_entry(p));
                        }
                    });
                    total += took;
                }
                total
            });
        });
        assert_eq!(table.len(), n);
    }
    group.finish();
}

criterion_group!(benches, lookup, update);
criterion_main!(benches);
