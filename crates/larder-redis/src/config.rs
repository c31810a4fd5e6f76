//! Configuration: endpoints, credentials, timeouts, retries, breaker, namespace.

use std::fmt;
use std::time::Duration;

use larder_core::{Error, ErrorKind, KeySpace, Result};

use crate::breaker::BreakerConfig;

/// Where the data lives.
#[non_exhaustive]
#[derive(Clone, PartialEq, Eq)]
pub enum Topology {
    /// One Redis server (or a primary behind a proxy).
    Standalone(String),
    /// A Redis Cluster, from one or more seed URLs.
    Cluster(Vec<String>),
    /// Independent servers, keys spread by a consistent-hash ring in the client.
    Sharded(Vec<String>),
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Topology::Standalone(u) => f.debug_tuple("Standalone").field(&redact(u)).finish(),
            Topology::Cluster(us) => f
                .debug_tuple("Cluster")
                .field(&us.iter().map(|u| redact(u)).collect::<Vec<_>>())
                .finish(),
            Topology::Sharded(us) => f
                .debug_tuple("Sharded")
                .field(&us.iter().map(|u| redact(u)).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Retries of idempotent commands after a timeout or a connection error:
/// exponential backoff with full jitter, `min(max_delay, base * 2^attempt)`.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt (0 disables retrying).
    pub max_retries: u32,
    /// The first backoff's upper bound.
    pub base_delay: Duration,
    /// The largest backoff.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_retries: 2,
            base_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(200),
        }
    }
}

impl RetryPolicy {
    /// No retries.
    pub fn none() -> Self {
        RetryPolicy {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// The backoff before retry number `attempt` (0-based): uniform in
    /// `[0, min(max_delay, base * 2^attempt)]`.
    pub fn backoff(&self, attempt: u32) -> Duration {
        let cap = self
            .base_delay
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.max_delay);
        let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(fastrand::u64(0..=nanos))
    }
}

/// Whose clock the data-structure helpers read for leases (the work
/// queue's visibility timeout) and rate limits.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HelperClock {
    /// The Redis server's `TIME`, read inside each script (the default):
    /// one clock for every client, so a client whose clock is off cannot
    /// expire another worker's lease early or push a limit ahead for
    /// everyone. On a Cluster or a sharded store each key reads the clock
    /// of the node that holds it.
    #[default]
    Server,
    /// The store's [`larder_core::Clock`] (`RedisStore::with_clock`): for
    /// tests that drive leases and limits with a `MockClock`. Every client
    /// must then keep its clock in sync.
    Store,
}

/// Everything a [`crate::RedisStore`] needs. Built with [`RedisConfig::builder`]
/// or parsed with [`RedisConfig::from_url`]. `Debug` never shows passwords.
#[derive(Debug, Clone)]
pub struct RedisConfig {
    pub(crate) topology: Topology,
    pub(crate) keyspace: KeySpace,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    pub(crate) retry: RetryPolicy,
    pub(crate) breaker: BreakerConfig,
    pub(crate) auto_batch: Option<usize>,
    /// Fills look at the durable write-behind journal (standalone only).
    pub(crate) fill_checks_journal: bool,
    pub(crate) helper_clock: HelperClock,
    #[cfg_attr(not(feature = "tls"), allow(dead_code))] // read only with `tls`
    pub(crate) tls_root_cert: Option<Vec<u8>>,
}

impl RedisConfig {
    /// A standalone configuration from a `redis://` or `rediss://` URL
    /// (`redis://[user[:password]@]host[:port][/db]`), with defaults for the rest.
    pub fn from_url(url: &str) -> Result<Self> {
        Self::builder(Topology::Standalone(url.to_owned())).build()
    }

    /// A builder for `topology`.
    pub fn builder(topology: Topology) -> RedisConfigBuilder {
        RedisConfigBuilder {
            config: RedisConfig {
                topology,
                keyspace: KeySpace::default(),
                connect_timeout: Duration::from_secs(1),
                response_timeout: Duration::from_millis(500),
                retry: RetryPolicy::default(),
                breaker: BreakerConfig::default(),
                auto_batch: None,
                fill_checks_journal: true,
                helper_clock: HelperClock::Server,
                tls_root_cert: None,
            },
            namespace: None,
        }
    }

    /// The topology.
    pub fn topology(&self) -> &Topology {
        &self.topology
    }

    /// The key space (namespace).
    pub fn keyspace(&self) -> &KeySpace {
        &self.keyspace
    }
}

/// Builder of [`RedisConfig`].
#[must_use]
#[derive(Debug)]
pub struct RedisConfigBuilder {
    config: RedisConfig,
    namespace: Option<String>,
}

