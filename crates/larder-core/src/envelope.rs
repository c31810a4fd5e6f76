//! The versioned value envelope: what Larder stores in Redis.
//!
//! A fixed 40-byte header in front, then the payload. All integers are
//! big-endian, so a Lua script can compare two versions as byte strings.
//!
//! | offset | size | field |
//! |---:|---:|---|
//! | 0 | 1 | magic `0x4C` (`'L'`) |
//! | 1 | 1 | format version (`1`) |
//! | 2 | 1 | flags: bit 0 negative, bit 1 compressed; other bits must be 0 |
//! | 3 | 1 | codec id ([`CodecId`]) |
//! | 4 | 8 | `created_at_ms` (Unix ms) |
//! | 12 | 8 | `fresh_until_ms`: the logical expiry |
//! | 20 | 8 | `stale_until_ms`: the end of the grace window; Redis `PX` = `stale_until - now` |
//! | 28 | 4 | `delta_ms`: how long the load took, for XFetch |
//! | 32 | 8 | `version`: monotonic per key, for conditional writes |
//! | 40 | .. | payload (empty for a negative entry) |
//!
//! The header sits at the front on purpose: a trailing flag byte (as in
//! go-redis/cache) cannot be changed without breaking every reader.
//!
//! [`decode`] never panics. Unknown magic, format version or flag bits, a short
//! buffer, inconsistent timestamps, a bad compressed block, or a payload that
//! fails to decode are all [`ErrorKind::Corrupt`]: the reader counts a miss
//! and the next load overwrites the entry.
//!
//! ```
//! use larder_core::envelope::{self, Compression, EnvelopeMeta, Freshness};
//! use larder_core::Postcard;
//! use std::time::Duration;
//!
//! let now = 1_700_000_000_000;
//! let meta = EnvelopeMeta::starting_at(now, Duration::from_secs(60), Duration::from_secs(30))
//!     .with_version(7);
//! let bytes = envelope::encode_value(&Postcard, meta, Some(&"hello"), Compression::None)?;
//!
//! let (read, value) = envelope::decode_value::<_, String>(&Postcard, &bytes)?;
//! assert_eq!(value.as_deref(), Some("hello"));
//! assert_eq!(read.version, 7);
//! assert_eq!(read.freshness(now + 61_000), Freshness::Stale);
//! assert!(envelope::decode(b"not an envelope").unwrap_err().is_corrupt());
//! # Ok::<(), larder_core::Error>(())
//! ```

use std::borrow::Cow;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::codec::{Codec, CodecId};
use crate::error::{Error, ErrorKind, Result};

/// The first byte of every envelope.
pub const MAGIC: u8 = 0x4C;
/// The envelope format this crate writes and reads.
pub const FORMAT_VERSION: u8 = 1;
/// The header's length in bytes; the payload starts here.
pub const HEADER_LEN: usize = 40;
/// Byte range of the big-endian `version` field, for scripts that compare versions.
pub const VERSION_RANGE: std::ops::Range<usize> = 32..40;
/// The largest payload accepted, before or after decompression (Redis's
/// maximum string size).
pub const MAX_PAYLOAD_LEN: usize = 512 * 1024 * 1024;

const FLAG_NEGATIVE: u8 = 0b01;
const FLAG_COMPRESSED: u8 = 0b10;
const KNOWN_FLAGS: u8 = FLAG_NEGATIVE | FLAG_COMPRESSED;

/// Everything in the header except the compression flag, which is a detail
/// of how the payload is stored.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnvelopeMeta {
    /// The codec that wrote the payload ([`CodecId::RAW`] for opaque bytes).
    pub codec: CodecId,
    /// A negative entry: the source of truth said "not found".
    pub negative: bool,
    /// When the value was produced (Unix ms).
    pub created_at_ms: u64,
    /// Until when the value is fresh (Unix ms).
    pub fresh_until_ms: u64,
    /// Until when the value may be served stale (Unix ms); `>= fresh_until_ms`.
    pub stale_until_ms: u64,
    /// How long the load took (ms), the `delta` of XFetch.
    pub delta_ms: u32,
    /// Monotonic per-key version, for conditional writes.
    pub version: u64,
}

/// Where a value stands in its lifetime at some instant.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Freshness {
    /// Before `fresh_until`: serve it.
    Fresh,
    /// Between `fresh_until` and `stale_until`: may be served while it is refreshed.
    Stale,
    /// Past `stale_until`: a miss.
    Expired,
}

