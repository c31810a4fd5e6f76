//! Any bytes through the trace parsers (`benches/src/traces.rs`, included
//! as a module so this crate stays small) in every format, and through the
//! bounded zstd decompression: keys or an error, never a panic, a hang or a
//! runaway allocation. What parses is checked against the format.

#![no_main]

use libfuzzer_sys::fuzz_target;

#[allow(dead_code)]
#[path = "../../benches/src/traces.rs"]
mod traces;

use traces::Format;

/// Small limits, so the fuzzer reaches them.
const MAX_KEYS: usize = 1 << 16;
const MAX_BYTES: u64 = 1 << 16;

fuzz_target!(|data: &[u8]| {
    for format in [Format::Arc, Format::Lirs, Format::I32Be, Format::I64Be] {
        if let Ok(keys) = traces::parse_limited(data, format, MAX_KEYS) {
            assert!(keys.len() <= MAX_KEYS);
            match format {
                Format::I32Be => assert_eq!(keys.len() * 4, data.len()),
                Format::I64Be => assert_eq!(keys.len() * 8, data.len()),
                Format::Arc | Format::Lirs => {
                    assert!(std::str::from_utf8(data).is_ok(), "text formats are UTF-8");
                }
            }
        }
    }
    if let Ok(bytes) = traces::decompress(data, MAX_BYTES) {
        assert!(bytes.len() as u64 <= MAX_BYTES);
    }
});