impl RedisConfigBuilder {
    /// Key namespace (default `larder`): every key is `{namespace}:{key}`.
    pub fn namespace(mut self, namespace: &str) -> Self {
        self.namespace = Some(namespace.to_owned());
        self
    }

    /// How long establishing a connection may take (default 1 s).
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.config.connect_timeout = d;
        self
    }

    /// How long one command may take, per attempt (default 500 ms).
    pub fn response_timeout(mut self, d: Duration) -> Self {
        self.config.response_timeout = d;
        self
    }

    /// Retries of idempotent commands (default: 2, 10 ms to 200 ms backoff).
    pub fn retry(mut self, retry: RetryPolicy) -> Self {
        self.config.retry = retry;
        self
    }

    /// Whether a fill on a standalone server first looks at the namespace's
    /// durable write-behind journal (`{ns}:wb:latest`, `{ns}:wb:journal`)
    /// and is refused while a journalled write of the key has not reached
    /// the source (default: on; Cluster and sharded stores never look).
    /// Every instance that reads a namespace where any instance uses
    /// durable write-behind needs it on. Turn it off where no instance ever
    /// does and the server cannot run a script that names a second key
    /// (a proxy that refuses keys of different slots in one script), or to
    /// spare the Redis user `HGET`/`XRANGE`/`HDEL` on those keys.
    pub fn fill_checks_journal(mut self, on: bool) -> Self {
        self.config.fill_checks_journal = on;
        self
    }

    /// Circuit breaker settings (one breaker per node).
    pub fn breaker(mut self, breaker: BreakerConfig) -> Self {
        self.config.breaker = breaker;
        self
    }

    /// Coalesces concurrent single-key `get`s into one `MGET` of at most
    /// `max_batch` keys, sent whenever the previous batch has returned (or
    /// its sender has not got on for 20 ms). Off by default.
    pub fn auto_batch(mut self, max_batch: usize) -> Self {
        self.config.auto_batch = Some(max_batch.max(1));
        self
    }

    /// Whose clock the helpers' leases and limits read (default: the
    /// server's `TIME`).
    pub fn helper_clock(mut self, clock: HelperClock) -> Self {
        self.config.helper_clock = clock;
        self
    }

    /// Trusts this CA certificate (PEM) for `rediss://` instead of the
    /// system's roots (`tls` feature).
    #[cfg(feature = "tls")]
    pub fn tls_root_cert(mut self, pem: Vec<u8>) -> Self {
        self.config.tls_root_cert = Some(pem);
        self
    }

    /// Checks and returns the configuration. Errors are
    /// [`ErrorKind::InvalidConfig`]: an empty endpoint list, a URL the client
    /// cannot parse (or `rediss://` without the `tls` feature), a zero
    /// timeout, or a bad namespace.
    pub fn build(mut self) -> Result<RedisConfig> {
        if let Some(ns) = &self.namespace {
            self.config.keyspace = KeySpace::new(ns)?;
        }
        let urls: Vec<&String> = match &self.config.topology {
            Topology::Standalone(u) => vec![u],
            Topology::Cluster(us) | Topology::Sharded(us) => us.iter().collect(),
        };
        if urls.is_empty() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "no Redis endpoint given",
            ));
        }
        for u in urls {
            check_url(u)?;
        }
        if self.config.connect_timeout.is_zero() || self.config.response_timeout.is_zero() {
            return Err(Error::new(
                ErrorKind::InvalidConfig,
                "timeouts must be non-zero",
            ));
        }
        self.config.breaker.check()?;
        Ok(self.config)
    }
}

fn check_url(url: &str) -> Result<()> {
    use redis::IntoConnectionInfo;
    if url.starts_with("rediss://") && !cfg!(feature = "tls") {
        return Err(Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{}: rediss:// needs larder-redis's `tls` feature",
                redact(url)
            ),
        ));
    }
    url.into_connection_info().map(|_| ()).map_err(|e| {
        Error::new(
            ErrorKind::InvalidConfig,
            format!(
                "{}: not a Redis URL ({})",
                redact(url),
                e.kind().category_name()
            ),
        )
    })
}

trait CategoryName {
    fn category_name(&self) -> &'static str;
}

impl CategoryName for redis::ErrorKind {
    fn category_name(&self) -> &'static str {
        match self {
            redis::ErrorKind::InvalidClientConfig => "invalid client configuration",
            _ => "unparsable",
        }
    }
}

