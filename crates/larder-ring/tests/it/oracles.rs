//! Answers produced by other implementations: uhashring and libmemcached for
//! ketama, `CLUSTER KEYSLOT` for slots. A sample of each file is embedded in
//! the repository; the full files are checked whenever `../shared/oracles`
//! exists (it always does in CI), and the output says which was checked.

use std::path::PathBuf;

use larder_ring::{Dialect, KetamaRing, keyslot};

fn shared_oracle(name: &str) -> Option<String> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/oracles")
        .join(name);
    std::fs::read_to_string(p).ok()
}

/// The full file when present, else the embedded sample; and which it was.
fn oracle(name: &str, sample: &'static str) -> (String, &'static str) {
    match shared_oracle(name) {
        Some(full) => (full, "full file from ../shared/oracles"),
        None => {
            #[allow(clippy::print_stderr)] // never pass silently on the sample alone
            {
                eprintln!(
                    "NOTE: ../shared/oracles/{name} not found: checking the embedded sample only"
                );
            }
            (sample.to_owned(), "embedded sample")
        }
    }
}

fn nodes(scenario: &str) -> Vec<(String, u32)> {
    (1..=10)
        .filter(|&i| !(scenario == "minus_n3" && i == 3))
        .map(|i| {
            let w = if scenario == "weighted" && i == 10 {
                2
            } else {
                1
            };
            (format!("10.0.0.{i}:11211"), w)
        })
        .collect()
}

fn check_ketama(text: &str, source: &str) {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let expected = if source.starts_with("full") {
        10_000
    } else {
        300
    };
    assert_eq!(rows.len(), expected, "{source}");
    for (col, name) in header.iter().enumerate().skip(1) {
        let (family, scenario) = name.split_once('_').unwrap();
        let dialect = match family {
            "ketama" => Dialect::Libketama,
            "libmemcached" => Dialect::Libmemcached,
            other => panic!("unknown column family {other}"),
        };
        let ring = KetamaRing::new(nodes(scenario), dialect).unwrap();
        let wrong: Vec<&str> = rows
            .iter()
            .filter(|r| ring.node_for(r[0].as_bytes()) != Some(r[col]))
            .map(|r| r[0])
            .collect();
        assert!(
            wrong.is_empty(),
            "{name} ({source}): {} of {} keys differ, first {:?}",
            wrong.len(),
            rows.len(),
            &wrong[..wrong.len().min(5)]
        );
    }
    // Walking past a node marked down equals the ring built without it
    // (equal weights: removing a node re-rounds nobody).
    for (family, dialect) in [
        ("ketama", Dialect::Libketama),
        ("libmemcached", Dialect::Libmemcached),
    ] {
        let ring = KetamaRing::new(nodes("equal"), dialect).unwrap();
        ring.mark_down(ring.index_of("10.0.0.3:11211").unwrap())
            .unwrap();
        let col = header
            .iter()
            .position(|h| *h == format!("{family}_minus_n3"))
            .unwrap();
        for r in &rows {
            assert_eq!(
                ring.node_for(r[0].as_bytes()),
                Some(r[col]),
                "{family} walk-to-live, key {}",
                r[0]
            );
        }
    }
}

#[test]
fn ketama_matches_uhashring_and_libmemcached() {
    let (text, source) = oracle("ketama_oracle.csv", include_str!("data/ketama_sample.csv"));
    check_ketama(&text, source);
}

#[test]
fn ketama_embedded_sample_matches() {
    check_ketama(include_str!("data/ketama_sample.csv"), "embedded sample");
}

/// Rows of (key bytes, slot); the key comes from the hex column, which is
/// authoritative (keys may hold commas, quotes and tabs).
fn keyslot_rows(text: &str) -> Vec<(Vec<u8>, u16)> {
    text.lines()
        .skip(1)
        .map(|line| {
            let mut it = line.rsplitn(3, ',');
            let slot: u16 = it.next().unwrap().parse().unwrap();
            let hex = it.next().unwrap();
            let bytes = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
                .collect();
            (bytes, slot)
        })
        .collect()
}

#[test]
fn keyslot_matches_cluster_keyslot_oracle() {
    let (text, source) = oracle(
        "keyslot_oracle.csv",
        include_str!("data/keyslot_sample.csv"),
    );
    let rows = keyslot_rows(&text);
    let expected = if source.starts_with("full") {
        1_000
    } else {
        594
    };
    assert_eq!(rows.len(), expected, "{source}");
    for (key, slot) in rows {
        assert_eq!(
            keyslot(&key),
            slot,
            "{source}: key {:?}",
            String::from_utf8_lossy(&key)
        );
    }
}

/// Live: a cluster-enabled redis-server computes the same slots.
#[test]
fn keyslot_matches_a_live_redis_server() {
    let server = larder_testkit::RedisServer::builder()
        .cluster_enabled()
        .start()
        .unwrap();
    let mut con = server.client().get_connection().unwrap();
    let mut keys: Vec<Vec<u8>> = keyslot_rows(include_str!("data/keyslot_sample.csv"))
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut x = 0x2545_F491_4F6C_DD1Du64;
    for len in 0..300usize {
        let key: Vec<u8> = (0..len % 24)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                // Mostly printable, often braces, sometimes any byte.
                match x % 10 {
                    0 => b'{',
                    1 => b'}',
                    2 => (x >> 8) as u8,
                    _ => b'a' + (x >> 16) as u8 % 26,
                }
            })
            .collect();
        keys.push(key);
    }
    let mut pipe = redis::pipe();
    for k in &keys {
        pipe.cmd("CLUSTER").arg("KEYSLOT").arg(k.as_slice());
    }
    let slots: Vec<u16> = pipe.query(&mut con).unwrap();
    for (k, s) in keys.iter().zip(slots) {
        assert_eq!(keyslot(k), s, "key {:?}", String::from_utf8_lossy(k));
    }
}
