//! Consistent hashing: lookup time for 10, 100 and 1000 nodes, balance, and
//! keys moved when a node is added. Larder's HashRing (default points) and
//! KetamaRing against the `hashring` crate (given the same number of virtual
//! nodes) and `mpchash` (multi-probe, its defaults).

#![allow(missing_docs)] // criterion_group! generates undocumented functions

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use larder_benches::manifest::{Better, Manifest};
use larder_ring::{DEFAULT_POINTS_PER_WEIGHT, Dialect, HashRing, KetamaRing};

const BATCH: usize = 1024;
const BALANCE_KEYS: u64 = 1_000_000;

#[derive(Hash, Clone, Copy, PartialEq, Eq, Debug)]
struct VNode {
    node: u32,
    replica: u32,
}

#[derive(Hash, Clone, Copy, PartialEq, Eq, Debug)]
struct Node(u32);

fn name(i: usize) -> String {
    format!("10.1.{}.{}:6379", i / 256, i % 256)
}

fn larder_ring(n: usize) -> HashRing {
    HashRing::new((0..n).map(|i| (name(i), 1))).unwrap()
}

fn ketama_ring(n: usize) -> KetamaRing {
    KetamaRing::new((0..n).map(|i| (name(i), 1)), Dialect::Libketama).unwrap()
}

fn peer_hashring(n: usize) -> hashring::HashRing<VNode> {
    let mut r = hashring::HashRing::new();
    let vnodes: Vec<VNode> = (0..n as u32)
        .flat_map(|node| (0..DEFAULT_POINTS_PER_WEIGHT).map(move |replica| VNode { node, replica }))
        .collect();
    r.batch_add(vnodes);
    r
}

fn peer_mpchash(n: usize) -> mpchash::HashRing<Node> {
    let r = mpchash::HashRing::new();
    for i in 0..n as u32 {
        r.add(Node(i));
    }
    r
}

fn keys(seed: u64, count: usize) -> Vec<[u8; 8]> {
    let mut x = seed;
    (0..count)
        .map(|_| {
            x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            (z ^ (z >> 27)).to_le_bytes()
        })
        .collect()
}

/// (stddev / mean, max / mean) of keys per node.
fn balance(n: usize, owner: impl Fn(&[u8; 8]) -> usize) -> (f64, f64) {
    let mut counts = vec![0u64; n];
    for k in keys(7, BALANCE_KEYS as usize) {
        counts[owner(&k)] += 1;
    }
    let mean = BALANCE_KEYS as f64 / n as f64;
    let var = counts
        .iter()
        .map(|&c| (c as f64 - mean).powi(2))
        .sum::<f64>()
        / n as f64;
    let max = *counts.iter().max().unwrap() as f64;
    (var.sqrt() / mean, max / mean)
}

/// Fraction of keys that moved when node n+1 joined, divided by the ideal 1/(n+1).
fn moved_vs_ideal(
    before: impl Fn(&[u8; 8]) -> usize,
    after: impl Fn(&[u8; 8]) -> usize,
    n: usize,
) -> f64 {
    let ks = keys(11, 200_000);
    let moved = ks.iter().filter(|k| before(k) != after(k)).count() as f64 / ks.len() as f64;
    moved * (n + 1) as f64
}

fn ring_benches(c: &mut Criterion) {
    let mut m = Manifest::create("ring");
    let batch = keys(3, BATCH);
    for n in [10usize, 100, 1000] {
        let group = format!("ring/lookup/{n} nodes");
        let mut g = c.benchmark_group(&group);
        g.throughput(Throughput::Elements(BATCH as u64));

        let ours = larder_ring(n);
        m.time(&group, "larder HashRing", BATCH as u64);
        g.bench_function("larder HashRing", |b| {
            b.iter(|| {
                for k in &batch {
                    black_box(ours.index_for(black_box(k)));
                }
            })
        });
        let ketama = ketama_ring(n);
        m.time(&group, "larder KetamaRing", BATCH as u64);
        g.bench_function("larder KetamaRing", |b| {
            b.iter(|| {
                for k in &batch {
                    black_box(ketama.index_for(black_box(k)));
                }
            })
        });
        let hr = peer_hashring(n);
        m.time(&group, "hashring", BATCH as u64);
        g.bench_function("hashring", |b| {
            b.iter(|| {
                for k in &batch {
                    black_box(hr.get(black_box(k)));
                }
            })
        });
        let mp = peer_mpchash(n);
        m.time(&group, "mpchash", BATCH as u64);
        g.bench_function("mpchash", |b| {
            b.iter(|| {
                for k in &batch {
                    black_box(mp.node(black_box(k)).map(|t| t.node().0));
                }
            })
        });
        g.finish();
        m.compare(&group, "larder HashRing", "hashring");
        m.compare(&group, "larder HashRing", "mpchash");
        m.compare(&group, "larder KetamaRing", "hashring");

        if n <= 100 {
            let bal = format!("ring/balance/{n} nodes");
            let (sd, max) = balance(n, |k| ours.index_for(k).unwrap());
            m.value(
                &bal,
                "larder HashRing stddev/mean",
                sd * 100.0,
                "%",
                Better::Lower,
            );
            m.value(&bal, "larder HashRing max/mean", max, "x", Better::Lower);
            let (sd, max) = balance(n, |k| ketama.index_for(k).unwrap());
            m.value(
                &bal,
                "larder KetamaRing stddev/mean",
                sd * 100.0,
                "%",
                Better::Lower,
            );
            m.value(&bal, "larder KetamaRing max/mean", max, "x", Better::Lower);
            let (sd, max) = balance(n, |k| hr.get(k).unwrap().node as usize);
            m.value(&bal, "hashring stddev/mean", sd * 100.0, "%", Better::Lower);
            m.value(&bal, "hashring max/mean", max, "x", Better::Lower);
            let (sd, max) = balance(n, |k| mp.node(k).unwrap().node().0 as usize);
            m.value(&bal, "mpchash stddev/mean", sd * 100.0, "%", Better::Lower);
            m.value(&bal, "mpchash max/mean", max, "x", Better::Lower);
            m.compare(&bal, "larder HashRing stddev/mean", "hashring stddev/mean");
            m.compare(&bal, "larder HashRing stddev/mean", "mpchash stddev/mean");

            let grown = ours.with_node(name(n), 1).unwrap();
            let r = moved_vs_ideal(
                |k| ours.index_for(k).unwrap(),
                |k| grown.index_for(k).unwrap(),
                n,
            );
            m.value(
                &bal,
                "larder HashRing moved on add / ideal",
                r,
                "x",
                Better::Lower,
            );
            let mp2 = peer_mpchash(n + 1);
            let r = moved_vs_ideal(
                |k| mp.node(k).unwrap().node().0 as usize,
                |k| mp2.node(k).unwrap().node().0 as usize,
                n,
            );
            m.value(&bal, "mpchash moved on add / ideal", r, "x", Better::Lower);
        }
    }
}

criterion_group!(benches, ring_benches);
criterion_main!(benches);
