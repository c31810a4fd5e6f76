//! Versions are numbers, whatever the server's locale. Redis sets
//! `LC_COLLATE` from its environment, and Lua's string comparison uses
//! `strcoll`: under `en_US.UTF-8` the version bytes `01` and `80` collate in
//! the wrong order. The version check must not depend on it.

use std::time::Duration;

use futures_util::future::join_all;
use larder_core::{Store, StoreEntry};
use larder_testkit::{RedisServer, locale_available};

use crate::{env, store};

const LOCALE: &str = "en_US.UTF-8";
const T: Duration = Duration::from_secs(600);

/// A server under [`LOCALE`], or (with a NOTE saying so) under `C` when the
/// locale is not installed: then only byte order is checked.
fn server() -> (RedisServer, &'static str) {
    if locale_available(LOCALE) {
        let s = RedisServer::builder().locale(LOCALE).start().unwrap();
        (s, LOCALE)
    } else {
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "NOTE: locale {LOCALE} is not installed (`locale -a`), so \
                 set_if_newer is checked under the C locale only; `cargo xtask test` \
                 generates it (as root with apt-get)"
            );
        }
        (RedisServer::builder().locale("C").start().unwrap(), "C")
    }
}

/// Versions whose big-endian bytes differ in several places: around byte
/// boundaries, the sign bit of each byte, and a fixed pseudo-random spread.
fn multi_byte_versions() -> Vec<u64> {
    let mut v = vec![
        0,
        1,
        0x7f,
        0x80,
        0xff,
        0x100,
        0x17f,
        0x180,
        0x7fff,
        0x8000,
        0x80_0000,
        0x7f_ffff,
        0x0100_0000_0000_0000,
        0x7fff_ffff_ffff_ffff,
        0x8000_0000_0000_0000,
        0x8000_0000_0000_0001,
        0xff00_0000_0000_0000,
        u64::MAX - 1,
        u64::MAX,
    ];
    let mut rng = fastrand::Rng::with_seed(0x4c61_7264_6572);
    v.extend((0..40).map(|_| rng.u64(..)));
    v.extend((0..20).map(|_| rng.u64(..) & 0x8080_8080_8080_8080));
    v.sort_unstable();
    v.dedup();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_if_newer_orders_versions_as_numbers_under_a_utf8_locale() {
    let (server, locale) = server();
    let s = store(&server.url());
    let mut wrong: Vec<(&str, u64, u64, bool)> = Vec::new();
    let mut checked = 0usize;

    // Every pair of versions 0..=255 (differing only in the last byte), then
    // every pair of the multi-byte list. Key `{a}:{b}` holds version `a`
    // and is offered version `b`: written exactly when b > a.
    let last_byte: Vec<u64> = (0..=255).collect();
    for (set, versions) in [("last", &last_byte), ("multi", &multi_byte_versions())] {
        for &a in versions {
            let keys: Vec<String> = versions.iter().map(|b| format!("{set}:{a}:{b}")).collect();
            let current = env(a, b"current");
            let entries: Vec<StoreEntry<'_>> = keys
                .iter()
                .map(|k| StoreEntry {
                    key: k,
                    value: &current,
                    ttl: T,
                })
                .collect();
            s.set_many(&entries).await.unwrap();
            let offers: Vec<Vec<u8>> = versions.iter().map(|&b| env(b, b"offered")).collect();
            let written = join_all(
                keys.iter()
                    .zip(&offers)
                    .map(|(k, offer)| s.set_if_newer(k, offer, T)),
            )
            .await;
            for (&b, w) in versions.iter().zip(written) {
                let w = w.unwrap();
                checked += 1;
                if w != (b > a) {
                    wrong.push((set, a, b, w));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "under {locale}: {} of {checked} version pairs in the wrong order ({} differing only in \
         the last byte); first (set, current, offered, written): {:?}",
        wrong.len(),
        wrong.iter().filter(|w| w.0 == "last").count(),
        &wrong[..wrong.len().min(5)]
    );
}