impl EnvelopeMeta {
    /// Metadata for a value created at `created_at_ms`, fresh for `fresh_for`,
    /// then servable stale for `stale_for` more. Raw codec, version 0, not
    /// negative, no load time: set those with the `with_*` methods.
    pub fn starting_at(created_at_ms: u64, fresh_for: Duration, stale_for: Duration) -> Self {
        let fresh_until_ms = created_at_ms.saturating_add(millis(fresh_for));
        EnvelopeMeta {
            codec: CodecId::RAW,
            negative: false,
            created_at_ms,
            fresh_until_ms,
            stale_until_ms: fresh_until_ms.saturating_add(millis(stale_for)),
            delta_ms: 0,
            version: 0,
        }
    }

    /// Sets the version.
    #[must_use]
    pub fn with_version(mut self, version: u64) -> Self {
        self.version = version;
        self
    }

    /// Sets the measured load time (saturating at `u32::MAX` ms, about 49 days).
    #[must_use]
    pub fn with_delta(mut self, load_time: Duration) -> Self {
        self.delta_ms = u32::try_from(load_time.as_millis()).unwrap_or(u32::MAX);
        self
    }

    /// Marks the entry negative ("not found" at the source).
    #[must_use]
    pub fn with_negative(mut self, negative: bool) -> Self {
        self.negative = negative;
        self
    }

    /// Sets the codec id.
    #[must_use]
    pub fn with_codec(mut self, codec: CodecId) -> Self {
        self.codec = codec;
        self
    }

    /// The value's state at `now_ms`.
    pub fn freshness(&self, now_ms: u64) -> Freshness {
        if now_ms < self.fresh_until_ms {
            Freshness::Fresh
        } else if now_ms < self.stale_until_ms {
            Freshness::Stale
        } else {
            Freshness::Expired
        }
    }

    /// The time left until `fresh_until`, zero if past.
    pub fn fresh_remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.fresh_until_ms.saturating_sub(now_ms))
    }

    /// The TTL to give the stored bytes (`stale_until - now`), or `None` if the
    /// value is already past its grace window and should not be stored.
    pub fn store_ttl(&self, now_ms: u64) -> Option<Duration> {
        let left = self.stale_until_ms.saturating_sub(now_ms);
        (left > 0).then(|| Duration::from_millis(left))
    }

    /// XFetch (Vattani et al., "Optimal Probabilistic Cache Stampede
    /// Prevention"): refresh early if `now - delta * beta * ln(u) >= fresh_until`,
    /// with `u` uniform in (0, 1]. A longer load time (`delta`) or a larger
    /// `beta` refreshes earlier. An out-of-range `u` or `beta` never refreshes
    /// early; a value past `fresh_until` always answers `true`.
    pub fn should_refresh_early(&self, now_ms: u64, beta: f64, u: f64) -> bool {
        if now_ms >= self.fresh_until_ms {
            return true;
        }
        let usable = u > 0.0 && u <= 1.0 && beta.is_finite() && beta > 0.0;
        if !usable {
            return false;
        }
        let gap = f64::from(self.delta_ms) * beta * -u.ln();
        now_ms as f64 + gap >= self.fresh_until_ms as f64
    }

    fn check(&self) -> std::result::Result<(), &'static str> {
        if self.fresh_until_ms < self.created_at_ms {
            return Err("fresh_until is before created_at");
        }
        if self.stale_until_ms < self.fresh_until_ms {
            return Err("stale_until is before fresh_until");
        }
        Ok(())
    }
}

/// How to store the payload.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Store the payload as it is.
    #[default]
    None,
    /// LZ4-compress payloads of at least `min_size` bytes, when that makes
    /// them smaller (`lz4` feature).
    #[cfg(feature = "lz4")]
    Lz4 {
        /// Payloads shorter than this are stored as they are.
        min_size: usize,
    },
}

/// A decoded envelope: its metadata and its (decompressed) payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope<'a> {
    /// The header fields.
    pub meta: EnvelopeMeta,
    /// Whether the stored payload was compressed.
    pub was_compressed: bool,
    payload: Cow<'a, [u8]>,
}

impl<'a> Envelope<'a> {
    /// The payload bytes (decompressed).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload, owned.
    pub fn into_payload(self) -> Vec<u8> {
        self.payload.into_owned()
    }
}

