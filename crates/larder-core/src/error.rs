//! The one error type shared by every Larder crate.
//!
//! [`Error`] keeps its representation private. Callers inspect it through
//! [`Error::kind`] (a `#[non_exhaustive]` [`ErrorKind`]) and predicates such as
//! [`Error::is_timeout`] or [`Error::retry_advice`], never by matching strings.
//! It is cheap to clone (one `Arc`), so a single-flight leader can hand the
//! same error to every waiter.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

/// A `Result` whose error is Larder's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// A boxed error from user code (loaders, writers) or a backend client.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, coarsely: the part of an [`Error`] that decides what a
/// caller does next.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    /// A key was empty, longer than [`crate::MAX_KEY_LEN`], or otherwise unusable.
    InvalidKey,
    /// An argument was out of its documented range (for example a zero TTL).
    InvalidArgument,
    /// A configuration value (URL, namespace, builder setting) was rejected.
    InvalidConfig,
    /// Bytes read from a store were not a valid envelope or did not decode.
    /// Readers treat this as a miss; the next load overwrites the entry.
    Corrupt,
    /// A value could not be encoded by its codec.
    Encode,
    /// An operation did not complete before its deadline.
    Timeout,
    /// The connection to a backend failed, was refused or dropped.
    Connection,
    /// A circuit breaker is open: the backend is considered down and the call
    /// was not attempted.
    CircuitOpen,
    /// The backend answered with an error (for example a Redis error reply).
    Backend,
    /// Authentication or authorisation was refused by the backend.
    Auth,
    /// The user's loader or writer returned an error.
    Source,
    /// The user's loader or writer panicked.
    SourcePanicked,
    /// The operation was cancelled before it finished (for example the task
    /// running a shared load was aborted).
    Cancelled,
    /// A bounded queue was full and the configured overflow policy refused
    /// the item. The item was not accepted; nothing was dropped silently.
    Overflow,
    /// The component was closed and accepts no more work.
    Closed,
    /// A lock could not be acquired, or was lost.
    Lock,
    /// The requested feature is not compiled in or not supported by the backend.
    Unsupported,
}

