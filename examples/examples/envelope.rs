//! What Larder stores in Redis, byte by byte: a product encoded with the
//! default codec inside the versioned envelope, read back, aged with a mock
//! clock through fresh, stale and expired, and a foreign value refused.
//!
//! Run: `cargo run --example envelope`

#![allow(clippy::print_stdout)] // an example prints

use std::time::Duration;

use larder::core::envelope::{self, HEADER_LEN};
use larder::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
struct Product {
    sku: String,
    name: String,
    price_cents: u64,
    stock: u32,
}

fn main() -> Result<()> {
    let clock = MockClock::new();
    let product = Product {
        sku: "TEA-01".into(),
        name: "First flush Darjeeling, 100 g".into(),
        price_cents: 1250,
        stock: 40,
    };
    let meta = EnvelopeMeta::starting_at(
        clock.unix_millis(),
        Duration::from_secs(60),
        Duration::from_secs(30),
    )
    .with_delta(Duration::from_millis(12))
    .with_version(3);
    let bytes = envelope::encode_value(
        &DefaultCodec::default(),
        meta,
        Some(&product),
        Compression::None,
    )?;
    println!(
        "{} bytes: a {HEADER_LEN}-byte header + {} bytes of postcard payload",
        bytes.len(),
        bytes.len() - HEADER_LEN
    );
    println!("header: {:02x?}", &bytes[..HEADER_LEN]);

    for step in [0, 59, 60, 89, 90] {
        let now = clock.unix_millis();
        let (meta, value) = envelope::decode_value::<_, Product>(&Postcard, &bytes)?;
        println!(
            "t+{step:>2}s: {:?}, value {:?}, store TTL {:?}",
            meta.freshness(now),
            value.map(|p| p.name),
            meta.store_ttl(now)
        );
        let next = [59, 60, 89, 90, 91]
            .into_iter()
            .find(|s| *s > step)
            .unwrap_or(step);
        clock.advance(Duration::from_secs(next - step));
    }

    let foreign = b"{\"sku\":\"TEA-01\"}";
    let err = envelope::decode_value::<_, Product>(&Postcard, foreign).unwrap_err();
    println!(
        "foreign bytes: {err} (kind {:?}, a miss for the cache)",
        err.kind()
    );
    Ok(())
}
