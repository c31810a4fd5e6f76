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

    /// The key whose text is `text`, if this type can tell: what a
    /// [coherent](crate::CacheBuilder::coherence) cache uses to evict a key
    /// that another instance (or client) changed in Redis. The default,
    /// `None`, makes each such invalidation clear the whole L1 of this
    /// instance: correct, but costly when writes are frequent. Implemented
    /// for every key type above except `&'static str`.
    ///
    /// ```
    /// use larder::CacheKey;
    ///
    /// assert_eq!(u64::from_key_text("42"), Some(42));
    /// assert_eq!(<(String, u32)>::from_key_text("a\\:b:7"), Some(("a:b".into(), 7)));
    /// assert_eq!(u64::from_key_text("x"), None);
    /// ```
    fn from_key_text(text: &str) -> Option<Self>
    where
        Self: Sized,
    {
        let _ = text;
        None
    }
}

macro_rules! display_keys {
    ($($t:ty),*) => {$(
        impl CacheKey for $t {
            fn write_key(&self, out: &mut String) {
                use std::fmt::Write;
                let _ = write!(out, "{self}");
            }

            fn from_key_text(text: &str) -> Option<Self> {
                text.parse().ok()
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

    fn from_key_text(text: &str) -> Option<Self> {
        Some(text.into())
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

    fn from_key_text(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

impl CacheKey for Box<str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }

    fn from_key_text(text: &str) -> Option<Self> {
        Some(text.into())
    }
}

impl CacheKey for Cow<'static, str> {
    fn write_key(&self, out: &mut String) {
        out.push_str(self);
    }

    fn from_key_text(text: &str) -> Option<Self> {
        Some(Cow::Owned(text.to_owned()))
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

/// Splits a tuple key's text at its unescaped separators, unescaping the
/// parts; `None` unless there are exactly `n` parts.
fn split_parts(text: &str, n: usize) -> Option<Vec<String>> {
    let mut parts = vec![String::new()];
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => parts.last_mut()?.push(chars.next()?),
            ':' => {
                if parts.len() == n {
                    return None;
                }
                parts.push(String::new());
            }
            c => parts.last_mut()?.push(c),
        }
    }
    (parts.len() == n).then_some(parts)
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

            fn from_key_text(text: &str) -> Option<Self> {
                let n = [$(stringify!($t)),+].len();
                let parts = split_parts(text, n)?;
                Some(($($t::from_key_text(&parts[$n])?,)+))
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

    /// `from_key_text` inverts `key_text` for every built-in key type.
    #[test]
    fn texts_round_trip() {
        fn back<K: CacheKey + std::fmt::Debug>(k: K) {
            let text = k.key_text().unwrap();
            assert_eq!(K::from_key_text(&text).as_ref(), Some(&k), "{text}");
        }
        back(-3i32);
        back(u128::MAX);
        back('x');
        back(true);
        back(String::from("a:b\\c"));
        back(Arc::<str>::from("k"));
        back((String::from("a\\"), 1u8, 'x'));
        back((String::from("a:b"), String::from("c")));
        back((String::from(":"), (String::from("x:y"), 2u64)));
        back((1u8, 2u16, 3u32, 4u64));
        assert_eq!(<(u8, u8)>::from_key_text("1:2:3"), None);
        assert_eq!(<(u8, u8)>::from_key_text("1"), None);
        assert_eq!(
            <(String, u8)>::from_key_text("a\\"),
            None,
            "a dangling escape"
        );
        assert_eq!(<&'static str>::from_key_text("k"), None);
    }
}
