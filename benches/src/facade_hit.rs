//! The facade benchmark's L1 hit (`facade/l1 hit` in
//! `benches/benches/facade.rs`, and `cargo xtask profile facade`): a facade
//! with a one-hour TTL and a loader against a bare larder-memory cache, both
//! with room for twice [`KEYS`] `String` values, read in a fixed stride.

use std::time::Duration;

use larder::core::{Error, FnLoader};
use larder::{Cache, Ttl};
use larder_memory::MemoryCache;

/// Keys read, `0..KEYS`.
pub const KEYS: u64 = 100_000;

/// The value of key `k`: 64 bytes.
pub fn value(k: u64) -> String {
    format!("{k:0>64}")
}

/// The bare cache and the facade, empty: [`fill`] them.
pub fn caches() -> (MemoryCache<u64, String>, Cache<u64, String>) {
    let bare = MemoryCache::new(2 * KEYS);
    let facade = Cache::builder()
        .memory(2 * KEYS)
        .ttl(Ttl::fixed(Duration::from_secs(3600)))
        .loader(FnLoader::new(|k: u64| async move {
            Ok::<_, Error>(Some(value(k)))
        }))
        .build()
        .expect("an in-memory facade always builds");
    (bare, facade)
}

/// Fills the bare cache with [`value`]s and the facade through
/// `get_or_load` (its loader answers [`value`]): every key a hit in both.
pub async fn fill(
    bare: &MemoryCache<u64, String>,
    facade: &Cache<u64, String>,
) -> larder::core::Result<()> {
    for k in 0..KEYS {
        bare.insert(k, value(k));
        facade.get_or_load(&k).await?;
    }
    Ok(())
}

/// The key after `i` in the read order.
pub fn next(i: u64) -> u64 {
    (i + 7919) % KEYS
}
