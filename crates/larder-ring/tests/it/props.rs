//! Model-based properties: a ring with a node marked down or removed is
//! compared with the ring that never had it.

use larder_ring::{Dialect, HashRing, KetamaRing, jump_hash};
use proptest::prelude::*;

fn names(n: usize) -> Vec<(String, u32)> {
    (0..n)
        .map(|i| (format!("node-{i}:6379"), 1 + (i as u32 % 3)))
        .collect()
}

fn small_ring(n: usize) -> HashRing {
    let mut b = HashRing::builder().points_per_weight(64);
    for (name, w) in names(n) {
        b = b.node(name, w);
    }
    b.build().unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Removing a node moves only that node's keys, and marking it down
    /// sends them exactly where the ring without it would.
    #[test]
    fn removal_moves_only_the_removed_nodes_keys(n in 2usize..12, victim in any::<prop::sample::Index>(), keys in proptest::collection::vec(any::<u64>(), 200)) {
        let ring = small_ring(n);
        let victim = victim.index(n);
        let name = ring.name(victim).unwrap().to_owned();
        let without = ring.without_node(&name).unwrap();
        ring.mark_down(victim).unwrap();
        for k in keys {
            let key = k.to_le_bytes();
            let down = ring.node_for(&key).unwrap();
            let removed = without.node_for(&key).unwrap();
            prop_assert_eq!(down, removed);
            ring.mark_up(victim).unwrap();
            let before = ring.node_for(&key).unwrap().to_owned();
            ring.mark_down(victim).unwrap();
            if before != name {
                prop_assert_eq!(down, before.as_str(), "a key of a live node moved");
            }
        }
    }

    /// Adding a node moves keys only to it.
    #[test]
    fn adding_moves_keys_only_to_the_new_node(n in 1usize..12, keys in proptest::collection::vec(any::<u64>(), 200)) {
        let ring = small_ring(n);
        let bigger = ring.with_node("newcomer:6379", 2).unwrap();
        for k in keys {
            let key = k.to_le_bytes();
            let (a, b) = (ring.node_for(&key).unwrap(), bigger.node_for(&key).unwrap());
            prop_assert!(a == b || b == "newcomer:6379", "{a} -> {b}");
        }
    }

    /// Replicas are distinct live nodes, led by the owner.
    #[test]
    fn replicas_are_distinct_and_led_by_the_owner(n in 1usize..10, want in 1usize..12, down in proptest::collection::vec(any::<bool>(), 10), key in any::<u64>()) {
        let ring = small_ring(n);
        for (i, d) in down.iter().take(n).enumerate() {
            if *d { ring.mark_down(i).unwrap(); }
        }
        let key = key.to_le_bytes();
        let reps = ring.indices_for(&key, want);
        prop_assert_eq!(reps.len(), want.min(ring.live_nodes()));
        let mut sorted = reps.clone();
        sorted.sort_unstable();
        sorted.dedup();
        prop_assert_eq!(sorted.len(), reps.len());
        prop_assert!(reps.iter().all(|&i| ring.is_up(i)));
        prop_assert_eq!(reps.first().copied(), ring.index_for(&key));
    }

    /// Ketama replicas: distinct nodes too.
    #[test]
    fn ketama_replicas_are_distinct(key in any::<u64>(), want in 1usize..6) {
        let ring = KetamaRing::new(names(5), Dialect::Libketama).unwrap();
        let reps = ring.indices_for(&key.to_le_bytes(), want);
        prop_assert_eq!(reps.len(), want.min(5));
        prop_assert_eq!(reps[0], ring.index_for(&key.to_le_bytes()).unwrap());
    }

    /// Jump hash moves keys only to the new bucket when growing.
    #[test]
    fn jump_growth(key in any::<u64>(), n in 1u32..2000) {
        let (a, b) = (jump_hash(key, n), jump_hash(key, n + 1));
        prop_assert!(a < n && (a == b || b == n));
    }
}

/// How many keys owned by a node other than `removed` changed owner.
fn live_key_moves(
    keys: impl Iterator<Item = u64>,
    before: impl Fn(&[u8]) -> String,
    after: impl Fn(&[u8]) -> String,
    removed: &str,
) -> usize {
    keys.filter(|k| {
        let key = k.to_le_bytes();
        let owner = before(&key);
        owner != removed && owner != after(&key)
    })
    .count()
}

#[test]
fn removal_check_passes_the_ring_and_catches_a_modulo_table() {
    let ring = small_ring(5);
    let without = ring.without_node("node-4:6379").unwrap();
    let moved = live_key_moves(
        0..10_000,
        |k| ring.node_for(k).unwrap().to_owned(),
        |k| without.node_for(k).unwrap().to_owned(),
        "node-4:6379",
    );
    assert_eq!(moved, 0);

    // Negative control: hash-mod-n placement moves most keys of live nodes.
    let modulo = |n: u64| move |k: &[u8]| format!("node-{}:6379", larder_ring::key_hash(k) % n);
    let moved = live_key_moves(0..10_000, modulo(5), modulo(4), "node-4:6379");
    assert!(
        moved > 5_000,
        "the check must flag modulo placement, saw {moved} moves"
    );
}
