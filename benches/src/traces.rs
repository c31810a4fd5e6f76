//! Cache trace formats (see `../shared/traces/README.md`), parsed into key
//! streams. Parsers never panic and never run away: malformed input, or
//! input that would expand past [`MAX_KEYS`] keys (a few bytes of ARC text
//! can stand for millions of blocks) or [`MAX_BYTES`] decompressed bytes, is
//! a [`TraceError`]. `fuzz/fuzz_targets/trace_parse.rs` fuzzes this file.

use std::fmt;
use std::path::Path;

/// A trace format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// ARC traces: `start_block num_blocks ignore request_no` per line,
    /// standing for keys `start .. start + num`.
    Arc,
    /// LIRS traces: one integer key per line; blank lines and lines starting
    /// with `*` are skipped; CRLF allowed.
    Lirs,
    /// Binary big-endian signed 32-bit keys.
    I32Be,
    /// Binary big-endian signed 64-bit keys.
    I64Be,
}

impl std::str::FromStr for Format {
    type Err = TraceError;
    fn from_str(s: &str) -> Result<Self, TraceError> {
        match s {
            "arc" => Ok(Format::Arc),
            "lirs" => Ok(Format::Lirs),
            "i32be" => Ok(Format::I32Be),
            "i64be" => Ok(Format::I64Be),
            other => Err(TraceError(format!(
                "unknown format {other:?} (arc, lirs, i32be, i64be)"
            ))),
        }
    }
}

impl Format {
    /// The format a trace file's name says (`.lis`, `.trace`, `.i32be`, `.i64be`, optionally `.zst`).
    pub fn of_path(path: &Path) -> Option<Format> {
        let name = path.file_name()?.to_str()?.trim_end_matches(".zst");
        if name.ends_with(".lis") {
            Some(Format::Arc)
        } else if name.ends_with(".trace") {
            Some(Format::Lirs)
        } else if name.ends_with(".i32be") {
            Some(Format::I32Be)
        } else if name.ends_with(".i64be") {
            Some(Format::I64Be)
        } else {
            None
        }
    }
}

/// Why a trace could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceError(pub String);

impl fmt::Display for TraceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TraceError {}

/// Blocks one ARC line may stand for: more is taken as corrupt input.
pub const MAX_ARC_RUN: u64 = 1 << 20;

/// Keys one trace may expand to (the largest trace of the README has 5M).
pub const MAX_KEYS: usize = 1 << 26;

/// Bytes one compressed trace may expand to.
pub const MAX_BYTES: u64 = 1 << 30;

/// Parses a whole (decompressed) trace.
pub fn parse(bytes: &[u8], format: Format) -> Result<Vec<u64>, TraceError> {
    parse_limited(bytes, format, MAX_KEYS)
}

/// [`parse`], with at most `max_keys` keys.
pub fn parse_limited(
    bytes: &[u8],
    format: Format,
    max_keys: usize,
) -> Result<Vec<u64>, TraceError> {
    let too_many = || TraceError(format!("more than {max_keys} keys"));
    match format {
        Format::I32Be | Format::I64Be => {
            let width = if format == Format::I32Be { 4 } else { 8 };
            if !bytes.len().is_multiple_of(width) {
                return Err(TraceError(format!(
                    "{} bytes is not a whole number of {width}-byte keys",
                    bytes.len()
                )));
            }
            if bytes.len() / width > max_keys {
                return Err(too_many());
            }
            Ok(bytes
                .chunks_exact(width)
                .map(|c| {
                    if width == 4 {
                        i64::from(i32::from_be_bytes([c[0], c[1], c[2], c[3]])) as u64
                    } else {
                        i64::from_be_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as u64
                    }
                })
                .collect())
        }
        Format::Arc | Format::Lirs => {
            let text =
                std::str::from_utf8(bytes).map_err(|e| TraceError(format!("not UTF-8: {e}")))?;
            let mut keys = Vec::new();
            for (n, line) in text.lines().enumerate() {
                let line = line.trim_end_matches('\r').trim();
                if line.is_empty() || (format == Format::Lirs && line.starts_with('*')) {
                    continue;
                }
                let bad = |what: &str| TraceError(format!("line {}: {what}: {line:?}", n + 1));
                let mut fields = line.split_whitespace();
                let first: i64 = fields
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| bad("not a number"))?;
                if format == Format::Lirs {
                    if keys.len() >= max_keys {
                        return Err(too_many());
                    }
                    keys.push(first as u64);
                    continue;
                }
                let count: u64 = fields
                    .next()
                    .and_then(|f| f.parse().ok())
                    .ok_or_else(|| bad("no block count"))?;
                if count > MAX_ARC_RUN {
                    return Err(bad("block count too large"));
                }
                if keys.len() as u64 + count > max_keys as u64 {
                    return Err(too_many());
                }
                let start = first as u64;
                keys.extend((0..count).map(|i| start.wrapping_add(i)));
            }
            Ok(keys)
        }
    }
}