impl ErrorKind {
    /// A short, stable, lower-case name for logs and metrics labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            ErrorKind::InvalidKey => "invalid key",
            ErrorKind::InvalidArgument => "invalid argument",
            ErrorKind::InvalidConfig => "invalid configuration",
            ErrorKind::Corrupt => "corrupt value",
            ErrorKind::Encode => "encode failed",
            ErrorKind::Timeout => "timed out",
            ErrorKind::Connection => "connection failed",
            ErrorKind::CircuitOpen => "circuit open",
            ErrorKind::Backend => "backend error",
            ErrorKind::Auth => "authentication failed",
            ErrorKind::Source => "source error",
            ErrorKind::SourcePanicked => "source panicked",
            ErrorKind::Cancelled => "cancelled",
            ErrorKind::Overflow => "queue full",
            ErrorKind::Closed => "closed",
            ErrorKind::Lock => "lock unavailable",
            ErrorKind::Unsupported => "unsupported",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a caller should do about an error, if it may try again.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RetryAdvice {
    /// Retrying the same call cannot succeed (bad input, corrupt data, a bug).
    DoNotRetry,
    /// A transient fault: retry with exponential backoff and jitter. Only
    /// idempotent operations should be retried.
    RetryWithBackoff,
    /// The system is shedding load (breaker open, queue full): retry later,
    /// or fall back (serve stale, go to the source of truth).
    RetryLater,
}

/// Larder's error: a [`kind`](Error::kind), a message, and an optional source.
#[derive(Clone)]
pub struct Error {
    inner: Arc<Inner>,
}

struct Inner {
    kind: ErrorKind,
    message: Cow<'static, str>,
    source: Option<Arc<dyn std::error::Error + Send + Sync + 'static>>,
}

impl Error {
    /// An error of `kind` with a message.
    pub fn new(kind: ErrorKind, message: impl Into<Cow<'static, str>>) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: None,
            }),
        }
    }

    /// An error of `kind` with a message and the error that caused it.
    pub fn with_source(
        kind: ErrorKind,
        message: impl Into<Cow<'static, str>>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error {
            inner: Arc::new(Inner {
                kind,
                message: message.into(),
                source: Some(Arc::from(source.into())),
            }),
        }
    }

    /// Wraps an error returned by a user's loader or writer ([`ErrorKind::Source`]).
    pub fn source_error(source: impl Into<BoxError>) -> Self {
        Self::with_source(ErrorKind::Source, "the source of truth failed", source)
    }

    /// A [`ErrorKind::Corrupt`] error with a message.
    pub fn corrupt(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(ErrorKind::Corrupt, message)
    }

    /// What went wrong.
    pub fn kind(&self) -> ErrorKind {
        self.inner.kind
    }

    /// The human-readable detail (without the kind).
    pub fn message(&self) -> &str {
        &self.inner.message
    }

    /// The operation timed out ([`ErrorKind::Timeout`]).
    pub fn is_timeout(&self) -> bool {
        self.kind() == ErrorKind::Timeout
    }

    /// The connection failed or dropped ([`ErrorKind::Connection`]).
    pub fn is_connection(&self) -> bool {
        self.kind() == ErrorKind::Connection
    }

    /// The bytes were not a valid envelope or did not decode ([`ErrorKind::Corrupt`]).
    pub fn is_corrupt(&self) -> bool {
        self.kind() == ErrorKind::Corrupt
    }

    /// A circuit breaker refused the call ([`ErrorKind::CircuitOpen`]).
    pub fn is_circuit_open(&self) -> bool {
        self.kind() == ErrorKind::CircuitOpen
    }

    /// The caller passed something invalid: a key, an argument or a configuration.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::InvalidKey | ErrorKind::InvalidArgument | ErrorKind::InvalidConfig
        )
    }

    /// The user's loader or writer failed or panicked.
    pub fn is_source(&self) -> bool {
        matches!(self.kind(), ErrorKind::Source | ErrorKind::SourcePanicked)
    }

    /// The backend (Redis) could not be used: unreachable, too slow, or
    /// behind an open breaker. Callers degrade to L1 and the loader.
    pub fn is_backend_unavailable(&self) -> bool {
        matches!(
            self.kind(),
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::CircuitOpen
        )
    }

    /// Whether, and how, to retry.
    pub fn retry_advice(&self) -> RetryAdvice {
        match self.kind() {
            ErrorKind::Timeout | ErrorKind::Connection | ErrorKind::Lock => {
                RetryAdvice::RetryWithBackoff
            }
            ErrorKind::CircuitOpen | ErrorKind::Overflow => RetryAdvice::RetryLater,
            _ => RetryAdvice::DoNotRetry,
        }
    }

    /// Shorthand for `retry_advice() != RetryAdvice::DoNotRetry`.
    pub fn is_retryable(&self) -> bool {
        self.retry_advice() != RetryAdvice::DoNotRetry
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.inner.kind)
            .field("message", &self.inner.message);
        if let Some(source) = &self.inner.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.inner.message.is_empty() {
            write!(f, "{}", self.inner.kind)
        } else {
            write!(f, "{}: {}", self.inner.kind, self.inner.message)
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.inner
            .source
            .as_deref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_predicates_and_advice() {
        let t = Error::new(ErrorKind::Timeout, "GET took too long");
        assert!(t.is_timeout() && t.is_backend_unavailable() && t.is_retryable());
        assert_eq!(t.retry_advice(), RetryAdvice::RetryWithBackoff);

        let c = Error::corrupt("bad magic");
        assert!(c.is_corrupt() && !c.is_retryable());

        let o = Error::new(ErrorKind::CircuitOpen, "");
        assert_eq!(o.retry_advice(), RetryAdvice::RetryLater);
        assert_eq!(o.to_string(), "circuit open");

        let k = Error::new(ErrorKind::InvalidKey, "empty");
        assert!(k.is_invalid_input());
        assert_eq!(k.to_string(), "invalid key: empty");
    }

    #[test]
    fn source_is_kept_and_clone_is_cheap() {
        let io = std::io::Error::other("disk on fire");
        let e = Error::source_error(io);
        let e2 = e.clone();
        assert!(e2.is_source());
        let src = std::error::Error::source(&e2).expect("source kept");
        assert_eq!(src.to_string(), "disk on fire");
        assert!(Arc::ptr_eq(&e.inner, &e2.inner));
    }

    #[test]
    fn error_is_send_sync_static() {
        fn assert_traits<T: Send + Sync + 'static + std::error::Error>() {}
        assert_traits::<Error>();
    }
}
