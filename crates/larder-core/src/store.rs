//! The byte-level store contract (L2) and the source-of-truth contracts.
//!
//! - [`Store`]: what an L2 (Redis, or anything else) offers the facade. Keys
//!   are user keys; the store applies its own namespace. Values are envelope
//!   bytes ([`crate::envelope`]). Object-safe (`Arc<dyn Store>`) through
//!   `async-trait`, because the facade holds stores dynamically.
//! - [`Loader`] and [`Writer`]: the user's source of truth. Generic, with
//!   native `async fn` in traits (no boxing); the bulk methods default to loops.

use std::fmt;
use std::future::Future;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

/// One entry of [`Store::set_many`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoreEntry<'a> {
    /// The user key.
    pub key: &'a str,
    /// The envelope bytes.
    pub value: &'a [u8],
    /// How long the store keeps the bytes (the envelope's `stale_until - now`).
    pub ttl: Duration,
}

/// A byte-level key-value store with TTLs: Larder's L2 contract.
///
/// Contract for implementors:
/// - keys are validated with [`crate::validate_key`]: an invalid key is
///   [`crate::ErrorKind::InvalidKey`], and a zero `ttl` is
///   [`crate::ErrorKind::InvalidArgument`];
/// - a missing or expired key is `Ok(None)`, never an error;
/// - a store that cannot be reached answers with an error for which
///   [`crate::Error::is_backend_unavailable`] is true, quickly (a breaker), so
///   callers degrade to L1 and the loader;
/// - the bulk methods keep the order of their input.
#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// A short name for stats and logs (for example `redis://127.0.0.1:6379`).
    fn name(&self) -> &str;

    /// Reads the bytes under `key`.
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>>;

    /// Writes `value` under `key` for `ttl`, replacing any value.
    async fn set(&self, key: &str, value: &[u8], ttl: Duration) -> Result<()>;

    /// Removes `key`; `true` if it existed.
    async fn delete(&self, key: &str) -> Result<bool>;

    /// Writes `value` only if `key` holds nothing; `true` if it was written.
    /// Used for leases (cross-process single flight).
    async fn set_if_absent(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool>;

    /// Writes `value` only if the key is absent, or holds an envelope whose
    /// version (bytes [`crate::envelope::VERSION_RANGE`]) is lower than the
    /// new one's, atomically; `true` if it was written. This is what stops a
    /// slow loader from putting an old value back over a newer write.
    async fn set_if_newer(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool>;

    /// The version *ticket* of `key`: the version a value loaded from the
    /// source of truth from now on must carry in its envelope, for
    /// [`Store::fill`]. `0` when the store holds no version record for the
    /// key (it was never invalidated or written through, or the record
    /// expired together with the value).
    ///
    /// Versioned operations are what make the facade's invalidation safe
    /// against a slow loader: read the ticket, load, then `fill` with the
    /// ticket as the envelope's version; an [`Store::invalidate`] in between
    /// raised the key's version, so the fill is refused. The default answers
    /// [`crate::ErrorKind::Unsupported`]; stores used as the facade's L2
    /// implement all four versioned methods.
    async fn version(&self, key: &str) -> Result<u64> {
        let _ = key;
        Err(unsupported("version"))
    }

    /// [`Store::get`] and [`Store::version`] of `key` at once (one round
    /// trip where the store can): what a reader about to load on a miss
    /// needs. The default makes the two calls.
    async fn get_with_version(&self, key: &str) -> Result<(Option<Vec<u8>>, u64)> {
        let value = self.get(key).await?;
        Ok((value, self.version(key).await?))
    }

    /// Writes a loaded value (envelope bytes whose version is the ticket
    /// from [`Store::version`]) unless the key's version record or the value
    /// it holds is newer than the ticket, atomically; `true` if it was
    /// written (or the identical bytes were already there). Foreign or
    /// malformed bytes under the key are overwritten. Versions compare as
    /// numbers, never as strings.
    async fn fill(&self, key: &str, value: &[u8], ttl: Duration) -> Result<bool> {
        let _ = (key, value, ttl);
        Err(unsupported("fill"))
    }

    /// Invalidates `key`, atomically: allocates a version greater than any
    /// the key had (its version record, the version of the value it holds,
    /// and the store's clock in microseconds, so versions never go back even
    /// after the record expired), records it for `tombstone`, and removes
    /// the value. Returns the new version. A loader that read its ticket
    /// before this call can no longer [`Store::fill`] the key.
    async fn invalidate(&self, key: &str, tombstone: Duration) -> Result<u64> {
        let _ = (key, tombstone);
        Err(unsupported("invalidate"))
    }

    /// Writes `value` (envelope bytes) with a newly allocated version, as
    /// [`Store::invalidate`] allocates it, written into the envelope's
    /// version field by the store, atomically; the version record lives for
    /// `max(ttl, tombstone)`. Returns the version. Write-through uses it: no
    /// fill that started earlier can overwrite the value.
    async fn set_versioned(
        &self,
        key: &str,
        value: &[u8],
        ttl: Duration,
        tombstone: Duration,
    ) -> Result<u64> {
        let _ = (key, value, ttl, tombstone);
        Err(unsupported("set_versioned"))
    }

    /// Takes the load lease of `key` for `ttl` with `token` (a random value
    /// of the caller's): `true` if this caller holds it now (it was free,
    /// or already held with this token, so a retry after a lost reply tells
    /// the truth). The lease lives under an internal key no user key can
    /// name. Cross-process single flight: only the lease holder loads; the
    /// others wait for its value. Default: [`crate::ErrorKind::Unsupported`].
    async fn acquire_lease(&self, key: &str, token: &[u8], ttl: Duration) -> Result<bool> {
        let _ = (key, token, ttl);
        Err(unsupported("acquire_lease"))
    }

    /// Releases the load lease of `key` if `token` still holds it
    /// (compare-and-delete): `true` if it was released.
    async fn release_lease(&self, key: &str, token: &[u8]) -> Result<bool> {
        let _ = (key, token);
        Err(unsupported("release_lease"))
    }

    /// Reads many keys; the answer has one slot per key, in order.
    async fn get_many(&self, keys: &[&str]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Writes many entries.
    async fn set_many(&self, entries: &[StoreEntry<'_>]) -> Result<()> {
        for e in entries {
            self.set(e.key, e.value, e.ttl).await?;
        }
        Ok(())
    }

    /// Removes many keys; how many existed.
    async fn delete_many(&self, keys: &[&str]) -> Result<u64> {
        let mut n = 0;
        for key in keys {
            n += u64::from(self.delete(key).await?);
        }
        Ok(n)
    }
}

fn unsupported(what: &str) -> crate::Error {
    crate::Error::new(
        crate::ErrorKind::Unsupported,
        format!("this store does not implement versioned operations ({what})"),
    )
}

/// Reads values from the source of truth (a database, an API).
///
/// `Ok(None)` means "not found": with negative caching on, it is cached
/// briefly so a flood of requests for a missing key does not reach the
/// source. Errors are never cached. Wrap your own errors with
/// [`crate::Error::source_error`].
///
/// ```
/// use larder_core::{Loader, Result};
///
/// struct Squares;
/// impl Loader<u64, u64> for Squares {
///     async fn load(&self, key: &u64) -> Result<Option<u64>> {
///         Ok(key.checked_mul(*key))
///     }
/// }
/// ```
pub trait Loader<K, V>: Send + Sync + 'static
where
    K: Send + Sync,
    V: Send,
{
    /// Loads one value.
    fn load(&self, key: &K) -> impl Future<Output = Result<Option<V>>> + Send;

    /// Loads many values, one slot per key in order. The default calls
    /// [`Loader::load`] for each key; override it with one query.
    fn load_many(&self, keys: &[K]) -> impl Future<Output = Result<Vec<Option<V>>>> + Send {
        async move {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                out.push(self.load(key).await?);
            }
            Ok(out)
        }
    }
}

/// Writes values to the source of truth (write-through and write-behind).
pub trait Writer<K, V>: Send + Sync + 'static
where
    K: Send + Sync,
    V: Send + Sync,
{
    /// Writes one value.
    fn write(&self, key: &K, value: &V) -> impl Future<Output = Result<()>> + Send;

    /// Deletes one key.
    fn delete(&self, key: &K) -> impl Future<Output = Result<()>> + Send;

    /// Writes many values. The default calls [`Writer::write`] for each;
    /// override it with one batch statement or transaction.
    fn write_many(&self, entries: &[(K, V)]) -> impl Future<Output = Result<()>> + Send {
        async move {
            for (key, value) in entries {
                self.write(key, value).await?;
            }
            Ok(())
        }
    }

    /// Deletes many keys. The default calls [`Writer::delete`] for each.
    fn delete_many(&self, keys: &[K]) -> impl Future<Output = Result<()>> + Send {
        async move {
            for key in keys {
                self.delete(key).await?;
            }
            Ok(())
        }
    }
}

/// A [`Loader`] made from an async closure that takes the key by value.
///
/// ```
/// use larder_core::{FnLoader, Loader};
///
/// let loader = FnLoader::new(|id: u32| async move {
///     Ok::<_, larder_core::Error>(Some(format!("item {id}")))
/// });
/// # fn is_loader<L: Loader<u32, String>>(_: &L) {}
/// # is_loader(&loader);
/// ```
#[derive(Clone)]
pub struct FnLoader<F> {
    f: F,
}

impl<F> FnLoader<F> {
    /// Wraps `f`.
    pub fn new(f: F) -> Self {
        FnLoader { f }
    }
}

impl<F> fmt::Debug for FnLoader<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FnLoader")
    }
}

impl<K, V, F, Fut> Loader<K, V> for FnLoader<F>
where
    K: Clone + Send + Sync,
    V: Send,
    F: Fn(K) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<V>>> + Send,
{
    fn load(&self, key: &K) -> impl Future<Output = Result<Option<V>>> + Send {
        (self.f)(key.clone())
    }
}
