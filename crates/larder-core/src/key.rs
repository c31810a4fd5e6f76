//! Keys: validation and the Redis key layout.
//!
//! Every Redis key Larder writes is `{namespace}:{{user key}}`: the user key
//! sits inside a Redis Cluster hash tag, so internal keys that must live in
//! the same slot as their data key (leases, fences, versions) share its tag:
//! `larder:{order:42}` and `larder:{order:42}:lease`. Namespace-wide keys
//! (channels, generation counters) are `{namespace}:{name}` and can never
//! collide with a data key, which always has `{` right after the prefix.
//!
//! ```
//! use larder_core::KeySpace;
//!
//! let ks = KeySpace::new("shop")?;
//! assert_eq!(ks.data_key("order:42")?, "shop:{order:42}");
//! assert_eq!(ks.internal_key("order:42", "lease")?, "shop:{order:42}:lease");
//! assert_eq!(ks.user_key("shop:{order:42}"), Some("order:42"));
//! assert!(ks.data_key("").unwrap_err().is_invalid_input());
//! # Ok::<(), larder_core::Error>(())
//! ```

use crate::error::{Error, ErrorKind, Result};

/// The longest user key accepted, in bytes.
///
/// Redis accepts keys up to 512 MiB, but long keys cost memory on every
/// node, every L1 and every invalidation message; 1 KiB is generous for
/// real identifiers and catches values passed as keys by mistake.
pub const MAX_KEY_LEN: usize = 1024;

/// The longest namespace accepted, in bytes.
pub const MAX_NAMESPACE_LEN: usize = 64;

/// The default namespace.
pub const DEFAULT_NAMESPACE: &str = "larder";

/// Checks a user key: not empty, at most [`MAX_KEY_LEN`] bytes, not
/// starting with `}` (that would make the Redis Cluster hash tag of
/// `{namespace}:{{key}}` empty). Errors are [`ErrorKind::InvalidKey`].
pub fn validate_key(key: &str) -> Result<()> {
    if key.is_empty() {
        return Err(Error::new(ErrorKind::InvalidKey, "the key is empty"));
    }
    if key.starts_with('}') {
        // `{ns}:{}...}` has an empty hash tag: Redis Cluster would hash the
        // whole key, and the key's version record and lease (same tag)
        // would land in other slots.
        return Err(Error::new(
            ErrorKind::InvalidKey,
            "a key may not start with `}` (it would empty the Redis Cluster hash tag)",
        ));
    }
    if key.len() > MAX_KEY_LEN {
        return Err(Error::new(
            ErrorKind::InvalidKey,
            format!(
                "the key is {} bytes, over the {MAX_KEY_LEN}-byte maximum",
                key.len()
            ),
        ));
    }
    Ok(())
}

/// A namespace and the key layout built on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KeySpace {
    prefix: String,
}

impl KeySpace {
    /// A key space for `namespace`: 1 to [`MAX_NAMESPACE_LEN`] bytes of
    /// printable ASCII without spaces, `{`, `}` or `*`, `?`, `[` (which would
    /// change hash tags or glob patterns). Errors are [`ErrorKind::InvalidConfig`].
    pub fn new(namespace: &str) -> Result<Self> {
        let bad = |why: &str| {
            Err(Error::new(
                ErrorKind::InvalidConfig,
                format!("namespace {namespace:?}: {why}"),
            ))
        };
        if namespace.is_empty() {
            return bad("it is empty");
        }
        if namespace.len() > MAX_NAMESPACE_LEN {
            return bad("it is too long");
        }
        if let Some(c) = namespace
            .chars()
            .find(|c| !c.is_ascii_graphic() || matches!(c, '{' | '}' | '*' | '?' | '['))
        {
            return bad(&format!("{c:?} is not allowed"));
        }
        Ok(KeySpace {
            prefix: format!("{namespace}:"),
        })
    }

    /// The namespace.
    pub fn namespace(&self) -> &str {
        &self.prefix[..self.prefix.len() - 1]
    }

    /// `"{namespace}:"`, the prefix of every key in this space (for
    /// `CLIENT TRACKING ... PREFIX` and `SCAN MATCH`).
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The Redis key of a user key: `{namespace}:{{key}}`.
    pub fn data_key(&self, key: &str) -> Result<String> {
        validate_key(key)?;
        let mut k = String::with_capacity(self.prefix.len() + key.len() + 2);
        k.push_str(&self.prefix);
        k.push('{');
        k.push_str(key);
        k.push('}');
        Ok(k)
    }

