//! Keys: fuzzed strings through `validate_key` and every `KeySpace` layout
//! (`data_key`, `internal_key`, `helper_key`, `global_key`, `user_key`), and
//! fuzzed tuples of strings and integers through `CacheKey`'s text form.
//!
//! Properties: `validate_key` follows its documented rule; a data key maps
//! back to its user key, and two different user keys never share a data
//! key; internal, helper and global keys are never data keys (and are not
//! mistaken for one by `user_key`); helper and global keys never equal an
//! internal key; errors are `InvalidKey` (keys) or `InvalidConfig`
//! (namespaces). `CacheKey::from_key_text(key_text(k)) == k`, and two
//! different tuples never share a text.

#![no_main]

use larder::CacheKey;
use larder_core::{ErrorKind, KeySpace, MAX_KEY_LEN, validate_key};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    namespace: &'a str,
    keys: [&'a str; 2],
    suffix: &'a str,
    tag: &'a str,
    role: &'a str,
    name: &'a str,
    ints: (u64, i32, u8, i128),
    flag: bool,
    ch: char,
}

fn documented_valid(key: &str) -> bool {
    !key.is_empty() && !key.starts_with('}') && key.len() <= MAX_KEY_LEN
}

fn documented_namespace(ns: &str) -> bool {
    !ns.is_empty()
        && ns.len() <= 64
        && ns
            .chars()
            .all(|c| c.is_ascii_graphic() && !matches!(c, '{' | '}' | '*' | '?' | '['))
}

fn check_keyspace(ks: &KeySpace, inp: &Input<'_>) {
    let mut data_keys = Vec::new();
    for key in inp.keys {
        match ks.data_key(key) {
            Ok(dk) => {
                assert!(documented_valid(key));
                assert!(dk.starts_with(ks.prefix()));
                assert_eq!(ks.user_key(&dk), Some(key), "{dk:?}");
                data_keys.push((key, dk));
            }
            Err(e) => {
                assert!(!documented_valid(key));
                assert_eq!(e.kind(), ErrorKind::InvalidKey);
            }
        }
    }
    if let [(k1, d1), (k2, d2)] = &data_keys[..] {
        assert_eq!(k1 == k2, d1 == d2, "{k1:?} {k2:?} -> {d1:?} {d2:?}");
    }
    let is_data_key = |k: &str| data_keys.iter().any(|(_, dk)| dk == k);

    let mut others = Vec::new();
    for key in inp.keys {
        match ks.internal_key(key, inp.suffix) {
            Ok(ik) => {
                assert!(!inp.suffix.is_empty() && !inp.suffix.contains(['#', '}']));
                assert!(!is_data_key(&ik), "internal {ik:?} is a data key");
                // `user_key` never reads an internal key as a data key's.
                assert_eq!(ks.user_key(&ik), None, "{ik:?}");
                others.push(("internal", ik));
            }
            Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidKey),
        }
    }
    match ks.helper_key(inp.tag, inp.role) {
        Ok(hk) => {
            assert!(documented_valid(inp.tag) && !inp.tag.contains(['{', '}']));
            assert!(!inp.role.is_empty() && !inp.role.contains([':', '{', '}']));
            assert!(!is_data_key(&hk), "helper {hk:?} is a data key");
            assert_eq!(ks.user_key(&hk), None, "{hk:?}");
            assert!(
                others.iter().all(|(_, k)| k != &hk),
                "helper {hk:?} is an internal key"
            );
            others.push(("helper", hk));
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidKey),
    }
    match ks.global_key(inp.name) {
        Ok(gk) => {
            assert!(!inp.name.is_empty() && !inp.name.contains(['{', '}']));
            assert!(!is_data_key(&gk), "global {gk:?} is a data key");
            assert_eq!(ks.user_key(&gk), None, "{gk:?}");
            assert!(
                others.iter().all(|(_, k)| k != &gk),
                "global {gk:?} is another key"
            );
        }
        Err(e) => assert_eq!(e.kind(), ErrorKind::InvalidKey),
    }
}

/// `from_key_text(key_text(k)) == k` when the text is a valid key.
fn round_trip<K: CacheKey + std::fmt::Debug>(k: &K) -> Option<String> {
    let text = k.key_text().ok()?;
    assert_eq!(K::from_key_text(&text).as_ref(), Some(k), "{text:?}");
    Some(text)
}

fn check_cache_keys(inp: &Input<'_>) {
    let [a, b] = inp.keys.map(str::to_owned);
    let (n, i, small, big) = inp.ints;
    round_trip(&a);
    round_trip(&n);
    round_trip(&i);
    round_trip(&big);
    round_trip(&inp.flag);
    round_trip(&inp.ch);
    round_trip(&(a.clone(), n));
    round_trip(&(i, a.clone()));
    round_trip(&(a.clone(), inp.ch, small));
    round_trip(&(a.clone(), b.clone(), inp.suffix.to_owned(), big));
    round_trip(&((a.clone(), b.clone()), inp.tag.to_owned()));
    round_trip(&(inp.flag, (a.clone(), (b.clone(), i))));
    // Injective: different tuples, different texts.
    let t1 = (a.clone(), b.clone());
    let t2 = (b.clone(), a.clone());
    if let (Some(x), Some(y)) = (round_trip(&t1), round_trip(&t2)) {
        assert_eq!(t1 == t2, x == y, "{t1:?} {t2:?}");
    }
    let t3 = (a.clone(), inp.suffix.to_owned());
    if let (Some(x), Some(y)) = (round_trip(&t1), round_trip(&t3)) {
        assert_eq!(t1 == t3, x == y, "{t1:?} {t3:?}");
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        match validate_key(text) {
            Ok(()) => assert!(documented_valid(text)),
            Err(e) => {
                assert!(!documented_valid(text));
                assert_eq!(e.kind(), ErrorKind::InvalidKey);
            }
        }
    }
    let Ok(inp) = Input::arbitrary_take_rest(Unstructured::new(data)) else {
        return;
    };
    match KeySpace::new(inp.namespace) {
        Ok(ks) => {
            assert!(documented_namespace(inp.namespace));
            assert_eq!(ks.namespace(), inp.namespace);
            check_keyspace(&ks, &inp);
        }
        Err(e) => {
            assert!(!documented_namespace(inp.namespace));
            assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        }
    }
    check_keyspace(&KeySpace::default(), &inp);
    check_cache_keys(&inp);
});
