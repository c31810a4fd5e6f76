//! Rate limiting on Redis with the three algorithms larder-redis offers:
//! fixed window, sliding window (a sorted-set log) and GCRA (a token
//! bucket). Each gets the same burst of 8 requests against a limit of 5 (5
//! per second for the windows; a bucket of 5 refilled at 2 per second) and
//! prints which are allowed, which are denied and when a denied one may
//! retry; then it waits exactly that `retry_after` and shows the
//! next request go through (a denied request consumes nothing).
//!
//! Run: `REDIS_URL=redis://127.0.0.1:6379 cargo run --release --example rate_limiter`
//!
//! Every limiter instance of a service that uses the same name shares the
//! limit: each decision is one atomic Lua script on the server.

#![allow(clippy::print_stdout, clippy::print_stderr)] // an example prints

use larder_examples::cli::{finish, required_env};
use std::process::ExitCode;
use std::time::Duration;

use larder::prelude::*;
use larder::redis::{RateLimit, RateLimiter, redact};

const BURST: u32 = 8;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let url = match required_env("rate_limiter", "REDIS_URL", "redis://127.0.0.1:6379") {
        Ok(url) => url,
        Err(code) => return code,
    };
    finish("rate_limiter", run(&url).await)
}

async fn run(url: &str) -> Result<()> {
    let store = RedisStore::new(
        RedisConfig::builder(Topology::Standalone(url.to_owned()))
            .namespace("larder-example")
            .build()?,
    )?;
    println!(
        "rate limits on {}: a burst of {BURST} requests against a limit of 5",
        redact(url)
    );
    // The limited client: one id per run, so that a second run within the
    // same second does not find this run's counts (the keys expire by
    // themselves after one window).
    let client = format!("client-{:08x}", fastrand::u32(..));
    let second = Duration::from_secs(1);

    // Fixed window: one counter per aligned window [k s, (k + 1) s). The
    // cheapest, but up to 2x the limit can pass across a window boundary.
    // Start the burst just after a boundary so that it all lands in one
    // window (the limiter reads time from the store's clock, the system's).
    let ms = SystemClock.unix_millis() % 1000;
    tokio::time::sleep(Duration::from_millis(1000 - ms + 5)).await;
    let fixed = RateLimiter::new(
        &store,
        "api-fixed",
        RateLimit::FixedWindow {
            limit: 5,
            window: second,
        },
    )?;
    burst("fixed window", &fixed, &client).await?;

    // Sliding window: a log of the allowed requests of the trailing second.
    // Exact; one sorted-set entry per allowed request.
    let sliding = RateLimiter::new(
        &store,
        "api-sliding",
        RateLimit::SlidingWindow {
            limit: 5,
            window: second,
        },
    )?;
    burst("sliding window", &sliding, &client).await?;

    // GCRA: a bucket of 5 tokens refilled at 2 per second. Bursts of up to
    // 5 pass at once, the sustained rate is 2 per second, and a denied
    // request may retry as soon as one token is back (1/rate = 500 ms).
    // O(1) memory: one timestamp per client.
    let bucket = RateLimiter::new(
        &store,
        "api-gcra",
        RateLimit::TokenBucket {
            rate: 2,
            period: second,
            burst: 5,
        },
    )?;
    burst("token bucket (GCRA)", &bucket, &client).await?;
    Ok(())
}

/// Sends `BURST` requests at once, then one more after the first denied
/// request's `retry_after`.
async fn burst(name: &str, limiter: &RateLimiter, client: &str) -> Result<()> {
    println!("{name}:");
    let (mut allowed, mut denied) = (0, 0);
    let mut first_retry = None;
    for i in 1..=BURST {
        let d = limiter.check(client).await?;
        if d.allowed {
            allowed += 1;
            println!("  request {i}: allowed, {} remaining", d.remaining);
        } else {
            denied += 1;
            // `retry_after` is set on every denial: the HTTP `Retry-After`.
            let retry = d.retry_after.unwrap_or_default();
            first_retry.get_or_insert(retry);
            println!(
                "  request {i}: denied, retry after {} ms",
                retry.as_millis()
            );
        }
    }
    println!("  {name}: {allowed} allowed, {denied} denied");
    if let Some(retry) = first_retry {
        tokio::time::sleep(retry).await;
        let d = limiter.check(client).await?;
        let verdict = if d.allowed { "allowed" } else { "denied" };
        println!("  after waiting {} ms: {verdict}", retry.as_millis());
    }
    Ok(())
}