    /// An internal key in the same Cluster slot as the data key:
    /// `{namespace}:{{key}}:{suffix}`. The suffix is not empty and holds no
    /// `#` (reserved for helper keys) and no `}`.
    pub fn internal_key(&self, key: &str, suffix: &str) -> Result<String> {
        if suffix.is_empty() || suffix.contains(['#', '}']) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!("internal key suffix {suffix:?}: not empty, no '#' or '}}'"),
            ));
        }
        let mut k = self.data_key(key)?;
        k.push(':');
        k.push_str(suffix);
        Ok(k)
    }

    /// A key of a data-structure helper: `{namespace}:{{tag}}:#{role}`, in
    /// the Cluster slot of `tag`. It can equal no data key, no internal key
    /// and no other helper's key (see the module docs). The tag is a valid
    /// key without `{` or `}`; the role is not empty and holds no `:`, `{`
    /// or `}`. Errors are [`ErrorKind::InvalidKey`].
    pub fn helper_key(&self, tag: &str, role: &str) -> Result<String> {
        validate_key(tag)?;
        if tag.contains(['{', '}']) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!("helper tag {tag:?} must not contain braces"),
            ));
        }
        if role.is_empty() || role.contains([':', '{', '}']) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!("helper role {role:?}: not empty, no ':' or braces"),
            ));
        }
        let mut k = self.data_key(tag)?;
        k.push_str(":#");
        k.push_str(role);
        Ok(k)
    }

    /// A namespace-wide key or channel: `{namespace}:{name}`. The name is
    /// not empty and holds no `{` or `}`, so it can equal no data, internal
    /// or helper key (those have `{` right after the prefix). Errors are
    /// [`ErrorKind::InvalidKey`].
    pub fn global_key(&self, name: &str) -> Result<String> {
        if name.is_empty() || name.contains(['{', '}']) {
            return Err(Error::new(
                ErrorKind::InvalidKey,
                format!("global key name {name:?}: not empty, no braces"),
            ));
        }
        Ok(format!("{}{name}", self.prefix))
    }

    /// The user key inside a data key of this space, or `None` for any other
    /// key (internal keys included).
    pub fn user_key<'k>(&self, redis_key: &'k str) -> Option<&'k str> {
        redis_key
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('{')?
            .strip_suffix('}')
    }
}

impl Default for KeySpace {
    fn default() -> Self {
        KeySpace {
            prefix: format!("{DEFAULT_NAMESPACE}:"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_may_not_empty_its_hash_tag() {
        for bad in ["}", "}x", "}}"] {
            assert_eq!(
                validate_key(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey,
                "{bad:?}"
            );
        }
        assert!(validate_key("x}").is_ok());
    }

    #[test]
    fn key_limits() {
        assert!(validate_key("a").is_ok());
        assert!(validate_key(&"k".repeat(MAX_KEY_LEN)).is_ok());
        let err = validate_key(&"k".repeat(MAX_KEY_LEN + 1)).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidKey);
        assert_eq!(validate_key("").unwrap_err().kind(), ErrorKind::InvalidKey);
    }

    #[test]
    fn namespaces_are_checked() {
        for bad in ["", "a b", "a{b", "x}", "ns*", "é", &"n".repeat(65)] {
            assert_eq!(
                KeySpace::new(bad).unwrap_err().kind(),
                ErrorKind::InvalidConfig,
                "{bad:?}"
            );
        }
        assert_eq!(KeySpace::new("a:b").unwrap().namespace(), "a:b");
        assert_eq!(KeySpace::default().prefix(), "larder:");
    }

    #[test]
    fn a_global_key_is_never_a_data_key() {
        let ks = KeySpace::default();
        assert_eq!(ks.global_key("invalidate").unwrap(), "larder:invalidate");
        for bad in ["{x}", "", "a}b"] {
            assert_eq!(
                ks.global_key(bad).unwrap_err().kind(),
                ErrorKind::InvalidKey
            );
        }
    }

    #[test]
    fn helper_keys_are_never_data_or_internal_keys() {
        let ks = KeySpace::default();
        let q = ks.helper_key("queue:emails", "ready").unwrap();
        assert_eq!(q, "larder:{queue:emails}:#ready");
        assert_eq!(ks.user_key(&q), None);
        assert_ne!(ks.data_key("queue:emails").unwrap(), q);
        // A user key built to spell a helper key lands elsewhere.
        for key in ["queue:emails}:#ready", "queue:emails"] {
            assert_ne!(ks.data_key(key).unwrap(), q);
            assert_ne!(ks.internal_key(key, "lease").unwrap(), q);
        }
        for (tag, role) in [
            ("a{b", "r"),
            ("a}", "r"),
            ("t", ""),
            ("t", "a:b"),
            ("", "r"),
        ] {
            assert_eq!(
                ks.helper_key(tag, role).unwrap_err().kind(),
                ErrorKind::InvalidKey,
                "{tag:?} {role:?}"
            );
        }
        for suffix in ["", "#ready", "a}"] {
            assert!(ks.internal_key("k", suffix).is_err(), "{suffix:?}");
        }
    }

    #[test]
    fn user_key_inverts_data_key_even_with_braces() {
        let ks = KeySpace::default();
        for key in ["plain", "a}b", "{x}", "{", "emoji 🍰", "x}"] {
            let redis_key = ks.data_key(key).unwrap();
            assert_eq!(ks.user_key(&redis_key), Some(key), "{key:?}");
        }
        assert_eq!(ks.user_key("larder:invalidate"), None);
        assert_eq!(ks.user_key("other:{k}"), None);
    }
}
