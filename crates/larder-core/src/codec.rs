//! Codecs: how typed values become the payload bytes of an envelope.
//!
//! | codec | feature | id | when to use it |
//! |---|---|---|---|
//! | [`Postcard`] | `postcard` (default) | 1 | the default: compact, fast, a stable documented wire format, maintained |
//! | [`Json`] | `json` | 2 | interop with other languages, debugging with `redis-cli` |
//! | [`Bincode`] | `bincode` | 3 | only to read or write bincode 2.x data you already have |
//!
//! bincode is unmaintained: its 2.x line gets no more releases and its 3.0.0
//! on crates.io is an empty tombstone crate. Larder keeps bincode 2.x behind
//! an opt-in feature for compatibility only. `docs/codecs.md` has the measured
//! encode, decode and size figures that chose the default.
//!
//! Decoding failures are [`ErrorKind::Corrupt`]: a reader treats them as a
//! miss. Encoding failures are [`ErrorKind::Encode`].

use std::fmt;

use serde::Serialize;
use serde::de::DeserializeOwned;

#[allow(unused_imports)] // used only by some feature combinations
use crate::error::{Error, ErrorKind, Result};

/// The stable one-byte identity of a codec, stored in every envelope header.
///
/// Id 0 is raw bytes; ids 1 to 127 are reserved for Larder's codecs; 128 to 255 are free for
/// users' own ([`CodecId::custom`]). An envelope whose codec id is not the
/// reader's codec is [`ErrorKind::Corrupt`], never decoded with the wrong codec.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CodecId(u8);

impl CodecId {
    /// Raw bytes: the payload is opaque to Larder (no codec).
    pub const RAW: CodecId = CodecId(0);
    /// [`Postcard`].
    pub const POSTCARD: CodecId = CodecId(1);
    /// [`Json`].
    pub const JSON: CodecId = CodecId(2);
    /// [`Bincode`].
    pub const BINCODE: CodecId = CodecId(3);

    /// A user-defined codec id; `id` must be in 128..=255.
    pub fn custom(id: u8) -> Result<CodecId> {
        if id >= 128 {
            Ok(CodecId(id))
        } else {
            Err(Error::new(
                ErrorKind::InvalidArgument,
                format!("custom codec ids are 128..=255, got {id}"),
            ))
        }
    }

    /// The id as stored on the wire.
    pub const fn get(self) -> u8 {
        self.0
    }

    /// The id read from the wire (any value; unknown ids are refused when
    /// matched against the reader's codec, not here).
    pub const fn from_wire(byte: u8) -> CodecId {
        CodecId(byte)
    }
}

impl fmt::Display for CodecId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Turns values into bytes and back.
///
/// Codecs are small values (usually zero-sized) passed by type parameter, so
/// calls are statically dispatched.
pub trait Codec: Send + Sync + Clone + fmt::Debug + 'static {
    /// The id written into envelope headers.
    fn id(&self) -> CodecId;

    /// A short name for reports and errors.
    fn name(&self) -> &'static str;

    /// Encodes `value`. Errors are [`ErrorKind::Encode`].
    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>>;

    /// Decodes a whole buffer; trailing bytes are an error. Errors are
    /// [`ErrorKind::Corrupt`].
    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T>;
}

/// The codec used when none is named: [`Postcard`].
#[cfg(feature = "postcard")]
pub type DefaultCodec = Postcard;

/// postcard: a compact, stable, varint-based format (`postcard` feature, on by default).
#[cfg(feature = "postcard")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Postcard;

#[cfg(feature = "postcard")]
impl Codec for Postcard {
    fn id(&self) -> CodecId {
        CodecId::POSTCARD
    }

    fn name(&self) -> &'static str {
        "postcard"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        postcard::to_stdvec(value)
            .map_err(|e| Error::with_source(ErrorKind::Encode, "postcard encode failed", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let (value, rest) = postcard::take_from_bytes(bytes)
            .map_err(|e| Error::with_source(ErrorKind::Corrupt, "postcard decode failed", e))?;
        if rest.is_empty() {
            Ok(value)
        } else {
            Err(Error::corrupt(format!(
                "postcard decode left {} trailing bytes",
                rest.len()
            )))
        }
    }
}

/// JSON through `serde_json` (`json` feature).
#[cfg(feature = "json")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Json;

#[cfg(feature = "json")]
impl Codec for Json {
    fn id(&self) -> CodecId {
        CodecId::JSON
    }

