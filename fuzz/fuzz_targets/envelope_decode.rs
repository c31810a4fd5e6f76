//! Any bytes through the envelope decoder and the typed decode path: the
//! answer is a value or a `Corrupt` error, never a panic, a hang or an
//! out-of-memory. A successful decode re-encodes to the same bytes.

#![no_main]

use larder_core::envelope::{self, Compression};
use larder_core::{Json, Postcard};
use libfuzzer_sys::fuzz_target;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Profile {
    id: u64,
    name: String,
    tags: Vec<String>,
    nested: Option<Box<Profile>>,
}

fuzz_target!(|data: &[u8]| {
    match envelope::decode(data) {
        Ok(env) => {
            assert!(env.meta.fresh_until_ms <= env.meta.stale_until_ms);
            if !env.was_compressed {
                let again = envelope::encode(&env.meta, env.payload(), Compression::None)
                    .expect("a decoded envelope re-encodes");
                assert_eq!(again, data, "decode then encode must be the identity");
            }
        }
        Err(e) => assert!(e.is_corrupt(), "{e}"),
    }
    if let Err(e) = envelope::decode_value::<_, Profile>(&Postcard, data) {
        assert!(e.is_corrupt(), "{e}");
    }
    if let Err(e) = envelope::decode_value::<_, Profile>(&Json, data) {
        assert!(e.is_corrupt(), "{e}");
    }
});