/// Reads a trace file, zstd-decompressing it when its name ends in `.zst`.
pub fn read(path: &Path, format: Format) -> Result<Vec<u64>, TraceError> {
    let raw = std::fs::read(path).map_err(|e| TraceError(format!("{}: {e}", path.display())))?;
    let bytes = if path.extension().is_some_and(|e| e == "zst") {
        decompress(&raw, MAX_BYTES)
            .map_err(|e| TraceError(format!("{}: {}", path.display(), e.0)))?
    } else {
        raw
    };
    parse(&bytes, format)
}

/// zstd-decompresses `raw`, refusing to produce more than `max_bytes`.
pub fn decompress(raw: &[u8], max_bytes: u64) -> Result<Vec<u8>, TraceError> {
    use std::io::Read;
    let decoder =
        zstd::stream::read::Decoder::new(raw).map_err(|e| TraceError(format!("zstd: {e}")))?;
    let mut out = Vec::new();
    decoder
        .take(max_bytes + 1)
        .read_to_end(&mut out)
        .map_err(|e| TraceError(format!("zstd: {e}")))?;
    if out.len() as u64 > max_bytes {
        return Err(TraceError(format!(
            "zstd: more than {max_bytes} bytes decompressed"
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn each_format() {
        assert_eq!(
            parse(b"10 3 0 1\n20 1 0 2\n", Format::Arc).unwrap(),
            [10, 11, 12, 20]
        );
        assert_eq!(
            parse(b"*header\r\n5\r\n\r\n7\r\n", Format::Lirs).unwrap(),
            [5, 7]
        );
        assert_eq!(
            parse(&[0, 0, 0, 1, 0xFF, 0xFF, 0xFF, 0xFF], Format::I32Be).unwrap(),
            [1, u64::MAX]
        );
        assert_eq!(parse(&7i64.to_be_bytes(), Format::I64Be).unwrap(), [7]);
        assert!(parse(b"10\n", Format::Arc).is_err());
        assert!(parse(b"x\n", Format::Lirs).is_err());
        assert!(parse(&[0, 0, 1], Format::I32Be).is_err());
        assert!(parse(b"0 99999999999 0 0\n", Format::Arc).is_err());
        // Expansion is bounded in every format.
        assert!(parse_limited(b"0 3 0 0\n0 3 0 0\n", Format::Arc, 5).is_err());
        assert!(parse_limited(b"1\n2\n3\n", Format::Lirs, 2).is_err());
        assert!(parse_limited(&[0; 12], Format::I32Be, 2).is_err());
        assert_eq!(parse_limited(&[0; 8], Format::I32Be, 2).unwrap(), [0, 0]);
        let zst = zstd::encode_all(&[7u8; 10_000][..], 3).unwrap();
        assert_eq!(decompress(&zst, 10_000).unwrap().len(), 10_000);
        assert!(decompress(&zst, 9_999).is_err());
        assert!(decompress(b"not zstd", 100).is_err());
        assert_eq!(
            Format::of_path(Path::new("arc_P3.lis.zst")),
            Some(Format::Arc)
        );
        assert_eq!(Format::of_path(Path::new("x.i64be")), Some(Format::I64Be));
    }

    proptest! {
        /// Any bytes in any format: keys or an error, never a panic.
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), f in 0usize..4) {
            let format = [Format::Arc, Format::Lirs, Format::I32Be, Format::I64Be][f];
            let _ = parse(&bytes, format);
        }

        /// Text-shaped input: the same.
        #[test]
        fn text_parsers_never_panic(text in "[0-9 *\\-\r\n]{0,200}") {
            let _ = parse(text.as_bytes(), Format::Arc);
            let _ = parse(text.as_bytes(), Format::Lirs);
        }
    }
}