/// Writes `meta` and `payload` as envelope bytes.
///
/// Errors ([`ErrorKind::InvalidArgument`]): a negative entry with a payload,
/// timestamps out of order, or a payload over [`MAX_PAYLOAD_LEN`].
pub fn encode(meta: &EnvelopeMeta, payload: &[u8], compression: Compression) -> Result<Vec<u8>> {
    meta.check()
        .map_err(|m| Error::new(ErrorKind::InvalidArgument, m))?;
    if meta.negative && !payload.is_empty() {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            "a negative entry has no payload",
        ));
    }
    if payload.len() > MAX_PAYLOAD_LEN {
        return Err(Error::new(
            ErrorKind::InvalidArgument,
            format!(
                "payload of {} bytes is over the {MAX_PAYLOAD_LEN}-byte limit",
                payload.len()
            ),
        ));
    }
    let compressed = compress(payload, compression);
    let body: &[u8] = compressed.as_deref().unwrap_or(payload);

    let mut out = Vec::with_capacity(HEADER_LEN + body.len());
    out.push(MAGIC);
    out.push(FORMAT_VERSION);
    let mut flags = 0;
    if meta.negative {
        flags |= FLAG_NEGATIVE;
    }
    if compressed.is_some() {
        flags |= FLAG_COMPRESSED;
    }
    out.push(flags);
    out.push(meta.codec.get());
    out.extend_from_slice(&meta.created_at_ms.to_be_bytes());
    out.extend_from_slice(&meta.fresh_until_ms.to_be_bytes());
    out.extend_from_slice(&meta.stale_until_ms.to_be_bytes());
    out.extend_from_slice(&meta.delta_ms.to_be_bytes());
    out.extend_from_slice(&meta.version.to_be_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    out.extend_from_slice(body);
    Ok(out)
}

/// Reads envelope bytes. Never panics; every malformed input is [`ErrorKind::Corrupt`].
pub fn decode(bytes: &[u8]) -> Result<Envelope<'_>> {
    let Some((header, body)) = bytes.split_first_chunk::<HEADER_LEN>() else {
        return Err(Error::corrupt(format!(
            "{} bytes is shorter than the {HEADER_LEN}-byte envelope header",
            bytes.len()
        )));
    };
    if header[0] != MAGIC {
        return Err(Error::corrupt(format!(
            "foreign bytes: magic 0x{:02X}, expected 0x{MAGIC:02X}",
            header[0]
        )));
    }
    if header[1] != FORMAT_VERSION {
        return Err(Error::corrupt(format!(
            "unknown envelope format version {}",
            header[1]
        )));
    }
    let flags = header[2];
    if flags & !KNOWN_FLAGS != 0 {
        return Err(Error::corrupt(format!(
            "unknown envelope flags 0x{flags:02X}"
        )));
    }
    let u64_at = |at: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&header[at..at + 8]);
        u64::from_be_bytes(b)
    };
    let meta = EnvelopeMeta {
        codec: CodecId::from_wire(header[3]),
        negative: flags & FLAG_NEGATIVE != 0,
        created_at_ms: u64_at(4),
        fresh_until_ms: u64_at(12),
        stale_until_ms: u64_at(20),
        delta_ms: u32::from_be_bytes([header[28], header[29], header[30], header[31]]),
        version: u64_at(32),
    };
    meta.check().map_err(Error::corrupt)?;
    let compressed = flags & FLAG_COMPRESSED != 0;
    if meta.negative && (compressed || !body.is_empty()) {
        return Err(Error::corrupt("a negative entry carries a payload"));
    }
    let payload = if compressed {
        Cow::Owned(decompress(body)?)
    } else {
        Cow::Borrowed(body)
    };
    Ok(Envelope {
        meta,
        was_compressed: compressed,
        payload,
    })
}

/// Encodes `value` with `codec` into an envelope; `None` writes a negative
/// entry. The codec id in `meta` is replaced by `codec.id()`.
pub fn encode_value<C: Codec, T: Serialize + ?Sized>(
    codec: &C,
    meta: EnvelopeMeta,
    value: Option<&T>,
    compression: Compression,
) -> Result<Vec<u8>> {
    let meta = meta.with_codec(codec.id()).with_negative(value.is_none());
    match value {
        Some(v) => encode(&meta, &codec.encode(v)?, compression),
        None => encode(&meta, &[], Compression::None),
    }
}