    fn name(&self) -> &'static str {
        "serde_json"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        serde_json::to_vec(value)
            .map_err(|e| Error::with_source(ErrorKind::Encode, "json encode failed", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        serde_json::from_slice(bytes)
            .map_err(|e| Error::with_source(ErrorKind::Corrupt, "json decode failed", e))
    }
}

/// bincode 2.x with its `standard()` configuration (`bincode` feature).
///
/// bincode is unmaintained (3.0.0 is an empty tombstone crate); use this only
/// for compatibility with data already in bincode's format.
#[cfg(feature = "bincode")]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Bincode;

/// The most bytes [`Bincode`] will decode from one payload, a bound on the
/// memory a corrupt length prefix can make it claim.
#[cfg(feature = "bincode")]
pub const BINCODE_DECODE_LIMIT: usize = 512 * 1024 * 1024;

#[cfg(feature = "bincode")]
impl Codec for Bincode {
    fn id(&self) -> CodecId {
        CodecId::BINCODE
    }

    fn name(&self) -> &'static str {
        "bincode"
    }

    fn encode<T: Serialize + ?Sized>(&self, value: &T) -> Result<Vec<u8>> {
        bincode::serde::encode_to_vec(value, bincode::config::standard())
            .map_err(|e| Error::with_source(ErrorKind::Encode, "bincode encode failed", e))
    }

    fn decode<T: DeserializeOwned>(&self, bytes: &[u8]) -> Result<T> {
        let config = bincode::config::standard().with_limit::<BINCODE_DECODE_LIMIT>();
        let (value, used) = bincode::serde::decode_from_slice(bytes, config)
            .map_err(|e| Error::with_source(ErrorKind::Corrupt, "bincode decode failed", e))?;
        if used == bytes.len() {
            Ok(value)
        } else {
            Err(Error::corrupt(format!(
                "bincode decode left {} trailing bytes",
                bytes.len() - used
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    #[allow(unused_imports)]
    use super::*;
    use serde::{Deserialize, Serialize};

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Item {
        id: u64,
        name: String,
        tags: Vec<String>,
    }

    #[allow(dead_code)]
    fn item() -> Item {
        Item {
            id: 42,
            name: "widget".into(),
            tags: vec!["a".into(), "b".into()],
        }
    }

    #[allow(dead_code)]
    fn roundtrip_and_reject<C: Codec>(codec: C) {
        let bytes = codec.encode(&item()).expect("encode");
        let back: Item = codec.decode(&bytes).expect("decode");
        assert_eq!(back, item());

        let mut trailing = bytes.clone();
        trailing.push(0);
        let err = codec.decode::<Item>(&trailing).expect_err("trailing bytes");
        assert!(err.is_corrupt(), "{}: {err}", codec.name());

        let err = codec
            .decode::<Item>(&bytes[..bytes.len() / 2])
            .expect_err("short");
        assert!(err.is_corrupt(), "{}: {err}", codec.name());
    }

    #[cfg(feature = "postcard")]
    #[test]
    fn postcard_roundtrip_and_rejects() {
        roundtrip_and_reject(Postcard);
        assert_eq!(Postcard.id(), CodecId::POSTCARD);
    }

    #[cfg(feature = "json")]
    #[test]
    fn json_roundtrip_and_rejects() {
        roundtrip_and_reject(Json);
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_roundtrip_and_rejects() {
        roundtrip_and_reject(Bincode);
    }

    #[cfg(feature = "bincode")]
    #[test]
    fn bincode_huge_length_prefix_is_corrupt_not_oom() {
        // A Vec<u8> claiming u64::MAX elements.
        let bytes = [0xFD, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF];
        let err = Bincode.decode::<Vec<u8>>(&bytes).expect_err("limit");
        assert!(err.is_corrupt());
    }

    #[test]
    fn custom_ids_are_range_checked() {
        assert!(CodecId::custom(7).unwrap_err().is_invalid_input());
        assert_eq!(CodecId::custom(200).unwrap().get(), 200);
    }
}
