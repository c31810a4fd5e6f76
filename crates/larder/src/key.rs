//! [`CacheKey`]: how a key of the cache becomes a key in Redis.

use std::borrow::Cow;
use std::hash::Hash;
use std::sync::Arc;

use larder_core::{Result, validate_key};

/// A key of a [`Cache`](crate::Cache): hashable for the L1, and written as
/// text for the L2, where the store puts it under its namespace
/// (`{namespace}:{{text}}`).
///
/// Implemented for strings, integers, `char`, `bool`, and tuples of up to
/// four keys. A tuple's parts are joined with `:`; a part that contains
/// `:` or `\` has them escaped with `\`, so `("a:b", "c")` and
/// `("a", "b:c")` are different keys in Redis too. Implement it for your own
/// types by writing a stable, unique text.
///
/// ```
/// use larder::CacheKey;
///
/// assert_eq!(42u64.key_text().unwrap(), "42");
/// assert_eq!(("user", 7u32).key_text().unwrap(), "user:7");
/// assert_ne!(("a:b", "c").key_text().unwrap(), ("a", "b:c").key_text().unwrap());
/// assert!(String::new().key_text().unwrap_err().is_invalid_input());
///
/// #[derive(Clone, PartialEq, Eq, Hash)]
/// struct Sku { shop: u16, id: u64 }
/// impl CacheKey for Sku {
///     fn write_key(&self, out: &mut String) {
///         use std::fmt::Write;
///         let _ = write!(out, "sku:{}:{}", self.shop, self.id);
///     }
/// }
/// assert_eq!(Sku { shop: 1, id: 9 }.key_text().unwrap(), "sku:1:9");
/// ```
pub trait CacheKey: Hash + Eq + Clone + Send + Sync + 'static {
    /// Appends the key's text to `out`.
    fn write_key(&self, out: &mut String);

    /// The key's text, checked with [`larder_core::validate_key`] (not
    /// empty, at most [`larder_core::MAX_KEY_LEN`] bytes): an invalid key is
    /// an [`ErrorKind::InvalidKey`](larder_core::ErrorKind::InvalidKey) error.
    fn key_text(&self) -> Result<String> {
        let mut s = String::new();
        self.write_key(&mut s);
        validate_key(&s)?;
        Ok(s)
    }
}

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut String) {
                use std::fmt::Write;
                let _ = write!(out, "{self}");
            }
        }
    )*};
}

display_keys!(
    u8, u16, u32, u64, u128, usize, i8, i16, i32, i64, i128, isize, char, bool
);

impl CacheKey for String {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for &'static str {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for Arc<str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for Box<str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

impl CacheKey for Cow<'static, str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }
}

/// Writes one part of a tuple key, escaping the separator.
fn write_part<T: CacheKey>(part: &T, out: &mut String) {
    let start = out.len();
    part.write_key(out);
    if out[start..].contains([':', '\\']) {
        let raw = out.split_off(start);
        for c in raw.chars() {
            if matches!(c, ':' | '\\') {
                out.push('\\');
            }
            out.push(c);
        }
    }
}

macro_rules! tuple_keys {
    ($(($($n:tt $t:ident),+)),*) => {$(
        impl<$($t: CacheKey),+> CacheKey for ($($t,)+) {
            fn write_key(&self, out: &mut String) {
                let mut first = true;
                $(
                    if !first {
                        out.push(':');
                    }
                    first = false;
                    write_part(&self.$n, out);
                )+
                let _ = first;
            }
        }
    )*};
}

tuple_keys!((0 A, 1 B), (0 A, 1 B, 2 C), (0 A, 1 B, 2 C, 3 D));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts() {
        assert_eq!((-3i32).key_text().unwrap(), "-3");
        assert_eq!("k".key_text().unwrap(), "k");
        assert_eq!(("a\\", 1u8, 'x').key_text().unwrap(), "a\\\\:1:x");
        assert_eq!(("a:b", "c").key_text().unwrap(), "a\\:b:c");
        assert_eq!(("a", "b:c").key_text().unwrap(), "a:b\\:c");
        let long = "k".repeat(larder_core::MAX_KEY_LEN + 1);
        assert!(long.key_text().unwrap_err().is_invalid_input());
    }
}