/// A URL with its password replaced by `***` (user names are kept): the
/// one in the authority, and a socket URL's `pass=` query parameter.
pub fn redact(url: &str) -> String {
    // The client's parser (the `url` crate) drops tabs and newlines
    // anywhere, so `redis:/\t/u:pw@h` is a URL with a password: drop them too.
    let url: String = url
        .chars()
        .filter(|c| !matches!(c, '\t' | '\n' | '\r'))
        .collect();
    let out = redact_userinfo(&url);
    let Some((head, query)) = out.split_once('?') else {
        return out;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|p| match p.split_once('=') {
            Some((k, _)) if query_key(k).eq_ignore_ascii_case("pass") => format!("{k}=***"),
            _ => p.to_owned(),
        })
        .collect();
    format!("{head}?{}", query.join("&"))
}

/// A query key as the client reads it: `%XX` decoded, `+` a space
/// (`p%61ss` is `pass`).
fn query_key(k: &str) -> String {
    let b = k.as_bytes();
    let hex = |j: usize| b.get(j).and_then(|&c| char::from(c).to_digit(16));
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, ..) => {
                out.push(if c == b'+' { b' ' } else { c });
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn redact_userinfo(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    // As the client's parser reads it: the `://` right after the scheme
    // (leading spaces and controls skipped), an authority that ends at `/`,
    // `?` or `#`. A `://` or an `@` further on (in a query) is not userinfo.
    let scheme = url[..scheme_end].trim_start_matches(|c: char| c <= ' ');
    let is_scheme = scheme.starts_with(|c: char| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !is_scheme {
        return url.to_owned();
    }
    let rest = &url[scheme_end + 3..];
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let userinfo = &rest[..at];
    let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
    let shown = if userinfo.contains(':') || !userinfo.is_empty() {
        format!("{user}:***")
    } else {
        String::new()
    };
    format!("{}{}@{}", &url[..scheme_end + 3], shown, &rest[at + 1..])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_show() {
        assert_eq!(redact("redis://u:secret@h:1/2"), "redis://u:***@h:1/2");
        assert_eq!(redact("redis://:secret@h:1"), "redis://:***@h:1");
        assert_eq!(redact("redis://h:1/0"), "redis://h:1/0");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?db=1&pass=secret"),
            "redis+unix:///tmp/r.sock?db=1&pass=***"
        );
        let cfg = RedisConfig::from_url("redis://app:hunter2@127.0.0.1:6379/0").unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
        assert!(dbg.contains("app:***"), "{dbg}");
    }

    /// The client's parser drops tabs and newlines and decodes query keys:
    /// passwords hidden that way were shown (found by the `config_parse`
    /// fuzz target's oracle).
    #[test]
    fn passwords_hidden_from_the_text_rules_never_show() {
        assert_eq!(redact("redis:/\t/u:secret@h"), "redis://u:***@h");
        assert_eq!(redact("redis://u:sec\nret@h"), "redis://u:***@h");
        assert_eq!(
            redact("redis+unix:///tmp/r.sock?p%61ss=secret&%70ASS=x"),
            "redis+unix:///tmp/r.sock?p%61ss=***&%70ASS=***"
        );
        // A `://` and an `@` in a socket URL's query are not userinfo (they
        // made `redact` swallow the `pass=` key and show its value).
        assert_eq!(
            redact("redis+unix:/x/s?a=b://c:d@e&pass=s@secret"),
            "redis+unix:/x/s?a=b://c:d@e&pass=***"
        );
        let cfg = RedisConfig::from_url("redis:/\t/app:hunter2@127.0.0.1:6379/0").unwrap();
        let dbg = format!("{cfg:?}");
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }

    #[test]
    fn bad_configs_are_typed() {
        for bad in ["", "http://x", "redis://:99999999"] {
            let e = RedisConfig::from_url(bad).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::InvalidConfig, "{bad:?}: {e}");
        }
        let e = RedisConfig::builder(Topology::Cluster(vec![]))
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        let e = RedisConfig::builder(Topology::Standalone("redis://h".into()))
            .namespace("bad ns")
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        let e = RedisConfig::builder(Topology::Standalone("redis://h".into()))
            .response_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::InvalidConfig);
        if !cfg!(feature = "tls") {
            let e = RedisConfig::from_url("rediss://h:6380").unwrap_err();
            assert!(e.message().contains("tls"), "{e}");
        }
    }

    #[test]
    fn backoff_is_bounded() {
        let r = RetryPolicy::default();
        for attempt in 0..40 {
            assert!(r.backoff(attempt) <= r.max_delay);
        }
        assert!(r.backoff(0) <= r.base_delay);
    }
}