/// Decodes an envelope written by [`encode_value`] with the same codec:
/// `(meta, None)` for a negative entry. A different codec id is
/// [`ErrorKind::Corrupt`], never a decode with the wrong codec.
pub fn decode_value<C: Codec, T: DeserializeOwned>(
    codec: &C,
    bytes: &[u8],
) -> Result<(EnvelopeMeta, Option<T>)> {
    let env = decode(bytes)?;
    if env.meta.codec != codec.id() {
        return Err(Error::corrupt(format!(
            "written with codec id {}, read with {} (id {})",
            env.meta.codec,
            codec.name(),
            codec.id()
        )));
    }
    if env.meta.negative {
        return Ok((env.meta, None));
    }
    Ok((env.meta, Some(codec.decode(env.payload())?)))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(feature = "lz4")]
fn compress(payload: &[u8], compression: Compression) -> Option<Vec<u8>> {
    match compression {
        Compression::Lz4 { min_size } if payload.len() >= min_size && !payload.is_empty() => {
            let len = u32::try_from(payload.len()).ok()?;
            let mut out =
                Vec::with_capacity(4 + lz4_flex::block::get_maximum_output_size(payload.len()));
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&lz4_flex::block::compress(payload));
            (out.len() < payload.len()).then_some(out)
        }
        _ => None,
    }
}

#[cfg(not(feature = "lz4"))]
fn compress(_payload: &[u8], compression: Compression) -> Option<Vec<u8>> {
    match compression {
        Compression::None => None,
    }
}

#[cfg(feature = "lz4")]
fn decompress(body: &[u8]) -> Result<Vec<u8>> {
    let Some((len, block)) = body.split_first_chunk::<4>() else {
        return Err(Error::corrupt("compressed payload is missing its length"));
    };
    let len = u32::from_be_bytes(*len) as usize;
    if len > MAX_PAYLOAD_LEN {
        return Err(Error::corrupt(format!(
            "compressed payload claims {len} bytes, over the limit"
        )));
    }
    // LZ4 expands at most ~255x; a claim beyond that is a lie we need not allocate for.
    if len > block.len().saturating_mul(255).saturating_add(16) {
        return Err(Error::corrupt(
            "compressed payload claims an impossible length",
        ));
    }
    let mut out = vec![0u8; len];
    match lz4_flex::block::decompress_into(block, &mut out) {
        Ok(n) if n == len => Ok(out),
        Ok(n) => Err(Error::corrupt(format!(
            "compressed payload decoded to {n} bytes, header said {len}"
        ))),
        Err(e) => Err(Error::with_source(
            ErrorKind::Corrupt,
            "compressed payload is not valid LZ4",
            e,
        )),
    }
}

