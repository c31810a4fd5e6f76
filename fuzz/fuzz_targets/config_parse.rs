//! Redis URLs and settings: any bytes through `RedisConfig::from_url`,
//! `redact` and `RedisConfig::builder(..).build()` with fuzzed topologies,
//! namespaces, timeouts, batch sizes, retries and breakers. The answer is a
//! configuration or an `InvalidConfig` error, never a panic, and it is the
//! one an independent oracle (the `redis` client's own parser, `KeySpace`,
//! the documented rules) predicts. A password never shows: not in
//! `redact`'s output, not in a configuration's `Debug`, not in an error.
//!
//! Passwords are found with the parser the client uses (`redis` over the
//! `url` crate), not with `redact`'s own text rules. A `\x01` in the input
//! becomes a marker token (once, the first one): when the parsed URL holds
//! the token in its password, and nowhere else, no output may contain it.

#![no_main]

use std::time::Duration;

use larder_core::{ErrorKind, KeySpace};
use larder_redis::redis::{self, IntoConnectionInfo};
use larder_redis::{BreakerConfig, RedisConfig, RetryPolicy, Topology, redact};
use libfuzzer_sys::arbitrary::{self, Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;

const MARK: char = '\u{1}';
/// Lower case, so a host's lower-casing cannot hide it.
const TOKEN: &str = "pw7qzsecret";

#[derive(Arbitrary, Debug)]
struct Settings<'a> {
    topology: u8,
    urls: Vec<&'a str>,
    namespace: Option<&'a str>,
    connect_ms: Option<u16>,
    response_ms: Option<u16>,
    auto_batch: Option<usize>,
    retry: Option<(u32, u32, u32)>,
    breaker: Option<(u32, u16)>,
}

/// The first marker becomes the token, the others go.
fn with_token(s: &str) -> String {
    match s.split_once(MARK) {
        Some((head, tail)) => format!("{head}{TOKEN}{}", tail.replace(MARK, "")),
        None => s.to_owned(),
    }
}

/// The password the client would send for `url`.
fn client_password(url: &str) -> Option<String> {
    let info = url.into_connection_info().ok()?;
    info.redis_settings().password().map(str::to_owned)
}

/// Whether the token is a secret of `url` as the client's parser reads it:
/// in the authority's password, or (socket URLs) in a `pass` query value,
/// and nowhere else in the URL.
fn token_is_secret(url: &str) -> bool {
    let Some(u) = redis::parse_redis_url(url) else {
        return false;
    };
    if u.as_str().matches(TOKEN).count() != 1 {
        return false;
    }
    if u.password().is_some_and(|p| p.contains(TOKEN)) {
        return true;
    }
    u.scheme().ends_with("unix")
        && u.query().is_some_and(|q| {
            q.split('&').any(|pair| {
                let raw_value = pair.split_once('=').map_or("", |(_, v)| v);
                let key = url::form_urlencoded::parse(pair.as_bytes()).next();
                key.is_some_and(|(k, _)| k == "pass") && raw_value.contains(TOKEN)
            })
        })
}

fn check_redact(url: &str) {
    let shown = redact(url);
    // What the client would read back from the redacted text is not the password.
    if let Some(p) = client_password(url).filter(|p| !p.is_empty() && p != "***") {
        assert_ne!(
            client_password(&shown).as_deref(),
            Some(p.as_str()),
            "redact({url:?}) = {shown:?} keeps the password"
        );
    }
    if token_is_secret(url) {
        assert!(!shown.contains(TOKEN), "redact({url:?}) = {shown:?}");
        let topo = format!("{:?}", Topology::Standalone(url.to_owned()));
        assert!(!topo.contains(TOKEN), "{topo}");
    }
}

fn check_from_url(url: &str) {
    let expect_ok = url.into_connection_info().is_ok();
    match RedisConfig::from_url(url) {
        Ok(cfg) => {
            assert!(expect_ok, "{url:?} accepted, the client cannot parse it");
            if token_is_secret(url) {
                let dbg = format!("{cfg:?}");
                assert!(!dbg.contains(TOKEN), "{dbg}");
            }
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{url:?}: {e}");
            assert!(!expect_ok, "{url:?} rejected, the client parses it: {e}");
            if token_is_secret(url) {
                assert!(!e.to_string().contains(TOKEN), "{e}");
            }
        }
    }
}

fn check_builder(s: &Settings<'_>) {
    let urls: Vec<String> = s.urls.iter().map(|u| with_token(u)).collect();
    let topology = match s.topology % 3 {
        0 => Topology::Standalone(urls.first().cloned().unwrap_or_default()),
        1 => Topology::Cluster(urls.clone()),
        _ => Topology::Sharded(urls.clone()),
    };
    let endpoints: Vec<String> = match &topology {
        Topology::Standalone(u) => vec![u.clone()],
        Topology::Cluster(us) | Topology::Sharded(us) => us.clone(),
        _ => unreachable!(),
    };
    // Only when the token sits in one endpoint, where it is a password (in
    // another endpoint it may be anything, and be shown).
    let secret = endpoints.iter().any(|u| token_is_secret(u))
        && endpoints.iter().filter(|u| u.contains(TOKEN)).count() == 1;

    let mut b = RedisConfig::builder(topology);
    let mut expect_ok = !endpoints.is_empty()
        && endpoints
            .iter()
            .all(|u| u.as_str().into_connection_info().is_ok());
    if let Some(ns) = s.namespace {
        b = b.namespace(ns);
        expect_ok &= KeySpace::new(ns).is_ok();
    }
    if let Some(ms) = s.connect_ms {
        b = b.connect_timeout(Duration::from_millis(ms.into()));
        expect_ok &= ms > 0;
    }
    if let Some(ms) = s.response_ms {
        b = b.response_timeout(Duration::from_millis(ms.into()));
        expect_ok &= ms > 0;
    }
    if let Some(n) = s.auto_batch {
        b = b.auto_batch(n);
    }
    if let Some((max_retries, base_us, max_us)) = s.retry {
        let mut r = RetryPolicy::default();
        r.max_retries = max_retries;
        r.base_delay = Duration::from_micros(base_us.into());
        r.max_delay = Duration::from_micros(max_us.into());
        for attempt in [0, 1, 31, 32, 63, 64, max_retries, u32::MAX] {
            assert!(r.backoff(attempt) <= r.max_delay, "{r:?} attempt {attempt}");
        }
        b = b.retry(r);
    }
    if let Some((threshold, open_ms)) = s.breaker {
        b = b.breaker(BreakerConfig::new(
            threshold,
            Duration::from_millis(open_ms.into()),
        ));
        expect_ok &= threshold > 0;
    }
    match b.build() {
        Ok(cfg) => {
            assert!(expect_ok, "{s:?} accepted");
            if let Some(ns) = s.namespace {
                assert_eq!(cfg.keyspace().namespace(), ns);
            }
            let dbg = format!("{cfg:?}");
            if secret {
                assert!(!dbg.contains(TOKEN), "{dbg}");
            }
        }
        Err(e) => {
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{s:?}: {e}");
            assert!(!expect_ok, "{s:?} rejected: {e}");
            if secret {
                assert!(!e.to_string().contains(TOKEN), "{e}");
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        check_redact(text);
        check_from_url(text);
        let marked = with_token(text);
        if marked != text {
            check_redact(&marked);
            check_from_url(&marked);
        }
    }
    if let Ok(settings) = Settings::arbitrary_take_rest(Unstructured::new(data)) {
        check_builder(&settings);
    }
});
