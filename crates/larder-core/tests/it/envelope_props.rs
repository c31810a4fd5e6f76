use std::time::Duration;

use larder_core::envelope::{self, Compression, EnvelopeMeta, HEADER_LEN};
use larder_core::{Codec, CodecId, Postcard};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    tags: Vec<String>,
    score: Option<i32>,
}

fn arb_profile() -> impl Strategy<Value = Profile> {
    (
        any::<u64>(),
        ".{0,40}",
        proptest::collection::vec("[a-z]{0,8}", 0..6),
        any::<Option<i32>>(),
    )
        .prop_map(|(id, name, tags, score)| Profile {
            id,
            name,
            tags,
            score,
        })
}

fn arb_meta() -> impl Strategy<Value = EnvelopeMeta> {
    (
        0u64..(1 << 50),
        0u64..(1 << 40),
        0u64..(1 << 40),
        any::<u32>(),
        any::<u64>(),
    )
        .prop_map(|(created, fresh, stale, delta, version)| {
            EnvelopeMeta::starting_at(
                created,
                Duration::from_millis(fresh),
                Duration::from_millis(stale),
            )
            .with_delta(Duration::from_millis(u64::from(delta)))
            .with_version(version)
        })
}

#[cfg(feature = "lz4")]
fn compressions() -> impl Strategy<Value = Compression> {
    prop_oneof![
        Just(Compression::None),
        (0usize..64).prop_map(|min_size| Compression::Lz4 { min_size }),
    ]
}

#[cfg(not(feature = "lz4"))]
fn compressions() -> impl Strategy<Value = Compression> {
    Just(Compression::None)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn raw_roundtrip(meta in arb_meta(), payload in proptest::collection::vec(any::<u8>(), 0..512), c in compressions()) {
        let bytes = envelope::encode(&meta, &payload, c).unwrap();
        let env = envelope::decode(&bytes).unwrap();
        prop_assert_eq!(env.meta, meta);
        prop_assert_eq!(env.payload(), &payload[..]);
    }

    #[test]
    fn typed_roundtrip(meta in arb_meta(), p in arb_profile(), negative in any::<bool>(), c in compressions()) {
        let value = (!negative).then_some(&p);
        let bytes = envelope::encode_value(&Postcard, meta, value, c).unwrap();
        let (m, back) = envelope::decode_value::<_, Profile>(&Postcard, &bytes).unwrap();
        prop_assert_eq!(m.codec, CodecId::POSTCARD);
        prop_assert_eq!(m.negative, negative);
        prop_assert_eq!(back.as_ref(), value);
    }

    /// Any bytes at all: decode returns Ok or a Corrupt error, never panics.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        match envelope::decode(&bytes) {
            Ok(env) => prop_assert!(bytes.len() >= HEADER_LEN && env.meta.fresh_until_ms <= env.meta.stale_until_ms),
            Err(e) => prop_assert!(e.is_corrupt(), "{e}"),
        }
        if let Err(e) = envelope::decode_value::<_, Profile>(&Postcard, &bytes) {
            prop_assert!(e.is_corrupt(), "{e}");
        }
    }

    /// A valid header in front of arbitrary bytes: still never a panic.
    #[test]
    fn valid_header_arbitrary_body(meta in arb_meta(), flags in 0u8..4, body in proptest::collection::vec(any::<u8>(), 0..256)) {
        let mut bytes = envelope::encode(&meta.with_codec(CodecId::POSTCARD), &[], Compression::None).unwrap();
        bytes[2] = flags;
        bytes.extend_from_slice(&body);
        if let Err(e) = envelope::decode_value::<_, Profile>(&Postcard, &bytes) {
            prop_assert!(e.is_corrupt(), "{e}");
        }
    }

    /// Flipping any single byte of a valid envelope is detected or decodes to
    /// some value; it never panics.
    #[test]
    fn single_byte_flips(meta in arb_meta(), p in arb_profile(), at in any::<prop::sample::Index>(), xor in 1u8..=255) {
        let mut bytes = envelope::encode_value(&Postcard, meta, Some(&p), Compression::None).unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= xor;
        if let Err(e) = envelope::decode_value::<_, Profile>(&Postcard, &bytes) {
            prop_assert!(e.is_corrupt(), "{e}");
        }
    }

    /// Versions compare as byte strings in the same order as numbers
    /// (what the conditional-set Lua script relies on).
    #[test]
    fn version_bytes_sort_like_numbers(a in any::<u64>(), b in any::<u64>()) {
        let m = EnvelopeMeta::starting_at(0, Duration::ZERO, Duration::ZERO);
        let ea = envelope::encode(&m.with_version(a), &[], Compression::None).unwrap();
        let eb = envelope::encode(&m.with_version(b), &[], Compression::None).unwrap();
        let r = envelope::VERSION_RANGE;
        prop_assert_eq!(ea[r.clone()].cmp(&eb[r]), a.cmp(&b));
    }

    #[test]
    fn codecs_roundtrip(p in arb_profile()) {
        fn check<C: Codec>(c: C, p: &Profile) {
            let bytes = c.encode(p).unwrap();
            assert_eq!(&c.decode::<Profile>(&bytes).unwrap(), p, "{}", c.name());
        }
        check(Postcard, &p);
        #[cfg(feature = "json")]
        check(larder_core::Json, &p);
        #[cfg(feature = "bincode")]
        check(larder_core::Bincode, &p);
    }
}