#[cfg(not(feature = "lz4"))]
fn decompress(_body: &[u8]) -> Result<Vec<u8>> {
    Err(Error::corrupt(
        "payload is compressed but the `lz4` feature is not enabled",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta() -> EnvelopeMeta {
        EnvelopeMeta::starting_at(
            1_000,
            Duration::from_millis(500),
            Duration::from_millis(250),
        )
        .with_version(9)
        .with_delta(Duration::from_millis(30))
    }

    #[test]
    fn header_layout_is_exact() {
        let bytes = encode(&meta(), b"xyz", Compression::None).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 3);
        assert_eq!(&bytes[..4], &[0x4C, 1, 0, 0]);
        assert_eq!(&bytes[4..12], &1_000u64.to_be_bytes());
        assert_eq!(&bytes[12..20], &1_500u64.to_be_bytes());
        assert_eq!(&bytes[20..28], &1_750u64.to_be_bytes());
        assert_eq!(&bytes[28..32], &30u32.to_be_bytes());
        assert_eq!(&bytes[VERSION_RANGE], &9u64.to_be_bytes());
        assert_eq!(&bytes[HEADER_LEN..], b"xyz");
    }

    #[test]
    fn freshness_boundaries() {
        let m = meta();
        assert_eq!(m.freshness(1_499), Freshness::Fresh);
        assert_eq!(m.freshness(1_500), Freshness::Stale);
        assert_eq!(m.freshness(1_749), Freshness::Stale);
        assert_eq!(m.freshness(1_750), Freshness::Expired);
        assert_eq!(m.store_ttl(1_000), Some(Duration::from_millis(750)));
        assert_eq!(m.store_ttl(1_750), None);
        assert_eq!(m.fresh_remaining(1_400), Duration::from_millis(100));
    }

    #[test]
    fn xfetch_depends_on_delta_and_beta() {
        let m = meta(); // delta 30 ms, fresh until 1_500
        // u = 1 gives ln(u) = 0: never early.
        assert!(!m.should_refresh_early(1_490, 1.0, 1.0));
        // u = e^-1 gives a gap of delta * beta = 30 ms.
        let u = (-1.0f64).exp();
        assert!(!m.should_refresh_early(1_469, 1.0, u));
        assert!(m.should_refresh_early(1_471, 1.0, u));
        // beta 2 doubles the gap.
        assert!(m.should_refresh_early(1_441, 2.0, u));
        // Past fresh_until: always.
        assert!(m.should_refresh_early(1_500, 1.0, 1.0));
        // Bad inputs never refresh early.
        assert!(!m.should_refresh_early(1_499, 1.0, 0.0));
        assert!(!m.should_refresh_early(1_499, f64::NAN, 0.5));
        // No load time measured: no early refresh before fresh_until.
        let instant = meta().with_delta(Duration::ZERO);
        assert!(!instant.should_refresh_early(1_499, 1.0, 1e-9));
    }

    #[test]
    fn corrupt_inputs_are_typed() {
        let good = encode(&meta(), b"payload", Compression::None).unwrap();
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("empty", vec![]),
            ("short", good[..HEADER_LEN - 1].to_vec()),
            ("magic", {
                let mut b = good.clone();
                b[0] = b'{';
                b
            }),
            ("version", {
                let mut b = good.clone();
                b[1] = 2;
                b
            }),
            ("flags", {
                let mut b = good.clone();
                b[2] = 0x80;
                b
            }),
            ("timestamps", {
                let mut b = good.clone();
                b[20..28].copy_from_slice(&0u64.to_be_bytes());
                b
            }),
            ("negative with payload", {
                let mut b = good.clone();
                b[2] = FLAG_NEGATIVE;
                b
            }),
            ("compressed garbage", {
                let mut b = good.clone();
                b[2] = FLAG_COMPRESSED;
                b
            }),
        ];
        for (name, bytes) in cases {
            let err = decode(&bytes).expect_err(name);
            assert!(err.is_corrupt(), "{name}: {err}");
        }
    }

    #[test]
    fn encode_rejects_inconsistent_meta() {
        let mut m = meta();
        m.stale_until_ms = 0;
        assert!(
            encode(&m, b"", Compression::None)
                .unwrap_err()
                .is_invalid_input()
        );
        let neg = meta().with_negative(true);
        assert!(
            encode(&neg, b"x", Compression::None)
                .unwrap_err()
                .is_invalid_input()
        );
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn typed_roundtrip_negative_and_codec_mismatch() {
        use crate::codec::Postcard;
        let bytes = encode_value(
            &Postcard,
            meta(),
            Some(&vec![1u32, 2, 3]),
            Compression::None,
        )
        .unwrap();
        let (m, v) = decode_value::<_, Vec<u32>>(&Postcard, &bytes).unwrap();
        assert_eq!(v, Some(vec![1, 2, 3]));
        assert_eq!(m.codec, CodecId::POSTCARD);

        let neg = encode_value::<_, u32>(&Postcard, meta(), None, Compression::None).unwrap();
        let (m, v) = decode_value::<_, u32>(&Postcard, &neg).unwrap();
        assert!(m.negative && v.is_none());

        let mut other = bytes.clone();
        other[3] = CodecId::JSON.get();
        assert!(
            decode_value::<_, Vec<u32>>(&Postcard, &other)
                .unwrap_err()
                .is_corrupt()
        );
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn lz4_only_above_threshold_and_only_when_smaller() {
        let big = vec![b'a'; 4096];
        let c = Compression::Lz4 { min_size: 1024 };
        let bytes = encode(&meta(), &big, c).unwrap();
        assert!(bytes.len() < big.len());
        let env = decode(&bytes).unwrap();
        assert!(env.was_compressed);
        assert_eq!(env.payload(), &big[..]);

        let small = encode(&meta(), &big[..100], c).unwrap();
        assert!(!decode(&small).unwrap().was_compressed);

        // Incompressible data above the threshold is stored as it is.
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let noise: Vec<u8> = (0..2048)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                (x >> 32) as u8
            })
            .collect();
        let stored = encode(&meta(), &noise, c).unwrap();
        assert!(!decode(&stored).unwrap().was_compressed);
    }

    #[cfg(feature = "lz4")]
    #[test]
    fn lz4_lying_length_is_corrupt_without_allocating() {
        let mut b = encode(&meta(), b"", Compression::None).unwrap();
        b[2] = FLAG_COMPRESSED;
        b.extend_from_slice(&u32::MAX.to_be_bytes());
        b.extend_from_slice(&[0x10, b'a']);
        assert!(decode(&b).unwrap_err().is_corrupt());
    }
}
